//! Every open log of a manager, and the manager's own series, in the Prometheus text
//! exposition format (version 0.0.4): `# HELP` and `# TYPE` once per family, then its
//! samples; per-log series labelled `log="<root_dir>"`, per-shard ones `shard="<n>"`,
//! Tier 0 unlabelled. Counters end in `_total`; times are in seconds, sizes in bytes.

use super::metrics::FlushMetricsExporter;
use aof2_shards::chunk_cache::ChunkCacheStats;
use aof2_shards::log_histograms::LogHistograms;
use aof2_shards::metrics::{LogMetrics, ShardStats};
use hdrhistogram::Histogram;
use std::fmt::Write;
use std::sync::Arc;

/// Upper bounds (seconds) of the latency buckets: 50 us to 10 s.
const SECONDS_BUCKETS: [f64; 16] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 10.0,
];

/// Upper bounds of the records-per-sync buckets.
const COUNT_BUCKETS: [f64; 12] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];

/// One log's figures, read once per scrape.
struct LogSample {
    label: String,
    samples: Vec<super::MetricSample>,
    hist: Option<LogHistograms>,
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// What a per-log series means (from its name).
fn help(name: &str) -> &'static str {
    match name {
        "aof_records_appended_total" => "Records appended in this session.",
        "aof_append_bytes_total" => "Payload bytes appended.",
        "aof_write_ops_total" => "Data writes issued.",
        "aof_write_bytes_total" => "Bytes the data writes covered.",
        "aof_syncs_total" => "fdatasync calls completed (data, headers, footers).",
        "aof_flush_watermark_total" => "Flushes started by flush_watermark_bytes.",
        "aof_flush_interval_total" => "Flushes started by flush_interval_ms.",
        "aof_flush_requested_total" => "Flush requests (flush_until, flush, back-pressure, close).",
        "aof_segments_sealed_total" => "Segments sealed.",
        "aof_segments_prepared_total" => "Segment files prepared.",
        "aof_flush_failures_total" => "Failed writes or syncs (each poisons the log).",
        "aof_segment_prepare_failures_total" => "Failed segment preparations.",
        "aof_flush_backlog_bytes" => "Bytes appended but not yet durable.",
        "aof_backpressure_waits_total" => {
            "Appends that waited (back-pressure or a segment being prepared)."
        }
        "aof_io_uring_fallback" => "1 when io_uring was wanted but the portable backend runs.",
        "aof_direct_io" => "1 when segment files are written with O_DIRECT.",
        "aof_caller_commits_total" => "Commits run by a waiting caller on its own thread.",
        "aof_waiter_wakeups_total" => "Wake-ups of threads waiting for durability.",
        "aof_waiter_spurious_wakeups_total" => "Wake-ups that found nothing to do.",
        "aof_segments_released_total" => "Segments released (by release_before or retention).",
        "aof_segment_files_removed_total" => "Released segment files removed.",
        "aof_segments_recycled_total" => "Segments started in a recycled file.",
        "aof_release_failures_total" => "Failed release steps.",
        "aof_removals_failing" => "Released files whose removal keeps failing.",
        "aof_bytes_zeroed_total" => "Bytes of zeros written into files being prepared.",
        "aof_segments_continued_total" => {
            "Sessions that continued the last segment of a clean close."
        }
        "aof_spare_bytes" => "Bytes of released files kept for reuse.",
        "aof_idle_buffer_releases_total" => "Times an idle log gave its buffers back.",
        "aof_buffers_allocated_total" => "Log buffers allocated from the heap.",
        "aof_segments_compressed_total" => "Segments swapped for a zstd file.",
        "aof_compression_raw_bytes_total" => "Raw bytes of the segments compressed.",
        "aof_compression_disk_bytes_total" => "Bytes of the compressed files written.",
        "aof_compression_failures_total" => "Failed compressions.",
        "aof_compression_backlog_segments" => "Sealed segments waiting for compression.",
        "aof_compression_backlog_bytes" => "Bytes of the segments waiting for compression.",
        "aof_archive_uploads_total" => "Sealed segments uploaded to the archive.",
        "aof_archive_uploaded_bytes_total" => "Bytes of the objects uploaded.",
        "aof_archive_upload_failures_total" => "Upload attempts that failed (retried).",
        "aof_archive_deletes_total" => "Archived copies of released segments deleted.",
        "aof_archive_local_drops_total" => "Local copies dropped because the archive holds them.",
        "aof_archive_backlog_segments" => "Sealed segments the archive does not hold yet.",
        "aof_archive_backlog_bytes" => "Local bytes of the segments not archived yet.",
        "aof_archive_held_over_bound_bytes" => {
            "Local bytes kept past retention because the archive does not hold them yet."
        }
        "aof_archive_oldest_unarchived_age_seconds" => {
            "Age of the oldest segment not archived yet."
        }
        "aof_archive_hydrations_total" => "Archived segments downloaded for readers.",
        "aof_archive_hydration_ms_total" => "Milliseconds spent downloading and checking them.",
        "aof_archive_hydration_failures_total" => "Downloads that failed.",
        _ => "See the FlushMetricsSnapshot field of the same meaning.",
    }
}

