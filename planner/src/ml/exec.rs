//! `BuiltinTable`, the relation a builtin call plans to, and `BuiltinExec`, its
//! operator: it computes the call's matrix expressions (each a block dataflow or
//! `LaExec` plan, planned by the session's own planner), then runs the call's small
//! in-memory step off the async threads.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{FieldRef, SchemaRef};
use datafusion::catalog::Session;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DataFusionError, Result, ScalarValue};
use datafusion::datasource::provider_as_source;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType, reset_plan_states};
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricBuilder, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream, collect,
};

use super::ParforConfig;
use super::call::{Call, builtin_scan, output_schema, plan_jobs};
use super::parfor::{ParforReport, RunPlan, Scheme, TaskCost};
use crate::la::{BlockMatrix, MatExpr, Op, Pinned};

/// How a call's independent tasks (k-means runs, one-vs-rest SVMs, `LATERAL` rows)
/// are scheduled: what the session forces, and what the optimizer plans with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParforSettings {
    /// A forced scheme, or `None` for the optimizer's choice.
    pub scheme: Option<Scheme>,
    /// Forced worker count (`parfor.workers` > 0), or `None` for the optimizer's.
    pub workers: Option<usize>,
    /// Threads the tasks may use in all.
    pub cores: usize,
    /// Bytes left in the memory pool when the run starts, when it has a limit.
    pub free: Option<u64>,
}

impl ParforSettings {
    /// The settings of a session (`parfor.scheme`, `parfor.workers`,
    /// `parfor.task_size`); `tessera.parfor_scheme`, when set, is the scheme.
    pub fn of(session: &dyn Session) -> Result<Self> {
        let extensions = &session.config_options().extensions;
        let mut cfg = extensions
            .get::<ParforConfig>()
            .cloned()
            .unwrap_or_default();
        if let Some(t) = extensions.get::<crate::la::TesseraConfig>()
            && !t.parfor_scheme.is_empty()
        {
            cfg.scheme = t.parfor_scheme.clone();
        }
        Ok(Self {
            scheme: Scheme::parse(&cfg.scheme, cfg.task_size)?,
            workers: (cfg.workers > 0).then_some(cfg.workers),
            cores: tessera_storage::kernels::cpu_pool()
                .current_num_threads()
                .max(1),
            free: None,
        })
    }

    /// The same settings with the free memory of `context`'s pool.
    pub(crate) fn with_pool(self, context: &TaskContext) -> Self {
        use datafusion::execution::memory_pool::MemoryLimit;
        let pool = context.memory_pool();
        let free = match pool.memory_limit() {
            MemoryLimit::Finite(limit) => Some(limit.saturating_sub(pool.reserved()) as u64),
            _ => None,
        };
        Self { free, ..self }
    }

    /// The plan for `n` tasks costing `cost` each.
    pub fn plan(&self, n: usize, cost: TaskCost) -> RunPlan {
        RunPlan::choose(n, cost, self.cores, self.free, self.scheme, self.workers)
    }

    /// The settings for the tasks of a task run by `plan` (k-means runs inside a
    /// `LATERAL` row): the threads that task has.
    pub fn inside(&self, plan: &RunPlan) -> Self {
        Self {
            workers: if plan.workers > 1 { None } else { self.workers },
            cores: plan.threads,
            free: self.free.map(|f| f / plan.workers.max(1) as u64),
            ..*self
        }
    }
}

/// The relation of one builtin call.
pub(crate) struct BuiltinTable {
    call: Arc<Call>,
    /// Its subquery arguments, `Op::Input(k)` being the `k`-th.
    inputs: Vec<LogicalPlan>,
    /// `(argument position, parameter)` of each input.
    owners: Vec<(usize, &'static str)>,
    jobs: Vec<(MatExpr, LogicalPlan)>,
    checks: Vec<(String, LogicalPlan)>,
    schema: SchemaRef,
}

impl fmt::Debug for BuiltinTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BuiltinTable({})", self.call)
    }
}

