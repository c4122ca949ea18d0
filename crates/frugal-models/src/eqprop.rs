//! A weight-tied transformer block iterated to a fixed point and trained by equilibrium
//! propagation (EqProp) instead of backpropagation through its iterations.
//!
//! **The energy.** EqProp's estimate is exact in the limit only if the block's dynamics
//! descend an energy. The block here is an energy-based transformer in the modern-Hopfield
//! form: with tokens `z_i ∈ ℝ^d` (a sequence of `n`), their bounded activations
//! `g_i = tanh(z_i)` and the embedded input `e_i`,
//!
//! ```text
//! E(z) = ½‖z‖² − ⟨z, e⟩
//!        − (1/λ) Σ_heads Σ_i log Σ_j exp(λ ⟨Q_h g_i, K_h g_j⟩)     (attention)
//!        − ½ Σ_i Σ_μ relu(⟨ξ_μ, g_i⟩)²                              (Hopfield memories)
//! ```
//!
//! The attention and memory terms are bounded (g is), so E is bounded below and its
//! minima are fixed points of `z = f(z) = e − (1 − g²) ⊙ ∇_g U(g)`, U the last two terms.
//! The iteration `z ← (1 − damping)·z + damping·f(z)` *is* gradient descent on E with step
//! `damping`, so it is the looped block `z_{k+1} = (1−α) z_k + α f(z_k, x)` and it descends
//! E. `∇_g U` is written out (softmax attention both ways, and the memories' `Ξᵀ relu(Ξ g)`),
//! so an iteration is ordinary tensor operations and needs no autodiff.
//!
//! **EqProp.** The readout is a linear map of all the tokens' activations, the loss `L`
//! its cross-entropy. The free phase finds `z*`, a minimum of E; the nudged phases find
//! minima `z_{±β}` of `F_{±β} = E ± β·L` starting from `z*`. The gradient estimate is
//! `(∂F_β/∂θ (z_β) − ∂F_{−β}/∂θ (z_{−β})) / 2β`, for every parameter θ at once (one
//! backward through the energy at two fixed states, no iteration history). Symmetric
//! nudging (Laborieux et al., 2021) cancels the estimate's first-order error in β, leaving
//! O(β²) where the energy is twice differentiable between the two nudged states; the
//! memories' `relu²` is not at an overlap crossing zero, so on a batch with overlaps near
//! zero the error falls more slowly over a middle range of β. Either way, as β → 0 it
//! converges to the gradient of `L(z*(θ))`, the loss at the free equilibrium — what implicit
//! differentiation at the fixed point gives, and what backpropagation through the
//! iterations gives once they have converged. Both are here as references:
//! [`LoopedTransformer::implicit_gradients`] solves `H λ = ∇_z L` with the energy's Hessian
//! at the equilibrium, [`LoopedTransformer::bptt_gradients`] unrolls the iterations, and
//! [`LoopedTransformer::gradcheck`] sweeps β against either.
//! Memory is the equilibria, O(1) in the number of iterations.
//!
//! ```
//! use burn::tensor::{Device, FloatDType, Int, Tensor, TensorData};
//! use frugal_models::eqprop::{Dynamics, LoopedTransformer, Shape};
//!
//! let device = Device::flex().autodiff();
//! let shape = Shape { tokens: 4, token_dim: 3, d_model: 8, heads: 2, d_head: 4, memories: 6, classes: 3 };
//! let model = LoopedTransformer::init(&shape, 1, FloatDType::F32, &device);
//! let x = frugal_models::eqprop::tokens_from(&[0.5; 2 * 4 * 3], 2, &shape, FloatDType::F32, &device);
//! let targets = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 2], [2]), &device);
//! let dynamics = Dynamics::default();
//! let eqprop = model.eqprop_gradients(&x, &targets, 0.05, &shape, &dynamics);
//! assert!(eqprop.phases.iter().all(|p| p.converged));
//! let bptt = model.bptt_gradients(&x, &targets, 200, &shape, &dynamics);
//! assert!(eqprop.gradients.compare(&bptt).cosine > 0.99);
//! ```

use burn::module::{Module, Param};
use burn::optim::GradientsParams;
use burn::tensor::activation::{log_softmax, relu, softmax};
use burn::tensor::{Device, Distribution, FloatDType, Gradients, Int, Tensor, TensorData};
use frugal_store::Batch;
use frugal_train::{
    EvalOutput, Precision, Result, Solves, StepInput, StepOutput, Task, TrainError,
};

use crate::classifier::Classifier;
use frugal_rand::SplitMix64;
use serde::{Deserialize, Serialize};

/// The block's sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    /// Tokens per sample (e.g. 16 patches of 7×7 for MNIST).
    pub tokens: usize,
    /// Values per input token (49 for a 7×7 patch).
    pub token_dim: usize,
    /// Width of the tokens the block iterates on.
    pub d_model: usize,
    /// Attention heads.
    pub heads: usize,
    /// Width of each head's queries and keys.
    pub d_head: usize,
    /// Hopfield memories (the feed-forward part's width).
    pub memories: usize,
    /// Classes the readout scores.
    pub classes: usize,
}

/// How an equilibrium is found.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Dynamics {
    /// Step of the damped iteration (gradient descent on the energy with this step).
    pub damping: f64,
    /// Stop once ‖z_{k+1} − z_k‖ / ‖z_k‖ falls below this.
    pub tol: f64,
    /// Stop after this many iterations, converged or not.
    pub max_iters: u32,
    /// The attention's inverse temperature λ.
    pub lambda: f64,
}

impl Default for Dynamics {
    fn default() -> Self {
        Self {
            damping: 0.5,
            tol: 1e-5,
            max_iters: 200,
            lambda: 1.0,
        }
    }
}

/// How a phase went.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct IterStats {
    /// Iterations run.
    pub iters: u32,
    /// The last relative change.
    pub residual: f64,
    /// Whether it fell below the tolerance.
    pub converged: bool,
}

/// A fixed point of the block for a batch.
#[derive(Debug, Clone)]
pub struct Equilibrium {
    /// The tokens, `[batch, tokens, d_model]`, without autodiff.
    pub z: Tensor<3>,
    /// How the iteration went.
    pub stats: IterStats,
}

/// The looped block: input embedding, attention and memories (weight-tied across
/// iterations) and the readout.
#[derive(Module, Debug)]
pub struct LoopedTransformer {
    /// `[token_dim, d_model]`.
    embed: Param<Tensor<2>>,
    /// `[tokens, d_model]`: a learned position per token, added to the embedding.
    position: Param<Tensor<2>>,
    /// `[d_model, heads·d_head]`.
    query: Param<Tensor<2>>,
    /// `[d_model, heads·d_head]`.
    key: Param<Tensor<2>>,
    /// `[d_model, memories]`: the memories ξ as columns.
    memories: Param<Tensor<2>>,
    /// `[tokens·d_model, classes]`.
    readout: Param<Tensor<2>>,
    /// `[classes]`.
    readout_bias: Param<Tensor<1>>,
}

