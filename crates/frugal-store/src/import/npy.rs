//! numpy `.npy` and `.npz` files.
//!
//! The `.npy` format is a magic string, a version, a little-endian header length and a
//! Python dict literal (`{'descr': '<f4', 'fortran_order': False, 'shape': (60000, 784), }`)
//! followed by the raw elements in C order. The header is parsed here, strictly: anything
//! that is not exactly such a dict, or that describes data this store cannot hold, is an
//! error naming the file, never a guess. An `.npz` file is a zip archive of `.npy` members
//! (stored or deflated), one per array.

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};

use zip::{CompressionMethod, ZipArchive};

use super::{at_end, block_rows, provenance};
use crate::dtype::DType;
use crate::error::{Result, StoreError};
use crate::manifest::{Column, Manifest, Schema};
use crate::writer::{DatasetWriter, WriterOptions};

const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// Headers beyond this are not something numpy writes for a plain array (its own reader
/// refuses anything over 10 000 bytes by default); refusing them keeps a corrupt length
/// field from turning into a huge allocation.
const MAX_HEADER_BYTES: usize = 1 << 20;

/// Nesting beyond this is not a plain array's header; the limit keeps the recursive
/// parser's stack bounded on hostile input.
const MAX_NESTING: usize = 16;

/// What an `.npy` header says about the array that follows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpyHeader {
    /// Format version `(major, minor)`: 1.0, 2.0 or 3.0.
    pub version: (u8, u8),
    /// Element type.
    pub dtype: DType,
    /// True when the elements are stored big-endian and must be byte-swapped.
    pub big_endian: bool,
    /// Array shape; the first axis is the sample axis.
    pub shape: Vec<usize>,
    /// Bytes from the start of the file to the first element.
    pub data_offset: u64,
    /// Bytes of element data: the product of `shape` times the element size.
    pub data_bytes: u64,
    /// True when the elements are stored in Fortran (column-major) order, first axis
    /// fastest, as `np.save` writes a transposed array.
    pub fortran_order: bool,
}

impl NpyHeader {
    /// Rows along the first axis (samples); an error for a 0-d array, which has none.
    fn rows(&self, origin: &Origin) -> Result<u64> {
        match self.shape.first() {
            Some(&n) => Ok(n as u64),
            None => {
                Err(origin.err("is a 0-d (scalar) array; importing needs a first axis of samples"))
            }
        }
    }

    /// The shape of one row (sample).
    fn sample_shape(&self) -> &[usize] {
        self.shape.get(1..).unwrap_or(&[])
    }

    /// Bytes of one row.
    fn row_bytes(&self) -> usize {
        self.sample_shape().iter().product::<usize>() * self.dtype.size()
    }

    /// The column that holds this array's rows.
    fn column(&self, name: &str, origin: &Origin) -> Result<Column> {
        let sample = self.sample_shape();
        if sample.contains(&0) {
            return Err(origin.err(format!(
                "has shape {:?}: a sample with a zero-length axis holds nothing",
                self.shape
            )));
        }
        Ok(Column::new(name, self.dtype, sample))
    }
}

/// Reads and checks an `.npy` header, leaving `reader` at the first element. `path` is
/// only used in messages.
pub fn read_npy_header(reader: &mut dyn Read, path: &Path) -> Result<NpyHeader> {
    let bad = |m: String| StoreError::import(path, m);
    let mut lead = [0u8; 8];
    read_header_bytes(reader, &mut lead, path)?;
    if &lead[..6] != MAGIC {
        return Err(bad(
            "is not an .npy file (it does not start with \\x93NUMPY)".into(),
        ));
    }
    let version = (lead[6], lead[7]);
    let (len_bytes, utf8) = match version {
        (1, 0) => (2, false),
        (2, 0) => (4, false),
        (3, 0) => (4, true),
        (major, minor) => {
            return Err(bad(format!(
                ".npy format version {major}.{minor} is not supported (only 1.0, 2.0 and 3.0 are)"
            )));
        }
    };
    let mut len = [0u8; 4];
    read_header_bytes(reader, &mut len[..len_bytes], path)?;
    let header_len = u32::from_le_bytes(len) as usize;
    if header_len > MAX_HEADER_BYTES {
        return Err(bad(format!(
            "header claims {header_len} bytes, more than the {MAX_HEADER_BYTES} an array's header can need; the file is damaged"
        )));
    }
    let mut raw = vec![0u8; header_len];
    read_header_bytes(reader, &mut raw, path)?;
    // Versions 1 and 2 are latin-1; 3 exists only to allow UTF-8.
    let text: String = if utf8 {
        String::from_utf8(raw).map_err(|_| bad("header is not valid UTF-8".into()))?
    } else {
        raw.iter().map(|&b| char::from(b)).collect()
    };
    let data_offset = (8 + len_bytes + header_len) as u64;
    parse_header(&text, version, data_offset).map_err(|m| bad(format!("bad .npy header: {m}")))
}

