//! Counters and gauges of one log.

/// Counters (monotonic, `_total`) and gauges of one log at one moment. New fields may
/// be added: build one from `Default` and assign fields.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
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
    /// Bytes of zeros written into segment files being prepared.
    pub bytes_zeroed: u64,
    /// Failed writes or syncs (each poisons the log).
    pub failures: u64,
    /// Failed segment preparations (the log stays usable; appends needing the segment
    /// fail until a retry succeeds).
    pub prepare_failures: u64,
    /// Bytes appended but not yet covered by a completed sync.
    pub backlog_bytes: u64,
    /// Appends that waited (back-pressure or a segment still being prepared).
    pub backpressure_waits: u64,
    /// 1 when the log's shard runs the portable backend because io_uring was wanted
    /// (`IoBackend::Auto`) but could not be set up; 0 otherwise.
    pub io_uring_fallback: u64,
    /// Commits run by a waiting caller on its own thread (`CommitMode::Caller`).
    pub caller_commits: u64,
    /// Times a blocking `flush_until`/`flush` woke up from waiting.
    pub waiter_wakeups: u64,
    /// Of those, wake-ups that found its record not durable and nothing it could run
    /// (another commit in flight): it went back to waiting.
    pub spurious_wakeups: u64,
    /// Segments released (`release_before` or retention; durable in the release mark).
    pub segments_released: u64,
    /// Released segment files removed from the directory (unlinked, or kept as spares).
    pub segment_files_removed: u64,
    /// Segment files prepared by reusing a spare (no zero-writing).
    pub segments_recycled: u64,
    /// Sessions that continued the last segment a clean close sealed, instead of
    /// starting a new file.
    pub segments_continued: u64,
    /// Failed release or removal steps (the log stays usable; they are retried).
    pub release_failures: u64,
    /// Files whose removal from the directory failed at its last attempt and waits for
    /// a retry (a gauge: stays above 0 while a removal keeps failing).
    pub removals_failing: u64,
    /// Bytes of the spare files kept for recycling (a gauge; at most
    /// `spare_segments` x `segment_target_bytes`).
    pub spare_bytes: u64,
    /// Times the log went idle and gave its buffers back.
    pub idle_buffer_releases: u64,
    /// Log buffers allocated from the heap, neither reused from the log's own spares
    /// nor taken from the shard's (each costs page faults as it first fills); a busy
    /// log in steady state allocates none.
    pub buffers_allocated: u64,
    /// 1 when the log's segment files are written with O_DIRECT; 0 when through the
    /// page cache (a file system that refuses O_DIRECT or our 4 KiB alignment, such as
    /// tmpfs), which `fdatasync` makes just as durable.
    pub direct_io: u64,
    /// Sealed segments compressed (`Compression::Zstd`; swap durable).
    pub segments_compressed: u64,
    /// Raw bytes of the segments compressed.
    pub compression_raw_bytes: u64,
    /// Bytes of the compressed files they became.
    pub compression_disk_bytes: u64,
    /// Failed compressions (the raw segment stays; retried after 10 s).
    pub compression_failures: u64,
    /// Sealed segments waiting to be compressed: how far the worker lags.
    pub compression_backlog_segments: u64,
    /// Their raw bytes.
    pub compression_backlog_bytes: u64,
    /// Sealed segments uploaded to the archive (object and stub durable).
    pub archive_uploads: u64,
    /// Bytes of the objects uploaded.
    pub archive_uploaded_bytes: u64,
    /// Upload attempts that failed (each retried after a pause of 1 s doubling to 15 s).
    pub archive_upload_failures: u64,
    /// Archived copies deleted from the store (released segments).
    pub archive_deletes: u64,
    /// Local copies dropped because the archive holds them.
    pub archive_local_drops: u64,
    /// Sealed segments the archive does not hold yet (a gauge).
    pub archive_backlog_segments: u64,
    /// Their local bytes (a gauge).
    pub archive_backlog_bytes: u64,
    /// Local bytes kept past `retention`'s bound because the archive does not hold
    /// them yet (a gauge; past `archive_backlog_max_bytes`, new segments are refused).
    pub archive_held_over_bound_bytes: u64,
    /// Age of the oldest segment the archive does not hold yet, in seconds (a gauge).
    pub archive_oldest_unarchived_age_s: u64,
    /// Archived segments downloaded for readers.
    pub archive_hydrations: u64,
    /// Time spent downloading and checking them, in ms.
    pub archive_hydration_ms: u64,
    /// Downloads that failed (unreachable store, or a checksum that did not match).
    pub archive_hydration_failures: u64,
}

/// Counters of one shard: its tasks, how long their polls took, and its wake-ups.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShardStats {
    /// The shard's index.
    pub shard: usize,
    /// Logs placed on it.
    pub logs: u64,
    /// Tasks spawned onto it (`spawn_on_shard`).
    pub tasks_spawned: u64,
    /// Tasks that ended (finished, panicked or dropped); `tasks_spawned - tasks_ended`
    /// are alive.
    pub tasks_ended: u64,
    /// Polls of its tasks.
    pub task_polls: u64,
    /// Task polls longer than 1 ms: each held up every log and task of the shard.
    pub slow_task_polls: u64,
    /// The longest task poll, in ns.
    pub longest_task_poll_ns: u64,
    /// Task wake-ups that came from another thread (a task waiting on a log of
    /// another shard, or on a foreign future).
    pub foreign_task_wakeups: u64,
    /// Writes to the shard's eventfd: wake-ups of a shard sleeping in its ring.
    pub eventfd_wakeups: u64,
    /// Glommio shards: sleeps that ended on the 5 ms safety net (a sleep with
    /// operations in flight) instead of a completion or a request. A few while the disk
    /// is slow are expected; many mean glommio scheduled the shard late.
    pub safety_net_wakeups: u64,
    /// `io_uring_enter` calls of the shard's ring (0 on the portable backend).
    pub ring_enters: u64,
    /// Waits of the shard's ring that polling answered (`completion_poll_us`).
    pub poll_hits: u64,
    /// Waits that polled for the whole `completion_poll_us`, then slept.
    pub poll_misses: u64,
    /// Bytes of the shard's buffer arena: 0 until the first log is placed on the shard
    /// (and where its ring registers none).
    pub arena_bytes: u64,
}

/// What a metrics exporter reads of one open log (implemented by its handle), so the
/// set of shards can list its logs without depending on the handle.
pub trait LogMetrics: Send + Sync {
    /// The log's `root_dir` as configured (its `log` label).
    fn root_dir(&self) -> &std::path::Path;
    /// Its counters and gauges now.
    fn metrics(&self) -> FlushMetricsSnapshot;
    /// Its histograms (`None` before its first commit).
    fn histograms(&self) -> Option<crate::log_histograms::LogHistograms>;
    /// It was closed (a closed log is not exported).
    fn is_closed(&self) -> bool;
}
