//! Randomly drawn neural operators (the seed-002 workload): each operator's architecture is
//! drawn from a parameter space, reproducibly from (space, seed, operator index) alone, and
//! its initial fields are smooth random fields drawn per realization.
//!
//! Everything here is drawn on the host with frugal-rand, never with a device's random
//! generator, so operator *i* is the same on every backend and machine.
//!
//! ```
//! use frugal_models::operator::{OperatorSpace, smooth_field};
//! let space = OperatorSpace::default();
//! space.validate().unwrap();
//! let a = space.draw(7, 42);
//! assert_eq!(a, space.draw(7, 42));
//! let field = smooth_field(16, 16, 3, 4, 7, 42, 0);
//! assert_eq!(field.len(), 3 * 16 * 16);
//! ```

use frugal_rand::{SplitMix64, mix64};
use serde::{Deserialize, Serialize};

/// Normalisation after each hidden convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Norm {
    /// Per-sample, per-channel normalisation over the field (instance norm).
    Instance,
    /// None.
    None,
}

/// Activation after each hidden layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// Gaussian error linear unit.
    Gelu,
    /// Hyperbolic tangent.
    Tanh,
    /// Rectified linear unit.
    Relu,
}

/// The space operators are drawn from. Ranges are inclusive `[low, high]`; lists are the
/// choices drawn among uniformly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OperatorSpace {
    /// Convolution layers.
    pub layers: [u32; 2],
    /// Channels of the hidden layers.
    pub channels: [u32; 2],
    /// Kernel sizes (odd).
    pub kernel: Vec<u32>,
    /// Normalisations.
    pub norm: Vec<Norm>,
    /// Activations.
    pub activation: Vec<Activation>,
    /// Whether the operator adds its input back (a residual update).
    pub residual: Vec<bool>,
    /// Time-step scale, drawn log-uniformly: `state + dt·op(state)`.
    pub dt: [f64; 2],
}

impl Default for OperatorSpace {
    /// The seed's operators: 4 layers, up to 64 channels, 3×3 kernels, instance norm, GELU.
    fn default() -> Self {
        Self {
            layers: [4, 4],
            channels: [16, 64],
            kernel: vec![3],
            norm: vec![Norm::Instance],
            activation: vec![Activation::Gelu],
            residual: vec![true],
            dt: [0.01, 0.1],
        }
    }
}

/// What is wrong with an [`OperatorSpace`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("operator space: `{field}` = {value}: {expected}")]
pub struct SpaceError {
    /// The field.
    pub field: &'static str,
    /// Its value.
    pub value: String,
    /// What it must be.
    pub expected: &'static str,
}

/// One operator's architecture, drawn from an [`OperatorSpace`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Architecture {
    /// Convolution layers (at least 1; the last maps back to the field's channels).
    pub layers: u32,
    /// Channels of the hidden layers.
    pub channels: u32,
    /// Kernel size (odd).
    pub kernel: u32,
    /// Normalisation.
    pub norm: Norm,
    /// Activation.
    pub activation: Activation,
    /// Whether the update is residual.
    pub residual: bool,
    /// Time-step scale.
    pub dt: f64,
    /// The seed its weights are drawn from.
    pub weight_seed: u64,
}

impl OperatorSpace {
    /// Checks ranges and choices.
    pub fn validate(&self) -> Result<(), SpaceError> {
        let bad = |field, value: String, expected| {
            Err(SpaceError {
                field,
                value,
                expected,
            })
        };
        let range = |r: [u32; 2]| format!("[{}, {}]", r[0], r[1]);
        if self.layers[0] == 0 || self.layers[0] > self.layers[1] || self.layers[1] > 64 {
            return bad("layers", range(self.layers), "1 ≤ low ≤ high ≤ 64");
        }
        if self.channels[0] == 0 || self.channels[0] > self.channels[1] || self.channels[1] > 4096 {
            return bad("channels", range(self.channels), "1 ≤ low ≤ high ≤ 4096");
        }
        if self.kernel.is_empty() || self.kernel.iter().any(|&k| k % 2 == 0 || k > 15) {
            return bad(
                "kernel",
                format!("{:?}", self.kernel),
                "a non-empty list of odd sizes up to 15",
            );
        }
        if self.norm.is_empty() {
            return bad(
                "norm",
                "[]".into(),
                "at least one of \"instance\", \"none\"",
            );
        }
        if self.activation.is_empty() {
            return bad(
                "activation",
                "[]".into(),
                "at least one of \"gelu\", \"tanh\", \"relu\"",
            );
        }
        if self.residual.is_empty() {
            return bad("residual", "[]".into(), "at least one of true, false");
        }
        let [lo, hi] = self.dt;
        if !(lo.is_finite() && hi.is_finite() && lo > 0.0 && lo <= hi) {
            return bad("dt", format!("[{lo}, {hi}]"), "0 < low ≤ high, finite");
        }
        Ok(())
    }

