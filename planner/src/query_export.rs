//! `COPY (query) TO 'file'` in the array formats Tessera reads: a query's rows written
//! as a dense NumPy array (`.npy`, or the one member of an `.npz` archive), as a
//! Matrix Market coordinate file (`.mtx`) or as a Zarr v3 array (`.zarr`, a directory).
//!
//! The query returns coordinates and a value: `(i, j, v)` for a matrix, `(i, v)` for a
//! vector, `(x, y, z, v)` for a 3-d array (all columns but the last are 0-based integer
//! coordinates, the last is the value). The array's shape is one past the largest
//! coordinate along each dimension. In `.npy` and `.npz`, cells the query does not list
//! are zero and a cell listed twice is summed; `.mtx` takes two coordinates and lists
//! the rows as entries, in the order the query returns them (readers sum a position
//! listed twice). An `.npz` member is named `arr_0`, as `numpy.savez` names its first
//! array, or by the option `member` (`OPTIONS (member 'x')`). A Zarr array is `float64`
//! with zstd, zero cells unlisted as in `.npy` and chunks of zeros not written; its
//! chunks are the blocks `CREATE MATRIX` would give a matrix of its shape
//! ([`zarr_chunk_shape`]), and an existing target is refused. The rows stream into
//! storage's writers ([`NpyCellWriter`], [`MtxCellWriter`], [`ZarrCellWriter`]), so
//! memory stays bounded whatever the query returns; a failure leaves no file behind.
//!
//! CSV, the other format Tessera reads, is DataFusion's own `COPY ... TO 'f.csv'`.

use std::path::Path;

use datafusion::arrow::array::{Array, Float64Array, Int64Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Result, plan_err};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::{CopyToSource, CopyToStatement, Statement as DFStatement};
use datafusion::sql::sqlparser::ast::{Query, Value};
use futures::StreamExt;
use tessera_storage::io::{MtxCellWriter, NpyCellWriter, ZarrCellWriter};

use crate::array_write::{AUTO_BLOCK_CELLS, auto_block_size};

use crate::error::{ErrorKind, blocking, storage_error, tessera_error};
use crate::file_access::{FileUse, check_file};

/// The member an `.npz` file gets without the `member` option (`numpy.savez`'s name
/// for its first positional array).
const DEFAULT_NPZ_MEMBER: &str = "arr_0";

/// An array file format a query's cells can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ArrayFile {
    Npy,
    Npz,
    Mtx,
    Zarr,
}

impl ArrayFile {
    fn from_name(name: &str) -> Option<ArrayFile> {
        match name.to_ascii_lowercase().as_str() {
            "npy" => Some(ArrayFile::Npy),
            "npz" => Some(ArrayFile::Npz),
            "mtx" => Some(ArrayFile::Mtx),
            "zarr" => Some(ArrayFile::Zarr),
            _ => None,
        }
    }

    /// `STORED AS npy | npz | mtx | zarr`, or no `STORED AS` and a target with that
    /// extension.
    fn of(copy: &CopyToStatement) -> Option<ArrayFile> {
        match &copy.stored_as {
            Some(format) => ArrayFile::from_name(format),
            None => Path::new(&copy.target)
                .extension()
                .and_then(|e| e.to_str())
                .and_then(ArrayFile::from_name),
        }
    }

    fn extension(self) -> &'static str {
        match self {
            ArrayFile::Npy => ".npy",
            ArrayFile::Npz => ".npz",
            ArrayFile::Mtx => ".mtx",
            ArrayFile::Zarr => ".zarr",
        }
    }
}

/// Whether a `COPY ... TO` statement writes an array file (`.npy`, `.npz`, `.mtx`,
/// `.zarr`).
pub(crate) fn is_array_file_copy(copy: &CopyToStatement) -> bool {
    ArrayFile::of(copy).is_some()
}

/// Whether `tree` is `COPY (query) TO` an array file, which Tessera runs itself
/// ([`crate::session::execute`]) rather than through DataFusion's planner.
pub fn is_array_query_copy(tree: &DFStatement) -> bool {
    matches!(
        tree,
        DFStatement::CopyTo(copy)
            if matches!(copy.source, CopyToSource::Query(_)) && is_array_file_copy(copy)
    )
}

