//! Retention policies: which sealed segments to release without being asked, and when
//! to seal an active segment that has grown old. They only raise the release target
//! (`Releases::want`); `release.rs` does the rest, as for `release_before`.
//!
//! Time: a sealed segment's deadline is on the monotonic clock: a ttl after its newest
//! record was appended, so a step of the wall clock neither releases it early nor
//! never. Only segments found sealed at open are aged by the wall clock, once, at open
//! (their seal time stands for their newest record's; the age is clamped to the ttl).
//! Size: the oldest sealed segments go while the kept ones total more than the limit.

use super::{LogCore, SealedSegment};
use crate::config::RetentionPolicy;

const NS: u64 = 1_000_000_000;

/// When a sealed segment's newest record was written.
#[derive(Debug, Clone, Copy)]
pub(super) enum Newest {
    /// Appended in this process at this monotonic time.
    Mono(u64),
    /// Found at open: the wall-clock time (ns since the epoch) it was sealed.
    Wall(u64),
}

impl LogCore {
    /// The ttl of time-based retention, in ns.
    fn ttl_ns(&self) -> Option<u64> {
        match self.cfg.retention {
            RetentionPolicy::Time { ttl_seconds } => Some(ttl_seconds.saturating_mul(NS)),
            _ => None,
        }
    }

    /// How old the active segment may get before it is sealed, in ns.
    pub(super) fn max_age_ns(&self) -> Option<u64> {
        match self.cfg.segment_max_age_seconds {
            Some(s) => Some(s.saturating_mul(NS)),
            None => self.ttl_ns(),
        }
    }

    /// Takes note of a sealed segment (sealed now, or found sealed at open).
    pub(super) fn retain_sealed(&mut self, s: &SealedSegment, newest: Newest) {
        self.rel.sealed_bytes += s.disk_bytes;
        if let Some(ttl) = self.ttl_ns() {
            let deadline = self.deadline_after(newest, ttl);
            self.rel.expiry.push_back((s.header.segment_id, deadline));
        }
        self.expire_archived_at(s, newest);
    }

    /// When a segment whose newest record is `newest` is `ttl` ns old (monotonic ns).
    pub(super) fn deadline_after(&self, newest: Newest, ttl: u64) -> u64 {
        match newest {
            Newest::Mono(t) => t.saturating_add(ttl),
            Newest::Wall(ts) => {
                let age = self.clock.realtime_ns().saturating_sub(ts);
                self.clock.monotonic_ns() + ttl.saturating_sub(age)
            }
        }
    }

    /// Forgets released segments' retention state.
    pub(super) fn forget_released(&mut self, s: &SealedSegment) {
        self.rel.sealed_bytes -= s.disk_bytes;
        while self
            .rel
            .expiry
            .front()
            .is_some_and(|&(id, _)| id <= s.header.segment_id)
        {
            self.rel.expiry.pop_front();
        }
    }

    /// Applies the policy at monotonic time `now`: raises the release target over the
    /// sealed segments it no longer keeps, and rolls an active segment past its age.
    pub(super) fn apply_retention(&mut self, now: u64) {
        if let Some(max_age) = self.max_age_ns() {
            if let Some(s) = self.segs.back_mut() {
                if !s.rolled && s.record_count > 0 && now >= s.opened_mono + max_age {
                    log::debug!(
                        "aof2: sealing segment {} of {}: max age",
                        s.id,
                        self.paths.root.display()
                    );
                    s.rolled = true;
                }
            }
        }
        // A prefix of the sealed segments, never beyond the first unsealed one.
        // With an archive, `retention` drops local copies and `archive_retention`
        // releases.
        let k = if self.arch.on {
            self.apply_archive_retention(now)
        } else {
            self.retention_releases(now)
        };
        if k == 0 {
            return;
        }
        let target = match self.sealed.get(k) {
            Some(s) => s.header.segment_id,
            None => self.first_unsealed(),
        };
        if target > self.rel.want {
            log::debug!(
                "aof2: retention releases segments below {target} of {}",
                self.paths.root.display()
            );
            self.rel.want = target;
        }
    }

    /// How many of the oldest sealed segments `retention` releases (no archive).
    fn retention_releases(&self, now: u64) -> usize {
        let mut k = 0;
        match self.cfg.retention {
            RetentionPolicy::Time { .. } => {
                let expired = self
                    .rel
                    .expiry
                    .iter()
                    .take_while(|&&(_, deadline)| deadline <= now)
                    .count();
                k = expired.min(self.releasable());
            }
            RetentionPolicy::Size { max_total_bytes } => {
                let mut total = self.rel.sealed_bytes;
                while total > max_total_bytes && k < self.releasable() {
                    total -= self.sealed[k].disk_bytes;
                    k += 1;
                }
            }
            _ => {}
        }
        k
    }

    /// When the policy next has something to do (monotonic ns), if it waits on time.
    pub(super) fn retention_deadline(&self) -> Option<u64> {
        // Segments already asked for wait for the release, not for time. With an
        // archive, a local copy's deadline counts once the store holds it (the upload's
        // end wakes the log for one already due), and the archive's own ttl releases.
        let droppable = |id: u64| {
            !self.arch.on
                || self
                    .sealed
                    .binary_search_by_key(&id, |s| s.header.segment_id)
                    .is_ok_and(|i| self.sealed[i].local && self.sealed[i].archived)
        };
        let expiry = self.ttl_ns().and_then(|_| {
            self.rel
                .expiry
                .iter()
                .find(|&&(id, _)| id >= self.rel.want && droppable(id))
                .map(|&(_, d)| d)
        });
        let archived_expiry = self
            .arch
            .expiry
            .iter()
            .find(|&&(id, _)| id >= self.rel.want)
            .map(|&(_, d)| d);
        let expiry = match (expiry, archived_expiry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let age = self.max_age_ns().and_then(|max_age| {
            self.segs
                .back()
                .filter(|s| !s.rolled && s.record_count > 0)
                .map(|s| s.opened_mono + max_age)
        });
        match (expiry, age) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Under `Size`, preparing a new segment file waits while two or more files the
    /// policy let go are still on disk (released or about to be, not yet removed), so a
    /// writer faster than removal (a directory fsync per file) slows to its pace
    /// instead of overrunning the limit. While a removal keeps failing, the limit keeps
    /// holding: appends that need a new segment get its error (`append`).
    pub(super) fn removal_lags(&self) -> bool {
        matches!(self.cfg.retention, RetentionPolicy::Size { .. })
            && self.released_on_disk() + self.sealed_wanted() >= 2
    }
}
