//! The catalog SQL sees: one namespace of arrays and tables.
//!
//! [`TesseraCatalog`] is DataFusion's `public` schema. A name resolves, in order, to
//!
//! - a **table**: made by `CREATE TABLE [AS]` (stored as Parquet files in the data
//!   directory, or in memory for an in-memory database), or a **definition**:
//!   `CREATE EXTERNAL TABLE` and `CREATE VIEW`, kept as their statements and planned
//!   again after a restart;
//! - an **array** of the [`Store`], as an [`ArrayTable`] listing its non-zero cells
//!   ([`CellListing::NonZeros`]): an array is the relation of its non-zero cells, the
//!   coordinate form of a sparse matrix, so `count(*)` is its non-zero count and a
//!   zero cell never appears as a row;
//! - `"x@N"` (a quoted identifier, SciDB's syntax): version `N` of array `x`, or an error
//!   naming the versions still retained.
//!
//! Arrays and tables share the namespace: creating either under a name the other uses is
//! an error. Persistent tables live under `tables/` in the data directory:
//!
//! ```text
//! tables/catalog.json          every table: schema, files (sizes, checksums), defaults;
//!                              definitions' SQL
//! tables/<id>/part-<n>.parquet a table's rows, written by CREATE TABLE AS / INSERT / COPY
//! ```
//!
//! [`crate::table_files`] keeps them through a storage `Backend` with the arrays' commit
//! protocol: an `INSERT` (new files, then a catalog naming them) is atomic, every file is
//! checked against its checksum before it is decoded, and a damaged table is reported
//! (XX001) while the others are served.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::memory::{MemoryCatalogProvider, MemoryCatalogProviderList};
use datafusion::catalog::{CatalogProvider, CatalogProviderList, SchemaProvider, TableProvider};
use datafusion::common::{Constraint, Constraints, Result, plan_err};
use datafusion::datasource::MemTable;
use datafusion::logical_expr::{Expr, TableType};
use serde::{Deserialize, Serialize};
use tessera_storage::backend::{Backend, LocalBackend};
use tessera_storage::{ArrayInfo, ArraySchema, ArrayWriter, BlockFormat, Partitioning, Store};

use crate::array_table::{ArrayTable, CellListing};
use crate::error::{ErrorKind, storage_error, tessera_error};
use crate::stored_table::StoredTable;
use crate::table_files::{PersistedTable, StoredTableMeta, TableFiles};

/// The name of the schema Tessera's catalog is registered as (DataFusion's default).
pub const DEFAULT_SCHEMA: &str = "public";

/// The name of the catalog holding [`DEFAULT_SCHEMA`]: the database's one name, as
/// `current_database()`, `pg_database`, `information_schema` and Flight SQL's catalogs
/// report it and as clients connect to it (`dbname=tessera`).
pub const DEFAULT_CATALOG: &str = "tessera";

/// Arrays and tables, as DataFusion's default schema.
#[derive(Debug)]
pub struct TesseraCatalog {
    store: Store,
    tables: RwLock<BTreeMap<String, TableEntry>>,
    /// `None` for an in-memory database.
    files: Option<Arc<TableFiles>>,
    /// Serializes every change of the namespace (creating or dropping a name).
    namespace: Mutex<()>,
}

/// What a table name stands for.
#[derive(Debug, Clone)]
enum TableEntry {
    /// Ready to query.
    Ready(Arc<dyn TableProvider>),
    /// A stored definition not yet planned in this process (see
    /// [`TesseraCatalog::pending_definitions`]).
    Pending(String),
    /// A stored definition that could not be planned again; queries get the reason.
    Broken(String),
    /// A stored table whose catalog entry or files are damaged; queries get the reason
    /// (XX001) and its files are left as they are.
    Damaged(String),
}

/// The kind of a stored definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DefinitionKind {
    /// `CREATE EXTERNAL TABLE`.
    ExternalTable,
    /// `CREATE VIEW`.
    View,
}

/// Rows to store as a new table.
#[derive(Debug)]
pub struct NewTable {
    /// Name.
    pub name: String,
    /// Columns.
    pub schema: SchemaRef,
    /// Rows, by partition.
    pub batches: Vec<Vec<RecordBatch>>,
    /// Primary key and unique constraints.
    pub constraints: Constraints,
    /// Column defaults.
    pub defaults: HashMap<String, Expr>,
    /// Replace an existing table of that name (`CREATE OR REPLACE`).
    pub replace: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its data consistent, so a poisoned lock is usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|e| e.into_inner())
}

