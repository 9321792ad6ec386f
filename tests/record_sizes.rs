//! Record sizes across every boundary, with the default configuration: the block, a
//! small segment's buffer, a new log's first segment (1 MiB), the log buffer (1 MiB),
//! the target segment size (16 MiB) and the largest record (`segment_max_bytes`); on a
//! new log, a reopened one, and interleaved in random orders with flushes and reopens.
//! (A new log's first record of about 1 MiB once panicked its shard thread: every
//! test before used small segments, never the default shapes.)

mod common;
use bop_rs::aof2::config::{AofConfig, SegmentId};
use bop_rs::aof2::reader::SegmentCursor;
use bop_rs::aof2::{Aof, AofError, AofManager, RecordId};
use common::*;
use proptest::prelude::*;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
/// Segment header and the frame header before a payload; the footer region after.
const HEADER: usize = 64;
const FRAME: usize = 32;
const FOOTER: usize = 4096;

/// The largest payload a segment file of `size` bytes takes as its first record.
fn fits_first(size: usize) -> usize {
    size - FOOTER - HEADER - FRAME
}

/// Payload lengths on both sides of every boundary of the default configuration
/// (all but the largest records, which have a test of their own).
fn boundary_sizes() -> Vec<usize> {
    vec![
        0,
        1,
        100,
        4096 - HEADER - FRAME, // a new segment's first block exactly
        4096 - FRAME - 8,
        4096 - FRAME,
        4096,
        4097,
        64 * KIB - FRAME, // a small segment's buffer
        64 * KIB,
        64 * KIB + 1,
        fits_first(MIB), // the first segment, exactly
        fits_first(MIB) + 1,
        1_048_512, // a buffer: the size that panicked a new log's shard
        MIB,
        1_100_000,
        2 * MIB,
        3_000_000,
    ]
}

fn default_cfg(root: &std::path::Path) -> AofConfig {
    let mut c = AofConfig::default();
    c.root_dir = root.to_path_buf();
    c
}

fn record(len: usize, tag: u64) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u64 ^ tag.wrapping_mul(0x9e37)) as u8)
        .collect()
}

/// Every durable record of the log, in order, read through each segment's cursor.
fn read_all(aof: &Aof) -> Vec<(RecordId, Vec<u8>)> {
    let mut out = Vec::new();
    for s in aof.catalog_snapshot() {
        let r = aof.open_reader(SegmentId::new(s.segment_id)).unwrap();
        let mut c = SegmentCursor::new(r);
        while let Some(rec) = c.next().unwrap() {
            out.push((rec.record_id(), rec.payload().to_vec()));
        }
    }
    out
}

fn check(aof: &Aof, want: &[(RecordId, Vec<u8>)]) {
    let got = read_all(aof);
    assert_eq!(got.len(), want.len(), "record count");
    for ((gr, gp), (wr, wp)) in got.iter().zip(want) {
        assert_eq!(gr, wr);
        assert!(
            gp == wp,
            "record {wr}: {} bytes back, {} appended",
            gp.len(),
            wp.len()
        );
    }
}

#[test]
fn a_new_logs_first_record_of_about_one_mib_is_durable_and_reads_back() {
    let m = manager();
    for len in [1_048_512usize, 1_100_000, 2 * MIB, 3_000_000] {
        let dir = tempfile::tempdir().unwrap();
        let aof = open(&m, default_cfg(dir.path()));
        let rec = record(len, 1);
        let rid = aof.append_record(&rec).expect("append");
        aof.flush_until(rid).expect("flush");
        assert_eq!(read_back(&aof, rid), rec, "len {len}");
    }
}

/// Each boundary size as a new log's first record, after small records (a slow log in
/// its first small segment), and again after a reopen; everything reads back.
#[test]
fn every_boundary_size_on_a_new_and_a_reopened_log() {
    let m = manager();
    for len in boundary_sizes().into_iter().chain([
        fits_first(16 * MIB), // the target size, exactly
        fits_first(16 * MIB) + 1,
    ]) {
        let dir = tempfile::tempdir().unwrap();
        let mut want = Vec::new();
        {
            let aof = open(&m, default_cfg(dir.path()));
            for (i, p) in [record(len, 1), record(10, 2), record(len, 3)]
                .into_iter()
                .enumerate()
            {
                let rid = aof.append_record(&p).unwrap();
                if i != 1 {
                    aof.flush_until(rid).unwrap();
                }
                want.push((rid, p));
            }
            aof.flush().unwrap();
            check(&aof, &want);
        }
        let aof = open(&m, default_cfg(dir.path()));
        for p in [record(len, 4), record(len / 2, 5)] {
            let rid = aof.append_record(&p).unwrap();
            want.push((rid, p));
        }
        aof.flush().unwrap();
        check(&aof, &want);
    }
}

