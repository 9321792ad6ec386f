//! A deterministic, in-memory disk for crash testing.
//!
//! It keeps two views: what reads see now, and what is durable. `fdatasync` makes a
//! file's completed writes durable; `fsync` of a directory makes its pending entry
//! changes (create, rename, unlink, mkdir) durable. At a simulated crash:
//! - every 512-byte sector touched by a write no `fdatasync` covered ends up as one of
//!   the versions it went through (its durable content, or its content after any of
//!   those writes), chosen at random: writes are kept, dropped or torn per sector;
//! - each directory keeps a random prefix of its un-fsynced entry changes;
//! - open handles, mappings and locks die with the "process".
//!
//! It also keeps a rule of its own: a file is never opened for recycling (a `.spare`
//! file opened for writing) while a mapping of it is alive, since recycling would
//! overwrite what a reader holds; a breach is recorded in [`SimFs::violations`] (and
//! the open fails), for the crash checker to report.
//! Everything is driven by a seeded generator, so a seed reproduces exactly.

use super::sim_faults::fault;
pub use super::sim_faults::{Faults, SimRng};
use super::{EntryKind, Fs, FsFile, FsLock, Mapping, OpenMode};
use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// Sector size at which the simulated disk tears writes.
pub const SECTOR: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    Dir,
    File(u64),
}

#[derive(Debug, Clone)]
enum DirOp {
    Put(PathBuf, Node),
    Rename(PathBuf, PathBuf),
    Remove(PathBuf),
}

#[derive(Default)]
struct Inode {
    current: Vec<u8>,
    durable: Vec<u8>,
    /// Writes since the last fdatasync, in order.
    pending: Vec<(u64, Vec<u8>)>,
}

impl Inode {
    /// What a FUA write does: `data` at `off` is durable; the parts of earlier pending
    /// writes it covers are superseded (it landed after them), the rest stay pending.
    fn make_range_durable(&mut self, off: u64, data: Vec<u8>) {
        let (a, b) = (off as usize, off as usize + data.len());
        let mut rest = Vec::new();
        for (o, d) in std::mem::take(&mut self.pending) {
            let (x, y) = (o as usize, o as usize + d.len());
            if y <= a || x >= b {
                rest.push((o, d));
                continue;
            }
            if x < a {
                rest.push((o, d[..a - x].to_vec()));
            }
            if y > b {
                rest.push((b as u64, d[b - x..].to_vec()));
            }
        }
        self.pending = rest;
        if self.durable.len() < b {
            self.durable.resize(b, 0);
        }
        self.durable[a..b].copy_from_slice(&data);
    }

    /// What `fdatasync` does: every write so far becomes durable.
    fn make_durable(&mut self) {
        for (off, data) in std::mem::take(&mut self.pending) {
            let (a, b) = (off as usize, off as usize + data.len());
            if self.durable.len() < b {
                self.durable.resize(b, 0);
            }
            self.durable[a..b].copy_from_slice(&data);
        }
        if self.durable.len() < self.current.len() {
            self.durable.resize(self.current.len(), 0);
        }
    }
}

struct State {
    current: BTreeMap<PathBuf, Node>,
    durable: BTreeMap<PathBuf, Node>,
    pending_dir: Vec<(PathBuf, DirOp)>,
    inodes: BTreeMap<u64, Inode>,
    next_inode: u64,
    locks: HashSet<PathBuf>,
    /// Bumped at every crash: handles from before it are dead.
    epoch: u64,
    rng: SimRng,
    faults: Faults,
    /// Faults injected so far (counted and random).
    injected: u64,
    clock: Option<Arc<std::sync::atomic::AtomicU64>>,
    /// Live mappings, by inode (their tokens).
    maps: BTreeMap<u64, Vec<std::sync::Weak<()>>>,
    /// Breaches of the disk's own rules (see the module docs).
    violations: Vec<String>,
}

impl State {
    fn mapped(&mut self, inode: u64) -> bool {
        let live = self.maps.get_mut(&inode).map_or(0, |v| {
            v.retain(|w| w.strong_count() > 0);
            v.len()
        });
        live > 0
    }

