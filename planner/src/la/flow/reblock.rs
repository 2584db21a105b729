//! Reblocking as a dataflow: a matrix's blocks cut into the pieces that fall in each
//! block of another blocking ([`BlockMap::Pieces`](super::BlockMap::Pieces)), the
//! pieces hash-partitioned on the block they belong to, and each block assembled from
//! its pieces ([`BlockAssembleExec`]).
//!
//! ```text
//! BlockAssembleExec          requires hash(bi, bj): DataFusion plans the exchange
//!   Repartition hash(bi, bj)
//!     BlockMapExec pieces    (bi, bj, piece, r0, c0) for each block of the target
//!       the matrix             blocking that a block overlaps
//! ```
//!
//! A piece may also be moved by a cell offset on its way, which is how `rbind` and
//! `cbind` place a second operand after a first that does not end on a whole block.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result, exec_err};
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::MemoryConsumer;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricBuilder, MetricsSet};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, ExecutionPlanProperties,
    Partitioning, PlanProperties, SendableRecordBatchStream,
};
use futures::TryStreamExt;
use tessera_storage::{Block, BlockFormat, CooBuilder, DenseBlock, Duplicates};

use super::{BI, BJ, BlockBatches, BlockRows, batches_stream, block_stream_schema};
use crate::error::{blocking, storage_error};
use crate::la::FlowGeometry;
use crate::la::matrix::block_bytes;

/// The row of a piece's first cell within its block.
const R0: &str = "r0";
/// The column of a piece's first cell within its block.
const C0: &str = "c0";

/// The schema of a piece stream: a block stream keyed by the block a piece belongs to,
/// then where in that block the piece starts.
pub(super) fn piece_stream_schema() -> SchemaRef {
    let mut fields: Vec<Field> = block_stream_schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new(R0, DataType::Int64, false));
    fields.push(Field::new(C0, DataType::Int64, false));
    Arc::new(Schema::new(fields))
}

/// Where the pieces of one block go along one dimension: the block starts at cell
/// `origin` of the input and is `len` cells long, the input's cells `keep.0..keep.1`
/// are kept, and cell `keep.0` goes to cell `offset` of the output, in blocks of `to`.
/// For each target block the block overlaps: its index, the block's cells it takes
/// (from the block's start), and where they start in the target block.
fn spans(
    origin: u64,
    len: u64,
    keep: (u64, u64),
    offset: u64,
    to: u64,
) -> Vec<(u64, std::ops::Range<usize>, u64)> {
    let mut out = Vec::new();
    let (start, end) = (origin.max(keep.0), origin.saturating_add(len).min(keep.1));
    if start >= end {
        return out;
    }
    let skip = start - origin;
    let dest = start - keep.0 + offset;
    let n = end - start;
    let (first, last) = (dest / to, (dest + n - 1) / to);
    for t in first..=last {
        let s = dest.max(t * to);
        let e = (dest + n).min((t + 1) * to);
        let taken = (skip + s - dest) as usize..(skip + e - dest) as usize;
        out.push((t, taken, s - t * to));
    }
    out
}

/// How a [`pieces_batch`] cuts a block stream: blocked `from`, the cells in `rows` x
/// `cols` (half-open) kept, moved so that cell `(rows.0, cols.0)` lands on `offset`, in
/// blocks of `to`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Cut {
    pub from: (u64, u64),
    pub to: (u64, u64),
    pub rows: (u64, u64),
    pub cols: (u64, u64),
    pub offset: (u64, u64),
}

/// Collects pieces into batches of a piece stream.
struct PieceBatches {
    blocks: BlockBatches,
    r0: Vec<i64>,
    c0: Vec<i64>,
}

impl PieceBatches {
    fn new() -> Self {
        Self {
            blocks: BlockBatches::new(),
            r0: Vec::new(),
            c0: Vec::new(),
        }
    }

    fn push(&mut self, key: (u64, u64), at: (u64, u64), piece: &Block) -> Result<()> {
        self.r0.push(at.0 as i64);
        self.c0.push(at.1 as i64);
        self.blocks.push(key.0, key.1, piece)
    }

