//! Writing a new version of an array.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow_ipc::writer::FileWriter;
use arrow_schema::SchemaRef;

use super::catalog::{ArrayEntry, BlockEntry, Manifest, VersionEntry};
use super::format;
use super::{Inner, Snapshot, lock, now_ms};
use crate::backend::BackendWriter;
use crate::block::{Block, BlockFormat};
use crate::error::{Result, StorageError};
use crate::partition::{MIXED_PLACEMENT, Partitioning, Placement};
use crate::schema::BlockKey;

/// What a write does with the blocks it does not touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WriteMode {
    /// The new version holds only the blocks put by this write.
    Replace,
    /// The new version is the current one with the blocks put by this write replacing
    /// (or, if empty, removing) blocks at the same keys.
    #[default]
    Update,
}

struct ShardFile {
    path: String,
    writer: FileWriter<CountingWriter>,
}

/// Counts the bytes of a shard file as they are written, and checksums the bytes of
/// the block being written, for the manifest.
struct CountingWriter {
    out: Box<dyn BackendWriter>,
    bytes: u64,
    frame: crc32fast::Hasher,
}

impl std::io::Write for CountingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        self.frame.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// A write in progress. Blocks stream to shard files as they are put (memory stays at
/// about one block); [`ArrayWriter::commit`] makes them a version. Dropped without a
/// commit, it deletes what it wrote.
pub struct ArrayWriter {
    inner: Arc<Inner>,
    base: Snapshot,
    version: u64,
    mode: WriteMode,
    shard_schema: SchemaRef,
    files: BTreeMap<u32, ShardFile>,
    /// Blocks put by this write; `None` removes the key.
    puts: BTreeMap<BlockKey, Option<BlockEntry>>,
    /// Files this write created (for cleanup on failure), with their final sizes.
    written: Vec<String>,
    finished: bool,
    /// The catalog entry (at version 0) of the array this write creates, inserted by
    /// the commit; `None` for a write to an existing array.
    creating: Option<ArrayEntry>,
    /// How the new version is partitioned: the base's unless
    /// [`ArrayWriter::repartition`] says otherwise.
    partitioning: Partitioning,
    /// What places this write's blocks when `partitioning` is by hash.
    placement: Placement,
    /// For a part of a write made in another process ([`Store::part_writer`]): the
    /// tag in its file names (`part-{tag}-shard-{k}.arrow`).
    ///
    /// [`Store::part_writer`]: super::Store::part_writer
    part: Option<String>,
    /// Files written by parts of this write ([`ArrayWriter::adopt`]), with their sizes.
    adopted: BTreeMap<String, u64>,
    /// Whether [`ArrayWriter::part_target`] was handed out: other processes may have
    /// written parts in this write's directory.
    handed_out: bool,
}

/// What a part of a write needs to write its blocks in another process (a worker that
/// computed them): the array, the version being written and how blocks are placed. It
/// travels with the plan; [`Store::part_writer`](super::Store::part_writer) opens the
/// part's write from it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PartTarget {
    /// The array's id.
    pub array_id: u64,
    /// The array's name (for messages).
    pub name: String,
    /// The version being written.
    pub version: u64,
    /// The array's schema.
    pub schema: crate::schema::ArraySchema,
    /// How the new version's blocks are grouped into shards.
    pub partitioning: Partitioning,
    /// The format every block is stored in, if the array fixes one.
    pub block_format: Option<BlockFormat>,
    /// The placement function's name ([`Placement::id`]); a part refuses to write when
    /// its build places blocks otherwise.
    pub placement: String,
}

/// The blocks a part of a write stored, in files it finished and made durable: what
/// [`ArrayWriter::adopt`] takes into the write that commits them.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WrittenPart {
    files: Vec<(String, u64)>,
    blocks: Vec<BlockEntry>,
}

impl WrittenPart {
    /// Blocks stored.
    pub fn blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Non-zero cells in its blocks (of the first attribute).
    pub fn nnz(&self) -> u64 {
        self.blocks
            .iter()
            .map(|b| b.nnz.first().copied().unwrap_or(0))
            .sum()
    }

    /// Bytes in its files.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|(_, n)| n).sum()
    }

    /// Its files' paths.
    pub fn files(&self) -> impl Iterator<Item = &str> {
        self.files.iter().map(|(f, _)| f.as_str())
    }
}

impl std::fmt::Debug for ArrayWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArrayWriter")
            .field("array", &self.base.info().name)
            .field("version", &self.version)
            .field("mode", &self.mode)
            .field("blocks", &self.puts.len())
            .finish()
    }
}

