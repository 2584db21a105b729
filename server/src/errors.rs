//! One classification of Tessera's errors for the protocol servers: the SQLSTATE a
//! PostgreSQL client sees, and the gRPC status code a Flight SQL client sees (derived
//! from the SQLSTATE, so the two protocols never disagree).
//!
//! An error's class is carried as a type, never read from its message. Tessera's own
//! errors are a [`TesseraError`] with an [`ErrorKind`], raised where the class is known
//! (storage, planner, the protocol servers). DataFusion's own errors of one variant
//! that cover several classes (an unknown table and an unknown function are both
//! `Plan`) are given a kind by the planner from the failed statement and the catalog
//! (`tessera_planner::classify_statement_error`); the rest are classified by their
//! variant (`Plan` 42000, `Execution` 22000, ...). The table is in `docs/server.md`.

use datafusion::arrow::error::ArrowError;
use datafusion::common::SchemaError;
use datafusion::error::DataFusionError;
use datafusion::sql::sqlparser::parser::ParserError;
use tessera_planner::{ErrorKind, TesseraError};

/// `42601`: a syntax error.
pub const SYNTAX_ERROR: &str = "42601";
/// `42P01`: an unknown table, view or array.
pub const UNDEFINED_TABLE: &str = "42P01";
/// `42703`: an unknown column.
pub const UNDEFINED_COLUMN: &str = "42703";
/// `42883`: an unknown function.
pub const UNDEFINED_FUNCTION: &str = "42883";
/// `42P07`: a table, view or array that already exists.
pub const DUPLICATE_TABLE: &str = "42P07";
/// `42704`: an unknown object, such as a setting.
pub const UNDEFINED_OBJECT: &str = "42704";
/// `42804`: a value of the wrong type.
pub const DATATYPE_MISMATCH: &str = "42804";
/// `42000`: any other mistake in a query.
pub const INVALID_QUERY: &str = "42000";
/// `22P02`: a value, parameter or input line that cannot be read as its type.
pub const INVALID_TEXT_REPRESENTATION: &str = "22P02";
/// `22P03`: a binary value of the wrong length or form for its type.
pub const INVALID_BINARY_REPRESENTATION: &str = "22P03";
/// `22P04`: COPY data that do not follow their format.
pub const BAD_COPY_FILE_FORMAT: &str = "22P04";
/// `23502`: NULL in a column that does not allow it.
pub const NOT_NULL_VIOLATION: &str = "23502";
/// `22000`: data that do not fit the operation, such as matrices whose shapes do not
/// conform, or a cell outside its array.
pub const DATA_EXCEPTION: &str = "22000";
/// `22023`: a parameter outside its domain, such as the precision of `FLOAT(0)`.
pub const INVALID_PARAMETER_VALUE: &str = "22023";
/// `22012`: division by zero.
pub const DIVISION_BY_ZERO: &str = "22012";
/// `22003`: a number out of its type's range.
pub const NUMERIC_VALUE_OUT_OF_RANGE: &str = "22003";
/// `53200`: the memory budget does not suffice.
pub const OUT_OF_MEMORY: &str = "53200";
/// `53300`: the server has `max_connections` connections already.
pub const TOO_MANY_CONNECTIONS: &str = "53300";
/// `54000`: a protocol message longer than `max_message_size`.
pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
/// `57014`: a statement cancelled by the client or by `statement_timeout`.
pub const QUERY_CANCELED: &str = "57014";
/// `57P01`: the server is shutting down.
pub const ADMIN_SHUTDOWN: &str = "57P01";
/// `0A000`: a feature Tessera does not have.
pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
/// `25P02`: a statement in a transaction block that an earlier error aborted.
pub const IN_FAILED_TRANSACTION: &str = "25P02";
/// `28P01`: a wrong password or an unknown user (the two are not told apart).
pub const INVALID_PASSWORD: &str = "28P01";
/// `28000`: a connection the authentication settings do not allow (plaintext when TLS
/// is required, trust from a remote address).
pub const INVALID_AUTHORIZATION: &str = "28000";
/// `08P01`: a malformed protocol message.
pub const PROTOCOL_VIOLATION: &str = "08P01";
/// `58030`: an I/O error.
pub const IO_ERROR: &str = "58030";
/// `XX001`: damaged data on disk.
pub const DATA_CORRUPTED: &str = "XX001";
/// `55006`: the data directory is in use by another process.
pub const OBJECT_IN_USE: &str = "55006";
/// `40001`: a write that lost a race with a concurrent write; retry it.
pub const SERIALIZATION_FAILURE: &str = "40001";
/// `42501`: the role lacks a privilege, such as access to server files.
pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
/// `22021`: bytes that are not valid UTF-8.
pub const CHARACTER_NOT_IN_REPERTOIRE: &str = "22021";
/// `54001`: a statement nested or chained too deeply to plan.
pub const STATEMENT_TOO_COMPLEX: &str = "54001";
/// `XX000`: a bug.
pub const INTERNAL_ERROR: &str = "XX000";

