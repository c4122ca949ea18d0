//! `frugal nbody`: the N-body pipeline. `generate` runs a `particles` configuration's
//! simulations on every core, one seeded job per simulation, into a dataset whose shard
//! `i` is simulation `i` (layout in docs/format.md), so a killed run continues with only
//! the missing simulations. `train` trains the particle graph network on them, holding
//! the last simulations out for evaluation; `rollout` runs the trained network against the
//! simulator and a constant-velocity baseline on those; `run` does all three.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use frugal_farm::{Farm, Job, Outcome, RedisFarm};
use frugal_hw::units::Bytes;
use frugal_models::particles::{Gnn, Normalization, ParticleGnn};
use frugal_sim::{Gravity, Method, Recording};
use frugal_store::{
    Column, DType, Dataset, Order, OrderSpec, Schema, ShardBuffer, StoreError, StreamOptions,
    generate_shards, recorded_shards,
};
use frugal_train::Task;
use frugal_train::trainer::TrainData;
use serde::Serialize;

use super::setup::Setup;
use crate::args::{ConfigArgs, NbodyCommand, NbodyRolloutArgs, RunArgs, TrainArgs};
use crate::config::schema::{ParticlesConfig, SimMethod};
use crate::config::{AnyConfig, Source};
use crate::progress;

/// States, drawn at random from all training simulations, whose statistics set the
/// network's normalisation (one simulation's states would misjudge the others': a cold
/// collapse's accelerations dwarf a Plummer sphere's).
const NORMALIZATION_STATES: usize = 64;

/// Direct summation up to this many particles when `sim.method = "auto"`.
const DIRECT_UP_TO: u32 = 5000;

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

/// The recording a configuration's `[sim]` and `[model]` describe.
fn recording(c: &ParticlesConfig) -> Recording {
    let method = match c.sim.method {
        SimMethod::Direct => Method::Direct,
        SimMethod::BarnesHut => Method::BarnesHut { theta: c.sim.theta },
        SimMethod::Auto if c.model.particles <= DIRECT_UP_TO => Method::Direct,
        SimMethod::Auto => Method::BarnesHut { theta: c.sim.theta },
    };
    Recording {
        particles: c.model.particles as usize,
        simulations: u64::from(c.sim.simulations),
        steps: u64::from(c.sim.steps),
        record_every: u64::from(c.sim.record_every),
        dt: c.sim.dt,
        softening: c.sim.softening,
        initial: c.sim.initial.clone(),
        method,
        seed: c.seed,
    }
}

/// One sample per recorded state: positions, velocities and accelerations (f32,
/// particle-major), and which simulation and recorded step it is.
fn schema(r: &Recording) -> Schema {
    let n = r.particles;
    Schema {
        columns: vec![
            Column::new("pos", DType::F32, [n, 3]),
            Column::new("vel", DType::F32, [n, 3]),
            Column::new("acc", DType::F32, [n, 3]),
            Column::new("sim", DType::U32, []),
            Column::new("step", DType::U32, []),
        ],
    }
}

/// Runs simulation `index` of `r` on this thread into `buffer`.
fn simulate(r: &Recording, index: u64, buffer: &mut ShardBuffer) -> frugal_store::Result<()> {
    r.record::<String>(index, &mut || Ok(()), &mut |s| {
        push_state(buffer, index, s.step, [s.pos, s.vel, s.acc]).map_err(|e| e.to_string())
    })
    .map_err(StoreError::Invalid)
}

