//! The objects the emulated catalog describes, read from the live catalogs on every
//! query: schemas and relations of the current database (DataFusion's default catalog,
//! whose `public` schema is Tessera's arrays and tables), and functions.

use std::sync::{Arc, Weak};

use datafusion::arrow::datatypes::{DataType, FieldRef};
use datafusion::catalog::{CatalogProvider, CatalogProviderList, TableProvider};
use datafusion::logical_expr::TableType;
use tessera_planner::{DEFAULT_CATALOG, DEFAULT_SCHEMA, TesseraCatalog, la};
use tessera_storage::{ArrayInfo, BlockFormat};

use super::types::{namespace_oid, object_oid, relation_oid};

/// Where the emulated catalog reads from. Holds the catalog list weakly: the list holds
/// the `pg_catalog` schema, which holds this.
#[derive(Debug)]
pub(crate) struct Sources {
    pub(crate) catalogs: Weak<dyn CatalogProviderList>,
    pub(crate) tessera: Arc<TesseraCatalog>,
    /// Set once, after the catalog functions are registered (they are listed too).
    pub(crate) functions: std::sync::OnceLock<Vec<FunctionInfo>>,
    /// The server's connections (`pg_stat_activity`, `tessera_progress`).
    pub(crate) activity: Arc<crate::activity::Activity>,
}

/// A schema (`pg_namespace` row).
#[derive(Debug, Clone)]
pub(crate) struct Namespace {
    pub(crate) oid: i64,
    pub(crate) name: String,
}

/// A relation (`pg_class` row).
#[derive(Debug, Clone)]
pub(crate) struct Relation {
    pub(crate) oid: i64,
    pub(crate) schema: String,
    pub(crate) name: String,
    /// `r` table (arrays too), `v` view.
    pub(crate) kind: &'static str,
    /// Set for arrays.
    pub(crate) array: Option<ArrayInfo>,
}

impl Relation {
    /// `obj_description(oid, 'pg_class')`: an array's shape, block size and format.
    pub(crate) fn description(&self) -> Option<String> {
        self.array.as_ref().map(array_description)
    }
}

/// A function (`pg_proc` row).
#[derive(Debug, Clone)]
pub(crate) struct FunctionInfo {
    pub(crate) oid: i64,
    pub(crate) name: String,
    pub(crate) namespace: i64,
    /// `f` function, `a` aggregate, `w` window.
    pub(crate) kind: &'static str,
    pub(crate) result: String,
    pub(crate) arguments: String,
    pub(crate) returns_set: bool,
}

/// A relation with its columns and column defaults.
#[derive(Debug, Clone)]
pub(crate) struct RelationDetail {
    pub(crate) relation: Relation,
    pub(crate) columns: Vec<(FieldRef, Option<String>)>,
    pub(crate) definition: Option<String>,
}

/// What `\d+` shows as an array's description:
/// `matrix 1000 x 1000, block 100 x 100, sparse, 5 non-zeros` or
/// `array station 0:999 x day 0:364 (t), block 100 x 365, 0 non-zeros`.
pub(crate) fn array_description(array: &ArrayInfo) -> String {
    let schema = &array.schema;
    let block = schema
        .dimensions()
        .iter()
        .map(|d| d.block_len.min(d.len()).to_string())
        .collect::<Vec<_>>()
        .join(" x ");
    let dims: Vec<&str> = schema
        .dimensions()
        .iter()
        .map(|d| d.name.as_str())
        .collect();
    let shape = if schema.is_matrix() && dims == ["i", "j"] {
        let (r, c) = schema.shape2();
        format!("matrix {r} x {c}")
    } else {
        let dims = schema
            .dimensions()
            .iter()
            .map(|d| format!("{} {}:{}", d.name, d.start, d.end))
            .collect::<Vec<_>>()
            .join(" x ");
        let attrs = schema
            .attributes()
            .iter()
            .map(|a| a.name.clone())
            .collect::<Vec<_>>()
            .join(", ");
        format!("array {dims} ({attrs})")
    };
    let format = match array.block_format {
        Some(BlockFormat::Csr) => ", sparse",
        Some(BlockFormat::Dense) => ", dense",
        None => "",
    };
    let nnz = array.current().nnz;
    format!("{shape}, block {block}{format}, {nnz} non-zeros")
}

impl Sources {
    fn database(&self) -> Option<Arc<dyn CatalogProvider>> {
        self.catalogs.upgrade()?.catalog(DEFAULT_CATALOG)
    }

    /// The functions `pg_proc` lists.
    pub(crate) fn functions(&self) -> &[FunctionInfo] {
        self.functions.get().map(Vec::as_slice).unwrap_or_default()
    }

