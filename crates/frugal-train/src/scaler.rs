//! Dynamic loss scaling for f16 training, with the semantics of PyTorch's `GradScaler`: the
//! loss is multiplied by a scale before backward so small gradients do not flush to zero in
//! half precision; gradients are divided by it before the optimizer step. A step whose
//! gradients hold an inf or NaN is skipped and the scale halved; after `growth_interval`
//! clean steps in a row the scale doubles.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Bool, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// What to do with a step's gradients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaledStep {
    /// The gradients are finite: unscale them and step.
    Apply,
    /// An inf or NaN: skip the optimizer step (the scale was halved).
    Skip,
}

/// The scaler's state; part of a training checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossScaler {
    /// Current scale.
    pub scale: f64,
    /// Clean steps since the scale last changed.
    pub clean_steps: u32,
    /// Clean steps after which the scale doubles.
    pub growth_interval: u32,
    /// Steps skipped so far.
    pub skipped: u64,
}

impl Default for LossScaler {
    fn default() -> Self {
        Self {
            scale: 65536.0,
            clean_steps: 0,
            growth_interval: 2000,
            skipped: 0,
        }
    }
}

/// Smallest and largest scale: below one a scale only loses precision; above 2^24 it
/// overflows f16 (max 65504) for any gradient above 2^-8.
const MIN_SCALE: f64 = 1.0;
const MAX_SCALE: f64 = 16_777_216.0;

impl LossScaler {
    /// Records a step's outcome and says whether to apply it.
    pub fn update(&mut self, finite: bool) -> ScaledStep {
        if !finite {
            self.scale = (self.scale * 0.5).max(MIN_SCALE);
            self.clean_steps = 0;
            self.skipped += 1;
            return ScaledStep::Skip;
        }
        self.clean_steps += 1;
        if self.clean_steps >= self.growth_interval {
            self.scale = (self.scale * 2.0).min(MAX_SCALE);
            self.clean_steps = 0;
        }
        ScaledStep::Apply
    }
}

struct Check<'a> {
    grads: &'a GradientsParams,
    finite: Vec<Tensor<1, Bool>>,
}

impl ModuleVisitor for Check<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            self.finite.push(g.is_finite().all());
        }
    }
}

/// True when every gradient of `model`'s parameters in `grads` is finite. The checks are
/// combined on the device and read once: one wait for the device per step, not one per
/// parameter.
pub fn grads_finite<M: Module>(model: &M, grads: &GradientsParams) -> Result<bool> {
    let mut check = Check {
        grads,
        finite: Vec::new(),
    };
    model.visit(&mut check);
    if check.finite.is_empty() {
        return Ok(true);
    }
    let all = Tensor::cat(check.finite, 0).all();
    let values = all
        .try_into_vec_as::<bool>()
        .map_err(|e| TrainError::Device(format!("checking the gradients for inf/NaN: {e}")))?;
    Ok(values.first().copied().unwrap_or(true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_grad_scaler() {
        let mut s = LossScaler::default();
        assert_eq!(s.scale, 65536.0);
        for _ in 0..1999 {
            assert_eq!(s.update(true), ScaledStep::Apply);
        }
        assert_eq!(s.scale, 65536.0);
        assert_eq!(s.update(true), ScaledStep::Apply);
        assert_eq!(s.scale, 131072.0, "doubles after 2000 clean steps");
        assert_eq!(s.update(false), ScaledStep::Skip);
        assert_eq!(s.scale, 65536.0, "halves on inf/NaN");
        assert_eq!(s.clean_steps, 0);
        assert_eq!(s.skipped, 1);
        for _ in 0..100 {
            s.update(false);
        }
        assert_eq!(s.scale, 1.0, "never below one");
    }
}
