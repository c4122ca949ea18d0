//! The looped transformer trained by EqProp through the training engine's task seam: on
//! images whose class is where a bright square sits, a few hundred steps take it far past
//! chance, and the free phase converges on every batch.

use std::path::Path;

use burn::optim::AdamWConfig;
use burn::tensor::Device;
use frugal_models::classifier::{Arch, Classifier};
use frugal_models::eqprop::{Dynamics, EqPropClassifier, Width};
use frugal_rand::SplitMix64;
use frugal_store::{Column, DType, Dataset, DatasetWriter, Schema, WriterOptions};
use frugal_train::checkpoint::scalar;
use frugal_train::{Precision, StepInput, Task, run_step};

mod common;
use common::batches;

const SIDE: usize = 16;

/// `n` 16×16 byte images of faint noise with a bright 4×4 square in one of the four
/// quadrants, the quadrant being the label.
fn dataset(dir: &Path, n: usize, seed: u64) -> Dataset {
    let schema = Schema {
        columns: vec![
            Column::new("image", DType::U8, [SIDE, SIDE]),
            Column::new("label", DType::U8, []),
        ],
    };
    let mut w = DatasetWriter::create(dir, schema, WriterOptions::default()).unwrap();
    let mut rng = SplitMix64::new(seed);
    for _ in 0..n {
        let label = (rng.next_u64() % 4) as usize;
        let mut image: Vec<u8> = (0..SIDE * SIDE)
            .map(|_| (rng.next_u64() % 40) as u8)
            .collect();
        let half = SIDE / 2;
        let (qy, qx) = ((label / 2) * half, (label % 2) * half);
        let (y0, x0) = (
            qy + (rng.next_u64() % 5) as usize,
            qx + (rng.next_u64() % 5) as usize,
        );
        for y in y0..y0 + 4 {
            for x in x0..x0 + 4 {
                image[y * SIDE + x] = 255;
            }
        }
        w.push_sample(&[&image, &[label as u8]]).unwrap();
    }
    w.finish().unwrap();
    Dataset::open(dir).unwrap()
}

/// The image and label columns of a dataset `dataset` wrote, for 4 classes.
fn columns(ds: &Dataset) -> Classifier {
    Classifier::for_schema(
        Arch::Mlp,
        Vec::new(),
        0.0,
        4,
        &ds.manifest().schema,
        "image",
        "label",
    )
    .unwrap()
}

#[test]
fn eqprop_learns_where_the_square_is() {
    let dir = tempfile::tempdir().unwrap();
    let train = dataset(&dir.path().join("train"), 512, 1);
    let held = dataset(&dir.path().join("held"), 256, 2);
    let columns = columns(&train);
    let width = Width {
        d_model: 16,
        heads: 2,
        d_head: 8,
        memories: 32,
        patch: 4,
    };
    let dynamics = Dynamics {
        damping: 0.5,
        tol: 1e-4,
        max_iters: 100,
        lambda: 1.0,
    };
    let task = EqPropClassifier::new(columns, width, dynamics, 0.1).unwrap();
    assert_eq!((task.shape.tokens, task.shape.token_dim), (16, 16));
    let device = Device::flex().autodiff();
    device.seed(4);
    let mut model = task.init(&device);
    let mut optim = AdamWConfig::new().init();
    let accuracy = |model: &frugal_models::eqprop::LoopedTransformer| -> f64 {
        let (mut right, mut n) = (0i64, 0usize);
        for b in batches(&held, 128, 0) {
            let out = task.eval(model, &b, &device).unwrap();
            right += out.correct.unwrap().into_scalar::<i64>();
            n += out.samples;
        }
        right as f64 / n as f64
    };
    let before = accuracy(&model);
    let mut step = 0;
    'train: for epoch in 0..20 {
        for batch in batches(&train, 32, epoch) {
            let input = StepInput {
                device: &device,
                precision: Precision::F32,
                segments: None,
                seed: step,
            };
            let out = run_step(&task, &model, &batch, input, 1.0).unwrap();
            assert!(scalar(&out.loss).is_finite());
            model = optim.step(3e-3, model, out.grads);
            step += 1;
            if step == 120 {
                break 'train;
            }
        }
    }
    let after = accuracy(&model);
    assert!(
        after >= 0.8 && after > before + 0.3,
        "held-out accuracy {before} → {after}"
    );
}

/// Images that do not split into whole patches, and a β of zero, are refused with the key.
#[test]
fn bad_settings_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let ds = dataset(dir.path(), 4, 1);
    let columns = columns(&ds);
    let width = Width {
        d_model: 8,
        heads: 1,
        d_head: 4,
        memories: 8,
        patch: 5,
    };
    let err = EqPropClassifier::new(columns.clone(), width, Dynamics::default(), 0.1)
        .unwrap_err()
        .to_string();
    assert!(err.contains("model.patch"), "{err}");
    let width = Width { patch: 4, ..width };
    let err = EqPropClassifier::new(columns, width, Dynamics::default(), 0.0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("eqprop.beta"), "{err}");
}
