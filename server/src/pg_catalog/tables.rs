//! The `pg_catalog` schema: PostgreSQL's system catalogs as DataFusion tables whose
//! rows are built at each scan from the live catalog (so a new table or array shows
//! at once). Only the columns clients read are present; tables Tessera has nothing
//! for (indexes, policies, publications, triggers, ...) are empty.
//!
//! OID columns are `bigint` (PostgreSQL's `oid` is unsigned 32-bit; every OID Tessera
//! makes is below 2^31), so they compare with numbers and with quoted numbers as psql
//! writes them (`WHERE c.oid = '16384'`).

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{SchemaProvider, Session, TableProvider};
use datafusion::common::{Result, ScalarValue};
use datafusion::datasource::MemTable;
use datafusion::logical_expr::{Expr, TableType};
use datafusion::physical_plan::ExecutionPlan;
use std::future::Future;
use std::pin::Pin;

use super::objects::{Sources, column_type};
use super::types::{
    BLOCKS_AM_OID, DEFAULT_COLLATION_OID, DEFAULT_TABLESPACE_OID, HEAP_AM_OID, OWNER, OWNER_OID,
    PG_CATALOG_OID, PG_TYPES, object_oid, relation_oid, storage_of,
};

/// A column's type, as PostgreSQL clients see it.
#[derive(Debug, Clone, Copy)]
enum Col {
    /// `oid` (as `bigint`).
    Oid,
    /// `text` / `name`; `NULL` unless set.
    Text,
    /// `"char"`; empty unless set.
    Char,
    /// `bool`; false unless set.
    Bool,
    /// `int2`.
    I16,
    /// `int4`.
    I32,
    /// `int8`.
    I64,
    /// `float4`.
    F32,
    /// `float8`.
    F64,
    /// `text[]`; `NULL` unless set.
    TextArray,
    /// `oid[]`; `NULL` unless set.
    OidArray,
    /// `int2[]`; `NULL` unless set.
    I16Array,
    /// `timestamp with time zone` (microseconds, UTC); `NULL` unless set.
    Timestamp,
}

impl Col {
    fn data_type(self) -> DataType {
        let list = |t: DataType| DataType::List(Arc::new(Field::new_list_field(t, true)));
        match self {
            Col::Oid => DataType::Int64,
            Col::Text | Col::Char => DataType::Utf8,
            Col::Bool => DataType::Boolean,
            Col::I16 => DataType::Int16,
            Col::I32 => DataType::Int32,
            Col::I64 => DataType::Int64,
            Col::F32 => DataType::Float32,
            Col::F64 => DataType::Float64,
            Col::TextArray => list(DataType::Utf8),
            Col::OidArray => list(DataType::Int64),
            Col::I16Array => list(DataType::Int16),
            Col::Timestamp => DataType::Timestamp(
                datafusion::arrow::datatypes::TimeUnit::Microsecond,
                Some("UTC".into()),
            ),
        }
    }

    fn default_value(self) -> Result<ScalarValue> {
        Ok(match self {
            Col::Oid => ScalarValue::Int64(Some(0)),
            Col::Char => ScalarValue::from(""),
            Col::Bool => ScalarValue::Boolean(Some(false)),
            Col::I16 => ScalarValue::Int16(Some(0)),
            Col::I32 => ScalarValue::Int32(Some(0)),
            Col::I64 => ScalarValue::Int64(Some(0)),
            Col::F32 => ScalarValue::Float32(Some(0.0)),
            Col::F64 => ScalarValue::Float64(Some(0.0)),
            Col::Text | Col::TextArray | Col::OidArray | Col::I16Array | Col::Timestamp => {
                ScalarValue::try_from(&self.data_type())?
            }
        })
    }
}

use Col::*;

/// One catalog table: its name and columns.
struct TableSpec {
    name: &'static str,
    columns: &'static [(&'static str, Col)],
}

