//! The archive (Tier 2): the core's side. It picks the segment the archive worker
//! uploads next (oldest first; a compressed log's segments once their swap is done),
//! takes note when the store holds it (its stub durable), drops local copies the store
//! holds when `retention` lets them go, releases what `archive_retention` drops, and
//! refuses new segments while unarchived copies hold the directory too far past its
//! bound. The worker (`crate::archive::worker`) does the I/O; nothing here does.
//!
//! Order (the worker's, then the removal here): the object is created and confirmed,
//! then the stub written durably, then the core hears of it; only then may the local
//! copy go (a removal chain like a released file's). A crash anywhere leaves the local
//! copy, or the stub, or both.

use super::release::SegmentPin;
use super::removal::Leaving;
use super::LogCore;
use crate::config::{Compression, RetentionPolicy};
use crate::error::AofError;
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;

/// The first pause after a failed upload (ns); it doubles with each further failure,
/// up to [`UPLOAD_RETRY_MAX_NS`].
pub const UPLOAD_RETRY_NS: u64 = 1_000_000_000;
/// The longest pause between upload attempts (ns).
pub const UPLOAD_RETRY_MAX_NS: u64 = 15_000_000_000;

/// A log's archive state.
#[derive(Default)]
pub(super) struct Archive {
    /// The manager has a store.
    pub(super) on: bool,
    /// The store, for messages (never a credential).
    pub(super) store: String,
    /// The log's archive id (`LOG_ID`): every key starts with it.
    pub(super) log_id: String,
    /// The segment being uploaded.
    pub(super) running: Option<u64>,
    /// Uploads failed in a row, and when the next may start.
    pub(super) failures: u32,
    pub(super) retry_at: Option<u64>,
    /// The last upload failure, for the error past the backlog ceiling.
    pub(super) last_error: Option<String>,
    /// Object bytes of each archived segment.
    pub(super) object_bytes: BTreeMap<u64, u64>,
    /// Archived copies of released segments, to delete from the store (and their
    /// stubs): (segment, key).
    pub(super) deletes: VecDeque<(u64, String)>,
    /// A deletion is running.
    pub(super) deleting: bool,
    /// `archive_retention = Time`: (segment, deadline), oldest first.
    pub(super) expiry: VecDeque<(u64, u64)>,
    /// Local bytes held past `retention`'s bound because the store lacks them.
    pub(super) held_bytes: u64,
    /// Every sealed segment below this id is archived (or gone locally): the search
    /// for the next upload starts here, so a log of many segments costs its shard no
    /// scan per poll.
    pub(super) floor: std::cell::Cell<u64>,
}

/// One upload for the worker: everything it needs without the log's lock.
#[derive(Debug, Clone)]
pub struct UploadJob {
    /// The segment, as the log knows it (the worker checks the file against it).
    pub segment: super::SealedSegment,
    /// Its local file (the compressed one when `segment.compressed`).
    pub path: PathBuf,
    /// The object's key (before the store's own prefix).
    pub key: String,
    /// The stub to write once the store holds the object.
    pub stub: PathBuf,
    /// Permission bits of the stub.
    pub mode: u32,
    /// Keeps the local file from reuse while the worker reads it.
    pub pin: Arc<SegmentPin>,
}

/// The key of segment `id`'s object: the log's id, then the segment's file name.
pub fn object_key(log_id: &str, id: u64, compressed: bool) -> String {
    let name = if compressed {
        crate::layout::compressed_file_name(id)
    } else {
        crate::layout::segment_file_name(id)
    };
    format!("{log_id}/{name}")
}

/// Archive counters and gauges of a log (see `FlushMetricsSnapshot`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArchiveGauges {
    /// Sealed segments the store does not hold yet, and their local bytes.
    pub backlog_segments: u64,
    /// Their local bytes.
    pub backlog_bytes: u64,
    /// Local bytes held past `retention`'s bound because the store lacks them.
    pub held_over_bound_bytes: u64,
    /// Creation time (ns since the epoch) of the oldest segment not archived yet.
    pub oldest_unarchived_ns: Option<u64>,
}

impl LogCore {
    /// Turns the archive on for this log: uploads to `store` (its description) under
    /// keys starting with `log_id`.
    pub fn enable_archive(&mut self, store: String, log_id: String) {
        self.arch.on = true;
        self.arch.store = store;
        self.arch.log_id = log_id;
        if let RetentionPolicy::Time { .. } = self.cfg.archive_retention {
            for s in self.sealed.clone() {
                self.expire_archived_at(&s, super::retention::Newest::Wall(s.footer.sealed_at_ns));
            }
        }
    }

