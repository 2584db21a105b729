//! The array store never loses data it cannot account for: a missing or damaged catalog
//! stops the open and touches nothing, a damaged manifest spoils only its own array,
//! `CREATE MATRIX ... AS` killed at any moment leaves the whole matrix or none, and
//! `VERIFY` finds damage that reads by offset would not.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::{Float64Type, Int64Type};
use tessera_server::errors::sqlstate;
use tessera_server::{Database, Error};
use tessera_storage::{StorageError, Store};

use crate::sql_database::runtime;

/// Every file under `dir` with its bytes, sorted.
fn tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// Every row as text, columns joined by `|` (NULL for a null).
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

fn failure(result: Result<Vec<RecordBatch>, Error>) -> Error {
    match result {
        Ok(b) => panic!("expected an error, got {:?}", rows(&b)),
        Err(e) => e,
    }
}

/// A data directory with matrices `m` (2x2, cells 1 and 2) and `n` (3x3, cell 5).
fn two_matrices() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    runtime().block_on(async {
        let db = Database::open(&dir).unwrap();
        db.sql(
            "CREATE MATRIX m (2, 2); INSERT INTO m VALUES (0, 0, 1), (1, 1, 2);
             CREATE MATRIX n (3, 3); INSERT INTO n VALUES (2, 1, 5)",
        )
        .await
        .unwrap();
    });
    (tmp, dir)
}

fn open_error(dir: &Path) -> Error {
    match Database::open(dir) {
        Ok(_) => panic!("the database opened"),
        Err(e) => e,
    }
}

// ---------------------------------------------------------------- the catalog

#[test]
fn a_store_without_its_catalog_refuses_to_open_and_deletes_nothing() {
    let (_tmp, dir) = two_matrices();
    let store = dir.join("store");
    std::fs::rename(store.join("catalog.json"), dir.join("cat.bak")).unwrap();
    let before = tree(&store);
    assert!(
        before
            .iter()
            .any(|(p, _)| p.to_string_lossy().contains("shard-"))
    );

    let e = open_error(&dir);
    assert_eq!(sqlstate(&e), "XX001", "{e}");
    let catalog = store.join("catalog.json").display().to_string();
    assert!(e.to_string().contains(&catalog), "{e}");
    assert!(e.to_string().contains("missing"), "{e}");
    assert_eq!(tree(&store), before, "the refused open changed the store");
    // The storage layer says the same, as its own error type.
    match Store::open_dir(&store) {
        Err(StorageError::CorruptCatalog { file, .. }) => assert_eq!(file, catalog),
        other => panic!("expected CorruptCatalog, got {other:?}"),
    }
    assert_eq!(tree(&store), before);

    // Put back, everything is there.
    std::fs::rename(dir.join("cat.bak"), store.join("catalog.json")).unwrap();
    runtime().block_on(async {
        let db = Database::open(&dir).unwrap();
        assert_eq!(query(&db, "SELECT sum(v) FROM m").await, ["3.0"]);
        assert_eq!(query(&db, "SELECT sum(v) FROM n").await, ["5.0"]);
    });
}

#[test]
fn an_undecodable_catalog_refuses_to_open_and_deletes_nothing() {
    let (_tmp, dir) = two_matrices();
    let store = dir.join("store");
    let path = store.join("catalog.json");
    let good = std::fs::read(&path).unwrap();
    for damage in ["flip", "truncate", "garbage"] {
        let bad = match damage {
            "flip" => {
                let mut b = good.clone();
                let k = b.len() / 2;
                b[k] ^= 0x04;
                b
            }
            "truncate" => good[..good.len() / 3].to_vec(),
            _ => b"{\"format\": 1}".to_vec(),
        };
        std::fs::write(&path, &bad).unwrap();
        let before = tree(&store);
        let e = open_error(&dir);
        assert_eq!(sqlstate(&e), "XX001", "{damage}: {e}");
        assert!(
            e.to_string().contains(&path.display().to_string()),
            "{damage}: {e}"
        );
        assert_eq!(
            tree(&store),
            before,
            "{damage}: the refused open changed the store"
        );
    }
    std::fs::write(&path, &good).unwrap();
    runtime().block_on(async {
        let db = Database::open(&dir).unwrap();
        assert_eq!(query(&db, "SELECT sum(v) FROM m").await, ["3.0"]);
    });
}

// ---------------------------------------------------------------- a damaged manifest

