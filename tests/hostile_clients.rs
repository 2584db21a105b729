//! One client must never stop the server (issue 14): statements nested or chained
//! thousands deep, protocol messages whose lengths lie, bytes that are not UTF-8,
//! connections that never authenticate, panics, passwords that need SASLprep, garbage
//! protobuf. Each is sent over pgwire and Flight SQL to an in-process server and, for
//! the deep statements, to a `tessera serve` child process (its threads have other
//! stacks than the test's), and the server must answer `SELECT 1` afterwards.

use std::io::{Read, Write};
use std::net::TcpStream as StdTcpStream;
use std::time::Duration;

use arrow_flight::sql::client::FlightSqlServiceClient;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::util::display::array_value_to_string;
use futures::TryStreamExt;
use tessera_server::config::{AuthMethod, ServerConfig, TlsConfig, UserConfig};
use tessera_server::{Database, SQLSTATE_METADATA_KEY, Server, ServerHandle};
use tokio_postgres::{NoTls, SimpleQueryMessage};
use tonic::transport::{Channel, Endpoint};

use crate::clients::spawn_serve;
use crate::sql_database::tessera_binary;

/// A deep statement and its answer: the first column of the first row, and the row
/// count (PostgreSQL answers all of them; Tessera may refuse with 54001 instead).
struct Deep {
    what: &'static str,
    sql: String,
    first: String,
    rows: usize,
}

fn chain(term: &str, op: &str, n: usize) -> String {
    vec![term; n].join(op)
}

/// The statements of the issue (about 4 KB and more of SQL each) and some deep ones
/// that must still be answered.
fn deep_statements() -> Vec<Deep> {
    let deep = |what, sql: String, first: &str, rows| Deep {
        what,
        sql,
        first: first.to_string(),
        rows,
    };
    vec![
        deep(
            "2,000 additions",
            format!("SELECT {}", chain("1", "+", 2000)),
            "2000",
            1,
        ),
        deep(
            "5,000 ORs",
            format!("SELECT {} AS b", chain("1 = 0", " OR ", 5000)),
            "false",
            1,
        ),
        deep(
            "10,000 ANDs",
            format!("SELECT {} AS b", chain("1 = 1", " AND ", 10_000)),
            "true",
            1,
        ),
        deep(
            "10,000 concatenations",
            format!("SELECT {} AS s", chain("'a'", " || ", 10_000)),
            &"a".repeat(10_000),
            1,
        ),
        deep(
            "5,000 UNION ALLs",
            chain("SELECT 1 AS x", " UNION ALL ", 5000),
            "1",
            5000,
        ),
        deep(
            "5,000 nested parentheses",
            format!("SELECT {}1{}", "(".repeat(5000), ")".repeat(5000)),
            "1",
            1,
        ),
        deep(
            "2,000 nested subqueries",
            format!(
                "SELECT {}1 AS x{}",
                "x FROM (SELECT ".repeat(2000),
                ")".repeat(2000)
            ),
            "1",
            1,
        ),
        deep(
            "2,000 joins",
            format!(
                "SELECT count(*) FROM {}",
                chain("(SELECT 1 AS a)", " CROSS JOIN ", 2000).replacen(
                    "(SELECT 1 AS a)",
                    "(SELECT 1 AS a) t",
                    1
                )
            ),
            "1",
            1,
        ),
        // Within the limit: answered, on 2 MiB worker stacks too.
        deep(
            "150 additions of a column",
            format!("SELECT {} FROM (SELECT 2 AS a) t", chain("a", " + ", 150)),
            "300",
            1,
        ),
        // Just under the bound (`MAX_NESTING` is 200 levels).
        deep(
            "190 additions of a column",
            format!("SELECT {} FROM (SELECT 1 AS a) t", chain("a", " + ", 190)),
            "190",
            1,
        ),
        deep(
            "190 ORs of comparisons",
            format!(
                "SELECT count(*) FROM (SELECT 5 AS a) t WHERE {}",
                (0..190)
                    .map(|k| format!("a = {k}"))
                    .collect::<Vec<_>>()
                    .join(" OR ")
            ),
            "1",
            1,
        ),
        deep(
            "150 ANDs",
            format!("SELECT {} AS b", chain("1 = 1", " AND ", 150)),
            "true",
            1,
        ),
        deep(
            "100 UNION ALLs",
            chain("SELECT 1 AS x", " UNION ALL ", 100),
            "1",
            100,
        ),
        deep(
            "40 nested parentheses",
            format!("SELECT {}7{}", "(".repeat(40), ")".repeat(40)),
            "7",
            1,
        ),
    ]
}

