//! k-means: k-means++ seeding, then Lloyd's iterations; several runs as independent
//! parfor tasks, the one with the lowest inertia kept.

use datafusion::common::Result;
use faer::{Mat, MatRef, Par};

use super::dense::{SplitMix, mm, parameter_error};
use super::exec::ParforSettings;
use super::panels::RowPanels;
use super::parfor::{self, ParforReport, TaskCost};

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
    /// A run stops when its centroids move less than this in all (the sum of their
    /// squared moves), relative to the mean variance of `x`'s columns; 0 iterates
    /// until no row changes cluster (scikit-learn's `tol`).
    pub tol: f64,
}

/// The best run's centroids (k x p) and inertia, and what the scheduler did.
pub(crate) fn kmeans(
    x: &RowPanels,
    p: &KmeansParams,
    parfor: &ParforSettings,
) -> Result<(Mat<f64>, f64, ParforReport)> {
    let n = x.nrows();
    if p.k == 0 || p.k > n {
        return Err(parameter_error(format!(
            "kmeans: k must be from 1 to the number of rows of x ({n}), got {}",
            p.k
        )));
    }
    // Runs side by side share the cores; a run alone may use every core in its passes.
    let plan = parfor.plan(p.runs, run_cost(n, x.ncols(), p));
    let par = plan.par();
    let (norms, variance) = row_norms_and_variance(x, parfor::threads(parfor.cores))?;
    let tol = p.tol * variance;
    let (runs, report) = parfor::run(p.runs, &plan, |r| {
        one_run(x, &norms, p, tol, p.seed.wrapping_add(r as u64), par)
    })?;
    let best = runs
        .into_iter()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .ok_or_else(|| parameter_error("kmeans: runs must be at least 1"))?;
    Ok((best.0, best.1, report))
}

/// What one run of k-means costs the optimizer: `max_iter` Lloyd passes of `n k d`
/// multiply-adds (distances, then the update), its labels and distances held.
pub(crate) fn run_cost(n: usize, d: usize, p: &KmeansParams) -> TaskCost {
    TaskCost {
        flops: Some(p.max_iter.max(1) as f64 * 3.0 * (n * p.k * d) as f64),
        memory: Some((n * 16 + p.k * d * 16) as u64),
        uniform: true,
    }
}

/// Each row's squared norm, and the mean of the columns' variances.
pub(crate) fn row_norms_and_variance(x: &RowPanels, par: Par) -> Result<(Vec<f64>, f64)> {
    let d = x.ncols();
    let parts = x.fold_rows(
        par,
        || (Vec::new(), vec![0.0; d], vec![0.0; d]),
        |_, rows, (norms, sum, squares)| {
            for row in rows.chunks_exact(d.max(1)) {
                let mut norm = 0.0;
                for ((v, s), q) in row.iter().zip(sum.iter_mut()).zip(squares.iter_mut()) {
                    norm += v * v;
                    *s += v;
                    *q += v * v;
                }
                norms.push(norm);
            }
            Ok(())
        },
    )?;
    let mut norms = Vec::with_capacity(x.nrows());
    let (mut sum, mut squares) = (vec![0.0; d], vec![0.0; d]);
    for (part, s, q) in parts {
        norms.extend(part);
        sum.iter_mut().zip(&s).for_each(|(a, b)| *a += b);
        squares.iter_mut().zip(&q).for_each(|(a, b)| *a += b);
    }
    let n = x.nrows().max(1) as f64;
    let variance = sum
        .iter()
        .zip(&squares)
        .map(|(s, q)| (q / n - (s / n) * (s / n)).max(0.0))
        .sum::<f64>()
        / d.max(1) as f64;
    Ok((norms, variance))
}

/// One Lloyd pass: each row's nearest centroid and squared distance to it, and per
/// cluster the sum and count of its rows.
pub(crate) struct Pass {
    pub(crate) labels: Vec<u32>,
    pub(crate) dist: Vec<f64>,
    /// `k x d`, row-major.
    sums: Vec<f64>,
    counts: Vec<usize>,
}

