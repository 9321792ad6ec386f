//! Real process kills with the archive on: a child appends (and waits for) records on a
//! log whose sealed segments are uploaded to a local-directory archive and whose local
//! copies `Size` retention drops once archived, and is killed with SIGKILL at a random
//! moment: mid-upload, mid-stub, mid-removal of a local copy, mid-hydration. After each
//! kill the parent reopens the log with the archive and reads everything back through
//! the public readers (archived-only segments hydrate): every acknowledged record comes
//! back byte for byte, each round's records form a gap-free prefix, and every segment
//! is held somewhere (a local copy, or a stub and its object). Every other round
//! compresses, so the archive holds `.zst` objects too.
//!
//! With the `s3` feature and an `s3s-fs` binary (CI has both), the archive is a real
//! S3-compatible server on loopback instead of a local directory, so kills also land
//! with requests in flight.
//!
//! `AOF2_CRASH_ROUNDS=N` sets the number of kills (default 10).

mod common;

use bop_rs::aof2::config::{ArchiveStore, Compression, RetentionPolicy, SegmentId};
use bop_rs::aof2::reader::SegmentCursor;
use bop_rs::aof2::{Aof, AofManager, AofManagerConfig, RecordId};
use common::*;
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

fn record(round: u64, seq: u64) -> Vec<u8> {
    let mut p = payload(round, seq);
    p.splice(
        0..0,
        round.to_le_bytes().into_iter().chain(seq.to_le_bytes()),
    );
    p
}

#[cfg(feature = "s3")]
#[path = "common/s3s.rs"]
mod s3s;

/// The store: the S3 server at `endpoint`, or a local directory.
fn store(dir: &Path, endpoint: Option<&str>) -> ArchiveStore {
    #[cfg(feature = "s3")]
    if let Some(e) = endpoint {
        let mut c = bop_rs::aof2::config::S3Config::default();
        c.bucket = s3s::BUCKET.into();
        c.endpoint = Some(e.to_string());
        c.allow_http = true;
        c.request_timeout = Duration::from_secs(2);
        c.credentials = bop_rs::aof2::config::S3Credentials::Static {
            access_key_id: s3s::ACCESS.into(),
            secret_access_key: bop_rs::aof2::config::Secret::new(s3s::SECRET),
            session_token: None,
        };
        return ArchiveStore::S3(c);
    }
    let _ = endpoint;
    ArchiveStore::LocalDir(dir.join("store"))
}

fn archive_manager(dir: &Path, endpoint: Option<&str>) -> AofManager {
    init_log();
    let mut c = AofManagerConfig::default();
    c.archive = Some(store(dir, endpoint));
    AofManager::with_config(c).expect("manager starts")
}

fn cfg(dir: &Path, round: u64) -> bop_rs::aof2::config::AofConfig {
    let mut c = small_cfg(&dir.join("log"));
    c.retention = RetentionPolicy::Size {
        max_total_bytes: 128 << 10,
    };
    c.hydrated_cache_bytes = 128 << 10;
    if round % 2 == 1 {
        c.compression = Compression::Zstd;
    }
    c
}

/// The writer, run in a child process.
#[test]
fn archive_child_writer() {
    let Some((dir, round)) = crash_child() else {
        return; // only meaningful as a child of the test below
    };
    let endpoint = std::env::var("AOF2_CRASH_S3_ENDPOINT").ok();
    let m = archive_manager(&dir, endpoint.as_deref());
    let aof = open(&m, cfg(&dir, round));
    println!("READY");
    let mut seq = 0u64;
    loop {
        let n = 1 + seq % 7;
        let mut rids = Vec::new();
        for _ in 0..n {
            rids.push((seq, aof.append_record(&record(round, seq)).unwrap()));
            seq += 1;
        }
        aof.flush_until(rids.last().unwrap().1).unwrap();
        for (s, rid) in rids {
            println!("ACK {s} {}", rid.as_u64());
        }
        if seq % 50 < 7 {
            // Reads of archived-only segments (hydrations) race the kill too.
            if let Some(s) = aof.catalog_snapshot().iter().find(|s| !s.local) {
                let _ = aof.open_reader(SegmentId::new(s.segment_id));
            }
        }
    }
}

