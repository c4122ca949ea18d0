use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use crate::EvolveError;

/// The result of evaluating one candidate.
///
/// Objectives are minimised. `violation` is 0 for a feasible candidate and otherwise the
/// total amount by which it breaks its constraints; `+inf` marks an evaluation that failed
/// (crashed, timed out, returned garbage), which ranks below every other result.
///
/// JSON has no infinities or NaNs, so non-finite values serialize as the strings `"inf"`,
/// `"-inf"` and `"nan"`; a failed result reads `{"objectives": ["inf"], "violation": "inf"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fitness {
    /// Objective values, all minimised.
    #[serde(with = "reals")]
    pub objectives: Vec<f64>,
    /// Total constraint violation: 0 feasible, > 0 infeasible, `+inf` failed.
    #[serde(with = "real", default)]
    pub violation: f64,
}

impl Fitness {
    /// A feasible result.
    pub fn new(objectives: Vec<f64>) -> Self {
        Self {
            objectives,
            violation: 0.0,
        }
    }

    /// A feasible result with a single objective.
    pub fn single(value: f64) -> Self {
        Self::new(vec![value])
    }

    /// A result with constraint violation `violation` (0 for feasible).
    pub fn constrained(objectives: Vec<f64>, violation: f64) -> Self {
        Self {
            objectives,
            violation,
        }
    }

    /// A failed evaluation in a run with `objectives` objectives.
    pub fn failed(objectives: usize) -> Self {
        Self {
            objectives: vec![f64::INFINITY; objectives],
            violation: f64::INFINITY,
        }
    }

    /// Whether the candidate meets all its constraints.
    pub fn is_feasible(&self) -> bool {
        self.violation == 0.0
    }

    /// Whether the evaluation failed.
    pub fn is_failed(&self) -> bool {
        self.violation == f64::INFINITY
    }

    /// Deb's feasibility rules on the first objective; `Less` means `self` is better. A
    /// feasible result beats an infeasible one, of two infeasible the smaller violation
    /// wins, of two feasible the smaller objective.
    pub fn compare(&self, other: &Self) -> Ordering {
        match (self.is_feasible(), other.is_feasible()) {
            (true, true) => self.objectives[0].total_cmp(&other.objectives[0]),
            (true, false) => Ordering::Less,
            (false, true) => Ordering::Greater,
            (false, false) => self.violation.total_cmp(&other.violation),
        }
    }

    /// Deb's constrained domination: a feasible result dominates an infeasible one, of two
    /// infeasible the smaller violation dominates, and of two feasible the usual Pareto
    /// dominance holds (no objective worse, at least one better).
    pub fn dominates(&self, other: &Self) -> bool {
        match (self.is_feasible(), other.is_feasible()) {
            (true, true) => pareto_dominates(&self.objectives, &other.objectives),
            (true, false) => true,
            (false, true) => false,
            (false, false) => self.violation < other.violation,
        }
    }

    /// The result as stored: a NaN or infinite objective or a NaN violation counts as a
    /// failed evaluation, so that nothing downstream has to order NaNs or rank a bogus
    /// `-inf` as the best result ever seen.
    pub(crate) fn normalised(mut self, id: u64, expected: usize) -> Result<Self, EvolveError> {
        let broken = self.violation.is_nan() || self.objectives.iter().any(|v| !v.is_finite());
        if self.is_failed() || broken {
            return Ok(Self::failed(expected));
        }
        if self.objectives.len() != expected {
            return Err(EvolveError::FitnessLength {
                id,
                expected,
                got: self.objectives.len(),
            });
        }
        if self.violation < 0.0 {
            return Err(EvolveError::NegativeViolation {
                id,
                violation: self.violation,
            });
        }
        // -0.0 and 0.0 are both feasible; one spelling keeps stored states comparable.
        self.violation += 0.0;
        Ok(self)
    }
}

/// Plain Pareto dominance of minimised objective vectors.
pub(crate) fn pareto_dominates(a: &[f64], b: &[f64]) -> bool {
    let mut better = false;
    for (x, y) in a.iter().zip(b) {
        if x > y {
            return false;
        }
        better |= x < y;
    }
    better
}

struct RealVisitor;

