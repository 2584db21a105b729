//! The edge: what both wire protocols (PostgreSQL in [`crate::pg`], Arrow Flight SQL in
//! `crate::flight`) share between a client's bytes and a [`crate::Session`].
//!
//! ```text
//!   pg/ (pgwire handlers)  ──┐
//!                            ├── edge ── auth.rs:   users as SCRAM verifiers, password
//!   flight/ (tonic service) ─┘           │          checks, loopback trust
//!                                        └ cancel.rs: QueryControl / Interrupt, how a
//!                                                     cancel or statement_timeout stops
//!                                                     a running statement
//! ```
//!
//! Nothing here implements a wire's traits: pgwire's `AuthSource` and `CancelHandler`
//! stay in `pg/` and call into this module, as Flight's gate and result store do.

mod auth;
mod cancel;
mod tags;

pub use auth::scram_verifier;
pub(crate) use auth::{SCRAM_ITERATIONS, Users, is_loopback};
pub(crate) use cancel::{Interrupt, QueryControl};
pub(crate) use tags::dml_tag;
