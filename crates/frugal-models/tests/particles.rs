//! The particle graph network: checkpointing across message-passing layers gives the plain
//! gradients, and a few hundred steps learn gravity's accelerations well past the mean.

use std::path::Path;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Tensor};
use frugal_models::particles::{Gnn, ParticleGnn};
use frugal_sim::{Gravity, Initial, Method, Simulation, Vec3s};
use frugal_store::{Dataset, DatasetWriter, WriterOptions};
use frugal_train::checkpoint::scalar;
use frugal_train::trainer::{init_on_cpu, move_to};
use frugal_train::{Precision, StepInput, Task, run_step};

mod common;
use common::batches;

const PARTICLES: usize = 64;

/// `sims` Plummer spheres of 64 particles, `states` recorded states each, as
/// `frugal nbody generate` lays them out.
fn dataset(dir: &Path, sims: u64, states: u32) -> Dataset {
    let schema = frugal_models::simulations::schema(PARTICLES);
    let mut w = DatasetWriter::create(dir, schema, WriterOptions::default()).unwrap();
    let bytes = |v: &Vec3s| -> Vec<u8> {
        (0..PARTICLES)
            .flat_map(|i| v.iter().flat_map(move |a| (a[i] as f32).to_le_bytes()))
            .collect()
    };
    let gravity = Gravity::softened(0.05);
    for s in 0..sims {
        let start = Initial::Plummer.generate(PARTICLES, s, gravity).unwrap();
        let mut sim = Simulation::new(start, gravity, Method::Direct, false);
        for t in 0..states {
            sim.step(0.01);
            let (p, v, a) = (
                bytes(&sim.particles.pos),
                bytes(&sim.particles.vel),
                bytes(&sim.acc),
            );
            w.push_sample(&[&p, &v, &a, &(s as u32).to_le_bytes(), &t.to_le_bytes()])
                .unwrap();
        }
    }
    w.finish().unwrap();
    Dataset::open(dir).unwrap()
}

fn task(ds: &Dataset) -> ParticleGnn {
    let first = batches(ds, 16, 0).next().unwrap();
    ParticleGnn {
        particles: PARTICLES,
        hidden: 32,
        layers: 3,
        neighbours: 8,
        noise: 0.0,
        edge_chunks: ParticleGnn::EDGE_CHUNKS,
        norm: ParticleGnn::measure_normalization(&first, PARTICLES, 8, 0.05).unwrap(),
    }
}

fn max_relative_error(model: &Gnn, a: &GradientsParams, b: &GradientsParams) -> f32 {
    struct Compare<'a>(&'a GradientsParams, &'a GradientsParams, f32);
    impl ModuleVisitor for Compare<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let values = |g: &GradientsParams| -> Vec<f32> {
                g.get::<D>(param.id)
                    .expect("a gradient")
                    .into_data()
                    .try_to_vec::<f32>()
                    .unwrap()
            };
            let (a, b) = (values(self.0), values(self.1));
            let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
            let err = a
                .iter()
                .zip(&b)
                .fold(0f32, |m, (p, q)| m.max((p - q).abs()));
            self.2 = self.2.max(err / scale);
        }
    }
    let mut c = Compare(a, b, 0.0);
    model.visit(&mut c);
    c.2
}

#[test]
fn checkpointing_across_message_passing_gives_the_plain_gradients() {
    let dir = tempfile::tempdir().unwrap();
    let ds = dataset(dir.path(), 2, 4);
    let task = task(&ds);
    let device = Device::flex().autodiff();
    device.seed(3);
    let model = task.init(&device);
    let batch = batches(&ds, 3, 1).next().unwrap();
    let input = |segments| StepInput {
        device: &device,
        precision: Precision::F32,
        segments,
        seed: 9,
    };
    let plain = run_step(&task, &model, &batch, input(None), 1.0).unwrap();
    let plain_loss = scalar(&plain.loss);
    for segments in [2, 5, task.blocks()] {
        let checkpointed = run_step(&task, &model, &batch, input(Some(segments)), 1.0).unwrap();
        let loss = scalar(&checkpointed.loss);
        assert!((plain_loss - loss).abs() <= 1e-6 * plain_loss.abs().max(1.0));
        let err = max_relative_error(&model, &checkpointed.grads, &plain.grads);
        assert!(err <= 1e-5, "{segments} segments: relative error {err}");
    }
}

