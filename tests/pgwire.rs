//! The PostgreSQL protocol end to end: an in-process server on 127.0.0.1:0 over a
//! temporary data directory, driven by tokio-postgres (extended protocol with binary
//! results, simple protocol with text results) and by raw sockets for malformed input.

use std::io::{Read, Write};
use std::net::TcpStream as StdTcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{NaiveDate, NaiveDateTime};
use futures::{SinkExt, StreamExt};
use tessera_server::config::{AuthMethod, ServerConfig};
use tessera_server::{Database, DatabaseOptions, Server, ServerHandle};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

struct TestServer {
    server: ServerHandle,
    _dir: tempfile::TempDir,
}

impl TestServer {
    fn port(&self) -> u16 {
        self.server.local_addr().port()
    }

    async fn connect(&self) -> Client {
        connect_as(self.port(), "tessera", None).await.unwrap()
    }
}

fn config(dir: &std::path::Path) -> ServerConfig {
    ServerConfig {
        data_dir: dir.to_path_buf(),
        pg_listen: "127.0.0.1:0".into(),
        ..ServerConfig::default()
    }
}

async fn start_with(edit: impl FnOnce(&mut ServerConfig)) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    edit(&mut config);
    let server = Server::builder().config(config).build().await.unwrap();
    TestServer { server, _dir: dir }
}

async fn start() -> TestServer {
    start_with(|_| {}).await
}

async fn connect_as(
    port: u16,
    user: &str,
    password: Option<&str>,
) -> Result<Client, tokio_postgres::Error> {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(port)
        .user(user)
        .dbname("tessera")
        .connect_timeout(Duration::from_secs(10));
    if let Some(p) = password {
        config.password(p);
    }
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

fn code(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| format!("no SQLSTATE: {e}"))
}

fn message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_else(|| e.to_string())
}

