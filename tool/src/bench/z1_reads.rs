//! Z1 through the log: random `read_record` latency on compressed sealed segments
//! against raw ones holding the same JSON-like records (two logs, same appends, one
//! with `Compression::Zstd`), reads alternating between them. A compressed read
//! inflates its record's chunk (128 KiB of raw bytes) unless Tier 0 (the manager's
//! memory of inflated chunks) holds it; a raw read checks the frame in place in the
//! shared mapping. Reads that inflated and reads served from Tier 0 are also reported
//! apart.

use super::report::*;
use super::{BenchResult, Ctx};
use bop_rs::aof2::config::{Compression, SegmentId};
use bop_rs::aof2::{Aof, RecordId};
use std::collections::HashMap;
use std::time::{Duration, Instant};

fn json_line(i: u64) -> Vec<u8> {
    format!(
        r#"{{"ts":{},"level":"{}","service":"{}","msg":"{} {}","user":{},"items":{}}}"#,
        1_700_000_000_000u64 + i * 3,
        ["info", "warn", "debug"][(i % 3) as usize],
        ["orders", "payments", "search"][(i % 3) as usize],
        ["order accepted", "payment settled", "query served"][(i % 3) as usize],
        100_000 + (i * 37) % 900_000,
        (i * 7919) % 100_000,
        i % 20
    )
    .into_bytes()
}

/// Appends `bytes` of JSON lines to `aof`, seals, and returns the sealed records' ids.
fn fill(aof: &Aof, bytes: u64) -> BenchResult<Vec<RecordId>> {
    let (mut rids, mut written, mut i) = (Vec::new(), 0u64, 0u64);
    while written < bytes {
        let p = json_line(i);
        rids.push(aof.append_record(&p)?);
        written += p.len() as u64;
        i += 1;
    }
    aof.flush()?;
    aof.seal_active()?;
    Ok(rids)
}

/// Latencies of reads: those that inflated their chunk (Tier 0 misses) and those
/// served from memory, told apart by the manager's Tier 0 counters.
struct Timed {
    miss: hdrhistogram::Histogram<u64>,
    hit: hdrhistogram::Histogram<u64>,
    all: hdrhistogram::Histogram<u64>,
}

fn time_reads(
    ctx: &Ctx,
    aof: &Aof,
    rids: &[RecordId],
    held: bool,
    t: &mut Timed,
) -> BenchResult<()> {
    let mut readers = HashMap::new();
    for &rid in rids {
        let seg = SegmentId::new(u64::from(rid.segment_index()));
        if held && !readers.contains_key(&seg) {
            readers.insert(seg, aof.open_reader(seg)?);
        }
        let misses = ctx.manager.tier0_stats().misses;
        let start = Instant::now();
        let len = if held {
            readers[&seg].read_record(rid)?.payload().len()
        } else {
            aof.open_reader(seg)?.read_record(rid)?.payload().len()
        };
        let ns = start.elapsed().as_nanos() as u64;
        t.all.record(ns)?;
        if ctx.manager.tier0_stats().misses != misses {
            t.miss.record(ns)?;
        } else {
            t.hit.record(ns)?;
        }
        std::hint::black_box(len);
    }
    Ok(())
}

/// Random reads through the log, compressed against raw.
pub fn z1_reads(ctx: &Ctx) -> BenchResult<Vec<Row>> {
    let bytes = if ctx.quick { 8 << 20 } else { 64 << 20 };
    let raw = ctx.open()?;
    let zstd = ctx.open_with(|c| c.compression = Compression::Zstd)?;
    let rids = fill(&raw, bytes)?;
    let zrids = fill(&zstd, bytes)?;
    let start = Instant::now();
    while zstd.flush_metrics().compression_backlog_segments > 0 {
        if start.elapsed() > Duration::from_secs(120) {
            return Err("compression did not catch up in 120 s".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // The same random picks on both, paired by append order: the ids may differ,
    // because a log sizes its segments by its write rate.
    let sealed = |a: &Aof| -> Vec<u32> {
        a.catalog_snapshot()
            .iter()
            .filter(|s| s.sealed)
            .map(|s| s.segment_id as u32)
            .collect()
    };
    let (zs, rs) = (sealed(&zstd), sealed(&raw));
    if zrids.len() != rids.len() {
        return Err(format!(
            "the two logs took different appends: {} raw, {} zstd",
            rids.len(),
            zrids.len()
        )
        .into());
    }
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let picks: Vec<usize> = (0..if ctx.quick { 500 } else { 4000 })
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % rids.len() as u64) as usize
        })
        .filter(|&i| {
            zs.contains(&zrids[i].segment_index()) && rs.contains(&rids[i].segment_index())
        })
        .collect();
    if picks.is_empty() {
        return Err(format!(
            "no record is sealed in both logs ({} raw and {} zstd sealed segments)",
            rs.len(),
            zs.len()
        )
        .into());
    }
    let mut rows = Vec::new();
    let workload = "Z1 random read_record, zstd vs raw segments";
    let desc = "the same records in raw sealed segments (mapped)";
    for held in [true, false] {
        // One `Timed` per part, each side: the parts alternate, and the rows are
        // medians over them.
        let timed = || Timed {
            miss: hist(),
            hit: hist(),
            all: hist(),
        };
        let (mut z, mut r) = (Vec::new(), Vec::new());
        for part in picks.chunks(picks.len().div_ceil(8)) {
            let (mut zt, mut rt) = (timed(), timed());
            let zpart: Vec<RecordId> = part.iter().map(|&i| zrids[i]).collect();
            let rpart: Vec<RecordId> = part.iter().map(|&i| rids[i]).collect();
            time_reads(ctx, &zstd, &zpart, held, &mut zt)?;
            time_reads(ctx, &raw, &rpart, held, &mut rt)?;
            z.push(zt);
            r.push(rt);
        }
        let parts = |v: &[Timed], f: fn(&Timed) -> &hdrhistogram::Histogram<u64>| -> Vec<_> {
            v.iter().map(|t| f(t).clone()).collect()
        };
        let vs_raw = |zf: fn(&Timed) -> &hdrhistogram::Histogram<u64>| LatencyRounds {
            ours: parts(&z, zf),
            base: parts(&r, |t| &t.all),
        };
        let (p50, p99): (&'static str, &'static str) = if held {
            ("p50 (reader held)", "p99 (reader held)")
        } else {
            ("p50 (open + read)", "p99 (open + read)")
        };
        rows.extend(vs_raw(|t| &t.all).rows(workload, &[(p50, 0.5), (p99, 0.99)], desc));
        if held {
            rows.extend(vs_raw(|t| &t.miss).rows(workload, &[("p50, chunk inflated", 0.5)], desc));
            rows.extend(vs_raw(|t| &t.hit).rows(workload, &[("p50, chunk in Tier 0", 0.5)], desc));
            let hits: u64 = z.iter().map(|t| t.hit.len()).sum();
            let all: u64 = z.iter().map(|t| t.all.len()).sum();
            rows.push(rows_of(workload)(
                "Tier 0 hits",
                "",
                hits as f64,
                all as f64,
                true,
                "reads (Tier 0: 64 MiB of inflated chunks by default)",
            ));
        }
    }
    Ok(rows)
}
