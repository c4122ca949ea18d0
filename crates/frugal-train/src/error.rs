//! Errors of the training engine.

use std::path::{Path, PathBuf};

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Reading or writing a dataset or an atomic file.
    #[error(transparent)]
    Store(#[from] frugal_store::StoreError),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A checkpoint that cannot be used.
    #[error("checkpoint {}: {message}", path.display())]
    Snapshot {
        /// The checkpoint file.
        path: PathBuf,
        /// What is wrong and what to do.
        message: String,
    },
    /// Settings or data that do not fit together.
    #[error("{0}")]
    Invalid(String),
    /// A setting the device cannot run: a precision it has no arithmetic for, a GPU
    /// where none answers.
    #[error("{0}")]
    Unsupported(String),
    /// The compute device failed (a kernel that would not compile or run, a lost device).
    #[error("{0}")]
    Device(String),
}

impl TrainError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// Results of the training engine.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;
