//! Tables stored in the data directory: Parquet files under `tables/<id>/`, listed (with
//! their sizes and checksums) in the table catalog ([`crate::table_files`]). A scan
//! ([`StoredTableScanExec`]) reads exactly the files the catalog names, each checked
//! against its checksum before it is decoded; an `INSERT` writes new files (fsync'd) and
//! then commits a catalog naming them, so it is atomic.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use datafusion::arrow::array::{AsArray, RecordBatchOptions};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::ipc::reader::FileReader;
use datafusion::arrow::ipc::writer::FileWriter;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::stats::Precision;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{
    Column, Constraints, DFSchema, DataFusionError, Result, SchemaExt, Statistics,
    exec_datafusion_err, exec_err, not_impl_err,
};
use datafusion::datasource::sink::{DataSink, DataSinkExec};
use datafusion::execution::memory_pool::MemoryConsumer;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{Expr, TableType, cast, when};
use datafusion::parquet::arrow::ProjectionMask;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType, SchedulingType};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PlanProperties,
};
use futures::StreamExt;

use crate::catalog::{constraints_from_meta, constraints_to_meta};
use crate::dml::{MATCHED, RowChange, matched_expr};
use crate::error::{ErrorKind, tessera_error};
use crate::table_files::{DataFile, StoredTableMeta, TableFiles};

/// A table whose rows are Parquet files in the data directory.
#[derive(Debug)]
pub struct StoredTable {
    files: Arc<TableFiles>,
    name: String,
    id: u64,
    schema: SchemaRef,
    constraints: Constraints,
    default_sql: BTreeMap<String, String>,
    defaults: OnceLock<HashMap<String, Expr>>,
}

impl StoredTable {
    /// Writes `batches` as a new table's first files. The table is not in the catalog
    /// until the caller commits the returned metadata.
    pub(crate) fn create(
        files: Arc<TableFiles>,
        name: &str,
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
        constraints: Constraints,
        defaults: HashMap<String, Expr>,
    ) -> Result<(StoredTable, StoredTableMeta)> {
        let mut default_sql = BTreeMap::new();
        for (column, expr) in &defaults {
            let sql = datafusion::sql::unparser::expr_to_sql(expr).map_err(|e| {
                DataFusionError::Plan(format!(
                    "the default of column {column} cannot be stored: {e}"
                ))
            })?;
            default_sql.insert(column.clone(), sql.to_string());
        }
        let id = files.next_id()?;
        let data = files.write_files(id, &schema, batches.into_iter().map(Ok))?;
        let meta = StoredTableMeta {
            id,
            schema_ipc: encode_schema(&schema)?,
            files: data,
            defaults: default_sql.clone(),
            constraints: constraints_to_meta(&constraints),
            checksum: 0,
        };
        let defaults_lock = OnceLock::new();
        let _ = defaults_lock.set(defaults);
        Ok((
            StoredTable {
                files,
                name: name.to_string(),
                id,
                schema,
                constraints,
                default_sql,
                defaults: defaults_lock,
            },
            meta,
        ))
    }

    /// The stored table `name` as the catalog describes it.
    pub(crate) fn open(files: Arc<TableFiles>, name: &str) -> Result<StoredTable> {
        let meta = files
            .stored(name)
            .ok_or_else(|| exec_datafusion_err!("table '{name}' is not in the table catalog"))?;
        let schema = decode_schema(&meta.schema_ipc).map_err(|e| {
            tessera_error(
                ErrorKind::DataCorrupted,
                format!(
                    "table '{name}': its schema in {}/catalog.json cannot be read: {e}",
                    files.location()
                ),
            )
        })?;
        Ok(StoredTable {
            files,
            name: name.to_string(),
            id: meta.id,
            schema,
            constraints: constraints_from_meta(&meta.constraints),
            default_sql: meta.defaults,
            defaults: OnceLock::new(),
        })
    }

