//! P1: this engine against the durable peers that build here, okaywal 0.3 (a
//! leader/follower write-ahead log whose first waiting thread writes and syncs itself),
//! walrus-rust 0.2, writeahead 0.4 and raft-engine 0.4, each through its own durable call, on the same
//! directory, all alternating in slices: one writer (append + sync latency), two
//! writers and 64 writers (durable records/s); and commitlog 0.2 in a buffered row
//! (it does not sync), marked so.
//!
//! The peers are compiled only with `--features peers` (the README's benchmark
//! command), into the tool: the library never depends on them.

use super::report::*;
use super::{rotate_indexed, BenchResult, Ctx};
use bop_rs::aof2::config::RetentionPolicy;
use bop_rs::aof2::Aof;
use hdrhistogram::Histogram;
use okaywal::{Entry, EntryId, LogManager, SegmentReader, WriteAheadLog};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Segment size of P1's log in recycled files (the default target; retention keeps
/// two of them): files reused, as okaywal's are (1 MiB, recycled once checkpointed).
/// Smaller segments roll often enough to show in p99.9 (4 MiB: one commit in 1,024).
const RECYCLED_SEGMENT: u64 = 16 << 20;

/// An okaywal log that keeps nothing at recovery and checkpoints nothing.
#[derive(Debug)]
struct Discard;

impl LogManager for Discard {
    fn recover(&mut self, _: &mut Entry<'_>) -> std::io::Result<()> {
        Ok(())
    }
    fn checkpoint_to(
        &mut self,
        _: EntryId,
        _: &mut SegmentReader,
        _: &WriteAheadLog,
    ) -> std::io::Result<()> {
        Ok(())
    }
}

/// okaywal opened in `dir`.
pub struct Okaywal(WriteAheadLog);

impl Okaywal {
    /// Opens (creates) an okaywal log in `dir`.
    pub fn open(dir: &Path) -> BenchResult<Okaywal> {
        Ok(Okaywal(WriteAheadLog::recover(dir, Discard)?))
    }

    /// Appends `payload` as one entry and commits it (durable when this returns).
    pub fn append_sync(&self, payload: &[u8]) -> BenchResult<()> {
        let mut w = self.0.begin_entry()?;
        w.write_chunk(payload)?;
        w.commit()?;
        Ok(())
    }
}

/// `threads` threads appending 4 KiB records durably for `slice`; records done.
fn threads_for(
    threads: usize,
    slice: Duration,
    one: Arc<dyn Fn() -> Result<(), String> + Send + Sync>,
) -> BenchResult<u64> {
    let stop = Arc::new(AtomicBool::new(false));
    let hs: Vec<_> = (0..threads)
        .map(|_| {
            let (stop, one) = (stop.clone(), one.clone());
            std::thread::spawn(move || -> Result<u64, String> {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    one()?;
                    n += 1;
                }
                Ok(n)
            })
        })
        .collect();
    std::thread::sleep(slice);
    stop.store(true, Ordering::Relaxed);
    let mut n = 0;
    for h in hs {
        n += h.join().map_err(|_| "a writer panicked")??;
    }
    Ok(n)
}

/// A peer engine durably appending 4 KiB records on this run's directory.
struct Peer {
    /// What the rows call it.
    name: &'static str,
    /// The one-writer latency rows' workload name, and their baselines' description.
    one_writer: &'static str,
    desc: &'static str,
    /// One durable append (returns once the peer says it is durable).
    one: One,
}

type One = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// One durable append of `payload` to `aof`: `append_record` + `flush_until`.
fn durable_append(aof: Arc<Aof>, payload: &Arc<Vec<u8>>) -> One {
    let payload = payload.clone();
    Arc::new(move || {
        let r = aof.append_record(&payload).map_err(|e| e.to_string())?;
        aof.flush_until(r).map_err(|e| e.to_string())
    })
}

/// The durable peers that build here (`--features peers`), opened in `root`.
fn peers(root: &Path, payload: &Arc<Vec<u8>>) -> BenchResult<Vec<Peer>> {
    let mut out = Vec::new();
    let wal = Arc::new(Okaywal::open(&root.join("okaywal"))?);
    let p = payload.clone();
    out.push(Peer {
        name: "okaywal 0.3",
        one_writer: "P1 one writer, 4 KiB append + sync",
        desc: "okaywal 0.3: 4 KiB entry + commit",
        one: Arc::new(move || wal.append_sync(&p).map_err(|e| e.to_string())),
    });
    let walrus = Arc::new(super::peers_more::Walrus::open(&root.join("walrus"))?);
    let p = payload.clone();
    out.push(Peer {
        name: "walrus-rust 0.2",
        one_writer: "P1 one writer vs walrus-rust 0.2",
        desc: "walrus-rust 0.2: append_for_topic, FsyncSchedule::SyncEach (O_SYNC)",
        one: Arc::new(move || walrus.append_sync(&p)),
    });
    let wa = Arc::new(super::peers_more::WriteAheadLog::open(
        &root.join("writeahead"),
    )?);
    let p = payload.clone();
    out.push(Peer {
        name: "writeahead 0.4",
        one_writer: "P1 one writer vs writeahead 0.4",
        desc: "writeahead 0.4: WriteHandle::write (durable when it resolves)",
        one: Arc::new(move || wa.append_sync(&p)),
    });
    let re = Arc::new(super::peers_more::RaftEngine::open(
        &root.join("raft-engine"),
    )?);
    let p = payload.clone();
    out.push(Peer {
        name: "raft-engine 0.4",
        one_writer: "P1 one writer vs raft-engine 0.4",
        desc: "raft-engine 0.4: one-put LogBatch, write(sync = true)",
        one: Arc::new(move || re.append_sync(&p)),
    });
    Ok(out)
}

