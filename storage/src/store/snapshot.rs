//! Reading a committed version: every block is verified against its manifest entry
//! before it is returned, and damage is reported naming the array, block and file.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::catalog::{BlockEntry, Manifest};
use super::format::{self, Expected};
use super::{ArrayInfo, Inner, lock};
use crate::block::{Block, BlockFormat};
use crate::error::{Result, StorageError};
use crate::schema::BlockKey;

/// Keeps a version's files from being deleted while a snapshot reads them.
#[derive(Debug)]
pub(crate) struct Pin {
    inner: Arc<Inner>,
    key: (u64, u64),
}

impl Pin {
    pub(crate) fn new(inner: Arc<Inner>, array_id: u64, version: u64) -> Self {
        *lock(&inner.pins).entry((array_id, version)).or_default() += 1;
        Pin {
            inner,
            key: (array_id, version),
        }
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        {
            let mut pins = lock(&self.inner.pins);
            if let Some(n) = pins.get_mut(&self.key) {
                *n -= 1;
                if *n == 0 {
                    pins.remove(&self.key);
                }
            }
        }
        self.inner.delete_unpinned();
    }
}

/// What the manifest records about a stored block.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockMeta {
    /// Block coordinates.
    pub key: BlockKey,
    /// Shard holding it.
    pub shard: u32,
    /// Non-zeros per attribute.
    pub nnz: Vec<u64>,
    /// Storage format per attribute.
    pub formats: Vec<BlockFormat>,
}

/// Shard files read by one snapshot are kept up to this many bytes, so scanning block
/// rows one at a time does not re-read every file per row.
const FILE_CACHE_BYTES: usize = 256 << 20;

/// A read view of one committed version of an array.
#[derive(Debug)]
pub struct Snapshot {
    inner: Arc<Inner>,
    info: ArrayInfo,
    version: u64,
    manifest: Arc<Manifest>,
    index: Arc<HashMap<BlockKey, usize>>,
    cache: Mutex<HashMap<String, Bytes>>,
    _pin: Pin,
}

impl Snapshot {
    pub(crate) fn new(
        inner: Arc<Inner>,
        info: ArrayInfo,
        version: u64,
        manifest: Arc<Manifest>,
        pin: Pin,
    ) -> Self {
        let index = manifest
            .blocks
            .iter()
            .enumerate()
            .map(|(n, b)| (b.key.clone(), n))
            .collect();
        Snapshot {
            inner,
            info,
            version,
            manifest,
            index: Arc::new(index),
            cache: Mutex::new(HashMap::new()),
            _pin: pin,
        }
    }

    /// The same version, read through a file cache of its own, empty: what one
    /// execution of a plan reads through, so the shard files it kept are dropped when
    /// the execution ends, not when the plan (which a plan cache may keep) is. It pins
    /// the version like the snapshot does.
    pub fn reader(&self) -> Snapshot {
        let (id, version) = self._pin.key;
        Snapshot {
            inner: Arc::clone(&self.inner),
            info: self.info.clone(),
            version: self.version,
            manifest: Arc::clone(&self.manifest),
            index: Arc::clone(&self.index),
            cache: Mutex::new(HashMap::new()),
            _pin: Pin::new(Arc::clone(&self.inner), id, version),
        }
    }

    /// Bytes of shard files this snapshot keeps from its reads.
    pub fn cached_file_bytes(&self) -> usize {
        lock(&self.cache).values().map(Bytes::len).sum()
    }

    /// The array as the catalog described it when the snapshot was taken.
    pub fn info(&self) -> &ArrayInfo {
        &self.info
    }

    /// The version this snapshot reads.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The store this snapshot was taken from (for its caches).
    pub fn store(&self) -> super::Store {
        super::Store {
            inner: Arc::clone(&self.inner),
        }
    }

    /// The backend of the store the snapshot reads (identifies the store: caches key
    /// on it).
    pub fn backend(&self) -> &Arc<dyn crate::backend::Backend> {
        &self.inner.backend
    }

