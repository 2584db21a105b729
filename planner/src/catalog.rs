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
//! tables/catalog.json          every table: schema, files, defaults; definitions' SQL
//! tables/<id>/part-<n>.parquet one file per CREATE TABLE AS / INSERT / COPY
//! ```
//!
//! `catalog.json` is replaced by write-temp, fsync, rename, fsync-directory, so an
//! `INSERT` (a new file, then a catalog naming it) is atomic: after a crash the table has
//! the file or not, and files no catalog names are deleted on the next open.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::memory::{MemoryCatalogProvider, MemoryCatalogProviderList};
use datafusion::catalog::{CatalogProvider, CatalogProviderList, SchemaProvider, TableProvider};
use datafusion::common::{
    Constraint, Constraints, DataFusionError, Result, exec_datafusion_err, plan_err,
};
use datafusion::datasource::MemTable;
use datafusion::logical_expr::{Expr, TableType};
use serde::{Deserialize, Serialize};
use tessera_storage::{ArrayInfo, ArraySchema, ArrayWriter, BlockFormat, Partitioning, Store};

use crate::array_table::{ArrayTable, CellListing};
use crate::error::storage_error;
use crate::stored_table::StoredTable;

/// The name of the schema Tessera's catalog is registered as (DataFusion's default).
pub const DEFAULT_SCHEMA: &str = "public";

/// The name of the catalog holding [`DEFAULT_SCHEMA`] (DataFusion's default).
pub const DEFAULT_CATALOG: &str = "datafusion";

/// Version of `tables/catalog.json`.
const TABLES_FORMAT: u32 = 1;

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

    /// A catalog over `store` whose tables are stored under `dir` (created if missing);
    /// stored tables are loaded, files no table uses are deleted. Definitions are
    /// loaded as pending: plan them with [`TesseraCatalog::pending_definitions`].
    pub fn open(store: Store, dir: impl Into<PathBuf>) -> Result<Arc<Self>> {
        let files = Arc::new(TableFiles::open(dir.into())?);
        let mut tables = BTreeMap::new();
        let persisted = lock(&files.catalog).clone();
        for (name, table) in &persisted.tables {
            let entry = match table {
                PersistedTable::Stored { .. } => {
                    TableEntry::Ready(Arc::new(StoredTable::open(files.clone(), name)?))
                }
                PersistedTable::Definition { sql, .. } => TableEntry::Pending(sql.clone()),
            };
            tables.insert(name.clone(), entry);
        }
        files.collect_garbage()?;
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
        let order = self
            .files
            .as_ref()
            .map(|f| lock(&f.catalog).clone())
            .unwrap_or_default();
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
            return plan_err!(
                "'{name}' is already an array; arrays and tables share one namespace"
            );
        }
        if !replace && read(&self.tables).contains_key(name) {
            return plan_err!("table '{name}' already exists");
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
            return plan_err!("'{name}' is already a table; arrays and tables share one namespace");
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
            return plan_err!("'{name}' is already a table; arrays and tables share one namespace");
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
            return plan_err!("'{name}' is already a table; arrays and tables share one namespace");
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
                files.delete_table_files(&provider);
                return Err(e);
            }
            if let Some(TableEntry::Ready(old)) = read(&self.tables).get(&name) {
                files.delete_table_files(old);
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
                files.delete_table_files(&old);
            }
        }
        write(&self.tables).insert(name.to_string(), TableEntry::Ready(provider));
        Ok(())
    }

    /// Drops a table, external table or view (and its files). `Ok(false)` if there is
    /// none of that name; a plan error if `name` is an array.
    pub fn drop_table(&self, name: &str) -> Result<bool> {
        let _namespace = lock(&self.namespace);
        let Some(entry) = read(&self.tables).get(name).cloned() else {
            if self.store.array(name).is_ok() {
                return plan_err!("'{name}' is an array, not a table; use DROP ARRAY {name}");
            }
            return Ok(false);
        };
        if let Some(files) = &self.files {
            files.commit_drop(name)?;
            if let TableEntry::Ready(p) = &entry {
                files.delete_table_files(p);
            }
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

// ---- persistence ------------------------------------------------------------------------

/// `tables/catalog.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PersistedCatalog {
    format: u32,
    next_id: u64,
    tables: BTreeMap<String, PersistedTable>,
}

impl Default for PersistedCatalog {
    fn default() -> Self {
        Self {
            format: TABLES_FORMAT,
            next_id: 1,
            tables: BTreeMap::new(),
        }
    }
}

/// One table in `tables/catalog.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum PersistedTable {
    /// Rows in Parquet files under `tables/<id>/`.
    Stored(StoredTableMeta),
    /// A statement planned again on open.
    Definition {
        /// Creation order, so definitions are planned after what they use.
        seq: u64,
        /// External table or view.
        definition: DefinitionKind,
        /// The statement as the user wrote it.
        sql: String,
    },
}

