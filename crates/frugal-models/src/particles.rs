//! The particle-dynamics graph network: encode–process–decode in the manner of GNS
//! (Sanchez-Gonzalez et al. 2020). Every recorded state is a graph whose edges join each
//! particle to its k nearest neighbours; the encoder lifts node features and relative
//! displacements and distances (edges) to latents, each processor layer updates edges from
//! their endpoints then nodes from the sum of their incoming edges (scatter-add), both
//! residual, and the decoder reads a normalised acceleration off every node. Every MLP has
//! two hidden ReLU layers and, but for the decoder's, a LayerNorm on its output.
//!
//! The encoder and the processor layers are the blocks of the checkpointed stack, carrying
//! a [`Graph`] (latents plus the edge indices), so segment checkpointing runs across
//! message-passing layers; the decoder is the head.
//!
//! Gravity is long-range: k neighbours see a particle's surroundings, not the cluster that
//! dominates its acceleration. So each node also carries its position relative to the
//! centre of mass, its distance from it, and the *monopole field* there — the pull of the
//! mass inside its radius, −f(r) r / (r² + ε²)^{3/2}, softened like the simulation, with f the fraction of particles nearer
//! the centre (O(N log N), equal masses) — and the network learns the rest: asphericity
//! and the local, granular part that the edges see.

use burn::module::Module;
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, FloatDType, Gradients, Int, Tensor, TensorData};
use frugal_store::{Batch, DType, Schema};
use frugal_train::checkpoint::{
    Block, Carry, Ctx, eval_forward, plain_backward, segmented_backward,
};
use frugal_train::{EvalOutput, Precision, Result, StepInput, StepOutput, Task, TrainError};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Node latents, edge latents in chunks, and the edges' endpoints (shared by all layers,
/// never differentiated). A checkpointed pass updates one chunk of edges per block, so
/// recomputing a block holds one chunk's activations rather than every edge's.
///
/// Edges are ordered by receiving particle, `neighbours` to each, and every chunk holds
/// whole receivers: a chunk's receivers are a contiguous range of rows, their incoming
/// edges a `[rows, neighbours]` block. So gathering receivers is a broadcast and summing
/// messages per receiver is a reshape and a sum — no scatter, no atomic additions, and
/// the same sum in the same order on every device.
#[derive(Debug, Clone)]
pub struct Graph {
    /// One row per particle.
    pub nodes: Tensor<2>,
    /// One row per edge, in chunks.
    pub edges: Vec<Tensor<2>>,
    /// The sending particle of each edge, chunked like `edges`.
    pub senders: Vec<Tensor<1, Int>>,
    /// The rows (receiving particles) each chunk's edges lead to, `start..end`.
    pub receivers: Vec<(usize, usize)>,
    /// Edges per receiving particle.
    pub neighbours: usize,
    /// The messages of this layer's chunks so far, summed by receiving particle: one row
    /// for each receiver of the chunks done.
    pub incoming: Option<Tensor<2>>,
    /// Chunks a block of the current segment replaced; the others pass through it.
    touched: Vec<bool>,
}

impl Graph {
    fn map(
        &self,
        float: impl Fn(Tensor<2>) -> Tensor<2>,
        int: impl Fn(Tensor<1, Int>) -> Tensor<1, Int>,
        touched: Option<bool>,
    ) -> Self {
        Self {
            nodes: float(self.nodes.clone()),
            edges: self.edges.iter().cloned().map(&float).collect(),
            senders: self.senders.iter().cloned().map(&int).collect(),
            receivers: self.receivers.clone(),
            neighbours: self.neighbours,
            incoming: self.incoming.clone().map(&float),
            touched: match touched {
                Some(t) => vec![t; self.edges.len()],
                None => self.touched.clone(),
            },
        }
    }

