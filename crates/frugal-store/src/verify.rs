//! Full integrity check of a dataset: every shard's size, header and checksum.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde::Serialize;
use xxhash_rust::xxh3::{Xxh3, xxh3_64_with_seed};

use crate::error::{Result, StoreError};
use crate::manifest::ShardEntry;
use crate::manifest::{Manifest, format_checksum, parse_checksum};
use crate::shard::{ShardLayout, open_shard};

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

/// The cheap check: every shard of `manifest` (the dataset in `dir`) exists with the size
/// the manifest records. Nothing is read or hashed, so it is instant on any dataset;
/// [`verify`] is the deep check. Damaged shards are listed, all of them.
pub fn check_files(dir: &Path, manifest: &Manifest) -> Vec<ShardFault> {
    manifest
        .shards
        .iter()
        .filter_map(|entry| {
            let path = dir.join(&entry.file);
            let fault = match std::fs::metadata(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => "missing".to_string(),
                Err(e) => e.to_string(),
                Ok(m) => match crate::shard::check_size(&path, m.len(), entry) {
                    Ok(()) => return None,
                    Err(StoreError::Shard { fault, .. }) => fault,
                    Err(e) => e.to_string(),
                },
            };
            Some(ShardFault {
                file: entry.file.clone(),
                fault,
            })
        })
        .collect()
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
            Err(StoreError::Io { cause, .. }) => Some(cause.to_string()),
            Err(e) => return Err(e),
            Ok((file, layout)) => {
                report.bytes += entry.bytes;
                check_hashes(&file, &layout, &manifest, entry).err()
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

/// Reads the shard once, front to back, feeding the whole-file hash and each column's hash
/// (columns are contiguous regions after the header), and compares both with the manifest.
fn check_hashes(
    file: &File,
    layout: &ShardLayout,
    manifest: &Manifest,
    entry: &ShardEntry,
) -> Result<(), String> {
    let mut regions: Vec<(u64, Option<usize>)> = layout
        .column_offsets
        .iter()
        .enumerate()
        .map(|(i, &o)| (o, Some(i)))
        .collect();
    regions.sort_unstable();
    let data_start = regions.first().map_or(layout.file_bytes, |r| r.0);
    regions.insert(0, (0, None));
    let mut whole = Xxh3::new();
    let mut columns = vec![0u64; manifest.schema.columns.len()];
    let widths: Vec<usize> = manifest
        .schema
        .columns
        .iter()
        .map(|c| c.sample_bytes())
        .collect();
    for (k, &(start, column)) in regions.iter().enumerate() {
        let end = regions.get(k + 1).map_or(layout.file_bytes, |r| r.0);
        let end = if column.is_none() { data_start } else { end };
        // Whole rows per read, so each row's hash sees all of it.
        let step = match column {
            Some(c) => widths[c] * (4usize << 20).div_ceil(widths[c]),
            None => 4 << 20,
        };
        let mut buf = vec![0u8; step];
        let mut offset = start;
        let mut row = 0u64;
        while offset < end {
            let n = ((end - offset) as usize).min(step);
            file.read_exact_at(&mut buf[..n], offset)
                .map_err(|e| format!("reading at byte {offset}: {e}"))?;
            whole.update(&buf[..n]);
            if let Some(c) = column {
                for bytes in buf[..n].chunks_exact(widths[c]) {
                    columns[c] = columns[c].wrapping_add(xxh3_64_with_seed(bytes, row));
                    row += 1;
                }
            }
            offset += n as u64;
        }
    }
    if Some(whole.digest()) != parse_checksum(&entry.checksum) {
        return Err(format!(
            "checksum mismatch: the manifest says {}, the file hashes to {} (corrupted)",
            entry.checksum,
            format_checksum(whole.digest())
        ));
    }
    for (c, sum) in manifest.schema.columns.iter().zip(columns) {
        let want = &entry.column_checksums[&c.name];
        if Some(sum) != parse_checksum(want) {
            return Err(format!(
                "column `{}` sums to {} but the manifest says {want}: the manifest's entry for this shard is damaged",
                c.name,
                format_checksum(sum)
            ));
        }
    }
    Ok(())
}
