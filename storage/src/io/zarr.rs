//! Zarr v3 arrays: a directory holding `zarr.json` (the array's shape, data type, chunk
//! grid, fill value and codecs) and one file per chunk that was written, read and written
//! through the `zarrs` crate.
//!
//! Reading goes one band of chunks at a time: the chunks that share an index along the
//! first dimension, decoded together, so cells come out in C order (row-ordered) and the
//! loader finishes each band of blocks as the file moves past it. A band larger than
//! [`BAND_ELEMENTS`] is read chunk by chunk instead (unordered, so the loader groups and
//! spills). Sharded arrays are read by inner chunk: the shard index is read and only that
//! chunk's bytes are decoded. A chunk that was never written holds the fill value
//! everywhere (`zarrs` fills it in); edge chunks are cut to the array's shape. Data types
//! `float64 float32 int64 int32 int16 int8 uint64 uint32 uint16 uint8 bool`; codecs
//! `bytes`, `transpose`, `gzip`, `zstd`, `crc32c` and `sharding_indexed`. Not read:
//! `blosc` (it compiles the C blosc library), Zarr v2 arrays (`.zarray`), groups (name
//! one of a group's arrays instead) and consolidated metadata (only the array's own
//! `zarr.json` is read).
//!
//! Writing ([`ZarrWriter`], [`ZarrCellWriter`]) makes `float64` arrays, codecs `bytes`
//! (little endian) then `zstd` (level [`ZSTD_LEVEL`]), fill value 0; chunks of zeros are
//! not written, so a sparse array stays small. Everything is written into a temporary
//! directory beside the target, fsynced and renamed into place: a failed export leaves
//! nothing, and an existing target is refused (a directory cannot be swapped in one
//! rename).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use zarrs::array::codec::{BytesCodec, ZstdCodec};
use zarrs::array::{Array, ArrayBuilder, ArrayBytes, ArrayMetadata, ArrayShardedExt, ArraySubset};
use zarrs::config::MetadataRetrieveVersion;
use zarrs::filesystem::FilesystemStore;

use super::npy::{add_cell, check_target, dims_str, flat_position, flatten2};
use super::output::{ScratchCells, TempDir, TempPath, refuse_existing};
use super::{CELL_BATCH, CellReader, Cells, ReadOptions};
use crate::block::is_stored;
use crate::error::{Result, StorageError};

/// Largest band of chunks read at once, in elements (128 MiB as `f64`); a larger band
/// is read chunk by chunk.
pub const BAND_ELEMENTS: u64 = 1 << 24;

/// The zstd level written: zstd's default, fast and a fair ratio for `f64` data.
pub const ZSTD_LEVEL: i32 = 3;

/// Largest chunk [`ZarrCellWriter`] assembles, in elements (1 GiB as `f64`).
const MAX_CHUNK_ELEMENTS: u64 = 1 << 27;

/// Cells [`ZarrCellWriter`] sorts in memory at once (24 bytes each: 96 MiB).
const SORT_RUN_CELLS: usize = 1 << 22;

const SUPPORTED_TYPES: &str =
    "float64, float32, int64, int32, int16, int8, uint64, uint32, uint16, uint8, bool";

/// An element type Tessera reads, by its Zarr v3 name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Element {
    F64,
    F32,
    I64,
    I32,
    I16,
    I8,
    U64,
    U32,
    U16,
    U8,
    Bool,
}

impl Element {
    fn from_name(name: &str) -> Option<Element> {
        Some(match name {
            "float64" => Element::F64,
            "float32" => Element::F32,
            "int64" => Element::I64,
            "int32" => Element::I32,
            "int16" => Element::I16,
            "int8" => Element::I8,
            "uint64" => Element::U64,
            "uint32" => Element::U32,
            "uint16" => Element::U16,
            "uint8" => Element::U8,
            "bool" => Element::Bool,
            _ => return None,
        })
    }

    fn size(self) -> usize {
        match self {
            Element::F64 | Element::I64 | Element::U64 => 8,
            Element::F32 | Element::I32 | Element::U32 => 4,
            Element::I16 | Element::U16 => 2,
            Element::I8 | Element::U8 | Element::Bool => 1,
        }
    }

    /// Decodes native-endian elements (what `zarrs` hands back) into `out`.
    fn decode(self, bytes: &[u8], out: &mut Vec<f64>) {
        macro_rules! decode_as {
            ($t:ty, $n:literal) => {
                out.extend(bytes.chunks_exact($n).map(|b| {
                    let mut a = [0u8; $n];
                    a.copy_from_slice(b);
                    <$t>::from_ne_bytes(a) as f64
                }))
            };
        }
        match self {
            Element::F64 => decode_as!(f64, 8),
            Element::F32 => decode_as!(f32, 4),
            Element::I64 => decode_as!(i64, 8),
            Element::I32 => decode_as!(i32, 4),
            Element::I16 => decode_as!(i16, 2),
            Element::I8 => decode_as!(i8, 1),
            Element::U64 => decode_as!(u64, 8),
            Element::U32 => decode_as!(u32, 4),
            Element::U16 => decode_as!(u16, 2),
            Element::U8 => decode_as!(u8, 1),
            Element::Bool => out.extend(bytes.iter().map(|&b| if b != 0 { 1.0 } else { 0.0 })),
        }
    }
}

