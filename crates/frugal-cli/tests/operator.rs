//! `frugal operator generate`, `frugal bench` and `frugal plan` on operator
//! configurations, through the real binary.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

mod common;
use common::{frugal, json};

/// A small operator configuration writing into `out`; `extra` lines go into `[rollout]`
/// (after the defaults here) and may open other sections.
fn config(dir: &Path, out: &Path, name: &str, extra: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "workload = \"operator\"\noutput_dir = \"{}\"\nseed = 3\n\n[compute]\ndevice = \"cpu\"\nbatch_size = 2\nthreads = 2\n\n[space]\nchannels = [8, 16]\n\n[rollout]\noperators = 24\nrealizations = 3\nheight = 16\nwidth = 16\nsteps = 30\nrecord_every = 10\noperators_per_shard = 2\n{extra}",
            out.display()
        ),
    )
    .unwrap();
    path
}

fn manifest(out: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(out.join("trajectories/manifest.json")).unwrap()).unwrap()
}

#[test]
fn generation_records_every_rollout_and_finishes_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let cfg = config(dir.path(), &out, "op.toml", "");
    let s = json(frugal().args(["operator", "generate"]).arg(&cfg));
    for key in [
        "operators",
        "realizations",
        "steps",
        "bytes",
        "seconds",
        "diverged",
    ] {
        assert!(!s[key].is_null(), "{key} missing: {s}");
    }
    assert_eq!(
        (&s["operators"], &s["realizations"], &s["steps"]),
        (&24.into(), &3.into(), &30.into())
    );
    assert_eq!(s["recorded"], 4, "steps 0, 10, 20, 30");
    assert_eq!(s["samples"], 24 * 3 * 4);
    assert_eq!(s["diverged"], 0, "{s}");
    let m = manifest(&out);
    assert_eq!(m["complete"], true);
    assert_eq!(m["shards"].as_array().unwrap().len(), 12);
    assert_eq!(m["metadata"]["diverged"], serde_json::json!([]));
    let field = &m["schema"]["columns"][0];
    assert_eq!(field["dtype"], "F16");
    assert_eq!(field["shape"], serde_json::json!([3, 16, 16]));
    let again = json(frugal().args(["operator", "generate"]).arg(&cfg));
    assert_eq!(again["reused"], 24, "{again}");
    assert_eq!(manifest(&out), m);
    let text = frugal()
        .args(["operator", "generate"])
        .arg(&cfg)
        .output()
        .unwrap();
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains("all already on disk"), "{text}");
    assert!(text.contains("no rollout diverged"), "{text}");
}

/// Killed at several moments, each run continuing the last, the generation ends with the
/// dataset an uninterrupted run writes, byte for byte.
#[test]
fn a_generation_killed_at_any_moment_resumes_to_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("whole");
    json(
        frugal()
            .args(["operator", "generate"])
            .arg(config(dir.path(), &whole, "whole.toml", "")),
    );
    let killed = dir.path().join("killed");
    let cfg = config(dir.path(), &killed, "killed.toml", "");
    // Moments drawn from a fixed sequence, so a failure can be replayed.
    let mut state: u64 = 0x5eed;
    let mut kills = 0;
    for _ in 0..40 {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let wait = Duration::from_millis(40 + (state >> 33) % 400);
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_frugal"))
            .args(["operator", "generate"])
            .arg(&cfg)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(wait);
        if child.try_wait().unwrap().is_some() {
            break;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
    }
    let s = json(frugal().args(["operator", "generate"]).arg(&cfg));
    assert!(
        kills >= 2,
        "only {kills} kills landed before the run finished"
    );
    assert_eq!(
        manifest(&killed),
        manifest(&whole),
        "after {kills} kills: {s}"
    );
    for entry in manifest(&whole)["shards"].as_array().unwrap() {
        let file = entry["file"].as_str().unwrap();
        let a = std::fs::read(whole.join("trajectories").join(file)).unwrap();
        let b = std::fs::read(killed.join("trajectories").join(file)).unwrap();
        assert!(a == b, "{file} differs");
    }
}

