//! A training configuration made ready to train, whatever its workload: its data
//! prepared, its task and the loop's settings. `frugal train`, `frugal plan` and the
//! workloads' own commands start from it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use frugal_models::classifier::Classifier;
use frugal_models::eqprop::{EqPropClassifier, Width};
use frugal_store::synthetic::{self, SyntheticSpec};
use frugal_store::{Dataset, Order, OrderSpec, WriterOptions, import};
use frugal_train::schedule::LrSchedule;
use frugal_train::trainer::{AdamWSpec, TrainData, TrainSpec};
use frugal_train::{Fit, Task};
use serde::Serialize;

use super::UserError;
use crate::args::ConfigArgs;
use crate::config::schema::{
    ClassifierConfig, ComputeConfig, DataSection, DataSource, EqpropConfig, ParticlesConfig,
    TrainSection,
};
use crate::config::{AnyConfig, Source};
use crate::progress;

/// The environment variable naming the folder of the MNIST IDX files.
const MNIST_ENV: &str = "FRUGAL_MNIST_DIR";

/// RAM the training reader's window may hold.
const READ_BUDGET: u64 = 64 << 20;

/// What every trainable configuration has besides its own sections.
pub(crate) trait TrainConfig: Serialize {
    fn compute(&self) -> &ComputeConfig;
    fn train(&self) -> &TrainSection;
    fn seed(&self) -> u64;
    fn output_dir(&self) -> &Path;
    /// The family's own settings (`section.key`) that do not shape the trained weights,
    /// such as where a dataset is kept: left out of the run's fingerprint, so a resumed
    /// run may change them.
    fn unshaping(&self) -> &'static [&'static str];
}

macro_rules! train_config {
    ($($t:ty => $unshaping:expr),*) => {$(
        impl TrainConfig for $t {
            fn compute(&self) -> &ComputeConfig {
                &self.compute
            }
            fn train(&self) -> &TrainSection {
                &self.train
            }
            fn seed(&self) -> u64 {
                self.seed
            }
            fn output_dir(&self) -> &Path {
                &self.output_dir
            }
            fn unshaping(&self) -> &'static [&'static str] {
                $unshaping
            }
        }
    )*};
}
train_config!(ClassifierConfig => &[], ParticlesConfig => &["sim.data"], EqpropConfig => &[]);

/// A configuration made ready to train, whatever its workload: its data prepared, its
/// task and loop settings. Training, planning and `--auto-fit` take it alike.
pub(crate) struct Setup<T> {
    pub(crate) task: T,
    pub(crate) data: TrainData,
    pub(crate) spec: TrainSpec,
    /// The configuration's `[compute]` section, as a fit changes it.
    pub(crate) compute: ComputeConfig,
    pub(crate) dir: PathBuf,
    /// The whole configuration, from which the run's fingerprint is taken.
    document: serde_json::Value,
    /// The family's settings left out of the fingerprint.
    unshaping: &'static [&'static str],
}

impl<T: Task> Setup<T> {
    /// `task` trained on `data` as `config` says, reading the data in `order`.
    pub(crate) fn new(
        config: &impl TrainConfig,
        order: Order,
        task: T,
        data: TrainData,
    ) -> Result<Self> {
        let (compute, train, dir) = (config.compute(), config.train(), config.output_dir());
        let document = serde_json::to_value(config).context("recording the configuration")?;
        let sample_bytes = data.train.manifest().schema.sample_bytes() as u64;
        let spec = train_spec(
            config.seed(),
            compute,
            train,
            task.checkpoint_segments(),
            OrderSpec::for_budget(order, READ_BUDGET, sample_bytes),
            fingerprint(&document, config.unshaping()),
        );
        Ok(Self {
            task,
            data,
            spec,
            compute: compute.clone(),
            dir: dir.to_owned(),
            document,
            unshaping: config.unshaping(),
        })
    }

    /// Applies a choice of the planner (or `--auto-fit`) to the configuration, keeping
    /// the loop settings and fingerprint in step with it.
    pub(crate) fn choose(&mut self, fit: Fit) {
        fit.apply(&mut self.spec);
        let c = &mut self.compute;
        c.precision = fit.precision;
        c.checkpointing = fit.segments.is_some();
        c.checkpoint_segments = fit.segments.map(|s| s as u32);
        c.batch_size = fit.batch_size as u32;
        c.grad_accum = fit.grad_accum as u32;
        if let Some(doc) = self.document.as_object_mut() {
            doc.insert(
                "compute".into(),
                serde_json::to_value(&*c).expect("the compute section serializes"),
            );
        }
        self.spec.fingerprint = fingerprint(&self.document, self.unshaping);
    }
}

