//! Cell-by-cell operations: binary ops between a block and a block, a scalar, a row vector
//! or a column vector; unary ops and `pow`.
//!
//! Sparsity is kept exactly where IEEE arithmetic keeps zeros: a CSR operand's implicit
//! zeros are skipped only when the op maps every one of them to zero (`X * 2`, `X * Y`
//! with finite `Y`, `abs`, `sqrt`, `pow(X, 2)`, `X + Y` with both sparse). Otherwise the
//! result is computed densely, so `X / 0` turns every zero into NaN and `exp(X)` every
//! zero into 1. Results come back in the format [`Block::preferred_format`] picks.

use crate::block::{Block, CsrBlock, DenseBlock};
use crate::error::{Result, StorageError};

/// A binary cell-by-cell operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum BinaryOp {
    /// `a + b`.
    Add,
    /// `a - b`.
    Sub,
    /// `a * b`.
    Mul,
    /// `a / b` (IEEE: `x / 0` is ±inf, `0 / 0` is NaN).
    Div,
    /// The smaller of `a` and `b`; NaN if either is NaN (as NumPy's `minimum`).
    Min,
    /// The larger of `a` and `b`; NaN if either is NaN (as NumPy's `maximum`).
    Max,
    /// `a` to the power `b` (C's `pow`: `x^0 = 1` for every `x`).
    Pow,
}

impl BinaryOp {
    /// The operation on one pair of cells.
    #[inline]
    pub fn apply(self, a: f64, b: f64) -> f64 {
        match self {
            BinaryOp::Add => a + b,
            BinaryOp::Sub => a - b,
            BinaryOp::Mul => a * b,
            BinaryOp::Div => a / b,
            BinaryOp::Min => min_nan(a, b),
            BinaryOp::Max => max_nan(a, b),
            BinaryOp::Pow => a.powf(b),
        }
    }

    /// The lower-case name used in error messages (`add`, `div`, ...).
    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
            BinaryOp::Min => "min",
            BinaryOp::Max => "max",
            BinaryOp::Pow => "pow",
        }
    }
}

#[inline(always)]
pub(super) fn min_nan(a: f64, b: f64) -> f64 {
    if a < b {
        a
    } else if b <= a {
        b
    } else {
        f64::NAN
    }
}

#[inline(always)]
pub(super) fn max_nan(a: f64, b: f64) -> f64 {
    if a > b {
        a
    } else if b >= a {
        b
    } else {
        f64::NAN
    }
}

