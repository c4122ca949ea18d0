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
        // 1.4, not 1.400.
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// A log axis's tick label: two significant digits (3.2, 0.32, 3200, not 3.2e0), in
/// scientific notation only where [`tick`] would use it.
fn log_tick(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 || !a.is_finite() || !(1e-2..1e4).contains(&a) {
        return format!("{v:.1e}");
    }
    let exponent = a.log10().floor() as i32;
    let unit = 10f64.powi(exponent - 1);
    let rounded = (v / unit).round() * unit;
    let decimals = (1 - exponent).max(0) as usize;
    let s = format!("{rounded:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

type Series<'a> = (&'a str, RGBColor, Vec<(f64, f64)>);

/// Series with at most this many points also get a marker at each point, so a short
/// series (an evaluation run once) is visible, not a line of zero length.
const MARKERS_UP_TO: usize = 25;

/// A positive series spanning this factor or more is drawn on a log axis: errors and
/// losses that fall by decades would otherwise be a flat line at the bottom.
const LOG_SPAN: f64 = 100.0;

/// How a chart's axes are laid out for its series.
#[derive(Debug, PartialEq)]
struct Axes {
    /// y is drawn as log10 (positive values spanning [`LOG_SPAN`] or more).
    log: bool,
    x: (f64, f64),
    /// In drawn units (log10 when `log`), padded.
    y: (f64, f64),
    /// Every x is a whole number: ticks are too.
    whole_x: bool,
}

/// Whether a chart may switch its y axis to log.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Scale {
    /// Log when the values span decades (errors, losses, objectives over time).
    Auto,
    /// Always linear: a shape the reader knows in linear axes (a Pareto front).
    Linear,
}

