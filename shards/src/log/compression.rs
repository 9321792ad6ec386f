//! Compression of sealed segments (`Compression::Zstd`): the core's side. It decides
//! which segment the background worker compresses next (oldest first, never one being
//! released), takes note when a swap is finished (the segment is read from its `.zst`
//! from then on, and its raw file is queued for removal, `removal.rs`: into the spare
//! pool if nobody maps it, else unlinked), and holds a failed swap back for a while. The worker does the work
//! (`crate::compress`); nothing here does I/O, and no compression runs on a shard.
//!
//! Order on disk (the worker's swap, then the raw removal here): `<id>.zst.tmp`
//! written and synced, renamed to `<id>.zst`, the directory synced; only then does the
//! core hear of it, and only then is the raw file removed (a house chain, its own
//! directory sync). A crash anywhere leaves a whole copy; recovery removes the other.

use super::release::SegmentPin;
use super::removal::Leaving;
use super::LogCore;
use crate::config::Compression;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// How long after a failed swap the log's next one starts (ns): a full disk gets time.
pub const COMPRESS_RETRY_NS: u64 = 10_000_000_000;

/// The compression state of a log.
#[derive(Default)]
pub(super) struct Compressions {
    /// The segment the worker is compressing.
    pub(super) running: Option<u64>,
    /// After a failed swap: no new one before this (monotonic ns).
    pub(super) retry_at: Option<u64>,
    /// Every sealed segment below this id is compressed (or being released): the
    /// search for the next raw one starts here, so a log of many segments costs its
    /// shard no scan per poll.
    pub(super) raw_floor: u64,
    /// Segments whose swap panicked (a broken invariant): left raw for this session.
    pub(super) abandoned: std::collections::BTreeSet<u64>,
    /// Test hook: the worker's next swap step panics.
    pub(super) inject_panic: bool,
}

/// One swap for the worker: everything it needs without the log's lock.
#[derive(Debug, Clone)]
pub struct CompressJob {
    /// The segment.
    pub segment: u64,
    /// Its raw file (read only).
    pub raw: PathBuf,
    /// The compressed file while it is written.
    pub temp: PathBuf,
    /// The compressed file's name.
    pub target: PathBuf,
    /// The directory to sync after the rename.
    pub dir: PathBuf,
    /// zstd level.
    pub level: i32,
    /// Permission bits of the compressed file.
    pub mode: u32,
    /// Keeps the raw file from reuse while the worker reads it.
    pub pin: Arc<SegmentPin>,
}

/// What a finished swap changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Swapped {
    /// The segment is read from its compressed file from now on.
    Kept,
    /// The segment was released while it was compressed: the compressed file is an
    /// orphan, for the worker to remove (a reopen would, too: it is below the mark).
    Released,
}

impl LogCore {
    fn compression_on(&self) -> bool {
        self.cfg.compression == Compression::Zstd && !self.closing && self.poisoned.is_none()
    }

    /// Index of the first sealed segment that may still be raw and is not on its way
    /// out (released segments are not compressed).
    fn raw_from(&self) -> usize {
        let floor = self.comp.raw_floor.max(self.rel.want);
        self.sealed.partition_point(|s| s.header.segment_id < floor)
    }

    /// The oldest sealed segment that is neither compressed nor on its way out (nor
    /// abandoned after a panic).
    fn next_raw(&self) -> Option<usize> {
        let from = self.raw_from();
        self.sealed[from..]
            .iter()
            .position(|s| self.compressible(s))
            .map(|i| from + i)
    }

    /// A raw sealed segment the worker may compress: not abandoned after a panic, and
    /// not one this session may still continue.
    fn compressible(&self, s: &super::SealedSegment) -> bool {
        !s.compressed
            && !self.comp.abandoned.contains(&s.header.segment_id)
            && self.continuable() != Some(s.header.segment_id)
    }

    /// True when the worker has a swap to start on this log now.
    pub fn compression_wanted(&self) -> bool {
        self.compression_on()
            && self.comp.running.is_none()
            && self
                .comp
                .retry_at
                .is_none_or(|t| self.clock.monotonic_ns() >= t)
            && self.next_raw().is_some()
    }

    /// False once a swap in progress should stop before its rename: the log is
    /// closing (or poisoned).
    pub fn compression_continues(&self) -> bool {
        self.compression_on()
    }

