//! `frugal evolve`, `frugal worker` and `frugal farm` through the real binary; the Redis
//! tests start a real `redis-server` on a free loopback port.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{frugal, json};
use frugal_farm::testing::{KillOnDrop as Proc, RedisServer, gone};

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_frugal"))
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn evolve_json(config: &Path, extra: &[&str]) -> serde_json::Value {
    json(frugal().arg("evolve").arg(config).args(extra))
}

fn rastrigin(dir: &Path, out: &str, extra: &str) -> PathBuf {
    write(
        dir,
        &format!("{out}.toml"),
        &format!(
            "workload = \"evolve\"\noutput_dir = \"{}\"\nseed = 5\n[search]\nmethod = \"ga\"\npopulation = 20\ngenerations = 15\n{extra}\n[job]\nkind = \"rastrigin\"\n[genes]\nx = {{ low = -5.12, high = 5.12, count = 4 }}\n[fitness]\nminimize = \"f\"\n",
            dir.join(out).display()
        ),
    )
}

#[test]
fn a_local_run_writes_results_plots_and_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let config = rastrigin(dir.path(), "run", "");
    let j = evolve_json(&config, &["--workers", "2"]);
    // μ + generations·λ, λ = μ − elite for the GA.
    assert_eq!(j["evaluations"], 20 + 15 * 19);
    assert_eq!(
        (j["failed"].as_u64(), j["duplicates"].as_u64()),
        (Some(0), Some(0))
    );
    let best = j["best_fitness"].as_f64().unwrap();
    assert!((0.0..20.0).contains(&best), "{j}");
    let out = dir.path().join("run");
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 20 + 15 * 19);
    assert!(csv.starts_with("generation,id,seed,x[0],x[1],x[2],x[3],f,violation,error"));
    assert_eq!(
        std::fs::read_to_string(out.join("results.jsonl"))
            .unwrap()
            .lines()
            .count(),
        20 + 15 * 19
    );
    assert_eq!(
        std::fs::read_to_string(out.join("generations.csv"))
            .unwrap()
            .lines()
            .count(),
        1 + 16
    );
    assert!(
        std::fs::metadata(out.join("convergence.png"))
            .unwrap()
            .len()
            > 1000
    );

    // The number of workers changes nothing but the time.
    let config1 = rastrigin(dir.path(), "one", "");
    let j1 = evolve_json(&config1, &["--workers", "1"]);
    assert_eq!(j1["best_fitness"], j["best_fitness"]);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("one/results.csv")).unwrap(),
        csv
    );
}

#[test]
fn bad_configurations_are_refused_with_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let c = write(
        dir.path(),
        "bad.toml",
        "workload = \"evolve\"\noutput_dir = \"o\"\n[search]\npopulation = 10\ngenerations = 2\n[job]\nkind = \"rm-rf\"\n[genes]\nx = { low = 0.0, high = 1.0 }\n[fitness]\nminimize = \"f\"\n",
    );
    frugal()
        .arg("evolve")
        .arg(&c)
        .assert()
        .code(2)
        .stderr(predicates::str::contains(
            "job kind \"rm-rf\" is neither built in",
        ));
    let c = write(
        dir.path(),
        "bad2.toml",
        "workload = \"evolve\"\noutput_dir = \"o\"\n[search]\npopulation = 10\ngenerations = 2\n[job]\nkind = \"sphere\"\n[genes]\nx = { low = 1.0, high = 0.0 }\n[fitness]\nminimize = \"f\"\n",
    );
    frugal()
        .arg("evolve")
        .arg(&c)
        .assert()
        .code(2)
        .stderr(predicates::str::contains("genes.x"));
    let c = write(
        dir.path(),
        "bad3.toml",
        "workload = \"evolve\"\noutput_dir = \"o\"\n[search]\npopulation = 10\ngenerations = 2\n[job]\nkind = \"zdt1\"\n[genes]\nx = { low = 0.0, high = 1.0, count = 3 }\n[fitness]\nobjectives = [{ metric = \"f1\", goal = \"min\" }, { metric = \"f2\", goal = \"min\" }]\n",
    );
    frugal()
        .arg("evolve")
        .arg(&c)
        .assert()
        .code(2)
        .stderr(predicates::str::contains("use nsga2"));
}

