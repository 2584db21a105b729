//! File ingest and export: CSV, Matrix Market (`.mtx`) and NumPy (`.npy`).
//!
//! Readers stream: they yield [`Cells`] in batches and never hold the whole file, so a
//! file larger than memory loads in bounded memory (the store groups cells into blocks).
//! Every error in an input file is a [`StorageError::BadFile`](crate::StorageError::BadFile)
//! naming the path and the 1-based line (binary formats: line 0 and a byte offset in the
//! message). Writers write to a temporary file beside the target and rename it into
//! place after an fsync, so a failed export leaves nothing half-written.

use std::path::Path;

use crate::block::Block;
use crate::error::Result;

/// A file format Tessera reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// Comma-separated values: `i,j,v` triples or dense rows.
    Csv,
    /// Matrix Market exchange format.
    MatrixMarket,
    /// NumPy `.npy`.
    Npy,
}

/// How a CSV file lays out a matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CsvLayout {
    /// Decide from the file: see [`ReadOptions::csv_layout`].
    #[default]
    Auto,
    /// One `i,j,v` triple per line, 0-based coordinates.
    Triples,
    /// One matrix row per line.
    Dense,
}

/// Options for [`open_reader`].
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    /// Shape of the array being loaded, when it already exists. Cells outside it are
    /// errors at their line; a file whose header declares another shape is an error.
    pub target_shape: Option<(u64, u64)>,
    /// CSV layout. `Auto`: a header line `i,j,v` (any three names) or a width of three
    /// with a target that does not have three columns means triples; otherwise dense.
    pub csv_layout: CsvLayout,
    /// Whether the CSV file has a header line; `None` detects one (a first line whose
    /// fields are not all numbers).
    pub csv_header: Option<bool>,
}

/// A batch of cells, 0-based `(row, col)` relative to the array's origin.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Cells {
    /// Row of each cell.
    pub rows: Vec<u64>,
    /// Column of each cell.
    pub cols: Vec<u64>,
    /// Value of each cell.
    pub values: Vec<f64>,
}

impl Cells {
    /// Number of cells.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// True when there are no cells.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// A streaming reader of cells from a file.
pub trait CellReader: Send {
    /// The shape the file declares (Matrix Market and `.npy` headers, or the target
    /// shape for CSV), if known before the data is read.
    fn declared_shape(&self) -> Option<(u64, u64)>;

    /// True when cells arrive in row-major order (the row never decreases), so a loader
    /// can finish each band of block rows as soon as the file moves past it.
    fn row_ordered(&self) -> bool;

    /// The next batch of cells (at most [`CELL_BATCH`]), or `None` at the end of the
    /// file. After the end, the reader has checked the file is complete (entry counts,
    /// trailing data).
    fn next_cells(&mut self) -> Result<Option<Cells>>;

    /// The shape seen after the whole file was read: the declared shape, or for CSV
    /// without a target, one past the largest row and column seen.
    fn final_shape(&self) -> Option<(u64, u64)>;
}

/// Largest number of cells a reader returns in one batch.
pub const CELL_BATCH: usize = 64 * 1024;

/// One band of block rows for export: blocks of one block row, by their first column.
#[derive(Debug, Clone)]
pub struct BlockBand {
    /// First matrix row of the band.
    pub row0: u64,
    /// Number of rows in the band.
    pub rows: usize,
    /// `(first column, block)`, sorted by column; a missing block is all zeros.
    pub blocks: Vec<(u64, Block)>,
}

/// Opens `path` as a stream of cells.
pub fn open_reader(
    path: &Path,
    format: FileFormat,
    options: &ReadOptions,
) -> Result<Box<dyn CellReader>> {
    let _ = (path, format, options);
    Err(crate::StorageError::Internal("readers are not written yet".into()))
}

/// Writes a `shape` matrix with `nnz` non-zeros, given as bands of block rows in order,
/// to `path` in `format`. CSV is written as `i,j,v` triples when sparse (density below
/// [`SPARSE_THRESHOLD`](crate::SPARSE_THRESHOLD)), otherwise as dense rows.
pub fn write_file(
    path: &Path,
    format: FileFormat,
    shape: (u64, u64),
    nnz: u64,
    bands: &mut dyn Iterator<Item = Result<BlockBand>>,
) -> Result<()> {
    let _ = (path, format, shape, nnz, bands);
    Err(crate::StorageError::Internal("writers are not written yet".into()))
}
