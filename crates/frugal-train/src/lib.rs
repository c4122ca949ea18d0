//! The training engine of frugal, on burn: a training loop over out-of-core datasets
//! ([`trainer`]) with the techniques that fit more model and batch into less memory —
//! segment checkpointing with dropout replayed exactly ([`checkpoint`]), gradient
//! accumulation over micro-batches ([`accumulate`]), bf16/f16 compute on f32 master
//! weights ([`precision`]) with dynamic loss scaling ([`scaler`]) — exact checkpoints
//! ([`snapshot`]), and a memory planner that predicts a run's peak before it starts
//! ([`mod@fit`], [`plan`]).
//!
//! A model family is a [`Task`]: how to make the model, turn a batch into its input, run
//! one forward and backward pass, and evaluate. Everything else is the engine's. Here a
//! task fits y = 2x + 1:
//!
//! ```
//! use burn::nn::{Linear, LinearConfig};
//! use burn::optim::GradientsParams;
//! use burn::tensor::{Device, Tensor, TensorData};
//! use frugal_store::{Batch, Column, DType, Dataset, DatasetWriter, Order, OrderSpec, Schema};
//! use frugal_train::{EvalOutput, Result, StepInput, StepOutput, Task, TrainData, TrainSpec};
//!
//! struct Line;
//!
//! fn column(batch: &Batch, name: &str, device: &Device) -> Tensor<2> {
//!     let values = batch.column(name).unwrap().as_slice::<f32>().unwrap().to_vec();
//!     Tensor::from_data(TensorData::new(values, [batch.samples, 1]), device)
//! }
//!
//! impl Task for Line {
//!     type Model = Linear;
//!     type Input = (Tensor<2>, Tensor<2>);
//!     fn init(&self, device: &Device) -> Linear {
//!         LinearConfig::new(1, 1).init(device)
//!     }
//!     fn prepare(&self, batch: &Batch, input: StepInput<'_>) -> Result<Self::Input> {
//!         Ok((column(batch, "x", input.device), column(batch, "y", input.device)))
//!     }
//!     fn step(&self, model: &Linear, (x, y): Self::Input, _: StepInput<'_>, scale: f64)
//!         -> Result<StepOutput> {
//!         let samples = x.dims()[0];
//!         let loss = (model.forward(x) - y).powf_scalar(2.0).mean();
//!         let grads = (loss.clone() * scale).backward();
//!         let grads = GradientsParams::from_grads(grads, model);
//!         Ok(StepOutput { loss: loss.detach(), grads, correct: None, samples, solves: Default::default() })
//!     }
//!     fn eval(&self, model: &Linear, batch: &Batch, device: &Device) -> Result<EvalOutput> {
//!         let device = device.clone().without_autodiff();
//!         let (x, y) = (column(batch, "x", &device), column(batch, "y", &device));
//!         let loss_sum = (model.forward(x) - y).powf_scalar(2.0).sum();
//!         Ok(EvalOutput { loss_sum, correct: None, samples: batch.samples })
//!     }
//! }
//!
//! # fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let schema = Schema::new(vec![Column::new("x", DType::F32, [1]), Column::new("y", DType::F32, [1])])?;
//! let mut writer = DatasetWriter::create(&dir.path().join("data"), schema, Default::default())?;
//! let xs: Vec<f32> = (0..256).map(|i| i as f32 / 128.0 - 1.0).collect();
//! let ys: Vec<f32> = xs.iter().map(|x| 2.0 * x + 1.0).collect();
//! let bytes = |v: &[f32]| v.iter().flat_map(|f| f.to_le_bytes()).collect::<Vec<u8>>();
//! writer.push_rows(256, &[&bytes(&xs), &bytes(&ys)])?;
//! writer.finish()?;
//! let data = Dataset::open(&dir.path().join("data"))?;
//! let data = TrainData { train: data.clone(), test: Some(data) };
//!
//! let mut spec = TrainSpec::new(OrderSpec { order: Order::Full, window: 256, spread: 1 });
//! spec.batch_size = 32;
//! spec.steps = Some(300);
//! spec.schedule.base = 0.05;
//! let device = frugal_train::device::cpu().device;
//! let run = frugal_train::train(&Line, &data, &spec, &device, &dir.path().join("run"), false, &mut |_| {})?;
//! assert!(run.test_loss.unwrap() < 1e-3);
//! # Ok(())
//! # }
//! ```

pub mod accumulate;
mod breakdown;
pub mod checkpoint;
mod deferred;
pub mod device;
mod error;
pub mod fit;
pub mod memory;
pub mod metrics;
pub mod plan;
pub mod precision;
pub mod scaler;
pub mod schedule;
mod segments;
pub mod snapshot;
mod task;
pub mod trainer;

pub use accumulate::Accumulator;
pub use checkpoint::{Block, Carry, Ctx, StepGrads, segment_ranges};
pub use deferred::{Deferred, StepResult};
pub use error::{Result, TrainError};
pub use fit::{Fit, Fitted, Planner, fit};
pub use metrics::Solves;
pub use precision::Precision;
pub use scaler::{LossScaler, ScaledStep};
pub use task::{EvalOutput, StepInput, StepOutput, Task};
pub use trainer::{Evaluation, TrainData, TrainSpec, run_step, train};
