//! A1: the archive. Upload throughput, hydration of an archived-only segment (cold:
//! downloaded and checked; cached: from `hydrated/`), and W1 / W2 on a log whose
//! segments are uploaded while it writes, each against a baseline in the same run:
//! the store's own put and get of the same bytes, a local segment's reader, and the
//! same appends on a manager without an archive.
//!
//! The store is a local directory beside the logs; with the `s3` feature and an
//! `s3s-fs` binary (`AOF2_S3S_FS` or the `PATH`), a loopback `s3s-fs` server instead,
//! its data on tmpfs where there is one (the server stands in for a remote store: its
//! own disk writes would land on the logs' disk). `AOF2_BENCH_ARCHIVE=dir` forces the
//! local directory.

use super::report::*;
use super::{alternate, BenchResult, Ctx};
use aof2_shards::archive::store::ArchiveBackend;
use bop_rs::aof2::config::{ArchiveStore, RetentionPolicy, SegmentId};
use bop_rs::aof2::{Aof, AofManager, AofManagerConfig};
use hdrhistogram::Histogram;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[cfg(feature = "s3")]
#[path = "../../../tests/common/s3s.rs"]
mod s3s;

/// The store the rows use, and what keeps it alive.
struct Store {
    cfg: ArchiveStore,
    backend: Arc<dyn ArchiveBackend>,
    name: String,
    #[cfg(feature = "s3")]
    _server: Option<s3s::Server>,
    /// The server's data directory, removed with the store.
    _data: Option<std::path::PathBuf>,
}