/// Where a query's cells go.
enum CellWriter {
    Npy(NpyCellWriter),
    Npz(NpyCellWriter, String),
    Mtx(MtxCellWriter),
    Zarr(ZarrCellWriter),
}

impl CellWriter {
    fn push(&mut self, index: &[u64], value: f64) -> tessera_storage::Result<()> {
        match self {
            CellWriter::Npy(w) | CellWriter::Npz(w, _) => w.push(index, value),
            CellWriter::Zarr(w) => w.push(index, value),
            CellWriter::Mtx(w) => match index {
                [i, j] => w.push(*i, *j, value),
                _ => Err(tessera_storage::StorageError::Internal(
                    "a Matrix Market cell needs two coordinates".into(),
                )),
            },
        }
    }

    fn commit(self) -> tessera_storage::Result<()> {
        match self {
            CellWriter::Npy(w) => w.commit().map(drop),
            CellWriter::Npz(w, member) => w.commit_npz(&member).map(drop),
            CellWriter::Mtx(w) => w.commit().map(drop),
            CellWriter::Zarr(w) => w.commit(zarr_chunk_shape).map(drop),
        }
    }
}

/// The chunk shape of a query's Zarr array of shape `dims`: for a matrix the block size
/// `CREATE MATRIX` picks ([`auto_block_size`]); for another rank about
/// [`AUTO_BLOCK_CELLS`] cells, the same length along each dimension (a million along
/// one, 100 along each of three), balanced so the chunks are nearly equal and never
/// longer than the shape.
fn zarr_chunk_shape(dims: &[u64]) -> Vec<u64> {
    if let [rows, cols] = dims {
        let (r, c) = auto_block_size(*rows, *cols);
        return vec![r, c];
    }
    let side = (AUTO_BLOCK_CELLS as f64)
        .powf(1.0 / dims.len().max(1) as f64)
        .round()
        .max(1.0) as u64;
    dims.iter()
        .map(|&d| {
            let d = d.max(1);
            d.div_ceil(d.div_ceil(side))
        })
        .collect()
}

/// The `.npz` member the options name, and whether any other option is given.
fn npz_member(copy: &CopyToStatement, what: &str) -> Result<String> {
    let mut member = DEFAULT_NPZ_MEMBER.to_string();
    for (key, value) in &copy.options {
        let key = key.to_ascii_lowercase();
        if key != "member" && key != "format.member" {
            return plan_err!("{what}: unknown option '{key}'; an .npz file takes 'member'");
        }
        member = match value {
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => s.clone(),
            other => other.to_string(),
        };
    }
    let valid = !member.is_empty()
        && member
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
    if !valid {
        return Err(tessera_error(
            ErrorKind::InvalidParameterValue,
            format!(
                "{what}: member '{member}' is not a member name (letters, digits, '_', '-', '.')"
            ),
        ));
    }
    Ok(member)
}

