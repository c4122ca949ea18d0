//! Job kinds: the only things a worker will run, registered in its own process.

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::job::{Job, JobError, Metrics};

/// Something a worker knows how to run. Implementations check [`Context::check`] now and
/// then when they run long, so timeouts and cancellation stop them.
pub trait Kind: Send + Sync {
    /// Runs one attempt of `job`; the error says what went wrong in words a user can act on.
    fn run(&self, job: &Job, ctx: &Context) -> Result<Metrics, JobError>;
}

/// A closure is a kind; `?` turns text errors into a [`JobError`].
impl<F> Kind for F
where
    F: Fn(&Job, &Context) -> Result<Metrics, JobError> + Send + Sync,
{
    fn run(&self, job: &Job, ctx: &Context) -> Result<Metrics, JobError> {
        self(job, ctx)
    }
}

/// What a running attempt may ask of its worker: how long it has left, whether to stop, and
/// where to put bytes it produces beside its metrics.
#[derive(Clone)]
pub struct Context {
    deadline: Option<Instant>,
    cancel: Arc<AtomicBool>,
    data: Arc<Mutex<Option<Vec<u8>>>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("deadline", &self.deadline)
            .field("cancelled", &self.cancelled())
            .finish_non_exhaustive()
    }
}

impl Context {
    /// An attempt that must end by `deadline` (if any) or when `cancel` is set.
    pub fn new(deadline: Option<Instant>, cancel: Arc<AtomicBool>) -> Self {
        Self {
            deadline,
            cancel,
            data: Arc::default(),
        }
    }

    /// Hands `data` back with the attempt's metrics (replacing earlier data): output too
    /// big or not numeric enough for metrics, such as a simulation's samples. It travels
    /// beside the outcome, as bytes, to whoever submitted the job.
    pub fn attach(&self, data: Vec<u8>) {
        *self.data.lock().expect("data lock") = Some(data);
    }

    /// An attempt with no deadline that nothing cancels.
    pub fn unbounded() -> Self {
        Self::new(None, Arc::new(AtomicBool::new(false)))
    }

    /// The attempt's deadline, if it has one.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Time left before the deadline.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// Whether the worker is shutting down.
    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    /// `Err` once the attempt is out of time or cancelled; long-running kinds call it often.
    pub fn check(&self) -> Result<(), JobError> {
        if self.cancelled() {
            return Err("cancelled: the worker is shutting down".into());
        }
        match self.deadline {
            Some(d) if Instant::now() >= d => Err("timed out".into()),
            _ => Ok(()),
        }
    }
}

/// The kinds one worker runs, by name. Jobs naming anything else are refused.
#[derive(Clone, Default)]
pub struct Registry {
    kinds: BTreeMap<String, Arc<dyn Kind>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.kinds.keys()).finish()
    }
}

/// A kind that cannot be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// A name with characters other than letters, digits, '-' and '_', or none.
    #[error("job kind name {0:?}: use letters, digits, '-' and '_'")]
    Name(String),
    /// A name already registered.
    #[error("job kind {0:?} is registered twice")]
    Twice(String),
}

/// For callers whose errors are text (a configuration's kinds, a job's failure).
impl From<RegistryError> for String {
    fn from(e: RegistryError) -> Self {
        e.to_string()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `kind` under `name`; a name can be registered once.
    pub fn register(
        &mut self,
        name: impl Into<String>,
        kind: impl Kind + 'static,
    ) -> Result<(), RegistryError> {
        let name = name.into();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(RegistryError::Name(name));
        }
        if self.kinds.contains_key(&name) {
            return Err(RegistryError::Twice(name));
        }
        self.kinds.insert(name, Arc::new(kind));
        Ok(())
    }

    /// Whether `name` is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.kinds.contains_key(name)
    }

    /// The registered names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.kinds.keys().cloned().collect()
    }

    /// Runs one attempt and returns its metrics with the data it attached, if any.
    pub fn run_with_data(
        &self,
        job: &Job,
        ctx: &Context,
    ) -> Result<(Metrics, Option<Vec<u8>>), JobError> {
        let ctx = Context::new(ctx.deadline, ctx.cancel.clone());
        let metrics = self.run(job, &ctx)?;
        let data = ctx.data.lock().expect("data lock").take();
        Ok((metrics, data))
    }

    /// Runs one attempt; an unregistered kind or a panic becomes an error, never a crash.
    pub fn run(&self, job: &Job, ctx: &Context) -> Result<Metrics, JobError> {
        let kind = self
            .kinds
            .get(&job.kind)
            .ok_or_else(|| not_registered(&job.kind, &self.names()))?;
        match catch_unwind(AssertUnwindSafe(|| kind.run(job, ctx))) {
            Ok(result) => result,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                Err(JobError::new(format!(
                    "job kind {:?} panicked: {what}",
                    job.kind
                )))
            }
        }
    }
}

pub(crate) fn not_registered(kind: &str, names: &[String]) -> JobError {
    JobError::new(format!(
        "job kind {kind:?} is not registered on this worker (it runs: {}); add it to the worker's configuration",
        names.join(", ")
    ))
}