/// The parameters as plain tensors: without autodiff for the phases, with it (requiring
/// gradients) for the energy's derivative.
struct Weights {
    embed: Tensor<2>,
    position: Tensor<2>,
    query: Tensor<2>,
    key: Tensor<2>,
    memories: Tensor<2>,
    readout: Tensor<2>,
    readout_bias: Tensor<1>,
    heads: usize,
    d_head: usize,
}

/// Input tokens `[batch, tokens, token_dim]` from host values, sample-major, in `dtype`.
pub fn tokens_from(
    values: &[f32],
    batch: usize,
    shape: &Shape,
    dtype: FloatDType,
    device: &Device,
) -> Tensor<3> {
    Tensor::<3>::from_data(
        TensorData::new(values.to_vec(), [batch, shape.tokens, shape.token_dim]),
        device,
    )
    .cast(dtype)
}

impl LoopedTransformer {
    /// A block of `shape`, its weights normal with variance 1 / fan-in drawn from `seed`,
    /// computing in `dtype` (f64 for gradient checks, where f32's rounding would be the
    /// floor of the comparison at small β).
    pub fn init(shape: &Shape, seed: u64, dtype: FloatDType, device: &Device) -> Self {
        let mut rng = SplitMix64::new(seed);
        let mut draw = |rows: usize, cols: usize, scale: f64| -> Param<Tensor<2>> {
            let values: Vec<f32> = (0..rows * cols)
                .map(|_| (normal(&mut rng) * scale) as f32)
                .collect();
            Param::from_tensor(
                Tensor::<2>::from_data(TensorData::new(values, [rows, cols]), device)
                    .cast(dtype)
                    .require_grad(),
            )
        };
        let d = shape.d_model;
        let hd = shape.heads * shape.d_head;
        Self {
            embed: draw(shape.token_dim, d, (1.0 / shape.token_dim as f64).sqrt()),
            position: draw(shape.tokens, d, 0.5),
            query: draw(d, hd, 0.5 / (d as f64).sqrt()),
            key: draw(d, hd, 0.5 / (d as f64).sqrt()),
            // The memories' pull has curvature up to ‖Ξ‖² ≈ σ²(√m + √d)²: above 1 it
            // outweighs the ½‖z‖² term, every token runs into tanh's saturation whatever
            // the input, and the equilibrium carries no information. Half of that bound.
            memories: draw(
                d,
                shape.memories,
                0.7 / ((shape.memories as f64).sqrt() + (d as f64).sqrt()),
            ),
            readout: draw(
                shape.tokens * d,
                shape.classes,
                (1.0 / (shape.tokens * d) as f64).sqrt(),
            ),
            readout_bias: Param::from_tensor(
                Tensor::<1>::zeros([shape.classes], device)
                    .cast(dtype)
                    .require_grad(),
            ),
        }
    }

    /// The parameters as tensors, without autodiff unless `autodiff`.
    fn weights(&self, autodiff: bool, heads: usize) -> Weights {
        fn val<const D: usize>(p: &Param<Tensor<D>>, autodiff: bool) -> Tensor<D> {
            if autodiff {
                p.val()
            } else {
                p.val().without_autodiff()
            }
        }
        let hd = self.query.val().dims()[1];
        Weights {
            embed: val(&self.embed, autodiff),
            position: val(&self.position, autodiff),
            query: val(&self.query, autodiff),
            key: val(&self.key, autodiff),
            memories: val(&self.memories, autodiff),
            readout: val(&self.readout, autodiff),
            readout_bias: val(&self.readout_bias, autodiff),
            heads,
            d_head: hd / heads.max(1),
        }
    }
}

impl LoopedTransformer {
    /// The embedded input `e = x·W_e + position`, `[batch, tokens, d_model]`.
    fn embedded(w: &Weights, x: &Tensor<3>) -> Tensor<3> {
        let [b, n, p] = x.dims();
        let d = w.embed.dims()[1];
        x.clone()
            .reshape([b * n, p])
            .matmul(w.embed.clone())
            .reshape([b, n, d])
            + w.position.clone().unsqueeze_dim(0)
    }

    /// Queries and keys per head, `[batch, heads, tokens, d_head]` each, and the attention
    /// scores `λ q·k`, `[batch, heads, tokens, tokens]`.
    fn attention(w: &Weights, g: &Tensor<3>, lambda: f64) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
        let [b, n, d] = g.dims();
        let flat = g.clone().reshape([b * n, d]);
        let split = |t: Tensor<2>| t.reshape([b, n, w.heads, w.d_head]).swap_dims(1, 2);
        let q = split(flat.clone().matmul(w.query.clone()));
        let k = split(flat.matmul(w.key.clone()));
        let scores = q
            .clone()
            .matmul(k.clone().swap_dims(2, 3))
            .mul_scalar(lambda);
        (q, k, scores)
    }

    /// `∇_g U`: the attention's and the memories' pull on the activations.
    fn pull(w: &Weights, g: &Tensor<3>, lambda: f64) -> Tensor<3> {
        let [b, n, d] = g.dims();
        let (q, k, scores) = Self::attention(w, g, lambda);
        let a = softmax(scores, 3);
        let merge = |t: Tensor<4>| t.swap_dims(1, 2).reshape([b * n, w.heads * w.d_head]);
        // ∂/∂g_i of −(1/λ) Σ_i lse_j: row i's softmax through its query, and every row's
        // softmax through the keys of the tokens it attends to.
        let through_queries = merge(a.clone().matmul(k)).matmul(w.query.clone().transpose());
        let through_keys = merge(a.swap_dims(2, 3).matmul(q)).matmul(w.key.clone().transpose());
        let flat = g.clone().reshape([b * n, d]);
        let hidden = relu(flat.matmul(w.memories.clone()));
        let memories = hidden.matmul(w.memories.clone().transpose());
        (through_queries + through_keys + memories)
            .neg()
            .reshape([b, n, d])
    }

    /// Logits `[batch, classes]`: a linear map of every token's activation.
    fn logits(w: &Weights, g: &Tensor<3>) -> Tensor<2> {
        let [b, n, d] = g.dims();
        g.clone().reshape([b, n * d]).matmul(w.readout.clone())
            + w.readout_bias.clone().unsqueeze_dim(0)
    }

    /// The summed cross-entropy of `logits` against `targets`, `[1]`.
    fn loss(logits: Tensor<2>, targets: &Tensor<1, Int>) -> Tensor<1> {
        let classes = logits.dims()[1];
        let one_hot = targets
            .clone()
            .one_hot(classes)
            .float()
            .cast(logits.dtype());
        (log_softmax(logits, 1) * one_hot).sum().neg()
    }

    /// `∇_z` of the summed loss, through the readout and tanh.
    fn loss_pull(w: &Weights, g: &Tensor<3>, targets: &Tensor<1, Int>) -> Tensor<3> {
        let [b, n, d] = g.dims();
        let classes = w.readout.dims()[1];
        let p = softmax(Self::logits(w, g), 1);
        let dlogits = p.clone() - targets.clone().one_hot(classes).float().cast(p.dtype());
        let dg = dlogits
            .matmul(w.readout.clone().transpose())
            .reshape([b, n, d]);
        dg * (g.clone().powi_scalar(2).neg() + 1.0)
    }

    /// `∇_z F` at `z`, F the energy plus `nudge·L` when a target is given.
    fn descent(
        w: &Weights,
        z: &Tensor<3>,
        e: &Tensor<3>,
        nudge: Option<(&Tensor<1, Int>, f64)>,
        lambda: f64,
    ) -> Tensor<3> {
        let g = z.clone().tanh();
        let slope = g.clone().powi_scalar(2).neg() + 1.0;
        let mut grad = z.clone() - e.clone() + slope * Self::pull(w, &g, lambda);
        if let Some((targets, beta)) = nudge {
            grad = grad + Self::loss_pull(w, &g, targets).mul_scalar(beta);
        }
        grad
    }

    /// The energy F (E, plus `nudge·L`) at fixed `z`, summed over the batch, `[1]`.
    fn energy(
        w: &Weights,
        z: &Tensor<3>,
        x: &Tensor<3>,
        nudge: Option<(&Tensor<1, Int>, f64)>,
        lambda: f64,
    ) -> Tensor<1> {
        let e = Self::embedded(w, x);
        let g = z.clone().tanh();
        let [b, n, d] = g.dims();
        let quadratic = z.clone().powi_scalar(2).sum().mul_scalar(0.5) - (z.clone() * e).sum();
        let (_, _, scores) = Self::attention(w, &g, lambda);
        let most = scores.clone().max_dim(3);
        let lse = (scores - most.clone()).exp().sum_dim(3).log() + most;
        let attention = lse.sum().mul_scalar(-1.0 / lambda);
        let hidden = relu(g.clone().reshape([b * n, d]).matmul(w.memories.clone()));
        let memories = hidden.powi_scalar(2).sum().mul_scalar(-0.5);
        let mut f = quadratic + attention + memories;
        if let Some((targets, beta)) = nudge {
            f = f + Self::loss(Self::logits(w, &g), targets).mul_scalar(beta);
        }
        f
    }
}

