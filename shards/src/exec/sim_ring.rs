//! A simulated io_uring over the simulated disk ([`SimFs`]): the ring model the crash
//! checker runs the real [`ChainRunner`](super::chains::ChainRunner) on. Operations of
//! different linked groups complete in a seeded random order, and the rules that make
//! that reordering safe are checked at every write.

use super::chains::{Ring, RingOp, Submission};
use crate::fs::sim::{SimFs, SimRng};
use crate::fs::{Fs, FsFile};
use std::io;
use std::sync::Arc;

/// A simulated io_uring over a [`SimFs`]: linked groups queue up, and each call of
/// [`complete_some`](SimRing::complete_some) runs the head operation of randomly chosen
/// groups, so operations of different groups land on the disk, and complete, in any
/// order (as a real ring's may), while each group keeps its link order.
///
/// It also checks the rules for the partly filled last block that make reordering
/// safe (and that no write has an empty piece, which a fixed-buffer vectored write
/// refuses), and records every breach in [`violations`](SimRing::violations):
/// - no two writes to the same 4 KiB block of a file are in flight at once (else the
///   older could land last);
/// - a write never changes a non-zero byte an earlier write put in the file (the
///   acknowledged prefix of a rewritten block is byte-identical; only zero padding
///   gets filled in).
pub struct SimRing {
    fs: SimFs,
    groups: Vec<std::collections::VecDeque<Submission>>,
    /// What writes through this ring put in each file, keyed by handle address (the
    /// handle is kept, so its address is not reused by another file's).
    shadow: std::collections::HashMap<usize, (Arc<dyn FsFile>, Vec<u8>)>,
    violations: Vec<String>,
    /// Parts per million of picks of a sync that leave it in flight (a slow sync).
    slow_sync_ppm: u32,
    /// Chooses what completes at each `wait` (seeded: a seed reproduces the order).
    rng: SimRng,
}

fn file_key(f: &Arc<dyn FsFile>) -> usize {
    Arc::as_ptr(f) as *const () as usize
}

fn write_blocks(op: &RingOp) -> Option<(usize, u64, u64)> {
    match op {
        RingOp::Write {
            file, offset, data, ..
        } => {
            let len: usize = data.iter().map(|d| d.len()).sum();
            let b = crate::format::BLOCK as u64;
            Some((
                file_key(file),
                offset / b,
                (offset + len as u64).div_ceil(b),
            ))
        }
        _ => None,
    }
}

impl SimRing {
    /// A ring over `fs`.
    pub fn new(fs: SimFs, seed: u64) -> SimRing {
        SimRing {
            rng: SimRng::new(seed),
            fs,
            groups: Vec::new(),
            shadow: Default::default(),
            violations: Vec::new(),
            slow_sync_ppm: 0,
        }
    }

    /// Holds syncs back: each time one is picked to run, it stays in flight with
    /// probability `ppm` per million, while other groups go ahead.
    pub fn set_slow_syncs(&mut self, ppm: u32) {
        self.slow_sync_ppm = ppm;
    }

    /// Operations submitted and not completed.
    pub fn pending(&self) -> usize {
        self.groups.iter().map(|g| g.len()).sum()
    }

    /// Breaches of the partial-block rules seen so far.
    pub fn violations(&self) -> &[String] {
        &self.violations
    }

