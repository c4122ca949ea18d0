//! NVIDIA GPUs, through NVML loaded at run time.
//!
//! frugal links no GPU library: `libnvidia-ml.so.1` is opened when asked for, and a
//! machine without it simply has no NVIDIA GPU. That keeps one binary for every machine.

use std::ffi::OsStr;

use nvml_wrapper::Nvml;
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::NvmlError;
use serde::Serialize;

/// One GPU as NVML reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GpuInfo {
    /// NVML's index, the order `nvidia-smi` lists.
    pub index: u32,
    /// Product name.
    pub name: String,
    /// Stable identifier (`GPU-…`), as `CUDA_VISIBLE_DEVICES` accepts it.
    pub uuid: Option<String>,
    /// Installed memory.
    pub memory_total_bytes: u64,
    /// Memory nobody has allocated.
    pub memory_free_bytes: u64,
    /// CUDA compute capability, `major.minor`.
    pub compute_capability: Option<String>,
}

/// Every visible GPU, with what NVML said when it found none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct GpuReport {
    /// The GPUs, filtered by `CUDA_VISIBLE_DEVICES` when it is set.
    pub gpus: Vec<GpuInfo>,
    /// The NVIDIA driver version.
    pub driver_version: Option<String>,
    /// Why no GPU was found, when none was: the library is absent, the driver is not
    /// loaded, or a permission was refused.
    pub unavailable_reason: Option<String>,
}

/// Opens NVML, trying the versioned name first (the unversioned symlink ships only
/// with development packages).
pub(crate) fn open_nvml() -> Result<Nvml, NvmlError> {
    Nvml::builder()
        .lib_path(OsStr::new("libnvidia-ml.so.1"))
        .init()
        .or_else(|_| Nvml::init())
}

/// Describes an NVML failure in words a user can act on.
fn explain(err: &NvmlError) -> String {
    match err {
        NvmlError::LibloadingError(_) => {
            "no NVIDIA driver library (libnvidia-ml.so.1) on this machine".to_owned()
        }
        NvmlError::DriverNotLoaded => "the NVIDIA kernel driver is not loaded".to_owned(),
        NvmlError::NoPermission => "NVML was refused permission to talk to the driver".to_owned(),
        other => format!("NVML failed: {other}"),
    }
}

impl GpuReport {
    /// Asks NVML. Never fails: no library, no driver or no device is "no GPU".
    pub fn detect() -> Self {
        let nvml = match open_nvml() {
            Ok(n) => n,
            Err(e) => {
                return Self {
                    unavailable_reason: Some(explain(&e)),
                    ..Self::default()
                };
            }
        };
        let count = match nvml.device_count() {
            Ok(c) => c,
            Err(e) => {
                return Self {
                    unavailable_reason: Some(explain(&e)),
                    ..Self::default()
                };
            }
        };
        let visible = std::env::var("CUDA_VISIBLE_DEVICES").ok();
        let mut gpus = Vec::new();
        for index in 0..count {
            let Ok(device) = nvml.device_by_index(index) else {
                continue;
            };
            let uuid = device.uuid().ok();
            if let Some(list) = &visible
                && !is_visible(list, index, uuid.as_deref())
            {
                continue;
            }
            let memory = device.memory_info().ok();
            gpus.push(GpuInfo {
                index,
                name: device
                    .name()
                    .unwrap_or_else(|_| "unknown NVIDIA GPU".to_owned()),
                uuid,
                memory_total_bytes: memory.as_ref().map_or(0, |m| m.total),
                memory_free_bytes: memory.as_ref().map_or(0, |m| m.free),
                compute_capability: device
                    .cuda_compute_capability()
                    .ok()
                    .map(|c| format!("{}.{}", c.major, c.minor)),
            });
        }
        let unavailable_reason = gpus.is_empty().then(|| match &visible {
            Some(list) if count > 0 => {
                format!("CUDA_VISIBLE_DEVICES={list:?} hides all {count} GPUs")
            }
            _ => "NVML found no NVIDIA GPU".to_owned(),
        });
        Self {
            gpus,
            driver_version: nvml.sys_driver_version().ok(),
            unavailable_reason,
        }
    }
}

/// `CUDA_VISIBLE_DEVICES` lists indices or UUIDs (or their prefixes); CUDA stops at
/// the first entry it cannot parse, and an empty list hides every device.
fn is_visible(list: &str, index: u32, uuid: Option<&str>) -> bool {
    for entry in list.split(',').map(str::trim) {
        if let Ok(i) = entry.parse::<i64>() {
            if i < 0 {
                return false;
            }
            if i == i64::from(index) {
                return true;
            }
        } else if entry.starts_with("GPU-") || entry.starts_with("MIG-") {
            if uuid.is_some_and(|u| u.starts_with(entry)) {
                return true;
            }
        } else {
            return false;
        }
    }
    false
}

/// Memory in use on every visible GPU, summed, or `None` without NVML. Used by the
/// memory meter, which keeps its NVML handle open.
pub(crate) fn used_bytes(nvml: &Nvml) -> Option<u64> {
    let count = nvml.device_count().ok()?;
    let mut used = 0;
    for i in 0..count {
        used += nvml.device_by_index(i).ok()?.memory_info().ok()?.used;
    }
    Some(used)
}

/// GPU memory held by this process across devices, when the driver reports it.
pub(crate) fn used_by_process(nvml: &Nvml, pid: u32) -> Option<u64> {
    let count = nvml.device_count().ok()?;
    let mut used = 0;
    for i in 0..count {
        let device = nvml.device_by_index(i).ok()?;
        for p in device.running_compute_processes().ok()? {
            if p.pid == pid
                && let UsedGpuMemory::Used(bytes) = p.used_gpu_memory
            {
                used += bytes;
            }
        }
    }
    Some(used)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visible_devices_follow_cuda_rules() {
        assert!(is_visible("0,1", 1, None));
        assert!(!is_visible("0,1", 2, None));
        assert!(!is_visible("", 0, None));
        assert!(!is_visible("-1", 0, None));
        // Parsing stops at the first invalid entry.
        assert!(!is_visible("0,bogus,2", 2, None));
        assert!(is_visible("GPU-8f2a", 3, Some("GPU-8f2a11aa-0000")));
        assert!(!is_visible("GPU-8f2a", 3, Some("GPU-1111")));
    }

    #[test]
    fn a_machine_without_nvidia_reports_why() {
        let report = GpuReport::detect();
        if report.gpus.is_empty() {
            assert!(report.unavailable_reason.is_some());
        }
    }
}
