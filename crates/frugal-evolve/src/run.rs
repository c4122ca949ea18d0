//! Driving an [`Evolution`] through a job farm: jobs out, metrics back, a checkpoint per
//! generation, results on disk as they are decided.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use frugal_farm::{Farm, FarmError, Job, JobError, Metrics, Outcome};
use serde::{Deserialize, Serialize};

use crate::{Candidate, Evolution, Fitness, Gene, Method, Settings, Space, Stats};

/// Which way a metric is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Goal {
    /// Smaller is better.
    Min,
    /// Larger is better.
    Max,
}

/// One objective: a metric, or a weighted sum of metrics (larger is better, as in a score
/// like `0.35·stability + 0.30·accuracy + …`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Objective {
    /// A metric, minimised or maximised.
    Metric {
        /// Its name in the job's metrics.
        name: String,
        /// Which way is better.
        goal: Goal,
    },
    /// A weighted sum of metrics, maximised.
    Weighted(BTreeMap<String, f64>),
}

impl Objective {
    /// A short label for reports: the metric's name, or `score`.
    pub fn label(&self) -> String {
        match self {
            Objective::Metric { name, .. } => name.clone(),
            Objective::Weighted(_) => "score".into(),
        }
    }

    /// +1 when minimised as reported, −1 when the optimiser minimises the negation.
    fn sign(&self) -> f64 {
        match self {
            Objective::Metric {
                goal: Goal::Min, ..
            } => 1.0,
            _ => -1.0,
        }
    }

    fn value(&self, m: &Metrics) -> Result<f64, ScoreError> {
        let get = |name: &str| {
            m.get(name)
                .copied()
                .filter(|v| v.is_finite())
                .ok_or_else(|| ScoreError::Metric {
                    name: name.to_owned(),
                    reported: m.keys().cloned().collect(),
                })
        };
        match self {
            Objective::Metric { name, .. } => get(name),
            Objective::Weighted(w) => w
                .iter()
                .map(|(name, weight)| get(name).map(|v| weight * v))
                .sum(),
        }
    }

    /// The user-facing value (as reported, not negated) of an optimiser's objective value.
    pub fn reported(&self, minimised: f64) -> f64 {
        self.sign() * minimised
    }
}

/// A bound on a metric; the amount it is broken by adds to the candidate's violation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Constraint {
    /// The metric.
    pub metric: String,
    /// Smallest allowed value.
    pub min: Option<f64>,
    /// Largest allowed value.
    pub max: Option<f64>,
}

/// Why an outcome has no fitness; such a candidate ranks last.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ScoreError {
    /// The job failed.
    #[error("{0}")]
    Job(JobError),
    /// An objective's metric is missing or not finite.
    #[error("metric {name:?} is missing or not finite (the job reported: {})", reported.join(", "))]
    Metric {
        /// The metric.
        name: String,
        /// The metrics the job did report.
        reported: Vec<String>,
    },
    /// A constraint's metric is missing.
    #[error("constraint metric {0:?} is missing")]
    Constraint(String),
}

/// How metrics become a [`Fitness`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scoring {
    /// One objective for `ga` and `mu_plus_lambda`, two or more for `nsga2`.
    pub objectives: Vec<Objective>,
    /// Constraints, all of which a feasible candidate meets.
    pub constraints: Vec<Constraint>,
}

impl Scoring {
    /// The fitness of a job's outcome; `Err` (a failed job, a missing metric) ranks last.
    pub fn fitness(&self, result: &Result<Metrics, JobError>) -> Result<Fitness, ScoreError> {
        let m = result.as_ref().map_err(|e| ScoreError::Job(e.clone()))?;
        let objectives = self
            .objectives
            .iter()
            .map(|o| o.value(m).map(|v| o.sign() * v))
            .collect::<Result<Vec<_>, _>>()?;
        let mut violation = 0.0;
        for c in &self.constraints {
            let v = m
                .get(&c.metric)
                .copied()
                .filter(|v| !v.is_nan())
                .ok_or_else(|| ScoreError::Constraint(c.metric.clone()))?;
            violation += c.min.map_or(0.0, |lo| (lo - v).max(0.0))
                + c.max.map_or(0.0, |hi| (v - hi).max(0.0));
        }
        Ok(Fitness::constrained(objectives, violation))
    }
}

