//! Gravitational N-body physics for frugal: the simulator behind the particle datasets.
//!
//! Units are N-body units: G = 1, and the initial conditions have total mass 1. Gravity is
//! Plummer-softened ([`Gravity`]); forces come from direct summation over all pairs or from
//! a Barnes–Hut octree ([`Method`]); [`Simulation`] advances with the kick-drift-kick
//! leapfrog, which is symplectic and time-reversible, so the energy error stays bounded and
//! scales as dt². Positions, velocities and accelerations are stored as structures of
//! arrays ([`Particles`]) so the pair loops vectorize; the force loops run on all cores.
//! [`knn_graph`] gives the k-nearest-neighbour graph a particle network learns on, and
//! [`Recording`] runs seeded simulations for a dataset, the same bytes on every machine.
//!
//! ```
//! use frugal_sim::{Gravity, Initial, Method, Simulation};
//!
//! // A circular two-body orbit: a thousand leapfrog steps keep its energy.
//! let gravity = Gravity::softened(0.0);
//! let start = Initial::TwoBody.generate(2, 1, gravity)?;
//! let mut sim = Simulation::new(start, gravity, Method::Direct, false);
//! let before = sim.energies().total;
//! for _ in 0..1000 {
//!     sim.step(1e-3);
//! }
//! assert!(((sim.energies().total - before) / before).abs() < 1e-6);
//! # Ok::<(), frugal_sim::InitialError>(())
//! ```

mod gravity;
mod init;
mod integrate;
mod knn;
mod pairs;
mod particles;
mod record;
mod tree;

pub use gravity::{Method, accelerations, potential_energy};
pub use init::{Initial, InitialError};
pub use integrate::{Energies, Simulation, leapfrog};
pub use knn::{KnnError, KnnGraph, knn_graph};
pub use pairs::Gravity;
pub use particles::{Particles, Vec3s};
pub use record::{RecordError, Recording, State};
pub use tree::Octree;
