//! `solve`, `inv` and `cholesky` in a dataflow: their operands' blocks gathered into
//! one partition, where faer factors the matrix, and the result's blocks streamed on.

use std::fmt;
use std::sync::Arc;

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{Result, exec_err};
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::MemoryConsumer;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricBuilder, MetricsSet};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};
use futures::TryStreamExt;

use super::{BI, BlockBatches, batches_stream, block_stream_schema, is_block_stream};
use crate::error::blocking;
use crate::la::exec::FlowGeometry;
use crate::la::matrix::BlockMatrix;
use crate::la::ops;

/// A dense factorization that needs its whole operands in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Gathered {
    /// `solve(a, b)`: `x` with `a x = b`.
    Solve,
    /// `inv(a)`.
    Inv,
    /// `cholesky(a)`: lower-triangular `l` with `l t(l) = a`.
    Cholesky,
}

impl Gathered {
    fn name(self) -> &'static str {
        match self {
            Gathered::Solve => "solve",
            Gathered::Inv => "inv",
            Gathered::Cholesky => "cholesky",
        }
    }

    /// Operands it takes.
    pub fn arity(self) -> usize {
        match self {
            Gathered::Solve => 2,
            Gathered::Inv | Gathered::Cholesky => 1,
        }
    }
}

/// Gathers the blocks of its inputs (matrices of `geometries`) into its one partition,
/// charges them and the result to the memory pool, runs `op` with faer, and streams
/// the result's blocks (of `output`). DataFusion's distribution rule puts the coalesce
/// each input needs below it; in a distributed statement this is one task.
#[derive(Debug)]
pub struct BlockGatherExec {
    inputs: Vec<Arc<dyn ExecutionPlan>>,
    pub(crate) op: Gathered,
    pub(crate) geometries: Vec<FlowGeometry>,
    pub(crate) output: FlowGeometry,
    props: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl BlockGatherExec {
    /// `op` over the block streams `inputs`, matrices of `geometries`; its result is a
    /// matrix of `output`.
    pub fn try_new(
        inputs: Vec<Arc<dyn ExecutionPlan>>,
        op: Gathered,
        geometries: Vec<FlowGeometry>,
        output: FlowGeometry,
    ) -> Result<Self> {
        if inputs.len() != op.arity() || geometries.len() != op.arity() {
            return exec_err!(
                "BlockGatherExec: {} takes {} operands, got {} (and {} geometries)",
                op.name(),
                op.arity(),
                inputs.len(),
                geometries.len()
            );
        }
        if let Some(bad) = inputs
            .iter()
            .find(|i| !is_block_stream(&i.schema()) || i.schema().field(0).name() != BI)
        {
            return exec_err!(
                "BlockGatherExec: input {} is not a block stream",
                bad.name()
            );
        }
        let props = PlanProperties::new(
            EquivalenceProperties::new(block_stream_schema()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Ok(Self {
            inputs,
            op,
            geometries,
            output,
            props: Arc::new(props),
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }
}

impl DisplayAs for BlockGatherExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let FlowGeometry { shape, block } = self.output;
        if let DisplayFormatType::TreeRender = t {
            writeln!(f, "op={}", self.op.name())?;
            return writeln!(f, "shape={}x{}", shape.0, shape.1);
        }
        write!(
            f,
            "BlockGatherExec: {} of the gathered operands (faer), {}x{} in {}x{} blocks",
            self.op.name(),
            shape.0,
            shape.1,
            block.0,
            block.1
        )
    }
}

impl ExecutionPlan for BlockGatherExec {
    fn name(&self) -> &str {
        "BlockGatherExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        self.inputs.iter().collect()
    }

    fn required_input_distribution(&self) -> Vec<Distribution> {
        vec![Distribution::SinglePartition; self.inputs.len()]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false; self.inputs.len()]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(Self::try_new(
            children,
            self.op,
            self.geometries.clone(),
            self.output,
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
            return exec_err!("BlockGatherExec has one partition, not {partition}");
        }
        let streams = self
            .inputs
            .iter()
            .map(|i| i.execute(0, Arc::clone(&context)))
            .collect::<Result<Vec<_>>>()?;
        let reservation = MemoryConsumer::new(format!("BlockGatherExec[{}]", self.op.name()))
            .register(context.memory_pool());
        let (op, geometries, output) = (self.op, self.geometries.clone(), self.output);
        let elapsed = MetricBuilder::new(&self.metrics).elapsed_compute(0);
        let output_rows = MetricBuilder::new(&self.metrics).output_rows(0);
        Ok(batches_stream(block_stream_schema(), async move {
            let mut operands = Vec::with_capacity(streams.len());
            for (stream, geometry) in streams.into_iter().zip(geometries) {
                let batches: Vec<_> = stream.try_collect().await?;
                let m = BlockMatrix::from_block_batches(&batches, geometry, 1)?;
                drop(batches);
                // The operand and its dense copy for faer.
                let (rows, cols) = geometry.shape;
                reservation.try_grow(m.bytes() as usize + (rows * cols * 8) as usize)?;
                operands.push(m);
            }
            let (rows, cols) = output.shape;
            reservation.try_grow((rows * cols * 8) as usize)?;
            let timer = elapsed.timer();
            let result = blocking(move || {
                let mut it = operands.into_iter();
                let mut next = || {
                    it.next().ok_or_else(|| {
                        datafusion::common::DataFusionError::Internal(format!(
                            "{}: an operand is missing",
                            op.name()
                        ))
                    })
                };
                let m = match op {
                    Gathered::Solve => {
                        let (a, b) = (next()?, next()?);
                        ops::solve(a, b, 1)?
                    }
                    Gathered::Inv => ops::inv(next()?, 1)?,
                    Gathered::Cholesky => ops::cholesky(next()?, 1)?,
                };
                let m = m.reblock(output.block.0, output.block.1, 1)?;
                let mut out = BlockBatches::new();
                for (bi, bj, block) in m.tiles() {
                    out.push(*bi, *bj, block)?;
                }
                out.finish()
            })
            .await;
            timer.done();
            drop(reservation);
            let result = result?;
            output_rows.add(result.iter().map(|b| b.num_rows()).sum());
            Ok(result)
        }))
    }
}
