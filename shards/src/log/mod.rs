//! The log core: a sans-I/O state machine per log.
//!
//! Inputs: appends and flush requests (from any thread, under the log lock), timer
//! ticks and I/O completions (from the shard). Outputs: chains of I/O operations
//! ([`ops::Chain`]) and the durable position, which releases waiters. All policy lives
//! here: buffer hand-off, watermark / interval / explicit flush, back-pressure, segment
//! roll and seal, segment preparation.
//!
//! Ordering rules this module enforces (see docs/guarantees.md, "Durability contract"):
//! - A segment's header is written and synced before any of its frames is written, so a
//!   file with a blank header never holds frames.
//! - A segment's frames are synced, then its footer is written and synced (sealed),
//!   before anything of the next segment is written; waiters are released only after
//!   the `fdatasync` covering their record completes.
//! - One data chain is in flight per log, so two writes to the same block never are.
//!   The partly filled last block is written from a bounce copy and rewritten later
//!   with a byte-identical prefix.
//! - A failed write or sync poisons the log: nothing is reported durable afterwards.
//!
//! Files, one job each: this one holds the core's state, flush requests and closing;
//! `append` the appends (records, batches, in-place) and making room for them;
//! `segment` the segment and its buffers (the unsafe buffer contract); `data` the data
//! chain (header, write-behind, write + sync, seal); `prepare`
//! segment preparation; `completion` what finished chains achieve and what failures
//! do; `views` what readers see; [`ops`] the operations executors run.

mod completion;
use completion::{Effect, InFlight};
mod append;
pub use append::FillPanic;
mod archive;
pub use archive::{object_key, ArchiveGauges, UploadJob, UPLOAD_RETRY_MAX_NS};
mod compression;
pub use compression::{CompressJob, Swapped, COMPRESS_RETRY_NS};
mod continuation;
mod data;
pub use data::CommitTurn;
pub mod ops;
mod prepare;
mod release;
pub use release::{ReleaseTicket, SegmentPin};
mod removal;
mod retention;
mod segment;
mod sizing;
mod test_hooks;
mod views;
mod zero_pace;

use crate::buffer::{AlignedBuf, BufferArena};
use crate::clock::Clock;
use crate::config::{AofConfig, RecordId};
use crate::error::{AofError, AofResult};
use crate::format::{self, SegmentHeader, HEADER_LEN};
use crate::layout::LogPaths;
use crate::metrics::FlushMetricsSnapshot;
use ops::{Chain, Op, OpKind};
use prepare::{Prep, PrepFailure};
use release::Releases;
pub use segment::BUF_SIZE;
use segment::{take_buffer, Seg};
use std::collections::VecDeque;
use std::sync::Arc;
pub use views::{Located, SealedSegment, SegmentInfo};

/// Packs a (segment, offset) position so positions and `RecordId`s compare as integers.
pub const fn pos(seg: u64, off: u64) -> u64 {
    (seg << 32) | off
}

/// State handed over by recovery.
#[derive(Debug, Default, Clone)]
pub struct Recovered {
    /// Id the next new segment gets.
    pub next_segment: u64,
    /// Records in all sealed segments.
    pub records_total: u64,
    /// Sealed segments in id order.
    pub sealed: Vec<SealedSegment>,
    /// Prepared (blank, zero-written, synced) files adopted, with their sizes; their ids
    /// run consecutively from `next_segment`.
    pub prepared: Vec<(u64, u64)>,
    /// Latest record timestamp seen, so timestamps never go backwards across a reopen.
    pub last_timestamp_ns: u64,
    /// The release mark: segments below its `first_segment` were released.
    pub mark: crate::release_mark::ReleaseMark,
    /// Spare files found (released files kept for reuse): (old id, size).
    pub spares: Vec<(u64, u64)>,
    /// Directories whose entries (of directories this open created) are not synced
    /// yet: synced with the first segment file's directory, before any record in it is
    /// acknowledged.
    pub unsynced_dirs: Vec<std::path::PathBuf>,
    /// The last sealed segment, if a clean close sealed it: this session may continue
    /// it (see `continuation.rs`).
    pub continuable: Option<Continuable>,
    /// Segments the archive holds (their stubs), with their objects' sizes.
    pub archived: Vec<(u64, u64)>,
    /// Archived copies of released segments still to delete: (segment, key).
    pub archive_deletes: Vec<(u64, String)>,
}

