//! The join of two block streams that are already partitioned alike on the shared
//! dimension (zipmm): partition `p` of the left meets partition `p` of the right, and
//! nothing moves before the join.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, Int64Array, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{concat_batches, take};
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result, exec_err};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricBuilder, MetricsSet};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PlanProperties, SendableRecordBatchStream,
};
use futures::TryStreamExt;

use super::{BI, BJ, batches_stream, is_block_stream};

/// Joins `A(i, k)` blocks with `B(k, j)` blocks on `k`, partition by partition: the
/// planner builds it only when the stored placement guarantees that partition `p` of
/// both inputs holds the same values of `k` (both sides placed by the same function of
/// `k` over the same number of partitions). Its rows are `A`'s block stream followed by
/// `B`'s, as a hash join's would be.
#[derive(Debug)]
pub struct BlockZipJoinExec {
    left: Arc<dyn ExecutionPlan>,
    right: Arc<dyn ExecutionPlan>,
    props: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl BlockZipJoinExec {
    /// The zip join of `left` (blocks `A(i, k)`) and `right` (blocks `B(k, j)`).
    pub fn try_new(left: Arc<dyn ExecutionPlan>, right: Arc<dyn ExecutionPlan>) -> Result<Self> {
        let (ls, rs) = (left.schema(), right.schema());
        for s in [&ls, &rs] {
            if !is_block_stream(s) || s.field(0).name() != BI || s.field(1).name() != BJ {
                return exec_err!("BlockZipJoinExec: an input is not a block stream");
            }
        }
        let (lp, rp) = (
            left.output_partitioning().partition_count(),
            right.output_partitioning().partition_count(),
        );
        if lp != rp {
            return exec_err!(
                "BlockZipJoinExec: the inputs have {lp} and {rp} partitions; a zip join needs both placed alike"
            );
        }
        let mut fields: Vec<_> = ls.fields().iter().cloned().collect();
        fields.extend(rs.fields().iter().cloned());
        let schema: SchemaRef = Arc::new(Schema::new(fields));
        let props = PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(lp),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Ok(Self {
            left,
            right,
            props: Arc::new(props),
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }
}

impl DisplayAs for BlockZipJoinExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let DisplayFormatType::TreeRender = t {
            writeln!(f, "on=k")?;
            return writeln!(f, "partitions=p with p");
        }
        write!(
            f,
            "BlockZipJoinExec: A(i, k) and B(k, j) on k, partition p with partition p"
        )
    }
}

impl ExecutionPlan for BlockZipJoinExec {
    fn name(&self) -> &str {
        "BlockZipJoinExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.left, &self.right]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false, false]
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
        match (children.pop(), children.pop(), children.is_empty()) {
            (Some(right), Some(left), true) => Ok(Arc::new(Self::try_new(left, right)?)),
            _ => exec_err!("BlockZipJoinExec takes two children"),
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
        let left = self.left.execute(partition, context.clone())?;
        let right = self.right.execute(partition, context)?;
        let output_rows = MetricBuilder::new(&self.metrics).output_rows(partition);
        let schema = self.schema();
        let (ls, rs) = (self.left.schema(), self.right.schema());
        let out_schema = schema.clone();
        Ok(batches_stream(schema, async move {
            let left = concat_batches(&ls, &left.try_collect::<Vec<_>>().await?)?;
            let right = concat_batches(&rs, &right.try_collect::<Vec<_>>().await?)?;
            let (a_k, b_k) = (key(&left, 1)?, key(&right, 0)?);
            let mut by_k: HashMap<i64, Vec<u32>> = HashMap::new();
            for row in 0..right.num_rows() {
                by_k.entry(b_k.value(row)).or_default().push(row as u32);
            }
            let (mut li, mut ri) = (Vec::new(), Vec::new());
            for row in 0..left.num_rows() {
                for &r in by_k.get(&a_k.value(row)).into_iter().flatten() {
                    li.push(row as u32);
                    ri.push(r);
                }
            }
            let (li, ri) = (UInt32Array::from(li), UInt32Array::from(ri));
            let mut columns: Vec<ArrayRef> = Vec::with_capacity(out_schema.fields().len());
            for c in left.columns() {
                columns.push(take(c.as_ref(), &li, None)?);
            }
            for c in right.columns() {
                columns.push(take(c.as_ref(), &ri, None)?);
            }
            let joined = RecordBatch::try_new(out_schema, columns)?;
            output_rows.add(joined.num_rows());
            Ok(vec![joined])
        }))
    }
}

fn key(batch: &RecordBatch, at: usize) -> Result<&Int64Array> {
    batch
        .column(at)
        .as_any()
        .downcast_ref::<Int64Array>()
        .filter(|a| a.null_count() == 0)
        .ok_or_else(|| {
            DataFusionError::Internal(format!("BlockZipJoinExec: key column {at} is not Int64"))
        })
}
