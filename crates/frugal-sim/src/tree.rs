use std::ops::Range;

use crate::pairs::{Gravity, for_target_chunks, pull};
use crate::particles::{Particles, Vec3s};

/// Particles a cell may hold before it is split: a few direct pairs cost less than the
/// cells that would replace them.
const LEAF: usize = 8;
/// Cells stop splitting here, so coincident particles end in one (deep) leaf.
const MAX_DEPTH: usize = 48;

#[derive(Debug, Clone, Default)]
struct Cell {
    com: [f64; 3],
    mass: f64,
    /// (s/θ + δ)²: targets farther than this from the centre of mass see the cell as one
    /// mass.
    open2: f64,
    /// The cell's particles, as a range of the tree order.
    start: u32,
    end: u32,
    /// Children are stored together from here; none for a leaf.
    first_child: u32,
    children: u8,
}

/// A Barnes–Hut octree over a set of particles for one opening angle θ: cells hold
/// contiguous ranges of the particles sorted into tree order, so a leaf's particles and
/// nearby targets sit together in memory.
#[derive(Debug, Clone)]
pub struct Octree {
    cells: Vec<Cell>,
    /// Tree position `t` holds particle `order[t]`.
    order: Vec<u32>,
    pos: Vec3s,
    mass: Vec<f64>,
}

impl Octree {
    /// Builds the tree of `p` for opening angle `theta` (0 opens every cell: direct
    /// summation by another road).
    pub fn build(p: &Particles, theta: f64) -> Self {
        let n = p.len();
        let mut tree = Self {
            cells: Vec::with_capacity(n / 2 + 1),
            order: (0..n as u32).collect(),
            pos: Vec3s::default(),
            mass: Vec::new(),
        };
        if n == 0 {
            return tree;
        }
        let (mut lo, mut hi) = ([f64::INFINITY; 3], [f64::NEG_INFINITY; 3]);
        for k in 0..3 {
            for &x in &p.pos[k] {
                lo[k] = lo[k].min(x);
                hi[k] = hi[k].max(x);
            }
        }
        let centre = [0, 1, 2].map(|k| 0.5 * (lo[k] + hi[k]));
        let half = (0..3)
            .map(|k| 0.5 * (hi[k] - lo[k]))
            .fold(f64::MIN_POSITIVE, f64::max);
        tree.cells.push(Cell::default());
        let mut scratch = vec![0u32; n];
        tree.split(p, 0, 0..n, centre, half, 0, theta, &mut scratch);
        tree.pos = [0, 1, 2].map(|k| tree.order.iter().map(|&i| p.pos[k][i as usize]).collect());
        tree.mass = tree.order.iter().map(|&i| p.mass[i as usize]).collect();
        tree
    }

