//! Shards hosted in glommio (`ShardExecutor::Glommio`, cargo feature `glommio`).
//!
//! The shard's thread sets up the engine's own io_uring ring first (its registered
//! buffers are charged to `RLIMIT_MEMLOCK` before glommio's), then a glommio
//! `LocalExecutor` pinned to the shard's CPU, and runs the shard's loop as a glommio
//! task: the same turn as the thread executor, never blocking in the engine's ring.
//! Every completion the ring posts adds to the shard's eventfd
//! (`IORING_REGISTER_EVENTFD`), and so does every wake-up from another thread; when a
//! turn finds nothing to do, the loop sleeps in glommio's reactor until that eventfd is
//! readable, so glommio runs its other tasks (timers, networking) meanwhile. A wake-up
//! from the shard's own thread (a task appending, a glommio timer waking a task) wakes
//! the loop's glommio task directly, with no eventfd write.
//!
//! glommio 0.9 has no public call to await an arbitrary descriptor. The loop awaits a
//! read from a glommio `UnixStream` over a duplicate of the eventfd: glommio's first
//! step for it is a `POLL_ADD` in its own ring, and once that reports the eventfd
//! readable its `recv` fails with `ENOTSOCK`, which the loop takes as "readable". If a
//! later glommio answered at once instead, the loop would notice it waking with
//! nothing to do, say so once, and fall back to sleeping 100 us at a time.
//!
//! glommio 0.9 can park with a woken task not run: its executor skips its task queues
//! when a completion waits in its latency ring (a preemption timer it cancelled a
//! moment before), then sleeps until the next event of its own rings, however long
//! that is. A loop woken by its eventfd at that moment slept with the eventfd full
//! and callers waiting (the CI soak that hung: seals waiting, the eventfd at 14, the
//! wake-up delivered to a task glommio never ran). Two defences: the loop never goes
//! to sleep with the eventfd already readable (it drains it and turns again, the case
//! that made the wake-up land in that window), and while operations are in flight a
//! sleep also ends after [`SAFETY_NET`] (with only a deadline set, that long after the
//! deadline), a glommio timer, which glommio arms in its own ring before it parks. An
//! idle shard arms no timer: it still never wakes.

use super::{current_shard, ShardCtl};
use crate::clock::Clock;
use crate::config::UringFeature;
use crate::exec::Host;
use futures_lite::AsyncReadExt;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

thread_local! {
    /// The loop's glommio waker while it sleeps, for wake-ups from its own thread.
    static LOOP_WAKER: RefCell<Option<Waker>> = const { RefCell::new(None) };
    /// Set by such a wake-up; the sleeping loop returns on it.
    static LOOP_WOKEN: Cell<bool> = const { Cell::new(false) };
}

/// Wakes the loop of the shard whose thread this is, if it sleeps in glommio; false
/// if it does not (the caller writes the eventfd instead).
pub(super) fn wake_local(shard: usize) -> bool {
    if current_shard() != Some(shard) {
        return false;
    }
    LOOP_WAKER.with(|w| match w.borrow_mut().take() {
        Some(w) => {
            LOOP_WOKEN.with(|f| f.set(true));
            w.wake();
            true
        }
        None => false,
    })
}

/// glommio's `LocalExecutor` for shard `id` on `cpu`, with the least I/O memory glommio
/// takes (64 KiB): the engine's writes go through its own ring.
pub(super) fn executor(id: usize, cpu: Option<usize>) -> io::Result<glommio::LocalExecutor> {
    let placement = match cpu {
        Some(c) => glommio::Placement::Fixed(c),
        None => glommio::Placement::Unbound,
    };
    glommio::LocalExecutorBuilder::new(placement)
        .name(&format!("aof2-shard-{id}"))
        .io_memory(64 << 10)
        .make()
        .map_err(|e| io::Error::other(format!("glommio executor for shard {id}: {e}")))
}

/// The longest a glommio shard sleeps while it has operations in flight or a deadline
/// set, however glommio schedules its wake-up (see the module docs).
pub const SAFETY_NET: Duration = Duration::from_millis(5);

/// The memlock glommio needs beyond the engine's registered buffers: its own minimum.
pub const GLOMMIO_MEMLOCK_BYTES: u64 = 512 << 10;

