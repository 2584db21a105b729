//! k-means: k-means++ seeding, then Lloyd's iterations; several runs as independent
//! parfor tasks, the one with the lowest inertia kept.

use datafusion::common::Result;
use faer::{Mat, MatRef, Par};

use super::dense::{SplitMix, mm, parameter_error};
use super::parfor::{self, ParforReport, Scheme};

/// `kmeans`'s parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KmeansParams {
    /// Clusters.
    pub k: usize,
    /// Independent runs (different seeds); the best is kept.
    pub runs: usize,
    /// Lloyd iterations per run at most.
    pub max_iter: usize,
    /// Seed of the first run; run `r` uses `seed + r`.
    pub seed: u64,
}

/// The best run's centroids (k x p) and inertia, and what the scheduler did.
pub(crate) fn kmeans(
    x: MatRef<'_, f64>,
    p: &KmeansParams,
    scheme: Option<Scheme>,
    workers: usize,
) -> Result<(Mat<f64>, f64, ParforReport)> {
    let n = x.nrows();
    if p.k == 0 || p.k > n {
        return Err(parameter_error(format!(
            "kmeans: k must be from 1 to the number of rows of x ({n}), got {}",
            p.k
        )));
    }
    let workers = workers.clamp(1, p.runs.max(1));
    let scheme = scheme.unwrap_or_else(|| Scheme::auto(p.runs, workers));
    // Runs already fill the workers; a single run may use every core in its products.
    let par = if workers > 1 { Par::Seq } else { Par::rayon(0) };
    let norms = row_norms(x);
    let (runs, report) = parfor::run(p.runs, workers, scheme, |r| {
        Ok(one_run(x, &norms, p, p.seed.wrapping_add(r as u64), par))
    })?;
    let best = runs
        .into_iter()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .ok_or_else(|| parameter_error("kmeans: runs must be at least 1"))?;
    Ok((best.0, best.1, report))
}

fn row_norms(x: MatRef<'_, f64>) -> Vec<f64> {
    let mut out = vec![0.0; x.nrows()];
    for j in 0..x.ncols() {
        for (i, v) in x.col(j).iter().enumerate() {
            out[i] += v * v;
        }
    }
    out
}

/// For each row of `x`, its nearest centroid and the squared distance to it.
pub(crate) fn assign(
    x: MatRef<'_, f64>,
    norms: &[f64],
    c: MatRef<'_, f64>,
    par: Par,
) -> (Vec<usize>, Vec<f64>) {
    let g = mm(x, c.transpose(), par);
    let cn = row_norms(c);
    let mut label = vec![0usize; x.nrows()];
    let mut dist = vec![f64::INFINITY; x.nrows()];
    for k in 0..c.nrows() {
        for i in 0..x.nrows() {
            let d = (norms[i] - 2.0 * g[(i, k)] + cn[k]).max(0.0);
            if d < dist[i] {
                dist[i] = d;
                label[i] = k;
            }
        }
    }
    (label, dist)
}

fn one_run(
    x: MatRef<'_, f64>,
    norms: &[f64],
    p: &KmeansParams,
    seed: u64,
    par: Par,
) -> (Mat<f64>, f64) {
    let (n, d) = (x.nrows(), x.ncols());
    let mut rng = SplitMix::new(seed);
    // k-means++: each next centre drawn with probability proportional to its squared
    // distance from the nearest centre so far.
    let mut centres = Mat::<f64>::zeros(p.k, d);
    let first = (rng.next_u64() % n as u64) as usize;
    let mut nearest = vec![f64::INFINITY; n];
    let mut chosen = first;
    for k in 0..p.k {
        for j in 0..d {
            centres[(k, j)] = x[(chosen, j)];
        }
        // Squared distances to the new centre, a column at a time (x is column-major).
        let mut dist = vec![0.0; n];
        for j in 0..d {
            let c = x[(chosen, j)];
            for (acc, v) in dist.iter_mut().zip(x.col(j).iter()) {
                *acc += (v - c) * (v - c);
            }
        }
        let mut total = 0.0;
        for (near, dist) in nearest.iter_mut().zip(&dist) {
            *near = near.min(*dist);
            total += *near;
        }
        if k + 1 == p.k {
            break;
        }
        chosen = if total > 0.0 {
            let mut target = rng.uniform() * total;
            let mut pick = n - 1;
            for (i, near) in nearest.iter().enumerate() {
                target -= near;
                if target < 0.0 {
                    pick = i;
                    break;
                }
            }
            pick
        } else {
            (rng.next_u64() % n as u64) as usize
        };
    }
    let mut labels = vec![usize::MAX; n];
    let mut inertia = f64::INFINITY;
    for iter in 0..=p.max_iter.max(1) {
        let (next, dist) = assign(x, norms, centres.as_ref(), par);
        inertia = dist.iter().sum();
        // The last pass only measures the final centres.
        if next == labels || iter == p.max_iter.max(1) {
            break;
        }
        labels = next;
        // New centres: the means of their rows; an empty cluster takes the row farthest
        // from its centre.
        let mut sums = Mat::<f64>::zeros(p.k, d);
        let mut counts = vec![0usize; p.k];
        for &l in &labels {
            counts[l] += 1;
        }
        for j in 0..d {
            for (&l, v) in labels.iter().zip(x.col(j).iter()) {
                sums[(l, j)] += v;
            }
        }
        // Rows farthest from their centres first, for clusters left empty.
        let mut far: Vec<usize> = Vec::new();
        if counts.contains(&0) {
            far = (0..n).collect();
            far.sort_by(|&a, &b| dist[b].total_cmp(&dist[a]));
        }
        let mut far = far.into_iter();
        for k in 0..p.k {
            if counts[k] > 0 {
                for j in 0..d {
                    centres[(k, j)] = sums[(k, j)] / counts[k] as f64;
                }
            } else if let Some(i) = far.next() {
                for j in 0..d {
                    centres[(k, j)] = x[(i, j)];
                }
            }
        }
    }
    (centres, inertia)
}
