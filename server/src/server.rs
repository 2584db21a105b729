//! The server: a [`Database`] served over the PostgreSQL protocol and, when
//! `flight_listen` is set, Arrow Flight SQL, started with [`Server::builder`]. The application that starts it keeps the database and can run
//! queries in-process beside the remote clients.
//!
//! ```
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> tessera_server::Result<()> {
//! use tessera_server::{Database, Server};
//!
//! let server = Server::builder()
//!     .database(Database::in_memory()?)
//!     .pg_listen("127.0.0.1:0") // any free port
//!     .build()
//!     .await?;
//! println!("psql -h 127.0.0.1 -p {}", server.local_addr().port());
//! // In-process queries see what remote clients write, and the other way round.
//! server.database().sql("CREATE MATRIX m (2, 2)").await?;
//! server.shutdown().await;
//! # Ok(())
//! # }
//! ```

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use datafusion::error::{DataFusionError, Result};
use pgwire::api::auth::sasl::SaslMechanisms;
use pgwire::api::auth::sasl::scram::ScramAuth;
use pgwire::tokio::TlsAcceptor;
use pgwire::tokio::tokio_rustls::rustls;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;

use crate::config::{AuthMethod, ServerConfig, TlsConfig, UserConfig};
use crate::edge::{SCRAM_ITERATIONS, Users};
use crate::pg::{
    CancelRegistry, ConnectionLimits, PgConnection, PgShared, UserSource, serve_connection,
    server_parameters,
};
use crate::{Database, DatabaseOptions};

/// Starts servers; see [`Server::builder`].
#[derive(Debug)]
pub struct Server;

impl Server {
    /// A builder with the defaults of [`ServerConfig`].
    pub fn builder() -> ServerBuilder {
        ServerBuilder {
            config: ServerConfig::default(),
            database: None,
        }
    }
}

/// Settings of a server to start; [`ServerBuilder::build`] starts it.
#[derive(Debug)]
pub struct ServerBuilder {
    config: ServerConfig,
    database: Option<Database>,
}

impl ServerBuilder {
    /// Takes every setting from `config` (a TOML file's contents, say).
    pub fn config(mut self, config: ServerConfig) -> Self {
        self.config = config;
        self
    }

    /// Serves the data directory `dir` (opened, and created if missing, by `build`).
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.data_dir = dir.into();
        self
    }

    /// Serves an already open database instead of opening `data_dir`.
    pub fn database(mut self, database: Database) -> Self {
        self.database = Some(database);
        self
    }

    /// The PostgreSQL protocol's address; port 0 picks a free port
    /// ([`ServerHandle::local_addr`] tells which).
    pub fn pg_listen(mut self, addr: impl Into<String>) -> Self {
        self.config.pg_listen = addr.into();
        self
    }

    /// The Arrow Flight SQL address; port 0 picks a free port
    /// ([`ServerHandle::flight_addr`] tells which). Without it, no Flight SQL service.
    pub fn flight_listen(mut self, addr: impl Into<String>) -> Self {
        self.config.flight_listen = Some(addr.into());
        self
    }

    /// How clients authenticate.
    pub fn auth(mut self, method: AuthMethod) -> Self {
        self.config.auth.method = method;
        self
    }

    /// Adds a user with a password (for SCRAM-SHA-256).
    pub fn user(mut self, name: impl Into<String>, password: impl Into<String>) -> Self {
        self.config.users.push(UserConfig {
            name: name.into(),
            password: Some(password.into()),
            scram_verifier: None,
        });
        self
    }

    /// TLS with a PEM certificate (chain) and key; `required` rejects plaintext.
    pub fn tls(
        mut self,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
        required: bool,
    ) -> Self {
        self.config.tls = Some(TlsConfig {
            cert: cert.into(),
            key: key.into(),
            required,
        });
        self
    }

    /// At most `n` authenticated connections at once.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.config.max_connections = n;
        self
    }

    /// Of `max_connections`, `n` only the users of `auth.superusers` may take.
    pub fn superuser_reserved_connections(mut self, n: usize) -> Self {
        self.config.superuser_reserved_connections = n;
        self
    }

    /// Opens the database, binds the listener and starts serving.
    pub async fn build(self) -> Result<ServerHandle> {
        let config = self.config;
        config.validate().map_err(DataFusionError::Configuration)?;
        let database = match self.database {
            Some(db) => db,
            None => Database::open_with(
                &config.data_dir,
                DatabaseOptions {
                    memory_limit: config.memory_limit_bytes(),
                    block_cache: config.block_cache_bytes(),
                    workers: config
                        .worker_urls()
                        .map_err(DataFusionError::Configuration)?,
                    cluster_secret: config.cluster_secret.clone(),
                    ..DatabaseOptions::default()
                },
            )?,
        };
        database.set_file_policy(&config.files)?;
        let tls = match &config.tls {
            Some(t) => Some(tls_acceptor(t)?),
            None => None,
        };
        let (sasl, sasl_tls) = match config.auth.method {
            AuthMethod::ScramSha256 => {
                let users = Users::new(&config.users).map_err(DataFusionError::Configuration)?;
                let mut scram = ScramAuth::new(Arc::new(UserSource(Arc::new(users))));
                scram.set_iterations(SCRAM_ITERATIONS as usize);
                // Over TLS, SCRAM-SHA-256-PLUS too: channel binding to the server's
                // certificate (`tls-server-end-point`), for `channel_binding=require`.
                let tls = match &config.tls {
                    Some(t) => {
                        let pem = std::fs::read(&t.cert).map_err(|e| {
                            DataFusionError::Configuration(format!(
                                "tls.cert {}: {e}",
                                t.cert.display()
                            ))
                        })?;
                        let mut plus = scram.clone();
                        plus.configure_certificate(&pem).map_err(|e| {
                            DataFusionError::Configuration(format!(
                                "tls.cert {}: cannot use it for SCRAM channel binding: {e}",
                                t.cert.display()
                            ))
                        })?;
                        Some(Arc::new(SaslMechanisms::new(vec![Arc::new(plus)])))
                    }
                    None => None,
                };
                (
                    Some(Arc::new(SaslMechanisms::new(vec![Arc::new(scram)]))),
                    tls,
                )
            }
            AuthMethod::Trust => (None, None),
        };
        let cancels = Arc::new(CancelRegistry::default());
        let shared = Arc::new(PgShared {
            database: database.clone(),
            cancels: cancels.clone(),
            auth_method: config.auth.method,
            trust_remote: config.auth.trust_remote,
            tls_required: config.tls.as_ref().is_some_and(|t| t.required),
            sasl,
            sasl_tls,
            parameters: Arc::new(server_parameters()),
            statement_timeout: config.statement_timeout_duration(),
            max_connections: config.max_connections,
            backends: Arc::new(BackendSlots::new(
                config.max_connections,
                config.superuser_reserved_connections,
            )),
            superusers: config.auth.superusers.iter().cloned().collect(),
            pids: Arc::new(crate::pg::BackendPids::new(database.activity())),
        });
        let listener = TcpListener::bind(&config.pg_listen).await.map_err(|e| {
            DataFusionError::Configuration(format!("cannot listen on {}: {e}", config.pg_listen))
        })?;
        let local_addr = listener.local_addr()?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let flight = match config.flight_address() {
            Some(addr) => Some(
                crate::flight::serve(addr, &config, database.clone(), shutdown_rx.clone()).await?,
            ),
            None => None,
        };
        let limits = ConnectionLimits {
            startup_timeout: config.startup_timeout_duration(),
            max_message_size: config.max_message_size_bytes(),
        };
        let accept = tokio::spawn(accept_loop(AcceptLoop {
            listener,
            tls,
            shared,
            cancels,
            limits,
            startup_slots: Arc::new(StartupSlots::new(config.max_startup_connections)),
            shutdown: shutdown_rx,
            shutdown_timeout: config.shutdown_timeout_duration(),
        }));
        tracing::info!(%local_addr, "serving the PostgreSQL protocol");
        Ok(ServerHandle {
            local_addr,
            flight_addr: flight.as_ref().map(|f| f.local_addr),
            database,
            shutdown: shutdown_tx,
            accept: Some(accept),
            flight: flight.map(|f| f.task),
        })
    }
}