fn read_header_bytes(reader: &mut dyn Read, buf: &mut [u8], path: &Path) -> Result<()> {
    reader.read_exact(buf).map_err(|e| {
        if e.kind() == ErrorKind::UnexpectedEof {
            StoreError::import(path, "is truncated: it ends inside the .npy header")
        } else {
            StoreError::import(path, format!("reading the .npy header: {e}"))
        }
    })
}

fn parse_header(text: &str, version: (u8, u8), data_offset: u64) -> Result<NpyHeader, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut p = Parser { s: &chars, pos: 0 };
    let value = p.value(0)?;
    p.skip_space();
    if p.pos != chars.len() {
        return Err(format!(
            "unexpected `{}` after the header dict",
            p.rest_preview()
        ));
    }
    let Py::Dict(entries) = value else {
        return Err("the header is not a dict".into());
    };
    let mut descr = None;
    let mut fortran = None;
    let mut shape = None;
    for (key, value) in entries {
        let slot = match key.as_str() {
            "descr" => &mut descr,
            "fortran_order" => &mut fortran,
            "shape" => &mut shape,
            other => return Err(format!("unexpected key '{other}'")),
        };
        if slot.replace(value).is_some() {
            return Err(format!("key '{key}' appears twice"));
        }
    }
    let (Some(descr), Some(fortran), Some(shape)) = (descr, fortran, shape) else {
        return Err("the header must have the keys 'descr', 'fortran_order' and 'shape'".into());
    };
    let (dtype, big_endian) = parse_descr(&descr)?;
    let fortran_order = match fortran {
        Py::Bool(f) => f,
        other => {
            return Err(format!(
                "'fortran_order' is {}, not True or False",
                other.kind()
            ));
        }
    };
    let Py::Tuple(dims) = shape else {
        return Err(format!("'shape' is {}, not a tuple", shape.kind()));
    };
    let shape = dims
        .into_iter()
        .map(|d| match d {
            Py::Int(n) => usize::try_from(n).map_err(|_| format!("dimension {n} is too large")),
            other => Err(format!("'shape' holds {}, not an integer", other.kind())),
        })
        .collect::<Result<Vec<usize>, String>>()?;
    // Zero-length axes are left out so that a row's size is known to fit too.
    let bound = shape
        .iter()
        .try_fold(dtype.size(), |acc, &d| acc.checked_mul(d.max(1)));
    if bound.is_none_or(|b| b > i64::MAX as usize) {
        return Err(format!("shape {shape:?} is too large"));
    }
    let data_bytes = shape.iter().map(|&d| d as u64).product::<u64>() * dtype.size() as u64;
    Ok(NpyHeader {
        version,
        dtype,
        big_endian,
        shape,
        data_offset,
        data_bytes,
        fortran_order,
    })
}

fn parse_descr(descr: &Py) -> Result<(DType, bool), String> {
    let descr = match descr {
        Py::Str(s) => s,
        Py::List => {
            return Err(
                "the array has a structured dtype (record fields), which is not \
                 supported; save each field as its own array"
                    .into(),
            );
        }
        other => return Err(format!("'descr' is {}, not a type string", other.kind())),
    };
    if let Some(found) = DType::from_numpy_descr(descr) {
        return Ok(found);
    }
    let code = descr.trim_start_matches(['<', '>', '|', '=']);
    let what = match code.chars().next() {
        Some('O') => "object arrays (Python objects, pickled) are not supported",
        Some('V') => "void/structured dtypes are not supported",
        Some('U' | 'S' | 'a') => "string arrays are not supported",
        Some('c') => "complex numbers are not supported",
        Some('M' | 'm') => "datetime and timedelta arrays are not supported",
        _ => "the dtype is not supported",
    };
    Err(format!(
        "dtype '{descr}': {what} (supported: float64/32/16, int64/32/16/8, uint64/32/16/8, bool)"
    ))
}

