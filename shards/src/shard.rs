//! Shard threads. Each owns the logs placed on it and runs their I/O; callers only
//! copy into log buffers and, on a state change (a full buffer, a flush request, a
//! roll, a timer to arm), queue the log on its shard and wake the thread.
//!
//! Two ways to run the I/O, chosen at start:
//! - io_uring (`backend::uring`): the ring is created on this thread; chains run as
//!   linked groups and complete asynchronously, so one log's sync never holds up
//!   another's. The thread sleeps in `io_uring_enter`; other threads wake it through
//!   an eventfd the ring reads, written only when the shard said it is going to sleep.
//! - portable (`driver`): each chain runs to completion with blocking calls; the thread
//!   parks, and other threads unpark it (unpark tokens make that free of lost wake-ups).
//!
//! An idle shard waits with no timeout; a log with unflushed data and an interval set
//! gives it one deadline.

use crate::backend::ring::{ChainRunner, Completed};
use crate::backend::uring::{signal_eventfd, UringRing};
use crate::backend::FsLock;
use crate::buffer::BufferArena;
use crate::clock::Clock;
use crate::config::IoBackend;
use crate::driver::Driver;
use crate::log_handle::LogShared;
use std::cell::Cell;
use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::Duration;

thread_local! {
    static CURRENT_SHARD: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The shard whose thread this is, if any: blocking here would deadlock.
pub fn current_shard() -> Option<usize> {
    CURRENT_SHARD.with(|c| c.get())
}

/// A log handed to a shard.
pub struct Registration {
    /// The log.
    pub shared: Arc<LogShared>,
    /// Its files and backend.
    pub driver: Driver,
}

/// A request to flush and forget a log. The directory lock travels with it and is
/// released only once the log is drained, just before `ack`.
pub struct CloseRequest {
    /// The log.
    pub key: u64,
    /// Signalled once it is closed.
    pub ack: Sender<()>,
    /// Its writer lock, released just before `ack`.
    pub lock: Option<Box<dyn FsLock>>,
}

#[derive(Default)]
struct Inbox {
    add: Vec<Registration>,
    ready: Vec<u64>,
    close: Vec<CloseRequest>,
    shutdown: bool,
    /// The thread has exited: requests are answered on the spot.
    stopped: bool,
}

/// The part of a shard other threads talk to.
pub struct ShardCtl {
    /// The shard's index.
    pub id: usize,
    /// The CPU its thread is pinned to (`None`: not pinned).
    pub cpu: Option<usize>,
    inbox: Mutex<Inbox>,
    thread: OnceLock<Thread>,
    /// Logs placed here (for placement decisions).
    pub logs: AtomicUsize,
    /// Wakes a shard sleeping in its ring.
    efd: OwnedFd,
    /// The shard runs on io_uring (set before `Shard::start` returns).
    ring: AtomicBool,
    /// Ring mode: the shard is about to sleep, or sleeping, in the kernel.
    sleeping: AtomicBool,
    /// io_uring was wanted (`Auto`) but could not be set up: the portable backend runs.
    pub uring_fallback: AtomicBool,
    /// The shard's registered buffer arena, where the ring has one.
    pub arena: OnceLock<Arc<BufferArena>>,
    /// Writes the ring issued from the registered arena (`WRITE_FIXED`, `WRITEV_FIXED`).
    pub fixed_writes: Arc<AtomicU64>,
}

/// What a shard runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Running {
    /// io_uring.
    Uring {
        /// `SINGLE_ISSUER | DEFER_TASKRUN` were accepted.
        single_issuer: bool,
        /// The zero chunk is a registered buffer.
        registered: bool,
        /// Bytes of log buffers and blocks registered (0: none; memlock refused or
        /// `registered_buffer_bytes` is 0).
        registered_arena: usize,
    },
    /// The portable backend; `fallback` says why io_uring was not used, if it was wanted.
    Sync {
        /// The io_uring setup error, when `Auto` fell back.
        fallback: Option<String>,
    },
}

