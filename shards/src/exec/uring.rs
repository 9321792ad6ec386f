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

use super::chains::{Ring, RingOp, Submission};
use super::Host;
use crate::buffer::{zero_chunk, BufferArena, PREP_CHUNK};
use crate::config::UringFeature;
use crate::log::ops::IoData;
use io_uring::{opcode, squeue, types, EnterFlags, IoUring, Probe};
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
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
const ARENA_BLOCKS: u32 = 256;
/// How long dropping a ring waits for operations still in the kernel before it leaks
/// their memory instead of freeing it.
const DROP_WAIT: Duration = Duration::from_secs(10);

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

/// The optional io_uring features a ring uses: what the kernel has, minus those the
/// configuration disables ([`crate::config::AofManagerConfig::io_uring_disable`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RingFeatures {
    /// `IORING_SETUP_SINGLE_ISSUER` (6.0).
    pub single_issuer: bool,
    /// `IORING_SETUP_DEFER_TASKRUN` (6.1).
    pub defer_taskrun: bool,
    /// The opcode list came from `IORING_REGISTER_PROBE` (5.6); otherwise Linux 5.5's
    /// opcodes were assumed.
    pub probed: bool,
    /// `IORING_OP_WRITE` (5.6).
    pub write: bool,
    /// `IORING_OP_READ` (5.6).
    pub read: bool,
    /// `IORING_OP_WRITE_FIXED` (5.1), with registered buffers allowed.
    pub write_fixed: bool,
    /// `IORING_OP_WRITEV_FIXED` (6.15), with registered buffers allowed.
    pub writev_fixed: bool,
}

/// Operations a ring submitted, by opcode: what tests read to show that an opcode
/// the probe did not list is never submitted.
#[derive(Debug, Default)]
pub struct OpCounts {
    /// `IORING_OP_WRITE`.
    pub write: AtomicU64,
    /// `IORING_OP_WRITEV`.
    pub writev: AtomicU64,
    /// `IORING_OP_WRITE_FIXED` (the zero chunk or the arena).
    pub write_fixed: AtomicU64,
    /// `IORING_OP_WRITEV_FIXED`.
    pub writev_fixed: AtomicU64,
    /// `IORING_OP_FSYNC` (files and directories).
    pub fsync: AtomicU64,
    /// `IORING_OP_READ` (the wake-up eventfd).
    pub read: AtomicU64,
    /// `IORING_OP_READV` (the wake-up eventfd, without `READ`).
    pub readv: AtomicU64,
    /// Writes of log data, headers and footers from the registered arena.
    pub arena_writes: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// How the ring was set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingSetup {
    /// The optional features in use.
    pub features: RingFeatures,
    /// The zero chunk is a registered buffer (memlock allowed it).
    pub registered_zeros: bool,
    /// Bytes of the shard's buffer arena registered (0: none).
    pub registered_arena: usize,
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
    _not_send: PhantomData<*const ()>,
}

/// Opcodes Linux 5.5 has (the oldest kernel with `IORING_FEAT_NODROP`), assumed where
/// the kernel cannot be probed.
const LINUX_5_5_OPS: [u8; 5] = [
    opcode::Readv::CODE,
    opcode::Writev::CODE,
    opcode::Fsync::CODE,
    opcode::WriteFixed::CODE,
    opcode::Timeout::CODE,
];

impl UringRing {
    /// Creates a ring on the calling thread (the shard thread), reading wake-ups from
    /// `efd` (an eventfd that outlives the ring), registering `arena_buffers` log
    /// buffers where memlock allows, and using no feature listed in `disable`. Fails
    /// when `io_uring_setup` does (blocked by seccomp, disabled by
    /// `kernel.io_uring_disabled`, too old a kernel) or an opcode the engine cannot do
    /// without is missing.
    pub fn new(efd: RawFd, arena_buffers: u32, disable: &[UringFeature]) -> io::Result<UringRing> {
        Self::with_entries(efd, arena_buffers, disable, ENTRIES)
    }

