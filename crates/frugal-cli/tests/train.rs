//! `frugal train` through the real binary: MNIST and synthetic data, exact resume,
//! outputs, and refusals.

use std::path::Path;

use predicates::prelude::*;
use serde_json::Value;

mod common;
use common::{config, frugal, json, mnist_dir};

/// The arguments of a short MNIST run into `out` with `extra` overrides.
fn train_args(out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "train".into(),
        config("mnist-mlp.toml").display().to_string(),
    ];
    let mut set = |s: String| args.extend(["--set".into(), s]);
    set(format!("output_dir={}", out.display()));
    for s in [
        "model.hidden=[64, 32]",
        "train.steps=60",
        "train.log_every=10",
        "train.eval_every=40",
    ]
    .into_iter()
    .chain(extra.iter().copied())
    {
        set(s.into());
    }
    args
}

/// A short MNIST run into `out` with `extra` overrides.
fn train(out: &Path, extra: &[&str]) -> assert_cmd::Command {
    let mut cmd = frugal();
    cmd.env("FRUGAL_MNIST_DIR", mnist_dir())
        .args(train_args(out, extra));
    cmd
}

/// Two runs' final weights are the same bytes and their metrics the same records.
fn same_weights_and_metrics(whole: &Path, parts: &Path) {
    let a = std::fs::read(whole.join("model.bpk")).unwrap();
    let b = std::fs::read(parts.join("model.bpk")).unwrap();
    assert!(a == b, "final weights differ after resume");
    assert_eq!(metrics_without_timing(whole), metrics_without_timing(parts));
}

/// Metrics lines without the timing column, which differs between runs by nature.
fn metrics_without_timing(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("samples_per_s");
            v
        })
        .collect()
}