#[test]
fn diverging_rollouts_are_flagged_and_listed() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    // Steps a thousand times too long without normalisation blow up.
    let cfg = config(
        dir.path(),
        &out,
        "wild.toml",
        "\n[space]\nchannels = [8, 16]\nnorm = [\"none\"]\nactivation = [\"relu\"]\nresidual = [false]\ndt = [20.0, 50.0]\n",
    );
    let cfg_text =
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replacen("[space]\nchannels = [8, 16]\n\n", "", 1);
    std::fs::write(&cfg, cfg_text).unwrap();
    let s = json(frugal().args(["operator", "generate"]).arg(&cfg));
    let diverged = s["diverged"].as_u64().unwrap();
    assert!(diverged > 0, "{s}");
    let listed = manifest(&out)["metadata"]["diverged"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(listed.len() as u64, diverged);
    for d in &listed {
        assert!(d["step"].as_u64().unwrap() > 0, "{d}");
        assert!(d["realization"].as_u64().unwrap() < 3, "{d}");
    }
    let text = frugal()
        .args(["operator", "generate"])
        .arg(&cfg)
        .output()
        .unwrap();
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains("diverged"), "{text}");
}

#[test]
fn bad_operator_settings_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    for (extra, key) in [
        ("\n[space]\nchannels = [64, 16]\n", "space.channels"),
        ("storage = \"i8\"\n", "expected `f16` or `f32`"),
        ("fields = 0\n", "rollout.fields"),
        ("\n[space]\ndt = [0.0, 0.1]\n", "space.dt"),
    ] {
        let cfg = config(dir.path(), &out, "bad.toml", extra);
        let text = std::fs::read_to_string(&cfg).unwrap().replacen(
            "[space]\nchannels = [8, 16]\n\n",
            "",
            1,
        );
        std::fs::write(&cfg, text).unwrap();
        frugal()
            .args(["operator", "generate"])
            .arg(&cfg)
            .assert()
            .code(2)
            .stderr(predicates::str::contains(key));
        assert!(!out.exists(), "{key}: something was written");
    }
}

/// The bench table's rows, with every column; a row over the budget is refused before it
/// starts and the rows after it still run; predictions are within 15 % of the peaks.
#[test]
fn bench_reports_every_row_and_refuses_what_exceeds_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let cfg = config(dir.path(), &out, "bench.toml", "");
    let bench = |precisions: &str, extra: &[&str]| {
        json(
            frugal()
                .arg("bench")
                .arg(&cfg)
                .args(["--matrix", precisions, "--matrix", "batch=4,1,2"])
                .args(["--repeats", "2", "--steps", "6"])
                // One thread: whether two threads' scratch buffers meet is up to the
                // scheduler, and two repeats may not see it.
                .args(["--set", "compute.threads=1"])
                .args(extra),
        )
    };
    let r = bench("precision=f32,bf16", &[]);
    let rows = r["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 6);
    for row in rows {
        common::check_bench_row(row);
    }
    assert_eq!(rows[0]["config"]["precision"], "f32");
    assert_eq!(rows[0]["config"]["batch"], 4);
    assert_eq!(rows[5]["config"]["precision"], "bf16");
    assert_eq!(rows[5]["config"]["batch"], 2);
    assert_eq!(rows[0]["speedup"], 1.0);
    // bf16's error against f32, per recorded step (0 and the last, 6).
    let error = r["error"].as_array().unwrap();
    assert_eq!(error.len(), 1, "{r}");
    assert_eq!(error[0]["precision"], "bf16");
    assert_eq!(error[0]["realizations"], 4, "the widest bf16 batch");
    assert_eq!(error[0]["steps"], serde_json::json!([0, 6]));
    let last = error[0]["nrmse"][1].as_f64().unwrap();
    assert!(last > 0.0 && last < 0.1, "{r}");
    for f in ["bench.csv", "bench.json", "bench.png", "bench-error.png"] {
        assert!(out.join("bench").join(f).is_file(), "{f} missing");
    }
    let csv = std::fs::read_to_string(out.join("bench/bench.csv")).unwrap();
    assert_eq!(csv.lines().count(), 7, "{csv}");

    // A budget between batch 2's and batch 4's needs: batch 4 is over it, the rows after
    // it run.
    let need = |i: usize| rows[i]["predicted_peak_bytes"].as_u64().unwrap();
    let budget = (need(0) + need(2)) / 2;
    let r = bench("precision=f32", &["--budget", &budget.to_string()]);
    let statuses: Vec<&str> = r["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["over budget", "ok", "ok"], "{r}");
    assert!(r["rows"][0]["time_mean_s"].is_null());
    // The first row did not run: speedups are against nothing.
    assert!(r["rows"][1]["speedup"].is_null());

    let text = frugal()
        .arg("bench")
        .arg(&cfg)
        .args(["--matrix", "batch=1,2", "--repeats", "1", "--steps", "3"])
        .output()
        .unwrap();
    assert!(text.status.success());
    let text = String::from_utf8(text.stdout).unwrap();
    for column in [
        "time (s)",
        "peak memory",
        "predicted",
        "throughput",
        "speedup",
        "status",
    ] {
        assert!(text.contains(column), "{column} missing:\n{text}");
    }
    frugal()
        .arg("bench")
        .arg(&cfg)
        .args(["--matrix", "speed=1"])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("unknown key `speed`"));
}

