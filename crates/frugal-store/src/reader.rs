//! Streaming reads: one epoch in a chosen order, window by window, with a bounded number
//! of windows read ahead on a background thread.
//!
//! Reads are `pread`s of whole segments (contiguous rows of a shard) into reused buffers,
//! so the process never maps dataset files: resident memory is the windows in flight and
//! the batch being built, whatever the dataset size, and a file truncated under a running
//! reader is a read error, not a SIGBUS.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::dtype::DType;
use crate::error::{Result, StoreError};
use crate::manifest::{Manifest, parse_checksum};
use crate::order::{EpochPlan, OrderSpec, rank_range};
use crate::shard::{ShardLayout, checksum_file, open_shard};

/// Shard files kept open at once: enough for a window's spread, few enough for any
/// descriptor limit.
const OPEN_FILES: usize = 64;
/// Windows whose reads are handed to the kernel (`WILLNEED`) ahead of the one being read.
/// They fill the page cache, not this process: memory stays flat.
const ADVISE_AHEAD: usize = 2;

/// An opened dataset: the manifest, checked against the files on disk.
#[derive(Debug, Clone)]
pub struct Dataset {
    dir: PathBuf,
    manifest: Arc<Manifest>,
}

impl Dataset {
    /// Opens the dataset in `dir`: the manifest must be complete and every shard present
    /// with the size the manifest records. Headers are checked when a shard is first read.
    pub fn open(dir: &Path) -> Result<Self> {
        let manifest = Manifest::load(dir)?;
        if !manifest.complete {
            return Err(StoreError::Directory {
                dir: dir.to_owned(),
                problem: "is unfinished: its writer stopped before the end; run the same command again to complete it".into(),
            });
        }
        if let Some(f) = crate::verify::check_files(dir, &manifest)
            .into_iter()
            .next()
        {
            return Err(StoreError::shard(dir.join(&f.file), f.fault));
        }
        Ok(Self {
            dir: dir.to_owned(),
            manifest: Arc::new(manifest),
        })
    }

    /// The dataset restricted to the shards in `range` (by position in the manifest): a
    /// split by shard, such as held-out simulations when each shard is one. Orders,
    /// streams and checksums work on the view as on a dataset of those shards alone.
    pub fn select_shards(&self, range: std::ops::Range<usize>) -> Result<Self> {
        let all = self.manifest.shards.len();
        if range.start >= range.end || range.end > all {
            return Err(StoreError::Directory {
                dir: self.dir.clone(),
                problem: format!(
                    "has {all} shards; shards {}..{} is not a non-empty part of them",
                    range.start, range.end
                ),
            });
        }
        let mut manifest = (*self.manifest).clone();
        manifest.shards = manifest.shards[range].to_vec();
        manifest.samples = manifest.shards.iter().map(|s| s.samples).sum();
        Ok(Self {
            dir: self.dir.clone(),
            manifest: Arc::new(manifest),
        })
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The dataset directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Samples in the dataset.
    pub fn len(&self) -> u64 {
        self.manifest.samples
    }

    /// True when the dataset holds no samples.
    pub fn is_empty(&self) -> bool {
        self.manifest.samples == 0
    }

    /// The order of one epoch under `spec`.
    pub fn plan(&self, spec: OrderSpec, seed: u64, epoch: u64) -> EpochPlan {
        EpochPlan::new(spec, seed, epoch, &self.manifest.shard_sizes())
    }

    /// Streams one epoch (or the rest of it) as batches.
    pub fn stream(&self, options: StreamOptions) -> Result<Stream> {
        Stream::start(self.clone(), options)
    }
}

/// Where a reader is in its epoch; saving it with a checkpoint and passing it back as
/// [`StreamOptions::state`] continues with exactly the samples not yet handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadState {
    /// Seed of the order.
    pub seed: u64,
    /// Epoch number.
    pub epoch: u64,
    /// Samples of this rank's slice already handed out.
    pub consumed: u64,
}