fn axes(series: &[Series<'_>], scale: Scale) -> Axes {
    let points = || series.iter().flat_map(|s| s.2.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in points() {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x1 <= x0 {
        // One x: centre it.
        (x0, x1) = (x0 - 1.0, x1 + 1.0);
    }
    let log = scale == Scale::Auto && y0 > 0.0 && y1 / y0 >= LOG_SPAN;
    let (y0, y1) = if log {
        (y0.log10(), y1.log10())
    } else {
        (y0, y1)
    };
    let pad = if y1 > y0 {
        (y1 - y0) * 0.05
    } else {
        y1.abs().max(1e-12) * 0.05
    };
    // A quantity that cannot be negative gets no negative ticks.
    let low = if !log && y0 >= 0.0 {
        (y0 - pad).max(0.0)
    } else {
        y0 - pad
    };
    Axes {
        log,
        x: (x0, x1),
        y: (low, y1 + pad),
        whole_x: points().all(|&(x, _)| x.fract() == 0.0),
    }
}

/// The corner of the plot whose region (a third of the width, a quarter of the height)
/// holds the fewest points: where the legend hides the least.
fn legend_corner(
    series: &[Series<'_>],
    x: std::ops::Range<f64>,
    y: std::ops::Range<f64>,
    to_y: impl Fn(f64) -> f64,
) -> SeriesLabelPosition {
    let (w, h) = (x.end - x.start, y.end - y.start);
    let count = |right: bool, top: bool| {
        series
            .iter()
            .flat_map(|s| s.2.iter())
            .filter(|&&(px, py)| {
                let (fx, fy) = ((px - x.start) / w, (to_y(py) - y.start) / h);
                (if right { fx > 0.66 } else { fx < 0.34 })
                    && (if top { fy > 0.75 } else { fy < 0.25 })
            })
            .count()
    };
    [
        (SeriesLabelPosition::UpperRight, true, true),
        (SeriesLabelPosition::UpperLeft, false, true),
        (SeriesLabelPosition::LowerRight, true, false),
        (SeriesLabelPosition::LowerLeft, false, false),
    ]
    .into_iter()
    .min_by_key(|&(_, right, top)| count(right, top))
    .map_or(SeriesLabelPosition::UpperRight, |c| c.0)
}

/// Writes an RGB image of `size` to `path` (temporary name, synced, renamed).
fn write_png(path: &Path, rgb: &[u8], (w, h): (u32, u32)) -> Result<()> {
    frugal_store::atomic_write_with(path, |file| {
        let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        enc.write_header()
            .and_then(|mut wr| wr.write_image_data(rgb))
            .map_err(std::io::Error::other)
    })?;
    Ok(())
}

fn chart(
    path: &Path,
    title: &str,
    (x_label, y_label): (&str, &str),
    series: &[Series<'_>],
) -> Result<()> {
    chart_with(path, title, (x_label, y_label), series, Scale::Auto)
}

fn chart_with(
    path: &Path,
    title: &str,
    (x_label, y_label): (&str, &str),
    series: &[Series<'_>],
    scale: Scale,
) -> Result<()> {
    let points = || series.iter().flat_map(|s| s.2.iter());
    if points().next().is_none() {
        return Ok(());
    }
    let Axes {
        log,
        x: (x0, x1),
        y: (low, high),
        whole_x,
    } = axes(series, scale);
    let to_y = |y: f64| if log { y.log10() } else { y };
    // Ticks within rounding of zero read 0, not -1.4e-20.
    let tiny = (high - low).abs() * 1e-9;
    let y_desc = if log {
        format!("{y_label}, log scale")
    } else {
        y_label.to_string()
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
            .y_label_area_size(72)
            .build_cartesian_2d(x0..x1, low..high)
            .map_err(e)?;
        c.configure_mesh()
            .x_desc(x_label)
            .y_desc(y_desc)
            .x_label_formatter(&|v| {
                if whole_x {
                    // Steps, generations, particles: whole numbers only.
                    if v.fract() == 0.0 {
                        format!("{v:.0}")
                    } else {
                        String::new()
                    }
                } else if v.abs() >= 10.0 {
                    format!("{v:.0}")
                } else {
                    tick(*v)
                }
            })
            .y_label_formatter(&|v| {
                if log {
                    log_tick(10f64.powf(*v))
                } else if v.abs() < tiny {
                    "0".into()
                } else {
                    tick(*v)
                }
            })
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 16))
            .draw()
            .map_err(e)?;
        for (name, color, pts) in series {
            if pts.is_empty() {
                continue;
            }
            let color = *color;
            let pts: Vec<(f64, f64)> = pts.iter().map(|&(x, y)| (x, to_y(y))).collect();
            c.draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
                .map_err(e)?
                .label(*name)
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 22, y)], color.stroke_width(2))
                });
            if pts.len() <= MARKERS_UP_TO {
                c.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))
                    .map_err(e)?;
            }
        }
        c.configure_series_labels()
            .position(legend_corner(series, x0..x1, low..high, to_y))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 15))
            .draw()
            .map_err(e)?;
        root.present().map_err(e)?;
    }
    write_png(path, &buf, (w, h))
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
        (
            "recorded step of the rollout",
            "position MSE (N-body length units²)",
        ),
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

/// A gradient check's sweep into `path`: 1 − cosine and the relative error against
/// log10 β (both fall towards 0 as the estimate approaches the reference, so a log axis
/// shows what a cosine near 1 hides).
pub(crate) fn gradcheck(
    reference: &str,
    one_minus_cosine: &[(f64, f64)],
    relative_error: &[(f64, f64)],
    path: &Path,
) -> Result<()> {
    fonts()?;
    chart(
        path,
        &format!("EqProp gradient against {reference}"),
        ("log10 β", "1 − cosine, relative error"),
        &[
            (
                "1 − cosine",
                RGBColor(31, 119, 180),
                one_minus_cosine.to_vec(),
            ),
            (
                "relative error",
                RGBColor(230, 115, 0),
                relative_error.to_vec(),
            ),
        ],
    )
}

