//! NumPy `.npy` files: a magic string, a version, a Python-literal header dictionary
//! (`descr`, `fortran_order`, `shape`), then the raw array data.
//!
//! Reads versions 1.0, 2.0 and 3.0; dtypes `f8 f4 i8 i4 i2 i1 u8 u4 u2 u1 b1` in either
//! byte order (64-bit integers beyond 2^53 round to the nearest `f64`); arrays of any
//! number of dimensions, seen as rows and columns (leading dimensions flattened in C
//! order, see [`flatten2`]), in C order (row-ordered) or Fortran order (streamed with the
//! first index fastest). The file's length is checked against the header when it is
//! opened, so a truncated or overlong file fails before any cell is loaded; the same
//! reader streams a `.npz` member. Writes version 1.0, `<f8`, C order, with the array's
//! own shape; [`NpyCellWriter`] writes cells that arrive in any order.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::output::{AtomicFile, ScratchCells, TempPath, count_nonzero, dense_row, to_usize};
use super::text::{READ_BUFFER, shape_str};
use super::{Bands, CELL_BATCH, CellReader, Cells, ReadOptions};
use crate::block::is_stored;
use crate::error::{Result, StorageError};

const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// Longest header accepted; NumPy itself refuses headers over 10 000 bytes by default.
const MAX_HEADER_LEN: u32 = 1 << 20;

const SUPPORTED_DTYPES: &str = "f8, f4, i8, i4, i2, i1, u8, u4, u2, u1, b1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Float,
    Int,
    Uint,
    Bool,
}

/// An element type: kind, size in bytes, byte order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Dtype {
    kind: Kind,
    size: usize,
    big_endian: bool,
}

impl Dtype {
    /// Parses a `descr` such as `<f8`, `>i4` or `|b1`.
    fn parse(descr: &str) -> Option<Dtype> {
        let bytes = descr.as_bytes();
        let (&order, rest) = bytes.split_first()?;
        let (&kind, size) = rest.split_first()?;
        let size: usize = std::str::from_utf8(size).ok()?.parse().ok()?;
        let big_endian = match order {
            b'<' | b'|' => false,
            b'>' => true,
            b'=' => cfg!(target_endian = "big"),
            _ => return None,
        };
        let kind = match (kind, size) {
            (b'f', 4 | 8) => Kind::Float,
            (b'i', 1 | 2 | 4 | 8) => Kind::Int,
            (b'u', 1 | 2 | 4 | 8) => Kind::Uint,
            (b'b', 1) => Kind::Bool,
            _ => return None,
        };
        // `|` means "no byte order", which only a one-byte type may say.
        if order == b'|' && size != 1 {
            return None;
        }
        Some(Dtype {
            kind,
            size,
            big_endian,
        })
    }

    /// Decodes `bytes` (whole elements) into `out`.
    fn decode(self, bytes: &[u8], out: &mut Vec<f64>) {
        macro_rules! decode_as {
            ($t:ty, $n:literal) => {
                out.extend(bytes.chunks_exact($n).map(|b| {
                    let mut a = [0u8; $n];
                    a.copy_from_slice(b);
                    let x = if self.big_endian {
                        <$t>::from_be_bytes(a)
                    } else {
                        <$t>::from_le_bytes(a)
                    };
                    x as f64
                }))
            };
        }
        match (self.kind, self.size) {
            (Kind::Float, 8) => decode_as!(f64, 8),
            (Kind::Float, _) => decode_as!(f32, 4),
            (Kind::Int, 8) => decode_as!(i64, 8),
            (Kind::Int, 4) => decode_as!(i32, 4),
            (Kind::Int, 2) => decode_as!(i16, 2),
            (Kind::Int, _) => decode_as!(i8, 1),
            (Kind::Uint, 8) => decode_as!(u64, 8),
            (Kind::Uint, 4) => decode_as!(u32, 4),
            (Kind::Uint, 2) => decode_as!(u16, 2),
            (Kind::Uint, _) => decode_as!(u8, 1),
            (Kind::Bool, _) => out.extend(bytes.iter().map(|&b| if b != 0 { 1.0 } else { 0.0 })),
        }
    }
}

/// Streams cells from a `.npy` file, or from a `.npy` member of a `.npz` archive.
pub(super) struct NpyReader {
    path: PathBuf,
    /// Says where in `path` the array is: empty for a file, `member 'a.npy': ` in an archive.
    place: String,
    input: Box<dyn Read + Send>,
    dtype: Dtype,
    /// The array's shape as the header declares it.
    dims: Vec<u64>,
    /// The shape as rows and columns: leading dimensions flattened in C order into rows.
    shape: (u64, u64),
    fortran: bool,
    /// Byte offset of the array data.
    data_offset: u64,
    /// Elements in the file, and elements read so far.
    total: u64,
    done: u64,
    /// `(row, col)` of the next element in C order; the n-d index in Fortran order.
    next: (u64, u64),
    index: Vec<u64>,
    /// Whether [`NpyReader::finish`] has checked the end of the stream.
    finished: bool,
    bytes: Vec<u8>,
    values: Vec<f64>,
}

impl std::fmt::Debug for NpyReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NpyReader")
            .field("path", &self.path)
            .field("place", &self.place)
            .field("dims", &self.dims)
            .field("fortran", &self.fortran)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

/// The header of a `.npy` stream: what it holds and where its data starts.
struct NpyHeader {
    descr: String,
    dtype: Option<Dtype>,
    fortran: bool,
    dims: Vec<u64>,
    /// Byte offset of the header dictionary, and of the array data.
    header_start: u64,
    data_offset: u64,
}

