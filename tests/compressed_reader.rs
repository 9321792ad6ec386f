//! Reading a compressed sealed segment (`.zst`, `compressed_format.rs`) through the same
//! `SegmentReader` and `SegmentCursor` as a raw one: same ids, same bytes, the same
//! checks, and a damaged chunk reported by segment and offset. (The engine does not
//! write compressed segments yet: these files are made from a real log's sealed ones.)

mod common;

use aof2_shards::compressed_format::compress_segment;
use aof2_shards::fs::posix::PosixFs;
use aof2_shards::reader::{SegmentCursor, SegmentReader};
use bop_rs::aof2::{AofError, RecordId};
use common::*;
use std::path::PathBuf;

fn json_line(i: u64) -> Vec<u8> {
    format!(
        r#"{{"seq":{i},"level":"info","service":"orders","msg":"order {} accepted","items":{}}}"#,
        100_000 + i * 7,
        i % 13
    )
    .into_bytes()
}

/// A log whose segment 1 is sealed and full of JSON lines; returns its file, the
/// records in it, and a compressed copy next to it.
fn sealed_and_compressed(root: &std::path::Path) -> (PathBuf, Vec<(RecordId, Vec<u8>)>, PathBuf) {
    let m = manager();
    let aof = open(&m, small_cfg(root));
    let mut recs = Vec::new();
    let mut i = 0;
    while recs
        .last()
        .is_none_or(|(r, _): &(RecordId, Vec<u8>)| r.segment_index() < 3)
    {
        let p = json_line(i);
        recs.push((aof.append_record(&p).unwrap(), p));
        i += 1;
    }
    aof.flush().unwrap();
    drop(aof);
    recs.retain(|(r, _)| r.segment_index() == 1);
    let raw = root.join("segments").join(format!("{:020}.seg", 1));
    let z = compress_segment(&std::fs::read(&raw).unwrap(), 3, 8 * 1024).unwrap();
    let zst = root.join(format!("{:020}.zst", 1));
    std::fs::write(&zst, &z).unwrap();
    (raw, recs, zst)
}

#[test]
fn a_compressed_segment_reads_like_the_raw_one() {
    let d = tempfile::tempdir().unwrap();
    let (raw, recs, zst) = sealed_and_compressed(d.path());
    assert!(
        std::fs::metadata(&zst).unwrap().len() * 2 < std::fs::metadata(&raw).unwrap().len(),
        "compressed"
    );
    let fs = PosixFs::new();
    let r = SegmentReader::compressed(&fs, zst.clone()).unwrap();
    assert!(r.is_sealed());
    assert_eq!(r.record_count(), Some(recs.len() as u64));
    for (rid, p) in recs.iter().rev() {
        assert_eq!(r.read_record(*rid).unwrap().payload(), &p[..]);
    }
    // A cursor walks every record in order, the chain checked across chunks.
    let mut c = SegmentCursor::new(SegmentReader::compressed(&fs, zst.clone()).unwrap());
    let mut seen = Vec::new();
    while let Some(rec) = c.next().unwrap() {
        seen.push((rec.record_id(), rec.payload().to_vec()));
    }
    assert_eq!(seen, recs);
    // Seeking lands on any record.
    let mid = recs[recs.len() / 2].0;
    let mut c = SegmentCursor::new(SegmentReader::compressed(&fs, zst).unwrap());
    c.seek(mid).unwrap();
    assert_eq!(c.next().unwrap().unwrap().record_id(), mid);
}

#[test]
fn a_damaged_chunk_is_corruption_naming_segment_and_offset_and_the_rest_reads() {
    let d = tempfile::tempdir().unwrap();
    let (_, recs, zst) = sealed_and_compressed(d.path());
    let fs = PosixFs::new();
    // Damage the middle of the compressed data (past block 0, before the index).
    let mut b = std::fs::read(&zst).unwrap();
    let at = 4096 + (b.len() - 4096) / 3;
    b[at] ^= 0x40;
    std::fs::write(&zst, &b).unwrap();
    let r = SegmentReader::compressed(&fs, zst.clone()).unwrap();
    let (mut bad, mut good) = (0, 0);
    for (rid, p) in &recs {
        match r.read_record(*rid) {
            Ok(got) => {
                assert_eq!(got.payload(), &p[..]);
                good += 1;
            }
            Err(AofError::Corruption {
                segment,
                offset,
                path,
                ..
            }) => {
                assert_eq!(segment, 1);
                assert!(offset <= (rid.as_u64() & 0xffff_ffff), "{offset}");
                assert_eq!(path, zst);
                bad += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(bad > 0 && good > 0, "bad {bad}, good {good}");
    // The cursor stops at the damaged chunk with the same error, nothing skipped.
    let mut c = SegmentCursor::new(SegmentReader::compressed(&fs, zst.clone()).unwrap());
    let e = loop {
        match c.next() {
            Ok(Some(_)) => {}
            Ok(None) => panic!("read past a damaged chunk"),
            Err(e) => break e,
        }
    };
    assert!(matches!(e, AofError::Corruption { segment: 1, .. }), "{e}");
    // A damaged index or trailer refuses the whole file, naming it.
    let n = b.len();
    b[n - 10] ^= 1;
    std::fs::write(&zst, &b).unwrap();
    let e = SegmentReader::compressed(&fs, zst.clone()).err().unwrap();
    assert!(e.to_string().contains(zst.to_str().unwrap()), "{e}");
}
