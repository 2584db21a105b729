//! The client: statements, prepared statements and loads, each one Flight SQL call
//! (or two) on a shared HTTP/2 connection.

use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::sql::{
    ActionCreatePreparedStatementRequest, ActionCreatePreparedStatementResult, Any,
    CommandStatementQuery, CommandStatementUpdate, DoPutUpdateResult, ProstMessageExt,
};
use arrow_flight::{Action, FlightData, FlightDescriptor, FlightEndpoint, FlightInfo, PutResult};
use arrow_schema::{ArrowError, Schema};
use futures::stream::BoxStream;
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::connect::{ClientBuilder, Credentials};
use crate::error::{Error, Result};
use crate::load::{self, FailableUploads, LoadMode};
use crate::prepared::PreparedStatement;
use crate::stream::QueryStream;

/// The generated Flight client, with the caller's credentials on every request.
pub(crate) type Flight =
    FlightServiceClient<InterceptedService<FailableUploads<Channel>, Credentials>>;

/// A connection to a Tessera server (or any Flight SQL server) over Arrow Flight SQL.
///
/// Cloning is cheap; clones share the connection and the session (its `SET` state and
/// prepared statements), and calls from several tasks may run at once.
///
/// ```no_run
/// # async fn run() -> tessera_client::Result<()> {
/// use tessera_client::Client;
///
/// let client = Client::connect("http://127.0.0.1:50051").await?;
/// client.execute("CREATE TABLE t (a BIGINT)").await?;
/// assert_eq!(client.execute("INSERT INTO t VALUES (1), (2)").await?, 2);
/// let batches = client.query("SELECT sum(a) FROM t").await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    flight: Flight,
    endpoint: Arc<str>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl Client {
    pub(crate) fn new(flight: Flight, endpoint: Arc<str>) -> Client {
        Client { flight, endpoint }
    }

    /// Connects to `url` with the default options: no credentials, no TLS. The URL is
    /// `http://host:port` (or Flight's `grpc://host:port`); Tessera's default is
    /// `http://127.0.0.1:50051`. See [`builder`](Client::builder) for the rest.
    pub async fn connect(url: impl Into<String>) -> Result<Client> {
        ClientBuilder::new(url).connect().await
    }

    /// Options for a connection to `url`: credentials, TLS, limits.
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(url)
    }

    /// The URL this client is connected to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Runs `sql` and returns its whole result. Several statements separated by `;` run
    /// in order; the result is the last one's. Use [`query_stream`](Client::query_stream)
    /// for results too large to hold, or to know the schema of an empty result.
    pub async fn query(&self, sql: &str) -> Result<Vec<RecordBatch>> {
        self.query_stream(sql).await?.try_collect().await
    }

    /// Runs `sql` and returns its result as a stream of record batches, fetched as they
    /// are read. The schema is known before the first batch.
    ///
    /// ```no_run
    /// # async fn run(client: tessera_client::Client) -> tessera_client::Result<()> {
    /// use futures::TryStreamExt;
    ///
    /// let mut result = client.query_stream("SELECT i, j, v FROM matmul(a, b)").await?;
    /// println!("columns: {:?}", result.schema().fields());
    /// while let Some(batch) = result.try_next().await? {
    ///     println!("{} rows", batch.num_rows());
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn query_stream(&self, sql: &str) -> Result<QueryStream> {
        let command = CommandStatementQuery {
            query: sql.to_string(),
            transaction_id: None,
        };
        let info = self.flight_info(command).await?;
        QueryStream::start(self.clone(), info).await
    }

    /// Runs `sql` (DDL, DML, `SET`, several statements separated by `;`) and returns the
    /// number of rows it inserted, updated or deleted; 0 for statements that report no
    /// count, such as DDL.
    pub async fn execute(&self, sql: &str) -> Result<u64> {
        let command = CommandStatementUpdate {
            query: sql.to_string(),
            transaction_id: None,
        };
        let result = self.put_command(&command).await?;
        update_count(result)
    }

    /// Prepares `sql`, whose parameters are `$1`, `$2`, ... (or `?`), on the server.
    /// The statement stays there until [`PreparedStatement::close`].
    pub async fn prepare(&self, sql: &str) -> Result<PreparedStatement> {
        let request = ActionCreatePreparedStatementRequest {
            query: sql.to_string(),
            transaction_id: None,
        };
        let action = Action::new("CreatePreparedStatement", request.as_any().encode_to_vec());
        let body = self.action(action).await?;
        let result: ActionCreatePreparedStatementResult =
            Any::decode(&*body)?.unpack()?.ok_or_else(|| {
                Error::protocol("CreatePreparedStatement answered with another message")
            })?;
        Ok(PreparedStatement::new(
            self.clone(),
            result.prepared_statement_handle,
            ipc_schema(result.dataset_schema)?,
            ipc_schema(result.parameter_schema)?,
        ))
    }

    /// Loads cells into an existing array: `batch` has the columns `i`, `j`, `v` (by
    /// name, else by position; integer and float types are cast to the array's). The
    /// load is all or nothing: a cell outside the array fails it. Returns the cells
    /// loaded.
    ///
    /// ```no_run
    /// # async fn run(client: tessera_client::Client) -> tessera_client::Result<()> {
    /// use std::sync::Arc;
    /// use tessera_client::arrow_array::{Float64Array, Int64Array, RecordBatch};
    ///
    /// client.execute("CREATE MATRIX m (2, 2)").await?;
    /// // The identity: m[0, 0] = m[1, 1] = 1.
    /// let cells = RecordBatch::try_from_iter([
    ///     ("i", Arc::new(Int64Array::from(vec![0, 1])) as _),
    ///     ("j", Arc::new(Int64Array::from(vec![0, 1])) as _),
    ///     ("v", Arc::new(Float64Array::from(vec![1.0, 1.0])) as _),
    /// ])?;
    /// assert_eq!(client.load_array("m", cells).await?, 2);
    /// # Ok(()) }
    /// ```
    pub async fn load_array(&self, array: &str, batch: RecordBatch) -> Result<u64> {
        self.load_stream(array, LoadMode::Append, futures::stream::iter([Ok(batch)]))
            .await
    }

    /// Loads `batch` into a table: creates it with the batch's columns, appends to it,
    /// or replaces it, as `mode` says. Returns the rows loaded.
    pub async fn load_table(&self, table: &str, batch: RecordBatch, mode: LoadMode) -> Result<u64> {
        self.load_stream(table, mode, futures::stream::iter([Ok(batch)]))
            .await
    }

    /// Loads a stream of record batches (all with one schema) into a table or array
    /// (arrays take [`LoadMode::Append`] only), sending each batch as it comes. If the
    /// stream fails, the load is abandoned and nothing of it is written; the stream's
    /// error is returned.
    pub async fn load_stream<S>(&self, target: &str, mode: LoadMode, batches: S) -> Result<u64>
    where
        S: Stream<Item = Result<RecordBatch, ArrowError>> + Send + 'static,
    {
        let result = load::upload(self.flight.clone(), target, mode, batches).await?;
        update_count(result)
    }

    /// GetFlightInfo for a Flight SQL command.
    pub(crate) async fn flight_info(&self, command: impl ProstMessageExt) -> Result<FlightInfo> {
        let descriptor = FlightDescriptor::new_cmd(command.as_any().encode_to_vec());
        Ok(self
            .flight
            .clone()
            .get_flight_info(descriptor)
            .await?
            .into_inner())
    }

    /// DoGet of one endpoint, decoded into record batches.
    pub(crate) async fn fetch(
        &self,
        endpoint: FlightEndpoint,
    ) -> Result<BoxStream<'static, Result<RecordBatch>>> {
        let ticket = endpoint
            .ticket
            .ok_or_else(|| Error::protocol("a FlightInfo endpoint without a ticket"))?;
        let data = self
            .flight
            .clone()
            .do_get(ticket)
            .await?
            .into_inner()
            .map_err(arrow_flight::error::FlightError::from);
        Ok(
            arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(data)
                .map_err(Error::from)
                .boxed(),
        )
    }

    /// DoPut of a command without data; returns the server's first answer.
    pub(crate) async fn put_command(&self, command: &impl ProstMessageExt) -> Result<PutResult> {
        let descriptor = FlightDescriptor::new_cmd(command.as_any().encode_to_vec());
        let data = FlightData::new().with_descriptor(descriptor);
        let mut answers = self
            .flight
            .clone()
            .do_put(futures::stream::iter([data]))
            .await?
            .into_inner();
        answers
            .message()
            .await?
            .ok_or_else(|| Error::protocol("DoPut ended without an answer"))
    }

    /// DoPut of a command with a record batch (parameter rows).
    pub(crate) async fn put_batches(
        &self,
        command: &impl ProstMessageExt,
        batch: RecordBatch,
    ) -> Result<PutResult> {
        let descriptor = FlightDescriptor::new_cmd(command.as_any().encode_to_vec());
        load::put(
            self.flight.clone(),
            descriptor,
            futures::stream::iter([Ok(batch)]),
        )
        .await?
        .ok_or_else(|| Error::protocol("DoPut ended without an answer"))
    }

    /// DoAction; returns the body of the first result.
    pub(crate) async fn action(&self, action: Action) -> Result<bytes::Bytes> {
        let mut results = self.flight.clone().do_action(action).await?.into_inner();
        let first = results.message().await?;
        // The rest (there should be none) is read so that a late error surfaces.
        while results.message().await?.is_some() {}
        Ok(first.map(|r| r.body).unwrap_or_default())
    }
}

/// The update count in a DoPut's answer; "unknown" (-1) is 0.
pub(crate) fn update_count(result: PutResult) -> Result<u64> {
    let count = DoPutUpdateResult::decode(&*result.app_metadata)?.record_count;
    Ok(u64::try_from(count).unwrap_or(0))
}

/// A schema as Flight SQL sends it in IPC form; empty bytes are the empty schema.
fn ipc_schema(bytes: bytes::Bytes) -> Result<Arc<Schema>> {
    if bytes.is_empty() {
        return Ok(Arc::new(Schema::empty()));
    }
    Ok(Arc::new(Schema::try_from(arrow_flight::IpcMessage(bytes))?))
}
