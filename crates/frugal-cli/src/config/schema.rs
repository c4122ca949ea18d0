//! The workload configuration files: one shape per workload family, sharing the top
//! level (`workload`, `output_dir`, `seed`) and the `[compute]` section that presets
//! tune per tier. Every table rejects keys it does not know.

use std::path::PathBuf;

use crate::presets::Workload;
pub(crate) use frugal_models::classifier::Arch as ClassifierArch;
pub(crate) use frugal_train::Precision;
pub(crate) use frugal_train::device::DeviceChoice as Device;
use serde::{Deserialize, Serialize};

use super::{ConfigError, Document};

fn one() -> u32 {
    1
}

fn default_batch() -> u32 {
    32
}

/// How the hardware is used: the section presets tune per tier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ComputeConfig {
    /// `auto`, `cpu` or `gpu`.
    #[serde(default)]
    pub(crate) device: Device,
    /// `f32`, `bf16` or `f16`.
    #[serde(default)]
    pub(crate) precision: Precision,
    /// Samples per optimizer step, before accumulation.
    #[serde(default = "default_batch")]
    pub(crate) batch_size: u32,
    /// Micro-batches accumulated into one optimizer step.
    #[serde(default = "one")]
    pub(crate) grad_accum: u32,
    /// Recompute activations in backward instead of keeping them.
    #[serde(default)]
    pub(crate) checkpointing: bool,
    /// Checkpoint segments; absent means the square root of the number of blocks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) checkpoint_segments: Option<u32>,
    /// Worker threads; 0 means every core this process may use.
    #[serde(default)]
    pub(crate) threads: u32,
}

impl Default for ComputeConfig {
    fn default() -> Self {
        Self {
            device: Device::Auto,
            precision: Precision::F32,
            batch_size: default_batch(),
            grad_accum: 1,
            checkpointing: false,
            checkpoint_segments: None,
            threads: 0,
        }
    }
}

/// The looped transformer's sizes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EqpropModel {
    /// Width of the tokens the block iterates on.
    pub(crate) d_model: u32,
    /// Attention heads.
    pub(crate) heads: u32,
    /// Width of each head's queries and keys (default: d_model / heads).
    #[serde(default)]
    pub(crate) d_head: Option<u32>,
    /// Hopfield memories, the feed-forward part's width (the seed's d_ff).
    pub(crate) memories: u32,
    /// Side of the square patches an image is cut into, one token each.
    #[serde(default = "seven")]
    pub(crate) patch: u32,
    /// Number of classes.
    #[serde(default = "ten")]
    pub(crate) classes: u32,
}

fn seven() -> u32 {
    7
}

/// How equilibria are found and nudged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct EqpropSection {
    /// Nudging strength β of the ±β phases.
    pub(crate) beta: f64,
    /// Step of the damped iteration, in (0, 1].
    pub(crate) damping: f64,
    /// Relative change below which a phase has converged.
    pub(crate) tol: f64,
    /// Iterations at most per phase.
    pub(crate) max_iters: u32,
    /// The attention's inverse temperature.
    pub(crate) lambda: f64,
}

impl Default for EqpropSection {
    fn default() -> Self {
        let d = frugal_models::eqprop::Dynamics::default();
        Self {
            beta: 0.1,
            damping: d.damping,
            tol: d.tol,
            max_iters: d.max_iters,
            lambda: d.lambda,
        }
    }
}

impl EqpropSection {
    /// The solver's settings.
    pub(crate) fn dynamics(&self) -> frugal_models::eqprop::Dynamics {
        frugal_models::eqprop::Dynamics {
            damping: self.damping,
            tol: self.tol,
            max_iters: self.max_iters,
            lambda: self.lambda,
        }
    }
}

/// The classifier's model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClassifierModel {
    /// `mlp` or `cnn`.
    pub(crate) arch: ClassifierArch,
    /// Widths of the hidden layers (MLP) or channel counts of the stages (CNN).
    pub(crate) hidden: Vec<u32>,
    /// Dropout probability after each hidden layer.
    #[serde(default)]
    pub(crate) dropout: f64,
    /// Number of classes.
    #[serde(default = "ten")]
    pub(crate) classes: u32,
}

fn ten() -> u32 {
    10
}

/// Where a classifier's data comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum DataSource {
    /// The MNIST IDX files, imported once into `output_dir/data`.
    #[default]
    Mnist,
    /// Existing frugal-store datasets (`train`, `test`).
    Store,
    /// The synthetic teacher task, generated once into `output_dir/data`.
    Synthetic,
}

