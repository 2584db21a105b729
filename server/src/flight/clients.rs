//! Who is calling: credentials (Basic on the Handshake, then a Bearer token on every
//! call) checked against the same users as the PostgreSQL side, and each
//! authenticated client's state (its session and prepared statements).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::alphabet;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use bytes::Bytes;
use datafusion::error::{DataFusionError, Result};
use ring::rand::SecureRandom;
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

use super::coded_status;
use super::service::FlightPrepared;
use crate::edge::{Users, is_loopback};
use crate::errors;
use crate::{Database, Session};

/// A client's token is forgotten after this long without a call.
const TOKEN_IDLE_TIMEOUT: Duration = Duration::from_secs(8 * 3600);

/// How callers prove who they are.
pub(crate) enum Authenticator {
    /// No password; loopback callers only unless `remote`.
    Trust { remote: bool },
    /// A user name and password (Basic) checked against the configured users.
    Password(Arc<Users>),
}

/// One authenticated client: what a bearer token stands for.
pub(crate) struct FlightClient {
    /// Unique in the process: results are fetched only by the client that ran them.
    pub(crate) id: u64,
    pub(crate) user: String,
    pub(crate) session: Session,
    prepared: Mutex<HashMap<Bytes, Arc<FlightPrepared>>>,
    last_used: Mutex<Instant>,
}

impl std::fmt::Debug for FlightClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlightClient")
            .field("user", &self.user)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its data consistent, so a poisoned lock is usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl FlightClient {
    fn new(user: String, session: Session) -> FlightClient {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        FlightClient {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            user,
            session,
            prepared: Mutex::new(HashMap::new()),
            last_used: Mutex::new(Instant::now()),
        }
    }

    /// Keeps a prepared statement under a new handle and returns the handle.
    pub(crate) fn add_prepared(&self, prepared: FlightPrepared) -> Result<Bytes> {
        let handle = Bytes::from(random_bytes::<16>()?.to_vec());
        lock(&self.prepared).insert(handle.clone(), Arc::new(prepared));
        Ok(handle)
    }

    /// The prepared statement with `handle`.
    pub(crate) fn prepared(&self, handle: &[u8]) -> Result<Arc<FlightPrepared>, Status> {
        lock(&self.prepared).get(handle).cloned().ok_or_else(|| {
            Status::not_found(
                "no prepared statement with this handle (closed, or from another session)",
            )
        })
    }

    /// Forgets a prepared statement; true if it existed.
    pub(crate) fn close_prepared(&self, handle: &[u8]) -> bool {
        lock(&self.prepared).remove(handle).is_some()
    }
}

/// The authenticated caller of a request, put into its extensions by the gate.
#[derive(Debug, Clone)]
pub(crate) struct Caller(pub(crate) Arc<FlightClient>);

/// The clients the server knows, by bearer token.
pub(crate) struct Clients {
    database: Database,
    authenticator: Authenticator,
    tokens: Mutex<HashMap<String, Arc<FlightClient>>>,
    /// Callers without a token in trust mode share this client.
    anonymous: Arc<FlightClient>,
    /// Callers that send Basic credentials on every call share one client per user.
    basic: Mutex<HashMap<String, Arc<FlightClient>>>,
}

impl Clients {
    pub(crate) fn new(database: Database, authenticator: Authenticator) -> Result<Clients> {
        let session = database.session()?;
        session.set_file_access(database.file_access_for("anonymous"));
        let anonymous = Arc::new(FlightClient::new("anonymous".into(), session));
        Ok(Clients {
            database,
            authenticator,
            tokens: Mutex::new(HashMap::new()),
            anonymous,
            basic: Mutex::new(HashMap::new()),
        })
    }

    /// The caller of a request that is not a Handshake: a bearer token it got from the
    /// Handshake, Basic credentials, or (trust) nothing.
    pub(crate) fn authenticate(
        &self,
        metadata: &MetadataMap,
        peer: Option<SocketAddr>,
    ) -> Result<Arc<FlightClient>, Status> {
        match credentials(metadata)? {
            Credentials::Bearer(token) => {
                let client = lock(&self.tokens).get(&token).cloned();
                match client {
                    Some(client) => {
                        *lock(&client.last_used) = Instant::now();
                        Ok(client)
                    }
                    None => Err(not_authorized(
                        "invalid or expired bearer token; authenticate again with the Handshake",
                    )),
                }
            }
            Credentials::Basic { user, password } => {
                self.check_password(&user, &password, peer)?;
                let mut basic = lock(&self.basic);
                if let Some(client) = basic.get(&user) {
                    return Ok(client.clone());
                }
                let client = Arc::new(FlightClient::new(user.clone(), self.new_session(&user)?));
                basic.insert(user, client.clone());
                Ok(client)
            }
            Credentials::None => match self.authenticator {
                Authenticator::Trust { remote } => {
                    check_trusted(remote, peer)?;
                    Ok(self.anonymous.clone())
                }
                Authenticator::Password(_) => Err(not_authorized(
                    "authentication required: Handshake with Basic credentials, then send the Bearer token",
                )),
            },
        }
    }

