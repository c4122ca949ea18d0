//! `frugal evolve`: evolution on a job farm, local or through Redis workers.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::{Result, bail};
use frugal_evolve::Settings;
use frugal_evolve::run::{
    Constraint, GeneSpec, Goal, Objective, Progress, Run, RunSpec, Scoring, Summary,
};
use frugal_farm::{Farm, LocalFarm, RedisFarm};

use super::UserError;
use crate::args::EvolveArgs;
use crate::config::schema::EvolveConfig;
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
    let registry = super::farm::registry(&config.kinds, base)
        .map_err(|e| UserError(format!("{}: {e}", file.display())))?;
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
            let capable = super::farm::announce_workers(&mut farm, queue, &spec.kind)?;
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
    let genes = c
        .genes
        .iter()
        .map(|(name, g)| GeneSpec {
            name: name.clone(),
            low: g.low,
            high: g.high,
            integer: g.integer,
            count: g.count.map(|n| n as usize),
        })
        .collect();
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
    spec.validate().map_err(|e| e.to_string())?;
    Ok(spec)
}
