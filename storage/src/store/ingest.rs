//! Loading files into arrays and exporting arrays to files.
//!
//! Loading streams cells from a [`CellReader`] into blocks. Readers give an n-d array's
//! cells as rows and columns (its leading dimensions flattened in C order into rows, the
//! last one as columns); [`CellGrid`] maps them to blocks and back. A band is the blocks
//! of one block index along the first dimension (a block row of a matrix). Row-ordered
//! files (dense CSV, C-order `.npy`) finish each band as soon as the file moves past
//! it. Unordered files (triples, Matrix Market, Fortran-order `.npy`) are grouped in
//! memory up to a budget; past it, cells spill to temporary bucket files by block row
//! and each bucket is blockified in turn, so memory stays near one bucket.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use super::{Store, WriteMode, writer::ArrayWriter};
use crate::block::Block;
use crate::block::{CooBuilder, Duplicates};
use crate::error::{Result, StorageError};
use crate::io::{
    self, BlockBand, CellReader, Cells, CsvLayout, FileFormat, NpzMember, ReadOptions,
};
use crate::schema::{ArraySchema, BlockKey};

/// Options for [`Store::load`].
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Replace the array's contents, or update it cell by cell (the default: cells in
    /// the file overwrite cells already stored; other cells stay).
    pub mode: WriteMode,
    /// CSV layout.
    pub csv_layout: CsvLayout,
    /// Whether a CSV file has a header (`None`: detect).
    pub csv_header: Option<bool>,
    /// Which array of a `.npz` archive to load.
    pub npz_member: NpzMember,
    /// Memory for grouping unordered cells before spilling to temporary files.
    pub memory_budget: usize,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            mode: WriteMode::Update,
            csv_layout: CsvLayout::Auto,
            csv_header: None,
            npz_member: NpzMember::Only,
            memory_budget: 512 << 20,
        }
    }
}

/// What a load did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadSummary {
    /// The version the load committed.
    pub version: u64,
    /// Cells read from the file.
    pub cells: u64,
    /// Blocks written.
    pub blocks: u64,
}

/// Bytes per cell while grouping: row and column within the block, and the value.
const CELL_BYTES: usize = CooBuilder::CELL_BYTES;

/// Number of spill buckets (each holds a contiguous range of block rows).
const SPILL_BUCKETS: u64 = 64;

impl Store {
    /// Loads a file into an existing matrix and commits a new version. On any error
    /// (a bad line, a cell outside the matrix) nothing is committed and the files
    /// written so far are removed.
    pub fn load(
        &self,
        name: &str,
        path: &Path,
        format: FileFormat,
        options: &LoadOptions,
    ) -> Result<LoadSummary> {
        let info = self.array(name)?;
        let schema = info.schema.clone();
        let nd_format = matches!(format, FileFormat::Npy | FileFormat::Npz | FileFormat::Zarr);
        if schema.attributes().len() != 1 || (!nd_format && !schema.is_matrix()) {
            return Err(StorageError::InvalidArgument(format!(
                "array '{name}' is not a matrix; files load into arrays with one attribute, \
                 and CSV and Matrix Market files into 2-d ones"
            )));
        }
        let read_options = ReadOptions {
            target_shape: Some(schema.shape2()),
            target_dims: Some(schema.dimensions().iter().map(|d| d.len()).collect()),
            csv_layout: options.csv_layout,
            csv_header: options.csv_header,
            npz_member: options.npz_member.clone(),
        };
        let mut reader = io::open_reader(path, format, &read_options)?;
        let mut writer = self.writer(name, options.mode)?;
        let mut loader = Blockifier {
            schema: &schema,
            grid: CellGrid::new(&schema),
            writer: &mut writer,
            merge: options.mode == WriteMode::Update,
            blocks: 0,
        };
        let cells = if reader.row_ordered() {
            loader.load_ordered(reader.as_mut())?
        } else {
            loader.load_unordered(reader.as_mut(), options.memory_budget)?
        };
        let blocks = loader.blocks;
        let version = writer.commit()?;
        Ok(LoadSummary {
            version,
            cells,
            blocks,
        })
    }

