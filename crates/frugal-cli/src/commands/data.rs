use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use frugal_hw::units::Bytes;
use frugal_store::synthetic::{self, SyntheticSpec};
use frugal_store::{Dataset, Manifest, OrderSpec, StreamOptions, WriterOptions};
use serde::Serialize;

use crate::args::{BenchArgs, DataCommand, GenCommand, ImportCommand};
use crate::progress;

pub(crate) fn run(command: DataCommand, out: &mut dyn Write) -> Result<()> {
    match command {
        DataCommand::Gen(GenCommand::Synthetic {
            samples,
            features,
            classes,
            hidden,
            seed,
            sample_stream,
            out: dir,
            shard,
            threads,
            json,
        }) => {
            let spec = SyntheticSpec {
                samples,
                features,
                classes,
                hidden,
                seed,
                shard_bytes: shard.shard_size,
                sample_stream,
            };
            let threads = threads
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            let bar = progress::bar(samples, "generating", false);
            let start = Instant::now();
            let manifest = synthetic::generate(&dir, &spec, threads, &|n| bar.inc(n))?;
            bar.finish_and_clear();
            let seconds = start.elapsed().as_secs_f64();
            summary(out, &dir, &manifest, seconds, json)
        }
        DataCommand::Import(command) => import(command, out),
        DataCommand::Inspect { dir, json } => inspect(&dir, json, out),
        DataCommand::Verify { dir, json } => verify(&dir, json, out),
        DataCommand::Bench(args) => bench(args, out),
    }
}

#[derive(Serialize)]
struct WriteSummary<'a> {
    dir: &'a Path,
    samples: u64,
    shards: usize,
    bytes: u64,
    seconds: f64,
    write_gbps: f64,
}

fn summary(out: &mut dyn Write, dir: &Path, m: &Manifest, seconds: f64, json: bool) -> Result<()> {
    let s = WriteSummary {
        dir,
        samples: m.samples,
        shards: m.shards.len(),
        bytes: m.bytes(),
        seconds,
        write_gbps: m.bytes() as f64 / seconds.max(1e-9) / 1e9,
    };
    if json {
        super::print_json(out, &s)?;
    } else {
        writeln!(
            out,
            "wrote {} samples in {} shards ({}) to {} in {:.1} s ({:.2} GB/s)",
            s.samples,
            s.shards,
            Bytes(s.bytes),
            dir.display(),
            s.seconds,
            s.write_gbps
        )?;
    }
    Ok(())
}

fn import(command: ImportCommand, out: &mut dyn Write) -> Result<()> {
    use frugal_store::import;
    let options = |shard_size| WriterOptions {
        shard_bytes: shard_size,
        ..WriterOptions::default()
    };
    let start = Instant::now();
    let (dir, manifest) = match command {
        ImportCommand::Npy {
            npz,
            column,
            out: dir,
            shard,
        } => {
            let m = match npz {
                Some(npz) => import::import_npz(&npz, &dir, options(shard.shard_size))?,
                None => import::import_npy(&column, &dir, options(shard.shard_size))?,
            };
            (dir, m)
        }
        ImportCommand::Raw {
            column,
            out: dir,
            shard,
        } => {
            let m = import::import_raw(&column, &dir, options(shard.shard_size))?;
            (dir, m)
        }
        ImportCommand::Hdf5 {
            file,
            dataset,
            out: dir,
            shard,
        } => {
            let m = import_hdf5(&file, &dataset, &dir, options(shard.shard_size))?;
            (dir, m)
        }
        ImportCommand::Mnist {
            images,
            labels,
            out: dir,
            shard,
        } => {
            let m = import::import_mnist(&images, &labels, &dir, options(shard.shard_size))?;
            (dir, m)
        }
    };
    summary(out, &dir, &manifest, start.elapsed().as_secs_f64(), false)
}

#[cfg(feature = "hdf5")]
fn import_hdf5(
    file: &Path,
    datasets: &[(String, String)],
    dir: &Path,
    options: WriterOptions,
) -> Result<Manifest> {
    Ok(frugal_store::import::import_hdf5(
        file, datasets, dir, options,
    )?)
}

#[cfg(not(feature = "hdf5"))]
fn import_hdf5(_: &Path, _: &[(String, String)], _: &Path, _: WriterOptions) -> Result<Manifest> {
    bail!(
        "this frugal was built without HDF5 support; rebuild with `cargo install --features hdf5` (needs libhdf5, e.g. Debian's libhdf5-dev)"
    )
}

fn inspect(dir: &Path, json: bool, out: &mut dyn Write) -> Result<()> {
    let m = Manifest::load(dir)?;
    let faults = frugal_store::check_files(dir, &m);
    if json {
        super::print_json(out, &m)?;
    } else {
        describe(dir, &m, &faults, out)?;
    }
    if !faults.is_empty() {
        let names: Vec<&str> = faults.iter().map(|f| f.file.as_str()).collect();
        bail!(
            "{} of {} shards in {} are missing or of the wrong size: {}; regenerate or restore them",
            names.len(),
            m.shards.len(),
            dir.display(),
            names.join(", ")
        );
    }
    Ok(())
}

