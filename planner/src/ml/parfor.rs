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

    /// The scheme the optimizer picks for `n` tasks on `k` workers: one task per
    /// worker when there are no more tasks than workers, else factoring.
    pub fn auto(n: usize, k: usize) -> Scheme {
        if n <= k {
            Scheme::Naive
        } else {
            Scheme::Factoring
        }
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

/// What a parfor run did, for EXPLAIN ANALYZE.
#[derive(Debug, Clone, Default)]
pub struct ParforReport {
    /// Tasks run by each worker.
    pub tasks: Vec<usize>,
    /// Time each worker spent in tasks.
    pub busy: Vec<Duration>,
    /// Chunk sizes handed out.
    pub chunks: Vec<usize>,
}

/// Runs `task(0..n)` on `workers` threads, chunked by `scheme`, and returns the results
/// in task order. The first failing task (lowest index among those that ran) fails the
/// run, named by its index; workers stop pulling chunks once one has failed.
pub fn run<T: Send>(
    n: usize,
    workers: usize,
    scheme: Scheme,
    task: impl Fn(usize) -> Result<T> + Sync,
) -> Result<(Vec<T>, ParforReport)> {
    let (workers, chunks, starts) = chunked(n, workers, scheme);
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let results: Mutex<Vec<(usize, Result<T>)>> = Mutex::new(Vec::with_capacity(n));
    let mut report = ParforReport {
        tasks: vec![0; workers],
        busy: vec![Duration::ZERO; workers],
        chunks,
    };
    let work = || {
        let mut done = 0;
        let mut busy = Duration::ZERO;
        loop {
            if failed.load(Ordering::Relaxed) {
                break;
            }
            let c = next.fetch_add(1, Ordering::Relaxed);
            let Some(&(start, len)) = starts.get(c) else {
                break;
            };
            let t0 = Instant::now();
            let mut local = Vec::with_capacity(len);
            for t in start..start + len {
                let r = task(t);
                let bad = r.is_err();
                local.push((t, r));
                done += 1;
                if bad {
                    failed.store(true, Ordering::Relaxed);
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

/// Runs the futures `task(0..n)` on `workers` concurrent pullers, chunked by `scheme`,
/// as [`run`] does with threads: for tasks that wait on other operators (a subquery
/// each) and hand their computing to the CPU pool. Results come back in task order;
/// the first failing task fails the run, named by its index.
pub async fn run_async<T, F, Fut>(
    n: usize,
    workers: usize,
    scheme: Scheme,
    task: F,
) -> Result<(Vec<T>, ParforReport)>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let (workers, chunks, starts) = chunked(n, workers, scheme);
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let work = || async {
        let mut local = Vec::new();
        let mut busy = Duration::ZERO;
        'pull: loop {
            if failed.load(Ordering::Relaxed) {
                break;
            }
            let c = next.fetch_add(1, Ordering::Relaxed);
            let Some(&(start, len)) = starts.get(c) else {
                break;
            };
            let t0 = Instant::now();
            for t in start..start + len {
                let r = task(t).await;
                let bad = r.is_err();
                local.push((t, r));
                if bad {
                    failed.store(true, Ordering::Relaxed);
                    busy += t0.elapsed();
                    break 'pull;
                }
            }
            busy += t0.elapsed();
        }
        (local, busy)
    };
    let done = futures::future::join_all((0..workers).map(|_| work())).await;
    let mut report = ParforReport {
        tasks: vec![0; workers],
        busy: vec![Duration::ZERO; workers],
        chunks,
    };
    let mut all = Vec::with_capacity(n);
    for (w, (local, busy)) in done.into_iter().enumerate() {
        report.tasks[w] = local.len();
        report.busy[w] = busy;
        all.extend(local);
    }
    Ok((in_order(n, all)?, report))
}

/// The workers used for `n` tasks (at most one per task), the chunk sizes, and each
/// chunk's `(first task, length)`.
fn chunked(n: usize, workers: usize, scheme: Scheme) -> (usize, Vec<usize>, Vec<(usize, usize)>) {
    let workers = workers.clamp(1, n.max(1));
    let chunks = scheme.chunks(n, workers);
    let mut starts = Vec::with_capacity(chunks.len());
    let mut at = 0;
    for c in &chunks {
        starts.push((at, *c));
        at += c;
    }
    (workers, chunks, starts)
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
        assert_eq!(Scheme::auto(3, 4), Scheme::Naive);
        assert_eq!(Scheme::auto(30, 4), Scheme::Factoring);
    }

    #[test]
    fn results_come_back_in_task_order_on_every_scheme() {
        for scheme in [
            Scheme::Naive,
            Scheme::Static,
            Scheme::Fixed(3),
            Scheme::Factoring,
        ] {
            let (out, report) = run(101, 4, scheme, |t| {
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
        let err = run(20, 3, Scheme::Factoring, |t| {
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
