//! The segment a log appends to, and its in-memory buffers: where the unsafe buffer
//! contract is kept.
//!
//! A segment's bytes live in aligned buffers shared by appenders, which copy frames in
//! under the log's lock, and the executor, which writes finished ranges out without
//! it. The rule that makes this sound: appenders write only at or past the append
//! end, and writes read only below the append end snapshotted under the lock; the
//! partly filled last block goes out from a separate zero-padded bounce block, never
//! from memory an appender may still be filling.

use super::ops::IoData;
use crate::buffer::{AlignedBuf, BufferArena};
use crate::format::{SegmentHeader, BLOCK, HEADER_LEN};
use std::collections::VecDeque;
use std::sync::Arc;

/// Size of each in-memory log buffer (smaller for small segments).
pub const BUF_SIZE: usize = 1 << 20;

/// Spare buffers a log keeps for reuse (fresh ones cost page faults).
pub(super) const POOL_BUFFERS: usize = 2;

/// A buffer of `size` bytes from the pool, or the arena, or a new one (counted in
/// `allocated`). Contents are stale: every byte written to disk from a buffer is
/// written by an appender first.
pub(super) fn take_buffer(
    pool: &mut Vec<AlignedBuf>,
    arena: Option<&Arc<BufferArena>>,
    size: usize,
    allocated: &mut u64,
) -> AlignedBuf {
    if let Some(i) = pool.iter().position(|b| b.len() == size) {
        return pool.swap_remove(i);
    }
    arena.and_then(|a| a.take(size)).unwrap_or_else(|| {
        *allocated += 1;
        AlignedBuf::zeroed(size)
    })
}

pub(super) const fn block_floor(x: u64) -> u64 {
    x & !(BLOCK as u64 - 1)
}

/// Runs an `append_with` closure on `dst`, catching its panic (resumed by the caller
/// once the log's lock is let go).
pub(super) fn run_fill(
    fill: &mut dyn FnMut(&mut [u8]),
    dst: &mut [u8],
) -> Result<(), super::FillPanic> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fill(dst)))
}

/// A segment that is being appended to or not yet sealed.
pub(super) struct Seg {
    pub(super) id: u64,
    pub(super) header: SegmentHeader,
    pub(super) header_bytes: [u8; HEADER_LEN],
    pub(super) seed: u32,
    pub(super) capacity: u64,
    pub(super) buf_size: usize,
    /// Buffers tiling [bufs[0].0, bufs_end), each `buf_size` bytes.
    pub(super) bufs: VecDeque<(u64, Arc<AlignedBuf>)>,
    pub(super) bufs_end: u64,
    pub(super) appended_end: u64,
    pub(super) last_crc: u32,
    pub(super) record_count: u64,
    pub(super) last_record_offset: u32,
    /// No more appends go here; seal once everything in it is durable.
    pub(super) rolled: bool,
    /// Rolled by the log's close (not by a roll, `seal_active` or its max age): its
    /// seal may say it closed cleanly, so the next session may continue it.
    pub(super) rolled_by_close: bool,
    pub(super) header_durable: bool,
    /// Bytes [0, written_end) are on disk (not necessarily synced).
    pub(super) written_end: u64,
    /// Frames below this end are durable.
    pub(super) durable_end: u64,
    /// Timestamp of its newest record (ns since the epoch; 0 while it holds none).
    pub(super) newest_ts: u64,
    /// When its newest record was appended (monotonic ns; kept only under time
    /// retention, which measures a record's age on this clock while the log is open).
    pub(super) newest_mono: u64,
    /// When it was opened (monotonic ns): the age `segment_max_age_seconds` limits.
    pub(super) opened_mono: u64,
    /// Idle: the buffers were given back, and this is the partly filled last block's
    /// prefix (`[block_floor(appended_end), appended_end)`), for the next append to put
    /// back into a fresh buffer.
    pub(super) parked_tail: Option<Vec<u8>>,
}

impl Seg {
    pub(super) fn buf_index(&self, off: u64) -> usize {
        ((off - self.bufs[0].0) / self.buf_size as u64) as usize
    }

