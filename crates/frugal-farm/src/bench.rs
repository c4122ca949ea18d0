//! Measurements of the farm itself (`frugal farm bench`): how close the local backend comes
//! to the machine's own parallel limit, and how many jobs a second pass through Redis.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redis::streams::{StreamReadOptions, StreamReadReply};
use redis::{Commands, RedisResult};
use serde::Serialize;

use crate::kind::{Registry, register_builtin, spin_round};
use crate::queue::GROUP;
use crate::queue::{connect, redacted};
use crate::{Farm, Job, LocalFarm, Outcome, RedisFarm, Worker, WorkerOptions, collect};

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
    /// Wall time of bare threads running the same work, no farm.
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
pub fn local(workers: usize, target_s: f64, jobs_per_worker: usize) -> Result<LocalBench, String> {
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
    let bare_s = t.elapsed().as_secs_f64();

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
    )
    .map_err(|e| e.to_string())?;
    let outcomes = collect(&mut farm, |_| {}).map_err(|e| e.to_string())?;
    let farm_s = t.elapsed().as_secs_f64();
    failures(&outcomes)?;
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

fn failures(outcomes: &[Outcome]) -> Result<(), String> {
    match outcomes
        .iter()
        .find_map(|o| o.result.as_ref().err().map(|e| (&o.id, e)))
    {
        Some((id, e)) => Err(format!("benchmark job {id} failed: {e}")),
        None => Ok(()),
    }
}

/// No-op jobs through a Redis queue, against the same commands issued by one client.
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
    /// The same stream commands per job (add, group read, result + acknowledgement in one
    /// MULTI, result read) issued back to back by one client, batched alike: what the
    /// server does for the protocol with no farm around it.
    pub bare_seconds: f64,
    /// `jobs / bare_seconds`.
    pub bare_jobs_per_s: f64,
    /// `jobs_per_s / bare_jobs_per_s`.
    pub vs_bare: f64,
}

/// Runs `jobs` no-op jobs through a fresh queue at `url` served by `workers` workers of
/// `slots` slots taking `batch` jobs per read; removes the queue's keys afterwards.
pub fn redis(
    url: &str,
    jobs: usize,
    workers: usize,
    slots: usize,
    batch: usize,
) -> Result<RedisBench, String> {
    let queue = format!("frugal-bench-{}", std::process::id());
    let batch = batch.max(1);
    let mut farm = RedisFarm::connect(url, &queue, &queue, Duration::from_secs(30))
        .map_err(|e| e.to_string())?;
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..workers.max(1))
        .map(|w| {
            let mut registry = Registry::new();
            register_builtin(&mut registry).expect("built-in kinds register");
            let options = WorkerOptions {
                queue: queue.clone(),
                jobs: slots.max(1),
                batch,
                name: format!("bench-{w}"),
            };
            let worker = Worker::new(url, registry, options, stop.clone(), |_| {});
            std::thread::spawn(move || worker.run())
        })
        .collect();
    // Let the workers connect and block on the stream before the clock starts.
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    let submitted = farm.submit(
        (0..jobs)
            .map(|i| Job::new(format!("noop-{i}"), "noop", serde_json::json!({}), i as u64))
            .collect(),
    );
    let outcomes = submitted.and_then(|()| collect(&mut farm, |_| {}));
    let seconds = t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join()
            .map_err(|_| "a benchmark worker panicked".to_string())?
            .map_err(|e| e.to_string())?;
    }
    drop(farm);
    let outcomes = outcomes.map_err(|e| e.to_string())?;
    failures(&outcomes)?;
    if outcomes.len() != jobs {
        return Err(format!("{} of {jobs} jobs came back", outcomes.len()));
    }
    let bare_seconds = bare(url, &format!("{queue}-bare"), jobs, batch)
        .map_err(|e| format!("redis at {}: {e}", redacted(url)))?;
    let mut con = connect(url).map_err(|e| e.to_string())?;
    let keys: Vec<String> = ["jobs", "results", "errors", "lease_ms", "run"]
        .iter()
        .map(|k| format!("{queue}:{k}"))
        .collect();
    let _: RedisResult<()> = con.del(&keys);
    let jobs_per_s = jobs as f64 / seconds;
    let bare_jobs_per_s = jobs as f64 / bare_seconds;
    Ok(RedisBench {
        url: redacted(url),
        jobs,
        workers: workers.max(1),
        slots: slots.max(1),
        batch,
        seconds,
        jobs_per_s,
        bare_seconds,
        bare_jobs_per_s,
        vs_bare: jobs_per_s / bare_jobs_per_s,
    })
}

