//! S1: what a small log costs. 1,000 logs (100 with `--quick`) are opened with the
//! default configuration, each gets one 100-byte record and a `flush`; then the bytes on
//! disk, resident memory and descriptors per log are measured, and the logs reopened.
//! Baseline: the same number of directories, each with one file holding 100 bytes made
//! durable the plain way (mkdir, create, write, `fdatasync`, directory `fsync`).

use super::report::*;
use super::{BenchResult, Ctx};
use bop_rs::aof2::config::AofConfig;
use bop_rs::aof2::Aof;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::time::Instant;

/// Resident bytes of this process (`/proc/self/statm`).
fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = s
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no memory-safety preconditions.
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64
}

fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64)
}

/// Bytes allocated on disk under `dir` (st_blocks, so holes do not count).
fn disk_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    for e in rd.flatten() {
        let Ok(m) = e.metadata() else { continue };
        if m.is_dir() {
            total += disk_bytes(&e.path());
        } else {
            total += m.blocks() * 512;
        }
    }
    total
}

/// The raw way to make 100 bytes durable in a directory of their own.
fn raw_small_file(dir: &Path, payload: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir(dir)?;
    let f = std::fs::File::create(dir.join("data"))?;
    f.write_all_at(payload, 0)?;
    f.sync_data()?;
    std::fs::File::open(dir)?.sync_all()
}

pub fn s1(ctx: &Ctx) -> BenchResult<Vec<Row>> {
    let n: usize = if ctx.quick { 100 } else { 1000 };
    let payload = [0x42u8; 100];
    let root = ctx.root.join("small");
    std::fs::create_dir_all(&root)?;
    let cfg = |i: usize| {
        let mut c = AofConfig::default();
        c.root_dir = root.join(format!("log-{i}"));
        c
    };
    // Memory earlier workloads freed stays resident in the allocator and would be
    // reused here unseen: hand it back first, so the difference counts these logs.
    // SAFETY: malloc_trim only returns free heap memory to the system.
    unsafe { libc::malloc_trim(0) };
    let (rss0, fds0) = (rss_bytes(), open_fds());
    let t = Instant::now();
    let mut logs = Vec::with_capacity(n);
    for i in 0..n {
        logs.push(Aof::new(ctx.manager.handle(), cfg(i))?);
    }
    let open_s = t.elapsed().as_secs_f64();
    for aof in &logs {
        aof.append_record(&payload)?;
    }
    for aof in &logs {
        aof.flush()?;
    }
    let open_sync_s = t.elapsed().as_secs_f64();
    // Give idle logs a moment to hand back what they do not need.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let rss = rss_bytes().saturating_sub(rss0) as f64 / n as f64;
    let fds = open_fds().saturating_sub(fds0) as f64 / n as f64;
    let disk = disk_bytes(&root) as f64 / n as f64;
    drop(logs);
    let t = Instant::now();
    let mut logs = Vec::with_capacity(n);
    for i in 0..n {
        logs.push(Aof::new(ctx.manager.handle(), cfg(i))?);
    }
    let reopen_s = t.elapsed().as_secs_f64();
    drop(logs);

    let base_root = ctx.root.join("small-raw");
    std::fs::create_dir_all(&base_root)?;
    let t = Instant::now();
    for i in 0..n {
        raw_small_file(&base_root.join(format!("d-{i}")), &payload)?;
    }
    let raw_s = t.elapsed().as_secs_f64();
    let raw_disk = disk_bytes(&base_root) as f64 / n as f64;

    let row = |metric, unit, ours, baseline, baseline_desc| Row {
        workload: "S1 small logs (one 100-byte record each)",
        metric,
        unit,
        ours,
        baseline,
        higher_is_better: false,
        baseline_desc,
        median_ratio: None,
    };
    Ok(vec![
        row(
            "open N logs, s",
            "s",
            open_s,
            raw_s,
            "N directories, each a file with 100 bytes: write + fdatasync + dir fsync",
        ),
        row(
            "open + append + flush N logs, s",
            "s",
            open_sync_s,
            raw_s,
            "same",
        ),
        row("reopen N logs, s", "s", reopen_s, raw_s, "same"),
        row(
            "disk per log, KiB",
            "KiB",
            disk / 1024.0,
            raw_disk / 1024.0,
            "one small file and its directory",
        ),
        row(
            "resident memory per log, KiB",
            "KiB",
            rss / 1024.0,
            0.0,
            "-",
        ),
        row("descriptors per log", "", fds, 0.0, "-"),
    ])
}
