use std::cmp::Ordering;
use std::collections::HashSet;

use frugal_rand::Xoshiro256pp;
use serde::{Deserialize, Serialize};

use crate::fitness::pareto_dominates;
use crate::operators::{polynomial_mutation, sbx};
use crate::rng::candidate_seed;
use crate::{EvolveError, Fitness, Method, Settings, Space, pareto};

/// A point to evaluate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Candidate {
    /// Sequence number in the order candidates were asked for, unique within a run.
    pub id: u64,
    /// The generation the candidate was bred for: 0 for the initial population.
    pub generation: u32,
    /// One value per gene of the space, each within its bounds.
    pub genes: Vec<f64>,
    /// Seed for the evaluation's own randomness. It depends only on the run's seed and the
    /// id, so results do not depend on which worker evaluates the candidate or when.
    pub seed: u64,
}

/// Best, mean and worst of one objective over the feasible members of the population.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ObjectiveStats {
    /// Smallest value.
    pub best: f64,
    /// Mean value.
    pub mean: f64,
    /// Largest value.
    pub worst: f64,
}

/// A summary of the current population, for progress reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// The population's generation.
    pub generation: u32,
    /// Results told so far.
    pub evaluations: u64,
    /// Members of the population.
    pub population: usize,
    /// Members that meet their constraints.
    pub feasible: usize,
    /// Members that break a constraint (failed evaluations not included).
    pub infeasible: usize,
    /// Members whose evaluation failed.
    pub failed: usize,
    /// Per objective, over the feasible members; empty when none is feasible.
    pub objectives: Vec<ObjectiveStats>,
}

/// An ask/tell evolutionary optimisation run.
///
/// The run never evaluates anything: it hands out [`Candidate`]s and takes back their
/// [`Fitness`], so evaluations can run anywhere, in parallel and in any order. Two ways to
/// drive it:
///
/// - **Generational**: [`ask`](Self::ask) a whole generation, evaluate it, [`tell`](Self::tell)
///   all the results at once. The first batch is the random initial population.
/// - **Steady state**: [`ask_one`](Self::ask_one) whenever a worker is free,
///   [`tell_one`](Self::tell_one) each result as it arrives. Each child competes at once
///   for a place in the population (μ+1 survival), so no worker waits for a generation to
///   finish, and good children become parents sooner: with the same number of evaluations
///   NSGA-II gets closer to the front this way (see [`Settings`]).
///
/// Candidates do not repeat the genes of one in the population or awaiting a result
/// (unless a small integer space runs out of new points): an evaluation is too costly to
/// spend twice. The exception is the generational GA, which replaces its parents: there a
/// child may be a parent's unchanged copy, and is evaluated again.
///
/// Given the same space, settings and results, a run hands out the same candidates. The
/// whole state, random generator included, serializes: a run written out after any `tell`
/// or `tell_one` and read back continues exactly as if it had never stopped. JSON has no
/// infinities, so the failed results in it are written as strings (see [`Fitness`]),
/// which a self-describing format like JSON reads back.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Evolution {
    space: Space,
    settings: Settings,
    objectives: usize,
    rng: Xoshiro256pp,
    next_id: u64,
    generation: u32,
    evaluations: u64,
    /// Steady-state replacements since the generation count last advanced.
    replacements: usize,
    population: Vec<(Candidate, Fitness)>,
    /// The generational batch awaiting `tell`, in id order.
    pending: Vec<Candidate>,
    /// Steady-state candidates awaiting `tell_one`, in id order.
    in_flight: Vec<Candidate>,
    hall: Vec<(Candidate, Fitness)>,
}

/// Children that repeat a candidate already in the population or awaiting a result are
/// bred again, up to this many attempts per child wanted; small integer spaces can run out
/// of new points, hence the limit.
const DUPLICATE_PATIENCE: usize = 10;

/// Genes as exact bit patterns, for spotting repeats.
fn genes_key(genes: &[f64]) -> Vec<u64> {
    genes.iter().map(|v| v.to_bits()).collect()
}

/// How parents are picked for one round of breeding.
struct Mating {
    keys: Keys,
    /// Contestants still to be dealt, when tournaments draw without replacement.
    deck: Option<Vec<usize>>,
}