/// Why a statement was stopped before it finished; carried in
/// `DataFusionError::External`, classified as [`QUERY_CANCELED`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancelled {
    /// The client sent a cancel request.
    UserRequest,
    /// The statement ran longer than `statement_timeout`.
    Timeout,
    /// The server is shutting down.
    Shutdown,
}

impl std::fmt::Display for Cancelled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // PostgreSQL's own wording.
        f.write_str(match self {
            Cancelled::UserRequest => "canceling statement due to user request",
            Cancelled::Timeout => "canceling statement due to statement timeout",
            Cancelled::Shutdown => "terminating statement due to administrator command",
        })
    }
}

impl std::error::Error for Cancelled {}

/// The SQLSTATE of an error kind.
pub fn kind_sqlstate(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Syntax => SYNTAX_ERROR,
        ErrorKind::UndefinedTable => UNDEFINED_TABLE,
        ErrorKind::UndefinedFunction => UNDEFINED_FUNCTION,
        ErrorKind::UndefinedColumn => UNDEFINED_COLUMN,
        ErrorKind::UndefinedObject => UNDEFINED_OBJECT,
        ErrorKind::DuplicateTable => DUPLICATE_TABLE,
        ErrorKind::DatatypeMismatch => DATATYPE_MISMATCH,
        ErrorKind::InvalidQuery => INVALID_QUERY,
        ErrorKind::InsufficientPrivilege => INSUFFICIENT_PRIVILEGE,
        ErrorKind::InvalidTextRepresentation => INVALID_TEXT_REPRESENTATION,
        ErrorKind::InvalidBinaryRepresentation => INVALID_BINARY_REPRESENTATION,
        ErrorKind::BadCopyFileFormat => BAD_COPY_FILE_FORMAT,
        ErrorKind::NotNullViolation => NOT_NULL_VIOLATION,
        ErrorKind::DataException => DATA_EXCEPTION,
        ErrorKind::InvalidParameterValue => INVALID_PARAMETER_VALUE,
        ErrorKind::SingularMatrix => DATA_EXCEPTION,
        ErrorKind::DivisionByZero => DIVISION_BY_ZERO,
        ErrorKind::NumericOutOfRange => NUMERIC_VALUE_OUT_OF_RANGE,
        ErrorKind::CharacterNotInRepertoire => CHARACTER_NOT_IN_REPERTOIRE,
        ErrorKind::StatementTooComplex => STATEMENT_TOO_COMPLEX,
        ErrorKind::ProgramLimitExceeded => PROGRAM_LIMIT_EXCEEDED,
        ErrorKind::OutOfMemory => OUT_OF_MEMORY,
        ErrorKind::FeatureNotSupported => FEATURE_NOT_SUPPORTED,
        ErrorKind::DataCorrupted => DATA_CORRUPTED,
        ErrorKind::Io => IO_ERROR,
        ErrorKind::ObjectInUse => OBJECT_IN_USE,
        ErrorKind::SerializationFailure => SERIALIZATION_FAILURE,
        ErrorKind::WorkerLost => ADMIN_SHUTDOWN,
        _ => INTERNAL_ERROR,
    }
}

