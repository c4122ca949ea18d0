pub(crate) mod config;
pub(crate) mod data;
pub(crate) mod nbody;
pub(crate) mod nbody_scale;
pub(crate) mod plan;
pub(crate) mod probe;
pub(crate) mod train;

/// Writes `value` as pretty JSON and a newline: every command's `--json` output.
pub(crate) fn print_json(
    out: &mut dyn std::io::Write,
    value: &impl serde::Serialize,
) -> anyhow::Result<()> {
    serde_json::to_writer_pretty(&mut *out, value)?;
    writeln!(out)?;
    Ok(())
}
