//! The memory planner: predicts the peak memory of a training run before it starts, item
//! by item (seed 002's table), and the largest batch that fits a budget.
//!
//! Model state is counted from the parameters (DeepSpeed's formulas: f32 weights,
//! f32 gradients, two f32 AdamW moments, plus a compute copy for bf16/f16). Activations
//! cannot be counted that way without restating every kernel's memory behaviour, so the
//! planner *profiles* them: it runs real steps of the model at two small batches under
//! the [counting allocator](crate::memory), records what each block keeps for backward
//! and the step's peak, and extrapolates linearly in the batch (activation memory is
//! linear in the batch; the fixed part, such as matmul packing buffers, is what the two
//! points separate). The data buffers follow from the reader's window sizes, and the
//! runtime (code, thread stacks, allocator bookkeeping) is measured in the planning
//! process itself.

use burn::tensor::Device;
use frugal_store::{Batch, Dataset, OrderSpec, StreamOptions};
use serde::Serialize;

use crate::accumulate::Accumulator;
use crate::checkpoint::{StepGrads, with_block_probe};
use crate::device::DevicePeak;
use crate::memory::{counting, heap_live, heap_peak, reset_heap_peak};
use crate::precision::{compute_copy, grads_to_f32};
use crate::snapshot::LoopState;
use crate::trainer::{AdamWSpec, init_seeded, make_snapshot, run_step};
use crate::{Precision, Result, StepInput, Task, TrainError};

pub use crate::breakdown::{
    ALLOCATOR_SLACK, BlockRow, Item, Linear, MemoryPlan, PlanInput, Profiles, StepProfile,
    max_batch,
};

/// Profiles one step of `task` at the size of `batch` (the second of two, so lazily
/// created state is excluded), with `segments` checkpointing and `precision` compute.
pub fn profile_step<T: Task>(
    task: &T,
    batch: &Batch,
    device: &Device,
    precision: Precision,
    segments: Option<usize>,
) -> Result<StepProfile> {
    if !counting() {
        return Err(TrainError::NoCountingAllocator {
            what: "the memory planner",
        });
    }
    let ad = device.clone().autodiff();
    let mut model = init_seeded(task, 0, &ad);
    let mut optim = AdamWSpec::default().init();
    let mut result = None;
    for round in 0..2u64 {
        let compute = compute_copy(&model, precision);
        let start = reset_heap_peak();
        let marks = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let sink = marks.clone();
        let step = || {
            let input = StepInput {
                device: &ad,
                precision,
                segments,
                seed: round,
            };
            run_step(task, &compute, batch, input, 1.0)
        };
        // Per-block figures only mean "kept for backward" without checkpointing (a
        // checkpointed pass runs its blocks several times, without and with a graph).
        let out = if segments.is_none() {
            with_block_probe(
                move |_, carry| sink.borrow_mut().push((heap_live(), carry)),
                step,
            )?
        } else {
            step()?
        };
        let step_peak = heap_peak().saturating_sub(start);
        let grads_held = heap_live().saturating_sub(start);
        drop(compute);
        let mut grads = out.grads;
        grads_to_f32(&model, &mut grads);
        let before = reset_heap_peak();
        model = optim.step(1e-3, model, grads);
        let update_peak = heap_peak().saturating_sub(before);
        let before = reset_heap_peak();
        drop(make_snapshot(&LoopState::default(), &model, &optim)?.encode());
        let checkpoint_peak = heap_peak().saturating_sub(before);
        let marks = marks.borrow();
        let blocks = marks.len().saturating_sub(1);
        result = Some(StepProfile {
            batch: batch.samples,
            input: marks.first().map_or(0, |m| m.0.saturating_sub(start)),
            blocks: marks
                .windows(2)
                .take(blocks)
                .map(|w| w[1].0.saturating_sub(w[0].0))
                .collect(),
            carries: marks.iter().map(|m| m.1).collect(),
            step_peak,
            grads: grads_held,
            update_peak,
            checkpoint_peak,
        });
    }
    Ok(result.expect("two rounds ran"))
}

