//! The particle-dynamics graph network: encode–process–decode in the manner of GNS
//! (Sanchez-Gonzalez et al. 2020). Every recorded state is a graph whose edges join each
//! particle to its k nearest neighbours; the encoder lifts velocities (nodes) and relative
//! displacements and distances (edges) to latents, each processor layer updates edges from
//! their endpoints then nodes from the sum of their incoming edges (scatter-add), both
//! residual, and the decoder reads a normalised acceleration off every node. Every MLP has
//! two hidden ReLU layers and, but for the decoder's, a LayerNorm on its output.
//!
//! The encoder and the processor layers are the blocks of the checkpointed stack, carrying
//! a [`Graph`] (latents plus the edge indices), so segment checkpointing runs across
//! message-passing layers; the decoder is the head.

use burn::module::Module;
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, FloatDType, Gradients, IndexingUpdateOp, Int, Tensor, TensorData};
use frugal_store::{Batch, DType, Schema};
use frugal_train::checkpoint::{
    Block, Carry, Ctx, eval_forward, plain_backward, segmented_backward,
};
use frugal_train::{EvalOutput, Precision, Result, StepInput, StepOutput, Task, TrainError};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Node and edge latents of a batch of graphs, and the edges' endpoints (shared by all
/// layers, never differentiated).
#[derive(Debug, Clone)]
pub struct Graph {
    /// One row per particle.
    pub nodes: Tensor<2>,
    /// One row per edge.
    pub edges: Tensor<2>,
    /// The sending particle of each edge.
    pub senders: Tensor<1, Int>,
    /// The receiving particle of each edge.
    pub receivers: Tensor<1, Int>,
}

impl Graph {
    fn with(&self, nodes: Tensor<2>, edges: Tensor<2>) -> Self {
        Self {
            nodes,
            edges,
            senders: self.senders.clone(),
            receivers: self.receivers.clone(),
        }
    }

    fn indices(
        &self,
        f: impl Fn(Tensor<1, Int>) -> Tensor<1, Int>,
    ) -> (Tensor<1, Int>, Tensor<1, Int>) {
        (f(self.senders.clone()), f(self.receivers.clone()))
    }
}

impl Carry for Graph {
    fn detached(self) -> Self {
        let (senders, receivers) = self.indices(Tensor::without_autodiff);
        Self {
            nodes: self.nodes.detached(),
            edges: self.edges.detached(),
            senders,
            receivers,
        }
    }
    fn leaf(self) -> Self {
        let (senders, receivers) = self.indices(Tensor::autodiff);
        Self {
            nodes: self.nodes.leaf(),
            edges: self.edges.leaf(),
            senders,
            receivers,
        }
    }
    fn lifted(self) -> Self {
        let (senders, receivers) = self.indices(Tensor::autodiff);
        Self {
            nodes: self.nodes.lifted(),
            edges: self.edges.lifted(),
            senders,
            receivers,
        }
    }
    fn grad(&self, grads: &Gradients) -> Option<Self> {
        let (n, e) = (self.nodes.grad(grads), self.edges.grad(grads));
        if n.is_none() && e.is_none() {
            return None;
        }
        let (senders, receivers) = self.indices(Tensor::without_autodiff);
        Some(Self {
            nodes: n.unwrap_or_else(|| self.nodes.zeros()),
            edges: e.unwrap_or_else(|| self.edges.zeros()),
            senders,
            receivers,
        })
    }
    fn inject(self, upstream: Self) -> Tensor<1> {
        self.nodes.inject(upstream.nodes) + self.edges.inject(upstream.edges)
    }
    fn zeros(&self) -> Self {
        self.with(self.nodes.zeros(), self.edges.zeros())
    }
    fn bytes(&self) -> u64 {
        let ints = (self.senders.dims()[0] + self.receivers.dims()[0]) * 8;
        self.nodes.bytes() + self.edges.bytes() + ints as u64
    }
}

