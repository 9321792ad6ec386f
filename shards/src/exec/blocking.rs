//! The blocking executor (`IoBackend::Sync`, the portable backend): each operation of a
//! chain is a blocking system call on the host's thread (`pwritev`, `fdatasync`,
//! `fsync` of the directory), in order; once one fails, the rest are cancelled, as an
//! io_uring link chain would be. A chain has finished when `start` returns, so there
//! is never anything to wait for: when the host would sleep, it parks.

use super::files::LogFiles;
use super::{Completed, Executor, Host};
use crate::error::copy_io_error;
use crate::fs::{write_all_at, write_all_dsync_at};
use crate::log::ops::{Chain, IoData, OpKind};
use std::io;
use std::sync::Arc;
use std::time::Duration;

/// Runs an I/O operation (or a metadata one) of a log with blocking calls.
pub fn run_op(files: &LogFiles, kind: &OpKind) -> io::Result<()> {
    log::trace!("aof2: {kind:?}");
    if let Some(r) = files.run_metadata(kind) {
        return r;
    }
    match kind {
        OpKind::Write { seg, offset, data } => {
            let file = files.file(*seg)?;
            let slices: Vec<&[u8]> = data.iter().map(|d| d.bytes()).collect();
            // IOV_MAX is 1024; a very large record can span more buffers.
            let mut at = *offset;
            for part in slices.chunks(super::chains::MAX_PIECES) {
                write_all_at(&*file, at, part)?;
                at += part.iter().map(|s| s.len() as u64).sum::<u64>();
            }
            Ok(())
        }
        OpKind::Sync { seg } => files.file(*seg)?.fdatasync(),
        OpKind::SyncDir { path } => files.fs().fsync_dir(path),
        _ => unreachable!("metadata operations ran above"),
    }
}

/// Runs a chain in order; after a failure the rest are cancelled. A write followed by
/// the sync of the same file, into a file with no other unsynced write, is one
/// `pwritev2(RWF_DSYNC)` call (one system call, and the sync is not a second trip
/// through the kernel). The chain (and the buffers it holds) is dropped before the
/// results are returned.
pub fn run_chain(files: &LogFiles, chain: Chain) -> Vec<(u64, io::Result<()>)> {
    run_chain_fusing(files, chain, false)
}

/// [`run_chain`]; with `into_dirty` (a negative control for the crash checker, never
/// set outside tests) it fuses even into files with unsynced writes, which a crash can
/// then lose.
fn run_chain_fusing(
    files: &LogFiles,
    chain: Chain,
    into_dirty: bool,
) -> Vec<(u64, io::Result<()>)> {
    let mut out = Vec::with_capacity(chain.ops.len());
    let mut failed = false;
    let mut ops = chain.ops.into_iter().peekable();
    while let Some(op) = ops.next() {
        if failed {
            out.push((op.id, Err(io::Error::from_raw_os_error(libc::ECANCELED))));
            continue;
        }
        if let OpKind::Write { seg, offset, data } = &op.kind {
            let fuse = matches!(ops.peek().map(|o| &o.kind), Some(OpKind::Sync { seg: s }) if s == seg)
                && data.len() <= super::chains::MAX_PIECES
                && (!files.is_dirty(*seg) || into_dirty);
            if fuse {
                let sync = ops.next().expect("peeked");
                let r = write_dsync(files, *seg, *offset, data);
                // After a failure nothing is assumed synced.
                files.set_dirty(*seg, r.is_err());
                failed |= r.is_err();
                let sync_r = match &r {
                    Ok(()) => Ok(()),
                    Err(e) => Err(copy_io_error(e)),
                };
                out.push((op.id, r));
                out.push((sync.id, sync_r));
                continue;
            }
        }
        let r = run_op(files, &op.kind);
        match &op.kind {
            OpKind::Write { seg, .. } => files.set_dirty(*seg, true),
            OpKind::Sync { seg } => files.set_dirty(*seg, r.is_err()),
            _ => {}
        }
        failed |= r.is_err();
        out.push((op.id, r));
    }
    out
}

/// Writes `data` at `offset` of segment `seg` and makes those bytes durable, in one call.
fn write_dsync(files: &LogFiles, seg: u64, offset: u64, data: &[IoData]) -> io::Result<()> {
    let file = files.file(seg)?;
    let slices: Vec<&[u8]> = data.iter().map(|d| d.bytes()).collect();
    write_all_dsync_at(&*file, offset, &slices)
}

/// The blocking executor.
#[derive(Default)]
pub struct BlockingExecutor {
    fuse_into_dirty: bool,
}

impl BlockingExecutor {
    /// Test hook (a negative control): fuse a write and its sync even into files with
    /// unsynced writes, which breaks durability; the crash checker must catch it.
    pub fn fusing_into_dirty_files() -> BlockingExecutor {
        BlockingExecutor {
            fuse_into_dirty: true,
        }
    }
}

