//! `frugal eqprop` and `frugal train --tier` through the real binary: the gradient check's
//! sweep, the memory study's shape, and runs sized by a tier's preset.

use std::path::{Path, PathBuf};

use predicates::prelude::*;
use serde_json::Value;

mod common;
use common::{config, frugal, json, mnist_dir};

/// The CPU_ONLY preset: the configuration the gradient check is the whole scope of.
fn cpu_only_preset() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("presets/eqprop/cpu_only.toml")
}

/// `frugal eqprop SUBCOMMAND CONFIG` writing into `dir`.
fn eqprop(subcommand: &str, config: &Path, dir: &Path) -> assert_cmd::Command {
    let mut cmd = frugal();
    cmd.env("FRUGAL_MNIST_DIR", mnist_dir())
        .args(["eqprop", subcommand])
        .arg(config)
        .args(["--set", &format!("output_dir={}", dir.display())]);
    cmd
}

fn sweep(check: &Value) -> Vec<(f64, f64, f64)> {
    check["sweep"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["beta"].as_f64().unwrap(),
                p["cosine"].as_f64().unwrap(),
                p["relative_error"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// On the CPU_ONLY preset's block, EqProp's gradient reaches cosine ≥ 0.99 against
/// implicit differentiation and against backpropagation through the iterations, the
/// cosine rising and the error falling as β falls.
#[test]
fn gradcheck_sweeps_beta_against_both_references() {
    let dir = tempfile::tempdir().unwrap();
    for reference in ["implicit", "bptt"] {
        let png = dir.path().join(format!("{reference}.png"));
        let check = json(
            eqprop("gradcheck", &cpu_only_preset(), dir.path())
                .args(["--batch", "4", "--betas", "0.5,0.05,0.005"])
                .args(["--reference", reference])
                .arg("--plot")
                .arg(&png),
        );
        assert_eq!(check["reference"], reference);
        let points = sweep(&check);
        assert_eq!(points.len(), 3, "{check}");
        for w in points.windows(2) {
            assert!(w[1].1 > w[0].1, "cosine does not rise: {points:?}");
            assert!(w[1].2 < w[0].2, "error does not fall: {points:?}");
        }
        assert!(points[2].1 >= 0.99, "{points:?}");
        let tensors = check["sweep"][2]["tensors"].as_array().unwrap();
        assert_eq!(tensors.len(), 7, "{check}");
        assert_eq!(
            &std::fs::read(&png).unwrap()[..8],
            b"\x89PNG\r\n\x1a\n",
            "{reference}"
        );
    }
}

#[test]
fn gradcheck_refuses_bad_betas_and_other_workloads() {
    let dir = tempfile::tempdir().unwrap();
    eqprop("gradcheck", &cpu_only_preset(), dir.path())
        .args(["--betas", "0.1,-0.01"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--betas: -0.01"));
    eqprop("gradcheck", &cpu_only_preset(), dir.path())
        .args(["--max-iters", "0"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--max-iters"));
    eqprop("memory", &config("mnist-mlp.toml"), dir.path())
        .assert()
        .code(2)
        .stderr(predicate::str::contains("`classifier`"));
}

/// A step's peak memory: EqProp's the same at every iteration count, backpropagation's
/// growing with the iterations, checkpointing's in between.
#[test]
fn memory_study_finds_eqprop_flat_and_backprop_growing() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("memory.png");
    let report = json(
        eqprop("memory", &cpu_only_preset(), dir.path())
            .args(["--iters", "5,10,40", "--batch", "8"])
            .arg("--plot")
            .arg(&png),
    );
    let peak = |method: &str, iters: u64| -> f64 {
        report["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["method"] == method && r["iters"] == iters)
            .unwrap_or_else(|| panic!("no {method} row at {iters}: {report}"))["peak_bytes"]
            .as_f64()
            .unwrap()
    };
    assert!(report["eqprop_spread"].as_f64().unwrap() < 0.10, "{report}");
    // Eight times the iterations: backpropagation holds about eight times the history.
    assert!(peak("bptt", 40) > 4.0 * peak("bptt", 5), "{report}");
    assert!(peak("bptt_checkpointed", 40) < peak("bptt", 40), "{report}");
    assert!(
        peak("eqprop", 40) < peak("bptt_checkpointed", 40),
        "{report}"
    );
    assert!(std::fs::metadata(&png).unwrap().len() > 1000);
}

/// `--tier` sizes the run by the tier's preset (its batch size here) and says which file
/// it used; `auto` picks the tier `frugal probe` reports.
#[test]
fn tier_sizes_the_run_by_the_preset() {
    let dir = tempfile::tempdir().unwrap();
    let run = |tier: &str| {
        frugal()
            .env("FRUGAL_MNIST_DIR", mnist_dir())
            .arg("train")
            .arg(config("eqprop-mnist.toml"))
            .args(["--tier", tier])
            .args(["--set", &format!("output_dir={}", dir.path().display())])
            .args(["--stop-after", "2", "--json"])
            .output()
            .unwrap()
    };
    let out = run("cpu_only");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["batch_size"], 8, "{summary}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("eqprop/cpu_only.toml"));

    let probe = json(frugal().arg("probe"));
    let tier = probe["tier"].as_str().unwrap().to_string();
    std::fs::remove_dir_all(dir.path()).unwrap();
    let out = run("auto");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("for {tier} (this machine's tier")),
        "{stderr}"
    );

    frugal()
        .arg("train")
        .arg(config("eqprop-mnist.toml"))
        .args(["--tier", "tier_9"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("tier_9"));
}