/// `[1, 0]`: chunk indices as Zarr tools print them.
fn indices_str(indices: &[u64]) -> String {
    let parts: Vec<String> = indices.iter().map(u64::to_string).collect();
    format!("[{}]", parts.join(", "))
}

/// Indices of the `n`th element, in C order, of a grid of `shape`.
fn unravel(mut n: u64, shape: &[u64]) -> Vec<u64> {
    let mut out = vec![0; shape.len()];
    for (x, &d) in out.iter_mut().zip(shape).rev() {
        let d = d.max(1);
        *x = n % d;
        n /= d;
    }
    out
}

/// A block of cells decoded from the file and not yet handed out: its origin and shape
/// in the array, its values in C order, and how far they have been read.
#[derive(Debug, Default)]
struct Region {
    origin: Vec<u64>,
    shape: Vec<u64>,
    values: Vec<f64>,
    pos: usize,
    /// The index within the region of `values[pos]`.
    index: Vec<u64>,
}

/// Streams cells from a Zarr v3 array directory.
pub(super) struct ZarrReader {
    path: PathBuf,
    array: Array<FilesystemStore>,
    element: Element,
    dims: Vec<u64>,
    shape: (u64, u64),
    /// The shape read as one unit: a chunk, or an inner chunk of a shard.
    unit: Vec<u64>,
    /// Units along each dimension.
    grid: Vec<u64>,
    /// The shard shape, when the array is sharded.
    shard: Option<Vec<u64>>,
    /// Whole bands of units (one index along the first dimension) at a time, or units.
    by_band: bool,
    /// The next band or unit (C order over the unit grid), and how many there are.
    next: u64,
    count: u64,
    region: Region,
    /// Scratch: the array index of a cell.
    at: Vec<u64>,
}

impl std::fmt::Debug for ZarrReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZarrReader")
            .field("path", &self.path)
            .field("element", &self.element)
            .field("dims", &self.dims)
            .field("unit", &self.unit)
            .field("shard", &self.shard)
            .field("by_band", &self.by_band)
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

impl ZarrReader {
    /// Opens the array directory `path`: reads and checks `zarr.json`.
    pub(super) fn open(path: &Path, options: &ReadOptions) -> Result<Self> {
        let bad = |msg: String| StorageError::bad_file(path, 0, msg);
        let meta_path = path.join("zarr.json");
        if !path.is_dir() {
            if !path.exists() {
                return Err(StorageError::io(
                    path.display(),
                    std::io::Error::from(std::io::ErrorKind::NotFound),
                ));
            }
            return Err(bad(
                "not a Zarr array: a Zarr v3 array is a directory holding zarr.json".into(),
            ));
        }
        let text = match std::fs::read(&meta_path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let why = if path.join(".zarray").is_file() {
                    "a Zarr v2 array (.zarray); Tessera reads Zarr v3 arrays \
                     (zarr-python 3 writes them, and converts v2 ones)"
                } else if path.join(".zgroup").is_file() {
                    "a Zarr v2 group; Tessera reads Zarr v3 arrays"
                } else {
                    "no zarr.json: not a Zarr v3 array"
                };
                return Err(bad(why.into()));
            }
            Err(e) => return Err(StorageError::io(meta_path.display(), e)),
        };
        let meta: serde_json::Value = serde_json::from_slice(&text)
            .map_err(|e| bad(format!("zarr.json is not valid JSON: {e}")))?;
        match meta.get("node_type").and_then(|t| t.as_str()) {
            Some("array") => {}
            Some("group") => {
                return Err(bad(
                    "zarr.json describes a group, not an array; load one of its arrays \
                     (the directory named like the array inside it)"
                        .into(),
                ));
            }
            other => {
                return Err(bad(format!(
                    "zarr.json has node_type {other:?}, not \"array\""
                )));
            }
        }
        if let Some(name) = codec_names(meta.get("codecs"))
            .into_iter()
            .find(|n| n == "blosc")
        {
            return Err(bad(format!(
                "the array is compressed with the '{name}' codec, which Tessera does not read \
                 (it builds the C blosc library); rewrite it with zstd or gzip"
            )));
        }

