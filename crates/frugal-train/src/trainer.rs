//! The training loop: streams micro-batches from a frugal-store dataset (read ahead on
//! another thread while this one computes), accumulates them into optimizer steps in the
//! chosen precision, follows a learning-rate schedule, evaluates on a held-out split,
//! writes metrics, and checkpoints so that a resumed run ends bit for bit where an
//! uninterrupted one would.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::{AdamWConfig, ModuleOptimizer, OptimizerRecord};
use burn::store::ModuleRecord;
use burn::tensor::{Bytes, Device, Tensor};
use frugal_store::{Batch, Dataset, OrderSpec, ReadState, Stream, StreamOptions, Verify};
use serde::{Deserialize, Serialize};

use crate::accumulate::Accumulator;
use crate::accumulate::scale_grads;
use crate::checkpoint::StepGrads;
use crate::deferred::Deferred;
use crate::device::{DevicePeak, catch_panics};
use crate::error::{Result, TrainError};
use crate::metrics::{MetricsLog, Record, Split};
use crate::precision::{Precision, compute_copy, grads_to_f32};
use crate::scaler::{LossScaler, ScaledStep, grads_finite};
use crate::schedule::LrSchedule;
use crate::snapshot::{LogWindow, LoopState, Snapshot};
use crate::task::{StepInput, StepOutput, Task};

/// The result of evaluating a model on a dataset.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Evaluation {
    /// Sum of the per-sample losses.
    pub loss_sum: f64,
    /// Samples classified right, for tasks with classes.
    pub correct: Option<u64>,
    /// Samples evaluated.
    pub samples: usize,
}

/// Prepares and runs one micro-batch at once: for callers that do not overlap the two.
pub fn run_step<T: Task>(
    task: &T,
    model: &T::Model,
    batch: &Batch,
    input: StepInput<'_>,
    loss_scale: f64,
) -> Result<StepOutput> {
    let prepared = task.prepare(batch, input)?;
    task.step(model, prepared, input, loss_scale)
}

/// AdamW's settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWSpec {
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator guard.
    pub epsilon: f64,
}

impl Default for AdamWSpec {
    fn default() -> Self {
        Self {
            weight_decay: 1e-4,
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
        }
    }
}

impl AdamWSpec {
    pub(crate) fn init(&self) -> ModuleOptimizer {
        AdamWConfig::new()
            .with_weight_decay(self.weight_decay as f32)
            .with_beta_1(self.beta1 as f32)
            .with_beta_2(self.beta2 as f32)
            .with_epsilon(self.epsilon as f32)
            .init()
    }
}

/// How to train.
#[derive(Debug, Clone)]
pub struct TrainSpec {
    /// Seed of initialization, dropout and data order.
    pub seed: u64,
    /// Samples per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Compute precision.
    pub precision: Precision,
    /// Checkpoint segments; `None` keeps every activation.
    pub segments: Option<usize>,
    /// Passes over the training data (ignored when `steps` is set).
    pub epochs: u64,
    /// Optimizer steps in all, overriding `epochs`.
    pub steps: Option<u64>,
    /// Optimizer.
    pub adamw: AdamWSpec,
    /// Learning rate (its `total` is filled in by the loop).
    pub schedule: LrSchedule,
    /// Steps between train records.
    pub log_every: u64,
    /// Steps between evaluations; 0 evaluates at the end of every epoch.
    pub eval_every: u64,
    /// Steps between checkpoints; 0 checkpoints only at the end (and when stopping).
    pub checkpoint_every: u64,
    /// Read order of the training data.
    pub order: OrderSpec,
    /// Stop after this many steps (checkpointing first), to be resumed later.
    pub stop_after: Option<u64>,
    /// Identity of the settings that shape the result (a resume must match it).
    pub fingerprint: String,
}