impl BuiltinTable {
    /// The relation of `call` over its subquery arguments `inputs`.
    pub(crate) fn new(
        call: Arc<Call>,
        inputs: Vec<LogicalPlan>,
        owners: Vec<(usize, &'static str)>,
    ) -> Result<Self> {
        let (jobs, checks) = plan_jobs(&call, &inputs, &owners)?;
        let schema = output_schema(&call.name);
        Ok(Self {
            call,
            inputs,
            owners,
            jobs,
            checks,
            schema,
        })
    }

    /// The columns of an outer row its subquery arguments refer to (`LATERAL
    /// lm((SELECT i, j, v FROM obs WHERE obs.grp = g.grp), ...)`): empty unless the
    /// call must be planned and run again for each row.
    pub(crate) fn outer_columns(&self) -> Vec<(FieldRef, Column)> {
        let mut out: Vec<(FieldRef, Column)> = Vec::new();
        for input in &self.inputs {
            let mut found: Vec<(FieldRef, Column)> = input
                .all_out_ref_exprs()
                .into_iter()
                .filter_map(|e| match e {
                    Expr::OuterReferenceColumn(f, c) => Some((f, c)),
                    _ => None,
                })
                .collect();
            // A call nested in this one reads the row through its own subqueries.
            if let Some(nested) = builtin_scan(input) {
                found.extend(nested.outer_columns());
            }
            for (f, c) in found {
                if !out.iter().any(|(_, o)| *o == c) {
                    out.push((f, c));
                }
            }
        }
        out
    }

    /// The call for one outer row: its subquery arguments with the row's `values` in
    /// place of the outer columns they refer to, and its per-row numbers `numbers`.
    pub(crate) fn for_row(
        &self,
        values: &[(Column, ScalarValue)],
        numbers: &[(&'static str, f64)],
    ) -> Result<BuiltinTable> {
        let mut inputs = Vec::with_capacity(self.inputs.len());
        for input in &self.inputs {
            if let Some(nested) = builtin_scan(input) {
                // A nested call: bound the same way, scanned as before.
                let bound = Arc::new(nested.for_row(values, &[])?);
                let name = bound.call_name().to_string();
                inputs.push(
                    LogicalPlanBuilder::scan(name, provider_as_source(bound), None)?.build()?,
                );
                continue;
            }
            let bound = input
                .clone()
                .transform_up(|node| {
                    node.map_expressions(|e| {
                        e.transform(|e| match e {
                            Expr::OuterReferenceColumn(f, c) => {
                                let Some((_, v)) = values.iter().find(|(o, _)| *o == c) else {
                                    return Ok(Transformed::no(Expr::OuterReferenceColumn(f, c)));
                                };
                                Ok(Transformed::yes(Expr::Literal(
                                    v.cast_to(f.data_type())?,
                                    None,
                                )))
                            }
                            e => Ok(Transformed::no(e)),
                        })
                    })
                })?
                .data;
            inputs.push(bound);
        }
        let call = self.call.with_numbers(numbers, false)?;
        BuiltinTable::new(Arc::new(call), inputs, self.owners.clone())
    }
}

impl BuiltinTable {
    /// The builtin's name.
    pub(crate) fn call_name(&self) -> &str {
        &self.call.name
    }

    /// The call as written.
    pub(crate) fn call_text(&self) -> String {
        self.call.to_string()
    }

    /// The call's operator, its jobs planned by `state`'s planner.
    pub(crate) async fn scan_call(&self, state: &dyn Session) -> Result<Arc<BuiltinExec>> {
        self.exec(state, None).await
    }

    async fn exec(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
    ) -> Result<Arc<BuiltinExec>> {
        let mut jobs = Vec::with_capacity(self.jobs.len());
        for (e, plan) in &self.jobs {
            jobs.push(Job {
                expr: e.clone(),
                shape: e.shape().ok().flatten(),
                plan: state.create_physical_plan(plan).await?,
            });
        }
        let mut checks = Vec::with_capacity(self.checks.len());
        for (what, plan) in &self.checks {
            checks.push((what.clone(), state.create_physical_plan(plan).await?));
        }
        let reuse = state
            .config_options()
            .extensions
            .get::<crate::la::TesseraConfig>()
            .is_none_or(|t| t.reuse);
        Ok(Arc::new(BuiltinExec::new(
            Arc::clone(&self.call),
            jobs,
            checks,
            projection.cloned(),
            ParforSettings::of(state)?,
            state.config().target_partitions().max(1),
            reuse,
        )?))
    }
}

#[async_trait]
impl TableProvider for BuiltinTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self.exec(state, projection).await?)
    }
}