    /// Gradients of this carry's parts: `part(i, tensor)` for every float part, `i` the
    /// edge chunk or `None` for nodes and incoming; `None` when no part got one.
    fn grads(
        &self,
        grads: &Gradients,
        chunk: impl Fn(usize, &Tensor<2>) -> Option<Tensor<2>>,
    ) -> Option<Self> {
        let or_zeros = |t: &Tensor<2>, g: Option<Tensor<2>>| {
            g.unwrap_or_else(|| t.zeros_like().without_autodiff())
        };
        let nodes = self.nodes.grad(grads);
        let edges: Vec<Option<Tensor<2>>> = self
            .edges
            .iter()
            .enumerate()
            .map(|(i, e)| chunk(i, e))
            .collect();
        let incoming = self.incoming.as_ref().map(|t| (t, t.grad(grads)));
        let any = nodes.is_some()
            || edges.iter().any(Option::is_some)
            || incoming.as_ref().is_some_and(|(_, g)| g.is_some());
        if !any {
            return None;
        }
        let plain = |t: Tensor<1, Int>| t.without_autodiff();
        Some(Self {
            nodes: or_zeros(&self.nodes, nodes),
            edges: self
                .edges
                .iter()
                .zip(edges)
                .map(|(e, g)| or_zeros(e, g))
                .collect(),
            senders: self.senders.iter().cloned().map(plain).collect(),
            receivers: self.receivers.clone(),
            neighbours: self.neighbours,
            incoming: incoming.map(|(t, g)| or_zeros(t, g)),
            touched: vec![false; self.edges.len()],
        })
    }
}

impl Carry for Graph {
    fn detached(self) -> Self {
        self.map(Carry::detached, Tensor::without_autodiff, None)
    }
    fn leaf(self) -> Self {
        self.map(Carry::leaf, Tensor::autodiff, Some(false))
    }
    fn lifted(self) -> Self {
        self.map(Carry::lifted, Tensor::autodiff, Some(false))
    }
    fn grad(&self, grads: &Gradients) -> Option<Self> {
        self.grads(grads, |_, e| e.grad(grads))
    }
    /// Chunks no block of the segment touched are the segment input's own tensors: their
    /// gradient is the upstream one, handed on without passing through autodiff.
    fn input_grad(&self, out: &Self, grads: &Gradients, upstream: Self) -> Option<Self> {
        self.grads(grads, |i, e| {
            if out.touched[i] {
                e.grad(grads)
            } else {
                Some(upstream.edges[i].clone())
            }
        })
    }
    fn inject(self, upstream: Self) -> Tensor<1> {
        let mut total = self.nodes.inject(upstream.nodes);
        for ((e, u), touched) in self.edges.into_iter().zip(upstream.edges).zip(self.touched) {
            if touched {
                total = total + e.inject(u);
            }
        }
        if let (Some(i), Some(u)) = (self.incoming, upstream.incoming) {
            total = total + i.inject(u);
        }
        total
    }
    fn zeros(&self) -> Self {
        self.map(
            |t| t.zeros_like().without_autodiff(),
            Tensor::without_autodiff,
            None,
        )
    }
    fn bytes(&self) -> u64 {
        let ints: usize = self.senders.iter().map(|t| t.dims()[0] * 8).sum();
        let floats: u64 = self
            .edges
            .iter()
            .chain(std::iter::once(&self.nodes))
            .chain(self.incoming.as_ref())
            .map(Carry::bytes)
            .sum();
        floats + ints as u64
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
        self.forward_plus(x, None)
    }