impl TrainSpec {
    /// Settings reading the training data in `order`, otherwise the defaults of a
    /// configuration file's `[compute]` and `[train]` sections: seed 0, micro-batches of
    /// 32 without accumulation, f32, every activation kept, one epoch, AdamW at a
    /// constant 1e-3, a train record every 50 steps, an evaluation every epoch, a
    /// checkpoint every 500 steps.
    pub fn new(order: OrderSpec) -> Self {
        Self {
            seed: 0,
            batch_size: 32,
            grad_accum: 1,
            precision: Precision::F32,
            segments: None,
            epochs: 1,
            steps: None,
            adamw: AdamWSpec::default(),
            schedule: LrSchedule {
                base: 1e-3,
                final_fraction: 0.0,
                decay: crate::schedule::Decay::Constant,
                warmup: 0,
                total: 0,
            },
            log_every: 50,
            eval_every: 0,
            checkpoint_every: 500,
            order,
            stop_after: None,
            fingerprint: String::new(),
        }
    }
}

/// The data of a run.
#[derive(Debug)]
pub struct TrainData {
    /// Training split.
    pub train: Dataset,
    /// Held-out split, evaluated in order.
    pub test: Option<Dataset>,
}

/// What the loop reports as it goes.
#[derive(Debug)]
pub enum Event<'a> {
    /// Before the first step: steps in all and steps already done (resumed).
    Started {
        /// Optimizer steps of the whole run.
        total: u64,
        /// Steps completed before this process started.
        done: u64,
    },
    /// After every optimizer step (its loss is read with the next train record).
    Step {
        /// Steps completed.
        step: u64,
    },
    /// A record was written to the metrics files.
    Record(&'a Record),
    /// A checkpoint was written.
    Checkpoint {
        /// Steps it holds.
        step: u64,
    },
}

/// The outcome of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Optimizer steps completed.
    pub steps: u64,
    /// Steps of the whole run (more than `steps` when stopped early).
    pub total_steps: u64,
    /// Whether the run reached its last step.
    pub finished: bool,
    /// Step the run was resumed from, if it was.
    pub resumed_from: Option<u64>,
    /// Loss of the last train record.
    pub train_loss: Option<f64>,
    /// Accuracy of the last train record.
    pub train_accuracy: Option<f64>,
    /// Loss on the held-out split at the last evaluation.
    pub test_loss: Option<f64>,
    /// Accuracy on the held-out split at the last evaluation.
    pub test_accuracy: Option<f64>,
    /// Training samples processed (resumed ones included).
    pub samples: u64,
    /// Seconds of training (evaluation and checkpoints excluded), resumed ones included.
    pub train_seconds: f64,
    /// `samples / train_seconds`.
    pub samples_per_s: f64,
    /// f16 steps skipped for overflow.
    pub skipped_steps: u64,
    /// The most the device's allocator reserved during this process's part of the run
    /// (see [`crate::device::DevicePeak`]); `None` on the CPU backend.
    pub peak_device_bytes: Option<u64>,
    /// The final model's burn record.
    pub model_file: PathBuf,
    /// Every metrics record of the run, resumed ones included (also in the metrics files).
    #[serde(skip)]
    pub records: Vec<Record>,
}

/// File names in a run directory.
pub const CHECKPOINT_FILE: &str = "checkpoint.bin";
/// The final model's burn record.
pub const MODEL_FILE: &str = "model.bpk";

pub use crate::breakdown::READ_AHEAD_WINDOWS;

/// Bytes the loop's readers hold at most: the training reader's windows and the
/// evaluation reader's, and the batches handed out (one in use, one being filled, one
/// in the pool), for micro-batches of `batch_size` and evaluation batches of
/// `eval_batch` samples ([`Task::eval_batch`]).
pub fn data_bytes(data: &TrainData, order: OrderSpec, batch_size: usize, eval_batch: usize) -> u64 {
    let windows = |d: &Dataset, spread: u64| {
        let n = d.len();
        let per_window = (order.window + spread.saturating_sub(1)).min(n);
        let count = n
            .div_ceil(order.window.max(1))
            .min(READ_AHEAD_WINDOWS as u64);
        // Windows in flight together never hold more than the whole split: where a few
        // windows cover it, the last is a remainder, not a full window.
        (count * per_window).min(n) * d.manifest().schema.sample_bytes() as u64
    };
    let sample = data.train.manifest().schema.sample_bytes() as u64;
    let test = data.test.as_ref().map_or(0, |t| {
        windows(t, 1)
            + 2 * (eval_batch as u64).min(t.len()) * t.manifest().schema.sample_bytes() as u64
    });
    windows(&data.train, order.spread) + 3 * batch_size as u64 * sample + test
}

