//! The GPU code paths through the real binary: device choice, device memory in the
//! reports, precisions a device cannot compute refused with a message (never a panic), and
//! numbers that agree with the CPU backend.
//!
//! They run wherever a build with a GPU backend finds a GPU — a software Vulkan driver
//! (Mesa's lavapipe) counts, so they run on machines without one — and are skipped, with
//! the reason, elsewhere. `FRUGAL_REQUIRE_GPU=1` turns a skip into a failure (CI sets it).

use std::io::Write;
use std::path::Path;
use std::sync::OnceLock;

use serde_json::Value;

mod common;
use common::{config, frugal, mnist_dir};

/// The GPU this build trains on, asked once per test process of `frugal probe`.
fn gpu() -> Option<&'static str> {
    static ANSWER: OnceLock<Result<String, String>> = OnceLock::new();
    let answer = ANSWER.get_or_init(|| {
        if !cfg!(any(feature = "vulkan", feature = "wgpu", feature = "cuda")) {
            return Err(
                "this build has no GPU backend (test with --features wgpu, vulkan or cuda)".into(),
            );
        }
        let out = frugal().args(["probe", "--json"]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let probe: Value = serde_json::from_slice(&out.stdout).unwrap();
        let devices = probe["compute_devices"].as_array().unwrap();
        assert_eq!(devices.last().unwrap()["backend"], "flex", "{probe}");
        // A real GPU first, as `compute.device = "gpu"` chooses.
        let gpus: Vec<&Value> = devices.iter().filter(|d| d["backend"] != "flex").collect();
        gpus.iter()
            .find(|d| d["software"] == false)
            .or(gpus.first())
            .map(|d| d["name"].as_str().unwrap().to_owned())
            .ok_or_else(|| "no GPU answered on this machine".to_owned())
    });
    match answer {
        Ok(device) => Some(device.as_str()),
        Err(why) => {
            assert!(
                std::env::var_os("FRUGAL_REQUIRE_GPU").is_none(),
                "FRUGAL_REQUIRE_GPU is set but {why}"
            );
            let _ = writeln!(std::io::stderr().lock(), "skipped: {why}");
            None
        }
    }
}

/// A short MNIST run into `out` with `extra` overrides.
fn train(out: &Path, extra: &[&str]) -> assert_cmd::Command {
    let mut cmd = frugal();
    cmd.env("FRUGAL_MNIST_DIR", mnist_dir())
        .arg("train")
        .arg(config("mnist-mlp.toml"))
        .args(["--set", &format!("output_dir={}", out.display())]);
    for s in [
        "model.hidden=[64, 32]",
        "train.steps=20",
        "train.log_every=5",
        "train.eval_every=20",
    ]
    .into_iter()
    .chain(extra.iter().copied())
    {
        cmd.args(["--set", s]);
    }
    cmd
}

fn run_json(cmd: &mut assert_cmd::Command) -> Value {
    let out = cmd.arg("--json").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Train losses of a run's metrics, by step.
fn train_losses(dir: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["split"] == "train")
        .map(|r| (r["step"].as_u64().unwrap(), r["loss"].as_f64().unwrap()))
        .collect()
}

#[test]
fn training_on_the_gpu_reports_device_memory_and_matches_the_cpu() {
    let Some(device) = gpu() else { return };
    let (on_gpu, on_cpu) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let g = run_json(&mut train(on_gpu.path(), &["compute.device=gpu"]));
    assert_eq!(g["device"], device);
    assert!(!device.starts_with("cpu"), "{g}");
    assert_eq!(g["steps"], 20);
    let peak = g["peak_device_bytes"].as_u64().unwrap();
    // The weights, their AdamW moments and a batch's activations at least.
    assert!(peak > 1 << 20, "{g}");
    let c = run_json(&mut train(on_cpu.path(), &["compute.device=cpu"]));
    assert!(c["peak_device_bytes"].is_null(), "{c}");

    // The same seed, data and steps: kernels may sum in another order, so the losses
    // agree closely, not to the bit.
    let (lg, lc) = (train_losses(on_gpu.path()), train_losses(on_cpu.path()));
    assert_eq!(lg.len(), 4);
    assert_eq!(
        lg.iter().map(|l| l.0).collect::<Vec<_>>(),
        lc.iter().map(|l| l.0).collect::<Vec<_>>()
    );
    for ((step, a), (_, b)) in lg.iter().zip(&lc) {
        assert!(
            (a - b).abs() <= 2e-3 * b.abs(),
            "step {step}: gpu {a}, cpu {b}"
        );
    }
    let (ag, ac) = (
        g["test_accuracy"].as_f64().unwrap(),
        c["test_accuracy"].as_f64().unwrap(),
    );
    assert!((ag - ac).abs() <= 0.01, "accuracy gpu {ag}, cpu {ac}");
}

