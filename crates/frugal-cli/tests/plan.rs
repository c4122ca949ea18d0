//! `frugal plan` and the memory guard rails of `frugal train`, through the real binary:
//! the prediction against the peak a run measures, refusals and `--auto-fit`.

use std::path::Path;

use predicates::prelude::*;
use serde_json::Value;

mod common;
use common::{config, frugal, json, mnist_dir};

/// `frugal COMMAND mnist-mlp.toml` into `out` with `extra` overrides.
fn mnist(command: &str, out: &Path, extra: &[&str]) -> assert_cmd::Command {
    let mut cmd = frugal();
    cmd.env("FRUGAL_MNIST_DIR", mnist_dir())
        .arg(command)
        .arg(config("mnist-mlp.toml"))
        .arg("--set")
        .arg(format!("output_dir={}", out.display()));
    for e in extra {
        cmd.args(["--set", e]);
    }
    cmd
}

/// Imports MNIST into `out/data` once, so the measured runs do not include the import.
fn prepared(out: &Path) {
    mnist("train", out, &["train.steps=1"]).assert().success();
    for entry in std::fs::read_dir(out).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap() != "data" {
            if path.is_dir() {
                std::fs::remove_dir_all(&path).unwrap();
            } else {
                std::fs::remove_file(&path).unwrap();
            }
        }
    }
}