/// The farm's stream commands for `jobs` empty jobs, by one client: submit in pipelines of
/// 1,000, take `batch` at a time and answer each batch in one MULTI, read the results.
fn bare(url: &str, stream: &str, jobs: usize, batch: usize) -> RedisResult<f64> {
    let mut con = connect(url)
        .map_err(|e| redis::RedisError::from((redis::ErrorKind::Io, "connect", e.to_string())))?;
    let (jobs_key, results_key) = (format!("{stream}:jobs"), format!("{stream}:results"));
    let _: () = con.del(&[&jobs_key, &results_key])?;
    let _: () = con.xgroup_create_mkstream(&jobs_key, GROUP, "0")?;
    let job = serde_json::to_string(&Job::new("noop-0", "noop", serde_json::json!({}), 0))
        .expect("jobs serialize");
    let t = Instant::now();
    for chunk in (0..jobs).collect::<Vec<_>>().chunks(1000) {
        let mut pipe = redis::pipe();
        for _ in chunk {
            pipe.xadd(&jobs_key, "*", &[("job", &job)]).ignore();
        }
        pipe.query::<()>(&mut con)?;
    }
    let opts = StreamReadOptions::default()
        .group(GROUP, "bare")
        .count(batch);
    let mut done = 0;
    while done < jobs {
        let reply: Option<StreamReadReply> = con.xread_options(&[&jobs_key], &[">"], &opts)?;
        let ids: Vec<String> = reply
            .into_iter()
            .flat_map(|r| r.keys)
            .flat_map(|k| k.ids)
            .map(|e| e.id)
            .collect();
        if ids.is_empty() {
            break;
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for id in &ids {
            pipe.xadd(&results_key, "*", &[("outcome", "{}")]).ignore();
            pipe.xack(&jobs_key, GROUP, &[id]).ignore();
            pipe.hdel(format!("{stream}:errors"), id).ignore();
        }
        pipe.query::<()>(&mut con)?;
        done += ids.len();
    }
    let mut last = "0-0".to_string();
    let mut read = 0;
    while read < done {
        let reply: StreamReadReply = con.xread_options(
            &[&results_key],
            &[&last],
            &StreamReadOptions::default().count(1000),
        )?;
        let ids: Vec<String> = reply
            .keys
            .into_iter()
            .flat_map(|k| k.ids)
            .map(|e| e.id)
            .collect();
        match ids.last() {
            Some(id) => last = id.clone(),
            None => break,
        }
        read += ids.len();
    }
    let seconds = t.elapsed().as_secs_f64();
    let _: () = con.del(&[&jobs_key, &results_key])?;
    Ok(seconds)
}

#[cfg(test)]
mod tests {
    #[test]
    fn local_runs_every_job_of_the_calibrated_work() {
        let b = super::local(2, 0.02, 2).unwrap();
        assert_eq!((b.workers, b.jobs), (2, 4));
        assert!(b.rounds >= 1, "{b:?}");
        assert!(b.ideal_s > 0.0 && b.farm_s > 0.0 && b.bare_s > 0.0, "{b:?}");
        assert!((b.efficiency - b.ideal_s / b.farm_s).abs() < 1e-12);
    }
}
