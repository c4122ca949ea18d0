//! The training engine of frugal, on burn: techniques that fit more model and batch into
//! less memory. So far: segment checkpointing of a stack of blocks with dropout replayed
//! exactly ([`checkpoint`]).

pub mod checkpoint;

pub use checkpoint::{Block, Ctx, segment_ranges};
