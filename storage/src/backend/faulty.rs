//! A backend that fails on request, for testing that the store stays consistent when
//! a write, an fsync or a rename fails.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use super::{Backend, BackendWriter};
use crate::error::{Result, StorageError};

/// The operation a fault is injected into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// Writing file data: the file is left torn (half its bytes), then the write fails.
    Write,
    /// `sync` of a file or directory.
    Sync,
    /// `rename`.
    Rename,
}

/// Wraps a backend and fails the `n`-th operation of one kind (counting from 1) after
/// [`FaultyBackend::arm`]; every operation before and after it goes through.
#[derive(Debug)]
pub struct FaultyBackend {
    inner: Arc<dyn Backend>,
    kind: std::sync::Mutex<Option<FaultKind>>,
    countdown: Arc<AtomicU64>,
    injected: Arc<AtomicU64>,
}

impl FaultyBackend {
    /// A pass-through wrapper around `inner`.
    pub fn new(inner: Arc<dyn Backend>) -> Self {
        Self {
            inner,
            kind: std::sync::Mutex::new(None),
            countdown: Arc::new(AtomicU64::new(0)),
            injected: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Fails the `nth` (1-based) operation of `kind` from now on.
    pub fn arm(&self, kind: FaultKind, nth: u64) {
        *self.kind.lock().unwrap_or_else(|e| e.into_inner()) = Some(kind);
        self.countdown.store(nth, Ordering::SeqCst);
    }

    /// Stops injecting faults.
    pub fn disarm(&self) {
        *self.kind.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// How many faults were injected so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::SeqCst)
    }

    /// True when this operation is the one to fail.
    fn trips(&self, kind: FaultKind) -> bool {
        if *self.kind.lock().unwrap_or_else(|e| e.into_inner()) != Some(kind) {
            return false;
        }
        trip(&self.countdown, &self.injected)
    }
}

fn trip(countdown: &AtomicU64, injected: &AtomicU64) -> bool {
    let fire = countdown
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
            (n > 0).then(|| n - 1)
        })
        .is_ok_and(|before| before == 1);
    if fire {
        injected.fetch_add(1, Ordering::SeqCst);
    }
    fire
}

fn injected_error(what: &str, path: &str) -> StorageError {
    StorageError::io(
        path,
        std::io::Error::other(format!("injected {what} fault")),
    )
}

struct FaultyWriter {
    inner: Box<dyn BackendWriter>,
    armed: Option<(Arc<AtomicU64>, Arc<AtomicU64>)>,
}

impl std::io::Write for FaultyWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some((countdown, injected)) = &self.armed
            && trip(countdown, injected)
        {
            // A torn write: half the bytes land, then the device fails.
            self.inner.write_all(&buf[..buf.len() / 2])?;
            return Err(std::io::Error::other("injected write fault"));
        }
        self.inner.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl BackendWriter for FaultyWriter {
    fn finish(self: Box<Self>) -> Result<()> {
        self.inner.finish()
    }
}

impl Backend for FaultyBackend {
    fn read(&self, path: &str) -> Result<Bytes> {
        self.inner.read(path)
    }

    fn create(&self, path: &str) -> Result<Box<dyn BackendWriter>> {
        let armed = (*self.kind.lock().unwrap_or_else(|e| e.into_inner())
            == Some(FaultKind::Write))
        .then(|| (self.countdown.clone(), self.injected.clone()));
        Ok(Box::new(FaultyWriter {
            inner: self.inner.create(path)?,
            armed,
        }))
    }

    fn sync(&self, path: &str) -> Result<()> {
        if self.trips(FaultKind::Sync) {
            return Err(injected_error("fsync", path));
        }
        self.inner.sync(path)
    }

    fn rename(&self, from: &str, to: &str) -> Result<()> {
        if self.trips(FaultKind::Rename) {
            return Err(injected_error("rename", from));
        }
        self.inner.rename(from, to)
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        self.inner.list(prefix)
    }

    fn delete(&self, path: &str) -> Result<()> {
        self.inner.delete(path)
    }
}
