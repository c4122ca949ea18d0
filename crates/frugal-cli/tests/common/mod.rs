//! Shared by the CLI test binaries.

use std::path::{Path, PathBuf};

use assert_cmd::Command;

/// The real `frugal` binary, with presets from the repository alone, whatever the
/// developer running the tests has configured.
pub(crate) fn frugal() -> Command {
    let mut cmd = Command::cargo_bin("frugal").unwrap();
    cmd.env("FRUGAL_PRESETS_DIR", "/nonexistent/frugal-presets");
    // A developer's own queue must not turn local runs into remote ones.
    for var in [
        "FRUGAL_REDIS_URL",
        "FRUGAL_REDIS_CA",
        "FRUGAL_REDIS_CERT",
        "FRUGAL_REDIS_KEY",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// The MNIST files next to the repository; where a checkout has none, MNIST-shaped IDX
/// files of an easy task (class k lights a patch at a place of its own, over noise) are
/// written once per test process, so every test runs everywhere.
#[allow(dead_code)] // not every test binary trains
pub(crate) fn mnist_dir() -> PathBuf {
    let real = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/mnist");
    if real.join("train-images-idx3-ubyte.gz").exists() {
        return real;
    }
    static FAKE: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    FAKE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        for (stem, n) in [("train", 3000u32), ("t10k", 1000)] {
            let mut images = [0x0803u32, n, 28, 28].map(u32::to_be_bytes).concat();
            let mut labels = [0x0801u32, n].map(u32::to_be_bytes).concat();
            let mut state = u64::from(n);
            for i in 0..n {
                let class = (i % 10) as usize;
                labels.push(class as u8);
                let mut img = [0u8; 784];
                for px in img.iter_mut() {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    *px = (state >> 58) as u8 * 2;
                }
                let (r0, c0) = (2 + 5 * (class / 5) * 2, 2 + 5 * (class % 5));
                for r in r0..r0 + 5 {
                    for c in c0..c0 + 5 {
                        img[r * 28 + c] = 255;
                    }
                }
                images.extend_from_slice(&img);
            }
            std::fs::write(dir.path().join(format!("{stem}-images-idx3-ubyte")), images).unwrap();
            std::fs::write(dir.path().join(format!("{stem}-labels-idx1-ubyte")), labels).unwrap();
        }
        dir
    })
    .path()
    .to_owned()
}

#[allow(dead_code)] // not every test binary reads the example configurations
pub(crate) fn config(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../configs")
        .join(name)
}

/// Runs `cmd --json`, requires success, and parses what it printed.
#[allow(dead_code)] // not every test binary reads JSON
pub(crate) fn json(cmd: &mut Command) -> serde_json::Value {
    let out = cmd.arg("--json").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `n` `frugal worker` processes (one job at a time each) serving `queue` on the Redis
/// server at `url`, killed when dropped.
#[allow(dead_code)] // not every test binary farms
pub(crate) fn workers(url: &str, queue: &str, n: usize) -> Vec<frugal_farm::testing::KillOnDrop> {
    (0..n)
        .map(|i| {
            let cmd = std::process::Command::new(env!("CARGO_BIN_EXE_frugal"))
                .args(["worker", "--queue", queue, "--jobs", "1", "--name"])
                .arg(format!("w{i}"))
                .arg("--redis")
                .arg(url)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            frugal_farm::testing::KillOnDrop(cmd)
        })
        .collect()
}

/// A `frugal bench` row that ran: status `ok`, every column there, and the planner's
/// peak within 15 % of the measured one.
#[allow(dead_code)] // not every test binary runs `frugal bench`
pub(crate) fn check_bench_row(row: &serde_json::Value) {
    assert_eq!(row["status"], "ok", "{row}");
    for key in [
        "time_mean_s",
        "time_sd_s",
        "peak_bytes",
        "predicted_peak_bytes",
        "throughput",
        "speedup",
    ] {
        assert!(row[key].as_f64().is_some(), "{key}: {row}");
    }
    let (peak, predicted) = (
        row["peak_bytes"].as_f64().unwrap(),
        row["predicted_peak_bytes"].as_f64().unwrap(),
    );
    assert!(
        (predicted / peak - 1.0).abs() <= 0.15,
        "predicted {predicted} against measured {peak}: {row}"
    );
}
