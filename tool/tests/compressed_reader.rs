//! Reading a compressed sealed segment (`.zst`, `compressed_format.rs`) through the same
//! `SegmentReader` and `SegmentCursor` as a raw one: same ids, same bytes, the same
//! checks, and a damaged chunk reported by segment and offset. These files are made
//! from a real log's sealed ones by hand, so each case is exact (`compression.rs`
//! tests the engine's own).

#[path = "../../tests/common/mod.rs"]
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

/// A log with segments 0..=2 sealed; segment 1 also as `<1>.zst` in `segments/`.
fn log_with_a_compressed_copy(
    root: &std::path::Path,
) -> (Vec<(RecordId, Vec<u8>)>, PathBuf, PathBuf) {
    let (raw, _, zst) = sealed_and_compressed(root);
    // Every record of the log, read before the compressed copy is in place.
    let all = read_all(root);
    let to = root.join("segments").join(format!("{:020}.zst", 1));
    std::fs::rename(&zst, &to).unwrap();
    (all, raw, to)
}

fn read_all(root: &std::path::Path) -> Vec<(RecordId, Vec<u8>)> {
    let m = manager();
    let aof = open(&m, small_cfg(root));
    let mut all = Vec::new();
    let mut s = bop_rs::aof2::reader::SealedSegmentStream::new(&aof).unwrap();
    aof.close().unwrap();
    while let Some(seg) = s.next_segment_blocking().unwrap() {
        let mut c = seg.into_cursor();
        while let Some(r) = c.next().unwrap() {
            all.push((r.record_id(), r.payload().to_vec()));
        }
    }
    for (rid, p) in all.iter().step_by(17) {
        assert_eq!(read_back(&aof, *rid), *p);
    }
    all
}

fn aof2(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_aof2"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn a_log_with_a_compressed_segment_opens_reads_and_verifies_the_same() {
    let d = tempfile::tempdir().unwrap();
    let (all, raw, zst) = log_with_a_compressed_copy(d.path());
    // A swap cut short after the rename: both files; the valid .zst wins.
    assert!(raw.exists() && zst.exists());
    assert_eq!(read_all(d.path()), all);
    assert!(
        !raw.exists(),
        "the raw copy goes once the compressed one validated"
    );
    assert!(zst.exists());
    // The tools read it too.
    let r = d.path().to_str().unwrap();
    let out = aof2(&["verify", r]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = aof2(&["dump", r]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        all.len()
    );
    // `stat` shows its raw and compressed sizes.
    let out = aof2(&["stat", r]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let zst_len = std::fs::metadata(&zst).unwrap().len();
    let line = text
        .lines()
        .find(|l| l.contains(" zstd "))
        .unwrap_or_else(|| panic!("no compressed segment in:\n{text}"));
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        cols[..5],
        ["1", "zstd", "local", "65536", &zst_len.to_string()],
        "{line}"
    );
    assert!(text.contains("1 compressed: 65536 raw bytes in"), "{text}");
    // Releasing it removes the compressed file (never kept as a spare).
    let m = manager();
    let aof = open(&m, small_cfg(d.path()));
    let cut = all.iter().find(|(r, _)| r.segment_index() == 2).unwrap().0;
    assert_eq!(aof.release_before(cut).unwrap(), 2);
    let start = std::time::Instant::now();
    while zst.exists() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "never removed"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    drop(aof);
    let spares: Vec<_> = std::fs::read_dir(d.path().join("segments"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".spare"))
        .collect();
    assert!(
        spares
            .iter()
            .all(|n| !n.starts_with("00000000000000000001")),
        "{spares:?}"
    );
}

#[test]
fn a_half_written_compressed_file_is_dropped_and_the_raw_copy_kept() {
    let d = tempfile::tempdir().unwrap();
    let (all, raw, zst) = log_with_a_compressed_copy(d.path());
    // Cut short (a crash before its sync), beside the raw copy; and a temp file.
    let b = std::fs::read(&zst).unwrap();
    std::fs::write(&zst, &b[..b.len() / 2]).unwrap();
    let tmp = d.path().join("segments").join(format!("{:020}.zst.tmp", 2));
    std::fs::write(&tmp, b"partial").unwrap();
    assert_eq!(read_all(d.path()), all);
    assert!(raw.exists() && !zst.exists() && !tmp.exists());
}

#[test]
fn a_damaged_compressed_file_with_no_raw_copy_is_an_error_naming_it() {
    let d = tempfile::tempdir().unwrap();
    let (_, raw, zst) = log_with_a_compressed_copy(d.path());
    std::fs::remove_file(&raw).unwrap();
    let mut b = std::fs::read(&zst).unwrap();
    let n = b.len();
    b[n - 20] ^= 1; // the trailer
    std::fs::write(&zst, &b).unwrap();
    let m = manager();
    let e = bop_rs::aof2::Aof::new(m.handle(), small_cfg(d.path()))
        .err()
        .unwrap();
    assert!(matches!(e, AofError::Corruption { segment: 1, .. }), "{e}");
    assert!(e.to_string().contains(zst.to_str().unwrap()), "{e}");
    assert!(zst.exists(), "the only copy is never removed");
}

#[test]
fn a_damaged_index_is_corruption_naming_the_segment_and_the_index_offset() {
    let d = tempfile::tempdir().unwrap();
    let (_, _, zst) = sealed_and_compressed(d.path());
    let mut b = std::fs::read(&zst).unwrap();
    let n = b.len();
    let index_at = u64::from_le_bytes(b[n - 48..n - 40].try_into().unwrap());
    b[index_at as usize + 40] ^= 1; // the second entry
    std::fs::write(&zst, &b).unwrap();
    let e = SegmentReader::compressed(&PosixFs::new(), zst.clone())
        .err()
        .unwrap();
    match &e {
        AofError::Corruption {
            segment, offset, ..
        } => assert_eq!((*segment, *offset), (1, index_at), "{e}"),
        e => panic!("{e}"),
    }
    assert!(e.to_string().contains(zst.to_str().unwrap()), "{e}");
}