fn wait_for(what: &str, within: Duration, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < within, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn checkpoint_generation(dir: &Path) -> u64 {
    std::fs::read(dir.join("checkpoint.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|c| c["history"].as_array().map(|h| h.len() as u64))
        .unwrap_or(0)
}

#[test]
fn a_run_killed_at_any_moment_resumes_to_the_uninterrupted_result() {
    killed_and_resumed("", "");
}

#[test]
fn a_steady_state_run_killed_at_any_moment_resumes_to_the_uninterrupted_result() {
    // One evaluation in flight: the order results arrive in cannot change the run.
    killed_and_resumed("steady_state = true", "[farm]\nin_flight = 1\n");
}

/// Kills a run of slow evaluations after its third checkpoint, resumes it, and compares
/// it with an uninterrupted run. `search` goes into `[search]`, `tail` ends the file.
fn killed_and_resumed(search: &str, tail: &str) {
    let dir = tempfile::tempdir().unwrap();
    // A command kind makes each evaluation a child process: slow enough to kill mid-run.
    let kinds = format!(
        "[kinds.slow_sphere]\ncommand = [\"{}\", \"farm\", \"exec\", \"sphere\", \"--params\", \"{{{{\\\"x\\\": {{x}}}}}}\"]\n",
        bin().display()
    );
    let config = |out: &str| {
        let text = std::fs::read_to_string(rastrigin(dir.path(), out, search))
            .unwrap()
            .replace("kind = \"rastrigin\"", "kind = \"slow_sphere\"")
            + &kinds
            + tail;
        write(dir.path(), &format!("{out}.toml"), &text)
    };
    let uninterrupted = evolve_json(&config("whole"), &["--workers", "2"]);

    let killed_dir = dir.path().join("killed");
    let cfg = config("killed");
    let mut child = Command::new(bin())
        .env_remove("FRUGAL_REDIS_URL")
        .arg("evolve")
        .arg(&cfg)
        .args(["--workers", "2", "--json"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the third checkpoint", Duration::from_secs(120), || {
        checkpoint_generation(&killed_dir) >= 3
    });
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "the run finished before it could be killed"
    );
    assert!(checkpoint_generation(&killed_dir) < 15);
    let resumed = evolve_json(&cfg, &["--workers", "2", "--resume"]);
    for key in [
        "best_fitness",
        "best_params",
        "evaluations",
        "failed",
        "generations",
    ] {
        assert_eq!(resumed[key], uninterrupted[key], "{key}");
    }
    for file in ["results.csv", "generations.csv"] {
        assert_eq!(
            std::fs::read_to_string(killed_dir.join(file)).unwrap(),
            std::fs::read_to_string(dir.path().join("whole").join(file)).unwrap(),
            "{file}"
        );
    }
}

/// The first decided evaluation of a run.
fn first_record(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("results.jsonl")).unwrap();
    serde_json::from_str(text.lines().next().unwrap()).unwrap()
}

fn redis() -> Option<RedisServer> {
    RedisServer::for_test(None)
}

fn worker(url: &str, queue: &str, name: &str, jobs: usize, config: Option<&Path>) -> Proc {
    let mut cmd = Command::new(bin());
    cmd.args([
        "worker",
        "--redis",
        url,
        "--queue",
        queue,
        "--name",
        name,
        "--jobs",
        &jobs.to_string(),
    ]);
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    Proc(
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

fn status(url: &str, queue: &str) -> serde_json::Value {
    json(frugal().args(["farm", "status", "--redis", url, "--queue", queue]))
}

fn sleepy(dir: &Path, name: &str, kind: &str, extra_job: &str) -> PathBuf {
    write(
        dir,
        &format!("{name}.toml"),
        &format!(
            "workload = \"evolve\"\noutput_dir = \"{}\"\nseed = 2\n[search]\npopulation = 6\ngenerations = 1\n[job]\nkind = \"{kind}\"\n{extra_job}\n[genes]\ng = {{ low = 0.0, high = 1.0 }}\n[fitness]\nminimize = \"seconds\"\n[farm]\nlease_s = 1.0\n",
            dir.join(name).display()
        ),
    )
}

#[test]
fn a_worker_killed_mid_job_loses_nothing() {
    let Some(server) = redis() else { return };
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let config = sleepy(dir.path(), "kill", "sleep", "params = { seconds = 0.6 }");
    let mut doomed = worker(&url, "k", "doomed", 2, None);
    let evolve = Command::new(bin())
        .env_remove("FRUGAL_REDIS_URL")
        .arg("evolve")
        .arg(&config)
        .args(["--redis", &url, "--queue", "k", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(
        "the doomed worker to hold jobs",
        Duration::from_secs(30),
        || {
            status(&url, "k")["holders"]
                .as_object()
                .is_some_and(|h| h.keys().any(|k| k.starts_with("doomed")))
        },
    );
    doomed.0.kill().unwrap();
    doomed.0.wait().unwrap();
    let _rescuer = worker(&url, "k", "rescuer", 2, None);
    let out = evolve.wait_with_output().unwrap();
    assert!(out.status.success());
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // μ + λ = 6 + 5 evaluations, each decided exactly once.
    assert_eq!(
        (j["evaluations"].as_u64(), j["failed"].as_u64()),
        (Some(11), Some(0)),
        "{j}"
    );
    let records: Vec<serde_json::Value> =
        std::fs::read_to_string(dir.path().join("kill/results.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    assert_eq!(records.len(), 11);
    assert!(
        records.iter().any(|r| r["attempts"].as_u64() == Some(2)
            && r["worker"].as_str().unwrap().starts_with("rescuer")),
        "no job was reclaimed from the killed worker"
    );
}

#[test]
fn crashing_and_unregistered_jobs_are_reported_not_retried_forever() {
    let Some(server) = redis() else { return };
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let kinds = write(
        dir.path(),
        "kinds.toml",
        "[kinds.crash]\ncommand = [\"sh\", \"-c\", \"echo 'boom' >&2; exit 3\"]\n",
    );
    let _w = worker(&url, "c", "w", 2, Some(&kinds));
    let config = sleepy(dir.path(), "crash", "crash", "max_attempts = 2");
    let j = evolve_json(&config, &["--redis", &url, "--queue", "c"]);
    assert_eq!(
        (j["evaluations"].as_u64(), j["failed"].as_u64()),
        (Some(11), Some(11)),
        "{j}"
    );
    let first = first_record(&dir.path().join("crash"));
    let e = first["error"].as_str().unwrap();
    assert!(
        e.contains("attempt 2 of 2") && e.contains("exit status: 3") && e.contains("boom"),
        "{e}"
    );

    // A worker runs only what its own configuration registers.
    let config = sleepy(dir.path(), "refused", "not_here", "max_attempts = 1");
    let j = evolve_json(&config, &["--redis", &url, "--queue", "c"]);
    assert_eq!(j["failed"].as_u64(), Some(11));
    let first = first_record(&dir.path().join("refused"));
    assert!(
        first["error"]
            .as_str()
            .unwrap()
            .contains("\"not_here\" is not registered"),
        "{first}"
    );
    let s = status(&url, "c");
    assert_eq!(
        (s["pending"].as_u64(), s["retrying"].as_u64()),
        (Some(0), Some(0)),
        "{s}"
    );
}

#[test]
fn a_killed_workers_child_processes_die_with_it() {
    let Some(server) = redis() else { return };
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("child.pid");
    let kinds = write(
        dir.path(),
        "kinds.toml",
        &format!(
            "[kinds.hang]\ncommand = [\"sh\", \"-c\", \"echo $$ > '{}'; exec sleep 120\"]\n",
            pidfile.display()
        ),
    );
    let mut w = worker(&url, "p", "w", 1, Some(&kinds));
    let config = sleepy(dir.path(), "hang", "hang", "max_attempts = 1");
    let _evolve = Proc(
        Command::new(bin())
            .arg("evolve")
            .arg(&config)
            .args(["--redis", &url, "--queue", "p"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for("the command to start", Duration::from_secs(30), || {
        std::fs::read_to_string(&pidfile).is_ok_and(|s| s.ends_with('\n'))
    });
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(!gone(pid, Duration::ZERO));
    w.0.kill().unwrap();
    w.0.wait().unwrap();
    assert!(
        gone(pid, Duration::from_secs(10)),
        "the command {pid} outlived its killed worker"
    );
}

#[test]
fn an_onnx_model_is_a_job_kind() {
    let dir = tempfile::tempdir().unwrap();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/oscillator.onnx");
    let kinds = write(
        dir.path(),
        "kinds.toml",
        &format!("[kinds.oscillator]\nonnx = \"{}\"\n", model.display()),
    );
    let out = frugal()
        .args([
            "farm",
            "exec",
            "oscillator",
            "--params",
            "{\"zeta\": 0.3, \"omega\": 2.0}",
            "--config",
        ])
        .arg(&kinds)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // Underdamped at ζ = 0.3: the step response overshoots by exp(−πζ/√(1−ζ²)) ≈ 0.37.
    let overshoot = m["overshoot"].as_f64().unwrap();
    assert!((overshoot - 0.372).abs() < 0.05, "{m}");
    frugal()
        .args([
            "farm",
            "exec",
            "oscillator",
            "--params",
            "{\"zeta\": 0.3}",
            "--config",
        ])
        .arg(&kinds)
        .assert()
        .failure()
        .stderr(predicates::str::contains("\"omega\""));
}

#[test]
fn the_shipped_zdt1_run_reaches_the_hypervolume_target() {
    let dir = tempfile::tempdir().unwrap();
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/evolve-zdt1.toml");
    let out = dir.path().join("zdt1");
    let s = evolve_json(
        &config,
        &[
            "--set",
            &format!("output_dir={:?}", out.display().to_string()),
        ],
    );
    // Population 100 × 100 generations, reference point (1, 1); the true front gives 2/3.
    assert_eq!(s["evaluations"], 10_100, "{s}");
    assert_eq!(s["failed"], 0, "{s}");
    let hv = s["hypervolume"].as_f64().unwrap();
    assert!(hv >= 0.65, "hypervolume {hv}");
    assert!(hv < 2.0 / 3.0, "hypervolume {hv} beyond the true front's");
    assert!(out.join("pareto.png").is_file() && out.join("convergence.png").is_file());
}

#[test]
fn farm_bench_measures_both_backends() {
    let mut cmd = frugal();
    cmd.args(["farm", "bench", "--workers", "2", "--seconds", "0.02"])
        .args(["--per-worker", "2", "--jobs", "500", "--batch", "16"]);
    let server = redis();
    if let Some(s) = &server {
        cmd.arg("--redis").arg(s.url());
    }
    let b = json(&mut cmd);
    assert_eq!(b["local"]["jobs"], 4, "{b}");
    assert!(b["local"]["efficiency"].as_f64().unwrap() > 0.0, "{b}");
    if server.is_some() {
        assert_eq!(b["redis"]["jobs"], 500, "{b}");
        assert!(b["redis"]["jobs_per_s"].as_f64().unwrap() > 0.0, "{b}");
    }
    frugal()
        .args(["farm", "bench", "--seconds", "0"])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("--seconds"));
}

/// `rediss://`: the server's certificate is verified (against FRUGAL_REDIS_CA for a
/// private authority), a client certificate is presented when the server requires one,
/// and `#insecure` skips verification.
#[test]
fn redis_over_tls_verifies_the_server_and_presents_a_client_certificate() {
    let required = std::env::var("FRUGAL_REQUIRE_REDIS").as_deref() == Ok("1");
    let Some(certs) = frugal_farm::testing::TestCerts::new() else {
        assert!(
            !required,
            "FRUGAL_REQUIRE_REDIS=1 but openssl cannot make certificates"
        );
        return;
    };
    let Some(server) = RedisServer::start_tls(&certs, true) else {
        assert!(
            !required,
            "FRUGAL_REQUIRE_REDIS=1 but redis-server cannot start with TLS"
        );
        return;
    };
    let url = server.url();
    assert!(url.starts_with("rediss://"), "{url}");
    let bench = |url: &str, env: &[(&str, &str)]| {
        let mut cmd = frugal();
        cmd.args([
            "farm",
            "bench",
            "--no-local",
            "--jobs",
            "200",
            "--json",
            "--redis",
            url,
        ]);
        for (k, v) in env {
            cmd.env(k, certs.path(v));
        }
        cmd.assert()
    };
    bench(&url, &[])
        .code(1)
        .stderr(predicates::str::contains("FRUGAL_REDIS_CA"));
    bench(&url, &[("FRUGAL_REDIS_CA", "ca.crt")])
        .code(1)
        .stderr(predicates::str::contains("FRUGAL_REDIS_CERT"));
    let client = [
        ("FRUGAL_REDIS_CERT", "client.crt"),
        ("FRUGAL_REDIS_KEY", "client.key"),
    ];
    for (url, env) in [
        (
            url.clone(),
            [&[("FRUGAL_REDIS_CA", "ca.crt")][..], &client].concat(),
        ),
        (format!("{url}#insecure"), client.to_vec()),
    ] {
        let out = bench(&url, &env).success();
        let b: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
        assert_eq!(b["redis"]["jobs"], 200, "{url}: {b}");
    }
    bench(&url, &[("FRUGAL_REDIS_CERT", "client.crt")])
        .code(1)
        .stderr(predicates::str::contains("go together"));
}
