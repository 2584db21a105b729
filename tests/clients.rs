//! Real clients against the server, as users run them: psycopg 3 (Python), PostgreSQL's
//! JDBC driver, pgbench under load, and the `tessera serve` process stopped by SIGTERM.
//! `.ci/run` installs every client; a missing one fails its test rather than skipping.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tessera_server::config::{AuthMethod, ServerConfig, UserConfig};
use tessera_server::{Server, ServerHandle};
use tokio_postgres::NoTls;

use crate::psql::start;
use crate::python;
use crate::sql_database::tessera_binary;

const CLIENTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/clients");

/// Runs `program` off the async threads; returns (success, stdout, stderr).
async fn run(mut command: Command) -> (bool, String, String) {
    tokio::task::spawn_blocking(move || {
        let out = command
            .output()
            .unwrap_or_else(|e| panic!("cannot run {command:?}: {e} (.ci/run installs it)"));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

/// Runs `tests/clients/<script>` with the port of a server on a new data directory;
/// the script prints "ok".
async fn run_pg_script(script: &str) {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let port = server.local_addr().port().to_string();
    let script = std::fs::read_to_string(Path::new(CLIENTS).join(script)).unwrap();
    let cwd = dir.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || python::run_args(&cwd, &script, &[&port]))
        .await
        .unwrap();
    assert_eq!(out.trim(), "ok");
    server.shutdown().await;
}

/// psycopg 3: parameters, binary results, COPY, rows() into NumPy, a matmul into SciPy
/// (checked against NumPy), cancel and statement_timeout. The checks are in the script.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn psycopg_parameters_binary_results_numpy_scipy_and_cancel() {
    run_pg_script("psycopg_client.py").await;
}

/// pgcli through its own executor and pgspecial: `\dt`, `\d`, `\d+ t`, `\dn`, `\df`
/// and the catalog queries of its completion refresher. The checks are in the script.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pgcli_describes_tables_and_fills_its_completions() {
    run_pg_script("pgcli_client.py").await;
}

/// PostgreSQL's JDBC driver: statements, server-side prepared statements, float8[],
/// DatabaseMetaData (getTables, getColumns, getPrimaryKeys, getSchemas) and SQLSTATEs.
/// The checks are in the Java program.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jdbc_statements_prepared_statements_arrays_and_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut java = Command::new("java");
    java.args(["-cp", "/usr/share/java/postgresql.jar"])
        .arg(Path::new(CLIENTS).join("JdbcClient.java"))
        .arg(server.local_addr().port().to_string());
    let (ok, out, err) = run(java).await;
    assert!(ok, "the JDBC client failed:\n{out}\n{err}");
    assert_eq!(out.trim(), "ok");
    server.shutdown().await;
}

/// pgbench with a custom read script (a matrix cell, a table row, a constant), eight
/// clients for 30 seconds: every transaction succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pgbench_eight_clients_for_thirty_seconds_without_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let db = server.database();
    db.sql(
        "CREATE MATRIX bm (100, 100) BLOCK (32, 32);
         INSERT INTO bm SELECT i, j, v FROM rand(100, 100, seed => 3);
         CREATE TABLE accounts AS
             SELECT CAST(value AS INT) AS id, value * 2.5 AS balance
             FROM generate_series(1, 1000) AS t(value);",
    )
    .await
    .unwrap();
    let script = dir.path().join("read.pgbench");
    std::fs::write(
        &script,
        "\\set r random(0, 99)\n\\set a random(1, 1000)\n\
         SELECT v FROM bm WHERE i = :r AND j = 99 - :r;\n\
         SELECT balance FROM accounts WHERE id = :a;\n\
         SELECT 1;\n",
    )
    .unwrap();
    let mut pgbench = Command::new("pgbench");
    pgbench
        .args([
            "-n",
            "-h",
            "127.0.0.1",
            "-U",
            "tessera",
            "-c",
            "8",
            "-j",
            "2",
        ])
        .args(["-T", "30", "-M", "extended", "-p"])
        .arg(server.local_addr().port().to_string())
        .arg("-f")
        .arg(&script)
        .arg("tessera");
    let (ok, out, err) = run(pgbench).await;
    assert!(ok, "pgbench failed:\n{out}\n{err}");
    let field = |prefix: &str| -> u64 {
        out.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no `{prefix}` in pgbench's output:\n{out}"))
    };
    assert_eq!(field("number of failed transactions: "), 0, "{out}\n{err}");
    let done = field("number of transactions actually processed: ");
    assert!(done >= 100, "only {done} transactions in 30 s:\n{out}");
    server.shutdown().await;
}

