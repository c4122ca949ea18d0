use std::collections::BTreeMap;
use std::io::Write;

use anyhow::Result;
use frugal_hw::units::Bytes;
use frugal_hw::{
    CpuInfo, DiskBench, DiskInfo, GpuInfo, HardwareReport, MemoryInfo, ProbeOptions, Tier,
};
use serde::Serialize;

use crate::args::ProbeArgs;
use crate::config::AnyConfig;
use crate::presets::{self, Workload};

/// The JSON document; docs/probe.md lists its keys, which are stable.
#[derive(Debug, Serialize)]
struct ProbeJson<'a> {
    cpu: &'a CpuInfo,
    memory: &'a MemoryInfo,
    disk: DiskJson<'a>,
    gpus: &'a [GpuInfo],
    gpu_driver_version: Option<&'a str>,
    gpu_unavailable_reason: Option<&'a str>,
    /// The GPU backends compiled into this binary.
    compute_backends: &'static [&'static str],
    /// Every device this binary can train on, the CPU last.
    compute_devices: &'a [frugal_train::device::DeviceInfo],
    tier: Tier,
    tier_rule: &'a str,
    presets: BTreeMap<&'static str, PresetJson>,
}

#[derive(Debug, Serialize)]
struct DiskJson<'a> {
    #[serde(flatten)]
    info: &'a DiskInfo,
    bench: Option<&'a DiskBench>,
}

#[derive(Debug, Serialize)]
struct PresetJson {
    tier: Tier,
    source: String,
    builtin: bool,
    config: AnyConfig,
}

pub(crate) fn run(args: ProbeArgs, out: &mut dyn Write) -> Result<()> {
    let report = frugal_hw::probe(&ProbeOptions {
        path: args.path.clone(),
        disk_bench_bytes: args.disk_bench.then_some(args.disk_bench_size),
    })?;
    let dir = presets::user_dir(args.presets.dir.as_deref());
    let mut chosen = BTreeMap::new();
    for workload in Workload::ALL {
        let p = presets::resolve(workload, report.tier.tier, dir.as_deref())?;
        let config = presets::parse(&p)?;
        chosen.insert(
            workload.name(),
            PresetJson {
                tier: p.tier,
                source: p.origin.path().display().to_string(),
                builtin: p.origin.is_builtin(),
                config,
            },
        );
    }
    let devices = frugal_train::device::list();
    if args.json {
        let doc = ProbeJson {
            cpu: &report.cpu,
            memory: &report.memory,
            disk: DiskJson {
                info: &report.disk,
                bench: report.disk_bench.as_ref(),
            },
            gpus: &report.gpu.gpus,
            gpu_driver_version: report.gpu.driver_version.as_deref(),
            gpu_unavailable_reason: report.gpu.unavailable_reason.as_deref(),
            compute_backends: frugal_train::device::gpu_backends(),
            compute_devices: &devices,
            tier: report.tier.tier,
            tier_rule: &report.tier.rule,
            presets: chosen,
        };
        super::print_json(out, &doc)?;
    } else {
        write_table(&report, &chosen, &devices, out)?;
    }
    Ok(())
}

