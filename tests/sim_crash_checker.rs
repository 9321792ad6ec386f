//! The durability contract, checked on the simulated crash disk over random workloads.
//!
//! Each seed runs one deterministic world: several logical writers append records of
//! random sizes (some needing a segment of their own, some too large), flush requests
//! arrive, virtual time advances (interval flushes), segments are sealed, and the disk
//! crashes (unsynced writes kept, dropped or torn per 512 bytes; un-fsynced directory
//! changes reverted) or the log is closed cleanly, then reopened. After every reopen:
//! - every record the engine reported durable is back, byte for byte, at its id;
//! - what came back from each session is a prefix of what it appended (nothing
//!   reordered, nothing half-visible), and closed sessions came back whole;
//! - ids handed out after a reopen are above every id handed out before;
//! - compression (a third of the seeds): the worker's swap steps run between turns, so
//!   crashes cut swaps anywhere; compressed segments are inflated and checked as raw;
//! - releases (`release_before` of random records): the log starts at or after every
//!   release that was reported durable and never after what was asked for; records
//!   below that start are exempt from the rules above, all others are not;
//! - the archive (a quarter of the seeds, with `Size` retention dropping local copies):
//!   the upload's steps run between turns against an in-memory store that fails puts
//!   and loses their answers, so crashes cut uploads and local removals anywhere;
//!   segments only the archive holds are read back from the store (SHA-256 and frames
//!   checked) and held to the same rules.
//!
//! Each seed runs on both backends' execution models: the portable one (each chain run
//! to completion with blocking calls) and the io_uring one (chains cut into linked
//! groups by the same `ChainRunner` the real ring uses, on a simulated ring that
//! completes operations of different groups in random order). On the ring, the
//! partial-block rules are checked at every write: no two writes to one block in
//! flight, and no write changing bytes an earlier write put there.
//!
//! One seed in three also injects faults on the simulated disk: EIO and ENOSPC on
//! writes, syncs and directory operations, short writes, slow syncs (the virtual clock
//! jumps, so timers fire mid-sync; on the ring, syncs are also held back). Under faults
//! the same contract holds, plus the documented error semantics: a failed data write or
//! sync poisons the log (appends then fail with `Poisoned` naming the directory, and
//! nothing more is reported durable), a failed segment preparation fails only the
//! appends that need the segment, and a reopen (after a crash or a drop) re-verifies.
//!
//! `AOF2_SIM_SEEDS=N` runs N seeds (default 3000, half on each model) from
//! `AOF2_SIM_SEED_START` (default 0; `scripts/sim-seeds.sh` runs millions in parallel);
//! `AOF2_BACKEND=sync|uring` runs one model only; `AOF2_SIM_SEED=S` runs seed S alone
//! and prints its steps. A failure names its seed and model.

use aof2_shards::archive::mem_store::MemStore;
use aof2_shards::archive::store::ArchiveBackend;
use aof2_shards::archive::stub::Stub;
use aof2_shards::archive::upload::{Upload, Uploaded};
use aof2_shards::clock::Clock;
use aof2_shards::compress::swap::{Stepped, Swap};
use aof2_shards::compressed_format::CompressedSegment;
use aof2_shards::config::{AofConfig, RecordId};
use aof2_shards::error::AofError;
use aof2_shards::exec::blocking::BlockingExecutor;
use aof2_shards::exec::files::LogFiles;
use aof2_shards::exec::sim_ring::SimRing;
use aof2_shards::exec::Completed;
use aof2_shards::exec::{Executor, NeverSleep, RingExecutor};
use aof2_shards::format;
use aof2_shards::fs::sim::{Faults, SimFs, SimRng};
use aof2_shards::fs::Mapping;
use aof2_shards::fs::{Fs, FsLock, OpenMode};
use aof2_shards::layout::LogPaths;
use aof2_shards::log::{Located, LogCore, ReleaseTicket, SegmentPin, Swapped};
use aof2_shards::log_shared::{Commit, DataSlot, LogShared, ShardLink};
use aof2_shards::recovery;
use aof2_shards::shard::turn::ShardLoop;
use aof2_shards::shard::{CloseRequest, Registration, ShardCtl};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, MutexGuard};

const WRITERS: u64 = 4;

/// The payload of the checker's panicking `fill` closures (its length argument), which
/// the panic hook keeps quiet.
struct FillFails(usize);

/// Keeps the checker's own `fill` panics out of the output; every other panic prints.
fn quiet_fill_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<FillFails>().is_none() {
                default(info);
            }
        }));
    });
}

/// Records read back: (id, payload).
type Records = Vec<(RecordId, Vec<u8>)>;

struct Session {
    records: Vec<(RecordId, Vec<u8>)>,
    /// For each record, the index one past the last record of its atomic batch
    /// (`k + 1` for a single append): no reopen may bring back part of a batch.
    batch_end: Vec<usize>,
    /// records[..acked] were reported durable.
    acked: usize,
    /// Closed cleanly: every record must come back.
    closed: bool,
    /// Faults injected before the session began.
    faults_at_start: u64,
    /// Segments that started in recycled files (last seen).
    recycled: u64,
    /// The session continued the last segment of a clean close (last seen).
    continued: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Model {
    /// Driver::step: blocking calls, one chain at a time.
    Blocking,
    /// ChainRunner on a SimRing: linked groups, completions in random order.
    Ring,
}

struct World {
    seed: u64,
    model: Model,
    /// Faults this seed injects (None: a clean disk).
    faults: Option<Faults>,
    fs: SimFs,
    rng: SimRng,
    time: Arc<AtomicU64>,
    cfg: AofConfig,
    paths: LogPaths,
    sessions: Vec<Session>,
    max_rid: Option<RecordId>,
    trace: bool,
    /// Records of sealed segments already read back, by (segment, data end): a sealed
    /// segment changes only when a later session continues it, and then its data end
    /// moves; the last verification of a seed reads everything again.
    cache: std::collections::HashMap<(u64, u64), Records>,
    /// Log buffer size: smaller than a segment in most seeds, so full buffers are
    /// written behind the appenders (files then hold writes no sync covered yet).
    buf_size: usize,
    /// Negative control: the ring fuses a write and sync into files holding other
    /// unsynced writes, which a crash can lose. The checker must catch it.
    fuse_into_dirty: bool,
    /// Negative control: the log decides spares without looking at readers' pins, so
    /// mapped files get recycled. The simulated disk must refuse it.
    ignore_pins: bool,
    /// The highest first-kept segment a release was reported durable for: the log
    /// never starts before it again.
    released_durable: u64,
    /// The highest first-kept segment asked for: the log never starts after it.
    released_asked: u64,
    /// Swaps to a compressed file finished, and compressed segments read back.
    compressed: u64,
    compressed_read: u64,
    /// The archive's store (a quarter of the seeds): it outlives every crash.
    store: Option<Arc<MemStore>>,
    /// Uploads finished, and archived-only segments read back from the store.
    uploaded: u64,
    archived_read: u64,
    /// Negative control: the log hears of an upload once the store holds the object,
    /// before its stub is durable, so a local copy may go with nothing left to find
    /// the object by. The checker must catch it.
    early_archive_ack: bool,
}

/// One open session: the log on a shard with no thread, whose turns the checker runs.
struct Open {
    /// The durable position when the log was poisoned.
    poisoned_at: Option<u64>,
    shard: Arc<ShardCtl>,
    turns: ShardLoop,
    shared: Arc<LogShared>,
    lock: Option<Box<dyn FsLock>>,
    /// A caller committing its own appends, on its own executor (`caller_executor`),
    /// interleaved with the shard's turns.
    caller: Box<dyn Executor>,
    /// The caller's commit in flight: the log's data-chain slot it holds, and what
    /// completed so far.
    commit: Option<(DataSlot, Vec<Completed>)>,
    /// Releases asked for and not settled yet.
    releases: Vec<ReleaseTicket>,
    /// The compression worker's swap in progress.
    swap: Option<Swap>,
    /// The archive worker's upload in progress.
    upload: Option<Upload>,
    /// Readers holding a sealed segment's mapping (and its pin), as `open_reader` does.
    readers: Vec<(u64, Arc<Mapping>, Arc<SegmentPin>)>,
}

impl Open {
    fn core(&self) -> MutexGuard<'_, LogCore> {
        self.shared.lock_core()
    }

