//! Matrix Market exchange format (`.mtx`), the NIST text format SciPy's `mmread` and
//! `mmwrite` speak.
//!
//! Reads `matrix coordinate|array real|double|integer|pattern general|symmetric|
//! skew-symmetric`. Symmetric entries are mirrored (the diagonal is not doubled),
//! skew-symmetric ones mirrored with their sign flipped; `array` files list columns one
//! after the other, and symmetric ones only the lower triangle. Comment (`%`) and blank
//! lines are skipped wherever they appear. Writes `coordinate real general` for sparse
//! matrices and `array real general` for dense ones.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::output::{
    AtomicFile, TempPath, count_nonzero, dense_row, for_each_nonzero_in_row, to_usize,
};
use super::text::{LineReader, is_blank, push_f64, push_u64, shape_str};
use super::{Bands, CELL_BATCH, CellReader, Cells, ReadOptions, is_sparse};
use crate::block::is_stored;
use crate::error::{Result, StorageError};

/// Cells of the in-memory tile through which an `array` export is transposed (32 MiB).
const TRANSPOSE_TILE_CELLS: usize = 1 << 22;

const BANNER_FORM: &str = "expected '%%MatrixMarket matrix coordinate|array \
                           real|integer|pattern general|symmetric|skew-symmetric'";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Coordinate,
    Array,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Real,
    Integer,
    Pattern,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Symmetry {
    General,
    Symmetric,
    SkewSymmetric,
}

/// Streams cells from a Matrix Market file.
#[derive(Debug)]
pub(super) struct MtxReader {
    lines: LineReader,
    state: MtxState,
}

/// Everything but the line reader, so a borrowed line can be parsed into it.
#[derive(Debug)]
struct MtxState {
    path: PathBuf,
    format: Format,
    field: Field,
    symmetry: Symmetry,
    shape: (u64, u64),
    /// Entries the size line promises, and the line it is on.
    expected: u64,
    size_line: u64,
    seen: u64,
    /// `array` files: 0-based `(row, col)` of the next entry.
    next: (u64, u64),
    finished: bool,
}

impl MtxReader {
    /// Opens `path` and reads the banner and the size line.
    pub(super) fn open(path: &Path, options: &ReadOptions) -> Result<Self> {
        let mut lines = LineReader::open(path)?;
        let bad = |line, msg: String| StorageError::bad_file(path, line, msg);
        let Some((_, banner)) = lines.next_line()? else {
            return Err(bad(1, format!("empty file: {BANNER_FORM}")));
        };
        let (format, field, symmetry) = parse_banner(banner).map_err(|m| bad(1, m))?;

        let (size_line, sizes) = loop {
            let Some((no, line)) = lines.next_line()? else {
                return Err(bad(
                    lines.line_no().max(1),
                    "the file ends before the size line".into(),
                ));
            };
            if is_blank(line) || line.starts_with('%') {
                continue;
            }
            let want = if format == Format::Coordinate { 3 } else { 2 };
            let form = if want == 3 {
                "'rows columns entries'"
            } else {
                "'rows columns'"
            };
            let sizes: Vec<Option<u64>> = line
                .split_ascii_whitespace()
                .map(|f| f.parse().ok())
                .collect();
            if sizes.len() != want || sizes.iter().any(Option::is_none) {
                return Err(bad(
                    no,
                    format!("bad size line \"{line}\": expected {form}"),
                ));
            }
            break (no, sizes.into_iter().flatten().collect::<Vec<u64>>());
        };
        let shape = (sizes[0], sizes[1]);
        if symmetry != Symmetry::General && shape.0 != shape.1 {
            return Err(bad(
                size_line,
                format!(
                    "a {} matrix must be square, the size line says {}",
                    symmetry_name(symmetry),
                    shape_str(shape)
                ),
            ));
        }
        if let Some(target) = options.target_shape
            && target != shape
        {
            return Err(bad(
                size_line,
                format!(
                    "the file declares a {} matrix but the target shape is {}",
                    shape_str(shape),
                    shape_str(target)
                ),
            ));
        }
        let n = shape.0;
        let expected = match (format, symmetry) {
            (Format::Coordinate, _) => Some(sizes[2]),
            (Format::Array, Symmetry::General) => shape.0.checked_mul(shape.1),
            (Format::Array, Symmetry::Symmetric) => {
                n.checked_mul(n.saturating_add(1)).map(|x| x / 2)
            }
            (Format::Array, Symmetry::SkewSymmetric) => {
                n.checked_mul(n.saturating_sub(1)).map(|x| x / 2)
            }
        }
        .ok_or_else(|| bad(size_line, format!("{} is too large", shape_str(shape))))?;
        let first_row = if symmetry == Symmetry::SkewSymmetric {
            1
        } else {
            0
        };

        Ok(Self {
            lines,
            state: MtxState {
                path: path.to_path_buf(),
                format,
                field,
                symmetry,
                shape,
                expected,
                size_line,
                seen: 0,
                next: (first_row, 0),
                finished: false,
            },
        })
    }
}

