//! The Redis backend: jobs and results on streams, workers in a consumer group.
//!
//! Keys, for a queue named `q`:
//! - `q:jobs`: the job stream; workers read it through the consumer group `workers`.
//! - `q:results`: one entry per finished attempt chain (an [`Outcome`] as JSON).
//! - `q:errors`: hash, job id → the error of its latest failed attempt.
//! - `q:lease_ms`: the lease every worker holds a job for, set by the run.
//! - `q:run`: the run that owns the queue (expires unless the run keeps it alive).
//! - `q:worker:NAME`: a live worker's description (expires when it stops beating).
//! - `q:data:ENTRY.N:K`: piece `K` of the data of attempt `N` at job entry `ENTRY`, when
//!   that data is larger than a piece ([`WorkerOptions::piece_bytes`]); its result entry
//!   names the pieces, the reader joins and deletes them. They expire after a week if no
//!   reader comes.
//!
//! A worker takes a job with XREADGROUP (delivery 1) or, when some worker's lease on it
//! expired, with XAUTOCLAIM (each claim counts one more delivery). While it runs, the
//! worker's heartbeat resets the entry's idle time — but only while the worker still owns
//! it, so a worker that stalled cannot take a job back from the one that reclaimed it. A
//! failed attempt is released at once for any worker to claim; once a job has been
//! delivered `max_attempts` times, whoever holds it records the failure with the last
//! error and acknowledges it. Results and acknowledgements go together in one MULTI.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::streams::{
    StreamAutoClaimReply, StreamId, StreamPendingCountReply, StreamReadOptions, StreamReadReply,
};
use redis::{Commands, Connection, RedisResult};
use serde::{Deserialize, Serialize};

use crate::job::{Job, Outcome};
use crate::kind::{Context, Registry, not_registered};
use crate::{Farm, FarmError, Tally};

pub(crate) const GROUP: &str = "workers";
/// About how many bytes of results one read of the results stream brings back.
const READ_BYTES: usize = 64 << 20;
/// How long a run's claim on its queue lasts without being renewed.
const RUN_CLAIM_MS: u64 = 15_000;
/// Largest piece of a result's data sent as one Redis value (a value holds at most 512 MiB,
/// and one long write stalls every other client of the server).
pub const PIECE_BYTES: usize = 64 << 20;
/// How long unread pieces live (a run that never comes back for its results).
const PIECE_TTL_S: u64 = 7 * 24 * 3600;

pub(crate) struct Keys {
    pub(crate) jobs: String,
    pub(crate) results: String,
    pub(crate) errors: String,
    pub(crate) lease: String,
    run: String,
    worker_prefix: String,
    data_prefix: String,
}

impl Keys {
    /// The queue's own keys (workers' heartbeat keys expire by themselves).
    pub(crate) fn all(&self) -> [&str; 5] {
        [
            &self.jobs,
            &self.results,
            &self.errors,
            &self.lease,
            &self.run,
        ]
    }

    pub(crate) fn new(queue: &str) -> Self {
        Self {
            jobs: format!("{queue}:jobs"),
            results: format!("{queue}:results"),
            errors: format!("{queue}:errors"),
            lease: format!("{queue}:lease_ms"),
            run: format!("{queue}:run"),
            worker_prefix: format!("{queue}:worker:"),
            data_prefix: format!("{queue}:data:"),
        }
    }
}

/// The URL with its password masked, for messages.
pub(crate) fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &url[..s + 3], &url[at..]),
        _ => url.to_string(),
    }
}

pub(crate) fn connect(url: &str) -> Result<Connection, FarmError> {
    // rediss:// needs a TLS crypto provider; installing it twice is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls = url.starts_with("rediss://");
    let err = |e: redis::RedisError| {
        let mut message = e.to_string();
        let set = |var| std::env::var_os(var).is_some_and(|v| !v.is_empty());
        if tls && message.contains("CertificateRequired") {
            message.push_str(if set("FRUGAL_REDIS_CERT") {
                "; the server refused the client certificate in FRUGAL_REDIS_CERT: is it signed by the authority the server trusts?"
            } else {
                "; the server wants a client certificate: set FRUGAL_REDIS_CERT and FRUGAL_REDIS_KEY to its PEM files"
            });
        } else if tls && message.contains("UnknownIssuer") {
            message.push_str(if set("FRUGAL_REDIS_CA") {
                "; the authority in FRUGAL_REDIS_CA did not sign the server's certificate"
            } else {
                "; to trust a private authority set FRUGAL_REDIS_CA to its certificate (PEM), or on a trusted network end the URL with #insecure"
            });
        }
        FarmError::Redis {
            url: redacted(url),
            message,
        }
    };
    let files = tls_files().map_err(|message| FarmError::Redis {
        url: redacted(url),
        message,
    })?;
    let client = match files {
        Some(certs) if tls => redis::Client::build_with_tls(url, certs),
        Some(_) => {
            return Err(FarmError::Redis {
                url: redacted(url),
                message: "FRUGAL_REDIS_CA/FRUGAL_REDIS_CERT are set, but the URL is redis:// (no TLS); use rediss://".into(),
            });
        }
        None => redis::Client::open(url),
    }
    .map_err(err)?;
    let mut con = client
        .get_connection_with_timeout(Duration::from_secs(10))
        .map_err(err)?;
    redis::cmd("PING").query::<String>(&mut con).map_err(err)?;
    Ok(con)
}

