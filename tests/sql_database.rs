//! The embedded database end to end: persistence across reopening, COPY round trips
//! checked by NumPy, writes that fail and commit nothing, the memory budget, and the
//! `tessera` command line.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::{Float64Type, Int64Type, UInt64Type};
use datafusion::error::DataFusionError;
use datafusion::execution::memory_pool::MemoryConsumer;
use tessera_server::{Database, DatabaseOptions};

use crate::python;

/// A two-thread runtime for tests that drive the embedded database from plain `#[test]`s.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Every row of every batch as text, columns joined by `|`.
fn rows(batches: &[RecordBatch]) -> Vec<String> {
    use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
    let options = FormatOptions::default().with_null("NULL");
    let mut out = Vec::new();
    for b in batches {
        let f: Vec<_> = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).unwrap())
            .collect();
        for r in 0..b.num_rows() {
            out.push(
                f.iter()
                    .map(|f| f.value(r).to_string())
                    .collect::<Vec<_>>()
                    .join("|"),
            );
        }
    }
    out
}

async fn query(db: &Database, sql: &str) -> Vec<String> {
    rows(&db.sql(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}")))
}

fn error(result: Result<Vec<RecordBatch>, DataFusionError>) -> DataFusionError {
    match result {
        Ok(b) => panic!("expected an error, got {:?}", rows(&b)),
        Err(e) => e,
    }
}

#[test]
fn tables_and_arrays_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let csv = dir.path().join("people.csv");
    std::fs::write(&csv, "id,name\n1,ada\n2,grace\n").unwrap();
    runtime().block_on(async {
        let db = Database::open(&path).unwrap();
        db.sql(&format!(
            "CREATE MATRIX m (3, 4) BLOCK (2, 2) WITH (keep_versions = 3);
             INSERT INTO m VALUES (0, 0, 1.5), (2, 3, -4.0);
             INSERT INTO m VALUES (1, 1, 2.0);
             CREATE TABLE t (id BIGINT, score DOUBLE DEFAULT 0.5);
             INSERT INTO t (id) VALUES (1);
             INSERT INTO t VALUES (2, 9.0);
             CREATE TABLE s AS SELECT i, sum(v) AS total FROM m GROUP BY i;
             CREATE TABLE gone AS SELECT 1 AS x;
             DROP TABLE gone;
             CREATE EXTERNAL TABLE people STORED AS CSV LOCATION '{}' OPTIONS ('format.has_header' 'true');
             CREATE VIEW scored AS SELECT p.name, t.score FROM people p JOIN t ON p.id = t.id",
            csv.display()
        ))
        .await
        .unwrap();
        // A second open of the same directory is refused while the first is open.
        let locked = Database::open(&path).unwrap_err();
        assert!(locked.to_string().contains("locked"), "{locked}");
    });
    // Every table directory left is one the catalog names (`gone` was deleted).
    let table_dirs = std::fs::read_dir(path.join("tables"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().is_dir())
        .count();
    assert_eq!(table_dirs, 2, "t and s");

    runtime().block_on(async {
        let db = Database::open(&path).unwrap();
        assert_eq!(
            query(&db, "SELECT i, j, v FROM m ORDER BY i, j").await,
            ["0|0|1.5", "1|1|2.0", "2|3|-4.0"]
        );
        assert_eq!(
            query(&db, "SELECT i, j, v FROM \"m@1\" ORDER BY i, j").await,
            ["0|0|1.5", "2|3|-4.0"]
        );
        assert_eq!(
            query(&db, "SELECT * FROM t ORDER BY id").await,
            ["1|0.5", "2|9.0"]
        );
        assert_eq!(
            query(&db, "SELECT * FROM s ORDER BY i").await,
            ["0|1.5", "1|2.0", "2|-4.0"]
        );
        assert_eq!(
            query(&db, "SELECT * FROM scored ORDER BY name").await,
            ["ada|0.5", "grace|9.0"]
        );
        // The column default came back too.
        db.sql("INSERT INTO t (id) VALUES (3)").await.unwrap();
        assert_eq!(
            query(&db, "SELECT score FROM t WHERE id = 3").await,
            ["0.5"]
        );
        let e = error(db.sql("SELECT * FROM gone").await);
        assert!(e.to_string().contains("not found"), "{e}");
        // Names are still taken across kinds after a restart.
        let e = error(db.sql("CREATE MATRIX t (2, 2)").await);
        assert!(e.to_string().contains("already a table"), "{e}");
        // Replaced after the view that uses it was made: restored in a second round.
        db.sql(&format!(
            "CREATE OR REPLACE EXTERNAL TABLE people STORED AS CSV LOCATION '{}' OPTIONS ('format.has_header' 'true')",
            csv.display()
        ))
        .await
        .unwrap();
    });
    runtime().block_on(async {
        let db = Database::open(&path).unwrap();
        assert_eq!(
            query(&db, "SELECT * FROM scored ORDER BY name").await,
            ["ada|0.5", "grace|9.0"]
        );
        db.sql("DROP TABLE s; DROP VIEW scored; DROP TABLE people")
            .await
            .unwrap();
    });
    runtime().block_on(async {
        let db = Database::open(&path).unwrap();
        assert_eq!(
            query(&db, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1").await,
            ["m", "t"]
        );
        assert_eq!(query(&db, "SELECT count(*) FROM t").await, ["3"]);
    });
}

#[test]
fn a_missing_external_file_fails_only_queries_of_that_table() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let csv = dir.path().join("x.csv");
    std::fs::write(&csv, "a\n1\n").unwrap();
    runtime().block_on(async {
        let db = Database::open(&path).unwrap();
        db.sql(&format!(
            "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '{}' OPTIONS ('format.has_header' 'true'); CREATE TABLE y AS SELECT 2 AS b",
            csv.display()
        ))
        .await
        .unwrap();
    });
    std::fs::remove_file(&csv).unwrap();
    runtime().block_on(async {
        let db = Database::open(&path).unwrap();
        assert_eq!(query(&db, "SELECT b FROM y").await, ["2"]);
        let e = error(db.sql("SELECT * FROM x").await);
        assert!(e.to_string().contains("could not be restored"), "{e}");
        // It can be dropped and recreated.
        db.sql("DROP TABLE x; CREATE TABLE x AS SELECT 3 AS c")
            .await
            .unwrap();
        assert_eq!(query(&db, "SELECT c FROM x").await, ["3"]);
    });
}

/// NumPy writes matrices, Tessera loads them with COPY, SQL aggregates are compared with
/// NumPy's, and the files Tessera writes back are compared with the originals in NumPy.
#[test]
fn copy_round_trips_against_numpy() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A sparse 37x23 matrix (C order) and a dense 5x7 one in Fortran order; values with
    // many digits so any rounding would show.
    let sums = python::run(
        d,
        r#"
import numpy as np
rng = np.random.default_rng(7)
a = rng.standard_normal((37, 23)) * 1e3
a[rng.random((37, 23)) < 0.8] = 0.0
np.save('a.npy', a)
b = np.asfortranarray(rng.standard_normal((5, 7)))
np.save('b.npy', b)
print(repr(float(a.sum())))
for i, s in enumerate(a.sum(axis=1)):
    print(i, repr(float(s)), int(np.count_nonzero(a[i])))
print(repr(float((b * b).sum())))
"#,
    );
    let mut lines = sums.lines();
    let total: f64 = lines.next().unwrap().parse().unwrap();
    let per_row: Vec<(i64, f64, i64)> = (0..37)
        .map(|_| {
            let w: Vec<&str> = lines.next().unwrap().split(' ').collect();
            (
                w[0].parse().unwrap(),
                w[1].parse().unwrap(),
                w[2].parse().unwrap(),
            )
        })
        .collect();
    let b_squares: f64 = lines.next().unwrap().parse().unwrap();

    runtime().block_on(async {
        let db = Database::open(d.join("db")).unwrap();
        let p = |f: &str| d.join(f).display().to_string();
        let loaded = db
            .sql(&format!(
                "CREATE MATRIX a (37, 23) BLOCK (10, 8); COPY a FROM '{}' WITH (FORMAT npy)",
                p("a.npy")
            ))
            .await
            .unwrap();
        let nnz: i64 = per_row.iter().map(|r| r.2).sum();
        assert_eq!(
            loaded[0].column(0).as_primitive::<UInt64Type>().value(0),
            nnz as u64
        );
        // Row sums and counts of non-zeros, against NumPy's (sums within rounding of a
        // different summation order).
        let batches = db
            .sql("SELECT i, sum(v), count(*) FROM a GROUP BY i ORDER BY i")
            .await
            .unwrap();
        let mut got = Vec::new();
        for b in &batches {
            for r in 0..b.num_rows() {
                got.push((
                    b.column(0).as_primitive::<Int64Type>().value(r),
                    b.column(1).as_primitive::<Float64Type>().value(r),
                    b.column(2).as_primitive::<Int64Type>().value(r),
                ));
            }
        }
        let want: Vec<_> = per_row.iter().filter(|r| r.2 > 0).collect();
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert_eq!((g.0, g.2), (w.0, w.2));
            assert!(
                (g.1 - w.1).abs() <= 1e-9 * w.1.abs().max(1.0),
                "{g:?} vs {w:?}"
            );
        }
        let s = db.sql("SELECT sum(v) FROM a").await.unwrap();
        let s = s[0].column(0).as_primitive::<Float64Type>().value(0);
        assert!((s - total).abs() <= 1e-9 * total.abs().max(1.0));

        // The Fortran-order file, then a sum of squares computed in SQL.
        db.sql(&format!(
            "CREATE MATRIX b (5, 7) DENSE; COPY b FROM '{}'",
            p("b.npy")
        ))
        .await
        .unwrap();
        let s = db.sql("SELECT sum(v * v) FROM b").await.unwrap();
        let s = s[0].column(0).as_primitive::<Float64Type>().value(0);
        assert!((s - b_squares).abs() <= 1e-12 * b_squares);

        // Back out in every format, and a parquet round trip into a new matrix.
        db.sql(&format!(
            "COPY a TO '{}'; COPY a TO '{}' WITH (FORMAT mtx); COPY a TO '{}' WITH (FORMAT 'csv');
             COPY b TO '{}'; COPY a TO '{}' WITH (FORMAT parquet);
             CREATE MATRIX a2 (37, 23); COPY a2 FROM '{}'; COPY a2 TO '{}'",
            p("a_out.npy"),
            p("a_out.mtx"),
            p("a_out.csv"),
            p("b_out.npy"),
            p("a_out.parquet"),
            p("a_out.parquet"),
            p("a2_out.npy"),
        ))
        .await
        .unwrap();
    });
    let verdict = python::run(
        d,
        r#"
import numpy as np, scipy.io
a = np.load('a.npy'); b = np.load('b.npy')
checks = {
    'npy': np.array_equal(np.load('a_out.npy'), a),
    'mtx': np.array_equal(scipy.io.mmread('a_out.mtx').toarray(), a),
    'b': np.array_equal(np.load('b_out.npy'), b),
    'parquet': np.array_equal(np.load('a2_out.npy'), a),
}
header = open('a_out.csv').readline()[:1].isalpha()
t = np.loadtxt('a_out.csv', delimiter=',', ndmin=2, skiprows=int(header))
m = np.zeros_like(a)
if t.shape[1] == 3:
    for i, j, v in t: m[int(i), int(j)] = v
else:
    m = t
checks['csv'] = np.array_equal(m, a)
print(' '.join(k for k, ok in checks.items() if not ok) or 'ok')
"#,
    );
    assert_eq!(
        verdict.trim(),
        "ok",
        "formats that differ from NumPy's matrix"
    );
}