/// One matrix expression a call reads.
#[derive(Debug, Clone)]
struct Job {
    expr: MatExpr,
    shape: Option<(u64, u64)>,
    plan: Arc<dyn ExecutionPlan>,
}

/// Where a job's result may be kept for later calls: its lineage key (the expression
/// with the id and version of every array it reads), those arrays' ids, and their
/// store. `None` for a stored matrix itself (the block cache keeps its blocks), an
/// expression that reads a subquery (no version names what it read), or one that
/// reads no array.
fn lineage(expr: &MatExpr) -> Option<(String, Vec<u64>, tessera_storage::Store)> {
    fn walk(e: &MatExpr, key: &mut String, reads: &mut Vec<Pinned>) -> bool {
        use std::fmt::Write;
        match &e.op {
            Op::Input(_) => return false,
            Op::Array(p) => {
                let _ = write!(key, "#{}@{}", p.0.info().id, p.0.version());
                reads.push(p.clone());
                return true;
            }
            op => {
                let _ = write!(key, "{op:?}");
            }
        }
        key.push('(');
        for (n, a) in e.args.iter().enumerate() {
            if n > 0 {
                key.push_str(", ");
            }
            if !walk(a, key, reads) {
                return false;
            }
        }
        key.push(')');
        true
    }
    if matches!(expr.op, Op::Array(_)) {
        return None;
    }
    let mut key = String::new();
    let mut reads = Vec::new();
    if !walk(expr, &mut key, &mut reads) {
        return None;
    }
    let store = reads.first()?.0.store();
    let mut ids: Vec<u64> = reads.iter().map(|p| p.0.info().id).collect();
    ids.sort_unstable();
    ids.dedup();
    Some((key, ids, store))
}

/// Computes a builtin call: its jobs' matrices, then its result, in one partition.
#[derive(Debug)]
pub struct BuiltinExec {
    call: Arc<Call>,
    jobs: Vec<Job>,
    checks: Vec<(String, Arc<dyn ExecutionPlan>)>,
    projection: Option<Vec<usize>>,
    parfor: ParforSettings,
    parts: usize,
    /// Jobs over stored arrays are taken from and kept in the lineage cache.
    reuse: bool,
    schema: SchemaRef,
    props: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
    ran: Ran,
}

impl BuiltinExec {
    fn new(
        call: Arc<Call>,
        jobs: Vec<Job>,
        checks: Vec<(String, Arc<dyn ExecutionPlan>)>,
        projection: Option<Vec<usize>>,
        parfor: ParforSettings,
        parts: usize,
        reuse: bool,
    ) -> Result<Self> {
        let full = output_schema(&call.name);
        let schema = match &projection {
            Some(p) => Arc::new(full.project(p)?),
            None => full,
        };
        let props = PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Ok(Self {
            call,
            jobs,
            checks,
            projection,
            parfor,
            parts,
            reuse,
            schema,
            props: Arc::new(props),
            metrics: ExecutionPlanMetricsSet::new(),
            ran: Ran::default(),
        })
    }

    /// The call as written.
    pub fn call(&self) -> String {
        self.call.to_string()
    }

    /// The same call, ready to run again: its jobs' and checks' plans (outside its
    /// children, so [`reset_plan_states`] does not reach them) reset, its metrics new.
    pub(crate) fn reset(&self) -> Result<BuiltinExec> {
        let mut jobs = Vec::with_capacity(self.jobs.len());
        for job in &self.jobs {
            jobs.push(Job {
                plan: reset_plan_states(Arc::clone(&job.plan))?,
                ..job.clone()
            });
        }
        let mut checks = Vec::with_capacity(self.checks.len());
        for (what, plan) in &self.checks {
            checks.push((what.clone(), reset_plan_states(Arc::clone(plan))?));
        }
        BuiltinExec::new(
            Arc::clone(&self.call),
            jobs,
            checks,
            self.projection.clone(),
            self.parfor,
            self.parts,
            self.reuse,
        )
    }

