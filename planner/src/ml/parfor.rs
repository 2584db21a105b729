//! Independent tasks on `k` worker threads, grouped into chunks by one of SystemDS's
//! parfor task-partitioning schemes (Boehm et al., PVLDB 2014):
//!
//! | scheme | chunks |
//! |---|---|
//! | naive | one task each |
//! | static | `k` chunks of `ceil(n / k)` |
//! | fixed | chunks of `m` tasks |
//! | factoring | rounds of `k` chunks of `ceil(R / (2k))`, `R` the tasks left before the round |
//!
//! Workers pull the next chunk when they finish one, so uneven tasks balance; results
//! come back in task order whatever the order they ran in.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use datafusion::common::{DataFusionError, Result, plan_err};

/// How tasks are grouped into the chunks workers pull.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// One task per chunk.
    Naive,
    /// `k` chunks of `ceil(n / k)` tasks.
    Static,
    /// Chunks of this many tasks.
    Fixed(usize),
    /// Chunks of `ceil(R / (2k))` in rounds of `k`, `R` the tasks not yet handed out.
    Factoring,
}

impl Scheme {
    /// The setting's value (`auto` is `None`): `naive`, `static`, `fixed` (chunks of
    /// `fixed_size`) or `factoring`.
    pub fn parse(value: &str, fixed_size: usize) -> Result<Option<Scheme>> {
        Ok(Some(match value.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => return Ok(None),
            "naive" => Scheme::Naive,
            "static" => Scheme::Static,
            "fixed" => Scheme::Fixed(fixed_size.max(1)),
            "factoring" => Scheme::Factoring,
            other => {
                return plan_err!(
                    "unknown parfor.scheme '{other}'; use auto, naive, static, fixed or factoring"
                );
            }
        }))
    }

    /// Its name, as EXPLAIN shows it.
    pub fn name(self) -> String {
        match self {
            Scheme::Naive => "naive".into(),
            Scheme::Static => "static".into(),
            Scheme::Fixed(m) => format!("fixed({m})"),
            Scheme::Factoring => "factoring".into(),
        }
    }

    /// The chunk sizes for `n` tasks on `k` workers, in the order they are handed out.
    pub fn chunks(self, n: usize, k: usize) -> Vec<usize> {
        let k = k.max(1);
        let mut out = Vec::new();
        let mut left = n;
        match self {
            Scheme::Naive => out.resize(n, 1),
            Scheme::Static | Scheme::Fixed(_) => {
                let size = match self {
                    Scheme::Fixed(m) => m.max(1),
                    _ => n.div_ceil(k).max(1),
                };
                while left > 0 {
                    let c = size.min(left);
                    out.push(c);
                    left -= c;
                }
            }
            Scheme::Factoring => {
                while left > 0 {
                    let size = left.div_ceil(2 * k);
                    for _ in 0..k {
                        if left == 0 {
                            break;
                        }
                        let c = size.min(left);
                        out.push(c);
                        left -= c;
                    }
                }
            }
        }
        out
    }
}

/// What the optimizer knows of a run's tasks before they run.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TaskCost {
    /// Floating-point operations of one task (the largest, when they differ).
    pub flops: Option<f64>,
    /// Bytes one task holds while it runs.
    pub memory: Option<u64>,
    /// Every task does the same work (one call, only numbers differ), so equal chunks
    /// balance; otherwise chunks shrink as the run goes (factoring).
    pub uniform: bool,
}

/// Below this many operations in all, tasks run one after another on one thread:
/// handing them to threads would cost more than it saves.
const TINY_RUN_FLOPS: f64 = 2e6;

/// Operations at which a task's own kernels use extra threads with full benefit; below,
/// the benefit of each extra thread falls in proportion (synchronisation and split
/// costs dominate small kernels).
const PARALLEL_TASK_FLOPS: f64 = 1e9;

