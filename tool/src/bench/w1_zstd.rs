//! W1Z: W1's buffered appends (100-byte records, one thread) on a log with
//! `Compression::Zstd`, against the same appends on a log without it, alternating in
//! the same run; then how far the compression worker lagged when the writer stopped,
//! how long it took to catch up, and what the directory shrank to.

use super::report::*;
use super::{rotate, BenchResult, Ctx};
use bop_rs::aof2::config::Compression;
use bop_rs::aof2::Aof;
use std::time::{Duration, Instant};

/// 1,024 distinct 100-byte JSON-like log lines.
fn payloads() -> Vec<Vec<u8>> {
    (0..1024u64)
        .map(|i| {
            let mut p = format!(
                r#"{{"ts":{},"lvl":"{}","svc":"orders","msg":"order {} ok","n":{}}}"#,
                1_700_000_000_000u64 + i * 7,
                ["info", "warn", "debug"][(i % 3) as usize],
                100_000 + i * 37,
                i % 13
            )
            .into_bytes();
            p.resize(100, b' ');
            p
        })
        .collect()
}

fn append_for(aof: &Aof, payloads: &[Vec<u8>], slice: Duration) -> BenchResult<u64> {
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < slice {
        for p in payloads {
            aof.append_record(p)?;
        }
        n += payloads.len() as u64;
    }
    Ok(n)
}

fn dir_bytes(aof: &Aof) -> BenchResult<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(aof.root_dir().join("segments"))? {
        // A raw file the log removes meanwhile is gone.
        if let Ok(m) = e?.metadata() {
            total += m.len();
        }
    }
    Ok(total)
}

/// W1Z: W1 with compression in the background.
pub fn w1z(ctx: &Ctx) -> BenchResult<Vec<Row>> {
    let payloads = payloads();
    let slice = ctx.duration() / ctx.rounds() as u32;
    let plain = ctx.open()?;
    let zstd = ctx.open_with(|c| c.compression = Compression::Zstd)?;
    // Records/s per round, each side (the row: medians over rounds).
    let (mut r_plain, mut r_zstd) = (Vec::new(), Vec::new());
    let mut ours = || {
        let start = Instant::now();
        let z = append_for(&zstd, &payloads, slice)?;
        r_zstd.push(z as f64 / start.elapsed().as_secs_f64());
        Ok(())
    };
    let mut base = || {
        let start = Instant::now();
        let n = append_for(&plain, &payloads, slice)?;
        r_plain.push(n as f64 / start.elapsed().as_secs_f64());
        Ok(())
    };
    rotate(ctx.rounds(), &mut [&mut ours, &mut base])?;
    zstd.flush()?;
    let lag = zstd.flush_metrics();
    let stopped = Instant::now();
    while zstd.flush_metrics().compression_backlog_segments > 0 {
        if stopped.elapsed() > Duration::from_secs(120) {
            return Err("the compression worker did not catch up in 120 s".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let catch_up = stopped.elapsed();
    let m = zstd.flush_metrics();
    let raw: u64 = zstd.catalog_snapshot().iter().map(|s| s.file_size).sum();
    let disk = dir_bytes(&zstd)?;
    let w = "W1Z W1 while zstd compresses in background";
    let row = rows_of(w);
    Ok(vec![
        rounds_row(
            w,
            "records/s",
            "rec/s",
            (&r_zstd, &r_plain),
            true,
            "the same appends, Compression::None, same run",
        ),
        row(
            "backlog at the end",
            "",
            lag.compression_backlog_segments as f64,
            (lag.segments_compressed + lag.compression_backlog_segments) as f64,
            false,
            "segments sealed in all (backlog = sealed, not compressed yet)",
        ),
        row(
            "catch-up after the writer stops",
            "ms",
            catch_up.as_secs_f64() * 1e3,
            f64::NAN,
            false,
            "-",
        ),
        row(
            "directory bytes vs raw",
            "MiB",
            disk as f64 / (1 << 20) as f64,
            raw as f64 / (1 << 20) as f64,
            false,
            "the segments' raw size (spares and the active file included in ours)",
        ),
        row(
            "segments compressed",
            "",
            m.segments_compressed as f64,
            f64::NAN,
            true,
            "-",
        ),
    ])
}