/// The subset of Python literals an `.npy` header uses.
#[derive(Debug)]
enum Py {
    Str(String),
    Int(u128),
    Bool(bool),
    None,
    Tuple(Vec<Py>),
    /// Only ever a structured dtype's field list, which is refused whatever it holds.
    List,
    Dict(Vec<(String, Py)>),
}

impl Py {
    fn kind(&self) -> &'static str {
        match self {
            Py::Str(_) => "a string",
            Py::Int(_) => "an integer",
            Py::Bool(_) => "a boolean",
            Py::None => "None",
            Py::Tuple(_) => "a tuple",
            Py::List => "a list",
            Py::Dict(_) => "a dict",
        }
    }
}

struct Parser<'a> {
    s: &'a [char],
    pos: usize,
}

impl Parser<'_> {
    fn skip_space(&mut self) {
        while self.s.get(self.pos).is_some_and(|c| c.is_whitespace()) {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<char> {
        self.skip_space();
        self.s.get(self.pos).copied()
    }

    fn rest_preview(&self) -> String {
        self.s[self.pos.min(self.s.len())..]
            .iter()
            .take(20)
            .collect()
    }

    fn expect(&mut self, c: char) -> Result<(), String> {
        match self.peek() {
            Some(got) if got == c => {
                self.pos += 1;
                Ok(())
            }
            Some(_) => Err(format!("expected `{c}` at `{}`", self.rest_preview())),
            None => Err(format!("expected `{c}`, the header ended")),
        }
    }

    fn value(&mut self, depth: usize) -> Result<Py, String> {
        if depth > MAX_NESTING {
            return Err("nested too deeply".into());
        }
        match self.peek() {
            None => Err("the header ended where a value was expected".into()),
            Some('{') => {
                self.pos += 1;
                let mut entries = Vec::new();
                self.sequence('}', |p| {
                    let key = match p.value(depth + 1)? {
                        Py::Str(k) => k,
                        other => {
                            return Err(format!("a dict key is {}, not a string", other.kind()));
                        }
                    };
                    p.expect(':')?;
                    entries.push((key, p.value(depth + 1)?));
                    Ok(())
                })?;
                Ok(Py::Dict(entries))
            }
            Some(open @ ('(' | '[')) => {
                self.pos += 1;
                let close = if open == '(' { ')' } else { ']' };
                let mut items = Vec::new();
                self.sequence(close, |p| {
                    items.push(p.value(depth + 1)?);
                    Ok(())
                })?;
                Ok(if open == '(' {
                    Py::Tuple(items)
                } else {
                    Py::List
                })
            }
            Some(q @ ('\'' | '"')) => {
                self.pos += 1;
                self.string(q).map(Py::Str)
            }
            Some(c) if c.is_ascii_digit() => self.int().map(Py::Int),
            Some('-') => Err("negative numbers have no place in an array header".into()),
            Some(c) if c.is_ascii_alphabetic() => {
                let start = self.pos;
                while self
                    .s
                    .get(self.pos)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_')
                {
                    self.pos += 1;
                }
                let word: String = self.s[start..self.pos].iter().collect();
                match word.as_str() {
                    "True" => Ok(Py::Bool(true)),
                    "False" => Ok(Py::Bool(false)),
                    "None" => Ok(Py::None),
                    _ => Err(format!("unexpected `{word}`")),
                }
            }
            Some(_) => Err(format!("unexpected `{}`", self.rest_preview())),
        }
    }

    /// Items up to `close`, separated by commas, a trailing comma allowed (Python writes
    /// one after the last dict entry and in one-element tuples).
    fn sequence(
        &mut self,
        close: char,
        mut item: impl FnMut(&mut Self) -> Result<(), String>,
    ) -> Result<(), String> {
        loop {
            if self.peek() == Some(close) {
                self.pos += 1;
                return Ok(());
            }
            item(self)?;
            match self.peek() {
                Some(',') => self.pos += 1,
                Some(c) if c == close => {}
                Some(_) => {
                    return Err(format!(
                        "expected `,` or `{close}` at `{}`",
                        self.rest_preview()
                    ));
                }
                None => return Err(format!("expected `{close}`, the header ended")),
            }
        }
    }

    fn string(&mut self, quote: char) -> Result<String, String> {
        let mut out = String::new();
        loop {
            let Some(&c) = self.s.get(self.pos) else {
                return Err("a string is not closed".into());
            };
            self.pos += 1;
            match c {
                c if c == quote => return Ok(out),
                '\\' => {
                    let Some(&e) = self.s.get(self.pos) else {
                        return Err("a string is not closed".into());
                    };
                    self.pos += 1;
                    match e {
                        '\\' | '\'' | '"' => out.push(e),
                        _ => return Err(format!("unsupported escape `\\{e}` in a string")),
                    }
                }
                '\n' => return Err("a string is not closed before the end of the line".into()),
                c => out.push(c),
            }
        }
    }

    fn int(&mut self) -> Result<u128, String> {
        let mut n: u128 = 0;
        while let Some(d) = self.s.get(self.pos).and_then(|c| c.to_digit(10)) {
            n = n
                .checked_mul(10)
                .and_then(|n| n.checked_add(u128::from(d)))
                .ok_or("an integer is too large")?;
            self.pos += 1;
        }
        // Python 2 wrote long integers as `3L`; such files are still around.
        if self.s.get(self.pos) == Some(&'L') {
            self.pos += 1;
        }
        Ok(n)
    }
}

/// Where an array comes from, for messages: a file, or a member of an archive.
pub(super) struct Origin {
    path: PathBuf,
    member: Option<String>,
}

impl Origin {
    fn err(&self, message: impl std::fmt::Display) -> StoreError {
        match &self.member {
            None => StoreError::import(&self.path, message.to_string()),
            Some(m) => StoreError::import(&self.path, format!("member `{m}`: {message}")),
        }
    }

    fn label(&self) -> String {
        match &self.member {
            None => self.path.display().to_string(),
            Some(m) => format!("{}:{m}", self.path.display()),
        }
    }
}

/// Reads a Fortran-order (column-major) array file as rows: a block of rows at a time,
/// each of a row's elements gathered from its own stretch of the file (element `(i, J)`
/// of `n` rows lies at `i + n·J`), so memory stays one block whatever the file's size.
struct ColumnMajor {
    file: File,
    data_offset: u64,
    rows: u64,
    element: usize,
    /// For each element of a row in Fortran order, its place in C (row-major) order.
    to_c: Vec<usize>,
    block_rows: u64,
    next_row: u64,
    block: Vec<u8>,
    served: usize,
    run: Vec<u8>,
}

impl ColumnMajor {
    fn new(file: File, header: &NpyHeader) -> Self {
        let dims = &header.shape[1..];
        let per_row: usize = dims.iter().product();
        // Fortran index J = j1 + d1·(j2 + d2·(…)); C index c = (j1·d2 + j2)·d3 + ….
        let to_c = (0..per_row)
            .map(|mut j| {
                let mut digits = Vec::with_capacity(dims.len());
                for &d in dims {
                    digits.push(j % d);
                    j /= d;
                }
                digits.iter().zip(dims).fold(0, |c, (&jk, &d)| c * d + jk)
            })
            .collect();
        let row_bytes = (per_row * header.dtype.size()).max(1);
        Self {
            file,
            data_offset: header.data_offset,
            rows: header.shape.first().copied().unwrap_or(0) as u64,
            element: header.dtype.size(),
            to_c,
            block_rows: (super::BLOCK_BYTES / row_bytes).max(1) as u64,
            next_row: 0,
            block: Vec::new(),
            served: 0,
            run: Vec::new(),
        }
    }

    fn fill(&mut self) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let take = self.block_rows.min(self.rows - self.next_row) as usize;
        let (e, per_row) = (self.element, self.to_c.len());
        self.block.resize(take * per_row * e, 0);
        self.run.resize(take * e, 0);
        for (j, &c) in self.to_c.iter().enumerate() {
            let at = self.data_offset + ((j as u64 * self.rows) + self.next_row) * e as u64;
            self.file.read_exact_at(&mut self.run, at)?;
            for (i, element) in self.run.chunks_exact(e).enumerate() {
                let to = (i * per_row + c) * e;
                self.block[to..to + e].copy_from_slice(element);
            }
        }
        self.next_row += take as u64;
        self.served = 0;
        Ok(())
    }
}

