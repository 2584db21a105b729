//! One client connection: its [`Session`], its PostgreSQL settings, and pgwire's
//! handlers for the startup, simple query, extended query and COPY messages.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use datafusion::arrow::array::{RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::streaming::StreamingTable;
use datafusion::common::{DataFusionError, ScalarValue, TableReference};
use datafusion::dataframe::DataFrameWriteOptions;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use futures::{Sink, SinkExt, Stream, StreamExt};
use pgwire::api::auth::mechanism::AuthMechanismFactory;
use pgwire::api::auth::sasl::SaslMechanisms;
use pgwire::api::auth::{
    AuthDriver, AuthOutcome, DefaultServerParameterProvider, StartupHandler, protocol_negotiation,
    save_startup_parameters_to_metadata,
};
use pgwire::api::copy::CopyHandler;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{CopyResponse, FieldFormat, FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::{QueryParser, StoredStatement};
use pgwire::api::store::{Entry, PortalStore};
use pgwire::api::{ClientInfo, ClientPortalStore, DEFAULT_NAME, PgWireConnectionState, Type};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use pgwire::messages::PgWireFrontendMessage;
use pgwire::messages::copy::{CopyData, CopyDone, CopyFail, CopyInResponse, CopyOutResponse};
use pgwire::messages::data::{DataRow, NoData, ParameterDescription, RowDescription};
use pgwire::messages::extendedquery::{Describe, TARGET_TYPE_BYTE_STATEMENT};
use pgwire::messages::response::{EmptyQueryResponse, ReadyForQuery, TransactionStatus};
use pgwire::messages::simplequery::Query;
use tessera_planner::ddl;

use super::PG_SERVER_VERSION;
use super::cancel::{CancelGuard, CancelRegistry};
use super::copy;
use super::notice::{DEFAULT_NOTICE_AFTER, ProgressNotices, parse_notice_after, show_notice_after};
use super::statement::{
    Command, ConnectionValues, CopyFormat, CopyOutSource, bind_connection_values, classify,
    command_tag, statement_texts,
};
use super::types::{arrow_type, decode_parameter, encode_field, field_infos, pg_type};
use crate::Database;
use crate::config::{AuthMethod, parse_duration};
use crate::edge::{Interrupt, QueryControl, dml_tag, is_loopback};
use crate::errors;
use crate::plan_cache::WriteGuard;
use crate::server::{BackendSlot, BackendSlots, StartupSlot};
use crate::session::{PreparedStatement, Session};

/// What every connection of one server shares.
pub(crate) struct PgShared {
    pub(crate) database: Database,
    pub(crate) cancels: Arc<CancelRegistry>,
    pub(crate) auth_method: AuthMethod,
    pub(crate) trust_remote: bool,
    pub(crate) tls_required: bool,
    pub(crate) sasl: Option<Arc<SaslMechanisms>>,
    /// SCRAM-SHA-256 and SCRAM-SHA-256-PLUS, for clients connected over TLS.
    pub(crate) sasl_tls: Option<Arc<SaslMechanisms>>,
    pub(crate) parameters: Arc<DefaultServerParameterProvider>,
    pub(crate) statement_timeout: Option<Duration>,
    pub(crate) max_connections: usize,
    /// The authenticated connections (`max_connections`).
    pub(crate) backends: Arc<BackendSlots>,
    /// Users who may take the slots reserved for superusers.
    pub(crate) superusers: std::collections::HashSet<String>,
    /// Backend pids and cancel keys: one counter for the server, so every connection
    /// has its own pid (`pg_stat_activity`, `pg_cancel_backend`).
    pub(crate) pids: Arc<super::BackendPids>,
}

impl Debug for PgShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgShared")
            .field("auth_method", &self.auth_method)
            .field("tls_required", &self.tls_required)
            .finish()
    }
}

/// The server parameters sent at startup.
pub(crate) fn server_parameters() -> DefaultServerParameterProvider {
    let mut p = DefaultServerParameterProvider::default();
    p.server_version = PG_SERVER_VERSION.to_string();
    p.time_zone = "UTC".to_string();
    p.date_style = "ISO, MDY".to_string();
    p
}

/// A PostgreSQL error with SQLSTATE `code`.
pub(crate) fn user_error(severity: &str, code: &str, message: impl Into<String>) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        severity.to_string(),
        code.to_string(),
        message.into(),
    )))
}

/// A Tessera error as the client sees it.
pub(crate) fn pg_error(e: &DataFusionError) -> PgWireError {
    user_error("ERROR", errors::sqlstate(e), errors::client_message(e))
}

/// Per-connection state that changes as statements run.
#[derive(Default)]
struct ConnectionState {
    /// PostgreSQL settings by lowercased name (startup parameters and `SET`).
    settings: BTreeMap<String, String>,
    statement_timeout: Option<Duration>,
    /// `tessera.progress_notice_after`: progress NOTICEs for statements running longer.
    progress_notice_after: Option<Duration>,
    copy_in: Option<CopyIn>,
    cancel_guard: Option<CancelGuard>,
    /// This connection in `pg_stat_activity`, from authentication on.
    activity: Option<crate::activity::ActivityGuard>,
    /// Held while the client authenticates; given back once it has.
    startup_slot: Option<StartupSlot>,
    /// Held from authentication until the connection ends.
    backend_slot: Option<BackendSlot>,
}

