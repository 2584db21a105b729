//! Block operators that map each block on its own: a transpose, and the fan-out of a
//! replicated product.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch, UInt32Array};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{Result, exec_err};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricBuilder, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PlanProperties, SendableRecordBatchStream,
};
use futures::StreamExt;
use tessera_storage::{Block, CooBuilder, DenseBlock, Duplicates, is_stored, kernels};

use crate::error::storage_error;
use crate::la::FlowGeometry;

use super::reblock::{Cut, piece_stream_schema, pieces_batch};
use super::{
    BI, BJ, BlockBatches, BlockRows, block_stream_schema, flatten, is_block_stream,
    partial_stream_schema,
};

/// What a [`BlockMapExec`] does to each block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum BlockMap {
    /// `t(X)`: block `(i, j)` becomes block `(j, i)`, transposed.
    Transpose,
    /// The left operand of a replicated product: block `A(i, k)` goes once to each of
    /// the `copies` output blocks `(i, j)` it feeds, as rows `(oj, i, k, block)`.
    FanOutLeft {
        /// Block columns of the product.
        copies: u64,
    },
    /// The right operand of a replicated product: block `B(k, j)` goes once to each of
    /// the `copies` output blocks `(i, j)` it feeds, as rows `(oi, k, j, block)`.
    FanOutRight {
        /// Block rows of the product.
        copies: u64,
    },
    /// `rowsums`' partials: block `(i, j)` becomes block `(i, 0)`, its row sums.
    RowSums,
    /// `colsums`' partials: block `(i, j)` becomes block `(0, j)`, its column sums.
    ColSums,
    /// The pieces of each block (blocked `from`, moved by `offset` cells) in the blocks
    /// of blocking `to`, for a [`BlockAssembleExec`](super::BlockAssembleExec): a
    /// piece stream keyed by the target block, with where each piece starts in it.
    Pieces {
        /// The input's block size.
        from: (u64, u64),
        /// The target block size.
        to: (u64, u64),
        /// Rows and columns added to every cell's position.
        offset: (u64, u64),
    },
    /// The operand of an elementwise operation that broadcasts it over a matrix of
    /// `shape` blocked `block`: each block of a row vector (of a column vector, of a
    /// 1 x 1 matrix) goes to every block of the matrix it meets, made that block's size
    /// by repeating its row (its column, its cell).
    Broadcast {
        /// The matrix's shape.
        shape: (u64, u64),
        /// The matrix's block size; the vector is blocked alike along its length.
        block: (u64, u64),
        /// Repeated down the block rows (a row vector, or 1 x 1).
        down: bool,
        /// Repeated across the block columns (a column vector, or 1 x 1).
        across: bool,
    },
    /// `slice`: the cells in rows `rows.0..rows.1` and columns `cols.0..cols.1` of a
    /// matrix blocked `from`, moved to start at `(0, 0)`, in blocks of `to`. When the
    /// window starts on a block boundary ([`BlockMap::is_aligned`]) each block is cut
    /// to the window and re-keyed, a block stream; otherwise the output is a piece
    /// stream for a [`BlockAssembleExec`](super::BlockAssembleExec).
    Window {
        /// The input's block size.
        from: (u64, u64),
        /// The output's block size.
        to: (u64, u64),
        /// Rows kept, half-open.
        rows: (u64, u64),
        /// Columns kept, half-open.
        cols: (u64, u64),
    },
    /// The partials of a reduction to one value (`sum`, `nnz`, `min`, `max`): block
    /// `(i, j)` becomes a 1 x 1 block keyed `(0, 0)` holding its own, ordered by the
    /// block's place in row-major order among `across` block columns.
    Total {
        /// What each block is reduced to.
        of: Total,
        /// Block columns of the input.
        across: u64,
    },
    /// `diag`: with `vector`, block `k` of a row or column vector becomes the diagonal
    /// block `(k, k)` holding it; otherwise diagonal block `(k, k)` of a square matrix
    /// in square blocks becomes block `(k, 0)` of a column vector, its diagonal, and
    /// the other blocks go nowhere.
    Diag {
        /// The input is a vector (a matrix of one row or one column).
        vector: bool,
    },
    /// The second operand of `rbind` / `cbind`: block `(i, j)` becomes block
    /// `(i + rows, j + cols)`, its values untouched.
    Shift {
        /// Block rows added to `i`.
        rows: u64,
        /// Block columns added to `j`.
        cols: u64,
    },
}