    /// True when the manager has an archive.
    pub fn archive_on(&self) -> bool {
        self.arch.on
    }

    fn archive_ttl_ns(&self) -> Option<u64> {
        match self.cfg.archive_retention {
            RetentionPolicy::Time { ttl_seconds } => {
                Some(ttl_seconds.saturating_mul(1_000_000_000))
            }
            _ => None,
        }
    }

    /// Takes note of a sealed segment for `archive_retention = Time`.
    pub(super) fn expire_archived_at(
        &mut self,
        s: &super::SealedSegment,
        newest: super::retention::Newest,
    ) {
        let Some(ttl) = self.archive_ttl_ns().filter(|_| self.arch.on) else {
            return;
        };
        let deadline = self.deadline_after(newest, ttl);
        self.arch.expiry.push_back((s.header.segment_id, deadline));
    }

    /// A segment that may go to the store now: local, not held by the store yet, not
    /// on its way out, not one this session may continue, and compressed first when
    /// compression is on (unless its swap was abandoned).
    fn uploadable(&self, s: &super::SealedSegment) -> bool {
        let id = s.header.segment_id;
        s.local
            && !s.archived
            && id >= self.rel.want
            && self.continuable() != Some(id)
            && self.comp.running != Some(id)
            && (self.cfg.compression != Compression::Zstd
                || s.compressed
                || self.comp.abandoned.contains(&id))
    }

    /// The sealed segments from the first one that may still need an upload.
    fn upload_candidates(&self) -> &[super::SealedSegment] {
        let mut i = self
            .sealed
            .partition_point(|s| s.header.segment_id < self.arch.floor.get());
        while let Some(s) = self.sealed.get(i).filter(|s| s.archived || !s.local) {
            self.arch.floor.set(s.header.segment_id + 1);
            i += 1;
        }
        &self.sealed[i..]
    }

    /// True when the worker has something to do for this log: an upload due, or an
    /// archived copy to delete.
    pub fn archive_wanted(&self) -> bool {
        if !self.arch.on || self.poisoned.is_some() {
            return false;
        }
        let delete = !self.arch.deleting && !self.arch.deletes.is_empty();
        let upload = !self.closing
            && self.arch.running.is_none()
            && self
                .arch
                .retry_at
                .is_none_or(|t| self.clock.monotonic_ns() >= t)
            && self.upload_candidates().iter().any(|s| self.uploadable(s));
        delete || upload
    }

    /// When a failed upload may be retried (monotonic ns), if one waits.
    pub fn archive_retry_at(&self) -> Option<u64> {
        self.arch.retry_at.filter(|_| self.arch.on && !self.closing)
    }

    /// The next upload, marked running (one per log at a time).
    pub fn next_upload(&mut self) -> Option<UploadJob> {
        if !self.archive_wanted() || self.arch.running.is_some() {
            return None;
        }
        if self
            .arch
            .retry_at
            .is_some_and(|t| self.clock.monotonic_ns() < t)
        {
            return None;
        }
        let s = *self
            .upload_candidates()
            .iter()
            .find(|s| self.uploadable(s))?;
        let id = s.header.segment_id;
        self.arch.running = Some(id);
        Some(UploadJob {
            segment: s,
            path: self.paths.sealed(id, s.compressed),
            key: object_key(&self.arch.log_id, id, s.compressed),
            stub: self.paths.stub(id),
            mode: self.cfg.file_mode,
            pin: self.pin(id),
        })
    }

    fn end_upload(&mut self, id: u64) {
        assert_eq!(
            self.arch.running,
            Some(id),
            "an upload of segment {id} of {} ended that was not running",
            self.paths.root.display()
        );
        self.arch.running = None;
    }

    /// The store holds segment `id` as object `key` of `bytes` bytes, and its stub is
    /// durable: its local copy may go once retention lets it.
    pub fn upload_done(&mut self, id: u64, key: &str, bytes: u64) {
        self.end_upload(id);
        self.arch.failures = 0;
        self.arch.retry_at = None;
        self.arch.last_error = None;
        self.arch.object_bytes.insert(id, bytes);
        self.metrics.archive_uploads += 1;
        self.metrics.archive_uploaded_bytes += bytes;
        match self.sealed.iter_mut().find(|s| s.header.segment_id == id) {
            Some(s) => s.archived = true,
            // Released while it was uploaded: its object and stub go again.
            None => self.queue_archive_delete(id, key.to_string()),
        }
    }

