//! The training engine of frugal, on burn: techniques that fit more model and batch into
//! less memory. So far: segment checkpointing of a stack of blocks with dropout replayed
//! exactly ([`checkpoint`]), gradient accumulation over micro-batches ([`accumulate`]) and
//! dynamic loss scaling for f16 ([`scaler`]).

pub mod accumulate;
pub mod checkpoint;
pub mod scaler;

pub use accumulate::Accumulator;
pub use checkpoint::{Block, Ctx, StepGrads, segment_ranges};
pub use scaler::{LossScaler, ScaledStep};
