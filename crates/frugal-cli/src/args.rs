//! What was typed: clap definitions only, no logic.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use frugal_hw::Tier;
use frugal_train::Precision;

use crate::presets::Workload;

/// Big machine-learning and simulation work on modest hardware.
#[derive(Debug, Parser)]
#[command(name = "frugal", version, about, propagate_version = true)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Report this machine: CPU, memory budget, disk, GPUs, compute tier and presets.
    Probe(ProbeArgs),
    /// Check and inspect configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Datasets on disk: generate, import, inspect, verify and benchmark them.
    #[command(subcommand)]
    Data(DataCommand),
    /// Train a model from a configuration file.
    Train(TrainArgs),
    /// Predict a training run's peak memory, item by item, against a budget.
    Plan(PlanArgs),
    /// The N-body pipeline: simulate on every core into a dataset.
    #[command(subcommand)]
    Nbody(NbodyCommand),
    /// Neural-operator rollouts: generate a trajectory dataset from randomly drawn operators.
    #[command(subcommand)]
    Operator(OperatorCommand),
    /// Benchmark a workload over a matrix of settings (precision, batch, device): time,
    /// peak memory against the planner's prediction, throughput, speedup and status per
    /// configuration, as a table, JSON, CSV and PNG.
    Bench(WorkloadBenchArgs),
    /// Evolve parameters with a genetic algorithm (or NSGA-II), evaluating each generation
    /// on every core, or on Redis workers with --redis.
    Evolve(EvolveArgs),
    /// Serve a Redis job queue: run the jobs of the kinds this machine registers, until killed.
    Worker(WorkerArgs),
    /// Inspect Redis job queues.
    #[command(subcommand)]
    Farm(FarmCommand),
    /// The EqProp looped transformer's studies: its gradient against backpropagation,
    /// and a step's memory against the number of iterations.
    #[command(subcommand)]
    Eqprop(EqpropCommand),
}

