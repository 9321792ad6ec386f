//! The set of shard threads behind an `AofManager`.

use crate::chunk_cache::ChunkCache;
use crate::clock::Clock;
use crate::compress::worker::Compressor;
use crate::config::{AofManagerConfig, IoBackend};
use crate::error::{AofError, AofResult};
use crate::exec::caller::CallerRings;
use crate::fs::posix::PosixFs;
use crate::fs::Fs;
use crate::metrics::ShardStats;
use crate::shard::tasks::{self, ShardTask};
use crate::shard::{Running, Shard, ShardCtl};
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

/// Running shard threads and the file system their logs live on.
pub struct ShardSet {
    shards: Mutex<Vec<Shard>>,
    ctls: Vec<Arc<ShardCtl>>,
    fs: Arc<dyn Fs>,
    cpus: Vec<Option<usize>>,
    running: Vec<Running>,
    /// Rings of threads that commit their own appends (where the shards run io_uring).
    callers: Option<Arc<CallerRings>>,
    /// The compression worker, started with the first `Compression::Zstd` log.
    compressor: Mutex<Option<Arc<Compressor>>>,
    /// Tier 0: inflated chunks of compressed segments, for every log.
    chunks: Arc<ChunkCache>,
    /// What runs the shards' loops.
    executor: crate::config::ShardExecutor,
    /// The logs opened on the set, for metrics (`open_logs`); dropped ones are pruned.
    logs: Mutex<Vec<std::sync::Weak<dyn crate::metrics::LogMetrics>>>,
    /// Tier 2, when configured: the store and its upload threads.
    archiver: Mutex<Option<Arc<crate::archive::worker::Archiver>>>,
}

/// The CPUs this process may run on (`sched_getaffinity`), in order.
pub fn affinity_cpus() -> Vec<usize> {
    match core_affinity::get_core_ids() {
        Some(ids) if !ids.is_empty() => ids.into_iter().map(|c| c.id).collect(),
        _ => (0..std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1))
            .collect(),
    }
}

impl ShardSet {
    /// Starts the shard threads on the real file system.
    pub fn start(cfg: &AofManagerConfig) -> AofResult<ShardSet> {
        Self::start_with(cfg, Arc::new(PosixFs::new()))
    }

    /// Starts the shard threads on a given file system.
    pub fn start_with(cfg: &AofManagerConfig, fs: Arc<dyn Fs>) -> AofResult<ShardSet> {
        Ok(Self::start_inner(cfg, fs, false)?.0)
    }

    /// Sets up the shards without threads: the service runs each returned host in a
    /// glommio executor of its own (`cfg.executor` must be `Glommio`).
    #[cfg(feature = "glommio")]
    pub fn start_hosted(
        cfg: &AofManagerConfig,
    ) -> AofResult<(ShardSet, Vec<crate::shard::glommio_host::ShardHost>)> {
        if cfg.executor != crate::config::ShardExecutor::Glommio {
            return Err(AofError::InvalidConfig(
                "hosted shards run in the service's glommio executors: set \
                 AofManagerConfig::executor = ShardExecutor::Glommio"
                    .into(),
            ));
        }
        Self::start_inner(cfg, Arc::new(PosixFs::new()), true)
    }

