//! Streaming reads: one epoch in a chosen order, as batches assembled by worker threads.
//!
//! Shards are memory-mapped and each batch is copied row by row straight from the page
//! cache into a contiguous, pooled buffer: one pass over memory per sample. The kernel is
//! asked for the next window's pages before they are needed (`WILLNEED`) and a window's
//! pages are released from the process once it has been consumed (`DONTNEED`), so resident
//! memory is bounded by the windows in flight and the batches queued, whatever the dataset
//! size. A shard truncated under a running reader is an error naming it, never a SIGBUS
//! (see `guard.rs`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::dtype::DType;
use crate::error::{Result, StoreError};
use crate::manifest::{Manifest, format_checksum, parse_checksum};
use crate::mapped::ShardMap;
use crate::order::{EpochPlan, OrderSpec, WindowContent, rank_range};
use crate::shard::{checksum_file, open_shard};

/// Shards kept mapped at once beyond those in use: enough for a window's spread, few
/// enough for any descriptor limit.
const OPEN_SHARDS: usize = 64;
/// Samples ahead of the copy whose pages are prefetched into the CPU cache.
const PREFETCH_DISTANCE: u64 = 2;
/// Batches each worker may have finished ahead of the consumer.
const QUEUED_PER_WORKER: usize = 2;

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
            return Err(StoreError::Invalid(format!(
                "{} is unfinished: its writer stopped before the end; run the same command again to complete it",
                dir.display()
            )));
        }
        for s in &manifest.shards {
            let path = dir.join(&s.file);
            let len = std::fs::metadata(&path)
                .map_err(|e| {
                    if e.kind() == std::io::ErrorKind::NotFound {
                        StoreError::shard(&path, "missing")
                    } else {
                        StoreError::io(&path, e)
                    }
                })?
                .len();
            if len != s.bytes {
                return Err(StoreError::shard(
                    &path,
                    format!(
                        "file is {len} bytes, the manifest says {} ({})",
                        s.bytes,
                        if len < s.bytes { "truncated" } else { "grown" }
                    ),
                ));
            }
        }
        Ok(Self {
            dir: dir.to_owned(),
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
    /// Windows whose pages are requested from the kernel ahead of the one being read.
    pub prefetch: usize,
    /// Threads assembling batches (at least 1).
    pub threads: usize,
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
    /// Hash every sample as it is copied into its batch and compare each column's sum of
    /// row hashes with the manifest once every row of a shard has been read: no extra
    /// reads, any order; a damaged shard fails the epoch at the batch holding its last
    /// row. A stream resumed mid-epoch checks only the shards it reads in full.
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
            threads: std::thread::available_parallelism().map_or(1, |n| n.get().min(4)),
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
const POOL_BUFFERS: usize = 8;

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

/// The batches of one epoch, in order. Dropping it stops the worker threads.
pub struct Stream {
    /// Batch `b` comes from worker `b % workers`.
    results: Vec<Receiver<Result<Batch>>>,
    workers: Vec<JoinHandle<()>>,
    next: usize,
    batches: usize,
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

/// What the workers of one stream share.
struct Shared {
    dataset: Dataset,
    plan: EpochPlan,
    /// Rank slice start: `consumed` counts from here.
    lo: u64,
    begin: u64,
    end: u64,
    batch_size: u64,
    prefetch: usize,
    verify: Verify,
    seed: u64,
    epoch: u64,
    widths: Vec<usize>,
    pool: Arc<Pool>,
    shards: Mutex<HashMap<u32, Arc<ShardMap>>>,
    /// Samples of each window consumed so far (windows not yet finished).
    windows: Mutex<HashMap<usize, u64>>,
    /// Windows before this one have had their pages requested.
    advised: AtomicUsize,
    /// Running column sums of row hashes and rows seen, per shard (`OnRead`).
    checks: Mutex<HashMap<u32, (Vec<u64>, u64)>>,
}

impl Stream {
    fn start(dataset: Dataset, o: StreamOptions) -> Result<Self> {
        if o.ranks == 0 || o.rank >= o.ranks {
            return Err(StoreError::Invalid(format!(
                "rank {} of {} ranks does not exist",
                o.rank, o.ranks
            )));
        }
        if o.batch_size == 0 {
            return Err(StoreError::Invalid("batch size must be at least 1".into()));
        }
        let plan = dataset.plan(o.spec, o.state.seed, o.state.epoch);
        let (lo, hi) = rank_range(plan.total(), o.rank, o.ranks);
        if o.state.consumed > hi - lo {
            return Err(StoreError::Invalid(format!(
                "the saved position ({} samples consumed) is past the end of this rank's {} samples; was it saved with other ranks or another dataset?",
                o.state.consumed,
                hi - lo
            )));
        }
        let begin = lo + o.state.consumed;
        let batches = (hi - begin).div_ceil(o.batch_size as u64) as usize;
        let widths = dataset
            .manifest
            .schema
            .columns
            .iter()
            .map(|c| c.sample_bytes())
            .collect();
        let shared = Arc::new(Shared {
            dataset,
            plan,
            lo,
            begin,
            end: hi,
            batch_size: o.batch_size as u64,
            prefetch: o.prefetch.clamp(1, 8),
            verify: o.verify,
            seed: o.state.seed,
            epoch: o.state.epoch,
            widths,
            pool: Arc::default(),
            shards: Mutex::default(),
            windows: Mutex::default(),
            advised: AtomicUsize::new(0),
            checks: Mutex::default(),
        });
        let threads = o.threads.clamp(1, 64).min(batches.max(1));
        let mut results = Vec::with_capacity(threads);
        let mut workers = Vec::with_capacity(threads);
        for t in 0..threads {
            let (tx, rx) = sync_channel(QUEUED_PER_WORKER);
            let shared = Arc::clone(&shared);
            let worker = std::thread::Builder::new()
                .name(format!("frugal-store-{t}"))
                .spawn(move || work(&shared, t, threads, batches, &tx))
                .map_err(|e| StoreError::Failed(format!("cannot start a reader thread: {e}")))?;
            results.push(rx);
            workers.push(worker);
        }
        Ok(Self {
            results,
            workers,
            next: 0,
            batches,
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
        if self.failed || self.next >= self.batches {
            return None;
        }
        let worker = self.next % self.results.len();
        match self.results[worker].recv() {
            Ok(Ok(batch)) => {
                self.next += 1;
                self.remaining -= batch.samples as u64;
                self.state = batch.state;
                Some(Ok(batch))
            }
            Ok(Err(e)) => {
                self.failed = true;
                Some(Err(e))
            }
            Err(_) => {
                self.failed = true;
                let why = match self.workers.remove(worker).join() {
                    Err(panic) => panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a panic".into()),
                    Ok(()) => "no reason given".into(),
                };
                Some(Err(StoreError::Failed(format!(
                    "a reader thread stopped before the end of the epoch: {why}"
                ))))
            }
        }
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
        // Closing the result channels makes each worker's next send fail, and it returns.
        self.results.clear();
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

/// Worker `t` of `n` builds batches `t, t + n, ...` and sends them in that order.
fn work(shared: &Shared, t: usize, n: usize, batches: usize, tx: &SyncSender<Result<Batch>>) {
    let mut cache = WorkerCache::default();
    for b in (t..batches).step_by(n) {
        let result = shared.assemble(b as u64, &mut cache);
        let failed = result.is_err();
        if tx.send(result).is_err() || failed {
            return;
        }
    }
}

/// A worker's view of the window it is reading and the shards it holds mapped.
#[derive(Default)]
struct WorkerCache {
    window: Option<usize>,
    content: Option<WindowContent>,
    /// Buffer row at which each segment of the window starts, plus the total.
    seg_starts: Vec<u64>,
    maps: HashMap<u32, Arc<ShardMap>>,
}

impl WorkerCache {
    fn load(&mut self, shared: &Shared, w: usize) {
        if self.window == Some(w) {
            return;
        }
        let content = shared.plan.window(w);
        self.seg_starts.clear();
        let mut acc = 0;
        for s in &content.segments {
            self.seg_starts.push(acc);
            acc += s.len;
        }
        self.seg_starts.push(acc);
        self.content = Some(content);
        self.window = Some(w);
        // Shards of the previous window stay mapped in the shared table if still in use.
        self.maps.clear();
        shared.advise_ahead(w);
    }

    /// Shard and row of the window's `k`-th sample.
    fn locate(&self, k: u64) -> (u32, u64) {
        let content = self.content.as_ref().expect("loaded");
        let r = content.emit[k as usize] as u64;
        let s = self.seg_starts.partition_point(|&start| start <= r) - 1;
        let seg = content.segments[s];
        (seg.shard, seg.start + (r - self.seg_starts[s]))
    }
}

impl Shared {
    fn assemble(&self, b: u64, cache: &mut WorkerCache) -> Result<Batch> {
        let p0 = self.begin + b * self.batch_size;
        let p1 = (p0 + self.batch_size).min(self.end);
        let n = (p1 - p0) as usize;
        let mut out: Vec<AlignedBytes> =
            self.widths.iter().map(|w| self.pool.take(n * w)).collect();
        let verify = self.verify == Verify::OnRead;
        let mut sums: HashMap<u32, (Vec<u64>, u64)> = HashMap::new();
        let mut used: Vec<Arc<ShardMap>> = Vec::new();
        let mut p = p0;
        while p < p1 {
            let w = self.plan.window_of(p);
            cache.load(self, w);
            let (ws, we) = self.plan.window_range(w);
            let stop = p1.min(we);
            for pos in p..stop {
                if pos + PREFETCH_DISTANCE < stop {
                    let (shard, row) = cache.locate(pos + PREFETCH_DISTANCE - ws);
                    if let Some(m) = cache.maps.get(&shard) {
                        for c in 0..self.widths.len() {
                            m.prefetch_row(c, row);
                        }
                    }
                }
                let (shard, row) = cache.locate(pos - ws);
                let map = match cache.maps.get(&shard) {
                    Some(m) => Arc::clone(m),
                    None => {
                        let m = self.shard(shard)?;
                        cache.maps.insert(shard, Arc::clone(&m));
                        m
                    }
                };
                if !used.iter().any(|u| Arc::ptr_eq(u, &map)) {
                    used.push(Arc::clone(&map));
                }
                let i = (pos - p0) as usize;
                let acc = verify.then(|| {
                    sums.entry(shard)
                        .or_insert_with(|| (vec![0; self.widths.len()], 0))
                });
                let mut hashes = acc;
                for (c, (buf, &width)) in out.iter_mut().zip(&self.widths).enumerate() {
                    let dst = &mut buf.bytes_mut()[i * width..(i + 1) * width];
                    map.copy_row(c, row, dst)?;
                    if let Some((s, _)) = hashes.as_mut() {
                        s[c] = s[c].wrapping_add(xxh3_64_with_seed(dst, row));
                    }
                }
                if let Some((_, rows)) = hashes {
                    *rows += 1;
                }
            }
            self.window_progress(w, stop - p, cache);
            p = stop;
        }
        for m in &used {
            if m.truncated() {
                return Err(StoreError::shard(
                    m.path(),
                    "the file was truncated while being read (pages past its new end read as zeros were discarded)",
                ));
            }
        }
        if verify {
            self.check(sums)?;
        }
        let columns = self
            .dataset
            .manifest
            .schema
            .columns
            .iter()
            .zip(out)
            .map(|(c, data)| {
                let mut shape = vec![n];
                shape.extend_from_slice(&c.shape);
                ColumnData {
                    name: c.name.clone(),
                    dtype: c.dtype,
                    shape,
                    data,
                }
            })
            .collect();
        Ok(Batch {
            columns,
            samples: n,
            state: ReadState {
                seed: self.seed,
                epoch: self.epoch,
                consumed: p1 - self.lo,
            },
        })
    }

    /// The mapping of shard `shard`, opened (and checked) on first use.
    fn shard(&self, shard: u32) -> Result<Arc<ShardMap>> {
        let mut shards = self.shards.lock().expect("shards");
        if let Some(m) = shards.get(&shard) {
            return Ok(Arc::clone(m));
        }
        if shards.len() >= OPEN_SHARDS {
            shards.retain(|_, m| Arc::strong_count(m) > 1);
        }
        let entry = &self.dataset.manifest.shards[shard as usize];
        let path = self.dataset.dir.join(&entry.file);
        if self.verify == Verify::Before {
            let want = parse_checksum(&entry.checksum).expect("validated");
            let got = checksum_file(&path)?;
            if got != want {
                return Err(StoreError::shard(
                    &path,
                    format!(
                        "checksum mismatch: the manifest says {}, the file hashes to {} (corrupted)",
                        entry.checksum,
                        format_checksum(got)
                    ),
                ));
            }
        }
        let (file, layout) = open_shard(&path, &self.dataset.manifest.schema, entry)?;
        let widths = self.widths.iter().map(|&w| w as u64).collect();
        let m = Arc::new(ShardMap::new(&path, file, layout, widths)?);
        shards.insert(shard, Arc::clone(&m));
        Ok(m)
    }

    /// Requests the pages of the windows after `w` (up to `prefetch` of them) from the
    /// kernel, once per window across all workers.
    fn advise_ahead(&self, w: usize) {
        let last = (w + self.prefetch).min(self.plan.windows().saturating_sub(1));
        let before = self.advised.fetch_max(last + 1, Ordering::AcqRel);
        for x in before.max(w)..=last {
            let (start, _) = self.plan.window_range(x);
            if start >= self.end {
                break;
            }
            for seg in self.plan.window(x).segments {
                if let Ok(m) = self.shard(seg.shard) {
                    for c in 0..self.widths.len() {
                        m.will_need(c, seg.start, seg.len);
                    }
                }
            }
        }
    }

    /// Counts `n` samples of window `w` as read; when the last of its samples in this
    /// stream's range is read, releases its pages from the process.
    fn window_progress(&self, w: usize, n: u64, cache: &WorkerCache) {
        let (ws, we) = self.plan.window_range(w);
        let in_range = we.min(self.end) - ws.max(self.begin);
        let done = {
            let mut windows = self.windows.lock().expect("windows");
            let seen = windows.entry(w).or_insert(0);
            *seen += n;
            let done = *seen >= in_range;
            if done {
                windows.remove(&w);
            }
            done
        };
        if done {
            let content = cache.content.as_ref().expect("loaded");
            for seg in &content.segments {
                // A shard no longer mapped has no pages in the process to release.
                let mapped = cache
                    .maps
                    .get(&seg.shard)
                    .cloned()
                    .or_else(|| self.shards.lock().expect("shards").get(&seg.shard).cloned());
                if let Some(m) = mapped {
                    for c in 0..self.widths.len() {
                        m.dont_need(c, seg.start, seg.len);
                    }
                }
            }
        }
    }

    /// Adds a batch's row-hash sums; compares the shards now read in full.
    fn check(&self, sums: HashMap<u32, (Vec<u64>, u64)>) -> Result<()> {
        let mut done = Vec::new();
        {
            let mut checks = self.checks.lock().expect("checks");
            for (shard, (s, rows)) in sums {
                let acc = checks
                    .entry(shard)
                    .or_insert_with(|| (vec![0; self.widths.len()], 0));
                for (a, v) in acc.0.iter_mut().zip(s) {
                    *a = a.wrapping_add(v);
                }
                acc.1 += rows;
                if acc.1 == self.dataset.manifest.shards[shard as usize].samples {
                    done.push((shard, checks.remove(&shard).expect("present").0));
                }
            }
        }
        for (shard, sums) in done {
            let entry = &self.dataset.manifest.shards[shard as usize];
            for (c, sum) in self.dataset.manifest.schema.columns.iter().zip(sums) {
                let want = &entry.column_checksums[&c.name];
                if Some(sum) != parse_checksum(want) {
                    return Err(StoreError::shard(
                        self.dataset.dir.join(&entry.file),
                        format!(
                            "column `{}` does not match its checksum (the manifest says {want}, the data sums to {}): the shard (or the manifest) is corrupted; `frugal data verify` lists every damaged shard",
                            c.name,
                            format_checksum(sum)
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}
