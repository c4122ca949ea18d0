//! `frugal probe` through the real binary, checked against the machine it runs on.

use predicates::prelude::*;
use serde_json::Value;

mod common;
use common::frugal;

fn probe_json(extra: &[&str]) -> Value {
    let out = frugal()
        .arg("probe")
        .arg("--json")
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("probe --json prints JSON")
}

fn nproc() -> u64 {
    match std::process::Command::new("nproc").output() {
        Ok(out) if out.status.success() => String::from_utf8(out.stdout)
            .unwrap()
            .trim()
            .parse()
            .unwrap(),
        _ => std::thread::available_parallelism().unwrap().get() as u64,
    }
}

fn mem_total_bytes() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .unwrap()
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kib * 1024
}

#[test]
fn json_describes_this_machine() {
    let j = probe_json(&[]);
    assert_eq!(j["cpu"]["logical_cores"].as_u64(), Some(nproc()));
    assert!(j["cpu"]["model"].is_string());
    let physical = j["cpu"]["physical_cores"].as_u64().unwrap();
    assert!((1..=nproc()).contains(&physical));

    let total = j["memory"]["total_bytes"].as_u64().unwrap();
    let want = mem_total_bytes();
    assert!(
        total.abs_diff(want) * 100 <= want,
        "total {total} vs MemTotal {want}"
    );
    let available = j["memory"]["available_bytes"].as_u64().unwrap();
    assert!(available <= total);
    let limit = &j["memory"]["cgroup_limit_bytes"];
    assert!(
        limit.is_null() || limit.as_u64().is_some_and(|l| l > 0),
        "{limit}"
    );
    let budget = j["memory"]["budget_bytes"].as_u64().unwrap();
    assert_eq!(budget, limit.as_u64().map_or(total, |l| l.min(total)));

    let gpus = j["gpus"].as_array().expect("gpus is an array");
    for g in gpus {
        assert!(g["name"].is_string());
        let total = g["memory_total_bytes"].as_u64().unwrap();
        assert!(g["memory_free_bytes"].as_u64().unwrap() <= total);
    }
    let tier = j["tier"].as_str().unwrap();
    if gpus.is_empty() {
        assert_eq!(tier, "CPU_ONLY");
        assert!(j["gpu_unavailable_reason"].is_string());
    }
    assert!(!j["tier_rule"].as_str().unwrap().is_empty());

    let presets = j["presets"].as_object().unwrap();
    for family in ["classifier", "particles", "evolve"] {
        let p = &presets[family];
        assert_eq!(p["config"]["workload"], family);
        assert!(p["config"]["output_dir"].is_string());
        assert!(p["config"]["compute"]["batch_size"].as_u64().unwrap() >= 1);
        assert_eq!(p["builtin"], true);
        if gpus.is_empty() {
            assert_eq!(p["tier"], "CPU_ONLY");
            assert_eq!(p["config"]["compute"]["device"], "cpu");
        }
    }
}

#[test]
fn the_table_names_the_tier_and_its_rule() {
    frugal()
        .arg("probe")
        .assert()
        .success()
        .stdout(predicate::str::contains("Tier "))
        .stdout(predicate::str::contains("budget"))
        .stdout(predicate::str::contains(
            "crates/frugal-cli/presets/classifier/",
        ));
}

#[test]
fn disk_bench_reports_a_rate_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    let j = probe_json(&["--path", path, "--disk-bench", "--disk-bench-size", "16MiB"]);
    let bench = &j["disk"]["bench"];
    assert_eq!(bench["bytes"].as_u64(), Some(16 << 20));
    assert!(bench["read_gbps"].as_f64().unwrap() > 0.0);
    assert!(j["disk"]["free_bytes"].as_u64().unwrap() > 0);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn a_missing_path_is_a_user_error_naming_it() {
    frugal()
        .args(["probe", "--path", "/no/such/dir/for/frugal"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("/no/such/dir/for/frugal"));
    frugal()
        .args(["probe", "--disk-bench-size", "lots"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("lots"));
}

#[test]
fn a_user_preset_overrides_the_builtin_one() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("evolve")).unwrap();
    let file = dir.path().join("evolve/cpu_only.toml");
    std::fs::write(
        &file,
        "workload = \"evolve\"\noutput_dir = \"mine\"\n[compute]\nthreads = 3\n[search]\npopulation = 8\ngenerations = 2\n",
    )
    .unwrap();
    let j = probe_json(&["--presets", dir.path().to_str().unwrap()]);
    let p = &j["presets"]["evolve"];
    assert_eq!(p["builtin"], false);
    assert_eq!(p["source"], file.to_str().unwrap());
    assert_eq!(p["config"]["compute"]["threads"], 3);
    assert_eq!(p["config"]["search"]["population"], 8);
    assert_eq!(j["presets"]["classifier"]["builtin"], true);

    // A broken one is reported where it is broken, not skipped.
    std::fs::write(
        &file,
        "workload = \"evolve\"\noutput_dir = \"mine\"\n[search]\npopulation = \"many\"\n",
    )
    .unwrap();
    frugal()
        .args(["probe", "--presets", dir.path().to_str().unwrap()])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(format!("{}:4:14", file.display())));
}
