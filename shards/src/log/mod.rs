//! The log core: a sans-I/O state machine per log.
//!
//! Inputs: appends and flush requests (from any thread, under the log lock), timer
//! ticks and I/O completions (from the shard). Outputs: chains of I/O operations
//! ([`ops::Chain`]) and the durable position, which releases waiters. All policy lives
//! here: buffer hand-off, watermark / interval / explicit flush, back-pressure, segment
//! roll and seal, segment preparation.
//!
//! Ordering rules this module enforces (see README, "Durability contract"):
//! - A segment's header is written and synced before any of its frames is written, so a
//!   file with a blank header never holds frames.
//! - A segment's frames are synced, then its footer is written and synced (sealed),
//!   before anything of the next segment is written; waiters are released only after
//!   the `fdatasync` covering their record completes.
//! - One data chain is in flight per log, so two writes to the same block never are.
//!   The partly filled last block is written from a bounce copy and rewritten later
//!   with a byte-identical prefix.
//! - A failed write or sync poisons the log: nothing is reported durable afterwards.

pub mod ops;

use crate::buffer::{AlignedBuf, BufferArena, PREP_CHUNK, PREP_STEP_QUIET};
use crate::clock::Clock;
use crate::config::{AofConfig, RecordId};
use crate::error::{AofError, AofResult, WouldBlockKind};
use crate::format::{
    self, FrameKind, SegmentFooter, SegmentHeader, BLOCK, FOOTER_REGION, HEADER_LEN,
};
use crate::layout::LogPaths;
use crate::metrics::FlushMetricsSnapshot;
use ops::{Chain, IoData, Op, OpKind};
use std::collections::VecDeque;
use std::io;
use std::sync::Arc;

/// Size of each in-memory log buffer (smaller for small segments).
pub const BUF_SIZE: usize = 1 << 20;

/// Spare buffers a log keeps for reuse (fresh ones cost page faults).
const POOL_BUFFERS: usize = 2;

/// A buffer of `size` bytes from the pool, or a new one. Contents are stale: every byte
/// written to disk from a buffer is written by an appender first.
fn take_buffer(
    pool: &mut Vec<AlignedBuf>,
    arena: Option<&Arc<BufferArena>>,
    size: usize,
) -> AlignedBuf {
    match pool.iter().position(|b| b.len() == size) {
        Some(i) => pool.swap_remove(i),
        None => arena
            .and_then(|a| a.take(size))
            .unwrap_or_else(|| AlignedBuf::zeroed(size)),
    }
}

/// Packs a (segment, offset) position so positions and `RecordId`s compare as integers.
pub const fn pos(seg: u64, off: u64) -> u64 {
    (seg << 32) | off
}

const fn block_floor(x: u64) -> u64 {
    x & !(BLOCK as u64 - 1)
}

/// What is known about a sealed segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealedSegment {
    /// Its header.
    pub header: SegmentHeader,
    /// The header's checksum, which seeds every frame and the footer.
    pub seed: u32,
    /// Its seal footer.
    pub footer: SegmentFooter,
}

/// A segment as readers see it (see [`LogCore::locate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Located {
    /// Sealed: immutable, readable up to its footer's data end.
    Sealed(SealedSegment),
    /// Being appended to (or awaiting its seal): readable up to `durable_end`.
    Unsealed {
        /// Its header.
        header: SegmentHeader,
        /// Its frame seed.
        seed: u32,
        /// Frames below this offset are durable.
        durable_end: u64,
    },
}

impl Located {
    /// The segment's id.
    pub fn segment_id(&self) -> u64 {
        match self {
            Located::Sealed(s) => s.header.segment_id,
            Located::Unsealed { header, .. } => header.segment_id,
        }
    }
}

/// One segment of a log, as `catalog_snapshot` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Its id.
    pub segment_id: u64,
    /// True once its seal footer is durable (it never changes again).
    pub sealed: bool,
    /// Records in every segment before it.
    pub base_record_index: u64,
    /// Size of the file.
    pub file_size: u64,
    /// End of its durable frames (the data end, once sealed).
    pub durable_bytes: u64,
    /// Records in it (for an unsealed segment: appended so far, durable or not).
    pub record_count: u64,
    /// When it was created (ns since the Unix epoch).
    pub created_at_ns: u64,
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
}

/// A segment that is being appended to or not yet sealed.
struct Seg {
    id: u64,
    header: SegmentHeader,
    header_bytes: [u8; HEADER_LEN],
    seed: u32,
    capacity: u64,
    buf_size: usize,
    /// Buffers tiling [bufs[0].0, bufs_end), each `buf_size` bytes.
    bufs: VecDeque<(u64, Arc<AlignedBuf>)>,
    bufs_end: u64,
    appended_end: u64,
    last_crc: u32,
    record_count: u64,
    last_record_offset: u32,
    /// No more appends go here; seal once everything in it is durable.
    rolled: bool,
    header_durable: bool,
    /// Bytes [0, written_end) are on disk (not necessarily synced).
    written_end: u64,
    /// Frames below this end are durable.
    durable_end: u64,
}

