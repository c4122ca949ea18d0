//! The memory meter: what this process holds now and at its peak, in host RAM, in its
//! cgroup and on the GPU. Benchmarks and the memory planner measure with it.
//!
//! Peaks come from the kernel's high-water mark (`VmHWM`), which catches every page the
//! process ever touched, however briefly. A [`PeakWindow`] resets that mark (by writing
//! `5` to `/proc/self/clear_refs`) so one region of code can be measured on its own.
//! Where the kernel refuses the reset, the window samples `VmRSS` from a thread instead,
//! which can miss a spike shorter than its interval: the report says which was used.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use nvml_wrapper::Nvml;
use serde::Serialize;

use crate::cgroup::Cgroups;
use crate::error::{HwError, Result, read_to_string};
use crate::gpu;

/// One reading of the meter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MemorySample {
    /// Resident set size now.
    pub rss_bytes: u64,
    /// The highest resident set size since the process started.
    pub peak_rss_bytes: u64,
    /// Memory charged to our cgroup (all its processes, page cache included).
    pub cgroup_usage_bytes: Option<u64>,
    /// Memory in use on all visible GPUs, by anyone.
    pub gpu_used_bytes: Option<u64>,
    /// GPU memory held by this process, where the driver reports it.
    pub gpu_process_bytes: Option<u64>,
}

/// How a window found its peak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PeakMethod {
    /// The kernel's high-water mark, reset at the window's start: exact.
    KernelHighWaterMark,
    /// `VmRSS` read by a thread at a fixed interval: misses spikes shorter than it.
    Sampled,
}

/// What a window measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PeakReport {
    /// Resident set size when the window opened.
    pub start_rss_bytes: u64,
    /// The highest resident set size while it was open.
    pub peak_rss_bytes: u64,
    /// Resident set size when it closed.
    pub end_rss_bytes: u64,
    /// How the peak was found.
    pub method: PeakMethod,
}

impl PeakReport {
    /// How far the peak rose above where the window started.
    pub fn rise_bytes(&self) -> u64 {
        self.peak_rss_bytes.saturating_sub(self.start_rss_bytes)
    }
}

/// Reads memory use; cheap to create, and keeps NVML open once a GPU reading is asked for.
pub struct MemoryMeter {
    /// Resolved once: finding the cgroup walks several /proc files.
    cgroup_usage: Option<PathBuf>,
    nvml: OnceLock<Option<Nvml>>,
    sample_interval: Duration,
    force_sampling: bool,
}

impl Default for MemoryMeter {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MemoryMeter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryMeter")
            .field("sample_interval", &self.sample_interval)
            .field("force_sampling", &self.force_sampling)
            .finish_non_exhaustive()
    }
}

impl MemoryMeter {
    /// A meter for this process.
    pub fn new() -> Self {
        Self {
            cgroup_usage: Cgroups::system()
                .memory()
                .ok()
                .flatten()
                .map(|m| m.usage_path()),
            nvml: OnceLock::new(),
            sample_interval: Duration::from_millis(1),
            force_sampling: false,
        }
    }

    /// Makes windows sample `VmRSS` every `interval` instead of resetting the kernel's
    /// high-water mark (for comparison, or where another tool relies on that mark).
    pub fn sampling(mut self, interval: Duration) -> Self {
        self.sample_interval = interval;
        self.force_sampling = true;
        self
    }

    /// Reads everything now.
    pub fn sample(&self) -> Result<MemorySample> {
        let status = ProcStatus::read()?;
        let nvml = self.nvml.get_or_init(|| gpu::open_nvml().ok()).as_ref();
        Ok(MemorySample {
            rss_bytes: status.rss,
            peak_rss_bytes: status.hwm.max(LIFETIME_PEAK.load(Ordering::Relaxed)),
            cgroup_usage_bytes: self
                .cgroup_usage
                .as_deref()
                .and_then(|p| std::fs::read_to_string(p).ok())
                .and_then(|t| t.trim().parse().ok()),
            gpu_used_bytes: nvml.and_then(gpu::used_bytes),
            gpu_process_bytes: nvml.and_then(|n| gpu::used_by_process(n, std::process::id())),
        })
    }

