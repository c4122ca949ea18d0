//! What was typed: clap definitions only, no logic.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use frugal_hw::{Tier, Workload};

/// Big machine-learning and simulation work on modest hardware.
#[derive(Debug, Parser)]
#[command(name = "frugal", version, about, propagate_version = true)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Report this machine: CPU, memory budget, disk, GPUs, compute tier and presets.
    Probe(ProbeArgs),
    /// Check and inspect configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Debug, Args)]
pub(crate) struct ProbeArgs {
    /// Print JSON (keys documented in docs/probe.md) instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
    /// Measure free space (and benchmark) the disk holding this directory.
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub(crate) path: PathBuf,
    /// Measure the sequential read rate of the disk, page cache bypassed.
    #[arg(long)]
    pub(crate) disk_bench: bool,
    /// Size of the disk benchmark's temporary file (e.g. 512MiB, 4GiB).
    #[arg(long, value_name = "BYTES", default_value = "1GiB", value_parser = parse_bytes)]
    pub(crate) disk_bench_size: u64,
    #[command(flatten)]
    pub(crate) presets: PresetDirArg,
}

#[derive(Debug, Args)]
pub(crate) struct PresetDirArg {
    /// A directory of presets (WORKLOAD/TIER.toml) that override the built-in ones.
    /// Default: $FRUGAL_PRESETS_DIR, else ~/.config/frugal/presets.
    #[arg(long = "presets", value_name = "DIR")]
    pub(crate) dir: Option<PathBuf>,
}

/// A configuration file and overrides of its keys: shared by every command that takes one.
#[derive(Debug, Args)]
pub(crate) struct ConfigArgs {
    /// The TOML configuration file.
    #[arg(value_name = "FILE")]
    pub(crate) file: PathBuf,
    /// Override a key, e.g. `--set compute.batch_size=64` (repeatable; unquoted text
    /// that is not a TOML value is taken as a string).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub(crate) set: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
    /// Check a configuration: unknown keys, wrong types and bad values are reported as
    /// FILE:LINE:COL, exit code 2.
    Check {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Print a configuration with overrides applied and defaults filled in.
    Show {
        #[command(flatten)]
        config: ConfigArgs,
        /// Print JSON instead of TOML.
        #[arg(long)]
        json: bool,
    },
    /// Print the preset for a workload: a starting point for your own configuration.
    Preset {
        /// The workload family.
        #[arg(value_parser = parse_workload)]
        workload: Workload,
        /// The tier to pick for (e.g. TIER_1_COMMODITY); default: this machine's.
        #[arg(long, value_parser = parse_tier)]
        tier: Option<Tier>,
        #[command(flatten)]
        presets: PresetDirArg,
    },
}

fn parse_bytes(s: &str) -> Result<u64, String> {
    frugal_hw::units::parse_bytes(s)
}

fn parse_workload(s: &str) -> Result<Workload, String> {
    s.parse()
}

fn parse_tier(s: &str) -> Result<Tier, String> {
    s.parse()
}
