//! Configuration files: TOML read strictly, with `--set KEY=VALUE` overrides, and every
//! error located as `FILE:LINE:COL` (or at the `--set` argument that caused it).
//!
//! The file is parsed into toml's spanned document tree; overrides are parsed as TOML
//! values and grafted into that tree with spans past the end of the file, so one serde
//! pass checks file and overrides together and each error still points at its source.

pub(crate) mod schema;

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeString, DeTable, DeValue};

pub(crate) use schema::AnyConfig;

/// Where in the input an error is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Location {
    /// A line and column (1-based, columns in characters) in the file.
    File {
        path: PathBuf,
        line: usize,
        col: usize,
    },
    /// A column in one `--set` argument.
    Override { arg: String, col: usize },
}

/// A configuration the user must fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConfigError {
    pub(crate) location: Location,
    pub(crate) message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.location {
            Location::File { path, line, col } => {
                write!(f, "{}:{line}:{col}: {}", path.display(), self.message)
            }
            Location::Override { arg, col } => {
                write!(f, "--set {arg} (column {col}): {}", self.message)
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// A configuration's text and the overrides to apply to it.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    path: PathBuf,
    text: String,
    overrides: Vec<String>,
    /// Each override as a one-key TOML document `v=VALUE`, indented so that VALUE sits
    /// at its offset in the virtual input and the parser's spans land there.
    padded_values: Vec<String>,
}

impl Source {
    /// Reads `path`. A missing or unreadable file is reported at line 1, column 1.
    pub(crate) fn read(path: &Path, overrides: &[String]) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            location: Location::File {
                path: path.to_path_buf(),
                line: 1,
                col: 1,
            },
            message: format!("cannot read this file: {e}"),
        })?;
        Ok(Self::new(path, text, overrides))
    }

    /// A configuration held in memory (a built-in preset), named `path` in errors.
    pub(crate) fn new(
        path: impl Into<PathBuf>,
        text: impl Into<String>,
        overrides: &[String],
    ) -> Self {
        let text = text.into();
        let mut start = text.len() + 1;
        let mut padded_values = Vec::with_capacity(overrides.len());
        for arg in overrides {
            let (value_start, value) = match arg.find('=') {
                Some(eq) => (start + eq + 1, &arg[eq + 1..]),
                None => (start + arg.len(), ""),
            };
            // value_start >= 2 always: the key before `=` is at least one character.
            padded_values.push(format!(
                "{:pad$}v={value}",
                "",
                pad = value_start.saturating_sub(2)
            ));
            start += arg.len() + 1;
        }
        Self {
            path: path.into(),
            text,
            overrides: overrides.to_vec(),
            padded_values,
        }
    }

    /// The virtual input is the file, a newline, then each override and a newline;
    /// spans index into it.
    fn locate(&self, pos: usize) -> Location {
        if pos <= self.text.len() {
            let before = &self.text[..floor_char_boundary(&self.text, pos)];
            let line = before.matches('\n').count() + 1;
            let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            return Location::File {
                path: self.path.clone(),
                line,
                col,
            };
        }
        let mut start = self.text.len() + 1;
        for arg in &self.overrides {
            if pos <= start + arg.len() {
                let rel = pos.saturating_sub(start).min(arg.len());
                let col = arg[..floor_char_boundary(arg, rel)].chars().count() + 1;
                return Location::Override {
                    arg: arg.clone(),
                    col,
                };
            }
            start += arg.len() + 1;
        }
        Location::File {
            path: self.path.clone(),
            line: self.text.matches('\n').count() + 1,
            col: 1,
        }
    }

    fn error_at(&self, span: Option<Range<usize>>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            location: self.locate(span.map_or(0, |s| s.start)),
            message: message.into(),
        }
    }

    fn toml_error(&self, e: &toml::de::Error) -> ConfigError {
        self.error_at(e.span(), e.message().trim_end().to_owned())
    }

    /// Parses the file and applies the overrides.
    pub(crate) fn document(&self) -> Result<Document<'_>, ConfigError> {
        let mut root = DeTable::parse(&self.text).map_err(|e| self.toml_error(&e))?;
        let mut start = self.text.len() + 1;
        for (arg, padded) in self.overrides.iter().zip(&self.padded_values) {
            apply_override(&mut root, arg, start, padded)
                .map_err(|(span, msg)| self.error_at(Some(span), msg))?;
            start += arg.len() + 1;
        }
        Ok(Document { source: self, root })
    }
}

/// A parsed configuration, overrides applied, not yet checked against a schema.
pub(crate) struct Document<'a> {
    source: &'a Source,
    root: Spanned<DeTable<'a>>,
}

impl<'a> Document<'a> {
    /// The value at a dotted key path, with its span.
    pub(crate) fn get(&self, path: &[&str]) -> Option<&Spanned<DeValue<'a>>> {
        let (last, parents) = path.split_last()?;
        let mut table = self.root.get_ref();
        for key in parents {
            match table.get(*key)?.get_ref() {
                DeValue::Table(t) => table = t,
                _ => return None,
            }
        }
        table.get(*last)
    }

    /// An error pointing at the value of `path`, or at the innermost table present.
    pub(crate) fn error_at_key(&self, path: &[&str], message: impl Into<String>) -> ConfigError {
        let span = (0..=path.len())
            .rev()
            .find_map(|n| self.get(&path[..n]).map(Spanned::span))
            .or(Some(0..0));
        self.source.error_at(span, message)
    }

    /// Checks the document against `T`: unknown keys, wrong types, missing keys.
    pub(crate) fn deserialize<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        let de = toml::de::Deserializer::from(self.root.clone());
        T::deserialize(de).map_err(|e| self.source.toml_error(&e))
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

