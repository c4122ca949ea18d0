//! `frugal nbody scale`: how many particles the graph network can train on within a memory
//! budget, with the memory techniques off (f32, every activation kept, the whole batch at
//! once) and on (bf16 compute, edges in chunks recomputed one block at a time in backward,
//! one state per micro-batch with the batch's gradients accumulated). Each point is a real
//! optimizer step of a fresh network on Plummer spheres, its heap peak counted by the
//! counting allocator and its wall time taken; points whose estimate (extended linearly in
//! N from the measured ones) exceeds what this machine has available are not run, and are
//! reported as estimates. The largest N that fits counts measured points only.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use frugal_hw::units::Bytes;
use frugal_models::particles::ParticleGnn;
use frugal_sim::{Gravity, Initial, Method, Vec3s};
use frugal_store::{Batch, ColumnData, ReadState};
use frugal_train::plan::measure_step;
use frugal_train::{Precision, Task};
use serde::Serialize;

use crate::args::NbodyScaleArgs;

/// Softening of the Plummer spheres the steps train on.
const SOFTENING: f64 = 0.05;

/// One configuration of the study.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Techniques {
    Off,
    On,
}

impl Techniques {
    fn name(self) -> &'static str {
        match self {
            Techniques::Off => "off",
            Techniques::On => "on",
        }
    }

    /// The precision it computes in, unless one is given for both.
    fn precision(self, given: Option<Precision>) -> Precision {
        given.unwrap_or(match self {
            Techniques::Off => Precision::F32,
            Techniques::On => Precision::Bf16,
        })
    }

    fn describe(self, batch: usize, precision: Precision) -> String {
        let p = precision.name();
        match self {
            Techniques::Off => format!("{p}, all activations kept, batch {batch} at once"),
            Techniques::On => format!(
                "{p}, one block (a chunk of edges) recomputed at a time, {batch} micro-batches of 1 accumulated"
            ),
        }
    }
}

/// One row of the table.
#[derive(Debug, Clone, Serialize)]
struct Point {
    particles: usize,
    techniques: Techniques,
    precision: Precision,
    /// `measured`, or `estimated` (not run: the estimate exceeds this machine's memory).
    how: &'static str,
    /// The peak that counts against the budget: the device allocator's on a GPU, the
    /// heap's on the CPU.
    peak_bytes: u64,
    /// The heap's peak (measured points only).
    peak_heap_bytes: Option<u64>,
    /// The device allocator's peak reservation (measured GPU points only).
    peak_device_bytes: Option<u64>,
    /// Wall time of one optimizer step, the median of the timed steps (measured points
    /// only).
    step_seconds: Option<f64>,
    fits: bool,
}

#[derive(Debug, Serialize)]
struct ScaleSummary {
    device: String,
    budget_bytes: u64,
    hidden: usize,
    layers: usize,
    neighbours: usize,
    batch: usize,
    threads: usize,
    points: Vec<Point>,
    /// The largest N measured to fit the budget with the techniques off; `null` if none.
    max_particles_off: Option<usize>,
    /// The same with the techniques on.
    max_particles_on: Option<usize>,
    /// `max_particles_on / max_particles_off`.
    ratio: Option<f64>,
    table: PathBuf,
    plot: PathBuf,
}

/// A Plummer sphere of `n` particles (seed `seed`) with its accelerations: positions,
/// velocities and accelerations, particle-major.
type State = [Vec<f32>; 3];

fn plummer(n: usize, seed: u64) -> Result<State> {
    let gravity = Gravity::softened(SOFTENING);
    let p = Initial::Plummer
        .generate(n, seed, gravity)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut a: Vec3s = std::array::from_fn(|_| vec![0.0; n]);
    frugal_sim::accelerations(&p, gravity, Method::BarnesHut { theta: 0.5 }, true, &mut a);
    let mut state: State = Default::default();
    for i in 0..n {
        state[0].extend(p.position(i).map(|x| x as f32));
        state[1].extend(p.velocity(i).map(|x| x as f32));
        state[2].extend(a.iter().map(|axis| axis[i] as f32));
    }
    Ok(state)
}

/// States as one batch with the columns a particle dataset has.
fn batch_of(states: &[State], n: usize) -> Result<Batch> {
    let column = |c: usize, name: &str| {
        let values: Vec<f32> = states.iter().flat_map(|s| s[c].iter().copied()).collect();
        ColumnData::from_f32(name, vec![states.len(), n, 3], &values)
    };
    Ok(Batch {
        columns: vec![column(0, "pos")?, column(1, "vel")?, column(2, "acc")?],
        samples: states.len(),
        state: ReadState {
            seed: 0,
            epoch: 0,
            consumed: 0,
        },
    })
}