    /// Directory id under `tables/`.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Column defaults as SQL, as stored.
    pub(crate) fn default_sql(&self) -> BTreeMap<String, String> {
        self.default_sql.clone()
    }

    /// Whether the column defaults have been planned in this process.
    pub(crate) fn defaults_restored(&self) -> bool {
        self.default_sql.is_empty() || self.defaults.get().is_some()
    }

    /// Sets the planned column defaults (once).
    pub(crate) fn set_defaults(&self, defaults: HashMap<String, Expr>) {
        let _ = self.defaults.set(defaults);
    }

    /// The data files as the catalog lists them now.
    fn data_files(&self) -> Result<Vec<DataFile>> {
        match self.files.stored(&self.name).filter(|m| m.id == self.id) {
            Some(meta) => Ok(meta.files),
            None => Err(exec_datafusion_err!("table '{}' was dropped", self.name)),
        }
    }
}

#[async_trait]
impl TableProvider for StoredTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn constraints(&self) -> Option<&Constraints> {
        Some(&self.constraints)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn get_column_default(&self, column: &str) -> Option<&Expr> {
        self.defaults.get().and_then(|d| d.get(column))
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let files = self.data_files()?;
        if files.is_empty() {
            let schema = match projection {
                Some(p) => Arc::new(self.schema.project(p)?),
                None => self.schema.clone(),
            };
            return Ok(Arc::new(EmptyExec::new(schema)));
        }
        let partitions = state.config().target_partitions().max(1);
        Ok(Arc::new(StoredTableScanExec::try_new(
            self.files.clone(),
            self.name.clone(),
            self.id,
            self.schema.clone(),
            projection.cloned(),
            files,
            partitions,
            limit,
        )?))
    }

    async fn insert_into(
        &self,
        _state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
        insert_op: InsertOp,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.schema
            .logically_equivalent_names_and_types(&input.schema())?;
        let overwrite = match insert_op {
            InsertOp::Append => false,
            InsertOp::Overwrite => true,
            InsertOp::Replace => {
                return not_impl_err!("INSERT OR REPLACE is not supported for stored tables");
            }
        };
        let sink = ParquetAppendSink {
            files: self.files.clone(),
            name: self.name.clone(),
            id: self.id,
            schema: self.schema.clone(),
            overwrite,
        };
        Ok(Arc::new(DataSinkExec::new(input, Arc::new(sink), None)))
    }

    /// `DELETE FROM table [WHERE ...]`: see [`crate::dml`].
    async fn delete_from(
        &self,
        state: &dyn Session,
        filters: Vec<Expr>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.rewrite(state, RowChange::Delete, filters)
    }

    /// `UPDATE table SET ... [WHERE ...]`: see [`crate::dml`].
    async fn update(
        &self,
        state: &dyn Session,
        assignments: Vec<(String, Expr)>,
        filters: Vec<Expr>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.rewrite(state, RowChange::Update(assignments), filters)
    }
}