    /// The batches, each with the offsets of its pieces (a block batch holds at most
    /// [`BLOCKS_PER_BATCH`](super::BLOCKS_PER_BATCH) pieces, so they split alike).
    fn finish(self) -> Result<Vec<RecordBatch>> {
        let schema = piece_stream_schema();
        let mut at = 0;
        let mut out = Vec::new();
        for batch in self.blocks.finish()? {
            let n = batch.num_rows();
            let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
            columns.push(Arc::new(Int64Array::from(self.r0[at..at + n].to_vec())));
            columns.push(Arc::new(Int64Array::from(self.c0[at..at + n].to_vec())));
            out.push(RecordBatch::try_new(schema.clone(), columns)?);
            at += n;
        }
        Ok(out)
    }
}

/// The pieces of every block of `batch` cut by `cut`, in the blocks of `cut.to`. A
/// block that is one whole target block goes as it is; cells outside the kept window
/// go nowhere.
pub(super) fn pieces_batch(batch: &RecordBatch, cut: Cut) -> Result<Vec<RecordBatch>> {
    let rows = BlockRows::new(batch, 0)?;
    let mut out = PieceBatches::new();
    for row in 0..rows.len() {
        let (bi, bj) = rows.key(row);
        let block = rows.block(row)?;
        let (r, c) = block.shape();
        let origin = (bi * cut.from.0, bj * cut.from.1);
        let down = spans(origin.0, r as u64, cut.rows, cut.offset.0, cut.to.0);
        let across = spans(origin.1, c as u64, cut.cols, cut.offset.1, cut.to.1);
        if down.is_empty() || across.is_empty() {
            continue;
        }
        if let ([(ti, rs, 0)], [(tj, cs, 0)]) = (down.as_slice(), across.as_slice())
            && rs.len() == r
            && cs.len() == c
        {
            out.push((*ti, *tj), (0, 0), &block)?;
            continue;
        }
        match &block {
            Block::Dense(d) => {
                for (ti, rs, r0) in &down {
                    for (tj, cs, c0) in &across {
                        let piece = DenseBlock::from_fn(rs.len(), cs.len(), |i, j| {
                            d.get(rs.start + i, cs.start + j)
                        });
                        let piece = Block::Dense(piece).into_preferred_format();
                        if piece.nnz() > 0 {
                            out.push((*ti, *tj), (*r0, *c0), &piece)?;
                        }
                    }
                }
            }
            Block::Sparse(_) => {
                // One pass over the non-zeros, each to the piece it falls in.
                let mut pieces: HashMap<(usize, usize), CooBuilder> = HashMap::new();
                let find = |spans: &[(u64, std::ops::Range<usize>, u64)], x: usize| {
                    spans.iter().position(|s| s.1.contains(&x))
                };
                let mut failed = None;
                block.for_each_nonzero(|i, j, v| {
                    let (Some(p), Some(q)) = (find(&down, i), find(&across, j)) else {
                        return;
                    };
                    let (rs, cs) = (&down[p].1, &across[q].1);
                    let piece = pieces
                        .entry((p, q))
                        .or_insert_with(|| CooBuilder::new(rs.len(), cs.len(), Duplicates::Last));
                    if let Err(e) = piece.push(i - rs.start, j - cs.start, v) {
                        failed.get_or_insert(e);
                    }
                });
                if let Some(e) = failed {
                    return Err(storage_error(e));
                }
                let mut pieces: Vec<_> = pieces.into_iter().collect();
                pieces.sort_unstable_by_key(|p| p.0);
                for ((p, q), cells) in pieces {
                    let (ti, _, r0) = &down[p];
                    let (tj, _, c0) = &across[q];
                    out.push((*ti, *tj), (*r0, *c0), &cells.build())?;
                }
            }
        }
    }
    out.finish()
}

