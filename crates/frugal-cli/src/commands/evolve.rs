//! `frugal evolve`, `frugal worker` and `frugal farm`: evolution on a job farm, the Redis
//! worker, and queue inspection.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use frugal_evolve::run::{
    Constraint, GeneSpec, Goal, Objective, Progress, Run, RunSpec, Scoring, Summary,
};
use frugal_evolve::{Method, Settings};
use frugal_farm::{
    CommandTemplate, Context, Farm, Job, Kind, LocalFarm, Metrics, RedisFarm, Registry, Worker,
    WorkerOptions, bench,
};

use super::UserError;
use crate::args::{EvolveArgs, FarmBenchArgs, FarmCommand, WorkerArgs};
use crate::config::schema::{EvolveConfig, KindConfig};
use crate::config::{AnyConfig, Source};

/// `frugal evolve CONFIG`.
pub(crate) fn run(args: EvolveArgs, out: &mut dyn Write) -> Result<()> {
    let source = Source::read(&args.config.file, &args.config.set)?;
    let config = match AnyConfig::from_document(&source.document()?)? {
        AnyConfig::Evolve(c) => c,
        other => bail!(
            "{}: `frugal evolve` runs `evolve` configurations; this one is `{}`",
            args.config.file.display(),
            other.workload().name()
        ),
    };
    let file = &args.config.file;
    let spec = run_spec(&config).map_err(|e| UserError(format!("{}: {e}", file.display())))?;
    let base = file.parent().unwrap_or(Path::new("."));
    let registry =
        registry(&config.kinds, base).map_err(|e| UserError(format!("{}: {e}", file.display())))?;
    let dir = &config.output_dir;
    let run_id = if args.resume {
        frugal_evolve::run::checkpoint_run_id(dir)?.unwrap_or_else(frugal_evolve::run::new_run_id)
    } else {
        frugal_evolve::run::new_run_id()
    };

    let workers = args.workers.unwrap_or(config.farm.workers as usize);
    let workers = if workers == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        workers
    };
    let (mut farm, parallel): (Box<dyn Farm>, usize) = match &args.redis {
        Some(url) => {
            let queue = args.queue.as_deref().unwrap_or(&config.farm.queue);
            let mut farm = RedisFarm::connect(
                url,
                queue,
                &run_id,
                Duration::from_secs_f64(config.farm.lease_s),
            )?;
            let capable = announce_workers(&mut farm, queue, &spec.kind)?;
            let slots = if config.farm.in_flight > 0 {
                config.farm.in_flight as usize
            } else {
                capable.max(1)
            };
            (Box::new(farm), slots)
        }
        None => {
            if !registry.contains(&spec.kind) {
                return Err(UserError(format!(
                    "{}: job kind {:?} is neither built in nor a [kinds.{}] table of this file (known: {})",
                    file.display(),
                    spec.kind,
                    spec.kind,
                    registry.names().join(", ")
                ))
                .into());
            }
            let slots = if config.farm.in_flight > 0 {
                config.farm.in_flight as usize
            } else {
                workers
            };
            (Box::new(LocalFarm::new(registry, workers)), slots)
        }
    };

    let mut run = Run::open(&spec, dir, args.resume, run_id)?;
    let every = (spec.generations / 10).max(1);
    let total = spec.evaluations();
    let bar = crate::progress::bar(total, "evolve", false);
    bar.set_position(run.evaluations());
    let mut lines: Vec<String> = Vec::new();
    let labels: Vec<String> = spec
        .scoring
        .objectives
        .iter()
        .map(Objective::label)
        .collect();
    if !args.json {
        writeln!(
            out,
            "evolve: {} on {} ({}), {} evaluations, output in {}",
            spec.settings.method,
            spec.kind,
            farm.describe(),
            total,
            dir.display()
        )?;
    }
    let summary = run.run(farm.as_mut(), parallel, &mut |p| match p {
        Progress::Evaluated { done, .. } => bar.set_position(done),
        Progress::Generation(g) => {
            if g.generation % every == 0 || u64::from(g.generation) >= u64::from(spec.generations) {
                let best: Vec<String> = labels
                    .iter()
                    .zip(&g.objectives)
                    .map(|(l, s)| format!("{l} best {:.6} mean {:.6}", s[0], s[1]))
                    .collect();
                lines.push(format!(
                    "generation {:>4}: {} evaluations, {}, failed {}",
                    g.generation,
                    g.evaluations,
                    best.join("; "),
                    g.failed
                ));
                bar.println(&lines[lines.len() - 1]);
            }
        }
    })?;
    bar.finish_and_clear();
    drop(farm);
    let hypervolume = hypervolume(&config, &spec, &summary);
    plots(&spec, &summary, dir)?;
    if args.json {
        return super::print_json(out, &json_summary(&summary, hypervolume, dir));
    }
    for l in lines {
        writeln!(out, "{l}")?;
    }
    if summary.front.is_empty() {
        writeln!(
            out,
            "best {}: {}",
            labels.join(", "),
            summary
                .best_fitness
                .iter()
                .map(|v| format!("{v:.6}"))
                .collect::<Vec<_>>()
                .join(", ")
        )?;
        if let Some(p) = &summary.best_params {
            writeln!(out, "best parameters: {p}")?;
        }
    } else {
        writeln!(out, "Pareto front: {} candidates", summary.front.len())?;
        if let Some(hv) = hypervolume {
            writeln!(out, "hypervolume: {hv:.4}")?;
        }
    }
    writeln!(
        out,
        "{} evaluations in {:.1} s; failed {}; duplicates {}; results in {}",
        summary.evaluations,
        summary.seconds,
        summary.failed,
        summary.duplicates,
        dir.join("results.csv").display()
    )?;
    Ok(())
}

