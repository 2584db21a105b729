//! Rows into arrays: the one path from a relation of cells `(dims..., attrs...)` to
//! blocks, used by `INSERT INTO array`, `CREATE MATRIX ... AS` and `COPY array FROM
//! 'file.parquet'`.
//!
//! Cells are grouped by block in memory (charged to the session's memory pool, so a
//! write too large for the budget fails with `ResourcesExhausted`), then each block is
//! built, merged with the stored block in update mode, and written; the write commits
//! once. A later cell overwrites an earlier one at the same coordinates (nothing is
//! summed), a zero value removes a stored cell, and a cell outside the array fails the
//! whole write before anything is committed.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type, SchemaRef};
use datafusion::common::{DataFusionError, Result, plan_err};
use datafusion::datasource::sink::DataSink;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryPool, MemoryReservation};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::{DisplayAs, DisplayFormatType};
use datafusion::prelude::{DataFrame, SessionContext};
use futures::StreamExt;
use tessera_storage::{
    ArraySchema, ArrayWriter, BlockFormat, BlockKey, CooBuilder, Duplicates, Partitioning, Store,
    WriteMode,
};

use crate::catalog::TesseraCatalog;
use crate::error::{ErrorKind, blocking, storage_error, tessera_error};
use crate::la::{Tile, TileSink};

/// Cells per block that [`auto_block_size`] aims for.
pub const AUTO_BLOCK_CELLS: u64 = 1_000_000;

/// Block side that [`auto_block_size`] aims for along a dimension that is not skinny.
pub const AUTO_BLOCK_SIDE: u64 = 1000;

/// The block size `CREATE MATRIX` picks when `BLOCK` is omitted: about a million cells
/// per block, split evenly.
///
/// - A matrix with at most 1000 columns gets full-width blocks of about a million
///   cells (`rows x cols` with `rows = 1e6 / cols`, at least 1000); likewise full-height
///   blocks for at most 1000 rows.
/// - Otherwise blocks are about 1000 x 1000.
/// - Along each dimension the block length is balanced so the blocks are nearly equal
///   (4096 columns make 5 blocks of 820, not 4 of 1000 and one of 96), and never
///   exceeds the shape. A block never holds more than `2^22` cells.
///
/// ```
/// use tessera_planner::auto_block_size;
/// assert_eq!(auto_block_size(10, 7), (10, 7));
/// assert_eq!(auto_block_size(1_000_000, 100), (10_000, 100));
/// assert_eq!(auto_block_size(4096, 4096), (820, 820));
/// ```
pub fn auto_block_size(rows: u64, cols: u64) -> (u64, u64) {
    let (rows, cols) = (rows.max(1), cols.max(1));
    let (row_limit, col_limit) = if cols <= AUTO_BLOCK_SIDE {
        ((AUTO_BLOCK_CELLS / cols).max(AUTO_BLOCK_SIDE), cols)
    } else if rows <= AUTO_BLOCK_SIDE {
        (rows, (AUTO_BLOCK_CELLS / rows).max(AUTO_BLOCK_SIDE))
    } else {
        (AUTO_BLOCK_SIDE, AUTO_BLOCK_SIDE)
    };
    let balanced = |n: u64, limit: u64| {
        let blocks = n.div_ceil(limit.max(1));
        n.div_ceil(blocks)
    };
    (balanced(rows, row_limit), balanced(cols, col_limit))
}

/// A new matrix to be filled from a query: `CREATE MATRIX name [(rows, cols)] [BLOCK
/// (r, c)] [SPARSE | DENSE] [WITH (...)] AS query`.
#[derive(Debug, Clone, Default)]
pub struct NewMatrix {
    /// Name.
    pub name: String,
    /// `(rows, cols)`; `None`: `(max(i) + 1, max(j) + 1)` of the query's cells.
    pub shape: Option<(u64, u64)>,
    /// `BLOCK (r, c)`; `None`: [`auto_block_size`].
    pub block: Option<(u64, u64)>,
    /// `SPARSE` / `DENSE`; `None`: per block by density.
    pub format: Option<BlockFormat>,
    /// Shards; `None`: the store's default.
    pub partitioning: Option<Partitioning>,
    /// Versions kept; `None`: the store's default.
    pub keep_versions: Option<u32>,
}

