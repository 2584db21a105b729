//! Block products of joined block pairs, summed per output block within a partition.

use std::fmt;
use std::sync::Arc;

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result, exec_err};
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::MemoryConsumer;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricBuilder, MetricsSet};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, ExecutionPlanProperties,
    Partitioning, PlanProperties, SendableRecordBatchStream,
};
use futures::TryStreamExt;

use datafusion::physical_expr::expressions::Column;

use super::{
    BI, BJ, BLOCK_STREAM_WIDTH, BlockBatches, BlockRows, batches_stream, partial_stream_schema,
};
use crate::error::blocking;
use crate::la::matrix::block_bytes;
use crate::la::ops::Acc;

/// The input columns that hold an output block's row key `i` and column key `j`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputKeys {
    /// Columns equal to `i`.
    pub i: Vec<usize>,
    /// Columns equal to `j`.
    pub j: Vec<usize>,
}

impl OutputKeys {
    fn placed_by_output(&self, exprs: &[Arc<dyn PhysicalExpr>]) -> bool {
        let at = |e: &Arc<dyn PhysicalExpr>| e.downcast_ref::<Column>().map(|c| c.index());
        match exprs {
            [x, y] => {
                at(x).is_some_and(|c| self.i.contains(&c))
                    && at(y).is_some_and(|c| self.j.contains(&c))
            }
            _ => false,
        }
    }
}

