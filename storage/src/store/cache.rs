//! The store's cache of decoded blocks: a block read once (verified and decoded) is
//! served from memory on the next read of the same block, by any snapshot that lists
//! it, until the cache needs the room.
//!
//! A stored block never changes: it is named by its array id, the version that wrote
//! it and its key, so an entry is never stale. A new version that keeps a block
//! unchanged lists it with its old written version and finds it cached.
//!
//! The cache holds at most its capacity, and every byte it holds is first granted by
//! its [`CacheBudget`] (the server charges them to the memory pool its queries draw
//! from): when the budget refuses, the least recently used blocks go until it grants,
//! and a block it still refuses is not cached. Entries hold their own copies of the
//! values, never a slice of the shard file they were read from, so what is charged is
//! what is held.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use crate::block::{Block, DenseBlock};
use crate::schema::BlockKey;

/// Grants the memory the block cache holds.
pub trait CacheBudget: Send + Sync + fmt::Debug {
    /// Asks for `bytes` more; `false` when they cannot be had.
    fn try_grow(&self, bytes: usize) -> bool;
    /// Gives back `bytes`.
    fn shrink(&self, bytes: usize);
}

/// A budget that grants everything (the cache is bounded by its capacity alone).
#[derive(Debug, Default)]
pub struct Unlimited;

impl CacheBudget for Unlimited {
    fn try_grow(&self, _bytes: usize) -> bool {
        true
    }

    fn shrink(&self, _bytes: usize) {}
}

/// `(array id, written version, key)`: one stored block, for ever.
type Name = (u64, u64, BlockKey);

#[derive(Debug)]
struct Entry {
    blocks: Vec<Block>,
    bytes: usize,
    used: u64,
}

/// What the cache did, for tests and `tessera_store_cache()`-style reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Reads served from the cache.
    pub hits: u64,
    /// Reads that decoded the block.
    pub misses: u64,
    /// Bytes held.
    pub bytes: usize,
    /// Blocks held.
    pub blocks: usize,
    /// Largest number of bytes it may hold.
    pub capacity: usize,
}

/// Decoded blocks by name, least recently used first out.
#[derive(Debug)]
pub(crate) struct BlockCache {
    capacity: usize,
    budget: Arc<dyn CacheBudget>,
    entries: HashMap<Name, Entry>,
    /// Entries by last use.
    order: BTreeMap<u64, Name>,
    clock: u64,
    stats: CacheStats,
}

impl BlockCache {
    pub(crate) fn new(capacity: usize, budget: Arc<dyn CacheBudget>) -> Self {
        BlockCache {
            capacity,
            budget,
            entries: HashMap::new(),
            order: BTreeMap::new(),
            clock: 0,
            stats: CacheStats {
                capacity,
                ..CacheStats::default()
            },
        }
    }

    /// The blocks named, marked as just used.
    pub(crate) fn get(&mut self, array: u64, version: u64, key: &BlockKey) -> Option<Vec<Block>> {
        let name = (array, version, key.clone());
        self.clock += 1;
        let clock = self.clock;
        match self.entries.get_mut(&name) {
            Some(e) => {
                self.order.remove(&e.used);
                e.used = clock;
                self.order.insert(clock, name);
                self.stats.hits += 1;
                Some(e.blocks.clone())
            }
            None => {
                self.stats.misses += 1;
                None
            }
        }
    }

    /// True when blocks taking `bytes` may be kept: at most a quarter of the capacity
    /// (one scan of a huge block would empty the cache).
    pub(crate) fn takes(&self, bytes: usize) -> bool {
        bytes <= self.capacity / 4
    }

    /// Keeps `blocks` (copies of their own, see [`owned`]) under their name, making
    /// room as needed.
    pub(crate) fn put(&mut self, array: u64, version: u64, key: &BlockKey, blocks: Vec<Block>) {
        let name = (array, version, key.clone());
        if self.entries.contains_key(&name) {
            return;
        }
        let bytes: usize = blocks.iter().map(held_bytes).sum();
        if !self.takes(bytes) {
            return;
        }
        while self.stats.bytes + bytes > self.capacity {
            if !self.evict_oldest() {
                return;
            }
        }
        while !self.budget.try_grow(bytes) {
            if !self.evict_oldest() {
                return;
            }
        }
        self.clock += 1;
        self.order.insert(self.clock, name.clone());
        self.entries.insert(
            name,
            Entry {
                blocks,
                bytes,
                used: self.clock,
            },
        );
        self.stats.bytes += bytes;
        self.stats.blocks += 1;
    }

