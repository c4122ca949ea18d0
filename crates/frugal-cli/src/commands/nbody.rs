//! `frugal nbody`: the N-body pipeline. `generate` runs a `particles` configuration's
//! simulations on every core, one seeded job per simulation, into a dataset whose shard
//! `i` is simulation `i` (layout in docs/format.md), so a killed run continues with only
//! the missing simulations. `train` trains the particle graph network on them, holding
//! the last simulations out for evaluation; `rollout` runs the trained network against the
//! simulator and a constant-velocity baseline on those; `run` does all three.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use frugal_farm::{Job, OrderedFeed, RedisFarm};
use frugal_hw::units::Bytes;
use frugal_models::particles::{Normalization, ParticleGnn};
use frugal_models::rollout::{RolloutReport, RolloutSettings};
use frugal_models::simulations::{self, Recorded};
use frugal_sim::Recording;
use frugal_store::{
    Dataset, Order, OrderSpec, ShardBuffer, StoreError, StreamOptions, generate_shards,
    recorded_shards,
};
use frugal_train::Task;
use frugal_train::trainer::TrainData;
use serde::Serialize;

use super::setup::Setup;
use crate::args::{ConfigArgs, NbodyCommand, NbodyRolloutArgs, RunArgs, TrainArgs};
use crate::config::schema::ParticlesConfig;
use crate::config::{AnyConfig, Source};
use crate::progress;

/// States, drawn at random from all training simulations, whose statistics set the
/// network's normalisation (one simulation's states would misjudge the others': a cold
/// collapse's accelerations dwarf a Plummer sphere's).
const NORMALIZATION_STATES: usize = 64;

pub(crate) fn run(command: NbodyCommand, out: &mut dyn Write) -> Result<()> {
    match command {
        NbodyCommand::Generate {
            config,
            json,
            redis,
            queue,
        } => {
            let remote = redis.map(|url| Remote { url, queue });
            generate(&config, remote.as_ref(), json, out)
        }
        NbodyCommand::Train(args) => train(&args, out),
        NbodyCommand::Rollout(args) => rollout(&args, out),
        NbodyCommand::Run { config } => pipeline(&config, out),
        NbodyCommand::Scale(args) => super::nbody_scale::run(&args, out),
    }
}

/// generate → train → rollout, each phase's peak resident memory measured on its own.
fn pipeline(args: &ConfigArgs, out: &mut dyn Write) -> Result<()> {
    let config = load(args)?;
    start_threads(&config)?;
    let meter = frugal_hw::MemoryMeter::new();
    let mut peaks: Vec<(&str, u64)> = Vec::new();
    let mut phase = |name: &'static str,
                     out: &mut dyn Write,
                     f: &mut dyn FnMut(&mut dyn Write) -> Result<()>|
     -> Result<()> {
        writeln!(out, "── {name}")?;
        let window = meter.window()?;
        f(out)?;
        peaks.push((name, window.finish().peak_rss_bytes));
        Ok(())
    };
    phase("generate", out, &mut |out| {
        let summary = simulate_all(&config, None)?;
        report(&summary, u64::from(config.sim.steps), false, out)
    })?;
    let train = TrainArgs {
        config: args.clone(),
        run: RunArgs {
            resume: true,
            stop_after: None,
            json: false,
        },
        max_memory: None,
        auto_fit: false,
        tier: None,
        presets: crate::args::PresetDirArg { dir: None },
    };
    phase("train", out, &mut |out| {
        super::train::train_setup(setup(&config)?, &train, out)
    })?;
    phase("rollout", out, &mut |out| {
        rollout_with(&config, None, ROLLOUT_STEPS, false, out)
    })?;
    let budget = frugal_hw::MemoryInfo::detect(&frugal_hw::Cgroups::system())
        .context("reading the machine's memory budget")?
        .budget_bytes;
    let list: Vec<String> = peaks
        .iter()
        .map(|(name, bytes)| format!("{name} {}", Bytes(*bytes)))
        .collect();
    let most = peaks.iter().map(|p| p.1).max().unwrap_or(0);
    writeln!(
        out,
        "── memory: peak resident {} ({:.1} % of this machine's {} budget)",
        list.join(", "),
        100.0 * most as f64 / budget.max(1) as f64,
        Bytes(budget)
    )?;
    Ok(())
}

