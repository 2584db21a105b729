//! Shared by the writers: the temporary file that is renamed into place only when it is
//! complete, and the checks and row views over the [`BlockBand`]s being exported.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::BlockBand;
use crate::block::{Block, is_stored};
use crate::error::{Result, StorageError};

/// Write buffer of output files.
const WRITE_BUFFER: usize = 1 << 20;

/// Numbers the temporary files and directories of this process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A file created beside its target under a hidden temporary name. [`AtomicFile::commit`]
/// fsyncs it and renames it over the target; dropping it uncommitted removes it, so an
/// export that fails at any point leaves the target as it was.
#[derive(Debug)]
pub(super) struct AtomicFile {
    target: PathBuf,
    // Before `temp`: fields drop in order, so the file is closed before it is removed.
    out: BufWriter<File>,
    temp: TempPath,
}

impl AtomicFile {
    /// Creates the temporary file for `target`.
    pub(super) fn create(target: &Path) -> Result<Self> {
        let (temp, file) = TempPath::create_beside(target, "part")?;
        Ok(Self {
            target: target.to_path_buf(),
            out: BufWriter::with_capacity(WRITE_BUFFER, file),
            temp,
        })
    }

    /// The path this file will replace.
    pub(super) fn target(&self) -> &Path {
        &self.target
    }

    /// Appends `bytes`.
    pub(super) fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        self.out
            .write_all(bytes)
            .map_err(|e| StorageError::io(self.temp.path.display(), e))
    }

    /// Flushes, fsyncs and renames the file over the target, then fsyncs the directory so
    /// the rename itself survives a crash.
    pub(super) fn commit(self) -> Result<()> {
        let Self {
            target,
            mut temp,
            out,
        } = self;
        let io_err = |e| StorageError::io(temp.path.display(), e);
        let file = out.into_inner().map_err(|e| io_err(e.into_error()))?;
        file.sync_all().map_err(io_err)?;
        drop(file);
        std::fs::rename(&temp.path, &target).map_err(|e| StorageError::io(target.display(), e))?;
        temp.armed = false;
        sync_dir(parent_dir(&target))
    }
}

/// A temporary file's path, removed when dropped unless disarmed.
#[derive(Debug)]
pub(super) struct TempPath {
    path: PathBuf,
    armed: bool,
}

impl TempPath {
    /// Creates a new, empty file `.<target name>.<pid>.<n>.<tag>` in the target's
    /// directory (the same file system, so a rename is atomic).
    pub(super) fn create_beside(target: &Path, tag: &str) -> Result<(Self, File)> {
        let name = target.file_name().ok_or_else(|| {
            StorageError::InvalidArgument(format!("{} does not name a file", target.display()))
        })?;
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let temp_name = format!(
            ".{}.{}.{n}.{tag}",
            name.to_string_lossy(),
            std::process::id()
        );
        let path = parent_dir(target).join(temp_name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| StorageError::io(path.display(), e))?;
        Ok((Self { path, armed: true }, file))
    }