/// What to read and how.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// Order and window size.
    pub spec: OrderSpec,
    /// Seed, epoch and position to start from.
    pub state: ReadState,
    /// This reader's rank.
    pub rank: u64,
    /// Number of ranks reading the same epoch.
    pub ranks: u64,
    /// Samples per batch; the last batch of a slice may be smaller.
    pub batch_size: usize,
    /// Windows read ahead of the one being consumed (at least 1).
    pub prefetch: usize,
    /// How shard contents are checked against their checksums.
    pub verify: Verify,
}

/// When a stream checks the data it reads against the manifest's checksums. Sizes and
/// headers are always checked when a shard is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verify {
    /// Never.
    Off,
    /// Hash every row as it is read and compare each column's sum of row hashes with the
    /// manifest once every row of a shard has been read: no extra reads, any order; a
    /// damaged shard fails the epoch at the window holding its last row. Shards this
    /// stream reads only in part (rank edges, a resumed epoch, `full` order with several
    /// ranks) are hashed whole before their first use instead.
    #[default]
    OnRead,
    /// Hash each whole shard before its first use: catches damage before any of its
    /// samples are handed out, at the cost of reading every shard twice.
    Before,
}

impl StreamOptions {
    /// Options for a single reader from the start of `epoch`.
    pub fn new(spec: OrderSpec, seed: u64, epoch: u64, batch_size: usize) -> Self {
        Self {
            spec,
            state: ReadState {
                seed,
                epoch,
                consumed: 0,
            },
            rank: 0,
            ranks: 1,
            batch_size,
            prefetch: 1,
            verify: Verify::OnRead,
        }
    }
}

/// A byte buffer aligned to 8 bytes, so any column can be viewed as its element type.
/// A batch's buffers go back to their stream's pool when dropped, so a steady stream
/// allocates (and page-faults) nothing after its first batches.
#[derive(Debug, Default)]
pub struct AlignedBytes {
    words: Vec<u64>,
    len: usize,
    pool: Option<Arc<Pool>>,
}

/// Spare batch buffers of one stream.
#[derive(Debug, Default)]
struct Pool(Mutex<Vec<Vec<u64>>>);

/// Buffers a pool keeps: a few batches' worth of columns.
const POOL_BUFFERS: usize = 16;

impl Pool {
    fn take(self: &Arc<Self>, len: usize) -> AlignedBytes {
        let words = self.0.lock().expect("pool").pop().unwrap_or_default();
        let mut b = AlignedBytes {
            words,
            len: 0,
            pool: Some(Arc::clone(self)),
        };
        b.resize(len);
        b
    }
}

impl Drop for AlignedBytes {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            let mut spare = pool.0.lock().expect("pool");
            if spare.len() < POOL_BUFFERS {
                spare.push(std::mem::take(&mut self.words));
            }
        }
    }
}

impl Clone for AlignedBytes {
    fn clone(&self) -> Self {
        Self {
            words: self.words.clone(),
            len: self.len,
            pool: None,
        }
    }
}

impl AlignedBytes {
    fn resize(&mut self, len: usize) {
        if self.words.len() < len.div_ceil(8) {
            self.words.resize(len.div_ceil(8), 0);
        }
        self.len = len;
    }

    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        &bytemuck::cast_slice::<u64, u8>(&self.words)[..self.len]
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut bytemuck::cast_slice_mut::<u64, u8>(&mut self.words)[..self.len]
    }
}

/// One column of a batch: `batch × shape` elements, contiguous, row-major.
#[derive(Debug, Clone)]
pub struct ColumnData {
    /// Column name.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Shape including the batch dimension.
    pub shape: Vec<usize>,
    data: AlignedBytes,
}

impl ColumnData {
    /// A column built in memory (not read from a dataset) from f32 values; `shape`
    /// includes the batch dimension and must account for every value.
    pub fn from_f32(name: &str, shape: Vec<usize>, values: &[f32]) -> Result<Self> {
        if shape.iter().product::<usize>() != values.len() {
            return Err(StoreError::Rows(format!(
                "column `{name}`: shape {shape:?} does not hold {} values",
                values.len()
            )));
        }
        let bytes: &[u8] = bytemuck::cast_slice(values);
        let mut data = AlignedBytes {
            words: Vec::new(),
            len: 0,
            pool: None,
        };
        data.resize(bytes.len());
        data.bytes_mut().copy_from_slice(bytes);
        Ok(Self {
            name: name.to_owned(),
            dtype: DType::F32,
            shape,
            data,
        })
    }

