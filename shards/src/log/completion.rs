//! Completions: what a chain achieves once every operation in it has completed (its
//! effect), and what a failure does. A failed data write or sync poisons the log
//! (nothing is reported durable after it); a failed preparation only fails the
//! appends that need the file. The durable position only moves forward.

use super::segment::{block_floor, front_of, POOL_BUFFERS};
use super::{pos, LogCore, Progress, SealedSegment};
use crate::error::AofError;
use crate::format::SegmentFooter;
use crate::format::{BLOCK, HEADER_LEN};
use std::io;
use std::sync::Arc;

/// What a chain achieves when every operation in it succeeds.
#[derive(Debug)]
pub(super) enum Effect {
    HeaderDurable {
        seg: u64,
    },
    Written {
        seg: u64,
        end: u64,
    },
    Durable {
        seg: u64,
        end: u64,
        /// Records appended when the commit started (every one of them it covers).
        records: u64,
        /// When it started (monotonic ns).
        started: u64,
    },
    Sealed {
        seg: u64,
        footer: SegmentFooter,
    },
    /// A preparation step of segment `seg` finished.
    Prep {
        seg: u64,
    },
    /// The continued segment's footer was zeroed, durably (`continuation.rs`).
    Unsealed {
        seg: u64,
    },
    /// Closing: unused prepared files were renamed `.ready`.
    MarkedReady {
        segs: Vec<u64>,
    },
    /// An adopted prepared file was opened.
    Adopted {
        seg: u64,
        size: u64,
    },
    /// The leftovers of segment `seg`'s failed preparation were removed.
    Cleaned {
        seg: u64,
    },
    /// The release mark was replaced: the first `count` sealed segments are released.
    MarkDurable {
        mark: crate::release_mark::ReleaseMark,
        count: usize,
    },
    /// A file left the directory durably: removal `key` of the log's queue (see
    /// `removal.rs`).
    Removed {
        key: u64,
    },
}

pub(super) struct InFlight {
    pub(super) ids: Vec<u64>,
    pub(super) done: usize,
    pub(super) failed: Option<io::Error>,
    pub(super) effect: Effect,
}

impl LogCore {
    /// Reports the outcome of operation `id`.
    pub fn complete(&mut self, id: u64, res: io::Result<()>) -> Progress {
        let slot = if self.data_io.as_ref().is_some_and(|f| f.ids.contains(&id)) {
            &mut self.data_io
        } else if self.prep_io.as_ref().is_some_and(|f| f.ids.contains(&id)) {
            &mut self.prep_io
        } else if self.house_io.as_ref().is_some_and(|f| f.ids.contains(&id)) {
            &mut self.house_io
        } else if self.poisoned.is_some() {
            // A poisoned core may have dropped the chain (a broken invariant poisoned it
            // mid-way): a late completion changes nothing.
            return Progress::default();
        } else {
            // Every completion answers an operation this core handed out: anything else
            // is a bug in an executor, which must not be skipped silently.
            panic!(
                "completion for unknown operation {id} of {}",
                self.paths.root.display()
            );
        };
        let f = slot.as_mut().expect("in flight");
        f.done += 1;
        if let Err(e) = res {
            f.failed.get_or_insert(e);
        }
        if f.done < f.ids.len() {
            return Progress::default();
        }
        let f = slot.take().expect("in flight");
        if let Some(e) = f.failed {
            return self.fail(&f.effect, e);
        }
        if self.poisoned.is_some() {
            // Poisoned while the chain ran (its shard failed, or another chain failed):
            // nothing is reported durable after the poison, whoever ran the chain.
            return Progress { wake_waiters: true };
        }
        self.apply(f.effect)
    }

    pub(super) fn fail(&mut self, effect: &Effect, e: io::Error) -> Progress {
        if let Effect::Prep { .. } | Effect::Adopted { .. } | Effect::Cleaned { .. } = effect {
            return self.prep_failed(effect, e);
        }
        match effect {
            Effect::MarkDurable { .. } => return self.mark_failed(e),
            Effect::Removed { key } => return self.removal_failed(*key, e),
            _ => {}
        }
        self.metrics.failures += 1;
        if self.poisoned.is_none() {
            let (what, seg) = match effect {
                Effect::HeaderDurable { seg } => ("writing the header of", *seg),
                Effect::Written { seg, .. } | Effect::Durable { seg, .. } => {
                    ("writing and syncing records of", *seg)
                }
                Effect::Sealed { seg, .. } => ("sealing", *seg),
                Effect::Unsealed { seg } => {
                    ("unsealing, to continue it after a clean close,", *seg)
                }
                Effect::MarkedReady { segs } => (
                    "marking unused prepared files of",
                    segs.first().copied().unwrap_or(self.next_segment),
                ),
                Effect::Prep { .. }
                | Effect::Adopted { .. }
                | Effect::Cleaned { .. }
                | Effect::MarkDurable { .. }
                | Effect::Removed { .. } => {
                    unreachable!("handled by prep_failed, mark_failed or removal_failed")
                }
            };
            let path = self.paths.segment(seg);
            log::error!(
                "aof2: {what} {} failed: {e}; the log is poisoned until reopened",
                path.display()
            );
            self.poisoned = Some(AofError::io(what, path, e));
        }
        Progress { wake_waiters: true }
    }

