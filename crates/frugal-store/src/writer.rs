//! Writing datasets: one writer appending samples, or several writers (threads or
//! processes) each owning a disjoint range of shard numbers, merged at the end.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Result, StoreError};
use crate::fsutil;
use crate::manifest::{
    MANIFEST_FILE, Manifest, Schema, ShardEntry, parse_checksum, shard_file_name, shard_index,
};
use crate::shard::ShardBuffer;

/// Directory (inside a dataset) holding the manifests of parallel writers until merge.
pub(crate) const PARTS_DIR: &str = "parts";

/// A generator's settings, kept beside the part manifests so a resumed run can refuse to
/// mix shards made with other settings.
pub(crate) const PART_SPEC_FILE: &str = "generator.settings";

/// Default shard size target: large enough for long sequential reads, small enough that a
/// writer's buffer (one shard) is a modest amount of memory.
pub const DEFAULT_SHARD_BYTES: u64 = 64 << 20;

/// How a writer cuts shards.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Target shard size in bytes: a shard holds as many whole samples as fit (at least one).
    pub shard_bytes: u64,
    /// Write a part manifest `parts/NAME.json` instead of `manifest.json`, for one of
    /// several writers; [`merge_parts`] combines them.
    pub part: Option<String>,
    /// Number of this writer's first shard. Writers of one dataset use disjoint ranges.
    pub first_shard: u64,
}

impl Default for WriterOptions {
    fn default() -> Self {
        Self {
            shard_bytes: DEFAULT_SHARD_BYTES,
            part: None,
            first_shard: 0,
        }
    }
}

/// Samples per shard for a schema and size target.
pub fn samples_per_shard(schema: &Schema, shard_bytes: u64) -> u64 {
    (shard_bytes / schema.sample_bytes().max(1) as u64).max(1)
}

/// Appends samples and rolls shards at the size target. Each shard is written to a
/// temporary name, synced and renamed, then the manifest is replaced atomically, so a
/// killed writer leaves a valid, incomplete dataset; creating the writer again on the same
/// directory continues after the last complete shard (see [`DatasetWriter::samples_written`]).
#[derive(Debug)]
pub struct DatasetWriter {
    dir: PathBuf,
    manifest_path: PathBuf,
    manifest: Manifest,
    buffer: ShardBuffer,
    per_shard: u64,
    next_shard: u64,
    saved: Instant,
    /// Samples in the shards the manifest on disk records.
    durable: u64,
    /// For a producer that starts again from its first row ([`DatasetWriter::replay`]):
    /// the shards already written, which its first rows are checked against.
    replay: Option<Replay>,
}

/// Rows of an earlier run being checked instead of written again.
#[derive(Debug)]
struct Replay {
    /// The shards written before, in order, and where the check stands.
    shards: Vec<ShardEntry>,
    shard: usize,
    row: u64,
    /// Rows checked so far, over all shards.
    rows: u64,
    /// Per column, the sum of the current shard's row hashes so far (see
    /// [`crate::shard::column_checksum`]).
    sums: Vec<u64>,
}

/// A manifest of up to this many shards is replaced after every shard (a few hundred KiB
/// per 64 MiB shard at most).
const SAVE_EACH_UP_TO: usize = 4096;
/// Beyond that, at most once a second, so that rewriting a manifest of many thousand
/// shards stays a small fraction of the I/O; a shard not yet recorded is recorded by the
/// next push, shard, `sync` or `finish` after the second is up.
const SAVE_EVERY: Duration = Duration::from_secs(1);

impl DatasetWriter {
    /// Starts a dataset in `dir` for a producer that starts from its first row every time
    /// it runs, such as an importer reading its input files from the top, or continues an
    /// unfinished one it began: the rows already in that dataset's shards are read from
    /// the producer again and checked against the shards' column checksums instead of
    /// being written twice, and writing resumes after them. The finished dataset is the
    /// one an uninterrupted run writes; a producer whose first rows differ from those
    /// written (another input) is refused before anything is written.
    pub fn replay(dir: &Path, schema: Schema, options: WriterOptions) -> Result<Self> {
        let mut writer = Self::create(dir, schema, options)?;
        if !writer.manifest.shards.is_empty() {
            writer.replay = Some(Replay {
                shards: writer.manifest.shards.clone(),
                shard: 0,
                row: 0,
                rows: 0,
                sums: vec![0; writer.manifest.schema.columns.len()],
            });
        }
        Ok(writer)
    }

