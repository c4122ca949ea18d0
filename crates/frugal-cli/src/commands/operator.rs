//! `frugal operator generate`: rolls out an `operator` configuration's randomly drawn
//! neural operators into a trajectory dataset, a shard per `rollout.operators_per_shard`
//! operators, on every core, on the GPU, or on a Redis queue's workers. A killed run
//! continues with only the missing shards, to the same bytes.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use frugal_farm::{Job, OrderedFeed, RedisFarm};
use frugal_hw::units::Bytes;
use frugal_models::operator::{Diverged, Rollout, Trajectories};
use frugal_store::{Dataset, ShardBuffer, StoreError, generate_shards, recorded_shards};
use serde::Serialize;

use crate::args::{ConfigArgs, OperatorCommand};
use crate::config::schema::OperatorConfig;
use crate::config::{AnyConfig, Source};
use crate::progress;

pub(crate) fn run(command: OperatorCommand, out: &mut dyn Write) -> Result<()> {
    match command {
        OperatorCommand::Generate {
            config,
            json,
            redis,
            queue,
        } => {
            let config = load(&config)?;
            let remote = redis.map(|url| super::nbody::Remote { url, queue });
            let summary = generate(&config, remote.as_ref())?;
            report(&summary, json, out)
        }
    }
}

/// Reads an `operator` configuration and starts the compute threads it asks for.
pub(crate) fn load(args: &ConfigArgs) -> Result<OperatorConfig> {
    let source = Source::read(&args.file, &args.set)?;
    match AnyConfig::from_document(&source.document()?)? {
        AnyConfig::Operator(c) => {
            // A second call in one process (tests) finds the pool started: that is fine.
            let _ = rayon::ThreadPoolBuilder::new()
                .num_threads(c.compute.threads as usize)
                .build_global();
            Ok(c)
        }
        other => Err(super::UserError(format!(
            "{}: `frugal operator` runs `operator` configurations; this one is `{}`",
            args.file.display(),
            other.workload().name()
        ))
        .into()),
    }
}

#[derive(Serialize)]
pub(crate) struct GenerateSummary {
    dir: PathBuf,
    operators: u64,
    realizations: u32,
    steps: u32,
    /// Recorded states per rollout.
    recorded: u32,
    /// Operators already on disk from an earlier, killed run.
    reused: u64,
    samples: u64,
    bytes: u64,
    seconds: f64,
    device: String,
    threads: usize,
    operators_per_s: f64,
    /// Realization time steps per second over the operators rolled out now.
    steps_per_s: f64,
    /// Rollouts that diverged (non-finite, or RMS grown 1,000-fold), all recorded in the
    /// manifest's metadata.
    diverged: u64,
    /// Operators with at least one diverged rollout.
    diverged_operators: u64,
}

/// The settings a dataset's bytes depend on: the trajectories and the backend that
/// computed them (a GPU rounds differently from the CPU).
fn settings_json(t: &Trajectories, backend: &str) -> serde_json::Value {
    serde_json::json!({ "trajectories": t, "backend": backend })
}

/// Shard writers: one per core on the CPU (measured: two writers 544 against one's 479
/// realization-steps/s on 2 cores), one for a GPU (a second would only interleave its
/// kernels).
fn writer_threads(config: &OperatorConfig, picked: &frugal_train::device::Picked) -> usize {
    match (config.compute.threads, picked.gpu) {
        (_, true) => 1,
        (0, false) => std::thread::available_parallelism().map_or(1, |n| n.get()),
        (n, false) => n as usize,
    }
}

