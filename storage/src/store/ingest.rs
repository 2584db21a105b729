//! Loading files into arrays and exporting arrays to files.
//!
//! Loading streams cells from a [`CellReader`] into blocks. Row-ordered files (dense
//! CSV, C-order `.npy`) finish each band of block rows as soon as the file moves past
//! it. Unordered files (triples, Matrix Market, Fortran-order `.npy`) are grouped in
//! memory up to a budget; past it, cells spill to temporary bucket files by block row
//! and each bucket is blockified in turn, so memory stays near one bucket.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use super::{Store, WriteMode, writer::ArrayWriter};
use crate::block::{CooBuilder, Duplicates};
use crate::error::{Result, StorageError};
use crate::io::{self, BlockBand, CellReader, Cells, CsvLayout, FileFormat, ReadOptions};
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
    /// Memory for grouping unordered cells before spilling to temporary files.
    pub memory_budget: usize,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            mode: WriteMode::Update,
            csv_layout: CsvLayout::Auto,
            csv_header: None,
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
        if !schema.is_matrix() {
            return Err(StorageError::InvalidArgument(format!(
                "array '{name}' is not a matrix; files load into 2-d arrays with one attribute"
            )));
        }
        let read_options = ReadOptions {
            target_shape: Some(schema.shape2()),
            csv_layout: options.csv_layout,
            csv_header: options.csv_header,
        };
        let mut reader = io::open_reader(path, format, &read_options)?;
        let mut writer = self.writer(name, options.mode)?;
        let mut loader = Blockifier {
            schema: &schema,
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

    /// Writes a version of a matrix (the current one if `None`) to `path`.
    pub fn export(
        &self,
        name: &str,
        version: Option<u64>,
        path: &Path,
        format: FileFormat,
    ) -> Result<()> {
        let snap = self.snapshot(name, version)?;
        let schema = snap.info().schema.clone();
        if !schema.is_matrix() {
            return Err(StorageError::InvalidArgument(format!(
                "array '{name}' is not a matrix; only 2-d arrays with one attribute can be exported"
            )));
        }
        let (ri, ci) = (&schema.dimensions()[0], &schema.dimensions()[1]);
        let nnz = snap.nnz();
        let block_rows = ri.block_count();
        let mut bands = (0..block_rows).map(|bi| -> Result<BlockBand> {
            let blocks = snap
                .read_where(|k| k.0[0] == bi as i64)?
                .into_iter()
                .filter_map(|(k, mut b)| {
                    (!b.is_empty()).then(|| (k.0[1] as u64 * ci.block_len, b.swap_remove(0)))
                })
                .collect();
            Ok(BlockBand {
                row0: bi * ri.block_len,
                rows: ri.block_extent(bi) as usize,
                blocks,
            })
        });
        io::write_file(path, format, schema.shape2(), nnz, &mut bands)
    }
}

struct Blockifier<'a> {
    schema: &'a ArraySchema,
    writer: &'a mut ArrayWriter,
    merge: bool,
    blocks: u64,
}

/// Cells grouped by block, each block's in the builder that will make it.
type Pending = BTreeMap<BlockKey, CooBuilder>;

impl Blockifier<'_> {
    fn block_lens(&self) -> (u64, u64) {
        let d = self.schema.dimensions();
        (d[0].block_len, d[1].block_len)
    }

    /// Adds the matrix cell `(r, c)` to its block's cells; duplicates within one file
    /// are summed (Matrix Market and SciPy's convention).
    fn add(&self, pending: &mut Pending, r: u64, c: u64, v: f64) -> Result<()> {
        let (br, bc) = self.block_lens();
        let key = BlockKey::matrix((r / br) as i64, (c / bc) as i64);
        let cells = match pending.entry(key) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                let (rows, cols) = self.schema.block_shape(e.key());
                e.insert(CooBuilder::new(rows, cols, Duplicates::Sum))
            }
        };
        cells.push((r % br) as usize, (c % bc) as usize, v)
    }

    fn load_ordered(&mut self, reader: &mut dyn CellReader) -> Result<u64> {
        let (br, _) = self.block_lens();
        let mut band: Option<u64> = None;
        let mut pending = Pending::new();
        let mut count = 0u64;
        while let Some(cells) = reader.next_cells()? {
            count += cells.len() as u64;
            for n in 0..cells.len() {
                let bi = cells.rows[n] / br;
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
                let block_rows = self.schema.dimensions()[0].block_count();
                let mut s = Spill::new(block_rows, self.block_lens().0)?;
                s.write_held(&held, self.block_lens())?;
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
    rows_per_bucket: u64,
}

impl Spill {
    fn new(block_rows: u64, block_len: u64) -> Result<Self> {
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!("tessera-load-{}-{nonce}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| StorageError::io(dir.display(), e))?;
        let buckets = block_rows.clamp(1, SPILL_BUCKETS);
        let mut files = Vec::new();
        for n in 0..buckets {
            let p = dir.join(format!("bucket-{n}"));
            let f = File::create(&p).map_err(|e| StorageError::io(p.display(), e))?;
            files.push((p, BufWriter::with_capacity(256 << 10, f)));
        }
        Ok(Spill {
            dir,
            files,
            rows_per_bucket: block_rows.div_ceil(buckets) * block_len,
        })
    }

    fn put(&mut self, r: u64, c: u64, v: f64) -> Result<()> {
        let n = ((r / self.rows_per_bucket) as usize).min(self.files.len() - 1);
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

    fn write_held(&mut self, held: &Pending, (br, bc): (u64, u64)) -> Result<()> {
        for (key, cells) in held {
            let (r0, c0) = (key.0[0] as u64 * br, key.0[1] as u64 * bc);
            for (r, c, v) in cells.cells() {
                self.put(r0 + r as u64, c0 + c as u64, v)?;
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