fn all_records(aof: &Aof) -> Vec<(RecordId, Vec<u8>)> {
    let mut out = Vec::new();
    for seg in aof.catalog_snapshot() {
        let reader = aof
            .open_reader(SegmentId::new(seg.segment_id))
            .unwrap_or_else(|e| panic!("segment {} does not open: {e}", seg.segment_id));
        let mut c = SegmentCursor::new(reader);
        while let Some(r) = c.next().expect("cursor reads") {
            out.push((r.record_id(), r.payload().to_vec()));
        }
    }
    out
}

#[test]
fn acknowledged_records_survive_sigkill_with_the_archive() {
    let rounds: u64 = std::env::var("AOF2_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let dir = tempfile::tempdir().unwrap();
    #[cfg(feature = "s3")]
    let server = s3s::binary()
        .map(|bin| s3s::Server::start_with(bin, &dir.path().join("s3s")).expect("s3s-fs starts"));
    #[cfg(feature = "s3")]
    let endpoint = server.as_ref().map(|s| s.endpoint());
    #[cfg(not(feature = "s3"))]
    let endpoint: Option<String> = None;
    let mut acked: Vec<Vec<(u64, RecordId)>> = Vec::new();
    let mut rng = 0x2545_f491_u64;
    let mut archived_only = 0usize;
    for round in 0..rounds {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let run_for = Duration::from_millis(100 + rng % 500);
        let lines = run_then_kill(
            child("archive_child_writer")
                .env("AOF2_CRASH_DIR", dir.path())
                .env("AOF2_CRASH_ROUND", round.to_string())
                .envs(endpoint.iter().map(|e| ("AOF2_CRASH_S3_ENDPOINT", e))),
            run_for,
        );
        let mut mine = Vec::new();
        for l in &lines {
            if let Some(rest) = l.strip_prefix("ACK ") {
                let mut it = rest.split(' ');
                let seq: u64 = it.next().unwrap().parse().unwrap();
                let rid = RecordId::from_u64(it.next().unwrap().parse().unwrap());
                mine.push((seq, rid));
            }
        }
        acked.push(mine);

        // Reopen with the archive and read everything back.
        let m = archive_manager(dir.path(), endpoint.as_deref());
        let aof = open(&m, cfg(dir.path(), round));
        archived_only += aof.catalog_snapshot().iter().filter(|s| !s.local).count();
        let found = all_records(&aof);
        let by_id: HashMap<RecordId, &Vec<u8>> = found.iter().map(|(r, p)| (*r, p)).collect();
        for (r, mine) in acked.iter().enumerate() {
            for &(seq, rid) in mine {
                let got = by_id.get(&rid).unwrap_or_else(|| {
                    panic!("round {r}: acknowledged record {seq} ({rid}) is lost")
                });
                assert_eq!(
                    **got,
                    record(r as u64, seq),
                    "round {r} record {seq} at {rid}"
                );
            }
        }
        // Per round, what came back is a gap-free run from its first record.
        let mut next: HashMap<u64, u64> = HashMap::new();
        for (rid, p) in &found {
            let r = u64::from_le_bytes(p[..8].try_into().unwrap());
            let s = u64::from_le_bytes(p[8..16].try_into().unwrap());
            let want = next.entry(r).or_insert(0);
            assert_eq!(
                s, *want,
                "round {r}: record {s} at {rid} follows record {}",
                *want
            );
            *want += 1;
        }
        aof.close().unwrap();
    }
    let total: usize = acked.iter().map(Vec::len).sum();
    assert!(
        total > 100,
        "the children acknowledged only {total} records"
    );
    assert!(
        archived_only > 0,
        "no segment was held by the archive alone at any reopen"
    );
    println!(
        "{rounds} kills with the archive ({}), {total} acknowledged records, all recovered; \
         {archived_only} archived-only segments seen at reopens",
        endpoint.as_deref().unwrap_or("a local directory")
    );
}
