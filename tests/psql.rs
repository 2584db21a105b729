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

/// A server with pgwire on 127.0.0.1:0 over `dir/db` (also used by `clients`).
pub(crate) async fn start(dir: &Path) -> ServerHandle {
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

/// `ALTER MATRIX ... REPARTITION` over psql: its tag, and the matrix unchanged in
/// content (worked by hand: 1 + 2 + 3 + 4 = 10).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn psql_alter_matrix_repartition() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let port = server.local_addr().port();
    let (code, out, err) = run(
        port,
        dir.path(),
        "CREATE MATRIX m (3, 4) BLOCK (2, 2) WITH (shards = 2);
         INSERT INTO m VALUES (0, 0, 1), (0, 2, 2), (1, 3, 3), (2, 0, 4);
         ALTER MATRIX m REPARTITION WITH (shards = 3);
         SELECT count(*), sum(v) FROM m;",
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(lines(&out).contains(&"ALTER ARRAY"), "psql printed:\n{out}");
    assert!(lines(&out).contains(&"4|10"), "psql printed:\n{out}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn psql_copy_round_trips_tables_and_arrays_with_timing_on() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let port = server.local_addr().port();
    let d = dir.path();

    // Unload a matrix and a table with `\copy ... TO` (CSV with a header, and text), load
    // them back into fresh objects with `\copy ... FROM`, and read them again.
    let (code, out, err) = run(
        port,
        d,
        r#"\timing on
CREATE MATRIX m (3, 4) BLOCK (2, 2);
INSERT INTO m VALUES (0, 0, 1.5), (0, 2, 2), (1, 3, -3), (2, 0, 4e10);
CREATE TABLE t (id INT, name TEXT, x DOUBLE, d DATE);
INSERT INTO t VALUES (1, 'a,b', 1.5, DATE '2024-01-02'), (2, NULL, NULL, NULL),
    (3, 'q"uote', -0.25, DATE '1999-12-31');
\copy m TO 'm.csv' CSV HEADER
\copy t TO 't.csv' CSV HEADER
\copy t TO 't.txt'
\copy (SELECT j, v FROM m WHERE i = 0 ORDER BY j) TO 'm0.csv' CSV
CREATE MATRIX m2 (3, 4) BLOCK (2, 2);
\copy m2 FROM 'm.csv' CSV HEADER
CREATE TABLE t2 (id INT, name TEXT, x DOUBLE, d DATE);
\copy t2 FROM 't.csv' CSV HEADER
CREATE TABLE t3 (id INT, name TEXT, x DOUBLE, d DATE);
\copy t3 FROM 't.txt'
SELECT i, j, v FROM m2 ORDER BY i, j;
SELECT id, name IS NULL, x, d FROM t2 ORDER BY id;
SELECT count(*) FROM t3 JOIN t2 USING (id) WHERE (t3.name IS NOT DISTINCT FROM t2.name)
    AND (t3.x IS NOT DISTINCT FROM t2.x) AND (t3.d IS NOT DISTINCT FROM t2.d);
"#,
    )
    .await;
    assert_eq!(code, 0, "{err}");

    // The files, as PostgreSQL writes them (worked by hand): quoting, NULLs as empty
    // fields in CSV and `\N` in text, floats in their shortest form.
    let file = |name: &str| std::fs::read_to_string(d.join(name)).unwrap();
    // An array's cells come out in storage order (shard by shard), like a table's rows.
    let mut m_csv: Vec<String> = file("m.csv").lines().map(String::from).collect();
    m_csv[1..].sort();
    assert_eq!(
        m_csv,
        ["i,j,v", "0,0,1.5", "0,2,2", "1,3,-3", "2,0,40000000000"]
    );
    assert_eq!(
        file("t.csv"),
        "id,name,x,d\n1,\"a,b\",1.5,2024-01-02\n2,,,\n3,\"q\"\"uote\",-0.25,1999-12-31\n"
    );
    assert_eq!(
        file("t.txt"),
        "1\ta,b\t1.5\t2024-01-02\n2\t\\N\t\\N\t\\N\n3\tq\"uote\t-0.25\t1999-12-31\n"
    );
    assert_eq!(file("m0.csv"), "0,1.5\n2,2\n");

    // psql reports each COPY's row count and, with \timing, each statement's time.
    let reported: Vec<&str> = out.lines().filter(|l| l.starts_with("COPY ")).collect();
    assert_eq!(
        reported,
        [
            "COPY 4", "COPY 3", "COPY 3", "COPY 2", "COPY 4", "COPY 3", "COPY 3"
        ],
        "{out}"
    );
    let timings = out.lines().filter(|l| l.starts_with("Time: ")).count();
    assert_eq!(timings, 17, "one `Time:` line per statement:\n{out}");

    // What came back in equals what went out.
    let rows: Vec<&str> = lines(&out)
        .into_iter()
        .filter(|l| l.contains('|'))
        .collect();
    assert_eq!(
        rows,
        [
            "0|0|1.5",
            "0|2|2",
            "1|3|-3",
            "2|0|40000000000",
            "1|f|1.5|2024-01-02",
            "2|t||",
            "3|f|-0.25|1999-12-31",
        ],
        "{out}"
    );
    assert!(out.lines().any(|l| l == "3"), "t3 differs from t2:\n{out}");

    // A bad file is refused with its line, and nothing is loaded.
    std::fs::write(d.join("bad.csv"), "0,0,1\n0,x,2\n").unwrap();
    let (code, out, err) = run(
        port,
        d,
        "CREATE MATRIX m3 (3, 4);\n\\copy m3 FROM 'bad.csv' CSV\n",
    )
    .await;
    assert_ne!(code, 0, "loading bad.csv succeeded: {out}");
    assert!(err.contains("22P02") && err.contains("line 2"), "{err}");
    let (code, out, err) = run(port, d, "SELECT count(*) FROM m3;\n").await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(lines(&out), ["0"]);

    server.shutdown().await;
}