fn json_summary(s: &Summary, hypervolume: Option<f64>, dir: &Path) -> serde_json::Value {
    let best = if s.best_fitness.len() == 1 {
        serde_json::json!(s.best_fitness[0])
    } else {
        serde_json::json!(s.best_fitness)
    };
    serde_json::json!({
        "method": s.method,
        "objectives": s.objectives,
        "best_fitness": best,
        "best_params": s.best_params,
        "front": s.front,
        "hypervolume": hypervolume,
        "generations": s.generations,
        "evaluations": s.evaluations,
        "failed": s.failed,
        "duplicates": s.duplicates,
        "seconds": s.seconds,
        "output_dir": dir,
    })
}

fn hypervolume(config: &EvolveConfig, spec: &RunSpec, s: &Summary) -> Option<f64> {
    let reference = config.fitness.reference.as_ref()?;
    if s.front.is_empty() || reference.len() != 2 || spec.scoring.objectives.len() != 2 {
        return None;
    }
    // Maximised objectives become minimised ones by negation, reference point included.
    let sign: Vec<f64> = spec
        .scoring
        .objectives
        .iter()
        .map(|o| o.reported(1.0))
        .collect();
    let points: Vec<[f64; 2]> = s
        .front
        .iter()
        .map(|p| [p[0] * sign[0], p[1] * sign[1]])
        .collect();
    Some(frugal_evolve::problems::hypervolume_2d(
        &points,
        [reference[0] * sign[0], reference[1] * sign[1]],
    ))
}

fn plots(spec: &RunSpec, s: &Summary, dir: &Path) -> Result<()> {
    let first = |k: usize| -> Vec<(f64, f64)> {
        s.history
            .iter()
            .filter(|g| g.objectives[0][k].is_finite())
            .map(|g| (f64::from(g.generation), g.objectives[0][k]))
            .collect()
    };
    let label = spec.scoring.objectives[0].label();
    crate::plot::convergence(
        &label,
        &first(0),
        &first(1),
        &first(2),
        &dir.join("convergence.png"),
    )?;
    if !s.front.is_empty() && spec.scoring.objectives.len() == 2 {
        let labels = (
            spec.scoring.objectives[0].label(),
            spec.scoring.objectives[1].label(),
        );
        let points: Vec<(f64, f64)> = s.front.iter().map(|p| (p[0], p[1])).collect();
        crate::plot::pareto_front(&labels, &points, &dir.join("pareto.png"))?;
    }
    Ok(())
}

