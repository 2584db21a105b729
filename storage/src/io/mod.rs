//! File ingest and export: CSV, Matrix Market (`.mtx`), NumPy `.npy` and `.npz`, Zarr v3.
//!
//! Readers stream: they yield [`Cells`] in batches and never hold the whole file, so a
//! file larger than memory loads in bounded memory (the store groups cells into blocks).
//! Every error in an input file is a [`StorageError::BadFile`](crate::StorageError::BadFile)
//! naming the path and the 1-based line (binary formats: line 0 and a byte offset in the
//! message; `.npz`: the member too). Writers write to a temporary file beside the target
//! and rename it into place after an fsync, so a failed export leaves nothing
//! half-written.
//!
//! Cells are rows and columns. An array of another rank (`.npy`, `.npz` and Zarr files,
//! which may have any number of dimensions) is seen with its leading dimensions flattened in C
//! order into rows and its last dimension as columns (a 1-d array is one column): the
//! mapping [`ArraySchema::shape2`](crate::ArraySchema::shape2) uses, so a C-order file is
//! row-ordered whatever its rank, and writing rows in order writes C order.
//!
//! ```text
//!   open_reader --> CsvReader | MtxReader | NpyReader | npz (a member's NpyReader,
//!                   or SciPy sparse CSR/CSC/COO) | ZarrReader (a band of chunks, or
//!                   one chunk, at a time) --next_cells--> Cells (<= CELL_BATCH)
//!   write_file / write_array_file <-- bands of block rows (one in memory at a time)
//!                                 --> temp file -> rename
//!   ZarrWriter <-- one chunk at a time (a stored block each) --> temp directory -> rename
//!   NpyCellWriter <-- cells in any order (COPY (query) TO 'f.npy' | 'f.npz') --> scratch
//!                 file --> dense temp file -> rename (or stored as an .npz member)
//!   MtxCellWriter <-- cells in any order (COPY (query) TO 'f.mtx') --> scratch file
//!                 --> header + entries -> rename
//!   ZarrCellWriter <-- cells in any order (COPY (query) TO 'f.zarr') --> scratch file
//!                  --> sorted by chunk --> ZarrWriter
//! ```
//!
//! Each format lives in its own file (`csv.rs`, `mtx.rs`, `npy.rs`, `npz.rs`, `zarr.rs`) with its
//! reader, its writer and its tests; `text.rs` holds the line reader and number
//! formatting the text formats share, `output.rs` the atomic file and the band checks
//! the writers share. `.npz` archives are read (the `zip` crate reads the central
//! directory, and each member streams from its own file handle, inflated by `flate2`,
//! its CRC-32 checked at its end) and, for a query's cells, written with one member
//! stored uncompressed, as `numpy.savez` stores its members.
//!
//! Zarr v3 arrays (directories holding `zarr.json`) go through the `zarrs` crate: read
//! one band of chunks at a time (the chunks sharing an index along the first dimension,
//! so cells come out row-ordered), or chunk by chunk when a band is over
//! [`BAND_ELEMENTS`]; sharded arrays by inner chunk; chunks never written are the fill
//! value. Codecs `bytes`, `transpose`, `gzip`, `zstd`, `crc32c`, `sharding_indexed`; not
//! `blosc` (it would compile the C blosc library), nor Zarr v2 arrays, groups or
//! consolidated metadata. Errors name the path and the chunk (`chunk [1, 0]`). Exports
//! are `float64`, `bytes` + `zstd`, fill value 0, chunks of zeros not written, in a
//! temporary directory renamed into place; an existing target is refused.

use std::path::Path;

use crate::block::{Block, SPARSE_THRESHOLD};
use crate::error::Result;

mod csv;
mod mtx;
mod npy;
mod npz;
mod output;
mod text;
mod zarr;

pub use mtx::MtxCellWriter;
pub use npy::{MAX_CELL_WRITER_ELEMENTS, NpyCellWriter};
pub use zarr::{BAND_ELEMENTS, ZSTD_LEVEL, ZarrCellWriter, ZarrWriter};

/// A file format Tessera reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// Comma-separated values: `i,j,v` triples or dense rows.
    Csv,
    /// Matrix Market exchange format.
    MatrixMarket,
    /// NumPy `.npy`.
    Npy,
    /// NumPy `.npz` (`numpy.savez`, `savez_compressed`) or SciPy's sparse `.npz`
    /// (`scipy.sparse.save_npz`): read only.
    Npz,
    /// A Zarr v3 array: a directory holding `zarr.json` and its chunks. Written by
    /// [`ZarrWriter`] and [`ZarrCellWriter`], not by [`write_file`].
    Zarr,
}

