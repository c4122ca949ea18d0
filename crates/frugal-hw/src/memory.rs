//! Host memory: what the kernel reports and what we may actually use.

use std::path::Path;

use serde::Serialize;

use crate::cgroup::{CgroupMemory, Cgroups};
use crate::error::{HwError, Result, read_to_string};

/// Host memory as this process sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemoryInfo {
    /// Physical RAM (`MemTotal`).
    pub total_bytes: u64,
    /// What the kernel estimates can be allocated without swapping (`MemAvailable`).
    pub available_bytes: u64,
    /// Swap space in all.
    pub swap_total_bytes: u64,
    /// Swap space unused.
    pub swap_free_bytes: u64,
    /// The effective cgroup memory limit; `None` when unlimited.
    pub cgroup_limit_bytes: Option<u64>,
    /// What this process may plan to use: the smaller of physical RAM and the cgroup limit.
    pub budget_bytes: u64,
    /// The cgroup the limit came from, when there is a memory controller.
    pub cgroup: Option<CgroupMemory>,
}

impl MemoryInfo {
    /// Reads `/proc/meminfo` and the cgroup limit.
    pub fn detect(cgroups: &Cgroups) -> Result<Self> {
        let path = Path::new("/proc/meminfo");
        let meminfo = Meminfo::parse(path, &read_to_string(path)?)?;
        let cgroup = cgroups.memory()?;
        Ok(Self::combine(meminfo, cgroup))
    }

    fn combine(meminfo: Meminfo, cgroup: Option<CgroupMemory>) -> Self {
        let cgroup_limit_bytes = cgroup.as_ref().and_then(|c| c.limit_bytes);
        let budget_bytes = budget(meminfo.total, cgroup_limit_bytes);
        Self {
            total_bytes: meminfo.total,
            available_bytes: meminfo.available,
            swap_total_bytes: meminfo.swap_total,
            swap_free_bytes: meminfo.swap_free,
            cgroup_limit_bytes,
            budget_bytes,
            cgroup,
        }
    }
}

/// The memory budget: physical RAM, or the cgroup limit when that is smaller.
pub fn budget(physical_bytes: u64, cgroup_limit_bytes: Option<u64>) -> u64 {
    cgroup_limit_bytes.map_or(physical_bytes, |l| l.min(physical_bytes))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Meminfo {
    pub(crate) total: u64,
    pub(crate) available: u64,
    pub(crate) swap_total: u64,
    pub(crate) swap_free: u64,
}

impl Meminfo {
    pub(crate) fn parse(path: &Path, text: &str) -> Result<Self> {
        let field = |key: &str| -> Result<Option<u64>> {
            let Some(rest) = text
                .lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            else {
                return Ok(None);
            };
            let kib = rest.trim().trim_end_matches("kB").trim();
            kib.parse::<u64>()
                .map(|v| Some(v * 1024))
                .map_err(|_| HwError::Parse {
                    path: path.to_path_buf(),
                    message: format!("{key}: expected a size in kB, found `{}`", rest.trim()),
                })
        };
        let total = field("MemTotal")?.ok_or_else(|| HwError::Parse {
            path: path.to_path_buf(),
            message: "no MemTotal line".into(),
        })?;
        // Kernels before 3.14 lack MemAvailable; free + cache is the old estimate.
        let available = match field("MemAvailable")? {
            Some(v) => v,
            None => field("MemFree")?.unwrap_or(0) + field("Cached")?.unwrap_or(0),
        };
        Ok(Self {
            total,
            available,
            swap_total: field("SwapTotal")?.unwrap_or(0),
            swap_free: field("SwapFree")?.unwrap_or(0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMINFO: &str = "MemTotal:       24684092 kB\nMemFree:        22000000 kB\nMemAvailable:   23000000 kB\nCached:  100 kB\nSwapTotal:             0 kB\nSwapFree:              0 kB\n";

    #[test]
    fn meminfo_is_in_kib() {
        let m = Meminfo::parse(Path::new("meminfo"), MEMINFO).unwrap();
        assert_eq!(m.total, 24_684_092 * 1024);
        assert_eq!(m.available, 23_000_000 * 1024);
        assert_eq!(m.swap_total, 0);
    }

    #[test]
    fn old_kernels_estimate_available() {
        let m = Meminfo::parse(
            Path::new("m"),
            "MemTotal: 100 kB\nMemFree: 10 kB\nCached: 5 kB\n",
        )
        .unwrap();
        assert_eq!(m.available, 15 * 1024);
    }

    #[test]
    fn bad_meminfo_names_the_file_and_key() {
        let err = Meminfo::parse(Path::new("/proc/meminfo"), "MemTotal: lots\n").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("/proc/meminfo") && msg.contains("MemTotal"),
            "{msg}"
        );
        assert!(Meminfo::parse(Path::new("m"), "").is_err());
    }

    #[test]
    fn budget_is_the_smaller() {
        assert_eq!(budget(32 << 30, None), 32 << 30);
        assert_eq!(budget(32 << 30, Some(8 << 30)), 8 << 30);
        assert_eq!(budget(8 << 30, Some(32 << 30)), 8 << 30);
    }
}