/// Gradients per parameter tensor, by name, as host values.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedGradients(pub Vec<(&'static str, Vec<f32>)>);

impl NamedGradients {
    /// Cosine similarity and relative error `‖a − b‖ / ‖b‖` of `self` against `reference`,
    /// overall and per tensor (in `self`'s order).
    pub fn compare(&self, reference: &Self) -> Comparison {
        fn stats(a: &[f32], b: &[f32]) -> (f64, f64, f64, f64) {
            let (mut dot, mut aa, mut bb, mut diff) = (0f64, 0f64, 0f64, 0f64);
            for (&x, &y) in a.iter().zip(b) {
                let (x, y) = (f64::from(x), f64::from(y));
                dot += x * y;
                aa += x * x;
                bb += y * y;
                diff += (x - y) * (x - y);
            }
            (dot, aa, bb, diff)
        }
        let finish = |(dot, aa, bb, diff): (f64, f64, f64, f64)| {
            let cosine = if aa > 0.0 && bb > 0.0 {
                dot / (aa.sqrt() * bb.sqrt())
            } else {
                0.0
            };
            let relative = if bb > 0.0 {
                (diff / bb).sqrt()
            } else {
                f64::INFINITY
            };
            (cosine, relative)
        };
        let mut total = (0.0, 0.0, 0.0, 0.0);
        let mut tensors = Vec::new();
        for ((name, a), (_, b)) in self.0.iter().zip(&reference.0) {
            let s = stats(a, b);
            total = (total.0 + s.0, total.1 + s.1, total.2 + s.2, total.3 + s.3);
            let (cosine, relative_error) = finish(s);
            tensors.push(TensorComparison {
                name,
                cosine,
                relative_error,
            });
        }
        let (cosine, relative_error) = finish(total);
        Comparison {
            cosine,
            relative_error,
            tensors,
        }
    }
}

/// One estimate against a reference.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    /// Cosine similarity over all parameters.
    pub cosine: f64,
    /// `‖estimate − reference‖ / ‖reference‖` over all parameters.
    pub relative_error: f64,
    /// The same per parameter tensor.
    pub tensors: Vec<TensorComparison>,
}

/// One parameter tensor's comparison.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TensorComparison {
    /// The parameter.
    pub name: &'static str,
    /// Cosine similarity.
    pub cosine: f64,
    /// Relative error.
    pub relative_error: f64,
}

/// What one EqProp estimate found.
#[derive(Debug, Clone)]
pub struct EqPropStep {
    /// Gradients of the batch's mean loss at the free equilibrium.
    pub gradients: NamedGradients,
    /// The batch's mean loss at the free equilibrium.
    pub loss: f64,
    /// The free phase, then the +β and −β phases.
    pub phases: [IterStats; 3],
}

impl LoopedTransformer {
    /// The parameters' gradients after a backward pass, by name, in a fixed order.
    fn named(&self, grads: &Gradients) -> NamedGradients {
        fn host<const D: usize>(p: &Param<Tensor<D>>, grads: &Gradients) -> Vec<f32> {
            p.val()
                .grad(grads)
                .and_then(|g| g.cast(FloatDType::F32).into_data().try_to_vec::<f32>().ok())
                .unwrap_or_else(|| vec![0.0; p.val().dims().iter().product()])
        }
        NamedGradients(vec![
            ("embed", host(&self.embed, grads)),
            ("position", host(&self.position, grads)),
            ("query", host(&self.query, grads)),
            ("key", host(&self.key, grads)),
            ("memories", host(&self.memories, grads)),
            ("readout", host(&self.readout, grads)),
            ("readout_bias", host(&self.readout_bias, grads)),
        ])
    }