    /// The simulated ring (the ring model).
    fn ring(&mut self) -> Option<&mut SimRing> {
        self.turns
            .executor_mut()
            .as_any_mut()
            .downcast_mut::<RingExecutor<SimRing>>()
            .map(|r| r.ring_mut())
    }

    /// Asks for everything below `upto` to be synced, waking the shard as a handle does.
    fn request_flush(&self, upto: u64) {
        if self.core().request_flush(upto) {
            self.shared.wake_shard();
        }
    }

    fn request_flush_all(&self) {
        if self.core().request_flush_all() {
            self.shared.wake_shard();
        }
    }
}

/// A record length: mostly small, sometimes beyond a segment, and one in sixteen on
/// either side of a boundary of this world's shapes: the block, the log buffer, the
/// first (min), target and largest segment file, and the largest record.
fn payload_len(rng: &mut SimRng, cfg: &AofConfig, buf_size: usize) -> usize {
    if rng.below(16) == 0 {
        // Payload that makes a frame (32-byte header, 8-aligned) end at `edge`, where
        // `edge` is a size measured from a segment's first frame (after its 64-byte
        // header) or, for file sizes, before its 4 KiB footer region too.
        let file = |size: u64| size as usize - 4096 - 64;
        let edges = [
            4096 - 64,
            4096,
            buf_size,
            file(cfg.segment_min_bytes),
            file(cfg.segment_target_bytes),
            file(cfg.segment_max_bytes),
        ];
        let edge = edges[rng.below(edges.len() as u64) as usize];
        let delta = [-8i64, -1, 0, 1, 8][rng.below(5) as usize];
        return (edge as i64 - 32 + delta).max(0) as usize;
    }
    match rng.below(100) {
        0..=59 => rng.below(200) as usize,
        60..=97 => rng.below(5000) as usize,
        98 => 60_000 + rng.below(80_000) as usize, // beyond a 64 KiB segment
        _ => 0,
    }
}

fn payload(len: usize, rng: &mut SimRng, session: usize, seq: usize, writer: u64) -> Vec<u8> {
    let mut p = Vec::with_capacity(len.max(16));
    p.extend_from_slice(&(session as u32).to_le_bytes());
    p.extend_from_slice(&(seq as u32).to_le_bytes());
    p.extend_from_slice(&writer.to_le_bytes());
    while p.len() < len {
        p.push(rng.below(256) as u8);
    }
    p.truncate(len);
    p
}

impl World {
    fn new(seed: u64, model: Model, trace: bool) -> World {
        quiet_fill_panics();
        let mut rng = SimRng::new(seed);
        let mut cfg = AofConfig::default();
        cfg.root_dir = "/sim/log".into();
        cfg.segment_min_bytes = 64 * 1024;
        cfg.segment_target_bytes = 64 * 1024;
        cfg.segment_max_bytes = 256 * 1024;
        cfg.flush.flush_interval_ms = [0, 1, 5][rng.below(3) as usize];
        cfg.flush.flush_watermark_bytes = [8 * 1024, 32 * 1024, 1 << 20][rng.below(3) as usize];
        cfg.flush.max_unflushed_bytes = [64 * 1024, 256 * 1024, 1 << 20][rng.below(3) as usize];
        cfg.flush.flush_watermark_bytes = cfg
            .flush
            .flush_watermark_bytes
            .min(cfg.flush.max_unflushed_bytes);
        // The first file prepared from the open (`preallocate_segments`), in a third of
        // the seeds (by the seed alone, so the other draws stay as they were).
        cfg.preallocate_segments = seed % 3 == 2;
        // Segments that grow with the write rate, in some seeds.
        cfg.segment_target_bytes = [64 * 1024, 128 * 1024, 256 * 1024][rng.below(3) as usize];
        // The default's shapes, scaled down, in a sixth of the seeds: a target above the
        // log buffer's 1 MiB, so records of 1-4 MiB get files of their own below the
        // target (block-rounded, not powers of two) with buffers sized to them.
        let large = rng.below(6) == 0;
        if large {
            cfg.segment_target_bytes = 4 << 20;
            cfg.segment_max_bytes = 4 << 20;
        }
        // Retention releasing in the background, in a quarter of the seeds.
        if rng.below(4) == 0 {
            cfg.retention = aof2_shards::config::RetentionPolicy::Size {
                max_total_bytes: [128 * 1024, 512 * 1024][rng.below(2) as usize],
            };
        }
        // Compression in the background, in a third of the seeds: the checker runs the
        // worker's swap steps between the shard's turns (see `compress_step`).
        if rng.below(3) == 0 {
            cfg.compression = aof2_shards::config::Compression::Zstd;
            cfg.compression_level = 1;
        }
        // The archive, in a quarter of the seeds (chosen by the seed alone, so the
        // other seeds' draws stay as they were): local copies dropped under `Size`
        // retention once uploaded; archived copies kept within 1 MiB in half of them.
        let archive = (seed / 3) % 4 == 1;
        if archive {
            cfg.retention = aof2_shards::config::RetentionPolicy::Size {
                max_total_bytes: [128 * 1024, 512 * 1024][(seed / 12 % 2) as usize],
            };
            if seed / 24 % 2 == 1 {
                cfg.archive_retention = aof2_shards::config::RetentionPolicy::Size {
                    max_total_bytes: 1 << 20,
                };
            }
        }
        let cfg = cfg.normalized();
        let faults = (seed % 3 == 2).then(|| Faults {
            write_error_ppm: rng.below(5_000) as u32,
            short_write_ppm: rng.below(5_000) as u32,
            sync_error_ppm: rng.below(5_000) as u32,
            dir_error_ppm: rng.below(10_000) as u32,
            slow_sync_ppm: rng.below(50_000) as u32,
            // Removals that fail (unlinks, directory fsyncs after a rename) in half of
            // these seeds, often, while readers map the files.
            unlink_error_ppm: [0, 100_000][rng.below(2) as usize],
            dir_sync_error_ppm: [0, 50_000][rng.below(2) as usize],
            ..Faults::default()
        });
        // Log buffers smaller than a segment in most seeds; the engine's own sizes
        // (1 MiB, less for small segments) with the default-like shapes.
        let buf_size = if large {
            aof2_shards::log::BUF_SIZE
        } else {
            [8 * 1024, 16 * 1024, 64 * 1024][rng.below(3) as usize]
        };
        let time = Arc::new(AtomicU64::new(1_000_000_000));
        let fs = SimFs::new(rng.next_u64());
        fs.set_clock(time.clone());
        World {
            seed,
            model,
            faults,
            fs,
            rng,
            time,
            paths: LogPaths::new(Path::new("/sim/log")),
            cfg,
            sessions: Vec::new(),
            max_rid: None,
            trace,
            cache: Default::default(),
            buf_size,
            fuse_into_dirty: false,
            ignore_pins: false,
            released_durable: 0,
            released_asked: 0,
            compressed: 0,
            compressed_read: 0,
            store: archive.then(|| Arc::new(MemStore::new())),
            uploaded: 0,
            archived_read: 0,
            early_archive_ack: false,
        }
    }