/// How parents are compared in tournaments.
enum Keys {
    /// Deb's feasibility rules on the single objective.
    Feasibility,
    /// NSGA-II's crowded comparison: lower rank, then larger crowding distance.
    Crowded {
        rank: Vec<usize>,
        crowding: Vec<f64>,
    },
}

impl Evolution {
    /// A new run over `space` with `objectives` objectives.
    ///
    /// Fails if the space or a setting is invalid, or the method does not fit the number of
    /// objectives: `ga` and `mu_plus_lambda` need exactly one, `nsga2` two or more.
    pub fn new(space: Space, settings: Settings, objectives: usize) -> Result<Self, EvolveError> {
        space.validate()?;
        settings.validate(space.len())?;
        settings.method.check_objectives(objectives)?;
        let settings = settings.resolved(space.len());
        Ok(Self {
            rng: Xoshiro256pp::new(settings.seed),
            space,
            settings,
            objectives,
            next_id: 0,
            generation: 0,
            evaluations: 0,
            replacements: 0,
            population: Vec::new(),
            pending: Vec::new(),
            in_flight: Vec::new(),
            hall: Vec::new(),
        })
    }

    /// The next generation's candidates: the random initial population at first, then λ
    /// offspring bred from the current population.
    ///
    /// Asking again before telling returns the same batch, so a coordinator that lost it
    /// can ask for it again.
    pub fn ask(&mut self) -> Vec<Candidate> {
        if !self.pending.is_empty() {
            return self.pending.clone();
        }
        let mu = self.settings.population;
        let filling = self.population.len() < mu;
        let (want, generation) = if filling {
            (mu - self.population.len(), 0)
        } else {
            (self.offspring(), self.generation + 1)
        };
        // Deb's NSGA-II deals tournament contestants from shuffled copies of the population
        // rather than drawing them independently: every member competes equally often, so
        // selection has less noise. Measured on ZDT1 it also converges a little faster.
        let dealt = self.settings.method.is_multi_objective();
        let mut mating = self.mating(dealt);
        let mut known = self.known_genes();
        // The generational GA replaces its parents, and a child that is a parent's unchanged
        // copy is how a good parent lives on, as in DEAP's eaSimple; measured on the sphere,
        // breeding it again instead slows convergence. Under (μ+λ) survival the parent stays
        // anyway and a copy only crowds the population.
        let repeats_allowed = !filling && self.settings.method == Method::Ga;
        let patience = if repeats_allowed {
            0
        } else {
            DUPLICATE_PATIENCE * want
        };
        let mut attempts = 0;
        let mut fresh = Vec::with_capacity(want);
        while fresh.len() < want {
            let bred = if filling {
                vec![self.space.sample(&mut self.rng)]
            } else {
                let (a, b) = self.breed(&mut mating);
                vec![a, b]
            };
            for genes in bred {
                attempts += 1;
                if fresh.len() < want && (known.insert(genes_key(&genes)) || attempts > patience) {
                    fresh.push(genes);
                }
            }
        }
        self.pending = fresh
            .into_iter()
            .map(|genes| self.candidate(generation, genes))
            .collect();
        self.pending.clone()
    }

    /// The results of the batch from [`ask`](Self::ask): every candidate of it exactly once,
    /// in any order. Then survival selection forms the next generation.
    ///
    /// Candidates are matched to the batch by id, and the batch's own copies are kept, so
    /// it does not matter what the genes went through on their way to the workers and back.
    /// A rejected batch changes nothing.
    pub fn tell(&mut self, results: Vec<(Candidate, Fitness)>) -> Result<(), EvolveError> {
        if self.pending.is_empty() {
            return Err(EvolveError::NothingAsked);
        }
        if results.len() != self.pending.len() {
            return Err(EvolveError::BatchSize {
                expected: self.pending.len(),
                got: results.len(),
            });
        }
        let mut results = results;
        results.sort_by_key(|(c, _)| c.id);
        let mut fits = Vec::with_capacity(results.len());
        // Sorted, a repeated id sits next to its twin; with the count right and no repeats,
        // ids that all belong to the batch are exactly the batch.
        let mut previous = None;
        for (candidate, fitness) in results {
            let id = candidate.id;
            if previous == Some(id) {
                return Err(EvolveError::DuplicateCandidate { id });
            }
            if self.pending.binary_search_by_key(&id, |c| c.id).is_err() {
                return Err(EvolveError::UnknownCandidate { id });
            }
            fits.push(fitness.normalised(id, self.objectives)?);
            previous = Some(id);
        }
        let batch: Vec<(Candidate, Fitness)> = std::mem::take(&mut self.pending)
            .into_iter()
            .zip(fits)
            .collect();
        for (c, f) in &batch {
            self.offer_hall(c, f);
        }
        self.evaluations += batch.len() as u64;
        self.generation = self.generation.max(batch[0].0.generation);
        self.survive(batch);
        Ok(())
    }