/// Runs `query` and stores its rows as the new matrix `target`: the first three columns
/// are `(i, j, v)`, whatever their names. The matrix is created, written and committed
/// once; if anything fails it does not exist afterwards. Returns the number of cells
/// read from the query.
///
/// This is the one place a query result becomes a new matrix; a fast path for plans
/// that already produce blocks (matrix functions) belongs here.
pub async fn write_query_as_matrix(
    catalog: &Arc<TesseraCatalog>,
    query: DataFrame,
    target: NewMatrix,
) -> Result<u64> {
    let name = target.name.clone();
    let columns = query.schema().fields().len();
    if columns < 3 {
        let names: Vec<String> = query
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        return plan_err!(
            "CREATE MATRIX {name} AS: the query must return (i, j, v) as its first three columns; it returns {columns} ({})",
            names.join(", ")
        );
    }
    // A matrix expression that runs as a block dataflow stores its blocks where they
    // are computed (on the workers, when the statement is distributed).
    if let Some(cells) = write_dataflow_as_matrix(catalog, &query, &target).await? {
        return Ok(cells);
    }
    // Fast path: a matrix expression hands over its blocks, no (i, j, v) rows; a
    // product stores each block as soon as it is finished.
    let task_ctx = query.task_ctx();
    let plan = query.clone().create_physical_plan().await?;
    let streaming = Arc::new(StreamingMatrix::new(catalog.clone(), target.clone()));
    let sink: Arc<dyn TileSink> = streaming.clone();
    let computed = crate::la::compute_blocks(&plan, Arc::new(task_ctx), Some(sink)).await;
    match (computed, streaming.take()) {
        (Ok(Some(m)), Some(writer)) => return writer.commit(&m).await.map(|()| m.nnz()),
        (Ok(Some(m)), None) => return write_blocks_as_matrix(catalog, m, target).await,
        (Ok(None), _) => {}
        (Err(e), Some(writer)) => return Err(writer.abort(e).await),
        (Err(e), None) => return Err(e),
    }
    let pool = query.task_ctx().memory_pool().clone();
    let mut stream = query.execute_stream().await?;
    let reservation = MemoryConsumer::new(format!("CREATE MATRIX {name}")).register(&pool);
    let mut batches = Vec::new();
    let (mut max_i, mut max_j) = (-1i64, -1i64);
    while let Some(batch) = stream.next().await {
        let batch = cells_batch(&batch?, 2, 1, &format!("CREATE MATRIX {name}"))?;
        reservation.try_grow(batch.get_array_memory_size())?;
        let (i, j) = (
            batch.column(0).as_primitive::<Int64Type>(),
            batch.column(1).as_primitive::<Int64Type>(),
        );
        for r in 0..batch.num_rows() {
            let (x, y) = (i.value(r), j.value(r));
            if x < 0 || y < 0 {
                return plan_err!(
                    "CREATE MATRIX {name} AS: cell ({x}, {y}) has a negative coordinate; matrix coordinates start at 0"
                );
            }
            max_i = max_i.max(x);
            max_j = max_j.max(y);
        }
        batches.push(batch);
    }
    let shape = match target.shape {
        Some(shape) => shape,
        None if max_i < 0 => {
            return plan_err!(
                "CREATE MATRIX {name} AS: the query returned no cells, so the shape cannot be inferred; give it as CREATE MATRIX {name} (rows, cols) AS ..."
            );
        }
        None => (max_i as u64 + 1, max_j as u64 + 1),
    };
    let (br, bc) = target
        .block
        .unwrap_or_else(|| auto_block_size(shape.0, shape.1));
    let schema = ArraySchema::matrix(shape.0, shape.1, br, bc).map_err(storage_error)?;
    let mut grid = CellGrid::new(&name, schema.clone(), &pool);
    for batch in &batches {
        grid.push(batch)?;
    }
    drop(batches);
    reservation.free();
    let cells = grid.rows();
    // The matrix and its blocks appear in one commit; a failure (or a crash) leaves
    // nothing of it.
    let mut writer = catalog.create_array_writer(
        &name,
        schema,
        target.partitioning,
        target.keep_versions,
        target.format,
    )?;
    let catalog = catalog.clone();
    blocking(move || {
        grid.write(&mut writer, false)?;
        catalog.commit_new_array(writer)
    })
    .await?;
    Ok(cells)
}