    /// Operator `index` of the run seeded `seed`: a pure function of the space, the seed
    /// and the index.
    pub fn draw(&self, seed: u64, index: u64) -> Architecture {
        let mut rng = SplitMix64::new(mix64(seed ^ mix64(index.wrapping_add(1))));
        let mut within = |r: [u32; 2]| r[0] + rng.below(u64::from(r[1] - r[0]) + 1) as u32;
        let layers = within(self.layers);
        let channels = within(self.channels);
        let mut pick = |n: usize| rng.below(n as u64) as usize;
        let kernel = self.kernel[pick(self.kernel.len())];
        let norm = self.norm[pick(self.norm.len())];
        let activation = self.activation[pick(self.activation.len())];
        let residual = self.residual[pick(self.residual.len())];
        let [lo, hi] = self.dt;
        let dt = (lo.ln() + rng.uniform() * (hi.ln() - lo.ln())).exp();
        Architecture {
            layers,
            channels,
            kernel,
            norm,
            activation,
            residual,
            dt,
            weight_seed: rng.next_u64(),
        }
    }
}

/// A standard normal draw (Box–Muller), from two uniforms.
fn normal(rng: &mut SplitMix64) -> f64 {
    let u = 1.0 - rng.uniform(); // (0, 1]: the logarithm stays finite
    let v = rng.uniform();
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

/// A smooth, periodic random field of `channels × height × width` (channel-major), for
/// realization `realization` of operator `operator` of the run seeded `seed`: per channel,
/// the Fourier modes with wave numbers up to `modes` in each direction, amplitudes drawn
/// normal and damped as 1/(1 + |k|²), phases uniform; scaled to zero mean and unit RMS.
pub fn smooth_field(
    height: usize,
    width: usize,
    channels: usize,
    modes: u32,
    seed: u64,
    operator: u64,
    realization: u64,
) -> Vec<f32> {
    let mut rng = SplitMix64::new(mix64(
        seed ^ mix64(operator.wrapping_add(1) ^ mix64(realization.wrapping_add(0x5eed))),
    ));
    let m = modes as i64;
    let mut out = Vec::with_capacity(channels * height * width);
    let mut plane = vec![0f64; height * width];
    for _ in 0..channels {
        plane.iter_mut().for_each(|v| *v = 0.0);
        for ky in -m..=m {
            for kx in -m..=m {
                if kx == 0 && ky == 0 {
                    continue;
                }
                let amplitude = normal(&mut rng) / (1.0 + (kx * kx + ky * ky) as f64);
                let phase = rng.uniform() * std::f64::consts::TAU;
                for y in 0..height {
                    let ay = std::f64::consts::TAU * (ky * y as i64) as f64 / height as f64;
                    for x in 0..width {
                        let ax = std::f64::consts::TAU * (kx * x as i64) as f64 / width as f64;
                        plane[y * width + x] += amplitude * (ax + ay + phase).cos();
                    }
                }
            }
        }
        let n = plane.len().max(1) as f64;
        let mean = plane.iter().sum::<f64>() / n;
        let rms = (plane.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
        let scale = if rms > 0.0 { 1.0 / rms } else { 0.0 };
        out.extend(plane.iter().map(|v| ((v - mean) * scale) as f32));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operators_are_reproducible_and_cover_the_space() {
        let space = OperatorSpace {
            layers: [2, 5],
            channels: [16, 64],
            kernel: vec![3, 5],
            norm: vec![Norm::Instance, Norm::None],
            activation: vec![Activation::Gelu, Activation::Tanh],
            residual: vec![true, false],
            dt: [0.01, 0.1],
        };
        space.validate().unwrap();
        let drawn: Vec<Architecture> = (0..400).map(|i| space.draw(3, i)).collect();
        assert_eq!(drawn[17], space.draw(3, 17));
        assert_ne!(
            drawn[17],
            space.draw(4, 17),
            "another seed, another operator"
        );
        for a in &drawn {
            assert!((2..=5).contains(&a.layers) && (16..=64).contains(&a.channels));
            assert!((0.01..=0.1).contains(&a.dt));
        }
        // Every bound and choice is reached.
        for (what, hit) in [
            ("layers 2", drawn.iter().any(|a| a.layers == 2)),
            ("layers 5", drawn.iter().any(|a| a.layers == 5)),
            ("channels 16", drawn.iter().any(|a| a.channels == 16)),
            ("channels 64", drawn.iter().any(|a| a.channels == 64)),
            ("kernel 5", drawn.iter().any(|a| a.kernel == 5)),
            ("no norm", drawn.iter().any(|a| a.norm == Norm::None)),
            (
                "tanh",
                drawn.iter().any(|a| a.activation == Activation::Tanh),
            ),
            ("not residual", drawn.iter().any(|a| !a.residual)),
        ] {
            assert!(hit, "{what} never drawn");
        }
        let seeds: std::collections::HashSet<u64> = drawn.iter().map(|a| a.weight_seed).collect();
        assert_eq!(seeds.len(), drawn.len(), "weight seeds collide");
    }

    #[test]
    fn bad_spaces_are_refused_with_the_field() {
        let base = OperatorSpace::default();
        for (space, field) in [
            (
                OperatorSpace {
                    layers: [0, 4],
                    ..base.clone()
                },
                "layers",
            ),
            (
                OperatorSpace {
                    channels: [64, 16],
                    ..base.clone()
                },
                "channels",
            ),
            (
                OperatorSpace {
                    kernel: vec![4],
                    ..base.clone()
                },
                "kernel",
            ),
            (
                OperatorSpace {
                    norm: vec![],
                    ..base.clone()
                },
                "norm",
            ),
            (
                OperatorSpace {
                    activation: vec![],
                    ..base.clone()
                },
                "activation",
            ),
            (
                OperatorSpace {
                    residual: vec![],
                    ..base.clone()
                },
                "residual",
            ),
            (
                OperatorSpace {
                    dt: [0.1, 0.01],
                    ..base.clone()
                },
                "dt",
            ),
            (
                OperatorSpace {
                    dt: [0.0, 0.1],
                    ..base.clone()
                },
                "dt",
            ),
        ] {
            assert_eq!(space.validate().unwrap_err().field, field);
        }
    }

    #[test]
    fn fields_are_smooth_periodic_and_seeded() {
        let (h, w, c) = (32, 24, 3);
        let f = smooth_field(h, w, c, 4, 1, 2, 0);
        assert_eq!(f, smooth_field(h, w, c, 4, 1, 2, 0));
        assert_ne!(f, smooth_field(h, w, c, 4, 1, 2, 1), "another realization");
        assert_ne!(f, smooth_field(h, w, c, 4, 1, 3, 0), "another operator");
        for plane in f.chunks(h * w) {
            let n = plane.len() as f64;
            let mean = plane.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
            let rms = (plane.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / n).sqrt();
            assert!(
                mean.abs() < 1e-5 && (rms - 1.0).abs() < 1e-4,
                "{mean} {rms}"
            );
            // Smooth: neighbours differ on average by far less than unit white noise's
            // neighbours do (about 1.13), and no more across the wrap-around seam than
            // inside the field (periodic).
            let step = |y: usize, x: usize, dy: usize, dx: usize| {
                f64::from((plane[y * w + x] - plane[((y + dy) % h) * w + (x + dx) % w]).abs())
            };
            let inside: f64 = (0..h)
                .flat_map(|y| (0..w - 1).map(move |x| (y, x)))
                .map(|(y, x)| step(y, x, 0, 1))
                .sum::<f64>()
                / (h * (w - 1)) as f64;
            let seam: f64 = (0..h).map(|y| step(y, w - 1, 0, 1)).sum::<f64>() / h as f64;
            assert!(inside < 0.6, "mean neighbour step {inside}");
            assert!(seam < 2.0 * inside, "seam {seam} against inside {inside}");
        }
    }
}
