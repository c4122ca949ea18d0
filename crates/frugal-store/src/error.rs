use std::path::PathBuf;

/// Everything that can go wrong reading or writing a dataset. Each variant names the file
/// at fault, so a message alone tells the user which shard to regenerate or restore.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// An operating-system error on a named file.
    #[error("{path}: {cause}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        cause: std::io::Error,
    },
    /// `manifest.json` (or a part manifest) is not a valid manifest.
    #[error("{path}: {message}")]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A shard does not match its manifest entry or is not a valid safetensors file.
    #[error("shard {path}: {fault}")]
    Shard {
        /// The shard file.
        path: PathBuf,
        /// What is wrong with it.
        fault: String,
    },
    /// A directory that cannot take or give the dataset asked for: not a dataset,
    /// unfinished, complete already, holding other files or another dataset.
    #[error("{} {problem}", dir.display())]
    Directory {
        /// The directory.
        dir: PathBuf,
        /// What it holds against what was asked, and what to do.
        problem: String,
    },
    /// A setting of a reader, writer or generator that cannot be used.
    #[error("{setting} = {value}: {problem}")]
    Setting {
        /// The setting.
        setting: &'static str,
        /// Its value.
        value: String,
        /// Why not.
        problem: String,
    },
    /// Rows handed to a writer that do not fit the schema (a caller's mistake).
    #[error("{0}")]
    Rows(String),
    /// An internal failure that is not the data's or the caller's fault.
    #[error("{0}")]
    Failed(String),
    /// A file being imported is malformed.
    #[error("{path}: {message}")]
    Import {
        /// The input file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
}

impl StoreError {
    pub(crate) fn io(path: impl Into<PathBuf>, cause: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            cause,
        }
    }

    pub(crate) fn shard(path: impl Into<PathBuf>, fault: impl Into<String>) -> Self {
        Self::Shard {
            path: path.into(),
            fault: fault.into(),
        }
    }

    pub(crate) fn manifest(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Manifest {
            path: path.into(),
            message: message.into(),
        }
    }

    pub(crate) fn import(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Import {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Result with [`StoreError`].
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use std::error::Error;

    use super::*;

    #[test]
    fn an_os_error_is_printed_once() {
        let e = StoreError::io(
            "/data/shard-000001.safetensors",
            std::io::Error::from_raw_os_error(28),
        );
        // What `{:#}` of an error chain prints: each error, then its sources.
        let mut text = e.to_string();
        let mut next = e.source();
        while let Some(cause) = next {
            text = format!("{text}: {cause}");
            next = cause.source();
        }
        assert_eq!(text.matches("os error 28").count(), 1, "{text}");
        assert!(
            text.starts_with("/data/shard-000001.safetensors: "),
            "{text}"
        );
    }
}
