//! Linear regression: the normal equations solved directly (SystemDS's lmDS) from
//! `t(X) X` and `t(X) y` computed as block dataflows, or conjugate gradient over the
//! blocks of `X` (lmCG) for wide problems; and prediction.

use datafusion::common::Result;
use faer::{Mat, MatRef, Par};

use super::dense::{data_error, mm, spd_solve};
use super::panels::RowPanels;

/// `ncol(X)` up to which `lm` solves the normal equations directly (as SystemDS).
pub const LM_DIRECT_MAX_COLS: u64 = 1024;

/// How `lm` solves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LmSolver {
    /// Direct up to [`LM_DIRECT_MAX_COLS`] columns, conjugate gradient above.
    Auto,
    /// The normal equations, Cholesky (LU when Cholesky fails).
    Direct,
    /// Conjugate gradient on the normal equations.
    Cg,
}

/// `lm`'s parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LmParams {
    /// L2 penalty on the coefficients (not on the intercept).
    pub lambda: f64,
    /// Fit an intercept (returned as the last row).
    pub intercept: bool,
    /// Conjugate gradient stops when the residual norm falls below `tol` times its start.
    pub tol: f64,
    /// Conjugate gradient iterations at most; 0 means `ncol(X)`.
    pub max_iter: usize,
    /// How to solve.
    pub solver: LmSolver,
}

const SINGULAR: &str = "t(X) X + lambda I is not invertible: X has linearly dependent or \
                        constant columns, or fewer rows than columns; give lambda > 0";

/// The coefficients from the normal equations: `xtx = t(X) X`, `xty = t(X) y`,
/// `xsum` the column sums of X (1 x p), `ysum` the sum of y, over `n` rows.
pub(crate) fn lm_direct(
    p: &LmParams,
    mut xtx: Mat<f64>,
    mut xty: Mat<f64>,
    xsum: MatRef<'_, f64>,
    ysum: f64,
    n: usize,
) -> Result<Mat<f64>> {
    let cols = xtx.ncols();
    check_system(&xtx, &xty)?;
    let nf = n as f64;
    let means: Vec<f64> = (0..cols).map(|j| xsum[(0, j)] / nf).collect();
    let ybar = ysum / nf;
    // Each column's own magnitude, before centring, for the singularity test: a
    // constant column centres to rounding noise relative to it.
    let reference: Vec<f64> = (0..cols).map(|a| xtx[(a, a)] + p.lambda).collect();
    if p.intercept {
        // Centre: t(Xc) Xc = t(X) X - n m t(m), t(Xc) y = t(X) y - n m ybar.
        for a in 0..cols {
            for b in 0..cols {
                xtx[(a, b)] -= nf * means[a] * means[b];
            }
            xty[(a, 0)] -= nf * means[a] * ybar;
        }
    }
    for a in 0..cols {
        xtx[(a, a)] += p.lambda;
    }
    let beta = spd_solve("lm", SINGULAR, xtx.as_ref(), xty.as_ref(), Some(&reference))?;
    Ok(with_intercept(p.intercept, beta.as_ref(), &means, ybar))
}

fn check_system(xtx: &Mat<f64>, xty: &Mat<f64>) -> Result<()> {
    for v in xtx
        .col_iter()
        .flat_map(|c| c.iter().copied())
        .chain(xty.col(0).iter().copied())
    {
        if !v.is_finite() {
            return Err(data_error(
                "lm: x or y has a NaN or infinite value; remove or replace it first",
            ));
        }
    }
    Ok(())
}

/// `beta` with the intercept `ybar - m . beta` appended when fitted.
fn with_intercept(intercept: bool, beta: MatRef<'_, f64>, means: &[f64], ybar: f64) -> Mat<f64> {
    let cols = beta.nrows();
    if !intercept {
        return beta.to_owned();
    }
    let b0 = ybar - (0..cols).map(|a| means[a] * beta[(a, 0)]).sum::<f64>();
    Mat::from_fn(cols + 1, 1, |i, _| if i < cols { beta[(i, 0)] } else { b0 })
}

