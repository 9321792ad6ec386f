//! The benchmark harness behind `aof2 bench`: eight workloads (W1-W5, R1-R3), each
//! measured against a raw baseline in the same run on the same directory, reported as a
//! ratio (these machines are noisy; only ratios taken in one run compare).

use crate::aof2::config::AofConfig;
use crate::aof2::{Aof, AofManager, AofManagerConfig, IoBackend};
use hdrhistogram::Histogram;
use serde_json::json;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
}

/// One measured figure with its baseline.
#[derive(Debug, Clone)]
pub struct Row {
    pub workload: &'static str,
    pub metric: &'static str,
    pub unit: &'static str,
    pub ours: f64,
    pub baseline: f64,
    /// True when larger is better (throughput), false for latency.
    pub higher_is_better: bool,
    pub baseline_desc: &'static str,
}

impl Row {
    /// ours / baseline for throughput, ours / baseline for latency too (so < 1 is
    /// faster than the baseline for latency, > 1 faster for throughput).
    pub fn ratio(&self) -> f64 {
        if self.baseline == 0.0 {
            return f64::NAN;
        }
        self.ours / self.baseline
    }
}

fn statfs_type(dir: &Path) -> std::io::Result<i64> {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).expect("no NUL in path");
    // SAFETY: statfs is plain old data; zeroed is a valid value.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `s` a valid out-pointer.
    if unsafe { libc::statfs(c.as_ptr(), &mut s) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(s.f_type as i64)
}

/// A file system's name from its statfs magic.
pub fn fs_name(magic: i64) -> &'static str {
    match magic {
        0xEF53 => "ext4",
        0x5846_5342 => "xfs",
        0x9123_683E => "btrfs",
        0x0102_1994 => "tmpfs",
        0x794C_7630 => "overlayfs",
        0x2FC1_2FC1 => "zfs",
        0x6969 => "nfs",
        0x6573_5546 => "fuse",
        _ => "unknown",
    }
}

const TMPFS: i64 = 0x0102_1994;