/// How genes become a job's parameters: scalar genes by name, and vector genes (`x[0]`,
/// `x[1]`, …) as one array `x`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GeneSpec {
    /// The parameter's name.
    pub name: String,
    /// Bounds.
    pub low: f64,
    /// Bounds.
    pub high: f64,
    /// Whole numbers only.
    pub integer: bool,
    /// `Some(n)`: an array of n genes.
    pub count: Option<usize>,
}

/// Everything that decides a run's results (the backend and worker count do not).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSpec {
    /// The genes, in order.
    pub genes: Vec<GeneSpec>,
    /// The optimiser's settings.
    pub settings: Settings,
    /// Generations after the initial population (the budget is μ + generations·λ
    /// evaluations, as in DEAP's `ngen`).
    pub generations: u32,
    /// Steady-state: a new candidate as soon as any result is in, never waiting for a
    /// generation. Faster when evaluation times vary, but its results depend on the order
    /// results arrive in, so they are not reproducible across worker counts.
    pub steady_state: bool,
    /// The job kind that evaluates a candidate.
    pub kind: String,
    /// Parameters every job gets besides the genes.
    pub params: serde_json::Map<String, serde_json::Value>,
    /// Seconds one attempt may run.
    pub timeout_s: Option<f64>,
    /// Attempts before a job is given up.
    pub max_attempts: u32,
    /// Metrics to fitness.
    pub scoring: Scoring,
}

/// A run specification that cannot run: the part of it and what is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    /// No job kind is named.
    #[error(
        "no job kind: name the job kind that evaluates a candidate (e.g. `rastrigin`, `particles`, or one of the configuration's own kinds)"
    )]
    NoKind,
    /// There are no genes to search.
    #[error("no genes: add at least one, e.g. `dt = {{ low = 0.001, high = 0.05 }}`")]
    NoGenes,
    /// One gene is unusable.
    #[error("`genes.{name}`: {reason}")]
    Gene {
        /// The gene.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A gene is also a fixed job parameter.
    #[error(
        "`genes.{name}` is also a fixed job parameter: a parameter is either searched or fixed"
    )]
    GeneFixed {
        /// The gene.
        name: String,
    },
    /// The method does not fit the number of objectives.
    #[error(
        "method `{method}` with {objectives} objective(s): use nsga2 for several objectives, ga or mu_plus_lambda for one"
    )]
    Method {
        /// The method.
        method: crate::Method,
        /// Objectives given.
        objectives: usize,
    },
    /// A weighted objective without a usable weight.
    #[error("a weighted objective needs at least one metric with a finite weight")]
    Weights,
    /// A constraint with neither bound.
    #[error("constraint on {metric:?} needs `min`, `max` or both")]
    Constraint {
        /// The constrained metric.
        metric: String,
    },
    /// Attempts per job below 1.
    #[error("`max_attempts` must be at least 1")]
    Attempts,
    /// A timeout that is not a positive number of seconds.
    #[error("`timeout_s` = {0} must be a positive number of seconds")]
    Timeout(f64),
    /// The optimiser's settings are out of range.
    #[error("[search]: {0}")]
    Settings(crate::EvolveError),
    /// The search space the genes make is unusable.
    #[error("[genes]: {0}")]
    Space(crate::EvolveError),
}

