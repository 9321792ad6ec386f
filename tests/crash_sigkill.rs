//! Real process kills. A child process appends records and calls `flush_until`,
//! reporting each acknowledged id over a pipe; it is killed with SIGKILL at a random
//! moment (mid-append, mid-roll, mid-seal, mid-preparation), several rounds on the same
//! directory. After each kill every acknowledged record must come back byte for byte,
//! and what is on disk must be, per round, a gap-free prefix of what was appended.
//! Even rounds commit from the writing thread ([`CommitMode::Caller`], the default),
//! odd rounds through the shard ([`CommitMode::Shard`]); every fourth round writes
//! from a task on the log's own shard (`spawn_on_shard`, async appends and flushes:
//! the zero-hop path). Every third round runs `Size`
//! retention, which releases and recycles segments in the background while the child
//! is killed: whatever a durable release let go never comes back, everything
//! acknowledged after it does. Two rounds in three compress sealed segments in the
//! background (`Compression::Zstd`), so kills land in swaps too; the walk of the files
//! inflates compressed segments and checks them as raw ones. Every fifth round opens
//! with `preallocate_segments` (each session's first file prepared from the open).
//!
//! `AOF2_CRASH_ROUNDS=N` sets the number of kills (default 12).

mod common;

use aof2_shards::compressed_format::CompressedSegment;
use aof2_shards::config::{CommitMode, Compression, RetentionPolicy};
use aof2_shards::format;
use aof2_shards::inspect::LogDir;
use aof2_shards::layout::LogPaths;
use bop_rs::aof2::config::SegmentId;
use bop_rs::aof2::reader::SealedSegmentStream;
use bop_rs::aof2::RecordId;
use common::*;
use std::path::Path;
use std::time::Duration;

/// The payload of record `seq` of round `round` carries both, so the parent can tell
/// rounds apart when it walks the files.
fn record(round: u64, seq: u64) -> Vec<u8> {
    let mut p = payload(round, seq);
    p.splice(
        0..0,
        round.to_le_bytes().into_iter().chain(seq.to_le_bytes()),
    );
    p
}

fn retains(round: u64) -> bool {
    round % 3 == 2
}

fn compresses(round: u64) -> bool {
    !round.is_multiple_of(3)
}

/// Every fourth round writes from a task on the log's shard (a `Shard` round).
fn in_task(round: u64) -> bool {
    round % 4 == 3
}

fn commit_mode(round: u64) -> CommitMode {
    if round.is_multiple_of(2) {
        CommitMode::Caller
    } else {
        CommitMode::Shard
    }
}

/// The writer, run in a child process.
#[test]
fn child_writer() {
    let Some((dir, round)) = crash_child() else {
        return; // only meaningful as a child of the test below
    };
    let m = manager();
    let mut cfg = small_cfg(&dir);
    cfg.segment_target_bytes = 128 * 1024;
    cfg.flush.flush_interval_ms = 2;
    cfg.flush.flush_watermark_bytes = 64 * 1024;
    cfg.commit = commit_mode(round);
    if retains(round) {
        cfg.retention = RetentionPolicy::Size {
            max_total_bytes: 512 * 1024,
        };
    }
    if compresses(round) {
        cfg.compression = Compression::Zstd;
    }
    if in_task(round) {
        cfg.shard = Some(0);
    }
    // Every fifth round prepares each session's first file from the open.
    cfg.preallocate_segments = round % 5 == 4;
    let aof = std::sync::Arc::new(open(&m, cfg));
    if in_task(round) {
        // Appends and waits from a task on the log's own shard (the zero-hop path);
        // the task runs until the kill.
        let a = aof.clone();
        m.spawn_on_shard(0, move || async move { write_loop(&a, round, false).await })
            .unwrap()
            .join()
            .unwrap();
    } else {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(write_loop(&aof, round, true));
    }
}

/// The group of records starting at `seq`: its length, and whether it is appended as
/// one atomic batch (`append_batch`) rather than record by record.
fn group(seq: u64) -> (u64, bool) {
    (1 + seq % 13, seq % 2 == 1)
}

