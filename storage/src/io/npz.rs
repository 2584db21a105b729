//! NumPy `.npz` archives: a zip file of `.npy` members (`numpy.savez` stores them,
//! `savez_compressed` deflates them), and SciPy's sparse `.npz` (`scipy.sparse.save_npz`:
//! members `format`, `shape`, `data` and `indices` / `indptr` for CSR and CSC, `row` /
//! `col` for COO).
//!
//! The `zip` crate reads the central directory; each member is then streamed from its
//! own file handle (inflated when deflated, its CRC-32 checked at its end), so a member
//! larger than memory loads in bounded memory like a `.npy` file. A sparse matrix streams
//! its index and value members side by side.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use zip::CompressionMethod;

use super::npy::NpyReader;
use super::text::{READ_BUFFER, shape_str};
use super::{CELL_BATCH, CellReader, Cells, NpzMember, ReadOptions};
use crate::block::is_stored;
use crate::error::{Result, StorageError};

/// Where one member's bytes are in the archive.
#[derive(Debug, Clone)]
struct Member {
    /// The member's name without `.npy`.
    name: String,
    data_start: u64,
    compressed_size: u64,
    size: u64,
    crc32: u32,
    deflated: bool,
}

/// Opens the array `options.npz_member` selects in the archive at `path`.
pub(super) fn open(path: &Path, options: &ReadOptions) -> Result<Box<dyn CellReader>> {
    let members = members(path)?;
    let has = |name: &str| members.iter().any(|m| m.name == name);
    let sparse = has("format") && has("shape") && has("data");
    let names = || {
        let list: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
        list.join(", ")
    };
    let bad = |msg: String| StorageError::bad_file(path, 0, msg);
    let wanted = match &options.npz_member {
        NpzMember::Named(name) => Some(name.strip_suffix(".npy").unwrap_or(name)),
        NpzMember::Preferred(name) => {
            let name = name.strip_suffix(".npy").unwrap_or(name);
            has(name).then_some(name)
        }
        NpzMember::Only => None,
    };
    let member = match wanted {
        Some(name) => members.iter().find(|m| m.name == name).ok_or_else(|| {
            bad(format!(
                "the archive has no member '{name}'; its members are {}",
                names()
            ))
        })?,
        None if sparse => return Ok(Box::new(SparseReader::open(path, &members, options)?)),
        None => match members.as_slice() {
            [only] => only,
            [] => return Err(bad("the archive holds no arrays".into())),
            _ => {
                return Err(bad(format!(
                    "the archive holds several arrays ({}); name one with MEMBER",
                    names()
                )));
            }
        },
    };
    Ok(Box::new(member_reader(path, member, options)?))
}

/// The archive's members, from its central directory.
fn members(path: &Path) -> Result<Vec<Member>> {
    let file = File::open(path).map_err(|e| StorageError::io(path.display(), e))?;
    let mut archive = zip::ZipArchive::new(BufReader::new(file)).map_err(|e| {
        StorageError::bad_file(path, 0, format!("not a readable .npz (zip) archive: {e}"))
    })?;
    let mut out = Vec::with_capacity(archive.len());
    for index in 0..archive.len() {
        let bad = |e: zip::result::ZipError| {
            StorageError::bad_file(path, 0, format!("archive member {index}: {e}"))
        };
        let entry = archive.by_index_raw(index).map_err(bad)?;
        let name = entry.name().map_err(bad)?.into_owned();
        if entry.is_dir() {
            continue;
        }
        let deflated = match entry.compression() {
            CompressionMethod::Stored => false,
            CompressionMethod::Deflated => true,
            other => {
                return Err(StorageError::bad_file(
                    path,
                    0,
                    format!(
                        "member '{name}' is compressed with {other}; Tessera reads stored and \
                         deflated members (numpy.savez and savez_compressed)"
                    ),
                ));
            }
        };
        let data_start = entry.data_start().ok_or_else(|| {
            StorageError::bad_file(path, 0, format!("member '{name}': no data offset"))
        })?;
        out.push(Member {
            name: name.strip_suffix(".npy").unwrap_or(&name).to_string(),
            data_start,
            compressed_size: entry.compressed_size(),
            size: entry.size(),
            crc32: entry.crc32(),
            deflated,
        });
    }
    Ok(out)
}

