//! Cells and blocks, both ways: the one place a block is built from `(row, col, value)`
//! cells ([`CooBuilder`]) and the one place a block's non-zero cells are listed
//! ([`Block::for_each_nonzero`] and its variants).
//!
//! Every writer goes through [`CooBuilder`]: file loads ([`crate::Store::load`]), SQL
//! writes into arrays (`INSERT`, `CREATE MATRIX ... AS`, `COPY ... FROM` Parquet) and the
//! matrices the planner computes from cells. They differ only in how a position listed
//! twice combines ([`Duplicates`]) and in whether the cells overwrite a stored block
//! ([`CooBuilder::build_over`]).

use super::{Block, BlockFormat, CsrBlock, DenseBlock, is_stored};
use crate::error::{Result, StorageError};

/// How cells listed more than once at one position combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Duplicates {
    /// Summed, in the order pushed: the Matrix Market and SciPy convention, for file
    /// loads and matrices built from `(i, j, v)` arguments.
    Sum,
    /// The cell pushed last wins: SQL's writes (`INSERT`, `CREATE MATRIX ... AS`).
    Last,
}

/// The cells of one `rows x cols` block in coordinate form, pushed in any order, then
/// built into a block.
///
/// Zeros are kept until the block is built: a zero (after combining duplicates) is not
/// stored, and over a stored block ([`CooBuilder::build_over`]) it removes the stored
/// cell. NaN is a value like any other (it is non-zero). The block is dense or CSR by
/// [`Block::preferred_format`].
///
/// ```
/// use tessera_storage::{BlockFormat, CooBuilder, Duplicates};
///
/// let mut cells = CooBuilder::new(2, 3, Duplicates::Sum);
/// cells.push(1, 2, 4.0)?;
/// cells.push(1, 2, 0.5)?;
/// let block = cells.build();
/// assert_eq!(block.format(), BlockFormat::Csr); // 1 of 6 cells
/// assert_eq!(block.get(1, 2), 4.5);
/// # Ok::<(), tessera_storage::StorageError>(())
/// ```
#[derive(Debug, Clone)]
pub struct CooBuilder {
    rows: usize,
    cols: usize,
    duplicates: Duplicates,
    /// Positions within the block fit `u32` (a block holds at most 2^28 cells, and the
    /// planner's blocks are smaller), which keeps a cell at [`CooBuilder::CELL_BYTES`].
    cells: Vec<(u32, u32, f64)>,
}

impl CooBuilder {
    /// Bytes one pushed cell takes, for callers that budget memory by cells.
    pub const CELL_BYTES: usize = std::mem::size_of::<(u32, u32, f64)>();

    /// No cells yet, for a `rows x cols` block.
    pub fn new(rows: usize, cols: usize, duplicates: Duplicates) -> Self {
        Self::with_capacity(rows, cols, duplicates, 0)
    }

    /// No cells yet, with room for `capacity` of them.
    pub fn with_capacity(
        rows: usize,
        cols: usize,
        duplicates: Duplicates,
        capacity: usize,
    ) -> Self {
        Self {
            rows,
            cols,
            duplicates,
            cells: Vec::with_capacity(capacity),
        }
    }

    /// `(rows, cols)` of the block.
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// Adds a cell; a position outside the block is an error that names it.
    pub fn push(&mut self, row: usize, col: usize, value: f64) -> Result<()> {
        let (rows, cols) = (self.rows, self.cols);
        let position = match (u32::try_from(row), u32::try_from(col)) {
            (Ok(r), Ok(c)) if row < rows && col < cols => (r, c),
            _ => {
                return Err(StorageError::InvalidArgument(format!(
                    "cell ({row}, {col}) is outside a {rows}x{cols} block"
                )));
            }
        };
        self.cells.push((position.0, position.1, value));
        Ok(())
    }

    /// Cells pushed so far, zeros and repeated positions included.
    pub fn len(&self) -> usize {
        self.cells.len()
    }