/// The configuration's search as a run specification, checked.
fn run_spec(c: &EvolveConfig) -> Result<RunSpec, String> {
    if c.job.kind.is_empty() {
        return Err("`job.kind` is missing: name the job kind that evaluates a candidate (e.g. `rastrigin`, `particles`, or a [kinds.NAME] of this file)".into());
    }
    if c.genes.is_empty() {
        return Err(
            "[genes] is empty: add at least one gene, e.g. `dt = { low = 0.001, high = 0.05 }`"
                .into(),
        );
    }
    let mut genes = Vec::new();
    for (name, g) in &c.genes {
        if !(g.low.is_finite() && g.high.is_finite() && g.low < g.high) {
            return Err(format!(
                "`genes.{name}`: needs finite bounds with low < high (found {} and {})",
                g.low, g.high
            ));
        }
        if g.count == Some(0) {
            return Err(format!("`genes.{name}.count` must be at least 1"));
        }
        if c.job.params.contains_key(name) {
            return Err(format!(
                "`genes.{name}` is also in `job.params`: a parameter is either searched or fixed"
            ));
        }
        genes.push(GeneSpec {
            name: name.clone(),
            low: g.low,
            high: g.high,
            integer: g.integer,
            count: g.count.map(|n| n as usize),
        });
    }
    let f = &c.fitness;
    let given = [
        f.minimize.is_some(),
        f.maximize.is_some(),
        f.weights.is_some(),
        f.objectives.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if given != 1 {
        return Err("[fitness] needs exactly one of `minimize = \"METRIC\"`, `maximize = \"METRIC\"`, `weights = { METRIC = WEIGHT, … }` or `objectives = [{ metric = \"…\", goal = \"min\" }, …]`".into());
    }
    let objectives = if let Some(m) = &f.minimize {
        vec![Objective::Metric {
            name: m.clone(),
            goal: Goal::Min,
        }]
    } else if let Some(m) = &f.maximize {
        vec![Objective::Metric {
            name: m.clone(),
            goal: Goal::Max,
        }]
    } else if let Some(w) = &f.weights {
        if w.is_empty() || w.values().any(|v| !v.is_finite()) {
            return Err("`fitness.weights` needs at least one metric with a finite weight".into());
        }
        vec![Objective::Weighted(w.clone())]
    } else {
        f.objectives
            .iter()
            .flatten()
            .map(|o| Objective::Metric {
                name: o.metric.clone(),
                goal: o.goal,
            })
            .collect()
    };
    let s = &c.search;
    let multi = objectives.len() > 1;
    if multi != (s.method == Method::Nsga2) {
        return Err(format!(
            "`search.method = \"{}\"` with {} objective(s): use nsga2 for several objectives, ga or mu_plus_lambda for one",
            s.method,
            objectives.len()
        ));
    }
    for k in &c.fitness.constraints {
        if k.min.is_none() && k.max.is_none() {
            return Err(format!(
                "constraint on {:?} needs `min`, `max` or both",
                k.metric
            ));
        }
    }
    if c.job.max_attempts == 0 {
        return Err("`job.max_attempts` must be at least 1".into());
    }
    if c.job.timeout_s.is_some_and(|t| !(t.is_finite() && t > 0.0)) {
        return Err("`job.timeout_s` must be a positive number of seconds".into());
    }
    if !(c.farm.lease_s.is_finite() && c.farm.lease_s > 0.0) {
        return Err("`farm.lease_s` must be a positive number of seconds".into());
    }
    let mut settings = Settings::new(s.method, s.population as usize, c.seed);
    settings.offspring = s.offspring.map(|v| v as usize);
    if let Some(e) = s.elite {
        settings.elite = e as usize;
    }
    settings.tournament = s.tournament.map(|v| v as usize);
    settings.crossover_prob = s.crossover_prob;
    settings.crossover_var_prob = s.crossover_var_prob;
    settings.eta_c = s.eta_c;
    settings.mutation_prob = s.mutation_prob;
    settings.eta_m = s.eta_m;
    settings.hall_of_fame = s.hall_of_fame.map(|v| v as usize);
    let spec = RunSpec {
        genes,
        settings,
        generations: s.generations,
        steady_state: s.steady_state,
        kind: c.job.kind.clone(),
        params: c.job.params.clone(),
        timeout_s: c.job.timeout_s,
        max_attempts: c.job.max_attempts,
        scoring: Scoring {
            objectives,
            constraints: c
                .fitness
                .constraints
                .iter()
                .map(|k| Constraint {
                    metric: k.metric.clone(),
                    min: k.min,
                    max: k.max,
                })
                .collect(),
        },
    };
    spec.settings
        .validate(spec.space().len())
        .map_err(|e| format!("[search]: {e}"))?;
    spec.space()
        .validate()
        .map_err(|e| format!("[genes]: {e}"))?;
    Ok(spec)
}

/// Built-in kinds plus this machine's own from `kinds` (paths relative to `base`).
fn registry(kinds: &BTreeMap<String, KindConfig>, base: &Path) -> Result<Registry, String> {
    let mut r = Registry::new();
    frugal_farm::register_builtin(&mut r)?;
    frugal_evolve::kinds::register(&mut r)?;
    super::nbody::register_kinds(&mut r)?;
    for (name, k) in kinds {
        let kind = format!("[kinds.{name}]");
        match (&k.command, &k.onnx) {
            (Some(command), None) => {
                if k.inputs.is_some() || k.outputs.is_some() {
                    return Err(format!(
                        "{kind}: `inputs` and `outputs` belong to `onnx` kinds"
                    ));
                }
                let mut command = command.clone();
                // A program named by a relative path lives beside the configuration.
                if let Some(p) = command.first_mut()
                    && p.contains('/')
                    && Path::new(p.as_str()).is_relative()
                {
                    *p = base.join(&*p).to_string_lossy().into_owned();
                }
                let t = CommandTemplate {
                    command,
                    metrics: k.metrics.unwrap_or_default(),
                    timeout_s: k.timeout_s,
                    workdir: k.workdir.as_ref().map(|w| base.join(w)),
                };
                t.validate(name)?;
                r.register(name.clone(), t)?;
            }
            (None, Some(model)) => {
                if k.metrics.is_some() || k.workdir.is_some() {
                    return Err(format!(
                        "{kind}: `metrics` and `workdir` belong to `command` kinds"
                    ));
                }
                let path = base.join(model);
                let model =
                    frugal_onnx::OnnxModel::load(&path).map_err(|e| format!("{kind}: {e}"))?;
                let inputs = k
                    .inputs
                    .clone()
                    .or_else(|| model.input_names().map(<[String]>::to_vec))
                    .ok_or_else(|| {
                        format!(
                            "{kind}: name the model's input columns with `inputs = [\"PARAM\", …]`"
                        )
                    })?;
                let outputs = k.outputs.clone().or_else(|| model.output_names().map(<[String]>::to_vec)).ok_or_else(|| format!("{kind}: name the model's output columns with `outputs = [\"METRIC\", …]`"))?;
                if inputs.len() != model.inputs() || outputs.len() != model.outputs() {
                    return Err(format!(
                        "{kind}: {} takes {} inputs and gives {} outputs; the table names {} and {}",
                        path.display(),
                        model.inputs(),
                        model.outputs(),
                        inputs.len(),
                        outputs.len()
                    ));
                }
                r.register(
                    name.clone(),
                    OnnxKind {
                        model,
                        inputs,
                        outputs,
                    },
                )?;
            }
            _ => {
                return Err(format!(
                    "{kind}: needs exactly one of `command = [PROGRAM, ARGS…]` or `onnx = \"MODEL.onnx\"`"
                ));
            }
        }
    }
    Ok(r)
}

/// A small network evaluated on the CPU: named parameters in, named metrics out.
struct OnnxKind {
    model: frugal_onnx::OnnxModel,
    inputs: Vec<String>,
    outputs: Vec<String>,
}

impl Kind for OnnxKind {
    fn run(&self, job: &Job, _: &Context) -> Result<Metrics, String> {
        let row = self
            .inputs
            .iter()
            .map(|name| {
                job.params
                    .get(name)
                    .and_then(serde_json::Value::as_f64)
                    .map(|v| v as f32)
                    .ok_or_else(|| {
                        format!("job {}: the model needs number parameter {name:?}", job.id)
                    })
            })
            .collect::<Result<Vec<f32>, String>>()?;
        let out = self.model.run(&row, 1).map_err(|e| e.to_string())?;
        Ok(self
            .outputs
            .iter()
            .cloned()
            .zip(out.into_iter().map(f64::from))
            .collect())
    }
}

/// The `[kinds]` of any TOML file (a worker file, or an evolve configuration).
fn kinds_of(path: &Path) -> Result<BTreeMap<String, KindConfig>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let table: toml::Table =
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    match table.get("kinds") {
        None => Ok(BTreeMap::new()),
        Some(k) => k
            .clone()
            .try_into()
            .map_err(|e| anyhow::anyhow!("{}: [kinds]: {e}", path.display())),
    }
}