#[test]
fn a_damaged_manifest_spoils_only_its_array() {
    let (_tmp, dir) = two_matrices();
    let store = dir.join("store");
    let id = runtime().block_on(async {
        let db = Database::open(&dir).unwrap();
        db.store().array("m").unwrap().id
    });
    let manifest_rel = format!("arrays/{id}/v1/manifest.json");
    let manifest = store.join(&manifest_rel);
    let mut bytes = std::fs::read(&manifest).unwrap();
    let k = bytes.len() - 20;
    bytes[k] ^= 0x01; // one flipped bit in the JSON
    std::fs::write(&manifest, &bytes).unwrap();
    let array_files = |t: &[(PathBuf, Vec<u8>)]| -> Vec<(PathBuf, Vec<u8>)> {
        let prefix = store.join(format!("arrays/{id}"));
        t.iter()
            .filter(|(p, _)| p.starts_with(&prefix))
            .cloned()
            .collect()
    };
    let before = array_files(&tree(&store));
    assert!(before.len() >= 2);

    runtime().block_on(async {
        let db = Database::open(&dir).unwrap();
        // Everything else is served.
        assert_eq!(query(&db, "SELECT i, j, v FROM n").await, ["2|1|5.0"]);
        db.sql("INSERT INTO n VALUES (0, 0, 1)").await.unwrap();
        assert_eq!(query(&db, "SELECT sum(v) FROM n").await, ["6.0"]);
        // Every use of the damaged array is XX001 naming its manifest.
        for sql in [
            "SELECT count(*) FROM m",
            "SELECT * FROM m",
            "INSERT INTO m VALUES (0, 1, 3)",
            "SELECT * FROM \"m@1\"",
        ] {
            let e = failure(db.sql(sql).await);
            assert_eq!(sqlstate(&e), "XX001", "{sql}: {e}");
            assert!(e.to_string().contains(&manifest_rel), "{sql}: {e}");
        }
        let batches = db.sql("SHOW ARRAYS").await.unwrap();
        let schema = batches[0].schema();
        let state = schema.index_of("state").unwrap();
        let mut states: Vec<(String, String)> = Vec::new();
        for b in &batches {
            for r in 0..b.num_rows() {
                states.push((
                    b.column(0).as_string::<i32>().value(r).to_string(),
                    b.column(state).as_string::<i32>().value(r).to_string(),
                ));
            }
        }
        assert_eq!(states.len(), 2, "{states:?}");
        assert_eq!(states[0].0, "m");
        assert!(states[0].1.starts_with("damaged: "), "{states:?}");
        assert!(states[0].1.contains(&manifest_rel), "{states:?}");
        assert_eq!(states[1], ("n".to_string(), "ok".to_string()));
        // VERIFY reports the manifest, and nothing of n.
        let problems = query(&db, "VERIFY").await;
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with(&format!("m|1|{manifest_rel}|NULL|")),
            "{problems:?}"
        );
    });
    // The damaged array's files were all kept, through two opens.
    assert_eq!(array_files(&tree(&store)), before);
}

// ---------------------------------------------------------------- VERIFY

/// A store with matrix `m` (40x40 in 10x10 blocks, every cell set) and `s` (sparse).
fn verify_fixture() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    runtime().block_on(async {
        let db = Database::open(&dir).unwrap();
        db.sql(
            "CREATE MATRIX m (40, 40) BLOCK (10, 10) WITH (shards = 1) AS
                 SELECT a.value AS i, b.value AS j, CAST(a.value * 40 + b.value + 1 AS DOUBLE) AS v
                 FROM generate_series(0, 39) a, generate_series(0, 39) b;
             CREATE MATRIX s (5, 5); INSERT INTO s VALUES (1, 2, 3.5)",
        )
        .await
        .unwrap();
        assert!(query(&db, "VERIFY").await.is_empty());
        assert!(query(&db, "VERIFY ARRAY m").await.is_empty());
    });
    (tmp, dir)
}

fn shard_of_m(dir: &Path) -> PathBuf {
    let shards: Vec<PathBuf> = tree(&dir.join("store"))
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| p.to_string_lossy().ends_with("shard-0.arrow"))
        .collect();
    // m was created first: the lowest array id.
    shards.into_iter().min().unwrap()
}