/// The SQLSTATE for an error: its [`ErrorKind`] when Tessera raised or classified it;
/// for DataFusion's own errors, their variant.
pub fn sqlstate(error: &DataFusionError) -> &'static str {
    if let Some(e) = TesseraError::find(error) {
        return kind_sqlstate(e.kind());
    }
    match error {
        DataFusionError::SQL(e, _) => match e.as_ref() {
            // The parser's nesting limit (`datafusion.sql_parser.recursion_limit`).
            ParserError::RecursionLimitExceeded => STATEMENT_TOO_COMPLEX,
            _ => SYNTAX_ERROR,
        },
        DataFusionError::ResourcesExhausted(_) => OUT_OF_MEMORY,
        DataFusionError::NotImplemented(_) => FEATURE_NOT_SUPPORTED,
        DataFusionError::Internal(_) | DataFusionError::ExecutionJoin(_) => INTERNAL_ERROR,
        DataFusionError::Substrait(_) | DataFusionError::Ffi(_) => INTERNAL_ERROR,
        DataFusionError::SchemaError(e, _) => match e.as_ref() {
            SchemaError::FieldNotFound { .. } => UNDEFINED_COLUMN,
            SchemaError::AmbiguousReference { .. } => "42702",
            SchemaError::DuplicateQualifiedField { .. }
            | SchemaError::DuplicateUnqualifiedField { .. } => "42701",
        },
        DataFusionError::ArrowError(e, _) => arrow_sqlstate(e),
        DataFusionError::IoError(_) => IO_ERROR,
        DataFusionError::ObjectStore(_) => IO_ERROR,
        DataFusionError::ParquetError(_) => DATA_EXCEPTION,
        // The planner gave the errors of these variants that need a finer class a kind
        // (an unknown table, function or setting; a name taken), found from the
        // statement and the catalog; the rest are classified by their variant.
        DataFusionError::Plan(_) | DataFusionError::Configuration(_) => INVALID_QUERY,
        DataFusionError::Execution(_) => DATA_EXCEPTION,
        DataFusionError::External(e) => {
            if e.downcast_ref::<Cancelled>().is_some() {
                QUERY_CANCELED
            } else if let Some(inner) = e.downcast_ref::<DataFusionError>() {
                sqlstate(inner)
            } else if let Some(inner) = e.downcast_ref::<ArrowError>() {
                arrow_sqlstate(inner)
            } else if let Some(status) = e.downcast_ref::<tonic::Status>() {
                worker_status_sqlstate(status)
            } else if e.downcast_ref::<std::io::Error>().is_some() {
                IO_ERROR
            } else if e.downcast_ref::<std::num::ParseIntError>().is_some()
                || e.downcast_ref::<std::num::ParseFloatError>().is_some()
                || e.downcast_ref::<std::str::ParseBoolError>().is_some()
            {
                // A setting's value that does not parse as its type (`SET
                // tessera.broadcast_budget = x`).
                INVALID_PARAMETER_VALUE
            } else {
                INTERNAL_ERROR
            }
        }
        DataFusionError::Context(_, inner) | DataFusionError::Diagnostic(_, inner) => {
            sqlstate(inner)
        }
        DataFusionError::Shared(inner) => sqlstate(inner),
        DataFusionError::Collection(errors) => errors.first().map_or(INTERNAL_ERROR, sqlstate),
    }
}

/// True when `error` says a worker could not be reached or went away (a gRPC status
/// of [`worker_status_sqlstate`]'s retryable class), wherever it sits in the chain: a
/// distributed statement that failed so before sending rows may run again on the
/// workers that are left.
pub fn worker_lost(error: &DataFusionError) -> bool {
    match error {
        DataFusionError::External(e) => {
            if let Some(status) = e.downcast_ref::<tonic::Status>() {
                worker_status_sqlstate(status) == ADMIN_SHUTDOWN
            } else {
                e.downcast_ref::<DataFusionError>().is_some_and(worker_lost)
            }
        }
        DataFusionError::Context(_, inner) | DataFusionError::Diagnostic(_, inner) => {
            worker_lost(inner)
        }
        DataFusionError::Shared(inner) => worker_lost(inner),
        DataFusionError::Collection(errors) => errors.iter().any(worker_lost),
        _ => false,
    }
}