/// Checks, before glommio is touched, what it would otherwise panic or exit on:
/// io_uring allowed, the opcodes glommio uses, and a memlock limit for both.
pub fn probe(registered_buffer_bytes: u64) -> Result<(), String> {
    use io_uring::{opcode, IoUring, Probe};
    let ring = IoUring::new(8)
        .map_err(|e| format!("io_uring is unavailable (io_uring_setup: {e}); glommio needs it"))?;
    let mut p = Probe::new();
    ring.submitter().register_probe(&mut p).map_err(|e| {
        format!("io_uring cannot list its opcodes (IORING_REGISTER_PROBE: {e}); glommio needs Linux 5.8 or later")
    })?;
    let needed = [
        (opcode::Nop::CODE, "NOP"),
        (opcode::Readv::CODE, "READV"),
        (opcode::Writev::CODE, "WRITEV"),
        (opcode::Fsync::CODE, "FSYNC"),
        (opcode::ReadFixed::CODE, "READ_FIXED"),
        (opcode::WriteFixed::CODE, "WRITE_FIXED"),
        (opcode::PollAdd::CODE, "POLL_ADD"),
        (opcode::PollRemove::CODE, "POLL_REMOVE"),
        (opcode::SendMsg::CODE, "SENDMSG"),
        (opcode::RecvMsg::CODE, "RECVMSG"),
        (opcode::Timeout::CODE, "TIMEOUT"),
        (opcode::TimeoutRemove::CODE, "TIMEOUT_REMOVE"),
        (opcode::Accept::CODE, "ACCEPT"),
        (opcode::LinkTimeout::CODE, "LINK_TIMEOUT"),
        (opcode::Connect::CODE, "CONNECT"),
        (opcode::Fallocate::CODE, "FALLOCATE"),
        (opcode::OpenAt::CODE, "OPENAT"),
        (opcode::Close::CODE, "CLOSE"),
        (opcode::Statx::CODE, "STATX"),
        (opcode::Read::CODE, "READ"),
        (opcode::Write::CODE, "WRITE"),
        (opcode::Send::CODE, "SEND"),
        (opcode::Recv::CODE, "RECV"),
    ];
    let missing: Vec<&str> = needed
        .iter()
        .filter(|(c, _)| !p.is_supported(*c))
        .map(|(_, n)| *n)
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "io_uring lacks opcodes glommio needs ({}); glommio needs Linux 5.8 or later",
            missing.join(", ")
        ));
    }
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a plain query into a valid struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0 {
        return Err(format!(
            "cannot read RLIMIT_MEMLOCK: {}",
            io::Error::last_os_error()
        ));
    }
    let want = GLOMMIO_MEMLOCK_BYTES + registered_buffer_bytes;
    // CAP_IPC_LOCK lifts the limit; without knowing, only the limit itself is checked
    // against glommio's own minimum (the engine's buffers fall back to unregistered).
    if lim.rlim_cur != libc::RLIM_INFINITY && lim.rlim_cur < GLOMMIO_MEMLOCK_BYTES {
        return Err(format!(
            "RLIMIT_MEMLOCK is {} KiB; glommio needs at least {} KiB ({} KiB with the \
             engine's registered buffers, AofManagerConfig::registered_buffer_bytes)",
            lim.rlim_cur >> 10,
            GLOMMIO_MEMLOCK_BYTES >> 10,
            want >> 10
        ));
    }
    Ok(())
}

/// The glommio loop's host: raises the shard's "sleeping" flag before it sleeps (the
/// flag other threads check before writing the eventfd) and never parks.
pub(super) struct GlommioHost<'a>(pub(super) &'a ShardCtl);

impl Host for GlommioHost<'_> {
    fn may_sleep(&self) -> bool {
        self.0.announce_sleep()
    }

    fn awake(&self) {
        self.0.awoke();
    }

    fn park(&self, _: Option<Duration>) {
        unreachable!("a glommio shard never parks its thread")
    }
}

/// A pending wait for the eventfd to turn readable, kept across sleeps until it fires.
type Readable = Pin<Box<dyn Future<Output = io::Result<()>>>>;

