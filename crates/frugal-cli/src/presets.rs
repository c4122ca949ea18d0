//! Built-in configuration presets, parsed with the workload schemas: for each workload
//! family, a configuration tuned for each compute tier. They are the TOML files under
//! `crates/frugal-cli/presets/WORKLOAD/TIER.toml`, compiled into the binary; a user
//! directory with the same layout overrides them.

use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use frugal_hw::Tier;
use serde::{Deserialize, Serialize};

use crate::config::{AnyConfig, ConfigError, Location, Source};

/// The preset directory: `--presets` (`given`), else the user's default one.
pub(crate) fn user_dir(given: Option<&Path>) -> Option<PathBuf> {
    given.map(Path::to_path_buf).or_else(default_user_dir)
}

/// Parses a preset as the workload configuration it is, and checks that it configures
/// the family it is filed under.
pub(crate) fn parse(preset: &Preset) -> Result<AnyConfig, ConfigError> {
    let name = preset.origin.path().to_path_buf();
    let source = Source::new(&name, preset.text.clone(), &[]);
    let config = AnyConfig::from_document(&source.document()?)?;
    if config.workload() != preset.workload {
        return Err(ConfigError {
            location: Location::File {
                path: name,
                line: 1,
                col: 1,
            },
            message: format!(
                "this preset is filed under `{}` but configures `{}`; move it or fix its `workload` key",
                preset.workload,
                config.workload()
            ),
        });
    }
    Ok(config)
}

/// The workload families frugal serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Workload {
    /// A classifier trained on a dataset far larger than RAM.
    Classifier,
    /// A graph-network surrogate of N-body particle dynamics.
    Particles,
    /// A genetic algorithm whose fitness is a benchmark run.
    Evolve,
    /// Rollouts of randomly drawn neural operators into a trajectory dataset.
    Operator,
    /// A looped transformer trained by equilibrium propagation.
    Eqprop,
}

impl Workload {
    /// Every family, in the order reports list them.
    pub(crate) const ALL: [Workload; 5] = [
        Workload::Classifier,
        Workload::Particles,
        Workload::Evolve,
        Workload::Operator,
        Workload::Eqprop,
    ];

    /// The name used in config files and paths.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Workload::Classifier => "classifier",
            Workload::Particles => "particles",
            Workload::Evolve => "evolve",
            Workload::Operator => "operator",
            Workload::Eqprop => "eqprop",
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Workload {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Workload::ALL
            .into_iter()
            .find(|w| w.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Workload::ALL.iter().map(|w| w.name()).collect();
                format!(
                    "unknown workload `{s}`; expected one of {}",
                    names.join(", ")
                )
            })
    }
}

/// Where a preset's text came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PresetOrigin {
    /// Compiled in; the path is where it lives in the source tree.
    Builtin(&'static str),
    /// A user's file.
    User(PathBuf),
}

impl PresetOrigin {
    /// The file: a source-tree path for a built-in preset, the user's path otherwise.
    pub(crate) fn path(&self) -> &Path {
        match self {
            PresetOrigin::Builtin(p) => Path::new(p),
            PresetOrigin::User(p) => p,
        }
    }

    /// Whether it is compiled in.
    pub(crate) fn is_builtin(&self) -> bool {
        matches!(self, PresetOrigin::Builtin(_))
    }
}

/// A preset chosen for a workload and tier, not yet parsed: the configuration schema
/// belongs to the program that runs the workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Preset {
    /// The family it configures.
    pub(crate) workload: Workload,
    /// The tier it was written for: the machine's tier, or the nearest one below it
    /// when the family has no preset of its own for that tier.
    pub(crate) tier: Tier,
    /// Its file.
    pub(crate) origin: PresetOrigin,
    /// Its TOML text.
    pub(crate) text: Cow<'static, str>,
}

macro_rules! builtin_presets {
    ($( $workload:ident / $tier:ident => $file:literal ),* $(,)?) => {
        /// Every compiled-in preset: (workload, tier, source path, text).
        pub(crate) const BUILTIN: &[(Workload, Tier, &str, &str)] = &[
            $( (
                Workload::$workload,
                Tier::$tier,
                concat!("crates/frugal-cli/presets/", $file),
                include_str!(concat!("../presets/", $file)),
            ), )*
        ];
    };
}

builtin_presets! {
    Classifier / CpuOnly => "classifier/cpu_only.toml",
    Classifier / Tier1Commodity => "classifier/tier_1_commodity.toml",
    Classifier / Tier2Prosumer => "classifier/tier_2_prosumer.toml",
    Classifier / Tier3HighEnd => "classifier/tier_3_high_end.toml",
    Classifier / Tier4Datacenter => "classifier/tier_4_datacenter.toml",
    Particles / CpuOnly => "particles/cpu_only.toml",
    Particles / Tier1Commodity => "particles/tier_1_commodity.toml",
    Particles / Tier2Prosumer => "particles/tier_2_prosumer.toml",
    Particles / Tier3HighEnd => "particles/tier_3_high_end.toml",
    Particles / Tier4Datacenter => "particles/tier_4_datacenter.toml",
    Evolve / CpuOnly => "evolve/cpu_only.toml",
    Operator / CpuOnly => "operator/cpu_only.toml",
    Operator / Tier1Commodity => "operator/tier_1_commodity.toml",
    Eqprop / CpuOnly => "eqprop/cpu_only.toml",
    Eqprop / Tier1Commodity => "eqprop/tier_1_commodity.toml",
    Eqprop / Tier2Prosumer => "eqprop/tier_2_prosumer.toml",
    Eqprop / Tier3HighEnd => "eqprop/tier_3_high_end.toml",
    Eqprop / Tier4Datacenter => "eqprop/tier_4_datacenter.toml",
}

