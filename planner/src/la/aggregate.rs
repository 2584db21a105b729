//! SQL aggregates over a matrix expression, computed from its blocks.
//!
//! `SELECT sum(v), count(*), min(v), max(v), avg(v) FROM matmul(a, b)` (optionally
//! `GROUP BY i` or `GROUP BY j`) would otherwise turn every non-zero cell of the product
//! into an `(i, j, v)` row only to fold it again. [`BlockAggregates`] replaces such an
//! aggregate (its partial and final phases and the exchange between them) with a
//! [`BlockAggregateExec`] that folds each block of the matrix in place, on the kernel
//! threads, and emits the aggregate's own rows. The meaning is the cells' meaning: the
//! aggregates see the non-zero cells, so `count(*)` is the number of non-zeros and
//! `min(v)` the smallest non-zero value, exactly as over the rows.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DataFusionError, Result, exec_err};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::expressions::{Column, Literal};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{
    BaselineMetrics, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet,
};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream, collect, execute_stream,
};
use futures::StreamExt;
use rayon::prelude::*;
use tessera_storage::Block;

use tessera_storage::kernels::{self, Step, cpu_pool};

use super::exec::{LaExec, Output, look_through};
use super::expr::Op;
use super::flow::{BlockCellsExec, BlockElementwiseExec, BlockRows, batches_stream};
use super::matrix::BlockMatrix;
use super::ops::{self, FusedBlock, Work};
use crate::error::blocking;

/// One aggregate of the cells `(i, j, v)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CellAggregate {
    /// `count(*)`, `count(1)` or `count(i | j | v)`: the non-zero cells.
    Count,
    /// `sum(v)`.
    Sum,
    /// `min(v)`.
    Min,
    /// `max(v)`.
    Max,
    /// `avg(v)`.
    Avg,
}

impl CellAggregate {
    fn name(self) -> &'static str {
        match self {
            CellAggregate::Count => "count",
            CellAggregate::Sum => "sum",
            CellAggregate::Min => "min",
            CellAggregate::Max => "max",
            CellAggregate::Avg => "avg",
        }
    }
}

/// What the cells are grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CellGroups {
    /// One group: the whole matrix.
    All,
    /// `GROUP BY i`: one group per row with a non-zero cell.
    Row,
    /// `GROUP BY j`: one group per column with a non-zero cell.
    Col,
}

