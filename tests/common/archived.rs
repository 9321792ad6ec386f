//! Helpers of the archive tests: a manager with a store, a log that drops local copies
//! under `Size` retention, writing, reading everything back, waiting for uploads.
#![allow(dead_code)]

use crate::common::{init_log, payload, small_cfg};
use bop_rs::aof2::config::{AofConfig, ArchiveStore, RetentionPolicy, SegmentId};
use bop_rs::aof2::reader::SegmentCursor;
use bop_rs::aof2::{Aof, AofManager, AofManagerConfig, RecordId};
use std::path::Path;
use std::time::{Duration, Instant};

/// A manager with `store` as its archive.
pub fn archive_manager(store: ArchiveStore) -> AofManager {
    init_log();
    let mut c = AofManagerConfig::default();
    c.archive = Some(store);
    AofManager::with_config(c).expect("manager starts")
}

/// The local copies' bound of [`cfg`].
pub const LOCAL_BOUND: u64 = 128 << 10;

/// Small segments, and local copies kept within [`LOCAL_BOUND`].
pub fn cfg(root: &Path) -> AofConfig {
    let mut c = small_cfg(root);
    c.retention = RetentionPolicy::Size {
        max_total_bytes: LOCAL_BOUND,
    };
    c
}

pub fn wait_for(what: &str, limit: Duration, f: impl Fn() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Appends `n` records (durably) and seals the last segment.
pub fn write(aof: &Aof, tag: u64, n: u64) -> Vec<(RecordId, Vec<u8>)> {
    let mut out = Vec::new();
    for i in 0..n {
        let p = payload(tag, i);
        let rid = aof.append_record(&p).expect("append");
        out.push((rid, p));
    }
    aof.flush().unwrap();
    aof.seal_active().unwrap();
    out
}

pub fn all_records(aof: &Aof) -> Vec<(RecordId, Vec<u8>)> {
    let mut out = Vec::new();
    for seg in aof.catalog_snapshot() {
        let reader = aof.open_reader(SegmentId::new(seg.segment_id)).unwrap();
        let mut c = SegmentCursor::new(reader);
        while let Some(r) = c.next().expect("cursor reads") {
            out.push((r.record_id(), r.payload().to_vec()));
        }
    }
    out
}

/// Uploads caught up and the local copies retention lets go are gone.
pub fn settled(aof: &Aof) -> bool {
    let m = aof.flush_metrics();
    m.archive_backlog_segments == 0
        && aof
            .catalog_snapshot()
            .iter()
            .filter(|s| s.sealed)
            .all(|s| s.archived)
        && m.removals_failing == 0
}

/// No local copy is still due to be dropped: oldest first, while the sealed local
/// copies exceed `bound` bytes, each one left is one the log keeps (not archived yet,
/// or the last sealed segment when no segment is active, which a reopen continues).
/// `settled` holds as soon as the last upload lands, before the drop it allows.
pub fn local_drops_done(aof: &Aof, bound: u64) -> bool {
    let cat = aof.catalog_snapshot();
    let sealed: Vec<_> = cat.iter().filter(|s| s.sealed).collect();
    let continuable = if cat.iter().any(|s| !s.sealed) {
        None
    } else {
        sealed.last().map(|s| s.segment_id)
    };
    let mut total: u64 = sealed
        .iter()
        .filter(|s| s.local)
        .map(|s| s.disk_bytes)
        .sum();
    for s in sealed.iter().filter(|s| s.local) {
        if total <= bound {
            return true;
        }
        if s.archived && continuable != Some(s.segment_id) {
            return false;
        }
        total -= s.disk_bytes;
    }
    true
}

pub fn only_archived(aof: &Aof) -> Vec<u64> {
    aof.catalog_snapshot()
        .iter()
        .filter(|s| !s.local)
        .map(|s| s.segment_id)
        .collect()
}
