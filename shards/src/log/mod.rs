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
//! Files, one job each: this one holds the core's state, appends, flush requests and
//! closing; `segment` the segment and its buffers (the unsafe buffer contract);
//! `data` the data chain (header, write-behind, write + sync, seal); `prepare`
//! segment preparation; `completion` what finished chains achieve and what failures
//! do; `views` what readers see; [`ops`] the operations executors run.

mod completion;
use completion::{Effect, InFlight};
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
use crate::error::{AofError, AofResult, WouldBlockKind};
use crate::format::{self, FrameKind, SegmentHeader, HEADER_LEN};
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

/// Full buffers are written behind the appenders once they hold at least this much
/// (or one buffer, if larger).
const WRITE_BEHIND_MIN: u64 = 256 * 1024;

/// A `fill` closure's panic, caught while the log's lock was held: resumed by the
/// caller once the lock is released.
pub type FillPanic = Box<dyn std::any::Any + Send + 'static>;

/// A record's payload: bytes to copy, or a closure that writes it in place.
enum Payload<'a> {
    Bytes(&'a [u8]),
    Fill(&'a mut dyn FnMut(&mut [u8])),
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

    // ------------------------------------------------------------------ append side

    /// Appends a record. `Err(WouldBlock(Admission))` when over `max_unflushed_bytes`,
    /// `Err(WouldBlock(Rollover))` when the record needs a new segment whose file is
    /// not prepared yet: the caller wakes the shard, waits for progress and retries.
    pub fn append(&mut self, payload: &[u8]) -> AofResult<Appended> {
        self.check_open()?;
        self.check_record_len(payload.len())?;
        let frame = format::frame_size(payload.len()) as u64;
        let mut wake = self.reserve(frame)?;
        let ts = self.next_timestamp();
        let rid = self.put_frame(payload.len(), 0, ts, Payload::Bytes(payload));
        wake |= self.appended(frame);
        Ok(Appended {
            rid: rid.expect("copying bytes never panics"),
            wake_shard: wake,
        })
    }

    /// Appends `records` as one atomic batch in one segment: every record but the last
    /// carries [`format::FRAME_FLAG_BATCH_MORE`], so recovery keeps all of them or none.
    /// Returns the last record's id. Errors and `WouldBlock` as [`LogCore::append`];
    /// an empty batch, or one larger than a segment of `segment_max_bytes` holds, is
    /// [`AofError::BadBatch`] and appends nothing.
    pub fn append_batch(&mut self, records: &[&[u8]]) -> AofResult<Appended> {
        self.check_open()?;
        let bad = |total: u64, reason: String| AofError::BadBatch {
            records: records.len(),
            bytes: total,
            reason,
        };
        if records.is_empty() {
            return Err(bad(0, "a batch holds at least one record".into()));
        }
        let mut total = 0u64;
        for r in records {
            self.check_record_len(r.len())?;
            total += format::frame_size(r.len()) as u64;
        }
        let room = self.max_batch_bytes();
        if total > room {
            return Err(bad(
                total,
                format!(
                    "larger than the {room} bytes of frames one segment holds \
                     (segment_max_bytes {})",
                    self.cfg.segment_max_bytes
                ),
            ));
        }
        let mut wake = self.reserve(total)?;
        let ts = self.next_timestamp();
        let flags = |i: usize| {
            if i + 1 < records.len() {
                format::FRAME_FLAG_BATCH_MORE
            } else {
                0
            }
        };
        let rid = if let Some(rid) = self.put_batch_in_place(records, total, ts) {
            Some(rid)
        } else {
            let mut rid = None;
            for (i, r) in records.iter().enumerate() {
                rid = self
                    .put_frame(r.len(), flags(i), ts, Payload::Bytes(r))
                    .ok();
            }
            rid
        };
        wake |= self.appended(total);
        Ok(Appended {
            rid: rid.expect("a batch holds a record"),
            wake_shard: wake,
        })
    }

    /// Appends a record of `len` bytes that `fill` writes in place (the slice's initial
    /// contents are unspecified). `fill` runs only once room is reserved, so a
    /// `WouldBlock` never consumes it. If `fill` panics, nothing is appended (the space
    /// is taken back) and the panic's payload is returned as the inner `Err`, for the
    /// caller to resume once it has let go of the log's lock.
    pub fn append_with(
        &mut self,
        len: usize,
        fill: &mut dyn FnMut(&mut [u8]),
    ) -> AofResult<Result<Appended, FillPanic>> {
        self.check_open()?;
        self.check_record_len(len)?;
        let frame = format::frame_size(len) as u64;
        let mut wake = self.reserve(frame)?;
        let ts = self.next_timestamp();
        let rid = match self.put_frame(len, 0, ts, Payload::Fill(fill)) {
            Ok(rid) => rid,
            // Nothing was appended. (A segment opened for it stays open, empty, and
            // takes the next record: ids stay dense.)
            Err(p) => return Ok(Err(p)),
        };
        wake |= self.appended(frame);
        Ok(Ok(Appended {
            rid,
            wake_shard: wake,
        }))
    }

    fn check_record_len(&self, len: usize) -> AofResult<()> {
        if len > self.max_record {
            return Err(AofError::RecordTooLarge {
                len,
                max: self.max_record,
            });
        }
        Ok(())
    }

    /// The log's histograms (`None` before its first commit).
    pub fn histograms(&self) -> Option<crate::log_histograms::LogHistograms> {
        self.hist.snapshot()
    }

    /// Frame bytes one segment of `segment_max_bytes` holds (the largest batch).
    pub fn max_batch_bytes(&self) -> u64 {
        format::data_capacity(self.cfg.segment_max_bytes) - HEADER_LEN as u64
    }

    fn next_timestamp(&mut self) -> u64 {
        let ts = self.clock.realtime_ns().max(self.last_ts);
        self.last_ts = ts;
        ts
    }

    /// Makes room for `frames` bytes of frames in the active segment (opening the next
    /// one if they do not fit), with buffers behind all of it. Returns whether the
    /// shard has work.
    fn reserve(&mut self, frames: u64) -> AofResult<bool> {
        let unflushed = self.total_appended - self.total_durable;
        if unflushed > 0 && unflushed + frames > self.cfg.flush.max_unflushed_bytes {
            return Err(AofError::WouldBlock(WouldBlockKind::Admission));
        }
        let mut wake = false;
        let needs_new = match self.segs.back() {
            None => true,
            Some(s) => s.rolled || s.appended_end + frames > s.capacity,
        };
        if needs_new {
            // After a clean close: the last segment, continued if the frames fit.
            if self.segs.is_empty() && self.continue_for(frames).is_some() {
                return Err(AofError::WouldBlock(WouldBlockKind::Rollover));
            }
            if self.next_segment > u64::from(u32::MAX) {
                return Err(AofError::SegmentIdsExhausted {
                    path: self.paths.root.clone(),
                });
            }
            // An id is handed out only in a segment whose file is durably prepared, so
            // recovery, which continues past every file on disk, never reuses one.
            match self.prepared.front() {
                Some(&(id, psize)) if id == self.next_segment && Self::fits(psize, frames) => {
                    self.prepared.pop_front();
                    self.want = None;
                    if let Some(s) = self.segs.back_mut() {
                        if !s.rolled {
                            let (size, opened) = (s.header.file_size, s.opened_mono);
                            s.rolled = true;
                            self.filled(size, opened, self.clock.monotonic_ns());
                        }
                    }
                    self.open_segment(psize);
                    wake = true;
                }
                _ => {
                    if let Some(f) = &self.prep_failure {
                        if self.clock.monotonic_ns() < f.retry_at {
                            return Err(f.error());
                        }
                        self.prep_failure = None; // try again now
                    }
                    self.want = Some((self.next_segment, self.segment_size_for(frames)));
                    // Size retention holds new files back while released ones are on
                    // disk: if removing one keeps failing, say so rather than wait.
                    if self.prep.is_none() && self.removal_lags() {
                        if let Some(e) = self.lagging_removal_error() {
                            return Err(e);
                        }
                    }
                    return Err(AofError::WouldBlock(WouldBlockKind::Rollover));
                }
            }
        }
        let s = self.segs.back_mut().expect("a segment to append to");
        let off = s.appended_end;
        let end = off + frames;
        assert!(
            end <= s.capacity,
            "segment {}: {frames} bytes of frames reserved past its capacity",
            s.id
        );
        let first_new_buffer = s.bufs_end;
        while s.bufs_end < end {
            let buf = take_buffer(&mut self.pool, self.arena.as_ref(), s.buf_size);
            s.bufs.push_back((s.bufs_end, Arc::new(buf)));
            s.bufs_end += s.buf_size as u64;
        }
        if let Some(tail) = s.parked_tail.take() {
            // Back from idle: the partly filled block's prefix, as it was.
            s.copy_in(segment::block_floor(off), &tail);
        }
        // Buffers filled up: the shard can write them behind. Small buffers (a small
        // segment's) are written a few at a time, not one wake-up each.
        let behind = s.bufs.back().map_or(0, |b| b.0);
        wake |= s.bufs_end != first_new_buffer
            && s.bufs.len() > 1
            && behind.saturating_sub(segment::block_floor(s.written_end))
                >= WRITE_BEHIND_MIN.max(s.buf_size as u64);
        Ok(wake)
    }

    /// Writes one record frame at the active segment's append end (room reserved) and
    /// advances it. `Err` (nothing advanced) when a `fill` panicked.
    fn put_frame(
        &mut self,
        len: usize,
        flags: u8,
        ts: u64,
        payload: Payload<'_>,
    ) -> Result<RecordId, FillPanic> {
        let s = self.segs.back_mut().expect("a segment to append to");
        let off = s.appended_end;
        let frame = format::frame_size(len) as u64;
        let end = off + frame;
        let tail = format::encode_frame_tail(
            s.last_crc,
            FrameKind::Record,
            flags,
            len as u32,
            s.durable_end as u32,
            ts,
        );
        let h = format::FRAME_HEADER_LEN;
        let crc = if let Some(f) = s.frame_slot(off, frame as usize) {
            // The common case: the frame lies in one buffer. Built in place and
            // checksummed in one pass over its bytes.
            f[4..h].copy_from_slice(&tail);
            match payload {
                Payload::Bytes(p) => f[h..h + len].copy_from_slice(p),
                Payload::Fill(fill) => segment::run_fill(fill, &mut f[h..h + len])?,
            }
            f[h + len..].fill(0);
            let crc = format::frame_crc_of(s.seed, &f[4..]);
            f[..4].copy_from_slice(&crc.to_le_bytes());
            crc
        } else {
            let at = off + h as u64;
            let crc = match payload {
                Payload::Bytes(p) => {
                    s.copy_in(at, p);
                    format::frame_crc(s.seed, &tail, p)
                }
                Payload::Fill(fill) => {
                    let seed = s.seed;
                    s.fill_in(at, len, fill, |p| format::frame_crc(seed, &tail, p))?
                }
            };
            let pad = frame as usize - h - len;
            s.copy_in(off, &crc.to_le_bytes());
            s.copy_in(off + 4, &tail);
            s.copy_in(end - pad as u64, &[0u8; format::FRAME_ALIGN][..pad]);
            crc
        };
        s.last_crc = crc;
        s.appended_end = end;
        s.record_count += 1;
        s.last_record_offset = off as u32;
        s.newest_ts = ts;
        if self.rel.timed {
            s.newest_mono = self.clock.monotonic_ns();
        }
        let rid = RecordId::from_parts(
            u32::try_from(s.id).expect("segment ids fit 32 bits (checked before a segment opens)"),
            u32::try_from(off).expect("segments are smaller than 4 GiB"),
        );
        self.records_total += 1;
        self.metrics.records_appended += 1;
        self.metrics.bytes_appended += len as u64;
        Ok(rid)
    }

    /// [`LogCore::put_frame`] for a whole batch whose `total` frame bytes lie in one
    /// buffer: built in place in one pass, the segment's state updated once. `None`
    /// (nothing written) when the frames straddle buffers.
    fn put_batch_in_place(&mut self, records: &[&[u8]], total: u64, ts: u64) -> Option<RecordId> {
        let s = self.segs.back_mut().expect("a segment to append to");
        let start = s.appended_end;
        let slot = s.frame_slot(start, total as usize)?;
        let h = format::FRAME_HEADER_LEN;
        let (seed, synced_before) = (s.seed, s.durable_end as u32);
        let (mut at, mut prev, mut bytes) = (0usize, s.last_crc, 0u64);
        let n = records.len();
        for (i, p) in records.iter().enumerate() {
            let flags = if i + 1 < n {
                format::FRAME_FLAG_BATCH_MORE
            } else {
                0
            };
            let size = format::frame_size(p.len());
            let f = &mut slot[at..at + size];
            let tail = format::encode_frame_tail(
                prev,
                FrameKind::Record,
                flags,
                p.len() as u32,
                synced_before,
                ts,
            );
            f[4..h].copy_from_slice(&tail);
            f[h..h + p.len()].copy_from_slice(p);
            f[h + p.len()..].fill(0);
            prev = format::frame_crc_of(seed, &f[4..]);
            f[..4].copy_from_slice(&prev.to_le_bytes());
            at += size;
            bytes += p.len() as u64;
        }
        assert_eq!(at as u64, total, "a batch's frames fill what was reserved");
        let last = start + total - format::frame_size(records[n - 1].len()) as u64;
        s.last_crc = prev;
        s.appended_end = start + total;
        s.record_count += n as u64;
        s.last_record_offset = last as u32;
        s.newest_ts = ts;
        if self.rel.timed {
            s.newest_mono = self.clock.monotonic_ns();
        }
        let rid = RecordId::from_parts(
            u32::try_from(s.id).expect("segment ids fit 32 bits (checked before a segment opens)"),
            u32::try_from(last).expect("segments are smaller than 4 GiB"),
        );
        self.records_total += n as u64;
        self.metrics.records_appended += n as u64;
        self.metrics.bytes_appended += bytes;
        Some(rid)
    }

    /// Accounts for `frames` bytes just appended: watermark and interval flushes.
    /// Returns whether the shard has work.
    fn appended(&mut self, frames: u64) -> bool {
        let mut wake = false;
        self.total_appended += frames;
        self.hist.appended(self.records_total, self.last_ts);
        if self.total_appended - self.watermark_mark >= self.cfg.flush.flush_watermark_bytes {
            self.watermark_mark = self.total_appended;
            self.flush_target = self.flush_target.max(self.end_pos());
            self.metrics.flushes_watermark += 1;
            wake = true;
        }
        if self.cfg.flush.flush_interval_ms > 0 && !self.timer_armed {
            self.timer_armed = true;
            wake = true;
        }
        wake
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
        let buf = take_buffer(&mut self.pool, self.arena.as_ref(), s.buf_size);
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
        FlushMetricsSnapshot {
            backlog_bytes: self.unflushed_bytes(),
            removals_failing: self.removals_failing(),
            spare_bytes: self.spare_bytes(),
            compression_backlog_segments: segs,
            compression_backlog_bytes: bytes,
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