        let store = FilesystemStore::new(path)
            .map_err(|e| bad(format!("cannot open the directory as a Zarr store: {e}")))?;
        let array = Array::open_opt(Arc::new(store), "/", &MetadataRetrieveVersion::V3)
            .map_err(|e| bad(format!("cannot open the array: {e}")))?;
        let ArrayMetadata::V3(metadata) = array.metadata() else {
            return Err(bad("not a Zarr v3 array".into()));
        };
        let type_name = metadata.data_type.name().to_string();
        let element = Element::from_name(&type_name).ok_or_else(|| {
            bad(format!(
                "unsupported data type '{type_name}' (Tessera reads {SUPPORTED_TYPES})"
            ))
        })?;
        let grid_name = metadata.chunk_grid.name();
        if grid_name != "regular" {
            return Err(bad(format!(
                "unsupported chunk grid '{grid_name}' (Tessera reads regular chunk grids)"
            )));
        }
        let dims = array.shape().to_vec();
        if dims.is_empty() {
            return Err(bad(
                "unsupported 0-d array: Tessera loads arrays of one or more dimensions".into(),
            ));
        }
        check_target(&dims, options).map_err(&bad)?;
        let total = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
        let Some(total) = total else {
            return Err(bad(format!("shape {} is too large", dims_str(&dims))));
        };

        let (unit, shard) = if total == 0 {
            (vec![1; dims.len()], None)
        } else {
            let chunk: Vec<u64> = array
                .chunk_shape(&vec![0; dims.len()])
                .map_err(|e| bad(format!("cannot read the chunk grid: {e}")))?
                .iter()
                .map(|n| n.get())
                .collect();
            match array.is_sharded().then(|| array.effective_subchunk_shape()) {
                Some(Some(inner)) => (inner.iter().map(|n| n.get()).collect(), Some(chunk)),
                Some(None) => (chunk.clone(), Some(chunk)),
                None => (chunk, None),
            }
        };
        let grid: Vec<u64> = dims
            .iter()
            .zip(&unit)
            .map(|(&d, &u)| d.div_ceil(u.max(1)))
            .collect();
        let band_elements = unit[0]
            .min(dims[0])
            .saturating_mul(dims[1..].iter().fold(1u64, |a, &d| a.saturating_mul(d)));
        let by_band = band_elements <= BAND_ELEMENTS;
        let count = if total == 0 {
            0
        } else if by_band {
            grid[0]
        } else {
            grid.iter().product()
        };
        Ok(Self {
            path: path.to_path_buf(),
            array,
            element,
            shape: flatten2(&dims),
            at: vec![0; dims.len()],
            dims,
            unit,
            grid,
            shard,
            by_band,
            next: 0,
            count,
            region: Region::default(),
        })
    }

    /// The array ranges of unit `indices`, cut to the array's shape.
    fn unit_ranges(&self, indices: &[u64]) -> Vec<Range<u64>> {
        indices
            .iter()
            .zip(&self.unit)
            .zip(&self.dims)
            .map(|((&i, &u), &d)| (i * u).min(d)..((i + 1) * u).min(d))
            .collect()
    }

    /// How an error message names unit `indices`: `chunk [1, 0]`, or for a sharded array
    /// `inner chunk [2, 1] of shard [1, 0]`.
    fn unit_name(&self, indices: &[u64]) -> String {
        match &self.shard {
            None => format!("chunk {}", indices_str(indices)),
            Some(shard) => {
                let outer: Vec<u64> = indices
                    .iter()
                    .zip(&self.unit)
                    .zip(shard)
                    .map(|((&i, &u), &s)| i * u / s.max(1))
                    .collect();
                format!(
                    "inner chunk {} of shard {}",
                    indices_str(indices),
                    indices_str(&outer)
                )
            }
        }
    }

    /// Decodes the cells of `ranges` as `f64`, in C order; the error is `zarrs`' message.
    fn read(&self, ranges: &[Range<u64>]) -> std::result::Result<Vec<f64>, String> {
        let subset = ArraySubset::new_with_ranges(ranges);
        // A decoder panic on damaged input must not take the server down with it.
        let got = catch_unwind(AssertUnwindSafe(|| {
            self.array
                .retrieve_array_subset::<ArrayBytes<'static>>(&subset)
        }));
        let bytes = match got {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("the decoder failed on the chunk's bytes".into()),
        };
        let raw = bytes.into_fixed().map_err(|e| e.to_string())?;
        let expected = subset.num_elements();
        if raw.len() as u64 != expected * self.element.size() as u64 {
            return Err(format!(
                "decoded {} bytes, expected {expected} elements of {} bytes",
                raw.len(),
                self.element.size()
            ));
        }
        let mut out = Vec::with_capacity(raw.len() / self.element.size());
        self.element.decode(&raw, &mut out);
        Ok(out)
    }

    /// Decodes the next band or unit into [`ZarrReader::region`].
    fn load_next(&mut self) -> Result<()> {
        let n = self.next;
        self.next += 1;
        let ranges = if self.by_band {
            let mut ranges = self.unit_ranges(&[n]);
            ranges.extend(self.dims[1..].iter().map(|&d| 0..d));
            ranges
        } else {
            self.unit_ranges(&unravel(n, &self.grid))
        };
        let values = match self.read(&ranges) {
            Ok(values) => values,
            Err(e) => return Err(self.locate_error(n, e)),
        };
        self.region = Region {
            origin: ranges.iter().map(|r| r.start).collect(),
            shape: ranges.iter().map(|r| r.end - r.start).collect(),
            values,
            pos: 0,
            index: vec![0; ranges.len()],
        };
        Ok(())
    }

    /// The error of band or unit `n`, naming the chunk that fails: a band is read again
    /// unit by unit to find it.
    fn locate_error(&self, n: u64, error: String) -> StorageError {
        let bad = |msg: String| StorageError::bad_file(&self.path, 0, msg);
        if !self.by_band {
            let indices = unravel(n, &self.grid);
            return bad(format!("{}: {error}", self.unit_name(&indices)));
        }
        let rest = &self.grid[1..];
        let units: u64 = rest.iter().product();
        for k in 0..units {
            let mut indices = vec![n];
            indices.extend(unravel(k, rest));
            if let Err(e) = self.read(&self.unit_ranges(&indices)) {
                return bad(format!("{}: {e}", self.unit_name(&indices)));
            }
        }
        bad(format!(
            "the chunks at index {n} along the first dimension: {error}"
        ))
    }

    /// Moves the region's non-zero cells into `cells`, up to a full batch.
    fn emit(&mut self, cells: &mut Cells) {
        let Region {
            origin,
            shape,
            values,
            pos,
            index,
        } = &mut self.region;
        while *pos < values.len() && cells.len() < CELL_BATCH {
            let v = values[*pos];
            if is_stored(v) {
                for ((a, &o), &x) in self.at.iter_mut().zip(origin.iter()).zip(index.iter()) {
                    *a = o + x;
                }
                let (r, c) = flat_position(&self.dims, &self.at);
                cells.rows.push(r);
                cells.cols.push(c);
                cells.values.push(v);
            }
            *pos += 1;
            for (x, &d) in index.iter_mut().zip(shape.iter()).rev() {
                *x += 1;
                if *x < d {
                    break;
                }
                *x = 0;
            }
        }
    }
}

