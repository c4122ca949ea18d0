//! `frugal plan`: the predicted peak memory of a training run, item by item, against a
//! budget; with `--measure`, real steps at growing batch sizes. Also the guard rails of
//! `frugal train` (`--max-memory`, `--auto-fit`).

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};
use frugal_hw::units::Bytes;
use frugal_train::device::Picked;
use frugal_train::plan::{DevicePlan, MemoryPlan};
use frugal_train::trainer::{Event, train};
use frugal_train::{Fit, Planner, Task, TrainError};
use serde::{Deserialize, Serialize};

use super::UserError;
use super::setup::Setup;
use crate::args::PlanArgs;

/// Margin `--measure` keeps under the budget.
const MEASURE_MARGIN: f64 = 0.05;
/// Optimizer steps each `--measure` probe runs.
const MEASURE_STEPS: u64 = 2;
/// Most probe processes `--measure` starts.
const MEASURE_PROBES: usize = 12;

/// A planner of `setup`'s run, profiling on the run's device. It plans the host's memory;
/// a GPU run's device memory is planned by `device_report`.
pub(crate) fn planner<T: Task>(setup: &Setup<T>) -> Result<Planner<'_, T>> {
    let device = frugal_train::device::pick(setup.compute.device)?.device;
    Ok(Planner::new(
        &setup.task,
        &setup.data,
        &setup.spec,
        &device,
    )?)
}

/// The machine's memory budget, as `frugal probe` reports it.
pub(crate) fn machine_budget() -> Result<u64> {
    let info = frugal_hw::MemoryInfo::detect(&frugal_hw::Cgroups::system())
        .context("reading the machine's memory budget")?;
    Ok(info.budget_bytes)
}

/// The first GPU's memory, where the driver reports it.
pub(crate) fn card_memory() -> Option<u64> {
    frugal_hw::GpuReport::detect()
        .gpus
        .first()
        .map(|g| g.memory_total_bytes)
        .filter(|&b| b > 0)
}

#[derive(Debug, Serialize, Deserialize)]
struct Measured {
    batch: usize,
    peak_rss_bytes: u64,
    fits: bool,
}

/// The device side of a plan for a run on a GPU.
#[derive(Debug, Serialize)]
struct DeviceReport {
    device: String,
    #[serde(flatten)]
    plan: DevicePlan,
    /// `--device-budget`, else the card's memory; `None` where neither is known.
    device_budget_bytes: Option<u64>,
    device_fits: Option<bool>,
}

#[derive(Debug, Serialize)]
struct Report<'a> {
    config: PathBuf,
    #[serde(flatten)]
    plan: &'a MemoryPlan,
    budget_bytes: u64,
    budget_source: &'static str,
    fits: bool,
    /// The largest micro-batch that fits: measured with `--measure`, else predicted.
    max_batch: Option<usize>,
    predicted_max_batch: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    measured: Option<Vec<Measured>>,
    /// For a run on a GPU: its device memory, predicted from probe steps on the device.
    #[serde(skip_serializing_if = "Option::is_none")]
    device: Option<DeviceReport>,
}

/// Plans a prepared configuration (or, with `--probe-batch`, is one of `--measure`'s
/// probes).
pub(crate) fn plan<T: Task>(
    mut setup: Setup<T>,
    args: &PlanArgs,
    out: &mut dyn Write,
) -> Result<()> {
    if let Some(batch) = args.probe_batch {
        return probe_batch(&mut setup, batch, out);
    }
    let (budget, budget_source) = match args.budget {
        Some(b) => (b, "--budget"),
        None => (machine_budget()?, "machine"),
    };
    let mut planner = planner(&setup)?;
    let plan = planner.configured()?;
    let predicted_max_batch = planner.max_batch(Fit::of_plan(&plan), budget)?;
    drop(planner);
    let device = device_report(&setup, args)?;
    let measured = if args.measure {
        let limit = setup.data.train.len() as usize;
        Some(measure(args, budget, plan.batch, limit)?)
    } else {
        None
    };
    let measured_max = measured
        .as_ref()
        .map(|m| m.iter().filter(|m| m.fits).map(|m| m.batch).max());
    let report = Report {
        config: args.config.file.clone(),
        plan: &plan,
        budget_bytes: budget,
        budget_source,
        fits: plan.predicted_peak_bytes <= budget,
        max_batch: measured_max.unwrap_or(predicted_max_batch),
        predicted_max_batch,
        measured,
        device,
    };
    if args.json {
        return super::print_json(out, &report);
    }
    write_table(out, &plan)?;
    if let Some(d) = &report.device {
        let probes = d
            .plan
            .probes
            .iter()
            .map(|(b, bytes)| format!("batch {b}: {}", Bytes(*bytes)))
            .collect::<Vec<_>>()
            .join(", ");
        writeln!(
            out,
            "on {}: predicted device peak {} at batch {} (measured {probes}){}",
            d.device,
            Bytes(d.plan.predicted_peak_device_bytes),
            d.plan.batch,
            match (d.device_budget_bytes, d.device_fits) {
                (Some(b), Some(true)) => format!("; fits its {}", Bytes(b)),
                (Some(b), Some(false)) => format!("; does NOT fit its {}", Bytes(b)),
                _ => String::new(),
            }
        )?;
    }
    let verdict = if report.fits { "fits" } else { "does NOT fit" };
    writeln!(
        out,
        "{verdict} the budget of {} ({})",
        Bytes(budget),
        if budget_source == "machine" {
            "this machine's"
        } else {
            "--budget"
        }
    )?;
    match predicted_max_batch {
        Some(b) => writeln!(out, "largest micro-batch that fits (predicted): {b}")?,
        None => writeln!(out, "not even one sample per micro-batch fits")?,
    }
    if let Some(m) = &report.measured {
        for r in m {
            writeln!(
                out,
                "  measured batch {:>7}: peak {}{}",
                r.batch,
                Bytes(r.peak_rss_bytes),
                if r.fits {
                    ""
                } else {
                    "  (over budget − 5 %)"
                }
            )?;
        }
        match measured_max.flatten() {
            Some(b) => writeln!(
                out,
                "largest micro-batch that fits (measured, 5 % margin): {b}"
            )?,
            None => writeln!(out, "no measured batch fits with a 5 % margin")?,
        }
    }
    Ok(())
}

