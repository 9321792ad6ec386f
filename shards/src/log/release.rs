//! Releasing a log's head: whole sealed segments, oldest first, never the active one.
//!
//! A release is asked for by `release_before` or by the retention policy (both only
//! raise `want`, the first segment to keep). It becomes durable in two steps, each a
//! chain of its own, so that a crash at any point leaves the log starting at a segment
//! boundary with nothing missing in the middle:
//! 1. the release mark (`<root>/RELEASED`, see `release_mark`) is replaced: written to a
//!    temporary file, synced, renamed over the mark, the directory synced. From its
//!    completion on, the segments below it are released: readers get `Released`, and a
//!    reopen removes whatever files of them are left;
//! 2. the released files leave the segment directory one at a time, oldest first, each
//!    removal made durable (directory fsync) before the next: a file nobody reads is
//!    renamed into the spare pool if the pool for its size has room, anything else is
//!    unlinked (a reader's mapping stays valid until it drops it; a file someone reads
//!    is never reused).
//!
//! A failed step loses nothing and poisons nothing: the mark was not replaced (or a
//! removal did not happen, which a reopen finishes); it is retried after a pause, and
//! the release callers waiting get the error.

use super::ops::{Chain, IoData, OpKind};
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

/// How long after a failed release step it is retried (ns).
pub(super) const RELEASE_RETRY_NS: u64 = 1_000_000_000;

/// Held by every reader of a segment (mapped or not): a file with a live pin is never
/// reused, only unlinked.
#[derive(Debug)]
pub struct SegmentPin {
    /// The segment it pins.
    pub segment: u64,
}

/// A release step that failed.
pub(super) struct ReleaseFailure {
    pub(super) op: &'static str,
    pub(super) path: std::path::PathBuf,
    pub(super) error: io::Error,
    pub(super) retry_at: u64,
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
    /// Released segments whose files are still in the directory, oldest first:
    /// (id, file size).
    pub(super) removing: VecDeque<(u64, u64, bool)>,
    /// Spare files (released files kept for reuse): (old id, file size).
    pub(super) spares: Vec<(u64, u64)>,
    /// Readers' pins, by segment.
    pub(super) pins: HashMap<u64, Weak<SegmentPin>>,
    /// The last failed step, until a later one succeeds.
    pub(super) failure: Option<ReleaseFailure>,
    /// Failed steps so far: a release caller fails if one fails after it asked.
    pub(super) failures: u64,
    /// Bytes of the sealed segment files kept (for `RetentionPolicy::Size`).
    pub(super) sealed_bytes: u64,
    /// Time-based retention: each kept sealed segment's deadline (monotonic ns), in id
    /// order.
    pub(super) expiry: VecDeque<(u64, u64)>,
    /// The policy is `RetentionPolicy::Time`: appends note their monotonic time.
    pub(super) timed: bool,
}