/// Steps per epoch: micro-batches per epoch, grouped `grad_accum` at a time (an epoch's
/// last step may have fewer).
pub fn steps_per_epoch(samples: u64, batch_size: usize, grad_accum: usize) -> u64 {
    samples
        .div_ceil(batch_size as u64)
        .div_ceil(grad_accum as u64)
        .max(1)
}

fn mix(a: u64, b: u64) -> u64 {
    frugal_rand::SplitMix64::new(a ^ b.wrapping_mul(0xd1b5_4a32_d192_ed03)).next_u64()
}

struct Reader<'a> {
    data: &'a Dataset,
    spec: OrderSpec,
    seed: u64,
    batch_size: usize,
    stream: Option<Stream>,
    epoch: u64,
    consumed: u64,
}

impl Reader<'_> {
    fn open(&mut self) -> Result<()> {
        let mut options = StreamOptions::new(self.spec, self.seed, self.epoch, self.batch_size);
        options.state = ReadState {
            seed: self.seed,
            epoch: self.epoch,
            consumed: self.consumed,
        };
        options.prefetch = READ_AHEAD_WINDOWS - 1;
        options.verify = Verify::OnRead;
        self.stream = Some(self.data.stream(options)?);
        Ok(())
    }

    /// Moves to the next epoch when this one is exhausted.
    fn roll(&mut self) -> Result<()> {
        if self.stream.is_none() {
            self.open()?;
        }
        if self.stream.as_ref().is_some_and(|s| s.remaining() == 0) {
            self.epoch += 1;
            self.consumed = 0;
            // Dropped first, so two epochs' windows are never held at once.
            self.stream = None;
            self.open()?;
        }
        Ok(())
    }

    fn next(&mut self) -> Result<Option<Batch>> {
        let Some(stream) = self.stream.as_mut() else {
            return Ok(None);
        };
        match stream.next() {
            Some(batch) => {
                let batch = batch?;
                self.consumed += batch.samples as u64;
                Ok(Some(batch))
            }
            None => Ok(None),
        }
    }

    fn epoch_done(&self) -> bool {
        self.stream.as_ref().is_none_or(|s| s.remaining() == 0)
    }
}

/// Where a micro-batch sits in the run, and where the reader stood after taking it.
#[derive(Debug, Clone, Copy)]
struct Place {
    /// The optimizer step it belongs to (0 for the first).
    step: u64,
    /// Its index among the step's micro-batches.
    micro: usize,
    /// Whether it is the step's last.
    last: bool,
    /// The reader's epoch and samples of it consumed after it.
    epoch: u64,
    consumed: u64,
    /// Whether it ended its epoch.
    epoch_done: bool,
}

/// The run's micro-batches in order: `grad_accum` to a step, fewer when an epoch ends.
struct Schedule<'a> {
    reader: Reader<'a>,
    grad_accum: usize,
    step: u64,
    micro: usize,
    stop: u64,
}

impl Schedule<'_> {
    fn next(&mut self) -> Option<Result<(Place, Batch)>> {
        if self.step >= self.stop {
            return None;
        }
        Some(self.take())
    }

    fn take(&mut self) -> Result<(Place, Batch)> {
        if self.micro == 0 {
            self.reader.roll()?;
        }
        let Some(batch) = self.reader.next()? else {
            return Err(TrainError::NoSamples {
                dir: self.reader.data.dir().to_owned(),
                what: "no samples to train on".into(),
            });
        };
        let epoch_done = self.reader.epoch_done();
        let place = Place {
            step: self.step,
            micro: self.micro,
            last: self.micro + 1 == self.grad_accum || epoch_done,
            epoch: self.reader.epoch,
            consumed: self.reader.consumed,
            epoch_done,
        };
        if place.last {
            self.step += 1;
            self.micro = 0;
        } else {
            self.micro += 1;
        }
        Ok((place, batch))
    }
}

/// burn creates a parameter's values lazily, on first use, on the device the parameter
/// is on by then; visiting them creates them now.
struct Materialize;

