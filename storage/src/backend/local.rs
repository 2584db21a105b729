//! Files in a local directory.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::{Backend, BackendWriter};
use crate::error::{Result, StorageError};

/// A backend over a local directory, with an exclusive lock so that one process at a
/// time owns it (a reader, [`LocalBackend::open_reader`], takes no lock).
#[derive(Debug)]
pub struct LocalBackend {
    root: PathBuf,
    _lock: Option<File>,
}

impl LocalBackend {
    /// Opens (creating if needed) the directory `root` and takes its lock.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(|e| StorageError::io(root.display(), e))?;
        let lock_path = root.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| StorageError::io(lock_path.display(), e))?;
        // A lock held by a forked child between fork and exec (or by a process that is
        // just exiting) goes away on its own; only a lock held for a while is a conflict.
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(500);
        loop {
            match lock.try_lock() {
                Ok(()) => {
                    return Ok(Self {
                        root,
                        _lock: Some(lock),
                    });
                }
                Err(fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(fs::TryLockError::WouldBlock) => return Err(StorageError::Locked(root)),
                Err(fs::TryLockError::Error(e)) => {
                    return Err(StorageError::io(lock_path.display(), e));
                }
            }
        }
    }

    /// Opens the directory `root` to read what another process owns (a worker reading
    /// the coordinator's data directory): no lock is taken, and the directory may not
    /// exist yet (its owner creates it; until then every read finds nothing).
    pub fn open_reader(root: impl Into<PathBuf>) -> Result<Self> {
        Ok(Self {
            root: root.into(),
            _lock: None,
        })
    }

    /// The directory this backend stores files in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn full(&self, path: &str) -> PathBuf {
        if path.is_empty() {
            self.root.clone()
        } else {
            self.root.join(path)
        }
    }
}

struct LocalWriter {
    file: BufWriter<File>,
    path: PathBuf,
}

impl Write for LocalWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl BackendWriter for LocalWriter {
    fn finish(mut self: Box<Self>) -> Result<()> {
        self.file
            .flush()
            .map_err(|e| StorageError::io(self.path.display(), e))
    }
}

impl Backend for LocalBackend {
    fn read(&self, path: &str) -> Result<Bytes> {
        let p = self.full(path);
        fs::read(&p)
            .map(Bytes::from)
            .map_err(|e| StorageError::io(p.display(), e))
    }

    fn create(&self, path: &str) -> Result<Box<dyn BackendWriter>> {
        let p = self.full(path);
        if let Some(dir) = p.parent() {
            fs::create_dir_all(dir).map_err(|e| StorageError::io(dir.display(), e))?;
        }
        let file = File::create(&p).map_err(|e| StorageError::io(p.display(), e))?;
        Ok(Box::new(LocalWriter {
            file: BufWriter::with_capacity(1 << 20, file),
            path: p,
        }))
    }

    fn sync(&self, path: &str) -> Result<()> {
        let p = self.full(path);
        // Directories are opened read-only to fsync their entries; files likewise.
        File::open(&p)
            .and_then(|f| f.sync_all())
            .map_err(|e| StorageError::io(p.display(), e))
    }

    fn rename(&self, from: &str, to: &str) -> Result<()> {
        let (f, t) = (self.full(from), self.full(to));
        fs::rename(&f, &t)
            .map_err(|e| StorageError::io(format!("{} -> {}", f.display(), t.display()), e))
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let start = self.full(super::parent_dir(prefix));
        let mut stack = vec![start];
        while let Some(dir) = stack.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StorageError::io(dir.display(), e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| StorageError::io(dir.display(), e))?;
                let path = entry.path();
                let ty = entry
                    .file_type()
                    .map_err(|e| StorageError::io(path.display(), e))?;
                if ty.is_dir() {
                    stack.push(path);
                } else if let Ok(rel) = path.strip_prefix(&self.root) {
                    let rel = rel.to_string_lossy().replace('\\', "/");
                    if rel.starts_with(prefix) && rel != "LOCK" {
                        out.push(rel);
                    }
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn delete(&self, path: &str) -> Result<()> {
        let p = self.full(path);
        match fs::remove_file(&p) {
            Ok(()) => {
                // A version directory goes with its last file (writers never reuse one).
                let dir = super::parent_dir(path);
                if dir.starts_with("arrays/")
                    && dir.rsplit('/').next().is_some_and(|d| d.starts_with('v'))
                {
                    let _ = fs::remove_dir(self.full(dir));
                }
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StorageError::io(p.display(), e)),
        }
    }
}
