//! Memory and time of one training step of a deep MLP with and without segment
//! checkpointing (docs/benchmarks.md):
//! `cargo run --release -p frugal-train --example checkpoint_memory -- [BLOCKS] [WIDTH] [BATCH]`.

#![allow(clippy::print_stdout)] // a benchmark prints its figures

use std::time::Instant;

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::gelu;
use burn::tensor::{Device, Distribution, Tensor};
use std::cell::RefCell;
use std::rc::Rc;

use frugal_train::checkpoint::{
    Block, Ctx, default_segments, plain_backward, segment_ranges, segmented_backward,
    with_block_probe,
};
use frugal_train::memory::{CountingAlloc, heap_live, heap_peak, reset_heap_peak};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

#[derive(Module, Debug)]
struct Residual {
    linear: Linear,
}

impl Block for Residual {
    fn forward(&self, x: Tensor<2>, ctx: &Ctx) -> Tensor<2> {
        x.clone() + ctx.dropout(gelu(self.linear.forward(x)), 0.1)
    }
}

struct Touch;

impl burn::module::ModuleVisitor for Touch {
    fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
        let _ = param.val();
    }
}

/// The stack, its head and an input batch, the same in every process.
fn model(blocks: usize, width: usize, batch: usize) -> (Vec<Residual>, Linear, Tensor<2>) {
    let device = Device::flex().autodiff();
    device.seed(0);
    let stack: Vec<Residual> = (0..blocks)
        .map(|_| Residual {
            linear: LinearConfig::new(width, width).init(&device),
        })
        .collect();
    let head = LinearConfig::new(width, 10).init(&device);
    stack.iter().for_each(|b| b.visit(&mut Touch));
    head.visit(&mut Touch);
    let x = Tensor::<2>::random([batch, width], Distribution::Normal(0.0, 1.0), &device);
    (stack, head, x)
}

fn loss(head: &Linear, h: Tensor<2>) -> Tensor<1> {
    head.forward(h).powi_scalar(2).mean()
}

/// One step with `segments` segments (1: no checkpointing).
fn step(stack: &[Residual], head: &Linear, x: &Tensor<2>, segments: usize, seed: u64) {
    let grads = if segments == 1 {
        plain_backward(stack, head, x.clone(), seed, loss)
    } else {
        segmented_backward(stack, head, x.clone(), segments, seed, loss)
    };
    drop(grads);
}