/// Recorded steps `frugal nbody run` rolls out (the `rollout` command's default).
const ROLLOUT_STEPS: u32 = 20;

/// Starts the global compute pool with the configuration's threads (0: every core).
fn start_threads(config: &ParticlesConfig) -> Result<()> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(config.compute.threads as usize)
        .build_global()
        .context("starting the compute threads")
}

fn load(args: &ConfigArgs) -> Result<ParticlesConfig> {
    let source = Source::read(&args.file, &args.set)?;
    match AnyConfig::from_document(&source.document()?)? {
        AnyConfig::Particles(c) => Ok(c),
        other => Err(super::UserError(format!(
            "{}: `frugal nbody` runs `particles` configurations; this one is `{}`",
            args.file.display(),
            other.workload().name()
        ))
        .into()),
    }
}

#[derive(Serialize)]
struct GenerateSummary {
    dir: PathBuf,
    particles: usize,
    simulations: u64,
    /// Simulations already on disk from an earlier, killed run.
    reused: u64,
    samples: u64,
    bytes: u64,
    seconds: f64,
    threads: usize,
    /// Integrator steps × particles per second over the simulations run now.
    particle_steps_per_s: f64,
}

fn generate(
    args: &ConfigArgs,
    remote: Option<&Remote>,
    json: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let config = load(args)?;
    let summary = simulate_all(&config, remote)?;
    report(&summary, u64::from(config.sim.steps), json, out)
}

/// The workers of a Redis queue, to run the simulations instead of this machine.
pub(crate) struct Remote {
    pub(crate) url: String,
    pub(crate) queue: String,
}

/// Simulations run by a queue's workers (`nbody` jobs), handed to the dataset writer in
/// the order it asks for them, a bounded window of them ahead.
struct RemoteSims {
    feed: OrderedFeed<RedisFarm>,
    settings: Recording,
}

impl RemoteSims {
    fn connect(remote: &Remote, settings: &Recording, dir: &Path, todo: Vec<u64>) -> Result<Self> {
        let settings_json = serde_json::to_value(settings)?;
        let mut hash = std::hash::DefaultHasher::new();
        (settings_json.to_string(), dir).hash(&mut hash);
        // The same dataset gets the same run id, so a restarted generation takes its queue back.
        let run_id = format!("nbody-{:016x}", hash.finish());
        let mut farm =
            RedisFarm::connect(&remote.url, &remote.queue, &run_id, Duration::from_secs(30))?;
        let slots = super::farm::announce_workers(&mut farm, &remote.queue, "nbody")?;
        // Simulations are written as they arrive, so the window only bounds what finished
        // results may pile up while a shard is being written: enough to keep every worker
        // that is there now busy, and at least REMOTE_WINDOW_BYTES of small ones.
        let window = (REMOTE_WINDOW_BYTES / settings.simulation_bytes().max(1))
            .max(slots + 2)
            .clamp(2, 1024);
        let feed = OrderedFeed::new(farm, todo, window, move |i| {
            let params = serde_json::json!({
                "settings": settings_json,
                "index": i,
                "frugal": env!("CARGO_PKG_VERSION"),
            });
            Job::new(format!("sim-{i}"), "nbody", params, i)
        });
        Ok(Self {
            feed,
            settings: settings.clone(),
        })
    }

    /// Waits for the next simulation to arrive from the workers, whichever it is.
    fn next_ready(
        &self,
        stop: &std::sync::atomic::AtomicBool,
    ) -> frugal_store::Result<Option<u64>> {
        self.feed
            .next_ready(stop)
            .map_err(|e| StoreError::Failed(e.to_string()))
    }

    /// Waits for simulation `index` from the workers and writes its states into `buffer`.
    fn fill(&self, index: u64, buffer: &mut ShardBuffer) -> frugal_store::Result<()> {
        let outcome = self
            .feed
            .take(index)
            .map_err(|e| StoreError::Failed(e.to_string()))?;
        // The queue or the workers failed, not the user's input: exit 1, not 2.
        let fail = |why: String| StoreError::Failed(format!("simulation {index}: {why}"));
        let data = match outcome.result {
            Ok(_) => outcome
                .data
                .ok_or_else(|| fail(format!("worker {} sent no states", outcome.worker)))?,
            Err(e) => return Err(fail(format!("failed on the workers: {e}"))),
        };
        simulations::push_recorded(&self.settings, index, &data, buffer)
            .map_err(|e| fail(format!("worker {}: {e}", outcome.worker)))
    }
}

