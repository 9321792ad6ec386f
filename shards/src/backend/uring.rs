//! The io_uring backend: one ring per shard, created on the shard's own thread.
//!
//! - Setup tries `SINGLE_ISSUER | DEFER_TASKRUN` (completions are processed only when
//!   this thread enters the kernel, with no interrupting task work) and falls back to
//!   plain flags.
//! - Writes are `WRITEV` (or `WRITE_FIXED` from the registered zero chunk during segment
//!   preparation), syncs are `FSYNC` with `DATASYNC`, chained with `IOSQE_IO_LINK`
//!   (never `IO_DRAIN`: measured stalls here). A short write fails the link, so the
//!   sync after it completes `-ECANCELED` and the log is poisoned.
//! - Cross-thread wake-ups arrive through an eventfd the ring always has a read armed
//!   on; writers only write it when the shard said it is about to sleep, so a busy
//!   shard costs them no system call.
//! - The interval timer is an `IORING_OP_TIMEOUT`, armed only while some log on the
//!   shard has a deadline (unflushed data): an idle shard sleeps in the kernel with
//!   nothing armed but the eventfd read.

use super::ring::{Ring, RingOp, Submission};
use crate::buffer::{zero_chunk, BufferArena, PREP_CHUNK};
use crate::log::ops::IoData;
use io_uring::{opcode, squeue, types, EnterFlags, IoUring};
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

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
const ARENA_BLOCKS: u32 = 256;

/// Adds one to an eventfd, waking a ring that has a read armed on it. It cannot fail
/// short of a counter overflow, which the ring's read resets.
pub fn signal_eventfd(efd: RawFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a valid u64 to an open eventfd.
    unsafe { libc::write(efd, (&one as *const u64).cast(), 8) };
}

/// An operation in the kernel's hands, with everything it points to.
struct Held {
    op: RingOp,
    /// The iovec array a `WRITEV` reads (heap memory: stable while `Held` moves).
    _iov: Vec<libc::iovec>,
    /// The directory a `SyncDir` syncs, open until the sync completes.
    _dir: Option<File>,
}

/// How the ring was set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingSetup {
    /// `SINGLE_ISSUER | DEFER_TASKRUN` were accepted.
    pub single_issuer: bool,
    /// The zero chunk is a registered buffer (memlock allowed it).
    pub registered_zeros: bool,
    /// Bytes of the shard's buffer arena registered (0: none).
    pub registered_arena: usize,
}

/// One shard's ring.
pub struct UringRing {
    ring: IoUring,
    held: HashMap<u64, Held>,
    /// Results known before submission (an operation that could not be built).
    early: Vec<(u64, io::Result<()>)>,
    efd: RawFd,
    efd_buf: Box<u64>,
    efd_armed: bool,
    /// Deadline (monotonic ns) of the earliest armed timeout, with its token.
    timer: Option<(u64, u64)>,
    timer_seq: u64,
    timespecs: HashMap<u64, Box<types::Timespec>>,
    setup: RingSetup,
    /// The registered arena (dropped after the ring, which unregisters it on close).
    arena: Option<Arc<BufferArena>>,
    /// Writes issued from the registered arena, for observation.
    fixed_writes: Arc<std::sync::atomic::AtomicU64>,
}

// SAFETY: the ring is created and used on its shard thread only; `Send` lets the
// shard's state be built inside the thread's closure. Raw pointers in `Held` point to
// memory `Held` owns.
unsafe impl Send for UringRing {}

