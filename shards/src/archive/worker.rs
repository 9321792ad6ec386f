//! The archive worker: threads of a manager (at the lowest CPU priority) that upload
//! the sealed segments of its logs and delete the archived copies of released ones,
//! never on a shard. Its queue holds each log at most once (a flag on the log); logs
//! of one manager upload in parallel, up to [`UPLOAD_THREADS`] at a time, one segment
//! per log at a time, oldest first.
//!
//! An upload reads the local file (pinned against reuse), checks it as `aof2 verify`
//! would (frames and chain), hashes it (SHA-256), creates the object without
//! overwriting, and writes the stub durably; only then does the log hear of it. A
//! failed step changes nothing locally; the log's next attempt waits a pause that
//! doubles from 1 s to 15 s. An object found under the key already (an earlier attempt
//! whose answer or stub was lost) counts if its checksum matches, and is an error
//! naming the key otherwise: an object is never overwritten.

use super::store::ArchiveBackend;
use super::upload::{Upload, Uploaded};
use crate::fs::Fs;
use crate::log::UploadJob;
use crate::log_queue::LogQueue;
use crate::log_shared::{ArchiveLink, LogShared};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Upload threads per manager: logs upload in parallel up to this many at a time.
pub const UPLOAD_THREADS: usize = 2;

/// The archive of a manager: its store and its upload threads.
pub struct Archiver {
    store: Arc<dyn ArchiveBackend>,
    queue: Arc<LogQueue>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl ArchiveLink for Archiver {
    fn queue(&self, log: Weak<LogShared>) {
        self.queue.push(log);
    }

    fn store(&self) -> Arc<dyn ArchiveBackend> {
        self.store.clone()
    }
}

impl Archiver {
    /// Starts the upload threads for `store`.
    pub fn start(store: Arc<dyn ArchiveBackend>) -> std::io::Result<Arc<Archiver>> {
        let queue = Arc::new(LogQueue::default());
        let mut threads = Vec::new();
        for i in 0..UPLOAD_THREADS {
            let (q, s) = (queue.clone(), store.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("aof2-archive-{i}"))
                    .spawn(move || run(&q, &*s))?,
            );
        }
        Ok(Arc::new(Archiver {
            store,
            queue,
            threads: Mutex::new(threads),
        }))
    }

    /// The store's description (no credential).
    pub fn describe(&self) -> String {
        self.store.describe()
    }

    /// Stops the threads (an upload in progress stops before its next step) and waits.
    pub fn stop(&self) {
        self.queue.stop();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Drop for Archiver {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(q: &LogQueue, store: &dyn ArchiveBackend) {
    crate::log_queue::background_priority(true);
    while let Some(weak) = q.next() {
        let Some(log) = weak.upgrade() else { continue };
        log.archive_dequeued();
        let fs = log.files.fs().clone();
        let delete = log.lock_core().next_archive_delete();
        if let Some((id, key, stub)) = delete {
            let r = delete_one(store, &*fs, &key, &stub);
            if let Err(e) = &r {
                log::warn!(
                    "aof2: deleting the archived copy {key} of released segment {id} from the {} \
                     failed: {e}; retried in 15 s",
                    store.describe()
                );
                q.retry(Instant::now() + Duration::from_secs(15), weak.clone());
            }
            log.lock_core().archive_delete_done(id, r.is_ok());
        }
        let job = log.lock_core().next_upload();
        if let Some(job) = job {
            let id = job.segment.header.segment_id;
            let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
                upload_one(q, &log, store, &*fs, &job)
            }));
            let outcome = r.unwrap_or_else(|p| {
                Err(format!(
                    "the upload panicked: {}",
                    crate::shard::panic_message(&*p)
                ))
            });
            let mut core = log.lock_core();
            match outcome {
                Ok(Some(bytes)) => core.upload_done(id, &job.key, bytes),
                Ok(None) => core.upload_stopped(id),
                Err(why) => {
                    core.upload_failed(id, why);
                    if let Some(at) = core.archive_retry_at() {
                        let wait = at.saturating_sub(core.clock_now());
                        q.retry(Instant::now() + Duration::from_nanos(wait), weak.clone());
                    }
                }
            }
        }
        // The shard drops local copies retention lets go, or finishes a close that
        // waited for this; more work queues the log again.
        log.wake_shard();
        if log.lock_core().archive_wanted() {
            log.wake_archiver();
        }
    }
}

/// Uploads one segment: `Ok(Some(object bytes))` once the store holds it and its stub
/// is durable, `Ok(None)` if it stopped (closing, or shutting down).
fn upload_one(
    q: &LogQueue,
    log: &Arc<LogShared>,
    store: &dyn ArchiveBackend,
    fs: &dyn Fs,
    job: &UploadJob,
) -> Result<Option<u64>, String> {
    let stop = || q.stopping() || log.lock_core().upload_should_stop();
    let mut up = Upload::new(job.clone());
    let r = loop {
        match up.step(fs, store, &stop) {
            Ok(Uploaded::More) => {}
            Ok(Uploaded::Done { bytes }) => return Ok(Some(bytes)),
            Ok(Uploaded::Stopped) => break Ok(None),
            Err(e) => break Err(e),
        }
    };
    up.clean_up(fs);
    r
}

/// Deletes a released segment's object, then its stub (so a crash between leaves a
/// stub below the mark, which the next open queues for deletion again).
fn delete_one(
    store: &dyn ArchiveBackend,
    fs: &dyn Fs,
    key: &str,
    stub: &std::path::Path,
) -> Result<(), String> {
    store
        .delete(key)
        .map_err(|e| format!("{}: {e}", store.describe()))?;
    match fs.unlink(stub) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("remove {}: {e}", stub.display())),
    }
    fs.fsync_dir(stub.parent().expect("in archive/"))
        .map_err(|e| format!("fsync directory of {}: {e}", stub.display()))
}
