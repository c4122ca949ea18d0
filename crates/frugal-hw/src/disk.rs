//! Disks: free space where the work will go, and how fast it reads from the device.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use rustix::fs::Advice;
use serde::Serialize;

use crate::error::{HwError, Result};

/// Space on the filesystem holding a path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiskInfo {
    /// The path asked about, made absolute.
    pub path: PathBuf,
    /// Bytes an unprivileged user may still write.
    pub free_bytes: u64,
    /// Size of the filesystem.
    pub total_bytes: u64,
}

impl DiskInfo {
    /// `statvfs` on `path`.
    pub fn at(path: &Path) -> Result<Self> {
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let st = rustix::fs::statvfs(&path).map_err(|e| HwError::Path {
            path: path.clone(),
            message: format!(
                "cannot query free space ({e}); pass --path with an existing directory"
            ),
        })?;
        Ok(Self {
            free_bytes: st.f_bavail.saturating_mul(st.f_frsize),
            total_bytes: st.f_blocks.saturating_mul(st.f_frsize),
            path,
        })
    }
}

/// The result of [`bench_sequential`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiskBench {
    /// Size of the file written and read back.
    pub bytes: u64,
    /// Sequential write rate including the final sync, in GB/s (10^9 bytes).
    pub write_gbps: f64,
    /// Sequential read rate from the device, page cache bypassed, in GB/s.
    pub read_gbps: f64,
    /// How the page cache was kept out of the read.
    pub cache_bypass: &'static str,
}

/// Reads in pieces this large: big enough that syscall cost vanishes, small enough
/// to stay in cache-friendly territory.
const CHUNK: usize = 8 << 20;

/// Writes a temporary file of `bytes` in `dir`, syncs it, drops it from the page cache
/// and reads it back sequentially, timing both directions. The file is removed after.
pub fn bench_sequential(dir: &Path, bytes: u64) -> Result<DiskBench> {
    let fail = |cause| HwError::DiskBench {
        dir: dir.to_path_buf(),
        cause,
    };
    let bytes = bytes.max(CHUNK as u64).div_ceil(CHUNK as u64) * CHUNK as u64;
    let free = DiskInfo::at(dir)?.free_bytes;
    if bytes.saturating_mul(2) > free {
        return Err(HwError::Path {
            path: dir.to_path_buf(),
            message: format!(
                "a {bytes}-byte disk benchmark needs twice that free, and only {free} bytes are; \
                 pass a smaller --disk-bench-size or another --path"
            ),
        });
    }
    let mut file = tempfile::Builder::new()
        .prefix(".frugal-disk-bench-")
        .tempfile_in(dir)
        .map_err(fail)?;

    // Incompressible bytes, so compressing filesystems (btrfs, zfs) cannot flatter us.
    let mut chunk = vec![0u8; CHUNK];
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    for word in chunk.chunks_exact_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        word.copy_from_slice(&state.to_le_bytes());
    }
    let started = Instant::now();
    for i in 0..bytes / CHUNK as u64 {
        // Vary each chunk so block-level deduplication sees distinct data.
        chunk[..8].copy_from_slice(&i.to_le_bytes());
        file.write_all(&chunk).map_err(fail)?;
    }
    rustix::fs::fdatasync(file.as_file()).map_err(|e| fail(e.into()))?;
    let write_secs = started.elapsed().as_secs_f64();

    // Clean pages are dropped by DONTNEED, so after the sync none of the file stays cached.
    rustix::fs::fadvise(file.as_file(), 0, None, Advice::DontNeed).map_err(|e| fail(e.into()))?;
    let mut reader = File::open(file.path()).map_err(fail)?;
    rustix::fs::fadvise(&reader, 0, None, Advice::Sequential).map_err(|e| fail(e.into()))?;
    let started = Instant::now();
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut chunk).map_err(fail)?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    let read_secs = started.elapsed().as_secs_f64();
    rustix::fs::fadvise(&reader, 0, None, Advice::DontNeed).map_err(|e| fail(e.into()))?;
    if total != bytes {
        return Err(fail(std::io::Error::other(format!(
            "read back {total} bytes of {bytes}"
        ))));
    }
    Ok(DiskBench {
        bytes,
        write_gbps: bytes as f64 / write_secs / 1e9,
        read_gbps: bytes as f64 / read_secs / 1e9,
        cache_bypass: "posix_fadvise(DONTNEED) after fdatasync",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_of_a_temp_dir() {
        let dir = tempfile::tempdir().unwrap();
        let info = DiskInfo::at(dir.path()).unwrap();
        assert!(info.total_bytes > 0 && info.free_bytes <= info.total_bytes);
    }

    #[test]
    fn missing_path_is_named() {
        let err = DiskInfo::at(Path::new("/no/such/dir/frugal")).unwrap_err();
        assert!(err.to_string().contains("/no/such/dir/frugal"), "{err}");
    }

    #[test]
    fn bench_reads_back_what_it_wrote_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let result = bench_sequential(dir.path(), 16 << 20).unwrap();
        assert_eq!(result.bytes, 16 << 20);
        assert!(result.read_gbps > 0.0 && result.write_gbps > 0.0);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
