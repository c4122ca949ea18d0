//! One shard: a safetensors file with one tensor per column, leading dimension = samples.
//!
//! The header is written by hand rather than through a serializer that needs every tensor
//! in memory at once, and parsed by hand so that a damaged header is an error naming the
//! shard, never a panic. Tensors are laid out widest dtype first, so each one starts at a
//! multiple of its element size (the header is padded to 8 bytes, as safetensors allows).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde_json::Value;
use xxhash_rust::xxh3::{Xxh3, xxh3_64_with_seed};

use crate::dtype::DType;
use crate::error::{Result, StoreError};
use crate::fsutil;
use crate::manifest::{Schema, ShardEntry, format_checksum};

/// safetensors refuses headers over 100 MB; so do we, before allocating.
const MAX_HEADER: u64 = 100_000_000;

/// Where each column's bytes are in a shard file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardLayout {
    /// Samples in the shard.
    pub samples: u64,
    /// Absolute file offset of each column's first byte, in schema order.
    pub column_offsets: Vec<u64>,
    /// Total file size.
    pub file_bytes: u64,
}

/// The order tensors are stored in: widest dtype first, schema order among equals.
fn storage_order(schema: &Schema) -> Vec<usize> {
    let mut order: Vec<usize> = (0..schema.columns.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(schema.columns[i].dtype.size()));
    order
}

/// The header bytes (length prefix included) and layout of a shard of `samples` samples.
pub fn encode_header(schema: &Schema, samples: u64) -> (Vec<u8>, ShardLayout) {
    let mut map = serde_json::Map::new();
    let mut meta = serde_json::Map::new();
    meta.insert("format".into(), Value::from("frugal-store"));
    map.insert("__metadata__".into(), Value::Object(meta));
    let mut relative = vec![0u64; schema.columns.len()];
    let mut offset = 0u64;
    for i in storage_order(schema) {
        let c = &schema.columns[i];
        let len = samples * c.sample_bytes() as u64;
        let mut shape = vec![Value::from(samples)];
        shape.extend(c.shape.iter().map(|&d| Value::from(d)));
        let mut t = serde_json::Map::new();
        t.insert("dtype".into(), Value::from(c.dtype.name()));
        t.insert("shape".into(), Value::Array(shape));
        t.insert(
            "data_offsets".into(),
            Value::Array(vec![offset.into(), (offset + len).into()]),
        );
        map.insert(c.name.clone(), Value::Object(t));
        relative[i] = offset;
        offset += len;
    }
    let mut json = serde_json::to_vec(&Value::Object(map)).expect("json");
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    let data_start = 8 + json.len() as u64;
    let mut bytes = Vec::with_capacity(json.len() + 8);
    bytes.extend_from_slice(&(json.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&json);
    let layout = ShardLayout {
        samples,
        column_offsets: relative.iter().map(|r| data_start + r).collect(),
        file_bytes: data_start + offset,
    };
    (bytes, layout)
}

/// A tensor as a shard header describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Element type.
    pub dtype: DType,
    /// Full shape, leading dimension included.
    pub shape: Vec<u64>,
    /// Byte range relative to the start of the data section.
    pub data_offsets: (u64, u64),
}

/// A parsed shard header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardHeader {
    /// Bytes before the data section (length prefix + JSON).
    pub data_start: u64,
    /// Tensors by name.
    pub tensors: BTreeMap<String, TensorInfo>,
}