    /// The equilibrium of a batch of input tokens `x` (`[batch, tokens, token_dim]`): of E,
    /// or of `E + β·L` with `nudge = Some((targets, β))`, iterating from `start` (default:
    /// the embedded input). Runs without autodiff: only the current state is held.
    pub fn equilibrium(
        &self,
        x: &Tensor<3>,
        nudge: Option<(&Tensor<1, Int>, f64)>,
        start: Option<&Tensor<3>>,
        shape: &Shape,
        dynamics: &Dynamics,
    ) -> Equilibrium {
        let w = self.weights(false, shape.heads);
        let x = x.clone().without_autodiff();
        // Labels on an autodiff device would make their one-hot floats tracked, and with
        // them every state after the first nudged iteration: a growing graph.
        let targets = nudge.map(|(t, beta)| (t.clone().without_autodiff(), beta));
        let nudge = targets.as_ref().map(|(t, beta)| (t, *beta));
        let e = Self::embedded(&w, &x);
        let mut z = start.map_or_else(|| e.clone(), |s| s.clone().without_autodiff());
        let mut stats = IterStats {
            iters: 0,
            residual: f64::INFINITY,
            converged: false,
        };
        while stats.iters < dynamics.max_iters {
            let step =
                Self::descent(&w, &z, &e, nudge, dynamics.lambda).mul_scalar(dynamics.damping);
            // ‖step‖ / ‖z‖ as one value: one read, one wait for the device, per iteration.
            let residual = (step.clone().powi_scalar(2).sum()
                / z.clone()
                    .powi_scalar(2)
                    .sum()
                    .clamp_min(f64::from(f32::MIN_POSITIVE)))
            .sqrt();
            z = z - step;
            stats.iters += 1;
            stats.residual = scalar(residual);
            if stats.residual < dynamics.tol {
                stats.converged = true;
                break;
            }
        }
        Equilibrium { z, stats }
    }

    /// The batch's mean loss at `z`.
    pub fn loss_at(&self, z: &Tensor<3>, targets: &Tensor<1, Int>, shape: &Shape) -> f64 {
        let w = self.weights(false, shape.heads);
        let batch = z.dims()[0].max(1) as f64;
        scalar(Self::loss(Self::logits(&w, &z.clone().tanh()), targets)) / batch
    }

    /// EqProp's estimate of the gradients of the batch's mean loss: the free phase, the
    /// ±β phases from its equilibrium, and one backward pass through
    /// `(F_β(z_β) − F_{−β}(z_{−β})) / 2β` with the states held fixed. The model must live on
    /// an autodiff device.
    pub fn eqprop_gradients(
        &self,
        x: &Tensor<3>,
        targets: &Tensor<1, Int>,
        beta: f64,
        shape: &Shape,
        dynamics: &Dynamics,
    ) -> EqPropStep {
        let free = self.equilibrium(x, None, None, shape, dynamics);
        let (grads, phases) = self.nudged_backward(&free, x, targets, beta, shape, dynamics);
        EqPropStep {
            gradients: self.named(&grads),
            loss: self.loss_at(&free.z, targets, shape),
            phases,
        }
    }

    /// [`Self::eqprop_gradients`] for the training loop: the gradients keyed by parameter,
    /// and the free equilibrium.
    pub fn eqprop_step(
        &self,
        x: &Tensor<3>,
        targets: &Tensor<1, Int>,
        beta: f64,
        shape: &Shape,
        dynamics: &Dynamics,
    ) -> (GradientsParams, Equilibrium, [IterStats; 3]) {
        let free = self.equilibrium(x, None, None, shape, dynamics);
        let (grads, phases) = self.nudged_backward(&free, x, targets, beta, shape, dynamics);
        (GradientsParams::from_grads(grads, self), free, phases)
    }

    /// The ±β phases from `free` and the backward pass through the nudged energies'
    /// difference; the phases' statistics, the free one's first.
    fn nudged_backward(
        &self,
        free: &Equilibrium,
        x: &Tensor<3>,
        targets: &Tensor<1, Int>,
        beta: f64,
        shape: &Shape,
        dynamics: &Dynamics,
    ) -> (Gradients, [IterStats; 3]) {
        let plus = self.equilibrium(x, Some((targets, beta)), Some(&free.z), shape, dynamics);
        let minus = self.equilibrium(x, Some((targets, -beta)), Some(&free.z), shape, dynamics);
        let batch = x.dims()[0].max(1) as f64;
        let w = self.weights(true, shape.heads);
        let x = x.clone().without_autodiff();
        let f_plus = Self::energy(&w, &plus.z, &x, Some((targets, beta)), dynamics.lambda);
        let f_minus = Self::energy(&w, &minus.z, &x, Some((targets, -beta)), dynamics.lambda);
        let grads = (f_plus - f_minus).div_scalar(2.0 * beta * batch).backward();
        let phases = [free.stats, plus.stats, minus.stats];
        (grads, phases)
    }

    /// The reference: backpropagation through `iters` iterations of the block from the
    /// embedded input, the whole history held by autodiff (memory grows with `iters`):
    /// [`Self::bptt_checkpointed_gradients`] with the whole unrolling as one segment.
    pub fn bptt_gradients(
        &self,
        x: &Tensor<3>,
        targets: &Tensor<1, Int>,
        iters: u32,
        shape: &Shape,
        dynamics: &Dynamics,
    ) -> NamedGradients {
        self.bptt_checkpointed_gradients(x, targets, iters, 1, shape, dynamics)
    }
}

/// What EqProp's estimate is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reference {
    /// Backpropagation through the free phase's iterations, unrolled from the embedded
    /// input (memory grows with the iterations).
    Bptt,
    /// Implicit differentiation at the free equilibrium: one linear solve with the
    /// energy's Hessian, no iteration history.
    Implicit,
}

impl Reference {
    /// The name a command line and the JSON use.
    pub fn name(self) -> &'static str {
        match self {
            Reference::Bptt => "bptt",
            Reference::Implicit => "implicit",
        }
    }

    /// What it is, in words.
    pub fn describe(self) -> &'static str {
        match self {
            Reference::Bptt => "backpropagation through the iterations",
            Reference::Implicit => "implicit differentiation",
        }
    }
}

/// One β of a gradient check.
#[derive(Debug, Clone, Serialize)]
pub struct SweepPoint {
    /// The nudging strength.
    pub beta: f64,
    /// Cosine similarity with the reference over all parameters.
    pub cosine: f64,
    /// `‖estimate − reference‖ / ‖reference‖` over all parameters.
    pub relative_error: f64,
    /// The same per parameter tensor.
    pub tensors: Vec<TensorComparison>,
    /// The free, +β and −β phases.
    pub phases: [IterStats; 3],
}

/// EqProp's estimate against a reference over a sweep of β, on one batch.
#[derive(Debug, Clone, Serialize)]
pub struct GradCheck {
    /// What the estimates were compared with.
    pub reference: Reference,
    /// How the reference's iterations went: the adjoint solve's (implicit) or the
    /// unrolled free phase's (BPTT).
    pub reference_iterations: IterStats,
    /// The batch's mean loss at the free equilibrium.
    pub loss: f64,
    /// One point per β, in the order asked.
    pub sweep: Vec<SweepPoint>,
}

