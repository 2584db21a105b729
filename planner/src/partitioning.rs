//! How stored shards look to DataFusion.
//!
//! A hash-partitioned array stores block `(bi, bj)` in shard
//! `hash(bi, bj) mod shards` with exactly the hash DataFusion's `RepartitionExec`
//! computes ([`tessera_storage::datafusion_hash`]). Reading shard `k` as partition `k`
//! therefore *is* `Partitioning::Hash([bi, bj], shards)`, and a join or aggregation on
//! the block key of two co-partitioned arrays needs no repartition.

use datafusion::arrow::datatypes::Schema;
use datafusion::common::Result;
use datafusion::physical_expr::expressions::col;
use datafusion::physical_plan::Partitioning;
use tessera_storage::{ArrayInfo, Partitioning as Stored};

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
/// Hash-partitioned arrays declare `Hash([bi, bj, ...], shards)`, so DataFusion's
/// optimizer sees that the data is already distributed on the block key. Row-block and
/// grid layouts are contiguous ranges that DataFusion's hash cannot describe; they
/// declare `UnknownPartitioning(shards)` and the planner uses them through the catalog.
pub fn stored_partitioning(array: &ArrayInfo, schema: &Schema) -> Result<Partitioning> {
    let shards = array.partitioning.shard_count() as usize;
    Ok(match array.partitioning {
        Stored::Hash { .. } => {
            let ndims = array.schema.dimensions().len();
            let exprs = (0..ndims)
                .map(|n| col(&key_column(n), schema))
                .collect::<Result<Vec<_>>>()?;
            Partitioning::Hash(exprs, shards)
        }
        Stored::RowBlock { .. } | Stored::Grid { .. } => Partitioning::UnknownPartitioning(shards),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::sync::Arc;

    use datafusion::arrow::array::{Array, Int64Array, RecordBatch};
    use datafusion::arrow::datatypes::{DataType, Field};
    use datafusion::datasource::memory::MemorySourceConfig;
    use datafusion::physical_plan::collect_partitioned;
    use datafusion::physical_plan::repartition::RepartitionExec;
    use datafusion::prelude::SessionContext;
    use tessera_storage::{ArraySchema, Attribute, BlockKey, Dimension, Store};

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