/// The coefficients by conjugate gradient on `(t(Xc) Xc + lambda I) b = t(Xc) y`, where
/// `Xc` is X with its column means subtracted when an intercept is fitted (applied on
/// the fly, X stays as it is). X is read as its blocks: each iteration is one pass that
/// forms `Xc d` a row at a time and adds `t(Xc) (Xc d)` as it goes (SystemDS's mmchain,
/// with the centring in between).
pub(crate) fn lm_cg(p: &LmParams, x: &RowPanels, y: &[f64], par: Par) -> Result<Mat<f64>> {
    let (n, cols) = (x.nrows(), x.ncols());
    let nf = n as f64;
    let ysum: f64 = y.iter().sum();
    let (means, ybar) = if p.intercept {
        let sums = x.tmv(&vec![1.0; n], par)?;
        (sums.iter().map(|s| s / nf).collect(), ysum / nf)
    } else {
        (vec![0.0; cols], 0.0)
    };
    // A v = t(Xc) (Xc v) + lambda v: row r gives s = x_r . v - m . v, added as s x_r;
    // the sum of the s takes the means back out of t(X) s.
    let apply = |v: &[f64]| -> Result<Vec<f64>> {
        let shift: f64 = means.iter().zip(v).map(|(m, v)| m * v).sum();
        let (mut out, total) = x.chain(v, |_, d| (d - shift, d - shift), par)?;
        for j in 0..cols {
            out[j] += p.lambda * v[j] - means[j] * total;
        }
        Ok(out)
    };
    let mut b = x.tmv(y, par)?;
    for j in 0..cols {
        b[j] -= means[j] * ysum;
    }
    if b.iter().any(|v| !v.is_finite()) {
        return Err(data_error(
            "lm: x or y has a NaN or infinite value; remove or replace it first",
        ));
    }
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(a, b)| a * b).sum::<f64>();
    let mut beta = vec![0.0; cols];
    let mut r = b.clone();
    let mut d = r.clone();
    let mut rr = dot(&r, &r);
    let stop = p.tol * p.tol * rr.max(f64::MIN_POSITIVE);
    let max_iter = if p.max_iter == 0 {
        cols.max(1)
    } else {
        p.max_iter
    };
    for _ in 0..max_iter {
        if rr <= stop {
            break;
        }
        let q = apply(&d)?;
        let dq = dot(&d, &q);
        if dq <= 0.0 || !dq.is_finite() {
            return Err(crate::error::tessera_error(
                crate::error::ErrorKind::SingularMatrix,
                format!("lm: conjugate gradient broke down: {SINGULAR}"),
            ));
        }
        let alpha = rr / dq;
        for j in 0..cols {
            beta[j] += alpha * d[j];
            r[j] -= alpha * q[j];
        }
        let next = dot(&r, &r);
        let gamma = next / rr;
        rr = next;
        for j in 0..cols {
            d[j] = r[j] + gamma * d[j];
        }
    }
    let beta = Mat::from_fn(cols, 1, |i, _| beta[i]);
    Ok(with_intercept(p.intercept, beta.as_ref(), &means, ybar))
}

/// `X beta`, plus the intercept when `beta` has one row more than X has columns.
pub(crate) fn lm_predict(x: MatRef<'_, f64>, beta: MatRef<'_, f64>, par: Par) -> Result<Mat<f64>> {
    let cols = x.ncols();
    if beta.ncols() != 1 || (beta.nrows() != cols && beta.nrows() != cols + 1) {
        return Err(data_error(format!(
            "lm_predict: beta must be {cols}x1 (or {}x1 with the intercept last) for an x with {cols} columns, it is {}x{}",
            cols + 1,
            beta.nrows(),
            beta.ncols()
        )));
    }
    let mut out = mm(x, beta.subrows(0, cols), par);
    if beta.nrows() == cols + 1 {
        let b0 = beta[(cols, 0)];
        for i in 0..out.nrows() {
            out[(i, 0)] += b0;
        }
    }
    Ok(out)
}
