//! Running a log core's operation chains on a completion-based ring: the io_uring
//! ring (`uring`) and the simulated ring (`sim_ring::SimRing`, which completes
//! operations in a seeded random order) share this logic.
//!
//! A chain is cut into *linked groups*: runs of consecutive writes and syncs submitted
//! together, each starting after the previous one completed (`IOSQE_IO_LINK`), so a
//! failed or short write cancels the sync after it (`-ECANCELED`) and a sync covers
//! exactly the writes before it. The other operations (create, open, close, rename)
//! are cheap metadata calls and run inline on the shard thread between groups. Once an
//! operation fails, the rest of its chain is reported cancelled without running, as the
//! log core expects.

use super::files::LogFiles;
use super::{Completed, Host};
use crate::error::copy_io_error;
use crate::fs::FsFile;
use crate::log::ops::{Chain, IoData, Op, OpKind};
use std::collections::{HashMap, VecDeque};
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// Most pieces in one vectored write (the kernel's `IOV_MAX` is 1024).
pub const MAX_PIECES: usize = 512;

/// One operation submitted to a ring.
pub enum RingOp {
    /// Write `data` back to back at `offset`; anything short of all of it is an error.
    Write {
        /// The file.
        file: Arc<dyn FsFile>,
        /// Byte offset in the file.
        offset: u64,
        /// The bytes (kept alive until the completion).
        data: Vec<IoData>,
        /// `RWF_DSYNC`: the write is durable when it completes (it stands in for a
        /// write + `fdatasync` pair when the file holds no other unsynced write).
        dsync: bool,
    },
    /// `fdatasync` the file.
    Sync {
        /// The file.
        file: Arc<dyn FsFile>,
    },
    /// `fsync` a directory.
    SyncDir {
        /// The directory.
        path: PathBuf,
    },
}

impl RingOp {
    /// Bytes a write must transfer (0 for syncs).
    pub fn expected_len(&self) -> usize {
        match self {
            RingOp::Write { data, .. } => data.iter().map(IoData::len).sum(),
            _ => 0,
        }
    }
}

/// A ring operation with the token its completion is reported under.
pub struct Submission {
    /// Returned with the completion.
    pub token: u64,
    /// What to do.
    pub op: RingOp,
}

/// A completion-based executor of linked groups.
pub trait Ring {
    /// Queues `ops` to run one after another, each after the previous one completed
    /// successfully; a failure (or a short write) completes the rest with
    /// `ECANCELED`. Every submission completes exactly once, by token.
    fn submit_linked(&mut self, ops: Vec<Submission>);

    /// Appends completions to `out` as (token, result). With `block`, first waits until
    /// one may be ready, `deadline` passes, or `host` has work (see [`Host`]). An error
    /// means the ring failed beyond repair (completions lost).
    fn wait(
        &mut self,
        now: u64,
        deadline: Option<u64>,
        block: bool,
        host: &dyn Host,
        out: &mut Vec<(u64, io::Result<()>)>,
    ) -> io::Result<()>;

    /// Test hook: the next `wait` reports a completion the kernel dropped.
    fn inject_lost_completion(&mut self) {}

    /// Takes `arena` (the shard's log buffers, made when its first log was placed) as
    /// registered memory where it can; true once settled (registered, or refused for
    /// good), false to be asked again later (operations in flight).
    fn adopt_arena(&mut self, _arena: &std::sync::Arc<crate::buffer::BufferArena>) -> bool {
        true
    }

    /// True when a write and its sync may go out as one `RWF_DSYNC` write.
    fn dsync_writes(&self) -> bool {
        true
    }
}

struct Running {
    log: u64,
    /// The log's files: inline operations run on them, writes and syncs name them.
    files: Arc<LogFiles>,
    rest: VecDeque<Op>,
    failed: bool,
    /// Ring submissions of the current group not completed yet.
    waiting: usize,
    /// Per operation of the current group: (id, parts not completed, first error).
    parts: Vec<(u64, usize, Option<io::Error>)>,
    /// Per segment the current group writes or syncs: unsynced writes left after it.
    effects: Vec<(u64, bool)>,
    group_failed: bool,
}

/// The chains of every log on one shard that are running on its ring.
#[derive(Default)]
pub struct ChainRunner {
    next_token: u64,
    next_chain: u64,
    chains: HashMap<u64, Running>,
    /// token -> (chain, indexes of the operations in its group it completes: two
    /// for a write fused with the sync after it).
    tokens: HashMap<u64, (u64, usize, Option<usize>)>,
    /// Negative control for the crash checker: fuse a write and its sync into an
    /// `RWF_DSYNC` write even when the file holds other unsynced writes, which a crash
    /// can then lose. Never set outside tests.
    fuse_into_dirty: bool,
}