#[test]
fn verify_finds_damaged_blocks_footers_and_magic() {
    let (_tmp, dir) = verify_fixture();
    let shard = shard_of_m(&dir);
    let good = std::fs::read(&shard).unwrap();
    let footer_len = i32::from_le_bytes(good[good.len() - 10..good.len() - 6].try_into().unwrap());
    let footer_start = good.len() - 10 - footer_len as usize;
    type Damage = Box<dyn Fn(&mut Vec<u8>)>;
    let cases: Vec<(&str, Damage, &str)> = vec![
        (
            "a byte in a block",
            Box::new(|b: &mut Vec<u8>| {
                let at = b.len() / 2;
                b[at] ^= 0x10
            }),
            "checksum mismatch",
        ),
        (
            "the leading magic",
            Box::new(|b: &mut Vec<u8>| b[0] = b'X'),
            "does not start with the Arrow IPC magic",
        ),
        (
            "the trailing magic",
            Box::new(|b: &mut Vec<u8>| {
                let n = b.len();
                b[n - 1] = b'0';
            }),
            "does not end with the Arrow IPC magic",
        ),
        (
            "the footer",
            Box::new(move |b: &mut Vec<u8>| {
                let n = b.len();
                b[footer_start..n - 10].fill(0xAB);
            }),
            "footer",
        ),
    ];
    for (what, damage, expected) in cases {
        let mut bad = good.clone();
        damage(&mut bad);
        std::fs::write(&shard, &bad).unwrap();
        runtime().block_on(async {
            let db = Database::open(&dir).unwrap();
            let problems = query(&db, "VERIFY").await;
            assert!(!problems.is_empty(), "{what}: VERIFY found nothing");
            let file = shard
                .strip_prefix(dir.join("store"))
                .unwrap()
                .display()
                .to_string();
            assert!(
                problems
                    .iter()
                    .all(|p| p.starts_with("m|") && p.contains(&file)),
                "{what}: {problems:?}"
            );
            assert!(
                problems.iter().any(|p| p.contains(expected)),
                "{what}: {problems:?}"
            );
            assert_eq!(query(&db, "VERIFY ARRAY m").await, problems, "{what}");
            assert!(query(&db, "VERIFY ARRAY s").await.is_empty(), "{what}");
            // Reading m fails too, as damaged data, naming the file.
            let e = failure(db.sql("SELECT sum(v) FROM m").await);
            assert_eq!(sqlstate(&e), "XX001", "{what}: {e}");
            assert!(e.to_string().contains(&file), "{what}: {e}");
            assert_eq!(query(&db, "SELECT sum(v) FROM s").await, ["3.5"]);
        });
    }
    std::fs::write(&shard, &good).unwrap();
    runtime().block_on(async {
        let db = Database::open(&dir).unwrap();
        assert!(query(&db, "VERIFY").await.is_empty());
        // 1 + 2 + ... + 1600.
        assert_eq!(query(&db, "SELECT sum(v) FROM m").await, ["1280800.0"]);
        let e = failure(db.sql("VERIFY ARRAY nope").await);
        assert_eq!(sqlstate(&e), "42P01", "{e}");
    });
}

#[test]
fn verify_reports_a_damaged_catalog_copy_and_missing_files() {
    let (_tmp, dir) = verify_fixture();
    let shard = shard_of_m(&dir);
    runtime().block_on(async {
        let db = Database::open(&dir).unwrap();
        std::fs::remove_file(&shard).unwrap();
        let problems = query(&db, "VERIFY").await;
        assert!(
            problems.iter().any(|p| p.contains("the file is missing")),
            "{problems:?}"
        );
        let catalog = dir.join("store/catalog.json");
        let mut bytes = std::fs::read(&catalog).unwrap();
        let k = bytes.len() - 5;
        bytes[k] ^= 0x02;
        std::fs::write(&catalog, &bytes).unwrap();
        let problems = query(&db, "VERIFY").await;
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("NULL|NULL|catalog.json|NULL|checksum mismatch")),
            "{problems:?}"
        );
    });
}

// ---------------------------------------------------------------- CREATE MATRIX AS, killed

const CRASH_DIR: &str = "TESSERA_CREATE_AS_CRASH_DIR";
const ROWS: i64 = 400;
const INNER: i64 = 300;
const COLS: i64 = 400;

fn a_cell(i: i64, k: i64) -> f64 {
    ((i * 7 + k * 3) % 11 - 5) as f64
}

fn b_cell(k: i64, j: i64) -> f64 {
    ((k * 5 + j * 2) % 13 - 6) as f64
}

const CREATE_C: &str = "CREATE MATRIX c BLOCK (50, 50) AS SELECT * FROM matmul(a, b)";

