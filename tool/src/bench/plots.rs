//! SVG plots of a benchmark run (`aof2 bench --plot DIR`): latency percentile curves
//! (W2 against the raw loop, P1 against the peers) and the throughput rows' ratios to
//! their baselines as bars.

use super::report::Row;
use super::BenchResult;
use hdrhistogram::Histogram;
use plotters::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// One series of a latency plot.
struct Curve {
    /// File stem of the plot it belongs to (`latency_w2`, `latency_p1`).
    plot: &'static str,
    title: &'static str,
    series: &'static str,
    /// (nines: -log10(1 - quantile), microseconds).
    points: Vec<(f64, f64)>,
}

static CURVES: Mutex<Vec<Curve>> = Mutex::new(Vec::new());

const QUANTILES: [f64; 10] = [
    0.5, 0.75, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9995, 0.9999,
];

/// Keeps `h`'s percentile curve (latencies in ns) as series `series` of plot `plot`.
pub fn record_curve(
    plot: &'static str,
    title: &'static str,
    series: &'static str,
    h: &Histogram<u64>,
) {
    if h.is_empty() {
        return;
    }
    let points = QUANTILES
        .iter()
        .map(|&q| (-(1.0 - q).log10(), h.value_at_quantile(q) as f64 / 1000.0))
        .collect();
    let mut c = CURVES.lock().unwrap_or_else(|p| p.into_inner());
    c.push(Curve {
        plot,
        title,
        series,
        points,
    });
}

const PALETTE: [RGBColor; 5] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
];

fn latency_plot(path: &Path, curves: &[&Curve]) -> BenchResult<()> {
    let top = curves
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.1))
        .fold(1.0f64, f64::max)
        * 1.1;
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(curves[0].title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(0.2f64..4.1f64, 0f64..top)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (us)")
        .x_label_formatter(&|x| {
            let q = 100.0 * (1.0 - 10f64.powf(-x));
            format!("p{q:.2}")
                .trim_end_matches('0')
                .trim_end_matches('.')
                .to_string()
        })
        .draw()?;
    for (i, c) in curves.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(
                c.points.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(c.series)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Ratio bars of every throughput row (higher is better, with a baseline): aof2 over
/// its baseline, the baseline at 1.
fn throughput_plot(path: &Path, rows: &[&Row]) -> BenchResult<()> {
    let n = rows.len();
    let top = rows
        .iter()
        .map(|r| r.ratio())
        .filter(|r| r.is_finite())
        .fold(1.0f64, f64::max)
        * 1.15;
    let root = SVGBackend::new(path, (1000, 60 + 34 * n as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Throughput: aof2 / baseline (1 = the baseline; higher is better)",
            ("sans-serif", 20),
        )
        .margin(16)
        .x_label_area_size(36)
        .y_label_area_size(10)
        .build_cartesian_2d(0f64..top, 0f64..n as f64)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .disable_y_axis()
        .x_desc("ratio")
        .draw()?;
    for (i, r) in rows.iter().enumerate() {
        let y = (n - 1 - i) as f64;
        let ratio = if r.ratio().is_finite() {
            r.ratio()
        } else {
            0.0
        };
        let color = if ratio >= 1.0 { PALETTE[2] } else { PALETTE[1] };
        chart.draw_series(std::iter::once(Rectangle::new(
            [(0.0, y + 0.15), (ratio, y + 0.85)],
            color.mix(0.7).filled(),
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            format!(
                "{} {}: {ratio:.2}x ({})",
                r.workload, r.metric, r.baseline_desc
            ),
            (top * 0.01, y + 0.62),
            ("sans-serif", 13).into_font(),
        )))?;
    }
    chart.draw_series(LineSeries::new(
        vec![(1.0, 0.0), (1.0, n as f64)],
        BLACK.stroke_width(2),
    ))?;
    root.present()?;
    Ok(())
}

/// Writes every plot the run has data for into `dir` (created if missing); returns the
/// files written.
pub fn write(dir: &Path, rows: &[Row]) -> BenchResult<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut written = Vec::new();
    let curves = std::mem::take(&mut *CURVES.lock().unwrap_or_else(|p| p.into_inner()));
    let mut plots: Vec<&'static str> = curves.iter().map(|c| c.plot).collect();
    plots.dedup();
    for plot in plots {
        let mine: Vec<&Curve> = curves.iter().filter(|c| c.plot == plot).collect();
        let path = dir.join(format!("{plot}.svg"));
        latency_plot(&path, &mine)?;
        written.push(path);
    }
    let throughput: Vec<&Row> = rows
        .iter()
        .filter(|r| {
            r.higher_is_better && !r.baseline.is_nan() && matches!(r.unit, "rec/s" | "GB/s")
        })
        .collect();
    if !throughput.is_empty() {
        let path = dir.join("throughput.svg");
        throughput_plot(&path, &throughput)?;
        written.push(path);
    }
    Ok(written)
}