#[derive(Debug, Subcommand)]
pub(crate) enum OperatorCommand {
    /// Roll out the configuration's operators (`[rollout]`, drawn from `[space]`) into a
    /// trajectory dataset, on every core or the GPU; run again after a kill to roll out
    /// only the missing shards.
    Generate {
        #[command(flatten)]
        config: ConfigArgs,
        /// Roll the operators out on the workers of this Redis server (`frugal worker`,
        /// any machine, on its CPU) instead of here; the dataset is still written here.
        #[arg(
            long,
            value_name = "URL",
            env = "FRUGAL_REDIS_URL",
            hide_env_values = true
        )]
        redis: Option<String>,
        /// Redis queue name.
        #[arg(long, value_name = "NAME", default_value = "frugal")]
        queue: String,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub(crate) struct WorkloadBenchArgs {
    #[command(flatten)]
    pub(crate) config: ConfigArgs,
    /// A dimension of the matrix, `KEY=V1,V2,…` (repeatable; rows are every
    /// combination, the first key varying slowest): `precision` (f32, bf16, f16),
    /// `batch` (fields rolled out together, or a training step's micro-batch), `device`
    /// (cpu, gpu, auto).
    #[arg(long, value_name = "KEY=VALUES")]
    pub(crate) matrix: Vec<String>,
    /// Timed runs per configuration, after one untimed warm-up run.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub(crate) repeats: u32,
    /// Memory budget: configurations the planner predicts above it are not run (status
    /// `over budget`). Default: the chosen device's memory (this machine's budget on the
    /// CPU). Accepts sizes such as `512MiB`, `2GB` or bytes.
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    pub(crate) budget: Option<u64>,
    /// Time steps per rollout (default: the configuration's `rollout.steps`); for a
    /// training workload, optimizer steps per timed run (default 20).
    #[arg(long, value_name = "N")]
    pub(crate) steps: Option<u32>,
    /// Which operator of the configuration's space is rolled out (operator workloads).
    #[arg(long, value_name = "INDEX")]
    pub(crate) operator: Option<u64>,
    /// Where bench.csv, bench.json and the plots go (default: OUTPUT_DIR/bench).
    #[arg(long, value_name = "DIR")]
    pub(crate) out: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub(crate) json: bool,
    /// Internal: run one training row (its settings as JSON) and print it.
    #[arg(long, hide = true, value_name = "JSON")]
    pub(crate) row: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct EvolveArgs {
    #[command(flatten)]
    pub(crate) config: ConfigArgs,
    /// Continue the run in the configuration's output directory from its last generation.
    #[arg(long)]
    pub(crate) resume: bool,
    /// Evaluate on the workers of this Redis server (`redis://[:PASSWORD@]HOST:PORT[/DB]`,
    /// `rediss://` for TLS) instead of locally. Prefer the FRUGAL_REDIS_URL variable when
    /// the URL holds a password: command lines are visible to other users.
    #[arg(
        long,
        value_name = "URL",
        env = "FRUGAL_REDIS_URL",
        hide_env_values = true
    )]
    pub(crate) redis: Option<String>,
    /// Redis queue name (default: the configuration's `farm.queue`).
    #[arg(long, value_name = "NAME")]
    pub(crate) queue: Option<String>,
    /// Local workers (default: the configuration's `farm.workers`, 0 = one per core).
    #[arg(long, value_name = "N")]
    pub(crate) workers: Option<usize>,
    /// Print the summary as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct WorkerArgs {
    /// The Redis server (`redis://[:PASSWORD@]HOST:PORT[/DB]`, `rediss://` for TLS).
    #[arg(
        long,
        value_name = "URL",
        env = "FRUGAL_REDIS_URL",
        hide_env_values = true
    )]
    pub(crate) redis: String,
    /// Jobs run at once (default: one per core).
    #[arg(long, value_name = "N")]
    pub(crate) jobs: Option<usize>,
    /// A TOML file whose `[kinds.NAME]` tables register this machine's command templates
    /// and ONNX models (an evolve configuration works too); built-in kinds are always
    /// registered.
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Queue name.
    #[arg(long, value_name = "NAME", default_value = "frugal")]
    pub(crate) queue: String,
    /// Jobs each slot takes at a time; raise it for jobs of milliseconds.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub(crate) batch: usize,
    /// This worker's name among the queue's workers (default: HOST-PID).
    #[arg(long, value_name = "NAME")]
    pub(crate) name: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum FarmCommand {
    /// A queue's jobs (waiting, running, retrying), results, owning run and live workers.
    Status {
        /// The Redis server.
        #[arg(
            long,
            value_name = "URL",
            env = "FRUGAL_REDIS_URL",
            hide_env_values = true
        )]
        redis: String,
        /// Queue name.
        #[arg(long, value_name = "NAME", default_value = "frugal")]
        queue: String,
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run one job of a registered kind here and print its metrics as JSON (to try a kind
    /// or a command template before a run).
    Exec {
        /// The kind.
        kind: String,
        /// Parameters as a JSON object.
        #[arg(long, value_name = "JSON", default_value = "{}")]
        params: String,
        /// The job's seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// A TOML file with `[kinds.NAME]` tables.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Measure the farm: the local backend's parallel efficiency with CPU-bound jobs on all
    /// cores against bare threads, and with --redis the no-op job throughput of a queue.
    Bench(FarmBenchArgs),
}

#[derive(Debug, Args)]
pub(crate) struct FarmBenchArgs {
    /// Local workers (0 = one per core).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub(crate) workers: usize,
    /// Length of each local job alone on one core, seconds.
    #[arg(long, value_name = "S", default_value_t = 1.0)]
    pub(crate) seconds: f64,
    /// Local jobs per worker.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub(crate) per_worker: usize,
    /// Also measure no-op job throughput through the queue at this Redis server; it gets a
    /// queue of its own, removed afterwards.
    #[arg(
        long,
        value_name = "URL",
        env = "FRUGAL_REDIS_URL",
        hide_env_values = true
    )]
    pub(crate) redis: Option<String>,
    /// No-op jobs through Redis.
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    pub(crate) jobs: usize,
    /// Redis workers (each with its own connections, in this process).
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub(crate) redis_workers: usize,
    /// Slots of each Redis worker.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub(crate) slots: usize,
    /// Jobs each slot takes per read.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub(crate) batch: usize,
    /// Skip the local measurement.
    #[arg(long)]
    pub(crate) no_local: bool,
    /// Print the results as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum NbodyCommand {
    /// Run the configuration's simulations (`[sim]`) on every core into a dataset; run
    /// again after a kill to produce only the missing simulations.
    Generate {
        #[command(flatten)]
        config: ConfigArgs,
        /// Run the simulations on the workers of this Redis server (`frugal worker`, any
        /// machine) instead of here; the dataset is still written here.
        #[arg(
            long,
            value_name = "URL",
            env = "FRUGAL_REDIS_URL",
            hide_env_values = true
        )]
        redis: Option<String>,
        /// Redis queue name.
        #[arg(long, value_name = "NAME", default_value = "frugal")]
        queue: String,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Train the graph network on the simulations (generating those still missing),
    /// holding the last `sim.held_out` simulations out for evaluation.
    Train(TrainArgs),
    /// Roll the trained network out on the held-out simulations against the simulator and a
    /// constant-velocity baseline: one-step and rollout position errors, energy drift, and
    /// `rollout.png`.
    Rollout(NbodyRolloutArgs),
    /// The whole pipeline: generate what is missing, train (continuing a stopped run),
    /// roll out on the held-out simulations, and report each phase's peak memory.
    Run {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Measure peak memory and step time of the graph network's training step at growing
    /// particle counts with the memory techniques off and on (bf16, checkpointing, one state
    /// per micro-batch), and the largest count that fits a budget each way.
    Scale(NbodyScaleArgs),
}