/// The names of the codecs in a `codecs` list, those nested in a sharding codec included.
fn codec_names(codecs: Option<&serde_json::Value>) -> Vec<String> {
    let mut out = Vec::new();
    for codec in codecs.and_then(|c| c.as_array()).into_iter().flatten() {
        if let Some(name) = codec.get("name").and_then(|n| n.as_str()) {
            out.push(name.to_string());
        } else if let Some(name) = codec.as_str() {
            out.push(name.to_string());
        }
        if let Some(config) = codec.get("configuration") {
            out.extend(codec_names(config.get("codecs")));
            out.extend(codec_names(config.get("index_codecs")));
        }
    }
    out
}

impl CellReader for ZarrReader {
    fn declared_shape(&self) -> Option<(u64, u64)> {
        Some(self.shape)
    }

    fn row_ordered(&self) -> bool {
        // Units in C order are row-ordered when each spans every dimension but the first.
        self.by_band || self.grid[1..].iter().all(|&g| g <= 1)
    }

    fn next_cells(&mut self) -> Result<Option<Cells>> {
        let mut cells = Cells::default();
        loop {
            self.emit(&mut cells);
            if cells.len() >= CELL_BATCH {
                return Ok(Some(cells));
            }
            if self.next >= self.count {
                break;
            }
            self.load_next()?;
        }
        self.region = Region::default();
        Ok((!cells.is_empty()).then_some(cells))
    }

    fn final_shape(&self) -> Option<(u64, u64)> {
        Some(self.shape)
    }
}

/// Writes an array as a Zarr v3 directory, chunk by chunk: `float64`, `bytes` (little
/// endian) then `zstd`, fill value 0; chunks without a non-zero are not written.
///
/// The array is made in a temporary directory beside the target; [`ZarrWriter::commit`]
/// fsyncs it and renames it into place. Dropped before that, it leaves nothing behind.
pub struct ZarrWriter {
    target: PathBuf,
    array: Array<FilesystemStore>,
    dims: Vec<u64>,
    chunk: Vec<u64>,
    /// A whole chunk, for edge chunks padded with zeros (allocated at the first one).
    padded: Vec<f64>,
    /// Elements in a whole chunk.
    elements: usize,
    // Last: fields drop in order, so the array is closed before the directory goes.
    temp: TempDir,
}

impl std::fmt::Debug for ZarrWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZarrWriter")
            .field("target", &self.target)
            .field("dims", &self.dims)
            .field("chunk", &self.chunk)
            .finish_non_exhaustive()
    }
}