    /// One candidate, for steady-state runs: random while the population is not yet full,
    /// otherwise one child bred from the current population.
    pub fn ask_one(&mut self) -> Candidate {
        let filling = self.population.len() < self.settings.population;
        let mut mating = self.mating(false);
        let mut attempts = 0;
        let genes = loop {
            let genes = if filling {
                self.space.sample(&mut self.rng)
            } else {
                self.breed(&mut mating).0
            };
            attempts += 1;
            if attempts > DUPLICATE_PATIENCE || !self.is_known(&genes) {
                break genes;
            }
        };
        let candidate = self.candidate(if filling { 0 } else { self.generation + 1 }, genes);
        // Ids only grow, so pushing keeps the list in id order.
        self.in_flight.push(candidate.clone());
        candidate
    }

    /// The result of a candidate from [`ask_one`](Self::ask_one), in any order.
    ///
    /// While the population is not full the candidate joins it; afterwards it joins and the
    /// worst member leaves, which may be the newcomer itself: for one objective the worst by
    /// the feasibility rules, for NSGA-II the most crowded member of the last front. Among
    /// equally bad members the oldest leaves. Every μ replacements count as a generation.
    pub fn tell_one(&mut self, candidate: Candidate, fitness: Fitness) -> Result<(), EvolveError> {
        let id = candidate.id;
        let at = self
            .in_flight
            .binary_search_by_key(&id, |c| c.id)
            .map_err(|_| EvolveError::UnknownCandidate { id })?;
        let fitness = fitness.normalised(id, self.objectives)?;
        let candidate = self.in_flight.remove(at);
        self.offer_hall(&candidate, &fitness);
        self.evaluations += 1;
        self.population.push((candidate, fitness));
        if self.population.len() > self.settings.population {
            let worst = self.worst();
            self.population.remove(worst);
            self.replacements += 1;
            if self.replacements >= self.settings.population {
                self.replacements = 0;
                self.generation += 1;
            }
        }
        Ok(())
    }

    /// The generation of the current population: 0 for the initial one.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// Results told so far.
    pub fn evaluations(&self) -> u64 {
        self.evaluations
    }

    /// The current population with its results.
    pub fn population(&self) -> &[(Candidate, Fitness)] {
        &self.population
    }

    /// The best candidates evaluated so far, failed evaluations excluded.
    ///
    /// Single objective: up to `hall_of_fame` candidates with distinct genes, best first by
    /// the feasibility rules; ties keep the earlier candidate. NSGA-II: the candidates no
    /// other evaluated candidate dominates, sorted by objectives; beyond `hall_of_fame`
    /// members the most crowded leave, so the archive keeps the front's spread and ends.
    pub fn hall_of_fame(&self) -> &[(Candidate, Fitness)] {
        &self.hall
    }

    /// The feasible members of the population that no other feasible member dominates.
    /// For one objective, the members sharing the best value.
    pub fn front(&self) -> Vec<(Candidate, Fitness)> {
        let feasible: Vec<&(Candidate, Fitness)> = self
            .population
            .iter()
            .filter(|(_, f)| f.is_feasible())
            .collect();
        feasible
            .iter()
            .filter(|(_, f)| {
                !feasible
                    .iter()
                    .any(|(_, g)| pareto_dominates(&g.objectives, &f.objectives))
            })
            .map(|&m| m.clone())
            .collect()
    }

