//! Full integrity check of a dataset: every shard's size, header and checksum.

use std::path::Path;

use serde::Serialize;

use crate::error::{Result, StoreError};
use crate::manifest::{Manifest, format_checksum, parse_checksum};
use crate::shard::{checksum_file, open_shard};

/// What is wrong with one shard.
#[derive(Debug, Clone, Serialize)]
pub struct ShardFault {
    /// Shard file name.
    pub file: String,
    /// The fault.
    pub fault: String,
}

/// The outcome of [`verify`].
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// Shards checked.
    pub shards: usize,
    /// Bytes hashed.
    pub bytes: u64,
    /// Whether the writer finished.
    pub complete: bool,
    /// Damaged shards; empty when all is well.
    pub faults: Vec<ShardFault>,
}

impl VerifyReport {
    /// True when every shard is intact and the dataset is complete.
    pub fn ok(&self) -> bool {
        self.faults.is_empty() && self.complete
    }
}

/// Checks every shard of the dataset in `dir` against its manifest entry, calling
/// `progress` with the bytes of each shard done. A broken manifest is an error; damaged
/// shards are listed in the report, all of them, not just the first.
pub fn verify(dir: &Path, mut progress: impl FnMut(u64)) -> Result<VerifyReport> {
    let manifest = Manifest::load(dir)?;
    let mut report = VerifyReport {
        shards: manifest.shards.len(),
        bytes: 0,
        complete: manifest.complete,
        faults: Vec::new(),
    };
    for entry in &manifest.shards {
        let path = dir.join(&entry.file);
        let fault = match open_shard(&path, &manifest.schema, entry) {
            Err(StoreError::Shard { fault, .. }) => Some(fault),
            Err(StoreError::Io { source, .. }) => Some(source.to_string()),
            Err(e) => return Err(e),
            Ok(_) => {
                let got = checksum_file(&path)?;
                report.bytes += entry.bytes;
                (Some(got) != parse_checksum(&entry.checksum)).then(|| {
                    format!(
                        "checksum mismatch: the manifest says {}, the file hashes to {} (corrupted)",
                        entry.checksum,
                        format_checksum(got)
                    )
                })
            }
        };
        if let Some(fault) = fault {
            report.faults.push(ShardFault {
                file: entry.file.clone(),
                fault,
            });
        }
        progress(entry.bytes);
    }
    Ok(report)
}