/// Every emulated table. Rows come from [`rows`].
const TABLES: &[TableSpec] = &[
    TableSpec {
        name: "pg_namespace",
        columns: &[
            ("oid", Oid),
            ("nspname", Text),
            ("nspowner", Oid),
            ("nspacl", TextArray),
        ],
    },
    TableSpec {
        name: "pg_class",
        columns: &[
            ("oid", Oid),
            ("relname", Text),
            ("relnamespace", Oid),
            ("reltype", Oid),
            ("reloftype", Oid),
            ("relowner", Oid),
            ("relam", Oid),
            ("relfilenode", Oid),
            ("reltablespace", Oid),
            ("relpages", I32),
            ("reltuples", F32),
            ("relallvisible", I32),
            ("reltoastrelid", Oid),
            ("relhasindex", Bool),
            ("relisshared", Bool),
            ("relpersistence", Char),
            ("relkind", Char),
            ("relnatts", I16),
            ("relchecks", I16),
            ("relhasrules", Bool),
            ("relhastriggers", Bool),
            ("relhassubclass", Bool),
            ("relrowsecurity", Bool),
            ("relforcerowsecurity", Bool),
            ("relispopulated", Bool),
            ("relreplident", Char),
            ("relispartition", Bool),
            ("relrewrite", Oid),
            ("relacl", TextArray),
            ("reloptions", TextArray),
            ("relpartbound", Text),
        ],
    },
    TableSpec {
        name: "pg_attribute",
        columns: &[
            ("attrelid", Oid),
            ("attname", Text),
            ("atttypid", Oid),
            ("attstattarget", I32),
            ("attlen", I16),
            ("attnum", I16),
            ("attndims", I32),
            ("attcacheoff", I32),
            ("atttypmod", I32),
            ("attbyval", Bool),
            ("attalign", Char),
            ("attstorage", Char),
            ("attcompression", Char),
            ("attnotnull", Bool),
            ("atthasdef", Bool),
            ("atthasmissing", Bool),
            ("attidentity", Char),
            ("attgenerated", Char),
            ("attisdropped", Bool),
            ("attislocal", Bool),
            ("attinhcount", I32),
            ("attcollation", Oid),
            ("attacl", TextArray),
            ("attoptions", TextArray),
            ("attfdwoptions", TextArray),
        ],
    },
    TableSpec {
        name: "pg_type",
        columns: &[
            ("oid", Oid),
            ("typname", Text),
            ("typnamespace", Oid),
            ("typowner", Oid),
            ("typlen", I16),
            ("typbyval", Bool),
            ("typtype", Char),
            ("typcategory", Char),
            ("typispreferred", Bool),
            ("typisdefined", Bool),
            ("typdelim", Char),
            ("typrelid", Oid),
            ("typelem", Oid),
            ("typarray", Oid),
            ("typinput", Text),
            ("typoutput", Text),
            ("typreceive", Text),
            ("typsend", Text),
            ("typalign", Char),
            ("typstorage", Char),
            ("typnotnull", Bool),
            ("typbasetype", Oid),
            ("typtypmod", I32),
            ("typndims", I32),
            ("typcollation", Oid),
            ("typdefault", Text),
        ],
    },
    TableSpec {
        name: "pg_database",
        columns: &[
            ("oid", Oid),
            ("datname", Text),
            ("datdba", Oid),
            ("encoding", I32),
            ("datlocprovider", Char),
            ("datistemplate", Bool),
            ("datallowconn", Bool),
            ("datconnlimit", I32),
            ("dattablespace", Oid),
            ("datcollate", Text),
            ("datctype", Text),
            ("daticulocale", Text),
            ("datcollversion", Text),
            ("datacl", TextArray),
        ],
    },
    TableSpec {
        name: "pg_proc",
        columns: &[
            ("oid", Oid),
            ("proname", Text),
            ("pronamespace", Oid),
            ("proowner", Oid),
            ("prolang", Oid),
            ("procost", F32),
            ("prorows", F32),
            ("provariadic", Oid),
            ("prosupport", Oid),
            ("prokind", Char),
            ("prosecdef", Bool),
            ("proleakproof", Bool),
            ("proisstrict", Bool),
            ("proretset", Bool),
            ("provolatile", Char),
            ("proparallel", Char),
            ("pronargs", I16),
            ("pronargdefaults", I16),
            ("prorettype", Oid),
            ("proargtypes", OidArray),
            ("proallargtypes", OidArray),
            ("proargmodes", TextArray),
            ("proargnames", TextArray),
            ("proargdefaults", Text),
            ("prosrc", Text),
            ("probin", Text),
            ("proconfig", TextArray),
            ("proacl", TextArray),
        ],
    },
    TableSpec {
        name: "pg_roles",
        columns: &[
            ("oid", Oid),
            ("rolname", Text),
            ("rolsuper", Bool),
            ("rolinherit", Bool),
            ("rolcreaterole", Bool),
            ("rolcreatedb", Bool),
            ("rolcanlogin", Bool),
            ("rolreplication", Bool),
            ("rolconnlimit", I32),
            ("rolpassword", Text),
            ("rolvaliduntil", Text),
            ("rolbypassrls", Bool),
            ("rolconfig", TextArray),
        ],
    },
    TableSpec {
        name: "pg_authid",
        columns: &[
            ("oid", Oid),
            ("rolname", Text),
            ("rolsuper", Bool),
            ("rolinherit", Bool),
            ("rolcreaterole", Bool),
            ("rolcreatedb", Bool),
            ("rolcanlogin", Bool),
            ("rolreplication", Bool),
            ("rolbypassrls", Bool),
            ("rolconnlimit", I32),
            ("rolpassword", Text),
            ("rolvaliduntil", Text),
        ],
    },
    TableSpec {
        name: "pg_user",
        columns: &[
            ("usename", Text),
            ("usesysid", Oid),
            ("usecreatedb", Bool),
            ("usesuper", Bool),
            ("userepl", Bool),
            ("usebypassrls", Bool),
            ("passwd", Text),
            ("valuntil", Text),
            ("useconfig", TextArray),
        ],
    },
    TableSpec {
        name: "pg_auth_members",
        columns: &[
            ("roleid", Oid),
            ("member", Oid),
            ("grantor", Oid),
            ("admin_option", Bool),
        ],
    },
    TableSpec {
        name: "pg_am",
        columns: &[
            ("oid", Oid),
            ("amname", Text),
            ("amhandler", Text),
            ("amtype", Char),
        ],
    },
    TableSpec {
        name: "pg_description",
        columns: &[
            ("objoid", Oid),
            ("classoid", Oid),
            ("objsubid", I32),
            ("description", Text),
        ],
    },
    TableSpec {
        name: "pg_shdescription",
        columns: &[
            ("objoid", Oid),
            ("classoid", Oid),
            ("objsubid", I32),
            ("description", Text),
        ],
    },
    TableSpec {
        name: "pg_index",
        columns: &[
            ("indexrelid", Oid),
            ("indrelid", Oid),
            ("indnatts", I16),
            ("indnkeyatts", I16),
            ("indisunique", Bool),
            ("indnullsnotdistinct", Bool),
            ("indisprimary", Bool),
            ("indisexclusion", Bool),
            ("indimmediate", Bool),
            ("indisclustered", Bool),
            ("indisvalid", Bool),
            ("indcheckxmin", Bool),
            ("indisready", Bool),
            ("indislive", Bool),
            ("indisreplident", Bool),
            ("indkey", I16Array),
            ("indcollation", OidArray),
            ("indclass", OidArray),
            ("indoption", I16Array),
            ("indexprs", Text),
            ("indpred", Text),
        ],
    },
    TableSpec {
        name: "pg_constraint",
        columns: &[
            ("oid", Oid),
            ("conname", Text),
            ("connamespace", Oid),
            ("contype", Char),
            ("condeferrable", Bool),
            ("condeferred", Bool),
            ("convalidated", Bool),
            ("conrelid", Oid),
            ("contypid", Oid),
            ("conindid", Oid),
            ("conparentid", Oid),
            ("confrelid", Oid),
            ("confupdtype", Char),
            ("confdeltype", Char),
            ("confmatchtype", Char),
            ("conislocal", Bool),
            ("coninhcount", I32),
            ("connoinherit", Bool),
            ("conkey", I16Array),
            ("confkey", I16Array),
            ("conbin", Text),
        ],
    },
    TableSpec {
        name: "pg_stat_activity",
        columns: &[
            ("datid", Oid),
            ("datname", Text),
            ("pid", I32),
            ("usesysid", Oid),
            ("usename", Text),
            ("application_name", Text),
            ("client_addr", Text),
            ("backend_start", Timestamp),
            ("query_start", Timestamp),
            ("state", Text),
            ("query", Text),
            ("backend_type", Text),
        ],
    },
    TableSpec {
        name: "tessera_progress",
        columns: &[
            ("pid", I32),
            ("usename", Text),
            ("query", Text),
            ("phase", Text),
            ("blocks_done", I64),
            ("blocks_total", I64),
            ("bytes_done", I64),
            ("query_start", Timestamp),
            ("elapsed_seconds", F64),
        ],
    },
    TableSpec {
        name: "pg_depend",
        columns: &[
            ("classid", Oid),
            ("objid", Oid),
            ("objsubid", I32),
            ("refclassid", Oid),
            ("refobjid", Oid),
            ("refobjsubid", I32),
            ("deptype", Char),
        ],
    },
    TableSpec {
        name: "pg_inherits",
        columns: &[
            ("inhrelid", Oid),
            ("inhparent", Oid),
            ("inhseqno", I32),
            ("inhdetachpending", Bool),
        ],
    },
    TableSpec {
        name: "pg_attrdef",
        columns: &[
            ("oid", Oid),
            ("adrelid", Oid),
            ("adnum", I16),
            ("adbin", Text),
        ],
    },
    TableSpec {
        name: "pg_collation",
        columns: &[
            ("oid", Oid),
            ("collname", Text),
            ("collnamespace", Oid),
            ("collowner", Oid),
            ("collprovider", Char),
            ("collisdeterministic", Bool),
            ("collencoding", I32),
            ("collcollate", Text),
            ("collctype", Text),
        ],
    },
    TableSpec {
        name: "pg_sequence",
        columns: &[
            ("seqrelid", Oid),
            ("seqtypid", Oid),
            ("seqstart", I64),
            ("seqincrement", I64),
            ("seqmax", I64),
            ("seqmin", I64),
            ("seqcache", I64),
            ("seqcycle", Bool),
        ],
    },
    TableSpec {
        name: "pg_opclass",
        columns: &[
            ("oid", Oid),
            ("opcmethod", Oid),
            ("opcname", Text),
            ("opcnamespace", Oid),
            ("opcowner", Oid),
            ("opcfamily", Oid),
            ("opcintype", Oid),
            ("opcdefault", Bool),
            ("opckeytype", Oid),
        ],
    },
    TableSpec {
        name: "pg_policy",
        columns: &[
            ("oid", Oid),
            ("polname", Text),
            ("polrelid", Oid),
            ("polcmd", Char),
            ("polpermissive", Bool),
            ("polroles", OidArray),
            ("polqual", Text),
            ("polwithcheck", Text),
        ],
    },
    TableSpec {
        name: "pg_statistic_ext",
        columns: &[
            ("oid", Oid),
            ("stxrelid", Oid),
            ("stxname", Text),
            ("stxnamespace", Oid),
            ("stxowner", Oid),
            ("stxstattarget", I32),
            ("stxkeys", I16Array),
            ("stxkind", TextArray),
        ],
    },
    TableSpec {
        name: "pg_publication",
        columns: &[
            ("oid", Oid),
            ("pubname", Text),
            ("pubowner", Oid),
            ("puballtables", Bool),
            ("pubinsert", Bool),
            ("pubupdate", Bool),
            ("pubdelete", Bool),
            ("pubtruncate", Bool),
            ("pubviaroot", Bool),
        ],
    },
    TableSpec {
        name: "pg_publication_rel",
        columns: &[
            ("oid", Oid),
            ("prpubid", Oid),
            ("prrelid", Oid),
            ("prqual", Text),
            ("prattrs", I16Array),
        ],
    },
    TableSpec {
        name: "pg_publication_namespace",
        columns: &[("oid", Oid), ("pnpubid", Oid), ("pnnspid", Oid)],
    },
    TableSpec {
        name: "pg_trigger",
        columns: &[
            ("oid", Oid),
            ("tgrelid", Oid),
            ("tgparentid", Oid),
            ("tgname", Text),
            ("tgfoid", Oid),
            ("tgtype", I16),
            ("tgenabled", Char),
            ("tgisinternal", Bool),
        ],
    },
    TableSpec {
        name: "pg_rewrite",
        columns: &[
            ("oid", Oid),
            ("rulename", Text),
            ("ev_class", Oid),
            ("ev_type", Char),
            ("ev_enabled", Char),
            ("is_instead", Bool),
        ],
    },
    TableSpec {
        name: "pg_foreign_table",
        columns: &[
            ("ftrelid", Oid),
            ("ftserver", Oid),
            ("ftoptions", TextArray),
        ],
    },
    TableSpec {
        name: "pg_partitioned_table",
        columns: &[
            ("partrelid", Oid),
            ("partstrat", Char),
            ("partnatts", I16),
            ("partdefid", Oid),
        ],
    },
    TableSpec {
        name: "pg_tablespace",
        columns: &[
            ("oid", Oid),
            ("spcname", Text),
            ("spcowner", Oid),
            ("spcacl", TextArray),
            ("spcoptions", TextArray),
        ],
    },
    TableSpec {
        name: "pg_language",
        columns: &[
            ("oid", Oid),
            ("lanname", Text),
            ("lanowner", Oid),
            ("lanispl", Bool),
            ("lanpltrusted", Bool),
        ],
    },
    TableSpec {
        name: "pg_extension",
        columns: &[
            ("oid", Oid),
            ("extname", Text),
            ("extowner", Oid),
            ("extnamespace", Oid),
            ("extrelocatable", Bool),
            ("extversion", Text),
        ],
    },
    TableSpec {
        name: "pg_settings",
        columns: &[
            ("name", Text),
            ("setting", Text),
            ("unit", Text),
            ("category", Text),
            ("short_desc", Text),
            ("vartype", Text),
            ("source", Text),
        ],
    },
    TableSpec {
        name: "pg_tables",
        columns: &[
            ("schemaname", Text),
            ("tablename", Text),
            ("tableowner", Text),
            ("tablespace", Text),
            ("hasindexes", Bool),
            ("hasrules", Bool),
            ("hastriggers", Bool),
            ("rowsecurity", Bool),
        ],
    },
    TableSpec {
        name: "pg_views",
        columns: &[
            ("schemaname", Text),
            ("viewname", Text),
            ("viewowner", Text),
            ("definition", Text),
        ],
    },
];