/// Rolls out the operators the dataset still lacks (none when it is complete).
pub(crate) fn generate(
    config: &OperatorConfig,
    remote: Option<&super::nbody::Remote>,
) -> Result<GenerateSummary> {
    let t = config.trajectories();
    let dir = config.data_dir();
    // Workers compute on their CPUs, so a remote dataset is the CPU backend's bytes.
    let picked = match remote {
        Some(_) => frugal_train::device::cpu(),
        None => frugal_train::device::pick(config.compute.device)?,
    };
    picked.check_precision(t.precision)?;
    let settings = settings_json(&t, picked.backend);
    let threads = writer_threads(config, &picked);
    let summary = |reused: u64, manifest: &frugal_store::Manifest, seconds: f64, threads| {
        let diverged: Vec<Diverged> = manifest
            .metadata
            .get("diverged")
            .and_then(|d| serde_json::from_value(d.clone()).ok())
            .unwrap_or_default();
        let mut ops: Vec<u64> = diverged.iter().map(|d| d.operator).collect();
        ops.dedup();
        let now = t.operators - reused;
        GenerateSummary {
            dir: dir.clone(),
            operators: t.operators,
            realizations: t.realizations,
            steps: t.steps,
            recorded: t.recorded(),
            reused,
            samples: manifest.samples,
            bytes: manifest.bytes(),
            seconds,
            device: picked.name.clone(),
            threads,
            operators_per_s: now as f64 / seconds.max(1e-9),
            steps_per_s: (now * u64::from(t.realizations) * u64::from(t.steps)) as f64
                / seconds.max(1e-9),
            diverged: diverged.len() as u64,
            diverged_operators: ops.len() as u64,
        }
    };
    if dir.join(frugal_store::MANIFEST_FILE).exists() {
        let manifest = frugal_store::Manifest::load(&dir)?;
        if manifest.complete {
            if manifest.metadata.get("operator") != Some(&settings) {
                bail!(
                    "{} holds a finished dataset of other settings; remove it, or set `rollout.data` to another directory",
                    dir.display()
                );
            }
            let manifest = record_divergence(&dir, manifest)?;
            return Ok(summary(t.operators, &manifest, 0.0, threads));
        }
    }
    let done = if dir.join("parts").is_dir() {
        recorded_shards(&dir)?
    } else {
        Default::default()
    };
    let per = u64::from(t.operators_per_shard);
    let reused: u64 = done
        .keys()
        .map(|s| ((s + 1) * per).min(t.operators) - s * per)
        .sum();
    let (remote, threads) = match remote {
        Some(r) => {
            let todo = (0..t.shards())
                .filter(|s| !done.contains_key(s))
                .flat_map(|s| s * per..((s + 1) * per).min(t.operators))
                .collect();
            // Writing shards is light: two writers keep up with any number of workers.
            let threads = threads.clamp(1, 2);
            (
                Some(RemoteOperators::connect(r, &t, &dir, todo, threads)?),
                threads,
            )
        }
        None => (None, threads),
    };
    let rows_per_operator = u64::from(t.realizations) * u64::from(t.recorded());
    let bar = progress::bar(t.operators, "rolling out operators", false);
    let began = Instant::now();
    let mut metadata = std::collections::BTreeMap::new();
    metadata.insert("generator".into(), "frugal operator generate".into());
    metadata.insert("operator".into(), settings.clone());
    let manifest = generate_shards(
        &dir,
        &t.schema(),
        &settings,
        t.shards(),
        threads,
        None,
        &|shard, buffer| match &remote {
            Some(r) => r.fill(shard, buffer),
            None => frugal_train::device::catch_backend_panics("a rollout", &picked, || {
                Ok(t.fill_shard(shard, &picked.device, buffer))
            })
            .map_err(|e| StoreError::Failed(e.to_string()))?
            .map(drop),
        },
        &|rows| bar.inc(rows / rows_per_operator.max(1)),
        metadata,
    )
    .with_context(|| format!("rolling out operators into {}", dir.display()))?;
    bar.finish_and_clear();
    let manifest = record_divergence(&dir, manifest)?;
    Ok(summary(
        reused,
        &manifest,
        began.elapsed().as_secs_f64(),
        threads,
    ))
}

/// Records the diverged rollouts in a finished dataset's metadata (read from its small
/// columns, so a run resumed after a kill lists those of the shards written before it).
fn record_divergence(
    dir: &Path,
    mut manifest: frugal_store::Manifest,
) -> Result<frugal_store::Manifest> {
    if manifest.metadata.contains_key("diverged") {
        return Ok(manifest);
    }
    let diverged = Trajectories::diverged_in(&Dataset::open(dir)?)
        .with_context(|| format!("reading the divergence flags of {}", dir.display()))?;
    manifest
        .metadata
        .insert("diverged".into(), serde_json::to_value(&diverged)?);
    manifest.save(dir)?;
    Ok(manifest)
}

fn report(summary: &GenerateSummary, json: bool, out: &mut dyn Write) -> Result<()> {
    if json {
        return super::print_json(out, summary);
    }
    writeln!(
        out,
        "rolled out {} operators × {} realizations × {} steps ({} recorded states each{}) into {} in {:.1} s on {} ({} threads)",
        summary.operators,
        summary.realizations,
        summary.steps,
        summary.recorded,
        match summary.reused {
            0 => String::new(),
            r if r == summary.operators => ", all already on disk".into(),
            r => format!(", {r} operators already on disk"),
        },
        summary.dir.display(),
        summary.seconds,
        summary.device,
        summary.threads
    )?;
    writeln!(
        out,
        "  {} samples, {}; {:.2} operators/s, {:.0} realization-steps/s",
        summary.samples,
        Bytes(summary.bytes),
        summary.operators_per_s,
        summary.steps_per_s
    )?;
    match summary.diverged {
        0 => writeln!(out, "  no rollout diverged")?,
        n => writeln!(
            out,
            "  {n} rollouts of {} operators diverged (non-finite or grown 1,000-fold): flagged in the `diverged` column and listed in the manifest's metadata",
            summary.diverged_operators
        )?,
    }
    Ok(())
}