    /// The temporary file's path.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Renames the (already fsynced and closed) file over `target` and fsyncs the
    /// directory, so the rename itself survives a crash.
    pub(super) fn persist(mut self, target: &Path) -> Result<()> {
        std::fs::rename(&self.path, target).map_err(|e| StorageError::io(target.display(), e))?;
        self.armed = false;
        sync_dir(parent_dir(target))
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if self.armed {
            // Best effort: the error that got us here is the one worth reporting.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A directory created beside its target under a hidden temporary name, for formats
/// that are directories (Zarr). [`TempDir::persist`] fsyncs what it holds and renames it
/// to the target; dropping it unpersisted removes it and everything in it.
#[derive(Debug)]
pub(super) struct TempDir {
    path: PathBuf,
    armed: bool,
}

impl TempDir {
    /// Creates `.<target name>.<pid>.<n>.<tag>` beside `target`. A target that already
    /// exists is refused: a directory cannot be swapped for another in one rename.
    pub(super) fn create_beside(target: &Path, tag: &str) -> Result<Self> {
        refuse_existing(target)?;
        let name = target.file_name().ok_or_else(|| {
            StorageError::InvalidArgument(format!("{} does not name a file", target.display()))
        })?;
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let temp_name = format!(
            ".{}.{}.{n}.{tag}",
            name.to_string_lossy(),
            std::process::id()
        );
        let path = parent_dir(target).join(temp_name);
        std::fs::create_dir(&path).map_err(|e| StorageError::io(path.display(), e))?;
        Ok(Self { path, armed: true })
    }

    /// The temporary directory's path.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Fsyncs every file and directory inside, renames the directory to `target` (which
    /// must still not exist) and fsyncs the parent, so the rename survives a crash.
    pub(super) fn persist(mut self, target: &Path) -> Result<()> {
        sync_tree(&self.path)?;
        refuse_existing(target)?;
        std::fs::rename(&self.path, target).map_err(|e| StorageError::io(target.display(), e))?;
        self.armed = false;
        sync_dir(parent_dir(target))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.armed {
            // Best effort: the error that got us here is the one worth reporting.
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Fails when `target` exists (a file, a directory or a dangling link).
pub(super) fn refuse_existing(target: &Path) -> Result<()> {
    if target.symlink_metadata().is_ok() {
        return Err(StorageError::InvalidArgument(format!(
            "{} already exists; a Zarr array is a directory, which is not replaced in \
             place: remove it or choose another name",
            target.display()
        )));
    }
    Ok(())
}

/// Fsyncs every regular file under `dir`, then each directory, deepest first.
fn sync_tree(dir: &Path) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| StorageError::io(dir.display(), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StorageError::io(dir.display(), e))?;
        let path = entry.path();
        let kind = entry
            .file_type()
            .map_err(|e| StorageError::io(path.display(), e))?;
        if kind.is_dir() {
            sync_tree(&path)?;
        } else if kind.is_file() {
            File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(|e| StorageError::io(path.display(), e))?;
        }
    }
    sync_dir(dir)
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::io(dir.display(), e))
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> Result<()> {
    // Directories cannot be opened for fsync here; the rename is still atomic.
    Ok(())
}

/// Checks that bands arrive in row order, cover exactly the matrix, and hold blocks that
/// fit it; a violation is a bug in the caller, so it is an internal error.
#[derive(Debug)]
pub(super) struct BandCheck {
    shape: (u64, u64),
    next_row: u64,
}

impl BandCheck {
    /// Expects bands covering a `shape` matrix.
    pub(super) fn new(shape: (u64, u64)) -> Self {
        Self { shape, next_row: 0 }
    }

    /// Checks the next band.
    pub(super) fn check(&mut self, band: &BlockBand) -> Result<()> {
        let bug = |msg: String| Err(StorageError::Internal(format!("export: {msg}")));
        if band.row0 != self.next_row {
            return bug(format!(
                "band starts at row {}, expected row {}",
                band.row0, self.next_row
            ));
        }
        let end = band.row0 + band.rows as u64;
        if end > self.shape.0 {
            return bug(format!(
                "band rows {}..{end} exceed {} rows",
                band.row0, self.shape.0
            ));
        }
        let mut next_col = 0u64;
        for (col0, block) in &band.blocks {
            let (r, c) = block.shape();
            if r != band.rows || *col0 < next_col || col0 + c as u64 > self.shape.1 {
                return bug(format!(
                    "block {r}x{c} at column {col0} does not fit a band of {} rows at row {} \
                     of a {}x{} matrix after column {next_col}",
                    band.rows, band.row0, self.shape.0, self.shape.1
                ));
            }
            next_col = col0 + c as u64;
        }
        self.next_row = end;
        Ok(())
    }

    /// Checks that the bands seen covered every row.
    pub(super) fn finish(&self) -> Result<()> {
        if self.next_row != self.shape.0 {
            return Err(StorageError::Internal(format!(
                "export: bands ended at row {} of {}",
                self.next_row, self.shape.0
            )));
        }
        Ok(())
    }
}

/// Writes row `r` of a band into `row` (the matrix width), zeros where no block is.
pub(super) fn dense_row(band: &BlockBand, r: usize, row: &mut [f64]) {
    row.fill(0.0);
    for (col0, block) in &band.blocks {
        let col0 = *col0 as usize;
        match block {
            Block::Dense(d) => row[col0..col0 + d.cols()].copy_from_slice(d.row(r)),
            Block::Sparse(s) => {
                let (cols, vals) = s.row(r);
                for (&c, &v) in cols.iter().zip(vals) {
                    row[col0 + c] = v;
                }
            }
        }
    }
}

/// Calls `f(col, value)` for each non-zero of row `r` of a band, in column order.
pub(super) fn for_each_nonzero_in_row(band: &BlockBand, r: usize, mut f: impl FnMut(u64, f64)) {
    for (col0, block) in &band.blocks {
        block.for_each_nonzero_in_row(r, |c, v| f(col0 + c as u64, v));
    }
}

/// Number of non-zeros in `values` (NaN counts, as it does in a block's `nnz`).
pub(super) fn count_nonzero(values: &[f64]) -> u64 {
    values.iter().filter(|v| is_stored(**v)).count() as u64
}

/// A matrix dimension as `usize`, for row buffers.
pub(super) fn to_usize(n: u64) -> Result<usize> {
    usize::try_from(n)
        .map_err(|_| StorageError::InvalidArgument(format!("dimension {n} is too large here")))
}

/// Fails unless the writer wrote as many non-zeros as the caller declared.
pub(super) fn check_nnz(declared: u64, written: u64) -> Result<()> {
    if declared != written {
        return Err(StorageError::Internal(format!(
            "export: declared {declared} non-zeros but the blocks hold {written}"
        )));
    }
    Ok(())
}

/// Cells that arrive in any order, recorded in a scratch file beside a target as they
/// come (each as its coordinates and value, little endian), with the array's shape so
/// far: what [`NpyCellWriter`](super::NpyCellWriter) and the Zarr cell writer read back
/// when they commit.
#[derive(Debug)]
pub(super) struct ScratchCells {
    pub(super) scratch: TempPath,
    pub(super) out: BufWriter<File>,
    /// One past the largest coordinate seen, per dimension.
    pub(super) dims: Vec<u64>,
    pub(super) cells: u64,
}

impl ScratchCells {
    /// No cells yet, of `ndim` coordinates each, in a scratch file beside `target`.
    pub(super) fn create_beside(target: &Path, ndim: usize) -> Result<Self> {
        let (scratch, file) = TempPath::create_beside(target, "cells")?;
        Ok(Self {
            scratch,
            out: BufWriter::with_capacity(1 << 20, file),
            dims: vec![0; ndim],
            cells: 0,
        })
    }

    /// Records the cell at `index` (one coordinate per dimension).
    pub(super) fn push(&mut self, index: &[u64], value: f64) -> Result<()> {
        if index.len() != self.dims.len() {
            return Err(StorageError::Internal(format!(
                "a cell of {} coordinates in a {}-d array",
                index.len(),
                self.dims.len()
            )));
        }
        let mut record = Vec::with_capacity(8 * (index.len() + 1));
        for (d, &x) in self.dims.iter_mut().zip(index) {
            *d = (*d).max(x.saturating_add(1));
            record.extend_from_slice(&x.to_le_bytes());
        }
        record.extend_from_slice(&value.to_le_bytes());
        self.out
            .write_all(&record)
            .map_err(|e| StorageError::io(self.scratch.path().display(), e))?;
        self.cells += 1;
        Ok(())
    }
}
