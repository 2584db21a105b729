//! Blocks: the `r x c` tiles an array is cut into.
//!
//! A block is dense (row-major `f64`, [`DenseBlock`]) or sparse (CSR through `sprs`,
//! [`CsrBlock`]), chosen per block by its density: below [`SPARSE_THRESHOLD`] non-zeros
//! per cell a block is stored sparse. Cells become blocks through [`CooBuilder`], and
//! blocks list their cells through [`Block::for_each_nonzero`] (both in `cells.rs`).

mod batch;
mod cells;
mod csr;
mod dense;

pub use batch::{
    BLOCK_COLS, BLOCK_FIELD_COUNT, BLOCK_INDICES, BLOCK_INDPTR, BLOCK_NNZ, BLOCK_ROWS,
    BLOCK_VALUES, BlockColumns, BlockColumnsBuilder, block_fields,
};
pub use cells::{CooBuilder, Duplicates};
pub use csr::CsrBlock;
pub use dense::DenseBlock;

/// Whether a cell with value `v` is stored: every value that is not zero, NaN
/// included. Both zeros are zero, as in NumPy's `count_nonzero` and SciPy's sparse
/// matrices: a `-0.0` is not a stored cell (else every `0 * -x` of an elementwise
/// product would be one, and `count(*)` would disagree with NumPy), and it loads,
/// lists and exports as `0.0`.
///
/// ```
/// use tessera_storage::is_stored;
/// assert!(!is_stored(0.0) && !is_stored(-0.0));
/// assert!(is_stored(f64::NAN) && is_stored(1.5));
/// ```
pub fn is_stored(v: f64) -> bool {
    v != 0.0
}

/// Density below which a block is stored as CSR: SystemDS's sparsity turn point.
///
/// A CSR cell costs 16 bytes (value and column index) against 8 for a dense cell, so
/// CSR stops saving space at density 0.5; 0.4 also keeps sparse kernels on the side
/// of the break-even where skipping zeros still beats dense SIMD loops.
pub const SPARSE_THRESHOLD: f64 = 0.4;

/// Storage format of a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum BlockFormat {
    /// Row-major `f64` values.
    Dense,
    /// Compressed sparse rows.
    Csr,
}

/// A dense or sparse tile; every block knows its shape and non-zero count.
#[derive(Debug, Clone, PartialEq)]
pub enum Block {
    /// Row-major values.
    Dense(DenseBlock),
    /// Compressed sparse rows.
    Sparse(CsrBlock),
}

impl Block {
    /// `(rows, cols)`.
    pub fn shape(&self) -> (usize, usize) {
        match self {
            Block::Dense(d) => d.shape(),
            Block::Sparse(s) => s.shape(),
        }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.shape().0
    }

    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.shape().1
    }

    /// Number of non-zero cells.
    pub fn nnz(&self) -> usize {
        match self {
            Block::Dense(d) => d.nnz(),
            Block::Sparse(s) => s.nnz(),
        }
    }

    /// Non-zeros per cell, in `[0, 1]`; 0 for an empty shape.
    pub fn density(&self) -> f64 {
        let (r, c) = self.shape();
        let cells = r as f64 * c as f64;
        if cells == 0.0 {
            0.0
        } else {
            self.nnz() as f64 / cells
        }
    }

    /// The format this block is stored in.
    pub fn format(&self) -> BlockFormat {
        match self {
            Block::Dense(_) => BlockFormat::Dense,
            Block::Sparse(_) => BlockFormat::Csr,
        }
    }

    /// The format a block of this shape and non-zero count should be stored in.
    pub fn preferred_format(rows: usize, cols: usize, nnz: usize) -> BlockFormat {
        let cells = rows as f64 * cols as f64;
        if cells > 0.0 && (nnz as f64) < SPARSE_THRESHOLD * cells {
            BlockFormat::Csr
        } else {
            BlockFormat::Dense
        }
    }

    /// Value at `(r, c)`; zero where a sparse block stores nothing.
    ///
    /// # Panics
    /// If `(r, c)` is outside the block (a bug in the caller, never user input).
    pub fn get(&self, r: usize, c: usize) -> f64 {
        match self {
            Block::Dense(d) => d.get(r, c),
            Block::Sparse(s) => s.get(r, c),
        }
    }

    /// A dense copy (or the block itself, shared, if already dense).
    pub fn to_dense(&self) -> DenseBlock {
        match self {
            Block::Dense(d) => d.clone(),
            Block::Sparse(s) => s.to_dense(),
        }
    }

    /// A CSR copy (or the block itself if already sparse).
    pub fn to_csr(&self) -> CsrBlock {
        match self {
            Block::Dense(d) => CsrBlock::from_dense(d),
            Block::Sparse(s) => s.clone(),
        }
    }

    /// Converts to the format [`Block::preferred_format`] picks for this block.
    pub fn into_preferred_format(self) -> Block {
        let (r, c) = self.shape();
        match (Self::preferred_format(r, c, self.nnz()), self) {
            (BlockFormat::Csr, Block::Dense(d)) => Block::Sparse(CsrBlock::from_dense(&d)),
            (BlockFormat::Dense, Block::Sparse(s)) => Block::Dense(s.to_dense()),
            (_, b) => b,
        }
    }

    /// True when both blocks hold the same cells, whatever their formats.
    pub fn same_cells(&self, other: &Block) -> bool {
        self.shape() == other.shape() && self.to_dense().values() == other.to_dense().values()
    }
}

impl From<DenseBlock> for Block {
    fn from(d: DenseBlock) -> Self {
        Block::Dense(d)
    }
}

impl From<CsrBlock> for Block {
    fn from(s: CsrBlock) -> Self {
        Block::Sparse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_follows_the_threshold_and_round_trips() {
        // 2 of 6 cells: density 0.33 < 0.4 -> CSR.
        let d = DenseBlock::new(2, 3, vec![0.0, 1.5, 0.0, 0.0, 0.0, -2.0]).unwrap();
        let b = Block::Dense(d.clone()).into_preferred_format();
        assert_eq!(b.format(), BlockFormat::Csr);
        assert_eq!(b.nnz(), 2);
        assert_eq!(b.get(0, 1), 1.5);
        assert_eq!(b.get(1, 2), -2.0);
        assert_eq!(b.get(1, 1), 0.0);
        assert_eq!(b.to_dense(), d);
        // 3 of 6: density 0.5 -> dense.
        let d = DenseBlock::new(2, 3, vec![1.0, 1.0, 0.0, 0.0, 0.0, 1.0]).unwrap();
        assert_eq!(
            Block::Sparse(CsrBlock::from_dense(&d)).into_preferred_format(),
            Block::Dense(d)
        );
    }

    #[test]
    fn nonzeros_are_visited_in_row_order() {
        let mut coo = CooBuilder::new(3, 3, Duplicates::Sum);
        coo.push(2, 0, 3.0).unwrap();
        coo.push(0, 2, 1.0).unwrap();
        coo.push(0, 2, 1.0).unwrap(); // duplicates are summed
        coo.push(1, 1, 0.0).unwrap(); // explicit zeros are not stored
        let b = coo.build();
        let mut seen = vec![];
        b.for_each_nonzero(|r, c, v| seen.push((r, c, v)));
        assert_eq!(seen, vec![(0, 2, 2.0), (2, 0, 3.0)]);
        assert_eq!(b.nnz(), 2);
    }
}