    /// Applies the MLP with `extra` added to its first layer's output: the rest of a
    /// concatenated input's product, computed elsewhere.
    fn forward_plus(&self, x: Tensor<2>, extra: Option<Tensor<2>>) -> Tensor<2> {
        let last = self.layers.len() - 1;
        let (mut x, mut extra) = (x, extra);
        for (i, l) in self.layers.iter().enumerate() {
            x = l.forward(x);
            if let Some(extra) = extra.take() {
                x = x + extra;
            }
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
///
/// The edge MLP's first layer acts on [edge, sender, receiver]; its product is split into
/// the edge's part and the two endpoints' parts, which are computed per *node* and
/// gathered. Same function, but no edges × 3·hidden concatenation is built (or kept for
/// backward, or differentiated) and the first layer costs a third per edge: edges
/// outnumber nodes k to 1.
#[derive(Module, Debug)]
pub struct Interaction {
    edge: Mlp,
    sender: Linear,
    receiver: Linear,
    node: Mlp,
}

/// The network: encoder, processor layers and decoder, each parameter held once.
#[derive(Module, Debug)]
pub struct Gnn {
    /// Features to latents.
    pub encoder: Encoder,
    /// The message-passing layers.
    pub layers: Vec<Interaction>,
    /// Latent to normalised acceleration.
    pub decoder: Mlp,
}

/// The encoder's edge MLP on one chunk of edges.
#[derive(Module, Debug)]
pub struct EdgeEncode {
    mlp: Mlp,
    chunk: usize,
}

/// A processor layer's edge update on one chunk of edges, its messages added to the
/// layer's incoming sums.
#[derive(Module, Debug)]
pub struct EdgeUpdate {
    layer: Interaction,
    chunk: usize,
}

/// A block of the checkpointed stack: a view of the network's modules (its parameters
/// shared, not copied). With c edge chunks a network of L layers is the stack
/// nodes-encode, c edge-encodes, then per layer c edge updates and a node update.
#[derive(Module, Debug)]
pub enum GnnBlock {
    /// The encoder's node MLP.
    EncodeNodes(Mlp),
    /// The encoder's edge MLP on a chunk.
    EncodeEdges(EdgeEncode),
    /// A layer's edge update on a chunk.
    Edges(EdgeUpdate),
    /// A layer's node update from the summed messages.
    Nodes(Interaction),
}

impl Block<Graph> for GnnBlock {
    fn forward(&self, mut g: Graph, _ctx: &Ctx) -> Graph {
        match self {
            GnnBlock::EncodeNodes(mlp) => g.nodes = mlp.forward(g.nodes),
            GnnBlock::EncodeEdges(EdgeEncode { mlp, chunk }) => {
                g.edges[*chunk] = mlp.forward(g.edges[*chunk].clone());
                g.touched[*chunk] = true;
            }
            GnnBlock::Edges(EdgeUpdate { layer, chunk }) => {
                let c = *chunk;
                let (start, end) = g.receivers[c];
                let (rows, k) = (end - start, g.neighbours);
                let width = layer.receiver.weight.dims()[1];
                let receivers = layer
                    .receiver
                    .forward(g.nodes.clone().slice(start..end))
                    .unsqueeze_dim::<3>(1)
                    .expand([rows, k, width])
                    .reshape([rows * k, width]);
                let ends = layer
                    .sender
                    .forward(g.nodes.clone())
                    .select(0, g.senders[c].clone())
                    + receivers;
                let messages = layer.edge.forward_plus(g.edges[c].clone(), Some(ends));
                let summed = messages
                    .clone()
                    .reshape([rows, k, width])
                    .sum_dim(1)
                    .reshape([rows, width]);
                g.incoming = Some(match g.incoming.take() {
                    Some(before) => Tensor::cat(vec![before, summed], 0),
                    None => summed,
                });
                g.edges[c] = g.edges[c].clone() + messages;
                g.touched[c] = true;
            }
            GnnBlock::Nodes(layer) => {
                let incoming = g.incoming.take().unwrap_or_else(|| g.nodes.zeros_like());
                let update = layer
                    .node
                    .forward(Tensor::cat(vec![g.nodes.clone(), incoming], 1));
                g.nodes = g.nodes + update;
            }
        }
        g
    }
}

impl Gnn {
    /// The checkpointable stack over `chunks` edge chunks.
    pub fn stack(&self, chunks: usize) -> Vec<GnnBlock> {
        let mut blocks = vec![GnnBlock::EncodeNodes(self.encoder.node.clone())];
        blocks.extend((0..chunks).map(|chunk| {
            GnnBlock::EncodeEdges(EdgeEncode {
                mlp: self.encoder.edge.clone(),
                chunk,
            })
        }));
        for layer in &self.layers {
            blocks.extend((0..chunks).map(|chunk| {
                GnnBlock::Edges(EdgeUpdate {
                    layer: layer.clone(),
                    chunk,
                })
            }));
            blocks.push(GnnBlock::Nodes(layer.clone()));
        }
        blocks
    }
}

/// Per-component scales the network's inputs and outputs are normalised by, measured on
/// the training data: velocities by their standard deviation, edge vectors by the mean
/// distance to a neighbour, positions by their RMS distance from the centre of mass, the
/// monopole field by its RMS, accelerations by their mean and standard deviation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    /// Standard deviation of velocity components.
    pub vel_std: f32,
    /// Mean distance from a particle to a neighbour in the graph.
    pub edge_scale: f32,
    /// RMS distance of a particle from the centre of mass.
    pub pos_scale: f32,
    /// RMS of the monopole field's components.
    pub field_scale: f32,
    /// The simulations' softening length, which the monopole field is softened by.
    pub softening: f32,
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
    /// Chunks the edges are cut into when training with checkpointing, each updated by
    /// its own block ([`ParticleGnn::EDGE_CHUNKS`] by default): a recomputed block then
    /// holds 1/chunks of a layer's edge activations.
    pub edge_chunks: usize,
}

/// Inputs of one batch of states, before they become tensors.
struct Prepared {
    nodes: Vec<f32>,
    edges: Vec<f32>,
    senders: Vec<i64>,
    targets: Vec<f32>,
}

/// Velocity, position from the centre of mass, distance from it, monopole field.
const NODE_FEATURES: usize = 10;
const EDGE_FEATURES: usize = 4;

fn f32_column<'a>(batch: &'a Batch, name: &str, per_sample: usize) -> Result<&'a [f32]> {
    let col = batch
        .column(name)
        .ok_or_else(|| TrainError::MissingColumn {
            column: name.into(),
            hint: String::new(),
        })?;
    let values = col.as_slice::<f32>().ok_or_else(|| TrainError::Column {
        column: name.into(),
        problem: format!("holds {:?}; the network reads f32", col.dtype),
    })?;
    if values.len() != per_sample * batch.samples {
        return Err(TrainError::Column {
            column: name.into(),
            problem: format!(
                "holds {} values for {} samples of {per_sample}",
                values.len(),
                batch.samples
            ),
        });
    }
    Ok(values)
}

