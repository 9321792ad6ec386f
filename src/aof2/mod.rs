//! AOF2: an append-only log for latency-sensitive Linux services.
//!
//! An [`AofManager`] starts one shard thread per CPU; each [`Aof`] (one log, one
//! directory) lives on a shard, which does all of its disk I/O with group commit.
//! Appends copy into memory and return a [`RecordId`]; [`Aof::flush_until`] returns
//! once a completed `fdatasync` covers the record. See docs/guarantees.md for the durability
//! contract, error semantics and on-disk format.

pub mod archive;
pub mod config;
pub mod error;
pub mod metrics;
mod prometheus;
pub mod reader;

pub use config::{AofConfig, AofManagerConfig, IoBackend, RecordId, SegmentId};
pub use error::{AofError, AofResult};
pub use metrics::{FlushMetricsExporter, FlushMetricsSnapshot, MetricSample, ShardStats};

/// A task running on a shard's thread ([`AofManager::spawn_on_shard`]): await it, or
/// [`ShardTask::join`] it from a plain thread; dropping it detaches the task.
pub use aof2_shards::shard::tasks::ShardTask;

/// A shard the service runs in its own glommio executor
/// ([`AofManager::with_hosted_shards`]).
#[cfg(feature = "glommio")]
pub use aof2_shards::shard::glommio_host::ShardHost;

/// One segment as [`Aof::catalog_snapshot`] reports it.
pub use aof2_shards::chunk_cache::ChunkCacheStats;
pub use aof2_shards::log::SegmentInfo;

use aof2_shards::log_handle::LogHandle;
use aof2_shards::manager::ShardSet;
use reader::{SegmentReader, TailFollower, TailState};
use std::future::Future;
use std::path::Path;
use std::sync::Arc;

/// Owns the shard threads. Dropping it flushes and closes every log still open and
/// stops the threads; later calls on those logs fail with [`AofError::Closed`].
#[derive(Debug)]
pub struct AofManager {
    set: Arc<ShardSet>,
}

/// A cheap, cloneable reference to a manager, used to place logs on its shards.
#[derive(Clone, Debug)]
pub struct AofManagerHandle {
    set: Arc<ShardSet>,
}

impl AofManager {
    /// Starts the shard threads (one per CPU in the process's affinity set by default).
    pub fn with_config(cfg: AofManagerConfig) -> AofResult<AofManager> {
        Ok(AofManager {
            set: Arc::new(ShardSet::start(&cfg)?),
        })
    }

    /// Sets the shards up without threads of their own, for a service that runs its
    /// own glommio executors: each returned [`ShardHost`] (`Send`) is run where the
    /// service wants that shard, `glommio::spawn_local(host.run()).detach()` inside a
    /// glommio executor on the chosen CPU, one shard per executor thread. `cfg.executor`
    /// must be `ShardExecutor::Glommio`; the same probe as `with_config` runs first.
    /// Logs placed on a shard whose host has not run yet wait for it (its first append
    /// waits for the segment file the shard prepares); a host dropped without running
    /// fails its shard. Dropping the manager waits for every running host's loop to
    /// drain its logs and end.
    #[cfg(feature = "glommio")]
    pub fn with_hosted_shards(cfg: AofManagerConfig) -> AofResult<(AofManager, Vec<ShardHost>)> {
        let (set, hosts) = ShardSet::start_hosted(&cfg)?;
        Ok((AofManager { set: Arc::new(set) }, hosts))
    }

    /// A handle for [`Aof::new`].
    pub fn handle(&self) -> AofManagerHandle {
        AofManagerHandle {
            set: self.set.clone(),
        }
    }

    /// Number of shard threads.
    pub fn shard_count(&self) -> usize {
        self.set.shard_count()
    }

    /// The CPU each shard thread is pinned to (`None`: not pinned).
    pub fn shard_cpus(&self) -> Vec<Option<usize>> {
        self.set.shard_cpus().to_vec()
    }

