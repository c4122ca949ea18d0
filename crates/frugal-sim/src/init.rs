use std::f64::consts::PI;

use serde::{Deserialize, Serialize};

use crate::pairs::Gravity;
use crate::particles::Particles;
use frugal_rand::SplitMix64;

/// Initial conditions, in N-body units (G = 1, total mass 1, equal masses unless said),
/// in the centre-of-mass frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Initial {
    /// A Plummer sphere in equilibrium, scaled to Hénon units (E = −1/4, virial radius 1),
    /// sampled as Aarseth, Hénon and Wielen (1974); the outermost 0.1 % of the mass is
    /// left out so no particle starts absurdly far away.
    Plummer,
    /// Positions uniform in the cube [−1, 1]³, velocities isotropic Gaussian scaled to
    /// virial equilibrium (2K = −W).
    UniformCube,
    /// Positions uniform in the unit ball, at rest: the cold collapse.
    ColdCollapse,
    /// Two bodies of mass 1/2 on a circular orbit of separation 1 in the z = 0 plane
    /// (circular for the softened force too); needs exactly 2 particles.
    TwoBody,
}

/// A request that initial conditions cannot meet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitialError(pub String);

impl std::fmt::Display for InitialError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InitialError {}

impl Initial {
    /// All kinds, for listings and errors.
    pub const ALL: [Initial; 4] = [
        Initial::Plummer,
        Initial::UniformCube,
        Initial::ColdCollapse,
        Initial::TwoBody,
    ];

    /// The name used in configurations.
    pub fn name(self) -> &'static str {
        match self {
            Initial::Plummer => "plummer",
            Initial::UniformCube => "uniform_cube",
            Initial::ColdCollapse => "cold_collapse",
            Initial::TwoBody => "two_body",
        }
    }

    /// `n` particles drawn from seed `seed`; `gravity` sets the virial scaling and the
    /// two-body orbit speed.
    pub fn generate(
        self,
        n: usize,
        seed: u64,
        gravity: Gravity,
    ) -> Result<Particles, InitialError> {
        if self == Initial::TwoBody && n != 2 {
            return Err(InitialError(format!(
                "the two-body orbit has exactly 2 particles, not {n}"
            )));
        }
        if n == 0 {
            return Err(InitialError("at least one particle is needed".into()));
        }
        let mut rng = SplitMix64::new(seed);
        let m = 1.0 / n as f64;
        let mut p = Particles::with_capacity(n);
        match self {
            Initial::Plummer => {
                // Plummer units (a = 1) scaled to Hénon units: lengths × 3π/16, speeds ×
                // √(16/3π).
                let (length, speed) = (3.0 * PI / 16.0, (16.0 / (3.0 * PI)).sqrt());
                for _ in 0..n {
                    let x = rng.range(0.0, 0.999);
                    let r = 1.0 / (x.powf(-2.0 / 3.0) - 1.0).sqrt();
                    let q = loop {
                        let (q, y) = (rng.uniform(), rng.range(0.0, 0.1));
                        if y < q * q * (1.0 - q * q).powf(3.5) {
                            break q;
                        }
                    };
                    let v = q * 2f64.sqrt() * (1.0 + r * r).powf(-0.25);
                    let (dr, dv) = (direction(&mut rng), direction(&mut rng));
                    p.push(
                        dr.map(|d| d * r * length),
                        dv.map(|d| d * v * speed * gravity.g.sqrt()),
                        m,
                    );
                }
            }
            Initial::UniformCube => {
                for _ in 0..n {
                    let pos = [0; 3].map(|_| rng.range(-1.0, 1.0));
                    let vel = [0; 3].map(|_| normal(&mut rng));
                    p.push(pos, vel, m);
                }
                p.to_centre_of_mass_frame();
                let k = p.kinetic_energy();
                if k > 0.0 {
                    let w = crate::gravity::potential_energy(&p, gravity, true);
                    let scale = (-w / (2.0 * k)).sqrt();
                    for v in p.vel.iter_mut() {
                        v.iter_mut().for_each(|v| *v *= scale);
                    }
                }
            }
            Initial::ColdCollapse => {
                for _ in 0..n {
                    let r = rng.uniform().cbrt();
                    p.push(direction(&mut rng).map(|d| d * r), [0.0; 3], m);
                }
            }
            Initial::TwoBody => {
                // Relative orbit: ω² d = G M d / (d² + ε²)^{3/2} with d = 1, M = 1.
                let eps2 = gravity.softening * gravity.softening;
                let v = (gravity.g / (1.0 + eps2).powf(1.5)).sqrt();
                p.push([0.5, 0.0, 0.0], [0.0, 0.5 * v, 0.0], 0.5);
                p.push([-0.5, 0.0, 0.0], [0.0, -0.5 * v, 0.0], 0.5);
            }
        }
        p.to_centre_of_mass_frame();
        Ok(p)
    }

    /// The period of the two-body orbit under `gravity`.
    pub fn two_body_period(gravity: Gravity) -> f64 {
        let eps2 = gravity.softening * gravity.softening;
        2.0 * PI / (gravity.g / (1.0 + eps2).powf(1.5)).sqrt()
    }
}

/// A standard normal draw (Box–Muller).
/// A uniformly random unit vector.
fn direction(rng: &mut SplitMix64) -> [f64; 3] {
    let z = rng.range(-1.0, 1.0);
    let phi = rng.range(0.0, std::f64::consts::TAU);
    let s = (1.0 - z * z).max(0.0).sqrt();
    [s * phi.cos(), s * phi.sin(), z]
}

fn normal(rng: &mut SplitMix64) -> f64 {
    let u = 1.0 - rng.uniform();
    (-2.0 * u.ln()).sqrt() * (2.0 * PI * rng.uniform()).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directions_are_unit_and_isotropic() {
        let mut r = SplitMix64::new(9);
        let mut sum = [0.0; 3];
        for _ in 0..50_000 {
            let d = direction(&mut r);
            let norm = (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt();
            assert!((norm - 1.0).abs() < 1e-12);
            for k in 0..3 {
                sum[k] += d[k] / 50_000.0;
            }
        }
        assert!(sum.iter().all(|s| s.abs() < 0.01), "{sum:?}");
    }
}