    /// The raw little-endian bytes.
    pub fn bytes(&self) -> &[u8] {
        self.data.bytes()
    }

    /// The elements as `T`, when `T` has the column's element size (`f32` for F32, `u16`
    /// for F16/BF16 bits, `u8` for U8/BOOL, ...).
    pub fn as_slice<T: bytemuck::Pod>(&self) -> Option<&[T]> {
        (std::mem::size_of::<T>() == self.dtype.size())
            .then(|| bytemuck::try_cast_slice(self.bytes()).ok())
            .flatten()
    }
}

/// A batch: one contiguous buffer per column, ready to become a tensor.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Columns in schema order.
    pub columns: Vec<ColumnData>,
    /// Samples in the batch.
    pub samples: usize,
    /// The reader's state after this batch: save it to resume after this batch.
    pub state: ReadState,
}

impl Batch {
    /// A column by name.
    pub fn column(&self, name: &str) -> Option<&ColumnData> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// A window's samples as read: per column, rows in segment order.
struct WindowBuf {
    columns: Vec<AlignedBytes>,
    /// Buffer rows in emission order.
    emit: Vec<u32>,
    /// First emission index handed out (positions before it belong to an earlier reader).
    from: usize,
    /// One past the last emission index handed out.
    to: usize,
}

/// The batches of one epoch. Dropping it stops the read-ahead thread.
pub struct Stream {
    rx: Option<Receiver<Result<WindowBuf>>>,
    recycle: Option<SyncSender<WindowBuf>>,
    worker: Option<JoinHandle<()>>,
    current: Option<(WindowBuf, usize)>,
    columns: Vec<(String, DType, Vec<usize>, usize)>,
    pool: Arc<Pool>,
    batch_size: usize,
    state: ReadState,
    remaining: u64,
    failed: bool,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("state", &self.state)
            .field("remaining", &self.remaining)
            .finish_non_exhaustive()
    }
}

impl Stream {
    fn start(dataset: Dataset, o: StreamOptions) -> Result<Self> {
        if o.ranks == 0 || o.rank >= o.ranks {
            return Err(StoreError::Setting {
                setting: "rank",
                value: format!("{} of {}", o.rank, o.ranks),
                problem: "no such rank".into(),
            });
        }
        if o.batch_size == 0 {
            return Err(StoreError::Setting {
                setting: "batch size",
                value: "0".into(),
                problem: "must be at least 1".into(),
            });
        }
        let plan = dataset.plan(o.spec, o.state.seed, o.state.epoch);
        let (lo, hi) = rank_range(plan.total(), o.rank, o.ranks);
        if o.state.consumed > hi - lo {
            return Err(StoreError::Setting {
                setting: "saved position",
                value: format!("{} samples consumed", o.state.consumed),
                problem: format!(
                    "past the end of this rank's {} samples; was it saved with other ranks or another dataset?",
                    hi - lo
                ),
            });
        }
        let begin = lo + o.state.consumed;
        let columns = dataset
            .manifest
            .schema
            .columns
            .iter()
            .map(|c| (c.name.clone(), c.dtype, c.shape.clone(), c.sample_bytes()))
            .collect();
        let prefetch = o.prefetch.clamp(1, 8);
        let (tx, rx) = sync_channel(prefetch);
        let (recycle, recycled) = sync_channel(prefetch + 2);
        let verify = o.verify;
        let worker = std::thread::Builder::new()
            .name("frugal-store-read".into())
            .spawn(move || {
                let mut reader = ShardReader::new(dataset, verify);
                read_ahead(&plan, begin, hi, &mut reader, &tx, &recycled, prefetch + 1);
            })
            .map_err(|e| StoreError::Failed(format!("cannot start the read-ahead thread: {e}")))?;
        Ok(Self {
            rx: Some(rx),
            recycle: Some(recycle),
            worker: Some(worker),
            current: None,
            columns,
            pool: Arc::default(),
            batch_size: o.batch_size,
            state: o.state,
            remaining: hi - begin,
            failed: false,
        })
    }