/// Waits for the eventfd through glommio (see the module docs).
fn readable(efd: RawFd) -> io::Result<Readable> {
    // SAFETY: plain syscall; the duplicate is owned by the stream from here on.
    let fd = unsafe { libc::fcntl(efd, libc::F_DUPFD_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let mut stream = unsafe { glommio::net::UnixStream::from_raw_fd(fd) };
    Ok(Box::pin(async move {
        let mut b = [0u8; 8];
        match stream.read(&mut b).await {
            Err(e) if e.raw_os_error() == Some(libc::ENOTSOCK) => Ok(()),
            Err(e) => Err(e),
            Ok(_) => Ok(()),
        }
    }))
}

/// Empties the eventfd; true if anything was in it.
fn drain(efd: RawFd) -> bool {
    let mut v = 0u64;
    // SAFETY: reads 8 bytes into a valid u64 from a non-blocking eventfd.
    unsafe { libc::read(efd, (&mut v as *mut u64).cast(), 8) == 8 }
}

/// How the loop sleeps in glommio, and what it noticed about it.
pub(super) struct Sleeper {
    efd: RawFd,
    pending: Option<Readable>,
    /// The pending wait has answered "not yet" at least once.
    waited: bool,
    /// Consecutive waits that were ready at their first poll with nothing to do.
    empty: u32,
    /// glommio answered at once too often: sleep in short timer steps instead.
    fallback: bool,
}

/// What ended a sleep.
enum Woke {
    /// A wake-up from the shard's own thread.
    Local,
    /// The eventfd turned readable.
    Readable,
    /// The safety net's timer.
    Net,
}

impl Sleeper {
    pub(super) fn new(efd: RawFd) -> Sleeper {
        Sleeper {
            efd,
            pending: readable(efd).ok(),
            waited: false,
            empty: 0,
            fallback: false,
        }
    }

    /// Sleeps until the eventfd is readable or a wake-up from this thread; if the loop
    /// needs a look after `look` anyway (operations in flight: zero; a deadline: the
    /// time to it), for at most `look` + [`SAFETY_NET`].
    pub(super) async fn sleep(&mut self, ctl: &ShardCtl, look: Option<Duration>) -> io::Result<()> {
        if self.fallback {
            glommio::timer::sleep(Duration::from_micros(100)).await;
            drain(self.efd);
            return Ok(());
        }
        // Completions or requests that came during the turn: turn again now rather
        // than through a wait that would complete at once (see the module docs).
        if drain(self.efd) {
            return Ok(());
        }
        if self.pending.is_none() {
            match readable(self.efd) {
                Ok(r) => {
                    self.pending = Some(r);
                    self.waited = false;
                }
                // Out of descriptors (or memory) for the duplicate: the shard goes on,
                // looking again every 100 us until one is free.
                Err(e) => {
                    log::warn!(
                        "aof2: shard {}: cannot duplicate its eventfd ({e}); polling every 100 us",
                        ctl.id
                    );
                    glommio::timer::sleep(Duration::from_micros(100)).await;
                    drain(self.efd);
                    return Ok(());
                }
            }
        }
        let pending = self.pending.as_mut().expect("set above");
        let waited = &mut self.waited;
        let mut net = look.map(|d| Box::pin(glommio::timer::Timer::new(d + SAFETY_NET)));
        let woke = std::future::poll_fn(|cx: &mut Context<'_>| {
            if LOOP_WOKEN.with(|f| f.replace(false)) {
                return Poll::Ready(Ok(Woke::Local));
            }
            LOOP_WAKER.with(|w| *w.borrow_mut() = Some(cx.waker().clone()));
            if let Poll::Ready(r) = pending.as_mut().poll(cx) {
                return Poll::Ready(r.map(|_| Woke::Readable));
            }
            *waited = true;
            match net.as_mut().map(|t| t.as_mut().poll(cx)) {
                Some(Poll::Ready(_)) => Poll::Ready(Ok(Woke::Net)),
                _ => Poll::Pending,
            }
        })
        .await;
        LOOP_WAKER.with(|w| w.borrow_mut().take());
        LOOP_WOKEN.with(|f| f.set(false));
        match woke? {
            Woke::Local => {}
            Woke::Net => {
                ctl.tasks.net_wakes.fetch_add(1, Ordering::Relaxed);
                drain(self.efd);
            }
            Woke::Readable => {
                let had = drain(self.efd);
                let at_once = !self.waited;
                // The next wait is armed at once, before the fired one is dropped: the
                // shard holds one duplicate of its eventfd whenever it is quiet, not one
                // or none depending on timing.
                self.pending = readable(self.efd).ok();
                self.waited = false;
                if at_once && !had && !ctl.has_work() {
                    self.empty += 1;
                    if self.empty > 10_000 {
                        log::warn!(
                            "aof2: shard {}: glommio reports the eventfd readable when it is not; \
                             sleeping in 100 us steps instead",
                            ctl.id
                        );
                        self.fallback = true;
                    }
                } else {
                    self.empty = 0;
                }
            }
        }
        Ok(())
    }
}

/// A shard whose loop the service runs in a glommio executor of its own
/// (`AofManager::with_hosted_shards`). `Send`: build it anywhere, run it where the
/// shard belongs; its ring is set up on the thread that first polls `run()`.
pub struct ShardHost {
    ctl: Arc<ShardCtl>,
    clock: Clock,
    arena_buffers: u32,
    disable: Vec<UringFeature>,
    /// Dropped when the loop ends (or the host goes unrun): shutdown waits for it.
    done: Option<Sender<()>>,
}

impl std::fmt::Debug for ShardHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardHost")
            .field("shard", &self.ctl.id)
            .finish_non_exhaustive()
    }
}

