//! Randomly drawn neural operators (the seed-002 workload): each operator's architecture is
//! drawn from a parameter space, reproducibly from (space, seed, operator index) alone, and
//! its initial fields are smooth random fields drawn per realization.
//!
//! Everything here is drawn on the host with frugal-rand, never with a device's random
//! generator, so operator *i* is the same on every backend and machine.
//!
//! ```
//! use frugal_models::operator::{OperatorSpace, smooth_field};
//! let space = OperatorSpace::default();
//! space.validate().unwrap();
//! let a = space.draw(7, 42);
//! assert_eq!(a, space.draw(7, 42));
//! let field = smooth_field(16, 16, 3, 4, 7, 42, 0);
//! assert_eq!(field.len(), 3 * 16 * 16);
//! ```

use burn::tensor::activation::{gelu, relu, tanh};
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Tensor, TensorData};
use frugal_rand::{SplitMix64, mix64};
use frugal_train::Precision;
use serde::{Deserialize, Serialize};

/// Normalisation after each hidden convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Norm {
    /// Per-sample, per-channel normalisation over the field (instance norm).
    Instance,
    /// None.
    None,
}

/// Activation after each hidden layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// Gaussian error linear unit.
    Gelu,
    /// Hyperbolic tangent.
    Tanh,
    /// Rectified linear unit.
    Relu,
}

/// The space operators are drawn from. Ranges are inclusive `[low, high]`; lists are the
/// choices drawn among uniformly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OperatorSpace {
    /// Convolution layers.
    pub layers: [u32; 2],
    /// Channels of the hidden layers.
    pub channels: [u32; 2],
    /// Kernel sizes (odd).
    pub kernel: Vec<u32>,
    /// Normalisations.
    pub norm: Vec<Norm>,
    /// Activations.
    pub activation: Vec<Activation>,
    /// Whether the operator adds its input back (a residual update).
    pub residual: Vec<bool>,
    /// Time-step scale, drawn log-uniformly: `state + dt·op(state)`.
    pub dt: [f64; 2],
}

impl Default for OperatorSpace {
    /// The seed's operators: 4 layers, up to 64 channels, 3×3 kernels, instance norm, GELU.
    fn default() -> Self {
        Self {
            layers: [4, 4],
            channels: [16, 64],
            kernel: vec![3],
            norm: vec![Norm::Instance],
            activation: vec![Activation::Gelu],
            residual: vec![true],
            dt: [0.01, 0.1],
        }
    }
}

/// What is wrong with an [`OperatorSpace`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("operator space: `{field}` = {value}: {expected}")]
pub struct SpaceError {
    /// The field.
    pub field: &'static str,
    /// Its value.
    pub value: String,
    /// What it must be.
    pub expected: &'static str,
}

/// One operator's architecture, drawn from an [`OperatorSpace`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Architecture {
    /// Convolution layers (at least 1; the last maps back to the field's channels).
    pub layers: u32,
    /// Channels of the hidden layers.
    pub channels: u32,
    /// Kernel size (odd).
    pub kernel: u32,
    /// Normalisation.
    pub norm: Norm,
    /// Activation.
    pub activation: Activation,
    /// Whether the update is residual.
    pub residual: bool,
    /// Time-step scale.
    pub dt: f64,
    /// The seed its weights are drawn from.
    pub weight_seed: u64,
}

impl OperatorSpace {
    /// Checks ranges and choices.
    pub fn validate(&self) -> Result<(), SpaceError> {
        let bad = |field, value: String, expected| {
            Err(SpaceError {
                field,
                value,
                expected,
            })
        };
        let range = |r: [u32; 2]| format!("[{}, {}]", r[0], r[1]);
        if self.layers[0] == 0 || self.layers[0] > self.layers[1] || self.layers[1] > 64 {
            return bad("layers", range(self.layers), "1 ≤ low ≤ high ≤ 64");
        }
        if self.channels[0] == 0 || self.channels[0] > self.channels[1] || self.channels[1] > 4096 {
            return bad("channels", range(self.channels), "1 ≤ low ≤ high ≤ 4096");
        }
        if self.kernel.is_empty() || self.kernel.iter().any(|&k| k % 2 == 0 || k > 15) {
            return bad(
                "kernel",
                format!("{:?}", self.kernel),
                "a non-empty list of odd sizes up to 15",
            );
        }
        if self.norm.is_empty() {
            return bad(
                "norm",
                "[]".into(),
                "at least one of \"instance\", \"none\"",
            );
        }
        if self.activation.is_empty() {
            return bad(
                "activation",
                "[]".into(),
                "at least one of \"gelu\", \"tanh\", \"relu\"",
            );
        }
        if self.residual.is_empty() {
            return bad("residual", "[]".into(), "at least one of true, false");
        }
        let [lo, hi] = self.dt;
        if !(lo.is_finite() && hi.is_finite() && lo > 0.0 && lo <= hi) {
            return bad("dt", format!("[{lo}, {hi}]"), "0 < low ≤ high, finite");
        }
        Ok(())
    }

    /// Operator `index` of the run seeded `seed`: a pure function of the space, the seed
    /// and the index.
    pub fn draw(&self, seed: u64, index: u64) -> Architecture {
        let mut rng = SplitMix64::new(mix64(seed ^ mix64(index.wrapping_add(1))));
        let mut within = |r: [u32; 2]| r[0] + rng.below(u64::from(r[1] - r[0]) + 1) as u32;
        let layers = within(self.layers);
        let channels = within(self.channels);
        let mut pick = |n: usize| rng.below(n as u64) as usize;
        let kernel = self.kernel[pick(self.kernel.len())];
        let norm = self.norm[pick(self.norm.len())];
        let activation = self.activation[pick(self.activation.len())];
        let residual = self.residual[pick(self.residual.len())];
        let [lo, hi] = self.dt;
        let dt = (lo.ln() + rng.uniform() * (hi.ln() - lo.ln())).exp();
        Architecture {
            layers,
            channels,
            kernel,
            norm,
            activation,
            residual,
            dt,
            weight_seed: rng.next_u64(),
        }
    }
}