impl ShardCtl {
    fn with_inbox(&self, f: impl FnOnce(&mut Inbox)) {
        f(&mut self.inbox.lock().unwrap_or_else(|p| p.into_inner()));
        self.wake();
    }

    fn wake(&self) {
        if self.ring.load(Ordering::Acquire) {
            // Pairs with the shard's `sleeping` store then inbox check (both SeqCst):
            // either it sees our request, or we see it sleeping and write.
            if self.sleeping.swap(false, Ordering::SeqCst) {
                signal_eventfd(self.efd.as_raw_fd());
            }
        } else if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }

    /// Requests are queued for the thread.
    fn has_work(&self) -> bool {
        let i = self.inbox.lock().unwrap_or_else(|p| p.into_inner());
        !i.add.is_empty() || !i.ready.is_empty() || !i.close.is_empty() || i.shutdown
    }

    /// Queues log `key` for a step.
    pub fn ready(&self, key: u64) {
        self.with_inbox(|i| i.ready.push(key));
    }

    /// Hands a log to this shard.
    pub fn add(&self, r: Registration) {
        self.logs.fetch_add(1, Ordering::Relaxed);
        self.with_inbox(|i| i.add.push(r));
    }

    /// Asks the shard to flush a log, close its files, release its lock and forget it;
    /// `req.ack` is signalled when that is done.
    pub fn close(&self, req: CloseRequest) {
        self.with_inbox(|i| {
            if i.stopped {
                drop(req.lock);
                let _ = req.ack.send(());
            } else {
                i.close.push(req);
            }
        });
    }
}

/// A running shard thread.
pub struct Shard {
    /// How other threads reach it.
    pub ctl: Arc<ShardCtl>,
    /// What it runs on.
    pub running: Running,
    thread: Option<JoinHandle<()>>,
}