/// The child's loop: appends groups of records and waits for each, reporting acknowledged ids
/// (blocking calls on the writing thread, or async calls in a task on the shard).
async fn write_loop(aof: &bop_rs::aof2::Aof, round: u64, blocking: bool) {
    let mut first = aof.first_record().segment_index();
    println!("FIRST {first}");
    println!("READY");
    let mut seq = 0u64;
    let (mut reported, mut compressed) = (0, 0);
    loop {
        let (batch, atomic) = group(seq);
        let mut rids = Vec::new();
        if atomic {
            let ps: Vec<Vec<u8>> = (seq..seq + batch).map(|s| record(round, s)).collect();
            let refs: Vec<&[u8]> = ps.iter().map(Vec::as_slice).collect();
            let last = if blocking {
                aof.append_batch(&refs).unwrap()
            } else {
                aof.append_batch_async(&refs).await.unwrap()
            };
            // The batch's records lie back to back before its last one.
            let mut off = last.segment_offset();
            let mut ids = vec![last; ps.len()];
            for i in (0..ps.len() - 1).rev() {
                off -= format::frame_size(ps[i].len()) as u32;
                ids[i] = RecordId::from_parts(last.segment_index(), off);
            }
            rids.extend((seq..seq + batch).zip(ids));
            seq += batch;
        }
        for _ in 0..if atomic { 0 } else { batch } {
            let p = record(round, seq);
            let rid = if blocking {
                aof.append_record(&p).unwrap()
            } else {
                aof.append_record_async(&p).await.unwrap()
            };
            rids.push((seq, rid));
            seq += 1;
        }
        let last = rids.last().unwrap().1;
        if blocking {
            aof.flush_until(last).unwrap();
        } else {
            aof.flush_until_async(last).await.unwrap();
        }
        for (s, rid) in rids {
            println!("ACK {s} {}", rid.as_u64());
        }
        // Where the log starts, once its release is durable.
        let now_first = aof.first_record().segment_index();
        if now_first != first {
            first = now_first;
            println!("FIRST {first}");
        }
        let metrics = aof.flush_metrics();
        let commits = metrics.caller_commits;
        if commits != reported {
            println!("CALLER_COMMITS {commits}");
            reported = commits;
        }
        if metrics.segments_compressed != compressed {
            compressed = metrics.segments_compressed;
            println!("COMPRESSED {compressed}");
        }
        // (`seal_active` blocks: a task on the shard leaves sealing to rolls.)
        if seq.is_multiple_of(101) && blocking {
            aof.seal_active().unwrap();
        }
    }
}