/// A standard normal draw (Box–Muller), from two uniforms.
fn normal(rng: &mut SplitMix64) -> f64 {
    let u = 1.0 - rng.uniform(); // (0, 1]: the logarithm stays finite
    let v = rng.uniform();
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

/// A smooth, periodic random field of `channels × height × width` (channel-major), for
/// realization `realization` of operator `operator` of the run seeded `seed`: per channel,
/// the Fourier modes with wave numbers up to `modes` in each direction, amplitudes drawn
/// normal and damped as 1/(1 + |k|²), phases uniform; scaled to zero mean and unit RMS.
pub fn smooth_field(
    height: usize,
    width: usize,
    channels: usize,
    modes: u32,
    seed: u64,
    operator: u64,
    realization: u64,
) -> Vec<f32> {
    let mut rng = SplitMix64::new(mix64(
        seed ^ mix64(operator.wrapping_add(1) ^ mix64(realization.wrapping_add(0x5eed))),
    ));
    let m = modes as i64;
    let mut out = Vec::with_capacity(channels * height * width);
    let mut plane = vec![0f64; height * width];
    let mut columns = Vec::with_capacity(width);
    for _ in 0..channels {
        plane.iter_mut().for_each(|v| *v = 0.0);
        for ky in -m..=m {
            for kx in -m..=m {
                if kx == 0 && ky == 0 {
                    continue;
                }
                let amplitude = normal(&mut rng) / (1.0 + (kx * kx + ky * ky) as f64);
                let phase = rng.uniform() * std::f64::consts::TAU;
                // cos(ay + phase + ax) = cos(ay + phase)·cos(ax) − sin(ay + phase)·sin(ax):
                // h + w sines and cosines per mode instead of h·w.
                columns.clear();
                columns.extend((0..width).map(|x| {
                    (std::f64::consts::TAU * (kx * x as i64) as f64 / width as f64).sin_cos()
                }));
                for (y, row) in plane.chunks_exact_mut(width.max(1)).enumerate() {
                    let ay = std::f64::consts::TAU * (ky * y as i64) as f64 / height as f64;
                    let (sy, cy) = (ay + phase).sin_cos();
                    let (sy, cy) = (amplitude * sy, amplitude * cy);
                    for (v, &(sx, cx)) in row.iter_mut().zip(&columns) {
                        *v += cy * cx - sy * sx;
                    }
                }
            }
        }
        let n = plane.len().max(1) as f64;
        let mean = plane.iter().sum::<f64>() / n;
        let rms = (plane.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
        let scale = if rms > 0.0 { 1.0 / rms } else { 0.0 };
        out.extend(plane.iter().map(|v| ((v - mean) * scale) as f32));
    }
    out
}

/// An operator built on a device: its convolutions' weights drawn on the host from its
/// architecture's weight seed, so it is the same network on every backend.
#[derive(Debug, Clone)]
pub struct Operator {
    arch: Architecture,
    /// Per layer: weight `[out, in, k, k]` and bias `[out]`.
    layers: Vec<(Tensor<4>, Tensor<1>)>,
    /// On the CPU backend in f32, the same layers on the host: a whole step runs there
    /// (see [`periodic_conv_host`]).
    host_layers: Option<Vec<HostLayer>>,
}

/// A layer's weights as [`periodic_conv_host`] takes them.
#[derive(Debug, Clone)]
struct HostLayer {
    /// `[out][k·k][in]`.
    by_output: Vec<f32>,
    bias: Vec<f32>,
    inputs: usize,
    outputs: usize,
}

impl Operator {
    /// Builds `arch` for fields of `fields` channels: the first layer maps them to
    /// `arch.channels`, the hidden ones keep that width, the last maps back (one layer maps
    /// fields to fields). Weights are normal with variance 2 / fan-in (He), biases zero.
    pub fn build(arch: &Architecture, fields: usize, device: &Device) -> Self {
        let mut rng = SplitMix64::new(arch.weight_seed);
        let n = arch.layers.max(1) as usize;
        let (c, k) = (arch.channels as usize, arch.kernel as usize);
        let host = *device == Device::flex();
        let mut host_layers = Vec::new();
        let layers = (0..n)
            .map(|l| {
                let inputs = if l == 0 { fields } else { c };
                let outputs = if l + 1 == n { fields } else { c };
                let fan_in = (inputs * k * k) as f64;
                let sd = (2.0 / fan_in).sqrt();
                let w: Vec<f32> = (0..outputs * inputs * k * k)
                    .map(|_| (normal(&mut rng) * sd) as f32)
                    .collect();
                if host {
                    host_layers.push(HostLayer {
                        by_output: host_weights(&w, outputs, inputs, k),
                        bias: vec![0.0; outputs],
                        inputs,
                        outputs,
                    });
                }
                (
                    Tensor::<4>::from_data(TensorData::new(w, [outputs, inputs, k, k]), device),
                    Tensor::<1>::zeros([outputs], device),
                )
            })
            .collect();
        Self {
            arch: arch.clone(),
            layers,
            host_layers: host.then_some(host_layers),
        }
    }

    /// The architecture it was built from.
    pub fn architecture(&self) -> &Architecture {
        &self.arch
    }

    /// The same network computing in `precision` (its weights rounded to it).
    pub fn cast(self, precision: Precision) -> Self {
        if precision == Precision::F32 {
            return self;
        }
        let dtype = precision.dtype();
        Self {
            arch: self.arch,
            host_layers: None,
            layers: self
                .layers
                .into_iter()
                .map(|(w, b)| (w.cast(dtype), b.cast(dtype)))
                .collect(),
        }
    }

    /// Weights and biases in all.
    pub fn parameters(&self) -> usize {
        self.layers
            .iter()
            .map(|(w, b)| w.shape().num_elements() + b.shape().num_elements())
            .sum()
    }

    /// The operator applied to a batch of fields `[batch, channels, height, width]`, on a
    /// periodic domain: each convolution sees the field wrapped around its edges.
    pub fn apply(&self, mut x: Tensor<4>) -> Tensor<4> {
        let last = self.layers.len() - 1;
        for (l, (w, b)) in self.layers.iter().enumerate() {
            let pad = self.arch.kernel as usize / 2;
            let input = x.clone();
            x = conv2d(
                periodic_pad(x, pad),
                w.clone(),
                Some(b.clone()),
                ConvOptions::new([1, 1], [0, 0], [1, 1], 1),
            );
            if l < last {
                if self.arch.norm == Norm::Instance {
                    x = instance_norm(x);
                }
                x = match self.arch.activation {
                    Activation::Gelu => gelu(x),
                    Activation::Tanh => tanh(x),
                    Activation::Relu => relu(x),
                };
                // A residual network adds each hidden layer's input back where widths match.
                if self.arch.residual && l > 0 {
                    x = x + input;
                }
            }
        }
        x
    }

    /// One time step: `state + dt·op(state)`.
    pub fn step(&self, state: Tensor<4>) -> Tensor<4> {
        if let Some(layers) = &self.host_layers
            && state.dtype() == burn::tensor::DType::F32
        {
            return self.step_host(layers, state);
        }
        let update = self.apply(state.clone());
        state + update.mul_scalar(self.arch.dt)
    }

    /// [`Self::step`] on the host, for f32 fields on the CPU backend: the convolutions by
    /// [`periodic_conv_host`], each hidden layer's norm, activation and residual by
    /// [`norm_activate_slice`], the Euler update in place; one read of the state and one
    /// tensor made, instead of a dozen backend operations per layer.
    fn step_host(&self, layers: &[HostLayer], state: Tensor<4>) -> Tensor<4> {
        let device = state.device();
        let dims = state.dims();
        let [b, _, h, w] = dims;
        let mut values = state
            .into_data()
            .try_into_vec::<f32>()
            .expect("an f32 tensor reads back as f32");
        let k = self.arch.kernel as usize;
        let last = layers.len() - 1;
        let mut x: Option<Vec<f32>> = None;
        for (l, layer) in layers.iter().enumerate() {
            let input = x.as_deref().unwrap_or(&values);
            let mut y = periodic_conv_host(
                input,
                [b, layer.inputs, h, w],
                &layer.by_output,
                &layer.bias,
                layer.outputs,
                k,
            );
            if l < last {
                let residual = (self.arch.residual && l > 0).then_some(input);
                norm_activate_slice(
                    &mut y,
                    residual,
                    h * w,
                    self.arch.norm,
                    self.arch.activation,
                );
            }
            x = Some(y);
        }
        let update = x.expect("at least one layer");
        let dt = self.arch.dt as f32;
        for (v, u) in values.iter_mut().zip(&update) {
            *v += u * dt;
        }
        Tensor::from_data(TensorData::new(values, dims), &device)
    }
}

/// A sample whose field's RMS grows past this factor of its initial RMS has diverged.
pub const DIVERGED_GROWTH: f64 = 1e3;

impl Operator {
    /// Rolls a batch of initial fields `[batch, channels, height, width]` forward `steps`
    /// steps, handing `record` the step number, the batch's values (host, f32,
    /// sample-major) and the divergence so far at step 0, every `record_every` steps after
    /// and the last. Divergence is, per sample, the first recorded step at which a value
    /// was not finite or its RMS had grown [`DIVERGED_GROWTH`]-fold (`None`: bounded so
    /// far); the final one is returned.
    pub fn rollout<E>(
        &self,
        mut state: Tensor<4>,
        steps: u32,
        record_every: u32,
        mut record: impl FnMut(u32, &[f32], &[Option<u32>]) -> Result<(), E>,
    ) -> Result<Vec<Option<u32>>, E> {
        let batch = state.dims()[0];
        let mut initial: Vec<f64> = Vec::new();
        let mut diverged = vec![None; batch];
        let every = record_every.max(1);
        for t in 0..=steps {
            if t % every == 0 || t == steps {
                // Converted to f32 first, so reading it as f32 cannot fail.
                let values: Vec<f32> = state
                    .clone()
                    .into_data()
                    .convert::<f32>()
                    .try_into_vec::<f32>()
                    .expect("data converted to f32");
                let per = values.len() / batch.max(1);
                for (b, sample) in values.chunks(per.max(1)).enumerate() {
                    let rms = (sample.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>()
                        / per.max(1) as f64)
                        .sqrt();
                    if t == 0 {
                        initial.push(rms);
                    }
                    let bad = !rms.is_finite()
                        || sample.iter().any(|v| !v.is_finite())
                        || rms > DIVERGED_GROWTH * initial[b].max(f64::MIN_POSITIVE);
                    if bad && diverged[b].is_none() {
                        diverged[b] = Some(t);
                    }
                }
                record(t, &values, &diverged)?;
            }
            if t < steps {
                state = self.step(state);
            }
        }
        Ok(diverged)
    }
}

/// A trajectory dataset of operators drawn from a space: what `frugal operator generate`
/// records. Shard `s` holds operators `s·per_shard ..`, each rolled out from
/// `realizations` initial fields; one row per (operator, realization, recorded step), in
/// that order, so each realization's trajectory is a run of consecutive rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trajectories {
    /// Where operators come from.
    pub space: OperatorSpace,
    /// The run's seed: operator `i` is `space.draw(seed, i)`.
    pub seed: u64,
    /// Operators in all.
    pub operators: u64,
    /// Initial fields per operator.
    pub realizations: u32,
    /// Field height.
    pub height: u32,
    /// Field width.
    pub width: u32,
    /// Field channels.
    pub fields: u32,
    /// Fourier modes of the initial fields, per direction.
    pub modes: u32,
    /// Time steps of each rollout.
    pub steps: u32,
    /// Steps between recorded states (step 0 and the last are recorded too).
    pub record_every: u32,
    /// How recorded fields are stored: `F16` or `F32`.
    pub storage: frugal_store::DType,
    /// Operators per shard.
    pub operators_per_shard: u32,
    /// The number format the rollouts compute in (instance norm's statistics are always
    /// taken in f32, as PyTorch's autocast does).
    pub precision: Precision,
    /// Realizations rolled out together, as one batch.
    pub batch: u32,
}

/// One realization's rollout: its recorded states in the storage format, state after
/// state, and the recorded step at which it was first flagged diverged.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    /// `recorded × fields × height × width` values, little-endian.
    pub states: Vec<u8>,
    /// First flagged step; `None`: bounded throughout.
    pub diverged: Option<u32>,
}

