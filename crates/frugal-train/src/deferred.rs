//! Step results left on the device until they are needed.
//!
//! Reading a value computed on a GPU makes the host wait until the device has run
//! everything queued before it; read once a step, the host can never queue the next step
//! while the device runs this one. The loop keeps each step's loss and right answers as
//! device tensors here and reads them all in one transfer when it writes a metrics record
//! or a checkpoint: every `log_every` steps, not every step.

use burn::tensor::{FloatDType, Int, Tensor};

use crate::error::{Result, TrainError};

/// One step's results, read back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepResult {
    /// Mean loss over the step's samples.
    pub loss: f64,
    /// Samples in the step.
    pub samples: u64,
    /// Samples classified right, for tasks with classes.
    pub correct: Option<u64>,
}

/// Steps whose results are still on the device, in order.
#[derive(Debug, Default)]
pub struct Deferred {
    losses: Vec<Tensor<1>>,
    correct: Vec<Option<Tensor<1, Int>>>,
    samples: Vec<u64>,
}

impl Deferred {
    /// Nothing pending.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a step: its one-element loss tensor, its right answers (a one-element integer
    /// tensor) and its sample count.
    pub fn push(&mut self, loss: Tensor<1>, correct: Option<Tensor<1, Int>>, samples: u64) {
        self.losses.push(loss);
        self.correct.push(correct);
        self.samples.push(samples);
    }

    /// Steps pending.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether no step is pending.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Reads every pending step's results, in the order they were pushed, with one
    /// transfer for the losses and one for the right answers; nothing is left pending.
    pub fn read(&mut self) -> Result<Vec<StepResult>> {
        if self.is_empty() {
            return Ok(Vec::new());
        }
        let losses: Vec<Tensor<1>> = std::mem::take(&mut self.losses)
            .into_iter()
            .map(|l| l.cast(FloatDType::F32))
            .collect();
        let losses = Tensor::cat(losses, 0)
            .try_into_vec_as::<f32>()
            .map_err(|e| TrainError::Device(format!("reading the step losses: {e}")))?;
        let correct = std::mem::take(&mut self.correct);
        let counted: Vec<Tensor<1, Int>> = correct.iter().flatten().cloned().collect();
        let mut counts = if counted.is_empty() {
            Vec::new()
        } else {
            Tensor::cat(counted, 0)
                .try_into_vec_as::<i64>()
                .map_err(|e| TrainError::Device(format!("reading the step accuracies: {e}")))?
        }
        .into_iter();
        let samples = std::mem::take(&mut self.samples);
        Ok(losses
            .into_iter()
            .zip(correct)
            .zip(samples)
            .map(|((loss, c), samples)| StepResult {
                loss: f64::from(loss),
                samples,
                correct: c.and_then(|_| counts.next()).map(|n| n.max(0) as u64),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    #[test]
    fn reads_in_push_order_with_and_without_counts() {
        let device = Device::flex();
        let one = |v: f32| Tensor::<1>::from_data(TensorData::new(vec![v], [1]), &device);
        let count = |v: i64| Tensor::<1, Int>::from_data(TensorData::new(vec![v], [1]), &device);
        let mut d = Deferred::new();
        assert!(d.read().unwrap().is_empty());
        d.push(one(0.5), Some(count(3)), 4);
        d.push(one(0.25), None, 2);
        d.push(one(2.0), Some(count(7)), 8);
        assert_eq!(d.len(), 3);
        let r = d.read().unwrap();
        assert!(d.is_empty());
        assert_eq!(
            r,
            vec![
                StepResult {
                    loss: 0.5,
                    samples: 4,
                    correct: Some(3)
                },
                StepResult {
                    loss: 0.25,
                    samples: 2,
                    correct: None
                },
                StepResult {
                    loss: 2.0,
                    samples: 8,
                    correct: Some(7)
                },
            ]
        );
    }
}
