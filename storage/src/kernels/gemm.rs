//! Block matrix multiply: `matmul` for one product, `matmul_into` for the `cpmm`
//! aggregation `acc += A_ik * B_kj`.
//!
//! Dense x dense goes to `faer` (blocked GEMM with run-time AVX2 / AVX-512 dispatch);
//! every product that involves a sparse block uses the loops in `sparse.rs`.

use faer::{Accum, MatMut, MatRef, Par};

use super::accumulator::{DenseAccumulator, zeroed};
use super::pool::{Parallelism, cpu_pool};
use super::sparse;
use crate::block::{Block, DenseBlock};
use crate::error::{Result, StorageError};

/// `a * b`, parallel across the CPU pool when the product is large enough
/// ([`PARALLEL_MIN_FLOPS`](super::PARALLEL_MIN_FLOPS)).
///
/// Any mix of dense and sparse operands. The result is in the format
/// [`Block::preferred_format`] picks for its non-zero count. Sparse operands contribute
/// only their stored entries, so (as in SciPy) an implicit zero times an infinity adds
/// nothing. `a.cols() != b.rows()` is a [`StorageError::ShapeMismatch`].
///
/// ```
/// use tessera_storage::{Block, DenseBlock};
/// use tessera_storage::kernels::matmul;
///
/// let a = Block::Dense(DenseBlock::new(2, 2, vec![1.0, 2.0, 3.0, 4.0]).unwrap());
/// let b = Block::Dense(DenseBlock::new(2, 1, vec![1.0, 1.0]).unwrap());
/// assert_eq!(matmul(&a, &b).unwrap().to_dense().values(), &[3.0, 7.0]);
/// ```
pub fn matmul(a: &Block, b: &Block) -> Result<Block> {
    check_inner(a, b)?;
    matmul_par(a, b, Parallelism::auto(product_flops(a, b)))
}

/// [`matmul`] on the calling thread, for callers that already run blocks in parallel.
pub fn matmul_seq(a: &Block, b: &Block) -> Result<Block> {
    check_inner(a, b)?;
    matmul_par(a, b, Parallelism::Seq)
}

/// `acc += a * b` without a temporary product: the `cpmm` aggregation. Parallel across the
/// CPU pool when the product is large enough.
///
/// `a.cols() != b.rows()`, or an accumulator that is not `a.rows() x b.cols()`, is a
/// [`StorageError::ShapeMismatch`].
pub fn matmul_into(acc: &mut DenseAccumulator, a: &Block, b: &Block) -> Result<()> {
    check_into(acc, a, b)?;
    matmul_into_par(
        acc.values_mut(),
        a,
        b,
        Parallelism::auto(product_flops(a, b)),
    );
    Ok(())
}

/// [`matmul_into`] on the calling thread, for callers that already run blocks in parallel.
pub fn matmul_into_seq(acc: &mut DenseAccumulator, a: &Block, b: &Block) -> Result<()> {
    check_into(acc, a, b)?;
    matmul_into_par(acc.values_mut(), a, b, Parallelism::Seq);
    Ok(())
}

/// Floating-point operations of `a * b`, counting only stored entries of sparse operands.
pub(crate) fn product_flops(a: &Block, b: &Block) -> f64 {
    let (m, k, n) = (a.rows() as f64, a.cols() as f64, b.cols() as f64);
    match (a, b) {
        (Block::Dense(_), Block::Dense(_)) => 2.0 * m * k * n,
        (Block::Sparse(s), Block::Dense(_)) => 2.0 * s.nnz() as f64 * n,
        (Block::Dense(_), Block::Sparse(s)) => 2.0 * m * s.nnz() as f64,
        // Each stored a_ik meets row k of b, which holds nnz(b) / k entries on average.
        (Block::Sparse(x), Block::Sparse(y)) => {
            if k == 0.0 {
                0.0
            } else {
                2.0 * x.nnz() as f64 * y.nnz() as f64 / k
            }
        }
    }
}

fn check_inner(a: &Block, b: &Block) -> Result<()> {
    if a.cols() != b.rows() {
        return Err(StorageError::shape_mismatch("matmul", a.shape(), b.shape()));
    }
    Ok(())
}

fn check_into(acc: &DenseAccumulator, a: &Block, b: &Block) -> Result<()> {
    check_inner(a, b)?;
    if acc.shape() != (a.rows(), b.cols()) {
        return Err(StorageError::shape_mismatch(
            "matmul_into",
            acc.shape(),
            (a.rows(), b.cols()),
        ));
    }
    Ok(())
}

/// The product with shapes already checked.
pub(crate) fn matmul_par(a: &Block, b: &Block, par: Parallelism) -> Result<Block> {
    let (m, n) = (a.rows(), b.cols());
    let out = match (a, b) {
        (Block::Sparse(x), Block::Sparse(y)) => Block::Sparse(sparse::spgemm(x, y, par)),
        (Block::Dense(x), Block::Dense(y)) => {
            let mut out = zeroed(m, n)?;
            // Replace, not Add: reading the fresh zero pages first would fault every page
            // twice (once to map the shared zero page, once to copy it on write).
            gemm_into(&mut out, x, y, Accum::Replace, par);
            Block::Dense(DenseBlock::from_vec_unchecked(m, n, out))
        }
        _ => {
            let mut out = zeroed(m, n)?;
            matmul_into_par(&mut out, a, b, par);
            Block::Dense(DenseBlock::from_vec_unchecked(m, n, out))
        }
    };
    Ok(out.into_preferred_format())
}