    /// Fills cell `at`, covering `range` of the tree order inside the cube of `centre` and
    /// half-side `half`, splitting it into octants until the leaves are small.
    #[allow(clippy::too_many_arguments)]
    fn split(
        &mut self,
        p: &Particles,
        at: usize,
        range: Range<usize>,
        centre: [f64; 3],
        half: f64,
        depth: usize,
        theta: f64,
        scratch: &mut [u32],
    ) {
        let (mut mass, mut moment) = (0.0, [0.0; 3]);
        let mut first_child = 0;
        let mut children = 0u8;
        if range.len() <= LEAF || depth == MAX_DEPTH {
            for &i in &self.order[range.clone()] {
                let i = i as usize;
                mass += p.mass[i];
                for (k, m) in moment.iter_mut().enumerate() {
                    *m += p.mass[i] * p.pos[k][i];
                }
            }
        } else {
            let octant = |i: u32| {
                let i = i as usize;
                (0..3).fold(0usize, |o, k| {
                    o | (usize::from(p.pos[k][i] > centre[k]) << k)
                })
            };
            let mut counts = [0usize; 8];
            for &i in &self.order[range.clone()] {
                counts[octant(i)] += 1;
            }
            let mut starts = [0usize; 8];
            for o in 1..8 {
                starts[o] = starts[o - 1] + counts[o - 1];
            }
            let mut next = starts;
            for &i in &self.order[range.clone()] {
                let o = octant(i);
                scratch[next[o]] = i;
                next[o] += 1;
            }
            self.order[range.clone()].copy_from_slice(&scratch[..range.len()]);
            first_child = self.cells.len();
            let occupied: Vec<usize> = (0..8).filter(|&o| counts[o] > 0).collect();
            children = occupied.len() as u8;
            self.cells
                .resize(first_child + occupied.len(), Cell::default());
            for (c, &o) in occupied.iter().enumerate() {
                let q = half / 2.0;
                let child_centre =
                    [0, 1, 2].map(|k| centre[k] + if o >> k & 1 == 1 { q } else { -q });
                let sub = range.start + starts[o]..range.start + starts[o] + counts[o];
                self.split(
                    p,
                    first_child + c,
                    sub,
                    child_centre,
                    q,
                    depth + 1,
                    theta,
                    scratch,
                );
                let child = &self.cells[first_child + c];
                mass += child.mass;
                for (k, m) in moment.iter_mut().enumerate() {
                    *m += child.mass * child.com[k];
                }
            }
        }
        let com = if mass > 0.0 {
            moment.map(|m| m / mass)
        } else {
            centre
        };
        let delta = (0..3)
            .map(|k| (com[k] - centre[k]).powi(2))
            .sum::<f64>()
            .sqrt();
        let open = 2.0 * half / theta + delta;
        self.cells[at] = Cell {
            com,
            mass,
            open2: open * open,
            start: range.start as u32,
            end: range.end as u32,
            first_child: first_child as u32,
            children,
        };
    }

    /// Σ over the tree of the pull on a target at `r` (G left out).
    fn pull_at(&self, r: [f64; 3], eps2: f64) -> [f64; 3] {
        let mut stack = [0u32; 8 * MAX_DEPTH + 8];
        let mut top = 1;
        let mut a = [0.0; 3];
        while top > 0 {
            top -= 1;
            let cell = &self.cells[stack[top] as usize];
            if cell.children == 0 {
                let range = cell.start as usize..cell.end as usize;
                let sources = [0, 1, 2].map(|k| &self.pos[k][range.clone()]);
                let part = pull(r, sources, &self.mass[range], eps2);
                for k in 0..3 {
                    a[k] += part[k];
                }
                continue;
            }
            let d = [0, 1, 2].map(|k| cell.com[k] - r[k]);
            let r2 = d[0] * d[0] + d[1] * d[1] + d[2] * d[2];
            if r2 > cell.open2 {
                let inv = 1.0 / (r2 + eps2).sqrt();
                let s = cell.mass * inv * inv * inv;
                for k in 0..3 {
                    a[k] += d[k] * s;
                }
            } else {
                for c in 0..cell.children as u32 {
                    stack[top] = cell.first_child + c;
                    top += 1;
                }
            }
        }
        a
    }

    /// The accelerations of the particles the tree was built from, in their own order,
    /// into `acc` (already sized to them).
    pub fn accelerations(&self, gravity: Gravity, parallel: bool, acc: &mut Vec3s) {
        let n = self.order.len();
        if n == 0 {
            return;
        }
        let eps2 = gravity.softening * gravity.softening;
        // Targets in tree order: neighbours walk the same cells one after another.
        let mut sorted: Vec3s = [vec![0.0; n], vec![0.0; n], vec![0.0; n]];
        for_target_chunks(&mut sorted, parallel, |first, [ax, ay, az]| {
            for t in 0..ax.len() {
                let r = [0, 1, 2].map(|k| self.pos[k][first + t]);
                let a = self.pull_at(r, eps2);
                ax[t] = a[0];
                ay[t] = a[1];
                az[t] = a[2];
            }
        });
        for k in 0..3 {
            for (t, &i) in self.order.iter().enumerate() {
                acc[k][i as usize] = gravity.g * sorted[k][t];
            }
        }
    }
}
