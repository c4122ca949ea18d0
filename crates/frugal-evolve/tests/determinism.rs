//! A run is a pure function of its space, settings and told results: not of the order
//! results arrive in, nor of whether it was written out and read back in between.

mod common;

use common::*;
use frugal_evolve::{Candidate, Evolution, Fitness, Gene, Method, Settings, Space, problems};
use frugal_rand::Xoshiro256pp;

/// Ten reals and two integers, so that both kinds of gene take part.
fn mixed_space() -> Space {
    let mut genes = problems::sphere_space(10).genes;
    genes.push(Gene::int("depth", 1.0, 12.0));
    genes.push(Gene::int("width", -3.0, 40.0));
    Space::new(genes).unwrap()
}

/// A noisy objective that uses the candidate's evaluation seed, as a stochastic
/// simulation would: equal results need equal seeds too.
fn noisy(c: &Candidate) -> Fitness {
    let noise = Xoshiro256pp::new(c.seed).uniform() * 1e-3;
    let integers = (c.genes[10] - 6.0).powi(2) + c.genes[11].powi(2);
    Fitness::single(problems::sphere(&c.genes[..10]) + integers + noise)
}

fn noisy_pair(c: &Candidate) -> Fitness {
    let f = noisy(c).objectives[0];
    Fitness::new(vec![f, (c.genes[0] - 2.0).powi(2)])
}

fn evaluate(batch: Vec<Candidate>, f: Objective) -> Vec<(Candidate, Fitness)> {
    batch
        .into_iter()
        .map(|c| {
            let fit = f(&c);
            (c, fit)
        })
        .collect()
}

fn shuffled<T>(mut items: Vec<T>, rng: &mut Xoshiro256pp) -> Vec<T> {
    for i in (1..items.len()).rev() {
        items.swap(i, rng.below(i + 1));
    }
    items
}

fn state(evo: &Evolution) -> String {
    serde_json::to_string(evo).unwrap()
}

/// An objective function, as the test's workers run it.
type Objective = fn(&Candidate) -> Fitness;

fn cases() -> [(Method, usize, Objective); 3] {
    [
        (Method::Ga, 1, noisy),
        (Method::MuPlusLambda, 1, noisy),
        (Method::Nsga2, 2, noisy_pair),
    ]
}

#[test]
fn same_seed_same_run_other_seed_other_run() {
    for (method, objectives, f) in cases() {
        let run = |seed| {
            let mut evo =
                Evolution::new(mixed_space(), Settings::new(method, 20, seed), objectives).unwrap();
            let mut asked = Vec::new();
            for _ in 0..8 {
                let batch = evo.ask();
                asked.extend(batch.clone());
                evo.tell(evaluate(batch, f)).unwrap();
            }
            (asked, state(&evo))
        };
        let (a, state_a) = run(3);
        let (b, state_b) = run(3);
        assert_eq!(a, b, "{method}");
        assert_eq!(state_a, state_b, "{method}");
        let (c, _) = run(4);
        assert_ne!(a, c, "{method}");
        assert!(a.iter().all(|c| mixed_space().contains(&c.genes)));
        let ids: Vec<u64> = a.iter().map(|c| c.id).collect();
        assert_eq!(ids, (0..ids.len() as u64).collect::<Vec<_>>());
    }
}

#[test]
fn the_order_of_results_does_not_matter() {
    for (method, objectives, f) in cases() {
        let settings = Settings::new(method, 24, 11);
        let mut in_order = Evolution::new(mixed_space(), settings.clone(), objectives).unwrap();
        let mut scrambled = Evolution::new(mixed_space(), settings, objectives).unwrap();
        let mut rng = Xoshiro256pp::new(99);
        for _ in 0..10 {
            let batch = in_order.ask();
            assert_eq!(batch, scrambled.ask());
            let results = evaluate(batch, f);
            scrambled.tell(shuffled(results.clone(), &mut rng)).unwrap();
            in_order.tell(results).unwrap();
            assert_eq!(in_order.population(), scrambled.population(), "{method}");
        }
        assert_eq!(state(&in_order), state(&scrambled), "{method}");
    }
}