#[test]
fn failed_writes_commit_nothing() {
    runtime().block_on(async {
        let db = Database::in_memory().unwrap();
        db.sql(
            "CREATE MATRIX m (100, 100) BLOCK (10, 10);
             INSERT INTO m SELECT value % 100, value / 100, 1.0 + value FROM generate_series(0, 4999)",
        )
        .await
        .unwrap();
        let before = db.store().array("m").unwrap().current().clone();
        assert_eq!(before.nnz, 5000);
        // Thousands of good cells across many blocks, then one outside the shape.
        let e = error(
            db.sql(
                "INSERT INTO m SELECT value % 100, value / 100, -1.0 FROM generate_series(0, 9999)
                 UNION ALL SELECT 100, 5, 1.0",
            )
            .await,
        );
        assert!(
            e.to_string()
                .contains("cell (100, 5) is outside array 'm' of shape 100x100"),
            "{e}"
        );
        assert_eq!(
            tessera_planner::TesseraError::find(&e).map(tessera_planner::TesseraError::kind),
            Some(tessera_planner::ErrorKind::DataException),
            "{e:?}"
        );
        let e = error(
            db.sql("INSERT INTO m VALUES (1, 1, NULL)").await,
        );
        assert!(e.to_string().to_lowercase().contains("null"), "{e}");
        let e = error(
            db.sql("CREATE TABLE s (i BIGINT, j BIGINT, v DOUBLE); INSERT INTO s VALUES (1, NULL, 2.0); INSERT INTO m SELECT * FROM s")
                .await,
        );
        assert!(
            e.to_string().contains("INSERT INTO m: column j is NULL in row 1"),
            "{e}"
        );
        assert!(matches!(e.find_root(), DataFusionError::Plan(_)), "{e:?}");
        let after = db.store().array("m").unwrap().current().clone();
        assert_eq!(after.version, before.version);
        assert_eq!(
            query(&db, "SELECT count(*), sum(v) FROM m").await,
            [format!("5000|{}.0", (1..=5000).sum::<i64>())]
        );
        // CREATE MATRIX ... AS whose query fails while running leaves no matrix.
        let e = error(
            db.sql("CREATE MATRIX bad AS SELECT i, j, v FROM m UNION ALL SELECT 1, 2, CAST('x' AS DOUBLE)")
                .await,
        );
        assert!(!e.to_string().is_empty());
        assert!(db.store().array("bad").is_err());
        // An error in the middle of a script stops it; what ran before stays.
        let e = error(
            db.sql("CREATE MATRIX first (2, 2); CREATE MATRIX first (2, 2); CREATE MATRIX third (2, 2)")
                .await,
        );
        assert!(e.to_string().contains("array 'first' already exists"), "{e}");
        assert!(db.store().array("first").is_ok());
        assert!(db.store().array("third").is_err());
    });
}