    pub(crate) fn call_arc(&self) -> Arc<Call> {
        Arc::clone(&self.call)
    }

    pub(crate) fn call_name(&self) -> String {
        self.call.name.clone()
    }

    pub(crate) fn parfor(&self) -> ParforSettings {
        self.parfor
    }

    /// The jobs, as EXPLAIN shows them.
    pub(crate) fn job_names(&self) -> Vec<String> {
        self.jobs.iter().map(|j| j.expr.to_string()).collect()
    }

    /// Runs the call's NULL checks, then its jobs: their matrices, in job order, and
    /// the reservation charging their dense copies to the memory pool. A job over
    /// stored arrays whose lineage the store's cache holds is taken from there, and one
    /// computed is kept there (when the session reuses); `metrics` counts both as
    /// `lineage_hits` and `lineage_misses`.
    pub(crate) fn compute_jobs(
        &self,
        context: Arc<TaskContext>,
        metrics: &ExecutionPlanMetricsSet,
    ) -> impl Future<Output = Result<(Vec<BlockMatrix>, MemoryReservation)>> + Send + 'static {
        let call = Arc::clone(&self.call);
        let jobs = self.jobs.clone();
        let checks = self.checks.clone();
        let parts = self.parts;
        let reuse = self.reuse;
        let hits = MetricBuilder::new(metrics).global_counter("lineage_hits");
        let misses = MetricBuilder::new(metrics).global_counter("lineage_misses");
        async move {
            for (what, plan) in &checks {
                let rows: usize = collect(Arc::clone(plan), Arc::clone(&context))
                    .await?
                    .iter()
                    .map(RecordBatch::num_rows)
                    .sum();
                if rows > 0 {
                    return Err(super::dense::data_error(format!(
                        "{}: {what} has a NULL value; matrix cells must be numbers (filter the NULLs out or COALESCE them)",
                        call.name
                    )));
                }
            }
            let reservation = MemoryConsumer::new(format!("BuiltinExec[{}]", call.name))
                .register(context.memory_pool());
            let mut mats: Vec<BlockMatrix> = Vec::with_capacity(jobs.len());
            for job in &jobs {
                let lineage = if reuse { lineage(&job.expr) } else { None };
                let kept = lineage.as_ref().and_then(|(key, _, store)| {
                    store
                        .lineage_get(key)
                        .and_then(|v| v.downcast_ref::<BlockMatrix>().map(BlockMatrix::share))
                });
                let m = match kept {
                    Some(m) => {
                        hits.add(1);
                        m
                    }
                    None => {
                        let m =
                            match crate::la::compute_blocks(&job.plan, Arc::clone(&context), None)
                                .await?
                            {
                                Some(m) => m,
                                None => {
                                    let batches =
                                        collect(Arc::clone(&job.plan), Arc::clone(&context))
                                            .await?;
                                    BlockMatrix::from_batches(
                                        &call.name, &batches, job.shape, parts,
                                    )?
                                }
                            };
                        if let Some((key, reads, store)) = lineage {
                            misses.add(1);
                            // Blocks plus their keys and headers.
                            let bytes = m.bytes() as usize + m.block_count() * 64;
                            store.lineage_put(key, Arc::new(m.share()), bytes, reads);
                        }
                        m
                    }
                };
                // The in-memory step works on dense copies.
                reservation.try_grow((m.rows.saturating_mul(m.cols) * 8) as usize)?;
                mats.push(m);
            }
            Ok((mats, reservation))
        }
    }
}

/// Charges `plan.workers` concurrent tasks of `cost.memory` bytes each to
/// `reservation`; when the pool cannot hold them the run fails with 53200 before any
/// task starts (the optimizer already fits the workers to the free memory, so this
/// fails only when a single task does not fit).
pub(crate) fn charge_tasks(
    reservation: &MemoryReservation,
    plan: &RunPlan,
    cost: &TaskCost,
    what: &str,
) -> Result<()> {
    let each = cost.memory.unwrap_or(0);
    let bytes = each.saturating_mul(plan.workers as u64);
    reservation
        .try_grow(usize::try_from(bytes).unwrap_or(usize::MAX))
        .map_err(|e| {
            DataFusionError::ResourcesExhausted(format!(
                "{what}: {} concurrent tasks of about {each} bytes each do not fit in the memory pool: {e}",
                plan.workers
            ))
        })
}

