//! R2: follower wake-up, from an append + flush to a follower blocked in `next_blocking`.

use super::baseline::*;
use super::report::*;
use super::{alternate, BenchResult, Ctx};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// R2: from the call to `append_record` until a follower blocked in
/// `TailFollower::next_blocking` sees the record durable (the writer calls
/// `flush_until`).
pub fn r2(ctx: &Ctx) -> BenchResult<Vec<Row>> {
    use std::sync::{Condvar, Mutex};
    let n = if ctx.quick { 300 } else { 3000 };
    let aof = Arc::new(ctx.open()?);
    let payload = vec![0x11u8; 4096];
    let f = ctx.baseline_file("r2-baseline", 64 << 20)?;
    let block = AlignedBlock::new(4096);
    // One histogram per round, each side (the rows: medians over rounds).
    let mut lr = LatencyRounds::new();
    let (mut ours, mut base) = (Vec::new(), Vec::new());
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
            let mut h = hist();
            for _ in 0..per_round {
                let t0 = Instant::now();
                let rid = aof.append_record(&payload)?;
                aof.flush_until(rid)?;
                let t1 = wait_seen(rid.as_u64() + 1);
                h.record(t1.duration_since(t0).as_nanos().max(1) as u64)?;
            }
            ours.push(h);
            Ok(())
        },
        || {
            let mut h = hist();
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
                h.record(t1.duration_since(t0).as_nanos().max(1) as u64)?;
            }
            base.push(h);
            Ok(())
        },
    )?;
    stop.store(true, Ordering::Release);
    handoff.1.notify_all();
    waiter.join().map_err(|_| "baseline waiter panicked")?;
    aof.close()?;
    follower.join().map_err(|_| "follower panicked")?;
    let desc = "4 KiB pwrite + fdatasync, then a condvar hand-off to a waiting thread";
    let w = "R2 append -> follower wake-up (4 KiB + flush)";
    for (o, b) in ours.into_iter().zip(base) {
        lr.push(o, b);
    }
    Ok(lr.rows(w, &[("p50", 0.5), ("p99", 0.99)], desc))
}
