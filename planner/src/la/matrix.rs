//! A matrix being computed: blocks spread over partitions, with the rule that placed
//! them, so operators can tell when data is already where a strategy needs it.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, Float64Array, Int64Array, RecordBatch};
use datafusion::common::{Result, exec_err};
use datafusion::execution::memory_pool::MemoryReservation;
use tessera_storage::{
    Block, CooBuilder, CsrBlock, DenseBlock, Duplicates, MAX_BLOCK_CELLS, datafusion_hash,
};

use crate::error::{ErrorKind, tessera_error};

/// One block: block row, block column, contents.
pub type Tile = (u64, u64, Arc<Block>);

/// Takes an operator's output blocks as they are finished, while the others are still
/// being computed, so that `CREATE MATRIX ... AS` stores the first blocks of a product
/// while the kernels work on the last ones.
///
/// The operator calls [`TileSink::open`] once with the result's geometry; if the sink
/// accepts, every output block is passed to [`TileSink::put`] (from kernel threads, in
/// any order) before the operator returns. Operators that only know their blocks at the
/// end never open the sink, and their caller handles the returned matrix as usual.
pub trait TileSink: Send + Sync {
    /// The result will be `shape`, cut into blocks of `block`. Returns whether this sink
    /// takes its blocks as they finish.
    fn open(&self, shape: (u64, u64), block: (u64, u64)) -> Result<bool>;

    /// One finished output block. An error stops the computation.
    fn put(&self, tile: &Tile) -> Result<()>;
}

/// How the block rows (or columns) of a matrix map to partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFn {
    /// `hash(b) mod n`, DataFusion's repartition hash.
    Hash,
    /// Contiguous ranges of `blocks` block rows: `b * n / blocks` (stored `RowBlock`).
    Range {
        /// Block rows (or columns) of the matrix.
        blocks: u64,
    },
}

impl KeyFn {
    fn part(self, b: u64, n: usize) -> usize {
        match self {
            KeyFn::Hash => (datafusion_hash(&[b as i64]) % n as u64) as usize,
            KeyFn::Range { blocks } => {
                let blocks = blocks.max(1);
                (b.min(blocks - 1) * n as u64 / blocks) as usize
            }
        }
    }
}

/// Where a matrix's blocks live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// All in partition 0.
    Single,
    /// `hash(bi, bj) mod n` (the stored default).
    Hash2,
    /// By block row only: every block of a block row is in one partition.
    Rows(KeyFn),
    /// By block column only.
    Cols(KeyFn),
    /// Some other placement (not usable for co-partitioned strategies).
    Other,
}

impl Layout {
    /// The partition of block `(bi, bj)` among `n`.
    pub fn part_of(self, bi: u64, bj: u64, n: usize) -> usize {
        let n = n.max(1);
        match self {
            Layout::Single => 0,
            Layout::Hash2 | Layout::Other => {
                (datafusion_hash(&[bi as i64, bj as i64]) % n as u64) as usize
            }
            Layout::Rows(f) => f.part(bi, n),
            Layout::Cols(f) => f.part(bj, n),
        }
    }

    /// The layout of the transpose (blocks stay where they are; keys swap).
    pub fn transposed(self) -> Layout {
        match self {
            Layout::Rows(f) => Layout::Cols(f),
            Layout::Cols(f) => Layout::Rows(f),
            Layout::Hash2 => Layout::Other,
            l => l,
        }
    }

    /// Short description for plans.
    pub fn describe(self, n: usize) -> String {
        match self {
            Layout::Single => "single".into(),
            Layout::Hash2 => format!("hash(bi, bj) x{n}"),
            Layout::Rows(KeyFn::Hash) => format!("hash(bi) x{n}"),
            Layout::Rows(KeyFn::Range { .. }) => format!("block-row ranges x{n}"),
            Layout::Cols(KeyFn::Hash) => format!("hash(bj) x{n}"),
            Layout::Cols(KeyFn::Range { .. }) => format!("block-column ranges x{n}"),
            Layout::Other => format!("other x{n}"),
        }
    }
}

/// Block positions one matrix may have. Operators visit grids (placement, products,
/// fills), so a shape with more positions is refused before anything is allocated: a
/// subquery coordinate of 9e18 must be an error, not an allocation the kernel kills.
pub(crate) const MAX_GRID_BLOCKS: u64 = 1 << 24;