/// Peak bytes at `n` extended from the measured points: through the origin from one,
/// along the line through the last two from more (memory is linear in N).
fn estimate(measured: &[(usize, u64)], n: usize) -> Option<u64> {
    match measured {
        [] => None,
        [(n0, b0)] => Some((*b0 as f64 * n as f64 / *n0 as f64) as u64),
        [.., (n0, b0), (n1, b1)] => {
            let slope = (*b1 as f64 - *b0 as f64) / (*n1 as f64 - *n0 as f64);
            Some((*b1 as f64 + slope * (n as f64 - *n1 as f64)).max(0.0) as u64)
        }
    }
}

pub(crate) fn run(args: &NbodyScaleArgs, out: &mut dyn Write) -> Result<()> {
    // 0 leaves the pool at every core.
    rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads)
        .build_global()
        .context("starting the compute threads")?;
    let threads = rayon::current_num_threads();
    let machine = frugal_hw::MemoryInfo::detect(&frugal_hw::Cgroups::system())
        .context("reading the machine's memory budget")?;
    let picked = frugal_train::device::pick(args.device)?;
    crate::commands::train::warn_if_software(&picked)?;
    // On a card, its memory is the limit (a software driver's is the machine's).
    let card = (picked.gpu && !picked.software)
        .then(|| {
            frugal_hw::GpuReport::detect()
                .gpus
                .first()
                .map(|g| (g.memory_total_bytes, g.memory_free_bytes))
        })
        .flatten()
        .filter(|&(total, _)| total > 0);
    let budget = args
        .budget
        .unwrap_or(card.map_or(machine.budget_bytes, |(total, _)| total));
    // Points over the budget are still measured while the device can hold them (the
    // table shows what each technique costs); none is started that it could not.
    let runnable = card.map_or(machine.available_bytes, |(_, free)| free) / 10 * 9;
    let device = picked.device.clone();
    let mut particles = args.particles.clone();
    particles.sort_unstable();
    particles.dedup();
    let batch = args.batch.max(1);
    let err = &mut std::io::stderr().lock();
    let mut points = Vec::new();
    let configurations: Vec<Techniques> = [Techniques::Off, Techniques::On]
        .into_iter()
        .filter(|t| args.only.as_deref().is_none_or(|o| o == t.name()))
        .collect();
    for &techniques in &configurations {
        let precision = techniques.precision(args.precision);
        picked.check_precision(precision)?;
        writeln!(
            err,
            "techniques {techniques:?} on {}: {}",
            picked.name,
            techniques.describe(batch, precision)
        )?;
        let mut measured: Vec<(usize, u64)> = Vec::new();
        for &n in &particles {
            if let Some(guess) = estimate(&measured, n).filter(|&g| g > runnable) {
                writeln!(
                    err,
                    "  {n:>6} particles: not run, estimated {} exceeds {}",
                    Bytes(guess),
                    Bytes(runnable)
                )?;
                points.push(Point {
                    particles: n,
                    techniques,
                    precision,
                    how: "estimated",
                    peak_bytes: guess,
                    peak_heap_bytes: None,
                    peak_device_bytes: None,
                    step_seconds: None,
                    fits: guess <= budget,
                });
                continue;
            }
            let states: Vec<State> = (0..batch as u64)
                .map(|seed| plummer(n, seed))
                .collect::<Result<_>>()?;
            let whole = batch_of(&states, n)?;
            let task = ParticleGnn {
                particles: n,
                hidden: args.hidden,
                layers: args.layers,
                neighbours: args.neighbours,
                noise: 0.0,
                edge_chunks: ParticleGnn::EDGE_CHUNKS,
                norm: ParticleGnn::measure_normalization(
                    &whole,
                    n,
                    args.neighbours,
                    SOFTENING as f32,
                )?,
            };
            let (micro_batches, segments) = match techniques {
                Techniques::Off => (vec![whole], None),
                Techniques::On => (
                    states
                        .chunks(1)
                        .map(|one| batch_of(one, n))
                        .collect::<Result<Vec<_>>>()?,
                    Some(task.blocks()),
                ),
            };
            let m = frugal_train::device::catch_backend_panics(
                &format!("a training step at {n} particles"),
                &picked,
                || {
                    measure_step(
                        &task,
                        &micro_batches,
                        &device,
                        precision,
                        segments,
                        args.steps,
                    )
                },
            )?;
            let peak = m.peak_device_bytes.unwrap_or(m.peak_bytes);
            writeln!(
                err,
                "  {n:>6} particles: peak {}{}, {:.3} s a step",
                Bytes(peak),
                if m.peak_device_bytes.is_some() {
                    format!(" on the device, heap {}", Bytes(m.peak_bytes))
                } else {
                    String::new()
                },
                m.seconds
            )?;
            measured.push((n, peak));
            points.push(Point {
                particles: n,
                techniques,
                precision,
                how: "measured",
                peak_bytes: peak,
                peak_heap_bytes: Some(m.peak_bytes),
                peak_device_bytes: m.peak_device_bytes,
                step_seconds: Some(m.seconds),
                fits: peak <= budget,
            });
        }
    }
    let max = |t: Techniques| {
        points
            .iter()
            .filter(|p| p.techniques == t && p.how == "measured" && p.fits)
            .map(|p| p.particles)
            .max()
    };
    let (max_off, max_on) = (max(Techniques::Off), max(Techniques::On));
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let table = args.out.join("scale.csv");
    let mut csv = String::from(
        "particles,techniques,precision,how,peak_bytes,peak_device_bytes,step_seconds,fits\n",
    );
    for p in &points {
        csv.push_str(&format!(
            "{},{},{},{},{},{},{},{}\n",
            p.particles,
            p.techniques.name(),
            p.precision.name(),
            p.how,
            p.peak_bytes,
            p.peak_device_bytes
                .map(|b| b.to_string())
                .unwrap_or_default(),
            p.step_seconds
                .map(|s| format!("{s:.3}"))
                .unwrap_or_default(),
            p.fits
        ));
    }
    frugal_store::atomic_write(&table, csv.as_bytes())?;
    let plot = args.out.join("scale.png");
    let series = |t: Techniques| -> Vec<(f64, f64)> {
        points
            .iter()
            .filter(|p| p.techniques == t && p.how == "measured")
            .map(|p| {
                (
                    p.particles as f64,
                    p.peak_bytes as f64 / (1u64 << 30) as f64,
                )
            })
            .collect()
    };
    crate::plot::scaling(
        &series(Techniques::Off),
        &series(Techniques::On),
        budget as f64 / (1u64 << 30) as f64,
        &plot,
    )?;
    let summary = ScaleSummary {
        device: picked.name.clone(),
        budget_bytes: budget,
        hidden: args.hidden,
        layers: args.layers,
        neighbours: args.neighbours,
        batch,
        threads,
        ratio: max_off.zip(max_on).map(|(off, on)| on as f64 / off as f64),
        points,
        max_particles_off: max_off,
        max_particles_on: max_on,
        table,
        plot,
    };
    if args.json {
        return super::print_json(out, &summary);
    }
    writeln!(
        out,
        "graph network on {}: hidden {}, {} layers, {} neighbours, batch {}; budget {}; {} threads",
        summary.device,
        summary.hidden,
        summary.layers,
        summary.neighbours,
        batch,
        Bytes(budget),
        threads
    )?;
    writeln!(
        out,
        "{:>9}  {:>24}  {:>24}",
        "particles", "techniques off", "techniques on"
    )?;
    for &n in &particles {
        let cell = |t: Techniques| {
            summary
                .points
                .iter()
                .find(|p| p.particles == n && p.techniques == t)
                .map_or_else(String::new, |p| match p.step_seconds {
                    Some(s) => format!(
                        "{} {:.1} s{}",
                        Bytes(p.peak_bytes),
                        s,
                        if p.fits { "" } else { " ✗" }
                    ),
                    None => format!("~{} (not run) ✗", Bytes(p.peak_bytes)),
                })
        };
        writeln!(
            out,
            "{n:>9}  {:>24}  {:>24}",
            cell(Techniques::Off),
            cell(Techniques::On)
        )?;
    }
    let show = |m: Option<usize>| m.map_or_else(|| "none".to_owned(), |n| n.to_string());
    writeln!(
        out,
        "largest N within {}: {} off, {} on{}",
        Bytes(budget),
        show(max_off),
        show(max_on),
        summary
            .ratio
            .map_or_else(String::new, |r| format!(" ({r:.0}×)"))
    )?;
    writeln!(
        out,
        "table {}, plot {}",
        summary.table.display(),
        summary.plot.display()
    )?;
    Ok(())
}