#[derive(Debug, Args)]
pub(crate) struct NbodyScaleArgs {
    /// The memory budget (e.g. 12GiB; default: this machine's, as `frugal probe` reports).
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    pub(crate) budget: Option<u64>,
    /// Particle counts to measure, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1000,5000,10000,25000,50000"
    )]
    pub(crate) particles: Vec<usize>,
    /// States per optimizer step (with the techniques on: micro-batches of one).
    #[arg(long, default_value_t = 2)]
    pub(crate) batch: usize,
    /// Width of every latent.
    #[arg(long, default_value_t = 128)]
    pub(crate) hidden: usize,
    /// Message-passing layers.
    #[arg(long, default_value_t = 3)]
    pub(crate) layers: usize,
    /// Neighbours per particle.
    #[arg(long, default_value_t = 20)]
    pub(crate) neighbours: usize,
    /// Compute threads (0: every core).
    #[arg(long, default_value_t = 0)]
    pub(crate) threads: usize,
    /// Where the steps run: `cpu`, `gpu` (peaks are then the device allocator's) or
    /// `auto`.
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    pub(crate) device: frugal_train::device::DeviceChoice,
    /// Measure one configuration only: `off` or `on`.
    #[arg(long, value_parser = ["off", "on"])]
    pub(crate) only: Option<String>,
    /// Compute precision of both configurations (default: f32 off, bf16 on).
    #[arg(long, value_parser = parse_precision)]
    pub(crate) precision: Option<Precision>,
    /// Steps timed at each point after one warm-up step; the median is reported.
    #[arg(long, default_value_t = 1)]
    pub(crate) steps: usize,
    /// Where the table (`scale.csv`) and plot (`scale.png`) go.
    #[arg(long, default_value = "runs/nbody-scale")]
    pub(crate) out: PathBuf,
    /// Print the summary as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct NbodyRolloutArgs {
    #[command(flatten)]
    pub(crate) config: ConfigArgs,
    /// The model: a `model.bpk` or a `checkpoint.bin` (default: the output directory's
    /// `model.bpk`).
    #[arg(long, value_name = "PATH")]
    pub(crate) checkpoint: Option<PathBuf>,
    /// Recorded steps to roll out.
    #[arg(long, default_value_t = 20)]
    pub(crate) steps: u32,
    /// Print the summary as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// What every training command takes besides its configuration.