/// A `COPY ... FROM STDIN` receiving data: rows are decoded as they arrive and sent,
/// a batch at a time, to the one INSERT that writes them, which runs on its own task
/// and commits only after CopyDone. What the connection holds meanwhile (data not yet
/// decoded, the batch being built, batches in flight) is charged to the session's
/// memory pool.
struct CopyIn {
    decoder: copy::CopyDecoder,
    reservation: MemoryReservation,
    batches: tokio::sync::mpsc::Sender<copy::CopyChunk>,
    writer: tokio::task::JoinHandle<Result<u64, DataFusionError>>,
    _writing: WriteGuard,
    /// The COPY in `pg_stat_activity` until it ends.
    _active: Option<crate::activity::StatementActivity>,
}

/// One client connection.
pub(crate) struct PgConnection {
    shared: Arc<PgShared>,
    session: Session,
    control: Arc<QueryControl>,
    state: Arc<Mutex<ConnectionState>>,
    driver: AuthDriver<Arc<DefaultServerParameterProvider>>,
    parser: Arc<StatementParser>,
    peer: SocketAddr,
}

impl Debug for PgConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConnection")
            .field("peer", &self.peer)
            .finish()
    }
}

/// How a statement ended, before it is sent.
enum Outcome {
    Rows(SchemaRef, RowStream),
    Tag(String),
    Begin,
    Commit,
    Rollback,
    CopyOut(SchemaRef, RowStream, CopyFormat),
    /// The number of columns and whether the format is binary.
    CopyIn(usize, bool),
}

type RowStream = Pin<Box<dyn Stream<Item = Result<RecordBatch, DataFusionError>> + Send>>;

/// A statement prepared by Parse.
#[derive(Debug, Clone)]
pub(crate) struct PgStatement {
    command: Command,
    /// The statement's source text (`pg_stat_activity.query`).
    text: String,
    prepared: Option<Arc<PreparedStatement>>,
    declared: Vec<Option<DataType>>,
    parameter_types: Vec<Type>,
    fields: Vec<Arc<Field>>,
}