fn describe(
    dir: &Path,
    m: &Manifest,
    faults: &[frugal_store::ShardFault],
    out: &mut dyn Write,
) -> Result<()> {
    writeln!(out, "dataset   {}", dir.display())?;
    let status = match (faults.len(), m.complete) {
        (0, true) => "complete".to_string(),
        (0, false) => "unfinished (re-run the writing command to complete it)".to_string(),
        (n, _) => format!(
            "damaged: {n} of {} shards missing or of the wrong size",
            m.shards.len()
        ),
    };
    writeln!(out, "status    {status}")?;
    for f in faults {
        writeln!(
            out,
            "DAMAGED   {}: {}",
            dir.join(&f.file).display(),
            f.fault
        )?;
    }
    writeln!(out, "format    frugal-store v{}", m.version)?;
    writeln!(out, "samples   {}", m.samples)?;
    let sizes = m.shard_sizes();
    writeln!(
        out,
        "shards    {} ({} total, {}–{} samples each)",
        m.shards.len(),
        Bytes(m.bytes()),
        sizes.iter().min().unwrap_or(&0),
        sizes.iter().max().unwrap_or(&0)
    )?;
    writeln!(out, "columns")?;
    for c in &m.schema.columns {
        writeln!(
            out,
            "  {:<16} {:<5} {:<16} {} per sample",
            c.name,
            c.dtype.to_string(),
            format!("{:?}", c.shape),
            Bytes(c.sample_bytes() as u64)
        )?;
    }
    for (k, v) in &m.metadata {
        writeln!(out, "meta      {k} = {v}")?;
    }
    Ok(())
}

fn verify(dir: &Path, json: bool, out: &mut dyn Write) -> Result<()> {
    let total = Manifest::load(dir)?.bytes();
    let bar = progress::bar(total, "verifying", true);
    let report = frugal_store::verify(dir, |n| bar.inc(n))?;
    bar.finish_and_clear();
    if json {
        super::print_json(out, &report)?;
    } else {
        for f in &report.faults {
            writeln!(out, "DAMAGED {}: {}", dir.join(&f.file).display(), f.fault)?;
        }
        if report.ok() {
            writeln!(
                out,
                "ok: {} shards, {} checked",
                report.shards,
                Bytes(report.bytes)
            )?;
        }
    }
    if !report.faults.is_empty() {
        let names: Vec<&str> = report.faults.iter().map(|f| f.file.as_str()).collect();
        bail!(
            "{} of {} shards in {} are damaged: {}; regenerate or restore them",
            names.len(),
            report.shards,
            dir.display(),
            names.join(", ")
        );
    }
    if !report.complete {
        bail!(
            "{} is unfinished: its writer stopped before the end; re-run it to complete the dataset",
            dir.display()
        );
    }
    Ok(())
}

#[derive(Serialize)]
struct BenchReport {
    dir: String,
    order: String,
    cold: bool,
    samples: u64,
    bytes: u64,
    window_samples: u64,
    batch_size: usize,
    /// Medians over `runs`.
    read_seconds: f64,
    raw_seconds: f64,
    read_gbps: f64,
    raw_gbps: f64,
    ratio: f64,
    samples_per_s: f64,
    peak_rss_bytes: u64,
    runs: Vec<frugal_store::bench::PairedRun>,
}

fn bench(args: BenchArgs, out: &mut dyn Write) -> Result<()> {
    use frugal_store::bench::{median, paired_runs};
    let dataset = Dataset::open(&args.dir)?;
    let m = dataset.manifest();
    let spec = OrderSpec::for_budget(
        args.order,
        args.window_budget,
        m.schema.sample_bytes() as u64,
    );
    let mut options = StreamOptions::new(spec, args.seed, args.epoch, args.batch_size);
    options.verify = args.verify;
    let bar = progress::bar(dataset.len() * args.repeats as u64, "reading", false);
    let runs = paired_runs(&dataset, &options, args.cold, args.repeats as usize, |n| {
        bar.inc(n)
    })
    .with_context(|| format!("reading {}", args.dir.display()))?;
    bar.finish_and_clear();
    let peak = frugal_hw::MemoryMeter::new().sample()?.peak_rss_bytes;
    let mid = |f: fn(&frugal_store::bench::PairedRun) -> f64| median(runs.iter().map(f));
    let read_seconds = mid(|r| r.read_seconds);
    let report = BenchReport {
        dir: args.dir.display().to_string(),
        order: args.order.to_string(),
        cold: args.cold,
        samples: dataset.len(),
        bytes: m.bytes(),
        window_samples: spec.window,
        batch_size: args.batch_size,
        read_seconds,
        raw_seconds: mid(|r| r.raw_seconds),
        read_gbps: mid(|r| r.read_gbps),
        raw_gbps: mid(|r| r.raw_gbps),
        ratio: mid(|r| r.ratio),
        samples_per_s: dataset.len() as f64 / read_seconds,
        peak_rss_bytes: peak,
        runs,
    };
    if args.json {
        return super::print_json(out, &report);
    }
    let temp = if args.cold { "cold" } else { "warm" };
    writeln!(
        out,
        "{} order, {temp}: {} samples ({}), window {} samples, batch {}",
        report.order,
        report.samples,
        Bytes(report.bytes),
        spec.window,
        args.batch_size
    )?;
    if report.runs.len() > 1 {
        for (i, r) in report.runs.iter().enumerate() {
            writeln!(
                out,
                "run {:>2}     epoch {:.2} GB/s, raw {:.2} GB/s, ratio {:.3} ({} first)",
                i + 1,
                r.read_gbps,
                r.raw_gbps,
                r.ratio,
                if r.raw_first { "raw" } else { "epoch" }
            )?;
        }
    }
    let of = if report.runs.len() > 1 {
        format!(" (median of {})", report.runs.len())
    } else {
        String::new()
    };
    writeln!(
        out,
        "epoch read  {:.2} GB/s, {:.0} samples/s in {:.2} s{of}",
        report.read_gbps, report.samples_per_s, report.read_seconds
    )?;
    writeln!(
        out,
        "raw read    {:.2} GB/s (same files, sequential, same run){of}",
        report.raw_gbps
    )?;
    writeln!(out, "ratio       {:.3}{of}", report.ratio)?;
    writeln!(out, "peak RSS    {}", Bytes(peak))?;
    Ok(())
}
