//! `frugal bench CONFIG --matrix KEY=V1,V2 …`: runs a workload once per combination of
//! the matrix's values (a warm-up, then `--repeats` timed runs) and reports each
//! configuration's time (mean ± sd), peak memory beside the planner's prediction,
//! throughput, speedup against the first row and status; a configuration the planner
//! puts over the budget is not run, one that runs out of memory is a row, not a crash.
//! With reduced precisions, each one's rollout error against f32 is reported per step.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use frugal_hw::units::Bytes;
use frugal_models::operator::{Rollout, Trajectories};
use frugal_train::Precision;
use frugal_train::device::{DeviceChoice, Picked};
use serde::Serialize;

use super::UserError;
use crate::args::WorkloadBenchArgs as BenchArgs;
use crate::config::schema::OperatorConfig;
use crate::config::{AnyConfig, Source};

pub(crate) fn run(args: BenchArgs, out: &mut dyn Write) -> Result<()> {
    let source = Source::read(&args.config.file, &args.config.set)?;
    match AnyConfig::from_document(&source.document()?)? {
        AnyConfig::Operator(c) => operator(&c, &args, out),
        other => Err(UserError(format!(
            "{}: `frugal bench` runs `operator` configurations (rollouts); this one is `{}`: time its training steps with `frugal plan --measure` and `frugal train --json`",
            args.config.file.display(),
            other.workload().name()
        ))
        .into()),
    }
}

/// One row's settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
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
#[derive(Debug, Clone, Serialize)]
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
    /// Realization time steps per second.
    throughput: Option<f64>,
    /// Throughput over the first row's.
    speedup: Option<f64>,
    /// `ok`, `over budget`, `OOM`, `unsupported` or `failed`.
    status: String,
    /// Why a row did not run, or failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
    /// The planner's breakdown of the rollout's memory.
    #[serde(skip_serializing_if = "Option::is_none")]
    memory: Option<frugal_models::operator::RolloutMemory>,
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
    operator: u64,
    architecture: frugal_models::operator::Architecture,
    steps: u32,
    repeats: u32,
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
    if args.operator >= base_t.operators {
        return Err(UserError(format!(
            "--operator {}: the configuration draws {} operators (0 to {})",
            args.operator,
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
    let (budget, budget_source) = match args.budget {
        Some(b) => (b, "--budget"),
        None => {
            let on_gpu = configs
                .iter()
                .any(|r| picked(r.device).is_ok_and(|p| p.gpu && !p.software));
            let card = on_gpu.then(super::plan::card_memory).flatten();
            match card {
                Some(b) => (b, "card"),
                None => (super::plan::machine_budget()?, "machine"),
            }
        }
    };

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
        let mut row = Row {
            config: rc.clone(),
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
        };
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
            let memory = t.plan_memory(args.operator, rc.batch, &p.device);
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
            drop(t.timed(args.operator, rc.batch, &p.device));
            bar.inc(1);
            let mut runs = Vec::new();
            for _ in 0..args.repeats {
                runs.push(t.timed(args.operator, rc.batch, &p.device));
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
                let text = e.to_string();
                let lower = text.to_lowercase();
                row.status = if lower.contains("out of memory") || lower.contains("outofmemory") {
                    "OOM".into()
                } else {
                    "failed".into()
                };
                row.note = Some(text);
                report_rows.push(row);
                continue;
            }
        };
        let times: Vec<f64> = runs.iter().map(|r| r.seconds).collect();
        let mean = times.iter().sum::<f64>() / times.len() as f64;
        let sd = if times.len() > 1 {
            (times.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (times.len() - 1) as f64)
                .sqrt()
        } else {
            0.0
        };
        row.time_mean_s = Some(mean);
        row.time_sd_s = Some(sd);
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
                        || Ok(f32_t.timed(args.operator, widest, &p.device).trajectories),
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
    let first = report_rows.first().and_then(|r| r.throughput);
    for r in &mut report_rows {
        r.speedup = r.throughput.zip(first).map(|(t, f)| t / f);
    }

    let csv = dir.join("bench.csv");
    write_csv(&csv, &report_rows)?;
    let plot = dir.join("bench.png");
    let labels: Vec<String> = report_rows.iter().map(|r| r.config.label()).collect();
    crate::plot::bench_rows(
        &labels,
        &report_rows.iter().map(|r| r.throughput).collect::<Vec<_>>(),
        &report_rows.iter().map(|r| r.peak_bytes).collect::<Vec<_>>(),
        &report_rows
            .iter()
            .map(|r| r.predicted_peak_bytes)
            .collect::<Vec<_>>(),
        &plot,
    )
    .context("drawing the benchmark plot")?;
    let error_plot = (!errors.is_empty())
        .then(|| -> Result<PathBuf> {
            let path = dir.join("bench-error.png");
            let series: Vec<(String, Vec<(f64, f64)>)> = errors
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
    let report = Report {
        config: args.config.file.clone(),
        workload: "operator",
        operator: args.operator,
        architecture: base_t.space.draw(base_t.seed, args.operator),
        steps: base_t.steps,
        repeats: args.repeats,
        budget_bytes: budget,
        budget_source,
        rows: report_rows,
        error: errors,
        csv,
        plot,
        error_plot,
    };
    frugal_store::atomic_write(
        &dir.join("bench.json"),
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    if args.json {
        return super::print_json(out, &report);
    }
    print_table(&report, out)
}

fn fmt_bytes(b: Option<u64>) -> String {
    b.map_or("-".into(), |b| Bytes(b).to_string())
}

fn print_table(report: &Report, out: &mut dyn Write) -> Result<()> {
    let a = &report.architecture;
    writeln!(
        out,
        "operator {}: {} layers, {} channels, {}×{} kernels, {:?} norm, {:?}, dt {:.4}; {} steps, {} timed runs after a warm-up; budget {} ({})",
        report.operator,
        a.layers,
        a.channels,
        a.kernel,
        a.kernel,
        a.norm,
        a.activation,
        a.dt,
        report.steps,
        report.repeats,
        Bytes(report.budget_bytes),
        report.budget_source
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "| configuration | time (s) | peak memory | predicted | throughput (steps/s) | speedup | status |"
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