/// Within [`tessera_planner::ddl::MAX_NESTING`]: must be answered, never refused.
fn must_answer(d: &Deep) -> bool {
    ["190 ", "150 ", "100 ", "40 "]
        .iter()
        .any(|n| d.what.starts_with(n))
}

/// Checks one answer: the right rows, or 54001.
fn check(d: &Deep, via: &str, answer: Result<(String, usize), String>) {
    match answer {
        Ok((first, rows)) => {
            // pgwire's text format writes a boolean as `t`.
            let first = if first == "t" {
                "true".to_string()
            } else {
                first
            };
            assert_eq!(
                (first.as_str(), rows),
                (d.first.as_str(), d.rows),
                "{via}: {}",
                d.what
            );
        }
        Err(code) => {
            assert!(!must_answer(d), "{via}: {} was refused: {code}", d.what);
            assert_eq!(code, "54001", "{via}: {}", d.what);
        }
    }
}

async fn pg_connect(port: u16) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=tessera dbname=tessera connect_timeout=10"),
        NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// The first value and row count of a simple query, or its SQLSTATE.
async fn pg_answer(client: &tokio_postgres::Client, sql: &str) -> Result<(String, usize), String> {
    match client.simple_query(sql).await {
        Ok(messages) => {
            let rows: Vec<_> = messages
                .iter()
                .filter_map(|m| match m {
                    SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("NULL").to_string()),
                    _ => None,
                })
                .collect();
            Ok((rows.first().cloned().unwrap_or_default(), rows.len()))
        }
        Err(e) => Err(e
            .code()
            .map(|c| c.code().to_string())
            .unwrap_or_else(|| format!("no SQLSTATE: {e}"))),
    }
}

async fn flight_client(addr: std::net::SocketAddr) -> FlightSqlServiceClient<Channel> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap();
    FlightSqlServiceClient::new(channel)
}

fn first_and_count(batches: &[RecordBatch]) -> (String, usize) {
    let rows = batches.iter().map(RecordBatch::num_rows).sum();
    let first = batches
        .iter()
        .find(|b| b.num_rows() > 0)
        .map(|b| array_value_to_string(b.column(0), 0).unwrap())
        .unwrap_or_default();
    (first, rows)
}

fn status_sqlstate(status: &tonic::Status) -> String {
    status
        .metadata()
        .get(SQLSTATE_METADATA_KEY)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_else(|| format!("no SQLSTATE: {status}"))
}

/// The first value and row count of a Flight SQL query, or its SQLSTATE.
async fn flight_answer(
    client: &mut FlightSqlServiceClient<Channel>,
    sql: &str,
) -> Result<(String, usize), String> {
    let sqlstate = |e: arrow_flight::error::FlightError| match e {
        arrow_flight::error::FlightError::Tonic(s) => status_sqlstate(&s),
        other => format!("not a status: {other}"),
    };
    let info = client
        .execute(sql.to_string(), None)
        .await
        .map_err(sqlstate)?;
    let mut batches = Vec::new();
    for endpoint in info.endpoint {
        let stream = client
            .do_get(endpoint.ticket.unwrap())
            .await
            .map_err(sqlstate)?;
        batches.extend(stream.try_collect::<Vec<_>>().await.map_err(sqlstate)?);
    }
    Ok(first_and_count(&batches))
}

/// Sends every deep statement over both wires; the server answers `SELECT 1` after.
async fn send_deep_statements(pg_port: u16, flight: std::net::SocketAddr) {
    let pg = pg_connect(pg_port).await;
    let mut fl = flight_client(flight).await;
    for d in deep_statements() {
        check(&d, "pgwire", pg_answer(&pg, &d.sql).await);
        check(&d, "Flight SQL", flight_answer(&mut fl, &d.sql).await);
        // The extended protocol plans in Parse.
        let prepared = pg.prepare(&d.sql).await;
        if let Err(e) = &prepared {
            let code = e.code().map(|c| c.code().to_string()).unwrap_or_default();
            assert!(
                !must_answer(&d) && code == "54001",
                "Parse of {}: {e}",
                d.what
            );
        }
    }
    assert_eq!(pg_answer(&pg, "SELECT 1").await, Ok(("1".into(), 1)));
    assert_eq!(
        flight_answer(&mut fl, "SELECT 1").await,
        Ok(("1".into(), 1))
    );
    let fresh = pg_connect(pg_port).await;
    assert_eq!(pg_answer(&fresh, "SELECT 1").await, Ok(("1".into(), 1)));
}