#[test]
fn a_precision_the_device_cannot_compute_is_refused_or_runs() {
    let Some(_) = gpu() else { return };
    for precision in ["bf16", "f16"] {
        let dir = tempfile::tempdir().unwrap();
        let out = train(
            dir.path(),
            &[
                "compute.device=gpu",
                &format!("compute.precision={precision}"),
            ],
        )
        .args(["--stop-after", "5", "--json"])
        .output()
        .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{precision}: {err}");
        match out.status.code() {
            Some(0) => {
                let s: Value = serde_json::from_slice(&out.stdout).unwrap();
                assert_eq!(s["precision"], precision);
                assert_eq!(s["steps"], 5);
                assert!(s["train_loss"].as_f64().unwrap().is_finite(), "{s}");
            }
            Some(2) => {
                assert!(
                    err.contains(&format!(
                        "compute.precision = \"{precision}\"` cannot run on"
                    )),
                    "{precision}: {err}"
                );
                assert!(err.contains("set compute.precision to"), "{err}");
                // Refused before anything was written.
                assert!(!dir.path().join("checkpoint.bin").exists());
            }
            other => panic!("{precision}: exit {other:?}: {err}"),
        }
    }
}

#[test]
fn bf16_is_refused_on_vulkan_devices() {
    let Some(device) = gpu() else { return };
    if !device.contains("(vulkan:") && !device.contains("(wgpu:") {
        let _ = writeln!(
            std::io::stderr().lock(),
            "skipped: {device} is not a Vulkan device"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    train(
        dir.path(),
        &["compute.device=gpu", "compute.precision=bf16"],
    )
    .assert()
    .code(2)
    .stderr(predicates::str::contains(
        "bf16 has no arithmetic on Vulkan",
    ));
}

#[test]
fn auto_passes_over_a_software_gpu() {
    let Some(device) = gpu() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = train(dir.path(), &["compute.device=auto"]);
    cmd.args(["--stop-after", "1"]);
    let s = run_json(&mut cmd);
    let picked = s["device"].as_str().unwrap();
    if device.contains("llvmpipe") {
        assert!(picked.starts_with("cpu"), "auto picked {picked}");
    } else {
        assert_eq!(picked, device);
    }
}

#[test]
fn the_scaling_study_measures_device_peaks() {
    let Some(_) = gpu() else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = frugal()
        .args([
            "nbody",
            "scale",
            "--device",
            "gpu",
            "--particles",
            "500,4000",
        ])
        .args([
            "--hidden",
            "16",
            "--layers",
            "1",
            "--neighbours",
            "6",
            "--steps",
            "2",
        ])
        .args(["--precision", "f32", "--out"])
        .arg(dir.path())
        .arg("--json")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    let points = s["points"].as_array().unwrap();
    assert_eq!(points.len(), 4, "{s}");
    for p in points {
        assert_eq!(p["how"], "measured", "{p}");
        let device = p["peak_device_bytes"].as_u64().unwrap();
        assert_eq!(p["peak_bytes"].as_u64().unwrap(), device, "{p}");
        assert!(p["step_seconds"].as_f64().unwrap() > 0.0, "{p}");
    }
    // Twice the particles hold more with every activation kept.
    let off: Vec<u64> = points
        .iter()
        .filter(|p| p["techniques"] == "off")
        .map(|p| p["peak_device_bytes"].as_u64().unwrap())
        .collect();
    assert!(off[1] > off[0], "{off:?}");
}

#[test]
fn the_plan_predicts_a_gpu_runs_device_memory() {
    let Some(_) = gpu() else { return };
    let dir = tempfile::tempdir().unwrap();
    let settings = ["compute.device=gpu", "compute.batch_size=1024"];
    let mut plan = frugal();
    plan.env("FRUGAL_MNIST_DIR", mnist_dir())
        .arg("plan")
        .arg(config("mnist-mlp.toml"))
        .args(["--set", &format!("output_dir={}", dir.path().display())])
        .args(["--set", "model.hidden=[64, 32]"]);
    for s in settings {
        plan.args(["--set", s]);
    }
    let p = run_json(&mut plan);
    let device = &p["device"];
    let predicted = device["predicted_peak_device_bytes"].as_u64().unwrap();
    let probes: Vec<u64> = device["probes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b[0].as_u64().unwrap())
        .collect();
    assert_eq!(probes, [256, 512], "{p}");
    // Probes leave nothing behind.
    assert!(!std::fs::read_dir(dir.path()).unwrap().any(|e| {
        e.unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(".plan-device")
    }));

    let run = tempfile::tempdir().unwrap();
    let mut extra = settings.to_vec();
    extra.push("train.steps=3");
    let s = run_json(&mut train(run.path(), &extra));
    let measured = s["peak_device_bytes"].as_u64().unwrap() as f64;
    let ratio = predicted as f64 / measured;
    assert!(
        (0.8..=1.25).contains(&ratio),
        "predicted {predicted}, measured {measured}"
    );
}