#[test]
fn the_memory_budget_fails_cleanly() {
    runtime().block_on(async {
        let db = Database::in_memory_with(DatabaseOptions {
            memory_limit: Some(1 << 20),
            ..DatabaseOptions::default()
        })
        .unwrap();
        assert_eq!(db.memory_limit(), 1 << 20);
        db.sql("CREATE MATRIX big (1000, 1000)").await.unwrap();
        // 1e6 cells of 16 bytes each cannot be grouped in 1 MiB.
        let e = error(
            db.sql("INSERT INTO big SELECT value / 1000, value % 1000, 1.0 FROM generate_series(0, 999999)")
                .await,
        );
        assert!(
            matches!(e.find_root(), DataFusionError::ResourcesExhausted(_)),
            "{e:?}"
        );
        assert_eq!(db.store().array("big").unwrap().current().version, 0);
        // A hash join whose build side does not fit fails the same way, instead of
        // taking the memory.
        let e = error(
            db.sql("SELECT count(*) FROM generate_series(0, 999999) a JOIN generate_series(0, 999999) b ON a.value = b.value")
                .await,
        );
        assert!(
            matches!(e.find_root(), DataFusionError::ResourcesExhausted(_)),
            "{e:?}"
        );
        // The database still works.
        assert_eq!(query(&db, "SELECT count(*) FROM big").await, ["0"]);
    });
}

