use std::path::PathBuf;

use serde::Serialize;

use crate::cgroup::Cgroups;
use crate::cpu::CpuInfo;
use crate::disk::{DiskBench, DiskInfo, bench_sequential};
use crate::error::Result;
use crate::gpu::GpuReport;
use crate::memory::MemoryInfo;
use crate::tier::{TierDecision, TierInput, decide};

/// What to look at beyond the basics.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    /// Where free space is measured (and the disk benchmark writes).
    pub path: PathBuf,
    /// Run the disk benchmark with a file of this many bytes.
    pub disk_bench_bytes: Option<u64>,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        Self {
            path: PathBuf::from("."),
            disk_bench_bytes: None,
        }
    }
}

/// Everything the probe found.
#[derive(Debug, Clone, Serialize)]
pub struct HardwareReport {
    /// The processor.
    pub cpu: CpuInfo,
    /// Host memory and its limit.
    pub memory: MemoryInfo,
    /// The disk under the probed path.
    pub disk: DiskInfo,
    /// The disk benchmark, when asked for.
    pub disk_bench: Option<DiskBench>,
    /// NVIDIA GPUs.
    pub gpu: GpuReport,
    /// The compute tier and why.
    pub tier: TierDecision,
}

/// Looks at the machine.
pub fn probe(options: &ProbeOptions) -> Result<HardwareReport> {
    let cgroups = Cgroups::system();
    let cpu = CpuInfo::detect(&cgroups)?;
    let memory = MemoryInfo::detect(&cgroups)?;
    let disk = DiskInfo::at(&options.path)?;
    let disk_bench = options
        .disk_bench_bytes
        .map(|bytes| bench_sequential(&disk.path, bytes))
        .transpose()?;
    let gpu = GpuReport::detect();
    let tier = decide(&TierInput {
        host_budget_bytes: memory.budget_bytes,
        gpu_memory_bytes: gpu.gpus.iter().map(|g| g.memory_total_bytes).collect(),
    });
    Ok(HardwareReport {
        cpu,
        memory,
        disk,
        disk_bench,
        gpu,
        tier,
    })
}
