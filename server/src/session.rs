//! Sessions: one DataFusion `SessionContext` each (its own configuration and `SET`
//! state) over the database's shared catalog, store and memory pool.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use datafusion::arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::config::Dialect;
use datafusion::common::{ParamValues, ScalarValue, TableReference, plan_err};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::session_state::{SessionState, SessionStateBuilder};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::common::collect;
use datafusion::physical_plan::execute_stream;
use datafusion::physical_plan::execution_plan::reset_plan_states;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{
    ArrayElemTypeDef, DataType as SqlDataType, ExactNumberInfo, Ident, Statement as SqlStatement,
    TimezoneInfo,
};
use futures::StreamExt;
use tessera_planner::ddl::SqlText;
use tessera_planner::{DEFAULT_CATALOG, DEFAULT_SCHEMA, ddl, la, session};
use tessera_planner::{FileAccess, classify_statement_error};

use crate::database::Inner;
use crate::plan_cache::{self, Ticket, WriteGuard};

/// A session of a [`Database`](crate::Database): the same arrays and tables, its own
/// settings (`SET datafusion.execution.batch_size = ...`, `SET tessera.* = ...`).
/// Cloning shares the session (and its settings).
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
    ctx: SessionContext,
    derived: Arc<Derived>,
    /// How far this session's running statement is (an extension of its config).
    progress: Arc<tessera_planner::progress::StatementProgress>,
    /// Whose connection this is, once it is a server's (`pg_cancel_backend` asks).
    backend: Arc<crate::pg_catalog::BackendIdentity>,
}

/// What a session derives from its settings, kept between statements: rebuilding the
/// task context clones every function registry, which costs more than running a
/// trivial query. Forgotten after any statement that is not a query (`SET` among
/// them); never kept once the context was handed out, since it can then change
/// behind the session's back.
#[derive(Debug, Default)]
struct Derived {
    current: Mutex<Option<Settings>>,
    /// [`Session::context`] was called.
    exposed: AtomicBool,
}

#[derive(Debug, Clone)]
struct Settings {
    /// The plan cache's id of these settings.
    id: u64,
    task: Arc<TaskContext>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.ctx.session_id())
            .finish()
    }
}

impl Session {
    pub(crate) fn new(inner: Arc<Inner>) -> Result<Session> {
        let mut config = SessionConfig::new()
            .with_information_schema(true)
            .with_create_default_catalog_and_schema(false)
            .with_default_catalog_and_schema(DEFAULT_CATALOG, DEFAULT_SCHEMA);
        if let Some(n) = inner.options.target_partitions {
            config = config.with_target_partitions(n.max(1));
        }
        // Statements are parsed at the edge with PostgreSQL's dialect (`ddl::parse`);
        // the text DataFusion parses itself (stored view and table definitions, column
        // defaults) is read the same way.
        config.options_mut().sql_parser.dialect = Dialect::PostgreSQL;
        // Tessera's settings first, then the builder: the linear-algebra extension
        // installs its functions, rewrites and physical planner.
        // An embedded database may use any file its process can, but never the store's.
        let forbidden = inner.storage_dirs();
        config = config.with_extension(Arc::new(FileAccess::unrestricted(forbidden)));
        let progress = Arc::new(tessera_planner::progress::StatementProgress::default());
        config = config.with_extension(Arc::clone(&progress));
        let config = la::session_config(config);
        let builder = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(inner.runtime.clone())
            .with_catalog_list(inner.catalogs.clone())
            .with_default_features();
        let mut builder = la::install(builder, inner.store.clone());
        if let Some(cluster) = &inner.cluster {
            builder = tessera_planner::distributed::install(
                builder,
                inner.store.clone(),
                Arc::clone(cluster),
            );
        }
        let state = builder.build();
        let ctx = SessionContext::new_with_state(state);
        if let Some(cluster) = &inner.cluster {
            ctx.register_udtf(
                "tessera_workers",
                Arc::new(tessera_planner::distributed::WorkersFunction(
                    Arc::clone(cluster),
                    inner.store.clone(),
                )),
            );
        }
        let backend = Arc::new(crate::pg_catalog::BackendIdentity::default());
        crate::pg_catalog::install(
            &ctx,
            inner.catalog.clone(),
            Arc::clone(&inner.activity),
            Arc::clone(&backend),
        )?;
        Ok(Session {
            ctx,
            inner,
            derived: Arc::default(),
            progress,
            backend,
        })
    }

