//! The io_uring backend: one ring per shard, created on the shard's own thread.
//!
//! - **Only what the kernel has.** Setup tries `SINGLE_ISSUER | DEFER_TASKRUN`, then
//!   `SINGLE_ISSUER`, then plain flags; `IORING_REGISTER_PROBE` lists the opcodes
//!   (without it, only Linux 5.5's are assumed). An opcode the probe did not list is
//!   never submitted: each optional one has a plain path (`WRITEV` for `WRITE`,
//!   `WRITEV_FIXED` and `WRITE_FIXED`; `READV` for `READ`). Only this setup picks
//!   paths: an error in the middle of a run poisons the log, and is never taken for
//!   "unsupported" (EINVAL can also mean a misaligned write).
//! - Writes are `WRITE`/`WRITEV` (or `*_FIXED` from registered memory), syncs are
//!   `FSYNC` with `DATASYNC`, chained with `IOSQE_IO_LINK` (never `IO_DRAIN`: measured
//!   stalls here). A short write fails the link, so the sync after it completes
//!   `-ECANCELED` and the log is poisoned.
//! - **A full submission queue never panics**: whole linked groups wait in a FIFO
//!   (`unqueued`) until there is room for all of their entries, since a link cannot
//!   span two submissions (TigerBeetle's `unqueued` list).
//! - **Lost completions are detected**: a completion the kernel dropped (the CQ
//!   overflow counter, or `EBADR` from `io_uring_enter`) would leave a chain waiting for
//!   ever, so the ring reports itself failed and the shard poisons its logs.
//! - **Ring memory is never freed under the kernel**: the ring is `!Send` (it lives and
//!   dies on its shard thread), and its `Drop` waits, for a bounded time, for every
//!   operation in the kernel; what is still there then is leaked, not freed.
//! - Cross-thread wake-ups arrive through an eventfd the ring always has a read armed
//!   on; writers only write it when the shard said it is about to sleep, so a busy
//!   shard costs them no system call.
//! - The interval timer is an `IORING_OP_TIMEOUT`, armed only while some log on the
//!   shard has a deadline (unflushed data): an idle shard sleeps in the kernel with
//!   nothing armed but the eventfd read.
//!
//! Files: this one runs the ring (queueing whole groups, entering the kernel, reaping,
//! waiting, dropping); `setup` probes the kernel and sets the ring up; `sqe` builds
//! submission entries from operations, using only opcodes the probe found.

mod setup;
mod sqe;
#[cfg(test)]
mod tests;

pub use setup::{RingFeatures, RingSetup};
use sqe::bump;
pub use sqe::OpCounts;

use super::chains::{Ring, RingOp, Submission};
use super::Host;
use crate::buffer::BufferArena;
use io_uring::{opcode, squeue, types, EnterFlags, IoUring};
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io;
use std::marker::PhantomData;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

const EVENTFD_TOKEN: u64 = u64::MAX;
const TIMER_BIT: u64 = 1 << 63;
/// Submission queue entries; the completion queue gets twice as many, and completions
/// beyond that are kept by the kernel (`IORING_FEAT_NODROP`), not lost.
const ENTRIES: u32 = 256;
/// Registered buffer index of the shared zero chunk.
const ZERO_BUF: u16 = 0;
/// Registered buffer index of the shard's buffer arena.
const ARENA_BUF: u16 = 1;
/// 4 KiB blocks in a shard's arena (bounce copies, headers, footers in flight).
pub const ARENA_BLOCKS: u32 = 256;
/// How long dropping a ring waits for operations still in the kernel before it leaks
/// their memory instead of freeing it.
const DROP_WAIT: Duration = Duration::from_secs(10);
/// Enters a host-waiting ring makes, at most, to run what completions the kernel
/// still holds before its host may sleep (each enter runs up to 20).
const HELD_ROUNDS: usize = 16;

/// Adds one to an eventfd, waking a ring that has a read armed on it. It cannot fail
/// short of a counter overflow, which the ring's read resets.
pub fn signal_eventfd(efd: RawFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a valid u64 to an open eventfd.
    unsafe { libc::write(efd, (&one as *const u64).cast(), 8) };
}

