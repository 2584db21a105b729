//! UPDATE and DELETE, and arrays in SQL, from psycopg 3 against `tessera serve`: the
//! changed table and matrix checked against the same changes made in Python / NumPy,
//! the row counts in the command tags, nothing committed by a failing UPDATE, `= ANY(%s)`
//! with a Python list in text and binary, array literals and array results as lists.
//! Flight SQL's DoPutUpdate reports the same counts. `.ci/run` installs psycopg and
//! NumPy; a missing one fails the test.

use std::path::Path;

use crate::psql::start;
use crate::python;

const CLIENTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/clients");

/// The checks are in the script.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn psycopg_update_delete_on_tables_and_matrices_and_array_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let port = server.local_addr().port().to_string();
    let script = std::fs::read_to_string(Path::new(CLIENTS).join("dml_arrays_client.py")).unwrap();
    let cwd = dir.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || python::run_args(&cwd, &script, &[&port]))
        .await
        .unwrap();
    assert_eq!(out.trim(), "ok");
    server.shutdown().await;
}