    /// The current database's name (`pg_database`, `current_database()`).
    pub(crate) fn database_name(&self) -> &'static str {
        DEFAULT_CATALOG
    }

    /// Schemas of the current database, with `pg_catalog` and `information_schema`.
    pub(crate) fn namespaces(&self) -> Vec<Namespace> {
        let mut names: Vec<String> = self
            .database()
            .map(|c| c.schema_names())
            .unwrap_or_default();
        for fixed in ["pg_catalog", "information_schema", DEFAULT_SCHEMA] {
            if !names.iter().any(|n| n == fixed) {
                names.push(fixed.to_string());
            }
        }
        names.sort();
        names
            .into_iter()
            .map(|name| Namespace {
                oid: namespace_oid(&name),
                name,
            })
            .collect()
    }

    /// Every relation of the current database (without columns).
    pub(crate) fn relations(&self) -> Vec<Relation> {
        let Some(database) = self.database() else {
            return Vec::new();
        };
        let mut relations = Vec::new();
        let arrays = self.tessera.store().arrays();
        for schema_name in database.schema_names() {
            let Some(schema) = database.schema(&schema_name) else {
                continue;
            };
            let tessera = schema_name == DEFAULT_SCHEMA;
            for name in schema.table_names() {
                let array = if tessera {
                    arrays.iter().find(|a| a.name == name).cloned()
                } else {
                    None
                };
                let kind = if tessera && self.tessera.kind_of(&name) == Some("view") {
                    "v"
                } else {
                    "r"
                };
                relations.push(Relation {
                    oid: relation_oid(&schema_name, &name),
                    schema: schema_name.clone(),
                    name,
                    kind,
                    array,
                });
            }
        }
        relations
    }

    /// Every relation with its columns (tables that fail to open are skipped: a stored
    /// definition that no longer plans reports its error when queried, not here).
    pub(crate) async fn relation_details(&self) -> Vec<RelationDetail> {
        let Some(database) = self.database() else {
            return Vec::new();
        };
        let mut details = Vec::new();
        for relation in self.relations() {
            let Some(schema) = database.schema(&relation.schema) else {
                continue;
            };
            let Ok(Some(provider)) = schema.table(&relation.name).await else {
                continue;
            };
            details.push(detail(relation, provider.as_ref()));
        }
        details
    }
}

fn detail(mut relation: Relation, provider: &dyn TableProvider) -> RelationDetail {
    if provider.table_type() == TableType::View {
        relation.kind = "v";
    }
    let schema = provider.schema();
    let columns = schema
        .fields()
        .iter()
        .map(|f| {
            let default = provider.get_column_default(f.name()).map(|e| e.to_string());
            (f.clone(), default)
        })
        .collect();
    RelationDetail {
        relation,
        columns,
        definition: provider.get_table_definition().map(str::to_string),
    }
}

/// The functions `pg_proc` lists: DataFusion's (in `pg_catalog`, as PostgreSQL's
/// built-ins are, so `\df` leaves them out and `\dfS` lists them) and Tessera's matrix
/// functions (in `public`, so `\df` lists them).
pub(crate) fn function_list(state: &datafusion::execution::SessionState) -> Vec<FunctionInfo> {
    let mut functions = Vec::new();
    let mut add = |name: &str, namespace: &str, kind: &'static str, result: &str, set: bool| {
        let namespace = namespace_oid(namespace);
        functions.push(FunctionInfo {
            oid: object_oid("proc", &format!("{namespace}.{name}")),
            name: name.to_string(),
            namespace,
            kind,
            result: result.to_string(),
            arguments: String::new(),
            returns_set: set,
        });
    };
    for name in state.scalar_functions().keys() {
        add(name, "pg_catalog", "f", "", false);
    }
    for name in state.aggregate_functions().keys() {
        add(name, "pg_catalog", "a", "", false);
    }
    for name in state.window_functions().keys() {
        add(name, "pg_catalog", "w", "", false);
    }
    for name in la::MATRIX_FUNCTIONS {
        let result = if *name == "rows" {
            "TABLE(i bigint, \"row\" double precision[])"
        } else {
            "TABLE(i bigint, j bigint, v double precision)"
        };
        add(name, DEFAULT_SCHEMA, "f", result, true);
    }
    functions.sort_by(|a, b| (a.namespace, &a.name).cmp(&(b.namespace, &b.name)));
    functions.dedup_by(|a, b| a.oid == b.oid);
    functions
}

/// `double precision` for a column of arrays' cells and the like.
pub(crate) fn column_type(data_type: &DataType) -> (i64, i64) {
    let (oid, typmod) = super::types::pg_type_of(data_type);
    (i64::from(oid), i64::from(typmod))
}