/// Reads and checks a `.npy` header from `input`; `bad` makes the error for a message.
fn read_header(
    input: &mut dyn Read,
    bad: &dyn Fn(String) -> StorageError,
    io_err: &dyn Fn(std::io::Error) -> StorageError,
) -> Result<NpyHeader> {
    let mut prefix = [0u8; 8];
    let got = read_fully(input, &mut prefix).map_err(io_err)?;
    if got < MAGIC.len() || &prefix[..6] != MAGIC {
        return Err(bad(
            "not a NumPy .npy file: bad magic string at byte offset 0".into(),
        ));
    }
    if got < prefix.len() {
        return Err(bad(format!(
            "truncated header: the file ends at byte offset {got}"
        )));
    }
    let (major, minor) = (prefix[6], prefix[7]);
    let len_size = match (major, minor) {
        (1, 0) => 2,
        (2 | 3, 0) => 4,
        _ => {
            return Err(bad(format!(
                "unsupported .npy format version {major}.{minor} at byte offset 6 \
                 (Tessera reads 1.0, 2.0 and 3.0)"
            )));
        }
    };
    let mut len_bytes = [0u8; 4];
    let got = read_fully(input, &mut len_bytes[..len_size]).map_err(io_err)?;
    if got < len_size {
        return Err(bad(format!(
            "truncated header: the file ends at byte offset {}",
            8 + got
        )));
    }
    let header_len = u32::from_le_bytes(len_bytes);
    let header_start = 8 + len_size as u64;
    if header_len > MAX_HEADER_LEN {
        return Err(bad(format!(
            "header length {header_len} at byte offset 8 is over the limit of {MAX_HEADER_LEN}"
        )));
    }
    let mut header = vec![0u8; header_len as usize];
    let got = read_fully(input, &mut header).map_err(io_err)?;
    if got < header.len() {
        return Err(bad(format!(
            "truncated header: expected {header_len} bytes at byte offset {header_start}, found {got}"
        )));
    }
    let (descr, fortran, dims) = parse_header(&header).map_err(|(at, msg)| {
        bad(format!(
            "bad header dictionary at byte offset {}: {msg}",
            header_start + at as u64
        ))
    })?;
    Ok(NpyHeader {
        dtype: Dtype::parse(&descr),
        descr,
        fortran,
        dims,
        header_start,
        data_offset: header_start + header_len as u64,
    })
}

/// The text of a whole `.npy` stream holding a 0-d string (`'<U3'`, UTF-32, or `'|S3'`,
/// bytes), as SciPy writes a sparse archive's `format`; `None` for anything else.
pub(super) fn string_value(bytes: &[u8]) -> Option<String> {
    let mut input = bytes;
    let bad = |_: String| StorageError::Internal(String::new());
    let io_err = |_: std::io::Error| StorageError::Internal(String::new());
    let header = read_header(&mut input, &bad, &io_err).ok()?;
    if !header.dims.is_empty() {
        return None;
    }
    let (unit, count) = match header.descr.as_bytes() {
        [b'<' | b'|' | b'=', b'U', n @ ..] => {
            (4usize, std::str::from_utf8(n).ok()?.parse::<usize>().ok()?)
        }
        [b'|' | b'<' | b'=', b'S', n @ ..] => {
            (1, std::str::from_utf8(n).ok()?.parse::<usize>().ok()?)
        }
        _ => return None,
    };
    let data = input.get(..unit.checked_mul(count)?)?;
    let text: String = data
        .chunks_exact(unit)
        .map(|c| c[0])
        .take_while(|&b| b != 0)
        .map(char::from)
        .collect();
    Some(text)
}

/// `dims` as NumPy prints a shape: `2x3x4`.
pub(super) fn dims_str(dims: &[u64]) -> String {
    let parts: Vec<String> = dims.iter().map(u64::to_string).collect();
    parts.join("x")
}

/// `(rows, cols)` of an n-d shape: the leading dimensions flattened in C order into rows,
/// the last one as columns (a 1-d shape is one column).
pub(super) fn flatten2(dims: &[u64]) -> (u64, u64) {
    match dims {
        [] => (1, 1),
        [n] => (*n, 1),
        [lead @ .., last] => (lead.iter().fold(1u64, |a, &b| a.saturating_mul(b)), *last),
    }
}

impl NpyReader {
    /// Opens `path`, parses the header and checks the file's length against it.
    pub(super) fn open(path: &Path, options: &ReadOptions) -> Result<Self> {
        let io_err = |e| StorageError::io(path.display(), e);
        let file = File::open(path).map_err(io_err)?;
        let file_len = file.metadata().map_err(io_err)?.len();
        let input = BufReader::with_capacity(READ_BUFFER, file);
        Self::from_stream(path, String::new(), Box::new(input), file_len, options)
    }