/// A shard header that cannot be read, or that does not match the manifest. Each variant
/// carries the numbers or names at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// The length prefix announces more than any header may hold.
    #[error("header length {len} is absurd (limit {limit})")]
    Length {
        /// The announced length.
        len: u64,
        /// The largest header accepted.
        limit: u64,
    },
    /// The file is shorter than the header it announces.
    #[error("file is {file_bytes} bytes, too short for its {len}-byte header")]
    Short {
        /// The file's size.
        file_bytes: u64,
        /// The announced header length.
        len: u64,
    },
    /// The header is not JSON.
    #[error("header is not valid JSON: {0}")]
    Json(String),
    /// The header is JSON but not an object.
    #[error("header is not a JSON object")]
    NotObject,
    /// A tensor's entry is malformed.
    #[error("tensor `{name}`: {reason}")]
    Tensor {
        /// The tensor.
        name: String,
        /// What is wrong with its entry.
        reason: String,
    },
    /// The tensors leave a gap or overlap in the data section.
    #[error("tensor `{name}` starts at {start}, expected {expected} (gap or overlap)")]
    Gap {
        /// The tensor.
        name: String,
        /// Where it starts.
        start: u64,
        /// Where the previous one ended.
        expected: u64,
    },
    /// The tensors do not cover the data section exactly.
    #[error(
        "tensors cover {covered} bytes but the file has {data} bytes of data (truncated or padded)"
    )]
    Coverage {
        /// Bytes the tensors span.
        covered: u64,
        /// Bytes after the header.
        data: u64,
    },
    /// The shard has another number of tensors than the schema has columns.
    #[error("the shard holds {tensors} tensors, the schema has {columns} columns")]
    Columns {
        /// Tensors in the shard.
        tensors: usize,
        /// Columns in the schema.
        columns: usize,
    },
    /// A column of the schema has no tensor.
    #[error("no tensor `{0}`")]
    Missing(String),
    /// A tensor's element type differs from its column's.
    #[error("tensor `{name}` is {found}, the manifest says {manifest}")]
    Dtype {
        /// The tensor.
        name: String,
        /// Its type in the shard.
        found: DType,
        /// Its type in the manifest.
        manifest: DType,
    },
    /// A tensor's shape differs from its column's.
    #[error("tensor `{name}` has shape {found:?}, the manifest says {manifest:?}")]
    Shape {
        /// The tensor.
        name: String,
        /// Its shape in the shard.
        found: Vec<u64>,
        /// The shape the manifest implies.
        manifest: Vec<u64>,
    },
}

/// Reads the length prefix: how many header bytes follow it. Errors on a file too short
/// to hold the header it announces.
pub fn header_len(prefix: [u8; 8], file_bytes: u64) -> Result<u64, HeaderError> {
    let len = u64::from_le_bytes(prefix);
    if len > MAX_HEADER {
        return Err(HeaderError::Length {
            len,
            limit: MAX_HEADER,
        });
    }
    if file_bytes < 8 + len {
        return Err(HeaderError::Short { file_bytes, len });
    }
    Ok(len)
}

/// Parses a safetensors header (the JSON after the length prefix) and checks that its
/// tensors tile the data section of a file of `file_bytes` bytes exactly.
pub fn parse_header(json: &[u8], file_bytes: u64) -> Result<ShardHeader, HeaderError> {
    let data_start = 8 + json.len() as u64;
    let value: Value =
        serde_json::from_slice(json).map_err(|e| HeaderError::Json(e.to_string()))?;
    let Value::Object(map) = value else {
        return Err(HeaderError::NotObject);
    };
    let mut tensors = BTreeMap::new();
    for (name, t) in map {
        if name == "__metadata__" {
            continue;
        }
        let info = parse_tensor(&t).map_err(|reason| HeaderError::Tensor {
            name: name.clone(),
            reason,
        })?;
        tensors.insert(name, info);
    }
    let mut spans: Vec<(u64, u64, &str)> = tensors
        .iter()
        .map(|(n, t)| (t.data_offsets.0, t.data_offsets.1, n.as_str()))
        .collect();
    spans.sort_unstable();
    let mut cursor = 0u64;
    for (start, end, name) in spans {
        if start != cursor {
            return Err(HeaderError::Gap {
                name: name.to_owned(),
                start,
                expected: cursor,
            });
        }
        cursor = end;
    }
    let data_len = file_bytes
        .checked_sub(data_start)
        .ok_or(HeaderError::Short {
            file_bytes,
            len: json.len() as u64,
        })?;
    if cursor != data_len {
        return Err(HeaderError::Coverage {
            covered: cursor,
            data: data_len,
        });
    }
    Ok(ShardHeader {
        data_start,
        tensors,
    })
}

