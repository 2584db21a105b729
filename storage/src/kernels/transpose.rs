//! `t(a)`: dense blocks through cache-sized tiles, CSR blocks by a counting sort on
//! column index (which leaves every output row sorted).

use crate::block::{Block, CsrBlock, DenseBlock};

/// Tile edge for the dense transpose: a 32 x 32 tile of `f64` is 8 KiB, so a source and a
/// destination tile sit in L1 together.
const TILE: usize = 32;

/// `t(a)`, in the same format as `a` (transposing keeps the density).
///
/// ```
/// use tessera_storage::{Block, DenseBlock};
/// use tessera_storage::kernels::transpose;
///
/// let a = Block::Dense(DenseBlock::new(2, 3, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap());
/// assert_eq!(transpose(&a).to_dense().values(), &[1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
/// ```
pub fn transpose(a: &Block) -> Block {
    match a {
        Block::Dense(d) => Block::Dense(transpose_dense(d)),
        Block::Sparse(s) => Block::Sparse(transpose_csr(s)),
    }
}

fn transpose_dense(a: &DenseBlock) -> DenseBlock {
    let (m, n) = a.shape();
    let src = a.values();
    let mut out = vec![0.0f64; m * n];
    for i0 in (0..m).step_by(TILE) {
        for j0 in (0..n).step_by(TILE) {
            for i in i0..(i0 + TILE).min(m) {
                let row = &src[i * n..(i + 1) * n];
                for j in j0..(j0 + TILE).min(n) {
                    out[j * m + i] = row[j];
                }
            }
        }
    }
    DenseBlock::from_vec_unchecked(n, m, out)
}

fn transpose_csr(a: &CsrBlock) -> CsrBlock {
    let (m, n) = a.shape();
    let indices = a.indices();
    // Count entries per column, then turn counts into output row offsets.
    let mut indptr = vec![0usize; n + 1];
    for &c in indices {
        indptr[c + 1] += 1;
    }
    for c in 0..n {
        indptr[c + 1] += indptr[c];
    }
    let mut next = indptr[..n].to_vec();
    let mut out_idx = vec![0usize; indices.len()];
    let mut out_val = vec![0.0f64; indices.len()];
    // Rows in increasing order, so each output row receives its columns sorted.
    for r in 0..m {
        let (idx, vals) = a.row(r);
        for (&c, &v) in idx.iter().zip(vals) {
            out_idx[next[c]] = r;
            out_val[next[c]] = v;
            next[c] += 1;
        }
    }
    // Valid by construction: offsets from counts, rows sorted, no zeros added.
    CsrBlock::from_sprs(sprs::CsMat::new((n, m), indptr, out_idx, out_val))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::kernels::testing::{any_block, assert_close, naive_transpose};

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn transpose_matches_naive_and_keeps_format(a in any_block()) {
            let t = transpose(&a);
            prop_assert_eq!(t.format(), a.format());
            prop_assert_eq!(t.nnz(), a.nnz());
            assert_close(&t.to_dense(), &naive_transpose(&a));
            prop_assert!(transpose(&t).same_cells(&a));
        }
    }

    #[test]
    fn transposes_across_tile_edges() {
        let a = Block::Dense(DenseBlock::from_fn(70, 33, |i, j| (i * 100 + j) as f64));
        let t = transpose(&a);
        assert_eq!(t.shape(), (33, 70));
        assert_eq!(t.get(32, 69), 6932.0);
        assert_close(&t.to_dense(), &naive_transpose(&a));
    }
}
