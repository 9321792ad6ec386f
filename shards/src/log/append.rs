//! The append side of the log core: single records, atomic batches and in-place
//! appends; making room (admission, opening the next segment, buffers) and building
//! frames in the segment's buffers.

use super::segment::{self, take_buffer};
use super::{Appended, LogCore};
use crate::config::RecordId;
use crate::error::{AofError, AofResult, WouldBlockKind};
use crate::format::{self, FrameKind, HEADER_LEN};
use std::sync::Arc;

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

/// Builds a whole frame in `f` (exactly its size) in place: the header's tail, the
/// payload (copied, or written by `fill`), the zero padding, then the checksum over
/// all of it in one pass. Returns the checksum; `Err` (nothing but `f` touched) when
/// `fill` panicked.
fn build_frame(
    f: &mut [u8],
    seed: u32,
    tail: &[u8; format::FRAME_HEADER_LEN - 4],
    len: usize,
    payload: Payload<'_>,
) -> Result<u32, FillPanic> {
    let h = format::FRAME_HEADER_LEN;
    f[4..h].copy_from_slice(tail);
    match payload {
        Payload::Bytes(p) => f[h..h + len].copy_from_slice(p),
        Payload::Fill(fill) => segment::run_fill(fill, &mut f[h..h + len])?,
    }
    f[h + len..].fill(0);
    let crc = format::frame_crc_of(seed, &f[4..]);
    f[..4].copy_from_slice(&crc.to_le_bytes());
    Ok(crc)
}

/// A segment `reserve` opened for the record it reserved room for, and what it changed
/// to do so: undone if that record is not appended after all (its `fill` panicked).
#[derive(Debug, Clone, Copy)]
pub(super) struct JustOpened {
    id: u64,
    size: u64,
    rolled_prev: bool,
    recycled: bool,
}

impl LogCore {
    /// Puts back the segment `o` describes: still empty, nothing of it written (the
    /// log's lock was held since it opened), it becomes the next prepared file again,
    /// and the segment before it takes appends again if only this roll ended it.
    fn undo_open(&mut self, o: JustOpened) {
        let s = self.segs.pop_back().expect("the segment just opened");
        assert!(
            s.id == o.id && s.record_count == 0 && s.written_end == 0 && !s.header_durable,
            "segment {} of {} was used before its opening could be undone",
            s.id,
            self.paths.root.display()
        );
        for (_, b) in s.bufs {
            if let Ok(b) = Arc::try_unwrap(b) {
                self.pool.push(b);
            }
        }
        self.next_segment = o.id;
        self.prepared.push_front((o.id, o.size));
        if o.recycled {
            self.recycled.insert(o.id);
        }
        if o.rolled_prev {
            if let Some(prev) = self.segs.back_mut() {
                prev.rolled = false;
            }
        }
    }

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
            // Nothing was appended; a segment opened for it goes back to the prepared
            // files, as if the append had never come (so a close right after marks it
            // `.ready`, and ids stay dense).
            Err(p) => {
                if let Some(o) = self.just_opened.take() {
                    self.undo_open(o);
                }
                return Ok(Err(p));
            }
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
        self.just_opened = None;
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
            // Uploads failing or far behind hold the directory past its bound: past
            // the ceiling, no new segment.
            if let Some(e) = self.archive_backlog_error() {
                return Err(e);
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
                    let mut rolled_prev = false;
                    if let Some(s) = self.segs.back_mut() {
                        if !s.rolled {
                            let (size, opened) = (s.header.file_size, s.opened_mono);
                            s.rolled = true;
                            rolled_prev = true;
                            self.filled(size, opened, self.clock.monotonic_ns());
                        }
                    }
                    let recycled = self.recycled.contains(&id);
                    self.open_segment(psize);
                    self.just_opened = Some(JustOpened {
                        id,
                        size: psize,
                        rolled_prev,
                        recycled,
                    });
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
            let buf = take_buffer(
                &mut self.pool,
                self.arena.as_ref(),
                s.buf_size,
                &mut self.metrics.buffers_allocated,
            );
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
            // The common case: the frame lies in one buffer.
            build_frame(f, s.seed, &tail, len, payload)?
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
        Ok(self.frames_put(1, off, end, crc, ts, len as u64))
    }

    /// Records that `n` records (`bytes` of payload) now lie in the active segment up to
    /// `end`, the last at `last` with checksum `crc`, appended at `ts`; returns the last
    /// one's id.
    fn frames_put(
        &mut self,
        n: u64,
        last: u64,
        end: u64,
        crc: u32,
        ts: u64,
        bytes: u64,
    ) -> RecordId {
        let s = self.segs.back_mut().expect("a segment to append to");
        s.last_crc = crc;
        s.appended_end = end;
        s.record_count += n;
        s.last_record_offset = last as u32;
        s.newest_ts = ts;
        if self.rel.timed {
            s.newest_mono = self.clock.monotonic_ns();
        }
        let rid = RecordId::from_parts(
            u32::try_from(s.id).expect("segment ids fit 32 bits (checked before a segment opens)"),
            u32::try_from(last).expect("segments are smaller than 4 GiB"),
        );
        self.records_total += n;
        self.metrics.records_appended += n;
        self.metrics.bytes_appended += bytes;
        rid
    }

    /// [`LogCore::put_frame`] for a whole batch whose `total` frame bytes lie in one
    /// buffer: built in place in one pass, the segment's state updated once. `None`
    /// (nothing written) when the frames straddle buffers.
    fn put_batch_in_place(&mut self, records: &[&[u8]], total: u64, ts: u64) -> Option<RecordId> {
        let s = self.segs.back_mut().expect("a segment to append to");
        let start = s.appended_end;
        let slot = s.frame_slot(start, total as usize)?;
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
            prev = build_frame(f, seed, &tail, p.len(), Payload::Bytes(p))
                .unwrap_or_else(|_| unreachable!("copying bytes never panics"));
            at += size;
            bytes += p.len() as u64;
        }
        assert_eq!(at as u64, total, "a batch's frames fill what was reserved");
        let last = start + total - format::frame_size(records[n - 1].len()) as u64;
        Some(self.frames_put(n as u64, last, start + total, prev, ts, bytes))
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
}