    /// Starts a dataset in `dir`, or continues an unfinished one with the same schema.
    pub fn create(dir: &Path, schema: Schema, options: WriterOptions) -> Result<Self> {
        fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
        let manifest_path = match &options.part {
            None => dir.join(MANIFEST_FILE),
            Some(part) => {
                if part.is_empty() || part.contains(['/', '\\']) || part.starts_with('.') {
                    return Err(StoreError::Setting {
                        setting: "part",
                        value: format!("{part:?}"),
                        problem: "not a valid part name (no '/', '\\' or leading '.')".into(),
                    });
                }
                let parts = dir.join(PARTS_DIR);
                fs::create_dir_all(&parts).map_err(|e| StoreError::io(&parts, e))?;
                parts.join(format!("{part}.json"))
            }
        };
        let main = dir.join(MANIFEST_FILE);
        if options.part.is_some() && main.exists() {
            let m = Manifest::load(dir)?;
            if m.complete {
                return Err(already_complete(dir));
            }
            return Err(StoreError::Directory {
                dir: dir.to_owned(),
                problem: "holds an unfinished dataset of a single writer; parallel writers cannot add to it".into(),
            });
        }
        let manifest = if manifest_path.exists() {
            let bytes = fs::read(&manifest_path).map_err(|e| StoreError::io(&manifest_path, e))?;
            let m = Manifest::from_json(&manifest_path, &bytes)?;
            if m.complete {
                return Err(already_complete(dir));
            }
            if m.schema != schema {
                return Err(StoreError::Directory {
                    dir: dir.to_owned(),
                    problem: "holds an unfinished dataset with another schema; remove it or write elsewhere".into(),
                });
            }
            m
        } else {
            if options.part.is_none() {
                refuse_foreign_files(dir, false)?;
            }
            Manifest::new(schema.clone())
        };
        let next_shard = manifest
            .shards
            .iter()
            .filter_map(|s| shard_index(&s.file))
            .map(|i| i + 1)
            .max()
            .unwrap_or(options.first_shard)
            .max(options.first_shard);
        // Parts share the directory: a part's orphans are overwritten when it rewrites
        // them, and a higher-numbered shard may well be another part's.
        sweep(dir, &manifest, options.part.is_none().then_some(next_shard))?;
        let per_shard = samples_per_shard(&schema, options.shard_bytes);
        let writer = Self {
            dir: dir.to_owned(),
            manifest_path,
            buffer: ShardBuffer::new(schema),
            manifest,
            per_shard,
            next_shard,
            saved: Instant::now(),
            durable: 0,
            replay: None,
        };
        let mut writer = writer;
        writer.save()?;
        Ok(writer)
    }

    /// Samples safely on disk in shards the manifest on disk records: where a producer
    /// resumed after a kill starts.
    pub fn samples_written(&self) -> u64 {
        self.durable
    }

    fn save(&mut self) -> Result<()> {
        self.manifest.save_to(&self.manifest_path)?;
        self.saved = Instant::now();
        self.durable = self.manifest.samples;
        Ok(())
    }

    /// Saves the manifest when it is behind and the policy allows (see [`SAVE_EVERY`]).
    fn maybe_save(&mut self) -> Result<()> {
        let behind = self.durable != self.manifest.samples;
        if behind
            && (self.manifest.shards.len() <= SAVE_EACH_UP_TO || self.saved.elapsed() >= SAVE_EVERY)
        {
            self.save()?;
        }
        Ok(())
    }

    /// Samples per shard.
    pub fn samples_per_shard(&self) -> u64 {
        self.per_shard
    }

    /// Provenance recorded in the manifest.
    pub fn metadata_mut(&mut self) -> &mut BTreeMap<String, serde_json::Value> {
        &mut self.manifest.metadata
    }