impl Drop for Store {
    fn drop(&mut self) {
        #[cfg(feature = "s3")]
        drop(self._server.take());
        if let Some(d) = &self._data {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn store(root: &Path) -> BenchResult<Store> {
    #[cfg(feature = "s3")]
    if let Some(bin) =
        s3s::binary().filter(|_| std::env::var("AOF2_BENCH_ARCHIVE").as_deref() != Ok("dir"))
    {
        let shm = Path::new("/dev/shm");
        let data = if shm.is_dir() {
            shm.join(format!("aof2-bench-s3s-{}", std::process::id()))
        } else {
            root.join("s3s")
        };
        // At the lowest CPU priority: it stands in for a store on other machines.
        let server = s3s::Server::start_niced(bin, &data, true)?;
        let mut c = bop_rs::aof2::config::S3Config::default();
        c.bucket = s3s::BUCKET.into();
        c.endpoint = Some(server.endpoint());
        c.allow_http = true;
        c.credentials = bop_rs::aof2::config::S3Credentials::Static {
            access_key_id: s3s::ACCESS.into(),
            secret_access_key: bop_rs::aof2::config::Secret::new(s3s::SECRET),
            session_token: None,
        };
        let cfg = ArchiveStore::S3(c);
        let backend = aof2_shards::archive::build_store(&cfg)?;
        return Ok(Store {
            name: format!(
                "s3s-fs on loopback ({}), data in {}",
                backend.describe(),
                data.display()
            ),
            cfg,
            backend,
            _server: Some(server),
            _data: Some(data),
        });
    }
    let dir = root.join("archive-store");
    let cfg = ArchiveStore::LocalDir(dir.clone());
    Ok(Store {
        backend: aof2_shards::archive::build_store(&cfg)?,
        name: format!("a local directory ({})", dir.display()),
        cfg,
        #[cfg(feature = "s3")]
        _server: None,
        _data: None,
    })
}

fn wait(what: &str, limit: Duration, f: impl Fn() -> bool) -> BenchResult<()> {
    let start = Instant::now();
    while !f() {
        if start.elapsed() > limit {
            return Err(format!("A1: {what} not within {limit:?}").into());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

/// Fills `n` sealed segments of `aof` with 64 KiB records.
fn fill(aof: &Aof, n: usize, seg: u64) -> BenchResult<()> {
    let rec = vec![0x5au8; 64 << 10];
    for _ in 0..n {
        let mut written = 0;
        while written + (80 << 10) < seg {
            aof.append_record(&rec)?;
            written += rec.len() as u64 + 64;
        }
        aof.flush()?;
        aof.seal_active()?;
    }
    Ok(())
}

/// A1: the archive's rows.
pub fn a1(ctx: &Ctx) -> BenchResult<Vec<Row>> {
    let st = store(&ctx.root)?;
    println!("(A1: the archive is {})", st.name);
    let mut mcfg = AofManagerConfig::default();
    mcfg.backend = ctx.backend;
    mcfg.archive = Some(st.cfg.clone());
    let am = AofManager::with_config(mcfg)?;
    let mut rows = uploads_and_hydration(ctx, &am, &st)?;
    rows.extend(while_uploading(ctx, &am)?);
    Ok(rows)
}

fn uploads_and_hydration(ctx: &Ctx, am: &AofManager, st: &Store) -> BenchResult<Vec<Row>> {
    let seg: u64 = if ctx.quick { 8 << 20 } else { 64 << 20 };
    // Six segments (three in --quick): five archived-only ones to hydrate, each a
    // round of the hydration rows.
    let n = if ctx.quick { 3 } else { 6 };
    // The segments are written on the plain manager, then the log is opened with the
    // archive: the upload of all of them is timed alone.
    let plain = ctx.open_with(|c| {
        c.segment_min_bytes = seg;
        c.segment_target_bytes = seg;
    })?;
    fill(&plain, n, seg)?;
    let root = plain.root_dir().to_path_buf();
    plain.close()?;
    drop(plain);
    let mut cfg = bop_rs::aof2::config::AofConfig::default();
    cfg.root_dir = root.clone();
    cfg.segment_min_bytes = seg;
    cfg.segment_target_bytes = seg;
    // Each upload's MiB/s: from the previous one's end (the open, for the first) to
    // its own, as the log's counters show them (a log uploads one segment at a time).
    let mbps = |b: u64, t: Duration| b as f64 / (1 << 20) as f64 / t.as_secs_f64();
    let mut up = Vec::new();
    let mut t = Instant::now();
    let aof = Aof::new(am.handle(), cfg.clone())?;
    let (mut done, mut bytes) = (0, 0);
    let limit = Instant::now() + Duration::from_secs(300);
    while aof.flush_metrics().archive_backlog_segments > 0 || done == 0 {
        let m = aof.flush_metrics();
        if m.archive_uploads > done {
            // (Two done between looks: both at their mean rate.)
            let rate = mbps(m.archive_uploaded_bytes - bytes, t.elapsed());
            up.extend((done..m.archive_uploads).map(|_| rate));
            (done, bytes, t) = (m.archive_uploads, m.archive_uploaded_bytes, Instant::now());
        }
        if Instant::now() > limit {
            return Err("uploads: not done within 300 s".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    // Baseline: the store's own put of the same files' bytes (read included), fresh keys.
    let mut put = Vec::new();
    for s in aof.catalog_snapshot().iter().filter(|s| s.sealed) {
        let t = Instant::now();
        let path = root
            .join("segments")
            .join(format!("{:020}.seg", s.segment_id));
        let data = std::fs::read(&path)?;
        st.backend
            .put_new(&format!("baseline/{}", s.segment_id), &data, "-")
            .map_err(|e| e.to_string())?;
        put.push(mbps(data.len() as u64, t.elapsed()));
    }
    // Local copies go (retention keeps one segment's worth), then each archived-only
    // segment is opened cold (downloaded) and again (cached), against the store's get
    // and a local segment's reader.
    aof.close()?;
    drop(aof);
    cfg.retention = RetentionPolicy::Size {
        max_total_bytes: seg,
    };
    let aof = Aof::new(am.handle(), cfg)?;
    wait("local drops", Duration::from_secs(60), || {
        aof.catalog_snapshot().iter().filter(|s| !s.local).count() >= n - 1
    })?;
    let archived: Vec<u64> = aof
        .catalog_snapshot()
        .iter()
        .filter(|s| !s.local)
        .map(|s| s.segment_id)
        .collect();
    let local = aof
        .catalog_snapshot()
        .iter()
        .find(|s| s.local && s.sealed)
        .map(|s| s.segment_id);
    let (mut cold, mut cached, mut get, mut local_open) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for &id in &archived {
        let t = Instant::now();
        drop(aof.open_reader(SegmentId::new(id))?);
        cold.push(t.elapsed());
        let t = Instant::now();
        drop(aof.open_reader(SegmentId::new(id))?);
        cached.push(t.elapsed());
        let key = format!("baseline/{id}");
        let t = Instant::now();
        st.backend.get(&key).map_err(|e| e.to_string())?;
        get.push(t.elapsed());
        if let Some(l) = local {
            let t = Instant::now();
            drop(aof.open_reader(SegmentId::new(l))?);
            local_open.push(t.elapsed());
        }
    }
    let ms = |v: &[Duration]| -> Vec<f64> { v.iter().map(|d| d.as_secs_f64() * 1e3).collect() };
    let w = if ctx.quick {
        "A1 archive (8 MiB segments)"
    } else {
        "A1 archive (64 MiB segments)"
    };
    // Medians over the segments, each ratio of segment i's figures.
    Ok(vec![
        rounds_row(
            w,
            "upload MiB/s",
            "MiB/s",
            (&up, &put),
            true,
            "read + the store's put of the same bytes (no check, no hash, no stub)",
        ),
        rounds_row(
            w,
            "hydrate cold p50",
            "ms",
            (&ms(&cold), &ms(&get)),
            false,
            "the store's get of the same object",
        ),
        rounds_row(
            w,
            "hydrate cached p50",
            "ms",
            (&ms(&cached), &ms(&local_open)),
            false,
            "open_reader of a local sealed segment",
        ),
    ])
}

/// W1 (100-byte appends) and W2 (4 KiB + flush_until) on a log whose 1 MiB segments
/// are uploaded as it writes, against the same on a manager without an archive.
fn while_uploading(ctx: &Ctx, am: &AofManager) -> BenchResult<Vec<Row>> {
    let small = |c: &mut bop_rs::aof2::config::AofConfig| {
        c.segment_min_bytes = 1 << 20;
        c.segment_target_bytes = 1 << 20;
        c.retention = RetentionPolicy::Size {
            max_total_bytes: 8 << 20,
        };
    };
    let ours = ctx.open_on(am, small)?;
    let base = ctx.open_with(small)?;
    let slice = ctx.duration() / ctx.rounds() as u32;
    let rec = vec![0x42u8; 100];
    // Records/s per round, each side (the row: medians over rounds).
    let (mut r_ours, mut r_base) = (Vec::new(), Vec::new());
    let w1 = |aof: &Aof, rates: &mut Vec<f64>| -> BenchResult<()> {
        let start = Instant::now();
        let n = super::w1::append_for(aof, &rec, slice)?;
        rates.push(n as f64 / start.elapsed().as_secs_f64());
        Ok(())
    };
    alternate(
        ctx.rounds(),
        || w1(&ours, &mut r_ours),
        || w1(&base, &mut r_base),
    )?;
    let uploads_w1 = ours.flush_metrics().archive_uploads;
    let rec = vec![0x24u8; 4096];
    // Rounds of 2,000 commits a side (alternating in slices of 250): the p99 of
    // each round is over 20 samples, and the rows take medians over the rounds.
    let (rounds, slices, per_slice) = if ctx.quick { (2, 4, 250) } else { (5, 8, 250) };
    let w2 = |aof: &Aof, h: &mut Histogram<u64>| -> BenchResult<()> {
        for _ in 0..per_slice {
            let t = Instant::now();
            let rid = aof.append_record(&rec)?;
            aof.flush_until(rid)?;
            h.record(t.elapsed().as_nanos() as u64)?;
        }
        Ok(())
    };
    let (mut q_ours, mut q_base) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
    for _ in 0..rounds {
        let mut h_ours = Histogram::<u64>::new(3)?;
        let mut h_base = Histogram::<u64>::new(3)?;
        alternate(slices, || w2(&ours, &mut h_ours), || w2(&base, &mut h_base))?;
        for (i, q) in [0.5, 0.99].into_iter().enumerate() {
            q_ours[i].push(percentile_us(&h_ours, q));
            q_base[i].push(percentile_us(&h_base, q));
        }
    }
    let uploads = ours.flush_metrics().archive_uploads;
    if uploads_w1 == 0 || uploads <= uploads_w1 {
        println!(
            "(A1: only {uploads_w1} uploads during W1 and {} during W2)",
            uploads - uploads_w1
        );
    }
    let mut rows = vec![rounds_row(
        "A1 W1 while segments upload",
        "records/s",
        "rec/s",
        (&r_ours, &r_base),
        true,
        "the same appends, manager without an archive",
    )];
    for (i, metric) in ["p50", "p99"].into_iter().enumerate() {
        rows.push(rounds_row(
            "A1 W2 while segments upload",
            metric,
            "us",
            (&q_ours[i], &q_base[i]),
            false,
            "the same, manager without an archive (median of per-round ratios)",
        ));
    }
    Ok(rows)
}
