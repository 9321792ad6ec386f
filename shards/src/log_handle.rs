//! The thread-safe handle of one log: appends, flushes, seals, readers, metrics.
//! Blocking methods park the caller; `*_async` methods return futures any executor can
//! poll (the engine has no runtime of its own).

use crate::chunk_cache::ChunkCache;
use crate::clock::Clock;
use crate::config::{AofConfig, CommitMode, Compression, RecordId, SegmentId};
use crate::error::{AofError, AofResult};
use crate::exec::caller::{run_commit, CallerExec, CallerRings};
use crate::exec::files::{io_mode, LogFiles};
use crate::fs::{Fs, FsLock};
use crate::layout::LogPaths;
use crate::log::{pos, Located, LogCore, ReleaseTicket, SegmentInfo, SegmentPin};
use crate::log_shared::{Commit, LogShared, ShardLink};
use crate::manager::ShardSet;
use crate::metrics::FlushMetricsSnapshot;
use crate::reader::SegmentReader;
use crate::recovery;
use crate::shard::{current_shard, CloseRequest, Registration, ShardCtl};
use crate::signal::DurableSignal;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

mod append;

/// A log placed on a shard. Dropping it flushes what was appended, closes its files
/// and releases the directory lock before returning.
pub struct LogHandle {
    shared: Arc<LogShared>,
    /// The shard the log is placed on.
    shard: Arc<ShardCtl>,
    fs: Arc<dyn Fs>,
    paths: LogPaths,
    /// `root_dir` as configured (the metrics' `log` label); `paths` hold it absolute.
    configured_root: std::path::PathBuf,
    lock: Mutex<Option<Box<dyn FsLock>>>,
    backpressure_waits: AtomicU64,
    /// Commits this handle's callers ran, their wake-ups, and wake-ups that found
    /// nothing to do (see `FlushMetricsSnapshot`).
    caller_commits: AtomicU64,
    waiter_wakeups: AtomicU64,
    spurious_wakeups: AtomicU64,
    /// Who commits for a blocking wait.
    commit: CommitMode,
    /// The manager's caller rings, where its shards run io_uring (`None`: callers
    /// commit with blocking calls, as the portable executor does).
    callers: Option<Arc<CallerRings>>,
    /// Tier 0: inflated chunks of compressed segments (the manager's).
    chunks: Arc<ChunkCache>,
}

/// The read side of a log, cheap to clone: what followers and streams hold. It keeps
/// the log's state alive but not its lock; once the log is closed it still reads what
/// was durable.
#[derive(Clone)]
pub struct LogView {
    shared: Arc<LogShared>,
    fs: Arc<dyn Fs>,
    paths: LogPaths,
    /// Tier 0: inflated chunks of compressed segments (the manager's).
    chunks: Arc<ChunkCache>,
}