/// The class of a failed call to a worker (a distributed statement's stage): a worker
/// that cannot be reached, went away or stopped answering is 57P01, which clients
/// take as "retry", and Flight reports as UNAVAILABLE; anything else is a bug.
fn worker_status_sqlstate(status: &tonic::Status) -> &'static str {
    use tonic::Code;
    match status.code() {
        Code::Unavailable | Code::Aborted | Code::Cancelled | Code::DeadlineExceeded => {
            ADMIN_SHUTDOWN
        }
        Code::ResourceExhausted => OUT_OF_MEMORY,
        // A worker that does not take this coordinator's cluster secret.
        Code::Unauthenticated | Code::PermissionDenied => INVALID_AUTHORIZATION,
        _ => INTERNAL_ERROR,
    }
}

/// The gRPC status code for an error: derived from its [`sqlstate`] (the table is in
/// `docs/server.md`), with a statement timeout as `DEADLINE_EXCEEDED` and a statement
/// stopped by shutdown as `UNAVAILABLE`.
pub fn grpc_code(error: &DataFusionError) -> tonic::Code {
    use tonic::Code;
    let state = sqlstate(error);
    if state == QUERY_CANCELED {
        return match cancelled_reason(error) {
            Some(Cancelled::Timeout) => Code::DeadlineExceeded,
            Some(Cancelled::Shutdown) => Code::Unavailable,
            _ => Code::Cancelled,
        };
    }
    grpc_code_of_sqlstate(state)
}

/// The gRPC status code for a SQLSTATE.
pub fn grpc_code_of_sqlstate(state: &str) -> tonic::Code {
    use tonic::Code;
    match state {
        UNDEFINED_TABLE | UNDEFINED_COLUMN | UNDEFINED_FUNCTION | UNDEFINED_OBJECT => {
            Code::NotFound
        }
        DUPLICATE_TABLE => Code::AlreadyExists,
        OUT_OF_MEMORY | TOO_MANY_CONNECTIONS | PROGRAM_LIMIT_EXCEEDED | STATEMENT_TOO_COMPLEX => {
            Code::ResourceExhausted
        }
        INSUFFICIENT_PRIVILEGE => Code::PermissionDenied,
        QUERY_CANCELED => Code::Cancelled,
        ADMIN_SHUTDOWN | IO_ERROR => Code::Unavailable,
        FEATURE_NOT_SUPPORTED => Code::Unimplemented,
        INVALID_PASSWORD | INVALID_AUTHORIZATION => Code::Unauthenticated,
        SERIALIZATION_FAILURE => Code::Aborted,
        OBJECT_IN_USE | IN_FAILED_TRANSACTION => Code::FailedPrecondition,
        DATA_CORRUPTED => Code::DataLoss,
        INTERNAL_ERROR => Code::Internal,
        // Classes 22 (data), 42 (syntax and access rules), 08 (protocol) and the rest
        // of the user's mistakes.
        _ => Code::InvalidArgument,
    }
}

/// Why a statement was stopped, if it was.
fn cancelled_reason(error: &DataFusionError) -> Option<Cancelled> {
    match error {
        DataFusionError::External(e) => e.downcast_ref::<Cancelled>().copied().or_else(|| {
            e.downcast_ref::<DataFusionError>()
                .and_then(cancelled_reason)
        }),
        DataFusionError::ArrowError(e, _) => match e.as_ref() {
            ArrowError::ExternalError(e) => e.downcast_ref::<Cancelled>().copied().or_else(|| {
                e.downcast_ref::<DataFusionError>()
                    .and_then(cancelled_reason)
            }),
            _ => None,
        },
        DataFusionError::Context(_, inner) | DataFusionError::Diagnostic(_, inner) => {
            cancelled_reason(inner)
        }
        DataFusionError::Shared(inner) => cancelled_reason(inner),
        DataFusionError::Collection(errors) => errors.first().and_then(cancelled_reason),
        _ => None,
    }
}

