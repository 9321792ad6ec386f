//! Releasing a log's head: whole sealed segments, oldest first, never the active one.
//!
//! A release is asked for by `release_before` or by the retention policy (both only
//! raise `want`, the first segment to keep). It becomes durable in two steps, so that a
//! crash at any point leaves the log starting at a segment boundary with nothing
//! missing in the middle:
//! 1. the release mark (`<root>/RELEASED`, see `release_mark`) is replaced: written to a
//!    temporary file, synced, renamed over the mark, the directory synced. From its
//!    completion on, the segments below it are released: readers get `Released`, and a
//!    reopen removes whatever files of them are left;
//! 2. the released files leave the segment directory (`removal.rs`): renamed into the
//!    spare pool if nobody maps them and the pool has room, else unlinked, each made
//!    durable with a directory fsync (a reader's mapping stays valid until it drops
//!    it; a file someone reads is never reused).
//!
//! A failed step loses nothing and poisons nothing: the mark was not replaced (or a
//! removal did not happen, which a retry or a reopen finishes); it is retried after a
//! pause. A `release_before` call fails only for its own mark or its own segments'
//! removals, never for someone else's.

use super::ops::{Chain, IoData, OpKind};
use super::removal::{Leaving, ReleaseFailure, Removal, RELEASE_RETRY_NS};
use super::{pos, Effect, LogCore, Progress};
use crate::buffer::AlignedBuf;
use crate::config::RecordId;
use crate::error::{AofError, AofResult};
use crate::format::BLOCK;
use crate::release_mark::ReleaseMark;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::{Arc, Weak};

/// The file key the release mark is written under (segment ids stay below 2^32).
pub(super) const MARK_KEY: u64 = u64::MAX;

/// Held by every reader of a segment (mapped or not): a file with a live pin is never
/// reused, only unlinked.
#[derive(Debug)]
pub struct SegmentPin {
    /// The segment it pins.
    pub segment: u64,
}

/// The release state of a log.
#[derive(Default)]
pub(super) struct Releases {
    /// Segments below this id are released (durably: the mark on disk says so).
    pub(super) first_kept: u64,
    /// Records in the released segments.
    pub(super) first_record_index: u64,
    /// Asked for: release the sealed segments below this id.
    pub(super) want: u64,
    /// Files leaving the directory, in the order queued (see `removal.rs`).
    pub(super) removals: VecDeque<Removal>,
    /// Key of the next removal queued.
    pub(super) next_removal: u64,
    /// Spare files (released files kept for reuse), oldest first: (old id, file size).
    pub(super) spares: Vec<(u64, u64)>,
    /// Readers' pins, by segment.
    pub(super) pins: HashMap<u64, Weak<SegmentPin>>,
    /// The last failed attempt to replace the mark, until one succeeds.
    pub(super) mark_failure: Option<ReleaseFailure>,
    /// Failed mark replacements so far: a release caller fails if one fails after it
    /// asked.
    pub(super) mark_failures: u64,
    /// Bytes of the sealed segment files kept (for `RetentionPolicy::Size`).
    pub(super) sealed_bytes: u64,
    /// Time-based retention: each kept sealed segment's deadline (monotonic ns), in id
    /// order.
    pub(super) expiry: VecDeque<(u64, u64)>,
    /// The policy is `RetentionPolicy::Time`: appends note their monotonic time.
    pub(super) timed: bool,
    /// Negative control for the crash checker: decide spares without looking at pins,
    /// so mapped files get recycled (the simulated disk must catch it). Tests only.
    pub(super) ignore_pins: bool,
}

/// What a `release_before` call waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReleaseTicket {
    /// Done once the log keeps nothing below this segment.
    pub first_kept: u64,
    /// Segments this call released (0 when earlier calls had asked for them all).
    pub released: usize,
    /// The first segment this call's release covers (earlier ones were asked for by
    /// others): its own removals are those from here to `first_kept`.
    from: u64,
    mark_failures_seen: u64,
}

