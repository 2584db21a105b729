//! The catalog (`catalog.json`: every array, its schema, partitioning and retained
//! versions) and the per-version manifests (`arrays/<id>/v<N>/manifest.json`: where
//! each block of that version is stored and its checksum).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::block::BlockFormat;
use crate::partition::{Partitioning, UNRECORDED_PLACEMENT};
use crate::schema::{ArraySchema, BlockKey};

/// Version of the catalog and manifest layout.
pub(crate) const FORMAT_VERSION: u32 = 1;

/// Name of the catalog file at the root of the data directory.
pub(crate) const CATALOG_FILE: &str = "catalog.json";

/// The catalog being committed, renamed over [`CATALOG_FILE`] once durable.
pub(crate) const CATALOG_TMP_FILE: &str = "catalog.json.tmp";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Catalog {
    pub format: u32,
    pub next_array_id: u64,
    /// Arrays by name.
    pub arrays: BTreeMap<String, ArrayEntry>,
    /// Ids reserved by `CREATE MATRIX ... AS` writes that have not committed: their
    /// files exist but no entry does yet. Absent in format-v1 catalogs (none pending).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub pending: BTreeSet<u64>,
}

impl Default for Catalog {
    fn default() -> Self {
        Self {
            format: FORMAT_VERSION,
            next_array_id: 1,
            arrays: BTreeMap::new(),
            pending: BTreeSet::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ArrayEntry {
    pub id: u64,
    pub name: String,
    pub schema: ArraySchema,
    pub partitioning: Partitioning,
    /// How many committed versions are kept readable.
    pub keep_versions: u32,
    /// Retained versions, oldest first; the last is current.
    pub versions: Vec<VersionEntry>,
    /// The format every block is stored in; absent (as in format-v1 catalogs): chosen
    /// per block by density.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_format: Option<BlockFormat>,
}

impl ArrayEntry {
    pub(crate) fn current(&self) -> Option<&VersionEntry> {
        self.versions.last()
    }

    pub(crate) fn dir(&self) -> String {
        format!("arrays/{}", self.id)
    }
}

/// Summary of one committed version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct VersionEntry {
    pub version: u64,
    pub manifest: String,
    pub blocks: u64,
    pub nnz: u64,
    pub bytes: u64,
    pub created_unix_ms: u64,
    /// For a hash-partitioned version, the placement function that put its blocks in
    /// their shards ([`crate::Placement`]). Absent in catalogs written before placements
    /// were recorded: read as [`UNRECORDED_PLACEMENT`] (see [`placement_of`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<String>,
    /// The version's partitioning when it is not the array's: recorded on the versions
    /// a rewrite with another partitioning leaves behind. Absent: the array's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitioning: Option<Partitioning>,
}

impl VersionEntry {
    /// The version's partitioning, given the array's.
    pub(crate) fn partitioning(&self, array: &Partitioning) -> Partitioning {
        self.partitioning.unwrap_or(*array)
    }
}

/// The placement that put a version's blocks in their shards, given the one it recorded
/// and its partitioning; `None` unless the partitioning is by hash (row-block and grid
/// layouts depend on no hash).
///
/// A hash-partitioned version that recorded none was written before placements were
/// recorded, by a build placing blocks with DataFusion 55's hash over foldhash 0.2 with
/// seed 0 (every such build did): it is [`UNRECORDED_PLACEMENT`].
pub(crate) fn placement_of(recorded: Option<&str>, partitioning: &Partitioning) -> Option<String> {
    match partitioning {
        Partitioning::Hash { .. } => Some(recorded.unwrap_or(UNRECORDED_PLACEMENT).to_string()),
        Partitioning::RowBlock { .. } | Partitioning::Grid { .. } => None,
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Manifest {
    pub format: u32,
    pub array_id: u64,
    pub version: u64,
    /// Every data file this version reads, with its exact size.
    pub files: BTreeMap<String, u64>,
    /// Blocks by key; blocks not listed are all zeros.
    pub blocks: Vec<BlockEntry>,
}

impl Manifest {
    /// The manifest of a version without blocks (version 0 of every array).
    pub(crate) fn empty(array_id: u64, version: u64) -> Self {
        Manifest {
            format: FORMAT_VERSION,
            array_id,
            version,
            files: BTreeMap::new(),
            blocks: Vec::new(),
        }
    }
}

/// Where one block lives and how to verify it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct BlockEntry {
    pub key: BlockKey,
    pub shard: u32,
    pub file: String,
    /// Byte offset of the block's IPC message in the file.
    pub offset: u64,
    /// Length of that message in bytes.
    pub length: u64,
    /// Non-zeros per attribute.
    pub nnz: Vec<u64>,
    pub formats: Vec<BlockFormat>,
    /// The version that wrote the block (a later version may reuse it unchanged).
    pub written_version: u64,
    /// [`frame_hasher`](super::format::frame_hasher) over the message bytes.
    pub checksum: u32,
}