/// Kinds every worker has, for measuring the farm itself: `noop` (returns at once), `sleep`
/// (`{"seconds": s}`: wait `s` seconds) and `spin` (keep one core busy: `{"seconds": s}`
/// for `s` seconds, or `{"rounds": n}` for a fixed amount of arithmetic, [`SPIN_ROUND`]
/// steps per round, however long it takes).
pub fn register_builtin(registry: &mut Registry) -> Result<(), RegistryError> {
    registry.register("noop", |_: &Job, _: &Context| {
        Ok::<_, JobError>(Metrics::new())
    })?;
    registry.register(
        "sleep",
        |job: &Job, ctx: &Context| -> Result<Metrics, JobError> {
            let seconds = seconds_param(job)?;
            let end = Instant::now() + Duration::from_secs_f64(seconds);
            while Instant::now() < end {
                ctx.check()?;
                std::thread::sleep((end - Instant::now()).min(Duration::from_millis(20)));
            }
            Ok(Metrics::from([("seconds".to_string(), seconds)]))
        },
    )?;
    registry.register(
        "spin",
        |job: &Job, ctx: &Context| -> Result<Metrics, JobError> {
            let start = Instant::now();
            let mut x = job.seed as f64;
            let mut rounds = 0u64;
            let done: Box<dyn Fn(u64) -> bool> = match job.params.get("rounds") {
                Some(r) => {
                    let n = r.as_u64().ok_or_else(|| {
                        format!(
                            "job {}: parameter \"rounds\" must be an integer ≥ 0",
                            job.id
                        )
                    })?;
                    Box::new(move |rounds| rounds >= n)
                }
                None => {
                    let seconds = seconds_param(job)?;
                    Box::new(move |_| start.elapsed().as_secs_f64() >= seconds)
                }
            };
            while !done(rounds) {
                ctx.check()?;
                x = spin_round(x);
                rounds += 1;
            }
            Ok(Metrics::from([
                ("seconds".to_string(), start.elapsed().as_secs_f64()),
                ("rounds".to_string(), rounds as f64),
                ("x".to_string(), x),
            ]))
        },
    )?;
    Ok(())
}

/// Dependent floating-point steps in one round of the `spin` kind.
pub const SPIN_ROUND: u32 = 10_000;

/// One round of `spin`'s arithmetic: a chain the compiler cannot shorten.
pub(crate) fn spin_round(mut x: f64) -> f64 {
    for _ in 0..SPIN_ROUND {
        x = (x * 1.000_000_1 + 0.5).sin();
    }
    x
}

fn seconds_param(job: &Job) -> Result<f64, JobError> {
    job.params
        .get("seconds")
        .and_then(serde_json::Value::as_f64)
        .filter(|s| s.is_finite() && *s >= 0.0)
        .ok_or_else(|| {
            JobError::new(format!(
                "job {}: parameter \"seconds\" must be a number ≥ 0",
                job.id
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn refuses_unregistered_and_survives_panics() {
        let mut r = Registry::new();
        register_builtin(&mut r).unwrap();
        r.register(
            "boom",
            |_: &Job, _: &Context| -> Result<Metrics, JobError> { panic!("kaput") },
        )
        .unwrap();
        assert!(
            r.register("noop", |_: &Job, _: &Context| Ok(Metrics::new()))
                .is_err()
        );
        assert!(
            r.register("bad name", |_: &Job, _: &Context| Ok(Metrics::new()))
                .is_err()
        );
        let ctx = Context::unbounded();
        let e = r.run(&Job::new("1", "rm", json!({}), 0), &ctx).unwrap_err();
        assert!(e.to_string().contains("\"rm\" is not registered"), "{e}");
        let e = r
            .run(&Job::new("2", "boom", json!({}), 0), &ctx)
            .unwrap_err();
        assert!(e.to_string().contains("kaput"), "{e}");
        assert!(
            r.run(&Job::new("3", "noop", json!({}), 0), &ctx)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn sleep_stops_at_the_deadline() {
        let mut r = Registry::new();
        register_builtin(&mut r).unwrap();
        let ctx = Context::new(
            Some(Instant::now() + Duration::from_millis(50)),
            Arc::new(AtomicBool::new(false)),
        );
        let start = Instant::now();
        let e = r
            .run(&Job::new("1", "sleep", json!({"seconds": 30}), 0), &ctx)
            .unwrap_err();
        assert_eq!(e.message(), "timed out");
        assert!(start.elapsed() < Duration::from_secs(10));
        let e = r
            .run(&Job::new("1", "spin", json!({"seconds": "x"}), 0), &ctx)
            .unwrap_err();
        assert!(e.to_string().contains("\"seconds\""), "{e}");
        let e = r
            .run(&Job::new("1", "spin", json!({"rounds": -1}), 0), &ctx)
            .unwrap_err();
        assert!(e.to_string().contains("\"rounds\""), "{e}");
        let m = r
            .run(
                &Job::new("1", "spin", json!({"rounds": 3}), 7),
                &Context::unbounded(),
            )
            .unwrap();
        assert_eq!(m["rounds"], 3.0);
        let x = (0..3).fold(7.0, |x, _| spin_round(x));
        assert_eq!(m["x"], x);
    }
}
