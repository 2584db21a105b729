//! `CellScanExec`: the physical scan of an array as a relation of its cells. Output
//! partition `k` reads the blocks stored in shard `k`, so the scan's partitions *are*
//! the stored partitioning; [`crate::copartition`] relies on that to join two arrays
//! stored alike without moving a row.

use std::fmt;
use std::ops::RangeInclusive;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::stats::Precision;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result, Statistics, exec_err};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType, SchedulingType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};
use futures::StreamExt;
use tessera_storage::{ArrayInfo, BlockKey, Snapshot};

use crate::array_table::{CellListing, block_batches};
use crate::partitioning::hash_placement_is_live;

/// Scans the cells of one committed version of an array, one output partition per
/// shard (shards with no block to read are empty partitions).
#[derive(Debug)]
pub struct CellScanExec {
    snapshot: Arc<Snapshot>,
    /// All of the array's cell columns.
    schema: SchemaRef,
    projection: Option<Vec<usize>>,
    /// Blocks to read, by shard.
    shards: Vec<Arc<Vec<BlockKey>>>,
    ranges: Arc<Vec<RangeInclusive<i64>>>,
    listing: CellListing,
    limit: Option<usize>,
    /// Non-zeros of the blocks read (an upper bound on the rows).
    cells: u64,
    props: Arc<PlanProperties>,
}

impl CellScanExec {
    /// A scan of `blocks` (grouped by shard, one entry per shard) of `snapshot`, keeping
    /// cells inside `ranges` and the columns in `projection`.
    pub(crate) fn try_new(
        snapshot: Arc<Snapshot>,
        schema: SchemaRef,
        projection: Option<&Vec<usize>>,
        shards: Vec<Vec<BlockKey>>,
        ranges: Vec<RangeInclusive<i64>>,
        listing: CellListing,
        limit: Option<usize>,
    ) -> Result<Self> {
        let projected = match projection {
            Some(p) => Arc::new(schema.project(p)?),
            None => schema.clone(),
        };
        let wanted: std::collections::HashSet<&BlockKey> = shards.iter().flatten().collect();
        let cells = snapshot
            .blocks()
            .iter()
            .filter(|m| wanted.contains(&m.key))
            .map(|m| match listing {
                CellListing::NonZeros => m.nnz.iter().copied().max().unwrap_or(0),
                CellListing::StoredCells => {
                    let dims = snapshot.info().schema.dimensions();
                    dims.iter()
                        .zip(&m.key.0)
                        .map(|(d, &b)| d.block_extent(b as u64))
                        .product()
                }
            })
            .sum();
        let parts = shards.len().max(1);
        let props = PlanProperties::new(
            EquivalenceProperties::new(projected),
            Partitioning::UnknownPartitioning(parts),
            EmissionType::Incremental,
            Boundedness::Bounded,
        )
        .with_scheduling_type(SchedulingType::Cooperative);
        Ok(Self {
            snapshot,
            schema,
            projection: projection.cloned(),
            shards: shards.into_iter().map(Arc::new).collect(),
            ranges: Arc::new(ranges),
            listing,
            limit,
            cells,
            props: Arc::new(props),
        })
    }

    /// The array (and its stored partitioning) this scan reads.
    pub fn info(&self) -> &ArrayInfo {
        self.snapshot.info()
    }

    /// For each output column, the array dimension it is (`None` for an attribute).
    pub fn output_dimensions(&self) -> Vec<Option<usize>> {
        let ndims = self.info().schema.dimensions().len();
        let all: Vec<usize> = match &self.projection {
            Some(p) => p.clone(),
            None => (0..self.schema.fields().len()).collect(),
        };
        all.into_iter().map(|c| (c < ndims).then_some(c)).collect()
    }

    /// Whether output partition `k` holds exactly the blocks of shard `k`, for every
    /// shard: true unless the array has a single shard and nothing to split.
    pub fn partitions_are_shards(&self) -> bool {
        self.shards.len() == self.info().partitioning.shard_count() as usize
    }
}

impl DisplayAs for CellScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let info = self.info();
        let blocks: usize = self.shards.iter().map(|s| s.len()).sum();
        write!(
            f,
            "CellScanExec: array={}@{} shards={} ({}) blocks={blocks} cells<={}",
            info.name,
            self.snapshot.version(),
            self.shards.len(),
            partitioning_name(info),
            self.cells
        )?;
        if let Some(p) = &self.projection {
            let names: Vec<&str> = p
                .iter()
                .map(|&c| self.schema.field(c).name().as_str())
                .collect();
            write!(f, " projection=[{}]", names.join(", "))?;
        }
        if let Some(n) = self.limit {
            write!(f, " limit={n}")?;
        }
        Ok(())
    }
}