/// TLS material named by the environment: `FRUGAL_REDIS_CA`, PEM certificates to trust
/// instead of the system's roots, and `FRUGAL_REDIS_CERT` with `FRUGAL_REDIS_KEY`, a client
/// certificate for servers that require one (`tls-auth-clients yes`).
fn tls_files() -> Result<Option<redis::TlsCertificates>, String> {
    let read = |var: &str| -> Result<Option<Vec<u8>>, String> {
        match std::env::var_os(var) {
            Some(path) if !path.is_empty() => std::fs::read(&path)
                .map(Some)
                .map_err(|e| format!("{var}={}: {e}", std::path::Path::new(&path).display())),
            _ => Ok(None),
        }
    };
    // Checked here: an empty trust store would only say "unknown issuer" later.
    let pem = |var: &str, what: &str, marker: &str| -> Result<Option<Vec<u8>>, String> {
        let bytes = read(var)?;
        match &bytes {
            Some(b) if !String::from_utf8_lossy(b).contains(marker) => Err(format!(
                "{var}={}: no {what} in it (expected a PEM file with {marker:?})",
                std::env::var_os(var).unwrap_or_default().to_string_lossy()
            )),
            _ => Ok(bytes),
        }
    };
    let root_cert = pem(
        "FRUGAL_REDIS_CA",
        "certificate",
        "-----BEGIN CERTIFICATE-----",
    )?;
    let cert = pem(
        "FRUGAL_REDIS_CERT",
        "certificate",
        "-----BEGIN CERTIFICATE-----",
    )?;
    let key = pem("FRUGAL_REDIS_KEY", "private key", "PRIVATE KEY-----")?;
    let client_tls = match (cert, key) {
        (Some(client_cert), Some(client_key)) => Some(redis::ClientTlsConfig {
            client_cert,
            client_key,
        }),
        (None, None) => None,
        _ => {
            return Err(
                "FRUGAL_REDIS_CERT and FRUGAL_REDIS_KEY go together: set both for a client certificate, or neither".into(),
            );
        }
    };
    Ok(
        (root_cert.is_some() || client_tls.is_some()).then_some(redis::TlsCertificates {
            client_tls,
            root_cert,
        }),
    )
}

/// Creates the consumer group (and the stream) unless they exist.
fn ensure_group(con: &mut Connection, jobs: &str) -> RedisResult<()> {
    match con.xgroup_create_mkstream::<_, _, _, ()>(jobs, GROUP, "0") {
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        other => other,
    }
}

/// The coordinator's side of a Redis queue: submits jobs, reads results.
///
/// Connecting claims the queue for one run (`run_id`) and clears what an earlier run left
/// there; a second run on the same queue is refused while the first is alive, and a run
/// restarted with the same id (a resumed run) takes its queue back at once.
pub struct RedisFarm {
    url: String,
    con: Connection,
    keys: Keys,
    run_id: String,
    last_result: String,
    buffer: VecDeque<Outcome>,
    tally: Tally,
    claimed_at: Instant,
    read_count: usize,
}

impl RedisFarm {
    /// Connects, claims `queue` for `run_id`, clears it, and sets the lease workers hold jobs for.
    pub fn connect(
        url: &str,
        queue: &str,
        run_id: &str,
        lease: Duration,
    ) -> Result<Self, FarmError> {
        let mut con = connect(url)?;
        let keys = Keys::new(queue);
        let err = |e: redis::RedisError| FarmError::Redis {
            url: redacted(url),
            message: e.to_string(),
        };
        let claimed: bool = redis::cmd("SET")
            .arg(&keys.run)
            .arg(run_id)
            .arg("NX")
            .arg("PX")
            .arg(RUN_CLAIM_MS)
            .query::<Option<String>>(&mut con)
            .map_err(err)?
            .is_some();
        if !claimed {
            let holder: Option<String> = con.get(&keys.run).map_err(err)?;
            if holder.as_deref() != Some(run_id) {
                return Err(FarmError::Redis {
                    url: redacted(url),
                    message: format!(
                        "queue {queue:?} is in use by run {:?}; use another queue name, or wait {} s if that run has stopped",
                        holder.unwrap_or_default(),
                        RUN_CLAIM_MS / 1000
                    ),
                });
            }
        }
        let lease_ms = lease.as_millis().max(1) as u64;
        redis::pipe()
            .atomic()
            .del(&[&keys.jobs, &keys.results, &keys.errors])
            .ignore()
            .cmd("XGROUP")
            .arg("CREATE")
            .arg(&keys.jobs)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .ignore()
            .set(&keys.lease, lease_ms)
            .ignore()
            .cmd("SET")
            .arg(&keys.run)
            .arg(run_id)
            .arg("PX")
            .arg(RUN_CLAIM_MS)
            .ignore()
            .query::<()>(&mut con)
            .map_err(err)?;
        // Pieces of results an earlier run never read.
        let pieces: Vec<String> = con
            .scan_match::<_, String>(format!("{}*", keys.data_prefix))
            .map_err(err)?
            .collect::<Result<_, _>>()
            .map_err(err)?;
        for chunk in pieces.chunks(500) {
            con.del::<_, ()>(chunk).map_err(err)?;
        }
        Ok(Self {
            url: redacted(url),
            con,
            keys,
            run_id: run_id.to_string(),
            last_result: "0-0".into(),
            buffer: VecDeque::new(),
            tally: Tally::default(),
            claimed_at: Instant::now(),
            read_count: 1000,
        })
    }