/// The device memory of the configured run, when it runs on a GPU: two short runs of
/// the loop at a quarter and half of its micro-batch, extended to it.
fn device_report<T: Task>(setup: &Setup<T>, args: &PlanArgs) -> Result<Option<DeviceReport>> {
    let picked = frugal_train::device::pick(setup.compute.device)?;
    if !picked.gpu {
        return Ok(None);
    }
    picked.check_precision(setup.spec.precision)?;
    let plan = device_plan(setup, &picked)?;
    let card = (!picked.software).then(card_memory).flatten();
    let device_budget_bytes = args.device_budget.or(card);
    Ok(Some(DeviceReport {
        device: picked.name,
        device_fits: device_budget_bytes.map(|b| plan.predicted_peak_device_bytes <= b),
        plan,
        device_budget_bytes,
    }))
}

/// The device memory `setup`'s run needs on `picked` (a GPU), from probe runs of the loop
/// at a quarter and half of its micro-batch.
pub(crate) fn device_plan<T: Task>(setup: &Setup<T>, picked: &Picked) -> Result<DevicePlan> {
    let probe = |batch: usize| -> frugal_train::Result<u64> {
        let mut spec = setup.spec.clone();
        spec.batch_size = batch;
        spec.steps = Some(MEASURE_STEPS);
        spec.stop_after = None;
        spec.log_every = MEASURE_STEPS;
        spec.eval_every = 0;
        spec.checkpoint_every = 0;
        let scratch = setup
            .dir
            .join(format!(".plan-device-{}-{batch}", std::process::id()));
        // What earlier probes left in the allocator's pools is not this one's.
        picked.device.memory_cleanup();
        let run = frugal_train::device::catch_backend_panics("a probe run", picked, || {
            train(
                &setup.task,
                &setup.data,
                &spec,
                &picked.device,
                &scratch,
                false,
                &mut |_: Event<'_>| {},
            )
        });
        let _ = std::fs::remove_dir_all(&scratch);
        Ok(run?.peak_device_bytes.unwrap_or(0))
    };
    Ok(DevicePlan::measure(setup.spec.batch_size, probe)?)
}

/// The breakdown as a table.
fn write_table(out: &mut dyn Write, plan: &MemoryPlan) -> Result<()> {
    writeln!(
        out,
        "memory plan: micro-batch {} × {} accumulation, {}, {}",
        plan.batch,
        plan.grad_accum,
        plan.precision.name(),
        plan.segments.map_or("no checkpointing".into(), |s| format!(
            "{s} checkpoint segments"
        ))
    )?;
    for item in &plan.items {
        writeln!(
            out,
            "  {:<24} {:>11}   {}",
            item.name,
            Bytes(item.bytes).to_string(),
            item.note
        )?;
    }
    writeln!(
        out,
        "  {:<24} {:>11}",
        "predicted peak",
        Bytes(plan.predicted_peak_bytes).to_string()
    )?;
    if plan.blocks.len() > 1 {
        let row = plan
            .blocks
            .iter()
            .map(|b| format!("{}: {}", b.block, Bytes(b.kept_bytes)))
            .collect::<Vec<_>>()
            .join(", ");
        writeln!(
            out,
            "  activations per block (kept without checkpointing): {row}"
        )?;
    }
    Ok(())
}