/// A classifier's data. Keys left out take their values from `Default`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct DataSection {
    /// `mnist`, `store` or `synthetic`.
    pub(crate) source: DataSource,
    /// `mnist`: the folder holding the four IDX files (default: `$FRUGAL_MNIST_DIR`, else
    /// `data/mnist`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) dir: Option<PathBuf>,
    /// `store`: the training dataset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) train: Option<PathBuf>,
    /// `store`: the held-out dataset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) test: Option<PathBuf>,
    /// Input column (default `image` for MNIST, `x` otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) input: Option<String>,
    /// Label column (default `label` for MNIST, `y` otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) label: Option<String>,
    /// `synthetic`: training samples.
    pub(crate) samples: u64,
    /// `synthetic`: held-out samples (same teacher, other samples).
    pub(crate) test_samples: u64,
    /// `synthetic`: features per sample.
    pub(crate) features: u32,
    /// `synthetic`: hidden width of the teacher network.
    pub(crate) teacher_hidden: u32,
    /// Epoch order of the training data.
    pub(crate) order: frugal_store::Order,
}

impl Default for DataSection {
    fn default() -> Self {
        Self {
            source: DataSource::Mnist,
            dir: None,
            train: None,
            test: None,
            input: None,
            label: None,
            samples: 60_000,
            test_samples: 10_000,
            features: 64,
            teacher_hidden: 32,
            order: frugal_store::Order::default(),
        }
    }
}

/// How long and how fast to train. Keys left out take their values from `Default`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct TrainSection {
    /// Passes over the training data.
    pub(crate) epochs: u64,
    /// Optimizer steps in all; overrides `epochs`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) steps: Option<u64>,
    /// Peak learning rate (AdamW).
    pub(crate) lr: f64,
    /// `constant`, `cosine` or `linear` decay after warm-up.
    pub(crate) schedule: frugal_train::schedule::Decay,
    /// Steps of linear warm-up.
    pub(crate) warmup_steps: u64,
    /// Learning rate at the last step, as a fraction of `lr` (decaying schedules).
    pub(crate) final_lr_fraction: f64,
    /// AdamW's decoupled weight decay.
    pub(crate) weight_decay: f64,
    /// Steps between train records in the metrics files.
    pub(crate) log_every: u64,
    /// Steps between evaluations; 0 evaluates at the end of every epoch.
    pub(crate) eval_every: u64,
    /// Steps between checkpoints; 0 checkpoints only at the end.
    pub(crate) checkpoint_every: u64,
}

impl Default for TrainSection {
    fn default() -> Self {
        Self {
            epochs: 1,
            steps: None,
            lr: 1e-3,
            schedule: frugal_train::schedule::Decay::default(),
            warmup_steps: 0,
            final_lr_fraction: 0.0,
            weight_decay: 1e-4,
            log_every: 50,
            eval_every: 0,
            checkpoint_every: 500,
        }
    }
}

/// The particle-dynamics graph network and its problem size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ParticlesModel {
    /// Particles per simulation.
    pub(crate) particles: u32,
    /// Width of node and edge latents.
    pub(crate) hidden: u32,
    /// Message-passing layers.
    pub(crate) layers: u32,
    /// Neighbours per particle in the kNN graph.
    pub(crate) neighbours: u32,
    /// Gaussian noise added to input velocities in training, in units of their standard
    /// deviation (keeps learned rollouts stable); 0 for none.
    #[serde(default)]
    pub(crate) noise: f64,
}

/// How forces are computed while generating.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum SimMethod {
    /// Direct summation up to 5,000 particles, Barnes–Hut above.
    #[default]
    Auto,
    /// Every pair.
    Direct,
    /// A Barnes–Hut octree with opening angle `sim.theta`.
    BarnesHut,
}

/// The simulations a particle dataset is generated from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct SimSection {
    /// Independent simulations (one seeded job each).
    pub(crate) simulations: u32,
    /// States recorded per simulation, the initial one included.
    pub(crate) steps: u32,
    /// Integrator steps between recorded states.
    pub(crate) record_every: u32,
    /// Integrator time step, N-body units.
    pub(crate) dt: f64,
    /// Plummer softening length.
    pub(crate) softening: f64,
    /// Initial conditions, taken in turn by successive simulations.
    pub(crate) initial: Vec<frugal_sim::Initial>,
    /// `auto`, `direct` or `barnes_hut`.
    pub(crate) method: SimMethod,
    /// Barnes–Hut opening angle.
    pub(crate) theta: f64,
    /// The last this many simulations are held out for evaluation, never trained on.
    pub(crate) held_out: u32,
    /// Where the dataset goes; default `OUTPUT_DIR/sims`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) data: Option<PathBuf>,
}