/// Folds a matrix expression's blocks into SQL aggregates of its cells, without making
/// the cells. One output partition; the rule puts back the exchange the replaced
/// aggregate's parent expects.
#[derive(Debug)]
pub struct BlockAggregateExec {
    input: Arc<dyn ExecutionPlan>,
    groups: CellGroups,
    aggregates: Vec<CellAggregate>,
    props: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl BlockAggregateExec {
    /// The aggregates `aggregates` of the cells of `input` (an [`LaExec`] emitting
    /// cells), grouped by `groups`, as rows of `schema` (the group column first).
    pub fn try_new(
        input: Arc<dyn ExecutionPlan>,
        groups: CellGroups,
        aggregates: Vec<CellAggregate>,
        schema: SchemaRef,
    ) -> Result<Self> {
        if input.downcast_ref::<BlockCellsExec>().is_none() {
            let Some(la) = input.downcast_ref::<LaExec>() else {
                return exec_err!(
                    "BlockAggregateExec reads a matrix operator, not {}",
                    input.name()
                );
            };
            if la.output() != Output::Cells {
                return exec_err!("BlockAggregateExec reads a matrix operator's cells");
            }
        }
        let props = PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Ok(Self {
            input,
            groups,
            aggregates,
            props: Arc::new(props),
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }
}

impl DisplayAs for BlockAggregateExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let aggs: Vec<&str> = self.aggregates.iter().map(|a| a.name()).collect();
        if let DisplayFormatType::TreeRender = t {
            writeln!(f, "aggr={}", aggs.join(", "))?;
            return match self.groups {
                CellGroups::All => Ok(()),
                CellGroups::Row => writeln!(f, "by=i"),
                CellGroups::Col => writeln!(f, "by=j"),
            };
        }
        write!(f, "BlockAggregateExec: aggr=[{}]", aggs.join(", "))?;
        match self.groups {
            CellGroups::All => Ok(()),
            CellGroups::Row => write!(f, ", by=i"),
            CellGroups::Col => write!(f, ", by=j"),
        }
    }
}

impl ExecutionPlan for BlockAggregateExec {
    fn name(&self) -> &str {
        "BlockAggregateExec"
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
        let (Some(input), true) = (children.pop(), children.is_empty()) else {
            return exec_err!("BlockAggregateExec takes one input");
        };
        Ok(Arc::new(BlockAggregateExec::try_new(
            input,
            self.groups,
            self.aggregates.clone(),
            self.schema(),
        )?))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return exec_err!("BlockAggregateExec has one partition, not {partition}");
        }
        let input = Arc::clone(&self.input);
        let (groups, aggregates, schema) = (self.groups, self.aggregates.clone(), self.schema());
        let baseline = BaselineMetrics::new(&self.metrics, partition);
        let blocks = MetricBuilder::new(&self.metrics).global_counter("blocks_folded");
        let out_schema = schema.clone();
        Ok(batches_stream(schema, async move {
            let minmax = aggregates
                .iter()
                .any(|a| matches!(a, CellAggregate::Min | CellAggregate::Max));
            if let Some(cells) = input.downcast_ref::<BlockCellsExec>()
                && let Some(program) =
                    look_through(cells.input()).downcast_ref::<BlockElementwiseExec>()
            {
                // An elementwise program is folded as it runs, over its gathered
                // leaves, without making its result's blocks.
                let geometry = program.geometry();
                let parts = context.session_config().target_partitions().max(1);
                let mut leaves = Vec::new();
                for leaf in program.children() {
                    // Every block of the leaf is gathered: an exchange placed for the
                    // program's own meeting is not needed.
                    let leaf = match leaf.downcast_ref::<RepartitionExec>() {
                        Some(r) => r.input(),
                        None => leaf,
                    };
                    let batches = collect(Arc::clone(leaf), Arc::clone(&context)).await?;
                    leaves.push(BlockMatrix::from_block_batches(&batches, geometry, parts)?);
                }
                let steps = program.steps.clone();
                let elapsed = baseline.elapsed_compute().clone();
                let batch = blocking(move || {
                    let start = Instant::now();
                    blocks.add(leaves.iter().map(BlockMatrix::block_count).sum());
                    let folded = fold_fused(&steps, leaves, parts, groups, minmax)?;
                    let batch = folded_batch(folded, &aggregates, &out_schema);
                    elapsed.add_duration(start.elapsed());
                    batch
                })
                .await?;
                baseline.record_output(batch.num_rows());
                return Ok(vec![batch]);
            }
            if let Some(cells) = input.downcast_ref::<BlockCellsExec>() {
                // A dataflow's blocks are folded as they arrive from its partitions.
                let block = cells.geometry().block;
                let mut stream = execute_stream(Arc::clone(cells.input()), context)?;
                let mut per_batch = Vec::new();
                while let Some(batch) = stream.next().await {
                    let batch = batch?;
                    let timer = baseline.elapsed_compute().timer();
                    let (folds, count) =
                        blocking(move || fold_block_batch(&batch, block, groups, minmax)).await?;
                    timer.done();
                    blocks.add(count);
                    per_batch.push(folds);
                }
                let folded = merge_folds(per_batch.into_iter(), groups);
                let batch = folded_batch(folded, &aggregates, &out_schema)?;
                baseline.record_output(batch.num_rows());
                return Ok(vec![batch]);
            }
            let Some(la) = input.downcast_ref::<LaExec>() else {
                return exec_err!("BlockAggregateExec lost its matrix operator");
            };
            let parts = la.properties().output_partitioning().partition_count();
            // An elementwise program is folded as it runs; anything else is computed,
            // then folded block by block.
            let work = match la.op() {
                Op::Fused(steps) => {
                    Folding::Fused(steps.clone(), la.compute_inputs(context).await?)
                }
                _ => Folding::Matrix(la.compute(context).await?),
            };
            let elapsed = baseline.elapsed_compute().clone();
            let batch = tokio::task::spawn_blocking(move || {
                let start = Instant::now();
                let folded = match work {
                    Folding::Fused(steps, leaves) => {
                        blocks.add(leaves.iter().map(BlockMatrix::block_count).sum());
                        fold_fused(&steps, leaves, parts, groups, minmax)?
                    }
                    Folding::Matrix(m) => {
                        blocks.add(m.block_count());
                        fold_matrix(&m, groups, minmax)
                    }
                };
                let batch = folded_batch(folded, &aggregates, &out_schema);
                elapsed.add_duration(start.elapsed());
                batch
            })
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))??;
            baseline.record_output(batch.num_rows());
            Ok(vec![batch])
        }))
    }
}

