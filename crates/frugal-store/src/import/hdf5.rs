//! HDF5 datasets, read through the system libhdf5.
//!
//! Each dataset is read in hyperslabs along its first axis whose height is a multiple of
//! the dataset's chunk height, so every chunk is decompressed once and memory holds one
//! block per column whatever the file's size. HDF5 converts byte order (and, for half
//! precision, the element format) on the way into memory.

use std::ops::Range;
use std::path::Path;

use hdf5::H5Type;
use hdf5::types::TypeDescriptor;
use hdf5::{Hyperslab, Selection, SliceOrIndex};

use super::{BLOCK_BYTES, provenance};
use crate::dtype::DType;
use crate::error::{Result, StoreError};
use crate::manifest::{Column, Manifest, Schema};
use crate::writer::{DatasetWriter, WriterOptions};

/// How a dataset's elements are brought into memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Element {
    /// As the native type of the same class and size.
    Native(DType),
    /// As `f32`, then narrowed to half precision bits. hdf5-metno only reads half floats
    /// natively with its `f16` feature, which pulls in another crate; the detour through
    /// `f32` is exact for every half value.
    HalfViaF32,
}

impl Element {
    fn dtype(self) -> DType {
        match self {
            Element::Native(d) => d,
            Element::HalfViaF32 => DType::F16,
        }
    }
}

/// One dataset being imported, with the rows read but not yet written.
struct Input {
    column: String,
    path: String,
    dataset: hdf5::Dataset,
    element: Element,
    shape: Vec<usize>,
    row_bytes: usize,
    /// Rows per read: a whole number of chunks.
    block: usize,
    /// Next row to read from the file.
    next: usize,
    /// Rows read, as little-endian bytes; `pending.len() / row_bytes - taken` not yet written.
    pending: Vec<u8>,
    taken: usize,
}

impl Input {
    fn buffered(&self) -> usize {
        self.pending.len() / self.row_bytes - self.taken
    }

    fn refill(&mut self, file: &Path) -> Result<()> {
        let rows = self.next..(self.next + self.block).min(self.shape[0]);
        self.pending.clear();
        self.taken = 0;
        let read = match self.element {
            Element::Native(DType::F64) => read_pod::<f64>(self, rows.clone()),
            Element::Native(DType::F32) => read_pod::<f32>(self, rows.clone()),
            Element::Native(DType::I64) => read_pod::<i64>(self, rows.clone()),
            Element::Native(DType::I32) => read_pod::<i32>(self, rows.clone()),
            Element::Native(DType::I16) => read_pod::<i16>(self, rows.clone()),
            Element::Native(DType::I8) => read_pod::<i8>(self, rows.clone()),
            Element::Native(DType::U64) => read_pod::<u64>(self, rows.clone()),
            Element::Native(DType::U32) => read_pod::<u32>(self, rows.clone()),
            Element::Native(DType::U16) => read_pod::<u16>(self, rows.clone()),
            Element::Native(DType::U8) => read_pod::<u8>(self, rows.clone()),
            Element::Native(DType::Bool) => {
                read_rows::<bool>(&self.dataset, &self.shape, rows.clone())
                    .map(|v| self.pending.extend(v.into_iter().map(u8::from)))
            }
            Element::HalfViaF32 => {
                let values = read_rows::<f32>(&self.dataset, &self.shape, rows.clone())
                    .map_err(|e| self.fault(file, e))?;
                for (i, x) in values.into_iter().enumerate() {
                    let bits = half_bits(x).ok_or_else(|| {
                        self.fault(
                            file,
                            format!(
                                "element {i} of rows {}..{} reads as {x}, which is not a half-precision value",
                                rows.start, rows.end
                            ),
                        )
                    })?;
                    self.pending.extend_from_slice(&bits.to_le_bytes());
                }
                Ok(())
            }
            Element::Native(DType::F16 | DType::BF16) => {
                unreachable!("half types are read through f32 or refused")
            }
        };
        read.map_err(|e| {
            self.fault(
                file,
                format!("reading rows {}..{}: {e}", rows.start, rows.end),
            )
        })?;
        debug_assert_eq!(self.pending.len(), rows.len() * self.row_bytes);
        self.next = rows.end;
        Ok(())
    }

    fn fault(&self, file: &Path, message: impl std::fmt::Display) -> StoreError {
        StoreError::import(file, format!("dataset `{}`: {message}", self.path))
    }
}