    /// Stored blocks (blocks not listed are all zeros), sorted by key.
    pub fn blocks(&self) -> Vec<BlockMeta> {
        let mut v: Vec<BlockMeta> = self
            .manifest
            .blocks
            .iter()
            .map(|b| BlockMeta {
                key: b.key.clone(),
                shard: b.shard,
                nnz: b.nnz.clone(),
                formats: b.formats.clone(),
            })
            .collect();
        v.sort_by(|a, b| a.key.cmp(&b.key));
        v
    }

    /// Non-zero cells of the first attribute.
    pub fn nnz(&self) -> u64 {
        self.manifest
            .blocks
            .iter()
            .map(|b| b.nnz.first().copied().unwrap_or(0))
            .sum()
    }

    pub(crate) fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub(crate) fn entry(&self, key: &BlockKey) -> Option<&BlockEntry> {
        self.index.get(key).map(|&n| &self.manifest.blocks[n])
    }

    /// Every attribute's block at `key`, or `None` where nothing is stored (all zeros).
    pub fn read(&self, key: &BlockKey) -> Result<Option<Vec<Block>>> {
        match self.entry(key) {
            None => Ok(None),
            Some(e) => Ok(self.read_entries(&[e])?.pop().map(|(_, b)| b)),
        }
    }

    /// The first attribute's block at `key`.
    pub fn read_block(&self, key: &BlockKey) -> Result<Option<Block>> {
        Ok(self
            .read(key)?
            .and_then(|mut v| (!v.is_empty()).then(|| v.swap_remove(0))))
    }