/// A running server. Dropping it without [`ServerHandle::shutdown`] stops accepting
/// and closes idle connections too, but does not wait for them.
#[derive(Debug)]
pub struct ServerHandle {
    local_addr: SocketAddr,
    flight_addr: Option<SocketAddr>,
    database: Database,
    shutdown: watch::Sender<bool>,
    accept: Option<tokio::task::JoinHandle<()>>,
    flight: Option<tokio::task::JoinHandle<()>>,
}

impl ServerHandle {
    /// The address the PostgreSQL protocol listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address Arrow Flight SQL listens on, if it is served.
    pub fn flight_addr(&self) -> Option<SocketAddr> {
        self.flight_addr
    }

    /// The database the server serves, for in-process queries.
    pub fn database(&self) -> &Database {
        &self.database
    }

    /// Stops accepting connections, lets running statements finish (up to
    /// `shutdown_timeout`), closes every connection and returns. Everything committed
    /// stays committed: each statement commits atomically.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(accept) = self.accept.take() {
            let _ = accept.await;
        }
        if let Some(flight) = self.flight.take() {
            let _ = flight.await;
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

struct AcceptLoop {
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shared: Arc<PgShared>,
    cancels: Arc<CancelRegistry>,
    limits: ConnectionLimits,
    startup_slots: Arc<StartupSlots>,
    shutdown: watch::Receiver<bool>,
    shutdown_timeout: Duration,
}

/// The authenticated connections, counted as PostgreSQL counts backends: a slot is
/// taken once a client has authenticated and kept until it leaves. The last
/// `reserved` slots are for superusers.
#[derive(Debug)]
pub(crate) struct BackendSlots {
    taken: AtomicUsize,
    max: usize,
    reserved: usize,
}

impl BackendSlots {
    pub(crate) fn new(max: usize, reserved: usize) -> BackendSlots {
        BackendSlots {
            taken: AtomicUsize::new(0),
            max,
            // One slot stays open to every user.
            reserved: reserved.min(max.saturating_sub(1)),
        }
    }

    /// A slot for a client that has authenticated, or PostgreSQL's message for why
    /// there is none.
    pub(crate) fn take(self: &Arc<Self>, superuser: bool) -> Result<BackendSlot, &'static str> {
        let limit = if superuser {
            self.max
        } else {
            self.max.saturating_sub(self.reserved)
        };
        match self
            .taken
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            }) {
            Ok(_) => Ok(BackendSlot(self.clone())),
            Err(n) if n < self.max => {
                Err("remaining connection slots are reserved for superusers (auth.superusers)")
            }
            Err(_) => Err("sorry, too many clients already"),
        }
    }
}