impl LoopedTransformer {
    /// The reference gradients of the batch's mean loss at the free equilibrium by
    /// implicit differentiation: with `H` the energy's Hessian at `z*` and `λ` the solution
    /// of `H λ = ∇_z L`, `dL/dθ = ∂L/∂θ − λᵀ ∂(∇_z E)/∂θ`. `λ` is found by the same damped
    /// iteration as the free phase (`λ ← λ − α(Hλ − ∇_z L)`, whose matrix `I − αH` is the
    /// free phase's linearisation, so it converges where the free phase did), each `Hλ`
    /// one backward pass through `∇_z E`. Returns the gradients, the free phase's and the
    /// solve's statistics. The model must live on an autodiff device.
    pub fn implicit_gradients(
        &self,
        x: &Tensor<3>,
        targets: &Tensor<1, Int>,
        shape: &Shape,
        dynamics: &Dynamics,
    ) -> (NamedGradients, IterStats, IterStats) {
        let free = self.equilibrium(x, None, None, shape, dynamics);
        let (g, solve) = self.implicit_gradients_from(&free, x, targets, shape, dynamics);
        (g, free.stats, solve)
    }

    /// [`Self::implicit_gradients`] at a free equilibrium already found: the gradients and
    /// the solve's statistics (its residual is `‖Hλ − ∇_z L‖ / ‖∇_z L‖`).
    pub fn implicit_gradients_from(
        &self,
        free: &Equilibrium,
        x: &Tensor<3>,
        targets: &Tensor<1, Int>,
        shape: &Shape,
        dynamics: &Dynamics,
    ) -> (NamedGradients, IterStats) {
        let batch = x.dims()[0].max(1) as f64;
        let plain = self.weights(false, shape.heads);
        let x = x.clone().without_autodiff();
        let e = Self::embedded(&plain, &x);
        let z = free.z.clone();
        let plain_targets = targets.clone().without_autodiff();
        let rhs = Self::loss_pull(&plain, &z.clone().tanh(), &plain_targets).div_scalar(batch);
        let rhs_norm = scalar(rhs.clone().powi_scalar(2).sum())
            .sqrt()
            .max(f64::from(f32::MIN_POSITIVE));
        let hessian_times = |v: &Tensor<3>| -> Tensor<3> {
            let leaf = z.clone().autodiff().require_grad();
            let d = Self::descent(&plain, &leaf, &e, None, dynamics.lambda);
            let grads = (d * v.clone()).sum().backward();
            leaf.grad(&grads)
                .expect("the descent direction depends on z")
                .without_autodiff()
        };
        let mut lambda = rhs.clone();
        let mut stats = IterStats {
            iters: 0,
            residual: f64::INFINITY,
            converged: false,
        };
        while stats.iters < dynamics.max_iters {
            let r = hessian_times(&lambda) - rhs.clone();
            stats.residual = scalar(r.clone().powi_scalar(2).sum()).sqrt() / rhs_norm;
            if stats.residual < dynamics.tol {
                stats.converged = true;
                break;
            }
            lambda = lambda - r.mul_scalar(dynamics.damping);
            stats.iters += 1;
        }
        let w = self.weights(true, shape.heads);
        let e = Self::embedded(&w, &x);
        let direct = Self::loss(Self::logits(&w, &z.clone().tanh()), targets).div_scalar(batch);
        let through_z = (Self::descent(&w, &z, &e, None, dynamics.lambda) * lambda).sum();
        let grads = (direct - through_z).backward();
        (self.named(&grads), stats)
    }

    /// EqProp's estimate at each of `betas` against `reference`, on the batch `x`,
    /// `targets`: overall and per tensor. With [`Reference::Bptt`] the reference unrolls as
    /// many iterations as the free phase took, so it differentiates the same state.
    pub fn gradcheck(
        &self,
        x: &Tensor<3>,
        targets: &Tensor<1, Int>,
        betas: &[f64],
        reference: Reference,
        shape: &Shape,
        dynamics: &Dynamics,
    ) -> GradCheck {
        let free = self.equilibrium(x, None, None, shape, dynamics);
        let (truth, reference_iterations) = match reference {
            Reference::Implicit => self.implicit_gradients_from(&free, x, targets, shape, dynamics),
            Reference::Bptt => {
                // The same gradients as the plain unrolling, holding √iters states: an
                // unconverged free phase may have run thousands of iterations.
                let iters = free.stats.iters;
                let segments = f64::from(iters).sqrt().ceil() as u32;
                let g =
                    self.bptt_checkpointed_gradients(x, targets, iters, segments, shape, dynamics);
                (g, free.stats)
            }
        };
        let loss = self.loss_at(&free.z, targets, shape);
        let sweep = betas
            .iter()
            .map(|&beta| {
                let (grads, phases) =
                    self.nudged_backward(&free, x, targets, beta, shape, dynamics);
                let c = self.named(&grads).compare(&truth);
                SweepPoint {
                    beta,
                    cosine: c.cosine,
                    relative_error: c.relative_error,
                    tensors: c.tensors,
                    phases,
                }
            })
            .collect();
        GradCheck {
            reference,
            reference_iterations,
            loss,
            sweep,
        }
    }
}

/// How a training step's gradients are found, for the memory study.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// EqProp: three phases, the equilibria kept, no history.
    Eqprop,
    /// Backpropagation through every iteration, all of them held.
    Bptt,
    /// Backpropagation through the iterations holding only ⌈√iters⌉ segment starts and
    /// recomputing each segment in the backward pass.
    BpttCheckpointed,
}

impl Method {
    /// The name a table and the JSON use.
    pub fn name(self) -> &'static str {
        match self {
            Method::Eqprop => "eqprop",
            Method::Bptt => "bptt",
            Method::BpttCheckpointed => "bptt_checkpointed",
        }
    }
}

impl LoopedTransformer {
    /// [`Self::bptt_gradients`] holding only segment starts: the iterations run once without
    /// autodiff keeping the state every ⌈iters / segments⌉ iterations, then each segment,
    /// last first, is run again with autodiff from its start and differentiated with the
    /// gradient arriving from the segment after it. The same gradients, with memory
    /// growing as √iters (`segments` = ⌈√iters⌉) instead of iters.
    pub fn bptt_checkpointed_gradients(
        &self,
        x: &Tensor<3>,
        targets: &Tensor<1, Int>,
        iters: u32,
        segments: u32,
        shape: &Shape,
        dynamics: &Dynamics,
    ) -> NamedGradients {
        let segments = segments.clamp(1, iters.max(1));
        let per = iters.div_ceil(segments).max(1);
        let batch = x.dims()[0].max(1) as f64;
        let x = x.clone().without_autodiff();
        let iterate = |w: &Weights, mut z: Tensor<3>, e: &Tensor<3>, n: u32| {
            for _ in 0..n {
                z = z.clone()
                    - Self::descent(w, &z, e, None, dynamics.lambda).mul_scalar(dynamics.damping);
            }
            z
        };
        // The forward pass without autodiff, keeping each segment's start.
        let plain = self.weights(false, shape.heads);
        let e = Self::embedded(&plain, &x);
        let mut starts = Vec::new();
        let mut z = e.clone();
        let mut done = 0;
        loop {
            // At least one segment, of no iterations when `iters` is 0.
            let n = per.min(iters - done);
            starts.push((done, n, z.clone()));
            done += n;
            if done >= iters {
                // The last segment runs once, with autodiff, below.
                break;
            }
            z = iterate(&plain, z, &e, n);
        }
        drop(e);
        let mut total: Option<NamedGradients> = None;
        let mut add = |g: NamedGradients| match &mut total {
            None => total = Some(g),
            Some(t) => {
                for ((_, a), (_, b)) in t.0.iter_mut().zip(g.0) {
                    a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
                }
            }
        };
        // Each segment recomputed with autodiff, last first: its parameters' gradients and
        // the gradient of its start, which the segment before it receives.
        let mut upstream: Option<Tensor<3>> = None;
        while let Some((first, n, start)) = starts.pop() {
            let w = self.weights(true, shape.heads);
            let e = Self::embedded(&w, &x);
            // The first segment starts from the embedded input itself (a function of the
            // parameters); the others from a leaf whose gradient goes down.
            let leaf = (first > 0).then(|| start.autodiff().require_grad());
            let z0 = leaf.clone().unwrap_or_else(|| e.clone());
            let out = iterate(&w, z0, &e, n);
            let objective = match upstream.take() {
                None => Self::loss(Self::logits(&w, &out.tanh()), targets).div_scalar(batch),
                Some(g) => (out * g).sum(),
            };
            let grads = objective.backward();
            add(self.named(&grads));
            upstream = leaf
                .and_then(|l| l.grad(&grads))
                .map(|g| g.without_autodiff());
        }
        total.expect("at least one segment")
    }

