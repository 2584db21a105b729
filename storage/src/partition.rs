//! How an array's blocks are grouped into shards, the unit of I/O, parallelism and
//! placement. Two arrays with equal [`Partitioning`] over the same block grid are
//! co-partitioned: shard `k` of one meets shard `k` of the other without a shuffle.

use std::hash::BuildHasher;

use serde::{Deserialize, Serialize};

use crate::error::{Result, StorageError};
use crate::schema::{ArraySchema, BlockKey};

/// Largest shard count an array may have.
pub const MAX_SHARDS: u32 = 4096;

/// A partitioning scheme and its shard count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "scheme", rename_all = "snake_case")]
pub enum Partitioning {
    /// `shard = hash(block key) mod shards`, with the hash DataFusion's hash
    /// repartitioning computes over the block-key columns `(bi, bj, ...)`, so a
    /// `RepartitionExec` on those columns with `shards` partitions sends every block to
    /// the partition that stores it. Which hash placed a version's blocks is recorded
    /// with it ([`Placement`], [`HASH_PLACEMENT`]).
    Hash {
        /// Number of shards.
        shards: u32,
    },
    /// Contiguous ranges of block rows (the first dimension): shard `k` holds block
    /// rows `[k * n / shards, (k + 1) * n / shards)` of the `n` block rows.
    RowBlock {
        /// Number of shards.
        shards: u32,
    },
    /// A `row_shards x col_shards` grid of contiguous block-row and block-column ranges
    /// (the first two dimensions); shard = `row_part * col_shards + col_part`.
    Grid {
        /// Shards along the first dimension.
        row_shards: u32,
        /// Shards along the second dimension.
        col_shards: u32,
    },
}

impl Default for Partitioning {
    /// Hash partitioning with one shard per CPU, the DataFusion default target
    /// partition count, so stored shards line up with relational repartitions.
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Partitioning::Hash {
            shards: cpus.clamp(1, MAX_SHARDS as usize) as u32,
        }
    }
}

impl Partitioning {
    /// Total number of shards.
    pub fn shard_count(&self) -> u32 {
        match *self {
            Partitioning::Hash { shards } | Partitioning::RowBlock { shards } => shards,
            Partitioning::Grid {
                row_shards,
                col_shards,
            } => row_shards.saturating_mul(col_shards),
        }
    }

    /// Checks the scheme against an array schema.
    pub fn validate(&self, schema: &ArraySchema) -> Result<()> {
        let count = self.shard_count();
        if count == 0 || count > MAX_SHARDS {
            return Err(StorageError::InvalidSchema(format!(
                "shard count must be between 1 and {MAX_SHARDS}, got {count}"
            )));
        }
        if matches!(self, Partitioning::Grid { .. }) && schema.dimensions().len() < 2 {
            return Err(StorageError::InvalidSchema(
                "grid partitioning needs at least two dimensions".into(),
            ));
        }
        Ok(())
    }

    /// The shard that stores block `key` of an array with block grid `grid`
    /// (blocks per dimension, [`ArraySchema::block_grid`]), when written by this build
    /// (hash partitioning by [`Placement::current`]).
    pub fn shard_of(&self, key: &BlockKey, grid: &[u64]) -> u32 {
        let range = |b: i64, n: u64, parts: u32| -> u32 {
            let n = n.max(1);
            ((b.max(0) as u64).min(n - 1) * parts as u64 / n) as u32
        };
        match *self {
            Partitioning::Hash { shards } => {
                (datafusion_hash(&key.0) % shards.max(1) as u64) as u32
            }
            Partitioning::RowBlock { shards } => range(key.0[0], grid[0], shards),
            Partitioning::Grid {
                row_shards,
                col_shards,
            } => {
                range(key.0[0], grid[0], row_shards) * col_shards
                    + range(key.0[1], grid[1], col_shards)
            }
        }
    }

    /// True when two arrays stored with `self` and `other` over block grids `a` and `b`
    /// place equal block keys in equal shards.
    pub fn co_partitioned(&self, a: &[u64], other: &Partitioning, b: &[u64]) -> bool {
        if self != other {
            return false;
        }
        match self {
            Partitioning::Hash { .. } => true,
            Partitioning::RowBlock { .. } => a.first() == b.first(),
            Partitioning::Grid { .. } => a.get(..2) == b.get(..2),
        }
    }
}

/// The placement function this build's writes use for hash-partitioned arrays: block
/// `(b0, b1, ...)` goes to shard [`datafusion_hash`]`(b0, b1, ...) mod shards`, the hash
/// DataFusion 55's `RepartitionExec` computes (its `create_hashes` with foldhash 0.2's
/// fast hasher and the fixed seed 0). The name is recorded with every version of a
/// hash-partitioned array; a build that hashes differently must use a new name.
pub const HASH_PLACEMENT: &str = "df55-foldhash-0.2-seed0";

/// What a hash-partitioned version recorded without a placement means: catalogs written
/// before placements were recorded have none, and every build that wrote them placed
/// blocks with DataFusion 55's hash over foldhash 0.2 with seed 0. This stays that
/// name even when [`HASH_PLACEMENT`] changes.
pub const UNRECORDED_PLACEMENT: &str = "df55-foldhash-0.2-seed0";

/// Recorded for a version whose blocks were placed by more than one function (a write
/// that kept blocks of a version placed by another function than its own). It names no
/// function, so such a version is never taken to be hash-partitioned; rewriting it
/// whole (the planner's `ALTER ARRAY ... REPARTITION`) places it by one again.
pub const MIXED_PLACEMENT: &str = "mixed";