/// A segment a clean close sealed last, which the next session may continue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Continuable {
    /// Its id (the last of `Recovered::sealed`).
    pub segment: u64,
    /// Its partly filled last block's bytes, `[block_floor(data_end), data_end)`: the
    /// first write of the continued segment rewrites that block with them in front.
    pub tail: Vec<u8>,
}

/// What the shard should do after a completion.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// The durable position moved, or the log was poisoned: wake waiters.
    pub wake_waiters: bool,
}

/// A successful append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The record's id.
    pub rid: RecordId,
    /// The shard has new work (a full buffer, a flush trigger, a roll, a timer to arm).
    pub wake_shard: bool,
}

/// The state machine of one log.
pub struct LogCore {
    cfg: AofConfig,
    paths: LogPaths,
    clock: Clock,
    nonce: u64,
    max_record: usize,
    segs: VecDeque<Seg>,
    next_segment: u64,
    records_total: u64,
    last_ts: u64,
    total_appended: u64,
    total_durable: u64,
    flush_target: u64,
    watermark_mark: u64,
    timer_armed: bool,
    deadline: Option<u64>,
    durable: u64,
    sealed: Vec<SealedSegment>,
    prepared: VecDeque<(u64, u64)>,
    adopt: VecDeque<(u64, u64)>,
    /// Prepared (or adopted) files that may hold stale bytes past their header: their
    /// segments' headers say so (the recycled flag).
    recycled: std::collections::BTreeSet<u64>,
    /// (id, size) of the segment a blocked append waits for.
    want: Option<(u64, u64)>,
    prep: Option<Prep>,
    prep_failure: Option<PrepFailure>,
    /// A failed preparation's file to close and remove: (segment, temp path).
    cleanup: Option<(u64, Vec<std::path::PathBuf>)>,
    data_io: Option<InFlight>,
    prep_io: Option<InFlight>,
    /// The release chain in flight (the mark, or a released file's removal).
    house_io: Option<InFlight>,
    rel: Releases,
    comp: compression::Compressions,
    arch: archive::Archive,
    next_op: u64,
    pool: Vec<AlignedBuf>,
    /// The shard's registered memory, if any: buffers and blocks come from it first.
    arena: Option<Arc<BufferArena>>,
    /// Size of each log buffer ([`BUF_SIZE`] unless a test shrinks it).
    buf_size: usize,
    /// Size of the next segment files (grows toward the target as segments fill fast).
    seg_size: u64,
    /// A segment filled up in this session: files are prepared ahead at once.
    filled_once: bool,
    /// Armed when the log turned quiet: (records then, when to give buffers back).
    idle_at: Option<(u64, u64)>,
    /// See [`Recovered::unsynced_dirs`].
    unsynced_dirs: Vec<std::path::PathBuf>,
    poisoned: Option<AofError>,
    closing: bool,
    /// Closing, and the unused prepared files were renamed `.ready` (durably).
    marked_ready: bool,
    metrics: FlushMetricsSnapshot,
    /// Test hook: the next [`LogCore::check_injected_panic`] panics.
    inject_panic: bool,
    /// The last segment, sealed by a clean close, while this session may continue it.
    cont: Option<continuation::Cont>,
    /// How fast the next file is zero-written while the log commits.
    zero_pace: zero_pace::ZeroPace,
    /// Latency and batching histograms.
    hist: crate::log_histograms::HistogramState,
    /// The segment the last `reserve` opened, until its record is in.
    just_opened: Option<append::JustOpened>,
}

impl Drop for LogCore {
    /// A closed log's buffers go to its shard's spares, for the next new log.
    fn drop(&mut self) {
        let Some(arena) = self.arena.take() else {
            return;
        };
        for b in self.pool.drain(..) {
            arena.keep(b);
        }
        for s in &mut self.segs {
            for (_, b) in s.bufs.drain(..) {
                if let Ok(b) = Arc::try_unwrap(b) {
                    arena.keep(b);
                }
            }
        }
    }
}