/// `out += a * b` over a row-major `a.rows() x b.cols()` slice, shapes already checked.
pub(crate) fn matmul_into_par(out: &mut [f64], a: &Block, b: &Block, par: Parallelism) {
    match (a, b) {
        (Block::Dense(x), Block::Dense(y)) => gemm_into(out, x, y, Accum::Add, par),
        (Block::Sparse(x), Block::Dense(y)) => sparse::spmm_into(out, x, y.values(), y.cols(), par),
        (Block::Dense(x), Block::Sparse(y)) => sparse::dsmm_into(out, x.values(), x.cols(), y, par),
        (Block::Sparse(x), Block::Sparse(y)) => sparse::spspmm_into(out, x, y, par),
    }
}

/// `out = a * b` (`Replace`) or `out += a * b` (`Add`) for dense blocks, through faer.
///
/// In the pool the output is cut into row panels (and column panels when there are too
/// few rows) that run as independent rayon tasks, each a single-threaded faer GEMM, rather
/// than using faer's own parallel GEMM. faer's threads meet at barriers, so one
/// descheduled thread (another query, a compaction) stalls them all, while independent
/// panels are stolen by whichever thread is free. Row panels all read the whole of `b`,
/// so concurrent tasks share its cache lines in L3 instead of each streaming its own part.
fn gemm_into(out: &mut [f64], a: &DenseBlock, b: &DenseBlock, beta: Accum, par: Parallelism) {
    let (m, k, n) = (a.rows(), a.cols(), b.cols());
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    let dst = MatMut::from_row_major_slice_mut(out, m, n);
    let lhs = MatRef::from_row_major_slice(a.values(), m, k);
    let rhs = MatRef::from_row_major_slice(b.values(), k, n);
    match par {
        Parallelism::Seq => faer::linalg::matmul::matmul(dst, beta, lhs, rhs, 1.0, Par::Seq),
        Parallelism::Pool => {
            let threads = cpu_pool().current_num_threads();
            let tasks = threads * PANELS_PER_THREAD;
            let height = (m / tasks).next_multiple_of(64).max(MIN_PANEL);
            let row_panels = m.div_ceil(height);
            let width = if row_panels >= tasks {
                n
            } else {
                (n / tasks.div_ceil(row_panels))
                    .next_multiple_of(64)
                    .max(MIN_PANEL)
            };
            if row_panels * n.div_ceil(width) < threads {
                // Too few panels to share (a long inner dimension): faer splits it.
                par.run(|| faer::linalg::matmul::matmul(dst, beta, lhs, rhs, 1.0, par.faer()));
            } else {
                cpu_pool().install(|| gemm_panels(dst, lhs, rhs, beta, (height, width)));
            }
        }
    }
}

/// Panels per thread: enough that a slow thread's share is stolen, few enough that each
/// panel is a large, efficient GEMM.
const PANELS_PER_THREAD: usize = 2;

/// Smallest panel side worth a task of its own: below it the packing and the task
/// overhead eat the gain.
const MIN_PANEL: usize = 256;