impl PgConnection {
    pub(crate) fn new(
        shared: Arc<PgShared>,
        peer: SocketAddr,
        startup_slot: StartupSlot,
    ) -> Result<PgConnection, DataFusionError> {
        let session = shared.database.session()?;
        // No server files until the startup message names the role.
        session.set_file_access(shared.database.file_access_for(""));
        let driver = AuthDriver::new(shared.parameters.clone())
            .with_pid_secret_key_generator(shared.pids.clone());
        let state = ConnectionState {
            statement_timeout: shared.statement_timeout,
            progress_notice_after: Some(DEFAULT_NOTICE_AFTER),
            startup_slot: Some(startup_slot),
            ..ConnectionState::default()
        };
        let state = Arc::new(Mutex::new(state));
        Ok(PgConnection {
            parser: Arc::new(StatementParser {
                session: session.clone(),
                shared: shared.clone(),
                state: state.clone(),
            }),
            shared,
            session,
            control: Arc::new(QueryControl::default()),
            state,
            driver,
            peer,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ConnectionState> {
        lock_state(&self.state)
    }

    fn interrupt(&self) -> Interrupt {
        let timeout = self.state().statement_timeout;
        self.control.interrupt(timeout)
    }

    /// The progress NOTICEs of a statement starting now.
    fn notices(&self) -> Option<ProgressNotices> {
        let every = self.state().progress_notice_after;
        ProgressNotices::start(every, self.session.progress())
    }

    /// Runs one classified statement whose source text is `text`, sending `notices` to
    /// `client` while it runs.
    #[allow(clippy::too_many_arguments)] // one statement's parts, each from the protocol
    async fn run<C>(
        &self,
        client: &mut C,
        notices: &mut Option<ProgressNotices>,
        command: &Command,
        text: &str,
        prepared: Option<&PreparedStatement>,
        params: Vec<ScalarValue>,
        declared: &[Option<DataType>],
        interrupt: &Interrupt,
    ) -> Result<Outcome, DataFusionError>
    where
        C: Sink<PgWireBackendMessage> + Unpin + Send,
    {
        // Active from here; a result's stream (or a COPY FROM STDIN) holds the marker
        // until it ends, anything else drops it when this returns.
        let active = self.begin_activity(text);
        match command {
            Command::Run(statement) => {
                let stream = ProgressNotices::finish(
                    notices,
                    client,
                    interrupt.run(async {
                        match prepared {
                            Some(p) => self.session.execute_prepared(p, params, declared).await,
                            None => self.session.execute_statement(statement.clone()).await,
                        }
                    }),
                )
                .await?;
                let schema = stream.schema();
                // Active until the rows are sent (the stream holds the marker).
                let mut stream: RowStream = Box::pin(interrupt.stream(stream).map(move |b| {
                    let _ = &active;
                    b
                }));
                let is_count = schema.fields().len() == 1
                    && schema.field(0).name() == "count"
                    && schema.field(0).data_type() == &DataType::UInt64;
                if let (Some(tag), true) = (dml_tag(statement), is_count) {
                    let mut count = 0u64;
                    while let Some(batch) =
                        ProgressNotices::next_batch(notices, client, &mut stream).await
                    {
                        let batch = batch?;
                        if let Some(c) = batch
                            .column(0)
                            .as_any()
                            .downcast_ref::<datafusion::arrow::array::UInt64Array>()
                        {
                            count += c.iter().flatten().sum::<u64>();
                        }
                    }
                    Ok(Outcome::Tag(format!("{tag} {count}")))
                } else if schema.fields().is_empty() {
                    while let Some(batch) =
                        ProgressNotices::next_batch(notices, client, &mut stream).await
                    {
                        batch?;
                    }
                    Ok(Outcome::Tag(command_tag(statement)))
                } else {
                    Ok(Outcome::Rows(schema, stream))
                }
            }
            Command::Begin => Ok(Outcome::Begin),
            Command::Commit => Ok(Outcome::Commit),
            Command::Rollback => Ok(Outcome::Rollback),
            Command::Ignore(tag) => Ok(Outcome::Tag(tag.to_string())),
            Command::SetClient { name, value } => {
                self.set_client(name, value.as_deref())?;
                Ok(Outcome::Tag("SET".into()))
            }
            Command::Reset(name) => {
                match name {
                    Some(n) => self.set_client(n, None)?,
                    None => {
                        let mut state = self.state();
                        state.settings.clear();
                        state.statement_timeout = self.shared.statement_timeout;
                        state.progress_notice_after = Some(DEFAULT_NOTICE_AFTER);
                    }
                }
                Ok(Outcome::Tag("RESET".into()))
            }
            Command::Show(name) => {
                let value = self.show(name)?;
                Ok(text_rows(name, vec![value]))
            }
            Command::Version => Ok(text_rows(
                "version",
                vec![format!(
                    "PostgreSQL {PG_SERVER_VERSION} (Tessera {}) on {}-linux, compiled by rustc, 64-bit",
                    env!("CARGO_PKG_VERSION"),
                    std::env::consts::ARCH
                )],
            )),
            Command::CopyOut { source, format } => {
                let stream = match source {
                    CopyOutSource::Query(statement) => {
                        ProgressNotices::finish(
                            notices,
                            client,
                            interrupt.run(self.session.execute_statement(statement.clone())),
                        )
                        .await?
                    }
                    CopyOutSource::Table { name, columns } => {
                        ProgressNotices::finish(
                            notices,
                            client,
                            interrupt.run(self.session.read_table(name.clone(), columns)),
                        )
                        .await?
                    }
                };
                let schema = stream.schema();
                let stream = interrupt.stream(stream).map(move |b| {
                    let _ = &active;
                    b
                });
                Ok(Outcome::CopyOut(schema, Box::pin(stream), format.clone()))
            }
            Command::CopyIn {
                table,
                columns,
                format,
            } => {
                let mut copy = self
                    .start_copy_in(table, columns, format, interrupt)
                    .await?;
                copy._active = active;
                let width = copy.decoder.width();
                self.state().copy_in = Some(copy);
                Ok(Outcome::CopyIn(width, format.binary))
            }
        }
    }

    fn set_client(&self, name: &str, value: Option<&str>) -> Result<(), DataFusionError> {
        let mut state = self.state();
        if name == NOTICE_SETTING {
            state.progress_notice_after = match value {
                None => Some(DEFAULT_NOTICE_AFTER),
                Some(v) => parse_notice_after(v).map_err(|e| {
                    DataFusionError::Plan(format!(
                        "invalid value for parameter \"{NOTICE_SETTING}\": {e}"
                    ))
                })?,
            };
        }
        if name == "statement_timeout" {
            state.statement_timeout = match value {
                None => self.shared.statement_timeout,
                Some(v) => {
                    let d = parse_duration(v).map_err(|e| {
                        DataFusionError::Plan(format!(
                            "invalid value for parameter \"statement_timeout\": {e}"
                        ))
                    })?;
                    (!d.is_zero()).then_some(d)
                }
            };
        }
        match value {
            Some(v) => state.settings.insert(name.to_string(), v.to_string()),
            None => state.settings.remove(name),
        };
        Ok(())
    }

    fn show(&self, name: &str) -> Result<String, DataFusionError> {
        show_setting(&self.state(), &self.shared, name)
    }

    /// The statement may not run: the transaction block failed earlier.
    fn check_failed_transaction(status: TransactionStatus, command: &Command) -> PgWireResult<()> {
        if matches!(status, TransactionStatus::Error)
            && !matches!(
                command,
                Command::Commit | Command::Rollback | Command::Ignore("ROLLBACK")
            )
        {
            return Err(user_error(
                "ERROR",
                errors::IN_FAILED_TRANSACTION,
                "current transaction is aborted, commands ignored until end of transaction block",
            ));
        }
        Ok(())
    }

    /// Registers this connection for cancel requests and in `pg_stat_activity` once
    /// its pid and key are known.
    fn register_cancel<C: ClientInfo>(&self, client: &C) {
        let (pid, secret) = client.pid_and_secret_key();
        let guard = self
            .shared
            .cancels
            .register(pid, secret.to_bytes(), self.control.clone());
        let user = client.metadata().get("user").cloned().unwrap_or_default();
        let superuser = self.shared.superusers.contains(&user);
        self.session.set_backend(pid, &user, superuser);
        let application_name = client
            .metadata()
            .get("application_name")
            .cloned()
            .unwrap_or_default();
        let info = crate::activity::BackendInfo {
            kind: crate::activity::BackendKind::Postgres,
            user: user.clone(),
            client_addr: self.peer.ip().to_string(),
            application_name,
        };
        let activity = self.shared.database.activity().register(
            pid,
            info,
            self.control.clone(),
            self.session.progress(),
        );
        let mut state = self.state();
        state.cancel_guard = Some(guard);
        state.activity = Some(activity);
    }

    /// Marks this connection active with statement `text` in `pg_stat_activity` until
    /// the returned value drops (`None` before authentication).
    fn begin_activity(&self, text: &str) -> Option<crate::activity::StatementActivity> {
        self.state().activity.as_ref().map(|a| a.start(text))
    }

    /// Seeds the PostgreSQL settings from the startup parameters.
    fn remember_startup_parameters<C: ClientInfo>(&self, client: &C) {
        if let Some(user) = client.metadata().get("user") {
            self.session
                .set_file_access(self.shared.database.file_access_for(user));
        }
        let mut state = self.state();
        for (k, v) in client.metadata() {
            if !matches!(k.as_str(), "user" | "database" | "options" | "replication") {
                state.settings.insert(k.to_ascii_lowercase(), v.clone());
            }
        }
    }
}

fn lock_state(state: &Mutex<ConnectionState>) -> std::sync::MutexGuard<'_, ConnectionState> {
    // A poisoned lock only means another statement of this connection panicked; its
    // state is still usable.
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// A setting's value as `SHOW` answers it: what the connection set, else the server's.
fn show_setting(
    state: &ConnectionState,
    shared: &PgShared,
    name: &str,
) -> Result<String, DataFusionError> {
    if name == NOTICE_SETTING {
        return Ok(show_notice_after(state.progress_notice_after));
    }
    if name == "statement_timeout" {
        return Ok(match state.statement_timeout {
            None => "0".into(),
            Some(d) if d.subsec_millis() == 0 && d.as_secs() > 0 => format!("{}s", d.as_secs()),
            Some(d) => format!("{}ms", d.as_millis()),
        });
    }
    if let Some(v) = state.settings.get(name) {
        return Ok(v.clone());
    }
    match name {
        "max_connections" => Ok(shared.max_connections.to_string()),
        _ => crate::pg_catalog::setting_default(name)
            .map(str::to_string)
            .ok_or_else(|| crate::pg_catalog::unknown_setting(name)),
    }
}

/// The connection's setting for progress NOTICEs (see [`super::notice`]).
const NOTICE_SETTING: &str = super::statement::PROGRESS_NOTICE_SETTING;

/// Writes the connection's pid, role and settings into `statement` (see
/// [`bind_connection_values`]).
fn bind_values<C: ClientInfo>(
    client: &C,
    state: &Mutex<ConnectionState>,
    shared: &PgShared,
    statement: &mut ddl::Statement,
) {
    let setting = |name: &str| show_setting(&lock_state(state), shared, name).ok();
    let user = client.metadata().get("user").cloned().unwrap_or_default();
    let values = ConnectionValues {
        pid: client.pid_and_secret_key().0,
        user: &user,
        setting: &setting,
    };
    bind_connection_values(statement, &values);
}

/// Parses a query string into statements and rewrites their PostgreSQL-only catalog
/// syntax in the trees (see [`crate::pg_catalog::rewrite_statement`]).
fn split_statements(sql: &str) -> Result<Vec<ddl::Statement>, DataFusionError> {
    let mut statements = ddl::parse(sql)?;
    for statement in &mut statements {
        crate::pg_catalog::rewrite_statement(statement);
    }
    Ok(statements)
}

/// A one-column text result.
fn text_rows(name: &str, values: Vec<String>) -> Outcome {
    let schema = Arc::new(Schema::new(vec![Field::new(name, DataType::Utf8, true)]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(StringArray::from(values)) as _],
    );
    let stream: RowStream = Box::pin(futures::stream::iter(vec![
        batch.map_err(DataFusionError::from),
    ]));
    Outcome::Rows(schema, stream)
}

/// The DataRows of a batch, each column in its format.
fn data_rows(batch: &RecordBatch, formats: &[FieldFormat]) -> Vec<DataRow> {
    let columns = batch.columns();
    (0..batch.num_rows())
        .map(|row| {
            let mut buf = BytesMut::with_capacity(16 * columns.len());
            for (c, column) in columns.iter().enumerate() {
                let format = formats.get(c).copied().unwrap_or(FieldFormat::Text);
                encode_field(&mut buf, column.as_ref(), row, format);
            }
            DataRow::new(buf, columns.len() as i16)
        })
        .collect()
}

fn row_description(fields: &[FieldInfo]) -> RowDescription {
    RowDescription::new(fields.iter().map(Into::into).collect())
}

fn copy_out_response(columns: usize, binary: bool) -> CopyOutResponse {
    let format = i16::from(binary);
    CopyOutResponse::new(format as i8, columns as i16, vec![format; columns])
}

/// Sends a COPY TO STDOUT: the CopyOutResponse, the data as PostgreSQL sends it (one
/// row per CopyData, as psycopg reads each as one row; a text header alone; the binary
/// header with the first row and the trailer alone, or both in one message when there
/// are no rows, as readers such as connectorx's take a header alone for a cut stream)
/// and CopyDone. Returns the rows sent, for the command tag the caller sends.
async fn send_copy_out<C>(
    client: &mut C,
    schema: &SchemaRef,
    mut stream: RowStream,
    format: &CopyFormat,
    notices: &mut Option<ProgressNotices>,
) -> PgWireResult<usize>
where
    C: Sink<PgWireBackendMessage> + Unpin + Send,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    client
        .feed(PgWireBackendMessage::CopyOutResponse(copy_out_response(
            schema.fields().len(),
            format.binary,
        )))
        .await?;
    let mut out = BytesMut::new();
    if format.binary {
        copy::encode_binary_header(&mut out);
    } else if format.header {
        copy::encode_header(&mut out, schema, format);
        client
            .feed(PgWireBackendMessage::CopyData(CopyData::new(
                out.split().freeze(),
            )))
            .await?;
    }
    let mut rows = 0usize;
    while let Some(batch) = ProgressNotices::next_batch(notices, client, &mut stream).await {
        let batch = batch.map_err(|e| pg_error(&e))?;
        for row in 0..batch.num_rows() {
            if format.binary {
                copy::encode_binary_row(&mut out, &batch, row);
            } else {
                copy::encode_row(&mut out, &batch, row, format);
            }
            rows += 1;
            client
                .feed(PgWireBackendMessage::CopyData(CopyData::new(
                    out.split().freeze(),
                )))
                .await?;
        }
    }
    if format.binary {
        copy::encode_binary_trailer(&mut out);
        client
            .feed(PgWireBackendMessage::CopyData(CopyData::new(out.freeze())))
            .await?;
    }
    client
        .feed(PgWireBackendMessage::CopyDone(CopyDone::new()))
        .await?;
    Ok(rows)
}

#[async_trait]
impl SimpleQueryHandler for PgConnection {
    async fn on_query<C>(&self, client: &mut C, query: Query) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if !matches!(client.state(), PgWireConnectionState::ReadyForQuery) {
            return Err(PgWireError::NotReadyForQuery);
        }
        client.set_state(PgWireConnectionState::QueryInProgress);
        let statements = split_statements(&query.query).map_err(|e| pg_error(&e))?;
        let texts = statement_texts(&query.query).filter(|t| t.len() == statements.len());
        if statements.is_empty() {
            client
                .feed(PgWireBackendMessage::EmptyQueryResponse(
                    EmptyQueryResponse::new(),
                ))
                .await?;
        }
        let count = statements.len();
        for (n, mut statement) in statements.into_iter().enumerate() {
            let text = match (&texts, &statement) {
                (Some(texts), _) => texts[n].clone(),
                (None, ddl::Statement::Sql(sql)) => sql.text.clone(),
                (None, ddl::Statement::Tessera(_)) => command_tag(&statement),
            };
            bind_values(client, &self.state, &self.shared, &mut statement);
            let command = classify(statement).map_err(|e| pg_error(&e))?;
            Self::check_failed_transaction(client.transaction_status(), &command)?;
            let interrupt = self.interrupt();
            let mut notices = self.notices();
            let outcome = self
                .run(
                    client,
                    &mut notices,
                    &command,
                    &text,
                    None,
                    Vec::new(),
                    &[],
                    &interrupt,
                )
                .await
                .map_err(|e| pg_error(&e))?;
            let status = client.transaction_status();
            match outcome {
                Outcome::Rows(schema, mut stream) => {
                    let fields = field_infos(schema.fields(), |_| FieldFormat::Text);
                    client
                        .feed(PgWireBackendMessage::RowDescription(row_description(
                            &fields,
                        )))
                        .await?;
                    let formats = vec![FieldFormat::Text; fields.len()];
                    let mut rows = 0;
                    while let Some(batch) =
                        ProgressNotices::next_batch(&mut notices, client, &mut stream).await
                    {
                        let batch = batch.map_err(|e| pg_error(&e))?;
                        for row in data_rows(&batch, &formats) {
                            client.feed(PgWireBackendMessage::DataRow(row)).await?;
                            rows += 1;
                        }
                    }
                    let tag = Tag::new("SELECT").with_rows(rows);
                    client
                        .feed(PgWireBackendMessage::CommandComplete(tag.into()))
                        .await?;
                }
                Outcome::Tag(tag) => {
                    client
                        .feed(PgWireBackendMessage::CommandComplete(Tag::new(&tag).into()))
                        .await?;
                }
                Outcome::Begin => {
                    client.set_transaction_status(status.to_in_transaction_state());
                    client
                        .feed(PgWireBackendMessage::CommandComplete(
                            Tag::new("BEGIN").into(),
                        ))
                        .await?;
                }
                Outcome::Commit | Outcome::Rollback => {
                    let tag = if matches!(outcome, Outcome::Commit)
                        && !matches!(status, TransactionStatus::Error)
                    {
                        "COMMIT"
                    } else {
                        "ROLLBACK"
                    };
                    client.set_transaction_status(TransactionStatus::Idle);
                    client
                        .feed(PgWireBackendMessage::CommandComplete(Tag::new(tag).into()))
                        .await?;
                }
                Outcome::CopyOut(schema, stream, format) => {
                    let rows =
                        send_copy_out(client, &schema, stream, &format, &mut notices).await?;
                    client
                        .feed(PgWireBackendMessage::CommandComplete(
                            Tag::new("COPY").with_rows(rows).into(),
                        ))
                        .await?;
                }
                Outcome::CopyIn(columns, binary) => {
                    if n + 1 != count {
                        let copy = self.state().copy_in.take();
                        if let Some(copy) = copy {
                            abort_copy_in(copy).await;
                        }
                        return Err(user_error(
                            "ERROR",
                            errors::FEATURE_NOT_SUPPORTED,
                            "COPY FROM STDIN must be the last statement of a query string",
                        ));
                    }
                    client
                        .send(PgWireBackendMessage::CopyInResponse(CopyInResponse::new(
                            i8::from(binary),
                            columns as i16,
                            vec![i16::from(binary); columns],
                        )))
                        .await?;
                    client.set_state(PgWireConnectionState::CopyInProgress(false));
                    return Ok(());
                }
            }
        }
        client.set_state(PgWireConnectionState::ReadyForQuery);
        let status = client.transaction_status();
        client
            .send(PgWireBackendMessage::ReadyForQuery(ReadyForQuery::new(
                status,
            )))
            .await?;
        Ok(())
    }

    async fn do_query<C>(&self, _client: &mut C, _query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        // `on_query` above handles the whole message.
        Err(user_error(
            "ERROR",
            errors::INTERNAL_ERROR,
            "unreachable simple query path",
        ))
    }
}

/// Plans statements for the extended protocol.
pub(crate) struct StatementParser {
    session: Session,
    shared: Arc<PgShared>,
    /// The connection's, for the values [`bind_values`] writes into statements.
    state: Arc<Mutex<ConnectionState>>,
}

impl Debug for StatementParser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatementParser")
            .field("session", &self.session)
            .finish()
    }
}

