//! The interactive shell of the real `tessera` binary: under a pseudo-terminal (driven
//! by Python's `pty` module, as a person would type), and with `--connect` against an
//! in-process server.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::psql::start;
use crate::sql_database::tessera_binary;

/// Runs the binary under a pty and types each step's line, waiting for the step's
/// marker (a prompt) before the next; answers the terminal's cursor-position query as a
/// terminal does. Prints the whole transcript.
const PTY_DRIVER: &str = r#"
import fcntl, json, os, pty, select, struct, sys, termios, time

binary, args, steps = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
pid, fd = pty.fork()
if pid == 0:
    os.execv(binary, [binary] + args)
fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
out = b""

def pump(timeout):
    global out
    ready, _, _ = select.select([fd], [], [], timeout)
    if not ready:
        return True
    try:
        data = os.read(fd, 65536)
    except OSError:
        return False
    if not data:
        return False
    if b"\x1b[6n" in data:
        os.write(fd, b"\x1b[1;1R")
    out += data
    return True

def wait_for(marker, start, timeout=120):
    deadline = time.time() + timeout
    while marker.encode() not in out[start:]:
        if time.time() > deadline or not pump(0.2):
            sys.stdout.write(out.decode("utf-8", "replace"))
            sys.stderr.write("\ntimed out waiting for %r\n" % marker)
            sys.exit(3)

wait_for("tessera=> ", 0)
for line, marker in steps:
    start = len(out)
    os.write(fd, line.encode())
    if marker is not None:
        wait_for(marker, start)
while pump(0.5):
    pass
_, status = os.waitpid(pid, 0)
sys.stdout.write(out.decode("utf-8", "replace"))
sys.exit(os.waitstatus_to_exitcode(status))
"#;

const PROMPT: &str = "tessera=> ";
const MORE: &str = "tessera-> ";

