//! Drivers shared by the integration tests: they play the part of the job farm.

#![allow(dead_code, unreachable_pub)]

use frugal_evolve::{Candidate, Evolution, Fitness, problems};
use frugal_rand::Xoshiro256pp;

/// Evaluates every asked batch with `f`, for `generations` generations after the initial
/// population.
pub fn run_generational(evo: &mut Evolution, generations: u32, f: impl Fn(&Candidate) -> Fitness) {
    for _ in 0..=generations {
        let batch = evo.ask();
        let results = batch.into_iter().map(|c| {
            let fit = f(&c);
            (c, fit)
        });
        evo.tell(results.collect()).unwrap();
    }
}

/// Steady state with `workers` evaluations in flight, results coming back in a shuffled
/// order, until `evaluations` results have been told.
pub fn run_steady(
    evo: &mut Evolution,
    evaluations: u64,
    workers: usize,
    shuffle_seed: u64,
    f: impl Fn(&Candidate) -> Fitness,
) {
    let mut rng = Xoshiro256pp::new(shuffle_seed);
    let mut busy: Vec<Candidate> = Vec::new();
    let mut asked = 0;
    while evo.evaluations() < evaluations {
        while busy.len() < workers && asked < evaluations {
            busy.push(evo.ask_one());
            asked += 1;
        }
        let done = busy.swap_remove(rng.below(busy.len()));
        let fit = f(&done);
        evo.tell_one(done, fit).unwrap();
    }
}

pub fn sphere(c: &Candidate) -> Fitness {
    Fitness::single(problems::sphere(&c.genes))
}

pub fn rastrigin(c: &Candidate) -> Fitness {
    Fitness::single(problems::rastrigin(&c.genes))
}

pub fn zdt1(c: &Candidate) -> Fitness {
    Fitness::new(problems::zdt1(&c.genes).to_vec())
}

/// Hypervolume of the population's objective vectors, reference (1, 1).
pub fn population_hypervolume(evo: &Evolution) -> f64 {
    let points: Vec<[f64; 2]> = evo
        .population()
        .iter()
        .map(|(_, f)| [f.objectives[0], f.objectives[1]])
        .collect();
    problems::hypervolume_2d(&points, [1.0, 1.0])
}

/// Best objective value of a single-objective run.
pub fn best(evo: &Evolution) -> f64 {
    evo.hall_of_fame()[0].1.objectives[0]
}
