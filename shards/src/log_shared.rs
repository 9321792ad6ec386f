//! The state of one log shared by its handle (the callers' side) and its host (the
//! shard that runs its I/O): the core behind its lock, the durable-position signal,
//! the log's files, its place in its shard's queue, and the sealed-segment mappings
//! readers share. Both sides use this module; it uses neither, so the layers point one
//! way (handle -> manager -> shard -> shared state).
//!
//! It also holds the log's **data-chain slot** (DESIGN.md, "Who commits"): at most one
//! data chain of a log is in flight (the core hands out the next only when the last has
//! completed), and whoever runs it holds the slot. A holder that runs the chain on its
//! own thread takes a [`DataSlot`], which gives the slot back on drop: a holder that
//! unwinds (a panic) fails the chain's unfinished operations, so the log is poisoned,
//! never left waiting for a chain that will not complete.

use crate::compressed_format::CompressedIndex;
use crate::error::AofError;
use crate::exec::files::LogFiles;
use crate::fs::Mapping;
use crate::log::ops::Chain;
use crate::log::{CommitTurn, LogCore, SegmentPin};
use crate::signal::DurableSignal;
use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

/// How a log reaches the host that runs its I/O.
pub trait ShardLink: Send + Sync {
    /// Queues log `key` for the host's next turn and wakes the host if it sleeps.
    fn ready(&self, key: u64);
}

/// How a log reaches the compression worker (`Compression::Zstd`).
pub trait CompressLink: Send + Sync {
    /// Queues `log` for a swap.
    fn queue(&self, log: Weak<LogShared>);
}

/// How a log reaches the archive (Tier 2): its worker's queue, and the store readers
/// download archived segments from.
pub trait ArchiveLink: Send + Sync {
    /// Queues `log` for an upload or a deletion.
    fn queue(&self, log: Weak<LogShared>);
    /// The store.
    fn store(&self) -> Arc<dyn crate::archive::store::ArchiveBackend>;
}

/// A cached mapping of a sealed segment, with the pin that keeps its file from reuse
/// and the data end of the seal it was made for.
type CachedMap = (Arc<Mapping>, Arc<SegmentPin>, u64);
/// A cached mapping of a compressed segment file and its checked index.
pub type CachedZst = (Arc<Mapping>, Arc<CompressedIndex>);

/// State shared by a log's handle and its shard.
pub struct LogShared {
    /// Identifies the log on its shard.
    pub key: u64,
    /// The state machine (short critical sections only; no I/O under it).
    pub core: Mutex<LogCore>,
    /// Where the durable position is published to waiters.
    pub signal: Arc<DurableSignal>,
    /// Its segment files and which hold unsynced writes: used by whoever holds the
    /// data-chain slot, and by the shard for segment preparation.
    pub files: Arc<LogFiles>,
    queued: AtomicBool,
    /// Weak: a shard holds its logs (and its inbox holds logs on their way to it), so a
    /// strong link back would make a cycle that keeps both alive for ever.
    shard: Weak<dyn ShardLink>,
    /// Mappings of sealed segments, shared by every reader of them, so reading a
    /// segment again faults nothing in. Sealed files never change; each entry holds
    /// its segment's pin, so a file with a cached mapping is never reused (release
    /// and compression drop entries before removing files, so they can be).
    maps: Mutex<HashMap<u64, CachedMap>>,
    /// Compressed sealed segments' mappings with their checked indexes, so opening a
    /// reader again neither maps nor checks the file again (compressed files are never
    /// reused, so these hold no pin).
    zmaps: Mutex<HashMap<u64, CachedZst>>,
    /// Mappings below this segment were dropped (released).
    maps_floor: AtomicU64,
    /// Segments whose raw file a compressed copy replaced: a reader that located the
    /// raw file before the swap still maps it, but the cache never keeps that mapping
    /// (it would keep the unlinked file's blocks, and its pin, for as long as cached).
    compressed: Mutex<std::collections::HashSet<u64>>,
    /// The compression worker, for `Compression::Zstd` logs.
    compressor: OnceLock<Arc<dyn CompressLink>>,
    /// In the worker's queue.
    compress_queued: AtomicBool,
    /// The archive, when the manager has one.
    archiver: OnceLock<Arc<dyn ArchiveLink>>,
    /// Queued for the archive worker already.
    archive_queued: AtomicBool,
    /// Archived segments downloaded for readers (`hydrated/`), least recently used
    /// first.
    pub hydrated: Mutex<crate::archive::hydrated_cache::Hydrated>,
}

