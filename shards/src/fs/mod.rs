//! The file-system seam. Recovery, readers and every executor go through these traits,
//! so the simulated crash disk (`sim`) can stand in for the real one (`posix`).

pub mod posix;
pub mod sim;
mod sim_faults;

use std::ffi::OsString;
use std::io;
use std::ops::Deref;
use std::path::Path;
use std::sync::Arc;

/// What a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// Anything else (socket, device, ...).
    Other,
}

/// How to open a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Read only.
    Read,
    /// Read and write an existing file; `direct` asks for O_DIRECT where the file system allows.
    Write {
        /// Ask for O_DIRECT.
        direct: bool,
    },
    /// Create a file that must not exist yet, for reading and writing.
    CreateNew {
        /// Ask for O_DIRECT.
        direct: bool,
        /// Permission bits of the new file (the umask still applies).
        mode: u32,
    },
}

impl OpenMode {
    /// `CreateNew` with the default, owner-only mode (`0o600`).
    pub const fn create_new(direct: bool) -> OpenMode {
        OpenMode::CreateNew {
            direct,
            mode: crate::config::DEFAULT_FILE_MODE,
        }
    }
}

/// A read-only view of a whole file: a memory map on a real disk, a copy on the simulated one.
pub enum Mapping {
    /// A read-only memory map.
    Mmap(memmap2::Mmap),
    /// A copy (the simulated disk), with the token that tells the disk a mapping of
    /// its file is alive (see [`sim::SimFs::violations`]).
    Owned(Vec<u8>, Arc<()>),
    /// An empty file (which cannot be mapped).
    Empty,
}

impl Deref for Mapping {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Mapping::Mmap(m) => m,
            Mapping::Owned(v, _) => v,
            Mapping::Empty => &[],
        }
    }
}

/// An open file.
pub trait FsFile: Send + Sync {
    /// Reads at `off`; returns the bytes read (0 at end of file). Handles opened for
    /// writing may use O_DIRECT and refuse unaligned reads: read through `OpenMode::Read`.
    fn pread(&self, off: u64, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes `bufs` back to back at `off`; returns the bytes written (possibly short).
    fn pwritev(&self, off: u64, bufs: &[&[u8]]) -> io::Result<usize>;
    /// Makes completed writes durable.
    fn fdatasync(&self) -> io::Result<()>;
    /// Writes `bufs` at `off` as `pwritev2(RWF_DSYNC)` does: when it returns, *these*
    /// bytes are durable, and nothing more is promised (a device with FUA writes only
    /// them through; earlier unsynced writes to the file may still be in a cache). The
    /// default writes, then syncs the whole file, which promises more; the simulated
    /// disk keeps exactly the promise.
    fn pwritev_dsync(&self, off: u64, bufs: &[&[u8]]) -> io::Result<usize> {
        let n = self.pwritev(off, bufs)?;
        self.fdatasync()?;
        Ok(n)
    }
    /// Current size in bytes.
    fn size(&self) -> io::Result<u64>;
    /// Maps (or copies) the whole file read-only.
    fn map(&self) -> io::Result<Mapping>;
    /// True when writes bypass the page cache (O_DIRECT).
    fn is_direct(&self) -> bool {
        false
    }
    /// The kernel file descriptor, for the io_uring backend (`None` on the simulated disk).
    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
    /// The file's inode number, where the file system has one.
    fn inode(&self) -> Option<u64> {
        None
    }
}

/// An exclusive lock on a directory's lock file; dropping it releases the lock.
pub trait FsLock: Send + Sync {}

/// The operations the engine needs from a file system.
pub trait Fs: Send + Sync + 'static {
    /// Creates one directory (its parent must exist) with permission bits `mode` (the
    /// umask still applies).
    fn mkdir(&self, path: &Path, mode: u32) -> io::Result<()>;
    /// What `path` names, or `None` if nothing.
    fn kind(&self, path: &Path) -> io::Result<Option<EntryKind>>;
    /// Names in a directory (without `.` and `..`).
    fn list_dir(&self, path: &Path) -> io::Result<Vec<OsString>>;
    /// Opens a file.
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn FsFile>>;
    /// Renames within a directory.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn unlink(&self, path: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creates, renames, unlinks) durable.
    fn fsync_dir(&self, path: &Path) -> io::Result<()>;
    /// Makes every completed write to the files in `dir`, and `dir`'s own entries,
    /// durable (`fdatasync` of each file, `fsync` of the directory), then drops the
    /// files' cached pages, so what recovery reads next comes from the disk. After a
    /// failed `fdatasync` the page cache can show bytes that never reached the disk
    /// (Linux marks failed pages clean), and an earlier session's unsynced writes are
    /// not durable until synced: recovery must not trust either.
    fn settle_dir(&self, dir: &Path) -> io::Result<()>;
    /// Takes an exclusive lock on `path` (created with permission bits `mode` if
    /// missing) without waiting; `ErrorKind::WouldBlock` if another holder has it.
    fn lock_exclusive(&self, path: &Path, mode: u32) -> io::Result<Box<dyn FsLock>>;
}

/// Reads exactly `buf.len()` bytes at `off`, or fails with `UnexpectedEof`.
pub fn read_exact_at(f: &dyn FsFile, mut off: u64, mut buf: &mut [u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match f.pread(off, buf) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "short read")),
            Ok(n) => {
                off += n as u64;
                buf = &mut buf[n..];
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes all of `bufs` at `off`. A short write is an error: on a log's write path it
/// poisons the log rather than being retried as if the first part were safe.
pub fn write_all_at(f: &dyn FsFile, off: u64, bufs: &[&[u8]]) -> io::Result<()> {
    all_written(f.pwritev(off, bufs)?, bufs, off)
}

/// [`write_all_at`] as one `RWF_DSYNC` write ([`FsFile::pwritev_dsync`]): when it
/// returns, these bytes are durable.
pub fn write_all_dsync_at(f: &dyn FsFile, off: u64, bufs: &[&[u8]]) -> io::Result<()> {
    all_written(f.pwritev_dsync(off, bufs)?, bufs, off)
}

/// `Ok` if a write of `bufs` at `off` wrote all `n` bytes of them.
fn all_written(n: usize, bufs: &[&[u8]], off: u64) -> io::Result<()> {
    let want: usize = bufs.iter().map(|b| b.len()).sum();
    if n != want {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("short write: {n} of {want} bytes at offset {off}"),
        ));
    }
    Ok(())
}
