//! Measurements of the farm itself (`frugal farm bench`): how close the local backend comes
//! to the machine's own parallel limit, and how many jobs a second pass through Redis.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redis::streams::{StreamAutoClaimReply, StreamReadOptions, StreamReadReply};
use redis::{Commands, Connection, RedisResult};
use serde::Serialize;

use crate::kind::{Registry, register_builtin, spin_round};
use crate::queue::{GROUP, Keys, connect, redacted};
use crate::{Farm, Job, LocalFarm, Outcome, RedisFarm, Worker, WorkerOptions, collect};

/// A benchmark that could not measure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    /// The farm or its queue failed.
    #[error(transparent)]
    Farm(#[from] crate::FarmError),
    /// A benchmark job failed.
    #[error("benchmark job {id} failed: {error}")]
    JobFailed {
        /// The job.
        id: String,
        /// Its error.
        error: crate::JobError,
    },
    /// Jobs or their work went missing.
    #[error("the farm returned {returned} of {expected} jobs{detail}")]
    Incomplete {
        /// Jobs whose outcomes came back.
        returned: usize,
        /// Jobs submitted.
        expected: usize,
        /// What else is off (work done against work asked), or nothing.
        detail: String,
    },
    /// No jobs were asked for.
    #[error("the Redis benchmark needs at least one job")]
    NoJobs,
    /// The workers did not connect in time.
    #[error("the benchmark's workers did not start within {seconds} s")]
    WorkersDidNotStart {
        /// How long they were given.
        seconds: u64,
    },
    /// A worker thread panicked.
    #[error("a benchmark worker panicked")]
    WorkerPanicked,
    /// The single-client reference failed.
    #[error("redis at {url}: {cause}")]
    Redis {
        /// The server, without its password.
        url: String,
        /// The failure.
        cause: redis::RedisError,
    },
}

/// The local backend against the ideal on all cores, with CPU-bound jobs of fixed work.
#[derive(Debug, Clone, Serialize)]
pub struct LocalBench {
    /// Worker threads (and bare threads in the baseline).
    pub workers: usize,
    /// Jobs run: `workers × jobs_per_worker`.
    pub jobs: usize,
    /// `spin` rounds per job, calibrated to take `target_s` alone on one core.
    pub rounds: u64,
    /// The job length asked for.
    pub target_s: f64,
    /// One job alone on one core (best of three), seconds.
    pub single_s: f64,
    /// The ideal wall time on `workers` cores: `jobs / workers × single_s`.
    pub ideal_s: f64,
    /// Wall time of bare threads running the same work, no farm (the mean of one run
    /// before the farm's and one after).
    pub bare_s: f64,
    /// Wall time of the local farm running the jobs.
    pub farm_s: f64,
    /// `ideal_s / farm_s`: the farm's parallel efficiency.
    pub efficiency: f64,
    /// `ideal_s / bare_s`: the machine's own parallel efficiency (the physical limit).
    pub bare_efficiency: f64,
    /// `bare_s / farm_s`: the farm against that limit.
    pub farm_vs_bare: f64,
}

