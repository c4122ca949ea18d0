//! `frugal bench CONFIG --matrix KEY=V1,V2 …`: runs a workload once per combination of
//! the matrix's values (a warm-up, then `--repeats` timed runs) and reports each
//! configuration's time (mean ± sd), peak memory beside the planner's prediction,
//! throughput, speedup against the first row and status; a configuration the planner
//! puts over the budget is not run, one that runs out of memory is a row, not a crash.
//! Operator rollouts run in this process, and each reduced precision's rollout error
//! against f32 is reported per step; classifier and particle training steps run each
//! configuration in a process of its own, so that one row's memory is not the next's.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use frugal_hw::units::Bytes;
use frugal_models::operator::{Rollout, Trajectories};
use frugal_train::device::{DeviceChoice, Picked};
use frugal_train::{Fit, Precision, Task};
use serde::{Deserialize, Serialize};

use super::UserError;
use super::setup::Setup;
use crate::args::WorkloadBenchArgs as BenchArgs;
use crate::config::schema::OperatorConfig;
use crate::config::{AnyConfig, Source};

pub(crate) fn run(args: BenchArgs, out: &mut dyn Write) -> Result<()> {
    let source = Source::read(&args.config.file, &args.config.set)?;
    match AnyConfig::from_document(&source.document()?)? {
        AnyConfig::Operator(c) => operator(&c, &args, out),
        c @ (AnyConfig::Classifier(_) | AnyConfig::Particles(_) | AnyConfig::Eqprop(_)) => {
            let workload = c.workload().name();
            if args.operator.is_some() {
                return Err(UserError(
                    "--operator picks the operator of an `operator` configuration".into(),
                )
                .into());
            }
            match super::setup::load(&args.config)? {
                AnyConfig::Classifier(c) => {
                    training(super::setup::classifier(&c)?, workload, &args, out)
                }
                AnyConfig::Particles(c) => {
                    training(super::nbody::setup(&c)?, workload, &args, out)
                }
                AnyConfig::Eqprop(c) => {
                    training(super::setup::eqprop(&c)?, workload, &args, out)
                }
                _ => unreachable!("the workload was read above"),
            }
        }
        other => Err(UserError(format!(
            "{}: `frugal bench` runs `operator`, `classifier`, `particles` and `eqprop` configurations; this one is `{}`",
            args.config.file.display(),
            other.workload().name()
        ))
        .into()),
    }
}

/// One row's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RowConfig {
    precision: Precision,
    batch: u32,
    device: DeviceChoice,
}

impl RowConfig {
    fn label(&self) -> String {
        let device = match self.device {
            DeviceChoice::Auto => "auto",
            DeviceChoice::Cpu => "cpu",
            DeviceChoice::Gpu => "gpu",
        };
        format!("{} batch={} {device}", self.precision.name(), self.batch)
    }
}

/// The matrix's keys, as `--matrix` spells them.
const KEYS: [&str; 3] = ["precision", "batch", "device"];

/// Every combination of the `--matrix` values over the configuration's own, the first
/// key given varying slowest.
fn rows(base: &RowConfig, matrix: &[String]) -> Result<Vec<RowConfig>> {
    let mut rows = vec![base.clone()];
    let mut seen: Vec<&str> = Vec::new();
    for spec in matrix {
        let bad = |why: String| UserError(format!("--matrix {spec}: {why}"));
        let (key, values) = spec
            .split_once('=')
            .ok_or_else(|| bad("expected KEY=V1,V2,… (e.g. precision=f32,bf16)".into()))?;
        let key = key.trim();
        let Some(&key) = KEYS.iter().find(|k| **k == key) else {
            return Err(bad(format!(
                "unknown key `{key}`; the keys are {}",
                KEYS.join(", ")
            ))
            .into());
        };
        if seen.contains(&key) {
            return Err(bad(format!(
                "`{key}` is given twice; list all its values in one --matrix"
            ))
            .into());
        }
        seen.push(key);
        let values: Vec<&str> = values.split(',').map(str::trim).collect();
        if values.iter().any(|v| v.is_empty()) {
            return Err(bad("an empty value".into()).into());
        }
        let mut next = Vec::new();
        // Earlier keys' combinations outside, this key's values inside: the first key
        // given varies slowest.
        for row in &rows {
            for v in &values {
                let v = *v;
                let mut r = row.clone();
                match key {
                    "precision" => {
                        r.precision =
                            serde_json::from_value(serde_json::json!(v)).map_err(|_| {
                                bad(format!("precision `{v}`: expected f32, bf16 or f16"))
                            })?;
                    }
                    "batch" => {
                        r.batch = v.parse().ok().filter(|b| *b >= 1).ok_or_else(|| {
                            bad(format!("batch `{v}`: expected a whole number ≥ 1"))
                        })?;
                    }
                    _ => {
                        r.device = serde_json::from_value(serde_json::json!(v))
                            .map_err(|_| bad(format!("device `{v}`: expected cpu, gpu or auto")))?;
                    }
                }
                next.push(r);
            }
        }
        rows = next;
    }
    Ok(rows)
}