impl LogView {
    /// Locks the log core (short critical sections only).
    pub fn lock_core(&self) -> MutexGuard<'_, LogCore> {
        self.shared.lock_core()
    }

    /// The signal published whenever the durable position moves or the log ends.
    pub fn signal(&self) -> &Arc<DurableSignal> {
        &self.shared.signal
    }

    /// The log's directory.
    pub fn root_dir(&self) -> &std::path::Path {
        &self.paths.root
    }

    /// Finds segment `id`, or the first readable one after it, and pins it for a
    /// reader, in one look under the log's lock (a release decided later sees the pin
    /// and never reuses the file). `Err(Released)` if `id` was released.
    pub fn locate_pinned(&self, id: u64) -> AofResult<Option<(Located, Arc<SegmentPin>)>> {
        let mut core = self.lock_core();
        core.check_kept(id)?;
        Ok(core.locate(id).map(|l| {
            let pin = core.pin(l.segment_id());
            (l, pin)
        }))
    }

    /// Downloads the segment a reader at position `at` reads next (the first readable
    /// from `at`'s segment on, or the one after it once `at` is at its end) if only the
    /// archive holds it, on a thread of its own, awaited: the async reader's open of it
    /// then waits for no store.
    pub async fn hydrate_for_async(&self, at: u64) -> AofResult<()> {
        let (seg, off) = (at >> 32, at & u64::from(u32::MAX));
        let next = {
            let core = self.lock_core();
            match core.locate(seg) {
                Some(Located::Sealed(s))
                    if s.header.segment_id == seg && off >= s.footer.data_end =>
                {
                    core.locate(seg + 1)
                }
                l => l,
            }
        };
        let s = match next {
            Some(Located::Sealed(s)) if !s.local => s,
            _ => return Ok(()),
        };
        if crate::archive::hydrate::is_hydrated(&self.shared, &*self.fs, &self.paths, &s) {
            return Ok(());
        }
        crate::archive::hydrate::hydrate_off_thread(
            self.shared.clone(),
            self.fs.clone(),
            self.paths.clone(),
            s,
        )
        .await
        .map(|_| ())
    }

    /// Opens a reader over what `located` describes, holding `pin`. A release that
    /// became durable between the look and the open (the pin keeps a file from reuse,
    /// not from removal) is `Released`, as if it had come first.
    pub fn reader(&self, located: Located, pin: Arc<SegmentPin>) -> AofResult<SegmentReader> {
        let id = located.segment_id();
        let compressed = matches!(located, Located::Sealed(s) if s.compressed);
        let e = match self.open_located(located, pin) {
            Err(e @ AofError::Io { .. }) if e.io_kind() == Some(std::io::ErrorKind::NotFound) => e,
            r => return r,
        };
        if !compressed {
            // Its raw file may have been replaced by a compressed copy meanwhile.
            if let Some((l @ Located::Sealed(s), pin)) = self.locate_pinned(id)? {
                if s.compressed && l.segment_id() == id {
                    return self.open_located(l, pin);
                }
            }
        }
        // Released meanwhile (the pin keeps a file from reuse, not from removal).
        Err(self.lock_core().check_kept(id).err().unwrap_or(e))
    }

    fn open_located(&self, located: Located, pin: Arc<SegmentPin>) -> AofResult<SegmentReader> {
        let r = match located {
            Located::Sealed(s) if !s.local => {
                // Only the archive holds it: a checked download, then read as a local
                // copy (a mapping of the downloaded file outlives its eviction).
                let path =
                    crate::archive::hydrate::hydrate(&self.shared, &*self.fs, &self.paths, &s)?;
                if s.compressed {
                    let (map, index) = SegmentReader::open_compressed(&*self.fs, &path)?;
                    SegmentReader::compressed_from(path, Arc::new(map), Arc::new(index))
                        .cached(self.chunks.clone(), self.shared.key)
                } else {
                    SegmentReader::sealed(&*self.fs, path, s)?
                }
            }
            Located::Sealed(s) if s.compressed => {
                let path = self.paths.compressed(s.header.segment_id);
                let (map, index) = self.shared.compressed_file(s.header.segment_id, || {
                    SegmentReader::open_compressed(&*self.fs, &path)
                })?;
                SegmentReader::compressed_from(path, map, index)
                    .cached(self.chunks.clone(), self.shared.key)
            }
            Located::Sealed(s) => {
                let id = s.header.segment_id;
                let path = self.paths.segment(id);
                let map = self.shared.mapping(id, s.footer.data_end, &pin, || {
                    SegmentReader::map_sealed(&*self.fs, &path, &s)
                })?;
                SegmentReader::sealed_mapped(path, s, map)
            }
            Located::Unsealed {
                header,
                seed,
                durable_end,
            } => {
                let id = header.segment_id;
                SegmentReader::unsealed(
                    &*self.fs,
                    self.paths.segment(id),
                    header,
                    seed,
                    durable_end,
                )?
            }
        };
        Ok(r.pinned(pin))
    }

    /// Opens a reader over segment `id`: sealed segments are memory-mapped; an unsealed
    /// one is read with `pread` up to its durable end at the time of the call.
    pub fn open_reader(&self, id: SegmentId) -> AofResult<SegmentReader> {
        let idx = id.as_u64();
        match self.locate_pinned(idx)? {
            Some((l, pin)) if l.segment_id() == idx => self.reader(l, pin),
            _ => Err(AofError::SegmentNotFound {
                path: self.paths.root.clone(),
                segment: idx,
            }),
        }
    }

    /// Every segment readers can see, in id order.
    pub fn catalog(&self) -> Vec<SegmentInfo> {
        self.lock_core().catalog()
    }
}

