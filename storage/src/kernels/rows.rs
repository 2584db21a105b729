//! Row passes for iterative solvers (conjugate gradient, Newton's method) over a matrix
//! kept as its stored blocks: `x v`, `t(x) u`, and the fused `t(x) f(x v)` that reads
//! each row once and lets the caller transform `x_r . v` in between (subtract a
//! centring shift, apply a link function), which [`mmchain`](super::mmchain) cannot.
//!
//! Every function adds into `out`, so a caller sums the blocks of a block row, or the
//! block rows of a matrix, into one accumulator. They run on the calling thread: the
//! caller runs blocks in parallel.

use super::simd::{Isa, axpy, dot, multiversion};
use crate::block::{Block, CsrBlock};
use crate::error::{Result, StorageError};

fn check(op: &'static str, x: &Block, input: usize, by_rows: bool, out: usize) -> Result<()> {
    let (rows, cols) = x.shape();
    let (want_in, want_out) = if by_rows { (cols, rows) } else { (rows, cols) };
    if input != want_in || out != want_out {
        return Err(StorageError::shape_mismatch(op, (rows, cols), (input, out)));
    }
    Ok(())
}

/// `out[r] += x_r . v` for every row `r` of `x`; `v` has x's columns, `out` its rows.
///
/// ```
/// use tessera_storage::{Block, DenseBlock};
/// use tessera_storage::kernels::matvec_add;
///
/// let x = Block::Dense(DenseBlock::new(2, 2, vec![1.0, 2.0, 3.0, 4.0]).unwrap());
/// let mut out = vec![1.0, 1.0];
/// matvec_add(&x, &[1.0, 1.0], &mut out).unwrap();
/// assert_eq!(out, [4.0, 8.0]);
/// ```
pub fn matvec_add(x: &Block, v: &[f64], out: &mut [f64]) -> Result<()> {
    check("matvec", x, v.len(), true, out.len())?;
    match x {
        Block::Dense(d) => dense_matvec(Isa::best(), out, d.values(), d.cols(), v),
        Block::Sparse(s) => {
            for (r, o) in out.iter_mut().enumerate() {
                let (idx, vals) = s.row(r);
                *o += idx.iter().zip(vals).map(|(&c, &a)| a * v[c]).sum::<f64>();
            }
        }
    }
    Ok(())
}

/// `out += t(x) u`; `u` has x's rows, `out` its columns.
///
/// ```
/// use tessera_storage::{Block, DenseBlock};
/// use tessera_storage::kernels::tmatvec_add;
///
/// let x = Block::Dense(DenseBlock::new(2, 2, vec![1.0, 2.0, 3.0, 4.0]).unwrap());
/// let mut out = vec![0.0, 0.0];
/// tmatvec_add(&x, &[1.0, 1.0], &mut out).unwrap();
/// assert_eq!(out, [4.0, 6.0]);
/// ```
pub fn tmatvec_add(x: &Block, u: &[f64], out: &mut [f64]) -> Result<()> {
    check("tmatvec", x, u.len(), false, out.len())?;
    match x {
        Block::Dense(d) => dense_tmatvec(Isa::best(), out, d.values(), d.cols(), u),
        Block::Sparse(s) => sparse_tmatvec(s, u, out),
    }
    Ok(())
}

fn sparse_tmatvec(s: &CsrBlock, u: &[f64], out: &mut [f64]) {
    for (r, &ur) in u.iter().enumerate() {
        let (idx, vals) = s.row(r);
        for (&c, &a) in idx.iter().zip(vals) {
            out[c] += a * ur;
        }
    }
}