    /// True (and counted) with probability `ppm` per million.
    fn draw(&mut self, ppm: u32) -> bool {
        let hit = ppm > 0 && self.rng.below(1_000_000) < u64::from(ppm);
        self.injected += u64::from(hit);
        hit
    }

    /// EIO or ENOSPC, drawn.
    fn error(&mut self) -> io::Error {
        let code = if self.rng.chance(1, 2) {
            libc::EIO
        } else {
            libc::ENOSPC
        };
        io::Error::from_raw_os_error(code)
    }

    /// What `fsync` of directory `dir` does: its pending entry changes become durable.
    fn sync_dir_entries(&mut self, dir: &Path) {
        let mut rest = Vec::new();
        for (p, op) in std::mem::take(&mut self.pending_dir) {
            if p == dir {
                apply(&mut self.durable, &op);
            } else {
                rest.push((p, op));
            }
        }
        self.pending_dir = rest;
    }

    /// The faults of a sync (an `fdatasync`, or the flush of an `RWF_DSYNC` write): the
    /// counted failure (EIO), a slow sync (the clock jumps), a random failure.
    fn sync_fault(&mut self) -> Option<io::Error> {
        if fault(&mut self.faults.fail_sync_after) {
            self.injected += 1;
            return Some(io::Error::from_raw_os_error(libc::EIO));
        }
        if self.draw(self.faults.slow_sync_ppm) {
            let ms = 1 + self.rng.below(20);
            if let Some(c) = &self.clock {
                c.fetch_add(ms * 1_000_000, std::sync::atomic::Ordering::Relaxed);
            }
        }
        if self.draw(self.faults.sync_error_ppm) {
            return Some(self.error());
        }
        None
    }

    /// Creates an empty file at `path` (its parent must be a directory); the new entry
    /// is pending until its directory is synced. Returns its inode.
    fn create_file(&mut self, path: &Path) -> io::Result<u64> {
        let parent = parent_of(path);
        if self.current.get(&parent) != Some(&Node::Dir) {
            return Err(not_found(&parent));
        }
        let i = self.next_inode;
        self.next_inode += 1;
        self.inodes.insert(i, Inode::default());
        let op = DirOp::Put(path.to_path_buf(), Node::File(i));
        apply(&mut self.current, &op);
        self.pending_dir.push((parent, op));
        Ok(i)
    }

    fn dir_fault(&mut self) -> io::Result<()> {
        if self.draw(self.faults.dir_error_ppm) {
            return Err(self.error());
        }
        Ok(())
    }
}

/// The simulated disk. Clones share it.
#[derive(Clone)]
pub struct SimFs {
    state: Arc<Mutex<State>>,
}

fn parent_of(p: &Path) -> PathBuf {
    p.parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"))
}

fn not_found(p: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file or directory", p.display()),
    )
}

fn apply(ns: &mut BTreeMap<PathBuf, Node>, op: &DirOp) {
    match op {
        DirOp::Put(p, n) => {
            ns.insert(p.clone(), *n);
        }
        DirOp::Rename(a, b) => {
            if let Some(n) = ns.remove(a) {
                ns.insert(b.clone(), n);
            }
        }
        DirOp::Remove(p) => {
            ns.remove(p);
        }
    }
}

