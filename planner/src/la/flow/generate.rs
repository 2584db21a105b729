//! Matrices made from nothing, block by block: `eye(n)` and `rand(...)`. Each block is
//! made on its own (`rand` draws each from its own streams), so the blocks are spread
//! over the partitions and made where they land, with no exchange.

use std::fmt;
use std::sync::Arc;

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{Result, exec_err};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricBuilder, MetricsSet};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};

use super::{BI, BJ, BlockBatches, batches_stream, block_stream_schema};
use crate::error::blocking;
use crate::la::FlowGeometry;
use crate::la::ops::{Draw, eye_block, rand_block};

/// What a [`BlockGenerateExec`] makes.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Generator {
    /// The identity matrix of the geometry's (square) shape.
    Eye,
    /// Random cells, as `rand` draws them.
    Rand(Draw),
}

/// Makes the blocks of a generated matrix in `parts` partitions. Where this build's
/// hash placement is live, partition `p` makes the blocks DataFusion's hash
/// repartitioning on `(bi, bj)` sends to `p`, and the operator declares
/// `Hash([bi, bj], parts)`, so an elementwise operation or a block sum over it needs
/// no exchange; otherwise block `k` (in row-major order) is made by partition
/// `k mod parts`.
#[derive(Debug)]
pub struct BlockGenerateExec {
    pub(crate) generator: Generator,
    geometry: FlowGeometry,
    props: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl BlockGenerateExec {
    /// The blocks of `generator` for a matrix of `geometry`, in `parts` partitions.
    pub fn new(generator: Generator, geometry: FlowGeometry, parts: usize) -> Self {
        let parts = parts.max(1);
        let partitioning = if crate::partitioning::live_placement().is_some() {
            Partitioning::Hash(
                vec![
                    Arc::new(Column::new(BI, 0)) as Arc<dyn PhysicalExpr>,
                    Arc::new(Column::new(BJ, 1)),
                ],
                parts,
            )
        } else {
            Partitioning::UnknownPartitioning(parts)
        };
        let props = PlanProperties::new(
            EquivalenceProperties::new(block_stream_schema()),
            partitioning,
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Self {
            generator,
            geometry,
            props: Arc::new(props),
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }

    /// The shape and blocking of the matrix made.
    pub fn geometry(&self) -> FlowGeometry {
        self.geometry
    }

    /// The keys of the blocks partition `partition` of `parts` makes: for `eye`, only
    /// blocks the diagonal crosses.
    fn keys(&self, partition: usize, parts: usize) -> Vec<(u64, u64)> {
        let FlowGeometry {
            shape: (rows, cols),
            block: (br, bc),
        } = self.geometry;
        let (gi, gj) = (rows.div_ceil(br.max(1)), cols.div_ceil(bc.max(1)));
        let hashed = matches!(self.props.partitioning, Partitioning::Hash(..));
        let here = |(i, j): (u64, u64)| {
            let at = if hashed {
                tessera_storage::datafusion_hash(&[i as i64, j as i64])
            } else {
                i * gj + j
            };
            (at % parts as u64) as usize == partition
        };
        let mut keys = Vec::new();
        match self.generator {
            Generator::Eye => {
                for i in 0..gi {
                    let (r0, r1) = (i * br, ((i + 1) * br).min(rows));
                    for j in r0 / bc.max(1)..=(r1 - 1) / bc.max(1) {
                        if j < gj && here((i, j)) {
                            keys.push((i, j));
                        }
                    }
                }
            }
            Generator::Rand(_) => {
                for i in 0..gi {
                    for j in 0..gj {
                        if here((i, j)) {
                            keys.push((i, j));
                        }
                    }
                }
            }
        }
        keys
    }
}

impl DisplayAs for BlockGenerateExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let FlowGeometry { shape, block } = self.geometry;
        let what = match self.generator {
            Generator::Eye => "eye".to_string(),
            Generator::Rand(d) => format!(
                "rand(density={}, seed={}, min={}, max={})",
                d.density, d.seed, d.min, d.max
            ),
        };
        if let DisplayFormatType::TreeRender = t {
            writeln!(f, "make={what}")?;
            writeln!(f, "shape={}x{}", shape.0, shape.1)?;
            writeln!(f, "blocks={}x{}", block.0, block.1)?;
            return writeln!(f, "partitioning={}", self.props.partitioning);
        }
        write!(
            f,
            "BlockGenerateExec: {what} {}x{} in {}x{} blocks, partitioning={}",
            shape.0, shape.1, block.0, block.1, self.props.partitioning
        )
    }
}

impl ExecutionPlan for BlockGenerateExec {
    fn name(&self) -> &str {
        "BlockGenerateExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
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
        if !children.is_empty() {
            return exec_err!("BlockGenerateExec has no children");
        }
        Ok(self)
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let parts = self.props.partitioning.partition_count();
        if partition >= parts {
            return exec_err!("BlockGenerateExec: partition {partition} of {parts}");
        }
        let keys = self.keys(partition, parts);
        let (generator, geometry) = (self.generator, self.geometry);
        let output_rows = MetricBuilder::new(&self.metrics).output_rows(partition);
        let elapsed = MetricBuilder::new(&self.metrics).elapsed_compute(partition);
        let schema = self.props.eq_properties.schema().clone();
        Ok(batches_stream(schema, async move {
            let timer = elapsed.timer();
            let batches = blocking(move || {
                let mut out = BlockBatches::new();
                for key in keys {
                    let block = match generator {
                        Generator::Eye => eye_block(geometry.shape.0, geometry.block, key)?,
                        Generator::Rand(draw) => {
                            rand_block(geometry.shape, geometry.block, key, draw)?
                        }
                    };
                    if let Some(block) = block {
                        out.push(key.0, key.1, &block)?;
                    }
                }
                out.finish()
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
