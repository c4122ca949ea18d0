//! `manifest.json`: what a dataset holds and how to check it.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::dtype::DType;
use crate::error::{Result, StoreError};
use crate::fsutil;

/// The manifest's file name inside a dataset directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The value of the manifest's `format` key.
pub(crate) const FORMAT_NAME: &str = "frugal-store";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// One named column: every sample has one value of `shape` elements of `dtype`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Column {
    /// Column name; also the tensor name in each shard.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Per-sample shape (empty for a scalar per sample).
    pub shape: Vec<usize>,
}

impl Column {
    /// A column.
    pub fn new(name: impl Into<String>, dtype: DType, shape: impl Into<Vec<usize>>) -> Self {
        Self {
            name: name.into(),
            dtype,
            shape: shape.into(),
        }
    }

    /// Elements per sample.
    pub fn elements(&self) -> usize {
        self.shape.iter().product()
    }

    /// Bytes per sample.
    pub fn sample_bytes(&self) -> usize {
        self.elements() * self.dtype.size()
    }
}

/// The columns of a dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schema {
    /// Columns in the order samples are given to a writer.
    pub columns: Vec<Column>,
}

impl Schema {
    /// A schema; names must be unique and non-empty.
    pub fn new(columns: Vec<Column>) -> Result<Self> {
        let schema = Self { columns };
        schema.validate().map_err(|problem| StoreError::Setting {
            setting: "schema",
            value: format!("{} columns", schema.columns.len()),
            problem,
        })?;
        Ok(schema)
    }

    /// Bytes of one sample across all columns.
    pub fn sample_bytes(&self) -> usize {
        self.columns.iter().map(Column::sample_bytes).sum()
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.columns.is_empty() {
            return Err("the schema has no columns".into());
        }
        let mut seen = HashSet::new();
        for c in &self.columns {
            if c.name.is_empty() || c.name == "__metadata__" {
                return Err(format!("`{}` is not a valid column name", c.name));
            }
            if !seen.insert(&c.name) {
                return Err(format!("column `{}` appears twice", c.name));
            }
            if c.shape.contains(&0) {
                return Err(format!("column `{}` has a zero dimension", c.name));
            }
            let elements = c
                .shape
                .iter()
                .try_fold(1usize, |acc, &d| acc.checked_mul(d))
                .and_then(|e| e.checked_mul(c.dtype.size()));
            if elements.is_none_or(|b| b > 1 << 40) {
                return Err(format!("column `{}` has an absurd shape", c.name));
            }
        }
        Ok(())
    }
}

/// One shard file as the manifest records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardEntry {
    /// File name inside the dataset directory (`shard-NNNNNN.safetensors`).
    pub file: String,
    /// Samples in the shard.
    pub samples: u64,
    /// File size in bytes.
    pub bytes: u64,
    /// `xxh3-64:` followed by 16 hex digits: the XXH3 64-bit hash of the whole file.
    pub checksum: String,
    /// Per column (by name), the wrapping sum over rows of XXH3-64 of the row's bytes
    /// seeded with the row index: order-independent, so a reader checks the data it
    /// streams, in any order, without a second pass over the file.
    pub column_checksums: BTreeMap<String, String>,
}

/// The file name of shard number `index`.
pub fn shard_file_name(index: u64) -> String {
    format!("shard-{index:06}.safetensors")
}