/// One row of the dataset: a recorded state of simulation `index` (see `schema`).
fn push_state(
    buffer: &mut ShardBuffer,
    index: u64,
    step: u64,
    [pos, vel, acc]: [&[u8]; 3],
) -> frugal_store::Result<()> {
    let (sim, step) = ((index as u32).to_le_bytes(), (step as u32).to_le_bytes());
    buffer.push_rows(1, &[pos, vel, acc, &sim, &step])
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
/// the order it asks for them. Jobs are submitted at most `window` ahead of the
/// simulations the writer has taken, so the states waiting in memory stay bounded however
/// the workers race. One writer thread at a time polls the queue; the others wait for
/// their simulation to arrive.
struct RemoteSims {
    farm: Mutex<RedisFarm>,
    state: Mutex<RemoteState>,
    arrived: Condvar,
    window: usize,
    settings: serde_json::Value,
}

struct RemoteState {
    todo: Vec<u64>,
    submitted: usize,
    received: usize,
    taken: usize,
    polling: bool,
    ready: HashMap<u64, Outcome>,
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
        super::farm::announce_workers(&mut farm, &remote.queue, "nbody")?;
        Ok(Self {
            farm: Mutex::new(farm),
            state: Mutex::new(RemoteState {
                todo,
                submitted: 0,
                received: 0,
                taken: 0,
                polling: false,
                ready: HashMap::new(),
            }),
            arrived: Condvar::new(),
            window: (REMOTE_WINDOW_BYTES / settings.simulation_bytes().max(1)).clamp(1, 256),
            settings: settings_json,
        })
    }

    /// Submits the jobs up to `window` past the simulations already taken.
    fn submit_ahead(&self, st: &mut RemoteState) -> frugal_store::Result<()> {
        let want = (st.taken + self.window).min(st.todo.len());
        if st.submitted >= want {
            return Ok(());
        }
        let jobs = st.todo[st.submitted..want]
            .iter()
            .map(|&i| {
                let params = serde_json::json!({
                    "settings": self.settings,
                    "index": i,
                    "frugal": env!("CARGO_PKG_VERSION"),
                });
                Job::new(format!("sim-{i}"), "nbody", params, i)
            })
            .collect();
        let mut farm = self.farm.lock().expect("farm lock");
        farm.submit(jobs)
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        st.submitted = want;
        Ok(())
    }

    /// Waits for simulation `index` from the workers.
    fn wait_for(&self, index: u64) -> frugal_store::Result<Outcome> {
        let mut st = self.state.lock().expect("remote lock");
        loop {
            if let Some(o) = st.ready.remove(&index) {
                st.taken += 1;
                self.submit_ahead(&mut st)?;
                return Ok(o);
            }
            self.submit_ahead(&mut st)?;
            let in_flight = st.submitted - st.received;
            if in_flight == 0 && st.ready.is_empty() {
                return Err(StoreError::Invalid(format!(
                    "simulation {index} is not in the queue"
                )));
            }
            // Another thread polls, or what arrived must be taken before more is sent.
            if st.polling || in_flight == 0 {
                st = self
                    .arrived
                    .wait_timeout(st, Duration::from_millis(500))
                    .expect("remote lock")
                    .0;
                continue;
            }
            // This thread polls; the others wait for what it brings.
            st.polling = true;
            drop(st);
            let next = self
                .farm
                .lock()
                .expect("farm lock")
                .next(Duration::from_millis(200));
            st = self.state.lock().expect("remote lock");
            st.polling = false;
            self.arrived.notify_all();
            if let Some(o) = next.map_err(|e| StoreError::Invalid(e.to_string()))? {
                let i = o.id.strip_prefix("sim-").and_then(|i| i.parse().ok());
                let i = i.ok_or_else(|| {
                    StoreError::Invalid(format!("unexpected result {:?} in the queue", o.id))
                })?;
                st.received += 1;
                st.ready.insert(i, o);
            }
        }
    }

    /// Waits for simulation `index` and writes its states into `buffer`.
    fn fill(
        &self,
        settings: &Recording,
        index: u64,
        buffer: &mut ShardBuffer,
    ) -> frugal_store::Result<()> {
        let outcome = self.wait_for(index)?;
        let fail = |why: String| StoreError::Invalid(format!("simulation {index}: {why}"));
        let data = match outcome.result {
            Ok(_) => outcome
                .data
                .ok_or_else(|| fail(format!("worker {} sent no states", outcome.worker)))?,
            Err(e) => return Err(fail(format!("failed on the workers: {e}"))),
        };
        if data.len() != settings.simulation_bytes() {
            return Err(fail(format!(
                "worker {} sent {} bytes of states, not {}",
                outcome.worker,
                data.len(),
                settings.simulation_bytes()
            )));
        }
        let part = settings.particles * 12;
        for (step, state) in data.chunks_exact(3 * part).enumerate() {
            let (pos, rest) = state.split_at(part);
            let (vel, acc) = rest.split_at(part);
            push_state(buffer, index, step as u64, [pos, vel, acc])?;
        }
        Ok(())
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
    let settings = recording(config);
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
    let manifest = generate_shards(
        &dir,
        &schema(&settings),
        &settings_json,
        settings.simulations,
        threads,
        &|index, buffer| match &remote {
            Some(r) => r.fill(&settings, index, buffer),
            None => simulate(&settings, index, buffer),
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

/// Positions and velocities of every recorded state of shard (simulation) `sim`, in time
/// order: [states × particles × 3] each.
fn states(all: &Dataset, sim: usize) -> Result<(Vec<f32>, Vec<f32>)> {
    let one = all.select_shards(sim..sim + 1)?;
    let n = one.len() as usize;
    let spec = OrderSpec {
        order: Order::Sequential,
        window: n as u64,
        spread: 1,
    };
    let (mut pos, mut vel) = (Vec::new(), Vec::new());
    for batch in one.stream(StreamOptions::new(spec, 0, 0, n))? {
        let batch = batch?;
        for (name, into) in [("pos", &mut pos), ("vel", &mut vel)] {
            let col = batch
                .column(name)
                .and_then(|c| c.as_slice::<f32>())
                .with_context(|| format!("simulation {sim} lacks an f32 column `{name}`"))?;
            into.extend_from_slice(col);
        }
    }
    Ok((pos, vel))
}

/// Mean squared difference.
fn mse(a: &[f64], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - f64::from(*y)).powi(2))
        .sum::<f64>()
        / a.len().max(1) as f64
}

/// Total energy of one state given particle-major positions and velocities, masses 1/N.
fn energy(x: &[f64], v: &[f64], gravity: Gravity) -> f64 {
    let n = x.len() / 3;
    let mut p = frugal_sim::Particles::with_capacity(n);
    for i in 0..n {
        p.push(
            [x[3 * i], x[3 * i + 1], x[3 * i + 2]],
            [v[3 * i], v[3 * i + 1], v[3 * i + 2]],
            1.0 / n as f64,
        );
    }
    p.kinetic_energy() + frugal_sim::potential_energy(&p, gravity, true)
}

/// Advances states (positions and velocities, particle-major, several states one after
/// another) by `substeps` leapfrog steps of `dt` with the network's accelerations.
struct Learned<'a> {
    task: &'a ParticleGnn,
    model: &'a Gnn,
    device: &'a burn::tensor::Device,
}

impl Learned<'_> {
    fn accelerations(&self, x: &[f64], v: &[f64]) -> Result<Vec<f64>> {
        let f = |s: &[f64]| s.iter().map(|&e| e as f32).collect::<Vec<f32>>();
        let a = self
            .task
            .accelerations(self.model, &f(x), &f(v), self.device)?;
        Ok(a.into_iter().map(f64::from).collect())
    }

    fn advance(&self, x: &mut [f64], v: &mut [f64], substeps: u64, dt: f64) -> Result<()> {
        let mut a = self.accelerations(x, v)?;
        for _ in 0..substeps {
            for (vi, ai) in v.iter_mut().zip(&a) {
                *vi += 0.5 * dt * ai;
            }
            for (xi, vi) in x.iter_mut().zip(v.iter()) {
                *xi += dt * vi;
            }
            a = self.accelerations(x, v)?;
            for (vi, ai) in v.iter_mut().zip(&a) {
                *vi += 0.5 * dt * ai;
            }
        }
        Ok(())
    }
}