impl StoredTable {
    /// The plan of an `UPDATE` or `DELETE`: a scan of the files the catalog lists now,
    /// a projection of `(matched, new row)` and a sink that writes the rows kept as new
    /// files and swaps them for the files read in one commit.
    fn rewrite(
        &self,
        state: &dyn Session,
        change: RowChange,
        filters: Vec<Expr>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let files = self.data_files()?;
        let df_schema = DFSchema::try_from(self.schema.as_ref().clone())?;
        let matched = matched_expr(filters);
        let mut exprs = vec![(
            state.create_physical_expr(matched.clone(), &df_schema)?,
            MATCHED.to_string(),
        )];
        for field in self.schema.fields() {
            let column = Expr::Column(Column::new_unqualified(field.name()));
            let value = match change.assignment(field.name()) {
                // CASE evaluates the new value on matching rows only, so a row the
                // statement does not touch cannot fail it.
                Some(new) => when(
                    matched.clone(),
                    cast(new.clone(), field.data_type().clone()),
                )
                .otherwise(column)?,
                None => column,
            };
            exprs.push((
                state.create_physical_expr(value, &df_schema)?,
                field.name().clone(),
            ));
        }
        let read: Vec<String> = files.iter().map(|f| f.name.clone()).collect();
        let scan: Arc<dyn ExecutionPlan> = if files.is_empty() {
            Arc::new(EmptyExec::new(self.schema.clone()))
        } else {
            let partitions = state.config().target_partitions().max(1);
            Arc::new(StoredTableScanExec::try_new(
                self.files.clone(),
                self.name.clone(),
                self.id,
                self.schema.clone(),
                None,
                files,
                partitions,
                None,
            )?)
        };
        let projected: Arc<dyn ExecutionPlan> = Arc::new(ProjectionExec::try_new(exprs, scan)?);
        // The sink reads partition 0 only.
        let input: Arc<dyn ExecutionPlan> = if projected.output_partitioning().partition_count() > 1
        {
            Arc::new(CoalescePartitionsExec::new(projected))
        } else {
            projected
        };
        let mut sink_fields = vec![Arc::new(Field::new(MATCHED, DataType::Boolean, false))];
        sink_fields.extend(self.schema.fields().iter().cloned());
        let sink = TableRewriteSink {
            files: self.files.clone(),
            name: self.name.clone(),
            id: self.id,
            table_schema: self.schema.clone(),
            schema: Arc::new(Schema::new(sink_fields)),
            read,
            delete: matches!(change, RowChange::Delete),
            statement: change.statement(&self.name),
        };
        Ok(Arc::new(DataSinkExec::new(input, Arc::new(sink), None)))
    }
}

/// Reads a stored table's data files, verified, one group of files per partition.
#[derive(Debug)]
pub struct StoredTableScanExec {
    files: Arc<TableFiles>,
    name: String,
    id: u64,
    /// The table's columns.
    schema: SchemaRef,
    /// The output columns.
    projected: SchemaRef,
    projection: Option<Vec<usize>>,
    /// Files to read, by output partition.
    groups: Vec<Arc<Vec<DataFile>>>,
    limit: Option<usize>,
    props: Arc<PlanProperties>,
}

impl StoredTableScanExec {
    #[allow(clippy::too_many_arguments)] // one scan's parts, from `StoredTable::scan` only
    fn try_new(
        files: Arc<TableFiles>,
        name: String,
        id: u64,
        schema: SchemaRef,
        projection: Option<Vec<usize>>,
        data: Vec<DataFile>,
        partitions: usize,
        limit: Option<usize>,
    ) -> Result<Self> {
        let projected = match &projection {
            Some(p) => Arc::new(schema.project(p)?),
            None => schema.clone(),
        };
        let n = partitions.min(data.len()).max(1);
        let mut groups = vec![Vec::new(); n];
        for (k, file) in data.into_iter().enumerate() {
            groups[k % n].push(file);
        }
        let props = PlanProperties::new(
            EquivalenceProperties::new(projected.clone()),
            Partitioning::UnknownPartitioning(n),
            EmissionType::Incremental,
            Boundedness::Bounded,
        )
        .with_scheduling_type(SchedulingType::Cooperative);
        Ok(Self {
            files,
            name,
            id,
            schema,
            projected,
            projection,
            groups: groups.into_iter().map(Arc::new).collect(),
            limit,
            props: Arc::new(props),
        })
    }
}

