//! Errors of the training engine.

use std::path::{Path, PathBuf};

use frugal_hw::units::Bytes;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
    /// The memory plan of a run exceeds its budget ([`crate::fit::fit`]).
    #[error(
        "the predicted peak {} exceeds the memory budget of {}{}",
        Bytes(plan.predicted_peak_bytes),
        Bytes(*budget_bytes),
        if *searched { ", and no checkpointing, micro-batch and precision were found that fit it" } else { "" }
    )]
    OverBudget {
        /// The plan of the run as configured.
        plan: Box<crate::plan::MemoryPlan>,
        /// The budget.
        budget_bytes: u64,
        /// Whether other settings were searched for.
        searched: bool,
    },
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
