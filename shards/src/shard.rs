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
//!
//! **A failing shard never hangs anyone.** A panic on the thread (a broken invariant)
//! or a ring that fails beyond repair (lost completions) poisons every log on the shard
//! with an error naming the shard and the cause, releases all their waiters, answers
//! every close, and stops taking requests (later ones are answered on the spot); new
//! logs go to the other shards.

use crate::backend::ring::{ChainRunner, Completed};
use crate::backend::uring::{signal_eventfd, OpCounts, RingSetup, UringRing};
use crate::backend::FsLock;
use crate::buffer::BufferArena;
use crate::clock::Clock;
use crate::config::{IoBackend, UringFeature};
use crate::driver::Driver;
use crate::error::AofError;
use crate::log_handle::LogShared;
use std::cell::Cell;
use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::panic::AssertUnwindSafe;
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

impl CloseRequest {
    /// Releases the lock, then tells the closer.
    fn answer(self) {
        drop(self.lock);
        let _ = self.ack.send(());
    }
}

#[derive(Default)]
struct Inbox {
    add: Vec<Registration>,
    ready: Vec<u64>,
    close: Vec<CloseRequest>,
    shutdown: bool,
    /// The thread has exited (shut down or failed): requests are answered on the spot.
    stopped: bool,
}

/// A fault a test injects into a shard's loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardFault {
    /// The loop stops for this long at its next turn (so callers pile up waiting).
    Pause(Duration),
    /// The loop panics at its next turn, as a broken invariant would.
    Panic,
    /// The ring reports a completion the kernel dropped (a CQ overflow beyond
    /// `IORING_FEAT_NODROP`); on the portable backend, an executor failure alike.
    LostCompletion,
}

const FAULT_PANIC: u64 = 1;
const FAULT_LOST: u64 = 2;

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
    /// Operations the ring submitted, by opcode.
    pub ring_ops: Arc<OpCounts>,
    /// Why the shard failed (a panic message or a ring failure), once it has.
    failed: OnceLock<String>,
    /// Injected faults (test hooks): `FAULT_*` bits, and a pause in ns.
    faults: AtomicU64,
    pause_ns: AtomicU64,
}