    /// Writes a version of an array (the current one if `None`) to `path`. Arrays with
    /// one attribute: matrices in every format, other ranks to `.npy` and Zarr with their
    /// shape.
    ///
    /// A Zarr array is chunked like the array's blocks (each block length cut to the
    /// dimension's length), so each stored block is one chunk, written as it is read
    /// and one band of blocks at a time in memory; blocks without a non-zero are not
    /// written.
    pub fn export(
        &self,
        name: &str,
        version: Option<u64>,
        path: &Path,
        format: FileFormat,
    ) -> Result<()> {
        let snap = self.snapshot(name, version)?;
        let schema = snap.info().schema.clone();
        let nd_format = matches!(format, FileFormat::Npy | FileFormat::Zarr);
        if schema.attributes().len() != 1 || (!nd_format && !schema.is_matrix()) {
            return Err(StorageError::InvalidArgument(format!(
                "array '{name}' is not a matrix; arrays with one attribute can be exported, \
                 and only 2-d ones to CSV and Matrix Market files"
            )));
        }
        let grid = CellGrid::new(&schema);
        let dims: Vec<u64> = schema.dimensions().iter().map(|d| d.len()).collect();
        let nnz = snap.nnz();
        let first = &schema.dimensions()[0];
        if format == FileFormat::Zarr {
            let chunk: Vec<u64> = schema
                .dimensions()
                .iter()
                .map(|d| d.block_len.min(d.len()))
                .collect();
            let mut out = io::ZarrWriter::create(path, &dims, &chunk)?;
            for b0 in 0..first.block_count() {
                for (key, mut attributes) in snap.read_where(|k| k.0[0] == b0 as i64)? {
                    if attributes.is_empty() {
                        continue;
                    }
                    let block = attributes.swap_remove(0);
                    if block.nnz() == 0 {
                        continue;
                    }
                    let cols = block.shape().1;
                    let mut values = vec![0.0; block.shape().0 * cols];
                    block.for_each_nonzero(|r, c, v| values[r * cols + c] = v);
                    let indices: Vec<u64> = key.0.iter().map(|&k| k.max(0) as u64).collect();
                    out.write_chunk(&indices, &values)?;
                }
            }
            return out.commit();
        }
        let mut bands = (0..first.block_count()).map(|b0| -> Result<BlockBand> {
            let blocks = snap.read_where(|k| k.0[0] == b0 as i64)?;
            grid.band(b0, blocks)
        });
        io::write_array_file(path, format, &dims, nnz, &mut bands)
    }
}

/// Maps an n-d array's cells, as flattened `(row, col)` (see the module docs), to its
/// blocks and back. Within a block, the leading dimensions are flattened in C order over
/// the block's extents ([`ArraySchema::block_shape`]).
#[derive(Debug, Clone)]
struct CellGrid {
    /// `(length, block length)` of each leading dimension (all but the last; the only
    /// one of a 1-d array).
    lead: Vec<(u64, u64)>,
    /// `(length, block length)` of the last dimension; `None` for a 1-d array, whose
    /// cells are one column.
    last: Option<(u64, u64)>,
    /// Rows per coordinate of the first dimension: the product of the other leading
    /// lengths.
    inner: u64,
}

impl CellGrid {
    fn new(schema: &ArraySchema) -> Self {
        let dims: Vec<(u64, u64)> = schema
            .dimensions()
            .iter()
            .map(|d| (d.len(), d.block_len))
            .collect();
        let (lead, last) = match dims.split_last() {
            Some((last, lead)) if !lead.is_empty() => (lead.to_vec(), Some(*last)),
            _ => (dims, None),
        };
        let inner = lead
            .iter()
            .skip(1)
            .fold(1u64, |a, &(len, _)| a.saturating_mul(len));
        Self { lead, last, inner }
    }