    fn run(&mut self, op: &RingOp) -> io::Result<()> {
        match op {
            RingOp::Write {
                file,
                offset,
                data,
                dsync,
            } => {
                let slices: Vec<&[u8]> = data.iter().map(|d| d.bytes()).collect();
                let shadow = &mut self
                    .shadow
                    .entry(file_key(file))
                    .or_insert_with(|| (file.clone(), Vec::new()))
                    .1;
                let mut at = *offset as usize;
                for s in &slices {
                    if shadow.len() < at + s.len() {
                        shadow.resize(at + s.len(), 0);
                    }
                    for (i, &b) in s.iter().enumerate() {
                        let old = shadow[at + i];
                        if old != 0 && old != b {
                            self.violations.push(format!(
                                "a write at offset {offset} changes byte {} from {old:#04x} to {b:#04x}",
                                at + i
                            ));
                            break;
                        }
                    }
                    shadow[at..at + s.len()].copy_from_slice(s);
                    at += s.len();
                }
                let want: usize = slices.iter().map(|s| s.len()).sum();
                let n = if *dsync {
                    file.pwritev_dsync(*offset, &slices)?
                } else {
                    file.pwritev(*offset, &slices)?
                };
                if n != want {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        format!("short write: {n} of {want} bytes at offset {offset}"),
                    ));
                }
                Ok(())
            }
            RingOp::Sync { file } => file.fdatasync(),
            RingOp::SyncDir { path } => self.fs.fsync_dir(path),
        }
    }

    /// Runs the next operation of up to `n` randomly chosen groups; returns the
    /// completions (a failure completes the rest of its group with `ECANCELED`).
    pub fn complete_some(&mut self, rng: &mut SimRng, n: usize) -> Vec<(u64, io::Result<()>)> {
        let mut out = Vec::new();
        for _ in 0..n {
            if self.groups.is_empty() {
                break;
            }
            let g = rng.below(self.groups.len() as u64) as usize;
            let is_sync = match &self.groups[g][0].op {
                RingOp::Sync { .. } => true,
                RingOp::Write { dsync, .. } => *dsync,
                RingOp::SyncDir { .. } => true,
            };
            if is_sync
                && self.slow_sync_ppm > 0
                && rng.below(1_000_000) < u64::from(self.slow_sync_ppm)
            {
                continue;
            }
            let s = self.groups[g].pop_front().expect("groups are never empty");
            let r = self.run(&s.op);
            let failed = r.is_err();
            out.push((s.token, r));
            if failed {
                for s in self.groups[g].drain(..) {
                    out.push((s.token, Err(io::Error::from_raw_os_error(libc::ECANCELED))));
                }
            }
            if self.groups[g].is_empty() {
                self.groups.swap_remove(g);
            }
        }
        out
    }

    /// At a simulated crash: the head write of each group may have reached the disk
    /// (still unsynced, so the crash keeps, drops or tears it); nothing else ran.
    pub fn crash(&mut self) {
        for g in std::mem::take(&mut self.groups) {
            if let Some(s) = g.front() {
                if matches!(s.op, RingOp::Write { .. }) && self.rng.chance(1, 2) {
                    let _ = self.run(&s.op);
                }
            }
        }
    }
}

impl Ring for SimRing {
    /// Completes the next operation of a random number of randomly chosen groups; it
    /// never blocks (the checker runs on virtual time).
    fn wait(
        &mut self,
        _now: u64,
        _deadline: Option<u64>,
        _block: bool,
        _host: &dyn crate::exec::Host,
        out: &mut Vec<(u64, io::Result<()>)>,
    ) -> io::Result<()> {
        if self.pending() > 0 {
            let mut rng = self.rng.clone();
            let n = 1 + rng.below(self.pending() as u64) as usize;
            out.extend(self.complete_some(&mut rng, n));
            self.rng = rng;
        }
        Ok(())
    }