/// How a run's tasks are scheduled: the optimizer's choice or the forced settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RunPlan {
    /// How tasks are grouped into chunks.
    pub scheme: Scheme,
    /// Concurrent workers pulling chunks.
    pub workers: usize,
    /// Threads each task's kernels use.
    pub threads: usize,
    /// Why `workers` is what it is, for EXPLAIN.
    pub why: &'static str,
}

impl RunPlan {
    /// The optimizer's plan for `n` tasks of cost `cost` on `cores` threads, `free`
    /// bytes of the memory pool left (when it has a limit). `scheme` and `workers`
    /// force what they give.
    ///
    /// - workers: at most one per task and, with a task's memory known, as many as
    ///   the free memory holds at once (each task's memory is charged to the pool
    ///   while it runs); with a task's operations known, the count that finishes the
    ///   run soonest, a task given the cores left over (`cores / workers` threads),
    ///   its kernels' speed-up from extra threads falling for small tasks; a run too
    ///   small to spread runs on one thread;
    /// - scheme: naive when every worker gets one task, static when tasks are alike,
    ///   else factoring (chunks shrinking so the last ones balance uneven tasks).
    pub fn choose(
        n: usize,
        cost: TaskCost,
        cores: usize,
        free: Option<u64>,
        scheme: Option<Scheme>,
        workers: Option<usize>,
    ) -> RunPlan {
        let cores = cores.max(1);
        let tasks = n.max(1);
        let (workers, why) = match workers {
            Some(w) => (w.clamp(1, tasks), "set"),
            None => {
                let mut cap = cores.min(tasks);
                let mut why = if cap < cores { "tasks" } else { "cores" };
                if let (Some(m), Some(free)) = (cost.memory, free)
                    && m > 0
                {
                    let fit = usize::try_from(free / m).unwrap_or(usize::MAX).max(1);
                    if fit < cap {
                        cap = fit;
                        why = "memory";
                    }
                }
                match cost.flops {
                    Some(f) if f * n as f64 <= TINY_RUN_FLOPS => (1, "tiny"),
                    Some(f) => {
                        let time = |k: usize| {
                            let threads = (cores / k).max(1) as f64;
                            let gain = (f / PARALLEL_TASK_FLOPS).min(1.0);
                            let speedup = 1.0 + (threads - 1.0) * gain * 0.9;
                            tasks.div_ceil(k) as f64 * f / speedup
                        };
                        // Fewest rounds first; among equal times, more workers.
                        let best = (1..=cap)
                            .rev()
                            .min_by(|a, b| time(*a).total_cmp(&time(*b)))
                            .unwrap_or(cap);
                        (best, if best < cap { "cost" } else { why })
                    }
                    None => (cap, why),
                }
            }
        };
        let scheme = scheme.unwrap_or(if n <= workers {
            Scheme::Naive
        } else if cost.uniform {
            Scheme::Static
        } else {
            Scheme::Factoring
        });
        RunPlan {
            scheme,
            workers,
            // A tiny run's tasks gain nothing from threads of their own either.
            threads: if why == "tiny" {
                1
            } else {
                (cores / workers).max(1)
            },
            why,
        }
    }

    /// The parallelism a task's kernels get.
    pub fn par(&self) -> faer::Par {
        threads(self.threads)
    }

    /// As EXPLAIN shows it, for `n` tasks.
    pub fn describe(&self, n: usize) -> String {
        let chunks: Vec<String> = self
            .scheme
            .chunks(n, self.workers)
            .iter()
            .map(usize::to_string)
            .collect();
        format!(
            "scheme={} workers={} ({}) threads/task={} tasks={n} chunks=[{}]",
            self.scheme.name(),
            self.workers,
            self.why,
            self.threads,
            chunks.join(",")
        )
    }
}

/// Kernels on `n` threads (sequential for one).
pub fn threads(n: usize) -> faer::Par {
    if n > 1 {
        faer::Par::rayon(n)
    } else {
        faer::Par::Seq
    }
}