/// A rollout that diverged: its operator and realization, and the first recorded step at
/// which it was flagged (see [`Operator::rollout`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diverged {
    /// Operator index.
    pub operator: u64,
    /// Realization.
    pub realization: u32,
    /// First flagged step.
    pub step: u32,
}

impl Trajectories {
    /// Checks the space and the sizes.
    pub fn validate(&self) -> Result<(), SpaceError> {
        self.space.validate()?;
        let bad = |field, value: String, expected| {
            Err(SpaceError {
                field,
                value,
                expected,
            })
        };
        for (field, v) in [
            ("realizations", u64::from(self.realizations)),
            ("height", u64::from(self.height)),
            ("width", u64::from(self.width)),
            ("fields", u64::from(self.fields)),
            ("record_every", u64::from(self.record_every)),
            ("operators_per_shard", u64::from(self.operators_per_shard)),
            ("operators", self.operators),
            ("batch", u64::from(self.batch)),
        ] {
            if v == 0 {
                return bad(field, "0".into(), "at least 1");
            }
        }
        if self.operators > u64::from(u32::MAX) {
            return bad(
                "operators",
                self.operators.to_string(),
                "at most 4,294,967,295 (rows store it as u32)",
            );
        }
        if !matches!(
            self.storage,
            frugal_store::DType::F16 | frugal_store::DType::F32
        ) {
            return bad("storage", self.storage.to_string(), "f16 or f32");
        }
        let kernel = self.space.kernel.iter().max().copied().unwrap_or(1);
        if self.height.min(self.width) < kernel / 2 {
            return bad(
                "height",
                format!("{}×{}", self.height, self.width),
                "at least half the largest kernel in each direction (the periodic wrap)",
            );
        }
        Ok(())
    }

    /// Shards in all.
    pub fn shards(&self) -> u64 {
        self.operators
            .div_ceil(u64::from(self.operators_per_shard.max(1)))
    }

    /// Recorded states per rollout.
    pub fn recorded(&self) -> u32 {
        let every = self.record_every.max(1);
        self.steps / every + 1 + u32::from(!self.steps.is_multiple_of(every))
    }

    /// Values in one field: channels × height × width.
    pub fn field_values(&self) -> usize {
        self.fields as usize * self.height as usize * self.width as usize
    }

    /// Bytes one realization's recorded trajectory takes, stored.
    pub fn trajectory_bytes(&self) -> u64 {
        u64::from(self.recorded()) * (self.field_values() * self.storage.size()) as u64
    }

    /// The dataset's columns.
    pub fn schema(&self) -> frugal_store::Schema {
        use frugal_store::{Column, DType};
        frugal_store::Schema {
            columns: vec![
                Column::new(
                    "field",
                    self.storage,
                    [
                        self.fields as usize,
                        self.height as usize,
                        self.width as usize,
                    ],
                ),
                Column::new("operator", DType::U32, []),
                Column::new("realization", DType::U32, []),
                Column::new("step", DType::U32, []),
                Column::new("diverged", DType::Bool, []),
            ],
        }
    }

    /// Operator `index`, built on `device` in the configured precision.
    pub fn operator(&self, index: u64, device: &Device) -> Operator {
        Operator::build(
            &self.space.draw(self.seed, index),
            self.fields as usize,
            device,
        )
        .cast(self.precision)
    }

    /// The initial fields of realizations `realizations` of operator `index`, as one batch
    /// `[realizations, fields, height, width]` on `device` in the configured precision.
    pub fn initial(
        &self,
        index: u64,
        realizations: std::ops::Range<u32>,
        device: &Device,
    ) -> Tensor<4> {
        let (h, w, c) = (
            self.height as usize,
            self.width as usize,
            self.fields as usize,
        );
        let n = realizations.len();
        let mut values = Vec::with_capacity(n * c * h * w);
        for k in realizations {
            values.extend(smooth_field(
                h,
                w,
                c,
                self.modes,
                self.seed,
                index,
                u64::from(k),
            ));
        }
        self.precision.cast(Tensor::<4>::from_data(
            TensorData::new(values, [n, c, h, w]),
            device,
        ))
    }

    /// Rolls out realizations `realizations` of operator `op` (built by [`Self::operator`]
    /// for `index`) together, keeping each one's recorded states in the storage format:
    /// per realization, [`Self::trajectory_bytes`] bytes, and the step at which it was first
    /// flagged diverged.
    pub fn roll(
        &self,
        op: &Operator,
        index: u64,
        realizations: std::ops::Range<u32>,
        device: &Device,
    ) -> Vec<Rollout> {
        let n = realizations.len();
        let per_sample = self.field_values();
        let mut out: Vec<Vec<u8>> = (0..n)
            .map(|_| Vec::with_capacity(self.trajectory_bytes() as usize))
            .collect();
        let x = self.initial(index, realizations, device);
        let flags = op
            .rollout(x, self.steps, self.record_every, |_, values, _| {
                for (sample, into) in values.chunks(per_sample).zip(&mut out) {
                    match self.storage {
                        frugal_store::DType::F16 => into.extend(
                            sample
                                .iter()
                                .flat_map(|&v| burn::tensor::f16::from_f32(v).to_le_bytes()),
                        ),
                        _ => into.extend(sample.iter().flat_map(|v| v.to_le_bytes())),
                    }
                }
                Ok::<(), std::convert::Infallible>(())
            })
            .unwrap_or_else(|never| match never {});
        out.into_iter()
            .zip(flags)
            .map(|(states, diverged)| Rollout { states, diverged })
            .collect()
    }

    /// Rolls out every realization of operator `index` on `device`, `batch` at a time:
    /// per realization, its recorded states in the storage format and its first diverged
    /// step.
    pub fn roll_operator(&self, index: u64, device: &Device) -> Vec<Rollout> {
        let op = self.operator(index, device);
        let mut out = Vec::with_capacity(self.realizations as usize);
        let mut first = 0;
        while first < self.realizations {
            let last = (first + self.batch.max(1)).min(self.realizations);
            out.extend(self.roll(&op, index, first..last, device));
            first = last;
        }
        out
    }

    /// Appends operator `index`'s rollouts (as [`Self::roll_operator`] returns them) to
    /// `buffer`: one row per realization and recorded step, realization by realization.
    pub fn push_operator(
        &self,
        index: u64,
        rollouts: &[Rollout],
        buffer: &mut frugal_store::ShardBuffer,
    ) -> frugal_store::Result<()> {
        let row = self.field_values() * self.storage.size();
        let every = self.record_every.max(1);
        let steps: Vec<u32> = (0..=self.steps)
            .filter(|t| t % every == 0 || *t == self.steps)
            .collect();
        for (k, r) in rollouts.iter().enumerate() {
            let flag = r.diverged;
            for (t, field) in steps.iter().zip(r.states.chunks(row)) {
                buffer.push_rows(
                    1,
                    &[
                        field,
                        &(index as u32).to_le_bytes(),
                        &(k as u32).to_le_bytes(),
                        &t.to_le_bytes(),
                        &[u8::from(flag.is_some_and(|f| f <= *t))],
                    ],
                )?;
            }
        }
        Ok(())
    }

