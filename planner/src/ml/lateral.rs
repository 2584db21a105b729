//! Per-row builtin calls: `FROM params p, LATERAL lm(x, y, lambda => p.lambda) m` runs
//! one task per row of `params`, each the call with that row's numbers.
//!
//! ```text
//! LATERAL lm(..., lambda => p.lambda)   planned by MatrixFunctions as a LateralNode
//!                                       holding the call (no input yet)
//! Join(params, LateralNode)             the cross join DataFusion plans for FROM
//!   -> LateralCalls (analyzer rule)     one LateralNode over params, the join's schema
//!   -> LateralBuiltinExec               the call's jobs computed once and shared by
//!                                       every row; one task per row of params,
//!                                       scheduled by parfor; rows merged in order
//! ```
//!
//! Every row shares the jobs' results (the matrices the call reads, such as `t(X) X`
//! for `lm`), so a sweep over `lambda` multiplies `X` once. A per-row value that would
//! change the jobs (a solver chosen per row) is refused.
//!
//! A call whose subquery arguments read the row (`lm((SELECT i, j, v FROM obs WHERE
//! obs.grp = g.grp), ...)`, one model per group) shares nothing: each row's task binds
//! the row's values into the subqueries, plans the call with the statement's session
//! state, computes its jobs and runs its step; the tasks are pulled by
//! [`parfor::run_async`].

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, Float64Array, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{cast, concat_batches, take};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::catalog::Session;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNodeRecursion};
use datafusion::common::{Column, DFSchema, DFSchemaRef, DataFusionError, Result, ScalarValue};
use datafusion::execution::TaskContext;
use datafusion::execution::session_state::SessionState;
use datafusion::logical_expr::{
    Expr, Extension, JoinType, LogicalPlan, UserDefinedLogicalNodeCore,
};
use datafusion::optimizer::AnalyzerRule;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricBuilder, MetricsSet};
use datafusion::physical_plan::statistics::{StatisticsArgs, StatisticsContext};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream, collect,
};
use faer::Par;

use super::call::{PlannedCall, output_schema};
use super::exec::{
    BuiltinExec, BuiltinTable, ParforSettings, Ran, charge_tasks, fmt_ran, record_report,
};
use super::parfor::{self, Scheme, TaskCost};
use crate::error::{ErrorKind, tessera_error};

/// A `LATERAL` builtin call with per-row arguments: before [`LateralCalls`] runs, the
/// call alone (no input, the builtin's output schema); after, the call over the
/// relation whose rows it reads (the join's schema: that relation's columns, then the
/// call's).
#[derive(Debug, Clone)]
pub struct LateralNode {
    table: Arc<BuiltinTable>,
    /// `(parameter, expression over the input's columns)`.
    per_row: Vec<(&'static str, Expr)>,
    input: Option<LogicalPlan>,
    schema: DFSchemaRef,
}

impl LateralNode {
    /// The plan of a `LATERAL` call: the call's own relation when no argument comes
    /// from the row before it, else a node the analyzer joins to that row's relation.
    pub(crate) fn plan(planned: PlannedCall) -> Result<LogicalPlan> {
        if planned.per_row.is_empty() && planned.table.outer_columns().is_empty() {
            return planned.scan();
        }
        let arrow = output_schema(planned.table.call_name());
        let schema = Arc::new(DFSchema::try_from(arrow.as_ref().clone())?);
        Ok(LogicalPlan::Extension(Extension {
            node: Arc::new(LateralNode {
                table: planned.table,
                per_row: planned.per_row,
                input: None,
                schema,
            }),
        }))
    }

    fn call(&self) -> String {
        self.table.call_text()
    }

    fn per_row_text(&self) -> String {
        self.per_row
            .iter()
            .map(|(n, e)| format!("{n} = {e}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl PartialEq for LateralNode {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.table, &other.table)
            && self.per_row == other.per_row
            && self.input == other.input
    }
}

impl Eq for LateralNode {}

impl Hash for LateralNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.call().hash(state);
        self.input.hash(state);
    }
}

impl PartialOrd for LateralNode {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        (self == other).then_some(Ordering::Equal)
    }
}

