//! Flat binary files: nothing but the elements, their layout given by the user.
//!
//! Programs outside Python keep arrays this way: `a.astype(np.float32).tofile(path)`, a C
//! `fwrite`, a Fortran stream write. A file holds one column; its layout is named in a
//! spec `NAME=FILE:DTYPE[:SHAPE][:ORDER][:ENDIAN]`, e.g. `x=images.bin:f32:3072:column-major`
//! or `y=labels.bin:i32`:
//!
//! - `SHAPE` is one sample's shape, `3072` or `32x32x3` (default: one element per sample);
//!   the number of samples is the file's size divided by a sample's.
//! - `ORDER` is `row-major` (the default: sample after sample, as `a.tofile()` writes an
//!   `(n, …)` array) or `column-major` (the sample index varies fastest: the
//!   `features × samples` file `a.T.tofile()` writes, which a Fortran program reads as
//!   `x(n_samples, n_features)`). A column-major file is transposed a block of samples at
//!   a time, so memory stays one block whatever the file's size.
//! - `ENDIAN` is `le` (the default) or `be`.
//!
//! A column-major file and a Fortran-order `.npy` of the same array import to the same
//! shards.

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::npy::{NpyHeader, Source, plan, write_dataset};
use super::provenance;
use crate::dtype::DType;
use crate::error::{Result, StoreError};
use crate::manifest::Manifest;
use crate::writer::WriterOptions;

/// How a flat file orders its elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawOrder {
    /// Sample after sample (C order of the `samples × …` array).
    RowMajor,
    /// The sample index varies fastest (Fortran order of the `samples × …` array).
    ColumnMajor,
}

impl fmt::Display for RawOrder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RawOrder::RowMajor => "row-major",
            RawOrder::ColumnMajor => "column-major",
        })
    }
}

/// One column read from a flat binary file, and how the file lays it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawColumn {
    /// The column's name in the dataset.
    pub name: String,
    /// The file.
    pub path: PathBuf,
    /// Element type.
    pub dtype: DType,
    /// One sample's shape; empty for one element per sample.
    pub shape: Vec<usize>,
    /// Element order.
    pub order: RawOrder,
    /// True when elements are stored big-endian.
    pub big_endian: bool,
}

impl FromStr for RawColumn {
    type Err = String;

    /// Parses `NAME=FILE:DTYPE[:SHAPE][:ORDER][:ENDIAN]`. The layout fields are read from
    /// the right, so a path may itself contain `:`.
    fn from_str(spec: &str) -> std::result::Result<Self, String> {
        const FORM: &str = "expected NAME=FILE:DTYPE[:SHAPE][:ORDER][:ENDIAN], e.g. x=images.bin:f32:3072:column-major";
        let Some((name, rest)) = spec.split_once('=') else {
            return Err(format!("`{spec}`: no `=`; {FORM}"));
        };
        if name.is_empty() {
            return Err(format!("`{spec}`: the column name is empty; {FORM}"));
        }
        let mut fields: Vec<&str> = rest.split(':').collect();
        let (mut dtype, mut shape, mut order, mut endian) = (None, None, None, None);
        while fields.len() > 1 {
            let field = fields[fields.len() - 1];
            let lower = field.to_ascii_lowercase();
            match lower.as_str() {
                "row-major" | "c" if order.is_none() && dtype.is_none() => {
                    order = Some(RawOrder::RowMajor)
                }
                "column-major" | "fortran" if order.is_none() && dtype.is_none() => {
                    order = Some(RawOrder::ColumnMajor)
                }
                "le" | "be" if endian.is_none() && order.is_none() && dtype.is_none() => {
                    endian = Some(lower == "be")
                }
                _ if dtype.is_none()
                    && shape.is_none()
                    && !field.is_empty()
                    && field.bytes().all(|b| b.is_ascii_digit() || b == b'x') =>
                {
                    let dims = field
                        .split('x')
                        .map(|d| d.parse::<usize>().ok().filter(|&d| d > 0))
                        .collect::<Option<Vec<_>>>()
                        .ok_or_else(|| {
                            format!(
                                "`{spec}`: shape `{field}` is not positive whole numbers joined by `x` (e.g. 32x32x3)"
                            )
                        })?;
                    shape = Some(dims);
                }
                _ if dtype.is_none() => match field.parse::<DType>() {
                    Ok(d) => dtype = Some(d),
                    Err(e) => return Err(format!("`{spec}`: `{field}`: {e}; {FORM}")),
                },
                _ => break,
            }
            fields.pop();
        }
        let Some(dtype) = dtype else {
            return Err(format!("`{spec}`: no element type; {FORM}"));
        };
        let path = fields.join(":");
        if path.is_empty() {
            return Err(format!("`{spec}`: the file is empty; {FORM}"));
        }
        Ok(RawColumn {
            name: name.to_owned(),
            path: PathBuf::from(path),
            dtype,
            shape: shape.unwrap_or_default(),
            order: order.unwrap_or(RawOrder::RowMajor),
            big_endian: endian.unwrap_or(false),
        })
    }
}

