//! What a log holds as it grows and as it goes quiet: segment sizes that start at
//! `segment_min_bytes` and grow toward `segment_target_bytes` as the write rate asks
//! (a segment should take about `GROW_WINDOW_NS` to fill); buffers sized to their
//! segment; the next file prepared only once the active segment is filling (or the
//! log has shown it is busy); and an idle log's buffers given back.

use super::segment::block_floor;
use super::{LogCore, BUF_SIZE};
use crate::buffer::AlignedBuf;
use crate::format::{BLOCK, FOOTER_REGION, HEADER_LEN};

/// Segments are sized to fill in about this long at the rate the last one filled.
pub(super) const GROW_WINDOW_NS: u64 = 10_000_000_000;

/// A log with nothing appended for this long, everything durable, gives its buffers
/// back (the shard wakes once for it).
pub(super) const IDLE_NS: u64 = 50_000_000;

/// The smallest buffer a segment gets: 16 per segment, but never smaller than this.
const MIN_BUF: usize = 64 << 10;

impl LogCore {
    /// Size of a new segment file for a record of `frame` bytes: the current size, or
    /// what an oversize record needs.
    pub(super) fn segment_size_for(&self, frame: u64) -> u64 {
        let need = Self::file_bytes_for(frame);
        if need <= self.seg_size {
            self.seg_size
        } else {
            (need.div_ceil(BLOCK as u64) * BLOCK as u64).max(self.cfg.segment_min_bytes)
        }
    }

    /// Size of the file prepared ahead of the active segment: the grown size, but at
    /// most twice the active segment's, so its zeros fit in the active segment's
    /// runway in paced pieces (`zero_pace.rs`). A busy new log then ramps 1, 1, 2, 4,
    /// 8, 16 MiB, rather than zeroing a 16 MiB file in 1 MiB steps while its 1 MiB
    /// segment fills, which put a 1 MiB cache flush on a dozen commits in a row.
    pub(super) fn ahead_size(&self) -> u64 {
        match self.segs.back() {
            Some(s) => floor_pow2(s.header.file_size.saturating_mul(2))
                .clamp(self.cfg.segment_min_bytes, self.seg_size),
            None => self.seg_size,
        }
    }

    /// A prepared file of `size` bytes takes a record of `frame` bytes.
    pub(super) fn fits(size: u64, frame: u64) -> bool {
        Self::file_bytes_for(frame) <= size
    }

    /// The smallest file a segment whose first record is `frame` bytes needs.
    fn file_bytes_for(frame: u64) -> u64 {
        HEADER_LEN as u64 + frame + FOOTER_REGION
    }

    /// The active segment of `size` bytes, opened at monotonic `opened_mono`, filled up
    /// (a record did not fit) at `now`: later segments get the size that would take
    /// `GROW_WINDOW_NS` to fill at that rate (a power of two, up to the target). Sizes
    /// never shrink within a session.
    pub(super) fn filled(&mut self, size: u64, opened_mono: u64, now: u64) {
        let took = now.saturating_sub(opened_mono).max(1);
        let want = (size as u128 * GROW_WINDOW_NS as u128 / took as u128)
            .min(self.cfg.segment_target_bytes as u128) as u64;
        let want = want
            .next_power_of_two()
            .clamp(self.cfg.segment_min_bytes, self.cfg.segment_target_bytes);
        self.seg_size = self.seg_size.max(want);
        self.filled_once = true;
    }

    /// Bytes per buffer of a segment of `file_size` bytes: the log's buffer size (1 MiB,
    /// the registered arena's size class) from the target size on; below it, while the
    /// log is small, a sixteenth of the segment (a power of two, at least 64 KiB).
    /// Always a whole number of blocks: a write is cut at buffer edges, and O_DIRECT
    /// takes only whole blocks (an oversize record's file, block-rounded, is not a power
    /// of two, and a sixteenth of it is not a multiple of a block).
    pub(super) fn buffer_size_for(&self, file_size: u64) -> usize {
        let want = if file_size >= self.cfg.segment_target_bytes {
            BUF_SIZE
        } else {
            floor_pow2(file_size / 16).clamp(MIN_BUF as u64, BUF_SIZE as u64) as usize
        };
        let size = want.min(self.buf_size).min(file_size as usize);
        let size = size / BLOCK * BLOCK;
        assert!(
            size >= BLOCK && size.is_multiple_of(BLOCK),
            "buffer size {size} for a file of {file_size} bytes is not whole blocks"
        );
        size
    }

