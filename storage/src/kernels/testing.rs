//! Test helpers shared by the kernel tests: block strategies for proptest, naive
//! reference kernels written as plainly as possible, and tolerant comparisons.

use proptest::prelude::*;

use crate::block::{Block, CsrBlock, DenseBlock};

/// A dense block from row-major values.
pub(crate) fn dense(rows: usize, cols: usize, v: &[f64]) -> Block {
    Block::Dense(DenseBlock::new(rows, cols, v.to_vec()).unwrap())
}

/// The same cells, stored as CSR.
pub(crate) fn sparse_from_dense(b: &Block) -> Block {
    Block::Sparse(b.to_csr())
}

/// A dimension: often 0 or 1 (empty blocks, row and column vectors), otherwise small, and
/// sometimes wide enough to reach the 16-wide loops.
pub(crate) fn dim() -> impl Strategy<Value = usize> {
    prop_oneof![1 => Just(0usize), 2 => Just(1usize), 4 => 2usize..=9, 2 => 10usize..=21]
}

/// A cell value: small halves (exact arithmetic) or arbitrary floats.
fn value() -> impl Strategy<Value = f64> {
    prop_oneof![3 => (-8i32..=8).prop_map(|x| f64::from(x) * 0.5), 1 => -100.0f64..100.0]
}

/// A `rows x cols` block of random density (empty to full), stored dense or CSR
/// independently of its density, so kernels see every format/density combination.
pub(crate) fn block(rows: usize, cols: usize) -> impl Strategy<Value = Block> {
    let cells = prop::collection::vec((0.0f64..1.0, value()), rows * cols);
    (
        cells,
        prop_oneof![Just(0.0), Just(0.2), Just(0.6), Just(1.0)],
        any::<bool>(),
    )
        .prop_map(move |(cells, density, sparse)| {
            let v: Vec<f64> = cells
                .into_iter()
                .map(|(u, x)| if u < density { x } else { 0.0 })
                .collect();
            let d = DenseBlock::new(rows, cols, v).unwrap();
            if sparse {
                Block::Sparse(CsrBlock::from_dense(&d))
            } else {
                Block::Dense(d)
            }
        })
}

/// A block of any shape.
pub(crate) fn any_block() -> impl Strategy<Value = Block> {
    (dim(), dim()).prop_flat_map(|(r, c)| block(r, c))
}

/// Two blocks whose product is defined.
pub(crate) fn block_pair_for_matmul() -> impl Strategy<Value = (Block, Block)> {
    (dim(), dim(), dim()).prop_flat_map(|(m, k, n)| (block(m, k), block(k, n)))
}

/// Two blocks of the same shape.
pub(crate) fn block_pair_same_shape() -> impl Strategy<Value = (Block, Block)> {
    (dim(), dim()).prop_flat_map(|(r, c)| (block(r, c), block(r, c)))
}

/// Triple-loop `a * b` over `get`.
pub(crate) fn naive_matmul(a: &Block, b: &Block) -> DenseBlock {
    DenseBlock::from_fn(a.rows(), b.cols(), |i, j| {
        let mut s = 0.0;
        for k in 0..a.cols() {
            s += a.get(i, k) * b.get(k, j);
        }
        s
    })
}

/// Cell-by-cell transpose over `get`.
pub(crate) fn naive_transpose(a: &Block) -> DenseBlock {
    DenseBlock::from_fn(a.cols(), a.rows(), |i, j| a.get(j, i))
}

/// Asserts equal shapes and cells equal within `1e-9` of the largest magnitude in `want`
/// (NaN matches NaN; infinities must match exactly).
pub(crate) fn assert_close(got: &DenseBlock, want: &DenseBlock) {
    assert_eq!(got.shape(), want.shape(), "shapes differ");
    assert_slices_close(got.values(), want.values());
}

/// [`assert_close`] on slices.
pub(crate) fn assert_slices_close(got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "lengths differ");
    let scale = want
        .iter()
        .filter(|x| x.is_finite())
        .fold(1.0f64, |m, x| m.max(x.abs()));
    for (n, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = if w.is_nan() {
            g.is_nan()
        } else if w.is_infinite() {
            g == w
        } else {
            (g - w).abs() <= 1e-9 * scale
        };
        assert!(
            ok,
            "cell {n}: got {g}, want {w}\n got: {got:?}\nwant: {want:?}"
        );
    }
}