fn parse_banner(line: &str) -> std::result::Result<(Format, Field, Symmetry), String> {
    let words: Vec<String> = line
        .split_ascii_whitespace()
        .map(str::to_ascii_lowercase)
        .collect();
    if words.first().map(String::as_str) != Some("%%matrixmarket") {
        return Err(format!("not a Matrix Market file: {BANNER_FORM}"));
    }
    if words.len() != 5 {
        return Err(format!("bad banner \"{line}\": {BANNER_FORM}"));
    }
    if words[1] != "matrix" {
        return Err(format!(
            "unsupported object '{}': Tessera reads matrices",
            words[1]
        ));
    }
    let format = match words[2].as_str() {
        "coordinate" => Format::Coordinate,
        "array" => Format::Array,
        other => return Err(format!("bad format '{other}' in banner: {BANNER_FORM}")),
    };
    let field = match words[3].as_str() {
        "real" | "double" => Field::Real,
        "integer" => Field::Integer,
        "pattern" => Field::Pattern,
        "complex" => {
            return Err("complex matrices are not supported (Tessera stores real values)".into());
        }
        other => return Err(format!("bad field '{other}' in banner: {BANNER_FORM}")),
    };
    let symmetry = match words[4].as_str() {
        "general" => Symmetry::General,
        "symmetric" => Symmetry::Symmetric,
        "skew-symmetric" => Symmetry::SkewSymmetric,
        "hermitian" => {
            return Err("hermitian matrices are not supported (Tessera stores real values)".into());
        }
        other => return Err(format!("bad symmetry '{other}' in banner: {BANNER_FORM}")),
    };
    if field == Field::Pattern && (format == Format::Array || symmetry == Symmetry::SkewSymmetric) {
        return Err(format!(
            "bad banner \"{line}\": pattern matrices are coordinate, general or symmetric"
        ));
    }
    Ok((format, field, symmetry))
}

fn symmetry_name(s: Symmetry) -> &'static str {
    match s {
        Symmetry::General => "general",
        Symmetry::Symmetric => "symmetric",
        Symmetry::SkewSymmetric => "skew-symmetric",
    }
}

impl MtxState {
    fn error(&self, line: u64, msg: impl Into<String>) -> StorageError {
        StorageError::bad_file(&self.path, line, msg)
    }

    /// Parses one entry line into `batch` (one cell, or two when mirrored).
    fn parse_entry(&mut self, no: u64, line: &str, batch: &mut Cells) -> Result<()> {
        if self.seen == self.expected {
            return Err(self.error(
                no,
                format!(
                    "too many entries: the size line (line {}) declares {}",
                    self.size_line, self.expected
                ),
            ));
        }
        let mut words = line.split_ascii_whitespace();
        let mut field = [""; 3];
        let mut n = 0;
        for w in words.by_ref().take(3) {
            field[n] = w;
            n += 1;
        }
        n += words.count();
        let (want, form) = match (self.format, self.field) {
            (Format::Array, _) => (1, "value"),
            (Format::Coordinate, Field::Pattern) => (2, "row column"),
            (Format::Coordinate, _) => (3, "row column value"),
        };
        if n != want {
            let fields = if want == 1 { "field" } else { "fields" };
            return Err(self.error(no, format!("expected {want} {fields} ({form}), found {n}")));
        }
        let (r, c, v) = match self.format {
            Format::Coordinate => {
                let r = self.parse_index(no, field[0], "row", self.shape.0)?;
                let c = self.parse_index(no, field[1], "column", self.shape.1)?;
                let v = if self.field == Field::Pattern {
                    1.0
                } else {
                    self.parse_value(no, field[2])?
                };
                (r, c, v)
            }
            Format::Array => {
                let (r, c) = self.next;
                self.advance();
                (r, c, self.parse_value(no, field[0])?)
            }
        };
        self.seen += 1;
        if self.symmetry == Symmetry::SkewSymmetric && r == c && v != 0.0 {
            let msg = format!("diagonal entry {v}: a skew-symmetric matrix has a zero diagonal");
            return Err(self.error(no, msg));
        }
        if is_stored(v) {
            batch.rows.push(r);
            batch.cols.push(c);
            batch.values.push(v);
            if r != c {
                let mirrored = match self.symmetry {
                    Symmetry::General => None,
                    Symmetry::Symmetric => Some(v),
                    Symmetry::SkewSymmetric => Some(-v),
                };
                if let Some(m) = mirrored {
                    batch.rows.push(c);
                    batch.cols.push(r);
                    batch.values.push(m);
                }
            }
        }
        Ok(())
    }