/// An operation in the kernel's hands (or queued for it), with everything it points to.
struct Held {
    op: RingOp,
    /// The iovec array a vectored write reads (heap memory: stable while `Held` moves).
    _iov: Vec<libc::iovec>,
    /// The directory a `SyncDir` syncs, open until the sync completes.
    _dir: Option<File>,
}

/// One shard's ring. Not `Send`: it is created, used and dropped on its shard thread
/// (with `SINGLE_ISSUER` only that thread may submit, and its `Drop` must run where it
/// can wait for the kernel to finish with the memory it lends it).
///
/// ```compile_fail
/// fn needs_send<T: Send>() {}
/// needs_send::<aof2_shards::exec::uring::UringRing>();
/// ```
pub struct UringRing {
    ring: IoUring,
    /// Operations submitted or queued, by token, until their completion is reaped.
    held: HashMap<u64, Held>,
    /// Linked groups waiting for room in the submission queue, whole and in order.
    unqueued: VecDeque<Vec<squeue::Entry>>,
    /// Results known before submission (an operation that could not be built).
    early: Vec<(u64, io::Result<()>)>,
    efd: RawFd,
    efd_buf: Box<u64>,
    /// The iovec a `READV` of the eventfd reads into (without `IORING_OP_READ`).
    efd_iov: Box<libc::iovec>,
    efd_armed: bool,
    /// Deadline (monotonic ns) of the earliest armed timeout, with its token.
    timer: Option<(u64, u64)>,
    timer_seq: u64,
    timespecs: HashMap<u64, Box<types::Timespec>>,
    setup: RingSetup,
    /// The registered arena (dropped after the ring, which unregisters it on close).
    arena: Option<Arc<BufferArena>>,
    counts: Arc<OpCounts>,
    /// The kernel's dropped-completion counter when the ring was created.
    overflow_base: u32,
    /// Completions a test pretends the kernel dropped.
    injected_lost: u32,
    /// How long `Drop` waits for operations in the kernel before leaking them.
    drop_wait: Duration,
    /// Blocking waits wait for every operation in flight, not the first (caller rings).
    wait_all: bool,
    /// The host waits on the eventfd the ring notifies (`notify_eventfd`), never in
    /// the ring.
    host_waits: bool,
    /// Log buffers the shard's arena may register once its first log comes (0: none,
    /// or adopted already).
    arena_buffers: u32,
    /// The eventfd that host sleeps on (-1: none).
    host_efd: RawFd,
    /// A blocking wait polls the completion queue this long before it sleeps.
    poll: Duration,
    _not_send: PhantomData<*const ()>,
}

impl UringRing {
    /// Counts the operations submitted into `counts` from now on.
    pub fn count_ops(&mut self, counts: Arc<OpCounts>) {
        self.counts = counts;
    }

    /// The registered arena, once adopted.
    pub fn arena(&self) -> Option<Arc<BufferArena>> {
        self.arena.clone()
    }

    /// Log buffers this ring may register (0: none: no fixed-buffer opcode, or memlock
    /// refused even the zero chunk).
    pub fn arena_buffers(&self) -> u32 {
        self.arena_buffers
    }