/// `CREATE MATRIX ... AS` a matrix expression that runs as a block dataflow, its blocks
/// stored where they are computed: each partition of the dataflow (on a worker, when
/// the statement is distributed) writes the blocks it made into part files of the new
/// matrix's first version ([`MatrixWriteNode`](crate::la::MatrixWriteNode)), and this
/// statement commits them all at once. Nothing of the matrix is visible before; a
/// failure deletes every part, and files of a process that died are deleted by the
/// commit (or, if this process dies too, by the store's next open).
///
/// A statement on workers that fails because one of them was lost is planned again on
/// the workers left and run again, up to [`ATTEMPTS`](crate::distributed::ATTEMPTS)
/// in all; the failed attempt's parts are deleted at the commit. `None` when the
/// query is not such a dataflow.
async fn write_dataflow_as_matrix(
    catalog: &Arc<TesseraCatalog>,
    query: &DataFrame,
    target: &NewMatrix,
) -> Result<Option<u64>> {
    use datafusion::execution::context::QueryPlanner;
    let name = &target.name;
    let (state, plan) = query.clone().into_parts();
    let plan = state.optimize(&plan)?;
    let local = crate::la::TesseraQueryPlanner
        .create_physical_plan(&plan, &state)
        .await?;
    let Some(geometry) = crate::la::is_block_dataflow(&local) else {
        return Ok(None);
    };
    drop(local);
    let shape = geometry.shape;
    if let Some(wanted) = target.shape
        && wanted != shape
    {
        return plan_err!(
            "CREATE MATRIX {name} ({}, {}) AS: the query's matrix is {}x{}",
            wanted.0,
            wanted.1,
            shape.0,
            shape.1
        );
    }
    let block = target
        .block
        .unwrap_or_else(|| auto_block_size(shape.0, shape.1));
    let schema = ArraySchema::matrix(shape.0, shape.1, block.0, block.1).map_err(storage_error)?;
    let mut writer = catalog.create_array_writer(
        name,
        schema,
        target.partitioning,
        target.keep_versions,
        target.format,
    )?;
    let node = crate::la::MatrixWriteNode::new(
        plan,
        writer.part_target(),
        block,
        catalog.store().clone(),
    )?;
    let write =
        datafusion::logical_expr::LogicalPlan::Extension(datafusion::logical_expr::Extension {
            node: Arc::new(node),
        });
    let cluster = state
        .config()
        .get_extension::<crate::distributed::Cluster>();
    let mut attempt = 1;
    let parts = loop {
        let used = cluster.as_ref().map(|c| c.live()).unwrap_or_default();
        let physical = state.create_physical_plan(&write).await?;
        let ran = datafusion::physical_plan::collect(physical, state.task_ctx()).await;
        let error = match ran {
            Ok(batches) => break crate::la::flow::written_parts(&batches)?,
            Err(e) => e,
        };
        let lost = match &cluster {
            Some(c) if !used.is_empty() => c.lost_since(&used).await,
            _ => false,
        };
        match &cluster {
            Some(c) if lost && attempt < crate::distributed::ATTEMPTS => {
                tracing::warn!(
                    attempt,
                    "CREATE MATRIX {name} AS: a worker was lost ({error}); running it again on the workers left"
                );
                c.note_retry(&used);
                attempt += 1;
            }
            _ if lost => {
                return Err(DataFusionError::External(Box::new(
                    crate::TesseraError::classified(ErrorKind::WorkerLost, error),
                )));
            }
            _ => return Err(error),
        }
    };
    let mut cells = 0;
    for part in parts {
        cells += part.nnz();
        writer.adopt(part).map_err(storage_error)?;
    }
    let catalog = catalog.clone();
    blocking(move || catalog.commit_new_array(writer)).await?;
    Ok(Some(cells))
}

/// Bytes a streaming write puts in shard files between syncs: the disk writes them
/// while the kernels compute the next blocks, so the commit's sync has little left.
/// (Every block in tests, so the syncs between blocks are exercised on small inputs.)
const SYNC_EVERY_BYTES: u64 = if cfg!(test) { 1 } else { 32 << 20 };

/// `CREATE MATRIX ... AS` a product, stored while it is computed: when the product
/// opens it (its geometry is the new matrix's), a writer thread starts the new matrix's
/// write and puts each block as the kernels finish it, syncing the shard files as it
/// goes. The statement commits the matrix with all its blocks once the product is
/// complete; if anything fails (or the process dies) the matrix never appears.
struct StreamingMatrix {
    catalog: Arc<TesseraCatalog>,
    target: NewMatrix,
    writer: std::sync::Mutex<Option<StreamingWriter>>,
}

/// What goes to the writer thread.
enum ToWriter {
    Tile(Tile),
    /// The product is complete with these blocks: commit.
    Commit(Vec<(u64, u64)>),
}

/// How the writer thread ended.
enum WriterEnd {
    Committed,
    /// The product failed first (the channel closed without a commit).
    Abandoned,
    Failed(DataFusionError),
}

struct StreamingWriter {
    to_writer: std::sync::mpsc::Sender<ToWriter>,
    thread: std::thread::JoinHandle<WriterEnd>,
}

impl StreamingMatrix {
    fn new(catalog: Arc<TesseraCatalog>, target: NewMatrix) -> Self {
        Self {
            catalog,
            target,
            writer: std::sync::Mutex::new(None),
        }
    }

    /// The writer, if the product opened this sink.
    fn take(&self) -> Option<StreamingWriter> {
        self.writer.lock().ok()?.take()
    }

    /// The writer thread: puts every block it is sent into the new matrix's write and
    /// commits it on [`ToWriter::Commit`]; on any other ending the write is dropped.
    fn write(
        catalog: Arc<TesseraCatalog>,
        target: NewMatrix,
        schema: ArraySchema,
        tiles: std::sync::mpsc::Receiver<ToWriter>,
    ) -> WriterEnd {
        let name = target.name.clone();
        let end = (|| {
            // Nothing is visible until the commit, which adds the matrix and all its
            // blocks at once; a writer dropped before it deletes what it wrote.
            let mut writer = catalog.create_array_writer(
                &name,
                schema,
                target.partitioning,
                target.keep_versions,
                target.format,
            )?;
            let mut put = std::collections::HashSet::new();
            let mut synced = 0;
            for message in tiles {
                match message {
                    ToWriter::Tile((i, j, block)) => {
                        writer
                            .put_block_ref(BlockKey::matrix(i as i64, j as i64), &block)
                            .map_err(storage_error)?;
                        put.insert((i, j));
                        if writer.bytes_written() - synced >= SYNC_EVERY_BYTES {
                            writer.sync_written().map_err(storage_error)?;
                            synced = writer.bytes_written();
                        }
                    }
                    ToWriter::Commit(keys) => {
                        if let Some((i, j)) = keys.iter().find(|k| !put.contains(k)) {
                            return Err(DataFusionError::Internal(format!(
                                "CREATE MATRIX {name} AS: block ({i}, {j}) of the product was never stored"
                            )));
                        }
                        catalog.commit_new_array(writer)?;
                        return Ok(WriterEnd::Committed);
                    }
                }
            }
            Ok(WriterEnd::Abandoned)
        })();
        end.unwrap_or_else(WriterEnd::Failed)
    }
}