/// Sealed-segment mappings kept per log (virtual address space only; the page cache
/// stays the kernel's to reclaim). Small, because each is a VMA and a process has at
/// most `vm.max_map_count` (65530 by default) across all of its logs.
const MAX_CACHED_MAPS: usize = 64;

impl LogShared {
    /// A log's shared state: `core` (recovered), its `files`, its `shard`.
    pub fn new(
        key: u64,
        core: LogCore,
        files: Arc<LogFiles>,
        shard: &Arc<dyn ShardLink>,
    ) -> LogShared {
        let durable = core.durable_pos();
        LogShared {
            key,
            core: Mutex::new(core),
            signal: Arc::new(DurableSignal::new(durable)),
            files,
            // Queued from the start: the host polls a new log at once (to prepare).
            queued: AtomicBool::new(true),
            shard: Arc::downgrade(shard),
            maps: Mutex::new(HashMap::new()),
            zmaps: Mutex::new(HashMap::new()),
            maps_floor: AtomicU64::new(0),
            compressed: Mutex::default(),
            compressor: OnceLock::new(),
            compress_queued: AtomicBool::new(false),
            archiver: OnceLock::new(),
            archive_queued: AtomicBool::new(false),
            hydrated: Mutex::default(),
        }
    }

    /// Locks the core (a poisoned mutex is taken over: the core stays consistent).
    pub fn lock_core(&self) -> MutexGuard<'_, LogCore> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues the log on its shard unless it is queued already.
    pub fn wake_shard(&self) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            // Gone: the shard stopped, and the log's handle learns so on its next call.
            if let Some(shard) = self.shard.upgrade() {
                shard.ready(self.key);
            }
        }
    }

    /// Called by the shard just before it polls the log.
    pub fn clear_queued(&self) {
        self.queued.store(false, Ordering::Release);
    }

    /// Hands the log's sealed segments to the compression worker `c` from now on.
    pub fn set_compressor(&self, c: Arc<dyn CompressLink>) {
        let _ = self.compressor.set(c);
    }

    /// Queues the log for the compression worker unless it is queued already (the
    /// shard calls this when the core wants a swap).
    pub fn wake_compressor(self: &Arc<Self>) {
        let Some(c) = self.compressor.get() else {
            return;
        };
        if !self.compress_queued.swap(true, Ordering::AcqRel) {
            c.queue(Arc::downgrade(self));
        }
    }

    /// Called by the worker as it takes the log from its queue.
    pub fn compression_dequeued(&self) {
        self.compress_queued.store(false, Ordering::Release);
    }

    /// Hands the log's sealed segments to the archive `a` from now on.
    pub fn set_archiver(&self, a: Arc<dyn ArchiveLink>) {
        let _ = self.archiver.set(a);
    }

    /// The archive store, when the manager has one.
    pub fn archive_store(&self) -> Option<Arc<dyn crate::archive::store::ArchiveBackend>> {
        self.archiver.get().map(|a| a.store())
    }

    /// Queues the log for the archive worker unless it is queued already (the shard
    /// calls this when the core has an upload or a deletion for it).
    pub fn wake_archiver(self: &Arc<Self>) {
        let Some(a) = self.archiver.get() else {
            return;
        };
        if !self.archive_queued.swap(true, Ordering::AcqRel) {
            a.queue(Arc::downgrade(self));
        }
    }

    /// Called by the archive worker as it takes the log from its queue.
    pub fn archive_dequeued(&self) {
        self.archive_queued.store(false, Ordering::Release);
    }

    /// The shared mapping of sealed segment `id` as sealed with data end `data_end`,
    /// made by `map` if there is none; `pin` is the caller's pin of the segment (the
    /// cache keeps a copy). A mapping made for another seal of the segment (one a later
    /// session continued, then sealed again) is replaced.
    pub fn mapping(
        &self,
        id: u64,
        data_end: u64,
        pin: &Arc<SegmentPin>,
        map: impl FnOnce() -> Result<Mapping, AofError>,
    ) -> Result<Arc<Mapping>, AofError> {
        let lock = || self.maps.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = lock().get(&id).filter(|m| m.2 == data_end) {
            return Ok(m.0.clone());
        }
        let m = Arc::new(map()?);
        let mut maps = lock();
        // Released meanwhile (`forget_released_maps` raised the floor first), or its raw
        // file replaced by a compressed copy (`forget_map`): the caller's reader holds
        // this mapping, with its pin; the cache must not.
        if id < self.maps_floor.load(Ordering::Acquire) || self.compressed_now(id) {
            return Ok(m);
        }
        if maps.len() >= MAX_CACHED_MAPS {
            // Drop one (readers holding it keep it alive).
            if let Some(&k) = maps.keys().next() {
                maps.remove(&k);
            }
        }
        maps.insert(id, (m.clone(), pin.clone(), data_end));
        Ok(m)
    }

    /// The shared mapping and index of compressed segment `id`, made by `open` if
    /// there are none.
    pub fn compressed_file(
        &self,
        id: u64,
        open: impl FnOnce() -> Result<(Mapping, CompressedIndex), AofError>,
    ) -> Result<CachedZst, AofError> {
        let lock = || self.zmaps.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(z) = lock().get(&id) {
            return Ok(z.clone());
        }
        let (m, i) = open()?;
        let z = (Arc::new(m), Arc::new(i));
        let mut zmaps = lock();
        if id < self.maps_floor.load(Ordering::Acquire) {
            return Ok(z); // released meanwhile: not cached
        }
        if zmaps.len() >= MAX_CACHED_MAPS {
            if let Some(&k) = zmaps.keys().next() {
                zmaps.remove(&k);
            }
        }
        zmaps.insert(id, z.clone());
        Ok(z)
    }

    /// Drops the cached mapping of segment `id` (its raw file was replaced by a
    /// compressed one) and keeps it from being cached again, so the raw file can be
    /// reused, or its blocks freed, once readers let go.
    pub fn forget_map(&self, id: u64) {
        self.compressed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id);
        self.maps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    fn compressed_now(&self, id: u64) -> bool {
        self.compressed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&id)
    }

    /// True when a mapping of sealed segment `id` is cached (tests).
    pub fn mapping_cached(&self, id: u64) -> bool {
        self.maps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&id)
    }

    /// Drops the cached mappings of segments below `first_kept` (released): before a
    /// released file is reused, no mapping of it may remain but readers' own, which
    /// pin it.
    pub fn forget_released_maps(&self, first_kept: u64) {
        if self.maps_floor.swap(first_kept, Ordering::AcqRel) >= first_kept {
            return;
        }
        let mut maps = self.maps.lock().unwrap_or_else(|p| p.into_inner());
        maps.retain(|&id, _| id >= first_kept);
        drop(maps);
        let mut zmaps = self.zmaps.lock().unwrap_or_else(|p| p.into_inner());
        zmaps.retain(|&id, _| id >= first_kept);
        drop(zmaps);
        self.compressed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|&id| id >= first_kept);
    }

    /// Publishes the core's durable position (and whether the log ended) to waiters.
    /// Set under the core's lock, so concurrent publishers (the shard, committing
    /// callers) publish positions in the order the core reached them; waiters are woken
    /// after it is released.
    pub fn publish(&self) {
        self.publish_with(|_| false);
    }

    /// As [`Self::publish`], marking the log ended also when `ended(core)` says so
    /// (a retired log), and with whatever `ended` reads from the core under its lock.
    pub fn publish_with(&self, ended: impl FnOnce(&mut LogCore) -> bool) {
        let mut core = self.lock_core();
        let end = ended(&mut core) || core.poison().is_some();
        let wakes = self.signal.set(core.durable_pos(), end);
        drop(core);
        wakes.wake();
    }

    /// For a thread waiting for durability: takes the data-chain slot with the commit
    /// chain to run on its own thread, if the slot is free and the next data chain is a
    /// commit (see [`LogCore::take_commit_chain`]).
    pub fn take_commit(self: &Arc<Self>) -> Commit {
        match self.lock_core().take_commit_chain() {
            CommitTurn::Run(chain) => {
                let ops = chain.ops.iter().map(|o| o.id).collect();
                Commit::Run(
                    chain,
                    DataSlot {
                        shared: self.clone(),
                        ops,
                        finished: false,
                    },
                )
            }
            CommitTurn::Busy => Commit::Busy,
            CommitTurn::Shard => Commit::Shard,
            CommitTurn::Idle => Commit::Idle,
        }
    }
}