impl RunSpec {
    /// Checks that the specification can run: a job kind, usable genes that are not also
    /// fixed parameters, a method that fits the objectives, constraints with a bound,
    /// attempts and timeout in range, and settings the optimiser accepts.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.kind.is_empty() {
            return Err(SpecError::NoKind);
        }
        if self.genes.is_empty() {
            return Err(SpecError::NoGenes);
        }
        for g in &self.genes {
            let gene = |reason: String| SpecError::Gene {
                name: g.name.clone(),
                reason,
            };
            if !(g.low.is_finite() && g.high.is_finite() && g.low < g.high) {
                return Err(gene(format!(
                    "needs finite bounds with low < high (found {} and {})",
                    g.low, g.high
                )));
            }
            if g.count == Some(0) {
                return Err(gene("`count` must be at least 1".into()));
            }
            if self.params.contains_key(&g.name) {
                return Err(SpecError::GeneFixed {
                    name: g.name.clone(),
                });
            }
        }
        let objectives = &self.scoring.objectives;
        for o in objectives {
            if let Objective::Weighted(w) = o
                && (w.is_empty() || w.values().any(|v| !v.is_finite()))
            {
                return Err(SpecError::Weights);
            }
        }
        if (objectives.len() > 1) != (self.settings.method == crate::Method::Nsga2) {
            return Err(SpecError::Method {
                method: self.settings.method,
                objectives: objectives.len(),
            });
        }
        if let Some(k) = self
            .scoring
            .constraints
            .iter()
            .find(|k| k.min.is_none() && k.max.is_none())
        {
            return Err(SpecError::Constraint {
                metric: k.metric.clone(),
            });
        }
        if self.max_attempts == 0 {
            return Err(SpecError::Attempts);
        }
        if let Some(t) = self.timeout_s.filter(|t| !(t.is_finite() && *t > 0.0)) {
            return Err(SpecError::Timeout(t));
        }
        let space = self.space();
        self.settings
            .validate(space.len())
            .map_err(SpecError::Settings)?;
        space.validate().map_err(SpecError::Space)
    }

    /// The search space the genes make.
    pub fn space(&self) -> Space {
        let mut genes = Vec::new();
        for g in &self.genes {
            let gene = |name: String| Gene {
                name,
                low: g.low,
                high: g.high,
                integer: g.integer,
            };
            match g.count {
                None => genes.push(gene(g.name.clone())),
                Some(n) => genes.extend((0..n).map(|i| gene(format!("{}[{i}]", g.name)))),
            }
        }
        Space { genes }
    }

    /// The job's parameters for a candidate's genes.
    pub fn params(&self, genes: &[f64]) -> serde_json::Value {
        let mut params = self.params.clone();
        let number = |v: f64, integer: bool| {
            if integer {
                serde_json::json!(v as i64)
            } else {
                serde_json::json!(v)
            }
        };
        let mut at = 0;
        for g in &self.genes {
            let value = match g.count {
                None => {
                    at += 1;
                    number(genes[at - 1], g.integer)
                }
                Some(n) => {
                    at += n;
                    serde_json::Value::Array(
                        genes[at - n..at]
                            .iter()
                            .map(|&v| number(v, g.integer))
                            .collect(),
                    )
                }
            };
            params.insert(g.name.clone(), value);
        }
        serde_json::Value::Object(params)
    }

    /// The run's budget: μ + generations·λ evaluations.
    pub fn evaluations(&self) -> u64 {
        let s = self.settings.resolved(self.space().len());
        let lambda = s.offspring.unwrap_or(s.population) as u64;
        s.population as u64 + u64::from(self.generations) * lambda
    }

    fn fingerprint(&self) -> String {
        let json = serde_json::to_vec(self).expect("specs serialize");
        format!(
            "{:016x}",
            frugal_rand::mix64(json.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            }))
        )
    }
}

/// One decided evaluation, as written to `results.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Generation the candidate was bred for.
    pub generation: u32,
    /// Candidate id.
    pub id: u64,
    /// Its evaluation seed.
    pub seed: u64,
    /// The job's parameters.
    pub params: serde_json::Value,
    /// Metrics, when the job succeeded.
    pub metrics: Option<Metrics>,
    /// Objectives as reported (not negated), when scored.
    pub objectives: Option<Vec<f64>>,
    /// Total constraint violation (`None` when the evaluation failed).
    pub violation: Option<f64>,
    /// Why the evaluation failed.
    pub error: Option<String>,
    /// Deliveries the job took.
    pub attempts: u32,
    /// Who ran it.
    pub worker: String,
    /// Wall time of its final attempt.
    pub seconds: f64,
}