/// Reads a training configuration and starts the compute threads it asks for.
pub(crate) fn load(args: &ConfigArgs) -> Result<AnyConfig> {
    let source = Source::read(&args.file, &args.set)?;
    let config = AnyConfig::from_document(&source.document()?)?;
    let threads = match &config {
        AnyConfig::Classifier(c) => c.compute.threads,
        AnyConfig::Particles(c) => c.compute.threads,
        AnyConfig::Eqprop(c) => c.compute.threads,
        other => {
            return Err(UserError(format!(
                "{}: `{}` configurations are run by `frugal {}`, not trained by `frugal train` or planned by `frugal plan`",
                args.file.display(),
                other.workload().name(),
                other.workload().name()
            ))
            .into());
        }
    };
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads as usize)
        .build_global()
        .context("starting the compute threads")?;
    Ok(config)
}

/// A classifier configuration made ready to train: its data prepared (imported,
/// generated or opened) and its model fitted to the dataset's columns.
pub(crate) fn classifier(config: &ClassifierConfig) -> Result<Setup<Classifier>> {
    let dir = &config.output_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let data = prepare_data(&config.data, config.model.classes, config.seed, dir)?;
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
    Setup::new(config, config.data.order, task, data)
}

/// An EqProp configuration made ready to train: its images prepared as a classifier's
/// are, cut into the patches its tokens are.
pub(crate) fn eqprop(config: &EqpropConfig) -> Result<Setup<EqPropClassifier>> {
    if config.compute.precision != frugal_train::Precision::F32 {
        return Err(UserError(format!(
            "compute.precision = {}: the EqProp block computes in f32 for now (its phases compare energies that reduced precision would round away); set compute.precision = \"f32\"",
            config.compute.precision.name()
        ))
        .into());
    }
    let dir = &config.output_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let data = prepare_data(&config.data, config.model.classes, config.seed, dir)?;
    let (input, label) = columns(&config.data);
    let m = &config.model;
    let columns = Classifier::for_schema(
        frugal_models::classifier::Arch::Mlp,
        Vec::new(),
        0.0,
        m.classes as usize,
        &data.train.manifest().schema,
        &input,
        &label,
    )
    .with_context(|| format!("dataset {}", data.train.dir().display()))?;
    let width = Width {
        d_model: m.d_model as usize,
        heads: m.heads as usize,
        d_head: m
            .d_head
            .map_or((m.d_model / m.heads.max(1)).max(1) as usize, |d| d as usize),
        memories: m.memories as usize,
        patch: m.patch as usize,
    };
    let task = EqPropClassifier::new(columns, width, config.eqprop.dynamics(), config.eqprop.beta)
        .map_err(|e| UserError(e.to_string()))?;
    Setup::new(config, config.data.order, task, data)
}

/// The loop's settings from a configuration's `[compute]` and `[train]` sections, for a
/// task whose checkpointing, when asked for without a count, uses `default_segments`.
fn train_spec(
    seed: u64,
    c: &ComputeConfig,
    t: &TrainSection,
    default_segments: usize,
    order: OrderSpec,
    fingerprint: String,
) -> TrainSpec {
    let segments = c.checkpointing.then(|| {
        c.checkpoint_segments
            .map_or(default_segments, |s| s as usize)
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

/// The settings that shape the trained weights: everything but where the output goes,
/// the device and thread count, how often it is logged or checkpointed, and the family's
/// own `unshaping` settings.
fn fingerprint(config: &impl Serialize, unshaping: &[&str]) -> String {
    const SHARED: [&str; 6] = [
        "compute.device",
        "compute.threads",
        "train.log_every",
        "train.eval_every",
        "train.checkpoint_every",
        "output_dir",
    ];
    let mut v = serde_json::to_value(config).expect("the configuration serializes");
    for path in SHARED.iter().chain(unshaping) {
        let (parent, key) = match path.split_once('.') {
            Some((section, key)) => (v.get_mut(section), key),
            None => (Some(&mut v), *path),
        };
        if let Some(o) = parent.and_then(|p| p.as_object_mut()) {
            o.remove(key);
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

fn prepare_data(data: &DataSection, classes: u32, seed: u64, dir: &Path) -> Result<TrainData> {
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
                classes: classes as usize,
                hidden: data.teacher_hidden as usize,
                seed,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_ignore_what_does_not_shape_the_weights() {
        let run = |output: &str, device: &str, data: &str, lr: f64| {
            let doc = serde_json::json!({
                "output_dir": output,
                "compute": {"device": device, "threads": 2, "batch_size": 8},
                "sim": {"data": data, "dt": 0.01},
                "train": {"lr": lr, "log_every": 10},
            });
            fingerprint(&doc, &["sim.data"])
        };
        let base = run("a", "cpu", "x", 1e-3);
        assert_eq!(base, run("b", "gpu", "y", 1e-3));
        assert_ne!(base, run("a", "cpu", "x", 2e-3));
        assert!(
            base.contains("\"dt\"") && base.contains("batch_size"),
            "{base}"
        );
        assert!(
            !base.contains("log_every") && !base.contains("\"data\""),
            "{base}"
        );
    }
}