    /// Reads a `.npy` stream of `len` bytes from `input`; errors name `path` and begin
    /// with `place`.
    pub(super) fn from_stream(
        path: &Path,
        place: String,
        mut input: Box<dyn Read + Send>,
        len: u64,
        options: &ReadOptions,
    ) -> Result<Self> {
        let bad = |msg: String| StorageError::bad_file(path, 0, format!("{place}{msg}"));
        let io_err = |e: std::io::Error| match e.kind() {
            // A damaged archive member: bad deflate data or a CRC-32 mismatch.
            std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput => {
                bad(e.to_string())
            }
            _ => StorageError::io(path.display(), e),
        };
        let header = read_header(input.as_mut(), &bad, &io_err)?;
        let NpyHeader {
            descr,
            dtype,
            fortran,
            dims,
            header_start,
            data_offset,
        } = header;
        let dtype = dtype.ok_or_else(|| {
            bad(format!(
                "unsupported dtype '{descr}' in the header at byte offset {header_start} \
                 (Tessera reads {SUPPORTED_DTYPES}, in either byte order)"
            ))
        })?;
        if dims.is_empty() {
            return Err(bad(format!(
                "unsupported 0-d array (header at byte offset {header_start}): \
                 Tessera loads arrays of one or more dimensions"
            )));
        }
        let shape = flatten2(&dims);
        check_target(&dims, options).map_err(bad)?;

        let total = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
        let data_len = total.and_then(|n| n.checked_mul(dtype.size as u64));
        let (Some(total), Some(data_len)) = (total, data_len) else {
            return Err(bad(format!(
                "shape {} at byte offset {header_start} is too large",
                dims_str(&dims)
            )));
        };
        let found = len.saturating_sub(data_offset);
        if found < data_len {
            return Err(bad(format!(
                "truncated data: a {} array of '{descr}' needs {data_len} bytes from byte offset \
                 {data_offset}, found {found}",
                dims_str(&dims)
            )));
        }
        if found > data_len {
            return Err(bad(format!(
                "{} unexpected bytes after the array data, at byte offset {}",
                found - data_len,
                data_offset + data_len
            )));
        }

        Ok(Self {
            path: path.to_path_buf(),
            place,
            input,
            dtype,
            index: vec![0; dims.len()],
            dims,
            shape,
            fortran,
            data_offset,
            total,
            done: 0,
            next: (0, 0),
            finished: false,
            bytes: Vec::new(),
            values: Vec::new(),
        })
    }

    /// An error reading the data: a damaged archive member (bad deflate data, a CRC-32
    /// mismatch) is a bad file, anything else an I/O error.
    fn read_error(&self, e: std::io::Error) -> StorageError {
        match e.kind() {
            std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput => {
                StorageError::bad_file(&self.path, 0, format!("{}{e}", self.place))
            }
            _ => StorageError::io(self.path.display(), e),
        }
    }

    /// After the last element: checks the stream ends there (which also checks an
    /// archive member's CRC-32).
    pub(super) fn finish(&mut self) -> Result<()> {
        if self.finished {
            return Ok(());
        }
        let mut extra = [0u8; 1];
        let got = read_fully(&mut self.input, &mut extra).map_err(|e| self.read_error(e))?;
        if got > 0 {
            return Err(StorageError::bad_file(
                &self.path,
                0,
                format!(
                    "{}unexpected bytes after the array data, at byte offset {}",
                    self.place,
                    self.data_offset + self.total * self.dtype.size as u64
                ),
            ));
        }
        self.finished = true;
        Ok(())
    }

    /// The array's shape as the header declares it.
    pub(super) fn dims(&self) -> &[u64] {
        &self.dims
    }

    /// Elements not read yet.
    pub(super) fn remaining(&self) -> u64 {
        self.total - self.done
    }

    /// Reads the next `n` elements (zeros included) in file order into `out`.
    pub(super) fn read_values(&mut self, n: usize, out: &mut Vec<f64>) -> Result<()> {
        let size = self.dtype.size;
        self.bytes.resize(n * size, 0);
        let got = read_fully(&mut self.input, &mut self.bytes).map_err(|e| self.read_error(e))?;
        if got < self.bytes.len() {
            // The length was checked at open: the file shrank, or an archive member's
            // declared size was wrong.
            let expected = self.total * size as u64;
            return Err(StorageError::bad_file(
                &self.path,
                0,
                format!(
                    "{}truncated data: expected {expected} bytes from byte offset {}, found {}",
                    self.place,
                    self.data_offset,
                    self.done * size as u64 + got as u64
                ),
            ));
        }
        out.clear();
        self.dtype.decode(&self.bytes, out);
        self.done += n as u64;
        Ok(())
    }

    /// Reads the next `n` elements and appends their non-zeros to `cells`.
    fn read_chunk(&mut self, n: usize, cells: &mut Cells) -> Result<()> {
        let mut values = std::mem::take(&mut self.values);
        let read = self.read_values(n, &mut values);
        self.values = values;
        read?;
        if self.fortran {
            // Fortran order: the first index moves fastest.
            for &v in &self.values {
                if is_stored(v) {
                    let (r, c) = flat_position(&self.dims, &self.index);
                    cells.rows.push(r);
                    cells.cols.push(c);
                    cells.values.push(v);
                }
                for (x, &d) in self.index.iter_mut().zip(&self.dims) {
                    *x += 1;
                    if *x < d {
                        break;
                    }
                    *x = 0;
                }
            }
            return Ok(());
        }
        // C order walks along each flattened row.
        let cols = self.shape.1;
        let (mut r, mut c) = self.next;
        for &v in &self.values {
            if is_stored(v) {
                cells.rows.push(r);
                cells.cols.push(c);
                cells.values.push(v);
            }
            c += 1;
            if c == cols {
                c = 0;
                r += 1;
            }
        }
        self.next = (r, c);
        Ok(())
    }
}

/// The flattened `(row, col)` of n-d index `index` in an array of shape `dims`.
pub(super) fn flat_position(dims: &[u64], index: &[u64]) -> (u64, u64) {
    match index {
        [] => (0, 0),
        [x] => (*x, 0),
        [lead @ .., last] => {
            let row = lead
                .iter()
                .zip(dims)
                .fold(0u64, |row, (&x, &d)| row * d + x);
            (row, *last)
        }
    }
}