    /// Registers `arena` beside the zero chunk (both again: a registration is replaced
    /// whole). Only with nothing in flight, so no operation uses the zero chunk while
    /// it is re-registered.
    fn register_arena(&mut self, arena: &Arc<BufferArena>) -> bool {
        if self.arena.is_some() || self.arena_buffers == 0 {
            return true;
        }
        if !self.held.is_empty() {
            return false;
        }
        let zeros = crate::buffer::zero_chunk();
        let zero_iov = libc::iovec {
            // SAFETY: the zero chunk is never written after initialisation.
            iov_base: unsafe { zeros.slice(0, crate::buffer::PREP_CHUNK) }.as_ptr()
                as *mut libc::c_void,
            iov_len: crate::buffer::PREP_CHUNK,
        };
        let (p, len) = arena.region();
        let both = [
            zero_iov,
            libc::iovec {
                iov_base: p as *mut libc::c_void,
                iov_len: len,
            },
        ];
        if let Err(e) = self.ring.submitter().unregister_buffers() {
            log::info!("aof2: io_uring would not unregister its buffers ({e}); the arena stays unregistered");
            self.arena_buffers = 0;
            return true;
        }
        // SAFETY: the zero chunk is static; the arena outlives the ring (`self.arena` is
        // dropped after the ring's fd is closed, which unregisters it, or leaked).
        match unsafe { self.ring.submitter().register_buffers(&both) } {
            Ok(()) => {
                self.arena = Some(arena.clone());
                self.setup.registered_arena = len;
            }
            Err(e) => {
                log::info!(
                    "aof2: io_uring refused to register {} MiB of buffers ({e}); the zero chunk alone",
                    (len + crate::buffer::PREP_CHUNK) >> 20
                );
                // SAFETY: as above, the zero chunk alone.
                if unsafe { self.ring.submitter().register_buffers(&both[..1]) }.is_err() {
                    self.setup.features.write_fixed = false;
                    self.setup.features.writev_fixed = false;
                }
            }
        }
        self.arena_buffers = 0;
        true
    }

    /// How the ring was set up.
    pub fn setup(&self) -> RingSetup {
        self.setup
    }

    /// Operations submitted or queued and not completed yet.
    pub fn in_flight(&self) -> usize {
        self.held.len()
    }

    /// Linked groups waiting for room in the submission queue.
    pub fn unqueued(&self) -> usize {
        self.unqueued.len()
    }

    /// Blocking waits wait for every operation in flight (a caller's ring, whose thread
    /// waits for its own chain and nothing else).
    pub fn set_wait_all(&mut self, yes: bool) {
        self.wait_all = yes;
    }

    /// Hands the ring's waiting to a host that sleeps elsewhere (a glommio reactor):
    /// every completion posted adds to `efd` (`IORING_REGISTER_EVENTFD`), which the host
    /// waits on; the ring no longer reads its wake-up eventfd itself and must never be
    /// asked to block.
    pub fn notify_eventfd(&mut self, efd: RawFd) -> io::Result<()> {
        self.ring.submitter().register_eventfd(efd)?;
        self.efd = -1;
        self.host_efd = efd;
        self.host_waits = true;
        Ok(())
    }

    /// How long a blocking wait polls the completion queue before it sleeps.
    pub fn set_poll(&mut self, d: Duration) {
        self.poll = d;
    }

    /// Submits what is queued, then polls the completion queue for up to the poll
    /// time until `want` completions are there. True if they are (no sleep needed).
    fn poll_for(&mut self, want: u32) -> io::Result<bool> {
        self.enter(0)?;
        let start = std::time::Instant::now();
        loop {
            if self.ring.completion().len() >= want as usize {
                bump(&self.counts.poll_hits);
                return Ok(true);
            }
            if start.elapsed() >= self.poll {
                bump(&self.counts.poll_misses);
                return Ok(false);
            }
            // The work that completes a sync (the file system's journal thread, the
            // disk's completion work) may need this very CPU: yield it to anything
            // runnable rather than spin over it.
            // SAFETY: no arguments; it cannot fail in a way that matters here.
            unsafe { libc::sched_yield() };
            if self.setup.features.defer_taskrun {
                // Completions are posted only when this thread enters the ring.
                self.enter(0)?;
            }
        }
    }

    /// A host that sleeps on the eventfd (glommio) must not sleep while the kernel
    /// still holds completions as deferred task work: an enter runs at most 20 of them
    /// (Linux 6.13+), and the eventfd is written only when that list was empty, so
    /// what is left behind would wait for an unrelated completion, or forever. Enters
    /// again while the kernel flags such work or the submission queue holds entries;
    /// if some remain after a few rounds (a flood), writes the eventfd so the host's
    /// sleep ends at once.
    fn run_held_completions(&mut self, out: &mut Vec<(u64, io::Result<()>)>) -> io::Result<()> {
        for _ in 0..HELD_ROUNDS {
            let left = {
                let mut sq = self.ring.submission();
                sq.sync();
                !sq.is_empty() || sq.taskrun() || sq.cq_overflow()
            };
            if !left {
                return Ok(());
            }
            self.enter(0)?;
            self.reap(out)?;
            self.push_unqueued();
        }
        if self.host_efd >= 0 {
            signal_eventfd(self.host_efd);
        }
        Ok(())
    }