/// Checks that a `rows x cols` matrix in `br x bc` blocks stays within
/// [`MAX_GRID_BLOCKS`]; the error (54000) names `what` and the shape.
pub(crate) fn check_shape(what: &str, rows: u64, cols: u64, br: u64, bc: u64) -> Result<()> {
    let grid = rows
        .div_ceil(br.max(1))
        .checked_mul(cols.div_ceil(bc.max(1)));
    match grid {
        Some(g) if g <= MAX_GRID_BLOCKS => Ok(()),
        _ => Err(tessera_error(
            ErrorKind::ProgramLimitExceeded,
            format!(
                "{what}: a {rows}x{cols} matrix in {br}x{bc} blocks has more than \
                 {MAX_GRID_BLOCKS} block positions, the most one matrix may have"
            ),
        )),
    }
}

/// A matrix cut into blocks of `br x bc`, spread over partitions.
#[derive(Debug)]
pub struct BlockMatrix {
    /// Rows.
    pub rows: u64,
    /// Columns.
    pub cols: u64,
    /// Block rows.
    pub br: u64,
    /// Block columns.
    pub bc: u64,
    /// Blocks of each partition (all-zero blocks may be missing).
    pub parts: Vec<Vec<Tile>>,
    /// How blocks were placed.
    pub layout: Layout,
    /// The shape was inferred from a subquery's largest coordinates and may grow to
    /// conform with the other operand.
    pub inferred: bool,
    /// Memory this matrix holds in the session's pool (released on drop).
    pub reservation: Option<MemoryReservation>,
}

impl BlockMatrix {
    /// A matrix with no blocks yet.
    pub fn empty(rows: u64, cols: u64, br: u64, bc: u64, n: usize, layout: Layout) -> Self {
        Self {
            rows,
            cols,
            br: br.max(1),
            bc: bc.max(1),
            parts: vec![Vec::new(); n.max(1)],
            layout,
            inferred: false,
            reservation: None,
        }
    }

    /// Builds from tiles, placing each by `layout` over `n` partitions.
    pub fn from_tiles(
        (rows, cols): (u64, u64),
        (br, bc): (u64, u64),
        tiles: impl IntoIterator<Item = Tile>,
        n: usize,
        layout: Layout,
    ) -> Self {
        let mut m = Self::empty(rows, cols, br, bc, n, layout);
        let n = m.parts.len();
        for t in tiles {
            if t.2.nnz() > 0 || matches!(*t.2, Block::Dense(_)) {
                m.parts[layout.part_of(t.0, t.1, n)].push(t);
            }
        }
        m
    }

    /// Builds from the batches of a block stream (see [`super::flow`]), placing each
    /// block by its key: by this build's hash placement when it is live, else by the
    /// same function marked [`Layout::Other`].
    pub fn from_block_batches(
        batches: &[RecordBatch],
        geometry: super::exec::FlowGeometry,
        n: usize,
    ) -> Result<Self> {
        let layout = if crate::partitioning::live_placement().is_some() {
            Layout::Hash2
        } else {
            Layout::Other
        };
        let (rows, cols) = geometry.shape;
        let (br, bc) = geometry.block;
        let mut tiles = Vec::new();
        for batch in batches {
            let blocks = super::flow::BlockRows::new(batch, 0)?;
            for row in 0..blocks.len() {
                let (bi, bj) = blocks.key(row);
                tiles.push((bi, bj, Arc::new(blocks.block(row)?)));
            }
        }
        Ok(Self::from_tiles((rows, cols), (br, bc), tiles, n, layout))
    }

    /// Block rows and block columns.
    pub fn grid(&self) -> (u64, u64) {
        (self.rows.div_ceil(self.br), self.cols.div_ceil(self.bc))
    }

    /// Shape.
    pub fn shape(&self) -> (u64, u64) {
        (self.rows, self.cols)
    }

    /// Rows and columns of block `(bi, bj)`.
    pub fn block_shape(&self, bi: u64, bj: u64) -> (usize, usize) {
        let r = self.br.min(self.rows.saturating_sub(bi * self.br));
        let c = self.bc.min(self.cols.saturating_sub(bj * self.bc));
        (r as usize, c as usize)
    }

    /// Every tile, partition by partition.
    pub fn tiles(&self) -> impl Iterator<Item = &Tile> {
        self.parts.iter().flatten()
    }

    /// Number of stored blocks.
    pub fn block_count(&self) -> usize {
        self.parts.iter().map(Vec::len).sum()
    }

    /// Bytes of the stored blocks.
    pub fn bytes(&self) -> u64 {
        self.tiles().map(|t| block_bytes(&t.2)).sum()
    }

    /// Non-zero cells.
    pub fn nnz(&self) -> u64 {
        self.tiles().map(|t| t.2.nnz() as u64).sum()
    }

    /// All tiles keyed by position.
    pub fn index(&self) -> HashMap<(u64, u64), Arc<Block>> {
        self.tiles()
            .map(|(i, j, b)| ((*i, *j), b.clone()))
            .collect()
    }