impl ZarrWriter {
    /// Starts an array of shape `dims` cut into chunks of `chunk` (each at least 1) at
    /// `target`, which must not exist.
    pub fn create(target: &Path, dims: &[u64], chunk: &[u64]) -> Result<Self> {
        if dims.is_empty() || chunk.len() != dims.len() {
            return Err(StorageError::InvalidArgument(format!(
                "a Zarr array of shape {} cannot have chunks of shape {}",
                dims_str(dims),
                dims_str(chunk)
            )));
        }
        let chunk: Vec<u64> = chunk.iter().map(|&c| c.max(1)).collect();
        let elements = chunk
            .iter()
            .try_fold(1u64, |a, &c| a.checked_mul(c))
            .filter(|&n| n <= MAX_CHUNK_ELEMENTS)
            .ok_or_else(|| {
                StorageError::InvalidArgument(format!(
                    "chunks of {} are over the {MAX_CHUNK_ELEMENTS} elements Tessera writes",
                    dims_str(&chunk)
                ))
            })?;
        let temp = TempDir::create_beside(target, "part")?;
        let failed = |e: &dyn std::fmt::Display| {
            StorageError::io(temp.path().display(), std::io::Error::other(e.to_string()))
        };
        let store = FilesystemStore::new(temp.path()).map_err(|e| failed(&e))?;
        let array = ArrayBuilder::new(
            dims.to_vec(),
            chunk.as_slice(),
            zarrs::array::data_type::float64(),
            0.0f64,
        )
        .array_to_bytes_codec(Arc::new(BytesCodec::little()))
        .bytes_to_bytes_codecs(vec![Arc::new(ZstdCodec::new(ZSTD_LEVEL, false))])
        .build(Arc::new(store), "/")
        .map_err(|e| failed(&e))?;
        array.store_metadata().map_err(|e| failed(&e))?;
        Ok(Self {
            target: target.to_path_buf(),
            array,
            dims: dims.to_vec(),
            padded: Vec::new(),
            elements: elements as usize,
            chunk,
            temp,
        })
    }

    /// The extents of chunk `indices` inside the array (edge chunks are cut).
    fn extents(&self, indices: &[u64]) -> Result<Vec<u64>> {
        if indices.len() != self.dims.len() {
            return Err(StorageError::Internal(format!(
                "chunk {} of a {}-d array",
                indices_str(indices),
                self.dims.len()
            )));
        }
        let extents: Vec<u64> = indices
            .iter()
            .zip(&self.chunk)
            .zip(&self.dims)
            .map(|((&i, &c), &d)| c.min(d.saturating_sub(i.saturating_mul(c))))
            .collect();
        if extents.contains(&0) && !self.dims.contains(&0) {
            return Err(StorageError::Internal(format!(
                "chunk {} is outside a {} array",
                indices_str(indices),
                dims_str(&self.dims)
            )));
        }
        Ok(extents)
    }

    /// Writes chunk `indices` from `values`: its cells inside the array, in C order over
    /// the chunk cut to the array's shape. A chunk without a non-zero is not written.
    pub fn write_chunk(&mut self, indices: &[u64], values: &[f64]) -> Result<()> {
        let extents = self.extents(indices)?;
        let cells: u64 = extents.iter().product();
        if cells != values.len() as u64 {
            return Err(StorageError::Internal(format!(
                "chunk {} holds {cells} cells, given {}",
                indices_str(indices),
                values.len()
            )));
        }
        if !values.iter().any(|&v| is_stored(v)) {
            return Ok(());
        }
        if extents == self.chunk {
            return self.store(indices, values);
        }
        // An edge chunk: lines along the last dimension, placed in a zero-padded chunk.
        let mut padded = std::mem::take(&mut self.padded);
        padded.clear();
        padded.resize(self.elements, 0.0);
        let (lead, [width]) = extents.split_at(extents.len() - 1) else {
            return Err(StorageError::Internal("a 0-d chunk".into()));
        };
        let full_width = self.chunk[self.chunk.len() - 1] as usize;
        let lines: u64 = lead.iter().product();
        for (line, source) in (0..lines).zip(values.chunks_exact((*width as usize).max(1))) {
            let at = unravel(line, lead);
            let start = at
                .iter()
                .zip(&self.chunk)
                .fold(0u64, |a, (&x, &c)| a * c + x) as usize
                * full_width;
            padded[start..start + source.len()].copy_from_slice(source);
        }
        let stored = self.store(indices, &padded);
        self.padded = padded;
        stored
    }

    /// Encodes and writes a whole chunk.
    fn store(&self, indices: &[u64], chunk: &[f64]) -> Result<()> {
        self.array.store_chunk(indices, chunk).map_err(|e| {
            StorageError::io(
                self.temp.path().display(),
                std::io::Error::other(format!("chunk {}: {e}", indices_str(indices))),
            )
        })
    }