/// Step times of both modes in one process, alternating which goes first, so that both
/// see the same machine state: the median of each, and the median of the rounds' ratios.
fn time(blocks: usize, width: usize, batch: usize) -> serde_json::Value {
    let (stack, head, x) = model(blocks, width, batch);
    let sqrt = default_segments(blocks);
    step(&stack, &head, &x, 1, 0);
    step(&stack, &head, &x, sqrt, 0);
    let timed = |segments, seed| {
        let start = Instant::now();
        step(&stack, &head, &x, segments, seed);
        start.elapsed().as_secs_f64()
    };
    let forward = |seed| {
        let start = Instant::now();
        let ctx = Ctx::train(seed);
        let h = stack.iter().fold(x.clone(), |h, b| b.forward(h, &ctx));
        drop(loss(&head, h));
        start.elapsed().as_secs_f64()
    };
    let (mut none, mut checkpointed, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let mut forward_share = Vec::new();
    for round in 0..9u64 {
        forward_share.push(forward(round + 1));
        let (a, b) = if round % 2 == 0 {
            let a = timed(1, round + 1);
            (a, timed(sqrt, round + 1))
        } else {
            let b = timed(sqrt, round + 1);
            (timed(1, round + 1), b)
        };
        *forward_share.last_mut().expect("pushed") /= a;
        none.push(a);
        checkpointed.push(b);
        ratios.push(b / a);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let forward_share = median(forward_share);
    let recomputed = blocks - segment_ranges(blocks, sqrt).last().map_or(0, |r| r.len());
    serde_json::json!({
        "forward_share_of_step": forward_share,
        // What recomputing the forward pass of every segment but the last should cost.
        "expected_step_time_ratio": 1.0 + forward_share * recomputed as f64 / blocks as f64,
        "none_step_seconds": median(none),
        "sqrt_step_seconds": median(checkpointed),
        "step_time_ratio": median(ratios),
    })
}

/// One mode in this process: the heap held when the stack's forward pass ends (what is
/// kept for backward) and the heap's peak over the whole step. Heap bytes come from the
/// counting allocator, exact to the byte.
fn measure(mode: &str, blocks: usize, width: usize, batch: usize) -> serde_json::Value {
    let (stack, head, x) = model(blocks, width, batch);
    let segments = if mode == "none" {
        1
    } else {
        default_segments(blocks)
    };
    let step = |seed| {
        if segments == 1 {
            plain_backward(&stack, &head, x.clone(), seed, loss)
        } else {
            segmented_backward(&stack, &head, x.clone(), segments, seed, loss)
        }
    };
    drop(step(1));
    let start = reset_heap_peak();
    let marks = Rc::new(RefCell::new(Vec::new()));
    let sink = marks.clone();
    let grads = with_block_probe(
        move |block, carry| sink.borrow_mut().push((block, heap_live() - start, carry)),
        || step(2),
    );
    let peak = heap_peak() - start;
    let grad_bytes = heap_live() - start;
    drop(grads);
    let marks = marks.borrow();
    // The stack's forward ends at the first probe after its last block.
    let end_of_forward = marks.iter().find(|m| m.0 == blocks).map_or(0, |m| m.1);
    // Without checkpointing, what each block keeps; its input's size.
    let per_block: Vec<u64> = marks
        .windows(2)
        .take(blocks)
        .map(|w| w[1].1 - w[0].1)
        .collect();
    let carry = marks.first().map_or(0, |m| m.2);
    serde_json::json!({
        "segments": segments,
        "kept_at_end_of_forward_bytes": end_of_forward,
        "kept_per_block_bytes": if segments == 1 { per_block } else { Vec::new() },
        "carry_bytes": carry,
        "step_peak_heap_bytes": peak,
        "parameter_gradient_bytes": grad_bytes,
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, mode, rest @ ..] = args.as_slice()
        && flag == "--mode"
    {
        let n = |i: usize| rest[i].parse::<usize>().expect("a number");
        let report = if mode == "time" {
            time(n(0), n(1), n(2))
        } else {
            measure(mode, n(0), n(1), n(2))
        };
        println!("{report}");
        return;
    }
    let arg = |i: usize, default: usize| {
        args.get(i)
            .map_or(default, |a| a.parse().expect("a number"))
    };
    let (blocks, width, batch) = (arg(1, 32), arg(2, 1024), arg(3, 256));
    // Each mode in a fresh process, so neither inherits the other's freed memory.
    let mut report = serde_json::Map::new();
    for mode in ["none", "sqrt", "time"] {
        let out = std::process::Command::new(std::env::current_exe().expect("exe"))
            .args(["--mode", mode])
            .args([blocks, width, batch].map(|n| n.to_string()))
            .output()
            .expect("run a mode");
        let value: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        report.insert(mode.into(), value);
    }
    // Activation memory with checkpointing, at its largest: the stack's input and every
    // segment boundary kept, plus the widest segment's activations while it is recomputed
    // (from the per-block figures measured without checkpointing).
    let none = &report["none"];
    let per_block: Vec<u64> =
        serde_json::from_value(none["kept_per_block_bytes"].clone()).expect("list");
    let carry = none["carry_bytes"].as_u64().expect("carry");
    let ranges = segment_ranges(blocks, default_segments(blocks));
    let widest = ranges
        .iter()
        .map(|r| per_block[r.clone()].iter().sum::<u64>())
        .max()
        .unwrap_or(0);
    let checkpointed = carry * ranges.len() as u64 + widest;
    let plain = none["kept_at_end_of_forward_bytes"]
        .as_u64()
        .expect("bytes");
    let summary = serde_json::json!({
        "blocks": blocks,
        "width": width,
        "batch": batch,
        "activations_none_bytes": plain,
        "activations_sqrt_bytes": checkpointed,
        "activation_ratio": checkpointed as f64 / plain as f64,
        "activation_ratio_limit": 2.5 / (blocks as f64).sqrt(),
        "step_time_ratio": report["time"]["step_time_ratio"],
        "expected_step_time_ratio": report["time"]["expected_step_time_ratio"],
        "step_time_limit": 1.33,
    });
    report.insert("summary".into(), summary);
    println!("{}", serde_json::to_string_pretty(&report).expect("json"));
}