#[test]
fn acknowledged_records_survive_sigkill() {
    let rounds: u64 = std::env::var("AOF2_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    let dir = tempfile::tempdir().unwrap();
    let mut acked: Vec<Vec<(u64, RecordId)>> = Vec::new();
    let mut rng = 0x9e37_79b9_u64;
    let mut caller_commits = [0u64; 2];
    let mut floor = 0u64;
    let mut compressed = 0u64;
    let mut zst_seen = 0usize;
    for round in 0..rounds {
        let mut compressed_now = 0u64;
        let mut mine = Vec::new();
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let run_for = Duration::from_millis(30 + rng % 300);
        let lines = run_then_kill(
            child("child_writer")
                .env("AOF2_CRASH_DIR", dir.path())
                .env("AOF2_CRASH_ROUND", round.to_string()),
            run_for,
        );
        // A kill before READY (libtest prints it after "test child_writer ... ") hits
        // the open or the recovery: a crash point like any other.
        for l in &lines {
            // Each line is one write(2) below PIPE_BUF, so a kill never truncates one.
            if let Some(rest) = l.strip_prefix("ACK ") {
                let mut it = rest.split(' ');
                let seq: u64 = it.next().unwrap().parse().unwrap();
                let rid = RecordId::from_u64(it.next().unwrap().parse().unwrap());
                mine.push((seq, rid));
            } else if let Some(f) = l.strip_prefix("FIRST ") {
                floor = floor.max(f.parse().unwrap());
            } else if let Some(n) = l.strip_prefix("COMPRESSED ") {
                compressed_now = n.parse().unwrap();
            } else if let Some(n) = l.strip_prefix("CALLER_COMMITS ") {
                let n: u64 = n.parse().unwrap();
                let k = (round % 2) as usize;
                caller_commits[k] = caller_commits[k].max(n);
            }
        }
        acked.push(mine);
        compressed += compressed_now;
        zst_seen += verify(dir.path(), &acked, floor);
    }
    let total: usize = acked.iter().map(|a| a.len()).sum();
    assert!(
        total > 100,
        "the children acknowledged only {total} records"
    );
    // The writing threads did commit in the caller rounds, and never in the shard ones.
    assert!(
        caller_commits[0] > 0 || rounds < 2,
        "no caller commit in the caller rounds"
    );
    assert_eq!(
        caller_commits[1], 0,
        "a caller committed with CommitMode::Shard"
    );
    let from_tasks: usize = (0..rounds)
        .filter(|r| in_task(*r))
        .map(|r| acked[r as usize].len())
        .sum();
    assert!(
        from_tasks > 0 || rounds < 4,
        "no record was acknowledged in the task rounds"
    );
    assert!(
        compressed > 0 || rounds < 3,
        "no segment was compressed in the compression rounds"
    );
    println!(
        "{rounds} kills, {total} acknowledged records, all recovered; \
         {from_tasks} of them from tasks on the shard; caller commits seen {caller_commits:?}; retention released up to segment {floor}; \
         {compressed} segments compressed, compressed files checked {zst_seen} times"
    );
}

/// Reopens the log (recovering it) and checks every acknowledged record not released,
/// then walks every segment's frames to check each round left a gap-free run (a prefix
/// but for what retention released). Returns how many compressed segments it walked.
fn verify(root: &Path, acked: &[Vec<(u64, RecordId)>], floor: u64) -> usize {
    let m = manager();
    let aof = open(&m, small_cfg(root));
    let first_kept = aof.first_record().segment_index() as u64;
    assert!(
        first_kept >= floor,
        "released segments came back: the log starts at {first_kept}, a release up to {floor} was durable"
    );
    let mut readers = std::collections::HashMap::new();
    for (round, recs) in acked.iter().enumerate() {
        for (seq, rid) in recs {
            let seg = rid.segment_index() as u64;
            if seg < first_kept {
                continue; // released (by retention), durably
            }
            let r = readers.entry(seg).or_insert_with(|| {
                aof.open_reader(SegmentId::new(seg)).unwrap_or_else(|e| {
                    panic!("round {round}: segment of acknowledged record {seq} ({rid}): {e}")
                })
            });
            let got = r
                .read_record(*rid)
                .unwrap_or_else(|e| panic!("round {round}: record {seq} at {rid}: {e}"));
            assert_eq!(
                got.payload(),
                record(round as u64, *seq),
                "round {round} record {seq} at {rid}"
            );
        }
    }
    drop(readers);
    // The stream reads every record back in order, each round a gap-free prefix.
    aof.close().unwrap();
    let mut stream_seq: Vec<Option<u64>> = vec![None; acked.len()];
    let mut s = SealedSegmentStream::new(&aof).unwrap();
    while let Some(seg) = s.next_segment_blocking().unwrap() {
        let mut c = seg.into_cursor();
        while let Some(r) = c.next().unwrap() {
            let p = r.payload();
            let round = u64::from_le_bytes(p[..8].try_into().unwrap()) as usize;
            let seq = u64::from_le_bytes(p[8..16].try_into().unwrap());
            if let Some(last) = stream_seq[round] {
                assert_eq!(seq, last + 1, "stream: round {round} out of order");
            }
            assert_eq!(p, record(round as u64, seq));
            stream_seq[round] = Some(seq);
        }
    }
    drop(aof); // the log sealed everything at open; now read the files directly
               // What `aof2 verify` checks holds after every crash and reopen.
    let checked = LogDir::open(root).unwrap().verify().unwrap();
    assert!(checked.iter().all(|s| s.torn_tail.is_none()));
    let paths = LogPaths::new(root);
    let mut last_seq: Vec<Option<u64>> = vec![None; acked.len()];
    let mut names: Vec<_> = std::fs::read_dir(&paths.segments)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    let mut zst = 0;
    for path in names {
        let ext = path.extension().and_then(|x| x.to_str());
        let img = match ext {
            Some("seg") => std::fs::read(&path).unwrap(),
            Some("zst") => {
                zst += 1;
                inflate(&path)
            }
            _ => continue, // a spare (released), or the release mark's neighbours
        };
        let format::HeaderState::Valid(h, seed) = format::SegmentHeader::decode(&img).unwrap()
        else {
            continue; // prepared, unused
        };
        let f =
            format::SegmentFooter::decode(&img[(h.file_size - 4096) as usize..], seed, h.file_size)
                .unwrap()
                .expect("every used segment is sealed after a reopen");
        for fr in format::frames(seed, &img, f.data_end) {
            let fr = fr.unwrap_or_else(|(off, why)| {
                panic!("{}: invalid frame at {off}: {why}", path.display())
            });
            let round = u64::from_le_bytes(fr.payload[..8].try_into().unwrap()) as usize;
            let seq = u64::from_le_bytes(fr.payload[8..16].try_into().unwrap());
            // Rounds start at record 0 unless retention released segments (then the
            // rest of a round must still be gap-free, and hold everything acknowledged).
            let expect = match last_seq[round] {
                Some(last) => last + 1,
                None if first_kept == 0 => 0,
                None => seq,
            };
            assert_eq!(
                seq,
                expect,
                "round {round}: records out of order or missing in {}",
                path.display()
            );
            assert_eq!(
                fr.payload,
                record(round as u64, seq),
                "round {round} record {seq}"
            );
            last_seq[round] = Some(seq);
        }
    }
    assert_eq!(stream_seq, last_seq, "the stream and the files agree");
    // No round ends inside an atomic batch: recovery keeps all of one or none.
    for (round, last) in last_seq.iter().enumerate() {
        let n = last.map_or(0, |l| l + 1);
        let mut start = 0;
        while start < n {
            let (len, atomic) = group(start);
            assert!(
                !atomic || start + len <= n,
                "round {round} ends inside atomic batch [{start}, {}): {n} records",
                start + len
            );
            start += len;
        }
    }
    all_acknowledged_on_disk(acked, &last_seq, first_kept);
    zst
}

/// The raw image a compressed segment file holds.
fn inflate(path: &Path) -> Vec<u8> {
    let file = std::fs::read(path).unwrap();
    let c = CompressedSegment::parse(&file).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut img = vec![0u8; c.header.file_size as usize];
    img[..format::HEADER_LEN].copy_from_slice(&file[..format::HEADER_LEN]);
    for (i, ch) in c.chunks.iter().enumerate() {
        let b = c.inflate(i).unwrap();
        img[ch.raw_start as usize..ch.raw_start as usize + b.len()].copy_from_slice(&b);
    }
    // The seal footer, where a raw file keeps it.
    let at = (c.header.file_size - 4096) as usize;
    img[at..at + format::FOOTER_LEN]
        .copy_from_slice(&file[format::HEADER_LEN..format::HEADER_LEN + format::FOOTER_LEN]);
    img
}

/// Every round holds all it acknowledged (but what retention released).
fn all_acknowledged_on_disk(
    acked: &[Vec<(u64, RecordId)>],
    last_seq: &[Option<u64>],
    first_kept: u64,
) {
    for (round, recs) in acked.iter().enumerate() {
        if let Some((seq, rid)) = recs.last() {
            if rid.segment_index() as u64 >= first_kept {
                assert!(
                    last_seq[round].is_some_and(|l| l >= *seq),
                    "round {round}: fewer records on disk than acknowledged"
                );
            }
        }
    }
}