    /// Fsyncs the array and renames it into place.
    pub fn commit(self) -> Result<()> {
        let Self {
            target,
            array,
            temp,
            ..
        } = self;
        drop(array);
        temp.persist(&target)
    }
}

/// Writes cells that arrive in any order (a query's `(i, j, v)` rows, or n-d coordinates
/// and a value) as a Zarr v3 array whose shape is one past the largest coordinate along
/// each dimension, chunked as [`ZarrCellWriter::commit`]'s caller chooses.
///
/// Memory stays bounded: cells go to a scratch file beside the target as they come; the
/// commit sorts them by chunk in runs of at most 2^22 cells (merged from run
/// files when there are several), assembles one chunk at a time (cells listed more than
/// once are summed, as loads sum them) and writes it with a [`ZarrWriter`]. Dropped
/// before the commit, it leaves nothing behind.
#[derive(Debug)]
pub struct ZarrCellWriter {
    target: PathBuf,
    cells: ScratchCells,
}

/// A cell placed in the chunk grid: the chunk's number in C order, the cell's offset in
/// the chunk in C order, the value.
type Placed = (u64, u64, f64);

impl ZarrCellWriter {
    /// Starts an array of `ndim` dimensions at `target`, which must not exist.
    pub fn create(target: &Path, ndim: usize) -> Result<Self> {
        if ndim == 0 {
            return Err(StorageError::InvalidArgument(
                "a Zarr array of cells needs at least one coordinate".into(),
            ));
        }
        // Refused now rather than after the query ran.
        refuse_existing(target)?;
        Ok(Self {
            target: target.to_path_buf(),
            cells: ScratchCells::create_beside(target, ndim)?,
        })
    }

    /// Adds the cell at `index` (one coordinate per dimension).
    pub fn push(&mut self, index: &[u64], value: f64) -> Result<()> {
        self.cells.push(index, value)
    }

    /// Writes the array with chunks of `chunk_shape(shape)` and renames it into place;
    /// returns its shape.
    pub fn commit(self, chunk_shape: impl FnOnce(&[u64]) -> Vec<u64>) -> Result<Vec<u64>> {
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
        let mut file = out.into_inner().map_err(|e| scratch_err(e.into_error()))?;
        file.seek(SeekFrom::Start(0)).map_err(scratch_err)?;
        let mut writer = ZarrWriter::create(&target, &dims, &chunk_shape(&dims))?;
        let chunk = writer.chunk.clone();
        let grid: Vec<u64> = dims
            .iter()
            .zip(&chunk)
            .map(|(&d, &c)| d.div_ceil(c))
            .collect();

        // Sorted runs of placed cells: the last stays in memory, earlier ones in files.
        let mut records = BufReader::with_capacity(1 << 20, file);
        let mut record = vec![0u8; 8 * (dims.len() + 1)];
        let mut runs: Vec<TempPath> = Vec::new();
        let mut run: Vec<Placed> = Vec::new();
        for n in 0..cells {
            records.read_exact(&mut record).map_err(scratch_err)?;
            let (coords, value) = record.split_at(8 * dims.len());
            let (mut block, mut offset) = (0u64, 0u64);
            for ((x, &c), &g) in coords.chunks_exact(8).zip(&chunk).zip(&grid) {
                let x = u64::from_le_bytes(word(x));
                block = block * g + x / c;
                offset = offset * c + x % c;
            }
            run.push((block, offset, f64::from_le_bytes(word(value))));
            if run.len() == SORT_RUN_CELLS && n + 1 < cells {
                runs.push(write_run(&target, &mut run)?);
            }
        }
        drop(records);
        drop(scratch);
        // Stable: cells of one place keep their order, so sums add up as they came.
        run.sort_by_key(|&(block, offset, _)| (block, offset));

        let elements = writer.elements;
        let mut assembler = ChunkAssembler {
            writer: &mut writer,
            grid: &grid,
            current: None,
            values: vec![0.0; elements],
        };
        if runs.is_empty() {
            for cell in run {
                assembler.add(cell)?;
            }
        } else {
            merge_runs(&runs, run, |cell| assembler.add(cell))?;
        }
        assembler.finish()?;
        drop(runs);
        writer.commit()?;
        Ok(dims)
    }
}

fn word(b: &[u8]) -> [u8; 8] {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[..8]);
    w
}

/// Sorts `run` and writes it to a run file beside `target`; empties `run`.
fn write_run(target: &Path, run: &mut Vec<Placed>) -> Result<TempPath> {
    run.sort_by_key(|&(block, offset, _)| (block, offset));
    let (path, file) = TempPath::create_beside(target, "run")?;
    let err = |e| StorageError::io(path.path().display(), e);
    let mut out = BufWriter::with_capacity(1 << 20, file);
    for (block, offset, value) in run.drain(..) {
        out.write_all(&block.to_le_bytes()).map_err(err)?;
        out.write_all(&offset.to_le_bytes()).map_err(err)?;
        out.write_all(&value.to_le_bytes()).map_err(err)?;
    }
    out.flush().map_err(err)?;
    Ok(path)
}