    fn say(&self, what: impl FnOnce() -> String) {
        if self.trace {
            println!("seed {} ({:?}): {}", self.seed, self.model, what());
        }
    }

    fn fail(&self, msg: String) -> ! {
        let backend = match self.model {
            Model::Blocking => "sync",
            Model::Ring => "uring",
        };
        panic!(
            "seed {} ({:?} model) failed: {msg}\nreproduce: AOF2_SIM_SEED={} AOF2_BACKEND={backend} cargo test --test sim_crash_checker -- --nocapture",
            self.seed, self.model, self.seed
        )
    }

    fn clock(&self) -> Clock {
        Clock::Manual(self.time.clone())
    }

    fn open(&mut self) -> Open {
        let opened = match recovery::open_log(&self.fs, &self.paths, &self.clock(), 0o600) {
            Ok(o) => o,
            Err(e) if self.faults.is_some() && self.fs.faults_injected() > 0 => {
                // An injected fault may fail recovery: a clear error, then a retry on a
                // healthy disk must bring everything back.
                let msg = e.to_string();
                if !msg.contains("/sim") {
                    self.fail(format!("recovery error names no path: {msg}"));
                }
                self.say(|| format!("reopen failed under faults: {msg}; retrying"));
                self.fs.set_faults(Faults::default());
                let r = recovery::open_log(&self.fs, &self.paths, &self.clock(), 0o600);
                self.fs.set_faults(self.faults.clone().unwrap_or_default());
                r.unwrap_or_else(|e| self.fail(format!("reopen failed on a healthy disk: {e}")))
            }
            Err(e) => self.fail(format!("reopen failed: {e}")),
        };
        self.say(|| {
            let r = &opened.recovered;
            let files = self.fs.list_dir(&self.paths.segments).unwrap_or_default();
            format!(
                "recovered: next segment {}, prepared {:?}, sealed {}, files {:?}",
                r.next_segment,
                r.prepared,
                r.sealed.len(),
                files
                    .iter()
                    .map(|f| {
                        let p = self.paths.segments.join(f);
                        let n = self
                            .fs
                            .open(&p, OpenMode::Read)
                            .and_then(|h| h.size())
                            .unwrap_or(0);
                        format!("{}:{n}", f.to_string_lossy().trim_start_matches('0'))
                    })
                    .collect::<Vec<_>>()
            )
        });
        self.verify(&opened.recovered, true);
        let mut core = LogCore::new(
            self.cfg.clone(),
            self.paths.clone(),
            self.clock(),
            self.rng.next_u64(),
            opened.recovered,
        );
        core.set_buffer_size(self.buf_size);
        if let Some(store) = &self.store {
            let id = aof2_shards::archive::stub::ensure_log_id(&self.fs, &self.paths, 0o600)
                .or_else(|e| {
                    if self.fs.faults_injected() == 0 {
                        return Err(e);
                    }
                    self.fs.set_faults(Faults::default());
                    let r = aof2_shards::archive::stub::ensure_log_id(&self.fs, &self.paths, 0o600);
                    self.fs.set_faults(self.faults.clone().unwrap_or_default());
                    r
                })
                .unwrap_or_else(|e| self.fail(format!("the log id: {e}")));
            core.enable_archive(store.describe(), id);
        }
        if self.ignore_pins {
            core.ignore_pins_for_test();
        }
        self.sessions.push(Session {
            records: Vec::new(),
            batch_end: Vec::new(),
            acked: 0,
            closed: false,
            faults_at_start: self.fs.faults_injected(),
            recycled: 0,
            continued: 0,
        });
        let exec = self.executor();
        let shard = ShardCtl::detached(0);
        let shared = Arc::new(LogShared::new(
            self.sessions.len() as u64,
            core,
            Arc::new(LogFiles::new(Arc::new(self.fs.clone()), true)),
            &(shard.clone() as Arc<dyn ShardLink>),
        ));
        shard
            .add(Registration {
                shared: shared.clone(),
            })
            .expect("a new shard takes logs");
        let caller = self.caller_executor();
        let mut turns = ShardLoop::new(shard.clone(), exec, self.clock());
        // Every other seed turns as a glommio host does: never blocking in the executor.
        turns.set_never_block(self.seed % 2 == 1);
        Open {
            poisoned_at: None,
            turns,
            shard,
            shared,
            lock: Some(opened.lock),
            caller,
            commit: None,
            releases: Vec::new(),
            swap: None,
            upload: None,
            readers: Vec::new(),
        }
    }

    /// An executor of this world's model (the shard's, or a committing caller's).
    fn executor(&mut self) -> Box<dyn Executor> {
        match self.model {
            Model::Blocking => self.blocking_executor(),
            Model::Ring => {
                let mut ring = SimRing::new(self.fs.clone(), self.rng.next_u64());
                // Slow syncs: held back ten times as often as they stall the clock.
                let slow = self.faults.as_ref().map_or(0, |f| f.slow_sync_ppm);
                ring.set_slow_syncs(slow.saturating_mul(10).min(500_000));
                let mut exec = RingExecutor::new(ring);
                exec.runner_mut()
                    .fuse_into_dirty_files(self.fuse_into_dirty);
                Box::new(exec)
            }
        }
    }

    /// A committing caller's executor: in the ring model, blocking system calls on half
    /// of the seeds (a caller without polling, the default) and a ring of its own on
    /// the others (a caller that polls); the blocking model's otherwise.
    fn caller_executor(&mut self) -> Box<dyn Executor> {
        if matches!(self.model, Model::Ring) && (self.seed / 2).is_multiple_of(2) {
            return self.blocking_executor();
        }
        self.executor()
    }

    /// The blocking executor (fusing into dirty files for the negative control).
    fn blocking_executor(&self) -> Box<dyn Executor> {
        if self.fuse_into_dirty {
            Box::new(BlockingExecutor::fusing_into_dirty_files())
        } else {
            Box::new(BlockingExecutor::default())
        }
    }

