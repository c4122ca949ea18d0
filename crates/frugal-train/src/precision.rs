//! Reduced-precision compute with f32 master weights.
//!
//! burn casts tensors (`Tensor::cast`) and runs bf16/f16 kernels on every backend, but has
//! no automatic mixed precision: mixing dtypes in one operation is an error. So a step in
//! bf16 or f16 runs on a copy of the model whose parameters are cast (keeping their ids),
//! with inputs cast the same way; its gradients are cast back to f32 and applied to the f32
//! master weights by the optimizer. f16 adds dynamic loss scaling ([`crate::LossScaler`]),
//! bf16 has f32's range and needs none.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{DType, FloatDType, Tensor};
use serde::{Deserialize, Serialize};

/// The number format of the compute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 throughout.
    #[default]
    F32,
    /// bfloat16 compute, f32 master weights.
    Bf16,
    /// float16 compute with dynamic loss scaling, f32 master weights.
    F16,
}

impl Precision {
    /// The float type of the compute.
    pub fn dtype(self) -> FloatDType {
        match self {
            Precision::F32 => FloatDType::F32,
            Precision::Bf16 => FloatDType::BF16,
            Precision::F16 => FloatDType::F16,
        }
    }

    /// Bytes per element of the compute.
    pub fn bytes(self) -> u64 {
        match self {
            Precision::F32 => 4,
            Precision::Bf16 | Precision::F16 => 2,
        }
    }

    /// Whether the loss is scaled (f16's narrow range underflows small gradients).
    pub fn scales_loss(self) -> bool {
        self == Precision::F16
    }

    /// The name used in configuration files.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        }
    }

    /// Casts an input tensor to the compute type.
    pub fn cast<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        if self == Precision::F32 && x.dtype() == DType::F32 {
            x
        } else {
            x.cast(self.dtype())
        }
    }
}

struct CastParams(FloatDType);

impl ModuleMapper for CastParams {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let dtype = self.0;
        // Cast first, then make the result a fresh leaf: the copy's gradients are its own.
        param.map(|t| t.cast(dtype).detach().require_grad())
    }
}

/// A copy of `master` computing in `precision`, sharing its parameter ids (so gradients
/// map back to the master's parameters). For f32 the master itself is returned.
pub fn compute_copy<M: Module>(master: &M, precision: Precision) -> M {
    match precision {
        Precision::F32 => master.clone(),
        p => master.clone().map(&mut CastParams(p.dtype())),
    }
}

struct ToF32<'a> {
    grads: &'a mut GradientsParams,
}

impl ModuleVisitor for ToF32<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.remove::<D>(param.id) {
            let g = if g.dtype() == DType::F32 {
                g
            } else {
                g.cast(FloatDType::F32)
            };
            self.grads.register(param.id, g);
        }
    }
}

/// Casts every gradient of `model`'s parameters in `grads` to f32, in place.
pub fn grads_to_f32<M: Module>(model: &M, grads: &mut GradientsParams) {
    model.visit(&mut ToF32 { grads });
}
