//! Segment checkpointing: train a stack of L blocks keeping only the activations at
//! segment boundaries (⌈√L⌉ segments by default), recomputing each segment during the
//! backward pass.
//!
//! burn's autodiff recomputes single operations (`BalancedCheckpointing`) but has no notion
//! of a segment, so this drives the backward pass itself:
//!
//! 1. Forward every segment but the last on the model's validation copy (no autodiff, so
//!    no graph is kept), storing only each segment's input.
//! 2. Run the last segment and the head with autodiff from a `require_grad` leaf, take the
//!    loss's backward: the gradients of those parameters and of the leaf.
//! 3. For each earlier segment, last to first: recompute it with autodiff from its stored
//!    input as a leaf, inject the gradient arriving from above with
//!    `(out * g).sum().backward()`, collect its parameters' gradients and pass the leaf's
//!    gradient down.
//!
//! The parameter gradients equal those of one full backward pass. Dropout is replayed:
//! [`Ctx::dropout`] draws its masks from a per-segment seed, the same in the first run and
//! the recomputation, and applies whenever training — also in the no-autodiff first run,
//! where burn's own `Dropout` would switch itself off.

use std::cell::{Cell, RefCell};

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Gradients, Tensor, TensorData};
use frugal_rand::SplitMix64;
use rayon::prelude::*;

pub use crate::segments::{default_segments, segment_ranges};

/// Per-forward context handed to blocks: whether this is training, and the random stream
/// dropout draws from.
///
/// Masks come from a counter-based generator owned by the context (the k-th dropout call
/// of a segment draws stream k of the segment's seed), not from the device's generator:
/// whatever else draws from the device in between (burn initializes parameters lazily, on
/// first use, from it), a recomputed segment draws exactly the masks of its first run.
#[derive(Debug)]
pub struct Ctx {
    training: bool,
    seed: u64,
    calls: Cell<u64>,
}

impl Ctx {
    /// Training with dropout streams from `seed`.
    pub fn train(seed: u64) -> Self {
        Self {
            training: true,
            seed,
            calls: Cell::new(0),
        }
    }

    /// Evaluation: dropout is the identity.
    pub fn eval() -> Self {
        Self {
            training: false,
            seed: 0,
            calls: Cell::new(0),
        }
    }

    /// Whether this is a training forward pass.
    pub fn training(&self) -> bool {
        self.training
    }

    /// Inverted dropout with drop probability `prob`.
    pub fn dropout<const D: usize>(&self, x: Tensor<D>, prob: f64) -> Tensor<D> {
        if !self.training || prob <= 0.0 {
            return x;
        }
        let call = self.calls.get();
        self.calls.set(call + 1);
        let keep = 1.0 - prob;
        let threshold = (keep * (1u64 << 32) as f64) as u64;
        let scale = (1.0 / keep) as f32;
        let shape = x.shape();
        let mask = dropout_mask(
            self.seed ^ SplitMix64::new(call).next_u64(),
            shape.num_elements(),
            threshold,
            scale,
        );
        let mask = Tensor::<D>::from_data(TensorData::new(mask, shape), &x.device());
        // Masks are drawn as f32 and follow the activations into bf16/f16 compute.
        let mask = if x.dtype() == mask.dtype() {
            mask
        } else {
            mask.cast(x.dtype())
        };
        x * mask
    }
}

/// Element `i` keeps (`scale`) when the high half of draw `i` of the SplitMix stream
/// `seed` is below `threshold`, else drops (0). SplitMix's draw `i` is a function of
/// `seed + i·γ` alone, so chunks are filled in parallel, each from its own offset, with
/// the very values one serial pass would draw.
fn dropout_mask(seed: u64, len: usize, threshold: u64, scale: f32) -> Vec<f32> {
    const CHUNK: usize = 1 << 14;
    const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut mask = vec![0f32; len];
    mask.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(c, chunk)| {
            let mut rng =
                SplitMix64::new(seed.wrapping_add(((c * CHUNK) as u64).wrapping_mul(GAMMA)));
            for m in chunk {
                *m = if (rng.next_u64() >> 32) < threshold {
                    scale
                } else {
                    0.0
                };
            }
        });
    mask
}