impl SimFs {
    /// An empty disk holding only `/`, with crash choices drawn from `seed`.
    pub fn new(seed: u64) -> SimFs {
        let mut root = BTreeMap::new();
        root.insert(PathBuf::from("/"), Node::Dir);
        SimFs {
            state: Arc::new(Mutex::new(State {
                current: root.clone(),
                durable: root,
                pending_dir: Vec::new(),
                inodes: BTreeMap::new(),
                next_inode: 1,
                locks: HashSet::new(),
                epoch: 0,
                rng: SimRng::new(seed),
                faults: Faults::default(),
                injected: 0,
                clock: None,
                maps: BTreeMap::new(),
                violations: Vec::new(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the faults to inject.
    pub fn set_faults(&self, f: Faults) {
        self.lock().faults = f;
    }

    /// Faults injected so far.
    pub fn faults_injected(&self) -> u64 {
        self.lock().injected
    }

    /// Breaches of the disk's rules so far: a file opened for recycling while mapped.
    pub fn violations(&self) -> Vec<String> {
        self.lock().violations.clone()
    }

    /// The virtual clock slow syncs advance.
    pub fn set_clock(&self, clock: Arc<std::sync::atomic::AtomicU64>) {
        self.lock().clock = Some(clock);
    }

    /// Simulates a power loss: see the module docs for what survives.
    pub fn crash(&self) {
        let mut s = self.lock();
        let st = &mut *s;
        // Directories: each keeps a random prefix of its pending changes.
        let mut parents: Vec<PathBuf> = st.pending_dir.iter().map(|(p, _)| p.clone()).collect();
        parents.sort();
        parents.dedup();
        let mut keep: BTreeMap<PathBuf, usize> = BTreeMap::new();
        for p in parents {
            let n = st.pending_dir.iter().filter(|(q, _)| *q == p).count();
            keep.insert(p, st.rng.below(n as u64 + 1) as usize);
        }
        for (p, op) in std::mem::take(&mut st.pending_dir) {
            let k = keep.get_mut(&p).expect("counted");
            if *k > 0 {
                *k -= 1;
                apply(&mut st.durable, &op);
            } else {
                // Later changes to this directory are lost too (a prefix survives).
                keep.insert(p, 0);
            }
        }
        // Files: per sector, one of the versions it went through.
        for inode in st.inodes.values_mut() {
            if inode.pending.is_empty() {
                inode.current.clone_from(&inode.durable);
                continue;
            }
            let mut img = inode.durable.clone();
            let mut touched: BTreeMap<usize, ()> = BTreeMap::new();
            for (off, data) in &inode.pending {
                let first = *off as usize / SECTOR;
                let last = (*off as usize + data.len()).div_ceil(SECTOR);
                for sec in first..last {
                    touched.insert(sec, ());
                }
            }
            for &sec in touched.keys() {
                let writes: Vec<&(u64, Vec<u8>)> = inode
                    .pending
                    .iter()
                    .filter(|(o, d)| {
                        let (a, b) = (*o as usize, *o as usize + d.len());
                        a < (sec + 1) * SECTOR && b > sec * SECTOR
                    })
                    .collect();
                let k = st.rng.below(writes.len() as u64 + 1) as usize;
                if k == 0 {
                    continue;
                }
                // The sector as it was after the first k writes touching it.
                let (lo, hi) = (sec * SECTOR, (sec + 1) * SECTOR);
                let mut sector: Vec<u8> = (lo..hi)
                    .map(|i| inode.durable.get(i).copied().unwrap_or(0))
                    .collect();
                let mut end = inode.durable.len().max(lo);
                for (o, d) in &writes[..k] {
                    let (a, b) = (*o as usize, *o as usize + d.len());
                    let (x, y) = (a.max(lo), b.min(hi));
                    sector[x - lo..y - lo].copy_from_slice(&d[x - a..y - a]);
                    end = end.max(b.min(hi));
                }
                if img.len() < end {
                    img.resize(end, 0);
                }
                let n = (end - lo).min(SECTOR);
                img[lo..lo + n].copy_from_slice(&sector[..n]);
            }
            inode.current = img.clone();
            inode.durable = img;
            inode.pending.clear();
        }
        st.current = st.durable.clone();
        let live: HashSet<u64> = st
            .current
            .values()
            .filter_map(|n| {
                if let Node::File(i) = n {
                    Some(*i)
                } else {
                    None
                }
            })
            .collect();
        st.inodes.retain(|i, _| live.contains(i));
        st.locks.clear();
        st.maps.clear();
        st.epoch += 1;
    }

    /// Reads a whole file as it is now (tests).
    pub fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        let s = self.lock();
        match s.current.get(path) {
            Some(Node::File(i)) => Ok(s.inodes[i].current.clone()),
            _ => Err(not_found(path)),
        }
    }
}

struct SimFile {
    fs: SimFs,
    inode: u64,
    epoch: u64,
    path: PathBuf,
}

impl SimFile {
    fn with<R>(&self, f: impl FnOnce(&mut State) -> io::Result<R>) -> io::Result<R> {
        let mut s = self.fs.lock();
        if s.epoch != self.epoch {
            return Err(io::Error::other(format!(
                "{}: handle from before a simulated crash",
                self.path.display()
            )));
        }
        f(&mut s)
    }
}

impl FsFile for SimFile {
    fn pread(&self, off: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.with(|s| {
            let data = &s.inodes[&self.inode].current;
            let off = off as usize;
            if off >= data.len() {
                return Ok(0);
            }
            let n = buf.len().min(data.len() - off);
            buf[..n].copy_from_slice(&data[off..off + n]);
            Ok(n)
        })
    }

    fn pwritev(&self, off: u64, bufs: &[&[u8]]) -> io::Result<usize> {
        self.write(off, bufs, false)
    }

    /// As on a device with FUA: only this write's bytes become durable; earlier
    /// unsynced writes stay pending (whatever of them the write covers is superseded).
    fn pwritev_dsync(&self, off: u64, bufs: &[&[u8]]) -> io::Result<usize> {
        self.write(off, bufs, true)
    }

    fn fdatasync(&self) -> io::Result<()> {
        self.with(|s| {
            if let Some(e) = s.sync_fault() {
                return Err(e);
            }
            s.inodes
                .get_mut(&self.inode)
                .expect("live inode")
                .make_durable();
            Ok(())
        })
    }

    fn size(&self) -> io::Result<u64> {
        self.with(|s| Ok(s.inodes[&self.inode].current.len() as u64))
    }

    fn map(&self) -> io::Result<Mapping> {
        self.with(|s| {
            let live = Arc::new(());
            s.maps
                .entry(self.inode)
                .or_default()
                .push(Arc::downgrade(&live));
            Ok(Mapping::Owned(s.inodes[&self.inode].current.clone(), live))
        })
    }

    fn inode(&self) -> Option<u64> {
        Some(self.inode)
    }
}

impl SimFile {
    /// A write; with `dsync`, its own bytes (only) are durable when it returns.
    fn write(&self, off: u64, bufs: &[&[u8]], dsync: bool) -> io::Result<usize> {
        self.with(|s| {
            if fault(&mut s.faults.fail_write_after) {
                s.injected += 1;
                let code = match s.faults.write_errno {
                    0 => libc::EIO,
                    c => c,
                };
                return Err(io::Error::from_raw_os_error(code));
            }
            if s.draw(s.faults.write_error_ppm) {
                return Err(s.error());
            }
            let mut data: Vec<u8> = bufs.concat();
            if data.len() > 1 && s.draw(s.faults.short_write_ppm) {
                let keep = 1 + s.rng.below(data.len() as u64 - 1) as usize;
                data.truncate(keep);
            }
            let inode = s.inodes.get_mut(&self.inode).expect("live inode");
            let (a, b) = (off as usize, off as usize + data.len());
            if inode.current.len() < b {
                inode.current.resize(b, 0);
            }
            inode.current[a..b].copy_from_slice(&data);
            let n = data.len();
            if !dsync {
                inode.pending.push((off, data));
                return Ok(n);
            }
            // The write went to the disk before completing; the flush that would also
            // make earlier writes durable is exactly what FUA skips.
            let sync_failed = s.sync_fault();
            let inode = s.inodes.get_mut(&self.inode).expect("live inode");
            if let Some(e) = sync_failed {
                // Written, not known durable: as an unsynced write.
                inode.pending.push((off, data));
                return Err(e);
            }
            inode.make_range_durable(off, data);
            Ok(n)
        })
    }
}

struct SimLock {
    fs: SimFs,
    path: PathBuf,
    epoch: u64,
}
impl FsLock for SimLock {}
impl Drop for SimLock {
    fn drop(&mut self) {
        let mut s = self.fs.lock();
        if s.epoch == self.epoch {
            s.locks.remove(&self.path);
        }
    }
}

impl Fs for SimFs {
    fn mkdir(&self, path: &Path, _mode: u32) -> io::Result<()> {
        let mut s = self.lock();
        s.dir_fault()?;
        if s.current.contains_key(path) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists", path.display()),
            ));
        }
        let parent = parent_of(path);
        if s.current.get(&parent) != Some(&Node::Dir) {
            return Err(not_found(&parent));
        }
        let op = DirOp::Put(path.to_path_buf(), Node::Dir);
        apply(&mut s.current, &op);
        s.pending_dir.push((parent, op));
        Ok(())
    }

    fn kind(&self, path: &Path) -> io::Result<Option<EntryKind>> {
        Ok(match self.lock().current.get(path) {
            Some(Node::Dir) => Some(EntryKind::Dir),
            Some(Node::File(_)) => Some(EntryKind::File),
            None => None,
        })
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<OsString>> {
        let s = self.lock();
        if s.current.get(path) != Some(&Node::Dir) {
            return Err(not_found(path));
        }
        Ok(s.current
            .keys()
            .filter(|p| p.parent() == Some(path) && p.as_path() != path)
            .filter_map(|p| p.file_name().map(|n| n.to_os_string()))
            .collect())
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn FsFile>> {
        let mut s = self.lock();
        let inode = match (mode, s.current.get(path).copied()) {
            (OpenMode::CreateNew { .. }, Some(_)) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists", path.display()),
                ))
            }
            (OpenMode::CreateNew { .. }, None) => {
                s.dir_fault()?;
                s.create_file(path)?
            }
            (OpenMode::Write { .. }, Some(Node::File(i)))
                if path.extension().is_some_and(|e| e == "spare") && s.mapped(i) =>
            {
                let v = format!(
                    "{} was opened for recycling while a mapping of it is alive",
                    path.display()
                );
                s.violations.push(v.clone());
                return Err(io::Error::other(v));
            }
            (_, Some(Node::File(i))) => i,
            (_, Some(Node::Dir)) => {
                return Err(io::Error::new(
                    io::ErrorKind::IsADirectory,
                    format!("{} is a directory", path.display()),
                ))
            }
            (_, None) => return Err(not_found(path)),
        };
        Ok(Arc::new(SimFile {
            fs: self.clone(),
            inode,
            epoch: s.epoch,
            path: path.to_path_buf(),
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.dir_fault()?;
        if !s.current.contains_key(from) {
            return Err(not_found(from));
        }
        let op = DirOp::Rename(from.to_path_buf(), to.to_path_buf());
        apply(&mut s.current, &op);
        s.pending_dir.push((parent_of(to), op));
        Ok(())
    }

    fn unlink(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.dir_fault()?;
        if !matches!(s.current.get(path), Some(Node::File(_))) {
            return Err(not_found(path));
        }
        // Injected unlink failures hit existing files only (a missing one is ENOENT).
        if s.faults.fail_unlink_of.as_deref() == Some(path) {
            s.injected += 1;
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        if fault(&mut s.faults.fail_unlink_after) {
            s.injected += 1;
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        let ppm = s.faults.unlink_error_ppm;
        if s.draw(ppm) {
            let code = if s.rng.chance(1, 2) {
                libc::EIO
            } else {
                libc::EPERM
            };
            return Err(io::Error::from_raw_os_error(code));
        }
        let op = DirOp::Remove(path.to_path_buf());
        apply(&mut s.current, &op);
        s.pending_dir.push((parent_of(path), op));
        Ok(())
    }

    fn fsync_dir(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.dir_fault()?;
        if fault(&mut s.faults.fail_dir_sync_after) {
            s.injected += 1;
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        let ppm = s.faults.dir_sync_error_ppm;
        if s.draw(ppm) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        s.sync_dir_entries(path);
        Ok(())
    }

    fn settle_dir(&self, dir: &Path) -> io::Result<()> {
        // The files in `dir` and its entries become durable; the simulated disk has no
        // clean-but-lost pages to drop.
        let mut s = self.lock();
        s.dir_fault()?;
        let st = &mut *s;
        let inodes: Vec<u64> = st
            .current
            .iter()
            .filter(|(p, _)| p.parent() == Some(dir))
            .filter_map(|(_, n)| match n {
                Node::File(i) => Some(*i),
                Node::Dir => None,
            })
            .collect();
        for i in inodes {
            if let Some(inode) = st.inodes.get_mut(&i) {
                inode.make_durable();
            }
        }
        st.sync_dir_entries(dir);
        Ok(())
    }

    fn lock_exclusive(&self, path: &Path, _mode: u32) -> io::Result<Box<dyn FsLock>> {
        let mut s = self.lock();
        if !s.current.contains_key(path) {
            s.create_file(path)?;
        }
        if !s.locks.insert(path.to_path_buf()) {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("{} is locked", path.display()),
            ));
        }
        Ok(Box::new(SimLock {
            fs: self.clone(),
            path: path.to_path_buf(),
            epoch: s.epoch,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synced_writes_survive_and_unsynced_ones_may_not() {
        let fs = SimFs::new(1);
        fs.mkdir(Path::new("/d"), 0o700).unwrap();
        fs.fsync_dir(Path::new("/")).unwrap();
        let f = fs
            .open(Path::new("/d/f"), OpenMode::create_new(false))
            .unwrap();
        f.pwritev(0, &[&[1u8; 1024]]).unwrap();
        f.fdatasync().unwrap();
        fs.fsync_dir(Path::new("/d")).unwrap();
        f.pwritev(1024, &[&[2u8; 4096]]).unwrap();
        fs.crash();
        let data = fs.read_file(Path::new("/d/f")).unwrap();
        assert_eq!(&data[..1024], &[1u8; 1024]);
        // Each later sector is either absent/zero or the new bytes, never anything else.
        for sec in data[1024..].chunks(SECTOR) {
            assert!(sec.iter().all(|&b| b == 0) || sec.iter().all(|&b| b == 2));
        }
        assert!(
            f.pread(0, &mut [0u8; 4]).is_err(),
            "handles die with the crash"
        );
    }

    #[test]
    fn unsynced_directory_changes_can_be_lost() {
        let mut lost = false;
        for seed in 0..20 {
            let fs = SimFs::new(seed);
            fs.open(Path::new("/a"), OpenMode::create_new(false))
                .unwrap();
            fs.crash();
            lost |= fs.kind(Path::new("/a")).unwrap().is_none();
        }
        assert!(lost);
        let fs = SimFs::new(3);
        fs.open(Path::new("/a"), OpenMode::create_new(false))
            .unwrap();
        fs.fsync_dir(Path::new("/")).unwrap();
        fs.crash();
        assert_eq!(fs.kind(Path::new("/a")).unwrap(), Some(EntryKind::File));
    }

    #[test]
    fn torn_sectors_take_one_of_their_versions() {
        let mut seen = HashSet::new();
        for seed in 0..64 {
            let fs = SimFs::new(seed);
            let f = fs
                .open(Path::new("/f"), OpenMode::create_new(false))
                .unwrap();
            fs.fsync_dir(Path::new("/")).unwrap();
            f.pwritev(0, &[&[1u8; 512]]).unwrap();
            f.fdatasync().unwrap();
            f.pwritev(0, &[&[2u8; 512]]).unwrap();
            f.pwritev(0, &[&[3u8; 512]]).unwrap();
            fs.crash();
            let d = fs.read_file(Path::new("/f")).unwrap();
            assert!(d.iter().all(|&b| b == d[0]));
            seen.insert(d[0]);
        }
        assert_eq!(seen, HashSet::from([1, 2, 3]));
    }

    #[test]
    fn a_dsync_write_makes_only_its_own_bytes_durable() {
        let mut lost_earlier = false;
        for seed in 0..32 {
            let fs = SimFs::new(seed);
            let f = fs
                .open(Path::new("/f"), OpenMode::create_new(false))
                .unwrap();
            fs.fsync_dir(Path::new("/")).unwrap();
            // Unsynced: [0, 1024) of ones. Then a FUA write of twos over [512, 1024) and
            // [4096, 4608).
            f.pwritev(0, &[&[1u8; 1024]]).unwrap();
            f.pwritev_dsync(512, &[&[2u8; 512]]).unwrap();
            f.pwritev_dsync(4096, &[&[2u8; 512]]).unwrap();
            fs.crash();
            let d = fs.read_file(Path::new("/f")).unwrap();
            assert_eq!(&d[4096..4608], &[2u8; 512], "seed {seed}");
            assert_eq!(
                &d[512..1024],
                &[2u8; 512],
                "seed {seed}: the newer bytes win"
            );
            assert!(d[..512].iter().all(|&b| b == d[0]) && d[0] <= 1);
            lost_earlier |= d[0] == 0;
        }
        assert!(
            lost_earlier,
            "a FUA write does not make the file's earlier unsynced writes durable"
        );
    }
}
