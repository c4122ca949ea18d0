use serde::{Deserialize, Serialize};

use crate::gravity::{Method, accelerations, potential_energy};
use crate::pairs::Gravity;
use crate::particles::{Particles, Vec3s};

/// Half a leapfrog kick: `v += dt/2 · a`, element by element.
fn kick(v: &mut [f64], a: &[f64], dt: f64) {
    for (v, a) in v.iter_mut().zip(a) {
        *v += 0.5 * dt * a;
    }
}

/// A leapfrog drift: `x += dt · v`, element by element.
fn drift(x: &mut [f64], v: &[f64], dt: f64) {
    for (x, v) in x.iter_mut().zip(v) {
        *x += dt * v;
    }
}

/// `steps` kick-drift-kick steps of `dt` for any force: positions and velocities as flat
/// slices of the same layout, `accelerations` giving the accelerations at a state in that
/// layout. [`Simulation`] steps gravity this way; a learned force (a network predicting
/// accelerations) is rolled out with the same integrator so the two compare like for like.
/// Returns the accelerations at the final state.
pub fn leapfrog<E>(
    x: &mut [f64],
    v: &mut [f64],
    dt: f64,
    steps: u64,
    mut accelerations: impl FnMut(&[f64], &[f64]) -> Result<Vec<f64>, E>,
) -> Result<Vec<f64>, E> {
    let mut a = accelerations(x, v)?;
    for _ in 0..steps {
        kick(v, &a, dt);
        drift(x, v, dt);
        a = accelerations(x, v)?;
        kick(v, &a, dt);
    }
    Ok(a)
}

/// Kinetic, potential and total energy.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Energies {
    /// Σ m v²/2.
    pub kinetic: f64,
    /// The softened potential energy.
    pub potential: f64,
    /// Their sum.
    pub total: f64,
}

/// Particles advanced by the kick-drift-kick leapfrog: half a kick with the current
/// accelerations, a full drift, new accelerations, half a kick. One force evaluation per
/// step; symplectic and time-reversible, so energy errors oscillate, bounded, and scale as
/// dt² instead of growing.
#[derive(Debug, Clone)]
pub struct Simulation {
    /// The particles' current state.
    pub particles: Particles,
    /// Their accelerations at the current positions.
    pub acc: Vec3s,
    /// Simulated time.
    pub time: f64,
    /// Steps taken.
    pub steps: u64,
    gravity: Gravity,
    method: Method,
    parallel: bool,
}

impl Simulation {
    /// Starts from `particles`, computing their accelerations. `parallel` spreads each force
    /// evaluation over all cores; leave it off when running many simulations side by side.
    pub fn new(particles: Particles, gravity: Gravity, method: Method, parallel: bool) -> Self {
        let mut acc = Vec3s::default();
        accelerations(&particles, gravity, method, parallel, &mut acc);
        Self {
            particles,
            acc,
            time: 0.0,
            steps: 0,
            gravity,
            method,
            parallel,
        }
    }

    /// One step of `dt`.
    pub fn step(&mut self, dt: f64) {
        let p = &mut self.particles;
        for k in 0..3 {
            kick(&mut p.vel[k], &self.acc[k], dt);
            drift(&mut p.pos[k], &p.vel[k], dt);
        }
        accelerations(p, self.gravity, self.method, self.parallel, &mut self.acc);
        for k in 0..3 {
            kick(&mut p.vel[k], &self.acc[k], dt);
        }
        self.time += dt;
        self.steps += 1;
    }

    /// The energies now (the potential by direct summation, O(N²)).
    pub fn energies(&self) -> Energies {
        let kinetic = self.particles.kinetic_energy();
        let potential = potential_energy(&self.particles, self.gravity, self.parallel);
        Energies {
            kinetic,
            potential,
            total: kinetic + potential,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spring(x: &[f64], _: &[f64]) -> Result<Vec<f64>, ()> {
        Ok(x.iter().map(|x| -x).collect())
    }

    #[test]
    fn leapfrog_keeps_energy_and_runs_backwards() {
        let (mut x, mut v) = (vec![1.0, 0.0], vec![0.0, 0.5]);
        let energy = |x: &[f64], v: &[f64]| -> f64 {
            x.iter().zip(v).map(|(x, v)| 0.5 * (x * x + v * v)).sum()
        };
        let e0 = energy(&x, &v);
        leapfrog(&mut x, &mut v, 0.01, 10_000, spring).unwrap();
        // Symplectic: the error oscillates at O(dt²) instead of growing over 100 periods…
        assert!((energy(&x, &v) - e0).abs() / e0 < 1e-4);
        // …and time-reversible: reversed velocities retrace the path to the start.
        v.iter_mut().for_each(|v| *v = -*v);
        leapfrog(&mut x, &mut v, 0.01, 10_000, spring).unwrap();
        assert!((x[0] - 1.0).abs() < 1e-9 && x[1].abs() < 1e-9, "{x:?}");
        assert!(v[0].abs() < 1e-9 && (v[1] + 0.5).abs() < 1e-9, "{v:?}");
    }
}