/// Halves the output with `rayon::join` (rows first, at a multiple of 64) until each part
/// is at most `height x width`, then runs each part single-threaded.
fn gemm_panels(
    dst: MatMut<'_, f64>,
    lhs: MatRef<'_, f64>,
    rhs: MatRef<'_, f64>,
    beta: Accum,
    (height, width): (usize, usize),
) {
    let (m, n) = (dst.nrows(), dst.ncols());
    if m > height {
        let mid = (m / 2).next_multiple_of(64).min(m);
        let (top, bottom) = dst.split_at_row_mut(mid);
        let (lt, lb) = lhs.split_at_row(mid);
        rayon::join(
            || gemm_panels(top, lt, rhs, beta, (height, width)),
            || gemm_panels(bottom, lb, rhs, beta, (height, width)),
        );
    } else if n > width {
        let mid = (n / 2).next_multiple_of(64).min(n);
        let (left, right) = dst.split_at_col_mut(mid);
        let (rl, rr) = rhs.split_at_col(mid);
        rayon::join(
            || gemm_panels(left, lhs, rl, beta, (height, width)),
            || gemm_panels(right, lhs, rr, beta, (height, width)),
        );
    } else {
        faer::linalg::matmul::matmul(dst, beta, lhs, rhs, 1.0, Par::Seq);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::block::CsrBlock;
    use crate::kernels::testing::{
        assert_close, block_pair_for_matmul, dense, naive_matmul, sparse_from_dense,
    };

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn matmul_matches_naive((a, b) in block_pair_for_matmul()) {
            let want = naive_matmul(&a, &b);
            for par in [Parallelism::Seq, Parallelism::Pool] {
                let got = matmul_par(&a, &b, par).unwrap();
                prop_assert_eq!(got.format(), Block::preferred_format(got.rows(), got.cols(), got.nnz()));
                assert_close(&got.to_dense(), &want);
            }
        }

        #[test]
        fn matmul_into_adds_to_what_is_there((a, b) in block_pair_for_matmul(), seed in 0.0f64..10.0) {
            let (m, n) = (a.rows(), b.cols());
            let start = DenseBlock::from_fn(m, n, |i, j| seed + i as f64 - j as f64);
            let want = naive_matmul(&a, &b);
            let want = DenseBlock::from_fn(m, n, |i, j| start.get(i, j) + want.get(i, j));
            for par in [Parallelism::Seq, Parallelism::Pool] {
                let mut acc = DenseAccumulator::from_block(Block::Dense(start.clone()));
                matmul_into_par(acc.values_mut(), &a, &b, par);
                assert_close(&acc.into_dense(), &want);
            }
        }
    }

    #[test]
    fn hand_worked_products_in_every_format_pair() {
        // [1 0 2]   [0 1]   [ 2 3]
        // [0 3 0] * [1 0] = [ 3 0]
        //           [1 1]
        let a = dense(2, 3, &[1.0, 0.0, 2.0, 0.0, 3.0, 0.0]);
        let b = dense(3, 2, &[0.0, 1.0, 1.0, 0.0, 1.0, 1.0]);
        let want = [2.0, 3.0, 3.0, 0.0];
        for a in [a.clone(), sparse_from_dense(&a)] {
            for b in [b.clone(), sparse_from_dense(&b)] {
                assert_eq!(matmul(&a, &b).unwrap().to_dense().values(), &want);
                assert_eq!(matmul_seq(&a, &b).unwrap().to_dense().values(), &want);
                let mut acc = DenseAccumulator::zeros(2, 2).unwrap();
                matmul_into(&mut acc, &a, &b).unwrap();
                matmul_into_seq(&mut acc, &a, &b).unwrap();
                assert_eq!(acc.values(), &[4.0, 6.0, 6.0, 0.0]);
            }
        }
    }

    #[test]
    fn sparse_times_sparse_stays_sparse_and_drops_cancellations() {
        // Row 0 of a * b cancels exactly: 1*1 + 1*(-1).
        let a = sparse_from_dense(&dense(3, 3, &[1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0]));
        let b = sparse_from_dense(&dense(
            3,
            3,
            &[1.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        ));
        let c = matmul(&a, &b).unwrap();
        assert_eq!(c.nnz(), 0);
        assert_eq!(c.format(), crate::block::BlockFormat::Csr);
    }

    #[test]
    fn large_products_take_the_parallel_paths() {
        // Above PARALLEL_MIN_FLOPS for the dense case; the sparse cases use the pool path.
        let a = Block::Dense(DenseBlock::from_fn(300, 200, |i, j| {
            ((i * 7 + j * 3) % 11) as f64 - 5.0
        }));
        let b = Block::Dense(DenseBlock::from_fn(200, 150, |i, j| {
            ((i * 5 + j) % 13) as f64 - 6.0
        }));
        let want = naive_matmul(&a, &b);
        assert_close(&matmul(&a, &b).unwrap().to_dense(), &want);
        let sa = Block::Sparse(CsrBlock::from_dense(&DenseBlock::from_fn(
            300,
            200,
            |i, j| {
                if (i + 3 * j) % 7 == 0 {
                    (i % 5) as f64 + 1.0
                } else {
                    0.0
                }
            },
        )));
        let sb = Block::Sparse(CsrBlock::from_dense(&DenseBlock::from_fn(
            200,
            150,
            |i, j| {
                if (2 * i + j) % 5 == 0 {
                    (j % 3) as f64 - 1.5
                } else {
                    0.0
                }
            },
        )));
        for (x, y) in [(&sa, &b), (&a, &sb), (&sa, &sb)] {
            let want = naive_matmul(x, y);
            assert_close(
                &matmul_par(x, y, Parallelism::Pool).unwrap().to_dense(),
                &want,
            );
        }
    }

    #[test]
    fn shape_mismatches_name_both_shapes() {
        let a = dense(2, 3, &[0.0; 6]);
        let b = dense(2, 3, &[0.0; 6]);
        let msg = matmul(&a, &b).unwrap_err().to_string();
        assert!(
            msg.contains("2x3 vs 2x3") && msg.contains("matmul"),
            "{msg}"
        );
        let b = dense(3, 4, &[0.0; 12]);
        let mut acc = DenseAccumulator::zeros(2, 5).unwrap();
        let err = matmul_into(&mut acc, &a, &b).unwrap_err();
        assert!(matches!(err, StorageError::ShapeMismatch { .. }));
        assert!(err.to_string().contains("2x5 vs 2x4"), "{err}");
        let err = matmul_into_seq(&mut acc, &a, &a).unwrap_err();
        assert!(err.to_string().contains("2x3 vs 2x3"), "{err}");
    }
}
