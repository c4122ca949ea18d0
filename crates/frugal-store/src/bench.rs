//! Measuring reads honestly: the raw sequential rate of a dataset's own files, and
//! dropping them from the page cache for cold runs.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::Instant;

use crate::error::{Result, StoreError};
use crate::reader::Dataset;

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