    /// Drops every block of array `array` (the array was dropped).
    pub(crate) fn forget_array(&mut self, array: u64) {
        let names: Vec<Name> = self
            .entries
            .keys()
            .filter(|n| n.0 == array)
            .cloned()
            .collect();
        for name in names {
            self.remove(&name);
        }
    }

    /// Drops least recently used blocks until `bytes` are given back (or none is
    /// left); returns the bytes given back.
    pub(crate) fn give_back(&mut self, bytes: usize) -> usize {
        let start = self.stats.bytes;
        while start - self.stats.bytes < bytes && self.evict_oldest() {}
        start - self.stats.bytes
    }

    pub(crate) fn stats(&self) -> CacheStats {
        self.stats
    }

    fn evict_oldest(&mut self) -> bool {
        let Some((_, name)) = self.order.pop_first() else {
            return false;
        };
        if let Some(e) = self.entries.remove(&name) {
            self.release(e.bytes);
        }
        true
    }

    fn remove(&mut self, name: &Name) {
        if let Some(e) = self.entries.remove(name) {
            self.order.remove(&e.used);
            self.release(e.bytes);
        }
    }

    fn release(&mut self, bytes: usize) {
        self.stats.bytes -= bytes;
        self.stats.blocks -= 1;
        self.budget.shrink(bytes);
    }
}

impl Drop for BlockCache {
    fn drop(&mut self) {
        self.budget.shrink(self.stats.bytes);
    }
}

/// Bytes a block's values take.
pub(crate) fn held_bytes(b: &Block) -> usize {
    match b {
        Block::Dense(d) => d.rows() * d.cols() * 8,
        Block::Sparse(s) => s.nnz() * 16 + (s.shape().0 + 1) * 8,
    }
}

/// `b` with values of its own: a dense block decoded in place still points into the
/// whole shard file it was read from.
pub(crate) fn owned(b: &Block) -> Block {
    match b {
        Block::Dense(d) => match DenseBlock::new(d.rows(), d.cols(), d.values().to_vec()) {
            Ok(copy) => Block::Dense(copy),
            Err(_) => b.clone(),
        },
        Block::Sparse(_) => b.clone(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A budget of `limit` bytes that records what it granted.
    #[derive(Debug)]
    pub(crate) struct Limited {
        pub(crate) limit: usize,
        pub(crate) granted: Mutex<usize>,
    }

    impl CacheBudget for Limited {
        fn try_grow(&self, bytes: usize) -> bool {
            let mut g = self.granted.lock().unwrap();
            if *g + bytes > self.limit {
                return false;
            }
            *g += bytes;
            true
        }

        fn shrink(&self, bytes: usize) {
            *self.granted.lock().unwrap() -= bytes;
        }
    }

    fn block(v: f64) -> Vec<Block> {
        vec![Block::Dense(DenseBlock::from_fn(10, 10, |_, _| v))]
    }

    fn key(k: i64) -> BlockKey {
        BlockKey::matrix(k, 0)
    }

    #[test]
    fn the_least_recently_used_block_goes_first_and_the_budget_holds() {
        // 800 bytes a block; the budget grants two, the capacity would allow four.
        let budget = Arc::new(Limited {
            limit: 1600,
            granted: Mutex::new(0),
        });
        let mut cache = BlockCache::new(4 * 800 * 4, budget.clone());
        cache.put(1, 1, &key(0), block(0.0));
        cache.put(1, 1, &key(1), block(1.0));
        assert_eq!(*budget.granted.lock().unwrap(), 1600);
        // Block 0 used again, so block 1 is the one to go.
        assert!(cache.get(1, 1, &key(0)).is_some());
        cache.put(1, 1, &key(2), block(2.0));
        assert!(cache.get(1, 1, &key(1)).is_none());
        let got = cache.get(1, 1, &key(2)).unwrap();
        assert_eq!(got, block(2.0));
        // Another written version is another block.
        assert!(cache.get(1, 2, &key(0)).is_none());
        assert_eq!(cache.stats().blocks, 2);
        assert_eq!(*budget.granted.lock().unwrap(), cache.stats().bytes);
        cache.forget_array(1);
        assert_eq!(cache.stats().bytes, 0);
        assert_eq!(*budget.granted.lock().unwrap(), 0);
        cache.put(1, 1, &key(0), block(0.0));
        drop(cache);
        assert_eq!(*budget.granted.lock().unwrap(), 0);
    }

    #[test]
    fn a_block_larger_than_a_quarter_of_the_capacity_is_not_kept() {
        let mut cache = BlockCache::new(3000, Arc::new(Unlimited));
        cache.put(1, 1, &key(0), block(1.0));
        assert!(cache.get(1, 1, &key(0)).is_none());
        assert_eq!(cache.stats().bytes, 0);
    }
}