    /// A 1-based index in `1..=size`, returned 0-based.
    fn parse_index(&self, no: u64, field: &str, what: &str, size: u64) -> Result<u64> {
        match field.parse::<u64>() {
            Ok(i) if (1..=size).contains(&i) => Ok(i - 1),
            Ok(i) => Err(self.error(
                no,
                format!(
                    "{what} index {i} is out of range 1..={size} of the {} matrix \
                     (indices are 1-based)",
                    shape_str(self.shape)
                ),
            )),
            Err(_) => Err(self.error(no, format!("bad {what} index \"{field}\""))),
        }
    }

    fn parse_value(&self, no: u64, field: &str) -> Result<f64> {
        match self.field {
            Field::Integer => field
                .parse::<i64>()
                .map(|i| i as f64)
                .map_err(|_| self.error(no, format!("bad integer \"{field}\""))),
            _ => field
                .parse::<f64>()
                .map_err(|_| self.error(no, format!("bad number \"{field}\""))),
        }
    }

    /// Moves the `array` cursor down the column, then to the next column's first row
    /// (the diagonal, or below it when skew-symmetric, for symmetric files).
    fn advance(&mut self) {
        let (r, c) = self.next;
        self.next = if r + 1 < self.shape.0 {
            (r + 1, c)
        } else {
            let c = c + 1;
            match self.symmetry {
                Symmetry::General => (0, c),
                Symmetry::Symmetric => (c, c),
                Symmetry::SkewSymmetric => (c + 1, c),
            }
        };
    }
}

impl CellReader for MtxReader {
    fn declared_shape(&self) -> Option<(u64, u64)> {
        Some(self.state.shape)
    }

    fn row_ordered(&self) -> bool {
        // Array files list whole columns; a one-column matrix is still in row order.
        self.state.format == Format::Array && self.state.shape.1 <= 1
    }

    fn next_cells(&mut self) -> Result<Option<Cells>> {
        let state = &mut self.state;
        let mut batch = Cells::default();
        // Two cells per entry at most (a mirrored one).
        while !state.finished && batch.len() + 2 <= CELL_BATCH {
            let Some((no, line)) = self.lines.next_line()? else {
                state.finished = true;
                if state.seen < state.expected {
                    return Err(state.error(
                        self.lines.line_no().max(1),
                        format!(
                            "too few entries: the size line (line {}) declares {}, found {}",
                            state.size_line, state.expected, state.seen
                        ),
                    ));
                }
                break;
            };
            if is_blank(line) || line.starts_with('%') {
                continue;
            }
            state.parse_entry(no, line, &mut batch)?;
        }
        Ok(if batch.is_empty() && state.finished {
            None
        } else {
            Some(batch)
        })
    }

    fn final_shape(&self) -> Option<(u64, u64)> {
        Some(self.state.shape)
    }
}

/// Writes `coordinate real general` (sparse) or `array real general`; returns the number
/// of non-zeros written.
pub(super) fn write(
    out: &mut AtomicFile,
    shape: (u64, u64),
    nnz: u64,
    bands: &mut Bands<'_>,
) -> Result<u64> {
    if is_sparse(shape, nnz) {
        write_coordinate(out, shape, nnz, bands)
    } else {
        write_array(out, shape, bands, TRANSPOSE_TILE_CELLS)
    }
}

