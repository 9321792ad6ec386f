//! Files leaving the directory (`removal.rs`), on the simulated disk with injected
//! faults: a retry never loses its decision, never sticks, never blocks the removals
//! behind it, and is charged to the right caller; the spare pool stays within its
//! bound in bytes.

use super::removal::RELEASE_RETRY_NS;
use super::*;
use crate::exec::blocking::run_chain;
use crate::exec::files::LogFiles;
use crate::fs::sim::{Faults, SimFs};
use crate::fs::Fs;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

const KIB: u64 = 1024;

/// A log core on the simulated disk, its chains run with blocking calls.
struct T {
    c: LogCore,
    files: Arc<LogFiles>,
    fs: SimFs,
    time: Arc<AtomicU64>,
}

impl T {
    fn new(f: impl FnOnce(&mut AofConfig)) -> T {
        let fs = SimFs::new(9);
        fs.mkdir(Path::new("/l"), 0o700).unwrap();
        fs.mkdir(Path::new("/l/segments"), 0o700).unwrap();
        let mut cfg = AofConfig::default();
        cfg.root_dir = "/l".into();
        cfg.segment_min_bytes = 64 * KIB;
        cfg.segment_target_bytes = 64 * KIB;
        cfg.segment_max_bytes = 1024 * KIB;
        cfg.flush.flush_interval_ms = 0;
        f(&mut cfg);
        let time = Arc::new(AtomicU64::new(1_000));
        let c = LogCore::new(
            cfg.normalized(),
            LogPaths::new(Path::new("/l")),
            Clock::Manual(time.clone()),
            3,
            Recovered::default(),
        );
        T {
            c,
            files: Arc::new(LogFiles::new(Arc::new(fs.clone()), false)),
            fs,
            time,
        }
    }

    fn now(&self) -> u64 {
        self.time.load(Ordering::Relaxed)
    }

    fn advance(&self, ns: u64) {
        self.time.fetch_add(ns, Ordering::Relaxed);
    }

    /// Runs everything the core asks for now, until it asks for nothing more.
    fn drain(&mut self) {
        for _ in 0..10_000 {
            let chains = self.c.poll(self.now());
            if chains.is_empty() {
                return;
            }
            for ch in chains {
                for (id, r) in run_chain(&self.files, ch) {
                    self.c.complete(id, r);
                }
            }
        }
        panic!("the core never went quiet");
    }

    fn try_append(&mut self, p: &[u8]) -> AofResult<RecordId> {
        for _ in 0..1000 {
            match self.c.append(p) {
                Ok(a) => return Ok(a.rid),
                Err(AofError::WouldBlock(_)) => {
                    self.c.request_flush_all();
                    self.drain();
                }
                Err(e) => return Err(e),
            }
        }
        panic!("an append never went through");
    }

    fn append(&mut self, p: &[u8]) -> RecordId {
        self.try_append(p).unwrap()
    }

    /// Appends 12 KiB records until `n` more segments are sealed; their first records.
    fn seal(&mut self, n: usize) -> Vec<RecordId> {
        let mut firsts = Vec::new();
        let mut last_seg = None;
        loop {
            let rid = self.append(&[5u8; 12 * 1024]);
            if last_seg != Some(rid.segment_index()) {
                last_seg = Some(rid.segment_index());
                firsts.push(rid);
                if firsts.len() > n {
                    break;
                }
            }
        }
        self.c.request_flush_all();
        self.drain();
        firsts
    }

    fn exists(&self, p: &Path) -> bool {
        self.fs.kind(p).unwrap().is_some()
    }

    fn set_faults(&self, f: Faults) {
        self.fs.set_faults(f);
    }
}

