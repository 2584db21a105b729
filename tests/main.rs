//! Tessera's integration tests: one binary, one module per area.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)] // tests may panic

mod clients;
mod copy_binary;
mod crash_soak;
mod distributed;
mod dml;
mod docs_links;
mod explain;
mod flight;
mod generated_statements;
mod guards;
mod hostile_clients;
mod la_numpy;
mod ml_numpy;
mod nd_files;
mod pg_catalog;
mod pgwire;
mod placement;
mod psql;
mod python;
mod python_package;
mod reliability_storage;
mod reliability_tables;
mod rust_client;
mod shell;
mod slt;
mod sql_database;
mod sqlalchemy;
mod storage_format;
mod storage_io;
mod storage_load;
mod storage_store;
mod zarr_files;
