//! Linear algebra as a partitioned dataflow of blocks.
//!
//! A *block stream* is record batches with one row per block: key columns (`bi`, `bj`
//! for a matrix's own blocks) in front of the block columns of
//! [`tessera_storage::block_fields`]. Blocks travel as Arrow data whose values are
//! shared, never copied, by DataFusion's `take`, `concat` and hash repartition, so the
//! strategies below are plans of DataFusion's own operators (hash repartitions, hash
//! joins, coalesces) with Tessera's kernels in block operators:
//!
//! - [`BlockScanExec`] emits shard `k` of a stored matrix as partition `k`, and declares
//!   `Hash([bi, bj], n)` when the stored placement is this build's hash placement;
//!   A [`BlockWindow`] makes it read only the blocks a `slice` touches;
//! - [`BlockGenerateExec`] makes the blocks of `eye` and `rand` in the partitions the
//!   hash on `(bi, bj)` puts them in;
//! - [`BlockMapExec`] maps each block alone: a transpose, the fan-out of rmm, a block's
//!   row, column or total sums (or non-zero count, smallest or largest cell), a slice,
//!   `diag`, the pieces of a reblock, a vector repeated into a matrix's blocks;
//! - [`BlockZipJoinExec`] joins partition `p` of two inputs placed alike on `k`;
//! - [`BlockElementwiseExec`] runs a fused elementwise program over matrices of one
//!   shape and blocking: one input whose zeros stay zeros is mapped block by block where
//!   it is; otherwise every input is required hash-partitioned on `(i, j)` and
//!   partition `p` meets partition `p` of the others (no exchange for inputs stored
//!   alike);
//! - [`BlockProductExec`] multiplies the `A(i, k)` and `B(k, j)` blocks of each joined
//!   row and keeps one partial sum per output block `(i, j)` (with exact sums, each
//!   product is a partial of its own);
//! - [`FusedPartialExec`] makes one partial `t(X) X` or `t(X) (X v)` per partition (with
//!   exact sums, per block row);
//! - [`BlockSumExec`] sums partials by `(i, j)`, requiring its input hash-partitioned on
//!   `(i, j)` (or, after tsmm, mmchain and a local product, in one partition), so
//!   DataFusion's own distribution rule puts the exchange below it; it adds the
//!   partials of a block in the fixed order of their [`ORD`] column, so a sum has the
//!   same bits however the exchanges interleaved ([`Fold::Extreme`] takes the smallest
//!   or largest instead, for `min` and `max`);
//! - [`BlockAssembleExec`] builds the blocks of another blocking from the pieces a
//!   [`BlockMap::Pieces`] cut (a reblock, or `rbind` / `cbind` of operands that do not
//!   meet on whole blocks), requiring the pieces hash-partitioned on `(i, j)`;
//! - [`BlockGatherExec`] gathers the operands of `solve`, `inv` and `cholesky` into one
//!   partition and runs faer there;
//! - [`BlockCellsExec`] turns the blocks at the top into `(i, j, v)` rows as they come;
//! - [`BlockWriteExec`] stores them instead, for `CREATE MATRIX ... AS`: each partition
//!   writes the blocks it computed into part files of the new version, where it runs.
//!
//! [`matmul_plan`] and [`fused_plan`] build the plan shape of each strategy:
//!
//! ```text
//! repartition (cpmm)           broadcast (mapmm)            co-partitioned (zipmm)
//! BlockSumExec                 BlockSumExec                 BlockSumExec
//!   Repartition hash(bi, bj)     Repartition hash(bi, bj)     Repartition hash(bi, bj)
//!     BlockProductExec             BlockProductExec             BlockProductExec
//!       HashJoin Partitioned k       HashJoin CollectLeft k       BlockZipJoinExec k
//!         Repartition hash(k)          small side (build)           A, placed on k
//!           scan A                     big side (streams)           B, placed alike
//!         Repartition hash(k)
//!           scan B
//!
//! replication (rmm)                    local (mm)               tsmm / mmchain
//! BlockSumExec (no exchange)           BlockSumExec, 1 part     BlockSumExec, 1 part
//!   BlockProductExec                     BlockProductExec         Coalesce
//!     HashJoin Partitioned (i, j),         Coalesce                 FusedPartialExec
//!             filter A.k = B.k               HashJoin CollectLeft     scan X (gathered
//!       Repartition hash(i, j)                 Coalesce, scan A; B      by bi only when
//!         BlockMapExec fan-out A                                        its partitions
//!       Repartition hash(i, j)                                          lack whole rows)
//!         BlockMapExec fan-out B                                      [Coalesce, scan v]
//! ```
//!
//! zipmm is planned only when the stored placement guarantees it (two matrices stored
//! by row alike, the left transposed); a forced strategy that cannot apply is refused
//! when the statement is planned, never relabelled.
//!
//! The exchanges are planned by DataFusion (`EnforceDistribution` from the operators'
//! declared requirements), not placed by hand, and [`MeterExchanges`] puts an
//! [`ExchangeMeterExec`] above each one that carries blocks, so EXPLAIN ANALYZE shows
//! the blocks and bytes that really went through it.