/// Two hidden ReLU layers and an output layer, optionally layer-normalised.
#[derive(Module, Debug)]
pub struct Mlp {
    layers: Vec<Linear>,
    norm: Option<LayerNorm>,
}

impl Mlp {
    fn new(inputs: usize, hidden: usize, outputs: usize, norm: bool, device: &Device) -> Self {
        Self {
            layers: vec![
                LinearConfig::new(inputs, hidden).init(device),
                LinearConfig::new(hidden, hidden).init(device),
                LinearConfig::new(hidden, outputs).init(device),
            ],
            norm: norm.then(|| LayerNormConfig::new(outputs).init(device)),
        }
    }

    /// Applies the MLP.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let last = self.layers.len() - 1;
        let mut x = x;
        for (i, l) in self.layers.iter().enumerate() {
            x = l.forward(x);
            if i < last {
                x = relu(x);
            }
        }
        match &self.norm {
            Some(n) => n.forward(x),
            None => x,
        }
    }
}

/// Node and edge features to latents.
#[derive(Module, Debug)]
pub struct Encoder {
    node: Mlp,
    edge: Mlp,
}

/// One interaction-network layer: edges from themselves and both endpoints, then nodes
/// from themselves and the sum of their incoming edges.
#[derive(Module, Debug)]
pub struct Interaction {
    edge: Mlp,
    node: Mlp,
}

/// A block of the stack: the encoder or one message-passing layer.
#[derive(Module, Debug)]
pub enum GnnBlock {
    /// The encoder.
    Encode(Encoder),
    /// A processor layer.
    Process(Interaction),
}

impl Block<Graph> for GnnBlock {
    fn forward(&self, g: Graph, _ctx: &Ctx) -> Graph {
        match self {
            GnnBlock::Encode(Encoder { node, edge }) => {
                g.with(node.forward(g.nodes.clone()), edge.forward(g.edges.clone()))
            }
            GnnBlock::Process(Interaction { edge, node }) => {
                let sent = g.nodes.clone().select(0, g.senders.clone());
                let received = g.nodes.clone().select(0, g.receivers.clone());
                let messages = edge.forward(Tensor::cat(vec![g.edges.clone(), sent, received], 1));
                let incoming = g.nodes.clone().zeros_like().select_assign(
                    0,
                    g.receivers.clone(),
                    messages.clone(),
                    IndexingUpdateOp::Add,
                );
                let update = node.forward(Tensor::cat(vec![g.nodes.clone(), incoming], 1));
                g.with(g.nodes.clone() + update, g.edges.clone() + messages)
            }
        }
    }
}

/// The network: the encoder and processor layers (the checkpointed stack) and the decoder.
#[derive(Module, Debug)]
pub struct Gnn {
    /// Encoder, then processor layers.
    pub blocks: Vec<GnnBlock>,
    /// Latent to normalised acceleration.
    pub decoder: Mlp,
}

/// Per-component scales the network's inputs and outputs are normalised by, measured on
/// the training data: velocities by their standard deviation, edge vectors by the mean
/// distance to a neighbour, accelerations by their mean and standard deviation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    /// Standard deviation of velocity components.
    pub vel_std: f32,
    /// Mean distance from a particle to a neighbour in the graph.
    pub edge_scale: f32,
    /// Mean of each acceleration component.
    pub acc_mean: [f32; 3],
    /// Standard deviation of each acceleration component.
    pub acc_std: [f32; 3],
}

/// The particle task: graph construction, the network's shape and its normalisation.
#[derive(Debug, Clone)]
pub struct ParticleGnn {
    /// Particles per state.
    pub particles: usize,
    /// Width of every latent.
    pub hidden: usize,
    /// Message-passing layers.
    pub layers: usize,
    /// Neighbours per particle.
    pub neighbours: usize,
    /// Standard deviation of the Gaussian noise added to input velocities in training, in
    /// units of their standard deviation (GNS's trick for stable rollouts); 0 for none.
    pub noise: f32,
    /// Input and output scales.
    pub norm: Normalization,
}