/// The message a client sees: DataFusion's text without its kind prefix ("Error during
/// planning: ") or backtrace, with any context kept in front.
pub fn client_message(error: &DataFusionError) -> String {
    match error {
        DataFusionError::Context(context, inner) => {
            format!("{context}: {}", client_message(inner))
        }
        DataFusionError::Diagnostic(_, inner) => client_message(inner),
        DataFusionError::Shared(inner) => client_message(inner),
        DataFusionError::External(e) => {
            if let Some(inner) = e.downcast_ref::<DataFusionError>() {
                client_message(inner)
            } else if let Some(inner) = e
                .downcast_ref::<TesseraError>()
                .and_then(TesseraError::classified_error)
            {
                client_message(inner)
            } else {
                e.to_string()
            }
        }
        DataFusionError::Collection(errors) => match errors.first() {
            Some(first) => client_message(first),
            None => "unknown error".to_string(),
        },
        DataFusionError::ArrowError(e, context) => {
            let message = arrow_message(e);
            match context {
                Some(c) if !c.trim().is_empty() => format!("{message}{c}"),
                _ => message,
            }
        }
        other => {
            let message = other.message().into_owned();
            // DataFusion appends a backtrace when built with one; keep the first part.
            match message.split_once("\n\nbacktrace:") {
                Some((head, _)) => head.to_string(),
                None => message,
            }
        }
    }
}

fn arrow_message(e: &ArrowError) -> String {
    match e {
        ArrowError::ExternalError(inner) => match inner.downcast_ref::<DataFusionError>() {
            Some(df) => client_message(df),
            None => inner.to_string(),
        },
        other => other.to_string(),
    }
}

