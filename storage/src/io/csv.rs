//! CSV: `i,j,v` triples (0-based) or dense rows, one matrix row per line.
//!
//! The reader decides header and layout from the first lines (see [`ReadOptions`]),
//! then parses line by line with `str::split` and `str::parse::<f64>`; a dense row is
//! parsed whole into a carry buffer and handed out across batches, so a row wider than
//! [`CELL_BATCH`] still respects the batch limit.

use std::path::{Path, PathBuf};

use super::output::{AtomicFile, dense_row, for_each_nonzero_in_row, to_usize};
use super::text::{LineReader, is_blank, push_f64, push_u64, shape_str};
use super::{Bands, CELL_BATCH, CellReader, Cells, CsvLayout, ReadOptions, is_sparse};
use crate::block::is_stored;
use crate::error::{Result, StorageError};

/// Largest index accepted when written as a float (`3.0`): above 2^53 floats skip integers.
const MAX_FLOAT_INDEX: f64 = 9_007_199_254_740_992.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    Triples,
    Dense,
}

/// Streams cells from a CSV file.
#[derive(Debug)]
pub(super) struct CsvReader {
    lines: LineReader,
    state: CsvState,
}

/// Everything but the line reader, so a borrowed line can be parsed into it.
#[derive(Debug)]
struct CsvState {
    path: PathBuf,
    layout: Layout,
    target: Option<(u64, u64)>,
    /// Dense: fields per row and the line that set it (header or first row).
    width: Option<(usize, u64)>,
    /// The first data line, read while detecting header and layout.
    first: Option<(u64, String)>,
    /// Dense rows read so far.
    rows: u64,
    /// Triples: one past the largest row and column mentioned, zeros included.
    extent: (u64, u64),
    /// First line of a run of blank lines that no data has followed yet.
    blank_run: Option<u64>,
    /// Cells of the last dense row not yet handed out, from `carry_pos` on.
    carry: Cells,
    carry_pos: usize,
    finished: bool,
}

/// Whether a header line names coordinates and a value (`i,j,v`, `row,col,value`, ...).
fn names_triples(header: &str) -> bool {
    let names: Vec<String> = fields(header)
        .map(|f| f.trim_matches('"').trim().to_ascii_lowercase())
        .collect();
    let is = |n: &String, options: &[&str]| options.contains(&n.as_str());
    names.len() == 3
        && is(&names[0], &["i", "row", "r", "x"])
        && is(&names[1], &["j", "col", "column", "c", "y"])
        && is(&names[2], &["v", "val", "value", "values", "data"])
}

impl CsvReader {
    /// Opens `path` and reads up to the first data line to settle header and layout.
    pub(super) fn open(path: &Path, options: &ReadOptions) -> Result<Self> {
        let mut lines = LineReader::open(path)?;
        let bad = |line, msg: String| StorageError::bad_file(path, line, msg);
        let mut blank_run = None;
        let mut first = next_data_line(&mut lines, &mut blank_run)?;

        // The header, if any: (line number, number of fields, whether it names triples).
        let mut header = None;
        if let Some((no, text)) = &first {
            let is_header = options
                .csv_header
                .unwrap_or_else(|| !fields(text).all(|f| f.parse::<f64>().is_ok()));
            if is_header {
                header = Some((*no, fields(text).count(), names_triples(text)));
                first = next_data_line(&mut lines, &mut blank_run)?;
            }
        }
        let first_width = first.as_ref().map(|(_, text)| fields(text).count());
        let target = options.target_shape;
        let layout = match options.csv_layout {
            CsvLayout::Triples => Layout::Triples,
            CsvLayout::Dense => Layout::Dense,
            CsvLayout::Auto => match (header, first_width) {
                // Three names mean triples, unless a 3-column matrix is being loaded and
                // the names are not coordinates (a dense file with named columns).
                (Some((_, 3, named)), _) if named || target.is_none_or(|t| t.1 != 3) => {
                    Layout::Triples
                }
                (Some(_), _) => Layout::Dense,
                (None, Some(3)) if target.is_some_and(|t| t.1 != 3) => Layout::Triples,
                (None, Some(_)) => Layout::Dense,
                // No data and no header: nothing to load, whatever the layout.
                (None, None) => Layout::Triples,
            },
        };

        let mut width = None;
        match (layout, header) {
            (Layout::Triples, Some((no, n, _))) if n != 3 => {
                return Err(bad(
                    no,
                    format!("a triples header has 3 fields (i,j,v), found {n}"),
                ));
            }
            (Layout::Dense, Some((no, n, _))) => width = Some((n, no)),
            (Layout::Dense, None) => {
                width = first.as_ref().zip(first_width).map(|((no, _), n)| (n, *no));
            }
            _ => {}
        }
        if let (Some((n, no)), Some(t)) = (width, target)
            && n as u64 != t.1
        {
            return Err(bad(
                no,
                format!(
                    "rows have {n} values but the target shape {} has {} columns",
                    shape_str(t),
                    t.1
                ),
            ));
        }

        Ok(Self {
            lines,
            state: CsvState {
                path: path.to_path_buf(),
                layout,
                target,
                width,
                first,
                rows: 0,
                extent: (0, 0),
                blank_run,
                carry: Cells::default(),
                carry_pos: 0,
                finished: false,
            },
        })
    }
}

