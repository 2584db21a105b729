//! From blocks to cells: the `(i, j, v)` rows of a matrix that a block dataflow
//! computed, made partition by partition as its blocks arrive.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{Result, exec_err};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::Distribution;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricBuilder, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PlanProperties, SendableRecordBatchStream,
};
use futures::{StreamExt, TryStreamExt};

use super::{BI, BlockRows, CellBatches, batches_stream, flatten, is_block_stream};
use crate::la::exec::{FlowGeometry, cells_schema};

/// The non-zero cells of the matrix whose blocks `input` streams, as `(i, j, v)` rows:
/// each partition turns the blocks it receives into rows, one input batch at a time, so
/// no partition waits for the whole matrix and nothing holds it. The 1 x 1 result of a
/// scalar reduction (`one_cell`) is read in one partition and is always one row, zero
/// or not, as SQL's aggregates are.
#[derive(Debug)]
pub struct BlockCellsExec {
    input: Arc<dyn ExecutionPlan>,
    geometry: FlowGeometry,
    pub(crate) planned: Planned,
    pub(crate) one_cell: bool,
    props: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

/// What the planner chose for a dataflow (the operation, strategy and estimates), as
/// EXPLAIN shows it: one line, and `key=value` lines for its tree and graphviz forms.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Planned {
    /// The one-line form.
    pub line: String,
    /// The `key=value` lines.
    pub tree: String,
}

impl BlockCellsExec {
    /// The cells of the blocks of `input`, a matrix of `geometry`; `planned` is what the
    /// planner chose for it (the operation, strategy and estimates), shown in EXPLAIN.
    pub fn try_new(
        input: Arc<dyn ExecutionPlan>,
        geometry: FlowGeometry,
        planned: Planned,
    ) -> Result<Self> {
        let schema = input.schema();
        if !is_block_stream(&schema) || schema.field(0).name() != BI {
            return exec_err!("BlockCellsExec: the input is not a block stream");
        }
        let parts = input.output_partitioning().partition_count();
        let props = PlanProperties::new(
            EquivalenceProperties::new(cells_schema()),
            Partitioning::UnknownPartitioning(parts),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(Self {
            input,
            geometry,
            planned,
            one_cell: false,
            props: Arc::new(props),
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }

    /// The one cell of a scalar reduction's 1 x 1 result, a row even when it is zero.
    /// It requires its input in one partition.
    pub fn one_cell(
        input: Arc<dyn ExecutionPlan>,
        geometry: FlowGeometry,
        planned: Planned,
    ) -> Result<Self> {
        let mut cells = Self::try_new(input, geometry, planned)?;
        cells.one_cell = true;
        cells.props = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(cells_schema()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        ));
        Ok(cells)
    }

    /// The same operator over `input`.
    pub(crate) fn with_input(&self, input: Arc<dyn ExecutionPlan>) -> Result<Self> {
        if self.one_cell {
            Self::one_cell(input, self.geometry, self.planned.clone())
        } else {
            Self::try_new(input, self.geometry, self.planned.clone())
        }
    }

    /// The block stream whose cells this makes.
    pub fn input(&self) -> &Arc<dyn ExecutionPlan> {
        &self.input
    }

    /// The shape and block size of the matrix.
    pub fn geometry(&self) -> FlowGeometry {
        self.geometry
    }
}

impl DisplayAs for BlockCellsExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let FlowGeometry { shape, block } = self.geometry;
        if let DisplayFormatType::TreeRender = t {
            writeln!(f, "shape={}x{}", shape.0, shape.1)?;
            writeln!(f, "blocks={}x{}", block.0, block.1)?;
            return f.write_str(&self.planned.tree);
        }
        write!(
            f,
            "BlockCellsExec: (i, j, v) of {}x{} in {}x{} blocks{}, {}",
            shape.0,
            shape.1,
            block.0,
            block.1,
            if self.one_cell { ", its one cell" } else { "" },
            self.planned.line
        )
    }
}

impl ExecutionPlan for BlockCellsExec {
    fn name(&self) -> &str {
        "BlockCellsExec"
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

    fn required_input_distribution(&self) -> Vec<Distribution> {
        if self.one_cell {
            vec![Distribution::SinglePartition]
        } else {
            vec![Distribution::UnspecifiedDistribution]
        }
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
            (Some(input), true) => Ok(Arc::new(self.with_input(input)?)),
            _ => exec_err!("BlockCellsExec takes one child"),
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
        let batch_size = context.session_config().batch_size().max(1);
        let input = self.input.execute(partition, context)?;
        let output_rows = MetricBuilder::new(&self.metrics).output_rows(partition);
        let elapsed = MetricBuilder::new(&self.metrics).elapsed_compute(partition);
        let block = self.geometry.block;
        let schema = self.schema();
        let out_schema = schema.clone();
        if self.one_cell {
            return Ok(batches_stream(schema, async move {
                let batches: Vec<RecordBatch> = input.try_collect().await?;
                let mut value = 0.0;
                for b in &batches {
                    let rows = BlockRows::new(b, 0)?;
                    for row in 0..rows.len() {
                        value = rows.block(row)?.get(0, 0);
                    }
                }
                let mut out = CellBatches::new(out_schema, 1);
                out.push(0, 0, value);
                let out = out.finish()?;
                output_rows.add(out.iter().map(RecordBatch::num_rows).sum());
                Ok(out)
            }));
        }
        let stream = flatten(input.map(move |batch| {
            let timer = elapsed.timer();
            let out = batch.and_then(|b| cell_batches(&b, block, batch_size, &out_schema));
            timer.done();
            if let Ok(batches) = &out {
                output_rows.add(batches.iter().map(RecordBatch::num_rows).sum());
            }
            out
        }));
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

/// The non-zero cells of the blocks of `batch`, at most `batch_size` rows a batch.
fn cell_batches(
    batch: &RecordBatch,
    (br, bc): (u64, u64),
    batch_size: usize,
    schema: &datafusion::arrow::datatypes::SchemaRef,
) -> Result<Vec<RecordBatch>> {
    let rows = BlockRows::new(batch, 0)?;
    let mut out = CellBatches::new(schema.clone(), batch_size);
    for row in 0..rows.len() {
        let (bi, bj) = rows.key(row);
        out.push_block(((bi * br) as i64, (bj * bc) as i64), &rows.block(row)?)?;
    }
    out.finish()
}