impl Executor for BlockingExecutor {
    fn start(&mut self, log: u64, chain: Chain, files: &Arc<LogFiles>, done: &mut Vec<Completed>) {
        done.extend(
            run_chain_fusing(files, chain, self.fuse_into_dirty)
                .into_iter()
                .map(|(op, res)| Completed { log, op, res }),
        );
    }

    fn progress(
        &mut self,
        now: u64,
        deadline: Option<u64>,
        block: bool,
        host: &dyn Host,
        _done: &mut Vec<Completed>,
    ) -> Result<(), String> {
        if block && host.may_sleep() {
            match deadline {
                Some(d) if d <= now => {}
                Some(d) => host.park(Some(Duration::from_nanos(d - now))),
                None => host.park(None),
            }
            host.awake();
        }
        Ok(())
    }

    fn has_chains(&self, _log: u64) -> bool {
        false
    }

    fn inject_lost_completion(&mut self) -> Result<(), String> {
        Err("an executor failure injected (test hook)".into())
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::AlignedBuf;
    use crate::fs::sim::SimFs;
    use crate::fs::Fs;
    use crate::log::ops::{IoData, Op};
    use std::path::Path;

    fn files(fs: &Arc<SimFs>) -> LogFiles {
        fs.mkdir(Path::new("/d"), 0o700).unwrap();
        let d = LogFiles::new(fs.clone(), false);
        d.run_metadata(&OpKind::Create {
            seg: 0,
            path: "/d/0".into(),
            mode: 0o600,
        })
        .unwrap()
        .unwrap();
        fs.fsync_dir(Path::new("/d")).unwrap();
        fs.fsync_dir(Path::new("/")).unwrap();
        d
    }

    fn write(id: u64, offset: u64, byte: u8) -> Op {
        let b = AlignedBuf::zeroed(4096);
        // SAFETY: a fresh buffer, ours alone.
        unsafe { b.write(0, &[byte; 4096]) };
        Op {
            id,
            kind: OpKind::Write {
                seg: 0,
                offset,
                data: vec![IoData::Owned(b)],
            },
        }
    }

    fn sync(id: u64) -> Op {
        Op {
            id,
            kind: OpKind::Sync { seg: 0 },
        }
    }

    fn ok(results: &[(u64, io::Result<()>)]) -> Vec<u64> {
        results
            .iter()
            .map(|(id, r)| {
                assert!(r.is_ok(), "op {id}: {r:?}");
                *id
            })
            .collect()
    }

    /// A commit into a clean file is one RWF_DSYNC write (on the simulated disk, as on
    /// a device with FUA, only its own bytes are durable then); after a write behind
    /// it, the commit is a write and an fdatasync, which makes the earlier write
    /// durable too. Every seed's crash keeps both blocks.
    #[test]
    fn a_commit_after_a_write_behind_syncs_the_whole_file() {
        for seed in 0..32 {
            let fs = Arc::new(SimFs::new(seed));
            let d = files(&fs);
            let r = run_chain(
                &d,
                Chain {
                    ops: vec![write(1, 0, 1)],
                },
            );
            assert_eq!(ok(&r), [1]);
            assert!(d.is_dirty(0), "a write behind leaves the file dirty");
            let r = run_chain(
                &d,
                Chain {
                    ops: vec![write(2, 4096, 2), sync(3)],
                },
            );
            assert_eq!(ok(&r), [2, 3]);
            assert!(!d.is_dirty(0));
            // Clean now: this commit is fused, and still durable.
            let r = run_chain(
                &d,
                Chain {
                    ops: vec![write(4, 8192, 3), sync(5)],
                },
            );
            assert_eq!(ok(&r), [4, 5]);
            assert!(!d.is_dirty(0));
            fs.crash();
            let got = fs.read_file(Path::new("/d/0")).unwrap();
            assert_eq!(got.len(), 3 * 4096, "seed {seed}");
            for (i, b) in [1u8, 2, 3].into_iter().enumerate() {
                assert!(
                    got[i * 4096..(i + 1) * 4096].iter().all(|&x| x == b),
                    "seed {seed}: block {i} was acknowledged durable"
                );
            }
        }
    }

    /// The negative control of the rule above: fusing into the dirty file loses the
    /// written-behind block on some crash.
    #[test]
    fn fusing_into_a_dirty_file_can_lose_the_write_behind() {
        let lost = (0..64).any(|seed| {
            let fs = Arc::new(SimFs::new(seed));
            let d = files(&fs);
            ok(&run_chain(
                &d,
                Chain {
                    ops: vec![write(1, 0, 1)],
                },
            ));
            ok(&run_chain_fusing(
                &d,
                Chain {
                    ops: vec![write(2, 4096, 2), sync(3)],
                },
                true,
            ));
            fs.crash();
            let got = fs.read_file(Path::new("/d/0")).unwrap();
            !got[..4096].iter().all(|&x| x == 1)
        });
        assert!(lost, "an RWF_DSYNC write promises only its own bytes");
    }
}
