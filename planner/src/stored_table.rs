//! Tables stored in the data directory: Parquet files under `tables/<id>/`, listed in
//! the table catalog (`tables/catalog.json`). A scan reads exactly the files the catalog
//! names; an `INSERT` writes one new file (temporary name, fsync, rename) and then
//! commits a catalog naming it, so it is atomic.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::ipc::reader::FileReader;
use datafusion::arrow::ipc::writer::FileWriter;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{
    Constraints, DataFusionError, Result, SchemaExt, exec_datafusion_err, not_impl_err,
};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::datasource::sink::{DataSink, DataSinkExec};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{Expr, TableType};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan};
use futures::StreamExt;

use crate::catalog::{
    StoredTableMeta, TableFiles, constraints_from_meta, constraints_to_meta, io_error, sync_dir,
};

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
    /// Writes `batches` as a new table's first file. The table is not in the catalog
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
        let dir = files.table_dir(id);
        fs::create_dir_all(&dir).map_err(|e| io_error(&dir, e))?;
        let mut data = Vec::new();
        if batches.iter().any(|b| b.num_rows() > 0) {
            let file = new_file_name();
            write_parquet_file(&dir, &file, &schema, batches.into_iter().map(Ok))?;
            data.push(file);
        }
        sync_dir(&dir)?;
        sync_dir(files.dir())?;
        let meta = StoredTableMeta {
            id,
            schema_ipc: encode_schema(&schema)?,
            files: data,
            defaults: default_sql.clone(),
            constraints: constraints_to_meta(&constraints),
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
        let schema = decode_schema(&meta.schema_ipc)
            .map_err(|e| exec_datafusion_err!("corrupt schema of table '{name}': {e}"))?;
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

    fn paths(&self) -> Result<Vec<PathBuf>> {
        let meta = self.files.stored(&self.name).filter(|m| m.id == self.id);
        let Some(meta) = meta else {
            return Err(exec_datafusion_err!("table '{}' was dropped", self.name));
        };
        let dir = self.files.table_dir(self.id);
        Ok(meta.files.iter().map(|f| dir.join(f)).collect())
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
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let paths = self.paths()?;
        if paths.is_empty() {
            let schema = match projection {
                Some(p) => Arc::new(self.schema.project(p)?),
                None => self.schema.clone(),
            };
            return Ok(Arc::new(EmptyExec::new(schema)));
        }
        let urls = paths
            .iter()
            .map(|p| ListingTableUrl::parse(p.to_string_lossy()))
            .collect::<Result<Vec<_>>>()?;
        let options =
            ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
        let config = ListingTableConfig::new_with_multi_paths(urls)
            .with_listing_options(options)
            .with_schema(self.schema.clone());
        ListingTable::try_new(config)?
            .scan(state, projection, filters, limit)
            .await
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
}

/// Appends (or, for `INSERT OVERWRITE`, replaces) a stored table's rows as one new file.
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
        let dir = self.files.table_dir(self.id);
        let file = new_file_name();
        // Batches go to a blocking thread that writes the file; the channel is bounded
        // so the writer holds back the query when the disk is slower.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<RecordBatch>>(2);
        let (writer_dir, writer_file, schema) = (dir.clone(), file.clone(), self.schema.clone());
        let writer = tokio::task::spawn_blocking(move || {
            write_parquet_file(&writer_dir, &writer_file, &schema, rx.into_iter())
        });
        let mut failed = None;
        while let Some(batch) = data.next().await {
            let stop = batch.is_err();
            if tx.send(batch).is_err() || stop {
                failed = Some(());
                break;
            }
        }
        drop(tx);
        let written = writer
            .await
            .map_err(|e| DataFusionError::Internal(format!("table writer failed: {e}")))?;
        let rows = match written {
            Ok(rows) => rows,
            Err(e) => return Err(e),
        };
        if failed.is_some() {
            let _ = fs::remove_file(dir.join(&file));
            return Err(exec_datafusion_err!(
                "INSERT INTO {} was interrupted",
                self.name
            ));
        }
        if rows == 0 && !self.overwrite {
            let _ = fs::remove_file(dir.join(&file));
            return Ok(0);
        }
        let mut replaced = Vec::new();
        let overwrite = self.overwrite;
        let committed = self.files.commit_files(&self.name, self.id, |list| {
            if overwrite {
                replaced = std::mem::take(list);
            }
            list.push(file.clone());
        });
        if let Err(e) = committed {
            let _ = fs::remove_file(dir.join(&file));
            return Err(e);
        }
        for old in replaced {
            let _ = fs::remove_file(dir.join(old));
        }
        Ok(rows)
    }
}

/// A file name no other write of this process or an earlier one uses.
fn new_file_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("part-{nanos}-{n}.parquet")
}

/// Writes `batches` to `dir/file` through a temporary file that is fsync'd and renamed
/// into place; returns the number of rows. An error from `batches` removes the file.
pub(crate) fn write_parquet_file(
    dir: &Path,
    file: &str,
    schema: &SchemaRef,
    batches: impl Iterator<Item = Result<RecordBatch>>,
) -> Result<u64> {
    let tmp = dir.join(format!(".tmp-{file}"));
    let target = dir.join(file);
    let result = (|| -> Result<u64> {
        let out = fs::File::create(&tmp).map_err(|e| io_error(&tmp, e))?;
        let mut writer = ArrowWriter::try_new(out, schema.clone(), None)?;
        let mut rows = 0u64;
        for batch in batches {
            let batch = batch?;
            rows += batch.num_rows() as u64;
            writer.write(&batch)?;
        }
        let out = writer.into_inner()?;
        out.sync_all().map_err(|e| io_error(&tmp, e))?;
        fs::rename(&tmp, &target).map_err(|e| io_error(&target, e))?;
        sync_dir(dir)?;
        Ok(rows)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
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