/// Per-generation statistics, as reported (not negated).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationLine {
    /// Generation.
    pub generation: u32,
    /// Evaluations told so far.
    pub evaluations: u64,
    /// Per objective: best, mean, worst over the feasible population.
    pub objectives: Vec<[f64; 3]>,
    /// Members whose evaluation failed.
    pub failed: usize,
    /// Members that break a constraint.
    pub infeasible: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Checkpoint {
    version: u32,
    fingerprint: String,
    run_id: String,
    evolution: Evolution,
    history: Vec<GenerationLine>,
    failed: u64,
    duplicates: u64,
    /// Lengths of the append-only files when this checkpoint was written; a resumed run
    /// cuts them back to these, dropping what a killed run wrote after it.
    files: BTreeMap<String, u64>,
    /// Steady state: candidates handed out and not yet told.
    in_flight: Vec<Candidate>,
}

const CHECKPOINT: &str = "checkpoint.json";
const RESULTS_JSONL: &str = "results.jsonl";
const RESULTS_CSV: &str = "results.csv";
const GENERATIONS_CSV: &str = "generations.csv";

/// What a run reports as it goes.
#[derive(Debug, Clone)]
pub enum Progress<'a> {
    /// A job finished.
    Evaluated {
        /// Evaluations decided so far, and the run's total.
        done: u64,
        /// The run's total budget.
        total: u64,
    },
    /// A generation was decided and checkpointed.
    Generation(&'a GenerationLine),
}

/// The end of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The method.
    pub method: Method,
    /// Generations decided.
    pub generations: u32,
    /// Evaluations decided (failed ones included).
    pub evaluations: u64,
    /// Evaluations that failed after their retries.
    pub failed: u64,
    /// Results that arrived for already-decided jobs and were ignored.
    pub duplicates: u64,
    /// Best value per objective over the hall of fame (single objective: the best ever).
    pub best_fitness: Vec<f64>,
    /// The best candidate's parameters (single objective only).
    pub best_params: Option<serde_json::Value>,
    /// NSGA-II: the non-dominated feasible candidates' objectives, as reported.
    pub front: Vec<Vec<f64>>,
    /// Per-generation statistics.
    pub history: Vec<GenerationLine>,
    /// Objective labels.
    pub objectives: Vec<String>,
    /// Wall time of this invocation.
    pub seconds: f64,
}

/// Errors of a run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The farm failed.
    #[error(transparent)]
    Farm(#[from] FarmError),
    /// The optimiser refused the settings.
    #[error(transparent)]
    Evolve(#[from] crate::EvolveError),
    /// A file could not be read or written.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong and what to do.
        message: String,
    },
}

fn file_err(path: &Path, e: impl std::fmt::Display) -> RunError {
    RunError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// The run id a fresh run uses for its job ids and its claim on a queue.
pub fn new_run_id() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    format!(
        "{:012x}",
        frugal_rand::mix64(t ^ u64::from(std::process::id()).rotate_left(40)) & 0xffff_ffff_ffff
    )
}

/// The run id recorded in `dir`'s checkpoint, for resuming on the same queue.
pub fn checkpoint_run_id(dir: &Path) -> Result<Option<String>, RunError> {
    Ok(read_checkpoint(dir)?.map(|c| c.run_id))
}

