//! Executing statements in a session: Tessera's own ([`TesseraStatement`]) here, every
//! other statement planned by DataFusion, with the DDL that names tables (`CREATE
//! TABLE`, `CREATE EXTERNAL TABLE`, `CREATE VIEW`, `DROP TABLE`, `DROP VIEW`) routed
//! through the [`TesseraCatalog`] so that tables are stored and share one namespace with
//! arrays.
//!
//! Results are streams; a statement that returns no rows returns an empty stream, one
//! that writes rows returns `count` (UInt64), as DataFusion's `INSERT` and `COPY` do.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::error::ArrowError;
use datafusion::catalog::TableProvider;
use datafusion::common::config::CsvOptions;
use datafusion::common::{DataFusionError, Result, TableReference, plan_datafusion_err, plan_err};
use datafusion::dataframe::DataFrameWriteOptions;
use datafusion::datasource::DefaultTableSource;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::session_state::SessionState;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{
    CreateExternalTable, CreateMemoryTable, CreateView, DdlStatement, LogicalPlan,
    LogicalPlanBuilder, cast, lit,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::prelude::{
    CsvReadOptions, DataFrame, JsonReadOptions, ParquetReadOptions, SessionContext, col,
};
use tessera_storage::io::{CsvLayout, FileFormat, NpzMember};
use tessera_storage::{
    ArrayInfo, ArraySchema, Attribute, BlockFormat, Dimension, LoadOptions, Partitioning, WriteMode,
};

use crate::array_write::{
    NewMatrix, auto_block_size, copy_parquet_into_array, shape_text, write_query_as_matrix,
};
use crate::catalog::{DefinitionKind, NewTable, TesseraCatalog, split_version};
use crate::classify::classify_statement_error;
use crate::ddl::{
    CopyDirection, CopyTarget, DimensionSpec, MatrixFormat, OptionValue, SqlText, Statement,
    TesseraStatement,
};
use crate::error::{ErrorKind, blocking, storage_error, tessera_error};
use crate::file_access::{FileUse, check_file};
use crate::view::SqlView;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::sql::parser::{CopyToSource, Statement as DFStatement};
use datafusion::sql::sqlparser::ast::{Query, Statement as SqlStatement};

pub use crate::query_export::is_array_query_copy;

/// Executes one statement (as split by [`crate::ddl::parse`]) in `ctx`, whose default
/// schema must be `catalog`.
pub async fn execute(
    ctx: &SessionContext,
    catalog: &Arc<TesseraCatalog>,
    statement: Statement,
) -> Result<SendableRecordBatchStream> {
    match statement {
        Statement::Sql(sql) => execute_sql(ctx, catalog, sql).await,
        Statement::Tessera(statement) => execute_tessera(ctx, catalog, statement).await,
    }
}

/// Plans the stored definitions (`CREATE EXTERNAL TABLE`, `CREATE VIEW`) and column
/// defaults of a catalog opened from disk. Definitions that fail to plan (a file that
/// is gone) stay in the catalog and report the reason when queried.
pub async fn restore_catalog(ctx: &SessionContext, catalog: &Arc<TesseraCatalog>) {
    // Creation order first; a definition that uses one replaced later (so restored
    // later) is tried again while any other succeeds.
    let mut pending = catalog.pending_definitions();
    loop {
        let mut failed = Vec::new();
        let before = pending.len();
        for (name, sql) in pending {
            match plan_definition(ctx, &sql).await {
                Ok(provider) => catalog.restore_definition(&name, Ok(provider)),
                Err(e) => failed.push((name, sql, e)),
            }
        }
        if failed.is_empty() || failed.len() == before {
            for (name, _, e) in failed {
                catalog.restore_definition(&name, Err(e));
            }
            break;
        }
        pending = failed.into_iter().map(|(n, s, _)| (n, s)).collect();
    }
    let state = ctx.state();
    for (name, schema, defaults) in catalog.pending_defaults() {
        let df_schema = match datafusion::common::DFSchema::try_from(schema.as_ref().clone()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(table = %name, error = %e, "column defaults not restored");
                continue;
            }
        };
        let mut planned = HashMap::new();
        for (column, sql) in defaults {
            match state.create_logical_expr(&sql, &df_schema) {
                Ok(expr) => {
                    planned.insert(column, expr);
                }
                Err(e) => {
                    tracing::warn!(table = %name, column = %column, error = %e, "a column default could not be planned");
                }
            }
        }
        catalog.restore_defaults(&name, planned);
    }
}

/// The table provider a stored `CREATE EXTERNAL TABLE` or `CREATE VIEW` statement makes.
async fn plan_definition(ctx: &SessionContext, sql: &str) -> Result<Arc<dyn TableProvider>> {
    let state = ctx.state();
    match state.create_logical_plan(sql).await? {
        LogicalPlan::Ddl(DdlStatement::CreateExternalTable(cmd)) => {
            external_table_provider(ctx, &cmd).await
        }
        LogicalPlan::Ddl(DdlStatement::CreateView(cmd)) => {
            Ok(Arc::new(SqlView::new(sql, &cmd.input)?))
        }
        other => Err(DataFusionError::Internal(format!(
            "a stored definition is not CREATE EXTERNAL TABLE or CREATE VIEW: {}",
            other.display()
        ))),
    }
}

fn empty_stream() -> SendableRecordBatchStream {
    batches_stream(Arc::new(Schema::empty()), Vec::new())
}

fn batches_stream(schema: SchemaRef, batches: Vec<RecordBatch>) -> SendableRecordBatchStream {
    Box::pin(RecordBatchStreamAdapter::new(
        schema,
        futures::stream::iter(batches.into_iter().map(Ok)),
    ))
}

/// A one-row `count` result, as DataFusion's DML and COPY return.
pub(crate) fn count_stream(count: u64) -> Result<SendableRecordBatchStream> {
    let schema = Arc::new(Schema::new(vec![Field::new(
        "count",
        DataType::UInt64,
        false,
    )]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(UInt64Array::from(vec![count])) as ArrayRef],
    )?;
    Ok(batches_stream(schema, vec![batch]))
}

/// The table name if `name` refers to Tessera's catalog (the default schema).
fn local_name(ctx: &SessionContext, name: &TableReference) -> Option<String> {
    // A read lock, not `ctx.state()`: that clones the whole session state.
    let state = ctx.state_ref();
    let state = state.read();
    let options = &state.config().options().catalog;
    let ours = match name {
        TableReference::Bare { .. } => true,
        TableReference::Partial { schema, .. } => **schema == *options.default_schema,
        TableReference::Full {
            catalog, schema, ..
        } => **catalog == *options.default_catalog && **schema == *options.default_schema,
    };
    ours.then(|| name.table().to_string())
}