    /// How long dropping the ring waits for operations in the kernel (tests shorten it).
    pub fn set_drop_wait(&mut self, d: Duration) {
        self.drop_wait = d;
    }

    /// Queues a linked group; it goes into the submission queue, whole, once there is
    /// room for all of its entries, after every group queued before it.
    fn queue(&mut self, group: Vec<squeue::Entry>) {
        if !group.is_empty() {
            self.unqueued.push_back(group);
        }
        self.push_unqueued();
    }

    /// Moves queued groups into the submission queue while whole ones fit.
    fn push_unqueued(&mut self) {
        while let Some(g) = self.unqueued.pop_front() {
            let mut sq = self.ring.submission();
            if sq.capacity() - sq.len() < g.len() {
                drop(sq);
                self.unqueued.push_front(g);
                return;
            }
            for e in &g {
                // SAFETY: every pointer in `e` refers to memory held (in `held`,
                // `efd_buf`, `efd_iov` or `timespecs`) until its completion is reaped,
                // or leaked by `Drop` if it never is.
                let pushed = unsafe { sq.push(e) };
                assert!(pushed.is_ok(), "room for the whole group was checked");
            }
        }
    }

    /// Enters the kernel: submits what is queued and waits for `min_complete`
    /// completions. Transient refusals (a signal, a full completion queue, no memory
    /// for the submission right now) return `Ok(0)` and are retried by the next call;
    /// any other error means the ring cannot be trusted any more.
    fn enter(&mut self, min_complete: u32) -> io::Result<usize> {
        let to_submit = self.ring.submission().len() as u32;
        bump(&self.counts.enters);
        loop {
            // SAFETY: no extra argument is passed; the queue entries are valid (see
            // `push_unqueued`).
            let r = unsafe {
                self.ring.submitter().enter::<libc::sigset_t>(
                    to_submit,
                    min_complete,
                    EnterFlags::GETEVENTS.bits(),
                    None,
                )
            };
            match r {
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {
                    if min_complete == 0 {
                        return Ok(0);
                    }
                }
                // EBUSY: the completion queue is full (reaping makes room); EAGAIN:
                // the kernel could not allocate for the submission this time.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EAGAIN)) => {
                    return Ok(0)
                }
                Err(e) if e.raw_os_error() == Some(libc::EBADR) => {
                    return Err(io::Error::new(
                        e.kind(),
                        "io_uring dropped completions (EBADR): operations in flight will never complete",
                    ))
                }
                r => return r,
            }
        }
    }

    /// Arms a timeout `rel_ns` from now; returns its token.
    fn arm_timeout(&mut self, rel_ns: u64) -> u64 {
        self.timer_seq += 1;
        let token = TIMER_BIT | self.timer_seq;
        let ts = Box::new(
            types::Timespec::new()
                .sec(rel_ns / 1_000_000_000)
                .nsec((rel_ns % 1_000_000_000) as u32),
        );
        let e = opcode::Timeout::new(&*ts).build().user_data(token);
        self.timespecs.insert(token, ts);
        self.queue(vec![e]);
        token
    }

    /// Arms the read of the wake-up eventfd, if it is not armed.
    fn arm_eventfd(&mut self) {
        // A caller's ring has no wake-up eventfd: its thread waits only for its own I/O.
        if self.efd_armed || self.efd < 0 {
            return;
        }
        let e = if self.setup.features.read {
            bump(&self.counts.read);
            let p: *mut u64 = &mut *self.efd_buf;
            opcode::Read::new(types::Fd(self.efd), p.cast(), 8).build()
        } else {
            bump(&self.counts.readv);
            opcode::Readv::new(types::Fd(self.efd), &*self.efd_iov, 1).build()
        };
        self.queue(vec![e.user_data(EVENTFD_TOKEN)]);
        self.efd_armed = true;
    }

    /// Moves completions to `out`. Fails if the kernel dropped any (they can never be
    /// matched to their operations) or reported one this ring never submitted.
    fn reap(&mut self, out: &mut Vec<(u64, io::Result<()>)>) -> io::Result<()> {
        let cqes: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        let mut unknown = None;
        for (token, res) in cqes {
            if token == EVENTFD_TOKEN {
                self.efd_armed = false;
                continue;
            }
            if token & TIMER_BIT != 0 {
                if self.timespecs.remove(&token).is_none() {
                    unknown = Some(token);
                }
                if self.timer.is_some_and(|(_, t)| t == token) {
                    self.timer = None;
                }
                continue;
            }
            let Some(h) = self.held.remove(&token) else {
                unknown = Some(token);
                continue;
            };
            let r = if res < 0 {
                Err(io::Error::from_raw_os_error(-res))
            } else {
                let want = h.op.expected_len();
                if (res as usize) < want {
                    Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        format!("short write: {res} of {want} bytes"),
                    ))
                } else {
                    Ok(())
                }
            };
            out.push((token, r));
        }
        let lost = self
            .ring
            .completion()
            .overflow()
            .wrapping_sub(self.overflow_base)
            .wrapping_add(self.injected_lost);
        if lost > 0 {
            return Err(io::Error::other(format!(
                "the io_uring completion queue overflowed and the kernel dropped {lost} completion(s): \
                 their operations can never be matched"
            )));
        }
        if let Some(t) = unknown {
            return Err(io::Error::other(format!(
                "io_uring completed operation {t:#x}, which this ring never submitted"
            )));
        }
        Ok(())
    }

    /// Operations the kernel may still be working on (pushed to the submission queue).
    fn in_kernel(&self) -> bool {
        !self.held.is_empty() || self.efd_armed
    }
}

