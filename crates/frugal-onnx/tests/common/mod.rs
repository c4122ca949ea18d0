//! Shared by the integration tests of this crate.

use std::path::PathBuf;
use std::process::Command;

/// The repository's root, where `models/` and `scripts/` live.
#[allow(dead_code)] // not every test binary uses it
pub(crate) fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The damped-oscillator network `scripts/make_oscillator_onnx.py` writes.
#[allow(dead_code)]
pub(crate) fn oscillator_path() -> PathBuf {
    repo_root().join("models/oscillator.onnx")
}

/// Whether `python3` can import `modules` (comma-separated, as in an import statement).
/// Missing packages skip the test, with a note, unless FRUGAL_REQUIRE_PYTHON=1 (as in CI),
/// where they fail it.
#[allow(clippy::print_stderr, dead_code)] // a skipped test says why; not every test binary uses it
pub(crate) fn python_ready(modules: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", &format!("import {modules}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("FRUGAL_REQUIRE_PYTHON").as_deref() != Ok("1"),
            "FRUGAL_REQUIRE_PYTHON=1 but python3 cannot import {modules}"
        );
        eprintln!("skipped: python3 cannot import {modules}");
    }
    ok
}
