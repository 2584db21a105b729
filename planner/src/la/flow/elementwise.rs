//! Elementwise operations as a block operator: the blocks of one or more matrices of
//! the same shape and blocking, met on their key `(i, j)` and computed by one fused
//! program per key, with no intermediate block.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result, exec_err};
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::MemoryConsumer;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricBuilder, MetricsSet};
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, ExecutionPlanProperties,
    Partitioning, PlanProperties, SendableRecordBatchStream,
};
use futures::{StreamExt, TryStreamExt};
use tessera_storage::Block;
use tessera_storage::kernels::Step;

use super::{BI, BJ, BlockBatches, BlockRows, batches_stream, block_stream_schema, flatten};
use super::{is_block_stream, map::is_bi_bj};
use crate::error::blocking;
use crate::la::exec::FlowGeometry;
use crate::la::ops::{fused_block, fused_key, fused_sparse_safe};

/// How the operator meets its inputs' blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Meet {
    /// One input and zero maps to zero: each block is mapped where it is, as it comes.
    Map,
    /// Every input hash-partitioned on `(i, j)` alike, partition `p` with partition
    /// `p`; keys no input stores are made where the hash puts them when the program
    /// turns zeros into non-zeros.
    Hashed,
    /// Zeros become non-zeros and this build cannot tell which partition the hash puts
    /// a key in: every block in one partition.
    Single,
}

/// The fused elementwise program `steps` over the block streams `inputs` (leaf `k` is
/// input `k`), each a matrix of `geometry`. Blocks with no non-zero cell are left out.
#[derive(Debug)]
pub struct BlockElementwiseExec {
    inputs: Vec<Arc<dyn ExecutionPlan>>,
    pub(crate) steps: Vec<Step>,
    geometry: FlowGeometry,
    meet: Meet,
    props: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

fn keys() -> Vec<Arc<dyn PhysicalExpr>> {
    vec![Arc::new(Column::new(BI, 0)), Arc::new(Column::new(BJ, 1))]
}

impl BlockElementwiseExec {
    /// `steps` over `inputs`, matrices of `geometry`.
    pub fn try_new(
        inputs: Vec<Arc<dyn ExecutionPlan>>,
        steps: Vec<Step>,
        geometry: FlowGeometry,
    ) -> Result<Self> {
        if inputs.is_empty() || steps.is_empty() {
            return exec_err!("BlockElementwiseExec: needs inputs and a program");
        }
        for input in &inputs {
            let schema = input.schema();
            if !is_block_stream(&schema) || schema.field(0).name() != BI {
                return exec_err!("BlockElementwiseExec: an input is not a block stream");
            }
        }
        let sparse_safe = fused_sparse_safe(&steps, inputs.len());
        let meet = if inputs.len() == 1 && sparse_safe {
            Meet::Map
        } else if sparse_safe || crate::partitioning::live_placement().is_some() {
            Meet::Hashed
        } else {
            Meet::Single
        };
        let inputs = match meet {
            Meet::Hashed => align(inputs)?,
            _ => inputs,
        };
        let partitioning = match meet {
            Meet::Map => inputs[0].output_partitioning().clone(),
            Meet::Hashed => {
                Partitioning::Hash(keys(), inputs[0].output_partitioning().partition_count())
            }
            Meet::Single => Partitioning::UnknownPartitioning(1),
        };
        let props = PlanProperties::new(
            EquivalenceProperties::new(block_stream_schema()),
            partitioning,
            match meet {
                Meet::Map => EmissionType::Incremental,
                _ => EmissionType::Final,
            },
            Boundedness::Bounded,
        );
        Ok(Self {
            inputs,
            steps,
            geometry,
            meet,
            props: Arc::new(props),
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }

    /// The shape and blocking of the result.
    pub fn geometry(&self) -> FlowGeometry {
        self.geometry
    }
}

/// Brings the inputs to one partitioning, so that partition `p` of every input holds
/// the same keys: an input already hash-partitioned on `(i, j)` into the most partitions
/// any input has (or, when that is one, any input of one partition) is kept; the others
/// are hash-repartitioned on `(i, j)` into that many. DataFusion's distribution rule
/// accepts any count, and one partition, as meeting a key requirement, so inputs it
/// leaves alone can differ; this evens them out.
fn align(inputs: Vec<Arc<dyn ExecutionPlan>>) -> Result<Vec<Arc<dyn ExecutionPlan>>> {
    let count = |p: &Arc<dyn ExecutionPlan>| p.output_partitioning().partition_count();
    let most = inputs.iter().map(count).max().unwrap_or(1);
    let placed = |p: &Arc<dyn ExecutionPlan>| {
        count(p) == most
            && (most == 1
                || matches!(p.output_partitioning(), Partitioning::Hash(k, _) if is_bi_bj(k)))
    };
    inputs
        .into_iter()
        .map(|p| {
            if placed(&p) {
                return Ok(p);
            }
            // An exchange placed here before is replaced, not stacked.
            let p = match p.downcast_ref::<RepartitionExec>() {
                Some(r) => Arc::clone(r.input()),
                None => p,
            };
            Ok(Arc::new(RepartitionExec::try_new(
                p,
                Partitioning::Hash(keys(), most),
            )?) as Arc<dyn ExecutionPlan>)
        })
        .collect()
}

impl DisplayAs for BlockElementwiseExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let meet = match self.meet {
            Meet::Map => "each block where it is",
            Meet::Hashed => "on (bi, bj), partition p with partition p",
            Meet::Single => "in one partition",
        };
        if let DisplayFormatType::TreeRender = t {
            writeln!(f, "inputs={}", self.inputs.len())?;
            writeln!(f, "steps={}", self.steps.len())?;
            return writeln!(f, "meet={meet}");
        }
        write!(
            f,
            "BlockElementwiseExec: {} steps over {} inputs, {meet}",
            self.steps.len(),
            self.inputs.len()
        )
    }
}

impl ExecutionPlan for BlockElementwiseExec {
    fn name(&self) -> &str {
        "BlockElementwiseExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        self.inputs.iter().collect()
    }