#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// Continue the run in the configuration's output directory from its last checkpoint.
    #[arg(long)]
    pub(crate) resume: bool,
    /// Stop after this many optimizer steps (checkpointing first); continue with --resume.
    #[arg(long, value_name = "STEPS")]
    pub(crate) stop_after: Option<u64>,
    /// Print the summary as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct TrainArgs {
    #[command(flatten)]
    pub(crate) config: ConfigArgs,
    #[command(flatten)]
    pub(crate) run: RunArgs,
    /// Refuse to start when the memory plan's predicted peak exceeds this (e.g. 6GiB).
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    pub(crate) max_memory: Option<u64>,
    /// Choose checkpointing, micro-batch and precision to fit the memory budget
    /// (--max-memory, else the machine's).
    #[arg(long)]
    pub(crate) auto_fit: bool,
    /// Size the run by the workload's preset for a compute tier: `auto` (this machine's
    /// tier, as `frugal probe` reports it) or a tier (cpu_only, tier_1_commodity, …). The
    /// preset's [compute], [model], [train] and family keys replace the file's; --set
    /// still wins.
    #[arg(long, value_name = "TIER", value_parser = parse_tier_choice)]
    pub(crate) tier: Option<TierChoice>,
    #[command(flatten)]
    pub(crate) presets: PresetDirArg,
}

/// `--tier`: this machine's, or one named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TierChoice {
    /// The tier `frugal probe` finds.
    Auto,
    /// A tier named on the command line.
    Named(Tier),
}

fn parse_tier_choice(s: &str) -> Result<TierChoice, String> {
    if s.eq_ignore_ascii_case("auto") {
        Ok(TierChoice::Auto)
    } else {
        s.parse().map(TierChoice::Named)
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum EqpropCommand {
    /// Check EqProp's gradient against a reference on one batch of the configuration's
    /// training data, over a sweep of β: cosine similarity and relative error overall and
    /// per parameter tensor, as a table, JSON and a PNG. Runs on the CPU.
    Gradcheck(GradcheckArgs),
    /// Measure a training step's peak memory and time against the number of iterations,
    /// for EqProp and for backpropagation through the iterations with and without
    /// checkpointing; table, JSON and a PNG. Runs on the CPU.
    Memory(EqpropMemoryArgs),
}

#[derive(Debug, Args)]
pub(crate) struct GradcheckArgs {
    #[command(flatten)]
    pub(crate) config: ConfigArgs,
    /// The β values to sweep.
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        default_value = "0.5,0.2,0.1,0.05,0.02,0.01,0.005,0.002,0.001"
    )]
    pub(crate) betas: Vec<f64>,
    /// The reference: implicit differentiation at the free equilibrium, or
    /// backpropagation through the free phase's iterations.
    #[arg(long, value_name = "REF", default_value = "implicit", value_parser = parse_reference)]
    pub(crate) reference: frugal_models::eqprop::Reference,
    /// Samples in the batch (the training set's first).
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) batch: u32,
    /// Compute in f64 (default: rounding out of the comparison) or f32 (as training does).
    #[arg(long, value_name = "P", default_value = "f64", value_parser = parse_check_precision)]
    pub(crate) precision: burn::tensor::FloatDType,
    /// Tolerance of every phase (the relative change of the state in one iteration) and
    /// of the implicit reference's solve (its relative residual); it must be far below the
    /// smallest β's effect on the state. Default: 1e-10 in f64, 1e-6 in f32 (near f32's
    /// rounding, which no iteration gets below).
    #[arg(long, value_name = "TOL")]
    pub(crate) tol: Option<f64>,
    /// Iteration limit of every phase and solve.
    #[arg(long, value_name = "N", default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) max_iters: u32,
    /// Where to draw cosine and error against β (default: OUTPUT_DIR/gradcheck.png).
    #[arg(long, value_name = "FILE")]
    pub(crate) plot: Option<PathBuf>,
    /// Print JSON: {"sweep": [{"beta", "cosine", "relative_error", "tensors", "phases"}],
    /// "reference", "reference_iterations", "loss"}.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct EqpropMemoryArgs {
    #[command(flatten)]
    pub(crate) config: ConfigArgs,
    /// Iterations per phase (EqProp) or unrolled (BPTT) to measure.
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        default_value = "10,20,50,100,200"
    )]
    pub(crate) iters: Vec<u32>,
    /// Samples in the batch (default: the configuration's batch size).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) batch: Option<u32>,
    /// Where to draw peak memory against iterations (default: OUTPUT_DIR/eqprop-memory.png).
    #[arg(long, value_name = "FILE")]
    pub(crate) plot: Option<PathBuf>,
    /// Print JSON: {"rows": [{"method", "iters", "peak_bytes", "seconds"}], "crossover",
    /// "eqprop_spread"}.
    #[arg(long)]
    pub(crate) json: bool,
}