    /// Moves blocks to the partitions `layout` gives them among `n`; returns the bytes
    /// of the blocks that changed partition.
    pub fn repartition(&mut self, layout: Layout, n: usize) -> u64 {
        let n = n.max(1);
        if self.layout == layout && self.parts.len() == n {
            return 0;
        }
        let mut parts = vec![Vec::new(); n];
        let mut moved = 0;
        for (from, tiles) in std::mem::take(&mut self.parts).into_iter().enumerate() {
            for t in tiles {
                let to = layout.part_of(t.0, t.1, n);
                if to != from {
                    moved += block_bytes(&t.2);
                }
                parts[to].push(t);
            }
        }
        self.parts = parts;
        self.layout = layout;
        moved
    }

    /// The same cells cut into blocks of `br x bc` (placed by hash).
    pub fn reblock(&self, br: u64, bc: u64, n: usize) -> Result<BlockMatrix> {
        if (br, bc) == (self.br, self.bc) {
            return Ok(self.share());
        }
        let mut sink = CellSink::new(self.rows, self.cols, br, bc);
        for_each_cell(self, |i, j, v| sink.push(i, j, v))?;
        let mut m = sink.finish(n);
        m.inferred = self.inferred;
        Ok(m)
    }

    /// A second handle on the same blocks (blocks are shared, not copied).
    pub fn share(&self) -> BlockMatrix {
        BlockMatrix {
            rows: self.rows,
            cols: self.cols,
            br: self.br,
            bc: self.bc,
            parts: self.parts.clone(),
            layout: self.layout,
            inferred: self.inferred,
            reservation: None,
        }
    }

    /// The whole matrix as one dense row-major buffer.
    pub fn to_dense(&self) -> Result<DenseBlock> {
        if self.rows.saturating_mul(self.cols) > MAX_BLOCK_CELLS {
            return Err(tessera_error(
                ErrorKind::ProgramLimitExceeded,
                format!(
                    "a {}x{} matrix is too large to gather into one dense matrix (at most \
                     {MAX_BLOCK_CELLS} cells)",
                    self.rows, self.cols
                ),
            ));
        }
        let (rows, cols) = (self.rows as usize, self.cols as usize);
        let mut values = vec![0.0; rows * cols];
        for (bi, bj, b) in self.tiles() {
            let (r0, c0) = ((bi * self.br) as usize, (bj * self.bc) as usize);
            b.for_each_nonzero(|r, c, v| values[(r0 + r) * cols + c0 + c] = v);
        }
        DenseBlock::new(rows, cols, values).map_err(crate::error::storage_error)
    }

    /// Cuts a dense matrix into blocks of `br x bc`, stored dense or sparse by density.
    pub fn from_dense(d: &DenseBlock, br: u64, bc: u64, n: usize) -> BlockMatrix {
        let (rows, cols) = (d.rows() as u64, d.cols() as u64);
        let mut tiles = Vec::new();
        for bi in 0..rows.div_ceil(br) {
            for bj in 0..cols.div_ceil(bc) {
                let (r0, c0) = (bi * br, bj * bc);
                let (r, c) = (br.min(rows - r0) as usize, bc.min(cols - c0) as usize);
                let block =
                    DenseBlock::from_fn(r, c, |i, j| d.get(r0 as usize + i, c0 as usize + j));
                let block = Block::Dense(block).into_preferred_format();
                if block.nnz() > 0 {
                    tiles.push((bi, bj, Arc::new(block)));
                }
            }
        }
        BlockMatrix::from_tiles((rows, cols), (br, bc), tiles, n, Layout::Hash2)
    }