    /// The I/O backend the shards run on: `"io_uring"`, or `"sync"` (the portable
    /// backend, chosen or fallen back to; see [`AofManager::io_uring_fallback`]).
    pub fn io_backend(&self) -> &'static str {
        match self.set.running().first() {
            Some(aof2_shards::shard::Running::Uring { .. }) => "io_uring",
            _ => "sync",
        }
    }

    /// What runs the shards' loops: [`config::ShardExecutor::Threads`], or `Glommio`
    /// (the configuration's choice, or `AOF2_EXECUTOR`'s for the default).
    pub fn executor(&self) -> config::ShardExecutor {
        self.set.executor()
    }

    /// True when io_uring was wanted ([`IoBackend::Auto`]) but `io_uring_setup` failed,
    /// so the shards run the portable backend (also the `aof_io_uring_fallback` metric).
    pub fn io_uring_fallback(&self) -> bool {
        self.set.uring_fallback()
    }

    /// Runs a task on shard `shard`'s thread: `f` is called there, and the future it
    /// returns is polled there, so it may hold `!Send` state across awaits. A task on
    /// the shard of a log placed there (`AofConfig::shard`) appends and waits for
    /// durability with no thread hop: `append_record_async` and `flush_until_async`
    /// make no system call of their own, and the shard's next `io_uring_enter` carries
    /// the commit.
    ///
    /// The returned [`ShardTask`] is a future of the task's result (or
    /// [`ShardTask::join`] it from a plain thread); dropping it detaches the task. A
    /// panic in `f` or in the task is [`AofError::TaskPanicked`] and the shard goes
    /// on; a task still pending when the manager shuts down (after its logs drained)
    /// is dropped and returns [`AofError::TaskCancelled`]. A shard past the last is
    /// [`AofError::NoSuchShard`].
    ///
    /// A task shares its shard's thread with the logs on it: it must not block (the
    /// engine's blocking calls are refused there with [`AofError::WouldDeadlock`]),
    /// and a long poll stalls every log and task of the shard (counted in
    /// [`ShardStats::slow_task_polls`]). On the thread executor a task may await the
    /// engine's futures and any future that needs no runtime (channels, other
    /// `ShardTask`s); futures that need a runtime's reactor or timers (Tokio's
    /// `sleep`, sockets) do not work there.
    pub fn spawn_on_shard<F, Fut, T>(&self, shard: usize, f: F) -> AofResult<ShardTask<T>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
        T: Send + 'static,
    {
        self.set.spawn_on_shard(shard, f)
    }

    /// Counters of every shard, by index: tasks, task polls (slow ones and the
    /// longest), wake-ups.
    pub fn shard_stats(&self) -> Vec<ShardStats> {
        self.set.shard_stats()
    }

    /// Tier 0 so far: `read_record`s of compressed segments served from inflated
    /// chunks in memory (hits) or that inflated their chunk (misses), and the bytes
    /// held (at most [`AofManagerConfig::tier0_cache_bytes`]).
    pub fn tier0_stats(&self) -> ChunkCacheStats {
        self.set.chunk_cache().stats()
    }

    /// Every open log of the manager and the manager's own series (shards, Tier 0) in
    /// the Prometheus text exposition format 0.0.4, for a service to serve at its
    /// metrics endpoint: per-log counters and gauges and three histograms (append to
    /// durable, sync duration, records per sync), labelled `log="<root_dir>"`.
    pub fn prometheus_text(&self) -> String {
        prometheus::render(
            &self.set.open_logs(),
            &self.set.shard_stats(),
            self.set.chunk_cache().stats(),
        )
    }
}

impl Drop for AofManager {
    fn drop(&mut self) {
        self.set.shutdown();
    }
}

impl AofManagerHandle {
    /// [`AofManager::spawn_on_shard`], from a handle.
    pub fn spawn_on_shard<F, Fut, T>(&self, shard: usize, f: F) -> AofResult<ShardTask<T>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
        T: Send + 'static,
    {
        self.set.spawn_on_shard(shard, f)
    }

    /// Number of shard threads.
    pub fn shard_count(&self) -> usize {
        self.set.shard_count()
    }
}