/// What a [`BlockMap::Total`] reduces each block to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Total {
    /// The sum of its cells.
    Sum,
    /// The number of its non-zero cells.
    Nnz,
    /// Its smallest cell, implicit zeros included (NaN if any cell is NaN).
    Min,
    /// Its largest cell, implicit zeros included (NaN if any cell is NaN).
    Max,
}

impl Total {
    fn name(self) -> &'static str {
        match self {
            Total::Sum => "sum",
            Total::Nnz => "non-zero count",
            Total::Min => "smallest cell",
            Total::Max => "largest cell",
        }
    }
}

/// The output block-row key column of a fanned-out right operand.
pub(super) const OI: &str = "oi";
/// The output block-column key column of a fanned-out left operand.
pub(super) const OJ: &str = "oj";

impl BlockMap {
    /// True for a [`BlockMap::Window`] that starts on a block boundary, so each block it
    /// keeps is (part of) exactly one output block, which starts where it does.
    pub fn is_aligned(self) -> bool {
        match self {
            BlockMap::Window {
                from, rows, cols, ..
            } => rows.0 % from.0.max(1) == 0 && cols.0 % from.1.max(1) == 0,
            _ => false,
        }
    }

    fn schema(self) -> SchemaRef {
        let prefix = match self {
            BlockMap::Transpose
            | BlockMap::Shift { .. }
            | BlockMap::Broadcast { .. }
            | BlockMap::Diag { .. } => {
                return block_stream_schema();
            }
            BlockMap::Window { .. } if self.is_aligned() => return block_stream_schema(),
            BlockMap::RowSums | BlockMap::ColSums | BlockMap::Total { .. } => {
                return partial_stream_schema();
            }
            BlockMap::Pieces { .. } | BlockMap::Window { .. } => return piece_stream_schema(),
            BlockMap::FanOutLeft { .. } => OJ,
            BlockMap::FanOutRight { .. } => OI,
        };
        let mut fields = vec![Field::new(prefix, DataType::Int64, false)];
        fields.extend(
            block_stream_schema()
                .fields()
                .iter()
                .map(|f| f.as_ref().clone()),
        );
        Arc::new(Schema::new(fields))
    }
}