type Points = Vec<[f32; 3]>;

/// Positions relative to the centre of mass (equal masses) and the monopole field at
/// each: −f r / (|r|² + s²)^{3/2}, f the fraction of the other particles nearer the centre.
fn centred_and_field(p: &[[f32; 3]], s: f32) -> (Points, Points) {
    let n = p.len().max(1) as f64;
    let com: [f64; 3] = std::array::from_fn(|c| p.iter().map(|x| f64::from(x[c])).sum::<f64>() / n);
    let rel: Vec<[f32; 3]> = p
        .iter()
        .map(|x| std::array::from_fn(|c| (f64::from(x[c]) - com[c]) as f32))
        .collect();
    let r2: Vec<f32> = rel
        .iter()
        .map(|r| r[0] * r[0] + r[1] * r[1] + r[2] * r[2])
        .collect();
    let mut order: Vec<u32> = (0..p.len() as u32).collect();
    order.sort_unstable_by(|&a, &b| r2[a as usize].total_cmp(&r2[b as usize]));
    let mut field = vec![[0f32; 3]; p.len()];
    let others = (p.len().saturating_sub(1)).max(1) as f32;
    for (rank, &i) in order.iter().enumerate() {
        let i = i as usize;
        let f = rank as f32 / others;
        let d2 = r2[i] + s * s;
        let k = -f / (d2 * d2.sqrt());
        field[i] = std::array::from_fn(|c| k * rel[i][c]);
    }
    (rel, field)
}

fn rms(values: impl Iterator<Item = f32>) -> f32 {
    let (sum, count) = values.fold((0f64, 0usize), |(s, n), v| {
        (s + f64::from(v).powi(2), n + 1)
    });
    ((sum / count.max(1) as f64).sqrt() as f32).max(1e-12)
}

fn as_points(pos: &[f32]) -> Vec<[f32; 3]> {
    pos.chunks_exact(3).map(|p| [p[0], p[1], p[2]]).collect()
}

impl ParticleGnn {
    /// The default [`ParticleGnn::edge_chunks`].
    pub const EDGE_CHUNKS: usize = 8;

    /// States [`ParticleGnn::accelerations`] evaluates at once.
    const EVAL_STATES: usize = 2;

    /// Checks that a dataset's schema holds what the network reads: `pos`, `vel` and `acc`,
    /// f32 of shape [particles, 3].
    pub fn check_schema(&self, schema: &Schema) -> Result<()> {
        for name in ["pos", "vel", "acc"] {
            let col = schema
                .columns
                .iter()
                .find(|c| c.name == name)
                .ok_or_else(|| TrainError::MissingColumn {
                    column: name.into(),
                    hint: "; particle datasets come from `frugal nbody generate`".into(),
                })?;
            if col.dtype != DType::F32 || col.shape != [self.particles, 3] {
                return Err(TrainError::Column {
                    column: name.into(),
                    problem: format!(
                        "is {:?} × {:?}; the network expects f32 × [{}, 3] (`model.particles`)",
                        col.dtype, col.shape, self.particles
                    ),
                });
            }
        }
        Ok(())
    }