/// States a remote generation may hold in memory, waiting for an earlier simulation.
const REMOTE_WINDOW_BYTES: usize = 512 << 20;

/// Where the configuration's dataset lives.
fn data_dir(config: &ParticlesConfig) -> PathBuf {
    config
        .sim
        .data
        .clone()
        .unwrap_or_else(|| config.output_dir.join("sims"))
}

/// Runs the simulations the dataset still lacks (none when it is complete).
fn simulate_all(config: &ParticlesConfig, remote: Option<&Remote>) -> Result<GenerateSummary> {
    let settings = config.recording();
    let dir = data_dir(config);
    let threads = match config.compute.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        t => t as usize,
    };
    let settings_json = serde_json::to_value(&settings)?;
    if dir.join(frugal_store::MANIFEST_FILE).exists() {
        let manifest = frugal_store::Manifest::load(&dir)?;
        if manifest.complete {
            if manifest.metadata.get("nbody") != Some(&settings_json) {
                bail!(
                    "{} holds a finished dataset of other settings; remove it, or set `sim.data` to another directory",
                    dir.display()
                );
            }
            let summary = GenerateSummary {
                particles: settings.particles,
                simulations: settings.simulations,
                reused: settings.simulations,
                samples: manifest.samples,
                bytes: manifest.bytes(),
                seconds: 0.0,
                threads,
                particle_steps_per_s: 0.0,
                dir,
            };
            return Ok(summary);
        }
    }
    let done = if dir.join("parts").is_dir() {
        recorded_shards(&dir)?
    } else {
        Default::default()
    };
    let reused = done.len() as u64;
    let (remote, threads) = match remote {
        Some(r) => {
            settings
                .validate(super::farm::MAX_SIMULATION_BYTES)
                .map_err(|e| {
                    super::UserError(format!("{}: [sim]: {e}", config.output_dir.display()))
                })?;
            let todo = (0..settings.simulations)
                .filter(|i| !done.contains_key(i))
                .collect();
            // Writing shards is light: two writers keep up with any number of workers.
            (
                Some(RemoteSims::connect(r, &settings, &dir, todo)?),
                threads.min(2),
            )
        }
        None => (None, threads),
    };
    let bar = progress::bar(settings.simulations * settings.steps, "simulating", false);
    let began = Instant::now();
    let mut metadata = std::collections::BTreeMap::new();
    metadata.insert("generator".into(), "frugal nbody generate".into());
    metadata.insert("nbody".into(), settings_json.clone());
    let next_remote = |stop: &std::sync::atomic::AtomicBool| {
        remote.as_ref().map_or(Ok(None), |r| r.next_ready(stop))
    };
    let manifest = generate_shards(
        &dir,
        &simulations::schema(settings.particles),
        &settings_json,
        settings.simulations,
        threads,
        // Remote simulations are written as they arrive, whatever their index.
        remote.as_ref().map(|_| &next_remote as _),
        &|index, buffer| match &remote {
            Some(r) => r.fill(index, buffer),
            None => simulations::simulate(&settings, index, buffer),
        },
        &|samples| bar.inc(samples),
        metadata,
    )
    .with_context(|| format!("generating simulations into {}", dir.display()))?;
    bar.finish_and_clear();
    let seconds = began.elapsed().as_secs_f64();
    let run_now = settings.simulations - reused;
    let integrator_steps = (settings.steps - 1) * settings.record_every;
    let summary = GenerateSummary {
        dir,
        particles: settings.particles,
        simulations: settings.simulations,
        reused,
        samples: manifest.samples,
        bytes: manifest.bytes(),
        seconds,
        threads,
        particle_steps_per_s: (run_now * integrator_steps * settings.particles as u64) as f64
            / seconds.max(1e-9),
    };
    Ok(summary)
}