fn cancelled() -> io::Error {
    io::Error::from_raw_os_error(libc::ECANCELED)
}

fn is_ring_op(k: &OpKind) -> bool {
    matches!(
        k,
        OpKind::Write { .. } | OpKind::Sync { .. } | OpKind::SyncDir { .. }
    )
}

impl ChainRunner {
    /// An empty runner.
    pub fn new() -> ChainRunner {
        ChainRunner::default()
    }

    /// Test hook (a negative control): fuse even into files with unsynced writes, which
    /// breaks durability; the crash checker must catch it.
    pub fn fuse_into_dirty_files(&mut self, yes: bool) {
        self.fuse_into_dirty = yes;
    }

    /// Ring submissions not completed yet.
    pub fn in_flight(&self) -> usize {
        self.tokens.len()
    }

    /// True when `log` has a chain running.
    pub fn has_chains(&self, log: u64) -> bool {
        self.chains.values().any(|c| c.log == log)
    }

    /// The log a token belongs to (`None` for tokens not issued here).
    pub fn log_of(&self, token: u64) -> Option<u64> {
        let (chain, _, _) = self.tokens.get(&token)?;
        self.chains.get(chain).map(|c| c.log)
    }

    /// Starts a chain of `log`, whose files are `files`: inline operations run at once
    /// (their results go to `out`), and the first linked group is submitted to `ring`.
    pub fn start(
        &mut self,
        log: u64,
        chain: Chain,
        files: &Arc<LogFiles>,
        ring: &mut dyn Ring,
        out: &mut Vec<Completed>,
    ) {
        let key = self.next_chain;
        self.next_chain += 1;
        self.chains.insert(
            key,
            Running {
                log,
                files: files.clone(),
                rest: chain.ops.into(),
                failed: false,
                waiting: 0,
                parts: Vec::new(),
                effects: Vec::new(),
                group_failed: false,
            },
        );
        self.advance(key, ring, out);
    }

    /// Reports the completion of `token`. A token this runner did not issue is a bug.
    pub fn complete(
        &mut self,
        token: u64,
        res: io::Result<()>,
        ring: &mut dyn Ring,
        out: &mut Vec<Completed>,
    ) {
        let (key, idx, fused) = self
            .tokens
            .remove(&token)
            .unwrap_or_else(|| panic!("completion of token {token}, which was never issued"));
        let r = self
            .chains
            .get_mut(&key)
            .unwrap_or_else(|| panic!("token {token} completes chain {key}, which has ended"));
        r.waiting -= 1;
        let err = res.err();
        for idx in std::iter::once(idx).chain(fused) {
            let part = &mut r.parts[idx];
            part.1 -= 1;
            if let Some(e) = &err {
                // A fused write reports its error for the sync too.
                part.2.get_or_insert_with(|| copy_io_error(e));
            }
            if part.1 == 0 {
                let res = match part.2.take() {
                    Some(e) => Err(e),
                    None => Ok(()),
                };
                r.failed |= res.is_err();
                out.push(Completed {
                    log: r.log,
                    op: part.0,
                    res,
                });
            }
        }
        if err.is_some() {
            r.group_failed = true;
        }
        if r.waiting == 0 {
            // What the group left unsynced, for the next fusion decision (after a
            // failure nothing is assumed synced; the log is poisoned anyway).
            for (seg, dirty) in r.effects.drain(..) {
                r.files.set_dirty(seg, dirty || r.group_failed);
            }
            r.group_failed = false;
            r.parts.clear();
            self.advance(key, ring, out);
        }
    }