#[test]
fn sessions_share_data_but_not_settings() {
    runtime().block_on(async {
        let db = Database::in_memory().unwrap();
        let one = db.session().unwrap();
        let two = db.session().unwrap();
        one.sql("SET datafusion.execution.batch_size = 7; CREATE TABLE shared AS SELECT 1 AS x")
            .await
            .unwrap();
        let show = |b: Vec<RecordBatch>| rows(&b);
        assert_eq!(
            show(
                two.sql("SELECT x FROM shared").await.unwrap()
            ),
            ["1"]
        );
        let setting = "SELECT value FROM information_schema.df_settings WHERE name = 'datafusion.execution.batch_size'";
        assert_eq!(show(one.sql(setting).await.unwrap()), ["7"]);
        assert_eq!(show(two.sql(setting).await.unwrap()), ["8192"]);
        // Streaming: the statements before the last have run when the stream is returned.
        let mut stream = two
            .sql_stream("CREATE MATRIX s (2, 2); INSERT INTO s VALUES (1, 1, 3.0); SELECT v FROM s")
            .await
            .unwrap();
        use futures::StreamExt;
        let batch = stream.next().await.unwrap().unwrap();
        assert_eq!(batch.column(0).as_primitive::<Float64Type>().value(0), 3.0);
        assert!(stream.next().await.is_none());
        assert!(db.sql("").await.unwrap().is_empty());
    });
}

// ---- the command line ----------------------------------------------------------------

fn cli(args: &[&str], stdin: &str) -> (u8, String, String) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = tessera_server::cli::run(&args, &mut stdin.as_bytes(), &mut out, &mut err);
    (
        code,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

#[test]
fn the_cli_prints_tables_csv_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db").display().to_string();
    let (code, out, err) = cli(
        &[
            "sql",
            "--data-dir",
            &db,
            "CREATE MATRIX m (2, 3); INSERT INTO m VALUES (0, 1, 2.5), (1, 2, -1.0); SELECT * FROM m ORDER BY i",
        ],
        "",
    );
    assert_eq!((code, err.as_str()), (0, ""));
    assert_eq!(
        out,
        "+---+---+------+\n\
         | i | j | v    |\n\
         +---+---+------+\n\
         | 0 | 1 | 2.5  |\n\
         | 1 | 2 | -1.0 |\n\
         +---+---+------+\n"
    );
    let (code, out, _) = cli(
        &[
            "sql",
            "-d",
            &db,
            "--format",
            "csv",
            "SELECT * FROM m ORDER BY i",
        ],
        "",
    );
    assert_eq!((code, out.as_str()), (0, "i,j,v\n0,1,2.5\n1,2,-1.0\n"));
    let (code, out, _) = cli(
        &[
            "sql",
            "-d",
            &db,
            "--format=json",
            "SELECT i, v FROM m ORDER BY i",
        ],
        "",
    );
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        json,
        serde_json::json!([{"i": 0, "v": 2.5}, {"i": 1, "v": -1.0}])
    );
    // A script from standard input; an empty result still prints its header.
    let (code, out, _) = cli(
        &["sql", "-d", &db, "-f", "-"],
        "-- a comment\nSELECT i FROM m WHERE v > 100;\n",
    );
    assert_eq!((code, out.as_str()), (0, "+---+\n| i |\n+---+\n+---+\n"));
    // From a file.
    let script = dir.path().join("s.sql");
    std::fs::write(&script, "SELECT count(*) AS n FROM m").unwrap();
    let (code, out, _) = cli(
        &[
            "sql",
            "-d",
            &db,
            "--format",
            "csv",
            "-f",
            &script.display().to_string(),
        ],
        "",
    );
    assert_eq!((code, out.as_str()), (0, "n\n2\n"));
}