/// What flows from one block to the next: one tensor of any rank, or several (a graph
/// network carries node and edge latents). Implement it for a struct of tensors to carry
/// more; integer parts (graph indices) pass through untouched and take no gradient.
pub trait Carry: Clone {
    /// The same values with no autodiff graph behind them.
    fn detached(self) -> Self;
    /// The same values as fresh autodiff leaves that record their gradient.
    fn leaf(self) -> Self;
    /// The same values on the autodiff device, without recording a gradient.
    fn lifted(self) -> Self;
    /// The gradient that reached this carry, `None` when none did. A part that got no
    /// gradient while another did is given zeros.
    fn grad(&self, grads: &Gradients) -> Option<Self>;
    /// A scalar whose gradient with respect to `self` is `upstream`: the sum over all
    /// parts of `self * upstream`, with `upstream` detached.
    fn inject(self, upstream: Self) -> Tensor<1>;
    /// The gradient of a segment's input `self` after the backward pass from that
    /// segment's output `out`, whose own gradient was `upstream`. By default the autodiff
    /// gradient ([`Carry::grad`]); a carry whose blocks hand some parts on unchanged may
    /// pass those parts' `upstream` straight through instead (and leave them out of
    /// [`Carry::inject`]), sparing a product and a copy per part and segment.
    fn input_grad(&self, out: &Self, grads: &Gradients, upstream: Self) -> Option<Self> {
        let _ = (out, upstream);
        self.grad(grads)
    }
    /// Zeros of the same shapes, without autodiff.
    fn zeros(&self) -> Self;
    /// Bytes of its values (what keeping it at a segment boundary costs).
    fn bytes(&self) -> u64;
}

impl<const D: usize> Carry for Tensor<D> {
    fn bytes(&self) -> u64 {
        (self.dims().iter().product::<usize>() * self.dtype().size()) as u64
    }
    fn detached(self) -> Self {
        self.without_autodiff()
    }
    fn leaf(self) -> Self {
        self.autodiff().require_grad()
    }
    fn lifted(self) -> Self {
        self.autodiff()
    }
    fn grad(&self, grads: &Gradients) -> Option<Self> {
        Tensor::grad(self, grads)
    }
    fn inject(self, upstream: Self) -> Tensor<1> {
        (self * upstream).sum()
    }
    fn zeros(&self) -> Self {
        self.zeros_like().without_autodiff()
    }
}

impl<A: Carry, B: Carry> Carry for (A, B) {
    fn bytes(&self) -> u64 {
        self.0.bytes() + self.1.bytes()
    }
    fn detached(self) -> Self {
        (self.0.detached(), self.1.detached())
    }
    fn leaf(self) -> Self {
        (self.0.leaf(), self.1.leaf())
    }
    fn lifted(self) -> Self {
        (self.0.lifted(), self.1.lifted())
    }
    fn grad(&self, grads: &Gradients) -> Option<Self> {
        match (self.0.grad(grads), self.1.grad(grads)) {
            (None, None) => None,
            (a, b) => Some((
                a.unwrap_or_else(|| self.0.zeros()),
                b.unwrap_or_else(|| self.1.zeros()),
            )),
        }
    }
    fn inject(self, upstream: Self) -> Tensor<1> {
        self.0.inject(upstream.0) + self.1.inject(upstream.1)
    }
    fn zeros(&self) -> Self {
        (self.0.zeros(), self.1.zeros())
    }
}

/// One block of a stack that segment checkpointing may recompute: a pure function of its
/// parameters, its input and the context's dropout streams, mapping a carry `A` to the
/// next.
pub trait Block<A: Carry = Tensor<2>>: Module {
    /// Applies the block.
    fn forward(&self, x: A, ctx: &Ctx) -> A;
}