impl UringRing {
    /// Creates a ring on the calling thread (the shard thread), reading wake-ups from
    /// `efd` (an eventfd that outlives the ring). Fails when `io_uring_setup` does
    /// (blocked by seccomp, disabled by `kernel.io_uring_disabled`, too old a kernel).
    pub fn new(efd: RawFd, arena_buffers: u32) -> io::Result<UringRing> {
        let (ring, single_issuer) = match IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(ENTRIES)
        {
            Ok(r) => (r, true),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => (IoUring::new(ENTRIES)?, false),
            Err(e) => return Err(e),
        };
        if !ring.params().is_feature_nodrop() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "io_uring without IORING_FEAT_NODROP (kernel older than 5.5)",
            ));
        }
        let zeros = zero_chunk();
        let zero_iov = libc::iovec {
            // SAFETY: the zero chunk is never written after initialisation.
            iov_base: unsafe { zeros.slice(0, PREP_CHUNK) }.as_ptr() as *mut libc::c_void,
            iov_len: PREP_CHUNK,
        };
        // The zero chunk and the arena, pinned by the kernel; each charged to
        // RLIMIT_MEMLOCK unless the process has CAP_IPC_LOCK. Less where that refuses.
        let arena = (arena_buffers > 0)
            .then(|| BufferArena::new(arena_buffers, crate::log::BUF_SIZE, ARENA_BLOCKS));
        let mut registered_zeros = false;
        let mut registered_arena = 0;
        if let Some(a) = &arena {
            let (p, len) = a.region();
            let iov = [
                zero_iov,
                libc::iovec {
                    iov_base: p as *mut libc::c_void,
                    iov_len: len,
                },
            ];
            // SAFETY: the zero chunk is static; the arena outlives the ring (`self.arena`
            // is dropped after the ring's fd is closed, which unregisters it).
            match unsafe { ring.submitter().register_buffers(&iov) } {
                Ok(()) => {
                    registered_zeros = true;
                    registered_arena = len;
                }
                Err(e) => log::info!(
                    "aof2: io_uring refused to register {} MiB of buffers ({e}); trying the zero chunk alone",
                    (len + PREP_CHUNK) >> 20
                ),
            }
        }
        if !registered_zeros {
            // SAFETY: the zero chunk is a static allocation that lives as long as the process.
            match unsafe { ring.submitter().register_buffers(&[zero_iov]) } {
                Ok(()) => registered_zeros = true,
                // ENOMEM: RLIMIT_MEMLOCK too small for the pinned pages. Plain writes work.
                Err(e) => log::info!(
                    "aof2: io_uring buffer registration refused ({e}); using unregistered buffers"
                ),
            }
        }
        Ok(UringRing {
            ring,
            held: HashMap::new(),
            early: Vec::new(),
            efd,
            efd_buf: Box::new(0),
            efd_armed: false,
            timer: None,
            timer_seq: 0,
            timespecs: HashMap::new(),
            setup: RingSetup {
                single_issuer,
                registered_zeros,
                registered_arena,
            },
            arena: arena.filter(|_| registered_arena > 0),
            fixed_writes: Arc::default(),
        })
    }

    /// Counts writes issued from the registered arena into `counter` from now on.
    pub fn count_fixed_writes(&mut self, counter: Arc<std::sync::atomic::AtomicU64>) {
        self.fixed_writes = counter;
    }

    /// The registered arena logs on this shard should take their buffers from.
    pub fn arena(&self) -> Option<Arc<BufferArena>> {
        self.arena.clone()
    }

    /// How the ring was set up.
    pub fn setup(&self) -> RingSetup {
        self.setup
    }

    /// Operations in flight.
    pub fn in_flight(&self) -> usize {
        self.held.len()
    }

    /// Pushes entries as one unit: submits first if they do not fit.
    fn push_all(&mut self, entries: &[squeue::Entry]) {
        let free = {
            let sq = self.ring.submission();
            sq.capacity() - sq.len()
        };
        if free < entries.len() {
            // Submission only (no wait): errors here resurface on the next enter.
            let _ = self.enter(0);
        }
        let mut sq = self.ring.submission();
        for e in entries {
            // SAFETY: every pointer in `e` refers to memory held (in `held`, `efd_buf`
            // or `timespecs`) until its completion is reaped.
            if unsafe { sq.push(e) }.is_err() {
                // Cannot happen after the submit above unless a group is longer than
                // the queue; such a group is never built (see ring::MAX_PIECES).
                panic!("io_uring submission queue overflow");
            }
        }
    }

    fn enter(&mut self, min_complete: u32) -> io::Result<usize> {
        let to_submit = self.ring.submission().len() as u32;
        loop {
            // SAFETY: no extra argument is passed; the queue entries are valid (see push_all).
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
                // EBUSY: the completion queue is full; reaping makes room.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Ok(0),
                r => return r,
            }
        }
    }

    /// True when every piece lies in the registered arena (one fixed buffer).
    fn in_arena(&self, data: &[IoData]) -> bool {
        self.arena.as_ref().is_some_and(|a| {
            data.iter().all(|d| {
                let b = d.bytes();
                a.contains(b.as_ptr(), b.len())
            })
        })
    }

    /// The queue entry for `op`, with the iovec array and directory handle it points to.
    #[allow(clippy::type_complexity)]
    fn entry_for(
        &self,
        token: u64,
        op: &RingOp,
    ) -> io::Result<(squeue::Entry, Vec<libc::iovec>, Option<File>)> {
        let fd_of = |f: &dyn super::FsFile| {
            f.raw_fd().map(types::Fd).ok_or_else(|| {
                io::Error::new(io::ErrorKind::Unsupported, "not a kernel file descriptor")
            })
        };
        let (entry, iov, dir) = match op {
            RingOp::Write {
                file,
                offset,
                data,
                dsync,
            } => {
                let fd = fd_of(&**file)?;
                let flags = if *dsync { libc::RWF_DSYNC } else { 0 };
                match data.as_slice() {
                    [IoData::Zeros(n)] if self.setup.registered_zeros => {
                        // SAFETY: the zero chunk is static and never written.
                        let p = unsafe { zero_chunk().slice(0, *n) }.as_ptr();
                        let e = opcode::WriteFixed::new(fd, p, *n as u32, ZERO_BUF)
                            .offset(*offset)
                            .rw_flags(flags)
                            .build();
                        (e, Vec::new(), None)
                    }
                    [one] if self.in_arena(data) => {
                        self.fixed_writes.fetch_add(1, Ordering::Relaxed);
                        let b = one.bytes();
                        let e = opcode::WriteFixed::new(fd, b.as_ptr(), b.len() as u32, ARENA_BUF)
                            .offset(*offset)
                            .rw_flags(flags)
                            .build();
                        (e, Vec::new(), None)
                    }
                    [one] => {
                        let b = one.bytes();
                        let e = opcode::Write::new(fd, b.as_ptr(), b.len() as u32)
                            .offset(*offset)
                            .rw_flags(flags)
                            .build();
                        (e, Vec::new(), None)
                    }
                    pieces if self.in_arena(data) => {
                        self.fixed_writes.fetch_add(1, Ordering::Relaxed);
                        let iov = iovecs(pieces);
                        let e =
                            opcode::WritevFixed::new(fd, iov.as_ptr(), iov.len() as u32, ARENA_BUF)
                                .offset(*offset)
                                .rw_flags(flags)
                                .build();
                        (e, iov, None)
                    }
                    pieces => {
                        let iov = iovecs(pieces);
                        let e = opcode::Writev::new(fd, iov.as_ptr(), iov.len() as u32)
                            .offset(*offset)
                            .rw_flags(flags)
                            .build();
                        (e, iov, None)
                    }
                }
            }
            RingOp::Sync { file } => {
                let e = opcode::Fsync::new(fd_of(&**file)?)
                    .flags(types::FsyncFlags::DATASYNC)
                    .build();
                (e, Vec::new(), None)
            }
            RingOp::SyncDir { path } => {
                let dir = File::open(path)?;
                let e = opcode::Fsync::new(types::Fd(dir.as_raw_fd())).build();
                (e, Vec::new(), Some(dir))
            }
        };
        Ok((entry.user_data(token), iov, dir))
    }

    /// Waits for completions: blocks until at least one arrives (an I/O, a wake-up
    /// written to the eventfd, or the timer for `deadline`) when `block`, else only
    /// reaps what is there. `sleeping` is raised before blocking, and the wait is
    /// skipped if `has_work` then reports queued requests, so no wake-up is lost.
    /// Completions of submitted operations are appended to `out`.
    pub fn wait(
        &mut self,
        now: u64,
        deadline: Option<u64>,
        block: bool,
        sleeping: &AtomicBool,
        has_work: impl Fn() -> bool,
        out: &mut Vec<(u64, io::Result<()>)>,
    ) -> io::Result<()> {
        out.append(&mut self.early);
        if !self.efd_armed {
            let p: *mut u64 = &mut *self.efd_buf;
            let e = opcode::Read::new(types::Fd(self.efd), p.cast(), 8)
                .build()
                .user_data(EVENTFD_TOKEN);
            self.push_all(&[e]);
            self.efd_armed = true;
        }
        if let Some(d) = deadline {
            if self.timer.is_none_or(|(t, _)| d < t) {
                self.timer_seq += 1;
                let token = TIMER_BIT | self.timer_seq;
                let rel = d.saturating_sub(now).max(1);
                let ts = Box::new(
                    types::Timespec::new()
                        .sec(rel / 1_000_000_000)
                        .nsec((rel % 1_000_000_000) as u32),
                );
                let e = opcode::Timeout::new(&*ts).build().user_data(token);
                self.timespecs.insert(token, ts);
                self.push_all(&[e]);
                self.timer = Some((d, token));
            }
        }
        let mut block = block && out.is_empty();
        if block {
            sleeping.store(true, Ordering::SeqCst);
            if has_work() {
                block = false;
            }
        }
        let r = self.enter(u32::from(block));
        sleeping.store(false, Ordering::SeqCst);
        r?;
        self.reap(out);
        Ok(())
    }

    fn reap(&mut self, out: &mut Vec<(u64, io::Result<()>)>) {
        let cqes: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (token, res) in cqes {
            if token == EVENTFD_TOKEN {
                self.efd_armed = false;
                continue;
            }
            if token & TIMER_BIT != 0 {
                self.timespecs.remove(&token);
                if self.timer.is_some_and(|(_, t)| t == token) {
                    self.timer = None;
                }
                continue;
            }
            let Some(h) = self.held.remove(&token) else {
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
    }
}

fn iovecs(pieces: &[IoData]) -> Vec<libc::iovec> {
    pieces
        .iter()
        .map(|d| {
            let b = d.bytes();
            libc::iovec {
                iov_base: b.as_ptr() as *mut libc::c_void,
                iov_len: b.len(),
            }
        })
        .collect()
}

impl Ring for UringRing {
    fn submit_linked(&mut self, ops: Vec<Submission>) {
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
        self.push_all(&entries);
    }
}

impl Drop for UringRing {
    fn drop(&mut self) {
        // The kernel may still read buffers of operations in flight, and write the
        // eventfd buffer: complete them all before freeing anything.
        let mut sink = Vec::new();
        while !self.held.is_empty() || self.efd_armed {
            if self.efd_armed {
                signal_eventfd(self.efd);
            }
            if self.enter(1).is_err() {
                break;
            }
            self.reap(&mut sink);
        }
    }
}