// ---- SQL statements ---------------------------------------------------------------------

async fn execute_sql(
    ctx: &SessionContext,
    catalog: &Arc<TesseraCatalog>,
    sql: SqlText,
) -> Result<SendableRecordBatchStream> {
    // DataFusion knows no array file writers: `COPY (query) TO 'f.npy'` is Tessera's.
    if let DFStatement::CopyTo(copy) = &sql.tree
        && let CopyToSource::Query(query) = &copy.source
        && crate::query_export::is_array_file_copy(copy)
    {
        return crate::query_export::copy_query_to_array_file(ctx, query.clone(), copy).await;
    }
    let state = ctx.state();
    let result = if crate::explain::is_picture(&sql.tree) {
        crate::explain::picture(&state, &sql.tree).await
    } else {
        match state.statement_to_plan(sql.tree.clone()).await {
            Ok(plan) => execute_plan(ctx, catalog, state, plan, &sql.text).await,
            Err(e) => Err(e),
        }
    };
    match result {
        Ok(stream) => Ok(stream),
        Err(e) => Err(classify_statement_error(&ctx.state(), &sql.tree, e).await),
    }
}

/// Executes the logical plan of the SQL statement `sql`, planned in `state` (a
/// snapshot of `ctx`'s state, taken for this statement: cloning a session's state is
/// not free, so the caller's one is used for the physical plan too). Table DDL is
/// routed through `catalog`; `sql` is the text a stored definition keeps.
pub async fn execute_plan(
    ctx: &SessionContext,
    catalog: &Arc<TesseraCatalog>,
    state: SessionState,
    plan: LogicalPlan,
    sql: &str,
) -> Result<SendableRecordBatchStream> {
    check_plan_files(&state, &plan)?;
    crate::dml::check_row_changes(&plan)?;
    match plan {
        LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(cmd)) => {
            match local_name(ctx, &cmd.name) {
                Some(name) => create_table(ctx, catalog, name, cmd).await,
                None => {
                    run_plan(
                        ctx,
                        state,
                        LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(cmd)),
                    )
                    .await
                }
            }
        }
        LogicalPlan::Ddl(DdlStatement::CreateExternalTable(cmd)) => {
            match local_name(ctx, &cmd.name) {
                Some(name) => create_external_table(ctx, catalog, name, *cmd, sql).await,
                None => {
                    run_plan(
                        ctx,
                        state,
                        LogicalPlan::Ddl(DdlStatement::CreateExternalTable(cmd)),
                    )
                    .await
                }
            }
        }
        LogicalPlan::Ddl(DdlStatement::CreateView(cmd)) => match local_name(ctx, &cmd.name) {
            Some(name) => create_view(catalog, name, cmd, sql),
            None => run_plan(ctx, state, LogicalPlan::Ddl(DdlStatement::CreateView(cmd))).await,
        },
        LogicalPlan::Ddl(DdlStatement::DropTable(cmd)) => match local_name(ctx, &cmd.name) {
            Some(name) => drop_relation(catalog, &name, cmd.if_exists, "table"),
            None => run_plan(ctx, state, LogicalPlan::Ddl(DdlStatement::DropTable(cmd))).await,
        },
        LogicalPlan::Ddl(DdlStatement::DropView(cmd)) => match local_name(ctx, &cmd.name) {
            Some(name) => drop_relation(catalog, &name, cmd.if_exists, "view"),
            None => run_plan(ctx, state, LogicalPlan::Ddl(DdlStatement::DropView(cmd))).await,
        },
        other => run_plan(ctx, state, other).await,
    }
}

/// Checks every server file `plan` would open (`CREATE EXTERNAL TABLE`, `COPY ... TO`,
/// also under `EXPLAIN ANALYZE`) against the session's [`FileAccess`](crate::FileAccess).
fn check_plan_files(state: &SessionState, plan: &LogicalPlan) -> Result<()> {
    let mut result = Ok(());
    plan.apply(|node| {
        let checked = match node {
            LogicalPlan::Ddl(DdlStatement::CreateExternalTable(cmd)) => cmd
                .locations
                .iter()
                .try_for_each(|l| check_file(state, l, FileUse::Read).map(|_| ())),
            LogicalPlan::Copy(copy) => {
                check_file(state, &copy.output_url, FileUse::Write).map(|_| ())
            }
            _ => Ok(()),
        };
        match checked {
            Ok(()) => Ok(TreeNodeRecursion::Continue),
            Err(e) => {
                result = Err(e);
                Ok(TreeNodeRecursion::Stop)
            }
        }
    })?;
    result
}

async fn run_plan(
    ctx: &SessionContext,
    state: SessionState,
    plan: LogicalPlan,
) -> Result<SendableRecordBatchStream> {
    match plan {
        // DDL and `SET` change the context itself.
        LogicalPlan::Ddl(_) | LogicalPlan::Statement(_) => {
            ctx.execute_logical_plan(plan).await?.execute_stream().await
        }
        plan => DataFrame::new(state, plan).execute_stream().await,
    }
}

/// The checks DataFusion makes before creating a table, as plan errors. `Ok(false)`:
/// the name exists and `IF NOT EXISTS` says to do nothing.
fn check_new_table(
    catalog: &TesseraCatalog,
    name: &str,
    if_not_exists: bool,
    or_replace: bool,
    temporary: bool,
    what: &str,
) -> Result<bool> {
    if temporary {
        return Err(crate::error::tessera_error(
            crate::error::ErrorKind::FeatureNotSupported,
            format!("temporary {what}s are not supported"),
        ));
    }
    if if_not_exists && or_replace {
        return plan_err!("IF NOT EXISTS and OR REPLACE cannot be used together");
    }
    match catalog.kind_of(name) {
        None => Ok(true),
        Some("array") => Err(crate::error::tessera_error(
            crate::error::ErrorKind::DuplicateTable,
            format!("'{name}' is already an array; arrays and tables share one namespace"),
        )),
        Some(_) if if_not_exists => Ok(false),
        Some(kind) if or_replace && (kind == what || what == "table") => Ok(true),
        Some(kind) => Err(crate::error::tessera_error(
            crate::error::ErrorKind::DuplicateTable,
            format!("{kind} '{name}' already exists"),
        )),
    }
}