/// Operators rolled out by a queue's workers (`operator` jobs), handed to the shard
/// writers in the order they ask for them, a bounded window ahead.
struct RemoteOperators {
    feed: OrderedFeed<RedisFarm>,
    settings: Trajectories,
}

/// What a remote generation may hold in memory, waiting for an earlier operator.
const REMOTE_WINDOW_BYTES: u64 = 512 << 20;

impl RemoteOperators {
    fn connect(
        remote: &super::nbody::Remote,
        t: &Trajectories,
        dir: &Path,
        todo: Vec<u64>,
        writers: usize,
    ) -> Result<Self> {
        let settings_json = serde_json::to_value(t)?;
        let mut hash = std::hash::DefaultHasher::new();
        (settings_json.to_string(), dir).hash(&mut hash);
        // The same dataset gets the same run id, so a restarted generation takes its queue back.
        let run_id = format!("operator-{:016x}", hash.finish());
        let mut farm =
            RedisFarm::connect(&remote.url, &remote.queue, &run_id, Duration::from_secs(30))?;
        let slots = super::farm::announce_workers(&mut farm, &remote.queue, "operator")?;
        let per_operator = u64::from(t.realizations) * t.trajectory_bytes();
        // Each writer waits for its shard's operators in order: they must all be in flight.
        let window = ((REMOTE_WINDOW_BYTES / per_operator.max(1)) as usize)
            .max(slots + 2)
            .max(2 * writers * t.operators_per_shard as usize)
            .min(4096);
        let feed = OrderedFeed::new(farm, todo, window, move |i| {
            let params = serde_json::json!({
                "settings": settings_json,
                "index": i,
                "frugal": env!("CARGO_PKG_VERSION"),
            });
            Job::new(format!("op-{i}"), "operator", params, i)
        });
        Ok(Self {
            feed,
            settings: t.clone(),
        })
    }

    /// Waits for the operators of `shard` from the workers and writes their rows.
    fn fill(&self, shard: u64, buffer: &mut ShardBuffer) -> frugal_store::Result<()> {
        let t = &self.settings;
        let per = u64::from(t.operators_per_shard);
        for index in shard * per..((shard + 1) * per).min(t.operators) {
            let outcome = self
                .feed
                .take(index)
                .map_err(|e| StoreError::Failed(e.to_string()))?;
            // The queue or the workers failed, not the user's input: exit 1, not 2.
            let fail = |why: String| StoreError::Failed(format!("operator {index}: {why}"));
            let data = match outcome.result {
                Ok(_) => outcome
                    .data
                    .ok_or_else(|| fail(format!("worker {} sent no states", outcome.worker)))?,
                Err(e) => return Err(fail(format!("failed on the workers: {e}"))),
            };
            let rollouts = decode_rollouts(t, &data)
                .map_err(|e| fail(format!("worker {}: {e}", outcome.worker)))?;
            t.push_operator(index, &rollouts, buffer)?;
        }
        Ok(())
    }
}

/// A worker's result for one operator: each realization's recorded states in turn, then
/// each one's first diverged step as a little-endian u32 (`u32::MAX`: none).
pub(crate) fn encode_rollouts(rollouts: &[Rollout]) -> Vec<u8> {
    let mut data: Vec<u8> = rollouts
        .iter()
        .flat_map(|r| r.states.iter().copied())
        .collect();
    for r in rollouts {
        data.extend(r.diverged.unwrap_or(u32::MAX).to_le_bytes());
    }
    data
}

fn decode_rollouts(t: &Trajectories, data: &[u8]) -> Result<Vec<Rollout>, String> {
    let (n, each) = (t.realizations as usize, t.trajectory_bytes() as usize);
    if data.len() != n * (each + 4) {
        return Err(format!(
            "{} bytes of rollouts, not {} ({n} realizations of {each} bytes and their flags)",
            data.len(),
            n * (each + 4)
        ));
    }
    let (states, flags) = data.split_at(n * each);
    Ok(states
        .chunks(each)
        .zip(flags.chunks(4))
        .map(|(s, f)| {
            let step = u32::from_le_bytes(f.try_into().expect("4 bytes"));
            Rollout {
                states: s.to_vec(),
                diverged: (step != u32::MAX).then_some(step),
            }
        })
        .collect())
}