impl FileFormat {
    /// The format a file name's extension names (`.csv`, `.mtx`, `.npy`, `.npz`, `.zarr`,
    /// any case), or Zarr for a directory holding `zarr.json`, for `COPY` without a
    /// `FORMAT` option.
    ///
    /// ```
    /// use tessera_storage::io::FileFormat;
    /// assert_eq!(FileFormat::from_path("data/X.MTX".as_ref()), Some(FileFormat::MatrixMarket));
    /// assert_eq!(FileFormat::from_path("out/a.zarr/".as_ref()), Some(FileFormat::Zarr));
    /// assert_eq!(FileFormat::from_path("x.parquet".as_ref()), None);
    /// ```
    pub fn from_path(path: &Path) -> Option<FileFormat> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("csv") => Some(FileFormat::Csv),
            Some("mtx") => Some(FileFormat::MatrixMarket),
            Some("npy") => Some(FileFormat::Npy),
            Some("npz") => Some(FileFormat::Npz),
            Some("zarr") => Some(FileFormat::Zarr),
            _ if path.join("zarr.json").is_file() => Some(FileFormat::Zarr),
            _ => None,
        }
    }
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
///
/// CSV files are comma separated; spaces and tabs around a field and one pair of double
/// quotes around it are ignored (quoted fields cannot hold commas). Blank lines may only
/// end a file: a blank line followed by data is an error, since in dense rows it would
/// silently drop a row.
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    /// Shape of the array being loaded, when it already exists. Cells outside it are
    /// errors at their line; a file whose header declares another shape is an error, and
    /// so is a dense CSV file with another width or number of rows.
    pub target_shape: Option<(u64, u64)>,
    /// CSV layout. `Auto`: triples when the header names coordinates and a value
    /// (`i,j,v`, `row,col,value`, ...), or has three names and the target does not have
    /// three columns, or (without a header) a width of three with a target that does not
    /// have three columns; otherwise dense rows.
    /// A file with no data lines (and no header to say otherwise) holds no cells.
    ///
    /// Triple indices are 0-based whole numbers; `3.0` is read as 3 (pandas writes
    /// integer columns with missing values that way), `-1` and `2.5` are errors.
    pub csv_layout: CsvLayout,
    /// Whether the CSV file has a header line; `None` detects one (a first line whose
    /// fields are not all numbers).
    pub csv_header: Option<bool>,
    /// Full shape of the array being loaded, for the n-d formats (`.npy`, `.npz`): a file
    /// of another shape is an error, except that files and targets of at most two
    /// dimensions need only agree on rows and columns (a 1-d file of `n` loads into an
    /// `n x 1` matrix). Without it, [`ReadOptions::target_shape`] is checked against the
    /// file's rows and columns, and a file of more than two dimensions does not fit.
    pub target_dims: Option<Vec<u64>>,
    /// Which member of a `.npz` archive to read.
    pub npz_member: NpzMember,
}

/// Which array of a `.npz` archive a reader reads.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum NpzMember {
    /// The archive's only array, or the matrix of a SciPy sparse archive.
    #[default]
    Only,
    /// The member of this name (`a` or `a.npy`); missing, it is an error.
    Named(String),
    /// The member of this name if there is one, otherwise as [`NpzMember::Only`]: how
    /// `COPY a FROM 'f.npz'` picks the member named like the array.
    Preferred(String),
}