mod cells;
mod elementwise;
mod fused;
mod gather;
mod generate;
mod map;
mod meter;
mod plan;
mod product;
mod reblock;
mod scan;
mod sum;
mod write;
mod zip;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, Float64Array, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::{DataFusionError, Result};
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::{Stream, StreamExt};
use tessera_storage::{BLOCK_FIELD_COUNT, Block, BlockColumns, BlockColumnsBuilder, block_fields};

pub use cells::{BlockCellsExec, Planned};
pub use elementwise::BlockElementwiseExec;
pub use fused::FusedPartialExec;
pub use gather::{BlockGatherExec, Gathered};
pub use generate::{BlockGenerateExec, Generator};
pub use map::{BlockMap, BlockMapExec, Total};
pub use meter::{ExchangeMeterExec, MeterExchanges};
pub use plan::{FlowStrategy, centred_tsmm_plan, fused_plan, matmul_plan};
pub use product::{BlockProductExec, OutputKeys};
pub use reblock::BlockAssembleExec;
pub use scan::{BlockScanExec, BlockWindow};
pub use sum::{BlockSumExec, Fold};
pub use write::{BlockWriteExec, written_parts, written_parts_schema};
pub use zip::BlockZipJoinExec;

use crate::error::storage_error;
use crate::la::ops::Acc;

/// Block row key column.
pub const BI: &str = "bi";
/// Block column key column.
pub const BJ: &str = "bj";

/// How many columns a block stream of a matrix has: `bi`, `bj` and the block.
pub const BLOCK_STREAM_WIDTH: usize = 2 + BLOCK_FIELD_COUNT;

/// Blocks per batch a block operator emits.
const BLOCKS_PER_BATCH: usize = 64;

/// The schema of a matrix's block stream: `bi`, `bj` (Int64, as the stored placement
/// hashes them) and the block columns.
pub fn block_stream_schema() -> SchemaRef {
    let mut fields = vec![
        Field::new(BI, DataType::Int64, false),
        Field::new(BJ, DataType::Int64, false),
    ];
    fields.extend(block_fields());
    Arc::new(Schema::new(fields))
}

/// True if `schema` is a block stream (a matrix's blocks with their keys).
pub fn is_block_stream(schema: &Schema) -> bool {
    schema.fields().len() >= BLOCK_STREAM_WIDTH
        && schema
            .fields()
            .iter()
            .any(|f| f.name() == tessera_storage::BLOCK_VALUES)
}

/// Where the (first) block stream of `schema` starts: the column of its `bi` key, with
/// any columns in front of it (such as a fan-out's output key).
pub fn block_stream_at(schema: &Schema) -> Option<usize> {
    let values = schema
        .fields()
        .iter()
        .position(|f| f.name() == tessera_storage::BLOCK_VALUES)?;
    // bi, bj, then rows, cols and nnz before the values.
    values.checked_sub(5)
}

/// The order column of a partial block stream: where a partial stands among the
/// partials of its output block. [`BlockSumExec`] adds the partials of a block in this
/// order, whatever order they arrive in, so a sum is the same to the bit in every run
/// of a plan (and in a retry on other workers): a block product's partial carries the
/// first `k` it sums, a per-partition partial its partition, a row or column sum the
/// block column or row it came from.
pub const ORD: &str = "ord";

