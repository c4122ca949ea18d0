//! `frugal data` through the real binary: generate, inspect, verify, bench, damage, resume.

use std::path::Path;
use std::time::{Duration, Instant};

use predicates::prelude::*;
use serde_json::Value;

mod common;
use common::frugal;

/// 264 bytes per sample and 64 KiB shards: 248 samples a shard.
fn generate(dir: &Path, samples: u64, threads: u32) -> assert_cmd::assert::Assert {
    frugal()
        .args([
            "data",
            "gen",
            "synthetic",
            "--features",
            "64",
            "--classes",
            "5",
        ])
        .args(["--shard-size", "64KiB", "--seed", "7"])
        .arg("--samples")
        .arg(samples.to_string())
        .arg("--threads")
        .arg(threads.to_string())
        .arg("--out")
        .arg(dir)
        .assert()
}

fn json(cmd: &mut assert_cmd::Command) -> Value {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn generate_inspect_verify_and_bench() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ds");
    generate(&dir, 3000, 2)
        .success()
        .stdout(predicate::str::contains("wrote 3000 samples in 13 shards"));

    let m = json(frugal().args(["data", "inspect", "--json"]).arg(&dir));
    assert_eq!(m["samples"], 3000);
    assert_eq!(m["complete"], true);
    assert_eq!(m["schema"]["columns"][0]["shape"][0], 64);
    assert_eq!(m["shards"].as_array().unwrap().len(), 13);
    frugal()
        .args(["data", "inspect"])
        .arg(&dir)
        .assert()
        .success()
        .stdout(predicate::str::contains("samples   3000"));

    frugal()
        .args(["data", "verify"])
        .arg(&dir)
        .assert()
        .success()
        .stdout(predicate::str::starts_with("ok: 13 shards"));

    for order in ["sequential", "shard", "window", "full"] {
        for cold in [false, true] {
            let mut cmd = frugal();
            cmd.args(["data", "bench", "--json", "--order", order])
                .arg(&dir);
            if cold {
                cmd.arg("--cold");
            }
            let b = json(&mut cmd);
            assert_eq!(b["samples"], 3000, "{order}");
            for key in ["read_gbps", "raw_gbps", "ratio", "samples_per_s"] {
                assert!(b[key].as_f64().unwrap() > 0.0, "{order} {key}: {b}");
            }
            let rss = b["peak_rss_bytes"].as_u64().unwrap();
            assert!(rss > 1 << 20 && rss < 256 << 20, "{rss}");
        }
    }
    // Repeated pairs alternate which read goes first; the top-level figures are medians.
    let b = json(
        frugal()
            .args(["data", "bench", "--json", "--cold", "--repeats", "3"])
            .arg(&dir),
    );
    let runs = b["runs"].as_array().unwrap();
    let firsts: Vec<bool> = runs
        .iter()
        .map(|r| r["raw_first"].as_bool().unwrap())
        .collect();
    assert_eq!(firsts, [true, false, true]);
    let mut ratios: Vec<f64> = runs.iter().map(|r| r["ratio"].as_f64().unwrap()).collect();
    ratios.sort_by(f64::total_cmp);
    assert_eq!(b["ratio"].as_f64().unwrap(), ratios[1]);
    frugal()
        .args(["data", "bench", "--repeats", "0"])
        .arg(&dir)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--repeats"));
}