/// A `.npy` reader over one member.
fn member_reader(path: &Path, member: &Member, options: &ReadOptions) -> Result<NpyReader> {
    let io_err = |e| StorageError::io(path.display(), e);
    let mut file = File::open(path).map_err(io_err)?;
    file.seek(SeekFrom::Start(member.data_start))
        .map_err(io_err)?;
    let raw = BufReader::with_capacity(READ_BUFFER, file).take(member.compressed_size);
    let bytes: Box<dyn Read + Send> = if member.deflated {
        Box::new(flate2::read::DeflateDecoder::new(raw))
    } else {
        Box::new(raw)
    };
    let input = Box::new(CrcCheck {
        inner: bytes,
        hasher: crc32fast::Hasher::new(),
        expected: member.crc32,
    });
    NpyReader::from_stream(
        path,
        format!("member '{}': ", member.name),
        input,
        member.size,
        options,
    )
}

/// Passes bytes through and, at the end of the stream, fails unless their CRC-32 is the
/// one the archive recorded.
struct CrcCheck {
    inner: Box<dyn Read + Send>,
    hasher: crc32fast::Hasher,
    expected: u32,
}

impl Read for CrcCheck {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 {
            self.hasher.update(&buf[..n]);
        } else if !buf.is_empty() {
            let found = self.hasher.clone().finalize();
            if found != self.expected {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "the data's CRC-32 is {found:08x}, the archive records {:08x}",
                        self.expected
                    ),
                ));
            }
        }
        Ok(n)
    }
}

/// How a SciPy sparse archive stores its matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SparseLayout {
    /// `indptr` per row, `indices` are columns.
    Csr,
    /// `indptr` per column, `indices` are rows.
    Csc,
    /// `row`, `col`, `data` triples.
    Coo,
}

/// Streams the non-zeros of a SciPy sparse archive.
struct SparseReader {
    path: PathBuf,
    layout: SparseLayout,
    shape: (u64, u64),
    data: NpyReader,
    /// CSR / CSC: the pointers and the minor indices. COO: rows and columns.
    first: NpyReader,
    second: NpyReader,
    /// CSR / CSC: the current major index (row or column) and where it ends in `data`.
    major: u64,
    major_end: u64,
    started: bool,
    /// Entries read so far.
    done: u64,
    nnz: u64,
    buffers: [Vec<f64>; 3],
    /// Pointers read ahead and the next one to use.
    pointers: Vec<f64>,
    next_pointer: usize,
}