impl Read for ColumnMajor {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.served == self.block.len() {
            if self.next_row == self.rows {
                return Ok(0);
            }
            self.fill()?;
        }
        let n = out.len().min(self.block.len() - self.served);
        out[..n].copy_from_slice(&self.block[self.served..self.served + n]);
        self.served += n;
        Ok(n)
    }
}

/// One array being imported: its header and a reader positioned in its data.
pub(super) struct Source<R> {
    pub(super) origin: Origin,
    pub(super) header: NpyHeader,
    pub(super) reader: R,
}

impl Source<Box<dyn Read>> {
    /// An array file whose header has been read: a transposed (Fortran-order) array is read
    /// column-major, block by block; a 1-D one is the same in either order.
    pub(super) fn file(path: &Path, file: File, header: NpyHeader) -> Self {
        Self {
            origin: Origin {
                path: path.to_owned(),
                member: None,
            },
            reader: if header.fortran_order && header.shape.len() > 1 {
                Box::new(ColumnMajor::new(file, &header))
            } else {
                Box::new(file)
            },
            header,
        }
    }
}

/// Writes the checked `sources` (`rows` rows each) as the dataset of `schema` in `out`,
/// resuming an interrupted import of the same inputs, with `source` as its provenance.
pub(super) fn write_dataset<R: Read>(
    out: &Path,
    schema: Schema,
    rows: u64,
    sources: &mut [Source<R>],
    options: WriterOptions,
    source: serde_json::Value,
) -> Result<Manifest> {
    let mut writer = DatasetWriter::replay(out, schema, options)?;
    writer.metadata_mut().insert("source".into(), source);
    copy_rows(&mut writer, sources, rows)?;
    writer.finish()
}