impl UserDefinedLogicalNodeCore for LateralNode {
    fn name(&self) -> &str {
        "LateralBuiltin"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        self.input.iter().collect()
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        // Before it has an input its expressions refer to nothing it can see.
        match self.input {
            Some(_) => self.per_row.iter().map(|(_, e)| e.clone()).collect(),
            None => vec![],
        }
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "LateralBuiltin: {} per row: {}",
            self.call(),
            self.per_row_text()
        )
    }

    fn with_exprs_and_inputs(&self, exprs: Vec<Expr>, inputs: Vec<LogicalPlan>) -> Result<Self> {
        let per_row = if exprs.is_empty() {
            self.per_row.clone()
        } else {
            self.per_row
                .iter()
                .zip(exprs)
                .map(|((n, _), e)| (*n, e))
                .collect()
        };
        Ok(Self {
            table: Arc::clone(&self.table),
            per_row,
            input: inputs.into_iter().next(),
            schema: Arc::clone(&self.schema),
        })
    }
}

/// The analyzer rule that gives each `LATERAL` call the relation before it: the cross
/// join of that relation with the call becomes the call over that relation.
#[derive(Debug, Default)]
pub struct LateralCalls;

impl AnalyzerRule for LateralCalls {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        Ok(plan
            .transform_up_with_subqueries(|plan| {
                let LogicalPlan::Join(join) = &plan else {
                    return Ok(Transformed::no(plan));
                };
                let Some(call) = lateral_call(&join.right) else {
                    return Ok(Transformed::no(plan));
                };
                let unconditional = join.on.is_empty()
                    && match &join.filter {
                        None => true,
                        Some(Expr::Literal(ScalarValue::Boolean(Some(true)), _)) => true,
                        Some(_) => false,
                    };
                if join.join_type != JoinType::Inner || !unconditional {
                    return Err(tessera_error(
                        ErrorKind::FeatureNotSupported,
                        format!(
                            "LATERAL {}: only a plain (cross or ON true) join with the relation before it is supported",
                            call.call()
                        ),
                    ));
                }
                let node = LateralNode {
                    table: Arc::clone(&call.table),
                    per_row: call.per_row.clone(),
                    input: Some(join.left.as_ref().clone()),
                    schema: Arc::clone(&join.schema),
                };
                Ok(Transformed::yes(LogicalPlan::Extension(Extension {
                    node: Arc::new(node),
                })))
            })?
            .data)
    }

    fn name(&self) -> &str {
        "tessera_lateral_calls"
    }
}

/// The lateral call `plan` is (under its alias and column renames), if it is one
/// without an input.
fn lateral_call(plan: &LogicalPlan) -> Option<&LateralNode> {
    match plan {
        LogicalPlan::SubqueryAlias(a) => lateral_call(&a.input),
        LogicalPlan::Projection(p) if p.expr.iter().all(is_column) => lateral_call(&p.input),
        LogicalPlan::Extension(e) => e
            .node
            .as_any()
            .downcast_ref::<LateralNode>()
            .filter(|n| n.input.is_none()),
        _ => None,
    }
}

fn is_column(e: &Expr) -> bool {
    match e {
        Expr::Column(_) => true,
        Expr::Alias(a) => matches!(*a.expr, Expr::Column(_)),
        _ => false,
    }
}

/// The operator for a [`LateralNode`] over `input`.
pub(crate) async fn plan_lateral(
    node: &LateralNode,
    input: Option<Arc<dyn ExecutionPlan>>,
    session: &dyn Session,
) -> Result<Arc<dyn ExecutionPlan>> {
    let (Some(logical_input), Some(input)) = (&node.input, input) else {
        return Err(tessera_error(
            ErrorKind::FeatureNotSupported,
            format!(
                "LATERAL {}: a call with per-row arguments must follow, in FROM, the relation whose rows it reads",
                node.call()
            ),
        ));
    };
    let mut per_row = Vec::with_capacity(node.per_row.len());
    for (n, e) in &node.per_row {
        per_row.push((
            *n,
            e.to_string(),
            session.create_physical_expr(e.clone(), logical_input.schema())?,
        ));
    }
    let outer = node.table.outer_columns();
    let work = if outer.is_empty() {
        Work::Shared(node.table.scan_call(session).await?)
    } else {
        let Some(state) = session.as_any().downcast_ref::<SessionState>() else {
            return Err(DataFusionError::Internal(
                "LATERAL: a call planned again per row needs the session's state".into(),
            ));
        };
        let mut columns = Vec::with_capacity(outer.len());
        for (_, c) in outer {
            let e =
                session.create_physical_expr(Expr::Column(c.clone()), logical_input.schema())?;
            columns.push((c, e));
        }
        Work::PerRow(Arc::new(PerRowCall {
            table: Arc::clone(&node.table),
            parfor: ParforSettings::of(session)?,
            state: state.clone(),
            outer: columns,
        }))
    };
    let schema: SchemaRef = Arc::new(node.schema.as_arrow().clone());
    Ok(Arc::new(LateralBuiltinExec::new(
        input, work, per_row, schema,
    )))
}

