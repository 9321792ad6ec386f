//! R1 (cursor reads of a 1 GiB log, warm) and R3 (recovery and `aof2 verify`, cold).

use super::baseline::*;
use super::report::*;
use super::{alternate, BenchResult, Ctx};
use bop_rs::aof2::config::{AofConfig, SegmentId};
use bop_rs::aof2::reader::SegmentCursor;
use bop_rs::aof2::Aof;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The log the read benchmarks share: `bytes` of 4 KiB records, closed with its last
/// segment unsealed (as after a crash), in default-sized segments.
fn build_read_log(ctx: &Ctx, bytes: u64) -> BenchResult<PathBuf> {
    let aof = ctx.open()?;
    let root = aof.root_dir().to_path_buf();
    let payload = vec![0x3cu8; 4096];
    let mut written = 0;
    while written < bytes {
        let mut last = None;
        for _ in 0..256 {
            last = Some(aof.append_record(&payload)?);
        }
        aof.flush_until(last.expect("256 appends"))?;
        written += 256 * 4096;
    }
    drop(aof);
    // A clean close sealed the last segment; zero its footer, as a crash after the
    // last sync leaves it, so R3 measures recovery's scan and seal of it.
    let mut last = std::fs::read_dir(root.join("segments"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect::<Vec<_>>();
    last.sort();
    if let Some(path) = last.last() {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(path)?;
        let size = f.metadata()?.len();
        f.write_all_at(&[0u8; 4096], size - 4096)?;
        f.sync_data()?;
    }
    Ok(root)
}

/// Every used segment of the log at `root` with the length of its frames.
fn segment_extents(root: &Path) -> BenchResult<Vec<(PathBuf, u64)>> {
    let dir = aof2_shards::inspect::LogDir::open(root)?;
    Ok(dir
        .stat()?
        .into_iter()
        .map(|s| (s.path, s.data_end))
        .collect())
}

/// R1 (cursor reads, warm cache), R3 (recovery and verify, cold cache).
pub fn reads(ctx: &Ctx) -> BenchResult<Vec<Row>> {
    let bytes: u64 = if ctx.quick { 64 << 20 } else { 1 << 30 };
    let root = build_read_log(ctx, bytes)?;
    let mut buf = vec![0u8; 1 << 20];
    let files = segment_extents(&root)?;
    let log_bytes: u64 = files.iter().map(|f| f.1).sum();
    let mut cfg = AofConfig::default();
    cfg.root_dir = root.clone();

    // R3: open (recovery: headers and footers of sealed segments, a full scan of the
    // unsealed last one, which it then seals) with a cold cache, against a cold raw read
    // of the whole log. Once only, the one row without rounds: the open seals the
    // segment it scans, so a second open would measure another thing.
    for (p, _) in &files {
        drop_cache(p)?;
    }
    let start = Instant::now();
    let aof = Aof::new(ctx.manager.handle(), cfg.clone())?;
    let t_open = start.elapsed();
    drop(aof);
    for (p, _) in &files {
        drop_cache(p)?;
    }
    let start = Instant::now();
    let n = raw_read(&files, &mut buf)?;
    let t_raw_cold = start.elapsed();
    debug_assert_eq!(n, log_bytes);

    // R3b: `aof2 verify`'s full check of every byte, cold, against the same raw read.
    let files = segment_extents(&root)?;
    // GB/s per round, each side (the rows: medians over rounds).
    let gb = |b: u64, t: Duration| b as f64 / t.as_secs_f64() / 1e9;
    let (mut g_verify, mut g_raw) = (Vec::new(), Vec::new());
    alternate(
        if ctx.quick { 2 } else { 5 },
        || {
            for (p, _) in &files {
                drop_cache(p)?;
            }
            let start = Instant::now();
            aof2_shards::inspect::LogDir::open(&root)?.verify()?;
            g_verify.push(gb(log_bytes, start.elapsed()));
            Ok(())
        },
        || {
            for (p, _) in &files {
                drop_cache(p)?;
            }
            let start = Instant::now();
            let n = raw_read(&files, &mut buf)?;
            g_raw.push(gb(n, start.elapsed()));
            Ok(())
        },
    )?;

    // R1: every record of every sealed segment through a cursor (checksums and chain
    // checked, payloads borrowed from the mapping), page cache warm, against `read`s
    // of the same frames.
    let aof = Aof::new(ctx.manager.handle(), cfg)?;
    let segments: Vec<u64> = aof
        .catalog_snapshot()
        .iter()
        .filter(|s| s.sealed)
        .map(|s| s.segment_id)
        .collect();
    raw_read(&files, &mut buf)?; // warm the cache
    let (mut g_ours, mut g_base) = (Vec::new(), Vec::new());
    alternate(
        ctx.rounds(),
        || {
            let start = Instant::now();
            let mut b_ours = 0u64;
            for &id in &segments {
                let mut c = SegmentCursor::new(aof.open_reader(SegmentId::new(id))?);
                while let Some(r) = c.next()? {
                    b_ours += (r.payload().len() + aof2_shards::format::FRAME_HEADER_LEN) as u64;
                    std::hint::black_box(r.payload());
                }
            }
            g_ours.push(gb(b_ours, start.elapsed()));
            Ok(())
        },
        || {
            let start = Instant::now();
            let n = raw_read(&files, &mut buf)?;
            g_base.push(gb(n, start.elapsed()));
            Ok(())
        },
    )?;
    Ok(vec![
        rounds_row(
            "R1 sealed-segment cursor reads (4 KiB)",
            "GB/s (warm cache)",
            "GB/s",
            (&g_ours, &g_base),
            true,
            "1 MiB pread of the same frames, warm cache",
        ),
        Row {
            workload: if ctx.quick {
                "R3 recovery: open a 64 MiB log (cold)"
            } else {
                "R3 recovery: open a 1 GiB log (cold)"
            },
            metric: "time",
            unit: "ms",
            ours: t_open.as_secs_f64() * 1e3,
            baseline: t_raw_cold.as_secs_f64() * 1e3,
            higher_is_better: false,
            baseline_desc: "1 MiB pread of the whole log, cold cache",
            median_ratio: None,
        },
        rounds_row(
            "R3 aof2 verify (every byte checked)",
            "GB/s (cold)",
            "GB/s",
            (&g_verify, &g_raw),
            true,
            "1 MiB pread of every segment's frames, cold cache",
        ),
    ])
}