/// Calls `f` with every cell of the sorted run files and the sorted `last` run, in
/// `(chunk, offset)` order; ties in run order, so cells keep the order they came in.
fn merge_runs(
    runs: &[TempPath],
    last: Vec<Placed>,
    mut f: impl FnMut(Placed) -> Result<()>,
) -> Result<()> {
    let mut readers = Vec::with_capacity(runs.len());
    for run in runs {
        let file = File::open(run.path()).map_err(|e| StorageError::io(run.path().display(), e))?;
        readers.push(BufReader::with_capacity(64 << 10, file));
    }
    let next_of = |n: usize, readers: &mut Vec<BufReader<File>>| -> Result<Option<Placed>> {
        let mut rec = [0u8; 24];
        match readers[n].read_exact(&mut rec) {
            Ok(()) => Ok(Some((
                u64::from_le_bytes(word(&rec[..8])),
                u64::from_le_bytes(word(&rec[8..16])),
                f64::from_le_bytes(word(&rec[16..])),
            ))),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(StorageError::io(runs[n].path().display(), e)),
        }
    };
    let mut last = last.into_iter();
    let last_run = runs.len();
    // Heap of (chunk, offset, run) with the value alongside.
    let mut heap = BinaryHeap::new();
    for n in 0..runs.len() {
        if let Some((b, o, v)) = next_of(n, &mut readers)? {
            heap.push(Reverse((b, o, n, v.to_bits())));
        }
    }
    if let Some((b, o, v)) = last.next() {
        heap.push(Reverse((b, o, last_run, v.to_bits())));
    }
    while let Some(Reverse((b, o, n, bits))) = heap.pop() {
        f((b, o, f64::from_bits(bits)))?;
        let following = if n == last_run {
            last.next()
        } else {
            next_of(n, &mut readers)?
        };
        if let Some((b, o, v)) = following {
            heap.push(Reverse((b, o, n, v.to_bits())));
        }
    }
    Ok(())
}

/// Gathers sorted cells into one whole chunk at a time and writes each when the next
/// chunk begins.
struct ChunkAssembler<'a> {
    writer: &'a mut ZarrWriter,
    grid: &'a [u64],
    current: Option<u64>,
    values: Vec<f64>,
}

