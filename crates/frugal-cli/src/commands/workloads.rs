//! `frugal train` and `frugal plan` on a configuration of any trainable workload: each
//! workload's setup, then the same training and planning for all.

use std::io::Write;

use anyhow::{Context, Result};

use super::{UserError, nbody, plan, setup, train};
use crate::args::{PlanArgs, TierChoice, TrainArgs};
use crate::config::{AnyConfig, Source};
use crate::presets;

/// `frugal train`.
pub(crate) fn train(mut args: TrainArgs, out: &mut dyn Write) -> Result<()> {
    if let Some(choice) = args.tier {
        let mut set = tier_overrides(&args, choice)?;
        set.append(&mut args.config.set);
        args.config.set = set;
    }
    match setup::load(&args.config)? {
        AnyConfig::Classifier(c) => train::train_setup(setup::classifier(&c)?, &args, out),
        AnyConfig::Particles(c) => train::train_setup(nbody::setup(&c)?, &args, out),
        AnyConfig::Eqprop(c) => train::train_setup(setup::eqprop(&c)?, &args, out),
        _ => unreachable!("setup::load refuses the other workloads"),
    }
}

/// `frugal plan`.
pub(crate) fn plan(args: PlanArgs, out: &mut dyn Write) -> Result<()> {
    if let Ok(config) = super::operator::load(&args.config) {
        return super::operator::plan(&config, &args, out);
    }
    match setup::load(&args.config)? {
        AnyConfig::Classifier(c) => plan::plan(setup::classifier(&c)?, &args, out),
        AnyConfig::Particles(c) => {
            let (setup, _stand_in) = nbody::plan_setup(&c)?;
            plan::plan(setup, &args, out)
        }
        AnyConfig::Eqprop(c) => plan::plan(setup::eqprop(&c)?, &args, out),
        _ => unreachable!("setup::load refuses the other workloads"),
    }
}

/// The `--set` overrides that size a run by its workload's preset for the tier chosen:
/// every key of the preset but the run's identity (`workload`, `output_dir`, `seed`) and
/// its data (`[data]`), which stay the file's.
fn tier_overrides(args: &TrainArgs, choice: TierChoice) -> Result<Vec<String>> {
    let (tier, why) = match choice {
        TierChoice::Auto => (super::config::machine_tier()?, "this machine's tier"),
        TierChoice::Named(t) => (t, "as asked"),
    };
    let source = Source::read(&args.config.file, &args.config.set)?;
    let workload = AnyConfig::from_document(&source.document()?)?.workload();
    let preset = presets::resolve(
        workload,
        tier,
        presets::user_dir(args.presets.dir.as_deref()).as_deref(),
    )?;
    presets::parse(&preset)?;
    let table: toml::Table = toml::from_str(&preset.text)
        .with_context(|| format!("reading the preset {}", preset.origin.path().display()))?;
    let mut set = Vec::new();
    flatten(&table, "", &mut set);
    writeln!(
        std::io::stderr().lock(),
        "sizing by the preset {} for {tier} ({why}{})",
        preset.origin.path().display(),
        if preset.tier == tier {
            String::new()
        } else {
            format!("; nearest below: {}", preset.tier)
        }
    )?;
    if set.is_empty() {
        return Err(UserError(format!(
            "the preset {} sets nothing to size the run by",
            preset.origin.path().display()
        ))
        .into());
    }
    Ok(set)
}

/// `key=value` for every leaf of `table` under `prefix`, skipping what a preset must not
/// change in someone's configuration.
fn flatten(table: &toml::Table, prefix: &str, set: &mut Vec<String>) {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        if matches!(path.as_str(), "workload" | "output_dir" | "seed" | "data") {
            continue;
        }
        match value {
            toml::Value::Table(t) => flatten(t, &path, set),
            v => set.push(format!("{path}={v}")),
        }
    }
}