    /// True when no cell was pushed.
    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    /// The cells pushed so far as `(row, col, value)`, in the order pushed.
    pub fn cells(&self) -> impl Iterator<Item = (usize, usize, f64)> + '_ {
        self.cells
            .iter()
            .map(|&(r, c, v)| (r as usize, c as usize, v))
    }

    /// The block these cells make, in the format its density calls for.
    pub fn build(self) -> Block {
        let (rows, cols) = (self.rows, self.cols);
        let cells = self.combined();
        let nnz = cells.iter().filter(|c| is_stored(c.2)).count();
        match Block::preferred_format(rows, cols, nnz) {
            BlockFormat::Dense => {
                let mut values = vec![0.0; rows * cols];
                for (r, c, v) in cells {
                    values[r as usize * cols + c as usize] = v;
                }
                Block::Dense(DenseBlock::from_vec_unchecked(rows, cols, values))
            }
            BlockFormat::Csr => Block::Sparse(csr_of_sorted(
                rows,
                cols,
                cells
                    .into_iter()
                    .map(|(r, c, v)| (r as usize, c as usize, v)),
            )),
        }
    }

    /// These cells written over `base` (a stored block of the same shape): each position
    /// they list takes their combined value, a zero removing `base`'s cell; `base`'s
    /// other cells stay. The result is in the format its density calls for.
    pub fn build_over(self, base: &Block) -> Result<Block> {
        if base.shape() != (self.rows, self.cols) {
            return Err(StorageError::Internal(format!(
                "cells of a {}x{} block written over a {}x{} block",
                self.rows,
                self.cols,
                base.rows(),
                base.cols()
            )));
        }
        let (rows, cols) = (self.rows, self.cols);
        let fresh = self.combined();
        let merged = match base {
            Block::Dense(d) => {
                let mut values = d.values().to_vec();
                for (r, c, v) in fresh {
                    values[r as usize * cols + c as usize] = v;
                }
                Block::Dense(DenseBlock::from_vec_unchecked(rows, cols, values))
            }
            Block::Sparse(s) => Block::Sparse(csr_of_sorted(rows, cols, Overwrite::new(s, &fresh))),
        };
        Ok(merged.into_preferred_format())
    }

    /// The cells sorted by position, one per position (duplicates combined).
    fn combined(self) -> Vec<(u32, u32, f64)> {
        let mut cells = self.cells;
        // Stable, so that `Last` keeps the last pushed and `Sum` adds in push order;
        // row-ordered input (dense CSV, C-order .npy) is already sorted.
        if !cells.is_sorted_by_key(|c| (c.0, c.1)) {
            cells.sort_by_key(|c| (c.0, c.1));
        }
        let duplicates = self.duplicates;
        cells.dedup_by(|later, kept| {
            let same = (later.0, later.1) == (kept.0, kept.1);
            if same {
                kept.2 = match duplicates {
                    Duplicates::Sum => kept.2 + later.2,
                    Duplicates::Last => later.2,
                };
            }
            same
        });
        cells
    }
}

/// A CSR block from cells sorted by position, one per position; zeros are not stored.
fn csr_of_sorted(
    rows: usize,
    cols: usize,
    cells: impl Iterator<Item = (usize, usize, f64)>,
) -> CsrBlock {
    let mut indptr = vec![0usize; rows + 1];
    let (mut indices, mut data) = (Vec::new(), Vec::new());
    for (r, c, v) in cells {
        if is_stored(v) {
            indptr[r + 1] += 1;
            indices.push(c);
            data.push(v);
        }
    }
    for r in 0..rows {
        indptr[r + 1] += indptr[r];
    }
    CsrBlock::from_sorted_parts(rows, cols, indptr, indices, data)
}

