//! `frugal worker` and `frugal farm`: the Redis worker and queue inspection, and the job
//! kinds a worker (or a local farm) runs: the built-in ones, evolution's, the N-body
//! simulation, and a configuration's own `[kinds]`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::{Context as _, Result, bail};
use frugal_farm::{
    CommandTemplate, Context, Job, JobError, Kind, Metrics, RedisFarm, Registry, RegistryError,
    Worker, WorkerOptions, bench,
};
use frugal_sim::Recording;

use super::UserError;
use crate::args::{FarmBenchArgs, FarmCommand, WorkerArgs};
use crate::config::schema::KindConfig;

/// The most one simulation job may send back through a queue. Its data travels in pieces
/// (`frugal_farm::PIECE_BYTES`), so Redis's 512 MiB value limit does not bind; the bound is
/// memory: the worker holds a simulation whole, and so does the generator while writing it.
pub(crate) const MAX_SIMULATION_BYTES: usize = 4 << 30;

/// Built-in kinds plus this machine's own from `kinds` (paths relative to `base`).
pub(crate) fn registry(
    kinds: &BTreeMap<String, KindConfig>,
    base: &Path,
) -> Result<Registry, String> {
    let mut r = Registry::new();
    frugal_farm::register_builtin(&mut r)?;
    frugal_evolve::kinds::register(&mut r)?;
    register_nbody(&mut r)?;
    register_operator(&mut r)?;
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
                t.validate(name).map_err(|e| e.to_string())?;
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
    fn run(&self, job: &Job, _: &Context) -> Result<Metrics, JobError> {
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

/// Refuses a dataset job made by another frugal version: byte-identical datasets need the
/// generator's own simulator, operators and arithmetic.
fn same_version(job: &Job) -> Result<(), JobError> {
    let version = job.params["frugal"].as_str().unwrap_or("unknown");
    if version != env!("CARGO_PKG_VERSION") {
        return Err(format!(
            "job {}: made by frugal {version}, and this worker runs {}: run the same version on both",
            job.id,
            env!("CARGO_PKG_VERSION")
        )
        .into());
    }
    Ok(())
}

/// The job kind that runs one simulation of a dataset on a worker: parameters
/// `{"settings": …, "index": i}`; the states come back as the job's data.
fn register_nbody(registry: &mut Registry) -> Result<(), RegistryError> {
    registry.register(
        "nbody",
        |job: &Job, ctx: &Context| -> Result<Metrics, JobError> {
            same_version(job)?;
            let settings: Recording = serde_json::from_value(job.params["settings"].clone())
                .map_err(|e| format!("job {}: parameter \"settings\": {e}", job.id))?;
            settings
                .validate(MAX_SIMULATION_BYTES)
                .map_err(|e| format!("job {}: simulation settings: {e}", job.id))?;
            let index = job.params["index"]
                .as_u64()
                .filter(|i| *i < settings.simulations)
                .ok_or_else(|| {
                    format!(
                        "job {}: parameter \"index\" must be a simulation number below {}",
                        job.id, settings.simulations
                    )
                })?;
            let mut data = Vec::with_capacity(settings.simulation_bytes());
            settings.record(
                index,
                &mut || ctx.check().map_err(|e| e.to_string()),
                &mut |s| {
                    for part in [s.pos, s.vel, s.acc] {
                        data.extend_from_slice(part);
                    }
                    Ok::<(), String>(())
                },
            )?;
            ctx.attach(data);
            Ok(Metrics::from([
                ("index".to_string(), index as f64),
                ("states".to_string(), settings.steps as f64),
            ]))
        },
    )
}

/// The job kind that rolls out one operator of a trajectory dataset on a worker's CPU:
/// parameters `{"settings": …, "index": i}`; the rollouts come back as the job's data.
fn register_operator(registry: &mut Registry) -> Result<(), RegistryError> {
    registry.register(
        "operator",
        |job: &Job, ctx: &Context| -> Result<Metrics, JobError> {
            same_version(job)?;
            let t: frugal_models::operator::Trajectories =
                serde_json::from_value(job.params["settings"].clone())
                    .map_err(|e| format!("job {}: parameter \"settings\": {e}", job.id))?;
            t.validate()
                .map_err(|e| format!("job {}: rollout settings: {e}", job.id))?;
            let bytes = u64::from(t.realizations) * t.trajectory_bytes();
            if bytes > MAX_SIMULATION_BYTES as u64 {
                return Err(format!(
                    "job {}: one operator's rollouts take {}, more than the {} a job may return",
                    job.id,
                    frugal_hw::units::Bytes(bytes),
                    frugal_hw::units::Bytes(MAX_SIMULATION_BYTES as u64)
                )
                .into());
            }
            let index = job.params["index"]
                .as_u64()
                .filter(|i| *i < t.operators)
                .ok_or_else(|| {
                    format!(
                        "job {}: parameter \"index\" must be an operator number below {}",
                        job.id, t.operators
                    )
                })?;
            let cpu = frugal_train::device::cpu();
            let rollouts = frugal_train::device::catch_backend_panics("a rollout", &cpu, || {
                Ok(t.roll_operator(index, &cpu.device))
            })
            .map_err(|e| format!("job {}: {e}", job.id))?;
            let diverged = rollouts.iter().filter(|r| r.diverged.is_some()).count();
            ctx.attach(super::operator::encode_rollouts(&rollouts));
            Ok(Metrics::from([
                ("index".to_string(), index as f64),
                ("diverged".to_string(), diverged as f64),
            ]))
        },
    )
}
