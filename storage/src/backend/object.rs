//! Files in an object store (S3, GCS, Azure, or a local directory) through the
//! `object_store` crate that DataFusion also uses.
//!
//! Objects are durable once written, so `sync` has nothing to do; `rename` is the
//! store's rename (atomic on a local filesystem, copy-then-delete on cloud stores, where
//! the copied object still appears whole at once, which is what the commit needs).

use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{MultipartUpload, ObjectStore, ObjectStoreExt, PutPayload};

use super::{Backend, BackendWriter};
use crate::error::{Result, StorageError};

/// Size of each multipart upload part: a shard file streams out in parts of this size.
const PART_SIZE: usize = 8 << 20;

/// A backend over any [`ObjectStore`].
#[derive(Debug)]
pub struct ObjectStoreBackend {
    store: Arc<dyn ObjectStore>,
    /// The store's futures run here, never on the caller's (possibly tokio) thread.
    runtime: Arc<tokio::runtime::Runtime>,
}

impl ObjectStoreBackend {
    /// Wraps `store`, with a private one-thread runtime for its I/O.
    pub fn new(store: Arc<dyn ObjectStore>) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("tessera-object-store")
            .enable_all()
            .build()
            .map_err(|e| StorageError::io("object store runtime", e))?;
        Ok(Self {
            store,
            runtime: Arc::new(runtime),
        })
    }

    /// A backend over a local directory through `object_store`'s `LocalFileSystem`.
    pub fn local(dir: &std::path::Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| StorageError::io(dir.display(), e))?;
        let fs = object_store::local::LocalFileSystem::new_with_prefix(dir)
            .map_err(|e| object_error(&dir.display().to_string(), e))?;
        Self::new(Arc::new(fs))
    }

    fn run<T: Send + 'static>(&self, fut: impl Future<Output = T> + Send + 'static) -> Result<T> {
        // Spawned, then awaited with a plain executor: safe from inside another runtime.
        futures::executor::block_on(self.runtime.spawn(fut))
            .map_err(|e| StorageError::Internal(format!("object store task failed: {e}")))
    }
}

fn object_error(path: &str, e: object_store::Error) -> StorageError {
    let kind = match e {
        object_store::Error::NotFound { .. } => std::io::ErrorKind::NotFound,
        _ => std::io::ErrorKind::Other,
    };
    StorageError::io(path, std::io::Error::new(kind, e))
}

struct ObjectWriter {
    path: String,
    location: ObjectPath,
    store: Arc<dyn ObjectStore>,
    runtime: Arc<tokio::runtime::Runtime>,
    buf: Vec<u8>,
    upload: Option<Box<dyn MultipartUpload>>,
}

impl ObjectWriter {
    fn send_part(&mut self) -> std::io::Result<()> {
        let to_io = |e: object_store::Error| std::io::Error::other(e);
        if self.upload.is_none() {
            let (store, loc) = (self.store.clone(), self.location.clone());
            let up = futures::executor::block_on(
                self.runtime
                    .spawn(async move { store.put_multipart(&loc).await }),
            )
            .map_err(std::io::Error::other)?
            .map_err(to_io)?;
            self.upload = Some(up);
        }
        let part = PutPayload::from(std::mem::take(&mut self.buf));
        if let Some(up) = self.upload.as_mut() {
            let fut = up.put_part(part);
            futures::executor::block_on(self.runtime.spawn(fut))
                .map_err(std::io::Error::other)?
                .map_err(to_io)?;
        }
        Ok(())
    }
}

impl std::io::Write for ObjectWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= PART_SIZE {
            self.send_part()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl BackendWriter for ObjectWriter {
    fn finish(mut self: Box<Self>) -> Result<()> {
        let path = self.path.clone();
        match self.upload.take() {
            None => {
                let (store, loc) = (self.store.clone(), self.location.clone());
                let payload = PutPayload::from(std::mem::take(&mut self.buf));
                futures::executor::block_on(
                    self.runtime
                        .spawn(async move { store.put(&loc, payload).await }),
                )
                .map_err(|e| StorageError::Internal(e.to_string()))?
                .map_err(|e| object_error(&path, e))?;
            }
            Some(up) => {
                self.upload = Some(up);
                if !self.buf.is_empty() {
                    self.send_part().map_err(|e| StorageError::io(&path, e))?;
                }
                if let Some(mut up) = self.upload.take() {
                    futures::executor::block_on(
                        self.runtime.spawn(async move { up.complete().await }),
                    )
                    .map_err(|e| StorageError::Internal(e.to_string()))?
                    .map_err(|e| object_error(&path, e))?;
                }
            }
        }
        Ok(())
    }
}

impl Backend for ObjectStoreBackend {
    fn read(&self, path: &str) -> Result<Bytes> {
        let (store, loc) = (self.store.clone(), ObjectPath::from(path));
        self.run(async move { store.get(&loc).await?.bytes().await })?
            .map_err(|e| object_error(path, e))
    }

    fn create(&self, path: &str) -> Result<Box<dyn BackendWriter>> {
        Ok(Box::new(ObjectWriter {
            path: path.to_string(),
            location: ObjectPath::from(path),
            store: self.store.clone(),
            runtime: self.runtime.clone(),
            buf: Vec::new(),
            upload: None,
        }))
    }

    fn sync(&self, _path: &str) -> Result<()> {
        Ok(())
    }

    fn rename(&self, from: &str, to: &str) -> Result<()> {
        let (store, f, t) = (
            self.store.clone(),
            ObjectPath::from(from),
            ObjectPath::from(to),
        );
        self.run(async move { store.rename(&f, &t).await })?
            .map_err(|e| object_error(&format!("{from} -> {to}"), e))
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let store = self.store.clone();
        let dir = super::parent_dir(prefix);
        let dir = (!dir.is_empty()).then(|| ObjectPath::from(dir));
        let metas: Vec<object_store::ObjectMeta> = self
            .run(async move { store.list(dir.as_ref()).try_collect::<Vec<_>>().await })?
            .map_err(|e| object_error(prefix, e))?;
        let mut out: Vec<String> = metas
            .into_iter()
            .map(|m| m.location.to_string())
            .filter(|p| p.starts_with(prefix))
            .collect();
        out.sort();
        Ok(out)
    }

    fn delete(&self, path: &str) -> Result<()> {
        let (store, loc) = (self.store.clone(), ObjectPath::from(path));
        match self.run(async move { store.delete(&loc).await })? {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(object_error(path, e)),
        }
    }
}