    /// Copies `bytes` to segment offset `off` (must be inside the buffers).
    pub(super) fn copy_in(&self, mut off: u64, mut bytes: &[u8]) {
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

    /// The bytes of a frame of `len` bytes at segment offset `off` (at or past the
    /// append end, inside the buffers), to write in place, if they lie in one buffer.
    #[allow(clippy::mut_from_ref)]
    pub(super) fn frame_slot(&self, off: u64, len: usize) -> Option<&mut [u8]> {
        // Appends go to the last buffer (rarely the one before): skip the division.
        let last = self.bufs.back().expect("buffers cover the append end");
        let (base, buf) = if off >= last.0 {
            last
        } else {
            &self.bufs[self.buf_index(off)]
        };
        let at = (off - base) as usize;
        if at + len > self.buf_size {
            return None;
        }
        // SAFETY: [off, off + len) is at or past the append end, which only the holder
        // of the log lock (us) writes and no write reads; the caller drops the slice
        // before it moves the append end or lets go of the lock.
        Some(unsafe { buf.slice_mut(at, len) })
    }

    /// Lets `fill` write the `len` payload bytes at segment offset `off` (at or past the
    /// append end, inside the buffers) in place, then returns `crc` of them. Bytes that
    /// straddle two buffers go through a scratch copy. When `fill` panics, its payload
    /// is returned and nothing else happened: its bytes lie past the append end, which
    /// is where later appends write and which no write reads.
    pub(super) fn fill_in(
        &self,
        off: u64,
        len: usize,
        fill: &mut dyn FnMut(&mut [u8]),
        crc: impl FnOnce(&[u8]) -> u32,
    ) -> Result<u32, super::FillPanic> {
        if len == 0 {
            run_fill(fill, &mut [])?;
            return Ok(crc(&[]));
        }
        if let Some(dst) = self.frame_slot(off, len) {
            run_fill(fill, dst)?;
            return Ok(crc(dst));
        }
        let mut scratch = vec![0u8; len];
        run_fill(fill, &mut scratch)?;
        self.copy_in(off, &scratch);
        Ok(crc(&scratch))
    }

    /// Copies segment bytes [from, from + dst.len()) (below the append end) into `dst`.
    pub(super) fn copy_to(&self, from: u64, dst: &mut [u8]) {
        assert!(from + dst.len() as u64 <= self.appended_end);
        let (base, buf) = &self.bufs[self.buf_index(from)];
        let at = (from - base) as usize;
        assert!(at + dst.len() <= self.buf_size, "a copy across buffers");
        // SAFETY: below the append end (stable while we hold the log lock).
        dst.copy_from_slice(unsafe { buf.slice(at, dst.len()) });
    }

    /// Copies segment bytes [from, to) out of the buffers (below the append end).
    pub(super) fn copy_out(&self, from: u64, dst: &AlignedBuf) {
        let to = self.appended_end.min(from + BLOCK as u64);
        let (base, buf) = &self.bufs[self.buf_index(from)];
        let at = (from - base) as usize;
        // SAFETY: below the append end (stable), and `dst` is exclusively ours.
        unsafe { dst.write(0, buf.slice(at, (to - from) as usize)) };
    }
}

/// The oldest unsealed segment, which every data chain targets.
pub(super) fn front_of(segs: &mut VecDeque<Seg>, seg: u64) -> &mut Seg {
    let s = segs.front_mut().expect("a segment in flight");
    assert_eq!(
        s.id, seg,
        "completion for a segment that is not the oldest unsealed one"
    );
    s
}

impl Seg {
    /// The pieces to write segment bytes [from, to): whole blocks straight from the
    /// buffers, the partly filled last block from a zero-padded bounce copy.
    pub(super) fn write_data(
        &self,
        from: u64,
        to: u64,
        arena: Option<&Arc<BufferArena>>,
    ) -> Vec<IoData> {
        let s = self;
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
            from.is_multiple_of(BLOCK as u64)
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

    /// Drops buffers wholly below the block that the next write starts at.
    pub(super) fn release_buffers(&mut self, pool: &mut Vec<AlignedBuf>) {
        let s = self;
        let keep_from = block_floor(s.written_end);
        while let Some((base, _)) = s.bufs.front() {
            if base + s.buf_size as u64 > keep_from {
                break;
            }
            let (_, b) = s.bufs.pop_front().expect("front exists");
            if let Ok(b) = Arc::try_unwrap(b) {
                pool.push(b); // trimmed to POOL_BUFFERS by the log
            }
        }
    }
}