    /// Block index along the first dimension of flattened row `r`.
    fn band_of(&self, r: u64) -> u64 {
        let block = self.lead.first().map_or(1, |d| d.1);
        (r / self.inner.max(1)) / block
    }

    /// The block holding flattened cell `(r, c)` and the cell's place in it.
    fn locate(&self, r: u64, c: u64) -> (BlockKey, u64, u64) {
        let mut key = vec![0i64; self.lead.len() + usize::from(self.last.is_some())];
        // Split r into leading coordinates, last leading dimension first.
        let mut rest = r;
        let mut offsets = vec![0u64; self.lead.len()];
        for (n, &(len, block)) in self.lead.iter().enumerate().rev() {
            let x = if n == 0 { rest } else { rest % len };
            rest = if n == 0 { 0 } else { rest / len };
            key[n] = (x / block) as i64;
            offsets[n] = x % block;
        }
        // The row within the block: offsets in C order over the block's extents.
        let mut row = 0u64;
        for (n, &(len, block)) in self.lead.iter().enumerate() {
            let extent = block.min(len.saturating_sub(key[n] as u64 * block));
            row = row * extent + offsets[n];
        }
        let col = match self.last {
            Some((_, block)) => {
                key[self.lead.len()] = (c / block) as i64;
                c % block
            }
            None => c,
        };
        (BlockKey(key), row, col)
    }

    /// The flattened `(row, col)` of cell `(br, bc)` of block `key`.
    fn position(&self, key: &BlockKey, br: u64, bc: u64) -> (u64, u64) {
        let mut coords = vec![0u64; self.lead.len()];
        let mut rest = br;
        for (n, &(len, block)) in self.lead.iter().enumerate().rev() {
            let b = key.0[n].max(0) as u64;
            let extent = block.min(len.saturating_sub(b * block)).max(1);
            coords[n] = b * block + rest % extent;
            rest /= extent;
        }
        let row = coords
            .iter()
            .zip(&self.lead)
            .fold(0u64, |row, (&x, &(len, _))| row * len + x);
        let col = match self.last {
            Some((_, block)) => key.0[self.lead.len()].max(0) as u64 * block + bc,
            None => bc,
        };
        (row, col)
    }

    /// The export band of block index `b0` along the first dimension: its blocks
    /// re-tiled into flattened rows, one tile per block of the last dimension.
    fn band(&self, b0: u64, blocks: Vec<(BlockKey, Vec<Block>)>) -> Result<BlockBand> {
        let (len0, block0) = self.lead.first().copied().unwrap_or((0, 1));
        let first_row = b0 * block0 * self.inner;
        let rows = block0.min(len0.saturating_sub(b0 * block0)) * self.inner;
        let rows_usize = usize::try_from(rows)
            .map_err(|_| StorageError::InvalidArgument(format!("{rows} rows are too many")))?;
        if self.lead.len() <= 1 {
            // A matrix or a 1-d array: its blocks already are the band's tiles.
            let col_block = self.last.map_or(1, |d| d.1);
            let tiles = blocks
                .into_iter()
                .filter_map(|(k, mut b)| {
                    let col0 = k.0.get(1).map_or(0, |&bj| bj as u64 * col_block);
                    (!b.is_empty()).then(|| (col0, b.swap_remove(0)))
                })
                .collect();
            return Ok(BlockBand {
                row0: first_row,
                rows: rows_usize,
                blocks: tiles,
            });
        }
        let (cols, col_block) = self.last.unwrap_or((1, 1));
        let mut tiles: BTreeMap<u64, CooBuilder> = BTreeMap::new();
        for (key, mut attributes) in blocks {
            if attributes.is_empty() {
                continue;
            }
            let block = attributes.swap_remove(0);
            let bj = key.0[self.lead.len()].max(0) as u64;
            let col0 = bj * col_block;
            let width = col_block.min(cols.saturating_sub(col0)) as usize;
            let tile = tiles
                .entry(col0)
                .or_insert_with(|| CooBuilder::new(rows_usize, width, Duplicates::Sum));
            let mut failed = None;
            block.for_each_nonzero(|br, bc, v| {
                let (r, _) = self.position(&key, br as u64, 0);
                if failed.is_none()
                    && let Err(e) = tile.push((r - first_row) as usize, bc, v)
                {
                    failed = Some(e);
                }
            });
            if let Some(e) = failed {
                return Err(e);
            }
        }
        Ok(BlockBand {
            row0: first_row,
            rows: rows_usize,
            blocks: tiles.into_iter().map(|(c, t)| (c, t.build())).collect(),
        })
    }
}