#[async_trait]
impl QueryParser for StatementParser {
    type Statement = PgStatement;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        types: &[Option<Type>],
    ) -> PgWireResult<Option<PgStatement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let mut statements = split_statements(sql).map_err(|e| pg_error(&e))?;
        if statements.len() > 1 {
            return Err(user_error(
                "ERROR",
                errors::SYNTAX_ERROR,
                "cannot insert multiple commands into a prepared statement",
            ));
        }
        let Some(mut statement) = statements.pop() else {
            return Ok(None);
        };
        let text = statement_texts(sql)
            .and_then(|mut texts| texts.pop())
            .unwrap_or_else(|| match &statement {
                ddl::Statement::Sql(sql) => sql.text.clone(),
                ddl::Statement::Tessera(_) => command_tag(&statement),
            });
        bind_values(client, &self.state, &self.shared, &mut statement);
        let declared: Vec<Option<DataType>> = types
            .iter()
            .map(|t| t.as_ref().and_then(arrow_type))
            .collect();
        let command = classify(statement).map_err(|e| pg_error(&e))?;
        let (prepared, fields) = match &command {
            Command::Run(statement) => {
                let prepared = self
                    .session
                    .prepare_statement(statement.clone(), &declared)
                    .await
                    .map_err(|e| pg_error(&e))?;
                // DDL returns no rows, though DataFusion's plan of a CREATE TABLE has
                // the new table's columns; a RowDescription makes libpq report rows
                // (PGRES_TUPLES_OK), which ADBC's ingest takes for a failed CREATE.
                let tag = command_tag(statement);
                let is_ddl = ["CREATE ", "DROP ", "ALTER ", "TRUNCATE "]
                    .iter()
                    .any(|prefix| tag.starts_with(prefix));
                let fields = if dml_tag(statement).is_some() || is_ddl {
                    Vec::new()
                } else {
                    prepared.schema().fields().iter().cloned().collect()
                };
                (Some(Arc::new(prepared)), fields)
            }
            Command::Show(name) => (None, vec![Arc::new(Field::new(name, DataType::Utf8, true))]),
            Command::Version => (
                None,
                vec![Arc::new(Field::new("version", DataType::Utf8, true))],
            ),
            _ => (None, Vec::new()),
        };
        let server_types = prepared
            .as_ref()
            .map(|p| p.parameter_types().to_vec())
            .unwrap_or_default();
        let count = server_types.len().max(declared.len());
        let parameter_types = (0..count)
            .map(|i| match types.get(i).cloned().flatten() {
                Some(t) if t != Type::UNKNOWN => t,
                _ => match server_types.get(i).cloned().flatten() {
                    Some(dt) => pg_type(&dt),
                    None => Type::TEXT,
                },
            })
            .collect();
        Ok(Some(PgStatement {
            command,
            text,
            prepared,
            declared,
            parameter_types,
            fields,
        }))
    }

    fn get_parameter_types(&self, stmt: &PgStatement) -> PgWireResult<Vec<Type>> {
        Ok(stmt.parameter_types.clone())
    }

    fn get_result_schema(
        &self,
        stmt: &PgStatement,
        format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        Ok(field_infos(&stmt.fields, |i| match format {
            Some(f) => f.format_for(i),
            None => FieldFormat::Text,
        }))
    }
}

