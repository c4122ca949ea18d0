//! `frugal nbody`: the N-body pipeline. `generate` runs a `particles` configuration's
//! simulations on every core, one seeded job per simulation, into a dataset whose shard
//! `i` is simulation `i` (layout in docs/format.md), so a killed run continues with only
//! the missing simulations. `train` trains the particle graph network on them, holding
//! the last simulations out for evaluation.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use frugal_hw::units::Bytes;
use frugal_models::particles::ParticleGnn;
use frugal_sim::{Gravity, Initial, Method, Simulation};
use frugal_store::{
    Column, DType, Dataset, Order, OrderSpec, Schema, ShardBuffer, StoreError, StreamOptions,
    generate_shards, recorded_shards,
};
use frugal_train::trainer::TrainData;
use serde::Serialize;

use crate::args::{ConfigArgs, NbodyCommand, NbodyTrainArgs};
use crate::config::schema::{ParticlesConfig, SimMethod};
use crate::config::{AnyConfig, Source};
use crate::progress;

/// States whose statistics set the network's normalisation.
const NORMALIZATION_STATES: usize = 16;

/// Direct summation up to this many particles when `sim.method = "auto"`.
const DIRECT_UP_TO: u32 = 5000;

pub(crate) fn run(command: NbodyCommand, out: &mut dyn Write) -> Result<()> {
    match command {
        NbodyCommand::Generate { config, json } => generate(&config, json, out),
        NbodyCommand::Train(args) => train(&args, out),
    }
}

fn load(args: &ConfigArgs) -> Result<ParticlesConfig> {
    let source = Source::read(&args.file, &args.set)?;
    match AnyConfig::from_document(&source.document()?)? {
        AnyConfig::Particles(c) => Ok(c),
        other => bail!(
            "{}: `frugal nbody` runs `particles` configurations; this one is `{}`",
            args.file.display(),
            other.workload().name()
        ),
    }
}

/// Everything a simulation's samples depend on: a resumed run must match it.
#[derive(Debug, Clone, Serialize)]
struct GenSettings {
    particles: usize,
    simulations: u64,
    steps: u64,
    record_every: u64,
    dt: f64,
    softening: f64,
    initial: Vec<Initial>,
    method: Method,
    seed: u64,
}

impl GenSettings {
    fn new(c: &ParticlesConfig) -> Self {
        let method = match c.sim.method {
            SimMethod::Direct => Method::Direct,
            SimMethod::BarnesHut => Method::BarnesHut { theta: c.sim.theta },
            SimMethod::Auto if c.model.particles <= DIRECT_UP_TO => Method::Direct,
            SimMethod::Auto => Method::BarnesHut { theta: c.sim.theta },
        };
        Self {
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
    fn schema(&self) -> Schema {
        let n = self.particles;
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

    /// The initial conditions and seed of simulation `index`.
    fn job(&self, index: u64) -> (Initial, u64) {
        let initial = self.initial[(index % self.initial.len() as u64) as usize];
        let seed =
            frugal_sim::Rng::new(self.seed ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15)).next_u64();
        (initial, seed)
    }

    /// Runs simulation `index` on this thread into `buffer`.
    fn simulate(&self, index: u64, buffer: &mut ShardBuffer) -> frugal_store::Result<()> {
        let (initial, seed) = self.job(index);
        let gravity = Gravity::softened(self.softening);
        let start = initial
            .generate(self.particles, seed, gravity)
            .map_err(|e| StoreError::Invalid(format!("simulation {index}: {e}")))?;
        let mut sim = Simulation::new(start, gravity, self.method, false);
        let interleave = |v: &frugal_sim::Vec3s| -> Vec<u8> {
            let mut bytes = Vec::with_capacity(self.particles * 12);
            for i in 0..self.particles {
                for axis in v {
                    bytes.extend_from_slice(&(axis[i] as f32).to_le_bytes());
                }
            }
            bytes
        };
        for step in 0..self.steps {
            if step > 0 {
                for _ in 0..self.record_every {
                    sim.step(self.dt);
                }
            }
            let (pos, vel, acc) = (
                interleave(&sim.particles.pos),
                interleave(&sim.particles.vel),
                interleave(&sim.acc),
            );
            let (s, t) = ((index as u32).to_le_bytes(), (step as u32).to_le_bytes());
            buffer.push_rows(1, &[&pos, &vel, &acc, &s, &t])?;
        }
        Ok(())
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

fn generate(args: &ConfigArgs, json: bool, out: &mut dyn Write) -> Result<()> {
    let config = load(args)?;
    let summary = simulate_all(&config)?;
    report(&summary, u64::from(config.sim.steps), json, out)
}

/// Where the configuration's dataset lives.
fn data_dir(config: &ParticlesConfig) -> PathBuf {
    config
        .sim
        .data
        .clone()
        .unwrap_or_else(|| config.output_dir.join("sims"))
}

/// Runs the simulations the dataset still lacks (none when it is complete).
fn simulate_all(config: &ParticlesConfig) -> Result<GenerateSummary> {
    let settings = GenSettings::new(config);
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
    let reused = if dir.join("parts").is_dir() {
        recorded_shards(&dir)?.len() as u64
    } else {
        0
    };
    let bar = progress::bar(settings.simulations * settings.steps, "simulating", false);
    let began = Instant::now();
    let mut metadata = std::collections::BTreeMap::new();
    metadata.insert("generator".into(), "frugal nbody generate".into());
    metadata.insert("nbody".into(), settings_json.clone());
    let manifest = generate_shards(
        &dir,
        &settings.schema(),
        &settings_json,
        settings.simulations,
        threads,
        &|index, buffer| settings.simulate(index, buffer),
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

fn train(args: &NbodyTrainArgs, out: &mut dyn Write) -> Result<()> {
    let config = load(&args.config)?;
    rayon::ThreadPoolBuilder::new()
        .num_threads(config.compute.threads as usize)
        .build_global()
        .context("starting the compute threads")?;
    simulate_all(&config)?;
    let dir = data_dir(&config);
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
                order: Order::Sequential,
                window: NORMALIZATION_STATES as u64,
                spread: 1,
            },
            0,
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
        norm: ParticleGnn::measure_normalization(&first, particles, neighbours)?,
    };
    task.check_schema(&all.manifest().schema)
        .with_context(|| format!("dataset {}", dir.display()))?;
    let sample_bytes = all.manifest().schema.sample_bytes() as u64;
    let mut spec = super::train::train_spec(
        config.seed,
        &config.compute,
        &config.train,
        task.blocks(),
        OrderSpec::for_budget(Order::default(), super::train::READ_BUDGET, sample_bytes),
        super::train::fingerprint(&config),
    );
    spec.stop_after = args.stop_after;
    std::fs::create_dir_all(&config.output_dir)
        .with_context(|| format!("creating {}", config.output_dir.display()))?;
    frugal_store::atomic_write(
        &config.output_dir.join("normalization.json"),
        serde_json::to_string_pretty(&task.norm)?.as_bytes(),
    )?;
    super::train::run_loop(
        &task,
        &data,
        &spec,
        config.compute.device,
        &config.output_dir,
        args.resume,
        args.json,
        &args.config.file,
        out,
    )
}
