//! Stored tables' files and the table catalog, kept through a storage [`Backend`] with
//! the arrays' commit protocol and checks.
//!
//! ```text
//! tables/catalog.json            format, next id, retired ids; every table (with its
//!                                files' sizes and checksums) and definition
//! tables/<id>/part-<n>.parquet   a table's rows (a write adds one or more files)
//! ```
//!
//! A write puts new files in the table's directory, fsyncs each and the directory, then
//! commits a catalog naming them (write `catalog.json.tmp`, fsync, rename, fsync the
//! directory). Every data file carries a CRC-32 (over the table id, the file name and
//! the file's bytes) and its size in the catalog, checked before a byte is decoded, and
//! every table's catalog entry a CRC-32 of its own. Opening checks the catalog and
//! deletes only what it proves unused: files in a healthy table's directory that the
//! table does not list, and directories of ids the catalog retired (tables dropped or
//! never committed). A directory no table claims, or one a damaged entry claims, is
//! left alone and logged. `docs/format.md` has the details.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::{DataFusionError, Result};
use datafusion::parquet::arrow::ArrowWriter;
use serde::{Deserialize, Serialize};
use tessera_storage::StorageError;
use tessera_storage::backend::{Backend, BackendWriter};

use crate::catalog::DefinitionKind;
use crate::error::{ErrorKind, storage_error, tessera_error};

/// Version of `tables/catalog.json` this build writes (it also reads version 1, which
/// had no checksums, and upgrades it on open).
pub(crate) const TABLES_FORMAT: u32 = 2;
const CATALOG_FILE: &str = "catalog.json";
const CATALOG_TMP: &str = "catalog.json.tmp";
/// A write starts a new data file once the current one holds this many bytes, so a
/// scan holds at most one file of about this size per partition in memory.
const FILE_BYTES: usize = 64 << 20;

/// `tables/catalog.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PersistedCatalog {
    format: u32,
    next_id: u64,
    /// Ids handed out that hold no committed table (one being created, or dropped or
    /// replaced): their directories are garbage, deleted by the next open.
    #[serde(default)]
    retired: BTreeSet<u64>,
    pub(crate) tables: BTreeMap<String, PersistedTable>,
}