impl Default for SimSection {
    fn default() -> Self {
        Self {
            simulations: 24,
            steps: 100,
            record_every: 4,
            dt: 0.005,
            softening: 0.05,
            initial: vec![
                frugal_sim::Initial::Plummer,
                frugal_sim::Initial::UniformCube,
                frugal_sim::Initial::ColdCollapse,
            ],
            method: SimMethod::Auto,
            theta: 0.5,
            held_out: 3,
            data: None,
        }
    }
}

/// The search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EvolveSearch {
    /// `ga`, `mu_plus_lambda` or `nsga2`.
    #[serde(default = "default_method")]
    pub(crate) method: frugal_evolve::Method,
    /// Individuals per generation (μ).
    pub(crate) population: u32,
    /// Generations after the initial population.
    pub(crate) generations: u32,
    /// A new candidate as soon as any result is in, never waiting for a generation.
    #[serde(default)]
    pub(crate) steady_state: bool,
    /// Offspring per generation (λ).
    #[serde(default)]
    pub(crate) offspring: Option<u32>,
    /// Best parents carried over unchanged by `ga`.
    #[serde(default)]
    pub(crate) elite: Option<u32>,
    /// Tournament size.
    #[serde(default)]
    pub(crate) tournament: Option<u32>,
    /// Probability a pair of parents is crossed.
    #[serde(default)]
    pub(crate) crossover_prob: Option<f64>,
    /// Probability a crossed pair exchanges each gene.
    #[serde(default)]
    pub(crate) crossover_var_prob: Option<f64>,
    /// SBX distribution index.
    #[serde(default)]
    pub(crate) eta_c: Option<f64>,
    /// Per-gene mutation probability.
    #[serde(default)]
    pub(crate) mutation_prob: Option<f64>,
    /// Polynomial mutation distribution index.
    #[serde(default)]
    pub(crate) eta_m: Option<f64>,
    /// Hall of fame size.
    #[serde(default)]
    pub(crate) hall_of_fame: Option<u32>,
}

fn default_method() -> frugal_evolve::Method {
    frugal_evolve::Method::Ga
}

/// What evaluates a candidate.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EvolveJob {
    /// A built-in kind (`sphere`, `rastrigin`, `zdt1`, `particles`) or a `[kinds.NAME]`.
    #[serde(default)]
    pub(crate) kind: String,
    /// Parameters every job gets besides the genes.
    #[serde(default)]
    pub(crate) params: serde_json::Map<String, serde_json::Value>,
    /// Seconds one attempt may run.
    #[serde(default)]
    pub(crate) timeout_s: Option<f64>,
    /// Attempts before a job is given up and reported failed.
    #[serde(default = "three")]
    pub(crate) max_attempts: u32,
}

fn three() -> u32 {
    3
}

/// One gene, or an array of `count` genes passed as one array parameter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GeneConfig {
    /// Lower bound, included.
    pub(crate) low: f64,
    /// Upper bound, included.
    pub(crate) high: f64,
    /// Whole numbers only.
    #[serde(default)]
    pub(crate) integer: bool,
    /// An array of this many genes.
    #[serde(default)]
    pub(crate) count: Option<u32>,
}

/// One objective of several (`nsga2`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ObjectiveConfig {
    /// The metric.
    pub(crate) metric: String,
    /// `min` or `max`.
    pub(crate) goal: frugal_evolve::run::Goal,
}

/// A bound on a metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConstraintConfig {
    /// The metric.
    pub(crate) metric: String,
    /// Smallest allowed value.
    #[serde(default)]
    pub(crate) min: Option<f64>,
    /// Largest allowed value.
    #[serde(default)]
    pub(crate) max: Option<f64>,
}

