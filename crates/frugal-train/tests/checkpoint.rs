//! Segment checkpointing gives the gradients of a plain backward pass, dropout included.

mod common;

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::gelu;
use burn::tensor::{Device, Distribution, Tensor};
use frugal_train::checkpoint::{Block, Ctx, plain_backward, segmented_backward};

#[derive(Module, Debug)]
struct Residual {
    linear: Linear,
}

const DROPOUT: f64 = 0.25;

impl Block for Residual {
    fn forward(&self, x: Tensor<2>, ctx: &Ctx) -> Tensor<2> {
        let y = ctx.dropout(gelu(self.linear.forward(x.clone())), DROPOUT);
        x + y
    }
}

#[derive(Module, Debug)]
struct Model {
    stack: Vec<Residual>,
    head: Linear,
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]

    /// Random stacks, segmentations, batches, inputs and dropout seeds: the checkpointed
    /// pass's loss and every parameter gradient equal the plain pass's.
    #[test]
    fn gradients_match_a_plain_backward_with_dropout(
        blocks in 1usize..12,
        segment_pick in 0usize..64,
        width in 2usize..24,
        batch in 1usize..9,
        seed in proptest::prelude::any::<u64>(),
    ) {
        let segments = 1 + segment_pick % blocks;
        let device = Device::flex().autodiff();
        device.seed(seed);
        let stack: Vec<Residual> = (0..blocks)
            .map(|_| Residual {
                linear: LinearConfig::new(width, width).init(&device),
            })
            .collect();
        let head = LinearConfig::new(width, 3).init(&device);
        let x = Tensor::<2>::random([batch, width], Distribution::Normal(0.0, 1.0), &device);
        let target = Tensor::<2>::random([batch, 3], Distribution::Normal(0.0, 1.0), &device);
        let loss =
            |head: &Linear, h: Tensor<2>| (head.forward(h) - target.clone()).powi_scalar(2).mean();
        let step_seed = seed.rotate_left(17);
        let a = segmented_backward(&stack, &head, x.clone(), segments, step_seed, loss);
        let b = plain_backward(&stack, &head, x, step_seed, loss);
        let (la, lb) = (a.loss_value(), b.loss_value());
        proptest::prop_assert!(
            (la - lb).abs() <= 1e-6 * lb.abs().max(1.0),
            "{} vs {}",
            la,
            lb
        );
        let model = Model { stack, head };
        let err = common::max_relative_error(&model, &a.grads, &b.grads);
        proptest::prop_assert!(err <= 1e-5, "relative error {}", err);
    }
}

/// One block applied several times (weight tying, as in a block iterated to a fixed
/// point): each segment's backward gives part of the shared parameters' gradient, and the
/// parts must add up to the plain backward's.
#[test]
fn a_shared_block_gets_the_sum_of_its_segments_gradients() {
    let device = Device::flex().autodiff();
    device.seed(21);
    let block = Residual {
        linear: LinearConfig::new(8, 8).init(&device),
    };
    let stack = vec![block; 6];
    let head = LinearConfig::new(8, 2).init(&device);
    let x = Tensor::<2>::random([4, 8], Distribution::Normal(0.0, 1.0), &device);
    let loss = |head: &Linear, h: Tensor<2>| head.forward(h).powi_scalar(2).mean();
    let a = segmented_backward(&stack, &head, x.clone(), 3, 9, loss);
    let b = plain_backward(&stack, &head, x, 9, loss);
    let model = Model { stack, head };
    let err = common::max_relative_error(&model, &a.grads, &b.grads);
    assert!(err <= 1e-5, "relative error {err}");
}

/// Without replaying the seed the masks differ: the test above would notice a broken replay.
#[test]
fn a_different_seed_gives_different_gradients() {
    let device = Device::flex().autodiff();
    device.seed(5);
    let stack: Vec<Residual> = (0..4)
        .map(|_| Residual {
            linear: LinearConfig::new(8, 8).init(&device),
        })
        .collect();
    let head = LinearConfig::new(8, 1).init(&device);
    let x = Tensor::<2>::random([4, 8], Distribution::Normal(0.0, 1.0), &device);
    let loss = |head: &Linear, h: Tensor<2>| head.forward(h).powi_scalar(2).mean();
    let a = segmented_backward(&stack, &head, x.clone(), 2, 1, loss);
    let b = segmented_backward(&stack, &head, x, 2, 2, loss);
    let model = Model { stack, head };
    assert!(common::max_relative_error(&model, &a.grads, &b.grads) > 1e-3);
}