/// The largest record the default configuration takes (a segment of
/// `segment_max_bytes` of its own) is durable and reads back; one byte more is refused,
/// naming both sizes, and the log goes on.
#[test]
fn the_largest_record_works_and_one_byte_more_is_refused() {
    let m = manager();
    let dir = tempfile::tempdir().unwrap();
    let aof = open(&m, default_cfg(dir.path()));
    let max = fits_first(256 * MIB);
    assert_eq!(max, aof.config().max_record_bytes());
    let big = record(max, 7);
    let small = aof.append_record(b"before").unwrap();
    let rid = aof.append_record(&big).unwrap();
    aof.flush_until(rid).unwrap();
    assert!(read_back(&aof, rid) == big);
    match aof.append_record(&vec![0u8; max + 1]) {
        Err(AofError::RecordTooLarge { len, max: m }) => assert_eq!((len, m), (max + 1, max)),
        r => panic!("a record one byte too large: {r:?}"),
    }
    let after = aof.append_record(b"after").unwrap();
    aof.flush_until(after).unwrap();
    assert_eq!(read_back(&aof, small), b"before");
    assert_eq!(read_back(&aof, after), b"after");
}

#[derive(Debug, Clone)]
enum Step {
    Append(usize),
    Flush,
    Reopen,
}

fn step() -> impl Strategy<Value = Step> {
    let sizes = boundary_sizes();
    prop_oneof![
        6 => proptest::sample::select(sizes).prop_map(Step::Append),
        2 => Just(Step::Flush),
        1 => Just(Step::Reopen),
    ]
}

fn run_steps(m: &AofManager, steps: &[Step]) {
    let dir = tempfile::tempdir().unwrap();
    let mut aof = Some(open(m, default_cfg(dir.path())));
    let mut want = Vec::new();
    for (i, s) in steps.iter().enumerate() {
        let a = aof.as_ref().unwrap();
        match s {
            Step::Append(len) => {
                let p = record(*len, i as u64);
                want.push((a.append_record(&p).unwrap(), p));
            }
            Step::Flush => a.flush().unwrap(),
            Step::Reopen => {
                drop(aof.take());
                aof = Some(open(m, default_cfg(dir.path())));
            }
        }
    }
    let a = aof.unwrap();
    a.flush().unwrap();
    check(&a, &want);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Boundary sizes interleaved in random orders with flushes and reopens, on a new
    /// log with the default configuration: every record reads back, in order.
    #[test]
    fn boundary_sizes_interleaved_with_flushes_and_reopens(steps in proptest::collection::vec(step(), 1..14)) {
        run_steps(&manager(), &steps);
    }
}

/// The same sizes from a task on the log's own shard (`spawn_on_shard`, async appends
/// and flushes: the zero-hop path), on a new log and after a reopen, beside a slow
/// second log on the same shard: every record comes back.
#[test]
fn every_boundary_size_from_a_task_on_the_logs_shard() {
    let mut mc = bop_rs::aof2::AofManagerConfig::default();
    mc.shards = 2;
    let m = bop_rs::aof2::AofManager::with_config(mc).unwrap();
    let (dir, quiet) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let placed = |root: &std::path::Path| {
        let mut c = default_cfg(root);
        c.shard = Some(1);
        std::sync::Arc::new(open(&m, c))
    };
    let neighbour = placed(quiet.path());
    let mut want = Vec::new();
    for session in 0..2u64 {
        let log = placed(dir.path());
        let (l, n) = (log.clone(), neighbour.clone());
        let written = m
            .spawn_on_shard(1, move || async move {
                let mut out = Vec::new();
                for (i, len) in boundary_sizes().into_iter().enumerate() {
                    let p = record(len, session * 1000 + i as u64);
                    let rid = l.append_record_async(&p).await?;
                    l.flush_until_async(rid).await?;
                    out.push((rid, p));
                    // A slow neighbour on the same shard.
                    if i % 5 == 0 {
                        let r = n.append_record_async(b"neighbour").await?;
                        n.flush_until_async(r).await?;
                    }
                }
                Ok::<_, bop_rs::aof2::AofError>(out)
            })
            .unwrap()
            .join()
            .unwrap()
            .unwrap();
        want.extend(written);
        assert_eq!(read_all(&log), want, "session {session}");
    }
}