fn parse_tensor(t: &Value) -> Result<TensorInfo, String> {
    let dtype = t.get("dtype").and_then(Value::as_str).ok_or("no dtype")?;
    let dtype = DType::ALL
        .into_iter()
        .find(|d| d.name() == dtype)
        .ok_or_else(|| format!("unsupported dtype `{dtype}`"))?;
    let shape = t
        .get("shape")
        .and_then(Value::as_array)
        .ok_or("no shape")?
        .iter()
        .map(|d| {
            d.as_u64()
                .ok_or("shape entries must be non-negative integers")
        })
        .collect::<Result<Vec<u64>, _>>()?;
    let offsets = t
        .get("data_offsets")
        .and_then(Value::as_array)
        .ok_or("no data_offsets")?;
    let [Some(start), Some(end)] = [
        offsets.first().and_then(Value::as_u64),
        offsets.get(1).and_then(Value::as_u64),
    ] else {
        return Err("data_offsets must be two non-negative integers".into());
    };
    if offsets.len() != 2 || end < start {
        return Err(format!("data_offsets [{start}, {end}] are not a range"));
    }
    let bytes = shape
        .iter()
        .try_fold(dtype.size() as u64, |acc, &d| acc.checked_mul(d))
        .ok_or("shape overflows")?;
    if bytes != end - start {
        return Err(format!(
            "shape {shape:?} of {dtype} needs {bytes} bytes but data_offsets span {}",
            end - start
        ));
    }
    Ok(TensorInfo {
        dtype,
        shape,
        data_offsets: (start, end),
    })
}

impl ShardHeader {
    /// Checks the header against the schema and sample count the manifest gives.
    pub fn layout_for(
        &self,
        schema: &Schema,
        samples: u64,
        file_bytes: u64,
    ) -> Result<ShardLayout, HeaderError> {
        if self.tensors.len() != schema.columns.len() {
            return Err(HeaderError::Columns {
                tensors: self.tensors.len(),
                columns: schema.columns.len(),
            });
        }
        let mut column_offsets = Vec::with_capacity(schema.columns.len());
        for c in &schema.columns {
            let t = self
                .tensors
                .get(&c.name)
                .ok_or_else(|| HeaderError::Missing(c.name.clone()))?;
            if t.dtype != c.dtype {
                return Err(HeaderError::Dtype {
                    name: c.name.clone(),
                    found: t.dtype,
                    manifest: c.dtype,
                });
            }
            let mut want = vec![samples];
            want.extend(c.shape.iter().map(|&d| d as u64));
            if t.shape != want {
                return Err(HeaderError::Shape {
                    name: c.name.clone(),
                    found: t.shape.clone(),
                    manifest: want,
                });
            }
            column_offsets.push(self.data_start + t.data_offsets.0);
        }
        Ok(ShardLayout {
            samples,
            column_offsets,
            file_bytes,
        })
    }
}

/// Compares a shard file's size with its manifest entry.
pub(crate) fn check_size(path: &Path, len: u64, entry: &ShardEntry) -> Result<()> {
    if len == entry.bytes {
        return Ok(());
    }
    let how = if len < entry.bytes {
        "truncated"
    } else {
        "grown"
    };
    Err(StoreError::shard(
        path,
        format!(
            "file is {len} bytes, the manifest says {} ({how})",
            entry.bytes
        ),
    ))
}