async fn create_table(
    ctx: &SessionContext,
    catalog: &Arc<TesseraCatalog>,
    name: String,
    cmd: CreateMemoryTable,
) -> Result<SendableRecordBatchStream> {
    if !check_new_table(
        catalog,
        &name,
        cmd.if_not_exists,
        cmd.or_replace,
        cmd.temporary,
        "table",
    )? {
        return Ok(empty_stream());
    }
    let input = Arc::unwrap_or_clone(cmd.input);
    let schema = Arc::new(input.schema().as_arrow().clone());
    let mut seen = std::collections::HashSet::new();
    for field in schema.fields() {
        if !seen.insert(field.name()) {
            return plan_err!("table '{name}' would have column {} twice", field.name());
        }
    }
    let df = DataFrame::new(ctx.state(), input);
    let mut batches = df.collect_partitioned().await?;
    if batches.is_empty() {
        batches.push(Vec::new());
    }
    catalog
        .create_table(NewTable {
            name,
            schema,
            batches,
            constraints: cmd.constraints,
            defaults: cmd.column_defaults.into_iter().collect(),
            replace: cmd.or_replace,
        })
        .await?;
    Ok(empty_stream())
}

async fn external_table_provider(
    ctx: &SessionContext,
    cmd: &CreateExternalTable,
) -> Result<Arc<dyn TableProvider>> {
    let state = ctx.state();
    let file_type = cmd.file_type.to_uppercase();
    let factory = state
        .table_factories()
        .get(file_type.as_str())
        .ok_or_else(|| {
            tessera_error(
                ErrorKind::FeatureNotSupported,
                format!("unsupported file type {}", cmd.file_type),
            )
        })?;
    factory.create(&state, cmd).await
}

async fn create_external_table(
    ctx: &SessionContext,
    catalog: &Arc<TesseraCatalog>,
    name: String,
    cmd: CreateExternalTable,
    sql: &str,
) -> Result<SendableRecordBatchStream> {
    if !check_new_table(
        catalog,
        &name,
        cmd.if_not_exists,
        cmd.or_replace,
        cmd.temporary,
        "table",
    )? {
        return Ok(empty_stream());
    }
    let provider = external_table_provider(ctx, &cmd).await?;
    catalog.create_definition(
        &name,
        DefinitionKind::ExternalTable,
        sql,
        provider,
        cmd.or_replace,
    )?;
    Ok(empty_stream())
}

fn create_view(
    catalog: &Arc<TesseraCatalog>,
    name: String,
    cmd: CreateView,
    sql: &str,
) -> Result<SendableRecordBatchStream> {
    if !check_new_table(catalog, &name, false, cmd.or_replace, cmd.temporary, "view")? {
        return Ok(empty_stream());
    }
    let provider = Arc::new(SqlView::new(sql, &cmd.input)?);
    catalog.create_definition(&name, DefinitionKind::View, sql, provider, cmd.or_replace)?;
    Ok(empty_stream())
}

fn drop_relation(
    catalog: &Arc<TesseraCatalog>,
    name: &str,
    if_exists: bool,
    what: &str,
) -> Result<SendableRecordBatchStream> {
    match catalog.kind_of(name) {
        None if if_exists => Ok(empty_stream()),
        None => Err(crate::error::tessera_error(
            crate::error::ErrorKind::UndefinedTable,
            format!("{what} '{name}' does not exist"),
        )),
        Some("array") => plan_err!("'{name}' is an array, not a {what}; use DROP ARRAY {name}"),
        Some(kind) if what == "view" && kind != "view" => {
            plan_err!("'{name}' is a {kind}, not a view; use DROP TABLE {name}")
        }
        Some("view") if what == "table" => {
            plan_err!("'{name}' is a view, not a table; use DROP VIEW {name}")
        }
        Some(_) => {
            catalog.drop_table(name)?;
            Ok(empty_stream())
        }
    }
}

// ---- Tessera statements -----------------------------------------------------------------

async fn execute_tessera(
    ctx: &SessionContext,
    catalog: &Arc<TesseraCatalog>,
    statement: TesseraStatement,
) -> Result<SendableRecordBatchStream> {
    match statement {
        TesseraStatement::CreateArray {
            name,
            if_not_exists,
            attributes,
            dimensions,
            options,
        } => {
            if !check_new_array(catalog, &name, if_not_exists)? {
                return Ok(empty_stream());
            }
            let options = ArrayOptions::parse(&options, "CREATE ARRAY")?;
            let schema = ArraySchema::new(
                dimensions.iter().map(dimension).collect(),
                attributes
                    .iter()
                    .map(|(name, ty)| Attribute {
                        name: name.clone(),
                        ty: *ty,
                    })
                    .collect(),
            )
            .map_err(storage_error)?;
            let partitioning = options.partitioning(&schema)?;
            catalog.create_array(&name, schema, partitioning, options.keep_versions, None)?;
            Ok(empty_stream())
        }
        TesseraStatement::CreateMatrix {
            name,
            if_not_exists,
            shape,
            block,
            format,
            options,
            query,
        } => {
            if !check_new_array(catalog, &name, if_not_exists)? {
                return Ok(empty_stream());
            }
            let options = ArrayOptions::parse(&options, "CREATE MATRIX")?;
            let format = format.map(|f| match f {
                MatrixFormat::Sparse => BlockFormat::Csr,
                MatrixFormat::Dense => BlockFormat::Dense,
            });
            match query {
                None => {
                    let Some((rows, cols)) = shape else {
                        return plan_err!("CREATE MATRIX {name} needs a shape (rows, cols)");
                    };
                    let (br, bc) = block.unwrap_or_else(|| auto_block_size(rows, cols));
                    let schema = ArraySchema::matrix(rows, cols, br, bc).map_err(storage_error)?;
                    let partitioning = options.partitioning(&schema)?;
                    catalog.create_array(
                        &name,
                        schema,
                        partitioning,
                        options.keep_versions,
                        format,
                    )?;
                }
                Some(query) => {
                    let df = query_frame(ctx, query, &format!("CREATE MATRIX {name} AS")).await?;
                    // The partitioning is checked against the final shape by the store.
                    let probe = ArraySchema::matrix(1, 1, 1, 1).map_err(storage_error)?;
                    let partitioning = options.partitioning(&probe)?;
                    write_query_as_matrix(
                        catalog,
                        df,
                        NewMatrix {
                            name,
                            shape,
                            block,
                            format,
                            partitioning,
                            keep_versions: options.keep_versions,
                        },
                    )
                    .await?;
                }
            }
            Ok(empty_stream())
        }
        TesseraStatement::DropArrays { names, if_exists } => {
            for name in &names {
                match catalog.kind_of(name) {
                    Some("array") => {}
                    None if if_exists => {}
                    None => {
                        return Err(crate::error::tessera_error(
                            crate::error::ErrorKind::UndefinedTable,
                            format!("array '{name}' does not exist"),
                        ));
                    }
                    Some(kind) => {
                        return plan_err!(
                            "'{name}' is a {kind}, not an array; use DROP {} {name}",
                            if kind == "view" { "VIEW" } else { "TABLE" }
                        );
                    }
                }
            }
            for name in &names {
                if catalog.array(name).is_some() {
                    catalog.drop_array(name)?;
                }
            }
            Ok(empty_stream())
        }
        TesseraStatement::Copy {
            name,
            columns,
            direction,
            options,
        } => copy(ctx, catalog, name, columns, direction, options).await,
        TesseraStatement::ShowArrays => show_arrays(catalog),
        TesseraStatement::Describe { name } => describe(ctx, catalog, name).await,
        TesseraStatement::Verify { array } => verify(catalog, array).await,
        TesseraStatement::AlterArrayRepartition { name, shards } => {
            crate::repartition::alter_array_repartition(catalog, &name, shards).await?;
            Ok(empty_stream())
        }
    }
}