/// The next non-blank line, owned; a blank line before it is an error.
fn next_data_line(
    lines: &mut LineReader,
    blank_run: &mut Option<u64>,
) -> Result<Option<(u64, String)>> {
    while let Some((no, line)) = lines.next_line()? {
        if is_blank(line) {
            blank_run.get_or_insert(no);
            continue;
        }
        if let Some(blank) = *blank_run {
            return Err(blank_line_error(lines.path(), blank));
        }
        return Ok(Some((no, line.to_owned())));
    }
    Ok(None)
}

fn blank_line_error(path: &Path, line: u64) -> StorageError {
    StorageError::bad_file(
        path,
        line,
        "blank line before more data (blank lines may only end the file)",
    )
}

/// The fields of a line: split on commas, trimmed of spaces and tabs and of one pair of
/// double quotes.
fn fields(line: &str) -> impl Iterator<Item = &str> {
    line.split(',').map(|f| {
        let f = f.trim_matches([' ', '\t']);
        f.strip_prefix('"')
            .and_then(|g| g.strip_suffix('"'))
            .unwrap_or(f)
    })
}

impl CsvState {
    fn error(&self, line: u64, msg: impl Into<String>) -> StorageError {
        StorageError::bad_file(&self.path, line, msg)
    }

    /// Parses one data line: a triple into `batch`, a dense row into the carry buffer.
    fn parse_line(&mut self, no: u64, line: &str, batch: &mut Cells) -> Result<()> {
        match self.layout {
            Layout::Triples => self.parse_triple(no, line, batch),
            Layout::Dense => self.parse_row(no, line),
        }
    }

    fn parse_triple(&mut self, no: u64, line: &str, batch: &mut Cells) -> Result<()> {
        let mut it = fields(line);
        let (Some(i), Some(j), Some(v), None) = (it.next(), it.next(), it.next(), it.next()) else {
            let n = fields(line).count();
            return Err(self.error(no, format!("expected 3 fields (i,j,v), found {n}")));
        };
        let r = self.parse_index(no, i, "row", self.target.map(|t| t.0))?;
        let c = self.parse_index(no, j, "column", self.target.map(|t| t.1))?;
        let v = v
            .parse::<f64>()
            .map_err(|_| self.error(no, format!("bad number \"{v}\" in column 3")))?;
        // Checked by parse_index: an index is below u64::MAX, so +1 cannot overflow.
        self.extent = (self.extent.0.max(r + 1), self.extent.1.max(c + 1));
        if is_stored(v) {
            batch.rows.push(r);
            batch.cols.push(c);
            batch.values.push(v);
        }
        Ok(())
    }