    /// How far this session's running statement is.
    pub(crate) fn progress(&self) -> Arc<tessera_planner::progress::StatementProgress> {
        Arc::clone(&self.progress)
    }

    /// Names the connection this session serves: its backend pid, its user and whether
    /// that user is a superuser (for `pg_backend_pid()` and `pg_cancel_backend`).
    pub(crate) fn set_backend(&self, pid: i32, user: &str, superuser: bool) {
        self.backend.set(pid, user, superuser);
    }

    /// Sets which server files this session's statements may read and write (a server
    /// connection's role decides; see `[files]` in `docs/server.md`).
    pub fn set_file_access(&self, access: FileAccess) {
        self.ctx
            .state_ref()
            .write()
            .config_mut()
            .set_extension(Arc::new(access));
    }

    /// Runs a script of one or more statements (separated by `;`) and returns the
    /// result of the last one; an empty script returns no batches. Statements run in
    /// order, each to completion; the first error stops the script and is returned.
    pub async fn sql(&self, text: &str) -> Result<Vec<RecordBatch>> {
        collect(self.sql_stream(text).await?).await
    }

    /// Like [`Session::sql`], but streams the last statement's result: the statements
    /// before it have completed when this returns; the last runs as the stream is read.
    pub async fn sql_stream(&self, text: &str) -> Result<SendableRecordBatchStream> {
        let statements = ddl::parse(text)?;
        self.restore().await;
        let count = statements.len();
        let mut last = None;
        for (n, statement) in statements.into_iter().enumerate() {
            let stream = self.run_statement(statement).await?;
            if n + 1 == count {
                last = Some(stream);
            } else {
                collect(stream).await?;
            }
        }
        Ok(last.unwrap_or_else(empty_stream))
    }

    /// Runs one statement as split by [`tessera_planner::ddl::parse`] (Tessera's own or
    /// SQL for DataFusion) and returns its result stream.
    pub async fn execute_statement(
        &self,
        statement: ddl::Statement,
    ) -> Result<SendableRecordBatchStream> {
        self.restore().await;
        self.run_statement(statement).await
    }

    async fn run_statement(&self, statement: ddl::Statement) -> Result<SendableRecordBatchStream> {
        match statement {
            // `COPY (query) TO 'f.npy'` is Tessera's own writer, not a DataFusion plan.
            ddl::Statement::Sql(sql) if !session::is_array_query_copy(&sql.tree) => {
                self.run_sql(sql).await
            }
            statement => {
                let guard = self.begin_write();
                let stream =
                    Box::pin(session::execute(&self.ctx, &self.inner.catalog, statement)).await;
                self.forget_settings();
                Ok(with_guard(stream?, guard))
            }
        }
    }

    /// Runs one SQL statement, through the plan cache when it is a query.
    ///
    /// Planning goes through a boxed future: DataFusion's planner futures are tens of
    /// kilobytes, and every future that awaits one inline grows by as much and is
    /// copied at each level, which cost more than running a cached `SELECT 1`.
    async fn run_sql(&self, sql: SqlText) -> Result<SendableRecordBatchStream> {
        let settings = self.settings();
        if let Some(plan) = self.inner.plans.get(&sql.text, settings.id) {
            return execute_stream(plan, settings.task);
        }
        Box::pin(self.plan_sql(sql, settings)).await
    }

    async fn plan_sql(
        &self,
        sql: SqlText,
        settings: Settings,
    ) -> Result<SendableRecordBatchStream> {
        let ticket = self.inner.plans.ticket();
        let state = self.ctx.state();
        let result = if tessera_planner::explain::is_picture(&sql.tree) {
            tessera_planner::explain::picture(&state, &sql.tree).await
        } else {
            match state.statement_to_plan(sql.tree.clone()).await {
                Ok(plan) => {
                    self.run_plan(state, plan, &sql.text, Some((ticket, settings)))
                        .await
                }
                Err(e) => Err(e),
            }
        };
        match result {
            Ok(stream) => Ok(stream),
            Err(e) => Err(self.classify(&sql.tree, e).await),
        }
    }

