//! `frugal train`: prepares the data a configuration names, trains, and writes metrics,
//! plots, the final model and a summary into the output directory.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use frugal_models::classifier::Classifier;
use frugal_store::synthetic::{self, SyntheticSpec};
use frugal_store::{Dataset, OrderSpec, WriterOptions, import};
use frugal_train::Precision;
use frugal_train::device::{Picked, catch_backend_panics, pick};
use frugal_train::metrics::Split;
use frugal_train::schedule::LrSchedule;
use frugal_train::trainer::{AdamWSpec, Event, Summary, TrainData, TrainSpec, train};
use serde::Serialize;

use crate::args::{ConfigArgs, TrainArgs};
use crate::config::schema::{
    ClassifierConfig, ComputeConfig, DataSection, DataSource, TrainSection,
};
use crate::config::{AnyConfig, Source};
use crate::{plot, progress};

/// The environment variable naming the folder of the MNIST IDX files.
pub(crate) const MNIST_ENV: &str = "FRUGAL_MNIST_DIR";

/// RAM the training reader's window may hold.
pub(crate) const READ_BUDGET: u64 = 64 << 20;

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
    peak_rss_bytes: u64,
    /// The most heap bytes held at once (the counting allocator's mark).
    peak_heap_bytes: u64,
    output_dir: PathBuf,
}

/// A configuration made ready to train: its data prepared, its task and loop settings.
pub(crate) struct Setup {
    pub(crate) config: ClassifierConfig,
    pub(crate) dir: PathBuf,
    pub(crate) data: TrainData,
    pub(crate) task: Classifier,
    pub(crate) spec: TrainSpec,
}

impl Setup {
    /// Reads the configuration, starts the compute threads and prepares the data.
    pub(crate) fn load(args: &ConfigArgs) -> Result<Self> {
        let source = Source::read(&args.file, &args.set)?;
        let config = AnyConfig::from_document(&source.document()?)?;
        let AnyConfig::Classifier(config) = config else {
            bail!(
                "{}: training and planning handle `classifier` configurations so far; this one is `{}`",
                args.file.display(),
                config.workload().name()
            );
        };
        let threads = config.compute.threads as usize;
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()
            .context("starting the compute threads")?;
        let dir = config.output_dir.clone();
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let data = prepare_data(&config, &dir)?;
        let (input, label) = columns(&config.data);
        let task = Classifier::for_schema(
            config.model.arch,
            config.model.hidden.iter().map(|&h| h as usize).collect(),
            config.model.dropout,
            config.model.classes as usize,
            &data.train.manifest().schema,
            &input,
            &label,
        )
        .with_context(|| format!("dataset {}", data.train.dir().display()))?;
        let spec = spec(&config, &task, &data);
        Ok(Self {
            config,
            dir,
            data,
            task,
            spec,
        })
    }

    /// Applies a choice of the planner (or `--auto-fit`) to the configuration, keeping
    /// the loop settings and fingerprint in step with it.
    pub(crate) fn choose(
        &mut self,
        precision: Precision,
        segments: Option<usize>,
        batch: usize,
        grad_accum: usize,
    ) {
        let c = &mut self.config.compute;
        c.precision = precision;
        c.checkpointing = segments.is_some();
        c.checkpoint_segments = segments.map(|s| s as u32);
        c.batch_size = batch as u32;
        c.grad_accum = grad_accum as u32;
        let stop_after = self.spec.stop_after;
        self.spec = spec(&self.config, &self.task, &self.data);
        self.spec.stop_after = stop_after;
    }
}

/// The loop settings a configuration describes.
fn spec(config: &ClassifierConfig, task: &Classifier, data: &TrainData) -> TrainSpec {
    let sample_bytes = data.train.manifest().schema.sample_bytes() as u64;
    train_spec(
        config.seed,
        &config.compute,
        &config.train,
        task.blocks(),
        OrderSpec::for_budget(config.data.order, READ_BUDGET, sample_bytes),
        fingerprint(config),
    )
}