impl RawColumn {
    /// The header an `.npy` file of this array would have, from the file's size.
    fn header(&self, file_bytes: u64) -> Result<NpyHeader> {
        let bad = |m: String| StoreError::import(&self.path, m);
        let per_sample = self.shape.iter().try_fold(self.dtype.size(), |a, &d| {
            a.checked_mul(d).filter(|&b| b <= isize::MAX as usize)
        });
        let Some(per_sample) = per_sample else {
            return Err(bad(format!("sample shape {:?} is too large", self.shape)));
        };
        if file_bytes == 0 {
            return Err(bad("is empty".into()));
        }
        if !file_bytes.is_multiple_of(per_sample as u64) {
            return Err(bad(format!(
                "holds {file_bytes} bytes, not a whole number of {per_sample}-byte samples ({} × {:?}); check the dtype and shape given for column `{}`",
                self.dtype, self.shape, self.name
            )));
        }
        let rows = file_bytes / per_sample as u64;
        let rows = usize::try_from(rows).map_err(|_| {
            bad(format!(
                "holds {rows} samples, more than this machine can count"
            ))
        })?;
        let mut shape = vec![rows];
        shape.extend_from_slice(&self.shape);
        Ok(NpyHeader {
            version: (1, 0),
            dtype: self.dtype,
            big_endian: self.big_endian && self.dtype.size() > 1,
            shape,
            data_offset: 0,
            data_bytes: file_bytes,
            fortran_order: self.order == RawOrder::ColumnMajor,
        })
    }
}

/// Imports flat binary files as the columns of a new dataset in `out`, one file per
/// column, each with its layout. All files must hold the same number of samples. A
/// column-major file is transposed a block at a time; nothing is read whole. An
/// interrupted import resumes as the other importers do.
pub fn import_raw(columns: &[RawColumn], out: &Path, options: WriterOptions) -> Result<Manifest> {
    if columns.is_empty() {
        return Err(StoreError::Setting {
            setting: "raw columns",
            value: "none".into(),
            problem: "name at least one column, e.g. --column x=images.bin:f32:3072".into(),
        });
    }
    let mut sources = Vec::with_capacity(columns.len());
    for column in columns {
        let path = &column.path;
        let file = File::open(path).map_err(|e| StoreError::io(path, e))?;
        let len = file.metadata().map_err(|e| StoreError::io(path, e))?.len();
        sources.push(Source::file(path, file, column.header(len)?));
    }
    let (rows, schema) = plan(
        columns
            .iter()
            .zip(&sources)
            .map(|(c, s)| (c.name.as_str(), &s.origin, &s.header)),
    )?;
    let files: serde_json::Map<String, serde_json::Value> = columns
        .iter()
        .map(|c| {
            (
                c.name.clone(),
                serde_json::json!({
                    "file": provenance(&c.path),
                    "dtype": c.dtype.to_string(),
                    "shape": c.shape,
                    "order": c.order.to_string(),
                    "endian": if c.big_endian { "be" } else { "le" },
                }),
            )
        })
        .collect();
    let source = serde_json::json!({ "format": "raw", "columns": files });
    write_dataset(out, schema, rows, &mut sources, options, source)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> RawColumn {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn specs_parse_from_the_right() {
        let c = spec("x=images.bin:f32:3072:column-major");
        assert_eq!(
            c,
            RawColumn {
                name: "x".into(),
                path: "images.bin".into(),
                dtype: DType::F32,
                shape: vec![3072],
                order: RawOrder::ColumnMajor,
                big_endian: false,
            }
        );
        let c = spec("y=labels.bin:i32");
        assert_eq!(
            (c.dtype, c.shape.len(), c.order),
            (DType::I32, 0, RawOrder::RowMajor)
        );
        let c = spec("img=C:/data/a:b.bin:u16:32x32x3:row-major:be");
        assert_eq!(c.path, PathBuf::from("C:/data/a:b.bin"));
        assert_eq!(c.shape, vec![32, 32, 3]);
        assert!(c.big_endian);
        assert_eq!(spec("x=a.bin:f16:fortran").order, RawOrder::ColumnMajor);
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        for (s, says) in [
            ("images.bin:f32", "no `=`"),
            ("=images.bin:f32", "name is empty"),
            ("x=images.bin", "no element type"),
            ("x=images.bin:3072", "no element type"),
            ("x=images.bin:float:3072", "unknown dtype `float`"),
            ("x=images.bin:f32:32x0", "shape `32x0`"),
            ("x=images.bin:f32:3072:sideways", "unknown dtype `sideways`"),
            ("x=:f32", "file is empty"),
        ] {
            let e = s.parse::<RawColumn>().unwrap_err();
            assert!(e.contains(says), "{s}: {e}");
        }
    }

    #[test]
    fn a_size_that_is_not_whole_samples_is_refused() {
        let c = spec("x=a.bin:f32:10");
        let e = c.header(41 * 4).unwrap_err().to_string();
        assert!(
            e.contains("164 bytes") && e.contains("40-byte samples"),
            "{e}"
        );
        assert!(c.header(0).unwrap_err().to_string().contains("is empty"));
        let h = c.header(40 * 7).unwrap();
        assert_eq!(h.shape, vec![7, 10]);
    }
}
