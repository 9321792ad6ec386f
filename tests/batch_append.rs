//! Atomic batches (`append_batch`) and in-place appends (`append_with`): read back by
//! id, cursor and stream on new and reopened logs, with the default configuration and
//! record sizes across the block, buffer and first-segment boundaries; refused batches;
//! a panicking `fill`; the async forms on Tokio and in a task on the log's own shard;
//! and logs written in format version 1.

mod common;

use aof2_shards::format;
use aof2_shards::inspect::LogDir;
use bop_rs::aof2::config::{AofConfig, SegmentId};
use bop_rs::aof2::error::AofError;
use bop_rs::aof2::reader::{SealedSegmentStream, SegmentCursor};
use bop_rs::aof2::{Aof, RecordId};
use common::*;
use std::path::Path;
use std::sync::Arc;

type Records = Vec<(RecordId, Vec<u8>)>;

/// The ids of a batch's records, from the last one's: they lie back to back.
fn batch_ids(last: RecordId, records: &[Vec<u8>]) -> Vec<RecordId> {
    let mut off = last.segment_offset();
    let mut ids = vec![last; records.len()];
    for i in (0..records.len() - 1).rev() {
        off -= format::frame_size(records[i].len()) as u32;
        ids[i] = RecordId::from_parts(last.segment_index(), off);
    }
    ids
}

fn batch(aof: &Aof, records: Vec<Vec<u8>>, want: &mut Records) -> RecordId {
    let refs: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
    let last = aof.append_batch(&refs).expect("batch appended");
    want.extend(batch_ids(last, &records).into_iter().zip(records));
    last
}

fn filled(aof: &Aof, p: Vec<u8>, want: &mut Records) -> RecordId {
    let rid = aof
        .append_with(p.len(), |b| b.copy_from_slice(&p))
        .expect("record appended in place");
    want.push((rid, p));
    rid
}

/// Every record through cursors over each segment of the catalog.
fn by_cursor(aof: &Aof) -> Records {
    let mut out = Vec::new();
    for seg in aof.catalog_snapshot() {
        let reader = aof.open_reader(SegmentId::new(seg.segment_id)).unwrap();
        let mut c = SegmentCursor::new(reader);
        while let Some(r) = c.next().unwrap() {
            out.push((r.record_id(), r.payload().to_vec()));
        }
    }
    out
}

/// Every record through a stream, after the log is closed (so the stream ends).
fn by_stream(aof: &Aof) -> Records {
    aof.close().unwrap();
    let mut out = Vec::new();
    let mut s = SealedSegmentStream::new(aof).unwrap();
    while let Some(seg) = s.next_segment_blocking().unwrap() {
        let mut c = seg.into_cursor();
        while let Some(r) = c.next().unwrap() {
            out.push((r.record_id(), r.payload().to_vec()));
        }
    }
    out
}

fn check_all(aof: &Aof, want: &Records) {
    for (rid, p) in want {
        assert_eq!(&read_back(aof, *rid), p, "record {rid} by id");
    }
    assert_eq!(&by_cursor(aof), want, "by cursor");
}

fn default_cfg(root: &Path) -> AofConfig {
    let mut c = AofConfig::default();
    c.root_dir = root.to_path_buf();
    c
}

fn sized(tag: u64, seq: u64, len: usize) -> Vec<u8> {
    let mut p = payload(tag, seq);
    p.resize(len, (seq as u8) ^ 0x5a);
    p
}

#[test]
fn batches_and_in_place_records_read_back_by_id_cursor_and_stream_on_new_and_reopened_logs() {
    let dir = tempfile::tempdir().unwrap();
    let m = manager();
    let aof = open(&m, default_cfg(dir.path()));
    let mut want = Records::new();
    // A new log's first segment is 1 MiB: its data ends 4096 + 64 bytes short of that.
    let first_seg = 1024 * 1024 - 4096 - 64;
    let mut seq = 0;
    let mut next = |len: usize| {
        seq += 1;
        sized(1, seq, len)
    };
    let r = aof.append_record(&next(10)).unwrap();
    want.push((r, sized(1, 1, 10)));
    // Sizes across the block, a frame's padding and the buffers.
    batch(&aof, vec![next(0), next(1), next(7), next(8)], &mut want);
    batch(
        &aof,
        vec![next(4096 - 32), next(4096), next(4097)],
        &mut want,
    );
    filled(&aof, next(0), &mut want);
    filled(&aof, next(4095), &mut want);
    // Larger than what is left of the first segment: the batch starts the next one.
    let big = batch(
        &aof,
        vec![next(first_seg / 2), next(first_seg / 2)],
        &mut want,
    );
    assert!(big.segment_index() > want[0].0.segment_index());
    // Records of 300 KiB written in place: some straddle two 1 MiB buffers.
    for _ in 0..8 {
        filled(&aof, next(300 * 1024), &mut want);
    }
    // A batch as large as a first segment holds, then a single record.
    batch(
        &aof,
        vec![next(first_seg - 32 - 2048), next(2048 - 32)],
        &mut want,
    );
    let last = filled(&aof, next(33), &mut want);
    aof.flush_until(last).unwrap();
    check_all(&aof, &want);
    assert_eq!(by_stream(&aof), want, "by stream");
    drop(aof);

    let aof = open(&m, default_cfg(dir.path()));
    check_all(&aof, &want);
    batch(&aof, vec![next(5), next(6000)], &mut want);
    let r = filled(&aof, next(77), &mut want);
    aof.flush_until(r).unwrap();
    check_all(&aof, &want);
    assert_eq!(by_stream(&aof), want, "by stream after a reopen");
    drop(aof);
    let checked = LogDir::open(dir.path()).unwrap().verify().unwrap();
    assert!(checked.iter().all(|s| s.torn_tail.is_none()));
}