impl TileSink for StreamingMatrix {
    fn open(&self, shape: (u64, u64), block: (u64, u64)) -> Result<bool> {
        let wanted = self
            .target
            .block
            .unwrap_or_else(|| auto_block_size(shape.0, shape.1));
        // Another shape is reported by the blocking path; another block size is cut
        // again there.
        if self.target.shape.is_some_and(|s| s != shape) || wanted != block {
            return Ok(false);
        }
        let schema =
            ArraySchema::matrix(shape.0, shape.1, block.0, block.1).map_err(storage_error)?;
        let (to_writer, tiles) = std::sync::mpsc::channel();
        let (catalog, target) = (self.catalog.clone(), self.target.clone());
        let thread = std::thread::Builder::new()
            .name("tessera-matrix-writer".into())
            .spawn(move || Self::write(catalog, target, schema, tiles))
            .map_err(|e| {
                DataFusionError::Execution(format!(
                    "CREATE MATRIX {}: cannot start a writer thread: {e}",
                    self.target.name
                ))
            })?;
        let mut slot = self
            .writer
            .lock()
            .map_err(|_| DataFusionError::Internal("matrix writer lock poisoned".into()))?;
        *slot = Some(StreamingWriter { to_writer, thread });
        Ok(true)
    }

    fn put(&self, tile: &Tile) -> Result<()> {
        let sent = self.writer.lock().ok().and_then(|w| {
            w.as_ref()
                .map(|w| w.to_writer.send(ToWriter::Tile(tile.clone())).is_ok())
        });
        match sent {
            Some(true) => Ok(()),
            // The writer failed; its error is the statement's (see `abort`).
            _ => Err(DataFusionError::Execution(format!(
                "CREATE MATRIX {}: the writer stopped",
                self.target.name
            ))),
        }
    }
}

impl StreamingWriter {
    /// The product `m` is complete and every block was sent: commits.
    async fn commit(self, m: &crate::la::BlockMatrix) -> Result<()> {
        let keys = m.tiles().map(|t| (t.0, t.1)).collect();
        // A failed send means the writer already ended; its end says why.
        let _ = self.to_writer.send(ToWriter::Commit(keys));
        match self.join().await? {
            WriterEnd::Committed => Ok(()),
            WriterEnd::Failed(e) => Err(e),
            WriterEnd::Abandoned => Err(DataFusionError::Internal(
                "the matrix writer ended before its commit".into(),
            )),
        }
    }

    /// The product failed with `e`: the writer drops the matrix. Returns the error that
    /// stopped the statement (the writer's, if it failed first).
    async fn abort(self, e: DataFusionError) -> DataFusionError {
        match self.join().await {
            Ok(WriterEnd::Failed(writer_error)) => writer_error,
            _ => e,
        }
    }

    async fn join(self) -> Result<WriterEnd> {
        let StreamingWriter { to_writer, thread } = self;
        drop(to_writer);
        blocking(move || {
            thread
                .join()
                .map_err(|_| DataFusionError::Internal("the matrix writer thread panicked".into()))
        })
        .await
    }
}

/// Stores a computed matrix as the new matrix `target`, block by block (cut again when
/// `target` asks for another block size). Returns the number of non-zero cells.
async fn write_blocks_as_matrix(
    catalog: &Arc<TesseraCatalog>,
    m: crate::la::BlockMatrix,
    target: NewMatrix,
) -> Result<u64> {
    let name = target.name.clone();
    if let Some(shape) = target.shape
        && shape != m.shape()
    {
        return plan_err!(
            "CREATE MATRIX {name} ({}, {}) AS: the query's matrix is {}x{}",
            shape.0,
            shape.1,
            m.rows,
            m.cols
        );
    }
    let (br, bc) = target
        .block
        .unwrap_or_else(|| auto_block_size(m.rows, m.cols));
    let schema = ArraySchema::matrix(m.rows, m.cols, br, bc).map_err(storage_error)?;
    let m = if (m.br, m.bc) == (br, bc) {
        m
    } else {
        let parts = m.parts.len();
        blocking(move || m.reblock(br, bc, parts)).await?
    };
    let cells = m.nnz();
    let mut writer = catalog.create_array_writer(
        &name,
        schema,
        target.partitioning,
        target.keep_versions,
        target.format,
    )?;
    let catalog = catalog.clone();
    blocking(move || {
        for (i, j, b) in m.tiles() {
            let block = Arc::unwrap_or_clone(b.clone());
            writer
                .put_block(BlockKey::matrix(*i as i64, *j as i64), block)
                .map_err(storage_error)?;
        }
        catalog.commit_new_array(writer)
    })
    .await?;
    Ok(cells)
}