/// The catalog tables that have no rows in Tessera, ever: it has no indexes, operator
/// classes, constraints, sequences, inheritance, policies, extended statistics,
/// publications, triggers, rules, foreign tables, partitions, extensions, role
/// memberships or recorded dependencies.
const ALWAYS_EMPTY: &[&str] = &[
    "pg_index",
    "pg_opclass",
    "pg_constraint",
    "pg_sequence",
    "pg_inherits",
    "pg_policy",
    "pg_statistic_ext",
    "pg_publication",
    "pg_publication_rel",
    "pg_publication_namespace",
    "pg_trigger",
    "pg_rewrite",
    "pg_foreign_table",
    "pg_partitioned_table",
    "pg_extension",
    "pg_auth_members",
    "pg_shdescription",
    "pg_depend",
];

/// True for a catalog table that never has a row (see [`ALWAYS_EMPTY`]).
pub(crate) fn is_always_empty(name: &str) -> bool {
    ALWAYS_EMPTY.contains(&name)
}

/// True for the name of a table of the emulated `pg_catalog`.
pub(crate) fn is_catalog_table(name: &str) -> bool {
    TABLES.iter().any(|t| t.name == name)
}

/// The `pg_catalog` schema.
#[derive(Debug)]
pub(crate) struct PgCatalogSchema {
    sources: Arc<Sources>,
}