/// What the rows of a `LATERAL` call share.
#[derive(Debug, Clone)]
enum Work {
    /// The call's jobs, computed once for every row.
    Shared(Arc<BuiltinExec>),
    /// Nothing: the call's subquery arguments read the row, so each row's call is
    /// planned and its jobs computed in its own task.
    PerRow(Arc<PerRowCall>),
}

/// A call whose subquery arguments refer to the row before it.
struct PerRowCall {
    table: Arc<BuiltinTable>,
    /// Plans each row's call as the statement was planned (its settings and catalogs).
    state: SessionState,
    /// The outer columns the subqueries read, each as an expression over the input.
    outer: Vec<(Column, Arc<dyn PhysicalExpr>)>,
    parfor: ParforSettings,
}

impl fmt::Debug for PerRowCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PerRowCall({:?})", self.table)
    }
}

impl Work {
    fn call(&self) -> String {
        match self {
            Work::Shared(b) => b.call(),
            Work::PerRow(p) => p.table.call_text(),
        }
    }

    fn call_name(&self) -> String {
        match self {
            Work::Shared(b) => b.call_name(),
            Work::PerRow(p) => p.table.call_name().to_string(),
        }
    }

    fn parfor(&self) -> ParforSettings {
        match self {
            Work::Shared(b) => b.parfor(),
            Work::PerRow(p) => p.parfor,
        }
    }

    /// What the optimizer knows of a row before the run: rows sharing their jobs do
    /// alike work; rows with subqueries of their own are unknown.
    fn planning_cost(&self) -> TaskCost {
        TaskCost {
            uniform: matches!(self, Work::Shared(_)),
            ..TaskCost::default()
        }
    }
}

