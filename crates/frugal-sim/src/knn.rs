use std::num::NonZero;

use kiddo::{ImmutableKdTree, SquaredEuclidean};
use rayon::prelude::*;

/// A k-nearest-neighbour graph: every particle receives an edge from each of its `k`
/// nearest other particles, exactly `k` (ties broken by the k-d tree, itself never
/// included), as PyTorch Geometric's `knn_graph` builds with `flow = "source_to_target"`.
/// Edges are grouped by receiver: edges `i·k .. (i+1)·k` end at particle `i`, nearest
/// first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnnGraph {
    /// Neighbours per particle.
    pub k: usize,
    /// The sending (neighbour) particle of each edge.
    pub senders: Vec<u32>,
    /// The receiving particle of each edge.
    pub receivers: Vec<u32>,
}

/// Why a k-nearest-neighbour graph could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KnnError {
    /// `k` is 0, or not below the particle count.
    #[error(
        "a {k}-nearest-neighbour graph needs more than {k} particles and k ≥ 1; there are {particles}"
    )]
    Neighbours {
        /// Neighbours asked for.
        k: usize,
        /// Particles there are.
        particles: usize,
    },
    /// More particles than 32-bit edge indices address.
    #[error("{particles} particles are more than a graph indexes (2³² − 1)")]
    TooMany {
        /// Particles there are.
        particles: usize,
    },
    /// The k-d tree refused the positions.
    #[error("building the k-d tree: {reason}")]
    Tree {
        /// What the tree said.
        reason: String,
    },
}

/// The `k`-nearest-neighbour graph of `pos` from a k-d tree, queries spread over all
/// cores when `parallel` (each particle's neighbours are found independently, so the
/// result does not depend on the thread count). Needs `1 ≤ k < pos.len()`.
pub fn knn_graph(pos: &[[f32; 3]], k: usize, parallel: bool) -> Result<KnnGraph, KnnError> {
    let n = pos.len();
    if k == 0 || k >= n {
        return Err(KnnError::Neighbours { k, particles: n });
    }
    if u32::try_from(n).is_err() {
        return Err(KnnError::TooMany { particles: n });
    }
    let tree: ImmutableKdTree<f32, 3> =
        ImmutableKdTree::new_from_slice(pos).map_err(|e| KnnError::Tree {
            reason: format!("{e:?}"),
        })?;
    let wanted = NonZero::new(k + 1).expect("k + 1 ≥ 2");
    let neighbours = |i: usize, out: &mut [u32]| {
        let found = tree
            .query(&pos[i])
            .nearest_n::<SquaredEuclidean<f32>>(wanted)
            .execute();
        // The particle itself is nearest, unless another sits on the same spot; drop it
        // wherever it is, and keep k of the rest.
        let others = found.iter().map(|r| r.item).filter(|&j| j as usize != i);
        for (slot, j) in out.iter_mut().zip(others) {
            *slot = j;
        }
    };
    let mut senders = vec![0u32; n * k];
    if parallel {
        senders
            .par_chunks_mut(k)
            .enumerate()
            .for_each(|(i, out)| neighbours(i, out));
    } else {
        senders
            .chunks_mut(k)
            .enumerate()
            .for_each(|(i, out)| neighbours(i, out));
    }
    let receivers = (0..n as u32)
        .flat_map(|i| std::iter::repeat_n(i, k))
        .collect();
    Ok(KnnGraph {
        k,
        senders,
        receivers,
    })
}