static NEXT_KEY: AtomicU64 = AtomicU64::new(1);

fn random_u64() -> u64 {
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

impl LogHandle {
    /// Opens (creating or recovering) the log described by `cfg` and places it on a shard.
    pub fn open(set: &ShardSet, cfg: AofConfig) -> AofResult<LogHandle> {
        Self::open_with(set, cfg, set.fs(), Clock::System, random_u64())
    }

    /// As `open`, on a given file system and clock (tests).
    pub fn open_with(
        set: &ShardSet,
        cfg: AofConfig,
        fs: Arc<dyn Fs>,
        clock: Clock,
        nonce: u64,
    ) -> AofResult<LogHandle> {
        cfg.validate()?;
        let cfg = cfg.normalized();
        let shard = set.place(cfg.shard)?;
        // Absolute, so a later chdir by the application cannot redirect the log.
        let root = std::path::absolute(&cfg.root_dir)
            .map_err(|e| AofError::io("resolve root_dir", &cfg.root_dir, e))?;
        let paths = LogPaths::new(&root);
        let configured_root = cfg.root_dir.clone();
        let opened = recovery::open_log(&*fs, &paths, &clock, cfg.file_mode)?;
        let commit = cfg.commit;
        let mut core = LogCore::new(cfg, paths.clone(), clock, nonce, opened.recovered);
        if let Some(arena) = shard.arena_for_log() {
            core.set_arena(arena);
        }
        let archiver = set.archiver();
        match &archiver {
            Some(a) => {
                let id =
                    crate::archive::stub::ensure_log_id(&*fs, &paths, core.config().file_mode)?;
                core.enable_archive(a.describe(), id);
                crate::archive::hydrate::clear(&*fs, &paths);
            }
            None => {
                if let Some(s) = core.sealed_segments().iter().find(|s| !s.local) {
                    return Err(AofError::InvalidConfig(format!(
                        "{}: segment {} (and maybe more) is held only by an archive (its stub \
                         is {}); open the log with AofManagerConfig::archive set to that store",
                        paths.root.display(),
                        s.header.segment_id,
                        paths.stub(s.header.segment_id).display()
                    )));
                }
            }
        }
        let shared = Arc::new(LogShared::new(
            NEXT_KEY.fetch_add(1, Ordering::Relaxed),
            core,
            Arc::new(LogFiles::new(fs.clone(), true)),
            &(shard.clone() as Arc<dyn ShardLink>),
        ));
        if shared.lock_core().config().compression == Compression::Zstd {
            shared.set_compressor(set.compressor()?);
        }
        if let Some(a) = archiver {
            shared.set_archiver(a);
        }
        // Refused if the shard failed since it was placed (the lock goes with `opened`).
        shard.add(Registration {
            shared: shared.clone(),
        })?;
        let log = LogHandle {
            shared,
            shard,
            fs,
            paths,
            configured_root,
            lock: Mutex::new(Some(opened.lock)),
            backpressure_waits: AtomicU64::new(0),
            caller_commits: AtomicU64::new(0),
            waiter_wakeups: AtomicU64::new(0),
            spurious_wakeups: AtomicU64::new(0),
            commit,
            callers: set.caller_rings(),
            chunks: set.chunk_cache().clone(),
        };
        // No segment file is prepared at open: the first append asks for one (a log
        // that is opened and never written costs no file).
        Ok(log)
    }

    fn no_blocking_here(call: &'static str) -> AofResult<()> {
        match current_shard() {
            Some(shard) => Err(AofError::WouldDeadlock { call, shard }),
            None => Ok(()),
        }
    }

    /// Asks for `rid` to be synced; `Ok(true)` if it already is. The shard is woken
    /// for it if `wake` (a caller that commits itself does not need it).
    fn request(&self, rid: RecordId, wake: bool) -> AofResult<bool> {
        if (rid.segment_offset() as usize) < crate::format::HEADER_LEN {
            // Never a record: checked before the fast path below would call it durable.
            return self.shared.lock_core().check_rid(rid).map(|_| true);
        }
        if rid.as_u64() < self.shared.signal.durable() {
            return Ok(true);
        }
        let mut core = self.shared.lock_core();
        core.check_rid(rid)?;
        if rid.as_u64() < core.durable_pos() {
            return Ok(true);
        }
        if let Some(e) = core.poison() {
            return Err(e);
        }
        let wake = core.request_flush(rid.as_u64() + 1) && wake;
        drop(core);
        if wake {
            self.shared.wake_shard();
        }
        Ok(false)
    }

    /// True when a blocking wait commits itself rather than waiting for the shard.
    fn commits_itself(&self) -> bool {
        self.commit == CommitMode::Caller
    }

    /// Waits for `target` as a caller that commits: whenever the log's data-chain slot
    /// is free and the next data chain is a commit, this thread runs it (everything
    /// appended so far, one write and its sync) and its completion releases every
    /// waiter it covers; while another commit is in flight, it waits for that one.
    fn commit_until(&self, target: u64) -> AofResult<()> {
        let mut woke = false;
        loop {
            let seen = self.shared.signal.version();
            if let Some(r) = self.settled(target) {
                return r;
            }
            if self.try_commit() {
                woke = false;
                continue;
            }
            if std::mem::take(&mut woke) {
                self.spurious_wakeups.fetch_add(1, Ordering::Relaxed);
            }
            self.shared.signal.wait_for(target, seen, true);
            self.waiter_wakeups.fetch_add(1, Ordering::Relaxed);
            woke = true;
        }
    }

    /// One attempt to commit on this thread; true if a commit ran (look again at once),
    /// false if the caller should wait (a chain in flight, or the shard's turn).
    fn try_commit(&self) -> bool {
        match &self.callers {
            None => self.commit_with(CallerExec::Blocking),
            Some(rings) => rings.with_ring(|ring| match ring {
                Some(r) => self.commit_with(CallerExec::Ring(r)),
                // No ring for this thread: the shard commits for it.
                None => {
                    self.shared.wake_shard();
                    false
                }
            }),
        }
    }

    fn commit_with(&self, exec: CallerExec<'_>) -> bool {
        match self.shared.take_commit() {
            Commit::Run(chain, slot) => {
                let results = run_commit(exec, self.shared.key, chain, &self.shared.files);
                slot.finish(results);
                self.caller_commits.fetch_add(1, Ordering::Relaxed);
                true
            }
            Commit::Shard => {
                self.shared.wake_shard();
                false
            }
            Commit::Busy | Commit::Idle => false,
        }
    }

    /// `Some(result)` once waiting on `target` is over.
    fn settled(&self, target: u64) -> Option<AofResult<()>> {
        if target <= self.shared.signal.durable() {
            return Some(Ok(()));
        }
        if self.shared.signal.ended() {
            let core = self.shared.lock_core();
            if target <= core.durable_pos() {
                return Some(Ok(()));
            }
            return Some(Err(core.check_open().err().unwrap_or(AofError::Closed {
                path: self.paths.root.clone(),
            })));
        }
        None
    }

    /// Returns once every record up to and including `rid` is covered by a completed
    /// `fdatasync`.
    pub fn flush_until(&self, rid: RecordId) -> AofResult<()> {
        let itself = self.commits_itself() && current_shard().is_none();
        if self.request(rid, !itself)? {
            return Ok(());
        }
        Self::no_blocking_here("flush_until")?;
        if itself {
            return self.commit_until(rid.as_u64() + 1);
        }
        self.wait_sync(rid.as_u64() + 1)
    }

    fn wait_sync(&self, target: u64) -> AofResult<()> {
        let mut woke = false;
        loop {
            let seen = self.shared.signal.version();
            if let Some(r) = self.settled(target) {
                return r;
            }
            if std::mem::take(&mut woke) {
                self.spurious_wakeups.fetch_add(1, Ordering::Relaxed);
            }
            self.shared.signal.wait_for(target, seen, false);
            self.waiter_wakeups.fetch_add(1, Ordering::Relaxed);
            woke = true;
        }
    }

    /// Async `flush_until`.
    pub async fn flush_until_async(&self, rid: RecordId) -> AofResult<()> {
        // An async caller never blocks its executor's thread: the shard commits.
        if self.request(rid, true)? {
            return Ok(());
        }
        let target = rid.as_u64() + 1;
        loop {
            let seen = self.shared.signal.version();
            if let Some(r) = self.settled(target) {
                return r;
            }
            self.shared.signal.changed(seen).await;
        }
    }

    /// Syncs everything appended so far.
    pub fn flush(&self) -> AofResult<()> {
        let itself = self.commits_itself() && current_shard().is_none();
        let target = {
            let mut core = self.shared.lock_core();
            core.check_open()?;
            let end = core.end_pos();
            if core.request_flush_all() && !itself {
                drop(core);
                self.shared.wake_shard();
            }
            end
        };
        Self::no_blocking_here("flush")?;
        if itself {
            return self.commit_until(target);
        }
        self.wait_sync(target)
    }

    /// Seals the active segment if it holds records and waits until its footer is
    /// durable; the next append starts a new segment. `None` if there was nothing to seal.
    pub fn seal_active(&self) -> AofResult<Option<SegmentId>> {
        let (id, wake) = self.shared.lock_core().seal_active()?;
        if wake {
            self.shared.wake_shard();
        }
        let Some(id) = id else { return Ok(None) };
        Self::no_blocking_here("seal_active")?;
        self.wait_sync(pos(id + 1, 0))?;
        Ok(Some(SegmentId::new(id)))
    }

    /// Asks for the release of every sealed segment whose records all precede `rid`;
    /// true with the ticket when it is settled already (nothing to wait for).
    fn request_release(&self, rid: RecordId) -> AofResult<(ReleaseTicket, bool)> {
        let mut core = self.shared.lock_core();
        let t = core.request_release(rid)?;
        let done = core.release_outcome(&t).is_some();
        drop(core);
        if !done {
            self.shared.wake_shard();
        }
        Ok((t, done))
    }

    /// Releases every sealed segment whose records all precede `rid` (never the active
    /// one) and returns how many this call released (0 if they were released already).
    /// Durable when it returns: a reopen or a crash never brings them back. Reading a
    /// released record is `AofError::Released`.
    pub fn release_before(&self, rid: RecordId) -> AofResult<usize> {
        let (t, done) = self.request_release(rid)?;
        if !done {
            Self::no_blocking_here("release_before")?;
        }
        loop {
            let seen = self.shared.signal.version();
            if let Some(r) = self.shared.lock_core().release_outcome(&t) {
                return r;
            }
            self.shared.signal.wait_change(seen, None);
        }
    }

    /// Async [`Self::release_before`].
    pub async fn release_before_async(&self, rid: RecordId) -> AofResult<usize> {
        let (t, _) = self.request_release(rid)?;
        loop {
            let seen = self.shared.signal.version();
            if let Some(r) = self.shared.lock_core().release_outcome(&t) {
                return r;
            }
            self.shared.signal.changed(seen).await;
        }
    }

    /// Where the log starts: the id the first record it keeps has (or will have).
    pub fn first_record(&self) -> RecordId {
        self.shared.lock_core().first_record()
    }

    /// Opens a reader over segment `id` (see [`LogView::open_reader`]).
    pub fn open_reader(&self, id: SegmentId) -> AofResult<SegmentReader> {
        self.view().open_reader(id)
    }

    /// The read side of this log, for followers and streams.
    pub fn view(&self) -> LogView {
        LogView {
            shared: self.shared.clone(),
            fs: self.fs.clone(),
            paths: self.paths.clone(),
            chunks: self.chunks.clone(),
        }
    }

    /// The index of the shard the log is placed on.
    pub fn shard_id(&self) -> usize {
        self.shard.id
    }

    /// The CPU the log's shard thread is pinned to (`None`: not pinned).
    pub fn shard_cpu(&self) -> Option<usize> {
        self.shard.cpu
    }

    /// Test hook: the shard's next poll of this log panics inside the log's core, as a
    /// broken invariant would; the log is poisoned, its shard and other logs go on.
    #[doc(hidden)]
    pub fn inject_panic(&self) {
        self.shared.lock_core().inject_panic();
        self.shared.wake_shard();
    }

    /// Test hook: the compression worker's next swap step of this log panics; the swap
    /// is abandoned, the segment stays raw, and the worker goes on.
    #[doc(hidden)]
    pub fn inject_compression_panic(&self) {
        self.shared.lock_core().inject_compression_panic();
    }

    /// Counters and gauges.
    pub fn metrics(&self) -> FlushMetricsSnapshot {
        let m = self.shared.lock_core().metrics();
        FlushMetricsSnapshot {
            backpressure_waits: self.backpressure_waits.load(Ordering::Relaxed),
            io_uring_fallback: u64::from(self.shard.uring_fallback.load(Ordering::Relaxed)),
            direct_io: u64::from(self.shared.files.io_mode() == io_mode::DIRECT),
            caller_commits: self.caller_commits.load(Ordering::Relaxed),
            waiter_wakeups: self.waiter_wakeups.load(Ordering::Relaxed),
            spurious_wakeups: self.spurious_wakeups.load(Ordering::Relaxed),
            ..m
        }
    }

    /// The log's directory.
    pub fn root_dir(&self) -> &std::path::Path {
        &self.paths.root
    }

    /// The log's latency and batching histograms (`None` before its first commit).
    pub fn histograms(&self) -> Option<crate::log_histograms::LogHistograms> {
        self.shared.lock_core().histograms()
    }

    /// The configuration in effect (normalized).
    pub fn config(&self) -> AofConfig {
        self.shared.lock_core().config().clone()
    }

    /// Closes the log: flushes, closes files, releases the lock; followers and streams
    /// end once they have read what was durable. Idempotent.
    pub fn close(&self) -> AofResult<()> {
        let lock = self.lock.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(lock) = lock {
            let (ack, done) = std::sync::mpsc::channel();
            self.shard.close(CloseRequest {
                key: self.shared.key,
                ack,
                lock: Some(lock),
            });
            // On a shard thread we cannot wait; the shard releases the lock once drained.
            if current_shard().is_none() {
                let _ = done.recv();
            }
        }
        // A final sync or seal that failed poisoned the log.
        match self.shared.lock_core().poison() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl LogHandle {
    /// `close` ran (by a call or a drop).
    pub fn is_closed(&self) -> bool {
        self.lock
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
    }
}

impl Drop for LogHandle {
    fn drop(&mut self) {
        // A failure was reported to whoever called `close`, or is logged where it
        // happened; a drop has no one to tell.
        let _ = self.close();
    }
}

impl std::fmt::Debug for LogHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogHandle")
            .field("root_dir", &self.paths.root)
            .field("shard", &self.shard.id)
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

impl crate::metrics::LogMetrics for LogHandle {
    fn root_dir(&self) -> &std::path::Path {
        &self.configured_root
    }
    fn metrics(&self) -> FlushMetricsSnapshot {
        LogHandle::metrics(self)
    }
    fn histograms(&self) -> Option<crate::log_histograms::LogHistograms> {
        LogHandle::histograms(self)
    }
    fn is_closed(&self) -> bool {
        LogHandle::is_closed(self)
    }
}
