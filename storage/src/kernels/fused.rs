//! Fused kernels the planner rewrites into: `tsmm` (`t(X) %*% X`, one triangle) and
//! `mmchain` (`t(X) %*% (X %*% v)` in one pass over `X`, no intermediate `X v`).

use faer::linalg::matmul::triangular::{self, BlockStructure};
use faer::{Accum, MatMut, MatRef};
use rayon::prelude::*;

use super::accumulator::{add_slices, zeroed};
use super::pool::{Parallelism, cpu_pool};
use super::simd::{Isa, axpy, dot, multiversion};
use super::syrk::Syrk;
use crate::block::{Block, CsrBlock, DenseBlock};
use crate::error::{Result, StorageError};

/// `t(x) * x`, an `n x n` symmetric block for an `m x n` `x`: only the lower triangle is
/// computed (half the flops of a general product) and then mirrored. Dense `x` goes to a
/// register-tiled AVX-512 or AVX2 kernel (faer's triangular GEMM on other CPUs); CSR `x` sums the
/// outer product of each row's non-zeros.
/// Parallel across the CPU pool when the work is large enough.
///
/// For a matrix cut into row blocks, sum the `tsmm` of each block (see [`add_into`]).
///
/// [`add_into`]: super::add_into
///
/// ```
/// use tessera_storage::{Block, DenseBlock};
/// use tessera_storage::kernels::tsmm;
///
/// let x = Block::Dense(DenseBlock::new(2, 2, vec![1.0, 2.0, 3.0, 4.0]).unwrap());
/// assert_eq!(tsmm(&x).unwrap().values(), &[10.0, 14.0, 14.0, 20.0]);
/// ```
pub fn tsmm(x: &Block) -> Result<DenseBlock> {
    tsmm_par(x, Parallelism::auto(tsmm_flops(x)))
}

/// [`tsmm`] on the calling thread, for callers that already run blocks in parallel.
pub fn tsmm_seq(x: &Block) -> Result<DenseBlock> {
    tsmm_par(x, Parallelism::Seq)
}

/// Multiply-adds of one triangle of `t(x) x`.
fn tsmm_flops(x: &Block) -> f64 {
    let (m, n) = (x.rows() as f64, x.cols() as f64);
    match x {
        Block::Dense(_) => m * n * (n + 1.0),
        // A row with p non-zeros contributes p (p + 1) / 2 products; assume even rows.
        Block::Sparse(s) => {
            let p = if m == 0.0 { 0.0 } else { s.nnz() as f64 / m };
            m * p * (p + 1.0)
        }
    }
}

pub(crate) fn tsmm_par(x: &Block, par: Parallelism) -> Result<DenseBlock> {
    let n = x.cols();
    let mut out = zeroed(n, n)?;
    match x {
        Block::Dense(d) => tsmm_dense_lower(&mut out, d, par),
        Block::Sparse(s) => tsmm_sparse_lower(&mut out, s, par),
    }
    mirror_lower(&mut out, n);
    Ok(DenseBlock::from_vec_unchecked(n, n, out))
}

/// Lower triangle of `t(x) x` into `out` (`n x n`, row-major); the upper one is untouched.
/// On a CPU with AVX-512 or AVX2 and FMA, Tessera's own register-tiled kernel
/// ([`super::syrk`]); elsewhere faer's triangular GEMM.
fn tsmm_dense_lower(out: &mut [f64], x: &DenseBlock, par: Parallelism) {
    let (m, n) = x.shape();
    if m == 0 || n == 0 {
        return;
    }
    if let Some(syrk) = Syrk::detect() {
        let np = syrk.padded(n);
        let rows_of = |r: std::ops::Range<usize>| &x.values()[r.start * n..r.end * n];
        let acc = match par {
            Parallelism::Seq => {
                let mut acc = vec![0.0; np * np];
                syrk.gram_upper(x.values(), n, &mut acc);
                acc
            }
            Parallelism::Pool => sum_partials(m, np * np, |rows, acc| {
                syrk.gram_upper(rows_of(rows), n, acc)
            }),
        };
        syrk.upper_to_lower(&acc, n, out);
        return;
    }
    let xm = MatRef::from_row_major_slice(x.values(), m, n);
    let dst = MatMut::from_row_major_slice_mut(out, n, n);
    par.run(|| {
        triangular::matmul(
            dst,
            BlockStructure::TriangularLower,
            Accum::Replace,
            xm.transpose(),
            BlockStructure::Rectangular,
            xm,
            BlockStructure::Rectangular,
            1.0,
            par.faer(),
        )
    });
}