/// What one whole optimizer step held and took, measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepMeasure {
    /// The most heap bytes held at once during the step over what was held before the
    /// model was created: weights, optimizer moments, the compute copy, activations kept
    /// for backward, gradients and their accumulation.
    pub peak_bytes: u64,
    /// The most the device's allocator reserved during the steps (see
    /// [`crate::device::DevicePeak`]); `None` on the CPU backend.
    pub peak_device_bytes: Option<u64>,
    /// Wall time of a step, every micro-batch's forward and backward and the update, until
    /// the device finished: the median of the timed steps.
    pub seconds: f64,
    /// Wall time of every timed step.
    pub step_seconds: Vec<f64>,
}

/// Runs whole optimizer steps of a fresh model of `task` — every batch of `micro_batches`
/// as one micro-batch, gradients accumulated, then the AdamW update: one to warm up (it
/// creates lazily allocated state: packing buffers, optimizer moments, compiled kernels),
/// then `timed` more (at least one), and measures them.
pub fn measure_step<T: Task>(
    task: &T,
    micro_batches: &[Batch],
    device: &Device,
    precision: Precision,
    segments: Option<usize>,
    timed: usize,
) -> Result<StepMeasure> {
    if !counting() {
        return Err(TrainError::NoCountingAllocator {
            what: "measuring a step",
        });
    }
    if !device.supports_dtype(precision.dtype()) {
        return Err(TrainError::Unsupported(format!(
            "the device has no {} arithmetic; choose another precision",
            precision.name()
        )));
    }
    // What earlier measurements left in the allocator's pools is not this step's.
    device.memory_cleanup();
    let baseline = heap_live();
    let ad = device.clone().autodiff();
    let mut model = init_seeded(task, 0, &ad);
    let mut optim = AdamWSpec::default().init();
    let mut device_peak = DevicePeak::new(device);
    let mut peak_bytes = 0;
    let mut step_seconds = Vec::new();
    let timed = timed.max(1);
    for round in 0..=timed as u64 {
        reset_heap_peak();
        let began = std::time::Instant::now();
        let compute = compute_copy(&model, precision);
        let mut acc = Accumulator::new();
        for (micro, batch) in micro_batches.iter().enumerate() {
            let input = StepInput {
                device: &ad,
                precision,
                segments,
                seed: round * 1000 + micro as u64,
            };
            acc.add_output(&compute, run_step(task, &compute, batch, input, 1.0)?);
            device_peak.sample();
        }
        let StepGrads { mut grads, .. } = acc.finish(&compute);
        drop(compute);
        grads_to_f32(&model, &mut grads);
        model = optim.step(1e-3, model, grads);
        // The device runs asynchronously: the step has taken its time once it is done.
        device
            .sync()
            .map_err(|e| TrainError::Device(format!("running a training step: {e}")))?;
        let seconds = began.elapsed().as_secs_f64();
        device_peak.sample();
        if round > 0 {
            peak_bytes = peak_bytes.max(heap_peak().saturating_sub(baseline));
            step_seconds.push(seconds);
        }
    }
    let mut sorted = step_seconds.clone();
    sorted.sort_by(f64::total_cmp);
    let seconds = if sorted.len() % 2 == 1 {
        sorted[sorted.len() / 2]
    } else {
        (sorted[sorted.len() / 2 - 1] + sorted[sorted.len() / 2]) / 2.0
    };
    Ok(StepMeasure {
        peak_bytes,
        peak_device_bytes: device_peak.peak(),
        seconds,
        step_seconds,
    })
}

/// The first `n` samples of `data` as one batch, read without a read-ahead window larger
/// than the batch.
pub fn first_batch(data: &Dataset, n: usize) -> Result<Batch> {
    let sample = data.manifest().schema.sample_bytes() as u64;
    let n = n.clamp(1, data.len().max(1) as usize);
    let spec = OrderSpec::for_budget(frugal_store::Order::Sequential, n as u64 * sample, sample);
    let mut stream = data.stream(StreamOptions::new(spec, 0, 0, n))?;
    match stream.next() {
        Some(b) => Ok(b?),
        None => Err(TrainError::NoSamples {
            dir: data.dir().to_owned(),
            what: "no samples".into(),
        }),
    }
}

