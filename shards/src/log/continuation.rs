//! Continuing the last segment after a clean close, so a log opened often (a tool, a
//! cron job, a test: open, append a little, close) does not leave a new segment file
//! behind each time.
//!
//! A clean close seals its last segment with the footer flag `closed_cleanly`: no
//! record id past its data end, nor in any later segment, was handed out. The next
//! session may then append to it again:
//! 1. At open the segment stays sealed (readers map it, streams read it) and the
//!    durable position is its data end, where the next record goes.
//! 2. The first append that needs a segment, if its record fits, asks for the
//!    *unseal*: the file is opened and its footer block zeroed and synced (a chain on
//!    the preparation slot). Until that is durable no id in the segment is handed out,
//!    so a crash before it leaves the footer (and the ids past it) as they were; a crash
//!    after it leaves an unsealed last segment, which recovery verifies and seals at its
//!    last valid frame, without the flag: that session's unacknowledged ids are never
//!    handed out again, because the one after it starts a new segment.
//! 3. Once unsealed, the segment is the active one again: appends continue its frame
//!    chain at its data end, and the first write rewrites its partly filled last block
//!    with the bytes it had (read at open) in front, as any rewrite of a partial block.
//!
//! The continuation is abandoned (the segment stays sealed, the log starts a new one)
//! when the first record does not fit, when the segment is older than the log's
//! `segment_max_age_seconds` (or the ttl of time retention) would let it get, or when
//! the log closes first. While it may still be continued, the segment is neither
//! released nor compressed.

use super::ops::{Chain, IoData, OpKind};
use super::segment::{block_floor, Seg};
use super::{pos, Continuable, Effect, LogCore, Progress};
use crate::format::{self, BLOCK, FOOTER_REGION, HEADER_LEN};
use std::collections::VecDeque;

/// The last segment, sealed by a clean close, that this session may continue.
pub(super) struct Cont {
    pub(super) id: u64,
    /// Its partly filled last block's bytes (see [`Continuable::tail`]).
    tail: Vec<u8>,
    /// An append waits for it: unseal it.
    wanted: bool,
    /// The unseal chain is in flight.
    unsealing: bool,
}

impl LogCore {
    /// Takes note of a segment recovery found sealed by a clean close: this session
    /// continues it (at the first append that fits) if it is the last sealed segment,
    /// has room, and is not too old to take more records.
    pub(super) fn offer_continuation(&mut self, c: Continuable) {
        let Some(s) = self.sealed.last() else { return };
        // A version 1 segment has no frame flags: new records go to a new segment.
        if s.header.segment_id != c.segment
            || s.compressed
            || s.header.version < crate::format::SEGMENT_VERSION
        {
            return;
        }
        let room = format::data_capacity(s.header.file_size)
            >= s.footer.data_end + format::frame_size(0) as u64;
        let age = self
            .clock
            .realtime_ns()
            .saturating_sub(s.header.created_at_ns);
        let young = self.max_age_ns().is_none_or(|max| age < max);
        if !room || !young || c.segment < self.rel.first_kept {
            return;
        }
        // Its next record goes at its data end: nothing at or past it is durable.
        self.durable = pos(c.segment, s.footer.data_end);
        self.cont = Some(Cont {
            id: c.segment,
            tail: c.tail,
            wanted: false,
            unsealing: false,
        });
    }

    /// The segment this session may still continue (sealed now; a stream that read it
    /// to its end waits there rather than move past it).
    pub fn continuable(&self) -> Option<u64> {
        self.cont.as_ref().map(|c| c.id)
    }

    /// Sealed segments that release and retention may take: all but one that may
    /// still be continued.
    pub(super) fn releasable(&self) -> usize {
        self.sealed.len() - usize::from(self.cont.is_some())
    }

