//! An in-memory backend that models what survives a crash.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use super::{Backend, BackendWriter, parent_dir};
use crate::error::{Result, StorageError};

#[derive(Debug, Default)]
struct Node {
    live: Bytes,
    durable: Bytes,
}

#[derive(Debug, Default)]
struct State {
    /// Directory entries as a reader sees them now.
    live: BTreeMap<String, Arc<Mutex<Node>>>,
    /// Directory entries that survive a crash.
    durable: BTreeMap<String, Arc<Mutex<Node>>>,
}

/// Files in memory. Contents become durable on `sync(file)`, directory entries
/// (creations, renames, deletions) on `sync(dir)`; [`MemoryBackend::crash`] reverts to
/// the durable state, as a power loss would.
#[derive(Debug, Clone, Default)]
pub struct MemoryBackend {
    state: Arc<Mutex<State>>,
}

impl MemoryBackend {
    /// An empty backend.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets everything that was not made durable.
    pub fn crash(&self) {
        let mut s = lock(&self.state);
        let durable = s.durable.clone();
        for node in durable.values() {
            let mut n = lock(node);
            n.live = n.durable.clone();
        }
        s.live = durable;
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave a map half-updated, so poison is moot.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct MemoryWriter {
    buf: Vec<u8>,
    node: Arc<Mutex<Node>>,
}

impl std::io::Write for MemoryWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl BackendWriter for MemoryWriter {
    fn finish(self: Box<Self>) -> Result<()> {
        lock(&self.node).live = Bytes::from(self.buf);
        Ok(())
    }
}

fn not_found(path: &str) -> StorageError {
    StorageError::io(path, std::io::Error::from(std::io::ErrorKind::NotFound))
}

impl Backend for MemoryBackend {
    fn read(&self, path: &str) -> Result<Bytes> {
        let node = self
            .state()
            .live
            .get(path)
            .cloned()
            .ok_or_else(|| not_found(path))?;
        Ok(lock(&node).live.clone())
    }

    fn create(&self, path: &str) -> Result<Box<dyn BackendWriter>> {
        let node = Arc::new(Mutex::new(Node::default()));
        self.state().live.insert(path.to_string(), node.clone());
        Ok(Box::new(MemoryWriter {
            buf: Vec::new(),
            node,
        }))
    }

    fn sync(&self, path: &str) -> Result<()> {
        let mut s = self.state();
        if let Some(node) = s.live.get(path) {
            let mut n = lock(node);
            n.durable = n.live.clone();
            return Ok(());
        }
        // A directory: its entries as they are now become the durable ones.
        let in_dir = |p: &String| parent_dir(p) == path;
        let live: Vec<(String, Arc<Mutex<Node>>)> = s
            .live
            .iter()
            .filter(|(p, _)| in_dir(p))
            .map(|(p, n)| (p.clone(), n.clone()))
            .collect();
        s.durable.retain(|p, _| !in_dir(p));
        s.durable.extend(live);
        Ok(())
    }

    fn rename(&self, from: &str, to: &str) -> Result<()> {
        let mut s = self.state();
        let node = s.live.remove(from).ok_or_else(|| not_found(from))?;
        s.live.insert(to.to_string(), node);
        Ok(())
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        Ok(self
            .state()
            .live
            .keys()
            .filter(|p| p.starts_with(prefix))
            .cloned()
            .collect())
    }

    fn delete(&self, path: &str) -> Result<()> {
        self.state().live.remove(path);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_keeps_only_what_was_synced() {
        let b = MemoryBackend::new();
        b.write("d/a", b"one").unwrap();
        b.sync("d/a").unwrap();
        b.sync("d").unwrap();
        b.write("d/a", b"two").unwrap(); // new node, entry not synced
        b.write("d/b", b"three").unwrap();
        b.sync("d/b").unwrap(); // contents durable, entry not
        b.crash();
        assert_eq!(&b.read("d/a").unwrap()[..], b"one");
        assert!(b.read("d/b").is_err());

        b.write("d/t", b"new").unwrap();
        b.sync("d/t").unwrap();
        b.rename("d/t", "d/a").unwrap();
        b.crash(); // rename not durable without a directory sync
        assert_eq!(&b.read("d/a").unwrap()[..], b"one");
        b.write("d/t", b"new").unwrap();
        b.sync("d/t").unwrap();
        b.rename("d/t", "d/a").unwrap();
        b.sync("d").unwrap();
        b.crash();
        assert_eq!(&b.read("d/a").unwrap()[..], b"new");
        assert_eq!(b.list("d/").unwrap(), vec!["d/a".to_string()]);
    }
}