/// `Ok(false)` when the name exists and `IF NOT EXISTS` says to do nothing.
fn check_new_array(catalog: &TesseraCatalog, name: &str, if_not_exists: bool) -> Result<bool> {
    match catalog.kind_of(name) {
        None => Ok(true),
        Some("array") if if_not_exists => Ok(false),
        Some("array") => Err(crate::error::tessera_error(
            crate::error::ErrorKind::DuplicateTable,
            format!("array '{name}' already exists"),
        )),
        Some(kind) => Err(crate::error::tessera_error(
            crate::error::ErrorKind::DuplicateTable,
            format!("'{name}' is already a {kind}; arrays and tables share one namespace"),
        )),
    }
}

/// Plans `query` as a DataFrame.
pub(crate) async fn query_frame(
    ctx: &SessionContext,
    query: Box<Query>,
    what: &str,
) -> Result<DataFrame> {
    let state = ctx.state();
    let tree = DFStatement::Statement(Box::new(SqlStatement::Query(query)));
    let plan = match state.statement_to_plan(tree.clone()).await {
        Ok(plan) => plan,
        Err(e) => return Err(classify_statement_error(&state, &tree, e).await),
    };
    if matches!(
        plan,
        LogicalPlan::Ddl(_)
            | LogicalPlan::Dml(_)
            | LogicalPlan::Copy(_)
            | LogicalPlan::Statement(_)
            | LogicalPlan::Explain(_)
            | LogicalPlan::DescribeTable(_)
    ) {
        return plan_err!("{what} needs a query (SELECT, VALUES, ...)");
    }
    Ok(DataFrame::new(state, plan))
}

fn dimension(d: &DimensionSpec) -> Dimension {
    Dimension::new(d.name.clone(), d.start, d.end, d.block)
}

fn option_text(value: &OptionValue) -> String {
    match value {
        OptionValue::String(s) | OptionValue::Ident(s) | OptionValue::Number(s) => s.clone(),
        OptionValue::Bool(b) => b.to_string(),
    }
}

fn option_u32(key: &str, value: &OptionValue, what: &str) -> Result<u32> {
    let text = option_text(value);
    match text.parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => plan_err!("{what}: option {key} must be a positive whole number, got {text}"),
    }
}

fn option_bool(key: &str, value: &OptionValue, what: &str) -> Result<bool> {
    match value {
        OptionValue::Bool(b) => Ok(*b),
        other => match option_text(other).to_ascii_lowercase().as_str() {
            "true" | "on" | "yes" | "1" => Ok(true),
            "false" | "off" | "no" | "0" => Ok(false),
            text => plan_err!("{what}: option {key} must be true or false, got {text}"),
        },
    }
}

/// `WITH (shards = n, partitioning = 'hash' | 'rows' | 'grid', row_shards = r,
/// col_shards = c, keep_versions = n)` of `CREATE ARRAY` / `CREATE MATRIX`.
#[derive(Debug, Default)]
struct ArrayOptions {
    scheme: Option<String>,
    shards: Option<u32>,
    row_shards: Option<u32>,
    col_shards: Option<u32>,
    keep_versions: Option<u32>,
}

impl ArrayOptions {
    fn parse(options: &[(String, OptionValue)], what: &str) -> Result<Self> {
        let mut out = ArrayOptions::default();
        for (key, value) in options {
            match key.as_str() {
                "shards" => out.shards = Some(option_u32(key, value, what)?),
                "row_shards" => out.row_shards = Some(option_u32(key, value, what)?),
                "col_shards" => out.col_shards = Some(option_u32(key, value, what)?),
                "keep_versions" => out.keep_versions = Some(option_u32(key, value, what)?),
                "partitioning" => out.scheme = Some(option_text(value).to_ascii_lowercase()),
                other => {
                    return plan_err!(
                        "{what}: unknown option {other}; the options are shards, partitioning ('hash', 'rows' or 'grid'), row_shards, col_shards and keep_versions"
                    );
                }
            }
        }
        Ok(out)
    }

    fn partitioning(&self, schema: &ArraySchema) -> Result<Option<Partitioning>> {
        let default_shards = || Partitioning::default().shard_count();
        let p = match self.scheme.as_deref() {
            None if self.row_shards.is_some() || self.col_shards.is_some() => {
                return plan_err!("row_shards and col_shards need partitioning = 'grid'");
            }
            None => self.shards.map(|shards| Partitioning::Hash { shards }),
            Some("hash") => Some(Partitioning::Hash {
                shards: self.shards.unwrap_or_else(default_shards),
            }),
            Some("rows" | "row" | "row_block" | "rowblock") => Some(Partitioning::RowBlock {
                shards: self.shards.unwrap_or_else(default_shards),
            }),
            Some("grid") => {
                let (r, c) = match (self.row_shards, self.col_shards, self.shards) {
                    (Some(r), Some(c), None) => (r, c),
                    (Some(r), Some(c), Some(n)) if r.saturating_mul(c) == n => (r, c),
                    (Some(r), Some(c), Some(n)) => {
                        return plan_err!(
                            "grid partitioning: row_shards x col_shards = {r}x{c} is not shards = {n}"
                        );
                    }
                    (None, None, n) => square_grid(n.unwrap_or_else(default_shards)),
                    (Some(r), None, Some(n)) if n.is_multiple_of(r) => (r, n / r),
                    (None, Some(c), Some(n)) if n.is_multiple_of(c) => (n / c, c),
                    (Some(r), None, None) => (r, 1),
                    (None, Some(c), None) => (1, c),
                    _ => {
                        return plan_err!(
                            "grid partitioning: give row_shards and col_shards whose product is shards"
                        );
                    }
                };
                Some(Partitioning::Grid {
                    row_shards: r,
                    col_shards: c,
                })
            }
            Some(other) => {
                return plan_err!("unknown partitioning '{other}'; use 'hash', 'rows' or 'grid'");
            }
        };
        if let Some(p) = &p {
            p.validate(schema).map_err(storage_error)?;
        }
        Ok(p)
    }
}