#[test]
fn the_cli_reports_errors_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db").display().to_string();
    let (code, out, err) = cli(&["sql", "-d", &db, "SELECT * FROM nowhere"], "");
    assert_eq!(code, 1);
    assert_eq!(out, "");
    assert!(
        err.starts_with("error: ") && err.contains("nowhere") && err.contains("not found"),
        "{err}"
    );
    let (code, _, err) = cli(&["sql", "-d", &db, "CREATE MATRIX m (0, 3)"], "");
    assert_eq!(code, 1);
    assert!(err.contains("at least 1"), "{err}");
    let (code, _, err) = cli(&["sql", "--bogus"], "");
    assert_eq!(code, 2);
    assert!(err.contains("unexpected argument '--bogus'"), "{err}");
    let (code, _, err) = cli(&["sql", "-d", &db, "-f", "/no/such/file.sql"], "");
    assert_eq!(code, 1);
    assert!(err.contains("/no/such/file.sql"), "{err}");
    let (code, out, _) = cli(&["--help"], "");
    assert_eq!(code, 0);
    assert!(out.contains("tessera sql") && out.contains("--data-dir"));
}

/// The real binary: exit codes and output through a process.
#[test]
fn the_tessera_binary_runs_sql() {
    let binary = tessera_binary();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let out = Command::new(&binary)
        .args(["sql", "--data-dir"])
        .arg(&db)
        .args([
            "--format",
            "csv",
            "CREATE TABLE t AS SELECT 40 + 2 AS answer; SELECT * FROM t",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "answer\n42\n");
    let out = Command::new(&binary)
        .args(["sql", "-d"])
        .arg(&db)
        .arg("SELECT * FROM nope")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error: ") && err.contains("nope"), "{err}");
}

/// The `tessera` command as the test build made it (`tests/tessera_under_test.rs`).
pub(crate) fn tessera_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tessera-under-test"))
}

#[test]
fn a_failed_insert_into_a_stored_table_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    runtime().block_on(async {
        let db = Database::open(&path).unwrap();
        db.sql("CREATE TABLE t AS SELECT CAST(value AS BIGINT) AS x FROM generate_series(1, 3)")
            .await
            .unwrap();
        let files = || {
            let mut n = 0;
            for table in std::fs::read_dir(path.join("tables")).unwrap() {
                let table = table.unwrap().path();
                if table.is_dir() {
                    n += std::fs::read_dir(table).unwrap().count();
                }
            }
            n
        };
        assert_eq!(files(), 1);
        // Fails while rows are being written: 100 / 0 at the last row.
        let e = error(
            db.sql("INSERT INTO t SELECT 100 / (3 - value) FROM generate_series(0, 3)")
                .await,
        );
        assert!(e.to_string().contains("Divide by zero"), "{e}");
        assert_eq!(files(), 1, "no new or temporary file");
        assert_eq!(query(&db, "SELECT sum(x) FROM t").await, ["6"]);
    });
}

// ---- The plan cache: repeated queries reuse their physical plan, never a stale one ----

/// Runs `sql` in `session` and returns its rows as text.
async fn session_rows(session: &tessera_server::Session, sql: &str) -> Vec<String> {
    rows(&session.sql(sql).await.unwrap())
}

