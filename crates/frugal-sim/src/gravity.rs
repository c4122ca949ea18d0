use std::ops::Range;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::pairs::{Gravity, LANES};
use crate::particles::{Particles, Vec3s};
use crate::tree::Octree;

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

/// One tile's share of the three acceleration arrays.
type TileAcc<'a> = [&'a mut [f64]; 3];

/// The number of tiles direct summation cuts `n` particles into: even (for the round-robin
/// schedule), about 128 particles each, and a function of `n` alone, so that results do not
/// depend on the thread count.
fn tile_count(n: usize) -> usize {
    (n.div_ceil(256) * 2).clamp(2, 256)
}

/// The round-robin ("circle") schedule of `tiles` tiles: `tiles − 1` rounds in which every
/// tile meets exactly one other, every pair meeting once in all.
fn rounds(tiles: usize) -> Vec<Vec<(usize, usize)>> {
    let m = tiles - 1;
    (0..m)
        .map(|r| {
            let mut round = vec![(r, m)];
            round.extend((1..tiles / 2).map(|k| ((r + k) % m, (r + m - k) % m)));
            round
        })
        .collect()
}

/// Direct summation that computes each pair once and applies it to both particles
/// (Newton's third law halves the work). The pairs are grouped by tiles: first every tile
/// with itself, then the rounds of a round-robin schedule, whose pairs of tiles are
/// disjoint and run in parallel without sharing an output. Every particle receives its
/// contributions in the same order whatever the thread count, so parallel and serial
/// results are identical to the bit.
fn direct(p: &Particles, gravity: Gravity, parallel: bool, acc: &mut Vec3s) {
    let n = p.len();
    let tiles = tile_count(n);
    let bounds: Vec<Range<usize>> = (0..tiles)
        .map(|t| t * n / tiles..(t + 1) * n / tiles)
        .collect();
    let eps2 = gravity.softening * gravity.softening;
    let mut slots: Vec<Option<TileAcc<'_>>> = {
        let [ax, ay, az] = acc;
        let (mut x, mut y, mut z) = (&mut ax[..], &mut ay[..], &mut az[..]);
        bounds
            .iter()
            .map(|r| {
                let len = r.len();
                let (tx, rx) = std::mem::take(&mut x).split_at_mut(len);
                let (ty, ry) = std::mem::take(&mut y).split_at_mut(len);
                let (tz, rz) = std::mem::take(&mut z).split_at_mut(len);
                (x, y, z) = (rx, ry, rz);
                Some([tx, ty, tz])
            })
            .collect()
    };
    let run = |tasks: &mut [(usize, TileAcc<'_>, usize, Option<TileAcc<'_>>)]| {
        let one = |(i, a, j, b): &mut (usize, TileAcc<'_>, usize, Option<TileAcc<'_>>)| {
            pair_tiles(p, &bounds[*i], a, &bounds[*j], b.as_mut(), eps2);
        };
        if parallel {
            tasks.par_iter_mut().for_each(one);
        } else {
            tasks.iter_mut().for_each(one);
        }
    };
    // Each tile with itself.
    let mut tasks: Vec<_> = (0..tiles)
        .map(|t| (t, slots[t].take().expect("a free tile"), t, None))
        .collect();
    run(&mut tasks);
    for (t, a, _, _) in tasks {
        slots[t] = Some(a);
    }
    for round in rounds(tiles) {
        let mut tasks: Vec<_> = round
            .iter()
            .map(|&(i, j)| {
                let a = slots[i].take().expect("tiles meet once a round");
                (i, a, j, slots[j].take())
            })
            .collect();
        run(&mut tasks);
        for (i, a, j, b) in tasks {
            slots[i] = Some(a);
            slots[j] = b;
        }
    }
    for a in acc.iter_mut() {
        a.iter_mut().for_each(|a| *a *= gravity.g);
    }
}