fn write_table(
    r: &HardwareReport,
    presets: &BTreeMap<&'static str, PresetJson>,
    devices: &[frugal_train::device::DeviceInfo],
    out: &mut dyn Write,
) -> Result<()> {
    let cpu = &r.cpu;
    writeln!(out, "{:<9}{}", "CPU", cpu.model)?;
    let mut cores = format!(
        "{} logical cores, {} physical",
        cpu.logical_cores, cpu.physical_cores
    );
    if cpu.online_cores != cpu.logical_cores {
        cores += &format!(
            " ({} online, the rest outside this process's affinity)",
            cpu.online_cores
        );
    }
    if let Some(q) = cpu.cgroup_quota_cores {
        cores += &format!("; cgroup quota {q:.2} cores");
    }
    writeln!(out, "{:<9}{cores}", "")?;
    if !cpu.simd.is_empty() {
        writeln!(out, "{:<9}SIMD: {}", "", cpu.simd.join(" "))?;
    }

    let m = &r.memory;
    writeln!(
        out,
        "{:<9}{} total, {} available, swap {} ({} free)",
        "Memory",
        Bytes(m.total_bytes),
        Bytes(m.available_bytes),
        Bytes(m.swap_total_bytes),
        Bytes(m.swap_free_bytes)
    )?;
    match &m.cgroup {
        Some(cg) => {
            let limit = cg
                .limit_bytes
                .map_or("no limit".to_owned(), |l| format!("limit {}", Bytes(l)));
            let usage = cg
                .usage_bytes
                .map_or(String::new(), |u| format!(", {} in use", Bytes(u)));
            let version = serde_plain(&cg.version);
            writeln!(out, "{:<9}cgroup {version} {}: {limit}{usage}", "", cg.path)?;
        }
        None => writeln!(out, "{:<9}no cgroup memory controller", "")?,
    }
    let why = if m.cgroup_limit_bytes.is_some_and(|l| l < m.total_bytes) {
        "the cgroup limit"
    } else {
        "physical RAM"
    };
    writeln!(out, "{:<9}budget {} ({why})", "", Bytes(m.budget_bytes))?;

    let d = &r.disk;
    writeln!(
        out,
        "{:<9}{}: {} free of {}",
        "Disk",
        d.path.display(),
        Bytes(d.free_bytes),
        Bytes(d.total_bytes)
    )?;
    if let Some(b) = &r.disk_bench {
        writeln!(
            out,
            "{:<9}sequential read {:.2} GB/s, write {:.2} GB/s ({} file, {})",
            "",
            b.read_gbps,
            b.write_gbps,
            Bytes(b.bytes),
            b.cache_bypass
        )?;
    }

    if r.gpu.gpus.is_empty() {
        let why = r.gpu.unavailable_reason.as_deref().unwrap_or("none found");
        writeln!(out, "{:<9}none ({why})", "GPU")?;
    }
    for (i, g) in r.gpu.gpus.iter().enumerate() {
        writeln!(
            out,
            "{:<9}[{}] {}: {} total, {} free, compute {}{}",
            if i == 0 { "GPU" } else { "" },
            g.index,
            g.name,
            Bytes(g.memory_total_bytes),
            Bytes(g.memory_free_bytes),
            g.compute_capability.as_deref().unwrap_or("?"),
            if i == 0 {
                r.gpu
                    .driver_version
                    .as_deref()
                    .map_or(String::new(), |v| format!(", driver {v}"))
            } else {
                String::new()
            }
        )?;
    }

    let backends = frugal_train::device::gpu_backends();
    for (i, d) in devices.iter().enumerate() {
        let precisions: Vec<&str> = [("f32", true), ("bf16", d.bf16), ("f16", d.f16)]
            .into_iter()
            .filter_map(|(p, yes)| yes.then_some(p))
            .collect();
        writeln!(
            out,
            "{:<9}{}: {}{}",
            if i == 0 { "Compute" } else { "" },
            d.name,
            precisions.join(", "),
            if d.software {
                " (software driver: `auto` passes over it)"
            } else {
                ""
            }
        )?;
    }
    if backends.is_empty() {
        writeln!(
            out,
            "{:<9}no GPU backend in this build (docs/gpu.md: scripts/build-cuda.sh for NVIDIA, --features vulkan for others)",
            ""
        )?;
    }
    writeln!(out, "{:<9}{} ({})", "Tier", r.tier.tier, r.tier.rule)?;
    let mut first = true;
    for name in Workload::ALL.map(Workload::name) {
        let Some(p) = presets.get(name) else { continue };
        let c = p.config.compute();
        writeln!(
            out,
            "{:<9}{name:<11}{}{}  device={} precision={} batch={} accum={} checkpointing={}",
            if first { "Presets" } else { "" },
            p.source,
            if p.tier == r.tier.tier {
                String::new()
            } else {
                format!(" (nearest: {})", p.tier)
            },
            serde_plain(&c.device),
            serde_plain(&c.precision),
            c.batch_size,
            c.grad_accum,
            if c.checkpointing { "on" } else { "off" },
        )?;
        first = false;
    }
    Ok(())
}

/// The serde name of a unit enum variant (`"bf16"`), as it is written in config files.
fn serde_plain<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}