/// Splits `"x@3"` into `("x", 3)`.
pub fn split_version(name: &str) -> Option<(&str, u64)> {
    let (base, version) = name.rsplit_once('@')?;
    if base.is_empty() || version.is_empty() || !version.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    version.parse().ok().map(|v| (base, v))
}

impl TesseraCatalog {
    /// A catalog over `store` whose tables live in memory.
    pub fn in_memory(store: Store) -> Arc<Self> {
        Arc::new(Self {
            store,
            tables: RwLock::new(BTreeMap::new()),
            files: None,
            namespace: Mutex::new(()),
        })
    }

    /// A catalog over `store` whose tables are stored under `dir` (created if missing,
    /// locked while open); see [`TesseraCatalog::open_backend`].
    pub fn open(store: Store, dir: impl Into<PathBuf>) -> Result<Arc<Self>> {
        let dir = dir.into();
        let backend = LocalBackend::open(&dir).map_err(storage_error)?;
        let location = dir.display().to_string();
        Self::open_with(store, Arc::new(backend), location, Some(dir))
    }

    /// A catalog over `store` whose tables are stored in `backend` (`location` names it
    /// in messages). The table catalog is checked: damaged tables are reported (XX001
    /// on every use) and the rest served; only files it proves unused are deleted; table
    /// data without a readable catalog refuses to open. Definitions are loaded as
    /// pending: plan them with [`TesseraCatalog::pending_definitions`].
    pub fn open_backend(
        store: Store,
        backend: Arc<dyn Backend>,
        location: impl Into<String>,
    ) -> Result<Arc<Self>> {
        Self::open_with(store, backend, location.into(), None)
    }

    fn open_with(
        store: Store,
        backend: Arc<dyn Backend>,
        location: String,
        local_root: Option<PathBuf>,
    ) -> Result<Arc<Self>> {
        let files = Arc::new(TableFiles::open(backend, location, local_root)?);
        let damaged = files.damaged();
        let mut tables = BTreeMap::new();
        for (name, table) in &files.catalog().tables {
            let entry = match table {
                PersistedTable::Stored(_) => match damaged.get(name) {
                    Some(reason) => TableEntry::Damaged(reason.clone()),
                    None => match StoredTable::open(files.clone(), name) {
                        Ok(t) => TableEntry::Ready(Arc::new(t)),
                        Err(e) => {
                            tracing::error!(table = %name, error = %e, "a stored table cannot be opened");
                            TableEntry::Damaged(e.to_string())
                        }
                    },
                },
                PersistedTable::Definition { sql, .. } => TableEntry::Pending(sql.clone()),
            };
            tables.insert(name.clone(), entry);
        }
        Ok(Arc::new(Self {
            store,
            tables: RwLock::new(tables),
            files: Some(files),
            namespace: Mutex::new(()),
        }))
    }

    /// The array store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// True when tables are stored on disk.
    pub fn is_persistent(&self) -> bool {
        self.files.is_some()
    }

    /// A catalog list whose default catalog's `public` schema is this catalog; every
    /// session built on it sees the same arrays and tables.
    pub fn catalog_list(self: &Arc<Self>) -> Result<Arc<dyn CatalogProviderList>> {
        let catalog = MemoryCatalogProvider::new();
        catalog.register_schema(DEFAULT_SCHEMA, self.clone() as Arc<dyn SchemaProvider>)?;
        let list = MemoryCatalogProviderList::new();
        list.register_catalog(DEFAULT_CATALOG.to_string(), Arc::new(catalog));
        Ok(Arc::new(list))
    }

    /// Stored definitions not yet planned in this process, oldest first, as
    /// `(name, statement)`. The session plans each and hands the result to
    /// [`TesseraCatalog::restore_definition`].
    pub fn pending_definitions(&self) -> Vec<(String, String)> {
        let tables = read(&self.tables);
        let mut pending: Vec<(u64, String, String)> = Vec::new();
        let order = self.files.as_ref().map(|f| f.catalog()).unwrap_or_default();
        for (name, entry) in tables.iter() {
            if let TableEntry::Pending(sql) = entry {
                let seq = match order.tables.get(name) {
                    Some(PersistedTable::Definition { seq, .. }) => *seq,
                    _ => 0,
                };
                pending.push((seq, name.clone(), sql.clone()));
            }
        }
        pending.sort();
        pending.into_iter().map(|(_, n, s)| (n, s)).collect()
    }

