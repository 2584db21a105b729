//! One error type for the storage crate.
//!
//! Variants say whose fault an error is: a user's input ([`StorageError::InvalidSchema`],
//! [`StorageError::BadFile`], [`StorageError::ShapeMismatch`], ...), damaged data on disk
//! ([`StorageError::Corruption`]), the environment ([`StorageError::Io`]), or a bug
//! ([`StorageError::Internal`]). The planner and the servers map these onto SQLSTATEs and
//! gRPC statuses at their edges.

use std::path::PathBuf;

/// Result alias used across the storage crate.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Everything that can go wrong in storage, kernels, and file ingest/export.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// An array schema that cannot exist (empty range, zero block length, overflow, ...).
    #[error("invalid array schema: {0}")]
    InvalidSchema(String),

    /// Operands whose shapes do not conform; both shapes are named.
    #[error("shape mismatch in {op}: {left} vs {right}")]
    ShapeMismatch {
        /// The operation that was attempted (`matmul`, `add`, ...).
        op: &'static str,
        /// Shape of the left operand, as `rows x cols`.
        left: String,
        /// Shape of the right operand, as `rows x cols`.
        right: String,
    },

    /// An argument that is out of its domain (a coordinate outside the array, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// A bad input file: path, 1-based line (0 when not line oriented) and what is wrong.
    #[error("{}: {message}", location(path, *line))]
    BadFile {
        /// The file being read.
        path: PathBuf,
        /// 1-based line number; 0 for binary formats where a line has no meaning.
        line: u64,
        /// What is wrong at that place.
        message: String,
    },

    /// Stored data failed verification; it is never returned as data.
    #[error("corruption in array '{array}', block {block}, file {file}: {message}")]
    Corruption {
        /// Array name.
        array: String,
        /// Block coordinates, e.g. `(3, 1)`, or a list of the blocks the file holds.
        block: String,
        /// The file (relative to the data directory) that failed.
        file: String,
        /// What failed: checksum, truncation, decoding.
        message: String,
    },

    /// Catalog or manifest damage that is not tied to one block.
    #[error("corrupt catalog {file}: {message}")]
    CorruptCatalog {
        /// The catalog or manifest file.
        file: String,
        /// What failed.
        message: String,
    },

    /// No array with this name.
    #[error("array '{0}' does not exist")]
    ArrayNotFound(String),

    /// An array with this name already exists.
    #[error("array '{0}' already exists")]
    ArrayExists(String),

    /// The array exists but this version is not retained.
    #[error("array '{array}' has no version {version} (retained versions: {retained})")]
    VersionNotFound {
        /// Array name.
        array: String,
        /// Requested version.
        version: u64,
        /// Versions that can still be read.
        retained: String,
    },

    /// The operating system or the object store failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The path being accessed.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// Another write to the same array committed first; retry the write.
    #[error("array '{0}' was changed by a concurrent write; retry")]
    WriteConflict(String),

    /// Another process holds the data directory.
    #[error("data directory {0} is locked by another process")]
    Locked(PathBuf),

    /// A bug in Tessera: an invariant did not hold.
    #[error("internal error: {0}")]
    Internal(String),
}

fn location(path: &std::path::Path, line: u64) -> String {
    if line == 0 {
        path.display().to_string()
    } else {
        format!("{}:{line}", path.display())
    }
}

impl StorageError {
    /// A [`StorageError::BadFile`] at `path:line`.
    pub fn bad_file(path: impl Into<PathBuf>, line: u64, message: impl Into<String>) -> Self {
        Self::BadFile {
            path: path.into(),
            line,
            message: message.into(),
        }
    }

    /// An [`StorageError::Io`] for `path`.
    pub fn io(path: impl std::fmt::Display, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_string(),
            source,
        }
    }

    /// A [`StorageError::ShapeMismatch`] naming both shapes.
    pub fn shape_mismatch(op: &'static str, left: (usize, usize), right: (usize, usize)) -> Self {
        Self::ShapeMismatch {
            op,
            left: format!("{}x{}", left.0, left.1),
            right: format!("{}x{}", right.0, right.1),
        }
    }
}