impl Shard {
    /// Starts shard `id`, pinned to `cpu` if given, on `backend` (already resolved from
    /// the environment). `Uring` fails if no ring can be set up; `Auto` falls back. On
    /// io_uring, `arena_buffers` log buffers are registered with the ring where memlock
    /// allows.
    pub fn start(
        id: usize,
        cpu: Option<usize>,
        clock: Clock,
        backend: IoBackend,
        arena_buffers: u32,
    ) -> std::io::Result<Shard> {
        // SAFETY: plain syscall; the result is checked before being owned.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if efd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let ctl = Arc::new(ShardCtl {
            id,
            cpu,
            inbox: Mutex::new(Inbox::default()),
            thread: OnceLock::new(),
            logs: AtomicUsize::new(0),
            // SAFETY: `efd` is a fresh descriptor nothing else owns.
            efd: unsafe { OwnedFd::from_raw_fd(efd) },
            ring: AtomicBool::new(false),
            sleeping: AtomicBool::new(false),
            uring_fallback: AtomicBool::new(false),
            arena: OnceLock::new(),
            fixed_writes: Arc::default(),
        });
        let c = ctl.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("aof2-shard-{id}"))
            .spawn(move || {
                pin(&c, cpu);
                let io = match backend {
                    IoBackend::Sync => Io::Sync,
                    _ => match UringRing::new(c.efd.as_raw_fd(), arena_buffers) {
                        Ok(mut ring) => {
                            ring.count_fixed_writes(c.fixed_writes.clone());
                            if let Some(a) = ring.arena() {
                                let _ = c.arena.set(a);
                            }
                            c.ring.store(true, Ordering::Release);
                            Io::Uring {
                                ring: Box::new(ring),
                                runner: ChainRunner::new(),
                            }
                        }
                        Err(e) if backend == IoBackend::Uring => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                        Err(e) => {
                            c.uring_fallback.store(true, Ordering::Release);
                            let _ = tx.send(Ok(Running::Sync {
                                fallback: Some(format!("io_uring_setup failed: {e}")),
                            }));
                            run(c, Io::Sync, clock);
                            return;
                        }
                    },
                };
                let running = match &io {
                    Io::Sync => Running::Sync { fallback: None },
                    Io::Uring { ring, .. } => Running::Uring {
                        single_issuer: ring.setup().single_issuer,
                        registered: ring.setup().registered_zeros,
                        registered_arena: ring.setup().registered_arena,
                    },
                };
                let _ = tx.send(Ok(running));
                run(c, io, clock);
            })?;
        let _ = ctl.thread.set(thread.thread().clone());
        let running = match rx.recv() {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => {
                let _ = thread.join();
                return Err(std::io::Error::other("the shard thread exited at start"));
            }
        };
        thread.thread().unpark();
        Ok(Shard {
            ctl,
            running,
            thread: Some(thread),
        })
    }

    /// Flushes and closes every log on the shard, then stops its thread.
    pub fn shutdown(&mut self) {
        self.ctl.with_inbox(|i| i.shutdown = true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Shard {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct Entry {
    shared: Arc<LogShared>,
    driver: Driver,
    /// Poll the core on the next round.
    active: bool,
    /// Publish the durable position after this round's completions.
    publish: bool,
    deadline: Option<u64>,
}

/// How the thread runs I/O.
enum Io {
    /// Blocking calls, one chain at a time.
    Sync,
    /// io_uring (boxed: the ring is large and there is one per thread).
    Uring {
        ring: Box<UringRing>,
        runner: ChainRunner,
    },
}

/// Forgets a drained log: closes its files and tells its waiters it ended.
fn retire(ctl: &ShardCtl, mut e: Entry) {
    e.driver.close_all();
    let durable = e.shared.lock_core().durable_pos();
    e.shared.signal.publish(durable, true);
    ctl.logs.fetch_sub(1, Ordering::Relaxed);
}

fn pin(ctl: &ShardCtl, cpu: Option<usize>) {
    CURRENT_SHARD.with(|c| c.set(Some(ctl.id)));
    if let Some(cpu) = cpu {
        if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
            log::warn!(
                "aof2: could not pin shard {} to CPU {cpu}; it runs unpinned",
                ctl.id
            );
        }
    }
}

/// Reports completions to their cores; returns true if there were any.
fn apply(logs: &mut HashMap<u64, Entry>, done: &mut Vec<Completed>) -> bool {
    if done.is_empty() {
        return false;
    }
    for c in done.drain(..) {
        if let Some(e) = logs.get_mut(&c.log) {
            let p = e.shared.lock_core().complete(c.op, c.res);
            e.active = true;
            e.publish |= p.wake_waiters;
        }
    }
    for e in logs.values_mut() {
        if e.active {
            let core = e.shared.lock_core();
            e.deadline = core.deadline();
            let (durable, poisoned) = (core.durable_pos(), core.poison().is_some());
            drop(core);
            if std::mem::take(&mut e.publish) {
                e.shared.signal.publish(durable, poisoned);
            }
        }
    }
    true
}

fn run(ctl: Arc<ShardCtl>, mut io: Io, clock: Clock) {
    let mut logs: HashMap<u64, Entry> = HashMap::new();
    let mut closing: Vec<CloseRequest> = Vec::new();
    let mut shutting_down = false;
    let mut done: Vec<Completed> = Vec::new();
    let mut cqes = Vec::new();
    loop {
        let inbox = std::mem::take(&mut *ctl.inbox.lock().unwrap_or_else(|p| p.into_inner()));
        for r in inbox.add {
            let key = r.shared.key;
            logs.insert(
                key,
                Entry {
                    shared: r.shared,
                    driver: r.driver,
                    active: true,
                    publish: false,
                    deadline: None,
                },
            );
        }
        for k in inbox.ready {
            if let Some(e) = logs.get_mut(&k) {
                e.active = true;
            }
        }
        for req in inbox.close {
            match logs.get_mut(&req.key) {
                Some(e) => {
                    e.shared.lock_core().begin_close();
                    e.active = true;
                    closing.push(req);
                }
                None => {
                    drop(req.lock);
                    let _ = req.ack.send(());
                }
            }
        }
        if inbox.shutdown && !shutting_down {
            shutting_down = true;
            for e in logs.values_mut() {
                e.shared.lock_core().begin_close();
                e.active = true;
            }
        }

        // Poll every log with something to do, and start what it asks for.
        let now = clock.monotonic_ns();
        for (&key, e) in logs.iter_mut() {
            if e.active || e.deadline.is_some_and(|d| d <= now) {
                // Requests arriving from here on queue the log again.
                e.shared.clear_queued();
                e.active = false;
                let chains = e.shared.lock_core().poll(now);
                e.deadline = e.shared.lock_core().deadline();
                for c in chains {
                    match &mut io {
                        Io::Sync => done.extend(
                            e.driver
                                .run_chain(c)
                                .into_iter()
                                .map(|(op, res)| Completed { log: key, op, res }),
                        ),
                        Io::Uring { ring, runner } => {
                            runner.start(key, c, &mut e.driver, &mut **ring, &mut done)
                        }
                    }
                }
            }
        }
        apply(&mut logs, &mut done);

        let in_flight = |io: &Io, k: u64| match io {
            Io::Sync => false,
            Io::Uring { runner, .. } => runner.has_chains(k),
        };
        let mut i = 0;
        while i < closing.len() {
            let k = closing[i].key;
            if logs
                .get(&k)
                .is_none_or(|e| !in_flight(&io, k) && e.shared.lock_core().is_drained())
            {
                let req = closing.swap_remove(i);
                if let Some(e) = logs.remove(&k) {
                    retire(&ctl, e);
                }
                drop(req.lock);
                let _ = req.ack.send(());
            } else {
                i += 1;
            }
        }
        if shutting_down {
            let keys: Vec<u64> = logs
                .iter()
                .filter(|(k, e)| !in_flight(&io, **k) && e.shared.lock_core().is_drained())
                .map(|(k, _)| *k)
                .collect();
            for k in keys {
                retire(&ctl, logs.remove(&k).expect("listed"));
            }
            if logs.is_empty() {
                let mut inbox = ctl.inbox.lock().unwrap_or_else(|p| p.into_inner());
                inbox.stopped = true;
                closing.append(&mut inbox.close);
                for req in closing.drain(..) {
                    drop(req.lock);
                    let _ = req.ack.send(());
                }
                return;
            }
        }

        let busy = logs.values().any(|e| e.active);
        let mut next: Option<u64> = logs.values().filter_map(|e| e.deadline).min();
        if !busy && (!closing.is_empty() || shutting_down) {
            // Draining logs always have work; this only guards against a stall.
            let guard = clock.monotonic_ns() + 10_000_000;
            next = Some(next.map_or(guard, |n| n.min(guard)));
        }
        match &mut io {
            Io::Sync => {
                if !busy {
                    match next {
                        Some(d) => {
                            let now = clock.monotonic_ns();
                            if d > now {
                                std::thread::park_timeout(Duration::from_nanos(d - now));
                            }
                        }
                        None => std::thread::park(),
                    }
                }
            }
            Io::Uring { ring, runner } => {
                let now = clock.monotonic_ns();
                if let Err(e) = ring.wait(
                    now,
                    next,
                    !busy,
                    &ctl.sleeping,
                    || ctl.has_work(),
                    &mut cqes,
                ) {
                    // io_uring_enter itself failed (not an I/O): nothing is lost, the
                    // operations stay in flight; do not spin on it.
                    log::error!("aof2: shard {}: io_uring_enter failed: {e}", ctl.id);
                    std::thread::sleep(Duration::from_millis(1));
                }
                for (token, res) in cqes.drain(..) {
                    let Some(k) = runner.log_of(token) else {
                        continue;
                    };
                    if let Some(e) = logs.get_mut(&k) {
                        runner.complete(token, res, &mut e.driver, &mut **ring, &mut done);
                    }
                }
                apply(&mut logs, &mut done);
            }
        }
    }
}