    /// For an append that needs a segment while none is active: `Some(true)` when it
    /// must wait for the continued segment's unseal (now asked for), `None` when there
    /// is nothing to continue (any more: a record that does not fit, or a closing log,
    /// abandons the continuation).
    pub(super) fn continue_for(&mut self, frame: u64) -> Option<bool> {
        let cont = self.cont.as_mut()?;
        if cont.unsealing {
            // Wait for it: then it is the active segment, and a record that does not
            // fit rolls it as usual (segments stay in id order).
            return Some(true);
        }
        let s = self.sealed.last().expect("a continuable segment is sealed");
        let fits = s.footer.data_end + frame <= format::data_capacity(s.header.file_size);
        if !fits || self.closing {
            self.abandon_continuation();
            return None;
        }
        cont.wanted = true;
        Some(true)
    }

    /// Gives up continuing: the segment stays sealed, and the log's next records go to
    /// a new segment.
    pub(super) fn abandon_continuation(&mut self) {
        if self.cont.as_ref().is_some_and(|c| c.unsealing) {
            return; // its footer is being zeroed: it will be continued
        }
        if self.cont.take().is_some() && self.segs.is_empty() {
            self.advance_durable(pos(self.next_segment, HEADER_LEN as u64));
        }
    }

    /// The unseal chain, when an append waits for the continued segment: open its file,
    /// zero its footer block, sync.
    pub(super) fn poll_unseal(&mut self) -> Option<Chain> {
        let c = self.cont.as_ref()?;
        if !c.wanted || c.unsealing || self.closing {
            return None;
        }
        let s = self.sealed.last().expect("a continuable segment is sealed");
        let (seg, size) = (c.id, s.header.file_size);
        let kinds = vec![
            OpKind::Open {
                seg,
                path: self.paths.segment(seg),
            },
            OpKind::Write {
                seg,
                offset: size - FOOTER_REGION,
                data: vec![IoData::Zeros(BLOCK)],
            },
            OpKind::Sync { seg },
        ];
        self.cont.as_mut().expect("checked").unsealing = true;
        Some(self.chain(kinds, Effect::Unsealed { seg }, true))
    }

    /// Segment `seg`'s footer is zeroed, durably: it is the active segment again.
    pub(super) fn unsealed(&mut self, seg: u64) -> Progress {
        let c = self.cont.take().expect("an unseal was running");
        assert_eq!(c.id, seg, "an unseal completed for another segment");
        let sealed = self.sealed.pop().expect("the continued segment is sealed");
        assert_eq!(
            sealed.header.segment_id, seg,
            "the continued segment is the last"
        );
        // Retention no longer counts it as sealed.
        self.rel.sealed_bytes -= sealed.disk_bytes;
        if self.rel.expiry.back().is_some_and(|e| e.0 == seg) {
            self.rel.expiry.pop_back();
        }
        let f = sealed.footer;
        let now = self.clock.monotonic_ns();
        let age = self
            .clock
            .realtime_ns()
            .saturating_sub(sealed.header.created_at_ns);
        let file_size = sealed.header.file_size;
        let mut s = Seg {
            id: seg,
            header: sealed.header,
            header_bytes: sealed.header.encode().0,
            seed: sealed.seed,
            capacity: format::data_capacity(file_size),
            buf_size: self.buffer_size_for(file_size),
            bufs: VecDeque::new(),
            bufs_end: block_floor(f.data_end),
            appended_end: f.data_end,
            last_crc: f.last_frame_crc,
            record_count: f.record_count,
            last_record_offset: f.last_record_offset,
            rolled: false,
            rolled_by_close: false,
            header_durable: true,
            written_end: f.data_end,
            durable_end: f.data_end,
            newest_ts: f.sealed_at_ns,
            newest_mono: now,
            // Its age counts from when it was created, in whichever session.
            opened_mono: now.saturating_sub(age),
            parked_tail: Some(c.tail),
        };
        if self.closing {
            // Closed meanwhile: sealed again (with the flag) by the close.
            s.rolled = s.record_count > 0;
            s.rolled_by_close = s.rolled;
        }
        self.segs.push_back(s);
        self.metrics.segments_continued += 1;
        Progress { wake_waiters: true }
    }
}
