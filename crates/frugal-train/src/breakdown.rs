//! The planner's prediction: a run's peak memory, item by item, from profiles of short
//! steps at a few batch sizes. Pure arithmetic on measured numbers; the measuring is
//! `plan`'s.

use serde::Serialize;

use crate::precision::Precision;
use crate::segments::segment_ranges;

/// Windows of data a reader holds at most: the one being consumed and those read ahead.
pub const READ_AHEAD_WINDOWS: usize = 3;

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
    /// `f` at `batch`: the larger of the small pair's line and the large pair's.
    pub(crate) fn at(&self, batch: usize, f: impl Fn(&StepProfile) -> u64) -> u64 {
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