    fn err(&self, e: redis::RedisError) -> FarmError {
        FarmError::Redis {
            url: self.url.clone(),
            message: e.to_string(),
        }
    }

    fn keep_claim(&mut self) -> Result<(), FarmError> {
        if self.claimed_at.elapsed() < Duration::from_millis(RUN_CLAIM_MS / 3) {
            return Ok(());
        }
        let r = redis::cmd("SET")
            .arg(&self.keys.run)
            .arg(&self.run_id)
            .arg("PX")
            .arg(RUN_CLAIM_MS)
            .query::<()>(&mut self.con);
        r.map_err(|e| self.err(e))?;
        self.claimed_at = Instant::now();
        Ok(())
    }

    /// Reads, joins and deletes the pieces a result entry names (`PREFIX COUNT BYTES`).
    fn join_pieces(&mut self, entry: &str, named: &str) -> Result<Vec<u8>, FarmError> {
        let bad = |message: String| FarmError::Redis {
            url: self.url.clone(),
            message: format!("result entry {entry} in {}: {message}", self.keys.results),
        };
        let Some((prefix, count, bytes)) = parse_pieces(named) else {
            return Err(bad(format!("names its data's pieces as {named:?}")));
        };
        if !prefix.starts_with(&self.keys.data_prefix) {
            return Err(bad(format!("names pieces outside this queue: {prefix:?}")));
        }
        // The size is the entry's word; what is reserved is bounded by what the pieces hold.
        let mut data = Vec::with_capacity(bytes.min(count.saturating_mul(PIECE_BYTES)));
        let keys: Vec<String> = (0..count).map(|k| format!("{prefix}:{k}")).collect();
        for key in &keys {
            let piece: Option<Vec<u8>> = {
                let r = self.con.get(key);
                r.map_err(|e| self.err(e))?
            };
            match piece {
                Some(p) if data.len() + p.len() <= bytes => data.extend_from_slice(&p),
                Some(_) => return Err(bad(format!("piece {key} runs past {bytes} bytes"))),
                None => {
                    return Err(bad(format!(
                        "piece {key} of its data is gone (expired, or deleted by another reader)"
                    )));
                }
            }
        }
        if data.len() != bytes {
            return Err(bad(format!(
                "its pieces hold {} bytes, not {bytes}",
                data.len()
            )));
        }
        let r = self.con.del::<_, ()>(&keys);
        r.map_err(|e| self.err(e))?;
        Ok(data)
    }

    /// Live workers on this queue (those whose heartbeat has not expired).
    pub fn workers(&mut self) -> Result<Vec<WorkerInfo>, FarmError> {
        let prefix = self.keys.worker_prefix.clone();
        live_workers(&mut self.con, &prefix).map_err(|e| self.err(e))
    }
}