/// The plan's predicted peak against the peak RSS of a real run of the same settings.
fn prediction_holds(settings: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    prepared(dir.path());
    let plan = json(&mut mnist("plan", dir.path(), settings));
    for key in ["predicted_peak_bytes", "budget_bytes", "fits", "max_batch"] {
        assert!(plan.get(key).is_some(), "no `{key}` in {plan}");
    }
    let predicted = plan["predicted_peak_bytes"].as_f64().unwrap();
    let items: f64 = plan["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["bytes"].as_f64().unwrap())
        .sum();
    assert_eq!(items, predicted, "the items add up to the peak");

    let mut run = settings.to_vec();
    run.extend(["train.steps=20", "train.eval_every=10"]);
    let summary = json(&mut mnist("train", dir.path(), &run));
    let measured = summary["peak_rss_bytes"].as_f64().unwrap();
    let ratio = predicted / measured;
    assert!(
        (0.85..=1.15).contains(&ratio),
        "{settings:?}: predicted {predicted} B, measured {measured} B (ratio {ratio:.3})\n{plan:#}"
    );
}

#[test]
fn the_mlp_plan_is_within_15_percent_of_the_measured_peak() {
    prediction_holds(&["compute.batch_size=128"]);
    prediction_holds(&["compute.batch_size=2048"]);
}

#[test]
fn the_cnn_plan_is_within_15_percent_of_the_measured_peak() {
    prediction_holds(&[
        "model.arch=\"cnn\"",
        "model.hidden=[16, 32]",
        "compute.batch_size=256",
    ]);
    prediction_holds(&[
        "model.arch=\"cnn\"",
        "model.hidden=[8, 16, 32]",
        "compute.batch_size=256",
        "compute.checkpointing=true",
    ]);
}

#[test]
fn checkpointing_and_bf16_shrink_the_plan() {
    let dir = tempfile::tempdir().unwrap();
    let cnn = ["model.arch=\"cnn\"", "model.hidden=[8, 16, 32]"];
    let peak = |extra: &[&str]| {
        let mut s = cnn.to_vec();
        s.extend(extra);
        json(&mut mnist("plan", dir.path(), &s))["predicted_peak_bytes"]
            .as_u64()
            .unwrap()
    };
    let plain = peak(&[]);
    assert!(peak(&["compute.checkpointing=true"]) < plain);
    assert!(peak(&["compute.precision=\"bf16\""]) < plain);
    let small = peak(&["compute.batch_size=32"]);
    assert!(small < plain);
}

#[test]
fn a_budget_too_small_is_refused_before_the_first_step() {
    let dir = tempfile::tempdir().unwrap();
    mnist("plan", dir.path(), &[])
        .args(["--budget", "20MiB"])
        .assert()
        .success()
        .stdout(predicate::str::contains("does NOT fit"))
        .stdout(predicate::str::contains("activations"));
    mnist("train", dir.path(), &["train.steps=5"])
        .args(["--max-memory", "20MiB"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "exceeds the memory budget of 20.0 MiB",
        ))
        .stderr(predicate::str::contains("optimizer state"))
        .stderr(predicate::str::contains("nothing was trained"));
    assert!(!dir.path().join("checkpoint.bin").exists());
    assert!(!dir.path().join("metrics.jsonl").exists());
}

#[test]
fn auto_fit_picks_settings_that_fit() {
    let dir = tempfile::tempdir().unwrap();
    let settings = [
        "model.arch=\"cnn\"",
        "model.hidden=[16, 32]",
        "compute.batch_size=512",
    ];
    let plan = json(&mut mnist("plan", dir.path(), &settings));
    let predicted = plan["predicted_peak_bytes"].as_u64().unwrap();
    let budget = (predicted as f64 * 0.8) as u64;
    let mut run = settings.to_vec();
    run.push("train.steps=3");
    let out = mnist("train", dir.path(), &run)
        .args(["--max-memory", &budget.to_string(), "--auto-fit", "--json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("auto-fit:"), "{stderr}");
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    let batch = summary["batch_size"].as_u64().unwrap();
    let accum = summary["grad_accum"].as_u64().unwrap();
    assert_eq!(batch * accum, 512, "the effective batch is kept");
    assert!(
        batch < 512 || !summary["checkpoint_segments"].is_null(),
        "something changed: {summary}"
    );
    assert_eq!(summary["steps"], 3);
    // The run stays within the budget, give or take the planner's tolerance.
    let peak = summary["peak_rss_bytes"].as_f64().unwrap();
    assert!(
        peak <= budget as f64 * 1.15,
        "peak {peak} B, budget {budget} B"
    );
}

#[test]
fn measure_runs_growing_batches_in_their_own_processes() {
    let dir = tempfile::tempdir().unwrap();
    let plan = json(
        frugal()
            .arg("plan")
            .arg(config("classifier-synthetic.toml"))
            .args(["--set", &format!("output_dir={}", dir.path().display())])
            .args([
                "--set",
                "data.samples=2000",
                "--set",
                "data.test_samples=200",
            ])
            .args([
                "--set",
                "model.hidden=[32]",
                "--set",
                "compute.batch_size=250",
            ])
            .arg("--measure"),
    );
    let measured = plan["measured"].as_array().unwrap();
    let batches: Vec<u64> = measured
        .iter()
        .map(|m| m["batch"].as_u64().unwrap())
        .collect();
    assert_eq!(batches, [250, 500, 1000, 2000]);
    assert!(measured.iter().all(|m| m["fits"] == true));
    assert!(
        measured
            .iter()
            .all(|m| m["peak_rss_bytes"].as_u64().unwrap() > 1 << 20)
    );
    assert_eq!(plan["max_batch"], 2000);
    // The probes clean up after themselves.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with(".plan-measure"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// A particles configuration of `particles` particles writing into `out`: a few short
/// simulations, a few training steps.
fn particles(dir: &Path, out: &Path, particles: u32) -> std::path::PathBuf {
    let path = dir.join(format!("nbody-{particles}.toml"));
    std::fs::write(
        &path,
        format!(
            "workload = \"particles\"\noutput_dir = \"{}\"\nseed = 5\n\n[compute]\ndevice = \"cpu\"\nbatch_size = 2\n\n[model]\nparticles = {particles}\nhidden = 64\nlayers = 2\nneighbours = 16\n\n[sim]\nsimulations = 4\nsteps = 12\nheld_out = 1\n\n[train]\nsteps = 4\nlog_every = 2\neval_every = 4\ncheckpoint_every = 2\n",
            out.display()
        ),
    )
    .unwrap();
    path
}

#[test]
fn the_particles_plan_is_within_15_percent_at_two_sizes() {
    let dir = tempfile::tempdir().unwrap();
    for (n, checkpointing) in [(400, false), (1200, false), (1200, true)] {
        let out = dir.path().join(format!("run-{n}-{checkpointing}"));
        let cfg = particles(dir.path(), &out, n);
        let set = format!("compute.checkpointing={checkpointing}");
        // The plan runs on a stand-in of two short simulations and leaves nothing behind:
        // planning never starts the configuration's own generation, which may take days.
        let plan = json(frugal().arg("plan").arg(&cfg).args(["--set", &set]));
        assert!(
            !out.join("sims").exists(),
            "frugal plan generated the dataset"
        );
        let predicted = plan["predicted_peak_bytes"].as_f64().unwrap();
        let summary = json(frugal().arg("train").arg(&cfg).args(["--set", &set]));
        assert_eq!(summary["steps"], 4);
        assert_eq!(
            summary["checkpoint_segments"], plan["segments"],
            "checkpointing recomputes one block at a time"
        );
        let measured = summary["peak_rss_bytes"].as_f64().unwrap();
        let ratio = predicted / measured;
        assert!(
            (0.85..=1.15).contains(&ratio),
            "{n} particles, checkpointing {checkpointing}: predicted {predicted} B, measured {measured} B (ratio {ratio:.3})\n{plan:#}"
        );
    }
}

#[test]
fn auto_fit_fits_a_particles_run_by_checkpointing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let cfg = particles(dir.path(), &out, 1200);
    let plan = json(frugal().arg("plan").arg(&cfg));
    let predicted = plan["predicted_peak_bytes"].as_u64().unwrap();
    let budget = (predicted as f64 * 0.6) as u64;
    // Refused without --auto-fit, before anything is trained.
    frugal()
        .args(["nbody", "train"])
        .arg(&cfg)
        .args(["--max-memory", &budget.to_string()])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("nothing was trained"));
    assert!(!out.join("metrics.jsonl").exists());
    let run = frugal()
        .args(["nbody", "train"])
        .arg(&cfg)
        .args(["--max-memory", &budget.to_string(), "--auto-fit", "--json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(stderr.contains("auto-fit:"), "{stderr}");
    let summary: Value = serde_json::from_slice(&run.stdout).unwrap();
    assert!(!summary["checkpoint_segments"].is_null(), "{summary}");
    assert_eq!(
        summary["batch_size"].as_u64().unwrap() * summary["grad_accum"].as_u64().unwrap(),
        2
    );
    let peak = summary["peak_rss_bytes"].as_f64().unwrap();
    assert!(
        peak <= budget as f64 * 1.15,
        "peak {peak} B, budget {budget} B"
    );
}

/// `frugal bench` on a training configuration: every row with every column, each in a
/// process of its own, predicted within 15 % of the measured peak on the CPU; rows the
/// planner puts over `--budget` are refused and the rows after them still run.
#[test]
fn bench_times_training_steps_and_refuses_rows_over_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let bench = |extra: &[&str]| {
        json(
            frugal()
                .arg("bench")
                .arg(config("classifier-synthetic.toml"))
                .args(["--set", &format!("output_dir={}", dir.path().display())])
                .args([
                    "--set",
                    "data.samples=4000",
                    "--set",
                    "data.test_samples=200",
                ])
                .args(["--set", "compute.device=cpu", "--set", "compute.threads=1"])
                .args([
                    "--matrix",
                    "batch=4000,16",
                    "--matrix",
                    "precision=f32,bf16",
                ])
                .args(["--steps", "3", "--repeats", "2"])
                .args(extra),
        )
    };
    let r = bench(&[]);
    assert_eq!(r["workload"], "classifier");
    assert_eq!(r["throughput_unit"], "samples/s");
    let rows = r["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 4);
    for row in rows {
        common::check_bench_row(row);
    }
    assert_eq!(rows[0]["config"]["batch"], 4000);
    assert_eq!(rows[3]["config"]["precision"], "bf16");
    assert!(dir.path().join("bench/bench.csv").is_file());
    assert!(dir.path().join("bench/bench.png").is_file());

    // Between the batch-16 rows' need and the batch-4000 rows': those are refused.
    let need = |i: usize| rows[i]["predicted_peak_bytes"].as_u64().unwrap();
    let (small, large) = (need(2).max(need(3)), need(0).min(need(1)));
    assert!(
        large > small + (4 << 20),
        "batch 4000 should need MiBs more than batch 16: {large} against {small}"
    );
    let r = bench(&["--budget", &((small + large) / 2).to_string()]);
    let status: Vec<&str> = r["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["status"].as_str().unwrap())
        .collect();
    assert_eq!(status, ["over budget", "over budget", "ok", "ok"]);
}
