//! Files leaving a log's segment directory, one at a time: released segments' files
//! (after the release mark made their release durable), raw files a compressed copy
//! replaced, and spares beyond the pool's bound. Each is a queue entry whose removal is
//! a house chain of two steps, the file's rename into the spare pool or its unlink,
//! then a directory fsync that makes it durable.
//!
//! The rules that keep a retry safe:
//! - **The decision is made once.** Whether a file becomes a spare or is unlinked is
//!   decided at its first attempt and recorded in its entry; a retry never turns an
//!   unlink into a spare (the first attempt may have failed because a reader maps the
//!   file, and recycling it would overwrite what the reader holds). The segment's pin
//!   entry stays until the removal is done.
//! - **Each step is idempotent.** A rename whose source is gone and whose target is in
//!   place was done by an earlier attempt; an unlink of a missing file is done; a
//!   directory fsync can always run again. So a removal whose directory fsync failed
//!   is retried from its first step and finishes.
//! - **A failing removal blocks nothing else.** It is retried after a pause that grows
//!   to a minute, counted (`release_failures`, `removals_failing`) and logged; the
//!   entries behind it go ahead. A `release_before` call whose own segment's removal
//!   fails gets that error (the release itself is durable); nobody else does. Under
//!   `RetentionPolicy::Size`, a new segment file waits while released files are still
//!   on disk, so the limit holds; an append that needs one then gets the removal's
//!   error instead of waiting, so the writer learns why.
//!
//! The spare pool is bounded in bytes: at most `spare_segments` x
//! `segment_target_bytes`, of sizes a new segment can use (powers of two from
//! `segment_min_bytes` to `segment_target_bytes`); a file of any other size is
//! unlinked. To make room, spares of sizes the log no longer prepares go first, oldest
//! first; when every spare is of the current size, the newcomer is unlinked instead.
//! At open the pool is trimmed to the bound, oldest first.

use super::ops::{Chain, OpKind};
use super::{Effect, LogCore, Progress};
use crate::error::AofError;
use std::io;
use std::path::PathBuf;

/// The first pause after a failed release step (ns); it doubles with each further
/// failure of the same step, up to [`RETRY_MAX_NS`].
pub(super) const RELEASE_RETRY_NS: u64 = 1_000_000_000;
const RETRY_MAX_NS: u64 = 60_000_000_000;

/// A release step that failed.
pub(super) struct ReleaseFailure {
    pub(super) op: &'static str,
    pub(super) path: std::path::PathBuf,
    pub(super) error: io::Error,
    pub(super) retry_at: u64,
}

impl ReleaseFailure {
    /// The failure as an error naming its step and file.
    pub(super) fn error(&self) -> AofError {
        AofError::io(
            self.op,
            &self.path,
            crate::error::copy_io_error(&self.error),
        )
    }
}

/// Why a file leaves the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Leaving {
    /// A released segment's file (`compressed`: its `.zst` file).
    Released { compressed: bool },
    /// The raw file of a segment whose compressed copy replaced it.
    Superseded,
    /// A spare beyond the pool's bound (named by its old segment id).
    Spare,
    /// The local copy of a segment the archive holds (`compressed`: its `.zst`).
    Archived { compressed: bool },
}

/// One file on its way out of the directory.
pub(super) struct Removal {
    /// Identifies the entry (its chain's effect names it).
    pub(super) key: u64,
    /// The segment id its file is named by.
    pub(super) id: u64,
    /// Its size (a raw segment file's; what a spare is matched by).
    pub(super) size: u64,
    pub(super) leaving: Leaving,
    /// Decided at the first attempt, never changed: renamed into the spare pool
    /// (`true`) or unlinked.
    pub(super) spare: Option<bool>,
    /// The last failed attempt, until one succeeds; retried from `retry_at`.
    pub(super) failure: Option<ReleaseFailure>,
    /// Attempts that failed.
    pub(super) failures: u32,
}

impl Removal {
    fn runnable(&self, now: u64) -> bool {
        self.failure.as_ref().is_none_or(|f| now >= f.retry_at)
    }
}

impl LogCore {
    /// Queues the removal of segment `id`'s file (of `size` bytes).
    pub(super) fn queue_removal(&mut self, id: u64, size: u64, leaving: Leaving) {
        let key = self.rel.next_removal;
        self.rel.next_removal += 1;
        self.rel.removals.push_back(Removal {
            key,
            id,
            size,
            leaving,
            spare: None,
            failure: None,
            failures: 0,
        });
    }

    /// Queues the removal of spare `id` (of `size` bytes), taken out of the pool: a
    /// spare leaves by unlink, decided now.
    fn queue_spare_removal(&mut self, id: u64, size: u64) {
        self.queue_removal(id, size, Leaving::Spare);
        self.rel.removals.back_mut().expect("just queued").spare = Some(false);
    }