/// What a `release_before` call waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReleaseTicket {
    /// Done once the log keeps nothing below this segment.
    pub first_kept: u64,
    /// Segments this call released (0 when earlier calls had asked for them all).
    pub released: usize,
    failures_seen: u64,
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
                failures_seen: self.rel.failures,
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
            failures_seen: self.rel.failures,
        })
    }

    /// `Some` once the release `t` asked for is durable, or failed (a release step
    /// failed after it was asked for, or the log was poisoned or closed first).
    pub fn release_outcome(&self, t: &ReleaseTicket) -> Option<AofResult<usize>> {
        if self.rel.first_kept >= t.first_kept {
            return Some(Ok(t.released));
        }
        if self.rel.failures > t.failures_seen {
            if let Some(f) = &self.rel.failure {
                return Some(Err(AofError::io(
                    f.op,
                    &f.path,
                    crate::error::copy_io_error(&f.error),
                )));
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
    pub(super) fn first_unsealed(&self) -> u64 {
        self.segs.front().map_or(self.next_segment, |s| s.id)
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

    fn pinned(&self, id: u64) -> bool {
        self.rel.pins.get(&id).is_some_and(|w| w.strong_count() > 0)
    }

    /// Whether segment `id`'s raw file (of `size` bytes), leaving the directory, may
    /// become a spare: nobody maps it (no pin) and the pool for its size has room.
    /// Its pin entry goes either way: the segment is on its way out.
    pub(super) fn may_spare(&mut self, id: u64, size: u64) -> bool {
        let same_size = self.rel.spares.iter().filter(|s| s.1 == size).count();
        let spare = !self.pinned(id) && same_size < self.cfg.spare_segments;
        self.rel.pins.remove(&id);
        spare
    }

    /// True while a release step is wanted or running (a close waits for the mark).
    pub(super) fn release_pending(&self) -> bool {
        self.house_io.is_some() || (self.mark_wanted() && self.rel.failure.is_none())
    }

    fn mark_wanted(&self) -> bool {
        self.rel.want > self.rel.first_kept
    }

    /// The next release chain: the mark, or the removal of the oldest released file.
    pub(super) fn poll_house(&mut self, now: u64) -> Option<Chain> {
        if self.house_io.is_some() {
            return None;
        }
        if let Some(f) = &self.rel.failure {
            if now < f.retry_at {
                return None;
            }
        }
        if self.mark_wanted() {
            return Some(self.mark_chain());
        }
        // Removals wait for a reopen once closing: the mark already released them.
        if self.closing {
            return None;
        }
        let Some(&(id, size, compressed)) = self.rel.removing.front() else {
            return self.poll_superseded().or_else(|| self.trim_spares());
        };
        // A compressed file is never a spare (it is not a segment file's size or shape).
        let spare = !compressed && self.may_spare(id, size);
        Some(self.removal(self.paths.sealed(id, compressed), id, size, spare, false))
    }

    /// The chain that takes `path` (segment `id`'s file of `size` bytes) out of the
    /// directory: renamed to a spare if `spare`, else unlinked; then the directory
    /// synced. `superseded`: a raw file a compressed copy replaced, not a released one.
    pub(super) fn removal(
        &mut self,
        path: std::path::PathBuf,
        id: u64,
        size: u64,
        spare: bool,
        superseded: bool,
    ) -> Chain {
        let first = if spare {
            OpKind::Rename {
                from: path,
                to: self.paths.spare(id),
            }
        } else {
            OpKind::Unlink { path }
        };
        let kinds = vec![
            first,
            OpKind::SyncDir {
                path: self.paths.segments.clone(),
            },
        ];
        let effect = Effect::Removed {
            seg: id,
            size,
            spare,
            superseded,
        };
        self.house_chain(kinds, effect)
    }

    /// Removes the oldest spare of a size that has more than the pool keeps (spares a
    /// crash left below the mark, or a smaller `spare_segments` than before).
    fn trim_spares(&mut self) -> Option<Chain> {
        let &(seg, _) = self.excess_spare()?;
        // Out of the pool now, so no preparation recycles it meanwhile.
        self.rel.spares.retain(|s| s.0 != seg);
        let kinds = vec![
            OpKind::Unlink {
                path: self.paths.spare(seg),
            },
            OpKind::SyncDir {
                path: self.paths.segments.clone(),
            },
        ];
        Some(self.house_chain(kinds, Effect::SpareDropped { seg }))
    }

    fn excess_spare(&self) -> Option<&(u64, u64)> {
        let keep = self.cfg.spare_segments;
        self.rel
            .spares
            .iter()
            .find(|&&(_, size)| self.rel.spares.iter().filter(|s| s.1 == size).count() > keep)
    }

    /// Spare `seg` was removed (it left the pool when its removal started).
    pub(super) fn spare_dropped(&mut self, seg: u64) -> Progress {
        assert!(
            self.rel.spares.iter().all(|s| s.0 != seg),
            "spare {seg} dropped while still in the pool"
        );
        self.rel.failure = None;
        self.metrics.segment_files_removed += 1;
        Progress::default()
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
            self.rel
                .removing
                .push_back((s.header.segment_id, s.header.file_size, s.compressed));
            self.forget_released(s);
        }
        self.rel.first_kept = mark.first_segment;
        self.rel.first_record_index = mark.first_record_index;
        self.rel.failure = None;
        self.metrics.segments_released += count as u64;
        Progress { wake_waiters: true }
    }

    /// Segment `seg`'s file left the directory (as a spare if `spare`): the oldest
    /// released one, or (`superseded`) the oldest raw file a compressed copy replaced.
    pub(super) fn removed(
        &mut self,
        seg: u64,
        size: u64,
        spare: bool,
        superseded: bool,
    ) -> Progress {
        let front = if superseded {
            self.comp.superseded.pop_front().map(|f| f.0)
        } else {
            self.rel.removing.pop_front().map(|f| f.0)
        };
        assert_eq!(front, Some(seg), "removed a segment file out of order");
        if spare {
            self.rel.spares.push((seg, size));
        }
        self.rel.failure = None;
        self.metrics.segment_files_removed += 1;
        Progress::default()
    }

    /// A release step failed: nothing is lost; it is retried after a pause.
    pub(super) fn release_failed(&mut self, effect: &Effect, e: io::Error) -> Progress {
        let (op, path) = match effect {
            Effect::MarkDurable { .. } => ("replace the release mark", self.paths.released.clone()),
            Effect::Removed {
                seg,
                superseded: true,
                ..
            } => (
                "remove the raw file of the compressed segment",
                self.paths.segment(*seg),
            ),
            Effect::Removed { seg, .. } => {
                let compressed = self.rel.removing.front().is_some_and(|r| r.2);
                (
                    "remove the released segment file",
                    self.paths.sealed(*seg, compressed),
                )
            }
            Effect::SpareDropped { seg } => ("remove the spare file", self.paths.spare(*seg)),
            _ => unreachable!("not a release effect"),
        };
        log::warn!(
            "aof2: {op} {} failed: {e}; retried in {} ms",
            path.display(),
            RELEASE_RETRY_NS / 1_000_000
        );
        self.metrics.release_failures += 1;
        self.rel.failures += 1;
        self.rel.failure = Some(ReleaseFailure {
            op,
            path,
            error: e,
            retry_at: self.clock.monotonic_ns() + RELEASE_RETRY_NS,
        });
        Progress { wake_waiters: true }
    }

    /// When a failed release step is retried, if one waits.
    pub(super) fn release_deadline(&self) -> Option<u64> {
        let f = self.rel.failure.as_ref()?;
        (self.mark_wanted()
            || !self.rel.removing.is_empty()
            || !self.comp.superseded.is_empty()
            || self.excess_spare().is_some())
        .then_some(f.retry_at)
    }
}