    /// The Handshake: checks Basic credentials (none needed with trust) and returns a
    /// new bearer token for a new client with its own session.
    pub(crate) fn handshake(
        &self,
        metadata: &MetadataMap,
        peer: Option<SocketAddr>,
    ) -> Result<String, Status> {
        let user = match credentials(metadata)? {
            Credentials::Basic { user, password } => {
                self.check_password(&user, &password, peer)?;
                user
            }
            Credentials::Bearer(_) | Credentials::None => match self.authenticator {
                Authenticator::Trust { remote } => {
                    check_trusted(remote, peer)?;
                    "anonymous".to_string()
                }
                Authenticator::Password(_) => {
                    return Err(not_authorized(
                        "the Handshake needs Basic credentials (authorization: Basic base64(user:password))",
                    ));
                }
            },
        };
        let token = URL_SAFE_NO_PAD.encode(random_bytes::<32>().map_err(|e| super::status(&e))?);
        let client = Arc::new(FlightClient::new(user.clone(), self.new_session(&user)?));
        let mut tokens = lock(&self.tokens);
        let now = Instant::now();
        tokens.retain(|_, c| now.duration_since(*lock(&c.last_used)) < TOKEN_IDLE_TIMEOUT);
        tokens.insert(token.clone(), client);
        Ok(token)
    }

    /// A session for `user`, with the server files its role may use.
    fn new_session(&self, user: &str) -> Result<Session, Status> {
        let session = self.database.session().map_err(|e| super::status(&e))?;
        session.set_file_access(self.database.file_access_for(user));
        Ok(session)
    }

    fn check_password(
        &self,
        user: &str,
        password: &str,
        peer: Option<SocketAddr>,
    ) -> Result<(), Status> {
        match &self.authenticator {
            // With trust, any name is accepted, as PostgreSQL's trust does.
            Authenticator::Trust { remote } => check_trusted(*remote, peer),
            Authenticator::Password(users) => {
                if users.verify_password(user, password) {
                    Ok(())
                } else {
                    tracing::info!(user, ?peer, "Flight SQL authentication failed");
                    Err(password_failed(user))
                }
            }
        }
    }
}

/// A wrong password or an unknown user: one status and message for both, 28P01, as
/// pgwire answers.
fn password_failed(user: &str) -> Status {
    coded_status(
        Code::Unauthenticated,
        errors::INVALID_PASSWORD,
        format!("password authentication failed for user \"{user}\""),
    )
}

/// Credentials missing, malformed, expired or not allowed from where they come: 28000.
pub(crate) fn not_authorized(message: impl Into<String>) -> Status {
    coded_status(
        Code::Unauthenticated,
        errors::INVALID_AUTHORIZATION,
        message,
    )
}

fn check_trusted(remote: bool, peer: Option<SocketAddr>) -> Result<(), Status> {
    if remote || peer.is_some_and(|p| is_loopback(&p)) {
        Ok(())
    } else {
        Err(not_authorized(
            "trust authentication is for loopback clients only (set auth.trust_remote, or configure users)",
        ))
    }
}

enum Credentials {
    None,
    Bearer(String),
    Basic { user: String, password: String },
}

/// The `authorization` header: `Bearer <token>` or `Basic <base64(user:password)>`,
/// the base64 with or without padding (ADBC sends it unpadded, pyarrow padded).
fn credentials(metadata: &MetadataMap) -> Result<Credentials, Status> {
    let Some(value) = metadata.get("authorization") else {
        return Ok(Credentials::None);
    };
    let value = value
        .to_str()
        .map_err(|_| not_authorized("the authorization header is not text"))?
        .trim();
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Ok(Credentials::Bearer(rest.to_string()));
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let lenient = GeneralPurpose::new(
            &alphabet::STANDARD,
            GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
        );
        let text = lenient
            .decode(rest)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or_else(|| not_authorized("Basic credentials are not base64 of user:password"))?;
        let (user, password) = text.split_once(':').ok_or_else(|| {
            not_authorized("Basic credentials lack the ':' between user and password")
        })?;
        return Ok(Credentials::Basic {
            user: user.to_string(),
            password: password.to_string(),
        });
    }
    Err(not_authorized(format!(
        "unsupported authorization scheme '{scheme}' (use Basic or Bearer)"
    )))
}

/// `N` bytes from the system's secure random number generator.
pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut bytes = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| {
            DataFusionError::Internal("the system random number generator failed".into())
        })?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(value: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert("authorization", value.parse().unwrap());
        m
    }

    #[test]
    fn basic_credentials_decode_with_and_without_padding() {
        // "alice:pw" is 8 bytes: base64 needs one '=' of padding.
        for value in [
            "Basic YWxpY2U6cHc=",
            "Basic YWxpY2U6cHc",
            "basic  YWxpY2U6cHc= ",
        ] {
            match credentials(&header(value)).unwrap() {
                Credentials::Basic { user, password } => {
                    assert_eq!(
                        (user.as_str(), password.as_str()),
                        ("alice", "pw"),
                        "{value}"
                    );
                }
                _ => panic!("{value}: not Basic"),
            }
        }
        assert!(credentials(&header("Basic !!!")).is_err());
        assert!(credentials(&header("Digest abc")).is_err());
        assert!(matches!(
            credentials(&header("Bearer tok")).unwrap(),
            Credentials::Bearer(t) if t == "tok"
        ));
        assert!(matches!(
            credentials(&MetadataMap::new()).unwrap(),
            Credentials::None
        ));
    }
}
