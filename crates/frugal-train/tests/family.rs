//! A workload family in one file: a linear regression written against the trainer's seam
//! (`Task`) trains, is planned and fitted to a memory budget, and resumes to the same bytes
//! as an uninterrupted run. Nothing else in the engine is written for it.

use std::path::Path;

use burn::nn::{Linear, LinearConfig};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};
use frugal_store::{
    Batch, Column, DType, Dataset, DatasetWriter, Order, OrderSpec, Schema, WriterOptions,
};
use frugal_train::memory::CountingAlloc;
use frugal_train::schedule::{Decay, LrSchedule};
use frugal_train::trainer::{AdamWSpec, Event};
use frugal_train::{
    EvalOutput, Planner, Precision, Result, StepInput, StepOutput, Task, TrainData, TrainError,
    TrainSpec, fit, train,
};

// The planner profiles a step's heap through the counting allocator.
#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

const FEATURES: usize = 4;
const WEIGHTS: [f32; FEATURES] = [0.5, -1.0, 2.0, 0.25];
const BIAS: f32 = 0.3;

/// y = w·x + b from the columns `x` (FEATURES f32) and `y` (one f32).
struct Regression;

impl Regression {
    fn column(batch: &Batch, name: &str, width: usize, device: &Device) -> Result<Tensor<2>> {
        let col = batch
            .column(name)
            .ok_or_else(|| TrainError::MissingColumn {
                column: name.into(),
                hint: String::new(),
            })?;
        let values = col.as_slice::<f32>().expect("an f32 column").to_vec();
        Ok(Tensor::from_data(
            TensorData::new(values, [batch.samples, width]),
            device,
        ))
    }
}

impl Task for Regression {
    type Model = Linear;
    type Input = (Tensor<2>, Tensor<2>);

    fn init(&self, device: &Device) -> Linear {
        LinearConfig::new(FEATURES, 1).init(device)
    }

    fn prepare(&self, batch: &Batch, input: StepInput<'_>) -> Result<Self::Input> {
        Ok((
            Self::column(batch, "x", FEATURES, input.device)?,
            Self::column(batch, "y", 1, input.device)?,
        ))
    }

    fn step(
        &self,
        model: &Linear,
        (x, y): Self::Input,
        _: StepInput<'_>,
        loss_scale: f64,
    ) -> Result<StepOutput> {
        let samples = x.dims()[0];
        let loss = (model.forward(x) - y).powf_scalar(2.0).mean();
        let grads = (loss.clone() * loss_scale).backward();
        Ok(StepOutput {
            loss: loss.detach(),
            grads: GradientsParams::from_grads(grads, model),
            correct: None,
            samples,
            solves: Default::default(),
        })
    }

    fn eval(&self, model: &Linear, batch: &Batch, device: &Device) -> Result<EvalOutput> {
        let device = device.clone().without_autodiff();
        let x = Self::column(batch, "x", FEATURES, &device)?;
        let y = Self::column(batch, "y", 1, &device)?;
        let loss_sum = (model.forward(x) - y).powf_scalar(2.0).sum();
        Ok(EvalOutput {
            loss_sum,
            correct: None,
            samples: batch.samples,
        })
    }
}

/// `samples` rows of the regression with seed `seed`.
fn dataset(dir: &Path, samples: usize, seed: u64) -> Dataset {
    let schema = Schema::new(vec![
        Column::new("x", DType::F32, [FEATURES]),
        Column::new("y", DType::F32, [1]),
    ])
    .unwrap();
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut uniform = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    let mut xs = Vec::new();
    let mut ys = Vec::new();
    for _ in 0..samples {
        let x: Vec<f32> = (0..FEATURES).map(|_| uniform()).collect();
        let y = x.iter().zip(WEIGHTS).map(|(a, w)| a * w).sum::<f32>() + BIAS;
        xs.extend(x.iter().flat_map(|v| v.to_le_bytes()));
        ys.extend(y.to_le_bytes());
    }
    let mut w = DatasetWriter::create(dir, schema, WriterOptions::default()).unwrap();
    w.push_rows(samples as u64, &[&xs, &ys]).unwrap();
    w.finish().unwrap();
    Dataset::open(dir).unwrap()
}

fn data(dir: &Path) -> TrainData {
    TrainData {
        train: dataset(&dir.join("train"), 512, 1),
        test: Some(dataset(&dir.join("test"), 128, 2)),
    }
}

fn spec(steps: u64) -> TrainSpec {
    TrainSpec {
        seed: 3,
        batch_size: 32,
        grad_accum: 1,
        precision: Precision::F32,
        segments: None,
        epochs: 1,
        steps: Some(steps),
        adamw: AdamWSpec {
            weight_decay: 0.0,
            ..AdamWSpec::default()
        },
        schedule: LrSchedule {
            base: 2e-2,
            final_fraction: 0.1,
            decay: Decay::Cosine,
            warmup: 10,
            total: 0,
        },
        log_every: 10,
        eval_every: 50,
        checkpoint_every: 25,
        order: OrderSpec {
            order: Order::Full,
            window: 512,
            spread: 1,
        },
        stop_after: None,
        fingerprint: "regression".into(),
    }
}

fn cpu() -> Device {
    frugal_train::device::cpu().device
}

#[test]
fn a_regression_family_trains() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path());
    let s = train(
        &Regression,
        &data,
        &spec(300),
        &cpu(),
        &dir.path().join("run"),
        false,
        &mut |_: Event<'_>| {},
    )
    .unwrap();
    assert!(s.finished);
    assert_eq!(s.steps, 300);
    // y's variance is about 1.8; a fitted line leaves almost nothing.
    let test_loss = s.test_loss.unwrap();
    assert!(test_loss < 1e-3, "test loss {test_loss}");
    assert!(s.test_accuracy.is_none());
}

#[test]
fn a_regression_family_is_planned_and_fitted_to_a_budget() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path());
    let spec = spec(10);
    let mut planner = Planner::new(&Regression, &data, &spec, &cpu()).unwrap();
    assert_eq!(planner.params(), (FEATURES + 1) as u64);
    let plan = planner.configured().unwrap();
    assert_eq!(plan.batch, 32);
    let items: u64 = plan.items.iter().map(|i| i.bytes).sum();
    assert_eq!(items, plan.predicted_peak_bytes);
    let roomy = fit(&mut planner, plan.predicted_peak_bytes * 2, true).unwrap();
    assert!(!roomy.changed);
    match fit(&mut planner, 1 << 10, false) {
        Err(TrainError::OverBudget {
            budget_bytes,
            searched: false,
            ..
        }) => assert_eq!(budget_bytes, 1 << 10),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_regression_family_resumes_to_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path());
    let run = |out: &Path, stop_after: Option<u64>, resume: bool| {
        let mut s = spec(80);
        s.stop_after = stop_after;
        train(
            &Regression,
            &data,
            &s,
            &cpu(),
            out,
            resume,
            &mut |_: Event<'_>| {},
        )
        .unwrap()
    };
    let whole = run(&dir.path().join("whole"), None, false);
    let parts = dir.path().join("parts");
    let first = run(&parts, Some(37), false);
    assert!(!first.finished);
    let rest = run(&parts, None, true);
    assert!(rest.finished);
    assert_eq!(rest.resumed_from, Some(37));
    assert_eq!(
        std::fs::read(&whole.model_file).unwrap(),
        std::fs::read(&rest.model_file).unwrap(),
        "the resumed run ends with the uninterrupted run's weights"
    );
}