    /// Installs the provider planned from a pending definition, or the reason it could
    /// not be planned (queries of that name then fail with it).
    pub fn restore_definition(&self, name: &str, provider: Result<Arc<dyn TableProvider>>) {
        let mut tables = write(&self.tables);
        if let Some(entry @ TableEntry::Pending(_)) = tables.get_mut(name) {
            *entry = match provider {
                Ok(p) => TableEntry::Ready(p),
                Err(e) => {
                    tracing::warn!(table = name, error = %e, "a stored definition could not be planned");
                    TableEntry::Broken(e.to_string())
                }
            };
        }
    }

    /// Stored column defaults (as SQL) of tables loaded from disk, to be planned by the
    /// session and handed to [`TesseraCatalog::restore_defaults`].
    pub fn pending_defaults(&self) -> Vec<(String, SchemaRef, BTreeMap<String, String>)> {
        let tables = read(&self.tables);
        let mut out = Vec::new();
        for (name, entry) in tables.iter() {
            if let TableEntry::Ready(p) = entry
                && let Some(stored) = p.downcast_ref::<StoredTable>()
                && !stored.defaults_restored()
            {
                out.push((name.clone(), stored.schema(), stored.default_sql()));
            }
        }
        out
    }

    /// Sets the column defaults of a stored table loaded from disk.
    pub fn restore_defaults(&self, name: &str, defaults: HashMap<String, Expr>) {
        if let Some(TableEntry::Ready(p)) = read(&self.tables).get(name)
            && let Some(stored) = p.downcast_ref::<StoredTable>()
        {
            stored.set_defaults(defaults);
        }
    }

    // ---- the namespace ----------------------------------------------------------------

