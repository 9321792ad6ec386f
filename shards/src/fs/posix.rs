//! The POSIX file system: plain system calls (`pwritev`, `fdatasync`, `fsync` of the
//! directory) on the calling thread. Both backends open their files here (the io_uring
//! one then writes through the ring); the portable backend also writes through it.
//!
//! O_DIRECT is used where the file system supports it with alignment no coarser than
//! our 4 KiB blocks; otherwise writes go through the page cache, which `fdatasync`
//! makes just as durable. The alignment comes from `statx(STATX_DIOALIGN)` (Linux 6.1);
//! on older kernels from the device's logical block size in sysfs; where neither tells
//! (a file system on no block device), from a probe: an O_DIRECT read of the file's
//! first block, or for a new, empty file, a write of its first block of zeros (which
//! segment preparation writes anyway).

use super::{EntryKind, Fs, FsFile, FsLock, Mapping, OpenMode};
use crate::buffer::AlignedBuf;
use crate::format::BLOCK;
use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// Where O_DIRECT alignment is learnt from, newest way first. Tests pick an older way
/// to run the paths of kernels before 6.1 on a newer one.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DioAlignSource {
    /// `statx(STATX_DIOALIGN)`, else the device's logical block size, else a probe.
    #[default]
    Statx,
    /// As on a kernel without `STATX_DIOALIGN`: the logical block size, else a probe.
    LogicalBlockSize,
    /// As for a file system on no block device: the probe alone.
    Probe,
}

/// The real file system, through blocking system calls.
#[derive(Debug, Default, Clone, Copy)]
pub struct PosixFs {
    dio: DioAlignSource,
}

struct SyncFile {
    file: File,
    direct: bool,
}

/// Direct-I/O alignment of an open file from `statx(STATX_DIOALIGN)`: (memory, offset).
/// `Err(())` when the kernel does not report it (before 6.1); `Ok(None)` when it says
/// the file takes no direct I/O.
fn statx_dio_alignment(file: &File) -> Result<Option<(u32, u32)>, ()> {
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
    if rc != 0 || stx.stx_mask & libc::STATX_DIOALIGN == 0 {
        return Err(());
    }
    if stx.stx_dio_offset_align == 0 {
        return Ok(None);
    }
    Ok(Some((stx.stx_dio_mem_align, stx.stx_dio_offset_align)))
}

/// The logical block size of the block device holding `file` (sysfs), which bounds
/// direct-I/O alignment in memory and on disk on kernels before `STATX_DIOALIGN`.
fn logical_block_size(file: &File) -> Option<u32> {
    let dev = file.metadata().ok()?.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    // A partition's directory has no queue/: its disk's, one level up, applies.
    ["queue", "../queue"].iter().find_map(|q| {
        std::fs::read_to_string(format!(
            "/sys/dev/block/{major}:{minor}/{q}/logical_block_size"
        ))
        .ok()?
        .trim()
        .parse()
        .ok()
    })
}

/// Probes whether `file` (opened with O_DIRECT) takes 4 KiB-aligned direct I/O: reads
/// its first block, or, if it is empty (a file just created for preparation, which is
/// zero-written anyway), writes its first block of zeros. `None` if the probe itself
/// could not run (an I/O error other than EINVAL).
fn probe_direct(file: &File) -> Option<bool> {
    let buf = AlignedBuf::zeroed(BLOCK);
    let size = file.metadata().ok()?.len();
    let r = if size >= BLOCK as u64 {
        // SAFETY: a fresh buffer, ours alone; the kernel writes into it during the call.
        let dst = unsafe { std::slice::from_raw_parts_mut(buf.as_ptr() as *mut u8, BLOCK) };
        file.read_at(dst, 0).map(drop)
    } else {
        // SAFETY: a fresh buffer, ours alone; nothing writes it during the call.
        file.write_at(unsafe { buf.slice(0, BLOCK) }, 0).map(drop)
    };
    match r {
        Ok(()) => Some(true),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Some(false),
        Err(_) => None,
    }
}

/// Per device: whether 4 KiB-aligned direct I/O works there (learnt once, since a
/// probe costs an I/O).
fn device_verdicts() -> &'static Mutex<HashMap<(u64, DioAlignSource), bool>> {
    static V: OnceLock<Mutex<HashMap<(u64, DioAlignSource), bool>>> = OnceLock::new();
    V.get_or_init(Default::default)
}

impl PosixFs {
    /// The real file system, learning O_DIRECT alignment the newest way the kernel has.
    pub fn new() -> PosixFs {
        PosixFs::default()
    }

    /// The real file system, learning O_DIRECT alignment no newer way than `source`
    /// (tests run the paths of older kernels with it).
    pub fn learning_alignment_from(source: DioAlignSource) -> PosixFs {
        PosixFs { dio: source }
    }

