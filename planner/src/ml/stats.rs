//! Covariance, correlation (Pearson and Spearman) and PCA from the centred scatter
//! matrix `t(Xc) Xc`, which a block dataflow computes in one pass (tsmm).

use datafusion::common::Result;
use faer::{Mat, MatRef, Par};

use super::dense::{data_error, mm, parameter_error, symmetric_eigen, tmm};

/// The covariance `t(Xc) Xc / (n - 1)` from the scatter matrix over `n` rows.
pub(crate) fn cov_from_scatter(
    fname: &str,
    scatter: MatRef<'_, f64>,
    n: usize,
) -> Result<Mat<f64>> {
    if n < 2 {
        return Err(data_error(format!(
            "{fname}: x has {n} row(s); a covariance needs at least 2"
        )));
    }
    for j in 0..scatter.ncols() {
        for i in 0..scatter.nrows() {
            if !scatter[(i, j)].is_finite() {
                return Err(data_error(format!(
                    "{fname}: x has a NaN or infinite value (in column {j} or {i}); remove or replace it first"
                )));
            }
        }
    }
    let d = (n - 1) as f64;
    Ok(Mat::from_fn(scatter.nrows(), scatter.ncols(), |i, j| {
        scatter[(i, j)] / d
    }))
}

/// Pearson correlation from a covariance matrix: `c_ij / sqrt(c_ii c_jj)`, clipped to
/// [-1, 1]. A constant column has no correlation: its row and column are NaN, as
/// `numpy.corrcoef` gives.
pub(crate) fn cor_from_cov(c: MatRef<'_, f64>) -> Mat<f64> {
    let sd: Vec<f64> = (0..c.nrows()).map(|i| c[(i, i)].max(0.0).sqrt()).collect();
    Mat::from_fn(c.nrows(), c.ncols(), |i, j| {
        let r = c[(i, j)] / (sd[i] * sd[j]);
        if r.is_nan() {
            f64::NAN
        } else {
            r.clamp(-1.0, 1.0)
        }
    })
}

/// Ranks of each column (1-based, ties get their average rank).
pub(crate) fn column_ranks(x: MatRef<'_, f64>) -> Mat<f64> {
    let n = x.nrows();
    let mut out = Mat::<f64>::zeros(n, x.ncols());
    let mut order: Vec<usize> = Vec::with_capacity(n);
    for j in 0..x.ncols() {
        order.clear();
        order.extend(0..n);
        order.sort_by(|&a, &b| x[(a, j)].total_cmp(&x[(b, j)]));
        let mut s = 0;
        while s < n {
            let mut e = s + 1;
            while e < n && x[(order[e], j)] == x[(order[s], j)] {
                e += 1;
            }
            let rank = (s + e + 1) as f64 / 2.0;
            for &r in &order[s..e] {
                out[(r, j)] = rank;
            }
            s = e;
        }
    }
    out
}

/// The centred scatter matrix of a gathered `x`.
pub(crate) fn scatter(x: MatRef<'_, f64>, par: Par) -> Mat<f64> {
    let n = x.nrows() as f64;
    let mut c = x.to_owned();
    for j in 0..c.ncols() {
        let m = c.col(j).iter().sum::<f64>() / n;
        for i in 0..c.nrows() {
            c[(i, j)] -= m;
        }
    }
    tmm(c.as_ref(), c.as_ref(), par)
}

/// A fitted PCA: the top `k` eigenpairs of the covariance (or correlation) matrix.
#[derive(Debug, Clone)]
pub(crate) struct PcaFit {
    /// Explained variance of each component, descending.
    pub(crate) values: Vec<f64>,
    /// Sum of all eigenvalues (the total variance), for the ratios.
    pub(crate) total: f64,
    /// Components as columns (p x k), each with its largest-magnitude entry positive.
    pub(crate) vectors: Mat<f64>,
    /// Column standard deviations X was divided by (`scale`).
    pub(crate) sd: Option<Vec<f64>>,
}

/// PCA of the covariance `cov` (p x p); with `scale`, of the correlation matrix.
pub(crate) fn pca_fit(cov: MatRef<'_, f64>, k: usize, scale: bool) -> Result<PcaFit> {
    let p = cov.nrows();
    if k == 0 || k > p {
        return Err(parameter_error(format!(
            "pca: k must be from 1 to ncol(x) = {p}, got {k}"
        )));
    }
    let (matrix, sd) = if scale {
        let sd: Vec<f64> = (0..p).map(|i| cov[(i, i)].max(0.0).sqrt()).collect();
        if let Some(j) = sd.iter().position(|s| *s == 0.0) {
            return Err(data_error(format!(
                "pca: column {j} of x is constant, so it cannot be scaled; use scale => 0"
            )));
        }
        (cor_from_cov(cov), Some(sd))
    } else {
        (cov.to_owned(), None)
    };
    let (values, vectors) = symmetric_eigen("pca", matrix.as_ref())?;
    let total: f64 = values.iter().sum();
    let mut top = Mat::from_fn(p, k, |i, j| vectors[(i, j)]);
    for j in 0..k {
        let mut big = 0;
        for i in 0..p {
            if top[(i, j)].abs() > top[(big, j)].abs() {
                big = i;
            }
        }
        if top[(big, j)] < 0.0 {
            for i in 0..p {
                top[(i, j)] = -top[(i, j)];
            }
        }
    }
    Ok(PcaFit {
        values: values.into_iter().take(k).collect(),
        total,
        vectors: top,
        sd,
    })
}

/// `x` centred by `means` (when given), scaled by the fit's deviations, times the
/// components: the data in the components' coordinates (n x k).
pub(crate) fn pca_project(
    x: MatRef<'_, f64>,
    means: Option<&[f64]>,
    fit: &PcaFit,
    par: Par,
) -> Mat<f64> {
    let c = Mat::from_fn(x.nrows(), x.ncols(), |i, j| {
        let v = x[(i, j)] - means.map_or(0.0, |m| m[j]);
        match &fit.sd {
            Some(sd) => v / sd[j],
            None => v,
        }
    });
    mm(c.as_ref(), fit.vectors.as_ref(), par)
}