#[async_trait]
impl ExtendedQueryHandler for PgConnection {
    type Statement = PgStatement;
    type QueryParser = StatementParser;

    fn query_parser(&self) -> Arc<StatementParser> {
        self.parser.clone()
    }

    /// Describe of a statement that returns no rows (INSERT, DDL, SET) answers its
    /// parameters and NoData, as PostgreSQL does. pgwire's default sends an empty
    /// RowDescription instead when the statement has parameters, which drivers read as a
    /// query returning nothing: JDBC's executeBatch then counts 0 rows per INSERT.
    async fn on_describe<C>(&self, client: &mut C, message: Describe) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if message.target_type == TARGET_TYPE_BYTE_STATEMENT {
            let name = message.name.as_deref().unwrap_or(DEFAULT_NAME);
            if let Some(Entry::Value(stmt)) = client.portal_store().get_statement(name)
                && stmt.statement.fields.is_empty()
            {
                let described = self.do_describe_statement(client, &stmt).await?;
                let oids = described.parameters.iter().map(Type::oid).collect();
                client
                    .send(PgWireBackendMessage::ParameterDescription(
                        ParameterDescription::new(oids),
                    ))
                    .await?;
                client
                    .send(PgWireBackendMessage::NoData(NoData::new()))
                    .await?;
                return Ok(());
            }
        }
        // A portal without fields already answers NoData.
        self._on_describe(client, message).await
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<PgStatement>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let statement: &StoredStatement<PgStatement> = &portal.statement;
        let stmt = &statement.statement;
        Self::check_failed_transaction(client.transaction_status(), &stmt.command)?;
        let mut params = Vec::with_capacity(portal.parameters.len());
        for (i, bytes) in portal.parameters.iter().enumerate() {
            let ty = stmt.parameter_types.get(i).cloned().unwrap_or(Type::TEXT);
            let value =
                decode_parameter(bytes.as_deref(), &ty, portal.parameter_format.format_for(i))
                    .map_err(|m| {
                        user_error(
                            "ERROR",
                            errors::INVALID_TEXT_REPRESENTATION,
                            format!("parameter ${}: {m}", i + 1),
                        )
                    })?;
            params.push(value);
        }
        let interrupt = self.interrupt();
        let mut notices = self.notices();
        let outcome = self
            .run(
                client,
                &mut notices,
                &stmt.command,
                &stmt.text,
                stmt.prepared.as_deref(),
                params,
                &stmt.declared,
                &interrupt,
            )
            .await
            .map_err(|e| pg_error(&e))?;
        Ok(match outcome {
            Outcome::Rows(schema, mut stream) => {
                let fields = field_infos(schema.fields(), |i| {
                    portal.result_column_format.format_for(i)
                });
                let formats: Vec<FieldFormat> = fields.iter().map(|f| f.format()).collect();
                // pgwire sends the rows; the notices go on until the first batch, which
                // is when a query that aggregates has done its work.
                let first = ProgressNotices::next_batch(&mut notices, client, &mut stream).await;
                let stream = futures::stream::iter(first).chain(stream);
                let rows = stream.flat_map(move |batch| {
                    futures::stream::iter(match batch {
                        Ok(batch) => data_rows(&batch, &formats).into_iter().map(Ok).collect(),
                        Err(e) => vec![Err(pg_error(&e))],
                    })
                });
                Response::Query(QueryResponse::new(Arc::new(fields), rows))
            }
            Outcome::Tag(tag) => Response::Execution(Tag::new(&tag)),
            Outcome::Begin => Response::TransactionStart(Tag::new("BEGIN")),
            Outcome::Commit => Response::TransactionEnd(Tag::new(
                if matches!(client.transaction_status(), TransactionStatus::Error) {
                    "ROLLBACK"
                } else {
                    "COMMIT"
                },
            )),
            Outcome::Rollback => Response::TransactionEnd(Tag::new("ROLLBACK")),
            // Sent here rather than by pgwire, which counts every CopyData message
            // as a row (a header alone, or a header with the trailer of an empty
            // result, would be one).
            Outcome::CopyOut(schema, stream, format) => {
                let rows = send_copy_out(client, &schema, stream, &format, &mut notices).await?;
                Response::Execution(Tag::new("COPY").with_rows(rows))
            }
            Outcome::CopyIn(columns, binary) => Response::CopyIn(CopyResponse::new(
                i8::from(binary),
                columns,
                futures::stream::empty::<PgWireResult<CopyData>>(),
            )),
        })
    }
}