async fn start(edit: impl FnOnce(&mut ServerConfig)) -> (ServerHandle, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig {
        data_dir: dir.path().join("db"),
        pg_listen: "127.0.0.1:0".into(),
        flight_listen: Some("127.0.0.1:0".into()),
        ..ServerConfig::default()
    };
    edit(&mut config);
    (Server::builder().config(config).build().await.unwrap(), dir)
}

/// In process, on tokio's default 2 MiB worker stacks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_statements_answer_or_54001_in_process() {
    let (server, _dir) = start(|_| {}).await;
    send_deep_statements(server.local_addr().port(), server.flight_addr().unwrap()).await;
    // And through the embedded API.
    let db: &Database = server.database();
    for d in deep_statements() {
        let answer = match db.sql(&d.sql).await {
            Ok(batches) => Ok(first_and_count(&batches)),
            Err(e) => Err(tessera_server::errors::sqlstate(&e).to_string()),
        };
        check(&d, "in-process", answer);
    }
    server.shutdown().await;
}

/// `tessera serve` as users run it: the process must not abort.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_statements_never_abort_tessera_serve() {
    let dir = tempfile::tempdir().unwrap();
    let flight_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let flight = format!("127.0.0.1:{flight_port}");
    let (mut child, mut stderr, port) = spawn_serve(
        &tessera_binary(),
        &dir.path().join("db"),
        &["--flight-listen", &flight],
        &[],
    );
    // Read the server's log so that it never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut sink = String::new();
        let _ = stderr.read_to_string(&mut sink);
    });
    send_deep_statements(port, flight.parse().unwrap()).await;
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "tessera serve exited"
    );
}

// ---- raw protocol -------------------------------------------------------------------