/// Run by [`create_matrix_as_survives_kill_9`] in a child process: creates and drops
/// `c` over and over until it is killed.
#[test]
#[ignore = "run as a child process by create_matrix_as_survives_kill_9"]
fn create_matrix_as_child() {
    let Some(dir) = std::env::var_os(CRASH_DIR) else {
        return;
    };
    runtime().block_on(async {
        let db = Database::open(PathBuf::from(dir)).unwrap();
        db.sql("DROP MATRIX IF EXISTS c").await.unwrap();
        println!("READY");
        loop {
            db.sql(CREATE_C).await.unwrap();
            println!("CREATED");
            db.sql("DROP MATRIX c").await.unwrap();
            println!("DROPPED");
        }
    });
}

/// `c`'s cells, or `None` if there is no `c`.
async fn read_c(db: &Database) -> Option<Vec<f64>> {
    db.store().array("c").ok()?;
    let batches = db.sql("SELECT i, j, v FROM c").await.unwrap();
    let mut cells = vec![0.0; (ROWS * COLS) as usize];
    for b in &batches {
        let (i, j, v) = (
            b.column(0).as_primitive::<Int64Type>(),
            b.column(1).as_primitive::<Int64Type>(),
            b.column(2).as_primitive::<Float64Type>(),
        );
        for r in 0..b.num_rows() {
            cells[(i.value(r) * COLS + j.value(r)) as usize] = v.value(r);
        }
    }
    Some(cells)
}

#[test]
fn create_matrix_as_survives_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    let mut expected = vec![0.0; (ROWS * COLS) as usize];
    for i in 0..ROWS {
        for j in 0..COLS {
            expected[(i * COLS + j) as usize] =
                (0..INNER).map(|k| a_cell(i, k) * b_cell(k, j)).sum();
        }
    }
    runtime().block_on(async {
        let db = Database::open(&dir).unwrap();
        db.sql(&format!(
            "CREATE MATRIX a ({ROWS}, {INNER}) BLOCK (50, 50) AS
                 SELECT x.value AS i, y.value AS j, CAST((x.value * 7 + y.value * 3) % 11 - 5 AS DOUBLE) AS v
                 FROM generate_series(0, {}) x, generate_series(0, {}) y;
             CREATE MATRIX b ({INNER}, {COLS}) BLOCK (50, 50) AS
                 SELECT x.value AS i, y.value AS j, CAST((x.value * 5 + y.value * 2) % 13 - 6 AS DOUBLE) AS v
                 FROM generate_series(0, {}) x, generate_series(0, {}) y",
            ROWS - 1,
            INNER - 1,
            INNER - 1,
            COLS - 1
        ))
        .await
        .unwrap();
    });
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let (mut absent, mut present, mut created_acks) = (0, 0, 0);
    for round in 0..20 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "reliability_storage::create_matrix_as_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CRASH_DIR, &dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        loop {
            match lines.next() {
                // libtest prints "test <name> ... " before the first line of output.
                Some(Ok(l)) if l.ends_with("READY") => break,
                Some(Ok(_)) => {}
                _ => panic!("round {round}: the child exited before it was ready"),
            }
        }
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        // Somewhere inside one of the first creates or drops.
        std::thread::sleep(Duration::from_micros(rng % 1_500_000));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        created_acks += lines
            .map_while(Result::ok)
            .filter(|l| l.ends_with("CREATED"))
            .count();

        runtime().block_on(async {
            let db = Database::open(&dir).unwrap();
            match read_c(&db).await {
                None => absent += 1,
                Some(cells) => {
                    present += 1;
                    assert_eq!(db.store().array("c").unwrap().current().version, 1);
                    assert!(
                        cells == expected,
                        "round {round}: c exists with other content"
                    );
                }
            }
            // Only live arrays have files: a create that never committed left nothing.
            let live: Vec<String> = db
                .store()
                .arrays()
                .iter()
                .map(|a| format!("arrays/{}/", a.id))
                .collect();
            let files = db.store().backend().list("arrays/").unwrap();
            assert!(
                files.iter().all(|f| live.iter().any(|l| f.starts_with(l))),
                "round {round}: files of no array: {files:?}"
            );
            // The retry (or the next create after a drop) succeeds.
            db.sql("DROP MATRIX IF EXISTS c").await.unwrap();
            db.sql(CREATE_C).await.unwrap();
            assert!(
                read_c(&db).await.unwrap() == expected,
                "round {round}: retry"
            );
            db.sql("DROP MATRIX c").await.unwrap();
        });
    }
    eprintln!(
        "20 kills during CREATE MATRIX ... AS / DROP: c absent after {absent}, whole after {present}; \
         {created_acks} creates acknowledged before the kills"
    );
}