/// Reads `rows` of a plain-old-data dataset and appends their little-endian bytes.
fn read_pod<T: H5Type + bytemuck::Pod>(input: &mut Input, rows: Range<usize>) -> hdf5::Result<()> {
    let values = read_rows::<T>(&input.dataset, &input.shape, rows)?;
    let start = input.pending.len();
    input
        .pending
        .extend_from_slice(bytemuck::cast_slice::<T, u8>(&values));
    if cfg!(target_endian = "big") {
        for element in input.pending[start..].chunks_exact_mut(size_of::<T>()) {
            element.reverse();
        }
    }
    Ok(())
}

/// Reads rows `rows` (every element of the other axes) in C order.
fn read_rows<T: H5Type>(
    dataset: &hdf5::Dataset,
    shape: &[usize],
    rows: Range<usize>,
) -> hdf5::Result<Vec<T>> {
    let mut slab = vec![SliceOrIndex::from(rows)];
    slab.extend(shape[1..].iter().map(|&d| SliceOrIndex::from(0..d)));
    let selection = Selection::from(Hyperslab::from(slab));
    let reader = dataset.as_reader();
    let array = reader.read_slice::<T, _, ndarray::IxDyn>(selection)?;
    let (values, offset) = array.into_raw_vec_and_offset();
    debug_assert!(offset.is_none_or(|o| o == 0));
    Ok(values)
}

/// The half-precision bits of `x`, if `x` is exactly a half-precision value (NaNs map to
/// a quiet NaN of the same sign).
fn half_bits(x: f32) -> Option<u16> {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exponent = ((bits >> 23) & 0xff) as i32;
    let mantissa = bits & 0x7f_ffff;
    if exponent == 0xff {
        return Some(if mantissa == 0 {
            sign | 0x7c00
        } else {
            sign | 0x7e00 | (mantissa >> 13) as u16
        });
    }
    if exponent == 0 {
        // Zero, or an f32 subnormal, far below the smallest half.
        return (mantissa == 0).then_some(sign);
    }
    let e = exponent - 127;
    if e > 15 {
        return None;
    }
    if e >= -14 {
        return (mantissa & 0x1fff == 0)
            .then(|| sign | (((e + 15) as u16) << 10) | (mantissa >> 13) as u16);
    }
    // A half subnormal is m · 2⁻²⁴: the 24-bit significand shifted right by -(e + 1).
    let shift = (-1 - e) as u32;
    let significand = 0x80_0000 | mantissa;
    (shift < 24 && significand & ((1 << shift) - 1) == 0)
        .then(|| sign | (significand >> shift) as u16)
}

/// How a dataset's element type is imported, or why it cannot be.
fn element_of(datatype: &hdf5::Datatype) -> Result<Element, String> {
    match datatype.to_descriptor() {
        Ok(TypeDescriptor::Integer(size)) => Ok(Element::Native(match size as usize {
            1 => DType::I8,
            2 => DType::I16,
            4 => DType::I32,
            _ => DType::I64,
        })),
        Ok(TypeDescriptor::Unsigned(size)) => Ok(Element::Native(match size as usize {
            1 => DType::U8,
            2 => DType::U16,
            4 => DType::U32,
            _ => DType::U64,
        })),
        Ok(TypeDescriptor::Float(size)) => match size as usize {
            4 => Ok(Element::Native(DType::F32)),
            8 => Ok(Element::Native(DType::F64)),
            _ => Ok(Element::HalfViaF32),
        },
        Ok(TypeDescriptor::Boolean) => Ok(Element::Native(DType::Bool)),
        Ok(other) => Err(format!(
            "its element type ({other}) is not supported (supported: float64/32/16, int64/32/16/8, uint64/32/16/8, bool)"
        )),
        // Without hdf5-metno's `f16` feature a two-byte float has no descriptor; whether
        // it is one shows in HDF5 offering a float conversion for it.
        Err(_) if datatype.size() == 2 && datatype.conv_to::<f32>().is_some() => {
            Ok(Element::HalfViaF32)
        }
        Err(e) => Err(format!(
            "its element type ({} bytes) is not supported: {e}",
            datatype.size()
        )),
    }
}