    /// The next segment file is prepared ahead once the active segment is a quarter
    /// full, or at once (spread over the whole segment, in small steps) once the log has
    /// filled a segment in this session: it is busy. Not at open: a log that never
    /// fills its first segment never needs a second file.
    pub(super) fn active_is_filling(&self) -> bool {
        let busy = self.filled_once;
        self.segs
            .back()
            .is_some_and(|s| busy || s.rolled || s.appended_end * 4 >= s.capacity)
    }

    /// Nothing in flight, nothing unflushed, no roll pending: the log could sleep.
    fn quiet(&self) -> bool {
        self.data_io.is_none()
            && self.durable >= self.end_pos()
            && self.segs.len() <= 1
            && self.segs.back().is_none_or(|s| {
                !s.rolled && s.written_end >= s.appended_end && s.durable_end >= s.appended_end
            })
    }

    /// Gives an idle log's buffers back at monotonic `now`: a coarse timer runs while
    /// the log holds buffers (so a busy log does not move the shard's deadline on every
    /// flush); when it fires and nothing was appended since it was armed, and the log
    /// is quiet, the buffers go. The active segment keeps only a copy of its partly
    /// filled last block, put back in a fresh buffer by the next append.
    pub(super) fn poll_idle(&mut self, now: u64) {
        let holds = !self.pool.is_empty() || self.segs.back().is_some_and(|s| !s.bufs.is_empty());
        if !holds {
            self.idle_at = None;
            return;
        }
        match self.idle_at {
            None => self.idle_at = Some((self.records_total, now + IDLE_NS)),
            Some((records, at)) if now >= at => {
                if records != self.records_total || !self.quiet() {
                    self.idle_at = Some((self.records_total, now + IDLE_NS));
                    return;
                }
                self.idle_at = None;
                self.trim_pool(0);
                if let Some(s) = self.segs.back_mut() {
                    let from = block_floor(s.appended_end);
                    let mut tail = vec![0u8; (s.appended_end - from) as usize];
                    if !tail.is_empty() {
                        s.copy_to(from, &mut tail);
                    }
                    for (_, b) in s.bufs.drain(..) {
                        if let (Ok(b), Some(a)) = (std::sync::Arc::try_unwrap(b), &self.arena) {
                            a.keep(b);
                        }
                    }
                    s.bufs_end = from;
                    s.parked_tail = Some(tail);
                }
                self.metrics.idle_buffer_releases += 1;
            }
            Some(_) => {}
        }
    }

    /// Keeps at most `keep` spare buffers, all of the size the active segment takes;
    /// the rest go to the shard's spares. Buffer sizes only grow within a session, so a
    /// spare of another size would sit here for good while every new buffer of the
    /// grown segments is allocated (and page-faulted) afresh.
    pub(super) fn trim_pool(&mut self, keep: usize) {
        if let Some(size) = self.segs.back().map(|s| s.buf_size) {
            let mut i = 0;
            while i < self.pool.len() {
                if self.pool[i].len() == size {
                    i += 1;
                } else {
                    let b = self.pool.swap_remove(i);
                    self.spare_out(b);
                }
            }
        }
        while self.pool.len() > keep {
            let b = self.pool.pop().expect("longer than keep");
            self.spare_out(b);
        }
    }

    fn spare_out(&self, b: AlignedBuf) {
        if let Some(a) = &self.arena {
            a.keep(b);
        }
    }

    /// When an idle log gives its buffers back (monotonic ns), if armed.
    pub(super) fn idle_deadline(&self) -> Option<u64> {
        self.idle_at.map(|(_, at)| at)
    }
}

/// The largest power of two not above `x` (1 for 0).
fn floor_pow2(x: u64) -> u64 {
    if x <= 1 {
        1
    } else {
        1 << (63 - x.leading_zeros())
    }
}
