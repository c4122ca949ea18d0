use serde::{Deserialize, Serialize};

use crate::gravity::{Gravity, Method, accelerations, potential_energy};
use crate::particles::{Particles, Vec3s};

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
        self.kick(0.5 * dt);
        let p = &mut self.particles;
        for k in 0..3 {
            for (x, v) in p.pos[k].iter_mut().zip(&p.vel[k]) {
                *x += dt * v;
            }
        }
        accelerations(p, self.gravity, self.method, self.parallel, &mut self.acc);
        self.kick(0.5 * dt);
        self.time += dt;
        self.steps += 1;
    }

    fn kick(&mut self, dt: f64) {
        for k in 0..3 {
            for (v, a) in self.particles.vel[k].iter_mut().zip(&self.acc[k]) {
                *v += dt * a;
            }
        }
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