/// A builtin call run once per row of its input: one parfor task per row with that
/// row's numbers, each row's output rows after a copy of the row, in row order. The
/// call's jobs are computed once and shared by every row, unless its subquery
/// arguments read the row: then each task plans the row's call and computes its jobs.
#[derive(Debug)]
pub struct LateralBuiltinExec {
    input: Arc<dyn ExecutionPlan>,
    work: Work,
    /// `(parameter, expression as written, expression)`.
    per_row: Vec<(&'static str, String, Arc<dyn PhysicalExpr>)>,
    schema: SchemaRef,
    props: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
    ran: Ran,
}

/// A per-row argument's name, its expression as written, and its values.
type RowValues = Vec<(&'static str, String, ArrayRef)>;

impl LateralBuiltinExec {
    fn new(
        input: Arc<dyn ExecutionPlan>,
        work: Work,
        per_row: Vec<(&'static str, String, Arc<dyn PhysicalExpr>)>,
        schema: SchemaRef,
    ) -> Self {
        let props = PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Self {
            input,
            work,
            per_row,
            schema,
            props: Arc::new(props),
            metrics: ExecutionPlanMetricsSet::new(),
            ran: Ran::default(),
        }
    }
}

impl DisplayAs for LateralBuiltinExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let mut per_row: Vec<String> = self
            .per_row
            .iter()
            .map(|(n, e, _)| format!("{n} = {e}"))
            .collect();
        let jobs = match &self.work {
            Work::Shared(b) => format!("jobs=[{}] shared", b.job_names().join(", ")),
            Work::PerRow(p) => {
                let columns: Vec<String> = p.outer.iter().map(|(c, _)| c.to_string()).collect();
                per_row.push(format!("subqueries over {}", columns.join(", ")));
                "jobs planned and computed per row".to_string()
            }
        };
        // The plan for the rows the input's statistics promise; the one that ran after
        // EXPLAIN ANALYZE.
        let parfor = self.work.parfor();
        let rows = StatisticsContext::new()
            .compute(self.input.as_ref(), &StatisticsArgs::new())
            .ok()
            .and_then(|s| s.num_rows.get_value().copied());
        let planned = match rows {
            Some(n) => parfor.plan(n, self.work.planning_cost()).describe(n),
            None => format!(
                "scheme={} workers={} tasks=one per input row",
                parfor
                    .scheme
                    .map_or_else(|| "auto".to_string(), Scheme::name),
                parfor
                    .workers
                    .map_or_else(|| "auto".to_string(), |w| w.to_string())
            ),
        };
        write!(
            f,
            "{}: {} per row: {} {jobs} parfor: {planned} local",
            self.name(),
            self.work.call(),
            per_row.join(", "),
        )?;
        fmt_ran(&self.ran, f)
    }
}

impl ExecutionPlan for LateralBuiltinExec {
    fn name(&self) -> &str {
        // The plan cache keeps no plan that plans again as it runs (by this name).
        match self.work {
            Work::Shared(_) => "LateralBuiltinExec",
            Work::PerRow(_) => "LateralBuiltinPerRowExec",
        }
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        let outer = match &self.work {
            Work::Shared(_) => &[][..],
            Work::PerRow(p) => &p.outer[..],
        };
        for e in self
            .per_row
            .iter()
            .map(|(_, _, e)| e)
            .chain(outer.iter().map(|(_, e)| e))
        {
            if f(e)? == TreeNodeRecursion::Stop {
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let [input] = <[_; 1]>::try_from(children)
            .map_err(|_| DataFusionError::Internal("LateralBuiltinExec has one child".into()))?;
        Ok(Arc::new(Self::new(
            input,
            self.work.clone(),
            self.per_row.clone(),
            Arc::clone(&self.schema),
        )))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn reset_state(self: Arc<Self>) -> Result<Arc<dyn ExecutionPlan>> {
        let work = match &self.work {
            Work::Shared(b) => Work::Shared(Arc::new(b.reset()?)),
            Work::PerRow(p) => Work::PerRow(Arc::clone(p)),
        };
        Ok(Arc::new(Self::new(
            Arc::clone(&self.input),
            work,
            self.per_row.clone(),
            Arc::clone(&self.schema),
        )))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "LateralBuiltinExec has one partition, asked for {partition}"
            )));
        }
        let input = Arc::clone(&self.input);
        let work = self.work.clone();
        let per_row = self.per_row.clone();
        let schema = Arc::clone(&self.schema);
        let metrics = self.metrics.clone();
        let ran = Arc::clone(&self.ran);
        let fut = async move {
            let input_schema = input.schema();
            let batches = collect(input, Arc::clone(&context)).await?;
            let rows = concat_batches(&input_schema, &batches)?;
            drop(batches);
            let n = rows.num_rows();
            // Each per-row argument as numbers, NULL for a NULL or non-number.
            let mut values = Vec::with_capacity(per_row.len());
            for (name, written, e) in &per_row {
                let v = e.evaluate(&rows)?.into_array(n)?;
                let v = cast(&v, &DataType::Float64).map_err(|err| {
                    tessera_error(
                        ErrorKind::DatatypeMismatch,
                        format!(
                            "LATERAL {}: {name} => {written} must be a number: {err}",
                            work.call()
                        ),
                    )
                })?;
                values.push((*name, written.clone(), v));
            }
            let parfor = work.parfor().with_pool(&context);
            let elapsed = MetricBuilder::new(&metrics).elapsed_compute(0);
            let timer = elapsed.timer();
            let (outputs, report) = match &work {
                Work::Shared(builtin) => {
                    let (mats, reservation) =
                        builtin.compute_jobs(Arc::clone(&context), &metrics).await?;
                    let call = builtin.call_arc();
                    // Rows side by side compute on the cores left to each; a row alone
                    // may use every core, and runs its own tasks (k-means runs) itself.
                    // The pool as the rows find it, the jobs' copies held; the
                    // concurrent rows' memory charged before they start.
                    let parfor = parfor.with_pool(&context);
                    let cost = call.task_cost(&mats);
                    let plan = parfor.plan(n, cost);
                    charge_tasks(&reservation, &plan, &cost, &format!("LATERAL {call}"))?;
                    let (inner, par) = (parfor.inside(&plan), plan.par());
                    let out = tokio::task::spawn_blocking(move || {
                        tessera_storage::kernels::cpu_pool().install(|| {
                            parfor::run(n, &plan, |r| {
                                let (numbers, shown) = row_numbers(&values, r, &call)?;
                                let row_call = call.with_numbers(&numbers, true).map_err(|e| {
                                    e.context(format!("LATERAL {call}: row {r} ({shown})"))
                                })?;
                                row_call
                                    .finish(&mats, &inner, par)
                                    .map(|f| f.batch)
                                    .map_err(|e| {
                                        e.context(format!("LATERAL {call}: row {r} ({shown})"))
                                    })
                            })
                        })
                    })
                    .await
                    .map_err(|e| DataFusionError::External(Box::new(e)))?;
                    drop(reservation);
                    out?
                }
                Work::PerRow(call) => {
                    let mut outer = Vec::with_capacity(call.outer.len());
                    for (c, e) in &call.outer {
                        outer.push((c.clone(), e.evaluate(&rows)?.into_array(n)?));
                    }
                    // Nothing is known of a row's cost before its subqueries run.
                    let plan = parfor.plan(n, TaskCost::default());
                    let (inner, par) = (parfor.inside(&plan), plan.par());
                    let (values, outer, metrics) = (&values, &outer, &metrics);
                    parfor::run_async(n, &plan, |r| {
                        let context = Arc::clone(&context);
                        async move {
                            call.run_row(r, values, outer, context, metrics, inner, par)
                                .await
                        }
                    })
                    .await?
                }
            };
            timer.done();
            record_report(&metrics, &ran, &report);
            // Row r's output rows, after copies of row r.
            let mut index = Vec::new();
            for (r, out) in outputs.iter().enumerate() {
                index.extend(std::iter::repeat_n(r as u32, out.num_rows()));
            }
            let index = UInt32Array::from(index);
            let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
            for c in rows.columns() {
                columns.push(take(c.as_ref(), &index, None)?);
            }
            let call_schema = output_schema(&work.call_name());
            let results = concat_batches(&call_schema, &outputs)?;
            columns.extend(results.columns().iter().cloned());
            Ok(RecordBatch::try_new(Arc::clone(&schema), columns)?)
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            futures::stream::once(fut),
        )))
    }
}

