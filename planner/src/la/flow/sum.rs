//! The block-sum aggregate: partial blocks summed by their key.

use std::fmt;
use std::sync::Arc;

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

use super::{BI, BJ, BlockBatches, ORD, batches_stream, block_stream_schema, partial_rows};
use tessera_storage::{Block, DenseBlock};

use crate::error::{blocking, storage_error};
use crate::la::matrix::block_bytes;
use crate::la::ops::{Acc, extreme};

/// How a [`BlockSumExec`] combines the partials of a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum Fold {
    /// Added cell by cell, in the partials' order.
    #[default]
    Sum,
    /// The smallest (`max: false`) or largest value of 1 x 1 partials, one from each
    /// of the `blocks` blocks of a matrix; a block with no partial is all zeros, so
    /// fewer partials than `blocks` bring a 0 in. NaN if any partial is NaN.
    Extreme {
        /// The largest rather than the smallest.
        max: bool,
        /// The blocks of the matrix reduced.
        blocks: u64,
    },
}

impl Fold {
    fn name(self) -> &'static str {
        match self {
            Fold::Sum => "sum",
            Fold::Extreme { max: false, .. } => "min",
            Fold::Extreme { max: true, .. } => "max",
        }
    }
}

/// Sums the partials of its input (a partial block stream) by `(bi, bj)` (or, with a
/// [`Fold::Extreme`], takes their smallest or largest value). It requires
/// its input hash-partitioned on `(bi, bj)`, so every partial of an output block is in
/// one partition: DataFusion's distribution rule plans the exchange below it (a hash
/// repartition) unless the input is already partitioned so. The partials of a block are
/// added in the order of their [`ORD`](super::ORD) column, not in the order they
/// arrive, so a sum does not depend on how the exchanges interleaved. The sums are
/// charged to the memory pool as they are made.
#[derive(Debug)]
pub struct BlockSumExec {
    input: Arc<dyn ExecutionPlan>,
    pub(crate) single: bool,
    pub(crate) fold: Fold,
    props: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

fn keys() -> Vec<Arc<dyn PhysicalExpr>> {
    vec![Arc::new(Column::new(BI, 0)), Arc::new(Column::new(BJ, 1))]
}

impl BlockSumExec {
    /// Sums of the block stream `input`.
    pub fn try_new(input: Arc<dyn ExecutionPlan>) -> Result<Self> {
        Self::build(input, false, Fold::Sum)
    }

    /// The sums of all partials in one partition, after a coalesce (the partials of
    /// tsmm and mmchain, or a local product).
    pub fn single(input: Arc<dyn ExecutionPlan>) -> Result<Self> {
        Self::build(input, true, Fold::Sum)
    }

    /// The partials of the block stream `input` combined by `fold`, by `(bi, bj)`.
    pub fn folding(input: Arc<dyn ExecutionPlan>, fold: Fold) -> Result<Self> {
        Self::build(input, false, fold)
    }

    pub(crate) fn build(input: Arc<dyn ExecutionPlan>, single: bool, fold: Fold) -> Result<Self> {
        if input.schema().column_with_name(ORD).is_none() {
            return exec_err!("BlockSumExec: the input is not a partial block stream");
        }
        let parts = input.output_partitioning().partition_count();
        let partitioning = if single {
            Partitioning::UnknownPartitioning(1)
        } else {
            Partitioning::Hash(keys(), parts)
        };
        let props = PlanProperties::new(
            EquivalenceProperties::new(block_stream_schema()),
            partitioning,
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Ok(Self {
            input,
            single,
            fold,
            props: Arc::new(props),
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }
}

impl DisplayAs for BlockSumExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fold = self.fold.name();
        if let DisplayFormatType::TreeRender = t {
            writeln!(f, "{fold} by=(bi, bj)")?;
            return writeln!(
                f,
                "partitions={}",
                if self.single { "one" } else { "input's" }
            );
        }
        if self.single {
            write!(f, "BlockSumExec: {fold} by (bi, bj) in one partition")
        } else {
            write!(f, "BlockSumExec: {fold} by (bi, bj)")
        }
    }
}

impl ExecutionPlan for BlockSumExec {
    fn name(&self) -> &str {
        "BlockSumExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn required_input_distribution(&self) -> Vec<Distribution> {
        if self.single {
            vec![Distribution::SinglePartition]
        } else {
            vec![Distribution::KeyPartitioned(keys())]
        }
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
            (Some(input), true) => Ok(Arc::new(Self::build(input, self.single, self.fold)?)),
            _ => exec_err!("BlockSumExec takes one child"),
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
        let output_rows = MetricBuilder::new(&self.metrics).output_rows(partition);
        let blocks_in = MetricBuilder::new(&self.metrics).counter("blocks_in", partition);
        let elapsed = MetricBuilder::new(&self.metrics).elapsed_compute(partition);
        let reservation = MemoryConsumer::new(format!("BlockSumExec[{partition}]"))
            .register(context.memory_pool());
        let schema = self.schema();
        let fold = self.fold;
        Ok(batches_stream(schema, async move {
            let batches: Vec<_> = input.try_collect().await?;
            let timer = elapsed.timer();
            let (batches, count) = blocking(move || {
                let reservation = reservation;
                let mut partials = Vec::new();
                let mut blocks = Vec::with_capacity(batches.len());
                for (b, batch) in batches.iter().enumerate() {
                    let (rows, ord) = partial_rows(batch)?;
                    for row in 0..rows.len() {
                        partials.push((rows.key(row), ord.value(row), b, row));
                    }
                    blocks.push(rows);
                }
                partials.sort_unstable();
                let count = partials.len();
                let mut out = BlockBatches::new();
                for run in partials.chunk_by(|x, y| x.0 == y.0) {
                    let block = match fold {
                        Fold::Sum => {
                            let mut sum: Option<Acc> = None;
                            for &(_, _, b, row) in run {
                                Acc::add_block(&mut sum, blocks[b].block(row)?)?;
                            }
                            let Some(sum) = sum else { continue };
                            sum.into_block().into_preferred_format()
                        }
                        Fold::Extreme { max, blocks: all } => {
                            let mut values = Vec::with_capacity(run.len() + 1);
                            for &(_, _, b, row) in run {
                                values.push(blocks[b].block(row)?.get(0, 0));
                            }
                            if (run.len() as u64) < all {
                                values.push(0.0);
                            }
                            extreme_block(&values, max)?
                        }
                    };
                    reservation
                        .try_grow(block_bytes(&block) as usize)
                        .map_err(|e| {
                            DataFusionError::ResourcesExhausted(format!(
                                "BlockSumExec: the block sums do not fit the session's memory budget: {e}"
                            ))
                        })?;
                    if block.nnz() > 0 {
                        let (i, j) = run[0].0;
                        out.push(i, j, &block)?;
                    }
                }
                drop(blocks);
                drop(batches);
                let batches = out.finish()?;
                reservation.free();
                Ok::<_, DataFusionError>((batches, count))
            })
            .await?;
            timer.done();
            blocks_in.add(count);
            for b in &batches {
                output_rows.add(b.num_rows());
            }
            Ok(batches)
        }))
    }
}

/// The smallest (largest) of `values`, NaN if any is NaN, as a 1 x 1 block.
fn extreme_block(values: &[f64], max: bool) -> Result<Block> {
    let v = values
        .iter()
        .copied()
        .reduce(|x, y| extreme(x, y, max))
        .unwrap_or(0.0);
    let block = DenseBlock::new(1, 1, vec![v]).map_err(storage_error)?;
    Ok(Block::Dense(block))
}
