//! Tessera's errors as DataFusion errors, with their kind carried as a type.
//!
//! DataFusion's own variants say only whose fault an error is (`Plan`, `Execution`,
//! `Internal`); Tessera needs the exact class (an unknown array, a damaged file, a
//! statement too complex) on both wires. A [`TesseraError`] carries an [`ErrorKind`]
//! inside `DataFusionError::External`, and the servers read the kind back with
//! [`TesseraError::find`], never from the message text.

use datafusion::arrow::error::ArrowError;
use datafusion::common::DataFusionError;
use tessera_storage::StorageError;

/// The class of a Tessera error; each maps to one SQLSTATE and one gRPC status in the
/// servers (`docs/server.md` has the table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Bad SQL syntax (42601).
    Syntax,
    /// An unknown table, view or array, or a version not retained (42P01).
    UndefinedTable,
    /// An unknown function (42883).
    UndefinedFunction,
    /// An unknown column (42703).
    UndefinedColumn,
    /// An unknown object, such as a setting (42704).
    UndefinedObject,
    /// A name already in use (42P07).
    DuplicateTable,
    /// A value of the wrong type (42804).
    DatatypeMismatch,
    /// Any other mistake in a query (42000).
    InvalidQuery,
    /// The role may not do this, such as reading server files (42501).
    InsufficientPrivilege,
    /// A value or input line that cannot be read as its type (22P02).
    InvalidTextRepresentation,
    /// A binary value of the wrong length or form for its type (22P03).
    InvalidBinaryRepresentation,
    /// COPY data that do not follow the format: a bad binary header, a row with too
    /// many or too few fields, data cut short (22P04).
    BadCopyFileFormat,
    /// NULL in a column that does not allow it (23502).
    NotNullViolation,
    /// A parameter outside its domain, such as `FLOAT(0)` (22023).
    InvalidParameterValue,
    /// Data that do not fit the operation: shapes, a cell outside its array, a bad file
    /// (22000).
    DataException,
    /// A singular matrix given to `solve` / `inv` / `cholesky` (2201X class: 22000 with
    /// its own kind so clients can tell it apart).
    SingularMatrix,
    /// Division by zero (22012).
    DivisionByZero,
    /// A number out of its type's range (22003).
    NumericOutOfRange,
    /// Bytes that are not valid UTF-8 (22021).
    CharacterNotInRepertoire,
    /// A statement nested or chained deeper than the server plans (54001).
    StatementTooComplex,
    /// A size over a configured limit (54000).
    ProgramLimitExceeded,
    /// The memory budget does not suffice (53200).
    OutOfMemory,
    /// A feature Tessera does not have (0A000).
    FeatureNotSupported,
    /// Damaged data on disk (XX001).
    DataCorrupted,
    /// The operating system or the object store failed (58030).
    Io,
    /// The data directory is in use by another process (55006).
    ObjectInUse,
    /// A write that lost a race with a concurrent write (40001).
    SerializationFailure,
    /// A worker of a distributed statement went away or could not be reached
    /// (57P01: the client may run the statement again).
    WorkerLost,
    /// A bug (XX000).
    Internal,
}

/// An error with its [`ErrorKind`]; displayed as its message alone.
///
/// Either Tessera's own ([`TesseraError::new`]), or DataFusion's error with the class
/// the planner found for it from the statement and the catalog
/// ([`TesseraError::classified`]), which keeps the original as its source.
#[derive(Debug)]
pub struct TesseraError {
    kind: ErrorKind,
    message: String,
    source: Option<Box<DataFusionError>>,
}

impl TesseraError {
    /// An error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// DataFusion's `error`, classified as `kind`; displayed as `error` is.
    pub fn classified(kind: ErrorKind, error: DataFusionError) -> Self {
        Self {
            kind,
            message: error.to_string(),
            source: Some(Box::new(error)),
        }
    }

    /// The DataFusion error this one classifies, if it is not Tessera's own.
    pub fn classified_error(&self) -> Option<&DataFusionError> {
        self.source.as_deref()
    }

    /// Its kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Its message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The first Tessera error inside `error` (through contexts, shared and external
    /// wrappers and Arrow's external errors), if any.
    pub fn find(error: &DataFusionError) -> Option<&TesseraError> {
        match error {
            DataFusionError::External(e) => find_in_dyn(e.as_ref()),
            DataFusionError::ArrowError(e, _) => match e.as_ref() {
                ArrowError::ExternalError(e) => find_in_dyn(e.as_ref()),
                _ => None,
            },
            DataFusionError::Context(_, inner) | DataFusionError::Diagnostic(_, inner) => {
                Self::find(inner)
            }
            DataFusionError::Shared(inner) => Self::find(inner),
            DataFusionError::Collection(errors) => errors.first().and_then(Self::find),
            _ => None,
        }
    }
}

fn find_in_dyn<'a>(
    e: &'a (dyn std::error::Error + Send + Sync + 'static),
) -> Option<&'a TesseraError> {
    if let Some(t) = e.downcast_ref::<TesseraError>() {
        return Some(t);
    }
    if let Some(df) = e.downcast_ref::<DataFusionError>() {
        return TesseraError::find(df);
    }
    if let Some(arrow) = e.downcast_ref::<ArrowError>() {
        return match arrow {
            ArrowError::ExternalError(inner) => find_in_dyn(inner.as_ref()),
            _ => None,
        };
    }
    None
}

impl std::fmt::Display for TesseraError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TesseraError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<TesseraError> for DataFusionError {
    fn from(e: TesseraError) -> Self {
        DataFusionError::External(Box::new(e))
    }
}

/// A DataFusion error of `kind` with `message`.
pub fn tessera_error(kind: ErrorKind, message: impl Into<String>) -> DataFusionError {
    TesseraError::new(kind, message).into()
}

/// The kind of a storage error.
pub fn storage_error_kind(e: &StorageError) -> ErrorKind {
    match e {
        StorageError::InvalidSchema(_) | StorageError::InvalidArgument(_) => {
            ErrorKind::InvalidQuery
        }
        StorageError::ShapeMismatch { .. } | StorageError::BadFile { .. } => {
            ErrorKind::DataException
        }
        StorageError::ArrayNotFound(_) | StorageError::VersionNotFound { .. } => {
            ErrorKind::UndefinedTable
        }
        StorageError::ArrayExists(_) => ErrorKind::DuplicateTable,
        StorageError::Corruption { .. } | StorageError::CorruptCatalog { .. } => {
            ErrorKind::DataCorrupted
        }
        StorageError::Io { .. } => ErrorKind::Io,
        StorageError::WriteConflict(_) => ErrorKind::SerializationFailure,
        StorageError::Locked(_) => ErrorKind::ObjectInUse,
        StorageError::Internal(_) => ErrorKind::Internal,
    }
}

/// Converts a storage error, keeping its message and its kind.
pub fn storage_error(e: StorageError) -> DataFusionError {
    tessera_error(storage_error_kind(&e), e.to_string())
}

/// Runs blocking storage work (file reads, block writes, commits) off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> datafusion::common::Result<T> + Send + 'static,
) -> datafusion::common::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| DataFusionError::Internal(format!("a storage task failed: {e}")))?
}
