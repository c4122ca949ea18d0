//! The training engine of frugal, on burn: a training loop over out-of-core datasets
//! ([`trainer`]) with the techniques that fit more model and batch into less memory —
//! segment checkpointing with dropout replayed exactly ([`checkpoint`]), gradient
//! accumulation over micro-batches ([`accumulate`]), bf16/f16 compute on f32 master
//! weights ([`precision`]) with dynamic loss scaling ([`scaler`]) — exact checkpoints
//! ([`snapshot`]),.

pub mod accumulate;
pub mod checkpoint;
mod deferred;
pub mod device;
mod error;
pub mod fit;
pub mod memory;
pub mod metrics;
pub mod plan;
pub mod precision;
pub mod scaler;
pub mod schedule;
pub mod snapshot;
pub mod trainer;

pub use accumulate::Accumulator;
pub use checkpoint::{Block, Carry, Ctx, StepGrads, segment_ranges};
pub use deferred::{Deferred, StepResult};
pub use error::{Result, TrainError};
pub use fit::{Fit, Fitted, Planner, fit};
pub use precision::Precision;
pub use scaler::{LossScaler, ScaledStep};
pub use trainer::{
    EvalOutput, Evaluation, StepInput, StepOutput, Task, TrainData, TrainSpec, run_step, train,
};