#[test]
fn the_shell_under_a_terminal() {
    let binary = tessera_binary();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let driver = d.join("pty_driver.py");
    std::fs::write(&driver, PTY_DRIVER).unwrap();
    let csv = d.join("ab.csv").display().to_string();
    let history = d.join("history");
    // Each line ends with Enter (\r in raw mode), then waits for the prompt it brings.
    let steps: Vec<(String, Option<&str>)> = [
        ("CREATE MATRIX a", MORE),
        ("  (2, 2);", PROMPT),
        ("CREATE MATRIX b (2, 2);", PROMPT),
        ("INSERT INTO a VALUES (0, 0, 1), (0, 1, 2),", MORE),
        ("  (1, 0, 3), (1, 1, 4);", PROMPT),
        (
            "INSERT INTO b VALUES (0, 0, 5), (0, 1, 6), (1, 0, 7), (1, 1, 8);",
            PROMPT,
        ),
        ("SELECT i, j, v", MORE),
        ("FROM matmul(a, b)", MORE),
        ("ORDER BY i, j;", PROMPT),
        ("\\timing", PROMPT),
        ("SELECT 'x;y' AS semi;", PROMPT),
        ("\\timing", PROMPT),
        ("\\d", PROMPT),
        ("\\d a", PROMPT),
        (
            "SELECT value AS n FROM generate_series(1, 100) ORDER BY n;",
            PROMPT,
        ),
        ("\\rows 4", PROMPT),
        (
            "SELECT value AS m FROM generate_series(1, 9) ORDER BY m;",
            PROMPT,
        ),
        ("\\rows all", PROMPT),
        (
            &format!("\\copy (SELECT * FROM matmul(a, b)) TO '{csv}'"),
            PROMPT,
        ),
        ("CREATE MATRIX c (2, 2);", PROMPT),
        (&format!("\\copy c FROM '{csv}'"), PROMPT),
        ("SELECT sum(v) AS total FROM c;", PROMPT),
        // Ctrl-C drops the unfinished statement; the next one runs alone.
        ("SELECT 'never", MORE),
    ]
    .iter()
    .map(|(line, marker)| (format!("{line}\r"), Some(*marker)))
    .chain([
        ("\x03".to_string(), Some(PROMPT)),
        ("SELECT 2 AS two;\r".to_string(), Some(PROMPT)),
        ("\\q\r".to_string(), None),
    ])
    .collect();
    let steps = serde_json::to_string(&steps).unwrap();
    let args = serde_json::to_string(&["-d", &d.join("db").display().to_string()]).unwrap();
    let out = Command::new("python3")
        .arg(&driver)
        .arg(&binary)
        .arg(&args)
        .arg(&steps)
        .env("TESSERA_HISTORY", &history)
        .env("TERM", "xterm")
        .output()
        .unwrap();
    let transcript = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    assert!(
        out.status.success(),
        "{transcript}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = transcript.lines().map(str::trim_end).collect();
    let has = |line: &str| lines.contains(&line);
    // [[1, 2], [3, 4]] x [[5, 6], [7, 8]] = [[19, 22], [43, 50]], worked by hand.
    for row in [
        "| 0 | 0 | 19.0 |",
        "| 0 | 1 | 22.0 |",
        "| 1 | 0 | 43.0 |",
        "| 1 | 1 | 50.0 |",
    ] {
        assert!(has(row), "{row} missing:\n{transcript}");
    }
    assert!(has("| x;y  |"), "{transcript}");
    assert!(transcript.matches("Time: ").count() == 1, "{transcript}");
    assert!(has("Arrays") && has("Tables"), "{transcript}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("| kind ") && l.contains("matrix"))
    );
    // 100 rows over the default cap of 40: 1..20, a gap, 81..100.
    for row in ["| 1   |", "| 20  |", "| …   |", "| 81  |", "| 100 |"] {
        assert!(has(row), "{row} missing:\n{transcript}");
    }
    assert!(!has("| 21  |") && !has("| 80  |"), "{transcript}");
    assert!(has("(100 rows, 40 shown)"), "{transcript}");
    // 9 rows over a cap of 4: 1, 2, a gap, 8, 9.
    let m_rows: Vec<&str> = lines
        .iter()
        .copied()
        .skip_while(|l| *l != "| m |")
        .skip(2)
        .take(6)
        .collect();
    assert_eq!(
        m_rows,
        ["| 1 |", "| 2 |", "| … |", "| 8 |", "| 9 |", "+---+"],
        "{transcript}"
    );
    assert!(has("(9 rows, 4 shown)"), "{transcript}");
    // Out to a local CSV and back: 19 + 22 + 43 + 50.
    let written = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(written.lines().count(), 5, "{written}");
    assert!(has("COPY 4"), "{transcript}");
    assert!(has("| 134.0 |"), "{transcript}");
    assert!(
        has("| 2   |") && !transcript.contains("never'"),
        "{transcript}"
    );
    assert!(!transcript.contains("error:"), "{transcript}");
    // The history file holds the statements, a multi-line one on one line.
    let history = std::fs::read_to_string(&history).unwrap();
    assert!(
        history.contains("SELECT i, j, v FROM matmul(a, b) ORDER BY i, j;"),
        "{history}"
    );
}

/// `tessera --connect` against a running server: the same shell, reading its input
/// from a pipe; `\copy` streams through COPY FROM STDIN / TO STDOUT.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_shell_connects_to_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let url = format!(
        "postgresql://tessera@127.0.0.1:{}/tessera",
        server.local_addr().port()
    );
    let d = dir.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        let binary = tessera_binary();
        let csv = d.join("m.csv").display().to_string();
        let script = format!(
            "CREATE MATRIX m (2, 3);\n\
             INSERT INTO m VALUES (0, 0, 1.5), (1, 2,\n  -2.0);\n\
             SELECT i, j, v FROM m ORDER BY i, j;\n\
             \\d\n\
             \\copy m TO '{csv}' WITH (FORMAT csv)\n\
             CREATE MATRIX n (2, 3);\n\
             \\copy n FROM '{csv}' WITH (FORMAT csv)\n\
             SELECT sum(v) AS total, count(*) AS cells FROM n;\n\
             SELECT * FROM nope;\n\
             \\q\n"
        );
        let mut child = Command::new(&binary)
            .args(["--connect", &url])
            .env("TESSERA_HISTORY", "")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let written = std::fs::read_to_string(Path::new(&csv)).unwrap();
        // `tessera sql --connect URL "SQL"` runs a script the same way.
        let script = Command::new(&binary)
            .args(["sql", "--connect", &url, "--format", "csv"])
            .arg("SELECT 40 + 2 AS answer; SELECT count(*) AS cells FROM n")
            .output()
            .unwrap();
        (out, written, script)
    })
    .await
    .unwrap();
    let (out, written, script) = out;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    // The server sends values as text (float8 -2 is "-2"), so the column is 3 wide.
    let lines: Vec<&str> = stdout.lines().collect();
    let m_rows: Vec<&str> = lines
        .iter()
        .copied()
        .skip_while(|l| *l != "| i | j | v   |")
        .skip(2)
        .take(3)
        .collect();
    assert_eq!(
        m_rows,
        ["| 0 | 0 | 1.5 |", "| 1 | 2 | -2  |", "+---+---+-----+"],
        "{stdout}"
    );
    assert!(
        stdout.contains("Arrays") && stdout.contains("| m "),
        "{stdout}"
    );
    assert_eq!(written.lines().count(), 2, "{written}");
    assert!(stdout.contains("COPY 2"), "{stdout}");
    // 1.5 - 2.0, over the 2 stored cells.
    assert!(stdout.contains("| -0.5  | 2     |"), "{stdout}");
    // A failed statement is reported and the shell carries on.
    assert!(
        stderr.contains("error: ") && stderr.contains("nope"),
        "{stderr}"
    );
    assert!(script.status.success(), "{script:?}");
    assert_eq!(
        String::from_utf8_lossy(&script.stdout),
        "answer\n42\ncells\n2\n"
    );
    server.shutdown().await;
}