#[test]
fn an_empty_or_oversized_batch_is_refused_and_appends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let m = manager();
    let aof = open(&m, small_cfg(dir.path())); // segment_max_bytes 1 MiB
    let first = aof.append_record(b"first").unwrap();
    let e = aof.append_batch(&[]).unwrap_err();
    assert!(matches!(e, AofError::BadBatch { records: 0, .. }), "{e}");
    let half = vec![7u8; 600 * 1024];
    let e = aof.append_batch(&[&half, &half]).unwrap_err();
    assert!(
        matches!(e, AofError::BadBatch { records: 2, .. })
            && e.to_string().contains("segment_max_bytes"),
        "{e}"
    );
    let huge = vec![1u8; 2 * 1024 * 1024];
    let e = aof.append_batch(&[b"small", &huge]).unwrap_err();
    assert!(matches!(e, AofError::RecordTooLarge { .. }), "{e}");
    // Nothing was appended: the next record follows the first.
    let next = aof.append_record(b"second").unwrap();
    assert_eq!(
        next.as_u64(),
        first.as_u64() + format::frame_size(5) as u64,
        "refused batches left no frame"
    );
    aof.flush_until(next).unwrap();
    assert_eq!(
        by_cursor(&aof),
        vec![(first, b"first".to_vec()), (next, b"second".to_vec())]
    );
}

#[test]
fn a_batch_that_does_not_fit_the_active_segment_lands_whole_in_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let m = manager();
    let aof = open(&m, small_cfg(dir.path())); // 64 KiB segments
    let mut want = Records::new();
    let r = aof.append_record(&vec![3u8; 40 * 1024]).unwrap();
    want.push((r, vec![3u8; 40 * 1024]));
    let recs: Vec<Vec<u8>> = (0..6).map(|i| sized(2, i, 5000)).collect();
    let last = batch(&aof, recs, &mut want);
    let segs: std::collections::BTreeSet<u32> =
        want[1..].iter().map(|r| r.0.segment_index()).collect();
    assert_eq!(segs.len(), 1, "one segment holds the whole batch");
    assert!(last.segment_index() > r.segment_index());
    aof.flush_until(last).unwrap();
    check_all(&aof, &want);
}

#[test]
fn a_panicking_fill_propagates_appends_nothing_and_leaves_the_log_usable() {
    let dir = tempfile::tempdir().unwrap();
    let m = manager();
    let aof = open(&m, default_cfg(dir.path()));
    let panics = |len: usize| {
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            aof.append_with(len, |b| {
                b.fill(0xee);
                panic!("fill of {len} bytes fails");
            })
        }));
        let msg = caught.expect_err("the panic reaches the caller");
        let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains("fill of"), "{msg}");
    };
    let a = aof.append_record(b"before").unwrap();
    for len in [0usize, 100, 5000] {
        panics(len);
    }
    let b = aof.append_record(b"after").unwrap();
    assert_eq!(
        b.as_u64(),
        a.as_u64() + format::frame_size(6) as u64,
        "the panicked records' space was taken back"
    );
    // Larger than what the first segment has left: the next segment was opened for it,
    // and that opening is undone (the file goes back to the prepared ones), as if the
    // append had never come: the next record follows in the same segment.
    panics(2 * 1024 * 1024);
    // Give the shard time to look at the log: it must write nothing of the record.
    std::thread::sleep(std::time::Duration::from_millis(50));
    let c = aof.append_record(b"later").unwrap();
    assert_eq!(c.segment_index(), b.segment_index());
    assert_eq!(c.as_u64(), b.as_u64() + format::frame_size(5) as u64);
    aof.flush_until(c).unwrap();
    let want = vec![
        (a, b"before".to_vec()),
        (b, b"after".to_vec()),
        (c, b"later".to_vec()),
    ];
    check_all(&aof, &want);
    drop(aof);
    let aof = open(&m, default_cfg(dir.path()));
    check_all(&aof, &want);
    drop(aof);
    let checked = LogDir::open(dir.path()).unwrap().verify().unwrap();
    assert!(checked.iter().all(|s| s.torn_tail.is_none()));
}