/// Writes the cells of `query` (columns: the array's dimensions, then its attributes,
/// by position) into the existing array `name` with `mode`, committing once. Returns
/// the number of cells read.
pub async fn write_cells(
    store: &Store,
    name: &str,
    query: DataFrame,
    mode: WriteMode,
    what: &str,
) -> Result<u64> {
    let info = store.array(name).map_err(storage_error)?;
    let pool = query.task_ctx().memory_pool().clone();
    let stream = query.execute_stream().await?;
    write_stream(store, name, &info.schema, stream, &pool, mode, what, None).await
}

/// Writes the cells of `stream` to array `name` and commits once. With `base`, the
/// write fails (SQLSTATE 40001) unless the array's current version is still `base`:
/// the cells were computed from that version.
#[allow(clippy::too_many_arguments)] // one write's parts, from this module only
async fn write_stream(
    store: &Store,
    name: &str,
    schema: &ArraySchema,
    mut stream: SendableRecordBatchStream,
    pool: &Arc<dyn MemoryPool>,
    mode: WriteMode,
    what: &str,
    base: Option<u64>,
) -> Result<u64> {
    let mut grid = CellGrid::new(name, schema.clone(), pool);
    let (dims, attrs) = (schema.dimensions().len(), schema.attributes().len());
    while let Some(batch) = stream.next().await {
        let batch = cells_batch(&batch?, dims, attrs, what)?;
        grid.push(&batch)?;
    }
    let cells = grid.rows();
    let (store, name, what) = (store.clone(), name.to_string(), what.to_string());
    blocking(move || {
        let mut writer = store.writer(&name, mode).map_err(storage_error)?;
        if let Some(base) = base
            && writer.base().version() != base
        {
            return Err(tessera_error(
                ErrorKind::SerializationFailure,
                format!(
                    "{what}: array '{name}' was changed by another statement meanwhile \
                     (version {base} was read, {} is current); nothing was changed, retry",
                    writer.base().version()
                ),
            ));
        }
        grid.write(&mut writer, mode == WriteMode::Update)?;
        writer.commit().map_err(storage_error)
    })
    .await?;
    Ok(cells)
}

/// The first `dims` columns as Int64 and the next `attrs` as Float64, without nulls.
fn cells_batch(batch: &RecordBatch, dims: usize, attrs: usize, what: &str) -> Result<RecordBatch> {
    let need = dims + attrs;
    if batch.num_columns() < need {
        return plan_err!(
            "{what}: expected {need} columns ({dims} coordinates, then {attrs} values), got {}",
            batch.num_columns()
        );
    }
    let schema = batch.schema();
    let mut columns = Vec::with_capacity(need);
    let mut fields = Vec::with_capacity(need);
    for n in 0..need {
        let column = batch.column(n);
        let field = schema.field(n);
        let ty = if n < dims {
            DataType::Int64
        } else {
            DataType::Float64
        };
        if column.null_count() > 0 {
            let row = (0..column.len()).find(|&r| column.is_null(r)).unwrap_or(0);
            return plan_err!(
                "{what}: column {} is NULL in row {}; array cells need coordinates and values",
                field.name(),
                row + 1
            );
        }
        let is_numeric = field.data_type().is_numeric() || field.data_type() == &DataType::Null;
        if !is_numeric {
            return plan_err!(
                "{what}: column {} has type {}; coordinates and values must be numbers",
                field.name(),
                field.data_type()
            );
        }
        let converted = cast(column, &ty).map_err(|e| {
            tessera_error(
                ErrorKind::DatatypeMismatch,
                format!("{what}: column {}: {e}", field.name()),
            )
        })?;
        if converted.null_count() > 0 {
            let row = (0..converted.len())
                .find(|&r| converted.is_null(r))
                .unwrap_or(0);
            return plan_err!(
                "{what}: column {} in row {} does not fit in {ty}",
                field.name(),
                row + 1
            );
        }
        if n < dims
            && matches!(
                field.data_type(),
                DataType::Float16 | DataType::Float32 | DataType::Float64
            )
        {
            let original = cast(column, &DataType::Float64)?;
            let original = original.as_primitive::<Float64Type>();
            if let Some(r) = (0..original.len()).find(|&r| original.value(r).fract() != 0.0) {
                return plan_err!(
                    "{what}: coordinate {} = {} in row {} is not a whole number",
                    field.name(),
                    original.value(r),
                    r + 1
                );
            }
        }
        fields.push(datafusion::arrow::datatypes::Field::new(
            field.name(),
            ty,
            false,
        ));
        columns.push(converted);
    }
    Ok(RecordBatch::try_new(
        Arc::new(datafusion::arrow::datatypes::Schema::new(fields)),
        columns,
    )?)
}

/// Cells of one block: positions and, per position, one value per attribute.
#[derive(Debug, Default)]
struct BlockCells {
    positions: Vec<(u32, u32)>,
    values: Vec<f64>,
}

