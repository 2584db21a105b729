//! The PostgreSQL wire protocol front end, on the pgwire crate.
//!
//! ```text
//!  TcpStream ─ TLS negotiation ─ MessageSizeLimit ─ Framed(pgwire codec)
//!     └ serve_connection: one loop per connection, one PgConnection (its Session)
//!          Startup/SCRAM ─ PgConnection as StartupHandler; verifiers from
//!                          the edge's Users through UserSource        (auth.rs)
//!          Query         ─ on_query: statements one by one            (handler.rs)
//!          Parse/Bind/Describe/Execute ─ StatementParser + do_query   (handler.rs)
//!          CopyData/Done ─ COPY FROM STDIN                            (copy.rs)
//!          CancelRequest ─ CancelRegistry ─ the running statement's Interrupt (cancel.rs)
//!          while a statement runs: progress NoticeResponses                (notice.rs)
//! ```
//!
//! What the PostgreSQL and Flight SQL wires share (users, loopback trust, cancellation)
//! lives in [`crate::edge`]; this module holds only the pgwire glue.
//!
//! Statements go through [`statement::classify`] first: transaction control, the
//! PostgreSQL settings drivers send, `SHOW`, `SELECT version()` and COPY over the
//! connection are answered here; everything else runs in the connection's session.
//! Values are encoded by [`types`].

mod auth;
mod cancel;
mod connection;
mod copy;
mod handler;
mod notice;
mod statement;
pub(crate) mod types;

/// Makes a PostgreSQL-style SCRAM verifier for a `[[users]]` entry's `scram_verifier`.
pub use crate::edge::scram_verifier;
pub(crate) use auth::UserSource;
pub(crate) use cancel::{BackendPids, CancelRegistry};
pub(crate) use connection::{ConnectionLimits, serve_connection};
pub(crate) use handler::{PgConnection, PgShared, server_parameters};

/// The PostgreSQL version Tessera reports (`server_version`, `SELECT version()`):
/// clients pick their catalog queries by it, and the emulated catalog follows 15.
pub const PG_SERVER_VERSION: &str = "15.0";
/// [`PG_SERVER_VERSION`] as `server_version_num`.
pub const PG_SERVER_VERSION_NUM: &str = "150000";