/// One log. Every method takes `&self`; share it across threads with `Arc`.
///
/// Dropping it syncs everything appended, seals the active segment (so the next open
/// reads its footer instead of scanning it), closes its files and releases the
/// directory lock before returning. After a crash, the next open verifies the unsealed
/// segment and seals it.
#[derive(Debug)]
pub struct Aof {
    pub(crate) log: Arc<LogHandle>,
    _set: Arc<ShardSet>,
}

impl Drop for Aof {
    /// Closes the log here, even while a metrics scrape holds its handle a moment
    /// longer: the directory's lock is released before the drop returns.
    fn drop(&mut self) {
        let _ = self.log.close();
    }
}

impl Aof {
    /// Opens the log in `cfg.root_dir` (creating it, or recovering what is there) and
    /// places it on the least loaded shard. `cfg` is validated, then normalized. No
    /// segment file is prepared here: the first append waits for its file.
    pub fn new(handle: AofManagerHandle, cfg: AofConfig) -> AofResult<Aof> {
        let log = Arc::new(LogHandle::open(&handle.set, cfg)?);
        handle.set.register_log(log.clone());
        Ok(Aof {
            log,
            _set: handle.set,
        })
    }

    /// Appends a record and returns its id. The record is in memory, not yet durable:
    /// call [`Aof::flush_until`] for that. Blocks while `max_unflushed_bytes` is reached.
    pub fn append_record(&self, payload: &[u8]) -> AofResult<RecordId> {
        self.log.append(payload)
    }

    /// Like [`Aof::append_record`], but waits for back-pressure without blocking the
    /// thread. Works on any executor, including a current-thread Tokio runtime.
    pub async fn append_record_async(&self, payload: &[u8]) -> AofResult<RecordId> {
        self.log.append_async(payload).await
    }

    /// Like [`Aof::append_record`], but fails with `AofError::WouldBlock` instead of
    /// waiting for back-pressure.
    pub fn try_append_record(&self, payload: &[u8]) -> AofResult<RecordId> {
        self.log.try_append(payload)
    }

    /// Appends `records` in order as one atomic batch, in one segment, and returns the
    /// last one's id: `flush_until` of it covers the whole batch. After a crash,
    /// recovery keeps all of the batch's records or none, and every reader agrees. Waits
    /// for back-pressure like [`Aof::append_record`]. An empty batch, or one whose frames
    /// (32 bytes of header per record, each padded to 8 bytes) exceed what a segment of
    /// `segment_max_bytes` holds, is `AofError::BadBatch` and appends nothing.
    pub fn append_batch(&self, records: &[&[u8]]) -> AofResult<RecordId> {
        self.log.append_batch(records)
    }

    /// Like [`Aof::append_batch`], but waits for back-pressure without blocking the
    /// thread.
    pub async fn append_batch_async(&self, records: &[&[u8]]) -> AofResult<RecordId> {
        self.log.append_batch_async(records).await
    }

    /// Appends a record of `len` bytes that `fill` writes straight into the log's
    /// buffer (no copy; the slice's initial contents are unspecified, so `fill` should
    /// write all of it). `fill` runs once, under the log's lock: keep it short. If it
    /// panics, the panic propagates to the caller, nothing is appended (the reserved
    /// space is taken back) and the log stays usable.
    pub fn append_with(&self, len: usize, fill: impl FnOnce(&mut [u8])) -> AofResult<RecordId> {
        self.log.append_with(len, fill)
    }

    /// Like [`Aof::append_with`], but waits for back-pressure without blocking the
    /// thread. In a task on the log's own shard this never blocks the shard.
    pub async fn append_with_async(
        &self,
        len: usize,
        fill: impl FnOnce(&mut [u8]) + Send,
    ) -> AofResult<RecordId> {
        self.log.append_with_async(len, fill).await
    }

    /// Returns once every record up to and including `rid` is durable (covered by a
    /// completed `fdatasync`). An id past the tail is an error, never a hang.
    pub fn flush_until(&self, rid: RecordId) -> AofResult<()> {
        self.log.flush_until(rid)
    }