impl LogCore {
    /// A core continuing from recovered state. `cfg` must be normalized.
    pub fn new(
        cfg: AofConfig,
        paths: LogPaths,
        clock: Clock,
        nonce: u64,
        rec: Recovered,
    ) -> LogCore {
        let max_record = cfg.max_record_bytes();
        let mut core = LogCore {
            max_record,
            paths,
            clock,
            nonce,
            segs: VecDeque::new(),
            next_segment: rec.next_segment,
            records_total: rec.records_total,
            last_ts: rec.last_timestamp_ns,
            total_appended: 0,
            total_durable: 0,
            flush_target: 0,
            watermark_mark: 0,
            timer_armed: false,
            deadline: None,
            durable: pos(rec.next_segment, HEADER_LEN as u64),
            sealed: rec.sealed,
            prepared: VecDeque::new(),
            // A file recovery found prepared may be a recycled one: flag it.
            recycled: rec.prepared.iter().map(|p| p.0).collect(),
            adopt: rec.prepared.into(),
            want: None,
            prep: None,
            prep_failure: None,
            cleanup: None,
            data_io: None,
            prep_io: None,
            house_io: None,
            rel: Releases {
                first_kept: rec.mark.first_segment,
                first_record_index: rec.mark.first_record_index,
                want: rec.mark.first_segment,
                spares: rec.spares,
                timed: matches!(cfg.retention, crate::config::RetentionPolicy::Time { .. }),
                ..Releases::default()
            },
            comp: compression::Compressions::default(),
            arch: archive::Archive {
                object_bytes: rec.archived.into_iter().collect(),
                deletes: rec.archive_deletes.into(),
                ..archive::Archive::default()
            },
            next_op: 1,
            pool: Vec::new(),
            arena: None,
            buf_size: BUF_SIZE,
            seg_size: cfg.segment_min_bytes,
            filled_once: false,
            idle_at: None,
            unsynced_dirs: rec.unsynced_dirs,
            poisoned: None,
            closing: false,
            marked_ready: false,
            metrics: FlushMetricsSnapshot::default(),
            inject_panic: false,
            cont: None,
            zero_pace: zero_pace::ZeroPace::default(),
            hist: crate::log_histograms::HistogramState::starting_at(rec.records_total),
            just_opened: None,
            cfg,
        };
        for s in core.sealed.clone() {
            core.retain_sealed(&s, retention::Newest::Wall(s.footer.sealed_at_ns));
        }
        if let Some(c) = rec.continuable {
            core.offer_continuation(c);
        }
        core
    }

    /// Starts segment `next_segment` in a prepared file of `file_size` bytes.
    fn open_segment(&mut self, file_size: u64) {
        let id = self.next_segment;
        // A record id holds the segment index in 32 bits.
        assert!(
            id <= u64::from(u32::MAX),
            "segment id {id} does not fit a RecordId"
        );
        self.next_segment += 1;
        let header = SegmentHeader {
            version: crate::format::SEGMENT_VERSION,
            segment_id: id,
            generation: generation(self.nonce, id),
            base_record_index: self.records_total,
            created_at_ns: self.clock.realtime_ns(),
            file_size,
            recycled: self.recycled.remove(&id),
        };
        let (header_bytes, seed) = header.encode();
        let buf_size = self.buffer_size_for(file_size);
        let s = Seg {
            id,
            header,
            header_bytes,
            seed,
            capacity: format::data_capacity(file_size),
            buf_size,
            bufs: VecDeque::new(),
            bufs_end: 0,
            appended_end: HEADER_LEN as u64,
            last_crc: seed,
            record_count: 0,
            last_record_offset: format::NO_RECORD,
            newest_ts: 0,
            newest_mono: 0,
            opened_mono: self.clock.monotonic_ns(),
            parked_tail: None,
            rolled: false,
            rolled_by_close: false,
            header_durable: false,
            written_end: 0,
            durable_end: HEADER_LEN as u64,
        };
        let buf = take_buffer(
            &mut self.pool,
            self.arena.as_ref(),
            s.buf_size,
            &mut self.metrics.buffers_allocated,
        );
        self.segs.push_back(s);
        let s = self.segs.back_mut().expect("just pushed");
        s.bufs.push_back((0, Arc::new(buf)));
        s.bufs_end = s.buf_size as u64;
        // The header is part of block 0, which later writes of the first frames cover.
        let hb = s.header_bytes;
        s.copy_in(0, &hb);
    }