fn report(summary: &GenerateSummary, states: u64, json: bool, out: &mut dyn Write) -> Result<()> {
    if json {
        return super::print_json(out, summary);
    }
    let reused = summary.reused;
    writeln!(
        out,
        "simulated {} × {} particles ({} states each{}) into {} in {:.1} s on {} threads",
        summary.simulations,
        summary.particles,
        states,
        match reused {
            0 => String::new(),
            r if r == summary.simulations => ", all already on disk".into(),
            r => format!(", {r} already on disk"),
        },
        summary.dir.display(),
        summary.seconds,
        summary.threads
    )?;
    writeln!(
        out,
        "  {} samples, {}; {:.3e} particle-steps/s",
        summary.samples,
        Bytes(summary.bytes),
        summary.particle_steps_per_s
    )?;
    Ok(())
}

fn train(args: &TrainArgs, out: &mut dyn Write) -> Result<()> {
    let config = load(&args.config)?;
    start_threads(&config)?;
    super::train::train_setup(setup(&config)?, args, out)
}

/// A setup for `frugal plan`: the configuration's own when its simulations are all on
/// disk. Otherwise it is planned on a stand-in (two simulations of the same particles, a
/// micro-batch of states each, generated into the returned temporary directory in
/// seconds), since memory depends on a state's shape and the batch, not on how many states
/// there are: planning must never start a generation of days.
pub(crate) fn plan_setup(
    config: &ParticlesConfig,
) -> Result<(Setup<ParticleGnn>, Option<tempfile::TempDir>)> {
    if frugal_store::Manifest::load(&data_dir(config)).is_ok_and(|m| m.complete) {
        return Ok((setup(config)?, None));
    }
    let tmp = tempfile::tempdir().context("creating a directory for the stand-in simulations")?;
    let mut stand_in = config.clone();
    stand_in.sim.simulations = 2;
    stand_in.sim.held_out = 1;
    stand_in.sim.steps = (config.compute.batch_size + 1).clamp(2, config.sim.steps.max(2));
    stand_in.sim.data = Some(tmp.path().join("sims"));
    stand_in.output_dir = tmp.path().to_owned();
    #[allow(clippy::print_stderr)] // a note on what the plan is measured on
    {
        eprintln!(
            "planning on a stand-in of 2 simulations × {} states of {} particles: {} holds no finished dataset and `frugal plan` does not generate one",
            stand_in.sim.steps,
            config.model.particles,
            data_dir(config).display()
        );
    }
    Ok((setup(&stand_in)?, Some(tmp)))
}

/// A particles configuration made ready to train: its simulations recorded (those
/// already on disk are kept), the network's normalisation measured on the first training
/// states and saved beside the run.
pub(crate) fn setup(config: &ParticlesConfig) -> Result<Setup<ParticleGnn>> {
    simulate_all(config, None)?;
    let dir = data_dir(config);
    let all = Dataset::open(&dir)?;
    let sims = all.manifest().shards.len();
    let held = config.sim.held_out as usize;
    let data = TrainData {
        train: all.select_shards(0..sims - held)?,
        test: Some(all.select_shards(sims - held..sims)?),
    };
    let (particles, neighbours) = (
        config.model.particles as usize,
        config.model.neighbours as usize,
    );
    let first = data
        .train
        .stream(StreamOptions::new(
            OrderSpec {
                order: Order::Full,
                window: NORMALIZATION_STATES as u64,
                spread: 1,
            },
            config.seed,
            0,
            NORMALIZATION_STATES,
        ))?
        .next()
        .context("the training simulations hold no states")??;
    let task = ParticleGnn {
        particles,
        hidden: config.model.hidden as usize,
        layers: config.model.layers as usize,
        neighbours,
        noise: config.model.noise as f32,
        edge_chunks: ParticleGnn::EDGE_CHUNKS,
        norm: ParticleGnn::measure_normalization(
            &first,
            particles,
            neighbours,
            config.sim.softening as f32,
        )?,
    };
    task.check_schema(&all.manifest().schema)
        .with_context(|| format!("dataset {}", dir.display()))?;
    std::fs::create_dir_all(&config.output_dir)
        .with_context(|| format!("creating {}", config.output_dir.display()))?;
    frugal_store::atomic_write(
        &config.output_dir.join("normalization.json"),
        serde_json::to_string_pretty(&task.norm)?.as_bytes(),
    )?;
    Setup::new(config, Order::default(), task, data)
}

#[derive(Serialize)]
struct RolloutSummary {
    #[serde(flatten)]
    report: RolloutReport,
    plot: PathBuf,
}