/// What a [`BlockAggregateExec`] folds.
enum Folding {
    /// An elementwise program and its computed leaves.
    Fused(Vec<Step>, Vec<BlockMatrix>),
    /// A computed matrix.
    Matrix(BlockMatrix),
}

/// The running aggregates of one group of non-zero cells.
#[derive(Debug, Clone, Copy)]
struct Fold {
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
}

impl Default for Fold {
    fn default() -> Self {
        Fold {
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }
}

impl Fold {
    /// One non-zero value. `min` and `max` order values as Arrow's kernels do (IEEE
    /// total order, so a NaN is the largest value).
    #[inline(always)]
    fn add<const MINMAX: bool>(&mut self, v: f64) {
        self.count += 1;
        self.sum += v;
        if MINMAX {
            if v.total_cmp(&self.min).is_lt() {
                self.min = v;
            }
            if v.total_cmp(&self.max).is_gt() {
                self.max = v;
            }
        }
    }

    /// Every value of `values` that is not zero.
    #[inline(always)]
    fn add_all<const MINMAX: bool>(&mut self, values: &[f64]) {
        if MINMAX {
            for &v in values {
                if v != 0.0 {
                    self.add::<true>(v);
                }
            }
            return;
        }
        // Count and sum only: four running sums, so the loop vectorises.
        let mut sums = [0.0f64; 4];
        let mut count = 0u64;
        let chunks = values.chunks_exact(4);
        let tail = chunks.remainder();
        for c in chunks {
            for k in 0..4 {
                sums[k] += c[k];
                count += u64::from(c[k] != 0.0);
            }
        }
        for &v in tail {
            sums[0] += v;
            count += u64::from(v != 0.0);
        }
        self.sum += (sums[0] + sums[1]) + (sums[2] + sums[3]);
        self.count += count;
    }

    fn merge(mut self, other: Fold) -> Fold {
        self.count += other.count;
        self.sum += other.sum;
        if other.min.total_cmp(&self.min).is_lt() {
            self.min = other.min;
        }
        if other.max.total_cmp(&self.max).is_gt() {
            self.max = other.max;
        }
        self
    }
}

/// The folds of one block's non-zero cells, by group.
struct BlockFolds {
    groups: CellGroups,
    minmax: bool,
    /// The block's first row and column in the matrix.
    origin: (i64, i64),
    cols: usize,
    /// One fold for [`CellGroups::All`], else one per row or column of the block.
    folds: Vec<Fold>,
}

impl BlockFolds {
    fn new(groups: CellGroups, minmax: bool, origin: (i64, i64), shape: (usize, usize)) -> Self {
        let n = match groups {
            CellGroups::All => 1,
            CellGroups::Row => shape.0,
            CellGroups::Col => shape.1,
        };
        BlockFolds {
            groups,
            minmax,
            origin,
            cols: shape.1,
            folds: vec![Fold::default(); n],
        }
    }

    /// The stored cells of `block`.
    fn block(&mut self, block: &Block) {
        match block {
            Block::Dense(d) => self.values(0, d.values()),
            Block::Sparse(s) => {
                for r in 0..s.rows() {
                    let (cols, vals) = s.row(r);
                    for (&c, &v) in cols.iter().zip(vals) {
                        // A CSR block stores no zeros.
                        let f = match self.groups {
                            CellGroups::All => &mut self.folds[0],
                            CellGroups::Row => &mut self.folds[r],
                            CellGroups::Col => &mut self.folds[c],
                        };
                        f.add::<true>(v);
                    }
                }
            }
        }
    }

