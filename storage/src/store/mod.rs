//! The sharded, versioned block store.
//!
//! A data directory holds `catalog.json` (arrays, schemas, partitioning, retained
//! versions) and, per array version, `arrays/<id>/v<N>/` with a `manifest.json` and
//! shard files (`shard-<k>.arrow`, Arrow IPC, one row per block). A write builds a new
//! version beside the old ones and commits by replacing `catalog.json` atomically after
//! every file it names is fsync'd, so readers (and a restart after a crash) see either
//! the old or the new version, never a mix. A version that rewrites only some blocks
//! points at the unchanged blocks' existing files.

mod cache;
mod catalog;
mod format;
mod ingest;
mod lineage;
mod snapshot;
mod verify;
mod writer;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

pub use cache::{CacheBudget, CacheStats, Unlimited};
pub use ingest::{LoadOptions, LoadSummary};
pub use lineage::{Derived, LineageStats};
pub use snapshot::{BlockMeta, Snapshot};
pub use verify::Damage;
pub use writer::{ArrayWriter, PartTarget, WriteMode, WrittenPart};

use crate::backend::{Backend, LocalBackend, MemoryBackend};
use crate::block::BlockFormat;
use crate::error::{Result, StorageError};
use crate::partition::{HASH_PLACEMENT, Partitioning};
use crate::schema::ArraySchema;
use catalog::{ArrayEntry, CATALOG_FILE, CATALOG_TMP_FILE, Catalog, Manifest, VersionEntry};

/// Store-wide settings.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Committed versions kept readable per array unless the array says otherwise.
    pub keep_versions: u32,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self { keep_versions: 5 }
    }
}

/// What the catalog knows about an array.
#[derive(Debug, Clone, PartialEq)]
pub struct ArrayInfo {
    /// Internal id (names can be reused after DROP; ids are not).
    pub id: u64,
    /// Name.
    pub name: String,
    /// Dimensions and attributes.
    pub schema: ArraySchema,
    /// How blocks are grouped into shards.
    pub partitioning: Partitioning,
    /// How many versions are kept.
    pub keep_versions: u32,
    /// Retained versions, oldest first; the last is current.
    pub versions: Vec<VersionInfo>,
    /// The format every block is stored in (`CREATE MATRIX ... SPARSE | DENSE`);
    /// `None`: chosen per block by density ([`Block::preferred_format`](crate::Block::preferred_format)).
    pub block_format: Option<BlockFormat>,
    /// For a hash-partitioned array, the name of the placement function that put the
    /// blocks of the version described in their shards ([`Placement`]); `None` for
    /// row-block and grid layouts, which depend on no hash. The version described is
    /// the current one ([`Store::array`]) or the snapshot's ([`Snapshot::info`]), whose
    /// `partitioning` is likewise that version's.
    ///
    /// Versions written before placements were recorded read as
    /// [`UNRECORDED_PLACEMENT`](crate::UNRECORDED_PLACEMENT).
    pub placement: Option<String>,
}

impl ArrayInfo {
    /// The current (newest committed) version.
    pub fn current(&self) -> &VersionInfo {
        // Every array has at least its creation version; see `create_array`.
        &self.versions[self.versions.len() - 1]
    }
}

/// Summary of one committed version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionInfo {
    /// Version number; increases with every committed write (a failed write may skip one).
    pub version: u64,
    /// Stored (non-empty) blocks.
    pub blocks: u64,
    /// Non-zero cells of the first attribute.
    pub nnz: u64,
    /// Bytes of the blocks' encoded data.
    pub bytes: u64,
    /// Commit time, milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
}

impl From<&ArrayEntry> for ArrayInfo {
    /// The array as of its current version.
    fn from(e: &ArrayEntry) -> Self {
        ArrayInfo::at_version(e, e.current())
    }
}

