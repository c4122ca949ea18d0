//! The Redis backend against a real `redis-server` on a free loopback port.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use frugal_farm::testing::RedisServer;
use frugal_farm::{
    Context, Farm, Job, Metrics, Outcome, RedisFarm, Registry, Worker, WorkerOptions, collect,
    register_builtin,
};
use serde_json::json;

fn server() -> Option<RedisServer> {
    RedisServer::for_test(None)
}

fn registry() -> Registry {
    let mut r = Registry::new();
    register_builtin(&mut r).unwrap();
    r.register("crash", |_: &Job, _: &Context| {
        Err::<Metrics, frugal_farm::JobError>("segfault (simulated)".into())
    })
    .unwrap();
    // Binary output: every byte value, a length that depends on the job.
    r.register("bytes", |job: &Job, ctx: &Context| {
        let n = job.params["x"].as_u64().ok_or("x")? as usize * 1000;
        ctx.attach((0..n).map(|i| (i % 256) as u8).collect());
        Ok(Metrics::new())
    })
    .unwrap();
    r.register("square", |job: &Job, _: &Context| {
        let x = job.params["x"].as_f64().ok_or("x")?;
        Ok(Metrics::from([("y".to_string(), x * x)]))
    })
    .unwrap();
    r
}

struct Running {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

fn worker(url: &str, queue: &str, name: &str, jobs: usize, registry: Registry) -> Running {
    let stop = Arc::new(AtomicBool::new(false));
    let mut options = WorkerOptions::new(queue);
    options.jobs = jobs;
    options.name = name.into();
    let w = Worker::new(url, registry, options, stop.clone(), |_| {});
    Running {
        stop,
        thread: Some(std::thread::spawn(move || {
            w.run().unwrap();
        })),
    }
}

fn jobs(n: usize, kind: &str) -> Vec<Job> {
    (0..n)
        .map(|i| {
            Job::new(
                format!("r/{i}"),
                kind,
                json!({"x": i, "seconds": 0.01}),
                i as u64,
            )
        })
        .collect()
}

fn by_id(outcomes: Vec<Outcome>) -> std::collections::BTreeMap<String, Outcome> {
    outcomes.into_iter().map(|o| (o.id.clone(), o)).collect()
}

#[test]
fn every_job_exactly_once_across_workers() {
    let Some(redis) = server() else { return };
    let url = redis.url();
    let mut farm = RedisFarm::connect(&url, "q1", "run-a", Duration::from_secs(5)).unwrap();
    let _a = worker(&url, "q1", "a", 2, registry());
    let _b = worker(&url, "q1", "b", 2, registry());
    farm.submit(jobs(200, "square")).unwrap();
    let outcomes = by_id(collect(&mut farm, |_| {}).unwrap());
    assert_eq!(outcomes.len(), 200);
    for i in 0..200 {
        let o = &outcomes[&format!("r/{i}")];
        assert_eq!(o.result.as_ref().unwrap()["y"], (i * i) as f64);
        assert_eq!(o.attempts, 1);
    }
    assert_eq!((farm.tally().duplicates(), farm.tally().stale()), (0, 0));
    let workers = farm.workers().unwrap();
    assert!(
        workers
            .iter()
            .any(|w| w.name == "a" && w.kinds.contains(&"square".to_string())),
        "{workers:?}"
    );
    let status = frugal_farm::queue_status(&url, "q1").unwrap();
    assert_eq!(
        (status.results, status.pending, status.run.as_deref()),
        (200, 0, Some("run-a"))
    );
}

#[test]
fn failing_and_unregistered_jobs_hit_the_cap_and_are_reported() {
    let Some(redis) = server() else { return };
    let url = redis.url();
    let mut farm = RedisFarm::connect(&url, "q2", "run-b", Duration::from_secs(5)).unwrap();
    let mut narrow = Registry::new();
    register_builtin(&mut narrow).unwrap();
    narrow
        .register("crash", |_: &Job, _: &Context| {
            Err::<Metrics, frugal_farm::JobError>("segfault (simulated)".into())
        })
        .unwrap();
    let _w = worker(&url, "q2", "w", 2, narrow);
    let mut crash = Job::new("crash", "crash", json!({}), 0);
    crash.max_attempts = 4;
    let rm = Job::new("rm", "rm-rf", json!({"path": "/"}), 0);
    farm.submit(vec![crash, rm, Job::new("ok", "noop", json!({}), 0)])
        .unwrap();
    let outcomes = by_id(collect(&mut farm, |_| {}).unwrap());
    let c = &outcomes["crash"];
    assert_eq!(c.attempts, 4);
    let e = c.result.as_ref().unwrap_err();
    assert!(
        e.to_string().contains("attempt 4 of 4") && e.to_string().contains("segfault"),
        "{e}"
    );
    let e = outcomes["rm"].result.as_ref().unwrap_err();
    assert!(e.to_string().contains("\"rm-rf\" is not registered"), "{e}");
    assert!(outcomes["ok"].result.is_ok());
    assert_eq!(farm.tally().failed(), 2);
    // Nothing is left to retry: the queue is quiet.
    let status = frugal_farm::queue_status(&url, "q2").unwrap();
    assert_eq!((status.pending, status.retrying), (0, 0), "{status:?}");
}

/// A worker that takes a job and dies: the raw XREADGROUP of a consumer that never acks.
fn take_and_die(url: &str, queue: &str, consumer: &str) -> Vec<String> {
    let mut con = redis::Client::open(url).unwrap().get_connection().unwrap();
    let reply: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("workers")
        .arg(consumer)
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(format!("{queue}:jobs"))
        .arg(">")
        .query(&mut con)
        .unwrap();
    reply
        .keys
        .into_iter()
        .flat_map(|k| k.ids)
        .map(|e| e.id)
        .collect()
}

#[test]
fn a_dead_workers_job_is_reclaimed_after_its_lease() {
    let Some(redis) = server() else { return };
    let url = redis.url();
    let mut farm = RedisFarm::connect(&url, "q3", "run-c", Duration::from_millis(300)).unwrap();
    farm.submit(jobs(3, "square")).unwrap();
    assert_eq!(take_and_die(&url, "q3", "ghost").len(), 1);
    let _w = worker(&url, "q3", "w", 1, registry());
    let outcomes = by_id(collect(&mut farm, |_| {}).unwrap());
    assert_eq!(outcomes.len(), 3);
    assert_eq!(
        outcomes["r/0"].attempts, 2,
        "the ghost's job was delivered twice"
    );
    assert!(outcomes.values().all(|o| o.result.is_ok()));
}

#[test]
fn a_job_whose_workers_keep_dying_is_given_up() {
    let Some(redis) = server() else { return };
    let url = redis.url();
    let mut farm = RedisFarm::connect(&url, "q4", "run-d", Duration::from_millis(100)).unwrap();
    let mut job = Job::new("doomed", "square", json!({"x": 1}), 0);
    job.max_attempts = 2;
    farm.submit(vec![job]).unwrap();
    take_and_die(&url, "q4", "ghost1");
    std::thread::sleep(Duration::from_millis(150));
    // A second worker reclaims it (delivery 2) and dies too.
    let mut con = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: redis::Value = redis::cmd("XAUTOCLAIM")
        .arg("q4:jobs")
        .arg("workers")
        .arg("ghost2")
        .arg(100)
        .arg("0-0")
        .query(&mut con)
        .unwrap();
    let _w = worker(&url, "q4", "w", 1, registry());
    let outcomes = collect(&mut farm, |_| {}).unwrap();
    assert_eq!(outcomes.len(), 1);
    let e = outcomes[0].result.as_ref().unwrap_err();
    assert!(
        e.to_string().contains("lost") && e.to_string().contains("2 attempts"),
        "{e}"
    );
}

#[test]
fn late_results_are_duplicates_and_old_runs_results_are_stale() {
    let Some(redis) = server() else { return };
    let url = redis.url();
    let mut farm = RedisFarm::connect(&url, "q5", "run-e", Duration::from_secs(5)).unwrap();
    farm.submit(jobs(2, "square")).unwrap();
    let _w = worker(&url, "q5", "w", 1, registry());
    let outcomes = collect(&mut farm, |_| {}).unwrap();
    assert_eq!(outcomes.len(), 2);
    // A worker that lost its lease finishes anyway, and one from another run reports late.
    let mut con = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    for id in ["r/0", "r/1", "other-run/7"] {
        let o = Outcome {
            id: id.into(),
            result: Ok(Metrics::new()),
            attempts: 1,
            worker: "late".into(),
            seconds: 0.0,
            data: None,
        };
        let _: String = redis::cmd("XADD")
            .arg("q5:results")
            .arg("*")
            .arg("outcome")
            .arg(serde_json::to_string(&o).unwrap())
            .query(&mut con)
            .unwrap();
    }
    farm.submit(jobs(3, "square").split_off(2)).unwrap();
    let more = collect(&mut farm, |_| {}).unwrap();
    assert_eq!(more.len(), 1);
    assert_eq!((farm.tally().duplicates(), farm.tally().stale()), (2, 1));
}

#[test]
fn one_run_per_queue_and_passwords_through_the_url() {
    let Some(redis) = RedisServer::for_test(Some("s3cret")) else {
        return;
    };
    let url = redis.url();
    let bad = format!("redis://:wrong@127.0.0.1:{}/", redis.port());
    let e = RedisFarm::connect(&bad, "q6", "run-f", Duration::from_secs(1))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("***@127.0.0.1") && !e.contains("wrong"), "{e}");
    let _first = RedisFarm::connect(&url, "q6", "run-f", Duration::from_secs(1)).unwrap();
    let e = RedisFarm::connect(&url, "q6", "run-g", Duration::from_secs(1))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("in use by run \"run-f\""), "{e}");
    // The same run, restarted, takes its queue back.
    RedisFarm::connect(&url, "q6", "run-f", Duration::from_secs(1)).unwrap();
}