    /// A 0-based index: a whole number (`3` or `3.0`) below `limit` (the target's rows or
    /// columns) when there is a target.
    fn parse_index(&self, no: u64, field: &str, what: &str, limit: Option<u64>) -> Result<u64> {
        let index = match field.parse::<u64>() {
            Ok(n) => n,
            Err(_) => match field.parse::<f64>() {
                Ok(x) if !x.is_finite() => {
                    return Err(self.error(no, format!("bad {what} index \"{field}\"")));
                }
                Ok(x) if x < 0.0 => {
                    return Err(self.error(no, format!("negative {what} index \"{field}\"")));
                }
                Ok(x) if x.fract() != 0.0 => {
                    return Err(self.error(no, format!("fractional {what} index \"{field}\"")));
                }
                Ok(x) if x > MAX_FLOAT_INDEX => {
                    return Err(self.error(no, format!("{what} index \"{field}\" is too large")));
                }
                Ok(x) => x as u64,
                Err(_) => return Err(self.error(no, format!("bad {what} index \"{field}\""))),
            },
        };
        match (limit, self.target) {
            (Some(limit), Some(target)) if index >= limit => Err(self.error(
                no,
                format!(
                    "{what} index {index} is out of range for the target shape {} (0-based, \
                     below {limit})",
                    shape_str(target)
                ),
            )),
            // One past the index is the extent, so u64::MAX itself cannot be an index.
            (None, _) if index == u64::MAX => {
                Err(self.error(no, format!("{what} index {index} is too large")))
            }
            _ => Ok(index),
        }
    }

    fn parse_row(&mut self, no: u64, line: &str) -> Result<()> {
        let (width, width_line) = match self.width {
            Some(w) => w,
            None => return Err(StorageError::Internal("dense CSV row width unknown".into())),
        };
        if let Some(t) = self.target
            && self.rows >= t.0
        {
            return Err(self.error(
                no,
                format!(
                    "more than {} rows; the target shape is {}",
                    t.0,
                    shape_str(t)
                ),
            ));
        }
        let row = self.rows;
        self.clear_carry();
        let mut n = 0usize;
        for field in fields(line) {
            if n == width {
                n = fields(line).count();
                break;
            }
            let Ok(v) = field.parse::<f64>() else {
                self.clear_carry();
                let msg = format!("bad number \"{field}\" in column {}", n + 1);
                return Err(self.error(no, msg));
            };
            if is_stored(v) {
                self.carry.rows.push(row);
                self.carry.cols.push(n as u64);
                self.carry.values.push(v);
            }
            n += 1;
        }
        if n != width {
            self.clear_carry();
            return Err(self.error(
                no,
                format!("ragged row: expected {width} fields (as on line {width_line}), found {n}"),
            ));
        }
        self.rows += 1;
        Ok(())
    }

    fn clear_carry(&mut self) {
        self.carry.rows.clear();
        self.carry.cols.clear();
        self.carry.values.clear();
        self.carry_pos = 0;
    }

    /// Moves carried cells into `batch`, up to the batch limit.
    fn drain_carry(&mut self, batch: &mut Cells) {
        let end = self
            .carry
            .values
            .len()
            .min(self.carry_pos + CELL_BATCH - batch.len());
        let range = self.carry_pos..end;
        batch
            .rows
            .extend_from_slice(&self.carry.rows[range.clone()]);
        batch
            .cols
            .extend_from_slice(&self.carry.cols[range.clone()]);
        batch.values.extend_from_slice(&self.carry.values[range]);
        self.carry_pos = end;
    }

    fn has_carry(&self) -> bool {
        self.carry_pos < self.carry.values.len()
    }

    /// Checks, at the end of the file, what can only be checked there.
    fn finish(&mut self, last_line: u64) -> Result<()> {
        self.finished = true;
        if self.layout == Layout::Dense
            && let Some(t) = self.target
            && self.rows != t.0
        {
            return Err(self.error(
                last_line.max(1),
                format!(
                    "the file ends after {} rows but the target shape {} has {} rows",
                    self.rows,
                    shape_str(t),
                    t.0
                ),
            ));
        }
        Ok(())
    }
}

impl CellReader for CsvReader {
    fn declared_shape(&self) -> Option<(u64, u64)> {
        self.state.target
    }

    fn row_ordered(&self) -> bool {
        self.state.layout == Layout::Dense
    }