/// A batch of cells, 0-based `(row, col)` relative to the array's origin.
///
/// Readers yield only non-zero cells (NaN is non-zero): a cell not listed is zero, as in a
/// sparse block. A cell may be listed more than once (triples, Matrix Market coordinate
/// entries); a loader sums duplicates ([`Duplicates::Sum`](crate::Duplicates::Sum)).
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
    /// without a target, the number of dense rows and their width, or for triples one
    /// past the largest row and column seen.
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
///
/// The header (CSV header and layout, Matrix Market banner and size line, `.npy` header)
/// is read and checked here, against [`ReadOptions::target_shape`] too, so a file of the
/// wrong kind or shape fails before any cell is loaded.
///
/// ```
/// use tessera_storage::io::{open_reader, FileFormat, ReadOptions};
/// # fn main() -> tessera_storage::Result<()> {
/// # let dir = std::env::temp_dir().join(format!("tessera-doc-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir).unwrap();
/// let path = dir.join("m.csv");
/// std::fs::write(&path, "1,0\n0,2.5\n").unwrap();
/// let mut reader = open_reader(&path, FileFormat::Csv, &ReadOptions::default())?;
/// let cells = reader.next_cells()?.unwrap();
/// assert_eq!((cells.rows, cells.cols, cells.values), (vec![0, 1], vec![0, 1], vec![1.0, 2.5]));
/// assert!(reader.next_cells()?.is_none());
/// assert_eq!(reader.final_shape(), Some((2, 2)));
/// # std::fs::remove_dir_all(&dir).unwrap();
/// # Ok(())
/// # }
/// ```
pub fn open_reader(
    path: &Path,
    format: FileFormat,
    options: &ReadOptions,
) -> Result<Box<dyn CellReader>> {
    Ok(match format {
        FileFormat::Csv => Box::new(csv::CsvReader::open(path, options)?),
        FileFormat::MatrixMarket => Box::new(mtx::MtxReader::open(path, options)?),
        FileFormat::Npy => Box::new(npy::NpyReader::open(path, options)?),
        FileFormat::Npz => npz::open(path, options)?,
        FileFormat::Zarr => Box::new(zarr::ZarrReader::open(path, options)?),
    })
}

/// Writes a `shape` matrix with `nnz` non-zeros, given as bands of block rows in order,
/// to `path` in `format`. CSV is written as `i,j,v` triples when sparse (density below
/// [`SPARSE_THRESHOLD`]), otherwise as dense rows.
///
/// - `.npy`: version 1.0, `<f8`, C order, always 2-d `(rows, cols)`.
/// - `.mtx`: `coordinate real general` when sparse, else `array real general`. The array
///   format is column-major, so its body is transposed through a scratch file beside the
///   target (memory stays bounded by one band plus a fixed tile); the scratch file is
///   removed afterwards.
/// - CSV triples: header `i,j,v`, 0-based, row by row. When the last cell is zero it is
///   written as an explicit `0` so the file still says the matrix's shape.
///
/// Numbers are written in their shortest form that reads back to the same `f64`. The
/// bands must start at row 0, follow each other and cover the matrix, and the blocks
/// must hold exactly `nnz` non-zeros: the Matrix Market header declares it before the
/// entries, so a wrong count would be a corrupt file. A violation is an internal error and
/// nothing is written.
pub fn write_file(
    path: &Path,
    format: FileFormat,
    shape: (u64, u64),
    nnz: u64,
    bands: &mut dyn Iterator<Item = Result<BlockBand>>,
) -> Result<()> {
    write_array_file(path, format, &[shape.0, shape.1], nnz, bands)
}

/// Writes an array of shape `dims` with `nnz` non-zeros to `path`, as [`write_file`]
/// does a matrix. The bands cover the array's rows and columns: its leading dimensions
/// flattened in C order into rows, the last one as columns (a 1-d array is one column),
/// so C order row by row is the file's order. Only `.npy` keeps the shape of an array
/// that is not 2-d (written as NumPy would save it: `(n,)`, `(a, b, c)`); the other
/// formats take 2-d arrays.
pub fn write_array_file(
    path: &Path,
    format: FileFormat,
    dims: &[u64],
    nnz: u64,
    bands: &mut dyn Iterator<Item = Result<BlockBand>>,
) -> Result<()> {
    if format == FileFormat::Npz {
        return Err(crate::StorageError::InvalidArgument(
            "Tessera reads .npz archives but does not write them; write .npy files".into(),
        ));
    }
    if format == FileFormat::Zarr {
        return Err(crate::StorageError::Internal(
            "Zarr arrays are written chunk by chunk with ZarrWriter, not from bands".into(),
        ));
    }
    if dims.is_empty() || (dims.len() != 2 && format != FileFormat::Npy) {
        return Err(crate::StorageError::InvalidArgument(format!(
            "a {}-d array can be written to .npy files only",
            dims.len()
        )));
    }
    let shape = npy::flatten2(dims);
    let mut out = output::AtomicFile::create(path)?;
    let mut check = output::BandCheck::new(shape);
    let mut checked = bands.map(|band| {
        let band = band?;
        check.check(&band)?;
        Ok(band)
    });
    let written = match format {
        FileFormat::Csv => csv::write(&mut out, shape, nnz, &mut checked)?,
        FileFormat::MatrixMarket => mtx::write(&mut out, shape, nnz, &mut checked)?,
        FileFormat::Npy => npy::write(&mut out, dims, &mut checked)?,
        FileFormat::Npz | FileFormat::Zarr => {
            return Err(crate::StorageError::Internal(
                "npz and zarr refused above".into(),
            ));
        }
    };
    drop(checked);
    check.finish()?;
    output::check_nnz(nnz, written)?;
    out.commit()
}

