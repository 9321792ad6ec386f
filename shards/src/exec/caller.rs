//! Committing on the caller's own thread (`CommitMode::Caller`): a thread that waits
//! for durability and holds its log's data-chain slot runs the commit chain itself,
//! with no hand-off to the shard and back.
//!
//! - By default the caller makes the system calls itself (one `pwritev2(RWF_DSYNC)`, or
//!   `pwritev` and `fdatasync`), on either backend: a blocked thread is woken by the
//!   disk's completion directly, where an `RWF_DSYNC` write on io_uring runs on a
//!   kernel worker that must be woken first.
//! - With polling on (`completion_poll_us`) and the shards on io_uring, the caller
//!   submits through a small ring of its own instead (8 entries, single issuer, no
//!   registered buffers, no wake-up eventfd) and polls its completion queue: created
//!   the first time the thread commits and dropped when the thread exits. At most
//!   `caller_rings` threads of a manager get one; a thread past the bound, or whose
//!   ring cannot be set up (memlock before Linux 5.12, a descriptor limit), commits
//!   through the shard instead: never an error.

use super::blocking::run_chain;
use super::files::LogFiles;
use super::uring::{OpCounts, UringRing};
use super::{Completed, Executor, Host, RingExecutor};
use crate::config::UringFeature;
use crate::log::ops::Chain;
use std::cell::RefCell;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Submission queue entries of a caller's ring: a commit is one or two linked entries.
const CALLER_RING_ENTRIES: u32 = 8;

/// The caller rings of one manager: how many may exist and how they are set up.
pub struct CallerRings {
    limit: usize,
    disable: Vec<UringFeature>,
    /// How long a caller polls its ring before it sleeps (`completion_poll_us`).
    poll: std::time::Duration,
    live: AtomicUsize,
    /// Operations and `io_uring_enter` calls of every caller ring of the manager.
    counts: Arc<OpCounts>,
}

impl CallerRings {
    /// At most `limit` caller rings, using none of `disable` (the shards' list).
    pub fn new(
        limit: usize,
        disable: &[UringFeature],
        poll: std::time::Duration,
    ) -> Arc<CallerRings> {
        let mut disable = disable.to_vec();
        // Registered buffers would pin memory per thread: a caller's writes come from
        // the log's buffers, which its shard's ring registered, not this one.
        disable.push(UringFeature::RegisteredBuffers);
        Arc::new(CallerRings {
            limit,
            disable,
            poll,
            live: AtomicUsize::new(0),
            counts: Arc::default(),
        })
    }

    /// Caller rings alive now.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// What the caller rings submitted, and their `io_uring_enter` calls.
    pub fn counts(&self) -> &OpCounts {
        &self.counts
    }

    /// Runs `f` with this thread's ring, creating it if the bound allows; `None` when
    /// the thread has none (past the bound, or its setup failed).
    pub fn with_ring<R>(self: &Arc<Self>, f: impl FnOnce(Option<&mut CallerRing>) -> R) -> R {
        RING.with(|cell| {
            let mut slot = cell.borrow_mut();
            if matches!(*slot, Thread::Untried) {
                *slot = self.create();
            }
            if matches!(&*slot, Thread::Ready(r) if r.broken) {
                // Its failure poisoned the log it was committing; this thread now
                // commits through the shard.
                *slot = Thread::Unavailable;
            }
            match &mut *slot {
                Thread::Ready(r) => {
                    // The thread's ring may have been made by another manager.
                    r.exec.ring_mut().set_poll(self.poll);
                    f(Some(r))
                }
                _ => f(None),
            }
        })
    }

    fn create(self: &Arc<Self>) -> Thread {
        if self.live.fetch_add(1, Ordering::AcqRel) >= self.limit {
            self.live.fetch_sub(1, Ordering::AcqRel);
            log::debug!(
                "aof2: {} caller rings already: this thread commits through its shard",
                self.limit
            );
            return Thread::Unavailable;
        }
        match UringRing::with_entries(-1, 0, &self.disable, CALLER_RING_ENTRIES) {
            Ok(mut ring) => {
                ring.set_wait_all(true);
                ring.count_ops(self.counts.clone());
                Thread::Ready(Box::new(CallerRing {
                    exec: RingExecutor::new(ring),
                    rings: self.clone(),
                    broken: false,
                }))
            }
            Err(e) => {
                self.live.fetch_sub(1, Ordering::AcqRel);
                log::info!(
                    "aof2: no io_uring ring for this thread ({e}): it commits through its shard"
                );
                Thread::Unavailable
            }
        }
    }
}

/// A thread's commit ring.
pub struct CallerRing {
    exec: RingExecutor<UringRing>,
    rings: Arc<CallerRings>,
    /// The ring failed beyond repair: it is dropped before the thread commits again.
    broken: bool,
}

impl Drop for CallerRing {
    fn drop(&mut self) {
        self.rings.live.fetch_sub(1, Ordering::AcqRel);
    }
}

enum Thread {
    Untried,
    Ready(Box<CallerRing>),
    /// Past the bound, or the setup failed: this thread uses the shard.
    Unavailable,
}

thread_local! {
    static RING: RefCell<Thread> = const { RefCell::new(Thread::Untried) };
}

/// A caller's thread sleeps only in its own ring, waiting for its own chain.
struct OwnThread;

impl Host for OwnThread {
    fn may_sleep(&self) -> bool {
        true
    }
    fn awake(&self) {}
    fn park(&self, timeout: Option<Duration>) {
        // Ring executors sleep in the kernel; nothing parks a caller.
        if let Some(t) = timeout {
            std::thread::sleep(t);
        }
    }
}

/// How a committing caller runs its chain.
pub enum CallerExec<'a> {
    /// Blocking system calls on this thread (the portable executor's way).
    Blocking,
    /// This thread's own ring.
    Ring(&'a mut CallerRing),
}

/// Runs `chain` of log `log` (files `files`) to its end on the calling thread and
/// returns every operation's outcome, for [`crate::log_shared::DataSlot::finish`]. If
/// the thread's ring fails beyond repair, the operations it did not complete are
/// reported failed (the log is poisoned: their outcome is unknown).
pub fn run_commit(
    exec: CallerExec<'_>,
    log: u64,
    chain: Chain,
    files: &Arc<LogFiles>,
) -> Vec<(u64, io::Result<()>)> {
    let ring = match exec {
        CallerExec::Blocking => return run_chain(files, chain),
        CallerExec::Ring(r) => r,
    };
    let ids: Vec<u64> = chain.ops.iter().map(|o| o.id).collect();
    let mut done: Vec<Completed> = Vec::with_capacity(ids.len());
    ring.exec.start(log, chain, files, &mut done);
    while ring.exec.has_chains(log) {
        if let Err(e) = ring.exec.progress(0, None, true, &OwnThread, &mut done) {
            log::error!("aof2: a caller's ring failed: {e}");
            ring.broken = true;
            let mut out: Vec<(u64, io::Result<()>)> =
                done.into_iter().map(|c| (c.op, c.res)).collect();
            for id in ids {
                if !out.iter().any(|(o, _)| *o == id) {
                    out.push((id, Err(io::Error::other(e.clone()))));
                }
            }
            return out;
        }
    }
    done.into_iter().map(|c| (c.op, c.res)).collect()
}