/// Multiplies, for each input row, the block `A(i, k)` whose block stream columns start
/// at `a_at` with the block `B(k, j)` starting at `b_at` (the row of a join on `k`), and
/// keeps one partial sum per output block `(i, j)`, adding its products in `k` order;
/// emits the partials as a partial block stream keyed `(i, j)`, each ordered by its
/// first `k`, when its input partition ends. Partials are charged to the memory pool.
///
/// With `exact`, every product is a partial of its own, ordered by its `k`, and runs on
/// one thread: the block sum then adds a block's products one at a time in `k` order,
/// so the result is the same to the bit however the join spread `k` over partitions (a
/// retry on fewer workers gives the first attempt's answer).
#[derive(Debug)]
pub struct BlockProductExec {
    input: Arc<dyn ExecutionPlan>,
    pub(crate) a_at: usize,
    pub(crate) b_at: usize,
    pub(crate) keys: OutputKeys,
    pub(crate) single: bool,
    pub(crate) exact: bool,
    props: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl BlockProductExec {
    /// Products of the rows of `input`, with `A`'s block stream at column `a_at` and
    /// `B`'s at `b_at`.
    pub fn try_new(input: Arc<dyn ExecutionPlan>, a_at: usize, b_at: usize) -> Result<Self> {
        let keys = OutputKeys {
            i: vec![a_at],
            j: vec![b_at + 1],
        };
        Self::with_keys(input, a_at, b_at, keys)
    }

    /// The same operator in exact mode: each product a partial of its own.
    pub(crate) fn exact_copy(&self) -> Result<Self> {
        let mut exec = Self::with_keys(
            Arc::clone(&self.input),
            self.a_at,
            self.b_at,
            self.keys.clone(),
        )?;
        exec.single = self.single;
        exec.exact = true;
        Ok(exec)
    }

    /// [`BlockProductExec::try_new`] making every product in one partition (the local
    /// strategy): it requires its input in one partition, so the products are one task.
    pub fn single(input: Arc<dyn ExecutionPlan>, a_at: usize, b_at: usize) -> Result<Self> {
        let mut exec = Self::try_new(input, a_at, b_at)?;
        exec.single = true;
        Ok(exec)
    }

    /// [`BlockProductExec::try_new`] where the input columns `keys` also hold the output
    /// block's `i` and `j`: when the input is hash-partitioned on one of each (in that
    /// order), every output block `(i, j)` is made in one partition only, and the output
    /// declares `Hash([bi, bj])`, so the block sum above needs no exchange.
    pub fn with_keys(
        input: Arc<dyn ExecutionPlan>,
        a_at: usize,
        b_at: usize,
        keys: OutputKeys,
    ) -> Result<Self> {
        let width = input.schema().fields().len();
        for at in [a_at, b_at] {
            if at + BLOCK_STREAM_WIDTH > width {
                return exec_err!(
                    "BlockProductExec: a block stream at column {at} does not fit in {width} columns"
                );
            }
        }
        let parts = input.output_partitioning().partition_count();
        let partitioning = match input.output_partitioning() {
            Partitioning::Hash(exprs, n) if keys.placed_by_output(exprs) => Partitioning::Hash(
                vec![
                    Arc::new(Column::new(BI, 0)) as Arc<dyn PhysicalExpr>,
                    Arc::new(Column::new(BJ, 1)),
                ],
                *n,
            ),
            _ => Partitioning::UnknownPartitioning(parts),
        };
        let props = PlanProperties::new(
            EquivalenceProperties::new(partial_stream_schema()),
            partitioning,
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Ok(Self {
            input,
            a_at,
            b_at,
            keys,
            single: false,
            exact: false,
            props: Arc::new(props),
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }
}

impl DisplayAs for BlockProductExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let DisplayFormatType::TreeRender = t {
            writeln!(f, "A(i, k) at={}", self.a_at)?;
            writeln!(f, "B(k, j) at={}", self.b_at)?;
            if self.exact {
                writeln!(f, "partials=each product, by (i, j, k)")?;
            } else {
                writeln!(f, "partial sums by=(i, j)")?;
            }
            return writeln!(
                f,
                "partitions={}",
                if self.single { "one" } else { "input's" }
            );
        }
        write!(
            f,
            "BlockProductExec: A(i, k) at column {} times B(k, j) at column {}, {}{}",
            self.a_at,
            self.b_at,
            if self.exact {
                "each product a partial (exact)"
            } else {
                "partial sums by (i, j)"
            },
            if self.single {
                ", in one partition"
            } else {
                ""
            }
        )
    }
}

impl ExecutionPlan for BlockProductExec {
    fn name(&self) -> &str {
        "BlockProductExec"
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
            vec![Distribution::UnspecifiedDistribution]
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
            (Some(input), true) => {
                let mut exec = Self::with_keys(input, self.a_at, self.b_at, self.keys.clone())?;
                exec.single = self.single;
                exec.exact = self.exact;
                Ok(Arc::new(exec))
            }
            _ => exec_err!("BlockProductExec takes one child"),
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
        let (a_at, b_at) = (self.a_at, self.b_at);
        // With a partition per core, each product runs on one core; with fewer
        // partitions than cores, the kernels spread over the pool.
        let cores = tessera_storage::kernels::cpu_pool().current_num_threads();
        let exact = self.exact;
        let seq = exact || self.props.partitioning.partition_count() >= cores;
        let products = MetricBuilder::new(&self.metrics).counter("block_products", partition);
        let output_rows = MetricBuilder::new(&self.metrics).output_rows(partition);
        let elapsed = MetricBuilder::new(&self.metrics).elapsed_compute(partition);
        let reservation = MemoryConsumer::new(format!("BlockProductExec[{partition}]"))
            .register(context.memory_pool());
        let schema = self.schema();
        Ok(batches_stream(schema, async move {
            let batches: Vec<_> = input.try_collect().await?;
            let timer = elapsed.timer();
            let (batches, products_done) = blocking(move || {
                let reservation = reservation;
                // Every joined pair by output block, then by `k`: each partial is summed
                // in `k` order, whatever order the join produced the pairs in.
                let mut pairs = Vec::new();
                let mut rows = Vec::with_capacity(batches.len());
                for (b, batch) in batches.iter().enumerate() {
                    let (a, bb) = (BlockRows::new(batch, a_at)?, BlockRows::new(batch, b_at)?);
                    for row in 0..a.len() {
                        let ((i, k), (_, j)) = (a.key(row), bb.key(row));
                        pairs.push(((i, j), k, b, row));
                    }
                    rows.push((a, bb));
                }
                pairs.sort_unstable();
                let count = pairs.len();
                let mut out = BlockBatches::partials();
                let mut held = 0usize;
                // Exact: a run is one product, not every product of an output block.
                for run in pairs.chunk_by(|x, y| x.0 == y.0 && (!exact || x.1 == y.1)) {
                    let mut partial: Option<Acc> = None;
                    for &(_, _, b, row) in run {
                        let (a, bb) = &rows[b];
                        Acc::add_product(&mut partial, &a.block(row)?, &bb.block(row)?, seq)?;
                    }
                    let Some(partial) = partial else { continue };
                    let block = partial.into_block();
                    reservation
                        .try_grow(block_bytes(&block) as usize)
                        .map_err(|e| exhausted(e, held))?;
                    held += 1;
                    if block.nnz() > 0 {
                        let ((i, j), k, ..) = run[0];
                        out.push_partial(i, j, k, &block)?;
                    }
                }
                drop(rows);
                let batches = out.finish()?;
                // The partials now live in the emitted batches, which their consumer
                // holds and charges.
                reservation.free();
                Ok::<_, DataFusionError>((batches, count))
            })
            .await?;
            timer.done();
            products.add(products_done);
            for b in &batches {
                output_rows.add(b.num_rows());
            }
            Ok(batches)
        }))
    }
}

fn exhausted(e: DataFusionError, blocks: usize) -> DataFusionError {
    DataFusionError::ResourcesExhausted(format!(
        "BlockProductExec: the partial sums of {blocks} output blocks do not fit the session's memory budget: {e}"
    ))
}
