//! C1: every candidate path of one durable 4 KiB append, side by side, from a thread on
//! CPU 0, on CPU 1 and unpinned (this disk completes its I/O on one CPU; see
//! `../shared/MACHINE.md`), in interleaved rounds. Per round and placement, each path's
//! p50 and p99 are divided by the fastest raw path's in that round; the table shows
//! the medians of those per-round ratios.
//!
//! Paths: this engine with the caller committing with blocking calls (one
//! `pwritev2(RWF_DSYNC)`, the default), on its own ring polling its completion queue
//! (`completion_poll_us`), with the shard committing, and an async caller outside the
//! shards (`append_record_async` + `flush_until_async` under a minimal executor: the
//! shard commits, and its completion wakes the caller's thread); raw O_DIRECT `pwrite` +
//! `fdatasync`, raw buffered `pwrite` + `fdatasync` and raw `pwritev2(RWF_DSYNC)` on a
//! pre-written file; okaywal with `--features peers`.

use super::baseline::*;
use super::block_on::block_on;
use super::report::*;
use super::{BenchResult, Ctx};
use bop_rs::aof2::config::CommitMode;
use bop_rs::aof2::{Aof, AofConfig, AofManager, AofManagerConfig};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::time::Instant;

/// One path: its name, whether it is a raw baseline, and one durable append.
struct Path<'a> {
    name: &'static str,
    raw: bool,
    op: Box<dyn Fn() -> BenchResult<()> + Sync + 'a>,
}

fn engine<'a>(aof: &'a Aof, payload: &'a [u8]) -> Box<dyn Fn() -> BenchResult<()> + Sync + 'a> {
    Box::new(move || {
        let r = aof.append_record(payload)?;
        aof.flush_until(r)?;
        Ok(())
    })
}

fn open(
    ctx: &Ctx,
    m: &AofManager,
    name: &str,
    commit: CommitMode,
    shard: Option<usize>,
) -> BenchResult<Aof> {
    let mut cfg = AofConfig::default();
    cfg.root_dir = ctx.root.join(name);
    cfg.commit = commit;
    cfg.shard = shard;
    Ok(Aof::new(m.handle(), cfg)?)
}