    /// The upload of segment `id` failed: nothing changed locally; the next attempt
    /// waits a pause that doubles from 1 s up to 15 s.
    pub fn upload_failed(&mut self, id: u64, why: String) {
        self.end_upload(id);
        self.arch.failures += 1;
        let pause = UPLOAD_RETRY_NS
            .saturating_mul(1 << (self.arch.failures - 1).min(5))
            .min(UPLOAD_RETRY_MAX_NS);
        log::warn!(
            "aof2: uploading segment {id} of {} to the {} failed ({} time(s) in a row): {why}; \
             retried in {} ms",
            self.paths.root.display(),
            self.arch.store,
            self.arch.failures,
            pause / 1_000_000
        );
        self.arch.retry_at = Some(self.clock.monotonic_ns() + pause);
        self.arch.last_error = Some(why);
        self.metrics.archive_upload_failures += 1;
    }

    /// The upload of segment `id` stopped (the log is closing, or the manager shuts
    /// down): the next session uploads it.
    pub fn upload_stopped(&mut self, id: u64) {
        self.end_upload(id);
    }

    /// True once an upload in progress should stop before its next step: the log is
    /// closing, or poisoned.
    pub fn upload_should_stop(&self) -> bool {
        self.closing || self.poisoned.is_some()
    }

    /// The log's monotonic clock now (ns).
    pub fn clock_now(&self) -> u64 {
        self.clock.monotonic_ns()
    }

    /// The store's description and the log's archive id, when the archive is on.
    pub fn archive_names(&self) -> Option<(String, String)> {
        self.arch
            .on
            .then(|| (self.arch.store.clone(), self.arch.log_id.clone()))
    }

    /// Counts a download for a reader that took `ms` (`ok`: it passed its checks).
    pub fn note_hydration(&mut self, ms: u64, ok: bool) {
        if ok {
            self.metrics.archive_hydrations += 1;
            self.metrics.archive_hydration_ms += ms;
        } else {
            self.metrics.archive_hydration_failures += 1;
        }
    }

    /// True while an upload of this log runs (a close waits for it to stop).
    pub fn upload_running(&self) -> bool {
        self.arch.running.is_some()
    }

    /// True while the deletion of an archived copy runs.
    pub fn archive_delete_running(&self) -> bool {
        self.arch.deleting
    }

    fn queue_archive_delete(&mut self, id: u64, key: String) {
        if !self.arch.deletes.iter().any(|d| d.0 == id) {
            self.arch.deletes.push_back((id, key));
        }
    }

    /// The next archived copy to delete (of a released segment), marked running.
    pub fn next_archive_delete(&mut self) -> Option<(u64, String, PathBuf)> {
        if self.arch.deleting {
            return None;
        }
        let (id, key) = self.arch.deletes.front().cloned()?;
        self.arch.deleting = true;
        Some((id, key, self.paths.stub(id)))
    }

    /// The deletion of segment `id`'s archived copy ended; `ok`: the object and its
    /// stub are gone (else it is retried with the next upload attempt).
    pub fn archive_delete_done(&mut self, id: u64, ok: bool) {
        self.arch.deleting = false;
        if ok {
            self.arch.deletes.retain(|d| d.0 != id);
            self.arch.object_bytes.remove(&id);
            self.metrics.archive_deletes += 1;
        }
    }

    /// Released segments: their archived copies are deleted too.
    pub(super) fn release_archived(&mut self, s: &super::SealedSegment) {
        let id = s.header.segment_id;
        while self.arch.expiry.front().is_some_and(|&(e, _)| e <= id) {
            self.arch.expiry.pop_front();
        }
        if s.archived {
            let key = object_key(&self.arch.log_id, id, s.compressed);
            self.queue_archive_delete(id, key);
        }
    }