/// The loop's settings from a configuration's `[compute]` and `[train]` sections, for a
/// stack of `blocks` checkpointable blocks.
pub(crate) fn train_spec(
    seed: u64,
    c: &ComputeConfig,
    t: &TrainSection,
    blocks: usize,
    order: OrderSpec,
    fingerprint: String,
) -> TrainSpec {
    let segments = c.checkpointing.then(|| {
        c.checkpoint_segments.map_or_else(
            || frugal_train::checkpoint::default_segments(blocks),
            |s| s as usize,
        )
    });
    TrainSpec {
        seed,
        batch_size: c.batch_size as usize,
        grad_accum: c.grad_accum as usize,
        precision: c.precision,
        segments,
        epochs: t.epochs,
        steps: t.steps,
        adamw: AdamWSpec {
            weight_decay: t.weight_decay,
            ..AdamWSpec::default()
        },
        schedule: LrSchedule {
            base: t.lr,
            final_fraction: t.final_lr_fraction,
            decay: t.schedule,
            warmup: t.warmup_steps,
            total: 0,
        },
        log_every: t.log_every,
        eval_every: t.eval_every,
        checkpoint_every: t.checkpoint_every,
        order,
        stop_after: None,
        fingerprint,
    }
}

pub(crate) fn run(args: TrainArgs, out: &mut dyn Write) -> Result<()> {
    let mut setup = Setup::load(&args.config)?;
    setup.spec.stop_after = args.run.stop_after;
    if args.max_memory.is_some() || args.auto_fit {
        super::plan::guard(&mut setup, args.max_memory, args.auto_fit)?;
    }
    let Setup {
        config,
        dir,
        data,
        task,
        spec,
        ..
    } = setup;
    run_loop(
        &task,
        &data,
        &spec,
        config.compute.device,
        &dir,
        args.run.resume,
        args.run.json,
        &args.config.file,
        out,
    )
}