    /// Everything in the recovered segments, checked against what each session appended.
    fn verify(&mut self, rec: &aof2_shards::log::Recovered, use_cache: bool) {
        let first_kept = rec.mark.first_segment;
        if first_kept < self.released_durable {
            self.fail(format!(
                "released segments came back: the log starts at segment {first_kept}, but a \
                 release up to {} was reported durable",
                self.released_durable
            ));
        }
        let retained = !matches!(
            self.cfg.retention,
            aof2_shards::config::RetentionPolicy::KeepAll
        );
        if first_kept > self.released_asked && !retained {
            self.fail(format!(
                "the log starts at segment {first_kept}, but releases asked only up to {}",
                self.released_asked
            ));
        }
        let mut found: Vec<(RecordId, Vec<u8>)> = Vec::new();
        for s in &rec.sealed {
            if use_cache {
                if let Some(recs) = self.cache.get(&(s.header.segment_id, s.footer.data_end)) {
                    found.extend(recs.iter().cloned());
                    continue;
                }
            }
            let first = found.len();
            let path = self.paths.sealed(s.header.segment_id, s.compressed);
            let mut img = if s.local {
                self.fs
                    .read_file(&path)
                    .unwrap_or_else(|e| self.fail(format!("{}: {e}", path.display())))
            } else {
                self.archived_image(s)
            };
            if s.compressed {
                img = self.inflate(&path, &img, s.header.file_size);
                self.compressed_read += 1;
            }
            let mut frames = format::frames(s.seed, &img, s.footer.data_end);
            for f in frames.by_ref() {
                match f {
                    Ok(f) => found.push((
                        RecordId::from_parts(s.header.segment_id as u32, f.offset as u32),
                        f.payload.to_vec(),
                    )),
                    Err((off, why)) => {
                        self.fail(format!("sealed {} invalid at {off}: {why}", path.display()))
                    }
                }
            }
            if frames.position() != s.footer.data_end {
                self.fail(format!(
                    "{} frames end at {} not {}",
                    path.display(),
                    frames.position(),
                    s.footer.data_end
                ));
            }
            self.cache.insert(
                (s.header.segment_id, s.footer.data_end),
                found[first..].to_vec(),
            );
        }
        let mut it = found.iter().peekable();
        for (i, sess) in self.sessions.iter().enumerate() {
            // Records of released segments are gone, as asked.
            let mut k = sess
                .records
                .partition_point(|r| u64::from(r.0.segment_index()) < first_kept);
            while let Some((rid, p)) = it.peek() {
                if k < sess.records.len() && sess.records[k].0 == *rid {
                    if sess.records[k].1 != *p {
                        self.fail(format!(
                            "session {i} record {k} at {rid} came back with other bytes"
                        ));
                    }
                    k += 1;
                    it.next();
                } else {
                    break;
                }
            }
            if k > 0 && k < sess.records.len() && sess.batch_end[k - 1] > k {
                self.fail(format!(
                    "session {i}: a torn batch came back: records up to {k} ({}) of a batch \
                     ending at record {}",
                    sess.records[k - 1].0,
                    sess.batch_end[k - 1]
                ));
            }
            if k < sess.acked {
                self.fail(format!(
                    "session {i}: record {k} ({}) was acknowledged durable but is lost ({} of {} acked came back)",
                    sess.records[k].0, k, sess.acked
                ));
            }
            if sess.closed && k < sess.records.len() {
                self.fail(format!(
                    "session {i} was closed cleanly but only {k} of {} came back",
                    sess.records.len()
                ));
            }
        }
        if let Some((rid, _)) = it.next() {
            self.fail(format!(
                "record {rid} came back but was never appended in that order"
            ));
        }
    }

    /// The object of a segment only the archive holds, found by its stub and checked
    /// against it (size and SHA-256).
    fn archived_image(&mut self, s: &aof2_shards::log::SealedSegment) -> Vec<u8> {
        let id = s.header.segment_id;
        let stub_path = self.paths.stub(id);
        let stub = self
            .fs
            .read_file(&stub_path)
            .map_err(|e| e.to_string())
            .and_then(|b| Stub::decode(&b))
            .unwrap_or_else(|e| self.fail(format!("segment {id}'s stub: {e}")));
        let store = self.store.clone().unwrap_or_else(|| {
            self.fail(format!(
                "segment {id} is archived-only in a seed with no archive"
            ))
        });
        let o = store.get(&stub.key).unwrap_or_else(|e| {
            self.fail(format!(
                "segment {id} is held only by the archive, but its object {} is not there: {e}",
                stub.key
            ))
        });
        use sha2::Digest;
        let sum: [u8; 32] = sha2::Sha256::digest(&o.data).into();
        if sum != stub.sha256 {
            self.fail(format!(
                "segment {id}'s object {} has other bytes",
                stub.key
            ));
        }
        self.archived_read += 1;
        o.data
    }

    /// One step of the archive worker (a deletion, or one step of an upload, starting
    /// one if the core has it), as the worker thread runs them, so crashes land between
    /// any two. The store fails a put now and then, or loses its answer.
    fn archive_step(&mut self, o: &mut Open) {
        let store = self.store.clone().expect("an archive seed");
        if self.rng.chance(1, 25) {
            store.fail_puts.store(1, Ordering::SeqCst);
        }
        if self.rng.chance(1, 25) {
            store.lose_put_answers.store(1, Ordering::SeqCst);
        }
        let del = o.core().next_archive_delete();
        if let Some((id, key, stub)) = del {
            let ok = store.delete(&key).is_ok()
                && match self.fs.unlink(&stub) {
                    Ok(()) => self.fs.fsync_dir(&self.paths.archive).is_ok(),
                    Err(e) => e.kind() == std::io::ErrorKind::NotFound,
                };
            self.say(|| format!("archived copy of segment {id} deleted: {ok}"));
            o.core().archive_delete_done(id, ok);
            o.shared.wake_shard();
            return;
        }
        if o.upload.is_none() {
            let job = o.core().next_upload();
            let Some(job) = job else { return };
            self.say(|| format!("upload segment {}", job.segment.header.segment_id));
            o.upload = Some(Upload::new(job));
        }
        let up = o.upload.as_mut().expect("an upload");
        let (id, key) = (up.segment(), up.key().to_string());
        let shared = o.shared.clone();
        let stop = || shared.lock_core().upload_should_stop();
        let r = up.step(&self.fs, &*store, &stop);
        match r {
            Ok(Uploaded::More) => {
                if self.early_archive_ack && up.object_stored() {
                    self.say(|| format!("segment {id}: acknowledged before its stub (control)"));
                    o.upload = None;
                    o.core().upload_done(id, &key, 0);
                    o.shared.wake_shard();
                }
                return;
            }
            Ok(Uploaded::Done { bytes }) => {
                self.say(|| format!("segment {id} archived ({bytes} bytes)"));
                self.uploaded += 1;
                o.core().upload_done(id, &key, bytes);
            }
            Ok(Uploaded::Stopped) => {
                self.say(|| format!("upload of segment {id} stopped"));
                o.upload.as_mut().unwrap().clean_up(&self.fs);
                o.core().upload_stopped(id);
            }
            Err(e) => {
                self.say(|| format!("upload of segment {id} failed: {e}"));
                o.upload.as_mut().unwrap().clean_up(&self.fs);
                o.core().upload_failed(id, e);
            }
        }
        o.upload = None;
        o.shared.wake_shard();
    }

    /// The raw image a compressed segment file holds (every chunk inflated).
    fn inflate(&self, path: &Path, file: &[u8], size: u64) -> Vec<u8> {
        let c = CompressedSegment::parse(file)
            .unwrap_or_else(|e| self.fail(format!("{}: {e}", path.display())));
        let mut img = vec![0u8; size as usize];
        img[..format::HEADER_LEN].copy_from_slice(&file[..format::HEADER_LEN]);
        for (i, ch) in c.chunks.iter().enumerate() {
            let b = c
                .inflate(i)
                .unwrap_or_else(|e| self.fail(format!("{} chunk {i}: {e}", path.display())));
            img[ch.raw_start as usize..ch.raw_start as usize + b.len()].copy_from_slice(&b);
        }
        img
    }