/// For every row `r` of `x`, in order: `s = f(r, x_r . v)`, then `out += s x_r`. `x` is
/// read once; `v` and `out` have x's columns. `f` may keep running sums of its own.
///
/// ```
/// use tessera_storage::{Block, DenseBlock};
/// use tessera_storage::kernels::chain_rows_add;
///
/// let x = Block::Dense(DenseBlock::new(2, 2, vec![1.0, 2.0, 3.0, 4.0]).unwrap());
/// let mut out = vec![0.0, 0.0];
/// // x v = [3, 7]; minus 1 each: [2, 6]; t(x) [2, 6] = [20, 28]
/// chain_rows_add(&x, &[1.0, 1.0], &mut out, &mut |_, d| d - 1.0).unwrap();
/// assert_eq!(out, [20.0, 28.0]);
/// ```
pub fn chain_rows_add(
    x: &Block,
    v: &[f64],
    out: &mut [f64],
    f: &mut dyn FnMut(usize, f64) -> f64,
) -> Result<()> {
    if v.len() != x.cols() || out.len() != x.cols() {
        return Err(StorageError::shape_mismatch(
            "chain",
            x.shape(),
            (v.len(), out.len()),
        ));
    }
    if x.cols() == 0 {
        // No columns: every row's product is 0, and `f` still sees every row.
        for r in 0..x.rows() {
            f(r, 0.0);
        }
        return Ok(());
    }
    match x {
        Block::Dense(d) => dense_chain(Isa::best(), out, d.values(), d.cols(), v, f),
        Block::Sparse(s) => {
            for r in 0..s.rows() {
                let (idx, vals) = s.row(r);
                let d: f64 = idx.iter().zip(vals).map(|(&c, &a)| a * v[c]).sum();
                let sr = f(r, d);
                for (&c, &a) in idx.iter().zip(vals) {
                    out[c] += sr * a;
                }
            }
        }
    }
    Ok(())
}

multiversion! {
    /// `out[r] += x_r . v` over dense rows `x` (`n` wide).
    fn dense_matvec(out: &mut [f64], x: &[f64], n: usize, v: &[f64]) {
        if n == 0 {
            return;
        }
        for (o, row) in out.iter_mut().zip(x.chunks_exact(n)) {
            *o += dot(row, v);
        }
    }
}

/// `out += s_k x_k` over dense rows `x` (`n` wide, `n > 0`), `s_k = scale(k, x_k)` taken
/// in row order; four rows per pass over `out`, so `out` is loaded and stored once per
/// four rows.
#[inline(always)]
fn add_scaled_rows(
    out: &mut [f64],
    x: &[f64],
    n: usize,
    mut scale: impl FnMut(usize, &[f64]) -> f64,
) {
    let quads = x.chunks_exact(4 * n);
    let rest = quads.remainder();
    let mut k = 0;
    for q in quads {
        let (r0, q) = q.split_at(n);
        let (r1, q) = q.split_at(n);
        let (r2, r3) = q.split_at(n);
        let (s0, s1) = (scale(k, r0), scale(k + 1, r1));
        let (s2, s3) = (scale(k + 2, r2), scale(k + 3, r3));
        for j in 0..n {
            out[j] += (s0 * r0[j] + s1 * r1[j]) + (s2 * r2[j] + s3 * r3[j]);
        }
        k += 4;
    }
    for row in rest.chunks_exact(n) {
        axpy(out, scale(k, row), row);
        k += 1;
    }
}

multiversion! {
    /// `out += t(x) u` over dense rows `x` (`n` wide).
    fn dense_tmatvec(out: &mut [f64], x: &[f64], n: usize, u: &[f64]) {
        if n > 0 {
            add_scaled_rows(out, x, n, |k, _| u[k]);
        }
    }
}

multiversion! {
    /// `out += t(x) f(x v)` row by row over dense rows `x` (`n` wide).
    fn dense_chain(out: &mut [f64], x: &[f64], n: usize, v: &[f64], f: &mut dyn FnMut(usize, f64) -> f64) {
        if n > 0 {
            add_scaled_rows(out, x, n, |k, row| f(k, dot(row, v)));
        }
    }
}