    /// Every stored block whose key satisfies `keep`, sorted by key; each file is read
    /// once.
    pub fn read_where(
        &self,
        keep: impl Fn(&BlockKey) -> bool,
    ) -> Result<Vec<(BlockKey, Vec<Block>)>> {
        let entries: Vec<&BlockEntry> = self
            .manifest
            .blocks
            .iter()
            .filter(|b| keep(&b.key))
            .collect();
        let mut out = self.read_entries(&entries)?;
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// How many blocks shard `shard` stores.
    pub fn shard_blocks(&self, shard: u32) -> u64 {
        self.shard_blocks_where(shard, |_| true)
    }

    /// How many blocks shard `shard` stores whose key satisfies `keep`.
    pub fn shard_blocks_where(&self, shard: u32, keep: impl Fn(&BlockKey) -> bool) -> u64 {
        self.manifest
            .blocks
            .iter()
            .filter(|b| b.shard == shard && keep(&b.key))
            .count() as u64
    }

    /// Every block of shard `shard`, sorted by key.
    pub fn read_shard(&self, shard: u32) -> Result<Vec<(BlockKey, Vec<Block>)>> {
        self.read_shard_where(shard, |_| true)
    }

    /// The blocks of shard `shard` whose key satisfies `keep`, sorted by key; the
    /// others are not read.
    pub fn read_shard_where(
        &self,
        shard: u32,
        keep: impl Fn(&BlockKey) -> bool,
    ) -> Result<Vec<(BlockKey, Vec<Block>)>> {
        let entries: Vec<&BlockEntry> = self
            .manifest
            .blocks
            .iter()
            .filter(|b| b.shard == shard && keep(&b.key))
            .collect();
        let mut out = self.read_entries(&entries)?;
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    fn read_entries(&self, entries: &[&BlockEntry]) -> Result<Vec<(BlockKey, Vec<Block>)>> {
        let id = self.info.id;
        let mut out = Vec::with_capacity(entries.len());
        let mut by_file: BTreeMap<&str, Vec<&BlockEntry>> = BTreeMap::new();
        {
            let mut cache = lock(&self.inner.blocks);
            for e in entries {
                match cache
                    .as_mut()
                    .and_then(|c| c.get(id, e.written_version, &e.key))
                {
                    Some(blocks) => out.push((e.key.clone(), blocks)),
                    None => by_file.entry(e.file.as_str()).or_default().push(e),
                }
            }
        }
        for (file, blocks) in by_file {
            let corrupt = |key: &BlockKey, message: String| StorageError::Corruption {
                array: self.info.name.clone(),
                block: key.to_string(),
                file: file.to_string(),
                message,
            };
            let bytes = self.file_bytes(file, &blocks[0].key)?;
            let schema = format::shard_schema(&self.info.schema);
            for e in blocks {
                let decoded = check_block(&self.info, &schema, e, &bytes)
                    .map_err(|message| corrupt(&e.key, message))?;
                let bytes: usize = decoded.iter().map(super::cache::held_bytes).sum();
                let keep = lock(&self.inner.blocks)
                    .as_ref()
                    .is_some_and(|c| c.takes(bytes));
                if keep {
                    // Copied outside the lock: other readers need not wait for it.
                    let copies = decoded.iter().map(super::cache::owned).collect();
                    if let Some(cache) = lock(&self.inner.blocks).as_mut() {
                        cache.put(id, e.written_version, &e.key, copies);
                    }
                }
                out.push((e.key.clone(), decoded));
            }
        }
        Ok(out)
    }

    fn file_bytes(&self, file: &str, first: &BlockKey) -> Result<Bytes> {
        if let Some(b) = lock(&self.cache).get(file) {
            return Ok(b.clone());
        }
        let corrupt = |message: String| StorageError::Corruption {
            array: self.info.name.clone(),
            block: first.to_string(),
            file: file.to_string(),
            message,
        };
        let bytes = match self.inner.backend().read(file) {
            Ok(b) => b,
            Err(StorageError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Err(corrupt("the file is missing".into()));
            }
            Err(e) => return Err(e),
        };
        let expected = self.manifest.files.get(file).copied();
        if expected != Some(bytes.len() as u64) {
            return Err(corrupt(format!(
                "file has {} bytes, the manifest says {}",
                bytes.len(),
                expected.map_or("nothing".to_string(), |n| n.to_string())
            )));
        }
        // The file must stay the Arrow IPC file docs/format.md promises; its ends are
        // already in memory, so checking them costs next to nothing.
        let schema = format::shard_schema(&self.info.schema);
        if let Err(message) = format::check_shard_file(&bytes, &schema) {
            return Err(corrupt(format!("not a valid Arrow IPC file: {message}")));
        }
        let mut cache = lock(&self.cache);
        if cache.values().map(Bytes::len).sum::<usize>() + bytes.len() > FILE_CACHE_BYTES {
            cache.clear();
        }
        cache.insert(file.to_string(), bytes.clone());
        Ok(bytes)
    }
}

/// Verifies one block's bytes in its shard file `bytes` against its manifest entry
/// (the frame checksum before anything is decoded, then the stored key, version and
/// content checksum) and decodes it; the error says what failed.
pub(crate) fn check_block(
    info: &ArrayInfo,
    schema: &arrow_schema::SchemaRef,
    e: &BlockEntry,
    bytes: &Bytes,
) -> std::result::Result<Vec<Block>, String> {
    let end = e
        .offset
        .checked_add(e.length)
        .filter(|&end| end <= bytes.len() as u64);
    let Some(end) = end else {
        return Err(format!(
            "block bytes {}..+{} lie outside the file",
            e.offset, e.length
        ));
    };
    let frame = bytes.slice(e.offset as usize..end as usize);
    let mut h = format::frame_hasher(info.id, e.written_version, &e.key);
    h.update(&frame);
    let actual = h.finalize();
    if actual != e.checksum {
        return Err(format!(
            "checksum mismatch: manifest {:08x}, computed {actual:08x} (the bytes are damaged \
             or belong to another block, array or version)",
            e.checksum
        ));
    }
    let want = Expected {
        array_id: info.id,
        version: e.written_version,
        key: &e.key,
        shape: info.schema.block_shape(&e.key),
    };
    // Verified bytes are what this process's writer produced; a decoder panic would
    // still be a bug, reported as corruption rather than a crash.
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        format::decode_frame(schema, frame).and_then(|batch| format::decode_block(&batch, &want))
    }));
    match decoded {
        Ok(result) => result,
        Err(_) => Err("the block could not be decoded".into()),
    }
}