/// A function that puts the blocks of a hash-partitioned array in shards, with the name
/// recorded for it in the catalog.
///
/// Writes use [`Placement::current`] unless told otherwise
/// ([`ArrayWriter::place_with`](crate::ArrayWriter::place_with)): a store written by
/// another build, or by another system, may place blocks differently, and readers
/// compare the recorded name with the function they rely on.
///
/// ```
/// use tessera_storage::{BlockKey, HASH_PLACEMENT, Partitioning, Placement};
/// let current = Placement::current();
/// assert_eq!(current.id(), HASH_PLACEMENT);
/// let key = BlockKey::matrix(3, 4);
/// let hash = Partitioning::Hash { shards: 7 };
/// assert_eq!(current.shard_of(&key, 7), hash.shard_of(&key, &[10, 10]));
/// ```
#[derive(Debug, Clone)]
pub struct Placement {
    id: String,
    hash: fn(&[i64]) -> u64,
}

impl Placement {
    /// This build's placement: [`HASH_PLACEMENT`], by [`datafusion_hash`].
    pub fn current() -> Self {
        Placement {
            id: HASH_PLACEMENT.to_string(),
            hash: datafusion_hash,
        }
    }

    /// A placement by `hash` (block key to 64-bit hash; the shard is the hash mod the
    /// shard count), recorded as `id`. The caller vouches that `id` names exactly this
    /// function. An empty id and [`MIXED_PLACEMENT`] are refused.
    pub fn new(id: impl Into<String>, hash: fn(&[i64]) -> u64) -> Result<Self> {
        let id = id.into();
        if id.trim().is_empty() || id == MIXED_PLACEMENT {
            return Err(StorageError::InvalidArgument(format!(
                "'{id}' cannot name a placement function"
            )));
        }
        Ok(Placement { id, hash })
    }

    /// The name recorded for this placement.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The 64-bit hash of block `key`, before it is reduced to a shard.
    pub fn hash_of(&self, key: &BlockKey) -> u64 {
        (self.hash)(&key.0)
    }

    /// The shard, of `shards`, that this placement puts block `key` in.
    pub fn shard_of(&self, key: &BlockKey, shards: u32) -> u32 {
        (self.hash_of(key) % shards.max(1) as u64) as u32
    }
}

/// The hash DataFusion 55's `create_hashes` gives a row of non-null `Int64` columns
/// with its repartition state (foldhash-fast, fixed seed 0): the first column is hashed
/// alone, each later column is hashed by a hasher seeded with the hash so far.
pub fn datafusion_hash(columns: &[i64]) -> u64 {
    const STATE: foldhash::fast::FixedState = foldhash::fast::FixedState::with_seed(0);
    let mut values = columns.iter();
    let Some(first) = values.next() else { return 0 };
    let mut hash = STATE.hash_one(first);
    for v in values {
        hash = foldhash::fast::SeedableRandomState::with_seed(
            hash,
            foldhash::SharedSeed::global_fixed(),
        )
        .hash_one(v);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_block_and_grid_are_contiguous_ranges() {
        let p = Partitioning::RowBlock { shards: 3 };
        let shards: Vec<u32> = (0..7)
            .map(|b| p.shard_of(&BlockKey::matrix(b, 0), &[7, 1]))
            .collect();
        assert_eq!(shards, vec![0, 0, 0, 1, 1, 2, 2]);
        let g = Partitioning::Grid {
            row_shards: 2,
            col_shards: 2,
        };
        assert_eq!(g.shard_of(&BlockKey::matrix(0, 0), &[4, 4]), 0);
        assert_eq!(g.shard_of(&BlockKey::matrix(1, 3), &[4, 4]), 1);
        assert_eq!(g.shard_of(&BlockKey::matrix(3, 0), &[4, 4]), 2);
        assert_eq!(g.shard_of(&BlockKey::matrix(2, 2), &[4, 4]), 3);
    }

    #[test]
    fn hash_spreads_blocks_over_all_shards() {
        let p = Partitioning::Hash { shards: 4 };
        let mut counts = [0; 4];
        for bi in 0..20 {
            for bj in 0..20 {
                counts[p.shard_of(&BlockKey::matrix(bi, bj), &[20, 20]) as usize] += 1;
            }
        }
        assert!(counts.iter().all(|&c| c > 60), "{counts:?}");
    }

    #[test]
    fn placements_are_named_and_place_by_their_hash() {
        let current = Placement::current();
        assert_eq!(current.id(), HASH_PLACEMENT);
        let p = Partitioning::Hash { shards: 5 };
        for bi in -3..10 {
            for bj in [0, 1, 7, i64::MAX, i64::MIN] {
                let key = BlockKey::matrix(bi, bj);
                assert_eq!(current.shard_of(&key, 5), p.shard_of(&key, &[10, 10]));
            }
        }
        let by_row = Placement::new("test-by-row", |k| k[0] as u64).unwrap();
        assert_eq!(by_row.id(), "test-by-row");
        assert_eq!(by_row.shard_of(&BlockKey::matrix(7, 3), 4), 3);
        assert!(Placement::new("", |_| 0).is_err());
        assert!(Placement::new(MIXED_PLACEMENT, |_| 0).is_err());
    }

    #[test]
    fn co_partitioning_needs_equal_scheme_and_grid() {
        let r = Partitioning::RowBlock { shards: 2 };
        assert!(r.co_partitioned(&[4, 1], &r, &[4, 9]));
        assert!(!r.co_partitioned(&[4, 1], &r, &[5, 1]));
        assert!(!r.co_partitioned(&[4, 1], &Partitioning::Hash { shards: 2 }, &[4, 1]));
    }
}