fn write_coordinate(
    out: &mut AtomicFile,
    shape: (u64, u64),
    nnz: u64,
    bands: &mut Bands<'_>,
) -> Result<u64> {
    let mut line = Vec::with_capacity(64);
    line.extend_from_slice(
        b"%%MatrixMarket matrix coordinate real general\n% written by Tessera\n",
    );
    push_u64(&mut line, shape.0);
    line.push(b' ');
    push_u64(&mut line, shape.1);
    line.push(b' ');
    push_u64(&mut line, nnz);
    line.push(b'\n');
    out.write_all(&line)?;
    let mut written = 0u64;
    for band in bands {
        let band = band?;
        for r in 0..band.rows {
            let row = band.row0 + r as u64 + 1;
            let mut result = Ok(());
            for_each_nonzero_in_row(&band, r, |col, v| {
                if result.is_ok() {
                    line.clear();
                    push_u64(&mut line, row);
                    line.push(b' ');
                    push_u64(&mut line, col + 1);
                    line.push(b' ');
                    push_f64(&mut line, v);
                    line.push(b'\n');
                    result = out.write_all(&line);
                    written += 1;
                }
            });
            result?;
        }
    }
    Ok(written)
}

/// Writes the column-major `array` format from bands of rows in two passes over a scratch
/// file beside the target. The columns are cut into chunks of `w` columns such that a
/// chunk's full height fits `tile_cells`; the first pass stores each band's slice of each
/// chunk (row-major `f64`) in that chunk's region of the scratch file, the second reads
/// the regions back one at a time and writes them column by column. With more rows than
/// `tile_cells`, chunks are one column wide and are streamed without a tile.
fn write_array(
    out: &mut AtomicFile,
    shape: (u64, u64),
    bands: &mut Bands<'_>,
    tile_cells: usize,
) -> Result<u64> {
    let mut head = b"%%MatrixMarket matrix array real general\n% written by Tessera\n".to_vec();
    push_u64(&mut head, shape.0);
    head.push(b' ');
    push_u64(&mut head, shape.1);
    head.push(b'\n');
    out.write_all(&head)?;

    let (rows, cols) = (to_usize(shape.0)?, to_usize(shape.1)?);
    if rows == 0 || cols == 0 {
        for band in bands {
            band?;
        }
        return Ok(0);
    }
    let width = (tile_cells / rows).clamp(1, cols);
    let chunks: Vec<(usize, usize)> = (0..cols)
        .step_by(width)
        .map(|c0| (c0, width.min(cols - c0)))
        .collect();
    let (scratch, mut file) = TempPath::create_beside(out.target(), "spill")?;
    let io_err = |e| StorageError::io(scratch.path().display(), e);
    // Sized up front (sparsely), so regions that no band wrote read back as zeros.
    let scratch_len = rows.checked_mul(cols).and_then(|n| n.checked_mul(8));
    let scratch_len = scratch_len.ok_or_else(|| {
        StorageError::InvalidArgument(format!("{} is too large", shape_str(shape)))
    })?;
    file.set_len(scratch_len as u64).map_err(io_err)?;

    // Pass 1: scatter each band into the chunk regions.
    let mut written = 0u64;
    let mut band_values = Vec::new();
    let mut bytes = Vec::new();
    for band in bands {
        let band = band?;
        band_values.clear();
        band_values.resize(band.rows * cols, 0.0);
        for (r, row) in band_values
            .chunks_exact_mut(cols)
            .enumerate()
            .take(band.rows)
        {
            dense_row(&band, r, row);
        }
        written += count_nonzero(&band_values);
        let row0 = to_usize(band.row0)?;
        for &(c0, w) in &chunks {
            bytes.clear();
            for row in band_values.chunks_exact(cols).take(band.rows) {
                for v in &row[c0..c0 + w] {
                    bytes.extend_from_slice(&v.to_le_bytes());
                }
            }
            let offset = ((rows * c0 + row0 * w) * 8) as u64;
            file.seek(SeekFrom::Start(offset)).map_err(io_err)?;
            file.write_all(&bytes).map_err(io_err)?;
        }
    }

    // Pass 2: each region back, column by column.
    let mut line = Vec::with_capacity(32);
    let mut tile = Vec::new();
    for &(c0, w) in &chunks {
        file.seek(SeekFrom::Start((rows * c0 * 8) as u64))
            .map_err(io_err)?;
        let mut left = rows * w;
        let piece = if w == 1 { tile_cells.max(1) } else { left };
        while left > 0 {
            let n = piece.min(left);
            read_f64s(&mut file, n, &mut bytes, &mut tile).map_err(io_err)?;
            left -= n;
            if w == 1 {
                for &v in &tile {
                    write_value(out, &mut line, v)?;
                }
            } else {
                for c in 0..w {
                    for r in 0..rows {
                        write_value(out, &mut line, tile[r * w + c])?;
                    }
                }
            }
        }
    }
    drop(file);
    drop(scratch);
    Ok(written)
}

