//! `frugal train` on a prepared configuration (`setup`): trains within the memory budget
//! when asked, and writes metrics, plots, the final model and a summary into the output
//! directory.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use frugal_train::Task;
use frugal_train::device::{Picked, catch_backend_panics, pick};
use frugal_train::metrics::Split;
use frugal_train::trainer::{Event, Summary, TrainData, TrainSpec, train};
use serde::Serialize;

use super::setup::Setup;
use crate::args::TrainArgs;
use crate::{plot, progress};

/// The summary printed at the end and saved as `summary.json`.
#[derive(Debug, Serialize)]
struct Report<'a> {
    #[serde(flatten)]
    summary: &'a Summary,
    device: String,
    precision: &'static str,
    batch_size: usize,
    grad_accum: usize,
    checkpoint_segments: Option<usize>,
    /// The training's peak resident memory (preparing the data, before it, not included).
    peak_rss_bytes: u64,
    /// The most heap bytes the training held at once (the counting allocator's mark).
    peak_heap_bytes: u64,
    output_dir: PathBuf,
}

/// Trains a prepared configuration, within the memory budget when asked.
pub(crate) fn train_setup<T: Task>(
    mut setup: Setup<T>,
    args: &TrainArgs,
    out: &mut dyn Write,
) -> Result<()> {
    setup.spec.stop_after = args.run.stop_after;
    if args.max_memory.is_some() || args.auto_fit {
        super::plan::guard(&mut setup, args.max_memory, args.auto_fit)?;
    }
    run_loop(
        &setup.task,
        &setup.data,
        &setup.spec,
        setup.compute.device,
        &setup.dir,
        args.run.resume,
        args.run.json,
        &args.config.file,
        out,
    )
}

/// Trains `task` on `data` into `dir` with the progress bar, then draws the curves, saves
/// `summary.json` and reports: what every `train` command shares.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_loop<T: Task>(
    task: &T,
    data: &TrainData,
    spec: &TrainSpec,
    device: crate::config::schema::Device,
    dir: &Path,
    resume: bool,
    json: bool,
    config_file: &Path,
    out: &mut dyn Write,
) -> Result<()> {
    let precision = spec.precision;
    let segments = spec.segments;
    let picked = pick(device)?;
    picked.check_precision(precision)?;
    warn_if_software(&picked)?;

    let bar = progress::bar(0, "training", false);
    let mut observe = |event: Event<'_>| match event {
        Event::Started { total, done } => {
            bar.set_length(total);
            bar.set_position(done);
        }
        Event::Step { step } => bar.set_position(step),
        Event::Record(r) if r.split == Split::Train => {
            bar.set_message(format!("training · loss {:.4}", r.loss));
        }
        Event::Record(r) if r.split == Split::Eval => {
            if let Some(a) = r.accuracy {
                bar.println(format!(
                    "step {:>6} · epoch {} · test loss {:.4} · test accuracy {:.2} %",
                    r.step,
                    r.epoch + 1,
                    r.loss,
                    a * 100.0
                ));
            }
        }
        Event::Record(_) | Event::Checkpoint { .. } => {}
    };
    // The peaks reported are the training's own: preparing the data and planning came
    // before, in the same process.
    let window = frugal_hw::MemoryMeter::new().window();
    frugal_train::memory::reset_heap_peak();
    let summary = catch_backend_panics("training", &picked, || {
        train(task, data, spec, &picked.device, dir, resume, &mut observe)
    })?;
    let peak_rss_bytes = match window {
        Ok(w) => w.finish().peak_rss_bytes,
        Err(_) => frugal_hw::MemoryMeter::new()
            .sample()
            .map_or(0, |s| s.peak_rss_bytes),
    };
    let peak_heap_bytes = frugal_train::memory::heap_peak();
    bar.finish_and_clear();

    plot::training_curves(&summary.records, dir).context("drawing the training curves")?;

    let report = Report {
        summary: &summary,
        device: picked.name,
        precision: precision.name(),
        batch_size: spec.batch_size,
        grad_accum: spec.grad_accum,
        checkpoint_segments: segments,
        peak_rss_bytes,
        peak_heap_bytes,
        output_dir: dir.to_owned(),
    };
    frugal_store::atomic_write(
        &dir.join("summary.json"),
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    if json {
        return super::print_json(out, &report);
    }
    let pct = |v: Option<f64>| v.map_or("–".into(), |a| format!("{:.2} %", a * 100.0));
    writeln!(
        out,
        "{} {} of {} steps on {} ({}, batch {}{})",
        if summary.finished {
            "trained"
        } else {
            "stopped after"
        },
        summary.steps,
        summary.total_steps,
        report.device,
        report.precision,
        spec.batch_size,
        segments.map_or(String::new(), |s| format!(", {s} checkpoint segments"))
    )?;
    writeln!(
        out,
        "  {}test loss {}   train loss {}",
        summary.test_accuracy.map_or(String::new(), |a| format!(
            "test accuracy {}   ",
            pct(Some(a))
        )),
        summary.test_loss.map_or("–".into(), |l| format!("{l:.4}")),
        summary.train_loss.map_or("–".into(), |l| format!("{l:.4}")),
    )?;
    writeln!(
        out,
        "  {:.0} samples/s over {:.1} s of training; peak memory {}{}",
        summary.samples_per_s,
        summary.train_seconds,
        frugal_hw::units::Bytes(peak_rss_bytes),
        summary.peak_device_bytes.map_or(String::new(), |b| format!(
            ", device {}",
            frugal_hw::units::Bytes(b)
        ))
    )?;
    writeln!(
        out,
        "  metrics, curves, checkpoint and model in {}",
        dir.display()
    )?;
    if !summary.finished {
        writeln!(
            out,
            "  continue with: frugal train {} --resume",
            config_file.display()
        )?;
    }
    Ok(())
}

/// Says on stderr when the GPU is a software driver: it runs, slowly.
pub(crate) fn warn_if_software(picked: &Picked) -> Result<()> {
    if picked.software {
        writeln!(
            std::io::stderr().lock(),
            "warning: the only GPU is {}, a driver that runs on the CPU; it tests the GPU code paths but is slower than `compute.device = \"cpu\"`",
            picked.name
        )?;
    }
    Ok(())
}
