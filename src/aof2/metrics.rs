//! Flush and append metrics of one log, and an exporter that turns them into named
//! samples for any metrics system.

pub use aof2_shards::metrics::{FlushMetricsSnapshot, ShardStats};

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
            ("aof_segment_prepare_failures_total", s.prepare_failures),
            ("aof_flush_backlog_bytes", s.backlog_bytes),
            ("aof_backpressure_waits_total", s.backpressure_waits),
            ("aof_io_uring_fallback", s.io_uring_fallback),
            ("aof_direct_io", s.direct_io),
            ("aof_caller_commits_total", s.caller_commits),
            ("aof_waiter_wakeups_total", s.waiter_wakeups),
            ("aof_waiter_spurious_wakeups_total", s.spurious_wakeups),
            ("aof_segments_released_total", s.segments_released),
            ("aof_segment_files_removed_total", s.segment_files_removed),
            ("aof_segments_recycled_total", s.segments_recycled),
            ("aof_release_failures_total", s.release_failures),
            ("aof_removals_failing", s.removals_failing),
            ("aof_bytes_zeroed_total", s.bytes_zeroed),
            ("aof_segments_continued_total", s.segments_continued),
            ("aof_spare_bytes", s.spare_bytes),
            ("aof_idle_buffer_releases_total", s.idle_buffer_releases),
            ("aof_buffers_allocated_total", s.buffers_allocated),
            ("aof_segments_compressed_total", s.segments_compressed),
            ("aof_compression_raw_bytes_total", s.compression_raw_bytes),
            ("aof_compression_disk_bytes_total", s.compression_disk_bytes),
            ("aof_compression_failures_total", s.compression_failures),
            (
                "aof_compression_backlog_segments",
                s.compression_backlog_segments,
            ),
            ("aof_compression_backlog_bytes", s.compression_backlog_bytes),
            ("aof_archive_uploads_total", s.archive_uploads),
            ("aof_archive_uploaded_bytes_total", s.archive_uploaded_bytes),
            (
                "aof_archive_upload_failures_total",
                s.archive_upload_failures,
            ),
            ("aof_archive_deletes_total", s.archive_deletes),
            ("aof_archive_local_drops_total", s.archive_local_drops),
            ("aof_archive_backlog_segments", s.archive_backlog_segments),
            ("aof_archive_backlog_bytes", s.archive_backlog_bytes),
            (
                "aof_archive_held_over_bound_bytes",
                s.archive_held_over_bound_bytes,
            ),
            (
                "aof_archive_oldest_unarchived_age_seconds",
                s.archive_oldest_unarchived_age_s,
            ),
            ("aof_archive_hydrations_total", s.archive_hydrations),
            ("aof_archive_hydration_ms_total", s.archive_hydration_ms),
            (
                "aof_archive_hydration_failures_total",
                s.archive_hydration_failures,
            ),
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
