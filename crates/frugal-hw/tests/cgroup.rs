//! cgroup v1 and v2 parsing against fixture trees laid out like `/`.

use std::path::{Path, PathBuf};

use frugal_hw::{CgroupVersion, Cgroups};

const GIB: u64 = 1 << 30;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/cgroup")
        .join(name)
}

/// (fixture, version, limit, usage, directory the limit came from)
type MemoryCase = (
    &'static str,
    CgroupVersion,
    Option<u64>,
    Option<u64>,
    Option<&'static str>,
);

#[test]
fn memory_limits_table() {
    let cases: &[MemoryCase] = &[
        ("v1-unlimited", CgroupVersion::V1, None, Some(GIB), None),
        (
            "v1-limited",
            CgroupVersion::V1,
            Some(2 * GIB),
            Some(50 << 20),
            Some("sys/fs/cgroup/memory"),
        ),
        (
            "v1-nested",
            CgroupVersion::V1,
            Some(3 * GIB),
            Some(4096),
            Some("sys/fs/cgroup/memory/batch/job7"),
        ),
        (
            "v1-container-nested",
            CgroupVersion::V1,
            Some(GIB),
            Some(8192),
            Some("sys/fs/cgroup/memory"),
        ),
        (
            "v2-unlimited",
            CgroupVersion::V2,
            None,
            Some(700 << 20),
            None,
        ),
        (
            "v2-limited",
            CgroupVersion::V2,
            Some(4 * GIB),
            Some(100 << 20),
            Some("sys/fs/cgroup"),
        ),
        (
            "v2-nested",
            CgroupVersion::V2,
            Some(6 * GIB),
            Some(123),
            Some("sys/fs/cgroup/work.slice/train.slice"),
        ),
    ];
    for &(name, version, limit, usage, limited_by) in cases {
        let root = fixture(name);
        let mem = Cgroups::at(&root)
            .memory()
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .unwrap_or_else(|| panic!("{name}: no memory controller found"));
        assert_eq!(mem.version, version, "{name}");
        assert_eq!(mem.limit_bytes, limit, "{name}");
        assert_eq!(mem.usage_bytes, usage, "{name}");
        assert_eq!(mem.limited_by, limited_by.map(|p| root.join(p)), "{name}");
    }
}

#[test]
fn cgroup_directories_resolve_through_the_mount_root() {
    let root = fixture("v1-limited");
    let mem = Cgroups::at(&root).memory().unwrap().unwrap();
    // /docker/4f2a is the mount's own root, so the cgroup is the mount point itself.
    assert_eq!(mem.path, "/docker/4f2a");
    assert_eq!(mem.dir, root.join("sys/fs/cgroup/memory"));

    let root = fixture("v2-nested");
    let mem = Cgroups::at(&root).memory().unwrap().unwrap();
    assert_eq!(
        mem.dir,
        root.join("sys/fs/cgroup/work.slice/train.slice/run-42.scope")
    );
}

#[test]
fn cpu_quota_table() {
    let cases: &[(&str, Option<f64>)] = &[
        ("v1-unlimited", None),
        ("v1-limited", Some(1.5)),
        ("v2-unlimited", None),
        ("v2-limited", Some(2.0)),
        ("v2-nested", Some(4.0)),
        ("none", None),
    ];
    for &(name, want) in cases {
        assert_eq!(
            Cgroups::at(fixture(name)).cpu_quota_cores().unwrap(),
            want,
            "{name}"
        );
    }
}

#[test]
fn no_cgroup_mount_means_no_controller() {
    assert_eq!(Cgroups::at(fixture("none")).memory().unwrap(), None);
    assert_eq!(
        Cgroups::at(fixture("does-not-exist")).memory().unwrap(),
        None
    );
}

#[test]
fn a_corrupt_limit_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let copy = |rel: &str, text: &str| {
        let p = dir.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    copy("proc/self/cgroup", "0::/\n");
    copy(
        "proc/self/mountinfo",
        "500 400 0:30 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
    );
    copy("sys/fs/cgroup/memory.max", "lots\n");
    let err = Cgroups::at(dir.path()).memory().unwrap_err().to_string();
    assert!(err.contains("memory.max") && err.contains("lots"), "{err}");
}

#[test]
fn the_live_system_parses() {
    // Whatever this machine is, reading it must not fail.
    let mem = Cgroups::system().memory().unwrap();
    if let Some(m) = mem {
        assert!(m.limit_bytes.is_none_or(|l| l > 0));
    }
}