fn parse_reference(s: &str) -> Result<frugal_models::eqprop::Reference, String> {
    use frugal_models::eqprop::Reference;
    match s {
        "implicit" => Ok(Reference::Implicit),
        "bptt" => Ok(Reference::Bptt),
        other => Err(format!(
            "`{other}` is not a reference: use implicit or bptt"
        )),
    }
}

fn parse_check_precision(s: &str) -> Result<burn::tensor::FloatDType, String> {
    match s {
        "f64" => Ok(burn::tensor::FloatDType::F64),
        "f32" => Ok(burn::tensor::FloatDType::F32),
        other => Err(format!(
            "`{other}` is not a precision for the check: use f64 or f32"
        )),
    }
}

#[derive(Debug, Args)]
pub(crate) struct PlanArgs {
    #[command(flatten)]
    pub(crate) config: ConfigArgs,
    /// The memory budget (e.g. 8GiB); default: the machine's (`frugal probe`).
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    pub(crate) budget: Option<u64>,
    /// Also run a few real steps at growing batch sizes, each in its own process, and
    /// report the largest batch whose measured peak stays 5 % under the budget.
    #[arg(long)]
    pub(crate) measure: bool,
    /// The GPU memory budget of a run on a GPU (default: the card's memory, as NVML
    /// reports it).
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    pub(crate) device_budget: Option<u64>,
    /// Print the plan as JSON.
    #[arg(long)]
    pub(crate) json: bool,
    /// Internal: run two training steps at this batch and print the peak memory.
    #[arg(long, hide = true, value_name = "BATCH")]
    pub(crate) probe_batch: Option<usize>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum DataCommand {
    /// Generate a dataset.
    #[command(subcommand)]
    Gen(GenCommand),
    /// Convert arrays from other formats into a dataset.
    #[command(subcommand)]
    Import(ImportCommand),
    /// Show a dataset's columns, shards and size.
    Inspect {
        /// The dataset directory.
        dir: PathBuf,
        /// Print the manifest as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check every shard's size, header and checksum; exit 1 naming each damaged shard.
    Verify {
        /// The dataset directory.
        dir: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Read one epoch and compare with a plain sequential read of the same files.
    Bench(BenchArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ShardSizeArg {
    /// Target shard size.
    #[arg(long, value_name = "BYTES", default_value = "64MiB", value_parser = parse_bytes)]
    pub(crate) shard_size: u64,
}

#[derive(Debug, Subcommand)]
pub(crate) enum GenCommand {
    /// A classification task labelled by a fixed random teacher network: learnable, not noise.
    Synthetic {
        /// Number of samples.
        #[arg(long)]
        samples: u64,
        /// Features per sample (f32).
        #[arg(long, default_value_t = 3072)]
        features: usize,
        /// Number of classes.
        #[arg(long, default_value_t = 10)]
        classes: usize,
        /// Hidden width of the teacher network.
        #[arg(long, default_value_t = 32)]
        hidden: usize,
        /// Seed of the teacher and the samples.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Independent stream of samples from the same teacher: 0 for a training split,
        /// 1 for its held-out split.
        #[arg(long, default_value_t = 0)]
        sample_stream: u64,
        /// Output directory (new, empty, or an unfinished run of the same command).
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        shard: ShardSizeArg,
        /// Writer threads; default: every core this process may use.
        #[arg(long)]
        threads: Option<usize>,
        /// Print a JSON summary.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ImportCommand {
    /// `.npy` arrays (`--column NAME=FILE`, one per column) or one `.npz` archive.
    Npy {
        /// A `.npz` archive: each array becomes a column named by its key.
        #[arg(conflicts_with = "column", required_unless_present = "column")]
        npz: Option<PathBuf>,
        /// A column from a `.npy` file, e.g. `--column x=features.npy` (repeatable).
        #[arg(long, value_name = "NAME=FILE", value_parser = parse_named_path)]
        column: Vec<(String, PathBuf)>,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        shard: ShardSizeArg,
    },
    /// Flat binary files (`a.tofile()`, Fortran stream writes), one per column, their
    /// layout given here; column-major files are transposed a block at a time.
    Raw {
        /// A column and its file's layout, `NAME=FILE:DTYPE[:SHAPE][:ORDER][:ENDIAN]`, e.g.
        /// `x=images.bin:f32:3072:column-major` or `y=labels.bin:i32` (repeatable). SHAPE is
        /// one sample's (`3072`, `32x32x3`; default one element), ORDER `row-major`
        /// (default) or `column-major` (sample index fastest, as `a.T.tofile()` writes),
        /// ENDIAN `le` (default) or `be`.
        #[arg(long, value_name = "SPEC", required = true, value_parser = parse_raw_column)]
        column: Vec<frugal_store::import::RawColumn>,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        shard: ShardSizeArg,
    },
    /// Datasets of an HDF5 file, read chunk by chunk (needs the `hdf5` feature).
    Hdf5 {
        /// The HDF5 file.
        file: PathBuf,
        /// A column from an HDF5 dataset, e.g. `--dataset x=/train/images` (repeatable).
        #[arg(long, value_name = "NAME=PATH", required = true, value_parser = parse_named_string)]
        dataset: Vec<(String, String)>,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        shard: ShardSizeArg,
    },
    /// MNIST IDX files (gzip or raw): columns `image` (u8 28×28) and `label` (u8).
    Mnist {
        /// Images file, e.g. train-images-idx3-ubyte.gz.
        #[arg(long)]
        images: PathBuf,
        /// Labels file, e.g. train-labels-idx1-ubyte.gz.
        #[arg(long)]
        labels: PathBuf,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        shard: ShardSizeArg,
    },
}

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// The dataset directory.
    pub(crate) dir: PathBuf,
    /// Epoch order.
    #[arg(long, default_value = "window", value_parser = parse_order)]
    pub(crate) order: frugal_store::Order,
    /// Drop the dataset from the page cache before each timed read.
    #[arg(long)]
    pub(crate) cold: bool,
    /// Samples per batch.
    #[arg(long, default_value_t = 256)]
    pub(crate) batch_size: usize,
    /// Memory for one window of samples (the shuffle buffer of `window` order).
    #[arg(long, value_name = "BYTES", default_value = "64MiB", value_parser = parse_bytes)]
    pub(crate) window_budget: u64,
    /// Seed of the order.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Epoch number.
    #[arg(long, default_value_t = 0)]
    pub(crate) epoch: u64,
    /// Checksum checking while reading: on-read, before or off.
    #[arg(long, default_value = "on-read", value_parser = parse_verify)]
    pub(crate) verify: frugal_store::Verify,
    /// Timed pairs of (epoch, raw read), alternating which goes first; the report gives
    /// each and their medians (a disk's rate varies from one read to the next).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) repeats: u32,
    /// Print JSON (medians read_gbps, raw_gbps, ratio, samples_per_s, peak_rss_bytes, and
    /// every pair under `runs`).
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ProbeArgs {
    /// Print JSON (keys documented in docs/probe.md) instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
    /// Measure free space (and benchmark) the disk holding this directory.
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub(crate) path: PathBuf,
    /// Measure the sequential read rate of the disk, page cache bypassed.
    #[arg(long)]
    pub(crate) disk_bench: bool,
    /// Size of the disk benchmark's temporary file (e.g. 512MiB, 4GiB).
    #[arg(long, value_name = "BYTES", default_value = "1GiB", value_parser = parse_bytes)]
    pub(crate) disk_bench_size: u64,
    #[command(flatten)]
    pub(crate) presets: PresetDirArg,
}

#[derive(Debug, Args)]
pub(crate) struct PresetDirArg {
    /// A directory of presets (WORKLOAD/TIER.toml) that override the built-in ones.
    /// Default: $FRUGAL_PRESETS_DIR, else ~/.config/frugal/presets.
    #[arg(long = "presets", value_name = "DIR")]
    pub(crate) dir: Option<PathBuf>,
}

/// A configuration file and overrides of its keys: shared by every command that takes one.
#[derive(Debug, Clone, Args)]
pub(crate) struct ConfigArgs {
    /// The TOML configuration file.
    #[arg(value_name = "FILE")]
    pub(crate) file: PathBuf,
    /// Override a key, e.g. `--set compute.batch_size=64` (repeatable; unquoted text
    /// that is not a TOML value is taken as a string).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub(crate) set: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
    /// Check a configuration: unknown keys, wrong types and bad values are reported as
    /// FILE:LINE:COL, exit code 2.
    Check {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Print a configuration with overrides applied and defaults filled in.
    Show {
        #[command(flatten)]
        config: ConfigArgs,
        /// Print JSON instead of TOML.
        #[arg(long)]
        json: bool,
    },
    /// Print the preset for a workload: a starting point for your own configuration.
    Preset {
        /// The workload family.
        #[arg(value_parser = parse_workload)]
        workload: Workload,
        /// The tier to pick for (e.g. TIER_1_COMMODITY); default: this machine's.
        #[arg(long, value_parser = parse_tier)]
        tier: Option<Tier>,
        #[command(flatten)]
        presets: PresetDirArg,
    },
}

fn parse_device(s: &str) -> Result<frugal_train::device::DeviceChoice, String> {
    use frugal_train::device::DeviceChoice;
    match s {
        "auto" => Ok(DeviceChoice::Auto),
        "cpu" => Ok(DeviceChoice::Cpu),
        "gpu" => Ok(DeviceChoice::Gpu),
        other => Err(format!("`{other}` is not a device: use cpu, gpu or auto")),
    }
}

fn parse_precision(s: &str) -> Result<Precision, String> {
    match s {
        "f32" => Ok(Precision::F32),
        "bf16" => Ok(Precision::Bf16),
        "f16" => Ok(Precision::F16),
        other => Err(format!(
            "`{other}` is not a precision: use f32, bf16 or f16"
        )),
    }
}

fn parse_bytes(s: &str) -> Result<u64, String> {
    frugal_hw::units::parse_bytes(s).map_err(|e| e.to_string())
}

fn parse_order(s: &str) -> Result<frugal_store::Order, String> {
    s.parse()
}

fn parse_verify(s: &str) -> Result<frugal_store::Verify, String> {
    match s {
        "on-read" => Ok(frugal_store::Verify::OnRead),
        "before" => Ok(frugal_store::Verify::Before),
        "off" => Ok(frugal_store::Verify::Off),
        _ => Err(format!("`{s}`: expected on-read, before or off")),
    }
}

fn parse_raw_column(s: &str) -> Result<frugal_store::import::RawColumn, String> {
    s.parse()
}

fn parse_named_path(s: &str) -> Result<(String, PathBuf), String> {
    parse_named_string(s).map(|(n, v)| (n, PathBuf::from(v)))
}

fn parse_named_string(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, value)) if !name.is_empty() && !value.is_empty() => {
            Ok((name.to_owned(), value.to_owned()))
        }
        _ => Err(format!("`{s}`: expected NAME=VALUE")),
    }
}

fn parse_workload(s: &str) -> Result<Workload, String> {
    s.parse()
}

fn parse_tier(s: &str) -> Result<Tier, String> {
    s.parse()
}
