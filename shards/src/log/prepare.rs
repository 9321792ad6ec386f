//! Segment preparation: a log's next segment file is created as a temporary file,
//! zero-written to its full size, synced, renamed into place and its directory entry
//! synced, before any append may enter it (so a later sync never changes file
//! metadata, and every id handed out lies in a file that exists on disk). A spare file
//! of the right size (a released segment's, see `release.rs`) is recycled instead: its
//! first block and footer block are zeroed and synced (the rest keeps its stale bytes,
//! which the new segment's header flags), then it is renamed into place. Also the
//! closing side of it: abandoning a preparation, and marking unused prepared files
//! `.ready` so the next open reuses their ids. A failed preparation loses nothing and
//! poisons nothing: it is retried when an append needs the file.

use super::ops::{Chain, IoData, OpKind};
use super::{Effect, LogCore, Progress};
use crate::error::AofError;
use std::io;

/// A segment file under preparation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PrepStep {
    Create,
    Zero(u64),
    Sync,
    Rename,
    SyncDir,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Prep {
    pub(super) id: u64,
    pub(super) size: u64,
    pub(super) step: PrepStep,
    /// Bytes of the zero-write in flight.
    pub(super) chunk: u64,
    /// Recycling this spare (named by its old id) instead of creating a file.
    pub(super) spare: Option<u64>,
}

/// How long after a failed segment preparation an append may try again (ns).
pub(super) const PREP_RETRY_NS: u64 = 50_000_000;

/// A segment preparation that failed (a full disk, an I/O error). Unlike a failed data
/// write it loses nothing and poisons nothing: appends that need the segment fail with
/// it until a retry, at most every `PREP_RETRY_NS`, succeeds.
pub(super) struct PrepFailure {
    pub(super) path: std::path::PathBuf,
    pub(super) error: io::Error,
    pub(super) retry_at: u64,
}

impl PrepFailure {
    pub(super) fn error(&self) -> AofError {
        AofError::io(
            "prepare the next segment file",
            &self.path,
            crate::error::copy_io_error(&self.error),
        )
    }
}

impl LogCore {
    /// True when a prepared file is ready for the next segment.
    pub fn has_prepared_segment(&self) -> bool {
        self.prepared
            .front()
            .is_some_and(|&(id, _)| id == self.next_segment)
    }

