//! What really goes through each exchange of blocks.

use std::fmt;
use std::sync::Arc;

use datafusion::common::Result;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::config::ConfigOptions;
use datafusion::execution::TaskContext;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricBuilder, MetricsSet};
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PlanProperties, SendableRecordBatchStream,
};
use futures::StreamExt;

use super::{BlockRows, block_stream_at, is_block_stream};

/// Passes the batches of the exchange below it through unchanged, counting the blocks
/// and the bytes of block data that came out of it (`blocks_moved`, `bytes_moved` in
/// EXPLAIN ANALYZE). It holds nothing and changes no partitioning.
#[derive(Debug)]
pub struct ExchangeMeterExec {
    input: Arc<dyn ExecutionPlan>,
    metrics: ExecutionPlanMetricsSet,
}

impl ExchangeMeterExec {
    /// A meter over the exchange `input`.
    pub fn new(input: Arc<dyn ExecutionPlan>) -> Self {
        Self {
            input,
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }

    fn exchange(&self) -> String {
        match self.input.output_partitioning() {
            _ if self
                .input
                .downcast_ref::<CoalescePartitionsExec>()
                .is_some() =>
            {
                "coalesce".to_string()
            }
            Partitioning::Hash(keys, n) => {
                let keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
                format!("hash({}) x{n}", keys.join(", "))
            }
            other => other.to_string(),
        }
    }
}

impl DisplayAs for ExchangeMeterExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let DisplayFormatType::TreeRender = t {
            return writeln!(f, "blocks through={}", self.exchange());
        }
        write!(f, "ExchangeMeterExec: blocks through {}", self.exchange())
    }
}

impl ExecutionPlan for ExchangeMeterExec {
    fn name(&self) -> &str {
        "ExchangeMeterExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
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
            (Some(input), true) => Ok(Arc::new(Self::new(input))),
            _ => datafusion::common::exec_err!("ExchangeMeterExec takes one child"),
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
        let input = self.input.execute(partition, context)?;
        let blocks = MetricBuilder::new(&self.metrics).counter("blocks_moved", partition);
        let bytes = MetricBuilder::new(&self.metrics).counter("bytes_moved", partition);
        let schema = input.schema();
        let stream = input.map(move |batch| {
            let batch = batch?;
            let rows = BlockRows::new(&batch, block_stream_at(&batch.schema()).unwrap_or(0))?;
            blocks.add(rows.len());
            bytes.add((0..rows.len()).map(|r| rows.bytes(r)).sum());
            Ok(batch)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

/// Puts an [`ExchangeMeterExec`] above every hash repartition and coalesce whose
/// output is a block stream. Runs after DataFusion's distribution rules, so it meters
/// the exchanges DataFusion planned.
#[derive(Debug, Default)]
pub struct MeterExchanges;

impl PhysicalOptimizerRule for MeterExchanges {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let exchange = node.downcast_ref::<RepartitionExec>().is_some()
                || node.downcast_ref::<CoalescePartitionsExec>().is_some();
            if exchange && is_block_stream(&node.schema()) {
                let metered: Arc<dyn ExecutionPlan> = Arc::new(ExchangeMeterExec::new(node));
                return Ok(Transformed::yes(metered));
            }
            Ok(Transformed::no(node))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "tessera_meter_exchanges"
    }

    fn schema_check(&self) -> bool {
        true
    }
}
