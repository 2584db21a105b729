//! GetSqlInfo, GetCatalogs, GetDbSchemas, GetTables and GetTableTypes, read from the
//! session's live catalogs. Arrays are listed as tables (they are relations in
//! coordinate form), as the PostgreSQL catalog lists them.

use std::sync::Arc;
use std::time::Duration;

use arrow_flight::error::FlightError;
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::{
    CommandGetCatalogs, CommandGetDbSchemas, CommandGetTableTypes, CommandGetTables, SqlInfo,
    SqlNullOrdering, SqlSupportedCaseSensitivity, SqlSupportedTransaction,
};
use datafusion::arrow::datatypes::Schema;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::TableType;
use tessera_planner::{DEFAULT_SCHEMA, TesseraCatalog};

use crate::Session;

/// Table types: tables and arrays, views, and the catalogs' own tables.
const TABLE: &str = "TABLE";
const VIEW: &str = "VIEW";
const SYSTEM_TABLE: &str = "SYSTEM TABLE";

/// Schemas whose tables describe the database rather than hold data.
const SYSTEM_SCHEMAS: &[&str] = &["information_schema", "pg_catalog"];

/// arrow-flight's metadata builders fail only on a bug.
pub(crate) fn built(e: FlightError) -> DataFusionError {
    DataFusionError::Internal(format!("building a Flight SQL metadata result: {e}"))
}

/// What GetSqlInfo answers.
pub(crate) fn sql_info(
    statement_timeout: Option<Duration>,
    max_connections: usize,
) -> Result<SqlInfoData> {
    let mut info = SqlInfoDataBuilder::new();
    info.append(SqlInfo::FlightSqlServerName, "Tessera");
    info.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    // The Arrow IPC format version results are written in.
    info.append(SqlInfo::FlightSqlServerArrowVersion, "1.5.0");
    info.append(SqlInfo::FlightSqlServerReadOnly, false);
    info.append(SqlInfo::FlightSqlServerSql, true);
    info.append(SqlInfo::FlightSqlServerSubstrait, false);
    info.append(
        SqlInfo::FlightSqlServerTransaction,
        SqlSupportedTransaction::None as i32,
    );
    info.append(SqlInfo::FlightSqlServerCancel, true);
    info.append(SqlInfo::FlightSqlServerBulkIngestion, true);
    info.append(SqlInfo::FlightSqlServerIngestTransactionsSupported, false);
    let timeout_ms =
        statement_timeout.map_or(0, |d| i32::try_from(d.as_millis()).unwrap_or(i32::MAX));
    info.append(SqlInfo::FlightSqlServerStatementTimeout, timeout_ms);
    info.append(SqlInfo::SqlDdlCatalog, false);
    info.append(SqlInfo::SqlDdlSchema, false);
    info.append(SqlInfo::SqlDdlTable, true);
    info.append(
        SqlInfo::SqlIdentifierCase,
        SqlSupportedCaseSensitivity::SqlCaseSensitivityLowercase as i32,
    );
    info.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
    info.append(
        SqlInfo::SqlQuotedIdentifierCase,
        SqlSupportedCaseSensitivity::SqlCaseSensitivityCaseInsensitive as i32,
    );
    info.append(
        SqlInfo::SqlNullOrdering,
        SqlNullOrdering::SqlNullsSortedHigh as i32,
    );
    info.append(SqlInfo::SqlSearchStringEscape, "\\");
    info.append(SqlInfo::SqlSchemaTerm, "schema");
    info.append(SqlInfo::SqlCatalogTerm, "database");
    info.append(SqlInfo::SqlMaxConnections, max_connections as i64);
    info.append(SqlInfo::SqlTransactionsSupported, false);
    info.append(SqlInfo::SqlBatchUpdatesSupported, true);
    info.append(SqlInfo::SqlNamedParametersSupported, false);
    info.append(SqlInfo::SqlSupportsColumnAliasing, true);
    info.append(SqlInfo::SqlSupportsExpressionsInOrderBy, true);
    info.build().map_err(built)
}

/// GetCatalogs: the session's catalogs.
pub(crate) fn catalogs(session: &Session, query: CommandGetCatalogs) -> Result<RecordBatch> {
    let mut builder = query.into_builder();
    let mut names = session.context().catalog_names();
    names.sort();
    for name in names {
        builder.append(name);
    }
    builder.build().map_err(built)
}

/// GetDbSchemas: the schemas of every catalog (the builder applies the filters).
pub(crate) fn db_schemas(session: &Session, query: CommandGetDbSchemas) -> Result<RecordBatch> {
    let mut builder = query.into_builder();
    let ctx = session.context();
    for catalog_name in ctx.catalog_names() {
        let Some(catalog) = ctx.catalog(&catalog_name) else {
            continue;
        };
        for schema_name in catalog.schema_names() {
            builder.append(&catalog_name, schema_name);
        }
    }
    builder.build().map_err(built)
}

/// GetTables: tables, arrays and views, with their Arrow schemas when asked.
pub(crate) async fn tables(
    session: &Session,
    tessera: &Arc<TesseraCatalog>,
    query: CommandGetTables,
) -> Result<RecordBatch> {
    let include_schema = query.include_schema;
    let mut builder = query.into_builder();
    let ctx = session.context();
    let empty = Schema::empty();
    for catalog_name in ctx.catalog_names() {
        let Some(catalog) = ctx.catalog(&catalog_name) else {
            continue;
        };
        for schema_name in catalog.schema_names() {
            let Some(schema) = catalog.schema(&schema_name) else {
                continue;
            };
            let system = SYSTEM_SCHEMAS.contains(&schema_name.as_str());
            for table_name in schema.table_names() {
                let table_type = if system {
                    SYSTEM_TABLE
                } else if schema_name == DEFAULT_SCHEMA
                    && tessera.kind_of(&table_name) == Some("view")
                {
                    VIEW
                } else {
                    TABLE
                };
                if !include_schema {
                    builder
                        .append(&catalog_name, &schema_name, &table_name, table_type, &empty)
                        .map_err(built)?;
                    continue;
                }
                // A stored definition that no longer plans is listed without columns:
                // querying it reports why.
                let provider = schema.table(&table_name).await.ok().flatten();
                let (table_type, columns) = match &provider {
                    Some(p) if p.table_type() == TableType::View && !system => (VIEW, p.schema()),
                    Some(p) => (table_type, p.schema()),
                    None => (table_type, Arc::new(Schema::empty())),
                };
                builder
                    .append(
                        &catalog_name,
                        &schema_name,
                        &table_name,
                        table_type,
                        &columns,
                    )
                    .map_err(built)?;
            }
        }
    }
    builder.build().map_err(built)
}

/// GetTableTypes.
pub(crate) fn table_types(query: CommandGetTableTypes) -> Result<RecordBatch> {
    let mut builder = query.into_builder();
    for table_type in [SYSTEM_TABLE, TABLE, VIEW] {
        builder.append(table_type);
    }
    builder.build().map_err(built)
}
