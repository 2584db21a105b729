//! What a client may not do to the server: read or write files it was not granted
//! (issue 14, item 11), allocate without bound through a matrix shape (item 7), leave
//! a finished statement's memory charged to the pool (item 8); and the error classes
//! Tessera raises as types (item 13).

use std::path::Path;
use std::time::Duration;

use tessera_server::config::ServerConfig;
use tessera_server::errors::{client_message, sqlstate};
use tessera_server::{Database, DatabaseOptions, Server, ServerHandle};
use tokio_postgres::{Client, NoTls};

async fn connect_as(port: u16, user: &str) -> Client {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(port)
        .user(user)
        .dbname("tessera")
        .connect_timeout(Duration::from_secs(10));
    let (client, connection) = config.connect(NoTls).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// The SQLSTATE of `sql`'s error (panics if it succeeds).
async fn pg_error(client: &Client, sql: &str) -> (String, String) {
    let e = client.batch_execute(sql).await.expect_err(sql);
    let db = e.as_db_error().unwrap_or_else(|| panic!("{sql}: {e}"));
    (db.code().code().to_string(), db.message().to_string())
}

async fn file_server(dir: &Path) -> ServerHandle {
    let mut config = ServerConfig {
        data_dir: dir.join("db"),
        pg_listen: "127.0.0.1:0".into(),
        ..ServerConfig::default()
    };
    config.files.read_roles = vec!["loader".into(), "admin".into()];
    config.files.write_roles = vec!["admin".into()];
    Server::builder().config(config).build().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_files_need_a_grant_and_stay_under_their_directories() {
    let dir = tempfile::tempdir().unwrap();
    let server = file_server(dir.path()).await;
    let db = dir.path().join("db");
    let import = db.join("import");
    let export = db.join("export");
    assert!(
        import.is_dir() && export.is_dir(),
        "the default directories exist"
    );
    std::fs::write(import.join("cells.csv"), "0,0,1.5\n1,1,2.5\n").unwrap();
    let outside = dir.path().join("outside.csv");
    std::fs::write(&outside, "0,0,9\n").unwrap();
    std::os::unix::fs::symlink(&outside, import.join("link.csv")).unwrap();
    let catalog = db.join("store").join("catalog.json");
    let port = server.local_addr().port();

    let plain = connect_as(port, "tessera").await;
    plain.batch_execute("CREATE MATRIX m (2, 2)").await.unwrap();
    let catalog_before = std::fs::read(&catalog).unwrap();
    let cells = import.join("cells.csv").display().to_string();
    for sql in [
        "CREATE EXTERNAL TABLE p (a TEXT) STORED AS CSV LOCATION '/etc/passwd' OPTIONS ('format.delimiter' ':')".to_string(),
        format!("COPY m FROM '{cells}'"),
        format!("COPY (SELECT 'x') TO '{}'", catalog.display()),
        format!("COPY m TO '{}'", export.join("m.csv").display()),
        format!("EXPLAIN ANALYZE COPY (SELECT 'x') TO '{}'", export.join("x.csv").display()),
    ] {
        let (code, message) = pg_error(&plain, &sql).await;
        assert_eq!(code, "42501", "{sql}: {message}");
        assert!(message.contains("permission denied"), "{message}");
    }

    // A reader: files under import/ only, symlinks and `..` resolved first.
    let loader = connect_as(port, "loader").await;
    loader
        .batch_execute(&format!("COPY m FROM '{cells}'"))
        .await
        .unwrap();
    let sum: f64 = loader
        .query_one("SELECT sum(v) FROM m", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(sum, 4.0);
    for path in [
        outside.display().to_string(),
        import.join("link.csv").display().to_string(),
        format!("{}/../../outside.csv", import.display()),
        catalog.display().to_string(),
    ] {
        let (code, message) = pg_error(&loader, &format!("COPY m FROM '{path}'")).await;
        assert_eq!(code, "42501", "{path}: {message}");
    }
    let (code, _) = pg_error(
        &loader,
        &format!("COPY m TO '{}'", export.join("m.csv").display()),
    )
    .await;
    assert_eq!(code, "42501", "reading is not writing");

    // A writer: export/ only, never the store.
    let admin = connect_as(port, "admin").await;
    admin
        .batch_execute(&format!(
            "COPY m TO '{}' WITH (FORMAT csv)",
            export.join("m.csv").display()
        ))
        .await
        .unwrap();
    let written = std::fs::read_to_string(export.join("m.csv")).unwrap();
    assert!(
        written.contains("1.5") && written.contains("2.5"),
        "{written}"
    );
    for target in [catalog.clone(), dir.path().join("elsewhere.csv")] {
        let (code, _) = pg_error(
            &admin,
            &format!("COPY (SELECT 1) TO '{}'", target.display()),
        )
        .await;
        assert_eq!(code, "42501", "{}", target.display());
    }
    // Still the store's catalog (its header), not a file a COPY wrote over it.
    let catalog_after = std::fs::read(&catalog).unwrap();
    assert_eq!(catalog_after[..8], catalog_before[..8]);
    assert!(!dir.path().join("elsewhere.csv").exists());
    // COPY FROM STDIN needs no file access.
    let sink = plain.copy_in("COPY m FROM STDIN").await.unwrap();
    futures::pin_mut!(sink);
    use futures::SinkExt;
    sink.send(bytes::Bytes::from_static(b"0\t1\t7\n"))
        .await
        .unwrap();
    assert_eq!(sink.finish().await.unwrap(), 1);
    server.shutdown().await;
}

#[tokio::test]
async fn an_embedded_database_may_not_write_into_its_own_store() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path()).unwrap();
    db.sql("CREATE MATRIX m (2, 2); INSERT INTO m VALUES (0, 0, 1)")
        .await
        .unwrap();
    let catalog = dir.path().join("store").join("catalog.json");
    let before = std::fs::read(&catalog).unwrap();
    let e = db
        .sql(&format!("COPY (SELECT 'x') TO '{}'", catalog.display()))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{e}");
    assert_eq!(std::fs::read(&catalog).unwrap(), before);
    // Files elsewhere are the embedding application's to use.
    let out = dir.path().join("m.csv");
    db.sql(&format!("COPY m TO '{}'", out.display()))
        .await
        .unwrap();
    assert!(out.exists());
    assert_eq!(
        db.sql("SELECT count(*) FROM m").await.unwrap()[0].num_rows(),
        1
    );
}

#[tokio::test]
async fn huge_shapes_are_refused_before_anything_is_allocated() {
    let db = Database::in_memory().unwrap();
    for sql in [
        "SELECT count(*) FROM matmul((SELECT 9223372036854775806 AS i, 0 AS j, 1.0 AS v), (SELECT 0 AS i, 0 AS j, 1.0 AS v))",
        "SELECT count(*) FROM matmul((SELECT 0 AS i, 0 AS j, 1.0 AS v), (SELECT 0 AS i, 9223372036854775806 AS j, 1.0 AS v))",
        "SELECT count(*) FROM matmul((SELECT 4000000000000 AS i, 0 AS j, 1.0 AS v), (SELECT 0 AS i, 4000000000000 AS j, 1.0 AS v))",
        "SELECT count(*) FROM eye(10000000000000)",
        "SELECT count(*) FROM rowsums((SELECT 9223372036854775806 AS i, 9223372036854775806 AS j, 1.0 AS v))",
    ] {
        let e = db.sql(sql).await.expect_err(sql);
        let state = sqlstate(&e);
        assert!(
            state == "54000" || state == "53200",
            "{sql}: {state} {}",
            client_message(&e)
        );
    }
    // The server still answers, and a modest sparse shape still works.
    let batches = db
        .sql("SELECT v FROM matmul((SELECT 999999 AS i, 0 AS j, 2.0 AS v), (SELECT 0 AS i, 0 AS j, 3.0 AS v))")
        .await
        .unwrap();
    let v = batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<datafusion::arrow::array::Float64Array>()
        .unwrap()
        .value(0);
    assert_eq!(v, 6.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_statements_leave_nothing_in_the_memory_pool() {
    let db = Database::in_memory_with(DatabaseOptions {
        memory_limit: Some(64 << 20),
        ..DatabaseOptions::default()
    })
    .unwrap();
    db.sql(
        "CREATE MATRIX a AS SELECT * FROM rand(1500, 1500, seed => 1);
         CREATE MATRIX b AS SELECT * FROM rand(1500, 1500, seed => 2)",
    )
    .await
    .unwrap();
    assert_eq!(db.memory_reserved(), 0);
    // The same text three times: planned once, then served from the plan cache.
    for _ in 0..3 {
        let n = db.sql("SELECT count(*) FROM matmul(a, b)").await.unwrap();
        assert_eq!(n[0].num_rows(), 1);
        assert_eq!(
            db.memory_reserved(),
            0,
            "a finished product keeps its result charged to the pool"
        );
    }
    // So the budget is whole for the next statement: an 18 MB result and 36 MB of
    // inputs fit only if nothing earlier is still charged.
    db.sql("SELECT count(*) FROM matmul(t(a), b)")
        .await
        .unwrap();
    assert_eq!(db.memory_reserved(), 0);
}

/// Stored inputs that fit the budget, a product whose partial sums do not: under every
/// strategy's dataflow the statement fails with 53200 (the block operators charge what
/// they hold), the pool is empty again, and the database goes on serving products that
/// fit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_product_whose_result_does_not_fit_fails_with_53200_and_leaves_the_pool_empty() {
    let db = Database::in_memory_with(DatabaseOptions {
        memory_limit: Some(16 << 20),
        ..DatabaseOptions::default()
    })
    .unwrap();
    // 3000 x 40 and 40 x 3000, about 1 MB each; their product is 72 MB.
    db.sql(
        "CREATE MATRIX a AS SELECT * FROM rand(3000, 40, seed => 1);
         CREATE MATRIX b AS SELECT * FROM rand(40, 3000, seed => 2)",
    )
    .await
    .unwrap();
    assert_eq!(db.memory_reserved(), 0);
    for strategy in ["auto", "repartition", "broadcast", "replication", "local"] {
        let sql = format!(
            "SET tessera.matmul_strategy = '{strategy}'; SELECT count(*) FROM matmul(a, b)"
        );
        let e = db.sql(&sql).await.expect_err(&sql);
        assert_eq!(sqlstate(&e), "53200", "{strategy}: {}", client_message(&e));
        assert_eq!(
            db.memory_reserved(),
            0,
            "{strategy}: the pool after the error"
        );
    }
    // A 40 x 40 product of the same inputs fits, and its sum is checked by hand from
    // the row sums: sum(t(a) a) = sum over k, l, i of a_ik a_il = sum_i (rowsum_i)^2.
    let rowsums = db.sql("SELECT v FROM rowsums(a)").await.unwrap();
    let mut want = 0.0;
    for batch in &rowsums {
        let v = batch
            .column(0)
            .as_any()
            .downcast_ref::<datafusion::arrow::array::Float64Array>()
            .unwrap();
        want += v.iter().flatten().map(|x| x * x).sum::<f64>();
    }
    let got = db.sql("SELECT sum(v) FROM matmul(t(a), a)").await.unwrap();
    let got = got[0]
        .column(0)
        .as_any()
        .downcast_ref::<datafusion::arrow::array::Float64Array>()
        .unwrap()
        .value(0);
    assert!(
        (got - want).abs() <= 1e-9 * want.abs(),
        "{got} against {want}"
    );
    assert_eq!(db.memory_reserved(), 0);
}

#[tokio::test]
async fn linear_algebra_errors_carry_their_class() {
    let db = Database::in_memory().unwrap();
    db.sql(
        "CREATE MATRIX s (2, 2); INSERT INTO s VALUES (0, 0, 1), (0, 1, 2), (1, 0, 2), (1, 1, 4);
         CREATE MATRIX r (2, 3)",
    )
    .await
    .unwrap();
    let cases = [
        ("SELECT * FROM inv(s)", "22000"),
        ("SELECT * FROM solve(s, s)", "22000"),
        ("SELECT * FROM matmul(s, t(r))", "22000"),
        ("SELECT * FROM matmul(nosuch, s)", "42P01"),
        ("CREATE MATRIX s (3, 3)", "42P07"),
        ("INSERT INTO s VALUES (5, 5, 1.0)", "22000"),
    ];
    for (sql, want) in cases {
        let e = db.sql(sql).await.expect_err(sql);
        assert_eq!(sqlstate(&e), want, "{sql}: {}", client_message(&e));
        // Typed: the class comes from the error's kind, not from its words.
        assert!(
            tessera_planner::TesseraError::find(&e).is_some(),
            "{sql} is not a typed error: {e:?}"
        );
    }
}

/// Every shard file under `dir`.
fn shard_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "arrow") {
                out.push(path);
            }
        }
    }
    out
}

#[tokio::test]
async fn corruption_met_inside_linear_algebra_is_data_corrupted() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Database::open(dir.path()).unwrap();
        db.sql("CREATE MATRIX dmg AS SELECT * FROM rand(300, 300, seed => 5)")
            .await
            .unwrap();
    }
    let files = shard_files(&dir.path().join("store"));
    assert!(!files.is_empty());
    for f in &files {
        let mut bytes = std::fs::read(f).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 0x40;
        std::fs::write(f, bytes).unwrap();
    }
    let db = Database::open(dir.path()).unwrap();
    for sql in [
        "SELECT count(*) FROM matmul(dmg, dmg)",
        "SELECT sum(v) FROM rowsums(t(dmg))",
        "SELECT sum(v) FROM dmg",
    ] {
        let e = db.sql(sql).await.expect_err(sql);
        let message = client_message(&e);
        assert_eq!(sqlstate(&e), "XX001", "{sql}: {message}");
        assert!(
            message.contains("dmg") && message.contains("shard-"),
            "{sql}: the array and file are named: {message}"
        );
    }
}