    /// The gradients of the batch's mean loss by `method`, with exactly
    /// `dynamics.max_iters` iterations per phase (EqProp) or unrolled (BPTT), whatever the
    /// tolerance: the memory study's step.
    pub fn gradients_by(
        &self,
        method: Method,
        x: &Tensor<3>,
        targets: &Tensor<1, Int>,
        beta: f64,
        shape: &Shape,
        dynamics: &Dynamics,
    ) -> NamedGradients {
        let iters = dynamics.max_iters;
        let fixed = Dynamics {
            tol: 0.0,
            ..*dynamics
        };
        match method {
            Method::Eqprop => {
                self.eqprop_gradients(x, targets, beta, shape, &fixed)
                    .gradients
            }
            Method::Bptt => self.bptt_gradients(x, targets, iters, shape, &fixed),
            Method::BpttCheckpointed => {
                let segments = f64::from(iters).sqrt().ceil() as u32;
                self.bptt_checkpointed_gradients(x, targets, iters, segments, shape, &fixed)
            }
        }
    }
}

/// The model's sizes as a configuration gives them; the tokens follow from the images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Width {
    /// Width of the tokens.
    pub d_model: usize,
    /// Attention heads.
    pub heads: usize,
    /// Width of each head's queries and keys.
    pub d_head: usize,
    /// Hopfield memories.
    pub memories: usize,
    /// Side of the square patches an image is cut into, one token each.
    pub patch: usize,
}

/// The looped transformer as a classifier the training loop drives: each image cut into
/// square patches, one token each (MNIST with 7×7 patches: 16 tokens of 49 values),
/// trained by EqProp's gradients.
#[derive(Debug, Clone)]
pub struct EqPropClassifier {
    /// Reads the image and label columns (its own architecture is not used).
    pub columns: Classifier,
    /// The block's sizes.
    pub shape: Shape,
    /// Side of the patches.
    pub patch: usize,
    /// How equilibria are found.
    pub dynamics: Dynamics,
    /// The nudging strength β.
    pub beta: f64,
}

impl EqPropClassifier {
    /// A classifier of `columns`' images into `columns.classes` classes.
    pub fn new(columns: Classifier, width: Width, dynamics: Dynamics, beta: f64) -> Result<Self> {
        let (c, h, w) = columns.image();
        let bad = |key: &str, value: String, problem: &str| {
            Err(TrainError::Setting {
                key: key.into(),
                value,
                problem: problem.into(),
            })
        };
        if width.patch == 0 || h % width.patch != 0 || w % width.patch != 0 {
            return bad(
                "model.patch",
                width.patch.to_string(),
                &format!("the {h}×{w} images must split into whole square patches"),
            );
        }
        for (key, v) in [
            ("model.d_model", width.d_model),
            ("model.heads", width.heads),
            ("model.d_head", width.d_head),
            ("model.memories", width.memories),
        ] {
            if v == 0 {
                return bad(key, "0".into(), "expected at least 1");
            }
        }
        if !(beta > 0.0 && beta.is_finite()) {
            return bad(
                "eqprop.beta",
                beta.to_string(),
                "expected a positive number",
            );
        }
        if !(dynamics.damping > 0.0 && dynamics.damping <= 1.0) {
            return bad(
                "eqprop.damping",
                dynamics.damping.to_string(),
                "expected a number in (0, 1]",
            );
        }
        let shape = Shape {
            tokens: (h / width.patch) * (w / width.patch),
            token_dim: c * width.patch * width.patch,
            d_model: width.d_model,
            heads: width.heads,
            d_head: width.d_head,
            memories: width.memories,
            classes: columns.classes,
        };
        Ok(Self {
            columns,
            shape,
            patch: width.patch,
            dynamics,
            beta,
        })
    }

    /// Flat images `[n, c·h·w]` as tokens `[n, patches, c·patch²]`, patches row by row.
    pub fn tokens(&self, x: Tensor<2>) -> Tensor<3> {
        let (c, h, w) = self.columns.image();
        let p = self.patch;
        let n = x.dims()[0];
        x.reshape([n, c, h / p, p, w / p, p])
            .permute([0, 2, 4, 1, 3, 5])
            .reshape([n, self.shape.tokens, self.shape.token_dim])
    }
}

/// Settings of [`EqPropClassifier::gradcheck`].
#[derive(Debug, Clone, PartialEq)]
pub struct GradCheckSettings {
    /// The nudging strengths to sweep.
    pub betas: Vec<f64>,
    /// What the estimates are compared with.
    pub reference: Reference,
    /// The precision of the check (f64 takes rounding out of the comparison).
    pub dtype: FloatDType,
    /// Tolerance of every phase and of the reference's solve: far below the smallest β's
    /// effect on the state, or the estimate measures the solver's error.
    pub tol: f64,
    /// Iteration limit of every phase and solve.
    pub max_iters: u32,
}

/// A training step's cost in the memory study.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct StepCost {
    /// Heap bytes the step held at its peak above what was held before it (weights,
    /// data): what grows with the iterations, if anything does.
    pub peak_bytes: u64,
    /// Wall-clock seconds of the step.
    pub seconds: f64,
}