impl ArrayInfo {
    /// The array as of version `v` (that version's partitioning and placement).
    fn at_version(e: &ArrayEntry, v: Option<&VersionEntry>) -> Self {
        let partitioning = v.map_or(e.partitioning, |v| v.partitioning(&e.partitioning));
        ArrayInfo {
            id: e.id,
            name: e.name.clone(),
            schema: e.schema.clone(),
            partitioning,
            placement: catalog::placement_of(v.and_then(|v| v.placement.as_deref()), &partitioning),
            keep_versions: e.keep_versions,
            block_format: e.block_format,
            versions: e
                .versions
                .iter()
                .map(|v| VersionInfo {
                    version: v.version,
                    blocks: v.blocks,
                    nnz: v.nnz,
                    bytes: v.bytes,
                    created_unix_ms: v.created_unix_ms,
                })
                .collect(),
        }
    }
}

/// The block store over a [`Backend`]. Cheap to clone; clones share state.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

/// A [`Store`] that may have been closed; see [`Store::downgrade`].
#[derive(Debug, Clone)]
pub struct WeakStore(std::sync::Weak<Inner>);

impl WeakStore {
    /// The store, while it is open somewhere.
    pub fn upgrade(&self) -> Option<Store> {
        self.0.upgrade().map(|inner| Store { inner })
    }
}

#[derive(Debug)]
pub(crate) struct Inner {
    backend: Arc<dyn Backend>,
    options: StoreOptions,
    catalog: Mutex<Catalog>,
    /// Serializes catalog commits.
    commit_lock: Mutex<()>,
    /// Next version number to hand out per array id (in memory; gaps are harmless).
    next_version: Mutex<HashMap<u64, u64>>,
    manifests: Mutex<HashMap<(u64, u64), Arc<Manifest>>>,
    /// Live snapshots per (array id, version).
    pins: Mutex<HashMap<(u64, u64), usize>>,
    /// Files to delete once no snapshot of the versions that used them is alive.
    doomed: Mutex<Vec<Doomed>>,
    /// Arrays (by id) with a manifest that could not be read, and why.
    damaged: Mutex<HashMap<u64, String>>,
    /// A read-only view of a store another process owns ([`Store::open_reader`]).
    reader: bool,
    /// Decoded blocks kept for the next read ([`Store::set_block_cache`]); none by
    /// default.
    pub(crate) blocks: Mutex<Option<cache::BlockCache>>,
    /// Values derived from arrays, by lineage ([`Store::lineage_get`]); set up with the
    /// block cache.
    pub(crate) derived: Mutex<Option<lineage::LineageCache>>,
}

/// Files of retired versions, waiting for their last reader.
#[derive(Debug)]
struct Doomed {
    array_id: u64,
    versions: Vec<u64>,
    files: Vec<String>,
}