#[test]
fn damage_is_named_by_verify_and_stops_a_read() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ds");
    generate(&dir, 1000, 1).success();
    let flipped = dir.join("shard-000001.safetensors");
    let mut bytes = std::fs::read(&flipped).unwrap();
    let last = bytes.len() - 1;
    bytes[last - 300] ^= 0x10;
    std::fs::write(&flipped, bytes).unwrap();

    frugal()
        .args(["data", "verify"])
        .arg(&dir)
        .assert()
        .code(1)
        .stdout(
            predicate::str::contains("DAMAGED")
                .and(predicate::str::contains("shard-000001.safetensors")),
        )
        .stderr(
            predicate::str::contains("1 of 5 shards")
                .and(predicate::str::contains("shard-000001.safetensors")),
        );
    frugal()
        .args(["data", "bench"])
        .arg(&dir)
        .assert()
        .code(1)
        .stderr(
            predicate::str::contains("shard-000001.safetensors")
                .and(predicate::str::contains("corrupted")),
        );

    let truncated = dir.join("shard-000003.safetensors");
    let len = std::fs::metadata(&truncated).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&truncated)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let report = {
        let out = frugal()
            .args(["data", "verify", "--json"])
            .arg(&dir)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let faults = report["faults"].as_array().unwrap();
    assert_eq!(faults.len(), 2);
    assert_eq!(faults[1]["file"], "shard-000003.safetensors");
    assert!(faults[1]["fault"].as_str().unwrap().contains("truncated"));
    frugal()
        .args(["data", "bench", "--verify", "off"])
        .arg(&dir)
        .assert()
        .code(1)
        .stderr(
            predicate::str::contains("shard-000003.safetensors")
                .and(predicate::str::contains("truncated")),
        );
    // Inspect reads no data: the flipped bit passes, the truncated and the missing shard
    // do not.
    std::fs::remove_file(dir.join("shard-000004.safetensors")).unwrap();
    frugal()
        .args(["data", "inspect"])
        .arg(&dir)
        .assert()
        .code(1)
        .stdout(
            predicate::str::contains("status    damaged: 2 of 5 shards")
                .and(predicate::str::contains(
                    "shard-000003.safetensors: file is",
                ))
                .and(predicate::str::contains(
                    "shard-000004.safetensors: missing",
                ))
                .and(predicate::str::contains("shard-000001").not()),
        )
        .stderr(predicate::str::contains("2 of 5 shards"));
}

/// An operating-system error reaches the user once, not once per layer that wraps it.
#[test]
fn an_os_error_is_printed_once() {
    let tmp = tempfile::tempdir().unwrap();
    // A manifest that cannot be read: a directory where the file should be.
    std::fs::create_dir_all(tmp.path().join("manifest.json")).unwrap();
    let out = frugal()
        .args(["data", "inspect"])
        .arg(tmp.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.matches("os error 21").count(), 1, "{stderr}");
}

#[test]
fn the_dataset_does_not_depend_on_the_thread_count() {
    let tmp = tempfile::tempdir().unwrap();
    generate(&tmp.path().join("one"), 2000, 1).success();
    generate(&tmp.path().join("two"), 2000, 2).success();
    let read = |d: &str| std::fs::read(tmp.path().join(d).join("manifest.json")).unwrap();
    assert_eq!(read("one"), read("two"));
}

/// A generation of many small shards: long enough to be killed part way.
const SMALL_SHARDS: [&str; 13] = [
    "data",
    "gen",
    "synthetic",
    "--features",
    "64",
    "--classes",
    "5",
    "--shard-size",
    "16KiB",
    "--seed",
    "7",
    "--samples",
    "30000",
];

#[test]
fn a_killed_generation_resumes_to_the_same_dataset() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("killed");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_frugal"))
        .args(SMALL_SHARDS)
        .args(["--threads", "2"])
        .arg("--out")
        .arg(&dir)
        .spawn()
        .unwrap();
    // Kill it once a few shards are on disk (or whenever it gets that far).
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        let shards = std::fs::read_dir(&dir)
            .map(|d| {
                d.filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .ends_with(".safetensors")
                })
                .count()
            })
            .unwrap_or(0);
        if shards >= 5 {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // 484 shards: killed after the fifth, the run cannot have finished, so this test
    // always exercises the resume.
    assert!(
        !dir.join("manifest.json").exists(),
        "the generation finished before it was killed"
    );
    frugal()
        .args(["data", "verify"])
        .arg(&dir)
        .assert()
        .failure();
    // Shards the killed run recorded are kept, not written again.
    let recorded: Vec<(String, u64)> = std::fs::read_dir(dir.join("parts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .flat_map(|p| {
            let part: Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
            part["shards"].as_array().unwrap().clone()
        })
        .map(|s| {
            let file = s["file"].as_str().unwrap().to_owned();
            let inode =
                std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(dir.join(&file)).unwrap());
            (file, inode)
        })
        .collect();
    assert!(!recorded.is_empty());
    frugal()
        .args(SMALL_SHARDS)
        .args(["--threads", "1"])
        .arg("--out")
        .arg(&dir)
        .assert()
        .success();
    for (file, inode) in &recorded {
        let now = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(dir.join(file)).unwrap());
        assert_eq!(now, *inode, "{file} was written again");
    }
    let reference = tmp.path().join("reference");
    frugal()
        .args(SMALL_SHARDS)
        .args(["--threads", "2"])
        .arg("--out")
        .arg(&reference)
        .assert()
        .success();
    assert_eq!(
        std::fs::read(dir.join("manifest.json")).unwrap(),
        std::fs::read(reference.join("manifest.json")).unwrap()
    );
    frugal()
        .args(["data", "verify"])
        .arg(&dir)
        .assert()
        .success();
}