    /// The state after the last batch handed out.
    pub fn state(&self) -> ReadState {
        self.state
    }

    /// Samples of this rank's slice not yet handed out.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    fn next_batch(&mut self) -> Option<Result<Batch>> {
        if self.failed || self.remaining == 0 {
            return None;
        }
        let n = (self.batch_size as u64).min(self.remaining) as usize;
        let mut out: Vec<AlignedBytes> = self
            .columns
            .iter()
            .map(|c| self.pool.take(n * c.3))
            .collect();
        let mut filled = 0;
        while filled < n {
            if self.current.as_ref().is_none_or(|(w, k)| *k >= w.to) {
                if let (Some((old, _)), Some(recycle)) = (self.current.take(), &self.recycle) {
                    let _ = recycle.try_send(old);
                }
                match self.rx.as_ref()?.recv() {
                    Ok(Ok(w)) => {
                        let from = w.from;
                        self.current = Some((w, from));
                    }
                    Ok(Err(e)) => {
                        self.failed = true;
                        return Some(Err(e));
                    }
                    Err(_) => {
                        self.failed = true;
                        let why = match self.worker.take().map(JoinHandle::join) {
                            Some(Err(panic)) => panic
                                .downcast_ref::<&str>()
                                .map(|s| s.to_string())
                                .or_else(|| panic.downcast_ref::<String>().cloned())
                                .unwrap_or_else(|| "a panic".into()),
                            _ => "no reason given".into(),
                        };
                        return Some(Err(StoreError::Failed(format!(
                            "the read-ahead thread stopped before the end of the epoch: {why}"
                        ))));
                    }
                }
            }
            let (w, k) = self.current.as_mut().expect("window");
            let take = (w.to - *k).min(n - filled);
            for (ci, col) in self.columns.iter().enumerate() {
                let width = col.3;
                let src = w.columns[ci].bytes();
                let dst = out[ci].bytes_mut();
                for (i, &row) in w.emit[*k..*k + take].iter().enumerate() {
                    let s = row as usize * width;
                    let d = (filled + i) * width;
                    dst[d..d + width].copy_from_slice(&src[s..s + width]);
                }
            }
            *k += take;
            filled += take;
        }
        self.remaining -= n as u64;
        self.state.consumed += n as u64;
        let columns = self
            .columns
            .iter()
            .zip(out)
            .map(|((name, dtype, shape, _), data)| {
                let mut full = vec![n];
                full.extend_from_slice(shape);
                ColumnData {
                    name: name.clone(),
                    dtype: *dtype,
                    shape: full,
                    data,
                }
            })
            .collect();
        Some(Ok(Batch {
            columns,
            samples: n,
            state: self.state,
        }))
    }
}