    /// `error` of statement `tree`, with the kind the tree and the catalog give it.
    async fn classify(&self, tree: &DFStatement, error: DataFusionError) -> DataFusionError {
        classify_statement_error(&self.ctx.state(), tree, error).await
    }

    /// The columns `columns` (all when empty) of table or array `name`, as a stream:
    /// `COPY name TO STDOUT`. Planned from the catalog, not from SQL text.
    pub async fn read_table(
        &self,
        name: TableReference,
        columns: &[String],
    ) -> Result<SendableRecordBatchStream> {
        self.restore().await;
        let frame = self.ctx.table(name).await?;
        let frame = if columns.is_empty() {
            frame
        } else {
            let columns: Vec<&str> = columns.iter().map(String::as_str).collect();
            frame.select_columns(&columns)?
        };
        frame.execute_stream().await
    }

    /// Runs a logical plan made in `state` from `text`. A query is planned in `state`
    /// and, when `cache` is given and the plan may be reused, stored in the plan cache;
    /// any other statement runs holding a [`WriteGuard`].
    async fn run_plan(
        &self,
        state: SessionState,
        plan: LogicalPlan,
        text: &str,
        cache: Option<(Ticket, Settings)>,
    ) -> Result<SendableRecordBatchStream> {
        if !plan_cache::is_query(&plan) {
            let guard = self.begin_write();
            let stream =
                session::execute_plan(&self.ctx, &self.inner.catalog, state, plan, text).await;
            self.forget_settings();
            return Ok(with_guard(stream?, guard));
        }
        let cacheable = cache.is_some() && plan_cache::cacheable_logical(&plan);
        // The workers a distributed plan may use, taken before it is made: losing one
        // of them is what a failure of the statement is then put down to.
        let used = self.inner.cluster.as_ref().map(|c| c.live());
        let physical = state.create_physical_plan(&plan).await?;
        let settings = match cache {
            Some((ticket, settings)) => {
                // The cache keeps a copy that never runs: the executed tree holds its
                // operators' results and memory reservations until it is dropped, which
                // must be when this statement ends, not when the entry is evicted.
                if cacheable
                    && plan_cache::cacheable_physical(&physical)
                    && let Ok(pristine) = reset_plan_states(physical.clone())
                {
                    self.inner.plans.insert(ticket, text, settings.id, pristine);
                }
                settings
            }
            None => self.settings(),
        };
        match &self.inner.cluster {
            Some(cluster) if runs_on_workers(&physical) => Ok(retry_on_survivors(
                state,
                plan,
                (physical, used.unwrap_or_default()),
                settings.task,
                Arc::clone(cluster),
            )),
            _ => execute_stream(physical, settings.task),
        }
    }

    /// Marks a statement that may change data, definitions or settings as running,
    /// until the guard is dropped (see [`crate::plan_cache`]).
    pub(crate) fn begin_write(&self) -> WriteGuard {
        self.inner.plans.begin_write()
    }

    /// The plan cache's id of this session's settings and a task context for them.
    fn settings(&self) -> Settings {
        let exposed = self.derived.exposed.load(Ordering::Relaxed);
        let mut current = self
            .derived
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(settings) = current.as_ref().filter(|_| !exposed) {
            return settings.clone();
        }
        let (fingerprint, task) = {
            let state = self.ctx.state_ref();
            let state = state.read();
            let fingerprint: String = state
                .config()
                .options()
                .entries()
                .into_iter()
                .map(|e| format!("{}={:?}\n", e.key, e.value))
                .collect();
            (fingerprint, Arc::new(TaskContext::from(&*state)))
        };
        let settings = Settings {
            id: self.inner.plans.settings_id(fingerprint),
            task,
        };
        *current = Some(settings.clone());
        settings
    }