impl DisplayAs for StoredTableScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let files: usize = self.groups.iter().map(|g| g.len()).sum();
        write!(
            f,
            "StoredTableScanExec: table={} files={files} partitions={}",
            self.name,
            self.groups.len()
        )?;
        if let Some(p) = &self.projection {
            let names: Vec<&str> = p
                .iter()
                .map(|&c| self.schema.field(c).name().as_str())
                .collect();
            write!(f, " projection=[{}]", names.join(", "))?;
        }
        if let Some(n) = self.limit {
            write!(f, " limit={n}")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for StoredTableScanExec {
    fn name(&self) -> &str {
        "StoredTableScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.is_empty() {
            Ok(self)
        } else {
            exec_err!("StoredTableScanExec has no children")
        }
    }

    fn partition_statistics(&self, partition: Option<usize>) -> Result<Arc<Statistics>> {
        let mut s = Statistics::new_unknown(&self.projected);
        let files: Vec<&DataFile> = match partition {
            Some(p) => self
                .groups
                .get(p)
                .map(|g| g.iter().collect())
                .unwrap_or_default(),
            None => self.groups.iter().flat_map(|g| g.iter()).collect(),
        };
        // Inexact: the files are checked only when read, so no answer comes from here.
        let rows: u64 = files.iter().map(|f| f.rows).sum();
        let bytes: u64 = files.iter().map(|f| f.bytes).sum();
        let rows = usize::try_from(rows).unwrap_or(usize::MAX);
        s.num_rows = Precision::Inexact(self.limit.map_or(rows, |n| rows.min(n)));
        s.total_byte_size = Precision::Inexact(usize::try_from(bytes).unwrap_or(usize::MAX));
        Ok(Arc::new(s))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let Some(group) = self.groups.get(partition).cloned() else {
            return exec_err!(
                "StoredTableScanExec: partition {partition} of {}",
                self.groups.len()
            );
        };
        let reservation = Arc::new(std::sync::Mutex::new(
            MemoryConsumer::new(format!("StoredTableScanExec[{partition}]"))
                .register(context.memory_pool()),
        ));
        let batch_size = context.session_config().batch_size();
        let (files, name, id) = (self.files.clone(), self.name.clone(), self.id);
        let (projection, projected) = (self.projection.clone(), self.projected.clone());
        let group_len = group.len();
        let stream = futures::stream::iter(0..group_len)
            .then(move |k| {
                let (files, name, group) = (files.clone(), name.clone(), group.clone());
                let reservation = reservation.clone();
                async move {
                    let bytes = crate::error::blocking(move || {
                        let file = &group[k];
                        let bytes = files.read_file(&name, id, file)?;
                        Ok((bytes, file.name.clone()))
                    })
                    .await?;
                    // The file is held while it is decoded.
                    reservation
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .try_resize(bytes.0.len())?;
                    Ok::<_, DataFusionError>(bytes)
                }
            })
            .flat_map({
                let name = self.name.clone();
                let location = self.files.location().to_string();
                move |r| {
                    let decoded = r.and_then(|(bytes, file)| {
                        let shown = format!("{location}/{id}/{file}");
                        let name = name.clone();
                        let damaged = move |e: DataFusionError| {
                            tessera_error(
                                ErrorKind::DataCorrupted,
                                format!("table '{name}': data file {shown} cannot be decoded: {e}"),
                            )
                        };
                        decode_file(
                            bytes,
                            projection.as_deref(),
                            &projected,
                            batch_size,
                            damaged,
                        )
                    });
                    let batches: Box<dyn Iterator<Item = Result<RecordBatch>> + Send> =
                        match decoded {
                            Ok(batches) => batches,
                            Err(e) => Box::new(std::iter::once(Err(e))),
                        };
                    futures::stream::iter(batches)
                }
            });
        let stream: SendableRecordBatchStream = Box::pin(RecordBatchStreamAdapter::new(
            self.projected.clone(),
            stream,
        ));
        Ok(stream)
    }
}