/// Assembles the blocks of a matrix of `geometry` from a piece stream. It requires its
/// input hash-partitioned on `(bi, bj)`, so all pieces of a block are in one partition
/// (DataFusion plans the exchange), and declares its output so. A block that arrives as
/// one whole piece passes through; the others are built dense or sparse by density.
/// The blocks it holds are charged to the memory pool.
#[derive(Debug)]
pub struct BlockAssembleExec {
    input: Arc<dyn ExecutionPlan>,
    geometry: FlowGeometry,
    props: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

fn keys() -> Vec<Arc<dyn PhysicalExpr>> {
    vec![Arc::new(Column::new(BI, 0)), Arc::new(Column::new(BJ, 1))]
}

impl BlockAssembleExec {
    /// The blocks of a matrix of `geometry` from the piece stream `input`.
    pub fn try_new(input: Arc<dyn ExecutionPlan>, geometry: FlowGeometry) -> Result<Self> {
        if input.schema().fields().len() != piece_stream_schema().fields().len()
            || input.schema().column_with_name(R0).is_none()
        {
            return exec_err!("BlockAssembleExec: the input is not a piece stream");
        }
        let parts = input.output_partitioning().partition_count();
        let props = PlanProperties::new(
            EquivalenceProperties::new(block_stream_schema()),
            Partitioning::Hash(keys(), parts),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Ok(Self {
            input,
            geometry,
            props: Arc::new(props),
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }

    /// The matrix it assembles.
    pub fn geometry(&self) -> FlowGeometry {
        self.geometry
    }
}

impl DisplayAs for BlockAssembleExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (r, c) = self.geometry.block;
        if let DisplayFormatType::TreeRender = t {
            return writeln!(f, "assemble={r}x{c} blocks");
        }
        write!(
            f,
            "BlockAssembleExec: {r}x{c} blocks from pieces by (bi, bj)"
        )
    }
}

impl ExecutionPlan for BlockAssembleExec {
    fn name(&self) -> &str {
        "BlockAssembleExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn required_input_distribution(&self) -> Vec<Distribution> {
        vec![Distribution::KeyPartitioned(keys())]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        match (children.pop(), children.is_empty()) {
            (Some(input), true) => Ok(Arc::new(Self::try_new(input, self.geometry)?)),
            _ => exec_err!("BlockAssembleExec takes one child"),
        }
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context.clone())?;
        let geometry = self.geometry;
        let output_rows = MetricBuilder::new(&self.metrics).output_rows(partition);
        let elapsed = MetricBuilder::new(&self.metrics).elapsed_compute(partition);
        let reservation = MemoryConsumer::new(format!("BlockAssembleExec[{partition}]"))
            .register(context.memory_pool());
        Ok(batches_stream(self.schema(), async move {
            let batches: Vec<_> = input.try_collect().await?;
            let timer = elapsed.timer();
            let batches = blocking(move || {
                let reservation = reservation;
                let mut pieces = Vec::new();
                let mut rows = Vec::with_capacity(batches.len());
                for (b, batch) in batches.iter().enumerate() {
                    let blocks = BlockRows::new(batch, 0)?;
                    let offset = |name: &str| {
                        batch
                            .column_by_name(name)
                            .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
                            .ok_or_else(|| {
                                DataFusionError::Internal(format!("a piece stream without {name}"))
                            })
                    };
                    let (r0, c0) = (offset(R0)?, offset(C0)?);
                    for row in 0..blocks.len() {
                        let at = (r0.value(row) as usize, c0.value(row) as usize);
                        pieces.push((blocks.key(row), at, b, row));
                    }
                    rows.push(blocks);
                }
                pieces.sort_unstable();
                let mut out = BlockBatches::new();
                for run in pieces.chunk_by(|x, y| x.0 == y.0) {
                    let key = run[0].0;
                    let shape = geometry.block_shape(key);
                    let parts: Vec<((usize, usize), Block)> = run
                        .iter()
                        .map(|&(_, at, b, row)| Ok((at, rows[b].block(row)?)))
                        .collect::<Result<_>>()?;
                    let block = assemble(shape, parts)?;
                    reservation
                        .try_grow(block_bytes(&block) as usize)
                        .map_err(|e| {
                            DataFusionError::ResourcesExhausted(format!(
                                "BlockAssembleExec: the reblocked blocks do not fit the session's memory budget: {e}"
                            ))
                        })?;
                    if block.nnz() > 0 {
                        out.push(key.0, key.1, &block)?;
                    }
                }
                drop(rows);
                let batches = out.finish()?;
                reservation.free();
                Ok::<_, DataFusionError>(batches)
            })
            .await?;
            timer.done();
            for b in &batches {
                output_rows.add(b.num_rows());
            }
            Ok(batches)
        }))
    }
}

/// A `shape` block from its pieces, each with where its first cell goes.
fn assemble(shape: (usize, usize), mut parts: Vec<((usize, usize), Block)>) -> Result<Block> {
    if parts.len() == 1
        && parts[0].0 == (0, 0)
        && parts[0].1.shape() == shape
        && let Some((_, whole)) = parts.pop()
    {
        return Ok(whole);
    }
    let (rows, cols) = shape;
    let fits = |(r0, c0): (usize, usize), p: &Block| r0 + p.rows() <= rows && c0 + p.cols() <= cols;
    if let Some((at, p)) = parts.iter().find(|(at, p)| !fits(*at, p)) {
        return Err(DataFusionError::Internal(format!(
            "a {}x{} piece at {at:?} does not fit a {rows}x{cols} block",
            p.rows(),
            p.cols()
        )));
    }
    let nnz: usize = parts.iter().map(|p| p.1.nnz()).sum();
    Ok(match Block::preferred_format(rows, cols, nnz) {
        BlockFormat::Dense => {
            let mut values = vec![0.0; rows * cols];
            for ((r0, c0), p) in &parts {
                p.for_each_nonzero(|r, c, v| values[(r0 + r) * cols + c0 + c] = v);
            }
            Block::Dense(DenseBlock::new(rows, cols, values).map_err(storage_error)?)
        }
        _ => {
            let mut cells = CooBuilder::with_capacity(rows, cols, Duplicates::Last, nnz);
            for ((r0, c0), p) in &parts {
                let mut failed = None;
                p.for_each_nonzero(|r, c, v| {
                    if let Err(e) = cells.push(r0 + r, c0 + c, v) {
                        failed.get_or_insert(e);
                    }
                });
                if let Some(e) = failed {
                    return Err(storage_error(e));
                }
            }
            cells.build()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::spans;

    #[test]
    fn spans_cut_a_block_at_the_target_blocks_it_crosses() {
        // Rows 5..12 (7 rows) in blocks of 4: rows 5..8 of block 1 (from its row 1),
        // rows 8..12 of block 2 (from its row 0).
        let all = (0, u64::MAX);
        let s = spans(5, 7, all, 0, 4);
        assert_eq!(s, vec![(1, 0..3, 1), (2, 3..7, 0)]);
        // A block that is exactly one target block.
        assert_eq!(spans(8, 4, all, 0, 4), vec![(2, 0..4, 0)]);
        assert_eq!(spans(0, 0, all, 0, 4), vec![]);
        // Moved by an offset: rows 5..12 land on 7..14.
        assert_eq!(
            spans(5, 7, all, 2, 4),
            vec![(1, 0..1, 3), (2, 1..5, 0), (3, 5..7, 0)]
        );
    }

    #[test]
    fn spans_keep_only_the_window_and_move_it_to_the_origin() {
        // A block of rows 8..16; rows 10..13 kept, moved to start at 0, in blocks of 2:
        // its rows 2..4 to target block 0, its row 4 to target block 1.
        assert_eq!(
            spans(8, 8, (10, 13), 0, 2),
            vec![(0, 2..4, 0), (1, 4..5, 0)]
        );
        // A block wholly outside the window goes nowhere.
        assert_eq!(spans(0, 8, (10, 13), 0, 2), vec![]);
        assert_eq!(spans(13, 8, (10, 13), 0, 2), vec![]);
    }
}