/// What a parfor run did, for EXPLAIN ANALYZE.
#[derive(Debug, Clone, Default)]
pub struct ParforReport {
    /// Tasks run by each worker.
    pub tasks: Vec<usize>,
    /// Time each worker spent in tasks.
    pub busy: Vec<Duration>,
    /// Chunk sizes handed out.
    pub chunks: Vec<usize>,
    /// The plan it ran, as [`RunPlan::describe`] gives it.
    pub plan: String,
}

impl ParforReport {
    fn new(workers: usize, chunks: Vec<usize>, plan: String) -> Self {
        Self {
            tasks: vec![0; workers],
            busy: vec![Duration::ZERO; workers],
            chunks,
            plan,
        }
    }
}

/// Runs `task(0..n)` on `plan.workers` threads, chunked by `plan.scheme`, and returns the results
/// in task order. The first failing task (lowest index among those that ran) fails the
/// run, named by its index; workers stop pulling chunks once one has failed.
pub fn run<T: Send>(
    n: usize,
    plan: &RunPlan,
    task: impl Fn(usize) -> Result<T> + Sync,
) -> Result<(Vec<T>, ParforReport)> {
    let (workers, sizes, chunks) = chunked(n, plan.workers, plan.scheme);
    let results: Mutex<Vec<(usize, Result<T>)>> = Mutex::new(Vec::with_capacity(n));
    let mut report = ParforReport::new(workers, sizes, plan.describe(n));
    let work = || {
        let mut done = 0;
        let mut busy = Duration::ZERO;
        while let Some(tasks) = chunks.pull() {
            let t0 = Instant::now();
            let mut local = Vec::with_capacity(tasks.len());
            for t in tasks {
                let r = task(t);
                let bad = r.is_err();
                local.push((t, r));
                done += 1;
                if bad {
                    chunks.fail();
                    break;
                }
            }
            busy += t0.elapsed();
            if let Ok(mut all) = results.lock() {
                all.extend(local);
            }
        }
        (done, busy)
    };
    if workers == 1 {
        let (done, busy) = work();
        report.tasks[0] = done;
        report.busy[0] = busy;
    } else {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..workers).map(|_| s.spawn(work)).collect();
            for (w, h) in handles.into_iter().enumerate() {
                if let Ok((done, busy)) = h.join() {
                    report.tasks[w] = done;
                    report.busy[w] = busy;
                }
            }
        });
    }
    let all = results
        .into_inner()
        .map_err(|_| DataFusionError::Internal("a parfor worker panicked".into()))?;
    Ok((in_order(n, all)?, report))
}

/// Runs the futures `task(0..n)` on `plan.workers` concurrent pullers, chunked by its scheme,
/// as [`run`] does with threads: for tasks that wait on other operators (a subquery
/// each) and hand their computing to the CPU pool. Results come back in task order;
/// the first failing task fails the run, named by its index.
pub async fn run_async<T, F, Fut>(
    n: usize,
    plan: &RunPlan,
    task: F,
) -> Result<(Vec<T>, ParforReport)>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let (workers, sizes, chunks) = chunked(n, plan.workers, plan.scheme);
    let work = || async {
        let mut local = Vec::new();
        let mut busy = Duration::ZERO;
        'pull: while let Some(tasks) = chunks.pull() {
            let t0 = Instant::now();
            for t in tasks {
                let r = task(t).await;
                let bad = r.is_err();
                local.push((t, r));
                if bad {
                    chunks.fail();
                    busy += t0.elapsed();
                    break 'pull;
                }
            }
            busy += t0.elapsed();
        }
        (local, busy)
    };
    let done = futures::future::join_all((0..workers).map(|_| work())).await;
    let mut report = ParforReport::new(workers, sizes, plan.describe(n));
    let mut all = Vec::with_capacity(n);
    for (w, (local, busy)) in done.into_iter().enumerate() {
        report.tasks[w] = local.len();
        report.busy[w] = busy;
        all.extend(local);
    }
    Ok((in_order(n, all)?, report))
}