/// One row of the report.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Row {
    config: RowConfig,
    /// The device it ran on.
    device_name: Option<String>,
    time_mean_s: Option<f64>,
    time_sd_s: Option<f64>,
    /// Bytes the rollout held at most above what was held before it (heap on the CPU,
    /// the allocator's reservation on a GPU), the largest over the repeats.
    peak_bytes: Option<u64>,
    predicted_peak_bytes: Option<u64>,
    /// Realization time steps per second (rollouts), samples per second (training).
    throughput: Option<f64>,
    /// Throughput over the first row's.
    speedup: Option<f64>,
    /// `ok`, `over budget`, `OOM`, `unsupported` or `failed`.
    status: String,
    /// Why a row did not run, or failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
    /// The planner's breakdown of the rollout's memory.
    #[serde(skip_serializing_if = "Option::is_none", skip_deserializing)]
    memory: Option<frugal_models::operator::RolloutMemory>,
}

impl Row {
    /// A row that has not run yet.
    fn new(config: RowConfig) -> Self {
        Self {
            config,
            device_name: None,
            time_mean_s: None,
            time_sd_s: None,
            peak_bytes: None,
            predicted_peak_bytes: None,
            throughput: None,
            speedup: None,
            status: "ok".into(),
            note: None,
            memory: None,
        }
    }

    /// Mean and sample standard deviation of `times`.
    fn set_times(&mut self, times: &[f64]) {
        let mean = times.iter().sum::<f64>() / times.len().max(1) as f64;
        let sd = if times.len() > 1 {
            (times.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (times.len() - 1) as f64)
                .sqrt()
        } else {
            0.0
        };
        self.time_mean_s = Some(mean);
        self.time_sd_s = Some(sd);
    }

    /// A run that failed: OOM when the device says it ran out of memory.
    fn failed(&mut self, text: String) {
        let lower = text.to_lowercase();
        self.status = if lower.contains("out of memory") || lower.contains("outofmemory") {
            "OOM".into()
        } else {
            "failed".into()
        };
        self.note = Some(text);
    }
}

/// A precision's rollout error against f32: normalized RMSE per recorded step, averaged
/// over the realizations compared.
#[derive(Debug, Clone, Serialize)]
struct ErrorCurve {
    precision: Precision,
    device: String,
    realizations: u32,
    steps: Vec<u32>,
    nrmse: Vec<f64>,
}

#[derive(Debug, Serialize)]
struct Report {
    config: PathBuf,
    workload: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    operator: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    architecture: Option<frugal_models::operator::Architecture>,
    /// Time steps per rollout, or optimizer steps per training run.
    steps: u64,
    repeats: u32,
    /// What `throughput` counts per second.
    throughput_unit: &'static str,
    budget_bytes: u64,
    budget_source: &'static str,
    rows: Vec<Row>,
    error: Vec<ErrorCurve>,
    csv: PathBuf,
    plot: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_plot: Option<PathBuf>,
}