impl Default for PersistedCatalog {
    fn default() -> Self {
        Self {
            format: TABLES_FORMAT,
            next_id: 1,
            retired: BTreeSet::new(),
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct StoredTableMeta {
    /// Directory `tables/<id>/`.
    pub id: u64,
    /// The Arrow schema as an IPC file with no batches, hex-encoded.
    pub schema_ipc: String,
    /// Data files in `tables/<id>/`, in insertion order.
    pub files: Vec<DataFile>,
    /// Column defaults as SQL expressions.
    #[serde(default)]
    pub defaults: BTreeMap<String, String>,
    /// Primary key (`"primary_key"`) and unique (`"unique"`) constraints by column index.
    #[serde(default)]
    pub constraints: Vec<(String, Vec<usize>)>,
    /// [`entry_checksum`] of this entry under its name.
    #[serde(default)]
    pub checksum: u32,
}

/// One data file of a stored table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DataFile {
    /// File name in the table's directory.
    pub name: String,
    /// Exact size in bytes.
    pub bytes: u64,
    /// Rows it holds.
    pub rows: u64,
    /// [`file_hasher`] over the file's bytes.
    pub crc32: u32,
}

/// The checksum of a data file starts from the table id and the file name, so a file
/// copied into another table or renamed fails it.
pub(crate) fn file_hasher(id: u64, name: &str) -> crc32fast::Hasher {
    let mut h = crc32fast::Hasher::new();
    h.update(b"tessera-table-file");
    h.update(&id.to_le_bytes());
    h.update(&(name.len() as u64).to_le_bytes());
    h.update(name.as_bytes());
    h
}

/// The checksum of a stored table's catalog entry (everything in it but the checksum
/// itself) under its name.
pub(crate) fn entry_checksum(name: &str, meta: &StoredTableMeta) -> u32 {
    let mut unsealed = meta.clone();
    unsealed.checksum = 0;
    let mut h = crc32fast::Hasher::new();
    h.update(b"tessera-table-entry");
    h.update(&(name.len() as u64).to_le_bytes());
    h.update(name.as_bytes());
    // Serializing plain strings, numbers and maps cannot fail.
    h.update(&serde_json::to_vec(&unsealed).unwrap_or_default());
    h.finalize()
}

impl StoredTableMeta {
    /// Sets the entry's checksum (after any change to it).
    pub(crate) fn seal(&mut self, name: &str) {
        self.checksum = entry_checksum(name, self);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its data consistent, so a poisoned lock is usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn corrupted(message: String) -> DataFusionError {
    tessera_error(ErrorKind::DataCorrupted, message)
}

fn is_not_found(e: &StorageError) -> bool {
    matches!(e, StorageError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
}

/// The tables directory, its catalog and its files.
#[derive(Debug)]
pub(crate) struct TableFiles {
    backend: Arc<dyn Backend>,
    /// The directory as messages name it.
    location: String,
    /// The directory on the local filesystem, to remove emptied table directories.
    local_root: Option<PathBuf>,
    catalog: Mutex<PersistedCatalog>,
    /// Stored tables whose entry is damaged, with the reason; their files are never
    /// touched and their entries are kept as they are.
    damaged: Mutex<BTreeMap<String, String>>,
    /// Serializes catalog commits.
    commit: Mutex<()>,
}

impl TableFiles {
    /// Opens the tables in `backend` (`location` names it in messages), checks the
    /// catalog and removes the files it proves unused. Refuses to open (touching
    /// nothing) when table data is present without a readable catalog.
    pub(crate) fn open(
        backend: Arc<dyn Backend>,
        location: String,
        local_root: Option<PathBuf>,
    ) -> Result<Self> {
        let listed = backend.list("").map_err(storage_error)?;
        let catalog_path = format!("{location}/{CATALOG_FILE}");
        let (mut catalog, mut changed) = match backend.read(CATALOG_FILE) {
            Ok(bytes) => read_catalog(&bytes, &catalog_path, backend.as_ref())?,
            Err(e) if is_not_found(&e) => {
                let data: Vec<&String> = listed.iter().filter(|p| *p != CATALOG_TMP).collect();
                if let Some(first) = data.first() {
                    return Err(corrupted(format!(
                        "the table catalog {catalog_path} is missing, but {location} holds {} \
                         table file(s), such as {location}/{first}; nothing was changed. \
                         Restore {CATALOG_FILE} from a backup, or move {location} away to \
                         start without tables",
                        data.len()
                    )));
                }
                (PersistedCatalog::default(), false)
            }
            Err(e) => return Err(storage_error(e)),
        };

        // Entries that fail their checksum, or name a file that is not there, are damaged.
        let present: HashSet<&str> = listed.iter().map(String::as_str).collect();
        let mut damaged = BTreeMap::new();
        let mut healthy: HashMap<u64, (String, HashSet<String>)> = HashMap::new();
        let mut claimed: HashSet<u64> = HashSet::new();
        for (name, table) in &catalog.tables {
            let PersistedTable::Stored(meta) = table else {
                continue;
            };
            claimed.insert(meta.id);
            if let Some(reason) = entry_damage(name, meta, &present, &location, &catalog_path) {
                tracing::error!(table = %name, "{reason}");
                damaged.insert(name.clone(), reason);
                continue;
            }
            let files = meta.files.iter().map(|f| f.name.clone()).collect();
            if let Some((other, _)) = healthy.insert(meta.id, (name.clone(), files)) {
                return Err(corrupted(format!(
                    "the table catalog {catalog_path} gives tables '{other}' and '{name}' the \
                     same directory {location}/{}; nothing was changed",
                    meta.id
                )));
            }
        }

        // Ids are never reused: not those of the catalog, nor of any directory present.
        let on_disk = listed
            .iter()
            .filter_map(|p| p.split_once('/').and_then(|(d, _)| d.parse::<u64>().ok()));
        let highest = claimed
            .iter()
            .chain(catalog.retired.iter())
            .copied()
            .chain(on_disk)
            .max()
            .unwrap_or(0);
        if catalog.next_id <= highest {
            catalog.next_id = highest + 1;
            changed = true;
        }
        // A retired id a table claims is not garbage (the header is not checksummed).
        let before = catalog.retired.len();
        catalog.retired.retain(|id| !claimed.contains(id));
        changed |= catalog.retired.len() != before;

        let files = TableFiles {
            backend,
            location,
            local_root,
            catalog: Mutex::new(catalog),
            damaged: Mutex::new(damaged),
            commit: Mutex::new(()),
        };
        files.collect_garbage(&listed, &healthy, &claimed, changed)?;
        Ok(files)
    }

    /// Deletes what the catalog proves unused; leaves (and logs) what it cannot account
    /// for. Commits the catalog when `changed` or when retired ids were swept.
    fn collect_garbage(
        &self,
        listed: &[String],
        healthy: &HashMap<u64, (String, HashSet<String>)>,
        claimed: &HashSet<u64>,
        changed: bool,
    ) -> Result<()> {
        let mut catalog = lock(&self.catalog).clone();
        let mut unknown: BTreeSet<String> = BTreeSet::new();
        let mut swept: BTreeSet<u64> = BTreeSet::new();
        for path in listed {
            if path == CATALOG_FILE {
                continue;
            }
            if path == CATALOG_TMP {
                self.delete_logged(path);
                continue;
            }
            let parsed = path.split_once('/').and_then(|(dir, file)| {
                let id = dir.parse::<u64>().ok()?;
                (id.to_string() == dir && !file.contains('/')).then_some((id, file))
            });
            let Some((id, file)) = parsed else {
                unknown.insert(path.clone());
                continue;
            };
            if let Some((_, files)) = healthy.get(&id) {
                if !files.contains(file) {
                    self.delete_logged(path);
                }
            } else if catalog.retired.contains(&id) {
                self.delete_logged(path);
                swept.insert(id);
            } else if !claimed.contains(&id) {
                unknown.insert(format!("{id}/"));
            }
            // A damaged entry's directory is left as it is.
        }
        for path in unknown {
            tracing::warn!(
                "{}/{path} belongs to no table in {}/{CATALOG_FILE}; left untouched",
                self.location,
                self.location
            );
        }
        for id in &swept {
            self.remove_empty_dir(*id);
        }
        // Retired ids whose files are gone (or never existed) are forgotten.
        let retired_before = catalog.retired.len();
        let still_there: HashSet<u64> = listed
            .iter()
            .filter_map(|p| p.split_once('/').and_then(|(d, _)| d.parse::<u64>().ok()))
            .filter(|id| !swept.contains(id))
            .collect();
        catalog.retired.retain(|id| still_there.contains(id));
        if changed || catalog.retired.len() != retired_before {
            let _commit = lock(&self.commit);
            self.commit_catalog(catalog)?;
        }
        Ok(())
    }

    fn delete_logged(&self, path: &str) {
        tracing::debug!(file = %format!("{}/{path}", self.location), "removing a file no table uses");
        if let Err(e) = self.backend.delete(path) {
            tracing::warn!(error = %e, "could not remove a file no table uses");
        }
    }

    fn remove_empty_dir(&self, id: u64) {
        if let Some(root) = &self.local_root {
            // Fails (and is meant to) while the directory still holds a file.
            let _ = std::fs::remove_dir(root.join(id.to_string()));
        }
    }

    /// The directory as messages name it.
    pub(crate) fn location(&self) -> &str {
        &self.location
    }

    /// A copy of the catalog.
    pub(crate) fn catalog(&self) -> PersistedCatalog {
        lock(&self.catalog).clone()
    }

    /// Stored tables whose catalog entry or files are damaged, with the reason.
    pub(crate) fn damaged(&self) -> BTreeMap<String, String> {
        lock(&self.damaged).clone()
    }

    /// The stored table `name` as the catalog records it (not a damaged one).
    pub(crate) fn stored(&self, name: &str) -> Option<StoredTableMeta> {
        if lock(&self.damaged).contains_key(name) {
            return None;
        }
        match lock(&self.catalog).tables.get(name) {
            Some(PersistedTable::Stored(meta)) => Some(meta.clone()),
            _ => None,
        }
    }

    /// A new table id, recorded as retired until its table is committed (so the files
    /// of a creation that never commits are deleted by the next open).
    pub(crate) fn next_id(&self) -> Result<u64> {
        let _commit = lock(&self.commit);
        let mut next = lock(&self.catalog).clone();
        let id = next.next_id;
        next.next_id += 1;
        next.retired.insert(id);
        self.commit_catalog(next)?;
        Ok(id)
    }

    /// Records a (new or replacing) stored table; the id it replaces is retired.
    pub(crate) fn commit_table(&self, name: &str, mut meta: StoredTableMeta) -> Result<()> {
        let _commit = lock(&self.commit);
        let mut next = lock(&self.catalog).clone();
        next.retired.remove(&meta.id);
        meta.seal(name);
        let old = next
            .tables
            .insert(name.to_string(), PersistedTable::Stored(meta));
        self.retire_replaced(&mut next, name, old);
        self.commit_catalog(next)?;
        lock(&self.damaged).remove(name);
        Ok(())
    }

    /// Records a definition (external table or view), replacing what had the name.
    pub(crate) fn commit_definition(
        &self,
        name: &str,
        definition: DefinitionKind,
        sql: &str,
    ) -> Result<()> {
        let _commit = lock(&self.commit);
        let mut next = lock(&self.catalog).clone();
        let seq = next.next_id;
        next.next_id += 1;
        let old = next.tables.insert(
            name.to_string(),
            PersistedTable::Definition {
                seq,
                definition,
                sql: sql.to_string(),
            },
        );
        self.retire_replaced(&mut next, name, old);
        self.commit_catalog(next)?;
        lock(&self.damaged).remove(name);
        Ok(())
    }

    /// Removes `name` from the catalog. Returns the id whose files may now be deleted
    /// (`None` for a definition or a damaged entry, whose files are left alone).
    pub(crate) fn commit_drop(&self, name: &str) -> Result<Option<u64>> {
        let _commit = lock(&self.commit);
        let mut next = lock(&self.catalog).clone();
        let Some(old) = next.tables.remove(name) else {
            return Ok(None);
        };
        let retired = self.retire_replaced(&mut next, name, Some(old));
        self.commit_catalog(next)?;
        lock(&self.damaged).remove(name);
        Ok(retired)
    }

    /// Retires the id of `old` (the entry that had `name`) when it is a healthy stored
    /// table.
    fn retire_replaced(
        &self,
        next: &mut PersistedCatalog,
        name: &str,
        old: Option<PersistedTable>,
    ) -> Option<u64> {
        match old {
            Some(PersistedTable::Stored(old)) if !lock(&self.damaged).contains_key(name) => {
                next.retired.insert(old.id);
                Some(old.id)
            }
            _ => None,
        }
    }

    /// Changes the file list of stored table `id` (called `name`): `f` gets the current
    /// list and may refuse the change. Fails if the table was dropped or replaced
    /// meanwhile.
    pub(crate) fn commit_files(
        &self,
        name: &str,
        id: u64,
        f: impl FnOnce(&mut Vec<DataFile>) -> Result<()>,
    ) -> Result<()> {
        let _commit = lock(&self.commit);
        let mut next = lock(&self.catalog).clone();
        match next.tables.get_mut(name) {
            Some(PersistedTable::Stored(meta))
                if meta.id == id && !lock(&self.damaged).contains_key(name) =>
            {
                f(&mut meta.files)?;
                meta.seal(name);
            }
            _ => {
                return Err(tessera_error(
                    ErrorKind::SerializationFailure,
                    format!("table '{name}' was dropped or replaced while rows were written to it"),
                ));
            }
        }
        self.commit_catalog(next)
    }

    /// Durably replaces `catalog.json`. If that fails after the rename (the new catalog
    /// may be what the disk shows), the previous catalog is put back, so a failed
    /// statement leaves the previous content; if even that fails, memory follows what
    /// the backend shows. Callers hold `commit`.
    fn commit_catalog(&self, next: PersistedCatalog) -> Result<()> {
        let bytes = encode(&next)?;
        match self.replace_catalog_file(&bytes) {
            Ok(()) => {
                *lock(&self.catalog) = next;
                Ok(())
            }
            Err((e, false)) => Err(e),
            Err((e, true)) => {
                let previous = encode(&lock(&self.catalog))?;
                if let Err((restore, _)) = self.replace_catalog_file(&previous) {
                    tracing::error!(error = %restore, "the previous table catalog could not be put back");
                    if let Ok(live) = self.backend.read(CATALOG_FILE)
                        && let Ok(live) = serde_json::from_slice::<PersistedCatalog>(&live)
                    {
                        *lock(&self.catalog) = live;
                    }
                }
                Err(e)
            }
        }
    }

    /// Writes, fsyncs and renames the catalog, then fsyncs the directory. The error says
    /// whether the rename happened.
    fn replace_catalog_file(&self, bytes: &[u8]) -> Result<(), (DataFusionError, bool)> {
        let before = |e| (storage_error(e), false);
        self.backend.write(CATALOG_TMP, bytes).map_err(before)?;
        self.backend.sync(CATALOG_TMP).map_err(before)?;
        self.backend
            .rename(CATALOG_TMP, CATALOG_FILE)
            .map_err(before)?;
        self.backend.sync("").map_err(|e| (storage_error(e), true))
    }

    /// True when the catalog in memory (which is what the disk shows) names file `file`
    /// of table `id`.
    fn names_file(&self, id: u64, file: &str) -> bool {
        lock(&self.catalog).tables.values().any(|t| {
            matches!(t, PersistedTable::Stored(m) if m.id == id && m.files.iter().any(|f| f.name == file))
        })
    }

    /// Deletes files of table `id` that no catalog names (after a failed write or an
    /// `INSERT OVERWRITE`); whatever is left, the next open removes.
    pub(crate) fn delete_unreferenced(&self, id: u64, files: &[String]) {
        for file in files {
            if !self.names_file(id, file) {
                let path = format!("{id}/{file}");
                if let Err(e) = self.backend.delete(&path) {
                    tracing::warn!(error = %e, "could not remove a file no table uses; the next open will");
                }
            }
        }
    }

    /// Deletes the files of a dropped or replaced table, or of one whose creation
    /// failed: nothing if a table of the catalog has id `id`.
    pub(crate) fn delete_table(&self, id: u64) {
        let claimed = lock(&self.catalog)
            .tables
            .values()
            .any(|t| matches!(t, PersistedTable::Stored(m) if m.id == id));
        if claimed {
            return;
        }
        let prefix = format!("{id}/");
        match self.backend.list(&prefix) {
            Ok(paths) => {
                for path in paths {
                    if let Err(e) = self.backend.delete(&path) {
                        tracing::warn!(error = %e, "could not remove a dropped table's file; the next open will");
                    }
                }
                self.remove_empty_dir(id);
            }
            Err(e) => tracing::warn!(error = %e, "could not list a dropped table's files"),
        }
    }

    /// Writes `batches` as new data files of table `id` (a new file every
    /// [`FILE_BYTES`]), each fsync'd, then the directories. Nothing names them until the
    /// caller commits. On an error every file written is deleted.
    pub(crate) fn write_files(
        &self,
        id: u64,
        schema: &SchemaRef,
        batches: impl Iterator<Item = Result<RecordBatch>>,
    ) -> Result<Vec<DataFile>> {
        let mut created: Vec<String> = Vec::new();
        let mut done: Vec<DataFile> = Vec::new();
        let result = (|| -> Result<()> {
            let mut current: Option<OpenFile> = None;
            for batch in batches {
                let batch = batch?;
                if batch.num_rows() == 0 {
                    continue;
                }
                let file = match &mut current {
                    Some(f) => f,
                    None => {
                        let name = new_file_name();
                        created.push(name.clone());
                        current.insert(self.create_file(id, name, schema)?)
                    }
                };
                file.rows += batch.num_rows() as u64;
                file.writer.write(&batch)?;
                if file.writer.bytes_written() + file.writer.in_progress_size() >= FILE_BYTES
                    && let Some(full) = current.take()
                {
                    done.push(self.finish_file(id, full)?);
                }
            }
            if let Some(last) = current.take() {
                done.push(self.finish_file(id, last)?);
            }
            if !done.is_empty() {
                // The files' entries in their directory, and the directory in the root.
                self.backend.sync(&id.to_string()).map_err(storage_error)?;
                self.backend.sync("").map_err(storage_error)?;
            }
            Ok(())
        })();
        match result {
            Ok(()) => Ok(done),
            Err(e) => {
                self.delete_unreferenced(id, &created);
                Err(e)
            }
        }
    }

    fn create_file(&self, id: u64, name: String, schema: &SchemaRef) -> Result<OpenFile> {
        let out = self
            .backend
            .create(&format!("{id}/{name}"))
            .map_err(storage_error)?;
        let sink = ChecksumWriter {
            inner: out,
            hasher: file_hasher(id, &name),
            bytes: 0,
        };
        Ok(OpenFile {
            writer: ArrowWriter::try_new(sink, schema.clone(), None)?,
            name,
            rows: 0,
        })
    }

    fn finish_file(&self, id: u64, file: OpenFile) -> Result<DataFile> {
        let sink = file.writer.into_inner()?;
        let (bytes, crc32) = (sink.bytes, sink.hasher.finalize());
        sink.inner.finish().map_err(storage_error)?;
        let path = format!("{id}/{}", file.name);
        self.backend.sync(&path).map_err(storage_error)?;
        Ok(DataFile {
            name: file.name,
            bytes,
            rows: file.rows,
            crc32,
        })
    }

    /// The bytes of data file `file` of table `name` (id `id`), after checking their
    /// size and checksum: damage is an XX001 error naming the table and the file, never
    /// data.
    pub(crate) fn read_file(&self, name: &str, id: u64, file: &DataFile) -> Result<Bytes> {
        let path = format!("{id}/{}", file.name);
        let shown = format!("{}/{path}", self.location);
        let bytes = match self.backend.read(&path) {
            Ok(b) => b,
            Err(e) if is_not_found(&e) => {
                if !self.names_file(id, &file.name) {
                    return Err(tessera_error(
                        ErrorKind::SerializationFailure,
                        format!("table '{name}' was rewritten while it was read; retry"),
                    ));
                }
                return Err(corrupted(format!(
                    "table '{name}': data file {shown} is missing"
                )));
            }
            Err(e) => return Err(storage_error(e)),
        };
        if bytes.len() as u64 != file.bytes {
            return Err(corrupted(format!(
                "table '{name}': data file {shown} has {} bytes, the table catalog recorded {} \
                 (truncated or damaged)",
                bytes.len(),
                file.bytes
            )));
        }
        let mut h = file_hasher(id, &file.name);
        h.update(&bytes);
        let crc = h.finalize();
        if crc != file.crc32 {
            return Err(corrupted(format!(
                "table '{name}': data file {shown} fails its checksum (crc32 {crc:08x}, the \
                 table catalog recorded {:08x})",
                file.crc32
            )));
        }
        Ok(bytes)
    }
}

/// Why a stored table's entry cannot be trusted, if it cannot.
fn entry_damage(
    name: &str,
    meta: &StoredTableMeta,
    present: &HashSet<&str>,
    location: &str,
    catalog_path: &str,
) -> Option<String> {
    if meta.checksum != entry_checksum(name, meta) {
        return Some(format!(
            "the entry of table '{name}' in {catalog_path} fails its checksum (edited or \
             damaged); its files are left untouched"
        ));
    }
    for file in &meta.files {
        if file.name.is_empty() || file.name.contains('/') || file.name.starts_with('.') {
            return Some(format!(
                "table '{name}' lists a data file named '{}' in {catalog_path}",
                file.name
            ));
        }
        let path = format!("{}/{}", meta.id, file.name);
        if !present.contains(path.as_str()) {
            return Some(format!(
                "table '{name}': data file {location}/{path} is missing"
            ));
        }
    }
    None
}

/// Parses the catalog file, upgrading format 1 (no checksums: they are computed from the
/// files as they are now). Returns the catalog and whether it must be written back.
fn read_catalog(
    bytes: &[u8],
    path: &str,
    backend: &dyn Backend,
) -> Result<(PersistedCatalog, bool)> {
    let unreadable = |e: &dyn std::fmt::Display| {
        corrupted(format!(
            "the table catalog {path} cannot be read ({e}); nothing was changed. Restore it \
             from a backup"
        ))
    };
    let mut value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| unreadable(&e))?;
    let format = value.get("format").and_then(|f| f.as_u64());
    let upgrade = match format {
        Some(1) => true,
        Some(f) if f == u64::from(TABLES_FORMAT) => false,
        Some(f) => {
            return Err(tessera_error(
                ErrorKind::FeatureNotSupported,
                format!(
                    "the table catalog {path} has format {f}; this build reads formats 1 and \
                     {TABLES_FORMAT}"
                ),
            ));
        }
        None => return Err(unreadable(&"no format number")),
    };
    if upgrade {
        upgrade_v1(&mut value, backend).map_err(|e| unreadable(&e))?;
    }
    let catalog: PersistedCatalog = serde_json::from_value(value).map_err(|e| unreadable(&e))?;
    Ok((catalog, upgrade))
}

/// Format 1 listed file names only: record each file's size, rows and checksum as the
/// file is now, and seal every entry.
fn upgrade_v1(value: &mut serde_json::Value, backend: &dyn Backend) -> Result<(), String> {
    use serde_json::Value;
    if let Some(obj) = value.as_object_mut() {
        obj.insert("format".into(), Value::from(TABLES_FORMAT));
    }
    let Some(tables) = value.get_mut("tables").and_then(Value::as_object_mut) else {
        return Err("no tables".into());
    };
    for (name, table) in tables.iter_mut() {
        if table.get("kind").and_then(Value::as_str) != Some("stored") {
            continue;
        }
        let id = table
            .get("id")
            .and_then(Value::as_u64)
            .ok_or_else(|| format!("table '{name}' has no id"))?;
        let names: Vec<String> = table
            .get("files")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|f| f.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let mut files = Vec::new();
        for file in names {
            // A missing file keeps a zero entry: the table is then reported damaged.
            let (bytes, rows, crc32) = match backend.read(&format!("{id}/{file}")) {
                Ok(b) => {
                    let mut h = file_hasher(id, &file);
                    h.update(&b);
                    let rows = datafusion::parquet::file::metadata::ParquetMetaDataReader::new()
                        .parse_and_finish(&b)
                        .map_or(0, |m| m.file_metadata().num_rows().max(0) as u64);
                    (b.len() as u64, rows, h.finalize())
                }
                Err(_) => (0, 0, 0),
            };
            files.push(DataFile {
                name: file,
                bytes,
                rows,
                crc32,
            });
        }
        let mut meta: StoredTableMeta = serde_json::from_value(Value::Object(
            table
                .as_object()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter(|(k, _)| k != "kind" && k != "files")
                .chain([("files".to_string(), Value::Array(Vec::new()))])
                .collect(),
        ))
        .map_err(|e| format!("table '{name}': {e}"))?;
        meta.files = files;
        meta.seal(name);
        let mut sealed = serde_json::to_value(PersistedTable::Stored(meta))
            .map_err(|e| format!("table '{name}': {e}"))?;
        std::mem::swap(table, &mut sealed);
    }
    tracing::info!("upgraded the table catalog to format {TABLES_FORMAT} (file checksums)");
    Ok(())
}

fn encode(catalog: &PersistedCatalog) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(catalog)
        .map_err(|e| DataFusionError::Internal(format!("table catalog: {e}")))
}

/// A data file being written.
struct OpenFile {
    name: String,
    writer: ArrowWriter<ChecksumWriter>,
    rows: u64,
}

/// Passes bytes to a backend file, hashing and counting them on the way.
struct ChecksumWriter {
    inner: Box<dyn BackendWriter>,
    hasher: crc32fast::Hasher,
    bytes: u64,
}

impl Write for ChecksumWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A file name no other write of this process or an earlier one uses.
fn new_file_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("part-{nanos}-{n}.parquet")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)] // tests may panic
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use tessera_storage::backend::MemoryBackend;