    /// One step of the compression worker's swap (starting one if the core wants it),
    /// as the worker thread runs them, so crashes land between any two.
    fn compress_step(&mut self, o: &mut Open) {
        if o.swap.is_none() {
            let job = o.core().next_compression();
            let Some(job) = job else { return };
            self.say(|| format!("compress segment {}", job.segment));
            o.swap = Some(Swap::new(job));
        }
        let swap = o.swap.as_mut().expect("a swap");
        let id = swap.segment();
        let shared = o.shared.clone();
        let stop = || !shared.lock_core().compression_continues();
        let r = swap.step(&self.fs, &stop);
        match r {
            Ok(Stepped::More) => return,
            Ok(Stepped::Done { disk_bytes }) => {
                let swapped = o.core().compression_done(id, disk_bytes);
                self.compressed += 1;
                o.shared.forget_map(id);
                self.say(|| format!("segment {id} compressed ({disk_bytes} bytes): {swapped:?}"));
                if swapped == Swapped::Released {
                    let t = o.swap.as_ref().unwrap().target().to_path_buf();
                    let _ = self.fs.unlink(&t);
                    let _ = self.fs.fsync_dir(&self.paths.segments);
                }
            }
            Ok(Stepped::Stopped) => {
                self.say(|| format!("compression of segment {id} stopped"));
                o.swap.as_mut().unwrap().clean_up(&self.fs);
                o.core().compression_stopped(id);
            }
            Err(e) => {
                if self.fs.faults_injected() == 0 {
                    self.fail(format!(
                        "compression failed without a fault injected: {} {}: {}",
                        e.op,
                        e.path.display(),
                        e.error
                    ));
                }
                self.say(|| format!("compression of segment {id} failed: {}", e.error));
                o.swap.as_mut().unwrap().clean_up(&self.fs);
                o.core().compression_failed(id, e.op, &e.path, &e.error);
            }
        }
        o.swap = None;
        o.shared.wake_shard();
    }

    fn pump(&mut self, o: &mut Open, max_steps: usize) {
        self.say(|| format!("pump {max_steps}"));
        for _ in 0..max_steps {
            let did_work = self.step(o);
            self.observe(o);
            if !did_work {
                break;
            }
        }
    }

    /// One turn of the shard (the same function the shard thread runs): requests,
    /// polls, chains started, and on the ring a random number of operations in flight
    /// completed in random order.
    fn step(&mut self, o: &mut Open) -> bool {
        let t = o
            .turns
            .turn(&NeverSleep)
            .unwrap_or_else(|e| self.fail(format!("the shard's turn failed: {e}")));
        if let Some(v) = o.ring().and_then(|r| r.violations().first().cloned()) {
            self.fail(format!("partial-block rule broken: {v}"));
        }
        if let Some(v) = self.fs.violations().first() {
            self.fail(format!("a mapped file was recycled: {v}"));
        }
        let committing = o.commit.is_some();
        self.advance_commit(o);
        let compressing = o.swap.is_some() || o.core().compression_wanted();
        if compressing && self.rng.chance(1, 2) {
            self.compress_step(o);
        }
        let archiving = self.store.is_some() && (o.upload.is_some() || o.core().archive_wanted());
        if archiving && self.rng.chance(1, 2) {
            self.archive_step(o);
        }
        t.busy || committing || compressing || archiving
    }

    /// A caller that waits for `upto` commits itself, as a blocking `flush_until` does
    /// (`CommitMode::Caller`): it takes the log's data-chain slot if it is free and the
    /// next data chain is a commit, and starts it on its own executor; otherwise it
    /// wakes the shard when the next chain is the shard's.
    fn caller_commit(&mut self, o: &mut Open, upto: u64) {
        if o.commit.is_some() {
            return; // this caller is committing already
        }
        o.core().request_flush(upto);
        match o.shared.take_commit() {
            Commit::Run(chain, slot) => {
                self.say(|| format!("caller commits {chain:?}"));
                let mut done = Vec::new();
                o.caller
                    .start(o.shared.key, chain, &o.shared.files, &mut done);
                o.commit = Some((slot, done));
                self.advance_commit(o);
                self.observe(o);
            }
            Commit::Shard => o.shared.wake_shard(),
            Commit::Busy | Commit::Idle => {}
        }
    }

    /// Completes some of the caller's operations in flight (on the ring model) and
    /// finishes its commit once its chain has ended.
    fn advance_commit(&mut self, o: &mut Open) {
        let Some((slot, mut done)) = o.commit.take() else {
            return;
        };
        let key = o.shared.key;
        if o.caller.has_chains(key) {
            o.caller
                .progress(0, None, false, &NeverSleep, &mut done)
                .unwrap_or_else(|e| self.fail(format!("the caller's ring failed: {e}")));
        }
        let ring = o
            .caller
            .as_any_mut()
            .downcast_mut::<RingExecutor<SimRing>>()
            .map(|r| r.ring_mut());
        if let Some(v) = ring.and_then(|r| r.violations().first().cloned()) {
            self.fail(format!("partial-block rule broken by a caller: {v}"));
        }
        if o.caller.has_chains(key) {
            o.commit = Some((slot, done));
            return;
        }
        self.say(|| "the caller's commit completed".into());
        slot.finish(done.into_iter().map(|c| (c.op, c.res)).collect());
    }

    /// Power loss: on the ring, writes in flight may or may not have reached the disk.
    fn crash(&mut self, mut o: Open) {
        if let Some(ring) = o.ring() {
            ring.crash();
        }
        let caller = o
            .caller
            .as_any_mut()
            .downcast_mut::<RingExecutor<SimRing>>()
            .map(|r| r.ring_mut());
        if let Some(ring) = caller {
            ring.crash();
        }
        // The caller's commit dies with the process (dropping its slot fails the chain
        // in a core that is about to vanish anyway).
        drop(o);
        self.fs.crash();
    }

    /// Records which appended records the engine now reports durable.
    fn observe(&mut self, o: &mut Open) {
        let core = o.core();
        let durable = core.durable_pos();
        let poison = core.poison();
        drop(core);
        if let Some(e) = poison {
            if self.fs.faults_injected() == 0 {
                self.fail(format!("log poisoned without a fault injected: {e}"));
            }
            match o.poisoned_at {
                None => {
                    self.say(|| format!("poisoned: {e}"));
                    o.poisoned_at = Some(durable);
                }
                Some(at) if durable != at => self.fail(format!(
                    "the durable position moved after the log was poisoned ({at:#x} -> {durable:#x})"
                )),
                Some(_) => {}
            }
        }
        let s = self.sessions.last_mut().unwrap();
        while s.acked < s.records.len() && s.records[s.acked].0.as_u64() < durable {
            s.acked += 1;
        }
        let mut settled = Vec::new();
        let mut pending = std::mem::take(&mut o.releases);
        {
            let core = o.core();
            let m = core.metrics();
            let s = self.sessions.last_mut().unwrap();
            (s.recycled, s.continued) = (m.segments_recycled, m.segments_continued);
            // Whatever released them (release_before or retention), segments below a
            // durable mark must never come back.
            self.released_durable = self.released_durable.max(core.first_kept());
            pending.retain(|t| match core.release_outcome(t) {
                None => true,
                Some(r) => {
                    settled.push((*t, r.map_err(|e| e.to_string())));
                    false
                }
            });
        }
        o.releases = pending;
        for (t, r) in settled {
            match r {
                Ok(n) => {
                    self.say(|| format!("release up to segment {} durable ({n})", t.first_kept));
                    self.released_durable = self.released_durable.max(t.first_kept);
                }
                Err(e) if self.fs.faults_injected() > 0 => {
                    self.say(|| format!("release up to segment {} failed: {e}", t.first_kept));
                }
                Err(e) => self.fail(format!("a release failed without a fault injected: {e}")),
            }
        }
    }

    /// `release_before` of a random record of this session: asked, then settled as the
    /// shard's turns run it (see `observe`).
    fn release(&mut self, o: &mut Open) {
        let recs = &self.sessions.last().unwrap().records;
        if recs.is_empty() {
            return;
        }
        let rid = recs[self.rng.below(recs.len() as u64) as usize].0;
        let r = o.core().request_release(rid);
        match r {
            Ok(t) => {
                self.say(|| format!("release_before {rid}: up to segment {}", t.first_kept));
                self.released_asked = self.released_asked.max(t.first_kept);
                o.releases.push(t);
                o.shared.wake_shard();
            }
            Err(AofError::Poisoned { .. }) if o.poisoned_at.is_some() => {}
            Err(e) => self.fail(format!("release_before {rid} failed: {e}")),
        }
    }

