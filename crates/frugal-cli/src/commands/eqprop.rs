//! `frugal eqprop`: the EqProp workload's two studies on a configuration — its gradient
//! against a reference over a sweep of β, and a training step's memory against the number
//! of iterations, EqProp against backpropagation through the iterations.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use frugal_hw::units::Bytes;
use frugal_models::eqprop::{EqPropClassifier, GradCheck, GradCheckSettings, Method, StepCost};
use frugal_train::plan::first_batch;
use serde::Serialize;

use super::setup::{self, Setup};
use super::{UserError, print_json};
use crate::args::{ConfigArgs, EqpropCommand, EqpropMemoryArgs, GradcheckArgs};
use crate::config::AnyConfig;
use crate::plot;

/// Runs an `eqprop` subcommand.
pub(crate) fn run(command: EqpropCommand, out: &mut dyn Write) -> Result<()> {
    match command {
        EqpropCommand::Gradcheck(args) => gradcheck(&args, out),
        EqpropCommand::Memory(args) => memory(&args, out),
    }
}

/// The configuration's task and data, refusing any other workload.
fn load(config: &ConfigArgs) -> Result<(Setup<EqPropClassifier>, u64)> {
    match setup::load(config)? {
        AnyConfig::Eqprop(c) => Ok((setup::eqprop(&c)?, c.seed)),
        other => Err(UserError(format!(
            "{}: `frugal eqprop` studies `eqprop` configurations; this one is `{}`",
            config.file.display(),
            other.workload().name()
        ))
        .into()),
    }
}

fn gradcheck(args: &GradcheckArgs, out: &mut dyn Write) -> Result<()> {
    if let Some(b) = args.betas.iter().find(|b| !(**b > 0.0 && b.is_finite())) {
        return Err(UserError(format!("--betas: {b} is not a positive number")).into());
    }
    let tol = args.tol.unwrap_or(match args.precision {
        burn::tensor::FloatDType::F64 => 1e-10,
        _ => 1e-6,
    });
    if !(tol >= 0.0 && tol.is_finite()) {
        return Err(UserError(format!("--tol: {tol} is not a non-negative number")).into());
    }
    let (setup, seed) = load(&args.config)?;
    let batch = first_batch(&setup.data.train, args.batch as usize)
        .with_context(|| format!("reading {}", setup.data.train.dir().display()))?;
    let settings = GradCheckSettings {
        betas: args.betas.clone(),
        reference: args.reference,
        dtype: args.precision,
        tol,
        max_iters: args.max_iters,
    };
    let check = setup
        .task
        .gradcheck(&batch, seed, &settings)
        .map_err(|e| UserError(e.to_string()))?;
    let path = args
        .plot
        .clone()
        .unwrap_or_else(|| setup.dir.join("gradcheck.png"));
    // The results first: a plot that cannot be written must not lose a long sweep.
    if args.json {
        print_json(out, &check)?;
    } else {
        report_gradcheck(&check, batch.samples, args, &path, out)?;
    }
    // A diverged point (NaN) is left out of the plot rather than drawn as a perfect match.
    let series = |f: fn(&frugal_models::eqprop::SweepPoint) -> f64| -> Vec<(f64, f64)> {
        check
            .sweep
            .iter()
            .map(|p| (p.beta.log10(), f(p)))
            .filter(|(_, v)| v.is_finite())
            .map(|(b, v)| (b, v.max(1e-16)))
            .collect()
    };
    plot::gradcheck(
        check.reference.describe(),
        &series(|p| 1.0 - p.cosine),
        &series(|p| p.relative_error),
        &path,
    )
    .with_context(|| format!("drawing {}", path.display()))
}

fn report_gradcheck(
    check: &GradCheck,
    samples: usize,
    args: &GradcheckArgs,
    path: &Path,
    out: &mut dyn Write,
) -> Result<()> {
    let precision = match args.precision {
        burn::tensor::FloatDType::F64 => "f64",
        _ => "f32",
    };
    let r = &check.reference_iterations;
    writeln!(
        out,
        "EqProp's gradient against {} on {samples} samples ({precision}, CPU); mean loss at the free equilibrium {:.4}",
        check.reference.describe(),
        check.loss
    )?;
    writeln!(
        out,
        "reference: {} iterations, residual {:.1e}{}",
        r.iters,
        r.residual,
        if r.converged { "" } else { " (not converged)" }
    )?;
    writeln!(
        out,
        "{:>8}  {:>14}  {:>14}  {:>22}",
        "β", "cosine", "relative error", "iterations free/+β/−β"
    )?;
    for p in &check.sweep {
        let [f, plus, minus] = p.phases;
        let mark = |s: &frugal_models::eqprop::IterStats| if s.converged { "" } else { "*" };
        writeln!(
            out,
            "{:>8}  {:>14.10}  {:>14.3e}  {:>22}",
            p.beta,
            p.cosine,
            p.relative_error,
            format!(
                "{}{}/{}{}/{}{}",
                f.iters,
                mark(&f),
                plus.iters,
                mark(&plus),
                minus.iters,
                mark(&minus)
            )
        )?;
    }
    if check
        .sweep
        .iter()
        .any(|p| p.phases.iter().any(|s| !s.converged))
    {
        writeln!(
            out,
            "* stopped at --max-iters unconverged: raise it or --tol"
        )?;
    }
    if let Some(last) = check.sweep.last() {
        writeln!(out, "per tensor at β = {}:", last.beta)?;
        for t in &last.tensors {
            writeln!(
                out,
                "  {:<14} cosine {:.10}  relative error {:.3e}",
                t.name, t.cosine, t.relative_error
            )?;
        }
    }
    writeln!(out, "plot: {}", path.display())?;
    Ok(())
}