/// The schema of a partial block stream: a block stream with [`ORD`] after the block.
pub fn partial_stream_schema() -> SchemaRef {
    let mut fields: Vec<Field> = block_stream_schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new(ORD, DataType::Int64, false));
    Arc::new(Schema::new(fields))
}

/// Collects blocks into the batches of a block stream (or, made by
/// [`BlockBatches::partials`], of a partial block stream).
pub(crate) struct BlockBatches {
    schema: SchemaRef,
    bi: Vec<i64>,
    bj: Vec<i64>,
    /// The order of each partial, for a partial block stream.
    ord: Option<Vec<i64>>,
    blocks: BlockColumnsBuilder,
    done: Vec<RecordBatch>,
}

impl BlockBatches {
    pub(crate) fn new() -> Self {
        Self {
            schema: block_stream_schema(),
            bi: Vec::new(),
            bj: Vec::new(),
            ord: None,
            blocks: BlockColumnsBuilder::default(),
            done: Vec::new(),
        }
    }

    /// Batches of partials, each pushed with [`BlockBatches::push_partial`].
    pub(crate) fn partials() -> Self {
        Self {
            schema: partial_stream_schema(),
            ord: Some(Vec::new()),
            ..Self::new()
        }
    }

    /// Adds block `(bi, bj)`.
    pub(crate) fn push(&mut self, bi: u64, bj: u64, block: &Block) -> Result<()> {
        self.bi.push(bi as i64);
        self.bj.push(bj as i64);
        self.blocks.append(block).map_err(storage_error)?;
        if self.bi.len() >= BLOCKS_PER_BATCH {
            self.flush()?;
        }
        Ok(())
    }

    /// Adds partial `ord` of block `(bi, bj)`.
    pub(crate) fn push_partial(&mut self, bi: u64, bj: u64, ord: u64, block: &Block) -> Result<()> {
        match &mut self.ord {
            Some(o) => o.push(ord as i64),
            None => {
                return Err(DataFusionError::Internal(
                    "a partial pushed to a block stream without an order column".into(),
                ));
            }
        }
        self.push(bi, bj, block)
    }

    fn flush(&mut self) -> Result<()> {
        if self.bi.is_empty() {
            return Ok(());
        }
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(std::mem::take(&mut self.bi))),
            Arc::new(Int64Array::from(std::mem::take(&mut self.bj))),
        ];
        columns.extend(self.blocks.finish());
        if let Some(ord) = &mut self.ord {
            columns.push(Arc::new(Int64Array::from(std::mem::take(ord))));
        }
        self.done
            .push(RecordBatch::try_new(self.schema.clone(), columns)?);
        Ok(())
    }

    /// Every batch, the last one partly filled; none for no blocks.
    pub(crate) fn finish(mut self) -> Result<Vec<RecordBatch>> {
        self.flush()?;
        Ok(self.done)
    }
}

/// The sums in `sums` as partial block-stream batches in key order, each of order
/// `ord`; all-zero blocks are left out.
pub(crate) fn partial_batches(
    mut sums: HashMap<(u64, u64), Option<Acc>>,
    ord: u64,
) -> Result<Vec<RecordBatch>> {
    let mut keys: Vec<(u64, u64)> = sums.keys().copied().collect();
    keys.sort_unstable();
    let mut out = BlockBatches::partials();
    for key in keys {
        let Some(Some(acc)) = sums.remove(&key) else {
            continue;
        };
        let block = acc.into_block();
        if block.nnz() > 0 {
            out.push_partial(key.0, key.1, ord, &block)?;
        }
    }
    out.finish()
}

/// The partials of a partial block-stream batch: key, order and row of each.
pub(crate) fn partial_rows(batch: &RecordBatch) -> Result<(BlockRows<'_>, &Int64Array)> {
    let rows = BlockRows::new(batch, 0)?;
    let ord = batch
        .column_by_name(ORD)
        .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
        .filter(|a| a.null_count() == 0)
        .ok_or_else(|| {
            DataFusionError::Internal(format!(
                "a partial block stream needs an Int64 column {ORD} without nulls"
            ))
        })?;
    Ok((rows, ord))
}