/// Inputs of one batch of states, before they become tensors.
struct Prepared {
    nodes: Vec<f32>,
    edges: Vec<f32>,
    senders: Vec<i64>,
    receivers: Vec<i64>,
    targets: Vec<f32>,
    particles: usize,
}

const NODE_FEATURES: usize = 3;
const EDGE_FEATURES: usize = 4;

fn f32_column<'a>(batch: &'a Batch, name: &str, per_sample: usize) -> Result<&'a [f32]> {
    let col = batch
        .column(name)
        .ok_or_else(|| TrainError::Invalid(format!("batch lacks column `{name}`")))?;
    let values = col
        .as_slice::<f32>()
        .ok_or_else(|| TrainError::Invalid(format!("column `{name}` must hold f32")))?;
    if values.len() != per_sample * batch.samples {
        return Err(TrainError::Invalid(format!(
            "column `{name}` holds {} values for {} samples of {per_sample}",
            values.len(),
            batch.samples
        )));
    }
    Ok(values)
}

impl ParticleGnn {
    /// Checks that a dataset's schema holds what the network reads: `pos`, `vel` and `acc`,
    /// f32 of shape [particles, 3].
    pub fn check_schema(&self, schema: &Schema) -> Result<()> {
        for name in ["pos", "vel", "acc"] {
            let col = schema.columns.iter().find(|c| c.name == name).ok_or_else(|| {
                TrainError::Invalid(format!(
                    "the dataset has no column `{name}`; particle datasets come from `frugal nbody generate`"
                ))
            })?;
            if col.dtype != DType::F32 || col.shape != [self.particles, 3] {
                return Err(TrainError::Invalid(format!(
                    "column `{name}` is {:?} × {:?}; the network expects f32 × [{}, 3] (`model.particles`)",
                    col.dtype, col.shape, self.particles
                )));
            }
        }
        Ok(())
    }

    /// Measures the normalisation on a batch of states.
    pub fn measure_normalization(
        batch: &Batch,
        particles: usize,
        neighbours: usize,
    ) -> Result<Normalization> {
        let per = particles * 3;
        let (pos, vel, acc) = (
            f32_column(batch, "pos", per)?,
            f32_column(batch, "vel", per)?,
            f32_column(batch, "acc", per)?,
        );
        let std = |v: &[f32], mean: f64| {
            (v.iter()
                .map(|&x| (f64::from(x) - mean).powi(2))
                .sum::<f64>()
                / v.len().max(1) as f64)
                .sqrt()
        };
        let vel_std = std(vel, 0.0).max(1e-12) as f32;
        let mut acc_mean = [0f32; 3];
        let mut acc_std = [0f32; 3];
        for c in 0..3 {
            let comp: Vec<f32> = acc.iter().skip(c).step_by(3).copied().collect();
            let mean = comp.iter().map(|&x| f64::from(x)).sum::<f64>() / comp.len().max(1) as f64;
            acc_mean[c] = mean as f32;
            acc_std[c] = std(&comp, mean).max(1e-12) as f32;
        }
        let first: Vec<[f32; 3]> = pos[..per]
            .chunks_exact(3)
            .map(|p| [p[0], p[1], p[2]])
            .collect();
        let graph = frugal_sim::knn_graph(&first, neighbours, true).map_err(TrainError::Invalid)?;
        let edge_scale = graph
            .senders
            .iter()
            .zip(&graph.receivers)
            .map(|(&s, &r)| {
                let (a, b) = (first[s as usize], first[r as usize]);
                (0..3).map(|c| (a[c] - b[c]).powi(2)).sum::<f32>().sqrt()
            })
            .sum::<f32>()
            / graph.senders.len() as f32;
        Ok(Normalization {
            vel_std,
            edge_scale: edge_scale.max(1e-12),
            acc_mean,
            acc_std,
        })
    }

    /// Graphs, features and targets of a batch; `noise_seed` adds the training noise.
    fn prepare(&self, batch: &Batch, noise_seed: Option<u64>) -> Result<Prepared> {
        let per = self.particles * 3;
        let (pos, vel, acc) = (
            f32_column(batch, "pos", per)?,
            f32_column(batch, "vel", per)?,
            f32_column(batch, "acc", per)?,
        );
        self.prepare_states(pos, vel, Some(acc), noise_seed)
    }