    /// What `name` is, for messages: `"table"`, `"view"`, `"array"` or `None`.
    pub fn kind_of(&self, name: &str) -> Option<&'static str> {
        if let Some(entry) = read(&self.tables).get(name) {
            return Some(match entry {
                TableEntry::Ready(p) if p.table_type() == TableType::View => "view",
                _ => "table",
            });
        }
        self.store.array(name).ok().map(|_| "array")
    }

    /// True when `name` is a table, view or external table (not an array).
    pub fn is_table(&self, name: &str) -> bool {
        read(&self.tables).contains_key(name)
    }

    /// The array called `name`, if there is one.
    pub fn array(&self, name: &str) -> Option<ArrayInfo> {
        self.store.array(name).ok()
    }

    /// Fails unless `name` is free for a new table (or, with `replace`, is a table).
    fn check_table_name(&self, name: &str, replace: bool) -> Result<()> {
        if name.is_empty() {
            return plan_err!("a table needs a name");
        }
        if self.store.array(name).is_ok() {
            return Err(crate::error::tessera_error(
                crate::error::ErrorKind::DuplicateTable,
                format!("'{name}' is already an array; arrays and tables share one namespace"),
            ));
        }
        if !replace && read(&self.tables).contains_key(name) {
            return Err(crate::error::tessera_error(
                crate::error::ErrorKind::DuplicateTable,
                format!("table '{name}' already exists"),
            ));
        }
        Ok(())
    }

    /// Creates an array, after checking that no table has its name.
    pub fn create_array(
        &self,
        name: &str,
        schema: ArraySchema,
        partitioning: Option<Partitioning>,
        keep_versions: Option<u32>,
        block_format: Option<BlockFormat>,
    ) -> Result<ArrayInfo> {
        let _namespace = lock(&self.namespace);
        if read(&self.tables).contains_key(name) {
            return Err(crate::error::tessera_error(
                crate::error::ErrorKind::DuplicateTable,
                format!("'{name}' is already a table; arrays and tables share one namespace"),
            ));
        }
        self.store
            .create_array_with_format(name, schema, partitioning, keep_versions, block_format)
            .map_err(storage_error)
    }

    /// Starts writing a new array that becomes visible, with all its blocks, only when
    /// [`TesseraCatalog::commit_new_array`] commits it (see
    /// [`Store::create_array_writer`]).
    pub fn create_array_writer(
        &self,
        name: &str,
        schema: ArraySchema,
        partitioning: Option<Partitioning>,
        keep_versions: Option<u32>,
        block_format: Option<BlockFormat>,
    ) -> Result<ArrayWriter> {
        if read(&self.tables).contains_key(name) {
            return Err(tessera_error(
                ErrorKind::DuplicateTable,
                format!("'{name}' is already a table; arrays and tables share one namespace"),
            ));
        }
        self.store
            .create_array_writer(name, schema, partitioning, keep_versions, block_format)
            .map_err(storage_error)
    }

    /// Commits a writer from [`TesseraCatalog::create_array_writer`]: the array and its
    /// content appear together, unless a table or an array took the name meanwhile
    /// (then nothing of it is left).
    pub fn commit_new_array(&self, writer: ArrayWriter) -> Result<u64> {
        let _namespace = lock(&self.namespace);
        let name = &writer.base().info().name;
        if read(&self.tables).contains_key(name) {
            return Err(tessera_error(
                ErrorKind::DuplicateTable,
                format!("'{name}' is already a table; arrays and tables share one namespace"),
            ));
        }
        let id = writer.base().info().id;
        let name = name.clone();
        writer.commit().map_err(|e| {
            // A sync that failed after the catalog's rename leaves the matrix visible;
            // the statement failed, so it goes.
            if self.store.array(&name).is_ok_and(|a| a.id == id)
                && let Err(drop_error) = self.store.drop_array(&name)
            {
                tracing::warn!(array = %name, error = %drop_error, "could not drop a half-created matrix");
            }
            storage_error(e)
        })
    }

    /// Drops an array. Fails with a plan error naming the kind if `name` is a table.
    pub fn drop_array(&self, name: &str) -> Result<()> {
        let _namespace = lock(&self.namespace);
        let is_table = read(&self.tables).contains_key(name);
        if is_table {
            let kind = self.kind_of_entry(name);
            return plan_err!(
                "'{name}' is a {kind}, not an array; use DROP {}",
                kind.to_uppercase()
            );
        }
        self.store.drop_array(name).map_err(storage_error)
    }

    fn kind_of_entry(&self, name: &str) -> &'static str {
        match read(&self.tables).get(name) {
            Some(TableEntry::Ready(p)) if p.table_type() == TableType::View => "view",
            _ => "table",
        }
    }

    /// Stores rows as a new table (Parquet files for a persistent catalog, memory
    /// otherwise).
    pub async fn create_table(&self, table: NewTable) -> Result<()> {
        self.check_table_name(&table.name, table.replace)?;
        let name = table.name.clone();
        let (provider, meta): (Arc<dyn TableProvider>, Option<StoredTableMeta>) = match &self.files
        {
            None => (
                Arc::new(
                    MemTable::try_new(table.schema.clone(), table.batches)?
                        .with_constraints(table.constraints)
                        .with_column_defaults(table.defaults),
                ),
                None,
            ),
            Some(files) => {
                let files = files.clone();
                let name = name.clone();
                let (stored, meta) = crate::error::blocking(move || {
                    StoredTable::create(
                        files,
                        &name,
                        table.schema,
                        table.batches.into_iter().flatten().collect(),
                        table.constraints,
                        table.defaults,
                    )
                })
                .await?;
                (Arc::new(stored), Some(meta))
            }
        };
        let _namespace = lock(&self.namespace);
        // Checked again under the lock: another session may have taken the name.
        let checked = self.check_table_name(&name, table.replace);
        if let (Some(files), Some(meta)) = (&self.files, meta) {
            let committed = checked.and_then(|()| files.commit_table(&name, meta));
            if let Err(e) = committed {
                delete_stored_files(files, &provider);
                return Err(e);
            }
            if let Some(TableEntry::Ready(old)) = read(&self.tables).get(&name) {
                delete_stored_files(files, old);
            }
        } else {
            checked?;
        }
        write(&self.tables).insert(name, TableEntry::Ready(provider));
        Ok(())
    }

    /// Registers an external table or view, keeping its statement so it is planned
    /// again after a restart (persistent catalogs).
    pub fn create_definition(
        &self,
        name: &str,
        kind: DefinitionKind,
        sql: &str,
        provider: Arc<dyn TableProvider>,
        replace: bool,
    ) -> Result<()> {
        let _namespace = lock(&self.namespace);
        self.check_table_name(name, replace)?;
        if let Some(files) = &self.files {
            let old = write(&self.tables).get(name).cloned();
            files.commit_definition(name, kind, sql)?;
            if let Some(TableEntry::Ready(old)) = old {
                delete_stored_files(files, &old);
            }
        }
        write(&self.tables).insert(name.to_string(), TableEntry::Ready(provider));
        Ok(())
    }

    /// Drops a table, external table or view (and its files). `Ok(false)` if there is
    /// none of that name; a plan error if `name` is an array.
    pub fn drop_table(&self, name: &str) -> Result<bool> {
        let _namespace = lock(&self.namespace);
        if !read(&self.tables).contains_key(name) {
            if self.store.array(name).is_ok() {
                return plan_err!("'{name}' is an array, not a table; use DROP ARRAY {name}");
            }
            return Ok(false);
        }
        if let Some(files) = &self.files
            && let Some(id) = files.commit_drop(name)?
        {
            files.delete_table(id);
        }
        write(&self.tables).remove(name);
        Ok(true)
    }

    /// Every table and array name, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = read(&self.tables).keys().cloned().collect();
        names.extend(self.store.arrays().into_iter().map(|a| a.name));
        names.sort();
        names.dedup();
        names
    }
}