/// The committed catalog, or an empty one where none was written yet (a reader may
/// start before its owner's first commit).
fn read_catalog_if_any(backend: &dyn Backend) -> Result<Catalog> {
    match backend.read(CATALOG_FILE) {
        Ok(bytes) => format::decode_json::<Catalog>(CATALOG_FILE, &bytes),
        Err(StorageError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Ok(Catalog::default())
        }
        Err(e) => Err(e),
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its data consistent, so a poisoned lock is usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Store {
    /// Opens the store in `backend`, creating an empty catalog if there is none, and
    /// removes files that the catalog proves no committed version uses (left by a crash
    /// or a failed write).
    ///
    /// A store that holds array files but no `catalog.json`, or a catalog that cannot be
    /// read or decoded, is refused with [`StorageError::CorruptCatalog`] and nothing is
    /// touched. An array whose manifest is damaged does not stop the open: it is
    /// reported by [`Store::damage`], every read of that version fails naming the file,
    /// and none of its files are deleted.
    pub fn open(backend: Arc<dyn Backend>, options: StoreOptions) -> Result<Self> {
        let catalog = match backend.read(CATALOG_FILE) {
            Ok(bytes) => format::decode_json::<Catalog>(CATALOG_FILE, &bytes)?,
            Err(StorageError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                // A new store has no array files; files without a catalog are arrays
                // nobody can account for, so nothing may be taken for garbage.
                let data = backend.list("arrays/")?;
                if let Some(first) = data.first() {
                    return Err(StorageError::CorruptCatalog {
                        file: CATALOG_FILE.into(),
                        message: format!(
                            "the file is missing, but the store holds {} array files (such as {first}); \
                             refusing to open it (nothing was changed). Restore {CATALOG_FILE} from a backup",
                            data.len()
                        ),
                    });
                }
                Catalog::default()
            }
            Err(e) => return Err(e),
        };
        if catalog.format != catalog::FORMAT_VERSION {
            return Err(StorageError::CorruptCatalog {
                file: CATALOG_FILE.into(),
                message: format!(
                    "format {} is not supported (this build reads {})",
                    catalog.format,
                    catalog::FORMAT_VERSION
                ),
            });
        }
        let next_version = catalog
            .arrays
            .values()
            .map(|a| (a.id, a.current().map_or(0, |v| v.version) + 1))
            .collect();
        let store = Store {
            inner: Arc::new(Inner {
                backend,
                options,
                catalog: Mutex::new(catalog),
                commit_lock: Mutex::new(()),
                next_version: Mutex::new(next_version),
                manifests: Mutex::new(HashMap::new()),
                pins: Mutex::new(HashMap::new()),
                doomed: Mutex::new(Vec::new()),
                damaged: Mutex::new(HashMap::new()),
                reader: false,
                blocks: Mutex::new(None),
                derived: Mutex::new(None),
            }),
        };
        store.collect_garbage()?;
        Ok(store)
    }

    /// Opens, read-only, the store in the data directory `path` that another process
    /// owns (a worker reading the coordinator's directory): no lock, no garbage
    /// collection, no writes. Versions committed after the open are found by
    /// [`Store::snapshot`], which reads the catalog again when it does not know the
    /// version asked for; a version stays readable while the owner keeps it (the owner
    /// keeps every version a running query reads).
    pub fn open_reader(path: impl Into<std::path::PathBuf>) -> Result<Self> {
        let path = path.into();
        let backend: Arc<dyn Backend> = Arc::new(LocalBackend::open_reader(&path)?);
        let catalog = read_catalog_if_any(backend.as_ref())?;
        Ok(Store {
            inner: Arc::new(Inner {
                backend,
                options: StoreOptions::default(),
                catalog: Mutex::new(catalog),
                commit_lock: Mutex::new(()),
                next_version: Mutex::new(HashMap::new()),
                manifests: Mutex::new(HashMap::new()),
                pins: Mutex::new(HashMap::new()),
                doomed: Mutex::new(Vec::new()),
                damaged: Mutex::new(HashMap::new()),
                reader: true,
                blocks: Mutex::new(None),
                derived: Mutex::new(None),
            }),
        })
    }

    /// Keeps up to `capacity` bytes of decoded blocks in memory, each byte granted by
    /// `budget` first, so a block read again is not read, verified and decoded again
    /// (see `cache.rs`). Replaces the cache there was (its memory is given back);
    /// `capacity` 0 turns it off.
    ///
    /// The lineage cache ([`Store::lineage_get`]) is set up beside it with a quarter of
    /// `capacity` and the same budget.
    pub fn set_block_cache(&self, capacity: usize, budget: Arc<dyn CacheBudget>) {
        let derived =
            (capacity >= 4).then(|| lineage::LineageCache::new(capacity / 4, Arc::clone(&budget)));
        *lock(&self.inner.derived) = derived;
        let cache = (capacity > 0).then(|| cache::BlockCache::new(capacity, budget));
        *lock(&self.inner.blocks) = cache;
    }

    /// Gives back up to `bytes` of the caches' memory for a query that needs it, least
    /// recently used derived values first, then blocks; returns the bytes given back.
    pub fn release_block_cache(&self, bytes: usize) -> usize {
        let derived = lock(&self.inner.derived)
            .as_mut()
            .map_or(0, |cache| cache.give_back(bytes));
        if derived >= bytes {
            return derived;
        }
        derived
            + lock(&self.inner.blocks)
                .as_mut()
                .map_or(0, |cache| cache.give_back(bytes - derived))
    }

    /// The value derived under lineage `key`, if the lineage cache holds it. A key
    /// names the expression and every array version it read (see `lineage.rs`).
    pub fn lineage_get(&self, key: &str) -> Option<Derived> {
        lock(&self.inner.derived).as_mut()?.get(key)
    }

    /// Keeps `value`, which holds `bytes` and was computed from the arrays with ids
    /// `reads`, under lineage `key` (until one of those arrays changes or the room is
    /// needed); returns whether it was kept.
    pub fn lineage_put(&self, key: String, value: Derived, bytes: usize, reads: Vec<u64>) -> bool {
        lock(&self.inner.derived)
            .as_mut()
            .is_some_and(|cache| cache.put(key, value, bytes, reads))
    }

    /// What the lineage cache holds and did, if there is one.
    pub fn lineage_stats(&self) -> Option<LineageStats> {
        lock(&self.inner.derived)
            .as_ref()
            .map(lineage::LineageCache::stats)
    }

    /// A handle to this store that does not keep it open (for a memory pool that asks
    /// the store's cache for memory back, which the cache's budget refers to).
    pub fn downgrade(&self) -> WeakStore {
        WeakStore(Arc::downgrade(&self.inner))
    }

    /// What the block cache holds and did, if there is one.
    pub fn block_cache_stats(&self) -> Option<CacheStats> {
        lock(&self.inner.blocks)
            .as_ref()
            .map(cache::BlockCache::stats)
    }

    /// True for a read-only view opened by [`Store::open_reader`].
    pub fn is_reader(&self) -> bool {
        self.inner.reader
    }

    /// Opens (creating) a data directory on the local filesystem, taking its lock.
    /// A damaged or missing catalog is reported with its full path.
    pub fn open_dir(path: impl Into<std::path::PathBuf>) -> Result<Self> {
        let path = path.into();
        let backend = Arc::new(LocalBackend::open(&path)?);
        Self::open(backend, StoreOptions::default()).map_err(|e| match e {
            StorageError::CorruptCatalog { file, message } => StorageError::CorruptCatalog {
                file: path.join(file).display().to_string(),
                message,
            },
            other => other,
        })
    }

    /// An empty store in memory.
    pub fn in_memory() -> Self {
        match Self::open(Arc::new(MemoryBackend::new()), StoreOptions::default()) {
            Ok(s) => s,
            // An empty memory backend has no catalog and nothing to collect.
            Err(e) => unreachable!("an empty in-memory store cannot fail to open: {e}"),
        }
    }

    /// The backend files are stored in.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.inner.backend
    }

    /// Every array, by name.
    pub fn arrays(&self) -> Vec<ArrayInfo> {
        lock(&self.inner.catalog)
            .arrays
            .values()
            .map(ArrayInfo::from)
            .collect()
    }

    /// One array.
    pub fn array(&self, name: &str) -> Result<ArrayInfo> {
        self.inner.entry(name).map(|e| ArrayInfo::from(&e))
    }

    /// Creates an empty array (its version 0).
    pub fn create_array(
        &self,
        name: &str,
        schema: ArraySchema,
        partitioning: Option<Partitioning>,
        keep_versions: Option<u32>,
    ) -> Result<ArrayInfo> {
        self.create_array_with_format(name, schema, partitioning, keep_versions, None)
    }

    /// Creates an empty array (its version 0) whose blocks are all stored in
    /// `block_format` (`None`: chosen per block by density). Every write converts the
    /// blocks it is given.
    pub fn create_array_with_format(
        &self,
        name: &str,
        schema: ArraySchema,
        partitioning: Option<Partitioning>,
        keep_versions: Option<u32>,
        block_format: Option<BlockFormat>,
    ) -> Result<ArrayInfo> {
        let mut entry = self.new_entry(name, schema, partitioning, keep_versions, block_format)?;
        let _commit = lock(&self.inner.commit_lock);
        let mut next = lock(&self.inner.catalog).clone();
        if next.arrays.contains_key(name) {
            return Err(StorageError::ArrayExists(name.to_string()));
        }
        entry.id = next.next_array_id;
        next.next_array_id += 1;
        let info = ArrayInfo::from(&entry);
        next.arrays.insert(name.to_string(), entry);
        self.inner.commit_catalog(next)?;
        lock(&self.inner.next_version).insert(info.id, 1);
        Ok(info)
    }

    /// Starts writing a new array whose first version is committed together with its
    /// catalog entry, in one catalog replace: until [`ArrayWriter::commit`] nobody sees
    /// the array, and after a crash it either exists with all its blocks or not at all.
    ///
    /// The array's id is reserved first (a catalog commit that records it as pending),
    /// so that files of a write that never committed are provably unused at the next
    /// open. The name is checked now and again at commit, which fails with
    /// [`StorageError::ArrayExists`] (deleting what was written) if another array took
    /// it meanwhile.
    pub fn create_array_writer(
        &self,
        name: &str,
        schema: ArraySchema,
        partitioning: Option<Partitioning>,
        keep_versions: Option<u32>,
        block_format: Option<BlockFormat>,
    ) -> Result<ArrayWriter> {
        let mut entry = self.new_entry(name, schema, partitioning, keep_versions, block_format)?;
        {
            let _commit = lock(&self.inner.commit_lock);
            let mut next = lock(&self.inner.catalog).clone();
            if next.arrays.contains_key(name) {
                return Err(StorageError::ArrayExists(name.to_string()));
            }
            entry.id = next.next_array_id;
            next.next_array_id += 1;
            next.pending.insert(entry.id);
            self.inner.commit_catalog(next)?;
        }
        let pin = snapshot::Pin::new(self.inner.clone(), entry.id, 0);
        let base = Snapshot::new(
            self.inner.clone(),
            ArrayInfo::from(&entry),
            0,
            Arc::new(Manifest::empty(entry.id, 0)),
            pin,
        );
        ArrayWriter::for_new_array(self.inner.clone(), base, entry)
    }

    /// Opens the write of one part of the write `target` describes (made by another
    /// process on the same files, such as a coordinator whose workers store the blocks
    /// they computed): its blocks go to files tagged `tag` in the version's directory,
    /// and [`ArrayWriter::finish_part`] returns what they hold for the write that
    /// commits to [`ArrayWriter::adopt`]. A reader ([`Store::open_reader`]) may write
    /// parts; nothing in the catalog changes.
    pub fn part_writer(&self, target: &PartTarget, tag: &str) -> Result<ArrayWriter> {
        target.partitioning.validate(&target.schema)?;
        let info = ArrayInfo {
            id: target.array_id,
            name: target.name.clone(),
            schema: target.schema.clone(),
            partitioning: target.partitioning,
            keep_versions: 1,
            versions: Vec::new(),
            block_format: target.block_format,
            placement: None,
        };
        let pin = snapshot::Pin::new(self.inner.clone(), target.array_id, 0);
        let base = Snapshot::new(
            self.inner.clone(),
            info,
            0,
            Arc::new(Manifest::empty(target.array_id, 0)),
            pin,
        );
        ArrayWriter::for_part(self.inner.clone(), base, target, tag)
    }

    /// A new array's catalog entry at version 0, not yet given an id.
    fn new_entry(
        &self,
        name: &str,
        schema: ArraySchema,
        partitioning: Option<Partitioning>,
        keep_versions: Option<u32>,
        block_format: Option<BlockFormat>,
    ) -> Result<ArrayEntry> {
        if name.is_empty() {
            return Err(StorageError::InvalidArgument(
                "an array needs a name".into(),
            ));
        }
        let partitioning = partitioning.unwrap_or_default();
        partitioning.validate(&schema)?;
        let keep_versions = keep_versions.unwrap_or(self.inner.options.keep_versions);
        if keep_versions == 0 {
            return Err(StorageError::InvalidArgument(
                "an array must keep at least one version".into(),
            ));
        }
        Ok(ArrayEntry {
            id: 0,
            name: name.to_string(),
            schema,
            partitioning,
            keep_versions,
            block_format,
            versions: vec![VersionEntry {
                version: 0,
                manifest: String::new(),
                blocks: 0,
                nnz: 0,
                bytes: 0,
                created_unix_ms: now_ms(),
                // No blocks yet: any placement holds; this build's places the next ones.
                placement: catalog::placement_of(Some(HASH_PLACEMENT), &partitioning),
                partitioning: None,
            }],
        })
    }

    /// Drops an array. Its files are deleted once no snapshot reads them.
    pub fn drop_array(&self, name: &str) -> Result<()> {
        let _commit = lock(&self.inner.commit_lock);
        let mut next = lock(&self.inner.catalog).clone();
        let entry = next
            .arrays
            .remove(name)
            .ok_or_else(|| StorageError::ArrayNotFound(name.to_string()))?;
        self.inner.commit_catalog(next)?;
        let files = self.inner.backend.list(&format!("{}/", entry.dir()))?;
        let versions = entry.versions.iter().map(|v| v.version).collect();
        self.inner.retire(entry.id, versions, files);
        lock(&self.inner.next_version).remove(&entry.id);
        lock(&self.inner.damaged).remove(&entry.id);
        if let Some(cache) = lock(&self.inner.blocks).as_mut() {
            cache.forget_array(entry.id);
        }
        self.inner.forget_derived(entry.id);
        Ok(())
    }

    /// What is known to be damaged in an array (a manifest that could not be read at
    /// open or since), naming the file; `None` when nothing is.
    /// [`Store::verify`] checks every byte.
    pub fn damage(&self, name: &str) -> Option<String> {
        let id = lock(&self.inner.catalog).arrays.get(name)?.id;
        lock(&self.inner.damaged).get(&id).cloned()
    }

    /// A consistent read view of a committed version (the current one if `None`).
    pub fn snapshot(&self, name: &str, version: Option<u64>) -> Result<Snapshot> {
        if self.inner.reader {
            // The owner may have committed since this view last read the catalog.
            let known = self
                .inner
                .entry(name)
                .is_ok_and(|e| version.is_none_or(|n| e.versions.iter().any(|v| v.version == n)));
            if !known || version.is_none() {
                *lock(&self.inner.catalog) = read_catalog_if_any(self.inner.backend.as_ref())?;
            }
        }
        let entry = self.inner.entry(name)?;
        let v = match version {
            None => entry.current().cloned(),
            Some(n) => entry.versions.iter().find(|v| v.version == n).cloned(),
        }
        .ok_or_else(|| StorageError::VersionNotFound {
            array: name.to_string(),
            version: version.unwrap_or(0),
            retained: entry
                .versions
                .iter()
                .map(|v| v.version.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
        // Pin before reading the manifest so a concurrent commit cannot delete it.
        let pin = snapshot::Pin::new(self.inner.clone(), entry.id, v.version);
        let manifest = self.inner.manifest(&entry, &v)?;
        Ok(Snapshot::new(
            self.inner.clone(),
            ArrayInfo::at_version(&entry, Some(&v)),
            v.version,
            manifest,
            pin,
        ))
    }

    /// Starts a write to an array; nothing is visible until [`ArrayWriter::commit`].
    pub fn writer(&self, name: &str, mode: WriteMode) -> Result<ArrayWriter> {
        let base = self.snapshot(name, None)?;
        let version = {
            let mut next = lock(&self.inner.next_version);
            let n = next.entry(base.info().id).or_insert(base.version() + 1);
            let v = *n;
            *n += 1;
            v
        };
        ArrayWriter::new(self.inner.clone(), base, version, mode)
    }

    /// Rewrites the current version of `name` whole, as a new version whose blocks are
    /// placed by this build ([`Placement::current`](crate::Placement::current)) and
    /// stored with `partitioning` (`None`: the array's), and returns its number.
    ///
    /// It commits like any write (atomically, failing with
    /// [`StorageError::WriteConflict`] if another write committed meanwhile); older
    /// versions stay readable as they were stored until they are retired, and their
    /// files are deleted as usual then. This is how an array placed by another function
    /// (another build's hash) is brought to this build's placement.
    pub fn repartition(&self, name: &str, partitioning: Option<Partitioning>) -> Result<u64> {
        let mut writer = self.writer(name, WriteMode::Replace)?;
        if let Some(p) = partitioning {
            writer.repartition(p)?;
        }
        let shards: BTreeSet<u32> = writer.base().blocks().iter().map(|b| b.shard).collect();
        // One stored shard in memory at a time.
        for shard in shards {
            for (key, blocks) in writer.base().read_shard(shard)? {
                writer.put(key, blocks)?;
            }
        }
        writer.commit()
    }

    /// Deletes the files the catalog proves unused: files of dropped arrays (ids below
    /// `next_array_id` that no entry has), of creates that never committed (pending
    /// ids), and files of a live array that no retained version names, unless one of
    /// its manifests cannot be read (then nothing of it is deleted: the damaged
    /// manifest may name any of them). A file of any other shape is left alone and
    /// logged; so is a file of an id the catalog has not handed out.
    fn collect_garbage(&self) -> Result<()> {
        let catalog = lock(&self.inner.catalog).clone();
        let mut keep = BTreeSet::new();
        let mut live = HashMap::new();
        for entry in catalog.arrays.values() {
            let mut readable = true;
            for v in &entry.versions {
                keep.insert(v.manifest.clone());
                match self.inner.manifest(entry, v) {
                    Ok(manifest) => keep.extend(manifest.files.keys().cloned()),
                    Err(e) => {
                        tracing::error!(array = %entry.name, version = v.version, error = %e,
                            "array is damaged: its files are kept and its uses fail");
                        readable = false;
                    }
                }
            }
            live.insert(entry.id, readable);
        }
        for file in self.inner.backend.list("")? {
            if file == CATALOG_FILE || keep.contains(&file) {
                continue;
            }
            let unused = if file == CATALOG_TMP_FILE {
                // A catalog commit that never reached its rename.
                true
            } else {
                match array_file_id(&file) {
                    None => false,
                    Some(id) => match live.get(&id) {
                        Some(readable) => *readable,
                        None => catalog.pending.contains(&id) || id < catalog.next_array_id,
                    },
                }
            };
            if unused {
                tracing::debug!(file, "removing a file no committed version uses");
                self.inner.backend.delete(&file)?;
            } else {
                tracing::warn!(file, "leaving a file the catalog does not account for");
            }
        }
        if !catalog.pending.is_empty() {
            // Their files are gone: the ids need no reservation any more.
            let _commit = lock(&self.inner.commit_lock);
            let mut next = lock(&self.inner.catalog).clone();
            next.pending.clear();
            self.inner.commit_catalog(next)?;
        }
        Ok(())
    }
}

/// The array id of a file the store writes (`arrays/<id>/v<N>/manifest.json` or
/// `arrays/<id>/v<N>/shard-<k>.arrow`); `None` for any other path.
fn array_file_id(path: &str) -> Option<u64> {
    let mut parts = path.split('/');
    let (Some("arrays"), Some(id), Some(version), Some(name), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let shard_file = |name: &str| {
        name.strip_prefix("shard-")
            .and_then(|n| n.strip_suffix(".arrow"))
            .is_some_and(|k| k.split('-').all(digits))
    };
    // A part of a write made elsewhere: `part-{tag}-shard-{k}.arrow`.
    let part_file = |name: &str| {
        name.strip_prefix("part-")
            .and_then(|n| n.rsplit_once("-shard-"))
            .is_some_and(|(tag, rest)| {
                !tag.is_empty()
                    && tag.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    && shard_file(&format!("shard-{rest}"))
            })
    };
    let shard = shard_file(name) || part_file(name);
    let ok = version.strip_prefix('v').is_some_and(digits) && (name == "manifest.json" || shard);
    if ok { id.parse().ok() } else { None }
}

impl Inner {
    pub(crate) fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    fn entry(&self, name: &str) -> Result<ArrayEntry> {
        lock(&self.catalog)
            .arrays
            .get(name)
            .cloned()
            .ok_or_else(|| StorageError::ArrayNotFound(name.to_string()))
    }

    /// The manifest of a version (cached).
    fn manifest(&self, entry: &ArrayEntry, v: &VersionEntry) -> Result<Arc<Manifest>> {
        if let Some(m) = lock(&self.manifests).get(&(entry.id, v.version)) {
            return Ok(m.clone());
        }
        let manifest = if v.manifest.is_empty() {
            Manifest::empty(entry.id, v.version)
        } else {
            let read = match self.backend.read(&v.manifest) {
                Err(StorageError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    Err(StorageError::CorruptCatalog {
                        file: v.manifest.clone(),
                        message: format!(
                            "the manifest of array '{}' version {} is missing",
                            entry.name, v.version
                        ),
                    })
                }
                other => other,
            };
            let decoded = read.and_then(|bytes| self.check_manifest(entry, v, &bytes));
            match decoded {
                Ok(m) => m,
                Err(e) => {
                    if let StorageError::CorruptCatalog { file, message } = &e {
                        lock(&self.damaged).insert(
                            entry.id,
                            format!("version {}: {file}: {message}", v.version),
                        );
                    }
                    return Err(e);
                }
            }
        };
        let m = Arc::new(manifest);
        lock(&self.manifests).insert((entry.id, v.version), m.clone());
        Ok(m)
    }

    /// Decodes a manifest and checks it belongs to `entry`'s version `v`.
    fn check_manifest(
        &self,
        entry: &ArrayEntry,
        v: &VersionEntry,
        bytes: &[u8],
    ) -> Result<Manifest> {
        let m: Manifest = format::decode_json(&v.manifest, bytes)?;
        if m.array_id != entry.id || m.version != v.version {
            return Err(StorageError::CorruptCatalog {
                file: v.manifest.clone(),
                message: format!(
                    "manifest is for array id {} version {}, expected array '{}' (id {}) version {}",
                    m.array_id, m.version, entry.name, entry.id, v.version
                ),
            });
        }
        Ok(m)
    }

    /// Durably replaces the catalog: write a temporary file, fsync it, rename it over
    /// `catalog.json`, fsync the directory. On failure the in-memory catalog is reloaded
    /// from what the backend now shows, so memory and disk agree.
    fn commit_catalog(&self, next: Catalog) -> Result<()> {
        if self.reader {
            return Err(StorageError::Internal(
                "a read-only view of the store (a worker's) cannot commit; writes go through the coordinator"
                    .into(),
            ));
        }
        const TMP: &str = CATALOG_TMP_FILE;
        let bytes = format::encode_json(&next)?;
        let result = (|| {
            self.backend.write(TMP, &bytes)?;
            self.backend.sync(TMP)?;
            self.backend.rename(TMP, CATALOG_FILE)?;
            self.backend.sync("")
        })();
        match result {
            Ok(()) => {
                *lock(&self.catalog) = next;
                Ok(())
            }
            Err(e) => {
                if let Ok(c) = self
                    .backend
                    .read(CATALOG_FILE)
                    .and_then(|b| format::decode_json::<Catalog>(CATALOG_FILE, &b))
                {
                    *lock(&self.catalog) = c;
                }
                Err(e)
            }
        }
    }

    /// Drops every derived value computed from array `id` (it changed or went).
    pub(crate) fn forget_derived(&self, id: u64) {
        if let Some(cache) = lock(&self.derived).as_mut() {
            cache.forget_array(id);
        }
    }

    /// Drops the reservation of an array id whose create did not commit (its files are
    /// deleted by the writer).
    fn release_pending(&self, id: u64) {
        let _commit = lock(&self.commit_lock);
        let mut next = lock(&self.catalog).clone();
        if next.pending.remove(&id)
            && let Err(e) = self.commit_catalog(next)
        {
            tracing::warn!(id, error = %e, "could not release a reserved array id");
        }
    }

    /// Marks versions as no longer retained: `files` are deleted now, or when the last
    /// snapshot of any of those versions is dropped.
    fn retire(&self, array_id: u64, versions: Vec<u64>, files: Vec<String>) {
        {
            let mut manifests = lock(&self.manifests);
            for v in &versions {
                manifests.remove(&(array_id, *v));
            }
        }
        lock(&self.doomed).push(Doomed {
            array_id,
            versions,
            files,
        });
        self.delete_unpinned();
    }

    /// Deletes the doomed files whose versions no snapshot reads any more.
    pub(crate) fn delete_unpinned(&self) {
        let ready: Vec<Doomed> = {
            let pins = lock(&self.pins);
            let mut doomed = lock(&self.doomed);
            let (ready, waiting) =
                std::mem::take(&mut *doomed)
                    .into_iter()
                    .partition(|d: &Doomed| {
                        d.versions
                            .iter()
                            .all(|v| pins.get(&(d.array_id, *v)).copied().unwrap_or(0) == 0)
                    });
            *doomed = waiting;
            ready
        };
        for d in ready {
            self.delete_files(&d.files);
        }
    }

    fn delete_files(&self, files: &[String]) {
        for f in files {
            if let Err(e) = self.backend.delete(f) {
                // Left for the next open's garbage collection.
                tracing::warn!(file = %f, error = %e, "could not delete an unused file");
            }
        }
    }
}

#[cfg(test)]
mod tests;