/// `tessera serve` stopped by SIGTERM while a statement runs: the statement finishes and
/// its client gets the answer, new connections are refused, the process exits 0, and
/// what was committed is there when the data directory is opened again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_lets_running_statements_finish_and_keeps_committed_data() {
    let binary = tessera_binary();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("db");
    let (mut child, mut stderr, port) = spawn_serve(&binary, &data, &[], &[]);

    let connect = || async {
        let (client, connection) = tokio_postgres::connect(
            &format!("host=127.0.0.1 port={port} user=tessera dbname=tessera"),
            NoTls,
        )
        .await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok::<_, tokio_postgres::Error>(client)
    };
    let writer = connect().await.unwrap();
    writer
        .batch_execute(
            "CREATE MATRIX kept (3, 3);
             INSERT INTO kept VALUES (0, 0, 1), (1, 1, 2), (2, 2, 4);
             CREATE TABLE notes AS SELECT 'committed' AS note;",
        )
        .await
        .unwrap();

    // A statement of a second or more, running when the signal arrives; the first
    // column's answer is worked by hand: the trace of 2 I @ 3 I over 1500 rows.
    let runner = connect().await.unwrap();
    let running = tokio::spawn(async move {
        runner
            .query_one(
                "SELECT s.a, b.n > 0 FROM \
                 (SELECT sum(v) AS a FROM matmul(scale(eye(1500), 2), scale(eye(1500), 3))) s \
                 CROSS JOIN (SELECT sum(v) AS n FROM \
                 matmul(rand(2000, 2000, seed => 1), rand(2000, 2000, seed => 2))) b",
                &[],
            )
            .await
            .map(|row| (row.get::<_, f64>(0), row.get::<_, bool>(1)))
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !running.is_finished(),
        "the statement ended before the signal"
    );
    let signalled = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());

    let answer = running.await.unwrap();
    assert_eq!(answer.unwrap(), (9000.0, true));
    let code = tokio::task::spawn_blocking(move || child.0.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(code.code(), Some(0), "tessera serve exited with {code}");
    assert!(signalled.elapsed() < Duration::from_secs(30));
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert!(rest.contains("shutting down"), "{rest}");
    assert!(
        connect().await.is_err(),
        "a connection was accepted after shutdown"
    );

    // Everything committed is there.
    let out = Command::new(&binary)
        .args(["sql", "--format", "csv", "--data-dir"])
        .arg(&data)
        .arg("SELECT sum(v) AS s, count(*) AS n, (SELECT note FROM notes) AS note FROM kept")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "s,n,note\n7.0,3,committed\n"
    );
}