/// A sparse block's cells with `fresh` (sorted, one per position) written over them,
/// in position order.
struct Overwrite<'a> {
    base: &'a CsrBlock,
    /// The next stored cell: its row and its index in `indices` / `data`.
    row: usize,
    at: usize,
    fresh: std::iter::Peekable<std::slice::Iter<'a, (u32, u32, f64)>>,
}

impl<'a> Overwrite<'a> {
    fn new(base: &'a CsrBlock, fresh: &'a [(u32, u32, f64)]) -> Self {
        let mut merge = Self {
            base,
            row: 0,
            at: 0,
            fresh: fresh.iter().peekable(),
        };
        merge.skip_empty_rows();
        merge
    }

    fn skip_empty_rows(&mut self) {
        let indptr = self.base.indptr();
        while self.row < self.base.rows() && self.at >= indptr[self.row + 1] {
            self.row += 1;
        }
    }

    /// The next stored cell, if any.
    fn stored(&self) -> Option<(usize, usize, f64)> {
        (self.row < self.base.rows()).then(|| {
            (
                self.row,
                self.base.indices()[self.at],
                self.base.data()[self.at],
            )
        })
    }

    fn advance_stored(&mut self) {
        self.at += 1;
        self.skip_empty_rows();
    }
}

impl Iterator for Overwrite<'_> {
    type Item = (usize, usize, f64);

    fn next(&mut self) -> Option<Self::Item> {
        let fresh = self
            .fresh
            .peek()
            .map(|&&(r, c, v)| (r as usize, c as usize, v));
        match (self.stored(), fresh) {
            (None, None) => None,
            (Some(s), Some(f)) if (s.0, s.1) < (f.0, f.1) => {
                self.advance_stored();
                Some(s)
            }
            (Some(s), Some(f)) => {
                if (s.0, s.1) == (f.0, f.1) {
                    self.advance_stored(); // overwritten
                }
                self.fresh.next();
                Some(f)
            }
            (Some(s), None) => {
                self.advance_stored();
                Some(s)
            }
            (None, Some(f)) => {
                self.fresh.next();
                Some(f)
            }
        }
    }
}

impl Block {
    /// Visits every non-zero cell as `(row, col, value)`, row by row, columns in order.
    pub fn for_each_nonzero(&self, mut f: impl FnMut(usize, usize, f64)) {
        for r in 0..self.rows() {
            self.for_each_nonzero_in_row(r, |c, v| f(r, c, v));
        }
    }

    /// Visits the non-zero cells of row `r` as `(col, value)`, columns in order.
    ///
    /// # Panics
    /// If `r` is not a row of the block (a bug in the caller, never user input).
    pub fn for_each_nonzero_in_row(&self, r: usize, mut f: impl FnMut(usize, f64)) {
        match self {
            Block::Dense(d) => {
                for (c, &v) in d.row(r).iter().enumerate() {
                    if is_stored(v) {
                        f(c, v);
                    }
                }
            }
            // A CSR block stores no zeros.
            Block::Sparse(s) => {
                let (cols, vals) = s.row(r);
                for (&c, &v) in cols.iter().zip(vals) {
                    f(c, v);
                }
            }
        }
    }