    pub(super) fn apply(&mut self, effect: Effect) -> Progress {
        match effect {
            Effect::Cleaned { .. } => Progress::default(),
            Effect::HeaderDurable { seg } => {
                let s = front_of(&mut self.segs, seg);
                s.header_durable = true;
                s.written_end = s.written_end.max(HEADER_LEN as u64);
                self.metrics.syncs += 1;
                Progress::default()
            }
            Effect::Written { seg, end } => {
                let s = front_of(&mut self.segs, seg);
                let from = block_floor(s.written_end);
                s.written_end = end;
                s.release_buffers(&mut self.pool);
                self.trim_pool(POOL_BUFFERS);
                self.metrics.write_ops += 1;
                self.metrics.bytes_written += end - from;
                Progress::default()
            }
            Effect::Durable {
                seg,
                end,
                records,
                started,
            } => {
                let s = front_of(&mut self.segs, seg);
                assert!(
                    end >= s.durable_end && end <= s.appended_end,
                    "segment {seg}: durable end {end} outside [{}, {}]",
                    s.durable_end,
                    s.appended_end
                );
                let from = block_floor(s.written_end);
                let wrote = s.written_end < end;
                s.written_end = s.written_end.max(end);
                let gained = end - s.durable_end;
                s.durable_end = end;
                let now = self.clock.monotonic_ns();
                s.release_buffers(&mut self.pool);
                self.trim_pool(POOL_BUFFERS);
                self.total_durable += gained;
                self.paced_sync(gained, now);
                let wall = self.clock.realtime_ns();
                self.hist.synced(records, started, now, wall);
                self.advance_durable(pos(seg, end));
                if wrote {
                    self.metrics.write_ops += 1;
                    self.metrics.bytes_written += block_floor(end + BLOCK as u64 - 1) - from;
                }
                self.metrics.syncs += 1;
                // The interval timer stays armed even with nothing unflushed: it fires
                // once more and finds nothing, whereas disarming it here would make the
                // next append wake the shard again to re-arm it, once per commit of a
                // caller that commits its own appends.
                Progress { wake_waiters: true }
            }
            Effect::Sealed { seg, footer } => {
                let s = self.segs.pop_front().expect("sealed the front segment");
                assert_eq!(s.id, seg, "a seal completed for another segment");
                assert_eq!(
                    (footer.data_end, footer.record_count),
                    (s.appended_end, s.record_count),
                    "segment {seg}: the footer seals other frames than were appended"
                );
                for (_, b) in s.bufs {
                    if let Ok(b) = Arc::try_unwrap(b) {
                        self.pool.push(b);
                    }
                }
                self.trim_pool(POOL_BUFFERS);
                let sealed = SealedSegment {
                    header: s.header,
                    seed: s.seed,
                    footer,
                    compressed: false,
                    disk_bytes: s.header.file_size,
                    archived: false,
                    local: true,
                };
                self.sealed.push(sealed);
                // Its age runs on the monotonic clock from its newest record's append.
                let newest_mono = if s.record_count > 0 {
                    s.newest_mono
                } else {
                    self.clock.monotonic_ns()
                };
                self.retain_sealed(&sealed, super::retention::Newest::Mono(newest_mono));
                self.advance_durable(pos(seg + 1, HEADER_LEN as u64));
                self.metrics.syncs += 1;
                self.metrics.segments_sealed += 1;
                Progress { wake_waiters: true }
            }
            Effect::MarkedReady { segs } => self.marked_ready_done(&segs),
            Effect::Unsealed { seg } => self.unsealed(seg),
            Effect::Prep { seg } => self.prep_step_done(seg),
            Effect::Adopted { seg, size } => self.adopted(seg, size),
            Effect::MarkDurable { mark, count } => self.mark_durable(mark, count),
            Effect::Removed { key } => self.removed(key),
        }
    }

    /// Moves the durable position forward; it never moves back (waiters were released
    /// on the strength of it).
    pub(super) fn advance_durable(&mut self, to: u64) {
        assert!(
            to >= self.durable,
            "the durable position of {} would move back from {:#x} to {to:#x}",
            self.paths.root.display(),
            self.durable
        );
        self.durable = to;
    }

    /// Poisons the log from outside its I/O (its shard thread failed): every waiter
    /// gets `cause`, and nothing more is reported durable.
    pub fn poison_with(&mut self, cause: AofError) {
        if self.poisoned.is_none() {
            log::error!(
                "aof2: log {} is poisoned: {cause}",
                self.paths.root.display()
            );
            self.poisoned = Some(cause);
        }
    }
}