/// Checks the file's shape against the target's: equal shapes, or for arrays of at most two
/// dimensions, equal rows and columns (a 1-d file of `n` loads into an `n x 1` matrix).
pub(super) fn check_target(dims: &[u64], options: &ReadOptions) -> std::result::Result<(), String> {
    let fits = match (&options.target_dims, options.target_shape) {
        (Some(target), _) if dims.len() <= 2 && target.len() <= 2 => {
            flatten2(dims) == flatten2(target)
        }
        (Some(target), _) => dims == target.as_slice(),
        (None, Some(target)) => dims.len() <= 2 && flatten2(dims) == target,
        (None, None) => true,
    };
    if fits {
        return Ok(());
    }
    let small = |d: &[u64]| d.len() <= 2;
    let (held, target) = match (&options.target_dims, options.target_shape) {
        (Some(t), _) if small(dims) && small(t) => {
            (shape_str(flatten2(dims)), shape_str(flatten2(t)))
        }
        (Some(t), _) => (dims_str(dims), dims_str(t)),
        (None, Some(t)) if small(dims) => (shape_str(flatten2(dims)), shape_str(t)),
        (None, Some(t)) => (dims_str(dims), shape_str(t)),
        (None, None) => (dims_str(dims), String::new()),
    };
    Err(format!(
        "the file holds a {held} array but the target shape is {target}"
    ))
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_fully(input: &mut (impl Read + ?Sized), buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

impl CellReader for NpyReader {
    fn declared_shape(&self) -> Option<(u64, u64)> {
        Some(self.shape)
    }

    fn row_ordered(&self) -> bool {
        !self.fortran || self.dims.iter().filter(|&&d| d > 1).count() <= 1
    }

    fn next_cells(&mut self) -> Result<Option<Cells>> {
        if self.done == self.total {
            self.finish()?;
            return Ok(None);
        }
        // Chunks of at most the room left in the batch, so zeros (which are skipped) do
        // not leave batches nearly empty.
        let mut cells = Cells::default();
        while self.done < self.total && cells.len() < CELL_BATCH {
            let n = (self.total - self.done).min((CELL_BATCH - cells.len()) as u64) as usize;
            self.read_chunk(n, &mut cells)?;
        }
        Ok(Some(cells))
    }

    fn final_shape(&self) -> Option<(u64, u64)> {
        Some(self.shape)
    }
}

/// A Python literal, as far as `.npy` headers use them.
#[derive(Debug, Clone, PartialEq)]
enum PyLiteral {
    Str(String),
    Int(i128),
    Bool(bool),
    None,
    Tuple(Vec<PyLiteral>),
    List(Vec<PyLiteral>),
    Dict(Vec<(PyLiteral, PyLiteral)>),
}

/// Errors carry the byte offset within the header.
type LiteralResult<T> = std::result::Result<T, (usize, String)>;

/// `descr`, `fortran_order` and `shape` from a header dictionary.
fn parse_header(header: &[u8]) -> LiteralResult<(String, bool, Vec<u64>)> {
    let mut p = LiteralParser { s: header, pos: 0 };
    let dict = p.value()?;
    p.skip_space();
    if p.pos != header.len() {
        return Err((p.pos, "unexpected text after the dictionary".into()));
    }
    let PyLiteral::Dict(entries) = dict else {
        return Err((0, "the header is not a dictionary".into()));
    };
    let get = |key: &str| {
        entries
            .iter()
            .find(|(k, _)| matches!(k, PyLiteral::Str(s) if s == key))
            .map(|(_, v)| v)
            .ok_or_else(|| (0, format!("no '{key}' key")))
    };
    let descr = match get("descr")? {
        PyLiteral::Str(s) => s.clone(),
        other => {
            return Err((
                0,
                format!("unsupported dtype {other:?}: structured arrays are not supported"),
            ));
        }
    };
    let fortran = match get("fortran_order")? {
        PyLiteral::Bool(b) => *b,
        other => {
            return Err((
                0,
                format!("'fortran_order' is {other:?}, not True or False"),
            ));
        }
    };
    let dims = match get("shape")? {
        PyLiteral::Tuple(items) | PyLiteral::List(items) => items
            .iter()
            .map(|d| match d {
                PyLiteral::Int(n) => u64::try_from(*n).ok(),
                _ => None,
            })
            .collect::<Option<Vec<u64>>>(),
        _ => None,
    }
    .ok_or_else(|| {
        (
            0,
            "'shape' is not a tuple of non-negative integers".to_string(),
        )
    })?;
    Ok((descr, fortran, dims))
}

/// A recursive-descent parser for the Python literals of a header (bytes, so offsets are
/// byte offsets; names and strings in supported headers are ASCII).
struct LiteralParser<'a> {
    s: &'a [u8],
    pos: usize,
}

impl LiteralParser<'_> {
    fn skip_space(&mut self) {
        while self
            .s
            .get(self.pos)
            .is_some_and(|b| b.is_ascii_whitespace())
        {
            self.pos += 1;
        }
    }

    fn value(&mut self) -> LiteralResult<PyLiteral> {
        self.skip_space();
        let start = self.pos;
        match self.s.get(self.pos) {
            None => Err((start, "the header ends early".into())),
            Some(b'{') => {
                self.pos += 1;
                let mut entries = vec![];
                loop {
                    self.skip_space();
                    if self.eat(b'}') {
                        return Ok(PyLiteral::Dict(entries));
                    }
                    let key = self.value()?;
                    self.skip_space();
                    if !self.eat(b':') {
                        return Err((self.pos, "expected ':'".into()));
                    }
                    let value = self.value()?;
                    entries.push((key, value));
                    if !self.separator(b'}')? {
                        return Ok(PyLiteral::Dict(entries));
                    }
                }
            }
            Some(b'(') => self.sequence(b')').map(PyLiteral::Tuple),
            Some(b'[') => self.sequence(b']').map(PyLiteral::List),
            Some(&q @ (b'\'' | b'"')) => {
                let end = self.s[start + 1..]
                    .iter()
                    .position(|&b| b == q || b == b'\\')
                    .map(|k| start + 1 + k)
                    .filter(|&e| self.s[e] == q)
                    .ok_or_else(|| (start, "unterminated or escaped string".to_string()))?;
                self.pos = end + 1;
                Ok(PyLiteral::Str(
                    String::from_utf8_lossy(&self.s[start + 1..end]).into_owned(),
                ))
            }
            Some(b) if b.is_ascii_digit() || *b == b'-' => {
                self.pos += 1;
                while self.s.get(self.pos).is_some_and(u8::is_ascii_digit) {
                    self.pos += 1;
                }
                let text = std::str::from_utf8(&self.s[start..self.pos]).unwrap_or("");
                let n = text
                    .parse::<i128>()
                    .map_err(|_| (start, format!("bad integer '{text}'")))?;
                // Python 2 wrote long integers as `3L`.
                let _ = self.eat(b'L');
                Ok(PyLiteral::Int(n))
            }
            Some(_) => {
                for (word, lit) in [
                    (&b"True"[..], PyLiteral::Bool(true)),
                    (&b"False"[..], PyLiteral::Bool(false)),
                    (&b"None"[..], PyLiteral::None),
                ] {
                    if self.s[start..].starts_with(word) {
                        self.pos += word.len();
                        return Ok(lit);
                    }
                }
                Err((
                    start,
                    format!("unexpected character '{}'", self.s[start].escape_ascii()),
                ))
            }
        }
    }

    /// Items up to `close`, commas between, a trailing comma allowed.
    fn sequence(&mut self, close: u8) -> LiteralResult<Vec<PyLiteral>> {
        self.pos += 1;
        let mut items = vec![];
        loop {
            self.skip_space();
            if self.eat(close) {
                return Ok(items);
            }
            items.push(self.value()?);
            if !self.separator(close)? {
                return Ok(items);
            }
        }
    }

    /// After an item: a comma (true: more may follow) or `close` (false: done).
    fn separator(&mut self, close: u8) -> LiteralResult<bool> {
        self.skip_space();
        if self.eat(b',') {
            Ok(true)
        } else if self.eat(close) {
            Ok(false)
        } else {
            Err((self.pos, format!("expected ',' or '{}'", close as char)))
        }
    }

    fn eat(&mut self, b: u8) -> bool {
        let hit = self.s.get(self.pos) == Some(&b);
        self.pos += hit as usize;
        hit
    }
}

