//! Sparse blocks in compressed sparse row form, stored as an `sprs` matrix.

use sprs::CsMat;

use super::DenseBlock;
use crate::error::{Result, StorageError};

/// A CSR `rows x cols` block. Column indices are sorted within each row and no
/// explicit zeros are stored, so `nnz` is the number of stored entries.
#[derive(Debug, Clone, PartialEq)]
pub struct CsrBlock {
    mat: CsMat<f64>,
}

impl CsrBlock {
    /// Builds a block from CSR parts, validating them (offsets monotone and ending at
    /// `indices.len()`, indices in range and sorted per row). Explicit zeros are dropped.
    pub fn from_parts(
        rows: usize,
        cols: usize,
        indptr: Vec<usize>,
        indices: Vec<usize>,
        data: Vec<f64>,
    ) -> Result<Self> {
        let mat = CsMat::try_new((rows, cols), indptr, indices, data).map_err(|(_, _, _, e)| {
            StorageError::InvalidArgument(format!("invalid {rows}x{cols} CSR block: {e}"))
        })?;
        Ok(Self::from_sprs(mat))
    }

    /// Wraps an `sprs` matrix, converting CSC to CSR and dropping explicit zeros.
    pub fn from_sprs(mat: CsMat<f64>) -> Self {
        let mat = if mat.is_csr() { mat } else { mat.to_csr() };
        if !mat.data().contains(&0.0) {
            return Self { mat };
        }
        let (rows, cols) = mat.shape();
        let mut indptr = Vec::with_capacity(rows + 1);
        let mut indices = Vec::with_capacity(mat.nnz());
        let mut data = Vec::with_capacity(mat.nnz());
        indptr.push(0);
        for row in mat.outer_iterator() {
            for (c, &v) in row.iter() {
                if super::is_stored(v) {
                    indices.push(c);
                    data.push(v);
                }
            }
            indptr.push(indices.len());
        }
        Self {
            mat: CsMat::new((rows, cols), indptr, indices, data),
        }
    }

    /// An empty (all-zero) block.
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Self {
            mat: CsMat::zero((rows, cols)),
        }
    }

    /// The non-zeros of a dense block.
    pub fn from_dense(d: &DenseBlock) -> Self {
        let (rows, cols) = d.shape();
        let mut indptr = Vec::with_capacity(rows + 1);
        let mut indices = Vec::with_capacity(d.nnz());
        let mut data = Vec::with_capacity(d.nnz());
        indptr.push(0);
        for r in 0..rows {
            for (c, &v) in d.row(r).iter().enumerate() {
                if super::is_stored(v) {
                    indices.push(c);
                    data.push(v);
                }
            }
            indptr.push(indices.len());
        }
        Self {
            mat: CsMat::new((rows, cols), indptr, indices, data),
        }
    }

    /// Wraps CSR parts its caller built valid: offsets monotone, indices in range and
    /// strictly increasing per row, no zeros.
    pub(crate) fn from_sorted_parts(
        rows: usize,
        cols: usize,
        indptr: Vec<usize>,
        indices: Vec<usize>,
        data: Vec<f64>,
    ) -> Self {
        debug_assert!(data.iter().all(|v| super::is_stored(*v)));
        Self {
            mat: CsMat::new((rows, cols), indptr, indices, data),
        }
    }

    /// A dense copy.
    pub fn to_dense(&self) -> DenseBlock {
        let (rows, cols) = self.shape();
        let mut v = vec![0.0; rows * cols];
        for r in 0..rows {
            let (idx, vals) = self.row(r);
            let out = &mut v[r * cols..(r + 1) * cols];
            for (&c, &x) in idx.iter().zip(vals) {
                out[c] = x;
            }
        }
        DenseBlock::from_vec_unchecked(rows, cols, v)
    }

    /// `(rows, cols)`.
    pub fn shape(&self) -> (usize, usize) {
        self.mat.shape()
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.mat.rows()
    }

    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.mat.cols()
    }

    /// Number of stored (non-zero) entries.
    pub fn nnz(&self) -> usize {
        self.mat.nnz()
    }

    /// Row offsets, `rows + 1` of them.
    pub fn indptr(&self) -> &[usize] {
        self.mat.indptr().into_raw_storage()
    }

    /// Column index of each stored entry.
    pub fn indices(&self) -> &[usize] {
        self.mat.indices()
    }

    /// Value of each stored entry.
    pub fn data(&self) -> &[f64] {
        self.mat.data()
    }

    /// Column indices and values of row `r`.
    pub fn row(&self, r: usize) -> (&[usize], &[f64]) {
        let p = self.indptr();
        let (a, b) = (p[r], p[r + 1]);
        (&self.indices()[a..b], &self.data()[a..b])
    }

    /// Value at `(r, c)`.
    pub fn get(&self, r: usize, c: usize) -> f64 {
        assert!(
            r < self.rows() && c < self.cols(),
            "({r}, {c}) outside {:?}",
            self.shape()
        );
        let (idx, vals) = self.row(r);
        idx.binary_search(&c).map(|k| vals[k]).unwrap_or(0.0)
    }

    /// The underlying `sprs` matrix.
    pub fn as_sprs(&self) -> &CsMat<f64> {
        &self.mat
    }
}