impl LogCore {
    /// Asks for every sealed segment whose records all precede `rid` to be released.
    /// Wait for the ticket with [`Self::release_outcome`].
    pub fn request_release(&mut self, rid: RecordId) -> AofResult<ReleaseTicket> {
        self.check_open()?;
        let p = rid.as_u64();
        if p > self.end_pos() && p > self.durable {
            return Err(AofError::RecordNotFound {
                rid: rid.to_string(),
                reason: format!(
                    "past the tail of {} (next append at {})",
                    self.paths.root.display(),
                    RecordId::from_u64(self.end_pos())
                ),
            });
        }
        // A prefix of the sealed segments: each one's records all come before `rid`.
        let k = self
            .sealed
            .iter()
            .take(self.releasable())
            .take_while(|s| {
                s.footer.record_count == 0
                    || pos(s.header.segment_id, u64::from(s.footer.last_record_offset)) < p
            })
            .count();
        if k == 0 {
            // Nothing sealed precedes `rid` (what did was released already).
            return Ok(ReleaseTicket {
                first_kept: self.rel.first_kept,
                released: 0,
                from: self.rel.first_kept,
                mark_failures_seen: self.rel.mark_failures,
            });
        }
        let target = match self.sealed.get(k) {
            Some(s) => s.header.segment_id,
            None => self.first_unsealed(),
        };
        let before = self.rel.want.max(self.rel.first_kept);
        let released = self
            .sealed
            .iter()
            .filter(|s| (before..target).contains(&s.header.segment_id))
            .count();
        self.rel.want = self.rel.want.max(target);
        Ok(ReleaseTicket {
            first_kept: target,
            released,
            from: before,
            mark_failures_seen: self.rel.mark_failures,
        })
    }

    /// `Some` once the release `t` asked for is durable and its own segments' files
    /// are removed, or it failed: its mark could not be replaced (after it was asked
    /// for), one of its own files could not be removed (the release itself is durable
    /// then, and the removal is retried), or the log was poisoned or closed first.
    pub fn release_outcome(&self, t: &ReleaseTicket) -> Option<AofResult<usize>> {
        if self.rel.first_kept >= t.first_kept {
            return match self.released_removals(t.from, t.first_kept) {
                Err(e) => Some(Err(e)),
                Ok(true) => Some(Ok(t.released)),
                // A close leaves removals to the next open (the mark is durable).
                Ok(false) if self.closing || self.poisoned.is_some() => Some(Ok(t.released)),
                Ok(false) => None,
            };
        }
        if self.rel.mark_failures > t.mark_failures_seen {
            if let Some(f) = &self.rel.mark_failure {
                return Some(Err(f.error()));
            }
        }
        if let Some(e) = self.poison() {
            return Some(Err(e));
        }
        // A close finishes a release asked for before it (it waits for the mark).
        if self.closing && !self.release_pending() {
            return Some(Err(AofError::Closed {
                path: self.paths.root.clone(),
            }));
        }
        None
    }

    /// The id of the first segment not sealed: the active (or rolling) one, else the
    /// id the next segment will get.
    pub fn first_unsealed(&self) -> u64 {
        match (self.segs.front(), self.continuable()) {
            (Some(s), _) => s.id,
            // Sealed, but this session may continue it (`continuation.rs`).
            (None, Some(id)) => id,
            (None, None) => self.next_segment,
        }
    }

    /// Where the log starts: the first record the log keeps (it may not be written
    /// yet), as a `RecordId` of the first segment kept.
    pub fn first_record(&self) -> RecordId {
        let seg = self
            .sealed
            .first()
            .map(|s| s.header.segment_id)
            .unwrap_or_else(|| self.first_unsealed())
            .max(self.rel.first_kept);
        RecordId::from_parts(
            u32::try_from(seg).unwrap_or(u32::MAX),
            crate::format::HEADER_LEN as u32,
        )
    }

    /// Segments below this id were released.
    pub fn first_kept(&self) -> u64 {
        self.rel.first_kept
    }

    /// `Err(Released)` if segment `id` was released.
    pub fn check_kept(&self, id: u64) -> AofResult<()> {
        if id < self.rel.first_kept {
            return Err(AofError::Released {
                path: self.paths.root.clone(),
                segment: id,
                first_kept: self.rel.first_kept,
            });
        }
        Ok(())
    }

    /// A pin on segment `id` for a reader (taken under the log lock, with the lookup
    /// that found the segment, so a release decided later sees it).
    pub fn pin(&mut self, id: u64) -> Arc<SegmentPin> {
        if let Some(p) = self.rel.pins.get(&id).and_then(Weak::upgrade) {
            return p;
        }
        if self.rel.pins.len() >= 64 {
            self.rel.pins.retain(|_, w| w.strong_count() > 0);
        }
        let p = Arc::new(SegmentPin { segment: id });
        self.rel.pins.insert(id, Arc::downgrade(&p));
        p
    }

    /// True while a release step is wanted or running (a close waits for the mark).
    pub(super) fn release_pending(&self) -> bool {
        self.house_io.is_some() || (self.mark_wanted() && self.rel.mark_failure.is_none())
    }

    fn mark_wanted(&self) -> bool {
        self.rel.want > self.rel.first_kept
    }