impl SparseReader {
    fn open(path: &Path, members: &[Member], options: &ReadOptions) -> Result<Self> {
        let bad = |msg: String| StorageError::bad_file(path, 0, msg);
        let find = |name: &str| {
            members
                .iter()
                .find(|m| m.name == name)
                .ok_or_else(|| bad(format!("the SciPy sparse archive has no member '{name}'")))
        };
        let any = ReadOptions::default();
        let format = read_text(path, find("format")?)?;
        let layout = match format.as_str() {
            "csr" => SparseLayout::Csr,
            "csc" => SparseLayout::Csc,
            "coo" => SparseLayout::Coo,
            other => {
                return Err(bad(format!(
                    "member 'format': SciPy sparse format '{other}' is not supported \
                     (Tessera reads csr, csc and coo)"
                )));
            }
        };
        let mut shape_reader = member_reader(path, find("shape")?, &any)?;
        let mut dims = Vec::new();
        let count = shape_reader.remaining() as usize;
        if count == 2 {
            shape_reader.read_values(2, &mut dims)?;
        }
        let shape = match dims[..] {
            [r, c] if whole(r) && whole(c) => (r as u64, c as u64),
            _ => {
                return Err(bad(
                    "member 'shape' is not two non-negative integers: Tessera loads sparse \
                     matrices"
                        .into(),
                ));
            }
        };
        let fits = match (&options.target_dims, options.target_shape) {
            (Some(t), _) => t.len() == 2 && (t[0], t[1]) == shape,
            (None, Some(t)) => t == shape,
            (None, None) => true,
        };
        if !fits {
            let target = match (&options.target_dims, options.target_shape) {
                (Some(t), _) => t.iter().map(u64::to_string).collect::<Vec<_>>().join("x"),
                (None, t) => t.map(shape_str).unwrap_or_default(),
            };
            return Err(bad(format!(
                "the file holds a {} sparse matrix but the target shape is {target}",
                shape_str(shape)
            )));
        }
        let data = member_reader(path, find("data")?, &any)?;
        let (first, second) = match layout {
            SparseLayout::Coo => (
                member_reader(path, find("row")?, &any)?,
                member_reader(path, find("col")?, &any)?,
            ),
            _ => (
                member_reader(path, find("indptr")?, &any)?,
                member_reader(path, find("indices")?, &any)?,
            ),
        };
        let nnz = data.remaining();
        for (name, reader) in [("data", &data), ("first", &first), ("second", &second)] {
            if reader.dims().len() != 1 {
                return Err(bad(format!(
                    "member '{}' is not a 1-d array",
                    member_name(layout, name)
                )));
            }
        }
        if second.remaining() != nnz || (layout == SparseLayout::Coo && first.remaining() != nnz) {
            return Err(bad(format!(
                "the index members do not have one entry for each of the {nnz} values in 'data'"
            )));
        }
        let majors = match layout {
            SparseLayout::Csr => shape.0,
            SparseLayout::Csc => shape.1,
            SparseLayout::Coo => 0,
        };
        if layout != SparseLayout::Coo && first.remaining() != majors + 1 {
            return Err(bad(format!(
                "member 'indptr' has {} entries; a {} {} matrix needs {}",
                first.remaining(),
                shape_str(shape),
                if layout == SparseLayout::Csr {
                    "CSR"
                } else {
                    "CSC"
                },
                majors + 1
            )));
        }
        let mut reader = Self {
            path: path.to_path_buf(),
            layout,
            shape,
            data,
            first,
            second,
            major: 0,
            major_end: 0,
            started: false,
            done: 0,
            nnz,
            buffers: Default::default(),
            pointers: Vec::new(),
            next_pointer: 0,
        };
        if layout != SparseLayout::Coo {
            // indptr[0] must be 0; it becomes the start of the first row or column.
            let first_pointer = reader.pointer()?;
            if first_pointer != 0 {
                return Err(bad(format!(
                    "member 'indptr' starts at {first_pointer}, not 0"
                )));
            }
        }
        Ok(reader)
    }

    fn bad(&self, msg: String) -> StorageError {
        StorageError::bad_file(&self.path, 0, msg)
    }

    /// The next entry of `indptr`, checked to be a whole number no greater than `nnz`.
    fn pointer(&mut self) -> Result<u64> {
        if self.next_pointer == self.pointers.len() {
            let n = self.first.remaining().min(CELL_BATCH as u64) as usize;
            if n == 0 {
                return Err(self.bad("member 'indptr' ends early".into()));
            }
            let mut pointers = std::mem::take(&mut self.pointers);
            self.first.read_values(n, &mut pointers)?;
            self.pointers = pointers;
            self.next_pointer = 0;
        }
        let p = self.pointers[self.next_pointer];
        self.next_pointer += 1;
        if !whole(p) || p as u64 > self.nnz {
            return Err(self.bad(format!(
                "member 'indptr' entry {p} is not a position within the {} values",
                self.nnz
            )));
        }
        Ok(p as u64)
    }

    /// Moves to the row (CSR) or column (CSC) holding entry `k`.
    fn advance_to(&mut self, k: u64) -> Result<()> {
        while k >= self.major_end {
            let end = self.pointer()?;
            if self.started {
                self.major += 1;
            }
            self.started = true;
            if end < self.major_end {
                return Err(self.bad(format!(
                    "member 'indptr' decreases at entry {} ({end} after {})",
                    self.major + 1,
                    self.major_end
                )));
            }
            self.major_end = end;
        }
        Ok(())
    }
}