/// C1: the commit paths matrix.
pub fn c1(ctx: &Ctx) -> BenchResult<Vec<Row>> {
    let rounds = if ctx.quick { 2 } else { 5 };
    let per_cell = if ctx.quick { 100 } else { 800 };
    let payload = vec![0x44u8; 4096];
    #[cfg(feature = "peers")]
    let wal = super::peers::Okaywal::open(&ctx.root.join("c1-okaywal"))?;
    // On io_uring a committing caller gets a ring of its own only to poll it.
    let mut poll_cfg = AofManagerConfig::default();
    poll_cfg.completion_poll_us = 300;
    let poll_m = AofManager::with_config(poll_cfg)?;
    let blocking = open(ctx, &ctx.manager, "c1-blocking", CommitMode::Caller, None)?;
    let ring = open(ctx, &poll_m, "c1-ring-poll", CommitMode::Caller, None)?;
    let shard = open(ctx, &ctx.manager, "c1-shard", CommitMode::Shard, None)?;
    // On the same shard as the one above: the two differ only in how the caller waits.
    let on = Some(shard.shard());
    let asynchronous = open(ctx, &ctx.manager, "c1-async", CommitMode::Caller, on)?;
    let shard_name = leak(format!(
        "shard {} commits (CommitMode::Shard)",
        shard.shard()
    ));
    let async_name = leak(format!(
        "async caller, flush_until_async (shard {} commits)",
        shard.shard()
    ));
    let f = ctx.baseline_file("c1-baseline", 64 << 20)?;
    let g = ctx.baseline_file("c1-baseline-buffered", 64 << 20)?;
    let g = g.buffered(&ctx.root.join("c1-baseline-buffered"))?;
    let block = AlignedBlock::new(4096);
    let off = std::sync::atomic::AtomicU64::new(0);
    let next = || off.fetch_add(4096, std::sync::atomic::Ordering::Relaxed) % f.size;
    #[cfg_attr(not(feature = "peers"), allow(unused_mut))]
    let mut paths = vec![
        Path {
            name: "caller, blocking pwritev2(RWF_DSYNC) (default)",
            raw: false,
            op: engine(&blocking, &payload),
        },
        Path {
            name: "caller, own ring polling 300 us",
            raw: false,
            op: engine(&ring, &payload),
        },
        Path {
            name: shard_name,
            raw: false,
            op: engine(&shard, &payload),
        },
        Path {
            name: async_name,
            raw: false,
            op: Box::new(|| {
                block_on(async {
                    let r = asynchronous.append_record_async(&payload).await?;
                    asynchronous.flush_until_async(r).await?;
                    Ok(())
                })
            }),
        },
        Path {
            name: "raw pwrite + fdatasync",
            raw: true,
            op: Box::new(|| {
                f.file.write_all_at(block.bytes(), next())?;
                fdatasync(&f.file)?;
                Ok(())
            }),
        },
        Path {
            name: "raw buffered pwrite + fdatasync",
            raw: true,
            op: Box::new(|| {
                g.file.write_all_at(block.bytes(), next())?;
                fdatasync(&g.file)?;
                Ok(())
            }),
        },
        Path {
            name: "raw pwritev2(RWF_DSYNC)",
            raw: true,
            op: Box::new(|| {
                let iov = libc::iovec {
                    iov_base: block.bytes().as_ptr() as *mut libc::c_void,
                    iov_len: 4096,
                };
                // SAFETY: the iovec points into `block` for the call; the fd is open.
                let n = unsafe {
                    libc::pwritev2(f.file.as_raw_fd(), &iov, 1, next() as i64, libc::RWF_DSYNC)
                };
                if n != 4096 {
                    return Err(format!("pwritev2: {}", std::io::Error::last_os_error()).into());
                }
                Ok(())
            }),
        },
    ];
    #[cfg(feature = "peers")]
    paths.push(Path {
        name: "okaywal 0.3 entry + commit",
        raw: false,
        op: Box::new(|| wal.append_sync(&payload)),
    });
    for p in &paths {
        for _ in 0..50 {
            (p.op)()?;
        }
    }
    let cpus = aof2_shards::manager::affinity_cpus();
    let mut placements: Vec<Option<usize>> = cpus.iter().take(2).map(|c| Some(*c)).collect();
    placements.push(None);
    // results[path][placement] = per round (p50, p99) in microseconds.
    let mut results = vec![vec![Vec::new(); placements.len()]; paths.len()];
    for round in 0..rounds {
        for k in 0..placements.len() {
            let pi = (round + k) % placements.len();
            let cpu = placements[pi];
            let paths = &paths;
            let cell: Vec<(f64, f64)> = std::thread::scope(|s| {
                s.spawn(move || -> Result<Vec<(f64, f64)>, String> {
                    if let Some(c) = cpu {
                        core_affinity::set_for_current(core_affinity::CoreId { id: c });
                    }
                    let mut out = vec![(0.0, 0.0); paths.len()];
                    for j in 0..paths.len() {
                        let i = (round + j) % paths.len();
                        let mut h = hist();
                        for _ in 0..per_cell {
                            let t = Instant::now();
                            (paths[i].op)().map_err(|e| e.to_string())?;
                            h.record(t.elapsed().as_nanos() as u64)
                                .map_err(|e| e.to_string())?;
                        }
                        out[i] = (percentile_us(&h, 0.5), percentile_us(&h, 0.99));
                    }
                    Ok(out)
                })
                .join()
                .map_err(|_| "a C1 thread panicked".to_string())
            })??;
            for (i, c) in cell.into_iter().enumerate() {
                results[i][pi].push(c);
            }
        }
    }
    let mut rows = Vec::new();
    for (pi, cpu) in placements.iter().enumerate() {
        let fastest = |round: usize, q: usize| {
            paths
                .iter()
                .enumerate()
                .filter(|(_, p)| p.raw)
                .map(|(i, _)| {
                    let (p50, p99) = results[i][pi][round];
                    if q == 50 {
                        p50
                    } else {
                        p99
                    }
                })
                .fold(f64::INFINITY, f64::min)
        };
        for (i, p) in paths.iter().enumerate() {
            for (q, metric) in [(50, "p50"), (99, "p99")] {
                let mine: Vec<f64> = results[i][pi]
                    .iter()
                    .map(|&(a, b)| if q == 50 { a } else { b })
                    .collect();
                let base: Vec<f64> = (0..rounds).map(|r| fastest(r, q)).collect();
                let ratios: Vec<f64> = mine.iter().zip(&base).map(|(m, b)| m / b).collect();
                rows.push(Row {
                    workload: leak(format!(
                        "C1 {}: {}",
                        match cpu {
                            Some(c) => format!("CPU {c}"),
                            None => "unpinned".to_string(),
                        },
                        p.name
                    )),
                    metric,
                    unit: "us",
                    ours: median(&mine),
                    baseline: median(&base),
                    higher_is_better: false,
                    baseline_desc: "the fastest raw path in the same round",
                    median_ratio: Some(median(&ratios)),
                });
            }
        }
    }
    Ok(rows)
}

/// Row names are `&'static str`; C1 builds a few dozen once per run.
fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}
