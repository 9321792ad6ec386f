//! P1's other peers (`--features peers`): walrus-rust 0.2, writeahead 0.4 and
//! raft-engine 0.4 (TiKV's log engine, without default features) through their durable
//! calls, and commitlog 0.2, which does not sync, in a buffered row.

use super::report::*;
use super::{alternate, BenchResult, Ctx};
use std::path::Path;
use std::time::Instant;

/// walrus-rust with `FsyncSchedule::SyncEach`: its files are opened `O_SYNC`, so an
/// append is durable when it returns.
pub struct Walrus(walrus_rust::Walrus);

impl Walrus {
    /// Opens a walrus instance whose files live under `dir`.
    pub fn open(dir: &Path) -> BenchResult<Walrus> {
        std::fs::create_dir_all(dir)?;
        // walrus reads its data directory from the environment (once, at creation);
        // P1 sets it before any of its threads run.
        std::env::set_var("WALRUS_DATA_DIR", dir);
        // Without it walrus prints a debug line per write to stdout: thousands of lines in
        // the report, and a cost no user of it would pay.
        std::env::set_var("WALRUS_QUIET", "1");
        let w = walrus_rust::Walrus::with_consistency_and_schedule_for_key(
            "p1",
            walrus_rust::ReadConsistency::StrictlyAtOnce,
            walrus_rust::FsyncSchedule::SyncEach,
        )?;
        Ok(Walrus(w))
    }

    /// One durable append.
    pub fn append_sync(&self, payload: &[u8]) -> Result<(), String> {
        self.0
            .append_for_topic("p1", payload)
            .map_err(|e| format!("walrus: {e}"))
    }
}

/// writeahead: a writer thread that group-commits; `write` resolves once the record
/// is `fdatasync`ed.
pub struct WriteAheadLog {
    _wal: writeahead::WriteAhead<writeahead::SimpleFile>,
    handle: writeahead::WriteHandle,
}

impl WriteAheadLog {
    /// Opens (creates) a writeahead log in `dir`.
    pub fn open(dir: &Path) -> BenchResult<WriteAheadLog> {
        let mut wal = writeahead::WriteAhead::<writeahead::SimpleFile>::with_options(
            writeahead::WriteAheadOptions {
                log_dir: dir.to_path_buf(),
                ..Default::default()
            },
        );
        wal.start().map_err(|e| format!("writeahead: {e}"))?;
        let handle = wal.writer().map_err(|e| format!("writeahead: {e}"))?;
        Ok(WriteAheadLog { _wal: wal, handle })
    }

    /// One durable append (waits for the future on this thread).
    pub fn append_sync(&self, payload: &[u8]) -> Result<(), String> {
        futures_lite::future::block_on(self.handle.write(payload.to_vec()))
            .map(|_| ())
            .map_err(|e| format!("writeahead: {e}"))
    }
}

/// raft-engine: each append is a one-item `LogBatch` (a key-value put with a new key
/// under one region) written with `sync = true`; concurrent writers are grouped by its
/// own leader/follower write queue.
pub struct RaftEngine {
    engine: raft_engine::Engine,
    next: std::sync::atomic::AtomicU64,
}

impl RaftEngine {
    /// Opens (creates) a raft-engine in `dir`.
    pub fn open(dir: &Path) -> BenchResult<RaftEngine> {
        let cfg = raft_engine::Config {
            dir: dir.display().to_string(),
            ..Default::default()
        };
        let engine = raft_engine::Engine::open(cfg).map_err(|e| format!("raft-engine: {e}"))?;
        Ok(RaftEngine {
            engine,
            next: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// One durable append.
    pub fn append_sync(&self, payload: &[u8]) -> Result<(), String> {
        let k = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut b = raft_engine::LogBatch::default();
        b.put(1, k.to_be_bytes().to_vec(), payload.to_vec())
            .map_err(|e| format!("raft-engine: {e}"))?;
        self.engine
            .write(&mut b, true)
            .map(|_| ())
            .map_err(|e| format!("raft-engine: {e}"))
    }
}

/// Buffered appends, 100 B from one thread, no sync: aof2 (its W1 shape) against
/// commitlog 0.2 (`append_msg`; it has no durable append), alternating in slices.
pub fn buffered_row(ctx: &Ctx) -> BenchResult<Vec<Row>> {
    let aof = ctx.open()?;
    let mut log =
        commitlog::CommitLog::new(commitlog::LogOptions::new(ctx.root.join("commitlog")))?;
    let payload = [0x5au8; 100];
    let slice = ctx.duration() / ctx.rounds() as u32;
    // Records/s per round, each side: the row is the medians over rounds.
    let (mut r_ours, mut r_theirs) = (Vec::new(), Vec::new());
    alternate(
        ctx.rounds(),
        || {
            let start = Instant::now();
            let n = super::w1::append_for(&aof, &payload, slice)?;
            r_ours.push(n as f64 / start.elapsed().as_secs_f64());
            Ok(())
        },
        || {
            let (start, mut n) = (Instant::now(), 0u64);
            while start.elapsed() < slice {
                for _ in 0..1024 {
                    log.append_msg(payload)
                        .map_err(|e| format!("commitlog: {e:?}"))?;
                }
                n += 1024;
            }
            r_theirs.push(n as f64 / start.elapsed().as_secs_f64());
            Ok(())
        },
    )?;
    aof.flush()?;
    Ok(vec![rounds_row(
        "P1 buffered appends, 100 B, 1 thread",
        "records/s (not durable)",
        "rec/s",
        (&r_ours, &r_theirs),
        true,
        "commitlog 0.2: append_msg (NOT durable: it never syncs)",
    )])
}
