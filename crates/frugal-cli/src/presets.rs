//! Presets parsed with the workload schemas.

use std::path::PathBuf;

use frugal_hw::{Preset, preset};

use crate::args::PresetDirArg;
use crate::config::{AnyConfig, ConfigError, Location, Source};

/// The preset directory: `--presets`, else the user's default one.
pub(crate) fn user_dir(arg: &PresetDirArg) -> Option<PathBuf> {
    arg.dir.clone().or_else(preset::user_dir)
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