impl Iterator for Stream {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_batch()
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        // Closing both channels makes the read-ahead thread's next send or wait for a
        // buffer fail, and it returns.
        self.rx = None;
        self.recycle = None;
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

fn read_ahead(
    plan: &EpochPlan,
    begin: u64,
    end: u64,
    reader: &mut ShardReader,
    tx: &SyncSender<Result<WindowBuf>>,
    recycled: &Receiver<WindowBuf>,
    buffers: usize,
) {
    if begin >= end {
        return;
    }
    // A stream over the whole epoch reads every shard in full.
    if reader.verify == Verify::OnRead && (begin, end) != (0, plan.total()) {
        reader.partial = partly_read_shards(plan, begin, end);
    }
    // At most `buffers` windows exist: the one being consumed and those read ahead.
    let mut allocated = 0;
    let mut advised = std::collections::VecDeque::new();
    for w in plan.window_of(begin)..plan.windows() {
        let (ws, we) = plan.window_range(w);
        if ws >= end {
            return;
        }
        let content = advised.pop_front().unwrap_or_else(|| plan.window(w));
        // Ask the kernel for the following windows now, so the disk always has requests
        // queued while this one is copied, hashed and consumed: with one window ahead it
        // idled whenever hashing a window took longer than the disk took to fetch the next.
        while advised.len() < ADVISE_AHEAD {
            let a = w + 1 + advised.len();
            if a >= plan.windows() || plan.window_range(a).0 >= end {
                break;
            }
            let following = plan.window(a);
            reader.will_need(&following.segments);
            advised.push_back(following);
        }
        let buf = match recycled.try_recv() {
            Ok(b) => Some(b),
            Err(_) if allocated < buffers => {
                allocated += 1;
                None
            }
            Err(_) => match recycled.recv() {
                Ok(b) => Some(b),
                Err(_) => return,
            },
        };
        let result = reader.read_window(&content.segments, buf).map(|mut buf| {
            buf.from = begin.saturating_sub(ws) as usize;
            buf.to = (end.min(we) - ws) as usize;
            buf.emit = content.emit;
            buf
        });
        let failed = result.is_err();
        if tx.send(result).is_err() || failed {
            return;
        }
    }
}

/// Shards of which this stream reads some rows but not all (the edges of a rank's slice,
/// the start of a resumed epoch, every shard under `full` order with several ranks): their
/// row-hash sums never complete, so they are checked whole before first use instead.
fn partly_read_shards(plan: &EpochPlan, begin: u64, end: u64) -> HashSet<u32> {
    let mut rows: HashMap<u32, u64> = HashMap::new();
    for w in plan.window_of(begin)..plan.windows() {
        if plan.window_range(w).0 >= end {
            break;
        }
        for seg in plan.segments(w) {
            *rows.entry(seg.shard).or_default() += seg.len;
        }
    }
    let sizes = plan.shard_sizes();
    rows.into_iter()
        .filter(|&(shard, n)| n < sizes[shard as usize])
        .map(|(shard, _)| shard)
        .collect()
}

/// Opens shards on demand (checking each header against the manifest once), reads
/// segments, and checks checksums as [`Verify`] asks.
struct ShardReader {
    dataset: Dataset,
    /// Bytes per sample of each column.
    widths: Vec<u64>,
    open: HashMap<u32, (File, ShardLayout)>,
    checked: HashSet<u32>,
    streaming: HashMap<u32, StreamingCheck>,
    verify: Verify,
    /// Shards checked whole before use under `OnRead` (see [`partly_read_shards`]).
    partial: HashSet<u32>,
}

/// Per-column sums of row hashes of a shard, and rows seen, while it is being read.
struct StreamingCheck {
    sums: Vec<u64>,
    rows: Vec<u64>,
}

impl ShardReader {
    fn new(dataset: Dataset, verify: Verify) -> Self {
        let widths = dataset
            .manifest
            .schema
            .columns
            .iter()
            .map(|c| c.sample_bytes() as u64)
            .collect();
        Self {
            dataset,
            widths,
            open: HashMap::new(),
            checked: HashSet::new(),
            streaming: HashMap::new(),
            verify,
            partial: HashSet::new(),
        }
    }

