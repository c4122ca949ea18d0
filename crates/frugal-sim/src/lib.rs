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

mod gravity;
mod init;
mod integrate;
mod knn;
mod particles;
mod record;
mod rng;
mod tree;

pub use gravity::{Gravity, Method, accelerations, potential_energy};
pub use init::{Initial, InitialError};
pub use integrate::{Energies, Simulation};
pub use knn::{KnnGraph, knn_graph};
pub use particles::{Particles, Vec3s};
pub use record::{RecordError, Recording, State};
pub use rng::Rng;
pub use tree::Octree;
