//! The scan of a stored matrix as a block stream: shard `k` is partition `k`.

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
use crate::error::{blocking, storage_error};
use crate::la::expr::Pinned;
use crate::partitioning::hash_placement_is_live;

/// The blocks a scan reads: block rows `rows.0..rows.1` and block columns
/// `cols.0..cols.1` (half-open). The others are neither read nor decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BlockWindow {
    /// Block rows, half-open.
    pub rows: (u64, u64),
    /// Block columns, half-open.
    pub cols: (u64, u64),
}

impl BlockWindow {
    fn contains(&self, key: &tessera_storage::BlockKey) -> bool {
        let at = |d: usize| key.0.get(d).map_or(0, |&x| x.max(0) as u64);
        (self.rows.0..self.rows.1).contains(&at(0)) && (self.cols.0..self.cols.1).contains(&at(1))
    }
}

/// Reads a pinned matrix version as a block stream, one partition per shard. When the
/// version was placed by this build's hash placement, the scan declares
/// `Hash([bi, bj], shards)`, which is exactly where DataFusion's hash repartition would
/// have put each block; otherwise its partitioning is unknown. A scan with a
/// [`BlockWindow`] reads only the blocks in it (a `slice` of the matrix).
#[derive(Debug)]
pub struct BlockScanExec {
    pinned: Pinned,
    window: Option<BlockWindow>,
    props: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl BlockScanExec {
    /// A scan of `pinned`, which must be a matrix (checked when it was planned).
    pub fn new(pinned: Pinned) -> Self {
        let schema = block_stream_schema();
        let info = pinned.0.info();
        let shards = info.partitioning.shard_count().max(1) as usize;
        let partitioning = if hash_placement_is_live(info) {
            Partitioning::Hash(
                vec![
                    Arc::new(Column::new(BI, 0)) as Arc<dyn PhysicalExpr>,
                    Arc::new(Column::new(BJ, 1)),
                ],
                shards,
            )
        } else {
            Partitioning::UnknownPartitioning(shards)
        };
        let props = PlanProperties::new(
            EquivalenceProperties::new(schema),
            partitioning,
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Self {
            pinned,
            window: None,
            props: Arc::new(props),
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }

    /// The same scan reading only the blocks in `window` (where it still has its
    /// partitioning: a subset of each shard stays where it was).
    pub fn with_window(self, window: Option<BlockWindow>) -> Self {
        Self { window, ..self }
    }

    /// The matrix version scanned.
    pub fn pinned(&self) -> &Pinned {
        &self.pinned
    }

    /// The blocks it reads, if not all.
    pub fn window(&self) -> Option<BlockWindow> {
        self.window
    }
}

impl DisplayAs for BlockScanExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (rows, cols) = self.pinned.shape();
        let (br, bc) = self.pinned.block();
        if let DisplayFormatType::TreeRender = t {
            writeln!(f, "array={:?}", self.pinned)?;
            writeln!(f, "shape={rows}x{cols}")?;
            writeln!(f, "blocks={br}x{bc}")?;
            if let Some(w) = self.window {
                writeln!(
                    f,
                    "window=block rows {}..{}, block columns {}..{}",
                    w.rows.0, w.rows.1, w.cols.0, w.cols.1
                )?;
            }
            return writeln!(f, "partitioning={}", self.props.partitioning);
        }
        write!(
            f,
            "BlockScanExec: {:?} {rows}x{cols} in {br}x{bc} blocks, ",
            self.pinned
        )?;
        if let Some(w) = self.window {
            write!(
                f,
                "block rows {}..{} and columns {}..{} only, ",
                w.rows.0, w.rows.1, w.cols.0, w.cols.1
            )?;
        }
        write!(f, "partitioning={}", self.props.partitioning)
    }
}

impl ExecutionPlan for BlockScanExec {
    fn name(&self) -> &str {
        "BlockScanExec"
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
            return exec_err!("BlockScanExec has no children");
        }
        Ok(self)
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let shards = self.props.partitioning.partition_count();
        if partition >= shards {
            return exec_err!("BlockScanExec: partition {partition} of {shards}");
        }
        // Run by several tasks of a distributed stage, each reads the shards `k` with
        // `k % tasks == task`, so every shard is read once and stays partition `k`.
        let task = datafusion_distributed::DistributedTaskContext::from_ctx(&context);
        if partition % task.task_count.max(1) != task.task_index {
            let schema = self.props.eq_properties.schema().clone();
            return Ok(batches_stream(schema, async { Ok(Vec::new()) }));
        }
        // Read through a file cache of this execution's own, which goes when it ends
        // (the plan may live on in the plan cache).
        let snapshot = self.pinned.0.reader();
        let window = self.window;
        let keep = move |key: &tessera_storage::BlockKey| window.is_none_or(|w| w.contains(key));
        let progress = crate::progress::StatementProgress::of(&context);
        if let Some(p) = &progress {
            p.add_total(snapshot.shard_blocks_where(partition as u32, keep));
        }
        let output_rows = MetricBuilder::new(&self.metrics).output_rows(partition);
        let bytes = MetricBuilder::new(&self.metrics).counter("bytes_read", partition);
        let schema = self.props.eq_properties.schema().clone();
        Ok(batches_stream(schema, async move {
            let blocks = blocking(move || {
                snapshot
                    .read_shard_where(partition as u32, keep)
                    .map_err(storage_error)
            })
            .await?;
            let mut out = BlockBatches::new();
            for (key, mut attrs) in blocks {
                let Some(block) = attrs.drain(..).next() else {
                    continue;
                };
                let (bi, bj) = (key.0[0] as u64, key.0[1] as u64);
                let size = crate::la::matrix::block_bytes(&block);
                bytes.add(size as usize);
                if let Some(p) = &progress {
                    p.add_done(size);
                }
                out.push(bi, bj, &block)?;
            }
            let batches = out.finish()?;
            for b in &batches {
                output_rows.add(b.num_rows());
            }
            Ok(batches)
        }))
    }
}