    #[allow(clippy::type_complexity)]
    fn start_inner(
        cfg: &AofManagerConfig,
        fs: Arc<dyn Fs>,
        hosted: bool,
    ) -> AofResult<(ShardSet, Vec<crate::shard::HostOf>)> {
        let cpus = affinity_cpus();
        let n = if cfg.shards == 0 {
            // One per CPU the process may use: its affinity set, and its cgroup's quota.
            let quota = crate::cpu_quota::cpu_quota().unwrap_or(usize::MAX);
            cpus.len().min(quota).max(1)
        } else {
            cfg.shards
        };
        let backend = cfg.backend.resolve()?;
        let mut executor = cfg.executor.resolve()?;
        // The environment's choice applies where it can: a manager asking for the
        // portable backend keeps its threads.
        if cfg.executor != executor && backend == IoBackend::Sync {
            executor = cfg.executor;
        }
        #[cfg(feature = "glommio")]
        let backend = if executor == crate::config::ShardExecutor::Glommio {
            if backend == IoBackend::Sync {
                return Err(AofError::InvalidConfig(
                    "ShardExecutor::Glommio needs io_uring, but backend = Sync \
                     (AofManagerConfig::backend or AOF2_BACKEND)"
                        .into(),
                ));
            }
            crate::shard::glommio_host::probe(cfg.registered_buffer_bytes).map_err(|why| {
                AofError::Startup(format!("cannot host the shards in glommio: {why}"))
            })?;
            IoBackend::Uring
        } else {
            backend
        };
        let mut shards = Vec::with_capacity(n);
        let mut pinned = Vec::with_capacity(n);
        #[allow(unused_mut)]
        let mut hosts = Vec::new();
        let poll = std::time::Duration::from_micros(u64::from(cfg.completion_poll_us));
        for i in 0..n {
            let cpu = cfg.pin_shards.then(|| cpus[i % cpus.len()]);
            let arena_buffers = (cfg.registered_buffer_bytes / crate::log::BUF_SIZE as u64) as u32;
            #[cfg(feature = "glommio")]
            if hosted {
                let (s, h) = Shard::hosted(i, Clock::System, arena_buffers, &cfg.io_uring_disable)
                    .map_err(|e| AofError::Startup(format!("cannot set up shard {i}: {e}")))?;
                shards.push(s);
                hosts.push(h);
                // Where it runs is the service's choice.
                pinned.push(None);
                continue;
            }
            let _ = hosted;
            let s = Shard::start(
                i,
                cpu,
                Clock::System,
                backend,
                executor,
                arena_buffers,
                &cfg.io_uring_disable,
                poll,
            )
            .map_err(|e| {
                if executor.is_glommio() {
                    AofError::Startup(format!("cannot start glommio shard {i}: {e}"))
                } else if backend == IoBackend::Uring {
                    AofError::Startup(format!(
                        "io_uring is unavailable for shard thread {i} (io_uring_setup: {e}); \
                         backend = Uring is strict: use Auto to fall back to the portable backend"
                    ))
                } else {
                    AofError::Startup(format!("cannot start shard thread {i}: {e}"))
                }
            })?;
            shards.push(s);
            pinned.push(cpu);
        }
        let ctls = shards.iter().map(|s| s.ctl.clone()).collect();
        let running: Vec<Running> = shards.iter().map(|s| s.running.clone()).collect();
        if let Some(Running::Sync {
            fallback: Some(why),
        }) = running.first()
        {
            log::warn!(
                "aof2: io_uring is unavailable ({why}); the shards use the portable \
                 pwritev/fdatasync backend (metric aof_io_uring_fallback = 1; \
                 set AofManagerConfig::backend = Uring to make this an error)"
            );
        }
        log::debug!("aof2: started {n} shard(s) on CPUs {pinned:?}: {running:?}");
        let archiver = match &cfg.archive {
            Some(a) => {
                let store = crate::archive::build_store(a)?;
                Some(crate::archive::worker::Archiver::start(store).map_err(|e| {
                    AofError::Startup(format!("cannot start the archive threads: {e}"))
                })?)
            }
            None => None,
        };
        // A committing caller makes blocking system calls unless it polls: its own ring
        // hands an `RWF_DSYNC` write to a kernel worker, one wake-up more per commit
        // (W2 p50 1.13x of the raw loop blocking against 1.20x on the ring, here), so
        // only a caller that polls gains from one (docs/benchmarks.md).
        let callers = (matches!(running.first(), Some(Running::Uring(_))) && !poll.is_zero())
            .then(|| CallerRings::new(cfg.caller_rings, &cfg.io_uring_disable, poll));
        let set = ShardSet {
            shards: Mutex::new(shards),
            ctls,
            fs,
            cpus: pinned,
            running,
            callers,
            compressor: Mutex::new(None),
            executor,
            chunks: Arc::new(ChunkCache::new(
                usize::try_from(cfg.tier0_cache_bytes).unwrap_or(usize::MAX),
            )),
            logs: Mutex::new(Vec::new()),
            archiver: Mutex::new(archiver),
        };
        Ok((set, hosts))
    }

    /// Lists `log` among the set's open logs (for [`ShardSet::open_logs`]).
    pub fn register_log(&self, log: Arc<dyn crate::metrics::LogMetrics>) {
        let mut logs = self.logs.lock().unwrap_or_else(|p| p.into_inner());
        logs.retain(|l| l.strong_count() > 0);
        logs.push(Arc::downgrade(&log));
    }

    /// The logs open on the set now, in the order they were opened.
    pub fn open_logs(&self) -> Vec<Arc<dyn crate::metrics::LogMetrics>> {
        let mut logs = self.logs.lock().unwrap_or_else(|p| p.into_inner());
        logs.retain(|l| l.strong_count() > 0);
        logs.iter()
            .filter_map(std::sync::Weak::upgrade)
            .filter(|l| !l.is_closed())
            .collect()
    }

    /// The caller rings of committing threads (`None` without polling or where the
    /// shards run the portable executor: callers then commit with blocking calls).
    pub fn caller_rings(&self) -> Option<Arc<CallerRings>> {
        self.callers.clone()
    }

    /// What runs the shards' loops (`AOF2_EXECUTOR` applied).
    pub fn executor(&self) -> crate::config::ShardExecutor {
        self.executor
    }

    /// What each shard runs on.
    pub fn running(&self) -> &[Running] {
        &self.running
    }

    /// Writes the shards' rings issued from their registered arenas, in total.
    pub fn fixed_writes(&self) -> u64 {
        self.ctls
            .iter()
            .map(|c| c.ring_ops.arena_writes.load(Ordering::Relaxed))
            .sum()
    }

    /// The shards, for observation and test hooks (fault injection, operation counts).
    pub fn shards(&self) -> &[Arc<ShardCtl>] {
        &self.ctls
    }

