//! Micro-batches accumulated give the whole batch's gradients.

mod common;

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::gelu;
use burn::tensor::{Device, Distribution, Tensor};
use frugal_train::Accumulator;
use frugal_train::checkpoint::{Block, Ctx, plain_backward, segmented_backward};

#[derive(Module, Debug)]
struct Residual {
    linear: Linear,
}

impl Block for Residual {
    fn forward(&self, x: Tensor<2>, _: &Ctx) -> Tensor<2> {
        x.clone() + gelu(self.linear.forward(x))
    }
}

#[derive(Module, Debug)]
struct Model {
    stack: Vec<Residual>,
    head: Linear,
}

#[test]
fn uneven_micro_batches_add_up_to_the_whole_batch() {
    let device = Device::flex().autodiff();
    device.seed(11);
    let width = 16;
    let model = Model {
        stack: (0..5)
            .map(|_| Residual {
                linear: LinearConfig::new(width, width).init(&device),
            })
            .collect(),
        head: LinearConfig::new(width, 4).init(&device),
    };
    let x = Tensor::<2>::random([10, width], Distribution::Normal(0.0, 1.0), &device);
    let y = Tensor::<2>::random([10, 4], Distribution::Normal(0.0, 1.0), &device);
    let step = |start: usize, len: usize, segments: usize| {
        let target = y.clone().narrow(0, start, len);
        let loss = |head: &Linear, h: Tensor<2>| (head.forward(h) - target).powi_scalar(2).mean();
        let input = x.clone().narrow(0, start, len);
        if segments == 1 {
            plain_backward(&model.stack, &model.head, input, 0, loss)
        } else {
            segmented_backward(&model.stack, &model.head, input, segments, 0, loss)
        }
    };
    let whole = step(0, 10, 1);
    for segments in [1, 3] {
        let mut acc = Accumulator::new();
        for (start, len) in [(0, 3), (3, 5), (8, 2)] {
            acc.add(&model, step(start, len, segments), len);
        }
        assert_eq!(acc.samples(), 10);
        let micro = acc.finish(&model);
        let (micro_loss, whole_loss) = (micro.loss_value(), whole.loss_value());
        assert!(
            (micro_loss - whole_loss).abs() <= 1e-5 * whole_loss,
            "{micro_loss} vs {whole_loss}"
        );
        let err = common::max_relative_error(&model, &micro.grads, &whole.grads);
        assert!(err <= 1e-5, "segments {segments}: relative error {err}");
    }
}

#[test]
fn the_scaler_sees_an_overflow_and_unscales() {
    use frugal_train::accumulate::scale_grads;
    use frugal_train::scaler::grads_finite;
    let device = Device::flex().autodiff();
    device.seed(3);
    let model = Model {
        stack: vec![Residual {
            linear: LinearConfig::new(4, 4).init(&device),
        }],
        head: LinearConfig::new(4, 1).init(&device),
    };
    let x = Tensor::<2>::random([3, 4], Distribution::Normal(0.0, 1.0), &device);
    let loss = |head: &Linear, h: Tensor<2>| head.forward(h).powi_scalar(2).mean();
    let step = plain_backward(&model.stack, &model.head, x, 0, loss);
    let mut grads = step.grads;
    assert!(grads_finite(&model, &grads).unwrap());
    let id = model.head.weight.id;
    let before: Vec<f32> = grads
        .get::<2>(id)
        .unwrap()
        .into_data()
        .try_to_vec()
        .unwrap();
    scale_grads(&model, &mut grads, 0.25);
    let after: Vec<f32> = grads
        .get::<2>(id)
        .unwrap()
        .into_data()
        .try_to_vec()
        .unwrap();
    assert!(
        before
            .iter()
            .zip(&after)
            .all(|(b, a)| (b * 0.25 - a).abs() <= 1e-7 * b.abs().max(1.0))
    );
    scale_grads(&model, &mut grads, f64::INFINITY);
    assert!(!grads_finite(&model, &grads).unwrap());
}