/// Whether an export of `shape` with `nnz` non-zeros uses a sparse layout: below the
/// block threshold, and always for a matrix without cells (nothing to list).
fn is_sparse(shape: (u64, u64), nnz: u64) -> bool {
    let cells = shape.0 as f64 * shape.1 as f64;
    cells == 0.0 || (nnz as f64) < SPARSE_THRESHOLD * cells
}

/// The band iterator the format writers consume (already checked).
type Bands<'a> = dyn Iterator<Item = Result<BlockBand>> + 'a;

/// Test helper: every cell of a file as sorted `(row, col, value)`, checking each batch
/// stays within [`CELL_BATCH`], and the reader's final shape.
#[cfg(test)]
#[allow(clippy::type_complexity, reason = "a test helper's plain tuple result")]
pub(crate) fn read_all_sorted(
    path: &Path,
    format: FileFormat,
    opts: &ReadOptions,
) -> Result<(Vec<(u64, u64, f64)>, Option<(u64, u64)>)> {
    let mut r = open_reader(path, format, opts)?;
    let mut cells = vec![];
    while let Some(batch) = r.next_cells()? {
        assert!(batch.len() <= CELL_BATCH);
        let Cells { rows, cols, values } = batch;
        cells.extend(
            rows.into_iter()
                .zip(cols)
                .zip(values)
                .map(|((r, c), v)| (r, c, v)),
        );
    }
    cells.sort_by_key(|c| (c.0, c.1));
    Ok((cells, r.final_shape()))
}

#[cfg(test)]
mod robustness_tests {
    //! Damaged input files are errors, never panics: each reader is fed valid files with
    //! bytes flipped, cut short or spliced in, and must return cells or an error.

    #![allow(clippy::unwrap_used)] // tests may panic

    use proptest::prelude::*;

    use super::*;

    fn seeds() -> Vec<(FileFormat, Vec<u8>)> {
        let mut npy = b"\x93NUMPY\x01\x00".to_vec();
        let header = "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }";
        let padded = format!("{header:<117}\n");
        npy.extend_from_slice(&(padded.len() as u16).to_le_bytes());
        npy.extend_from_slice(padded.as_bytes());
        for v in [1.0f64, 2.0, 0.0, -4.5, 5.0, 6.0] {
            npy.extend_from_slice(&v.to_le_bytes());
        }
        vec![
            (FileFormat::Csv, b"i,j,v\n0,1,2.5\n1,2,-3\n".to_vec()),
            (FileFormat::Csv, b"1,2,3\n4,5,6\n".to_vec()),
            (
                FileFormat::MatrixMarket,
                b"%%MatrixMarket matrix coordinate real symmetric\n% c\n2 3 2\n1 1 1.5\n2 1 -2\n"
                    .to_vec(),
            ),
            (
                FileFormat::MatrixMarket,
                b"%%MatrixMarket matrix array real general\n2 3\n1\n2\n3\n4\n5\n6\n".to_vec(),
            ),
            (FileFormat::Npz, stored_zip(&[("a.npy", &npy)])),
            (FileFormat::Npz, scipy_coo_npz()),
            (FileFormat::Npy, npy),
        ]
    }

