use serde::{Deserialize, Serialize};

/// Three coordinate arrays, x, y and z: a structure of arrays, so the pair loops read each
/// coordinate contiguously and vectorize.
pub type Vec3s = [Vec<f64>; 3];

/// Particles as a structure of arrays: positions, velocities and masses.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Particles {
    /// Positions.
    pub pos: Vec3s,
    /// Velocities.
    pub vel: Vec3s,
    /// Masses.
    pub mass: Vec<f64>,
}

impl Particles {
    /// No particles, room for `n`.
    pub fn with_capacity(n: usize) -> Self {
        let v = || Vec::with_capacity(n);
        Self {
            pos: [v(), v(), v()],
            vel: [v(), v(), v()],
            mass: v(),
        }
    }

    /// Adds one particle.
    pub fn push(&mut self, pos: [f64; 3], vel: [f64; 3], mass: f64) {
        for k in 0..3 {
            self.pos[k].push(pos[k]);
            self.vel[k].push(vel[k]);
        }
        self.mass.push(mass);
    }

    /// The number of particles.
    pub fn len(&self) -> usize {
        self.mass.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.mass.is_empty()
    }

    /// Position of particle `i`.
    pub fn position(&self, i: usize) -> [f64; 3] {
        [self.pos[0][i], self.pos[1][i], self.pos[2][i]]
    }

    /// Velocity of particle `i`.
    pub fn velocity(&self, i: usize) -> [f64; 3] {
        [self.vel[0][i], self.vel[1][i], self.vel[2][i]]
    }

    /// The total mass.
    pub fn total_mass(&self) -> f64 {
        self.mass.iter().sum()
    }

    /// Σ m v²/2.
    pub fn kinetic_energy(&self) -> f64 {
        (0..self.len())
            .map(|i| {
                let v = self.velocity(i);
                0.5 * self.mass[i] * (v[0] * v[0] + v[1] * v[1] + v[2] * v[2])
            })
            .sum()
    }

    /// Σ m v.
    pub fn momentum(&self) -> [f64; 3] {
        let mut p = [0.0; 3];
        for (k, pk) in p.iter_mut().enumerate() {
            *pk = self.vel[k].iter().zip(&self.mass).map(|(v, m)| v * m).sum();
        }
        p
    }

    /// Σ m r × v about the origin.
    pub fn angular_momentum(&self) -> [f64; 3] {
        let mut l = [0.0; 3];
        for i in 0..self.len() {
            let (r, v, m) = (self.position(i), self.velocity(i), self.mass[i]);
            l[0] += m * (r[1] * v[2] - r[2] * v[1]);
            l[1] += m * (r[2] * v[0] - r[0] * v[2]);
            l[2] += m * (r[0] * v[1] - r[1] * v[0]);
        }
        l
    }

    /// The centre of mass and its velocity.
    pub fn centre_of_mass(&self) -> ([f64; 3], [f64; 3]) {
        let m = self.total_mass();
        let mut r = [0.0; 3];
        for (k, rk) in r.iter_mut().enumerate() {
            *rk = self.pos[k]
                .iter()
                .zip(&self.mass)
                .map(|(x, m)| x * m)
                .sum::<f64>()
                / m;
        }
        let p = self.momentum();
        (r, p.map(|p| p / m))
    }

    /// Moves to the centre-of-mass frame: the centre of mass at rest at the origin.
    pub fn to_centre_of_mass_frame(&mut self) {
        let (r, v) = self.centre_of_mass();
        for k in 0..3 {
            self.pos[k].iter_mut().for_each(|x| *x -= r[k]);
            self.vel[k].iter_mut().for_each(|x| *x -= v[k]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_centre_of_mass_frame_has_zero_momentum() {
        let mut p = Particles::with_capacity(2);
        p.push([1.0, 2.0, 3.0], [0.5, 0.0, -1.0], 2.0);
        p.push([-1.0, 0.0, 1.0], [0.0, 1.0, 0.0], 1.0);
        assert_eq!(p.momentum(), [1.0, 1.0, -2.0]);
        assert_eq!(p.kinetic_energy(), 0.5 * 2.0 * 1.25 + 0.5 * 1.0 * 1.0);
        p.to_centre_of_mass_frame();
        let (r, v) = p.centre_of_mass();
        for k in 0..3 {
            assert!(r[k].abs() < 1e-15 && v[k].abs() < 1e-15);
        }
    }
}
