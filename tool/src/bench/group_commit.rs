//! A textbook threaded group commit, W3's baseline for what writer threads cost on
//! their own: each writer queues its 4 KiB record under one mutex; the first to find no
//! commit in flight leads, writes everything queued as one `pwrite` at the file's next
//! offset and `fdatasync`s it, then wakes every waiter (`notify_all`). No log, no
//! checksums, no segments: the gap between this and one thread writing 64 records per
//! sync is what 64 threads taking turns cost on this machine.

use super::baseline::{fdatasync, AlignedBlock, PrewrittenFile};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

const RECORD: usize = 4096;

struct Queue {
    /// Records queued for the next commit, back to back.
    pending: Vec<u8>,
    /// Records queued so far; a writer's record is durable once `durable` reaches its
    /// number.
    queued: u64,
    durable: u64,
    leading: bool,
    /// Where the next commit writes (wraps within the file).
    offset: u64,
    failed: Option<String>,
}

struct Shared<'a> {
    queue: Mutex<Queue>,
    cv: Condvar,
    file: &'a PrewrittenFile,
}

/// Runs `writers` threads for `slice`, each queueing 4 KiB records into `file` and
/// waiting until a commit covers each; returns durable records per second.
pub fn run(file: &PrewrittenFile, writers: usize, slice: Duration) -> std::io::Result<f64> {
    assert!(
        file.size > (writers * RECORD) as u64,
        "the file holds a commit"
    );
    let shared = Shared {
        queue: Mutex::new(Queue {
            pending: Vec::with_capacity(writers * RECORD),
            queued: 0,
            durable: 0,
            leading: false,
            offset: 0,
            failed: None,
        }),
        cv: Condvar::new(),
        file,
    };
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let threads: Vec<_> = (0..writers)
            .map(|_| scope.spawn(|| writer(&shared, &stop, writers)))
            .collect();
        let start = Instant::now();
        std::thread::sleep(slice);
        stop.store(true, Ordering::Relaxed);
        let mut records = 0;
        for t in threads {
            records += t
                .join()
                .map_err(|_| std::io::Error::other("writer panicked"))??;
        }
        Ok(records as f64 / start.elapsed().as_secs_f64())
    })
}

/// One writer: queue a record, then lead a commit or wait for one, until `stop`.
fn writer(s: &Shared<'_>, stop: &AtomicBool, writers: usize) -> std::io::Result<u64> {
    let record = vec![0x33u8; RECORD];
    let mut out = AlignedBlock::new(writers * RECORD);
    let mut done = 0;
    while !stop.load(Ordering::Relaxed) {
        let mut q = s.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.pending.extend_from_slice(&record);
        q.queued += 1;
        let mine = q.queued;
        while q.durable < mine {
            if let Some(e) = &q.failed {
                return Err(std::io::Error::other(e.clone()));
            }
            if q.leading {
                q = s.cv.wait(q).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            q.leading = true;
            let bytes = out.copy_in(&q.pending);
            q.pending.clear();
            let (upto, at) = (q.queued, q.offset);
            let room = s.file.size - (writers * RECORD) as u64;
            q.offset = (at + bytes.len() as u64) % room;
            drop(q);
            let res = s
                .file
                .file
                .write_all_at(bytes, at)
                .and_then(|()| fdatasync(&s.file.file));
            q = s.queue.lock().unwrap_or_else(|p| p.into_inner());
            q.leading = false;
            match res {
                Ok(()) => q.durable = upto,
                Err(e) => q.failed = Some(e.to_string()),
            }
            s.cv.notify_all();
        }
        drop(q);
        done += 1;
    }
    Ok(done)
}
