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
use crate::checkpoint::{StepGrads, segment_ranges, with_block_probe};
use crate::device::DevicePeak;
use crate::memory::{counting, heap_live, heap_peak, reset_heap_peak};
use crate::precision::{compute_copy, grads_to_f32};
use crate::snapshot::LoopState;
use crate::trainer::{AdamWSpec, READ_AHEAD_WINDOWS, init_seeded, make_snapshot, run_step};
use crate::{Precision, Result, StepInput, Task, TrainError};

/// Bytes held per f32 AdamW moment, per parameter; AdamW keeps two.
const MOMENT_BYTES: u64 = 4;

/// Resident memory beyond the heap's peak, as a fraction of the busiest phase's heap:
/// after many steps the system allocator holds freed tensors in per-thread arenas and
/// partly used pages, which the few profiling steps do not show. Calibrated with glibc on
/// the MNIST MLP and CNN runs of docs/benchmarks.md (RSS less heap peak less runtime was
/// 14–17 % of the heap peak there; 12 % puts those predictions within ±10 %).
pub const ALLOCATOR_SLACK: f64 = 0.12;

/// What one profiled step allocated, in bytes over what was held when it began.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepProfile {
    /// Micro-batch size.
    pub batch: usize,
    /// Kept by the input before the first block (profiles without checkpointing only).
    pub input: u64,
    /// Kept for backward by each block, the rise in held bytes across its forward
    /// (profiles without checkpointing only).
    pub blocks: Vec<u64>,
    /// The carry entering each block, a segment boundary's cost (profiles without
    /// checkpointing only).
    pub carries: Vec<u64>,
    /// Peak of forward and backward.
    pub step_peak: u64,
    /// Held after the step: the gradients it returns.
    pub grads: u64,
    /// Peak of the optimizer update over what was held before it.
    pub update_peak: u64,
    /// Peak of encoding a checkpoint over what was held before it.
    pub checkpoint_peak: u64,
}

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

/// A quantity measured at two batch sizes, extended linearly to others.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Linear {
    /// Bytes independent of the batch.
    pub fixed: f64,
    /// Bytes per sample.
    pub per_sample: f64,
}

impl Linear {
    /// The line through `(b1, v1)` and `(b2, v2)`; through the origin when `b1 == b2`.
    /// A negative slope (noise) is flattened.
    pub fn through(b1: usize, v1: u64, b2: usize, v2: u64) -> Self {
        let (b1, v1, b2, v2) = (b1 as f64, v1 as f64, b2 as f64, v2 as f64);
        if (b2 - b1).abs() < 0.5 {
            return Self {
                fixed: 0.0,
                per_sample: v2 / b2.max(1.0),
            };
        }
        let per_sample = ((v2 - v1) / (b2 - b1)).max(0.0);
        Self {
            fixed: (v2 - per_sample * b2).max(0.0),
            per_sample,
        }
    }

    /// The value at `batch`.
    pub fn at(&self, batch: usize) -> u64 {
        (self.fixed + self.per_sample * batch as f64).round() as u64
    }
}

/// Profiles of one configuration at four batch sizes: two small and two large.
///
/// A step's peak is the largest of several moments' sums (all activations at the start
/// of backward, all parameter gradients at its end, ...), each linear in the batch, so
/// the peak is a convex, piecewise-linear function of the batch. The small pair fixes
/// the line that dominates at small batches, the large pair (chosen so activations
/// outweigh the model state several times) the one that dominates at large ones; the
/// prediction is the larger of the two.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Profiles {
    /// Checkpoint segments profiled (`None`: every activation kept).
    pub segments: Option<usize>,
    /// Compute precision profiled.
    pub precision: Precision,
    /// Profiles at the smaller batches, in increasing order of batch.
    pub small: [StepProfile; 2],
    /// Profiles at the larger batches.
    pub large: [StepProfile; 2],
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

    /// `f` at `batch`: the larger of the small pair's line and the large pair's.
    fn at(&self, batch: usize, f: impl Fn(&StepProfile) -> u64) -> u64 {
        let line = |p: &[StepProfile; 2]| {
            Linear::through(p[0].batch, f(&p[0]), p[1].batch, f(&p[1])).at(batch)
        };
        line(&self.small).max(line(&self.large))
    }
}

/// One row of the breakdown.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Item {
    /// Short name.
    pub name: String,
    /// Bytes.
    pub bytes: u64,
    /// How it was found.
    pub note: String,
}

/// What one block keeps for backward at the planned batch.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BlockRow {
    /// Index in the stack.
    pub block: usize,
    /// Bytes kept for backward without checkpointing.
    pub kept_bytes: u64,
    /// Bytes of its input (kept when a segment starts here).
    pub input_bytes: u64,
}

/// What the planner needs besides the profiles.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlanInput {
    /// Model parameters.
    pub params: u64,
    /// Micro-batch size.
    pub batch: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Data reader buffers at this batch.
    pub data_bytes: u64,
    /// The process without any of the above: code, libraries, thread stacks.
    pub runtime_bytes: u64,
}

/// The predicted peak of a run, item by item.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemoryPlan {
    /// Micro-batch size.
    pub batch: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Compute precision.
    pub precision: Precision,
    /// Checkpoint segments (`None`: every activation kept).
    pub segments: Option<usize>,
    /// The breakdown; the peak is their sum.
    pub items: Vec<Item>,
    /// Activations per block (without checkpointing).
    pub blocks: Vec<BlockRow>,
    /// The sum of the items.
    pub predicted_peak_bytes: u64,
}

