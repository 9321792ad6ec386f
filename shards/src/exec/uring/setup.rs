//! Setting a ring up on the kernel it finds: the setup flags by trying them (newest
//! first), the opcodes by `IORING_REGISTER_PROBE` (Linux 5.5's set where there is no
//! probe), and the registered buffers (the zero chunk and the shard's arena) where
//! memlock allows and a fixed-buffer opcode may be used.

use super::{UringRing, DROP_WAIT, ENTRIES};
use crate::buffer::{zero_chunk, PREP_CHUNK};
use crate::config::UringFeature;
use io_uring::{opcode, IoUring, Probe};
use std::collections::{HashMap, VecDeque};
use std::io;
use std::marker::PhantomData;
use std::os::fd::RawFd;
use std::sync::Arc;

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
    /// `RWF_DSYNC` writes stand in for a write and its `fdatasync` into a clean file.
    pub dsync_write: bool,
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
    /// `efd` (an eventfd that outlives the ring; negative for none), registering `arena_buffers` log
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
                // TASKRUN_FLAG (5.19) with it: the kernel flags completions it still
                // holds as task work, which a wait must run before its host sleeps.
                b.setup_defer_taskrun().setup_taskrun_flag();
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
            dsync_write: !off(UringFeature::DsyncWrite),
        };
        let zeros = zero_chunk();
        let zero_iov = libc::iovec {
            // SAFETY: the zero chunk is never written after initialisation.
            iov_base: unsafe { zeros.slice(0, PREP_CHUNK) }.as_ptr() as *mut libc::c_void,
            iov_len: PREP_CHUNK,
        };
        // The zero chunk, pinned by the kernel (charged to RLIMIT_MEMLOCK unless the
        // process has CAP_IPC_LOCK); nothing where no fixed-buffer opcode may be used.
        // The shard's arena joins it when the first log is placed on the shard
        // (`adopt_arena`): a shard with no log pins no arena.
        let use_fixed = features.write_fixed || features.writev_fixed;
        let mut registered_zeros = false;
        if use_fixed {
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
                registered_arena: 0,
            },
            arena: None,
            arena_buffers: if registered_zeros { arena_buffers } else { 0 },
            counts: Arc::default(),
            overflow_base,
            injected_lost: 0,
            drop_wait: DROP_WAIT,
            wait_all: false,
            host_waits: false,
            host_efd: -1,
            poll: std::time::Duration::ZERO,
            _not_send: PhantomData,
        })
    }
}
