//! Where the store's files live, behind one small trait.
//!
//! Paths are relative, `/`-separated (`arrays/3/v2/shard-0-0.arrow`). A file written
//! through [`Backend::create`] is durable only after [`Backend::sync`] on it; a rename
//! is durable after `sync` on its directory. The store's commit protocol relies on
//! exactly these two guarantees, and the [`MemoryBackend`]'s
//! [`crash`](MemoryBackend::crash) throws away whatever was not made durable, so tests
//! can check that the protocol asks for them.

mod faulty;
mod local;
mod memory;
mod object;

pub use faulty::{FaultKind, FaultyBackend};
pub use local::LocalBackend;
pub use memory::MemoryBackend;
pub use object::ObjectStoreBackend;

use bytes::Bytes;

use crate::error::Result;

/// A file being written; its bytes become visible at [`BackendWriter::finish`].
pub trait BackendWriter: std::io::Write + Send {
    /// Flushes and closes the file. It is not durable until [`Backend::sync`].
    fn finish(self: Box<Self>) -> Result<()>;
}

/// Storage for the store's files.
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// The whole file.
    fn read(&self, path: &str) -> Result<Bytes>;

    /// Creates (or truncates) a file for writing, creating parent directories.
    fn create(&self, path: &str) -> Result<Box<dyn BackendWriter>>;

    /// Makes a file's contents, or a directory's entries, durable.
    fn sync(&self, path: &str) -> Result<()>;

    /// Atomically replaces `to` with `from`.
    fn rename(&self, from: &str, to: &str) -> Result<()>;

    /// Every file whose path starts with `prefix`, sorted.
    fn list(&self, prefix: &str) -> Result<Vec<String>>;

    /// Removes a file; removing a missing file is not an error.
    fn delete(&self, path: &str) -> Result<()>;

    /// Writes a whole file (create, write, finish).
    fn write(&self, path: &str, data: &[u8]) -> Result<()> {
        let mut w = self.create(path)?;
        std::io::Write::write_all(&mut w, data).map_err(|e| crate::StorageError::io(path, e))?;
        w.finish()
    }
}

/// The directory part of a path (`""` for the root).
pub(crate) fn parent_dir(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(d, _)| d)
}
