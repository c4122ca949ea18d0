//! Quality on the standard problems with fixed budgets, as one JSON object on stdout, in the
//! schema of `bench/peers/deap_evolve.py` so the two can be compared side by side:
//!
//!     cargo run --release -p frugal-evolve --example quality [SEEDS]
//!
//! over seeds 1..=SEEDS (10 by default).
//!
//! Per problem: the method and budget, and over the seeds the median, best and worst of
//! the final best objective value (hypervolume with reference (1, 1) for ZDT1, where larger
//! is better), with every seed's figure.

use std::io::Write;
use std::time::Instant;

use frugal_evolve::{Candidate, Evolution, Fitness, Method, Settings, Space, problems};
use serde_json::{Value, json};

const POPULATION: usize = 100;
const GENERATIONS: u32 = 100;

/// How the candidates are fed back.
#[derive(Clone, Copy)]
enum Mode {
    /// Whole generations through `ask` and `tell`.
    Generational,
    /// One at a time through `ask_one` and `tell_one`, for the same number of evaluations.
    SteadyState,
}

struct Problem {
    name: &'static str,
    method: Method,
    mode: Mode,
    space: Space,
    objectives: usize,
    evaluate: fn(&Candidate) -> Fitness,
    /// Changes to the method's default settings.
    adjust: fn(&mut Settings),
}

fn run(problem: &Problem, seed: u64) -> (f64, u64) {
    let mut settings = Settings::new(problem.method, POPULATION, seed);
    (problem.adjust)(&mut settings);
    let mut evo = Evolution::new(problem.space.clone(), settings, problem.objectives).unwrap();
    match problem.mode {
        Mode::Generational => {
            for _ in 0..=GENERATIONS {
                let batch = evo.ask();
                let results = batch.into_iter().map(|c| {
                    let f = (problem.evaluate)(&c);
                    (c, f)
                });
                evo.tell(results.collect()).unwrap();
            }
        }
        Mode::SteadyState => {
            let budget = (POPULATION * (GENERATIONS as usize + 1)) as u64;
            while evo.evaluations() < budget {
                let c = evo.ask_one();
                let f = (problem.evaluate)(&c);
                evo.tell_one(c, f).unwrap();
            }
        }
    }
    let score = if problem.objectives == 1 {
        evo.hall_of_fame()[0].1.objectives[0]
    } else {
        let points: Vec<[f64; 2]> = evo
            .population()
            .iter()
            .map(|(_, f)| [f.objectives[0], f.objectives[1]])
            .collect();
        problems::hypervolume_2d(&points, [1.0, 1.0])
    };
    (score, evo.evaluations())
}

fn summary(problem: &Problem, seeds: &[u64]) -> Value {
    let started = Instant::now();
    let runs: Vec<(f64, u64)> = seeds.iter().map(|&seed| run(problem, seed)).collect();
    let seconds = started.elapsed().as_secs_f64() / seeds.len() as f64;
    let scores: Vec<f64> = runs.iter().map(|r| r.0).collect();
    let larger_is_better = problem.objectives > 1;
    let mut sorted = scores.clone();
    sorted.sort_by(f64::total_cmp);
    if larger_is_better {
        sorted.reverse();
    }
    let n = sorted.len();
    let median = if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    };
    json!({
        "method": problem.method.name(),
        "mode": match problem.mode {
            Mode::Generational => "generational",
            Mode::SteadyState => "steady_state",
        },
        "population": POPULATION,
        "generations": GENERATIONS,
        "evaluations": runs[0].1,
        "metric": if larger_is_better { "hypervolume" } else { "best_fitness" },
        "median": median,
        "mean": scores.iter().sum::<f64>() / n as f64,
        "best": sorted[0],
        "worst": sorted[n - 1],
        "per_seed": scores,
        "seconds_per_run": seconds,
    })
}

fn main() -> std::io::Result<()> {
    let count: u64 = match std::env::args().nth(1) {
        Some(n) => n.parse().ok().filter(|&n| n > 0).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("SEEDS must be a positive integer, not {n:?}"),
            )
        })?,
        None => 10,
    };
    let seeds: Vec<u64> = (1..=count).collect();
    let sphere = |c: &Candidate| Fitness::single(problems::sphere(&c.genes));
    let rastrigin = |c: &Candidate| Fitness::single(problems::rastrigin(&c.genes));
    let zdt1 = |c: &Candidate| Fitness::new(problems::zdt1(&c.genes).to_vec());
    let problem = |name, method, mode, space, objectives, evaluate| Problem {
        name,
        method,
        mode,
        space,
        objectives,
        evaluate,
        adjust: |_| {},
    };
    // The textbook NSGA-II settings, those of DEAP's example, for comparison with the
    // tuned defaults.
    let customary = |s: &mut Settings| {
        s.crossover_prob = Some(0.9);
        s.crossover_var_prob = Some(0.5);
        s.eta_c = Some(20.0);
        s.eta_m = Some(20.0);
        s.mutation_prob = Some(1.0 / 30.0);
    };
    let all = [
        problem(
            "sphere10_ga",
            Method::Ga,
            Mode::Generational,
            problems::sphere_space(10),
            1,
            sphere,
        ),
        problem(
            "rastrigin10_ga",
            Method::Ga,
            Mode::Generational,
            problems::rastrigin_space(10),
            1,
            rastrigin,
        ),
        problem(
            "rastrigin10_mu_plus_lambda",
            Method::MuPlusLambda,
            Mode::Generational,
            problems::rastrigin_space(10),
            1,
            rastrigin,
        ),
        problem(
            "zdt1_nsga2",
            Method::Nsga2,
            Mode::Generational,
            problems::zdt1_space(30),
            2,
            zdt1,
        ),
        Problem {
            adjust: customary,
            ..problem(
                "zdt1_nsga2_customary",
                Method::Nsga2,
                Mode::Generational,
                problems::zdt1_space(30),
                2,
                zdt1,
            )
        },
        problem(
            "zdt1_nsga2_steady_state",
            Method::Nsga2,
            Mode::SteadyState,
            problems::zdt1_space(30),
            2,
            zdt1,
        ),
    ];
    let mut results = serde_json::Map::new();
    for p in &all {
        results.insert(p.name.to_string(), summary(p, &seeds));
    }
    let report = json!({
        "implementation": "frugal-evolve",
        "seeds": seeds,
        "problems": results,
    });
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, &report)?;
    writeln!(out)
}
