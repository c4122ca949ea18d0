//! Gradient accumulation: a batch too large for memory is run as micro-batches whose
//! gradients add up to the whole batch's, then the optimizer steps once.
//!
//! With a loss that is a mean over the batch, the batch gradient is the sum of the
//! micro-batch gradients weighted by their share of the samples: micro-batches may differ in
//! size (the last one of an epoch often does) without changing the result.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Int, Tensor};

use crate::StepOutput;
use crate::checkpoint::StepGrads;
use crate::metrics::Solves;

/// Sums micro-batch gradients, weighted by sample count. Losses and right answers stay on
/// the device: nothing here waits for it.
#[derive(Debug, Default)]
pub struct Accumulator {
    total: GradientsParams,
    losses: Vec<(Tensor<1>, usize)>,
    correct: Option<Tensor<1, Int>>,
    samples: usize,
    solves: Solves,
}

struct AddScaled<'a> {
    total: &'a mut GradientsParams,
    part: &'a mut GradientsParams,
    weight: f64,
}

/// Moves every gradient of `model`'s parameters from `part` into `total`, multiplied by
/// `weight` and added to what `total` holds.
pub(crate) fn add_scaled<M: Module>(
    model: &M,
    total: &mut GradientsParams,
    part: &mut GradientsParams,
    weight: f64,
) {
    model.visit(&mut AddScaled {
        total,
        part,
        weight,
    });
}

/// Multiplies every gradient of `model`'s parameters by `factor` (`1 / scale` unscales a
/// loss-scaled step's gradients).
pub fn scale_grads<M: Module>(model: &M, grads: &mut GradientsParams, factor: f64) {
    let mut part = std::mem::take(grads);
    add_scaled(model, grads, &mut part, factor);
}

impl ModuleVisitor for AddScaled<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.part.remove::<D>(param.id) {
            let g = if self.weight == 1.0 {
                g
            } else {
                g * self.weight
            };
            let sum = match self.total.remove::<D>(param.id) {
                Some(previous) => previous + g,
                None => g,
            };
            self.total.register(param.id, sum);
        }
    }
}

impl Accumulator {
    /// An empty accumulator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the gradients of a micro-batch of `samples` samples whose loss is the mean over
    /// those samples. `model` names the parameters (every module whose gradients `step`
    /// holds).
    pub fn add<M: Module>(&mut self, model: &M, mut step: StepGrads, samples: usize) {
        // The first micro-batch's gradients are kept as they are: a step of one
        // micro-batch (the usual case) is then its own mean, with no pass over the
        // gradients. A second one weights the first by its samples before adding.
        match self.losses.as_slice() {
            [] => self.total = step.grads,
            [(_, first)] => {
                let mut first_grads = std::mem::take(&mut self.total);
                add_scaled(model, &mut self.total, &mut first_grads, *first as f64);
                add_scaled(model, &mut self.total, &mut step.grads, samples as f64);
            }
            _ => add_scaled(model, &mut self.total, &mut step.grads, samples as f64),
        }
        self.losses.push((step.loss, samples));
        self.samples += samples;
    }

    /// Adds a micro-batch step's output (its loss, gradients, right answers and sample
    /// count).
    pub fn add_output<M: Module>(&mut self, model: &M, out: StepOutput) {
        if let Some(c) = out.correct {
            self.correct = Some(match self.correct.take() {
                Some(sum) => sum + c,
                None => c,
            });
        }
        self.solves.merge(&out.solves);
        let step = StepGrads {
            loss: out.loss,
            grads: out.grads,
        };
        self.add(model, step, out.samples);
    }

    /// Micro-batch samples added so far.
    pub fn samples(&self) -> usize {
        self.samples
    }

    /// The fixed-point solves of the micro-batches so far.
    pub fn solves(&self) -> Solves {
        self.solves
    }

    /// Right answers so far, summed on the device; `None` for a task without classes.
    pub fn correct(&self) -> Option<Tensor<1, Int>> {
        self.correct.clone()
    }

    /// The gradients and mean loss of the whole batch.
    ///
    /// # Panics
    ///
    /// If no micro-batch was added.
    pub fn finish<M: Module>(self, model: &M) -> StepGrads {
        let n = self.samples.max(1) as f64;
        let mut grads = self.total;
        // One micro-batch (the usual case) is its own mean: no arithmetic.
        let loss = if let [(loss, _)] = self.losses.as_slice() {
            loss.clone()
        } else {
            scale_grads(model, &mut grads, 1.0 / n);
            let mut parts = self.losses.into_iter().map(|(l, s)| l * (s as f64 / n));
            let first = parts.next().expect("a step has at least one micro-batch");
            parts.fold(first, |sum, l| sum + l)
        };
        StepGrads { loss, grads }
    }
}
