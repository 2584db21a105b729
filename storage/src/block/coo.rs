//! Coordinate-form cells, collected during ingest and turned into a block.

use sprs::TriMat;

use super::{Block, BlockFormat, CsrBlock, DenseBlock};
use crate::error::{Result, StorageError};

/// Collects `(row, col, value)` cells of one block. Duplicate cells are summed (the
/// Matrix Market and SciPy convention); zeros are dropped.
#[derive(Debug)]
pub struct CooBuilder {
    tri: TriMat<f64>,
}

impl CooBuilder {
    /// An empty `rows x cols` block.
    pub fn new(rows: usize, cols: usize) -> Self {
        Self {
            tri: TriMat::new((rows, cols)),
        }
    }

    /// Adds a cell; rejects coordinates outside the block.
    pub fn push(&mut self, r: usize, c: usize, v: f64) -> Result<()> {
        let (rows, cols) = self.tri.shape();
        if r >= rows || c >= cols {
            return Err(StorageError::InvalidArgument(format!(
                "cell ({r}, {c}) is outside a {rows}x{cols} block"
            )));
        }
        if v != 0.0 {
            self.tri.add_triplet(r, c, v);
        }
        Ok(())
    }

    /// Number of cells pushed so far (before summing duplicates).
    pub fn len(&self) -> usize {
        self.tri.nnz()
    }

    /// True when no non-zero cell was pushed.
    pub fn is_empty(&self) -> bool {
        self.tri.nnz() == 0
    }

    /// The block, in the format its density calls for.
    pub fn build(&self) -> Block {
        let (rows, cols) = self.tri.shape();
        let csr = CsrBlock::from_triplets(&self.tri);
        match Block::preferred_format(rows, cols, csr.nnz()) {
            BlockFormat::Csr => Block::Sparse(csr),
            BlockFormat::Dense => Block::Dense(csr.to_dense()),
        }
    }

    /// The block as dense, whatever its density.
    pub fn build_dense(&self) -> DenseBlock {
        CsrBlock::from_triplets(&self.tri).to_dense()
    }
}
