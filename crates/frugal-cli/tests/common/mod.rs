//! Shared by the CLI test binaries.

use assert_cmd::Command;

/// The real `frugal` binary, with presets from the repository alone, whatever the
/// developer running the tests has configured.
pub(crate) fn frugal() -> Command {
    let mut cmd = Command::cargo_bin("frugal").unwrap();
    cmd.env("FRUGAL_PRESETS_DIR", "/nonexistent/frugal-presets");
    cmd
}
