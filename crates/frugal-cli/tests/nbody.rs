//! `frugal nbody` through the real binary.

use std::path::Path;

use serde_json::Value;

mod common;
use common::{frugal, json};

/// A small particles configuration writing into `out`.
fn config(dir: &Path, out: &Path, extra: &str) -> std::path::PathBuf {
    let path = dir.join("nbody.toml");
    std::fs::write(
        &path,
        format!(
            "workload = \"particles\"\noutput_dir = \"{}\"\nseed = 5\n\n[model]\nparticles = 400\nhidden = 32\nlayers = 2\nneighbours = 8\n\n[sim]\nsimulations = 16\nsteps = 30\n{extra}",
            out.display()
        ),
    )
    .unwrap();
    path
}

fn manifest(out: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(out.join("sims/manifest.json")).unwrap()).unwrap()
}

#[test]
fn generation_writes_one_shard_per_simulation_and_finishes_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let cfg = config(dir.path(), &out, "");
    let s = json(frugal().args(["nbody", "generate"]).arg(&cfg));
    assert_eq!(s["simulations"], 16);
    assert_eq!(s["reused"], 0);
    assert_eq!(s["samples"], 16 * 30);
    let m = manifest(&out);
    assert_eq!(m["complete"], true);
    assert_eq!(m["shards"].as_array().unwrap().len(), 16);
    let columns: Vec<&str> = m["schema"]["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(columns, ["pos", "vel", "acc", "sim", "step"]);
    assert_eq!(m["metadata"]["nbody"]["method"]["method"], "direct");
    // Again: nothing to do. With other settings: refused, the data left alone.
    let again = json(frugal().args(["nbody", "generate"]).arg(&cfg));
    assert_eq!(again["reused"], 16);
    frugal()
        .args(["nbody", "generate"])
        .arg(&cfg)
        .args(["--set", "sim.dt=0.001"])
        .assert()
        .failure()
        .stderr(predicates::str::contains("other settings"));
    assert_eq!(manifest(&out), m);
}

