//! `frugal config` through the real binary.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use predicates::prelude::*;

fn frugal() -> Command {
    let mut cmd = Command::cargo_bin("frugal").unwrap();
    cmd.env("FRUGAL_PRESETS_DIR", "/nonexistent/frugal-presets");
    cmd
}

const GOOD: &str = r#"workload = "eqprop"
output_dir = "runs/eq"

[compute]
device = "cpu"
batch_size = 16

[model]
d_model = 64
n_heads = 4
d_ff = 256
max_iters = 50
damping = 0.9
"#;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs `config check` and returns stderr, asserting exit code 2.
fn check_fails(file: &Path, extra: &[&str]) -> String {
    let out = frugal()
        .args(["config", "check"])
        .arg(file)
        .args(extra)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn a_good_file_passes() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "good.toml", GOOD);
    frugal()
        .args(["config", "check"])
        .arg(&file)
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "ok (eqprop workload, output in runs/eq)",
        ));
}

#[test]
fn an_unknown_key_is_reported_at_its_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "typo.toml",
        &GOOD.replace("batch_size = 16", "  batch_sise = 16"),
    );
    let err = check_fails(&file, &[]);
    assert!(err.contains(&format!("{}:6:3:", file.display())), "{err}");
    assert!(err.contains("unknown field `batch_sise`"), "{err}");
    assert!(
        err.contains("`batch_size`"),
        "the message lists the valid keys: {err}"
    );

    let file = write(
        dir.path(),
        "top.toml",
        &format!("{GOOD}\n[extra]\nthing = 1\n"),
    );
    let err = check_fails(&file, &[]);
    assert!(
        err.contains(&format!("{}:15:2:", file.display())) && err.contains("`extra`"),
        "{err}"
    );
}

#[test]
fn a_wrong_type_is_reported_at_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "type.toml",
        &GOOD.replace("d_ff = 256", "d_ff = \"wide\""),
    );
    let err = check_fails(&file, &[]);
    assert!(err.contains(&format!("{}:11:8:", file.display())), "{err}");
    assert!(err.contains("expected u32"), "{err}");

    let file = write(
        dir.path(),
        "enum.toml",
        &GOOD.replace("device = \"cpu\"", "device = \"tpu\""),
    );
    let err = check_fails(&file, &[]);
    assert!(
        err.contains(&format!("{}:5:10:", file.display())) && err.contains("tpu"),
        "{err}"
    );
}

#[test]
fn syntax_errors_and_bad_values_are_located() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "syntax.toml",
        "workload = \"eqprop\"\noutput_dir = [\n",
    );
    let err = check_fails(&file, &[]);
    assert!(err.contains(&format!("{}:2:", file.display())), "{err}");

    let file = write(
        dir.path(),
        "heads.toml",
        &GOOD.replace("n_heads = 4", "n_heads = 5"),
    );
    let err = check_fails(&file, &[]);
    assert!(
        err.contains(&format!("{}:10:11:", file.display())) && err.contains("model.n_heads"),
        "{err}"
    );

    let file = write(dir.path(), "noworkload.toml", "output_dir = \"x\"\n");
    let err = check_fails(&file, &[]);
    assert!(
        err.contains(&format!("{}:1:1:", file.display())) && err.contains("workload"),
        "{err}"
    );

    let missing = dir.path().join("missing.toml");
    let err = check_fails(&missing, &[]);
    assert!(
        err.contains(&format!("{}:1:1:", missing.display())),
        "{err}"
    );
}

#[test]
fn set_overrides_keys_and_its_errors_name_the_argument() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "good.toml", GOOD);
    let out = frugal()
        .args(["config", "show", "--json"])
        .arg(&file)
        .args([
            "--set",
            "compute.batch_size=64",
            "--set",
            "compute.precision=bf16",
        ])
        .args([
            "--set",
            "output_dir=elsewhere",
            "--set",
            "model.hidden_layers_gone=1",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("--set model.hidden_layers_gone=1 (column 7)"),
        "{err}"
    );

    let out = frugal()
        .args(["config", "show", "--json"])
        .arg(&file)
        .args([
            "--set",
            "compute.batch_size=64",
            "--set",
            "compute.precision=bf16",
        ])
        .args([
            "--set",
            "output_dir=elsewhere",
            "--set",
            "compute.checkpointing=true",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["compute"]["batch_size"], 64);
    assert_eq!(j["compute"]["precision"], "bf16");
    assert_eq!(j["compute"]["checkpointing"], true);
    assert_eq!(j["output_dir"], "elsewhere");
    assert_eq!(j["compute"]["grad_accum"], 1, "defaults are filled in");

    let err = check_fails(&file, &["--set", "compute.batch_size=lots"]);
    assert!(
        err.contains("--set compute.batch_size=lots (column 20)") && err.contains("expected u32"),
        "{err}"
    );
    let err = check_fails(&file, &["--set", "nonsense"]);
    assert!(err.contains("expected KEY=VALUE"), "{err}");
    let err = check_fails(&file, &["--set", "output_dir.x=1"]);
    assert!(
        err.contains("`output_dir` is a string, not a table"),
        "{err}"
    );
    // An override can also repair a file.
    let broken = write(
        dir.path(),
        "broken.toml",
        &GOOD.replace("n_heads = 4", "n_heads = 5"),
    );
    frugal()
        .args(["config", "check"])
        .arg(&broken)
        .args(["--set", "model.n_heads=8"])
        .assert()
        .success();
}

#[test]
fn every_shipped_config_checks() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let mut files = Vec::new();
    let mut stack = vec![root];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "toml") {
                files.push(path);
            }
        }
    }
    assert!(files.len() >= 21, "found only {files:?}");
    for file in files {
        frugal()
            .args(["config", "check"])
            .arg(&file)
            .assert()
            .success();
    }
}

#[test]
fn preset_prints_a_config_that_checks() {
    let dir = tempfile::tempdir().unwrap();
    let out = frugal()
        .args(["config", "preset", "eqprop", "--tier", "TIER_1_COMMODITY"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("d_model = 64") && text.contains("grad_accum = 4"),
        "{text}"
    );
    let file = write(dir.path(), "mine.toml", &text);
    frugal()
        .args(["config", "check"])
        .arg(&file)
        .assert()
        .success();

    // A family without its own preset for a tier gets the nearest one below.
    frugal()
        .args(["config", "preset", "evolve", "--tier", "TIER_3_HIGH_END"])
        .assert()
        .success()
        .stdout(predicate::str::contains("workload = \"evolve\""));
    frugal()
        .args(["config", "preset", "gan"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("gan"));
}