impl Seg {
    fn buf_index(&self, off: u64) -> usize {
        ((off - self.bufs[0].0) / self.buf_size as u64) as usize
    }

    /// Copies `bytes` to segment offset `off` (must be inside the buffers).
    fn copy_in(&self, mut off: u64, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let (base, buf) = &self.bufs[self.buf_index(off)];
            let at = (off - base) as usize;
            let n = bytes.len().min(self.buf_size - at);
            // SAFETY: [off, off + n) is at or past the append end, which only the holder
            // of the log lock (us) writes; the shard reads only below the append end.
            unsafe { buf.write(at, &bytes[..n]) };
            off += n as u64;
            bytes = &bytes[n..];
        }
    }

    /// Copies segment bytes [from, to) out of the buffers (below the append end).
    fn copy_out(&self, from: u64, dst: &AlignedBuf) {
        let to = self.appended_end.min(from + BLOCK as u64);
        let (base, buf) = &self.bufs[self.buf_index(from)];
        let at = (from - base) as usize;
        // SAFETY: below the append end (stable), and `dst` is exclusively ours.
        unsafe { dst.write(0, buf.slice(at, (to - from) as usize)) };
    }
}

/// A segment file under preparation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PrepStep {
    Create,
    Zero(u64),
    Sync,
    Rename,
    SyncDir,
}

#[derive(Debug, Clone, Copy)]
struct Prep {
    id: u64,
    size: u64,
    step: PrepStep,
    /// Bytes of the zero-write in flight.
    chunk: u64,
}

/// How long after a failed segment preparation an append may try again (ns).
const PREP_RETRY_NS: u64 = 50_000_000;

/// A segment preparation that failed (a full disk, an I/O error). Unlike a failed data
/// write it loses nothing and poisons nothing: appends that need the segment fail with
/// it until a retry, at most every `PREP_RETRY_NS`, succeeds.
struct PrepFailure {
    path: std::path::PathBuf,
    error: io::Error,
    retry_at: u64,
}

impl PrepFailure {
    fn error(&self) -> AofError {
        AofError::io(
            "prepare the next segment file",
            &self.path,
            crate::error::copy_io_error(&self.error),
        )
    }
}

/// What a chain achieves when every operation in it succeeds.
#[derive(Debug)]
enum Effect {
    HeaderDurable {
        seg: u64,
    },
    Written {
        seg: u64,
        end: u64,
    },
    Durable {
        seg: u64,
        end: u64,
    },
    Sealed {
        seg: u64,
        footer: SegmentFooter,
    },
    /// A preparation step of segment `seg` finished.
    Prep {
        seg: u64,
    },
    /// Closing: unused prepared files were renamed `.ready`.
    MarkedReady {
        segs: Vec<u64>,
    },
    /// An adopted prepared file was opened.
    Adopted {
        seg: u64,
        size: u64,
    },
    /// The leftovers of segment `seg`'s failed preparation were removed.
    Cleaned {
        seg: u64,
    },
}

