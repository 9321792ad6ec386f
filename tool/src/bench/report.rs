//! One measured figure against its baseline, and how figures are printed.

use hdrhistogram::Histogram;

/// One measured figure with its baseline.
#[derive(Debug, Clone)]
pub struct Row {
    pub workload: &'static str,
    pub metric: &'static str,
    pub unit: &'static str,
    pub ours: f64,
    pub baseline: f64,
    /// True when larger is better (throughput), false for latency.
    pub higher_is_better: bool,
    pub baseline_desc: &'static str,
    /// The median of per-run ratios, where runs were compared one by one (reported
    /// instead of `ours / baseline` of the medians).
    pub median_ratio: Option<f64>,
}

impl Row {
    /// ours / baseline for throughput, ours / baseline for latency too (so < 1 is
    /// faster than the baseline for latency, > 1 faster for throughput).
    pub fn ratio(&self) -> f64 {
        if let Some(r) = self.median_ratio {
            return r;
        }
        if self.baseline == 0.0 {
            return f64::NAN;
        }
        self.ours / self.baseline
    }
}

/// A builder of one workload's rows: `(metric, unit, ours, baseline, higher_is_better,
/// baseline_desc)`.
pub fn rows_of(
    workload: &'static str,
) -> impl Fn(&'static str, &'static str, f64, f64, bool, &'static str) -> Row {
    move |metric, unit, ours, baseline, higher_is_better, baseline_desc| Row {
        workload,
        metric,
        unit,
        ours,
        baseline,
        higher_is_better,
        baseline_desc,
        median_ratio: None,
    }
}

/// A row of information with no baseline (a count or a per-operation figure).
pub fn info_row(
    workload: &'static str,
    metric: &'static str,
    value: f64,
    higher_is_better: bool,
    what: &'static str,
) -> Row {
    Row {
        workload,
        metric,
        unit: "x",
        ours: value,
        baseline: f64::NAN,
        higher_is_better,
        baseline_desc: what,
        median_ratio: None,
    }
}

pub fn percentile_us(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// A latency row: quantile `q` of ours and of the baseline, in microseconds.
pub fn latency_row(
    workload: &'static str,
    metric: &'static str,
    q: f64,
    (ours, base): (&Histogram<u64>, &Histogram<u64>),
    baseline_desc: &'static str,
) -> Row {
    Row {
        workload,
        metric,
        unit: "us",
        ours: percentile_us(ours, q),
        baseline: percentile_us(base, q),
        higher_is_better: false,
        baseline_desc,
        median_ratio: None,
    }
}

/// The median of `v` (the mean of the middle two of an even count; NaN when empty).
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The median of `ours[i] / base[i]`: rounds compared one by one.
pub fn median_ratio(ours: &[f64], base: &[f64]) -> f64 {
    let r: Vec<f64> = ours.iter().zip(base).map(|(o, b)| o / b).collect();
    median(&r)
}

/// A row of per-round figures: the medians of ours and of the baseline, and the
/// median of the per-round ratios.
pub fn rounds_row(
    workload: &'static str,
    metric: &'static str,
    unit: &'static str,
    (ours, base): (&[f64], &[f64]),
    higher_is_better: bool,
    baseline_desc: &'static str,
) -> Row {
    Row {
        workload,
        metric,
        unit,
        ours: median(ours),
        baseline: median(base),
        higher_is_better,
        baseline_desc,
        median_ratio: Some(median_ratio(ours, base)),
    }
}

/// Latencies of ours and of the baseline, one histogram each per round: rows of the
/// medians over rounds of each quantile, and of the per-round ratios.
pub struct LatencyRounds {
    pub ours: Vec<Histogram<u64>>,
    pub base: Vec<Histogram<u64>>,
}

impl LatencyRounds {
    pub fn new() -> LatencyRounds {
        LatencyRounds {
            ours: Vec::new(),
            base: Vec::new(),
        }
    }

    /// Adds one round's pair of histograms.
    pub fn push(&mut self, ours: Histogram<u64>, base: Histogram<u64>) {
        self.ours.push(ours);
        self.base.push(base);
    }

    /// One row per `(metric, quantile)`, in microseconds.
    pub fn rows(
        &self,
        workload: &'static str,
        quantiles: &[(&'static str, f64)],
        baseline_desc: &'static str,
    ) -> Vec<Row> {
        // Rounds where either side recorded nothing have no quantile to compare.
        let kept: Vec<usize> = (0..self.ours.len().min(self.base.len()))
            .filter(|&i| !self.ours[i].is_empty() && !self.base[i].is_empty())
            .collect();
        let at = |hs: &[Histogram<u64>], q| -> Vec<f64> {
            kept.iter().map(|&i| percentile_us(&hs[i], q)).collect()
        };
        quantiles
            .iter()
            .map(|&(metric, q)| {
                rounds_row(
                    workload,
                    metric,
                    "us",
                    (&at(&self.ours, q), &at(&self.base, q)),
                    false,
                    baseline_desc,
                )
            })
            .collect()
    }

    /// Rounds made of consecutive slices: `ours[i]` and `base[i]` alternated, merged
    /// into (at most) `rounds` rounds of equal numbers of slices.
    pub fn of_slices(
        ours: &[Histogram<u64>],
        base: &[Histogram<u64>],
        rounds: usize,
    ) -> LatencyRounds {
        LatencyRounds {
            ours: merge_slices(ours, rounds),
            base: merge_slices(base, rounds),
        }
    }

    /// Every round's samples together (for the latency plots).
    pub fn pooled(&self) -> (Histogram<u64>, Histogram<u64>) {
        (pool(&self.ours), pool(&self.base))
    }
}

/// Every sample of `hs` in one histogram.
pub fn pool(hs: &[Histogram<u64>]) -> Histogram<u64> {
    let mut h = hist();
    for s in hs {
        h.add(s).expect("the same bounds");
    }
    h
}

/// Consecutive slices merged into (at most) `rounds` histograms.
pub fn merge_slices(slices: &[Histogram<u64>], rounds: usize) -> Vec<Histogram<u64>> {
    let per = slices.len().div_ceil(rounds.max(1)).max(1);
    slices.chunks(per).map(pool).collect()
}

/// p50, p99 and p99.9, the quantiles of the latency rows.
pub const P50_P99_P999: [(&str, f64); 3] = [("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999)];

pub fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds")
}

pub fn fmt_value(v: f64, unit: &str) -> String {
    match unit {
        "rec/s" if v >= 1e6 => format!("{:.2} M/s", v / 1e6),
        "rec/s" if v >= 1e3 => format!("{:.1} k/s", v / 1e3),
        "rec/s" => format!("{v:.0} /s"),
        "us" => format!("{v:.0} us"),
        "ns" => format!("{v:.0} ns"),
        "GB/s" => format!("{v:.2} GB/s"),
        "ms" => format!("{v:.1} ms"),
        _ => format!("{v:.2}"),
    }
}
