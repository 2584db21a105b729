//! Tessera's `FlightSqlService`: statements and prepared statements run in the
//! caller's [`Session`]; GetFlightInfo runs them and DoGet streams the result.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::metadata::SqlInfoData;
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionCancelQueryRequest, ActionCancelQueryResult, ActionClosePreparedStatementRequest,
    ActionCreatePreparedStatementRequest, ActionCreatePreparedStatementResult, Any,
    CommandGetCatalogs, CommandGetDbSchemas, CommandGetSqlInfo, CommandGetTableTypes,
    CommandGetTables, CommandPreparedStatementQuery, CommandPreparedStatementUpdate,
    CommandStatementIngest, CommandStatementQuery, CommandStatementUpdate,
    DoPutPreparedStatementResult, ProstMessageExt, SqlInfo, TicketStatementQuery,
};
use arrow_flight::{
    Action, ActionType, CancelFlightInfoRequest, CancelFlightInfoResult, CancelStatus,
    FlightDescriptor, FlightEndpoint, FlightInfo, IpcMessage, SchemaAsIpc, Ticket,
};
use bytes::Bytes;
use datafusion::arrow::array::{Array, RecordBatch, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::ipc::writer::IpcWriteOptions;
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::common::collect;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;
use tessera_planner::ddl;
use tonic::{Code, Request, Response, Status};

use super::clients::{Caller, FlightClient, not_authorized};
use super::results::ResultStore;
use super::{coded_status, ingest, metadata, status};
use crate::activity::{BackendInfo, BackendKind};
use crate::edge::{Interrupt, QueryControl, dml_tag};
use crate::errors;
use crate::session::PreparedStatement;

/// Flight SQL statements are parsed with `?` placeholders numbered, as ADBC sends them.
const QMARK_PLACEHOLDERS: ddl::ParseOptions = ddl::ParseOptions {
    number_question_marks: true,
};
use crate::{Database, Session};

/// The action that cancels a query by its FlightInfo (Flight RPC's own; the Flight SQL
/// `CancelQuery` action is its deprecated twin and works too).
const CANCEL_FLIGHT_INFO: &str = "CancelFlightInfo";

/// `ActionCancelQueryResult.result`: the statement was cancelled.
const CANCEL_RESULT_CANCELLED: i32 = 1;
/// `ActionCancelQueryResult.result`: nothing left to cancel.
const CANCEL_RESULT_NOT_CANCELLABLE: i32 = 3;

/// A statement prepared by CreatePreparedStatement, with the parameter rows a DoPut
/// bound for its next execution.
pub(crate) struct FlightPrepared {
    statement: PreparedStatement,
    /// The statement's text (`pg_stat_activity.query`).
    text: String,
    bound: Mutex<Parameters>,
}

impl FlightPrepared {
    /// The parameters bound for this execution, taken: as ADBC and the other Flight SQL
    /// clients do, each execution is bound anew, and one without a bind has no values.
    fn take_bound(&self) -> Parameters {
        std::mem::take(&mut *self.bound.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// A statement with parameters runs only with a value for each: at least one row,
    /// and a column for every parameter.
    fn check_values(&self, parameters: &Parameters) -> Result<(), Status> {
        let wanted = self.statement.parameter_types().len();
        let given = if parameters.rows.is_empty() {
            0
        } else {
            parameters.types.len()
        };
        if given >= wanted {
            return Ok(());
        }
        Err(coded_status(
            Code::InvalidArgument,
            errors::PROTOCOL_VIOLATION,
            format!(
                "no value is bound for parameter ${}: bind the parameters (DoPut of \
                 CommandPreparedStatementQuery) before each execution",
                given + 1
            ),
        ))
    }
}

/// Rows of parameter values, and the types the client sent them as.
#[derive(Default)]
struct Parameters {
    rows: Vec<Vec<ScalarValue>>,
    types: Vec<Option<DataType>>,
}

/// The Flight SQL service.
pub(crate) struct TesseraFlightSql {
    database: Database,
    results: Arc<ResultStore>,
    statement_timeout: Option<Duration>,
    sql_info: SqlInfoData,
}

impl TesseraFlightSql {
    pub(crate) fn new(
        database: Database,
        results: Arc<ResultStore>,
        statement_timeout: Option<Duration>,
        max_connections: usize,
    ) -> Result<TesseraFlightSql> {
        Ok(TesseraFlightSql {
            database,
            results,
            statement_timeout,
            sql_info: metadata::sql_info(statement_timeout, max_connections)?,
        })
    }

    /// The results waiting for DoGet.
    pub(crate) fn results(&self) -> &Arc<ResultStore> {
        &self.results
    }

    /// Lists a statement of `call` in `pg_stat_activity` until the returned value drops;
    /// `pg_cancel_backend` of its pid cancels `control`.
    fn activity(
        &self,
        call: &CallInfo,
        text: &str,
        control: Arc<QueryControl>,
    ) -> crate::activity::CallActivity {
        let info = BackendInfo {
            kind: BackendKind::FlightSql,
            user: call.client.user.clone(),
            client_addr: call.addr.clone(),
            application_name: FLIGHT_APPLICATION_NAME.into(),
        };
        self.database
            .activity()
            .register_call(info, text, control, call.client.session.progress())
    }

    /// Runs `run` under a new ticket's interrupt (cancel requests, statement timeout)
    /// and keeps its result for DoGet; the statement is listed in `pg_stat_activity`
    /// as `text` until its result is read or dropped.
    async fn run_to_ticket<Fut>(
        &self,
        call: &CallInfo,
        text: &str,
        descriptor: FlightDescriptor,
        run: Fut,
    ) -> Result<Response<FlightInfo>, Status>
    where
        Fut: Future<Output = Result<SendableRecordBatchStream>>,
    {
        let client = &call.client;
        let (ticket, control) = self.results.start().map_err(|e| status(&e))?;
        let active = self.activity(call, text, Arc::clone(&control));
        let interrupt = control.interrupt(self.statement_timeout);
        let stream = match interrupt.run(run).await {
            Ok(stream) => stream,
            Err(e) => {
                self.results.finish(&ticket);
                return Err(status(&e));
            }
        };
        let schema = stream.schema();
        let stream = interrupt.stream(stream).map(move |batch| {
            let _ = &active;
            batch
        });
        let stream = Box::pin(RecordBatchStreamAdapter::new(schema.clone(), stream));
        self.results.stash(ticket.clone(), client.id, stream);
        let handle = TicketStatementQuery {
            statement_handle: ticket,
        };
        let info = FlightInfo::new()
            .try_with_schema(&schema)
            .map_err(|e| status(&e.into()))?
            .with_endpoint(
                FlightEndpoint::new().with_ticket(Ticket::new(handle.as_any().encode_to_vec())),
            )
            .with_descriptor(descriptor)
            .with_total_records(-1)
            .with_total_bytes(-1)
            .with_ordered(true);
        Ok(Response::new(info))
    }

    /// A statement that returns an update count, run under the statement timeout and
    /// listed in `pg_stat_activity` as `text` while it runs.
    async fn run_update<Fut>(&self, call: &CallInfo, text: &str, run: Fut) -> Result<i64, Status>
    where
        Fut: Future<Output = Result<i64>>,
    {
        let control = Arc::new(QueryControl::default());
        let _active = self.activity(call, text, Arc::clone(&control));
        control
            .interrupt(self.statement_timeout)
            .run(run)
            .await
            .map_err(|e| status(&e))
    }

    /// Cancels the statements behind a FlightInfo's tickets.
    fn cancel_info(&self, info: &FlightInfo) -> bool {
        let mut cancelled = false;
        for endpoint in &info.endpoint {
            let Some(ticket) = &endpoint.ticket else {
                continue;
            };
            let handle = Any::decode(&*ticket.ticket)
                .ok()
                .and_then(|any| any.unpack::<TicketStatementQuery>().ok().flatten());
            if let Some(handle) = handle {
                cancelled |= self.results.cancel(&handle.statement_handle);
            }
        }
        cancelled
    }
}

/// `pg_stat_activity.application_name` of a Flight SQL statement.
const FLIGHT_APPLICATION_NAME: &str = "Arrow Flight SQL";

/// The authenticated caller the gate put into the request.
pub(crate) fn caller<T>(request: &Request<T>) -> Result<Arc<FlightClient>, Status> {
    request
        .extensions()
        .get::<Caller>()
        .map(|c| c.0.clone())
        .ok_or_else(|| not_authorized("the call was not authenticated"))
}

/// Who makes a call: its client and address, for `pg_stat_activity`.
struct CallInfo {
    client: Arc<FlightClient>,
    addr: String,
}

impl CallInfo {
    fn of<T>(request: &Request<T>) -> Result<CallInfo, Status> {
        Ok(CallInfo {
            client: caller(request)?,
            addr: request
                .remote_addr()
                .map(|a| a.ip().to_string())
                .unwrap_or_default(),
        })
    }
}

fn empty_stream() -> SendableRecordBatchStream {
    Box::pin(RecordBatchStreamAdapter::new(
        Arc::new(Schema::empty()),
        futures::stream::empty(),
    ))
}

/// Runs a script of statements: all but the last to completion, the last as a stream.
async fn run_script(session: &Session, text: &str) -> Result<SendableRecordBatchStream> {
    let statements = ddl::parse(text)?;
    let count = statements.len();
    let mut last = None;
    for (n, statement) in statements.into_iter().enumerate() {
        let eager = dml_tag(&statement).is_some();
        let stream = session.execute_statement(statement).await?;
        if n + 1 < count {
            collect(stream).await?;
        } else {
            last = Some(settle(stream, eager).await?);
        }
    }
    Ok(last.unwrap_or_else(empty_stream))
}

/// DML and statements without rows run to completion now, so that their effect does
/// not wait for a DoGet that a client may never send; queries stay lazy streams.
async fn settle(
    stream: SendableRecordBatchStream,
    eager: bool,
) -> Result<SendableRecordBatchStream> {
    if !(eager || stream.schema().fields().is_empty()) {
        return Ok(stream);
    }
    let schema = stream.schema();
    let batches = collect(stream).await?;
    Ok(Box::pin(RecordBatchStreamAdapter::new(
        schema,
        futures::stream::iter(batches.into_iter().map(Ok)),
    )))
}

/// The update count of a finished statement: the sum of DML's `count` column, or -1
/// ("unknown", as Flight SQL says) for statements that report none.
async fn update_count(stream: SendableRecordBatchStream) -> Result<i64> {
    let schema = stream.schema();
    let batches = collect(stream).await?;
    let is_count = schema.fields().len() == 1
        && schema.field(0).name() == "count"
        && schema.field(0).data_type() == &DataType::UInt64;
    if !is_count {
        return Ok(-1);
    }
    let total: u64 = batches
        .iter()
        .filter_map(|b| b.column(0).as_any().downcast_ref::<UInt64Array>())
        .map(|c| c.iter().flatten().sum::<u64>())
        .sum();
    Ok(i64::try_from(total).unwrap_or(i64::MAX))
}

/// Runs a prepared statement once per parameter row (once without parameters when none
/// are bound); the results follow one another in one stream.
async fn execute_bound(
    session: Session,
    prepared: Arc<FlightPrepared>,
    parameters: Parameters,
) -> Result<SendableRecordBatchStream> {
    let eager = prepared
        .statement
        .statement()
        .is_some_and(|s| dml_tag(s).is_some());
    let mut rows = parameters.rows.into_iter();
    let types = parameters.types;
    let first = rows.next().unwrap_or_default();
    let stream = session
        .execute_prepared(&prepared.statement, first, &types)
        .await?;
    let first = settle(stream, eager).await?;
    if rows.len() == 0 {
        return Ok(first);
    }
    let schema = first.schema();
    let rest = futures::stream::iter(rows)
        .then(move |row| {
            let (session, prepared, types) = (session.clone(), prepared.clone(), types.clone());
            async move {
                let stream = session
                    .execute_prepared(&prepared.statement, row, &types)
                    .await?;
                settle(stream, eager).await
            }
        })
        .try_flatten();
    Ok(Box::pin(RecordBatchStreamAdapter::new(
        schema,
        first.chain(rest),
    )))
}

/// A schema as Flight SQL carries it in prepared statement results.
fn schema_bytes(schema: &Schema) -> Result<Bytes, Status> {
    let message: std::result::Result<IpcMessage, _> =
        SchemaAsIpc::new(schema, &IpcWriteOptions::default()).try_into();
    message
        .map(|IpcMessage(bytes)| bytes)
        .map_err(|e| status(&e.into()))
}

/// The parameter types of a prepared statement as a schema (`$1`, `$2`, ...; `Null`
/// where the statement does not tell).
fn parameter_schema(prepared: &PreparedStatement) -> Schema {
    Schema::new(
        prepared
            .parameter_types()
            .iter()
            .enumerate()
            .map(|(n, ty)| {
                Field::new(
                    format!("${}", n + 1),
                    ty.clone().unwrap_or(DataType::Null),
                    true,
                )
            })
            .collect::<Vec<_>>(),
    )
}

/// The rows of the parameter batches a DoPut carries.
async fn read_parameters(stream: PeekableFlightDataStream) -> Result<Parameters, Status> {
    let (schema, batches) = ingest::read_batches(stream).await?;
    let types = schema
        .map(|s| {
            s.fields()
                .iter()
                .map(|f| Some(f.data_type().clone()))
                .collect()
        })
        .unwrap_or_default();
    let mut rows = Vec::new();
    for batch in &batches {
        for row in 0..batch.num_rows() {
            let values = batch
                .columns()
                .iter()
                .map(|column| ScalarValue::try_from_array(column.as_ref(), row))
                .collect::<Result<Vec<_>>>()
                .map_err(|e| status(&e))?;
            rows.push(values);
        }
    }
    Ok(Parameters { rows, types })
}

/// Streams a result as Flight data; an error ends the stream with its status.
fn flight_stream(
    schema: SchemaRef,
    batches: impl Stream<Item = Result<RecordBatch>> + Send + 'static,
) -> <TesseraFlightSql as FlightService>::DoGetStream {
    let batches = batches.map_err(|e| FlightError::Tonic(Box::new(status(&e))));
    Box::pin(
        FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(batches)
            .map_err(Status::from),
    )
}

/// One record batch as a DoGet response.
fn one_batch(
    batch: Result<RecordBatch, DataFusionError>,
) -> Result<Response<<TesseraFlightSql as FlightService>::DoGetStream>, Status> {
    let batch = batch.map_err(|e| status(&e))?;
    let schema = batch.schema();
    Ok(Response::new(flight_stream(
        schema,
        futures::stream::iter([Ok(batch)]),
    )))
}

/// A FlightInfo whose ticket is the command itself (metadata requests).
fn command_info(
    command: impl ProstMessageExt,
    schema: &Schema,
    descriptor: FlightDescriptor,
) -> Result<Response<FlightInfo>, Status> {
    let ticket = Ticket::new(command.as_any().encode_to_vec());
    let info = FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| status(&e.into()))?
        .with_endpoint(FlightEndpoint::new().with_ticket(ticket))
        .with_descriptor(descriptor);
    Ok(Response::new(info))
}

#[tonic::async_trait]
impl FlightSqlService for TesseraFlightSql {
    type FlightService = TesseraFlightSql;

    // ---- statements --------------------------------------------------------------------

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let call = CallInfo::of(&request)?;
        let session = call.client.session.clone();
        let descriptor = request.into_inner();
        let text = query.query.trim().to_string();
        self.run_to_ticket(&call, &text, descriptor, async move {
            run_script(&session, &query.query).await
        })
        .await
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<arrow_flight::Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let client = caller(&request)?;
        let (schema, stream) = self
            .results
            .take(&ticket.statement_handle, client.id)
            .ok_or_else(|| {
                Status::not_found("no result for this ticket: it was already read, or expired")
            })?;
        Ok(Response::new(flight_stream(schema, stream)))
    }

    async fn do_put_statement_update(
        &self,
        command: CommandStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let call = CallInfo::of(&request)?;
        let session = call.client.session.clone();
        self.run_update(&call, command.query.trim(), async {
            let stream = run_script(&session, &command.query).await?;
            update_count(stream).await
        })
        .await
    }

    // ---- prepared statements -----------------------------------------------------------

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let client = caller(&request)?;
        let parsed = ddl::parse_with(&query.query, QMARK_PLACEHOLDERS).map_err(|e| status(&e))?;
        let statement = client
            .session
            .prepare_parsed(parsed, &[])
            .await
            .map_err(|e| status(&e))?;
        let dataset_schema = schema_bytes(statement.schema())?;
        let parameter_schema = schema_bytes(&parameter_schema(&statement))?;
        let handle = client
            .add_prepared(FlightPrepared {
                statement,
                text: query.query.trim().to_string(),
                bound: Mutex::new(Parameters::default()),
            })
            .map_err(|e| status(&e))?;
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: handle,
            dataset_schema,
            parameter_schema,
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        query: ActionClosePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<(), Status> {
        let client = caller(&request)?;
        if client.close_prepared(&query.prepared_statement_handle) {
            Ok(())
        } else {
            Err(Status::not_found("no prepared statement with this handle"))
        }
    }

    /// Binds parameters for the next execution: each row of the batches is one set of
    /// values.
    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let client = caller(&request)?;
        let prepared = client.prepared(&query.prepared_statement_handle)?;
        let parameters = read_parameters(request.into_inner()).await?;
        *prepared.bound.lock().unwrap_or_else(|e| e.into_inner()) = parameters;
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(query.prepared_statement_handle),
        })
    }

    async fn get_flight_info_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let call = CallInfo::of(&request)?;
        let prepared = call.client.prepared(&query.prepared_statement_handle)?;
        let parameters = prepared.take_bound();
        prepared.check_values(&parameters)?;
        let session = call.client.session.clone();
        let text = prepared.text.clone();
        self.run_to_ticket(
            &call,
            &text,
            request.into_inner(),
            execute_bound(session, prepared, parameters),
        )
        .await
    }

    /// Runs the statement once per parameter row the DoPut carries (the batch form
    /// behind `executemany`; no rows, no run), or, when it carries no parameter columns,
    /// with the parameters bound just before; and sums the counts.
    async fn do_put_prepared_statement_update(
        &self,
        query: CommandPreparedStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let call = CallInfo::of(&request)?;
        let prepared = call.client.prepared(&query.prepared_statement_handle)?;
        let sent = read_parameters(request.into_inner()).await?;
        let bound = prepared.take_bound();
        // Go's client sends an empty record without columns when nothing is bound.
        let (parameters, runs) = if sent.types.is_empty() {
            prepared.check_values(&bound)?;
            let runs = bound.rows.len().max(1);
            (bound, runs)
        } else {
            if !sent.rows.is_empty() {
                prepared.check_values(&sent)?;
            }
            let runs = sent.rows.len();
            (sent, runs)
        };
        let session = call.client.session.clone();
        let text = prepared.text.clone();
        self.run_update(&call, &text, async move {
            let mut rows = parameters.rows.into_iter();
            // Zero runs changed zero rows; runs that report no count leave it unknown.
            let mut total: Option<i64> = (runs == 0).then_some(0);
            for _ in 0..runs {
                let row = rows.next().unwrap_or_default();
                let stream = session
                    .execute_prepared(&prepared.statement, row, &parameters.types)
                    .await?;
                let count = update_count(stream).await?;
                if count >= 0 {
                    total = Some(total.unwrap_or(0).saturating_add(count));
                }
            }
            Ok(total.unwrap_or(-1))
        })
        .await
    }

    // ---- bulk load ---------------------------------------------------------------------

    async fn do_put_statement_ingest(
        &self,
        command: CommandStatementIngest,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let call = CallInfo::of(&request)?;
        let control = Arc::new(QueryControl::default());
        let text = format!("ingest into {}", command.table);
        let _active = self.activity(&call, &text, Arc::clone(&control));
        let interrupt: Interrupt = control.interrupt(self.statement_timeout);
        ingest::ingest(
            &call.client.session,
            self.database.catalog(),
            command,
            request.into_inner(),
            interrupt,
        )
        .await
    }

    // ---- metadata ----------------------------------------------------------------------

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        command_info(query, &self.sql_info.schema(), request.into_inner())
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        _request: Request<arrow_flight::Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        one_batch(
            query
                .into_builder(&self.sql_info)
                .build()
                .map_err(metadata::built),
        )
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        command_info(query, &schema, request.into_inner())
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<arrow_flight::Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let client = caller(&request)?;
        one_batch(metadata::catalogs(&client.session, query))
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        command_info(query, &schema, request.into_inner())
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<arrow_flight::Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let client = caller(&request)?;
        one_batch(metadata::db_schemas(&client.session, query))
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        command_info(query, &schema, request.into_inner())
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<arrow_flight::Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let client = caller(&request)?;
        one_batch(metadata::tables(&client.session, self.database.catalog(), query).await)
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        command_info(query, &schema, request.into_inner())
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        _request: Request<arrow_flight::Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        one_batch(metadata::table_types(query))
    }

    // ---- cancel ------------------------------------------------------------------------

    async fn do_action_cancel_query(
        &self,
        query: ActionCancelQueryRequest,
        _request: Request<Action>,
    ) -> Result<ActionCancelQueryResult, Status> {
        let info = FlightInfo::decode(&*query.info)
            .map_err(|e| Status::invalid_argument(format!("CancelQuery: bad FlightInfo: {e}")))?;
        let result = if self.cancel_info(&info) {
            CANCEL_RESULT_CANCELLED
        } else {
            CANCEL_RESULT_NOT_CANCELLABLE
        };
        Ok(ActionCancelQueryResult { result })
    }

    async fn do_action_fallback(
        &self,
        request: Request<Action>,
    ) -> Result<Response<<Self as FlightService>::DoActionStream>, Status> {
        let action = request.into_inner();
        if action.r#type != CANCEL_FLIGHT_INFO {
            return Err(Status::unimplemented(format!(
                "unknown action '{}'",
                action.r#type
            )));
        }
        let cancel = CancelFlightInfoRequest::decode(&*action.body)
            .map_err(|e| Status::invalid_argument(format!("CancelFlightInfo: {e}")))?;
        let info = cancel
            .info
            .ok_or_else(|| Status::invalid_argument("CancelFlightInfo without a FlightInfo"))?;
        let status = if self.cancel_info(&info) {
            CancelStatus::Cancelled
        } else {
            CancelStatus::NotCancellable
        };
        let body = CancelFlightInfoResult::new(status).encode_to_vec();
        Ok(Response::new(Box::pin(futures::stream::iter([Ok(
            arrow_flight::Result::new(body),
        )]))))
    }

    async fn list_custom_actions(&self) -> Option<Vec<Result<ActionType, Status>>> {
        Some(vec![Ok(ActionType {
            r#type: CANCEL_FLIGHT_INFO.to_string(),
            description: "Cancels the statement behind a FlightInfo.\n
                Request Message: CancelFlightInfoRequest\n
                Response Message: CancelFlightInfoResult"
                .into(),
        })])
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}