    /// Appends one sample: one byte slice per column, in schema order.
    pub fn push_sample(&mut self, columns: &[&[u8]]) -> Result<()> {
        self.push_rows(1, columns)
    }

    /// Appends `rows` samples given column by column.
    pub fn push_rows(&mut self, rows: u64, columns: &[&[u8]]) -> Result<()> {
        let widths: Vec<usize> = self
            .manifest
            .schema
            .columns
            .iter()
            .map(|c| c.sample_bytes())
            .collect();
        if columns.len() != widths.len() {
            return Err(StoreError::Rows(format!(
                "got {} columns, the schema has {}",
                columns.len(),
                widths.len()
            )));
        }
        for ((c, w), data) in self
            .manifest
            .schema
            .columns
            .iter()
            .zip(&widths)
            .zip(columns)
        {
            if data.len() as u64 != *w as u64 * rows {
                return Err(StoreError::Rows(format!(
                    "column `{}`: {rows} samples are {} bytes, got {}",
                    c.name,
                    *w as u64 * rows,
                    data.len()
                )));
            }
        }
        let mut done = self.check_replayed(rows, columns, &widths)?;
        while done < rows {
            let take = (self.per_shard - self.buffer.samples()).min(rows - done);
            let slices: Vec<&[u8]> = columns
                .iter()
                .zip(&widths)
                .map(|(d, &w)| &d[(done as usize * w)..((done + take) as usize * w)])
                .collect();
            self.buffer.push_rows(take, &slices)?;
            done += take;
            if self.buffer.samples() == self.per_shard {
                self.flush_shard()?;
            }
        }
        self.maybe_save()
    }

    /// Checks the first of `rows` rows against the shards being replayed, as many as are
    /// left to replay; returns how many it consumed.
    fn check_replayed(&mut self, rows: u64, columns: &[&[u8]], widths: &[usize]) -> Result<u64> {
        let Some(r) = self.replay.as_mut() else {
            return Ok(0);
        };
        let mut done = 0u64;
        while done < rows && r.shard < r.shards.len() {
            for ((sum, data), &w) in r.sums.iter_mut().zip(columns).zip(widths) {
                let bytes = &data[done as usize * w..(done as usize + 1) * w];
                *sum = sum.wrapping_add(xxhash_rust::xxh3::xxh3_64_with_seed(bytes, r.row));
            }
            done += 1;
            r.row += 1;
            r.rows += 1;
            let entry = &r.shards[r.shard];
            if r.row == entry.samples {
                for (c, sum) in self.manifest.schema.columns.iter().zip(&r.sums) {
                    let recorded = entry
                        .column_checksums
                        .get(&c.name)
                        .and_then(|s| parse_checksum(s));
                    if recorded != Some(*sum) {
                        return Err(StoreError::Directory {
                            dir: self.dir.clone(),
                            problem: format!(
                                "holds an unfinished dataset whose shard {} (column `{}`) differs from rows {}..{} of this input: it was started from other input; re-run with the input it began with, or remove it",
                                entry.file,
                                c.name,
                                r.rows - entry.samples,
                                r.rows
                            ),
                        });
                    }
                }
                r.shard += 1;
                r.row = 0;
                r.sums.iter_mut().for_each(|s| *s = 0);
            }
        }
        if r.shard == r.shards.len() {
            self.replay = None;
        }
        Ok(done)
    }

    fn flush_shard(&mut self) -> Result<()> {
        if self.buffer.samples() == 0 {
            return Ok(());
        }
        let entry = self
            .buffer
            .write(&self.dir, &shard_file_name(self.next_shard))?;
        self.next_shard += 1;
        self.manifest.samples += entry.samples;
        self.manifest.shards.push(entry);
        self.maybe_save()
    }

    /// Makes every sample pushed so far durable now: the partial shard is written as a
    /// shorter shard and the manifest saved. A producer that checkpoints its own position
    /// calls this first, so the dataset is never behind its checkpoint (shards then differ
    /// in size, which readers handle).
    pub fn sync(&mut self) -> Result<()> {
        self.flush_shard()?;
        self.save()
    }