impl PgCatalogSchema {
    pub(crate) fn new(sources: Arc<Sources>) -> Self {
        Self { sources }
    }
}

/// What an `async fn` of DataFusion's `async_trait` traits returns (written out here:
/// the server crate does not depend on `async-trait`).
type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

impl SchemaProvider for PgCatalogSchema {
    fn table_names(&self) -> Vec<String> {
        TABLES.iter().map(|t| t.name.to_string()).collect()
    }

    fn table<'a, 'b, 'f>(
        &'a self,
        name: &'b str,
    ) -> BoxFuture<'f, Result<Option<Arc<dyn TableProvider>>>>
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        Box::pin(async move { self.table_now(name) })
    }

    fn table_exist(&self, name: &str) -> bool {
        is_catalog_table(name)
    }
}

impl PgCatalogSchema {
    fn table_now(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        Ok(TABLES.iter().find(|t| t.name == name).map(|spec| {
            Arc::new(CatalogTable {
                spec,
                schema: Arc::new(Schema::new(
                    spec.columns
                        .iter()
                        .map(|(n, c)| Field::new(*n, c.data_type(), true))
                        .collect::<Vec<_>>(),
                )),
                sources: self.sources.clone(),
            }) as Arc<dyn TableProvider>
        }))
    }
}