    /// The next swap, marked running (one per log at a time).
    pub fn next_compression(&mut self) -> Option<CompressJob> {
        if !self.compression_wanted() {
            return None;
        }
        let id = self.sealed[self.next_raw()?].header.segment_id;
        self.comp.running = Some(id);
        self.comp.retry_at = None;
        Some(CompressJob {
            segment: id,
            raw: self.paths.segment(id),
            temp: self.paths.compressed_temp(id),
            target: self.paths.compressed(id),
            dir: self.paths.segments.clone(),
            level: self.cfg.compression_level,
            mode: self.cfg.file_mode,
            pin: self.pin(id),
        })
    }

    fn end_running(&mut self, id: u64) {
        assert_eq!(
            self.comp.running,
            Some(id),
            "a compression of segment {id} of {} ended that was not running",
            self.paths.root.display()
        );
        self.comp.running = None;
    }

    /// The swap of segment `id` is durable: its compressed file of `disk_bytes` bytes
    /// is in place (directory synced). Its raw file is queued for removal.
    pub fn compression_done(&mut self, id: u64, disk_bytes: u64) -> Swapped {
        self.end_running(id);
        // Swaps go oldest first: everything kept below `id` is compressed already.
        self.comp.raw_floor = self.comp.raw_floor.max(id + 1);
        let Some(s) = self.sealed.iter_mut().find(|s| s.header.segment_id == id) else {
            return Swapped::Released;
        };
        assert!(!s.compressed, "segment {id} compressed twice");
        let raw = s.header.file_size;
        s.compressed = true;
        s.disk_bytes = disk_bytes;
        self.rel.sealed_bytes = self.rel.sealed_bytes - raw + disk_bytes;
        self.queue_removal(id, raw, Leaving::Superseded);
        self.metrics.segments_compressed += 1;
        self.metrics.compression_raw_bytes += raw;
        self.metrics.compression_disk_bytes += disk_bytes;
        Swapped::Kept
    }

    /// The swap of segment `id` failed (`op` on `path`): nothing changed (the raw file
    /// stands); the log's next swap waits [`COMPRESS_RETRY_NS`].
    pub fn compression_failed(&mut self, id: u64, op: &str, path: &std::path::Path, e: &io::Error) {
        self.end_running(id);
        log::warn!(
            "aof2: compressing segment {id}: {op} {} failed: {e}; the raw segment is kept, \
             retried in {} s",
            path.display(),
            COMPRESS_RETRY_NS / 1_000_000_000
        );
        self.metrics.compression_failures += 1;
        self.comp.retry_at = Some(self.clock.monotonic_ns() + COMPRESS_RETRY_NS);
    }

    /// The swap of segment `id` panicked (a broken invariant, caught by the worker):
    /// the raw file stands, and this session leaves the segment raw rather than panic
    /// again; the failure is counted. Clears the running swap whatever state the
    /// panic left, so a close never waits for it.
    pub fn compression_abandoned(&mut self, id: u64, cause: &str) {
        if self.comp.running == Some(id) {
            self.comp.running = None;
        }
        log::error!(
            "aof2: compressing segment {id} of {} panicked: {cause}; the segment stays raw \
             until the log is reopened",
            self.paths.root.display()
        );
        self.comp.abandoned.insert(id);
        self.metrics.compression_failures += 1;
    }

    /// Test hook: the compression worker's next swap step of this log panics.
    pub fn inject_compression_panic(&mut self) {
        self.comp.inject_panic = true;
    }

    /// Panics if [`LogCore::inject_compression_panic`] asked for it (the worker calls
    /// this between swap steps, inside its unwind boundary).
    pub fn check_compression_panic(&mut self) {
        if std::mem::take(&mut self.comp.inject_panic) {
            panic!("a panic injected into a compression swap (test hook)");
        }
    }

    /// The swap of segment `id` stopped before its rename (the log is closing): the raw
    /// file stands; the next open compresses it.
    pub fn compression_stopped(&mut self, id: u64) {
        self.end_running(id);
    }

    /// True while the worker compresses a segment of this log (a close waits for it
    /// to stop).
    pub fn compression_running(&self) -> bool {
        self.comp.running.is_some()
    }

    /// When a failed swap may be retried (monotonic ns), if one waits.
    pub fn compression_retry_at(&self) -> Option<u64> {
        self.comp.retry_at.filter(|_| self.compression_on())
    }

    /// Sealed segments waiting for compression, and their raw bytes.
    pub(super) fn compression_backlog(&self) -> (u64, u64) {
        if self.cfg.compression != Compression::Zstd {
            return (0, 0);
        }
        self.sealed[self.raw_from()..]
            .iter()
            .filter(|s| self.compressible(s))
            .fold((0, 0), |(n, b), s| (n + 1, b + s.header.file_size))
    }
}