impl Profiles {
    /// Profiles `task` at 8 and 16 samples, then at `b/2` and `b`, where `b` makes the
    /// activations about four times the model state (64 ≤ `b` ≤ 4096), but no more than
    /// the run's own `batch`: planning never needs more memory than the run. A run of
    /// fewer than 16 samples per micro-batch (large samples, such as the states of a
    /// particle system) is profiled at half its batch and its batch (at least 1 and 2).
    pub fn measure<T: Task>(
        task: &T,
        data: &Dataset,
        device: &Device,
        precision: Precision,
        segments: Option<usize>,
        params: u64,
        batch: usize,
    ) -> Result<Self> {
        let limit = data.len().max(1) as usize;
        let pair = |b2: usize| -> Result<[StepProfile; 2]> {
            let b2 = b2.clamp(1, limit);
            let b1 = b2.div_ceil(2);
            Ok([
                profile_step(task, &first_batch(data, b1)?, device, precision, segments)?,
                profile_step(task, &first_batch(data, b2)?, device, precision, segments)?,
            ])
        };
        let small = pair(batch.clamp(2, 16))?;
        // What grows with the batch: the activations kept where the blocks were probed,
        // else the step's peak (which understates it at small batches).
        let kept = |p: &StepProfile| match segments {
            None => p.input + p.blocks.iter().sum::<u64>(),
            Some(_) => p.step_peak,
        };
        let per_sample = Linear::through(
            small[0].batch,
            kept(&small[0]),
            small[1].batch,
            kept(&small[1]),
        )
        .per_sample
        .max(1.0);
        let model_state = (16 * params) as f64;
        let b = ((4.0 * model_state / per_sample).ceil() as usize)
            .clamp(64, 4096)
            .min(batch.max(2));
        let large = pair(b)?;
        Ok(Self {
            segments,
            precision,
            small,
            large,
        })
    }
}

/// The device memory of a GPU run, predicted from short runs at two smaller micro-batches.
///
/// On a GPU, activations, weights, optimizer moments and workspace live in the device's
/// memory, whose allocator the host heap profile does not see. Each probe is the caller's
/// short run of the real loop at a micro-batch (its steps, the batch prepared ahead, an
/// evaluation and a checkpoint), its device peak read from the allocator's reservation
/// ([`crate::device::DevicePeak`]); that peak is linear in the micro-batch, so the line
/// through the two probes is extended to the configured batch. The probes are a quarter
/// and half of it, so an evaluation batch that follows the training batch grows in them as
/// it will in the run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DevicePlan {
    /// The micro-batches probed and the device peak each reserved.
    pub probes: Vec<(usize, u64)>,
    /// The line through the probes.
    pub line: Linear,
    /// The micro-batch planned for.
    pub batch: usize,
    /// The predicted device peak at `batch`.
    pub predicted_peak_device_bytes: u64,
}

impl DevicePlan {
    /// Probes at a quarter and half of `batch` (distinct, at least 1 and 2) with
    /// `probe(micro_batch)`, which returns a short run's device peak, and predicts the peak
    /// at `batch`.
    pub fn measure(batch: usize, mut probe: impl FnMut(usize) -> Result<u64>) -> Result<Self> {
        let batch = batch.max(1);
        let small = (batch / 4).max(1);
        let large = (batch / 2).max(small + 1);
        let probes = vec![(small, probe(small)?), (large, probe(large)?)];
        let ((b1, v1), (b2, v2)) = (probes[0], probes[1]);
        let line = Linear::through(b1, v1, b2, v2);
        Ok(Self {
            probes,
            line,
            batch,
            predicted_peak_device_bytes: line.at(batch),
        })
    }
}
