//! Prepared statements, and parameter rows built from Rust values.

use std::sync::Arc;

use arrow_array::{
    Array, ArrayRef, BooleanArray, Float32Array, Float64Array, Int32Array, Int64Array, RecordBatch,
    StringArray, StructArray, new_null_array,
};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, CommandPreparedStatementQuery,
    CommandPreparedStatementUpdate, DoPutPreparedStatementResult, ProstMessageExt,
};
use arrow_flight::{Action, PutResult};
use arrow_schema::{DataType, Field, FieldRef, SchemaRef};
use bytes::Bytes;
use futures::TryStreamExt;
use prost::Message;

use crate::client::{Client, update_count};
use crate::error::Result;
use crate::stream::QueryStream;

/// A statement prepared on the server by [`Client::prepare`], run any number of times
/// with parameter values.
///
/// Parameters come as a record batch whose columns are `$1`, `$2`, ... in order (their
/// names do not matter), one row per set of values: [`Parameters`] builds a one-row
/// batch from Rust values. A batch of several rows runs the statement once per row;
/// for [`execute`](PreparedStatement::execute) that is the batch form (one call for
/// many inserts, ADBC's `executemany`).
///
/// The statement lives on the server until [`close`](PreparedStatement::close); it is
/// not closed when this value is dropped. (Tessera also forgets it with the session, 8
/// hours after the client's last call.)
///
/// ```no_run
/// # async fn run(client: tessera_client::Client) -> tessera_client::Result<()> {
/// use tessera_client::Parameters;
///
/// let mut statement = client.prepare("SELECT v FROM m WHERE i = $1 AND j = $2").await?;
/// let cell = statement.query(Parameters::new().push(3_i64).push(4_i64)).await?;
/// statement.close().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct PreparedStatement {
    client: Client,
    handle: Bytes,
    dataset_schema: SchemaRef,
    parameter_schema: SchemaRef,
    /// Parameter values are bound on the server (by a query) and must be cleared before
    /// the statement runs without any.
    bound: bool,
}

impl PreparedStatement {
    pub(crate) fn new(
        client: Client,
        handle: Bytes,
        dataset_schema: SchemaRef,
        parameter_schema: SchemaRef,
    ) -> PreparedStatement {
        PreparedStatement {
            client,
            handle,
            dataset_schema,
            parameter_schema,
            bound: false,
        }
    }

    /// The schema of the statement's result (empty for statements without one).
    pub fn dataset_schema(&self) -> SchemaRef {
        self.dataset_schema.clone()
    }

    /// The parameters' types, `$1`, `$2`, ... in order; Tessera says `Null` for a
    /// parameter whose type the statement does not determine.
    pub fn parameter_schema(&self) -> SchemaRef {
        self.parameter_schema.clone()
    }

    /// Runs the statement with `parameters` (or none) and returns its whole result; with
    /// several parameter rows, the results of each follow one another.
    pub async fn query(
        &mut self,
        parameters: impl Into<Option<RecordBatch>>,
    ) -> Result<Vec<RecordBatch>> {
        self.query_stream(parameters).await?.try_collect().await
    }

    /// Like [`query`](PreparedStatement::query), as a stream.
    pub async fn query_stream(
        &mut self,
        parameters: impl Into<Option<RecordBatch>>,
    ) -> Result<QueryStream> {
        self.bind(parameters.into()).await?;
        let command = CommandPreparedStatementQuery {
            prepared_statement_handle: self.handle.clone(),
        };
        let info = self.client.flight_info(command).await?;
        QueryStream::start(self.client.clone(), info).await
    }

    /// Runs a statement without a result (an `INSERT`, say) once per row of
    /// `parameters`, or once without parameters, and returns the rows it changed in all.
    pub async fn execute(&mut self, parameters: impl Into<Option<RecordBatch>>) -> Result<u64> {
        let command = CommandPreparedStatementUpdate {
            prepared_statement_handle: self.handle.clone(),
        };
        let answer = match parameters.into() {
            Some(rows) => self.client.put_batches(&command, rows).await?,
            None => {
                self.bind(None).await?;
                self.client.put_command(&command).await?
            }
        };
        update_count(answer)
    }

    /// Closes the statement on the server.
    pub async fn close(self) -> Result<()> {
        let request = ActionClosePreparedStatementRequest {
            prepared_statement_handle: self.handle.clone(),
        };
        let action = Action::new("ClosePreparedStatement", request.as_any().encode_to_vec());
        self.client.action(action).await?;
        Ok(())
    }

    /// Binds parameter rows on the server for the next run (none: clears earlier ones).
    async fn bind(&mut self, parameters: Option<RecordBatch>) -> Result<()> {
        let command = CommandPreparedStatementQuery {
            prepared_statement_handle: self.handle.clone(),
        };
        let answer = match parameters {
            Some(rows) => {
                let answer = self.client.put_batches(&command, rows).await?;
                self.bound = true;
                answer
            }
            None if self.bound => {
                let answer = self.client.put_command(&command).await?;
                self.bound = false;
                answer
            }
            None => return Ok(()),
        };
        self.update_handle(&answer)
    }