/// What a shard runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Running {
    /// io_uring, set up as described.
    Uring(RingSetup),
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
        !i.add.is_empty()
            || !i.ready.is_empty()
            || !i.close.is_empty()
            || i.shutdown
            || self.faults.load(Ordering::SeqCst) != 0
            || self.pause_ns.load(Ordering::SeqCst) != 0
    }

    /// Why the shard failed, if it has.
    pub fn failure(&self) -> Option<&str> {
        self.failed.get().map(String::as_str)
    }

    /// The error of a log that cannot be placed here any more.
    fn refusal(&self) -> AofError {
        match self.failure() {
            Some(cause) => AofError::ShardFailed {
                shard: self.id,
                cause: cause.to_string(),
            },
            None => AofError::Startup("the AOF manager has shut down".into()),
        }
    }

    /// Queues log `key` for a step.
    pub fn ready(&self, key: u64) {
        self.with_inbox(|i| i.ready.push(key));
    }

    /// Hands a log to this shard; refused (with the log not taken) once the shard has
    /// stopped or failed.
    pub fn add(&self, r: Registration) -> Result<(), AofError> {
        let mut refused = None;
        self.with_inbox(|i| {
            if i.stopped {
                refused = Some(r);
            } else {
                self.logs.fetch_add(1, Ordering::Relaxed);
                i.add.push(r);
            }
        });
        match refused {
            Some(_) => Err(self.refusal()),
            None => Ok(()),
        }
    }

    /// Asks the shard to flush a log, close its files, release its lock and forget it;
    /// `req.ack` is signalled when that is done (at once if the shard has stopped).
    pub fn close(&self, req: CloseRequest) {
        self.with_inbox(|i| {
            if i.stopped {
                req.answer();
            } else {
                i.close.push(req);
            }
        });
    }

    /// Test hook: injects `fault` into the shard's loop at its next turn.
    pub fn inject(&self, fault: ShardFault) {
        self.with_inbox(|_| match fault {
            ShardFault::Pause(d) => self
                .pause_ns
                .store(d.as_nanos().max(1) as u64, Ordering::SeqCst),
            ShardFault::Panic => {
                self.faults.fetch_or(FAULT_PANIC, Ordering::SeqCst);
            }
            ShardFault::LostCompletion => {
                self.faults.fetch_or(FAULT_LOST, Ordering::SeqCst);
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
    /// allows, and no feature in `disable` is used.
    pub fn start(
        id: usize,
        cpu: Option<usize>,
        clock: Clock,
        backend: IoBackend,
        arena_buffers: u32,
        disable: &[UringFeature],
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
            ring_ops: Arc::default(),
            failed: OnceLock::new(),
            faults: AtomicU64::new(0),
            pause_ns: AtomicU64::new(0),
        });
        let c = ctl.clone();
        let disable = disable.to_vec();
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("aof2-shard-{id}"))
            .spawn(move || {
                pin(&c, cpu);
                // The ring is created here, and lives and dies on this thread.
                let io = match backend {
                    IoBackend::Sync => Io::Sync,
                    _ => match UringRing::new(c.efd.as_raw_fd(), arena_buffers, &disable) {
                        Ok(mut ring) => {
                            ring.count_ops(c.ring_ops.clone());
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
                            ShardLoop::new(c, Io::Sync, clock).run_to_end();
                            return;
                        }
                    },
                };
                let running = match &io {
                    Io::Sync => Running::Sync { fallback: None },
                    Io::Uring { ring, .. } => Running::Uring(ring.setup()),
                };
                let _ = tx.send(Ok(running));
                ShardLoop::new(c, io, clock).run_to_end();
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

/// Poisons a log with the shard's failure and releases every waiter on it.
fn poison(shared: &LogShared, cause: AofError) {
    let mut core = shared.lock_core();
    core.poison_with(cause);
    let durable = core.durable_pos();
    drop(core);
    shared.signal.publish(durable, true);
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

/// The text of a panic's payload.
fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    match (p.downcast_ref::<&str>(), p.downcast_ref::<String>()) {
        (Some(s), _) => format!("panicked: {s}"),
        (_, Some(s)) => format!("panicked: {s}"),
        _ => "panicked".to_string(),
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

/// The state of a shard thread's loop. It lives outside the loop's unwind boundary, so
/// after a panic the logs it held can still be poisoned and their waiters released.
struct ShardLoop {
    ctl: Arc<ShardCtl>,
    io: Io,
    clock: Clock,
    logs: HashMap<u64, Entry>,
    closing: Vec<CloseRequest>,
    shutting_down: bool,
    done: Vec<Completed>,
    cqes: Vec<(u64, std::io::Result<()>)>,
}

impl ShardLoop {
    fn new(ctl: Arc<ShardCtl>, io: Io, clock: Clock) -> ShardLoop {
        ShardLoop {
            ctl,
            io,
            clock,
            logs: HashMap::new(),
            closing: Vec::new(),
            shutting_down: false,
            done: Vec::new(),
            cqes: Vec::new(),
        }
    }

    /// Runs until shutdown, or until the shard fails; then fails it cleanly.
    fn run_to_end(mut self) {
        let cause = match std::panic::catch_unwind(AssertUnwindSafe(|| self.run())) {
            Ok(Ok(())) => return,
            Ok(Err(cause)) => cause,
            Err(p) => panic_message(&*p),
        };
        self.fail(cause);
        // Dropping `self` drops the ring, which waits (bounded) for the kernel to finish
        // with its memory: the waiters were released first.
    }

    /// The shard cannot go on: poison every log on it (and every log on its way to it),
    /// answer every close, and answer later requests on the spot.
    fn fail(&mut self, cause: String) {
        let id = self.ctl.id;
        log::error!("aof2: shard thread {id} failed: {cause}; every log on it is poisoned");
        let _ = self.ctl.failed.set(cause.clone());
        let err = || AofError::ShardFailed {
            shard: id,
            cause: cause.clone(),
        };
        let inbox = {
            let mut i = self.ctl.inbox.lock().unwrap_or_else(|p| p.into_inner());
            let queued = std::mem::take(&mut *i);
            i.stopped = true;
            queued
        };
        for r in inbox.add {
            poison(&r.shared, err());
        }
        for e in self.logs.values() {
            poison(&e.shared, err());
        }
        for req in self.closing.drain(..).chain(inbox.close) {
            req.answer();
        }
    }

    /// Faults a test injected.
    fn injected(&mut self) -> Result<(), String> {
        let pause = self.ctl.pause_ns.swap(0, Ordering::SeqCst);
        if pause > 0 {
            std::thread::sleep(Duration::from_nanos(pause));
        }
        let f = self.ctl.faults.swap(0, Ordering::SeqCst);
        if f & FAULT_PANIC != 0 {
            panic!(
                "a panic injected into shard thread {} (test hook)",
                self.ctl.id
            );
        }
        if f & FAULT_LOST != 0 {
            match &mut self.io {
                Io::Uring { ring, .. } => ring.inject_lost_completion(),
                Io::Sync => return Err("an executor failure injected (test hook)".into()),
            }
        }
        Ok(())
    }

    /// Takes what other threads queued: new logs, logs to poll, closes, shutdown.
    fn take_inbox(&mut self) {
        let inbox = std::mem::take(&mut *self.ctl.inbox.lock().unwrap_or_else(|p| p.into_inner()));
        for r in inbox.add {
            let key = r.shared.key;
            self.logs.insert(
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
            if let Some(e) = self.logs.get_mut(&k) {
                e.active = true;
            }
        }
        for req in inbox.close {
            match self.logs.get_mut(&req.key) {
                Some(e) => {
                    e.shared.lock_core().begin_close();
                    e.active = true;
                    self.closing.push(req);
                }
                None => req.answer(),
            }
        }
        if inbox.shutdown && !self.shutting_down {
            self.shutting_down = true;
            for e in self.logs.values_mut() {
                e.shared.lock_core().begin_close();
                e.active = true;
            }
        }
    }

    /// Polls every log with something to do, and starts what it asks for.
    fn poll_logs(&mut self) {
        let now = self.clock.monotonic_ns();
        for (&key, e) in self.logs.iter_mut() {
            if e.active || e.deadline.is_some_and(|d| d <= now) {
                // Requests arriving from here on queue the log again.
                e.shared.clear_queued();
                e.active = false;
                let chains = e.shared.lock_core().poll(now);
                e.deadline = e.shared.lock_core().deadline();
                for c in chains {
                    match &mut self.io {
                        Io::Sync => self.done.extend(
                            e.driver
                                .run_chain(c)
                                .into_iter()
                                .map(|(op, res)| Completed { log: key, op, res }),
                        ),
                        Io::Uring { ring, runner } => {
                            runner.start(key, c, &mut e.driver, &mut **ring, &mut self.done)
                        }
                    }
                }
            }
        }
        apply(&mut self.logs, &mut self.done);
    }

    fn in_flight(&self, k: u64) -> bool {
        match &self.io {
            Io::Sync => false,
            Io::Uring { runner, .. } => runner.has_chains(k),
        }
    }

    /// Retires the closing logs that are drained; true when shutdown is complete.
    fn retire_drained(&mut self) -> bool {
        let mut i = 0;
        while i < self.closing.len() {
            let k = self.closing[i].key;
            let drained = self
                .logs
                .get(&k)
                .is_none_or(|e| !self.in_flight(k) && e.shared.lock_core().is_drained());
            if drained {
                let req = self.closing.swap_remove(i);
                if let Some(e) = self.logs.remove(&k) {
                    retire(&self.ctl, e);
                }
                req.answer();
            } else {
                i += 1;
            }
        }
        if !self.shutting_down {
            return false;
        }
        let keys: Vec<u64> = self
            .logs
            .iter()
            .filter(|(k, e)| !self.in_flight(**k) && e.shared.lock_core().is_drained())
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            retire(&self.ctl, self.logs.remove(&k).expect("listed"));
        }
        if !self.logs.is_empty() {
            return false;
        }
        let mut inbox = self.ctl.inbox.lock().unwrap_or_else(|p| p.into_inner());
        inbox.stopped = true;
        let late = std::mem::take(&mut inbox.close);
        drop(inbox);
        for req in self.closing.drain(..).chain(late) {
            req.answer();
        }
        true
    }

    /// Sleeps until there is work (or a deadline), then takes the ring's completions.
    /// An error is a ring failure beyond repair.
    fn wait(&mut self) -> Result<(), String> {
        let busy = self.logs.values().any(|e| e.active);
        let mut next: Option<u64> = self.logs.values().filter_map(|e| e.deadline).min();
        if !busy && (!self.closing.is_empty() || self.shutting_down) {
            // Draining logs always have work; this only guards against a stall.
            let guard = self.clock.monotonic_ns() + 10_000_000;
            next = Some(next.map_or(guard, |n| n.min(guard)));
        }
        match &mut self.io {
            Io::Sync => {
                if !busy {
                    match next {
                        Some(d) => {
                            let now = self.clock.monotonic_ns();
                            if d > now {
                                std::thread::park_timeout(Duration::from_nanos(d - now));
                            }
                        }
                        None => std::thread::park(),
                    }
                }
            }
            Io::Uring { ring, runner } => {
                let now = self.clock.monotonic_ns();
                let ctl = &self.ctl;
                ring.wait(
                    now,
                    next,
                    !busy,
                    &ctl.sleeping,
                    || ctl.has_work(),
                    &mut self.cqes,
                )
                .map_err(|e| format!("its io_uring ring failed: {e}"))?;
                for (token, res) in self.cqes.drain(..) {
                    let k = runner
                        .log_of(token)
                        .unwrap_or_else(|| panic!("a completion of unknown token {token}"));
                    let e = self
                        .logs
                        .get_mut(&k)
                        .unwrap_or_else(|| panic!("a completion for log {k}, which has left"));
                    runner.complete(token, res, &mut e.driver, &mut **ring, &mut self.done);
                }
                apply(&mut self.logs, &mut self.done);
            }
        }
        Ok(())
    }

    /// The loop: one turn per wake-up. `Ok` at shutdown, `Err` when the ring failed.
    fn run(&mut self) -> Result<(), String> {
        loop {
            self.injected()?;
            self.take_inbox();
            self.poll_logs();
            if self.retire_drained() {
                return Ok(());
            }
            self.wait()?;
        }
    }
}
