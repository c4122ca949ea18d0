//! The local backend: N worker threads in this process.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::job::{Job, Outcome};
use crate::kind::{Context, Registry};
use crate::{Farm, FarmError, Tally};

/// N workers on this machine, each a long-lived thread: in-process kinds run on it, command
/// kinds run as child processes it spawns (and which die with it).
///
/// A failed attempt is retried at once, up to the job's `max_attempts`; then the job's
/// outcome carries the last error.
pub struct LocalFarm {
    jobs: Option<Sender<Job>>,
    outcomes: Receiver<Outcome>,
    threads: Vec<JoinHandle<()>>,
    cancel: Arc<AtomicBool>,
    tally: Tally,
    workers: usize,
}

impl LocalFarm {
    /// Starts `workers` threads (at least one) running the kinds in `registry`.
    pub fn new(registry: Registry, workers: usize) -> Self {
        let workers = workers.max(1);
        let (job_tx, job_rx) = channel::<Job>();
        let (out_tx, out_rx) = channel();
        let job_rx = Arc::new(Mutex::new(job_rx));
        let registry = Arc::new(registry);
        let cancel = Arc::new(AtomicBool::new(false));
        let threads = (0..workers)
            .map(|i| {
                let (job_rx, out_tx, registry, cancel) = (
                    job_rx.clone(),
                    out_tx.clone(),
                    registry.clone(),
                    cancel.clone(),
                );
                std::thread::Builder::new()
                    .name(format!("frugal-worker-{i}"))
                    .spawn(move || {
                        let name = format!("local-{i}");
                        loop {
                            let next = job_rx.lock().map(|rx| rx.recv());
                            let Ok(Ok(job)) = next else { break };
                            if out_tx
                                .send(run_with_retries(&registry, &job, &name, &cancel))
                                .is_err()
                            {
                                break;
                            }
                        }
                    })
                    .expect("spawning a worker thread")
            })
            .collect();
        Self {
            jobs: Some(job_tx),
            outcomes: out_rx,
            threads,
            cancel,
            tally: Tally::default(),
            workers,
        }
    }
}

/// Runs `job` until it succeeds or has used its attempts.
pub(crate) fn run_with_retries(
    registry: &Registry,
    job: &Job,
    worker: &str,
    cancel: &Arc<AtomicBool>,
) -> Outcome {
    let attempts = job.max_attempts.max(1);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let start = Instant::now();
        let deadline = job.timeout_s.map(|t| start + Duration::from_secs_f64(t));
        let result = registry.run_with_data(job, &Context::new(deadline, cancel.clone()));
        let seconds = start.elapsed().as_secs_f64();
        match result {
            Ok((m, data)) => {
                return Outcome {
                    id: job.id.clone(),
                    result: Ok(m),
                    attempts: attempt,
                    worker: worker.into(),
                    seconds,
                    data,
                };
            }
            Err(e) if attempt >= attempts || cancel.load(Ordering::Relaxed) => {
                return Outcome {
                    id: job.id.clone(),
                    result: Err(format!("attempt {attempt} of {attempts} on {worker}: {e}").into()),
                    attempts: attempt,
                    worker: worker.into(),
                    seconds,
                    data: None,
                };
            }
            Err(_) => {}
        }
    }
}

impl Farm for LocalFarm {
    fn submit(&mut self, jobs: Vec<Job>) -> Result<(), FarmError> {
        let tx = self.jobs.as_ref().ok_or(FarmError::Closed)?;
        for job in jobs {
            self.tally.submitted(&job.id)?;
            tx.send(job).map_err(|_| FarmError::Closed)?;
        }
        Ok(())
    }

    fn next(&mut self, wait: Duration) -> Result<Option<Outcome>, FarmError> {
        if self.tally.in_flight() == 0 {
            return Ok(None);
        }
        match self.outcomes.recv_timeout(wait) {
            Ok(outcome) => Ok(self.tally.accept(outcome)),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(FarmError::Closed),
        }
    }

    fn tally(&self) -> &Tally {
        &self.tally
    }

    fn describe(&self) -> String {
        format!("local, {} workers", self.workers)
    }
}

impl Drop for LocalFarm {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        self.jobs = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{JobError, Metrics};
    use serde_json::json;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn every_job_once_retries_capped() {
        let mut r = Registry::new();
        crate::kind::register_builtin(&mut r).unwrap();
        let flaky = Arc::new(AtomicU32::new(0));
        let f = flaky.clone();
        r.register("flaky", move |_: &Job, _: &Context| {
            if f.fetch_add(1, Ordering::SeqCst).is_multiple_of(2) {
                Err("first try fails".into())
            } else {
                Ok(Metrics::new())
            }
        })
        .unwrap();
        r.register("crash", |_: &Job, _: &Context| {
            Err::<Metrics, JobError>("always".into())
        })
        .unwrap();
        let mut farm = LocalFarm::new(r, 3);
        let mut jobs: Vec<Job> = (0..20)
            .map(|i| Job::new(format!("n{i}"), "noop", json!({}), i))
            .collect();
        jobs.push(Job::new("f", "flaky", json!({}), 0));
        let mut crash = Job::new("c", "crash", json!({}), 0);
        crash.max_attempts = 4;
        jobs.push(crash);
        farm.submit(jobs).unwrap();
        let outcomes = crate::collect(&mut farm, |_| {}).unwrap();
        assert_eq!(outcomes.len(), 22);
        let c = outcomes.iter().find(|o| o.id == "c").unwrap();
        assert_eq!(c.attempts, 4);
        assert!(
            c.result
                .as_ref()
                .unwrap_err()
                .to_string()
                .contains("attempt 4 of 4"),
            "{c:?}"
        );
        let f = outcomes.iter().find(|o| o.id == "f").unwrap();
        assert!(f.result.is_ok() && f.attempts == 2, "{f:?}");
        assert_eq!(farm.tally().failed(), 1);
        assert!(
            farm.submit(vec![Job::new("n1", "noop", json!({}), 0)])
                .is_err(),
            "ids are unique within a run"
        );
    }
}