    use super::*;

    fn open(memory: &MemoryBackend) -> TableFiles {
        TableFiles::open(Arc::new(memory.clone()), "tables".into(), None).unwrap()
    }

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, true)]))
    }

    /// Stores table `name` holding `values`; returns its id.
    fn store(files: &TableFiles, name: &str, values: Vec<i64>) -> u64 {
        let id = files.next_id().unwrap();
        let batch =
            RecordBatch::try_new(schema(), vec![Arc::new(Int64Array::from(values))]).unwrap();
        let data = files
            .write_files(id, &schema(), std::iter::once(Ok(batch)))
            .unwrap();
        let meta = StoredTableMeta {
            id,
            schema_ipc: String::new(),
            files: data,
            defaults: BTreeMap::new(),
            constraints: Vec::new(),
            checksum: 0,
        };
        files.commit_table(name, meta).unwrap();
        id
    }

    #[test]
    fn the_sweep_deletes_only_what_the_catalog_proves_unused() {
        let memory = MemoryBackend::new();
        let files = open(&memory);
        let t = store(&files, "t", vec![1, 2, 3]);
        let listed = files.stored("t").unwrap().files[0].name.clone();
        // A creation that never committed: its id is retired.
        let orphan = files.next_id().unwrap();
        memory
            .write(&format!("{orphan}/part-1.parquet"), b"half")
            .unwrap();
        // A leftover in t's directory, a directory no table claims, a stray root file.
        memory
            .write(&format!("{t}/part-9.parquet"), b"old")
            .unwrap();
        memory.write("77/part-1.parquet", b"someone's").unwrap();
        memory.write("notes.txt", b"keep").unwrap();
        memory.write(CATALOG_TMP, b"{").unwrap();
        drop(files);
        let files = open(&memory);
        assert_eq!(
            memory.list("").unwrap(),
            vec![
                format!("{t}/{listed}"),
                "77/part-1.parquet".to_string(),
                CATALOG_FILE.to_string(),
                "notes.txt".to_string(),
            ]
        );
        assert!(files.catalog().retired.is_empty());
        // Ids are never reused, not even one of a directory nobody claims.
        assert_eq!(files.next_id().unwrap(), 78);
    }

    #[test]
    fn an_entry_resealed_with_another_id_is_damaged_and_its_files_stay() {
        let memory = MemoryBackend::new();
        let files = open(&memory);
        let t = store(&files, "t", vec![1, 2, 3]);
        store(&files, "u", vec![4]);
        let mut next = files.catalog();
        if let Some(PersistedTable::Stored(meta)) = next.tables.get_mut("t") {
            meta.id = 40;
            meta.seal("t");
        }
        {
            let _commit = lock(&files.commit);
            files.commit_catalog(next).unwrap();
        }
        drop(files);
        let before = memory.list("").unwrap();
        let files = open(&memory);
        let damaged = files.damaged();
        assert!(damaged["t"].contains("tables/40/"), "{damaged:?}");
        assert!(files.stored("t").is_none() && files.stored("u").is_some());
        assert_eq!(memory.list("").unwrap(), before);
        assert!(before.iter().any(|p| p.starts_with(&format!("{t}/"))));
        // Dropping the damaged entry forgets it and deletes nothing.
        assert_eq!(files.commit_drop("t").unwrap(), None);
        drop(files);
        open(&memory);
        assert_eq!(memory.list("").unwrap(), before);
    }

    #[test]
    fn two_tables_sharing_a_directory_refuse_to_open() {
        let memory = MemoryBackend::new();
        let files = open(&memory);
        store(&files, "t", vec![1]);
        let u = store(&files, "u", vec![2]);
        let mut next = files.catalog();
        let Some(PersistedTable::Stored(t_meta)) = next.tables.get("t").cloned() else {
            panic!("t is stored");
        };
        if let Some(PersistedTable::Stored(meta)) = next.tables.get_mut("u") {
            meta.id = t_meta.id;
            meta.files = t_meta.files.clone();
            meta.seal("u");
        }
        {
            let _commit = lock(&files.commit);
            files.commit_catalog(next).unwrap();
        }
        drop(files);
        let e = TableFiles::open(Arc::new(memory.clone()), "tables".into(), None).unwrap_err();
        assert!(e.to_string().contains("same directory"), "{e}");
        assert!(memory.list(&format!("{u}/")).unwrap().len() == 1);
    }

    #[test]
    fn a_format_1_catalog_is_upgraded_with_checksums_of_the_files() {
        let memory = MemoryBackend::new();
        let files = open(&memory);
        let id = store(&files, "t", vec![5, 6]);
        let file = files.stored("t").unwrap().files[0].clone();
        drop(files);
        let v1 = serde_json::json!({
            "format": 1,
            "next_id": id + 1,
            "tables": {
                "t": {"kind": "stored", "id": id, "schema_ipc": "", "files": [file.name.clone()],
                      "defaults": {}, "constraints": []},
                "v": {"kind": "definition", "seq": 9, "definition": "view", "sql": "CREATE VIEW v AS SELECT 1"}
            }
        });
        memory
            .write(CATALOG_FILE, &serde_json::to_vec(&v1).unwrap())
            .unwrap();
        let files = open(&memory);
        assert_eq!(files.stored("t").unwrap().files, vec![file.clone()]);
        assert!(files.damaged().is_empty());
        let on_disk: serde_json::Value =
            serde_json::from_slice(&memory.read(CATALOG_FILE).unwrap()).unwrap();
        assert_eq!(on_disk["format"], TABLES_FORMAT);
        // The file as written: the checksum the writer computed verifies.
        assert_eq!(
            files.read_file("t", id, &file).unwrap().len() as u64,
            file.bytes
        );
    }
}