fn registry_from(config: Option<&PathBuf>) -> Result<Registry> {
    let kinds = match config {
        Some(p) => kinds_of(p)?,
        None => BTreeMap::new(),
    };
    let base = config.and_then(|p| p.parent()).unwrap_or(Path::new("."));
    registry(&kinds, base).map_err(|e| {
        UserError(format!(
            "{}: {e}",
            config.map_or("built-in kinds".into(), |p| p.display().to_string())
        ))
        .into()
    })
}

/// `frugal worker --redis URL`.
pub(crate) fn worker(args: WorkerArgs, out: &mut dyn Write) -> Result<()> {
    let registry = registry_from(args.config.as_ref())?;
    let mut options = WorkerOptions::new(&args.queue);
    if let Some(j) = args.jobs {
        options.jobs = j.max(1);
    }
    options.batch = args.batch.max(1);
    if let Some(n) = args.name {
        options.name = n;
    }
    writeln!(
        out,
        "worker {}: queue {:?}, {} jobs at a time, kinds: {}",
        options.name,
        options.queue,
        options.jobs,
        registry.names().join(", ")
    )?;
    out.flush()?;
    let log = |line: &str| {
        let _ = writeln!(std::io::stderr().lock(), "{line}");
    };
    let report = Worker::new(
        &args.redis,
        registry,
        options,
        Arc::new(AtomicBool::new(false)),
        log,
    )
    .run()?;
    writeln!(
        out,
        "done {}, failed attempts {}",
        report.done, report.failed
    )?;
    Ok(())
}

