//! Recording simulations for a dataset: the settings every recorded state depends on, and
//! the loop that runs one seeded simulation and hands its states out.

use serde::{Deserialize, Serialize};

use frugal_rand::{GOLDEN_GAMMA, SplitMix64};

use crate::{Gravity, Initial, InitialError, Method, Simulation, Vec3s};

/// Everything a dataset of recorded simulations depends on: the same settings give the
/// same bytes on every machine, so a resumed recording, and a worker that runs some of its
/// simulations, must use exactly these. Unknown fields are refused rather than ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recording {
    /// Particles per simulation.
    pub particles: usize,
    /// Simulations in the dataset.
    pub simulations: u64,
    /// Recorded states per simulation (the initial state included).
    pub steps: u64,
    /// Leapfrog steps between recorded states.
    pub record_every: u64,
    /// Leapfrog time step.
    pub dt: f64,
    /// Plummer softening length.
    pub softening: f64,
    /// Initial conditions, taken in turn by simulation index.
    pub initial: Vec<Initial>,
    /// How forces are computed.
    pub method: Method,
    /// The dataset's seed; each simulation's is derived from it and its index.
    pub seed: u64,
}

/// One recorded state of a simulation: positions, velocities and accelerations as
/// little-endian f32 bytes, particle-major (x, y, z of particle 0, then of particle 1, ...).
#[derive(Debug, Clone, Copy)]
pub struct State<'a> {
    /// Which recorded state of the simulation (0: the initial conditions).
    pub step: u64,
    /// Positions.
    pub pos: &'a [u8],
    /// Velocities.
    pub vel: &'a [u8],
    /// Accelerations.
    pub acc: &'a [u8],
}

/// Settings a recording cannot run with.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// A setting outside its range.
    #[error("`{field}` = {value}: {expected}")]
    OutOfRange {
        /// The setting.
        field: &'static str,
        /// Its value.
        value: String,
        /// What it must be.
        expected: &'static str,
    },
    /// One simulation's states would exceed what one job may return.
    #[error(
        "one simulation would record {bytes} bytes (more than {limit}): split it into shorter simulations"
    )]
    TooLarge {
        /// Bytes of one simulation's states.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// A simulation index beyond the recording's.
    #[error("simulation {index} is not one of the {simulations} recorded")]
    NoSuchSimulation {
        /// The index asked for.
        index: u64,
        /// Simulations in the recording.
        simulations: u64,
    },
    /// The initial conditions of a simulation could not be made.
    #[error("simulation {index}: {cause}")]
    Initial {
        /// The simulation.
        index: u64,
        /// Why.
        cause: InitialError,
    },
}

impl Recording {
    /// Bytes of one recorded state's positions, velocities and accelerations (f32).
    pub fn state_bytes(&self) -> usize {
        self.particles.saturating_mul(36)
    }

    /// Bytes of one simulation's recorded states.
    pub fn simulation_bytes(&self) -> usize {
        (self.steps as usize).saturating_mul(self.state_bytes())
    }

    /// Checks the ranges of the settings, and that one simulation's states stay within
    /// `max_simulation_bytes` (what one job may send back, say).
    pub fn validate(&self, max_simulation_bytes: usize) -> Result<(), RecordError> {
        let out = |field, value: String, expected| {
            Err(RecordError::OutOfRange {
                field,
                value,
                expected,
            })
        };
        let positive = |x: f64| x.is_finite() && x > 0.0;
        if self.particles < 2 {
            return out("particles", self.particles.to_string(), "at least 2");
        }
        if self.simulations == 0 {
            return out("simulations", "0".into(), "at least 1");
        }
        if self.steps == 0 {
            return out("steps", "0".into(), "at least 1");
        }
        if self.record_every == 0 {
            return out("record_every", "0".into(), "at least 1");
        }
        if self.initial.is_empty() {
            return out(
                "initial",
                "[]".into(),
                "at least one kind (plummer, uniform_cube, cold_collapse, two_body)",
            );
        }
        if !positive(self.dt) {
            return out("dt", self.dt.to_string(), "a positive number");
        }
        if !(self.softening.is_finite() && self.softening >= 0.0) {
            return out("softening", self.softening.to_string(), "zero or more");
        }
        if self.simulation_bytes() > max_simulation_bytes {
            return Err(RecordError::TooLarge {
                bytes: self.simulation_bytes(),
                limit: max_simulation_bytes,
            });
        }
        Ok(())
    }

