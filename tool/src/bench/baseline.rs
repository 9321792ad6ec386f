//! The raw baselines' tools: pre-written files written with O_DIRECT and synced with
//! `fdatasync` directly, aligned buffers, cold-cache reads, and what file system a
//! directory is on.

use super::BenchResult;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The file system `dir` is on: its statfs magic and the bytes free to an unprivileged user.
pub fn fs_stat(dir: &Path) -> std::io::Result<(i64, u64)> {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).expect("no NUL in path");
    // SAFETY: statfs is plain old data; zeroed is a valid value.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `s` a valid out-pointer.
    if unsafe { libc::statfs(c.as_ptr(), &mut s) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((s.f_type as i64, s.f_bavail as u64 * s.f_bsize as u64))
}

/// A file system's name from its statfs magic.
pub fn fs_name(magic: i64) -> &'static str {
    match magic {
        0xEF53 => "ext4",
        0x5846_5342 => "xfs",
        0x9123_683E => "btrfs",
        0x0102_1994 => "tmpfs",
        0x794C_7630 => "overlayfs",
        0x2FC1_2FC1 => "zfs",
        0x6969 => "nfs",
        0x6573_5546 => "fuse",
        _ => "unknown",
    }
}

pub const TMPFS: i64 = 0x0102_1994;

/// A file of `size` bytes fully written with zeros and synced, opened O_DIRECT where
/// possible: the baseline's equivalent of a prepared segment.
pub struct PrewrittenFile {
    pub file: File,
    pub size: u64,
    pub direct: bool,
}

impl PrewrittenFile {
    pub fn create(path: &Path, size: u64) -> std::io::Result<PrewrittenFile> {
        let mut o = OpenOptions::new();
        o.read(true).write(true).create(true).truncate(true);
        let (file, direct) = match o.clone().custom_flags(libc::O_DIRECT).open(path) {
            Ok(f) => (f, true),
            Err(_) => (o.open(path)?, false),
        };
        let chunk = AlignedBlock::new(1 << 20);
        let mut off = 0;
        while off < size {
            file.write_all_at(chunk.bytes(), off)?;
            off += 1 << 20;
        }
        file.sync_all()?;
        Ok(PrewrittenFile { file, size, direct })
    }

    /// The same file reopened without O_DIRECT: writes go through the page cache and
    /// `fdatasync` writes them out (how okaywal writes).
    pub fn buffered(&self, path: &Path) -> std::io::Result<PrewrittenFile> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(PrewrittenFile {
            file,
            size: self.size,
            direct: false,
        })
    }
}

/// An aligned buffer for the baselines' O_DIRECT writes.
pub struct AlignedBlock {
    buf: aof2_shards::buffer::AlignedBuf,
}

impl AlignedBlock {
    pub fn new(len: usize) -> AlignedBlock {
        let buf = aof2_shards::buffer::AlignedBuf::zeroed(len);
        // SAFETY: a fresh buffer, ours alone.
        unsafe { buf.write(0, &vec![0x5au8; len]) };
        AlignedBlock { buf }
    }
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the buffer is written only through `&mut self` (`new`, `copy_in`).
        unsafe { self.buf.slice(0, self.buf.len()) }
    }
    /// Copies `data` to the front of the buffer and returns that part, to be written.
    pub fn copy_in(&mut self, data: &[u8]) -> &[u8] {
        assert!(data.len() <= self.buf.len(), "data fits the block");
        // SAFETY: `&mut self`: nothing else reads or writes the buffer meanwhile.
        unsafe {
            self.buf.write(0, data);
            self.buf.slice(0, data.len())
        }
    }
}

pub fn fdatasync(f: &File) -> std::io::Result<()> {
    // SAFETY: plain syscall on an open fd.
    if unsafe { libc::fdatasync(f.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Drops `path`'s clean pages from the page cache, so the next read comes from disk.
pub fn drop_cache(path: &Path) -> std::io::Result<()> {
    let f = File::open(path)?;
    // SAFETY: plain syscall on an open fd.
    let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if r != 0 {
        return Err(std::io::Error::from_raw_os_error(r));
    }
    Ok(())
}

/// Reads `[0, len)` of each file with 1 MiB `read`s; returns the bytes read.
pub fn raw_read(files: &[(PathBuf, u64)], buf: &mut [u8]) -> BenchResult<u64> {
    let mut total = 0;
    for (path, len) in files {
        let f = File::open(path)?;
        let mut off = 0;
        while off < *len {
            let n = ((*len - off) as usize).min(buf.len());
            f.read_exact_at(&mut buf[..n], off)?;
            std::hint::black_box(&buf[..n]);
            off += n as u64;
        }
        total += off;
    }
    Ok(total)
}

/// One thread writing `per_sync` buffered 4 KiB blocks, then one `fdatasync`, for
/// `slice`, into `g` from offset `*off`: the bound of group commit with no waiting
/// writers. Returns the blocks written.
pub fn buffered_per_sync(
    g: &PrewrittenFile,
    block: &AlignedBlock,
    per_sync: usize,
    off: &mut u64,
    slice: std::time::Duration,
) -> std::io::Result<u64> {
    let start = std::time::Instant::now();
    let mut n = 0;
    while start.elapsed() < slice {
        for _ in 0..per_sync {
            g.file.write_all_at(block.bytes(), *off % g.size)?;
            *off += 4096;
        }
        fdatasync(&g.file)?;
        n += per_sync as u64;
    }
    Ok(n)
}

/// `n` times `pwrite` of 4 KiB + `fdatasync` into `f` from offset `*off`, each one's
/// latency recorded in `h`: the raw durable-append loop.
pub fn raw_4k_syncs(
    f: &PrewrittenFile,
    block: &AlignedBlock,
    n: usize,
    off: &mut u64,
    h: &mut hdrhistogram::Histogram<u64>,
) -> BenchResult<()> {
    for _ in 0..n {
        let t = std::time::Instant::now();
        f.file.write_all_at(block.bytes(), *off % f.size)?;
        fdatasync(&f.file)?;
        h.record(t.elapsed().as_nanos() as u64)?;
        *off += 4096;
    }
    Ok(())
}

/// CPU time this thread has used, in ns.
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a plain query into a valid struct.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