/// A value that is a non-negative whole number exactly representable as an index.
fn whole(x: f64) -> bool {
    x >= 0.0 && x.fract() == 0.0 && x < 9.007_199_254_740_992e15
}

fn member_name(layout: SparseLayout, role: &str) -> &'static str {
    match (layout, role) {
        (_, "data") => "data",
        (SparseLayout::Coo, "first") => "row",
        (SparseLayout::Coo, _) => "col",
        (_, "first") => "indptr",
        _ => "indices",
    }
}

/// The text of a 0-d string member (`format`: `'<U3'` or `'|S3'`).
fn read_text(path: &Path, member: &Member) -> Result<String> {
    let bad = || {
        StorageError::bad_file(
            path,
            0,
            "member 'format' is not a string naming a SciPy sparse format",
        )
    };
    let mut input = File::open(path).map_err(|e| StorageError::io(path.display(), e))?;
    input
        .seek(SeekFrom::Start(member.data_start))
        .map_err(|e| StorageError::io(path.display(), e))?;
    // The member is a few hundred bytes: a header and a short string.
    let mut raw = Vec::new();
    let limit = member.compressed_size.min(1 << 16);
    (&mut input)
        .take(limit)
        .read_to_end(&mut raw)
        .map_err(|e| StorageError::io(path.display(), e))?;
    let mut bytes = Vec::new();
    if member.deflated {
        flate2::read::DeflateDecoder::new(raw.as_slice())
            .take(1 << 16)
            .read_to_end(&mut bytes)
            .map_err(|_| bad())?;
    } else {
        bytes = raw;
    }
    let text = super::npy::string_value(&bytes).ok_or_else(bad)?;
    Ok(text)
}

impl CellReader for SparseReader {
    fn declared_shape(&self) -> Option<(u64, u64)> {
        Some(self.shape)
    }

    fn row_ordered(&self) -> bool {
        self.layout == SparseLayout::Csr
    }

    fn next_cells(&mut self) -> Result<Option<Cells>> {
        if self.done == self.nnz {
            if self.layout != SparseLayout::Coo {
                // The rest of indptr must all point at the end.
                while self.next_pointer < self.pointers.len() || self.first.remaining() > 0 {
                    let p = self.pointer()?;
                    if p != self.nnz {
                        return Err(self.bad(format!(
                            "member 'indptr' ends at {p}, not at the {} values",
                            self.nnz
                        )));
                    }
                }
            }
            self.data.finish()?;
            self.first.finish()?;
            self.second.finish()?;
            return Ok(None);
        }
        let n = (self.nnz - self.done).min(CELL_BATCH as u64) as usize;
        let [values, first, second] = &mut self.buffers;
        let mut values = std::mem::take(values);
        let mut first_values = std::mem::take(first);
        let mut second_values = std::mem::take(second);
        self.data.read_values(n, &mut values)?;
        self.second.read_values(n, &mut second_values)?;
        if self.layout == SparseLayout::Coo {
            self.first.read_values(n, &mut first_values)?;
        }
        let mut cells = Cells::default();
        let (rows, cols) = self.shape;
        for (k, &v) in values.iter().enumerate() {
            let minor = second_values[k];
            let (r, c) = match self.layout {
                SparseLayout::Coo => (first_values[k], minor),
                SparseLayout::Csr => {
                    self.advance_to(self.done + k as u64)?;
                    (self.major as f64, minor)
                }
                SparseLayout::Csc => {
                    self.advance_to(self.done + k as u64)?;
                    (minor, self.major as f64)
                }
            };
            if !whole(r) || !whole(c) || r as u64 >= rows || c as u64 >= cols {
                return Err(self.bad(format!(
                    "entry {} at ({r}, {c}) is outside the {} matrix",
                    self.done + k as u64,
                    shape_str(self.shape)
                )));
            }
            if is_stored(v) {
                cells.rows.push(r as u64);
                cells.cols.push(c as u64);
                cells.values.push(v);
            }
        }
        self.done += n as u64;
        self.buffers = [values, first_values, second_values];
        Ok(Some(cells))
    }

    fn final_shape(&self) -> Option<(u64, u64)> {
        Some(self.shape)
    }
}