#[test]
fn a_short_run_learns_and_writes_every_output() {
    let dir = tempfile::tempdir().unwrap();
    let s = json(&mut train(dir.path(), &[]));
    for key in [
        "test_accuracy",
        "steps",
        "samples_per_s",
        "peak_rss_bytes",
        "train_loss",
        "device",
    ] {
        assert!(s.get(key).is_some(), "summary lacks {key}: {s}");
    }
    assert_eq!(s["steps"], 60);
    assert!(s["finished"].as_bool().unwrap());
    // 60 steps of 128 samples already beat chance (10 %) by far.
    assert!(s["test_accuracy"].as_f64().unwrap() > 0.6, "{s}");
    assert!(s["peak_rss_bytes"].as_u64().unwrap() > 1 << 20);
    for f in [
        "model.bpk",
        "checkpoint.bin",
        "metrics.jsonl",
        "metrics.csv",
        "loss.png",
        "accuracy.png",
        "summary.json",
    ] {
        assert!(dir.path().join(f).is_file(), "{f} missing");
    }
    let png = std::fs::read(dir.path().join("loss.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let csv = std::fs::read_to_string(dir.path().join("metrics.csv")).unwrap();
    // Train records every 10 steps and evaluations every 40 and at the end (epoch ends
    // add their own records when an epoch is shorter than the run).
    let steps = |split: &str| -> Vec<u64> {
        csv.lines()
            .filter(|l| l.starts_with(split))
            .map(|l| l.split(',').nth(1).unwrap().parse().unwrap())
            .collect()
    };
    let train_steps = steps("train,");
    for s in [10, 20, 30, 40, 50, 60] {
        assert!(train_steps.contains(&s), "no train record at {s}: {csv}");
    }
    let eval_steps = steps("eval,");
    assert!(
        eval_steps.contains(&40) && eval_steps.contains(&60),
        "{csv}"
    );
}

#[test]
fn a_stopped_and_resumed_run_ends_bit_identical_to_an_uninterrupted_one() {
    let whole = tempfile::tempdir().unwrap();
    let parts = tempfile::tempdir().unwrap();
    // Dropout, checkpointing and a checkpoint that is not on a log boundary all in play.
    let extra = ["compute.checkpointing=true", "train.checkpoint_every=25"];
    json(&mut train(whole.path(), &extra));
    let first = json(train(parts.path(), &extra).args(["--stop-after", "33"]));
    assert_eq!(first["steps"], 33);
    assert!(!first["finished"].as_bool().unwrap());
    assert!(!parts.path().join("model.bpk").exists());
    // A kill between checkpoints: keep the step-33 checkpoint, run on to step 47 (which
    // writes metrics past 33 and a newer checkpoint), then put the old checkpoint back,
    // as if the process had died just before writing the newer one.
    let checkpoint = parts.path().join("checkpoint.bin");
    let at_33 = std::fs::read(&checkpoint).unwrap();
    json(
        train(parts.path(), &extra)
            .arg("--resume")
            .args(["--stop-after", "47"]),
    );
    std::fs::write(&checkpoint, at_33).unwrap();
    let second = json(train(parts.path(), &extra).arg("--resume"));
    assert_eq!(second["resumed_from"], 33);
    assert_eq!(second["steps"], 60);
    same_weights_and_metrics(whole.path(), parts.path());
    assert_eq!(summary_results(&whole), summary_results(&parts));
}

/// Kills (SIGKILL) the run at random moments, in the middle of steps, checkpoint writes,
/// metric appends or the final save, then resumes it each time: the result must be the
/// uninterrupted run's, whatever the moment.
#[test]
fn a_run_killed_at_random_moments_resumes_to_the_uninterrupted_result() {
    let extra = [
        "compute.checkpointing=true",
        "train.checkpoint_every=4",
        "train.eval_every=15",
    ];
    killed_at_random_moments(|out| train_args(out, &extra));
}

/// The same for the EqProp workload: its phases' iteration counts (in the metrics) and
/// the initial seed must come back the same after every kill.
#[test]
fn an_eqprop_run_killed_at_random_moments_resumes_to_the_uninterrupted_result() {
    killed_at_random_moments(|out| {
        let mut args = eqprop_args(out);
        args.extend(["--set".into(), "train.checkpoint_every=3".into()]);
        args
    });
}

/// Runs `args(dir)` (a `frugal train` command line) whole once, then again killed at up to
/// six random moments and resumed each time, and compares the two runs' results.
fn killed_at_random_moments(args: impl Fn(&Path) -> Vec<String>) {
    let whole = tempfile::tempdir().unwrap();
    let parts = tempfile::tempdir().unwrap();
    let began = std::time::Instant::now();
    json(
        frugal()
            .env("FRUGAL_MNIST_DIR", mnist_dir())
            .args(args(whole.path())),
    );
    let whole_run = began.elapsed();

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut state = seed | 1;
    let mut uniform = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut kills = 0;
    for attempt in 0.. {
        assert!(attempt < 40, "the run never finished (seed {seed})");
        let log = whole.path().join(format!("attempt-{attempt}.log"));
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_frugal"))
            .env("FRUGAL_MNIST_DIR", mnist_dir())
            .env("FRUGAL_PRESETS_DIR", "/nonexistent/frugal-presets")
            .args(args(parts.path()))
            .args(["--resume", "--json"])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        // Up to six kills within the first half of a run's time (a resumed run that has
        // little left may finish first), then one run to the end.
        let deadline = (attempt < 6).then(|| whole_run.mul_f64(0.5 * uniform()));
        let started = std::time::Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if deadline.is_some_and(|d| started.elapsed() >= d) {
                child.kill().unwrap();
                child.wait().unwrap();
                kills += 1;
                break None;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        };
        if let Some(status) = status {
            let err = std::fs::read_to_string(&log).unwrap();
            assert!(status.success(), "attempt {attempt} (seed {seed}): {err}");
            break;
        }
    }
    assert!(kills > 0, "no kill landed (seed {seed})");
    let a = std::fs::read(whole.path().join("model.bpk")).unwrap();
    let b = std::fs::read(parts.path().join("model.bpk")).unwrap();
    assert!(
        a == b,
        "final weights differ after {kills} kills (seed {seed})"
    );
    assert_eq!(
        metrics_without_timing(whole.path()),
        metrics_without_timing(parts.path()),
        "seed {seed}"
    );
    assert_eq!(summary_results(&whole), summary_results(&parts));
}

/// The summary's results (not its timings).
fn summary_results(dir: &tempfile::TempDir) -> (Value, Value, Value) {
    let s: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("summary.json")).unwrap()).unwrap();
    (
        s["test_accuracy"].clone(),
        s["train_loss"].clone(),
        s["samples"].clone(),
    )
}