/// One emulated catalog table; rows are built at each scan.
struct CatalogTable {
    spec: &'static TableSpec,
    schema: SchemaRef,
    sources: Arc<Sources>,
}

impl std::fmt::Debug for CatalogTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pg_catalog.{}", self.spec.name)
    }
}

impl TableProvider for CatalogTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        // PostgreSQL's catalogs are tables, its pg_roles/pg_tables and the like views;
        // listing them all as tables is simpler and no client cares.
        TableType::Base
    }

    fn scan<'a, 'b, 'c, 'd, 'f>(
        &'a self,
        state: &'b dyn Session,
        projection: Option<&'c Vec<usize>>,
        filters: &'d [Expr],
        limit: Option<usize>,
    ) -> BoxFuture<'f, Result<Arc<dyn ExecutionPlan>>>
    where
        'a: 'f,
        'b: 'f,
        'c: 'f,
        'd: 'f,
        Self: 'f,
    {
        Box::pin(async move {
            let rows = rows(self.spec.name, &self.sources, state).await;
            let batch = build_batch(self.spec, &self.schema, &rows)?;
            MemTable::try_new(self.schema.clone(), vec![vec![batch]])?
                .scan(state, projection, filters, limit)
                .await
        })
    }
}

/// A row: values by column name; columns left out take their type's default.
type Row = HashMap<&'static str, ScalarValue>;