/// Kills generation once two simulations are on disk and runs it again: the dataset must
/// equal an uninterrupted run's, shard for shard and byte for byte (checksums).
#[test]
fn a_killed_generation_continues_without_duplicating_or_losing_simulations() {
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("whole");
    let parts = dir.path().join("parts");
    json(
        frugal()
            .args(["nbody", "generate"])
            .arg(config(dir.path(), &whole, "")),
    );

    let cfg = config(dir.path(), &parts, "");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_frugal"))
        .env_remove("FRUGAL_REDIS_URL")
        .args(["nbody", "generate"])
        .arg(&cfg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    kill_after_two_shards(child, &parts);

    let s = json(frugal().args(["nbody", "generate"]).arg(&cfg));
    assert!(
        s["reused"].as_u64().unwrap() < 16,
        "the kill came too late: {s}"
    );
    let (a, b) = (manifest(&whole), manifest(&parts));
    assert_eq!(a["shards"], b["shards"]);
    assert_eq!(b["samples"], 16 * 30);
}

/// Waits until two of `out`'s shard files exist (or the run ended), then kills it.
fn kill_after_two_shards(mut child: std::process::Child, out: &Path) {
    let shards = || {
        std::fs::read_dir(out.join("sims"))
            .map(|e| {
                e.filter(|f| {
                    f.as_ref()
                        .is_ok_and(|f| f.file_name().to_string_lossy().ends_with(".safetensors"))
                })
                .count()
            })
            .unwrap_or(0)
    };
    while shards() < 2 && child.try_wait().unwrap().is_none() {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn bad_simulation_settings_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &dir.path().join("run"), "dt = -1.0\n");
    frugal()
        .args(["nbody", "generate"])
        .arg(&cfg)
        .assert()
        .code(2)
        .stderr(predicates::str::contains("sim.dt"));
    let cfg = config(
        dir.path(),
        &dir.path().join("run"),
        "initial = [\"two_body\"]\n",
    );
    frugal()
        .args(["nbody", "generate"])
        .arg(&cfg)
        .assert()
        .code(2)
        .stderr(predicates::str::contains("two_body"));
}

/// A tiny pipeline: 8 simulations of 64 particles, 2 held out, 120 checkpointed steps.
fn tiny(dir: &Path, out: &Path) -> std::path::PathBuf {
    let path = dir.join("tiny.toml");
    std::fs::write(
        &path,
        format!(
            "workload = \"particles\"\noutput_dir = \"{}\"\nseed = 1\n\n[compute]\nbatch_size = 4\ncheckpointing = true\n\n[model]\nparticles = 64\nhidden = 32\nlayers = 2\nneighbours = 8\nnoise = 0.01\n\n[sim]\nsimulations = 8\nsteps = 30\nheld_out = 2\n\n[train]\nsteps = 120\neval_every = 60\nlog_every = 20\ncheckpoint_every = 50\n",
            out.display()
        ),
    )
    .unwrap();
    path
}

#[test]
fn training_beats_constant_velocity_on_held_out_simulations_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (whole, parts) = (dir.path().join("whole"), dir.path().join("parts"));
    let s = json(
        frugal()
            .args(["nbody", "train"])
            .arg(tiny(dir.path(), &whole)),
    );
    assert_eq!(s["steps"], 120);
    // Checkpointing recomputes one block at a time: the node encoder, 8 edge-chunk
    // encoders, and per layer 8 edge-chunk updates and a node update.
    assert_eq!(s["checkpoint_segments"], 1 + 8 + 2 * 9);
    // The loss is the mean squared error of standardized accelerations: predicting their
    // mean scores about 1.
    let test = s["test_loss"].as_f64().unwrap();
    assert!(test < 0.6, "held-out loss {test}");
    for f in [
        "model.bpk",
        "normalization.json",
        "metrics.jsonl",
        "loss.png",
        "summary.json",
    ] {
        assert!(whole.join(f).is_file(), "{f} missing");
    }

    // On the held-out simulations the network beats the constant-velocity baseline at one
    // step and over a 20-step rollout.
    let cfg = tiny(dir.path(), &whole);
    let r = json(frugal().args(["nbody", "rollout"]).arg(&cfg));
    for key in [
        "one_step_mse",
        "baseline_one_step_mse",
        "rollout_mse_20",
        "baseline_rollout_mse_20",
        "energy_drift",
    ] {
        assert!(r[key].as_f64().is_some_and(f64::is_finite), "{key}: {r}");
    }
    assert_eq!(r["rollout_steps"], 20);
    let f = |k: &str| r[k].as_f64().unwrap();
    assert!(f("one_step_mse") < f("baseline_one_step_mse"), "{r}");
    assert!(f("rollout_mse_20") < f("baseline_rollout_mse_20"), "{r}");
    assert!(whole.join("rollout.png").is_file());
    let from_checkpoint = json(
        frugal()
            .args(["nbody", "rollout"])
            .arg(&cfg)
            .arg("--checkpoint")
            .arg(whole.join("checkpoint.bin"))
            .args(["--steps", "3"]),
    );
    assert_eq!(from_checkpoint["rollout_steps"], 3);
    assert_eq!(from_checkpoint["one_step_mse"], r["one_step_mse"]);

    let cfg = tiny(dir.path(), &parts);
    frugal()
        .args(["nbody", "rollout"])
        .arg(&cfg)
        .assert()
        .failure()
        .stderr(predicates::str::contains("frugal nbody train"));
    let first = json(
        frugal()
            .args(["nbody", "train"])
            .arg(&cfg)
            .args(["--stop-after", "70"]),
    );
    assert_eq!(first["steps"], 70);
    let second = json(frugal().args(["nbody", "train"]).arg(&cfg).arg("--resume"));
    assert_eq!(second["resumed_from"], 70);
    let a = std::fs::read(whole.join("model.bpk")).unwrap();
    let b = std::fs::read(parts.join("model.bpk")).unwrap();
    assert!(a == b, "final weights differ after resume");
}

#[test]
fn the_pipeline_generates_trains_rolls_out_and_reports_memory() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let cfg = tiny(dir.path(), &out);
    let run = |steps: &str| {
        let o = frugal()
            .args(["nbody", "run"])
            .arg(&cfg)
            .args(["--set", steps])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let text = run("train.steps=30");
    for phase in [
        "── generate",
        "── train",
        "── rollout",
        "── memory: peak resident",
    ] {
        assert!(text.contains(phase), "{phase} missing from:\n{text}");
    }
    assert!(text.contains("constant velocity"), "{text}");
    for f in [
        "sims/manifest.json",
        "model.bpk",
        "rollout.json",
        "rollout.png",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    // Run again: the simulations are reused, the finished run is resumed (no step more),
    // and the rollout is the same.
    let rollout = std::fs::read(out.join("rollout.json")).unwrap();
    let again = run("train.steps=30");
    assert!(again.contains("all already on disk"), "{again}");
    let summary: Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["resumed_from"], 30, "{summary}");
    assert_eq!(summary["steps"], 30);
    assert_eq!(std::fs::read(out.join("rollout.json")).unwrap(), rollout);
}

#[test]
fn the_scaling_study_fits_more_particles_with_the_techniques_on() {
    let dir = tempfile::tempdir().unwrap();
    let s = json(
        frugal()
            .args(["nbody", "scale", "--particles", "400,200,800"])
            .args(["--hidden", "16", "--layers", "2", "--neighbours", "8"])
            .args(["--budget", "1GiB", "--out"])
            .arg(dir.path()),
    );
    assert_eq!(s["budget_bytes"], 1u64 << 30);
    let points = s["points"].as_array().unwrap();
    assert_eq!(points.len(), 6, "{s}");
    let peak = |n: u64, t: &str| {
        let p = points
            .iter()
            .find(|p| p["particles"] == n && p["techniques"] == t)
            .unwrap();
        assert_eq!(p["how"], "measured");
        assert!(p["step_seconds"].as_f64().unwrap() > 0.0);
        p["peak_bytes"].as_u64().unwrap()
    };
    for n in [200, 400, 800] {
        let (off, on) = (peak(n, "off"), peak(n, "on"));
        assert!(on * 2 < off, "{n} particles: on {on} B, off {off} B");
    }
    // Memory grows with the particles.
    assert!(peak(800, "off") > peak(200, "off"));
    assert_eq!(s["max_particles_off"], 800);
    assert_eq!(s["max_particles_on"], 800);
    let csv = std::fs::read_to_string(dir.path().join("scale.csv")).unwrap();
    assert_eq!(csv.lines().count(), 7, "{csv}");
    assert!(dir.path().join("scale.png").is_file());
}