/// P1: aof2 against every durable peer, one, two and 64 writers, all of them
/// interleaved in each round; and the buffered peer in a buffered row.
pub fn p1(ctx: &Ctx) -> BenchResult<Vec<Row>> {
    let aof = Arc::new(ctx.open()?);
    let payload = Arc::new(vec![0x6bu8; 4096]);
    let peers = peers(&ctx.root, &payload)?;
    let ours = durable_append(aof.clone(), &payload);
    // The same writer on a log of a manager that polls for completions (300 us).
    let polling = ctx.polling_manager(super::w2_poll::POLL_US)?;
    let polled = durable_append(Arc::new(ctx.open_on(&polling, |_| {})?), &payload);
    // The same writer on a log that keeps little, as okaywal's checkpointed log does:
    // its files are recycled rather than zero-written (warmed until two have been).
    let rec = Arc::new(ctx.open_on(&ctx.manager, |c| {
        c.segment_target_bytes = RECYCLED_SEGMENT;
        c.retention = RetentionPolicy::Size {
            max_total_bytes: 2 * RECYCLED_SEGMENT,
        };
    })?);
    let recycled = durable_append(rec.clone(), &payload);
    let warm = Instant::now();
    while rec.flush_metrics().segments_recycled < 2 && warm.elapsed() < Duration::from_secs(60) {
        for _ in 0..256 {
            recycled()?;
        }
    }
    if rec.flush_metrics().segments_recycled < 2 {
        log::warn!("P1: the log meant to run in recycled files recycled fewer than two in 60 s");
    }
    let all: Vec<One> = std::iter::once(ours)
        .chain(peers.iter().map(|p| p.one.clone()))
        .chain([recycled, polled])
        .collect();
    let recycled_at = all.len() - 2;
    let polled_at = all.len() - 1;
    // Warm every one up (segment files, caches).
    for one in &all {
        for _ in 0..100 {
            one()?;
        }
    }
    let per_round = if ctx.quick { 300 } else { 2000 };
    // Per contender, one histogram per round: every row is the median over rounds.
    let mut hists: Vec<Vec<Histogram<u64>>> = all.iter().map(|_| Vec::new()).collect();
    rotate_indexed(ctx.rounds(), all.len(), |i| {
        let mut h = hist();
        for _ in 0..per_round {
            let t = Instant::now();
            all[i]()?;
            h.record(t.elapsed().as_nanos() as u64)?;
        }
        hists[i].push(h);
        Ok(())
    })?;
    let pooled = |i: usize| pool(&hists[i]);
    let pair = |a: usize, b: usize| LatencyRounds {
        ours: hists[a].clone(),
        base: hists[b].clone(),
    };
    let t = "P1: one writer, 4 KiB append + durable wait, against the peers";
    super::plots::record_curve("latency_p1", t, "aof2", &pooled(0));
    let mut rows = Vec::new();
    for (i, p) in peers.iter().enumerate() {
        super::plots::record_curve("latency_p1", t, p.name, &pooled(i + 1));
        rows.extend(pair(0, i + 1).rows(p.one_writer, &P50_P99_P999, p.desc));
    }
    rows.extend(pair(recycled_at, 1).rows(
        "P1 one writer, recycled files (Size retention) vs okaywal 0.3",
        &P50_P99_P999,
        "okaywal 0.3: 4 KiB entry + commit",
    ));
    super::plots::record_curve("latency_p1", t, "aof2, polling 300 us", &pooled(polled_at));
    rows.extend(pair(polled_at, 1).rows(
        "P1 one writer, polling on (300 us) vs okaywal 0.3",
        &P50_P99_P999,
        "okaywal 0.3: 4 KiB entry + commit",
    ));
    let slice = ctx.duration() / ctx.rounds() as u32;
    // The polling log takes no part in the many-writer rows; the recycling one only in
    // the two writers' row against okaywal.
    let all = &all[..polled_at];
    for (threads, names) in [
        (
            2,
            [
                "P1 two writers, 4 KiB append + sync each",
                "P1 two writers vs walrus-rust 0.2",
                "P1 two writers vs writeahead 0.4",
                "P1 two writers vs raft-engine 0.4",
            ],
        ),
        (
            64,
            [
                "P1 64 writers, 4 KiB append + sync each",
                "P1 64 writers vs walrus-rust 0.2",
                "P1 64 writers vs writeahead 0.4",
                "P1 64 writers vs raft-engine 0.4",
            ],
        ),
    ] {
        let contenders = if threads == 2 {
            all
        } else {
            &all[..recycled_at]
        };
        // Per contender, records/s in each round.
        let mut rates: Vec<Vec<f64>> = contenders.iter().map(|_| Vec::new()).collect();
        rotate_indexed(ctx.rounds(), contenders.len(), |i| {
            let t = Instant::now();
            let n = threads_for(threads, slice, contenders[i].clone())?;
            rates[i].push(n as f64 / t.elapsed().as_secs_f64());
            Ok(())
        })?;
        for (i, p) in peers.iter().enumerate() {
            rows.push(rounds_row(
                names[i],
                "durable records/s",
                "rec/s",
                (&rates[0], &rates[i + 1]),
                true,
                p.desc,
            ));
        }
        if threads == 2 {
            rows.push(rounds_row(
                "P1 two writers, recycled files (Size retention)",
                "durable records/s",
                "rec/s",
                (&rates[recycled_at], &rates[1]),
                true,
                peers[0].desc,
            ));
        }
    }
    rows.extend(super::peers_more::buffered_row(ctx)?);
    Ok(rows)
}