impl Farm for RedisFarm {
    fn submit(&mut self, jobs: Vec<Job>) -> Result<(), FarmError> {
        self.keep_claim()?;
        for chunk in jobs.chunks(1000) {
            let mut pipe = redis::pipe();
            for job in chunk {
                self.tally.submitted(&job.id)?;
                let json = serde_json::to_string(job).expect("jobs serialize");
                pipe.xadd(&self.keys.jobs, "*", &[("job", json)]).ignore();
            }
            let r = pipe.query::<()>(&mut self.con);
            r.map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    fn next(&mut self, wait: Duration) -> Result<Option<Outcome>, FarmError> {
        loop {
            if let Some(o) = self.buffer.pop_front()
                && let Some(o) = self.tally.accept(o)
            {
                return Ok(Some(o));
            }
            if !self.buffer.is_empty() {
                continue;
            }
            if self.tally.in_flight() == 0 {
                return Ok(None);
            }
            self.keep_claim()?;
            let block = wait.as_millis().clamp(1, (RUN_CLAIM_MS / 3) as u128) as usize;
            let opts = StreamReadOptions::default()
                .count(self.read_count)
                .block(block);
            let reply: Option<StreamReadReply> = {
                let r = self
                    .con
                    .xread_options(&[&self.keys.results], &[&self.last_result], &opts);
                r.map_err(|e| self.err(e))?
            };
            let entries: Vec<StreamId> = reply
                .into_iter()
                .flat_map(|r| r.keys)
                .flat_map(|k| k.ids)
                .collect();
            if entries.is_empty() {
                return Ok(None);
            }
            let mut with_data = Vec::new();
            let mut largest = 0;
            let mut joined = 0usize;
            for entry in entries {
                let pieces: Option<String> = entry.get("pieces");
                // Results in pieces are joined in memory: one read brings back about
                // READ_BYTES of them (at least one); the rest wait in Redis for the next.
                if let Some((_, _, size)) = pieces.as_deref().and_then(parse_pieces) {
                    if joined > 0 && joined.saturating_add(size) > READ_BYTES {
                        break;
                    }
                    joined = joined.saturating_add(size);
                }
                self.last_result = entry.id.clone();
                let text: Option<String> = entry.get("outcome");
                match text.as_deref().map(serde_json::from_str::<Outcome>) {
                    Some(Ok(o)) => {
                        let data: Option<Vec<u8>> = match pieces {
                            Some(p) => Some(self.join_pieces(&entry.id, &p)?),
                            None => entry.get("data"),
                        };
                        if let Some(d) = &data {
                            largest = largest.max(d.len());
                            with_data.push(entry.id.clone());
                        }
                        self.buffer.push_back(Outcome { data, ..o });
                    }
                    _ => {
                        return Err(FarmError::Redis {
                            url: self.url.clone(),
                            message: format!(
                                "result entry {} in {} is not an outcome",
                                entry.id, self.keys.results
                            ),
                        });
                    }
                }
            }
            // Data may be megabytes per result: once read it leaves the server (which
            // would otherwise hold a whole dataset), and later reads take about
            // READ_BYTES at a time.
            self.read_count = (READ_BYTES / largest.max(1)).clamp(1, 1000);
            if !with_data.is_empty() {
                let r = self.con.xdel::<_, _, ()>(&self.keys.results, &with_data);
                r.map_err(|e| self.err(e))?;
            }
        }
    }

    fn tally(&self) -> &Tally {
        &self.tally
    }

    fn describe(&self) -> String {
        format!(
            "redis {} queue {}",
            self.url,
            self.keys.jobs.trim_end_matches(":jobs")
        )
    }
}

impl Drop for RedisFarm {
    fn drop(&mut self) {
        // Let the next run have the queue at once; the jobs and results stay for inspection.
        let _ = redis::cmd("EVAL")
            .arg("if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0")
            .arg(1)
            .arg(&self.keys.run)
            .arg(&self.run_id)
            .query::<i64>(&mut self.con);
    }
}

/// How a [`Worker`] runs.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Queue name (the key prefix), `frugal` by default.
    pub queue: String,
    /// Jobs run at once (threads, each with its own connection).
    pub jobs: usize,
    /// Jobs each thread takes from the stream at a time; more than 1 only pays for jobs of
    /// milliseconds, where round trips dominate.
    pub batch: usize,
    /// This worker's name, unique among the queue's workers (host and process id by default).
    pub name: String,
    /// A job's data larger than this goes to Redis in pieces of this size
    /// ([`PIECE_BYTES`] by default), so it may exceed what one Redis value holds.
    pub piece_bytes: usize,
}

impl WorkerOptions {
    /// One job per core, named after this host and process.
    pub fn new(queue: &str) -> Self {
        Self {
            queue: queue.into(),
            jobs: std::thread::available_parallelism().map_or(1, |n| n.get()),
            batch: 1,
            name: format!("{}-{}", hostname(), std::process::id()),
            piece_bytes: PIECE_BYTES,
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map_or_else(|_| "host".into(), |h| h.trim().to_string())
}

/// A live worker, as it describes itself in its heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerInfo {
    /// Its name.
    pub name: String,
    /// Host it runs on.
    pub host: String,
    /// Process id there.
    pub pid: u32,
    /// Jobs it runs at once.
    pub jobs: usize,
    /// The kinds it accepts.
    pub kinds: Vec<String>,
    /// Jobs it finished with metrics.
    pub done: u64,
    /// Attempts that failed on it.
    pub failed: u64,
    /// Jobs running on it now.
    pub running: usize,
}

/// What a worker did, when it stops.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerReport {
    /// Jobs it finished with metrics.
    pub done: u64,
    /// Attempts that failed on it.
    pub failed: u64,
}

struct Shared {
    url: String,
    keys: Keys,
    registry: Registry,
    options: WorkerOptions,
    stop: Arc<AtomicBool>,
    /// Entries held by this process: entry id → (consumer, job id).
    held: Mutex<BTreeMap<String, (String, String)>>,
    lease_ms: AtomicU64,
    done: AtomicU64,
    failed: AtomicU64,
    log: Box<dyn Fn(&str) + Send + Sync>,
}

/// A process serving a Redis queue: runs the jobs of its registered kinds until stopped.
pub struct Worker {
    shared: Arc<Shared>,
}

/// Resets the idle time of entries this consumer still owns (`ARGV[2]` = the idle time to
/// set: 0 renews a lease; a huge value releases the entry for anyone to claim at once).
const TOUCH: &str = r"
local kept = {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], 'workers', ARGV[i], ARGV[i], 1)
  if #p == 1 and p[1][2] == ARGV[1] then
    redis.call('XCLAIM', KEYS[1], 'workers', ARGV[1], 0, ARGV[i], 'IDLE', ARGV[2], 'JUSTID')
    table.insert(kept, ARGV[i])
  end
