//! Segment checkpointing gives the gradients of a plain backward pass, dropout included.

use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::optim::GradientsParams;
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

fn param_ids<M: Module>(m: &M) -> Vec<(burn::module::ParamId, usize)> {
    struct Ids(Vec<(burn::module::ParamId, usize)>);
    impl burn::module::ModuleVisitor for Ids {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.push((param.id, D));
        }
    }
    let mut ids = Ids(Vec::new());
    m.visit(&mut ids);
    ids.0
}

fn flat(g: &GradientsParams, id: burn::module::ParamId, rank: usize) -> Vec<f32> {
    match rank {
        1 => g
            .get::<1>(id)
            .expect("grad")
            .into_data()
            .try_to_vec::<f32>()
            .unwrap(),
        2 => g
            .get::<2>(id)
            .expect("grad")
            .into_data()
            .try_to_vec::<f32>()
            .unwrap(),
        _ => unreachable!(),
    }
}

#[test]
fn gradients_match_a_plain_backward_with_dropout() {
    let device = Device::flex().autodiff();
    for (case, (blocks, segments, width)) in
        [(1, 1, 8), (4, 2, 16), (7, 3, 12), (9, 9, 8), (12, 4, 32)]
            .into_iter()
            .enumerate()
    {
        device.seed(1000 + case as u64);
        let stack: Vec<Residual> = (0..blocks)
            .map(|_| Residual {
                linear: LinearConfig::new(width, width).init(&device),
            })
            .collect();
        let head = LinearConfig::new(width, 3).init(&device);
        let x = Tensor::<2>::random([5, width], Distribution::Normal(0.0, 1.0), &device);
        let target = Tensor::<2>::random([5, 3], Distribution::Normal(0.0, 1.0), &device);
        let loss =
            |head: &Linear, h: Tensor<2>| (head.forward(h) - target.clone()).powi_scalar(2).mean();
        let seed = 77 + case as u64;
        let a = segmented_backward(&stack, &head, x.clone(), segments, seed, loss);
        let b = plain_backward(&stack, &head, x.clone(), segments, seed, loss);
        assert!(
            (a.loss - b.loss).abs() <= 1e-6 * b.loss.abs().max(1.0),
            "{case}: {} vs {}",
            a.loss,
            b.loss
        );
        let mut ids = param_ids(&head);
        for s in &stack {
            ids.extend(param_ids(s));
        }
        for (id, rank) in ids {
            let ga = flat(&a.grads, id, rank);
            let gb = flat(&b.grads, id, rank);
            let scale = gb.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
            let err = ga
                .iter()
                .zip(&gb)
                .fold(0f32, |m, (p, q)| m.max((p - q).abs()));
            assert!(
                err / scale <= 1e-5,
                "case {case}: relative error {}",
                err / scale
            );
        }
    }
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
    let id = stack[0].linear.weight.id;
    assert_ne!(flat(&a.grads, id, 2), flat(&b.grads, id, 2));
}