    /// Measures the normalisation on a batch of states.
    /// `softening` is the simulations' (Plummer) softening length.
    pub fn measure_normalization(
        batch: &Batch,
        particles: usize,
        neighbours: usize,
        softening: f32,
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
        let first = as_points(&pos[..per]);
        let graph = frugal_sim::knn_graph(&first, neighbours, true)
            .map_err(|e| TrainError::Failed(e.to_string()))?;
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
        let edge_scale = edge_scale.max(1e-12);
        let states: Vec<(Points, Points)> = pos
            .par_chunks_exact(per)
            .map(|p| centred_and_field(&as_points(p), softening))
            .collect();
        let pos_scale = rms(states.iter().flat_map(|(r, _)| r.iter().flatten().copied()));
        let field_scale = rms(states.iter().flat_map(|(_, f)| f.iter().flatten().copied()));
        Ok(Normalization {
            vel_std,
            edge_scale,
            pos_scale: pos_scale * 3f32.sqrt(),
            field_scale,
            softening,
            acc_mean,
            acc_std,
        })
    }

    /// Graphs, features and targets of a batch; `noise_seed` adds the training noise.
    fn features(&self, batch: &Batch, noise_seed: Option<u64>) -> Result<Prepared> {
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
        // Per state: node features, edge features, senders.
        type Parts = (Vec<f32>, Vec<f32>, Vec<i64>);
        let graphs: Vec<Parts> = (0..samples)
            .into_par_iter()
            .map(|b| {
                let p = as_points(&pos[b * per..(b + 1) * per]);
                let g = frugal_sim::knn_graph(&p, k, false)
                    .map_err(|e| TrainError::Failed(e.to_string()))?;
                // The network sums messages by reshaping: edge e must lead to particle e / k.
                if g.receivers
                    .iter()
                    .enumerate()
                    .any(|(e, &r)| r as usize != e / k)
                {
                    return Err(TrainError::Failed(
                        "the neighbour graph is not ordered by receiving particle".into(),
                    ));
                }
                let (rel, field) = centred_and_field(&p, norm.softening);
                let mut nodes = Vec::with_capacity(n * NODE_FEATURES);
                for (i, v) in vel[b * per..(b + 1) * per].chunks_exact(3).enumerate() {
                    nodes.extend(v.iter().map(|v| v / norm.vel_std));
                    nodes.extend(rel[i].iter().map(|r| r / norm.pos_scale));
                    let d2 = rel[i].iter().map(|r| r * r).sum::<f32>();
                    nodes.push(d2.sqrt() / norm.pos_scale);
                    nodes.extend(field[i].iter().map(|f| f / norm.field_scale));
                }
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
                Ok((nodes, edges, senders))
            })
            .collect::<Result<_>>()?;
        let (mut nodes, mut edges, mut senders) = (Vec::new(), Vec::new(), Vec::new());
        for (v, e, s) in graphs {
            nodes.extend(v);
            edges.extend(e);
            senders.extend(s);
        }
        if let (Some(seed), true) = (noise_seed, self.noise > 0.0) {
            let mut rng = frugal_rand::SplitMix64::new(seed);
            for v in nodes
                .chunks_exact_mut(NODE_FEATURES)
                .flat_map(|f| &mut f[..3])
            {
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
        Ok(Prepared {
            nodes,
            edges,
            senders,
            targets,
        })
    }

    /// The graph, its edges cut into `chunks` near-equal chunks of whole receivers, and
    /// the targets.
    fn tensors(
        &self,
        p: Prepared,
        chunks: usize,
        precision: Precision,
        device: &Device,
    ) -> (Graph, Tensor<2>) {
        let k = self.neighbours;
        let rows = p.nodes.len() / NODE_FEATURES;
        let float = |v: &[f32], cols: usize| {
            precision.cast(Tensor::<2>::from_data(
                TensorData::new(v.to_vec(), [v.len() / cols, cols]),
                device,
            ))
        };
        let int =
            |v: &[i64]| Tensor::<1, Int>::from_data(TensorData::new(v.to_vec(), [v.len()]), device);
        let chunks = chunks.clamp(1, rows.max(1));
        let receivers: Vec<(usize, usize)> = (0..chunks)
            .map(|c| (c * rows / chunks, (c + 1) * rows / chunks))
            .collect();
        let graph = Graph {
            nodes: float(&p.nodes, NODE_FEATURES),
            edges: receivers
                .iter()
                .map(|&(a, b)| {
                    float(
                        &p.edges[a * k * EDGE_FEATURES..b * k * EDGE_FEATURES],
                        EDGE_FEATURES,
                    )
                })
                .collect(),
            senders: receivers
                .iter()
                .map(|&(a, b)| int(&p.senders[a * k..b * k]))
                .collect(),
            receivers,
            neighbours: k,
            incoming: None,
            touched: vec![false; chunks],
        };
        let targeted = p.targets.len() / 3;
        let targets = Tensor::<2>::from_data(TensorData::new(p.targets, [targeted, 3]), device);
        (graph, targets)
    }

    /// The network's forward pass without autodiff: the decoder's input.
    fn latents(&self, model: &Gnn, p: Prepared, device: &Device) -> Tensor<2> {
        let device = device.clone().without_autodiff();
        // Chunked, a layer's temporaries exist for one chunk of edges at a time.
        let chunks = self.edge_chunks.max(1);
        let (graph, _) = self.tensors(p, chunks, Precision::F32, &device);
        eval_forward(&model.stack(chunks), graph).nodes
    }

    /// Normalised accelerations predicted for a batch of states (evaluation, no autodiff):
    /// one row per particle, in the batch's order.
    pub fn predict(&self, model: &Gnn, batch: &Batch, device: &Device) -> Result<Tensor<2>> {
        let h = self.latents(model, self.features(batch, None)?, device);
        Ok(model.decoder.forward(h))
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
        // A few states at a time: evaluation memory stays that of a training batch.
        let group = Self::EVAL_STATES * self.particles * 3;
        let mut normalised: Vec<f32> = Vec::with_capacity(pos.len());
        for (pos, vel) in pos.chunks(group.max(1)).zip(vel.chunks(group.max(1))) {
            let h = self.latents(model, self.prepare_states(pos, vel, None, None)?, device);
            normalised.extend(
                model
                    .decoder
                    .forward(h)
                    .into_data()
                    .try_into_vec::<f32>()
                    .map_err(|e| TrainError::Failed(format!("reading predictions: {e:?}")))?,
            );
        }
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
    /// The batch's graph (features uploaded, edges chunked) and its normalised targets.
    type Input = (Graph, Tensor<2>);

    /// With [`ParticleGnn::edge_chunks`] chunks: the node encoder, the edge encoder per
    /// chunk, and per layer an edge update per chunk and a node update.
    fn blocks(&self) -> usize {
        let c = self.edge_chunks.max(1);
        1 + c + self.layers * (c + 1)
    }

    /// Every block: the stack is made to be recomputed one block (one chunk of edges) at
    /// a time, and ⌈√blocks⌉ segments would recompute whole layers at once.
    fn checkpoint_segments(&self) -> usize {
        self.blocks()
    }

    fn init(&self, device: &Device) -> Gnn {
        let h = self.hidden;
        Gnn {
            encoder: Encoder {
                node: Mlp::new(NODE_FEATURES, h, h, true, device),
                edge: Mlp::new(EDGE_FEATURES, h, h, true, device),
            },
            layers: (0..self.layers)
                .map(|_| Interaction {
                    edge: Mlp::new(h, h, h, true, device),
                    sender: LinearConfig::new(h, h).with_bias(false).init(device),
                    receiver: LinearConfig::new(h, h).with_bias(false).init(device),
                    node: Mlp::new(2 * h, h, h, true, device),
                })
                .collect(),
            decoder: Mlp::new(h, h, 3, false, device),
        }
    }

    fn prepare(&self, batch: &Batch, input: StepInput<'_>) -> Result<Self::Input> {
        let features = self.features(batch, Some(input.seed))?;
        // Chunking edges pays only when blocks are recomputed one at a time.
        let chunks = if input.segments.is_some() {
            self.edge_chunks
        } else {
            1
        };
        Ok(self.tensors(features, chunks, input.precision, input.device))
    }

    fn step(
        &self,
        model: &Gnn,
        (graph, targets): Self::Input,
        input: StepInput<'_>,
        loss_scale: f64,
    ) -> Result<StepOutput> {
        let samples = targets.dims()[0] / self.particles.max(1);
        let blocks = model.stack(graph.edges.len());
        let loss = |decoder: &Mlp, g: Graph| {
            let l = mse(decoder.forward(g.nodes), targets);
            if loss_scale == 1.0 { l } else { l * loss_scale }
        };
        let g = match input.segments {
            Some(s) => segmented_backward(&blocks, &model.decoder, graph, s, input.seed, loss),
            None => plain_backward(&blocks, &model.decoder, graph, input.seed, loss),
        };
        Ok(StepOutput {
            loss: if loss_scale == 1.0 {
                g.loss
            } else {
                g.loss / loss_scale
            },
            grads: g.grads,
            correct: None,
            samples,
            solves: Default::default(),
        })
    }

    /// A state is a whole graph: evaluate as many as a training batch holds.
    fn eval_batch(&self, batch_size: usize) -> usize {
        batch_size
    }

    fn eval(&self, model: &Gnn, batch: &Batch, device: &Device) -> Result<EvalOutput> {
        let plain = device.clone().without_autodiff();
        let (_, targets) = self.tensors(self.features(batch, None)?, 1, Precision::F32, &plain);
        let pred = self.predict(model, batch, device)?;
        let loss = mse(pred, targets);
        Ok(EvalOutput {
            loss_sum: loss * batch.samples as f64,
            correct: None,
            samples: batch.samples,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, IndexingUpdateOp};

    /// The reshape-and-sum aggregation over chunks of whole receivers is the scatter-add
    /// of every message to its receiving particle.
    #[test]
    fn messages_are_summed_per_receiving_particle() {
        let device = Device::flex();
        device.seed(7);
        let (rows, k, h) = (10, 3, 8);
        let layer = Interaction {
            edge: Mlp::new(h, h, h, true, &device),
            sender: LinearConfig::new(h, h).with_bias(false).init(&device),
            receiver: LinearConfig::new(h, h).with_bias(false).init(&device),
            node: Mlp::new(2 * h, h, h, true, &device),
        };
        let nodes = Tensor::<2>::random([rows, h], Distribution::Normal(0.0, 1.0), &device);
        let edges = Tensor::<2>::random([rows * k, h], Distribution::Normal(0.0, 1.0), &device);
        // Two states of five particles; senders within each state.
        let senders: Vec<i64> = (0..rows * k)
            .map(|e| {
                let r = e / k;
                let state = r / 5 * 5;
                (state + (r + 1 + e % k) % 5) as i64
            })
            .collect();
        let int = |v: &[i64]| {
            Tensor::<1, Int>::from_data(TensorData::new(v.to_vec(), [v.len()]), &device)
        };
        let chunks = [(0, 4), (4, 10)];
        let mut g = Graph {
            nodes: nodes.clone(),
            edges: chunks
                .iter()
                .map(|&(a, b)| edges.clone().slice(a * k..b * k))
                .collect(),
            senders: chunks
                .iter()
                .map(|&(a, b)| int(&senders[a * k..b * k]))
                .collect(),
            receivers: chunks.to_vec(),
            neighbours: k,
            incoming: None,
            touched: vec![false; 2],
        };
        for chunk in 0..2 {
            g = GnnBlock::Edges(EdgeUpdate {
                layer: layer.clone(),
                chunk,
            })
            .forward(g, &Ctx::eval());
        }
        let receivers: Vec<i64> = (0..rows * k).map(|e| (e / k) as i64).collect();
        let ends = layer.sender.forward(nodes.clone()).select(0, int(&senders))
            + layer
                .receiver
                .forward(nodes.clone())
                .select(0, int(&receivers));
        let messages = layer.edge.forward_plus(edges, Some(ends));
        let expected =
            nodes
                .zeros_like()
                .select_assign(0, int(&receivers), messages, IndexingUpdateOp::Add);
        let got: Vec<f32> = g.incoming.unwrap().into_data().try_to_vec().unwrap();
        let want: Vec<f32> = expected.into_data().try_to_vec().unwrap();
        assert_eq!(got.len(), want.len());
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{a} vs {b}");
        }
    }
}