    /// Async [`Aof::flush_until`]; dropping the future leaves nothing behind.
    pub async fn flush_until_async(&self, rid: RecordId) -> AofResult<()> {
        self.log.flush_until_async(rid).await
    }

    /// Makes everything appended so far durable.
    pub fn flush(&self) -> AofResult<()> {
        self.log.flush()
    }

    /// Seals the active segment (if it holds records) and returns its id once its
    /// footer is durable; the next append starts a new segment.
    pub fn seal_active(&self) -> AofResult<Option<SegmentId>> {
        self.log.seal_active()
    }

    /// Releases every sealed segment whose records all precede `rid` (never the active
    /// segment) and returns how many this call released: 0 when they were released
    /// already, so it is idempotent. The release is durable when this returns: a
    /// reopen, or a crash at any point, never brings those records back. Reading one
    /// afterwards, or streaming from before [`Aof::first_record`], is
    /// [`AofError::Released`]. Released files are reused for later segments (no
    /// zero-writing) or removed in the background. Blocking: on a shard's own thread
    /// use [`Aof::release_before_async`].
    pub fn release_before(&self, rid: RecordId) -> AofResult<usize> {
        self.log.release_before(rid)
    }

    /// Async [`Aof::release_before`].
    pub async fn release_before_async(&self, rid: RecordId) -> AofResult<usize> {
        self.log.release_before_async(rid).await
    }

    /// Where the log now starts: the id of the first record it keeps (of the first
    /// segment kept; if that segment holds no record yet, the id its first will have).
    pub fn first_record(&self) -> RecordId {
        self.log.first_record()
    }

    /// Opens a reader over a segment: sealed segments are memory-mapped, the active one
    /// is read up to its durable end.
    pub fn open_reader(&self, id: SegmentId) -> AofResult<SegmentReader> {
        self.log.open_reader(id)
    }

    /// Like [`Aof::seal_active`], for users of the earlier implementation: seals the
    /// active segment so the next append starts a new one.
    pub fn force_rollover(&self) -> AofResult<Option<SegmentId>> {
        self.log.seal_active()
    }

    /// A follower that wakes as the durable tail advances and reports seals and
    /// activations from now on (many may follow one log; none slows the writer).
    pub fn tail_follower(&self) -> TailFollower {
        TailFollower::new(self.log.view())
    }

    /// The tail now: durable position, active and last sealed segment.
    pub fn tail_state(&self) -> TailState {
        aof2_shards::tail::tail_state(&self.log.view())
    }

    /// Every segment readers can see, in id order, with its state and sizes.
    pub fn catalog_snapshot(&self) -> Vec<SegmentInfo> {
        self.log.view().catalog()
    }

    /// Syncs everything appended, seals the active segment, closes the files and
    /// releases the directory lock;
    /// later appends fail with [`AofError::Closed`], and followers and streams end once
    /// they have read what was durable. Dropping the `Aof` does the same (without a
    /// caller to report to). Idempotent: every call returns `Err(Poisoned)` if a write
    /// or sync failed, the final sync and seal included, and `Ok(())` otherwise. On the
    /// log's own shard thread (a task) it cannot wait: it starts the close and reports
    /// what has failed so far.
    pub fn close(&self) -> AofResult<()> {
        self.log.close()
    }

    /// Flush and append counters of this log.
    pub fn flush_metrics(&self) -> FlushMetricsSnapshot {
        self.log.metrics()
    }

    /// The shard this log lives on (`AofConfig::shard`, or where it was placed).
    pub fn shard(&self) -> usize {
        self.log.shard_id()
    }

    /// The CPU this log's shard thread is pinned to (`None`: not pinned). A thread
    /// pinned to the same CPU appends and waits with no cross-CPU wake-up.
    pub fn shard_cpu(&self) -> Option<usize> {
        self.log.shard_cpu()
    }

    /// The log's directory.
    pub fn root_dir(&self) -> &Path {
        self.log.root_dir()
    }

    /// The configuration in effect (normalized).
    pub fn config(&self) -> AofConfig {
        self.log.config()
    }
}