    /// Opens a window: its [`PeakWindow::finish`] reports the peak RSS reached between
    /// now and then. Windows may nest and overlap.
    pub fn window(&self) -> Result<PeakWindow> {
        let start = ProcStatus::read()?;
        let max_seen = Arc::new(AtomicU64::new(start.rss));
        if !self.force_sampling && reset_high_water_mark(&max_seen) {
            return Ok(PeakWindow {
                start_rss: start.rss,
                max_seen,
                method: PeakMethod::KernelHighWaterMark,
                sampler: None,
            });
        }
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (stop, max_seen, interval) = (stop.clone(), max_seen.clone(), self.sample_interval);
            std::thread::Builder::new()
                .name("frugal-memory-meter".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        if let Ok(s) = ProcStatus::read() {
                            max_seen.fetch_max(s.rss, Ordering::Relaxed);
                        }
                        std::thread::sleep(interval);
                    }
                })
                .map_err(|cause| HwError::Read {
                    path: "/proc/self/status".into(),
                    cause,
                })?
        };
        Ok(PeakWindow {
            start_rss: start.rss,
            max_seen,
            method: PeakMethod::Sampled,
            sampler: Some((stop, thread)),
        })
    }
}

/// An open measurement; see [`MemoryMeter::window`].
#[derive(Debug)]
pub struct PeakWindow {
    start_rss: u64,
    max_seen: Arc<AtomicU64>,
    method: PeakMethod,
    sampler: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
}

impl PeakWindow {
    /// The peak so far, without closing the window. Each call is a reading too, so a
    /// sampled window also remembers what this call saw.
    pub fn peak_bytes(&self) -> u64 {
        let now = match (self.method, ProcStatus::read()) {
            (PeakMethod::KernelHighWaterMark, Ok(s)) => s.hwm,
            (PeakMethod::Sampled, Ok(s)) => s.rss,
            (_, Err(_)) => 0,
        };
        self.max_seen.fetch_max(now, Ordering::Relaxed).max(now)
    }

    /// Closes the window.
    pub fn finish(mut self) -> PeakReport {
        if let Some((stop, thread)) = self.sampler.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = thread.join();
        }
        let peak = self.peak_bytes();
        PeakReport {
            start_rss_bytes: self.start_rss,
            peak_rss_bytes: peak,
            end_rss_bytes: ProcStatus::read().map_or(0, |s| s.rss),
            method: self.method,
        }
    }
}

impl Drop for PeakWindow {
    fn drop(&mut self) {
        if let Some((stop, _)) = &self.sampler {
            stop.store(true, Ordering::Relaxed);
        }
    }
}

/// The high-water mark before the most recent reset, so the process-lifetime peak
/// survives resets.
static LIFETIME_PEAK: AtomicU64 = AtomicU64::new(0);

/// Windows relying on the kernel mark. A reset would erase the peak an older window
/// has seen so far, so the mark is folded into each of them first.
static KERNEL_WINDOWS: Mutex<Vec<Weak<AtomicU64>>> = Mutex::new(Vec::new());

fn reset_high_water_mark(window: &Arc<AtomicU64>) -> bool {
    let mut windows = KERNEL_WINDOWS.lock().unwrap_or_else(|e| e.into_inner());
    let Ok(before) = ProcStatus::read() else {
        return false;
    };
    if std::fs::write("/proc/self/clear_refs", "5").is_err() {
        return false;
    }
    LIFETIME_PEAK.fetch_max(before.hwm, Ordering::Relaxed);
    windows.retain(|w| match w.upgrade() {
        Some(seen) => {
            seen.fetch_max(before.hwm, Ordering::Relaxed);
            true
        }
        None => false,
    });
    windows.push(Arc::downgrade(window));
    true
}

#[derive(Debug, Clone, Copy)]
struct ProcStatus {
    rss: u64,
    hwm: u64,
}

impl ProcStatus {
    fn read() -> Result<Self> {
        let path = Path::new("/proc/self/status");
        Self::parse(path, &read_to_string(path)?)
    }

    fn parse(path: &Path, text: &str) -> Result<Self> {
        let field = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map(|kib| kib * 1024)
                .ok_or_else(|| HwError::Parse {
                    path: path.to_path_buf(),
                    message: format!("no readable {key} line"),
                })
        };
        Ok(Self {
            rss: field("VmRSS:")?,
            hwm: field("VmHWM:")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_are_kib() {
        let s =
            ProcStatus::parse(Path::new("s"), "VmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n").unwrap();
        assert_eq!((s.rss, s.hwm), (1 << 20, 2 << 20));
        assert!(ProcStatus::parse(Path::new("s"), "VmRSS: x kB\n").is_err());
    }

    #[test]
    fn a_sample_is_consistent() {
        let s = MemoryMeter::new().sample().unwrap();
        assert!(s.rss_bytes > 0);
        assert!(s.peak_rss_bytes >= s.rss_bytes);
        if let Ok(Some(cg)) = Cgroups::system().memory() {
            // Our own pages are charged to our cgroup.
            assert!(cg.usage_path().exists() == s.cgroup_usage_bytes.is_some());
        }
    }
}