/// The right-hand side of a binary operation, broadcast over the left block's cells.
#[derive(Debug, Clone, Copy)]
pub enum Operand<'a> {
    /// A block of the same shape.
    Block(&'a Block),
    /// One value for every cell.
    Scalar(f64),
    /// One value per column (`cols` of them), the same for every row.
    RowVector(&'a [f64]),
    /// One value per row (`rows` of them), the same for every column.
    ColVector(&'a [f64]),
}

/// `op(a, b)` cell by cell, broadcasting a scalar or vector `b`.
///
/// A block of another shape, a row vector whose length is not `a.cols()` or a column
/// vector whose length is not `a.rows()` is a [`StorageError::ShapeMismatch`].
///
/// ```
/// use tessera_storage::{Block, DenseBlock};
/// use tessera_storage::kernels::{elementwise, BinaryOp, Operand};
///
/// let a = Block::Dense(DenseBlock::new(2, 2, vec![1.0, 2.0, 3.0, 4.0]).unwrap());
/// let c = elementwise(BinaryOp::Sub, &a, Operand::RowVector(&[1.0, 2.0])).unwrap();
/// assert_eq!(c.to_dense().values(), &[0.0, 0.0, 2.0, 2.0]);
/// ```
pub fn elementwise(op: BinaryOp, a: &Block, b: Operand<'_>) -> Result<Block> {
    check_operand(op.name(), a, b)?;
    Ok(match op {
        BinaryOp::Add => binary(|x, y| x + y, a, b),
        BinaryOp::Sub => binary(|x, y| x - y, a, b),
        BinaryOp::Mul => binary(|x, y| x * y, a, b),
        BinaryOp::Div => binary(|x, y| x / y, a, b),
        BinaryOp::Min => binary(min_nan, a, b),
        BinaryOp::Max => binary(max_nan, a, b),
        BinaryOp::Pow => binary(f64::powf, a, b),
    })
}

fn check_operand(name: &'static str, a: &Block, b: Operand<'_>) -> Result<()> {
    let (m, n) = a.shape();
    match b {
        Operand::Block(b) if b.shape() != a.shape() => {
            Err(StorageError::shape_mismatch(name, a.shape(), b.shape()))
        }
        Operand::RowVector(v) if v.len() != n => {
            Err(StorageError::shape_mismatch(name, a.shape(), (1, v.len())))
        }
        Operand::ColVector(v) if v.len() != m => {
            Err(StorageError::shape_mismatch(name, a.shape(), (v.len(), 1)))
        }
        _ => Ok(()),
    }
}

/// `op(s, a)` cell by cell: the scalar on the left, as in `1 - X` or `2 / X`.
///
/// ```
/// use tessera_storage::{Block, DenseBlock};
/// use tessera_storage::kernels::{scalar_elementwise_left, BinaryOp};
///
/// let a = Block::Dense(DenseBlock::new(1, 2, vec![1.0, 4.0]).unwrap());
/// let c = scalar_elementwise_left(BinaryOp::Div, 2.0, &a);
/// assert_eq!(c.to_dense().values(), &[2.0, 0.5]);
/// ```
pub fn scalar_elementwise_left(op: BinaryOp, s: f64, a: &Block) -> Block {
    match op {
        BinaryOp::Add => binary(|x, y| y + x, a, Operand::Scalar(s)),
        BinaryOp::Sub => binary(|x, y| y - x, a, Operand::Scalar(s)),
        BinaryOp::Mul => binary(|x, y| y * x, a, Operand::Scalar(s)),
        BinaryOp::Div => binary(|x, y| y / x, a, Operand::Scalar(s)),
        BinaryOp::Min => binary(|x, y| min_nan(y, x), a, Operand::Scalar(s)),
        BinaryOp::Max => binary(|x, y| max_nan(y, x), a, Operand::Scalar(s)),
        BinaryOp::Pow => binary(|x, y| y.powf(x), a, Operand::Scalar(s)),
    }
}

/// The shared body: `f(a_cell, b_cell)` for every cell, skipping the implicit zeros of a
/// CSR side only where `f` maps all of them to zero. Shapes are already checked.
#[inline(always)]
fn binary(f: impl Fn(f64, f64) -> f64 + Copy, a: &Block, b: Operand<'_>) -> Block {
    let (m, n) = a.shape();
    let out = match (a, b) {
        (Block::Dense(d), Operand::Scalar(s)) => Block::Dense(dense_from(
            m,
            n,
            d.values().iter().map(|&x| f(x, s)).collect(),
        )),
        (Block::Dense(d), Operand::RowVector(v)) => {
            let mut out = Vec::with_capacity(m * n);
            for row in d.values().chunks_exact(n.max(1)) {
                out.extend(row.iter().zip(v).map(|(&x, &y)| f(x, y)));
            }
            Block::Dense(dense_from(m, n, out))
        }
        (Block::Dense(d), Operand::ColVector(v)) => {
            let mut out = Vec::with_capacity(m * n);
            if n > 0 {
                for (row, &y) in d.values().chunks_exact(n).zip(v) {
                    out.extend(row.iter().map(|&x| f(x, y)));
                }
            }
            Block::Dense(dense_from(m, n, out))
        }
        (Block::Dense(x), Operand::Block(Block::Dense(y))) => {
            let out = x
                .values()
                .iter()
                .zip(y.values())
                .map(|(&x, &y)| f(x, y))
                .collect();
            Block::Dense(dense_from(m, n, out))
        }
        (Block::Dense(x), Operand::Block(Block::Sparse(y))) => {
            let xv = x.values();
            if xv.iter().all(|&x| f(x, 0.0) == 0.0) {
                Block::Sparse(map_stored(y, |r, c, yv| f(xv[r * n + c], yv)))
            } else {
                let out = xv.iter().map(|&x| f(x, 0.0)).collect();
                Block::Dense(overwrite_stored(m, n, out, y, |r, c, yv| {
                    f(xv[r * n + c], yv)
                }))
            }
        }

        (Block::Sparse(x), Operand::Scalar(s)) => {
            let z = f(0.0, s);
            if z == 0.0 {
                Block::Sparse(map_stored(x, |_, _, xv| f(xv, s)))
            } else {
                Block::Dense(overwrite_stored(m, n, vec![z; m * n], x, |_, _, xv| {
                    f(xv, s)
                }))
            }
        }
        (Block::Sparse(x), Operand::RowVector(v)) => {
            if v.iter().all(|&y| f(0.0, y) == 0.0) {
                Block::Sparse(map_stored(x, |_, c, xv| f(xv, v[c])))
            } else {
                let zero_row: Vec<f64> = v.iter().map(|&y| f(0.0, y)).collect();
                let out = zero_row.repeat(m);
                Block::Dense(overwrite_stored(m, n, out, x, |_, c, xv| f(xv, v[c])))
            }
        }
        (Block::Sparse(x), Operand::ColVector(v)) => {
            if v.iter().all(|&y| f(0.0, y) == 0.0) {
                Block::Sparse(map_stored(x, |r, _, xv| f(xv, v[r])))
            } else {
                let mut out = Vec::with_capacity(m * n);
                for &y in v {
                    out.extend(std::iter::repeat_n(f(0.0, y), n));
                }
                Block::Dense(overwrite_stored(m, n, out, x, |r, _, xv| f(xv, v[r])))
            }
        }
        (Block::Sparse(x), Operand::Block(Block::Dense(y))) => {
            let yv = y.values();
            if yv.iter().all(|&y| f(0.0, y) == 0.0) {
                Block::Sparse(map_stored(x, |r, c, xv| f(xv, yv[r * n + c])))
            } else {
                let out = yv.iter().map(|&y| f(0.0, y)).collect();
                Block::Dense(overwrite_stored(m, n, out, x, |r, c, xv| {
                    f(xv, yv[r * n + c])
                }))
            }
        }
        (Block::Sparse(x), Operand::Block(Block::Sparse(y))) => {
            if f(0.0, 0.0) == 0.0 {
                Block::Sparse(union(x, y, f))
            } else {
                let (xd, yd) = (x.to_dense(), y.to_dense());
                let out = xd
                    .values()
                    .iter()
                    .zip(yd.values())
                    .map(|(&x, &y)| f(x, y))
                    .collect();
                Block::Dense(dense_from(m, n, out))
            }
        }
    };
    out.into_preferred_format()
}

fn dense_from(m: usize, n: usize, v: Vec<f64>) -> DenseBlock {
    DenseBlock::from_vec_unchecked(m, n, v)
}

/// The same sparsity pattern with `g(r, c, value)` stored; entries that become zero are
/// dropped.
fn map_stored(x: &CsrBlock, g: impl Fn(usize, usize, f64) -> f64) -> CsrBlock {
    let mut data = Vec::with_capacity(x.nnz());
    for r in 0..x.rows() {
        let (idx, vals) = x.row(r);
        data.extend(idx.iter().zip(vals).map(|(&c, &v)| g(r, c, v)));
    }
    let (indptr, indices) = (x.indptr().to_vec(), x.indices().to_vec());
    // Valid: the structure is copied from a valid block.
    CsrBlock::from_sprs(sprs::CsMat::new(x.shape(), indptr, indices, data))
}

/// `out` (the values every implicit zero maps to) with each stored cell of `x` replaced
/// by `g(r, c, value)`.
fn overwrite_stored(
    m: usize,
    n: usize,
    mut out: Vec<f64>,
    x: &CsrBlock,
    g: impl Fn(usize, usize, f64) -> f64,
) -> DenseBlock {
    for r in 0..x.rows() {
        let (idx, vals) = x.row(r);
        for (&c, &v) in idx.iter().zip(vals) {
            out[r * n + c] = g(r, c, v);
        }
    }
    dense_from(m, n, out)
}

/// `f` over the union of two CSR patterns (`f(0, 0)` must be 0), merging sorted rows.
fn union(x: &CsrBlock, y: &CsrBlock, f: impl Fn(f64, f64) -> f64) -> CsrBlock {
    let mut indptr = Vec::with_capacity(x.rows() + 1);
    let mut indices = Vec::with_capacity(x.nnz().max(y.nnz()));
    let mut data = Vec::with_capacity(x.nnz().max(y.nnz()));
    indptr.push(0);
    for r in 0..x.rows() {
        let ((xi, xv), (yi, yv)) = (x.row(r), y.row(r));
        let (mut p, mut q) = (0, 0);
        while p < xi.len() || q < yi.len() {
            let (c, v) = match (xi.get(p), yi.get(q)) {
                (Some(&a), Some(&b)) if a == b => {
                    p += 1;
                    q += 1;
                    (a, f(xv[p - 1], yv[q - 1]))
                }
                (Some(&a), Some(&b)) if a < b => {
                    p += 1;
                    (a, f(xv[p - 1], 0.0))
                }
                (Some(&a), None) => {
                    p += 1;
                    (a, f(xv[p - 1], 0.0))
                }
                (_, Some(&b)) => {
                    q += 1;
                    (b, f(0.0, yv[q - 1]))
                }
                (None, None) => break,
            };
            if v != 0.0 {
                indices.push(c);
                data.push(v);
            }
        }
        indptr.push(indices.len());
    }
    // Valid: merged rows are sorted, columns come from valid blocks of the same shape.
    CsrBlock::from_sprs(sprs::CsMat::new(x.shape(), indptr, indices, data))
}

/// A unary cell-by-cell operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum UnaryOp {
    /// `|x|`.
    Abs,
    /// `sqrt(x)` (NaN for negative `x`).
    Sqrt,
    /// `e^x`.
    Exp,
    /// Natural logarithm (`log 0 = -inf`, NaN for negative `x`).
    Log,
    /// `-x`.
    Neg,
}

impl UnaryOp {
    /// The operation on one cell.
    #[inline]
    pub fn apply(self, x: f64) -> f64 {
        match self {
            UnaryOp::Abs => x.abs(),
            UnaryOp::Sqrt => x.sqrt(),
            UnaryOp::Exp => x.exp(),
            UnaryOp::Log => x.ln(),
            UnaryOp::Neg => -x,
        }
    }
}

/// `op(x)` for every cell. `abs`, `sqrt` and `neg` keep a CSR block sparse; `exp` and
/// `log` map zero to 1 and -inf, so their results are dense.
///
/// ```
/// use tessera_storage::{Block, DenseBlock};
/// use tessera_storage::kernels::{unary, UnaryOp};
///
/// let a = Block::Dense(DenseBlock::new(1, 2, vec![-4.0, 9.0]).unwrap());
/// assert_eq!(unary(UnaryOp::Abs, &a).to_dense().values(), &[4.0, 9.0]);
/// ```
pub fn unary(op: UnaryOp, a: &Block) -> Block {
    match op {
        UnaryOp::Abs => map_cells(a, f64::abs),
        UnaryOp::Sqrt => map_cells(a, f64::sqrt),
        UnaryOp::Exp => map_cells(a, f64::exp),
        UnaryOp::Log => map_cells(a, f64::ln),
        UnaryOp::Neg => map_cells(a, |x| -x),
    }
}

/// `x^p` for every cell: sparse stays sparse for `p > 0` (`0^p = 0`); `p = 0` gives ones
/// and `p < 0` gives infinities at the zeros, both dense.
///
/// ```
/// use tessera_storage::{Block, DenseBlock};
/// use tessera_storage::kernels::pow;
///
/// let a = Block::Dense(DenseBlock::new(1, 2, vec![3.0, 0.5]).unwrap());
/// assert_eq!(pow(&a, 2.0).to_dense().values(), &[9.0, 0.25]);
/// ```
pub fn pow(a: &Block, p: f64) -> Block {
    if p == 2.0 {
        // The common case (squares in sums of squares): one multiply, no libm call.
        map_cells(a, |x| x * x)
    } else {
        map_cells(a, |x| x.powf(p))
    }
}

/// `f` over every cell, keeping a CSR block sparse when `f(0) == 0`.
#[inline(always)]
fn map_cells(a: &Block, f: impl Fn(f64) -> f64) -> Block {
    let (m, n) = a.shape();
    let out = match a {
        Block::Dense(d) => {
            Block::Dense(dense_from(m, n, d.values().iter().map(|&x| f(x)).collect()))
        }
        Block::Sparse(s) => {
            let z = f(0.0);
            if z == 0.0 {
                Block::Sparse(map_stored(s, |_, _, x| f(x)))
            } else {
                Block::Dense(overwrite_stored(m, n, vec![z; m * n], s, |_, _, x| f(x)))
            }
        }
    };
    out.into_preferred_format()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::kernels::testing::{
        any_block, assert_close, block, block_pair_same_shape, dense, dim,
    };

    const BINARY: [BinaryOp; 7] = [
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Min,
        BinaryOp::Max,
        BinaryOp::Pow,
    ];
    const UNARY: [UnaryOp; 5] = [
        UnaryOp::Abs,
        UnaryOp::Sqrt,
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Neg,
    ];

    /// The reference: every cell through `BinaryOp::apply`, written out plainly.
    fn naive(op: BinaryOp, a: &Block, b: impl Fn(usize, usize) -> f64) -> DenseBlock {
        DenseBlock::from_fn(a.rows(), a.cols(), |i, j| op.apply(a.get(i, j), b(i, j)))
    }

    fn check_format(b: &Block) {
        assert_eq!(
            b.format(),
            Block::preferred_format(b.rows(), b.cols(), b.nnz())
        );
    }

    fn scalar() -> impl Strategy<Value = f64> {
        prop_oneof![
            Just(0.0),
            Just(-0.0),
            Just(2.0),
            Just(-1.5),
            Just(f64::INFINITY),
            Just(f64::NAN),
            -5.0f64..5.0
        ]
    }

    fn vector(len: usize) -> impl Strategy<Value = Vec<f64>> {
        prop::collection::vec(
            prop_oneof![2 => Just(0.0), 1 => Just(f64::INFINITY), 4 => -3.0f64..3.0],
            len,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn block_block_matches_naive((a, b) in block_pair_same_shape()) {
            for op in BINARY {
                let got = elementwise(op, &a, Operand::Block(&b)).unwrap();
                check_format(&got);
                assert_close(&got.to_dense(), &naive(op, &a, |i, j| b.get(i, j)));
            }
        }

        #[test]
        fn scalar_both_sides_matches_naive(a in any_block(), s in scalar()) {
            for op in BINARY {
                let got = elementwise(op, &a, Operand::Scalar(s)).unwrap();
                check_format(&got);
                assert_close(&got.to_dense(), &naive(op, &a, |_, _| s));
                let got = scalar_elementwise_left(op, s, &a);
                check_format(&got);
                let want = DenseBlock::from_fn(a.rows(), a.cols(), |i, j| op.apply(s, a.get(i, j)));
                assert_close(&got.to_dense(), &want);
            }
        }

        #[test]
        fn row_and_col_vectors_match_naive(
            (a, row, col) in (dim(), dim()).prop_flat_map(|(m, n)| (block(m, n), vector(n), vector(m)))
        ) {
            for op in BINARY {
                let got = elementwise(op, &a, Operand::RowVector(&row)).unwrap();
                check_format(&got);
                assert_close(&got.to_dense(), &naive(op, &a, |_, j| row[j]));
                let got = elementwise(op, &a, Operand::ColVector(&col)).unwrap();
                check_format(&got);
                assert_close(&got.to_dense(), &naive(op, &a, |i, _| col[i]));
            }
        }

        #[test]
        fn unary_and_pow_match_naive(a in any_block(), p in scalar()) {
            for op in UNARY {
                let got = unary(op, &a);
                check_format(&got);
                let want = DenseBlock::from_fn(a.rows(), a.cols(), |i, j| op.apply(a.get(i, j)));
                assert_close(&got.to_dense(), &want);
            }
            let got = pow(&a, p);
            check_format(&got);
            assert_close(&got.to_dense(), &naive(BinaryOp::Pow, &a, |_, _| p));
        }
    }

    #[test]
    fn zeros_follow_ieee_in_sparse_blocks() {
        // 1 of 4 cells stored: CSR.
        let x = Block::Sparse(dense(2, 2, &[0.0, 3.0, 0.0, 0.0]).to_csr());
        let div0 = elementwise(BinaryOp::Div, &x, Operand::Scalar(0.0))
            .unwrap()
            .to_dense();
        assert!(div0.get(0, 0).is_nan() && div0.get(1, 1).is_nan());
        assert_eq!(div0.get(0, 1), f64::INFINITY);
        let times_inf = elementwise(BinaryOp::Mul, &x, Operand::Scalar(f64::INFINITY)).unwrap();
        assert!(times_inf.get(0, 0).is_nan());
        let log = unary(UnaryOp::Log, &x);
        assert_eq!(log.get(1, 0), f64::NEG_INFINITY);
        assert_eq!(unary(UnaryOp::Exp, &x).get(1, 1), 1.0);
        let x = Block::Sparse(dense(1, 3, &[0.0, 0.0, -3.0]).to_csr());
        assert_eq!(
            scalar_elementwise_left(BinaryOp::Sub, 1.0, &x)
                .to_dense()
                .values(),
            &[1.0, 1.0, 4.0]
        );
        // A sparse block times a dense one with an infinity where the sparse one has an
        // implicit zero: 0 * inf is NaN, so the result cannot skip that zero.
        let y = dense(1, 3, &[f64::INFINITY, 2.0, 2.0]);
        for (l, r) in [(&x, &y), (&y, &x)] {
            let p = elementwise(BinaryOp::Mul, l, Operand::Block(r))
                .unwrap()
                .to_dense();
            assert!(p.get(0, 0).is_nan());
            assert_eq!((p.get(0, 1), p.get(0, 2)), (0.0, -6.0));
        }
    }

    #[test]
    fn zero_preserving_ops_keep_sparsity() {
        let sx = Block::Sparse(dense(2, 4, &[0.0, 2.0, 0.0, 0.0, 0.0, 0.0, -1.0, 0.0]).to_csr());
        let sy = Block::Sparse(dense(2, 4, &[0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 5.0]).to_csr());
        let dy = Block::Dense(sy.to_dense());
        let fmt = crate::block::BlockFormat::Csr;
        assert_eq!(
            elementwise(BinaryOp::Mul, &sx, Operand::Scalar(3.0))
                .unwrap()
                .format(),
            fmt
        );
        assert_eq!(
            elementwise(BinaryOp::Mul, &sx, Operand::Block(&dy))
                .unwrap()
                .format(),
            fmt
        );
        assert_eq!(
            elementwise(BinaryOp::Mul, &dy, Operand::Block(&sx))
                .unwrap()
                .format(),
            fmt
        );
        let sum = elementwise(BinaryOp::Add, &sx, Operand::Block(&sy)).unwrap();
        assert_eq!((sum.format(), sum.nnz()), (fmt, 3));
        assert_eq!(
            sum.to_dense().values(),
            &[0.0, 3.0, 0.0, 0.0, 0.0, 0.0, -1.0, 5.0]
        );
        for op in [UnaryOp::Abs, UnaryOp::Sqrt, UnaryOp::Neg] {
            assert_eq!(unary(op, &sx).format(), fmt);
        }
        assert_eq!(pow(&sx, 3.0).format(), fmt);
        assert_eq!(pow(&sx, 0.0).to_dense().values(), &[1.0; 8]);
    }

    #[test]
    fn shape_mismatches_name_both_shapes() {
        let a = dense(2, 3, &[1.0; 6]);
        let b = dense(3, 2, &[1.0; 6]);
        let err = elementwise(BinaryOp::Add, &a, Operand::Block(&b)).unwrap_err();
        assert!(matches!(err, StorageError::ShapeMismatch { .. }));
        assert_eq!(err.to_string(), "shape mismatch in add: 2x3 vs 3x2");
        let err = elementwise(BinaryOp::Mul, &a, Operand::RowVector(&[1.0, 2.0])).unwrap_err();
        assert_eq!(err.to_string(), "shape mismatch in mul: 2x3 vs 1x2");
        let err = elementwise(BinaryOp::Div, &a, Operand::ColVector(&[1.0, 2.0, 3.0])).unwrap_err();
        assert_eq!(err.to_string(), "shape mismatch in div: 2x3 vs 3x1");
    }
}