/// Lower triangle of `t(x) x` for CSR `x`: each row adds `x_rc * x_rd` at `(d, c)` for its
/// non-zeros `c <= d` (columns are sorted, so that is every pair once).
fn tsmm_sparse_lower(out: &mut [f64], x: &CsrBlock, par: Parallelism) {
    let n = x.cols();
    let partial = |rows: std::ops::Range<usize>, out: &mut [f64]| {
        for r in rows {
            let (idx, vals) = x.row(r);
            for (q, (&d, &xd)) in idx.iter().zip(vals).enumerate() {
                let out_row = &mut out[d * n..(d + 1) * n];
                for (&c, &xc) in idx[..=q].iter().zip(&vals[..=q]) {
                    out_row[c] += xd * xc;
                }
            }
        }
    };
    match par {
        Parallelism::Seq => partial(0..x.rows(), out),
        Parallelism::Pool => {
            let sum = sum_partials(x.rows(), n * n, |rows, acc| partial(rows, acc));
            out.copy_from_slice(&sum);
        }
    }
}

/// Copies the lower triangle of a row-major `n x n` matrix onto the upper one.
fn mirror_lower(out: &mut [f64], n: usize) {
    for i in 0..n {
        for j in (i + 1)..n {
            out[i * n + j] = out[j * n + i];
        }
    }
}

/// Runs `f(rows, acc)` over row ranges of `0..rows` in the CPU pool, each task adding into
/// its own zeroed `len`-long accumulator, and returns the sum of the accumulators.
fn sum_partials(
    rows: usize,
    len: usize,
    f: impl Fn(std::ops::Range<usize>, &mut [f64]) + Sync + Send,
) -> Vec<f64> {
    let threads = cpu_pool().current_num_threads();
    // A few tasks per thread for balance, but not so many that merging the accumulators
    // costs more than the rows.
    let tasks = (threads * 4).min(rows).max(1);
    let per = rows.div_ceil(tasks).max(1);
    cpu_pool().install(|| {
        (0..rows.div_ceil(per))
            .into_par_iter()
            .fold(
                || vec![0.0f64; len],
                |mut acc, t| {
                    f(t * per..((t + 1) * per).min(rows), &mut acc);
                    acc
                },
            )
            .reduce(
                || vec![0.0f64; len],
                |mut a, b| {
                    add_slices(&mut a, &b);
                    a
                },
            )
    })
}

/// `t(x) * (x * v)` for an `m x n` `x` and an `n x k` `v`, in one pass over `x`: each row
/// `x_r` is read once to form `s = x_r v` and to add `t(x_r) s` to the result, so the
/// `m x k` intermediate `x v` never exists. Rows are split across the CPU pool with a
/// private accumulator per task when the work is large enough.
///
/// `x.cols() != v.rows()` is a [`StorageError::ShapeMismatch`].
///
/// ```
/// use tessera_storage::{Block, DenseBlock};
/// use tessera_storage::kernels::mmchain;
///
/// let x = Block::Dense(DenseBlock::new(2, 2, vec![1.0, 2.0, 3.0, 4.0]).unwrap());
/// let v = DenseBlock::new(2, 1, vec![1.0, 1.0]).unwrap();
/// // x v = [3, 7]; t(x) [3, 7] = [1*3 + 3*7, 2*3 + 4*7]
/// assert_eq!(mmchain(&x, &v).unwrap().values(), &[24.0, 34.0]);
/// ```
pub fn mmchain(x: &Block, v: &DenseBlock) -> Result<DenseBlock> {
    check_chain(x, v)?;
    let stored = match x {
        Block::Dense(d) => d.rows() * d.cols(),
        Block::Sparse(s) => s.nnz(),
    };
    let flops = 4.0 * stored as f64 * v.cols() as f64;
    mmchain_par(x, v, Parallelism::auto(flops))
}

