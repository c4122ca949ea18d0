//! Learning-rate schedules: constant, cosine decay and linear decay, each with an optional
//! linear warm-up. A pure function of the step, so a resumed run needs no saved state.

use std::f64::consts::PI;

use serde::{Deserialize, Serialize};

/// The shape of the decay after warm-up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decay {
    /// The base rate throughout.
    #[default]
    Constant,
    /// Half a cosine from the base rate down to the final rate.
    Cosine,
    /// A straight line from the base rate down to the final rate.
    Linear,
}

/// A learning rate for every optimizer step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    /// Rate after warm-up.
    pub base: f64,
    /// Rate at the last step, as a fraction of `base` (decaying schedules only).
    pub final_fraction: f64,
    /// Shape of the decay.
    pub decay: Decay,
    /// Steps of linear warm-up from `base / warmup` to `base`.
    pub warmup: u64,
    /// Total optimizer steps of the run.
    pub total: u64,
}

impl LrSchedule {
    /// The rate of step `step` (0-based).
    pub fn at(&self, step: u64) -> f64 {
        if step < self.warmup {
            return self.base * (step + 1) as f64 / self.warmup as f64;
        }
        let span = self.total.saturating_sub(self.warmup).saturating_sub(1);
        let t = if span == 0 {
            0.0
        } else {
            ((step - self.warmup) as f64 / span as f64).min(1.0)
        };
        let end = self.base * self.final_fraction;
        match self.decay {
            Decay::Constant => self.base,
            Decay::Cosine => end + (self.base - end) * 0.5 * (1.0 + (PI * t).cos()),
            Decay::Linear => self.base + (end - self.base) * t,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(decay: Decay) -> LrSchedule {
        LrSchedule {
            base: 1.0,
            final_fraction: 0.1,
            decay,
            warmup: 4,
            total: 15,
        }
    }

    #[test]
    fn warm_up_then_decay_to_the_final_rate() {
        for decay in [Decay::Constant, Decay::Cosine, Decay::Linear] {
            let s = schedule(decay);
            assert_eq!(s.at(0), 0.25);
            assert_eq!(s.at(3), 1.0);
            assert_eq!(s.at(4), 1.0);
            let last = s.at(14);
            let expect = if decay == Decay::Constant { 1.0 } else { 0.1 };
            assert!((last - expect).abs() < 1e-12, "{decay:?}: {last}");
            for step in 4..14 {
                assert!(s.at(step + 1) <= s.at(step), "{decay:?} rises at {step}");
            }
        }
        let c = schedule(Decay::Cosine);
        assert!((c.at(9) - 0.55).abs() < 1e-12);
        assert!((c.at(6) - (0.1 + 0.9 * 0.5 * (1.0 + (PI * 0.2).cos()))).abs() < 1e-12);
        assert!((schedule(Decay::Linear).at(9) - 0.55).abs() < 1e-12);
    }

    #[test]
    fn degenerate_runs_do_not_divide_by_zero() {
        let s = LrSchedule {
            base: 0.5,
            final_fraction: 0.0,
            decay: Decay::Cosine,
            warmup: 0,
            total: 1,
        };
        assert_eq!(s.at(0), 0.5);
        assert!(s.at(10).is_finite());
    }
}