impl EqPropClassifier {
    /// A fresh block from `seed` computing in `dtype` on the CPU with autodiff, and a
    /// stored batch as its input tokens and labels.
    fn on_cpu(
        &self,
        batch: &Batch,
        seed: u64,
        dtype: FloatDType,
    ) -> Result<(LoopedTransformer, Tensor<3>, Tensor<1, Int>)> {
        let device = Device::flex().autodiff();
        let model = LoopedTransformer::init(&self.shape, seed, dtype, &device);
        let x = self
            .tokens(self.columns.inputs(batch, Precision::F32, &device)?)
            .cast(dtype);
        let targets = self.columns.targets(batch, &device)?;
        Ok((model, x, targets))
    }

    /// The gradient check on one batch, on the CPU: EqProp's estimate at each β against
    /// the reference, for a block freshly initialised from `seed`.
    pub fn gradcheck(
        &self,
        batch: &Batch,
        seed: u64,
        settings: &GradCheckSettings,
    ) -> Result<GradCheck> {
        if settings.betas.iter().any(|b| !(*b > 0.0 && b.is_finite())) {
            return Err(TrainError::Setting {
                key: "betas".into(),
                value: format!("{:?}", settings.betas),
                problem: "every β must be a positive number".into(),
            });
        }
        let (model, x, targets) = self.on_cpu(batch, seed, settings.dtype)?;
        let dynamics = Dynamics {
            tol: settings.tol,
            max_iters: settings.max_iters,
            ..self.dynamics
        };
        Ok(model.gradcheck(
            &x,
            &targets,
            &settings.betas,
            settings.reference,
            &self.shape,
            &dynamics,
        ))
    }

    /// One training step's heap peak and time on the CPU by `method` with `iters`
    /// iterations, for a block freshly initialised from `seed`. The peak is the counting
    /// allocator's ([`frugal_train::memory`]); without it installed the bytes read 0.
    pub fn step_cost(
        &self,
        batch: &Batch,
        seed: u64,
        method: Method,
        iters: u32,
    ) -> Result<StepCost> {
        let (model, x, targets) = self.on_cpu(batch, seed, FloatDType::F32)?;
        let before = frugal_train::memory::reset_heap_peak();
        let began = std::time::Instant::now();
        let dynamics = Dynamics {
            max_iters: iters,
            ..self.dynamics
        };
        let grads = model.gradients_by(method, &x, &targets, self.beta, &self.shape, &dynamics);
        let seconds = began.elapsed().as_secs_f64();
        let peak_bytes = frugal_train::memory::heap_peak().saturating_sub(before);
        drop(grads);
        Ok(StepCost {
            peak_bytes,
            seconds,
        })
    }
}

impl Task for EqPropClassifier {
    type Model = LoopedTransformer;
    /// Tokens and labels.
    type Input = (Tensor<3>, Tensor<1, Int>);

    /// Weights from a seed the device's generator gives, so that the loop's seeding of
    /// the device decides them.
    fn init(&self, device: &Device) -> LoopedTransformer {
        let draw = Tensor::<1>::random([2], Distribution::Uniform(0.0, 1.0), device)
            .into_data()
            .convert::<f64>()
            .try_to_vec::<f64>()
            .unwrap_or_default();
        let seed = draw.iter().fold(0u64, |s, &u| {
            s.rotate_left(32) ^ (u * 4_294_967_296.0) as u64
        });
        LoopedTransformer::init(&self.shape, seed, FloatDType::F32, device)
    }

    fn prepare(&self, batch: &Batch, input: StepInput<'_>) -> Result<Self::Input> {
        // Whatever chose the precision (the configuration, `--auto-fit`, a bench row).
        if input.precision != Precision::F32 {
            return Err(TrainError::Setting {
                key: "compute.precision".into(),
                value: input.precision.name().into(),
                problem: "the EqProp block computes in f32 for now (its phases compare energies that reduced precision would round away); set it to f32".into(),
            });
        }
        let x = self.columns.inputs(batch, Precision::F32, input.device)?;
        let targets = self.columns.targets(batch, input.device)?;
        Ok((self.tokens(x), targets))
    }

    fn step(
        &self,
        model: &LoopedTransformer,
        (x, targets): Self::Input,
        _input: StepInput<'_>,
        _loss_scale: f64,
    ) -> Result<StepOutput> {
        let samples = targets.dims()[0];
        let (grads, free, phases) =
            model.eqprop_step(&x, &targets, self.beta, &self.shape, &self.dynamics);
        let targets = targets.without_autodiff();
        let (loss, correct) = model.scores(&free.z, &targets, &self.shape);
        let mut solves = Solves::default();
        for p in phases {
            solves.record(u64::from(p.iters), p.converged);
        }
        Ok(StepOutput {
            loss: loss.div_scalar(samples.max(1) as f64),
            grads,
            correct: Some(correct),
            samples,
            solves,
        })
    }

    fn eval(
        &self,
        model: &LoopedTransformer,
        batch: &Batch,
        device: &Device,
    ) -> Result<EvalOutput> {
        let device = device.clone().without_autodiff();
        let x = self.tokens(self.columns.inputs(batch, Precision::F32, &device)?);
        let targets = self.columns.targets(batch, &device)?;
        let free = model.equilibrium(&x, None, None, &self.shape, &self.dynamics);
        let (loss_sum, correct) = model.scores(&free.z, &targets, &self.shape);
        Ok(EvalOutput {
            loss_sum,
            correct: Some(correct),
            samples: batch.samples,
        })
    }
}

impl LoopedTransformer {
    /// The summed loss `[1]` (f32) and the number classified right at `z`, on the device.
    pub fn scores(
        &self,
        z: &Tensor<3>,
        targets: &Tensor<1, Int>,
        shape: &Shape,
    ) -> (Tensor<1>, Tensor<1, Int>) {
        let w = self.weights(false, shape.heads);
        let logits = Self::logits(&w, &z.clone().tanh());
        let n = targets.dims()[0];
        let correct = logits
            .clone()
            .argmax(1)
            .equal(targets.clone().reshape([n, 1]))
            .int()
            .sum();
        (Self::loss(logits, targets).cast(FloatDType::F32), correct)
    }
}

fn scalar(t: Tensor<1>) -> f64 {
    f64::from(t.cast(burn::tensor::FloatDType::F32).into_scalar::<f32>())
}