    /// Adds the row hashes of rows `[start, start + n)` of column `ci` of `shard`; once
    /// every row of every column has been seen, compares the sums with the manifest. Sums
    /// do not depend on order, so this works for every order and for resumed epochs (a
    /// shard only part of which this stream reads is not checked).
    fn track(&mut self, shard: u32, ci: usize, start: u64, n: u64, bytes: &[u8]) -> Result<()> {
        if self.verify != Verify::OnRead || self.checked.contains(&shard) || n == 0 {
            return Ok(());
        }
        let columns = self.dataset.manifest.schema.columns.len();
        let width = bytes.len() / n as usize;
        let check = self
            .streaming
            .entry(shard)
            .or_insert_with(|| StreamingCheck {
                sums: vec![0; columns],
                rows: vec![0; columns],
            });
        for (k, row) in bytes.chunks_exact(width.max(1)).enumerate() {
            check.sums[ci] = check.sums[ci].wrapping_add(xxh3_64_with_seed(row, start + k as u64));
        }
        check.rows[ci] += n;
        let entry = &self.dataset.manifest.shards[shard as usize];
        if check.rows.iter().all(|&r| r == entry.samples) {
            let check = self.streaming.remove(&shard).expect("present");
            self.checked.insert(shard);
            for (c, sum) in self.dataset.manifest.schema.columns.iter().zip(check.sums) {
                let want = &entry.column_checksums[&c.name];
                if Some(sum) != parse_checksum(want) {
                    return Err(StoreError::shard(
                        self.path(shard),
                        format!(
                            "column `{}` does not match its checksum (the manifest says {want}, the data sums to {}): the shard (or the manifest) is corrupted; `frugal data verify` lists every damaged shard",
                            c.name,
                            crate::manifest::format_checksum(sum)
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    fn path(&self, shard: u32) -> PathBuf {
        self.dataset
            .dir
            .join(&self.dataset.manifest.shards[shard as usize].file)
    }

    fn shard(&mut self, shard: u32) -> Result<&(File, ShardLayout)> {
        if !self.open.contains_key(&shard) {
            if self.open.len() >= OPEN_FILES {
                self.open.clear();
            }
            let entry = &self.dataset.manifest.shards[shard as usize];
            let path = self.path(shard);
            let whole = self.verify == Verify::Before
                || (self.verify == Verify::OnRead && self.partial.contains(&shard));
            if whole && !self.checked.contains(&shard) {
                let want = parse_checksum(&entry.checksum).expect("validated");
                let got = checksum_file(&path)?;
                if got != want {
                    return Err(StoreError::shard(
                        &path,
                        format!(
                            "checksum mismatch: the manifest says {}, the file hashes to {} (corrupted)",
                            entry.checksum,
                            crate::manifest::format_checksum(got)
                        ),
                    ));
                }
                self.checked.insert(shard);
            }
            let (file, layout) = open_shard(&path, &self.dataset.manifest.schema, entry)?;
            advise_sequential(&file);
            self.open.insert(shard, (file, layout));
        }
        Ok(&self.open[&shard])
    }

    /// Starts reading `segments` into the page cache without waiting. Advisory: a fault
    /// here surfaces when the segments are read.
    fn will_need(&mut self, segments: &[crate::order::Segment]) {
        let widths = self.widths.clone();
        for seg in segments {
            let Ok((file, layout)) = self.shard(seg.shard) else {
                continue;
            };
            for (offset, w) in layout.column_offsets.iter().zip(&widths) {
                let len = std::num::NonZeroU64::new(seg.len * w);
                let _ = rustix::fs::fadvise(
                    file,
                    offset + seg.start * w,
                    len,
                    rustix::fs::Advice::WillNeed,
                );
            }
        }
    }

    fn read_window(
        &mut self,
        segments: &[crate::order::Segment],
        buf: Option<WindowBuf>,
    ) -> Result<WindowBuf> {
        let widths = self.widths.clone();
        let rows: u64 = segments.iter().map(|s| s.len).sum();
        let mut buf = buf.unwrap_or_else(|| WindowBuf {
            columns: vec![AlignedBytes::default(); widths.len()],
            emit: Vec::new(),
            from: 0,
            to: 0,
        });
        for (col, w) in buf.columns.iter_mut().zip(&widths) {
            col.resize((rows * w) as usize);
        }
        let mut row = 0u64;
        for seg in segments {
            let path = self.path(seg.shard);
            let offsets = self.shard(seg.shard)?.1.column_offsets.clone();
            for (ci, w) in widths.iter().enumerate() {
                let file = &self.open[&seg.shard].0;
                let offset = offsets[ci] + seg.start * w;
                let range = (row * w) as usize..((row + seg.len) * w) as usize;
                let dst = &mut buf.columns[ci].bytes_mut()[range.clone()];
                file.read_exact_at(dst, offset).map_err(|e| {
                    if e.kind() == std::io::ErrorKind::UnexpectedEof {
                        StoreError::shard(
                            &path,
                            format!(
                                "ends before byte {} (truncated while in use?)",
                                offset + dst.len() as u64
                            ),
                        )
                    } else {
                        StoreError::io(&path, e)
                    }
                })?;
                self.track(
                    seg.shard,
                    ci,
                    seg.start,
                    seg.len,
                    &buf.columns[ci].bytes()[range],
                )?;
            }
            row += seg.len;
        }
        Ok(buf)
    }
}

/// Tells the kernel a file is read front to back, which doubles its read-ahead.
fn advise_sequential(file: &File) {
    let _ = rustix::fs::fadvise(file, 0, None, rustix::fs::Advice::Sequential);
}