#[async_trait]
impl CopyHandler for PgConnection {
    async fn on_copy_data<C>(&self, _client: &mut C, copy_data: CopyData) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        // Taken out while it works (the lock is not held across an await); a connection
        // dropped meanwhile drops it, which fails the INSERT.
        let Some(mut copy) = self.state().copy_in.take() else {
            return Ok(());
        };
        match feed_copy_in(&mut copy, &copy_data.data, false).await {
            Ok(()) => {
                self.state().copy_in = Some(copy);
                Ok(())
            }
            Err(e) => {
                abort_copy_in(copy).await;
                Err(pg_error(&e))
            }
        }
    }

    async fn on_copy_done<C>(&self, client: &mut C, _done: CopyDone) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let Some(copy) = self.state().copy_in.take() else {
            return Err(user_error(
                "ERROR",
                errors::PROTOCOL_VIOLATION,
                "CopyDone without a COPY FROM STDIN in progress",
            ));
        };
        let count = finish_copy_in(copy).await.map_err(|e| pg_error(&e))?;
        client
            .send(PgWireBackendMessage::CommandComplete(
                Tag::new("COPY").with_rows(count as usize).into(),
            ))
            .await?;
        Ok(())
    }

    async fn on_copy_fail<C>(&self, _client: &mut C, fail: CopyFail) -> PgWireError
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let copy = self.state().copy_in.take();
        if let Some(copy) = copy {
            abort_copy_in(copy).await;
        }
        user_error(
            "ERROR",
            errors::QUERY_CANCELED,
            format!("COPY from stdin failed: {}", fail.message),
        )
    }
}