    /// A summary of the current population.
    pub fn stats(&self) -> Stats {
        let feasible: Vec<&Fitness> = self
            .population
            .iter()
            .map(|(_, f)| f)
            .filter(|f| f.is_feasible())
            .collect();
        let failed = self
            .population
            .iter()
            .filter(|(_, f)| f.is_failed())
            .count();
        let objectives = if feasible.is_empty() {
            Vec::new()
        } else {
            (0..self.objectives)
                .map(|m| {
                    let values = feasible.iter().map(|f| f.objectives[m]);
                    ObjectiveStats {
                        best: values.clone().fold(f64::INFINITY, f64::min),
                        mean: values.clone().sum::<f64>() / feasible.len() as f64,
                        worst: values.fold(f64::NEG_INFINITY, f64::max),
                    }
                })
                .collect()
        };
        Stats {
            generation: self.generation,
            evaluations: self.evaluations,
            population: self.population.len(),
            feasible: feasible.len(),
            infeasible: self.population.len() - feasible.len() - failed,
            failed,
            objectives,
        }
    }

    /// The run's settings with every default filled in.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The search space.
    pub fn space(&self) -> &Space {
        &self.space
    }

    /// The number of objectives.
    pub fn objectives(&self) -> usize {
        self.objectives
    }

    /// Candidates handed out by `ask` or `ask_one` whose results have not been told.
    pub fn outstanding(&self) -> usize {
        self.pending.len() + self.in_flight.len()
    }

    fn offspring(&self) -> usize {
        self.settings.offspring.unwrap_or(self.settings.population)
    }

    fn candidate(&mut self, generation: u32, genes: Vec<f64>) -> Candidate {
        let id = self.next_id;
        self.next_id += 1;
        Candidate {
            id,
            generation,
            genes,
            seed: candidate_seed(self.settings.seed, id),
        }
    }

    /// Whether a candidate in the population or awaiting a result has these genes.
    fn is_known(&self, genes: &[f64]) -> bool {
        let members = self.population.iter().map(|(c, _)| c);
        members
            .chain(&self.pending)
            .chain(&self.in_flight)
            .any(|c| c.genes == genes)
    }

    /// The genes of every candidate in the population or awaiting a result.
    fn known_genes(&self) -> HashSet<Vec<u64>> {
        let members = self.population.iter().map(|(c, _)| c);
        members
            .chain(&self.pending)
            .chain(&self.in_flight)
            .map(|c| genes_key(&c.genes))
            .collect()
    }

    fn mating(&self, dealt: bool) -> Mating {
        let keys = if self.settings.method.is_multi_objective() {
            let fits: Vec<&Fitness> = self.population.iter().map(|(_, f)| f).collect();
            let (rank, crowding) = pareto::rank_and_crowding(&fits);
            Keys::Crowded { rank, crowding }
        } else {
            Keys::Feasibility
        };
        Mating {
            keys,
            deck: dealt.then(Vec::new),
        }
    }

    /// A tournament contestant: dealt from the deck, reshuffled when empty, or drawn
    /// independently.
    fn contestant(&mut self, deck: &mut Option<Vec<usize>>) -> usize {
        let n = self.population.len();
        let Some(deck) = deck else {
            return self.rng.below(n);
        };
        if deck.is_empty() {
            deck.extend(0..n);
            for i in (1..n).rev() {
                deck.swap(i, self.rng.below(i + 1));
            }
        }
        deck.pop().expect("a refilled deck is not empty")
    }

    /// Tournament selection; ties go to the contestant drawn first.
    fn select_parent(&mut self, mating: &mut Mating) -> usize {
        let mut best = self.contestant(&mut mating.deck);
        for _ in 1..self.settings.tournament.unwrap_or(2) {
            let other = self.contestant(&mut mating.deck);
            let better = match &mating.keys {
                Keys::Feasibility => {
                    self.population[other].1.compare(&self.population[best].1) == Ordering::Less
                }
                Keys::Crowded { rank, crowding } => {
                    rank[other] < rank[best]
                        || (rank[other] == rank[best] && crowding[other] > crowding[best])
                }
            };
            if better {
                best = other;
            }
        }
        best
    }