/// `frugal plan` of an `operator` configuration: the generation's memory, item by item —
/// per writer thread the rollout batch of the run's largest operator (inputs, weights,
/// activations per layer, recorded trajectories, the measured workspace), the operator's
/// rollouts held until its rows are written and the shard buffer; then the runtime.
pub(crate) fn plan(
    config: &OperatorConfig,
    args: &crate::args::PlanArgs,
    out: &mut dyn Write,
) -> Result<()> {
    if args.measure || args.probe_batch.is_some() {
        return Err(super::UserError(
            "`--measure` times training steps; for an operator configuration run `frugal bench CONFIG --matrix batch=…` to measure rollouts".into(),
        )
        .into());
    }
    let t = config.trajectories();
    let picked = frugal_train::device::pick(config.compute.device)?;
    picked.check_precision(t.precision)?;
    let threads = writer_threads(config, &picked) as u64;
    let batch = t.batch.min(t.realizations);
    // The run's largest operator sets the peak: architectures are drawn on the host, so
    // all of them are looked at (up to a million).
    let largest = (0..t.operators.min(1_000_000))
        .max_by_key(|&i| {
            let m = t.memory(&t.space.draw(t.seed, i), batch);
            m.weights + m.activations.iter().max().copied().unwrap_or(0)
        })
        .unwrap_or(0);
    let memory = frugal_train::device::catch_backend_panics("a probe rollout", &picked, || {
        Ok(t.plan_memory(largest, batch, &picked.device))
    })?;
    let Some(rollout) = memory.predicted_peak else {
        bail!("this build does not count its allocations, so the rollout cannot be profiled");
    };
    let rows_per_operator = u64::from(t.realizations) * u64::from(t.recorded());
    let row_bytes = t.schema().sample_bytes() as u64;
    let held = u64::from(t.realizations) * t.trajectory_bytes();
    let shard = u64::from(t.operators_per_shard) * rows_per_operator * row_bytes;
    let runtime = frugal_hw::MemoryMeter::new().sample()?.rss_bytes;
    let (host_rollout, device_rollout) = if picked.gpu {
        // On a GPU the rollout's tensors live on the card; the host holds its recorded
        // states and the shard.
        (memory.trajectories, Some(rollout))
    } else {
        (rollout, None)
    };
    let per_thread = host_rollout + held + shard;
    let predicted = runtime + threads * per_thread;
    let (budget, budget_source) = match args.budget {
        Some(b) => (b, "--budget"),
        None => (super::plan::machine_budget()?, "machine"),
    };
    let arch = t.space.draw(t.seed, largest);
    let report = serde_json::json!({
        "config": args.config.file,
        "workload": "operator",
        "device": picked.name,
        "threads": threads,
        "batch": batch,
        "largest_operator": largest,
        "architecture": arch,
        "rollout": memory,
        "rollouts_held_bytes": held,
        "shard_buffer_bytes": shard,
        "runtime_bytes": runtime,
        "per_thread_bytes": per_thread,
        "predicted_peak_bytes": predicted,
        "predicted_peak_device_bytes": device_rollout,
        "budget_bytes": budget,
        "budget_source": budget_source,
        "fits": predicted <= budget,
    });
    if args.json {
        return super::print_json(out, &report);
    }
    writeln!(
        out,
        "{}: operator rollouts on {}, {threads} thread(s), {batch} fields per batch; largest operator {largest} ({} layers, {} channels, {}×{} kernels)",
        args.config.file.display(),
        picked.name,
        arch.layers,
        arch.channels,
        arch.kernel,
        arch.kernel
    )?;
    let item = |out: &mut dyn Write, name: &str, bytes: u64, how: &str| {
        writeln!(out, "  {name:<28} {:>12}  {how}", Bytes(bytes).to_string())
    };
    let where_ = if picked.gpu { "device" } else { "per thread" };
    item(
        out,
        "inputs",
        memory.inputs,
        &format!("{where_}: state batch and initial fields"),
    )?;
    item(out, "weights", memory.weights, where_)?;
    for (l, a) in memory.activations.iter().enumerate() {
        item(
            out,
            &format!("activations, layer {}", l + 1),
            *a,
            &format!("{where_}: padded input and output"),
        )?;
    }
    item(
        out,
        "trajectories (batch)",
        memory.trajectories,
        "recorded states of the batch",
    )?;
    item(
        out,
        "workspace",
        memory.workspace.unwrap_or(0),
        "measured beyond the largest layer",
    )?;
    item(
        out,
        "rollout peak",
        rollout,
        &format!("{where_}, measured on probe rollouts"),
    )?;
    item(
        out,
        "rollouts held",
        held,
        "per thread: one operator's realizations until written",
    )?;
    item(
        out,
        "shard buffer",
        shard,
        "per thread: the shard being filled",
    )?;
    item(out, "runtime", runtime, "this process now")?;
    writeln!(
        out,
        "  predicted host peak {} ({} budget {}): {}",
        Bytes(predicted),
        budget_source,
        Bytes(budget),
        if predicted <= budget {
            "fits"
        } else {
            "does NOT fit"
        }
    )?;
    if let Some(d) = device_rollout {
        writeln!(out, "  predicted device peak {}", Bytes(d))?;
    }
    Ok(())
}