#[derive(Serialize)]
struct RolloutSummary {
    held_out_simulations: usize,
    rollout_steps: usize,
    /// Position MSE after one recorded step from simulator states, learned and baseline.
    one_step_mse: f64,
    baseline_one_step_mse: f64,
    /// Position MSE at the last rollout step (the 20th by default).
    rollout_mse_20: f64,
    baseline_rollout_mse_20: f64,
    /// |ΔE/E| over the rollout: the learned one's, the constant-velocity one's and the
    /// simulator's own.
    energy_drift: f64,
    baseline_energy_drift: f64,
    simulator_energy_drift: f64,
    /// Position MSE at every rollout step.
    rollout_mse: Vec<f64>,
    baseline_rollout_mse: Vec<f64>,
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
    let learned = Learned {
        task: &task,
        model: &model,
        device: &picked.device,
    };

    let sims = all.manifest().shards.len();
    let held = (config.sim.held_out as usize).min(sims);
    let per = task.particles * 3;
    let (dt, substeps) = (config.sim.dt, u64::from(config.sim.record_every));
    let interval = dt * substeps as f64;
    let gravity = Gravity::softened(config.sim.softening);
    let wide = |s: &[f32]| s.iter().map(|&e| f64::from(e)).collect::<Vec<f64>>();

    let held_states: Vec<(Vec<f32>, Vec<f32>)> = (sims - held..sims)
        .map(|s| states(&all, s))
        .collect::<Result<_>>()?;
    let recorded = held_states
        .iter()
        .map(|(p, _)| p.len() / per)
        .min()
        .unwrap_or(0);
    if recorded < 2 {
        bail!("the held-out simulations hold fewer than 2 states each");
    }
    let steps = (steps as usize).clamp(1, recorded - 1);