    /// True when `file`, opened with O_DIRECT, takes our 4 KiB-aligned writes from
    /// 4 KiB-aligned memory.
    fn direct_fits(&self, file: &File) -> bool {
        if self.dio == DioAlignSource::Statx {
            match statx_dio_alignment(file) {
                Ok(Some((mem, off))) => return mem as usize <= BLOCK && off as usize <= BLOCK,
                Ok(None) => return false,
                Err(()) => {} // a kernel before 6.1
            }
        }
        let dev = file.metadata().map(|m| m.dev()).unwrap_or(0);
        let key = (dev, self.dio);
        if let Some(&v) = device_verdicts()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return v;
        }
        let verdict = match (self.dio, logical_block_size(file)) {
            (DioAlignSource::Statx | DioAlignSource::LogicalBlockSize, Some(lbs)) => {
                Some(lbs as usize <= BLOCK)
            }
            _ => probe_direct(file),
        };
        match verdict {
            Some(v) => {
                device_verdicts()
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key, v);
                v
            }
            // The probe could not run (an I/O error): buffered this time, ask again later.
            None => false,
        }
    }

    fn open_file(&self, path: &Path, mode: OpenMode) -> io::Result<SyncFile> {
        let mut o = OpenOptions::new();
        let (direct, created) = match mode {
            OpenMode::Read => {
                o.read(true);
                (false, None)
            }
            OpenMode::Write { direct } => {
                o.read(true).write(true);
                (direct, None)
            }
            OpenMode::CreateNew { direct, mode } => {
                // Created buffered first: a file system that refuses O_DIRECT (EINVAL)
                // may do so only after creating the file, and a retry with O_EXCL would
                // then find it there.
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .open(path)?;
                o.read(true).write(true);
                (direct, Some(file))
            }
        };
        if direct {
            let mut d = o.clone();
            d.custom_flags(libc::O_DIRECT);
            match d.open(path) {
                // Our writes are 4 KiB-aligned in memory and on disk: coarser
                // requirements (or none learnt) mean we stay buffered.
                Ok(file) if self.direct_fits(&file) => return Ok(SyncFile { file, direct: true }),
                Ok(_) => {}
                // tmpfs before Linux 6.6, ramfs and some FUSE file systems refuse O_DIRECT.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                Err(e) => return Err(e),
            }
        }
        let file = match created {
            Some(f) => f,
            None => o.open(path)?,
        };
        Ok(SyncFile {
            file,
            direct: false,
        })
    }
}

impl FsFile for SyncFile {
    fn pread(&self, off: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read_at(buf, off)
    }

    fn pwritev(&self, off: u64, bufs: &[&[u8]]) -> io::Result<usize> {
        self.pwritev_flags(off, bufs, 0)
    }

    fn pwritev_dsync(&self, off: u64, bufs: &[&[u8]]) -> io::Result<usize> {
        if !NO_RWF_DSYNC.load(Ordering::Relaxed) {
            match self.pwritev_flags(off, bufs, libc::RWF_DSYNC) {
                // A kernel without pwritev2 (before 4.6) or RWF_DSYNC (before 4.7), or a
                // file system refusing it: write, then sync, from now on.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EOPNOTSUPP)) => {
                    log::info!("aof2: pwritev2(RWF_DSYNC) unavailable ({e}): writes are followed by fdatasync");
                    NO_RWF_DSYNC.store(true, Ordering::Relaxed);
                }
                r => return r,
            }
        }
        let n = self.pwritev(off, bufs)?;
        self.fdatasync()?;
        Ok(n)
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

    fn inode(&self) -> Option<u64> {
        use std::os::unix::fs::MetadataExt;
        self.file.metadata().ok().map(|m| m.ino())
    }
}

/// Set once `pwritev2(RWF_DSYNC)` failed as unsupported: later durable writes are a
/// write and an `fdatasync`.
static NO_RWF_DSYNC: AtomicBool = AtomicBool::new(false);