    /// Asks for every record with an id below `upto` (a position) to be synced.
    /// Returns true when the shard must be woken.
    pub fn request_flush(&mut self, upto: u64) -> bool {
        let upto = upto.min(self.end_pos());
        if upto <= self.durable || upto <= self.flush_target {
            return false;
        }
        self.flush_target = upto;
        self.metrics.flushes_requested += 1;
        true
    }

    /// Asks for everything appended so far to be synced.
    pub fn request_flush_all(&mut self) -> bool {
        let end = self.end_pos();
        if end <= self.durable {
            return false;
        }
        self.request_flush(end)
    }

    /// Rolls the active segment if it holds records; returns the id whose seal to wait
    /// for (`durable_pos() >= pos(id + 1, 0)`), or `None` when there is nothing to seal.
    pub fn seal_active(&mut self) -> AofResult<(Option<u64>, bool)> {
        self.check_open()?;
        match self.segs.back_mut() {
            Some(s) if !s.rolled && s.record_count > 0 => {
                s.rolled = true;
                Ok((Some(s.id), true))
            }
            Some(s) if s.rolled => Ok((Some(s.id), false)),
            _ => Ok((None, false)),
        }
    }

    /// Checks that `rid` names a record this log handed out: not past the tail.
    pub fn check_rid(&self, rid: RecordId) -> AofResult<()> {
        let p = rid.as_u64();
        let bad = |reason: String| {
            Err(AofError::RecordNotFound {
                rid: rid.to_string(),
                reason,
            })
        };
        if (rid.segment_offset() as usize) < HEADER_LEN {
            return bad(format!(
                "offset {} is inside the segment header",
                rid.segment_offset()
            ));
        }
        if p >= self.end_pos() && p >= self.durable {
            return bad(format!(
                "past the tail of {} (next append at {})",
                self.paths.root.display(),
                RecordId::from_u64(self.end_pos())
            ));
        }
        Ok(())
    }

    /// Position just past the last appended frame.
    pub fn end_pos(&self) -> u64 {
        match self.segs.back() {
            Some(s) => pos(s.id, s.appended_end),
            None => self.durable,
        }
    }

    /// Every record whose id is below this is durable.
    pub fn durable_pos(&self) -> u64 {
        self.durable
    }

    /// Bytes appended but not yet covered by a completed sync.
    pub fn unflushed_bytes(&self) -> u64 {
        self.total_appended - self.total_durable
    }

    /// `Err(Poisoned)` or `Err(Closed)` when the log takes no more appends.
    pub fn check_open(&self) -> AofResult<()> {
        if let Some(e) = &self.poisoned {
            return Err(AofError::poisoned(&self.paths.root, e));
        }
        if self.closing {
            return Err(AofError::Closed {
                path: self.paths.root.clone(),
            });
        }
        Ok(())
    }

    /// The poison, if an I/O operation failed.
    pub fn poison(&self) -> Option<AofError> {
        self.poisoned
            .as_ref()
            .map(|e| AofError::poisoned(&self.paths.root, e))
    }

    /// Stops taking appends; the shard flushes what was appended and seals the active
    /// segment, so the next open reads its footer instead of scanning it.
    pub fn begin_close(&mut self) {
        self.closing = true;
        if let Some(s) = self.segs.back_mut() {
            if s.record_count > 0 && !s.rolled {
                s.rolled = true;
                s.rolled_by_close = true;
            }
        }
        self.request_flush_all();
    }

