//! Reductions over a block: sums (whole block, per row, per column), means, min, max and
//! the non-zero count. Zeros a CSR block does not store count as cells everywhere.
//!
//! The loops run over `chunks_exact(8)` with eight independent accumulators so they
//! vectorize; summation order therefore differs from a left-to-right loop by rounding.

use super::simd::{Isa, add_assign, multiversion};
use crate::block::Block;

/// Sum of every cell; 0 for an empty block.
///
/// ```
/// use tessera_storage::{Block, DenseBlock};
/// use tessera_storage::kernels::sum;
///
/// let a = Block::Dense(DenseBlock::new(2, 2, vec![1.0, 2.0, 3.0, 4.0]).unwrap());
/// assert_eq!(sum(&a), 10.0);
/// ```
pub fn sum(a: &Block) -> f64 {
    match a {
        Block::Dense(d) => sum_slice(Isa::best(), d.values()),
        Block::Sparse(s) => sum_slice(Isa::best(), s.data()),
    }
}

/// Sum of each row (`rows` values).
pub fn row_sums(a: &Block) -> Vec<f64> {
    let isa = Isa::best();
    match a {
        Block::Dense(d) if d.cols() == 0 => vec![0.0; d.rows()],
        Block::Dense(d) => d
            .values()
            .chunks_exact(d.cols())
            .map(|row| sum_slice(isa, row))
            .collect(),
        Block::Sparse(s) => (0..s.rows()).map(|r| sum_slice(isa, s.row(r).1)).collect(),
    }
}

/// Sum of each column (`cols` values).
pub fn col_sums(a: &Block) -> Vec<f64> {
    let mut out = vec![0.0; a.cols()];
    match a {
        Block::Dense(d) => {
            let isa = Isa::best();
            if d.cols() > 0 {
                for row in d.values().chunks_exact(d.cols()) {
                    add_rows(isa, &mut out, row);
                }
            }
        }
        Block::Sparse(s) => {
            for (&c, &v) in s.indices().iter().zip(s.data()) {
                out[c] += v;
            }
        }
    }
    out
}

multiversion! {
    fn add_rows(acc: &mut [f64], row: &[f64]) {
        add_assign(acc, row);
    }
}

/// Mean of each row (`rows` values); NaN for every row of a block with no columns.
pub fn row_means(a: &Block) -> Vec<f64> {
    let cols = a.cols() as f64;
    row_sums(a).into_iter().map(|s| s / cols).collect()
}

/// Mean of each column (`cols` values); NaN for every column of a block with no rows.
pub fn col_means(a: &Block) -> Vec<f64> {
    let rows = a.rows() as f64;
    col_sums(a).into_iter().map(|s| s / rows).collect()
}

/// Smallest cell (implicit zeros of a CSR block included); NaN if any cell is NaN; `None`
/// for a block with no cells.
///
/// ```
/// use tessera_storage::{Block, DenseBlock};
/// use tessera_storage::kernels::{max, min};
///
/// let a = Block::Sparse(tessera_storage::CsrBlock::from_dense(
///     &DenseBlock::new(1, 3, vec![0.0, 5.0, 0.0]).unwrap(),
/// ));
/// assert_eq!((min(&a), max(&a)), (Some(0.0), Some(5.0)));
/// ```
pub fn min(a: &Block) -> Option<f64> {
    extreme(a, |acc, x| if x < acc { x } else { acc })
}

/// Largest cell (implicit zeros of a CSR block included); NaN if any cell is NaN; `None`
/// for a block with no cells.
pub fn max(a: &Block) -> Option<f64> {
    extreme(a, |acc, x| if x > acc { x } else { acc })
}

/// Number of non-zero cells (NaN counts as non-zero).
pub fn nnz(a: &Block) -> usize {
    a.nnz()
}

/// The extreme under `pick` of every cell, or NaN when any cell is NaN.
#[inline(always)]
fn extreme(a: &Block, pick: impl Fn(f64, f64) -> f64 + Copy) -> Option<f64> {
    let (r, c) = a.shape();
    if r == 0 || c == 0 {
        return None;
    }
    let (stored, has_zeros) = match a {
        Block::Dense(d) => (d.values(), false),
        Block::Sparse(s) => (s.data(), s.nnz() < r * c),
    };
    let mut best = if has_zeros {
        0.0
    } else {
        stored.first().copied().unwrap_or(0.0)
    };
    let mut nan = false;
    let chunks = stored.chunks_exact(8);
    let rest = chunks.remainder();
    let mut acc = [best; 8];
    let mut nans = [false; 8];
    for ch in chunks {
        for k in 0..8 {
            acc[k] = pick(acc[k], ch[k]);
            nans[k] |= ch[k].is_nan();
        }
    }
    for &x in rest {
        best = pick(best, x);
        nan |= x.is_nan();
    }
    for k in 0..8 {
        best = pick(best, acc[k]);
        nan |= nans[k];
    }
    Some(if nan { f64::NAN } else { best })
}

