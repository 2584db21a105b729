//! Debian's psql (PostgreSQL 15's client) against `tessera serve`, as a user runs it:
//! queries, the `\d` family, and errors with their SQLSTATEs. `.ci/run` installs
//! `postgresql-client`; a missing psql fails the test.

use std::path::Path;
use std::process::Command;

use tessera_server::config::ServerConfig;
use tessera_server::{Server, ServerHandle};

/// Runs `psql` with unaligned, tuples-only output and `ON_ERROR_STOP`, feeding `script`
/// on standard input; returns (exit code, stdout, stderr).
fn psql(port: u16, cwd: &Path, script: &str) -> (i32, String, String) {
    use std::io::Write;
    let mut child = Command::new("psql")
        .args(["-X", "-A", "-t", "-F", "|", "-v", "ON_ERROR_STOP=1", "-v"])
        .arg("VERBOSITY=verbose")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "tessera"])
        .arg("tessera")
        .current_dir(cwd)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("psql must be installed (.ci/run installs postgresql-client)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn start(dir: &Path) -> ServerHandle {
    let config = ServerConfig {
        data_dir: dir.join("db"),
        pg_listen: "127.0.0.1:0".into(),
        ..ServerConfig::default()
    };
    Server::builder().config(config).build().await.unwrap()
}

/// Runs psql off the async threads.
async fn run(port: u16, cwd: &Path, script: &str) -> (i32, String, String) {
    let (cwd, script) = (cwd.to_path_buf(), script.to_string());
    tokio::task::spawn_blocking(move || psql(port, &cwd, &script))
        .await
        .unwrap()
}

/// The lines of psql's output, without blank ones.
fn lines(out: &str) -> Vec<&str> {
    out.lines().filter(|l| !l.trim().is_empty()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn psql_queries_and_the_describe_commands() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let port = server.local_addr().port();
    let d = dir.path();

    // Objects and a query; the answer worked by hand: m = [[1, 0, 2, 0], [0, 0, 0, 3],
    // [4, 0, 0, 0]], row sums 3, 3, 4.
    let (code, out, err) = run(
        port,
        d,
        "CREATE MATRIX m (3, 4) BLOCK (2, 2);
         INSERT INTO m VALUES (0, 0, 1), (0, 2, 2), (1, 3, 3), (2, 0, 4);
         CREATE TABLE labels AS SELECT * FROM (VALUES (0, 'a'), (1, 'b'), (2, 'c')) t(i, name);
         SELECT l.name, sum(m.v) FROM m JOIN labels l USING (i) GROUP BY l.name ORDER BY 1;",
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        lines(&out).last().copied(),
        Some("c|4"),
        "psql printed:\n{out}"
    );
    assert!(out.contains("a|3\nb|3\nc|4"), "psql printed:\n{out}");

    // \d lists both; \d m shows the coordinate columns; \d+ the matrix's shape.
    let (code, out, err) = run(port, d, "\\d\n").await;
    assert_eq!(code, 0, "{err}");
    let listed = lines(&out);
    assert!(listed.contains(&"public|labels|table|tessera"), "{out}");
    assert!(listed.contains(&"public|m|table|tessera"), "{out}");

    let (code, out, err) = run(port, d, "\\d m\n").await;
    assert_eq!(code, 0, "{err}");
    let columns: Vec<Vec<&str>> = lines(&out)
        .iter()
        .map(|l| l.split('|').take(2).collect())
        .collect();
    assert_eq!(
        columns,
        vec![
            vec!["i", "bigint"],
            vec!["j", "bigint"],
            vec!["v", "double precision"]
        ],
        "{out}"
    );

    let (code, out, err) = run(port, d, "\\d+\n").await;
    assert_eq!(code, 0, "{err}");
    let m = lines(&out)
        .into_iter()
        .find(|l| l.starts_with("public|m|"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        m.contains("matrix 3 x 4, block 2 x 2"),
        "\\d+ shows no shape: {m}"
    );

    // \dn and \l answer.
    let (code, out, err) = run(port, d, "\\dn\n\\l\n").await;
    assert_eq!(code, 0, "{err}");
    assert!(lines(&out).contains(&"public|tessera"), "{out}");

    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn psql_errors_show_their_sqlstate_and_the_session_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let port = server.local_addr().port();
    let d = dir.path();
    for (sql, state) in [
        ("SELECT * FROM nosuch;", "42P01"),
        ("SELEC 1;", "42601"),
        ("SELECT * FROM matmul(eye(2), eye(3));", "22000"),
        ("SELECT * FROM frobnicate(eye(2));", "42883"),
    ] {
        let (code, _, err) = run(port, d, sql).await;
        assert_ne!(code, 0, "{sql} succeeded");
        assert!(err.contains(&format!("ERROR:  {state}:")), "{sql}: {err}");
    }
    // Without ON_ERROR_STOP's exit, one psql session carries on after an error.
    let (code, out, err) = run(
        port,
        d,
        "\\set ON_ERROR_STOP 0\nSELECT * FROM nosuch;\nSELECT 41 + 1;\n",
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(lines(&out), vec!["42"], "{err}");
    server.shutdown().await;
}