    /// A reader: maps a random sealed raw segment (through the log's shared mapping
    /// cache, with its pin, as `open_reader` does) and holds it, or drops one held.
    fn reader(&mut self, o: &mut Open) {
        if !o.readers.is_empty() && self.rng.chance(1, 2) {
            let i = self.rng.below(o.readers.len() as u64) as usize;
            let (id, _, _) = o.readers.swap_remove(i);
            self.say(|| format!("reader of segment {id} dropped"));
            return;
        }
        let found = {
            let mut core = o.core();
            let sealed = core.sealed_segments();
            if sealed.is_empty() {
                return;
            }
            let id = sealed[self.rng.below(sealed.len() as u64) as usize]
                .header
                .segment_id;
            match core.locate(id) {
                Some(Located::Sealed(s)) if !s.compressed && s.header.segment_id == id => {
                    Some((id, s.footer.data_end, core.pin(id)))
                }
                _ => None,
            }
        };
        let Some((id, data_end, pin)) = found else {
            return;
        };
        let path = self.paths.segment(id);
        let fs = self.fs.clone();
        let map = o.shared.mapping(id, data_end, &pin, || {
            fs.open(&path, OpenMode::Read)
                .and_then(|f| f.map())
                .map_err(|e| AofError::io("map", &path, e))
        });
        match map {
            Ok(m) => {
                self.say(|| format!("reader maps segment {id}"));
                o.readers.push((id, m, pin));
            }
            // Compressed (or released) since the look: as a reader would, give up.
            Err(e) => self.say(|| format!("reader of segment {id}: {e}")),
        }
    }

    fn append(&mut self, o: &mut Open) {
        let writer = self.rng.below(WRITERS);
        let si = self.sessions.len() - 1;
        let seq = self.sessions[si].records.len();
        // One append in six is an atomic batch of 2-8 records, mostly small.
        let n = if self.rng.below(6) == 0 {
            2 + self.rng.below(7) as usize
        } else {
            1
        };
        let ps: Vec<Vec<u8>> = (0..n)
            .map(|i| {
                let len = if n > 1 && self.rng.below(4) != 0 {
                    self.rng.below(300) as usize
                } else {
                    payload_len(&mut self.rng, &self.cfg, self.buf_size)
                };
                payload(len, &mut self.rng, si, seq + i, writer)
            })
            .collect();
        let refs: Vec<&[u8]> = ps.iter().map(Vec::as_slice).collect();
        // One single append in eight is written in place (`append_with`); one in forty
        // is first tried with a `fill` that panics, which must append nothing.
        let in_place = n == 1 && self.rng.below(8) == 0;
        if n == 1 && self.rng.below(40) == 0 {
            // Half of them larger than two buffers: the room reserved for them spans
            // buffers that must then stay unwritten.
            let len = if self.rng.chance(1, 2) {
                ps[0].len()
            } else {
                (2 * self.buf_size + self.rng.below(self.buf_size as u64) as usize)
                    .min(self.cfg.max_record_bytes())
            };
            // As `Aof::append_with` does: held back, it waits (pumps) and tries again.
            for attempt in 0..1000 {
                let r = o
                    .core()
                    .append_with(len, &mut |b| std::panic::panic_any(FillFails(b.len())));
                match r {
                    Ok(Ok(a)) => self.fail(format!("a panicking fill appended {}", a.rid)),
                    Ok(Err(p)) => {
                        if p.downcast_ref::<FillFails>().map(|f| f.0) != Some(len) {
                            self.fail("another panic than the fill's came back".into());
                        }
                        self.say(|| {
                            format!("append_with of {len} bytes panicked: nothing appended")
                        });
                        break;
                    }
                    Err(AofError::WouldBlock(kind)) => {
                        if attempt == 999 {
                            self.fail(format!(
                                "append_with blocked ({kind:?}) and made no progress in 1000 pumps"
                            ));
                        }
                        o.core().request_flush_all();
                        o.shared.wake_shard();
                        let n = 1 + self.rng.below(3) as usize;
                        self.pump(o, n);
                    }
                    Err(_) => break, // refused (too large, poisoned, a failed preparation)
                }
            }
        }
        // A blocked append is retried until it goes through: waiting must make progress.
        for attempt in 0.. {
            let r = if n > 1 {
                o.core().append_batch(&refs)
            } else if in_place {
                let p = &ps[0];
                match o.core().append_with(p.len(), &mut |b| b.copy_from_slice(p)) {
                    Ok(Ok(a)) => Ok(a),
                    Ok(Err(_)) => self.fail("a fill that copies panicked".into()),
                    Err(e) => Err(e),
                }
            } else {
                o.core().append(&ps[0])
            };
            match r {
                Ok(a) => {
                    if a.wake_shard {
                        o.shared.wake_shard();
                    }
                    // A batch's records lie back to back before its last one.
                    let mut off = a.rid.segment_offset();
                    let mut rids = vec![a.rid; n];
                    for i in (0..n - 1).rev() {
                        off -= format::frame_size(ps[i].len()) as u32;
                        rids[i] = RecordId::from_parts(a.rid.segment_index(), off);
                    }
                    if let Some(m) = self.max_rid {
                        if rids[0] <= m {
                            self.fail(format!("id {} handed out again (max so far {m})", rids[0]));
                        }
                    }
                    // After a clean close, segment ids stay dense (unless the session
                    // closed began after a crash, which may have moved blank files past
                    // ids it then continued below).
                    let prev = self
                        .sessions
                        .len()
                        .checked_sub(2)
                        .map(|i| &self.sessions[i]);
                    let before_prev_clean = self
                        .sessions
                        .len()
                        .checked_sub(3)
                        .is_none_or(|i| self.sessions[i].closed);
                    let faults_in_prev = prev
                        .is_some_and(|p| p.faults_at_start != self.sessions[si].faults_at_start);
                    if let (Some(p), true) = (prev, self.sessions[si].records.is_empty()) {
                        if let (true, true, false, Some(last)) = (
                            p.closed,
                            before_prev_clean,
                            faults_in_prev,
                            p.records.last(),
                        ) {
                            // The last segment continued, or the next one.
                            let last = last.0.segment_index();
                            if a.rid.segment_index() != last && a.rid.segment_index() != last + 1 {
                                self.fail(format!(
                                    "after a clean close the next record is in segment {last} \
                                     (continued) or {}, got {}",
                                    last + 1,
                                    a.rid
                                ));
                            }
                        }
                    }
                    self.max_rid = Some(a.rid);
                    self.say(|| {
                        let lens: Vec<usize> = ps.iter().map(Vec::len).collect();
                        format!("append w{writer} {lens:?} bytes -> {rids:?}")
                    });
                    let sess = &mut self.sessions[si];
                    let end = sess.records.len() + n;
                    for (rid, p) in rids.into_iter().zip(ps) {
                        sess.records.push((rid, p));
                        sess.batch_end.push(end);
                    }
                    return;
                }
                Err(AofError::WouldBlock(kind)) => {
                    if attempt == 1000 {
                        self.fail(format!(
                            "append blocked ({kind:?}) and made no progress in 1000 pumps"
                        ));
                    }
                    // As a handle does: admission waits for a sync, a rollover for the
                    // next file; either way the shard is woken.
                    o.core().request_flush_all();
                    o.shared.wake_shard();
                    // Few steps at a time, so a retry can land between any completion
                    // and the next poll (as another thread's would).
                    let n = 1 + self.rng.below(3) as usize;
                    self.pump(o, n);
                }
                Err(AofError::RecordTooLarge { .. } | AofError::BadBatch { .. }) => return,
                // A failed segment preparation fails the appends that need the segment.
                Err(e @ AofError::Io { .. }) if self.fs.faults_injected() > 0 => {
                    let msg = e.to_string();
                    // A preparation's error names the segment file; Size retention's
                    // (a release step failing holds new segments back) the mark or file.
                    if !msg.contains("/sim/log/segments/") && !msg.contains("/sim/log/RELEASED") {
                        self.fail(format!("an append's error does not name the file: {msg}"));
                    }
                    self.say(|| format!("append refused: {msg}"));
                    return;
                }
                Err(AofError::Poisoned { .. }) if o.poisoned_at.is_some() => return,
                Err(e) => self.fail(format!("append failed: {e}")),
            }
        }
    }