/// `tessera serve` logs from its worker threads (here at debug level, a line per bad
/// connection) while it serves. The binary once held the stderr lock for its whole run,
/// so the first log line parked a worker for good and the server stopped answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_keeps_answering_while_worker_threads_log() {
    let dir = tempfile::tempdir().unwrap();
    let (child, mut stderr, port) = spawn_serve(
        &tessera_binary(),
        &dir.path().join("db"),
        &["--flight-listen", "off"],
        &[("TESSERA_LOG", "tessera_server=debug")],
    );
    let log = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut rest);
        rest
    });

    // More bad connections than worker threads, each logged as it is closed.
    tokio::task::spawn_blocking(move || {
        for _ in 0..6 {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            std::io::Write::write_all(&mut s, b"GET / HTTP/1.1\r\n\r\n").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut s, &mut sink);
        }
    })
    .await
    .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(20), async {
        let (client, connection) = tokio_postgres::connect(
            &format!("host=127.0.0.1 port={port} user=tessera dbname=tessera"),
            NoTls,
        )
        .await?;
        tokio::spawn(connection);
        let row = client.query_one("SELECT 40 + 2", &[]).await?;
        Ok::<i64, tokio_postgres::Error>(row.get(0))
    })
    .await;
    assert_eq!(answer.expect("the server stopped answering").unwrap(), 42);
    drop(child);
    let log = log.join().unwrap();
    assert!(log.contains("DEBUG"), "nothing was logged: {log}");
}

/// Starts `binary serve` on `data` and a free port, with `options` and `env` added, and
/// waits for its banner. Returns the process, the rest of its stderr, and the port.
pub(crate) fn spawn_serve(
    binary: &Path,
    data: &Path,
    options: &[&str],
    env: &[(&str, &str)],
) -> (KillOnDrop, BufReader<std::process::ChildStderr>, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = KillOnDrop(
        Command::new(binary)
            .arg("serve")
            .args(options)
            .arg("--data-dir")
            .arg(data)
            .args(["--pg-listen", &format!("127.0.0.1:{port}")])
            .envs(env.iter().copied())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // The server says where it listens once it does.
    let mut stderr = BufReader::new(child.0.stderr.take().unwrap());
    let mut banner = String::new();
    stderr.read_line(&mut banner).unwrap();
    assert!(banner.contains(&format!("127.0.0.1:{port}")), "{banner}");
    (child, stderr, port)
}

/// A child process that a failing test does not leave running.
pub(crate) struct KillOnDrop(pub(crate) std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A server with Flight SQL on, and SCRAM users when `password` is given.
async fn start_flight(dir: &Path, password: Option<&str>) -> ServerHandle {
    let mut config = ServerConfig {
        data_dir: dir.join("db"),
        pg_listen: "127.0.0.1:0".into(),
        flight_listen: Some("127.0.0.1:0".into()),
        ..ServerConfig::default()
    };
    if let Some(password) = password {
        config.auth.method = AuthMethod::ScramSha256;
        config.users.push(UserConfig {
            name: "analyst".into(),
            password: Some(password.into()),
            scram_verifier: None,
        });
    }
    Server::builder().config(config).build().await.unwrap()
}

/// Runs a Python client script from `tests/clients/` against a Flight server.
async fn run_flight_script(script: &str, password: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let server = start_flight(dir.path(), password).await;
    let uri = format!("grpc://{}", server.flight_addr().unwrap());
    let user = if password.is_some() {
        "analyst"
    } else {
        "tessera"
    };
    let password = password.unwrap_or("").to_string();
    let text = std::fs::read_to_string(Path::new(CLIENTS).join(script)).unwrap();
    let cwd = dir.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        python::run_args(&cwd, &text, &[&uri, user, &password])
    })
    .await
    .unwrap();
    assert_eq!(out.trim(), "ok");
    server.shutdown().await;
}

/// ADBC's Flight SQL driver through its DB-API: queries, prepared statements,
/// executemany, adbc_ingest into tables and arrays, metadata, wrong credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn adbc_flight_sql_dbapi_with_a_password() {
    run_flight_script("adbc_client.py", Some("s3cret")).await;
}

/// The same without users: trust on loopback.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn adbc_flight_sql_dbapi_on_trusted_loopback() {
    run_flight_script("adbc_client.py", None).await;
}

/// pyarrow.flight alone, with Flight SQL commands encoded by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pyarrow_flight_queries_with_basic_then_bearer_auth() {
    run_flight_script("pyarrow_flight_client.py", Some("s3cret")).await;
}