#[test]
fn an_existing_run_is_not_overwritten_and_resumes_only_with_its_settings() {
    let dir = tempfile::tempdir().unwrap();
    train(dir.path(), &[])
        .args(["--stop-after", "5"])
        .assert()
        .success();
    train(dir.path(), &[])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--resume"));
    train(dir.path(), &["train.lr=0.01"])
        .arg("--resume")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("other settings"));
    // Logging and checkpoint intervals do not change the result, so they may change.
    train(dir.path(), &["train.log_every=7"])
        .arg("--resume")
        .assert()
        .success();
}

#[test]
fn a_damaged_checkpoint_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    train(dir.path(), &[])
        .args(["--stop-after", "5"])
        .assert()
        .success();
    let path = dir.path().join("checkpoint.bin");
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    train(dir.path(), &[])
        .arg("--resume")
        .assert()
        .code(2)
        .stderr(
            predicate::str::contains("checkpoint.bin").and(predicate::str::contains("damaged")),
        );
}

#[test]
fn missing_mnist_files_name_the_folder_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    train(dir.path(), &[])
        .env("FRUGAL_MNIST_DIR", dir.path().join("nowhere"))
        .assert()
        .failure()
        .stderr(
            predicate::str::contains("nowhere").and(predicate::str::contains("FRUGAL_MNIST_DIR")),
        );
}

#[test]
fn the_synthetic_config_trains_on_generated_data() {
    let dir = tempfile::tempdir().unwrap();
    let s = json(
        frugal()
            .arg("train")
            .arg(config("classifier-synthetic.toml"))
            .arg("--set")
            .arg(format!("output_dir={}", dir.path().display()))
            .args([
                "--set",
                "data.samples=4000",
                "--set",
                "data.test_samples=1000",
            ])
            .args(["--set", "train.epochs=3"]),
    );
    // Five classes: chance is 20 %.
    assert!(s["test_accuracy"].as_f64().unwrap() > 0.4, "{s}");
    assert!(
        dir.path()
            .join("data/synthetic-train/manifest.json")
            .is_file()
    );
    assert!(
        dir.path()
            .join("data/synthetic-test/manifest.json")
            .is_file()
    );
}

#[test]
fn reduced_precision_runs_learn_with_f32_master_weights() {
    for precision in ["bf16", "f16"] {
        let dir = tempfile::tempdir().unwrap();
        let s = json(&mut train(
            dir.path(),
            &[&format!("compute.precision={precision}")],
        ));
        assert_eq!(s["precision"], precision);
        assert!(
            s["test_accuracy"].as_f64().unwrap() > 0.6,
            "{precision}: {s}"
        );
        // The master weights are saved as f32: the record is as large as an f32 run's.
        let f32_dir = tempfile::tempdir().unwrap();
        json(&mut train(f32_dir.path(), &[]));
        let size = |d: &Path| std::fs::metadata(d.join("model.bpk")).unwrap().len();
        assert_eq!(size(dir.path()), size(f32_dir.path()));
        if precision == "f16" {
            // GradScaler semantics: start at 2^16, halve and skip on overflow; no growth
            // within 2000 clean steps. So the last scale tells how many steps were skipped.
            let m = metrics_without_timing(dir.path());
            let last = m
                .iter()
                .rev()
                .find_map(|r| r.get("loss_scale"))
                .unwrap()
                .as_f64()
                .unwrap();
            let halvings = (65536.0 / last).log2();
            assert_eq!(halvings.fract(), 0.0, "scale {last}");
            assert_eq!(s["skipped_steps"].as_f64().unwrap(), halvings, "{s}");
            assert!(s["skipped_steps"].as_u64().unwrap() < 20, "{s}");
        }
    }
}