    /// Dense cells `first..first + values.len()` of the block, row-major.
    fn values(&mut self, first: usize, values: &[f64]) {
        let minmax = self.minmax;
        let add = |f: &mut Fold, v: &[f64]| {
            if minmax {
                f.add_all::<true>(v)
            } else {
                f.add_all::<false>(v)
            }
        };
        match self.groups {
            CellGroups::All => add(&mut self.folds[0], values),
            CellGroups::Row => {
                let (mut k, mut rest) = (first, values);
                while !rest.is_empty() {
                    let (r, c) = (k / self.cols, k % self.cols);
                    let take = (self.cols - c).min(rest.len());
                    add(&mut self.folds[r], &rest[..take]);
                    rest = &rest[take..];
                    k += take;
                }
            }
            CellGroups::Col => {
                for (t, &v) in values.iter().enumerate() {
                    if v != 0.0 {
                        self.folds[(first + t) % self.cols].add::<true>(v);
                    }
                }
            }
        }
    }

    /// The groups that saw a non-zero cell, with their keys in the matrix.
    fn finish(self) -> Vec<(i64, Fold)> {
        let (r0, c0) = self.origin;
        let groups = self.groups;
        self.folds
            .into_iter()
            .enumerate()
            .filter(|(_, f)| f.count > 0)
            .map(|(k, f)| {
                let key = match groups {
                    CellGroups::All => 0,
                    CellGroups::Row => r0 + k as i64,
                    CellGroups::Col => c0 + k as i64,
                };
                (key, f)
            })
            .collect()
    }
}

/// Merges per-block folds into one fold per group key, in key order; an aggregate
/// without GROUP BY has its one group even over no cells.
fn merge_folds(
    blocks: impl Iterator<Item = Vec<(i64, Fold)>>,
    groups: CellGroups,
) -> Vec<(i64, Fold)> {
    let mut merged: HashMap<i64, Fold> = HashMap::new();
    for folds in blocks {
        for (k, f) in folds {
            let e = merged.entry(k).or_default();
            *e = e.merge(f);
        }
    }
    if groups == CellGroups::All && merged.is_empty() {
        merged.insert(0, Fold::default());
    }
    let mut out: Vec<(i64, Fold)> = merged.into_iter().collect();
    out.sort_unstable_by_key(|(k, _)| *k);
    out
}

/// The folds of `m`'s non-zero cells by group, block by block on the kernel threads.
fn fold_matrix(m: &BlockMatrix, groups: CellGroups, minmax: bool) -> Vec<(i64, Fold)> {
    let tiles: Vec<_> = m.tiles().collect();
    let (br, bc) = (m.br, m.bc);
    let per_block: Vec<Vec<(i64, Fold)>> = cpu_pool().install(|| {
        tiles
            .par_iter()
            .map(|(bi, bj, block)| {
                let origin = ((bi * br) as i64, (bj * bc) as i64);
                let mut folds = BlockFolds::new(groups, minmax, origin, block.shape());
                folds.block(block);
                folds.finish()
            })
            .collect()
    });
    merge_folds(per_block.into_iter(), groups)
}

/// The folds of the non-zero cells of the blocks of one block-stream batch, and how
/// many blocks it held.
fn fold_block_batch(
    batch: &RecordBatch,
    (br, bc): (u64, u64),
    groups: CellGroups,
    minmax: bool,
) -> Result<(Vec<(i64, Fold)>, usize)> {
    let rows = BlockRows::new(batch, 0)?;
    let mut per_block = Vec::with_capacity(rows.len());
    for row in 0..rows.len() {
        let (bi, bj) = rows.key(row);
        let block = rows.block(row)?;
        let origin = ((bi * br) as i64, (bj * bc) as i64);
        let mut folds = BlockFolds::new(groups, minmax, origin, block.shape());
        folds.block(&block);
        per_block.push(folds.finish());
    }
    let mut merged: HashMap<i64, Fold> = HashMap::new();
    for (k, f) in per_block.into_iter().flatten() {
        let e = merged.entry(k).or_default();
        *e = e.merge(f);
    }
    Ok((merged.into_iter().collect(), rows.len()))
}

/// The folds of the cells of the fused elementwise program `steps` over `leaves`,
/// without making its result: dense blocks are folded chunk by chunk as the program
/// produces them.
fn fold_fused(
    steps: &[Step],
    leaves: Vec<BlockMatrix>,
    parts: usize,
    groups: CellGroups,
    minmax: bool,
) -> Result<Vec<(i64, Fold)>> {
    // The result is blocked as the first leaf is (the others are aligned to it).
    let Some((br, bc)) = leaves.first().map(|l| (l.br, l.bc)) else {
        return exec_err!("a fused elementwise operation without inputs");
    };
    let (_, per_part) = ops::fused_each(
        steps,
        leaves,
        parts,
        &mut Work::default(),
        |bi, bj, block| {
            let origin = ((bi * br) as i64, (bj * bc) as i64);
            let folds = match block {
                FusedBlock::Block(b) => {
                    let mut folds = BlockFolds::new(groups, minmax, origin, b.shape());
                    folds.block(&b);
                    folds
                }
                FusedBlock::Dense { shape, leaves } => {
                    let mut folds = BlockFolds::new(groups, minmax, origin, shape);
                    kernels::fused_dense(steps, &leaves, |first, chunk| folds.values(first, chunk));
                    folds
                }
            };
            Ok(Some(folds.finish()))
        },
    )?;
    Ok(merge_folds(per_part.into_iter().flatten(), groups))
}

/// The aggregates' row (or rows, one per group) as a batch of `schema`: the group
/// column first when grouped, then one column per aggregate, each cast to the type the
/// replaced aggregate declared. Over no cells, `count` is 0 and the others are NULL,
/// as SQL says.
fn folded_batch(
    folded: Vec<(i64, Fold)>,
    aggregates: &[CellAggregate],
    schema: &SchemaRef,
) -> Result<RecordBatch> {
    let grouped = schema.fields().len() > aggregates.len();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    if grouped {
        columns.push(Arc::new(Int64Array::from_iter_values(
            folded.iter().map(|(k, _)| *k),
        )));
    }
    for agg in aggregates {
        let some = |f: &Fold, v: f64| (f.count > 0).then_some(v);
        let column: ArrayRef = match agg {
            CellAggregate::Count => Arc::new(Int64Array::from_iter_values(
                folded.iter().map(|(_, f)| f.count as i64),
            )),
            CellAggregate::Sum => Arc::new(Float64Array::from_iter(
                folded.iter().map(|(_, f)| some(f, f.sum)),
            )),
            CellAggregate::Min => Arc::new(Float64Array::from_iter(
                folded.iter().map(|(_, f)| some(f, f.min)),
            )),
            CellAggregate::Max => Arc::new(Float64Array::from_iter(
                folded.iter().map(|(_, f)| some(f, f.max)),
            )),
            CellAggregate::Avg => Arc::new(Float64Array::from_iter(
                folded.iter().map(|(_, f)| some(f, f.sum / f.count as f64)),
            )),
        };
        columns.push(column);
    }
    let columns = columns
        .into_iter()
        .zip(schema.fields())
        .map(|(c, field)| {
            if c.data_type() == field.data_type() {
                Ok(c)
            } else {
                cast(&c, field.data_type()).map_err(DataFusionError::from)
            }
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// Replaces aggregates of a matrix expression's cells with [`BlockAggregateExec`].
/// Runs after DataFusion's own rules, so it sees the final partial / final pairs and
/// puts back the replaced aggregate's output partitioning.
#[derive(Debug, Default)]
pub struct BlockAggregates;

impl PhysicalOptimizerRule for BlockAggregates {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_down(|node| match on_blocks(&node)? {
            Some(replaced) => Ok(Transformed::new(replaced, true, TreeNodeRecursion::Jump)),
            None => Ok(Transformed::no(node)),
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "tessera_block_aggregates"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// `node` computed from blocks, if it is an aggregate of a matrix expression's cells
/// that blocks can answer.
fn on_blocks(node: &Arc<dyn ExecutionPlan>) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    let Some(top) = node.downcast_ref::<AggregateExec>() else {
        return Ok(None);
    };
    // The phase that reads the cells: the partial one under a final one, or a single one.
    let first = match top.mode() {
        AggregateMode::Final | AggregateMode::FinalPartitioned => {
            match through_exchanges(top.input()).downcast_ref::<AggregateExec>() {
                Some(partial) if *partial.mode() == AggregateMode::Partial => partial,
                _ => return Ok(None),
            }
        }
        AggregateMode::Single | AggregateMode::SinglePartitioned => top,
        _ => return Ok(None),
    };
    let Some((la, columns)) = cells_source(first.input()) else {
        return Ok(None);
    };
    // Which of the cells' columns (0 = i, 1 = j, 2 = v) an expression of the first
    // phase's input is.
    let cell_column = |e: &Arc<dyn PhysicalExpr>| {
        e.downcast_ref::<Column>()
            .and_then(|c| columns.get(c.index()).copied())
    };
    let group_by = first.group_expr();
    if !group_by.is_single() || !group_by.null_expr().is_empty() {
        return Ok(None);
    }
    let groups = match group_by.expr() {
        [] => CellGroups::All,
        [(e, _)] => match cell_column(e) {
            Some(0) => CellGroups::Row,
            Some(1) => CellGroups::Col,
            _ => return Ok(None),
        },
        _ => return Ok(None),
    };
    if first.filter_expr().iter().any(Option::is_some) {
        return Ok(None);
    }
    let mut aggregates = Vec::with_capacity(first.aggr_expr().len());
    for agg in first.aggr_expr() {
        if agg.is_distinct() || !agg.order_bys().is_empty() {
            return Ok(None);
        }
        let args = agg.expressions();
        let kind = match (agg.fun().name(), args.as_slice()) {
            ("count", [arg]) => {
                let counts_cells = cell_column(arg).is_some()
                    || arg
                        .downcast_ref::<Literal>()
                        .is_some_and(|l| !l.value().is_null());
                if !counts_cells {
                    return Ok(None);
                }
                CellAggregate::Count
            }
            ("sum", [arg]) if cell_column(arg) == Some(2) => CellAggregate::Sum,
            ("min", [arg]) if cell_column(arg) == Some(2) => CellAggregate::Min,
            ("max", [arg]) if cell_column(arg) == Some(2) => CellAggregate::Max,
            ("avg", [arg]) if cell_column(arg) == Some(2) => CellAggregate::Avg,
            _ => return Ok(None),
        };
        aggregates.push(kind);
    }
    let folded: Arc<dyn ExecutionPlan> = Arc::new(BlockAggregateExec::try_new(
        la,
        groups,
        aggregates,
        node.schema(),
    )?);
    // The replaced aggregate's parent was planned for its partitioning: give it that.
    let wanted = node.properties().output_partitioning().clone();
    Ok(Some(match wanted {
        p if p.partition_count() <= 1 => folded,
        p @ Partitioning::Hash(..) => Arc::new(RepartitionExec::try_new(folded, p)?),
        p => Arc::new(RepartitionExec::try_new(
            folded,
            Partitioning::RoundRobinBatch(p.partition_count()),
        )?),
    }))
}

/// `plan` below the exchanges and batch coalescing between two aggregate phases.
fn through_exchanges(plan: &Arc<dyn ExecutionPlan>) -> &Arc<dyn ExecutionPlan> {
    let mut node = look_through(plan);
    while node.downcast_ref::<RepartitionExec>().is_some() {
        match node.children().as_slice() {
            [only] => node = look_through(only),
            _ => break,
        }
    }
    node
}

/// The matrix operator whose cells `plan` passes on, and for each of `plan`'s columns
/// which cell column it is, if `plan` is such an operator under exchanges and column
/// selections.
fn cells_source(plan: &Arc<dyn ExecutionPlan>) -> Option<(Arc<dyn ExecutionPlan>, Vec<usize>)> {
    let node = through_exchanges(plan);
    if let Some(projection) = node.downcast_ref::<ProjectionExec>() {
        let (la, below) = cells_source(projection.input())?;
        let columns = projection
            .expr()
            .iter()
            .map(|p| {
                p.expr
                    .downcast_ref::<Column>()
                    .and_then(|c| below.get(c.index()).copied())
            })
            .collect::<Option<Vec<_>>>()?;
        return Some((la, columns));
    }
    if node
        .downcast_ref::<BlockCellsExec>()
        .is_some_and(|c| !c.one_cell)
    {
        return Some((Arc::clone(node), vec![0, 1, 2]));
    }
    let la = node.downcast_ref::<LaExec>()?;
    let scalar = matches!(la.op(), Op::Reduce(r) if r.is_scalar());
    // A scalar reduction emits its one cell even when it is zero.
    (la.output() == Output::Cells && !scalar).then(|| (Arc::clone(node), vec![0, 1, 2]))
}