/// What [`LogShared::take_commit`] found.
pub enum Commit {
    /// Run this chain and [`finish`](DataSlot::finish) the slot with its outcomes.
    Run(Chain, DataSlot),
    /// A data chain is in flight (the shard's or another caller's): wait for it.
    Busy,
    /// The next data chain is the shard's: wake it and wait.
    Shard,
    /// Nothing to write.
    Idle,
}

/// A log's data-chain slot, held while its data chain runs on the holder's thread.
/// Dropped without [`DataSlot::finish`] (the holder unwound), it fails the chain's
/// operations: the log is poisoned, its waiters get the error, and nothing waits for
/// a chain that will never complete.
pub struct DataSlot {
    shared: Arc<LogShared>,
    ops: Vec<u64>,
    finished: bool,
}

impl DataSlot {
    /// The log whose slot this is.
    pub fn log(&self) -> &Arc<LogShared> {
        &self.shared
    }

    /// Reports the chain's outcomes to the core, publishes the durable position, gives
    /// the slot back, and wakes the shard if the next data chain is its to run (a seal,
    /// a header, write-behind).
    pub fn finish(mut self, results: Vec<(u64, io::Result<()>)>) {
        self.finished = true;
        let mut shard_work = false;
        self.shared.publish_with(|core| {
            for (id, res) in results {
                core.complete(id, res);
            }
            shard_work = core.shard_has_data_work();
            false
        });
        if shard_work {
            self.shared.wake_shard();
        }
    }
}

