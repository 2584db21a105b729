//! COPY over the PostgreSQL protocol as bulk loaders use it: PostgreSQL's binary format
//! both ways (psycopg 3's `cursor.copy`, the ADBC PostgreSQL driver, polars through
//! connectorx), errors that name the bad row or line and leave the target as it was,
//! and a large `COPY FROM STDIN` that streams in bounded memory under a low memory pool
//! limit. `.ci/run` installs the Python clients; a missing one fails its test.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use futures::SinkExt;
use tessera_server::config::ServerConfig;
use tessera_server::{Server, ServerHandle};
use tokio_postgres::{Client, NoTls};

use crate::python;

const CLIENTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/clients");

async fn start_with(dir: &Path, edit: impl FnOnce(&mut ServerConfig)) -> ServerHandle {
    let mut config = ServerConfig {
        data_dir: dir.join("db"),
        pg_listen: "127.0.0.1:0".into(),
        ..ServerConfig::default()
    };
    edit(&mut config);
    Server::builder().config(config).build().await.unwrap()
}

async fn connect(port: u16) -> Client {
    let (client, connection) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user("tessera")
        .dbname("tessera")
        .connect_timeout(Duration::from_secs(10))
        .connect(NoTls)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// Runs `tests/clients/<script>` with the server's port; the script prints "ok".
async fn run_client_script(script: &str) {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with(dir.path(), |_| {}).await;
    let port = server.local_addr().port().to_string();
    let script = std::fs::read_to_string(Path::new(CLIENTS).join(script)).unwrap();
    let cwd = dir.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || python::run_args(&cwd, &script, &[&port]))
        .await
        .unwrap();
    assert_eq!(out.trim(), "ok");
    server.shutdown().await;
}

/// psycopg 3: `write_row` into a table of every type binary COPY reads (NULLs, extreme
/// values, text with tabs and newlines), and into two matrices; `COPY ... TO STDOUT
/// (FORMAT binary)` of the table, a query and a matmul, compared with what Python wrote
/// and with NumPy. The checks are in the script.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn psycopg_binary_copy_round_trips_tables_and_matrices() {
    run_client_script("copy_binary_client.py").await;
}

/// The ADBC PostgreSQL driver: `adbc_ingest` creates and fills tables (one of every
/// Arrow type it maps, and matrices' cells); `fetch_arrow_table` of a table and of a
/// matmul, compared with the Arrow table sent and with NumPy. The checks are in the
/// script.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn adbc_postgresql_driver_ingests_and_fetches_arrow() {
    run_client_script("adbc_postgresql_client.py").await;
}

/// polars `read_database_uri` and connectorx (binary COPY in the extended protocol): a
/// table with NULLs, an empty result and a matmul, compared with the rows written and
/// with NumPy. The checks are in the script.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn polars_and_connectorx_read_with_binary_copy() {
    run_client_script("polars_client.py").await;
}