    /// True when io_uring was wanted (`Auto`) but could not be set up.
    pub fn uring_fallback(&self) -> bool {
        self.running
            .iter()
            .any(|r| matches!(r, Running::Sync { fallback: Some(_) }))
    }

    /// The file system logs are opened on.
    pub fn fs(&self) -> Arc<dyn Fs> {
        self.fs.clone()
    }

    /// Number of shard threads.
    pub fn shard_count(&self) -> usize {
        self.ctls.len()
    }

    /// The CPU each shard is pinned to (`None`: unpinned).
    pub fn shard_cpus(&self) -> &[Option<usize>] {
        &self.cpus
    }

    fn check_running(&self) -> AofResult<()> {
        if self
            .shards
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
        {
            return Err(AofError::Startup("the AOF manager has shut down".into()));
        }
        Ok(())
    }

    /// Shard `shard`, or an error naming it and how many there are.
    fn shard(&self, shard: usize) -> AofResult<&Arc<ShardCtl>> {
        self.ctls.get(shard).ok_or(AofError::NoSuchShard {
            shard,
            shards: self.ctls.len(),
        })
    }

    /// The shard a log goes to: `want` if given (an error if it is past the last or
    /// has failed), else the working shard with the fewest logs. Shards that failed
    /// take no new logs; when every shard has failed, the error names the first and
    /// its cause.
    pub fn place(&self, want: Option<usize>) -> AofResult<Arc<ShardCtl>> {
        self.check_running()?;
        if let Some(i) = want {
            let c = self.shard(i)?;
            if c.failure().is_some() {
                return Err(c.refusal());
            }
            return Ok(c.clone());
        }
        if let Some(c) = self
            .ctls
            .iter()
            .filter(|c| c.failure().is_none())
            .min_by_key(|c| c.logs.load(Ordering::Relaxed))
        {
            return Ok(c.clone());
        }
        let c = &self.ctls[0];
        Err(AofError::ShardFailed {
            shard: c.id,
            cause: format!(
                "{} (every shard thread has failed; start a new AofManager)",
                c.failure().unwrap_or("failed")
            ),
        })
    }

    /// Runs the future `f` creates as a task on shard `shard`'s thread (see
    /// `shard::tasks`).
    pub fn spawn_on_shard<F, Fut, T>(&self, shard: usize, f: F) -> AofResult<ShardTask<T>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
        T: Send + 'static,
    {
        self.check_running()?;
        let c = self.shard(shard)?;
        let (create, task) = tasks::spawn(shard, f);
        c.spawn(create)?;
        Ok(task)
    }

    /// Counters of every shard, by index.
    pub fn shard_stats(&self) -> Vec<ShardStats> {
        let r = Ordering::Relaxed;
        self.ctls
            .iter()
            .map(|c| ShardStats {
                shard: c.id,
                logs: c.logs.load(r) as u64,
                tasks_spawned: c.tasks.spawned.load(r),
                tasks_ended: c.tasks.ended.load(r),
                task_polls: c.tasks.polls.load(r),
                slow_task_polls: c.tasks.slow_polls.load(r),
                longest_task_poll_ns: c.tasks.longest_poll_ns.load(r),
                foreign_task_wakeups: c.tasks.foreign_wakes.load(r),
                eventfd_wakeups: c.tasks.eventfd_writes.load(r),
                safety_net_wakeups: c.tasks.net_wakes.load(r),
                ring_enters: c.ring_ops.enters.load(r),
                poll_hits: c.ring_ops.poll_hits.load(r),
                poll_misses: c.ring_ops.poll_misses.load(r),
                arena_bytes: c.arena.get().map_or(0, |a| a.region().1 as u64),
            })
            .collect()
    }

    /// The inflated-chunk cache (Tier 0) the logs' readers share.
    pub fn chunk_cache(&self) -> &Arc<ChunkCache> {
        &self.chunks
    }

    /// The archive, when the manager has one.
    pub fn archiver(&self) -> Option<Arc<crate::archive::worker::Archiver>> {
        self.archiver
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The compression worker, started on first use.
    pub fn compressor(&self) -> AofResult<Arc<Compressor>> {
        let mut c = self.compressor.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = &*c {
            return Ok(c.clone());
        }
        let started = Compressor::start()
            .map_err(|e| AofError::Startup(format!("cannot start the compression thread: {e}")))?;
        *c = Some(started.clone());
        Ok(started)
    }

    /// Flushes and closes every log, then stops the threads (the compression worker
    /// last: closing logs wait for its swaps to stop). Idempotent.
    pub fn shutdown(&self) {
        let shards = std::mem::take(&mut *self.shards.lock().unwrap_or_else(|p| p.into_inner()));
        drop(shards);
        let c = self
            .compressor
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(c) = c {
            c.stop();
        }
        let a = self
            .archiver
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(a) = a {
            a.stop();
        }
    }
}

impl Drop for ShardSet {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl std::fmt::Debug for ShardSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardSet")
            .field("shards", &self.ctls.len())
            .field("cpus", &self.cpus)
            .field("executor", &self.executor)
            .finish_non_exhaustive()
    }
}