/// The user's preset directory: `$FRUGAL_PRESETS_DIR`, else
/// `$XDG_CONFIG_HOME/frugal/presets`, else `~/.config/frugal/presets`.
pub(crate) fn default_user_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("FRUGAL_PRESETS_DIR") {
        return Some(PathBuf::from(dir));
    }
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(config.join("frugal").join("presets"))
}

/// Picks the preset for `workload` on a machine of `tier`.
///
/// For the tier itself and then each tier below it, a user file
/// `user_dir/WORKLOAD/TIER.toml` wins over the built-in one; the first found is used.
/// Every family has a `cpu_only` preset, so something is always found.
pub(crate) fn resolve(
    workload: Workload,
    tier: Tier,
    user_dir: Option<&Path>,
) -> anyhow::Result<Preset> {
    for candidate in Tier::ALL.into_iter().rev().filter(|t| *t <= tier) {
        if let Some(dir) = user_dir {
            let path = dir
                .join(workload.name())
                .join(format!("{}.toml", candidate.file_stem()));
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    return Ok(Preset {
                        workload,
                        tier: candidate,
                        origin: PresetOrigin::User(path),
                        text: Cow::Owned(text),
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(anyhow::Error::new(e)
                        .context(format!("reading the preset {}", path.display())));
                }
            }
        }
        if let Some(&(_, _, path, text)) = BUILTIN
            .iter()
            .find(|(w, t, _, _)| *w == workload && *t == candidate)
        {
            return Ok(Preset {
                workload,
                tier: candidate,
                origin: PresetOrigin::Builtin(path),
                text: Cow::Borrowed(text),
            });
        }
    }
    unreachable!("every workload ships a cpu_only preset (checked by a test)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_workload_has_a_cpu_only_preset() {
        for w in Workload::ALL {
            assert!(
                BUILTIN
                    .iter()
                    .any(|(bw, t, _, _)| *bw == w && *t == Tier::CpuOnly),
                "{w}"
            );
        }
    }

    #[test]
    fn every_preset_file_in_the_repo_is_compiled_in() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("presets");
        let mut on_disk = Vec::new();
        for family in std::fs::read_dir(&root).unwrap() {
            let family = family.unwrap().path();
            for file in std::fs::read_dir(&family).unwrap() {
                let file = file.unwrap().path();
                let rel = file
                    .strip_prefix(root.parent().unwrap().parent().unwrap().parent().unwrap())
                    .unwrap();
                on_disk.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
        on_disk.sort();
        let mut compiled: Vec<String> =
            BUILTIN.iter().map(|(_, _, p, _)| (*p).to_owned()).collect();
        compiled.sort();
        assert_eq!(on_disk, compiled);
        for (w, t, path, _) in BUILTIN {
            assert_eq!(
                *path,
                format!(
                    "crates/frugal-cli/presets/{}/{}.toml",
                    w.name(),
                    t.file_stem()
                )
            );
        }
    }

    #[test]
    fn falls_back_to_the_nearest_lower_tier() {
        let p = resolve(Workload::Evolve, Tier::Tier3HighEnd, None).unwrap();
        assert_eq!(p.tier, Tier::CpuOnly);
        let p = resolve(Workload::Classifier, Tier::Tier2Prosumer, None).unwrap();
        assert_eq!(p.tier, Tier::Tier2Prosumer);
        assert_eq!(
            p.origin,
            PresetOrigin::Builtin("crates/frugal-cli/presets/classifier/tier_2_prosumer.toml")
        );
    }

    #[test]
    fn a_user_file_overrides_the_builtin() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("classifier")).unwrap();
        let file = dir.path().join("classifier/tier_1_commodity.toml");
        std::fs::write(&file, "# mine\n").unwrap();
        // Asked for tier 2: the built-in tier 2 preset outranks the user's tier 1 one.
        let p = resolve(Workload::Classifier, Tier::Tier2Prosumer, Some(dir.path())).unwrap();
        assert!(matches!(p.origin, PresetOrigin::Builtin(_)));
        let p = resolve(Workload::Classifier, Tier::Tier1Commodity, Some(dir.path())).unwrap();
        assert_eq!(p.origin, PresetOrigin::User(file));
        assert_eq!(p.text, "# mine\n");
        // An empty user dir changes nothing.
        let empty = tempfile::tempdir().unwrap();
        let p = resolve(Workload::Particles, Tier::CpuOnly, Some(empty.path())).unwrap();
        assert!(matches!(p.origin, PresetOrigin::Builtin(_)));
    }
}