    /// The next house chain: the mark (unless it waits out a failure's pause), else a
    /// file's removal (`removal.rs`).
    pub(super) fn poll_house(&mut self, now: u64) -> Option<Chain> {
        if self.house_io.is_some() {
            return None;
        }
        let mark_waits = self
            .rel
            .mark_failure
            .as_ref()
            .is_some_and(|f| now < f.retry_at);
        if self.mark_wanted() && !mark_waits {
            return Some(self.mark_chain());
        }
        // Removals wait for a reopen once closing: the mark already released them.
        if self.closing {
            return None;
        }
        self.poll_removals(now)
    }

    /// How many of the oldest sealed segments a release asked for (not released yet).
    pub(super) fn sealed_wanted(&self) -> usize {
        self.sealed
            .iter()
            .take_while(|s| s.header.segment_id < self.rel.want)
            .count()
    }

    fn mark_chain(&mut self) -> Chain {
        let k = self.sealed_wanted();
        let first_record_index = match self.sealed.get(k) {
            Some(s) => s.header.base_record_index,
            None => match self.segs.front() {
                Some(s) => s.header.base_record_index,
                None => self.records_total,
            },
        };
        let mark = ReleaseMark {
            first_segment: self.rel.want,
            first_record_index,
        };
        let block = AlignedBuf::zeroed_block(self.arena.as_ref());
        // SAFETY: a fresh block, ours alone.
        unsafe { block.write(0, &mark.encode()) };
        debug_assert_eq!(block.len(), BLOCK);
        let tmp = self.paths.released_tmp.clone();
        let kinds = vec![
            OpKind::Unlink { path: tmp.clone() },
            OpKind::Create {
                seg: MARK_KEY,
                path: tmp.clone(),
                mode: self.cfg.file_mode,
            },
            OpKind::Write {
                seg: MARK_KEY,
                offset: 0,
                data: vec![IoData::Owned(block)],
            },
            OpKind::Sync { seg: MARK_KEY },
            OpKind::Close { seg: MARK_KEY },
            OpKind::Rename {
                from: tmp,
                to: self.paths.released.clone(),
            },
            OpKind::SyncDir {
                path: self.paths.root.clone(),
            },
        ];
        self.house_chain(kinds, Effect::MarkDurable { mark, count: k })
    }

    pub(super) fn house_chain(&mut self, kinds: Vec<OpKind>, effect: Effect) -> Chain {
        let ops: Vec<_> = kinds.into_iter().map(|k| self.op(k)).collect();
        self.house_io = Some(super::InFlight {
            ids: ops.iter().map(|o| o.id).collect(),
            done: 0,
            failed: None,
            effect,
        });
        Chain { ops }
    }

    /// The release mark is durable: the first `count` sealed segments are released.
    pub(super) fn mark_durable(&mut self, mark: ReleaseMark, count: usize) -> Progress {
        assert!(
            mark.first_segment >= self.rel.first_kept,
            "the release mark of {} would move back from segment {} to {}",
            self.paths.root.display(),
            self.rel.first_kept,
            mark.first_segment
        );
        let released: Vec<_> = self.sealed.drain(..count).collect();
        for s in &released {
            assert!(s.header.segment_id < mark.first_segment);
            if s.local {
                self.queue_removal(
                    s.header.segment_id,
                    s.header.file_size,
                    Leaving::Released {
                        compressed: s.compressed,
                    },
                );
            }
            self.forget_released(s);
            self.release_archived(s);
        }
        self.rel.first_kept = mark.first_segment;
        self.rel.first_record_index = mark.first_record_index;
        self.rel.mark_failure = None;
        self.metrics.segments_released += count as u64;
        Progress { wake_waiters: true }
    }

    /// Replacing the mark failed: nothing is released; it is retried after a pause,
    /// and the release callers waiting get the error.
    pub(super) fn mark_failed(&mut self, e: io::Error) -> Progress {
        let path = self.paths.released.clone();
        log::warn!(
            "aof2: replacing the release mark {} failed: {e}; retried in {} ms",
            path.display(),
            RELEASE_RETRY_NS / 1_000_000
        );
        self.metrics.release_failures += 1;
        self.rel.mark_failures += 1;
        self.rel.mark_failure = Some(ReleaseFailure {
            op: "replace the release mark",
            path,
            error: e,
            retry_at: self.clock.monotonic_ns() + RELEASE_RETRY_NS,
        });
        Progress { wake_waiters: true }
    }

    /// When a failed release step is retried, if one waits.
    pub(super) fn release_deadline(&self) -> Option<u64> {
        let mark = self
            .rel
            .mark_failure
            .as_ref()
            .filter(|_| self.mark_wanted())
            .map(|f| f.retry_at);
        [mark, self.removal_deadline()].into_iter().flatten().min()
    }
}