/// How metrics become fitness: exactly one of `minimize`, `maximize`, `weights` (a
/// weighted sum, maximized) or `objectives`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FitnessConfig {
    /// A metric to minimize.
    #[serde(default)]
    pub(crate) minimize: Option<String>,
    /// A metric to maximize.
    #[serde(default)]
    pub(crate) maximize: Option<String>,
    /// Metric weights; their weighted sum is maximized.
    #[serde(default)]
    pub(crate) weights: Option<std::collections::BTreeMap<String, f64>>,
    /// Several objectives, for `nsga2`.
    #[serde(default)]
    pub(crate) objectives: Option<Vec<ObjectiveConfig>>,
    /// Bounds every feasible candidate meets.
    #[serde(default)]
    pub(crate) constraints: Vec<ConstraintConfig>,
    /// Reference point for the hypervolume of a two-objective front, as reported.
    #[serde(default)]
    pub(crate) reference: Option<Vec<f64>>,
}

/// Where evaluations run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FarmConfig {
    /// Local workers; 0 = one per core.
    #[serde(default)]
    pub(crate) workers: u32,
    /// Redis queue name (`--queue` overrides).
    #[serde(default = "default_queue")]
    pub(crate) queue: String,
    /// Seconds a Redis worker holds a job without renewing its lease.
    #[serde(default = "default_lease")]
    pub(crate) lease_s: f64,
    /// Steady-state evaluations in flight; 0 = the workers' total.
    #[serde(default)]
    pub(crate) in_flight: u32,
}

impl Default for FarmConfig {
    fn default() -> Self {
        Self {
            workers: 0,
            queue: default_queue(),
            lease_s: default_lease(),
            in_flight: 0,
        }
    }
}

fn default_queue() -> String {
    "frugal".into()
}

fn default_lease() -> f64 {
    30.0
}

/// A job kind of this machine's own: a command template or an ONNX model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KindConfig {
    /// Program and arguments, with `{NAME}` placeholders.
    #[serde(default)]
    pub(crate) command: Option<Vec<String>>,
    /// `stdout` (default) or `file`.
    #[serde(default)]
    pub(crate) metrics: Option<frugal_farm::MetricsFrom>,
    /// Seconds one attempt may run.
    #[serde(default)]
    pub(crate) timeout_s: Option<f64>,
    /// Working directory of the command.
    #[serde(default)]
    pub(crate) workdir: Option<PathBuf>,
    /// An ONNX model file.
    #[serde(default)]
    pub(crate) onnx: Option<PathBuf>,
    /// The parameters fed to the model's input columns, in order.
    #[serde(default)]
    pub(crate) inputs: Option<Vec<String>>,
    /// The metric names of the model's output columns, in order.
    #[serde(default)]
    pub(crate) outputs: Option<Vec<String>>,
}

/// The `[rollout]` section of an `operator` configuration: how many operators are rolled
/// out, from which fields, for how long, and how the trajectories are stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RolloutSection {
    /// Operators drawn from `[space]`.
    pub(crate) operators: u64,
    /// Initial fields per operator.
    #[serde(default = "default_realizations")]
    pub(crate) realizations: u32,
    /// Field height.
    #[serde(default = "default_grid")]
    pub(crate) height: u32,
    /// Field width.
    #[serde(default = "default_grid")]
    pub(crate) width: u32,
    /// Field channels.
    #[serde(default = "default_fields")]
    pub(crate) fields: u32,
    /// Fourier modes of the initial fields, per direction.
    #[serde(default = "default_modes")]
    pub(crate) modes: u32,
    /// Time steps per rollout.
    #[serde(default = "default_rollout_steps")]
    pub(crate) steps: u32,
    /// Steps between recorded states (step 0 and the last are recorded too).
    #[serde(default = "default_record_every")]
    pub(crate) record_every: u32,
    /// How recorded fields are stored: `f16` or `f32`.
    #[serde(default)]
    pub(crate) storage: Storage,
    /// Operators per shard (what a killed run redoes at most, per thread).
    #[serde(default = "default_operators_per_shard")]
    pub(crate) operators_per_shard: u32,
    /// Where the dataset goes; absent means `OUTPUT_DIR/trajectories`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) data: Option<PathBuf>,
}

fn default_realizations() -> u32 {
    10
}
fn default_grid() -> u32 {
    128
}
fn default_fields() -> u32 {
    3
}
fn default_modes() -> u32 {
    4
}
fn default_rollout_steps() -> u32 {
    500
}
fn default_record_every() -> u32 {
    10
}
/// The number format recorded fields are stored in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Storage {
    /// Half precision: half the disk of f32, about three decimal digits.
    #[default]
    F16,
    /// Single precision.
    F32,
}