#[test]
fn async_batches_and_fills_on_tokio_and_in_a_task_on_the_logs_shard() {
    let dir = tempfile::tempdir().unwrap();
    let m = manager();
    let mut cfg = default_cfg(dir.path());
    cfg.shard = Some(0);
    let aof = Arc::new(open(&m, cfg));
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut want = rt.block_on(async {
        let mut want = Records::new();
        let recs = vec![sized(3, 0, 10), sized(3, 1, 5000)];
        let refs: Vec<&[u8]> = recs.iter().map(Vec::as_slice).collect();
        let last = aof.append_batch_async(&refs).await.unwrap();
        want.extend(batch_ids(last, &recs).into_iter().zip(recs.clone()));
        let p = sized(3, 2, 300);
        let q = p.clone();
        let r = aof
            .append_with_async(p.len(), move |b| b.copy_from_slice(&q))
            .await
            .unwrap();
        want.push((r, p));
        aof.flush_until_async(r).await.unwrap();
        want
    });
    let task_aof = aof.clone();
    let from_task = m
        .spawn_on_shard(0, move || async move {
            let mut got = Records::new();
            for i in 0..20u64 {
                let recs = vec![sized(4, 2 * i, 100), sized(4, 2 * i + 1, 3000)];
                let refs: Vec<&[u8]> = recs.iter().map(Vec::as_slice).collect();
                let last = task_aof.append_batch_async(&refs).await.unwrap();
                got.extend(batch_ids(last, &recs).into_iter().zip(recs.clone()));
                let p = sized(5, i, 200);
                let q = p.clone();
                let r = task_aof
                    .append_with_async(p.len(), move |b| b.copy_from_slice(&q))
                    .await
                    .unwrap();
                got.push((r, p));
                task_aof.flush_until_async(r).await.unwrap();
            }
            got
        })
        .unwrap()
        .join()
        .unwrap();
    want.extend(from_task);
    check_all(&aof, &want);
}

/// Rewrites every segment of a closed log in format version 1: version 1 in its
/// header, and every frame and the footer checksummed under that header again.
fn downgrade_to_v1(root: &Path) {
    let segs = root.join("segments");
    for e in std::fs::read_dir(&segs).unwrap() {
        let path = e.unwrap().path();
        if path.extension().and_then(|x| x.to_str()) != Some("seg") {
            continue;
        }
        let img = std::fs::read(&path).unwrap();
        let format::HeaderState::Valid(h, seed) = format::SegmentHeader::decode(&img).unwrap()
        else {
            continue;
        };
        let fat = (h.file_size - format::FOOTER_REGION) as usize;
        let f = format::SegmentFooter::decode(&img[fat..], seed, h.file_size)
            .unwrap()
            .expect("a closed log's segments are sealed");
        let old = format::SegmentHeader { version: 1, ..h };
        let (hb, new_seed) = old.encode();
        let mut out = vec![0u8; img.len()];
        out[..format::HEADER_LEN].copy_from_slice(&hb);
        let mut prev = new_seed;
        let mut off = format::HEADER_LEN;
        for fr in format::frames(seed, &img, f.data_end) {
            let fr = fr.unwrap();
            assert_eq!(fr.header.flags, 0, "no batches in this log");
            let (bytes, crc) = format::encode_frame(
                new_seed,
                prev,
                fr.header.kind,
                fr.header.synced_before,
                fr.header.timestamp_ns,
                fr.payload,
            );
            out[off..off + bytes.len()].copy_from_slice(&bytes);
            off += bytes.len();
            prev = crc;
        }
        let footer = format::SegmentFooter {
            last_frame_crc: prev,
            ..f
        };
        out[fat..fat + format::FOOTER_LEN].copy_from_slice(&footer.encode(new_seed));
        std::fs::write(&path, out).unwrap();
    }
}

#[test]
fn a_log_written_in_format_version_1_opens_unchanged_and_new_records_go_to_a_new_segment() {
    let dir = tempfile::tempdir().unwrap();
    let m = manager();
    let aof = open(&m, small_cfg(dir.path()));
    let mut want = Records::new();
    for i in 0..40 {
        let p = payload(6, i);
        want.push((aof.append_record(&p).unwrap(), p));
    }
    drop(aof); // a clean close: the last segment could be continued
    downgrade_to_v1(dir.path());
    let before: Vec<_> = LogDir::open(dir.path()).unwrap().verify().unwrap();
    assert!(before.iter().all(|s| s.torn_tail.is_none()));

    let aof = open(&m, small_cfg(dir.path()));
    check_all(&aof, &want);
    let last_v1 = want.last().unwrap().0.segment_index();
    let recs = vec![sized(7, 0, 10), sized(7, 1, 20)];
    let last = batch(&aof, recs, &mut want);
    assert!(
        last.segment_index() > last_v1,
        "a version 1 segment is not continued (it cannot hold a batch's flags)"
    );
    aof.flush_until(last).unwrap();
    check_all(&aof, &want);
    drop(aof);
    let aof = open(&m, small_cfg(dir.path()));
    check_all(&aof, &want);
}