/// The most square `r x c = n` grid.
fn square_grid(n: u32) -> (u32, u32) {
    let mut r = (n as f64).sqrt() as u32;
    while r > 1 && !n.is_multiple_of(r) {
        r -= 1;
    }
    let r = r.max(1);
    (r, n / r)
}

// ---- COPY ---------------------------------------------------------------------------------

/// `COPY` options, checked.
#[derive(Debug, Default)]
struct CopyOptions {
    format: Option<String>,
    header: Option<bool>,
    mode: Option<WriteMode>,
    layout: Option<CsvLayout>,
    delimiter: Option<u8>,
    /// The `.npz` member to load (`MEMBER 'name'`).
    member: Option<String>,
}

impl CopyOptions {
    fn parse(options: &[(String, OptionValue)], what: &str) -> Result<Self> {
        let mut out = CopyOptions::default();
        for (key, value) in options {
            match key.as_str() {
                "format" => out.format = Some(option_text(value).to_ascii_lowercase()),
                "header" => out.header = Some(option_bool(key, value, what)?),
                "mode" => {
                    out.mode = Some(match option_text(value).to_ascii_lowercase().as_str() {
                        "replace" => WriteMode::Replace,
                        "update" => WriteMode::Update,
                        other => {
                            return plan_err!(
                                "{what}: MODE must be 'replace' or 'update', got '{other}'"
                            );
                        }
                    })
                }
                "layout" => {
                    out.layout = Some(match option_text(value).to_ascii_lowercase().as_str() {
                        "triples" | "coo" => CsvLayout::Triples,
                        "dense" | "rows" => CsvLayout::Dense,
                        "auto" => CsvLayout::Auto,
                        other => {
                            return plan_err!(
                                "{what}: LAYOUT must be 'triples', 'dense' or 'auto', got '{other}'"
                            );
                        }
                    })
                }
                "member" => out.member = Some(option_text(value)),
                "delimiter" => {
                    let text = option_text(value);
                    match text.as_bytes() {
                        [b] => out.delimiter = Some(*b),
                        _ => {
                            return plan_err!(
                                "{what}: DELIMITER must be one character, got '{text}'"
                            );
                        }
                    }
                }
                other => {
                    return plan_err!(
                        "{what}: unknown option {other}; the options are FORMAT, HEADER, MODE, LAYOUT, DELIMITER and MEMBER"
                    );
                }
            }
        }
        Ok(out)
    }

    /// The FORMAT option, or the one the file's extension names.
    fn format(&self, path: &str, allowed: &[&str], what: &str) -> Result<String> {
        let format = match &self.format {
            Some(f) => f.clone(),
            None => {
                let ext = Path::new(path)
                    .extension()
                    .and_then(|e| e.to_str())
                    .map(|e| e.to_ascii_lowercase());
                match ext.as_deref() {
                    Some("ndjson" | "jsonl") => "json".to_string(),
                    Some(e) if allowed.contains(&e) => e.to_string(),
                    // A Zarr array is a directory; its name need not end in `.zarr`.
                    _ if allowed.contains(&"zarr")
                        && Path::new(path).join("zarr.json").is_file() =>
                    {
                        "zarr".to_string()
                    }
                    _ => {
                        return plan_err!(
                            "{what}: cannot tell the format of '{path}' from its extension; add WITH (FORMAT {})",
                            allowed.join(" | ")
                        );
                    }
                }
            }
        };
        if !allowed.contains(&format.as_str()) {
            return Err(crate::error::tessera_error(
                crate::error::ErrorKind::FeatureNotSupported,
                format!(
                    "{what}: FORMAT {format} is not supported here; use {}",
                    allowed.join(", ")
                ),
            ));
        }
        Ok(format)
    }
}

async fn copy(
    ctx: &SessionContext,
    catalog: &Arc<TesseraCatalog>,
    name: TableReference,
    columns: Vec<String>,
    direction: CopyDirection,
    options: Vec<(String, OptionValue)>,
) -> Result<SendableRecordBatchStream> {
    let (target, from) = match &direction {
        CopyDirection::From(t) => (t, true),
        CopyDirection::To(t) => (t, false),
    };
    let path = match target {
        CopyTarget::Stdio => {
            return plan_err!(
                "COPY {name} {} works only over the PostgreSQL protocol; give a file path",
                if from { "FROM STDIN" } else { "TO STDOUT" }
            );
        }
        CopyTarget::File(path) => path.clone(),
    };
    let usage = if from { FileUse::Read } else { FileUse::Write };
    check_file(&ctx.state_ref().read(), &path, usage)?;
    let what = format!("COPY {name} {} '{path}'", if from { "FROM" } else { "TO" });
    let options = CopyOptions::parse(&options, &what)?;
    let Some(local) = local_name(ctx, &name) else {
        return copy_table(ctx, name, &columns, from, &path, &options, &what).await;
    };
    let (array, version) = match (catalog.array(&local), split_version(&local)) {
        (Some(info), _) => (Some(info), None),
        (None, Some((base, v))) if !catalog.is_table(&local) => match catalog.array(base) {
            Some(info) => (Some(info), Some(v)),
            None => (None, None),
        },
        _ => (None, None),
    };
    match array {
        Some(info) => {
            if !columns.is_empty() {
                let names = cell_columns(&info);
                if columns != names {
                    return plan_err!(
                        "{what}: an array is copied whole as ({}); a column list cannot change that",
                        names.join(", ")
                    );
                }
            }
            if from {
                if version.is_some() {
                    return plan_err!("{what}: an older version of an array is read-only");
                }
                copy_into_array(ctx, catalog, &info, &path, &options, &what).await
            } else {
                copy_array_out(ctx, catalog, &info, &local, version, &path, &options, &what).await
            }
        }
        None if catalog.is_table(&local) => {
            copy_table(ctx, name, &columns, from, &path, &options, &what).await
        }
        None => Err(tessera_error(
            ErrorKind::UndefinedTable,
            format!("{what}: no table or array is called '{local}'"),
        )),
    }
}