    // Rollouts from each held-out simulation's first state, all simulations at once.
    let mut x: Vec<f64> = held_states
        .iter()
        .flat_map(|(p, _)| wide(&p[..per]))
        .collect();
    let mut v: Vec<f64> = held_states
        .iter()
        .flat_map(|(_, v)| wide(&v[..per]))
        .collect();
    let (x0, v0) = (x.clone(), v.clone());
    let bar = progress::bar(steps as u64, "rolling out", false);
    let (mut learned_mse, mut baseline_mse) = (Vec::new(), Vec::new());
    for r in 1..=steps {
        learned.advance(&mut x, &mut v, substeps, dt)?;
        let truth: Vec<f32> = held_states
            .iter()
            .flat_map(|(p, _)| p[r * per..(r + 1) * per].iter().copied())
            .collect();
        let t = r as f64 * interval;
        let straight: Vec<f64> = x0.iter().zip(&v0).map(|(x, v)| x + v * t).collect();
        learned_mse.push(mse(&x, &truth));
        baseline_mse.push(mse(&straight, &truth));
        bar.inc(1);
    }
    bar.finish_and_clear();

    let (mut drift, mut baseline_drift, mut simulator_drift) = (0.0, 0.0, 0.0);
    let t = steps as f64 * interval;
    for (h, (p, vel)) in held_states.iter().enumerate() {
        let part = h * per..(h + 1) * per;
        let e0 = energy(&wide(&p[..per]), &wide(&vel[..per]), gravity);
        let rel = |e: f64| ((e - e0) / e0).abs() / held as f64;
        drift += rel(energy(&x[part.clone()], &v[part.clone()], gravity));
        let straight: Vec<f64> = x0[part.clone()]
            .iter()
            .zip(&v0[part.clone()])
            .map(|(x, v)| x + v * t)
            .collect();
        baseline_drift += rel(energy(&straight, &v0[part], gravity));
        let end = steps * per..(steps + 1) * per;
        simulator_drift += rel(energy(&wide(&p[end.clone()]), &wide(&vel[end]), gravity));
    }

    // One recorded step from up to 10 states of every held-out simulation.
    let stride = ((recorded - 1) / 10).max(1);
    let starts: Vec<usize> = (0..recorded - 1).step_by(stride).collect();
    // The states `ahead` recorded steps after each start, positions or velocities.
    let gather = |velocities: bool, ahead: usize| -> Vec<f32> {
        held_states
            .iter()
            .flat_map(|(p, v)| {
                let s = if velocities { v } else { p };
                starts
                    .iter()
                    .flat_map(move |&t| s[(t + ahead) * per..(t + ahead + 1) * per].iter().copied())
            })
            .collect()
    };
    let mut x = wide(&gather(false, 0));
    let mut v = wide(&gather(true, 0));
    let next = gather(false, 1);
    let straight: Vec<f64> = x.iter().zip(&v).map(|(x, v)| x + v * interval).collect();
    learned.advance(&mut x, &mut v, substeps, dt)?;
    let one_step = mse(&x, &next);
    let baseline_one_step = mse(&straight, &next);

    let plot = config.output_dir.join("rollout.png");
    crate::plot::rollout_errors(&learned_mse, &baseline_mse, &plot)
        .context("drawing the rollout errors")?;
    let summary = RolloutSummary {
        held_out_simulations: held,
        rollout_steps: steps,
        one_step_mse: one_step,
        baseline_one_step_mse: baseline_one_step,
        rollout_mse_20: *learned_mse.last().expect("at least one step"),
        baseline_rollout_mse_20: *baseline_mse.last().expect("at least one step"),
        energy_drift: drift,
        baseline_energy_drift: baseline_drift,
        simulator_energy_drift: simulator_drift,
        rollout_mse: learned_mse,
        baseline_rollout_mse: baseline_mse,
        plot,
    };
    frugal_store::atomic_write(
        &config.output_dir.join("rollout.json"),
        serde_json::to_string_pretty(&summary)?.as_bytes(),
    )?;
    if json {
        return super::print_json(out, &summary);
    }
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    writeln!(
        out,
        "rolled out {} held-out simulations for {} steps of {} ({} leapfrog steps each)",
        held, steps, interval, substeps
    )?;
    writeln!(
        out,
        "  one step:   position MSE {:.3e}, constant velocity {:.3e} ({:.2}×)",
        summary.one_step_mse,
        summary.baseline_one_step_mse,
        ratio(summary.one_step_mse, summary.baseline_one_step_mse)
    )?;
    writeln!(
        out,
        "  step {steps}:    position MSE {:.3e}, constant velocity {:.3e} ({:.2}×)",
        summary.rollout_mse_20,
        summary.baseline_rollout_mse_20,
        ratio(summary.rollout_mse_20, summary.baseline_rollout_mse_20)
    )?;
    writeln!(
        out,
        "  energy drift |ΔE/E| {:.3e} (constant velocity {:.3e}, simulator {:.3e}); plot {}",
        summary.energy_drift,
        summary.baseline_energy_drift,
        summary.simulator_energy_drift,
        summary.plot.display()
    )?;
    Ok(())
}