fn operator(config: &OperatorConfig, args: &BenchArgs, out: &mut dyn Write) -> Result<()> {
    if args.repeats == 0 {
        return Err(UserError("--repeats must be at least 1".into()).into());
    }
    // A second call in one process finds the pool started: that is fine.
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(config.compute.threads as usize)
        .build_global();
    let mut base_t = config.trajectories();
    if let Some(steps) = args.steps {
        if steps == 0 {
            return Err(UserError("--steps must be at least 1".into()).into());
        }
        base_t.steps = steps;
    }
    let index = args.operator.unwrap_or(0);
    if index >= base_t.operators {
        return Err(UserError(format!(
            "--operator {}: the configuration draws {} operators (0 to {})",
            index,
            base_t.operators,
            base_t.operators - 1
        ))
        .into());
    }
    let base = RowConfig {
        precision: config.compute.precision,
        batch: config.compute.batch_size,
        device: config.compute.device,
    };
    let configs = rows(&base, &args.matrix)?;
    let dir = args
        .out
        .clone()
        .unwrap_or_else(|| config.output_dir.join("bench"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;

    let mut devices: Vec<(DeviceChoice, std::result::Result<Picked, String>)> = Vec::new();
    let mut picked = |choice: DeviceChoice| -> std::result::Result<Picked, String> {
        if let Some((_, p)) = devices.iter().find(|(c, _)| *c == choice) {
            return p.clone();
        }
        let p = frugal_train::device::pick(choice).map_err(|e| e.to_string());
        devices.push((choice, p.clone()));
        p
    };
    let (budget, budget_source) = budget(args, &configs, &mut picked)?;

    // The f32 rollouts the reduced precisions are compared with, per device, of as many
    // realizations as the largest batch.
    let widest = configs.iter().map(|r| r.batch).max().unwrap_or(1);
    let mut references: Vec<(String, Vec<Rollout>)> = Vec::new();
    let mut errors: Vec<ErrorCurve> = Vec::new();
    let mut report_rows: Vec<Row> = Vec::new();
    let bar = crate::progress::bar(
        configs.len() as u64 * u64::from(args.repeats + 1),
        "benchmarking",
        false,
    );
    for rc in &configs {
        let t = Trajectories {
            precision: rc.precision,
            batch: rc.batch,
            ..base_t.clone()
        };
        let mut row = Row::new(rc.clone());
        let p = match picked(rc.device) {
            Ok(p) => p,
            Err(e) => {
                row.status = "unsupported".into();
                row.note = Some(e);
                report_rows.push(row);
                bar.inc(u64::from(args.repeats + 1));
                continue;
            }
        };
        row.device_name = Some(p.name.clone());
        if let Err(e) = p.check_precision(rc.precision) {
            row.status = "unsupported".into();
            row.note = Some(e.to_string());
            report_rows.push(row);
            bar.inc(u64::from(args.repeats + 1));
            continue;
        }
        let result = frugal_train::device::catch_backend_panics("a rollout", &p, || {
            let memory = t.plan_memory(index, rc.batch, &p.device);
            row.predicted_peak_bytes = memory.predicted_peak;
            row.memory = Some(memory);
            if row.predicted_peak_bytes.is_some_and(|b| b > budget) {
                row.status = "over budget".into();
                row.note = Some(format!(
                    "predicted {} > budget {}",
                    Bytes(row.predicted_peak_bytes.unwrap_or(0)),
                    Bytes(budget)
                ));
                return Ok(None);
            }
            // Warm-up: kernels compiled, pools and caches filled.
            drop(t.timed(index, rc.batch, &p.device));
            bar.inc(1);
            let mut runs = Vec::new();
            for _ in 0..args.repeats {
                runs.push(t.timed(index, rc.batch, &p.device));
                bar.inc(1);
            }
            Ok(Some(runs))
        });
        let runs = match result {
            Ok(Some(runs)) => runs,
            Ok(None) => {
                report_rows.push(row);
                bar.inc(u64::from(args.repeats + 1));
                continue;
            }
            Err(e) => {
                row.failed(e.to_string());
                report_rows.push(row);
                continue;
            }
        };
        row.set_times(&runs.iter().map(|r| r.seconds).collect::<Vec<_>>());
        let mean = row.time_mean_s.unwrap_or(0.0);
        row.peak_bytes = runs.iter().filter_map(|r| r.peak_bytes).max();
        row.throughput = Some(f64::from(rc.batch) * f64::from(t.steps) / mean.max(1e-12));
        let diverged = runs[0]
            .trajectories
            .iter()
            .filter(|r| r.diverged.is_some())
            .count();
        if diverged > 0 {
            row.note = Some(format!(
                "{diverged} of {} rollouts diverged",
                runs[0].trajectories.len()
            ));
        }
        // Each precision's error comes from its widest batch on each device: the most
        // realizations to average over.
        if rc.precision != Precision::F32
            && !errors.iter().any(|e| {
                e.precision == rc.precision && e.device == p.name && e.realizations >= rc.batch
            })
        {
            let reference = match references.iter().position(|(d, _)| *d == p.name) {
                Some(i) => &references[i].1,
                None => {
                    let f32_t = Trajectories {
                        precision: Precision::F32,
                        ..t.clone()
                    };
                    let r = frugal_train::device::catch_backend_panics(
                        "the f32 reference rollout",
                        &p,
                        || Ok(f32_t.timed(index, widest, &p.device).trajectories),
                    )?;
                    references.push((p.name.clone(), r));
                    &references.last().expect("pushed").1
                }
            };
            let curves: Vec<Vec<f64>> = reference
                .iter()
                .zip(&runs[0].trajectories)
                .map(|(a, b)| t.error_per_step(&a.states, &b.states))
                .collect();
            let n = curves.len().max(1) as f64;
            let every = t.record_every.max(1);
            errors.retain(|e| !(e.precision == rc.precision && e.device == p.name));
            errors.push(ErrorCurve {
                precision: rc.precision,
                device: p.name.clone(),
                realizations: curves.len() as u32,
                steps: (0..=t.steps)
                    .filter(|s| s % every == 0 || *s == t.steps)
                    .collect(),
                nrmse: (0..t.recorded() as usize)
                    .map(|i| curves.iter().map(|c| c[i]).sum::<f64>() / n)
                    .collect(),
            });
        }
        report_rows.push(row);
    }
    bar.finish_and_clear();
    let report = Report {
        config: args.config.file.clone(),
        workload: "operator",
        operator: Some(index),
        architecture: Some(base_t.space.draw(base_t.seed, index)),
        steps: u64::from(base_t.steps),
        repeats: args.repeats,
        throughput_unit: "steps/s",
        budget_bytes: budget,
        budget_source,
        rows: report_rows,
        error: errors,
        csv: dir.join("bench.csv"),
        plot: dir.join("bench.png"),
        error_plot: None,
    };
    finish(report, &dir, args.json, out)
}

/// Speedups against the first row, then bench.csv, bench.png (and bench-error.png),
/// bench.json, and the table or the JSON on `out`.
fn finish(mut report: Report, dir: &Path, json: bool, out: &mut dyn Write) -> Result<()> {
    let first = report.rows.first().and_then(|r| r.throughput);
    for r in &mut report.rows {
        r.speedup = r.throughput.zip(first).map(|(t, f)| t / f);
    }
    write_csv(&report.csv, &report.rows)?;
    let labels: Vec<String> = report.rows.iter().map(|r| r.config.label()).collect();
    crate::plot::bench_rows(
        &labels,
        &report.rows.iter().map(|r| r.throughput).collect::<Vec<_>>(),
        &report.rows.iter().map(|r| r.peak_bytes).collect::<Vec<_>>(),
        &report
            .rows
            .iter()
            .map(|r| r.predicted_peak_bytes)
            .collect::<Vec<_>>(),
        &report.plot,
    )
    .context("drawing the benchmark plot")?;
    report.error_plot = (!report.error.is_empty())
        .then(|| -> Result<PathBuf> {
            let path = dir.join("bench-error.png");
            let series: Vec<(String, Vec<(f64, f64)>)> = report
                .error
                .iter()
                .map(|e| {
                    (
                        format!("{} on {}", e.precision.name(), e.device),
                        e.steps
                            .iter()
                            .zip(&e.nrmse)
                            .skip(1) // step 0 differs by the initial rounding only
                            .map(|(s, v)| (f64::from(*s), *v))
                            .collect(),
                    )
                })
                .collect();
            crate::plot::precision_error(&series, &path)?;
            Ok(path)
        })
        .transpose()
        .context("drawing the precision error plot")?;
    frugal_store::atomic_write(
        &dir.join("bench.json"),
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    if json {
        return super::print_json(out, &report);
    }
    print_table(&report, out)
}

/// The budget rows are planned against: `--budget`, else the first GPU's memory when a
/// row runs on one, else this machine's.
fn budget(
    args: &BenchArgs,
    configs: &[RowConfig],
    picked: &mut impl FnMut(DeviceChoice) -> std::result::Result<Picked, String>,
) -> Result<(u64, &'static str)> {
    if let Some(b) = args.budget {
        return Ok((b, "--budget"));
    }
    let on_gpu = configs
        .iter()
        .any(|r| picked(r.device).is_ok_and(|p| p.gpu && !p.software));
    Ok(match on_gpu.then(super::plan::card_memory).flatten() {
        Some(b) => (b, "card"),
        None => (super::plan::machine_budget()?, "machine"),
    })
}

/// Optimizer steps per timed training run unless `--steps` says.
const TRAIN_STEPS: u32 = 20;

/// Training steps of a classifier or particle configuration over the matrix: each row in
/// a `frugal bench --row` process of its own ([`training_row`]), so that what one row's
/// run left resident is not the next row's peak.
fn training<T: Task>(
    setup: Setup<T>,
    workload: &'static str,
    args: &BenchArgs,
    out: &mut dyn Write,
) -> Result<()> {
    if args.repeats == 0 {
        return Err(UserError("--repeats must be at least 1".into()).into());
    }
    let steps = args.steps.unwrap_or(TRAIN_STEPS);
    if steps == 0 {
        return Err(UserError("--steps must be at least 1".into()).into());
    }
    if let Some(row) = &args.row {
        let rc: RowConfig = serde_json::from_str(row).context("reading --row")?;
        return training_row(setup, rc, steps, args, out);
    }
    let base = RowConfig {
        precision: setup.spec.precision,
        batch: setup.spec.batch_size as u32,
        device: setup.compute.device,
    };
    let configs = rows(&base, &args.matrix)?;
    let dir = args.out.clone().unwrap_or_else(|| setup.dir.join("bench"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut picked = |choice| frugal_train::device::pick(choice).map_err(|e| e.to_string());
    let (budget, budget_source) = budget(args, &configs, &mut picked)?;
    let exe = std::env::current_exe().context("finding the frugal executable")?;
    let bar = crate::progress::bar(configs.len() as u64, "benchmarking", false);
    let mut report_rows = Vec::new();
    for rc in &configs {
        let mut cmd = std::process::Command::new(&exe);
        cmd.arg("bench").arg(&args.config.file);
        for s in &args.config.set {
            cmd.arg("--set").arg(s);
        }
        let output = cmd
            .args(["--steps", &steps.to_string()])
            .args(["--repeats", &args.repeats.to_string()])
            .args(["--budget", &budget.to_string()])
            .arg("--row")
            .arg(serde_json::to_string(rc)?)
            .stdin(std::process::Stdio::null())
            .output()
            .context("starting a benchmark process")?;
        let row = if output.status.success() {
            serde_json::from_slice(&output.stdout).context("reading a benchmark process's row")?
        } else {
            // A device that aborts the process on running out of memory ends here.
            let mut row = Row::new(rc.clone());
            let stderr = String::from_utf8_lossy(&output.stderr);
            row.failed(
                stderr
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .map_or_else(|| format!("exited with {}", output.status), str::to_owned),
            );
            row
        };
        report_rows.push(row);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let report = Report {
        config: args.config.file.clone(),
        workload,
        operator: None,
        architecture: None,
        steps: u64::from(steps),
        repeats: args.repeats,
        throughput_unit: "samples/s",
        budget_bytes: budget,
        budget_source,
        rows: report_rows,
        error: Vec::new(),
        csv: dir.join("bench.csv"),
        plot: dir.join("bench.png"),
        error_plot: None,
    };
    finish(report, &dir, args.json, out)
}

/// One training row, in this process: the planner's peak (the host's, or the device's
/// from probe runs on a GPU), refused over `--budget`; else a warm-up run and `--repeats`
/// timed runs of `steps` optimizer steps from a fresh model, without evaluation or
/// checkpoints. Time is the loop's training time; peak memory the process's resident peak
/// over all runs (the planner predicts the whole process), or the device allocator's on a
/// GPU. Prints the row as JSON.
fn training_row<T: Task>(
    mut setup: Setup<T>,
    rc: RowConfig,
    steps: u32,
    args: &BenchArgs,
    out: &mut dyn Write,
) -> Result<()> {
    setup.choose(Fit {
        precision: rc.precision,
        batch_size: rc.batch as usize,
        ..Fit::of(&setup.spec)
    });
    setup.compute.device = rc.device;
    let mut row = Row::new(rc.clone());
    let unsupported = |mut row: Row, why: String, out: &mut dyn Write| {
        row.status = "unsupported".into();
        row.note = Some(why);
        super::print_json(out, &row)
    };
    let p = match frugal_train::device::pick(rc.device) {
        Ok(p) => p,
        Err(e) => return unsupported(row, e.to_string(), out),
    };
    row.device_name = Some(p.name.clone());
    if let Err(e) = p.check_precision(rc.precision) {
        return unsupported(row, e.to_string(), out);
    }
    // A probe that runs out of device memory is caught inside `device_plan`.
    let predicted: Result<u64> = if p.gpu {
        super::plan::device_plan(&setup, &p).map(|d| d.predicted_peak_device_bytes)
    } else {
        super::plan::planner(&setup).and_then(|mut planner| {
            Ok(planner.configured().map(|plan| plan.predicted_peak_bytes)?)
        })
    };
    let predicted = match predicted {
        Ok(b) => b,
        Err(e) => {
            row.failed(e.to_string());
            return super::print_json(out, &row);
        }
    };
    row.predicted_peak_bytes = Some(predicted);
    let budget = args.budget.unwrap_or(u64::MAX);
    if predicted > budget {
        row.status = "over budget".into();
        row.note = Some(format!(
            "predicted {} > budget {}",
            Bytes(predicted),
            Bytes(budget)
        ));
        return super::print_json(out, &row);
    }
    setup.spec.steps = Some(u64::from(steps));
    setup.spec.stop_after = None;
    setup.spec.log_every = u64::from(steps);
    setup.spec.eval_every = 0;
    setup.spec.checkpoint_every = 0;
    let (mut times, mut peak, mut samples) = (Vec::new(), 0u64, 0u64);
    for run in 0..=args.repeats {
        let scratch = setup
            .dir
            .join(format!(".bench-{}-{run}", std::process::id()));
        if p.gpu {
            p.device.memory_cleanup();
        }
        let window = frugal_hw::MemoryMeter::new().window()?;
        let result = frugal_train::device::catch_backend_panics("a training run", &p, || {
            frugal_train::trainer::train(
                &setup.task,
                &setup.data,
                &setup.spec,
                &p.device,
                &scratch,
                false,
                &mut |_| {},
            )
        });
        let rss = window.finish().peak_rss_bytes;
        let _ = std::fs::remove_dir_all(&scratch);
        let summary = match result {
            Ok(s) => s,
            Err(e) => {
                row.failed(e.to_string());
                return super::print_json(out, &row);
            }
        };
        peak = peak.max(if p.gpu {
            summary.peak_device_bytes.unwrap_or(0)
        } else {
            rss
        });
        // The first run is the warm-up: kernels compiled, pools and caches filled.
        if run > 0 {
            times.push(summary.train_seconds);
            samples = summary.samples;
        }
    }
    row.set_times(&times);
    row.peak_bytes = Some(peak);
    row.throughput = row.time_mean_s.map(|t| samples as f64 / t.max(1e-12));
    super::print_json(out, &row)
}

fn fmt_bytes(b: Option<u64>) -> String {
    b.map_or("-".into(), |b| Bytes(b).to_string())
}

fn print_table(report: &Report, out: &mut dyn Write) -> Result<()> {
    let budget = format!(
        "budget {} ({})",
        Bytes(report.budget_bytes),
        report.budget_source
    );
    match (&report.architecture, report.operator) {
        (Some(a), Some(index)) => writeln!(
            out,
            "operator {index}: {} layers, {} channels, {}×{} kernels, {:?} norm, {:?}, dt {:.4}; {} steps, {} timed runs after a warm-up; {budget}",
            a.layers,
            a.channels,
            a.kernel,
            a.kernel,
            a.norm,
            a.activation,
            a.dt,
            report.steps,
            report.repeats,
        )?,
        _ => writeln!(
            out,
            "{}: {} optimizer steps per run, {} timed runs after a warm-up, each configuration in a process of its own; {budget}",
            report.workload, report.steps, report.repeats,
        )?,
    }
    writeln!(out)?;
    writeln!(
        out,
        "| configuration | time (s) | peak memory | predicted | throughput ({}) | speedup | status |",
        report.throughput_unit
    )?;
    writeln!(out, "|---|---|---|---|---|---|---|")?;
    for r in &report.rows {
        let time = match (r.time_mean_s, r.time_sd_s) {
            (Some(m), Some(s)) => format!("{m:.3} ± {s:.3}"),
            _ => "-".into(),
        };
        let status = match &r.note {
            Some(n) if r.status != "ok" => format!("{} ({n})", r.status),
            Some(n) => format!("ok ({n})"),
            None => r.status.clone(),
        };
        writeln!(
            out,
            "| {} | {time} | {} | {} | {} | {} | {status} |",
            r.config.label(),
            fmt_bytes(r.peak_bytes),
            fmt_bytes(r.predicted_peak_bytes),
            r.throughput.map_or("-".into(), |t| format!("{t:.1}")),
            r.speedup.map_or("-".into(), |s| format!("{s:.2}×")),
        )?;
    }
    if let Some(m) = report
        .rows
        .iter()
        .find_map(|r| r.memory.as_ref().map(|m| (r, m)))
    {
        let (r, m) = m;
        writeln!(out)?;
        writeln!(
            out,
            "memory of `{}`: inputs {}, weights {}, activations per layer [{}], trajectories {}, workspace {}",
            r.config.label(),
            Bytes(m.inputs),
            Bytes(m.weights),
            m.activations
                .iter()
                .map(|b| Bytes(*b).to_string())
                .collect::<Vec<_>>()
                .join(", "),
            Bytes(m.trajectories),
            fmt_bytes(m.workspace)
        )?;
    }
    for e in &report.error {
        let last = e.nrmse.last().copied().unwrap_or(0.0);
        let worst = e.nrmse.iter().copied().fold(0.0, f64::max);
        writeln!(
            out,
            "{} against f32 on {}: normalized RMS error {:.2e} at step {} (largest {:.2e}), over {} realizations",
            e.precision.name(),
            e.device,
            last,
            e.steps.last().copied().unwrap_or(0),
            worst,
            e.realizations
        )?;
    }
    writeln!(
        out,
        "wrote {}, {}{}",
        report.csv.display(),
        report.plot.display(),
        report
            .error_plot
            .as_ref()
            .map(|p| format!(", {}", p.display()))
            .unwrap_or_default()
    )?;
    Ok(())
}

fn write_csv(path: &Path, rows: &[Row]) -> Result<()> {
    let mut text = String::from(
        "precision,batch,device,time_mean_s,time_sd_s,peak_bytes,predicted_peak_bytes,throughput,speedup,status\n",
    );
    let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v}"));
    let optu = |v: Option<u64>| v.map_or(String::new(), |v| v.to_string());
    for r in rows {
        let device = serde_json::to_value(r.config.device)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        text.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{}\n",
            r.config.precision.name(),
            r.config.batch,
            device,
            opt(r.time_mean_s),
            opt(r.time_sd_s),
            optu(r.peak_bytes),
            optu(r.predicted_peak_bytes),
            opt(r.throughput),
            opt(r.speedup),
            r.status
        ));
    }
    frugal_store::atomic_write(path, text.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_matrix_is_every_combination_first_key_slowest() {
        let base = RowConfig {
            precision: Precision::F32,
            batch: 10,
            device: DeviceChoice::Cpu,
        };
        let m = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let r = rows(&base, &m(&["precision=f32,bf16", "batch=1,2,4"])).unwrap();
        let got: Vec<(&str, u32)> = r.iter().map(|r| (r.precision.name(), r.batch)).collect();
        assert_eq!(
            got,
            [
                ("f32", 1),
                ("f32", 2),
                ("f32", 4),
                ("bf16", 1),
                ("bf16", 2),
                ("bf16", 4)
            ]
        );
        assert_eq!(rows(&base, &[]).unwrap(), std::slice::from_ref(&base));
        for bad in [
            "precision",
            "speed=1",
            "batch=0",
            "batch=two",
            "precision=f8",
            "device=tpu",
            "batch=1,,2",
        ] {
            assert!(rows(&base, &m(&[bad])).is_err(), "{bad}");
        }
        assert!(rows(&base, &m(&["batch=1", "batch=2"])).is_err());
    }
}