/// Checks that every array has the same number of rows and returns it and the schema.
pub(super) fn plan<'a>(
    arrays: impl IntoIterator<Item = (&'a str, &'a Origin, &'a NpyHeader)>,
) -> Result<(u64, Schema)> {
    let mut rows: Option<(u64, &Origin)> = None;
    let mut columns = Vec::new();
    for (name, origin, header) in arrays {
        let n = header.rows(origin)?;
        match rows {
            None => rows = Some((n, origin)),
            Some((first, other)) if first != n => {
                return Err(origin.err(format!(
                    "has {n} rows but {} has {first}; every array must have the same length along its first axis",
                    other.label()
                )));
            }
            Some(_) => {}
        }
        columns.push(header.column(name, origin)?);
    }
    let schema = Schema::new(columns)?;
    Ok((rows.map_or(0, |r| r.0), schema))
}

/// Copies `rows` rows from every source into `writer`, a block at a time, and checks
/// that each source ends exactly where its data does.
fn copy_rows<R: Read>(
    writer: &mut DatasetWriter,
    sources: &mut [Source<R>],
    rows: u64,
) -> Result<()> {
    let widths: Vec<usize> = sources.iter().map(|s| s.header.row_bytes()).collect();
    let block = block_rows(widths.iter().copied()) as u64;
    let mut buffers: Vec<Vec<u8>> = widths
        .iter()
        .map(|w| Vec::with_capacity(w * block.min(rows) as usize))
        .collect();
    let mut done = 0u64;
    while done < rows {
        let take = block.min(rows - done);
        for ((s, buf), &w) in sources.iter_mut().zip(&mut buffers).zip(&widths) {
            buf.resize(w * take as usize, 0);
            s.reader.read_exact(buf).map_err(|e| {
                if e.kind() == ErrorKind::UnexpectedEof {
                    s.origin.err(format!(
                        "is truncated: the data ends before row {} of {rows}",
                        done + take
                    ))
                } else {
                    s.origin.err(format!("reading the data: {e}"))
                }
            })?;
            if s.header.big_endian {
                for element in buf.chunks_exact_mut(s.header.dtype.size()) {
                    element.reverse();
                }
            }
            if s.header.dtype == DType::Bool && buf.iter().any(|&b| b > 1) {
                return Err(s.origin.err("a bool element is neither 0 nor 1"));
            }
        }
        let slices: Vec<&[u8]> = buffers.iter().map(Vec::as_slice).collect();
        writer.push_rows(take, &slices)?;
        done += take;
    }
    for s in sources.iter_mut() {
        match at_end(&mut s.reader) {
            Ok(true) => {}
            Ok(false) => return Err(s.origin.err("has bytes after the array's data")),
            Err(e) => return Err(s.origin.err(format!("reading the data: {e}"))),
        }
    }
    Ok(())
}