#[test]
fn a_checkpoint_resumes_bit_for_bit() {
    for (method, objectives, f) in cases() {
        let mut whole =
            Evolution::new(mixed_space(), Settings::new(method, 16, 5), objectives).unwrap();
        for _ in 0..6 {
            let batch = whole.ask();
            whole.tell(evaluate(batch, f)).unwrap();
        }
        let saved = state(&whole);
        let mut resumed: Evolution = serde_json::from_str(&saved).unwrap();
        assert_eq!(state(&resumed), saved);
        for _ in 0..8 {
            let batch = whole.ask();
            assert_eq!(batch, resumed.ask(), "{method}");
            whole.tell(evaluate(batch.clone(), f)).unwrap();
            resumed.tell(evaluate(batch, f)).unwrap();
        }
        assert_eq!(whole.population(), resumed.population(), "{method}");
        assert_eq!(whole.hall_of_fame(), resumed.hall_of_fame(), "{method}");
        assert_eq!(state(&whole), state(&resumed), "{method}");
    }
}

#[test]
fn a_checkpoint_with_failures_and_work_in_flight_resumes() {
    // Steady state with candidates out at the workers when the state is written, and failed
    // evaluations (infinite values) in the population.
    let f = |c: &Candidate| {
        if c.id % 7 == 3 {
            Fitness::failed(2)
        } else {
            noisy_pair(c)
        }
    };
    let settings = Settings::new(Method::Nsga2, 12, 8);
    let mut whole = Evolution::new(mixed_space(), settings, 2).unwrap();
    let mut out: Vec<Candidate> = (0..5).map(|_| whole.ask_one()).collect();
    for _ in 0..8 {
        let done = out.remove(1);
        let fit = f(&done);
        whole.tell_one(done, fit).unwrap();
        out.push(whole.ask_one());
    }
    assert!(whole.population().iter().any(|(_, f)| f.is_failed()));
    let saved = state(&whole);
    assert!(saved.contains(r#""violation":"inf""#));
    let mut resumed: Evolution = serde_json::from_str(&saved).unwrap();
    assert_eq!(resumed.outstanding(), 5);
    for _ in 0..100 {
        let done = out.remove(2);
        let fit = f(&done);
        whole.tell_one(done.clone(), fit.clone()).unwrap();
        resumed.tell_one(done, fit).unwrap();
        let next = whole.ask_one();
        assert_eq!(next, resumed.ask_one());
        out.push(next);
    }
    assert_eq!(state(&whole), state(&resumed));
}

#[test]
fn steady_state_is_reproducible_for_a_given_schedule() {
    for (method, objectives, f) in cases() {
        let run = || {
            let mut evo =
                Evolution::new(mixed_space(), Settings::new(method, 20, 2), objectives).unwrap();
            run_steady(&mut evo, 400, 6, 17, f);
            state(&evo)
        };
        assert_eq!(run(), run(), "{method}");
    }
}

#[test]
fn evaluation_seeds_depend_on_run_seed_and_id_only() {
    let seeds = |seed: u64, steady: bool| {
        let mut evo =
            Evolution::new(mixed_space(), Settings::new(Method::Ga, 10, seed), 1).unwrap();
        let candidates: Vec<Candidate> = if steady {
            (0..10).map(|_| evo.ask_one()).collect()
        } else {
            evo.ask()
        };
        candidates
            .into_iter()
            .map(|c| (c.id, c.seed))
            .collect::<Vec<_>>()
    };
    assert_eq!(seeds(1, true), seeds(1, false));
    assert_ne!(seeds(1, false), seeds(2, false));
    let mut all: Vec<u64> = seeds(1, false).into_iter().map(|(_, s)| s).collect();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 10);
}