impl Drop for DataSlot {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let mut core = self.shared.lock_core();
        for &id in &self.ops {
            core.complete(
                id,
                Err(io::Error::other(
                    "the thread running this log's data chain panicked before it completed",
                )),
            );
        }
        drop(core);
        self.shared.publish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;
    use crate::config::AofConfig;
    use crate::exec::blocking::run_chain;
    use crate::fs::sim::SimFs;
    use crate::fs::Fs;
    use crate::layout::LogPaths;
    use crate::log::Recovered;
    use std::path::Path;

    struct Nowhere;
    impl ShardLink for Nowhere {
        fn ready(&self, _: u64) {}
    }

    /// A log on the simulated disk whose first segment is prepared.
    fn log() -> Arc<LogShared> {
        let fs = Arc::new(SimFs::new(3));
        fs.mkdir(Path::new("/l"), 0o700).unwrap();
        fs.mkdir(Path::new("/l/segments"), 0o700).unwrap();
        let mut cfg = AofConfig::default();
        cfg.root_dir = "/l".into();
        cfg.segment_min_bytes = 64 << 10;
        cfg.segment_target_bytes = 64 << 10;
        let core = LogCore::new(
            cfg.normalized(),
            LogPaths::new(Path::new("/l")),
            Clock::default(),
            1,
            Recovered::default(),
        );
        let files = Arc::new(LogFiles::new(fs, false));
        let nowhere: Arc<dyn ShardLink> = Arc::new(Nowhere);
        let shared = Arc::new(LogShared::new(1, core, files.clone(), &nowhere));
        // The first append asks for the first segment; prepare it (the shard's work)
        // with blocking calls.
        assert!(shared.lock_core().append(b"first").is_err());
        for _ in 0..100 {
            let chains = shared.lock_core().poll(0);
            for c in chains {
                for (id, r) in run_chain(&files, c) {
                    shared.lock_core().complete(id, r);
                }
            }
        }
        assert!(shared.lock_core().has_prepared_segment());
        // A first record made durable by shard-style polls: the segment's header is
        // durable, so what follows is a plain commit.
        let rid = shared.lock_core().append(b"first").unwrap().rid;
        shared.lock_core().request_flush(rid.as_u64() + 1);
        for _ in 0..10 {
            let chains = shared.lock_core().poll(0);
            for c in chains {
                for (id, r) in run_chain(&files, c) {
                    shared.lock_core().complete(id, r);
                }
            }
        }
        assert!(shared.lock_core().durable_pos() > rid.as_u64());
        shared
    }