fn rollout(args: &NbodyRolloutArgs, out: &mut dyn Write) -> Result<()> {
    let config = load(&args.config)?;
    start_threads(&config)?;
    rollout_with(
        &config,
        args.checkpoint.as_deref(),
        args.steps,
        args.json,
        out,
    )
}

/// Rolls out on `config`'s held-out simulations, its compute threads started.
fn rollout_with(
    config: &ParticlesConfig,
    checkpoint: Option<&std::path::Path>,
    steps: u32,
    json: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let dir = data_dir(config);
    let all = Dataset::open(&dir).with_context(|| {
        format!(
            "opening the simulations in {} (run `frugal nbody train` first)",
            dir.display()
        )
    })?;
    let norm_path = config.output_dir.join("normalization.json");
    let norm: Normalization =
        serde_json::from_slice(&std::fs::read(&norm_path).with_context(|| {
            format!(
                "reading {} (run `frugal nbody train` first)",
                norm_path.display()
            )
        })?)
        .with_context(|| format!("{} is damaged", norm_path.display()))?;
    let task = ParticleGnn {
        particles: config.model.particles as usize,
        hidden: config.model.hidden as usize,
        layers: config.model.layers as usize,
        neighbours: config.model.neighbours as usize,
        noise: 0.0,
        edge_chunks: ParticleGnn::EDGE_CHUNKS,
        norm,
    };
    let picked = frugal_train::device::pick(config.compute.device)?;
    let path = checkpoint
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(|| config.output_dir.join(frugal_train::trainer::MODEL_FILE));
    // A checkpoint holds the model beside the optimizer; anything else is a model record.
    let record = match frugal_train::snapshot::Snapshot::load(&path) {
        Ok(snapshot) => snapshot.model,
        Err(_) => std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
    };
    let model = frugal_train::trainer::load_model(task.init(&picked.device), record, &path)?;
    let sims = all.manifest().shards.len();
    let held = (config.sim.held_out as usize).min(sims);
    let held_states: Vec<Recorded> = (sims - held..sims)
        .map(|s| Recorded::read(&all, s))
        .collect::<frugal_train::Result<_>>()?;
    let settings = RolloutSettings {
        steps: steps as usize,
        dt: config.sim.dt,
        substeps: u64::from(config.sim.record_every),
        softening: config.sim.softening,
    };
    let bar = progress::bar(steps as u64, "rolling out", false);
    let report = frugal_models::rollout::rollout(
        &task,
        &model,
        &picked.device,
        &held_states,
        settings,
        &|| bar.inc(1),
    )?;
    bar.finish_and_clear();
    let plot = config.output_dir.join("rollout.png");
    crate::plot::rollout_errors(&report.rollout_mse, &report.baseline_rollout_mse, &plot)
        .context("drawing the rollout errors")?;
    let summary = RolloutSummary { report, plot };
    frugal_store::atomic_write(
        &config.output_dir.join("rollout.json"),
        serde_json::to_string_pretty(&summary)?.as_bytes(),
    )?;
    if json {
        return super::print_json(out, &summary);
    }
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    let (report, steps) = (&summary.report, summary.report.rollout_steps);
    writeln!(
        out,
        "rolled out {} held-out simulations for {} steps of {} ({} leapfrog steps each)",
        report.held_out_simulations,
        steps,
        settings.dt * settings.substeps as f64,
        settings.substeps
    )?;
    writeln!(
        out,
        "  one step:   position MSE {:.3e}, constant velocity {:.3e} ({:.2}×)",
        report.one_step_mse,
        report.baseline_one_step_mse,
        ratio(report.one_step_mse, report.baseline_one_step_mse)
    )?;
    writeln!(
        out,
        "  step {steps}:    position MSE {:.3e}, constant velocity {:.3e} ({:.2}×)",
        report.rollout_mse_20,
        report.baseline_rollout_mse_20,
        ratio(report.rollout_mse_20, report.baseline_rollout_mse_20)
    )?;
    writeln!(
        out,
        "  energy drift |ΔE/E| {:.3e} (constant velocity {:.3e}, simulator {:.3e}); plot {}",
        report.energy_drift,
        report.baseline_energy_drift,
        report.simulator_energy_drift,
        summary.plot.display()
    )?;
    Ok(())
}