/// What the catalog records about a stored table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StoredTableMeta {
    /// Directory `tables/<id>/`.
    pub id: u64,
    /// The Arrow schema as an IPC file with no batches, hex-encoded.
    pub schema_ipc: String,
    /// Data files in `tables/<id>/`, in insertion order.
    pub files: Vec<String>,
    /// Column defaults as SQL expressions.
    #[serde(default)]
    pub defaults: BTreeMap<String, String>,
    /// Primary key (`"primary_key"`) and unique (`"unique"`) constraints by column index.
    #[serde(default)]
    pub constraints: Vec<(String, Vec<usize>)>,
}

/// The tables directory and its catalog file.
#[derive(Debug)]
pub(crate) struct TableFiles {
    dir: PathBuf,
    catalog: Mutex<PersistedCatalog>,
    /// Serializes catalog commits.
    commit: Mutex<()>,
}

const CATALOG_FILE: &str = "catalog.json";

impl TableFiles {
    fn open(dir: PathBuf) -> Result<Self> {
        fs::create_dir_all(&dir).map_err(|e| io_error(&dir, e))?;
        let path = dir.join(CATALOG_FILE);
        let catalog = match fs::read(&path) {
            Ok(bytes) => {
                let c: PersistedCatalog = serde_json::from_slice(&bytes).map_err(|e| {
                    exec_datafusion_err!("corrupt table catalog {}: {e}", path.display())
                })?;
                if c.format != TABLES_FORMAT {
                    return Err(exec_datafusion_err!(
                        "table catalog {} has format {}; this build reads {TABLES_FORMAT}",
                        path.display(),
                        c.format
                    ));
                }
                c
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => PersistedCatalog::default(),
            Err(e) => return Err(io_error(&path, e)),
        };
        Ok(Self {
            dir,
            catalog: Mutex::new(catalog),
            commit: Mutex::new(()),
        })
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn table_dir(&self, id: u64) -> PathBuf {
        self.dir.join(id.to_string())
    }

    /// A new table id (never reused, even if the table is never committed).
    pub(crate) fn next_id(&self) -> Result<u64> {
        let _commit = lock(&self.commit);
        let mut next = lock(&self.catalog).clone();
        let id = next.next_id;
        next.next_id += 1;
        self.commit_catalog(next)?;
        Ok(id)
    }

    /// The stored table `name` as the catalog records it.
    pub(crate) fn stored(&self, name: &str) -> Option<StoredTableMeta> {
        match lock(&self.catalog).tables.get(name) {
            Some(PersistedTable::Stored(meta)) => Some(meta.clone()),
            _ => None,
        }
    }

    /// Records a (new or replaced) stored table.
    fn commit_table(&self, name: &str, meta: StoredTableMeta) -> Result<()> {
        let _commit = lock(&self.commit);
        let mut next = lock(&self.catalog).clone();
        next.tables
            .insert(name.to_string(), PersistedTable::Stored(meta));
        self.commit_catalog(next)
    }

    fn commit_definition(&self, name: &str, definition: DefinitionKind, sql: &str) -> Result<()> {
        let _commit = lock(&self.commit);
        let mut next = lock(&self.catalog).clone();
        let seq = next.next_id;
        next.next_id += 1;
        next.tables.insert(
            name.to_string(),
            PersistedTable::Definition {
                seq,
                definition,
                sql: sql.to_string(),
            },
        );
        self.commit_catalog(next)
    }

    fn commit_drop(&self, name: &str) -> Result<()> {
        let _commit = lock(&self.commit);
        let mut next = lock(&self.catalog).clone();
        if next.tables.remove(name).is_some() {
            self.commit_catalog(next)?;
        }
        Ok(())
    }

    /// Changes the file list of stored table `id` (called `name`): `f` gets the current
    /// list. Fails if the table was dropped or replaced meanwhile.
    pub(crate) fn commit_files(
        &self,
        name: &str,
        id: u64,
        f: impl FnOnce(&mut Vec<String>),
    ) -> Result<Vec<String>> {
        let _commit = lock(&self.commit);
        let mut next = lock(&self.catalog).clone();
        let files = match next.tables.get_mut(name) {
            Some(PersistedTable::Stored(meta)) if meta.id == id => {
                f(&mut meta.files);
                meta.files.clone()
            }
            _ => {
                return Err(exec_datafusion_err!(
                    "table '{name}' was dropped or replaced while rows were written to it"
                ));
            }
        };
        self.commit_catalog(next)?;
        Ok(files)
    }

    /// Replaces `catalog.json` durably; on failure memory keeps the old catalog.
    fn commit_catalog(&self, next: PersistedCatalog) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(&next)
            .map_err(|e| DataFusionError::Internal(format!("table catalog: {e}")))?;
        let tmp = self.dir.join("catalog.json.tmp");
        let path = self.dir.join(CATALOG_FILE);
        write_durably(&tmp, &bytes)?;
        fs::rename(&tmp, &path).map_err(|e| io_error(&path, e))?;
        sync_dir(&self.dir)?;
        *lock(&self.catalog) = next;
        Ok(())
    }

    /// Deletes the files of a stored table that is no longer in the catalog.
    fn delete_table_files(&self, provider: &Arc<dyn TableProvider>) {
        if let Some(stored) = provider.downcast_ref::<StoredTable>() {
            let dir = self.table_dir(stored.id());
            if let Err(e) = fs::remove_dir_all(&dir)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                // Left for the next open's garbage collection.
                tracing::warn!(dir = %dir.display(), error = %e, "could not delete a dropped table's files");
            }
        }
    }

