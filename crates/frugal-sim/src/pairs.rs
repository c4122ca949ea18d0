//! The softened pair force every method sums, and how targets are split across threads:
//! shared by direct summation (gravity.rs) and the tree (tree.rs).

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::particles::Vec3s;

/// Newtonian gravity with Plummer softening: particles at distance r attract as if at
/// distance √(r² + ε²), which bounds close-encounter forces (and so the step size they
/// need) while leaving forces beyond a few ε as they were.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Gravity {
    /// The gravitational constant (1 in N-body units).
    pub g: f64,
    /// The softening length ε.
    pub softening: f64,
}

impl Gravity {
    /// G = 1 with softening length `softening`.
    pub fn softened(softening: f64) -> Self {
        Self { g: 1.0, softening }
    }
}

/// Targets per parallel task: enough to amortize a task, few enough to balance 2–64 cores.
pub(crate) const TARGETS_PER_TASK: usize = 64;
/// Independent accumulators per target in the pair loop, so it vectorizes (a single sum is
/// a serial dependency the compiler may not reorder).
pub(crate) const LANES: usize = 4;

/// Splits the three output arrays into matching chunks of targets and fills each with
/// `fill(first_target, [ax, ay, az])`, in parallel when asked.
pub(crate) fn for_target_chunks(
    acc: &mut Vec3s,
    parallel: bool,
    fill: impl Fn(usize, [&mut [f64]; 3]) + Sync,
) {
    let [ax, ay, az] = acc;
    let c = TARGETS_PER_TASK;
    if parallel {
        ax.par_chunks_mut(c)
            .zip(ay.par_chunks_mut(c))
            .zip(az.par_chunks_mut(c))
            .enumerate()
            .for_each(|(i, ((x, y), z))| fill(i * c, [x, y, z]));
    } else {
        ax.chunks_mut(c)
            .zip(ay.chunks_mut(c))
            .zip(az.chunks_mut(c))
            .enumerate()
            .for_each(|(i, ((x, y), z))| fill(i * c, [x, y, z]));
    }
}

/// Σⱼ mⱼ (rⱼ − r) / (|rⱼ − r|² + ε²)^{3/2} over the sources `pos`, `mass` (G left out). A
/// source at `r` itself adds nothing: its offset is zero (and with ε = 0 its inverse
/// distance is taken as zero).
#[inline]
pub(crate) fn pull(r: [f64; 3], pos: [&[f64]; 3], mass: &[f64], eps2: f64) -> [f64; 3] {
    let mut acc = [[0.0; LANES]; 3];
    let lanes = |xs: &[f64], ys: &[f64], zs: &[f64], ms: &[f64], acc: &mut [[f64; LANES]; 3]| {
        for l in 0..xs.len() {
            let (dx, dy, dz) = (xs[l] - r[0], ys[l] - r[1], zs[l] - r[2]);
            let r2 = dx * dx + dy * dy + dz * dz + eps2;
            let inv3 = if r2 > 0.0 {
                1.0 / (r2 * r2.sqrt())
            } else {
                0.0
            };
            let s = ms[l] * inv3;
            acc[0][l] += dx * s;
            acc[1][l] += dy * s;
            acc[2][l] += dz * s;
        }
    };
    let [x, y, z] = pos;
    let (xc, yc, zc, mc) = (
        x.chunks_exact(LANES),
        y.chunks_exact(LANES),
        z.chunks_exact(LANES),
        mass.chunks_exact(LANES),
    );
    let (xr, yr, zr, mr) = (
        xc.remainder(),
        yc.remainder(),
        zc.remainder(),
        mc.remainder(),
    );
    for (((xs, ys), zs), ms) in xc.zip(yc).zip(zc).zip(mc) {
        lanes(xs, ys, zs, ms, &mut acc);
    }
    lanes(xr, yr, zr, mr, &mut acc);
    acc.map(|lanes| lanes.iter().sum())
}