    /// Writes the last partial shard and marks the dataset (or part) finished. A part
    /// stays incomplete until [`merge_parts`].
    pub fn finish(mut self) -> Result<Manifest> {
        if let Some(r) = &self.replay {
            let before: u64 = r.shards.iter().map(|s| s.samples).sum();
            return Err(StoreError::Directory {
                dir: self.dir.clone(),
                problem: format!(
                    "holds {before} rows from an unfinished earlier run, and this input has only {}: it was started from other input; re-run with the input it began with, or remove it",
                    r.rows
                ),
            });
        }
        self.flush_shard()?;
        if self.manifest_path == self.dir.join(MANIFEST_FILE) {
            self.manifest.complete = true;
        }
        self.save()?;
        Ok(self.manifest)
    }
}

fn already_complete(dir: &Path) -> StoreError {
    StoreError::Directory {
        dir: dir.to_owned(),
        problem: "already holds a complete dataset; remove it or write elsewhere".into(),
    }
}

/// A new dataset goes into an empty directory, so nothing of the user's is mixed in or
/// swept away. A parallel generator resuming its own run may find its parts and shards.
pub(crate) fn refuse_foreign_files(dir: &Path, allow_parts: bool) -> Result<()> {
    let entries = fs::read_dir(dir).map_err(|e| StoreError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let own = allow_parts && (name == PARTS_DIR || shard_index(&name).is_some());
        if !(fsutil::is_temp_name(&name) || own) {
            return Err(StoreError::Directory {
                dir: dir.to_owned(),
                problem: format!(
                    "is not empty (it holds `{name}`); a dataset needs an empty or new directory"
                ),
            });
        }
    }
    Ok(())
}

/// Removes what a killed writer left behind: temporary files and shards at or after its
/// next shard number that no manifest records.
fn sweep(dir: &Path, manifest: &Manifest, next_shard: Option<u64>) -> Result<()> {
    let entries = fs::read_dir(dir).map_err(|e| StoreError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let orphan_shard = shard_index(&name)
            .zip(next_shard)
            .is_some_and(|(i, next)| i >= next && !manifest.shards.iter().any(|s| s.file == name));
        let stale_temp = fsutil::is_stale_temp(&name);
        if orphan_shard || stale_temp {
            let path = entry.path();
            fs::remove_file(&path).map_err(|e| StoreError::io(&path, e))?;
        }
    }
    Ok(())
}

/// Writes whole shards by number: for producers that generate shard `i` independently
/// (each thread or process its own `PartWriter`). Its records go to `parts/NAME.json`.
#[derive(Debug)]
pub struct PartWriter {
    dir: PathBuf,
    path: PathBuf,
    manifest: Manifest,
    saved: Instant,
}

impl PartWriter {
    /// Opens (or continues) part `name` of the dataset in `dir`.
    pub fn create(dir: &Path, schema: Schema, name: &str) -> Result<Self> {
        let w = DatasetWriter::create(
            dir,
            schema,
            WriterOptions {
                part: Some(name.to_owned()),
                ..WriterOptions::default()
            },
        )?;
        Ok(Self {
            dir: w.dir,
            path: w.manifest_path,
            manifest: w.manifest,
            saved: Instant::now(),
        })
    }

    /// Writes `buffer` as shard number `index` and records it (replacing an earlier
    /// record of the same shard). The record is durable at once while the part holds up to
    /// 4096 shards, beyond that at the next shard after a second, and after
    /// [`PartWriter::finish`].
    pub fn write_shard(&mut self, index: u64, buffer: &mut ShardBuffer) -> Result<ShardEntry> {
        if buffer.samples() == 0 {
            return Err(StoreError::Rows(format!(
                "shard {index} would be empty; a shard holds at least one sample"
            )));
        }
        let entry = buffer.write(&self.dir, &shard_file_name(index))?;
        self.manifest.shards.retain(|s| s.file != entry.file);
        self.manifest.shards.push(entry.clone());
        self.manifest.samples = self.manifest.shards.iter().map(|s| s.samples).sum();
        if self.manifest.shards.len() <= SAVE_EACH_UP_TO || self.saved.elapsed() >= SAVE_EVERY {
            self.manifest.save_to(&self.path)?;
            self.saved = Instant::now();
        }
        Ok(entry)
    }

