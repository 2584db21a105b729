//! EXPLAIN as a picture: `EXPLAIN (FORMAT graphviz)` and, with `ANALYZE`, `FORMAT tree`
//! and `FORMAT graphviz`, which DataFusion renders only for logical plans or not at
//! all. The physical plan (as it would run: a distributed one shows its stages) is
//! drawn with one node per operator: its name, then the `key=value` lines of its tree
//! form (Tessera's operators give the strategy, the estimates and the bytes they move)
//! and, with `ANALYZE`, its metrics after the statement ran, summed over partitions.
//!
//! ```text
//!   EXPLAIN (ANALYZE, FORMAT graphviz) q --plan q--> physical plan --run, drain-->
//!   Shown mirror (name, lines, metrics) --> DataFusion's tree renderer | dot text
//! ```
//!
//! `FORMAT tree` without `ANALYZE` stays DataFusion's own, over the same lines.

use std::fmt::{self, Write as _};
use std::sync::Arc;

use datafusion::arrow::array::StringArray;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::format::ExplainFormat;
use datafusion::common::{Result, internal_err};
use datafusion::execution::context::SessionState;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::physical_plan::metrics::MetricValue;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties, displayable,
    execute_stream,
};
use datafusion::sql::parser::Statement as DFStatement;
use futures::StreamExt;

/// True when `tree` is an EXPLAIN that [`picture`] draws: `FORMAT graphviz`, or
/// `ANALYZE` with `FORMAT tree`.
pub fn is_picture(tree: &DFStatement) -> bool {
    let DFStatement::Explain(explain) = tree else {
        return false;
    };
    match explain.options.format {
        Some(ExplainFormat::Graphviz) => true,
        Some(ExplainFormat::Tree) => explain.options.analyze,
        _ => false,
    }
}

/// Plans the statement `tree` explains in `state`, runs it to the end when it says
/// `ANALYZE` (its rows are dropped), and returns the picture as DataFusion's EXPLAIN
/// does: one row of (`plan_type`, `plan`).
pub async fn picture(
    state: &SessionState,
    tree: &DFStatement,
) -> Result<SendableRecordBatchStream> {
    let DFStatement::Explain(explain) = tree else {
        return internal_err!("picture: not an EXPLAIN");
    };
    let analyze = explain.options.analyze;
    let logical = state
        .statement_to_plan((*explain.statement).clone())
        .await?;
    let physical = state.create_physical_plan(&logical).await?;
    if analyze {
        let task: Arc<TaskContext> = state.task_ctx();
        let mut rows = execute_stream(Arc::clone(&physical), task)?;
        while let Some(batch) = rows.next().await {
            batch?;
        }
    }
    let shown = Shown::of(&physical, analyze);
    let text = match explain.options.format {
        Some(ExplainFormat::Graphviz) => graphviz(&shown),
        _ => displayable(shown.as_ref()).tree_render().to_string(),
    };
    let schema = picture_schema();
    let kind = if analyze {
        "Plan with Metrics"
    } else {
        "physical_plan"
    };
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![
            Arc::new(StringArray::from(vec![kind])),
            Arc::new(StringArray::from(vec![text])),
        ],
    )?;
    Ok(Box::pin(MemoryStream::try_new(vec![batch], schema, None)?))
}

/// The columns of [`picture`]'s result, DataFusion's EXPLAIN columns.
pub fn picture_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("plan_type", DataType::Utf8, false),
        Field::new("plan", DataType::Utf8, false),
    ]))
}

/// A drawing of one operator of a plan: never run, only rendered.
#[derive(Debug)]
struct Shown {
    name: String,
    /// `key=value` lines: the operator's tree form, then its metrics.
    lines: String,
    children: Vec<Arc<dyn ExecutionPlan>>,
    props: Arc<PlanProperties>,
}

impl Shown {
    /// The drawing of `plan` and everything under it; with `metrics`, each node's
    /// metrics (summed over partitions) follow its lines.
    fn of(plan: &Arc<dyn ExecutionPlan>, metrics: bool) -> Arc<Shown> {
        let mut lines = crate::la::tree_lines(plan.as_ref());
        if metrics && let Some(set) = plan.metrics() {
            let set = set
                .aggregate_by_name()
                .sorted_for_display()
                .timestamps_removed();
            for metric in set.iter() {
                let value = metric.value();
                // Counts exactly (DataFusion's display rounds them: `6.00 K`), times
                // and the rest as DataFusion shows them.
                let _ = match value {
                    MetricValue::OutputRows(_)
                    | MetricValue::SpillCount(_)
                    | MetricValue::SpilledBytes(_)
                    | MetricValue::OutputBytes(_)
                    | MetricValue::OutputBatches(_)
                    | MetricValue::SpilledRows(_)
                    | MetricValue::CurrentMemoryUsage(_)
                    | MetricValue::Count { .. }
                    | MetricValue::Gauge { .. }
                    | MetricValue::PeakMemoryUsage { .. } => {
                        writeln!(lines, "{}={}", value.name(), value.as_usize())
                    }
                    _ => writeln!(lines, "{}={value}", value.name()),
                };
            }
        }
        let children = plan
            .children()
            .into_iter()
            .map(|c| Shown::of(c, metrics) as Arc<dyn ExecutionPlan>)
            .collect();
        Arc::new(Shown {
            name: plan.name().to_string(),
            lines,
            children,
            props: Arc::new(PlanProperties::new(
                EquivalenceProperties::new(plan.schema()),
                Partitioning::UnknownPartitioning(1),
                EmissionType::Incremental,
                Boundedness::Bounded,
            )),
        })
    }
}

impl DisplayAs for Shown {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match t {
            DisplayFormatType::TreeRender => f.write_str(&self.lines),
            _ => write!(f, "{}", self.name),
        }
    }
}

impl ExecutionPlan for Shown {
    fn name(&self) -> &str {
        &self.name
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        self.children.iter().collect()
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        internal_err!("a drawing of a plan is not planned")
    }

    fn execute(
        &self,
        _partition: usize,
        _context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        internal_err!("a drawing of a plan does not run")
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(
            &Arc<dyn datafusion::physical_expr::PhysicalExpr>,
        ) -> Result<datafusion::common::tree_node::TreeNodeRecursion>,
    ) -> Result<datafusion::common::tree_node::TreeNodeRecursion> {
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    }
}

/// `shown` as a Graphviz `dot` graph: one box per operator (its name, then `key: value`
/// lines, left-aligned), edges from each input up to the operator reading it.
fn graphviz(shown: &Arc<Shown>) -> String {
    fn quoted(text: &str) -> String {
        text.replace('\\', "\\\\").replace('"', "\\\"")
    }
    fn node(out: &mut String, shown: &Shown, next: &mut usize) -> usize {
        let id = *next;
        *next += 1;
        let mut label = format!("{}\\l", quoted(&shown.name));
        for line in shown.lines.lines() {
            let line = match line.split_once('=') {
                Some((key, value)) => format!("{key}: {value}"),
                None => line.to_string(),
            };
            label.push_str(&quoted(&line));
            label.push_str("\\l");
        }
        let _ = writeln!(out, "  n{id} [label=\"{label}\"];");
        for child in &shown.children {
            if let Some(child) = child.downcast_ref::<Shown>() {
                let c = node(out, child, next);
                let _ = writeln!(out, "  n{c} -> n{id};");
            }
        }
        id
    }
    let mut out = String::from(
        "digraph plan {\n  rankdir=BT;\n  node [shape=box, fontname=\"monospace\"];\n",
    );
    node(&mut out, shown, &mut 0);
    out.push_str("}\n");
    out
}