end
return kept
";

/// Idle time given to a released entry: far beyond any lease, so the next XAUTOCLAIM takes it.
const RELEASED_IDLE_MS: u64 = 1 << 40;

impl Worker {
    /// A worker for the queue at `url`, running the kinds in `registry`; it stops when
    /// `stop` is set (running jobs are cancelled and released for other workers).
    pub fn new(
        url: &str,
        registry: Registry,
        options: WorkerOptions,
        stop: Arc<AtomicBool>,
        log: impl Fn(&str) + Send + Sync + 'static,
    ) -> Self {
        let keys = Keys::new(&options.queue);
        Self {
            shared: Arc::new(Shared {
                url: url.to_string(),
                keys,
                registry,
                options,
                stop,
                held: Mutex::new(BTreeMap::new()),
                lease_ms: AtomicU64::new(30_000),
                done: AtomicU64::new(0),
                failed: AtomicU64::new(0),
                log: Box::new(log),
            }),
        }
    }

    /// Serves the queue until stopped; connection failures are retried, not fatal, once the
    /// first connection worked.
    pub fn run(self) -> Result<WorkerReport, FarmError> {
        let s = &self.shared;
        let mut con = connect(&s.url)?;
        ensure_group(&mut con, &s.keys.jobs).map_err(|e| FarmError::Redis {
            url: redacted(&s.url),
            message: e.to_string(),
        })?;
        drop(con);
        let threads: Vec<_> = (0..s.options.jobs.max(1))
            .map(|i| {
                let shared = self.shared.clone();
                std::thread::Builder::new()
                    .name(format!("frugal-worker-{i}"))
                    .spawn(move || consume(&shared, &format!("{}-{i}", shared.options.name)))
                    .expect("spawning a worker thread")
            })
            .collect();
        let beat = {
            let shared = self.shared.clone();
            std::thread::spawn(move || heartbeat(&shared))
        };
        for t in threads {
            let _ = t.join();
        }
        let _ = beat.join();
        Ok(WorkerReport {
            done: s.done.load(Ordering::Relaxed),
            failed: s.failed.load(Ordering::Relaxed),
        })
    }
}

/// A fresh connection with the group in place, retrying with backoff; `None` once the
/// worker is stopping.
fn reconnect(s: &Shared) -> Option<Connection> {
    let mut wait = Duration::from_millis(100);
    while !s.stop.load(Ordering::Relaxed) {
        match connect(&s.url) {
            Ok(mut con) => {
                if ensure_group(&mut con, &s.keys.jobs).is_ok() {
                    return Some(con);
                }
            }
            Err(e) => (s.log)(&format!("{e}; retrying in {:.1} s", wait.as_secs_f64())),
        }
        std::thread::sleep(wait);
        wait = (wait * 2).min(Duration::from_secs(5));
    }
    None
}

