//! Dense blocks: row-major `f64` values in an Arrow buffer, so a block read from an IPC
//! file is used in place.

use arrow_buffer::ScalarBuffer;

use crate::error::{Result, StorageError};

/// A dense `rows x cols` block, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct DenseBlock {
    rows: usize,
    cols: usize,
    nnz: usize,
    values: ScalarBuffer<f64>,
}

impl DenseBlock {
    /// A block over `values` (row-major, `rows * cols` of them).
    pub fn new(rows: usize, cols: usize, values: impl Into<ScalarBuffer<f64>>) -> Result<Self> {
        let values = values.into();
        if Some(values.len()) != rows.checked_mul(cols) {
            return Err(StorageError::InvalidArgument(format!(
                "a {rows}x{cols} dense block needs {} values, got {}",
                rows.saturating_mul(cols),
                values.len()
            )));
        }
        let nnz = count_nonzero(&values);
        Ok(Self {
            rows,
            cols,
            nnz,
            values,
        })
    }

    /// A block over `values` whose non-zero count the caller already has (a block
    /// column's `nnz`, written from the block itself), so the values are not scanned
    /// again. A count larger than the cells is an error.
    pub fn with_nnz(
        rows: usize,
        cols: usize,
        values: impl Into<ScalarBuffer<f64>>,
        nnz: usize,
    ) -> Result<Self> {
        let values = values.into();
        if Some(values.len()) != rows.checked_mul(cols) || nnz > values.len() {
            return Err(StorageError::InvalidArgument(format!(
                "a {rows}x{cols} dense block needs {} values and at most that many non-zeros, got {} values and {nnz}",
                rows.saturating_mul(cols),
                values.len()
            )));
        }
        Ok(Self {
            rows,
            cols,
            nnz,
            values,
        })
    }

    /// A block of zeros.
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Self {
            rows,
            cols,
            nnz: 0,
            values: vec![0.0; rows * cols].into(),
        }
    }

    /// A block with `f(r, c)` at each cell.
    pub fn from_fn(rows: usize, cols: usize, mut f: impl FnMut(usize, usize) -> f64) -> Self {
        let mut v = Vec::with_capacity(rows * cols);
        for r in 0..rows {
            for c in 0..cols {
                v.push(f(r, c));
            }
        }
        Self::from_vec_unchecked(rows, cols, v)
    }

    /// Wraps a vector whose length the caller has already checked.
    pub(crate) fn from_vec_unchecked(rows: usize, cols: usize, values: Vec<f64>) -> Self {
        debug_assert_eq!(values.len(), rows * cols);
        let nnz = count_nonzero(&values);
        Self {
            rows,
            cols,
            nnz,
            values: values.into(),
        }
    }

    /// `(rows, cols)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Number of non-zero cells.
    pub fn nnz(&self) -> usize {
        self.nnz
    }

    /// The row-major values.
    pub fn values(&self) -> &[f64] {
        &self.values
    }

    /// The Arrow buffer behind the values (shared, not copied).
    pub fn buffer(&self) -> &ScalarBuffer<f64> {
        &self.values
    }

    /// Row `r` as a slice.
    pub fn row(&self, r: usize) -> &[f64] {
        &self.values[r * self.cols..(r + 1) * self.cols]
    }

    /// Value at `(r, c)`.
    pub fn get(&self, r: usize, c: usize) -> f64 {
        assert!(
            r < self.rows && c < self.cols,
            "({r}, {c}) outside {}x{}",
            self.rows,
            self.cols
        );
        self.values[r * self.cols + c]
    }

    /// The values as an owned vector (copied only if the buffer is shared).
    pub fn into_vec(self) -> Vec<f64> {
        match self.values.into_inner().into_vec::<f64>() {
            Ok(v) => v,
            Err(buf) => ScalarBuffer::<f64>::from(buf).to_vec(),
        }
    }
}

/// Counts non-zero cells with independent accumulators so the loop vectorizes.
fn count_nonzero(v: &[f64]) -> usize {
    let mut acc = [0usize; 4];
    let chunks = v.chunks_exact(4);
    let rest = chunks.remainder();
    for c in chunks {
        for k in 0..4 {
            acc[k] += (c[k] != 0.0) as usize;
        }
    }
    acc.iter().sum::<usize>() + rest.iter().filter(|x| super::is_stored(**x)).count()
}