/// The rename into the spare pool succeeded, the directory fsync after it failed: the
/// retry finds the file already renamed, syncs the directory and is done; the removal
/// behind it went ahead meanwhile. (Before: the retry renamed a file that no longer
/// existed, failed with ENOENT every second for ever, and held up every removal.)
#[test]
fn a_removal_whose_directory_fsync_failed_finishes_on_retry() {
    let mut t = T::new(|c| c.spare_segments = 2);
    let firsts = t.seal(3);
    let paths = LogPaths::new(Path::new("/l"));
    // The mark's own directory fsync succeeds; the first removal's fails.
    t.set_faults(Faults {
        fail_dir_sync_after: Some(1),
        ..Faults::default()
    });
    let tk = t.c.request_release(firsts[2]).unwrap();
    t.drain();
    assert_eq!(t.c.metrics().release_failures, 1);
    assert!(t.exists(&paths.spare(0)), "renamed, not durable yet");
    assert!(t.exists(&paths.spare(1)), "the next removal went ahead");
    assert_eq!(t.c.removals_pending(), 1);
    assert_eq!(t.c.metrics().removals_failing, 1);
    let e = t.c.release_outcome(&tk).unwrap().unwrap_err();
    assert!(e.to_string().contains("00000000000000000000.seg"), "{e}");
    assert_eq!(t.c.release_deadline(), Some(t.now() + RELEASE_RETRY_NS));
    t.advance(RELEASE_RETRY_NS);
    t.drain();
    assert_eq!(t.c.removals_pending(), 0, "the retry finished");
    assert_eq!(t.c.metrics().removals_failing, 0);
    assert_eq!(t.c.metrics().release_failures, 1);
    assert_eq!(t.c.rel.spares.len(), 2);
    // A crash now keeps both renames: they are durable.
    t.fs.crash();
    assert!(t.exists(&paths.spare(0)) && t.exists(&paths.spare(1)));
}

/// A reader maps segment 0 when it is released, and its unlink fails: the retry
/// unlinks it again; it never becomes a spare that preparation would recycle under
/// the reader. (Before: the first attempt dropped the pin entry, so the retry saw no
/// reader and renamed the mapped file into the pool.)
#[test]
fn a_mapped_file_whose_unlink_failed_is_unlinked_on_retry_never_recycled() {
    let mut t = T::new(|c| c.spare_segments = 4);
    let firsts = t.seal(2);
    let paths = LogPaths::new(Path::new("/l"));
    let reader = t.c.pin(0);
    // Segment 0's unlink fails (until the fault is cleared).
    t.set_faults(Faults {
        fail_unlink_of: Some(paths.segment(0)),
        ..Faults::default()
    });
    t.c.request_release(firsts[2]).unwrap();
    t.drain();
    assert!(t.exists(&paths.segment(0)), "its unlink failed");
    assert_eq!(t.c.metrics().removals_failing, 1);
    t.set_faults(Faults::default());
    t.advance(RELEASE_RETRY_NS);
    t.drain();
    assert!(!t.exists(&paths.segment(0)) && !t.exists(&paths.spare(0)));
    assert!(t.c.rel.spares.iter().all(|s| s.0 != 0), "never a spare");
    assert_eq!(t.c.removals_pending(), 0);
    drop(reader);
}

/// Segment 0's file cannot be removed (a reader maps it, so it is unlinked, and every
/// unlink of it fails): the caller that released it gets that error, while a later
/// caller's removals go ahead and it succeeds; once the fault clears, the retry
/// finishes.
#[test]
fn a_failing_removal_fails_only_its_own_caller_and_blocks_nothing_behind_it() {
    let mut t = T::new(|c| c.spare_segments = 4);
    let firsts = t.seal(3);
    let paths = LogPaths::new(Path::new("/l"));
    let reader = t.c.pin(0);
    t.set_faults(Faults {
        fail_unlink_of: Some(paths.segment(0)),
        ..Faults::default()
    });
    let a = t.c.request_release(firsts[1]).unwrap();
    t.drain();
    let b = t.c.request_release(firsts[3]).unwrap();
    t.drain();
    let e = t.c.release_outcome(&a).unwrap().unwrap_err();
    assert!(
        e.to_string()
            .contains(&paths.segment(0).display().to_string()),
        "{e}"
    );
    assert_eq!(t.c.release_outcome(&b).unwrap().unwrap(), 2);
    assert!(!t.exists(&paths.segment(1)) && !t.exists(&paths.segment(2)));
    for _ in 0..3 {
        t.advance(60 * RELEASE_RETRY_NS);
        t.drain();
    }
    assert_eq!(t.c.removals_pending(), 1, "still failing, still queued");
    assert!(t.c.metrics().release_failures >= 3);
    t.set_faults(Faults::default());
    t.advance(60 * RELEASE_RETRY_NS);
    t.drain();
    assert_eq!(t.c.removals_pending(), 0);
    assert!(!t.exists(&paths.segment(0)));
    drop(reader);
}