    fn submit_linked(&mut self, ops: Vec<Submission>) {
        for s in &ops {
            if let RingOp::Write { data, offset, .. } = &s.op {
                // The real ring's WRITEV_FIXED refuses an empty piece (EFAULT).
                if data.iter().any(|d| d.is_empty()) {
                    self.violations
                        .push(format!("a write at offset {offset} has an empty piece"));
                }
            }
        }
        for new in ops.iter().filter_map(|s| write_blocks(&s.op)) {
            let clash = self
                .groups
                .iter()
                .flatten()
                .filter_map(|s| write_blocks(&s.op))
                .find(|old| old.0 == new.0 && old.1 < new.2 && new.1 < old.2);
            if let Some(old) = clash {
                self.violations.push(format!(
                    "a write to blocks {}..{} was submitted while one to blocks {}..{} of the same file was in flight",
                    new.1, new.2, old.1, old.2
                ));
            }
        }
        if !ops.is_empty() {
            self.groups.push(ops.into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::AlignedBuf;
    use crate::fs::{Fs, OpenMode};
    use crate::log::ops::IoData;
    use std::collections::HashSet;
    use std::path::Path;

    fn block_of(byte: u8, len: usize) -> IoData {
        let b = AlignedBuf::zeroed(crate::format::BLOCK);
        // SAFETY: a fresh block, ours alone.
        unsafe { b.write(0, &vec![byte; len]) };
        IoData::Owned(b)
    }

    fn write(token: u64, file: &Arc<dyn FsFile>, offset: u64, data: IoData) -> Submission {
        Submission {
            token,
            op: RingOp::Write {
                file: file.clone(),
                offset,
                data: vec![data],
                dsync: false,
            },
        }
    }

    fn sim_file(fs: &SimFs) -> Arc<dyn FsFile> {
        fs.mkdir(Path::new("/d"), 0o700).unwrap();
        fs.open(Path::new("/d/f"), OpenMode::create_new(false))
            .unwrap()
    }

    #[test]
    fn sim_ring_reorders_groups_but_keeps_link_order() {
        let mut orders = HashSet::new();
        for seed in 0..64 {
            let fs = SimFs::new(seed);
            let f = sim_file(&fs);
            let mut ring = SimRing::new(fs, 1);
            ring.submit_linked(vec![
                write(1, &f, 0, block_of(1, 10)),
                Submission {
                    token: 2,
                    op: RingOp::Sync { file: f.clone() },
                },
            ]);
            ring.submit_linked(vec![write(3, &f, 4096, block_of(3, 10))]);
            let mut rng = SimRng::new(seed);
            let mut order = Vec::new();
            while ring.pending() > 0 {
                for (t, r) in ring.complete_some(&mut rng, 1) {
                    r.unwrap();
                    order.push(t);
                }
            }
            let pos = |t| order.iter().position(|&x| x == t).unwrap();
            assert!(pos(1) < pos(2), "a link runs in order: {order:?}");
            orders.insert(order);
            assert!(ring.violations().is_empty());
        }
        assert!(
            orders.len() >= 3,
            "groups complete in several orders: {orders:?}"
        );
    }

    #[test]
    fn sim_ring_flags_two_writes_to_one_block_in_flight() {
        let fs = SimFs::new(1);
        let f = sim_file(&fs);
        let mut ring = SimRing::new(fs, 1);
        ring.submit_linked(vec![write(1, &f, 0, block_of(1, 100))]);
        ring.submit_linked(vec![write(2, &f, 4096, block_of(1, 100))]);
        assert!(
            ring.violations().is_empty(),
            "different blocks may overlap in time"
        );
        ring.submit_linked(vec![write(3, &f, 0, block_of(1, 200))]);
        assert_eq!(ring.violations().len(), 1, "{:?}", ring.violations());
    }

    #[test]
    fn sim_ring_flags_a_rewrite_that_changes_written_bytes() {
        let fs = SimFs::new(1);
        let f = sim_file(&fs);
        let mut ring = SimRing::new(fs, 1);
        let mut rng = SimRng::new(1);
        // Padding filled in later: allowed.
        ring.submit_linked(vec![write(1, &f, 0, block_of(7, 100))]);
        ring.complete_some(&mut rng, 1);
        ring.submit_linked(vec![write(2, &f, 0, block_of(7, 300))]);
        ring.complete_some(&mut rng, 1);
        assert!(ring.violations().is_empty(), "{:?}", ring.violations());
        // A rewrite with other bytes in the written prefix: flagged.
        ring.submit_linked(vec![write(3, &f, 0, block_of(8, 300))]);
        ring.complete_some(&mut rng, 1);
        assert_eq!(ring.violations().len(), 1, "{:?}", ring.violations());
    }
}