fn read_f64s(
    file: &mut File,
    n: usize,
    bytes: &mut Vec<u8>,
    values: &mut Vec<f64>,
) -> std::io::Result<()> {
    bytes.resize(n * 8, 0);
    file.read_exact(bytes)?;
    values.clear();
    values.extend(bytes.chunks_exact(8).map(|b| {
        let mut le = [0u8; 8];
        le.copy_from_slice(b);
        f64::from_le_bytes(le)
    }));
    Ok(())
}

fn write_value(out: &mut AtomicFile, line: &mut Vec<u8>, v: f64) -> Result<()> {
    line.clear();
    push_f64(line, v);
    line.push(b'\n');
    out.write_all(line)
}

/// Writes cells that arrive in any order (a query's `(i, j, v)` rows, 0-based) as a
/// Matrix Market coordinate file (1-based) whose shape is one past the largest row and
/// column. Entries go to a scratch file beside the target as they come, since the size
/// line before them needs their count; [`MtxCellWriter::commit`] writes the header and
/// copies them after it, in the order pushed (a position listed twice is listed twice;
/// readers sum such entries, as Tessera's loads do), and renames the file into place.
/// Dropped before the commit, it leaves nothing behind.
#[derive(Debug)]
pub struct MtxCellWriter {
    target: PathBuf,
    scratch: TempPath,
    out: std::io::BufWriter<File>,
    shape: (u64, u64),
    entries: u64,
    line: Vec<u8>,
}

impl MtxCellWriter {
    /// Starts a file at `target`.
    pub fn create(target: &Path) -> Result<Self> {
        let (scratch, file) = TempPath::create_beside(target, "cells")?;
        Ok(Self {
            target: target.to_path_buf(),
            scratch,
            out: std::io::BufWriter::with_capacity(1 << 20, file),
            shape: (0, 0),
            entries: 0,
            line: Vec::with_capacity(64),
        })
    }

    /// Adds the cell at 0-based `(row, col)`.
    pub fn push(&mut self, row: u64, col: u64, value: f64) -> Result<()> {
        let (r, c) = match (row.checked_add(1), col.checked_add(1)) {
            (Some(r), Some(c)) => (r, c),
            _ => {
                return Err(StorageError::InvalidArgument(format!(
                    "cell ({row}, {col}) is past the largest Matrix Market index"
                )));
            }
        };
        self.shape = (self.shape.0.max(r), self.shape.1.max(c));
        self.line.clear();
        push_u64(&mut self.line, r);
        self.line.push(b' ');
        push_u64(&mut self.line, c);
        self.line.push(b' ');
        push_f64(&mut self.line, value);
        self.line.push(b'\n');
        self.out
            .write_all(&self.line)
            .map_err(|e| StorageError::io(self.scratch.path().display(), e))?;
        self.entries += 1;
        Ok(())
    }

    /// Writes the file and renames it into place; returns its shape.
    pub fn commit(self) -> Result<(u64, u64)> {
        let Self {
            target,
            scratch,
            out,
            shape,
            entries,
            ..
        } = self;
        let scratch_err = |e| StorageError::io(scratch.path().display(), e);
        let mut scratch_file = out.into_inner().map_err(|e| scratch_err(e.into_error()))?;
        scratch_file.seek(SeekFrom::Start(0)).map_err(scratch_err)?;
        let mut file = AtomicFile::create(&target)?;
        let mut head =
            b"%%MatrixMarket matrix coordinate real general\n% written by Tessera\n".to_vec();
        push_u64(&mut head, shape.0);
        head.push(b' ');
        push_u64(&mut head, shape.1);
        head.push(b' ');
        push_u64(&mut head, entries);
        head.push(b'\n');
        file.write_all(&head)?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = scratch_file.read(&mut buf).map_err(scratch_err)?;
            if n == 0 {
                break;
            }
            file.write_all(&buf[..n])?;
        }
        drop(scratch_file);
        drop(scratch);
        file.commit()?;
        Ok(shape)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic

    use super::*;
    use crate::io::{BlockBand, FileFormat, open_reader, write_file};
    use crate::{Block, CsrBlock, DenseBlock};

    type Triples = Vec<(u64, u64, f64)>;

    fn read_all(path: &Path, opts: &ReadOptions) -> Result<(Triples, Option<(u64, u64)>)> {
        crate::io::read_all_sorted(path, FileFormat::MatrixMarket, opts)
    }

    fn read_text(text: &str) -> (Triples, Option<(u64, u64)>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.mtx");
        std::fs::write(&path, text).unwrap();
        read_all(&path, &ReadOptions::default()).unwrap()
    }

    fn error_at(text: &str, target: Option<(u64, u64)>, line: u64) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.mtx");
        std::fs::write(&path, text).unwrap();
        let opts = ReadOptions {
            target_shape: target,
            ..ReadOptions::default()
        };
        let err = read_all(&path, &opts)
            .expect_err("the file is bad")
            .to_string();
        assert!(
            err.starts_with(&format!("{}:{line}: ", path.display())),
            "{err}"
        );
        err
    }

    #[test]
    fn coordinate_files_with_every_symmetry() {
        let (cells, shape) = read_text(
            "%%MatrixMarket matrix coordinate real general\n% a comment\n%\n3 4 3\n3 4 -1.5E-1\n1 1 2\n\n2 3 0\n",
        );
        assert_eq!(cells, vec![(0, 0, 2.0), (2, 3, -0.15)]);
        assert_eq!(shape, Some((3, 4)));

        let sym =
            "%%matrixmarket MATRIX Coordinate Integer Symmetric\n3 3 3\n1 1 4\n3 1 -2\n3 3 9\n";
        let (cells, _) = read_text(sym);
        assert_eq!(
            cells,
            vec![(0, 0, 4.0), (0, 2, -2.0), (2, 0, -2.0), (2, 2, 9.0)]
        );

        let skew = "%%MatrixMarket matrix coordinate real skew-symmetric\n3 3 2\n2 1 5\n3 2 -1\n";
        let (cells, _) = read_text(skew);
        assert_eq!(
            cells,
            vec![(0, 1, -5.0), (1, 0, 5.0), (1, 2, 1.0), (2, 1, -1.0)]
        );

        let pattern = "%%MatrixMarket matrix coordinate pattern symmetric\n2 2 2\n1 1\n2 1\n";
        let (cells, _) = read_text(pattern);
        assert_eq!(cells, vec![(0, 0, 1.0), (0, 1, 1.0), (1, 0, 1.0)]);
    }

    #[test]
    fn array_files_are_column_major() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.mtx");
        std::fs::write(
            &path,
            "%%MatrixMarket matrix array real general\n2 3\n1\n4\n2\n0\n3\n6\n",
        )
        .unwrap();
        let r = open_reader(&path, FileFormat::MatrixMarket, &ReadOptions::default()).unwrap();
        assert!(!r.row_ordered());
        assert_eq!(r.declared_shape(), Some((2, 3)));
        let (cells, shape) = read_all(&path, &ReadOptions::default()).unwrap();
        assert_eq!(
            cells,
            vec![
                (0, 0, 1.0),
                (0, 1, 2.0),
                (0, 2, 3.0),
                (1, 0, 4.0),
                (1, 2, 6.0)
            ]
        );
        assert_eq!(shape, Some((2, 3)));

        // Lower triangles, column by column: [[1,2,3],[2,4,5],[3,5,6]].
        let (cells, _) =
            read_text("%%MatrixMarket matrix array real symmetric\n3 3\n1\n2\n3\n4\n5\n6\n");
        let dense: Vec<f64> = cells.iter().map(|c| c.2).collect();
        assert_eq!(dense, vec![1.0, 2.0, 3.0, 2.0, 4.0, 5.0, 3.0, 5.0, 6.0]);
        let (cells, _) =
            read_text("%%MatrixMarket matrix array real skew-symmetric\n3 3\n1\n2\n3\n");
        assert_eq!(
            cells,
            vec![
                (0, 1, -1.0),
                (0, 2, -2.0),
                (1, 0, 1.0),
                (1, 2, -3.0),
                (2, 0, 2.0),
                (2, 1, 3.0)
            ]
        );
    }

    #[test]
    fn input_errors_name_the_file_and_line() {
        let general = "%%MatrixMarket matrix coordinate real general\n";
        let err = error_at("%%MatrixMarket matrix coordinate real\n2 2 0\n", None, 1);
        assert!(err.contains("bad banner"), "{err}");
        let err = error_at("2 2 0\n", None, 1);
        assert!(err.contains("not a Matrix Market file"), "{err}");
        let err = error_at("", None, 1);
        assert!(err.contains("empty file"), "{err}");
        let err = error_at(
            "%%MatrixMarket matrix coordinate complex general\n1 1 0\n",
            None,
            1,
        );
        assert!(err.contains("complex matrices are not supported"), "{err}");
        let err = error_at("%%MatrixMarket matrix array real hermitian\n1 1\n", None, 1);
        assert!(
            err.contains("hermitian matrices are not supported"),
            "{err}"
        );
        let err = error_at(
            "%%MatrixMarket matrix array pattern general\n1 1\n",
            None,
            1,
        );
        assert!(err.contains("pattern matrices are coordinate"), "{err}");
        let err = error_at(&format!("{general}%\n2 x 1\n"), None, 3);
        assert!(
            err.contains("bad size line \"2 x 1\": expected 'rows columns entries'"),
            "{err}"
        );
        let err = error_at("%%MatrixMarket matrix array real general\n2 2 4\n", None, 2);
        assert!(err.contains("expected 'rows columns'"), "{err}");
        let err = error_at(
            "%%MatrixMarket matrix coordinate real symmetric\n2 3 0\n",
            None,
            2,
        );
        assert!(
            err.contains("a symmetric matrix must be square, the size line says 2x3"),
            "{err}"
        );
        let err = error_at(&format!("{general}2 3 0\n"), Some((3, 2)), 2);
        assert!(
            err.contains("declares a 2x3 matrix but the target shape is 3x2"),
            "{err}"
        );
        let err = error_at(&format!("{general}2 3 3\n1 1 1\n2 3 1\n"), None, 4);
        assert!(
            err.contains("too few entries: the size line (line 2) declares 3, found 2"),
            "{err}"
        );
        let err = error_at(&format!("{general}2 3 1\n1 1 1\n2 3 1\n"), None, 4);
        assert!(
            err.contains("too many entries: the size line (line 2) declares 1"),
            "{err}"
        );
        let err = error_at(&format!("{general}2 3 2\n1 1 1\n0 3 1\n"), None, 4);
        assert!(
            err.contains("row index 0 is out of range 1..=2 of the 2x3 matrix"),
            "{err}"
        );
        let err = error_at(&format!("{general}2 3 2\n1 1 1\n2 4 1\n"), None, 4);
        assert!(
            err.contains("column index 4 is out of range 1..=3"),
            "{err}"
        );
        let err = error_at(&format!("{general}2 3 2\n1 1 1\n2 x 1\n"), None, 4);
        assert!(err.contains("bad column index \"x\""), "{err}");
        let err = error_at(&format!("{general}2 3 2\n1 1 1\n2 2 1.2.3\n"), None, 4);
        assert!(err.contains("bad number \"1.2.3\""), "{err}");
        let err = error_at(&format!("{general}2 3 2\n1 1 1\n2 2\n"), None, 4);
        assert!(
            err.contains("expected 3 fields (row column value), found 2"),
            "{err}"
        );
        let err = error_at(
            "%%MatrixMarket matrix coordinate pattern general\n2 2 1\n1 1 1\n",
            None,
            3,
        );
        assert!(
            err.contains("expected 2 fields (row column), found 3"),
            "{err}"
        );
        let err = error_at(
            "%%MatrixMarket matrix coordinate integer general\n2 2 1\n1 1 1.5\n",
            None,
            3,
        );
        assert!(err.contains("bad integer \"1.5\""), "{err}");
        let err = error_at(
            "%%MatrixMarket matrix array real general\n1 2\n1\n2 3\n",
            None,
            4,
        );
        assert!(err.contains("expected 1 field (value), found 2"), "{err}");
        let err = error_at(
            "%%MatrixMarket matrix array real general\n1 2\n1\n",
            None,
            3,
        );
        assert!(err.contains("declares 2, found 1"), "{err}");
        let err = error_at(
            "%%MatrixMarket matrix coordinate real skew-symmetric\n2 2 1\n1 1 3\n",
            None,
            3,
        );
        assert!(err.contains("zero diagonal"), "{err}");
    }

    fn test_matrix() -> (Vec<BlockBand>, DenseBlock) {
        // 5x3, bands of 2, 2 and 1 rows; a dense block, a CSR block, a missing block.
        let full = DenseBlock::from_fn(5, 3, |r, c| {
            if (r + c) % 3 == 0 {
                0.0
            } else {
                (r * 3 + c) as f64 / 7.0
            }
        });
        let sub = |r0: usize, rows: usize, c0: usize, cols: usize| {
            DenseBlock::from_fn(rows, cols, |r, c| full.get(r0 + r, c0 + c))
        };
        let bands = vec![
            BlockBand {
                row0: 0,
                rows: 2,
                blocks: vec![
                    (0, Block::Dense(sub(0, 2, 0, 2))),
                    (2, Block::Dense(sub(0, 2, 2, 1))),
                ],
            },
            BlockBand {
                row0: 2,
                rows: 2,
                blocks: vec![(0, Block::Sparse(CsrBlock::from_dense(&sub(2, 2, 0, 3))))],
            },
            BlockBand {
                row0: 4,
                rows: 1,
                blocks: vec![
                    (0, Block::Dense(sub(4, 1, 0, 2))),
                    (2, Block::Dense(sub(4, 1, 2, 1))),
                ],
            },
        ];
        (bands, full)
    }

    fn cells_of(d: &DenseBlock) -> Triples {
        let mut out = vec![];
        Block::Dense(d.clone()).for_each_nonzero(|r, c, v| out.push((r as u64, c as u64, v)));
        out
    }

    #[test]
    fn written_files_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.mtx");
        let (bands, full) = test_matrix();
        let nnz = full.nnz() as u64;
        write_file(
            &path,
            FileFormat::MatrixMarket,
            (5, 3),
            nnz,
            &mut bands.clone().into_iter().map(Ok),
        )
        .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with(
                "%%MatrixMarket matrix array real general\n% written by Tessera\n5 3\n0\n"
            ),
            "{text}"
        );
        assert_eq!(
            read_all(&path, &ReadOptions::default()).unwrap(),
            (cells_of(&full), Some((5, 3)))
        );

        // Small tiles: several column chunks, and one-column chunks streamed in pieces.
        for tile in [1, 2, 5, 10, 15] {
            let mut out = AtomicFile::create(&path).unwrap();
            let written = write_array(
                &mut out,
                (5, 3),
                &mut bands.clone().into_iter().map(Ok),
                tile,
            )
            .unwrap();
            out.commit().unwrap();
            assert_eq!(written, nnz);
            assert_eq!(
                std::fs::read_to_string(&path).unwrap(),
                text,
                "tile of {tile} cells"
            );
        }

        // Sparse: coordinate, declaring the non-zeros.
        let sparse = DenseBlock::from_fn(
            4,
            5,
            |r, c| if r == c { 1e-300 * (r + 1) as f64 } else { 0.0 },
        );
        let bands = vec![BlockBand {
            row0: 0,
            rows: 4,
            blocks: vec![(0, Block::Dense(sparse.clone()))],
        }];
        write_file(
            &path,
            FileFormat::MatrixMarket,
            (4, 5),
            4,
            &mut bands.into_iter().map(Ok),
        )
        .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("%%MatrixMarket matrix coordinate real general\n% written by Tessera\n4 5 4\n1 1 1e-300\n"), "{text}");
        assert_eq!(
            read_all(&path, &ReadOptions::default()).unwrap(),
            (cells_of(&sparse), Some((4, 5)))
        );

        // A wrong count is refused and leaves nothing, scratch file included.
        let (bands, _) = test_matrix();
        let err = write_file(
            &path,
            FileFormat::MatrixMarket,
            (5, 3),
            nnz + 1,
            &mut bands.into_iter().map(Ok),
        );
        assert!(err.unwrap_err().to_string().contains("non-zeros"));
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec!["out.mtx"]);
    }
}
