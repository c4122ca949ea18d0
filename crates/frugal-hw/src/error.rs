use std::path::PathBuf;

/// Everything that can go wrong while looking at the machine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HwError {
    /// A system or fixture file could not be read.
    #[error("cannot read {path}: {cause}")]
    Read {
        /// The file that failed.
        path: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
    /// A system file did not have the shape the kernel documents.
    #[error("{path}: {message}")]
    Parse {
        /// The file at fault.
        path: PathBuf,
        /// What was wrong with it.
        message: String,
    },
    /// The path asked about does not exist or is not usable.
    #[error("{path}: {message}")]
    Path {
        /// The path at fault.
        path: PathBuf,
        /// What to do about it.
        message: String,
    },
    /// The disk benchmark failed part-way.
    #[error("disk benchmark in {dir}: {cause}")]
    DiskBench {
        /// The directory the benchmark wrote to.
        dir: PathBuf,
        /// Why it failed.
        cause: std::io::Error,
    },
}

/// Result with [`HwError`].
pub type Result<T, E = HwError> = std::result::Result<T, E>;

pub(crate) fn read_to_string(path: &std::path::Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|cause| HwError::Read {
        path: path.to_path_buf(),
        cause,
    })
}