/// Row `r`'s per-row numbers, and them as text for messages; a NULL is an error naming
/// the row.
fn row_numbers(
    values: &RowValues,
    r: usize,
    call: &impl fmt::Display,
) -> Result<(Vec<(&'static str, f64)>, String)> {
    let mut numbers = Vec::with_capacity(values.len());
    for (name, written, v) in values {
        let v = v
            .as_any()
            .downcast_ref::<Float64Array>()
            .filter(|v| v.is_valid(r))
            .map(|v| v.value(r));
        let Some(v) = v else {
            return Err(tessera_error(
                ErrorKind::DataException,
                format!("LATERAL {call}: row {r}: {name} => {written} is NULL"),
            ));
        };
        numbers.push((*name, v));
    }
    let shown: Vec<String> = numbers.iter().map(|(n, v)| format!("{n} = {v}")).collect();
    Ok((numbers, shown.join(", ")))
}

impl PerRowCall {
    /// Row `r`'s task: the call with the row's values in its subqueries and its
    /// numbers, planned, its jobs computed (charged to the pool while it runs), and its
    /// in-memory step run on the CPU pool.
    #[allow(clippy::too_many_arguments)]
    async fn run_row(
        &self,
        r: usize,
        values: &RowValues,
        outer: &[(Column, ArrayRef)],
        context: Arc<TaskContext>,
        metrics: &ExecutionPlanMetricsSet,
        inner: ParforSettings,
        par: Par,
    ) -> Result<RecordBatch> {
        let written = self.table.call_text();
        let (numbers, mut shown) = row_numbers(values, r, &written)?;
        let mut bound = Vec::with_capacity(outer.len());
        for (c, a) in outer {
            let v = ScalarValue::try_from_array(a.as_ref(), r)?;
            if !shown.is_empty() {
                shown.push_str(", ");
            }
            shown.push_str(&format!("{c} = {v}"));
            bound.push((c.clone(), v));
        }
        let named = |e: DataFusionError| e.context(format!("LATERAL {written}: row {r} ({shown})"));
        let run = async {
            let table = self.table.for_row(&bound, &numbers)?;
            let exec = table.scan_call(&self.state).await?;
            let (mats, reservation) = exec.compute_jobs(context, metrics).await?;
            let call = exec.call_arc();
            let batch = tokio::task::spawn_blocking(move || {
                tessera_storage::kernels::cpu_pool()
                    .install(|| call.finish(&mats, &inner, par).map(|f| f.batch))
            })
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))??;
            drop(reservation);
            Ok(batch)
        };
        run.await.map_err(named)
    }
}