fn read_checkpoint(dir: &Path) -> Result<Option<Checkpoint>, RunError> {
    let path = dir.join(CHECKPOINT);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            file_err(
                &path,
                format!("unreadable checkpoint ({e}); delete it to start over"),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(file_err(&path, e)),
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RunError> {
    let tmp = path.with_extension("json.tmp");
    let mut f = File::create(&tmp).map_err(|e| file_err(&tmp, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| file_err(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| file_err(path, e))?;
    if let Some(parent) = path.parent()
        && let Ok(d) = File::open(parent)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

struct Outputs {
    dir: PathBuf,
    objectives: usize,
    jsonl: BufWriter<File>,
    csv: BufWriter<File>,
    generations: BufWriter<File>,
}

impl Outputs {
    fn open(
        dir: &Path,
        spec: &RunSpec,
        cut: Option<&BTreeMap<String, u64>>,
    ) -> Result<Self, RunError> {
        let open = |name: &str| -> Result<BufWriter<File>, RunError> {
            let path = dir.join(name);
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| file_err(&path, e))?;
            let keep = cut.map_or(0, |c| c.get(name).copied().unwrap_or(0));
            f.set_len(keep).map_err(|e| file_err(&path, e))?;
            Ok(BufWriter::new(f))
        };
        let mut out = Self {
            dir: dir.to_path_buf(),
            objectives: spec.scoring.objectives.len(),
            jsonl: open(RESULTS_JSONL)?,
            csv: open(RESULTS_CSV)?,
            generations: open(GENERATIONS_CSV)?,
        };
        if cut.is_none() {
            let space = spec.space();
            let genes: Vec<String> = space.genes.iter().map(|g| csv_field(&g.name)).collect();
            let objectives: Vec<String> = spec
                .scoring
                .objectives
                .iter()
                .map(|o| csv_field(&o.label()))
                .collect();
            let line = format!(
                "generation,id,seed,{},{},violation,error",
                genes.join(","),
                objectives.join(",")
            );
            writeln!(out.csv, "{line}").map_err(|e| file_err(&dir.join(RESULTS_CSV), e))?;
            let stats: Vec<String> = objectives
                .iter()
                .flat_map(|o| ["best", "mean", "worst"].map(|s| format!("{o}_{s}")))
                .collect();
            writeln!(
                out.generations,
                "generation,evaluations,{},infeasible,failed",
                stats.join(",")
            )
            .map_err(|e| file_err(&dir.join(GENERATIONS_CSV), e))?;
        }
        Ok(out)
    }

    fn record(&mut self, r: &Record, genes: &[f64]) -> Result<(), RunError> {
        let json = serde_json::to_string(r).expect("records serialize");
        writeln!(self.jsonl, "{json}").map_err(|e| file_err(&self.dir.join(RESULTS_JSONL), e))?;
        let genes: Vec<String> = genes.iter().map(|g| g.to_string()).collect();
        let objectives: Vec<String> = match &r.objectives {
            Some(o) => o.iter().map(|v| v.to_string()).collect(),
            None => vec![String::new(); self.objectives],
        };
        let line = format!(
            "{},{},{},{},{},{},{}",
            r.generation,
            r.id,
            r.seed,
            genes.join(","),
            objectives.join(","),
            r.violation.map(|v| v.to_string()).unwrap_or_default(),
            csv_field(r.error.as_deref().unwrap_or(""))
        );
        writeln!(self.csv, "{line}").map_err(|e| file_err(&self.dir.join(RESULTS_CSV), e))
    }

    fn generation(&mut self, g: &GenerationLine) -> Result<(), RunError> {
        let stats: Vec<String> = g
            .objectives
            .iter()
            .flat_map(|s| s.map(|v| v.to_string()))
            .collect();
        writeln!(
            self.generations,
            "{},{},{},{},{}",
            g.generation,
            g.evaluations,
            stats.join(","),
            g.infeasible,
            g.failed
        )
        .map_err(|e| file_err(&self.dir.join(GENERATIONS_CSV), e))
    }

    /// Flushes and syncs, returning the lengths a checkpoint records.
    fn sync(&mut self) -> Result<BTreeMap<String, u64>, RunError> {
        let mut lengths = BTreeMap::new();
        for (name, w) in [
            (RESULTS_JSONL, &mut self.jsonl),
            (RESULTS_CSV, &mut self.csv),
            (GENERATIONS_CSV, &mut self.generations),
        ] {
            let path = self.dir.join(name);
            w.flush().map_err(|e| file_err(&path, e))?;
            w.get_ref().sync_data().map_err(|e| file_err(&path, e))?;
            lengths.insert(
                name.to_string(),
                w.get_ref()
                    .metadata()
                    .map_err(|e| file_err(&path, e))?
                    .len(),
            );
        }
        Ok(lengths)
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// A run in a directory, driven through a farm.
pub struct Run<'a> {
    spec: &'a RunSpec,
    dir: PathBuf,
    run_id: String,
    evolution: Evolution,
    history: Vec<GenerationLine>,
    failed: u64,
    duplicates_before: u64,
    in_flight: Vec<Candidate>,
    outputs: Outputs,
}

impl<'a> Run<'a> {
    /// Starts a fresh run in `dir` (any earlier checkpoint and results there are replaced),
    /// or, with `resume`, continues the one checkpointed there.
    pub fn open(
        spec: &'a RunSpec,
        dir: &Path,
        resume: bool,
        run_id: String,
    ) -> Result<Self, RunError> {
        std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
        let objectives = spec.scoring.objectives.len();
        if resume {
            let Some(c) = read_checkpoint(dir)? else {
                return Err(file_err(
                    &dir.join(CHECKPOINT),
                    "no checkpoint to resume from; run without --resume to start",
                ));
            };
            if c.fingerprint != spec.fingerprint() {
                return Err(file_err(
                    &dir.join(CHECKPOINT),
                    "the checkpoint was written by a different configuration (genes, settings, job or fitness changed); start over without --resume, or restore the configuration",
                ));
            }
            let outputs = Outputs::open(dir, spec, Some(&c.files))?;
            return Ok(Self {
                spec,
                dir: dir.to_path_buf(),
                run_id: c.run_id,
                evolution: c.evolution,
                history: c.history,
                failed: c.failed,
                duplicates_before: c.duplicates,
                in_flight: c.in_flight,
                outputs,
            });
        }
        let _ = std::fs::remove_file(dir.join(CHECKPOINT));
        let evolution = Evolution::new(spec.space(), spec.settings.clone(), objectives)?;
        let outputs = Outputs::open(dir, spec, None)?;
        Ok(Self {
            spec,
            dir: dir.to_path_buf(),
            run_id,
            evolution,
            history: Vec::new(),
            failed: 0,
            duplicates_before: 0,
            in_flight: Vec::new(),
            outputs,
        })
    }

    /// The run's id (job ids are `RUN/CANDIDATE`).
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// Evaluations decided so far.
    pub fn evaluations(&self) -> u64 {
        self.evolution.evaluations()
    }

    fn job_id(&self, c: &Candidate) -> String {
        format!("{}/{}", self.run_id, c.id)
    }

    fn job(&self, c: &Candidate) -> Job {
        let mut job = Job::new(
            self.job_id(c),
            &self.spec.kind,
            self.spec.params(&c.genes),
            c.seed,
        );
        job.timeout_s = self.spec.timeout_s;
        job.max_attempts = self.spec.max_attempts;
        job
    }

    fn decide(&mut self, c: &Candidate, outcome: &Outcome) -> Result<Fitness, RunError> {
        let n = self.spec.scoring.objectives.len();
        let scored = self.spec.scoring.fitness(&outcome.result);
        let (fitness, error) = match scored {
            Ok(f) => (f, None),
            Err(e) => (Fitness::failed(n), Some(e.to_string())),
        };
        if error.is_some() {
            self.failed += 1;
        }
        let record = Record {
            generation: c.generation,
            id: c.id,
            seed: c.seed,
            params: self.spec.params(&c.genes),
            metrics: outcome.result.as_ref().ok().cloned(),
            objectives: error.is_none().then(|| {
                self.spec
                    .scoring
                    .objectives
                    .iter()
                    .zip(&fitness.objectives)
                    .map(|(o, &v)| o.reported(v))
                    .collect()
            }),
            violation: error.is_none().then_some(fitness.violation),
            error,
            attempts: outcome.attempts,
            worker: outcome.worker.clone(),
            seconds: outcome.seconds,
        };
        self.outputs.record(&record, &c.genes)?;
        Ok(fitness)
    }

    fn close_generation(&mut self, farm: &dyn Farm) -> Result<GenerationLine, RunError> {
        let stats: Stats = self.evolution.stats();
        let line = GenerationLine {
            generation: stats.generation,
            evaluations: stats.evaluations,
            objectives: self
                .spec
                .scoring
                .objectives
                .iter()
                .zip(
                    stats
                        .objectives
                        .iter()
                        .map(Some)
                        .chain(std::iter::repeat(None)),
                )
                .map(|(o, s)| match s {
                    Some(s) => {
                        let (a, b) = (o.reported(s.best), o.reported(s.worst));
                        [a, o.reported(s.mean), b]
                    }
                    None => [f64::NAN; 3],
                })
                .collect(),
            failed: stats.failed,
            infeasible: stats.infeasible,
        };
        self.outputs.generation(&line)?;
        self.history.push(line.clone());
        let files = self.outputs.sync()?;
        let c = Checkpoint {
            version: 1,
            fingerprint: self.spec.fingerprint(),
            run_id: self.run_id.clone(),
            evolution: self.evolution.clone(),
            history: self.history.clone(),
            failed: self.failed,
            duplicates: self.duplicates_before + farm.tally().duplicates(),
            files,
            in_flight: self.in_flight.clone(),
        };
        write_atomic(
            &self.dir.join(CHECKPOINT),
            &serde_json::to_vec(&c).expect("checkpoints serialize"),
        )?;
        Ok(line)
    }

    /// Runs to the end of the budget. `parallel` is how many evaluations a steady-state run
    /// keeps in flight (ignored by generational runs, which submit whole generations).
    pub fn run(
        &mut self,
        farm: &mut dyn Farm,
        parallel: usize,
        progress: &mut dyn FnMut(Progress<'_>),
    ) -> Result<Summary, RunError> {
        let start = Instant::now();
        let total = self.spec.evaluations();
        if self.spec.steady_state {
            self.run_steady(farm, parallel.max(1), total, progress)?;
        } else {
            while self.evolution.evaluations() < total {
                let batch = self.evolution.ask();
                farm.submit(batch.iter().map(|c| self.job(c)).collect())?;
                let mut outcomes: HashMap<String, Outcome> = HashMap::new();
                let done_before = self.evolution.evaluations();
                while outcomes.len() < batch.len() {
                    if let Some(o) = farm.next(Duration::from_millis(500))? {
                        outcomes.insert(o.id.clone(), o);
                        progress(Progress::Evaluated {
                            done: done_before + outcomes.len() as u64,
                            total,
                        });
                    }
                }
                // Decided in candidate order, so files and results do not depend on which
                // job finished first.
                let mut told = Vec::with_capacity(batch.len());
                for c in batch {
                    let o = outcomes
                        .remove(&self.job_id(&c))
                        .expect("every submitted job has an outcome");
                    let f = self.decide(&c, &o)?;
                    told.push((c, f));
                }
                self.evolution.tell(told)?;
                let line = self.close_generation(farm)?;
                progress(Progress::Generation(&line));
            }
        }
        Ok(self.summary(farm, start))
    }

    fn run_steady(
        &mut self,
        farm: &mut dyn Farm,
        parallel: usize,
        total: u64,
        progress: &mut dyn FnMut(Progress<'_>),
    ) -> Result<(), RunError> {
        let per_generation = self.spec.settings.population.max(1) as u64;
        // Candidates handed out before a kill are evaluated again, under their own seeds.
        farm.submit(self.in_flight.iter().map(|c| self.job(c)).collect())?;
        while self.evolution.evaluations() < total {
            while self.in_flight.len() < parallel
                && self.evolution.evaluations() + (self.in_flight.len() as u64) < total
            {
                let c = self.evolution.ask_one();
                farm.submit(vec![self.job(&c)])?;
                self.in_flight.push(c);
            }
            let Some(o) = farm.next(Duration::from_millis(500))? else {
                continue;
            };
            let at = self
                .in_flight
                .iter()
                .position(|c| self.job_id(c) == o.id)
                .expect("outcomes are for jobs in flight");
            let c = self.in_flight.remove(at);
            let f = self.decide(&c, &o)?;
            self.evolution.tell_one(c, f)?;
            let done = self.evolution.evaluations();
            progress(Progress::Evaluated { done, total });
            if done.is_multiple_of(per_generation) || done == total {
                let line = self.close_generation(farm)?;
                progress(Progress::Generation(&line));
            }
        }
        Ok(())
    }

    fn summary(&self, farm: &dyn Farm, start: Instant) -> Summary {
        let objectives = &self.spec.scoring.objectives;
        let hall = self.evolution.hall_of_fame();
        let multi = objectives.len() > 1;
        let best_fitness = (0..objectives.len())
            .map(|k| {
                let best = hall
                    .iter()
                    .filter(|(_, f)| f.is_feasible())
                    .map(|(_, f)| f.objectives[k])
                    .fold(f64::INFINITY, f64::min);
                objectives[k].reported(best)
            })
            .collect();
        let best_params = (!multi)
            .then(|| hall.first().map(|(c, _)| self.spec.params(&c.genes)))
            .flatten();
        let front = if multi {
            let mut f: Vec<Vec<f64>> = self
                .evolution
                .front()
                .iter()
                .map(|(_, f)| {
                    objectives
                        .iter()
                        .zip(&f.objectives)
                        .map(|(o, &v)| o.reported(v))
                        .collect()
                })
                .collect();
            f.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
            f
        } else {
            Vec::new()
        };
        Summary {
            method: self.spec.settings.method,
            generations: self.evolution.generation(),
            evaluations: self.evolution.evaluations(),
            failed: self.failed,
            duplicates: self.duplicates_before + farm.tally().duplicates(),
            best_fitness,
            best_params,
            front,
            history: self.history.clone(),
            objectives: objectives.iter().map(Objective::label).collect(),
            seconds: start.elapsed().as_secs_f64(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Method;

    fn spec() -> RunSpec {
        RunSpec {
            genes: vec![GeneSpec {
                name: "x".into(),
                low: -1.0,
                high: 1.0,
                integer: false,
                count: Some(3),
            }],
            settings: Settings::new(Method::Ga, 10, 0),
            generations: 2,
            steady_state: false,
            kind: "sphere".into(),
            params: serde_json::Map::new(),
            timeout_s: None,
            max_attempts: 2,
            scoring: Scoring {
                objectives: vec![Objective::Metric {
                    name: "f".into(),
                    goal: Goal::Min,
                }],
                constraints: vec![],
            },
        }
    }

    #[test]
    fn a_spec_that_cannot_run_says_which_part_is_wrong() {
        assert_eq!(spec().validate(), Ok(()));
        let with = |f: &dyn Fn(&mut RunSpec)| {
            let mut s = spec();
            f(&mut s);
            s.validate().unwrap_err()
        };
        assert_eq!(with(&|s| s.kind.clear()), SpecError::NoKind);
        assert_eq!(with(&|s| s.genes.clear()), SpecError::NoGenes);
        assert!(matches!(
            with(&|s| s.genes[0].high = -2.0),
            SpecError::Gene { name, .. } if name == "x"
        ));
        assert!(matches!(
            with(&|s| {
                s.params.insert("x".into(), 1.0.into());
            }),
            SpecError::GeneFixed { .. }
        ));
        assert_eq!(
            with(&|s| s.settings.method = Method::Nsga2),
            SpecError::Method {
                method: Method::Nsga2,
                objectives: 1
            }
        );
        assert_eq!(with(&|s| s.max_attempts = 0), SpecError::Attempts);
        assert_eq!(with(&|s| s.timeout_s = Some(0.0)), SpecError::Timeout(0.0));
        assert!(matches!(
            with(&|s| s.settings.population = 0),
            SpecError::Settings(_)
        ));
        assert!(
            with(&|s| s.genes[0].high = -2.0)
                .to_string()
                .contains("genes.x")
        );
    }
}