/// Every file under `dir`, relative to it.
fn files_under(dir: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.insert(path.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    out
}

/// Sends `data` to `sql` (a COPY FROM STDIN) and returns the error it ends with.
async fn copy_in_error(client: &Client, sql: &str, data: Vec<Bytes>) -> tokio_postgres::Error {
    let sink = client.copy_in(sql).await.unwrap();
    futures::pin_mut!(sink);
    for chunk in data {
        if let Err(e) = sink.send(chunk).await {
            return e;
        }
    }
    sink.finish().await.unwrap_err()
}

fn binary_header(out: &mut BytesMut) {
    out.put_slice(b"PGCOPY\n\xff\r\n\0");
    out.put_i32(0);
    out.put_i32(0);
}

/// One binary tuple of (int8, float8, text).
fn binary_row(out: &mut BytesMut, id: i64, x: f64, name: &str) {
    out.put_i16(3);
    out.put_i32(8);
    out.put_i64(id);
    out.put_i32(8);
    out.put_f64(x);
    out.put_i32(name.len() as i32);
    out.put_slice(name.as_bytes());
}

async fn table_rows(client: &Client) -> Vec<(i64, f64, String)> {
    client
        .query("SELECT id, x, name FROM t ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

/// A bad binary row (a float8 field of 4 bytes, in row 3 of a COPY sent in two pieces
/// cut mid-row) and a bad CSV line (line 4, a quoted field spanning lines before it)
/// each fail the whole COPY with their SQLSTATE, naming the row and field or the line;
/// the table keeps exactly its rows, and no file is left behind in the data directory.
/// The same holds for a matrix, and for a COPY the client abandons with CopyFail.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_copy_rows_name_their_place_and_commit_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with(dir.path(), |_| {}).await;
    let client = connect(server.local_addr().port()).await;
    client
        .batch_execute(
            "CREATE TABLE t (id BIGINT NOT NULL, x DOUBLE, name TEXT);
             INSERT INTO t VALUES (1, 0.5, 'one');
             CREATE MATRIX m (4, 4) BLOCK (2, 2);
             INSERT INTO m VALUES (0, 0, 1.0);",
        )
        .await
        .unwrap();
    let before = table_rows(&client).await;
    let files = files_under(&dir.path().join("db"));

    // Binary: rows 1 and 2 are good, row 3's float8 has 4 bytes.
    let mut data = BytesMut::new();
    binary_header(&mut data);
    binary_row(&mut data, 2, 1.5, "two");
    binary_row(&mut data, 3, 2.5, "three");
    data.put_i16(3);
    data.put_i32(8);
    data.put_i64(4);
    data.put_i32(4);
    data.put_f32(1.0);
    data.put_i32(-1);
    data.put_i16(-1);
    let data = data.freeze();
    let cut = data.len() - 9;
    let e = copy_in_error(
        &client,
        "COPY t FROM STDIN (FORMAT binary)",
        vec![data.slice(..cut), data.slice(cut..)],
    )
    .await;
    let db = e.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "22P03", "{db:?}");
    assert!(
        db.message().contains("row 3, field 2 (x)"),
        "{}",
        db.message()
    );

    // CSV: line 4 (a quoted value spans lines 2-3) has a bad number.
    let e = copy_in_error(
        &client,
        "COPY t FROM STDIN (FORMAT csv)",
        vec![Bytes::from_static(
            b"5,1.0,five\n6,2.0,\"six\nlines\"\n7,seven,x\n8,3.0,eight\n",
        )],
    )
    .await;
    let db = e.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "22P02", "{db:?}");
    assert!(db.message().contains("line 4"), "{}", db.message());

    // Text: a row with a field too few is a bad COPY file (22P04); a NULL id 23502.
    let e = copy_in_error(
        &client,
        "COPY t FROM STDIN",
        vec![Bytes::from_static(b"9\t1\tnine\n10\t2\n")],
    )
    .await;
    let db = e.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "22P04", "{db:?}");
    assert!(db.message().contains("line 2"), "{}", db.message());
    let e = copy_in_error(
        &client,
        "COPY t FROM STDIN",
        vec![Bytes::from_static(b"11\t1\tx\n\\N\t2\ty\n")],
    )
    .await;
    assert_eq!(e.code().unwrap().code(), "23502", "{e:?}");

    // Binary data cut short, and a matrix cell outside the matrix.
    let e = copy_in_error(
        &client,
        "COPY t FROM STDIN (FORMAT binary)",
        vec![data.slice(..cut)],
    )
    .await;
    assert_eq!(e.code().unwrap().code(), "22P04", "{e:?}");
    let e = copy_in_error(
        &client,
        "COPY m FROM STDIN (FORMAT csv)",
        vec![Bytes::from_static(b"1,1,2.0\n9,9,1.0\n")],
    )
    .await;
    assert_eq!(e.code().unwrap().code(), "22000", "{e:?}");

    // The client gives up: CopyFail (tokio-postgres sends it when the sink is dropped
    // unfinished).
    {
        let sink = client
            .copy_in::<_, Bytes>("COPY t FROM STDIN")
            .await
            .unwrap();
        futures::pin_mut!(sink);
        sink.send(Bytes::from_static(b"12\t1\ttwelve\n"))
            .await
            .unwrap();
    }

    assert_eq!(table_rows(&client).await, before);
    let cells: i64 = client
        .query_one("SELECT count(*) FROM m", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(cells, 1);
    assert_eq!(files_under(&dir.path().join("db")), files);

    // The connection goes on, and a good binary COPY commits.
    let mut good = BytesMut::new();
    binary_header(&mut good);
    binary_row(&mut good, 2, 1.5, "two");
    good.put_i16(-1);
    let sink = client
        .copy_in("COPY t FROM STDIN (FORMAT binary)")
        .await
        .unwrap();
    futures::pin_mut!(sink);
    sink.send(good.freeze()).await.unwrap();
    assert_eq!(sink.finish().await.unwrap(), 1);
    assert_eq!(table_rows(&client).await.len(), 2);
    server.shutdown().await;
}

/// The peak resident memory of this process (nextest runs each test in its own).
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .unwrap()
        .to_string();
    let kb: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kb * 1024
}

