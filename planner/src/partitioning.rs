//! How stored shards look to DataFusion.
//!
//! A hash-partitioned array stores block `(bi, bj)` in shard
//! `hash(bi, bj) mod shards` with exactly the hash DataFusion's `RepartitionExec`
//! computes ([`tessera_storage::datafusion_hash`]). Reading shard `k` as partition `k`
//! therefore *is* `Partitioning::Hash([bi, bj], shards)`, and a join or aggregation on
//! the block key of two co-partitioned arrays needs no repartition.
//!
//! That holds only for blocks placed by the hash this build's DataFusion computes.
//! Every version records the function that placed it ([`tessera_storage::Placement`]);
//! [`live_placement`] is the one this build's DataFusion agrees with, found once by
//! running DataFusion's own hash partitioner over a probe set of block keys. Only
//! versions whose recorded placement is live ([`hash_placement_is_live`]) are taken to
//! be hash-partitioned; the others (written by a build that hashed differently, or
//! placed by another function) are read as unknown partitioning, which DataFusion
//! repartitions, so answers stay exact. `ALTER ARRAY name REPARTITION` rewrites them.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{Array, ArrayRef, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::Result;
use datafusion::common::hash_utils::create_hashes;
use datafusion::physical_expr::expressions::col;
use datafusion::physical_plan::Partitioning;
use datafusion::physical_plan::metrics::Time;
use datafusion::physical_plan::repartition::{BatchPartitioner, REPARTITION_RANDOM_STATE};
use tessera_storage::{ArrayInfo, BlockKey, Partitioning as Stored, Placement};

/// Names of the block-key columns of a block stream, by dimension (`bi`, `bj`, then
/// `b2`, `b3`, ... for higher dimensions).
pub const BLOCK_KEY_COLUMNS: [&str; 2] = ["bi", "bj"];

fn key_column(n: usize) -> String {
    BLOCK_KEY_COLUMNS
        .get(n)
        .map_or_else(|| format!("b{n}"), |s| s.to_string())
}

/// The DataFusion partitioning of a scan that reads `array`'s shard `k` as output
/// partition `k`, over a block stream with `schema` (which must hold the key columns).
///
/// Hash-partitioned arrays whose placement is live ([`hash_placement_is_live`]) declare
/// `Hash([bi, bj, ...], shards)`, so DataFusion's optimizer sees that the data is
/// already distributed on the block key. Row-block and grid layouts are contiguous
/// ranges that DataFusion's hash cannot describe, and hash-partitioned arrays placed by
/// another function say nothing DataFusion could use; they declare
/// `UnknownPartitioning(shards)` (the planner uses row-block and grid layouts through
/// the catalog).
pub fn stored_partitioning(array: &ArrayInfo, schema: &Schema) -> Result<Partitioning> {
    let shards = array.partitioning.shard_count() as usize;
    Ok(match array.partitioning {
        Stored::Hash { .. } if hash_placement_is_live(array) => {
            let ndims = array.schema.dimensions().len();
            let exprs = (0..ndims)
                .map(|n| col(&key_column(n), schema))
                .collect::<Result<Vec<_>>>()?;
            Partitioning::Hash(exprs, shards)
        }
        Stored::Hash { .. } | Stored::RowBlock { .. } | Stored::Grid { .. } => {
            Partitioning::UnknownPartitioning(shards)
        }
    })
}

/// True when `array` (as of the version it describes) is hash-partitioned and its
/// blocks were placed by the [`live_placement`]: only then is shard `k` the partition
/// `k` of DataFusion's hash repartitioning on the block key, and only then may it take
/// the co-partitioned join or the linear-algebra strategies that rely on the hash.
pub fn hash_placement_is_live(array: &ArrayInfo) -> bool {
    matches!(array.partitioning, Stored::Hash { .. })
        && live_placement().is_some()
        && array.placement.as_deref() == live_placement()
}

