//! # tessera-client
//!
//! A Rust client for Tessera over Arrow Flight SQL: SQL in, Arrow record batches out,
//! without a row-by-row conversion on either side. It speaks only the wire formats
//! (Flight SQL over gRPC, Arrow IPC), so it works with any Flight SQL server for the
//! standard parts; loading cells into arrays is Tessera's.
//!
//! ```text
//!   Client ─ query / query_stream ── GetFlightInfo, then DoGet per endpoint ─┐
//!     │    ─ execute ─────────────── DoPut (CommandStatementUpdate)          │ one HTTP/2
//!     │    ─ load_array / load_table DoPut (CommandStatementIngest)          │ connection,
//!     │    ─ prepare ─────────────── DoAction (CreatePreparedStatement)      │ bearer token
//!     └ PreparedStatement ── query / execute: DoPut (parameters), then run   │ on each call
//!   QueryStream ── QueryCanceller::cancel: DoAction (CancelFlightInfo) ──────┘
//! ```
//!
//! Connecting with a user name and password calls Flight's Handshake with Basic
//! credentials once; the bearer token it returns goes with every later call, and stands
//! for a session on the server (its `SET` state and prepared statements). Errors keep
//! the gRPC status code and, when the server sends one, the SQLSTATE
//! ([`Error::code`], [`Error::sqlstate`]).
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use futures::TryStreamExt;
//! use tessera_client::arrow_array::{Float64Array, Int64Array, RecordBatch};
//! use tessera_client::{Client, Parameters};
//!
//! # async fn run() -> tessera_client::Result<()> {
//! // `tessera serve` listens on 127.0.0.1:50051 and trusts loopback callers.
//! let client = Client::connect("http://127.0.0.1:50051").await?;
//!
//! client.execute("CREATE MATRIX a (2, 2); CREATE MATRIX b (2, 2)").await?;
//! // Cells (i, j, v) into the arrays: a = [[1, 2], [0, 1]], b = 3 I.
//! let cells = |i: Vec<i64>, j: Vec<i64>, v: Vec<f64>| {
//!     RecordBatch::try_from_iter([
//!         ("i", Arc::new(Int64Array::from(i)) as _),
//!         ("j", Arc::new(Int64Array::from(j)) as _),
//!         ("v", Arc::new(Float64Array::from(v)) as _),
//!     ])
//! };
//! client.load_array("a", cells(vec![0, 0, 1], vec![0, 1, 1], vec![1.0, 2.0, 1.0])?).await?;
//! client.load_array("b", cells(vec![0, 1], vec![0, 1], vec![3.0, 3.0])?).await?;
//!
//! // The product, streamed as it is computed.
//! let mut product = client.query_stream("SELECT i, j, v FROM matmul(a, b)").await?;
//! while let Some(batch) = product.try_next().await? {
//!     println!("{} cells", batch.num_rows());
//! }
//!
//! // A prepared statement with a parameter.
//! let mut row_sum = client.prepare("SELECT sum(v) FROM a WHERE i = $1").await?;
//! let first = row_sum.query(Parameters::new().push(0_i64)).await?;
//! row_sum.close().await?;
//! # Ok(()) }
//! ```

mod client;
mod connect;
mod error;
mod load;
mod prepared;
mod stream;

pub use client::Client;
pub use connect::{ClientBuilder, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_MESSAGE_SIZE};
pub use error::{Error, Result, SQLSTATE_METADATA_KEY};
pub use load::LoadMode;
pub use prepared::{ParameterValue, Parameters, PreparedStatement};
pub use stream::{QueryCanceller, QueryStream};

/// The Arrow arrays and record batches the client takes and returns (the same
/// version, so that no second copy of Arrow is needed).
pub use arrow_array;
/// Arrow schemas and types.
pub use arrow_schema;
/// gRPC status codes, as [`Error::code`] returns them.
pub use tonic::Code;
