//! The processor: model, cores this process may use, SIMD features.

use std::collections::BTreeSet;
use std::path::Path;

use serde::Serialize;

use crate::cgroup::Cgroups;
use crate::error::{HwError, Result, read_to_string};

/// What the processor offers this process.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CpuInfo {
    /// Marketing name, as `/proc/cpuinfo` gives it.
    pub model: String,
    /// Distinct physical cores among the logical CPUs we may run on.
    pub physical_cores: usize,
    /// Logical CPUs this process may run on (its affinity mask): what `nproc` prints.
    pub logical_cores: usize,
    /// Logical CPUs the kernel has online, whether or not we may use them.
    pub online_cores: usize,
    /// The cgroup CPU bandwidth quota in cores, when one is set.
    pub cgroup_quota_cores: Option<f64>,
    /// SIMD instruction sets the CPU supports, as the compiler names them.
    pub simd: Vec<&'static str>,
}

impl CpuInfo {
    /// Reads the live system.
    pub fn detect(cgroups: &Cgroups) -> Result<Self> {
        let fallback = std::thread::available_parallelism().map_or(1, usize::from);
        let allowed = match read_to_string(Path::new("/proc/self/status")) {
            Ok(status) => allowed_cpus(&status)?,
            Err(_) => (0..fallback).collect(),
        };
        let online = read_to_string(Path::new("/sys/devices/system/cpu/online"))
            .ok()
            .and_then(|t| parse_cpu_list(t.trim()).ok())
            .map_or(fallback, |s| s.len());
        let (model, physical_cores) = match read_to_string(Path::new("/proc/cpuinfo")) {
            Ok(text) => parse_cpuinfo(&text, &allowed),
            Err(_) => ("unknown".to_owned(), allowed.len()),
        };
        Ok(Self {
            model,
            physical_cores,
            logical_cores: allowed.len(),
            online_cores: online,
            cgroup_quota_cores: cgroups.cpu_quota_cores().unwrap_or(None),
            simd: simd_features(),
        })
    }
}

fn allowed_cpus(status: &str) -> Result<BTreeSet<usize>> {
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .ok_or_else(|| HwError::Parse {
            path: "/proc/self/status".into(),
            message: "no Cpus_allowed_list line".into(),
        })?;
    parse_cpu_list(list.trim()).map_err(|message| HwError::Parse {
        path: "/proc/self/status".into(),
        message,
    })
}

/// Parses the kernel's CPU list format: `0-3,8,10-11`.
pub(crate) fn parse_cpu_list(list: &str) -> std::result::Result<BTreeSet<usize>, String> {
    let mut cpus = BTreeSet::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let num = |s: &str| {
            s.parse::<usize>()
                .map_err(|_| format!("bad CPU list `{list}`"))
        };
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(num(a)?..=num(b)?),
            None => {
                cpus.insert(num(part)?);
            }
        }
    }
    Ok(cpus)
}

/// The model name and the number of distinct (package, core) pairs among `allowed`.
fn parse_cpuinfo(text: &str, allowed: &BTreeSet<usize>) -> (String, usize) {
    let mut model = None;
    let mut cores = BTreeSet::new();
    let mut counted_any = false;
    for block in text.split("\n\n") {
        let field = |key: &str| {
            block.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == key).then(|| v.trim().to_owned())
            })
        };
        let Some(cpu) = field("processor").and_then(|p| p.parse::<usize>().ok()) else {
            continue;
        };
        if model.is_none() {
            // x86 says "model name"; Arm kernels say "Model" or only "CPU part".
            model = field("model name")
                .or_else(|| field("Model"))
                .or_else(|| field("Hardware"));
        }
        if !allowed.contains(&cpu) {
            continue;
        }
        if let (Some(pkg), Some(core)) = (field("physical id"), field("core id")) {
            cores.insert((pkg, core));
            counted_any = true;
        }
    }
    let physical = if counted_any {
        cores.len()
    } else {
        allowed.len()
    };
    (model.unwrap_or_else(|| "unknown".to_owned()), physical)
}

#[cfg(target_arch = "x86_64")]
fn simd_features() -> Vec<&'static str> {
    macro_rules! detect {
        ($($f:tt),*) => {{
            let mut found = Vec::new();
            $(if std::arch::is_x86_feature_detected!($f) { found.push($f); })*
            found
        }};
    }
    detect!(
        "sse2",
        "sse3",
        "ssse3",
        "sse4.1",
        "sse4.2",
        "avx",
        "avx2",
        "fma",
        "f16c",
        "avx512f",
        "avx512bw",
        "avx512vl",
        "avx512vnni",
        "avx512bf16",
        "avx512fp16",
        "avxvnni"
    )
}

#[cfg(target_arch = "aarch64")]
fn simd_features() -> Vec<&'static str> {
    macro_rules! detect {
        ($($f:tt),*) => {{
            let mut found = Vec::new();
            $(if std::arch::is_aarch64_feature_detected!($f) { found.push($f); })*
            found
        }};
    }
    detect!("neon", "fp16", "bf16", "dotprod", "i8mm", "sve", "sve2")
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn simd_features() -> Vec<&'static str> {
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-1").unwrap().len(), 2);
        assert_eq!(
            parse_cpu_list("0-3,8,10-11")
                .unwrap()
                .into_iter()
                .collect::<Vec<_>>(),
            [0, 1, 2, 3, 8, 10, 11]
        );
        assert!(parse_cpu_list("0-x").is_err());
    }

    #[test]
    fn hyperthreads_share_a_physical_core() {
        let block = |cpu: usize, core: usize| {
            format!(
                "processor\t: {cpu}\nmodel name\t: Test CPU\nphysical id\t: 0\ncore id\t\t: {core}\n"
            )
        };
        let text = [block(0, 0), block(1, 1), block(2, 0), block(3, 1)].join("\n");
        let all = (0..4).collect();
        assert_eq!(parse_cpuinfo(&text, &all), ("Test CPU".to_owned(), 2));
        let one = [2].into_iter().collect();
        assert_eq!(parse_cpuinfo(&text, &one).1, 1);
    }

    #[test]
    fn cpuinfo_without_topology_counts_logical() {
        let text = "processor\t: 0\nCPU part\t: 0xd0c\n\nprocessor\t: 1\nCPU part\t: 0xd0c\n";
        assert_eq!(
            parse_cpuinfo(text, &(0..2).collect()),
            ("unknown".to_owned(), 2)
        );
    }

    #[test]
    fn affinity_comes_from_status() {
        let status = "Name:\tx\nCpus_allowed:\tf\nCpus_allowed_list:\t0-2,5\n";
        assert_eq!(allowed_cpus(status).unwrap().len(), 4);
    }
}