impl ModuleVisitor for Materialize {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let _ = param.val();
    }
}

/// Moves every parameter to a device as a fresh leaf (no graph back to where it was).
struct MoveTo<'a>(&'a Device);

impl ModuleMapper for MoveTo<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let device = self.0;
        param.map(|t| t.to_device(device).detach().require_grad())
    }
}

/// A fresh model of `task` drawn on the CPU from `seed`, its values created there, then
/// moved to `device` (an autodiff device): the same weights for the same seed whatever
/// device the run trains on.
pub fn init_on_cpu<T: Task>(task: &T, seed: u64, device: &Device) -> T::Model {
    move_to(init_seeded(task, seed, &Device::flex().autodiff()), device)
}

/// Held while a backend's generator is seeded and drawn from ([`init_seeded`]).
static SEEDING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Seeds `device`'s generator, not while a model is being drawn from it.
fn seed_device(device: &Device, seed: u64) {
    let _guard = SEEDING.lock().unwrap_or_else(|e| e.into_inner());
    device.seed(seed);
}

/// A fresh model of `task` on `device`, its values drawn from the device's generator
/// seeded with `seed` and created there.
///
/// A backend's generator is one per process: seeding it and drawing a model's weights must
/// not interleave with another model's (two runs in one process, as a library user or a
/// test harness has them), or neither gets its seed's weights; every model the engine
/// initializes goes through here, one at a time.
pub(crate) fn init_seeded<T: Task>(task: &T, seed: u64, device: &Device) -> T::Model {
    let _guard = SEEDING.lock().unwrap_or_else(|e| e.into_inner());
    device.seed(seed);
    let model = task.init(device);
    model.visit(&mut Materialize);
    model
}

/// `model` on `device` (an autodiff device), each parameter a fresh leaf keeping its id.
/// burn's `Module::to_device` keeps autodiff's link back to the source device, whose
/// graph the first backward pass then consumes.
pub fn move_to<M: Module>(model: M, device: &Device) -> M {
    model.map(&mut MoveTo(device))
}

/// Renumbers parameters 1, 2, … in visiting order (a parameter met twice, as with tied
/// weights, keeps one number). burn draws parameter ids at random, and they are written
/// into records; numbered ids make the same training produce byte-identical files.
struct NumberParams(std::collections::HashMap<ParamId, ParamId>);

impl ModuleMapper for NumberParams {
    fn map_float<const D: usize>(&mut self, mut param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let next = ParamId::from(self.0.len() as u64 + 1);
        param.id = *self.0.entry(param.id).or_insert(next);
        param
    }
}

fn model_bytes<M: Module>(model: &M) -> Result<Vec<u8>> {
    let record = model.clone().into_record();
    let bytes = record
        .into_bytes()
        .map_err(|e| TrainError::Failed(format!("cannot serialize the model: {e:?}")))?;
    Ok(bytes.to_vec())
}

/// A checkpoint of the loop's state, model and optimizer.
pub(crate) fn make_snapshot<M: Module>(
    state: &LoopState,
    model: &M,
    optim: &ModuleOptimizer,
) -> Result<Snapshot> {
    let optimizer = optim
        .to_record()
        .into_bytes()
        .map_err(|e| TrainError::Failed(format!("cannot serialize the optimizer: {e:?}")))?
        .to_vec();
    Ok(Snapshot {
        state: state.clone(),
        model: model_bytes(model)?,
        optimizer,
    })
}

/// Writes a model's record to `path` atomically.
pub fn save_model<M: Module>(model: &M, path: &Path) -> Result<()> {
    frugal_store::atomic_write(path, &model_bytes(model)?).map_err(TrainError::Store)
}

/// Loads a model record written by [`save_model`] (or held in a checkpoint) into `model`.
pub fn load_model<M: Module>(model: M, bytes: Vec<u8>, path: &Path) -> Result<M> {
    let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(bytes)).map_err(|e| {
        TrainError::Snapshot {
            path: path.to_owned(),
            message: format!("holds a model record that cannot be read: {e:?}"),
        }
    })?;
    model
        .try_load_record(record)
        .map_err(|e| TrainError::Snapshot {
            path: path.to_owned(),
            message: format!("holds a model of another shape: {e:?}"),
        })
}