/// The placement this build's DataFusion hash repartitioning agrees with:
/// [`tessera_storage::HASH_PLACEMENT`] when DataFusion's `BatchPartitioner` (the code
/// `RepartitionExec` runs, with `REPARTITION_RANDOM_STATE`) puts every probe key in the
/// shard storage computes, and `None`, which matches no recorded placement, when it
/// does not (a DataFusion or foldhash that hashes differently). Computed once.
pub fn live_placement() -> Option<&'static str> {
    static LIVE: LazyLock<Option<String>> = LazyLock::new(|| {
        let current = Placement::current();
        match placement_mismatch(&current) {
            None => Some(current.id().to_string()),
            Some(why) => {
                tracing::error!(
                    placement = current.id(),
                    mismatch = %why,
                    "DataFusion's hash repartitioning does not place blocks as storage does: \
                     no hash-partitioned array is read as hash-partitioned"
                );
                None
            }
        }
    });
    LIVE.as_deref()
}

/// Shard counts the probe reduces hashes by: powers of two take DataFusion's mask
/// path, others its reciprocal division; 4096 is the most an array may have.
const PROBE_SHARDS: [usize; 9] = [1, 2, 3, 4, 5, 7, 16, 61, 4096];

/// Block-key coordinates the probe combines: small (negative too), at the edges of
/// `i64`, and large values whose bytes differ in every position.
fn probe_coordinates() -> Vec<i64> {
    let mut values: Vec<i64> = (-6..=9).collect();
    values.extend([
        i64::MIN,
        i64::MIN + 1,
        i64::MAX,
        i64::MAX - 1,
        1 << 31,
        -(1 << 31),
        1 << 32,
        (1 << 40) + 7,
        -(1 << 53),
        0x0123_4567_89ab_cdef,
        -0x0123_4567_89ab_cdef,
        1_000_000_007,
    ]);
    values
}

/// The probe's block keys of `dims` coordinates (a few hundred each).
fn probe_keys(dims: usize) -> Vec<Vec<i64>> {
    let values = probe_coordinates();
    let n = values.len();
    match dims {
        1 => values.iter().map(|&v| vec![v]).collect(),
        2 => (0..n * n)
            .map(|k| vec![values[k / n], values[k % n]])
            .collect(),
        // Every first coordinate against a spread of the other two.
        _ => (0..n * n)
            .map(|k| {
                let mut key = vec![values[k % n], values[(k / n) % n], values[(k * 7 + 3) % n]];
                key.resize(dims, values[k % 5]);
                key
            })
            .collect(),
    }
}

/// Why `placement` does not place blocks as DataFusion's hash repartitioning does, or
/// `None` when it agrees on every probe key: the 64-bit hash DataFusion's
/// `create_hashes` gives with `REPARTITION_RANDOM_STATE`, and the partition DataFusion's
/// `BatchPartitioner` sends the key to for each of [`PROBE_SHARDS`], over keys of one,
/// two and three coordinates.
pub fn placement_mismatch(placement: &Placement) -> Option<String> {
    (1..=3).find_map(|dims| match probe(placement, dims) {
        Ok(None) => None,
        Ok(Some(why)) => Some(why),
        Err(e) => Some(format!("the probe failed: {e}")),
    })
}

