//! The one CPU thread pool every parallel kernel runs in, and the rule for when a kernel
//! parallelizes at all.

use std::sync::OnceLock;

/// Work below this many floating-point operations runs on the calling thread.
///
/// 2^24 flops is about a third of a millisecond on one core: below that, splitting the
/// work costs more than it saves, and the planner usually has other blocks to run in
/// parallel anyway.
pub const PARALLEL_MIN_FLOPS: f64 = (1u64 << 24) as f64;

/// The global CPU pool: one thread per available core, named `tessera-cpu-N`.
///
/// Kernels that parallelize run inside `cpu_pool().install(..)`, never on tokio threads or
/// rayon's global pool. Callers that parallelize across blocks should do it in this pool
/// too (and call the `_seq` kernel variants), so a query never uses more threads than cores.
pub fn cpu_pool() -> &'static rayon::ThreadPool {
    static POOL: OnceLock<rayon::ThreadPool> = OnceLock::new();
    POOL.get_or_init(|| {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let built = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("tessera-cpu-{i}"))
            .build();
        match built {
            Ok(pool) => pool,
            Err(e) => {
                // Spawning threads failed (resource limits): run kernels on one thread rather
                // than taking the server down.
                tracing::warn!("cannot start the {threads}-thread CPU pool ({e}); using 1 thread");
                single_thread_pool()
            }
        }
    })
}

/// A one-thread pool; `num_threads(1)` asks for a single spawned thread.
#[allow(
    clippy::expect_used,
    reason = "only reached when the OS refused a full pool; nothing sensible remains"
)]
fn single_thread_pool() -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .thread_name(|i| format!("tessera-cpu-{i}"))
        .build()
        .expect("cannot spawn even one CPU thread")
}

/// Whether a kernel call may split its work across the CPU pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Parallelism {
    /// On the calling thread.
    Seq,
    /// Across the CPU pool.
    Pool,
}

impl Parallelism {
    /// `Pool` when the work is at least [`PARALLEL_MIN_FLOPS`] and the pool has more than
    /// one thread, else `Seq`.
    pub(crate) fn auto(flops: f64) -> Self {
        if flops >= PARALLEL_MIN_FLOPS && cpu_pool().current_num_threads() > 1 {
            Parallelism::Pool
        } else {
            Parallelism::Seq
        }
    }

    /// Runs `f` where this parallelism says: inside the CPU pool or on this thread.
    pub(crate) fn run<R: Send>(self, f: impl FnOnce() -> R + Send) -> R {
        match self {
            Parallelism::Seq => f(),
            Parallelism::Pool => cpu_pool().install(f),
        }
    }

    /// The matching `faer` setting (call inside [`Parallelism::run`]).
    pub(crate) fn faer(self) -> faer::Par {
        match self {
            Parallelism::Seq => faer::Par::Seq,
            Parallelism::Pool => faer::Par::rayon(0),
        }
    }
}