impl PgConnection {
    /// Starts `COPY table [(columns)] FROM STDIN`: the INSERT that will write the rows
    /// starts now, on its own task, reading the rows the connection decodes.
    async fn start_copy_in(
        &self,
        table: &TableReference,
        columns: &[String],
        format: &CopyFormat,
        interrupt: &Interrupt,
    ) -> Result<CopyIn, DataFusionError> {
        let ctx = self.session.ctx().clone();
        let provider = ctx.table_provider(table.clone()).await?;
        let what = table.to_string();
        let batch_rows = ctx.state().config().batch_size();
        let decoder =
            copy::CopyDecoder::new(&what, format, &provider.schema(), columns, batch_rows)?;
        let (batches, receiver) = tokio::sync::mpsc::channel(1);
        let rows = copy::CopyRows::new(decoder.schema(), receiver);
        let source = StreamingTable::try_new(decoder.schema(), vec![Arc::new(rows)])?;
        let reservation = MemoryConsumer::new(format!("COPY {what} FROM STDIN"))
            .register(&ctx.runtime_env().memory_pool);
        let writing = self.session.begin_write();
        let target = table.to_quoted_string();
        let interrupt = interrupt.clone();
        let writer = tokio::spawn(async move {
            interrupt
                .run(async move {
                    let result = ctx
                        .read_table(Arc::new(source))?
                        .write_table(&target, DataFrameWriteOptions::new())
                        .await?;
                    Ok(result
                        .iter()
                        .filter_map(|b| {
                            b.column(0)
                                .as_any()
                                .downcast_ref::<datafusion::arrow::array::UInt64Array>()
                                .map(|c| c.iter().flatten().sum::<u64>())
                        })
                        .sum())
                })
                .await
        });
        Ok(CopyIn {
            decoder,
            reservation,
            batches,
            writer,
            _writing: writing,
            _active: None,
        })
    }
}