fn cell_columns(info: &ArrayInfo) -> Vec<String> {
    info.schema
        .dimensions()
        .iter()
        .map(|d| d.name.clone())
        .chain(info.schema.attributes().iter().map(|a| a.name.clone()))
        .collect()
}

async fn copy_into_array(
    ctx: &SessionContext,
    catalog: &Arc<TesseraCatalog>,
    info: &ArrayInfo,
    path: &str,
    options: &CopyOptions,
    what: &str,
) -> Result<SendableRecordBatchStream> {
    let format = options.format(path, &["csv", "mtx", "npy", "npz", "zarr", "parquet"], what)?;
    if options.header.is_some() && format != "csv" {
        return plan_err!("{what}: HEADER applies to csv files only");
    }
    if options.member.is_some() && format != "npz" {
        return plan_err!("{what}: MEMBER applies to npz archives only");
    }
    if options.delimiter.is_some() {
        return plan_err!("{what}: arrays load comma-separated files; DELIMITER applies to tables");
    }
    let mode = options.mode.unwrap_or(WriteMode::Update);
    let store = catalog.store().clone();
    if format == "parquet" {
        let cells = copy_parquet_into_array(ctx, &store, &info.name, path, mode).await?;
        return count_stream(cells);
    }
    let file_format = match format.as_str() {
        "csv" => FileFormat::Csv,
        "mtx" => FileFormat::MatrixMarket,
        "npz" => FileFormat::Npz,
        "zarr" => FileFormat::Zarr,
        _ => FileFormat::Npy,
    };
    // Without MEMBER, an archive's member named like the array (so one COPY per array
    // loads each member into the array of its name), else its only array.
    let npz_member = match &options.member {
        Some(member) => NpzMember::Named(member.clone()),
        None => NpzMember::Preferred(info.name.clone()),
    };
    let load = LoadOptions {
        mode,
        csv_layout: options.layout.unwrap_or_default(),
        csv_header: options.header,
        npz_member,
        ..LoadOptions::default()
    };
    let (name, path) = (info.name.clone(), path.to_string());
    let summary = blocking(move || {
        store
            .load(&name, Path::new(&path), file_format, &load)
            .map_err(storage_error)
    })
    .await?;
    count_stream(summary.cells)
}

#[allow(clippy::too_many_arguments)] // one COPY statement's parts
async fn copy_array_out(
    ctx: &SessionContext,
    catalog: &Arc<TesseraCatalog>,
    info: &ArrayInfo,
    relation: &str,
    version: Option<u64>,
    path: &str,
    options: &CopyOptions,
    what: &str,
) -> Result<SendableRecordBatchStream> {
    let format = options.format(path, &["csv", "mtx", "npy", "zarr", "parquet"], what)?;
    if options.mode.is_some()
        || options.layout.is_some()
        || options.delimiter.is_some()
        || options.member.is_some()
    {
        return plan_err!("{what}: MODE, LAYOUT, DELIMITER and MEMBER apply to COPY ... FROM");
    }
    if format == "parquet" {
        let df = ctx.table(TableReference::bare(relation)).await?;
        let batches = df
            .write_parquet(
                path,
                DataFrameWriteOptions::new().with_single_file_output(true),
                None,
            )
            .await?;
        return Ok(batches_stream(
            batches
                .first()
                .map(|b| b.schema())
                .unwrap_or_else(|| Arc::new(Schema::empty())),
            batches,
        ));
    }
    if options.header == Some(true) {
        return plan_err!("{what}: arrays are written without a header line");
    }
    let file_format = match format.as_str() {
        "csv" => FileFormat::Csv,
        "mtx" => FileFormat::MatrixMarket,
        "zarr" => FileFormat::Zarr,
        _ => FileFormat::Npy,
    };
    let store = catalog.store().clone();
    let (name, path) = (info.name.clone(), path.to_string());
    let nnz = blocking(move || {
        let nnz = store.snapshot(&name, version).map_err(storage_error)?.nnz();
        store
            .export(&name, version, Path::new(&path), file_format)
            .map_err(storage_error)?;
        Ok(nnz)
    })
    .await?;
    count_stream(nnz)
}

/// A failure reading `path`, naming the file. A value the reader could not parse
/// (arrow's parse, cast and CSV errors, which name the value, the column and the line)
/// is [`ErrorKind::InvalidTextRepresentation`], judged by the error's variant.
fn file_error(path: &str, e: DataFusionError) -> DataFusionError {
    let unparsable = matches!(
        e.find_root(),
        DataFusionError::ArrowError(inner, _) if matches!(
            inner.as_ref(),
            ArrowError::ParseError(_) | ArrowError::CsvError(_) | ArrowError::CastError(_)
        )
    );
    if unparsable {
        return crate::error::tessera_error(
            crate::error::ErrorKind::InvalidTextRepresentation,
            format!("{path}: {}", e.find_root()),
        );
    }
    DataFusionError::Context(path.to_string(), Box::new(e))
}

/// DataFusion's `DESCRIBE` of a table: `column_name`, `data_type`, `is_nullable`.
fn describe_columns(schema: &Schema) -> Result<SendableRecordBatchStream> {
    let fields = schema.fields();
    let names: Vec<&str> = fields.iter().map(|f| f.name().as_str()).collect();
    let types: Vec<String> = fields.iter().map(|f| f.data_type().to_string()).collect();
    let nullable: Vec<&str> = fields
        .iter()
        .map(|f| if f.is_nullable() { "YES" } else { "NO" })
        .collect();
    let out = Arc::new(Schema::new(vec![
        Field::new("column_name", DataType::Utf8, false),
        Field::new("data_type", DataType::Utf8, false),
        Field::new("is_nullable", DataType::Utf8, false),
    ]));
    let batch = RecordBatch::try_new(
        out.clone(),
        vec![
            Arc::new(StringArray::from(names)) as ArrayRef,
            Arc::new(StringArray::from(types)),
            Arc::new(StringArray::from(nullable)),
        ],
    )?;
    Ok(batches_stream(out, vec![batch]))
}