/// Opens a shard and checks it against its manifest entry: file size, header, tensor
/// names, dtypes and shapes. The checksum is not read here (see [`checksum_file`]).
pub fn open_shard(path: &Path, schema: &Schema, entry: &ShardEntry) -> Result<(File, ShardLayout)> {
    let file = File::open(path).map_err(|e| StoreError::io(path, e))?;
    let len = file.metadata().map_err(|e| StoreError::io(path, e))?.len();
    check_size(path, len, entry)?;
    let layout = read_layout(&file, len, schema, entry.samples)
        .map_err(|fault| StoreError::shard(path, fault))?;
    Ok((file, layout))
}

fn read_layout(
    file: &File,
    len: u64,
    schema: &Schema,
    samples: u64,
) -> Result<ShardLayout, String> {
    let mut prefix = [0u8; 8];
    if len < 8 {
        return Err(format!("file is {len} bytes, too short for a header"));
    }
    file.read_exact_at(&mut prefix, 0)
        .map_err(|e| format!("reading header: {e}"))?;
    let hlen = header_len(prefix, len).map_err(|e| e.to_string())?;
    let mut json = vec![0u8; hlen as usize];
    file.read_exact_at(&mut json, 8)
        .map_err(|e| format!("reading header: {e}"))?;
    parse_header(&json, len)
        .map_err(|e| format!("bad header: {e}"))?
        .layout_for(schema, samples, len)
        .map_err(|e| format!("header does not match the manifest: {e}"))
}

/// XXH3-64 of a whole file, read in large sequential chunks.
pub fn checksum_file(path: &Path) -> Result<u64> {
    let file = File::open(path).map_err(|e| StoreError::io(path, e))?;
    let mut hasher = Xxh3::new();
    let mut buf = vec![0u8; 4 << 20];
    let mut offset = 0u64;
    loop {
        let n = file
            .read_at(&mut buf, offset)
            .map_err(|e| StoreError::io(path, e))?;
        if n == 0 {
            return Ok(hasher.digest());
        }
        hasher.update(&buf[..n]);
        offset += n as u64;
    }
}

/// A column's checksum: the wrapping sum over rows of XXH3-64 of the row's bytes, seeded
/// with the row's index. A sum does not depend on the order rows are read in, so a reader
/// checks it whatever order an epoch visits the rows.
pub fn column_checksum(data: &[u8], row_bytes: usize) -> u64 {
    data.chunks_exact(row_bytes.max(1))
        .enumerate()
        .fold(0u64, |acc, (row, bytes)| {
            acc.wrapping_add(xxh3_64_with_seed(bytes, row as u64))
        })
}

/// Samples for one shard, column by column, before they are written.
#[derive(Debug, Clone)]
pub struct ShardBuffer {
    schema: Schema,
    columns: Vec<Vec<u8>>,
    samples: u64,
}

impl ShardBuffer {
    /// An empty buffer for `schema`.
    pub fn new(schema: Schema) -> Self {
        let columns = vec![Vec::new(); schema.columns.len()];
        Self {
            schema,
            columns,
            samples: 0,
        }
    }

    /// Samples buffered.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// Bytes buffered.
    pub fn bytes(&self) -> usize {
        self.columns.iter().map(Vec::len).sum()
    }

    /// Appends `rows` samples: one byte slice per column holding `rows` samples each.
    pub fn push_rows(&mut self, rows: u64, columns: &[&[u8]]) -> Result<()> {
        if columns.len() != self.schema.columns.len() {
            return Err(StoreError::Rows(format!(
                "got {} columns, the schema has {}",
                columns.len(),
                self.schema.columns.len()
            )));
        }
        for (c, data) in self.schema.columns.iter().zip(columns) {
            let want = c.sample_bytes() as u64 * rows;
            if data.len() as u64 != want {
                return Err(StoreError::Rows(format!(
                    "column `{}`: {rows} samples of {} {:?} are {want} bytes, got {}",
                    c.name,
                    c.dtype,
                    c.shape,
                    data.len()
                )));
            }
        }
        for (buf, data) in self.columns.iter_mut().zip(columns) {
            buf.extend_from_slice(data);
        }
        self.samples += rows;
        Ok(())
    }

