//! A mutable dense block that partial results are summed into: the `cpmm` aggregation
//! (`acc += A_ik * B_kj`), `SUM` over a block column, and the partials of `tsmm`.

use crate::block::{Block, DenseBlock};
use crate::error::{Result, StorageError};

/// A dense `rows x cols` block being summed into, row-major. Unlike [`DenseBlock`] (an
/// immutable Arrow buffer) its values can be updated in place, so accumulating a product
/// or a block allocates nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct DenseAccumulator {
    rows: usize,
    cols: usize,
    values: Vec<f64>,
}

impl DenseAccumulator {
    /// A `rows x cols` accumulator holding zeros; an error if the cell count overflows.
    pub fn zeros(rows: usize, cols: usize) -> Result<Self> {
        Ok(Self {
            rows,
            cols,
            values: zeroed(rows, cols)?,
        })
    }

    /// An accumulator starting at the cells of `b` (in place when `b` is a dense block
    /// whose buffer nobody else shares).
    pub fn from_block(b: Block) -> Self {
        let (rows, cols) = b.shape();
        let values = match b {
            Block::Dense(d) => d.into_vec(),
            Block::Sparse(s) => s.to_dense().into_vec(),
        };
        Self { rows, cols, values }
    }

    /// `(rows, cols)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// The row-major values.
    pub fn values(&self) -> &[f64] {
        &self.values
    }

    /// The row-major values, for kernels that write into them.
    pub fn values_mut(&mut self) -> &mut [f64] {
        &mut self.values
    }

    /// Adds another accumulator of the same shape (merging per-thread partial sums).
    pub fn merge(&mut self, other: &DenseAccumulator) -> Result<()> {
        if self.shape() != other.shape() {
            return Err(StorageError::shape_mismatch(
                "add",
                self.shape(),
                other.shape(),
            ));
        }
        add_slices(&mut self.values, &other.values);
        Ok(())
    }

    /// The sum as a dense block (no copy).
    pub fn into_dense(self) -> DenseBlock {
        DenseBlock::from_vec_unchecked(self.rows, self.cols, self.values)
    }

    /// The sum as a block in the format [`Block::preferred_format`] picks for it.
    pub fn into_block(self) -> Block {
        Block::Dense(self.into_dense()).into_preferred_format()
    }
}

/// `acc += b`: the block sum behind both `SUM` over a block column and the `cpmm`
/// aggregation. Dense blocks add cell by cell (vectorized); sparse blocks add only their
/// non-zeros. Shapes must be equal.
///
/// ```
/// use tessera_storage::{Block, DenseBlock};
/// use tessera_storage::kernels::{add_into, DenseAccumulator};
///
/// let mut acc = DenseAccumulator::zeros(1, 2).unwrap();
/// add_into(&mut acc, &Block::Dense(DenseBlock::new(1, 2, vec![1.0, 2.0]).unwrap())).unwrap();
/// add_into(&mut acc, &Block::Dense(DenseBlock::new(1, 2, vec![0.5, 0.5]).unwrap())).unwrap();
/// assert_eq!(acc.values(), &[1.5, 2.5]);
/// ```
pub fn add_into(acc: &mut DenseAccumulator, b: &Block) -> Result<()> {
    if acc.shape() != b.shape() {
        return Err(StorageError::shape_mismatch("add", acc.shape(), b.shape()));
    }
    match b {
        Block::Dense(d) => add_slices(&mut acc.values, d.values()),
        Block::Sparse(s) => {
            let cols = acc.cols;
            for r in 0..s.rows() {
                let (idx, vals) = s.row(r);
                let out = &mut acc.values[r * cols..(r + 1) * cols];
                for (&c, &v) in idx.iter().zip(vals) {
                    out[c] += v;
                }
            }
        }
    }
    Ok(())
}

/// `y += x`, compiled for the widest vector unit the CPU has.
pub(crate) fn add_slices(y: &mut [f64], x: &[f64]) {
    add_slices_isa(super::simd::Isa::best(), y, x);
}

super::simd::multiversion! {
    fn add_slices_isa(y: &mut [f64], x: &[f64]) {
        super::simd::add_assign(y, x);
    }
}

/// `rows * cols` zeros, or an error when that many cells cannot be addressed.
pub(crate) fn zeroed(rows: usize, cols: usize) -> Result<Vec<f64>> {
    let cells = rows
        .checked_mul(cols)
        .filter(|&c| c <= isize::MAX as usize / 8)
        .ok_or_else(|| {
            StorageError::InvalidArgument(format!("a {rows}x{cols} result has too many cells"))
        })?;
    Ok(vec![0.0; cells])
}