    /// With an archive, `retention` drops local copies only, and only of segments the
    /// store holds; `archive_retention` releases. Returns how many of the oldest
    /// sealed segments `archive_retention` lets go.
    pub(super) fn apply_archive_retention(&mut self, now: u64) -> usize {
        // Local copies: oldest first, while the policy wants them gone.
        let bound = match self.cfg.retention {
            RetentionPolicy::Size { max_total_bytes } => Some(max_total_bytes),
            _ => None,
        };
        let ttl = match self.cfg.retention {
            RetentionPolicy::Time { ttl_seconds } => {
                Some(ttl_seconds.saturating_mul(1_000_000_000))
            }
            _ => None,
        };
        let mut total = self.rel.sealed_bytes;
        let mut held = 0;
        let mut drop = Vec::new();
        // (`KeepAll` keeps every local copy: nothing to look at.)
        let keep_all = bound.is_none() && ttl.is_none();
        for (i, s) in self.sealed.iter().enumerate().filter(|_| !keep_all) {
            if !s.local || s.header.segment_id < self.rel.want {
                continue;
            }
            let id = s.header.segment_id;
            let due = match (bound, ttl) {
                (Some(b), _) => total > b,
                (_, Some(_)) => self
                    .rel
                    .expiry
                    .iter()
                    .find(|e| e.0 == id)
                    .is_some_and(|e| e.1 <= now),
                _ => false,
            };
            if !due {
                if bound.is_some() {
                    break;
                }
                continue;
            }
            if s.archived && self.continuable() != Some(id) && self.comp.running != Some(id) {
                total -= s.disk_bytes;
                drop.push(i);
            } else {
                held += s.disk_bytes;
                if bound.is_some() {
                    // Kept: counted past the bound, and the search goes on.
                    total -= s.disk_bytes;
                }
            }
        }
        self.arch.held_bytes = held;
        for i in drop {
            let s = &mut self.sealed[i];
            let (id, size, compressed, bytes) = (
                s.header.segment_id,
                s.header.file_size,
                s.compressed,
                s.disk_bytes,
            );
            s.local = false;
            s.disk_bytes = 0;
            self.rel.sealed_bytes -= bytes;
            self.queue_removal(id, size, Leaving::Archived { compressed });
            self.metrics.archive_local_drops += 1;
        }
        // Archived copies: `archive_retention` over the sealed segments, never past
        // one the store does not hold yet (the policy governs archived copies).
        let releasable = self
            .sealed
            .iter()
            .take(self.releasable())
            .take_while(|s| s.archived)
            .count();
        match self.cfg.archive_retention {
            RetentionPolicy::Time { .. } => self
                .arch
                .expiry
                .iter()
                .take_while(|&&(_, d)| d <= now)
                .count()
                .min(releasable),
            RetentionPolicy::Size { max_total_bytes } => {
                // The objects of the segments kept (those of released ones are on
                // their way out of the store, and count no more).
                let bytes = |s: &super::SealedSegment| {
                    self.arch
                        .object_bytes
                        .get(&s.header.segment_id)
                        .copied()
                        .unwrap_or(0)
                };
                let mut k = self.sealed_wanted();
                let mut total: u64 = self.sealed[k..].iter().map(bytes).sum();
                while total > max_total_bytes && k < releasable {
                    total -= bytes(&self.sealed[k]);
                    k += 1;
                }
                k
            }
            _ => 0,
        }
    }

    /// Past the backlog ceiling: the error an append that needs a new segment gets.
    pub(super) fn archive_backlog_error(&self) -> Option<AofError> {
        if !self.arch.on || self.arch.held_bytes <= self.cfg.archive_backlog_max_bytes {
            return None;
        }
        Some(AofError::ArchiveBacklog {
            path: self.paths.root.clone(),
            store: self.arch.store.clone(),
            held_bytes: self.arch.held_bytes,
            limit: self.cfg.archive_backlog_max_bytes,
            cause: self
                .arch
                .last_error
                .clone()
                .unwrap_or_else(|| "uploads are behind".into()),
        })
    }

    /// The archive's gauges.
    pub fn archive_gauges(&self) -> ArchiveGauges {
        if !self.arch.on {
            return ArchiveGauges::default();
        }
        let mut g = ArchiveGauges {
            held_over_bound_bytes: self.arch.held_bytes,
            ..ArchiveGauges::default()
        };
        for s in self.sealed.iter().filter(|s| s.local && !s.archived) {
            g.backlog_segments += 1;
            g.backlog_bytes += s.disk_bytes;
            g.oldest_unarchived_ns.get_or_insert(s.header.created_at_ns);
        }
        g
    }
}
