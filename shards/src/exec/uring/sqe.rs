//! Submission entries for operations: `WRITE`, `WRITEV`, their `_FIXED` forms from
//! registered memory, and `FSYNC`, each only where the ring's features allow it, with
//! the iovec arrays and directory handles the entries point to.

use super::{UringRing, ARENA_BUF, ZERO_BUF};
use crate::buffer::zero_chunk;
use crate::exec::chains::RingOp;
use crate::log::ops::IoData;
use io_uring::{opcode, squeue, types};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};

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
    /// `io_uring_enter` system calls (submitting, waiting, or both).
    pub enters: AtomicU64,
    /// Blocking waits that polling answered (`completion_poll_us`).
    pub poll_hits: AtomicU64,
    /// Blocking waits that polled in vain, then slept.
    pub poll_misses: AtomicU64,
}

pub(super) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl UringRing {
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
    pub(super) fn entry_for(
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
