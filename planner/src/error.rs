//! Storage errors as DataFusion errors, with the kind that says whose fault they are:
//! `Plan` for a user's mistake, `Execution` for a run that failed (a bad file, damaged
//! data, the operating system), `Internal` for a bug. The servers map these kinds onto
//! SQLSTATEs and gRPC statuses.

use datafusion::common::DataFusionError;
use tessera_storage::StorageError;

/// Converts a storage error, keeping its message and choosing the kind by its fault.
pub fn storage_error(e: StorageError) -> DataFusionError {
    match e {
        StorageError::InvalidSchema(_)
        | StorageError::ShapeMismatch { .. }
        | StorageError::InvalidArgument(_)
        | StorageError::ArrayNotFound(_)
        | StorageError::ArrayExists(_)
        | StorageError::VersionNotFound { .. } => DataFusionError::Plan(e.to_string()),
        StorageError::BadFile { .. }
        | StorageError::Corruption { .. }
        | StorageError::CorruptCatalog { .. }
        | StorageError::Io { .. }
        | StorageError::WriteConflict(_)
        | StorageError::Locked(_) => DataFusionError::Execution(e.to_string()),
        StorageError::Internal(_) => DataFusionError::Internal(e.to_string()),
    }
}

/// Runs blocking storage work (file reads, block writes, commits) off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> datafusion::common::Result<T> + Send + 'static,
) -> datafusion::common::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| DataFusionError::Internal(format!("a storage task failed: {e}")))?
}