    fn advance(&mut self, key: u64, ring: &mut dyn Ring, out: &mut Vec<Completed>) {
        let Some(r) = self.chains.get_mut(&key) else {
            return;
        };
        while r.waiting == 0 {
            let Some(op) = r.rest.pop_front() else {
                self.chains.remove(&key);
                return;
            };
            if r.failed {
                out.push(Completed {
                    log: r.log,
                    op: op.id,
                    res: Err(cancelled()),
                });
                continue;
            }
            if !is_ring_op(&op.kind) {
                let res = r
                    .files
                    .run_metadata(&op.kind)
                    .expect("not a ring operation: a metadata one");
                r.failed |= res.is_err();
                out.push(Completed {
                    log: r.log,
                    op: op.id,
                    res,
                });
                continue;
            }
            // A linked group: this operation and the ring operations right after it.
            let mut group = vec![op];
            while r.rest.front().is_some_and(|o| is_ring_op(&o.kind)) {
                group.push(r.rest.pop_front().expect("front exists"));
            }
            for op in &group {
                match &op.kind {
                    OpKind::Write { seg, .. } => set_effect(&mut r.effects, *seg, true),
                    OpKind::Sync { seg } => set_effect(&mut r.effects, *seg, false),
                    _ => {}
                }
            }
            let mut subs = Vec::new();
            let mut group = group.into_iter().peekable();
            let mut idx = 0;
            while let Some(op) = group.next() {
                let id = op.id;
                // A write followed by the sync of the same file, into a file with no
                // other unsynced write, is one RWF_DSYNC write: one operation, no
                // second round through the kernel's worker threads.
                let fuse = match (&op.kind, group.peek().map(|o| &o.kind)) {
                    (OpKind::Write { seg, .. }, Some(OpKind::Sync { seg: s2 })) => {
                        seg == s2
                            && ring.dsync_writes()
                            && (!r.files.is_dirty(*seg) || self.fuse_into_dirty)
                    }
                    _ => false,
                };
                match to_ring_ops(op.kind, &r.files, fuse) {
                    Ok(pieces) => {
                        r.parts.push((id, pieces.len(), None));
                        let mut fused = None;
                        if fuse {
                            let sync = group.next().expect("peeked");
                            r.parts.push((sync.id, pieces.len(), None));
                            fused = Some(idx + 1);
                        }
                        for p in pieces {
                            let token = self.next_token;
                            self.next_token += 1;
                            self.tokens.insert(token, (key, idx, fused));
                            r.waiting += 1;
                            subs.push(Submission { token, op: p });
                        }
                        idx += if fuse { 2 } else { 1 };
                    }
                    Err(e) => {
                        // No handle for the segment (a bug, surfaced as an I/O error
                        // that poisons the log): what was queued before it still runs.
                        r.failed = true;
                        r.group_failed = true;
                        out.push(Completed {
                            log: r.log,
                            op: id,
                            res: Err(e),
                        });
                        for op in group.by_ref() {
                            out.push(Completed {
                                log: r.log,
                                op: op.id,
                                res: Err(cancelled()),
                            });
                        }
                    }
                }
            }
            if !subs.is_empty() {
                ring.submit_linked(subs);
            }
        }
    }
}

fn set_effect(effects: &mut Vec<(u64, bool)>, seg: u64, dirty: bool) {
    match effects.iter_mut().find(|(s, _)| *s == seg) {
        Some(e) => e.1 = dirty,
        None => effects.push((seg, dirty)),
    }
}

