//! How a stack of blocks is cut into checkpoint segments: shared by the checkpointed
//! backward pass, which runs them, and the planner, which predicts what they keep.

use std::ops::Range;

/// Cuts `blocks` blocks into `segments` contiguous, near-equal ranges (at least one
/// segment, at most one per block).
pub fn segment_ranges(blocks: usize, segments: usize) -> Vec<Range<usize>> {
    let segments = segments.clamp(1, blocks.max(1));
    (0..segments)
        .map(|s| (s * blocks / segments)..((s + 1) * blocks / segments))
        .collect()
}

/// The default segment count for `blocks` blocks: ⌈√L⌉.
pub fn default_segments(blocks: usize) -> usize {
    (blocks as f64).sqrt().ceil() as usize
}