/// Imports `.npy` files as the columns of a new dataset in `out`: each `(column name,
/// file)` becomes a column whose per-sample shape is the array's shape without its first
/// axis. All arrays must have the same length along the first axis. The files are read
/// side by side in blocks, never whole.
pub fn import_npy(
    inputs: &[(String, PathBuf)],
    out: &Path,
    options: WriterOptions,
) -> Result<Manifest> {
    if inputs.is_empty() {
        return Err(StoreError::Setting {
            setting: ".npy files",
            value: "none".into(),
            problem: "name at least one file to import".into(),
        });
    }
    let mut sources = Vec::with_capacity(inputs.len());
    for (_, path) in inputs {
        let mut file = File::open(path).map_err(|e| StoreError::io(path, e))?;
        let len = file.metadata().map_err(|e| StoreError::io(path, e))?.len();
        let header = read_npy_header(&mut file, path)?;
        let expected = header.data_offset.saturating_add(header.data_bytes);
        if len < expected {
            return Err(StoreError::import(
                path,
                format!(
                    "is truncated: its header describes {} bytes of {:?} {} data, the file holds {}",
                    header.data_bytes,
                    header.shape,
                    header.dtype,
                    len - header.data_offset.min(len)
                ),
            ));
        }
        if len > expected {
            return Err(StoreError::import(
                path,
                format!("has {} bytes after the array's data", len - expected),
            ));
        }
        sources.push(Source::file(path, file, header));
    }
    let (rows, schema) = plan(
        inputs
            .iter()
            .zip(&sources)
            .map(|((name, _), s)| (name.as_str(), &s.origin, &s.header)),
    )?;
    let files: serde_json::Map<String, serde_json::Value> = inputs
        .iter()
        .map(|(name, path)| (name.clone(), provenance(path).into()))
        .collect();
    let source = serde_json::json!({ "format": "npy", "files": files });
    write_dataset(out, schema, rows, &mut sources, options, source)
}

/// Imports every array of an `.npz` archive (as written by `np.savez` or
/// `np.savez_compressed`) as a column named by its key. Members are read side by side
/// in blocks; each has its own handle on the archive, since a deflated member can only be
/// read from its start.
pub fn import_npz(path: &Path, out: &Path, options: WriterOptions) -> Result<Manifest> {
    let open = || -> Result<ZipArchive<File>> {
        let file = File::open(path).map_err(|e| StoreError::io(path, e))?;
        ZipArchive::new(file).map_err(|e| {
            StoreError::import(path, format!("is not a readable .npz (zip) archive: {e}"))
        })
    };
    let mut archive = open()?;
    let mut members = Vec::with_capacity(archive.len());
    for index in 0..archive.len() {
        let entry = archive
            .by_index_data(index)
            .map_err(|e| StoreError::import(path, format!("member {index}: {e}")))?;
        let name = entry
            .name()
            .map_err(|e| StoreError::import(path, format!("member {index}: {e}")))?
            .into_owned();
        let Some(key) = name.strip_suffix(".npy").map(str::to_owned) else {
            return Err(StoreError::import(
                path,
                format!("member `{name}` is not an .npy array"),
            ));
        };
        if entry.encrypted() {
            return Err(StoreError::import(
                path,
                format!("member `{name}` is encrypted"),
            ));
        }
        if !matches!(
            entry.compression(),
            CompressionMethod::Stored | CompressionMethod::Deflated
        ) {
            return Err(StoreError::import(
                path,
                format!(
                    "member `{name}` is compressed with {}; only stored and deflated members are supported",
                    entry.compression()
                ),
            ));
        }
        members.push((index, name, key, entry.size()));
    }
    if members.is_empty() {
        return Err(StoreError::import(path, "holds no arrays"));
    }
    let mut headers = Vec::with_capacity(members.len());
    for (index, name, _, size) in &members {
        let origin = Origin {
            path: path.to_owned(),
            member: Some(name.clone()),
        };
        let mut member = archive.by_index(*index).map_err(|e| origin.err(e))?;
        let header = member_header(&mut member, &origin)?;
        let expected = header.data_offset.saturating_add(header.data_bytes);
        if *size != expected {
            return Err(origin.err(format!(
                "holds {size} bytes, but its header describes {expected} ({:?} {})",
                header.shape, header.dtype
            )));
        }
        headers.push((origin, header));
    }
    drop(archive);

    // Everything is checked before the output is created.
    let (rows, schema) = plan(
        members
            .iter()
            .zip(&headers)
            .map(|((_, _, key, _), (origin, header))| (key.as_str(), origin, header)),
    )?;

    let mut archives = Vec::with_capacity(members.len());
    for _ in &members {
        archives.push(open()?);
    }
    let mut sources = Vec::with_capacity(members.len());
    for ((archive, (index, ..)), (origin, header)) in archives.iter_mut().zip(&members).zip(headers)
    {
        let mut reader = archive.by_index(*index).map_err(|e| origin.err(e))?;
        // Reading the header again is the way to the data: a deflated member cannot seek.
        let again = member_header(&mut reader, &origin)?;
        if again != header {
            return Err(origin.err("changed while being imported"));
        }
        sources.push(Source {
            origin,
            header,
            reader,
        });
    }
    let arrays: serde_json::Map<String, serde_json::Value> = members
        .iter()
        .map(|(_, name, key, _)| (key.clone(), name.clone().into()))
        .collect();
    let source =
        serde_json::json!({ "format": "npz", "file": provenance(path), "members": arrays });
    write_dataset(out, schema, rows, &mut sources, options, source)
}