    /// Rolls out the operators of shard `shard` on `device` into `buffer`, `batch`
    /// realizations at a time. Returns the rollouts that diverged.
    pub fn fill_shard(
        &self,
        shard: u64,
        device: &Device,
        buffer: &mut frugal_store::ShardBuffer,
    ) -> frugal_store::Result<Vec<Diverged>> {
        let per = u64::from(self.operators_per_shard.max(1));
        let mut diverged = Vec::new();
        for index in shard * per..((shard + 1) * per).min(self.operators) {
            let rollouts = self.roll_operator(index, device);
            for (k, r) in rollouts.iter().enumerate() {
                if let Some(step) = &r.diverged {
                    diverged.push(Diverged {
                        operator: index,
                        realization: k as u32,
                        step: *step,
                    });
                }
            }
            self.push_operator(index, &rollouts, buffer)?;
        }
        Ok(diverged)
    }

    /// The diverged rollouts of a finished dataset of these settings, read from each
    /// shard's small columns (operator, realization, step, diverged), never its fields.
    pub fn diverged_in(dataset: &frugal_store::Dataset) -> frugal_store::Result<Vec<Diverged>> {
        use std::os::unix::fs::FileExt;
        let manifest = dataset.manifest();
        let schema = &manifest.schema;
        let position = |name: &str| {
            schema
                .columns
                .iter()
                .position(|c| c.name == name)
                .ok_or_else(|| {
                    frugal_store::StoreError::Rows(format!(
                        "{}: no `{name}` column; not an operator trajectory dataset",
                        dataset.dir().display()
                    ))
                })
        };
        let columns = [
            position("operator")?,
            position("realization")?,
            position("step")?,
            position("diverged")?,
        ];
        let mut out: Vec<Diverged> = Vec::new();
        for entry in &manifest.shards {
            let path = dataset.dir().join(&entry.file);
            let (file, layout) = frugal_store::shard::open_shard(&path, schema, entry)?;
            let rows = layout.samples as usize;
            let read = |column: usize, width: usize| {
                let mut bytes = vec![0u8; rows * width];
                file.read_exact_at(&mut bytes, layout.column_offsets[column])
                    .map(|()| bytes)
                    .map_err(|cause| frugal_store::StoreError::Io {
                        path: path.clone(),
                        cause,
                    })
            };
            let u32s = |b: Vec<u8>| -> Vec<u32> {
                b.chunks_exact(4)
                    .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
                    .collect()
            };
            let operator = u32s(read(columns[0], 4)?);
            let realization = u32s(read(columns[1], 4)?);
            let step = u32s(read(columns[2], 4)?);
            let flag = read(columns[3], 1)?;
            for r in 0..rows {
                let seen = out.last().is_some_and(|d| {
                    d.operator == u64::from(operator[r]) && d.realization == realization[r]
                });
                if flag[r] != 0 && !seen {
                    out.push(Diverged {
                        operator: u64::from(operator[r]),
                        realization: realization[r],
                        step: step[r],
                    });
                }
            }
        }
        Ok(out)
    }
}

/// One timed rollout batch (see [`Trajectories::timed`]).
#[derive(Debug, Clone)]
pub struct Timed {
    /// Wall-clock seconds, from building the operator to the last recorded state on the host.
    pub seconds: f64,
    /// The most bytes the rollout held at once above what was held before it: heap bytes
    /// on the CPU (when the program counts its allocations), the device allocator's
    /// reservation on a GPU.
    pub peak_bytes: Option<u64>,
    /// Per realization, its recorded states in the storage format and the step at which it
    /// was first flagged diverged.
    pub trajectories: Vec<Rollout>,
}

/// What one rollout batch holds at its peak, item by item; the computed items are sizes of
/// the tensors and buffers the rollout makes, the workspace is what a measurement found
/// beyond them (convolution lowering, the backend's temporaries).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RolloutMemory {
    /// The state batch on the device and the initial fields drawn on the host.
    pub inputs: u64,
    /// Weights and biases.
    pub weights: u64,
    /// Per layer, its padded input and its output (and instance norm's f32 temporaries).
    pub activations: Vec<u64>,
    /// The recorded states kept per realization, and the host copy of a state read back.
    pub trajectories: u64,
    /// The measured transient beyond the largest layer's activations; `None` when
    /// nothing was measured.
    pub workspace: Option<u64>,
    /// The predicted peak of the whole rollout, from probes (see
    /// [`Trajectories::plan_memory`]); `None` when nothing was measured.
    pub predicted_peak: Option<u64>,
}

impl Trajectories {
    /// Rolls out realizations `0..batch` of operator `index` once on `device`, timed, with
    /// its peak memory. `batch` may exceed the configured realizations: a benchmark's batch
    /// is the number of fields rolled out together.
    pub fn timed(&self, index: u64, batch: u32, device: &Device) -> Timed {
        let mut peak = crate::operator::PeakWatch::start(device);
        let began = std::time::Instant::now();
        let op = self.operator(index, device);
        let trajectories = self.roll(&op, index, 0..batch, device);
        let seconds = began.elapsed().as_secs_f64();
        Timed {
            seconds,
            peak_bytes: peak.finish(),
            trajectories,
        }
    }

    /// The normalized RMS error of each recorded state of `other` against `reference`,
    /// two trajectories of one realization as [`Self::roll`] keeps them: ‖other − ref‖ /
    /// ‖ref‖ per recorded step (infinite where `other` is not finite).
    pub fn error_per_step(&self, reference: &[u8], other: &[u8]) -> Vec<f64> {
        let decode = |b: &[u8]| -> Vec<f64> {
            match self.storage {
                frugal_store::DType::F16 => b
                    .chunks_exact(2)
                    .map(|c| f64::from(burn::tensor::f16::from_le_bytes([c[0], c[1]]).to_f32()))
                    .collect(),
                _ => b
                    .chunks_exact(4)
                    .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                    .collect(),
            }
        };
        let row = self.field_values() * self.storage.size();
        reference
            .chunks(row)
            .zip(other.chunks(row))
            .map(|(a, b)| {
                let (a, b) = (decode(a), decode(b));
                let diff: f64 = a.iter().zip(&b).map(|(x, y)| (x - y).powi(2)).sum();
                let norm: f64 = a.iter().map(|x| x * x).sum();
                if diff.is_finite() {
                    (diff / norm.max(f64::MIN_POSITIVE)).sqrt()
                } else {
                    f64::INFINITY
                }
            })
            .collect()
    }

    /// The computed items of a rollout batch of `batch` fields through operator `arch`.
    pub fn memory(&self, arch: &Architecture, batch: u32) -> RolloutMemory {
        let (b, c, h, w) = (
            u64::from(batch),
            u64::from(self.fields),
            u64::from(self.height),
            u64::from(self.width),
        );
        let e = self.precision.bytes();
        let (ch, k) = (u64::from(arch.channels), u64::from(arch.kernel));
        let p = k / 2;
        let n = u64::from(arch.layers.max(1));
        let field = b * c * h * w;
        let weights = (0..n)
            .map(|l| {
                let i = if l == 0 { c } else { ch };
                let o = if l + 1 == n { c } else { ch };
                (o * i * k * k + o) * e
            })
            .sum();
        let activations = (0..n)
            .map(|l| {
                let i = if l == 0 { c } else { ch };
                let o = if l + 1 == n { c } else { ch };
                let padded = b * i * (h + 2 * p) * (w + 2 * p) * e;
                let out = b * o * h * w * e;
                let norm = if l + 1 < n && arch.norm == Norm::Instance {
                    2 * b * o * h * w * 4
                } else {
                    0
                };
                padded + out + norm
            })
            .collect();
        RolloutMemory {
            inputs: field * e + field * 4,
            weights,
            activations,
            trajectories: b * self.trajectory_bytes() + field * 4,
            workspace: None,
            predicted_peak: None,
        }
    }