/// The ring operations for one core operation: a write with more pieces than one
/// vectored write takes is split into consecutive writes.
fn to_ring_ops(kind: OpKind, files: &LogFiles, dsync: bool) -> io::Result<Vec<RingOp>> {
    Ok(match kind {
        OpKind::Write { seg, offset, data } => {
            let file = files.file(seg)?;
            if data.len() <= MAX_PIECES {
                vec![RingOp::Write {
                    file,
                    offset,
                    data,
                    dsync,
                }]
            } else {
                let mut out = Vec::new();
                let mut at = offset;
                let mut data = data.into_iter().peekable();
                while data.peek().is_some() {
                    let part: Vec<IoData> = data.by_ref().take(MAX_PIECES).collect();
                    let n: usize = part.iter().map(IoData::len).sum();
                    out.push(RingOp::Write {
                        file: file.clone(),
                        offset: at,
                        data: part,
                        dsync,
                    });
                    at += n as u64;
                }
                out
            }
        }
        OpKind::Sync { seg } => vec![RingOp::Sync {
            file: files.file(seg)?,
        }],
        OpKind::SyncDir { path } => vec![RingOp::SyncDir { path }],
        _ => unreachable!("only ring operations are converted"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::AlignedBuf;
    use crate::fs::sim::SimFs;
    use crate::fs::Fs;
    use crate::log::ops::Op;
    use std::path::Path;

    /// Records submissions; completions are scripted by the test.
    #[derive(Default)]
    struct Scripted {
        groups: Vec<Vec<(u64, &'static str, bool)>>,
    }

    impl Ring for Scripted {
        fn submit_linked(&mut self, ops: Vec<Submission>) {
            self.groups.push(
                ops.into_iter()
                    .map(|s| {
                        let (what, dsync) = match s.op {
                            RingOp::Write { dsync, .. } => ("write", dsync),
                            RingOp::Sync { .. } => ("sync", false),
                            RingOp::SyncDir { .. } => ("syncdir", false),
                        };
                        (s.token, what, dsync)
                    })
                    .collect(),
            );
        }

        fn wait(
            &mut self,
            _: u64,
            _: Option<u64>,
            _: bool,
            _: &dyn Host,
            _: &mut Vec<(u64, io::Result<()>)>,
        ) -> io::Result<()> {
            Ok(())
        }
    }

    fn files_with_segment() -> Arc<LogFiles> {
        let fs = SimFs::new(1);
        fs.mkdir(Path::new("/d"), 0o700).unwrap();
        let d = Arc::new(LogFiles::new(Arc::new(fs), false));
        d.run_metadata(&OpKind::Create {
            seg: 0,
            path: "/d/0".into(),
            mode: 0o600,
        })
        .unwrap()
        .unwrap();
        d
    }

    fn write(id: u64) -> Op {
        Op {
            id,
            kind: OpKind::Write {
                seg: 0,
                offset: 0,
                data: vec![IoData::Owned(AlignedBuf::zeroed(4096))],
            },
        }
    }

    fn sync(id: u64) -> Op {
        Op {
            id,
            kind: OpKind::Sync { seg: 0 },
        }
    }

    #[test]
    fn a_short_write_fails_its_op_cancels_the_rest_and_marks_the_file_dirty() {
        let d = files_with_segment();
        let mut ring = Scripted::default();
        let mut runner = ChainRunner::new();
        let mut out = Vec::new();
        // Written-behind first (no sync): the file now holds an unsynced write.
        runner.start(
            1,
            Chain {
                ops: vec![write(1)],
            },
            &d,
            &mut ring,
            &mut out,
        );
        let t = ring.groups[0][0].0;
        runner.complete(t, Ok(()), &mut ring, &mut out);
        assert!(d.is_dirty(0));
        // So the next write + sync pair is not fused: a linked write then sync.
        let chain = Chain {
            ops: vec![
                write(2),
                sync(3),
                Op {
                    id: 4,
                    kind: OpKind::Close { seg: 0 },
                },
            ],
        };
        runner.start(1, chain, &d, &mut ring, &mut out);
        let g = ring.groups[1].clone();
        assert_eq!(g.iter().map(|x| x.1).collect::<Vec<_>>(), ["write", "sync"]);
        assert!(!g[0].2, "not RWF_DSYNC: an earlier write is unsynced");
        out.clear();
        let short = io::Error::new(io::ErrorKind::WriteZero, "short write: 100 of 4096 bytes");
        runner.complete(g[0].0, Err(short), &mut ring, &mut out);
        runner.complete(g[1].0, Err(cancelled()), &mut ring, &mut out);
        let res: Vec<(u64, Option<i32>, bool)> = out
            .iter()
            .map(|c| {
                (
                    c.op,
                    c.res.as_ref().err().and_then(|e| e.raw_os_error()),
                    c.res.is_err(),
                )
            })
            .collect();
        assert_eq!(
            res,
            [
                (2, None, true),
                (3, Some(libc::ECANCELED), true),
                (4, Some(libc::ECANCELED), true)
            ],
            "the write fails, the sync and everything after it are cancelled"
        );
        assert!(d.file(0).is_ok(), "the cancelled close did not run");
        assert!(d.is_dirty(0), "after a failure nothing is assumed synced");
        assert!(!runner.has_chains(1));
    }

    #[test]
    fn a_write_then_sync_into_a_clean_file_is_one_dsync_write() {
        let d = files_with_segment();
        let mut ring = Scripted::default();
        let mut runner = ChainRunner::new();
        let mut out = Vec::new();
        runner.start(
            7,
            Chain {
                ops: vec![write(1), sync(2)],
            },
            &d,
            &mut ring,
            &mut out,
        );
        assert_eq!(ring.groups[0].len(), 1);
        assert_eq!(ring.groups[0][0].1, "write");
        assert!(ring.groups[0][0].2, "RWF_DSYNC");
        runner.complete(ring.groups[0][0].0, Ok(()), &mut ring, &mut out);
        let ops: Vec<u64> = out.iter().map(|c| c.op).collect();
        assert_eq!(ops, [1, 2], "both the write and the sync complete");
        assert!(out.iter().all(|c| c.res.is_ok()));
        assert!(!d.is_dirty(0));
    }
}