/// `COPY table FROM file` (appends rows) and `COPY table TO file`.
async fn copy_table(
    ctx: &SessionContext,
    name: TableReference,
    columns: &[String],
    from: bool,
    path: &str,
    options: &CopyOptions,
    what: &str,
) -> Result<SendableRecordBatchStream> {
    let format = options.format(path, &["csv", "parquet", "json"], what)?;
    if options.mode.is_some() || options.layout.is_some() || options.member.is_some() {
        return plan_err!("{what}: MODE and LAYOUT apply to arrays");
    }
    if options.header.is_some() && format != "csv" {
        return plan_err!("{what}: HEADER applies to csv files only");
    }
    let table = ctx.table_provider(name.clone()).await?;
    let target = table.schema();
    if from {
        let file_error = |e: DataFusionError| file_error(path, e);
        // One scan per file, so the CSV reader's line numbers are the file's.
        let mut state = ctx.state();
        state
            .config_mut()
            .options_mut()
            .optimizer
            .repartition_file_scans = false;
        let ctx = &SessionContext::new_with_state(state);
        let df = match format.as_str() {
            "csv" => {
                let mut read = CsvReadOptions::new().has_header(options.header.unwrap_or(true));
                if let Some(d) = options.delimiter {
                    read = read.delimiter(d);
                }
                // Read with the table's types so a bad value is an error at its line.
                let listed: Vec<&Field> = if columns.is_empty() {
                    target.fields().iter().map(|f| f.as_ref()).collect()
                } else {
                    columns
                        .iter()
                        .map(|c| {
                            target.field_with_name(c).map_err(|_| {
                                plan_datafusion_err!("{what}: table {name} has no column {c}")
                            })
                        })
                        .collect::<Result<_>>()?
                };
                let file_schema = Schema::new(
                    listed
                        .iter()
                        .map(|f| Field::new(f.name(), f.data_type().clone(), true))
                        .collect::<Vec<_>>(),
                );
                read = read.schema(&file_schema);
                ctx.read_csv(path, read).await.map_err(file_error)?
            }
            "parquet" => ctx
                .read_parquet(path, ParquetReadOptions::default())
                .await
                .map_err(file_error)?,
            _ => ctx
                .read_json(path, JsonReadOptions::default())
                .await
                .map_err(file_error)?,
        };
        let file_fields: Vec<String> = df
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let listed: Vec<String> = if columns.is_empty() {
            target.fields().iter().map(|f| f.name().clone()).collect()
        } else {
            columns.to_vec()
        };
        if file_fields.len() != listed.len() {
            return plan_err!(
                "{what}: the file has {} columns ({}), the table takes {} ({})",
                file_fields.len(),
                file_fields.join(", "),
                listed.len(),
                listed.join(", ")
            );
        }
        let mut exprs = Vec::with_capacity(target.fields().len());
        for field in target.fields() {
            let expr = match listed.iter().position(|c| c == field.name()) {
                Some(k) => cast(
                    col(datafusion::common::Column::from_name(&file_fields[k])),
                    field.data_type().clone(),
                ),
                None => match table.get_column_default(field.name()) {
                    Some(default) => cast(default.clone(), field.data_type().clone()),
                    None => cast(
                        lit(datafusion::common::ScalarValue::Null),
                        field.data_type().clone(),
                    ),
                },
            };
            exprs.push(expr.alias(field.name()));
        }
        // DataFrame::write_table would parse the name again (and lose its quoting).
        let plan = LogicalPlanBuilder::insert_into(
            df.select(exprs)?.into_unoptimized_plan(),
            name.clone(),
            Arc::new(DefaultTableSource::new(table.clone())),
            InsertOp::Append,
        )?
        .build()?;
        let batches = DataFrame::new(ctx.state(), plan)
            .collect()
            .await
            .map_err(|e| match e {
                DataFusionError::ArrowError(..)
                | DataFusionError::External(_)
                | DataFusionError::Context(..) => file_error(e),
                other => other,
            })?;
        let schema = batches
            .first()
            .map(|b| b.schema())
            .unwrap_or_else(|| Arc::new(Schema::empty()));
        Ok(batches_stream(schema, batches))
    } else {
        if options.delimiter.is_some() && format != "csv" {
            return plan_err!("{what}: DELIMITER applies to csv files only");
        }
        let df = ctx.table(name.clone()).await?;
        let df = if columns.is_empty() {
            df
        } else {
            df.select_columns(&columns.iter().map(String::as_str).collect::<Vec<_>>())?
        };
        let write = DataFrameWriteOptions::new().with_single_file_output(true);
        let batches = match format.as_str() {
            "csv" => {
                let mut csv = CsvOptions::default().with_has_header(options.header.unwrap_or(true));
                if let Some(d) = options.delimiter {
                    csv = csv.with_delimiter(d);
                }
                df.write_csv(path, write, Some(csv)).await?
            }
            "parquet" => df.write_parquet(path, write, None).await?,
            _ => df.write_json(path, write, None).await?,
        };
        let schema = batches
            .first()
            .map(|b| b.schema())
            .unwrap_or_else(|| Arc::new(Schema::empty()));
        Ok(batches_stream(schema, batches))
    }
}

// ---- SHOW ARRAYS and DESCRIBE -------------------------------------------------------------

/// `hash(4)`, `rows(4)`, `grid(2x3)`.
pub fn partitioning_text(p: &Partitioning) -> String {
    match p {
        Partitioning::Hash { shards } => format!("hash({shards})"),
        Partitioning::RowBlock { shards } => format!("rows({shards})"),
        Partitioning::Grid {
            row_shards,
            col_shards,
        } => format!("grid({row_shards}x{col_shards})"),
    }
}

fn dimensions_text(schema: &ArraySchema) -> String {
    schema
        .dimensions()
        .iter()
        .map(|d| format!("{} {}:{} BLOCK {}", d.name, d.start, d.end, d.block_len))
        .collect::<Vec<_>>()
        .join(", ")
}

fn block_text(schema: &ArraySchema) -> String {
    schema
        .dimensions()
        .iter()
        .map(|d| d.block_len.min(d.len()).to_string())
        .collect::<Vec<_>>()
        .join("x")
}

fn format_text(format: Option<BlockFormat>) -> &'static str {
    match format {
        None => "auto",
        Some(BlockFormat::Dense) => "dense",
        Some(BlockFormat::Csr) => "sparse",
    }
}