#[test]
fn plan_cache_sees_writes_from_other_sessions() {
    runtime().block_on(async {
        let db = Database::in_memory().unwrap();
        let (reader, writer) = (db.session().unwrap(), db.session().unwrap());
        writer
            .sql(
                "CREATE TABLE t (a INT); INSERT INTO t VALUES (1);
                 CREATE MATRIX m (2, 2); INSERT INTO m VALUES (0, 0, 1.5)",
            )
            .await
            .unwrap();
        let table = "SELECT sum(a) FROM t";
        let matrix = "SELECT sum(v) FROM m";
        for _ in 0..3 {
            assert_eq!(session_rows(&reader, table).await, ["1"]);
            assert_eq!(session_rows(&reader, matrix).await, ["1.5"]);
        }
        writer.sql("INSERT INTO t VALUES (2)").await.unwrap();
        writer
            .sql("INSERT INTO m VALUES (1, 1, 2.0)")
            .await
            .unwrap();
        assert_eq!(session_rows(&reader, table).await, ["3"]);
        assert_eq!(session_rows(&reader, matrix).await, ["3.5"]);
        // The embedded database's own session writes too.
        db.sql("INSERT INTO t VALUES (4)").await.unwrap();
        assert_eq!(session_rows(&reader, table).await, ["7"]);
        // A statement that fails still ends its write.
        assert!(db.sql("INSERT INTO t VALUES ('x')").await.is_err());
        db.sql("INSERT INTO t VALUES (8)").await.unwrap();
        assert_eq!(session_rows(&reader, table).await, ["15"]);
    });
}

#[test]
fn builtin_calls_run_again_from_the_plan_cache() {
    runtime().block_on(async {
        let db = Database::in_memory().unwrap();
        let session = db.session().unwrap();
        session
            .sql(
                "CREATE MATRIX x (20000, 10) BLOCK (1000, 10);
                 INSERT INTO x SELECT * FROM rand(20000, 10, 1.0, 1, 0, 1);
                 CREATE MATRIX y (20000, 1) BLOCK (1000, 1);
                 INSERT INTO y SELECT * FROM rand(20000, 1, 1.0, 2, 0, 1);
                 CREATE TABLE sweep (lambda DOUBLE PRECISION);
                 INSERT INTO sweep VALUES (0.1), (1);
                 CREATE TABLE parts (lo BIGINT, hi BIGINT);
                 INSERT INTO parts VALUES (0, 5000), (5000, 12000), (12000, 20000)",
            )
            .await
            .unwrap();
        // The calls' jobs (block dataflows with exchanges) run afresh every time; a
        // call planned per row (its subqueries read the row) is never cached.
        for (query, count) in [
            ("SELECT count(*) FROM lm(x, y, lambda => 0.1)", "10"),
            (
                "SELECT count(*) FROM sweep s, LATERAL lm(x, y, lambda => s.lambda) m",
                "20",
            ),
            ("SELECT count(*) FROM cor(x)", "100"),
            (
                "SELECT count(*) FROM parts g, LATERAL lm(\
                 (SELECT i - g.lo AS i, j, v FROM x WHERE i >= g.lo AND i < g.hi), \
                 (SELECT i - g.lo AS i, j, v FROM y WHERE i >= g.lo AND i < g.hi)) m",
                "30",
            ),
        ] {
            let first = session_rows(&session, query).await;
            assert_eq!(first, vec![count.to_string()], "{query}");
            for _ in 0..3 {
                assert_eq!(session_rows(&session, query).await, first, "{query}");
            }
        }
    });
}

#[test]
fn blocks_read_again_come_from_the_store_cache_charged_to_the_pool() {
    runtime().block_on(async {
        let db = Database::in_memory_with(DatabaseOptions {
            memory_limit: Some(256 << 20),
            ..DatabaseOptions::default()
        })
        .unwrap();
        db.sql(
            "CREATE MATRIX x (4000, 50) BLOCK (500, 50);
             INSERT INTO x SELECT * FROM rand(4000, 50, 1.0, 3, 0, 1)",
        )
        .await
        .unwrap();
        let stats = || db.store().block_cache_stats().unwrap();
        // A quarter of the memory limit.
        assert_eq!(stats().capacity, 64 << 20);
        let query = "SELECT sum(v) FROM matmul(t(x), x)";
        let first = rows(&db.sql(query).await.unwrap());
        let after_first = stats();
        assert_eq!(after_first.blocks, 8, "{after_first:?}");
        assert_eq!(after_first.bytes, 8 * 500 * 50 * 8);
        let again = rows(&db.sql(query).await.unwrap());
        assert_eq!(again, first);
        let after_again = stats();
        assert_eq!(after_again.misses, after_first.misses, "{after_again:?}");
        assert!(after_again.hits >= after_first.hits + 8, "{after_again:?}");
        // A new version reads its new blocks, never the old version's cached ones.
        let top = "SELECT sum(v) FROM matmul(slice(x, 0, 500, 0, 50), eye(50))";
        let number = |r: Vec<String>| r[0].parse::<f64>().unwrap();
        let before = number(rows(&db.sql(top).await.unwrap()));
        db.sql("UPDATE x SET v = v * 2 WHERE i < 500")
            .await
            .unwrap();
        let after = number(rows(&db.sql(top).await.unwrap()));
        assert!(
            (after - 2.0 * before).abs() < 1e-9 * before.abs(),
            "{before} then {after}"
        );
        // What the cache holds is what the pool has granted it; dropping the array
        // gives its blocks back.
        db.sql("DROP MATRIX x").await.unwrap();
        assert_eq!(stats().bytes, 0);
        // Off when asked.
        let off = Database::in_memory_with(DatabaseOptions {
            block_cache: Some(0),
            ..DatabaseOptions::default()
        })
        .unwrap();
        assert!(off.store().block_cache_stats().is_none());
    });
}

