//! The training engine of frugal, on burn: techniques that fit more model and batch into
//! less memory. So far: segment checkpointing of a stack of blocks with dropout replayed
//! exactly ([`checkpoint`]) and gradient accumulation over micro-batches ([`accumulate`]).

pub mod accumulate;
pub mod checkpoint;

pub use accumulate::Accumulator;
pub use checkpoint::{Block, Ctx, StepGrads, segment_ranges};