impl MemoryPlan {
    /// The plan at `input.batch`. `configured` profiles the run's own precision and
    /// segments; `plain` profiles the same without checkpointing (for the per-block rows;
    /// the same as `configured` when the run does not checkpoint).
    pub fn new(input: &PlanInput, configured: &Profiles, plain: &Profiles) -> Self {
        let b = input.batch;
        let p = input.params;
        let precision = configured.precision;
        let blocks: Vec<BlockRow> = (0..plain.large[1].blocks.len())
            .map(|i| BlockRow {
                block: i,
                kept_bytes: plain.at(b, |s| s.blocks.get(i).copied().unwrap_or(0)),
                input_bytes: plain.at(b, |s| s.carries.get(i).copied().unwrap_or(0)),
            })
            .collect();
        let input_bytes = plain.at(b, |s| s.input);
        let kept = match configured.segments {
            Some(s) if s > 0 && !blocks.is_empty() => {
                let ranges = segment_ranges(blocks.len(), s);
                let boundaries: u64 = ranges[1..]
                    .iter()
                    .map(|r| blocks[r.start].input_bytes)
                    .sum();
                let widest = ranges
                    .iter()
                    .map(|r| blocks[r.clone()].iter().map(|x| x.kept_bytes).sum::<u64>())
                    .max()
                    .unwrap_or(0);
                input_bytes + boundaries + widest
            }
            _ => input_bytes + blocks.iter().map(|x| x.kept_bytes).sum::<u64>(),
        };
        let step_peak = configured.at(b, |s| s.step_peak);
        let grads = configured.at(b, |s| s.grads);
        let update_peak = configured.at(b, |s| s.update_peak);
        let checkpoint_peak = configured.at(b, |s| s.checkpoint_peak);

        let weights = p * 4;
        let copy = if precision == Precision::F32 {
            0
        } else {
            p * precision.bytes()
        };
        let accumulated = if input.grad_accum > 1 { p * 4 } else { 0 };
        // The step, the update and a checkpoint do not overlap: the largest sets the peak.
        let step_phase = copy + accumulated + step_peak;
        let update_phase = grads.max(p * 4) + update_peak;
        let checkpoint_phase = checkpoint_peak;
        let activations = kept.min(step_peak);
        let busiest = step_phase.max(update_phase).max(checkpoint_phase);
        let workspace = busiest.saturating_sub(activations + copy + accumulated);
        let slack = (busiest as f64 * ALLOCATOR_SLACK).round() as u64;
        let mut items = vec![
            Item {
                name: "weights".into(),
                bytes: weights,
                note: format!("{p} parameters × 4 B (f32 master)"),
            },
            Item {
                name: "optimizer state".into(),
                bytes: 2 * MOMENT_BYTES * p,
                note: "AdamW: two f32 moments per parameter".into(),
            },
        ];
        if copy > 0 {
            items.push(Item {
                name: "compute copy".into(),
                bytes: copy,
                note: format!("{} weights for the forward and backward", precision.name()),
            });
        }
        if accumulated > 0 {
            items.push(Item {
                name: "accumulated gradients".into(),
                bytes: accumulated,
                note: format!("f32 sum over {} micro-batches", input.grad_accum),
            });
        }
        items.extend([
            Item {
                name: "activations".into(),
                bytes: activations,
                note: match configured.segments {
                    Some(s) => format!(
                        "kept for backward at batch {b}: input, {s} segment boundaries, the widest segment"
                    ),
                    None => format!("kept for backward at batch {b}: every block's"),
                },
            },
            Item {
                name: "gradients + workspace".into(),
                bytes: workspace,
                note: "the largest of: gradients and backward buffers, the optimizer update, encoding a checkpoint".into(),
            },
            Item {
                name: "allocator slack".into(),
                bytes: slack,
                note: format!(
                    "{:.0} % of the busiest phase: freed memory the allocator keeps",
                    ALLOCATOR_SLACK * 100.0
                ),
            },
            Item {
                name: "data buffers".into(),
                bytes: input.data_bytes,
                note: format!("{READ_AHEAD_WINDOWS} read-ahead windows at most, evaluation window, batches"),
            },
            Item {
                name: "runtime".into(),
                bytes: input.runtime_bytes,
                note: "code, libraries and thread stacks, measured".into(),
            },
        ]);
        let predicted_peak_bytes = items.iter().map(|i| i.bytes).sum();
        Self {
            batch: b,
            grad_accum: input.grad_accum,
            precision,
            segments: configured.segments,
            items,
            blocks,
            predicted_peak_bytes,
        }
    }
}

/// The largest batch in `1..=limit` for which `peak(batch) <= budget` (`peak` must grow
/// with the batch), or `None` if not even one sample fits.
pub fn max_batch(limit: usize, budget: u64, peak: impl Fn(usize) -> u64) -> Option<usize> {
    if limit == 0 || peak(1) > budget {
        return None;
    }
    let (mut lo, mut hi) = (1usize, limit);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if peak(mid) <= budget {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    Some(lo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_through_two_points() {
        let l = Linear::through(32, 1_000 + 32 * 50, 64, 1_000 + 64 * 50);
        assert_eq!(l.at(1024), 1_000 + 1024 * 50);
        // One point: proportional.
        assert_eq!(Linear::through(8, 800, 8, 800).at(16), 1600);
        // Noise that would make memory shrink with the batch is flattened.
        assert_eq!(Linear::through(8, 900, 16, 800).per_sample, 0.0);
    }

    #[test]
    fn the_largest_batch_that_fits() {
        let peak = |b: usize| 1_000 + 10 * b as u64;
        assert_eq!(max_batch(10_000, 2_000, peak), Some(100));
        assert_eq!(max_batch(50, 2_000, peak), Some(50));
        assert_eq!(max_batch(50, 1_005, peak), None);
        assert_eq!(max_batch(0, 2_000, peak), None);
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