    /// The memory of a rollout batch of `batch` fields through operator `index` on
    /// `device`, predicted from probe rollouts of [`PROBE_STEPS`] steps (batch 1, 2 and 3,
    /// every state recorded, after an untimed one): their measured peaks, less their recorded
    /// states, are extrapolated
    /// linearly in the batch, and the full rollout's recorded states added. The tensors a
    /// step makes are the same at every step, so a few steps show them all. Without a
    /// memory count (no counting allocator on the CPU) the prediction is `None`.
    pub fn plan_memory(&self, index: u64, batch: u32, device: &Device) -> RolloutMemory {
        let mut memory = self.memory(&self.space.draw(self.seed, index), batch);
        let probe = Trajectories {
            steps: PROBE_STEPS,
            record_every: 1,
            ..self.clone()
        };
        // First rollouts set up what a backend makes once (thread pools, caches, compiled
        // kernels, the matrix products' per-thread packing buffers, 2 MB each here): not the
        // rollout's. At batch 1 a small grid is one tile, run on the calling thread; wider
        // batches run on the pool's threads: both must have made their buffers.
        drop(probe.timed(index, 1, device));
        drop(probe.timed(index, 3, device));
        // A parallel backend's threads hold their scratch buffers at the same moment only
        // sometimes: the most of a few probes is what a long rollout will meet.
        let most = |batch: u32| {
            (0..PROBES)
                .map(|_| probe.timed(index, batch, device).peak_bytes)
                .try_fold(0, |m, p| p.map(|p| p.max(m)))
        };
        let (Some(one), Some(two), Some(three)) = (most(1), most(2), most(3)) else {
            return memory;
        };
        // Scratch that threads hold at once, when a probe met it, is a constant: it must
        // not pass for a cost per field. The smaller step is the cost per field; the
        // constant is what the largest probe needs beyond it.
        let b = u64::from(batch);
        let per_field = two.saturating_sub(one).min(three.saturating_sub(two));
        let fixed = [one, two, three]
            .iter()
            .zip(1..)
            .map(|(p, n)| p.saturating_sub(n * per_field))
            .max()
            .unwrap_or(0);
        let peak = (fixed + b * per_field).saturating_sub(b * probe.trajectory_bytes())
            + b * self.trajectory_bytes();
        let computed = memory.inputs
            + memory.weights
            + memory.activations.iter().max().copied().unwrap_or(0)
            + memory.trajectories;
        memory.workspace = Some(peak.saturating_sub(computed));
        memory.predicted_peak = Some(peak);
        memory
    }
}

/// Probe rollouts per batch size in [`Trajectories::plan_memory`].
const PROBES: usize = 3;

/// Steps of each probe rollout: every step makes the same tensors, but a parallel
/// backend's threads hold their scratch at the same moment only now and then (measured:
/// 2 threads at 32×32, 400 KB more in some 100-step rollouts than in 2-step probes), so
/// the probes take enough steps to meet it.
const PROBE_STEPS: u32 = 10;

/// Watches the most memory held from its start: heap bytes on the CPU, the allocator's
/// reservation on a GPU.
pub(crate) struct PeakWatch {
    device: Option<frugal_train::device::DevicePeak>,
    before: u64,
}

impl PeakWatch {
    pub(crate) fn start(device: &Device) -> Self {
        // Pages an earlier rollout left in the pool would hide this one's needs.
        device.memory_cleanup();
        match frugal_train::device::reserved_bytes(device) {
            Some(now) => Self {
                device: Some(frugal_train::device::DevicePeak::new(device)),
                before: now,
            },
            None => Self {
                device: None,
                before: frugal_train::memory::reset_heap_peak(),
            },
        }
    }

    /// The peak above the start; `None` when neither heap nor device is counted.
    pub(crate) fn finish(&mut self) -> Option<u64> {
        match &mut self.device {
            Some(d) => {
                d.sample();
                d.peak().map(|p| p.saturating_sub(self.before))
            }
            None => frugal_train::memory::counting()
                .then(|| frugal_train::memory::heap_peak().saturating_sub(self.before)),
        }
    }
}

/// Wraps `pad` rows and columns of each field around its edges, so that a convolution
/// without padding keeps the size and treats the domain as a torus.
fn periodic_pad(x: Tensor<4>, pad: usize) -> Tensor<4> {
    if pad == 0 {
        return x;
    }
    let [_, _, h, w] = x.dims();
    let rows = Tensor::cat(
        vec![
            x.clone().narrow(2, h - pad, pad),
            x.clone(),
            x.narrow(2, 0, pad),
        ],
        2,
    );
    Tensor::cat(
        vec![
            rows.clone().narrow(3, w - pad, pad),
            rows.clone(),
            rows.narrow(3, 0, pad),
        ],
        3,
    )
}

/// A hidden layer's instance norm, activation and residual on the host, in one pass over
/// each (sample, channel) plane of `plane` values, the planes in parallel; `residual` (the
/// layer's input, same shape) is added after the activation. The same arithmetic as the
/// tensor operations (statistics in f64 here, GELU's erf by [`erf`]), in one read and one
/// write of the activations instead of about ten, and on every core (the CPU backend's
/// elementwise operations run on one). Profiled at 32×32 with 20 channels on 2 cores, the
/// tensor operations' GELU (a scalar `erff` per element) and normalisation took over half
/// of a step.
fn norm_activate_slice(
    values: &mut [f32],
    residual: Option<&[f32]>,
    plane: usize,
    norm: Norm,
    activation: Activation,
) {
    use rayon::prelude::*;
    values
        .par_chunks_mut(plane.max(1))
        .enumerate()
        .for_each(|(i, p)| {
            let (shift, scale) = if norm == Norm::Instance {
                let (mean, var) = mean_variance(p);
                (mean as f32, (1.0 / (var + 1e-5).sqrt()) as f32)
            } else {
                (0.0, 1.0)
            };
            match activation {
                Activation::Gelu => gelu_plane(p, shift, scale),
                Activation::Tanh => p
                    .iter_mut()
                    .for_each(|v| *v = ((*v - shift) * scale).tanh()),
                Activation::Relu => p
                    .iter_mut()
                    .for_each(|v| *v = ((*v - shift) * scale).max(0.0)),
            }
            if let Some(r) = residual {
                let len = p.len();
                for (v, r) in p.iter_mut().zip(&r[i * len..(i + 1) * len]) {
                    *v += r;
                }
            }
        });
}

/// `v ← GELU((v − shift)·scale)` over a plane, in the widest vector instructions the CPU
/// has: 8 lanes with AVX2 where the CPU reports it, else the 4 of the baseline x86-64
/// target. Both run the same IEEE operations per value (no fused multiply-adds: Rust does
/// not contract them), so the values, and the datasets, do not depend on the CPU.
/// In a standalone loop over 31 planes of 128×128 the 8 lanes took 0.9 ns per value, the
/// 4 lanes 1.65; GELU is a tenth of an f32 step at 128×128 (perf) with 8 lanes.
fn gelu_plane(plane: &mut [f32], shift: f32, scale: f32) {
    #[inline(always)]
    fn each(plane: &mut [f32], shift: f32, scale: f32) {
        for v in plane {
            let y = (*v - shift) * scale;
            *v = 0.5 * y * (1.0 + erf(y * std::f32::consts::FRAC_1_SQRT_2));
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2")]
        fn wide(plane: &mut [f32], shift: f32, scale: f32) {
            each(plane, shift, scale);
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // Calling a function compiled for AVX2 is sound once the CPU has reported
            // AVX2, as it just has.
            #[allow(unsafe_code)]
            unsafe {
                wide(plane, shift, scale)
            };
            return;
        }
    }
    each(plane, shift, scale);
}

/// Mean and (population) variance of `values`, accumulated in f64 over eight interleaved
/// partial sums, which vectorise where one running sum cannot.
fn mean_variance(values: &[f32]) -> (f64, f64) {
    fn sum_by(values: &[f32], f: impl Fn(f32) -> f64) -> f64 {
        let mut lanes = [0f64; 8];
        let chunks = values.chunks_exact(8);
        let tail: f64 = chunks.remainder().iter().map(|&v| f(v)).sum();
        for chunk in chunks {
            for (l, &v) in lanes.iter_mut().zip(chunk) {
                *l += f(v);
            }
        }
        lanes.iter().sum::<f64>() + tail
    }
    let n = values.len().max(1) as f64;
    let mean = sum_by(values, f64::from) / n;
    let var = sum_by(values, |v| (f64::from(v) - mean).powi(2)) / n;
    (mean, var)
}

/// The error function in f32 arithmetic that compiles to vector instructions (no calls, no
/// branches): Abramowitz and Stegun's 7.1.26, `erf(z) = 1 − t·P(t)·e^(−z²)` with `t = 1 /
/// (1 + 0.3275911·z)` for z ≥ 0 and odd symmetry, absolute error 1.5e-7 in exact
/// arithmetic and below 6e-7 in f32 (checked against libm's `erff` in the tests; GELU adds
/// it to 1, so the absolute error is what counts), with `e^(−z²)` by [`exp_nonpositive`].
/// libm's scalar `erff` (and its `expf`) was a tenth of an f32 step at 32×32 (perf) once the
/// convolutions were fast.
#[inline(always)]
fn erf(x: f32) -> f32 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * z);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_8 + t * (-1.453_152 + t * 1.061_405_4))));
    (1.0 - poly * exp_nonpositive(-z * z)).copysign(x)
}