/// Decodes a verified Parquet file's `projection` columns as batches of `schema`, one
/// batch at a time; `damaged` says what a decoding error means.
fn decode_file(
    bytes: bytes::Bytes,
    projection: Option<&[usize]>,
    schema: &SchemaRef,
    batch_size: usize,
    damaged: impl Fn(DataFusionError) -> DataFusionError + Send + 'static,
) -> Result<Box<dyn Iterator<Item = Result<RecordBatch>> + Send>> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .map_err(|e| damaged(DataFusionError::from(e)))?;
    let mask = match projection {
        Some(p) => ProjectionMask::roots(builder.parquet_schema(), p.iter().copied()),
        None => ProjectionMask::all(),
    };
    let reader = builder
        .with_projection(mask)
        .with_batch_size(batch_size)
        .build()
        .map_err(|e| damaged(DataFusionError::from(e)))?;
    let schema = schema.clone();
    Ok(Box::new(reader.map(move |batch| {
        let batch = batch.map_err(|e| damaged(DataFusionError::from(e)))?;
        let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
        RecordBatch::try_new_with_options(schema.clone(), batch.columns().to_vec(), &options)
            .map_err(|e| damaged(DataFusionError::from(e)))
    })))
}

/// Appends (or, for `INSERT OVERWRITE`, replaces) a stored table's rows as new files.
#[derive(Debug)]
struct ParquetAppendSink {
    files: Arc<TableFiles>,
    name: String,
    id: u64,
    schema: SchemaRef,
    overwrite: bool,
}

impl DisplayAs for ParquetAppendSink {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ParquetAppendSink: table={}", self.name)
    }
}

#[async_trait]
impl DataSink for ParquetAppendSink {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    async fn write_all(
        &self,
        mut data: SendableRecordBatchStream,
        _context: &Arc<TaskContext>,
    ) -> Result<u64> {
        // Batches go to a blocking thread that writes the files; the channel is bounded
        // so the writer holds back the query when the disk is slower.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<RecordBatch>>(2);
        let (files, id, schema) = (self.files.clone(), self.id, self.schema.clone());
        let writer =
            tokio::task::spawn_blocking(move || files.write_files(id, &schema, rx.into_iter()));
        let mut failed = None;
        while let Some(batch) = data.next().await {
            if let Err(e) = &batch {
                failed = Some(e.to_string());
            }
            if tx.send(batch).is_err() || failed.is_some() {
                break;
            }
        }
        drop(tx);
        let written = writer
            .await
            .map_err(|e| DataFusionError::Internal(format!("table writer failed: {e}")))??;
        let names: Vec<String> = written.iter().map(|f| f.name.clone()).collect();
        if let Some(e) = failed {
            self.files.delete_unreferenced(self.id, &names);
            return Err(exec_datafusion_err!(
                "INSERT INTO {} was interrupted: {e}",
                self.name
            ));
        }
        let rows: u64 = written.iter().map(|f| f.rows).sum();
        if written.is_empty() && !self.overwrite {
            return Ok(0);
        }
        let mut replaced = Vec::new();
        let overwrite = self.overwrite;
        let committed = self.files.commit_files(&self.name, self.id, |list| {
            if overwrite {
                replaced = std::mem::take(list);
            }
            list.extend(written);
            Ok(())
        });
        if let Err(e) = committed {
            self.files.delete_unreferenced(self.id, &names);
            return Err(e);
        }
        let replaced: Vec<String> = replaced.into_iter().map(|f| f.name).collect();
        self.files.delete_unreferenced(self.id, &replaced);
        Ok(rows)
    }
}

/// Writes the rows an `UPDATE` or `DELETE` keeps as new files of the table and, if any
/// row matched, replaces the files it read with them in one catalog commit. Its input
/// is `(matched, row)`; it returns the number of rows matched.
#[derive(Debug)]
struct TableRewriteSink {
    files: Arc<TableFiles>,
    name: String,
    id: u64,
    /// The table's columns.
    table_schema: SchemaRef,
    /// `(matched, the table's columns)`: the input's.
    schema: SchemaRef,
    /// The files the scan reads, all replaced by the commit.
    read: Vec<String>,
    delete: bool,
    /// `UPDATE t` / `DELETE FROM t`, for messages.
    statement: String,
}

impl DisplayAs for TableRewriteSink {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let op = if self.delete { "delete" } else { "update" };
        write!(
            f,
            "TableRewriteSink: table={} op={op} files={}",
            self.name,
            self.read.len()
        )
    }
}

