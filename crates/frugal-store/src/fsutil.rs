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

/// True for names of the form `temp_path` makes, `.NAME.PID-N.tmp`, and nothing else: a
/// user's own `.notes.tmp` is theirs, not debris.
pub(crate) fn is_temp_name(name: &str) -> bool {
    temp_pid(name).is_some()
}

fn temp_pid(name: &str) -> Option<u32> {
    let inner = name.strip_prefix('.')?.strip_suffix(".tmp")?;
    let (target, tag) = inner.rsplit_once('.')?;
    let (pid, n) = tag.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (!target.is_empty() && digits(pid) && digits(n)).then(|| pid.parse().ok())?
}

/// True for a temporary file whose writing process no longer exists. A live process's
/// temporaries — this one's included, whose other threads may be mid-write — stay.
/// Processes are looked up on this machine: writers of one dataset share a host.
pub(crate) fn is_stale_temp(name: &str) -> bool {
    temp_pid(name).is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
}

/// Writes `bytes` to `target` atomically.
pub fn atomic_write(target: &Path, bytes: &[u8]) -> Result<()> {
    atomic_write_with(target, |file| file.write_all(bytes))
}

/// Creates `target` atomically from what `fill` writes into a temporary file.
pub fn atomic_write_with(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_temporaries_are_temporaries() {
        let ours = temp_path(Path::new("/d/shard-000001.safetensors"));
        let name = ours.file_name().unwrap().to_str().unwrap();
        assert!(is_temp_name(name), "{name}");
        assert!(!is_stale_temp(name), "this process is alive");
        assert!(is_temp_name(".manifest.json.4194999-3.tmp"));
        for theirs in [
            ".notes.tmp",
            ".x.y.tmp",
            ".a.12.tmp",
            ".a.-1.tmp",
            "..1-2.tmp",
            "a.1-2.tmp",
        ] {
            assert!(!is_temp_name(theirs), "{theirs}");
            assert!(!is_stale_temp(theirs), "{theirs}");
        }
    }
}