    /// Records every shard written so far durably.
    pub fn finish(self) -> Result<()> {
        self.manifest.save_to(&self.path)
    }
}

/// Shards already recorded by any part, by number: what a resumed parallel producer can
/// skip. Entries whose file is missing or of the wrong
/// size are left out, so they are produced again.
pub fn recorded_shards(dir: &Path) -> Result<BTreeMap<u64, ShardEntry>> {
    let mut out = BTreeMap::new();
    for m in part_manifests(dir)?.into_iter().map(|(_, m)| m) {
        for s in m.shards {
            let ok = fs::metadata(dir.join(&s.file)).is_ok_and(|md| md.len() == s.bytes);
            if let (true, Some(i)) = (ok, shard_index(&s.file)) {
                out.insert(i, s);
            }
        }
    }
    Ok(out)
}

fn part_manifests(dir: &Path) -> Result<Vec<(PathBuf, Manifest)>> {
    let parts = dir.join(PARTS_DIR);
    let mut out = Vec::new();
    let entries = match fs::read_dir(&parts) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(StoreError::io(&parts, e)),
    };
    for entry in entries {
        let path = entry.map_err(|e| StoreError::io(&parts, e))?.path();
        if path.extension().is_some_and(|e| e == "json") {
            let bytes = fs::read(&path).map_err(|e| StoreError::io(&path, e))?;
            out.push((path.clone(), Manifest::from_json(&path, &bytes)?));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Combines the part manifests of parallel writers into a complete `manifest.json`
/// (shards ordered by number) and removes the parts. `metadata` is recorded in it.
pub fn merge_parts(dir: &Path, metadata: BTreeMap<String, serde_json::Value>) -> Result<Manifest> {
    let parts = part_manifests(dir)?;
    let Some(schema) = parts.first().map(|(_, m)| m.schema.clone()) else {
        return Err(StoreError::Directory {
            dir: dir.to_owned(),
            problem: "has no part manifests to merge".into(),
        });
    };
    let mut shards: BTreeMap<u64, ShardEntry> = BTreeMap::new();
    for (path, m) in &parts {
        if m.schema != schema {
            return Err(StoreError::manifest(
                path,
                "its schema differs from the other parts'",
            ));
        }
        for s in &m.shards {
            let i = shard_index(&s.file).expect("validated");
            if let Some(prev) = shards.insert(i, s.clone())
                && prev != *s
            {
                return Err(StoreError::manifest(
                    path,
                    format!(
                        "shard `{}` is also recorded, differently, by another part",
                        s.file
                    ),
                ));
            }
        }
    }
    for s in shards.values() {
        let path = dir.join(&s.file);
        match fs::metadata(&path) {
            Ok(md) if md.len() == s.bytes => {}
            Ok(md) => {
                return Err(StoreError::shard(
                    &path,
                    format!("file is {} bytes, its part records {}", md.len(), s.bytes),
                ));
            }
            Err(e) => return Err(StoreError::io(&path, e)),
        }
    }
    let mut manifest = Manifest::new(schema);
    manifest.shards = shards.into_values().collect();
    manifest.samples = manifest.shards.iter().map(|s| s.samples).sum();
    manifest.metadata = metadata;
    manifest.complete = true;
    manifest.save(dir)?;
    let parts_dir = dir.join(PARTS_DIR);
    fs::remove_dir_all(&parts_dir).map_err(|e| StoreError::io(&parts_dir, e))?;
    fsutil::sync_dir(dir)?;
    Ok(manifest)
}

/// Hands a writer thread the shard to write next (see [`generate_shards`]); the flag says
/// another thread failed.
pub type NextShard<'a> = dyn Fn(&AtomicBool) -> Result<Option<u64>> + Sync + 'a;

/// Writes shards `0..shards` of the dataset in `dir`, shard `i` filled by
/// `fill(i, buffer)` (a pure function of `i` and the settings, so any number of threads
/// writes the same bytes), on `threads` threads taking shards in turn, then merges the
/// parts into a complete manifest holding `metadata`. A killed run is finished by calling
/// again with the same `settings` (the JSON the shards depend on): only the missing shards
/// are produced. Refuses a directory holding a complete dataset, other files, or an
/// unfinished dataset of other settings. `progress` is called with the samples of each
/// shard written, after the samples already on disk.
///
/// Threads take the missing shards in index order, unless `next` is given: then each
/// asks it for the shard to write next (`None` when there are no more) — a producer
/// whose shards become ready in any order (remote workers) hands out each one as it is
/// ready. It must hand out exactly the shards missing on disk, each once, and return
/// `None` soon after its flag is set: another thread failed, and waiting is over.
#[allow(clippy::too_many_arguments)]
pub fn generate_shards(
    dir: &Path,
    schema: &Schema,
    settings: &serde_json::Value,
    shards: u64,
    threads: usize,
    next: Option<&NextShard<'_>>,
    fill: &(dyn Fn(u64, &mut ShardBuffer) -> Result<()> + Sync),
    progress: &(dyn Fn(u64) + Sync),
    metadata: BTreeMap<String, serde_json::Value>,
) -> Result<Manifest> {
    fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
    if dir.join(crate::MANIFEST_FILE).exists() {
        let m = Manifest::load(dir)?;
        if m.complete {
            return Err(already_complete(dir));
        }
    }
    refuse_foreign_files(dir, true)?;
    let parts = dir.join(PARTS_DIR);
    fs::create_dir_all(&parts).map_err(|e| StoreError::io(&parts, e))?;
    let spec_path = parts.join(PART_SPEC_FILE);
    match fs::read(&spec_path) {
        Ok(bytes) => {
            let before: serde_json::Value = serde_json::from_slice(&bytes)
                .map_err(|e| StoreError::manifest(&spec_path, e.to_string()))?;
            if &before != settings {
                return Err(StoreError::Directory {
                    dir: dir.to_owned(),
                    problem: format!(
                        "holds an unfinished dataset generated with other settings ({before}); use the same settings to continue it, or another directory"
                    ),
                });
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fsutil::atomic_write(&spec_path, settings.to_string().as_bytes())?;
        }
        Err(e) => return Err(StoreError::io(&spec_path, e)),
    }

    let done = recorded_shards(dir)?;
    progress(done.values().map(|s| s.samples).sum());
    let todo: Vec<u64> = (0..shards).filter(|i| !done.contains_key(i)).collect();
    let counter = AtomicUsize::new(0);
    let failure: Mutex<Option<StoreError>> = Mutex::new(None);
    let stop = AtomicBool::new(false);
    let run = std::process::id();
    std::thread::scope(|s| {
        for t in 0..threads.max(1) {
            let (todo, counter, failure, done, stop) = (&todo, &counter, &failure, &done, &stop);
            s.spawn(move || {
                let result = (|| -> Result<()> {
                    let mut part: Option<PartWriter> = None;
                    let mut buffer = ShardBuffer::new(schema.clone());
                    while failure.lock().expect("lock").is_none() {
                        let index = match next {
                            Some(next) => next(stop)?,
                            None => todo.get(counter.fetch_add(1, Ordering::Relaxed)).copied(),
                        };
                        let Some(index) = index else {
                            break;
                        };
                        if index >= shards || done.contains_key(&index) {
                            return Err(StoreError::Failed(format!(
                                "shard {index} was handed out to write, but it is not one of the {} missing",
                                todo.len()
                            )));
                        }
                        if part.is_none() {
                            part = Some(PartWriter::create(
                                dir,
                                schema.clone(),
                                &format!("{run}-{t}"),
                            )?);
                        }
                        fill(index, &mut buffer)?;
                        let entry = part
                            .as_mut()
                            .expect("part")
                            .write_shard(index, &mut buffer)?;
                        progress(entry.samples);
                    }
                    part.map_or(Ok(()), PartWriter::finish)
                })();
                if let Err(e) = result {
                    stop.store(true, Ordering::Relaxed);
                    failure.lock().expect("lock").get_or_insert(e);
                }
            });
        }
    });
    if let Some(e) = failure.into_inner().expect("lock") {
        return Err(e);
    }
    merge_parts(dir, metadata)
}