impl serde::de::Visitor<'_> for RealVisitor {
    type Value = f64;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a number or one of \"inf\", \"-inf\", \"nan\"")
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<f64, E> {
        Ok(v)
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<f64, E> {
        Ok(v as f64)
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<f64, E> {
        Ok(v as f64)
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<f64, E> {
        match v.to_ascii_lowercase().as_str() {
            "inf" | "+inf" | "infinity" => Ok(f64::INFINITY),
            "-inf" | "-infinity" => Ok(f64::NEG_INFINITY),
            "nan" => Ok(f64::NAN),
            _ => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
        }
    }
}

/// An `f64` that survives formats without infinities and NaNs.
struct Real(f64);

impl Serialize for Real {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let v = self.0;
        if v.is_finite() {
            s.serialize_f64(v)
        } else if v.is_nan() {
            s.serialize_str("nan")
        } else if v > 0.0 {
            s.serialize_str("inf")
        } else {
            s.serialize_str("-inf")
        }
    }
}

impl<'de> Deserialize<'de> for Real {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(RealVisitor).map(Real)
    }
}

mod real {
    use super::Real;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        Real(*v).serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Real::deserialize(d).map(|r| r.0)
    }
}

mod reals {
    use super::Real;
    use serde::ser::SerializeSeq;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[f64], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(v.len()))?;
        for &x in v {
            seq.serialize_element(&Real(x))?;
        }
        seq.end()
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
        Vec::<Real>::deserialize(d).map(|v| v.into_iter().map(|r| r.0).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feasibility_rules_order_results() {
        let good = Fitness::single(1.0);
        let bad = Fitness::single(2.0);
        let slightly = Fitness::constrained(vec![-5.0], 0.1);
        let badly = Fitness::constrained(vec![-9.0], 3.0);
        let failed = Fitness::failed(1);
        let ranked = [&good, &bad, &slightly, &badly, &failed];
        for (i, a) in ranked.iter().enumerate() {
            for (j, b) in ranked.iter().enumerate() {
                assert_eq!(a.compare(b), i.cmp(&j), "{i} vs {j}");
            }
        }
    }

    #[test]
    fn constrained_domination() {
        let a = Fitness::new(vec![1.0, 2.0]);
        let b = Fitness::new(vec![2.0, 2.0]);
        let c = Fitness::new(vec![0.0, 3.0]);
        let infeasible = Fitness::constrained(vec![0.0, 0.0], 0.5);
        let worse = Fitness::constrained(vec![0.0, 0.0], 1.5);
        let failed = Fitness::failed(2);
        assert!(a.dominates(&b) && !b.dominates(&a));
        assert!(!a.dominates(&c) && !c.dominates(&a));
        assert!(!a.dominates(&a));
        assert!(b.dominates(&infeasible) && infeasible.dominates(&worse));
        assert!(worse.dominates(&failed) && !failed.dominates(&failed));
    }

    #[test]
    fn broken_results_count_as_failed() {
        let nan = Fitness::single(f64::NAN).normalised(0, 1).unwrap();
        let minus_inf = Fitness::single(f64::NEG_INFINITY).normalised(0, 1).unwrap();
        let failed_short = Fitness::failed(0).normalised(0, 2).unwrap();
        assert!(nan.is_failed() && minus_inf.is_failed());
        assert_eq!(failed_short, Fitness::failed(2));
        assert!(matches!(
            Fitness::new(vec![1.0]).normalised(3, 2),
            Err(EvolveError::FitnessLength {
                id: 3,
                expected: 2,
                got: 1
            })
        ));
        assert!(matches!(
            Fitness::constrained(vec![1.0], -1.0).normalised(3, 1),
            Err(EvolveError::NegativeViolation { .. })
        ));
    }

    #[test]
    fn non_finite_values_survive_json() {
        let failed = Fitness::failed(2);
        let text = serde_json::to_string(&failed).unwrap();
        assert_eq!(text, r#"{"objectives":["inf","inf"],"violation":"inf"}"#);
        assert_eq!(serde_json::from_str::<Fitness>(&text).unwrap(), failed);
        let plain: Fitness = serde_json::from_str(r#"{"objectives": [1, 0.25]}"#).unwrap();
        assert_eq!(plain, Fitness::new(vec![1.0, 0.25]));
        let odd: Fitness =
            serde_json::from_str(r#"{"objectives": ["-inf", "nan"], "violation": 2}"#).unwrap();
        assert_eq!(odd.objectives[0], f64::NEG_INFINITY);
        assert!(odd.objectives[1].is_nan());
    }
}