/// Runs `COPY (query) TO 'path'` for an array file target; returns the number of rows
/// written.
pub(crate) async fn copy_query_to_array_file(
    ctx: &SessionContext,
    query: Box<Query>,
    copy: &CopyToStatement,
) -> Result<SendableRecordBatchStream> {
    let path = copy.target.clone();
    let what = format!("COPY (query) TO '{path}'");
    let Some(format) = ArrayFile::of(copy) else {
        return plan_err!("{what}: not an array file (.npy, .npz, .mtx, .zarr)");
    };
    if !copy.partitioned_by.is_empty() {
        return plan_err!(
            "{what}: a {} file takes no PARTITIONED BY",
            format.extension()
        );
    }
    let member = match format {
        ArrayFile::Npz => Some(npz_member(copy, &what)?),
        _ if !copy.options.is_empty() => {
            return plan_err!("{what}: a {} file takes no OPTIONS", format.extension());
        }
        _ => None,
    };
    check_file(&ctx.state_ref().read(), &path, FileUse::Write)?;
    let df = crate::session::query_frame(ctx, query, &what).await?;
    let fields: Vec<(String, DataType)> = df
        .schema()
        .fields()
        .iter()
        .map(|f| (f.name().clone(), f.data_type().clone()))
        .collect();
    let Some(((value_name, value_type), coordinates)) = fields.split_last() else {
        return plan_err!("{what}: the query returns no columns");
    };
    if coordinates.is_empty() {
        return plan_err!(
            "{what}: the query must return coordinates and a value, such as (i, j, v); \
             it returns only {value_name}"
        );
    }
    for (name, ty) in coordinates {
        if !ty.is_integer() {
            return plan_err!(
                "{what}: coordinate column {name} is {ty}; every column but the last \
                 (the value) must be an integer coordinate"
            );
        }
    }
    if !value_type.is_numeric() && *value_type != DataType::Boolean {
        return plan_err!("{what}: the value column {value_name} is {value_type}, not a number");
    }

    let ndim = coordinates.len();
    if format == ArrayFile::Mtx && ndim != 2 {
        return plan_err!(
            "{what}: a Matrix Market file holds a matrix: the query must return (i, j, v), \
             not {ndim} coordinates"
        );
    }
    let target = path.clone();
    let mut writer = blocking(move || {
        let target = Path::new(&target);
        let writer = match (format, member) {
            (ArrayFile::Mtx, _) => MtxCellWriter::create(target).map(CellWriter::Mtx),
            (ArrayFile::Zarr, _) => ZarrCellWriter::create(target, ndim).map(CellWriter::Zarr),
            (ArrayFile::Npz, Some(member)) => {
                NpyCellWriter::create(target, ndim).map(|w| CellWriter::Npz(w, member))
            }
            _ => NpyCellWriter::create(target, ndim).map(CellWriter::Npy),
        };
        writer.map_err(storage_error)
    })
    .await?;
    let mut stream = df.execute_stream().await?;
    let mut rows = 0u64;
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        let mut columns = Vec::with_capacity(ndim);
        for (n, (name, _)) in coordinates.iter().enumerate() {
            let array = cast(batch.column(n), &DataType::Int64)?;
            let Some(ints) = array.as_any().downcast_ref::<Int64Array>().cloned() else {
                return plan_err!("{what}: coordinate column {name} is not an integer");
            };
            columns.push(ints);
        }
        let values = cast(batch.column(ndim), &DataType::Float64)?;
        let Some(values) = values.as_any().downcast_ref::<Float64Array>().cloned() else {
            return plan_err!("{what}: the value column {value_name} is not a number");
        };
        let first_row = rows;
        rows += batch.num_rows() as u64;
        let (names, what) = (
            coordinates.iter().map(|c| c.0.clone()).collect::<Vec<_>>(),
            what.clone(),
        );
        let value_name = value_name.clone();
        writer = blocking(move || {
            let mut index = vec![0u64; ndim];
            for row in 0..values.len() {
                let place = first_row + row as u64 + 1;
                for (n, column) in columns.iter().enumerate() {
                    let x = if column.is_null(row) {
                        -1
                    } else {
                        column.value(row)
                    };
                    index[n] = u64::try_from(x).map_err(|_| {
                        tessera_error(
                            ErrorKind::InvalidParameterValue,
                            format!(
                                "{what}: row {place}: coordinate {} is {}; coordinates are \
                                 0-based and not NULL",
                                names[n],
                                if column.is_null(row) {
                                    "NULL".to_string()
                                } else {
                                    x.to_string()
                                }
                            ),
                        )
                    })?;
                }
                if values.is_null(row) {
                    return Err(tessera_error(
                        ErrorKind::InvalidParameterValue,
                        format!("{what}: row {place}: the value {value_name} is NULL"),
                    ));
                }
                writer
                    .push(&index, values.value(row))
                    .map_err(storage_error)?;
            }
            Ok(writer)
        })
        .await?;
    }
    blocking(move || writer.commit().map_err(storage_error)).await?;
    crate::session::count_stream(rows)
}
