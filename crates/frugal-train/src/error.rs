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
    #[error("{}: {cause}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        cause: std::io::Error,
    },
    /// A checkpoint that cannot be used.
    #[error("checkpoint {}: {message}", path.display())]
    Snapshot {
        /// The checkpoint file.
        path: PathBuf,
        /// What is wrong and what to do.
        message: String,
    },
    /// The data lacks a column the task reads.
    #[error("the dataset has no column `{column}`{hint}")]
    MissingColumn {
        /// The column.
        column: String,
        /// What the dataset has or what to do, beginning with its own separator, or empty.
        hint: String,
    },
    /// A column holds values of another type, shape or range than the task reads.
    #[error("column `{column}` {problem}")]
    Column {
        /// The column.
        column: String,
        /// What it holds against what is read, and what to do.
        problem: String,
    },
    /// A setting the task or the loop cannot use.
    #[error("`{key}` = {value}: {problem}")]
    Setting {
        /// The setting, as the configuration names it.
        key: String,
        /// Its value.
        value: String,
        /// Why it cannot be used, and what to do.
        problem: String,
    },
    /// A dataset with nothing to train, plan or evaluate on.
    #[error("the dataset {} holds {what}", dir.display())]
    NoSamples {
        /// The dataset.
        dir: PathBuf,
        /// What it lacks (`no samples`, `fewer than 2 states per simulation`).
        what: String,
    },
    /// The output directory holds a run that was not asked to resume.
    #[error(
        "{} holds a run already (its checkpoint is {}); pass --resume to continue it, or choose another output directory",
        dir.display(),
        checkpoint.display()
    )]
    RunExists {
        /// The output directory.
        dir: PathBuf,
        /// Its checkpoint.
        checkpoint: PathBuf,
    },
    /// Measuring memory without the counting allocator installed (a program's setup).
    #[error(
        "{what} needs the counting allocator (frugal_train::memory::CountingAlloc) installed as the program's global allocator"
    )]
    NoCountingAllocator {
        /// What asked for it.
        what: &'static str,
    },
    /// A failure that is neither the data's nor the settings' fault: a thread that would
    /// not start, a serializer, a neighbour search.
    #[error("{0}")]
    Failed(String),
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
        plan: Box<crate::breakdown::MemoryPlan>,
        /// The budget.
        budget_bytes: u64,
        /// Whether other settings were searched for.
        searched: bool,
    },
}

impl TrainError {
    pub(crate) fn io(path: &Path, cause: std::io::Error) -> Self {
        Self::Io {
            path: path.to_owned(),
            cause,
        }
    }
}

/// Results of the training engine.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;
