use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::particles::{Particles, Vec3s};
use crate::tree::Octree;

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

/// How forces are computed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum Method {
    /// Every pair, O(N²): exact to rounding.
    Direct,
    /// A Barnes–Hut octree, O(N log N): a cell of size s at distance d from the target
    /// (to its centre of mass) acts as one mass when d > s/θ + δ, δ being the distance of
    /// its centre of mass from its geometric centre.
    BarnesHut {
        /// The opening angle θ (0.5 is the usual compromise).
        theta: f64,
    },
}

/// Targets per parallel task: enough to amortize a task, few enough to balance 2–64 cores.
const TARGETS_PER_TASK: usize = 64;
/// Independent accumulators per target in the pair loop, so it vectorizes (a single sum is
/// a serial dependency the compiler may not reorder).
const LANES: usize = 4;

/// The accelerations of every particle into `acc` (resized to fit), by `method`, on all
/// cores when `parallel` (else on the calling thread, for callers that run many small
/// simulations side by side).
pub fn accelerations(
    p: &Particles,
    gravity: Gravity,
    method: Method,
    parallel: bool,
    acc: &mut Vec3s,
) {
    let n = p.len();
    for a in acc.iter_mut() {
        a.clear();
        a.resize(n, 0.0);
    }
    match method {
        Method::Direct => direct(p, gravity, parallel, acc),
        Method::BarnesHut { theta } => {
            Octree::build(p, theta).accelerations(gravity, parallel, acc);
        }
    }
}

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

fn direct(p: &Particles, gravity: Gravity, parallel: bool, acc: &mut Vec3s) {
    let eps2 = gravity.softening * gravity.softening;
    let sources = [&p.pos[0][..], &p.pos[1][..], &p.pos[2][..]];
    for_target_chunks(acc, parallel, |first, [ax, ay, az]| {
        for t in 0..ax.len() {
            let a = pull(p.position(first + t), sources, &p.mass, eps2);
            ax[t] = gravity.g * a[0];
            ay[t] = gravity.g * a[1];
            az[t] = gravity.g * a[2];
        }
    });
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
            let inv = if r2 > 0.0 { 1.0 / r2.sqrt() } else { 0.0 };
            let s = ms[l] * inv * inv * inv;
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

/// The softened potential energy −G Σ_{i<j} mᵢ mⱼ / √(r²ᵢⱼ + ε²), by direct summation.
pub fn potential_energy(p: &Particles, gravity: Gravity, parallel: bool) -> f64 {
    let eps2 = gravity.softening * gravity.softening;
    let row = |i: usize| -> f64 {
        let r = p.position(i);
        let mut sum = 0.0;
        for j in i + 1..p.len() {
            let (dx, dy, dz) = (p.pos[0][j] - r[0], p.pos[1][j] - r[1], p.pos[2][j] - r[2]);
            let r2 = dx * dx + dy * dy + dz * dz + eps2;
            if r2 > 0.0 {
                sum += p.mass[j] / r2.sqrt();
            }
        }
        p.mass[i] * sum
    };
    let total: f64 = if parallel {
        // Rows shrink with i: interleave short and long ones across tasks.
        (0..p.len()).into_par_iter().with_min_len(16).map(row).sum()
    } else {
        (0..p.len()).map(row).sum()
    };
    -gravity.g * total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_particles_attract_by_the_softened_inverse_square() {
        let mut p = Particles::with_capacity(2);
        p.push([0.0; 3], [0.0; 3], 2.0);
        p.push([3.0, 0.0, 4.0], [0.0; 3], 1.0);
        let gravity = Gravity::softened(0.0);
        let mut acc = Vec3s::default();
        accelerations(&p, gravity, Method::Direct, false, &mut acc);
        // |r| = 5: particle 0 is pulled towards 1 by m₁/25, along (3, 0, 4)/5.
        assert!((acc[0][0] - 3.0 / 125.0).abs() < 1e-15);
        assert!((acc[2][0] - 4.0 / 125.0).abs() < 1e-15);
        assert!((acc[0][1] + 2.0 * 3.0 / 125.0).abs() < 1e-15);
        assert!((potential_energy(&p, gravity, false) + 2.0 / 5.0).abs() < 1e-15);
        let soft = Gravity::softened(5.0);
        accelerations(&p, soft, Method::Direct, true, &mut acc);
        let expected = 3.0 / 50f64.powf(1.5);
        assert!((acc[0][0] - expected).abs() < 1e-15);
        assert!((potential_energy(&p, soft, true) + 2.0 / 50f64.sqrt()).abs() < 1e-15);
    }
}