/// The block cache holds only memory no query wants: a query's request that does not
/// fit beside the cache makes the cache give back what is missing (least recently
/// used blocks first), and no more.
#[test]
fn the_block_cache_gives_memory_back_to_a_query_that_needs_it() {
    runtime().block_on(async {
        let limit = 64usize << 20;
        let db = Database::in_memory_with(DatabaseOptions {
            memory_limit: Some(limit),
            block_cache: Some(48 << 20),
            ..DatabaseOptions::default()
        })
        .unwrap();
        // 12 dense blocks of 500 x 500 doubles: 24 MiB once read.
        db.sql(
            "CREATE MATRIX x (6000, 500) BLOCK (500, 500);
             INSERT INTO x SELECT * FROM rand(6000, 500, 1.0, 3, 0, 1)",
        )
        .await
        .unwrap();
        let query = "SELECT sum(v) FROM matmul(t(x), x)";
        let first = rows(&db.sql(query).await.unwrap());
        let held = db.block_cache_bytes();
        let block = 500 * 500 * 8;
        assert_eq!(held, 12 * block);
        // A reservation 8 MiB larger than what is free beside the cache.
        let session = db.session().unwrap();
        let pool = Arc::clone(&session.context().runtime_env().memory_pool);
        let free = limit - pool.reserved();
        let query_memory = MemoryConsumer::new("a query").register(&pool);
        query_memory.try_grow(free + (8 << 20)).unwrap();
        let after = db.block_cache_bytes();
        assert!(
            after <= held - (8 << 20) && after + (8 << 20) + block > held,
            "the cache held {held} bytes, then {after}"
        );
        // More than the whole pool is refused (53200 for a statement), cache or not.
        let more = MemoryConsumer::new("another query").register(&pool);
        assert!(more.try_grow(limit).is_err());
        drop((query_memory, more));
        // The answer is the same, from blocks read again.
        assert_eq!(rows(&db.sql(query).await.unwrap()), first);
    });
}

#[test]
fn plan_cache_sees_drop_and_create() {
    runtime().block_on(async {
        let db = Database::in_memory().unwrap();
        let (reader, writer) = (db.session().unwrap(), db.session().unwrap());
        writer.sql("CREATE TABLE t AS SELECT 1 AS x").await.unwrap();
        let query = "SELECT x FROM t";
        assert_eq!(session_rows(&reader, query).await, ["1"]);
        assert_eq!(session_rows(&reader, query).await, ["1"]);
        writer.sql("DROP TABLE t").await.unwrap();
        let e = reader.sql(query).await.unwrap_err();
        assert!(e.to_string().contains("t"), "{e}");
        writer
            .sql("CREATE TABLE t AS SELECT 'two' AS x")
            .await
            .unwrap();
        assert_eq!(session_rows(&reader, query).await, ["two"]);
        // An array of the same name after the table is gone.
        writer
            .sql("DROP TABLE t; CREATE MATRIX t (1, 1); INSERT INTO t VALUES (0, 0, 9.0)")
            .await
            .unwrap();
        assert_eq!(session_rows(&reader, "SELECT v FROM t").await, ["9.0"]);
        writer
            .sql("CREATE MATRIX u AS SELECT i, j, v * 2 AS v FROM t")
            .await
            .unwrap();
        assert_eq!(session_rows(&reader, "SELECT v FROM u").await, ["18.0"]);
        writer
            .sql("DROP MATRIX u; CREATE MATRIX u AS SELECT i, j, v * 3 AS v FROM t")
            .await
            .unwrap();
        assert_eq!(session_rows(&reader, "SELECT v FROM u").await, ["27.0"]);
    });
}

