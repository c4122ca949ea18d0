//! Shared by the integration tests of this crate.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

/// The largest relative difference (max |a − b| / max |b|, per parameter) between two sets
/// of gradients over every parameter of `model`; panics if either lacks a parameter's
/// gradient.
#[allow(dead_code)] // not every test binary uses every helper
pub(crate) fn max_relative_error<M: Module>(
    model: &M,
    a: &GradientsParams,
    b: &GradientsParams,
) -> f32 {
    struct Compare<'a> {
        a: &'a GradientsParams,
        b: &'a GradientsParams,
        worst: f32,
    }
    impl ModuleVisitor for Compare<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let values = |g: &GradientsParams| -> Vec<f32> {
                g.get::<D>(param.id)
                    .expect("a gradient for every parameter")
                    .into_data()
                    .try_to_vec()
                    .unwrap()
            };
            let (a, b) = (values(self.a), values(self.b));
            let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
            let err = a
                .iter()
                .zip(&b)
                .fold(0f32, |m, (p, q)| m.max((p - q).abs()));
            self.worst = self.worst.max(err / scale);
        }
    }
    let mut compare = Compare { a, b, worst: 0.0 };
    model.visit(&mut compare);
    compare.worst
}