    /// A `.npy` file's bytes: version 1.0, the given dtype and shape text, raw data.
    fn npy_bytes(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}\n");
        out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
        out.extend_from_slice(dict.as_bytes());
        out.extend_from_slice(data);
        out
    }

    /// A 2x3 COO matrix as `scipy.sparse.save_npz(..., compressed=False)` lays it out.
    fn scipy_coo_npz() -> Vec<u8> {
        let ints = |v: &[i64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let data: Vec<u8> = [1.5f64, -2.0, 4.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        stored_zip(&[
            ("row.npy", &npy_bytes("<i8", "(3,)", &ints(&[0, 1, 1]))),
            ("col.npy", &npy_bytes("<i8", "(3,)", &ints(&[2, 0, 2]))),
            ("format.npy", &npy_bytes("|S3", "()", b"coo")),
            ("shape.npy", &npy_bytes("<i8", "(2,)", &ints(&[2, 3]))),
            ("data.npy", &npy_bytes("<f8", "(3,)", &data)),
        ])
    }

    /// A zip archive of stored (uncompressed) members, as `numpy.savez` writes one.
    fn stored_zip(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut directory = Vec::new();
        for (name, data) in members {
            let crc = crc32fast::hash(data);
            let offset = out.len() as u32;
            let fixed = |sig: u32, out: &mut Vec<u8>| {
                out.extend_from_slice(&sig.to_le_bytes());
            };
            // Local header: version, flags, method, time, date, CRC, sizes, name length.
            fixed(0x0403_4b50, &mut out);
            for half in [20u16, 0, 0, 0, 0] {
                out.extend_from_slice(&half.to_le_bytes());
            }
            for word in [crc, data.len() as u32, data.len() as u32] {
                out.extend_from_slice(&word.to_le_bytes());
            }
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(&0u16.to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(data);
            // Central directory entry.
            fixed(0x0201_4b50, &mut directory);
            for half in [20u16, 20, 0, 0, 0, 0] {
                directory.extend_from_slice(&half.to_le_bytes());
            }
            for word in [crc, data.len() as u32, data.len() as u32] {
                directory.extend_from_slice(&word.to_le_bytes());
            }
            for half in [name.len() as u16, 0, 0, 0, 0] {
                directory.extend_from_slice(&half.to_le_bytes());
            }
            directory.extend_from_slice(&0u32.to_le_bytes());
            directory.extend_from_slice(&offset.to_le_bytes());
            directory.extend_from_slice(name.as_bytes());
        }
        let directory_offset = out.len() as u32;
        out.extend_from_slice(&directory);
        out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
        let count = members.len() as u16;
        for half in [0u16, 0, count, count] {
            out.extend_from_slice(&half.to_le_bytes());
        }
        out.extend_from_slice(&(directory.len() as u32).to_le_bytes());
        out.extend_from_slice(&directory_offset.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out
    }

    #[test]
    fn hand_made_archives_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("coo.npz");
        std::fs::write(&path, scipy_coo_npz()).unwrap();
        let (cells, shape) =
            read_all_sorted(&path, FileFormat::Npz, &ReadOptions::default()).unwrap();
        assert_eq!(shape, Some((2, 3)));
        assert_eq!(cells, vec![(0, 2, 1.5), (1, 0, -2.0), (1, 2, 4.0)]);
        let seeds = seeds();
        let path = dir.path().join("one.npz");
        std::fs::write(&path, &seeds[4].1).unwrap();
        let (cells, shape) =
            read_all_sorted(&path, FileFormat::Npz, &ReadOptions::default()).unwrap();
        assert_eq!(shape, Some((2, 3)));
        assert_eq!(cells.len(), 5);
    }

    /// Reads the whole file; the result may be an error but must not panic.
    fn read(path: &Path, format: FileFormat, target: Option<(u64, u64)>) {
        let options = ReadOptions {
            target_shape: target,
            ..ReadOptions::default()
        };
        if let Ok(mut r) = open_reader(path, format, &options) {
            for _ in 0..1000 {
                match r.next_cells() {
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
            let _ = r.final_shape();
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn damaged_files_never_panic(
            seed in 0usize..7,
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6),
            cut in proptest::option::of(any::<prop::sample::Index>()),
            target in proptest::option::of((0u64..4, 0u64..4)),
        ) {
            let (format, mut bytes) = seeds().swap_remove(seed);
            for (at, byte, kind) in edits {
                let n = at.index(bytes.len().max(1)).min(bytes.len().saturating_sub(1));
                match kind {
                    0 if !bytes.is_empty() => bytes[n] = byte,
                    1 => bytes.insert(n, byte),
                    _ if !bytes.is_empty() => { bytes.remove(n); }
                    _ => {}
                }
            }
            if let Some(cut) = cut {
                bytes.truncate(cut.index(bytes.len() + 1));
            }
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("damaged");
            std::fs::write(&path, &bytes).unwrap();
            read(&path, format, target);
        }
    }
}
