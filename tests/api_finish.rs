//! What a service expects of the public types: `Debug` everywhere (naming the log),
//! `close` that reports its outcome and can be called again, snapshots built from
//! `Default`.

mod common;

use bop_rs::aof2::config::SegmentId;
use bop_rs::aof2::reader::{SealedSegmentStream, SegmentCursor};
use bop_rs::aof2::{AofError, FlushMetricsSnapshot};
use common::*;

fn debug<T: std::fmt::Debug>(v: &T) -> String {
    format!("{v:?}")
}

#[test]
fn every_public_type_has_a_debug_that_names_what_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let m = manager();
    let aof = open(&m, small_cfg(dir.path()));
    let rid = aof.append_record(b"x").unwrap();
    aof.flush_until(rid).unwrap();
    let root = dir.path().display().to_string();
    assert!(debug(&m).contains("AofManager"), "{}", debug(&m));
    assert!(debug(&m.handle()).contains("AofManagerHandle"));
    assert!(debug(&aof).contains(&root), "{}", debug(&aof));
    let reader = aof
        .open_reader(SegmentId::new(rid.segment_index() as u64))
        .unwrap();
    assert!(debug(&reader).contains(&root), "{}", debug(&reader));
    let cursor = SegmentCursor::new(reader);
    assert!(debug(&cursor).contains("offset"), "{}", debug(&cursor));
    assert!(debug(&aof.tail_follower()).contains("TailFollower"));
    let stream = SealedSegmentStream::new(&aof).unwrap();
    assert!(debug(&stream).contains("SealedSegmentStream"));
    let task = m.spawn_on_shard(0, || async { 7 }).unwrap();
    assert!(!debug(&task).is_empty());
    assert_eq!(task.join().unwrap(), 7);
    let e = AofError::Closed {
        path: dir.path().to_path_buf(),
    };
    assert!(debug(&e).contains(&root));
}

#[test]
fn close_reports_success_and_can_be_called_again() {
    let dir = tempfile::tempdir().unwrap();
    let m = manager();
    let aof = open(&m, small_cfg(dir.path()));
    aof.append_record(b"unflushed").unwrap();
    aof.close().expect("the final sync and seal succeed");
    aof.close().expect("again: still fine");
    assert!(matches!(
        aof.append_record(b"late"),
        Err(AofError::Closed { .. })
    ));
    drop(aof);
    // The close synced the record.
    let aof = open(&m, small_cfg(dir.path()));
    assert_eq!(
        aof.catalog_snapshot()
            .iter()
            .map(|s| s.record_count)
            .sum::<u64>(),
        1
    );
}

#[test]
fn a_metrics_snapshot_is_built_from_default() {
    let mut s = FlushMetricsSnapshot::default();
    s.syncs = 3;
    assert_eq!(s.syncs, 3);
}