/// [`mmchain`] on the calling thread, for callers that already run blocks in parallel.
pub fn mmchain_seq(x: &Block, v: &DenseBlock) -> Result<DenseBlock> {
    check_chain(x, v)?;
    mmchain_par(x, v, Parallelism::Seq)
}

fn check_chain(x: &Block, v: &DenseBlock) -> Result<()> {
    if x.cols() != v.rows() {
        return Err(StorageError::shape_mismatch(
            "mmchain",
            x.shape(),
            v.shape(),
        ));
    }
    Ok(())
}

pub(crate) fn mmchain_par(x: &Block, v: &DenseBlock, par: Parallelism) -> Result<DenseBlock> {
    let (n, k) = v.shape();
    let mut out = zeroed(n, k)?;
    if k > 0 {
        let isa = Isa::best();
        let vv = v.values();
        let partial = |rows: std::ops::Range<usize>, acc: &mut [f64]| match x {
            Block::Dense(d) => chain_dense(
                isa,
                acc,
                &d.values()[rows.start * n..rows.end * n],
                n,
                vv,
                k,
            ),
            Block::Sparse(s) => chain_sparse(isa, acc, s, rows, vv, k),
        };
        match par {
            Parallelism::Seq => partial(0..x.rows(), &mut out),
            Parallelism::Pool => out = sum_partials(x.rows(), n * k, partial),
        }
    }
    Ok(DenseBlock::from_vec_unchecked(n, k, out))
}

multiversion! {
    /// `out (n x k) += t(x) (x v)` over dense rows `x` (`n` wide).
    fn chain_dense(out: &mut [f64], x: &[f64], n: usize, v: &[f64], k: usize) {
        if n == 0 {
            return;
        }
        if k == 1 {
            // Four rows at a time: four dot products, then one pass over `out` adding all
            // four scaled rows, so `out` is loaded and stored once per four rows.
            let quads = x.chunks_exact(4 * n);
            let rest = quads.remainder();
            for q in quads {
                let (r0, q) = q.split_at(n);
                let (r1, q) = q.split_at(n);
                let (r2, r3) = q.split_at(n);
                let (s0, s1, s2, s3) = (dot(r0, v), dot(r1, v), dot(r2, v), dot(r3, v));
                for j in 0..n {
                    out[j] += (s0 * r0[j] + s1 * r1[j]) + (s2 * r2[j] + s3 * r3[j]);
                }
            }
            for row in rest.chunks_exact(n) {
                let s = dot(row, v);
                axpy(out, s, row);
            }
        } else {
            let mut s = vec![0.0f64; k];
            for row in x.chunks_exact(n) {
                s.iter_mut().for_each(|x| *x = 0.0);
                for (j, &xj) in row.iter().enumerate() {
                    axpy(&mut s, xj, &v[j * k..(j + 1) * k]);
                }
                for (j, &xj) in row.iter().enumerate() {
                    axpy(&mut out[j * k..(j + 1) * k], xj, &s);
                }
            }
        }
    }
}