impl ArrayWriter {
    pub(crate) fn new(
        inner: Arc<Inner>,
        base: Snapshot,
        version: u64,
        mode: WriteMode,
    ) -> Result<Self> {
        let shard_schema = format::shard_schema(&base.info().schema);
        let partitioning = base.info().partitioning;
        Ok(Self {
            inner,
            base,
            version,
            mode,
            shard_schema,
            files: BTreeMap::new(),
            puts: BTreeMap::new(),
            written: Vec::new(),
            finished: false,
            creating: None,
            partitioning,
            placement: Placement::current(),
            part: None,
            adopted: BTreeMap::new(),
            handed_out: false,
        })
    }

    /// The write of one part of the write `target` describes, made by another process
    /// over the same files: its blocks go to files of their own (`part-{tag}-...`) in
    /// the version's directory; [`ArrayWriter::finish_part`] makes them durable and
    /// says what they hold, and only the write that adopts them commits them.
    pub(crate) fn for_part(
        inner: Arc<Inner>,
        base: Snapshot,
        target: &PartTarget,
        tag: &str,
    ) -> Result<Self> {
        let mut writer = Self::new(inner, base, target.version, WriteMode::Replace)?;
        writer.partitioning = target.partitioning;
        if matches!(target.partitioning, Partitioning::Hash { .. })
            && writer.placement.id() != target.placement
        {
            return Err(StorageError::InvalidArgument(format!(
                "array '{}': the write places blocks by '{}', this build by '{}'",
                target.name,
                target.placement,
                writer.placement.id()
            )));
        }
        if tag.is_empty() || !tag.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(StorageError::InvalidArgument(format!(
                "array '{}': a part's tag must be letters, digits and '-', not {tag:?}",
                target.name
            )));
        }
        writer.part = Some(tag.to_string());
        Ok(writer)
    }

    /// The write of version 1 of the array `entry` (reserved as pending in the catalog,
    /// `base` its empty version 0), whose commit inserts the entry.
    pub(crate) fn for_new_array(
        inner: Arc<Inner>,
        base: Snapshot,
        entry: ArrayEntry,
    ) -> Result<Self> {
        let mut writer = Self::new(inner, base, 1, WriteMode::Replace)?;
        writer.creating = Some(entry);
        Ok(writer)
    }

    /// The version this write will commit as.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The committed version this write started from.
    pub fn base(&self) -> &Snapshot {
        &self.base
    }

    /// Places this write's blocks with `placement` instead of this build's
    /// ([`Placement::current`]), and records its name with the new version. Only for a
    /// hash-partitioned array, before the first block is put.
    ///
    /// Readers trust a version's hash placement only when its recorded name is the
    /// function they rely on; this is how a store placed by another function (another
    /// build's, another system's) is written, for instance to test that it is read
    /// correctly. A write in [`WriteMode::Update`] that keeps blocks of a version placed
    /// by another function records [`MIXED_PLACEMENT`].
    pub fn place_with(&mut self, placement: Placement) -> Result<()> {
        self.check_unstarted("choose a placement")?;
        if !matches!(self.partitioning, Partitioning::Hash { .. }) {
            return Err(StorageError::InvalidArgument(format!(
                "array '{}' is not hash-partitioned: its shards depend on no placement function",
                self.base.info().name
            )));
        }
        self.placement = placement;
        Ok(())
    }

    /// Stores the new version with `partitioning` instead of the array's, which it
    /// becomes at the commit (versions written before keep theirs). Only in
    /// [`WriteMode::Replace`] (every block of the new version is put by this write),
    /// before the first block is put, and not for a write that creates its array.
    pub fn repartition(&mut self, partitioning: Partitioning) -> Result<()> {
        self.check_unstarted("change the partitioning")?;
        if self.mode != WriteMode::Replace || self.creating.is_some() {
            return Err(StorageError::InvalidArgument(format!(
                "array '{}': only a write that replaces every block of an existing array \
                 can change its partitioning",
                self.base.info().name
            )));
        }
        partitioning.validate(&self.base.info().schema)?;
        self.partitioning = partitioning;
        Ok(())
    }

    /// Fails once a block has been put: blocks already written were placed by the
    /// settings in force.
    fn check_unstarted(&self, what: &str) -> Result<()> {
        if self.puts.is_empty() && self.files.is_empty() {
            Ok(())
        } else {
            Err(StorageError::InvalidArgument(format!(
                "array '{}': cannot {what} after blocks were written",
                self.base.info().name
            )))
        }
    }

    /// Puts the block of a single-attribute array at `key`.
    pub fn put_block(&mut self, key: BlockKey, block: Block) -> Result<()> {
        self.put(key, vec![block])
    }

    /// Puts the block of a single-attribute array at `key` without taking it (a block
    /// that is also kept elsewhere is written without a copy).
    pub fn put_block_ref(&mut self, key: BlockKey, block: &Block) -> Result<()> {
        self.put_refs(key, &[block])
    }

    /// Puts one block per attribute at `key`. All-zero blocks store nothing (and, in
    /// [`WriteMode::Update`], remove the key).
    pub fn put(&mut self, key: BlockKey, blocks: Vec<Block>) -> Result<()> {
        let refs: Vec<&Block> = blocks.iter().collect();
        self.put_refs(key, &refs)
    }

    fn put_refs(&mut self, key: BlockKey, blocks: &[&Block]) -> Result<()> {
        let info = self.base.info();
        info.schema.check_key(&key)?;
        let attrs = info.schema.attributes().len();
        if blocks.len() != attrs {
            return Err(StorageError::InvalidArgument(format!(
                "array '{}' has {attrs} attributes, got {} blocks for block {key}",
                info.name,
                blocks.len()
            )));
        }
        let shape = info.schema.block_shape(&key);
        if let Some(b) = blocks.iter().find(|b| b.shape() != shape) {
            return Err(StorageError::InvalidArgument(format!(
                "block {key} of array '{}' must be {}x{}, got {}x{}",
                info.name,
                shape.0,
                shape.1,
                b.rows(),
                b.cols()
            )));
        }
        if blocks.iter().all(|b| b.nnz() == 0) {
            self.puts.insert(key, None);
            return Ok(());
        }
        // The array's fixed format, if it has one; otherwise each block as it is.
        let blocks: Vec<Cow<'_, Block>> = blocks
            .iter()
            .map(|&b| match (info.block_format, b) {
                (Some(BlockFormat::Dense), Block::Sparse(s)) => {
                    Cow::Owned(Block::Dense(s.to_dense()))
                }
                (Some(BlockFormat::Csr), Block::Dense(d)) => {
                    Cow::Owned(Block::Sparse(crate::block::CsrBlock::from_dense(d)))
                }
                (_, b) => Cow::Borrowed(b),
            })
            .collect();
        let blocks: Vec<&Block> = blocks.iter().map(|b| b.as_ref()).collect();
        let shard = match self.partitioning {
            Partitioning::Hash { shards } => self.placement.shard_of(&key, shards),
            other => other.shard_of(&key, &info.schema.block_grid()),
        };
        let (batch, _) =
            format::encode_block(&self.shard_schema, info.id, self.version, &key, &blocks)?;
        let (id, version) = (info.id, self.version);
        let file = self.shard_file(shard)?;
        let path = file.path.clone();
        let counter = file.writer.get_mut();
        counter.frame = format::frame_hasher(id, version, &key);
        let offset = counter.bytes;
        file.writer.write(&batch).map_err(|e| ipc_error(&path, e))?;
        let counter = file.writer.get_mut();
        let checksum = std::mem::take(&mut counter.frame).finalize();
        let entry = BlockEntry {
            key: key.clone(),
            shard,
            file: path,
            offset,
            length: counter.bytes - offset,
            nnz: blocks.iter().map(|b| b.nnz() as u64).collect(),
            formats: blocks.iter().map(|b| b.format()).collect(),
            written_version: version,
            checksum,
        };
        self.puts.insert(key, Some(entry));
        Ok(())
    }

    /// Bytes written to shard files so far.
    pub fn bytes_written(&self) -> u64 {
        self.files.values().map(|f| f.writer.get_ref().bytes).sum()
    }

    /// Makes the blocks written so far durable, so that [`ArrayWriter::commit`] has less
    /// left to sync. A writer that produces blocks while others are still being computed
    /// calls this now and then to overlap the disk's work with the computation; it
    /// commits nothing and changes no visible state.
    pub fn sync_written(&mut self) -> Result<()> {
        let backend = self.inner.backend().clone();
        for f in self.files.values_mut() {
            f.writer.flush().map_err(|e| ipc_error(&f.path, e))?;
            backend.sync(&f.path)?;
        }
        Ok(())
    }

    /// Removes the block at `key` (Update mode) or leaves it out (Replace mode).
    pub fn delete(&mut self, key: BlockKey) -> Result<()> {
        self.base.info().schema.check_key(&key)?;
        self.puts.insert(key, None);
        Ok(())
    }

    fn shard_file(&mut self, shard: u32) -> Result<&mut ShardFile> {
        if !self.files.contains_key(&shard) {
            let vdir = self.version_dir();
            let path = match &self.part {
                None => format!("{vdir}/shard-{shard}.arrow"),
                Some(tag) => format!("{vdir}/part-{tag}-shard-{shard}.arrow"),
            };
            let out = self.inner.backend().create(&path)?;
            self.written.push(path.clone());
            let writer = FileWriter::try_new(
                CountingWriter {
                    out,
                    bytes: 0,
                    frame: crc32fast::Hasher::new(),
                },
                &self.shard_schema,
            )
            .map_err(|e| ipc_error(&path, e))?;
            self.files.insert(shard, ShardFile { path, writer });
        }
        self.files
            .get_mut(&shard)
            .ok_or_else(|| StorageError::Internal("shard file vanished".into()))
    }

    /// Makes the write a committed version and returns its number.
    ///
    /// Files are finished and fsync'd, then the manifest, then the catalog is replaced
    /// atomically. Fails with [`StorageError::WriteConflict`] if another write to the
    /// array committed since this one began; then nothing is visible.
    pub fn commit(mut self) -> Result<u64> {
        if self.part.is_some() {
            return Err(StorageError::InvalidArgument(format!(
                "array '{}': a part of a write is finished, not committed",
                self.base.info().name
            )));
        }
        let result = self.try_commit();
        if result.is_ok() {
            self.finished = true;
        }
        result
    }

    /// The directory of the version this write makes.
    fn version_dir(&self) -> String {
        format!("{}/v{}", dir(self.base.info().id), self.version)
    }

    /// Finishes every shard file and makes it durable; returns their sizes.
    fn finish_files(&mut self) -> Result<BTreeMap<String, u64>> {
        let backend = self.inner.backend().clone();
        let mut sizes = BTreeMap::new();
        for (_, f) in std::mem::take(&mut self.files) {
            let ShardFile {
                path, mut writer, ..
            } = f;
            writer.finish().map_err(|e| ipc_error(&path, e))?;
            let out = writer.into_inner().map_err(|e| ipc_error(&path, e))?;
            let len = out.bytes;
            out.out.finish()?;
            backend.sync(&path)?;
            sizes.insert(path, len);
        }
        Ok(sizes)
    }

    /// Finishes a part of a write ([`Store::part_writer`](super::Store::part_writer)):
    /// its files are made durable, and what they hold is returned for the write that
    /// commits them to [`ArrayWriter::adopt`]. The files stay until that write commits
    /// them or ends without committing (it then deletes them, as the next open of the
    /// store would).
    pub fn finish_part(mut self) -> Result<WrittenPart> {
        if self.part.is_none() {
            return Err(StorageError::InvalidArgument(format!(
                "array '{}': only a part of a write is finished; this write commits",
                self.base.info().name
            )));
        }
        let sizes = self.finish_files()?;
        if !sizes.is_empty() {
            self.inner.backend().sync(&self.version_dir())?;
        }
        self.finished = true;
        let blocks = std::mem::take(&mut self.puts)
            .into_values()
            .flatten()
            .collect();
        Ok(WrittenPart {
            files: sizes.into_iter().collect(),
            blocks,
        })
    }

    /// What a part of this write, made in another process, needs to write blocks.
    pub fn part_target(&mut self) -> PartTarget {
        self.handed_out = true;
        let info = self.base.info();
        PartTarget {
            array_id: info.id,
            name: info.name.clone(),
            version: self.version,
            schema: info.schema.clone(),
            partitioning: self.partitioning,
            block_format: info.block_format,
            placement: self.placement.id().to_string(),
        }
    }

    /// Takes the blocks a part of this write stored ([`ArrayWriter::finish_part`]) into
    /// it: they are committed with it, and deleted if it ends without a commit. A part's
    /// files must lie in this write's version directory, and a block may be put once.
    pub fn adopt(&mut self, part: WrittenPart) -> Result<()> {
        let name = self.base.info().name.clone();
        let mine = format!("{}/part-", self.version_dir());
        let sizes: BTreeMap<String, u64> = part.files.into_iter().collect();
        if let Some(f) = sizes
            .keys()
            .find(|f| !f.starts_with(&mine) || f.contains(".."))
        {
            return Err(StorageError::InvalidArgument(format!(
                "array '{name}': a part's file {f} is not a part of this write ({mine}*)"
            )));
        }
        for b in &part.blocks {
            self.base.info().schema.check_key(&b.key)?;
            if !sizes.contains_key(&b.file) || b.written_version != self.version {
                return Err(StorageError::InvalidArgument(format!(
                    "array '{name}': a part's block {} is not in its files of version {}",
                    b.key, self.version
                )));
            }
            if self.puts.contains_key(&b.key) {
                return Err(StorageError::InvalidArgument(format!(
                    "array '{name}': block {} was written twice",
                    b.key
                )));
            }
        }
        for (f, n) in sizes {
            self.written.push(f.clone());
            self.adopted.insert(f, n);
        }
        for b in part.blocks {
            self.puts.insert(b.key.clone(), Some(b));
        }
        Ok(())
    }

    /// Deletes the files in this write's version directory that `keep` does not
    /// name: parts of it that were never adopted (a worker lost while writing, an
    /// attempt that failed). The directory is this write's alone.
    fn sweep(&self, keep: &BTreeSet<&str>) {
        let Ok(files) = self
            .inner
            .backend()
            .list(&format!("{}/", self.version_dir()))
        else {
            return; // Left for the next open's garbage collection.
        };
        for f in files.iter().filter(|f| !keep.contains(f.as_str())) {
            let _ = self.inner.backend().delete(f);
        }
    }

    fn try_commit(&mut self) -> Result<u64> {
        let backend = self.inner.backend().clone();
        let info = self.base.info().clone();
        let vdir = self.version_dir();
        let mut sizes = self.finish_files()?;
        sizes.extend(std::mem::take(&mut self.adopted));

        // The new version's blocks: the base's (Update) overlaid with this write's.
        let mut blocks: BTreeMap<BlockKey, BlockEntry> = match self.mode {
            WriteMode::Update => self
                .base
                .manifest()
                .blocks
                .iter()
                .map(|b| (b.key.clone(), b.clone()))
                .collect(),
            WriteMode::Replace => BTreeMap::new(),
        };
        for (key, put) in std::mem::take(&mut self.puts) {
            match put {
                Some(e) => blocks.insert(key, e),
                None => blocks.remove(&key),
            };
        }
        // Blocks kept from the base were placed as the base was.
        let kept = blocks.values().any(|b| b.written_version != self.version);
        let placement = match self.partitioning {
            Partitioning::Hash { .. }
                if kept && self.base.info().placement.as_deref() != Some(self.placement.id()) =>
            {
                Some(MIXED_PLACEMENT.to_string())
            }
            Partitioning::Hash { .. } => Some(self.placement.id().to_string()),
            Partitioning::RowBlock { .. } | Partitioning::Grid { .. } => None,
        };
        let mut files = BTreeMap::new();
        for b in blocks.values() {
            let size = match sizes.get(&b.file) {
                Some(s) => *s,
                None => self
                    .base
                    .manifest()
                    .files
                    .get(&b.file)
                    .copied()
                    .ok_or_else(|| {
                        StorageError::Internal(format!(
                            "block {} refers to unknown file {}",
                            b.key, b.file
                        ))
                    })?,
            };
            files.insert(b.file.clone(), size);
        }
        let manifest = Manifest {
            format: super::catalog::FORMAT_VERSION,
            array_id: info.id,
            version: self.version,
            files,
            blocks: blocks.into_values().collect(),
        };
        let manifest_path = format!("{vdir}/manifest.json");
        // Recorded before the write: a torn write leaves a file to delete too.
        self.written.push(manifest_path.clone());
        backend.write(&manifest_path, &format::encode_json(&manifest)?)?;
        backend.sync(&manifest_path)?;
        // New directories must be durable entries of their parents too.
        for d in [vdir.as_str(), &dir(info.id), "arrays", ""] {
            backend.sync(d)?;
        }

        let entry = VersionEntry {
            version: self.version,
            manifest: manifest_path,
            blocks: manifest.blocks.len() as u64,
            nnz: manifest
                .blocks
                .iter()
                .map(|b| b.nnz.first().copied().unwrap_or(0))
                .sum(),
            bytes: manifest.files.values().sum(),
            created_unix_ms: now_ms(),
            placement,
            partitioning: None,
        };

        let _commit = lock(&self.inner.commit_lock);
        let mut next = lock(&self.inner.catalog).clone();
        if let Some(created) = &self.creating {
            // The entry and its first version become visible in this one replace.
            if next.arrays.contains_key(&info.name) {
                return Err(StorageError::ArrayExists(info.name.clone()));
            }
            next.pending.remove(&info.id);
            next.arrays.insert(info.name.clone(), created.clone());
        }
        let array = match next.arrays.get_mut(&info.name) {
            Some(a) if a.id == info.id => a,
            _ => return Err(StorageError::ArrayNotFound(info.name.clone())),
        };
        if array.current().map(|v| v.version) != Some(self.base.version()) {
            return Err(StorageError::WriteConflict(info.name.clone()));
        }
        if array.partitioning != self.partitioning {
            // The versions before keep the partitioning they were stored with.
            for v in &mut array.versions {
                v.partitioning.get_or_insert(array.partitioning);
            }
            array.partitioning = self.partitioning;
        }
        array.versions.push(entry);
        let excess = array
            .versions
            .len()
            .saturating_sub(array.keep_versions as usize);
        let retired: Vec<VersionEntry> = array.versions.drain(..excess).collect();
        let retained: Vec<VersionEntry> = array.versions.clone();
        let array_entry = array.clone();
        if let Err(e) = self.inner.commit_catalog(next) {
            // If the new catalog did reach the backend (the directory fsync failed after
            // the rename), the version is visible and its files must stay.
            let visible = lock(&self.inner.catalog)
                .arrays
                .get(&info.name)
                .is_some_and(|a| {
                    a.id == info.id && a.versions.iter().any(|v| v.version == self.version)
                });
            if visible {
                self.finished = true;
            }
            return Err(e);
        }
        let manifest = Arc::new(manifest);
        if self.part_files_elsewhere() {
            let manifest_path = format!("{vdir}/manifest.json");
            let mut keep: BTreeSet<&str> = manifest.files.keys().map(String::as_str).collect();
            keep.insert(&manifest_path);
            self.sweep(&keep);
        }
        lock(&self.inner.manifests).insert((info.id, self.version), manifest);
        self.inner.forget_derived(info.id);
        if self.creating.is_some() {
            let mut next_version = lock(&self.inner.next_version);
            let n = next_version.entry(info.id).or_insert(self.version + 1);
            *n = (*n).max(self.version + 1);
        }

        // Files only the retired versions used can go once no snapshot reads them.
        if !retired.is_empty() {
            let mut keep = BTreeSet::new();
            for v in &retained {
                keep.insert(v.manifest.clone());
                if let Ok(m) = self.inner.manifest(&array_entry, v) {
                    keep.extend(m.files.keys().cloned());
                } else {
                    // Cannot tell what is still used; keep everything (open() cleans up).
                    return Ok(self.version);
                }
            }
            let mut doomed = Vec::new();
            for v in &retired {
                if let Ok(m) = self.inner.manifest(&array_entry, v) {
                    doomed.extend(m.files.keys().filter(|f| !keep.contains(*f)).cloned());
                }
                if !v.manifest.is_empty() {
                    doomed.push(v.manifest.clone());
                }
            }
            doomed.sort();
            doomed.dedup();
            self.inner
                .retire(info.id, retired.iter().map(|v| v.version).collect(), doomed);
        }
        Ok(self.version)
    }
}

impl ArrayWriter {
    /// True when parts of this write may have written files this process never saw
    /// (it handed out its target or adopted parts).
    fn part_files_elsewhere(&self) -> bool {
        self.handed_out || self.written.iter().any(|f| f.contains("/part-"))
    }
}

impl Drop for ArrayWriter {
    fn drop(&mut self) {
        if !self.finished {
            self.files.clear();
            for f in &self.written {
                let _ = self.inner.backend().delete(f);
            }
            if self.part.is_none() && self.part_files_elsewhere() {
                // Parts written elsewhere and never adopted go with the write.
                self.sweep(&BTreeSet::new());
            }
            if self.creating.is_some() {
                // Best effort: a reservation left behind is cleared at the next open.
                self.inner.release_pending(self.base.info().id);
            }
        }
    }
}

fn dir(array_id: u64) -> String {
    format!("arrays/{array_id}")
}

fn ipc_error(path: &str, e: arrow_schema::ArrowError) -> StorageError {
    match e {
        arrow_schema::ArrowError::IoError(_, source) => StorageError::io(path, source),
        other => StorageError::io(path, std::io::Error::other(other)),
    }
}