/// The shard number in a shard file name.
pub(crate) fn shard_index(file: &str) -> Option<u64> {
    let digits = file.strip_prefix("shard-")?.strip_suffix(".safetensors")?;
    if digits.len() < 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The contents of `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always `frugal-store`.
    pub format: String,
    /// Format version.
    pub version: u32,
    /// False while a writer is still adding shards.
    pub complete: bool,
    /// Column names, dtypes and per-sample shapes.
    pub schema: Schema,
    /// Sum of the shards' sample counts.
    pub samples: u64,
    /// Shards in dataset order.
    pub shards: Vec<ShardEntry>,
    /// Free-form provenance: generator, seed, source files.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, serde_json::Value>,
}

impl Manifest {
    /// An empty, incomplete manifest.
    pub fn new(schema: Schema) -> Self {
        Self {
            format: FORMAT_NAME.into(),
            version: FORMAT_VERSION,
            complete: false,
            schema,
            samples: 0,
            shards: Vec::new(),
            metadata: BTreeMap::new(),
        }
    }

    /// Total bytes of all shards.
    pub fn bytes(&self) -> u64 {
        self.shards.iter().map(|s| s.bytes).sum()
    }

    /// Sample counts of the shards, in order.
    pub fn shard_sizes(&self) -> Vec<u64> {
        self.shards.iter().map(|s| s.samples).collect()
    }

    /// Parses and checks a manifest; `path` is only used in messages.
    pub fn from_json(path: &Path, bytes: &[u8]) -> Result<Self> {
        let manifest: Manifest = serde_json::from_slice(bytes)
            .map_err(|e| StoreError::manifest(path, format!("not a valid manifest: {e}")))?;
        manifest
            .validate()
            .map_err(|m| StoreError::manifest(path, m))?;
        Ok(manifest)
    }

    /// Reads `DIR/manifest.json`.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(MANIFEST_FILE);
        let bytes = std::fs::read(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                StoreError::Directory {
                    dir: dir.to_owned(),
                    problem: format!("is not a dataset: it has no {MANIFEST_FILE}"),
                }
            } else {
                StoreError::io(&path, e)
            }
        })?;
        Self::from_json(&path, &bytes)
    }

    /// Writes the manifest to `path` atomically.
    pub fn save_to(&self, path: &Path) -> Result<()> {
        let mut json = serde_json::to_vec_pretty(self).expect("a manifest always serializes");
        json.push(b'\n');
        fsutil::atomic_write(path, &json)
    }

    /// Writes `DIR/manifest.json` atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        self.save_to(&dir.join(MANIFEST_FILE))
    }

    fn validate(&self) -> Result<(), String> {
        if self.format != FORMAT_NAME {
            return Err(format!(
                "format is `{}`, expected `{FORMAT_NAME}`",
                self.format
            ));
        }
        if self.version != FORMAT_VERSION {
            return Err(format!(
                "format version {} is not supported by this build (it reads version {FORMAT_VERSION}); upgrade frugal",
                self.version
            ));
        }
        self.schema.validate()?;
        let mut names = HashSet::new();
        let mut total = 0u64;
        for s in &self.shards {
            if shard_index(&s.file).is_none() {
                return Err(format!(
                    "shard file name `{}` is not of the form shard-NNNNNN.safetensors",
                    s.file
                ));
            }
            if !names.insert(&s.file) {
                return Err(format!("shard `{}` is listed twice", s.file));
            }
            if s.samples == 0 {
                return Err(format!("shard `{}` has no samples", s.file));
            }
            // A damaged count would make readers plan (and allocate) for samples that
            // cannot be in the file.
            if s.samples
                .checked_mul(self.schema.sample_bytes() as u64)
                .is_none_or(|b| b > s.bytes)
            {
                return Err(format!(
                    "shard `{}` cannot hold {} samples in {} bytes",
                    s.file, s.samples, s.bytes
                ));
            }
            if parse_checksum(&s.checksum).is_none() {
                return Err(format!(
                    "shard `{}` has checksum `{}`, expected xxh3-64: and 16 hex digits",
                    s.file, s.checksum
                ));
            }
            let names: Vec<&String> = s.column_checksums.keys().collect();
            let mut want: Vec<&String> = self.schema.columns.iter().map(|c| &c.name).collect();
            want.sort();
            if names != want
                || s.column_checksums
                    .values()
                    .any(|c| parse_checksum(c).is_none())
            {
                return Err(format!(
                    "shard `{}` needs one xxh3-64 column checksum per column",
                    s.file
                ));
            }
            total = total
                .checked_add(s.samples)
                .ok_or("sample counts overflow")?;
        }
        if total != self.samples {
            return Err(format!(
                "`samples` is {} but the shards hold {total}",
                self.samples
            ));
        }
        Ok(())
    }
}

/// Formats a checksum as the manifest stores it.
pub(crate) fn format_checksum(hash: u64) -> String {
    format!("xxh3-64:{hash:016x}")
}

/// Parses a manifest checksum.
pub(crate) fn parse_checksum(s: &str) -> Option<u64> {
    let hex = s.strip_prefix("xxh3-64:")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_names() {
        assert_eq!(shard_file_name(7), "shard-000007.safetensors");
        assert_eq!(shard_index("shard-000007.safetensors"), Some(7));
        assert_eq!(shard_index("shard-1234567.safetensors"), Some(1234567));
        assert_eq!(shard_index("shard-7.safetensors"), None);
        assert_eq!(shard_index("../shard-000001.safetensors"), None);
        assert_eq!(shard_index("shard-00000a.safetensors"), None);
    }

    #[test]
    fn checksums_round_trip() {
        assert_eq!(
            parse_checksum(&format_checksum(0xdead_beef)),
            Some(0xdead_beef)
        );
        assert_eq!(parse_checksum("sha256:00"), None);
        assert_eq!(parse_checksum("xxh3-64:123"), None);
    }

    #[test]
    fn rejects_bad_schemas() {
        assert!(Schema::new(vec![]).is_err());
        let x = Column::new("x", DType::F32, [2]);
        assert!(Schema::new(vec![x.clone(), x.clone()]).is_err());
        assert!(Schema::new(vec![Column::new("y", DType::U8, [0])]).is_err());
        assert!(Schema::new(vec![Column::new("__metadata__", DType::U8, [])]).is_err());
        assert!(Schema::new(vec![x]).is_ok());
    }
}