#[test]
fn other_settings_on_an_unfinished_run_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ds");
    std::fs::create_dir_all(dir.join("parts")).unwrap();
    std::fs::write(
        dir.join("parts/generator.settings"),
        r#"{"samples":10,"features":8,"classes":2,"hidden":32,"seed":1,"shard_bytes":1024}"#,
    )
    .unwrap();
    generate(&dir, 1000, 1)
        .code(2)
        .stderr(predicate::str::contains("other settings"));
    let busy = tmp.path().join("busy");
    std::fs::create_dir_all(&busy).unwrap();
    std::fs::write(busy.join("thesis.tex"), "precious").unwrap();
    generate(&busy, 10, 1)
        .code(2)
        .stderr(predicate::str::contains("thesis.tex"));
    assert_eq!(std::fs::read(busy.join("thesis.tex")).unwrap(), b"precious");
    frugal()
        .args(["data", "inspect"])
        .arg(tmp.path())
        .assert()
        .code(2)
        .stderr(predicate::str::contains("is not a dataset"));
}

#[test]
fn mnist_imports_and_streams() {
    let mnist = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/mnist");
    if !mnist.exists() {
        #[allow(clippy::print_stderr)] // a skipped test says why
        {
            eprintln!("skipped: {} is absent", mnist.display());
        }
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mnist");
    frugal()
        .args(["data", "import", "mnist"])
        .arg("--images")
        .arg(mnist.join("t10k-images-idx3-ubyte.gz"))
        .arg("--labels")
        .arg(mnist.join("t10k-labels-idx1-ubyte.gz"))
        .arg("--out")
        .arg(&dir)
        .assert()
        .success()
        .stdout(predicate::str::contains("wrote 10000 samples"));
    let m = json(frugal().args(["data", "inspect", "--json"]).arg(&dir));
    assert_eq!(
        m["schema"]["columns"][0]["shape"],
        serde_json::json!([28, 28])
    );
    let b = json(frugal().args(["data", "bench", "--json"]).arg(&dir));
    assert_eq!(b["samples"], 10000);
}

/// `frugal data import raw` reads seed-001's layout (features × samples f32, i32 labels)
/// and names what is wrong with a spec or a file.
#[test]
fn raw_files_import_through_the_binary() {
    let tmp = tempfile::tempdir().unwrap();
    let (n, features) = (500usize, 6usize);
    let mut images = Vec::new();
    for f in 0..features {
        for i in 0..n {
            images.extend(((i * features + f) as f32).to_le_bytes());
        }
    }
    let labels: Vec<u8> = (0..n as i32).flat_map(|i| (i % 10).to_le_bytes()).collect();
    std::fs::write(tmp.path().join("images.bin"), &images).unwrap();
    std::fs::write(tmp.path().join("labels.bin"), &labels).unwrap();
    let dir = tmp.path().join("ds");
    frugal()
        .current_dir(tmp.path())
        .args(["data", "import", "raw"])
        .args(["--column", "x=images.bin:f32:6:column-major"])
        .args(["--column", "y=labels.bin:i32", "--out", "ds"])
        .assert()
        .success()
        .stdout(predicate::str::contains("wrote 500 samples"));
    let m = json(frugal().args(["data", "inspect", "--json"]).arg(&dir));
    assert_eq!(m["schema"]["columns"][0]["shape"], serde_json::json!([6]));
    assert_eq!(m["schema"]["columns"][1]["dtype"], "I32");

    frugal()
        .current_dir(tmp.path())
        .args([
            "data",
            "import",
            "raw",
            "--column",
            "x=images.bin:float32:6",
        ])
        .args(["--out", "bad"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("unknown dtype `float32`"));
    frugal()
        .current_dir(tmp.path())
        .args(["data", "import", "raw", "--column", "x=images.bin:f32:7"])
        .args(["--out", "bad"])
        .assert()
        .code(2)
        .stderr(
            predicate::str::contains("images.bin").and(predicate::str::contains("28-byte samples")),
        );
    assert!(!tmp.path().join("bad").exists());
}