    fn forget_settings(&self) {
        *self
            .derived
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Plans one statement that may hold `$1`, `$2`, ... placeholders, without running
    /// it: the protocol servers' Parse/Describe. `declared` are the parameter types the
    /// client named (`None` where it left the type to the server). Tessera's own
    /// statements take no parameters; an empty text prepares an empty statement.
    pub async fn prepare(
        &self,
        sql: &str,
        declared: &[Option<DataType>],
    ) -> Result<PreparedStatement> {
        self.prepare_parsed(ddl::parse(sql)?, declared).await
    }

    /// [`Session::prepare`] of a script already parsed (by
    /// [`ddl::parse_with`](tessera_planner::ddl::parse_with), for instance).
    pub async fn prepare_parsed(
        &self,
        mut statements: Vec<ddl::Statement>,
        declared: &[Option<DataType>],
    ) -> Result<PreparedStatement> {
        if statements.len() > 1 {
            return plan_err!(
                "cannot insert multiple commands into a prepared statement ({} given)",
                statements.len()
            );
        }
        match statements.pop() {
            Some(statement) => self.prepare_statement(statement, declared).await,
            None => Ok(PreparedStatement {
                statement: None,
                parameter_types: Vec::new(),
                schema: Arc::new(Schema::empty()),
            }),
        }
    }

    /// [`Session::prepare`] of a statement already parsed.
    pub async fn prepare_statement(
        &self,
        statement: ddl::Statement,
        declared: &[Option<DataType>],
    ) -> Result<PreparedStatement> {
        self.restore().await;
        if let ddl::Statement::Sql(sql) = &statement
            && session::is_array_query_copy(&sql.tree)
        {
            // Runs without a DataFusion plan: no parameters, and a count when executed.
            return Ok(PreparedStatement {
                statement: Some(statement),
                parameter_types: Vec::new(),
                schema: Arc::new(Schema::empty()),
            });
        }
        match &statement {
            // Drawn, not planned by DataFusion (which refuses some of them).
            ddl::Statement::Sql(sql) if tessera_planner::explain::is_picture(&sql.tree) => {
                Ok(PreparedStatement {
                    statement: Some(statement.clone()),
                    parameter_types: Vec::new(),
                    schema: tessera_planner::explain::picture_schema(),
                })
            }
            ddl::Statement::Sql(sql) => {
                let plan = self
                    .plan_with_parameters(&self.ctx.state(), sql, declared)
                    .await?;
                let parameter_types = parameter_types(&plan)?;
                let schema = match &plan {
                    LogicalPlan::Statement(datafusion::logical_expr::Statement::Prepare(p)) => {
                        Arc::new(p.input.schema().as_arrow().clone())
                    }
                    other => Arc::new(other.schema().as_arrow().clone()),
                };
                Ok(PreparedStatement {
                    statement: Some(statement),
                    parameter_types,
                    schema,
                })
            }
            ddl::Statement::Tessera(t) => {
                // `SHOW ARRAYS` and `DESCRIBE` return rows: run them once (they only
                // read) so the result can be described before it is executed.
                let schema = match t {
                    // VERIFY reads the whole store: its columns are known without it.
                    ddl::TesseraStatement::Verify { .. } => session::verify_schema(),
                    ddl::TesseraStatement::ShowArrays | ddl::TesseraStatement::Describe { .. } => {
                        session::execute(&self.ctx, &self.inner.catalog, statement.clone())
                            .await?
                            .schema()
                    }
                    _ => Arc::new(Schema::empty()),
                };
                Ok(PreparedStatement {
                    statement: Some(statement),
                    parameter_types: Vec::new(),
                    schema,
                })
            }
        }
    }

    /// Runs a prepared statement with `params` bound to its placeholders in order. The
    /// statement is planned again (it sees the current versions of arrays and tables);
    /// each value is cast to its placeholder's type where that is known.
    pub async fn execute_prepared(
        &self,
        prepared: &PreparedStatement,
        params: Vec<ScalarValue>,
        declared: &[Option<DataType>],
    ) -> Result<SendableRecordBatchStream> {
        let Some(statement) = &prepared.statement else {
            return Ok(empty_stream());
        };
        if params.len() != prepared.parameter_types.len() {
            return plan_err!(
                "the statement has {} parameters but {} values were bound",
                prepared.parameter_types.len(),
                params.len()
            );
        }
        match statement {
            ddl::Statement::Sql(sql) if !params.is_empty() => {
                Box::pin(self.execute_with_parameters(sql, params, declared)).await
            }
            other => self.execute_statement(other.clone()).await,
        }
    }

    async fn execute_with_parameters(
        &self,
        sql: &SqlText,
        params: Vec<ScalarValue>,
        declared: &[Option<DataType>],
    ) -> Result<SendableRecordBatchStream> {
        self.restore().await;
        let state = self.ctx.state();
        let plan = self.plan_with_parameters(&state, sql, declared).await?;
        let expected = parameter_types(&plan)?;
        let values = params
            .into_iter()
            .zip(expected)
            .map(|(value, ty)| match ty {
                Some(ty) if value.data_type() != ty => value.cast_to(&ty),
                _ => Ok(value),
            })
            .collect::<Result<Vec<_>>>()?;
        let plan = plan.with_param_values(ParamValues::from(values))?;
        match self.run_plan(state, plan, &sql.text, None).await {
            Ok(stream) => Ok(stream),
            Err(e) => Err(self.classify(&sql.tree, e).await),
        }
    }

    /// Plans `sql` with typed placeholders. Each placeholder takes the type its context
    /// gives it (an INSERT's column, the other side of a comparison), else the type the
    /// client declared, else `text` (as PostgreSQL types an unknown parameter); when
    /// the context leaves any untyped the statement is planned as
    /// `PREPARE ... (types) AS sql`. Bound values are cast to these types, so a
    /// driver's `int2` for a small Python int still fills an `INT` column.
    ///
    /// The plan is kept in the plan cache (see [`PlanCache::get_generic`]): a driver's
    /// Parse, and every Bind of a prepared statement, plan the same text again.
    ///
    /// [`PlanCache::get_generic`]: crate::plan_cache::PlanCache::get_generic
    async fn plan_with_parameters(
        &self,
        state: &SessionState,
        sql: &SqlText,
        declared: &[Option<DataType>],
    ) -> Result<LogicalPlan> {
        let settings = self.settings().id;
        let plans = &self.inner.plans;
        if let Some(plan) = plans.get_generic(&sql.text, settings, declared) {
            return Ok(plan);
        }
        let ticket = plans.ticket();
        let plan = self.plan_parameters(state, sql, declared).await?;
        plans.insert_generic(ticket, &sql.text, settings, declared, &plan);
        Ok(plan)
    }

    async fn plan_parameters(
        &self,
        state: &SessionState,
        sql: &SqlText,
        declared: &[Option<DataType>],
    ) -> Result<LogicalPlan> {
        let plain = state.statement_to_plan(sql.tree.clone()).await;
        let inferred = match &plain {
            Ok(plan) => parameter_types(plan)?,
            Err(_) => Vec::new(),
        };
        let count = inferred.len().max(declared.len());
        let chosen: Vec<(DataType, bool)> = (0..count)
            .map(|k| match inferred.get(k).cloned().flatten() {
                Some(ty) => (ty, false),
                None => match declared.get(k).cloned().flatten() {
                    Some(ty) => (ty, true),
                    None => (DataType::Utf8, true),
                },
            })
            .collect();
        if chosen.iter().any(|(_, changes)| *changes) || plain.is_err() {
            let types: Option<Vec<SqlDataType>> =
                chosen.iter().map(|(ty, _)| sql_data_type(ty)).collect();
            if let (Some(types), DFStatement::Statement(statement)) =
                (types.filter(|t| !t.is_empty()), &sql.tree)
            {
                let prepare = SqlStatement::Prepare {
                    name: Ident::new("tessera_prepared"),
                    data_types: types,
                    statement: statement.clone(),
                };
                let wrapped = DFStatement::Statement(Box::new(prepare));
                if let Ok(plan) = state.statement_to_plan(wrapped).await {
                    return Ok(plan);
                }
            }
        }
        match plain {
            Ok(plan) => Ok(plan),
            Err(e) => Err(self.classify(&sql.tree, e).await),
        }
    }

    /// The DataFusion context this session plans in (for embedders and the protocol
    /// servers; SQL should go through [`Session::sql`] so Tessera's statements work).
    /// Changing the context's settings or functions directly is seen by later
    /// statements (the session stops keeping what it derives from them).
    pub fn context(&self) -> &SessionContext {
        self.derived.exposed.store(true, Ordering::Relaxed);
        &self.ctx
    }

    /// The context, for the protocol servers' reads and COPY (which change no settings).
    pub(crate) fn ctx(&self) -> &SessionContext {
        &self.ctx
    }

    /// Plans the stored external tables and views once per database, in the first
    /// session that runs a statement.
    async fn restore(&self) {
        if self.inner.restored.initialized() {
            return;
        }
        let (ctx, catalog) = (&self.ctx, &self.inner.catalog);
        Box::pin(
            self.inner
                .restored
                .get_or_init(|| session::restore_catalog(ctx, catalog)),
        )
        .await;
    }
}

/// `stream`, holding `guard` until it is dropped.
fn with_guard(stream: SendableRecordBatchStream, guard: WriteGuard) -> SendableRecordBatchStream {
    let schema = stream.schema();
    Box::pin(RecordBatchStreamAdapter::new(
        schema,
        stream.map(move |batch| {
            let _running = &guard;
            batch
        }),
    ))
}

fn empty_stream() -> SendableRecordBatchStream {
    Box::pin(RecordBatchStreamAdapter::new(
        Arc::new(Schema::empty()),
        futures::stream::empty(),
    ))
}

/// A statement planned by [`Session::prepare`]: its parameter and result types.
#[derive(Debug, Clone)]
pub struct PreparedStatement {
    /// `None` for an empty statement.
    statement: Option<ddl::Statement>,
    parameter_types: Vec<Option<DataType>>,
    schema: SchemaRef,
}

impl PreparedStatement {
    /// The statement, or `None` when the text held none.
    pub fn statement(&self) -> Option<&ddl::Statement> {
        self.statement.as_ref()
    }

