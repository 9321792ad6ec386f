//! The blocking executor (`IoBackend::Sync`, the portable backend): each operation of a
//! chain is a blocking system call on the host's thread (`pwritev`, `fdatasync`,
//! `fsync` of the directory), in order; once one fails, the rest are cancelled, as an
//! io_uring link chain would be. A chain has finished when `start` returns, so there
//! is never anything to wait for: when the host would sleep, it parks.

use super::files::LogFiles;
use super::{Completed, Executor, Host};
use crate::fs::write_all_at;
use crate::log::ops::{Chain, OpKind};
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

/// Runs a chain in order; after a failure the rest are cancelled. The chain (and the
/// buffers it holds) is dropped before the results are returned.
pub fn run_chain(files: &LogFiles, chain: Chain) -> Vec<(u64, io::Result<()>)> {
    let mut out = Vec::with_capacity(chain.ops.len());
    let mut failed = false;
    for op in chain.ops {
        let r = if failed {
            Err(io::Error::from_raw_os_error(libc::ECANCELED))
        } else {
            run_op(files, &op.kind)
        };
        failed |= r.is_err();
        out.push((op.id, r));
    }
    out
}

/// The blocking executor.
#[derive(Default)]
pub struct BlockingExecutor;

impl Executor for BlockingExecutor {
    fn start(&mut self, log: u64, chain: Chain, files: &Arc<LogFiles>, done: &mut Vec<Completed>) {
        done.extend(
            run_chain(files, chain)
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
