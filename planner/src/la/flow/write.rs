//! From blocks to shard files: each partition of a block dataflow stores the blocks it
//! computed, where it computed them (on a worker, in a distributed statement), as one
//! part of a write that the statement then commits.

use std::fmt;
use std::hash::BuildHasher;
use std::sync::Arc;

use datafusion::arrow::array::{RecordBatch, StringArray, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result, exec_err};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricBuilder, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PlanProperties, SendableRecordBatchStream,
};
use futures::StreamExt;
use tessera_storage::{ArrayWriter, BlockKey, PartTarget, Store, WrittenPart};

use super::{BI, BlockRows, is_block_stream};
use crate::error::{blocking, storage_error};

/// The rows of a [`BlockWriteExec`]: one per partition, the part it wrote (as JSON, for
/// [`ArrayWriter::adopt`]), its blocks and bytes.
pub fn written_parts_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("part", DataType::Utf8, false),
        Field::new("blocks", DataType::UInt64, false),
        Field::new("bytes", DataType::UInt64, false),
    ]))
}

/// The parts that the rows of [`written_parts_schema`] describe.
pub fn written_parts(batches: &[RecordBatch]) -> Result<Vec<WrittenPart>> {
    let mut parts = Vec::new();
    for batch in batches {
        let Some(json) = batch.column(0).as_any().downcast_ref::<StringArray>() else {
            return exec_err!("the rows of a block write have no part column");
        };
        for row in json.iter() {
            let row = row.unwrap_or_default();
            let part = serde_json::from_str(row).map_err(|e| {
                DataFusionError::Internal(format!("a written part does not decode: {e}"))
            })?;
            parts.push(part);
        }
    }
    Ok(parts)
}

/// Stores the blocks of `input` (a block stream of the new version's blocking) as part
/// files of the write `target` describes: partition `p` writes the blocks it receives,
/// as they arrive, into files of its own in the version's directory, makes them
/// durable when its input ends, and returns one row saying what they hold. Nothing is
/// visible until the statement adopts every partition's part and commits; a partition
/// that fails or is dropped deletes what it wrote, and files of a process that died
/// are deleted by the commit or its failure (or the store's next open).
#[derive(Debug)]
pub struct BlockWriteExec {
    input: Arc<dyn ExecutionPlan>,
    pub(crate) target: PartTarget,
    store: Store,
    props: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl BlockWriteExec {
    /// Writes the blocks of `input` as parts of `target`, with the files of `store`.
    pub fn try_new(
        input: Arc<dyn ExecutionPlan>,
        target: PartTarget,
        store: Store,
    ) -> Result<Self> {
        let schema = input.schema();
        if !is_block_stream(&schema) || schema.field(0).name() != BI {
            return exec_err!("BlockWriteExec: the input is not a block stream");
        }
        let parts = input.output_partitioning().partition_count();
        let props = PlanProperties::new(
            EquivalenceProperties::new(written_parts_schema()),
            Partitioning::UnknownPartitioning(parts),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Ok(Self {
            input,
            target,
            store,
            props: Arc::new(props),
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }
}

/// A tag no other part of the same write has: this process, the partition, and a
/// random number (a retried statement's parts differ from the failed attempt's).
fn part_tag(partition: usize) -> String {
    let nonce = std::collections::hash_map::RandomState::new()
        .hash_one((partition, std::time::SystemTime::now()));
    format!("{}-{partition}-{:08x}", std::process::id(), nonce as u32)
}

impl DisplayAs for BlockWriteExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t_ = &self.target;
        if let DisplayFormatType::TreeRender = t {
            writeln!(f, "array={}", t_.name)?;
            return writeln!(f, "version={}", t_.version);
        }
        write!(
            f,
            "BlockWriteExec: blocks into part files of {} version {}, where they are computed",
            t_.name, t_.version
        )
    }
}

impl ExecutionPlan for BlockWriteExec {
    fn name(&self) -> &str {
        "BlockWriteExec"
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
            (Some(input), true) => Ok(Arc::new(Self::try_new(
                input,
                self.target.clone(),
                self.store.clone(),
            )?)),
            _ => exec_err!("BlockWriteExec takes one child"),
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
        let mut input = self.input.execute(partition, context)?;
        let writer = self
            .store
            .part_writer(&self.target, &part_tag(partition))
            .map_err(storage_error)?;
        let blocks_written = MetricBuilder::new(&self.metrics).counter("blocks_written", partition);
        let bytes_written = MetricBuilder::new(&self.metrics).counter("bytes_written", partition);
        let output_rows = MetricBuilder::new(&self.metrics).output_rows(partition);
        let schema = self.schema();
        let out_schema = schema.clone();
        let written = futures::stream::once(async move {
            let mut writer: ArrayWriter = writer;
            while let Some(batch) = input.next().await {
                let batch = batch?;
                // The writer goes to a blocking thread and back for each batch; dropped
                // on the way (the statement ended), it deletes what it wrote.
                writer = blocking(move || {
                    let rows = BlockRows::new(&batch, 0)?;
                    for row in 0..rows.len() {
                        let (bi, bj) = rows.key(row);
                        writer
                            .put_block(BlockKey::matrix(bi as i64, bj as i64), rows.block(row)?)
                            .map_err(storage_error)?;
                    }
                    Ok(writer)
                })
                .await?;
            }
            let part = blocking(move || writer.finish_part().map_err(storage_error)).await?;
            blocks_written.add(part.blocks());
            bytes_written.add(part.bytes() as usize);
            output_rows.add(1);
            let json = serde_json::to_string(&part).map_err(|e| {
                DataFusionError::Internal(format!("a written part does not encode: {e}"))
            })?;
            Ok(RecordBatch::try_new(
                out_schema,
                vec![
                    Arc::new(StringArray::from(vec![json])),
                    Arc::new(UInt64Array::from(vec![part.blocks() as u64])),
                    Arc::new(UInt64Array::from(vec![part.bytes()])),
                ],
            )?)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, written)))
    }
}