/// The text rows of a simple query's last result.
async fn simple_rows(client: &Client, sql: &str) -> Vec<Vec<Option<String>>> {
    client
        .simple_query(sql)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pgwire_simple_protocol_runs_scripts_with_text_results() {
    let server = start().await;
    let client = server.connect().await;
    let messages = client
        .simple_query(
            "CREATE MATRIX m (3, 3);
             INSERT INTO m VALUES (0, 0, 1.5), (1, 2, -2.25), (2, 1, 1e20);
             SELECT i, j, v FROM m ORDER BY i",
        )
        .await
        .unwrap();
    let tags: Vec<u64> = messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::CommandComplete(n) => Some(*n),
            _ => None,
        })
        .collect();
    // CREATE MATRIX (no rows), INSERT 0 3, SELECT 3.
    assert_eq!(tags, [0, 3, 3]);
    let rows = simple_rows(&client, "SELECT i, j, v FROM m ORDER BY i").await;
    let expected = [["0", "0", "1.5"], ["1", "2", "-2.25"], ["2", "1", "1e+20"]];
    assert_eq!(rows.len(), 3);
    for (row, want) in rows.iter().zip(expected) {
        let got: Vec<&str> = row.iter().map(|v| v.as_deref().unwrap()).collect();
        assert_eq!(got, want);
    }
    // Text forms of the other types.
    let rows = simple_rows(
        &client,
        "SELECT true AS b, CAST(1.25 AS DECIMAL(10, 2)) AS n, 'x''y' AS s, NULL AS z,
                CAST('2024-02-29' AS DATE) AS d,
                CAST('2024-02-29 13:14:15.5' AS TIMESTAMP) AS t,
                CAST(X'00ff' AS BYTEA) AS bin",
    )
    .await;
    assert_eq!(
        rows[0],
        [
            Some("t".to_string()),
            Some("1.25".to_string()),
            Some("x'y".to_string()),
            None,
            Some("2024-02-29".to_string()),
            Some("2024-02-29 13:14:15.5".to_string()),
            Some("\\x00ff".to_string()),
        ]
    );
    // An empty query and a comment-only one.
    assert!(client.simple_query("").await.is_ok());
    assert!(client.simple_query("-- nothing").await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pgwire_extended_protocol_binds_typed_parameters_and_returns_binary() {
    let server = start().await;
    let client = server.connect().await;
    client
        .batch_execute(
            "CREATE MATRIX m (2, 3);
             INSERT INTO m VALUES (0, 0, 1.5), (0, 2, 2.0), (1, 1, 3.0)",
        )
        .await
        .unwrap();
    // A prepared statement, executed twice with different parameters.
    let by_row = client
        .prepare("SELECT j, v FROM m WHERE i = $1 ORDER BY j")
        .await
        .unwrap();
    assert_eq!(by_row.params(), &[tokio_postgres::types::Type::INT8]);
    let rows = client.query(&by_row, &[&0i64]).await.unwrap();
    let got: Vec<(i64, f64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(got, [(0, 1.5), (2, 2.0)]);
    let rows = client.query(&by_row, &[&1i64]).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, f64>(1), 3.0);

    // Every parameter type, sent in binary, returned in binary.
    let date = NaiveDate::from_ymd_opt(2024, 2, 29).unwrap();
    let ts: NaiveDateTime = date.and_hms_micro_opt(13, 14, 15, 500_000).unwrap();
    let row = client
        .query_one(
            "SELECT $1::INT AS a, $2::DOUBLE * 2 AS b, $3::VARCHAR AS c, NOT $4::BOOLEAN AS d,
                    $5::DATE AS e, $6::TIMESTAMP AS f, $7::SMALLINT AS g, $8::BIGINT AS h,
                    $9::REAL AS k",
            &[
                &41i32,
                &1.25f64,
                &"héllo",
                &true,
                &date,
                &ts,
                &7i16,
                &(1i64 << 40),
                &0.5f32,
            ],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 41);
    assert_eq!(row.get::<_, f64>(1), 2.5);
    assert_eq!(row.get::<_, String>(2), "héllo");
    assert!(!row.get::<_, bool>(3));
    assert_eq!(row.get::<_, NaiveDate>(4), date);
    assert_eq!(row.get::<_, NaiveDateTime>(5), ts);
    assert_eq!(row.get::<_, i16>(6), 7);
    assert_eq!(row.get::<_, i64>(7), 1i64 << 40);
    assert_eq!(row.get::<_, f32>(8), 0.5);
    // NULL parameters.
    let row = client
        .query_one("SELECT $1::BIGINT IS NULL", &[&None::<i64>])
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0));
    // Writes with parameters: the tag carries the count.
    let n = client
        .execute(
            "INSERT INTO m VALUES ($1, $2, $3)",
            &[&1i64, &2i64, &9.0f64],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    let total: f64 = client
        .query_one("SELECT sum(v) FROM m", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(total, 1.5 + 2.0 + 3.0 + 9.0);
    // Tessera's own statements work in the extended protocol too.
    let arrays = client.query("SHOW ARRAYS", &[]).await.unwrap();
    assert_eq!(arrays.len(), 1);
    assert_eq!(arrays[0].get::<_, String>("name"), "m");
    // Portals: fetch a result in pieces inside a transaction.
    let mut client = client;
    let tx = client.transaction().await.unwrap();
    let portal = tx
        .bind("SELECT i, j FROM m ORDER BY i, j", &[])
        .await
        .unwrap();
    let first = tx.query_portal(&portal, 2).await.unwrap();
    let rest = tx.query_portal(&portal, 10).await.unwrap();
    assert_eq!((first.len(), rest.len()), (2, 2));
    tx.commit().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pgwire_rows_of_a_matrix_come_back_as_float8_arrays() {
    let server = start().await;
    let client = server.connect().await;
    client
        .batch_execute(
            "CREATE MATRIX m (2, 3);
             INSERT INTO m VALUES (0, 0, 1.5), (0, 2, -2.0), (1, 1, 4.25)",
        )
        .await
        .unwrap();
    let rows = client
        .query("SELECT * FROM rows(m) ORDER BY i", &[])
        .await
        .unwrap();
    assert_eq!(
        rows[0].columns()[1].type_(),
        &tokio_postgres::types::Type::FLOAT8_ARRAY
    );
    let dense: Vec<Vec<f64>> = rows.iter().map(|r| r.get(1)).collect();
    assert_eq!(dense, [vec![1.5, 0.0, -2.0], vec![0.0, 4.25, 0.0]]);
    let text = simple_rows(&client, "SELECT * FROM rows(m) ORDER BY i").await;
    assert_eq!(text[0][1].as_deref(), Some("{1.5,0,-2}"));
    // A float8[] parameter goes in too.
    let row = client
        .query_one(
            "SELECT array_length($1::DOUBLE[], 1)",
            &[&vec![1.0f64, 2.0, 3.0]],
        )
        .await;
    if let Ok(row) = row {
        assert_eq!(row.get::<_, i64>(0), 3);
    }
}

/// `lm_fit` over a table from a PostgreSQL client: one line per group, hand-worked
/// (`y = 2x + 1` and `y = 3 - x` exactly), a group of one row NULL.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pgwire_lm_fit_returns_each_groups_coefficients() {
    let server = start().await;
    let client = server.connect().await;
    client
        .batch_execute(
            "CREATE TABLE obs (g TEXT, x DOUBLE PRECISION, y DOUBLE PRECISION);
             INSERT INTO obs VALUES ('a', 0, 1), ('a', 1, 3), ('a', 2, 5),
               ('b', 0, 3), ('b', 1, 2), ('b', 2, 1), ('b', 3, 0), ('b', NULL, 7),
               ('c', 1, 1)",
        )
        .await
        .unwrap();
    let rows = client
        .query(
            "SELECT g, lm_fit(y, x) AS coef FROM obs GROUP BY g ORDER BY g",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        rows[0].columns()[1].type_(),
        &tokio_postgres::types::Type::FLOAT8_ARRAY
    );
    let got: Vec<(String, Option<Vec<f64>>)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let want = [
        ("a", Some([2.0, 1.0])),
        ("b", Some([-1.0, 3.0])),
        ("c", None),
    ];
    assert_eq!(got.len(), want.len());
    for ((g, coef), (wg, wc)) in got.iter().zip(want) {
        assert_eq!(g, wg);
        match (coef, wc) {
            (Some(c), Some(w)) => {
                assert_eq!(c.len(), 2, "{g}: {c:?}");
                for (a, b) in c.iter().zip(w) {
                    assert!((a - b).abs() < 1e-12, "{g}: {c:?}, want {w:?}");
                }
            }
            (None, None) => {}
            other => panic!("{g}: {other:?}"),
        }
    }
    // A negative ridge is the client's mistake, with its SQLSTATE.
    let e = client
        .query(
            "SELECT g, lm_fit(y, x, lambda => -1) FROM obs GROUP BY g",
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("22023"), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pgwire_copy_round_trips_arrays_and_tables() {
    let server = start().await;
    let client = server.connect().await;
    client
        .batch_execute("CREATE MATRIX m (3, 3); CREATE TABLE t (a INT, b VARCHAR)")
        .await
        .unwrap();
    // Text format into an array.
    let sink = client.copy_in("COPY m FROM STDIN").await.unwrap();
    futures::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(b"0\t0\t1.5\n2\t1\t-3\n"))
        .await
        .unwrap();
    sink.send(bytes::Bytes::from_static(b"1\t2\t0.25\n"))
        .await
        .unwrap();
    assert_eq!(sink.finish().await.unwrap(), 3);
    let out = client.copy_out("COPY m TO STDOUT").await.unwrap();
    let chunks: Vec<bytes::Bytes> = out.map(|c| c.unwrap()).collect().await;
    let mut lines: Vec<String> = String::from_utf8(chunks.concat())
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    lines.sort();
    assert_eq!(lines, ["0\t0\t1.5", "1\t2\t0.25", "2\t1\t-3"]);

    // CSV with a header into a table, quotes and NULLs kept.
    let sink = client
        .copy_in("COPY t FROM STDIN WITH (FORMAT csv, HEADER true)")
        .await
        .unwrap();
    futures::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(
        b"a,b\n1,\"x, \"\"y\"\"\"\n2,\n3,\"\"\n",
    ))
    .await
    .unwrap();
    assert_eq!(sink.finish().await.unwrap(), 3);
    let rows = client
        .query("SELECT a, b FROM t ORDER BY a", &[])
        .await
        .unwrap();
    let got: Vec<(i32, Option<String>)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        got,
        [
            (1, Some("x, \"y\"".to_string())),
            (2, None),
            (3, Some(String::new()))
        ]
    );
    let out = client
        .copy_out("COPY (SELECT a, b FROM t ORDER BY a) TO STDOUT WITH (FORMAT csv, HEADER)")
        .await
        .unwrap();
    let chunks: Vec<bytes::Bytes> = out.map(|c| c.unwrap()).collect().await;
    assert_eq!(
        String::from_utf8(chunks.concat()).unwrap(),
        "a,b\n1,\"x, \"\"y\"\"\"\n2,\n3,\"\"\n"
    );

    // A bad line commits nothing and names the line.
    let sink = client.copy_in("COPY m FROM STDIN").await.unwrap();
    futures::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(b"0\t1\t5\n1\t1\tabc\n"))
        .await
        .unwrap();
    let e = sink.finish().await.unwrap_err();
    assert_eq!(code(&e), "22P02", "{e}");
    assert!(message(&e).contains("line 2"), "{}", message(&e));
    let nnz: i64 = client
        .query_one("SELECT count(*) FROM m", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(nnz, 3);
    // A cell outside the array fails the whole COPY too.
    let sink = client.copy_in("COPY m FROM STDIN").await.unwrap();
    futures::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(b"0\t1\t5\n7\t7\t1\n"))
        .await
        .unwrap();
    assert!(sink.finish().await.is_err());
    let nnz: i64 = client
        .query_one("SELECT count(*) FROM m", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(nnz, 3);
    // COPY over the simple protocol, then the connection is usable.
    assert_eq!(
        simple_rows(&client, "SELECT 1").await[0][0].as_deref(),
        Some("1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pgwire_sessions_keep_their_own_settings() {
    let server = start().await;
    let a = server.connect().await;
    let b = server.connect().await;
    a.batch_execute("SET datafusion.execution.batch_size = 7")
        .await
        .unwrap();
    let a_rows = simple_rows(&a, "SHOW datafusion.execution.batch_size").await;
    let b_rows = simple_rows(&b, "SHOW datafusion.execution.batch_size").await;
    assert_eq!(a_rows[0].last().unwrap().as_deref(), Some("7"));
    assert_eq!(b_rows[0].last().unwrap().as_deref(), Some("8192"));
    // What drivers send and ask.
    a.batch_execute(
        "SET extra_float_digits = 3; SET application_name = 'pgwire test';
         SET DateStyle = 'ISO'; SET client_encoding = 'UTF8'; SET SESSION timezone TO 'UTC'",
    )
    .await
    .unwrap();
    let one = |rows: Vec<Vec<Option<String>>>| rows[0][0].clone().unwrap();
    assert_eq!(
        one(simple_rows(&a, "SHOW application_name").await),
        "pgwire test"
    );
    assert_eq!(one(simple_rows(&b, "SHOW extra_float_digits").await), "1");
    assert_eq!(
        one(simple_rows(&a, "SHOW transaction_isolation").await),
        "read committed"
    );
    assert_eq!(one(simple_rows(&a, "SHOW server_version").await), "15.0");
    assert!(one(simple_rows(&a, "SELECT version()").await).starts_with("PostgreSQL 15.0"));
    let e = a.simple_query("SHOW no_such_setting").await.unwrap_err();
    assert_eq!(code(&e), "42704");
    // Transactions are accepted; each statement commits on its own.
    a.batch_execute("BEGIN; CREATE TABLE t AS SELECT 1 AS x; ROLLBACK")
        .await
        .unwrap();
    assert_eq!(one(simple_rows(&b, "SELECT count(*) FROM t").await), "1");
    // After an error inside a transaction block, statements wait for its end.
    a.batch_execute("BEGIN").await.unwrap();
    assert!(a.batch_execute("SELECT * FROM nosuch").await.is_err());
    let e = a.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(code(&e), "25P02");
    a.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(one(simple_rows(&a, "SELECT 2").await), "2");
}

/// A statement that runs for many seconds: a large product of random matrices.
const LONG_QUERY: &str =
    "SELECT sum(v) FROM matmul(rand(3000, 3000, seed => 1), rand(3000, 3000, seed => 2))";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pgwire_cancel_and_statement_timeout_stop_a_running_statement() {
    let server = start().await;
    let client = server.connect().await;
    // statement_timeout.
    client
        .batch_execute("SET statement_timeout = '100ms'")
        .await
        .unwrap();
    let started = Instant::now();
    let e = client.simple_query(LONG_QUERY).await.unwrap_err();
    assert_eq!(code(&e), "57014", "{e}");
    assert!(message(&e).contains("statement timeout"));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    client
        .batch_execute("SET statement_timeout = 0")
        .await
        .unwrap();
    assert_eq!(
        simple_rows(&client, "SELECT 1").await[0][0].as_deref(),
        Some("1")
    );

    // A cancel request from the side.
    let token = client.cancel_token();
    let running = tokio::spawn({
        let started = Instant::now();
        async move {
            let result = client.query(LONG_QUERY, &[]).await;
            (client, result, started)
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cancelled_at = Instant::now();
    token.cancel_query(NoTls).await.unwrap();
    let (client, result, _) = running.await.unwrap();
    let e = result.unwrap_err();
    assert_eq!(code(&e), "57014", "{e}");
    assert!(message(&e).contains("user request"));
    assert!(
        cancelled_at.elapsed() < Duration::from_secs(1),
        "{:?}",
        cancelled_at.elapsed()
    );
    let one: i64 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pgwire_errors_carry_their_sqlstates() {
    let server = start().await;
    let client = server.connect().await;
    client
        .batch_execute("CREATE MATRIX m (3, 2); CREATE TABLE t (a INT)")
        .await
        .unwrap();
    let cases = [
        ("SELEC 1", "42601"),
        ("SELECT * FROM nosuch", "42P01"),
        ("SELECT nosuchfn(1)", "42883"),
        ("SELECT CAST('abc' AS INT)", "22P02"),
        ("SELECT * FROM matmul(m, m)", "22000"),
        ("CREATE MATRIX m (2, 2)", "42P07"),
        ("CREATE TABLE t (b INT)", "42P07"),
        ("COPY m FROM STDIN WITH (FORMAT parquet)", "0A000"),
        ("SELECT 1 / 0", "22012"),
    ];
    for (sql, expected) in cases {
        // Simple and extended protocol alike, and the connection stays usable.
        let e = client.simple_query(sql).await.unwrap_err();
        assert_eq!(code(&e), expected, "{sql}: {e}");
        let e = client.query(sql, &[]).await.unwrap_err();
        assert_eq!(code(&e), expected, "{sql} (extended): {e}");
        let one: i64 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
        assert_eq!(one, 1);
    }
    // A parameter that does not read as its type.
    let statement = client.prepare_typed("SELECT $1::INT", &[tokio_postgres::types::Type::INT4]);
    let statement = statement.await.unwrap();
    let e = client
        .query(
            &statement,
            &[&"x" as &(dyn tokio_postgres::types::ToSql + Sync)],
        )
        .await;
    assert!(e.is_err());
    assert_eq!(SqlState::QUERY_CANCELED.code(), "57014");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pgwire_memory_budget_and_connection_limit() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open_with(
        dir.path(),
        DatabaseOptions {
            memory_limit: Some(1 << 20),
            ..DatabaseOptions::default()
        },
    )
    .unwrap();
    let server = Server::builder()
        .database(db)
        .pg_listen("127.0.0.1:0")
        .max_connections(1)
        .superuser_reserved_connections(0)
        .build()
        .await
        .unwrap();
    let port = server.local_addr().port();
    let client = connect_as(port, "tessera", None).await.unwrap();
    let e = client
        .simple_query("SELECT count(*) FROM matmul(rand(1000, 1000), rand(1000, 1000))")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "53200", "{e}");
    // The second connection is one too many.
    let e = connect_as(port, "tessera", None).await.err().unwrap();
    assert_eq!(code(&e), "53300", "{e}");
    // The first still works; once it closes, a new one gets in.
    let one: i64 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    drop(client);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let again = connect_as(port, "tessera", None).await.unwrap();
    assert_eq!(
        again
            .query_one("SELECT 2", &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        2
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pgwire_scram_accepts_the_password_and_rejects_alike_otherwise() {
    let verifier = tessera_server::pg::scram_verifier("hunter2").unwrap();
    let server = start_with(|c| {
        c.auth.method = AuthMethod::ScramSha256;
        c.users = vec![
            tessera_server::config::UserConfig {
                name: "alice".into(),
                password: Some("s3cret".into()),
                scram_verifier: None,
            },
            tessera_server::config::UserConfig {
                name: "bob".into(),
                password: None,
                scram_verifier: Some(verifier),
            },
        ];
    })
    .await;
    let port = server.port();
    let alice = connect_as(port, "alice", Some("s3cret")).await.unwrap();
    assert_eq!(
        alice
            .query_one("SELECT 1", &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        1
    );
    let bob = connect_as(port, "bob", Some("hunter2")).await.unwrap();
    assert_eq!(
        bob.query_one("SELECT 2", &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        2
    );
    let wrong = connect_as(port, "alice", Some("nope")).await.err().unwrap();
    let unknown = connect_as(port, "mallory", Some("nope"))
        .await
        .err()
        .unwrap();
    assert_eq!(code(&wrong), "28P01");
    assert_eq!(code(&unknown), "28P01");
    assert_eq!(
        message(&wrong),
        "password authentication failed for user \"alice\""
    );
    assert_eq!(
        message(&unknown),
        "password authentication failed for user \"mallory\""
    );
    // Without a password the client cannot even try.
    assert!(connect_as(port, "alice", None).await.is_err());
}

/// A self-signed certificate for `localhost` made with the openssl CLI.
pub(crate) fn self_signed(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
    let status = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
        ])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("the openssl CLI must be installed");
    assert!(status.success());
    (cert, key)
}

/// Connects over TLS (SSLRequest, then a rustls handshake trusting `cert`).
async fn connect_tls(port: u16, cert: &std::path::Path) -> Client {
    use pgwire::tokio::tokio_rustls::rustls;
    use rustls::pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    tcp.write_all(&[0, 0, 0, 8, 4, 210, 22, 47]).await.unwrap();
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"S");
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(cert).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls_config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = pgwire::tokio::tokio_rustls::TlsConnector::from(Arc::new(tls_config));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let mut config = tokio_postgres::Config::new();
    config
        .user("tessera")
        .dbname("tessera")
        .ssl_mode(tokio_postgres::config::SslMode::Disable);
    let (client, connection) = config.connect_raw(tls, NoTls).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pgwire_tls_and_tls_only_mode() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(certs.path());
    let (c, k) = (cert.clone(), key.clone());
    let server = start_with(move |config| {
        config.tls = Some(tessera_server::config::TlsConfig {
            cert: c,
            key: k,
            required: true,
        })
    })
    .await;
    let client = connect_tls(server.port(), &cert).await;
    let row = client.query_one("SELECT 40 + 2", &[]).await.unwrap();
    assert_eq!(row.get::<_, i64>(0), 42);
    // Plaintext is refused in TLS-only mode.
    let e = connect_as(server.port(), "tessera", None)
        .await
        .err()
        .unwrap();
    assert_eq!(code(&e), "28000", "{e}");
}

/// The startup message of protocol 3.0 for user `tessera`.
fn startup_message() -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&196608i32.to_be_bytes());
    for s in ["user", "tessera", "database", "tessera"] {
        body.extend_from_slice(s.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut message = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    message.extend(body);
    message
}

/// Everything the server sends until it closes the connection (or 5 s pass).
fn read_until_closed(stream: &mut StdTcpStream) -> (Vec<u8>, bool) {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (all, true),
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (all, true),
            Err(_) => return (all, false),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pgwire_malformed_input_closes_only_that_connection() {
    let server = start_with(|c| {
        c.startup_timeout = "500ms".into();
        c.max_message_size = "1M".into();
    })
    .await;
    let port = server.port();
    let healthy = server.connect().await;
    let attacks = tokio::task::spawn_blocking(move || {
        let mut results = Vec::new();
        // Garbage instead of a startup message.
        let mut s = StdTcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        results.push(("garbage", read_until_closed(&mut s)));
        // A truncated startup message, then silence: the startup timeout closes it.
        let mut s = StdTcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(&startup_message()[..10]).unwrap();
        let started = Instant::now();
        results.push(("truncated", read_until_closed(&mut s)));
        assert!(started.elapsed() < Duration::from_secs(3));
        // Nothing at all.
        let mut s = StdTcpStream::connect(("127.0.0.1", port)).unwrap();
        results.push(("silent", read_until_closed(&mut s)));
        // A huge length field after a good startup.
        let mut s = StdTcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(&startup_message()).unwrap();
        let mut greeting = vec![0u8; 0];
        let mut buf = [0u8; 1024];
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        while !greeting.windows(6).any(|w| w == [b'Z', 0, 0, 0, 5, b'I']) {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "closed before ReadyForQuery");
            greeting.extend_from_slice(&buf[..n]);
        }
        s.write_all(&[b'Q', 0x7f, 0xff, 0xff, 0xff, b'S']).unwrap();
        results.push(("huge length", read_until_closed(&mut s)));
        // An unknown message type after a good startup.
        let mut s = StdTcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(&startup_message()).unwrap();
        let mut greeting = Vec::new();
        while !greeting.windows(6).any(|w| w == [b'Z', 0, 0, 0, 5, b'I']) {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0);
            greeting.extend_from_slice(&buf[..n]);
        }
        s.write_all(&[b'@', 0, 0, 0, 8, 1, 2, 3, 4]).unwrap();
        results.push(("unknown type", read_until_closed(&mut s)));
        results
    })
    .await
    .unwrap();
    for (what, (_, closed)) in &attacks {
        assert!(closed, "{what}: the server kept the connection open");
    }
    let huge = &attacks[3].1.0;
    let text = String::from_utf8_lossy(huge);
    assert!(text.contains("54000"), "{text}");
    // The healthy client never noticed.
    let one: i64 = healthy.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    let fresh = server.connect().await;
    assert_eq!(
        fresh
            .query_one("SELECT 3", &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pgwire_in_process_queries_see_remote_writes_and_shutdown_keeps_commits() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::builder()
        .data_dir(dir.path())
        .pg_listen("127.0.0.1:0")
        .build()
        .await
        .unwrap();
    let client = connect_as(server.local_addr().port(), "tessera", None)
        .await
        .unwrap();
    client
        .batch_execute("CREATE MATRIX m (2, 2); INSERT INTO m VALUES (1, 1, 7.5)")
        .await
        .unwrap();
    let batches = server.database().sql("SELECT v FROM m").await.unwrap();
    let v = batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<datafusion::arrow::array::Float64Array>()
        .unwrap()
        .value(0);
    assert_eq!(v, 7.5);
    server.shutdown().await;
    // The client is told, and the data stay.
    assert!(client.simple_query("SELECT 1").await.is_err());
    let db = Database::open(dir.path()).unwrap();
    let batches = db.sql("SELECT count(*) FROM m").await.unwrap();
    let n = batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<datafusion::arrow::array::Int64Array>()
        .unwrap()
        .value(0);
    assert_eq!(n, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgwire_cached_plans_see_other_connections_writes() {
    let server = start().await;
    let (reader, writer) = (server.connect().await, server.connect().await);
    writer
        .batch_execute("CREATE TABLE t (a INT); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let sum = "SELECT sum(a) FROM t";
    for _ in 0..3 {
        assert_eq!(simple_rows(&reader, sum).await, [[Some("1".to_string())]]);
    }
    // COPY FROM STDIN writes outside any SQL statement.
    let sink = writer.copy_in("COPY t FROM STDIN").await.unwrap();
    futures::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(b"2\n4\n"))
        .await
        .unwrap();
    assert_eq!(sink.finish().await.unwrap(), 2);
    assert_eq!(simple_rows(&reader, sum).await, [[Some("7".to_string())]]);
    // Prepared statements (extended protocol) go through the same cache.
    let prepared = reader.prepare(sum).await.unwrap();
    let read = |rows: Vec<tokio_postgres::Row>| rows[0].get::<_, Option<i64>>(0);
    assert_eq!(read(reader.query(&prepared, &[]).await.unwrap()), Some(7));
    writer
        .execute("INSERT INTO t VALUES (8)", &[])
        .await
        .unwrap();
    assert_eq!(read(reader.query(&prepared, &[]).await.unwrap()), Some(15));
    // A statement with parameters keeps its plan between Parse and Bind of the same
    // text (an unnamed statement each time here) and still sees other writes.
    let at_least = "SELECT sum(a) FROM t WHERE a >= $1";
    for _ in 0..3 {
        assert_eq!(
            read(reader.query(at_least, &[&4i32]).await.unwrap()),
            Some(12)
        );
    }
    writer
        .execute("INSERT INTO t VALUES ($1)", &[&16i32])
        .await
        .unwrap();
    assert_eq!(
        read(reader.query(at_least, &[&4i32]).await.unwrap()),
        Some(28)
    );
    assert_eq!(
        read(reader.query(at_least, &[&9i32]).await.unwrap()),
        Some(16)
    );
    writer
        .batch_execute("DROP TABLE t; CREATE TABLE t (a INT)")
        .await
        .unwrap();
    assert_eq!(read(reader.query(sum, &[]).await.unwrap()), None);
    assert_eq!(read(reader.query(at_least, &[&4i32]).await.unwrap()), None);
}

/// `FLOAT`, `FLOAT(p)`, `REAL` and `DOUBLE PRECISION` get PostgreSQL's widths: what
/// pandas' `to_sql` creates (`FLOAT(53)`) keeps a Python float's 53 bits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pgwire_float_columns_have_postgresql_widths() {
    use tokio_postgres::types::Type;
    let server = start().await;
    let client = server.connect().await;
    client
        .batch_execute(
            "CREATE TABLE t (a FLOAT, b FLOAT(53), c FLOAT(10), d REAL, e DOUBLE PRECISION,
                             f FLOAT(24), g FLOAT(25));
             INSERT INTO t VALUES (1.0/3, 1.0/3, 1.0/3, 1.0/3, 1.0/3, 1.0/3, 1.0/3)",
        )
        .await
        .unwrap();
    let rows = client.query("SELECT * FROM t", &[]).await.unwrap();
    let types: Vec<Type> = rows[0]
        .columns()
        .iter()
        .map(|c| c.type_().clone())
        .collect();
    assert_eq!(
        types.iter().map(Type::oid).collect::<Vec<_>>(),
        [701, 701, 700, 700, 701, 700, 701],
        "{types:?}"
    );
    let third = 1.0f64 / 3.0;
    for (col, ty) in types.iter().enumerate() {
        if *ty == Type::FLOAT8 {
            let v: f64 = rows[0].get(col);
            assert_eq!(v.to_bits(), third.to_bits(), "column {col}");
        } else {
            let v: f32 = rows[0].get(col);
            assert_eq!(v.to_bits(), (third as f32).to_bits(), "column {col}");
        }
    }
    // CAST and `::` alike.
    let row = client
        .query_one(
            "SELECT CAST(1.0/3 AS FLOAT) AS a, (1.0/3)::FLOAT(53) AS b, (1.0/3)::FLOAT(3) AS c, CAST(1.0/3 AS REAL) AS d",
            &[],
        )
        .await
        .unwrap();
    let oids: Vec<u32> = row.columns().iter().map(|c| c.type_().oid()).collect();
    assert_eq!(oids, [701, 701, 700, 700]);
    assert_eq!(row.get::<_, f64>(0), third);
    assert_eq!(row.get::<_, f64>(1), third);
    assert_eq!(row.get::<_, f32>(2), third as f32);
    // Precision outside 1..=53, as PostgreSQL says it.
    for (sql, words) in [
        ("SELECT CAST(1 AS FLOAT(0))", "at least 1 bit"),
        ("CREATE TABLE u (x FLOAT(54))", "less than 54 bits"),
    ] {
        let e = client.simple_query(sql).await.unwrap_err();
        assert_eq!(code(&e), "22023", "{sql}: {e}");
        assert!(message(&e).contains(words), "{sql}: {e}");
    }
}

/// `pg_stat_activity` lists the connections with what they run; `tessera_progress`
/// shows how many blocks a running statement's scans have read of how many; and
/// `pg_cancel_backend` stops another connection's statement (57014 there), read while
/// a long join runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_stat_activity_and_progress_show_a_running_statement_that_pg_cancel_backend_stops() {
    let server = start().await;
    let runner = server.connect().await;
    let watcher = server.connect().await;
    // 1000 x 1000 in 100 x 100 blocks: 100 stored blocks.
    runner
        .batch_execute(
            "CREATE MATRIX big (1000, 1000) BLOCK (100, 100);
             INSERT INTO big SELECT i, j, v FROM rand(1000, 1000, seed => 1);",
        )
        .await
        .unwrap();
    let runner_pid: i32 = runner
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let watcher_pid: i32 = watcher
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(runner_pid, watcher_pid);
    // Each row of one side meets the 1000 rows of the other: 10^9 joined rows.
    let long = "SELECT count(*) FROM big a JOIN big b ON a.i = b.j";
    let running = tokio::spawn(async move {
        let outcome = runner.simple_query(long).await.map(|_| ());
        (runner, outcome)
    });

    // The runner shows active with its statement, and its scans' blocks.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (state, query) = loop {
        let row = watcher
            .query_opt(
                "SELECT state, query FROM pg_stat_activity WHERE pid = $1",
                &[&runner_pid],
            )
            .await
            .unwrap()
            .expect("the runner's connection is listed");
        let state: String = row.get(0);
        if state == "active" || Instant::now() > deadline {
            break (state, row.get::<_, String>(1));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!((state.as_str(), query.as_str()), ("active", long));
    let mine: String = watcher
        .query_one(
            "SELECT state FROM pg_stat_activity WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(mine, "active", "a connection sees itself running its query");
    // Both scans start at once; the total is both sides' 100 blocks.
    let (done, total) = loop {
        let row = watcher
            .query_one(
                "SELECT blocks_done, blocks_total FROM tessera_progress WHERE pid = $1",
                &[&runner_pid],
            )
            .await
            .unwrap();
        let (done, total): (i64, i64) = (row.get(0), row.get(1));
        assert!(done <= total, "{done} of {total} blocks");
        if (total == 200 && done >= 100) || Instant::now() > deadline {
            break (done, total);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(total, 200, "{done} of {total} blocks");
    assert!(
        done >= 100,
        "the build side is read first: {done} of {total}"
    );

    // pg_cancel_backend stops it; the runner gets 57014.
    let cancelled: bool = watcher
        .query_one(&format!("SELECT pg_cancel_backend({runner_pid})"), &[])
        .await
        .unwrap()
        .get(0);
    assert!(cancelled);
    let (_runner, outcome) = tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("a cancelled statement stops")
        .unwrap();
    let error = outcome.expect_err("the join was cancelled");
    assert_eq!(code(&error), "57014", "{error:?}");
    // Then it is idle, with no progress row; an unknown pid is not cancelled.
    let state: String = watcher
        .query_one(
            "SELECT state FROM pg_stat_activity WHERE pid = $1",
            &[&runner_pid],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(state, "idle");
    let rows = watcher
        .query(
            "SELECT pid FROM tessera_progress WHERE pid = $1",
            &[&runner_pid],
        )
        .await
        .unwrap();
    assert!(rows.is_empty());
    let unknown: bool = watcher
        .query_one("SELECT pg_cancel_backend(2147483)", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!unknown);
}

/// The runner's row of `pg_stat_activity`: state and query.
async fn activity_of(watcher: &Client, pid: i32) -> (String, String) {
    let row = watcher
        .query_one(
            "SELECT state, query FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_stat_activity_shows_the_text_of_every_kind_of_statement() {
    let server = start().await;
    let runner = server.connect().await;
    let watcher = server.connect().await;
    let pid: i32 = runner
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    // Simple protocol, several statements: each is shown as written, the last stays.
    runner
        .simple_query("CREATE MATRIX m (2, 2);\n  INSERT INTO m VALUES (0, 0, 1.5) ;")
        .await
        .unwrap();
    assert_eq!(
        activity_of(&watcher, pid).await,
        ("idle".into(), "INSERT INTO m VALUES (0, 0, 1.5)".into())
    );
    // Tessera's own statements, with their comments and spacing as sent.
    for text in [
        "CREATE MATRIX p /* squared */ (2, 2) AS SELECT i, j, v FROM matmul(m, m)",
        "SHOW ARRAYS",
        "DESCRIBE p",
        "DROP MATRIX p",
    ] {
        runner
            .simple_query(&format!("-- lead\n{text};"))
            .await
            .unwrap();
        assert_eq!(
            activity_of(&watcher, pid).await,
            ("idle".into(), text.into())
        );
    }
    // Extended protocol (Parse / Bind / Execute), a PostgreSQL setting, COPY TO STDOUT.
    let create = "CREATE MATRIX q (3, 3)";
    runner.execute(create, &[]).await.unwrap();
    assert_eq!(activity_of(&watcher, pid).await.1, create);
    runner
        .simple_query("SET extra_float_digits = 3")
        .await
        .unwrap();
    assert_eq!(
        activity_of(&watcher, pid).await.1,
        "SET extra_float_digits = 3"
    );
    let copy = "COPY (SELECT i, j, v FROM m) TO STDOUT";
    let stream = runner.copy_out(copy).await.unwrap();
    let data: Vec<bytes::Bytes> = stream.map(|d| d.unwrap()).collect().await;
    assert_eq!(data.concat(), b"0\t0\t1.5\n");
    assert_eq!(
        activity_of(&watcher, pid).await,
        ("idle".into(), copy.into())
    );
}

/// A join that runs for a while: `n x n` stored in blocks of `n/10 x n/10` (100 blocks),
/// each cell of one side meeting the `n` cells of a column of the other: `n^3` rows.
async fn make_join_input(client: &Client, n: i64) -> String {
    client
        .batch_execute(&format!(
            "CREATE MATRIX big ({n}, {n}) BLOCK ({b}, {b});
             INSERT INTO big SELECT i, j, v FROM rand({n}, {n}, seed => 3);",
            b = n / 10
        ))
        .await
        .unwrap();
    "SELECT count(*) FROM big a JOIN big b ON a.i = b.j".to_string()
}

/// psycopg 3 with a notice handler: the join with `tessera.progress_notice_after` at
/// 100ms, then off, then reset; prints what it saw as JSON.
const NOTICE_CLIENT: &str = r#"
import json, sys, time, psycopg
port, query = sys.argv[1], sys.argv[2]
conn = psycopg.connect(f"host=127.0.0.1 port={port} user=tessera dbname=tessera", autocommit=True)
notices = []
conn.add_notice_handler(lambda d: notices.append([d.severity, d.sqlstate, d.message_primary]))
show = lambda: conn.execute("SHOW tessera.progress_notice_after").fetchone()[0]
out = {"default": show()}
conn.execute("SET tessera.progress_notice_after = '100ms'")
out["set"] = show()
t0 = time.monotonic()
out["count"] = conn.execute(query).fetchone()[0]
out["seconds"] = time.monotonic() - t0
out["notices"], notices[:] = list(notices), []
# The extended protocol too (a parameter makes psycopg use Parse/Bind/Execute).
out["count_extended"] = conn.execute(query + " WHERE a.v > %s", [-1.0]).fetchone()[0]
out["notices_extended"], notices[:] = list(notices), []
conn.execute("SET tessera.progress_notice_after = off")
out["off"] = show()
conn.execute(query).fetchone()
out["notices_off"], notices[:] = list(notices), []
conn.execute("RESET tessera.progress_notice_after")
out["reset"] = show()
print(json.dumps(out))
"#;

/// A progress notice's numbers: blocks done, blocks total, seconds elapsed.
fn notice_numbers(message: &str) -> (u64, u64, f64) {
    let rest = message
        .strip_prefix("progress: reading blocks, ")
        .or_else(|| message.strip_prefix("progress: computing, "))
        .unwrap_or_else(|| panic!("not a progress line: {message}"));
    let words: Vec<&str> = rest.split_whitespace().collect();
    // `37 of 200 blocks, 2.4 MB read, 5.0 s elapsed`
    assert_eq!(
        (words[1], words[3], words[6], words[8], words[9]),
        ("of", "blocks,", "read,", "s", "elapsed"),
        "{message}"
    );
    (
        words[0].parse().unwrap(),
        words[2].parse().unwrap(),
        words[7].parse().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_notices_arrive_while_a_long_statement_runs_and_not_when_off() {
    let server = start().await;
    let client = server.connect().await;
    // 700^3 joined rows: about 0.3 s per 64 million in a dev build on 2 cores.
    let n = 700i64;
    let query = make_join_input(&client, n).await;
    let port = server.port().to_string();
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        crate::python::run_args(&cwd, NOTICE_CLIENT, &[&port, &query])
    })
    .await
    .unwrap();
    let out: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(out["default"], "5s");
    assert_eq!(out["set"], "100ms");
    assert_eq!(out["off"], "off");
    assert_eq!(out["reset"], "5s");
    // Every cell of one side meets the n cells of a column of the other.
    assert_eq!(out["count"], n * n * n);
    assert_eq!(out["count_extended"], n * n * n);
    let seconds = out["seconds"].as_f64().unwrap();
    assert!(
        seconds > 0.5,
        "the join must outlast several notices: {seconds} s"
    );
    for key in ["notices", "notices_extended"] {
        let notices = out[key].as_array().unwrap();
        assert!(notices.len() >= 2, "{key}: {notices:?} in {seconds} s");
        let mut last_elapsed = 0.0;
        for notice in notices {
            assert_eq!(
                (&notice[0], &notice[1]),
                (&"NOTICE".into(), &"00000".into())
            );
            let (done, total, elapsed) = notice_numbers(notice[2].as_str().unwrap());
            assert!(done <= total && total <= 200, "{notice}");
            assert!(elapsed >= 0.1 && elapsed >= last_elapsed, "{notices:?}");
            last_elapsed = elapsed;
        }
        // At most one per 100 ms (the last one may fall in the final interval).
        assert!(
            notices.len() as f64 <= last_elapsed / 0.1 + 1.0,
            "{key}: {notices:?}"
        );
    }
    assert_eq!(out["notices_off"], serde_json::json!([]));
}