#[test]
fn the_cnn_trains_checkpointed_on_images() {
    let dir = tempfile::tempdir().unwrap();
    let s = json(&mut train(
        dir.path(),
        &[
            "model.arch=cnn",
            "model.hidden=[8, 16]",
            "compute.checkpointing=true",
            "compute.batch_size=64",
            "train.steps=40",
            "train.warmup_steps=5",
        ],
    ));
    assert_eq!(s["checkpoint_segments"], 2);
    assert!(s["test_accuracy"].as_f64().unwrap() > 0.5, "{s}");
}

/// The arguments of a short EqProp run on MNIST into `out` (a small block, 24 steps).
fn eqprop_args(out: &Path) -> Vec<String> {
    let mut args = vec![
        "train".into(),
        config("eqprop-mnist.toml").display().to_string(),
    ];
    for s in [
        format!("output_dir={}", out.display()),
        "compute.device=cpu".into(),
        "compute.batch_size=32".into(),
        "model.d_model=16".into(),
        "model.memories=32".into(),
        "eqprop.max_iters=20".into(),
        "train.steps=24".into(),
        "train.warmup_steps=0".into(),
        "train.log_every=4".into(),
        "train.eval_every=24".into(),
        "train.checkpoint_every=7".into(),
    ] {
        args.extend(["--set".into(), s]);
    }
    args
}

/// `frugal train` on the EqProp configuration: the looped transformer learns MNIST past
/// chance in a few steps, and a run stopped between checkpoints and resumed ends with the
/// uninterrupted run's weights and metrics.
#[test]
fn an_eqprop_run_learns_and_resumes_to_the_uninterrupted_weights() {
    let run = |out: &Path| {
        let mut cmd = frugal();
        cmd.env("FRUGAL_MNIST_DIR", mnist_dir())
            .args(eqprop_args(out));
        cmd
    };
    let whole = tempfile::tempdir().unwrap();
    let parts = tempfile::tempdir().unwrap();
    let s = json(&mut run(whole.path()));
    assert_eq!(s["steps"], 24);
    assert!(s["test_accuracy"].as_f64().unwrap() > 0.2, "{s}");
    // Every train record says how the phases' solves went (three a step, at most 20
    // iterations each).
    let records = metrics_without_timing(whole.path());
    let train: Vec<&Value> = records.iter().filter(|r| r["split"] == "train").collect();
    assert_eq!(train.len(), 6);
    for r in train {
        let mean = r["iterations_mean"].as_f64().unwrap();
        let max = r["iterations_max"].as_u64().unwrap();
        let unconverged = r["unconverged"].as_f64().unwrap();
        assert!(mean >= 1.0 && mean <= max as f64 && max <= 20, "{r}");
        assert!((0.0..=1.0).contains(&unconverged), "{r}");
    }
    let first = json(run(parts.path()).args(["--stop-after", "10"]));
    assert_eq!(first["steps"], 10);
    let second = json(run(parts.path()).arg("--resume"));
    assert_eq!(second["resumed_from"], 10);
    same_weights_and_metrics(whole.path(), parts.path());
}

/// The EqProp block refuses reduced precision with the key to change.
#[test]
fn eqprop_refuses_reduced_precision() {
    let dir = tempfile::tempdir().unwrap();
    frugal()
        .env("FRUGAL_MNIST_DIR", mnist_dir())
        .arg("train")
        .arg(config("eqprop-mnist.toml"))
        .args(["--set", &format!("output_dir={}", dir.path().display())])
        .args(["--set", "compute.precision=bf16"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("compute.precision"));
}