/// Under `RetentionPolicy::Size` a new segment waits while released files are on
/// disk; if removing them keeps failing, the append that needs a new segment gets that
/// error, naming the file and the policy, instead of waiting for ever; the sealed
/// files stay within the limit all along, and appends go on once the fault clears.
#[test]
fn size_retention_tells_the_writer_why_a_failing_removal_holds_new_segments_back() {
    let limit = 128 * KIB;
    let mut t = T::new(|c| {
        c.spare_segments = 0;
        c.retention = crate::config::RetentionPolicy::Size {
            max_total_bytes: limit,
        };
    });
    t.seal(3);
    t.set_faults(Faults {
        unlink_error_ppm: 1_000_000,
        ..Faults::default()
    });
    let mut refused = None;
    for _ in 0..200 {
        match t.try_append(&[6u8; 12 * 1024]) {
            Ok(_) => {}
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
        let kept: u64 = t.c.sealed_segments().iter().map(|s| s.disk_bytes).sum();
        assert!(kept <= limit, "{kept} bytes of sealed files kept");
    }
    let e = refused.expect("the writer was told");
    let msg = e.to_string();
    assert!(
        msg.contains("RetentionPolicy::Size") && msg.contains("/l/segments/"),
        "{msg}"
    );
    // Files on disk: the kept ones within the limit, the active one, at most two
    // released ones that could not be removed, and one prepared ahead.
    let on_disk = t.fs.list_dir(Path::new("/l/segments")).unwrap().len() as u64;
    assert!(
        on_disk * 64 * KIB <= limit + 4 * 64 * KIB,
        "{on_disk} files"
    );
    t.set_faults(Faults::default());
    t.advance(60 * RELEASE_RETRY_NS);
    t.drain();
    for i in 0..20 {
        if let Err(e) = t.try_append(&[6u8; 12 * 1024]) {
            panic!("append {i} after the fault cleared: {e}");
        }
    }
    assert_eq!(t.c.metrics().removals_failing, 0);
}

/// A slow log of records of varying sizes, some larger than its segments (files of
/// their own, block-rounded sizes), releasing as it goes: the spare pool never holds
/// more than `spare_segments` x `segment_target_bytes`, and only sizes a new segment
/// can use. (Before: one spare per distinct size, kept for ever.)
#[test]
fn the_spare_pool_stays_within_its_bound_in_bytes() {
    let mut t = T::new(|c| {
        c.spare_segments = 2;
        c.segment_target_bytes = 128 * KIB;
    });
    let bound = 2 * 128 * KIB;
    let sizes = [100usize, 70_000, 150_000, 5_000, 300_000, 90_000, 500_000];
    for round in 0..40 {
        let len = sizes[round % sizes.len()] + round * 8;
        let rid = t.append(&vec![round as u8; len]);
        t.c.request_flush_all();
        t.drain();
        t.c.request_release(rid).unwrap();
        t.drain();
        // Slow: every segment takes longer to fill than the growth window.
        t.advance(11_000_000_000);
        let spares = &t.c.rel.spares;
        let total: u64 = spares.iter().map(|s| s.1).sum();
        assert!(total <= bound, "round {round}: {spares:?}");
        assert!(
            spares
                .iter()
                .all(|s| s.1.is_power_of_two() && (64 * KIB..=128 * KIB).contains(&s.1)),
            "round {round}: a spare no segment can use: {spares:?}"
        );
        assert_eq!(t.c.metrics().spare_bytes, total);
    }
    assert!(t.c.metrics().segments_recycled > 0, "spares were used");
}

/// Spares found at open beyond the bound (a smaller `spare_segments` than before,
/// or sizes no segment uses) are trimmed, oldest first; a trim whose unlink fails is
/// retried, not left until the next open.
#[test]
fn spares_beyond_the_bound_at_open_are_trimmed_and_a_failed_trim_is_retried() {
    let mut t = T::new(|c| c.spare_segments = 1);
    let paths = LogPaths::new(Path::new("/l"));
    for (id, size) in [(0u64, 64 * KIB), (1, 64 * KIB), (2, 3 * 4096 * 7)] {
        let f =
            t.fs.open(&paths.spare(id), crate::fs::OpenMode::create_new(false))
                .unwrap();
        crate::fs::write_all_at(&*f, 0, &[&vec![0u8; size as usize]]).unwrap();
    }
    t.c.rel.spares = vec![(0, 64 * KIB), (1, 64 * KIB), (2, 3 * 4096 * 7)];
    t.set_faults(Faults {
        fail_unlink_after: Some(0),
        ..Faults::default()
    });
    t.drain();
    assert_eq!(t.c.rel.spares, vec![(1, 64 * KIB)]);
    assert_eq!(t.c.removals_pending(), 1, "one trim failed and waits");
    t.advance(RELEASE_RETRY_NS);
    t.drain();
    assert_eq!(t.c.removals_pending(), 0);
    assert!(!t.exists(&paths.spare(0)) && !t.exists(&paths.spare(2)));
    assert!(t.exists(&paths.spare(1)));
}