    #[test]
    fn a_slot_holder_that_panics_poisons_the_log_instead_of_leaving_it_stuck() {
        let shared = log();
        let rid = shared.lock_core().append(b"second").unwrap().rid;
        shared.lock_core().request_flush(rid.as_u64() + 1);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let Commit::Run(_chain, _slot) = shared.take_commit() else {
                panic!("not a commit to run")
            };
            panic!("the holder fails mid-chain");
        }));
        assert!(r.is_err());
        // The slot is free again and the log is poisoned with the reason.
        let core = shared.lock_core();
        let e = core.poison().expect("poisoned").to_string();
        assert!(e.contains("panicked before it completed"), "{e}");
        assert!(shared.signal.ended(), "waiters were released");
        drop(core);
        assert!(
            matches!(shared.take_commit(), Commit::Idle),
            "nothing more runs"
        );
    }

    /// A reader that located a segment's raw file before its compressed copy replaced
    /// it may still map the raw file; the cache never keeps that mapping (nor its pin),
    /// so the unlinked file's blocks are freed once the reader lets go.
    #[test]
    fn a_raw_mapping_made_after_its_swap_is_never_cached() {
        let shared = log();
        let (p5, p6) = {
            let mut core = shared.lock_core();
            (core.pin(5), core.pin(6))
        };
        shared.forget_map(5); // the swap of segment 5 finished
        let m = shared.mapping(5, 64, &p5, || Ok(Mapping::Empty)).unwrap();
        assert!(m.is_empty());
        assert!(
            !shared.mapping_cached(5),
            "a raw mapping cached after its swap"
        );
        shared.mapping(6, 64, &p6, || Ok(Mapping::Empty)).unwrap();
        assert!(shared.mapping_cached(6), "other segments are cached");
    }

    #[test]
    fn a_slot_holder_runs_the_chain_and_finishes() {
        let shared = log();
        let rid = shared.lock_core().append(b"second").unwrap().rid;
        shared.lock_core().request_flush(rid.as_u64() + 1);
        let mut rounds = 0;
        while let Commit::Run(chain, slot) = shared.take_commit() {
            slot.finish(run_chain(&shared.files, chain));
            rounds += 1;
        }
        assert!(rounds >= 1);
        assert!(
            shared.signal.durable() > rid.as_u64(),
            "durable and published"
        );
        assert!(shared.lock_core().poison().is_none());
    }
}
