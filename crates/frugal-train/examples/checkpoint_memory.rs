//! Memory and time of one training step of a deep MLP with and without segment
//! checkpointing (docs/benchmarks.md):
//! `cargo run --release -p frugal-train --example checkpoint_memory -- [BLOCKS] [WIDTH] [BATCH]`.

#![allow(clippy::print_stdout)] // a benchmark prints its figures

use std::time::Instant;

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::gelu;
use burn::tensor::{Device, Distribution, Tensor};
use frugal_hw::MemoryMeter;
use frugal_train::checkpoint::{Block, Ctx, default_segments, plain_backward, segmented_backward};

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

/// One mode in this process: parameters initialized first, then the memory rise of the
/// first step (nothing freed earlier for the allocator to reuse), then the median time of
/// three more steps.
fn measure(mode: &str, blocks: usize, width: usize, batch: usize) -> serde_json::Value {
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
    let loss = |head: &Linear, h: Tensor<2>| head.forward(h).powi_scalar(2).mean();
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
    let meter = MemoryMeter::new();
    let window = meter.window().expect("memory meter");
    drop(step(1));
    let rise = window.finish().rise_bytes();
    let mut times: Vec<f64> = (2..5)
        .map(|seed| {
            let start = Instant::now();
            drop(step(seed));
            start.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    serde_json::json!({ "segments": segments, "first_step_rise_bytes": rise, "step_seconds": times[1] })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, mode, rest @ ..] = args.as_slice()
        && flag == "--mode"
    {
        let n = |i: usize| rest[i].parse::<usize>().expect("a number");
        println!("{}", measure(mode, n(0), n(1), n(2)));
        return;
    }
    let arg = |i: usize, default: usize| {
        args.get(i)
            .map_or(default, |a| a.parse().expect("a number"))
    };
    let (blocks, width, batch) = (arg(1, 32), arg(2, 1024), arg(3, 256));
    // Each mode in a fresh process, so neither inherits the other's freed memory.
    let mut report = serde_json::Map::new();
    for mode in ["none", "sqrt"] {
        let out = std::process::Command::new(std::env::current_exe().expect("exe"))
            .args(["--mode", mode])
            .args([blocks, width, batch].map(|n| n.to_string()))
            .output()
            .expect("run a mode");
        let value: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        report.insert(mode.into(), value);
    }
    let grads_bytes = (blocks * (width * width + width) + width * 10 + 10) * 4;
    report.insert("blocks".into(), blocks.into());
    report.insert("width".into(), width.into());
    report.insert("batch".into(), batch.into());
    report.insert("parameter_gradient_bytes".into(), grads_bytes.into());
    println!("{}", serde_json::to_string_pretty(&report).expect("json"));
}