impl Storage {
    pub(crate) fn dtype(self) -> frugal_store::DType {
        match self {
            Storage::F16 => frugal_store::DType::F16,
            Storage::F32 => frugal_store::DType::F32,
        }
    }
}
fn default_operators_per_shard() -> u32 {
    4
}

macro_rules! workload_configs {
    ($( $variant:ident: $name:ident { $section:ident: $ty:ty $(; $($extra:ident: $extra_ty:ty),+)? } ),* $(,)?) => {
        $(
            #[doc = concat!("A `", stringify!($variant), "` workload configuration.")]
            #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
            #[serde(deny_unknown_fields)]
            pub(crate) struct $name {
                /// Which family this file configures.
                pub(crate) workload: Workload,
                /// Where datasets, checkpoints, metrics and plots go.
                pub(crate) output_dir: PathBuf,
                /// Seed of every random choice; recorded with the outputs.
                #[serde(default)]
                pub(crate) seed: u64,
                /// How the hardware is used.
                #[serde(default)]
                pub(crate) compute: ComputeConfig,
                /// The family's own section.
                pub(crate) $section: $ty,
                $($(
                    #[doc = concat!("The `[", stringify!($extra), "]` section.")]
                    #[serde(default)]
                    pub(crate) $extra: $extra_ty,
                )+)?
            }
        )*

        /// A configuration of any family. Read once per command, so the size difference
        /// between families does not matter.
        #[allow(clippy::large_enum_variant)]
        #[derive(Debug, Clone, PartialEq, Serialize)]
        #[serde(untagged)]
        pub(crate) enum AnyConfig {
            $(
                #[doc = concat!("A `", stringify!($variant), "` configuration.")]
                $variant($name),
            )*
        }

        impl AnyConfig {
            fn deserialize_as(workload: Workload, doc: &Document<'_>) -> Result<Self, ConfigError> {
                match workload {
                    $( Workload::$variant => doc.deserialize::<$name>().map(AnyConfig::$variant), )*
                }
            }

            /// The family this configures.
            pub(crate) fn workload(&self) -> Workload {
                match self {
                    $( AnyConfig::$variant(c) => c.workload, )*
                }
            }

            /// The `[compute]` section.
            pub(crate) fn compute(&self) -> &ComputeConfig {
                match self {
                    $( AnyConfig::$variant(c) => &c.compute, )*
                }
            }

            /// The `output_dir` key.
            pub(crate) fn output_dir(&self) -> &std::path::Path {
                match self {
                    $( AnyConfig::$variant(c) => &c.output_dir, )*
                }
            }
        }
    };
}

workload_configs! {
    Classifier: ClassifierConfig { model: ClassifierModel; data: DataSection, train: TrainSection },
    Particles: ParticlesConfig { model: ParticlesModel; sim: SimSection, train: TrainSection },
    Evolve: EvolveConfig { search: EvolveSearch; job: EvolveJob, genes: std::collections::BTreeMap<String, GeneConfig>, fitness: FitnessConfig, farm: FarmConfig, kinds: std::collections::BTreeMap<String, KindConfig> },
    Operator: OperatorConfig { rollout: RolloutSection; space: frugal_models::operator::OperatorSpace },
    Eqprop: EqpropConfig { model: EqpropModel; data: DataSection, train: TrainSection, eqprop: EqpropSection },
}

impl OperatorConfig {
    /// The trajectories `[rollout]`, `[space]` and `[compute]` describe: what the
    /// dataset's bytes depend on.
    pub(crate) fn trajectories(&self) -> frugal_models::operator::Trajectories {
        let r = &self.rollout;
        frugal_models::operator::Trajectories {
            space: self.space.clone(),
            seed: self.seed,
            operators: r.operators,
            realizations: r.realizations,
            height: r.height,
            width: r.width,
            fields: r.fields,
            modes: r.modes,
            steps: r.steps,
            record_every: r.record_every,
            storage: r.storage.dtype(),
            operators_per_shard: r.operators_per_shard,
            precision: self.compute.precision,
            batch: self.compute.batch_size,
        }
    }

    /// Where the dataset lives.
    pub(crate) fn data_dir(&self) -> PathBuf {
        self.rollout
            .data
            .clone()
            .unwrap_or_else(|| self.output_dir.join("trajectories"))
    }
}

