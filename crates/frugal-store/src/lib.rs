//! Out-of-core datasets for frugal: a directory of safetensors shards plus a
//! `manifest.json`, written by one or many writers, streamed back in a deterministic,
//! resumable epoch order with memory that does not grow with the dataset.
//!
//! The on-disk format is specified in `docs/format.md`. In short: [`DatasetWriter`] (or
//! several [`PartWriter`]s and [`merge_parts`]) writes; [`Dataset::open`] and
//! [`Dataset::stream`] read, in an [`Order`] that is a pure function of the seed, epoch,
//! shard sizes and ranks; [`verify`] checks every byte.
//!
//! ```
//! use frugal_store::{Column, DType, Dataset, DatasetWriter, Order, OrderSpec, Schema};
//! use frugal_store::{StreamOptions, WriterOptions};
//!
//! let dir = tempfile::tempdir()?;
//! let schema = Schema::new(vec![
//!     Column::new("x", DType::F32, [2]),
//!     Column::new("label", DType::U8, []),
//! ])?;
//! let mut writer = DatasetWriter::create(dir.path(), schema, WriterOptions::default())?;
//! let x: Vec<u8> = (0..8).flat_map(|i| (i as f32).to_le_bytes()).collect();
//! writer.push_rows(4, &[&x, &[0, 1, 0, 1]])?;
//! writer.finish()?;
//!
//! // One epoch in a shuffled order fixed by the seed, two samples per batch.
//! let data = Dataset::open(dir.path())?;
//! let spec = OrderSpec { order: Order::Full, window: 4, spread: 1 };
//! let mut labels = Vec::new();
//! for batch in data.stream(StreamOptions::new(spec, 7, 0, 2))? {
//!     let batch = batch?;
//!     labels.extend_from_slice(batch.column("label").unwrap().bytes());
//! }
//! labels.sort();
//! assert_eq!(labels, [0, 0, 1, 1]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod bench;
mod dtype;
mod error;
mod fsutil;
pub mod import;
mod manifest;
pub mod order;
mod reader;
pub mod shard;
pub mod synthetic;
mod verify;
mod writer;

pub use dtype::DType;
pub use error::{Result, StoreError};
pub use fsutil::{atomic_write, atomic_write_with};
pub use manifest::{
    Column, FORMAT_VERSION, MANIFEST_FILE, Manifest, Schema, ShardEntry, shard_file_name,
};
pub use order::{EpochPlan, Order, OrderSpec, SampleRef, rank_range};
pub use reader::{
    AlignedBytes, Batch, ColumnData, Dataset, ReadState, Stream, StreamOptions, Verify,
};
pub use shard::ShardBuffer;
pub use verify::{ShardFault, VerifyReport, check_files, verify};
pub use writer::{
    DEFAULT_SHARD_BYTES, DatasetWriter, NextShard, PartWriter, WriterOptions, generate_shards,
    merge_parts, recorded_shards, samples_per_shard,
};