/// `e^x` for x ≤ 0 (below −87 it is flushed to `e^−87`, about 1.6e-38), relative error
/// about 2e-7: x = n·ln 2 + r with |r| ≤ ln 2 / 2, `e^r` by its degree-6 Taylor polynomial
/// and `2^n` built in the exponent bits. Integer-valued n comes from adding 1.5·2²³, whose
/// binade has a spacing of 1, so the sum's bits hold n: a float-to-int conversion (or
/// `floor`, a libm call on the baseline x86-64 target) kept the loop scalar, 14 cycles per
/// GELU at 128×128.
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0;
    // ln 2 split so that n·LN2_HI is exact for |n| < 2⁹.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let x = x.clamp(-87.0, 0.0);
    let t = x * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let e = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // n ∈ [−126, 0], so n + 127 is a normal float's biased exponent.
    let biased = t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127);
    e * f32::from_bits(biased << 23)
}

/// A layer's weights `[out][in][k·k]` reordered to `[out][k·k][in]`, the row order of
/// [`periodic_conv_host`]'s column tiles.
fn host_weights(w: &[f32], outputs: usize, inputs: usize, k: usize) -> Vec<f32> {
    let kk = k * k;
    let mut by_output = vec![0f32; w.len()];
    for o in 0..outputs {
        for i in 0..inputs {
            for j in 0..kk {
                by_output[(o * kk + j) * inputs + i] = w[(o * inputs + i) * kk + j];
            }
        }
    }
    by_output
}

/// Output values per tile of [`periodic_conv_host`]: a tile's column buffer (`k²·cin` rows
/// of this many values) stays in a core's L2 at the widths operators draw (≤ 64 channels,
/// 3×3: 576 × 256 × 4 B = 576 KiB), and a 32×32 sample is several tiles, so a batch of one
/// still runs on every core.
const CONV_TILE: usize = 256;

/// The output buffer of [`periodic_conv_host`], shared by the tiles that write disjoint
/// parts of it.
struct SharedOut(*mut f32);
// SAFETY: the pointer is only written through at offsets that one tile owns (see the
// SAFETY comments in `periodic_conv_host`), and the buffer outlives the parallel loop.
#[allow(unsafe_code)]
unsafe impl Sync for SharedOut {}

