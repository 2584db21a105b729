//! The store's cache of derived values by lineage: a value computed from stored arrays
//! (a builtin's `t(X) X`, say) kept under the expression that made it, with the array
//! versions it read written into that expression, so the next statement that needs
//! the same value over the same versions takes it instead of computing it again.
//!
//! A key names versions, so an entry is never stale; a commit or drop of an array
//! still drops every entry that read it, since no new snapshot can ask for those
//! versions again and their memory is better given back at once.
//!
//! Every byte is granted by the same [`CacheBudget`] as the block cache (the server's
//! memory pool), least recently used entries go first when it refuses, and a value
//! larger than a quarter of the capacity is not kept.

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::cache::CacheBudget;

/// A derived value, as the planner stored it.
pub type Derived = Arc<dyn Any + Send + Sync>;

/// What the lineage cache holds and did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LineageStats {
    /// Values found.
    pub hits: u64,
    /// Values asked for and not held.
    pub misses: u64,
    /// Bytes held.
    pub bytes: usize,
    /// Values held.
    pub entries: usize,
    /// Largest number of bytes it may hold.
    pub capacity: usize,
}

struct Entry {
    value: Derived,
    bytes: usize,
    /// Ids of the arrays the value was computed from.
    reads: Vec<u64>,
    used: u64,
}

/// Derived values by lineage key, least recently used first out.
pub(crate) struct LineageCache {
    capacity: usize,
    budget: Arc<dyn CacheBudget>,
    entries: HashMap<String, Entry>,
    order: BTreeMap<u64, String>,
    clock: u64,
    stats: LineageStats,
}

impl std::fmt::Debug for LineageCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LineageCache")
            .field("stats", &self.stats)
            .finish()
    }
}

impl LineageCache {
    pub(crate) fn new(capacity: usize, budget: Arc<dyn CacheBudget>) -> Self {
        LineageCache {
            capacity,
            budget,
            entries: HashMap::new(),
            order: BTreeMap::new(),
            clock: 0,
            stats: LineageStats {
                capacity,
                ..LineageStats::default()
            },
        }
    }

    /// The value under `key`, marked as just used.
    pub(crate) fn get(&mut self, key: &str) -> Option<Derived> {
        self.clock += 1;
        let clock = self.clock;
        match self.entries.get_mut(key) {
            Some(e) => {
                self.order.remove(&e.used);
                e.used = clock;
                self.order.insert(clock, key.to_string());
                self.stats.hits += 1;
                Some(Arc::clone(&e.value))
            }
            None => {
                self.stats.misses += 1;
                None
            }
        }
    }

    /// Keeps `value` (holding `bytes`, computed from the arrays `reads`) under `key`,
    /// making room as needed; returns whether it was kept.
    pub(crate) fn put(
        &mut self,
        key: String,
        value: Derived,
        bytes: usize,
        reads: Vec<u64>,
    ) -> bool {
        if self.entries.contains_key(&key) {
            return true;
        }
        if bytes > self.capacity / 4 {
            return false;
        }
        while self.stats.bytes + bytes > self.capacity {
            if !self.evict_oldest() {
                return false;
            }
        }
        while !self.budget.try_grow(bytes) {
            if !self.evict_oldest() {
                return false;
            }
        }
        self.clock += 1;
        self.order.insert(self.clock, key.clone());
        self.entries.insert(
            key,
            Entry {
                value,
                bytes,
                reads,
                used: self.clock,
            },
        );
        self.stats.bytes += bytes;
        self.stats.entries += 1;
        true
    }

    /// Drops every value computed from array `array` (it changed or was dropped).
    pub(crate) fn forget_array(&mut self, array: u64) {
        let keys: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| e.reads.contains(&array))
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            if let Some(e) = self.entries.remove(&key) {
                self.order.remove(&e.used);
                self.release(e.bytes);
            }
        }
    }

    /// Drops least recently used values until `bytes` are given back (or none is
    /// left); returns the bytes given back.
    pub(crate) fn give_back(&mut self, bytes: usize) -> usize {
        let start = self.stats.bytes;
        while start - self.stats.bytes < bytes && self.evict_oldest() {}
        start - self.stats.bytes
    }

    pub(crate) fn stats(&self) -> LineageStats {
        self.stats
    }

    fn evict_oldest(&mut self) -> bool {
        let Some((_, key)) = self.order.pop_first() else {
            return false;
        };
        if let Some(e) = self.entries.remove(&key) {
            self.release(e.bytes);
        }
        true
    }

    fn release(&mut self, bytes: usize) {
        self.stats.bytes -= bytes;
        self.stats.entries -= 1;
        self.budget.shrink(bytes);
    }
}

impl Drop for LineageCache {
    fn drop(&mut self) {
        self.budget.shrink(self.stats.bytes);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::super::cache::tests::Limited;
    use super::*;

    fn value(v: f64) -> Derived {
        Arc::new(v)
    }

    fn read(cache: &mut LineageCache, key: &str) -> Option<f64> {
        cache.get(key).map(|v| *v.downcast_ref::<f64>().unwrap())
    }

    #[test]
    fn keeps_values_by_key_and_forgets_what_an_array_change_makes_unreachable() {
        let budget = Arc::new(Limited {
            limit: 1 << 20,
            granted: Mutex::new(0),
        });
        let mut cache = LineageCache::new(4000, budget.clone());
        assert!(cache.put("tsmm(a1@1)".into(), value(1.0), 800, vec![1]));
        assert!(cache.put("mm(a1@1, a2@3)".into(), value(2.0), 800, vec![1, 2]));
        assert!(cache.put("t(a2@3)".into(), value(3.0), 800, vec![2]));
        assert_eq!(read(&mut cache, "tsmm(a1@1)"), Some(1.0));
        assert_eq!(read(&mut cache, "tsmm(a1@2)"), None);
        assert_eq!(*budget.granted.lock().unwrap(), 2400);

        // Array 1 changed: both values that read it go, the other stays.
        cache.forget_array(1);
        assert_eq!(read(&mut cache, "tsmm(a1@1)"), None);
        assert_eq!(read(&mut cache, "mm(a1@1, a2@3)"), None);
        assert_eq!(read(&mut cache, "t(a2@3)"), Some(3.0));
        let s = cache.stats();
        assert_eq!((s.entries, s.bytes, s.hits, s.misses), (1, 800, 2, 3));
        assert_eq!(*budget.granted.lock().unwrap(), 800);
        drop(cache);
        assert_eq!(*budget.granted.lock().unwrap(), 0);
    }

    #[test]
    fn makes_room_oldest_first_and_refuses_what_is_too_big() {
        let budget = Arc::new(Limited {
            limit: 1500,
            granted: Mutex::new(0),
        });
        let mut cache = LineageCache::new(4000, budget.clone());
        // Over a quarter of the capacity: not kept.
        assert!(!cache.put("big".into(), value(0.0), 1001, vec![]));
        assert!(cache.put("a".into(), value(1.0), 700, vec![]));
        assert!(cache.put("b".into(), value(2.0), 700, vec![]));
        // "a" used last, so "b" is the oldest when the budget refuses "c".
        assert_eq!(read(&mut cache, "a"), Some(1.0));
        assert!(cache.put("c".into(), value(3.0), 700, vec![]));
        assert_eq!(read(&mut cache, "b"), None);
        assert_eq!(read(&mut cache, "a"), Some(1.0));
        assert_eq!(cache.give_back(1), 700);
        assert_eq!(cache.stats().entries, 1);
        assert_eq!(*budget.granted.lock().unwrap(), 700);
    }
}