    fn required_input_distribution(&self) -> Vec<Distribution> {
        let each = match self.meet {
            Meet::Map => Distribution::UnspecifiedDistribution,
            Meet::Hashed => Distribution::KeyPartitioned(keys()),
            Meet::Single => Distribution::SinglePartition,
        };
        vec![each; self.inputs.len()]
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
            self.steps.clone(),
            self.geometry,
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
        let output_rows = MetricBuilder::new(&self.metrics).output_rows(partition);
        let elapsed = MetricBuilder::new(&self.metrics).elapsed_compute(partition);
        let schema = self.schema();
        let steps = Arc::new(self.steps.clone());
        if self.meet == Meet::Map {
            let input = self.inputs[0].execute(partition, context)?;
            let stream = flatten(input.map(move |batch| {
                let batch = batch?;
                let timer = elapsed.timer();
                let out = map_batch(&steps, &batch)?;
                timer.done();
                output_rows.add(out.iter().map(RecordBatch::num_rows).sum());
                Ok(out)
            }));
            return Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)));
        }
        let streams = self
            .inputs
            .iter()
            .map(|input| input.execute(partition, context.clone()))
            .collect::<Result<Vec<_>>>()?;
        let reservation = MemoryConsumer::new(format!("BlockElementwiseExec[{partition}]"))
            .register(context.memory_pool());
        let parts = self.props.partitioning.partition_count();
        // The keys this partition makes although no input stores them.
        let fill = !fused_sparse_safe(&self.steps, self.inputs.len());
        let geometry = self.geometry;
        let this_grid = {
            let FlowGeometry {
                shape: (rows, cols),
                block: (br, bc),
            } = geometry;
            (
                rows.div_ceil(br.max(1)).max(1),
                cols.div_ceil(bc.max(1)).max(1),
            )
        };
        Ok(batches_stream(schema, async move {
            let mut inputs: Vec<Vec<RecordBatch>> = Vec::with_capacity(streams.len());
            for stream in streams {
                let batches: Vec<RecordBatch> = stream.try_collect().await?;
                let bytes: usize = batches.iter().map(RecordBatch::get_array_memory_size).sum();
                reservation.try_grow(bytes).map_err(|e| {
                    DataFusionError::ResourcesExhausted(format!(
                        "elementwise: the blocks of one partition do not fit the session's memory budget: {e}"
                    ))
                })?;
                inputs.push(batches);
            }
            let timer = elapsed.timer();
            let batches = blocking(move || {
                let reservation = reservation;
                let mut maps: Vec<HashMap<(u64, u64), Arc<Block>>> = Vec::new();
                let mut keys = BTreeSet::new();
                for batches in &inputs {
                    let mut map = HashMap::new();
                    for batch in batches {
                        let rows = BlockRows::new(batch, 0)?;
                        for row in 0..rows.len() {
                            keys.insert(rows.key(row));
                            map.insert(rows.key(row), Arc::new(rows.block(row)?));
                        }
                    }
                    maps.push(map);
                }
                drop(inputs);
                if fill {
                    let (gi, gj) = this_grid;
                    for i in 0..gi {
                        for j in 0..gj {
                            let here = parts == 1
                                || (tessera_storage::datafusion_hash(&[i as i64, j as i64])
                                    % parts as u64) as usize
                                    == partition;
                            if here {
                                keys.insert((i, j));
                            }
                        }
                    }
                }
                let mut zeros: Vec<f64> = Vec::new();
                let mut out = BlockBatches::new();
                for key in keys {
                    let (r, c) = geometry.block_shape(key);
                    if zeros.len() < r * c {
                        zeros.resize(r * c, 0.0);
                    }
                    let present: Vec<Option<&Arc<Block>>> =
                        maps.iter().map(|m| m.get(&key)).collect();
                    let block = fused_block(&steps, fused_key(&steps, (r, c), &present, &zeros)?)?;
                    if block.nnz() > 0 {
                        out.push(key.0, key.1, &block)?;
                    }
                }
                let batches = out.finish()?;
                reservation.free();
                Ok(batches)
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

/// The program on every block of `batch` (one input, zero maps to zero).
fn map_batch(steps: &[Step], batch: &RecordBatch) -> Result<Vec<RecordBatch>> {
    let rows = BlockRows::new(batch, 0)?;
    let mut out = BlockBatches::new();
    for row in 0..rows.len() {
        let (i, j) = rows.key(row);
        let block = Arc::new(rows.block(row)?);
        let present = [Some(&block)];
        // The one leaf is present, so no zeros are read.
        let result = fused_block(steps, fused_key(steps, block.shape(), &present, &[])?)?;
        if result.nnz() > 0 {
            out.push(i, j, &result)?;
        }
    }
    out.finish()
}
