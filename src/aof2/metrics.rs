//! Flush and append metrics of one log, and an exporter that turns them into named
//! samples for any metrics system.

use aof2_shards::log_handle::LogMetrics;

/// Counters (monotonic, `_total`) and gauges of one log at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlushMetricsSnapshot {
    /// Records appended (this session).
    pub records_appended: u64,
    /// Payload bytes appended.
    pub bytes_appended: u64,
    /// Data writes issued (segment preparation excluded).
    pub write_ops: u64,
    /// Bytes those writes covered (whole blocks, rewrites of the last block included).
    pub bytes_written: u64,
    /// `fdatasync` calls completed (data, headers, footers).
    pub syncs: u64,
    /// Flushes started by `flush_watermark_bytes`.
    pub flushes_watermark: u64,
    /// Flushes started by `flush_interval_ms`.
    pub flushes_interval: u64,
    /// Flush requests (`flush_until`, `flush`, back-pressure, close).
    pub flushes_requested: u64,
    /// Segments sealed (footer durable).
    pub segments_sealed: u64,
    /// Segment files prepared (zero-written, synced, renamed into place).
    pub segments_prepared: u64,
    /// Failed writes or syncs (each poisons the log).
    pub failures: u64,
    /// Bytes appended but not yet covered by a completed sync.
    pub backlog_bytes: u64,
    /// Appends that waited for back-pressure.
    pub backpressure_waits: u64,
}

impl From<LogMetrics> for FlushMetricsSnapshot {
    fn from(m: LogMetrics) -> Self {
        let c = m.core;
        FlushMetricsSnapshot {
            records_appended: c.records_appended,
            bytes_appended: c.bytes_appended,
            write_ops: c.write_ops,
            bytes_written: c.bytes_written,
            syncs: c.syncs,
            flushes_watermark: c.flushes_watermark,
            flushes_interval: c.flushes_interval,
            flushes_requested: c.flushes_requested,
            segments_sealed: c.segments_sealed,
            segments_prepared: c.segments_prepared,
            failures: c.io_failures,
            backlog_bytes: m.unflushed_bytes,
            backpressure_waits: m.backpressure_waits,
        }
    }
}

/// One named value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricSample {
    /// Prometheus-style name (`aof_..._total` for counters).
    pub name: &'static str,
    /// The value.
    pub value: u64,
}

/// Turns a snapshot into samples named in Prometheus style.
#[derive(Debug, Clone, Copy)]
pub struct FlushMetricsExporter {
    snapshot: FlushMetricsSnapshot,
}

impl FlushMetricsExporter {
    /// An exporter for one snapshot.
    pub fn new(snapshot: FlushMetricsSnapshot) -> Self {
        FlushMetricsExporter { snapshot }
    }

    /// Every sample, in a fixed order.
    pub fn samples(&self) -> Vec<MetricSample> {
        let s = &self.snapshot;
        [
            ("aof_records_appended_total", s.records_appended),
            ("aof_append_bytes_total", s.bytes_appended),
            ("aof_write_ops_total", s.write_ops),
            ("aof_write_bytes_total", s.bytes_written),
            ("aof_syncs_total", s.syncs),
            ("aof_flush_watermark_total", s.flushes_watermark),
            ("aof_flush_interval_total", s.flushes_interval),
            ("aof_flush_requested_total", s.flushes_requested),
            ("aof_segments_sealed_total", s.segments_sealed),
            ("aof_segments_prepared_total", s.segments_prepared),
            ("aof_flush_failures_total", s.failures),
            ("aof_flush_backlog_bytes", s.backlog_bytes),
            ("aof_backpressure_waits_total", s.backpressure_waits),
        ]
        .into_iter()
        .map(|(name, value)| MetricSample { name, value })
        .collect()
    }

    /// Calls `f` with every sample.
    pub fn emit(&self, mut f: impl FnMut(MetricSample)) {
        for s in self.samples() {
            f(s);
        }
    }
}