    /// Deletes table directories and files the catalog does not name (left by a crash or
    /// a failed write).
    fn collect_garbage(&self) -> Result<()> {
        let catalog = lock(&self.catalog).clone();
        let mut keep: HashMap<String, Vec<String>> = HashMap::new();
        for table in catalog.tables.values() {
            if let PersistedTable::Stored(meta) = table {
                keep.insert(meta.id.to_string(), meta.files.clone());
            }
        }
        let entries = fs::read_dir(&self.dir).map_err(|e| io_error(&self.dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io_error(&self.dir, e))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if !path.is_dir() {
                if name != CATALOG_FILE {
                    tracing::debug!(file = %path.display(), "removing a file no table uses");
                    let _ = fs::remove_file(&path);
                }
                continue;
            }
            match keep.get(&name) {
                None => {
                    tracing::debug!(dir = %path.display(), "removing a directory no table uses");
                    let _ = fs::remove_dir_all(&path);
                }
                Some(files) => {
                    let inner = fs::read_dir(&path).map_err(|e| io_error(&path, e))?;
                    for file in inner {
                        let file = file.map_err(|e| io_error(&path, e))?;
                        let fname = file.file_name().to_string_lossy().into_owned();
                        if !files.contains(&fname) {
                            tracing::debug!(file = %file.path().display(), "removing a file no table uses");
                            let _ = fs::remove_file(file.path());
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// Writes a whole file and fsyncs it.
pub(crate) fn write_durably(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = fs::File::create(path).map_err(|e| io_error(path, e))?;
    f.write_all(bytes).map_err(|e| io_error(path, e))?;
    f.sync_all().map_err(|e| io_error(path, e))
}

/// Makes a directory's entries (a rename into it) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_error(dir, e))
}

pub(crate) fn io_error(path: &Path, e: std::io::Error) -> DataFusionError {
    exec_datafusion_err!("I/O error on {}: {e}", path.display())
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