/// The dropout context of block `block` in a step seeded with `step_seed`: per block, not
/// per segment, so masks (and so results) do not depend on how the stack is segmented.
fn block_ctx(step_seed: u64, block: usize) -> Ctx {
    Ctx::train(
        SplitMix64::new(step_seed ^ (block as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)).next_u64(),
    )
}

type Probe = Box<dyn FnMut(usize, u64)>;

thread_local! {
    static PROBE: RefCell<Option<Probe>> = const { RefCell::new(None) };
}

/// Runs `f` with `probe` called before every block a training pass runs on this thread,
/// and once after the last: with the index of the block about to run (the block count
/// after the last) and the bytes of the carry entering it. The memory planner measures
/// what each block keeps for backward this way.
pub fn with_block_probe<R>(probe: impl FnMut(usize, u64) + 'static, f: impl FnOnce() -> R) -> R {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            PROBE.with(|p| p.borrow_mut().take());
        }
    }
    PROBE.with(|p| *p.borrow_mut() = Some(Box::new(probe)));
    let _reset = Reset;
    f()
}

fn probe<A: Carry>(block: usize, x: &A) {
    PROBE.with(|p| {
        if let Some(p) = p.borrow_mut().as_mut() {
            p(block, x.bytes());
        }
    });
}

/// Runs `blocks`, the first of which is block `first` of the stack, in training mode.
fn run<A: Carry, B: Block<A>>(blocks: &[B], first: usize, mut x: A, step_seed: u64) -> A {
    for (i, b) in blocks.iter().enumerate() {
        probe(first + i, &x);
        x = b.forward(x, &block_ctx(step_seed, first + i));
    }
    probe(first + blocks.len(), &x);
    x
}

/// Moves a module's parameter gradients out of `grads` into `into`, adding to what is
/// there (a parameter shared by several segments gets the sum).
struct Collect<'a> {
    grads: &'a mut Gradients,
    into: &'a mut GradientsParams,
}

impl ModuleVisitor for Collect<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if !param.is_require_grad() {
            return;
        }
        if let Some(g) = param.val().grad_remove(self.grads) {
            let g = match self.into.remove::<D>(param.id) {
                Some(previous) => previous + g,
                None => g,
            };
            self.into.register(param.id, g);
        }
    }
}

fn collect<M: Module>(module: &M, grads: &mut Gradients, into: &mut GradientsParams) {
    module.visit(&mut Collect { grads, into });
}

/// Backward from the loss `l`: its value (on the device, unread: reading it would make
/// the host wait for the device every step), what is left of the gradients (those of
/// non-parameter leaves), and the parameter gradients of `head` and `blocks`.
fn loss_backward<A: Carry, H: Module, B: Block<A>>(
    l: Tensor<1>,
    head: &H,
    blocks: &[B],
) -> (Tensor<1>, Gradients, GradientsParams) {
    let loss = l.clone().without_autodiff();
    let mut grads = l.backward();
    let mut params = GradientsParams::new();
    collect(head, &mut grads, &mut params);
    for b in blocks {
        collect(b, &mut grads, &mut params);
    }
    (loss, grads, params)
}

/// The result of one forward and backward pass.
#[derive(Debug)]
pub struct StepGrads {
    /// The loss, a one-element tensor left on the device: training reads losses back in
    /// batches (see [`crate::Deferred`]), not once a step.
    pub loss: Tensor<1>,
    /// Gradients of the blocks' and the head's parameters.
    pub grads: GradientsParams,
}

impl StepGrads {
    /// The loss as a number (waits for the device).
    pub fn loss_value(&self) -> f64 {
        scalar(&self.loss)
    }
}

/// A one-element float tensor's value, in f64 (waits for the device).
pub fn scalar(t: &Tensor<1>) -> f64 {
    f64::from(
        t.clone()
            .cast(burn::tensor::FloatDType::F32)
            .into_scalar::<f32>(),
    )
}