/// A frontend message: type byte, length, body.
pub(crate) fn message(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![kind];
    m.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn startup(user: &str) -> Vec<u8> {
    let mut body = 196608i32.to_be_bytes().to_vec();
    for s in ["user", user, "database", "tessera"] {
        body.extend_from_slice(s.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut m = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    m.extend(body);
    m
}

/// Reads one backend message; `None` once the server closed the connection.
fn read_message(s: &mut StdTcpStream) -> Option<(u8, Vec<u8>)> {
    let mut header = [0u8; 5];
    s.read_exact(&mut header).ok()?;
    let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    let mut body = vec![0u8; len - 4];
    s.read_exact(&mut body).ok()?;
    Some((header[0], body))
}

/// The field `field` ('C' SQLSTATE, 'S' severity, 'M' message) of an ErrorResponse.
fn error_field(body: &[u8], field: u8) -> String {
    body.split(|b| *b == 0)
        .find(|f| f.first() == Some(&field))
        .map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
        .unwrap_or_default()
}

/// Every message until ReadyForQuery (included) or the end of the connection.
pub(crate) fn until_ready(s: &mut StdTcpStream) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some(m) = read_message(s) {
        let ready = m.0 == b'Z';
        out.push(m);
        if ready {
            break;
        }
    }
    out
}

/// A connection past startup (trust).
pub(crate) fn connected(port: u16) -> StdTcpStream {
    let mut s = StdTcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&startup("tessera")).unwrap();
    let greeting = until_ready(&mut s);
    assert_eq!(greeting.last().map(|m| m.0), Some(b'Z'), "no ReadyForQuery");
    s
}

fn query(sql: &[u8]) -> Vec<u8> {
    let mut body = sql.to_vec();
    body.push(0);
    message(b'Q', &body)
}

/// The ErrorResponses (SQLSTATE) and DataRow count among `messages`.
fn errors_of(messages: &[(u8, Vec<u8>)]) -> Vec<String> {
    messages
        .iter()
        .filter(|m| m.0 == b'E')
        .map(|m| error_field(&m.1, b'C'))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bind_whose_lengths_lie_closes_only_its_connection_with_08p01() {
    let (server, _dir) = start(|_| {}).await;
    let port = server.local_addr().port();
    let healthy = pg_connect(port).await;
    tokio::task::spawn_blocking(move || {
        let mut s = connected(port);
        // Parse "SELECT $1::text", then a Bind whose one parameter claims 1000 bytes
        // and brings 3: pgwire's decoder used to panic on it.
        let mut parse = b"\0SELECT $1::text\0".to_vec();
        parse.extend_from_slice(&0i16.to_be_bytes());
        let mut bind = b"\0\0".to_vec();
        bind.extend_from_slice(&0i16.to_be_bytes());
        bind.extend_from_slice(&1i16.to_be_bytes());
        bind.extend_from_slice(&1000i32.to_be_bytes());
        bind.extend_from_slice(b"abc");
        bind.extend_from_slice(&0i16.to_be_bytes());
        let mut bytes = message(b'P', &parse);
        bytes.extend(message(b'B', &bind));
        bytes.extend(message(b'S', &[]));
        s.write_all(&bytes).unwrap();
        let mut answers = Vec::new();
        while let Some(m) = read_message(&mut s) {
            answers.push(m);
        }
        let errors: Vec<_> = answers.iter().filter(|m| m.0 == b'E').collect();
        assert_eq!(errors.len(), 1, "{answers:?}");
        assert_eq!(error_field(&errors[0].1, b'C'), "08P01");
        assert_eq!(error_field(&errors[0].1, b'S'), "FATAL");
        assert!(
            error_field(&errors[0].1, b'M').contains("Bind"),
            "{:?}",
            error_field(&errors[0].1, b'M')
        );
        // Closed, with no ReadyForQuery after the FATAL error.
        assert!(answers.iter().all(|m| m.0 != b'Z'), "{answers:?}");
    })
    .await
    .unwrap();
    assert_eq!(pg_answer(&healthy, "SELECT 1").await, Ok(("1".into(), 1)));
    assert_eq!(
        pg_answer(&pg_connect(port).await, "SELECT 2").await,
        Ok(("2".into(), 1))
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_in_a_query_is_22021_and_the_connection_goes_on() {
    let (server, _dir) = start(|_| {}).await;
    let port = server.local_addr().port();
    tokio::task::spawn_blocking(move || {
        let mut s = connected(port);
        // Simple protocol: 22021, ReadyForQuery, the connection stays.
        s.write_all(&query(b"SELECT 'caf\xe9' AS s")).unwrap();
        let answer = until_ready(&mut s);
        assert_eq!(errors_of(&answer), ["22021"], "{answer:?}");
        assert_eq!(answer.last().unwrap().0, b'Z');
        // Extended protocol: Parse fails with 22021, the rest up to Sync is skipped.
        let mut parse = b"\0SELECT '\xff\xfe'\0".to_vec();
        parse.extend_from_slice(&0i16.to_be_bytes());
        let mut bytes = message(b'P', &parse);
        bytes.extend(message(b'S', &[]));
        s.write_all(&bytes).unwrap();
        let answer = until_ready(&mut s);
        assert_eq!(errors_of(&answer), ["22021"], "{answer:?}");
        // The same connection answers a good query; 'é' in UTF-8 is fine.
        s.write_all(&query("SELECT 'café' AS s".as_bytes()))
            .unwrap();
        let answer = until_ready(&mut s);
        assert!(errors_of(&answer).is_empty(), "{answer:?}");
        let row = answer.iter().find(|m| m.0 == b'D').expect("a row");
        assert!(row.1.ends_with("café".as_bytes()), "{row:?}");
    })
    .await
    .unwrap();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_with_a_multibyte_value_is_an_error_and_the_connection_goes_on() {
    let (server, _dir) = start(|_| {}).await;
    let client = pg_connect(server.local_addr().port()).await;
    // Once a slice inside 'é' that panicked and dropped the connection.
    assert_eq!(
        pg_answer(&client, "SET application_name 'é'").await,
        Err("42601".into())
    );
    pg_answer(&client, "SET application_name = 'é'")
        .await
        .unwrap();
    assert_eq!(
        pg_answer(&client, "SHOW application_name").await,
        Ok(("é".into(), 1))
    );
    assert_eq!(pg_answer(&client, "SELECT 1").await, Ok(("1".into(), 1)));
    server.shutdown().await;
}

/// A FATAL error ends the connection: it is the last message, never followed by
/// ReadyForQuery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fatal_authentication_errors_are_not_followed_by_ready_for_query() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = crate::pgwire::self_signed(certs.path());
    let (server, _dir) = start(|c| {
        c.tls = Some(TlsConfig {
            cert,
            key,
            required: true,
        });
        c.auth.method = AuthMethod::ScramSha256;
        c.users.push(UserConfig {
            name: "alice".into(),
            password: Some("pw".into()),
            scram_verifier: None,
        });
    })
    .await;
    let port = server.local_addr().port();
    tokio::task::spawn_blocking(move || {
        // Plaintext when TLS is required: 28000.
        let mut s = StdTcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&startup("alice")).unwrap();
        let mut answers = Vec::new();
        while let Some(m) = read_message(&mut s) {
            answers.push(m);
        }
        assert_eq!(answers.len(), 1, "{answers:?}");
        assert_eq!(answers[0].0, b'E');
        assert_eq!(error_field(&answers[0].1, b'C'), "28000");
        assert_eq!(error_field(&answers[0].1, b'S'), "FATAL");
    })
    .await
    .unwrap();
    server.shutdown().await;
}

// ---- connection slots -----------------------------------------------------------------

/// Connects as `user`, retrying for up to ten seconds while the server answers that
/// no slot is free (a closed connection's slot frees when the server notices).
async fn connect_when_a_slot_frees(port: u16, user: &str) -> tokio_postgres::Client {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio_postgres::connect(
            &format!("host=127.0.0.1 port={port} user={user} dbname=tessera"),
            NoTls,
        )
        .await
        {
            Ok((client, connection)) => {
                tokio::spawn(connection);
                return client;
            }
            Err(e) if tokio::time::Instant::now() < deadline => {
                assert_eq!(e.code().map(|c| c.code()), Some("53300"), "{e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("no slot freed in ten seconds: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn silent_connections_cannot_lock_clients_out() {
    let (server, _dir) = start(|c| {
        c.max_connections = 5;
        c.superuser_reserved_connections = 1;
        c.max_startup_connections = 8;
        c.startup_timeout = "60s".into();
        c.auth.superusers = vec!["boss".into()];
    })
    .await;
    let port = server.local_addr().port();
    // 110 connections that never send a startup message (the attack).
    let silent: Vec<StdTcpStream> = (0..110)
        .map(|_| StdTcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    // Real clients get in at once (the startup timeout is a minute here).
    let answered = tokio::time::timeout(Duration::from_secs(20), async {
        let client = pg_connect(port).await;
        pg_answer(&client, "SELECT 1").await
    })
    .await
    .expect("a real client was locked out");
    assert_eq!(answered, Ok(("1".into(), 1)));
    drop(silent);

    // Authenticated connections count against max_connections (5), one of them
    // reserved for superusers: four ordinary users, then 53300.
    // The first client's slot frees when the server sees it close, which can trail the
    // drop under load: each of the four waits for a slot.
    let mut ordinary = Vec::new();
    for _ in 0..4 {
        ordinary.push(connect_when_a_slot_frees(port, "tessera").await);
    }
    let e = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=tessera dbname=tessera"),
        NoTls,
    )
    .await
    .err()
    .expect("a fifth ordinary connection");
    assert_eq!(e.code().unwrap().code(), "53300", "{e}");
    let message = e
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default();
    assert!(message.contains("reserved"), "{e}: {message}");
    // The superuser takes the reserved slot; after it, nobody gets in.
    let (boss, connection) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=boss dbname=tessera"),
        NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    assert_eq!(pg_answer(&boss, "SELECT 5").await, Ok(("5".into(), 1)));
    let e = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=boss dbname=tessera"),
        NoTls,
    )
    .await
    .err()
    .expect("a sixth connection");
    assert_eq!(e.code().unwrap().code(), "53300", "{e}");
    // A slot comes back when its connection ends. (As in PostgreSQL, an ordinary user
    // needs more free slots than are reserved, so the superuser leaves too.)
    drop(ordinary.pop());
    drop(boss);
    let again = connect_when_a_slot_frees(port, "tessera").await;
    assert_eq!(pg_answer(&again, "SELECT 1").await, Ok(("1".into(), 1)));
    server.shutdown().await;
}

// ---- SASLprep and channel binding ----------------------------------------------------

/// A password typed with a decomposed accent and a no-break space: libpq normalizes
/// it with SASLprep before deriving its keys, so the server must too.
const PASSWORD: &str = "cafe\u{301}\u{a0}cre\u{300}me";

fn psql_login(port: u16, conninfo: &str, password: &str) -> (bool, String) {
    let out = std::process::Command::new("psql")
        .args(["-X", "-A", "-t", "-c", "SELECT 42"])
        .arg(format!(
            "host=localhost port={port} user=zoe dbname=tessera {conninfo}"
        ))
        .env("PGPASSWORD", password)
        .output()
        .expect("psql must be installed");
    (
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "42",
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_are_saslprepped_and_tls_offers_channel_binding() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = crate::pgwire::self_signed(certs.path());
    let root = cert.clone();
    let (server, _dir) = start(|c| {
        c.tls = Some(TlsConfig {
            cert,
            key,
            required: false,
        });
        c.auth.method = AuthMethod::ScramSha256;
        c.users.push(UserConfig {
            name: "zoe".into(),
            password: Some(PASSWORD.into()),
            scram_verifier: None,
        });
    })
    .await;
    let port = server.local_addr().port();
    // tokio-postgres (SASLprep in postgres-protocol), plaintext.
    let (client, connection) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user("zoe")
        .dbname("tessera")
        .password(PASSWORD)
        .connect(NoTls)
        .await
        .expect("the configured password as typed");
    tokio::spawn(connection);
    assert_eq!(pg_answer(&client, "SELECT 1").await, Ok(("1".into(), 1)));
    let root = root.display().to_string();
    let results = tokio::task::spawn_blocking(move || {
        [
            // libpq, the same password, and its composed spelling with a plain space.
            psql_login(port, "sslmode=disable", PASSWORD),
            psql_login(port, "sslmode=disable", "café crème"),
            // Over TLS with channel binding required: SCRAM-SHA-256-PLUS.
            psql_login(
                port,
                &format!("sslmode=verify-full sslrootcert={root} channel_binding=require"),
                PASSWORD,
            ),
            // A wrong password still fails.
            psql_login(port, "sslmode=disable", "cafe creme"),
        ]
    })
    .await
    .unwrap();
    assert!(results[0].0, "as typed: {}", results[0].1);
    assert!(results[1].0, "composed: {}", results[1].1);
    assert!(results[2].0, "channel_binding=require: {}", results[2].1);
    assert!(!results[3].0, "a wrong password logged in");
    server.shutdown().await;
}

// ---- Flight SQL ----------------------------------------------------------------------

/// A gRPC codec that sends raw bytes as the request message, to send protobuf that
/// does not decode, and ignores the answer's body.
#[derive(Debug, Clone, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = bytes::Bytes;
    type Decode = ();
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = bytes::Bytes;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: bytes::Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = ();
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<()>, tonic::Status> {
        let n = bytes::Buf::remaining(src);
        bytes::Buf::advance(src, n);
        Ok(Some(()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flight_garbage_protobuf_is_invalid_argument() {
    let (server, _dir) = start(|_| {}).await;
    let addr = server.flight_addr().unwrap();
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    // Bytes that are no protobuf message at all (a field with wire type 7), as the
    // request of every unary and streaming call.
    let garbage = bytes::Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
    for method in [
        "GetFlightInfo",
        "GetSchema",
        "PollFlightInfo",
        "DoGet",
        "DoAction",
        "ListFlights",
    ] {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.unwrap();
        let path = tonic::codegen::http::uri::PathAndQuery::try_from(format!(
            "/arrow.flight.protocol.FlightService/{method}"
        ))
        .unwrap();
        let status = if matches!(method, "DoGet" | "DoAction" | "ListFlights") {
            match grpc
                .server_streaming(tonic::Request::new(garbage.clone()), path, RawCodec)
                .await
            {
                Err(s) => s,
                Ok(r) => r
                    .into_inner()
                    .try_collect::<Vec<_>>()
                    .await
                    .expect_err(method),
            }
        } else {
            grpc.unary(tonic::Request::new(garbage.clone()), path, RawCodec)
                .await
                .expect_err(method)
        };
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{method}: {status}"
        );
        assert_eq!(status_sqlstate(&status), "08P01", "{method}: {status}");
    }
    let mut client = flight_client(addr).await;
    assert_eq!(
        flight_answer(&mut client, "SELECT 1").await,
        Ok(("1".into(), 1))
    );
    server.shutdown().await;
}