fn normal(rng: &mut SplitMix64) -> f64 {
    // Box–Muller from two uniforms in (0, 1].
    let u1 = 1.0 - rng.uniform();
    let u2 = rng.uniform();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHAPE: Shape = Shape {
        tokens: 4,
        token_dim: 3,
        d_model: 8,
        heads: 2,
        d_head: 4,
        memories: 6,
        classes: 3,
    };

    fn batch(dtype: FloatDType, device: &Device) -> (Tensor<3>, Tensor<1, Int>) {
        let mut rng = SplitMix64::new(11);
        let values: Vec<f32> = (0..5 * SHAPE.tokens * SHAPE.token_dim)
            .map(|_| normal(&mut rng) as f32)
            .collect();
        let x = tokens_from(&values, 5, &SHAPE, dtype, device);
        let targets =
            Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 2, 1, 1, 0], [5]), device);
        (x, targets)
    }

    fn host(t: Tensor<3>) -> Vec<f32> {
        t.cast(FloatDType::F32)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap()
    }

    /// The written-out descent direction is the energy's gradient in z, nudged or not.
    #[test]
    fn the_iteration_descends_the_energy_gradient() {
        let device = Device::flex().autodiff();
        let model = LoopedTransformer::init(&SHAPE, 3, FloatDType::F32, &device);
        let (x, targets) = batch(FloatDType::F32, &device);
        let w = model.weights(false, SHAPE.heads);
        let x = x.without_autodiff();
        let e = LoopedTransformer::embedded(&w, &x);
        let z0 = e.clone().mul_scalar(0.7) + 0.1;
        for nudge in [None, Some((&targets, 0.3))] {
            let z = z0.clone().autodiff().require_grad();
            let f = LoopedTransformer::energy(&w, &z, &x, nudge, 1.3);
            let grads = f.backward();
            let auto = host(z.grad(&grads).unwrap());
            let written = host(LoopedTransformer::descent(&w, &z0, &e, nudge, 1.3));
            for (a, b) in auto.iter().zip(&written) {
                assert!((a - b).abs() < 1e-4 * (1.0 + a.abs()), "{a} against {b}");
            }
        }
    }

    /// Phases converge, and the free phase lowers the energy.
    #[test]
    fn phases_converge_to_lower_energy() {
        let device = Device::flex().autodiff();
        let model = LoopedTransformer::init(&SHAPE, 5, FloatDType::F32, &device);
        let (x, _) = batch(FloatDType::F32, &device);
        let dynamics = Dynamics::default();
        let free = model.equilibrium(&x, None, None, &SHAPE, &dynamics);
        assert!(free.stats.converged, "{:?}", free.stats);
        let w = model.weights(false, SHAPE.heads);
        let x = x.without_autodiff();
        let start = LoopedTransformer::embedded(&w, &x);
        let before = scalar(LoopedTransformer::energy(&w, &start, &x, None, 1.0));
        let after = scalar(LoopedTransformer::energy(&w, &free.z, &x, None, 1.0));
        assert!(after < before, "{after} against {before}");
    }

    /// Checkpointed backpropagation through the iterations gives the plain one's gradients,
    /// whatever the segmenting.
    #[test]
    fn checkpointed_bptt_equals_bptt() {
        let device = Device::flex().autodiff();
        let model = LoopedTransformer::init(&SHAPE, 9, FloatDType::F64, &device);
        let (x, targets) = batch(FloatDType::F64, &device);
        let dynamics = Dynamics::default();
        // One segment: the whole unrolling held, the plain reference.
        let plain = model.bptt_gradients(&x, &targets, 10, &SHAPE, &dynamics);
        for segments in [3, 4, 10] {
            let checkpointed =
                model.bptt_checkpointed_gradients(&x, &targets, 10, segments, &SHAPE, &dynamics);
            let c = checkpointed.compare(&plain);
            // The segments' gradients are summed as f32 host values: f32's rounding.
            assert!(c.relative_error < 1e-6, "{segments} segments: {c:?}");
        }
        // The memory study's methods, at the same 10 iterations.
        let ten = Dynamics {
            max_iters: 10,
            ..dynamics
        };
        for method in [Method::Bptt, Method::BpttCheckpointed] {
            let g = model.gradients_by(method, &x, &targets, 0.1, &SHAPE, &ten);
            assert!(g.compare(&plain).relative_error < 1e-6, "{method:?}");
        }
    }

    /// Implicit differentiation at the free equilibrium gives what backpropagation through
    /// the converged iterations gives, and the sweep against it rises as β falls.
    #[test]
    fn implicit_differentiation_matches_backprop_at_the_fixed_point() {
        let device = Device::flex().autodiff();
        let model = LoopedTransformer::init(&SHAPE, 7, FloatDType::F64, &device);
        let (x, targets) = batch(FloatDType::F64, &device);
        let dynamics = Dynamics {
            tol: 1e-11,
            max_iters: 5000,
            ..Dynamics::default()
        };
        let (implicit, free, solve) = model.implicit_gradients(&x, &targets, &SHAPE, &dynamics);
        assert!(free.converged && solve.converged, "{free:?} {solve:?}");
        let bptt = model.bptt_gradients(&x, &targets, free.iters, &SHAPE, &dynamics);
        let c = implicit.compare(&bptt);
        assert!(c.relative_error < 1e-6, "{c:?}");
        let check = model.gradcheck(
            &x,
            &targets,
            &[0.5, 0.05, 0.005],
            Reference::Implicit,
            &SHAPE,
            &dynamics,
        );
        let cosines: Vec<f64> = check.sweep.iter().map(|p| p.cosine).collect();
        assert!(cosines.windows(2).all(|w| w[1] > w[0]), "{cosines:?}");
        assert!(cosines[2] > 0.9999, "{cosines:?}");
        let errors: Vec<f64> = check.sweep.iter().map(|p| p.relative_error).collect();
        assert!(
            errors[2] < errors[1] / 10.0 && errors[1] < errors[0] / 10.0,
            "{errors:?}"
        );
    }

    /// EqProp's estimate approaches backpropagation through the converged iterations as β
    /// falls: cosine ≥ 0.99 at the smallest β, and rising along the sweep.
    #[test]
    fn eqprop_matches_backprop_as_beta_falls() {
        let device = Device::flex().autodiff();
        let model = LoopedTransformer::init(&SHAPE, 7, FloatDType::F64, &device);
        let (x, targets) = batch(FloatDType::F64, &device);
        let dynamics = Dynamics {
            tol: 1e-11,
            max_iters: 5000,
            ..Dynamics::default()
        };
        let reference = model.bptt_gradients(&x, &targets, 400, &SHAPE, &dynamics);
        let mut last = -1.0;
        let mut errors = Vec::new();
        for beta in [0.5, 0.1, 0.01, 0.001] {
            let step = model.eqprop_gradients(&x, &targets, beta, &SHAPE, &dynamics);
            assert!(step.phases.iter().all(|p| p.converged), "{:?}", step.phases);
            let c = step.gradients.compare(&reference);
            // Rising, to within f32's rounding: at β = 0.01 the energies' difference
            // loses digits, and the estimate sits at that floor (cosine 1 − 1e-7 here).
            assert!(
                c.cosine > last - 1e-6,
                "β {beta}: {} after {last}",
                c.cosine
            );
            last = c.cosine;
            errors.push(c.relative_error);
        }
        assert!(last >= 0.99, "cosine {last} at the smallest β");
        // Symmetric nudging's bias is O(β²): a fifth of β, about a 25th of the error.
        assert!(errors[1] < errors[0] / 10.0, "{errors:?}");
        assert!(errors[2] < errors[1] / 10.0, "{errors:?}");
    }
}