/// Decodes more of a COPY's data and sends every full batch to its writer; with
/// `last`, the rest too. Waits while the writer is busy, so memory stays bounded.
async fn feed_copy_in(copy: &mut CopyIn, data: &[u8], last: bool) -> Result<(), DataFusionError> {
    copy.decoder.extend(data);
    copy.reservation.try_resize(copy.decoder.memory())?;
    while let Some(batch) = copy.decoder.next_batch(last)? {
        let bytes = batch.get_array_memory_size();
        copy.reservation.try_resize(copy.decoder.memory() + bytes)?;
        let held = copy.reservation.split(bytes);
        if copy
            .batches
            .send(copy::CopyChunk::Batch(batch, held))
            .await
            .is_err()
        {
            return Err(writer_error(copy).await);
        }
    }
    copy.reservation.try_resize(copy.decoder.memory())?;
    Ok(())
}

/// The error that stopped a COPY's writer early.
async fn writer_error(copy: &mut CopyIn) -> DataFusionError {
    match (&mut copy.writer).await {
        Ok(Err(e)) => e,
        Ok(Ok(_)) => DataFusionError::Internal("the COPY writer ended before its data".into()),
        Err(e) => DataFusionError::Internal(format!("the COPY writer failed: {e}")),
    }
}

/// CopyDone: decodes what remains, lets the writer commit, and returns the row count.
async fn finish_copy_in(mut copy: CopyIn) -> Result<u64, DataFusionError> {
    if let Err(e) = feed_copy_in(&mut copy, &[], true).await {
        abort_copy_in(copy).await;
        return Err(e);
    }
    if copy.batches.send(copy::CopyChunk::End).await.is_err() {
        return Err(writer_error(&mut copy).await);
    }
    let rows = copy.decoder.rows();
    match copy.writer.await {
        Ok(Ok(_)) => Ok(rows),
        Ok(Err(e)) => Err(e),
        Err(e) => Err(DataFusionError::Internal(format!(
            "the COPY writer failed: {e}"
        ))),
    }
}

/// Stops a COPY without committing: its writer sees its data end without CopyDone,
/// fails, and removes what it wrote before this returns.
async fn abort_copy_in(copy: CopyIn) {
    let CopyIn {
        batches,
        writer,
        reservation,
        ..
    } = copy;
    drop(batches);
    drop(reservation);
    let _ = writer.await;
}

#[async_trait]
impl StartupHandler for PgConnection {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                if self.shared.tls_required && !client.is_secure() {
                    return Err(user_error(
                        "FATAL",
                        errors::INVALID_AUTHORIZATION,
                        "this server accepts TLS connections only (tls.required); connect with sslmode=require",
                    ));
                }
                self.remember_startup_parameters(client);
                let sasl = match &self.shared.sasl_tls {
                    Some(plus) if client.is_secure() => Some(plus),
                    _ => self.shared.sasl.as_ref(),
                };
                match (sasl, self.shared.auth_method) {
                    (Some(sasl), AuthMethod::ScramSha256) => {
                        let outcome = self
                            .driver
                            .begin_authentication(client, sasl.create())
                            .await?;
                        self.after_auth_step(client, outcome).await
                    }
                    _ => {
                        if !self.shared.trust_remote && !is_loopback(&client.socket_addr()) {
                            return Err(user_error(
                                "FATAL",
                                errors::INVALID_AUTHORIZATION,
                                format!(
                                    "trust authentication accepts loopback clients only, not {}; configure [[users]] and auth.method = \"scram-sha-256\"",
                                    client.socket_addr().ip()
                                ),
                            ));
                        }
                        self.take_backend_slot(client)?;
                        self.driver.complete_authentication(client, None).await?;
                        self.register_cancel(client);
                        Ok(())
                    }
                }
            }
            PgWireFrontendMessage::PasswordMessageFamily(message) => {
                let outcome = self
                    .driver
                    .advance_authentication(client, message)
                    .await
                    .map_err(|e| match e {
                        PgWireError::InvalidPassword(_) => {
                            let user = client.metadata().get("user").cloned().unwrap_or_default();
                            user_error(
                                "FATAL",
                                errors::INVALID_PASSWORD,
                                format!("password authentication failed for user \"{user}\""),
                            )
                        }
                        other => other,
                    })?;
                self.after_auth_step(client, outcome).await
            }
            _ => Ok(()),
        }
    }
}

impl PgConnection {
    /// Gives back this connection's startup and backend slots (its socket is closed).
    pub(crate) fn release_slots(&self) {
        let mut state = self.state();
        state.backend_slot = None;
        state.startup_slot = None;
    }

    /// A client has authenticated: it takes one of `max_connections` (or fails with
    /// 53300, as PostgreSQL does) and gives back its startup slot.
    fn take_backend_slot<C: ClientInfo>(&self, client: &C) -> PgWireResult<()> {
        let user = client.metadata().get("user").cloned().unwrap_or_default();
        let superuser = self.shared.superusers.contains(&user);
        let slot = self
            .shared
            .backends
            .take(superuser)
            .map_err(|why| user_error("FATAL", errors::TOO_MANY_CONNECTIONS, why))?;
        let mut state = self.state();
        state.backend_slot = Some(slot);
        state.startup_slot = None;
        Ok(())
    }

    async fn after_auth_step<C>(&self, client: &mut C, outcome: AuthOutcome) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match outcome {
            AuthOutcome::InProgress => Ok(()),
            AuthOutcome::Authenticated { final_message, .. } => {
                self.take_backend_slot(client)?;
                self.driver
                    .complete_authentication(client, final_message)
                    .await?;
                self.register_cancel(client);
                Ok(())
            }
        }
    }
}