/// Tells the user what the queue's live workers can do for jobs of `kind`: to start some
/// when there are none, or that none registers the kind. Returns the slots that do.
pub(crate) fn announce_workers(farm: &mut RedisFarm, queue: &str, kind: &str) -> Result<usize> {
    let live = farm.workers()?;
    let capable: usize = live
        .iter()
        .filter(|w| w.kinds.iter().any(|k| k == kind))
        .map(|w| w.jobs)
        .sum();
    let mut err = std::io::stderr().lock();
    if live.is_empty() {
        writeln!(
            err,
            "waiting for workers: start `frugal worker --redis URL --queue {queue}` on any machine"
        )?;
    } else if capable == 0 {
        writeln!(
            err,
            "warning: none of the {} live workers registers job kind {kind:?}; its jobs will fail",
            live.len(),
        )?;
    }
    Ok(capable)
}

/// `frugal farm …`.
pub(crate) fn farm(command: FarmCommand, out: &mut dyn Write) -> Result<()> {
    match command {
        FarmCommand::Status { redis, queue, json } => {
            let s = frugal_farm::queue_status(&redis, &queue)?;
            if json {
                return super::print_json(out, &s);
            }
            writeln!(
                out,
                "queue {}: run {}",
                s.queue,
                s.run.as_deref().unwrap_or("(none)")
            )?;
            writeln!(
                out,
                "jobs {}: waiting {}, running {}, retrying {}; results {}",
                s.jobs,
                s.waiting.map_or("?".into(), |w| w.to_string()),
                s.pending,
                s.retrying,
                s.results
            )?;
            writeln!(out, "workers {}:", s.workers.len())?;
            for w in &s.workers {
                writeln!(
                    out,
                    "  {} ({} pid {}): {} slots, running {}, done {}, failed {}; kinds {}",
                    w.name,
                    w.host,
                    w.pid,
                    w.jobs,
                    w.running,
                    w.done,
                    w.failed,
                    w.kinds.join(", ")
                )?;
            }
            let lease = s.lease_ms.unwrap_or(30_000);
            for (holder, (held, idle)) in &s.holders {
                let note = if *idle > lease {
                    " (lease expired: its jobs go to the next free worker)"
                } else {
                    ""
                };
                writeln!(
                    out,
                    "  holder {holder}: {held} jobs, idle {:.1} s{note}",
                    *idle as f64 / 1000.0
                )?;
            }
            Ok(())
        }
        FarmCommand::Exec {
            kind,
            params,
            seed,
            config,
        } => {
            let registry = registry_from(config.as_ref())?;
            let params: serde_json::Value =
                serde_json::from_str(&params).context("--params must be a JSON object")?;
            if !params.is_object() {
                bail!("--params must be a JSON object, e.g. '{{\"dt\": 0.01}}'");
            }
            let job = Job::new("exec", kind, params, seed);
            let metrics = registry
                .run(&job, &Context::unbounded())
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            super::print_json(out, &metrics)
        }
        FarmCommand::Bench(args) => farm_bench(&args, out),
    }
}