    fn next_cells(&mut self) -> Result<Option<Cells>> {
        let state = &mut self.state;
        let mut batch = Cells::default();
        loop {
            if state.has_carry() {
                state.drain_carry(&mut batch);
            }
            if batch.len() >= CELL_BATCH || state.finished {
                break;
            }
            if let Some((no, text)) = state.first.take() {
                state.parse_line(no, &text, &mut batch)?;
                continue;
            }
            let Some((no, line)) = self.lines.next_line()? else {
                state.finish(self.lines.line_no())?;
                break;
            };
            if is_blank(line) {
                state.blank_run.get_or_insert(no);
                continue;
            }
            if let Some(blank) = state.blank_run {
                return Err(blank_line_error(&state.path, blank));
            }
            state.parse_line(no, line, &mut batch)?;
        }
        Ok(if batch.is_empty() && state.finished {
            None
        } else {
            Some(batch)
        })
    }

    fn final_shape(&self) -> Option<(u64, u64)> {
        let s = &self.state;
        s.target.or(Some(match s.layout {
            Layout::Triples => s.extent,
            Layout::Dense => (s.rows, s.width.map_or(0, |w| w.0 as u64)),
        }))
    }
}

/// Writes triples (sparse) or dense rows; returns the number of non-zeros written.
pub(super) fn write(
    out: &mut AtomicFile,
    shape: (u64, u64),
    nnz: u64,
    bands: &mut Bands<'_>,
) -> Result<u64> {
    let mut line = Vec::with_capacity(64);
    let mut written = 0u64;
    if is_sparse(shape, nnz) {
        out.write_all(b"i,j,v\n")?;
        let mut last = None;
        for band in bands {
            let band = band?;
            for r in 0..band.rows {
                let row = band.row0 + r as u64;
                let mut result = Ok(());
                for_each_nonzero_in_row(&band, r, |col, v| {
                    if result.is_err() {
                        return;
                    }
                    line.clear();
                    push_triple(&mut line, row, col, v);
                    result = out.write_all(&line);
                    written += 1;
                    last = Some((row, col));
                });
                result?;
            }
        }
        if shape.0 > 0 && shape.1 > 0 && last != Some((shape.0 - 1, shape.1 - 1)) {
            // An explicit zero in the last cell keeps the shape in the file.
            line.clear();
            push_triple(&mut line, shape.0 - 1, shape.1 - 1, 0.0);
            out.write_all(&line)?;
        }
    } else {
        let mut row = vec![0.0; to_usize(shape.1)?];
        for band in bands {
            let band = band?;
            for r in 0..band.rows {
                dense_row(&band, r, &mut row);
                line.clear();
                for (c, &v) in row.iter().enumerate() {
                    if c > 0 {
                        line.push(b',');
                    }
                    push_f64(&mut line, v);
                    written += is_stored(v) as u64;
                }
                line.push(b'\n');
                out.write_all(&line)?;
            }
        }
    }
    Ok(written)
}