    /// As `new`, with a submission queue of `entries` (tests use a tiny one).
    pub fn with_entries(
        efd: RawFd,
        arena_buffers: u32,
        disable: &[UringFeature],
        entries: u32,
    ) -> io::Result<UringRing> {
        let off = |f: UringFeature| disable.contains(&f);
        let want_si = !off(UringFeature::SingleIssuer);
        let want_dt = want_si && !off(UringFeature::DeferTaskrun);
        // Newest flags first; a kernel that lacks one refuses the setup with EINVAL.
        let mut tries = Vec::new();
        if want_dt {
            tries.push((true, true));
        }
        if want_si {
            tries.push((true, false));
        }
        tries.push((false, false));
        let mut built = None;
        for (si, dt) in tries {
            let mut b = IoUring::builder();
            if si {
                b.setup_single_issuer();
            }
            if dt {
                b.setup_defer_taskrun();
            }
            match b.build(entries) {
                Ok(r) => {
                    built = Some((r, si, dt));
                    break;
                }
                // (`dt` implies `si`: the plain setup is never retried.)
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) && si => {}
                Err(e) => return Err(e),
            }
        }
        let (mut ring, single_issuer, defer_taskrun) = built.expect("plain setup is the last try");
        if !ring.params().is_feature_nodrop() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "io_uring without IORING_FEAT_NODROP (kernel older than 5.5)",
            ));
        }
        let mut probe = Probe::new();
        let probed =
            !off(UringFeature::Probe) && ring.submitter().register_probe(&mut probe).is_ok();
        let has = |code: u8| {
            if probed {
                probe.is_supported(code)
            } else {
                LINUX_5_5_OPS.contains(&code)
            }
        };
        for (code, name) in [
            (opcode::Writev::CODE, "IORING_OP_WRITEV"),
            (opcode::Fsync::CODE, "IORING_OP_FSYNC"),
            (opcode::Timeout::CODE, "IORING_OP_TIMEOUT"),
        ] {
            if !has(code) {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("io_uring lacks {name}, which the engine needs"),
                ));
            }
        }
        let read = has(opcode::Read::CODE) && !off(UringFeature::Read);
        if !read && !has(opcode::Readv::CODE) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "io_uring lacks IORING_OP_READ and IORING_OP_READV, which the engine needs",
            ));
        }
        let registered = !off(UringFeature::RegisteredBuffers);
        let mut features = RingFeatures {
            single_issuer,
            defer_taskrun,
            probed,
            write: has(opcode::Write::CODE) && !off(UringFeature::Write),
            read,
            write_fixed: registered
                && has(opcode::WriteFixed::CODE)
                && !off(UringFeature::WriteFixed),
            writev_fixed: registered
                && has(opcode::WritevFixed::CODE)
                && !off(UringFeature::WritevFixed),
        };
        let zeros = zero_chunk();
        let zero_iov = libc::iovec {
            // SAFETY: the zero chunk is never written after initialisation.
            iov_base: unsafe { zeros.slice(0, PREP_CHUNK) }.as_ptr() as *mut libc::c_void,
            iov_len: PREP_CHUNK,
        };
        // The zero chunk and the arena, pinned by the kernel; each charged to
        // RLIMIT_MEMLOCK unless the process has CAP_IPC_LOCK. Less where that refuses,
        // and nothing where no fixed-buffer opcode may be used.
        let use_fixed = features.write_fixed || features.writev_fixed;
        let arena = (use_fixed && arena_buffers > 0)
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
            // is dropped after the ring's fd is closed, which unregisters it, or leaked).
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
        if use_fixed && !registered_zeros {
            // SAFETY: the zero chunk is a static allocation that lives as long as the process.
            match unsafe { ring.submitter().register_buffers(&[zero_iov]) } {
                Ok(()) => registered_zeros = true,
                // ENOMEM: RLIMIT_MEMLOCK too small for the pinned pages. Plain writes work.
                Err(e) => log::info!(
                    "aof2: io_uring buffer registration refused ({e}); using unregistered buffers"
                ),
            }
        }
        if !registered_zeros {
            features.write_fixed = false;
            features.writev_fixed = false;
        }
        log::debug!("aof2: io_uring ring set up with {features:?}");
        let overflow_base = ring.completion().overflow();
        let mut efd_buf = Box::new(0u64);
        let efd_iov = Box::new(libc::iovec {
            iov_base: (&mut *efd_buf as *mut u64).cast(),
            iov_len: 8,
        });
        Ok(UringRing {
            ring,
            held: HashMap::new(),
            unqueued: VecDeque::new(),
            early: Vec::new(),
            efd,
            efd_buf,
            efd_iov,
            efd_armed: false,
            timer: None,
            timer_seq: 0,
            timespecs: HashMap::new(),
            setup: RingSetup {
                features,
                registered_zeros,
                registered_arena,
            },
            arena: arena.filter(|_| registered_arena > 0),
            counts: Arc::default(),
            overflow_base,
            injected_lost: 0,
            drop_wait: DROP_WAIT,
            _not_send: PhantomData,
        })
    }

    /// Counts the operations submitted into `counts` from now on.
    pub fn count_ops(&mut self, counts: Arc<OpCounts>) {
        self.counts = counts;
    }

    /// The registered arena logs on this shard should take their buffers from.
    pub fn arena(&self) -> Option<Arc<BufferArena>> {
        self.arena.clone()
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
    /// Only opcodes in `self.setup.features` (or required ones) are built.
    #[allow(clippy::type_complexity)]
    fn entry_for(
        &self,
        token: u64,
        op: &RingOp,
    ) -> io::Result<(squeue::Entry, Vec<libc::iovec>, Option<File>)> {
        let fd_of = |f: &dyn crate::fs::FsFile| {
            f.raw_fd().map(types::Fd).ok_or_else(|| {
                io::Error::new(io::ErrorKind::Unsupported, "not a kernel file descriptor")
            })
        };
        let f = self.setup.features;
        let c = &self.counts;
        let (entry, iov, dir) = match op {
            RingOp::Write {
                file,
                offset,
                data,
                dsync,
            } => {
                let fd = fd_of(&**file)?;
                assert!(
                    !data.is_empty() && data.iter().all(|d| !d.is_empty()),
                    "a write with an empty piece (WRITEV_FIXED refuses them)"
                );
                let flags = if *dsync { libc::RWF_DSYNC } else { 0 };
                match data.as_slice() {
                    [IoData::Zeros(n)] if f.write_fixed => {
                        bump(&c.write_fixed);
                        // SAFETY: the zero chunk is static and never written.
                        let p = unsafe { zero_chunk().slice(0, *n) }.as_ptr();
                        let e = opcode::WriteFixed::new(fd, p, *n as u32, ZERO_BUF)
                            .offset(*offset)
                            .rw_flags(flags)
                            .build();
                        (e, Vec::new(), None)
                    }
                    [one] if f.write_fixed && self.in_arena(data) => {
                        bump(&c.write_fixed);
                        bump(&c.arena_writes);
                        let b = one.bytes();
                        let e = opcode::WriteFixed::new(fd, b.as_ptr(), b.len() as u32, ARENA_BUF)
                            .offset(*offset)
                            .rw_flags(flags)
                            .build();
                        (e, Vec::new(), None)
                    }
                    [one] if f.write => {
                        bump(&c.write);
                        let b = one.bytes();
                        let e = opcode::Write::new(fd, b.as_ptr(), b.len() as u32)
                            .offset(*offset)
                            .rw_flags(flags)
                            .build();
                        (e, Vec::new(), None)
                    }
                    pieces if pieces.len() > 1 && f.writev_fixed && self.in_arena(data) => {
                        bump(&c.writev_fixed);
                        bump(&c.arena_writes);
                        let iov = iovecs(pieces);
                        let e =
                            opcode::WritevFixed::new(fd, iov.as_ptr(), iov.len() as u32, ARENA_BUF)
                                .offset(*offset)
                                .rw_flags(flags)
                                .build();
                        (e, iov, None)
                    }
                    pieces => {
                        bump(&c.writev);
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
                bump(&c.fsync);
                let e = opcode::Fsync::new(fd_of(&**file)?)
                    .flags(types::FsyncFlags::DATASYNC)
                    .build();
                (e, Vec::new(), None)
            }
            RingOp::SyncDir { path } => {
                let dir = File::open(path)?;
                bump(&c.fsync);
                let e = opcode::Fsync::new(types::Fd(dir.as_raw_fd())).build();
                (e, Vec::new(), Some(dir))
            }
        };
        Ok((entry.user_data(token), iov, dir))
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
        if self.efd_armed {
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
        let r = self.enter(u32::from(block));
        if block {
            host.awake();
        }
        r?;
        self.reap(out)?;
        self.push_unqueued();
        Ok(())
    }

    /// The next wait reports that the kernel dropped a completion, as a CQ overflow
    /// that even `IORING_FEAT_NODROP` could not hold would.
    fn inject_lost_completion(&mut self) {
        self.injected_lost += 1;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::AlignedBuf;
    use crate::exec::NeverSleep;
    use crate::fs::posix::PosixFs;
    use crate::fs::{Fs, OpenMode};
    use std::os::fd::{FromRawFd, OwnedFd};

    fn eventfd() -> OwnedFd {
        // SAFETY: plain syscall; the result is checked before being owned.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        assert!(fd >= 0);
        // SAFETY: a fresh descriptor nothing else owns.
        unsafe { OwnedFd::from_raw_fd(fd) }
    }

    fn ring_or_skip(efd: &OwnedFd, entries: u32) -> Option<UringRing> {
        match UringRing::with_entries(efd.as_raw_fd(), 0, &[], entries) {
            Ok(r) => Some(r),
            Err(e) => {
                assert!(
                    std::env::var("AOF2_REQUIRE_URING").as_deref() != Ok("1"),
                    "io_uring required: {e}"
                );
                eprintln!("io_uring unavailable ({e}); nothing to check");
                None
            }
        }
    }

    fn block_of(byte: u8) -> IoData {
        let b = AlignedBuf::zeroed(crate::format::BLOCK);
        // SAFETY: a fresh block, ours alone.
        unsafe { b.write(0, &[byte; crate::format::BLOCK]) };
        IoData::Owned(b)
    }

    #[test]
    fn a_full_submission_queue_queues_whole_groups_in_order_and_never_panics() {
        let efd = eventfd();
        let Some(mut ring) = ring_or_skip(&efd, 4) else {
            return;
        };
        let d = tempfile::tempdir().unwrap();
        let file = PosixFs::default()
            .open(&d.path().join("f"), OpenMode::create_new(false))
            .unwrap();
        // 40 groups of three linked entries into a queue of four: at most one group
        // fits at a time, and none may be split.
        let mut token = 0;
        for g in 0..40u64 {
            let mut subs = Vec::new();
            for k in 0..2u64 {
                subs.push(Submission {
                    token,
                    op: RingOp::Write {
                        file: file.clone(),
                        offset: (g * 2 + k) * crate::format::BLOCK as u64,
                        data: vec![block_of((g * 2 + k) as u8)],
                        dsync: false,
                    },
                });
                token += 1;
            }
            subs.push(Submission {
                token,
                op: RingOp::Sync { file: file.clone() },
            });
            token += 1;
            ring.submit_linked(subs);
        }
        assert!(ring.unqueued() > 30, "most groups wait for room");
        // A group that could never fit fails instead of panicking.
        ring.submit_linked(
            (1000..1005)
                .map(|t| Submission {
                    token: t,
                    op: RingOp::Sync { file: file.clone() },
                })
                .collect(),
        );
        let mut done = Vec::new();
        while done.len() < 125 {
            ring.wait(0, None, true, &NeverSleep, &mut done).unwrap();
        }
        let (ok, failed): (Vec<_>, Vec<_>) = done.iter().partition(|(_, r)| r.is_ok());
        assert_eq!(ok.len(), 120, "every queued operation completed");
        assert!(failed.iter().all(|(t, _)| (1000..1005).contains(t)));
        let mut got = vec![0u8; 80 * crate::format::BLOCK];
        crate::fs::read_exact_at(&*file, 0, &mut got).unwrap();
        for (i, b) in got.chunks(crate::format::BLOCK).enumerate() {
            assert!(b.iter().all(|&x| x == i as u8), "block {i}");
        }
        assert_eq!(ring.in_flight(), 0);
    }

    #[test]
    fn a_lost_completion_fails_the_ring_instead_of_wedging_it() {
        let efd = eventfd();
        let Some(mut ring) = ring_or_skip(&efd, 8) else {
            return;
        };
        ring.inject_lost_completion();
        let mut out = Vec::new();
        let e = ring
            .wait(0, None, false, &NeverSleep, &mut out)
            .unwrap_err();
        assert!(e.to_string().contains("dropped 1 completion"), "{e}");
    }

    #[test]
    fn dropping_a_ring_with_an_operation_that_never_completes_returns_and_leaks() {
        let efd = eventfd();
        let Some(mut ring) = ring_or_skip(&efd, 8) else {
            return;
        };
        // A one-hour timeout stands in for an operation the kernel never finishes: held
        // like an I/O, so `Drop` must wait for it and then give up.
        let ts = Box::new(types::Timespec::new().sec(3600));
        let e = opcode::Timeout::new(&*ts).build().user_data(7);
        let d = tempfile::tempdir().unwrap();
        let file = PosixFs::default()
            .open(&d.path().join("f"), OpenMode::create_new(false))
            .unwrap();
        ring.held.insert(
            7,
            Held {
                op: RingOp::Sync { file },
                _iov: Vec::new(),
                _dir: None,
            },
        );
        std::mem::forget(ts); // the kernel copied it at submission; leaked for the test
        ring.queue(vec![e]);
        ring.wait(0, None, false, &NeverSleep, &mut Vec::new())
            .unwrap();
        ring.set_drop_wait(Duration::from_millis(200));
        let t = Instant::now();
        drop(ring);
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "drop returned after {:?}",
            t.elapsed()
        );
    }
}
