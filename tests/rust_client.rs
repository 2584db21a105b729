//! The Rust client (`tessera-client`) against an in-process server with Flight SQL on
//! 127.0.0.1:0: authentication, TLS, queries and streams, statements, prepared
//! statements, loads into arrays and tables, errors and cancel. Answers are checked
//! against values worked out another way (by hand, closed forms, a naive matmul).

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{Float64Array, Int32Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::error::ArrowError;
use futures::TryStreamExt;
use tessera_client::{Client, Code, Error, LoadMode, Parameters};

use crate::flight::{TestServer, f64s, i64s, password_config, start, start_with};

fn url(server: &TestServer) -> String {
    format!("http://{}", server.addr())
}

async fn connect(server: &TestServer) -> Client {
    Client::connect(url(server)).await.unwrap()
}

/// All batches of a result as one.
fn one(batches: &[RecordBatch]) -> RecordBatch {
    assert!(!batches.is_empty(), "no batches");
    concat_batches(&batches[0].schema(), batches).unwrap()
}

/// A record batch of cells (i, j, v).
fn cells(i: Vec<i64>, j: Vec<i64>, v: Vec<f64>) -> RecordBatch {
    RecordBatch::try_from_iter([
        ("i", Arc::new(Int64Array::from(i)) as _),
        ("j", Arc::new(Int64Array::from(j)) as _),
        ("v", Arc::new(Float64Array::from(v)) as _),
    ])
    .unwrap()
}

/// Expects an error with `code` and `sqlstate`.
fn expect_error<T: std::fmt::Debug>(result: Result<T, Error>, code: Code, sqlstate: &str) {
    let e = result.unwrap_err();
    assert_eq!(e.code(), code, "{e}");
    assert_eq!(e.sqlstate(), Some(sqlstate), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_client_password_auth_and_wrong_password() {
    let server = start_with(password_config).await;
    let builder = Client::builder(url(&server));

    // Wrong password, unknown user, no credentials: UNAUTHENTICATED at connect.
    for (user, password) in [("alice", "wrong"), ("mallory", "secret!")] {
        let e = builder
            .clone()
            .credentials(user, password)
            .connect()
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e}");
        assert_eq!(e.sqlstate(), Some("28P01"), "{e}");
        assert!(matches!(e, Error::Status { .. }), "{e:?}");
    }
    let e = Client::connect(url(&server)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");
    assert_eq!(e.sqlstate(), Some("28000"), "{e}");

    let alice = builder
        .clone()
        .credentials("alice", "secret!")
        .connect()
        .await
        .unwrap();
    let one_row = alice.query("SELECT 1 + 1 AS two").await.unwrap();
    assert_eq!(i64s(&one(&one_row), 0), [2]);

    // A bearer token is a session: SET stays with this client (and its clones), not
    // with a second client of the same user.
    alice
        .execute("SET datafusion.execution.batch_size = 7")
        .await
        .unwrap();
    let setting = "SELECT value FROM information_schema.df_settings \
                   WHERE name = 'datafusion.execution.batch_size'";
    let value = |batches: Vec<RecordBatch>| {
        let batch = one(&batches);
        let c = datafusion::arrow::compute::cast(batch.column(0), &DataType::Utf8).unwrap();
        c.as_any()
            .downcast_ref::<StringArray>()
            .unwrap()
            .value(0)
            .to_string()
    };
    assert_eq!(value(alice.clone().query(setting).await.unwrap()), "7");
    let other = builder
        .credentials("alice", "secret!")
        .connect()
        .await
        .unwrap();
    assert_ne!(value(other.query(setting).await.unwrap()), "7");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_client_over_tls() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = crate::pgwire::self_signed(certs.path());
    let server = start_with(|c| {
        password_config(c);
        c.tls = Some(tessera_server::config::TlsConfig {
            cert: cert.clone(),
            key: key.clone(),
            required: true,
        });
    })
    .await;
    let pem = std::fs::read(&cert).unwrap();
    let https = format!("https://{}", server.addr());
    let tls = Client::builder(&https)
        .credentials("alice", "secret!")
        .tls_ca_certificate(pem.clone());

    // The certificate names localhost; the URL has an IP address.
    let client = tls.clone().tls_domain("localhost").connect().await.unwrap();
    let answer = client.query("SELECT 2 * 21").await.unwrap();
    assert_eq!(i64s(&one(&answer), 0), [42]);
    // Flight's own scheme for TLS works the same.
    let grpc_tls = Client::builder(format!("grpc+tls://{}", server.addr()))
        .credentials("alice", "secret!")
        .tls_ca_certificate(pem.clone())
        .tls_domain("localhost")
        .connect()
        .await
        .unwrap();
    assert_eq!(grpc_tls.execute("SELECT 1").await.unwrap(), 0);

    // A name the certificate does not carry, no CA, or plaintext: no connection.
    let wrong_name = tls.clone().tls_domain("elsewhere.example").connect().await;
    assert!(wrong_name.is_err());
    let no_ca = Client::builder(&https).connect().await.unwrap_err();
    assert_eq!(no_ca.code(), Code::InvalidArgument, "{no_ca}");
    let plain = Client::builder(url(&server))
        .credentials("alice", "secret!")
        .connect()
        .await;
    assert!(plain.is_err());

    // The TLS client goes on.
    let again = client.query("SELECT 1").await.unwrap();
    assert_eq!(i64s(&one(&again), 0), [1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_client_query_and_query_stream_of_a_large_result() {
    let server = start().await;
    let client = connect(&server).await;
    // 500 x 600 dense cells: 300,000 rows, many batches and many Flight messages.
    client
        .execute("CREATE MATRIX big AS SELECT * FROM rand(500, 600)")
        .await
        .unwrap();
    // Every i appears 600 times, every j 500 times.
    let (want_i, want_j) = (600 * 499 * 500 / 2, 500 * 599 * 600 / 2);

    let mut stream = client.query_stream("SELECT i, j FROM big").await.unwrap();
    let names: Vec<String> = stream
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(names, ["i", "j"], "the schema comes before the first batch");
    let (mut batches, mut rows, mut sum_i, mut sum_j) = (0, 0, 0_i64, 0_i64);
    while let Some(batch) = stream.try_next().await.unwrap() {
        batches += 1;
        rows += batch.num_rows();
        sum_i += i64s(&batch, 0).iter().sum::<i64>();
        sum_j += i64s(&batch, 1).iter().sum::<i64>();
    }
    assert!(batches > 1, "{batches} batches");
    assert_eq!(rows, 300_000);
    assert_eq!((sum_i, sum_j), (want_i, want_j));

    let all = client.query("SELECT i, j FROM big").await.unwrap();
    assert_eq!(all.iter().map(|b| b.num_rows()).sum::<usize>(), 300_000);
    let sum: i64 = all.iter().flat_map(|b| i64s(b, 1)).sum();
    assert_eq!(sum, want_j);

    // An empty result still has its schema.
    let empty = client
        .query_stream("SELECT v FROM big WHERE i < 0")
        .await
        .unwrap();
    assert_eq!(empty.schema().field(0).name(), "v");
    let batches: Vec<RecordBatch> = empty.try_collect().await.unwrap();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_client_execute_ddl_and_dml() {
    let server = start().await;
    let client = connect(&server).await;
    // DDL reports no count: 0.
    assert_eq!(
        client
            .execute("CREATE TABLE t (a BIGINT, b VARCHAR)")
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        client
            .execute("INSERT INTO t VALUES (1, 'x'), (2, 'y'), (3, 'z')")
            .await
            .unwrap(),
        3
    );
    // A script: DDL then DML; the count is the last statement's.
    let n = client
        .execute(
            "CREATE MATRIX m (2, 2); INSERT INTO m VALUES (0, 0, 1.5), (1, 1, 2.5), (0, 1, -1)",
        )
        .await
        .unwrap();
    assert_eq!(n, 3);
    assert_eq!(
        client
            .execute("INSERT INTO t SELECT a + 10, b FROM t WHERE a > 1")
            .await
            .unwrap(),
        2
    );

    // The in-process database sees the same data.
    let db = server.server.database();
    let t = db.sql("SELECT count(*), sum(a) FROM t").await.unwrap();
    assert_eq!(i64s(&t[0], 0), [5]);
    assert_eq!(i64s(&t[0], 1), [1 + 2 + 3 + 12 + 13]);
    let m = client
        .query("SELECT sum(v) FROM m WHERE i = j")
        .await
        .unwrap();
    assert_eq!(f64s(&one(&m), 0), [4.0]);
    client.execute("DROP TABLE t").await.unwrap();
    assert!(db.sql("SELECT * FROM t").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_client_prepared_statements_with_parameters_and_batches() {
    let server = start().await;
    let client = connect(&server).await;
    client
        .execute(
            "CREATE TABLE t (a BIGINT, b DOUBLE); INSERT INTO t VALUES (1, 0.5), (2, 1.5), (3, 2.5)",
        )
        .await
        .unwrap();

    let mut select = client
        .prepare("SELECT a, b FROM t WHERE a >= $1 ORDER BY a")
        .await
        .unwrap();
    assert_eq!(select.parameter_schema().fields().len(), 1);
    let columns: Vec<String> = select
        .dataset_schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(columns, ["a", "b"]);
    let rows = one(&select.query(Parameters::new().push(2_i64)).await.unwrap());
    assert_eq!(i64s(&rows, 0), [2, 3]);
    assert_eq!(f64s(&rows, 1), [1.5, 2.5]);
    let rows = one(&select.query(Parameters::new().push(3_i64)).await.unwrap());
    assert_eq!(i64s(&rows, 0), [3]);
    // Several parameter rows: the results of each, one after the other.
    let two_rows =
        RecordBatch::try_from_iter([("$1", Arc::new(Int64Array::from(vec![3, 1])) as _)]).unwrap();
    let rows = one(&select.query(two_rows).await.unwrap());
    assert_eq!(i64s(&rows, 0), [3, 1, 2, 3]);
    // Each run has the values it is given: none now, not the last ones bound.
    let e = select.query(None).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    select.close().await.unwrap();

    // The batch form: three inserts in one call; then one row from Rust values, with
    // `?` placeholders.
    let mut insert = client.prepare("INSERT INTO t VALUES (?, ?)").await.unwrap();
    let batch = RecordBatch::try_from_iter([
        ("a", Arc::new(Int64Array::from(vec![10, 11, 12])) as _),
        (
            "b",
            Arc::new(Float64Array::from(vec![10.0, 11.0, 12.0])) as _,
        ),
    ])
    .unwrap();
    assert_eq!(insert.execute(batch).await.unwrap(), 3);
    let row = Parameters::new().push(20_i64).push(Some(0.25));
    assert_eq!(insert.execute(row).await.unwrap(), 1);
    insert.close().await.unwrap();

    // A statement without parameters.
    let mut count = client
        .prepare("SELECT count(*), sum(a), sum(b) FROM t")
        .await
        .unwrap();
    assert!(count.parameter_schema().fields().is_empty());
    let totals = one(&count.query(None).await.unwrap());
    assert_eq!(i64s(&totals, 0), [7]);
    assert_eq!(i64s(&totals, 1), [1 + 2 + 3 + 10 + 11 + 12 + 20]);
    assert_eq!(f64s(&totals, 2), [0.5 + 1.5 + 2.5 + 33.0 + 0.25]);
    count.close().await.unwrap();
}

/// The cells of a deterministic `rows x cols` matrix of small integers, about a third
/// zero, and the matrix itself (row-major).
fn matrix(rows: usize, cols: usize, seed: usize) -> (RecordBatch, Vec<f64>) {
    let dense: Vec<f64> = (0..rows * cols)
        .map(|n| (((n * 31 + seed * 17) % 11) as f64 - 3.0).max(0.0))
        .collect();
    let (mut i, mut j, mut v) = (vec![], vec![], vec![]);
    for (n, value) in dense.iter().enumerate() {
        if *value != 0.0 {
            i.push((n / cols) as i64);
            j.push((n % cols) as i64);
            v.push(*value);
        }
    }
    (cells(i, j, v), dense)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_client_load_array_then_matmul_matches_a_naive_product() {
    let server = start().await;
    let client = connect(&server).await;
    let (n, k, m) = (40, 30, 20);
    client
        .execute(&format!(
            "CREATE MATRIX a ({n}, {k}) BLOCK (16, 16); CREATE MATRIX b ({k}, {m}) BLOCK (16, 16)"
        ))
        .await
        .unwrap();
    let (a_cells, a) = matrix(n, k, 1);
    let (b_cells, b) = matrix(k, m, 2);
    let nnz_a = a.iter().filter(|v| **v != 0.0).count() as u64;
    assert_eq!(client.load_array("a", a_cells).await.unwrap(), nnz_a);
    let nnz_b = b_cells.num_rows() as u64;
    assert_eq!(client.load_array("b", b_cells).await.unwrap(), nnz_b);

    let mut naive = vec![0.0; n * m];
    for r in 0..n {
        for x in 0..k {
            for c in 0..m {
                naive[r * m + c] += a[r * k + x] * b[x * m + c];
            }
        }
    }
    let product = client
        .query("SELECT i, j, v FROM matmul(a, b)")
        .await
        .unwrap();
    let mut got = vec![0.0; n * m];
    for batch in &product {
        let (i, j, v) = (i64s(batch, 0), i64s(batch, 1), f64s(batch, 2));
        for ((i, j), v) in i.into_iter().zip(j).zip(v) {
            got[i as usize * m + j as usize] = v;
        }
    }
    assert_eq!(got, naive);
    assert!(naive.iter().any(|v| *v != 0.0));

    // A cell outside the array: the data's fault, and nothing of the load is written.
    let outside = cells(vec![0, 99], vec![0, 0], vec![5.0, 5.0]);
    let e = client.load_array("a", outside).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    let count = client.query("SELECT count(*) FROM a").await.unwrap();
    assert_eq!(i64s(&one(&count), 0), [nnz_a as i64]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_client_load_table_creates_appends_and_replaces() {
    let server = start().await;
    let client = connect(&server).await;
    let people = |ids: Vec<i32>, names: Vec<&str>| {
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("id", DataType::Int32, false),
                Field::new("name", DataType::Utf8, false),
            ])),
            vec![
                Arc::new(Int32Array::from(ids)),
                Arc::new(StringArray::from(names)),
            ],
        )
        .unwrap()
    };
    let sum_and_count = |client: Client| async move {
        let r = one(&client
            .query("SELECT sum(id), count(*) FROM people")
            .await
            .unwrap());
        (i64s(&r, 0)[0], i64s(&r, 1)[0])
    };

    let batch = people(vec![1, 2, 3], vec!["ann", "bo", "cy"]);
    let created = client
        .load_table("people", batch.clone(), LoadMode::Create)
        .await
        .unwrap();
    assert_eq!(created, 3);
    expect_error(
        client.load_table("people", batch, LoadMode::Create).await,
        Code::AlreadyExists,
        "42P07",
    );
    let appended = client
        .load_table("people", people(vec![4], vec!["di"]), LoadMode::Append)
        .await
        .unwrap();
    assert_eq!(appended, 1);
    assert_eq!(sum_and_count(client.clone()).await, (10, 4));
    let replaced = client
        .load_table(
            "people",
            people(vec![7, 8], vec!["ed", "flo"]),
            LoadMode::Replace,
        )
        .await
        .unwrap();
    assert_eq!(replaced, 2);
    assert_eq!(sum_and_count(client.clone()).await, (15, 2));
    let both = client
        .load_table(
            "people",
            people(vec![9], vec!["gil"]),
            LoadMode::CreateOrAppend,
        )
        .await
        .unwrap();
    assert_eq!(both, 1);
    assert_eq!(sum_and_count(client.clone()).await, (24, 3));
    let names = one(&client
        .query("SELECT name FROM people ORDER BY id")
        .await
        .unwrap());
    let names = datafusion::arrow::compute::cast(names.column(0), &DataType::Utf8).unwrap();
    let names: Vec<&str> = names
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap()
        .iter()
        .flatten()
        .collect();
    assert_eq!(names, ["ed", "flo", "gil"]);

    // Appending to a table that does not exist: NOT_FOUND, and none is created.
    expect_error(
        client
            .load_table("nobody", people(vec![1], vec!["a"]), LoadMode::Append)
            .await,
        Code::NotFound,
        "42P01",
    );
    assert!(client.query("SELECT * FROM nobody").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_client_a_failing_load_stream_writes_nothing() {
    let server = start().await;
    let client = connect(&server).await;
    client.execute("CREATE MATRIX g (3, 3)").await.unwrap();
    let good = cells(vec![0, 1, 2], vec![0, 1, 2], vec![2.0, 3.0, 4.0]);
    let broken = || {
        futures::stream::iter([
            Ok(good.clone()),
            Err(ArrowError::ComputeError("the source broke".into())),
        ])
    };

    // Into an array: the load is abandoned, the stream's error comes back.
    let e = client
        .load_stream("g", LoadMode::Append, broken())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Arrow(_)), "{e:?}");
    assert!(e.to_string().contains("the source broke"), "{e}");
    // Into a new table: the server drops the table it created for the load.
    let e = client
        .load_stream("half", LoadMode::Create, broken())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("the source broke"), "{e}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while client.query("SELECT * FROM half").await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the table of an abandoned load is still there"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let count = client.query("SELECT count(*) FROM g").await.unwrap();
    assert_eq!(i64s(&one(&count), 0), [0], "nothing of the abandoned load");

    // The same data, whole: the diagonal 2, 3, 4; trace of g g = 4 + 9 + 16.
    let n = client
        .load_stream("g", LoadMode::Append, futures::stream::iter([Ok(good)]))
        .await
        .unwrap();
    assert_eq!(n, 3);
    let trace = client
        .query("SELECT sum(v) FROM matmul(g, g) WHERE i = j")
        .await
        .unwrap();
    assert_eq!(f64s(&one(&trace), 0), [29.0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_client_errors_carry_code_and_sqlstate() {
    assert_eq!(
        tessera_client::SQLSTATE_METADATA_KEY,
        tessera_server::SQLSTATE_METADATA_KEY
    );
    let server = start().await;
    let client = connect(&server).await;

    expect_error(
        client.query("SELECT * FROM nosuch").await,
        Code::NotFound,
        "42P01",
    );
    expect_error(
        client.query("SELEC 1").await,
        Code::InvalidArgument,
        "42601",
    );
    expect_error(
        client.execute("SELEC 1").await,
        Code::InvalidArgument,
        "42601",
    );
    expect_error(
        client.execute("INSERT INTO nosuch VALUES (1)").await,
        Code::NotFound,
        "42P01",
    );
    expect_error(
        client.prepare("SELECT * FROM nosuch WHERE a = $1").await,
        Code::NotFound,
        "42P01",
    );
    expect_error(
        client
            .load_array("nosuch", cells(vec![0], vec![0], vec![1.0]))
            .await,
        Code::NotFound,
        "42P01",
    );
    let e = client.query("SELECT * FROM nosuch").await.unwrap_err();
    assert!(e.to_string().contains("(NOT_FOUND, SQLSTATE 42P01)"), "{e}");
    assert!(e.message().contains("nosuch"), "{e}");

    // Shapes that do not conform, found when the plan is built or while it streams.
    client.execute("CREATE MATRIX a (2, 3)").await.unwrap();
    let result = match client.query_stream("SELECT * FROM matmul(a, a)").await {
        Ok(stream) => stream.try_collect::<Vec<_>>().await.map(|_| ()),
        Err(e) => Err(e),
    };
    expect_error(result, Code::InvalidArgument, "22000");

    // A port where nobody listens: UNAVAILABLE, from this side.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let e = Client::builder(format!("http://{addr}"))
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Connect { .. }), "{e:?}");
    assert_eq!(e.code(), Code::Unavailable);
    assert_eq!(e.sqlstate(), None);
    let e = Client::connect("ftp://127.0.0.1:1").await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_client_cancel_stops_a_running_query() {
    let server = start().await;
    let client = connect(&server).await;
    let slow = "SELECT count(*) FROM matmul(rand(1500, 1500), rand(1500, 1500))";

    let stream = client.query_stream(slow).await.unwrap();
    let canceller = stream.canceller();
    let reading = tokio::spawn(stream.try_collect::<Vec<_>>());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(canceller.cancel().await.unwrap(), "the query was running");
    expect_error(reading.await.unwrap(), Code::Cancelled, "57014");

    // A finished query has nothing left to cancel; the client goes on.
    let mut done = client.query_stream("SELECT 41 + 1").await.unwrap();
    let answer = done.try_next().await.unwrap().unwrap();
    assert_eq!(i64s(&answer, 0), [42]);
    assert!(done.try_next().await.unwrap().is_none());
    // The server forgets the statement once its stream is gone, a moment after the end.
    let canceller = done.canceller();
    drop(done);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while canceller.cancel().await.unwrap() {
        assert!(std::time::Instant::now() < deadline, "still cancellable");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let again = client.query("SELECT 1").await.unwrap();
    assert_eq!(i64s(&one(&again), 0), [1]);
}