fn percentile_us(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// A latency row: quantile `q` of ours and of the baseline, in microseconds.
fn latency_row(
    workload: &'static str,
    metric: &'static str,
    q: f64,
    (ours, base): (&Histogram<u64>, &Histogram<u64>),
    baseline_desc: &'static str,
) -> Row {
    Row {
        workload,
        metric,
        unit: "us",
        ours: percentile_us(ours, q),
        baseline: percentile_us(base, q),
        higher_is_better: false,
        baseline_desc,
    }
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds")
}

/// A file of `size` bytes fully written with zeros and synced, opened O_DIRECT where
/// possible: the baseline's equivalent of a prepared segment.
struct PrewrittenFile {
    file: File,
    size: u64,
    direct: bool,
}

impl PrewrittenFile {
    fn create(path: &Path, size: u64) -> std::io::Result<PrewrittenFile> {
        let mut o = OpenOptions::new();
        o.read(true).write(true).create(true).truncate(true);
        let (file, direct) = match o.clone().custom_flags(libc::O_DIRECT).open(path) {
            Ok(f) => (f, true),
            Err(_) => (o.open(path)?, false),
        };
        let chunk = AlignedBlock::new(1 << 20);
        let mut off = 0;
        while off < size {
            file.write_all_at(chunk.bytes(), off)?;
            off += 1 << 20;
        }
        file.sync_all()?;
        Ok(PrewrittenFile { file, size, direct })
    }
}

/// An aligned buffer for the baselines' O_DIRECT writes.
struct AlignedBlock {
    buf: aof2_shards::buffer::AlignedBuf,
}

impl AlignedBlock {
    fn new(len: usize) -> AlignedBlock {
        let buf = aof2_shards::buffer::AlignedBuf::zeroed(len);
        // SAFETY: a fresh buffer, ours alone.
        unsafe { buf.write(0, &vec![0x5au8; len]) };
        AlignedBlock { buf }
    }
    fn bytes(&self) -> &[u8] {
        // SAFETY: nobody writes the buffer after `new`.
        unsafe { self.buf.slice(0, self.buf.len()) }
    }
}

fn fdatasync(f: &File) -> std::io::Result<()> {
    // SAFETY: plain syscall on an open fd.
    if unsafe { libc::fdatasync(f.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

struct Ctx {
    root: PathBuf,
    manager: AofManager,
    quick: bool,
    seq: AtomicU64,
}

impl Ctx {
    fn open(&self) -> BenchResult<Aof> {
        let mut cfg = AofConfig::default();
        cfg.root_dir = self
            .root
            .join(format!("log-{}", self.seq.fetch_add(1, Ordering::Relaxed)));
        Ok(Aof::new(self.manager.handle(), cfg)?)
    }
    fn duration(&self) -> Duration {
        if self.quick {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(3)
        }
    }
    /// Ours and the baseline alternate in this many slices, order swapped each round,
    /// so the disk's stalls (this machine's reach ~0.7 s; see README) hit both alike.
    fn rounds(&self) -> usize {
        if self.quick {
            2
        } else {
            6
        }
    }
    fn baseline_file(&self, name: &str, size: u64) -> BenchResult<PrewrittenFile> {
        Ok(PrewrittenFile::create(&self.root.join(name), size)?)
    }
}

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

/// Runs `ours` and `base` alternately, `rounds` times each, swapping who goes first.
fn alternate(
    rounds: usize,
    mut ours: impl FnMut() -> BenchResult<()>,
    mut base: impl FnMut() -> BenchResult<()>,
) -> BenchResult<()> {
    for r in 0..rounds {
        if r % 2 == 0 {
            ours()?;
            base()?;
        } else {
            base()?;
            ours()?;
        }
    }
    Ok(())
}

const W1_FRAME: usize = aof2_shards::format::frame_size(100);

/// W1: 100-byte records from one thread for a fixed time, no flush waits.
fn w1(ctx: &Ctx) -> BenchResult<Vec<Row>> {
    let payload = [0x5au8; 100];
    let slice = ctx.duration() / ctx.rounds() as u32;
    let aof = ctx.open()?;
    let (frame, _) = aof2_shards::format::encode_frame(
        1,
        1,
        aof2_shards::format::FrameKind::Record,
        64,
        0,
        &payload,
    );
    let frame: [u8; W1_FRAME] = frame.try_into().expect("frame size");
    let mut buf = vec![0u8; aof2_shards::log::BUF_SIZE]; // the size of a log buffer
    let (mut n, mut t_ours, mut m, mut t_base) = (0u64, Duration::ZERO, 0u64, Duration::ZERO);
    alternate(
        ctx.rounds(),
        || {
            let start = Instant::now();
            while start.elapsed() < slice {
                for _ in 0..1024 {
                    aof.append_record(&payload)?;
                }
                n += 1024;
            }
            t_ours += start.elapsed();
            Ok(())
        },
        || {
            // The same frames copied into a buffer: no checksum, no lock, no I/O.
            let start = Instant::now();
            let mut off = 0usize;
            while start.elapsed() < slice {
                for _ in 0..1024 {
                    if off + W1_FRAME > buf.len() {
                        off = 0;
                    }
                    buf[off..off + W1_FRAME].copy_from_slice(std::hint::black_box(&frame));
                    off += W1_FRAME;
                }
                m += 1024;
            }
            std::hint::black_box(&buf);
            t_base += start.elapsed();
            Ok(())
        },
    )?;
    Ok(vec![Row {
        workload: "W1 buffered appends (100 B, 1 thread)",
        metric: "records/s",
        unit: "rec/s",
        ours: n as f64 / t_ours.as_secs_f64(),
        baseline: m as f64 / t_base.as_secs_f64(),
        higher_is_better: true,
        baseline_desc: "memcpy of the same frames into a buffer",
    }])
}

/// W2: one writer, 4 KiB record then flush_until; once from an unpinned thread, once
/// from a thread pinned to the CPU of the log's shard (the deployment the shards are
/// built for). The baseline runs on the same thread each time.
fn w2(ctx: &Ctx) -> BenchResult<Vec<Row>> {
    let mut rows = w2_on(ctx, None)?;
    let aof = ctx.open()?;
    if let Some(cpu) = aof.shard_cpu() {
        drop(aof);
        let pinned = std::thread::scope(|s| {
            s.spawn(|| {
                if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
                    return Err("cannot pin the W2 writer".to_string());
                }
                w2_on(ctx, Some(cpu)).map_err(|e| e.to_string())
            })
            .join()
            .map_err(|_| "W2 writer panicked".to_string())?
        })?;
        rows.extend(pinned);
    }
    Ok(rows)
}

fn w2_on(ctx: &Ctx, pinned: Option<usize>) -> BenchResult<Vec<Row>> {
    let per_round = if ctx.quick {
        500
    } else {
        10_000 / ctx.rounds()
    };
    let payload = vec![0x42u8; 4096];
    let aof = ctx.open()?;
    if pinned.is_some() && aof.shard_cpu() != pinned {
        return Err("the W2 log landed on another shard than expected".into());
    }
    let f = ctx.baseline_file("w2-baseline", 64 << 20)?;
    let block = AlignedBlock::new(4096);
    for i in 0..100u64 {
        let r = aof.append_record(&payload)?;
        aof.flush_until(r)?;
        f.file.write_all_at(block.bytes(), i * 4096)?;
        fdatasync(&f.file)?;
    }
    let (mut ours, mut base) = (hist(), hist());
    let mut off = 0u64;
    alternate(
        ctx.rounds(),
        || {
            for _ in 0..per_round {
                let t = Instant::now();
                let r = aof.append_record(&payload)?;
                aof.flush_until(r)?;
                ours.record(t.elapsed().as_nanos() as u64)?;
            }
            Ok(())
        },
        || {
            for _ in 0..per_round {
                let t = Instant::now();
                f.file.write_all_at(block.bytes(), off % f.size)?;
                fdatasync(&f.file)?;
                base.record(t.elapsed().as_nanos() as u64)?;
                off += 4096;
            }
            Ok(())
        },
    )?;
    let workload = if pinned.is_some() {
        "W2 same, writer pinned to the shard's CPU"
    } else {
        "W2 durable latency (4 KiB + flush_until)"
    };
    let row = |metric, q| {
        latency_row(
            workload,
            metric,
            q,
            (&ours, &base),
            "pwrite 4 KiB + fdatasync, pre-written file",
        )
    };
    Ok(vec![row("p50", 0.5), row("p99", 0.99), row("p99.9", 0.999)])
}

/// W3: 64 concurrent writers each appending 4 KiB and waiting for durability.
fn w3(ctx: &Ctx) -> BenchResult<Vec<Row>> {
    const WRITERS: usize = 64;
    let slice = ctx.duration() / ctx.rounds() as u32;
    let aof = Arc::new(ctx.open()?);
    let f = ctx.baseline_file("w3-baseline", 64 << 20)?;
    let block = AlignedBlock::new(4096);
    let (mut ours, mut base) = (hist(), hist());
    let (mut n_ours, mut t_ours, mut n_base, mut t_base) =
        (0u64, Duration::ZERO, 0u64, Duration::ZERO);
    let mut off = 0u64;
    alternate(
        ctx.rounds(),
        || {
            let stop = Arc::new(AtomicBool::new(false));
            let threads: Vec<_> = (0..WRITERS)
                .map(|_| {
                    let (aof, stop) = (aof.clone(), stop.clone());
                    std::thread::spawn(move || -> Result<(u64, Histogram<u64>), String> {
                        let payload = vec![0x33u8; 4096];
                        let mut h = hist();
                        let mut n = 0;
                        while !stop.load(Ordering::Relaxed) {
                            let t = Instant::now();
                            let r = aof.append_record(&payload).map_err(|e| e.to_string())?;
                            aof.flush_until(r).map_err(|e| e.to_string())?;
                            h.record(t.elapsed().as_nanos() as u64)
                                .map_err(|e| e.to_string())?;
                            n += 1;
                        }
                        Ok((n, h))
                    })
                })
                .collect();
            let start = Instant::now();
            std::thread::sleep(slice);
            stop.store(true, Ordering::Relaxed);
            for t in threads {
                let (n, h) = t.join().map_err(|_| "writer thread panicked")??;
                n_ours += n;
                ours.add(h)?;
            }
            t_ours += start.elapsed();
            Ok(())
        },
        || {
            // 64 separate 4 KiB pwrites, then one fdatasync.
            let start = Instant::now();
            while start.elapsed() < slice {
                let t = Instant::now();
                for _ in 0..WRITERS {
                    f.file.write_all_at(block.bytes(), off % f.size)?;
                    off += 4096;
                }
                fdatasync(&f.file)?;
                base.record_n(t.elapsed().as_nanos() as u64, WRITERS as u64)?;
                n_base += WRITERS as u64;
            }
            t_base += start.elapsed();
            Ok(())
        },
    )?;
    let desc = "64 separate 4 KiB pwrites + 1 fdatasync";
    let w = "W3 group commit (64 writers x 4 KiB)";
    Ok(vec![
        Row {
            workload: w,
            metric: "durable records/s",
            unit: "rec/s",
            ours: n_ours as f64 / t_ours.as_secs_f64(),
            baseline: n_base as f64 / t_base.as_secs_f64(),
            higher_is_better: true,
            baseline_desc: desc,
        },
        latency_row(w, "p99", 0.99, (&ours, &base), desc),
    ])
}

/// W4: 1 MiB of records (16 x 64 KiB) per flush_until.
fn w4(ctx: &Ctx) -> BenchResult<Vec<Row>> {
    let total: u64 = if ctx.quick { 64 << 20 } else { 1 << 30 };
    let per_round = total / ctx.rounds() as u64;
    let payload = vec![0x77u8; 64 * 1024];
    let aof = ctx.open()?;
    let f = ctx.baseline_file("w4-baseline", 256 << 20)?;
    let block = AlignedBlock::new(1 << 20);
    let (mut b_ours, mut t_ours, mut b_base, mut t_base) =
        (0u64, Duration::ZERO, 0u64, Duration::ZERO);
    alternate(
        ctx.rounds(),
        || {
            let start = Instant::now();
            let mut written = 0;
            while written < per_round {
                let mut last = None;
                for _ in 0..16 {
                    last = Some(aof.append_record(&payload)?);
                }
                aof.flush_until(last.expect("16 appends"))?;
                written += 16 * payload.len() as u64;
            }
            b_ours += written;
            t_ours += start.elapsed();
            Ok(())
        },
        || {
            let start = Instant::now();
            let mut written = 0;
            while written < per_round {
                f.file.write_all_at(block.bytes(), b_base % f.size)?;
                fdatasync(&f.file)?;
                written += 1 << 20;
                b_base += 1 << 20;
            }
            t_base += start.elapsed();
            Ok(())
        },
    )?;
    Ok(vec![Row {
        workload: "W4 durable bandwidth (1 MiB per flush_until)",
        metric: "GB/s",
        unit: "GB/s",
        ours: b_ours as f64 / t_ours.as_secs_f64() / 1e9,
        baseline: b_base as f64 / t_base.as_secs_f64() / 1e9,
        higher_is_better: true,
        baseline_desc: if f.direct {
            "1 MiB O_DIRECT pwrite + fdatasync, pre-written file"
        } else {
            "1 MiB pwrite (buffered: no O_DIRECT here) + fdatasync, pre-written file"
        },
    }])
}

/// W5: 16 logs, one writer thread each, every append (4 KiB) waited for with
/// `flush_until`: the shards carry many logs' syncs at once.
fn w5(ctx: &Ctx) -> BenchResult<Vec<Row>> {
    const LOGS: usize = 16;
    let slice = ctx.duration() / ctx.rounds() as u32;
    let logs: Vec<Arc<Aof>> = (0..LOGS)
        .map(|_| ctx.open().map(Arc::new))
        .collect::<BenchResult<_>>()?;
    let files: Vec<Arc<PrewrittenFile>> = (0..LOGS)
        .map(|i| {
            ctx.baseline_file(&format!("w5-baseline-{i}"), 16 << 20)
                .map(Arc::new)
        })
        .collect::<BenchResult<_>>()?;
    let (mut n_ours, mut t_ours, mut n_base, mut t_base) =
        (0u64, Duration::ZERO, 0u64, Duration::ZERO);
    // Runs `op` on one thread per index until `slice` is over; returns the operations.
    fn run_threads(
        slice: Duration,
        op: impl Fn(usize, u64) -> Result<(), String> + Send + Sync + Clone + 'static,
    ) -> BenchResult<u64> {
        let stop = Arc::new(AtomicBool::new(false));
        let threads: Vec<_> = (0..LOGS)
            .map(|i| {
                let (stop, op) = (stop.clone(), op.clone());
                std::thread::spawn(move || -> Result<u64, String> {
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        op(i, n)?;
                        n += 1;
                    }
                    Ok(n)
                })
            })
            .collect();
        std::thread::sleep(slice);
        stop.store(true, Ordering::Relaxed);
        let mut total = 0;
        for t in threads {
            total += t.join().map_err(|_| "W5 thread panicked")??;
        }
        Ok(total)
    }
    alternate(
        ctx.rounds(),
        || {
            let logs = logs.clone();
            let start = Instant::now();
            n_ours += run_threads(slice, move |i, _| {
                let payload = [0x55u8; 4096];
                let r = logs[i].append_record(&payload).map_err(|e| e.to_string())?;
                logs[i].flush_until(r).map_err(|e| e.to_string())
            })?;
            t_ours += start.elapsed();
            Ok(())
        },
        || {
            let files = files.clone();
            let start = Instant::now();
            n_base += run_threads(slice, move |i, n| {
                let f = &files[i];
                let block = AlignedBlock::new(4096);
                f.file
                    .write_all_at(block.bytes(), (n * 4096) % f.size)
                    .map_err(|e| e.to_string())?;
                fdatasync(&f.file).map_err(|e| e.to_string())
            })?;
            t_base += start.elapsed();
            Ok(())
        },
    )?;
    Ok(vec![Row {
        workload: "W5 16 logs, a writer each (4 KiB + flush)",
        metric: "durable records/s",
        unit: "rec/s",
        ours: n_ours as f64 / t_ours.as_secs_f64(),
        baseline: n_base as f64 / t_base.as_secs_f64(),
        higher_is_better: true,
        baseline_desc: "16 threads: pwrite 4 KiB + fdatasync, a pre-written file each",
    }])
}

/// Drops `path`'s clean pages from the page cache, so the next read comes from disk.
fn drop_cache(path: &Path) -> std::io::Result<()> {
    let f = File::open(path)?;
    // SAFETY: plain syscall on an open fd.
    let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if r != 0 {
        return Err(std::io::Error::from_raw_os_error(r));
    }
    Ok(())
}

/// Reads `[0, len)` of each file with 1 MiB `read`s; returns the bytes read.
fn raw_read(files: &[(PathBuf, u64)], buf: &mut [u8]) -> BenchResult<u64> {
    let mut total = 0;
    for (path, len) in files {
        let f = File::open(path)?;
        let mut off = 0;
        while off < *len {
            let n = ((*len - off) as usize).min(buf.len());
            f.read_exact_at(&mut buf[..n], off)?;
            std::hint::black_box(&buf[..n]);
            off += n as u64;
        }
        total += off;
    }
    Ok(total)
}

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
fn reads(ctx: &Ctx) -> BenchResult<Vec<Row>> {
    use crate::aof2::config::SegmentId;
    use crate::aof2::reader::SegmentCursor;
    let bytes: u64 = if ctx.quick { 64 << 20 } else { 1 << 30 };
    let root = build_read_log(ctx, bytes)?;
    let mut buf = vec![0u8; 1 << 20];
    let files = segment_extents(&root)?;
    let log_bytes: u64 = files.iter().map(|f| f.1).sum();
    let mut cfg = AofConfig::default();
    cfg.root_dir = root.clone();

    // R3: open (recovery: headers and footers of sealed segments, a full scan of the
    // unsealed last one, which it then seals) with a cold cache, against a cold raw read
    // of the whole log. Once only: the open seals the segment it scans.
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
    let (mut t_verify, mut t_raw, mut n_raw) = (Duration::ZERO, Duration::ZERO, 0u64);
    alternate(
        ctx.rounds().min(2),
        || {
            for (p, _) in &files {
                drop_cache(p)?;
            }
            let start = Instant::now();
            aof2_shards::inspect::LogDir::open(&root)?.verify()?;
            t_verify += start.elapsed();
            Ok(())
        },
        || {
            for (p, _) in &files {
                drop_cache(p)?;
            }
            let start = Instant::now();
            n_raw += raw_read(&files, &mut buf)?;
            t_raw += start.elapsed();
            Ok(())
        },
    )?;
    let verify_rounds = ctx.rounds().min(2) as f64;

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
    let (mut b_ours, mut t_ours, mut b_base, mut t_base) =
        (0u64, Duration::ZERO, 0u64, Duration::ZERO);
    alternate(
        ctx.rounds(),
        || {
            let start = Instant::now();
            for &id in &segments {
                let mut c = SegmentCursor::new(aof.open_reader(SegmentId::new(id))?);
                while let Some(r) = c.next()? {
                    b_ours += (r.payload().len() + aof2_shards::format::FRAME_HEADER_LEN) as u64;
                    std::hint::black_box(r.payload());
                }
            }
            t_ours += start.elapsed();
            Ok(())
        },
        || {
            let start = Instant::now();
            b_base += raw_read(&files, &mut buf)?;
            t_base += start.elapsed();
            Ok(())
        },
    )?;
    let gb = |b: u64, t: Duration| b as f64 / t.as_secs_f64() / 1e9;
    Ok(vec![
        Row {
            workload: "R1 sealed-segment cursor reads (4 KiB)",
            metric: "GB/s (warm cache)",
            unit: "GB/s",
            ours: gb(b_ours, t_ours),
            baseline: gb(b_base, t_base),
            higher_is_better: true,
            baseline_desc: "1 MiB pread of the same frames, warm cache",
        },
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
        },
        Row {
            workload: "R3 aof2 verify (every byte checked)",
            metric: "GB/s (cold)",
            unit: "GB/s",
            ours: log_bytes as f64 * verify_rounds / t_verify.as_secs_f64() / 1e9,
            baseline: gb(n_raw, t_raw),
            higher_is_better: true,
            baseline_desc: "1 MiB pread of every segment's frames, cold cache",
        },
    ])
}

/// R2: from the call to `append_record` until a follower blocked in
/// `TailFollower::next_blocking` sees the record durable (the writer calls
/// `flush_until`).
fn r2(ctx: &Ctx) -> BenchResult<Vec<Row>> {
    use std::sync::{Condvar, Mutex};
    let n = if ctx.quick { 300 } else { 3000 };
    let aof = Arc::new(ctx.open()?);
    let payload = vec![0x11u8; 4096];
    let f = ctx.baseline_file("r2-baseline", 64 << 20)?;
    let block = AlignedBlock::new(4096);
    let (mut ours, mut base) = (hist(), hist());
    let per_round = n / ctx.rounds();
    // The follower: reports each durable position it wakes to, with the time.
    let seen = Arc::new((Mutex::new((0u64, Instant::now())), Condvar::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let follower = {
        let mut f = aof.tail_follower();
        let seen = seen.clone();
        std::thread::spawn(move || {
            while let Some(st) = f.next_blocking() {
                let now = Instant::now();
                let (m, cv) = &*seen;
                *m.lock().unwrap_or_else(|p| p.into_inner()) = (st.durable.as_u64(), now);
                cv.notify_all();
                if st.ended {
                    break;
                }
            }
        })
    };
    let wait_seen = |target: u64| -> Instant {
        let (m, cv) = &*seen;
        let mut g = m.lock().unwrap_or_else(|p| p.into_inner());
        while g.0 < target {
            g = cv.wait(g).unwrap_or_else(|p| p.into_inner());
        }
        g.1
    };
    // The baseline: pwrite + fdatasync, then a condvar hand-off to a waiting thread.
    let handoff = Arc::new((Mutex::new((0u64, Instant::now())), Condvar::new()));
    let waiter = {
        let handoff = handoff.clone();
        let seen = seen.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut last = 0;
            loop {
                let (m, cv) = &*handoff;
                let mut g = m.lock().unwrap_or_else(|p| p.into_inner());
                while g.0 == last && !stop.load(Ordering::Acquire) {
                    g = cv.wait(g).unwrap_or_else(|p| p.into_inner());
                }
                if stop.load(Ordering::Acquire) {
                    break;
                }
                last = g.0;
                drop(g);
                let now = Instant::now();
                let (m2, cv2) = &*seen;
                let mut s = m2.lock().unwrap_or_else(|p| p.into_inner());
                // Baseline sequence numbers live above every record id.
                s.0 = s.0.max(u64::MAX / 2 + last);
                s.1 = now;
                cv2.notify_all();
            }
        })
    };
    let mut k = 0u64;
    alternate(
        ctx.rounds(),
        || {
            for _ in 0..per_round {
                let t0 = Instant::now();
                let rid = aof.append_record(&payload)?;
                aof.flush_until(rid)?;
                let t1 = wait_seen(rid.as_u64() + 1);
                ours.record(t1.duration_since(t0).as_nanos().max(1) as u64)?;
            }
            Ok(())
        },
        || {
            for _ in 0..per_round {
                k += 1;
                let t0 = Instant::now();
                f.file.write_all_at(block.bytes(), (k * 4096) % f.size)?;
                fdatasync(&f.file)?;
                {
                    let (m, cv) = &*handoff;
                    m.lock().unwrap_or_else(|p| p.into_inner()).0 = k;
                    cv.notify_all();
                }
                let t1 = wait_seen(u64::MAX / 2 + k);
                base.record(t1.duration_since(t0).as_nanos().max(1) as u64)?;
            }
            Ok(())
        },
    )?;
    stop.store(true, Ordering::Release);
    handoff.1.notify_all();
    waiter.join().map_err(|_| "baseline waiter panicked")?;
    aof.close();
    follower.join().map_err(|_| "follower panicked")?;
    let desc = "4 KiB pwrite + fdatasync, then a condvar hand-off to a waiting thread";
    let w = "R2 append -> follower wake-up (4 KiB + flush)";
    Ok(vec![
        latency_row(w, "p50", 0.5, (&ours, &base), desc),
        latency_row(w, "p99", 0.99, (&ours, &base), desc),
    ])
}

fn fmt_value(v: f64, unit: &str) -> String {
    match unit {
        "rec/s" if v >= 1e6 => format!("{:.2} M/s", v / 1e6),
        "rec/s" if v >= 1e3 => format!("{:.1} k/s", v / 1e3),
        "rec/s" => format!("{v:.0} /s"),
        "us" => format!("{v:.0} us"),
        "GB/s" => format!("{v:.2} GB/s"),
        "ms" => format!("{v:.1} ms"),
        _ => format!("{v:.2}"),
    }
}

/// Runs the benchmark and prints its report. Returns the rows.
pub fn run(opts: &BenchOptions) -> BenchResult<Vec<Row>> {
    let parent = match &opts.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir(),
    };
    std::fs::create_dir_all(&parent)
        .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    let magic = statfs_type(&parent).map_err(|e| format!("statfs {}: {e}", parent.display()))?;
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
    };
    if !opts.json {
        println!(
            "aof2 bench{}: {} ({fs}, statfs type {magic:#x}); {} CPU(s) in the affinity set {:?}; {} shard thread(s), backend: {backend}",
            if opts.quick { " --quick" } else { "" },
            tmp.path().display(),
            cpus.len(),
            cpus,
            ctx.manager.shard_count(),
        );
        if magic == TMPFS {
            println!(
                "WARNING: tmpfs: fdatasync is a no-op here; these are not durable-disk figures"
            );
        }
        println!(
            "threads: W1/W2/W4/R2 one writer (R2 plus one follower), W3 64 writers, W5 16 writers on 16 logs, R1/R3 one reader; each baseline runs in this process on the same \
             directory, alternating with aof2 in {} slices\n",
            ctx.rounds() * 2
        );
    }
    let wanted =
        |w: &str| opts.only.is_empty() || opts.only.iter().any(|o| o.eq_ignore_ascii_case(w));
    let mut rows = Vec::new();
    type Workload = fn(&Ctx) -> BenchResult<Vec<Row>>;
    let workloads: [(&[&str], Workload); 7] = [
        (&["W1"], w1),
        (&["W2"], w2),
        (&["W3"], w3),
        (&["W4"], w4),
        (&["W5"], w5),
        (&["R2"], r2),
        (&["R1", "R3"], reads),
    ];
    if !opts.json {
        println!(
            "{:<46} {:<18} {:>14} {:>14} {:>8}   baseline",
            "workload", "metric", "aof2", "baseline", "ratio"
        );
    }
    for (names, f) in workloads {
        if !names.iter().any(|n| wanted(n)) {
            continue;
        }
        for r in f(&ctx)? {
            if !opts.json {
                println!(
                    "{:<46} {:<18} {:>14} {:>14} {:>7.2}x   {}",
                    r.workload,
                    r.metric,
                    fmt_value(r.ours, r.unit),
                    fmt_value(r.baseline, r.unit),
                    r.ratio(),
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
    Ok(rows)
}