/// Runs `jobs_per_worker × workers` jobs of `target_s` seconds of one-core arithmetic on a
/// [`LocalFarm`] of `workers` threads, and the same work on bare threads.
pub fn local(
    workers: usize,
    target_s: f64,
    jobs_per_worker: usize,
) -> Result<LocalBench, BenchError> {
    let workers = workers.max(1);
    let jobs_per_worker = jobs_per_worker.max(1);
    // Calibrate on one core: rounds per second over a quarter of a second, after a warm-up.
    let spin = |rounds: u64, seed: u64| {
        let mut x = seed as f64;
        for _ in 0..rounds {
            x = spin_round(x);
        }
        std::hint::black_box(x)
    };
    spin(20, 1);
    let start = Instant::now();
    let mut probe = 0u64;
    while start.elapsed() < Duration::from_millis(250) {
        spin(10, probe);
        probe += 10;
    }
    let rounds = ((probe as f64 / start.elapsed().as_secs_f64()) * target_s).max(1.0) as u64;
    let single_s = (0..3)
        .map(|i| {
            let t = Instant::now();
            spin(rounds, i);
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    let jobs = workers * jobs_per_worker;
    let ideal_s = jobs_per_worker as f64 * single_s;

    let bare = || {
        let t = Instant::now();
        std::thread::scope(|s| {
            for w in 0..workers {
                s.spawn(move || {
                    for j in 0..jobs_per_worker {
                        spin(rounds, (w * jobs_per_worker + j) as u64);
                    }
                });
            }
        });
        t.elapsed().as_secs_f64()
    };
    // Bare threads before and after the farm, so a machine that slows as it warms up
    // does not favour either side.
    let bare_before = bare();

    let mut registry = Registry::new();
    register_builtin(&mut registry).expect("built-in kinds register");
    let mut farm = LocalFarm::new(registry, workers);
    let t = Instant::now();
    farm.submit(
        (0..jobs)
            .map(|i| {
                Job::new(
                    format!("spin-{i}"),
                    "spin",
                    serde_json::json!({ "rounds": rounds }),
                    i as u64,
                )
            })
            .collect(),
    )?;
    let outcomes = collect(&mut farm, |_| {})?;
    let farm_s = t.elapsed().as_secs_f64();
    failures(&outcomes)?;
    let done: f64 = outcomes
        .iter()
        .filter_map(|o| o.result.as_ref().ok()?.get("rounds").copied())
        .sum();
    if outcomes.len() != jobs || done != (jobs as u64 * rounds) as f64 {
        return Err(BenchError::Incomplete {
            returned: outcomes.len(),
            expected: jobs,
            detail: format!(" and {done} of {} rounds", jobs as u64 * rounds),
        });
    }
    let bare_s = (bare_before + bare()) / 2.0;
    Ok(LocalBench {
        workers,
        jobs,
        rounds,
        target_s,
        single_s,
        ideal_s,
        bare_s,
        farm_s,
        efficiency: ideal_s / farm_s,
        bare_efficiency: ideal_s / bare_s,
        farm_vs_bare: bare_s / farm_s,
    })
}

fn failures(outcomes: &[Outcome]) -> Result<(), BenchError> {
    match outcomes
        .iter()
        .find_map(|o| o.result.as_ref().err().map(|e| (&o.id, e)))
    {
        Some((id, e)) => Err(BenchError::JobFailed {
            id: id.clone(),
            error: e.clone(),
        }),
        None => Ok(()),
    }
}

/// No-op jobs through a Redis queue, against a single-client reference.
#[derive(Debug, Clone, Serialize)]
pub struct RedisBench {
    /// The server (password masked).
    pub url: String,
    /// No-op jobs submitted and collected.
    pub jobs: usize,
    /// Workers serving the queue (in this process, each with its own connections).
    pub workers: usize,
    /// Jobs each worker runs at once (one connection each).
    pub slots: usize,
    /// Jobs each slot takes per read.
    pub batch: usize,
    /// From the first submission to the last result, seconds.
    pub seconds: f64,
    /// `jobs / seconds`.
    pub jobs_per_s: f64,
    /// The reference: the commands the farm issues per job and per batch (submission in
    /// pipelines, lease lookup, reclaim check, group read, result + acknowledgement in one
    /// MULTI, result read), one after another on one connection with no job run and no
    /// lease renewal. The farm overlaps them on several connections, so it may beat it.
    pub bare_seconds: f64,
    /// `jobs / bare_seconds`.
    pub bare_jobs_per_s: f64,
    /// `jobs_per_s / bare_jobs_per_s`.
    pub vs_bare: f64,
}

/// Deletes a queue's keys when dropped, however the benchmark ends.
struct Cleanup<'a> {
    url: &'a str,
    keys: Vec<String>,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        if let Ok(mut con) = connect(self.url) {
            let _: RedisResult<()> = con.del(&self.keys);
        }
    }
}

/// Runs `jobs` no-op jobs through a fresh queue at `url` served by `workers` workers of
/// `slots` slots taking `batch` jobs per read; removes the queue's keys afterwards.
pub fn redis(
    url: &str,
    jobs: usize,
    workers: usize,
    slots: usize,
    batch: usize,
) -> Result<RedisBench, BenchError> {
    if jobs == 0 {
        return Err(BenchError::NoJobs);
    }
    let (workers, slots, batch) = (workers.max(1), slots.max(1), batch.max(1));
    let queue = format!("frugal-bench-{}", std::process::id());
    let bare_queue = format!("{queue}-bare");
    let _cleanup = Cleanup {
        url,
        keys: [Keys::new(&queue), Keys::new(&bare_queue)]
            .iter()
            .flat_map(|k| k.all().map(String::from))
            .collect(),
    };
    let mut farm = RedisFarm::connect(url, &queue, &queue, Duration::from_secs(30))?;
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..workers)
        .map(|w| {
            let mut registry = Registry::new();
            register_builtin(&mut registry).expect("built-in kinds register");
            let options = WorkerOptions {
                queue: queue.clone(),
                jobs: slots,
                batch,
                name: format!("bench-{w}"),
                piece_bytes: crate::queue::PIECE_BYTES,
            };
            let worker = Worker::new(url, registry, options, stop.clone(), |_| {});
            std::thread::spawn(move || worker.run())
        })
        .collect();
    let measured = (|| -> Result<(f64, usize), BenchError> {
        // The clock starts once every worker has connected and announced itself.
        let start = Instant::now();
        while farm.workers()?.len() < workers {
            if start.elapsed() > Duration::from_secs(30) {
                return Err(BenchError::WorkersDidNotStart { seconds: 30 });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let t = Instant::now();
        farm.submit(
            (0..jobs)
                .map(|i| Job::new(format!("noop-{i}"), "noop", serde_json::json!({}), i as u64))
                .collect(),
        )?;
        let outcomes = collect(&mut farm, |_| {})?;
        let seconds = t.elapsed().as_secs_f64();
        failures(&outcomes)?;
        Ok((seconds, outcomes.len()))
    })();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().map_err(|_| BenchError::WorkerPanicked)??;
    }
    drop(farm);
    let (seconds, returned) = measured?;
    if returned != jobs {
        return Err(BenchError::Incomplete {
            returned,
            expected: jobs,
            detail: String::new(),
        });
    }
    let mut con = connect(url)?;
    let bare_seconds = bare(&mut con, &Keys::new(&bare_queue), jobs, batch).map_err(|cause| {
        BenchError::Redis {
            url: redacted(url),
            cause,
        }
    })?;
    let jobs_per_s = jobs as f64 / seconds;
    let bare_jobs_per_s = jobs as f64 / bare_seconds;
    Ok(RedisBench {
        url: redacted(url),
        jobs,
        workers,
        slots,
        batch,
        seconds,
        jobs_per_s,
        bare_seconds,
        bare_jobs_per_s,
        vs_bare: jobs_per_s / bare_jobs_per_s,
    })
}