/// A convolution on a periodic domain for f32 fields on the host, `[batch, cin, h, w]` →
/// `[batch, cout, h, w]`, as one matrix product per tile of whole output rows: the tile
/// gathers, for each kernel offset `(dy, dx)` and input channel, its rows of the input
/// shifted by the offset and wrapped around the edges into a `k²·cin × rows·w` buffer, and
/// `weights (cout × k²·cin) · buffer` lands in the tile's rows of every output channel
/// (pre-set to the bias). Tiles run in parallel, each product on one core. `weights` are
/// `[cout][k·k][cin]` ([`host_weights`]).
///
/// Replaced, measured at 32×32 (20 channels, 2 cores, `frugal bench`, f32 batch 4): `k²`
/// products with the inner dimension `cin` over a whole padded copy of each sample, which
/// re-read and re-wrote the output per offset (1,054 → 1,352 steps/s with one product per
/// tile, still over a padded copy; → 1,763 gathering from the input directly, without the
/// copy and the pass that cropped the padded output).
// The matrix product goes through `gemm`'s raw-pointer interface, which has no safe
// counterpart, and the tiles write their rows of every output channel, which are not one
// contiguous slice, through a shared pointer.
#[allow(unsafe_code)]
fn periodic_conv_host(
    x: &[f32],
    [batch, cin, h, w]: [usize; 4],
    weights: &[f32],
    bias: &[f32],
    cout: usize,
    k: usize,
) -> Vec<f32> {
    use rayon::prelude::*;
    let p = k / 2;
    let depth = k * k * cin;
    assert_eq!(weights.len(), cout * depth, "weights are [cout][k·k][cin]");
    assert_eq!(x.len(), batch * cin * h * w, "input is [batch][cin][h][w]");
    let rows = (CONV_TILE / w).clamp(1, h);
    let tiles = h.div_ceil(rows);
    let mut out = vec![0f32; batch * cout * h * w];
    let shared = SharedOut(out.as_mut_ptr());
    let shared = &shared;
    (0..batch * tiles).into_par_iter().for_each_init(
        || vec![0f32; depth * rows * w],
        |columns, t| {
            let (b, y0) = (t / tiles, (t % tiles) * rows);
            let here = rows.min(h - y0);
            let n = here * w;
            let sample = &x[b * cin * h * w..(b + 1) * cin * h * w];
            for offset in 0..k * k {
                let (dy, dx) = (offset / k, offset % k);
                // Output column j reads input column (j + dx − p) mod w.
                let sx = (dx + w * p - p) % w;
                for c in 0..cin {
                    let plane = &sample[c * h * w..(c + 1) * h * w];
                    let dst = &mut columns[(offset * cin + c) * n..][..n];
                    for (r, row) in dst.chunks_exact_mut(w).enumerate() {
                        let sy = (y0 + r + dy + h * p - p) % h;
                        let src = &plane[sy * w..(sy + 1) * w];
                        row[..w - sx].copy_from_slice(&src[sx..]);
                        row[w - sx..].copy_from_slice(&src[..sx]);
                    }
                }
            }
            let base = b * cout * h * w + y0 * w;
            for (o, &bias) in bias.iter().enumerate() {
                // SAFETY: output channel o's rows y0..y0 + here of sample b are
                // `out[base + o·h·w ..][..n]`, inside `out` (base + o·h·w + n ≤
                // (b·cout + o + 1)·h·w), and written only by this tile: tiles differ in
                // (b, y0), so their row ranges in every channel plane are disjoint.
                let dst =
                    unsafe { std::slice::from_raw_parts_mut(shared.0.add(base + o * h * w), n) };
                dst.fill(bias);
            }
            // SAFETY: dst is `cout × n` with row stride h·w starting at `base` in `out`:
            // the same rows as above, this tile's alone. lhs is `cout × depth` with row
            // stride `depth` in `weights` (length `cout·depth`, asserted); rhs is `depth ×
            // n` with row stride n in `columns` (length `depth·rows·w` ≥ depth·n). `out`,
            // `weights` and `columns` are distinct allocations.
            unsafe {
                gemm::gemm(
                    cout,
                    n,
                    depth,
                    shared.0.add(base),
                    1,
                    (h * w) as isize,
                    true,
                    weights.as_ptr(),
                    1,
                    depth as isize,
                    columns.as_ptr(),
                    1,
                    n as isize,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        },
    );
    out
}

/// Per-sample, per-channel normalisation over the field, without learned scale.
/// In a reduced precision the statistics are taken in f32 and the result cast back, as
/// PyTorch's autocast does: a mean over a 128×128 field summed in f16 loses digits.
fn instance_norm(x: Tensor<4>) -> Tensor<4> {
    let dtype = x.dtype();
    let x = if dtype == burn::tensor::DType::F32 {
        x
    } else {
        x.cast(burn::tensor::FloatDType::F32)
    };
    let mean = x.clone().mean_dim(2).mean_dim(3);
    let centered = x - mean;
    let var = centered.clone().powi_scalar(2).mean_dim(2).mean_dim(3);
    let y = centered / var.add_scalar(1e-5).sqrt();
    match dtype {
        burn::tensor::DType::F16 => y.cast(burn::tensor::FloatDType::F16),
        burn::tensor::DType::BF16 => y.cast(burn::tensor::FloatDType::BF16),
        _ => y,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operators_are_reproducible_and_cover_the_space() {
        let space = OperatorSpace {
            layers: [2, 5],
            channels: [16, 64],
            kernel: vec![3, 5],
            norm: vec![Norm::Instance, Norm::None],
            activation: vec![Activation::Gelu, Activation::Tanh],
            residual: vec![true, false],
            dt: [0.01, 0.1],
        };
        space.validate().unwrap();
        let drawn: Vec<Architecture> = (0..400).map(|i| space.draw(3, i)).collect();
        assert_eq!(drawn[17], space.draw(3, 17));
        assert_ne!(
            drawn[17],
            space.draw(4, 17),
            "another seed, another operator"
        );
        for a in &drawn {
            assert!((2..=5).contains(&a.layers) && (16..=64).contains(&a.channels));
            assert!((0.01..=0.1).contains(&a.dt));
        }
        // Every bound and choice is reached.
        for (what, hit) in [
            ("layers 2", drawn.iter().any(|a| a.layers == 2)),
            ("layers 5", drawn.iter().any(|a| a.layers == 5)),
            ("channels 16", drawn.iter().any(|a| a.channels == 16)),
            ("channels 64", drawn.iter().any(|a| a.channels == 64)),
            ("kernel 5", drawn.iter().any(|a| a.kernel == 5)),
            ("no norm", drawn.iter().any(|a| a.norm == Norm::None)),
            (
                "tanh",
                drawn.iter().any(|a| a.activation == Activation::Tanh),
            ),
            ("not residual", drawn.iter().any(|a| !a.residual)),
        ] {
            assert!(hit, "{what} never drawn");
        }
        let seeds: std::collections::HashSet<u64> = drawn.iter().map(|a| a.weight_seed).collect();
        assert_eq!(seeds.len(), drawn.len(), "weight seeds collide");
    }

    #[test]
    fn bad_spaces_are_refused_with_the_field() {
        let base = OperatorSpace::default();
        for (space, field) in [
            (
                OperatorSpace {
                    layers: [0, 4],
                    ..base.clone()
                },
                "layers",
            ),
            (
                OperatorSpace {
                    channels: [64, 16],
                    ..base.clone()
                },
                "channels",
            ),
            (
                OperatorSpace {
                    kernel: vec![4],
                    ..base.clone()
                },
                "kernel",
            ),
            (
                OperatorSpace {
                    norm: vec![],
                    ..base.clone()
                },
                "norm",
            ),
            (
                OperatorSpace {
                    activation: vec![],
                    ..base.clone()
                },
                "activation",
            ),
            (
                OperatorSpace {
                    residual: vec![],
                    ..base.clone()
                },
                "residual",
            ),
            (
                OperatorSpace {
                    dt: [0.1, 0.01],
                    ..base.clone()
                },
                "dt",
            ),
            (
                OperatorSpace {
                    dt: [0.0, 0.1],
                    ..base.clone()
                },
                "dt",
            ),
        ] {
            assert_eq!(space.validate().unwrap_err().field, field);
        }
    }

    fn fields_tensor(h: usize, w: usize, device: &Device) -> (Vec<f32>, Tensor<4>) {
        let mut v = smooth_field(h, w, 3, 3, 9, 0, 0);
        v.extend(smooth_field(h, w, 3, 3, 9, 0, 1));
        let t = Tensor::<4>::from_data(TensorData::new(v.clone(), [2, 3, h, w]), device);
        (v, t)
    }

    fn values(t: Tensor<4>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    /// On a torus, shifting the input field shifts the output by the same amount: the
    /// edges are wrapped, not padded with zeros.
    #[test]
    fn operators_commute_with_periodic_shifts() {
        let device = Device::flex();
        let space = OperatorSpace {
            layers: [3, 3],
            channels: [8, 8],
            kernel: vec![5],
            norm: vec![Norm::Instance],
            activation: vec![Activation::Gelu],
            residual: vec![true],
            dt: [0.05, 0.05],
        };
        let op = Operator::build(&space.draw(1, 0), 3, &device);
        let (h, w) = (12, 10);
        let (raw, x) = fields_tensor(h, w, &device);
        let (dy, dx) = (5, 3);
        let mut shifted = vec![0f32; raw.len()];
        for p in 0..6 {
            for y in 0..h {
                for x in 0..w {
                    shifted[p * h * w + ((y + dy) % h) * w + (x + dx) % w] =
                        raw[p * h * w + y * w + x];
                }
            }
        }
        let xs = Tensor::<4>::from_data(TensorData::new(shifted, [2, 3, h, w]), &device);
        let out = values(op.step(x));
        let out_shifted = values(op.step(xs));
        assert_eq!(out.len(), 2 * 3 * h * w);
        let mut worst = 0f32;
        for p in 0..6 {
            for y in 0..h {
                for x in 0..w {
                    let a = out[p * h * w + y * w + x];
                    let b = out_shifted[p * h * w + ((y + dy) % h) * w + (x + dx) % w];
                    worst = worst.max((a - b).abs());
                }
            }
        }
        assert!(worst < 1e-4, "shift changed the output by {worst}");
        // A step moves the state, by a dt-sized amount.
        let moved: f32 = out
            .iter()
            .zip(&raw)
            .map(|(a, b)| (a - b).abs())
            .sum::<f32>()
            / raw.len() as f32;
        assert!(moved > 1e-4 && moved < 1.0, "mean change {moved}");
    }

    #[test]
    fn an_operator_is_the_same_network_however_often_it_is_built() {
        let device = Device::flex();
        let space = OperatorSpace::default();
        let arch = space.draw(5, 3);
        let (_, x) = fields_tensor(8, 8, &device);
        let a = values(Operator::build(&arch, 3, &device).apply(x.clone()));
        let b = values(Operator::build(&arch, 3, &device).apply(x.clone()));
        assert_eq!(a, b);
        let other = values(Operator::build(&space.draw(5, 4), 3, &device).apply(x));
        assert_ne!(a, other);
    }

    #[test]
    fn rollouts_record_every_few_steps_and_flag_divergence() {
        let device = Device::flex();
        let space = |dt: f64| OperatorSpace {
            layers: [2, 2],
            channels: [8, 8],
            norm: vec![Norm::None],
            activation: vec![Activation::Relu],
            residual: vec![false],
            dt: [dt, dt],
            ..OperatorSpace::default()
        };
        let (_, x) = fields_tensor(8, 8, &device);
        let mut steps = Vec::new();
        let calm = Operator::build(&space(0.01).draw(2, 0), 3, &device);
        let flags = calm
            .rollout(x.clone(), 10, 4, |t, v: &[f32], _: &[Option<u32>]| {
                assert_eq!(v.len(), 2 * 3 * 8 * 8);
                steps.push(t);
                Ok::<(), ()>(())
            })
            .unwrap();
        assert_eq!(steps, [0, 4, 8, 10], "every 4th step and the last");
        assert_eq!(flags, [None, None]);
        // A step a thousand times too long blows up, and is flagged, not hidden.
        let wild = Operator::build(&space(1e3).draw(2, 0), 3, &device);
        let flags = wild.rollout(x, 10, 1, |_, _, _| Ok::<(), ()>(())).unwrap();
        assert!(
            flags.iter().all(|f| matches!(f, Some(t) if *t > 0)),
            "{flags:?}"
        );
    }

    fn trajectories(dt: f64) -> Trajectories {
        Trajectories {
            space: OperatorSpace {
                layers: [2, 3],
                channels: [4, 8],
                dt: [dt, dt],
                ..OperatorSpace::default()
            },
            seed: 11,
            operators: 5,
            realizations: 2,
            height: 8,
            width: 8,
            fields: 3,
            modes: 2,
            steps: 6,
            record_every: 4,
            storage: frugal_store::DType::F16,
            operators_per_shard: 2,
            precision: Precision::F32,
            batch: 2,
        }
    }

    #[test]
    fn a_shard_is_the_same_bytes_every_time() {
        let device = Device::flex();
        let t = trajectories(0.05);
        t.validate().unwrap();
        assert_eq!((t.shards(), t.recorded()), (3, 3));
        let dir = tempfile::tempdir().unwrap();
        let mut entries = Vec::new();
        for (run, shard) in [(0, 2), (1, 2), (2, 1)] {
            let mut buffer = frugal_store::ShardBuffer::new(t.schema());
            let diverged = t.fill_shard(shard, &device, &mut buffer).unwrap();
            assert!(diverged.is_empty(), "{diverged:?}");
            // The last shard holds the one operator left: 1 × 3 recorded × 2 realizations.
            let rows = if shard == 2 { 6 } else { 12 };
            assert_eq!(buffer.samples(), rows);
            entries.push(
                buffer
                    .write(dir.path(), &format!("s{run}.safetensors"))
                    .unwrap(),
            );
        }
        assert_eq!(entries[0].column_checksums, entries[1].column_checksums);
        assert_ne!(entries[0].column_checksums, entries[2].column_checksums);

        // Rolled out one realization at a time, the shard is the same bytes.
        let mut buffer = frugal_store::ShardBuffer::new(t.schema());
        Trajectories {
            batch: 1,
            ..t.clone()
        }
        .fill_shard(2, &device, &mut buffer)
        .unwrap();
        let one = buffer.write(dir.path(), "one.safetensors").unwrap();
        assert_eq!(one.column_checksums, entries[0].column_checksums);

        let wild = trajectories(1e3);
        let mut buffer = frugal_store::ShardBuffer::new(wild.schema());
        let diverged = wild.fill_shard(0, &device, &mut buffer).unwrap();
        let ops: Vec<(u64, u32)> = diverged
            .iter()
            .map(|d| (d.operator, d.realization))
            .collect();
        assert_eq!(ops, [(0, 0), (0, 1), (1, 0), (1, 1)]);
        assert!(diverged.iter().all(|d| d.step > 0), "{diverged:?}");
        let bad = Trajectories {
            storage: frugal_store::DType::I32,
            ..trajectories(0.05)
        };
        assert_eq!(bad.validate().unwrap_err().field, "storage");
    }

    /// bf16 and f16 rollouts follow the f32 one closely but not exactly, and their error
    /// is reported per recorded step; the memory items scale with the batch.
    #[test]
    fn reduced_precision_rollouts_stay_near_f32() {
        let device = Device::flex();
        let t = Trajectories {
            storage: frugal_store::DType::F32,
            ..trajectories(0.05)
        };
        let op = t.operator(1, &device);
        let reference = t.roll(&op, 1, 0..2, &device);
        for precision in [Precision::Bf16, Precision::F16] {
            let low = Trajectories {
                precision,
                ..t.clone()
            };
            let run = low.timed(1, 2, &device);
            assert_eq!(run.trajectories.len(), 2);
            for (a, b) in reference.iter().zip(&run.trajectories) {
                assert_eq!(b.diverged, None);
                let error = t.error_per_step(&a.states, &b.states);
                assert_eq!(error.len(), t.recorded() as usize);
                // The initial fields are the same numbers rounded to the precision.
                let bound = if precision == Precision::Bf16 {
                    0.05
                } else {
                    0.01
                };
                assert!(error.iter().all(|e| *e < bound), "{precision:?}: {error:?}");
                assert!(
                    error.iter().any(|e| *e > 0.0),
                    "{precision:?}: no rounding at all"
                );
            }
        }
        let arch = t.space.draw(t.seed, 1);
        let (one, four) = (t.memory(&arch, 1), t.memory(&arch, 4));
        assert_eq!(one.weights, four.weights);
        assert_eq!(4 * one.inputs, four.inputs);
        assert_eq!(4 * one.trajectories, four.trajectories);
        assert_eq!(one.activations.len(), arch.layers as usize);
    }

    /// The host convolution is the tensor one on the periodic domain, to rounding, and a
    /// host step is the tensor step.
    #[test]
    fn the_host_convolution_matches_the_tensor_one() {
        let device = Device::flex();
        // The last has several row tiles per sample, the last of them short.
        for (b, cin, cout, h, w, k) in [
            (2, 3, 5, 7, 6, 3),
            (1, 4, 3, 9, 9, 5),
            (3, 2, 2, 4, 5, 1),
            (2, 3, 4, 20, 40, 3),
        ] {
            let mut rng = SplitMix64::new(9);
            let mut draw =
                |n: usize| -> Vec<f32> { (0..n).map(|_| normal(&mut rng) as f32).collect() };
            let x = draw(b * cin * h * w);
            let wt = draw(cout * cin * k * k);
            let bias = draw(cout);
            let expected = values(conv2d(
                periodic_pad(
                    Tensor::<4>::from_data(TensorData::new(x.clone(), [b, cin, h, w]), &device),
                    k / 2,
                ),
                Tensor::<4>::from_data(TensorData::new(wt.clone(), [cout, cin, k, k]), &device),
                Some(Tensor::<1>::from_data(
                    TensorData::new(bias.clone(), [cout]),
                    &device,
                )),
                ConvOptions::new([1, 1], [0, 0], [1, 1], 1),
            ));
            let weights = host_weights(&wt, cout, cin, k);
            let got = periodic_conv_host(&x, [b, cin, h, w], &weights, &bias, cout, k);
            assert_eq!(got.len(), expected.len());
            for (g, e) in got.iter().zip(&expected) {
                assert!((g - e).abs() < 1e-4 * (1.0 + e.abs()), "{g} against {e}");
            }
        }
        let arch = OperatorSpace::default().draw(4, 1);
        let op = Operator::build(&arch, 3, &device);
        assert!(op.host_layers.is_some());
        let (_, x) = fields_tensor(12, 12, &device);
        let host = values(op.step(x.clone()));
        let tensor = values(x.clone() + op.apply(x).mul_scalar(arch.dt));
        for (a, b) in host.iter().zip(&tensor) {
            assert!((a - b).abs() < 1e-4 * (1.0 + b.abs()), "{a} against {b}");
        }
    }

    /// The host step's erf and exp against libm's, over the range activations reach.
    #[test]
    fn the_vector_erf_and_exp_are_accurate() {
        let (mut erf_err, mut exp_err) = (0f64, 0f64);
        for i in -200_000..=200_000 {
            let x = i as f32 * 5e-5;
            erf_err = erf_err.max(f64::from((erf(x) - libm::erff(x)).abs()));
            let y = -(i as f32).abs() * 4.3e-4;
            let e = f64::from(libm::expf(y));
            exp_err = exp_err.max((f64::from(exp_nonpositive(y)) - e).abs() / e);
        }
        assert!(erf_err < 6e-7, "erf off by {erf_err}");
        assert!(exp_err < 5e-7, "exp off by {exp_err}");
        assert_eq!(erf(-30.0), -1.0);
        assert_eq!(erf(0.0), 0.0);
        assert!(exp_nonpositive(-1e4) < 1e-37 && exp_nonpositive(-1e4) >= 0.0);
    }

    /// The plane GELU, whichever vector width it runs at, is the scalar formula bit for
    /// bit, so datasets do not depend on the CPU that rolled them out.
    #[test]
    fn the_plane_gelu_is_the_scalar_one_exactly() {
        let (shift, scale) = (0.3f32, 1.7f32);
        let mut plane: Vec<f32> = (0..1001).map(|i| (i as f32 - 500.0) * 0.013).collect();
        let expected: Vec<u32> = plane
            .iter()
            .map(|&v| {
                let y = std::hint::black_box((v - shift) * scale);
                (0.5 * y * (1.0 + erf(y * std::f32::consts::FRAC_1_SQRT_2))).to_bits()
            })
            .collect();
        gelu_plane(&mut plane, shift, scale);
        let got: Vec<u32> = plane.iter().map(|v| v.to_bits()).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn fields_are_smooth_periodic_and_seeded() {
        let (h, w, c) = (32, 24, 3);
        let f = smooth_field(h, w, c, 4, 1, 2, 0);
        assert_eq!(f, smooth_field(h, w, c, 4, 1, 2, 0));
        assert_ne!(f, smooth_field(h, w, c, 4, 1, 2, 1), "another realization");
        assert_ne!(f, smooth_field(h, w, c, 4, 1, 3, 0), "another operator");
        for plane in f.chunks(h * w) {
            let n = plane.len() as f64;
            let mean = plane.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
            let rms = (plane.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / n).sqrt();
            assert!(
                mean.abs() < 1e-5 && (rms - 1.0).abs() < 1e-4,
                "{mean} {rms}"
            );
            // Smooth: neighbours differ on average by far less than unit white noise's
            // neighbours do (about 1.13), and no more across the wrap-around seam than
            // inside the field (periodic).
            let step = |y: usize, x: usize, dy: usize, dx: usize| {
                f64::from((plane[y * w + x] - plane[((y + dy) % h) * w + (x + dx) % w]).abs())
            };
            let inside: f64 = (0..h)
                .flat_map(|y| (0..w - 1).map(move |x| (y, x)))
                .map(|(y, x)| step(y, x, 0, 1))
                .sum::<f64>()
                / (h * (w - 1)) as f64;
            let seam: f64 = (0..h).map(|y| step(y, w - 1, 0, 1)).sum::<f64>() / h as f64;
            assert!(inside < 0.6, "mean neighbour step {inside}");
            assert!(seam < 2.0 * inside, "seam {seam} against inside {inside}");
        }
    }
}
