//! Importers: turn arrays kept in other formats into a dataset.
//!
//! - [`npy`]: numpy `.npy` files (one array per column) and `.npz` archives (every
//!   array a column), parsed here rather than through numpy.
//! - [`raw`]: flat binary files (`a.tofile()`, Fortran stream writes), their layout
//!   given by the user, row-major or column-major.
//! - [`mnist`]: the MNIST IDX files, gzip-compressed or raw.
//! - `hdf5` (crate feature `hdf5`, links the system libhdf5): named datasets of an HDF5
//!   file.
//!
//! Every importer reads its inputs in blocks of about [`BLOCK_BYTES`] per column and
//! hands them to a [`DatasetWriter`](crate::DatasetWriter), so memory stays flat however
//! large the input is. The first axis of every input is the sample axis; the remaining
//! axes are the per-sample shape. Inputs are checked (headers, sizes, matching lengths)
//! before anything is written, so a bad input leaves no half-made dataset behind; a fault
//! found only while streaming (a corrupt compressed member, say) leaves an incomplete
//! one, which [`Dataset::open`](crate::Dataset::open) refuses. The manifest's metadata
//! records the source files under `source`.

use std::io::{ErrorKind, Read};
use std::path::Path;

#[cfg(feature = "hdf5")]
pub mod hdf5;
pub mod mnist;
pub mod npy;
pub mod raw;

#[cfg(feature = "hdf5")]
pub use self::hdf5::import_hdf5;
pub use mnist::import_mnist;
pub use npy::{NpyHeader, import_npy, import_npz, read_npy_header};
pub use raw::{RawColumn, RawOrder, import_raw};

/// About how many bytes of each column an importer holds at a time: large enough that
/// reads are long and sequential, small enough that many columns fit in modest memory.
pub const BLOCK_BYTES: usize = 8 << 20;

/// Rows per block: as many as keep the widest column (`widths` are bytes per sample)
/// within [`BLOCK_BYTES`], at least one.
fn block_rows(widths: impl IntoIterator<Item = usize>) -> usize {
    let widest = widths.into_iter().max().unwrap_or(1).max(1);
    (BLOCK_BYTES / widest).max(1)
}

/// A path as provenance records it: absolute, so the manifest still says where the data
/// came from after the dataset is moved.
fn provenance(path: &Path) -> String {
    std::path::absolute(path)
        .unwrap_or_else(|_| path.to_owned())
        .display()
        .to_string()
}

/// Whether `reader` has nothing left. Reading past the end is also what makes a gzip or
/// zip stream check its CRC, so a corrupt stream fails here if nowhere earlier.
fn at_end(reader: &mut (impl Read + ?Sized)) -> std::io::Result<bool> {
    let mut probe = [0u8; 1];
    loop {
        match reader.read(&mut probe) {
            Ok(n) => return Ok(n == 0),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}