    /// Builds a matrix from `(i, j, v)` rows (the first three columns of each batch:
    /// integer coordinates from 0, a numeric value). The shape is `shape`, or one more
    /// than the largest coordinates. Repeated coordinates are summed.
    pub fn from_batches(
        what: &str,
        batches: &[RecordBatch],
        shape: Option<(u64, u64)>,
        n: usize,
    ) -> Result<BlockMatrix> {
        let mut cells: Vec<(u64, u64, f64)> = Vec::new();
        for batch in batches {
            if batch.num_columns() < 3 {
                return exec_err!(
                    "{what}: a matrix argument must have columns (i, j, v), got {} column(s)",
                    batch.num_columns()
                );
            }
            let col = |k: usize, ty| {
                datafusion::arrow::compute::cast(batch.column(k), &ty).map_err(|e| {
                    tessera_error(
                        ErrorKind::DatatypeMismatch,
                        format!(
                            "{what}: column {} of a matrix argument must be a number: {e}",
                            k + 1
                        ),
                    )
                })
            };
            use datafusion::arrow::datatypes::DataType;
            let i = col(0, DataType::Int64)?;
            let j = col(1, DataType::Int64)?;
            let v = col(2, DataType::Float64)?;
            let (Some(i), Some(j), Some(v)) = (
                i.as_any().downcast_ref::<Int64Array>(),
                j.as_any().downcast_ref::<Int64Array>(),
                v.as_any().downcast_ref::<Float64Array>(),
            ) else {
                return exec_err!("{what}: could not read (i, j, v) columns");
            };
            for r in 0..batch.num_rows() {
                if i.is_null(r) || j.is_null(r) {
                    return exec_err!("{what}: a matrix argument has a NULL coordinate");
                }
                let (ci, cj) = (i.value(r), j.value(r));
                if ci < 0 || cj < 0 {
                    return exec_err!(
                        "{what}: coordinates of a matrix argument start at 0, got ({ci}, {cj})"
                    );
                }
                let value = if v.is_null(r) { 0.0 } else { v.value(r) };
                cells.push((ci as u64, cj as u64, value));
            }
        }
        let inferred = shape.is_none();
        let (rows, cols) = match shape {
            Some(s) => s,
            None => cells
                .iter()
                .fold((0, 0), |(r, c), &(i, j, _)| (r.max(i + 1), c.max(j + 1))),
        };
        if let Some(&(i, j, _)) = cells.iter().find(|&&(i, j, _)| i >= rows || j >= cols) {
            return Err(crate::error::tessera_error(
                crate::error::ErrorKind::DataException,
                format!("{what}: cell ({i}, {j}) is outside the {rows}x{cols} matrix"),
            ));
        }
        let (br, bc) = super::auto_block(rows.max(1), cols.max(1));
        check_shape(what, rows, cols, br, bc)?;
        let mut sink = CellSink::new(rows, cols, br, bc);
        for (i, j, v) in cells {
            sink.push(i, j, v)?;
        }
        let mut m = sink.finish(n);
        m.inferred = inferred;
        Ok(m)
    }
}

/// Calls `f(i, j, v)` for every non-zero cell of `m`, in the matrix's coordinates.
pub(crate) fn for_each_cell(
    m: &BlockMatrix,
    mut f: impl FnMut(u64, u64, f64) -> Result<()>,
) -> Result<()> {
    for (bi, bj, b) in m.tiles() {
        b.try_for_each_nonzero_at((bi * m.br, bj * m.bc), &mut f)?;
    }
    Ok(())
}

/// Collects cells by block and builds the blocks (duplicates summed, each block dense or
/// sparse by density; see [`CooBuilder`]).
pub(crate) struct CellSink {
    rows: u64,
    cols: u64,
    br: u64,
    bc: u64,
    builders: HashMap<(u64, u64), CooBuilder>,
}

impl CellSink {
    /// A sink for a `rows x cols` matrix in blocks of `br x bc`.
    pub(crate) fn new(rows: u64, cols: u64, br: u64, bc: u64) -> Self {
        Self {
            rows,
            cols,
            br: br.max(1),
            bc: bc.max(1),
            builders: HashMap::new(),
        }
    }

    /// Adds cell `(i, j)` (inside the shape).
    pub(crate) fn push(&mut self, i: u64, j: u64, v: f64) -> Result<()> {
        if i >= self.rows || j >= self.cols {
            return Err(crate::error::tessera_error(
                crate::error::ErrorKind::DataException,
                format!(
                    "cell ({i}, {j}) is outside the {}x{} matrix",
                    self.rows, self.cols
                ),
            ));
        }
        let (br, bc, rows, cols) = (self.br, self.bc, self.rows, self.cols);
        let key = (i / br, j / bc);
        let b = self.builders.entry(key).or_insert_with(|| {
            CooBuilder::new(
                br.min(rows - key.0 * br) as usize,
                bc.min(cols - key.1 * bc) as usize,
                Duplicates::Sum,
            )
        });
        b.push((i % br) as usize, (j % bc) as usize, v)
            .map_err(crate::error::storage_error)
    }

    /// The matrix, placed by hash over `n` partitions.
    pub(crate) fn finish(self, n: usize) -> BlockMatrix {
        let tiles = self
            .builders
            .into_iter()
            .map(|((i, j), b)| (i, j, Arc::new(b.build())));
        BlockMatrix::from_tiles(
            (self.rows, self.cols),
            (self.br, self.bc),
            tiles,
            n,
            Layout::Hash2,
        )
    }
}

/// Bytes a block takes in memory.
pub(crate) fn block_bytes(b: &Block) -> u64 {
    match b {
        Block::Dense(d) => (d.rows() * d.cols() * 8) as u64,
        Block::Sparse(s) => (s.nnz() * 16 + (s.rows() + 1) * 8) as u64,
    }
}

/// An all-zero block (stored sparse: no cells).
pub(crate) fn zero_block(rows: usize, cols: usize) -> Block {
    Block::Sparse(CsrBlock::zeros(rows, cols))
}
