//! Executes a log core's operation chains with blocking calls on an [`Fs`]: the
//! portable backend's write path (`pwritev` + `fdatasync` on the shard thread), and the
//! simulated disk's. One `step` polls the core, runs what it asked for outside the log
//! lock, and reports the completions back under it.

use crate::backend::{write_all_at, Fs, FsFile, OpenMode};
use crate::log::ops::{Chain, OpKind};
use crate::log::{LogCore, Progress};
use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

/// How a log's segment files are written, as [`Driver::io_mode`] reports it.
pub mod io_mode {
    /// No segment file opened yet.
    pub const UNKNOWN: u8 = 0;
    /// O_DIRECT.
    pub const DIRECT: u8 = 1;
    /// Through the page cache (the file system refused O_DIRECT or its alignment).
    pub const BUFFERED: u8 = 2;
}

/// Open segment files of one log, and the file system they live on.
pub struct Driver {
    fs: Arc<dyn Fs>,
    files: HashMap<u64, Arc<dyn FsFile>>,
    direct: bool,
    /// Segments with completed writes no sync has covered yet (ring backends).
    dirty: std::collections::HashSet<u64>,
    /// How the last segment file opened is written ([`io_mode`]).
    mode: Arc<AtomicU8>,
}

/// What one step did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StepOutcome {
    /// Some operation ran: call `step` again soon.
    pub did_work: bool,
    /// The durable position moved or the log was poisoned.
    pub wake_waiters: bool,
}

fn lock(core: &Mutex<LogCore>) -> std::sync::MutexGuard<'_, LogCore> {
    core.lock().unwrap_or_else(|p| p.into_inner())
}

impl Driver {
    /// `direct`: open segment files with O_DIRECT where the file system supports it.
    pub fn new(fs: Arc<dyn Fs>, direct: bool) -> Driver {
        Driver {
            fs,
            files: HashMap::new(),
            direct,
            dirty: Default::default(),
            mode: Arc::default(),
        }
    }

    /// Whether segment files are written with O_DIRECT ([`io_mode`]), updated as files
    /// are opened; shared, so the log's handle can report it.
    pub fn io_mode(&self) -> Arc<AtomicU8> {
        self.mode.clone()
    }

    fn opened(&mut self, seg: u64, f: Arc<dyn FsFile>) {
        let m = if f.is_direct() {
            io_mode::DIRECT
        } else {
            io_mode::BUFFERED
        };
        self.mode.store(m, Ordering::Relaxed);
        self.files.insert(seg, f);
    }

    /// True when segment `seg` may hold a completed write no sync covered.
    pub fn is_dirty(&self, seg: u64) -> bool {
        self.dirty.contains(&seg)
    }

    /// Records whether segment `seg` holds unsynced writes.
    pub fn set_dirty(&mut self, seg: u64, dirty: bool) {
        if dirty {
            self.dirty.insert(seg);
        } else {
            self.dirty.remove(&seg);
        }
    }

    /// The open handle of segment `seg`.
    pub fn file(&self, seg: u64) -> io::Result<&Arc<dyn FsFile>> {
        self.files
            .get(&seg)
            .ok_or_else(|| io::Error::other(format!("no open file for segment {seg}")))
    }

    /// Runs one operation with blocking calls.
    pub fn run(&mut self, kind: &OpKind) -> io::Result<()> {
        log::trace!("aof2: {kind:?}");
        match kind {
            OpKind::Create { seg, path, mode } => {
                let f = self.fs.open(
                    path,
                    OpenMode::CreateNew {
                        direct: self.direct,
                        mode: *mode,
                    },
                )?;
                self.opened(*seg, f);
                Ok(())
            }
            OpKind::Open { seg, path } => {
                let f = self.fs.open(
                    path,
                    OpenMode::Write {
                        direct: self.direct,
                    },
                )?;
                self.opened(*seg, f);
                Ok(())
            }
            OpKind::Write { seg, offset, data } => {
                let slices: Vec<&[u8]> = data.iter().map(|d| d.bytes()).collect();
                // IOV_MAX is 1024; a very large record can span more buffers.
                let mut at = *offset;
                for part in slices.chunks(512) {
                    write_all_at(&**self.file(*seg)?, at, part)?;
                    at += part.iter().map(|s| s.len() as u64).sum::<u64>();
                }
                Ok(())
            }
            OpKind::Sync { seg } => self.file(*seg)?.fdatasync(),
            OpKind::Close { seg } => {
                self.files.remove(seg);
                self.dirty.remove(seg);
                Ok(())
            }
            OpKind::Rename { from, to } => self.fs.rename(from, to),
            OpKind::SyncDir { path } => self.fs.fsync_dir(path),
            OpKind::Unlink { path } => match self.fs.unlink(path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                r => r,
            },
        }
    }

    /// Runs a chain in order; after a failure the rest are cancelled, as in an
    /// io_uring link chain. The chain (and the buffers it holds) is dropped before
    /// the results are returned.
    pub fn run_chain(&mut self, chain: Chain) -> Vec<(u64, io::Result<()>)> {
        let mut out = Vec::with_capacity(chain.ops.len());
        let mut failed = false;
        for op in chain.ops {
            let r = if failed {
                Err(io::Error::from_raw_os_error(libc::ECANCELED))
            } else {
                self.run(&op.kind)
            };
            failed |= r.is_err();
            out.push((op.id, r));
        }
        out
    }

    /// Polls the core once, runs the chains it returns, and reports their completions.
    pub fn step(&mut self, core: &Mutex<LogCore>, now: u64) -> StepOutcome {
        let chains = lock(core).poll(now);
        if chains.is_empty() {
            return StepOutcome::default();
        }
        let mut results = Vec::new();
        for c in chains {
            results.extend(self.run_chain(c));
        }
        let mut core = lock(core);
        let mut progress = Progress::default();
        for (id, r) in results {
            progress.wake_waiters |= core.complete(id, r).wake_waiters;
        }
        StepOutcome {
            did_work: true,
            wake_waiters: progress.wake_waiters,
        }
    }

    /// Closes every open file.
    pub fn close_all(&mut self) {
        self.files.clear();
    }
}