type OverrideError = (Range<usize>, String);

/// Grafts `KEY.PATH=VALUE` (with `arg` starting at virtual offset `start`) into `root`.
/// A value that is not valid TOML is taken as a string, so `--set device=gpu` works.
fn apply_override<'a>(
    root: &mut Spanned<DeTable<'a>>,
    arg: &str,
    start: usize,
    padded_value: &'a str,
) -> Result<(), OverrideError> {
    let whole = start..start + arg.len();
    let Some(eq) = arg.find('=') else {
        return Err((
            whole,
            "expected KEY=VALUE, e.g. `--set compute.batch_size=64`".into(),
        ));
    };
    let (key, raw_value) = (&arg[..eq], &arg[eq + 1..]);
    let mut segments = Vec::new();
    let mut at = start;
    for segment in key.split('.') {
        let span = at..at + segment.len();
        let trimmed = segment.trim();
        if trimmed.is_empty()
            || !trimmed
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err((
                span,
                format!("`{key}` is not a key path (use names like compute.batch_size)"),
            ));
        }
        segments.push((trimmed.to_owned(), span));
        at += segment.len() + 1;
    }

    let value_start = start + eq + 1;
    let parsed = DeTable::parse(padded_value)
        .ok()
        .map(Spanned::into_inner)
        .filter(|t| t.len() == 1 && !raw_value.trim().is_empty())
        .and_then(|mut t| t.remove("v"));
    let value = parsed.unwrap_or_else(|| {
        Spanned::new(
            value_start..value_start + raw_value.len(),
            DeValue::String(raw_value.to_owned().into()),
        )
    });

    let (last, parents) = segments
        .split_last()
        .expect("split yields at least one segment");
    let mut table = root.get_mut();
    let mut walked = Vec::new();
    for (name, span) in parents {
        walked.push(name.as_str());
        let entry = table
            .entry(Spanned::new(span.clone(), DeString::Owned(name.clone())))
            .or_insert_with(|| Spanned::new(span.clone(), DeValue::Table(DeTable::default())));
        match entry.get_mut() {
            DeValue::Table(t) => table = t,
            other => {
                return Err((
                    span.clone(),
                    format!(
                        "`{}` is a {}, not a table",
                        walked.join("."),
                        other.type_str()
                    ),
                ));
            }
        }
    }
    table.insert(
        Spanned::new(last.1.clone(), DeString::Owned(last.0.clone())),
        value,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn file_location(loc: Location) -> (usize, usize) {
        match loc {
            Location::File { line, col, .. } => (line, col),
            other => panic!("expected a file location, got {other:?}"),
        }
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        let src = Source::new("f.toml", "a = \"é\"\nbé = 1\n", &[]);
        assert_eq!(file_location(src.locate(0)), (1, 1));
        assert_eq!(file_location(src.locate(9)), (2, 1));
        // 'b' then the two-byte 'é', then the space: the third character.
        assert_eq!(file_location(src.locate(12)), (2, 3));
    }

    #[test]
    fn positions_past_the_file_belong_to_overrides() {
        let src = Source::new("f.toml", "x = 1\n", &["a.b=1".into(), "c=zz".into()]);
        let start_second = 6 + 1 + 5 + 1;
        assert_eq!(
            src.locate(start_second + 2),
            Location::Override {
                arg: "c=zz".into(),
                col: 3
            }
        );
        assert_eq!(
            src.locate(7),
            Location::Override {
                arg: "a.b=1".into(),
                col: 1
            }
        );
    }

    #[test]
    fn overrides_create_missing_tables_and_replace_values() {
        let src = Source::new(
            "f.toml",
            "[a]\nb = 1\n",
            &["a.b=2".into(), "x.y.z=\"s\"".into(), "w=plain text".into()],
        );
        let doc = src.document().unwrap();
        assert_eq!(
            doc.get(&["a", "b"])
                .unwrap()
                .get_ref()
                .as_integer()
                .unwrap()
                .as_str(),
            "2"
        );
        assert_eq!(
            doc.get(&["x", "y", "z"]).unwrap().get_ref().as_str(),
            Some("s")
        );
        assert_eq!(
            doc.get(&["w"]).unwrap().get_ref().as_str(),
            Some("plain text")
        );
    }

    #[test]
    fn an_override_cannot_smuggle_in_other_keys() {
        let src = Source::new("f.toml", "", &["a=1\nb=2".into()]);
        let doc = src.document().unwrap();
        // Not a single TOML value, so it is taken as the literal string.
        assert_eq!(doc.get(&["a"]).unwrap().get_ref().as_str(), Some("1\nb=2"));
        assert!(doc.get(&["b"]).is_none());
    }

    proptest! {
        /// Every position maps to a line and column from which the position can be
        /// recomputed: no off-by-one at line ends, none with multi-byte characters.
        #[test]
        fn locate_inverts_line_and_column(lines in prop::collection::vec("[a-zé= \"ü1]{0,12}", 1..8), pick in any::<prop::sample::Index>()) {
            let text = lines.join("\n");
            let boundaries: Vec<usize> = (0..=text.len()).filter(|&i| text.is_char_boundary(i)).collect();
            let pos = boundaries[pick.index(boundaries.len())];
            let src = Source::new("f.toml", text.clone(), &[]);
            let (line, col) = file_location(src.locate(pos));
            let line_start: usize = text.split('\n').take(line - 1).map(|l| l.len() + 1).sum();
            let back = line_start + text[line_start..].chars().take(col - 1).map(char::len_utf8).sum::<usize>();
            prop_assert_eq!(back, pos);
        }
    }
}