impl Ring for UringRing {
    /// Blocks (when `block`) until a completion arrives: an I/O, a wake-up written to
    /// the eventfd, or the timer for `deadline`. The host's "sleeping" flag is raised
    /// first and the wait skipped if it has work, so no wake-up is lost.
    fn wait(
        &mut self,
        now: u64,
        deadline: Option<u64>,
        block: bool,
        host: &dyn Host,
        out: &mut Vec<(u64, io::Result<()>)>,
    ) -> io::Result<()> {
        out.append(&mut self.early);
        self.arm_eventfd();
        if let Some(d) = deadline {
            if self.timer.is_none_or(|(t, _)| d < t) {
                let token = self.arm_timeout(d.saturating_sub(now).max(1));
                self.timer = Some((d, token));
            }
        }
        self.push_unqueued();
        // Groups still waiting for room go in after this enter: do not sleep on them.
        let block = block && out.is_empty() && self.unqueued.is_empty() && host.may_sleep();
        // A caller's ring waits for all it submitted at once (one wake-up for a linked
        // write and sync); a shard's for the first of anything.
        let want = match (block, self.wait_all) {
            (false, _) => 0,
            (true, false) => 1,
            (true, true) => self.held.len().max(1) as u32,
        };
        // Nothing to submit and no wait: without DEFER_TASKRUN the kernel posts
        // completions to the shared queue by itself, so reaping needs no system call,
        // unless some overflowed (a full completion queue): those reach the queue only
        // when the ring is entered.
        let idle = want == 0 && !self.setup.features.defer_taskrun && {
            let mut sq = self.ring.submission();
            sq.sync();
            sq.is_empty() && !sq.cq_overflow() && !sq.taskrun()
        };
        // Opt-in: poll first; what completed meanwhile needs no sleep.
        let polled = !idle && want > 0 && !self.poll.is_zero() && self.poll_for(want)?;
        let r = if idle || polled {
            Ok(0)
        } else {
            self.enter(want)
        };
        if block {
            host.awake();
        }
        r?;
        self.reap(out)?;
        self.push_unqueued();
        if self.host_waits {
            self.run_held_completions(out)?;
        }
        if !block && self.host_waits {
            // A host that sleeps elsewhere (glommio) relies on the ring's timer to wake
            // it at the deadline: if this reap took the timer that was armed, arm the
            // next one now, before the host sleeps.
            if let Some(d) = deadline {
                if self.timer.is_none() {
                    let token = self.arm_timeout(d.saturating_sub(now).max(1));
                    self.timer = Some((d, token));
                    self.push_unqueued();
                    self.enter(0)?;
                }
            }
        }
        Ok(())
    }