/// Assigns every row of `x` to its nearest row of `c` (`k x d`), block row by block
/// row: `c t(x_panel)` by faer, then `|x|^2 - 2 x.c + |c|^2` per row, the sums
/// accumulated in the same read of the panel. Tasks add in row order, so a pass gives
/// the same bits every time.
pub(crate) fn assign(x: &RowPanels, norms: &[f64], c: MatRef<'_, f64>, par: Par) -> Result<Pass> {
    let (k, d) = (c.nrows(), c.ncols());
    let cn: Vec<f64> = (0..k)
        .map(|a| (0..d).map(|j| c[(a, j)] * c[(a, j)]).sum())
        .collect();
    let parts = x.fold_rows(
        par,
        || Pass {
            labels: Vec::new(),
            dist: Vec::new(),
            sums: vec![0.0; k * d],
            counts: vec![0; k],
        },
        |r0, rows, acc| {
            let n = rows.len() / d.max(1);
            let xt = MatRef::from_column_major_slice(rows, d, n);
            // One column per row of the panel: its k dot products, contiguous.
            let g = mm(c, xt, Par::Seq);
            for (r, row) in rows.chunks_exact(d.max(1)).enumerate() {
                let (mut best, mut label) = (f64::INFINITY, 0);
                for (a, cn) in cn.iter().enumerate() {
                    let dist = (norms[r0 + r] - 2.0 * g[(a, r)] + cn).max(0.0);
                    if dist < best {
                        best = dist;
                        label = a;
                    }
                }
                acc.labels.push(label as u32);
                acc.dist.push(best);
                acc.counts[label] += 1;
                let sum = &mut acc.sums[label * d..(label + 1) * d];
                sum.iter_mut().zip(row).for_each(|(s, v)| *s += v);
            }
            Ok(())
        },
    )?;
    let mut out = Pass {
        labels: Vec::with_capacity(x.nrows()),
        dist: Vec::with_capacity(x.nrows()),
        sums: vec![0.0; k * d],
        counts: vec![0; k],
    };
    for part in parts {
        out.labels.extend(part.labels);
        out.dist.extend(part.dist);
        out.sums
            .iter_mut()
            .zip(&part.sums)
            .for_each(|(a, b)| *a += b);
        out.counts
            .iter_mut()
            .zip(&part.counts)
            .for_each(|(a, b)| *a += b);
    }
    Ok(out)
}

fn one_run(
    x: &RowPanels,
    norms: &[f64],
    p: &KmeansParams,
    tol: f64,
    seed: u64,
    par: Par,
) -> Result<(Mat<f64>, f64)> {
    let (n, d) = (x.nrows(), x.ncols());
    let mut rng = SplitMix::new(seed);
    // k-means++: each next centre drawn with probability proportional to its squared
    // distance from the nearest centre so far.
    let mut centres = Mat::<f64>::zeros(p.k, d);
    let mut nearest = vec![f64::INFINITY; n];
    let mut chosen = (rng.next_u64() % n as u64) as usize;
    for k in 0..p.k {
        let centre = x.row(chosen);
        for (j, v) in centre.iter().enumerate() {
            centres[(k, j)] = *v;
        }
        let parts = x.fold_rows(par, Vec::new, |r0, rows, out: &mut Vec<f64>| {
            for (r, row) in rows.chunks_exact(d.max(1)).enumerate() {
                let dist: f64 = row
                    .iter()
                    .zip(&centre)
                    .map(|(v, c)| (v - c) * (v - c))
                    .sum();
                out.push(nearest[r0 + r].min(dist));
            }
            Ok(())
        })?;
        nearest = parts.concat();
        if k + 1 == p.k {
            break;
        }
        let total: f64 = nearest.iter().sum();
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
    let mut labels = Vec::new();
    let mut inertia = f64::INFINITY;
    let mut settled = false;
    for iter in 0..=p.max_iter.max(1) {
        let pass = assign(x, norms, centres.as_ref(), par)?;
        inertia = pass.dist.iter().sum();
        // The last pass only measures the final centres.
        if settled || pass.labels == labels || iter == p.max_iter.max(1) {
            break;
        }
        // New centres: the means of their rows; an empty cluster takes the row farthest
        // from its centre.
        let mut far: Vec<usize> = Vec::new();
        if pass.counts.contains(&0) {
            far = (0..n).collect();
            far.sort_by(|&a, &b| pass.dist[b].total_cmp(&pass.dist[a]));
        }
        let mut far = far.into_iter();
        let mut shift = 0.0;
        for k in 0..p.k {
            let next = if pass.counts[k] > 0 {
                let count = pass.counts[k] as f64;
                pass.sums[k * d..(k + 1) * d]
                    .iter()
                    .map(|s| s / count)
                    .collect()
            } else if let Some(i) = far.next() {
                x.row(i)
            } else {
                continue;
            };
            for (j, v) in next.into_iter().enumerate() {
                shift += (v - centres[(k, j)]) * (v - centres[(k, j)]);
                centres[(k, j)] = v;
            }
        }
        labels = pass.labels;
        settled = shift <= tol;
    }
    Ok((centres, inertia))
}