impl ShardHost {
    pub(super) fn new(
        ctl: Arc<ShardCtl>,
        clock: Clock,
        arena_buffers: u32,
        disable: &[UringFeature],
        done: Sender<()>,
    ) -> ShardHost {
        ShardHost {
            ctl,
            clock,
            arena_buffers,
            disable: disable.to_vec(),
            done: Some(done),
        }
    }

    /// The shard's index.
    pub fn shard(&self) -> usize {
        self.ctl.id
    }

    /// Runs the shard's loop until the manager shuts down (its logs drained). Poll it
    /// in a glommio executor (`glommio::spawn_local(host.run())`), one shard per
    /// thread; the thread then counts as the shard's own: blocking calls of the engine
    /// made on it are refused (`WouldDeadlock`), and tasks spawned with
    /// `spawn_on_shard` run in this loop. If the ring cannot be set up, or the thread
    /// hosts a shard already, the shard fails (its logs get the cause) and this returns.
    pub async fn run(mut self) {
        let ctl = self.ctl.clone();
        let efd = ctl.efd.as_ref().map_or(-1, |f| f.as_raw_fd());
        let prepared = match current_shard() {
            Some(other) => Err(format!(
                "its host was run on the thread of shard {other}: a thread hosts one shard"
            )),
            None => {
                super::set_current_shard(Some(ctl.id));
                super::glommio_loop(
                    &ctl,
                    self.clock.clone(),
                    efd,
                    self.arena_buffers,
                    &self.disable,
                )
                .map_err(|e| format!("cannot set up its io_uring ring: {e}"))
            }
        };
        let started = prepared.is_ok();
        match prepared {
            Ok((lp, _)) => super::run_glommio(lp, ctl.clone(), efd, None).await,
            Err(cause) => fail_unstarted(&ctl, self.clock.clone(), cause),
        }
        if started {
            super::set_current_shard(None);
        }
        self.done.take();
    }
}

impl Drop for ShardHost {
    fn drop(&mut self) {
        if self.done.is_some() {
            // Never run: fail the shard, so nobody waits for a loop that never comes.
            fail_unstarted(
                &self.ctl,
                self.clock.clone(),
                "its ShardHost was dropped without running".into(),
            );
        }
    }
}

/// Fails a shard whose loop never ran: its logs are poisoned, closes answered, later
/// requests answered on the spot.
fn fail_unstarted(ctl: &Arc<ShardCtl>, clock: Clock, cause: String) {
    let exec = Box::new(crate::exec::blocking::BlockingExecutor::default());
    super::turn::ShardLoop::new(ctl.clone(), exec, clock).fail(cause);
}