    /// Two children of two tournament-picked parents: crossed with probability
    /// `crossover_prob`, then mutated.
    fn breed(&mut self, mating: &mut Mating) -> (Vec<f64>, Vec<f64>) {
        let s = &self.settings;
        let (cx, var, eta_c) = (
            s.crossover_prob.unwrap_or_default(),
            s.crossover_var_prob.unwrap_or_default(),
            s.eta_c.unwrap_or_default(),
        );
        let (pm, eta_m) = (
            s.mutation_prob.unwrap_or_default(),
            s.eta_m.unwrap_or_default(),
        );
        let p1 = self.select_parent(mating);
        let p2 = self.select_parent(mating);
        let (a, b) = (&self.population[p1].0.genes, &self.population[p2].0.genes);
        let (mut a, mut b) = if self.rng.chance(cx) {
            sbx(&mut self.rng, &self.space, a, b, eta_c, var)
        } else {
            (a.clone(), b.clone())
        };
        polynomial_mutation(&mut self.rng, &self.space, &mut a, eta_m, pm);
        polynomial_mutation(&mut self.rng, &self.space, &mut b, eta_m, pm);
        (a, b)
    }

    /// Survival: the population and the told batch make the next population.
    fn survive(&mut self, batch: Vec<(Candidate, Fitness)>) {
        let mu = self.settings.population;
        let parents = self.population.len();
        let combined: Vec<(Candidate, Fitness)> = std::mem::take(&mut self.population)
            .into_iter()
            .chain(batch)
            .collect();
        if combined.len() <= mu {
            self.population = combined;
            return;
        }
        let fits: Vec<&Fitness> = combined.iter().map(|(_, f)| f).collect();
        // The `count` best of a range by the feasibility rules, earlier members first among
        // equals.
        let best_of = |range: std::ops::Range<usize>, count: usize| {
            let mut order: Vec<usize> = range.collect();
            order.sort_by(|&a, &b| fits[a].compare(fits[b]));
            order.truncate(count);
            order
        };
        let chosen = match self.settings.method {
            Method::Ga => {
                // The elite come from the parents and the offspring fill the rest; further
                // parents stay only where there are too few offspring to fill it.
                let elite = self.settings.elite.min(parents);
                let from_batch = (mu - elite).min(combined.len() - parents);
                let mut chosen = best_of(0..parents, mu - from_batch);
                chosen.extend(best_of(parents..combined.len(), from_batch));
                chosen
            }
            Method::MuPlusLambda => best_of(0..combined.len(), mu),
            Method::Nsga2 => pareto::select(&fits, mu),
        };
        let mut keep = vec![false; combined.len()];
        for i in chosen {
            keep[i] = true;
        }
        // Survivors keep their order, parents before children, so the population lists its
        // members oldest first.
        self.population = combined
            .into_iter()
            .zip(keep)
            .filter_map(|(member, kept)| kept.then_some(member))
            .collect();
    }

    /// Index of the member steady-state survival removes.
    fn worst(&self) -> usize {
        if self.settings.method.is_multi_objective() {
            let fits: Vec<&Fitness> = self.population.iter().map(|(_, f)| f).collect();
            let fronts = pareto::fronts(&fits);
            let last = fronts.last().expect("a full population has a front");
            let distance = pareto::crowding(last, &fits);
            let mut worst = 0;
            for k in 1..last.len() {
                if distance[k] < distance[worst] {
                    worst = k;
                }
            }
            last[worst]
        } else {
            let mut worst = 0;
            for (i, (_, f)) in self.population.iter().enumerate().skip(1) {
                if f.compare(&self.population[worst].1) == Ordering::Greater {
                    worst = i;
                }
            }
            worst
        }
    }