/// Writes a version 1.0, `<f8`, C-order file of shape `dims`, whose flattened rows and
/// columns ([`flatten2`]) the bands cover; returns the number of non-zeros.
pub(super) fn write(out: &mut AtomicFile, dims: &[u64], bands: &mut Bands<'_>) -> Result<u64> {
    out.write_all(&header_v1(dims))?;
    let mut row = vec![0.0; to_usize(flatten2(dims).1)?];
    let mut bytes = Vec::with_capacity(row.len() * 8);
    let mut written = 0;
    for band in bands {
        let band = band?;
        for r in 0..band.rows {
            dense_row(&band, r, &mut row);
            written += count_nonzero(&row);
            bytes.clear();
            for v in &row {
                bytes.extend_from_slice(&v.to_le_bytes());
            }
            out.write_all(&bytes)?;
        }
    }
    Ok(written)
}

/// Magic, version 1.0, length and the dictionary, padded with spaces and a newline so
/// the data starts at a multiple of 64 bytes (as NumPy writes it, for aligned mapping).
fn header_v1(dims: &[u64]) -> Vec<u8> {
    // Python's tuple syntax: `(5,)` for one dimension, `(2, 3, 4)` for more.
    let shape = match dims {
        [n] => format!("({n},)"),
        _ => {
            let parts: Vec<String> = dims.iter().map(u64::to_string).collect();
            format!("({})", parts.join(", "))
        }
    };
    let dict = format!("{{'descr': '<f8', 'fortran_order': False, 'shape': {shape}, }}");
    let unpadded = MAGIC.len() + 2 + 2 + dict.len() + 1;
    let header_len = dict.len() + unpadded.next_multiple_of(64) - unpadded + 1;
    let mut out = Vec::with_capacity(10 + header_len);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    // Tessera's arrays have a handful of dimensions: a few hundred bytes at most.
    out.extend_from_slice(&(header_len as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.resize(10 + header_len - 1, b' ');
    out.push(b'\n');
    out
}

/// Writes cells that arrive in any order (a query's `(i, j, v)` rows, or n-d coordinates
/// and a value) as a dense `.npy` file whose shape is one past the largest coordinate
/// along each dimension.
///
/// Memory stays bounded: cells go to a scratch file beside the target as they come;
/// [`NpyCellWriter::commit`] then sizes the array, writes a zero-filled file and adds
/// each cell at its place (cells listed more than once are summed, as loads sum them),
/// and renames it over the target after an fsync. Dropped before the commit, it leaves
/// nothing behind.
#[derive(Debug)]
pub struct NpyCellWriter {
    target: PathBuf,
    cells: ScratchCells,
}

/// Largest array [`NpyCellWriter`] writes, in elements (8 bytes each): 2^36, 512 GiB.
pub const MAX_CELL_WRITER_ELEMENTS: u64 = 1 << 36;

impl NpyCellWriter {
    /// Starts a file of `ndim` dimensions at `target`.
    pub fn create(target: &Path, ndim: usize) -> Result<Self> {
        if ndim == 0 {
            return Err(StorageError::InvalidArgument(
                "a .npy file of cells needs at least one coordinate".into(),
            ));
        }
        Ok(Self {
            target: target.to_path_buf(),
            cells: ScratchCells::create_beside(target, ndim)?,
        })
    }

    /// Adds the cell at `index` (one coordinate per dimension).
    pub fn push(&mut self, index: &[u64], value: f64) -> Result<()> {
        self.cells.push(index, value)
    }

    /// Writes the file and renames it into place; returns its shape.
    pub fn commit(self) -> Result<Vec<u64>> {
        let target = self.target.clone();
        let (temp, file, dims) = self.write_dense()?;
        let temp_err = |e| StorageError::io(temp.path().display(), e);
        file.sync_all().map_err(temp_err)?;
        drop(file);
        temp.persist(&target)?;
        Ok(dims)
    }

    /// Writes the array as member `member` (`arr_0` as `numpy.savez` names its first;
    /// `.npy` is added) of a one-member `.npz` archive, stored uncompressed as `savez`
    /// stores it, and renames the archive into place; returns the array's shape.
    pub fn commit_npz(self, member: &str) -> Result<Vec<u64>> {
        let target = self.target.clone();
        let (npy, mut npy_file, dims) = self.write_dense()?;
        let npy_err = |e| StorageError::io(npy.path().display(), e);
        let npy_len = npy_file.seek(SeekFrom::End(0)).map_err(npy_err)?;
        npy_file.seek(SeekFrom::Start(0)).map_err(npy_err)?;
        let (zip_temp, zip_file) = TempPath::create_beside(&target, "npz")?;
        let zip_err = |e: zip::result::ZipError| {
            StorageError::io(
                zip_temp.path().display(),
                std::io::Error::other(e.to_string()),
            )
        };
        let mut archive = zip::ZipWriter::new(std::io::BufWriter::with_capacity(1 << 20, zip_file));
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .large_file(npy_len >= zip::ZIP64_BYTES_THR);
        archive
            .start_file(format!("{member}.npy"), options)
            .map_err(zip_err)?;
        std::io::copy(
            &mut BufReader::with_capacity(1 << 20, &mut npy_file),
            &mut archive,
        )
        .map_err(|e| StorageError::io(zip_temp.path().display(), e))?;
        let writer = archive.finish().map_err(zip_err)?;
        let zip_file = writer
            .into_inner()
            .map_err(|e| StorageError::io(zip_temp.path().display(), e.into_error()))?;
        zip_file
            .sync_all()
            .map_err(|e| StorageError::io(zip_temp.path().display(), e))?;
        drop(zip_file);
        drop(npy_file);
        drop(npy);
        zip_temp.persist(&target)?;
        Ok(dims)
    }

    /// The dense `.npy` file of the cells, in a temporary file beside the target (not
    /// yet synced): its path, the open file and the array's shape.
    fn write_dense(self) -> Result<(TempPath, File, Vec<u64>)> {
        let Self {
            target,
            cells:
                ScratchCells {
                    scratch,
                    out,
                    dims,
                    cells,
                },
        } = self;
        let scratch_err = |e| StorageError::io(scratch.path().display(), e);
        let mut scratch_file = out.into_inner().map_err(|e| scratch_err(e.into_error()))?;
        let total = dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .filter(|&n| n <= MAX_CELL_WRITER_ELEMENTS)
            .ok_or_else(|| {
                StorageError::InvalidArgument(format!(
                    "the cells span a {} array, over the {MAX_CELL_WRITER_ELEMENTS} elements \
                     a dense .npy file is written with here",
                    dims_str(&dims)
                ))
            })?;
        let header = header_v1(&dims);
        let (temp, mut file) = TempPath::create_beside(&target, "part")?;
        let temp_err = |e| StorageError::io(temp.path().display(), e);
        file.write_all(&header).map_err(temp_err)?;
        file.set_len(header.len() as u64 + total * 8)
            .map_err(temp_err)?;

        scratch_file.seek(SeekFrom::Start(0)).map_err(scratch_err)?;
        let mut records = BufReader::with_capacity(1 << 20, scratch_file);
        let mut record = vec![0u8; 8 * (dims.len() + 1)];
        let word = |b: &[u8]| {
            let mut w = [0u8; 8];
            w.copy_from_slice(b);
            w
        };
        for _ in 0..cells {
            records.read_exact(&mut record).map_err(scratch_err)?;
            let (coords, value) = record.split_at(8 * dims.len());
            let element = coords
                .chunks_exact(8)
                .zip(&dims)
                .fold(0u64, |at, (c, &d)| at * d + u64::from_le_bytes(word(c)));
            let offset = header.len() as u64 + element * 8;
            let mut old = [0u8; 8];
            file.seek(SeekFrom::Start(offset)).map_err(temp_err)?;
            file.read_exact(&mut old).map_err(temp_err)?;
            let sum = add_cell(f64::from_le_bytes(old), f64::from_le_bytes(word(value)));
            file.seek(SeekFrom::Start(offset)).map_err(temp_err)?;
            file.write_all(&sum.to_le_bytes()).map_err(temp_err)?;
        }
        drop(records);
        drop(scratch);
        Ok((temp, file, dims))
    }
}

/// A cell added to what its place holds: the sum, except that a place not written yet
/// (a zero, the file's fill) takes the cell as it is.
pub(super) fn add_cell(old: f64, value: f64) -> f64 {
    if is_stored(old) { old + value } else { value }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic

    use super::*;
    use crate::io::{BlockBand, FileFormat, open_reader, write_file};
    use crate::{Block, CsrBlock, DenseBlock};

    type Triples = Vec<(u64, u64, f64)>;

    /// A `.npy` file's bytes: any version, any dictionary text, any data.
    fn npy(major: u8, dict: &str, data: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&[major, 0]);
        let header = format!("{dict}\n");
        if major == 1 {
            out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        } else {
            out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        }
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    fn dict(descr: &str, fortran: bool, shape: &str) -> String {
        let f = if fortran { "True" } else { "False" };
        format!("{{'descr': '{descr}', 'fortran_order': {f}, 'shape': {shape}, }}")
    }

    /// Cells in the order the reader yields them, and whether it claimed row order.
    fn read_bytes(bytes: &[u8], target: Option<(u64, u64)>) -> Result<(Triples, (u64, u64), bool)> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.npy");
        std::fs::write(&path, bytes).unwrap();
        let opts = ReadOptions {
            target_shape: target,
            ..ReadOptions::default()
        };
        let mut r = open_reader(&path, FileFormat::Npy, &opts)?;
        let mut cells = vec![];
        while let Some(b) = r.next_cells()? {
            assert!(b.len() <= CELL_BATCH);
            let Cells { rows, cols, values } = b;
            cells.extend(
                rows.into_iter()
                    .zip(cols)
                    .zip(values)
                    .map(|((r, c), v)| (r, c, v)),
            );
        }
        Ok((cells, r.final_shape().unwrap(), r.row_ordered()))
    }

    fn error(bytes: &[u8], target: Option<(u64, u64)>) -> String {
        let err = read_bytes(bytes, target)
            .expect_err("the file is bad")
            .to_string();
        // Line 0: the path alone, then the message.
        assert!(err.contains("a.npy: "), "{err}");
        assert!(!err.contains("a.npy:0"), "{err}");
        err
    }

    fn le<T: Copy, const N: usize>(values: &[T], to: fn(T) -> [u8; N]) -> Vec<u8> {
        values.iter().flat_map(|&v| to(v)).collect()
    }

    #[test]
    fn dtypes_orders_and_versions() {
        // C order, f8: [[1, 0, 2], [0, 0, 3]].
        let data = le(&[1.0, 0.0, 2.0, 0.0, 0.0, 3.0], f64::to_le_bytes);
        let (cells, shape, ordered) =
            read_bytes(&npy(1, &dict("<f8", false, "(2, 3)"), &data), None).unwrap();
        assert_eq!(cells, vec![(0, 0, 1.0), (0, 2, 2.0), (1, 2, 3.0)]);
        assert_eq!(shape, (2, 3));
        assert!(ordered);

        // The same matrix in Fortran order, big-endian f4, version 2.0: column by column.
        let data = le(&[1.0f32, 0.0, 0.0, 0.0, 2.0, 3.0], f32::to_be_bytes);
        let (cells, shape, ordered) =
            read_bytes(&npy(2, &dict(">f4", true, "(2, 3)"), &data), None).unwrap();
        assert_eq!(cells, vec![(0, 0, 1.0), (0, 2, 2.0), (1, 2, 3.0)]);
        assert_eq!(shape, (2, 3));
        assert!(!ordered);

        // 1-d arrays are columns; integers, version 3.0, a Python 2 `L`.
        let data = le(&[-7i64, 0, i64::from(i32::MAX)], i64::to_le_bytes);
        let (cells, shape, ordered) =
            read_bytes(&npy(3, &dict("<i8", false, "(3L,)"), &data), None).unwrap();
        assert_eq!(cells, vec![(0, 0, -7.0), (2, 0, 2147483647.0)]);
        assert_eq!(shape, (3, 1));
        assert!(ordered);
        let data = le(&[5i32, -1], i32::to_be_bytes);
        let (cells, _, _) = read_bytes(&npy(1, &dict(">i4", true, "(1, 2)"), &data), None).unwrap();
        assert_eq!(cells, vec![(0, 0, 5.0), (0, 1, -1.0)]);
        let (cells, _, _) =
            read_bytes(&npy(1, &dict("|u1", false, "(2,)"), &[0, 255]), None).unwrap();
        assert_eq!(cells, vec![(1, 0, 255.0)]);
        let (cells, _, _) =
            read_bytes(&npy(1, &dict("|b1", false, "(1, 2)"), &[1, 0]), None).unwrap();
        assert_eq!(cells, vec![(0, 0, 1.0)]);
        // Keys in any order, double quotes, no trailing comma, empty arrays.
        let header = "{\"shape\": (0, 4), \"fortran_order\": False, \"descr\": \"<f8\"}";
        assert_eq!(
            read_bytes(&npy(1, header, &[]), Some((0, 4))).unwrap().1,
            (0, 4)
        );
    }

    #[test]
    fn batches_follow_the_layout_across_batch_boundaries() {
        let (rows, cols) = (CELL_BATCH / 100 + 3, 100);
        let values: Vec<f64> = (0..rows * cols).map(|k| k as f64 + 1.0).collect();
        for fortran in [false, true] {
            let (cells, _, _) = read_bytes(
                &npy(
                    1,
                    &dict("<f8", fortran, &format!("({rows}, {cols})")),
                    &le(&values, f64::to_le_bytes),
                ),
                None,
            )
            .unwrap();
            assert_eq!(cells.len(), rows * cols);
            for (k, &(r, c, v)) in cells.iter().enumerate() {
                let (er, ec) = if fortran {
                    (k % rows, k / rows)
                } else {
                    (k / cols, k % cols)
                };
                assert_eq!((r, c, v), (er as u64, ec as u64, k as f64 + 1.0));
            }
        }
    }

    #[test]
    fn input_errors_name_the_file_and_byte_offset() {
        let good = dict("<f8", false, "(2, 2)");
        let data = [0u8; 32];
        let err = error(b"\x93NUMPZ\x01\x00", None);
        assert!(err.contains("bad magic string at byte offset 0"), "{err}");
        let err = error(b"", None);
        assert!(err.contains("bad magic"), "{err}");
        let err = error(&npy(4, &good, &data), None);
        assert!(
            err.contains("unsupported .npy format version 4.0 at byte offset 6"),
            "{err}"
        );
        let mut short = npy(1, &good, &data);
        short.truncate(30);
        let err = error(&short, None);
        assert!(err.contains("truncated header: expected"), "{err}");
        assert!(err.contains("at byte offset 10, found 20"), "{err}");
        let err = error(
            &npy(
                1,
                "{'descr': '<f8', 'fortran_order': False 'shape': (2, 2)}",
                &data,
            ),
            None,
        );
        assert!(
            err.contains("bad header dictionary at byte offset 50: expected ',' or '}'"),
            "{err}"
        );
        let err = error(&npy(1, "{'descr': '<f8', 'shape': (2, 2)}", &data), None);
        assert!(err.contains("no 'fortran_order' key"), "{err}");
        let err = error(&npy(1, &dict("<f8", false, "(2, -2)"), &data), None);
        assert!(
            err.contains("'shape' is not a tuple of non-negative integers"),
            "{err}"
        );
        let err = error(&npy(1, &dict("<c16", false, "(2, 2)"), &data), None);
        assert!(
            err.contains("unsupported dtype '<c16' in the header at byte offset 10"),
            "{err}"
        );
        let err = error(&npy(1, &dict("|f8", false, "(2, 2)"), &data), None);
        assert!(err.contains("unsupported dtype '|f8'"), "{err}");
        let err = error(
            &npy(
                1,
                "{'descr': [('a', '<f8')], 'fortran_order': False, 'shape': (2,)}",
                &data,
            ),
            None,
        );
        assert!(err.contains("structured arrays are not supported"), "{err}");
        let err = error(
            &npy(1, &dict("<f8", false, "(2, 2, 2)"), &[0; 64]),
            Some((4, 2)),
        );
        assert!(
            err.contains("the file holds a 2x2x2 array but the target shape is 4x2"),
            "{err}"
        );
        let err = error(&npy(1, &dict("<f8", false, "()"), &data), None);
        assert!(err.contains("unsupported 0-d array"), "{err}");
        let err = error(&npy(1, &good, &data[..31]), None);
        let offset = npy(1, &good, &[]).len();
        assert!(err.contains(&format!("truncated data: a 2x2 array of '<f8' needs 32 bytes from byte offset {offset}, found 31")), "{err}");
        let err = error(&npy(1, &good, &[0u8; 40]), None);
        assert!(
            err.contains(&format!(
                "8 unexpected bytes after the array data, at byte offset {}",
                offset + 32
            )),
            "{err}"
        );
        let err = error(&npy(1, &good, &data), Some((4, 1)));
        assert!(
            err.contains("the file holds a 2x2 array but the target shape is 4x1"),
            "{err}"
        );
    }

    #[test]
    fn written_files_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.npy");
        let top = DenseBlock::from_fn(2, 3, |r, c| (r * 3 + c) as f64 - 2.5);
        let sparse = CsrBlock::from_dense(&DenseBlock::from_fn(1, 2, |_, c| c as f64 * 1e-300));
        let bands = vec![
            BlockBand {
                row0: 0,
                rows: 2,
                blocks: vec![(0, Block::Dense(top))],
            },
            BlockBand {
                row0: 2,
                rows: 1,
                blocks: vec![(1, Block::Sparse(sparse))],
            },
        ];
        write_file(
            &path,
            FileFormat::Npy,
            (3, 3),
            7,
            &mut bands.into_iter().map(Ok),
        )
        .unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 128 + 9 * 8);
        assert_eq!(bytes[127], b'\n');
        let (cells, shape, ordered) = read_bytes(&bytes, Some((3, 3))).unwrap();
        assert_eq!(shape, (3, 3));
        assert!(ordered);
        let expect = vec![
            (0, 0, -2.5),
            (0, 1, -1.5),
            (0, 2, -0.5),
            (1, 0, 0.5),
            (1, 1, 1.5),
            (1, 2, 2.5),
            (2, 2, 1e-300),
        ];
        assert_eq!(cells, expect);
    }

    #[test]
    fn headers_are_aligned_to_64_bytes() {
        for shape in [(0, 0), (1, 1), (123456789, 987654321), (u64::MAX, u64::MAX)] {
            let h = header_v1(&[shape.0, shape.1]);
            assert_eq!(h.len() % 64, 0, "{shape:?}");
            assert_eq!(h.last(), Some(&b'\n'));
            let len = u16::from_le_bytes([h[8], h[9]]) as usize;
            assert_eq!(len + 10, h.len());
            let (descr, fortran, dims) = parse_header(&h[10..]).unwrap();
            assert_eq!(
                (descr.as_str(), fortran, dims),
                ("<f8", false, vec![shape.0, shape.1])
            );
        }
    }
}