/// The workers used for `n` tasks (at most one per task), the chunk sizes, and the
/// chunks for the workers to pull.
fn chunked(n: usize, workers: usize, scheme: Scheme) -> (usize, Vec<usize>, Chunks) {
    let workers = workers.clamp(1, n.max(1));
    let sizes = scheme.chunks(n, workers);
    let mut starts = Vec::with_capacity(sizes.len());
    let mut at = 0;
    for c in &sizes {
        starts.push(at..at + c);
        at += c;
    }
    let chunks = Chunks {
        starts,
        next: AtomicUsize::new(0),
        failed: AtomicBool::new(false),
    };
    (workers, sizes, chunks)
}

/// The chunks of a run, handed out in order to the workers that pull them.
struct Chunks {
    starts: Vec<std::ops::Range<usize>>,
    next: AtomicUsize,
    failed: AtomicBool,
}

impl Chunks {
    /// The next chunk's tasks, or `None` when all are handed out or a task has failed.
    fn pull(&self) -> Option<std::ops::Range<usize>> {
        if self.failed.load(Ordering::Relaxed) {
            return None;
        }
        let c = self.next.fetch_add(1, Ordering::Relaxed);
        self.starts.get(c).cloned()
    }

    /// Stops the handing out: a task has failed.
    fn fail(&self) {
        self.failed.store(true, Ordering::Relaxed);
    }
}