/// Simulations run by `frugal worker`s through Redis give the dataset a local run gives,
/// shard for shard (checksums).
#[test]
fn workers_on_a_redis_queue_generate_the_same_dataset() {
    let Some(server) = frugal_farm::testing::RedisServer::for_test(None) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("local");
    json(
        frugal()
            .args(["nbody", "generate"])
            .arg(config(dir.path(), &local, "")),
    );
    let workers = common::workers(&server.url(), "sims", 2);
    let remote = dir.path().join("remote");
    let s = json(
        frugal()
            .args(["nbody", "generate", "--queue", "sims", "--redis"])
            .arg(server.url())
            .arg(config(dir.path(), &remote, ""))
            .timeout(std::time::Duration::from_secs(600)),
    );
    let status = json(
        frugal()
            .args(["farm", "status", "--queue", "sims", "--redis"])
            .arg(server.url()),
    );
    // All 16 simulations went through the queue and were acknowledged; their states left
    // the server once read.
    assert_eq!(
        (&status["jobs"], &status["pending"], &status["waiting"]),
        (&16.into(), &0.into(), &0.into()),
        "{status}"
    );
    assert_eq!(status["results"], 0, "{status}");
    assert_eq!(s["samples"], 16 * 30, "{s}");
    let (a, b) = (manifest(&local), manifest(&remote));
    assert_eq!(a["shards"], b["shards"]);
    assert_eq!(b["complete"], true);

    // Killed after two shards and run again: it takes its queue back and finishes.
    let killed = dir.path().join("killed");
    let cfg = config(dir.path(), &killed, "");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_frugal"))
        .env_remove("FRUGAL_REDIS_URL")
        .args(["nbody", "generate", "--queue", "sims", "--redis"])
        .arg(server.url())
        .arg(&cfg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    kill_after_two_shards(child, &killed);
    let again = json(
        frugal()
            .args(["nbody", "generate", "--queue", "sims", "--redis"])
            .arg(server.url())
            .arg(&cfg)
            .timeout(std::time::Duration::from_secs(600)),
    );
    drop(workers);
    let reused = again["reused"].as_u64().unwrap();
    assert!(reused < 16, "the kill came too late: {again}");
    assert_eq!(manifest(&killed)["shards"], manifest(&local)["shards"]);
}

#[test]
fn a_worker_checks_simulation_jobs_it_did_not_configure() {
    let version = env!("CARGO_PKG_VERSION");
    frugal()
        .args(["farm", "exec", "nbody", "--params", "{\"index\": 0}"])
        .assert()
        .failure()
        .stderr(predicates::str::contains("run the same version"));
    frugal()
        .args(["farm", "exec", "nbody", "--params"])
        .arg(serde_json::json!({"index": 0, "frugal": version}).to_string())
        .assert()
        .failure()
        .stderr(predicates::str::contains("\"settings\""));
    let settings = serde_json::json!({
        "particles": 1_000_000, "simulations": 1, "steps": 1000, "record_every": 1,
        "dt": 0.01, "softening": 0.05, "initial": ["plummer"],
        "method": {"method": "direct"}, "seed": 1
    });
    frugal()
        .args(["farm", "exec", "nbody", "--params"])
        .arg(serde_json::json!({"settings": settings, "index": 0, "frugal": version}).to_string())
        .assert()
        .failure()
        .stderr(predicates::str::contains("shorter simulations"));
}

/// A queue that goes away mid-generation is a failure (exit 1), not a user error (exit 2),
/// and the message says which server failed.
#[test]
fn a_queue_lost_mid_generation_is_a_failure_not_a_user_error() {
    let Some(server) = frugal_farm::testing::RedisServer::for_test(None) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("remote");
    // No workers: the generation waits on the queue until the server dies under it.
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_frugal"))
        .env_remove("FRUGAL_REDIS_URL")
        .args(["nbody", "generate", "--queue", "sims", "--redis"])
        .arg(server.url())
        .arg(config(dir.path(), &out, ""))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let child = frugal_farm::testing::KillOnDrop(child);
    std::thread::sleep(std::time::Duration::from_secs(2));
    drop(server);
    let mut child = child;
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(120),
            "the generation did not stop when its queue went away"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.0.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("redis"), "{stderr}");
}
