use std::io::Write;

use anyhow::{Context, Result};
use frugal_hw::Tier;

use crate::args::{ConfigArgs, ConfigCommand};
use crate::config::{AnyConfig, Source};
use crate::presets;

/// Reads, overrides and checks a workload configuration.
pub(crate) fn load(args: &ConfigArgs) -> Result<AnyConfig> {
    let source = Source::read(&args.file, &args.set)?;
    Ok(AnyConfig::from_document(&source.document()?)?)
}

pub(crate) fn run(command: ConfigCommand, out: &mut dyn Write) -> Result<()> {
    match command {
        ConfigCommand::Check { config } => {
            let parsed = load(&config)?;
            writeln!(
                out,
                "{}: ok ({} workload, output in {})",
                config.file.display(),
                parsed.workload(),
                parsed.output_dir().display()
            )?;
        }
        ConfigCommand::Show { config, json } => {
            let parsed = load(&config)?;
            if json {
                super::print_json(out, &parsed)?;
            } else {
                write!(out, "{}", toml::to_string_pretty(&parsed)?)?;
            }
        }
        ConfigCommand::Preset {
            workload,
            tier,
            presets: dir,
        } => {
            let tier = match tier {
                Some(t) => t,
                None => machine_tier()?,
            };
            let chosen = presets::resolve(
                workload,
                tier,
                presets::user_dir(dir.dir.as_deref()).as_deref(),
            )?;
            // Check it before handing it out: a broken user preset is reported, not copied.
            presets::parse(&chosen)?;
            write!(out, "{}", chosen.text)?;
        }
    }
    Ok(())
}

pub(crate) fn machine_tier() -> Result<Tier> {
    let report =
        frugal_hw::probe(&frugal_hw::ProbeOptions::default()).context("probing this machine")?;
    Ok(report.tier.tier)
}