fn push_triple(line: &mut Vec<u8>, row: u64, col: u64, v: f64) {
    push_u64(line, row);
    line.push(b',');
    push_u64(line, col);
    line.push(b',');
    push_f64(line, v);
    line.push(b'\n');
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic

    use super::*;
    use crate::io::{BlockBand, FileFormat, open_reader, write_file};
    use crate::{Block, CsrBlock, DenseBlock};

    type Triples = Vec<(u64, u64, f64)>;

    fn options(target: Option<(u64, u64)>) -> ReadOptions {
        ReadOptions {
            target_shape: target,
            ..ReadOptions::default()
        }
    }

    /// All cells of a file as sorted `(row, col, value)`, and its final shape.
    fn read_all(path: &Path, opts: &ReadOptions) -> Result<(Triples, Option<(u64, u64)>)> {
        crate::io::read_all_sorted(path, FileFormat::Csv, opts)
    }

    fn file(dir: &tempfile::TempDir, text: &str) -> PathBuf {
        let path = dir.path().join("m.csv");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// The error reading `text` with `opts`; checks it names the file and `line`.
    fn error_at(text: &str, opts: &ReadOptions, line: u64) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = file(&dir, text);
        let err = read_all(&path, opts)
            .expect_err("the file is bad")
            .to_string();
        assert!(
            err.starts_with(&format!("{}:{line}: ", path.display())),
            "{err}"
        );
        err
    }

    #[test]
    fn dense_rows_with_whitespace_special_values_and_a_trailing_blank_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(&dir, " 1.5 , 0,-2\r\n0,nan,\t-inf\n\n");
        let mut r = open_reader(&path, FileFormat::Csv, &ReadOptions::default()).unwrap();
        assert!(r.row_ordered());
        assert_eq!(r.declared_shape(), None);
        let c = r.next_cells().unwrap().unwrap();
        assert_eq!(c.rows, vec![0, 0, 1, 1]);
        assert_eq!(c.cols, vec![0, 2, 1, 2]);
        assert_eq!(c.values[..2], [1.5, -2.0]);
        assert!(c.values[2].is_nan());
        assert_eq!(c.values[3], f64::NEG_INFINITY);
        assert!(r.next_cells().unwrap().is_none());
        assert_eq!(r.final_shape(), Some((2, 3)));
    }

    #[test]
    fn headers_and_layouts_are_detected() {
        let dir = tempfile::tempdir().unwrap();
        // A header of three names: triples, unordered, shape from the largest index.
        let path = file(&dir, "i,j,v\n2,0,1.0\n0,4,2e3\n");
        let (cells, shape) = read_all(&path, &ReadOptions::default()).unwrap();
        assert_eq!(cells, vec![(0, 4, 2000.0), (2, 0, 1.0)]);
        assert_eq!(shape, Some((3, 5)));
        assert!(
            !open_reader(&path, FileFormat::Csv, &ReadOptions::default())
                .unwrap()
                .row_ordered()
        );

        // Width three, no header: dense without a target or with a 3-column target,
        // triples with a target of another width.
        let path = file(&dir, "1,0,2\n0,3,0\n");
        let (cells, shape) = read_all(&path, &ReadOptions::default()).unwrap();
        assert_eq!(cells, vec![(0, 0, 1.0), (0, 2, 2.0), (1, 1, 3.0)]);
        assert_eq!(shape, Some((2, 3)));
        let (cells, shape) = read_all(&path, &options(Some((4, 4)))).unwrap();
        assert_eq!(cells, vec![(1, 0, 2.0)]); // (0, 3, 0) is a zero
        assert_eq!(shape, Some((4, 4)));

        // Three named columns loading into a 3-column matrix: dense rows (a pandas
        // export); the same header against a 5-column target, or i,j,v, means triples.
        let path = file(&dir, "a,b,c\n1,0,2\n");
        let (cells, _) = read_all(&path, &options(Some((1, 3)))).unwrap();
        assert_eq!(cells, vec![(0, 0, 1.0), (0, 2, 2.0)]);
        let (cells, _) = read_all(&path, &options(Some((2, 5)))).unwrap();
        assert_eq!(cells, vec![(1, 0, 2.0)]);
        let path = file(&dir, "Row,Col,Value\n1,0,2\n");
        let (cells, _) = read_all(&path, &options(Some((3, 3)))).unwrap();
        assert_eq!(cells, vec![(1, 0, 2.0)]);

        // A header of other names: dense rows; quoted names are fine.
        let path = file(&dir, "\"a\",\"b\"\n1,2\n");
        let (cells, shape) = read_all(&path, &ReadOptions::default()).unwrap();
        assert_eq!(cells, vec![(0, 0, 1.0), (0, 1, 2.0)]);
        assert_eq!(shape, Some((1, 2)));

        // Forced: a numeric first line as a header, and triples without a header.
        let forced = ReadOptions {
            csv_header: Some(true),
            ..ReadOptions::default()
        };
        let path = file(&dir, "7,7\n1,2\n");
        assert_eq!(
            read_all(&path, &forced).unwrap().0,
            vec![(0, 0, 1.0), (0, 1, 2.0)]
        );
        let triples = ReadOptions {
            csv_layout: CsvLayout::Triples,
            ..ReadOptions::default()
        };
        let path = file(&dir, "1,1,5\n3.0,0,6\n");
        let (cells, shape) = read_all(&path, &triples).unwrap();
        assert_eq!(cells, vec![(1, 1, 5.0), (3, 0, 6.0)]);
        assert_eq!(shape, Some((4, 2)));

        // Nothing at all: no cells.
        let path = file(&dir, "");
        assert_eq!(
            read_all(&path, &ReadOptions::default()).unwrap(),
            (vec![], Some((0, 0)))
        );
        assert_eq!(
            read_all(&path, &options(Some((2, 2)))).unwrap(),
            (vec![], Some((2, 2)))
        );
    }

    #[test]
    fn input_errors_name_the_file_and_line() {
        let none = ReadOptions::default();
        let err = error_at("1,2,3\n4,5\n", &none, 2);
        assert!(
            err.contains("ragged row: expected 3 fields (as on line 1), found 2"),
            "{err}"
        );
        let err = error_at("a,b\n1,2\n1,2,3\n", &none, 3);
        assert!(
            err.contains("expected 2 fields (as on line 1), found 3"),
            "{err}"
        );
        let err = error_at("1,2\n3,x y\n", &none, 2);
        assert!(err.contains("bad number \"x y\" in column 2"), "{err}");
        let err = error_at("i,j,v\n0,0,1\n1,1\n", &none, 3);
        assert!(err.contains("expected 3 fields (i,j,v), found 2"), "{err}");
        let err = error_at("i,j,v\n0,0,1\n-1,1,2\n", &none, 3);
        assert!(err.contains("negative row index \"-1\""), "{err}");
        let err = error_at("i,j,v\n0,1.5,1\n", &none, 2);
        assert!(err.contains("fractional column index \"1.5\""), "{err}");
        let err = error_at("i,j,v\n0,a,1\n", &none, 2);
        assert!(err.contains("bad column index \"a\""), "{err}");
        let err = error_at("i,j,v\n0,0,1\n0,0,one\n", &none, 3);
        assert!(err.contains("bad number \"one\" in column 3"), "{err}");
        let err = error_at("i,j,v\n1,1,1\n5,0,1\n", &options(Some((5, 2))), 3);
        assert!(
            err.contains("row index 5 is out of range for the target shape 5x2"),
            "{err}"
        );
        let err = error_at("i,j,v\n1,2,1\n", &options(Some((5, 2))), 2);
        assert!(
            err.contains("column index 2 is out of range for the target shape 5x2"),
            "{err}"
        );
        let err = error_at(
            "i,j\n",
            &ReadOptions {
                csv_layout: CsvLayout::Triples,
                ..none.clone()
            },
            1,
        );
        assert!(
            err.contains("a triples header has 3 fields (i,j,v), found 2"),
            "{err}"
        );
        let err = error_at("1,2\n\n3,4\n", &none, 2);
        assert!(err.contains("blank line"), "{err}");
        let err = error_at("\n1,2\n", &none, 1);
        assert!(err.contains("blank line"), "{err}");

        // Dense files against a target shape: width, too many rows, too few rows.
        let err = error_at("1,2\n3,4\n", &options(Some((2, 3))), 1);
        assert!(
            err.contains("rows have 2 values but the target shape 2x3 has 3 columns"),
            "{err}"
        );
        let err = error_at("a,b,c,d\n1,2,3,4\n", &options(Some((1, 3))), 1);
        assert!(
            err.contains("rows have 4 values but the target shape 1x3"),
            "{err}"
        );
        let err = error_at("1,2\n3,4\n5,6\n", &options(Some((2, 2))), 3);
        assert!(
            err.contains("more than 2 rows; the target shape is 2x2"),
            "{err}"
        );
        let err = error_at("1,2\n3,4\n\n", &options(Some((3, 2))), 3);
        assert!(
            err.contains("the file ends after 2 rows but the target shape 3x2 has 3 rows"),
            "{err}"
        );
    }

    #[test]
    fn wide_rows_are_split_across_batches() {
        let dir = tempfile::tempdir().unwrap();
        let width = CELL_BATCH + 10;
        let row: Vec<String> = (0..width).map(|c| (c + 1).to_string()).collect();
        let path = file(&dir, &format!("{}\n{}\n", row.join(","), row.join(",")));
        let mut r = open_reader(&path, FileFormat::Csv, &ReadOptions::default()).unwrap();
        let mut sizes = vec![];
        let mut sum = 0.0;
        while let Some(b) = r.next_cells().unwrap() {
            sizes.push(b.len());
            sum += b.values.iter().sum::<f64>();
        }
        assert_eq!(sizes, vec![CELL_BATCH, CELL_BATCH, 20]);
        let w = width as f64;
        assert_eq!(sum, 2.0 * w * (w + 1.0) / 2.0);
        assert_eq!(r.final_shape(), Some((2, width as u64)));
    }

    fn band(row0: u64, blocks: Vec<(u64, Block)>) -> BlockBand {
        let rows = blocks[0].1.rows();
        BlockBand { row0, rows, blocks }
    }

    #[test]
    fn written_files_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.csv");
        // 3x4 from two bands: dense and sparse blocks, a missing block, awkward values.
        let d = DenseBlock::new(2, 2, vec![0.1, 1e300, 0.0, -0.0]).unwrap();
        let s = CsrBlock::from_dense(&DenseBlock::new(2, 2, vec![0.0, 5e-324, 7.0, 0.0]).unwrap());
        let last = DenseBlock::new(1, 2, vec![1.0 / 3.0, f64::NAN]).unwrap();
        let bands = vec![
            band(0, vec![(0, Block::Dense(d)), (2, Block::Sparse(s))]),
            band(2, vec![(2, Block::Dense(last))]),
        ];
        let nnz = 6;
        write_file(
            &path,
            FileFormat::Csv,
            (3, 4),
            nnz,
            &mut bands.clone().into_iter().map(Ok),
        )
        .unwrap();
        // 6 of 12 cells (-0.0 is a zero): dense rows, no header.
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().next().unwrap(), "0.1,1e300,0,5e-324");
        let (cells, shape) = read_all(&path, &ReadOptions::default()).unwrap();
        assert_eq!(shape, Some((3, 4)));
        let expect = [
            (0, 0, 0.1),
            (0, 1, 1e300),
            (0, 3, 5e-324),
            (1, 2, 7.0),
            (2, 2, 1.0 / 3.0),
        ];
        assert_eq!(cells.len(), 6);
        assert_eq!(cells[..5], expect);
        assert!(cells[5].2.is_nan());

        // Sparse: triples with a header, and the zero last cell keeps the shape.
        let s = CsrBlock::from_dense(
            &DenseBlock::new(2, 3, vec![0.0, 2.5, 0.0, 0.0, 0.0, 0.0]).unwrap(),
        );
        let bands = vec![
            band(0, vec![(1, Block::Sparse(s))]),
            BlockBand {
                row0: 2,
                rows: 3,
                blocks: vec![],
            },
        ];
        write_file(
            &path,
            FileFormat::Csv,
            (5, 4),
            1,
            &mut bands.into_iter().map(Ok),
        )
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "i,j,v\n0,2,2.5\n4,3,0\n"
        );
        assert_eq!(
            read_all(&path, &ReadOptions::default()).unwrap(),
            (vec![(0, 2, 2.5)], Some((5, 4)))
        );
    }

    #[test]
    fn failed_exports_leave_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.csv");
        std::fs::write(&path, "old").unwrap();
        let d = Block::Dense(DenseBlock::new(1, 2, vec![1.0, 2.0]).unwrap());
        // Wrong nnz, a failing band, bands that stop short.
        let bands = [band(0, vec![(0, d.clone())])];
        let err = write_file(
            &path,
            FileFormat::Csv,
            (1, 2),
            1,
            &mut bands.clone().into_iter().map(Ok),
        );
        assert!(
            err.unwrap_err()
                .to_string()
                .contains("declared 1 non-zeros but the blocks hold 2")
        );
        let failing = [
            Ok(bands[0].clone()),
            Err(StorageError::Internal("boom".into())),
        ];
        let err = write_file(&path, FileFormat::Csv, (2, 2), 2, &mut failing.into_iter());
        assert!(err.unwrap_err().to_string().contains("boom"));
        let err = write_file(
            &path,
            FileFormat::Csv,
            (2, 2),
            2,
            &mut bands.into_iter().map(Ok),
        );
        assert!(
            err.unwrap_err()
                .to_string()
                .contains("bands ended at row 1 of 2")
        );
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec!["out.csv"]);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old");
    }
}
