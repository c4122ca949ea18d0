//! PNG plots: training curves (loss, train and test, and accuracy against the optimizer
//! step) and rollout errors against the rollout step.
//! Text is drawn with an embedded font, so no system font is needed.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{Result, anyhow};
use frugal_train::metrics::{Record, Split};
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

const SIZE: (u32, u32) = (900, 540);

fn fonts() -> Result<()> {
    static LOADED: OnceLock<bool> = OnceLock::new();
    let loaded = *LOADED.get_or_init(|| {
        register_font("sans-serif", FontStyle::Normal, ttf_noto_sans::REGULAR).is_ok()
    });
    if loaded {
        Ok(())
    } else {
        Err(anyhow!("the embedded font could not be loaded"))
    }
}

/// A tick label: plain for ordinary magnitudes, scientific for tiny or huge ones.
fn tick(v: f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-2..1e4).contains(&a) {
        format!("{v:.1e}")
    } else {
        format!("{v:.3}")
    }
}

type Series<'a> = (&'a str, RGBColor, Vec<(f64, f64)>);

fn chart(
    path: &Path,
    title: &str,
    (x_label, y_label): (&str, &str),
    series: &[Series<'_>],
) -> Result<()> {
    let points = || series.iter().flat_map(|s| s.2.iter());
    if points().next().is_none() {
        return Ok(());
    }
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in points() {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let pad = if y1 > y0 {
        (y1 - y0) * 0.05
    } else {
        y1.abs().max(1e-12) * 0.05
    };
    let (w, h) = SIZE;
    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, SIZE).into_drawing_area();
        let e = |e: DrawingAreaErrorKind<_>| anyhow!("drawing {}: {e:?}", path.display());
        root.fill(&WHITE).map_err(e)?;
        let mut c = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 24))
            .margin(14)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad))
            .map_err(e)?;
        c.configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .x_label_formatter(&|v| {
                if v.abs() >= 10.0 {
                    format!("{v:.0}")
                } else {
                    tick(*v)
                }
            })
            .y_label_formatter(&|v| tick(*v))
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 16))
            .draw()
            .map_err(e)?;
        for (name, color, pts) in series {
            if pts.is_empty() {
                continue;
            }
            let color = *color;
            c.draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
                .map_err(e)?
                .label(*name)
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 22, y)], color.stroke_width(2))
                });
        }
        c.configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 15))
            .draw()
            .map_err(e)?;
        root.present().map_err(e)?;
    }
    frugal_store::atomic_write_with(path, |file| {
        let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        enc.write_header()
            .and_then(|mut wr| wr.write_image_data(&buf))
            .map_err(std::io::Error::other)
    })?;
    Ok(())
}

/// Writes `loss.png` and `accuracy.png` into `dir` from a run's metrics records.
pub(crate) fn training_curves(records: &[Record], dir: &Path) -> Result<()> {
    fonts()?;
    let pick = |split: Split, f: fn(&Record) -> Option<f64>| -> Vec<(f64, f64)> {
        records
            .iter()
            .filter(|r| r.split == split)
            .filter_map(|r| f(r).map(|v| (r.step as f64, v)))
            .collect()
    };
    let blue = RGBColor(31, 119, 180);
    let orange = RGBColor(230, 115, 0);
    chart(
        &dir.join("loss.png"),
        "Loss",
        ("optimizer step", "loss"),
        &[
            ("train", blue, pick(Split::Train, |r| Some(r.loss))),
            ("test", orange, pick(Split::Eval, |r| Some(r.loss))),
        ],
    )?;
    chart(
        &dir.join("accuracy.png"),
        "Accuracy",
        ("optimizer step", "fraction correct"),
        &[
            ("train", blue, pick(Split::Train, |r| r.accuracy)),
            ("test", orange, pick(Split::Eval, |r| r.accuracy)),
        ],
    )
}

/// Position error against rollout step, the learned rollout's and the constant-velocity
/// baseline's, into `path`.
pub(crate) fn rollout_errors(learned: &[f64], baseline: &[f64], path: &Path) -> Result<()> {
    fonts()?;
    let points = |v: &[f64]| -> Vec<(f64, f64)> {
        v.iter()
            .enumerate()
            .map(|(i, &e)| ((i + 1) as f64, e))
            .collect()
    };
    chart(
        path,
        "Rollout position error on held-out simulations",
        ("rollout step", "position MSE"),
        &[
            ("graph network", RGBColor(31, 119, 180), points(learned)),
            ("constant velocity", RGBColor(230, 115, 0), points(baseline)),
        ],
    )
}

/// Writes the scaling study's plot: peak memory against particles with the techniques off
/// and on, and the budget.
pub(crate) fn scaling(
    off: &[(f64, f64)],
    on: &[(f64, f64)],
    budget_gib: f64,
    path: &Path,
) -> Result<()> {
    fonts()?;
    let xs = off.iter().chain(on).map(|p| p.0);
    let (x0, x1) = xs.fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
    let budget = if x1 >= x0 {
        vec![(x0, budget_gib), (x1, budget_gib)]
    } else {
        Vec::new()
    };
    chart(
        path,
        "Training step peak memory",
        ("particles", "peak memory (GiB)"),
        &[
            ("techniques off", RED, off.to_vec()),
            ("techniques on", BLUE, on.to_vec()),
            ("budget", BLACK, budget),
        ],
    )
}

/// Best, mean and worst of the population's objective per generation, into `path`.
pub(crate) fn convergence(
    label: &str,
    best: &[(f64, f64)],
    mean: &[(f64, f64)],
    worst: &[(f64, f64)],
    path: &Path,
) -> Result<()> {
    fonts()?;
    chart(
        path,
        &format!("Convergence: {label} per generation"),
        ("generation", label),
        &[
            ("best", RGBColor(31, 119, 180), best.to_vec()),
            ("mean", RGBColor(44, 160, 44), mean.to_vec()),
            ("worst", RGBColor(214, 39, 40), worst.to_vec()),
        ],
    )
}

/// The final population's non-dominated front in objective space, into `path`.
pub(crate) fn pareto_front(
    labels: &(String, String),
    front: &[(f64, f64)],
    path: &Path,
) -> Result<()> {
    fonts()?;
    let mut points = front.to_vec();
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    chart(
        path,
        "Pareto front of the final population",
        (&labels.0, &labels.1),
        &[("non-dominated candidates", RGBColor(31, 119, 180), points)],
    )
}