#[async_trait]
impl SchemaProvider for TesseraCatalog {
    fn table_names(&self) -> Vec<String> {
        self.names()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        let entry = read(&self.tables).get(name).cloned();
        match entry {
            Some(TableEntry::Ready(p)) => return Ok(Some(p)),
            Some(TableEntry::Broken(reason)) => {
                return plan_err!("table '{name}' could not be restored: {reason}");
            }
            Some(TableEntry::Damaged(reason)) => {
                return Err(tessera_error(ErrorKind::DataCorrupted, reason));
            }
            // Only seen while stored definitions are planned again (the statement that
            // made it is planned and must not find it).
            Some(TableEntry::Pending(_)) => return Ok(None),
            None => {}
        }
        let store = self.store.clone();
        if store.array(name).is_ok() {
            return Ok(Some(Arc::new(ArrayTable::open(
                &store,
                name,
                None,
                CellListing::NonZeros,
            )?)));
        }
        if let Some((base, version)) = split_version(name)
            && store.array(base).is_ok()
        {
            return Ok(Some(Arc::new(ArrayTable::open(
                &store,
                base,
                Some(version),
                CellListing::NonZeros,
            )?)));
        }
        Ok(None)
    }

    fn register_table(
        &self,
        name: String,
        table: Arc<dyn TableProvider>,
    ) -> Result<Option<Arc<dyn TableProvider>>> {
        // Tables registered through DataFusion's API live in memory only; SQL's CREATE
        // TABLE goes through `create_table`, which stores them.
        let _namespace = lock(&self.namespace);
        self.check_table_name(&name, false)?;
        write(&self.tables).insert(name, TableEntry::Ready(table));
        Ok(None)
    }

    fn deregister_table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        let entry = read(&self.tables).get(name).cloned();
        match entry {
            Some(TableEntry::Ready(p)) => {
                self.drop_table(name)?;
                Ok(Some(p))
            }
            Some(_) => {
                self.drop_table(name)?;
                Ok(None)
            }
            None if self.store.array(name).is_ok() => {
                plan_err!("'{name}' is an array, not a table; use DROP ARRAY {name}")
            }
            None => Ok(None),
        }
    }

    fn table_exist(&self, name: &str) -> bool {
        read(&self.tables).contains_key(name) || self.store.array(name).is_ok()
    }
}

/// Deletes the files of a stored table that the catalog no longer names (its id is
/// retired); anything else has no files of its own.
fn delete_stored_files(files: &TableFiles, provider: &Arc<dyn TableProvider>) {
    if let Some(stored) = provider.downcast_ref::<StoredTable>() {
        files.delete_table(stored.id());
    }
}

/// Constraints as `(kind, columns)` for the catalog file.
pub(crate) fn constraints_to_meta(c: &Constraints) -> Vec<(String, Vec<usize>)> {
    c.iter()
        .map(|c| match c {
            Constraint::PrimaryKey(cols) => ("primary_key".to_string(), cols.clone()),
            Constraint::Unique(cols) => ("unique".to_string(), cols.clone()),
        })
        .collect()
}

/// The inverse of [`constraints_to_meta`].
pub(crate) fn constraints_from_meta(meta: &[(String, Vec<usize>)]) -> Constraints {
    Constraints::new_unverified(
        meta.iter()
            .map(|(kind, cols)| match kind.as_str() {
                "primary_key" => Constraint::PrimaryKey(cols.clone()),
                _ => Constraint::Unique(cols.clone()),
            })
            .collect(),
    )
}