    /// Appends `rows` samples that `fill` writes in place, one mutable byte slice per
    /// column: producers that compute samples avoid a staging copy.
    pub fn push_with(&mut self, rows: u64, fill: impl FnOnce(&mut [&mut [u8]])) {
        let starts: Vec<usize> = self.columns.iter().map(Vec::len).collect();
        for (buf, c) in self.columns.iter_mut().zip(&self.schema.columns) {
            buf.resize(buf.len() + rows as usize * c.sample_bytes(), 0);
        }
        let mut slices: Vec<&mut [u8]> = self
            .columns
            .iter_mut()
            .zip(starts)
            .map(|(buf, start)| &mut buf[start..])
            .collect();
        fill(&mut slices);
        self.samples += rows;
    }

    /// Writes the buffered samples to `dir/file` atomically and empties the buffer.
    pub fn write(&mut self, dir: &Path, file: &str) -> Result<ShardEntry> {
        let target = dir.join(file);
        let (header, layout) = encode_header(&self.schema, self.samples);
        let mut hasher = Xxh3::new();
        hasher.update(&header);
        let order = storage_order(&self.schema);
        for &i in &order {
            hasher.update(&self.columns[i]);
        }
        let column_checksums = self
            .schema
            .columns
            .iter()
            .zip(&self.columns)
            .map(|(c, data)| {
                (
                    c.name.clone(),
                    format_checksum(column_checksum(data, c.sample_bytes())),
                )
            })
            .collect();
        fsutil::atomic_write_with(&target, |f| {
            // One buffered stream: many small column writes would each be a syscall.
            let mut w = std::io::BufWriter::with_capacity(8 << 20, f);
            w.write_all(&header)?;
            for &i in &order {
                w.write_all(&self.columns[i])?;
            }
            w.flush()
        })?;
        let entry = ShardEntry {
            file: file.to_owned(),
            samples: self.samples,
            bytes: layout.file_bytes,
            checksum: format_checksum(hasher.digest()),
            column_checksums,
        };
        for c in &mut self.columns {
            c.clear();
        }
        self.samples = 0;
        Ok(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Column;

    fn schema() -> Schema {
        Schema::new(vec![
            Column::new("label", DType::U8, []),
            Column::new("x", DType::F32, [3]),
            Column::new("t", DType::F16, [2]),
        ])
        .unwrap()
    }

    #[test]
    fn header_round_trips_and_aligns_columns() {
        let s = schema();
        let (bytes, layout) = encode_header(&s, 5);
        assert_eq!(bytes.len() % 8, 0);
        let len = header_len(bytes[..8].try_into().unwrap(), layout.file_bytes).unwrap();
        let h = parse_header(&bytes[8..8 + len as usize], layout.file_bytes).unwrap();
        assert_eq!(h.layout_for(&s, 5, layout.file_bytes).unwrap(), layout);
        // x (f32) first, then t (f16), then label (u8): each aligned to its element size.
        assert_eq!(layout.column_offsets[1], bytes.len() as u64);
        assert_eq!(layout.column_offsets[2], bytes.len() as u64 + 60);
        assert_eq!(layout.column_offsets[0], bytes.len() as u64 + 80);
        assert_eq!(layout.file_bytes, bytes.len() as u64 + 85);
        assert!(h.layout_for(&s, 4, layout.file_bytes).is_err());
    }

    #[test]
    fn rejects_gaps_and_truncation() {
        let s = schema();
        let (bytes, layout) = encode_header(&s, 5);
        let json = &bytes[8..];
        assert!(parse_header(json, layout.file_bytes - 1).is_err());
        assert!(parse_header(json, layout.file_bytes + 1).is_err());
        let gap = br#"{"a":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}}"#;
        assert!(parse_header(gap, 8 + gap.len() as u64 + 3).is_err());
        let bad = br#"{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,3]}}"#;
        assert!(parse_header(bad, 8 + bad.len() as u64 + 3).is_err());
    }
}