impl TableRewriteSink {
    /// The rows of `batch` to write, and how many of its rows matched.
    fn kept(&self, batch: &RecordBatch) -> Result<(RecordBatch, u64)> {
        let matched = batch.column(0).as_boolean();
        let count = matched.true_count() as u64;
        let columns = batch.columns()[1..].to_vec();
        let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
        let rows = RecordBatch::try_new_with_options(self.table_schema.clone(), columns, &options)?;
        if self.delete && count > 0 {
            let keep = datafusion::arrow::compute::not(matched)?;
            return Ok((filter_record_batch(&rows, &keep)?, count));
        }
        Ok((rows, count))
    }
}

#[async_trait]
impl DataSink for TableRewriteSink {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    async fn write_all(
        &self,
        mut data: SendableRecordBatchStream,
        _context: &Arc<TaskContext>,
    ) -> Result<u64> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<RecordBatch>>(2);
        let (files, id, schema) = (self.files.clone(), self.id, self.table_schema.clone());
        let writer =
            tokio::task::spawn_blocking(move || files.write_files(id, &schema, rx.into_iter()));
        let mut matched = 0u64;
        let mut failed = None;
        while let Some(batch) = data.next().await {
            let kept = batch.and_then(|b| self.kept(&b));
            let kept = match kept {
                Ok((rows, n)) => {
                    matched += n;
                    Ok(rows)
                }
                Err(e) => {
                    failed = Some(e.to_string());
                    Err(e)
                }
            };
            if tx.send(kept).is_err() || failed.is_some() {
                break;
            }
        }
        drop(tx);
        let written = writer
            .await
            .map_err(|e| DataFusionError::Internal(format!("table writer failed: {e}")))?;
        let written = match (written, failed) {
            (Ok(written), None) => written,
            // The writer deleted its files; the error it reports is the input's.
            (Err(e), None) => return Err(e),
            (written, Some(e)) => {
                if let Ok(written) = written {
                    let names: Vec<String> = written.into_iter().map(|f| f.name).collect();
                    self.files.delete_unreferenced(self.id, &names);
                }
                return Err(exec_datafusion_err!(
                    "{} failed; nothing was changed: {e}",
                    self.statement
                ));
            }
        };
        let names: Vec<String> = written.iter().map(|f| f.name.clone()).collect();
        if matched == 0 {
            self.files.delete_unreferenced(self.id, &names);
            return Ok(0);
        }
        let (read, statement) = (&self.read, &self.statement);
        let committed = self.files.commit_files(&self.name, self.id, |list| {
            let before = list.len();
            list.retain(|f| !read.contains(&f.name));
            if before - list.len() != read.len() {
                return Err(tessera_error(
                    ErrorKind::SerializationFailure,
                    format!(
                        "{statement}: the table was changed by another statement meanwhile; \
                         nothing was changed, retry"
                    ),
                ));
            }
            list.extend(written);
            Ok(())
        });
        if let Err(e) = committed {
            self.files.delete_unreferenced(self.id, &names);
            return Err(e);
        }
        self.files.delete_unreferenced(self.id, read);
        Ok(matched)
    }
}

/// A schema as a hex-encoded Arrow IPC file with no batches.
fn encode_schema(schema: &SchemaRef) -> Result<String> {
    let mut bytes = Vec::new();
    {
        let mut w = FileWriter::try_new(&mut bytes, schema)?;
        w.finish()?;
    }
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn decode_schema(hex: &str) -> Result<SchemaRef> {
    if !hex.len().is_multiple_of(2) || !hex.is_ascii() {
        return Err(exec_datafusion_err!("not a hex string"));
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|e| exec_datafusion_err!("not a hex string: {e}"))?;
    let reader = FileReader::try_new(std::io::Cursor::new(bytes), None)?;
    Ok(reader.schema())
}