/// Maps every block of a block stream by itself ([`BlockMap`]), partition by partition,
/// as the batches arrive. A transpose keeps its input's hash partitioning (with the keys
/// swapped); a fan-out's partitioning is unknown, the exchange after it places its rows.
#[derive(Debug)]
pub struct BlockMapExec {
    input: Arc<dyn ExecutionPlan>,
    pub(crate) map: BlockMap,
    props: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl BlockMapExec {
    /// `map` over the block stream `input`.
    pub fn try_new(input: Arc<dyn ExecutionPlan>, map: BlockMap) -> Result<Self> {
        let schema = input.schema();
        if !is_block_stream(&schema) || schema.field(0).name() != BI {
            return exec_err!("BlockMapExec: the input is not a block stream");
        }
        let parts = input.output_partitioning().partition_count();
        let partitioning = match (map, input.output_partitioning()) {
            (BlockMap::Transpose, Partitioning::Hash(keys, n)) if is_bi_bj(keys) => {
                // Placed by hash(bi, bj) of the input: hash(bj, bi) of the output.
                Partitioning::Hash(
                    vec![
                        Arc::new(Column::new(BJ, 1)) as Arc<dyn PhysicalExpr>,
                        Arc::new(Column::new(BI, 0)),
                    ],
                    *n,
                )
            }
            _ => Partitioning::UnknownPartitioning(parts),
        };
        let props = PlanProperties::new(
            EquivalenceProperties::new(map.schema()),
            partitioning,
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(Self {
            input,
            map,
            props: Arc::new(props),
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }
}

/// True if `keys` are exactly the columns `bi@0, bj@1`.
pub(super) fn is_bi_bj(keys: &[Arc<dyn PhysicalExpr>]) -> bool {
    let at = |k: &Arc<dyn PhysicalExpr>| k.downcast_ref::<Column>().map(|c| c.index());
    keys.len() == 2 && at(&keys[0]) == Some(0) && at(&keys[1]) == Some(1)
}

impl DisplayAs for BlockMapExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let DisplayFormatType::TreeRender = t {
            return match self.map {
                BlockMap::Transpose => writeln!(f, "map=transpose"),
                BlockMap::FanOutLeft { copies } => {
                    writeln!(f, "map=A(i, k) to (i, oj)")?;
                    writeln!(f, "copies={copies}")
                }
                BlockMap::FanOutRight { copies } => {
                    writeln!(f, "map=B(k, j) to (oi, j)")?;
                    writeln!(f, "copies={copies}")
                }
                BlockMap::RowSums => writeln!(f, "map=row sums to (i, 0)"),
                BlockMap::ColSums => writeln!(f, "map=column sums to (0, j)"),
                BlockMap::Shift { rows, cols } => {
                    writeln!(f, "map=shift by ({rows}, {cols}) blocks")
                }
                BlockMap::Broadcast {
                    shape,
                    block,
                    down,
                    across,
                } => {
                    writeln!(f, "map=broadcast over {}x{}", shape.0, shape.1)?;
                    writeln!(f, "blocks={}x{}", block.0, block.1)?;
                    writeln!(f, "down={down}, across={across}")
                }
                BlockMap::Pieces { from, to, offset } => {
                    writeln!(f, "map=pieces of {}x{} blocks", from.0, from.1)?;
                    writeln!(f, "to={}x{} blocks", to.0, to.1)?;
                    writeln!(f, "offset=({}, {})", offset.0, offset.1)
                }
                BlockMap::Window {
                    from,
                    to,
                    rows,
                    cols,
                } => {
                    writeln!(
                        f,
                        "map=slice [{}:{}, {}:{}]",
                        rows.0, rows.1, cols.0, cols.1
                    )?;
                    writeln!(f, "from={}x{} blocks", from.0, from.1)?;
                    writeln!(f, "to={}x{} blocks", to.0, to.1)?;
                    writeln!(f, "aligned={}", self.map.is_aligned())
                }
                BlockMap::Total { of, .. } => {
                    writeln!(f, "map={} of each block to (0, 0)", of.name())
                }
                BlockMap::Diag { vector: true } => writeln!(f, "map=vector block k to (k, k)"),
                BlockMap::Diag { vector: false } => {
                    writeln!(f, "map=diagonal of block (k, k) to (k, 0)")
                }
            };
        }
        match self.map {
            BlockMap::Transpose => write!(f, "BlockMapExec: transpose"),
            BlockMap::FanOutLeft { copies } => write!(
                f,
                "BlockMapExec: A(i, k) to the {copies} output blocks (i, oj) it feeds"
            ),
            BlockMap::FanOutRight { copies } => write!(
                f,
                "BlockMapExec: B(k, j) to the {copies} output blocks (oi, j) it feeds"
            ),
            BlockMap::RowSums => write!(f, "BlockMapExec: row sums of each block to (i, 0)"),
            BlockMap::ColSums => {
                write!(f, "BlockMapExec: column sums of each block to (0, j)")
            }
            BlockMap::Shift { rows, cols } => {
                write!(f, "BlockMapExec: block keys shifted by ({rows}, {cols})")
            }
            BlockMap::Broadcast {
                shape,
                block,
                down,
                across,
            } => write!(
                f,
                "BlockMapExec: broadcast over {}x{} in {}x{} blocks (down={down}, across={across})",
                shape.0, shape.1, block.0, block.1
            ),
            BlockMap::Pieces { from, to, offset } => write!(
                f,
                "BlockMapExec: pieces of {}x{} blocks moved by ({}, {}) cells in {}x{} blocks",
                from.0, from.1, offset.0, offset.1, to.0, to.1
            ),
            BlockMap::Window {
                from,
                to,
                rows,
                cols,
            } => write!(
                f,
                "BlockMapExec: slice [{}:{}, {}:{}] of {}x{} blocks {} {}x{} blocks",
                rows.0,
                rows.1,
                cols.0,
                cols.1,
                from.0,
                from.1,
                if self.map.is_aligned() {
                    "cut to"
                } else {
                    "in pieces of"
                },
                to.0,
                to.1
            ),
            BlockMap::Total { of, .. } => {
                write!(f, "BlockMapExec: {} of each block to (0, 0)", of.name())
            }
            BlockMap::Diag { vector: true } => {
                write!(f, "BlockMapExec: vector block k to diagonal block (k, k)")
            }
            BlockMap::Diag { vector: false } => {
                write!(f, "BlockMapExec: diagonal of block (k, k) to (k, 0)")
            }
        }
    }
}

impl ExecutionPlan for BlockMapExec {
    fn name(&self) -> &str {
        "BlockMapExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
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
            (Some(input), true) => Ok(Arc::new(Self::try_new(input, self.map)?)),
            _ => exec_err!("BlockMapExec takes one child"),
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
        let input = self.input.execute(partition, context)?;
        let output_rows = MetricBuilder::new(&self.metrics).output_rows(partition);
        let elapsed = MetricBuilder::new(&self.metrics).elapsed_compute(partition);
        let (map, schema) = (self.map, self.schema());
        let out_schema = schema.clone();
        let stream = flatten(input.map(move |batch| {
            let batch = batch?;
            let timer = elapsed.timer();
            let out = match map {
                BlockMap::Transpose => transpose_batch(&batch)?,
                BlockMap::RowSums | BlockMap::ColSums => {
                    sums_batch(&batch, map == BlockMap::RowSums)?
                }
                BlockMap::Shift { rows, cols } => vec![shift_batch(&batch, rows, cols)?],
                BlockMap::Pieces { from, to, offset } => pieces_batch(
                    &batch,
                    Cut {
                        from,
                        to,
                        rows: (0, u64::MAX),
                        cols: (0, u64::MAX),
                        offset,
                    },
                )?,
                BlockMap::Window {
                    from,
                    to,
                    rows,
                    cols,
                } => {
                    let cut = Cut {
                        from,
                        to,
                        rows,
                        cols,
                        offset: (0, 0),
                    };
                    let pieces = pieces_batch(&batch, cut)?;
                    if map.is_aligned() {
                        pieces
                            .into_iter()
                            .map(|p| without_piece_offsets(&p))
                            .collect::<Result<_>>()?
                    } else {
                        pieces
                    }
                }
                BlockMap::Total { of, across } => totals_batch(&batch, of, across)?,
                BlockMap::Diag { vector } => diag_batch(&batch, vector)?,
                BlockMap::Broadcast {
                    shape,
                    block,
                    down,
                    across,
                } => broadcast_batch(&batch, FlowGeometry { shape, block }, down, across)?,
                BlockMap::FanOutLeft { copies } | BlockMap::FanOutRight { copies } => {
                    vec![fan_out(&batch, copies, &out_schema)?]
                }
            };
            timer.done();
            output_rows.add(out.iter().map(RecordBatch::num_rows).sum());
            Ok(out)
        }));
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

fn transpose_batch(batch: &RecordBatch) -> Result<Vec<RecordBatch>> {
    let rows = BlockRows::new(batch, 0)?;
    let mut out = BlockBatches::new();
    for row in 0..rows.len() {
        let (i, j) = rows.key(row);
        out.push(j, i, &kernels::transpose(&rows.block(row)?))?;
    }
    out.finish()
}

/// The row (or column) sums of every block of `batch`, keyed `(i, 0)` (or `(0, j)`),
/// as partials ordered by the block column (or row) they sum.
fn sums_batch(batch: &RecordBatch, by_row: bool) -> Result<Vec<RecordBatch>> {
    let rows = BlockRows::new(batch, 0)?;
    let mut out = BlockBatches::partials();
    for row in 0..rows.len() {
        let (i, j) = rows.key(row);
        let block = rows.block(row)?;
        let (shape, key, ord, sums) = if by_row {
            ((block.rows(), 1), (i, 0), j, kernels::row_sums(&block))
        } else {
            ((1, block.cols()), (0, j), i, kernels::col_sums(&block))
        };
        let sums = Block::Dense(DenseBlock::new(shape.0, shape.1, sums).map_err(storage_error)?);
        out.push_partial(key.0, key.1, ord, &sums)?;
    }
    out.finish()
}

/// A piece stream whose pieces all start at `(0, 0)` of their blocks and are one to a
/// block, as the block stream it is: the pieces' offsets dropped.
fn without_piece_offsets(pieces: &RecordBatch) -> Result<RecordBatch> {
    let blocks = block_stream_schema();
    let columns = pieces.columns()[..blocks.fields().len()].to_vec();
    Ok(RecordBatch::try_new(blocks, columns)?)
}

/// What `of` makes of every block of `batch`, as a 1 x 1 partial keyed `(0, 0)`,
/// ordered by the block's row-major place among `across` block columns. A block with no
/// cells has no smallest or largest cell, and no partial.
fn totals_batch(batch: &RecordBatch, of: Total, across: u64) -> Result<Vec<RecordBatch>> {
    let rows = BlockRows::new(batch, 0)?;
    let mut out = BlockBatches::partials();
    for row in 0..rows.len() {
        let (i, j) = rows.key(row);
        let block = rows.block(row)?;
        let total = match of {
            Total::Sum => kernels::sum(&block),
            Total::Nnz => block.nnz() as f64,
            Total::Min => match kernels::min(&block) {
                Some(v) => v,
                None => continue,
            },
            Total::Max => match kernels::max(&block) {
                Some(v) => v,
                None => continue,
            },
        };
        let total = Block::Dense(DenseBlock::new(1, 1, vec![total]).map_err(storage_error)?);
        out.push_partial(0, 0, i * across.max(1) + j, &total)?;
    }
    out.finish()
}

/// `diag` of every block of `batch`: a vector's block `k` as the diagonal block
/// `(k, k)`, or a square matrix's diagonal block `(k, k)` as its diagonal, block `(k, 0)`
/// of a column. Blocks that come out all zeros are left out.
fn diag_batch(batch: &RecordBatch, vector: bool) -> Result<Vec<RecordBatch>> {
    let rows = BlockRows::new(batch, 0)?;
    let mut out = BlockBatches::new();
    for row in 0..rows.len() {
        let (i, j) = rows.key(row);
        let block = rows.block(row)?;
        let (r, c) = block.shape();
        let (key, made) = if vector {
            let n = r.max(c);
            let mut cells = CooBuilder::new(n, n, Duplicates::Last);
            for t in 0..n {
                let v = if c == 1 {
                    block.get(t, 0)
                } else {
                    block.get(0, t)
                };
                if is_stored(v) {
                    cells.push(t, t, v).map_err(storage_error)?;
                }
            }
            ((i.max(j), i.max(j)), cells.build())
        } else if i == j {
            let d: Vec<f64> = (0..r.min(c)).map(|t| block.get(t, t)).collect();
            let d = DenseBlock::new(d.len(), 1, d).map_err(storage_error)?;
            ((i, 0), Block::Dense(d).into_preferred_format())
        } else {
            continue;
        };
        if made.nnz() > 0 {
            out.push(key.0, key.1, &made)?;
        }
    }
    out.finish()
}

/// The blocks of a vector in `batch` repeated into the blocks of a matrix of
/// `geometry` they meet: down its block rows and / or across its block columns.
fn broadcast_batch(
    batch: &RecordBatch,
    geometry: FlowGeometry,
    down: bool,
    across: bool,
) -> Result<Vec<RecordBatch>> {
    let rows = BlockRows::new(batch, 0)?;
    let (rows_of_blocks, cols_of_blocks) = (
        geometry.shape.0.div_ceil(geometry.block.0.max(1)),
        geometry.shape.1.div_ceil(geometry.block.1.max(1)),
    );
    let mut out = BlockBatches::new();
    for row in 0..rows.len() {
        let (vi, vj) = rows.key(row);
        let v = rows.block(row)?;
        let bis = if down { 0..rows_of_blocks } else { vi..vi + 1 };
        for bi in bis {
            let bjs = if across {
                0..cols_of_blocks
            } else {
                vj..vj + 1
            };
            for bj in bjs {
                let (r, c) = geometry.block_shape((bi, bj));
                out.push(bi, bj, &repeated(&v, r, c, down, across)?)?;
            }
        }
    }
    out.finish()
}

/// An `r x c` block of vector block `v` repeated down (its one row in every row) and /
/// or across (its one column in every column), by copying rows rather than cells.
fn repeated(v: &Block, r: usize, c: usize, down: bool, across: bool) -> Result<Block> {
    let cell = |x: usize, y: usize| v.get(if down { 0 } else { x }, if across { 0 } else { y });
    let mut values = Vec::with_capacity(r * c);
    match (v, down, across) {
        (Block::Dense(d), true, false) => {
            let row = &d.row(0)[..c];
            for _ in 0..r {
                values.extend_from_slice(row);
            }
        }
        _ => {
            for x in 0..r {
                if across {
                    let value = cell(x, 0);
                    values.resize(values.len() + c, value);
                } else {
                    values.extend((0..c).map(|y| cell(x, y)));
                }
            }
        }
    }
    let block = DenseBlock::new(r, c, values).map_err(storage_error)?;
    Ok(Block::Dense(block).into_preferred_format())
}

/// `batch` with its block keys moved by `(rows, cols)`; the block columns are shared.
fn shift_batch(batch: &RecordBatch, rows: u64, cols: u64) -> Result<RecordBatch> {
    let keys = BlockRows::new(batch, 0)?;
    let (bi, bj): (Vec<i64>, Vec<i64>) = (0..keys.len())
        .map(|row| {
            let (i, j) = keys.key(row);
            ((i + rows) as i64, (j + cols) as i64)
        })
        .unzip();
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(bi)),
        Arc::new(Int64Array::from(bj)),
    ];
    columns.extend(batch.columns()[2..].iter().cloned());
    Ok(RecordBatch::try_new(batch.schema(), columns)?)
}

/// Every row of `batch` `copies` times, the copy number in a new first column. The block
/// columns are taken, so the copies share the values' buffers.
fn fan_out(batch: &RecordBatch, copies: u64, schema: &SchemaRef) -> Result<RecordBatch> {
    let n = batch.num_rows();
    let copies = copies.max(1);
    let mut index = Vec::with_capacity(n * copies as usize);
    let mut copy = Vec::with_capacity(n * copies as usize);
    for row in 0..n {
        for c in 0..copies {
            index.push(row as u32);
            copy.push(c as i64);
        }
    }
    let index = UInt32Array::from(index);
    let mut columns: Vec<ArrayRef> = vec![Arc::new(Int64Array::from(copy))];
    for column in batch.columns() {
        columns.push(take(column.as_ref(), &index, None)?);
    }
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}