    fn offer_hall(&mut self, candidate: &Candidate, fitness: &Fitness) {
        let cap = self.settings.hall_of_fame.unwrap_or_default();
        if cap == 0 || fitness.is_failed() {
            return;
        }
        let same_genes = |(c, _): &(Candidate, Fitness)| c.genes == candidate.genes;
        let entry = || (candidate.clone(), fitness.clone());
        if !self.settings.method.is_multi_objective() {
            let full = self.hall.len() >= cap;
            if full
                && self
                    .hall
                    .last()
                    .is_some_and(|(_, f)| fitness.compare(f) != Ordering::Less)
            {
                return;
            }
            if self.hall.iter().any(same_genes) {
                return;
            }
            let at = self
                .hall
                .partition_point(|(_, f)| f.compare(fitness) != Ordering::Greater);
            self.hall.insert(at, entry());
            self.hall.truncate(cap);
            return;
        }
        if self
            .hall
            .iter()
            .any(|m| m.1.dominates(fitness) || same_genes(m))
        {
            return;
        }
        self.hall.retain(|(_, f)| !fitness.dominates(f));
        let lexicographic = |f: &Fitness| {
            f.objectives
                .iter()
                .zip(&fitness.objectives)
                .map(|(a, b)| a.total_cmp(b))
                .find(|o| o.is_ne())
                .unwrap_or(Ordering::Equal)
        };
        let at = self
            .hall
            .partition_point(|(_, f)| lexicographic(f) != Ordering::Greater);
        self.hall.insert(at, entry());
        if self.hall.len() > cap {
            let fits: Vec<&Fitness> = self.hall.iter().map(|(_, f)| f).collect();
            let all: Vec<usize> = (0..fits.len()).collect();
            let distance = pareto::crowding(&all, &fits);
            let mut most_crowded = 0;
            for k in 1..distance.len() {
                if distance[k] < distance[most_crowded] {
                    most_crowded = k;
                }
            }
            self.hall.remove(most_crowded);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Gene, problems};

    fn sphere_run(method: Method, population: usize) -> Evolution {
        Evolution::new(
            problems::sphere_space(3),
            Settings::new(method, population, 1),
            1,
        )
        .unwrap()
    }

    fn evaluate(batch: &[Candidate]) -> Vec<(Candidate, Fitness)> {
        batch
            .iter()
            .map(|c| (c.clone(), Fitness::single(problems::sphere(&c.genes))))
            .collect()
    }

    #[test]
    fn methods_check_the_number_of_objectives() {
        let space = problems::sphere_space(2);
        for (method, bad) in [
            (Method::Ga, 2),
            (Method::MuPlusLambda, 0),
            (Method::Nsga2, 1),
        ] {
            let err = Evolution::new(space.clone(), Settings::new(method, 10, 0), bad).unwrap_err();
            assert!(matches!(err, EvolveError::Objectives { .. }), "{err}");
        }
        let bad_space = Space {
            genes: vec![Gene::real("x", 1.0, 0.0)],
        };
        assert!(Evolution::new(bad_space, Settings::new(Method::Ga, 10, 0), 1).is_err());
    }

    #[test]
    fn bad_batches_are_rejected_and_change_nothing() {
        let mut evo = sphere_run(Method::Ga, 6);
        assert_eq!(evo.tell(vec![]), Err(EvolveError::NothingAsked));
        let batch = evo.ask();
        assert_eq!(evo.ask(), batch, "asking again repeats the batch");
        assert_eq!(evo.outstanding(), 6);
        let good = evaluate(&batch);

        let short = good[1..].to_vec();
        assert_eq!(
            evo.tell(short),
            Err(EvolveError::BatchSize {
                expected: 6,
                got: 5
            })
        );
        let mut twice = good.clone();
        twice[2] = twice[3].clone();
        assert_eq!(
            evo.tell(twice),
            Err(EvolveError::DuplicateCandidate { id: 3 })
        );
        let mut stranger = good.clone();
        stranger[5].0.id = 77;
        assert_eq!(
            evo.tell(stranger),
            Err(EvolveError::UnknownCandidate { id: 77 })
        );
        let mut long = good.clone();
        long[0].1 = Fitness::new(vec![1.0, 2.0]);
        assert!(matches!(
            evo.tell(long),
            Err(EvolveError::FitnessLength { id: 0, .. })
        ));
        let mut negative = good.clone();
        negative[4].1 = Fitness::constrained(vec![1.0], -0.5);
        assert!(matches!(
            evo.tell(negative),
            Err(EvolveError::NegativeViolation { id: 4, .. })
        ));

        assert_eq!(evo.evaluations(), 0);
        assert!(evo.population().is_empty());
        evo.tell(good).unwrap();
        assert_eq!(
            (evo.evaluations(), evo.population().len(), evo.outstanding()),
            (6, 6, 0)
        );
    }

    #[test]
    fn the_batch_kept_is_the_one_asked() {
        // Genes altered on the way back do not enter the population.
        let mut evo = sphere_run(Method::MuPlusLambda, 4);
        let batch = evo.ask();
        let mut results = evaluate(&batch);
        results[0].0.genes = vec![9.0; 3];
        evo.tell(results).unwrap();
        assert_eq!(evo.population()[0].0, batch[0]);
    }

    #[test]
    fn steady_state_rejects_strangers_and_repeats() {
        let mut evo = sphere_run(Method::Ga, 4);
        let c = evo.ask_one();
        let f = Fitness::single(1.0);
        let mut stranger = c.clone();
        stranger.id = 5;
        assert_eq!(
            evo.tell_one(stranger, f.clone()),
            Err(EvolveError::UnknownCandidate { id: 5 })
        );
        evo.tell_one(c.clone(), f.clone()).unwrap();
        assert_eq!(
            evo.tell_one(c, f),
            Err(EvolveError::UnknownCandidate { id: 0 })
        );
    }

    #[test]
    fn generations_are_counted_and_labelled() {
        let mut evo = sphere_run(Method::Ga, 8);
        assert!(evo.ask().iter().all(|c| c.generation == 0));
        let initial = evaluate(&evo.ask());
        evo.tell(initial).unwrap();
        assert_eq!(evo.generation(), 0);
        let batch = evo.ask();
        assert_eq!(batch.len(), 7, "λ = μ − elite");
        assert!(batch.iter().all(|c| c.generation == 1));
        evo.tell(evaluate(&batch)).unwrap();
        assert_eq!((evo.generation(), evo.evaluations()), (1, 15));

        let mut steady = sphere_run(Method::MuPlusLambda, 8);
        for k in 0..8 + 16 {
            let c = steady.ask_one();
            let expected = if k < 8 { 0 } else { 1 + (k - 8) / 8 };
            assert_eq!(c.generation, expected);
            let f = Fitness::single(problems::sphere(&c.genes));
            steady.tell_one(c, f).unwrap();
        }
        assert_eq!(steady.generation(), 2);
        assert_eq!(steady.population().len(), 8);
    }

    #[test]
    fn the_elite_is_never_lost() {
        let mut evo = sphere_run(Method::Ga, 10);
        let mut best = f64::INFINITY;
        for _ in 0..30 {
            let batch = evo.ask();
            evo.tell(evaluate(&batch)).unwrap();
            let now = evo.stats().objectives[0].best;
            assert!(now <= best);
            best = now;
        }
        assert_eq!(evo.hall_of_fame()[0].1.objectives[0], best);
    }

    #[test]
    fn single_objective_hall_of_fame_is_sorted_distinct_and_capped() {
        let mut settings = Settings::new(Method::MuPlusLambda, 10, 3);
        settings.hall_of_fame = Some(4);
        let mut evo = Evolution::new(problems::sphere_space(2), settings, 1).unwrap();
        for _ in 0..5 {
            let batch = evo.ask();
            evo.tell(evaluate(&batch)).unwrap();
        }
        let hall = evo.hall_of_fame();
        assert_eq!(hall.len(), 4);
        assert!(
            hall.windows(2)
                .all(|w| w[0].1.objectives[0] <= w[1].1.objectives[0])
        );
        assert!(hall.windows(2).all(|w| w[0].0.genes != w[1].0.genes));
        let best_in_population = evo.stats().objectives[0].best;
        assert!(hall[0].1.objectives[0] <= best_in_population);
    }

    #[test]
    fn pareto_archive_keeps_only_the_undominated_and_the_ends() {
        let mut settings = Settings::new(Method::Nsga2, 20, 3);
        settings.hall_of_fame = Some(15);
        let mut evo = Evolution::new(problems::zdt1_space(5), settings, 2).unwrap();
        let mut everything = Vec::new();
        for _ in 0..15 {
            let batch = evo.ask();
            let results: Vec<(Candidate, Fitness)> = batch
                .into_iter()
                .map(|c| {
                    let f = Fitness::new(problems::zdt1(&c.genes).to_vec());
                    (c, f)
                })
                .collect();
            everything.extend(results.iter().map(|(_, f)| f.clone()));
            evo.tell(results).unwrap();
        }
        let hall = evo.hall_of_fame();
        assert_eq!(hall.len(), 15);
        for (_, f) in hall {
            assert!(!everything.iter().any(|g| g.dominates(f)));
        }
        // The ends of the undominated set survive the pruning.
        let undominated: Vec<&Fitness> = everything
            .iter()
            .filter(|f| !everything.iter().any(|g| g.dominates(f)))
            .collect();
        let min_f1 = undominated
            .iter()
            .map(|f| f.objectives[0])
            .fold(f64::INFINITY, f64::min);
        let min_f2 = undominated
            .iter()
            .map(|f| f.objectives[1])
            .fold(f64::INFINITY, f64::min);
        assert_eq!(hall[0].1.objectives[0], min_f1);
        assert_eq!(hall[14].1.objectives[1], min_f2);
        assert!(
            hall.windows(2)
                .all(|w| w[0].1.objectives[0] <= w[1].1.objectives[0])
        );
    }

    #[test]
    fn stats_and_front_describe_the_population() {
        let mut evo = Evolution::new(
            problems::zdt1_space(3),
            Settings::new(Method::Nsga2, 6, 0),
            2,
        )
        .unwrap();
        let batch = evo.ask();
        let fits = [
            Fitness::new(vec![0.0, 1.0]),
            Fitness::new(vec![1.0, 0.0]),
            Fitness::new(vec![1.0, 1.0]),
            Fitness::constrained(vec![0.0, 0.0], 2.0),
            Fitness::failed(2),
            Fitness::new(vec![f64::NAN, 0.0]),
        ];
        evo.tell(batch.into_iter().zip(fits).collect()).unwrap();
        let stats = evo.stats();
        assert_eq!((stats.feasible, stats.infeasible, stats.failed), (3, 1, 2));
        assert_eq!(
            stats.objectives[0],
            ObjectiveStats {
                best: 0.0,
                mean: 2.0 / 3.0,
                worst: 1.0
            }
        );
        let front: Vec<Vec<f64>> = evo.front().into_iter().map(|(_, f)| f.objectives).collect();
        assert_eq!(front, vec![vec![0.0, 1.0], vec![1.0, 0.0]]);
    }

    #[test]
    fn children_do_not_repeat_known_genes() {
        let repeats = |evo: &Evolution, batch: &[Candidate]| {
            let known = |i: usize, c: &Candidate| {
                evo.population.iter().any(|(p, _)| p.genes == c.genes)
                    || batch[..i].iter().any(|b| b.genes == c.genes)
            };
            batch
                .iter()
                .enumerate()
                .filter(|&(i, c)| known(i, c))
                .count()
        };
        for method in [Method::Ga, Method::MuPlusLambda] {
            let mut evo = sphere_run(method, 30);
            let mut repeated = 0;
            for _ in 0..20 {
                let batch = evo.ask();
                repeated += repeats(&evo, &batch);
                evo.tell(evaluate(&batch)).unwrap();
            }
            // The generational GA keeps a parent's unchanged copies (about 3 % of children).
            assert_eq!(repeated > 0, method == Method::Ga, "{method}: {repeated}");
            let mut steady = sphere_run(method, 30);
            for _ in 0..600 {
                let c = steady.ask_one();
                assert!(!steady.population.iter().any(|(p, _)| p.genes == c.genes));
                let f = Fitness::single(problems::sphere(&c.genes));
                steady.tell_one(c, f).unwrap();
            }
        }
        // A space with fewer points than the population still fills it, with repeats.
        let tiny = Space::new(vec![Gene::int("k", 0.0, 2.0)]).unwrap();
        let mut evo = Evolution::new(tiny, Settings::new(Method::Ga, 8, 0), 1).unwrap();
        for _ in 0..3 {
            let batch = evo.ask();
            assert_eq!(batch.len(), if evo.population().is_empty() { 8 } else { 7 });
            let results = batch.into_iter().map(|c| {
                let f = Fitness::single(c.genes[0]);
                (c, f)
            });
            evo.tell(results.collect()).unwrap();
        }
        assert_eq!(evo.hall_of_fame().len(), 3);
    }
}