/// A training step's peak memory against iterations, EqProp's and BPTT's with and without
/// checkpointing, into `path`.
pub(crate) fn eqprop_memory(
    eqprop: &[(f64, f64)],
    bptt: &[(f64, f64)],
    checkpointed: &[(f64, f64)],
    path: &Path,
) -> Result<()> {
    fonts()?;
    chart_with(
        path,
        "Training step peak memory against iterations",
        ("iterations", "peak heap above weights and data (MiB)"),
        &[
            ("EqProp", RGBColor(31, 119, 180), eqprop.to_vec()),
            ("BPTT", RGBColor(214, 39, 40), bptt.to_vec()),
            (
                "BPTT, checkpointed",
                RGBColor(230, 115, 0),
                checkpointed.to_vec(),
            ),
        ],
        Scale::Linear,
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
    chart_with(
        path,
        "Pareto front of the final population",
        (&labels.0, &labels.1),
        &[("non-dominated candidates", RGBColor(31, 119, 180), points)],
        Scale::Linear,
    )
}

/// A precision's rollout error against f32 per step, one series per precision, into
/// `path`.
pub(crate) fn precision_error(series: &[(String, Vec<(f64, f64)>)], path: &Path) -> Result<()> {
    fonts()?;
    let colors = [
        RGBColor(31, 119, 180),
        RGBColor(230, 115, 0),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
    ];
    let drawn: Vec<Series<'_>> = series
        .iter()
        .enumerate()
        .map(|(i, (name, pts))| {
            (
                name.as_str(),
                colors[i % colors.len()],
                pts.iter().filter(|p| p.1.is_finite()).copied().collect(),
            )
        })
        .collect();
    chart(
        path,
        "Rollout error of reduced precision against f32",
        ("time step", "normalized RMS error"),
        &drawn,
    )
}

/// Per benchmark configuration, its throughput (upper panel) and its measured and
/// predicted peak memory (lower panel) as bars, into `path`. Rows that did not run have
/// no bars.
pub(crate) fn bench_rows(
    labels: &[String],
    throughput: &[Option<f64>],
    measured: &[Option<u64>],
    predicted: &[Option<u64>],
    path: &Path,
) -> Result<()> {
    fonts()?;
    let n = labels.len().max(1);
    let (w, h) = (SIZE.0.max(120 * n as u32), SIZE.1 + 200);
    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        let e = |e: DrawingAreaErrorKind<_>| anyhow!("drawing {}: {e:?}", path.display());
        root.fill(&WHITE).map_err(e)?;
        let (upper, lower) = root.split_vertically(h / 2);
        let label_at = |v: &f64| {
            let i = v.round();
            if (v - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < labels.len() {
                labels[i as usize].clone()
            } else {
                String::new()
            }
        };
        let most = measured
            .iter()
            .chain(predicted)
            .flatten()
            .copied()
            .max()
            .unwrap_or(0);
        let (unit_bytes, unit) = if most >= 1 << 30 {
            (f64::from(1u32 << 30), "GiB")
        } else {
            (f64::from(1u32 << 20), "MiB")
        };
        let gib = |b: u64| b as f64 / unit_bytes;
        type Bars = Vec<Vec<Option<f64>>>;
        let panels: [(&DrawingArea<_, _>, &str, &str, Bars); 2] = [
            (
                &upper,
                "Throughput per configuration",
                "time steps / s",
                vec![throughput.to_vec()],
            ),
            (
                &lower,
                "Peak memory per configuration: measured (blue), predicted (orange)",
                unit,
                vec![
                    measured.iter().map(|b| b.map(gib)).collect(),
                    predicted.iter().map(|b| b.map(gib)).collect(),
                ],
            ),
        ];
        let colors = [RGBColor(31, 119, 180), RGBColor(230, 115, 0)];
        for (area, title, unit, bars) in panels {
            let top = bars
                .iter()
                .flatten()
                .flatten()
                .copied()
                .fold(0.0f64, f64::max)
                .max(1e-9)
                * 1.1;
            let mut c = ChartBuilder::on(area)
                .caption(title, ("sans-serif", 22))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(72)
                .build_cartesian_2d(-0.5..(n as f64 - 0.5), 0.0..top)
                .map_err(e)?;
            c.configure_mesh()
                .disable_x_mesh()
                .x_labels(n)
                .x_label_formatter(&label_at)
                .y_desc(unit)
                .y_label_formatter(&|v| tick(*v))
                .label_style(("sans-serif", 13))
                .axis_desc_style(("sans-serif", 15))
                .draw()
                .map_err(e)?;
            let width = 0.8 / bars.len() as f64;
            for (k, series) in bars.iter().enumerate() {
                let color = colors[k % colors.len()];
                c.draw_series(series.iter().enumerate().filter_map(|(i, v)| {
                    v.map(|v| {
                        let x0 = i as f64 - 0.4 + k as f64 * width;
                        Rectangle::new([(x0, 0.0), (x0 + width * 0.9, v)], color.filled())
                    })
                }))
                .map_err(e)?;
            }
        }
        root.present().map_err(e)?;
    }
    write_png(path, &buf, (w, h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_spanning_decades_get_a_log_axis_and_steps_whole_ticks() {
        let errors: Vec<(f64, f64)> = (1..=20)
            .map(|i| (i as f64, 1e-9 * 10f64.powi(i / 4)))
            .collect();
        let a = axes(&[("e", BLACK, errors.clone())], Scale::Auto);
        assert!(!axes(&[("e", BLACK, errors)], Scale::Linear).log);
        assert!(a.log && a.whole_x);
        assert!(a.y.0 < -8.9 && a.y.1 > -4.1, "{a:?}");

        let accuracy = vec![(100.0, 0.91), (200.0, 0.95), (300.0, 0.97)];
        let a = axes(&[("a", BLACK, accuracy)], Scale::Auto);
        assert!(!a.log && a.whole_x);
        assert!(a.y.0 >= 0.0 && a.y.0 < 0.91 && a.y.1 > 0.97, "{a:?}");

        // Near zero, linear, never below it.
        let small = vec![(0.5, 0.0), (1.5, 3e-3)];
        let a = axes(&[("s", BLACK, small)], Scale::Auto);
        assert!(!a.log && !a.whole_x && a.y.0 == 0.0, "{a:?}");
    }

    #[test]
    fn ticks_read_plainly() {
        assert_eq!(tick(1.4), "1.4");
        assert_eq!(tick(0.0), "0");
        assert_eq!(tick(250.0), "250");
        assert_eq!(tick(3e-5), "3.0e-5");
        assert_eq!(log_tick(1.0), "1");
        assert_eq!(log_tick(10f64.powf(0.5)), "3.2");
        assert_eq!(log_tick(10f64.powf(-0.5)), "0.32");
        assert_eq!(log_tick(10f64.powf(1.5)), "32");
        assert_eq!(log_tick(10f64.powf(3.5)), "3200");
        assert_eq!(log_tick(0.0316), "0.032");
        assert_eq!(log_tick(3e-5), "3.0e-5");
        assert_eq!(log_tick(2.5e7), "2.5e7");
    }

    #[test]
    fn a_one_point_series_is_drawn() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("one.png");
        fonts().unwrap();
        chart(
            &path,
            "one",
            ("step", "loss"),
            &[("test", BLACK, vec![(300.0, 0.5)])],
        )
        .unwrap();
        let png = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
        let mut reader = png.read_info().unwrap();
        let mut img = vec![0; reader.output_buffer_size().unwrap()];
        reader.next_frame(&mut img).unwrap();
        // The marker: black pixels beside the axes' (the plot area's middle is empty
        // without it, a line of one point having no length).
        let (w, h) = (SIZE.0 as usize, SIZE.1 as usize);
        let dark = (h / 3..2 * h / 3)
            .flat_map(|y| (w / 3..2 * w / 3).map(move |x| (x, y)))
            .filter(|&(x, y)| img[(y * w + x) * 3] < 60)
            .count();
        assert!(dark > 10, "{dark} dark pixels in the middle");
    }
}