/// Direct summation up to this many particles when `sim.method = "auto"`.
const DIRECT_UP_TO: u32 = 5000;

impl ParticlesConfig {
    /// The recording of simulations that `[sim]` and `[model]` describe: what the dataset's
    /// bytes depend on.
    pub(crate) fn recording(&self) -> frugal_sim::Recording {
        let (sim, theta) = (&self.sim, self.sim.theta);
        let method = match sim.method {
            SimMethod::Direct => frugal_sim::Method::Direct,
            SimMethod::Auto if self.model.particles <= DIRECT_UP_TO => frugal_sim::Method::Direct,
            SimMethod::BarnesHut | SimMethod::Auto => frugal_sim::Method::BarnesHut { theta },
        };
        frugal_sim::Recording {
            particles: self.model.particles as usize,
            simulations: u64::from(sim.simulations),
            steps: u64::from(sim.steps),
            record_every: u64::from(sim.record_every),
            dt: sim.dt,
            softening: sim.softening,
            initial: sim.initial.clone(),
            method,
            seed: self.seed,
        }
    }
}

/// A value that parses but makes no sense: the key path and what is wrong.
pub(crate) type Problem = (Vec<&'static str>, String);

impl AnyConfig {
    /// Reads the `workload` key, checks the document against that family's schema,
    /// then checks values against each other.
    pub(crate) fn from_document(doc: &Document<'_>) -> Result<Self, ConfigError> {
        let names = Workload::ALL.map(|w| w.name()).join(", ");
        let Some(value) = doc.get(&["workload"]) else {
            return Err(doc.error_at_key(
                &[],
                format!("missing key `workload`: name the family this file configures ({names})"),
            ));
        };
        let workload = value
            .get_ref()
            .as_str()
            .ok_or_else(|| format!("`workload` must be a string, one of {names}"))
            .and_then(|s| s.parse::<Workload>())
            .map_err(|msg| doc.error_at_key(&["workload"], msg))?;
        let config = Self::deserialize_as(workload, doc)?;
        if let Some((path, message)) = config.problems().into_iter().next() {
            let key = path.join(".");
            return Err(doc.error_at_key(&path, format!("`{key}`: {message}")));
        }
        Ok(config)
    }

    fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut check = |ok: bool, path: &[&'static str], msg: &str| {
            if !ok {
                out.push((path.to_vec(), msg.to_owned()));
            }
        };
        let c = self.compute();
        check(
            c.batch_size >= 1,
            &["compute", "batch_size"],
            "must be at least 1",
        );
        check(
            c.grad_accum >= 1,
            &["compute", "grad_accum"],
            "must be at least 1",
        );
        check(
            c.checkpoint_segments.is_none_or(|s| s >= 1),
            &["compute", "checkpoint_segments"],
            "must be at least 1 (leave it out for the square root of the block count)",
        );
        match self {
            AnyConfig::Eqprop(c) => {
                let m = &c.model;
                for (key, v) in [
                    ("d_model", m.d_model),
                    ("heads", m.heads),
                    ("memories", m.memories),
                    ("patch", m.patch),
                ] {
                    check(v >= 1, &["model", key], "must be at least 1");
                }
                check(
                    m.d_head.is_none_or(|d| d >= 1),
                    &["model", "d_head"],
                    "must be at least 1 (leave it out for d_model / heads)",
                );
                check(m.classes >= 2, &["model", "classes"], "must be at least 2");
                let e = &c.eqprop;
                check(
                    e.beta > 0.0 && e.beta.is_finite(),
                    &["eqprop", "beta"],
                    "must be a positive number",
                );
                check(
                    e.damping > 0.0 && e.damping <= 1.0,
                    &["eqprop", "damping"],
                    "must be in (0, 1]",
                );
                check(
                    e.tol > 0.0 && e.tol.is_finite(),
                    &["eqprop", "tol"],
                    "must be a positive number",
                );
                check(
                    e.max_iters >= 1,
                    &["eqprop", "max_iters"],
                    "must be at least 1",
                );
                check(
                    e.lambda > 0.0 && e.lambda.is_finite(),
                    &["eqprop", "lambda"],
                    "must be a positive number",
                );
                check(
                    c.train.lr > 0.0 && c.train.lr.is_finite(),
                    &["train", "lr"],
                    "must be a positive number",
                );
            }
            AnyConfig::Classifier(c) => {
                check(
                    !c.model.hidden.is_empty(),
                    &["model", "hidden"],
                    "needs at least one layer",
                );
                check(
                    c.model.hidden.iter().all(|&h| h > 0),
                    &["model", "hidden"],
                    "widths must be positive",
                );
                check(
                    (0.0..1.0).contains(&c.model.dropout),
                    &["model", "dropout"],
                    "must be in [0, 1)",
                );
                check(
                    c.model.classes >= 2,
                    &["model", "classes"],
                    "must be at least 2",
                );
                check(
                    c.train.lr > 0.0 && c.train.lr.is_finite(),
                    &["train", "lr"],
                    "must be a positive number",
                );
                check(
                    (0.0..=1.0).contains(&c.train.final_lr_fraction),
                    &["train", "final_lr_fraction"],
                    "must be in [0, 1]",
                );
                check(
                    c.train.epochs >= 1 && c.train.steps.is_none_or(|s| s >= 1),
                    &["train", "epochs"],
                    "`train.epochs` and `train.steps` must be at least 1",
                );
                let store = c.data.source == DataSource::Store;
                check(
                    !store || c.data.train.is_some(),
                    &["data", "train"],
                    "`data.source = \"store\"` needs `data.train` (a dataset directory)",
                );
                let unset = DataSection::default();
                check(
                    c.data.source == DataSource::Synthetic
                        || (c.data.samples == unset.samples
                            && c.data.test_samples == unset.test_samples
                            && c.data.features == unset.features
                            && c.data.teacher_hidden == unset.teacher_hidden),
                    &["data", "source"],
                    "`samples`, `test_samples`, `features` and `teacher_hidden` only apply to `source = \"synthetic\"`",
                );
                check(
                    c.data.samples >= 1 && c.data.test_samples >= 1 && c.data.features >= 1,
                    &["data", "samples"],
                    "`samples`, `test_samples` and `features` must be at least 1",
                );
            }
            AnyConfig::Particles(c) => {
                let m = &c.model;
                check(
                    m.particles >= 2,
                    &["model", "particles"],
                    "must be at least 2",
                );
                check(
                    m.neighbours >= 1 && m.neighbours < m.particles,
                    &["model", "neighbours"],
                    "must be at least 1 and fewer than `model.particles`",
                );
                check(
                    m.hidden >= 1 && m.layers >= 1,
                    &["model", "layers"],
                    "hidden width and layers must be positive",
                );
                // The recording's own settings are checked where they are defined.
                if let Err(frugal_sim::RecordError::OutOfRange {
                    field, expected, ..
                }) = c.recording().validate(usize::MAX)
                {
                    let section = if field == "particles" { "model" } else { "sim" };
                    check(false, &[section, field], &format!("must be {expected}"));
                }
                let sim = &c.sim;
                check(
                    sim.steps >= 2,
                    &["sim", "steps"],
                    "must be at least 2 (a state and the next)",
                );
                check(
                    sim.theta > 0.0 && sim.theta <= 1.0,
                    &["sim", "theta"],
                    "must be in (0, 1]",
                );
                check(
                    sim.held_out >= 1 && sim.held_out < sim.simulations,
                    &["sim", "held_out"],
                    "must be at least 1 and fewer than `sim.simulations`",
                );
                check(
                    (0.0..1.0).contains(&m.noise),
                    &["model", "noise"],
                    "must be in [0, 1)",
                );
                check(
                    m.particles == 2 || !sim.initial.contains(&frugal_sim::Initial::TwoBody),
                    &["sim", "initial"],
                    "`two_body` needs `model.particles = 2`",
                );
            }
            AnyConfig::Operator(c) => {
                if let Err(e) = c.trajectories().validate() {
                    let section = match e.field {
                        "batch" => "compute",
                        "layers" | "channels" | "kernel" | "norm" | "activation" | "residual"
                        | "dt" => "space",
                        _ => "rollout",
                    };
                    let key = if e.field == "batch" {
                        "batch_size"
                    } else {
                        e.field
                    };
                    check(
                        false,
                        &[section, key],
                        &format!("is {}; must be {}", e.value, e.expected),
                    );
                }
            }
            AnyConfig::Evolve(c) => {
                check(
                    c.search.population >= 2,
                    &["search", "population"],
                    "must be at least 2",
                );
                check(
                    c.search.generations >= 1,
                    &["search", "generations"],
                    "must be at least 1",
                );
            }
        }
        out
    }
}