/// Imports datasets of an HDF5 file as the columns of a new dataset in `out`: each
/// `(column name, dataset path)` becomes a column whose per-sample shape is the dataset's
/// shape without its first axis. All datasets must have the same length along the first
/// axis. Each is read in blocks of whole chunks (about 8 MiB), never whole.
pub fn import_hdf5(
    file: &Path,
    datasets: &[(String, String)],
    out: &Path,
    options: WriterOptions,
) -> Result<Manifest> {
    if datasets.is_empty() {
        return Err(StoreError::Setting {
            setting: "HDF5 datasets",
            value: "none".into(),
            problem: "name at least one dataset to import".into(),
        });
    }
    if !file.exists() {
        return Err(StoreError::io(
            file,
            std::io::Error::from(std::io::ErrorKind::NotFound),
        ));
    }
    let h5 = hdf5::File::open(file)
        .map_err(|e| StoreError::import(file, format!("is not a readable HDF5 file: {e}")))?;
    let mut inputs: Vec<Input> = Vec::with_capacity(datasets.len());
    for (column, path) in datasets {
        let bad = |m: String| StoreError::import(file, format!("dataset `{path}`: {m}"));
        let dataset = h5
            .dataset(path)
            .map_err(|e| bad(format!("cannot be opened: {e}")))?;
        let shape = dataset.shape();
        let Some(&rows) = shape.first() else {
            return Err(bad(
                "is a scalar; importing needs a first axis of samples".into()
            ));
        };
        if shape[1..].contains(&0) {
            return Err(bad(format!(
                "has shape {shape:?}: a sample with a zero-length axis holds nothing"
            )));
        }
        let datatype = dataset.dtype().map_err(|e| bad(e.to_string()))?;
        let element = element_of(&datatype).map_err(bad)?;
        if let Some(first) = inputs.first()
            && first.shape[0] != rows
        {
            return Err(bad(format!(
                "has {rows} rows but dataset `{}` has {}; every dataset must have the same length along its first axis",
                first.path, first.shape[0]
            )));
        }
        let row_bytes = shape[1..]
            .iter()
            .try_fold(element.dtype().size(), |acc, &d| acc.checked_mul(d))
            .filter(|&b| b <= 1 << 40)
            .ok_or_else(|| bad(format!("has shape {shape:?}, far too large a sample")))?;
        let chunk = dataset
            .chunk()
            .and_then(|c| c.first().copied())
            .unwrap_or(1)
            .max(1);
        let block = ((BLOCK_BYTES / row_bytes) / chunk).max(1) * chunk;
        inputs.push(Input {
            column: column.clone(),
            path: path.clone(),
            dataset,
            element,
            shape,
            row_bytes,
            block,
            next: 0,
            pending: Vec::new(),
            taken: 0,
        });
    }
    let schema = Schema::new(
        inputs
            .iter()
            .map(|i| Column::new(&i.column, i.element.dtype(), &i.shape[1..]))
            .collect(),
    )?;
    let rows = inputs[0].shape[0];

    let mut writer = DatasetWriter::replay(out, schema, options)?;
    let map: serde_json::Map<String, serde_json::Value> = datasets
        .iter()
        .map(|(column, path)| (column.clone(), path.clone().into()))
        .collect();
    writer.metadata_mut().insert(
        "source".into(),
        serde_json::json!({ "format": "hdf5", "file": provenance(file), "datasets": map }),
    );
    // Chunk heights differ between datasets, so each reads its own blocks and the writer
    // takes the rows that every column has ready.
    let mut done = 0;
    while done < rows {
        for input in &mut inputs {
            if input.buffered() == 0 {
                input.refill(file)?;
            }
        }
        let take = inputs.iter().map(Input::buffered).min().unwrap_or(0);
        let slices: Vec<&[u8]> = inputs
            .iter()
            .map(|i| &i.pending[i.taken * i.row_bytes..(i.taken + take) * i.row_bytes])
            .collect();
        writer.push_rows(take as u64, &slices)?;
        for input in &mut inputs {
            input.taken += take;
        }
        done += take;
    }
    writer.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_bits_are_exact() {
        // Every finite, non-NaN half survives the trip through f32.
        for bits in 0..=u16::MAX {
            let exponent = (bits >> 10) & 0x1f;
            let mantissa = u32::from(bits & 0x3ff);
            let sign = if bits & 0x8000 != 0 { -1.0f32 } else { 1.0 };
            let value = match exponent {
                0 => sign * mantissa as f32 * 2f32.powi(-24),
                0x1f if mantissa == 0 => sign * f32::INFINITY,
                0x1f => continue,
                e => sign * (1.0 + mantissa as f32 / 1024.0) * 2f32.powi(i32::from(e) - 15),
            };
            assert_eq!(half_bits(value), Some(bits), "{bits:#06x} = {value}");
        }
        assert!(half_bits(f32::NAN).is_some_and(|b| b & 0x7c00 == 0x7c00 && b & 0x3ff != 0));
        for x in [
            0.1f32,
            65520.0,
            1e-8,
            2f32.powi(-25),
            1.0 + 2f32.powi(-11),
            f32::MIN_POSITIVE,
        ] {
            assert_eq!(half_bits(x), None, "{x}");
        }
    }
}