fn build_batch(spec: &TableSpec, schema: &SchemaRef, rows: &[Row]) -> Result<RecordBatch> {
    let mut columns = Vec::with_capacity(spec.columns.len());
    for (name, col) in spec.columns {
        let (default, data_type) = (col.default_value()?, col.data_type());
        // Values written as another width (an i64 for an int2 column) are cast here.
        let values = rows
            .iter()
            .map(|r| match r.get(name) {
                Some(v) => v.cast_to(&data_type),
                None => Ok(default.clone()),
            })
            .collect::<Result<Vec<_>>>()?;
        columns.push(if values.is_empty() {
            datafusion::arrow::array::new_empty_array(&data_type)
        } else {
            ScalarValue::iter_to_array(values)?
        });
    }
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

fn text(s: impl Into<String>) -> ScalarValue {
    ScalarValue::Utf8(Some(s.into()))
}

fn oid(v: i64) -> ScalarValue {
    ScalarValue::Int64(Some(v))
}

fn int(v: i64) -> ScalarValue {
    ScalarValue::Int64(Some(v))
}

fn timestamp(t: Option<std::time::SystemTime>) -> ScalarValue {
    let micros = t
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_micros() as i64);
    ScalarValue::TimestampMicrosecond(micros, Some("UTC".into()))
}

fn boolean(v: bool) -> ScalarValue {
    ScalarValue::Boolean(Some(v))
}

