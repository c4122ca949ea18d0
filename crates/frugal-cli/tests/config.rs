//! `frugal config` through the real binary.

use std::path::{Path, PathBuf};

use predicates::prelude::*;

mod common;
use common::frugal;

const GOOD: &str = r#"workload = "classifier"
output_dir = "runs/eq"

[compute]
device = "cpu"
batch_size = 16

[model]
arch = "mlp"
classes = 4
hidden = [64, 32]
dropout = 0.1
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
            "ok (classifier workload, output in runs/eq)",
        ));
}

#[test]
fn errors_are_reported_at_their_line_and_column() {
    // (case, file text, LINE:COL, words the message must contain)
    let extra_table = format!("{GOOD}\n[extra]\nthing = 1\n");
    let cases: &[(&str, &str, &str, &[&str])] = &[
        (
            "unknown key",
            &GOOD.replace("batch_size = 16", "  batch_sise = 16"),
            "6:3",
            &["unknown field `batch_sise`", "`batch_size`"],
        ),
        ("unknown table", &extra_table, "14:2", &["`extra`"]),
        (
            "wrong type",
            &GOOD.replace("dropout = 0.1", "dropout = \"wide\""),
            "12:11",
            &["expected f64"],
        ),
        (
            "unknown variant",
            &GOOD.replace("device = \"cpu\"", "device = \"tpu\""),
            "5:10",
            &["tpu"],
        ),
        (
            "syntax",
            "workload = \"classifier\"\noutput_dir = [\n",
            "2:15",
            &["unclosed array"],
        ),
        (
            "values that disagree",
            &GOOD.replace("classes = 4", "classes = 1"),
            "10:11",
            &["model.classes", "at least 2"],
        ),
        ("no workload", "output_dir = \"x\"\n", "1:1", &["workload"]),
        (
            "unknown workload",
            "workload = \"gan\"\n",
            "1:12",
            &["gan", "classifier"],
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (i, &(case, text, at, words)) in cases.iter().enumerate() {
        let file = write(dir.path(), &format!("case{i}.toml"), text);
        let err = check_fails(&file, &[]);
        assert!(
            err.contains(&format!("{}:{at}: ", file.display())),
            "{case}: {err}"
        );
        for w in words {
            assert!(err.contains(w), "{case}: no `{w}` in {err}");
        }
    }
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
    let show = |last: &str| {
        frugal()
            .args(["config", "show", "--json"])
            .arg(&file)
            .args(["--set", "compute.batch_size=64"])
            .args(["--set", "compute.precision=bf16"])
            .args(["--set", "output_dir=elsewhere"])
            .args(["--set", last])
            .output()
            .unwrap()
    };
    let out = show("model.hidden_layers_gone=1");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("--set model.hidden_layers_gone=1 (column 7)"),
        "{err}"
    );

    let out = show("compute.checkpointing=true");
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
        &GOOD.replace("classes = 4", "classes = 1"),
    );
    frugal()
        .args(["config", "check"])
        .arg(&broken)
        .args(["--set", "model.classes=8"])
        .assert()
        .success();
}

#[test]
fn every_shipped_config_checks() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    let mut stack = vec![crate_dir.join("../../configs"), crate_dir.join("presets")];
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
    assert!(files.len() >= 18, "found only {files:?}");
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
        .args([
            "config",
            "preset",
            "classifier",
            "--tier",
            "TIER_1_COMMODITY",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("precision = \"f16\"") && text.contains("hidden = [32, 64, 128]"),
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
