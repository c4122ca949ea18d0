//! What travels through a farm: jobs out, outcomes back.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Named numbers a job reports, e.g. `{"stability": 0.93, "seconds": 28.1}`.
pub type Metrics = BTreeMap<String, f64>;

/// One unit of work: which registered kind runs it, with what parameters, under which seed.
///
/// A job carries parameters only. The worker looks `kind` up in its own registry; nothing
/// in a job names a program or becomes a command line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Unique within a run; the first result for an id wins, later ones are duplicates.
    pub id: String,
    /// The registered kind that runs it (`sphere`, `particles`, a command template's name, ...).
    pub kind: String,
    /// Parameters as JSON, handed to the kind as they are.
    pub params: serde_json::Value,
    /// The job's own seed, so its result does not depend on which worker runs it.
    pub seed: u64,
    /// Seconds a single attempt may run before it is killed and counted as failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<f64>,
    /// Deliveries before the job is given up and reported as failed (at least 1).
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
}

fn default_attempts() -> u32 {
    3
}

impl Job {
    /// A job with the default retry cap (3 attempts) and no timeout.
    pub fn new(
        id: impl Into<String>,
        kind: impl Into<String>,
        params: serde_json::Value,
        seed: u64,
    ) -> Self {
        Self {
            id: id.into(),
            kind: kind.into(),
            params,
            seed,
            timeout_s: None,
            max_attempts: default_attempts(),
        }
    }
}

/// Why an attempt or a job failed, in words a user can act on (naming the parameter, the
/// program, the worker).
///
/// It is text on purpose: a job's failure is whatever its kind — user code, or a program a
/// command kind ran — reports, and it crosses processes and machines with the outcome.
/// Kinds turn their own errors into one with `?` (any `String` or `&str` converts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(transparent)]
#[error("{0}")]
pub struct JobError(String);

impl JobError {
    /// A failure described by `message`.
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }

    /// The description.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl From<String> for JobError {
    fn from(message: String) -> Self {
        Self(message)
    }
}

impl From<&str> for JobError {
    fn from(message: &str) -> Self {
        Self(message.to_owned())
    }
}

/// Text that holds no JSON object of metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected a JSON object of metrics, found {found:?}")]
pub struct MetricsError {
    /// What was found instead (its last 200 characters).
    pub found: String,
}

impl From<MetricsError> for JobError {
    fn from(e: MetricsError) -> Self {
        Self(e.to_string())
    }
}

/// How a job ended: its metrics, or the error of its last attempt once the retry cap is hit.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// The job's id.
    pub id: String,
    /// Metrics on success; the last error (naming the worker and attempt) on failure.
    pub result: Result<Metrics, JobError>,
    /// Deliveries it took, counting the successful one.
    pub attempts: u32,
    /// Which worker produced this outcome.
    pub worker: String,
    /// Wall time of the final attempt.
    pub seconds: f64,
    /// Bytes the job attached on success ([`Context::attach`](crate::Context::attach)),
    /// carried beside the JSON rather than in it.
    #[serde(skip)]
    pub data: Option<Vec<u8>>,
}

impl std::fmt::Debug for Outcome {
    // The data may be megabytes: show its length only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outcome")
            .field("id", &self.id)
            .field("result", &self.result)
            .field("attempts", &self.attempts)
            .field("worker", &self.worker)
            .field("seconds", &self.seconds)
            .field("data_bytes", &self.data.as_ref().map(Vec::len))
            .finish()
    }
}

/// Reads a command's metrics: a JSON object of numbers, either the whole text or its last
/// line that is one (programs often log before printing their result).
///
/// Booleans count as 0/1; other non-numeric values are left out, so a report may carry
/// notes beside its numbers.
pub fn parse_metrics(text: &str) -> Result<Metrics, MetricsError> {
    let whole = serde_json::from_str::<serde_json::Value>(text.trim()).ok();
    let object = whole
        .filter(serde_json::Value::is_object)
        .or_else(|| {
            text.lines()
                .rev()
                .filter(|l| !l.trim().is_empty())
                .find_map(|l| {
                    serde_json::from_str::<serde_json::Value>(l.trim())
                        .ok()
                        .filter(|v| v.is_object())
                })
        })
        .ok_or_else(|| {
            let tail: String = text
                .trim()
                .chars()
                .rev()
                .take(200)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            MetricsError { found: tail }
        })?;
    metrics_from_value(&object)
}

/// Metrics from a JSON object of numbers (see [`parse_metrics`]).
pub fn metrics_from_value(value: &serde_json::Value) -> Result<Metrics, MetricsError> {
    let map = value.as_object().ok_or_else(|| MetricsError {
        found: value.to_string(),
    })?;
    let mut metrics = Metrics::new();
    for (key, v) in map {
        let number = match v {
            serde_json::Value::Number(n) => n.as_f64(),
            serde_json::Value::Bool(b) => Some(f64::from(u8::from(*b))),
            _ => None,
        };
        if let Some(x) = number {
            metrics.insert(key.clone(), x);
        }
    }
    Ok(metrics)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_from_whole_text_or_last_json_line() {
        let m = parse_metrics(r#"{"a": 1.5, "ok": true, "note": "x"}"#).unwrap();
        assert_eq!(m.get("a"), Some(&1.5));
        assert_eq!(m.get("ok"), Some(&1.0));
        assert!(!m.contains_key("note"));
        let m = parse_metrics("step 1\nstep 2\n{\"loss\": 0.25}\n\n").unwrap();
        assert_eq!(m.get("loss"), Some(&0.25));
        let e = parse_metrics("no json here").unwrap_err();
        assert_eq!(e.found, "no json here");
        assert!(parse_metrics("[1, 2]").is_err());
    }

    #[test]
    fn job_round_trips_with_defaults() {
        let job: Job =
            serde_json::from_str(r#"{"id":"a","kind":"sphere","params":{"x":[1]},"seed":7}"#)
                .unwrap();
        assert_eq!(job.max_attempts, 3);
        assert_eq!(job.timeout_s, None);
        let back: Job = serde_json::from_str(&serde_json::to_string(&job).unwrap()).unwrap();
        assert_eq!(back, job);
    }
}