multiversion! {
    /// Sum with eight independent accumulators.
    fn sum_slice(v: &[f64]) -> f64 {
        let mut acc = [0.0f64; 8];
        let chunks = v.chunks_exact(8);
        let rest = chunks.remainder();
        for c in chunks {
            for k in 0..8 {
                acc[k] += c[k];
            }
        }
        let tail: f64 = rest.iter().sum();
        ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::kernels::testing::{any_block, assert_slices_close, dense};

    fn cells(a: &Block) -> Vec<f64> {
        let mut v = vec![];
        for i in 0..a.rows() {
            for j in 0..a.cols() {
                v.push(a.get(i, j));
            }
        }
        v
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn reductions_match_naive(a in any_block()) {
            let (m, n) = a.shape();
            let all = cells(&a);
            let mut total = 0.0;
            for x in &all {
                total += x;
            }
            assert_slices_close(&[sum(&a)], &[total]);
            let rows: Vec<f64> = (0..m).map(|i| (0..n).map(|j| a.get(i, j)).sum()).collect();
            let cols: Vec<f64> = (0..n).map(|j| (0..m).map(|i| a.get(i, j)).sum()).collect();
            assert_slices_close(&row_sums(&a), &rows);
            assert_slices_close(&col_sums(&a), &cols);
            let row_mean: Vec<f64> = rows.iter().map(|s| s / n as f64).collect();
            let col_mean: Vec<f64> = cols.iter().map(|s| s / m as f64).collect();
            assert_slices_close(&row_means(&a), &row_mean);
            assert_slices_close(&col_means(&a), &col_mean);
            let mut lo: Option<f64> = None;
            let mut hi: Option<f64> = None;
            for &x in &all {
                lo = Some(lo.map_or(x, |l| l.min(x)));
                hi = Some(hi.map_or(x, |h| h.max(x)));
            }
            prop_assert_eq!(min(&a), lo);
            prop_assert_eq!(max(&a), hi);
            prop_assert_eq!(nnz(&a), all.iter().filter(|x| **x != 0.0).count());
        }
    }

    #[test]
    fn hand_worked_reductions() {
        // [1 -2 0]
        // [0  0 7]
        for a in [
            dense(2, 3, &[1.0, -2.0, 0.0, 0.0, 0.0, 7.0]),
            Block::Sparse(dense(2, 3, &[1.0, -2.0, 0.0, 0.0, 0.0, 7.0]).to_csr()),
        ] {
            assert_eq!(sum(&a), 6.0);
            assert_eq!(row_sums(&a), vec![-1.0, 7.0]);
            assert_eq!(col_sums(&a), vec![1.0, -2.0, 7.0]);
            assert_eq!(row_means(&a), vec![-1.0 / 3.0, 7.0 / 3.0]);
            assert_eq!(col_means(&a), vec![0.5, -1.0, 3.5]);
            assert_eq!((min(&a), max(&a), nnz(&a)), (Some(-2.0), Some(7.0), 3));
        }
        // All cells positive and stored in CSR except none: min is the smallest stored value.
        let full = Block::Sparse(dense(1, 2, &[3.0, 4.0]).to_csr());
        assert_eq!(min(&full), Some(3.0));
        // A sparse block with implicit zeros has min 0 even if every stored value is > 0.
        let part = Block::Sparse(dense(1, 3, &[3.0, 0.0, 4.0]).to_csr());
        assert_eq!(min(&part), Some(0.0));
    }

    #[test]
    fn empty_blocks_and_nan() {
        let e = dense(0, 4, &[]);
        assert_eq!((sum(&e), min(&e), max(&e)), (0.0, None, None));
        assert_eq!(col_sums(&e), vec![0.0; 4]);
        assert!(col_means(&e).iter().all(|x| x.is_nan()));
        assert!(row_sums(&e).is_empty());
        let e = dense(3, 0, &[]);
        assert_eq!(row_sums(&e), vec![0.0; 3]);
        assert_eq!(max(&e), None);
        let v: Vec<f64> = (0..20)
            .map(|i| if i == 13 { f64::NAN } else { i as f64 })
            .collect();
        let a = dense(4, 5, &v);
        assert!(min(&a).is_some_and(f64::is_nan));
        assert!(max(&a).is_some_and(f64::is_nan));
    }
}