#[test]
fn plan_cache_keys_on_the_sessions_settings() {
    runtime().block_on(async {
        use datafusion::arrow::datatypes::DataType;
        let db = Database::in_memory().unwrap();
        let (a, b) = (db.session().unwrap(), db.session().unwrap());
        let query = "SELECT 0.5 AS x";
        let type_of = |batches: Vec<RecordBatch>| batches[0].schema().field(0).data_type().clone();
        for _ in 0..2 {
            assert_eq!(type_of(a.sql(query).await.unwrap()), DataType::Float64);
        }
        a.sql("SET datafusion.sql_parser.parse_float_as_decimal = true")
            .await
            .unwrap();
        assert!(matches!(
            type_of(a.sql(query).await.unwrap()),
            DataType::Decimal128(..)
        ));
        // The other session keeps the default, and its own cached plan.
        assert_eq!(type_of(b.sql(query).await.unwrap()), DataType::Float64);
        assert_eq!(type_of(b.sql(query).await.unwrap()), DataType::Float64);
        assert!(matches!(
            type_of(a.sql(query).await.unwrap()),
            DataType::Decimal128(..)
        ));
        a.sql("RESET datafusion.sql_parser.parse_float_as_decimal")
            .await
            .unwrap();
        assert_eq!(type_of(a.sql(query).await.unwrap()), DataType::Float64);
    });
}

#[test]
fn plan_cache_leaves_volatile_and_stable_functions_alone() {
    runtime().block_on(async {
        let db = Database::in_memory().unwrap();
        db.sql("CREATE TABLE t (a INT); INSERT INTO t VALUES (1)")
            .await
            .unwrap();
        let mut randoms = std::collections::HashSet::new();
        for _ in 0..5 {
            randoms.extend(query(&db, "SELECT random() FROM t").await);
        }
        assert_eq!(randoms.len(), 5, "{randoms:?}");
        let mut times = std::collections::HashSet::new();
        for _ in 0..3 {
            times.extend(query(&db, "SELECT now()").await);
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(times.len(), 3, "{times:?}");
        // A view is planned when scanned, so it is never cached either.
        db.sql("CREATE VIEW v AS SELECT now() AS t").await.unwrap();
        let first = query(&db, "SELECT t FROM v").await;
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert_ne!(query(&db, "SELECT t FROM v").await, first);
    });
}

/// `FLOAT` is double precision and `FLOAT(p)` is real for p <= 24, as in PostgreSQL,
/// in CREATE TABLE (kept across reopening), CAST and `::`.
#[test]
fn float_columns_have_postgresql_widths() {
    use datafusion::arrow::datatypes::{DataType, Float32Type};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let third = 1.0f64 / 3.0;
    let check = |batches: &[RecordBatch]| {
        let schema = batches[0].schema();
        let types: Vec<&DataType> = schema.fields().iter().map(|f| f.data_type()).collect();
        use datafusion::arrow::datatypes::DataType::{Float32 as F32, Float64 as F64};
        assert_eq!(types, [&F64, &F64, &F32, &F32, &F64, &F32, &F64]);
        for (col, ty) in types.iter().enumerate() {
            let column = batches[0].column(col);
            if **ty == F64 {
                assert_eq!(
                    column.as_primitive::<Float64Type>().value(0),
                    third,
                    "{col}"
                );
            } else {
                let v = column.as_primitive::<Float32Type>().value(0);
                assert_eq!(v, third as f32, "{col}");
            }
        }
    };
    runtime().block_on(async {
        let db = Database::open(&path).unwrap();
        db.sql(
            "CREATE TABLE t (a FLOAT, b FLOAT(53), c FLOAT(10), d REAL, e DOUBLE PRECISION,
                             f FLOAT(24), g FLOAT(25));
             INSERT INTO t VALUES (1.0/3, 1.0/3, 1.0/3, 1.0/3, 1.0/3, 1.0/3, 1.0/3)",
        )
        .await
        .unwrap();
        check(&db.sql("SELECT * FROM t").await.unwrap());
        check(
            &db.sql(
                "SELECT CAST(1.0/3 AS FLOAT) AS a, (1.0/3)::FLOAT(53) AS b, CAST(1.0/3 AS FLOAT(1)) AS c,
                        (1.0/3)::REAL AS d, CAST(1.0/3 AS DOUBLE PRECISION) AS e, (1.0/3)::FLOAT4 AS f,
                        (1.0/3)::FLOAT8 AS g",
            )
            .await
            .unwrap(),
        );
        let e = error(db.sql("SELECT CAST(1 AS FLOAT(54))").await);
        let kind = tessera_planner::TesseraError::find(&e).map(|t| t.kind());
        assert_eq!(
            kind,
            Some(tessera_planner::ErrorKind::InvalidParameterValue),
            "{e}"
        );
    });
    runtime().block_on(async {
        let db = Database::open(&path).unwrap();
        check(&db.sql("SELECT * FROM t").await.unwrap());
    });
}