fn farm_bench(args: &FarmBenchArgs, out: &mut dyn Write) -> Result<()> {
    if !(args.seconds > 0.0 && args.seconds.is_finite()) {
        return Err(UserError(format!(
            "--seconds must be a positive number, not {}",
            args.seconds
        ))
        .into());
    }
    let workers = match args.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let local = if args.no_local {
        None
    } else {
        Some(bench::local(workers, args.seconds, args.per_worker).map_err(anyhow::Error::msg)?)
    };
    let redis = match &args.redis {
        Some(url) => Some(
            bench::redis(url, args.jobs, args.redis_workers, args.slots, args.batch)
                .map_err(anyhow::Error::msg)?,
        ),
        None => None,
    };
    if args.json {
        return super::print_json(out, &serde_json::json!({ "local": local, "redis": redis }));
    }
    if let Some(l) = &local {
        writeln!(
            out,
            "local: {} jobs of {:.2} s on {} workers in {:.2} s (ideal {:.2} s, bare threads {:.2} s)",
            l.jobs, l.single_s, l.workers, l.farm_s, l.ideal_s, l.bare_s
        )?;
        writeln!(
            out,
            "  parallel efficiency {:.3} (bare threads {:.3}; farm/bare {:.3})",
            l.efficiency, l.bare_efficiency, l.farm_vs_bare
        )?;
    }
    if let Some(r) = &redis {
        writeln!(
            out,
            "redis {}: {} no-op jobs in {:.2} s = {:.0} jobs/s ({} workers × {} slots, batch {})",
            r.url, r.jobs, r.seconds, r.jobs_per_s, r.workers, r.slots, r.batch
        )?;
        writeln!(
            out,
            "  same commands by one bare client: {:.0} jobs/s; farm/bare {:.3}",
            r.bare_jobs_per_s, r.vs_bare
        )?;
    }
    Ok(())
}