    /// The next wait reports that the kernel dropped a completion, as a CQ overflow
    /// that even `IORING_FEAT_NODROP` could not hold would.
    fn inject_lost_completion(&mut self) {
        self.injected_lost += 1;
    }

    fn adopt_arena(&mut self, arena: &Arc<BufferArena>) -> bool {
        self.register_arena(arena)
    }

    fn dsync_writes(&self) -> bool {
        self.setup.features.dsync_write
    }

    fn submit_linked(&mut self, ops: Vec<Submission>) {
        let capacity = self.ring.submission().capacity();
        if ops.len() > capacity {
            // A link cannot span two submissions: such a group could never go in.
            // (Never built: groups are a few writes and a sync; see ring::MAX_PIECES.)
            let n = ops.len();
            for s in ops {
                self.early.push((
                    s.token,
                    Err(io::Error::other(format!(
                        "a linked group of {n} operations is longer than the io_uring submission queue ({capacity})"
                    ))),
                ));
            }
            return;
        }
        let mut entries = Vec::with_capacity(ops.len());
        let mut ops = ops.into_iter();
        while let Some(s) = ops.next() {
            match self.entry_for(s.token, &s.op) {
                Ok((e, iov, dir)) => {
                    // The op's buffers and the iovec array are heap memory: moving
                    // their owners into `held` leaves the pointers valid.
                    self.held.insert(
                        s.token,
                        Held {
                            op: s.op,
                            _iov: iov,
                            _dir: dir,
                        },
                    );
                    entries.push(e);
                }
                Err(e) => {
                    // The entries before it still run; it fails, and the rest are
                    // cancelled as the kernel would cancel them.
                    self.early.push((s.token, Err(e)));
                    for s in ops.by_ref() {
                        self.early
                            .push((s.token, Err(io::Error::from_raw_os_error(libc::ECANCELED))));
                    }
                }
            }
        }
        let n = entries.len();
        let entries: Vec<squeue::Entry> = entries
            .into_iter()
            .enumerate()
            .map(|(i, e)| {
                if i + 1 < n {
                    e.flags(squeue::Flags::IO_LINK)
                } else {
                    e
                }
            })
            .collect();
        self.queue(entries);
    }
}

impl Drop for UringRing {
    fn drop(&mut self) {
        // Groups never pushed to the submission queue are not the kernel's: forget them.
        for g in std::mem::take(&mut self.unqueued) {
            for e in g {
                let t = e.get_user_data();
                if t == EVENTFD_TOKEN {
                    self.efd_armed = false;
                } else if t & TIMER_BIT != 0 {
                    self.timespecs.remove(&t);
                } else {
                    self.held.remove(&t);
                }
            }
        }
        // The kernel may still read buffers of operations in flight, and write the
        // eventfd buffer: wait for them all before freeing anything, for a while.
        let until = Instant::now() + self.drop_wait;
        let mut sink = Vec::new();
        let mut tick = None;
        while self.in_kernel() && Instant::now() < until {
            if self.efd_armed {
                signal_eventfd(self.efd);
            }
            // A short timer, so a wait for an operation that never completes ends.
            if tick.is_none_or(|t| !self.timespecs.contains_key(&t)) {
                tick = Some(self.arm_timeout(50_000_000));
            }
            self.push_unqueued();
            if self.enter(1).is_err() || self.reap(&mut sink).is_err() {
                break;
            }
        }
        if self.in_kernel() {
            log::error!(
                "aof2: {} io_uring operation(s) still in the kernel at shutdown; their memory is leaked, \
                 not freed, since the kernel may still use it",
                self.held.len() + usize::from(self.efd_armed)
            );
            std::mem::forget(std::mem::take(&mut self.held));
            std::mem::forget(std::mem::take(&mut self.timespecs));
            std::mem::forget(std::mem::replace(&mut self.efd_buf, Box::new(0)));
            std::mem::forget(std::mem::replace(
                &mut self.efd_iov,
                Box::new(libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                }),
            ));
            std::mem::forget(self.arena.take());
        }
    }
}