    pub(super) fn poll_prep(&mut self) -> Option<Chain> {
        if self.prep_io.is_some() {
            return None;
        }
        if let Some((seg, paths)) = self.cleanup.take() {
            let mut kinds = vec![OpKind::Close { seg }];
            kinds.extend(paths.into_iter().map(|path| OpKind::Unlink { path }));
            return Some(self.chain(kinds, Effect::Cleaned { seg }, true));
        }
        if self.closing {
            return self.poll_close();
        }
        if let Some(c) = self.poll_unseal() {
            return Some(c);
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
                Some((pid, psize)) if pid == id && psize >= size => self.want = None,
                Some((pid, _)) if pid == id => {
                    // Prepared at another size than the record needs. A new file is
                    // prepared and renamed over this one: the id never leaves the
                    // disk, so recovery keeps continuing past it.
                    self.prepared.pop_front();
                    next = Some((id, size));
                }
                _ => next = Some((id, size)),
            }
        } else if self.prepared.is_empty() && !self.closing && self.active_is_filling() {
            // Keep one file ready beyond those in use, once the active one fills.
            next = Some((self.next_segment, self.ahead_size()));
        } else if self.cfg.preallocate_segments && self.awaits_first_file() {
            // No segment to append to and no file for one (a new log): prepared from
            // the open, the first append does not wait the ~2 ms it takes.
            next = Some((self.next_segment, self.seg_size));
        }
        if self.prep.is_none() && !self.removal_lags() {
            if let Some((id, size)) = next {
                log::trace!(
                    "aof2: preparing segment {id} ({size} bytes); want {:?}, prepared {:?}, next {}",
                    self.want,
                    self.prepared,
                    self.next_segment
                );
                // A spare of that size, if the pool has one (oldest first).
                let spare = self
                    .rel
                    .spares
                    .iter()
                    .position(|s| s.1 == size)
                    .map(|i| self.rel.spares.remove(i).0);
                self.prep = Some(Prep {
                    id,
                    size,
                    step: PrepStep::Create,
                    chunk: 0,
                    spare,
                });
            }
        }
        let mut p = self.prep?;
        if let (PrepStep::Zero(off), None) = (p.step, p.spare) {
            // Zeros go in pieces paced by the log's commits: none now without credit.
            p.chunk = self.zero_step(p.size - off, self.clock.monotonic_ns())?;
            self.prep = Some(p);
        }
        Some(self.prep_step(p))
    }

    /// True while the log has no segment to append to, no file prepared or being
    /// adopted for one, and no sealed segment a first append would continue: its
    /// first append would wait for a file.
    fn awaits_first_file(&self) -> bool {
        self.segs.is_empty()
            && self.prepared.is_empty()
            && self.adopt.is_empty()
            && self.cont.is_none()
            && !self.closing
    }

    /// Where preparation `p`'s file is until it is renamed into place.
    fn prep_path(&self, p: Prep) -> std::path::PathBuf {
        match p.spare {
            Some(old) => self.paths.spare(old),
            None => self.paths.temp(p.id),
        }
    }

    /// The chain for the next step of preparation `p`.
    pub(super) fn prep_step(&mut self, p: Prep) -> Chain {
        let kind = match p.step {
            PrepStep::Create if p.spare.is_some() => OpKind::Open {
                seg: p.id,
                path: self.prep_path(p),
            },
            PrepStep::Zero(_) if p.spare.is_some() => {
                // Only what recovery reads to classify a file: the header block (blank:
                // prepared, never used) and the footer block (blank: not sealed).
                let kinds = vec![
                    OpKind::Write {
                        seg: p.id,
                        offset: 0,
                        data: vec![IoData::Zeros(crate::format::BLOCK)],
                    },
                    OpKind::Write {
                        seg: p.id,
                        offset: p.size - crate::format::BLOCK as u64,
                        data: vec![IoData::Zeros(crate::format::BLOCK)],
                    },
                ];
                return self.chain(kinds, Effect::Prep { seg: p.id }, true);
            }
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
                // Paced by the log's commits (`zero_pace.rs`); `poll_prep` sized it.
                let n = p.chunk as usize;
                // The zeros come from one shared chunk: a larger write would read past it.
                assert!(
                    n > 0 && n <= crate::buffer::PREP_CHUNK && off + p.chunk <= p.size,
                    "segment {}: a zero-write of {n} bytes at {off} of {}",
                    p.id,
                    p.size
                );
                OpKind::Write {
                    seg: p.id,
                    offset: off,
                    data: vec![IoData::Zeros(n)],
                }
            }
            PrepStep::Sync => OpKind::Sync { seg: p.id },
            PrepStep::Rename => OpKind::Rename {
                from: self.prep_path(p),
                to: self.paths.segment(p.id),
            },
            PrepStep::SyncDir => {
                // The first file of a log this open created: its directories' entries
                // too (deferred from the open, so opening costs no fsync).
                let mut kinds = vec![OpKind::SyncDir {
                    path: self.paths.segments.clone(),
                }];
                kinds.extend(
                    self.unsynced_dirs
                        .iter()
                        .map(|d| OpKind::SyncDir { path: d.clone() }),
                );
                return self.chain(kinds, Effect::Prep { seg: p.id }, true);
            }
        };
        self.chain(vec![kind], Effect::Prep { seg: p.id }, true)
    }

    /// Closing: a preparation still writing its `.tmp` file is abandoned (the file is
    /// removed at the next open); one past that finishes. Once all data is durable, the
    /// prepared files no append entered are renamed `.ready`, so the next open reuses
    /// their ids and ids stay dense. (After a crash, blank `.seg` files cannot be
    /// trusted that way and are moved past.)
    pub(super) fn poll_close(&mut self) -> Option<Chain> {
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

    /// A preparation step failed: abandon the file (closed and removed later), remember
    /// the error for the appends that need it, and keep the log running.
    pub(super) fn prep_failed(&mut self, effect: &Effect, e: io::Error) -> Progress {
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
                Some(p) if p.spare.is_some() => {
                    // A spare that fails is dropped, and the next preparation starts
                    // at once, from another spare or a new file: nothing waits on a
                    // damaged spare. (If the rename was done, `<id>.seg` is a blank
                    // prepared file, which the next preparation renames over.)
                    let paths = vec![self.prep_path(p)];
                    log::warn!(
                        "aof2: recycling spare file {} failed: {e}; removing it",
                        self.prep_path(p).display()
                    );
                    self.cleanup = Some((p.id, paths));
                    self.metrics.prepare_failures += 1;
                    return Progress::default();
                }
                Some(p) => {
                    self.cleanup = Some((p.id, vec![self.paths.temp(p.id)]));
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

    /// The error appends that need a new segment get, while preparation is failing.
    pub fn prepare_error(&self) -> Option<AofError> {
        self.prep_failure.as_ref().map(PrepFailure::error)
    }

    /// A preparation step of segment `seg` finished: on to the next one.
    pub(super) fn prep_step_done(&mut self, seg: u64) -> Progress {
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
            PrepStep::Zero(_) if p.spare.is_some() => PrepStep::Sync,
            PrepStep::Zero(off) => {
                self.metrics.bytes_zeroed += p.chunk;
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
                self.unsynced_dirs.clear();
                if p.spare.is_some() {
                    self.recycled.insert(id);
                    self.metrics.segments_recycled += 1;
                }
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

    /// A prepared file recovery adopted was opened: it is ready for appends.
    pub(super) fn adopted(&mut self, seg: u64, size: u64) -> Progress {
        assert!(
            self.prepared.back().is_none_or(|&(p, _)| p < seg),
            "adopted segment {seg} out of order"
        );
        self.prepared.push_back((seg, size));
        Progress { wake_waiters: true }
    }

    /// Closing: the unused prepared files `segs` were renamed `.ready`, durably.
    pub(super) fn marked_ready_done(&mut self, segs: &[u64]) -> Progress {
        // Every unused prepared file was in the chain; none appeared since.
        assert!(
            self.prepared.is_empty() && self.adopt.is_empty() && !segs.is_empty(),
            "prepared files left unmarked after marking {segs:?}"
        );
        self.marked_ready = true;
        Progress { wake_waiters: true }
    }
}
