//! A synthetic classification dataset that a model can actually learn: features drawn
//! uniformly with unit variance, labels from a fixed random teacher network
//! (`argmax(W2 · tanh(W1 · x / √F) − b)`), `b` centring the classes so they are roughly
//! balanced. Shard `i` depends only on (seed, i), so any number of threads writes the
//! same bytes, and a killed run continues with only the missing shards.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::DType;
use crate::error::{Result, StoreError};
use crate::manifest::{Column, Manifest, Schema};
use crate::shard::ShardBuffer;
use crate::writer::{generate_shards, samples_per_shard};
use frugal_rand::SplitMix64 as Rng;

/// What to generate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyntheticSpec {
    /// Samples.
    pub samples: u64,
    /// Features per sample (column `x`, f32).
    pub features: usize,
    /// Classes (column `y`, i64 in `[0, classes)`).
    pub classes: usize,
    /// Width of the teacher's hidden layer.
    pub hidden: usize,
    /// Seed of the teacher and of every sample.
    pub seed: u64,
    /// Target shard size in bytes.
    pub shard_bytes: u64,
    /// Which independent stream of samples to draw (same teacher): 0 for a training
    /// split, 1 for its held-out split, and so on.
    #[serde(default)]
    pub sample_stream: u64,
}

impl SyntheticSpec {
    /// The dataset's columns: `x` (f32 × features) and `y` (i64 label).
    pub fn schema(&self) -> Schema {
        Schema {
            columns: vec![
                Column::new("x", DType::F32, [self.features]),
                Column::new("y", DType::I64, []),
            ],
        }
    }

    fn check(&self) -> Result<()> {
        if self.samples == 0 || self.features == 0 || self.classes < 2 || self.hidden == 0 {
            return Err(StoreError::Setting {
                setting: "synthetic dataset",
                value: format!(
                    "{} samples, {} features, {} classes, hidden {}",
                    self.samples, self.features, self.classes, self.hidden
                ),
                problem: "needs samples ≥ 1, features ≥ 1, classes ≥ 2 and hidden ≥ 1".into(),
            });
        }
        Ok(())
    }
}

/// The fixed random network that labels samples.
#[derive(Debug, Clone)]
pub struct Teacher {
    features: usize,
    hidden: usize,
    classes: usize,
    w1: Vec<f32>,
    w2: Vec<f32>,
    bias: Vec<f32>,
}

/// Uniform on `[-√3, √3)`: mean 0, variance 1.
fn unit(bits: u32) -> f32 {
    const SCALE: f32 = 2.0 * 1.732_050_8 / (1u32 << 24) as f32;
    (bits >> 8) as f32 * SCALE - 1.732_050_8
}

fn fill(rng: &mut Rng, out: &mut [f32]) {
    let mut chunks = out.chunks_exact_mut(2);
    for pair in &mut chunks {
        let r = rng.next_u64();
        pair[0] = unit(r as u32);
        pair[1] = unit((r >> 32) as u32);
    }
    if let [last] = chunks.into_remainder() {
        *last = unit(rng.next_u64() as u32);
    }
}

impl Teacher {
    /// The teacher for a spec.
    pub fn new(spec: &SyntheticSpec) -> Self {
        let mut rng = Rng::new(spec.seed ^ 0x7ea0_c4e5_0000_0000);
        let mut w1 = vec![0.0; spec.hidden * spec.features];
        let mut w2 = vec![0.0; spec.classes * spec.hidden];
        fill(&mut rng, &mut w1);
        fill(&mut rng, &mut w2);
        let mut t = Self {
            features: spec.features,
            hidden: spec.hidden,
            classes: spec.classes,
            w1,
            w2,
            bias: vec![0.0; spec.classes],
        };
        // Centre each logit on a calibration sample so argmax spreads over the classes.
        let n = 1024;
        let mut x = vec![0.0; spec.features];
        let mut mean = vec![0.0f64; spec.classes];
        let mut logits = vec![0.0; spec.classes];
        for _ in 0..n {
            fill(&mut rng, &mut x);
            t.logits(&x, &mut logits);
            for (m, l) in mean.iter_mut().zip(&logits) {
                *m += *l as f64 / n as f64;
            }
        }
        t.bias = mean.iter().map(|&m| m as f32).collect();
        t
    }

    fn logits(&self, x: &[f32], out: &mut [f32]) {
        let scale = 1.0 / (self.features as f32).sqrt();
        let mut h = vec![0.0f32; self.hidden];
        for (hj, row) in h.iter_mut().zip(self.w1.chunks_exact(self.features)) {
            // Eight partial sums vectorise; one running sum would not.
            let mut acc = [0.0f32; 8];
            let mut rc = row.chunks_exact(8);
            let mut xc = x.chunks_exact(8);
            for (r, v) in (&mut rc).zip(&mut xc) {
                for k in 0..8 {
                    acc[k] += r[k] * v[k];
                }
            }
            let tail: f32 = rc
                .remainder()
                .iter()
                .zip(xc.remainder())
                .map(|(a, b)| a * b)
                .sum();
            *hj = ((acc.iter().sum::<f32>() + tail) * scale).tanh();
        }
        for ((o, row), b) in out
            .iter_mut()
            .zip(self.w2.chunks_exact(self.hidden))
            .zip(&self.bias)
        {
            *o = row.iter().zip(&h).map(|(a, b)| a * b).sum::<f32>() - b;
        }
    }