/// One consumer: takes jobs (reclaimed ones first), runs them, reports them.
fn consume(s: &Shared, consumer: &str) {
    let mut con: Option<Connection> = None;
    while !s.stop.load(Ordering::Relaxed) {
        let c = match con.as_mut() {
            Some(c) => c,
            None => match reconnect(s) {
                Some(c) => con.insert(c),
                None => break,
            },
        };
        match take(s, c, consumer) {
            Ok(entries) => {
                if let Err(e) = serve(s, c, consumer, entries) {
                    (s.log)(&format!("{consumer}: {e}"));
                    // What this consumer took and did not finish stops being renewed, so its
                    // lease runs out and another worker (or this one) runs it again.
                    s.held
                        .lock()
                        .expect("held lock")
                        .retain(|_, (holder, _)| holder != consumer);
                    con = None;
                }
            }
            Err(e) => {
                if e.code() == Some("NOGROUP") || e.to_string().contains("no longer exists") {
                    // The run reset the queue: recreate the group and go on.
                    let _ = ensure_group(c, &s.keys.jobs);
                } else {
                    (s.log)(&format!("{consumer}: redis: {e}; reconnecting"));
                    con = None;
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }
}

struct Taken {
    entry: String,
    job: Result<Job, String>,
    deliveries: u64,
}

/// Up to `batch` entries: expired leases first (XAUTOCLAIM), else new ones (XREADGROUP).
fn take(s: &Shared, con: &mut Connection, consumer: &str) -> RedisResult<Vec<Taken>> {
    let lease: Option<u64> = con.get(&s.keys.lease)?;
    let lease = lease.unwrap_or(30_000).max(1);
    s.lease_ms.store(lease, Ordering::Relaxed);
    let claimed: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
        .arg(&s.keys.jobs)
        .arg(GROUP)
        .arg(consumer)
        .arg(lease)
        .arg("0-0")
        .arg("COUNT")
        .arg(s.options.batch.max(1))
        .query(con)?;
    if !claimed.claimed.is_empty() {
        let pending: StreamPendingCountReply = redis::cmd("XPENDING")
            .arg(&s.keys.jobs)
            .arg(GROUP)
            .arg("-")
            .arg("+")
            .arg(10_000)
            .arg(consumer)
            .query(con)?;
        let deliveries: HashMap<&str, u64> = pending
            .ids
            .iter()
            .map(|p| (p.id.as_str(), p.times_delivered as u64))
            .collect();
        return Ok(claimed
            .claimed
            .iter()
            .map(|e| Taken {
                entry: e.id.clone(),
                job: parse_job(e),
                deliveries: deliveries.get(e.id.as_str()).copied().unwrap_or(2),
            })
            .collect());
    }
    let opts = StreamReadOptions::default()
        .group(GROUP, consumer)
        .count(s.options.batch.max(1))
        .block((lease / 4).clamp(10, 1000) as usize);
    let reply: Option<StreamReadReply> = con.xread_options(&[&s.keys.jobs], &[">"], &opts)?;
    Ok(reply
        .into_iter()
        .flat_map(|r| r.keys)
        .flat_map(|k| k.ids)
        .map(|e| Taken {
            entry: e.id.clone(),
            job: parse_job(&e),
            deliveries: 1,
        })
        .collect())
}

fn parse_job(entry: &StreamId) -> Result<Job, String> {
    let text: String = entry
        .get("job")
        .ok_or_else(|| format!("entry {} has no \"job\" field", entry.id))?;
    serde_json::from_str(&text).map_err(|e| format!("entry {} is not a job: {e}", entry.id))
}

/// Runs what was taken, in order; results of fast jobs are sent together.
fn serve(s: &Shared, con: &mut Connection, consumer: &str, taken: Vec<Taken>) -> RedisResult<()> {
    {
        let mut held = s.held.lock().expect("held lock");
        for t in &taken {
            let id = t.job.as_ref().map(|j| j.id.clone()).unwrap_or_default();
            held.insert(t.entry.clone(), (consumer.to_string(), id));
        }
    }
    let mut pipe = redis::pipe();
    pipe.atomic();
    let mut queued = 0usize;
    let mut since = Instant::now();
    for t in taken {
        let mut large = false;
        if let Some(outcome) = attempt(s, con, consumer, &t)? {
            large = outcome.data.is_some();
            let pieces = match &outcome.data {
                Some(data) if data.len() > s.options.piece_bytes.max(1) => {
                    let prefix = format!("{}{}.{}", s.keys.data_prefix, t.entry, t.deliveries);
                    Some(send_pieces(
                        con,
                        &prefix,
                        data,
                        s.options.piece_bytes.max(1),
                    )?)
                }
                _ => None,
            };
            finish(s, &mut pipe, &t.entry, &outcome, pieces.as_deref());
            queued += 1;
        }
        // Results of slow jobs and those with data go out at once; those of fast ones
        // share a round trip.
        if queued > 0 && (large || since.elapsed() > Duration::from_millis(50) || queued >= 256) {
            pipe.query::<()>(con)?;
            pipe = redis::pipe();
            pipe.atomic();
            queued = 0;
            since = Instant::now();
        }
    }
    if queued > 0 {
        pipe.query::<()>(con)?;
    }
    Ok(())
}

/// Runs one taken entry: the outcome to record, or `None` when the entry was released for
/// another attempt (a failure under the cap, or our own shutdown).
fn attempt(
    s: &Shared,
    con: &mut Connection,
    consumer: &str,
    t: &Taken,
) -> RedisResult<Option<Outcome>> {
    let outcome = |id: &str, result, seconds| Outcome {
        id: id.to_string(),
        result,
        attempts: t.deliveries as u32,
        worker: consumer.into(),
        seconds,
        data: None,
    };
    if s.stop.load(Ordering::Relaxed) {
        release(s, con, consumer, &t.entry)?;
        return Ok(None);
    }
    let job = match &t.job {
        Ok(job) => job,
        // Unreadable entries can never succeed: report them under the entry id.
        Err(e) => return Ok(Some(outcome(&t.entry, Err(e.clone().into()), 0.0))),
    };
    let cap = u64::from(job.max_attempts.max(1));
    if t.deliveries > cap {
        // Delivered once more than allowed: its holders kept dying. Give it up.
        let last: Option<String> = con.hget(&s.keys.errors, &job.id)?;
        let error = last.unwrap_or_else(|| {
            format!("its worker was lost (lease expired) on each of {cap} attempts")
        });
        return Ok(Some(Outcome {
            attempts: cap as u32,
            ..outcome(&job.id, Err(error.into()), 0.0)
        }));
    }
    let start = Instant::now();
    let result = if s.registry.contains(&job.kind) {
        let deadline = job.timeout_s.map(|t| start + Duration::from_secs_f64(t));
        s.registry
            .run_with_data(job, &Context::new(deadline, s.stop.clone()))
    } else {
        Err(not_registered(&job.kind, &s.registry.names()))
    };
    let seconds = start.elapsed().as_secs_f64();
    match result {
        Ok((metrics, data)) => {
            s.done.fetch_add(1, Ordering::Relaxed);
            Ok(Some(Outcome {
                data,
                ..outcome(&job.id, Ok(metrics), seconds)
            }))
        }
        Err(_) if s.stop.load(Ordering::Relaxed) => {
            // Cancelled by our own shutdown: not the job's fault, so someone else runs it.
            release(s, con, consumer, &t.entry)?;
            Ok(None)
        }
        Err(e) => {
            s.failed.fetch_add(1, Ordering::Relaxed);
            let error = format!("attempt {} of {cap} on {consumer}: {e}", t.deliveries);
            (s.log)(&format!("job {} ({}) failed: {error}", job.id, job.kind));
            if t.deliveries >= cap {
                return Ok(Some(outcome(&job.id, Err(error.into()), seconds)));
            }
            let _: () = con.hset(&s.keys.errors, &job.id, &error)?;
            release(s, con, consumer, &t.entry)?;
            Ok(None)
        }
    }
}

/// Writes `data` as pieces `PREFIX:0`, `PREFIX:1`, … (each with an expiry, one round trip
/// each so no request is larger than a piece) and returns how its result entry names them.
fn send_pieces(
    con: &mut Connection,
    prefix: &str,
    data: &[u8],
    piece: usize,
) -> RedisResult<String> {
    let mut count = 0;
    for chunk in data.chunks(piece) {
        let _: () = con.set_ex(format!("{prefix}:{count}"), chunk, PIECE_TTL_S)?;
        count += 1;
    }
    Ok(format!("{prefix} {count} {}", data.len()))
}

/// Reads how a result entry names its pieces (`PREFIX COUNT BYTES`, as [`send_pieces`]
/// writes it): the key prefix, how many pieces and their total size.
fn parse_pieces(named: &str) -> Option<(&str, usize, usize)> {
    let mut words = named.split(' ');
    let prefix = words.next()?;
    let count = words.next()?.parse().ok()?;
    let bytes = words.next()?.parse().ok()?;
    words.next().is_none().then_some((prefix, count, bytes))
}

/// Queues the outcome, the acknowledgement and the error cleanup into one MULTI. Data sent
/// in pieces is named by them instead of carried.
fn finish(
    s: &Shared,
    pipe: &mut redis::Pipeline,
    entry: &str,
    outcome: &Outcome,
    pieces: Option<&str>,
) {
    let json = serde_json::to_string(outcome).expect("outcomes serialize");
    match (&outcome.data, pieces) {
        (_, Some(pieces)) => pipe.xadd(
            &s.keys.results,
            "*",
            &[("outcome", json.as_str()), ("pieces", pieces)],
        ),
        (Some(data), None) => pipe.xadd(
            &s.keys.results,
            "*",
            &[("outcome", json.as_bytes()), ("data", data.as_slice())],
        ),
        (None, None) => pipe.xadd(&s.keys.results, "*", &[("outcome", json)]),
    }
    .ignore()
    .xack(&s.keys.jobs, GROUP, &[entry])
    .ignore()
    .hdel(&s.keys.errors, &outcome.id)
    .ignore();
    s.held.lock().expect("held lock").remove(entry);
}

/// Hands an entry back for any worker to claim now (the claim counts a delivery).
fn release(s: &Shared, con: &mut Connection, consumer: &str, entry: &str) -> RedisResult<()> {
    s.held.lock().expect("held lock").remove(entry);
    redis::cmd("EVAL")
        .arg(TOUCH)
        .arg(1)
        .arg(&s.keys.jobs)
        .arg(consumer)
        .arg(RELEASED_IDLE_MS)
        .arg(entry)
        .query::<Vec<String>>(con)?;
    Ok(())
}

/// Renews the leases of every held entry and keeps this worker's description alive.
fn heartbeat(s: &Shared) {
    let mut con: Option<Connection> = None;
    let host = hostname();
    let key = format!("{}{}", s.keys.worker_prefix, s.options.name);
    let mut last = Instant::now() - Duration::from_secs(3600);
    while !s.stop.load(Ordering::Relaxed) {
        let interval =
            Duration::from_millis((s.lease_ms.load(Ordering::Relaxed) / 3).clamp(10, 10_000));
        if last.elapsed() < interval {
            std::thread::sleep(Duration::from_millis(10).min(interval));
            continue;
        }
        last = Instant::now();
        let c = match con.as_mut() {
            Some(c) => c,
            None => match reconnect(s) {
                Some(c) => con.insert(c),
                None => break,
            },
        };
        let held = s.held.lock().expect("held lock").clone();
        let mut by_consumer: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (entry, (consumer, _)) in &held {
            by_consumer
                .entry(consumer.as_str())
                .or_default()
                .push(entry.as_str());
        }
        let mut failed = false;
        for (consumer, entries) in by_consumer {
            match redis::cmd("EVAL")
                .arg(TOUCH)
                .arg(1)
                .arg(&s.keys.jobs)
                .arg(consumer)
                .arg(0)
                .arg(&entries)
                .query::<Vec<String>>(c)
            {
                Ok(kept) if kept.len() < entries.len() => {
                    for e in entries.iter().filter(|e| !kept.iter().any(|k| k == *e)) {
                        let job = held.get(*e).map(|h| h.1.as_str()).unwrap_or("?");
                        (s.log)(&format!(
                            "lost the lease on job {job}: another worker has it now; its result will count as a duplicate"
                        ));
                        s.held.lock().expect("held lock").remove(*e);
                    }
                }
                Ok(_) => {}
                Err(_) => failed = true,
            }
        }
        let info = WorkerInfo {
            name: s.options.name.clone(),
            host: host.clone(),
            pid: std::process::id(),
            jobs: s.options.jobs,
            kinds: s.registry.names(),
            done: s.done.load(Ordering::Relaxed),
            failed: s.failed.load(Ordering::Relaxed),
            running: held.len(),
        };
        let ttl = (interval * 3).as_millis() as u64;
        let json = serde_json::to_string(&info).expect("worker info serializes");
        if failed
            || redis::cmd("SET")
                .arg(&key)
                .arg(json)
                .arg("PX")
                .arg(ttl.max(1000))
                .query::<()>(c)
                .is_err()
        {
            con = None;
        }
    }
    if let Some(c) = con.as_mut() {
        let _: RedisResult<()> = c.del(&key);
    }
}

fn live_workers(con: &mut Connection, prefix: &str) -> RedisResult<Vec<WorkerInfo>> {
    let keys: Vec<String> = con
        .scan_match(format!("{prefix}*"))?
        .collect::<RedisResult<_>>()?;
    let mut workers = Vec::new();
    for k in keys {
        let v: Option<String> = con.get(&k)?;
        if let Some(w) = v.and_then(|v| serde_json::from_str::<WorkerInfo>(&v).ok()) {
            workers.push(w);
        }
    }
    workers.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(workers)
}

/// A queue's state, for `frugal farm status`.
#[derive(Debug, Clone, Serialize)]
pub struct QueueStatus {
    /// Queue name.
    pub queue: String,
    /// The run that owns it, if one is alive.
    pub run: Option<String>,
    /// Lease in milliseconds.
    pub lease_ms: Option<u64>,
    /// Entries in the job stream (acknowledged ones included until the next run clears it).
    pub jobs: u64,
    /// Jobs not yet delivered to any worker.
    pub waiting: Option<u64>,
    /// Jobs delivered and not yet finished (running, or held by a dead worker until its lease expires).
    pub pending: u64,
    /// Outcomes recorded.
    pub results: u64,
    /// Jobs whose latest attempt failed and which will be tried again.
    pub retrying: u64,
    /// Live workers.
    pub workers: Vec<WorkerInfo>,
    /// Consumers that hold jobs: name → (jobs held, milliseconds since it last touched them).
    pub holders: BTreeMap<String, (u64, u64)>,
}

/// Reads a queue's state without changing it.
pub fn queue_status(url: &str, queue: &str) -> Result<QueueStatus, FarmError> {
    let mut con = connect(url)?;
    let keys = Keys::new(queue);
    let err = |e: redis::RedisError| FarmError::Redis {
        url: redacted(url),
        message: e.to_string(),
    };
    let run: Option<String> = con.get(&keys.run).map_err(err)?;
    let lease_ms: Option<u64> = con.get(&keys.lease).map_err(err)?;
    let jobs: u64 = con.xlen(&keys.jobs).map_err(err)?;
    let results: u64 = con.xlen(&keys.results).map_err(err)?;
    let retrying: u64 = con.hlen(&keys.errors).map_err(err)?;
    let (mut waiting, mut pending) = (None, 0);
    let mut holders = BTreeMap::new();
    if jobs > 0 {
        let groups: redis::streams::StreamInfoGroupsReply =
            con.xinfo_groups(&keys.jobs).map_err(err)?;
        if let Some(g) = groups.groups.iter().find(|g| g.name == GROUP) {
            waiting = g.lag.map(|l| l as u64);
            pending = g.pending as u64;
        }
        let consumers: redis::streams::StreamInfoConsumersReply =
            con.xinfo_consumers(&keys.jobs, GROUP).map_err(err)?;
        for c in consumers.consumers.iter().filter(|c| c.pending > 0) {
            holders.insert(c.name.clone(), (c.pending as u64, c.idle as u64));
        }
    }
    let workers = live_workers(&mut con, &keys.worker_prefix).map_err(err)?;
    Ok(QueueStatus {
        queue: queue.into(),
        run,
        lease_ms,
        jobs,
        waiting,
        pending,
        results,
        retrying,
        workers,
        holders,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(
            redacted("redis://:s3cret@host:6379/0"),
            "redis://***@host:6379/0"
        );
        assert_eq!(redacted("rediss://user:pw@h"), "rediss://***@h");
        assert_eq!(redacted("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