fn probe(placement: &Placement, dims: usize) -> Result<Option<String>> {
    let keys = probe_keys(dims);
    let fields: Vec<Field> = (0..dims)
        .map(|d| Field::new(key_column(d), DataType::Int64, false))
        .collect();
    let schema = Arc::new(Schema::new(fields));
    let columns: Vec<ArrayRef> = (0..dims)
        .map(|d| Arc::new(Int64Array::from_iter_values(keys.iter().map(|k| k[d]))) as ArrayRef)
        .collect();

    let mut hashes = vec![0u64; keys.len()];
    create_hashes(
        &columns,
        REPARTITION_RANDOM_STATE.random_state(),
        &mut hashes,
    )?;
    for (key, hash) in keys.iter().zip(&hashes) {
        let ours = placement.hash_of(&BlockKey(key.clone()));
        if ours != *hash {
            return Ok(Some(format!(
                "block {key:?}: DataFusion hashes it to {hash:#018x}, placement '{}' to {ours:#018x}",
                placement.id()
            )));
        }
    }

    let batch = RecordBatch::try_new(schema.clone(), columns)?;
    for shards in PROBE_SHARDS {
        let exprs = (0..dims)
            .map(|d| col(&key_column(d), &schema))
            .collect::<Result<Vec<_>>>()?;
        let mut partitioner = BatchPartitioner::new_hash_partitioner(exprs, shards, Time::new())?;
        let mut mismatch = None;
        let mut routed = 0;
        partitioner.partition(batch.clone(), |partition, part| {
            let coordinates: Vec<&Int64Array> = part
                .columns()
                .iter()
                .filter_map(|c| c.as_any().downcast_ref::<Int64Array>())
                .collect();
            if coordinates.len() != dims {
                mismatch = Some(format!(
                    "DataFusion's partitioner changed the key columns: {part:?}"
                ));
            }
            routed += part.num_rows();
            for row in 0..part.num_rows() {
                let key = BlockKey(coordinates.iter().map(|c| c.value(row)).collect());
                let shard = placement.shard_of(&key, shards as u32) as usize;
                if shard != partition && mismatch.is_none() {
                    mismatch = Some(format!(
                        "block {key} with {shards} shards: DataFusion sends it to partition \
                         {partition}, placement '{}' to shard {shard}",
                        placement.id()
                    ));
                }
            }
            Ok(())
        })?;
        if mismatch.is_none() && routed != keys.len() {
            mismatch = Some(format!(
                "DataFusion's partitioner routed {routed} of {} keys with {shards} shards",
                keys.len()
            ));
        }
        if mismatch.is_some() {
            return Ok(mismatch);
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    use datafusion::datasource::memory::MemorySourceConfig;
    use datafusion::physical_plan::collect_partitioned;
    use datafusion::physical_plan::repartition::RepartitionExec;
    use datafusion::prelude::SessionContext;
    use tessera_storage::{ArraySchema, Attribute, Dimension, Store};

    /// Runs DataFusion's own `RepartitionExec` over every block key of a grid and checks
    /// that each row lands in the partition storage puts that block's shard in.
    async fn check(dims: usize, grid: i64, shards: u32) {
        let names: Vec<String> = (0..dims).map(key_column).collect();
        let schema = Arc::new(Schema::new(
            names
                .iter()
                .map(|n| Field::new(n, DataType::Int64, false))
                .collect::<Vec<_>>(),
        ));
        let count = grid.pow(dims as u32);
        let mut columns = vec![Vec::with_capacity(count as usize); dims];
        for n in 0..count {
            let mut rest = n;
            for col in columns.iter_mut().rev() {
                col.push(rest % grid);
                rest /= grid;
            }
        }
        let batch = RecordBatch::try_new(
            schema.clone(),
            columns
                .into_iter()
                .map(|c| Arc::new(Int64Array::from(c)) as _)
                .collect(),
        )
        .unwrap();

        let store = Store::in_memory();
        let array_schema = ArraySchema::new(
            (0..dims)
                .map(|n| Dimension::new(format!("d{n}"), 0, grid * 10 - 1, 10))
                .collect(),
            vec![Attribute::double("v")],
        )
        .unwrap();
        let info = store
            .create_array("a", array_schema, Some(Stored::Hash { shards }), None)
            .unwrap();
        let partitioning = stored_partitioning(&info, &schema).unwrap();
        assert!(
            matches!(&partitioning, Partitioning::Hash(e, n) if e.len() == dims && *n == shards as usize)
        );

        let source = MemorySourceConfig::try_new_exec(&[vec![batch]], schema, None).unwrap();
        let repartition = Arc::new(RepartitionExec::try_new(source, partitioning).unwrap());
        let ctx = SessionContext::new();
        let parts = collect_partitioned(repartition, ctx.task_ctx())
            .await
            .unwrap();
        assert_eq!(parts.len(), shards as usize);
        let block_grid = info.schema.block_grid();
        let mut seen = 0;
        for (partition, batches) in parts.iter().enumerate() {
            for b in batches {
                let cols: Vec<&Int64Array> = (0..dims)
                    .map(|n| b.column(n).as_any().downcast_ref::<Int64Array>().unwrap())
                    .collect();
                for row in 0..b.num_rows() {
                    let key = BlockKey(cols.iter().map(|c| c.value(row)).collect());
                    let shard = info.partitioning.shard_of(&key, &block_grid);
                    assert_eq!(
                        shard as usize, partition,
                        "block {key} with {shards} shards"
                    );
                    seen += 1;
                }
            }
        }
        assert_eq!(seen, count);
        assert!(
            parts
                .iter()
                .all(|p| p.iter().map(|b| b.num_rows()).sum::<usize>() > 0)
        );
    }

    /// The live check agrees with storage's `datafusion_hash` on this build, and tells
    /// a placement by another function from it.
    #[test]
    fn the_live_placement_is_storage_hash_on_this_build() {
        assert_eq!(placement_mismatch(&Placement::current()), None);
        assert_eq!(live_placement(), Some(tessera_storage::HASH_PLACEMENT));
        for dims in 1..=3 {
            let keys = probe_keys(dims);
            assert!(keys.len() >= 28, "{dims} coordinates: {} keys", keys.len());
            for key in keys {
                assert_eq!(key.len(), dims);
                assert_eq!(
                    Placement::current().hash_of(&BlockKey(key.clone())),
                    tessera_storage::datafusion_hash(&key)
                );
            }
        }
        assert!(probe_keys(2).len() >= 400);
        assert!(probe_coordinates().iter().any(|&v| v < 0));

        // Another hash, even one that agrees on most keys, is caught.
        let rotated = Placement::new("test-rotated", |k| {
            tessera_storage::datafusion_hash(k).rotate_left(1)
        })
        .unwrap();
        assert!(placement_mismatch(&rotated).is_some());
        let mostly = Placement::new("test-mostly", |k| {
            let h = tessera_storage::datafusion_hash(k);
            if k.first() == Some(&i64::MIN) {
                h ^ 1
            } else {
                h
            }
        })
        .unwrap();
        let why = placement_mismatch(&mostly).unwrap();
        assert!(why.contains("test-mostly"), "{why}");
    }

    /// Only a hash-partitioned array placed by the live placement declares DataFusion's
    /// hash partitioning.
    #[test]
    fn only_live_placements_declare_hash_partitioning() {
        let store = Store::in_memory();
        let schema = ArraySchema::matrix(4, 4, 2, 2).unwrap();
        let hash = Stored::Hash { shards: 2 };
        let info = store
            .create_array("live", schema.clone(), Some(hash), None)
            .unwrap();
        let keys = Arc::new(Schema::new(vec![
            Field::new("bi", DataType::Int64, false),
            Field::new("bj", DataType::Int64, false),
        ]));
        assert!(hash_placement_is_live(&info));
        assert!(matches!(
            stored_partitioning(&info, &keys).unwrap(),
            Partitioning::Hash(_, 2)
        ));
        let mut other = info.clone();
        other.placement = Some("test-other".into());
        assert!(!hash_placement_is_live(&other));
        assert!(matches!(
            stored_partitioning(&other, &keys).unwrap(),
            Partitioning::UnknownPartitioning(2)
        ));
        let rows = store
            .create_array("rows", schema, Some(Stored::RowBlock { shards: 2 }), None)
            .unwrap();
        assert!(!hash_placement_is_live(&rows));
    }

    #[tokio::test]
    async fn stored_hash_shards_match_datafusion_repartitioning() {
        // Powers of two take DataFusion's mask path, others its reciprocal division.
        for shards in [1, 2, 3, 4, 7, 16] {
            check(2, 40, shards).await;
        }
        check(1, 500, 5).await;
        check(3, 12, 6).await;
    }
}