multiversion! {
    /// `out (n x k) += t(x) (x v)` over the CSR rows `rows` of `x`.
    fn chain_sparse(out: &mut [f64], x: &CsrBlock, rows: std::ops::Range<usize>, v: &[f64], k: usize) {
        let mut s = vec![0.0f64; k];
        for r in rows {
            let (idx, vals) = x.row(r);
            s.iter_mut().for_each(|x| *x = 0.0);
            for (&c, &xc) in idx.iter().zip(vals) {
                axpy(&mut s, xc, &v[c * k..(c + 1) * k]);
            }
            for (&c, &xc) in idx.iter().zip(vals) {
                axpy(&mut out[c * k..(c + 1) * k], xc, &s);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::kernels::testing::{
        assert_close, assert_slices_close, block, dense, dim, naive_matmul, naive_transpose,
    };

    fn naive_tsmm(x: &Block) -> DenseBlock {
        naive_matmul(&Block::Dense(naive_transpose(x)), x)
    }

    fn naive_mmchain(x: &Block, v: &DenseBlock) -> DenseBlock {
        let xv = naive_matmul(x, &Block::Dense(v.clone()));
        naive_matmul(&Block::Dense(naive_transpose(x)), &Block::Dense(xv))
    }

    fn chain_case() -> impl Strategy<Value = (Block, DenseBlock)> {
        (
            dim(),
            dim(),
            prop_oneof![3 => Just(1usize), 1 => 0usize..=5],
        )
            .prop_flat_map(|(m, n, k)| {
                let v = prop::collection::vec(-4.0f64..4.0, n * k)
                    .prop_map(move |v| DenseBlock::new(n, k, v).unwrap());
                (block(m, n), v)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn tsmm_matches_naive(x in (dim(), dim()).prop_flat_map(|(m, n)| block(m, n))) {
            let want = naive_tsmm(&x);
            for par in [Parallelism::Seq, Parallelism::Pool] {
                assert_close(&tsmm_par(&x, par).unwrap(), &want);
            }
        }

        #[test]
        fn mmchain_matches_naive((x, v) in chain_case()) {
            let want = naive_mmchain(&x, &v);
            for par in [Parallelism::Seq, Parallelism::Pool] {
                assert_close(&mmchain_par(&x, &v, par).unwrap(), &want);
            }
        }
    }

    #[test]
    fn hand_worked_tsmm_and_mmchain() {
        // x = [1 0; 2 3; 0 4]: t(x) x = [1+4, 6; 6, 9+16] = [5 6; 6 25]
        let x = dense(3, 2, &[1.0, 0.0, 2.0, 3.0, 0.0, 4.0]);
        let sx = Block::Sparse(x.to_csr());
        for x in [&x, &sx] {
            assert_eq!(tsmm(x).unwrap().values(), &[5.0, 6.0, 6.0, 25.0]);
            assert_eq!(tsmm_seq(x).unwrap().values(), &[5.0, 6.0, 6.0, 25.0]);
            // v = [1; -1]: x v = [1, -1, -4]; t(x) (x v) = [1 - 2, -3 - 16] = [-1, -19]
            let v = DenseBlock::new(2, 1, vec![1.0, -1.0]).unwrap();
            assert_eq!(mmchain(x, &v).unwrap().values(), &[-1.0, -19.0]);
            assert_eq!(mmchain_seq(x, &v).unwrap().values(), &[-1.0, -19.0]);
        }
    }

    #[test]
    fn large_inputs_take_the_parallel_paths() {
        let x = Block::Dense(DenseBlock::from_fn(2000, 40, |i, j| {
            ((i * 7 + j * 3) % 11) as f64 - 5.0
        }));
        let v = DenseBlock::from_fn(40, 1, |i, _| i as f64 * 0.25 - 3.0);
        assert_close(&tsmm(&x).unwrap(), &naive_tsmm(&x));
        assert_close(
            &mmchain_par(&x, &v, Parallelism::Pool).unwrap(),
            &naive_mmchain(&x, &v),
        );
    }

    #[test]
    fn every_instruction_set_gives_the_baseline_chain() {
        for (n, k) in [(1usize, 1usize), (5, 1), (19, 1), (7, 3), (16, 9)] {
            let m = 11;
            let x: Vec<f64> = (0..m * n).map(|i| ((i * 7) % 13) as f64 - 6.0).collect();
            let v: Vec<f64> = (0..n * k).map(|i| ((i * 5) % 7) as f64 * 0.5).collect();
            let isas = Isa::available();
            let run = |isa| {
                let mut out = vec![0.5; n * k];
                chain_dense(isa, &mut out, &x, n, &v, k);
                out
            };
            let want = run(isas[0]);
            for &isa in &isas[1..] {
                assert_slices_close(&run(isa), &want);
            }
        }
    }

    #[test]
    fn mmchain_shape_mismatch_names_both_shapes() {
        let x = dense(3, 2, &[0.0; 6]);
        let v = DenseBlock::zeros(3, 1);
        let err = mmchain(&x, &v).unwrap_err();
        assert!(matches!(err, StorageError::ShapeMismatch { .. }));
        assert!(err.to_string().contains("3x2 vs 3x1"), "{err}");
    }
}