/// Trains `task` on `data` into `dir` with the progress bar, then draws the curves, saves
/// `summary.json` and reports: what every `train` command shares.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_loop<T: frugal_train::Task>(
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
    let summary = catch_backend_panics("training", &picked, || {
        train(task, data, spec, &picked.device, dir, resume, &mut observe)
    })?;
    bar.finish_and_clear();

    plot::training_curves(&summary.records, dir).context("drawing the training curves")?;

    let peak_rss_bytes = frugal_hw::MemoryMeter::new()
        .sample()
        .map(|s| s.peak_rss_bytes)
        .unwrap_or(0);
    let report = Report {
        summary: &summary,
        device: picked.name,
        precision: precision.name(),
        batch_size: spec.batch_size,
        grad_accum: spec.grad_accum,
        checkpoint_segments: segments,
        peak_rss_bytes,
        peak_heap_bytes: frugal_train::memory::heap_peak(),
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

/// The settings that shape the trained weights: everything but where the output goes,
/// the device and thread count, and how often it is logged or checkpointed.
pub(crate) fn fingerprint(config: &impl Serialize) -> String {
    let mut v = serde_json::to_value(config).expect("the configuration serializes");
    if let Some(o) = v.as_object_mut() {
        o.remove("output_dir");
        if let Some(c) = o.get_mut("compute").and_then(|c| c.as_object_mut()) {
            c.remove("device");
            c.remove("threads");
        }
        if let Some(sim) = o.get_mut("sim").and_then(|s| s.as_object_mut()) {
            sim.remove("data");
        }
        if let Some(t) = o.get_mut("train").and_then(|t| t.as_object_mut()) {
            for k in ["log_every", "eval_every", "checkpoint_every"] {
                t.remove(k);
            }
        }
    }
    v.to_string()
}

fn columns(data: &DataSection) -> (String, String) {
    let (i, l) = match data.source {
        DataSource::Mnist => ("image", "label"),
        _ => ("x", "y"),
    };
    (
        data.input.clone().unwrap_or_else(|| i.into()),
        data.label.clone().unwrap_or_else(|| l.into()),
    )
}

/// The MNIST folder: the configuration's `data.dir`, else `$FRUGAL_MNIST_DIR`, else
/// `data/mnist`.
fn mnist_dir(data: &DataSection) -> PathBuf {
    data.dir
        .clone()
        .or_else(|| std::env::var_os(MNIST_ENV).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("data/mnist"))
}

fn idx_file(dir: &Path, stem: &str) -> Result<PathBuf> {
    for name in [format!("{stem}.gz"), stem.to_owned()] {
        let p = dir.join(&name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "MNIST file {stem}(.gz) not found in {}: put the four IDX files there (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, gzipped or not), or name their folder with `data.dir` or {MNIST_ENV}",
        dir.display()
    )
}

/// A dataset built once into `target`: built under a temporary name, renamed into place,
/// so a killed run never leaves a half-built dataset where a finished one is expected.
fn build_once(target: &Path, build: impl FnOnce(&Path) -> Result<()>) -> Result<Dataset> {
    if !target.join(frugal_store::MANIFEST_FILE).exists() {
        let tmp = target.with_extension("partial");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
        }
        build(&tmp)?;
        std::fs::rename(&tmp, target)
            .with_context(|| format!("renaming {} to {}", tmp.display(), target.display()))?;
    }
    Ok(Dataset::open(target)?)
}

fn prepare_data(config: &ClassifierConfig, dir: &Path) -> Result<TrainData> {
    let data = &config.data;
    let store = dir.join("data");
    match data.source {
        DataSource::Mnist => {
            let src = mnist_dir(data);
            let split = |name: &str, stem: &str| -> Result<Dataset> {
                let images = idx_file(&src, &format!("{stem}-images-idx3-ubyte"))?;
                let labels = idx_file(&src, &format!("{stem}-labels-idx1-ubyte"))?;
                build_once(&store.join(name), |out| {
                    import::import_mnist(&images, &labels, out, WriterOptions::default())?;
                    Ok(())
                })
            };
            Ok(TrainData {
                train: split("mnist-train", "train")?,
                test: Some(split("mnist-test", "t10k")?),
            })
        }
        DataSource::Store => {
            let train = data.train.as_ref().expect("checked with the configuration");
            let open = |p: &Path| {
                Dataset::open(p).with_context(|| format!("opening the dataset {}", p.display()))
            };
            Ok(TrainData {
                train: open(train)?,
                test: data.test.as_deref().map(open).transpose()?,
            })
        }
        DataSource::Synthetic => {
            let spec = |samples, stream| SyntheticSpec {
                samples,
                features: data.features as usize,
                classes: config.model.classes as usize,
                hidden: data.teacher_hidden as usize,
                seed: config.seed,
                shard_bytes: frugal_store::DEFAULT_SHARD_BYTES,
                sample_stream: stream,
            };
            let threads = rayon::current_num_threads();
            let split = |name: &str, s: SyntheticSpec| -> Result<Dataset> {
                let target = store.join(name);
                if let Ok(d) = Dataset::open(&target)
                    && d.manifest().complete
                {
                    if d.len() != s.samples || d.manifest().schema != s.schema() {
                        bail!(
                            "{} holds a synthetic dataset generated with other settings; remove it (or choose another output_dir) to generate the one this configuration describes",
                            target.display()
                        );
                    }
                    return Ok(d);
                }
                let bar = progress::bar(s.samples, "generating", false);
                synthetic::generate(&target, &s, threads, &|n| bar.inc(n))?;
                bar.finish_and_clear();
                Ok(Dataset::open(&target)?)
            };
            Ok(TrainData {
                train: split("synthetic-train", spec(data.samples, 0))?,
                test: Some(split("synthetic-test", spec(data.test_samples, 1))?),
            })
        }
    }
}