#[test]
fn the_network_learns_accelerations() {
    let dir = tempfile::tempdir().unwrap();
    let ds = dataset(dir.path(), 6, 20);
    let task = task(&ds);
    let device = Device::flex().autodiff();
    device.seed(1);
    let mut model = task.init(&device);
    let mut optim = AdamWConfig::new().init();
    let eval = |model: &Gnn| -> f64 {
        let valid = model.clone().valid();
        let (mut sum, mut n) = (0.0, 0);
        for b in batches(&ds, 40, 99) {
            let out = task.eval(&valid, &b, &device).unwrap();
            sum += scalar(&out.loss_sum);
            n += out.samples;
        }
        sum / n as f64
    };
    let before = eval(&model);
    let mut step = 0;
    'train: for epoch in 0..40 {
        for batch in batches(&ds, 4, epoch) {
            let input = StepInput {
                device: &device,
                precision: Precision::F32,
                segments: Some(2),
                seed: step,
            };
            let out = run_step(&task, &model, &batch, input, 1.0).unwrap();
            model = optim.step(1e-3, model, out.grads);
            step += 1;
            if step == 300 {
                break 'train;
            }
        }
    }
    let after = eval(&model);
    // The loss is the MSE of standardized accelerations: 1 for predicting the mean.
    assert!(before > 0.5, "{before}");
    assert!(
        after < 0.25 * before,
        "mean squared error {before} → {after}"
    );
}

/// On a GPU (a software Vulkan driver counts) a training step gives the CPU backend's
/// loss and gradients: the graph's gathers, its reshape-and-sum aggregation and the
/// checkpointed chunks are the same function on every device. Skipped without a GPU
/// unless `FRUGAL_REQUIRE_GPU` is set.
#[test]
fn a_step_on_the_gpu_gives_the_cpu_gradients() {
    use frugal_train::device::{DeviceChoice, pick};
    let gpu = match pick(DeviceChoice::Gpu) {
        Ok(p) => p,
        Err(e) => {
            assert!(
                std::env::var_os("FRUGAL_REQUIRE_GPU").is_none(),
                "FRUGAL_REQUIRE_GPU is set but {e}"
            );
            use std::io::Write;
            let _ = writeln!(std::io::stderr().lock(), "skipped: {e}");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let ds = dataset(dir.path(), 2, 4);
    let task = task(&ds);
    let cpu = Device::flex().autodiff();
    let model = init_on_cpu(&task, 5, &cpu);
    let on_gpu = gpu.device.clone().autodiff();
    let gpu_model = move_to(model.clone(), &on_gpu);
    let batch = batches(&ds, 2, 1).next().unwrap();
    for segments in [None, Some(task.blocks())] {
        let input = |device| StepInput {
            device,
            precision: Precision::F32,
            segments,
            seed: 4,
        };
        let a = run_step(&task, &gpu_model, &batch, input(&on_gpu), 1.0).unwrap();
        let b = run_step(&task, &model, &batch, input(&cpu), 1.0).unwrap();
        let (la, lb) = (scalar(&a.loss), scalar(&b.loss));
        assert!(
            (la - lb).abs() <= 1e-4 * lb.abs(),
            "{segments:?}: gpu {la}, cpu {lb}"
        );
        let err = max_relative_error(&model, &a.grads, &b.grads);
        assert!(
            err <= 1e-3,
            "{segments:?} on {}: relative error {err}",
            gpu.name
        );
    }
}