    /// The type of each placeholder `$1`, `$2`, ... in order; `None` where the SQL does
    /// not tell.
    pub fn parameter_types(&self) -> &[Option<DataType>] {
        &self.parameter_types
    }

    /// The columns the statement returns (none for a statement without rows; DML
    /// returns its `count`).
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }
}

/// The placeholders of `plan` in order `$1, $2, ...` with their types where known.
fn parameter_types(plan: &LogicalPlan) -> Result<Vec<Option<DataType>>> {
    if let LogicalPlan::Statement(datafusion::logical_expr::Statement::Prepare(p)) = plan {
        return Ok(p
            .fields
            .iter()
            .map(|f| Some(f.data_type().clone()))
            .collect());
    }
    let types: HashMap<String, Option<DataType>> = plan.get_parameter_types()?;
    let mut numbered = Vec::with_capacity(types.len());
    for (id, ty) in types {
        match id.strip_prefix('$').and_then(|n| n.parse::<usize>().ok()) {
            Some(n) if n >= 1 => numbered.push((n, ty)),
            _ => return plan_err!("placeholder {id} is not of the form $1, $2, ..."),
        }
    }
    numbered.sort_by_key(|(n, _)| *n);
    let count = numbered.last().map_or(0, |(n, _)| *n);
    let mut out = vec![None; count];
    for (n, ty) in numbered {
        out[n - 1] = ty;
    }
    if out.iter().any(Option::is_none) {
        // `$1::INT`: a placeholder DataFusion leaves untyped takes its cast's type;
        // `x = ANY($1)`: a list of x's type.
        for (id, ty) in cast_placeholder_types(plan)? {
            if let Some(slot) = id
                .strip_prefix('$')
                .and_then(|n| n.parse::<usize>().ok())
                .and_then(|n| out.get_mut(n.wrapping_sub(1)))
            {
                slot.get_or_insert(ty);
            }
        }
    }
    Ok(out)
}