/// Adds the pairs between tile `ri` (accelerations `ai`) and tile `rj` (`aj`), or, with
/// `aj` absent, the pairs within tile `ri`.
fn pair_tiles(
    p: &Particles,
    ri: &Range<usize>,
    ai: &mut TileAcc<'_>,
    rj: &Range<usize>,
    mut aj: Option<&mut TileAcc<'_>>,
    eps2: f64,
) {
    for (t, i) in ri.clone().enumerate() {
        let (sources, first) = match aj {
            Some(_) => (rj.clone(), 0),
            None => (i + 1..ri.end, t + 1),
        };
        let r = p.position(i);
        let src = [0, 1, 2].map(|k| &p.pos[k][sources.clone()]);
        let m = &p.mass[sources.clone()];
        let pulled = match aj.as_mut() {
            Some(aj) => mutual(
                r,
                p.mass[i],
                src,
                m,
                aj.each_mut().map(|a| &mut a[first..]),
                eps2,
            ),
            None => {
                let [x, y, z] = ai.each_mut();
                let [x, y, z] = [&mut x[first..], &mut y[first..], &mut z[first..]];
                mutual(r, p.mass[i], src, m, [x, y, z], eps2)
            }
        };
        for k in 0..3 {
            ai[k][t] += pulled[k];
        }
    }
}

/// The pull of the sources on a particle at `r` of mass `mi` (returned, G left out), while
/// adding the particle's pull on each source to `out` (which holds the sources'
/// accelerations).
#[inline]
fn mutual(
    r: [f64; 3],
    mi: f64,
    [x, y, z]: [&[f64]; 3],
    mass: &[f64],
    [ox, oy, oz]: [&mut [f64]; 3],
    eps2: f64,
) -> [f64; 3] {
    let mut acc = [[0.0; LANES]; 3];
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn lanes(
        r: [f64; 3],
        mi: f64,
        eps2: f64,
        (x, y, z, m): (&[f64], &[f64], &[f64], &[f64]),
        (ox, oy, oz): (&mut [f64], &mut [f64], &mut [f64]),
        acc: &mut [[f64; LANES]; 3],
    ) {
        for l in 0..m.len() {
            let (dx, dy, dz) = (x[l] - r[0], y[l] - r[1], z[l] - r[2]);
            let r2 = dx * dx + dy * dy + dz * dz + eps2;
            let inv3 = if r2 > 0.0 {
                1.0 / (r2 * r2.sqrt())
            } else {
                0.0
            };
            let (si, sj) = (m[l] * inv3, mi * inv3);
            acc[0][l] += dx * si;
            acc[1][l] += dy * si;
            acc[2][l] += dz * si;
            ox[l] -= dx * sj;
            oy[l] -= dy * sj;
            oz[l] -= dz * sj;
        }
    }
    let n = mass.len();
    let whole = n - n % LANES;
    let mut inputs = x[..whole]
        .chunks_exact(LANES)
        .zip(y[..whole].chunks_exact(LANES))
        .zip(z[..whole].chunks_exact(LANES))
        .zip(mass[..whole].chunks_exact(LANES));
    let mut outputs = ox[..whole]
        .chunks_exact_mut(LANES)
        .zip(oy[..whole].chunks_exact_mut(LANES))
        .zip(oz[..whole].chunks_exact_mut(LANES));
    for ((((x, y), z), m), ((ox, oy), oz)) in (&mut inputs).zip(&mut outputs) {
        lanes(r, mi, eps2, (x, y, z, m), (ox, oy, oz), &mut acc);
    }
    lanes(
        r,
        mi,
        eps2,
        (&x[whole..n], &y[whole..n], &z[whole..n], &mass[whole..]),
        (&mut ox[whole..n], &mut oy[whole..n], &mut oz[whole..n]),
        &mut acc,
    );
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
    // Rows are computed in parallel but summed in order: a parallel reduction's tree
    // depends on work stealing, and the last bits of the energy would differ run to run.
    let total: f64 = if parallel {
        let rows: Vec<f64> = (0..p.len())
            .into_par_iter()
            .with_min_len(16)
            .map(row)
            .collect();
        rows.iter().sum()
    } else {
        (0..p.len()).map(row).sum()
    };
    -gravity.g * total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn potential_energy_is_the_same_in_parallel() {
        let p = crate::Initial::Plummer
            .generate(3000, 4, Gravity::softened(0.05))
            .unwrap();
        let serial = potential_energy(&p, Gravity::softened(0.05), false);
        for _ in 0..5 {
            assert_eq!(potential_energy(&p, Gravity::softened(0.05), true), serial);
        }
    }

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
