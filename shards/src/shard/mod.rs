//! Shard threads. Each owns the logs placed on it and runs their I/O; callers only
//! copy into log buffers and, on a state change (a full buffer, a flush request, a
//! roll, a timer to arm), queue the log on its shard and wake the thread.
//!
//! The thread loops on its turn (`turn.rs`) with one of two executors, chosen at
//! start:
//! - the ring executor over io_uring (`exec::uring`): the ring is created on this
//!   thread; chains run as linked groups and complete asynchronously, so one log's sync
//!   never holds up another's. The thread sleeps in `io_uring_enter`; other threads
//!   wake it through an eventfd the ring reads, written only when the shard said it is
//!   going to sleep.
//! - the blocking executor (`exec::blocking`, the portable backend): each chain runs to
//!   completion with blocking calls; the thread parks, and other threads unpark it
//!   (unpark tokens make that free of lost wake-ups).
//!
//! An idle shard waits with no timeout; a log with unflushed data and an interval set
//! gives it one deadline.
//!
//! **A failing shard never hangs anyone.** A panic on the thread (a broken invariant)
//! or a ring that fails beyond repair (lost completions) poisons every log on the shard
//! with an error naming the shard and the cause, releases all their waiters, answers
//! every close, and stops taking requests (later ones are answered on the spot); new
//! logs go to the other shards.

#[cfg(feature = "glommio")]
pub mod glommio_host;
pub mod tasks;
pub mod turn;

use crate::buffer::BufferArena;
use crate::clock::Clock;
use crate::config::{IoBackend, ShardExecutor, UringFeature};
use crate::error::AofError;
use crate::exec::blocking::BlockingExecutor;
use crate::exec::uring::{signal_eventfd, OpCounts, RingSetup, UringRing};
use crate::exec::{Executor, Host, RingExecutor};
use crate::fs::FsLock;
use crate::log_shared::{LogShared, ShardLink};
use std::cell::Cell;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::Duration;
use tasks::{Spawn, TaskStats};
use turn::ShardLoop;

