//! The Arrow Flight SQL front end, on arrow-flight's `FlightSqlService` over tonic.
//!
//! ```text
//!  TcpListener ─ (TLS) ─ tonic/h2
//!  └ CheckedRequests: a reset request body fails, a message over the limit is  (wire.rs)
//!    │                refused with RESOURCE_EXHAUSTED
//!    └ FlightServiceServer (tonic's message size limits)
//!     └ Gate: authentication on every call, Handshake (Basic -> Bearer),       (gate.rs)
//!       │     panics and malformed requests turned into statuses
//!       └ TesseraFlightSql (arrow-flight's FlightSqlService):               (service.rs)
//!            statements, prepared statements, DoGet of stashed results,
//!            metadata (GetSqlInfo, catalogs, schemas, tables)               (metadata.rs)
//!            bulk load into tables and arrays                               (ingest.rs)
//!  Clients (clients.rs): bearer token -> FlightClient { Session, prepared statements }
//!  ResultStore (results.rs): GetFlightInfo runs the statement; its result waits under
//!                            a ticket for DoGet, cancellable until it is read
//!  Polls (poll.rs): PollFlightInfo runs the statement in the background and answers
//!                   its progress until its first batch is ready
//! ```
//!
//! The service shares the [`Database`] with the PostgreSQL front end and its users,
//! TLS certificate and error classification ([`crate::errors`]); it stops with the
//! same [`crate::ServerHandle::shutdown`].

mod clients;
mod gate;
mod ingest;
mod metadata;
mod poll;
mod results;
mod service;
mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arrow_flight::flight_service_server::FlightServiceServer;
use datafusion::error::{DataFusionError, Result};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::metadata::MetadataValue;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, ServerTlsConfig};
use tonic::{Code, Status};

use crate::Database;
use crate::config::{AuthMethod, ServerConfig};
use crate::edge::Users;
use crate::errors;

use clients::{Authenticator, Clients};
use gate::Gate;
use results::ResultStore;
use service::TesseraFlightSql;
use wire::CheckedRequests;

/// The gRPC metadata key that carries the SQLSTATE of an error status; the client
/// crate defines it, so the server sends what clients read.
pub use tessera_client::SQLSTATE_METADATA_KEY;

/// A Tessera error as a gRPC status: the code from [`errors::grpc_code`], the message
/// a client sees, and the SQLSTATE in the `tessera-sqlstate` metadata entry.
pub(crate) fn status(error: &DataFusionError) -> Status {
    coded_status(
        errors::grpc_code(error),
        errors::sqlstate(error),
        errors::client_message(error),
    )
}

/// The longest status message sent: a status travels in HTTP/2 headers, and a message
/// over the peer's header limit (an error quoting a long statement) resets the stream.
const MAX_STATUS_MESSAGE: usize = 2048;

/// `message`, cut at a character boundary to [`MAX_STATUS_MESSAGE`] bytes.
fn bounded_message(mut message: String) -> String {
    if message.len() > MAX_STATUS_MESSAGE {
        let mut end = MAX_STATUS_MESSAGE - 3;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str("...");
    }
    message
}

/// A gRPC status with its SQLSTATE in the `tessera-sqlstate` metadata entry.
pub(crate) fn coded_status(
    code: Code,
    sqlstate: &'static str,
    message: impl Into<String>,
) -> Status {
    let mut status = Status::new(code, bounded_message(message.into()));
    status
        .metadata_mut()
        .insert(SQLSTATE_METADATA_KEY, MetadataValue::from_static(sqlstate));
    status
}

/// A running Flight SQL listener.
#[derive(Debug)]
pub(crate) struct FlightListener {
    pub(crate) local_addr: SocketAddr,
    pub(crate) task: tokio::task::JoinHandle<()>,
}

/// Binds `addr` and serves Flight SQL until `shutdown` turns true; running calls then
/// get `shutdown_timeout` to finish.
pub(crate) async fn serve(
    addr: &str,
    config: &ServerConfig,
    database: Database,
    shutdown: watch::Receiver<bool>,
) -> Result<FlightListener> {
    let authenticator = match config.auth.method {
        AuthMethod::ScramSha256 => Authenticator::Password(Arc::new(
            Users::new(&config.users).map_err(DataFusionError::Configuration)?,
        )),
        AuthMethod::Trust => Authenticator::Trust {
            remote: config.auth.trust_remote,
        },
    };
    let clients = Arc::new(Clients::new(database.clone(), authenticator)?);
    let service = TesseraFlightSql::new(
        database,
        Arc::new(ResultStore::default()),
        config.statement_timeout_duration(),
        config.max_connections,
    )?;
    let limit = config.max_message_size_bytes();
    let server = FlightServiceServer::new(Gate::new(service, clients))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    let server = CheckedRequests::new(server, limit);

    let listener = TcpListener::bind(addr).await.map_err(|e| {
        DataFusionError::Configuration(format!("cannot listen on {addr} (flight_listen): {e}"))
    })?;
    let local_addr = listener.local_addr()?;
    let mut builder = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(30)));
    if let Some(tls) = &config.tls {
        let read = |path: &std::path::Path, what: &str| {
            std::fs::read(path).map_err(|e| {
                DataFusionError::Configuration(format!("tls.{what} {}: {e}", path.display()))
            })
        };
        let identity = Identity::from_pem(read(&tls.cert, "cert")?, read(&tls.key, "key")?);
        builder = builder
            .tls_config(ServerTlsConfig::new().identity(identity))
            .map_err(|e| DataFusionError::Configuration(format!("TLS for Flight SQL: {e}")))?;
    }
    let shutdown_timeout = config.shutdown_timeout_duration();
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let task = tokio::spawn(async move {
        let mut signal = shutdown.clone();
        let serving =
            builder
                .add_service(server)
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = signal.wait_for(|stop| *stop).await;
                });
        tokio::pin!(serving);
        let mut stopping = shutdown;
        tokio::select! {
            result = &mut serving => {
                if let Err(e) = result {
                    tracing::error!(error = %e, "the Flight SQL server stopped");
                }
                return;
            }
            _ = stopping.wait_for(|stop| *stop) => {}
        }
        // Graceful shutdown waits for running calls; a stream nobody reads is cut off.
        if tokio::time::timeout(shutdown_timeout, serving)
            .await
            .is_err()
        {
            tracing::warn!("Flight SQL calls still running after the shutdown timeout are stopped");
        }
    });
    tracing::info!(%local_addr, "serving Arrow Flight SQL");
    Ok(FlightListener { local_addr, task })
}