/// The types of placeholders written directly inside a `CAST` / `::`, and of the list
/// in `x = ANY($1)` / `x <> ALL($1)` (DataFusion's `array_has($1, x)`): a list of x's
/// type.
fn cast_placeholder_types(plan: &LogicalPlan) -> Result<Vec<(String, DataType)>> {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    use datafusion::logical_expr::{Cast, Expr, ExprSchemable, TryCast, expr::Placeholder};
    let mut found = Vec::new();
    plan.apply_with_subqueries(|node| {
        let inputs = node.inputs();
        node.apply_expressions(|expr| {
            expr.apply(|e| {
                if let Expr::Cast(Cast { expr, field }) | Expr::TryCast(TryCast { expr, field }) = e
                    && let Expr::Placeholder(Placeholder { id, .. }) = expr.as_ref()
                {
                    found.push((id.clone(), field.data_type().clone()));
                }
                if let Expr::ScalarFunction(f) = e
                    && f.name() == "array_has"
                    && let [Expr::Placeholder(Placeholder { id, .. }), element] = f.args.as_slice()
                    && let Some(ty) = inputs
                        .iter()
                        .find_map(|input| element.get_type(input.schema()).ok())
                    && ty != DataType::Null
                {
                    found.push((id.clone(), DataType::new_list(ty, true)));
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })
    })?;
    Ok(found)
}

/// The SQL name DataFusion's `PREPARE` accepts for a parameter type.
fn sql_data_type(ty: &DataType) -> Option<SqlDataType> {
    Some(match ty {
        DataType::Boolean => SqlDataType::Boolean,
        DataType::Int16 => SqlDataType::SmallInt(None),
        DataType::Int32 => SqlDataType::Int(None),
        DataType::Int64 => SqlDataType::BigInt(None),
        DataType::Float32 => SqlDataType::Real,
        DataType::Float64 => SqlDataType::Double(ExactNumberInfo::None),
        DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 => SqlDataType::Varchar(None),
        DataType::Date32 => SqlDataType::Date,
        DataType::Timestamp(_, None) => SqlDataType::Timestamp(None, TimezoneInfo::None),
        DataType::Timestamp(_, Some(_)) => SqlDataType::Timestamp(None, TimezoneInfo::Tz),
        DataType::Binary => SqlDataType::Bytea,
        DataType::Decimal128(p, s) => SqlDataType::Decimal(ExactNumberInfo::PrecisionAndScale(
            u64::from(*p),
            i64::from(*s),
        )),
        DataType::List(element) => SqlDataType::Array(ArrayElemTypeDef::SquareBracket(
            Box::new(sql_data_type(element.data_type())?),
            None,
        )),
        _ => return None,
    })
}

/// True when some stage of `plan` runs on workers: a distributed plan sits under the
/// statement's own operators (a sort, a limit, a projection) as often as at the top.
fn runs_on_workers(plan: &Arc<dyn datafusion::physical_plan::ExecutionPlan>) -> bool {
    plan.is::<datafusion_distributed::DistributedExec>()
        || plan.children().into_iter().any(runs_on_workers)
}

/// Attempts a distributed statement gets, the first included (as Spark tries a task).
const DISTRIBUTED_ATTEMPTS: usize = tessera_planner::distributed::ATTEMPTS;

/// Bytes of result a distributed statement holds back before sending the first row:
/// until then (and for every result this small, to its end) a lost worker's error,
/// even one that arrives after the last batch as a stream to the dead worker closes,
/// still finds nothing sent and the statement runs again.
const RETRY_BUFFER: usize = 4 << 20;

/// What the first part of an attempt gave.
enum Held {
    /// The whole result.
    Done(Vec<RecordBatch>),
    /// [`RETRY_BUFFER`] or more of it; the rest is still to come.
    Full(Vec<RecordBatch>),
    /// An error before either.
    Failed(DataFusionError),
}

/// Runs the distributed plan `physical` of `plan`, made when the workers `used` were
/// live. A failure is put down to a lost worker when its error says so (a gRPC status
/// of the retryable class raised here) or when, asked at once, the heartbeat finds one
/// of `used` gone: an error a worker met reading from a dead peer reaches this process
/// re-encoded by the library, its type lost, so the cluster's state is what tells.
/// While nothing has reached the client (the first [`RETRY_BUFFER`] bytes of the
/// result are held back) the statement is then planned again on the workers left and
/// run again, up to [`DISTRIBUTED_ATTEMPTS`] attempts in all; after that, or on the
/// last attempt, the client gets the error as
/// [`ErrorKind::WorkerLost`](tessera_planner::ErrorKind) (57P01: retry).
fn retry_on_survivors(
    state: SessionState,
    plan: LogicalPlan,
    (physical, used): (
        Arc<dyn datafusion::physical_plan::ExecutionPlan>,
        Vec<url::Url>,
    ),
    task: Arc<TaskContext>,
    cluster: Arc<tessera_planner::distributed::Cluster>,
) -> SendableRecordBatchStream {
    use futures::TryStreamExt;
    use futures::stream::BoxStream;
    let schema = physical.schema();
    let attempts = futures::stream::once(async move {
        let (mut physical, mut used) = (physical, used);
        let mut attempt = 1;
        loop {
            // Starting the stages may fail at once (a worker that refuses connections):
            // that failure counts as the first batch's.
            let mut stream: BoxStream<'static, Result<RecordBatch>> =
                match execute_stream(physical, Arc::clone(&task)) {
                    Ok(stream) => stream.boxed(),
                    Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
                };
            let mut held = Vec::new();
            let mut bytes = 0;
            let outcome = loop {
                match stream.next().await {
                    None => break Held::Done(std::mem::take(&mut held)),
                    Some(Ok(batch)) => {
                        bytes += batch.get_array_memory_size();
                        held.push(batch);
                        if bytes >= RETRY_BUFFER {
                            break Held::Full(std::mem::take(&mut held));
                        }
                    }
                    Some(Err(e)) => break Held::Failed(e),
                }
            };
            match outcome {
                Held::Failed(e) => {
                    let lost = worker_loss(e, &used, &cluster).await;
                    if attempt == DISTRIBUTED_ATTEMPTS || !is_worker_lost(&lost) {
                        return Err(lost);
                    }
                    tracing::warn!(
                        attempt,
                        "a worker was lost before the statement sent rows ({lost}); running it again on the workers left"
                    );
                    cluster.note_retry(&used);
                    drop(stream);
                    attempt += 1;
                    used = cluster.live();
                    physical = state.create_physical_plan(&plan).await?;
                }
                Held::Done(batches) => {
                    let all: BoxStream<'static, Result<RecordBatch>> =
                        futures::stream::iter(batches.into_iter().map(Ok)).boxed();
                    return Ok::<_, DataFusionError>(all);
                }
                Held::Full(batches) => {
                    let rest = stream.then(move |batch| {
                        let (used, cluster) = (used.clone(), Arc::clone(&cluster));
                        async move {
                            match batch {
                                Err(e) => Err(worker_loss(e, &used, &cluster).await),
                                ok => ok,
                            }
                        }
                    });
                    let all: BoxStream<'static, Result<RecordBatch>> =
                        futures::stream::iter(batches.into_iter().map(Ok))
                            .chain(rest)
                            .boxed();
                    return Ok(all);
                }
            }
        }
    })
    .try_flatten();
    Box::pin(RecordBatchStreamAdapter::new(schema, attempts))
}

/// `error` as [`ErrorKind::WorkerLost`](tessera_planner::ErrorKind) when it came from
/// losing one of the workers `used` (see [`retry_on_survivors`]), otherwise unchanged.
async fn worker_loss(
    error: DataFusionError,
    used: &[url::Url],
    cluster: &tessera_planner::distributed::Cluster,
) -> DataFusionError {
    if is_worker_lost(&error) {
        return error;
    }
    // Asked at once, the heartbeat also takes the lost worker out of the next plan.
    cluster.beat().await;
    let lost = crate::errors::worker_lost(&error) || cluster.lost_any(used);
    if lost {
        DataFusionError::External(Box::new(tessera_planner::TesseraError::classified(
            tessera_planner::ErrorKind::WorkerLost,
            error,
        )))
    } else {
        error
    }
}

/// True when `error` is already put down to a lost worker.
fn is_worker_lost(error: &DataFusionError) -> bool {
    tessera_planner::TesseraError::find(error)
        .is_some_and(|e| e.kind() == tessera_planner::ErrorKind::WorkerLost)
}
