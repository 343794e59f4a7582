//! Pictures: metric curves from JSON-lines logs, and heat maps (attention, positional
//! encodings). PNG or SVG chosen by the output file's extension.

use crate::metrics::read_jsonl;
use anyhow::{bail, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;
use std::sync::Once;

static FONT: &[u8] = include_bytes!("../assets/DejaVuSansMono.ttf");
static REGISTER: Once = Once::new();

fn register_font() {
    REGISTER.call_once(|| {
        // Registration only fails for an unparsable font, which the bundled one is not.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// One named series of (x, y) points.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend label.
    pub name: String,
    /// The (x, y) points, in drawing order.
    pub points: Vec<(f64, f64)>,
}

/// Series for each (file, split, key): `key` against `step`, one line per split found.
pub fn series_from_logs(paths: &[&Path], key: &str) -> Result<Vec<Series>> {
    series_from_logs_against(paths, "step", key)
}

/// Series for each (file, split): `key` against `x_key` (e.g. `step` or `cpu_minutes`), from
/// the records that hold both as numbers. Legend names: with several files, the folder
/// holding each file (the run's name), followed by the split when the key occurs in more
/// than one split; with one file, the split (or the key). Errors when no record has both.
pub fn series_from_logs_against(paths: &[&Path], x_key: &str, key: &str) -> Result<Vec<Series>> {
    let mut found: Vec<(String, String, Vec<(f64, f64)>)> = Vec::new();
    for p in paths {
        let recs = read_jsonl(p)?;
        let mut by_split: std::collections::BTreeMap<String, Vec<(f64, f64)>> = Default::default();
        let mut left_out = 0usize;
        for r in &recs {
            let (Some(value), Some(xv)) = (r.get(key), r.get(x_key)) else {
                continue;
            };
            let (Some(x), Some(v)) = (xv.as_f64(), value.as_f64()) else {
                // NaN and infinities are logged as `null`.
                left_out += 1;
                continue;
            };
            if !drawable(x) || !drawable(v) {
                left_out += 1;
                continue;
            }
            let split = r.get("split").and_then(|s| s.as_str()).unwrap_or("").to_string();
            by_split.entry(split).or_default().push((x, v));
        }
        if left_out > 0 {
            eprintln!(
                "warning: {}: left out {left_out} `{key}`/`{x_key}` value(s) that are not finite numbers (NaN/inf are logged as null) or lie beyond ±{DRAWABLE_MAX:e}",
                p.display()
            );
        }
        let stem = p
            .parent()
            .and_then(|d| d.file_name())
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        found.extend(
            by_split
                .into_iter()
                .map(|(split, points)| (stem.clone(), split, points)),
        );
    }
    if found.is_empty() {
        bail!(
            "no record with both `{key}` and `{x_key}` in {}",
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let one_split = found.iter().all(|f| f.1 == found[0].1);
    Ok(found
        .into_iter()
        .map(|(stem, split, points)| {
            let name = match (paths.len() > 1, split.is_empty()) {
                (true, true) => stem,
                (true, false) if one_split => stem,
                (true, false) => format!("{stem} {split}"),
                (false, true) => key.to_string(),
                (false, false) => split,
            };
            Series { name, points }
        })
        .collect())
}

fn with_backend(
    out: &Path,
    size: (u32, u32),
    draw: impl FnOnce(&DrawingArea<BitMapBackend, Shift>) -> Result<()>,
    draw_svg: impl FnOnce(&DrawingArea<SVGBackend, Shift>) -> Result<()>,
) -> Result<()> {
    register_font();
    if let Some(d) = out.parent() {
        if !d.as_os_str().is_empty() {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
    }
    match out
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .as_deref()
    {
        Some("png") => {
            let root = BitMapBackend::new(out, size).into_drawing_area();
            draw(&root)?;
            root.present().with_context(|| format!("writing {}", out.display()))?;
        }
        Some("svg") => {
            let root = SVGBackend::new(out, size).into_drawing_area();
            draw_svg(&root)?;
            root.present().with_context(|| format!("writing {}", out.display()))?;
        }
        _ => bail!("{}: output must end in .png or .svg", out.display()),
    }
    Ok(())
}

/// Largest magnitude drawn: beyond it the axis arithmetic (widths, padding, tick steps)
/// would overflow to infinity.
pub const DRAWABLE_MAX: f64 = 1e300;

/// Whether a coordinate can be drawn: finite and within ±[`DRAWABLE_MAX`].
fn drawable(v: f64) -> bool {
    v.is_finite() && v.abs() <= DRAWABLE_MAX
}

/// A linear axis range around data in `[lo, hi]`: 5 % padding, and never narrower than a
/// millionth of the values' magnitude (a zero-width or sub-ulp range would divide by zero
/// in the tick computation).
fn linear_range(lo: f64, hi: f64) -> (f64, f64) {
    let mag = lo.abs().max(hi.abs());
    let width = (hi - lo).max(mag * 1e-6).max(1e-200);
    let mid = lo / 2.0 + hi / 2.0;
    (mid - width * 0.55, mid + width * 0.55)
}

/// Whether a logarithmic y axis suits values in `[lo, hi]`: all positive and normal (a
/// subnormal such as 5e-324 spans hundreds of decades), at least one decade apart (else it
/// gets no tick labels) and at most 30 (beyond that a curve is a flat line and the ticks
/// crowd out). `None` if it suits, else the reason.
fn log_axis_refusal(lo: f64, hi: f64) -> Option<&'static str> {
    if lo <= 0.0 {
        Some("the values include zero or negative numbers")
    } else if lo < 1e-200 {
        Some("the values include numbers too close to zero")
    } else if hi / lo < 10.0 {
        Some("")
    } else if hi / lo > 1e30 {
        Some("the values span more than 30 decades")
    } else {
        None
    }
}

/// Line chart of several series; `log_y` for losses spanning decades (a linear axis is drawn
/// instead, with a note on stderr, when the values do not suit one). Points must be finite
/// and within ±[`DRAWABLE_MAX`] (an error otherwise; [`series_from_logs`] leaves such values
/// out).
pub fn line_chart(out: &Path, title: &str, x_label: &str, y_label: &str, series: &[Series], log_y: bool) -> Result<()> {
    let pts = series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        if !drawable(x) || !drawable(y) {
            bail!("cannot draw the point ({x}, {y}): coordinates must be finite and within ±{DRAWABLE_MAX:e}");
        }
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        bail!("nothing to plot");
    }
    let (x0, x1) = if x1 - x0 >= x0.abs().max(x1.abs()) * 1e-6 && x1 > x0 {
        (x0, x1)
    } else {
        linear_range(x0, x1)
    };
    let log_y = log_y
        && match log_axis_refusal(y0, y1) {
            None => true,
            Some("") => false,
            Some(why) => {
                eprintln!("note: {}: linear y axis, since {why}", out.display());
                false
            }
        };
    let (lin_lo, lin_hi) = linear_range(y0, y1);
    macro_rules! body {
        ($root:expr) => {{
            let root = $root;
            root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut b = ChartBuilder::on(root);
            b.caption(title, ("sans-serif", 22))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(70);
            macro_rules! finish {
                ($chart:expr) => {{
                    let mut chart = $chart;
                    chart
                        .configure_mesh()
                        .x_desc(x_label)
                        .y_desc(y_label)
                        .draw()
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                    for (i, s) in series.iter().enumerate() {
                        let c = Palette99::pick(i).to_rgba();
                        chart
                            .draw_series(LineSeries::new(s.points.iter().cloned(), c.stroke_width(2)))
                            .map_err(|e| anyhow::anyhow!("{e}"))?
                            .label(s.name.clone())
                            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
                    }
                    chart
                        .configure_series_labels()
                        .background_style(WHITE.mix(0.8))
                        .border_style(BLACK)
                        .draw()
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                }};
            }
            if log_y {
                finish!(b
                    .build_cartesian_2d(x0..x1, (y0 * 0.95..y1 * 1.05).log_scale())
                    .map_err(|e| anyhow::anyhow!("{e}"))?);
            } else {
                finish!(b
                    .build_cartesian_2d(x0..x1, lin_lo..lin_hi)
                    .map_err(|e| anyhow::anyhow!("{e}"))?);
            }
            Ok(())
        }};
    }
    with_backend(out, (900, 560), |r| body!(r), |r| body!(r))
}

/// Heat map of a row-major matrix (rows × cols) with optional tick labels.
pub fn heatmap(out: &Path, title: &str, data: &[Vec<f32>], row_labels: &[String], col_labels: &[String]) -> Result<()> {
    heatmaps(out, &[(title.to_string(), data.to_vec())], row_labels, col_labels, 1)
}

/// Several heat maps of the same shape side by side (`columns` per row of panels), each
/// `(title, matrix)` with its own colour range; the tick labels are shared.
pub fn heatmaps(
    out: &Path,
    panels: &[(String, Vec<Vec<f32>>)],
    row_labels: &[String],
    col_labels: &[String],
    columns: usize,
) -> Result<()> {
    let Some((_, first)) = panels.first() else {
        bail!("heat map needs at least one panel");
    };
    let rows = first.len();
    let cols = first.first().map_or(0, |r| r.len());
    if rows == 0
        || cols == 0
        || panels
            .iter()
            .any(|(_, d)| d.len() != rows || d.iter().any(|r| r.len() != cols))
    {
        bail!("heat map needs non-empty rectangular matrices of one shape");
    }
    let columns = columns.clamp(1, panels.len());
    let grid_rows = panels.len().div_ceil(columns);
    let cell = (700 / cols.max(rows)).clamp(4, 40) as u32;
    let (pw, ph) = (160 + cell * cols as u32, 120 + cell * rows as u32);
    let size = (pw * columns as u32, ph * grid_rows as u32);
    macro_rules! body {
        ($root:expr) => {{
            let root = $root;
            root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
            let areas = root.split_evenly((grid_rows, columns));
            for (area, (title, data)) in areas.iter().zip(panels) {
                let (lo, hi) = data
                    .iter()
                    .flatten()
                    .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
                let span = if hi > lo { hi - lo } else { 1.0 };
                let mut chart = ChartBuilder::on(area)
                    .caption(format!("{title}  [{lo:.3}, {hi:.3}]"), ("sans-serif", 18))
                    .margin(10)
                    .x_label_area_size(60)
                    .y_label_area_size(90)
                    .build_cartesian_2d(0..cols, (0..rows).into_segmented())
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                // The axis also asks for the end of the range (x == cols): no label there.
                let xl = |x: &usize| match *x < cols {
                    true => col_labels.get(*x).cloned().unwrap_or_else(|| x.to_string()),
                    false => String::new(),
                };
                let yl = |y: &SegmentValue<usize>| match y {
                    // The axis also asks for the segment end (index == rows): no label there.
                    SegmentValue::CenterOf(i) | SegmentValue::Exact(i) if *i < rows => row_labels
                        .get(rows - 1 - *i)
                        .cloned()
                        .unwrap_or_else(|| (rows - 1 - *i).to_string()),
                    SegmentValue::CenterOf(_) | SegmentValue::Exact(_) => String::new(),
                    SegmentValue::Last => String::new(),
                };
                chart
                    .configure_mesh()
                    .disable_mesh()
                    .x_labels(cols.min(40))
                    .y_labels(rows.min(40))
                    .x_label_formatter(&xl)
                    .y_label_formatter(&yl)
                    .draw()
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                chart
                    .draw_series(data.iter().enumerate().flat_map(|(r, row)| {
                        row.iter().enumerate().map(move |(c, &v)| {
                            let t = ((v - lo) / span) as f64;
                            let color = ViridisRGB::get_color(t);
                            let y = rows - 1 - r;
                            Rectangle::new(
                                [(c, SegmentValue::Exact(y)), (c + 1, SegmentValue::Exact(y + 1))],
                                color.filled(),
                            )
                        })
                    }))
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            Ok(())
        }};
    }
    with_backend(out, size, |r| body!(r), |r| body!(r))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_png_and_svg() {
        let dir = std::env::temp_dir().join(format!("seqlab-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let s = vec![Series {
            name: "train".into(),
            points: (1..50).map(|i| (i as f64, 5.0 / i as f64)).collect(),
        }];
        for ext in ["png", "svg"] {
            let p = dir.join(format!("c.{ext}"));
            line_chart(&p, "loss", "step", "loss", &s, true).unwrap();
            assert!(std::fs::metadata(&p).unwrap().len() > 1000);
        }
        let m: Vec<Vec<f32>> = (0..6).map(|r| (0..8).map(|c| (r * c) as f32).collect()).collect();
        heatmap(&dir.join("h.png"), "t", &m, &[], &[]).unwrap();
        let panels: Vec<(String, Vec<Vec<f32>>)> = (0..3).map(|h| (format!("head {h}"), m.clone())).collect();
        heatmaps(&dir.join("g.svg"), &panels, &[], &[], 2).unwrap();
        assert!(heatmaps(&dir.join("e.png"), &[], &[], &[], 2).is_err());
        assert!(line_chart(&dir.join("x.bmpx"), "", "", "", &s, false).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn series_against_another_key_are_named_by_run() {
        let dir = std::env::temp_dir().join(format!("seqlab-plot-x-{}", std::process::id()));
        let mut files = Vec::new();
        for (run, rate) in [("lstm", 1.0), ("mamba", 2.0)] {
            let d = dir.join(run);
            std::fs::create_dir_all(&d).unwrap();
            let lines: Vec<String> = (1..=4)
                .flat_map(|i| {
                    let m = i as f64 * rate;
                    [
                        format!(r#"{{"step":{},"split":"train","loss":1.0,"cpu_minutes":{m}}}"#, i * 10),
                        format!(
                            r#"{{"step":{},"split":"valid","bpc":{},"cpu_minutes":{m}}}"#,
                            i * 10,
                            3.0 / i as f64
                        ),
                    ]
                })
                .collect();
            std::fs::write(d.join("metrics.jsonl"), lines.join("\n")).unwrap();
            files.push(d.join("metrics.jsonl"));
        }
        let refs: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
        let s = series_from_logs_against(&refs, "cpu_minutes", "bpc").unwrap();
        // bpc only occurs in the valid split: each run's legend is its folder name alone.
        assert_eq!(s.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["lstm", "mamba"]);
        assert_eq!(s[1].points, [(2.0, 3.0), (4.0, 1.5), (6.0, 1.0), (8.0, 0.75)]);
        // loss against the step: only train records have it.
        let by_step = series_from_logs(&refs, "loss").unwrap();
        assert_eq!(by_step[0].points[0], (10.0, 1.0));
        // Two splits with the key: the split is named too.
        let cpu = series_from_logs_against(&refs, "step", "cpu_minutes").unwrap();
        assert_eq!(cpu.len(), 4);
        assert_eq!(cpu[0].name, "lstm train");
        assert!(series_from_logs_against(&refs, "wall_minutes", "bpc")
            .unwrap_err()
            .to_string()
            .contains("`wall_minutes`"));
        let out = dir.join("bpc.png");
        line_chart(&out, "bpc", "cpu_minutes", "bpc", &s, false).unwrap();
        assert!(std::fs::metadata(&out).unwrap().len() > 1000);
        std::fs::remove_dir_all(&dir).ok();
    }
}
