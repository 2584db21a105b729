//! Shard placement recorded and checked: an array whose blocks were placed by another
//! function than this build's hash (as a build that hashed differently would have left
//! it) is planned with unknown partitioning and still joins and multiplies exactly;
//! `ALTER ARRAY ... REPARTITION` rewrites it to the live placement, after which it takes
//! the co-partitioned join again; the retired version's files go as after any write.
//!
//! Every answer is checked against a naive computation in Rust over the same cell
//! values (small integers, so every sum is exact whatever order it is added in).

use std::collections::BTreeMap;
use std::path::Path;

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type};
use tessera_server::{Database, DatabaseOptions};
use tessera_storage::{
    Block, BlockKey, DenseBlock, HASH_PLACEMENT, Partitioning, Placement, Store, WriteMode,
};

use crate::sql_database::runtime;

const ROWS: i64 = 40;
const COLS: i64 = 30;
const BLOCK: i64 = 5;
const SHARDS: u32 = 4;

/// Cells of `odd`: small integers, about a quarter of them zero.
fn a_cell(i: i64, j: i64) -> f64 {
    if (i * 7 + j * 3) % 4 == 0 {
        0.0
    } else {
        ((i * 3 + j) % 11 - 5) as f64
    }
}

/// Cells of `norm`.
fn b_cell(i: i64, j: i64) -> f64 {
    if (i + 2 * j) % 3 == 0 {
        0.0
    } else {
        ((i + j * 5) % 7 + 1) as f64
    }
}

/// Another placement function than this build's: shard = block row mod shards.
fn by_block_row(key: &[i64]) -> u64 {
    key.first().copied().unwrap_or(0) as u64
}

/// Writes every block of the `ROWS x COLS` matrix `name` from `cell`, placed by
/// `placement` (this build's when `None`).
fn write_matrix(
    store: &Store,
    name: &str,
    cell: fn(i64, i64) -> f64,
    placement: Option<Placement>,
) {
    let mut w = store.writer(name, WriteMode::Replace).unwrap();
    if let Some(p) = placement {
        w.place_with(p).unwrap();
    }
    for bi in 0..ROWS / BLOCK {
        for bj in 0..COLS / BLOCK {
            let block = DenseBlock::from_fn(BLOCK as usize, BLOCK as usize, |r, c| {
                cell(bi * BLOCK + r as i64, bj * BLOCK + c as i64)
            });
            w.put_block(BlockKey::matrix(bi, bj), Block::Dense(block))
                .unwrap();
        }
    }
    w.commit().unwrap();
}