    /// The label of `x`.
    pub fn label(&self, x: &[f32]) -> i64 {
        let mut logits = vec![0.0; self.classes];
        self.logits(x, &mut logits);
        let mut best = 0;
        for (i, &l) in logits.iter().enumerate() {
            if l > logits[best] {
                best = i;
            }
        }
        best as i64
    }
}

/// Fills `buffer` with shard `index` of the dataset.
fn fill_shard(
    spec: &SyntheticSpec,
    teacher: &Teacher,
    per_shard: u64,
    index: u64,
    buffer: &mut ShardBuffer,
) -> Result<()> {
    let first = index * per_shard;
    let n = per_shard.min(spec.samples - first);
    // Stream 0 keeps the original derivation, so existing datasets stay reproducible.
    let stream = spec
        .sample_stream
        .wrapping_mul(0xd6e8_feb8_6659_fd93)
        .rotate_left(32);
    let mut rng = Rng::new(spec.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ index ^ stream);
    buffer.push_with(n, |columns| {
        let [x, y] = columns else {
            unreachable!("two columns")
        };
        // Column buffers are byte vectors; generate f32s in a chunk and copy, which is
        // cheap next to the teacher's arithmetic and keeps this free of alignment
        // assumptions.
        let mut sample = vec![0.0f32; spec.features];
        for (xs, ys) in x
            .chunks_exact_mut(spec.features * 4)
            .zip(y.chunks_exact_mut(8))
        {
            fill(&mut rng, &mut sample);
            xs.copy_from_slice(bytemuck::cast_slice(&sample));
            ys.copy_from_slice(&teacher.label(&sample).to_le_bytes());
        }
    });
    Ok(())
}

/// Writes the dataset into `dir` with `threads` writers, or finishes a killed run.
/// `progress` is called with the samples of each shard written (shards already on disk
/// are reported first). Refuses a directory holding anything else.
pub fn generate(
    dir: &Path,
    spec: &SyntheticSpec,
    threads: usize,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Manifest> {
    spec.check()?;
    let schema = spec.schema();
    let per_shard = samples_per_shard(&schema, spec.shard_bytes);
    let shards = spec.samples.div_ceil(per_shard);
    let teacher = Teacher::new(spec);
    let spec_json = serde_json::to_value(spec).expect("json");
    let mut metadata = std::collections::BTreeMap::new();
    metadata.insert(
        "generator".into(),
        serde_json::Value::from("frugal data gen synthetic"),
    );
    metadata.insert("synthetic".into(), spec_json.clone());
    generate_shards(
        dir,
        &schema,
        &spec_json,
        shards,
        threads,
        None,
        &|index, buffer| fill_shard(spec, &teacher, per_shard, index, buffer),
        progress,
        metadata,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_features_have_unit_variance() {
        let mut rng = Rng::new(3);
        let mut x = vec![0.0f32; 100_001];
        fill(&mut rng, &mut x);
        let mean = x.iter().map(|&v| v as f64).sum::<f64>() / x.len() as f64;
        let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / x.len() as f64;
        assert!(mean.abs() < 0.01, "{mean}");
        assert!((var - 1.0).abs() < 0.02, "{var}");
    }

    #[test]
    fn datasets_are_fixed_forever() {
        // Regenerating a dataset must give the bytes written before: pin two splits'
        // shard checksums.
        let pinned = |stream: u64| {
            let dir = tempfile::tempdir().unwrap();
            let spec = SyntheticSpec {
                samples: 300,
                features: 5,
                classes: 3,
                hidden: 4,
                seed: 21,
                shard_bytes: 4096,
                sample_stream: stream,
            };
            let m = generate(dir.path(), &spec, 2, &|_| {}).unwrap();
            m.shards
                .iter()
                .map(|s| s.checksum.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            pinned(0),
            [
                "xxh3-64:bf6f8da9ee01f19b",
                "xxh3-64:7378dffd08540401",
                "xxh3-64:7856d31424d46fd6"
            ]
        );
        assert_eq!(
            pinned(1),
            [
                "xxh3-64:268ad03a04f1688c",
                "xxh3-64:23d00aa78716b54b",
                "xxh3-64:f91ccd7015877f6f"
            ]
        );
    }

    #[test]
    fn teacher_labels_spread_over_classes() {
        let spec = SyntheticSpec {
            samples: 1,
            features: 64,
            classes: 10,
            hidden: 32,
            seed: 9,
            shard_bytes: 1 << 20,
            sample_stream: 0,
        };
        let t = Teacher::new(&spec);
        let mut rng = Rng::new(77);
        let mut counts = [0u32; 10];
        let mut x = vec![0.0; 64];
        for _ in 0..5000 {
            fill(&mut rng, &mut x);
            counts[t.label(&x) as usize] += 1;
        }
        // No class vanishes, none takes over.
        assert!(
            counts.iter().all(|&c| (50..2000).contains(&c)),
            "{counts:?}"
        );
    }
}