    /// Visits every non-zero cell in the coordinates of the matrix the block belongs to
    /// (`origin` is the block's first row and column there), row by row, and stops at
    /// the first error `f` returns.
    pub fn try_for_each_nonzero_at<E>(
        &self,
        (row0, col0): (u64, u64),
        mut f: impl FnMut(u64, u64, f64) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        for r in 0..self.rows() {
            let mut result = Ok(());
            self.for_each_nonzero_in_row(r, |c, v| {
                if result.is_ok() {
                    result = f(row0 + r as u64, col0 + c as u64, v);
                }
            });
            result?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every cell of `b`, zeros included, row by row.
    fn values(b: &Block) -> Vec<Vec<f64>> {
        (0..b.rows())
            .map(|r| (0..b.cols()).map(|c| b.get(r, c)).collect())
            .collect()
    }

    fn nonzeros(b: &Block) -> Vec<(usize, usize, f64)> {
        let mut out = vec![];
        b.for_each_nonzero(|r, c, v| out.push((r, c, v)));
        out
    }

    /// A 3 x 4 block (12 cells): a duplicate at (0, 1) pushed as 2 then 5, an explicit
    /// zero at (2, 3), a pair that cancels at (1, 0), and a lone cell at (2, 0).
    fn cells(duplicates: Duplicates) -> CooBuilder {
        let mut b = CooBuilder::new(3, 4, duplicates);
        for (r, c, v) in [
            (2, 0, 7.0),
            (0, 1, 2.0),
            (1, 0, 1.5),
            (2, 3, 0.0),
            (0, 1, 5.0),
            (1, 0, -1.5),
        ] {
            b.push(r, c, v).unwrap();
        }
        b
    }

    #[test]
    fn duplicates_are_summed_or_the_last_wins() {
        // Sum: (0,1) = 2 + 5 = 7, (1,0) = 1.5 - 1.5 = 0 (not stored), (2,0) = 7, and the
        // explicit zero is not stored: 2 non-zeros of 12, density 0.17 < 0.4 -> CSR.
        let sum = cells(Duplicates::Sum).build();
        assert_eq!(sum.format(), BlockFormat::Csr);
        assert_eq!(nonzeros(&sum), vec![(0, 1, 7.0), (2, 0, 7.0)]);
        // Last: (0,1) = 5, (1,0) = -1.5, (2,0) = 7: 3 of 12 -> CSR.
        let last = cells(Duplicates::Last).build();
        assert_eq!(last.format(), BlockFormat::Csr);
        assert_eq!(
            values(&last),
            vec![
                vec![0.0, 5.0, 0.0, 0.0],
                vec![-1.5, 0.0, 0.0, 0.0],
                vec![7.0, 0.0, 0.0, 0.0],
            ]
        );
    }

    #[test]
    fn the_format_follows_the_density_threshold() {
        // 2 x 5 = 10 cells; 0.4 * 10 = 4: three non-zeros are sparse, four are dense.
        let mut b = CooBuilder::new(2, 5, Duplicates::Last);
        for (r, c) in [(0, 0), (0, 4), (1, 2)] {
            b.push(r, c, 1.0).unwrap();
        }
        b.push(1, 3, 0.0).unwrap();
        assert_eq!(b.clone().build().format(), BlockFormat::Csr);
        b.push(1, 3, 2.0).unwrap();
        let dense = b.build();
        assert_eq!(dense.format(), BlockFormat::Dense);
        assert_eq!(
            values(&dense),
            vec![vec![1.0, 0.0, 0.0, 0.0, 1.0], vec![0.0, 0.0, 1.0, 2.0, 0.0]]
        );
        assert_eq!(dense.nnz(), 4);
    }

    #[test]
    fn nan_is_stored_and_sums_to_nan_and_both_zeros_are_zero() {
        let mut b = CooBuilder::new(1, 3, Duplicates::Sum);
        b.push(0, 2, f64::NAN).unwrap();
        b.push(0, 2, 1.0).unwrap();
        b.push(0, 0, -0.0).unwrap();
        b.push(0, 1, 0.0).unwrap();
        let block = b.build();
        assert_eq!(block.nnz(), 1);
        assert!(block.get(0, 2).is_nan());
        let mut listed = Vec::new();
        block.for_each_nonzero(|r, c, _| listed.push((r, c)));
        assert_eq!(listed, [(0, 2)]);
        let csr = CsrBlock::from_dense(&DenseBlock::new(1, 3, vec![-0.0, 0.0, 2.0]).unwrap());
        assert_eq!(csr.nnz(), 1);
    }

    #[test]
    fn a_cell_outside_the_block_is_named() {
        let mut b = CooBuilder::new(3, 4, Duplicates::Sum);
        let e = b.push(3, 1, 1.0).unwrap_err().to_string();
        assert!(e.contains("cell (3, 1) is outside a 3x4 block"), "{e}");
        let e = b.push(0, 4, 1.0).unwrap_err().to_string();
        assert!(e.contains("cell (0, 4)"), "{e}");
        assert!(b.is_empty());
    }

    /// The stored block, 3 x 4:
    /// ```text
    /// 1 0 2 0
    /// 0 0 0 0
    /// 0 3 0 4
    /// ```
    fn stored() -> Block {
        let d = DenseBlock::new(
            3,
            4,
            vec![1.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 3.0, 0.0, 4.0],
        )
        .unwrap();
        Block::Dense(d)
    }

    #[test]
    fn cells_overwrite_a_stored_block_in_either_format() {
        // Write (0,2) = 9 then 8 (last wins: 8), (2,3) = 0 (removes the 4), (1,1) = 5 (new).
        let fresh = || {
            let mut b = CooBuilder::new(3, 4, Duplicates::Last);
            for (r, c, v) in [(1, 1, 5.0), (0, 2, 9.0), (2, 3, 0.0), (0, 2, 8.0)] {
                b.push(r, c, v).unwrap();
            }
            b
        };
        let expected = vec![
            vec![1.0, 0.0, 8.0, 0.0],
            vec![0.0, 5.0, 0.0, 0.0],
            vec![0.0, 3.0, 0.0, 0.0],
        ];
        let dense_base = stored();
        let sparse_base = Block::Sparse(dense_base.to_csr());
        for base in [dense_base, sparse_base] {
            let merged = fresh().build_over(&base).unwrap();
            assert_eq!(values(&merged), expected, "over {:?}", base.format());
            // 4 of 12 non-zeros: density 0.33 -> CSR.
            assert_eq!(merged.format(), BlockFormat::Csr);
            assert_eq!(merged.nnz(), 4);
        }
        // Over a sparse base holding only (1, 3) = 2: cells in a row before it, before
        // it in its row, and in a row after it; (2, 2) is pushed as 1 and 2 and summed.
        let mut b = CooBuilder::new(3, 4, Duplicates::Sum);
        for (r, c, v) in [(2, 2, 1.0), (1, 0, 6.0), (0, 3, -1.0), (2, 2, 2.0)] {
            b.push(r, c, v).unwrap();
        }
        let base = Block::Sparse(CsrBlock::from_dense(&DenseBlock::from_fn(3, 4, |r, c| {
            if (r, c) == (1, 3) { 2.0 } else { 0.0 }
        })));
        assert_eq!(
            nonzeros(&b.build_over(&base).unwrap()),
            vec![(0, 3, -1.0), (1, 0, 6.0), (1, 3, 2.0), (2, 2, 3.0)]
        );
        let wrong = CooBuilder::new(2, 2, Duplicates::Sum).build_over(&stored());
        assert!(wrong.is_err());
    }

    #[test]
    fn nonzeros_are_listed_in_matrix_coordinates() {
        let b = stored();
        let mut seen = vec![];
        b.try_for_each_nonzero_at((10, 20), |i, j, v| {
            seen.push((i, j, v));
            Ok::<_, ()>(())
        })
        .unwrap();
        assert_eq!(
            seen,
            vec![(10, 20, 1.0), (10, 22, 2.0), (12, 21, 3.0), (12, 23, 4.0)]
        );
        // The first error stops the visit.
        let mut visited = 0;
        let stopped = b.try_for_each_nonzero_at((0, 0), |_, _, _| {
            visited += 1;
            if visited == 2 { Err("stop") } else { Ok(()) }
        });
        assert_eq!((stopped, visited), (Err("stop"), 2));
        let mut row = vec![];
        Block::Sparse(b.to_csr()).for_each_nonzero_in_row(2, |c, v| row.push((c, v)));
        assert_eq!(row, vec![(1, 3.0), (3, 4.0)]);
    }
}
