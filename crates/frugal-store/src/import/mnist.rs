//! MNIST's IDX files: `train-images-idx3-ubyte` (magic `0x00000803`, then the count, rows
//! and columns as big-endian u32, then the pixels) and `train-labels-idx1-ubyte` (magic
//! `0x00000801`, the count, then one byte per label), gzip-compressed as distributed or
//! already unpacked.

use std::fs::File;
use std::io::{BufReader, ErrorKind, Read, Seek, SeekFrom};
use std::path::Path;

use flate2::read::MultiGzDecoder;

use super::{at_end, block_rows, provenance};
use crate::dtype::DType;
use crate::error::{Result, StoreError};
use crate::manifest::{Column, Manifest, Schema};
use crate::writer::{DatasetWriter, WriterOptions};

const IMAGES_MAGIC: u32 = 0x0000_0803;
const LABELS_MAGIC: u32 = 0x0000_0801;

/// An open IDX file: its dimensions and a reader positioned at its first element.
struct Idx {
    dims: Vec<usize>,
    reader: Box<dyn Read>,
    gzip: bool,
}

/// Opens an IDX file, unpacking it on the fly when it starts with the gzip magic.
fn open_idx(path: &Path, magic: u32, what: &str) -> Result<Idx> {
    let mut file = File::open(path).map_err(|e| StoreError::io(path, e))?;
    let mut sniff = [0u8; 2];
    let got = read_up_to(&mut file, &mut sniff).map_err(|e| StoreError::io(path, e))?;
    file.seek(SeekFrom::Start(0))
        .map_err(|e| StoreError::io(path, e))?;
    let gzip = got == 2 && sniff == [0x1f, 0x8b];
    let mut reader: Box<dyn Read> = if gzip {
        Box::new(MultiGzDecoder::new(BufReader::new(file)))
    } else {
        Box::new(BufReader::new(file))
    };
    let mut head = [0u8; 4];
    read_exact(&mut reader, &mut head, path, "the IDX header")?;
    let found = u32::from_be_bytes(head);
    if found != magic {
        let hint = match found {
            IMAGES_MAGIC => " (it holds images)",
            LABELS_MAGIC => " (it holds labels)",
            _ if head[..2] != [0, 0] => " (it is not an IDX file)",
            _ if head[2] != 0x08 => " (its elements are not unsigned bytes)",
            _ => "",
        };
        return Err(StoreError::import(
            path,
            format!(
                "expected an IDX file of {what} (magic 0x{magic:08x}), found magic 0x{found:08x}{hint}"
            ),
        ));
    }
    let ndims = usize::from(head[3]);
    let mut dims = Vec::with_capacity(ndims);
    for _ in 0..ndims {
        let mut d = [0u8; 4];
        read_exact(&mut reader, &mut d, path, "the IDX header")?;
        dims.push(u32::from_be_bytes(d) as usize);
    }
    Ok(Idx { dims, reader, gzip })
}

/// `read` until `buf` is full or the input ends; the count read.
fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn read_exact(reader: &mut dyn Read, buf: &mut [u8], path: &Path, what: &str) -> Result<()> {
    reader.read_exact(buf).map_err(|e| {
        if e.kind() == ErrorKind::UnexpectedEof {
            StoreError::import(path, format!("is truncated: it ends inside {what}"))
        } else {
            // A gzip stream that does not decode comes back as an io error too.
            StoreError::import(path, format!("reading {what}: {e}"))
        }
    })
}

/// Checks that nothing follows the data.
fn expect_end(reader: &mut dyn Read, path: &Path) -> Result<()> {
    match at_end(reader) {
        Ok(true) => Ok(()),
        Ok(false) => Err(StoreError::import(
            path,
            "has bytes after the data its header describes",
        )),
        Err(e) => Err(StoreError::import(path, format!("reading the data: {e}"))),
    }
}

/// Imports an MNIST-style pair of IDX files into a new dataset in `out` with columns
/// `image` (`u8`, `[rows, cols]`) and `label` (`u8`, scalar). Either file may be
/// gzip-compressed; both are streamed in blocks.
pub fn import_mnist(
    images: &Path,
    labels: &Path,
    out: &Path,
    options: WriterOptions,
) -> Result<Manifest> {
    let mut img = open_idx(images, IMAGES_MAGIC, "images")?;
    let mut lab = open_idx(labels, LABELS_MAGIC, "labels")?;
    let &[count, rows, cols] = img.dims.as_slice() else {
        return Err(StoreError::import(
            images,
            format!(
                "an images file has 3 dimensions (count, rows, columns), this one has {}",
                img.dims.len()
            ),
        ));
    };
    let &[label_count] = lab.dims.as_slice() else {
        return Err(StoreError::import(
            labels,
            format!(
                "a labels file has 1 dimension (count), this one has {}",
                lab.dims.len()
            ),
        ));
    };
    if rows == 0 || cols == 0 {
        return Err(StoreError::import(
            images,
            format!("images are {rows}×{cols} pixels"),
        ));
    }
    if count != label_count {
        return Err(StoreError::import(
            labels,
            format!(
                "holds {label_count} labels but {} holds {count} images",
                images.display()
            ),
        ));
    }
    for (idx, path) in [(&img, images), (&lab, labels)] {
        // A raw file's size is known up front, so truncation is reported before any
        // output is written; a gzip stream only tells at its end.
        if !idx.gzip {
            let len = std::fs::metadata(path)
                .map_err(|e| StoreError::io(path, e))?
                .len();
            let header = 4 + 4 * idx.dims.len() as u64;
            let data = idx.dims.iter().map(|&d| d as u64).product::<u64>();
            if len != header + data {
                return Err(StoreError::import(
                    path,
                    format!(
                        "is {len} bytes, but its header describes {} ({header} of header, {data} of data)",
                        header + data
                    ),
                ));
            }
        }
    }

    let schema = Schema::new(vec![
        Column::new("image", DType::U8, [rows, cols]),
        Column::new("label", DType::U8, []),
    ])?;
    let pixels = rows * cols;
    let block = block_rows([pixels, 1]);
    let mut writer = DatasetWriter::replay(out, schema, options)?;
    writer.metadata_mut().insert(
        "source".into(),
        serde_json::json!({
            "format": "idx",
            "images": provenance(images),
            "labels": provenance(labels),
        }),
    );
    let mut image_buf = Vec::with_capacity(block.min(count) * pixels);
    let mut label_buf = Vec::with_capacity(block.min(count));
    let mut done = 0;
    while done < count {
        let take = block.min(count - done);
        image_buf.resize(take * pixels, 0);
        label_buf.resize(take, 0);
        let what = format!("images {done}..{}", done + take);
        read_exact(&mut img.reader, &mut image_buf, images, &what)?;
        let what = format!("labels {done}..{}", done + take);
        read_exact(&mut lab.reader, &mut label_buf, labels, &what)?;
        writer.push_rows(take as u64, &[&image_buf, &label_buf])?;
        done += take;
    }
    expect_end(&mut img.reader, images)?;
    expect_end(&mut lab.reader, labels)?;
    writer.finish()
}
