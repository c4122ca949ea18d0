use std::collections::HashSet;

use frugal_rand::Xoshiro256pp;
use serde::{Deserialize, Serialize};

use crate::EvolveError;

/// One dimension of the search space: a real number, or a whole number, in `[low, high]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gene {
    /// Unique, non-empty name, for configurations and reports.
    pub name: String,
    /// Lower bound, included.
    pub low: f64,
    /// Upper bound, included.
    pub high: f64,
    /// Whether the gene holds whole numbers only; its bounds must then be whole too.
    #[serde(default)]
    pub integer: bool,
}

impl Gene {
    /// A real gene in `[low, high]`.
    pub fn real(name: impl Into<String>, low: f64, high: f64) -> Self {
        Self {
            name: name.into(),
            low,
            high,
            integer: false,
        }
    }

    /// A whole-number gene in `[low, high]`.
    pub fn int(name: impl Into<String>, low: f64, high: f64) -> Self {
        Self {
            name: name.into(),
            low,
            high,
            integer: true,
        }
    }

    /// The interval the variation operators work in.
    ///
    /// Integer genes are bred as real numbers and rounded afterwards. Widening their interval
    /// by half a unit each side gives the end values the same share of the rounded outcomes
    /// as the values inside: without it a uniform draw in `[0, 3]` would round to 0 or 3 only
    /// half as often as to 1 or 2.
    pub(crate) fn working_bounds(&self) -> (f64, f64) {
        if self.integer {
            (self.low - 0.5, self.high + 0.5)
        } else {
            (self.low, self.high)
        }
    }

    /// `value` brought into the gene's domain: clamped to the bounds, and rounded to the
    /// nearest whole number (halves away from zero) for integer genes.
    pub fn repair(&self, value: f64) -> f64 {
        let value = if self.integer { value.round() } else { value };
        // Adding zero turns -0.0 (from rounding -0.4, say) into 0.0, so equal genes always
        // have equal bits.
        value.clamp(self.low, self.high) + 0.0
    }

    fn check(&self, index: usize) -> Result<(), EvolveError> {
        let fail = |reason: String| EvolveError::Gene {
            index,
            name: self.name.clone(),
            reason,
        };
        if self.name.trim().is_empty() {
            return Err(fail("the name is empty".into()));
        }
        if !self.low.is_finite() || !self.high.is_finite() {
            return Err(fail(format!(
                "bounds [{}, {}] are not finite",
                self.low, self.high
            )));
        }
        if self.low >= self.high {
            return Err(fail(format!(
                "low {} is not below high {}",
                self.low, self.high
            )));
        }
        if self.integer && (self.low.fract() != 0.0 || self.high.fract() != 0.0) {
            return Err(fail(format!(
                "integer gene with bounds [{}, {}] that are not whole numbers",
                self.low, self.high
            )));
        }
        Ok(())
    }
}

/// The search space: a box of genes, in the order candidates list their values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Space {
    /// The genes.
    pub genes: Vec<Gene>,
}

impl Space {
    /// A validated space.
    pub fn new(genes: Vec<Gene>) -> Result<Self, EvolveError> {
        let space = Self { genes };
        space.validate()?;
        Ok(space)
    }

    /// `n` real genes named `x0`, `x1`, … all in `[low, high]`.
    pub fn uniform(n: usize, low: f64, high: f64) -> Self {
        Self {
            genes: (0..n)
                .map(|i| Gene::real(format!("x{i}"), low, high))
                .collect(),
        }
    }

    /// Checks that there is at least one gene, names are non-empty and unique, bounds are
    /// finite with low < high, and integer genes have whole bounds. The error names the
    /// first offending gene.
    pub fn validate(&self) -> Result<(), EvolveError> {
        if self.genes.is_empty() {
            return Err(EvolveError::EmptySpace);
        }
        let mut seen = HashSet::new();
        for (index, gene) in self.genes.iter().enumerate() {
            gene.check(index)?;
            if !seen.insert(gene.name.as_str()) {
                return Err(EvolveError::Gene {
                    index,
                    name: gene.name.clone(),
                    reason: "the name is used by an earlier gene".into(),
                });
            }
        }
        Ok(())
    }

    /// Number of genes.
    pub fn len(&self) -> usize {
        self.genes.len()
    }

    /// Whether there are no genes (never so for a validated space).
    pub fn is_empty(&self) -> bool {
        self.genes.is_empty()
    }

    /// Whether `values` has one value per gene, each in its domain.
    pub fn contains(&self, values: &[f64]) -> bool {
        values.len() == self.genes.len()
            && self
                .genes
                .iter()
                .zip(values)
                .all(|(g, &v)| (g.low..=g.high).contains(&v) && (!g.integer || v.fract() == 0.0))
    }

    /// A point drawn uniformly from the space (uniformly over the whole numbers of integer
    /// genes).
    pub fn sample(&self, rng: &mut Xoshiro256pp) -> Vec<f64> {
        self.genes
            .iter()
            .map(|g| {
                let (lo, hi) = g.working_bounds();
                g.repair(lo + (hi - lo) * rng.uniform())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_offending_gene() {
        let bad = [
            (Gene::real("", 0.0, 1.0), "empty"),
            (Gene::real("a", 1.0, 1.0), "not below"),
            (Gene::real("a", 0.0, f64::INFINITY), "not finite"),
            (Gene::real("a", f64::NAN, 1.0), "not finite"),
            (Gene::int("a", 0.5, 3.0), "whole"),
        ];
        for (gene, words) in bad {
            let err = Space::new(vec![Gene::real("ok", 0.0, 1.0), gene]).unwrap_err();
            let text = err.to_string();
            assert!(text.starts_with("gene 1 "), "{text}");
            assert!(text.contains(words), "{text}");
        }
        let dup = Space::new(vec![Gene::real("w", 0.0, 1.0), Gene::int("w", 0.0, 3.0)]);
        assert!(dup.unwrap_err().to_string().contains("\"w\""));
        assert_eq!(Space::new(vec![]).unwrap_err(), EvolveError::EmptySpace);
    }

    #[test]
    fn integer_samples_cover_the_end_values_evenly() {
        let space = Space::new(vec![Gene::int("k", 0.0, 3.0)]).unwrap();
        let mut rng = Xoshiro256pp::new(4);
        let mut counts = [0usize; 4];
        for _ in 0..40_000 {
            let x = space.sample(&mut rng);
            assert!(space.contains(&x));
            counts[x[0] as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (9_500..10_500).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn deserializes_with_integer_defaulting_to_false() {
        let space: Space = serde_json::from_str(
            r#"{"genes": [{"name": "lr", "low": 0.001, "high": 0.1},
                          {"name": "layers", "low": 1, "high": 8, "integer": true}]}"#,
        )
        .unwrap();
        assert!(!space.genes[0].integer && space.genes[1].integer);
        space.validate().unwrap();
    }
}
