//! Many independent jobs, on every core of one machine or on workers across many.
//!
//! A [`Job`] is a kind, parameters as JSON and a seed. A worker runs only the kinds in its
//! own [`Registry`]: built-in kinds, or [`CommandTemplate`]s from its local configuration
//! (run without a shell, in their own process group, killed on timeout and when the worker
//! dies). Two backends implement [`Farm`]:
//!
//! - [`LocalFarm`]: N worker threads in this process.
//! - [`RedisFarm`]: jobs and results on Redis streams; [`Worker`]s on any machine take jobs
//!   through a consumer group, renew a lease while they run, and reclaim the jobs of workers
//!   whose lease expired. Delivery is at least once: a job that keeps failing is given up
//!   after its retry cap and reported with its last error, and the first result of a job
//!   wins — later ones are counted as duplicates and ignored ([`Tally`]).
//!
//! ```
//! use frugal_farm::{Context, Farm, Job, JobError, LocalFarm, Metrics, Registry, collect};
//!
//! let mut registry = Registry::new();
//! registry.register("square", |job: &Job, _: &Context| -> Result<Metrics, JobError> {
//!     let x = job.params["x"].as_f64().ok_or("no x")?;
//!     Ok(Metrics::from([("y".to_string(), x * x)]))
//! })?;
//! let mut farm = LocalFarm::new(registry, 2);
//! let jobs = (0..4)
//!     .map(|i| Job::new(format!("job-{i}"), "square", serde_json::json!({ "x": i }), i))
//!     .collect();
//! farm.submit(jobs)?;
//! let mut ys: Vec<f64> = collect(&mut farm, |_| {})?
//!     .into_iter()
//!     .map(|o| o.result.unwrap()["y"])
//!     .collect();
//! ys.sort_by(f64::total_cmp);
//! assert_eq!(ys, [0.0, 1.0, 4.0, 9.0]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod bench;
mod command;
mod feed;
mod job;
mod kind;
mod local;
mod queue;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

use std::collections::HashSet;
use std::time::Duration;

pub use command::{ChildError, ChildRun, CommandTemplate, MetricsFrom, TemplateError, run_child};
pub use feed::{FeedError, OrderedFeed};
pub use job::{Job, JobError, Metrics, MetricsError, Outcome, metrics_from_value, parse_metrics};
pub use kind::{Context, Kind, Registry, RegistryError, SPIN_ROUND, register_builtin};
pub use local::LocalFarm;
pub use queue::{
    PIECE_BYTES, QueueStatus, RedisFarm, Worker, WorkerInfo, WorkerOptions, WorkerReport,
    queue_status,
};

/// What went wrong with the farm itself (a job's own failure is an [`Outcome`], not this).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FarmError {
    /// The farm was shut down.
    #[error("the farm's workers have stopped")]
    Closed,
    /// A job id was submitted twice in one run.
    #[error("job id {0:?} was submitted twice; ids must be unique within a run")]
    DuplicateId(String),
    /// Redis refused or the connection failed.
    #[error("redis at {url}: {message}")]
    Redis {
        /// The server, without its password.
        url: String,
        /// What failed.
        message: String,
    },
}

/// A place to run jobs: submit them, then take their outcomes as they finish.
pub trait Farm {
    /// Queues `jobs`; their ids must be new to this farm.
    fn submit(&mut self, jobs: Vec<Job>) -> Result<(), FarmError>;
    /// The next finished job, waiting up to `wait`; `None` if nothing finished in time or
    /// nothing is in flight. Each job's outcome comes back exactly once.
    fn next(&mut self, wait: Duration) -> Result<Option<Outcome>, FarmError>;
    /// Counts of what came back.
    fn tally(&self) -> &Tally;
    /// One line for progress output, e.g. `local, 16 workers`.
    fn describe(&self) -> String;
}

/// Waits for every job in flight, calling `progress` as each finishes; outcomes in
/// completion order.
pub fn collect(
    farm: &mut dyn Farm,
    mut progress: impl FnMut(&Outcome),
) -> Result<Vec<Outcome>, FarmError> {
    let mut outcomes = Vec::new();
    while farm.tally().in_flight() > 0 {
        if let Some(o) = farm.next(Duration::from_millis(200))? {
            progress(&o);
            outcomes.push(o);
        }
    }
    Ok(outcomes)
}

/// Bookkeeping that makes results idempotent: the first outcome of a submitted job is
/// accepted, any later one for the same job is a duplicate, and outcomes for jobs this run
/// never submitted (left over from an earlier run on the same queue) are stale.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    in_flight: HashSet<String>,
    finished: HashSet<String>,
    completed: u64,
    failed: u64,
    duplicates: u64,
    stale: u64,
}

impl Tally {
    /// Records a submitted id; an id can be submitted once.
    pub fn submitted(&mut self, id: &str) -> Result<(), FarmError> {
        if self.finished.contains(id) || !self.in_flight.insert(id.to_string()) {
            return Err(FarmError::DuplicateId(id.to_string()));
        }
        Ok(())
    }

    /// The outcome if it is the first for a job in flight; `None` (and counted) otherwise.
    pub fn accept(&mut self, outcome: Outcome) -> Option<Outcome> {
        if self.in_flight.remove(&outcome.id) {
            self.finished.insert(outcome.id.clone());
            if outcome.result.is_ok() {
                self.completed += 1;
            } else {
                self.failed += 1;
            }
            Some(outcome)
        } else {
            if self.finished.contains(&outcome.id) {
                self.duplicates += 1;
            } else {
                self.stale += 1;
            }
            None
        }
    }

    /// Jobs submitted and not yet finished.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
    /// Jobs that finished with metrics.
    pub fn completed(&self) -> u64 {
        self.completed
    }
    /// Jobs given up after their retry cap.
    pub fn failed(&self) -> u64 {
        self.failed
    }
    /// Second and later results for a finished job (a worker that lost its lease finished anyway).
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }
    /// Results for jobs this run did not submit.
    pub fn stale(&self) -> u64 {
        self.stale
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(id: &str, ok: bool) -> Outcome {
        Outcome {
            id: id.into(),
            result: if ok {
                Ok(Metrics::new())
            } else {
                Err("x".into())
            },
            attempts: 1,
            worker: "w".into(),
            seconds: 0.0,
            data: None,
        }
    }

    #[test]
    fn first_result_wins() {
        let mut t = Tally::default();
        t.submitted("a").unwrap();
        t.submitted("b").unwrap();
        assert!(t.submitted("a").is_err());
        assert!(t.accept(outcome("a", true)).is_some());
        assert!(t.accept(outcome("a", false)).is_none());
        assert!(t.accept(outcome("zzz", true)).is_none());
        assert!(t.submitted("a").is_err(), "a finished id stays taken");
        assert!(t.accept(outcome("b", false)).is_some());
        assert_eq!(
            (
                t.completed(),
                t.failed(),
                t.duplicates(),
                t.stale(),
                t.in_flight()
            ),
            (1, 1, 1, 1, 0)
        );
    }
}