    /// Graphs, features and (with `acc`) targets of states laid out as the dataset's
    /// columns: `pos` and `vel` hold [states × particles × 3].
    fn prepare_states(
        &self,
        pos: &[f32],
        vel: &[f32],
        acc: Option<&[f32]>,
        noise_seed: Option<u64>,
    ) -> Result<Prepared> {
        let (n, k) = (self.particles, self.neighbours);
        let per = n * 3;
        let samples = pos.len() / per;
        let norm = self.norm;
        let graphs: Vec<(Vec<f32>, Vec<i64>, Vec<i64>)> = (0..samples)
            .into_par_iter()
            .map(|b| {
                let p: Vec<[f32; 3]> = pos[b * per..(b + 1) * per]
                    .chunks_exact(3)
                    .map(|p| [p[0], p[1], p[2]])
                    .collect();
                let g = frugal_sim::knn_graph(&p, k, false).map_err(TrainError::Invalid)?;
                let mut edges = Vec::with_capacity(g.senders.len() * EDGE_FEATURES);
                for (&s, &r) in g.senders.iter().zip(&g.receivers) {
                    let d: [f32; 3] = std::array::from_fn(|c| {
                        (p[s as usize][c] - p[r as usize][c]) / norm.edge_scale
                    });
                    edges.extend_from_slice(&d);
                    edges.push((d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt());
                }
                let offset = (b * n) as i64;
                let senders = g.senders.iter().map(|&s| i64::from(s) + offset).collect();
                let receivers = g.receivers.iter().map(|&r| i64::from(r) + offset).collect();
                Ok((edges, senders, receivers))
            })
            .collect::<Result<_>>()?;
        let mut nodes: Vec<f32> = vel.iter().map(|v| v / norm.vel_std).collect();
        if let (Some(seed), true) = (noise_seed, self.noise > 0.0) {
            let mut rng = frugal_sim::Rng::new(seed);
            for v in nodes.iter_mut() {
                let (u1, u2) = (1.0 - rng.uniform(), rng.uniform());
                let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                *v += self.noise * z as f32;
            }
        }
        let targets = acc.map_or_else(Vec::new, |acc| {
            acc.chunks_exact(3)
                .flat_map(|a| (0..3).map(move |c| (a[c] - norm.acc_mean[c]) / norm.acc_std[c]))
                .collect()
        });
        let (mut edges, mut senders, mut receivers) = (Vec::new(), Vec::new(), Vec::new());
        for (e, s, r) in graphs {
            edges.extend(e);
            senders.extend(s);
            receivers.extend(r);
        }
        Ok(Prepared {
            nodes,
            edges,
            senders,
            receivers,
            targets,
            particles: n * samples,
        })
    }

    fn tensors(&self, p: Prepared, precision: Precision, device: &Device) -> (Graph, Tensor<2>) {
        let edges = p.senders.len();
        let float = |v: Vec<f32>, cols: usize, rows: usize| {
            precision.cast(Tensor::<2>::from_data(
                TensorData::new(v, [rows, cols]),
                device,
            ))
        };
        let int = |v: Vec<i64>| Tensor::<1, Int>::from_data(TensorData::new(v, [edges]), device);
        let graph = Graph {
            nodes: float(p.nodes, NODE_FEATURES, p.particles),
            edges: float(p.edges, EDGE_FEATURES, edges),
            senders: int(p.senders),
            receivers: int(p.receivers),
        };
        let rows = p.targets.len() / 3;
        let targets = Tensor::<2>::from_data(TensorData::new(p.targets, [rows, 3]), device);
        (graph, targets)
    }

    /// Blocks in the checkpointed stack: the encoder and the processor layers.
    pub fn blocks(&self) -> usize {
        1 + self.layers
    }

    /// Normalised accelerations predicted for a batch of states (evaluation, no autodiff):
    /// one row per particle, in the batch's order.
    pub fn predict(&self, model: &Gnn, batch: &Batch, device: &Device) -> Result<Tensor<2>> {
        let device = device.clone().without_autodiff();
        let (graph, _) = self.tensors(self.prepare(batch, None)?, Precision::F32, &device);
        let h = eval_forward(&model.blocks, graph);
        Ok(model.decoder.forward(h.nodes))
    }
}

impl ParticleGnn {
    /// Accelerations the network predicts for states given as positions and velocities
    /// ([states × particles × 3], f32), in simulation units: what a learned rollout
    /// integrates.
    pub fn accelerations(
        &self,
        model: &Gnn,
        pos: &[f32],
        vel: &[f32],
        device: &Device,
    ) -> Result<Vec<f32>> {
        let device = device.clone().without_autodiff();
        let (graph, _) = self.tensors(
            self.prepare_states(pos, vel, None, None)?,
            Precision::F32,
            &device,
        );
        let h = eval_forward(&model.blocks, graph);
        let normalised: Vec<f32> = model
            .decoder
            .forward(h.nodes)
            .into_data()
            .try_into_vec::<f32>()
            .map_err(|e| TrainError::Invalid(format!("reading predictions: {e:?}")))?;
        let norm = self.norm;
        Ok(normalised
            .chunks_exact(3)
            .flat_map(|a| (0..3).map(move |c| a[c] * norm.acc_std[c] + norm.acc_mean[c]))
            .collect())
    }
}

fn mse(pred: Tensor<2>, target: Tensor<2>) -> Tensor<1> {
    (pred.cast(FloatDType::F32) - target).powi_scalar(2).mean()
}

impl Task for ParticleGnn {
    type Model = Gnn;

