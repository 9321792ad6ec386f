//! The benchmark harness behind `aof2 bench`: its workloads (W1-W5, W1B, W1Z, W2P, R1-R3, S1, Z1, C1, T1, P1, A1), each
//! measured against a raw baseline in the same run on the same directory, reported as a
//! ratio (these machines are noisy; only ratios taken in one run compare). It lives
//! on the binary's side, not in the library: one file per workload, `baseline` for the
//! raw baselines' tools, `report` for rows and printing.

mod a1_archive;
mod baseline;
mod block_on;
mod group_commit;
mod paths;
#[cfg(feature = "peers")]
mod peers;
#[cfg(feature = "peers")]
mod peers_more;
mod plots;
mod r2;
mod reads;
mod report;
mod small;
mod tasks;
mod tasks_w3;
mod w1;
mod w1_burst;
mod w1_zstd;
mod w2;
mod w2_poll;
mod w3;
mod w4;
mod w5;
mod z1;
mod z1_reads;

use baseline::{fs_name, fs_stat, PrewrittenFile, TMPFS};
use report::fmt_value;
pub use report::Row;

use bop_rs::aof2::config::AofConfig;
use bop_rs::aof2::{Aof, AofManager, AofManagerConfig, IoBackend};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Directory to run in; a temporary directory under it is created and removed.
    pub dir: Option<PathBuf>,
    /// A few-second smoke run.
    pub quick: bool,
    /// Print JSON instead of a table.
    pub json: bool,
    /// Run on tmpfs anyway (figures are then not durable-disk figures).
    pub allow_tmpfs: bool,
    /// Workloads to run (W1..W4, R1..R3); empty means all.
    pub only: Vec<String>,
    /// The I/O backend of the shards.
    pub backend: IoBackend,
    /// Write SVG plots here.
    pub plot: Option<PathBuf>,
}

pub(crate) struct Ctx {
    root: PathBuf,
    manager: AofManager,
    /// The backend `manager` was asked for (workloads that start managers of their own
    /// ask for the same).
    backend: IoBackend,
    quick: bool,
    seq: AtomicU64,
}

impl Ctx {
    fn open(&self) -> BenchResult<Aof> {
        self.open_with(|_| {})
    }
    /// A log with the default configuration changed by `f`.
    fn open_with(&self, f: impl FnOnce(&mut AofConfig)) -> BenchResult<Aof> {
        self.open_on(&self.manager, f)
    }
    /// A new log on manager `m`, with the default configuration changed by `f`.
    fn open_on(&self, m: &AofManager, f: impl FnOnce(&mut AofConfig)) -> BenchResult<Aof> {
        let mut cfg = AofConfig::default();
        cfg.root_dir = self
            .root
            .join(format!("log-{}", self.seq.fetch_add(1, Ordering::Relaxed)));
        f(&mut cfg);
        Ok(Aof::new(m.handle(), cfg)?)
    }
    /// A manager like the benchmark's, with `completion_poll_us` set.
    fn polling_manager(&self, poll_us: u32) -> BenchResult<AofManager> {
        let mut mcfg = AofManagerConfig::default();
        mcfg.backend = self.backend;
        mcfg.completion_poll_us = poll_us;
        Ok(AofManager::with_config(mcfg)?)
    }
    fn duration(&self) -> Duration {
        if self.quick {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(3)
        }
    }
    /// Ours and the baseline alternate in this many slices, order swapped each round,
    /// so the disk's stalls (this machine's reach ~0.7 s; see docs/benchmarks.md) hit both alike.
    fn rounds(&self) -> usize {
        if self.quick {
            2
        } else {
            6
        }
    }
    /// Removes every log and baseline file made so far. Only between parts of a
    /// workload, once their logs are closed.
    fn tidy(&self) -> BenchResult<()> {
        empty_dir(&self.root)
            .map_err(|e| format!("cannot empty {}: {e}", self.root.display()).into())
    }
    fn baseline_file(&self, name: &str, size: u64) -> BenchResult<PrewrittenFile> {
        Ok(PrewrittenFile::create(&self.root.join(name), size)?)
    }
}

pub(crate) type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