/// One training forward and backward pass over `blocks` then `head`, with `loss` turning
/// the head's output into a scalar, keeping only segment-boundary activations.
/// `segments == blocks.len()` checkpoints every block; `segments == 1` is plain backward.
/// The parameters must live on an autodiff device with checkpointing strategy `Disabled`
/// (the default of `device.autodiff()`), so that leaves lifted with `Tensor::autodiff`
/// match them.
pub fn segmented_backward<A: Carry, B: Block<A>, H: Module>(
    blocks: &[B],
    head: &H,
    x: A,
    segments: usize,
    step_seed: u64,
    loss: impl FnOnce(&H, A) -> Tensor<1>,
) -> StepGrads {
    let ranges = segment_ranges(blocks.len(), segments);
    let last = ranges.len() - 1;
    let mut inputs = Vec::with_capacity(last);
    let mut h = x.detached();
    for r in &ranges[..last] {
        inputs.push(h.clone());
        let plain: Vec<B> = blocks[r.clone()].iter().map(Module::valid).collect();
        h = run(&plain, r.start, h, step_seed);
    }

    // The stack's input takes no gradient: its segment starts from a plain lifted tensor,
    // which spares the first block's input-gradient product.
    let start = |h: A, s: usize| if s == 0 { h.lifted() } else { h.leaf() };
    let leaf = start(h, last);
    let tail = &blocks[ranges[last].clone()];
    let out = run(tail, ranges[last].start, leaf.clone(), step_seed);
    let (loss_value, grads, mut all) = loss_backward(loss(head, out), head, tail);
    let mut upstream = leaf.grad(&grads);

    for s in (0..last).rev() {
        let Some(g) = upstream.take() else { break };
        let leaf = start(inputs.pop().expect("one input per segment"), s);
        let out = run(
            &blocks[ranges[s].clone()],
            ranges[s].start,
            leaf.clone(),
            step_seed,
        );
        let kept = g.clone();
        let mut grads = out.clone().inject(g).backward();
        for b in &blocks[ranges[s].clone()] {
            collect(b, &mut grads, &mut all);
        }
        upstream = (s > 0)
            .then(|| leaf.input_grad(&out, &grads, kept))
            .flatten();
    }
    StepGrads {
        loss: loss_value,
        grads: all,
    }
}

/// The same pass without checkpointing, drawing the same dropout masks as
/// [`segmented_backward`] (they depend on the block, not the segment): the reference its
/// gradients are compared with, and the step of a run that does not checkpoint.
pub fn plain_backward<A: Carry, B: Block<A>, H: Module>(
    blocks: &[B],
    head: &H,
    x: A,
    step_seed: u64,
    loss: impl FnOnce(&H, A) -> Tensor<1>,
) -> StepGrads {
    let h = run(blocks, 0, x.lifted(), step_seed);
    let (loss, _, grads) = loss_backward(loss(head, h), head, blocks);
    StepGrads { loss, grads }
}

/// The forward pass of evaluation: every block with dropout off.
pub fn eval_forward<A: Carry, B: Block<A>>(blocks: &[B], mut x: A) -> A {
    let ctx = Ctx::eval();
    for b in blocks {
        x = b.forward(x, &ctx);
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_the_stack() {
        assert_eq!(segment_ranges(7, 3), vec![0..2, 2..4, 4..7]);
        assert_eq!(segment_ranges(4, 9), vec![0..1, 1..2, 2..3, 3..4]);
        assert_eq!(segment_ranges(5, 0), vec![0..5]);
        assert_eq!(default_segments(32), 6);
        assert_eq!(default_segments(16), 4);
    }

    #[test]
    fn parallel_masks_are_the_serial_stream() {
        let (seed, len, threshold) = (0xfeed, 40_000 + 17, 3u64 << 30);
        let mut rng = SplitMix64::new(seed);
        let serial: Vec<f32> = (0..len)
            .map(|_| {
                if (rng.next_u64() >> 32) < threshold {
                    4.0
                } else {
                    0.0
                }
            })
            .collect();
        assert_eq!(dropout_mask(seed, len, threshold, 4.0), serial);
        let kept = serial.iter().filter(|&&m| m > 0.0).count() as f64 / len as f64;
        assert!((kept - 0.75).abs() < 0.01, "{kept}");
    }
}