    fn init(&self, device: &Device) -> Gnn {
        let h = self.hidden;
        let mut blocks = vec![GnnBlock::Encode(Encoder {
            node: Mlp::new(NODE_FEATURES, h, h, true, device),
            edge: Mlp::new(EDGE_FEATURES, h, h, true, device),
        })];
        blocks.extend((0..self.layers).map(|_| {
            GnnBlock::Process(Interaction {
                edge: Mlp::new(3 * h, h, h, true, device),
                node: Mlp::new(2 * h, h, h, true, device),
            })
        }));
        Gnn {
            blocks,
            decoder: Mlp::new(h, h, 3, false, device),
        }
    }

    fn step(&self, model: &Gnn, batch: &Batch, input: StepInput<'_>) -> Result<StepOutput> {
        let prepared = self.prepare(batch, Some(input.seed))?;
        let (graph, targets) = self.tensors(prepared, input.precision, input.device);
        let scale = input.loss_scale;
        let loss = |decoder: &Mlp, g: Graph| {
            let l = mse(decoder.forward(g.nodes), targets.clone());
            if scale == 1.0 { l } else { l * scale }
        };
        let g = match input.segments {
            Some(s) => {
                segmented_backward(&model.blocks, &model.decoder, graph, s, input.seed, loss)
            }
            None => plain_backward(&model.blocks, &model.decoder, graph, input.seed, loss),
        };
        Ok(StepOutput {
            loss: g.loss / scale,
            grads: g.grads,
            correct: None,
            samples: batch.samples,
        })
    }

    /// A state is a whole graph: evaluate as many as a training batch holds.
    fn eval_batch(&self, batch_size: usize) -> usize {
        batch_size
    }

    fn eval(&self, model: &Gnn, batch: &Batch, device: &Device) -> Result<EvalOutput> {
        let plain = device.clone().without_autodiff();
        let (_, targets) = self.tensors(self.prepare(batch, None)?, Precision::F32, &plain);
        let pred = self.predict(model, batch, device)?;
        let loss = mse(pred, targets);
        Ok(EvalOutput {
            loss_sum: f64::from(loss.into_scalar::<f32>()) * batch.samples as f64,
            correct: None,
            samples: batch.samples,
        })
    }
}