/// One measured step of the memory study.
#[derive(Debug, Serialize)]
struct MemoryRow {
    method: Method,
    iters: u32,
    #[serde(flatten)]
    cost: StepCost,
}

/// The memory study's result.
#[derive(Debug, Serialize)]
struct MemoryReport {
    batch: usize,
    rows: Vec<MemoryRow>,
    /// Per BPTT variant, the fewest iterations measured at which EqProp's step peak is
    /// below that variant's (`null`: at none).
    crossover: std::collections::BTreeMap<&'static str, Option<u32>>,
    /// EqProp's largest step peak over its smallest, minus one, across the iterations.
    eqprop_spread: f64,
}

/// The step peak of `m` at `k` iterations among `rows` (0 where not measured).
fn peak_of(rows: &[MemoryRow], m: Method, k: u32) -> u64 {
    rows.iter()
        .find(|r| r.method == m && r.iters == k)
        .map_or(0, |r| r.cost.peak_bytes)
}

const METHODS: [Method; 3] = [Method::Eqprop, Method::Bptt, Method::BpttCheckpointed];

fn memory(args: &EqpropMemoryArgs, out: &mut dyn Write) -> Result<()> {
    if args.iters.contains(&0) {
        return Err(UserError("--iters: every count must be at least 1".into()).into());
    }
    if !frugal_train::memory::counting() {
        return Err(anyhow::anyhow!(
            "this build does not count its allocations; the memory study needs it"
        ));
    }
    let (setup, seed) = load(&args.config)?;
    let n = args.batch.map_or(setup.spec.batch_size, |b| b as usize);
    let batch = first_batch(&setup.data.train, n)
        .with_context(|| format!("reading {}", setup.data.train.dir().display()))?;
    let task = &setup.task;
    let fail = |e: frugal_train::TrainError| UserError(e.to_string());
    // The first step of a process allocates what stays (thread pools, the matrix
    // kernels' packing buffers): a warm-up keeps it out of the first row.
    task.step_cost(&batch, seed, Method::Bptt, 1)
        .map_err(fail)?;
    let mut iters = args.iters.clone();
    iters.sort_unstable();
    iters.dedup();
    let bar = crate::progress::bar((iters.len() * METHODS.len()) as u64, "measuring", false);
    let mut rows = Vec::new();
    for &k in &iters {
        for method in METHODS {
            bar.set_message(format!("{} · {k} iterations", method.name()));
            let cost = task.step_cost(&batch, seed, method, k).map_err(fail)?;
            rows.push(MemoryRow {
                method,
                iters: k,
                cost,
            });
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let peak = |m: Method, k: u32| peak_of(&rows, m, k);
    let crossover = [Method::Bptt, Method::BpttCheckpointed]
        .into_iter()
        .map(|m| {
            let at = iters
                .iter()
                .copied()
                .find(|&k| peak(Method::Eqprop, k) < peak(m, k));
            (m.name(), at)
        })
        .collect();
    let eq: Vec<u64> = iters.iter().map(|&k| peak(Method::Eqprop, k)).collect();
    let (lo, hi) = (
        eq.iter().copied().min().unwrap_or(0),
        eq.iter().copied().max().unwrap_or(0),
    );
    let eqprop_spread = if lo > 0 {
        hi as f64 / lo as f64 - 1.0
    } else {
        0.0
    };
    let report = MemoryReport {
        batch: batch.samples,
        rows,
        crossover,
        eqprop_spread,
    };
    let path: PathBuf = args
        .plot
        .clone()
        .unwrap_or_else(|| setup.dir.join("eqprop-memory.png"));
    if args.json {
        print_json(out, &report)?;
    } else {
        print_memory(&report, &iters, &path, out)?;
    }
    let mib = |m: Method| -> Vec<(f64, f64)> {
        iters
            .iter()
            .map(|&k| {
                let bytes = peak_of(&report.rows, m, k);
                (f64::from(k), bytes as f64 / f64::from(1u32 << 20))
            })
            .collect()
    };
    plot::eqprop_memory(
        &mib(Method::Eqprop),
        &mib(Method::Bptt),
        &mib(Method::BpttCheckpointed),
        &path,
    )
    .with_context(|| format!("drawing {}", path.display()))
}

fn print_memory(
    report: &MemoryReport,
    iters: &[u32],
    path: &Path,
    out: &mut dyn Write,
) -> Result<()> {
    writeln!(
        out,
        "a training step's peak heap above the weights and data, batch {} (CPU, f32)",
        report.batch
    )?;
    writeln!(
        out,
        "{:>6}  {:>20}  {:>20}  {:>20}",
        "iters", "eqprop", "bptt", "bptt checkpointed"
    )?;
    for &k in iters {
        let cell = |m: Method| {
            report
                .rows
                .iter()
                .find(|r| r.method == m && r.iters == k)
                .map(|r| format!("{} {:>6.2} s", Bytes(r.cost.peak_bytes), r.cost.seconds))
                .unwrap_or_default()
        };
        writeln!(
            out,
            "{k:>6}  {:>20}  {:>20}  {:>20}",
            cell(Method::Eqprop),
            cell(Method::Bptt),
            cell(Method::BpttCheckpointed)
        )?;
    }
    writeln!(
        out,
        "EqProp's peak varies {:.1} % across {}–{} iterations",
        report.eqprop_spread * 100.0,
        iters.first().copied().unwrap_or(0),
        iters.last().copied().unwrap_or(0)
    )?;
    for (name, at) in &report.crossover {
        match at {
            Some(k) => writeln!(
                out,
                "EqProp first holds less than {name} at {k} iterations (the fewest measured where it does)"
            )?,
            None => writeln!(out, "EqProp holds more than {name} at every count measured")?,
        }
    }
    writeln!(out, "plot: {}", path.display())?;
    Ok(())
}
