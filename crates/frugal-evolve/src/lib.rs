//! Evolutionary optimisation for frugal, in ask/tell form: the optimiser proposes
//! candidates and is told their results, and never evaluates anything itself.
//!
//! Evaluations — training a model, running a simulation — are the expensive part and run
//! elsewhere, on as many workers as there are, finishing in any order. An [`Evolution`]
//! therefore only breeds candidates ([`Evolution::ask`], [`Evolution::ask_one`]) and ranks
//! the results it is told ([`Evolution::tell`], [`Evolution::tell_one`]). Its whole state
//! serializes, so a run can be checkpointed after any result and resumed bit for bit, and
//! each candidate carries its own evaluation seed, so results depend neither on the number
//! of workers nor on the order results come back.
//!
//! Three methods ([`Method`]): a generational GA with elitism and (μ+λ) evolution for one
//! objective, and NSGA-II for several. All breed with tournament selection, simulated binary
//! crossover and polynomial mutation ([`operators`]) over a box of real and whole-number
//! genes ([`Space`]), and handle constraints and failed evaluations through Deb's
//! feasibility rules ([`Fitness`]). [`problems`] has the standard test functions.
//!
//! ```
//! use frugal_evolve::{Evolution, Fitness, Method, Settings, problems};
//!
//! let settings = Settings::new(Method::Ga, 20, 7);
//! let mut run = Evolution::new(problems::sphere_space(3), settings, 1).unwrap();
//! for _ in 0..30 {
//!     let batch = run.ask();
//!     // Evaluated here in order; a job farm would do it anywhere, in any order.
//!     let results = batch
//!         .into_iter()
//!         .map(|c| {
//!             let f = Fitness::single(problems::sphere(&c.genes));
//!             (c, f)
//!         })
//!         .collect();
//!     run.tell(results).unwrap();
//! }
//! assert!(run.hall_of_fame()[0].1.objectives[0] < 0.1);
//! ```

mod error;
mod evolution;
mod fitness;
pub mod kinds;
pub mod operators;
pub mod pareto;
pub mod problems;
mod rng;
pub mod run;
mod settings;
mod space;

pub use error::EvolveError;
pub use evolution::{Candidate, Evolution, ObjectiveStats, Stats};
pub use fitness::Fitness;
pub use settings::{Method, Settings};
pub use space::{Gene, Space};