/// Cells grouped by block, waiting to be written.
#[derive(Debug)]
pub(crate) struct CellGrid {
    array: String,
    schema: ArraySchema,
    index: HashMap<BlockKey, usize>,
    blocks: Vec<(BlockKey, BlockCells)>,
    reservation: MemoryReservation,
    rows: u64,
}

impl CellGrid {
    pub(crate) fn new(array: &str, schema: ArraySchema, pool: &Arc<dyn MemoryPool>) -> Self {
        Self {
            array: array.to_string(),
            schema,
            index: HashMap::new(),
            blocks: Vec::new(),
            reservation: MemoryConsumer::new(format!("cells for array {array}")).register(pool),
            rows: 0,
        }
    }

    /// Cells pushed so far.
    pub(crate) fn rows(&self) -> u64 {
        self.rows
    }

    /// Adds a batch from [`cells_batch`]: Int64 coordinates, then Float64 values.
    pub(crate) fn push(&mut self, batch: &RecordBatch) -> Result<()> {
        let dims = self.schema.dimensions().to_vec();
        let attrs = self.schema.attributes().len();
        let coords: Vec<_> = (0..dims.len())
            .map(|d| batch.column(d).as_primitive::<Int64Type>())
            .collect();
        let values: Vec<_> = (0..attrs)
            .map(|a| batch.column(dims.len() + a).as_primitive::<Float64Type>())
            .collect();
        let per_cell = 8 + 8 * attrs;
        self.reservation.try_grow(batch.num_rows() * per_cell)?;
        let mut key = vec![0i64; dims.len()];
        let mut offsets = vec![0u64; dims.len()];
        let mut last: Option<usize> = None;
        for r in 0..batch.num_rows() {
            for (d, dim) in dims.iter().enumerate() {
                let x = coords[d].value(r);
                match dim.locate(x) {
                    Some((b, o)) => {
                        key[d] = b as i64;
                        offsets[d] = o;
                    }
                    None => {
                        let cell: Vec<String> =
                            coords.iter().map(|c| c.value(r).to_string()).collect();
                        return Err(crate::error::tessera_error(
                            crate::error::ErrorKind::DataException,
                            format!(
                                "cell ({}) is outside array '{}' of shape {}",
                                cell.join(", "),
                                self.array,
                                shape_text(&self.schema)
                            ),
                        ));
                    }
                }
            }
            // Leading dimensions flatten row-major into the block row; the last is the column.
            let (row, col) = if dims.len() == 1 {
                (offsets[0], 0)
            } else {
                let mut row = 0u64;
                for (d, dim) in dims.iter().enumerate().take(dims.len() - 1) {
                    row = row * dim.block_extent(key[d] as u64) + offsets[d];
                }
                (row, offsets[dims.len() - 1])
            };
            let slot = match last {
                Some(n) if self.blocks[n].0.0 == key => n,
                _ => {
                    let block_key = BlockKey(key.clone());
                    match self.index.get(&block_key) {
                        Some(&n) => n,
                        None => {
                            let n = self.blocks.len();
                            self.index.insert(block_key.clone(), n);
                            self.blocks.push((block_key, BlockCells::default()));
                            n
                        }
                    }
                }
            };
            last = Some(slot);
            let cells = &mut self.blocks[slot].1;
            // Block extents are at most 2^28 cells, so offsets fit in u32.
            cells.positions.push((row as u32, col as u32));
            cells.values.extend(values.iter().map(|v| v.value(r)));
        }
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    /// Builds and puts every block; with `merge`, cells overwrite the stored block's
    /// cells and the rest of the stored block stays. Returns the number of blocks.
    pub(crate) fn write(mut self, writer: &mut ArrayWriter, merge: bool) -> Result<u64> {
        let attrs = self.schema.attributes().len();
        self.blocks.sort_by(|a, b| a.0.cmp(&b.0));
        let mut count = 0;
        for (key, cells) in std::mem::take(&mut self.blocks) {
            let (rows, cols) = self.schema.block_shape(&key);
            let old = if merge {
                writer.base().read(&key).map_err(storage_error)?
            } else {
                None
            };
            let mut blocks = Vec::with_capacity(attrs);
            for a in 0..attrs {
                // Later cells win over earlier ones at the same position.
                let mut fresh =
                    CooBuilder::with_capacity(rows, cols, Duplicates::Last, cells.positions.len());
                for (n, &(r, c)) in cells.positions.iter().enumerate() {
                    fresh
                        .push(r as usize, c as usize, cells.values[n * attrs + a])
                        .map_err(storage_error)?;
                }
                let block = match old.as_ref().and_then(|o| o.get(a)) {
                    Some(old) => fresh.build_over(old).map_err(storage_error)?,
                    None => fresh.build(),
                };
                blocks.push(block);
            }
            writer.put(key, blocks).map_err(storage_error)?;
            count += 1;
        }
        self.reservation.free();
        Ok(count)
    }
}

/// `4x4`, or for other arrays `i 0:9, j -3:3`.
pub fn shape_text(schema: &ArraySchema) -> String {
    if schema.is_matrix() {
        let (r, c) = schema.shape2();
        format!("{r}x{c}")
    } else {
        schema
            .dimensions()
            .iter()
            .map(|d| format!("{} {}:{}", d.name, d.start, d.end))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `INSERT INTO array ...`, `UPDATE array ...`, `DELETE FROM array ...`: writes the
/// input's cells in [`WriteMode::Update`].
#[derive(Debug)]
pub(crate) struct ArraySink {
    pub(crate) store: Store,
    pub(crate) name: String,
    pub(crate) schema: ArraySchema,
    pub(crate) cell_schema: SchemaRef,
    /// The statement, for messages: `INSERT INTO x`, `UPDATE x`, ...
    pub(crate) statement: String,
    /// The version the cells were computed from (`UPDATE`, `DELETE`): the commit
    /// fails if another write committed since.
    pub(crate) base: Option<u64>,
}

impl DisplayAs for ArraySink {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ArraySink: array={} mode=update", self.name)?;
        if let Some(base) = self.base {
            write!(f, " base_version={base}")?;
        }
        Ok(())
    }
}

#[async_trait]
impl DataSink for ArraySink {
    fn schema(&self) -> &SchemaRef {
        &self.cell_schema
    }

    async fn write_all(
        &self,
        data: SendableRecordBatchStream,
        context: &Arc<TaskContext>,
    ) -> Result<u64> {
        write_stream(
            &self.store,
            &self.name,
            &self.schema,
            data,
            context.memory_pool(),
            WriteMode::Update,
            &self.statement,
            self.base,
        )
        .await
    }
}

/// Reads a Parquet file's cells (columns named like the array's dimensions and
/// attributes if it has them all, else the first columns by position) into array
/// `name`.
pub(crate) async fn copy_parquet_into_array(
    ctx: &SessionContext,
    store: &Store,
    name: &str,
    path: &str,
    mode: WriteMode,
) -> Result<u64> {
    let info = store.array(name).map_err(storage_error)?;
    let df = ctx
        .read_parquet(path, Default::default())
        .await
        .map_err(|e| DataFusionError::Context(path.to_string(), Box::new(e)))?;
    let wanted: Vec<String> = info
        .schema
        .dimensions()
        .iter()
        .map(|d| d.name.clone())
        .chain(info.schema.attributes().iter().map(|a| a.name.clone()))
        .collect();
    let has_all = wanted
        .iter()
        .all(|w| df.schema().fields().iter().any(|f| f.name() == w));
    let df = if has_all {
        df.select_columns(&wanted.iter().map(String::as_str).collect::<Vec<_>>())?
    } else {
        df
    };
    // Its errors name the statement, and so the file.
    write_cells(store, name, df, mode, &format!("COPY {name} FROM '{path}'")).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_block_sizes_follow_the_documented_rule() {
        assert_eq!(auto_block_size(1, 1), (1, 1));
        assert_eq!(auto_block_size(1000, 1000), (1000, 1000));
        assert_eq!(auto_block_size(1001, 1001), (501, 501));
        assert_eq!(auto_block_size(2000, 3000), (1000, 1000));
        assert_eq!(auto_block_size(100, 1_000_000), (100, 10_000));
        assert_eq!(auto_block_size(1_000_000, 1), (1_000_000, 1));
        assert_eq!(auto_block_size(5_000_000, 1), (1_000_000, 1));
        for (r, c) in [
            (1u64 << 40, 1u64 << 40),
            (3, 1 << 50),
            (1 << 50, 999),
            (12345, 678),
        ] {
            let (br, bc) = auto_block_size(r, c);
            assert!(br * bc <= 1 << 22, "{r}x{c} -> {br}x{bc}");
            assert!(br <= r && bc <= c && br > 0 && bc > 0);
        }
    }

    mod streaming {
        use datafusion::arrow::array::{Float64Array, Int64Array};
        use datafusion::execution::SessionStateBuilder;
        use datafusion::prelude::SessionConfig;
        use tessera_storage::backend::{Backend, FaultKind, FaultyBackend, MemoryBackend};
        use tessera_storage::{Block, DenseBlock, StoreOptions};

        use super::*;
        use crate::catalog::{DEFAULT_CATALOG, DEFAULT_SCHEMA};

        fn session(catalog: &Arc<TesseraCatalog>) -> SessionContext {
            let config = crate::la::session_config(
                SessionConfig::new()
                    .with_target_partitions(2)
                    .with_create_default_catalog_and_schema(false)
                    .with_default_catalog_and_schema(DEFAULT_CATALOG, DEFAULT_SCHEMA),
            );
            let builder = SessionStateBuilder::new()
                .with_config(config)
                .with_catalog_list(catalog.catalog_list().unwrap())
                .with_default_features();
            SessionContext::new_with_state(
                crate::la::install(builder, catalog.store().clone()).build(),
            )
        }

        /// Stores a `shape` matrix of cells `f(i, j)` in 3 x 3 blocks.
        fn put(store: &Store, name: &str, shape: (u64, u64), f: impl Fn(u64, u64) -> f64) {
            let schema = ArraySchema::matrix(shape.0, shape.1, 3, 3).unwrap();
            store.create_array(name, schema, None, None).unwrap();
            let mut w = store.writer(name, WriteMode::Replace).unwrap();
            for bi in 0..shape.0.div_ceil(3) {
                for bj in 0..shape.1.div_ceil(3) {
                    let (r, c) = (3.min(shape.0 - bi * 3), 3.min(shape.1 - bj * 3));
                    let d = DenseBlock::from_fn(r as usize, c as usize, |i, j| {
                        f(bi * 3 + i as u64, bj * 3 + j as u64)
                    });
                    w.put_block(BlockKey::matrix(bi as i64, bj as i64), Block::Dense(d))
                        .unwrap();
                }
            }
            w.commit().unwrap();
        }

        /// A session over `store` holding `a` (7 x 5, `i + 2j`) and `b` (5 x 8,
        /// `i - j + 1`), with products forced to the `local` strategy (the one that
        /// streams its blocks).
        async fn operands(store: &Store) -> (Arc<TesseraCatalog>, SessionContext) {
            let catalog = TesseraCatalog::in_memory(store.clone());
            let ctx = session(&catalog);
            put(store, "a", (7, 5), |i, j| (i + 2 * j) as f64);
            put(store, "b", (5, 8), |i, j| i as f64 - j as f64 + 1.0);
            ctx.sql("SET tessera.matmul_strategy = 'local'")
                .await
                .unwrap()
                .collect()
                .await
                .unwrap();
            (catalog, ctx)
        }

        async fn create_product(
            catalog: &Arc<TesseraCatalog>,
            ctx: &SessionContext,
            name: &str,
        ) -> Result<u64> {
            let query = ctx.sql("SELECT * FROM matmul(a, b)").await?;
            let target = NewMatrix {
                name: name.into(),
                block: Some((3, 3)),
                ..NewMatrix::default()
            };
            write_query_as_matrix(catalog, query, target).await
        }

        /// The product of `a` (7 x 5, `i + 2j`) and `b` (5 x 8, `i - j` + 1), worked
        /// out here.
        fn expected() -> Vec<Vec<f64>> {
            (0..7)
                .map(|i| {
                    (0..8)
                        .map(|j| {
                            (0..5)
                                .map(|k| (i + 2 * k) as f64 * (k as f64 - j as f64 + 1.0))
                                .sum()
                        })
                        .collect()
                })
                .collect()
        }

        async fn read(ctx: &SessionContext, name: &str) -> Vec<Vec<f64>> {
            let batches = ctx
                .table(name)
                .await
                .unwrap()
                .select_columns(&["i", "j", "v"])
                .unwrap()
                .collect()
                .await
                .unwrap();
            let mut m = vec![vec![0.0; 8]; 7];
            for b in batches {
                let i = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                let j = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
                let v = b.column(2).as_any().downcast_ref::<Float64Array>().unwrap();
                for r in 0..b.num_rows() {
                    m[i.value(r) as usize][j.value(r) as usize] = v.value(r);
                }
            }
            m
        }

        /// Every write and every sync of `CREATE MATRIX c AS matmul(a, b)` fails in turn
        /// while the blocks stream to the writer: each failure is the statement's error
        /// and leaves no matrix and no file behind; then the statement succeeds.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_streamed_product_is_all_or_nothing_when_writes_fail() {
            let faulty = Arc::new(FaultyBackend::new(Arc::new(MemoryBackend::new())));
            let backend: Arc<dyn Backend> = faulty.clone();
            let store = Store::open(backend, StoreOptions::default()).unwrap();
            let (catalog, ctx) = operands(&store).await;
            let files_before = faulty.list("arrays/").unwrap();
            for kind in [FaultKind::Write, FaultKind::Sync] {
                for nth in 1.. {
                    faulty.arm(kind, nth);
                    let injected = faulty.injected();
                    let result = create_product(&catalog, &ctx, "c").await;
                    faulty.disarm();
                    if faulty.injected() == injected {
                        // Every operation of this kind went through.
                        assert!(nth > 3, "{kind:?}: too few operations to test");
                        result.unwrap();
                        assert_eq!(read(&ctx, "c").await, expected());
                        store.drop_array("c").unwrap();
                        break;
                    }
                    let error = result.expect_err("an injected fault must fail the statement");
                    assert!(
                        error.to_string().contains("injected"),
                        "{kind:?} #{nth}: {error}"
                    );
                    assert!(store.array("c").is_err(), "{kind:?} #{nth}: c exists");
                    assert_eq!(
                        faulty.list("arrays/").unwrap(),
                        files_before,
                        "{kind:?} #{nth}: files left behind"
                    );
                }
            }
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_name_in_use_fails_the_product_and_keeps_what_was_there() {
            let store = Store::in_memory();
            let (catalog, ctx) = operands(&store).await;
            create_product(&catalog, &ctx, "c").await.unwrap();
            let version = store.array("c").unwrap();
            let error = create_product(&catalog, &ctx, "c").await.unwrap_err();
            assert!(error.to_string().contains("'c'"), "{error}");
            assert_eq!(store.array("c").unwrap(), version);
            assert_eq!(read(&ctx, "c").await, expected());
        }
    }
}
