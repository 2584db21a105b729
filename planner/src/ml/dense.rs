//! Dense helpers for the builtins' small, in-memory steps: gathering a computed matrix,
//! checking its values, products and solves with faer.

use datafusion::common::{DataFusionError, Result};
use faer::linalg::matmul::matmul;
use faer::linalg::solvers::Solve;
use faer::{Accum, Mat, MatRef, Par};

use crate::error::{ErrorKind, tessera_error};
use crate::la::BlockMatrix;

/// A user's data that do not fit the builtin (22000).
pub(crate) fn data_error(message: impl Into<String>) -> DataFusionError {
    tessera_error(ErrorKind::DataException, message)
}

/// A parameter outside its domain (22023).
pub(crate) fn parameter_error(message: impl Into<String>) -> DataFusionError {
    tessera_error(ErrorKind::InvalidParameterValue, message)
}

/// A computed matrix as a dense faer matrix, `rows` rows at least (absent trailing rows
/// of an `(i, j, v)` input are zeros).
pub(crate) fn gather(m: &BlockMatrix, rows: Option<usize>) -> Result<Mat<f64>> {
    let d = m.to_dense()?;
    let r = rows.unwrap_or(0).max(d.rows());
    // faer copies the row-major values into its column-major matrix block by block.
    let values = MatRef::from_row_major_slice(d.values(), d.rows(), d.cols());
    if r == d.rows() {
        return Ok(values.to_owned());
    }
    let mut out = Mat::zeros(r, d.cols());
    out.as_mut().subrows_mut(0, d.rows()).copy_from(values);
    Ok(out)
}

/// Fails naming the first NaN or infinite cell of `m`, argument `what` of `fname`.
pub(crate) fn check_finite(fname: &str, what: &str, m: MatRef<'_, f64>) -> Result<()> {
    for j in 0..m.ncols() {
        for i in 0..m.nrows() {
            let v = m[(i, j)];
            if !v.is_finite() {
                return Err(data_error(format!(
                    "{fname}: {what} has a {} value at ({i}, {j}); remove or replace it first",
                    if v.is_nan() { "NaN" } else { "infinite" }
                )));
            }
        }
    }
    Ok(())
}

/// `a b`.
pub(crate) fn mm(a: MatRef<'_, f64>, b: MatRef<'_, f64>, par: Par) -> Mat<f64> {
    let mut out = Mat::zeros(a.nrows(), b.ncols());
    matmul(out.as_mut(), Accum::Replace, a, b, 1.0, par);
    out
}

/// `t(a) b`.
pub(crate) fn tmm(a: MatRef<'_, f64>, b: MatRef<'_, f64>, par: Par) -> Mat<f64> {
    mm(a.transpose(), b, par)
}

/// `x` with `a x = b` for a symmetric `a` that should be positive definite (a Gram
/// matrix plus a penalty), by Cholesky. A singular `a` is a
/// [`ErrorKind::SingularMatrix`] error with `why` (what makes it singular, in the
/// user's terms): Cholesky fails (a pivot is not positive), or, with `reference`, some
/// pivot `d_i` (the part of column `i` that the columns before it do not explain) is
/// at most `1e-12 * reference[i]`, `reference[i]` being that column's own magnitude
/// (for `t(X) X`, its raw sum of squares): the column is a combination of the others
/// up to rounding. Without `reference` only a Cholesky factor whose diagonal spans more
/// than 1e8 (a condition number above ~1e16) counts as singular.
pub(crate) fn spd_solve(
    fname: &str,
    why: &str,
    a: MatRef<'_, f64>,
    b: MatRef<'_, f64>,
    reference: Option<&[f64]>,
) -> Result<Mat<f64>> {
    let singular = || {
        tessera_error(
            ErrorKind::SingularMatrix,
            format!("{fname}: the system is singular: {why}"),
        )
    };
    let llt = a.llt(faer::Side::Lower).map_err(|_| singular())?;
    let l = llt.L();
    let pivots: Vec<f64> = (0..l.nrows()).map(|i| l[(i, i)] * l[(i, i)]).collect();
    let ok = match reference {
        Some(r) => pivots
            .iter()
            .zip(r)
            .all(|(d, r)| d.is_finite() && *d > 1e-12 * r.abs()),
        None => {
            let lo = pivots.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = pivots.iter().copied().fold(0.0, f64::max);
            lo.is_finite() && lo > hi * 1e-16
        }
    };
    if !ok {
        return Err(singular());
    }
    Ok(llt.solve(b))
}

/// The eigenvalues (descending) and eigenvectors of a symmetric matrix.
pub(crate) fn symmetric_eigen(fname: &str, a: MatRef<'_, f64>) -> Result<(Vec<f64>, Mat<f64>)> {
    let evd = a
        .self_adjoint_eigen(faer::Side::Lower)
        .map_err(|e| data_error(format!("{fname}: the eigen-decomposition failed: {e:?}")))?;
    let s = evd.S().column_vector();
    let u = evd.U();
    let mut order: Vec<usize> = (0..s.nrows()).collect();
    order.sort_by(|&x, &y| s[y].total_cmp(&s[x]));
    let values = order.iter().map(|&k| s[k]).collect();
    let vectors = Mat::from_fn(u.nrows(), order.len(), |i, j| u[(i, order[j])]);
    Ok((values, vectors))
}

/// A deterministic generator (SplitMix64) for k-means++ and shuffles: the same seed
/// gives the same draws on every platform.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix(u64);

impl SplitMix {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}