    /// A server may answer a bind with a new handle for the statement.
    fn update_handle(&mut self, answer: &PutResult) -> Result<()> {
        if answer.app_metadata.is_empty() {
            return Ok(());
        }
        let result = DoPutPreparedStatementResult::decode(&*answer.app_metadata)?;
        if let Some(handle) = result.prepared_statement_handle {
            self.handle = handle;
        }
        Ok(())
    }
}

/// One row of parameter values, `$1`, `$2`, ... in the order they are pushed.
///
/// ```
/// use tessera_client::Parameters;
/// use tessera_client::arrow_array::RecordBatch;
///
/// let row = Parameters::new().push(7_i64).push("seven").push(None::<f64>);
/// let batch: Option<RecordBatch> = row.into();
/// let batch = batch.unwrap();
/// assert_eq!((batch.num_rows(), batch.num_columns()), (1, 3));
/// assert_eq!(batch.schema().field(1).name(), "$2");
/// ```
#[derive(Debug, Clone, Default)]
pub struct Parameters {
    columns: Vec<ArrayRef>,
}

impl Parameters {
    /// No values yet.
    pub fn new() -> Parameters {
        Parameters::default()
    }

    /// Appends the next parameter's value.
    #[must_use]
    pub fn push(mut self, value: impl ParameterValue) -> Parameters {
        self.columns.push(value.into_array());
        self
    }

    /// The number of values.
    pub fn len(&self) -> usize {
        self.columns.len()
    }

    /// True when there are no values.
    pub fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }
}

/// The values as a one-row record batch with columns `$1`, `$2`, ...; no values are no
/// batch.
impl From<Parameters> for Option<RecordBatch> {
    fn from(parameters: Parameters) -> Option<RecordBatch> {
        if parameters.is_empty() {
            return None;
        }
        let columns: Vec<(FieldRef, ArrayRef)> = parameters
            .columns
            .into_iter()
            .enumerate()
            .map(|(n, array)| {
                let field = Field::new(format!("${}", n + 1), array.data_type().clone(), true);
                (Arc::new(field), array)
            })
            .collect();
        // Every column is one value long and its field nullable: the conversion holds.
        Some(RecordBatch::from(StructArray::from(columns)))
    }
}

/// A Rust value that can be a statement's parameter.
pub trait ParameterValue {
    /// The Arrow type of the value (also of its `None`).
    fn data_type() -> DataType
    where
        Self: Sized;

    /// The value as a one-element Arrow array.
    fn into_array(self) -> ArrayRef;
}

macro_rules! parameter_value {
    ($rust:ty, $array:ty, $arrow:expr) => {
        impl ParameterValue for $rust {
            fn data_type() -> DataType {
                $arrow
            }

            fn into_array(self) -> ArrayRef {
                Arc::new(<$array>::from(vec![self]))
            }
        }
    };
}

parameter_value!(bool, BooleanArray, DataType::Boolean);
parameter_value!(i32, Int32Array, DataType::Int32);
parameter_value!(i64, Int64Array, DataType::Int64);
parameter_value!(f32, Float32Array, DataType::Float32);
parameter_value!(f64, Float64Array, DataType::Float64);
parameter_value!(&str, StringArray, DataType::Utf8);
parameter_value!(String, StringArray, DataType::Utf8);

/// `None` is SQL's `NULL`, of the inner type.
impl<T: ParameterValue> ParameterValue for Option<T> {
    fn data_type() -> DataType {
        T::data_type()
    }

    fn into_array(self) -> ArrayRef {
        match self {
            Some(value) => value.into_array(),
            None => new_null_array(&T::data_type(), 1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float64Type, Int64Type};

    #[test]
    fn parameters_become_one_row_named_by_position() {
        let batch: Option<RecordBatch> = Parameters::new()
            .push(42_i64)
            .push(Some(0.5))
            .push(None::<i64>)
            .push(String::from("x"))
            .into();
        let batch = batch.unwrap();
        assert_eq!(batch.num_rows(), 1);
        let names: Vec<&str> = batch
            .schema_ref()
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        assert_eq!(names, ["$1", "$2", "$3", "$4"]);
        assert_eq!(batch.column(0).as_primitive::<Int64Type>().value(0), 42);
        assert_eq!(batch.column(1).as_primitive::<Float64Type>().value(0), 0.5);
        assert!(batch.column(2).is_null(0));
        assert_eq!(batch.column(2).data_type(), &DataType::Int64);
        assert_eq!(batch.column(3).as_string::<i32>().value(0), "x");

        let none: Option<RecordBatch> = Parameters::new().into();
        assert!(none.is_none());
    }
}