/// A join that runs for some seconds in the shell: `n x n` in 100 stored blocks, each
/// cell of one side meeting the `n` cells of a column of the other (`n^3` rows).
const BAR_N: u64 = 600;

fn bar_setup() -> String {
    let (n, b) = (BAR_N, BAR_N / 10);
    format!(
        "CREATE MATRIX big ({n}, {n}) BLOCK ({b}, {b}); \
         INSERT INTO big SELECT i, j, v FROM rand({n}, {n}, seed => 7);"
    )
}

const BAR_QUERY: &str = "SELECT count(*) AS joined FROM big a JOIN big b ON a.i = b.j;";

/// Runs the bar's statements in the shell on a pseudo-terminal with `args` and returns
/// the transcript, after asserting that `bar` (a piece of the bar's text) shows before
/// the result, and that the result line has no bar left in it.
fn run_bar_statements(args: &[&str], bar: &str) -> String {
    let binary = tessera_binary();
    let dir = tempfile::tempdir().unwrap();
    let driver = dir.path().join("pty_driver.py");
    std::fs::write(&driver, PTY_DRIVER).unwrap();
    let joined = BAR_N.pow(3).to_string();
    let steps: Vec<(String, Option<&str>)> = vec![
        (format!("{}\r", bar_setup()), Some(PROMPT)),
        (format!("{BAR_QUERY}\r"), Some(PROMPT)),
        ("\\q\r".to_string(), None),
    ];
    let steps = serde_json::to_string(&steps).unwrap();
    let args = serde_json::to_string(args).unwrap();
    let out = Command::new("python3")
        .arg(&driver)
        .arg(&binary)
        .arg(&args)
        .arg(&steps)
        .env("TESSERA_HISTORY", "")
        .env("TERM", "xterm")
        .output()
        .unwrap();
    let transcript = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    assert!(
        out.status.success(),
        "{transcript}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = transcript
        .find(bar)
        .unwrap_or_else(|| panic!("no progress bar with {bar:?}:\n{transcript}"));
    let result = transcript
        .find(&format!("| {joined} |"))
        .unwrap_or_else(|| panic!("no result {joined}:\n{transcript}"));
    assert!(shown < result, "{transcript}");
    let result_line = transcript[result..].lines().next().unwrap();
    assert_eq!(result_line.trim_end(), format!("| {joined} |"));
    transcript
}

#[test]
fn the_shell_draws_a_progress_bar_for_a_long_statement_then_its_result() {
    let binary = tessera_binary();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db").display().to_string();
    let joined = BAR_N.pow(3).to_string();
    // The bar: blocks read of the two scans' 200, then the result.
    run_bar_statements(&["-d", &db, "--progress-after", "100ms"], "/200 blocks, ");

    // Not a terminal: the same statement prints its result and no bar.
    let mut child = Command::new(&binary)
        .args(["-d", &db])
        .env("TESSERA_HISTORY", "")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{BAR_QUERY}\n\\q\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains(&format!("| {joined} |")), "{stdout}");
    assert!(
        !stdout.contains("blocks,") && !stderr.contains("blocks,"),
        "{stdout}\n{stderr}"
    );
}

/// With `--connect`, the bar shows the server's progress NOTICEs: the shell asks for
/// them after `--progress-after`, and the server reports its scans' blocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_shell_shows_a_servers_progress_notices_in_its_bar() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let url = format!(
        "postgresql://tessera@127.0.0.1:{}/tessera",
        server.local_addr().port()
    );
    tokio::task::spawn_blocking(move || {
        run_bar_statements(
            &["--connect", &url, "--progress-after", "100ms"],
            "progress: ",
        );
    })
    .await
    .unwrap();
    server.shutdown().await;
}