/// The plan a parfor run ran, for EXPLAIN ANALYZE (empty until a run).
pub(crate) type Ran = Arc<std::sync::Mutex<Option<String>>>;

/// ` ran: <plan>` once a run has recorded its plan, for EXPLAIN ANALYZE.
pub(crate) fn fmt_ran(ran: &Ran, f: &mut fmt::Formatter) -> fmt::Result {
    match ran.lock().ok().and_then(|r| r.clone()) {
        Some(plan) => write!(f, " ran: {plan}"),
        None => Ok(()),
    }
}

/// A parfor run's tasks and busy time per worker, as `parfor_tasks` and `parfor_busy`,
/// and the plan it ran in `ran`.
pub(crate) fn record_report(metrics: &ExecutionPlanMetricsSet, ran: &Ran, report: &ParforReport) {
    if let Ok(mut ran) = ran.lock() {
        *ran = Some(report.plan.clone());
    }
    for (w, (tasks, busy)) in report.tasks.iter().zip(&report.busy).enumerate() {
        MetricBuilder::new(metrics)
            .with_new_label("worker", w.to_string())
            .global_counter("parfor_tasks")
            .add(*tasks);
        MetricBuilder::new(metrics)
            .with_new_label("worker", w.to_string())
            .subset_time("parfor_busy", 0)
            .add_duration(*busy);
    }
}

impl DisplayAs for BuiltinExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let jobs: Vec<String> = self.jobs.iter().map(|j| j.expr.to_string()).collect();
        write!(f, "BuiltinExec: {} jobs=[{}]", self.call, jobs.join(", "))?;
        let x = self.jobs.first().and_then(|j| j.shape);
        if let Some((tasks, cost)) = self.call.tasks(x) {
            let plan = self.parfor.plan(tasks, cost).describe(tasks);
            write!(f, " parfor: {plan} local")?;
        }
        fmt_ran(&self.ran, f)
    }
}

impl ExecutionPlan for BuiltinExec {
    fn name(&self) -> &str {
        "BuiltinExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        // The jobs are whole plans of their own, already optimized; they are run, not
        // rewritten again as part of this plan.
        vec![]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.is_empty() {
            Ok(self)
        } else {
            Err(DataFusionError::Internal(
                "BuiltinExec has no children".into(),
            ))
        }
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn reset_state(self: Arc<Self>) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(self.reset()?))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "BuiltinExec has one partition, asked for {partition}"
            )));
        }
        let call = Arc::clone(&self.call);
        let jobs = self.compute_jobs(Arc::clone(&context), &self.metrics);
        let parfor = self.parfor;
        let projection = self.projection.clone();
        let metrics = self.metrics.clone();
        let ran = Arc::clone(&self.ran);
        let schema = Arc::clone(&self.schema);
        let fut = async move {
            let (mats, reservation) = jobs.await?;
            // The pool as the tasks find it, the jobs' copies held; the concurrent
            // tasks' memory charged before they start.
            let parfor = parfor.with_pool(&context);
            let x = mats.first().map(|m| (m.rows, m.cols));
            if let Some((tasks, cost)) = call.tasks(x) {
                charge_tasks(&reservation, &parfor.plan(tasks, cost), &cost, &call.name)?;
            }
            let elapsed = MetricBuilder::new(&metrics).elapsed_compute(0);
            let timer = elapsed.timer();
            let finished = tokio::task::spawn_blocking(move || {
                tessera_storage::kernels::cpu_pool()
                    .install(|| call.finish(&mats, &parfor, faer::Par::rayon(0)))
            })
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))??;
            timer.done();
            if let Some(report) = &finished.report {
                record_report(&metrics, &ran, report);
            }
            drop(reservation);
            let batch = finished.batch;
            Ok(match &projection {
                Some(p) => batch.project(p)?,
                None => batch,
            })
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            schema,
            futures::stream::once(fut),
        )))
    }
}