fn row<const N: usize>(values: [(&'static str, ScalarValue); N]) -> Row {
    values.into_iter().collect()
}

/// The OID of `pg_catalog.<name>`, as `classoid` columns use.
pub(crate) fn catalog_oid(name: &str) -> i64 {
    relation_oid("pg_catalog", name)
}

async fn rows(table: &str, sources: &Sources, state: &dyn Session) -> Vec<Row> {
    match table {
        "pg_namespace" => sources
            .namespaces()
            .into_iter()
            .map(|n| {
                row([
                    ("oid", oid(n.oid)),
                    ("nspname", text(n.name)),
                    ("nspowner", oid(OWNER_OID)),
                ])
            })
            .collect(),
        "pg_class" => sources
            .relation_details()
            .await
            .into_iter()
            .map(|d| {
                let r = &d.relation;
                let is_table = r.kind == "r";
                let am = match (&r.array, is_table) {
                    (Some(_), _) => BLOCKS_AM_OID,
                    (None, true) => HEAP_AM_OID,
                    (None, false) => 0,
                };
                let tuples = r
                    .array
                    .as_ref()
                    .map(|a| a.current().nnz as f32)
                    .unwrap_or(-1.0);
                row([
                    ("oid", oid(r.oid)),
                    ("relname", text(r.name.clone())),
                    ("relnamespace", oid(super::types::namespace_oid(&r.schema))),
                    ("relowner", oid(OWNER_OID)),
                    ("relam", oid(am)),
                    ("relfilenode", oid(r.oid)),
                    ("reltuples", ScalarValue::Float32(Some(tuples))),
                    ("relpersistence", text("p")),
                    ("relkind", text(r.kind)),
                    ("relnatts", int(d.columns.len() as i64)),
                    ("relispopulated", boolean(true)),
                    ("relreplident", text(if is_table { "d" } else { "n" })),
                ])
            })
            .collect(),
        "pg_attribute" => attributes(sources).await,
        "pg_attrdef" => sources
            .relation_details()
            .await
            .into_iter()
            .flat_map(|d| {
                let relid = d.relation.oid;
                d.columns
                    .into_iter()
                    .enumerate()
                    .filter_map(move |(n, (_, default))| {
                        let default = default?;
                        Some(row([
                            ("oid", oid(object_oid("attrdef", &format!("{relid}.{n}")))),
                            ("adrelid", oid(relid)),
                            ("adnum", int(n as i64 + 1)),
                            ("adbin", text(default)),
                        ]))
                    })
            })
            .collect(),
        "pg_type" => PG_TYPES
            .iter()
            .map(|t| {
                let collation = if t.category == "S" {
                    DEFAULT_COLLATION_OID
                } else {
                    0
                };
                row([
                    ("oid", oid(t.oid)),
                    ("typname", text(t.name)),
                    ("typnamespace", oid(PG_CATALOG_OID)),
                    ("typowner", oid(OWNER_OID)),
                    ("typlen", int(i64::from(t.len))),
                    ("typbyval", boolean(t.len > 0 && t.len <= 8)),
                    ("typtype", text(if t.category == "P" { "p" } else { "b" })),
                    ("typcategory", text(t.category)),
                    ("typisdefined", boolean(true)),
                    ("typdelim", text(",")),
                    ("typelem", oid(t.element)),
                    ("typarray", oid(t.array)),
                    ("typinput", text(t.io_function("in"))),
                    ("typoutput", text(t.io_function("out"))),
                    // Drivers that read binary (ADBC) know a type by its receive
                    // function's name.
                    ("typreceive", text(t.io_function("recv"))),
                    ("typsend", text(t.io_function("send"))),
                    ("typalign", text(if t.len == 8 { "d" } else { "i" })),
                    ("typstorage", text(if t.len < 0 { "x" } else { "p" })),
                    ("typtypmod", ScalarValue::Int32(Some(-1))),
                    ("typcollation", oid(collation)),
                ])
            })
            .collect(),
        "pg_database" => {
            let name = sources.database_name();
            vec![row([
                ("oid", oid(object_oid("db", name))),
                ("datname", text(name)),
                ("datdba", oid(OWNER_OID)),
                ("encoding", int(6)),
                ("datlocprovider", text("c")),
                ("datallowconn", boolean(true)),
                ("datconnlimit", int(-1)),
                ("dattablespace", oid(DEFAULT_TABLESPACE_OID)),
                ("datcollate", text("C.UTF-8")),
                ("datctype", text("C.UTF-8")),
            ])]
        }
        // The server's connections; each sees every one, as in PostgreSQL (the
        // queries of other users' connections too: Tessera has no monitoring role).
        "pg_stat_activity" => sources
            .activity
            .rows()
            .into_iter()
            .map(|b| {
                row([
                    ("datid", oid(object_oid("db", sources.database_name()))),
                    ("datname", text(sources.database_name())),
                    ("pid", int(i64::from(b.pid))),
                    ("usesysid", oid(OWNER_OID)),
                    ("usename", text(b.user)),
                    ("application_name", text(b.application_name)),
                    ("client_addr", text(b.client_addr)),
                    ("backend_start", timestamp(Some(b.backend_start))),
                    ("query_start", timestamp(b.query_start)),
                    ("state", text(b.state)),
                    ("query", text(b.query)),
                    ("backend_type", text(b.kind.backend_type())),
                ])
            })
            .collect(),
        // The active statements and how far their scans are.
        "tessera_progress" => sources
            .activity
            .rows()
            .into_iter()
            .filter(|b| b.state == "active")
            .map(|b| {
                let p = b.progress;
                let phase = crate::activity::phase(&p);
                let elapsed = b
                    .query_start
                    .and_then(|t| t.elapsed().ok())
                    .map_or(0.0, |d| d.as_secs_f64());
                row([
                    ("pid", int(i64::from(b.pid))),
                    ("usename", text(b.user)),
                    ("query", text(b.query)),
                    ("phase", text(phase)),
                    ("blocks_done", int(p.blocks_done as i64)),
                    ("blocks_total", int(p.blocks_total as i64)),
                    ("bytes_done", int(p.bytes_done as i64)),
                    ("query_start", timestamp(b.query_start)),
                    ("elapsed_seconds", ScalarValue::Float64(Some(elapsed))),
                ])
            })
            .collect(),
        "pg_proc" => sources
            .functions()
            .iter()
            .map(|f| {
                row([
                    ("oid", oid(f.oid)),
                    ("proname", text(f.name.clone())),
                    ("pronamespace", oid(f.namespace)),
                    ("proowner", oid(OWNER_OID)),
                    ("prolang", oid(12)),
                    ("procost", ScalarValue::Float32(Some(1.0))),
                    ("prokind", text(f.kind)),
                    ("proretset", boolean(f.returns_set)),
                    ("provolatile", text("i")),
                    ("proparallel", text("s")),
                    ("prosrc", text(f.name.clone())),
                ])
            })
            .collect(),
        "pg_roles" | "pg_authid" => vec![row([
            ("oid", oid(OWNER_OID)),
            ("rolname", text(OWNER)),
            ("rolsuper", boolean(true)),
            ("rolinherit", boolean(true)),
            ("rolcreaterole", boolean(true)),
            ("rolcreatedb", boolean(true)),
            ("rolcanlogin", boolean(true)),
            ("rolconnlimit", int(-1)),
            ("rolpassword", text("********")),
        ])],
        "pg_user" => vec![row([
            ("usename", text(OWNER)),
            ("usesysid", oid(OWNER_OID)),
            ("usecreatedb", boolean(true)),
            ("usesuper", boolean(true)),
            ("passwd", text("********")),
        ])],
        "pg_am" => vec![
            row([
                ("oid", oid(HEAP_AM_OID)),
                ("amname", text("heap")),
                ("amhandler", text("heap_tableam_handler")),
                ("amtype", text("t")),
            ]),
            row([
                ("oid", oid(BLOCKS_AM_OID)),
                ("amname", text("blocks")),
                ("amhandler", text("tessera_blocks_handler")),
                ("amtype", text("t")),
            ]),
        ],
        "pg_description" => sources
            .relations()
            .into_iter()
            .filter_map(|r| {
                Some(row([
                    ("objoid", oid(r.oid)),
                    ("classoid", oid(catalog_oid("pg_class"))),
                    ("description", text(r.description()?)),
                ]))
            })
            .collect(),
        "pg_collation" => vec![row([
            ("oid", oid(DEFAULT_COLLATION_OID)),
            ("collname", text("default")),
            ("collnamespace", oid(PG_CATALOG_OID)),
            ("collowner", oid(OWNER_OID)),
            ("collprovider", text("d")),
            ("collisdeterministic", boolean(true)),
            ("collencoding", int(-1)),
        ])],
        "pg_tablespace" => vec![row([
            ("oid", oid(DEFAULT_TABLESPACE_OID)),
            ("spcname", text("pg_default")),
            ("spcowner", oid(OWNER_OID)),
        ])],
        "pg_language" => vec![
            row([
                ("oid", oid(12)),
                ("lanname", text("internal")),
                ("lanowner", oid(OWNER_OID)),
            ]),
            row([
                ("oid", oid(14)),
                ("lanname", text("sql")),
                ("lanowner", oid(OWNER_OID)),
                ("lanpltrusted", boolean(true)),
            ]),
        ],
        "pg_settings" => state
            .config_options()
            .entries()
            .into_iter()
            .map(|e| {
                row([
                    ("name", text(e.key)),
                    (
                        "setting",
                        e.value.map(text).unwrap_or(ScalarValue::Utf8(None)),
                    ),
                    ("category", text("DataFusion")),
                    ("short_desc", text(e.description)),
                    ("vartype", text("string")),
                    ("source", text("default")),
                ])
            })
            .collect(),
        "pg_tables" => sources
            .relations()
            .into_iter()
            .filter(|r| r.kind == "r")
            .map(|r| {
                row([
                    ("schemaname", text(r.schema)),
                    ("tablename", text(r.name)),
                    ("tableowner", text(OWNER)),
                ])
            })
            .collect(),
        "pg_views" => sources
            .relation_details()
            .await
            .into_iter()
            .filter(|d| d.relation.kind == "v")
            .map(|d| {
                let definition = d.definition.map(text).unwrap_or(ScalarValue::Utf8(None));
                row([
                    ("schemaname", text(d.relation.schema)),
                    ("viewname", text(d.relation.name)),
                    ("viewowner", text(OWNER)),
                    ("definition", definition),
                ])
            })
            .collect(),
        // ALWAYS_EMPTY: nothing Tessera has.
        _ => Vec::new(),
    }
}

async fn attributes(sources: &Sources) -> Vec<Row> {
    let mut rows = Vec::new();
    for d in sources.relation_details().await {
        for (n, (field, default)) in d.columns.iter().enumerate() {
            let (type_oid, typmod) = column_type(field.data_type());
            let pg = super::types::pg_type_by_oid(type_oid);
            let collation = match pg {
                Some(t) if t.category == "S" => DEFAULT_COLLATION_OID,
                _ => 0,
            };
            let is_array = pg.is_some_and(|t| t.element != 0);
            rows.push(row([
                ("attrelid", oid(d.relation.oid)),
                ("attname", text(field.name().clone())),
                ("atttypid", oid(type_oid)),
                ("attstattarget", int(-1)),
                ("attlen", int(pg.map(|t| i64::from(t.len)).unwrap_or(-1))),
                ("attnum", int(n as i64 + 1)),
                ("attndims", int(i64::from(is_array))),
                ("attcacheoff", int(-1)),
                ("atttypmod", int(typmod)),
                ("attstorage", text(storage_of(field.data_type()))),
                ("attnotnull", boolean(!field.is_nullable())),
                ("atthasdef", boolean(default.is_some())),
                ("attislocal", boolean(true)),
                ("attcollation", oid(collation)),
            ]));
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_builds_an_empty_batch() {
        for spec in TABLES {
            let schema = Arc::new(Schema::new(
                spec.columns
                    .iter()
                    .map(|(n, c)| Field::new(*n, c.data_type(), true))
                    .collect::<Vec<_>>(),
            ));
            let batch = build_batch(spec, &schema, &[]).unwrap();
            assert_eq!(batch.num_rows(), 0, "{}", spec.name);
        }
        for name in ALWAYS_EMPTY {
            assert!(is_catalog_table(name), "{name}");
        }
    }
}
