//! What machine is this, and what will fit on it?
//!
//! `frugal-hw` answers the question every frugal job starts with. [`probe`] reads the
//! CPU, host memory and the cgroup limit actually enforced, free disk space and NVIDIA
//! GPUs (through NVML, loaded at run time, so no GPU library is linked), and
//! [`tier::decide`] turns that into a compute tier with the rule that decided it (the
//! `frugal` program keeps a configuration preset per workload and tier).
//! The [`MemoryMeter`] measures current and peak memory for benchmarks and the planner.
//!
//! ```
//! let report = frugal_hw::probe(&frugal_hw::ProbeOptions::default()).unwrap();
//! assert!(report.cpu.logical_cores >= 1);
//! assert!(report.memory.budget_bytes <= report.memory.total_bytes);
//! println!("{} — {}", report.tier.tier, report.tier.rule);
//! ```
//!
//! Linux is the supported platform: cgroups, `/proc` and `posix_fadvise` are what make
//! the answers honest.

mod cgroup;
mod cpu;
mod disk;
mod error;
mod gpu;
mod memory;
mod meter;
mod probe;
pub mod tier;
pub mod units;

pub use cgroup::{CgroupMemory, CgroupVersion, Cgroups};
pub use cpu::CpuInfo;
pub use disk::{DiskBench, DiskInfo, bench_sequential};
pub use error::{HwError, Result};
pub use gpu::{GpuInfo, GpuReport};
pub use memory::{MemoryInfo, budget};
pub use meter::{MemoryMeter, MemorySample, PeakMethod, PeakReport, PeakWindow};
pub use probe::{HardwareReport, ProbeOptions, probe};
pub use tier::{Tier, TierDecision, TierInput};