/// 256 MB of CSV, generated as it is sent, into a stored table through a server whose
/// memory pool is 16 MB: the COPY succeeds (the old COPY gathered the whole input first,
/// outside the pool), the table has every row (counts and sums computed here, read after
/// a restart), and the process's peak memory grows by far less than the input.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_large_copy_streams_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with(dir.path(), |c| c.memory_limit = Some("16M".into())).await;
    let client = connect(server.local_addr().port()).await;
    client
        .batch_execute("CREATE TABLE big (c BIGINT, k BIGINT, v DOUBLE)")
        .await
        .unwrap();
    const TOTAL: usize = 256 << 20;
    const ROWS_PER_CHUNK: i64 = 40_000;
    let before = peak_rss();
    let started = Instant::now();
    let sink = client
        .copy_in("COPY big FROM STDIN (FORMAT csv)")
        .await
        .unwrap();
    futures::pin_mut!(sink);
    let (mut sent, mut rows, mut sum_k, mut chunk) = (0usize, 0i64, 0i64, 0i64);
    while sent < TOTAL {
        let mut data = BytesMut::with_capacity(1 << 20);
        for k in 0..ROWS_PER_CHUNK {
            let key = chunk * ROWS_PER_CHUNK + k;
            data.put_slice(format!("{chunk},{key},{}.25\n", k % 1000).as_bytes());
            sum_k += key;
        }
        rows += ROWS_PER_CHUNK;
        chunk += 1;
        sent += data.len();
        sink.send(data.freeze()).await.unwrap();
    }
    assert_eq!(sink.finish().await.unwrap(), rows as u64);
    let elapsed = started.elapsed();
    let grown = peak_rss().saturating_sub(before);
    // Reading the table back scans whole files, more than this pool holds: read it
    // through a server with the default pool, over the same data.
    drop(client);
    server.shutdown().await;
    let server = start_with(dir.path(), |_| {}).await;
    let client = connect(server.local_addr().port()).await;
    let row = client
        .query_one("SELECT count(*), sum(k), max(c), sum(v) FROM big", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), rows);
    assert_eq!(row.get::<_, i64>(1), sum_k);
    assert_eq!(row.get::<_, i64>(2), chunk - 1);
    let per_chunk: f64 = (0..ROWS_PER_CHUNK).map(|k| (k % 1000) as f64 + 0.25).sum();
    assert_eq!(row.get::<_, f64>(3), per_chunk * chunk as f64);
    eprintln!(
        "COPY of {} MB ({rows} rows) in {elapsed:?}; peak memory grew by {} MB",
        sent >> 20,
        grown >> 20
    );
    assert!(
        grown < (TOTAL as u64) / 2,
        "peak memory grew by {grown} bytes for {sent} bytes of input"
    );
    server.shutdown().await;
}

/// The COPY tag counts rows, not messages, in both protocols: an empty result is
/// `COPY 0` in binary and in CSV with a header (the header, and the binary header with
/// the trailer, are one message each), and three rows are `COPY 3`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_to_stdout_tags_count_rows_in_both_protocols() {
    use crate::hostile_clients::{connected, message, until_ready};
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let server = start_with(dir.path(), |_| {}).await;
    let port = server.local_addr().port();
    let client = connect(port).await;
    client
        .batch_execute("CREATE TABLE t (a INT); INSERT INTO t VALUES (1), (2), (3)")
        .await
        .unwrap();
    let cstr = |s: &str| {
        let mut b = s.as_bytes().to_vec();
        b.push(0);
        b
    };
    // Parse, Bind, Execute and Sync of an unnamed statement without parameters.
    let extended = |sql: &str| {
        let mut parse = cstr("");
        parse.extend(cstr(sql));
        parse.extend(0i16.to_be_bytes());
        let mut bind = cstr("");
        bind.extend(cstr(""));
        bind.extend([0, 0, 0, 0, 0, 0]);
        let mut execute = cstr("");
        execute.extend(0i32.to_be_bytes());
        [
            message(b'P', &parse),
            message(b'B', &bind),
            message(b'E', &execute),
            message(b'S', &[]),
        ]
        .concat()
    };
    let simple = |sql: &str| message(b'Q', &cstr(sql));
    let cases = [
        (
            "COPY (SELECT a FROM t WHERE a > 9) TO STDOUT (FORMAT binary)",
            "COPY 0",
        ),
        (
            "COPY (SELECT a FROM t WHERE a > 9) TO STDOUT (FORMAT csv, HEADER)",
            "COPY 0",
        ),
        ("COPY (SELECT a FROM t) TO STDOUT (FORMAT binary)", "COPY 3"),
        ("COPY t TO STDOUT (FORMAT csv, HEADER)", "COPY 3"),
    ];
    let mut stream = tokio::task::spawn_blocking(move || connected(port))
        .await
        .unwrap();
    for (sql, want) in cases {
        for (protocol, bytes) in [("simple", simple(sql)), ("extended", extended(sql))] {
            let (back, messages) = tokio::task::spawn_blocking(move || {
                stream.write_all(&bytes).unwrap();
                let messages = until_ready(&mut stream);
                (stream, messages)
            })
            .await
            .unwrap();
            stream = back;
            let tags: Vec<String> = messages
                .iter()
                .filter(|m| m.0 == b'C')
                .map(|m| {
                    String::from_utf8_lossy(&m.1)
                        .trim_end_matches('\0')
                        .to_string()
                })
                .collect();
            assert_eq!(
                tags,
                vec![want.to_string()],
                "{protocol}: {sql}: {messages:?}"
            );
        }
    }
    server.shutdown().await;
}
