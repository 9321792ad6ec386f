//! The compression worker: one thread per manager, at the lowest CPU priority (nice
//! 19), that swaps the sealed segments of `Compression::Zstd` logs to compressed files,
//! one segment at a time, never on a shard. Its queue holds each log at most once
//! (a flag on the log), so it stays as long as the number of logs however far the
//! worker lags; the lag itself is each log's backlog (sealed segments not compressed
//! yet, metrics `aof_compression_backlog_*`), which costs only disk: retention still
//! counts those raw files, and no writer ever waits for compression.
//!
//! A closing log stops its swap before the rename (its close waits for that); a failed
//! swap leaves the raw file and is retried after [`COMPRESS_RETRY_NS`]. A swap that
//! panics (a broken invariant) is abandoned: its temp file removed, the raw file kept
//! (and left raw for the rest of the session), the failure counted and logged; the
//! worker goes on with other logs, and the log's close does not wait for it.

use super::swap::{Stepped, Swap, SwapError};
use crate::log::{Swapped, COMPRESS_RETRY_NS};
use crate::log_queue::LogQueue;
use crate::log_shared::{CompressLink, LogShared};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The compression worker of a manager.
pub struct Compressor {
    queue: Arc<LogQueue>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl CompressLink for Compressor {
    fn queue(&self, log: Weak<LogShared>) {
        self.queue.push(log);
    }
}

impl Compressor {
    /// Starts the worker thread.
    pub fn start() -> std::io::Result<Arc<Compressor>> {
        let queue = Arc::new(LogQueue::default());
        let q = queue.clone();
        let thread = std::thread::Builder::new()
            .name("aof2-compress".into())
            .spawn(move || run(&q))?;
        Ok(Arc::new(Compressor {
            queue,
            thread: Mutex::new(Some(thread)),
        }))
    }

    /// Stops the worker (a swap in progress stops before its rename) and waits for it.
    pub fn stop(&self) {
        self.queue.stop();
        let t = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = t {
            let _ = t.join();
        }
    }
}

impl Drop for Compressor {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(q: &LogQueue) {
    crate::log_queue::background_priority(false);
    while let Some(weak) = q.next() {
        let Some(log) = weak.upgrade() else { continue };
        log.compression_dequeued();
        let job = log.lock_core().next_compression();
        let Some(job) = job else { continue };
        let id = job.segment;
        let fs = log.files.fs().clone();
        let mut swap = Some(Swap::new(job));
        // A panic in a swap (a broken invariant) abandons that segment's swap only:
        // its temp file goes, the raw file stays, and the worker goes on.
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
            swap_one(q, &log, &weak, &*fs, swap.as_mut().expect("a swap"))
        }));
        if let Err(p) = r {
            let cause = crate::shard::panic_message(&*p);
            if let Some(s) = swap.as_mut() {
                let _ = std::panic::catch_unwind(AssertUnwindSafe(|| s.clean_up(&*fs)));
            }
            log.lock_core().compression_abandoned(id, &cause);
        }
        drop(swap);
        // The shard removes the raw file, or finishes a close that waited for this.
        log.wake_shard();
        log.wake_compressor();
    }
}

/// Runs one swap to its end and tells the log's core how it ended.
fn swap_one(
    q: &LogQueue,
    log: &Arc<LogShared>,
    weak: &Weak<LogShared>,
    fs: &dyn crate::fs::Fs,
    swap: &mut Swap,
) {
    let stop = || q.stopping() || !log.lock_core().compression_continues();
    let outcome = loop {
        log.lock_core().check_compression_panic();
        match swap.step(fs, &stop) {
            Ok(Stepped::More) => {}
            other => break other,
        }
    };
    let id = swap.segment();
    match outcome {
        Ok(Stepped::Done { disk_bytes }) => {
            let swapped = log.lock_core().compression_done(id, disk_bytes);
            // New readers open the compressed file; the raw one's cached mapping (and
            // its pin) goes before its removal is planned, and is never cached again.
            log.forget_map(id);
            if swapped == Swapped::Released {
                remove_orphan(fs, swap.target());
            }
        }
        Ok(_) => {
            swap.clean_up(fs);
            log.lock_core().compression_stopped(id);
        }
        Err(SwapError { op, path, error }) => {
            swap.clean_up(fs);
            log.lock_core().compression_failed(id, op, &path, &error);
            let at = Instant::now() + Duration::from_nanos(COMPRESS_RETRY_NS);
            q.retry(at, weak.clone());
        }
    }
}

/// Removes the compressed file of a segment released while it was compressed.
fn remove_orphan(fs: &dyn crate::fs::Fs, path: &std::path::Path) {
    let r = fs
        .unlink(path)
        .and_then(|()| fs.fsync_dir(path.parent().expect("in the segment directory")));
    if let Err(e) = r {
        log::warn!(
            "aof2: removing {} (its segment was released) failed: {e}; the next open removes it",
            path.display()
        );
    }
}