    /// Once the faults stop, every queued removal finishes (each retried after its
    /// pause, however often it failed, whatever readers map), with the readers that
    /// still hold their mappings.
    fn removals_finish(&mut self, o: &mut Open) {
        if o.poisoned_at.is_some() {
            return;
        }
        self.fs.set_faults(Faults::default());
        for _ in 0..100 {
            if o.core().removals_pending() == 0 {
                return;
            }
            self.time.fetch_add(60_000_000_000, Ordering::Relaxed);
            o.shared.wake_shard();
            self.pump(o, 50);
        }
        let n = o.core().removals_pending();
        self.fail(format!("{n} queued removal(s) never finished"));
    }

    /// A poisoned log refuses appends, naming its directory; it is then dropped (or the
    /// machine crashes) and reopened, which re-verifies from disk.
    fn after_poison(&mut self, o: Open) -> Open {
        let e = o.core().append(b"after the poison").unwrap_err();
        if !matches!(e, AofError::Poisoned { .. }) || !e.to_string().contains("/sim/log") {
            self.fail(format!("a poisoned log answered an append with: {e}"));
        }
        if self.rng.chance(1, 2) {
            self.say(|| "drop the poisoned log".into());
            drop(o);
        } else {
            self.say(|| "crash with a poisoned log".into());
            self.crash(o);
        }
        self.open()
    }

    fn run(&mut self, steps: usize) {
        self.fs.mkdir(Path::new("/sim"), 0o700).unwrap();
        self.fs.fsync_dir(Path::new("/")).unwrap();
        if let Some(f) = &self.faults {
            self.say(|| format!("faults: {f:?}"));
            self.fs.set_faults(f.clone());
        }
        let mut o = self.open();
        for _ in 0..steps {
            if o.poisoned_at.is_some() {
                o = self.after_poison(o);
            }
            match self.rng.below(100) {
                0..=49 => self.append(&mut o),
                50..=59 => {
                    let recs = &self.sessions.last().unwrap().records;
                    if !recs.is_empty() {
                        let rid = recs[self.rng.below(recs.len() as u64) as usize].0;
                        if self.rng.chance(1, 2) {
                            self.say(|| format!("flush_until {rid} (the shard commits)"));
                            o.request_flush(rid.as_u64() + 1);
                        } else {
                            self.say(|| format!("flush_until {rid} (the caller commits)"));
                            self.caller_commit(&mut o, rid.as_u64() + 1);
                        }
                    }
                }
                60..=84 => {
                    let n = 1 + self.rng.below(6) as usize;
                    self.pump(&mut o, n);
                }
                85..=88 => {
                    // Now and then a pause longer than a segment's growth window (10 s):
                    // the log stays slow, in small segments, however large its records.
                    let ms = if self.rng.below(8) == 0 {
                        11_000
                    } else {
                        self.rng.below(8)
                    };
                    self.time.fetch_add(ms * 1_000_000, Ordering::Relaxed);
                }
                89 => self.release(&mut o),
                90 => self.reader(&mut o),
                91..=92 => {
                    let r = o.core().seal_active();
                    if r.as_ref().is_ok_and(|x| x.1) {
                        o.shared.wake_shard();
                    }
                    self.say(|| format!("seal_active -> {:?}", r.as_ref().map(|x| x.0)));
                }
                93..=96 => {
                    // Power loss: the core and its open files vanish without a flush.
                    self.say(|| "crash".into());
                    self.crash(o);
                    o = self.open();
                }
                _ => {
                    self.say(|| "clean close".into());
                    // As `Aof::close` does: a request to the shard, answered once the
                    // log is drained and retired (its lock released just before).
                    let (ack, acked) = std::sync::mpsc::channel();
                    o.shard.close(CloseRequest {
                        key: o.shared.key,
                        ack,
                        lock: o.lock.take(),
                    });
                    let mut answered = false;
                    for _ in 0..10_000 {
                        self.step(&mut o);
                        self.observe(&mut o);
                        if acked.try_recv().is_ok() {
                            answered = true;
                            break;
                        }
                    }
                    if !answered || o.turns.log_count() != 0 {
                        self.fail("close did not drain".into());
                    }
                    if !o.core().is_drained() {
                        self.fail("a closed log was retired before it was drained".into());
                    }
                    if !o.shared.signal.ended() {
                        self.fail("a closed log's followers were not told it ended".into());
                    }
                    // A close that ended poisoned promises nothing past the failure.
                    self.sessions.last_mut().unwrap().closed = o.poisoned_at.is_none();
                    drop(o);
                    o = self.open();
                }
            }
        }
        self.removals_finish(&mut o);
        self.crash(o);
        self.fs.set_faults(Faults::default());
        let opened = recovery::open_log(&self.fs, &self.paths, &self.clock(), 0o600)
            .unwrap_or_else(|e| self.fail(format!("final reopen failed: {e}")));
        self.verify(&opened.recovered, false);
        // The segment directory holds only what the engine names.
        for name in self.fs.list_dir(&self.paths.segments).unwrap() {
            let p = self.paths.segments.join(&name);
            let f = self.fs.open(&p, OpenMode::Read).unwrap();
            let zst = name.to_string_lossy().ends_with(".zst");
            assert!(
                zst || f.size().unwrap().is_multiple_of(4096),
                "seed {}: {} is not block-sized",
                self.seed,
                p.display()
            );
        }
    }
}

struct TraceLogger;
impl log::Log for TraceLogger {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, r: &log::Record) {
        println!("  engine {}: {}", r.level(), r.args());
    }
    fn flush(&self) {}
}

/// The models `AOF2_BACKEND` selects (both when unset or `auto`).
fn models() -> Vec<Model> {
    match std::env::var("AOF2_BACKEND").as_deref() {
        Ok("sync") => vec![Model::Blocking],
        Ok("uring") | Ok("io_uring") => vec![Model::Ring],
        _ => vec![Model::Blocking, Model::Ring],
    }
}

