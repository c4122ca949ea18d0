pub(crate) mod bench;
pub(crate) mod config;
pub(crate) mod data;
pub(crate) mod eqprop;
pub(crate) mod evolve;
pub(crate) mod farm;
pub(crate) mod nbody;
pub(crate) mod nbody_scale;
pub(crate) mod operator;
pub(crate) mod plan;
pub(crate) mod probe;
pub(crate) mod setup;
pub(crate) mod train;
pub(crate) mod workloads;

/// Writes `value` as pretty JSON and a newline: every command's `--json` output.
pub(crate) fn print_json(
    out: &mut dyn std::io::Write,
    value: &impl serde::Serialize,
) -> anyhow::Result<()> {
    serde_json::to_writer_pretty(&mut *out, value)?;
    writeln!(out)?;
    Ok(())
}

/// Input the user must fix (a value, a file, a job kind): exits 2.
#[derive(Debug)]
pub(crate) struct UserError(pub(crate) String);

impl std::fmt::Display for UserError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UserError {}