/// How the array's shards are laid out, for EXPLAIN.
fn partitioning_name(info: &ArrayInfo) -> String {
    match info.partitioning {
        tessera_storage::Partitioning::Hash { .. } if hash_placement_is_live(info) => {
            "hash of block".into()
        }
        tessera_storage::Partitioning::Hash { .. } => format!(
            "hash of block placed by '{}', not this build's hash: partitioning unknown",
            info.placement.as_deref().unwrap_or("")
        ),
        tessera_storage::Partitioning::RowBlock { .. } => "block rows".into(),
        tessera_storage::Partitioning::Grid {
            row_shards,
            col_shards,
        } => format!("grid {row_shards}x{col_shards}"),
    }
}

impl ExecutionPlan for CellScanExec {
    fn name(&self) -> &str {
        "CellScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
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
        if children.is_empty() {
            Ok(self)
        } else {
            exec_err!("CellScanExec has no children")
        }
    }

    #[allow(deprecated)]
    fn partition_statistics(&self, partition: Option<usize>) -> Result<Arc<Statistics>> {
        let mut s = Statistics::new_unknown(&self.schema());
        if partition.is_none() {
            let mut rows = self.cells as usize;
            if let Some(n) = self.limit {
                rows = rows.min(n.saturating_mul(self.shards.len().max(1)));
            }
            let width: usize = self.schema().fields().len() * 8;
            s.num_rows = Precision::Inexact(rows);
            s.total_byte_size = Precision::Inexact(rows.saturating_mul(width));
        }
        Ok(Arc::new(s))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let keys: Vec<BlockKey> = match self.shards.get(partition) {
            Some(keys) => keys.as_ref().clone(),
            None if partition == 0 && self.shards.is_empty() => Vec::new(),
            None => {
                return exec_err!(
                    "CellScanExec: partition {partition} of {}",
                    self.shards.len()
                );
            }
        };
        // Read through a file cache of this execution's own, which goes when it ends
        // (the plan may live on in the plan cache).
        let (snapshot, schema, ranges, listing) = (
            Arc::new(self.snapshot.reader()),
            self.schema.clone(),
            self.ranges.clone(),
            self.listing,
        );
        let batch_size = context.session_config().batch_size();
        let projection = self.projection.clone();
        let progress = crate::progress::StatementProgress::of(&context);
        if let Some(p) = &progress {
            p.add_total(keys.len() as u64);
        }
        let stream = futures::stream::iter(keys)
            .then(move |key| {
                let (snapshot, schema, ranges) = (snapshot.clone(), schema.clone(), ranges.clone());
                let progress = progress.clone();
                async move {
                    let batches = tokio::task::spawn_blocking(move || {
                        block_batches(&snapshot, &schema, &key, &ranges, listing, batch_size)
                    })
                    .await
                    .map_err(|e| DataFusionError::Internal(format!("block reader failed: {e}")))?;
                    if let (Some(p), Ok(batches)) = (&progress, &batches) {
                        let bytes: usize = batches.iter().map(|b| b.get_array_memory_size()).sum();
                        p.add_done(bytes as u64);
                    }
                    batches
                }
            })
            .flat_map(move |r: Result<Vec<_>>| {
                let projected = r.and_then(|batches| {
                    batches
                        .into_iter()
                        .map(|b| match &projection {
                            Some(p) => b.project(p).map_err(DataFusionError::from),
                            None => Ok(b),
                        })
                        .collect::<Result<Vec<_>>>()
                });
                match projected {
                    Ok(batches) => {
                        futures::stream::iter(batches.into_iter().map(Ok).collect::<Vec<_>>())
                    }
                    Err(e) => futures::stream::iter(vec![Err(e)]),
                }
            });
        let stream: SendableRecordBatchStream =
            Box::pin(RecordBatchStreamAdapter::new(self.schema(), stream));
        Ok(match self.limit {
            Some(n) => limited(stream, n),
            None => stream,
        })
    }
}

/// Stops `stream` after `limit` rows (cutting the last batch).
fn limited(stream: SendableRecordBatchStream, limit: usize) -> SendableRecordBatchStream {
    let schema = stream.schema();
    let s = stream.scan(limit, |left, r| {
        if *left == 0 {
            return futures::future::ready(None);
        }
        futures::future::ready(Some(r.map(|b| {
            let n = b.num_rows().min(*left);
            *left -= n;
            b.slice(0, n)
        })))
    });
    Box::pin(RecordBatchStreamAdapter::new(schema, s))
}