/// Evaluates `model` on all of `data`, in order, reading windows of `window` samples.
/// The sums stay on the device until the last batch: one wait for the device in all.
pub fn evaluate<T: Task>(
    task: &T,
    model: &T::Model,
    data: &Dataset,
    batch_size: usize,
    window: u64,
    device: &Device,
) -> Result<Evaluation> {
    let inference = model.clone().valid();
    let spec = OrderSpec {
        order: frugal_store::Order::Sequential,
        window,
        spread: 1,
    };
    let mut options = StreamOptions::new(spec, 0, 0, batch_size);
    options.prefetch = READ_AHEAD_WINDOWS - 1;
    let mut pending = Deferred::new();
    let mut samples = 0;
    for batch in data.stream(options)? {
        let out = task.eval(&inference, &batch?, device)?;
        samples += out.samples;
        pending.push(out.loss_sum, out.correct, out.samples as u64);
    }
    let mut loss_sum = 0.0;
    let mut correct = Some(0);
    for r in pending.read()? {
        loss_sum += r.loss;
        correct = correct.zip(r.correct).map(|(a, b)| a + b);
    }
    Ok(Evaluation {
        loss_sum,
        correct,
        samples,
    })
}

/// Trains `task` on `data` into `dir`, from its checkpoint when `resume` is set (and one
/// exists). `device` is the plain device; the loop adds autodiff.
pub fn train<T: Task>(
    task: &T,
    data: &TrainData,
    spec: &TrainSpec,
    device: &Device,
    dir: &Path,
    resume: bool,
    observe: &mut dyn FnMut(Event<'_>),
) -> Result<Summary> {
    if spec.batch_size == 0 || spec.grad_accum == 0 {
        let (key, value) = if spec.batch_size == 0 {
            ("compute.batch_size", spec.batch_size)
        } else {
            ("compute.grad_accum", spec.grad_accum)
        };
        return Err(TrainError::Setting {
            key: key.into(),
            value: value.to_string(),
            problem: "must be at least 1".into(),
        });
    }
    if !device.supports_dtype(spec.precision.dtype()) {
        return Err(TrainError::Unsupported(format!(
            "the device has no {} arithmetic; choose another precision",
            spec.precision.name()
        )));
    }
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    let ad = device.clone().autodiff();
    let mut device_peak = DevicePeak::new(device);
    let per_epoch = steps_per_epoch(data.train.len(), spec.batch_size, spec.grad_accum);
    let total = spec.steps.unwrap_or(per_epoch * spec.epochs.max(1));
    let schedule_lr = LrSchedule {
        total,
        ..spec.schedule
    };
    let checkpoint_path = dir.join(CHECKPOINT_FILE);

    let snapshot = if resume && checkpoint_path.exists() {
        Some(Snapshot::load(&checkpoint_path)?)
    } else {
        None
    };
    if !resume && checkpoint_path.exists() {
        return Err(TrainError::RunExists {
            dir: dir.to_owned(),
            checkpoint: checkpoint_path,
        });
    }

    // Initialized on the CPU whatever the device, so a run's weights do not depend on a
    // backend's random generator.
    seed_device(&ad, spec.seed);
    let mut model =
        init_on_cpu(task, spec.seed, &ad).map(&mut NumberParams(std::collections::HashMap::new()));
    let mut optim = spec.adamw.init();
    let mut state = LoopState {
        fingerprint: spec.fingerprint.clone(),
        step: 0,
        epoch: 0,
        consumed: 0,
        scaler: LossScaler::default(),
        window: LogWindow::default(),
        samples_total: 0,
        train_seconds: 0.0,
        seed: spec.seed,
    };
    let resumed_from = match snapshot {
        Some(s) => {
            if s.state.fingerprint != spec.fingerprint {
                return Err(TrainError::Snapshot {
                    path: checkpoint_path,
                    message: "was written with other settings (model, data, precision, batch, schedule or seed); resume with the configuration that started the run, or choose another output directory".into(),
                });
            }
            model = load_model(model, s.model, &checkpoint_path)?;
            let record =
                OptimizerRecord::from_bytes(Bytes::from_bytes_vec(s.optimizer)).map_err(|e| {
                    TrainError::Snapshot {
                        path: checkpoint_path.clone(),
                        message: format!("holds an optimizer state that cannot be read: {e:?}"),
                    }
                })?;
            optim = optim.load_record(record);
            state = s.state;
            Some(state.step)
        }
        None => None,
    };
    let mut log = MetricsLog::open(dir, resumed_from).map_err(|e| TrainError::io(dir, e))?;

    let reader = Reader {
        data: &data.train,
        spec: spec.order,
        seed: mix(spec.seed, 0x0da7a),
        batch_size: spec.batch_size,
        stream: None,
        epoch: state.epoch,
        consumed: state.consumed,
    };
    observe(Event::Started {
        total,
        done: state.step,
    });

    let stop = spec.stop_after.unwrap_or(u64::MAX).min(total);
    let mut schedule = Schedule {
        reader,
        grad_accum: spec.grad_accum,
        step: state.step,
        micro: 0,
        stop,
    };
    let ad = &ad;
    let input_for = move |place: &Place| StepInput {
        device: ad,
        precision: spec.precision,
        segments: spec.segments,
        seed: mix(mix(spec.seed, place.step), place.micro as u64),
    };

    let model = std::thread::scope(|scope| -> Result<T::Model> {
        let mut model = model;
        // One micro-batch is prepared (graphs built, tensors uploaded) on this thread while
        // the previous one computes: a double buffer between the reader and the device.
        let (jobs, next_job) = mpsc::sync_channel::<Result<(Place, Batch)>>(1);
        let (prepared, next_prepared) = mpsc::sync_channel::<Result<(Place, T::Input)>>(1);
        std::thread::Builder::new()
            .name("frugal-prepare".into())
            .spawn_scoped(scope, move || {
                for job in next_job {
                    let ready = job.and_then(|(place, batch)| {
                        catch_panics(
                            || format!("preparing the batch of step {}", place.step + 1),
                            || task.prepare(&batch, input_for(&place)),
                        )
                        .map(|x| (place, x))
                    });
                    if prepared.send(ready).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| TrainError::Failed(format!("cannot start a thread: {e}")))?;
        let submit = |schedule: &mut Schedule<'_>| {
            if let Some(job) = schedule.next() {
                // A closed channel means the thread ended; the next receive reports it.
                let _ = jobs.send(job);
            }
        };
        submit(&mut schedule);

        let mut pending = Deferred::new();
        let mut window_seconds = 0.0;
        let mut window_samples = 0u64;
        while state.step < stop {
            let step = state.step;
            let began = Instant::now();
            let scale = if spec.precision.scales_loss() {
                state.scaler.scale
            } else {
                1.0
            };
            let compute = compute_copy(&model, spec.precision);
            let mut acc = Accumulator::new();
            let place = loop {
                let (place, input) = next_prepared.recv().map_err(|_| {
                    TrainError::Failed("the thread preparing batches stopped".into())
                })??;
                submit(&mut schedule);
                let out = task.step(&compute, input, input_for(&place), scale)?;
                device_peak.sample();
                acc.add_output(&compute, out);
                if place.last {
                    break place;
                }
            };
            let samples = acc.samples() as u64;
            let correct = acc.correct();
            state.window.solves.merge(&acc.solves());
            let StepGrads { loss, mut grads } = acc.finish(&compute);
            drop(compute);
            grads_to_f32(&model, &mut grads);
            let apply = if spec.precision.scales_loss() {
                scale_grads(&model, &mut grads, 1.0 / scale);
                state.scaler.update(grads_finite(&model, &grads)?) == ScaledStep::Apply
            } else {
                true
            };
            let lr = schedule_lr.at(step);
            if apply {
                model = optim.step(lr, model, grads);
            }
            pending.push(loss, correct, samples);
            state.step += 1;
            state.samples_total += samples;
            state.epoch = place.epoch;
            state.consumed = place.consumed;
            let mut spent = began.elapsed().as_secs_f64();
            observe(Event::Step { step: state.step });

            let epoch_end = place.epoch_done;
            let last = state.step == total;
            let log_due = state.step.is_multiple_of(spec.log_every.max(1)) || last || epoch_end;
            let eval_due = data.test.is_some()
                && (last
                    || if spec.eval_every > 0 {
                        state.step.is_multiple_of(spec.eval_every)
                    } else {
                        epoch_end
                    });
            let checkpoint_due = (spec.checkpoint_every > 0
                && state.step.is_multiple_of(spec.checkpoint_every))
                || state.step == stop;
            if log_due || eval_due || checkpoint_due {
                // Waits for the device to finish the steps queued so far: training time.
                let began = Instant::now();
                for r in pending.read()? {
                    state.window.loss_sum += r.loss * r.samples as f64;
                    state.window.samples += r.samples;
                    if let Some(c) = r.correct {
                        state.window.correct += c;
                        state.window.has_accuracy = true;
                    }
                }
                spent += began.elapsed().as_secs_f64();
            }
            state.train_seconds += spent;
            window_seconds += spent;
            window_samples += samples;

            if log_due {
                let w = std::mem::take(&mut state.window);
                let solves = w.solves.summary();
                let record = Record {
                    split: Split::Train,
                    step: state.step,
                    epoch: state.epoch,
                    loss: w.loss_sum / w.samples.max(1) as f64,
                    accuracy: w
                        .has_accuracy
                        .then(|| w.correct as f64 / w.samples.max(1) as f64),
                    lr: Some(lr),
                    loss_scale: spec.precision.scales_loss().then_some(state.scaler.scale),
                    samples_per_s: Some(window_samples as f64 / window_seconds.max(1e-9)),
                    iterations_mean: solves.map(|s| s.0),
                    iterations_max: solves.map(|s| s.1),
                    unconverged: solves.map(|s| s.2),
                };
                window_seconds = 0.0;
                window_samples = 0;
                log.push(record.clone())
                    .map_err(|e| TrainError::io(log.path(), e))?;
                observe(Event::Record(&record));
            }
            if let Some(test) = &data.test
                && eval_due
            {
                let out = evaluate(
                    task,
                    &model,
                    test,
                    task.eval_batch(spec.batch_size),
                    spec.order.window,
                    ad,
                )?;
                let n = out.samples.max(1) as f64;
                let record = Record {
                    split: Split::Eval,
                    step: state.step,
                    epoch: state.epoch,
                    loss: out.loss_sum / n,
                    accuracy: out.correct.map(|c| c as f64 / n),
                    lr: None,
                    loss_scale: None,
                    samples_per_s: None,
                    iterations_mean: None,
                    iterations_max: None,
                    unconverged: None,
                };
                log.push(record.clone())
                    .map_err(|e| TrainError::io(log.path(), e))?;
                observe(Event::Record(&record));
            }
            if checkpoint_due {
                log.sync().map_err(|e| TrainError::io(log.path(), e))?;
                make_snapshot(&state, &model, &optim)?.save(&checkpoint_path)?;
                observe(Event::Checkpoint { step: state.step });
            }
        }
        Ok(model)
    })?;
    log.sync().map_err(|e| TrainError::io(log.path(), e))?;
    let model_file = dir.join(MODEL_FILE);
    let finished = state.step == total;
    if finished {
        save_model(&model, &model_file)?;
    }
    let records = log.into_records();
    let last = |split| records.iter().rev().find(|r: &&Record| r.split == split);
    let (last_train, last_eval) = (last(Split::Train).cloned(), last(Split::Eval).cloned());
    Ok(Summary {
        steps: state.step,
        total_steps: total,
        finished,
        resumed_from,
        train_loss: last_train.as_ref().map(|r| r.loss),
        train_accuracy: last_train.and_then(|r| r.accuracy),
        test_loss: last_eval.as_ref().map(|r| r.loss),
        test_accuracy: last_eval.and_then(|r| r.accuracy),
        samples: state.samples_total,
        train_seconds: state.train_seconds,
        samples_per_s: state.samples_total as f64 / state.train_seconds.max(1e-9),
        skipped_steps: state.scaler.skipped,
        peak_device_bytes: device_peak.peak(),
        model_file,
        records,
    })
}