/// `x - 1 c`: `c` (x's columns long) subtracted from every row of `x`, as a dense block
/// (a sparse `x`'s absent cells become `-c`). The non-zeros are counted as the cells are
/// written, so the values are read once.
///
/// ```
/// use tessera_storage::{Block, DenseBlock};
/// use tessera_storage::kernels::sub_row;
///
/// let x = Block::Dense(DenseBlock::new(2, 2, vec![1.0, 2.0, 3.0, 4.0]).unwrap());
/// let centred = sub_row(&x, &[1.0, 3.0]).unwrap();
/// assert_eq!(centred.values(), [0.0, -1.0, 2.0, 1.0]);
/// assert_eq!(centred.nnz(), 3);
/// ```
pub fn sub_row(x: &Block, c: &[f64]) -> Result<crate::block::DenseBlock> {
    let (rows, cols) = x.shape();
    if c.len() != cols {
        return Err(StorageError::shape_mismatch(
            "sub_row",
            (rows, cols),
            (1, c.len()),
        ));
    }
    let mut values = Vec::with_capacity(rows * cols);
    let mut zeros = 0;
    match x {
        Block::Dense(d) => {
            for row in d.values().chunks_exact(cols.max(1)) {
                for (v, m) in row.iter().zip(c) {
                    let out = v - m;
                    zeros += usize::from(out == 0.0);
                    values.push(out);
                }
            }
        }
        Block::Sparse(s) => {
            for r in 0..rows {
                let at = values.len();
                values.extend(c.iter().map(|m| -m));
                let (idx, vals) = s.row(r);
                for (&j, v) in idx.iter().zip(vals) {
                    values[at + j] += v;
                }
                zeros += values[at..].iter().filter(|v| **v == 0.0).count();
            }
        }
    }
    let nnz = rows * cols - zeros;
    crate::block::DenseBlock::with_nnz(rows, cols, values, nnz)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::kernels::simd::Isa;
    use crate::kernels::testing::block;

    fn cell(x: &Block, r: usize, c: usize) -> f64 {
        match x {
            Block::Dense(d) => d.get(r, c),
            Block::Sparse(s) => s.get(r, c),
        }
    }

    fn case() -> impl Strategy<Value = (Block, Vec<f64>, Vec<f64>)> {
        (1usize..=23, 0usize..=21).prop_flat_map(|(m, n)| {
            (
                block(m, n),
                prop::collection::vec(-4.0f64..4.0, n),
                prop::collection::vec(-4.0f64..4.0, m),
            )
        })
    }

    fn close(got: &[f64], want: &[f64]) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!(
                (g - w).abs() <= 1e-9 * (1.0 + w.abs()),
                "{got:?} != {want:?}"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn row_passes_match_naive_sums((x, v, u) in case()) {
            let (m, n) = x.shape();
            // Naive: x v, t(x) u, and t(x) (x v - r) with the row index as the shift.
            let xv: Vec<f64> = (0..m).map(|r| (0..n).map(|c| cell(&x, r, c) * v[c]).sum()).collect();
            let xtu: Vec<f64> = (0..n).map(|c| (0..m).map(|r| cell(&x, r, c) * u[r]).sum()).collect();
            let chain: Vec<f64> = (0..n)
                .map(|c| (0..m).map(|r| cell(&x, r, c) * (xv[r] - r as f64)).sum())
                .collect();

            let mut out = vec![1.0; m];
            matvec_add(&x, &v, &mut out).unwrap();
            close(&out, &xv.iter().map(|a| a + 1.0).collect::<Vec<_>>());

            let mut out = vec![0.0; n];
            tmatvec_add(&x, &u, &mut out).unwrap();
            close(&out, &xtu);

            let mut out = vec![0.0; n];
            let mut seen = Vec::new();
            chain_rows_add(&x, &v, &mut out, &mut |r, d| {
                seen.push(r);
                d - r as f64
            })
            .unwrap();
            close(&out, &chain);
            prop_assert_eq!(seen, (0..m).collect::<Vec<_>>());

            // x - 1 v, dense or sparse x: every cell, and the non-zeros counted.
            let centred = sub_row(&x, &v).unwrap();
            let want: Vec<f64> = (0..m * n).map(|k| cell(&x, k / n, k % n) - v[k % n]).collect();
            prop_assert_eq!(centred.values(), want.as_slice());
            prop_assert_eq!(centred.nnz(), want.iter().filter(|w| **w != 0.0).count());

            // Every instruction set the CPU has gives the baseline's sums.
            if let Block::Dense(d) = &x {
                for isa in Isa::available() {
                    let mut out = vec![0.0; n];
                    dense_chain(isa, &mut out, d.values(), n, &v, &mut |r, dot| dot - r as f64);
                    close(&out, &chain);
                }
            }
        }

        #[test]
        fn wrong_lengths_are_shape_errors((x, v, _u) in case()) {
            let (m, n) = x.shape();
            let mut long = vec![0.0; m + 1];
            prop_assert!(matvec_add(&x, &v, &mut long).is_err());
            let mut out = vec![0.0; n + 1];
            prop_assert!(tmatvec_add(&x, &vec![0.0; m], &mut out).is_err());
            prop_assert!(chain_rows_add(&x, &vec![0.0; n + 1], &mut vec![0.0; n], &mut |_, d| d).is_err());
        }
    }
}
