//! Running a log core's operation chains on a completion-based ring: the io_uring
//! backend (`uring`) and the simulated ring (`sim::SimRing`, which completes
//! operations in a seeded random order) share this logic.
//!
//! A chain is cut into *linked groups*: runs of consecutive writes and syncs submitted
//! together, each starting after the previous one completed (`IOSQE_IO_LINK`), so a
//! failed or short write cancels the sync after it (`-ECANCELED`) and a sync covers
//! exactly the writes before it. The other operations (create, open, close, rename)
//! are cheap metadata calls and run inline on the shard thread between groups. Once an
//! operation fails, the rest of its chain is reported cancelled without running, as the
//! log core expects.

use crate::backend::FsFile;
use crate::driver::Driver;
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
}

/// An operation of a log's chain, reported to its core.
#[derive(Debug)]
pub struct Completed {
    /// The log (its key on the shard).
    pub log: u64,
    /// The core's operation id.
    pub op: u64,
    /// The outcome.
    pub res: io::Result<()>,
}

struct Running {
    log: u64,
    rest: VecDeque<Op>,
    failed: bool,
    /// Ring submissions of the current group not completed yet.
    waiting: usize,
    /// Per operation of the current group: (id, parts not completed, first error).
    parts: Vec<(u64, usize, Option<io::Error>)>,
}

/// The chains of every log on one shard that are running on its ring.
#[derive(Default)]
pub struct ChainRunner {
    next_token: u64,
    next_chain: u64,
    chains: HashMap<u64, Running>,
    /// token -> (chain, index of the operation in its group).
    tokens: HashMap<u64, (u64, usize)>,
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
        let (chain, _) = self.tokens.get(&token)?;
        self.chains.get(chain).map(|c| c.log)
    }

    /// Starts a chain of `log`: inline operations run at once (their results go to
    /// `out`), and the first linked group is submitted to `ring`.
    pub fn start(
        &mut self,
        log: u64,
        chain: Chain,
        driver: &mut Driver,
        ring: &mut dyn Ring,
        out: &mut Vec<Completed>,
    ) {
        let key = self.next_chain;
        self.next_chain += 1;
        self.chains.insert(
            key,
            Running {
                log,
                rest: chain.ops.into(),
                failed: false,
                waiting: 0,
                parts: Vec::new(),
            },
        );
        self.advance(key, driver, ring, out);
    }

    /// Reports the completion of `token`. `driver` must be the driver of the log
    /// [`log_of`](Self::log_of) names. Unknown tokens are ignored.
    pub fn complete(
        &mut self,
        token: u64,
        res: io::Result<()>,
        driver: &mut Driver,
        ring: &mut dyn Ring,
        out: &mut Vec<Completed>,
    ) {
        let Some((key, idx)) = self.tokens.remove(&token) else {
            return;
        };
        let Some(r) = self.chains.get_mut(&key) else {
            return;
        };
        r.waiting -= 1;
        let part = &mut r.parts[idx];
        part.1 -= 1;
        if let Err(e) = res {
            part.2.get_or_insert(e);
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
        if r.waiting == 0 {
            r.parts.clear();
            self.advance(key, driver, ring, out);
        }
    }

    fn advance(&mut self, key: u64, driver: &mut Driver, ring: &mut dyn Ring, out: &mut Vec<Completed>) {
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
                let res = driver.run(&op.kind);
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
            let mut subs = Vec::new();
            let mut group = group.into_iter();
            let mut idx = 0;
            while let Some(op) = group.next() {
                let id = op.id;
                match to_ring_ops(op.kind, driver) {
                    Ok(pieces) => {
                        r.parts.push((id, pieces.len(), None));
                        for p in pieces {
                            let token = self.next_token;
                            self.next_token += 1;
                            self.tokens.insert(token, (key, idx));
                            r.waiting += 1;
                            subs.push(Submission { token, op: p });
                        }
                        idx += 1;
                    }
                    Err(e) => {
                        // No handle for the segment (a bug, surfaced as an I/O error
                        // that poisons the log): what was queued before it still runs.
                        r.failed = true;
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

/// The ring operations for one core operation: a write with more pieces than one
/// vectored write takes is split into consecutive writes.
fn to_ring_ops(kind: OpKind, driver: &Driver) -> io::Result<Vec<RingOp>> {
    Ok(match kind {
        OpKind::Write { seg, offset, data } => {
            let file = driver.file(seg)?.clone();
            if data.len() <= MAX_PIECES {
                vec![RingOp::Write { file, offset, data }]
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
                    });
                    at += n as u64;
                }
                out
            }
        }
        OpKind::Sync { seg } => vec![RingOp::Sync {
            file: driver.file(seg)?.clone(),
        }],
        OpKind::SyncDir { path } => vec![RingOp::SyncDir { path }],
        _ => unreachable!("only ring operations are converted"),
    })
}