async fn run(db: &Database, sql: &str) -> Vec<RecordBatch> {
    db.sql(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// The plan EXPLAIN prints, as one text.
async fn explain(db: &Database, sql: &str) -> String {
    let batches = run(db, &format!("EXPLAIN {sql}")).await;
    let mut out = String::new();
    for b in &batches {
        let column = cast(b.column(1), &DataType::Utf8).unwrap();
        let plans = column.as_string::<i32>();
        for r in 0..b.num_rows() {
            out.push_str(plans.value(r));
            out.push('\n');
        }
    }
    out
}

/// `(i, j, v)` rows of a query, in the order returned.
async fn cells(db: &Database, sql: &str) -> Vec<(i64, i64, f64)> {
    let mut out = Vec::new();
    for b in run(db, sql).await {
        let i = cast(b.column(0), &DataType::Int64).unwrap();
        let j = cast(b.column(1), &DataType::Int64).unwrap();
        let v = cast(b.column(2), &DataType::Float64).unwrap();
        let (i, j, v) = (
            i.as_primitive::<Int64Type>(),
            j.as_primitive::<Int64Type>(),
            v.as_primitive::<Float64Type>(),
        );
        for r in 0..b.num_rows() {
            out.push((i.value(r), j.value(r), v.value(r)));
        }
    }
    out
}

/// `(count, sum)` of a query returning one such row.
async fn count_and_sum(db: &Database, sql: &str) -> (i64, f64) {
    let batches = run(db, sql).await;
    let b = &batches[0];
    let count = cast(b.column(0), &DataType::Int64).unwrap();
    let sum = cast(b.column(1), &DataType::Float64).unwrap();
    (
        count.as_primitive::<Int64Type>().value(0),
        sum.as_primitive::<Float64Type>().value(0),
    )
}

/// What the queries below must return, computed cell by cell.
struct Expected {
    join: (i64, f64),
    sum: Vec<(i64, i64, f64)>,
    product: Vec<(i64, i64, f64)>,
}

fn expected() -> Expected {
    let mut join = (0, 0.0);
    let mut sum = Vec::new();
    for i in 0..ROWS {
        for j in 0..COLS {
            let (a, b) = (a_cell(i, j), b_cell(i, j));
            if a != 0.0 && b != 0.0 {
                join.0 += 1;
                join.1 += a * b;
            }
            if a + b != 0.0 {
                sum.push((i, j, a + b));
            }
        }
    }
    // odd (ROWS x COLS) times t(norm) (COLS x ROWS).
    let mut product = BTreeMap::new();
    for i in 0..ROWS {
        for k in 0..ROWS {
            let v: f64 = (0..COLS).map(|j| a_cell(i, j) * b_cell(k, j)).sum();
            if v != 0.0 {
                product.insert((i, k), v);
            }
        }
    }
    Expected {
        join,
        sum,
        product: product.into_iter().map(|((i, j), v)| (i, j, v)).collect(),
    }
}

const JOIN: &str = "SELECT a.i, a.j, a.v * b.v FROM odd a JOIN norm b ON a.i = b.i AND a.j = b.j";
const JOIN_TOTAL: &str =
    "SELECT count(*), sum(a.v * b.v) FROM odd a JOIN norm b ON a.i = b.i AND a.j = b.j";
const SUM: &str = "SELECT i, j, v FROM add(odd, norm) ORDER BY i, j";
const PRODUCT: &str = "SELECT i, j, v FROM matmul(odd, t(norm)) ORDER BY i, j";

/// Every answer, exactly.
async fn check_answers(db: &Database, what: &str) {
    let want = expected();
    assert_eq!(
        count_and_sum(db, JOIN_TOTAL).await,
        want.join,
        "{what}: join"
    );
    let mut joined = cells(db, JOIN).await;
    joined.sort_by_key(|c| (c.0, c.1));
    assert_eq!(joined.len() as i64, want.join.0, "{what}: joined rows");
    for (i, j, v) in joined {
        assert_eq!(
            v,
            a_cell(i, j) * b_cell(i, j),
            "{what}: joined cell ({i}, {j})"
        );
    }
    assert_eq!(cells(db, SUM).await, want.sum, "{what}: add(odd, norm)");
    assert_eq!(
        cells(db, PRODUCT).await,
        want.product,
        "{what}: matmul(odd, t(norm))"
    );
}

/// Files under the version directory `v` of array `id` in the store at `store`.
fn version_files(store: &Path, id: u64, version: u64) -> Vec<String> {
    let dir = store.join(format!("arrays/{id}/v{version}"));
    match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn an_array_placed_by_another_function_is_read_as_unknown_partitioning_until_repartitioned() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    runtime().block_on(async {
        let options = DatabaseOptions {
            target_partitions: Some(SHARDS as usize),
            ..DatabaseOptions::default()
        };
        let db = Database::open_with(&path, options).unwrap();
        // Small inputs would be broadcast; these show the partitioned join.
        run(
            &db,
            &format!(
                "SET datafusion.optimizer.hash_join_single_partition_threshold = 0;
                 SET datafusion.optimizer.hash_join_single_partition_threshold_rows = 0;
                 CREATE MATRIX norm ({ROWS}, {COLS}) BLOCK ({BLOCK}, {BLOCK}) WITH (shards = {SHARDS});
                 CREATE MATRIX odd ({ROWS}, {COLS}) BLOCK ({BLOCK}, {BLOCK}) WITH (shards = {SHARDS}, keep_versions = 2)"
            ),
        )
        .await;
        let store = db.store().clone();
        write_matrix(&store, "norm", b_cell, None);
        let other = Placement::new("test-by-block-row", by_block_row).unwrap();
        write_matrix(&store, "odd", a_cell, Some(other));

        // The test placement really puts blocks elsewhere than this build's hash.
        let odd = store.snapshot("odd", None).unwrap();
        let info = odd.info().clone();
        assert_eq!(info.placement.as_deref(), Some("test-by-block-row"));
        let grid = info.schema.block_grid();
        let hash = Partitioning::Hash { shards: SHARDS };
        let moved = odd
            .blocks()
            .iter()
            .filter(|b| b.shard != hash.shard_of(&b.key, &grid))
            .count();
        assert!(moved > 10, "only {moved} blocks placed differently");
        drop(odd);
        assert_eq!(
            store.array("norm").unwrap().placement.as_deref(),
            Some(HASH_PLACEMENT)
        );

        // Planned with unknown partitioning: DataFusion repartitions both sides.
        let plan = explain(&db, JOIN).await;
        assert!(!plan.contains("CoPartitionedJoinExec"), "{plan}");
        assert!(
            plan.contains("RepartitionExec: partitioning=Hash([i@0, j@1], 4)"),
            "{plan}"
        );
        assert!(
            plan.contains("array=odd@1 shards=4 (hash of block placed by 'test-by-block-row', not this build's hash"),
            "{plan}"
        );
        assert!(plan.contains("array=norm@1 shards=4 (hash of block)"), "{plan}");
        check_answers(&db, "placed by another function").await;

        // Rewritten to the live placement with 3 shards: hash-partitioned again, but
        // not like norm (4 shards), so still no co-partitioned join.
        run(&db, "ALTER ARRAY odd REPARTITION WITH (shards = 3)").await;
        let info = store.array("odd").unwrap();
        assert_eq!(info.current().version, 2);
        assert_eq!(info.placement.as_deref(), Some(HASH_PLACEMENT));
        assert_eq!(info.partitioning, Partitioning::Hash { shards: 3 });
        let plan = explain(&db, JOIN).await;
        assert!(!plan.contains("CoPartitionedJoinExec"), "{plan}");
        assert!(plan.contains("array=odd@2 shards=3 (hash of block)"), "{plan}");
        check_answers(&db, "repartitioned to 3 shards").await;

        // Version 1 is still retained and read as it was stored: 4 shards, placed by
        // the other function, unknown partitioning.
        let old = "SELECT count(*), sum(a.v * b.v) FROM \"odd@1\" a JOIN norm b ON a.i = b.i AND a.j = b.j";
        let plan = explain(&db, old).await;
        assert!(!plan.contains("CoPartitionedJoinExec"), "{plan}");
        assert!(plan.contains("array=odd@1 shards=4 (hash of block placed by"), "{plan}");
        assert_eq!(count_and_sum(&db, old).await, expected().join);
        let id = info.id;
        assert!(!version_files(&path.join("store"), id, 1).is_empty());

        // With norm's 4 shards: the co-partitioned join, the same answers.
        run(&db, "ALTER MATRIX odd REPARTITION WITH (shards = 4)").await;
        let info = store.array("odd").unwrap();
        assert_eq!(info.current().version, 3);
        assert_eq!(info.partitioning, hash);
        let plan = explain(&db, JOIN).await;
        assert!(
            plan.contains("CoPartitionedJoinExec: shard k with shard k of 4"),
            "{plan}"
        );
        assert!(plan.contains("array=odd@3 shards=4 (hash of block)"), "{plan}");
        check_answers(&db, "repartitioned to 4 shards").await;

        // keep_versions = 2: version 1 is retired and its files are gone.
        let versions: Vec<u64> = info.versions.iter().map(|v| v.version).collect();
        assert_eq!(versions, vec![2, 3]);
        assert_eq!(version_files(&path.join("store"), id, 1), Vec::<String>::new());
        assert!(!version_files(&path.join("store"), id, 3).is_empty());

        // Mistakes are the user's, named.
        let error = db.sql("ALTER ARRAY missing REPARTITION").await.unwrap_err();
        assert!(error.to_string().contains("does not exist"), "{error}");
        run(&db, "CREATE TABLE t AS SELECT 1 AS x").await;
        let error = db.sql("ALTER ARRAY t REPARTITION").await.unwrap_err();
        assert!(error.to_string().contains("not an array"), "{error}");
    });

    // After a reopen the recorded placements are read back the same way.
    runtime().block_on(async {
        let db = Database::open(&path).unwrap();
        let info = db.store().array("odd").unwrap();
        assert_eq!(info.placement.as_deref(), Some(HASH_PLACEMENT));
        check_answers(&db, "after a reopen").await;
    });
}
