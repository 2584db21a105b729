//! How far the running statement of a session is: the blocks its array scans have to
//! read and have read, and the bytes of those blocks. A session keeps one
//! [`StatementProgress`] in its configuration (an extension every task context of its
//! statements carries); the server resets it when a statement starts and shows it in
//! `tessera_progress`.
//!
//! Scans add their blocks to the total when a partition starts (`BlockScanExec`:
//! the shard's blocks; `CellScanExec`: the blocks its filters kept) and count each
//! block as done once read, so `blocks_done / blocks_total` is the fraction of the
//! statement's stored input read so far.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use datafusion::execution::TaskContext;

/// Counters of one session's running statement; see the module docs.
#[derive(Debug, Default)]
pub struct StatementProgress {
    blocks_total: AtomicU64,
    blocks_done: AtomicU64,
    bytes_done: AtomicU64,
}

/// A reading of [`StatementProgress`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProgressReading {
    /// Blocks the statement's scans have started to read, in all.
    pub blocks_total: u64,
    /// Of those, blocks read.
    pub blocks_done: u64,
    /// Bytes of the blocks read (decoded size).
    pub bytes_done: u64,
}

impl StatementProgress {
    /// The progress of the statement running in `context`'s session, if it keeps one.
    pub fn of(context: &TaskContext) -> Option<Arc<StatementProgress>> {
        context
            .session_config()
            .get_extension::<StatementProgress>()
    }

    /// Zero, for a statement starting.
    pub fn reset(&self) {
        self.blocks_total.store(0, Ordering::Relaxed);
        self.blocks_done.store(0, Ordering::Relaxed);
        self.bytes_done.store(0, Ordering::Relaxed);
    }

    /// A scan will read `blocks` more blocks.
    pub fn add_total(&self, blocks: u64) {
        self.blocks_total.fetch_add(blocks, Ordering::Relaxed);
    }

    /// A scan read one block of `bytes`.
    pub fn add_done(&self, bytes: u64) {
        self.blocks_done.fetch_add(1, Ordering::Relaxed);
        self.bytes_done.fetch_add(bytes, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn read(&self) -> ProgressReading {
        ProgressReading {
            blocks_total: self.blocks_total.load(Ordering::Relaxed),
            blocks_done: self.blocks_done.load(Ordering::Relaxed),
            bytes_done: self.bytes_done.load(Ordering::Relaxed),
        }
    }
}