#[test]
fn plan_breaks_the_generation_memory_down() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let cfg = config(dir.path(), &out, "plan.toml", "");
    let p = json(frugal().arg("plan").arg(&cfg));
    assert_eq!(p["workload"], "operator");
    let rollout = &p["rollout"];
    for key in [
        "inputs",
        "weights",
        "trajectories",
        "workspace",
        "predicted_peak",
    ] {
        assert!(rollout[key].as_u64().is_some(), "{key}: {p}");
    }
    assert_eq!(
        rollout["activations"].as_array().unwrap().len(),
        p["architecture"]["layers"].as_u64().unwrap() as usize
    );
    assert!(p["predicted_peak_bytes"].as_u64().unwrap() > p["runtime_bytes"].as_u64().unwrap());
    assert!(
        !out.join("trajectories").exists(),
        "planning generated data"
    );
    let text = frugal().arg("plan").arg(&cfg).output().unwrap();
    let text = String::from_utf8(text.stdout).unwrap();
    for item in [
        "inputs",
        "weights",
        "activations, layer 1",
        "shard buffer",
        "runtime",
    ] {
        assert!(text.contains(item), "{item} missing:\n{text}");
    }
    frugal()
        .arg("train")
        .arg(&cfg)
        .assert()
        .code(2)
        .stderr(predicates::str::contains("frugal operator"));
}

/// Operators rolled out by `frugal worker`s through Redis give the dataset a local CPU run
/// gives, shard for shard.
#[test]
fn workers_on_a_redis_queue_roll_out_the_same_dataset() {
    let Some(server) = frugal_farm::testing::RedisServer::for_test(None) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("local");
    json(
        frugal()
            .args(["operator", "generate"])
            .arg(config(dir.path(), &local, "local.toml", "")),
    );
    let workers = common::workers(&server.url(), "ops", 2);
    let remote = dir.path().join("remote");
    let s = json(
        frugal()
            .args(["operator", "generate", "--queue", "ops", "--redis"])
            .arg(server.url())
            .arg(config(dir.path(), &remote, "remote.toml", ""))
            .timeout(Duration::from_secs(600)),
    );
    drop(workers);
    assert_eq!(s["samples"], 24 * 3 * 4, "{s}");
    let (a, b) = (manifest(&local), manifest(&remote));
    assert_eq!(a["shards"], b["shards"]);
    assert_eq!(b["complete"], true);
}