/// Buckets, sum and count of `h` (values in `unit`s; `scale` turns one into the
/// exported unit), as a Prometheus histogram's samples.
#[allow(clippy::too_many_arguments)]
fn histogram(
    out: &mut String,
    name: &str,
    label: &str,
    h: &Histogram<u64>,
    sum: u64,
    bounds: &[f64],
    scale: f64,
) {
    for &le in bounds {
        // Values at or below the bound: `le` in the histogram's unit.
        let top = (le / scale).floor() as u64;
        let n = if top == 0 { 0 } else { h.count_between(0, top) };
        let _ = writeln!(out, "{name}_bucket{{{label}le=\"{le}\"}} {n}");
    }
    let _ = writeln!(out, "{name}_bucket{{{label}le=\"+Inf\"}} {}", h.len());
    let _ = writeln!(
        out,
        "{name}_sum{{{}}} {}",
        label.trim_end_matches(','),
        sum as f64 * scale
    );
    let _ = writeln!(
        out,
        "{name}_count{{{}}} {}",
        label.trim_end_matches(','),
        h.len()
    );
}

/// The text for `logs`, the shards' `stats` and Tier 0's `tier0`.
pub(crate) fn render(
    logs: &[Arc<dyn LogMetrics>],
    stats: &[ShardStats],
    tier0: ChunkCacheStats,
) -> String {
    let logs: Vec<LogSample> = logs
        .iter()
        .map(|l| LogSample {
            label: format!("log=\"{}\",", escape(&l.root_dir().display().to_string())),
            samples: FlushMetricsExporter::new(l.metrics()).samples(),
            hist: l.histograms(),
        })
        .collect();
    let mut out = String::new();
    if let Some(first) = logs.first() {
        for (i, s) in first.samples.iter().enumerate() {
            let kind = if s.name.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            };
            family(&mut out, s.name, kind, help(s.name));
            for l in &logs {
                let _ = writeln!(
                    out,
                    "{}{{{}}} {}",
                    s.name,
                    l.label.trim_end_matches(','),
                    l.samples[i].value
                );
            }
        }
    }
    type Pick = fn(&LogHistograms) -> (&Histogram<u64>, u64);
    let hists: [(&str, &str, Pick, &[f64], f64); 3] = [
        (
            "aof_append_to_durable_seconds",
            "From an append to the completed sync covering it, per record (values within 10%, appends grouped by 20 us).",
            |h| (&h.append_to_durable_ns, h.append_to_durable_sum_ns),
            &SECONDS_BUCKETS,
            1e-9,
        ),
        (
            "aof_sync_duration_seconds",
            "Data commits (write and fdatasync), from start to completion (values within 10%).",
            |h| (&h.sync_ns, h.sync_sum_ns),
            &SECONDS_BUCKETS,
            1e-9,
        ),
        (
            "aof_records_per_sync",
            "Records each data commit made durable.",
            |h| (&h.records_per_sync, h.records_per_sync_sum),
            &COUNT_BUCKETS,
            1.0,
        ),
    ];
    for (name, what, pick, bounds, scale) in hists {
        family(&mut out, name, "histogram", what);
        for l in &logs {
            let empty;
            let (h, sum) = match &l.hist {
                Some(h) => pick(h),
                None => {
                    empty = Histogram::<u64>::new(1).expect("an empty histogram");
                    (&empty, 0)
                }
            };
            histogram(&mut out, name, &l.label, h, sum, bounds, scale);
        }
    }
    type ShardSeries = (
        &'static str,
        &'static str,
        &'static str,
        fn(&ShardStats) -> u64,
    );
    let shard_series: [ShardSeries; 10] = [
        (
            "aof_shard_logs",
            "gauge",
            "Logs placed on the shard.",
            |s| s.logs,
        ),
        (
            "aof_shard_tasks_spawned_total",
            "counter",
            "Tasks spawned onto the shard.",
            |s| s.tasks_spawned,
        ),
        (
            "aof_shard_tasks_ended_total",
            "counter",
            "Tasks that ended (finished, panicked or cancelled).",
            |s| s.tasks_ended,
        ),
        (
            "aof_shard_slow_task_polls_total",
            "counter",
            "Task polls longer than 1 ms.",
            |s| s.slow_task_polls,
        ),
        (
            "aof_shard_eventfd_wakeups_total",
            "counter",
            "Wake-ups of the shard sleeping in its ring.",
            |s| s.eventfd_wakeups,
        ),
        (
            "aof_shard_safety_net_wakeups_total",
            "counter",
            "Glommio shards: sleeps with I/O in flight that the 5 ms safety net ended.",
            |s| s.safety_net_wakeups,
        ),
        (
            "aof_shard_ring_enters_total",
            "counter",
            "io_uring_enter calls of the shard's ring.",
            |s| s.ring_enters,
        ),
        (
            "aof_shard_poll_hits_total",
            "counter",
            "Waits that completion polling answered.",
            |s| s.poll_hits,
        ),
        (
            "aof_shard_poll_misses_total",
            "counter",
            "Waits that polled in vain, then slept.",
            |s| s.poll_misses,
        ),
        (
            "aof_shard_arena_bytes",
            "gauge",
            "Bytes of the shard's buffer arena (made with its first log).",
            |s| s.arena_bytes,
        ),
    ];
    for (name, kind, what, get) in shard_series {
        family(&mut out, name, kind, what);
        for s in stats {
            let _ = writeln!(out, "{name}{{shard=\"{}\"}} {}", s.shard, get(s));
        }
    }
    for (name, kind, what, v) in [
        (
            "aof_tier0_hits_total",
            "counter",
            "Compressed-segment reads served from Tier 0 memory.",
            tier0.hits,
        ),
        (
            "aof_tier0_misses_total",
            "counter",
            "Compressed-segment reads that inflated their chunk.",
            tier0.misses,
        ),
        (
            "aof_tier0_bytes",
            "gauge",
            "Bytes Tier 0 holds.",
            tier0.bytes,
        ),
    ] {
        family(&mut out, name, kind, what);
        let _ = writeln!(out, "{name} {v}");
    }
    out
}