impl ChunkAssembler<'_> {
    fn add(&mut self, (block, offset, value): Placed) -> Result<()> {
        if self.current != Some(block) {
            self.flush()?;
            self.current = Some(block);
        }
        let slot = &mut self.values[offset as usize];
        *slot = add_cell(*slot, value);
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if let Some(block) = self.current.take() {
            let indices = unravel(block, self.grid);
            if self.values.iter().any(|&v| is_stored(v)) {
                self.writer.store(&indices, &self.values)?;
            }
            self.values.fill(0.0);
        }
        Ok(())
    }

    fn finish(mut self) -> Result<()> {
        self.flush()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic

    use super::*;
    use crate::io::{FileFormat, read_all_sorted};

    type Triples = Vec<(u64, u64, f64)>;

    /// Every cell of the array at `path` through the reader.
    fn read(path: &Path) -> Result<(Triples, Option<(u64, u64)>)> {
        read_all_sorted(path, FileFormat::Zarr, &ReadOptions::default())
    }

    #[test]
    fn written_arrays_read_back_with_edge_chunks_and_empty_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.zarr");
        // 5x7 in chunks of 2x3: edge chunks on both sides; chunk [1, 1] stays empty.
        let mut w = ZarrWriter::create(&path, &[5, 7], &[2, 3]).unwrap();
        let cell = |r: u64, c: u64| (r * 7 + c) as f64 - 10.5;
        let mut expect = Triples::new();
        for bi in 0..3u64 {
            for bj in 0..3u64 {
                if (bi, bj) == (1, 1) {
                    continue;
                }
                let rows = 2.min(5 - bi * 2);
                let cols = 3.min(7 - bj * 3);
                let mut values = vec![];
                for r in 0..rows {
                    for c in 0..cols {
                        let (i, j) = (bi * 2 + r, bj * 3 + c);
                        values.push(cell(i, j));
                        expect.push((i, j, cell(i, j)));
                    }
                }
                w.write_chunk(&[bi, bj], &values).unwrap();
            }
        }
        w.commit().unwrap();
        expect.sort_by_key(|c| (c.0, c.1));
        let (cells, shape) = read(&path).unwrap();
        assert_eq!(shape, Some((5, 7)));
        assert_eq!(cells, expect);
        assert!(!path.join("c/1/1").exists());
        assert!(path.join("c/2/2").exists());
    }

    #[test]
    fn chunk_by_chunk_reading_gives_the_cells_of_band_reading() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.zarr");
        // 3-d, 5x4x7 in chunks of 2x3x3: chunks split every dimension.
        let mut w = ZarrCellWriter::create(&path, 3).unwrap();
        for x in 0..5u64 {
            for y in 0..4u64 {
                for z in 0..7u64 {
                    if (x + 2 * y + z) % 3 != 0 {
                        w.push(&[x, y, z], (x * 100 + y * 10 + z) as f64).unwrap();
                    }
                }
            }
        }
        assert_eq!(w.commit(|_| vec![2, 3, 3]).unwrap(), vec![5, 4, 7]);
        let read_with = |by_band: bool| {
            let mut r = ZarrReader::open(&path, &ReadOptions::default()).unwrap();
            if !by_band {
                r.by_band = false;
                r.count = r.grid.iter().product();
            }
            let ordered = r.row_ordered();
            let mut cells = vec![];
            let mut last_row = 0;
            let mut monotone = true;
            while let Some(batch) = r.next_cells().unwrap() {
                for n in 0..batch.len() {
                    monotone &= batch.rows[n] >= last_row;
                    last_row = batch.rows[n];
                    cells.push((batch.rows[n], batch.cols[n], batch.values[n]));
                }
            }
            cells.sort_by_key(|c| (c.0, c.1));
            (cells, ordered, monotone)
        };
        let (banded, ordered, monotone) = read_with(true);
        assert!(ordered && monotone);
        let (units, ordered, monotone) = read_with(false);
        assert!(!ordered && !monotone);
        assert_eq!(banded, units);
        assert_eq!(
            banded.len(),
            (0..140)
                .filter(|k| {
                    let (x, y, z) = (k / 28, k / 7 % 4, k % 7);
                    (x + 2 * y + z) % 3 != 0
                })
                .count()
        );
        // (4, 3, 6) is row 4 * 4 + 3 of the flattened array.
        assert!(banded.contains(&(19, 6, 436.0)));
        assert!(banded.contains(&(5, 2, 112.0)));
    }

    #[test]
    fn cell_writer_sums_duplicates_and_sizes_the_array() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.zarr");
        let mut w = ZarrCellWriter::create(&path, 3).unwrap();
        w.push(&[2, 0, 4], 1.5).unwrap();
        w.push(&[0, 1, 0], -0.0).unwrap();
        w.push(&[2, 0, 4], 0.25).unwrap();
        w.push(&[1, 2, 1], f64::NAN).unwrap();
        let dims = w.commit(|_| vec![2, 2, 2]).unwrap();
        assert_eq!(dims, vec![3, 3, 5]);
        let (cells, shape) = read(&path).unwrap();
        assert_eq!(shape, Some((9, 5)));
        // The -0.0 is a zero: not a cell.
        assert_eq!(cells.len(), 2);
        assert_eq!((cells[0].0, cells[0].1), (5, 1));
        assert!(cells[0].2.is_nan());
        assert_eq!(cells[1], (6, 4, 1.75));
        // The target exists now: refused, and nothing is left beside it.
        let err = ZarrCellWriter::create(&path, 3).unwrap_err().to_string();
        assert!(err.contains("already exists"), "{err}");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("t.zarr")]);
    }

    #[test]
    fn sorted_runs_merge_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("x.zarr");
        let mut a = vec![(3, 1, 1.0), (0, 5, 2.0), (3, 1, 4.0)];
        let mut b = vec![(3, 1, 8.0), (1, 0, 16.0)];
        let runs = vec![
            write_run(&target, &mut a).unwrap(),
            write_run(&target, &mut b).unwrap(),
        ];
        let mut last = vec![(3, 1, 32.0), (0, 0, 64.0)];
        last.sort_by_key(|&(b, o, _)| (b, o));
        let mut got = vec![];
        merge_runs(&runs, last, |c| {
            got.push(c);
            Ok(())
        })
        .unwrap();
        assert_eq!(
            got,
            vec![
                (0, 0, 64.0),
                (0, 5, 2.0),
                (1, 0, 16.0),
                (3, 1, 1.0),
                (3, 1, 4.0),
                (3, 1, 8.0),
                (3, 1, 32.0)
            ]
        );
    }

    #[test]
    fn bad_directories_are_errors_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.zarr");
        std::fs::create_dir(&path).unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(
            err.contains("g.zarr") && err.contains("no zarr.json"),
            "{err}"
        );
        std::fs::write(
            path.join("zarr.json"),
            r#"{"zarr_format": 3, "node_type": "group", "attributes": {}}"#,
        )
        .unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("describes a group"), "{err}");
        std::fs::write(path.join("zarr.json"), "{").unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("not valid JSON"), "{err}");
    }
}