    /// The file an entry removes, where it is now.
    fn removal_path(&self, r: &Removal) -> PathBuf {
        match r.leaving {
            Leaving::Released { compressed } | Leaving::Archived { compressed } => {
                self.paths.sealed(r.id, compressed)
            }
            Leaving::Superseded => self.paths.segment(r.id),
            Leaving::Spare => self.paths.spare(r.id),
        }
    }

    /// What a removal does, for its failure's message.
    fn removal_op(r: &Removal) -> &'static str {
        match r.leaving {
            Leaving::Released { .. } => "remove the released segment file",
            Leaving::Superseded => "remove the raw file of the compressed segment",
            Leaving::Spare => "remove the spare file",
            Leaving::Archived { .. } => "remove the local copy of the archived segment",
        }
    }

    /// Bytes the spare pool may hold.
    fn spare_bound(&self) -> u64 {
        (self.cfg.spare_segments as u64).saturating_mul(self.cfg.segment_target_bytes)
    }

    /// A size a new segment file can have, so a spare of it may be recycled.
    fn spare_size_usable(&self, size: u64) -> bool {
        size.is_power_of_two()
            && (self.cfg.segment_min_bytes..=self.cfg.segment_target_bytes).contains(&size)
            && size <= self.spare_bound()
    }

    /// Bytes of the spare files kept.
    pub(super) fn spare_bytes(&self) -> u64 {
        self.rel.spares.iter().map(|s| s.1).sum()
    }

    /// The index of a spare the pool should not keep: one of a size no new segment can
    /// use, else the oldest while the pool is over its bound.
    fn excess_spare(&self) -> Option<usize> {
        if let Some(i) = self
            .rel
            .spares
            .iter()
            .position(|s| !self.spare_size_usable(s.1))
        {
            return Some(i);
        }
        (self.spare_bytes() > self.spare_bound() && !self.rel.spares.is_empty()).then_some(0)
    }

    /// Moves the spares the pool should not keep out of it, into the removal queue
    /// (out of the pool at once, so no preparation recycles them meanwhile).
    fn trim_spares(&mut self) {
        while let Some(i) = self.excess_spare() {
            let (id, size) = self.rel.spares.remove(i);
            self.queue_spare_removal(id, size);
        }
    }

    /// Decides (once) whether entry `i`'s file becomes a spare: a raw segment file that
    /// nobody maps (no live pin), of a size a new segment can use. Makes room in the
    /// pool first by removing its oldest spares.
    fn decide(&mut self, i: usize) {
        let r = &self.rel.removals[i];
        if r.spare.is_some() {
            return;
        }
        let (id, size) = (r.id, r.size);
        let raw = matches!(
            r.leaving,
            Leaving::Released { compressed: false }
                | Leaving::Superseded
                | Leaving::Archived { compressed: false }
        );
        let spare = raw
            && self.cfg.spare_segments > 0
            && (self.rel.ignore_pins || !self.pinned(id))
            && self.spare_size_usable(size);
        let mut spare = spare;
        if spare {
            // No room: make it by removing spares of sizes the log no longer uses
            // (oldest first); if every spare is of the current size, this file is
            // unlinked instead (same use, less churn).
            while self.spare_bytes() + size > self.spare_bound() {
                let cur = self.seg_size;
                match self.rel.spares.iter().position(|s| s.1 != cur) {
                    Some(j) => {
                        let (old, old_size) = self.rel.spares.remove(j);
                        self.queue_spare_removal(old, old_size);
                    }
                    None => {
                        spare = false;
                        break;
                    }
                }
            }
        }
        self.rel.removals[i].spare = Some(spare);
    }

    /// The next removal chain: the first queued entry not waiting out a failure's pause
    /// (spare trims first, so the pool never holds more than its bound).
    pub(super) fn poll_removals(&mut self, now: u64) -> Option<Chain> {
        self.trim_spares();
        let i = self
            .rel
            .removals
            .iter()
            .position(|r| r.leaving == Leaving::Spare && r.runnable(now))
            .or_else(|| self.rel.removals.iter().position(|r| r.runnable(now)))?;
        self.decide(i);
        // Deciding may have queued spare trims: they go first.
        let i = self
            .rel
            .removals
            .iter()
            .position(|r| r.leaving == Leaving::Spare && r.runnable(now))
            .unwrap_or(i);
        let r = &self.rel.removals[i];
        let from = self.removal_path(r);
        let first = if r.spare == Some(true) {
            OpKind::Retire {
                from,
                to: self.paths.spare(r.id),
            }
        } else {
            OpKind::Unlink { path: from }
        };
        let kinds = vec![
            first,
            OpKind::SyncDir {
                path: self.paths.segments.clone(),
            },
        ];
        let key = r.key;
        Some(self.house_chain(kinds, Effect::Removed { key }))
    }

    fn removal_index(&self, key: u64) -> usize {
        self.rel
            .removals
            .iter()
            .position(|r| r.key == key)
            .unwrap_or_else(|| panic!("removal {key} finished but is not queued"))
    }

    /// Removal `key` is durable: the file left the directory (into the spare pool if
    /// so decided).
    pub(super) fn removed(&mut self, key: u64) -> Progress {
        let i = self.removal_index(key);
        let r = self.rel.removals.remove(i).expect("indexed");
        if r.spare == Some(true) {
            self.rel.spares.push((r.id, r.size));
        }
        if r.leaving != Leaving::Spare {
            // No reader can pin it any more: it is released, or read compressed.
            self.rel.pins.remove(&r.id);
        }
        self.metrics.segment_files_removed += 1;
        // A release caller may wait for this removal.
        Progress { wake_waiters: true }
    }

    /// Removal `key` failed: nothing is lost (the file is still there, or its removal
    /// is not durable yet); the entry is retried after a pause, from its first step.
    pub(super) fn removal_failed(&mut self, key: u64, e: io::Error) -> Progress {
        let i = self.removal_index(key);
        let path = self.removal_path(&self.rel.removals[i]);
        let now = self.clock.monotonic_ns();
        let r = &mut self.rel.removals[i];
        r.failures += 1;
        let pause = RELEASE_RETRY_NS
            .saturating_mul(1 << (r.failures - 1).min(6))
            .min(RETRY_MAX_NS);
        let op = Self::removal_op(r);
        log::warn!(
            "aof2: {op} {} failed ({} time(s)): {e}; retried in {} ms",
            path.display(),
            r.failures,
            pause / 1_000_000
        );
        r.failure = Some(ReleaseFailure {
            op,
            path,
            error: e,
            retry_at: now + pause,
        });
        self.metrics.release_failures += 1;
        Progress { wake_waiters: true }
    }

    /// When the next failed removal is retried, if one waits.
    pub(super) fn removal_deadline(&self) -> Option<u64> {
        self.rel
            .removals
            .iter()
            .filter_map(|r| r.failure.as_ref().map(|f| f.retry_at))
            .min()
    }

    /// Removals whose last attempt failed (a gauge).
    pub(super) fn removals_failing(&self) -> u64 {
        self.rel
            .removals
            .iter()
            .filter(|r| r.failure.is_some())
            .count() as u64
    }

    /// Files queued to leave the directory.
    pub fn removals_pending(&self) -> usize {
        self.rel.removals.len()
    }

    /// The error of the first failing removal of a released segment below `below`
    /// (from `from` on), if any; `Ok(true)` once none of them is queued any more.
    pub(super) fn released_removals(&self, from: u64, below: u64) -> Result<bool, AofError> {
        let mine = |r: &&Removal| {
            matches!(r.leaving, Leaving::Released { .. }) && (from..below).contains(&r.id)
        };
        if let Some(f) = self
            .rel
            .removals
            .iter()
            .filter(mine)
            .find_map(|r| r.failure.as_ref())
        {
            return Err(f.error());
        }
        Ok(!self.rel.removals.iter().any(|r| mine(&r)))
    }

    /// Released files still in the directory (queued for removal).
    pub(super) fn released_on_disk(&self) -> usize {
        self.rel
            .removals
            .iter()
            .filter(|r| matches!(r.leaving, Leaving::Released { .. }))
            .count()
    }

    /// Under `Size` retention: the error of a failing release step that holds new
    /// segment files back (see [`LogCore::removal_lags`]): the mark's replacement, or a
    /// released file's removal.
    pub(super) fn lagging_removal_error(&self) -> Option<AofError> {
        let mark = self
            .rel
            .mark_failure
            .as_ref()
            .filter(|_| self.rel.want > self.rel.first_kept);
        let removal = self
            .rel
            .removals
            .iter()
            .filter(|r| matches!(r.leaving, Leaving::Released { .. }))
            .find_map(|r| r.failure.as_ref());
        mark.or(removal).map(|f| {
            AofError::io(
                if mark.is_some() {
                    "replace the release mark, which RetentionPolicy::Size waits for before \
                     it starts a new segment"
                } else {
                    "remove a released segment file, which RetentionPolicy::Size waits for \
                     before it starts a new segment"
                },
                &f.path,
                crate::error::copy_io_error(&f.error),
            )
        })
    }

    /// Whether segment `id` has a live pin (a reader, or a cached mapping).
    pub(super) fn pinned(&self, id: u64) -> bool {
        self.rel.pins.get(&id).is_some_and(|w| w.strong_count() > 0)
    }
}