/// The results `all` (tagged by task) in task order, or the lowest failing task's
/// error, named by its index.
fn in_order<T>(n: usize, mut all: Vec<(usize, Result<T>)>) -> Result<Vec<T>> {
    all.sort_by_key(|(t, _)| *t);
    if let Some(pos) = all.iter().position(|(_, r)| r.is_err()) {
        let (t, r) = all.swap_remove(pos);
        return match r {
            Err(e) => Err(e.context(format!("task {t} of {n} failed"))),
            Ok(_) => Err(DataFusionError::Internal("parfor: lost an error".into())),
        };
    }
    if all.len() != n {
        return Err(DataFusionError::Internal(format!(
            "parfor: {} of {n} tasks returned (a worker panicked)",
            all.len()
        )));
    }
    Ok(all.into_iter().filter_map(|(_, r)| r.ok()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factoring_matches_the_paper() {
        assert_eq!(
            Scheme::Factoring.chunks(101, 4),
            vec![13, 13, 13, 13, 7, 7, 7, 7, 3, 3, 3, 3, 2, 2, 2, 2, 1]
        );
    }

    #[test]
    fn the_other_schemes() {
        assert_eq!(Scheme::Naive.chunks(5, 2), vec![1; 5]);
        assert_eq!(Scheme::Static.chunks(101, 4), vec![26, 26, 26, 23]);
        assert_eq!(Scheme::Static.chunks(3, 4), vec![1, 1, 1]);
        assert_eq!(Scheme::Fixed(10).chunks(25, 4), vec![10, 10, 5]);
        assert_eq!(Scheme::Factoring.chunks(0, 4), Vec::<usize>::new());
        assert_eq!(Scheme::Factoring.chunks(3, 1), vec![2, 1]);
        for scheme in [
            Scheme::Naive,
            Scheme::Static,
            Scheme::Fixed(7),
            Scheme::Factoring,
        ] {
            for n in [0, 1, 2, 9, 100, 1001] {
                for k in [1, 2, 3, 8] {
                    let c = scheme.chunks(n, k);
                    assert_eq!(c.iter().sum::<usize>(), n, "{scheme:?} n={n} k={k}");
                    assert!(c.iter().all(|&x| x > 0));
                }
            }
        }
        assert_eq!(
            Scheme::parse("Factoring", 3).unwrap(),
            Some(Scheme::Factoring)
        );
        assert_eq!(Scheme::parse("fixed", 3).unwrap(), Some(Scheme::Fixed(3)));
        assert_eq!(Scheme::parse("auto", 3).unwrap(), None);
        assert!(Scheme::parse("guided", 3).is_err());
    }

    fn plan(n: usize, cost: TaskCost, cores: usize, free: Option<u64>) -> RunPlan {
        RunPlan::choose(n, cost, cores, free, None, None)
    }

    #[test]
    fn the_optimizer_fits_workers_to_tasks_memory_and_cost() {
        let alike = TaskCost {
            uniform: true,
            ..TaskCost::default()
        };
        // No more tasks than cores: one task per worker, the cores left to the tasks.
        let p = plan(3, TaskCost::default(), 8, None);
        assert_eq!(
            (p.scheme, p.workers, p.threads, p.why),
            (Scheme::Naive, 3, 2, "tasks")
        );
        // Alike tasks in equal chunks, uneven ones by factoring.
        let p = plan(30, alike, 4, None);
        assert_eq!((p.scheme, p.workers, p.threads), (Scheme::Static, 4, 1));
        assert_eq!(
            plan(30, TaskCost::default(), 4, None).scheme,
            Scheme::Factoring
        );
        // As many workers as the free memory holds tasks.
        let big = TaskCost {
            memory: Some(100),
            ..alike
        };
        let p = plan(8, big, 4, Some(250));
        assert_eq!((p.workers, p.why), (2, "memory"));
        assert_eq!(plan(8, big, 4, Some(50)).workers, 1);
        assert_eq!(plan(8, big, 4, None).workers, 4);
        // A run too small to spread stays on one thread.
        let tiny = TaskCost {
            flops: Some(1e3),
            ..alike
        };
        let p = plan(10, tiny, 4, None);
        assert_eq!((p.workers, p.threads, p.why), (1, 1, "tiny"));
        // Three large tasks on two cores: one after another with both cores each (1.5
        // task-times at best) beats two at once then one alone (2 task-times).
        let large = TaskCost {
            flops: Some(1e10),
            ..alike
        };
        let p = plan(3, large, 2, None);
        assert_eq!((p.workers, p.threads, p.why), (1, 2, "cost"));
        // Two of them: side by side.
        assert_eq!(plan(2, large, 2, None).workers, 2);
        // Small tasks gain little from threads of their own: all side by side.
        let small = TaskCost {
            flops: Some(1e6),
            ..alike
        };
        assert_eq!(plan(3, small, 2, None).workers, 2);
        // Forced settings win.
        let p = RunPlan::choose(30, large, 2, Some(1), Some(Scheme::Fixed(4)), Some(3));
        assert_eq!((p.scheme, p.workers, p.why), (Scheme::Fixed(4), 3, "set"));
        assert_eq!(
            p.describe(10),
            "scheme=fixed(4) workers=3 (set) threads/task=1 tasks=10 chunks=[4,4,2]"
        );
    }

    fn forced(scheme: Scheme, workers: usize) -> RunPlan {
        RunPlan {
            scheme,
            workers,
            threads: 1,
            why: "set",
        }
    }

    #[test]
    fn results_come_back_in_task_order_on_every_scheme() {
        for scheme in [
            Scheme::Naive,
            Scheme::Static,
            Scheme::Fixed(3),
            Scheme::Factoring,
        ] {
            let (out, report) = run(101, &forced(scheme, 4), |t| {
                // Uneven tasks: some take longer.
                if t % 17 == 0 {
                    std::thread::sleep(Duration::from_millis(2));
                }
                Ok(t * t)
            })
            .unwrap();
            assert_eq!(out, (0..101).map(|t| t * t).collect::<Vec<_>>());
            assert_eq!(report.tasks.iter().sum::<usize>(), 101);
            assert_eq!(report.chunks, scheme.chunks(101, 4));
        }
    }

    #[test]
    fn a_failing_task_fails_the_run_and_is_named() {
        let err = run(20, &forced(Scheme::Factoring, 3), |t| {
            if t == 7 {
                datafusion::common::exec_err!("boom")
            } else {
                Ok(t)
            }
        })
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("task 7 of 20") && msg.contains("boom"),
            "{msg}"
        );
    }
}
