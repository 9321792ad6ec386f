//! Recycled segment files: a released file becomes the next prepared segment without
//! zero-writing, its stale frames never read back, and recovery after a crash in the
//! middle of a write stops exactly at the last frame of the file's new life.

#[path = "../../tests/common/mod.rs"]
mod common;

use bop_rs::aof2::config::SegmentId;
use bop_rs::aof2::reader::SegmentCursor;
use bop_rs::aof2::{Aof, RecordId};
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn record(tag: u64, i: u64) -> Vec<u8> {
    let mut p = payload(tag, i);
    p.resize(2000, (i % 251) as u8);
    p
}

fn seg_path(root: &Path, id: u64) -> PathBuf {
    root.join("segments").join(format!("{id:020}.seg"))
}

/// The recycled flag of a segment file's header (flags bit 0, bytes 12..16).
fn is_recycled(root: &Path, id: u64) -> bool {
    let b = std::fs::read(seg_path(root, id)).unwrap();
    u32::from_le_bytes(b[12..16].try_into().unwrap()) & 1 == 1
}

/// Records of one segment, read back in order.
fn records_of(aof: &Aof, seg: u64) -> Vec<(RecordId, Vec<u8>)> {
    let mut c = SegmentCursor::new(aof.open_reader(SegmentId::new(seg)).unwrap());
    let mut v = Vec::new();
    while let Some(r) = c.next().unwrap() {
        v.push((r.record_id(), r.payload().to_vec()));
    }
    v
}

fn verify(root: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_aof2"))
        .arg("verify")
        .arg(root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "aof2 verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_recycled_file_full_of_old_frames_recovers_to_exactly_its_new_records() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    let m = manager();
    let aof = open(&m, small_cfg(root));
    // Segments 0 and 1 full of valid frames of the same size as the new ones, so the
    // stale frames sit exactly where the next new frame would go.
    let mut rids = Vec::new();
    let mut i = 0;
    while rids.last().is_none_or(|r: &RecordId| r.segment_index() < 2) {
        rids.push(aof.append_record(&record(1, i)).unwrap());
        i += 1;
    }
    aof.flush().unwrap();
    assert_eq!(aof.release_before(*rids.last().unwrap()).unwrap(), 2);
    // Roll until a segment starts in a recycled file.
    let start = Instant::now();
    let recycled = loop {
        let r = aof.append_record(&record(2, i)).unwrap();
        i += 1;
        aof.flush().unwrap();
        let seg = r.segment_index() as u64;
        if aof.flush_metrics().segments_recycled > 0 && is_recycled(root, seg) {
            break seg;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "nothing recycled"
        );
    };
    // A few new records in it, then the crash: the next frame's write was torn (half
    // of a frame of this life lands over the stale frames).
    let first_new = records_of(&aof, recycled);
    let mut new: Vec<_> = first_new.clone();
    for k in 0..3 {
        let p = record(3, k);
        let rid = aof.append_record(&p).unwrap();
        assert_eq!(rid.segment_index() as u64, recycled);
        new.push((rid, p));
    }
    aof.flush().unwrap();
    let data_end = {
        let (rid, p) = new.last().unwrap();
        (rid.as_u64() & 0xffff_ffff) + ((32 + p.len() as u64 + 7) & !7)
    };
    drop(aof);
    let path = seg_path(root, recycled);
    let mut img = std::fs::read(&path).unwrap();
    // What lies past the new frames is a stale frame (kind 1 at byte 8), not zeros.
    assert_eq!(
        img[data_end as usize + 8],
        1,
        "no stale frame past the data end"
    );
    let torn: Vec<u8> = img[64..64 + 1024].to_vec(); // a frame of this life, cut short
    img[data_end as usize..data_end as usize + 1024].copy_from_slice(&torn);
    // Its checksum no longer matches: a torn write.
    img[data_end as usize] ^= 0xff;
    // A crash, not a clean close: no seal footer (the close wrote one).
    let n = img.len();
    img[n - 4096..].fill(0);
    std::fs::write(&path, &img).unwrap();

    let aof = open(&m, small_cfg(root));
    let got = records_of(&aof, recycled);
    assert_eq!(
        got, new,
        "recovery kept exactly the new records of the recycled file"
    );
    // The log goes on in a new segment; nothing stale ever reads back.
    let next = aof.append_record(b"after the crash").unwrap();
    aof.flush().unwrap();
    assert!(next.segment_index() as u64 > recycled);
    drop(aof);
    verify(root);
    let aof = open(&m, small_cfg(root));
    assert_eq!(records_of(&aof, recycled), new, "a second recovery agrees");
    assert_eq!(read_back(&aof, next), b"after the crash");
}