/// An archive member's header, with messages naming the member.
fn member_header(reader: &mut dyn Read, origin: &Origin) -> Result<NpyHeader> {
    let header = read_npy_header(reader, &origin.path).map_err(|e| match e {
        StoreError::Import { message, .. } => origin.err(message),
        e => e,
    })?;
    if header.fortran_order && header.shape.len() > 1 {
        // A member is a stream (often deflated): its columns cannot be read side by side.
        return Err(origin.err(
            "is stored in Fortran (column-major) order, which an .npz member cannot be read in; \
             save np.ascontiguousarray(a) in the archive, or save the array as its own .npy",
        ));
    }
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(dict: &str) -> Result<NpyHeader, String> {
        parse_header(dict, (1, 0), 128)
    }

    #[test]
    fn parses_what_numpy_writes() {
        let h = header("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }   \n").unwrap();
        assert_eq!(h.dtype, DType::F32);
        assert!(!h.big_endian);
        assert_eq!(h.shape, vec![3, 4]);
        assert_eq!(h.data_bytes, 48);
        let h = header("{'descr': '>i8', 'fortran_order': False, 'shape': (5L,)}").unwrap();
        assert_eq!(
            (h.dtype, h.big_endian, h.shape),
            (DType::I64, true, vec![5])
        );
        let h = header("{\"shape\": (), \"fortran_order\": False, \"descr\": \"|b1\"}").unwrap();
        assert_eq!((h.dtype, h.shape.len(), h.data_bytes), (DType::Bool, 0, 1));
    }

    #[test]
    fn rejects_what_it_cannot_hold() {
        let h = header("{'descr': '<f4', 'fortran_order': True, 'shape': (3, 4), }").unwrap();
        assert!(h.fortran_order, "Fortran order is read, not refused");
        let cases = [
            (
                "{'descr': '|O', 'fortran_order': False, 'shape': (3,), }",
                "object",
            ),
            (
                "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (3,), }",
                "structured",
            ),
            (
                "{'descr': '<c8', 'fortran_order': False, 'shape': (3,), }",
                "complex",
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (-3,), }",
                "negative",
            ),
            ("{'descr': '<f4', 'fortran_order': False}", "keys"),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), 'x': 1}",
                "unexpected key",
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (3,)} junk",
                "after",
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (3,",
                "ended",
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999, 99999999999, 99999999999)}",
                "too large",
            ),
            (
                "{'descr': '<f4' 'fortran_order': False, 'shape': (3,)}",
                "expected",
            ),
            ("[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[", "nested"),
        ];
        for (dict, expect) in cases {
            let err = header(dict).unwrap_err();
            assert!(err.contains(expect), "{dict}: {err}");
        }
    }

    #[test]
    fn never_panics_on_garbage() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let alphabet: Vec<char> = "{}()[]'\",: 0123456789LTrueFalseNone<>|f4i8\\\n"
            .chars()
            .collect();
        for _ in 0..20_000 {
            let len = (state % 48) as usize;
            let text: String = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    alphabet[(state % alphabet.len() as u64) as usize]
                })
                .collect();
            let _ = header(&text);
        }
    }
}