#[test]
fn acknowledged_records_survive_simulated_crashes() {
    let models = models();
    if let Ok(s) = std::env::var("AOF2_SIM_SEED") {
        let _ = log::set_logger(&TraceLogger);
        log::set_max_level(log::LevelFilter::Trace);
        let seed: u64 = s.parse().expect("AOF2_SIM_SEED is a number");
        for m in models {
            World::new(seed, m, true).run(400);
        }
        return;
    }
    let seeds: u64 = std::env::var("AOF2_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3000);
    let first: u64 = std::env::var("AOF2_SIM_SEED_START")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let start = std::time::Instant::now();
    let mut acked = 0usize;
    let mut crashes = 0usize;
    let mut recycled = 0u64;
    let mut continued = 0u64;
    let (mut compressed, mut compressed_read) = (0u64, 0u64);
    let (mut uploaded, mut archived_read) = (0u64, 0u64);
    let mut slowest = (std::time::Duration::ZERO, 0);
    for seed in first..first + seeds {
        // Every seed on one model, alternating (both get a different half).
        let model = models[seed as usize % models.len()];
        let t = std::time::Instant::now();
        let mut w = World::new(seed, model, false);
        w.run(400);
        slowest = slowest.max((t.elapsed(), seed));
        acked += w.sessions.iter().map(|s| s.acked).sum::<usize>();
        recycled += w.sessions.iter().map(|s| s.recycled).sum::<u64>();
        continued += w.sessions.iter().map(|s| s.continued).sum::<u64>();
        compressed += w.compressed;
        compressed_read += w.compressed_read;
        uploaded += w.uploaded;
        archived_read += w.archived_read;
        crashes += w.sessions.len();
    }
    println!(
        "{seeds} seeds on {models:?}, {crashes} reopens, {acked} acknowledged records verified, {recycled} segments in recycled files, {continued} continued after a clean close, {compressed} segments compressed ({compressed_read} read back compressed), {uploaded} uploaded ({archived_read} read back from the archive), in {:.1?} (slowest: seed {} {:.1?})",
        start.elapsed(),
        slowest.1,
        slowest.0
    );
    assert!(acked > seeds as usize, "the workload acknowledged records");
    assert!(
        seeds < 100 || continued > 0,
        "sessions continued a segment after a clean close"
    );
    assert!(
        seeds < 100 || compressed_read > 0,
        "compressed segments were checked"
    );
    assert!(
        seeds < 100 || archived_read > 0,
        "segments only the archive holds were checked"
    );
}

/// A failed `fdatasync` poisons the log: nothing is reported durable after it, appends
/// are refused naming the cause, and reopening (which re-verifies from disk) brings
/// back every record acknowledged before the failure.
#[test]
fn a_failed_sync_poisons_the_log_and_a_reopen_recovers() {
    for m in models() {
        failed_sync_poisons(m);
    }
}

fn failed_sync_poisons(model: Model) {
    let faults = Faults {
        fail_sync_after: Some(0),
        ..Faults::default()
    };
    a_fault_poisons_and_a_reopen_recovers(7, model, faults, "Input/output error");
}

/// 20 appends acknowledged, then `faults`, one more record and a flush: the log must be
/// poisoned with an error naming the log and `cause`, report nothing more durable,
/// refuse appends, and come back with every acknowledged record after a crash.
fn a_fault_poisons_and_a_reopen_recovers(seed: u64, model: Model, faults: Faults, cause: &str) {
    let mut w = World::new(seed, model, false);
    w.fs.mkdir(Path::new("/sim"), 0o700).unwrap();
    w.fs.fsync_dir(Path::new("/")).unwrap();
    let mut o = w.open();
    for _ in 0..20 {
        w.append(&mut o);
    }
    o.request_flush_all();
    w.pump(&mut o, 1000);
    // (A record drawn too large for a segment was refused, not appended.)
    let s = w.sessions.last().unwrap();
    assert!(s.records.len() >= 15);
    assert_eq!(
        s.acked,
        s.records.len(),
        "the first flush covered every record"
    );

    w.fs.set_faults(faults);
    let rid = o.core().append(b"after the fault").unwrap().rid;
    o.shared.wake_shard();
    // Appended, never acknowledged: a crash may keep it or not.
    let s = w.sessions.last_mut().unwrap();
    s.records.push((rid, b"after the fault".to_vec()));
    s.batch_end.push(s.records.len());
    o.request_flush_all();
    for _ in 0..1000 {
        if !w.step(&mut o) {
            break;
        }
    }
    let core = o.core();
    let poison = core.poison().expect("the failure poisoned the log");
    let msg = poison.to_string();
    assert!(msg.contains("/sim/log") && msg.contains(cause), "{msg}");
    assert!(
        rid.as_u64() >= core.durable_pos(),
        "never reported durable after the failure"
    );
    assert!(matches!(core.check_open(), Err(AofError::Poisoned { .. })));
    drop(core);
    assert!(matches!(
        o.core().append(b"x"),
        Err(AofError::Poisoned { .. })
    ));

    // Reopening verifies from disk; `open` checks every acknowledged record came back.
    w.fs.set_faults(Faults::default());
    w.crash(o);
    w.open();
}

/// A full disk when a data write is issued (ENOSPC): the same contract as any failed
/// write. The log is poisoned, the error names the cause, nothing after it is reported
/// durable, and a reopen brings back every record acknowledged before.
#[test]
fn a_data_write_hitting_a_full_disk_poisons_the_log_and_a_reopen_recovers() {
    for m in models() {
        let faults = Faults {
            fail_write_after: Some(0),
            write_errno: libc::ENOSPC,
            ..Faults::default()
        };
        a_fault_poisons_and_a_reopen_recovers(12, m, faults, "No space left on device");
    }
}

/// Negative control for the FUA model of `RWF_DSYNC`: if the ring fused a write and its
/// sync into a file that holds other unsynced writes (full buffers written behind), the
/// fused write would make only its own bytes durable, and a crash could lose records
/// acknowledged on its strength. The checker must catch that within a few hundred seeds.
#[test]
fn fusing_a_sync_into_a_file_with_unsynced_writes_is_caught() {
    // Both executors fuse: the ring into one RWF_DSYNC submission, the blocking one
    // into one pwritev2(RWF_DSYNC) call.
    for model in [Model::Ring, Model::Blocking] {
        let caught = (0..600u64).find(|&seed| {
            std::panic::catch_unwind(|| {
                let mut w = World::new(seed, model, false);
                w.fuse_into_dirty = true;
                w.run(400);
            })
            .is_err()
        });
        println!("the unsafe fusion ({model:?}) was caught at seed {caught:?}");
        assert!(
            caught.is_some(),
            "the crash checker did not notice {model:?} syncs that leave earlier writes undurable"
        );
    }
}

/// Negative control for the simulated disk's rule that a mapped file is never opened
/// for recycling: if the log decided spares without looking at readers' pins, a
/// released file a reader maps would be recycled under it. The checker must catch
/// that within a few hundred seeds.
#[test]
fn recycling_a_mapped_file_is_caught() {
    let caught = (0..600u64).find(|&seed| {
        std::panic::catch_unwind(|| {
            let mut w = World::new(seed, Model::Blocking, false);
            w.ignore_pins = true;
            w.run(400);
        })
        .is_err()
    });
    println!("recycling a mapped file was caught at seed {caught:?}");
    assert!(
        caught.is_some(),
        "the crash checker did not notice mapped files being recycled"
    );
}

#[test]
fn dropping_a_local_copy_before_its_stub_is_durable_is_caught() {
    // Archive seeds only: (seed / 3) % 4 == 1.
    let caught = (0..2400u64).filter(|s| (s / 3) % 4 == 1).find(|&seed| {
        std::panic::catch_unwind(|| {
            let mut w = World::new(seed, Model::Blocking, false);
            w.early_archive_ack = true;
            w.run(400);
        })
        .is_err()
    });
    println!("an early archive acknowledgement was caught at seed {caught:?}");
    assert!(
        caught.is_some(),
        "the crash checker did not notice local copies dropped before their stubs were durable"
    );
}
