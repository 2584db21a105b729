//! The data scientist's clients against the PostgreSQL server: SQLAlchemy 2 with the
//! psycopg 3 dialect, pandas' `read_sql` / `to_sql` through it, and the protocol detail
//! batch inserts depend on (Describe of a statement that returns no rows answers
//! NoData). `.ci/run` installs SQLAlchemy and pandas; a missing one fails the test.

use std::io::Write;
use std::path::Path;

use crate::hostile_clients::{connected, message, until_ready};
use crate::psql::start;
use crate::python;

const CLIENTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/clients");

/// SQLAlchemy's engine, inspector and table reflection; pandas.read_sql of a table and
/// of a matmul (checked against NumPy); DataFrame.to_sql and reading it back; the
/// connection's own pid, role and settings from the catalog functions; SHOW TABLES.
/// The checks are in the script.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlalchemy_inspector_pandas_read_sql_and_to_sql() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let port = server.local_addr().port().to_string();
    let script = std::fs::read_to_string(Path::new(CLIENTS).join("sqlalchemy_client.py")).unwrap();
    let cwd = dir.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || python::run_args(&cwd, &script, &[&port]))
        .await
        .unwrap();
    assert_eq!(out.trim(), "ok");
    server.shutdown().await;
}

/// Parse, Describe, Bind, Describe, Execute of one statement, as drivers send them;
/// returns the backend messages' type bytes up to ReadyForQuery and the command tag.
fn describe_and_execute(port: u16, sql: &str, parameter: &str) -> (String, String) {
    let mut s = connected(port);
    let mut parse = b"s1\0".to_vec();
    parse.extend_from_slice(sql.as_bytes());
    parse.push(0);
    parse.extend_from_slice(&0i16.to_be_bytes());
    let mut bind = b"p1\0s1\0".to_vec();
    bind.extend_from_slice(&0i16.to_be_bytes());
    bind.extend_from_slice(&1i16.to_be_bytes());
    bind.extend_from_slice(&(parameter.len() as i32).to_be_bytes());
    bind.extend_from_slice(parameter.as_bytes());
    bind.extend_from_slice(&0i16.to_be_bytes());
    let mut bytes = message(b'P', &parse);
    bytes.extend(message(b'D', b"Ss1\0"));
    bytes.extend(message(b'B', &bind));
    bytes.extend(message(b'D', b"Pp1\0"));
    let mut execute = b"p1\0".to_vec();
    execute.extend_from_slice(&0i32.to_be_bytes());
    bytes.extend(message(b'E', &execute));
    bytes.extend(message(b'S', &[]));
    s.write_all(&bytes).unwrap();
    let answers = until_ready(&mut s);
    let kinds = answers.iter().map(|m| m.0 as char).collect();
    let tag = answers
        .iter()
        .find(|m| m.0 == b'C')
        .map(|m| String::from_utf8_lossy(m.1.strip_suffix(b"\0").unwrap_or(&m.1)).into_owned())
        .unwrap_or_default();
    (kinds, tag)
}

/// Describe of an INSERT with a parameter answers ParameterDescription then NoData, for
/// the statement and for its portal, as PostgreSQL does (pgJDBC's executeBatch counts
/// 0 rows per INSERT after an empty RowDescription); a SELECT's still describes its row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_of_a_statement_without_rows_answers_no_data() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    server
        .database()
        .sql("CREATE TABLE nums (x BIGINT)")
        .await
        .unwrap();
    let port = server.local_addr().port();
    let (insert, select) = tokio::task::spawn_blocking(move || {
        (
            describe_and_execute(port, "INSERT INTO nums VALUES ($1)", "7"),
            describe_and_execute(port, "SELECT x + $1 AS y FROM nums", "1"),
        )
    })
    .await
    .unwrap();
    // ParseComplete, ParameterDescription, NoData, BindComplete, NoData,
    // CommandComplete, ReadyForQuery.
    assert_eq!(insert, ("1tn2nCZ".to_string(), "INSERT 0 1".to_string()));
    // ... RowDescription for both Describes, and the one row.
    assert_eq!(select, ("1tT2TDCZ".to_string(), "SELECT 1".to_string()));
    server.shutdown().await;
}