struct InFlight {
    ids: Vec<u64>,
    done: usize,
    failed: Option<io::Error>,
    effect: Effect,
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
    /// (id, size) of the segment a blocked append waits for.
    want: Option<(u64, u64)>,
    prep: Option<Prep>,
    prep_failure: Option<PrepFailure>,
    /// A failed preparation's file to close and remove: (segment, temp path).
    cleanup: Option<(u64, std::path::PathBuf)>,
    data_io: Option<InFlight>,
    prep_io: Option<InFlight>,
    next_op: u64,
    pool: Vec<AlignedBuf>,
    /// The shard's registered memory, if any: buffers and blocks come from it first.
    arena: Option<Arc<BufferArena>>,
    /// Size of each log buffer ([`BUF_SIZE`] unless a test shrinks it).
    buf_size: usize,
    poisoned: Option<AofError>,
    closing: bool,
    /// Closing, and the unused prepared files were renamed `.ready` (durably).
    marked_ready: bool,
    metrics: FlushMetricsSnapshot,
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
        LogCore {
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
            adopt: rec.prepared.into(),
            want: None,
            prep: None,
            prep_failure: None,
            cleanup: None,
            data_io: None,
            prep_io: None,
            next_op: 1,
            pool: Vec::new(),
            arena: None,
            buf_size: BUF_SIZE,
            poisoned: None,
            closing: false,
            marked_ready: false,
            metrics: FlushMetricsSnapshot::default(),
            cfg,
        }
    }

    // ------------------------------------------------------------------ append side

    /// Appends a record. `Err(WouldBlock(Admission))` when over `max_unflushed_bytes`,
    /// `Err(WouldBlock(Rollover))` when the record needs a new segment whose file is
    /// not prepared yet: the caller wakes the shard, waits for progress and retries.
    pub fn append(&mut self, payload: &[u8]) -> AofResult<Appended> {
        self.check_open()?;
        if payload.len() > self.max_record {
            return Err(AofError::RecordTooLarge {
                len: payload.len(),
                max: self.max_record,
            });
        }
        let frame = format::frame_size(payload.len()) as u64;
        let unflushed = self.total_appended - self.total_durable;
        if unflushed > 0 && unflushed + frame > self.cfg.flush.max_unflushed_bytes {
            return Err(AofError::WouldBlock(WouldBlockKind::Admission));
        }
        let mut wake = false;
        let needs_new = match self.segs.back() {
            None => true,
            Some(s) => s.rolled || s.appended_end + frame > s.capacity,
        };
        if needs_new {
            if self.next_segment > u64::from(u32::MAX) {
                return Err(AofError::SegmentIdsExhausted {
                    path: self.paths.root.clone(),
                });
            }
            // An id is handed out only in a segment whose file is durably prepared, so
            // recovery, which continues past every file on disk, never reuses one.
            let size = self.segment_size_for(frame);
            match self.prepared.front() {
                Some(&(id, psize)) if id == self.next_segment && psize == size => {
                    self.prepared.pop_front();
                    self.want = None;
                    if let Some(s) = self.segs.back_mut() {
                        s.rolled = true;
                    }
                    self.open_segment(size);
                    wake = true;
                }
                _ => {
                    if let Some(f) = &self.prep_failure {
                        if self.clock.monotonic_ns() < f.retry_at {
                            return Err(f.error());
                        }
                        self.prep_failure = None; // try again now
                    }
                    self.want = Some((self.next_segment, size));
                    return Err(AofError::WouldBlock(WouldBlockKind::Rollover));
                }
            }
        }
        let ts = self.clock.realtime_ns().max(self.last_ts);
        self.last_ts = ts;
        let s = self.segs.back_mut().expect("a segment to append to");
        let off = s.appended_end;
        let end = off + frame;
        let first_new_buffer = s.bufs_end;
        while s.bufs_end < end {
            let buf = take_buffer(&mut self.pool, self.arena.as_ref(), s.buf_size);
            s.bufs.push_back((s.bufs_end, Arc::new(buf)));
            s.bufs_end += s.buf_size as u64;
        }
        // A buffer filled up: the shard can write it behind.
        wake |= s.bufs_end != first_new_buffer && s.bufs.len() > 1;
        let tail = format::encode_frame_tail(
            s.last_crc,
            FrameKind::Record,
            payload.len() as u32,
            s.durable_end as u32,
            ts,
        );
        let crc = format::frame_crc(s.seed, &tail, payload);
        s.copy_in(off, &crc.to_le_bytes());
        s.copy_in(off + 4, &tail);
        s.copy_in(off + format::FRAME_HEADER_LEN as u64, payload);
        let pad = frame as usize - format::FRAME_HEADER_LEN - payload.len();
        s.copy_in(end - pad as u64, &[0u8; format::FRAME_ALIGN][..pad]);
        s.last_crc = crc;
        s.appended_end = end;
        s.record_count += 1;
        s.last_record_offset = off as u32;
        let rid = RecordId::from_parts(
            u32::try_from(s.id).expect("segment ids fit 32 bits (checked before a segment opens)"),
            u32::try_from(off).expect("segments are smaller than 4 GiB"),
        );
        self.records_total += 1;
        self.total_appended += frame;
        self.metrics.records_appended += 1;
        self.metrics.bytes_appended += payload.len() as u64;
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
        Ok(Appended {
            rid,
            wake_shard: wake,
        })
    }

    /// File size of a new segment whose first frame is `frame` bytes: the target, or
    /// larger for a record that does not fit in it.
    fn segment_size_for(&self, frame: u64) -> u64 {
        let target = self.cfg.segment_target_bytes;
        let need = HEADER_LEN as u64 + frame + FOOTER_REGION;
        if need <= target {
            target
        } else {
            (need.div_ceil(BLOCK as u64) * BLOCK as u64).max(self.cfg.segment_min_bytes)
        }
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
            segment_id: id,
            generation: generation(self.nonce, id),
            base_record_index: self.records_total,
            created_at_ns: self.clock.realtime_ns(),
            file_size,
        };
        let (header_bytes, seed) = header.encode();
        let buf_size = (self.buf_size as u64).min(file_size) as usize;
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
            rolled: false,
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

    /// True when a prepared file is ready for the next segment.
    pub fn has_prepared_segment(&self) -> bool {
        self.prepared
            .front()
            .is_some_and(|&(id, _)| id == self.next_segment)
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

    /// Stops taking appends; the shard flushes what was appended.
    pub fn begin_close(&mut self) {
        self.closing = true;
        self.request_flush_all();
    }

    /// True once closing and nothing is left to do (everything durable, or poisoned).
    pub fn is_drained(&self) -> bool {
        self.closing
            && self.data_io.is_none()
            && self.prep_io.is_none()
            && (self.poisoned.is_some() || (self.data_drained() && self.marked_ready))
    }

    /// Everything appended is durable and every roll is sealed.
    fn data_drained(&self) -> bool {
        self.durable >= self.end_pos() && !self.segs.iter().any(|s| s.rolled)
    }

    /// The counters, with the current backlog (`backpressure_waits` is the handle's).
    pub fn metrics(&self) -> FlushMetricsSnapshot {
        FlushMetricsSnapshot {
            backlog_bytes: self.unflushed_bytes(),
            ..self.metrics
        }
    }

    /// The (normalized) configuration.
    pub fn config(&self) -> &AofConfig {
        &self.cfg
    }

    /// Sealed segments, in id order.
    pub fn sealed_segments(&self) -> &[SealedSegment] {
        &self.sealed
    }

    /// For a segment that is not sealed: (header, seed, durable end of its frames).
    pub fn unsealed_view(&self, id: u64) -> Option<(SegmentHeader, u32, u64)> {
        self.segs
            .iter()
            .find(|s| s.id == id && s.header_durable)
            .map(|s| (s.header, s.seed, s.durable_end))
    }

    /// The first segment readers can see whose id is `id` or more: sealed segments,
    /// and unsealed ones whose header is durable.
    pub fn locate(&self, id: u64) -> Option<Located> {
        let i = self.sealed.partition_point(|s| s.header.segment_id < id);
        if let Some(s) = self.sealed.get(i) {
            return Some(Located::Sealed(*s));
        }
        self.segs
            .iter()
            .find(|s| s.id >= id && s.header_durable)
            .map(|s| Located::Unsealed {
                header: s.header,
                seed: s.seed,
                durable_end: s.durable_end,
            })
    }

    /// The id of the first sealed segment after `after` (the first of all for `None`).
    pub fn sealed_after(&self, after: Option<u64>) -> Option<u64> {
        let i = match after {
            Some(a) => self.sealed.partition_point(|s| s.header.segment_id <= a),
            None => 0,
        };
        self.sealed.get(i).map(|s| s.header.segment_id)
    }

    /// The segment appends go to, once its header is durable.
    pub fn active_segment(&self) -> Option<u64> {
        self.segs
            .back()
            .filter(|s| s.header_durable && !s.rolled)
            .map(|s| s.id)
    }

    /// Every segment readers can see, in id order.
    pub fn catalog(&self) -> Vec<SegmentInfo> {
        let sealed = self.sealed.iter().map(|s| SegmentInfo {
            segment_id: s.header.segment_id,
            sealed: true,
            base_record_index: s.header.base_record_index,
            file_size: s.header.file_size,
            durable_bytes: s.footer.data_end,
            record_count: s.footer.record_count,
            created_at_ns: s.header.created_at_ns,
        });
        let open = self
            .segs
            .iter()
            .filter(|s| s.header_durable)
            .map(|s| SegmentInfo {
                segment_id: s.id,
                sealed: false,
                base_record_index: s.header.base_record_index,
                file_size: s.header.file_size,
                durable_bytes: s.durable_end,
                record_count: s.record_count,
                created_at_ns: s.header.created_at_ns,
            });
        sealed.chain(open).collect()
    }

    /// The deadline of the interval timer, if armed (monotonic ns).
    pub fn deadline(&self) -> Option<u64> {
        if self.poisoned.is_some() {
            return None;
        }
        self.deadline
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
        if let Some(c) = self.poll_prep() {
            out.push(c);
        }
        if let Some(c) = self.poll_data() {
            out.push(c);
        }
        out
    }

    /// The next data chain only (no preparation), for a holder of the log's data-chain
    /// slot running it on its own thread: `None` while one is in flight or nothing is
    /// to be written.
    pub fn poll_data_chain(&mut self, now: u64) -> Option<Chain> {
        if self.poisoned.is_some() {
            return None;
        }
        self.tick(now);
        self.poll_data()
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

    fn poll_data(&mut self) -> Option<Chain> {
        if self.data_io.is_some() {
            return None;
        }
        let flush_target = self.flush_target;
        let s = self.segs.front()?;
        let wants_sync =
            s.durable_end < s.appended_end && (s.rolled || flush_target > pos(s.id, s.durable_end));
        let wants_seal = s.rolled && s.durable_end == s.appended_end;
        // Whole buffers behind the one being filled can be written without waiting.
        let behind = if s.bufs.len() > 1 {
            s.bufs.back().map(|b| b.0).unwrap_or(0)
        } else {
            0
        };
        let wants_behind = behind > s.written_end;
        if !(wants_sync || wants_seal || wants_behind) {
            return None;
        }
        let seg = s.id;
        if !s.header_durable {
            let block = AlignedBuf::zeroed_block(self.arena.as_ref());
            // SAFETY: a fresh block, ours alone.
            unsafe { block.write(0, &s.header_bytes) };
            let kinds = vec![
                OpKind::Write {
                    seg,
                    offset: 0,
                    data: vec![IoData::Owned(block)],
                },
                OpKind::Sync { seg },
            ];
            return Some(self.chain(kinds, Effect::HeaderDurable { seg }, false));
        }
        if wants_sync {
            let end = s.appended_end;
            let mut kinds = Vec::new();
            if s.written_end < end {
                let from = block_floor(s.written_end);
                let data = Self::write_data(s, from, end, self.arena.as_ref());
                kinds.push(OpKind::Write {
                    seg,
                    offset: from,
                    data,
                });
            }
            kinds.push(OpKind::Sync { seg });
            return Some(self.chain(kinds, Effect::Durable { seg, end }, false));
        }
        if wants_seal {
            let footer = SegmentFooter {
                segment_id: seg,
                record_count: s.record_count,
                data_end: s.appended_end,
                last_frame_crc: s.last_crc,
                last_record_offset: s.last_record_offset,
                sealed_at_ns: self.clock.realtime_ns(),
                index_offset: 0,
                index_len: 0,
                index_crc: 0,
            };
            let block = AlignedBuf::zeroed_block(self.arena.as_ref());
            // SAFETY: a fresh block, ours alone.
            unsafe { block.write(0, &footer.encode(s.seed)) };
            let offset = s.header.file_size - FOOTER_REGION;
            let kinds = vec![
                OpKind::Write {
                    seg,
                    offset,
                    data: vec![IoData::Owned(block)],
                },
                OpKind::Sync { seg },
                OpKind::Close { seg },
            ];
            return Some(self.chain(kinds, Effect::Sealed { seg, footer }, false));
        }
        let from = block_floor(s.written_end);
        let data = Self::write_data(s, from, behind, self.arena.as_ref());
        let kinds = vec![OpKind::Write {
            seg,
            offset: from,
            data,
        }];
        Some(self.chain(kinds, Effect::Written { seg, end: behind }, false))
    }

    /// The pieces to write segment bytes [from, to): whole blocks straight from the
    /// buffers, the partly filled last block from a zero-padded bounce copy.
    fn write_data(s: &Seg, from: u64, to: u64, arena: Option<&Arc<BufferArena>>) -> Vec<IoData> {
        let full_end = block_floor(to);
        let mut data = Vec::new();
        let mut at = from;
        for (base, buf) in &s.bufs {
            let end = base + s.buf_size as u64;
            if end <= at {
                continue;
            }
            if *base >= full_end {
                break;
            }
            let b = end.min(full_end);
            if b == at {
                // Nothing of this buffer before the partial block: an empty piece would
                // be refused by WRITEV_FIXED (EFAULT).
                break;
            }
            data.push(IoData::Buf {
                buf: buf.clone(),
                off: (at - base) as usize,
                len: (b - at) as usize,
            });
            at = b;
        }
        if to > full_end {
            let bounce = AlignedBuf::zeroed_block(arena);
            s.copy_out(full_end, &bounce);
            data.push(IoData::Owned(bounce));
        }
        // What the partial-block rules and O_DIRECT rest on: whole, non-empty blocks,
        // from a block boundary, never past what was appended.
        let len: usize = data.iter().map(IoData::len).sum();
        assert!(
            from % BLOCK as u64 == 0
                && to <= s.appended_end
                && len as u64 == to.div_ceil(BLOCK as u64) * BLOCK as u64 - from
                && data.iter().all(|d| !d.is_empty() && d.len() % BLOCK == 0),
            "segment {}: a bad write of [{from}, {to}) (appended to {}): {len} bytes in {} pieces",
            s.id,
            s.appended_end,
            data.len()
        );
        data
    }

    fn poll_prep(&mut self) -> Option<Chain> {
        if self.prep_io.is_some() {
            return None;
        }
        if let Some((seg, path)) = self.cleanup.take() {
            let kinds = vec![OpKind::Close { seg }, OpKind::Unlink { path }];
            return Some(self.chain(kinds, Effect::Cleaned { seg }, true));
        }
        if self.closing {
            return self.poll_close();
        }
        if self.prep_failure.is_some() {
            // Retried when an append needs the file (see `append`), not in a loop.
            return None;
        }
        // Files adopted by recovery are opened first, in order.
        if let Some(&(seg, size)) = self.adopt.front() {
            self.adopt.pop_front();
            let kinds = vec![OpKind::Open {
                seg,
                path: self.paths.segment(seg),
            }];
            return Some(self.chain(kinds, Effect::Adopted { seg, size }, true));
        }
        // A blocked append waits for a file of a given size under the next id.
        let mut next = None;
        if self.want.is_some_and(|(id, _)| id != self.next_segment) {
            self.want = None; // satisfied since (the appender took a file)
        }
        assert!(
            self.prepared
                .front()
                .is_none_or(|&(id, _)| id >= self.next_segment),
            "a prepared file below the next segment id"
        );
        if let Some((id, size)) = self.want {
            match self.prepared.front().copied() {
                Some((pid, psize)) if pid == id && psize == size => self.want = None,
                Some((pid, _)) if pid == id => {
                    // Prepared at another size than the record needs. A new file is
                    // prepared and renamed over this one: the id never leaves the
                    // disk, so recovery keeps continuing past it.
                    self.prepared.pop_front();
                    next = Some((id, size));
                }
                _ => next = Some((id, size)),
            }
        } else if self.prepared.is_empty() && !self.closing {
            // Keep one file ready beyond those in use.
            next = Some((self.next_segment, self.cfg.segment_target_bytes));
        }
        if self.prep.is_none() {
            if let Some((id, size)) = next {
                log::trace!(
                    "aof2: preparing segment {id} ({size} bytes); want {:?}, prepared {:?}, next {}",
                    self.want,
                    self.prepared,
                    self.next_segment
                );
                self.prep = Some(Prep {
                    id,
                    size,
                    step: PrepStep::Create,
                    chunk: 0,
                });
            }
        }
        let p = self.prep?;
        Some(self.prep_step(p))
    }

    /// The chain for the next step of preparation `p`.
    fn prep_step(&mut self, p: Prep) -> Chain {
        let kind = match p.step {
            PrepStep::Create => {
                // A failed earlier attempt may have left the temp file (if removing it
                // failed too): clear it, or the create would fail for ever.
                let kinds = vec![
                    OpKind::Unlink {
                        path: self.paths.temp(p.id),
                    },
                    OpKind::Create {
                        seg: p.id,
                        path: self.paths.temp(p.id),
                        mode: self.cfg.file_mode,
                    },
                ];
                return self.chain(kinds, Effect::Prep { seg: p.id }, true);
            }
            PrepStep::Zero(off) => {
                // Big steps once an append waits for the file or the active segment is
                // half full; small ones otherwise, so syncs queued behind wait less.
                let urgent = self.want.is_some()
                    || self
                        .segs
                        .back()
                        .is_some_and(|s| s.appended_end * 2 >= s.capacity);
                let step = if urgent { PREP_CHUNK } else { PREP_STEP_QUIET };
                let n = (p.size - off).min(step as u64) as usize;
                if let Some(q) = self.prep.as_mut() {
                    q.chunk = n as u64;
                }
                OpKind::Write {
                    seg: p.id,
                    offset: off,
                    data: vec![IoData::Zeros(n)],
                }
            }
            PrepStep::Sync => OpKind::Sync { seg: p.id },
            PrepStep::Rename => OpKind::Rename {
                from: self.paths.temp(p.id),
                to: self.paths.segment(p.id),
            },
            PrepStep::SyncDir => OpKind::SyncDir {
                path: self.paths.segments.clone(),
            },
        };
        self.chain(vec![kind], Effect::Prep { seg: p.id }, true)
    }

    /// Closing: a preparation still writing its `.tmp` file is abandoned (the file is
    /// removed at the next open); one past that finishes. Once all data is durable, the
    /// prepared files no append entered are renamed `.ready`, so the next open reuses
    /// their ids and ids stay dense. (After a crash, blank `.seg` files cannot be
    /// trusted that way and are moved past.)
    fn poll_close(&mut self) -> Option<Chain> {
        if let Some(p) = self.prep {
            match p.step {
                PrepStep::Create => self.prep = None,
                PrepStep::Zero(_) => {
                    self.prep = None;
                    let kinds = vec![OpKind::Close { seg: p.id }];
                    return Some(self.chain(kinds, Effect::Prep { seg: p.id }, true));
                }
                PrepStep::Sync | PrepStep::Rename | PrepStep::SyncDir => {
                    return Some(self.prep_step(p))
                }
            }
        }
        if self.marked_ready || !self.data_drained() {
            return None;
        }
        let mut kinds = Vec::new();
        let mut segs = Vec::new();
        for (seg, _) in std::mem::take(&mut self.prepared) {
            segs.push(seg);
            kinds.push(OpKind::Close { seg });
            kinds.push(OpKind::Rename {
                from: self.paths.segment(seg),
                to: self.paths.ready(seg),
            });
        }
        for (seg, _) in std::mem::take(&mut self.adopt) {
            segs.push(seg);
            kinds.push(OpKind::Rename {
                from: self.paths.segment(seg),
                to: self.paths.ready(seg),
            });
        }
        if kinds.is_empty() {
            self.marked_ready = true;
            return None;
        }
        kinds.push(OpKind::SyncDir {
            path: self.paths.segments.clone(),
        });
        Some(self.chain(kinds, Effect::MarkedReady { segs }, true))
    }

    /// Reports the outcome of operation `id`.
    pub fn complete(&mut self, id: u64, res: io::Result<()>) -> Progress {
        let slot = if self.data_io.as_ref().is_some_and(|f| f.ids.contains(&id)) {
            &mut self.data_io
        } else if self.prep_io.as_ref().is_some_and(|f| f.ids.contains(&id)) {
            &mut self.prep_io
        } else {
            // Every completion answers an operation this core handed out: anything else
            // is a bug in an executor, which must not be skipped silently.
            panic!(
                "completion for unknown operation {id} of {}",
                self.paths.root.display()
            );
        };
        let f = slot.as_mut().expect("in flight");
        f.done += 1;
        if let Err(e) = res {
            f.failed.get_or_insert(e);
        }
        if f.done < f.ids.len() {
            return Progress::default();
        }
        let f = slot.take().expect("in flight");
        if let Some(e) = f.failed {
            return self.fail(&f.effect, e);
        }
        self.apply(f.effect)
    }

    fn fail(&mut self, effect: &Effect, e: io::Error) -> Progress {
        if let Effect::Prep { .. } | Effect::Adopted { .. } | Effect::Cleaned { .. } = effect {
            return self.prep_failed(effect, e);
        }
        self.metrics.failures += 1;
        if self.poisoned.is_none() {
            let (what, seg) = match effect {
                Effect::HeaderDurable { seg } => ("writing the header of", *seg),
                Effect::Written { seg, .. } | Effect::Durable { seg, .. } => {
                    ("writing and syncing records of", *seg)
                }
                Effect::Sealed { seg, .. } => ("sealing", *seg),
                Effect::MarkedReady { segs } => (
                    "marking unused prepared files of",
                    segs.first().copied().unwrap_or(self.next_segment),
                ),
                Effect::Prep { .. } | Effect::Adopted { .. } | Effect::Cleaned { .. } => {
                    unreachable!("handled by prep_failed")
                }
            };
            let path = self.paths.segment(seg);
            log::error!(
                "aof2: {what} {} failed: {e}; the log is poisoned until reopened",
                path.display()
            );
            self.poisoned = Some(AofError::io(what, path, e));
        }
        Progress { wake_waiters: true }
    }

    /// A preparation step failed: abandon the file (closed and removed later), remember
    /// the error for the appends that need it, and keep the log running.
    fn prep_failed(&mut self, effect: &Effect, e: io::Error) -> Progress {
        let seg = match effect {
            Effect::Cleaned { seg } => {
                // Removing the leftovers failed too; the next open removes them.
                log::warn!(
                    "aof2: removing {} (a failed preparation's file) failed: {e}",
                    self.paths.temp(*seg).display()
                );
                return Progress::default();
            }
            Effect::Adopted { seg, .. } => *seg,
            _ => match self.prep.take() {
                Some(p) => {
                    self.cleanup = Some((p.id, self.paths.temp(p.id)));
                    p.id
                }
                // Abandoned at close: nothing waits for it.
                None => return Progress::default(),
            },
        };
        self.metrics.prepare_failures += 1;
        let path = self.paths.segment(seg);
        log::warn!(
            "aof2: preparing segment file {} failed: {e}; appends that need a new segment fail until a retry succeeds",
            path.display()
        );
        self.prep_failure = Some(PrepFailure {
            path,
            error: e,
            retry_at: self.clock.monotonic_ns() + PREP_RETRY_NS,
        });
        // A blocked append is waiting for this file: wake it to see the error.
        Progress { wake_waiters: true }
    }

    /// Test knob: log buffers of `size` bytes (a multiple of 4 KiB) for segments opened
    /// from now on, so small test segments span several buffers and exercise writing
    /// full buffers behind the appenders.
    pub fn set_buffer_size(&mut self, size: usize) {
        assert!(size >= BLOCK && size % BLOCK == 0 && size <= BUF_SIZE);
        self.buf_size = size;
    }

    /// Takes buffers and blocks from `arena` (a shard's registered memory) from now on.
    pub fn set_arena(&mut self, arena: Arc<BufferArena>) {
        self.arena = Some(arena);
    }

    /// The error appends that need a new segment get, while preparation is failing.
    pub fn prepare_error(&self) -> Option<AofError> {
        self.prep_failure.as_ref().map(PrepFailure::error)
    }

    fn apply(&mut self, effect: Effect) -> Progress {
        match effect {
            Effect::Cleaned { .. } => Progress::default(),
            Effect::HeaderDurable { seg } => {
                let s = front_of(&mut self.segs, seg);
                s.header_durable = true;
                s.written_end = s.written_end.max(HEADER_LEN as u64);
                self.metrics.syncs += 1;
                Progress::default()
            }
            Effect::Written { seg, end } => {
                let s = front_of(&mut self.segs, seg);
                let from = block_floor(s.written_end);
                s.written_end = end;
                Self::release_buffers(s, &mut self.pool);
                self.metrics.write_ops += 1;
                self.metrics.bytes_written += end - from;
                Progress::default()
            }
            Effect::Durable { seg, end } => {
                let s = front_of(&mut self.segs, seg);
                assert!(
                    end >= s.durable_end && end <= s.appended_end,
                    "segment {seg}: durable end {end} outside [{}, {}]",
                    s.durable_end,
                    s.appended_end
                );
                let from = block_floor(s.written_end);
                let wrote = s.written_end < end;
                s.written_end = s.written_end.max(end);
                let gained = end - s.durable_end;
                s.durable_end = end;
                Self::release_buffers(s, &mut self.pool);
                self.total_durable += gained;
                self.advance_durable(pos(seg, end));
                if wrote {
                    self.metrics.write_ops += 1;
                    self.metrics.bytes_written += block_floor(end + BLOCK as u64 - 1) - from;
                }
                self.metrics.syncs += 1;
                if self.durable >= self.end_pos() {
                    // Nothing unflushed: the interval timer has nothing to do.
                    self.timer_armed = false;
                    self.deadline = None;
                }
                Progress { wake_waiters: true }
            }
            Effect::Sealed { seg, footer } => {
                let s = self.segs.pop_front().expect("sealed the front segment");
                assert_eq!(s.id, seg, "a seal completed for another segment");
                assert_eq!(
                    (footer.data_end, footer.record_count),
                    (s.appended_end, s.record_count),
                    "segment {seg}: the footer seals other frames than were appended"
                );
                for (_, b) in s.bufs {
                    if let Ok(b) = Arc::try_unwrap(b) {
                        self.pool.push(b);
                    }
                }
                self.pool.truncate(POOL_BUFFERS);
                self.sealed.push(SealedSegment {
                    header: s.header,
                    seed: s.seed,
                    footer,
                });
                self.advance_durable(pos(seg + 1, HEADER_LEN as u64));
                self.metrics.syncs += 1;
                self.metrics.segments_sealed += 1;
                Progress { wake_waiters: true }
            }
            Effect::MarkedReady { segs } => {
                // Every unused prepared file was in the chain; none appeared since.
                assert!(
                    self.prepared.is_empty() && self.adopt.is_empty() && !segs.is_empty(),
                    "prepared files left unmarked after marking {segs:?}"
                );
                self.marked_ready = true;
                Progress { wake_waiters: true }
            }
            Effect::Prep { seg } => {
                // None: the preparation was abandoned at close (its handle just closed).
                let Some(p) = self.prep.as_mut() else {
                    return Progress::default();
                };
                assert_eq!(
                    p.id, seg,
                    "a preparation step completed for another segment"
                );
                p.step = match p.step {
                    PrepStep::Create => PrepStep::Zero(0),
                    PrepStep::Zero(off) => {
                        let next = off + p.chunk;
                        if next < p.size {
                            PrepStep::Zero(next)
                        } else {
                            PrepStep::Sync
                        }
                    }
                    PrepStep::Sync => PrepStep::Rename,
                    PrepStep::Rename => PrepStep::SyncDir,
                    PrepStep::SyncDir => {
                        let (id, size) = (p.id, p.size);
                        self.prep = None;
                        // Kept in id order: a replacement for the front id goes first.
                        let at = self.prepared.partition_point(|&(p, _)| p < id);
                        self.prepared.insert(at, (id, size));
                        self.metrics.segments_prepared += 1;
                        // An append may be waiting for this file.
                        return Progress { wake_waiters: true };
                    }
                };
                Progress::default()
            }
            Effect::Adopted { seg, size } => {
                assert!(
                    self.prepared.back().is_none_or(|&(p, _)| p < seg),
                    "adopted segment {seg} out of order"
                );
                self.prepared.push_back((seg, size));
                Progress { wake_waiters: true }
            }
        }
    }

    /// Moves the durable position forward; it never moves back (waiters were released
    /// on the strength of it).
    fn advance_durable(&mut self, to: u64) {
        assert!(
            to >= self.durable,
            "the durable position of {} would move back from {:#x} to {to:#x}",
            self.paths.root.display(),
            self.durable
        );
        self.durable = to;
    }

    /// Poisons the log from outside its I/O (its shard thread failed): every waiter
    /// gets `cause`, and nothing more is reported durable.
    pub fn poison_with(&mut self, cause: AofError) {
        if self.poisoned.is_none() {
            log::error!(
                "aof2: log {} is poisoned: {cause}",
                self.paths.root.display()
            );
            self.poisoned = Some(cause);
        }
    }

    /// Drops buffers wholly below the block that the next write starts at.
    fn release_buffers(s: &mut Seg, pool: &mut Vec<AlignedBuf>) {
        let keep_from = block_floor(s.written_end);
        while let Some((base, _)) = s.bufs.front() {
            if base + s.buf_size as u64 > keep_from {
                break;
            }
            let (_, b) = s.bufs.pop_front().expect("front exists");
            if let Ok(b) = Arc::try_unwrap(b) {
                if pool.len() < POOL_BUFFERS {
                    pool.push(b);
                }
            }
        }
    }
}

/// The oldest unsealed segment, which every data chain targets.
fn front_of(segs: &mut VecDeque<Seg>, seg: u64) -> &mut Seg {
    let s = segs.front_mut().expect("a segment in flight");
    assert_eq!(
        s.id, seg,
        "completion for a segment that is not the oldest unsealed one"
    );
    s
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
mod tests;
