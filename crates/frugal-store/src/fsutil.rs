//! Durable file replacement: write to a temporary name in the same directory, sync,
//! rename over the target, sync the directory. A crash leaves the old file or the new
//! one, never a mix.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Result, StoreError};

/// The temporary name a file is written under before it is renamed into place:
/// `.NAME.PID-N.tmp`, unique across the threads of a process. Such names are never part of
/// a dataset; a writer reopening the directory removes those whose process is gone.
pub(crate) fn temp_path(target: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    target.with_file_name(format!(".{name}.{}-{n}.tmp", std::process::id()))
}

pub(crate) fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".tmp")
}

/// True for a temporary file whose writing process no longer exists. A live process's
/// temporaries — this one's included, whose other threads may be mid-write — stay.
pub(crate) fn is_stale_temp(name: &str) -> bool {
    is_temp_name(name)
        && name
            .rsplit('.')
            .nth(1)
            .and_then(|tag| tag.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_none_or(|pid| !Path::new(&format!("/proc/{pid}")).exists())
}

/// Writes `bytes` to `target` atomically.
pub(crate) fn atomic_write(target: &Path, bytes: &[u8]) -> Result<()> {
    atomic_write_with(target, |file| file.write_all(bytes))
}

/// Creates `target` atomically from what `fill` writes into a temporary file.
pub(crate) fn atomic_write_with(
    target: &Path,
    fill: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> Result<()> {
    let tmp = temp_path(target);
    let result = (|| {
        let mut file = File::create(&tmp)?;
        fill(&mut file)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, target)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(StoreError::io(target, e));
    }
    sync_dir(target.parent().unwrap_or(Path::new(".")))
}

/// Makes a rename in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(dir, e))
}