/// One taken [`BackendSlots`] slot, given back when dropped.
#[derive(Debug)]
pub(crate) struct BackendSlot(Arc<BackendSlots>);

impl Drop for BackendSlot {
    fn drop(&mut self) {
        self.0.taken.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The connections still authenticating, oldest first, at most `max`. When a new one
/// arrives and all are taken, the oldest is told to close: a client that opens
/// connections and sends nothing cannot keep real clients out for longer than they
/// take to authenticate.
#[derive(Debug)]
pub(crate) struct StartupSlots {
    waiting: std::sync::Mutex<VecDeque<(u64, oneshot::Sender<()>)>>,
    next_id: AtomicU64,
    max: usize,
}

impl StartupSlots {
    fn new(max: usize) -> StartupSlots {
        StartupSlots {
            waiting: std::sync::Mutex::default(),
            next_id: AtomicU64::new(0),
            max: max.max(1),
        }
    }

    /// A slot for a new connection, and the signal that it must give the slot up.
    fn take(self: &Arc<Self>) -> (StartupSlot, oneshot::Receiver<()>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (evict, evicted) = oneshot::channel();
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        while waiting.len() >= self.max {
            match waiting.pop_front() {
                Some((_, oldest)) => {
                    let _ = oldest.send(());
                }
                None => break,
            }
        }
        waiting.push_back((id, evict));
        (
            StartupSlot {
                slots: self.clone(),
                id,
            },
            evicted,
        )
    }
}

/// A connection's place among those still authenticating; dropped once it has
/// authenticated (or left).
#[derive(Debug)]
pub(crate) struct StartupSlot {
    slots: Arc<StartupSlots>,
    id: u64,
}

impl Drop for StartupSlot {
    fn drop(&mut self) {
        let mut waiting = self.slots.waiting.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(at) = waiting.iter().position(|(id, _)| *id == self.id) {
            waiting.remove(at);
        }
    }
}

async fn accept_loop(mut a: AcceptLoop) {
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = a.shutdown.changed() => break,
            accepted = a.listener.accept() => accepted,
        };
        while connections.try_join_next().is_some() {}
        let (tcp, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and the like: wait, then go on accepting.
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (slot, evicted) = a.startup_slots.take();
        let connection = match PgConnection::new(a.shared.clone(), peer, slot) {
            Ok(c) => Arc::new(c),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start a session for a connection");
                continue;
            }
        };
        let (tls, cancels, limits, shutdown) = (
            a.tls.clone(),
            a.cancels.clone(),
            a.limits,
            a.shutdown.clone(),
        );
        connections.spawn(async move {
            serve_connection(tcp, tls, connection, cancels, limits, shutdown, evicted).await;
        });
    }
    drop(a.listener);
    // Idle connections close at once; running statements get `shutdown_timeout`.
    let drained = tokio::time::timeout(a.shutdown_timeout, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            left = connections.len(),
            "statements still running after the shutdown timeout are stopped"
        );
        connections.shutdown().await;
    }
}

fn tls_acceptor(config: &TlsConfig) -> Result<TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(&config.cert)
        .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| {
            DataFusionError::Configuration(format!("tls.cert {}: {e}", config.cert.display()))
        })?;
    let key = PrivateKeyDer::from_pem_file(&config.key).map_err(|e| {
        DataFusionError::Configuration(format!("tls.key {}: {e}", config.key.display()))
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server_config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|e| DataFusionError::Configuration(format!("TLS: {e}")))?;
    server_config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(server_config)))
}
