//! A log's I/O state: its open segment files, and which of them hold completed writes
//! no sync has covered yet ("dirty"). It lives in the log's shared state rather than in
//! an executor, so whoever holds the log's data-chain slot (the shard's turn today, a
//! committing caller later) reaches the same files; its lock is held only to look a
//! handle up or change the table, never across I/O.

use super::create_apart::create_apart;
use crate::fs::{Fs, FsFile, OpenMode};
use crate::log::ops::OpKind;
use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// How a log's segment files are written, as [`LogFiles::io_mode`] reports it.
pub mod io_mode {
    /// No segment file opened yet.
    pub const UNKNOWN: u8 = 0;
    /// O_DIRECT.
    pub const DIRECT: u8 = 1;
    /// Through the page cache (the file system refused O_DIRECT or its alignment).
    pub const BUFFERED: u8 = 2;
}

#[derive(Default)]
struct Table {
    files: HashMap<u64, Arc<dyn FsFile>>,
    /// Inode numbers of the open files that have one, read once at open (a `stat` of
    /// the active file would give its next write a fine-grained timestamp to store).
    inodes: HashMap<u64, u64>,
    /// Segments with completed writes no sync has covered yet (ring executors fuse a
    /// write and its sync into one `RWF_DSYNC` write only into clean files).
    dirty: HashSet<u64>,
}

/// Open segment files of one log, on the file system they live on.
pub struct LogFiles {
    fs: Arc<dyn Fs>,
    direct: bool,
    table: Mutex<Table>,
    mode: AtomicU8,
}

impl LogFiles {
    /// `direct`: open segment files with O_DIRECT where the file system supports it.
    pub fn new(fs: Arc<dyn Fs>, direct: bool) -> LogFiles {
        LogFiles {
            fs,
            direct,
            table: Mutex::default(),
            mode: AtomicU8::new(io_mode::UNKNOWN),
        }
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The open handle of segment `seg`.
    pub fn file(&self, seg: u64) -> io::Result<Arc<dyn FsFile>> {
        self.table()
            .files
            .get(&seg)
            .cloned()
            .ok_or_else(|| io::Error::other(format!("no open file for segment {seg}")))
    }

    /// True when segment `seg` may hold a completed write no sync covered.
    pub fn is_dirty(&self, seg: u64) -> bool {
        self.table().dirty.contains(&seg)
    }

    /// Records whether segment `seg` holds unsynced writes.
    pub fn set_dirty(&self, seg: u64, dirty: bool) {
        let mut t = self.table();
        if dirty {
            t.dirty.insert(seg);
        } else {
            t.dirty.remove(&seg);
        }
    }

    /// How the segment file opened last is written ([`io_mode`]).
    pub fn io_mode(&self) -> u8 {
        self.mode.load(Ordering::Relaxed)
    }

    fn opened(&self, seg: u64, f: Arc<dyn FsFile>) {
        let m = if f.is_direct() {
            io_mode::DIRECT
        } else {
            io_mode::BUFFERED
        };
        self.mode.store(m, Ordering::Relaxed);
        let ino = f.inode();
        let mut t = self.table();
        t.files.insert(seg, f);
        if let Some(ino) = ino {
            t.inodes.insert(seg, ino);
        }
    }

    /// Runs a metadata operation (create, open, close, rename, unlink): cheap calls that
    /// every executor runs inline, on the calling thread. `None` for I/O operations
    /// (write, sync, directory sync), which are the executor's.
    pub fn run_metadata(&self, kind: &OpKind) -> Option<io::Result<()>> {
        Some(match kind {
            OpKind::Create { seg, path, mode } => {
                let open: Vec<u64> = self.table().inodes.values().copied().collect();
                create_apart(self.fs.as_ref(), path, self.direct, *mode, &open)
                    .map(|f| self.opened(*seg, f))
            }
            OpKind::Open { seg, path } => self
                .fs
                .open(
                    path,
                    OpenMode::Write {
                        direct: self.direct,
                    },
                )
                .map(|f| self.opened(*seg, f)),
            OpKind::Close { seg } => {
                let mut t = self.table();
                t.files.remove(seg);
                t.inodes.remove(seg);
                t.dirty.remove(seg);
                Ok(())
            }
            OpKind::Rename { from, to } => self.fs.rename(from, to),
            OpKind::Retire { from, to } => match self.fs.rename(from, to) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    match (self.fs.kind(from), self.fs.kind(to)) {
                        (Ok(None), Ok(Some(_))) => Ok(()),
                        _ => Err(e),
                    }
                }
                r => r,
            },
            OpKind::Unlink { path } => match self.fs.unlink(path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                r => r,
            },
            OpKind::Write { .. } | OpKind::Sync { .. } | OpKind::SyncDir { .. } => return None,
        })
    }

    /// The file system the files live on.
    pub fn fs(&self) -> &Arc<dyn Fs> {
        &self.fs
    }

    /// Closes every open file (the log has left its host).
    pub fn close_all(&self) {
        let mut t = self.table();
        t.files.clear();
        t.inodes.clear();
        t.dirty.clear();
    }
}