/// Runs `ours` and `base` alternately, `rounds` times each, swapping who goes first.
pub(crate) fn alternate(
    rounds: usize,
    mut ours: impl FnMut() -> BenchResult<()>,
    mut base: impl FnMut() -> BenchResult<()>,
) -> BenchResult<()> {
    rotate(rounds, &mut [&mut ours, &mut base])
}

/// Runs every contender once per round, `rounds` times, each round starting with the
/// next one, so the disk's slow spells hit all of them alike.
pub(crate) fn rotate(
    rounds: usize,
    contenders: &mut [&mut dyn FnMut() -> BenchResult<()>],
) -> BenchResult<()> {
    rotate_indexed(rounds, contenders.len(), |i| (contenders[i])())
}

/// [`rotate`] over `n` contenders named by index: `run(i)` runs contender `i`'s slice.
pub(crate) fn rotate_indexed(
    rounds: usize,
    n: usize,
    mut run: impl FnMut(usize) -> BenchResult<()>,
) -> BenchResult<()> {
    for r in 0..rounds {
        for k in 0..n {
            run((r + k) % n)?;
        }
    }
    Ok(())
}

/// P1, where the peers were compiled in (`--features peers`).
fn peer_rows(ctx: &Ctx) -> BenchResult<Vec<Row>> {
    #[cfg(feature = "peers")]
    return peers::p1(ctx);
    #[cfg(not(feature = "peers"))]
    {
        let _ = ctx;
        println!(
            "(P1, okaywal side by side: not compiled in; run with `cargo run --release --features peers -- bench`)"
        );
        Ok(Vec::new())
    }
}