fn arrow_sqlstate(e: &ArrowError) -> &'static str {
    match e {
        ArrowError::ParseError(_) | ArrowError::CastError(_) | ArrowError::CsvError(_) => {
            INVALID_TEXT_REPRESENTATION
        }
        ArrowError::DivideByZero => DIVISION_BY_ZERO,
        ArrowError::ArithmeticOverflow(_) => NUMERIC_VALUE_OUT_OF_RANGE,
        ArrowError::MemoryError(_) => OUT_OF_MEMORY,
        ArrowError::IoError(..) => IO_ERROR,
        ArrowError::ExternalError(inner) => match inner.downcast_ref::<DataFusionError>() {
            Some(df) => sqlstate(df),
            None if inner.downcast_ref::<Cancelled>().is_some() => QUERY_CANCELED,
            None => INTERNAL_ERROR,
        },
        ArrowError::SchemaError(_) | ArrowError::InvalidArgumentError(_) => DATA_EXCEPTION,
        _ => INTERNAL_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Database, DatabaseOptions};

    /// The SQLSTATE of the error `sql` produces in a database with a 3x3 matrix `m`,
    /// a 2x2 matrix `sq` and a table `t`.
    async fn state_of(sql: &str) -> String {
        let db = Database::in_memory().unwrap();
        db.sql(
            "CREATE MATRIX m (3, 2); INSERT INTO m VALUES (0, 0, 1.0);
             CREATE MATRIX sq (2, 2);
             CREATE TABLE t AS SELECT * FROM (VALUES (1, 'a')) v(a, b)",
        )
        .await
        .unwrap();
        let error = db.sql(sql).await.expect_err(sql);
        sqlstate(&error).to_string()
    }

    #[tokio::test]
    async fn user_mistakes_map_to_their_sqlstates() {
        assert_eq!(state_of("SELEC 1").await, SYNTAX_ERROR);
        assert_eq!(state_of("CREATE MATRIX (1, 2)").await, SYNTAX_ERROR);
        assert_eq!(state_of("SELECT * FROM nosuch").await, UNDEFINED_TABLE);
        assert_eq!(
            state_of("SELECT * FROM matmul(nosuch, m)").await,
            UNDEFINED_TABLE
        );
        assert_eq!(state_of("DROP ARRAY nosuch").await, UNDEFINED_TABLE);
        assert_eq!(state_of("SELECT nosuchfn(1)").await, UNDEFINED_FUNCTION);
        assert_eq!(state_of("SELECT nosuchcol FROM t").await, UNDEFINED_COLUMN);
        assert_eq!(state_of("CREATE MATRIX m (2, 2)").await, DUPLICATE_TABLE);
        assert_eq!(
            state_of("CREATE TABLE t AS SELECT 1").await,
            DUPLICATE_TABLE
        );
        assert_eq!(state_of("SELECT * FROM matmul(m, m)").await, DATA_EXCEPTION);
        assert_eq!(state_of("SELECT * FROM inv(m)").await, DATA_EXCEPTION);
        assert_eq!(
            state_of("INSERT INTO sq VALUES (5, 5, 1.0)").await,
            DATA_EXCEPTION
        );
        assert_eq!(
            state_of("SELECT CAST('abc' AS INT)").await,
            INVALID_TEXT_REPRESENTATION
        );
        assert_eq!(state_of("SELECT 1 / 0").await, DIVISION_BY_ZERO);
        assert_eq!(state_of("SET nosuch.setting = 1").await, UNDEFINED_OBJECT);
    }

    #[tokio::test]
    async fn memory_budget_maps_to_out_of_memory() {
        let db = Database::in_memory_with(DatabaseOptions {
            memory_limit: Some(1 << 20),
            ..DatabaseOptions::default()
        })
        .unwrap();
        let error = db
            .sql("SELECT count(*) FROM matmul(rand(1000, 1000), rand(1000, 1000))")
            .await
            .expect_err("a 1 MiB budget");
        assert_eq!(sqlstate(&error), OUT_OF_MEMORY, "{error}");
    }

    /// The SQLSTATE of the error `sql` produces, for SQL that runs in a fresh database
    /// after `setup`.
    async fn state_after(setup: &str, sql: &str) -> String {
        let db = Database::in_memory().unwrap();
        db.sql(setup).await.unwrap();
        let error = db.sql(sql).await.expect_err(sql);
        sqlstate(&error).to_string()
    }

    /// PostgreSQL's classes for DataFusion's own errors, which say only `Plan` or
    /// `Configuration`: the planner finds the class from the statement and the catalog.
    #[tokio::test]
    async fn datafusion_errors_are_classified_from_the_statement() {
        // 42P01 undefined_table, wherever the unknown table is named.
        for sql in [
            "SELECT * FROM nosuch",
            "SELECT * FROM t JOIN nosuch ON t.a = nosuch.a",
            "SELECT * FROM t WHERE a IN (SELECT a FROM nosuch)",
            "SELECT (SELECT max(a) FROM nosuch) FROM t",
            "INSERT INTO nosuch VALUES (1)",
            "INSERT INTO t SELECT * FROM nosuch",
            "WITH c AS (SELECT * FROM nosuch) SELECT * FROM c",
        ] {
            assert_eq!(state_of(sql).await, UNDEFINED_TABLE, "{sql}");
        }
        // 42883 undefined_function, also in a join condition or a subquery.
        for sql in [
            "SELECT nosuchfn(1)",
            "SELECT * FROM t WHERE nosuchfn(a) > 0",
            "SELECT * FROM t WHERE a IN (SELECT nosuchfn(a) FROM t)",
        ] {
            assert_eq!(state_of(sql).await, UNDEFINED_FUNCTION, "{sql}");
        }
        // A CTE named like a table that does not exist is a table all the same.
        let db = Database::in_memory().unwrap();
        let rows = db
            .sql("WITH nosuch AS (SELECT 7 AS a) SELECT a FROM nosuch")
            .await
            .unwrap();
        assert_eq!(rows.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
        assert_eq!(
            state_of("WITH nosuch AS (SELECT 1 AS a) SELECT nosuchfn(a) FROM nosuch").await,
            UNDEFINED_FUNCTION
        );
        // 42P07 duplicate_table.
        assert_eq!(state_of("CREATE TABLE t (a INT)").await, DUPLICATE_TABLE);
        assert_eq!(state_of("CREATE VIEW t AS SELECT 1").await, DUPLICATE_TABLE);
        assert_eq!(
            state_after(
                "CREATE TABLE d AS SELECT 1 AS a",
                "CREATE TABLE d AS SELECT 2 AS a"
            )
            .await,
            DUPLICATE_TABLE
        );
        // 42704 undefined_object: a setting that does not exist, set or shown.
        assert_eq!(state_of("SET nosuch.setting = 1").await, UNDEFINED_OBJECT);
        assert_eq!(
            state_of("SET datafusion.execution.nosuch = 1").await,
            UNDEFINED_OBJECT
        );
        assert_eq!(state_of("SHOW datafusion.nosuch").await, UNDEFINED_OBJECT);
        // A known setting with a bad value is not an unknown object.
        assert_ne!(
            state_of("SET datafusion.execution.batch_size = 'many'").await,
            UNDEFINED_OBJECT
        );
        // Other planning mistakes keep the class of their variant: 42000.
        assert_eq!(
            state_of("SELECT a FROM t UNION SELECT a, b FROM t").await,
            INVALID_QUERY
        );
    }

    /// Tessera's own errors carry their kind: shapes (22000), unknown matrix functions
    /// and arrays, and a value a loaded file cannot hold (22P02).
    #[tokio::test]
    async fn tessera_errors_carry_their_kind() {
        assert_eq!(
            state_of("SELECT * FROM matmul(sq, m)").await,
            DATA_EXCEPTION,
            "2x2 times 3x2"
        );
        assert_eq!(
            state_of("SELECT * FROM frobnicate(m)").await,
            UNDEFINED_FUNCTION
        );
        assert_eq!(
            state_of("SELECT * FROM matmul(m, nosuch)").await,
            UNDEFINED_TABLE
        );
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("numbers.csv");
        std::fs::write(&csv, "a,b\n1,2\n3,oops\n").unwrap();
        let load = format!("COPY n FROM '{}'", csv.display());
        assert_eq!(
            state_after("CREATE TABLE n (a BIGINT, b BIGINT)", &load).await,
            INVALID_TEXT_REPRESENTATION
        );
    }

    #[test]
    fn messages_lose_the_kind_prefix() {
        let e = DataFusionError::Plan("table 'x' not found".into());
        assert_eq!(client_message(&e), "table 'x' not found");
        let e = DataFusionError::Context("COPY m".into(), Box::new(e));
        assert_eq!(client_message(&e), "COPY m: table 'x' not found");
        // A plan error is classified by its variant, not by what its message says.
        assert_eq!(sqlstate(&e), INVALID_QUERY);
        // Classified by the planner: the kind, with the message unchanged.
        let classified: DataFusionError =
            TesseraError::classified(ErrorKind::UndefinedTable, e).into();
        assert_eq!(client_message(&classified), "COPY m: table 'x' not found");
        assert_eq!(sqlstate(&classified), UNDEFINED_TABLE);
    }

    #[test]
    fn grpc_codes_follow_sqlstates() {
        use tonic::Code;
        let kind = |k: ErrorKind| tessera_planner::tessera_error(k, "x");
        assert_eq!(grpc_code(&kind(ErrorKind::UndefinedTable)), Code::NotFound);
        assert_eq!(
            grpc_code(&kind(ErrorKind::UndefinedFunction)),
            Code::NotFound
        );
        assert_eq!(
            grpc_code(&kind(ErrorKind::DataException)),
            Code::InvalidArgument
        );
        assert_eq!(
            grpc_code(&kind(ErrorKind::DuplicateTable)),
            Code::AlreadyExists
        );
        assert_eq!(
            grpc_code(&DataFusionError::Plan("table 'x' not found".into())),
            Code::InvalidArgument
        );
        assert_eq!(
            grpc_code(&DataFusionError::ResourcesExhausted("1 MiB".into())),
            Code::ResourceExhausted
        );
        let cancelled = |c: Cancelled| DataFusionError::External(Box::new(c));
        assert_eq!(
            grpc_code(&cancelled(Cancelled::UserRequest)),
            Code::Cancelled
        );
        assert_eq!(
            grpc_code(&cancelled(Cancelled::Timeout)),
            Code::DeadlineExceeded
        );
        assert_eq!(
            grpc_code(&DataFusionError::Context(
                "x".into(),
                Box::new(cancelled(Cancelled::Shutdown))
            )),
            Code::Unavailable
        );
        assert_eq!(
            grpc_code(&DataFusionError::Internal("bug".into())),
            Code::Internal
        );
    }
}
