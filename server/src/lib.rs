//! # tessera-server
//!
//! The embedded database: [`Database`] opens a data directory (or lives in memory) and
//! runs SQL scripts that mix Tessera's statements (`CREATE MATRIX`, `COPY`, ...) with
//! all of DataFusion's SQL; [`Session`]s share its data and memory pool but keep their
//! own `SET` state. The `tessera` binary (`src/main.rs`) is a thin CLI over it.
//!
//! ```text
//!   Database ── Store (arrays: <dir>/store/)         one RuntimeEnv, one memory pool
//!      │      └ TesseraCatalog (tables: <dir>/tables/)
//!      └── Session ── SessionContext (own config, SET) ── planner::session::execute
//! ```
//!
//! Errors are [`DataFusionError`](datafusion::error::DataFusionError)s whose kind says
//! whose fault they are: `Plan` (or `SQL`) for a user's mistake, `Execution` for a run
//! that failed (a bad file, damaged data), `ResourcesExhausted` when the memory budget
//! does not suffice, `Internal` for a bug.

mod activity;
pub mod cli;
pub mod config;
mod database;
mod edge;
pub mod errors;
mod flight;
pub mod pg;
pub mod pg_catalog;
mod plan_cache;
mod server;
mod session;

pub use config::ServerConfig;
pub use database::{Database, DatabaseOptions};
pub use datafusion::error::{DataFusionError as Error, Result};
pub use flight::SQLSTATE_METADATA_KEY;
pub use server::{Server, ServerBuilder, ServerHandle};
pub use session::{PreparedStatement, Session};

/// The stack size of the `tessera` binary's runtime threads. Statements are refused
/// beyond a nesting depth (`tessera_planner::ddl::MAX_NESTING`, SQLSTATE 54001) that
/// fits tokio's default 2 MiB; the larger stacks leave room to spare for the
/// recursion DataFusion does not guard (clones, drops, expression evaluation).
pub const THREAD_STACK_SIZE: usize = 16 << 20;