struct Blockifier<'a> {
    schema: &'a ArraySchema,
    grid: CellGrid,
    writer: &'a mut ArrayWriter,
    merge: bool,
    blocks: u64,
}

/// Cells grouped by block, each block's in the builder that will make it.
type Pending = BTreeMap<BlockKey, CooBuilder>;

impl Blockifier<'_> {
    /// Adds the flattened cell `(r, c)` to its block's cells; duplicates within one file
    /// are summed (Matrix Market and SciPy's convention).
    fn add(&self, pending: &mut Pending, r: u64, c: u64, v: f64) -> Result<()> {
        let (key, br, bc) = self.grid.locate(r, c);
        let cells = match pending.entry(key) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                let (rows, cols) = self.schema.block_shape(e.key());
                e.insert(CooBuilder::new(rows, cols, Duplicates::Sum))
            }
        };
        cells.push(br as usize, bc as usize, v)
    }

    fn load_ordered(&mut self, reader: &mut dyn CellReader) -> Result<u64> {
        let mut band: Option<u64> = None;
        let mut pending = Pending::new();
        let mut count = 0u64;
        while let Some(cells) = reader.next_cells()? {
            count += cells.len() as u64;
            for n in 0..cells.len() {
                let bi = self.grid.band_of(cells.rows[n]);
                if band != Some(bi) {
                    if band.is_some_and(|b| bi < b) {
                        return Err(StorageError::Internal(
                            "a row-ordered reader went back a row".into(),
                        ));
                    }
                    self.flush(std::mem::take(&mut pending))?;
                    band = Some(bi);
                }
                self.add(&mut pending, cells.rows[n], cells.cols[n], cells.values[n])?;
            }
        }
        self.flush(pending)?;
        Ok(count)
    }

    fn load_unordered(&mut self, reader: &mut dyn CellReader, budget: usize) -> Result<u64> {
        let max_cells = (budget / CELL_BYTES).max(1);
        let mut held = Pending::new();
        let mut held_cells = 0usize;
        let mut count = 0u64;
        let mut spill: Option<Spill> = None;
        while let Some(cells) = reader.next_cells()? {
            count += cells.len() as u64;
            if let Some(s) = spill.as_mut() {
                s.write(&cells)?;
                continue;
            }
            for n in 0..cells.len() {
                self.add(&mut held, cells.rows[n], cells.cols[n], cells.values[n])?;
            }
            held_cells += cells.len();
            if held_cells > max_cells {
                let bands = self.schema.dimensions()[0].block_count();
                let mut s = Spill::new(bands, self.grid.clone())?;
                s.write_held(&held)?;
                held.clear();
                spill = Some(s);
            }
        }
        match spill {
            None => self.flush(held)?,
            Some(s) => {
                for bucket in s.finish()? {
                    let mut group = Pending::new();
                    read_bucket(&bucket, |r, c, v| self.add(&mut group, r, c, v))?;
                    self.flush(group)?;
                    let _ = std::fs::remove_file(&bucket);
                }
            }
        }
        Ok(count)
    }

    /// Turns each block's cells into a block (written over the stored block in update
    /// mode: cells in the file overwrite stored cells, other stored cells stay) and puts
    /// it.
    fn flush(&mut self, pending: Pending) -> Result<()> {
        for (key, cells) in pending {
            let old = if self.merge {
                self.writer.base().read_block(&key)?
            } else {
                None
            };
            let block = match old {
                Some(old) => cells.build_over(&old)?,
                None => cells.build(),
            };
            self.writer.put_block(key, block)?;
            self.blocks += 1;
        }
        Ok(())
    }
}