    /// True once closing and nothing is left to do (everything durable, or poisoned).
    pub fn is_drained(&self) -> bool {
        self.closing
            && self.data_io.is_none()
            && self.prep_io.is_none()
            && self.house_io.is_none()
            && !self.compression_running()
            && !self.upload_running()
            && !self.archive_delete_running()
            && (self.poisoned.is_some()
                || (self.data_drained() && self.marked_ready && !self.release_pending()))
    }

    /// Everything appended is durable and every roll is sealed.
    fn data_drained(&self) -> bool {
        self.durable >= self.end_pos() && !self.segs.iter().any(|s| s.rolled)
    }

    /// The counters, with the current backlog (`backpressure_waits` is the handle's).
    pub fn metrics(&self) -> FlushMetricsSnapshot {
        let (segs, bytes) = self.compression_backlog();
        let a = self.archive_gauges();
        let age = a.oldest_unarchived_ns.map_or(0, |t| {
            self.clock.realtime_ns().saturating_sub(t) / 1_000_000_000
        });
        FlushMetricsSnapshot {
            backlog_bytes: self.unflushed_bytes(),
            removals_failing: self.removals_failing(),
            spare_bytes: self.spare_bytes(),
            compression_backlog_segments: segs,
            compression_backlog_bytes: bytes,
            archive_backlog_segments: a.backlog_segments,
            archive_backlog_bytes: a.backlog_bytes,
            archive_held_over_bound_bytes: a.held_over_bound_bytes,
            archive_oldest_unarchived_age_s: age,
            ..self.metrics
        }
    }

    /// The (normalized) configuration.
    pub fn config(&self) -> &AofConfig {
        &self.cfg
    }

    /// The deadline of the interval timer, if armed (monotonic ns).
    pub fn deadline(&self) -> Option<u64> {
        if self.poisoned.is_some() {
            return None;
        }
        [
            self.deadline,
            self.release_deadline(),
            self.retention_deadline(),
            self.idle_deadline(),
            self.zero_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    // ------------------------------------------------------------------ shard side

    /// The next chains of operations to run: at most one data chain and one
    /// preparation chain. `now` is monotonic ns, for the interval timer.
    pub fn poll(&mut self, now: u64) -> Vec<Chain> {
        let mut out = Vec::new();
        if self.poisoned.is_some() {
            return out;
        }
        self.tick(now);
        self.apply_retention(now);
        if let Some(c) = self.poll_prep() {
            out.push(c);
        }
        if let Some(c) = self.poll_data() {
            out.push(c);
        }
        if let Some(c) = self.poll_house(now) {
            out.push(c);
        }
        self.poll_idle(now);
        out
    }

    fn tick(&mut self, now: u64) {
        if !self.timer_armed {
            return;
        }
        match self.deadline {
            None => self.deadline = Some(now + self.cfg.flush.flush_interval_ms * 1_000_000),
            Some(d) if d <= now => {
                self.deadline = None;
                self.timer_armed = false;
                if self.request_flush_all() {
                    self.metrics.flushes_interval += 1;
                }
            }
            Some(_) => {}
        }
    }

    fn op(&mut self, kind: OpKind) -> Op {
        let id = self.next_op;
        self.next_op += 1;
        Op { id, kind }
    }

    fn chain(&mut self, kinds: Vec<OpKind>, effect: Effect, prep: bool) -> Chain {
        let ops: Vec<Op> = kinds.into_iter().map(|k| self.op(k)).collect();
        let f = InFlight {
            ids: ops.iter().map(|o| o.id).collect(),
            done: 0,
            failed: None,
            effect,
        };
        if prep {
            self.prep_io = Some(f);
        } else {
            self.data_io = Some(f);
        }
        Chain { ops }
    }

    /// Takes buffers and blocks from `arena` (a shard's registered memory) from now on.
    pub fn set_arena(&mut self, arena: Arc<BufferArena>) {
        self.arena = Some(arena);
    }
}

/// A per-segment generation, random per open of the log.
fn generation(nonce: u64, id: u64) -> u32 {
    let mut x = nonce ^ id.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x as u32
}

#[cfg(test)]
mod compression_tests;
#[cfg(test)]
mod release_tests;
#[cfg(test)]
mod removal_tests;
#[cfg(test)]
mod sizing_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod zero_pace_tests;