#[test]
fn the_benchmark_brings_back_every_job_and_leaves_no_keys() {
    let Some(server) = server() else { return };
    let r = frugal_farm::bench::redis(&server.url(), 3000, 2, 2, 64).unwrap();
    assert_eq!(r.jobs, 3000);
    assert!(r.jobs_per_s > 0.0 && r.bare_jobs_per_s > 0.0, "{r:?}");
    let mut con = redis::Client::open(server.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("frugal-bench-*")
        .query(&mut con)
        .unwrap();
    assert!(keys.is_empty(), "left behind: {keys:?}");
}

#[test]
fn data_attached_by_a_job_comes_back_whole() {
    let check = |outcomes: Vec<Outcome>| {
        let outcomes = by_id(outcomes);
        assert_eq!(outcomes.len(), 30);
        for i in 0..30 {
            let data = outcomes[&format!("r/{i}")].data.as_ref().unwrap();
            assert_eq!(data.len(), i * 1000);
            assert!(data.iter().enumerate().all(|(k, &b)| b == (k % 256) as u8));
        }
    };
    let mut local = frugal_farm::LocalFarm::new(registry(), 2);
    local.submit(jobs(30, "bytes")).unwrap();
    check(collect(&mut local, |_| {}).unwrap());

    let Some(redis) = server() else { return };
    let url = redis.url();
    let mut farm = RedisFarm::connect(&url, "q7", "run-d", Duration::from_secs(5)).unwrap();
    let _a = worker(&url, "q7", "a", 2, registry());
    farm.submit(jobs(30, "bytes")).unwrap();
    check(collect(&mut farm, |_| {}).unwrap());
    drop(_a);

    // Data larger than a piece travels in pieces (here up to 8 of 4,000 bytes), comes back
    // whole, and its pieces leave the server once read.
    let mut farm = RedisFarm::connect(&url, "q8", "run-p", Duration::from_secs(5)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut options = WorkerOptions::new("q8");
    options.jobs = 2;
    options.piece_bytes = 4000;
    let w = Worker::new(&url, registry(), options, stop.clone(), |_| {});
    let _b = Running {
        stop,
        thread: Some(std::thread::spawn(move || {
            w.run().unwrap();
        })),
    };
    farm.submit(jobs(30, "bytes")).unwrap();
    // Before anyone reads them, the results larger than a piece wait in Redis as pieces.
    let mut con = redis::Client::open(url).unwrap().get_connection().unwrap();
    let start = std::time::Instant::now();
    while redis::cmd("XLEN")
        .arg("q8:results")
        .query::<usize>(&mut con)
        .unwrap()
        < 30
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the jobs never finished"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let keys: Vec<String> = redis::cmd("KEYS").arg("q8:data:*").query(&mut con).unwrap();
    // Jobs 5 to 29 hand back more than a piece: ⌈x·1000 / 4000⌉ pieces each.
    let expected: usize = (0..30usize)
        .filter(|x| x * 1000 > 4000)
        .map(|x| (x * 1000).div_ceil(4000))
        .sum();
    assert_eq!(keys.len(), expected, "pieces in Redis");
    check(collect(&mut farm, |_| {}).unwrap());
    let keys: Vec<String> = redis::cmd("KEYS").arg("q8:data:*").query(&mut con).unwrap();
    assert!(keys.is_empty(), "pieces left behind: {keys:?}");
}