/// A stream of the batches `batches` resolves to (or of its error).
pub(crate) fn batches_stream(
    schema: SchemaRef,
    batches: impl Future<Output = Result<Vec<RecordBatch>>> + Send + 'static,
) -> SendableRecordBatchStream {
    let stream = flatten(futures::stream::once(batches));
    Box::pin(RecordBatchStreamAdapter::new(schema, stream))
}

/// The batches of a stream of batch lists, each list's error in its place.
pub(crate) fn flatten(
    lists: impl Stream<Item = Result<Vec<RecordBatch>>> + Send + 'static,
) -> impl Stream<Item = Result<RecordBatch>> + Send + 'static {
    lists.flat_map(|r| {
        let items: Vec<Result<RecordBatch>> = match r {
            Ok(batches) => batches.into_iter().map(Ok).collect(),
            Err(e) => vec![Err(e)],
        };
        futures::stream::iter(items)
    })
}

/// Collects `(i, j, v)` cells into batches of the cells schema, at most `batch_size`
/// rows each (a block's cells are never split, so a batch may hold one block more).
pub(crate) struct CellBatches {
    schema: SchemaRef,
    batch_size: usize,
    i: Vec<i64>,
    j: Vec<i64>,
    v: Vec<f64>,
    done: Vec<RecordBatch>,
}

impl CellBatches {
    pub(crate) fn new(schema: SchemaRef, batch_size: usize) -> Self {
        Self {
            schema,
            batch_size: batch_size.max(1),
            i: Vec::new(),
            j: Vec::new(),
            v: Vec::new(),
            done: Vec::new(),
        }
    }

    /// One cell, zero or not.
    pub(crate) fn push(&mut self, i: i64, j: i64, v: f64) {
        self.i.push(i);
        self.j.push(j);
        self.v.push(v);
    }

    /// The non-zero cells of `block`, whose first cell is at `(r0, c0)`.
    pub(crate) fn push_block(&mut self, (r0, c0): (i64, i64), block: &Block) -> Result<()> {
        block.for_each_nonzero(|r, c, v| self.push(r0 + r as i64, c0 + c as i64, v));
        if self.i.len() >= self.batch_size {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.i.is_empty() {
            return Ok(());
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(std::mem::take(&mut self.i))),
            Arc::new(Int64Array::from(std::mem::take(&mut self.j))),
            Arc::new(Float64Array::from(std::mem::take(&mut self.v))),
        ];
        self.done
            .push(RecordBatch::try_new(self.schema.clone(), columns)?);
        Ok(())
    }

    /// Every batch, the last one partly filled.
    pub(crate) fn finish(mut self) -> Result<Vec<RecordBatch>> {
        self.flush()?;
        Ok(self.done)
    }
}

/// The blocks of a block-stream batch whose key columns are at `at` and `at + 1` and
/// block columns follow them.
pub(crate) struct BlockRows<'a> {
    bi: &'a Int64Array,
    bj: &'a Int64Array,
    blocks: BlockColumns<'a>,
}

impl<'a> BlockRows<'a> {
    pub(crate) fn new(batch: &'a RecordBatch, at: usize) -> Result<Self> {
        let columns = batch.columns();
        if columns.len() < at + BLOCK_STREAM_WIDTH {
            return Err(DataFusionError::Internal(format!(
                "a block stream needs {BLOCK_STREAM_WIDTH} columns from column {at}, the batch has {}",
                columns.len()
            )));
        }
        let key = |c: usize| {
            columns[c]
                .as_any()
                .downcast_ref::<Int64Array>()
                .filter(|a| a.null_count() == 0)
                .ok_or_else(|| {
                    DataFusionError::Internal(format!(
                        "block key column {c} is {}, not Int64 without nulls",
                        columns[c].data_type()
                    ))
                })
        };
        Ok(Self {
            bi: key(at)?,
            bj: key(at + 1)?,
            blocks: BlockColumns::try_new(&columns[at + 2..]).map_err(storage_error)?,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.bi.len()
    }

    pub(crate) fn key(&self, row: usize) -> (u64, u64) {
        (self.bi.value(row) as u64, self.bj.value(row) as u64)
    }

    pub(crate) fn block(&self, row: usize) -> Result<Block> {
        self.blocks.block(row).map_err(storage_error)
    }

    pub(crate) fn bytes(&self, row: usize) -> usize {
        self.blocks.bytes(row)
    }
}

#[cfg(test)]
mod tests;
