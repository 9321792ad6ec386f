//! The portable backend: plain system calls (`pwritev`, `fdatasync`, `fsync` of the
//! directory) on the calling thread. O_DIRECT is used where the file system supports it
//! with alignment no coarser than our 4 KiB blocks; otherwise writes go through the page
//! cache, which `fdatasync` makes just as durable.

use super::{EntryKind, Fs, FsFile, FsLock, Mapping, OpenMode};
use crate::format::BLOCK;
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

/// The real file system, through blocking system calls.
#[derive(Debug, Default, Clone, Copy)]
pub struct SyncFs;

struct SyncFile {
    file: File,
    direct: bool,
}

/// Direct-I/O alignment of an open file from `statx(STATX_DIOALIGN)`: (memory, offset).
/// `None` when the kernel or file system does not report it.
pub fn dio_alignment(file: &File) -> Option<(u32, u32)> {
    // SAFETY: statx is a plain struct of integers; all-zero is a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    let empty = c"";
    // SAFETY: the fd is open for the duration of the call, `empty` is NUL-terminated and
    // AT_EMPTY_PATH makes the kernel use the fd; `stx` is a valid out-pointer.
    let rc = unsafe {
        libc::statx(
            file.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut stx,
        )
    };
    if rc != 0 || stx.stx_mask & libc::STATX_DIOALIGN == 0 || stx.stx_dio_offset_align == 0 {
        return None;
    }
    Some((stx.stx_dio_mem_align, stx.stx_dio_offset_align))
}

impl SyncFs {
    fn open_file(path: &Path, mode: OpenMode) -> io::Result<SyncFile> {
        let mut o = OpenOptions::new();
        let direct = match mode {
            OpenMode::Read => {
                o.read(true);
                false
            }
            OpenMode::Write { direct } => {
                o.read(true).write(true);
                direct
            }
            OpenMode::CreateNew { direct } => {
                o.read(true).write(true).create_new(true);
                direct
            }
        };
        if direct {
            let mut d = o.clone();
            d.custom_flags(libc::O_DIRECT);
            match d.open(path) {
                Ok(file) => {
                    // Our writes are 4 KiB-aligned in memory and on disk: coarser
                    // requirements (or none reported) mean we stay buffered.
                    match dio_alignment(&file) {
                        Some((mem, off)) if mem as usize <= BLOCK && off as usize <= BLOCK => {
                            return Ok(SyncFile { file, direct: true });
                        }
                        _ => {
                            drop(file);
                            // create_new already created it: reopen without O_EXCL.
                            let mut b = OpenOptions::new();
                            b.read(true).write(true);
                            return Ok(SyncFile {
                                file: b.open(path)?,
                                direct: false,
                            });
                        }
                    }
                }
                // tmpfs and some FUSE file systems refuse O_DIRECT at open.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(SyncFile {
            file: o.open(path)?,
            direct: false,
        })
    }
}

impl FsFile for SyncFile {
    fn pread(&self, off: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read_at(buf, off)
    }

    fn pwritev(&self, off: u64, bufs: &[&[u8]]) -> io::Result<usize> {
        if bufs.len() == 1 {
            return loop {
                match self.file.write_at(bufs[0], off) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    r => break r,
                }
            };
        }
        let iov: Vec<libc::iovec> = bufs
            .iter()
            .map(|b| libc::iovec {
                iov_base: b.as_ptr() as *mut libc::c_void,
                iov_len: b.len(),
            })
            .collect();
        loop {
            // SAFETY: every iovec points into a slice borrowed for the whole call, and the
            // kernel only reads from them; the fd is open.
            let n = unsafe {
                libc::pwritev(
                    self.file.as_raw_fd(),
                    iov.as_ptr(),
                    iov.len() as libc::c_int,
                    off as libc::off_t,
                )
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    fn fdatasync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn map(&self) -> io::Result<Mapping> {
        if self.size()? == 0 {
            return Ok(Mapping::Empty);
        }
        // SAFETY: the engine maps only files it no longer writes (sealed segments) or
        // reads a mapped unsealed file once, before any writer opens it (recovery). Bytes
        // appended to a file by another process are never read past its durable end.
        let m = unsafe { memmap2::MmapOptions::new().map(&self.file)? };
        Ok(Mapping::Mmap(m))
    }

    fn is_direct(&self) -> bool {
        self.direct
    }

    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        Some(self.file.as_raw_fd())
    }
}

struct FlockGuard {
    _file: File,
}
impl FsLock for FlockGuard {}

impl Fs for SyncFs {
    fn mkdir(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir(path)
    }

    fn kind(&self, path: &Path) -> io::Result<Option<EntryKind>> {
        match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => Ok(Some(EntryKind::Dir)),
            Ok(m) if m.is_file() => Ok(Some(EntryKind::File)),
            Ok(_) => Ok(Some(EntryKind::Other)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<OsString>> {
        std::fs::read_dir(path)?
            .map(|e| e.map(|e| e.file_name()))
            .collect()
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn FsFile>> {
        Ok(Arc::new(Self::open_file(path, mode)?))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn unlink(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn fsync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }

    fn settle_dir(&self, dir: &Path) -> io::Result<()> {
        for name in self.list_dir(dir)? {
            let path = dir.join(name);
            if self.kind(&path)? != Some(EntryKind::File) {
                continue;
            }
            let f = File::open(&path)?;
            // Clean files cost no I/O here; only our own files are synced (a `syncfs`
            // would flush every other writer's data on the file system too).
            f.sync_data()?;
            // SAFETY: plain syscall on an fd we own; advice only, no memory involved.
            let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
        }
        self.fsync_dir(dir)
    }

    fn lock_exclusive(&self, path: &Path) -> io::Result<Box<dyn FsLock>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        // flock locks belong to the open file description, so a second open of the same
        // path in this process conflicts too (a POSIX fcntl lock would not).
        // SAFETY: plain syscall on an fd we own.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Box::new(FlockGuard { _file: file }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_in_same_process_conflicts_and_drop_releases() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("LOCK");
        let a = SyncFs.lock_exclusive(&p).unwrap();
        let e = SyncFs
            .lock_exclusive(&p)
            .err()
            .expect("second lock must fail");
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        drop(a);
        SyncFs.lock_exclusive(&p).unwrap();
    }

    #[test]
    fn direct_files_take_aligned_vectored_writes() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        let f = SyncFs
            .open(&p, OpenMode::CreateNew { direct: true })
            .unwrap();
        let a = crate::buffer::AlignedBuf::zeroed(BLOCK * 2);
        let b = crate::buffer::AlignedBuf::zeroed(BLOCK);
        // SAFETY: fresh buffers, no other user.
        unsafe { a.write(0, &[1u8; 10]) };
        // SAFETY: nothing writes the buffers while these slices live.
        let (sa, sb) = unsafe { (a.slice(0, BLOCK * 2), b.slice(0, BLOCK)) };
        let n = f.pwritev(0, &[sa, sb]).unwrap();
        assert_eq!(n, BLOCK * 3);
        f.fdatasync().unwrap();
        assert!(f.is_direct(), "ext4 supports O_DIRECT");
        // Direct handles only take aligned reads: the engine reads through its own handles.
        let r = SyncFs.open(&p, OpenMode::Read).unwrap();
        let mut got = [0u8; 10];
        r.pread(0, &mut got).unwrap();
        assert_eq!(got, [1u8; 10]);
        assert_eq!(r.size().unwrap(), (BLOCK * 3) as u64);
    }
}
