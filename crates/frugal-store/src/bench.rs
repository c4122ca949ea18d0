//! Measuring reads honestly: the raw sequential rate of a dataset's own files, and
//! dropping them from the page cache for cold runs.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::Instant;

use crate::error::{Result, StoreError};
use crate::reader::{Dataset, StreamOptions};

/// Evicts the dataset's files from the page cache (clean pages only, which is all a
/// finished dataset has). Works without privileges, file by file.
pub fn drop_cache(dataset: &Dataset) -> Result<()> {
    for s in &dataset.manifest().shards {
        let path = dataset.dir().join(&s.file);
        let file = File::open(&path).map_err(|e| StoreError::io(&path, e))?;
        rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed)
            .map_err(|e| StoreError::io(&path, e.into()))?;
    }
    Ok(())
}

/// Reads every shard front to back in manifest order with 8 MiB `pread`s into one reused
/// buffer: the best a plain sequential reader does on these files. Returns (bytes, seconds).
pub fn raw_sequential_read(dataset: &Dataset) -> Result<(u64, f64)> {
    let mut buf = vec![0u8; 8 << 20];
    let mut total = 0u64;
    let start = Instant::now();
    for s in &dataset.manifest().shards {
        let path = dataset.dir().join(&s.file);
        let file = File::open(&path).map_err(|e| StoreError::io(&path, e))?;
        let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::Sequential);
        let mut offset = 0u64;
        loop {
            let n = file
                .read_at(&mut buf, offset)
                .map_err(|e| StoreError::io(&path, e))?;
            if n == 0 {
                break;
            }
            offset += n as u64;
        }
        total += offset;
    }
    Ok((total, start.elapsed().as_secs_f64()))
}

/// Reads one epoch through [`Dataset::stream`] as a training loop would, calling
/// `progress` with the samples of each batch. Returns (samples, seconds).
pub fn epoch_read(
    dataset: &Dataset,
    options: StreamOptions,
    mut progress: impl FnMut(u64),
) -> Result<(u64, f64)> {
    let start = Instant::now();
    let mut samples = 0u64;
    for batch in dataset.stream(options)? {
        let n = batch?.samples as u64;
        samples += n;
        progress(n);
    }
    Ok((samples, start.elapsed().as_secs_f64()))
}

/// One timed pair of a benchmark: an epoch and a raw sequential read of the same files.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct PairedRun {
    /// Seconds of the epoch.
    pub read_seconds: f64,
    /// Seconds of the raw read.
    pub raw_seconds: f64,
    /// Epoch rate, GB/s of dataset bytes.
    pub read_gbps: f64,
    /// Raw rate, GB/s of file bytes.
    pub raw_gbps: f64,
    /// `read_gbps / raw_gbps`.
    pub ratio: f64,
    /// Whether the raw read came first in this pair.
    pub raw_first: bool,
}

/// Times `repeats` pairs of (epoch, raw sequential read), swapping which goes first from
/// one pair to the next so that a disk whose rate drifts during the run favours neither.
/// Cold: the files are dropped from the page cache before every timed read. Warm: one
/// untimed read fills the cache first. A disk's rate varies from one read to the next
/// (on a virtual disk by a factor of 1.7 between identical `cat`s), so one pair says
/// little; the median of several does.
pub fn paired_runs(
    dataset: &Dataset,
    options: &StreamOptions,
    cold: bool,
    repeats: usize,
    mut progress: impl FnMut(u64),
) -> Result<Vec<PairedRun>> {
    if !cold {
        raw_sequential_read(dataset)?;
    }
    let bytes = dataset.manifest().bytes();
    let mut runs = Vec::with_capacity(repeats);
    for r in 0..repeats {
        let raw_first = r % 2 == 0;
        let (mut raw, mut read) = ((0, 0.0), 0.0);
        for raw_now in [raw_first, !raw_first] {
            if cold {
                drop_cache(dataset)?;
            }
            if raw_now {
                raw = raw_sequential_read(dataset)?;
            } else {
                read = epoch_read(dataset, options.clone(), &mut progress)?.1;
            }
        }
        let read_gbps = bytes as f64 / read / 1e9;
        let raw_gbps = raw.0 as f64 / raw.1 / 1e9;
        runs.push(PairedRun {
            read_seconds: read,
            raw_seconds: raw.1,
            read_gbps,
            raw_gbps,
            ratio: read_gbps / raw_gbps,
            raw_first,
        });
    }
    Ok(runs)
}

/// The median of `values` (the mean of the middle two for an even count); NaN if empty.
pub fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.into_iter().collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median([3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median([4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median([]).is_nan());
    }
}
