//! The seam between the training engine and a model family: a [`Task`] says how a batch
//! becomes the model's inputs and how a step computes its loss and gradients; the loop,
//! the planner and the fitter drive any task the same way.

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor};
use frugal_store::Batch;

use crate::error::Result;
use crate::precision::Precision;
use crate::segments::default_segments;

/// What preparing and running one micro-batch need besides the model and the batch.
#[derive(Debug, Clone, Copy)]
pub struct StepInput<'a> {
    /// The autodiff device the model lives on.
    pub device: &'a Device,
    /// Compute precision; the model given is already cast to it.
    pub precision: Precision,
    /// Checkpoint segments, `None` for no checkpointing.
    pub segments: Option<usize>,
    /// Seed of this micro-batch's random streams (dropout, input noise).
    pub seed: u64,
}

/// What a micro-batch step returns. Its numbers stay on the device (one-element tensors):
/// the loop reads them back every `log_every` steps, not every step.
#[derive(Debug)]
pub struct StepOutput {
    /// Mean loss over the micro-batch, unscaled, as a one-element f32 tensor.
    pub loss: Tensor<1>,
    /// Gradients of the (scaled) mean loss.
    pub grads: GradientsParams,
    /// Samples classified right (a one-element integer tensor), for tasks with classes.
    pub correct: Option<Tensor<1, Int>>,
    /// Samples in the micro-batch.
    pub samples: usize,
    /// The fixed-point solves the step ran, for tasks that solve for an equilibrium
    /// (default: none).
    pub solves: crate::metrics::Solves,
}

/// What evaluating one batch returns, still on the device.
#[derive(Debug)]
pub struct EvalOutput {
    /// Sum of the per-sample losses, a one-element f32 tensor.
    pub loss_sum: Tensor<1>,
    /// Samples classified right (a one-element integer tensor), for tasks with classes.
    pub correct: Option<Tensor<1, Int>>,
    /// Samples in the batch.
    pub samples: usize,
}

/// A model family and its loss: what the loop trains.
///
/// A micro-batch goes through two calls: [`Task::prepare`] turns the stored batch into
/// the model's inputs on the device (host-side work such as building graphs, and the
/// upload), [`Task::step`] runs forward and backward on them. The loop prepares the next
/// micro-batch on another thread while the current one computes, so the device does not
/// wait for the host's share of the work.
pub trait Task: Sync {
    /// The model.
    type Model: Module;
    /// A micro-batch made ready for [`Task::step`]: its tensors, on the device.
    type Input: Send;
    /// A freshly initialized model on `device` (an autodiff device), drawing from the
    /// device's generator. The loop calls it on the CPU, seeded, and moves the model to
    /// the run's device ([`init_on_cpu`](crate::trainer::init_on_cpu)).
    fn init(&self, device: &Device) -> Self::Model;
    /// The model's inputs for one micro-batch, on `input.device`. Must not depend on
    /// anything but its arguments: it runs ahead of the step that uses it.
    fn prepare(&self, batch: &Batch, input: StepInput<'_>) -> Result<Self::Input>;
    /// Forward and backward over one prepared micro-batch, the loss multiplied by
    /// `loss_scale` before backward (1 unless f16).
    fn step(
        &self,
        model: &Self::Model,
        prepared: Self::Input,
        input: StepInput<'_>,
        loss_scale: f64,
    ) -> Result<StepOutput>;
    /// Evaluates one batch, without autodiff and without dropout.
    fn eval(&self, model: &Self::Model, batch: &Batch, device: &Device) -> Result<EvalOutput>;
    /// Samples per evaluation batch for a training batch of `batch_size`: by default a
    /// larger batch (evaluation keeps no activations), which a task whose samples are
    /// large (a graph of thousands of particles) overrides.
    fn eval_batch(&self, batch_size: usize) -> usize {
        eval_batch(batch_size)
    }
    /// Blocks of the model's stack, the units checkpointing recomputes
    /// ([`StepInput::segments`] groups them); 1 where the model has no such stack. The
    /// planner profiles what each block keeps.
    fn blocks(&self) -> usize {
        1
    }
    /// Checkpoint segments when checkpointing is asked for without a count: ⌈√blocks⌉
    /// ([`default_segments`](crate::checkpoint::default_segments)), which balances what
    /// is kept against what is recomputed for a stack of similar blocks. A task whose
    /// blocks are made to be recomputed one at a time says `self.blocks()`.
    fn checkpoint_segments(&self) -> usize {
        default_segments(self.blocks())
    }
}

/// The evaluation batch for a training batch of `batch_size`.
pub(crate) fn eval_batch(batch_size: usize) -> usize {
    batch_size.max(256)
}