/// Temporary bucket files of `(row, col, value)` cells, one per range of block rows.
struct Spill {
    dir: PathBuf,
    files: Vec<(PathBuf, BufWriter<File>)>,
    grid: CellGrid,
    bands_per_bucket: u64,
}

impl Spill {
    fn new(bands: u64, grid: CellGrid) -> Result<Self> {
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!("tessera-load-{}-{nonce}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| StorageError::io(dir.display(), e))?;
        let buckets = bands.clamp(1, SPILL_BUCKETS);
        let mut files = Vec::new();
        for n in 0..buckets {
            let p = dir.join(format!("bucket-{n}"));
            let f = File::create(&p).map_err(|e| StorageError::io(p.display(), e))?;
            files.push((p, BufWriter::with_capacity(256 << 10, f)));
        }
        Ok(Spill {
            dir,
            files,
            grid,
            bands_per_bucket: bands.div_ceil(buckets).max(1),
        })
    }

    fn put(&mut self, r: u64, c: u64, v: f64) -> Result<()> {
        let n = ((self.grid.band_of(r) / self.bands_per_bucket) as usize).min(self.files.len() - 1);
        let (p, f) = &mut self.files[n];
        let mut rec = [0u8; 24];
        rec[..8].copy_from_slice(&r.to_le_bytes());
        rec[8..16].copy_from_slice(&c.to_le_bytes());
        rec[16..].copy_from_slice(&v.to_le_bytes());
        f.write_all(&rec)
            .map_err(|e| StorageError::io(p.display(), e))
    }

    fn write(&mut self, cells: &Cells) -> Result<()> {
        for n in 0..cells.len() {
            self.put(cells.rows[n], cells.cols[n], cells.values[n])?;
        }
        Ok(())
    }

    fn write_held(&mut self, held: &Pending) -> Result<()> {
        for (key, cells) in held {
            for (br, bc, v) in cells.cells() {
                let (r, c) = self.grid.position(key, br as u64, bc as u64);
                self.put(r, c, v)?;
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Vec<PathBuf>> {
        let mut paths = Vec::new();
        for (p, mut f) in std::mem::take(&mut self.files) {
            f.flush().map_err(|e| StorageError::io(p.display(), e))?;
            paths.push(p);
        }
        // Keep the directory until the buckets are read; `Drop` removes it.
        std::mem::forget(std::mem::replace(&mut self.dir, PathBuf::new()));
        Ok(paths)
    }
}

impl Drop for Spill {
    fn drop(&mut self) {
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn read_bucket(path: &Path, mut f: impl FnMut(u64, u64, f64) -> Result<()>) -> Result<()> {
    let file = File::open(path).map_err(|e| StorageError::io(path.display(), e))?;
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut rec = [0u8; 24];
    loop {
        match r.read_exact(&mut rec) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(StorageError::io(path.display(), e)),
        }
        let word = |n: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&rec[n * 8..n * 8 + 8]);
            b
        };
        f(
            u64::from_le_bytes(word(0)),
            u64::from_le_bytes(word(1)),
            f64::from_le_bytes(word(2)),
        )?;
    }
    if let Some(dir) = path.parent() {
        // The last bucket read removes the directory.
        let _ = std::fs::remove_dir(dir);
    }
    Ok(())
}