impl SyncFile {
    /// `pwritev2` of `bufs` at `off` with `flags` (plain `pwritev` without flags),
    /// retried on EINTR; returns the bytes written (possibly short).
    fn pwritev_flags(&self, off: u64, bufs: &[&[u8]], flags: libc::c_int) -> io::Result<usize> {
        if bufs.len() == 1 && flags == 0 {
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
            let (fd, n_iov) = (self.file.as_raw_fd(), iov.len() as libc::c_int);
            // SAFETY: every iovec points into a slice borrowed for the whole call, and the
            // kernel only reads from them; the fd is open.
            let n = unsafe {
                if flags == 0 {
                    libc::pwritev(fd, iov.as_ptr(), n_iov, off as libc::off_t)
                } else {
                    libc::pwritev2(fd, iov.as_ptr(), n_iov, off as libc::off_t, flags)
                }
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
}

struct FlockGuard {
    _file: File,
}
impl FsLock for FlockGuard {}

impl Fs for PosixFs {
    fn mkdir(&self, path: &Path, mode: u32) -> io::Result<()> {
        std::fs::DirBuilder::new().mode(mode).create(path)
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
        Ok(Arc::new(self.open_file(path, mode)?))
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

    fn lock_exclusive(&self, path: &Path, mode: u32) -> io::Result<Box<dyn FsLock>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(mode)
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
        let a = PosixFs::new().lock_exclusive(&p, 0o600).unwrap();
        let e = PosixFs::new()
            .lock_exclusive(&p, 0o600)
            .err()
            .expect("second lock must fail");
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        drop(a);
        // A child another test forks at this instant holds the lock file's description
        // (and so the flock) until it execs: retry briefly.
        let t = std::time::Instant::now();
        while let Err(e) = PosixFs::new().lock_exclusive(&p, 0o600) {
            assert!(
                t.elapsed() < std::time::Duration::from_secs(2),
                "the lock was not released: {e}"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    #[test]
    fn direct_files_take_aligned_vectored_writes() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        let f = PosixFs::new().open(&p, OpenMode::create_new(true)).unwrap();
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
        let r = PosixFs::new().open(&p, OpenMode::Read).unwrap();
        let mut got = [0u8; 10];
        r.pread(0, &mut got).unwrap();
        assert_eq!(got, [1u8; 10]);
        assert_eq!(r.size().unwrap(), (BLOCK * 3) as u64);
    }

    #[test]
    fn a_dsync_write_writes_every_slice_in_one_call_direct_or_buffered() {
        for direct in [true, false] {
            let d = tempfile::tempdir().unwrap();
            let p = d.path().join("f");
            let fs = PosixFs::new();
            let f = fs.open(&p, OpenMode::create_new(direct)).unwrap();
            assert_eq!(f.is_direct(), direct);
            let a = crate::buffer::AlignedBuf::zeroed(BLOCK);
            let b = crate::buffer::AlignedBuf::zeroed(BLOCK);
            // SAFETY: fresh buffers, no other user.
            unsafe {
                a.write(0, &[7u8; 16]);
                b.write(BLOCK - 16, &[9u8; 16]);
            }
            // SAFETY: nothing writes the buffers while these slices live.
            let (sa, sb) = unsafe { (a.slice(0, BLOCK), b.slice(0, BLOCK)) };
            assert_eq!(f.pwritev_dsync(BLOCK as u64, &[sa, sb]).unwrap(), BLOCK * 2);
            let r = fs.open(&p, OpenMode::Read).unwrap();
            let mut got = vec![0u8; BLOCK * 3];
            r.pread(0, &mut got).unwrap();
            assert_eq!(&got[BLOCK..BLOCK + 16], &[7u8; 16]);
            assert_eq!(&got[BLOCK * 3 - 16..], &[9u8; 16]);
            assert_eq!(r.size().unwrap(), (BLOCK * 3) as u64);
        }
    }
    #[test]
    fn direct_io_is_learnt_without_statx_dioalign_from_the_block_size_or_a_probe() {
        let d = tempfile::tempdir().unwrap();
        for source in [
            DioAlignSource::Statx,
            DioAlignSource::LogicalBlockSize,
            DioAlignSource::Probe,
        ] {
            let fs = PosixFs::learning_alignment_from(source);
            let p = d.path().join(format!("{source:?}"));
            let new = fs.open(&p, OpenMode::create_new(true)).unwrap();
            assert!(new.is_direct(), "{source:?}: a new file on ext4 is direct");
            drop(new);
            let again = fs.open(&p, OpenMode::Write { direct: true }).unwrap();
            assert!(again.is_direct(), "{source:?}: an existing file too");
        }
        // Where the file system sits on a block device, sysfs gives its block size.
        let probe = File::open(d.path().join("Probe")).unwrap();
        let dev = probe.metadata().unwrap().dev();
        let sys = format!("/sys/dev/block/{}:{}", libc::major(dev), libc::minor(dev));
        if Path::new(&sys).exists() {
            assert!(
                matches!(logical_block_size(&probe), Some(512 | 1024 | 2048 | 4096)),
                "{sys}: {:?}",
                logical_block_size(&probe)
            );
        }
        // A file system without O_DIRECT (ramfs; tmpfs has it since Linux 6.6) gets
        // buffered files whichever way alignment would be learnt.
        let Some(ram) = RamFs::mount() else { return };
        for source in [
            DioAlignSource::Statx,
            DioAlignSource::LogicalBlockSize,
            DioAlignSource::Probe,
        ] {
            let f = PosixFs::learning_alignment_from(source)
                .open(
                    &ram.dir.path().join(format!("{source:?}")),
                    OpenMode::create_new(true),
                )
                .unwrap();
            assert!(!f.is_direct(), "{source:?} on ramfs");
        }
    }

    /// A ramfs mounted on a temporary directory (root only), unmounted on drop.
    struct RamFs {
        dir: tempfile::TempDir,
    }

    impl RamFs {
        fn mount() -> Option<RamFs> {
            let dir = tempfile::tempdir().unwrap();
            let ok = std::process::Command::new("mount")
                .args(["-t", "ramfs", "ramfs"])
                .arg(dir.path())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                assert!(
                    std::env::var("AOF2_REQUIRE_LOOP").as_deref() != Ok("1"),
                    "mounting a ramfs needs root (AOF2_REQUIRE_LOOP=1 requires it)"
                );
                eprintln!("cannot mount a ramfs here (not root?); skipping that part");
                return None;
            }
            Some(RamFs { dir })
        }
    }

    impl Drop for RamFs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg(self.dir.path())
                .status();
        }
    }
}
