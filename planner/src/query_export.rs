//! `COPY (query) TO 'file.npy'`: a query's rows written as a dense NumPy array.
//!
//! The query returns coordinates and a value: `(i, j, v)` for a matrix, `(i, v)` for a
//! vector, `(x, y, z, v)` for a 3-d array (all columns but the last are 0-based integer
//! coordinates, the last is the value). The array's shape is one past the largest
//! coordinate along each dimension; cells the query does not list are zero, and a cell
//! listed twice is summed. The rows stream into storage's [`NpyCellWriter`], so memory
//! stays bounded whatever the query returns; a failure leaves no file behind.

use std::path::Path;

use datafusion::arrow::array::{Array, Float64Array, Int64Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Result, plan_err};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::{CopyToSource, CopyToStatement, Statement as DFStatement};
use datafusion::sql::sqlparser::ast::Query;
use futures::StreamExt;
use tessera_storage::io::NpyCellWriter;

use crate::error::{ErrorKind, blocking, storage_error, tessera_error};
use crate::file_access::{FileUse, check_file};

/// Whether a `COPY ... TO` statement writes a `.npy` file: `STORED AS NPY`, or no
/// `STORED AS` and a target ending in `.npy`.
pub(crate) fn is_npy_copy(copy: &CopyToStatement) -> bool {
    match &copy.stored_as {
        Some(format) => format.eq_ignore_ascii_case("npy"),
        None => Path::new(&copy.target)
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("npy")),
    }
}

/// Whether `tree` is `COPY (query) TO` a `.npy` file, which Tessera runs itself
/// ([`crate::session::execute`]) rather than through DataFusion's planner.
pub fn is_npy_query_copy(tree: &DFStatement) -> bool {
    matches!(
        tree,
        DFStatement::CopyTo(copy)
            if matches!(copy.source, CopyToSource::Query(_)) && is_npy_copy(copy)
    )
}

/// Runs `COPY (query) TO 'path'` for a `.npy` target; returns the number of rows written.
pub(crate) async fn copy_query_to_npy(
    ctx: &SessionContext,
    query: Box<Query>,
    copy: &CopyToStatement,
) -> Result<SendableRecordBatchStream> {
    let path = copy.target.clone();
    let what = format!("COPY (query) TO '{path}'");
    if !copy.partitioned_by.is_empty() || !copy.options.is_empty() {
        return plan_err!("{what}: a .npy file takes no PARTITIONED BY or OPTIONS");
    }
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
    let target = path.clone();
    let mut writer =
        blocking(move || NpyCellWriter::create(Path::new(&target), ndim).map_err(storage_error))
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