fn show_arrays(catalog: &Arc<TesseraCatalog>) -> Result<SendableRecordBatchStream> {
    let store = catalog.store();
    let mut arrays = store.arrays();
    arrays.sort_by(|a, b| a.name.cmp(&b.name));
    let text = |f: &dyn Fn(&ArrayInfo) -> String| -> ArrayRef {
        Arc::new(StringArray::from(arrays.iter().map(f).collect::<Vec<_>>()))
    };
    let number = |f: &dyn Fn(&ArrayInfo) -> u64| -> ArrayRef {
        Arc::new(UInt64Array::from(arrays.iter().map(f).collect::<Vec<_>>()))
    };
    let columns = vec![
        text(&|a| a.name.clone()),
        text(&|a| dimensions_text(&a.schema)),
        text(&|a| shape_text(&a.schema)),
        text(&|a| block_text(&a.schema)),
        text(&|a| format_text(a.block_format).to_string()),
        number(&|a| a.current().nnz),
        number(&|a| a.current().blocks),
        number(&|a| a.current().version),
        text(&|a| partitioning_text(&a.partitioning)),
        text(&|a| match store.damage(&a.name) {
            None => "ok".to_string(),
            Some(damage) => format!("damaged: {damage}"),
        }),
    ];
    let schema = Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("dimensions", DataType::Utf8, false),
        Field::new("shape", DataType::Utf8, false),
        Field::new("block", DataType::Utf8, false),
        Field::new("format", DataType::Utf8, false),
        Field::new("nnz", DataType::UInt64, false),
        Field::new("blocks", DataType::UInt64, false),
        Field::new("version", DataType::UInt64, false),
        Field::new("partitioning", DataType::Utf8, false),
        Field::new("state", DataType::Utf8, false),
    ]));
    let batch = RecordBatch::try_new(schema.clone(), columns)?;
    Ok(batches_stream(schema, vec![batch]))
}

/// The columns `VERIFY` returns (known without running it, for `Describe`).
pub fn verify_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("array", DataType::Utf8, true),
        Field::new("version", DataType::UInt64, true),
        Field::new("file", DataType::Utf8, false),
        Field::new("block", DataType::Utf8, true),
        Field::new("problem", DataType::Utf8, false),
    ]))
}

/// `VERIFY [ARRAY name]`: one row per problem (array, version, file, block, problem);
/// no rows when every byte checks out.
async fn verify(
    catalog: &Arc<TesseraCatalog>,
    array: Option<String>,
) -> Result<SendableRecordBatchStream> {
    if let Some(name) = &array {
        match catalog.kind_of(name) {
            Some("array") => {}
            None => {
                return Err(tessera_error(
                    ErrorKind::UndefinedTable,
                    format!("array '{name}' does not exist"),
                ));
            }
            Some(kind) => return plan_err!("'{name}' is a {kind}, not an array"),
        }
    }
    let store = catalog.store().clone();
    let problems = blocking(move || store.verify(array.as_deref()).map_err(storage_error)).await?;
    let schema = verify_schema();
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(
                problems.iter().map(|p| p.array.clone()).collect::<Vec<_>>(),
            )) as ArrayRef,
            Arc::new(UInt64Array::from(
                problems.iter().map(|p| p.version).collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(
                problems.iter().map(|p| p.file.clone()).collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(
                problems.iter().map(|p| p.block.clone()).collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(
                problems
                    .iter()
                    .map(|p| p.problem.clone())
                    .collect::<Vec<_>>(),
            )),
        ],
    )?;
    Ok(batches_stream(schema, vec![batch]))
}

async fn describe(
    ctx: &SessionContext,
    catalog: &Arc<TesseraCatalog>,
    name: TableReference,
) -> Result<SendableRecordBatchStream> {
    let local = local_name(ctx, &name);
    let array = local.as_deref().and_then(|n| {
        if catalog.is_table(n) {
            return None;
        }
        match (catalog.array(n), split_version(n)) {
            (Some(info), _) => Some((info, None)),
            (None, Some((base, v))) => catalog.array(base).map(|info| (info, Some(v))),
            _ => None,
        }
    });
    let Some((info, version)) = array else {
        // A table: its columns, as DataFusion's DESCRIBE lists them.
        let schema = ctx.table(name.clone()).await?.schema().as_arrow().clone();
        return describe_columns(&schema);
    };
    let shown = match version {
        None => info.current().clone(),
        Some(v) => match info.versions.iter().find(|x| x.version == v) {
            Some(x) => x.clone(),
            None => {
                // The store's message names the retained versions.
                return Err(storage_error(
                    catalog
                        .store()
                        .snapshot(&info.name, Some(v))
                        .err()
                        .unwrap_or_else(|| {
                            tessera_storage::StorageError::Internal(format!(
                                "version {v} of array '{}' vanished",
                                info.name
                            ))
                        }),
                ));
            }
        },
    };
    let schema = &info.schema;
    let mut rows: Vec<(&str, String)> = vec![
        ("name", info.name.clone()),
        (
            "kind",
            if schema.is_matrix() {
                "matrix"
            } else {
                "array"
            }
            .to_string(),
        ),
        ("dimensions", dimensions_text(schema)),
        (
            "attributes",
            schema
                .attributes()
                .iter()
                .map(|a| format!("{} {}", a.name, a.ty))
                .collect::<Vec<_>>()
                .join(", "),
        ),
        ("shape", shape_text(schema)),
        ("block", block_text(schema)),
        ("format", format_text(info.block_format).to_string()),
        ("nnz", shown.nnz.to_string()),
        ("blocks", shown.blocks.to_string()),
        ("bytes", shown.bytes.to_string()),
        ("partitioning", partitioning_text(&info.partitioning)),
        ("version", shown.version.to_string()),
        (
            "versions",
            info.versions
                .iter()
                .map(|v| v.version.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        ),
        ("keep_versions", info.keep_versions.to_string()),
    ];
    if schema.is_matrix() {
        let (r, c) = schema.shape2();
        let density = if r == 0 || c == 0 {
            0.0
        } else {
            shown.nnz as f64 / (r as f64 * c as f64)
        };
        rows.insert(8, ("density", format!("{density:.6}")));
    }
    let out_schema = Arc::new(Schema::new(vec![
        Field::new("property", DataType::Utf8, false),
        Field::new("value", DataType::Utf8, false),
    ]));
    let batch = RecordBatch::try_new(
        out_schema.clone(),
        vec![
            Arc::new(StringArray::from(
                rows.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            )) as ArrayRef,
            Arc::new(StringArray::from(
                rows.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
            )),
        ],
    )?;
    Ok(batches_stream(out_schema, vec![batch]))
}