    /// The initial conditions and seed of simulation `index`.
    pub fn job(&self, index: u64) -> (Initial, u64) {
        let initial = self.initial[(index % self.initial.len() as u64) as usize];
        let seed = SplitMix64::new(self.seed ^ index.wrapping_mul(GOLDEN_GAMMA)).next_u64();
        (initial, seed)
    }

    /// Runs simulation `index` on this thread, handing each recorded [`State`] to `emit`.
    /// `check` runs before every leapfrog step and stops the simulation with its error.
    pub fn record<E: From<RecordError>>(
        &self,
        index: u64,
        check: &mut dyn FnMut() -> Result<(), E>,
        emit: &mut dyn FnMut(State<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        if index >= self.simulations {
            return Err(RecordError::NoSuchSimulation {
                index,
                simulations: self.simulations,
            }
            .into());
        }
        let (initial, seed) = self.job(index);
        let gravity = Gravity::softened(self.softening);
        let start = initial
            .generate(self.particles, seed, gravity)
            .map_err(|cause| RecordError::Initial { index, cause })?;
        let mut sim = Simulation::new(start, gravity, self.method, false);
        let interleave = |v: &Vec3s| -> Vec<u8> {
            let mut bytes = Vec::with_capacity(self.particles * 12);
            for i in 0..self.particles {
                for axis in v {
                    bytes.extend_from_slice(&(axis[i] as f32).to_le_bytes());
                }
            }
            bytes
        };
        for step in 0..self.steps {
            if step > 0 {
                for _ in 0..self.record_every {
                    check()?;
                    sim.step(self.dt);
                }
            }
            emit(State {
                step,
                pos: &interleave(&sim.particles.pos),
                vel: &interleave(&sim.particles.vel),
                acc: &interleave(&sim.acc),
            })?;
        }
        Ok(())
    }
}

/// For callers whose errors are text (a farm job's, say).
impl From<RecordError> for String {
    fn from(e: RecordError) -> Self {
        e.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recording() -> Recording {
        Recording {
            particles: 16,
            simulations: 3,
            steps: 4,
            record_every: 2,
            dt: 0.01,
            softening: 0.05,
            initial: vec![Initial::Plummer, Initial::UniformCube],
            method: Method::Direct,
            seed: 7,
        }
    }

    fn states(r: &Recording, index: u64) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        r.record::<RecordError>(index, &mut || Ok(()), &mut |s| {
            assert_eq!(s.pos.len(), r.particles * 12);
            out.push((s.step, [s.pos, s.vel, s.acc].concat()));
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn a_simulation_records_the_same_bytes_every_time() {
        let r = recording();
        let a = states(&r, 1);
        assert_eq!(a.iter().map(|s| s.0).collect::<Vec<_>>(), [0, 1, 2, 3]);
        assert_eq!(a, states(&r, 1));
        assert_ne!(a, states(&r, 2), "each simulation has its own seed");
        assert_eq!(r.job(1).0, Initial::UniformCube);
    }

    #[test]
    fn recordings_are_fixed_forever() {
        // A dataset regenerated from its settings must be the one written before: pin the
        // bytes of both initial conditions' simulations (FNV-1a, defined here so the pin
        // does not depend on a hasher's version).
        let fnv = |states: Vec<(u64, Vec<u8>)>| {
            states
                .iter()
                .flat_map(|(_, bytes)| bytes)
                .fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
                    (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
                })
        };
        let r = recording();
        assert_eq!(fnv(states(&r, 0)), 6_546_007_852_206_512_093);
        assert_eq!(fnv(states(&r, 1)), 13_918_122_067_868_275_068);
    }

    #[test]
    fn settings_out_of_range_are_named() {
        let r = recording();
        assert_eq!(r.validate(usize::MAX), Ok(()));
        let bad = Recording {
            dt: 0.0,
            ..r.clone()
        };
        match bad.validate(usize::MAX) {
            Err(RecordError::OutOfRange { field: "dt", .. }) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(
            r.validate(10),
            Err(RecordError::TooLarge {
                bytes: 4 * 16 * 36,
                limit: 10
            })
        );
        let err = r
            .record::<RecordError>(3, &mut || Ok(()), &mut |_| Ok(()))
            .unwrap_err();
        assert!(matches!(
            err,
            RecordError::NoSuchSimulation { index: 3, .. }
        ));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let mut v = serde_json::to_value(recording()).unwrap();
        v["theta"] = 0.5.into();
        assert!(serde_json::from_value::<Recording>(v).is_err());
    }
}