thread_local! {
    static CURRENT_SHARD: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The shard whose thread this is, if any: blocking here would deadlock.
pub fn current_shard() -> Option<usize> {
    CURRENT_SHARD.with(|c| c.get())
}

/// A log handed to a shard.
pub struct Registration {
    /// The log (its files are in its shared state).
    pub shared: Arc<LogShared>,
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
    pub fn answer(self) {
        drop(self.lock);
        let _ = self.ack.send(());
    }
}

/// Requests queued for a shard's next turn.
#[derive(Default)]
pub struct Inbox {
    add: Vec<Registration>,
    ready: Vec<u64>,
    close: Vec<CloseRequest>,
    /// Tasks to create on the shard's thread.
    spawn: Vec<Spawn>,
    /// Tasks woken since the last turn.
    woken: Vec<u64>,
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

/// What a hosted shard hands the service: a `ShardHost` with the `glommio` feature
/// (nothing can be hosted without it).
#[cfg(feature = "glommio")]
pub type HostOf = glommio_host::ShardHost;
/// What a hosted shard hands the service (nothing, without the `glommio` feature).
#[cfg(not(feature = "glommio"))]
pub type HostOf = std::convert::Infallible;

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
    efd: Option<OwnedFd>,
    /// The shard runs on io_uring (set before `Shard::start` returns).
    ring: AtomicBool,
    /// Ring mode: the shard is about to sleep, or sleeping, in the kernel.
    sleeping: AtomicBool,
    /// io_uring was wanted (`Auto`) but could not be set up: the portable backend runs.
    pub uring_fallback: AtomicBool,
    /// The shard's buffer arena, made when the first log is placed here (where the
    /// ring can register one); the shard's loop registers it with its ring.
    pub arena: OnceLock<Arc<BufferArena>>,
    /// Log buffers of that arena (0: the ring registers none).
    arena_buffers: std::sync::atomic::AtomicU32,
    /// Operations the ring submitted, by opcode.
    pub ring_ops: Arc<OpCounts>,
    /// Why the shard failed (a panic message or a ring failure), once it has.
    failed: OnceLock<String>,
    /// Injected faults (test hooks): `FAULT_*` bits, and a pause in ns.
    faults: AtomicU64,
    pause_ns: AtomicU64,
    /// Counters of the tasks running on the shard and of its wake-ups.
    pub tasks: TaskStats,
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

impl ShardLink for ShardCtl {
    fn ready(&self, key: u64) {
        self.with_inbox(|i| i.ready.push(key));
    }
}

impl ShardCtl {
    fn new(id: usize, cpu: Option<usize>, efd: Option<OwnedFd>) -> ShardCtl {
        ShardCtl {
            id,
            cpu,
            inbox: Mutex::new(Inbox::default()),
            thread: OnceLock::new(),
            logs: AtomicUsize::new(0),
            efd,
            ring: AtomicBool::new(false),
            sleeping: AtomicBool::new(false),
            uring_fallback: AtomicBool::new(false),
            arena: OnceLock::new(),
            arena_buffers: std::sync::atomic::AtomicU32::new(0),
            ring_ops: Arc::default(),
            failed: OnceLock::new(),
            faults: AtomicU64::new(0),
            pause_ns: AtomicU64::new(0),
            tasks: TaskStats::default(),
        }
    }

    /// A shard with no thread of its own: whoever holds its [`ShardLoop`] runs the
    /// turns (the crash checker, on the simulated disk).
    pub fn detached(id: usize) -> Arc<ShardCtl> {
        Arc::new(ShardCtl::new(id, None, None))
    }

    /// Takes what is queued.
    fn take_inbox(&self) -> Inbox {
        std::mem::take(&mut *self.inbox.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Takes what is queued and answers later requests on the spot (the shard stopped).
    fn stop(&self) -> Inbox {
        let mut i = self.inbox.lock().unwrap_or_else(|p| p.into_inner());
        let queued = std::mem::take(&mut *i);
        i.stopped = true;
        queued
    }

    fn with_inbox(&self, f: impl FnOnce(&mut Inbox)) {
        f(&mut self.inbox.lock().unwrap_or_else(|p| p.into_inner()));
        self.wake();
    }

    fn wake(&self) {
        if self.ring.load(Ordering::Acquire) {
            // Pairs with the shard's `sleeping` store then inbox check (both SeqCst):
            // either it sees our request, or we see it sleeping and write.
            if self.sleeping.swap(false, Ordering::SeqCst) {
                // On the shard's own thread, a glommio loop asleep is woken as a
                // glommio task: no system call.
                #[cfg(feature = "glommio")]
                if glommio_host::wake_local(self.id) {
                    return;
                }
                if let Some(efd) = &self.efd {
                    self.tasks.eventfd_writes.fetch_add(1, Ordering::Relaxed);
                    signal_eventfd(efd.as_raw_fd());
                }
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
            || !i.spawn.is_empty()
            || !i.woken.is_empty()
            || i.shutdown
            || self.faults.load(Ordering::SeqCst) != 0
            || self.pause_ns.load(Ordering::SeqCst) != 0
    }

    /// The shard's loop is about to sleep: raises the flag other threads check before
    /// waking it, then looks at the inbox. False (flag lowered) if work is queued.
    fn announce_sleep(&self) -> bool {
        // Pairs with `wake` (both SeqCst): either a request queued from here on sees
        // the flag and wakes the loop, or the loop sees the request now.
        self.sleeping.store(true, Ordering::SeqCst);
        if self.has_work() {
            self.sleeping.store(false, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// Lowers the flag after a sleep.
    fn awoke(&self) {
        self.sleeping.store(false, Ordering::SeqCst);
    }

    /// The arena a log placed here takes its buffers from, made on first use: a shard
    /// with no log holds none (its ring registers it at its next turn).
    pub fn arena_for_log(&self) -> Option<Arc<BufferArena>> {
        let n = self.arena_buffers.load(Ordering::Acquire);
        (n > 0).then(|| {
            self.arena
                .get_or_init(|| {
                    BufferArena::new(n, crate::log::BUF_SIZE, crate::exec::uring::ARENA_BLOCKS)
                })
                .clone()
        })
    }

    /// Why the shard failed, if it has.
    pub fn failure(&self) -> Option<&str> {
        self.failed.get().map(String::as_str)
    }

    /// The error of a log that cannot be placed here any more.
    pub(crate) fn refusal(&self) -> AofError {
        match self.failure() {
            Some(cause) => AofError::ShardFailed {
                shard: self.id,
                cause: cause.to_string(),
            },
            None => AofError::Startup("the AOF manager has shut down".into()),
        }
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

    /// Hands a task to this shard; refused once the shard has stopped or failed.
    pub(crate) fn spawn(&self, s: Spawn) -> Result<(), AofError> {
        let mut refused = None;
        self.with_inbox(|i| {
            if i.stopped {
                refused = Some(s);
            } else {
                self.tasks.spawned.fetch_add(1, Ordering::Relaxed);
                i.spawn.push(s);
            }
        });
        match refused {
            // Dropped here, not on the shard: its task was never created.
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
    /// A shard the service hosts (`ShardHost`): disconnected once its loop has ended
    /// (or the host was dropped without running).
    hosted: Option<std::sync::mpsc::Receiver<()>>,
}

impl Shard {
    /// Starts shard `id`, pinned to `cpu` if given, on `backend` (already resolved from
    /// the environment). `Uring` fails if no ring can be set up; `Auto` falls back. On
    /// io_uring, `arena_buffers` log buffers are registered with the ring where memlock
    /// allows, and no feature in `disable` is used.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        id: usize,
        cpu: Option<usize>,
        clock: Clock,
        backend: IoBackend,
        executor: ShardExecutor,
        arena_buffers: u32,
        disable: &[UringFeature],
        poll: std::time::Duration,
    ) -> std::io::Result<Shard> {
        let ctl = Arc::new(ShardCtl::new(id, cpu, Some(new_eventfd()?)));
        let efd = ctl.efd.as_ref().map_or(-1, |f| f.as_raw_fd());
        let c = ctl.clone();
        let disable = disable.to_vec();
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("aof2-shard-{id}"))
            .spawn(move || {
                pin(&c, cpu);
                #[cfg(feature = "glommio")]
                if executor == ShardExecutor::Glommio {
                    return start_glommio(c, cpu, clock, efd, arena_buffers, &disable, tx);
                }
                let _ = executor;
                // The ring is created here, and lives and dies on this thread.
                let (exec, running): (Box<dyn Executor>, Running) = match backend {
                    IoBackend::Sync => (
                        Box::new(BlockingExecutor::default()),
                        Running::Sync { fallback: None },
                    ),
                    _ => match UringRing::new(efd, arena_buffers, &disable) {
                        Ok(mut ring) => {
                            ring.count_ops(c.ring_ops.clone());
                            ring.set_poll(poll);
                            c.arena_buffers
                                .store(ring.arena_buffers(), Ordering::Release);
                            c.ring.store(true, Ordering::Release);
                            let setup = ring.setup();
                            (Box::new(RingExecutor::new(ring)), Running::Uring(setup))
                        }
                        Err(e) if backend == IoBackend::Uring => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                        Err(e) => {
                            c.uring_fallback.store(true, Ordering::Release);
                            let fallback = Some(format!("io_uring_setup failed: {e}"));
                            (
                                Box::new(BlockingExecutor::default()),
                                Running::Sync { fallback },
                            )
                        }
                    },
                };
                let _ = tx.send(Ok(running));
                run_thread(ShardLoop::new(c.clone(), exec, clock), &c);
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
            hosted: None,
        })
    }

    /// Flushes and closes every log on the shard, then stops its thread.
    pub fn shutdown(&mut self) {
        self.ctl.with_inbox(|i| i.shutdown = true);
        if let Some(t) = self.thread.take() {
            // Dropped by a task on this very shard: the thread exits after that task's
            // poll returns; joining it from itself would never return.
            if current_shard() != Some(self.ctl.id) {
                let _ = t.join();
            }
        }
        if let Some(done) = self.hosted.take() {
            // The host's loop drains its logs, then ends (and drops its sender). On the
            // host's own thread that cannot happen while we wait.
            if current_shard() != Some(self.ctl.id) {
                let _ = done.recv();
            }
        }
    }

    /// Shard `id`, run by the service: the returned host is `Send`, and its `run()`
    /// future runs the shard's loop wherever the service polls it (a glommio executor
    /// of its own, on the CPU it chooses). Its ring is set up on the thread that first
    /// polls it (so `SINGLE_ISSUER` holds wherever the host was built).
    #[cfg(feature = "glommio")]
    pub fn hosted(
        id: usize,
        clock: Clock,
        arena_buffers: u32,
        disable: &[UringFeature],
    ) -> std::io::Result<(Shard, glommio_host::ShardHost)> {
        let ctl = Arc::new(ShardCtl::new(id, None, Some(new_eventfd()?)));
        ctl.ring.store(true, Ordering::Release);
        let (tx, rx) = std::sync::mpsc::channel();
        let host = glommio_host::ShardHost::new(ctl.clone(), clock, arena_buffers, disable, tx);
        let running = Running::Uring(crate::exec::uring::RingSetup {
            features: Default::default(),
            registered_zeros: false,
            registered_arena: 0,
        });
        Ok((
            Shard {
                ctl,
                running,
                thread: None,
                hosted: Some(rx),
            },
            host,
        ))
    }
}

impl Drop for Shard {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn new_eventfd() -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscall; the result is checked before being owned.
    let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if efd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `efd` is a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(efd) })
}

#[cfg(feature = "glommio")]
pub(crate) fn set_current_shard(id: Option<usize>) {
    CURRENT_SHARD.with(|c| c.set(id));
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
pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    match (p.downcast_ref::<&str>(), p.downcast_ref::<String>()) {
        (Some(s), _) => format!("panicked: {s}"),
        (_, Some(s)) => format!("panicked: {s}"),
        _ => "panicked".to_string(),
    }
}

/// The shard thread's readiness hook: it announces that it is going to sleep (the flag
/// other threads check before waking it), and parks when its executor cannot sleep in
/// the kernel.
struct ThreadHost<'a>(&'a ShardCtl);

impl Host for ThreadHost<'_> {
    fn may_sleep(&self) -> bool {
        self.0.announce_sleep()
    }

    fn awake(&self) {
        self.0.awoke();
    }

    fn park(&self, timeout: Option<Duration>) {
        match timeout {
            Some(t) => std::thread::park_timeout(t),
            None => std::thread::park(),
        }
    }
}

/// The body of a glommio shard's thread: the engine's ring first (its registered
/// buffers charged to memlock before glommio's), then glommio's executor, then the
/// loop as a glommio task, until shutdown.
#[cfg(feature = "glommio")]
#[allow(clippy::too_many_arguments)]
fn start_glommio(
    c: Arc<ShardCtl>,
    cpu: Option<usize>,
    clock: Clock,
    efd: std::os::fd::RawFd,
    arena_buffers: u32,
    disable: &[UringFeature],
    tx: Sender<std::io::Result<Running>>,
) {
    let (lp, running) = match glommio_loop(&c, clock, efd, arena_buffers, disable) {
        Ok(x) => x,
        Err(e) => {
            let _ = tx.send(Err(e));
            return;
        }
    };
    let ex = match glommio_host::executor(c.id, cpu) {
        Ok(x) => x,
        Err(e) => {
            let _ = tx.send(Err(e));
            return;
        }
    };
    ex.run(run_glommio(lp, c, efd, Some((tx, running))));
}

/// The loop of a glommio shard, on the engine's own ring set up on this thread.
#[cfg(feature = "glommio")]
fn glommio_loop(
    c: &Arc<ShardCtl>,
    clock: Clock,
    efd: std::os::fd::RawFd,
    arena_buffers: u32,
    disable: &[UringFeature],
) -> std::io::Result<(ShardLoop, Running)> {
    // Without DEFER_TASKRUN the kernel posts completions (and adds to the eventfd) on
    // its own; with it, only when this thread enters the ring, which a loop asleep in
    // glommio does not.
    let mut disable = disable.to_vec();
    disable.push(UringFeature::DeferTaskrun);
    let mut ring = UringRing::new(efd, arena_buffers, &disable)?;
    ring.count_ops(c.ring_ops.clone());
    ring.notify_eventfd(efd).map_err(|e| {
        std::io::Error::other(format!(
            "io_uring refused to register the shard's eventfd: {e}"
        ))
    })?;
    c.arena_buffers
        .store(ring.arena_buffers(), Ordering::Release);
    c.ring.store(true, Ordering::Release);
    let running = Running::Uring(ring.setup());
    let mut lp = ShardLoop::new(c.clone(), Box::new(RingExecutor::new(ring)), clock);
    lp.set_never_block(true);
    Ok((lp, running))
}

/// The glommio loop: turns while there is work, yielding to glommio's other tasks;
/// asleep in glommio's reactor (`glommio_host::Sleeper`) when there is none.
#[cfg(feature = "glommio")]
pub(crate) async fn run_glommio(
    mut lp: ShardLoop,
    ctl: Arc<ShardCtl>,
    efd: std::os::fd::RawFd,
    started: Option<(Sender<std::io::Result<Running>>, Running)>,
) {
    let host = glommio_host::GlommioHost(&ctl);
    let mut sleeper = glommio_host::Sleeper::new(efd);
    // Started once the sleeper holds its descriptor: a manager's descriptors are all
    // open when `with_config` returns, not some of them a moment later.
    if let Some((tx, running)) = started {
        let _ = tx.send(Ok(running));
    }
    let cause = loop {
        match std::panic::catch_unwind(AssertUnwindSafe(|| lp.turn(&host))) {
            Ok(Ok(t)) if t.shut_down => return,
            Ok(Ok(t)) => {
                if t.busy || lp.has_ready_tasks() {
                    glommio::yield_if_needed().await;
                    continue;
                }
                if host.may_sleep() {
                    let r = sleeper.sleep(&ctl, lp.next_look()).await;
                    host.awake();
                    if let Err(e) = r {
                        break format!("waiting for its eventfd in glommio failed: {e}");
                    }
                }
            }
            Ok(Err(cause)) => break cause,
            Err(p) => break panic_message(&*p),
        }
    };
    lp.fail(cause);
}

/// Runs turns until shutdown, sleeping between them; if the shard fails (a panic, or
/// an executor failure), fails it cleanly. The loop's state outlives the unwind.
fn run_thread(mut lp: ShardLoop, ctl: &ShardCtl) {
    let host = ThreadHost(ctl);
    let r = std::panic::catch_unwind(AssertUnwindSafe(|| loop {
        if lp.turn(&host)?.shut_down {
            return Ok(());
        }
    }));
    let cause = match r {
        Ok(Ok(())) => return,
        Ok(Err(cause)) => cause,
        Err(p) => panic_message(&*p),
    };
    lp.fail(cause);
    // Dropping `lp` drops the executor, whose ring waits (bounded) for the kernel to
    // finish with its memory: the waiters were released first.
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::files::LogFiles;
    use crate::fs::sim::SimFs;
    use crate::layout::LogPaths;
    use crate::log::{LogCore, Recovered};
    use std::path::Path;

    #[test]
    fn a_log_queued_on_a_shard_is_freed_with_it() {
        let core = LogCore::new(
            crate::config::AofConfig::default().normalized(),
            LogPaths::new(Path::new("/l")),
            Clock::default(),
            1,
            Recovered::default(),
        );
        let shard = ShardCtl::detached(0);
        let files = Arc::new(LogFiles::new(Arc::new(SimFs::new(1)), false));
        let shared = Arc::new(LogShared::new(
            1,
            core,
            files,
            &(shard.clone() as Arc<dyn ShardLink>),
        ));
        // Queued, never taken by a turn: the shard's inbox holds the log.
        shard
            .add(Registration {
                shared: shared.clone(),
            })
            .unwrap();
        shared.wake_shard();
        let (log, ctl) = (Arc::downgrade(&shared), Arc::downgrade(&shard));
        drop((shared, shard));
        assert!(
            log.upgrade().is_none() && ctl.upgrade().is_none(),
            "no reference cycle between a log and its shard keeps them alive"
        );
    }
}