/// The child side of `--measure`: a couple of real optimizer steps (with an evaluation
/// and a checkpoint, as a run has) at `batch`, in a scratch directory; prints the peak.
fn probe_batch<T: Task>(setup: &mut Setup<T>, batch: usize, out: &mut dyn Write) -> Result<()> {
    setup.choose(Fit {
        batch_size: batch,
        ..Fit::of(&setup.spec)
    });
    setup.spec.steps = Some(MEASURE_STEPS);
    setup.spec.log_every = MEASURE_STEPS;
    setup.spec.eval_every = 0;
    setup.spec.checkpoint_every = 0;
    let scratch = setup
        .dir
        .join(format!(".plan-measure-{}", std::process::id()));
    let picked = frugal_train::device::pick(setup.compute.device)?;
    // The training's own peak, as `frugal train` reports it: preparing the data came
    // before, in this process.
    let window = frugal_hw::MemoryMeter::new().window()?;
    let result = train(
        &setup.task,
        &setup.data,
        &setup.spec,
        &picked.device,
        &scratch,
        false,
        &mut |_: Event<'_>| {},
    );
    let peak = window.finish().peak_rss_bytes;
    let _ = std::fs::remove_dir_all(&scratch);
    result?;
    super::print_json(
        out,
        &Measured {
            batch,
            peak_rss_bytes: peak,
            fits: false,
        },
    )
}

/// Runs probes at growing batch sizes (doubling from `start`, then bisecting between the
/// last that fit and the first that did not), up to `limit` samples.
fn measure(args: &PlanArgs, budget: u64, start: usize, limit: usize) -> Result<Vec<Measured>> {
    let exe = std::env::current_exe().context("finding the frugal executable")?;
    let probe = |batch: usize| -> Result<Measured> {
        let mut cmd = Command::new(&exe);
        cmd.arg("plan").arg(&args.config.file);
        for s in &args.config.set {
            cmd.arg("--set").arg(s);
        }
        let output = cmd
            .arg("--probe-batch")
            .arg(batch.to_string())
            .output()
            .context("starting a measuring process")?;
        if !output.status.success() {
            bail!(
                "measuring batch {batch} failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        let mut m: Measured = serde_json::from_slice(&output.stdout)
            .context("reading a measuring process's report")?;
        m.fits = m.peak_rss_bytes as f64 * (1.0 + MEASURE_MARGIN) <= budget as f64;
        Ok(m)
    };
    let limit = limit.max(1);
    let mut results = Vec::new();
    let (mut good, mut bad) = (0usize, None::<usize>);
    let mut b = start.clamp(1, limit);
    while results.len() < MEASURE_PROBES {
        let m = probe(b)?;
        let fits = m.fits;
        results.push(m);
        if !fits {
            bad = Some(b);
            break;
        }
        good = b;
        if b >= limit {
            break;
        }
        b = (b * 2).min(limit);
    }
    if let Some(mut hi) = bad {
        let mut lo = good;
        while results.len() < MEASURE_PROBES && hi - lo > 1.max(hi / 16) {
            let mid = lo + (hi - lo) / 2;
            let m = probe(mid)?;
            if m.fits {
                lo = mid;
            } else {
                hi = mid;
            }
            results.push(m);
        }
    }
    Ok(results)
}

/// `frugal train --max-memory / --auto-fit`: refuses a configuration whose plan exceeds
/// the budget, or changes checkpointing, micro-batch and precision until it fits.
pub(crate) fn guard<T: Task>(
    setup: &mut Setup<T>,
    max_memory: Option<u64>,
    auto_fit: bool,
) -> Result<()> {
    let budget = match max_memory {
        Some(b) => b,
        None => machine_budget()?,
    };
    let mut planner = planner(setup)?;
    let fitted = frugal_train::fit(&mut planner, budget, auto_fit);
    drop(planner);
    // The profiling steps' freed memory, which the allocator would keep, is not the run's.
    frugal_train::memory::release_free_memory();
    let fitted = match fitted {
        Ok(f) => f,
        Err(e @ TrainError::OverBudget { .. }) => {
            let TrainError::OverBudget { plan, searched, .. } = &e else {
                unreachable!()
            };
            let mut table = Vec::new();
            write_table(&mut table, plan)?;
            let hint = if *searched {
                "the configuration as given is above; a larger --max-memory or a smaller model is needed"
            } else {
                "lower compute.batch_size, set compute.checkpointing = true or compute.precision = \"bf16\", or pass --auto-fit"
            };
            return Err(UserError(format!(
                "{e}; nothing was trained.\n{}{hint}",
                String::from_utf8_lossy(&table)
            ))
            .into());
        }
        Err(e) => return Err(e.into()),
    };
    let plan = &fitted.plan;
    if !fitted.changed {
        writeln!(
            std::io::stderr().lock(),
            "memory plan: predicted peak {} within the budget of {}",
            Bytes(plan.predicted_peak_bytes),
            Bytes(budget)
        )?;
        return Ok(());
    }
    let effective = setup.spec.batch_size * setup.spec.grad_accum;
    writeln!(
        std::io::stderr().lock(),
        "auto-fit: {}, micro-batch {} × {} accumulation (effective {effective}), {}: predicted peak {} within {}",
        plan.segments.map_or("no checkpointing".into(), |s| format!(
            "{s} checkpoint segments"
        )),
        plan.batch,
        plan.grad_accum,
        plan.precision.name(),
        Bytes(plan.predicted_peak_bytes),
        Bytes(budget)
    )?;
    setup.choose(Fit::of_plan(plan));
    Ok(())
}