/// Ids of the entries in a stream read's reply.
fn entry_ids(reply: Option<StreamReadReply>) -> Vec<String> {
    reply
        .into_iter()
        .flat_map(|r| r.keys)
        .flat_map(|k| k.ids)
        .map(|e| e.id)
        .collect()
}

/// The farm's commands for `jobs` no-op jobs, from one client: see [`RedisBench::bare_seconds`].
fn bare(con: &mut Connection, keys: &Keys, jobs: usize, batch: usize) -> RedisResult<f64> {
    let _: () = con.del(&keys.all())?;
    let _: () = con.xgroup_create_mkstream(&keys.jobs, GROUP, "0")?;
    let _: () = con.set(&keys.lease, 30_000)?;
    let job = |i: usize| {
        serde_json::to_string(&Job::new(
            format!("noop-{i}"),
            "noop",
            serde_json::json!({}),
            i as u64,
        ))
        .expect("jobs serialize")
    };
    let outcome = serde_json::to_string(&Outcome {
        id: "noop-0".into(),
        result: Ok(Default::default()),
        attempts: 1,
        worker: "bench-0-0".into(),
        seconds: 1e-6,
        data: None,
    })
    .expect("outcomes serialize");
    let t = Instant::now();
    for chunk in (0..jobs).collect::<Vec<_>>().chunks(1000) {
        let mut pipe = redis::pipe();
        for &i in chunk {
            pipe.xadd(&keys.jobs, "*", &[("job", job(i))]).ignore();
        }
        pipe.query::<()>(con)?;
    }
    let opts = StreamReadOptions::default()
        .group(GROUP, "bare")
        .count(batch);
    let mut done = 0;
    while done < jobs {
        let _: Option<u64> = con.get(&keys.lease)?;
        let _: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(&keys.jobs)
            .arg(GROUP)
            .arg("bare")
            .arg(30_000)
            .arg("0-0")
            .arg("COUNT")
            .arg(batch)
            .query(con)?;
        let ids = entry_ids(con.xread_options(&[&keys.jobs], &[">"], &opts)?);
        if ids.is_empty() {
            break;
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for id in &ids {
            pipe.xadd(&keys.results, "*", &[("outcome", &outcome)])
                .ignore();
            pipe.xack(&keys.jobs, GROUP, &[id]).ignore();
            pipe.hdel(&keys.errors, id).ignore();
        }
        pipe.query::<()>(con)?;
        done += ids.len();
    }
    let mut last = "0-0".to_string();
    let mut read = 0;
    let opts = StreamReadOptions::default().count(1000);
    while read < done {
        let ids = entry_ids(con.xread_options(&[&keys.results], &[&last], &opts)?);
        match ids.last() {
            Some(id) => last = id.clone(),
            None => break,
        }
        read += ids.len();
    }
    Ok(t.elapsed().as_secs_f64())
}

#[cfg(test)]
mod tests {
    #[test]
    fn local_runs_every_job_of_the_calibrated_work() {
        // `local` itself fails unless every job came back with exactly its rounds.
        let b = super::local(2, 0.02, 2).unwrap();
        assert_eq!((b.workers, b.jobs), (2, 4));
        assert!(b.ideal_s > 0.0 && b.farm_s > 0.0 && b.bare_s > 0.0, "{b:?}");
        assert!(super::redis("redis://127.0.0.1:1/", 0, 1, 1, 1).is_err());
    }
}