/// Removes everything inside `dir`, keeping `dir`.
fn empty_dir(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
        } else {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// Runs the benchmark and prints its report. Returns the rows.
pub fn run(opts: &BenchOptions) -> BenchResult<Vec<Row>> {
    let parent = match &opts.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir(),
    };
    std::fs::create_dir_all(&parent)
        .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    let (magic, free) =
        fs_stat(&parent).map_err(|e| format!("statfs {}: {e}", parent.display()))?;
    let fs = fs_name(magic);
    if magic == TMPFS && !opts.allow_tmpfs {
        return Err(format!(
            "{} is on tmpfs: fdatasync there is a no-op, so the figures would not measure durability. \
             Pass --dir on a disk-backed file system (or --allow-tmpfs to run anyway).",
            parent.display()
        )
        .into());
    }
    let tmp = tempfile::Builder::new()
        .prefix("aof2-bench-")
        .tempdir_in(&parent)?;
    let mut mcfg = AofManagerConfig::default();
    mcfg.backend = opts.backend;
    let manager = AofManager::with_config(mcfg)?;
    let backend = match (manager.io_backend(), manager.io_uring_fallback()) {
        ("io_uring", _) => "io_uring (linked writev + fdatasync)",
        (_, true) => "sync (pwritev + fdatasync; io_uring unavailable, fell back)",
        _ => "sync (pwritev + fdatasync)",
    };
    let cpus = aof2_shards::manager::affinity_cpus();
    let ctx = Ctx {
        root: tmp.path().to_path_buf(),
        quick: opts.quick,
        seq: AtomicU64::new(0),
        manager,
        backend: opts.backend,
    };
    if !opts.json {
        println!(
            "aof2 bench{}: {} ({fs}, statfs type {magic:#x}); {} CPU(s) in the affinity set {:?}; {} shard thread(s) on {:?}, backend: {backend}",
            if opts.quick { " --quick" } else { "" },
            tmp.path().display(),
            cpus.len(),
            cpus,
            ctx.manager.shard_count(),
            ctx.manager.executor(),
        );
        // The largest workload (P1's peers, T1's parts) holds about 1 GiB at --quick and
        // a few GiB at full length; each workload's files go when it ends.
        let needed = if opts.quick { 2u64 << 30 } else { 6 << 30 };
        if free < needed {
            println!(
                "WARNING: {:.1} GiB free in {}; a run may need {} GiB (pass --dir elsewhere)",
                free as f64 / (1u64 << 30) as f64,
                parent.display(),
                needed >> 30
            );
        }
        if magic == TMPFS {
            println!(
                "WARNING: tmpfs: fdatasync is a no-op here; these are not durable-disk figures"
            );
        }
        println!(
            "threads: W1/W2/W4/R2 one writer (R2 plus one follower), W3 64 writers, W5 16 writers on 16 logs, R1/R3 one reader; each baseline runs in this process on the same \
             directory, alternating with aof2 in rounds; each figure is the median over the rounds \
             (5 or more; 2 in a quick run) and each ratio the median of per-round ratios\n"
        );
    }
    let wanted =
        |w: &str| opts.only.is_empty() || opts.only.iter().any(|o| o.eq_ignore_ascii_case(w));
    let mut rows = Vec::new();
    type Workload = fn(&Ctx) -> BenchResult<Vec<Row>>;
    let workloads: [(&[&str], Workload); 17] = [
        (&["W1"], w1::w1),
        (&["W1", "W1B"], w1_burst::w1_burst),
        (&["W1", "W1Z"], w1_zstd::w1z),
        (&["W2"], w2::w2),
        (&["W2", "W2P"], w2_poll::w2_poll),
        (&["W3"], w3::w3),
        (&["W4"], w4::w4),
        (&["W5"], w5::w5),
        (&["R2"], r2::r2),
        (&["R1", "R3"], reads::reads),
        (&["S1"], small::s1),
        (&["Z1"], z1::z1),
        (&["Z1"], z1_reads::z1_reads),
        (&["C1"], paths::c1),
        (&["T1"], tasks::t1),
        (&["P1"], peer_rows),
        (&["A1"], a1_archive::a1),
    ];
    if !opts.json {
        println!(
            "{:<46} {:<18} {:>14} {:>14} {:>8}   baseline",
            "workload", "metric", "aof2", "baseline", "ratio"
        );
    }
    // A progress line on stderr, only where someone watches it (a terminal, not --json).
    let progress = !opts.json && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let total = workloads
        .iter()
        .filter(|(names, _)| names.iter().any(|n| wanted(n)))
        .count();
    let started = std::time::Instant::now();
    let mut done = 0;
    for (names, f) in workloads {
        if !names.iter().any(|n| wanted(n)) {
            continue;
        }
        if progress {
            eprint!(
                "\r\x1b[K[{}/{total}] {} ... ({:.0} s so far)",
                done + 1,
                names.last().expect("a name"),
                started.elapsed().as_secs_f64()
            );
        }
        done += 1;
        let rows_of_workload = f(&ctx)?;
        // Each workload's logs and baseline files go once it has finished: kept to the
        // end, a run's (T1's, W4's, the peers') fill several GiB.
        ctx.tidy()?;
        if progress {
            eprint!("\r\x1b[K");
        }
        for r in rows_of_workload {
            if !opts.json {
                let (base, ratio) = if r.baseline.is_nan() {
                    ("-".to_string(), "-".to_string())
                } else {
                    (fmt_value(r.baseline, r.unit), format!("{:.2}x", r.ratio()))
                };
                println!(
                    "{:<46} {:<18} {:>14} {:>14} {:>8}   {}",
                    r.workload,
                    r.metric,
                    fmt_value(r.ours, r.unit),
                    base,
                    ratio,
                    r.baseline_desc
                );
            }
            rows.push(r);
        }
    }
    if opts.json {
        let v = json!({
            "dir": tmp.path(),
            "filesystem": fs,
            "statfs_type": magic,
            "quick": opts.quick,
            "cpus": cpus,
            "shards": ctx.manager.shard_count(),
            "backend": backend,
            "rows": rows.iter().map(|r| json!({
                "workload": r.workload,
                "metric": r.metric,
                "unit": r.unit,
                "aof2": r.ours,
                "baseline": r.baseline,
                "ratio": r.ratio(),
                "higher_is_better": r.higher_is_better,
                "baseline_desc": r.baseline_desc,
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("\nratio = aof2 / baseline: above 1 is better for throughput, below 1 is better for latency.");
    }
    drop(ctx);
    if let Some(dir) = &opts.plot {
        for p in plots::write(dir, &rows)? {
            eprintln!("plot: {}", p.display());
        }
    }
    Ok(rows)
}
