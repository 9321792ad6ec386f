//! One sealed segment's swap from its raw file to a compressed one, in DESIGN.md's
//! order: compress (and check the copy against the raw bytes), write `<id>.zst.tmp`,
//! `fdatasync` it, rename it to `<id>.zst`, sync the directory. Only then may the raw
//! file go (the log core queues its removal when told). One file-system operation per
//! [`Swap::step`], so the crash checker can cut the swap between any two; the worker
//! thread runs the same steps back to back.

use crate::compressed_format::{compress_segment_until, matches_raw};
use crate::fs::{write_all_at, Fs, FsFile, OpenMode};
use crate::log::CompressJob;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// Raw bytes per compressed chunk: one `read_record` inflates one chunk.
pub const CHUNK_BYTES: usize = 128 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Compress,
    ClearTemp,
    Create,
    Write,
    Sync,
    Rename,
    SyncDir,
    Done,
}

/// What a step achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stepped {
    /// Another step follows.
    More,
    /// `stop` said to stop before the rename: call [`Swap::clean_up`]; the raw file
    /// stands.
    Stopped,
    /// The compressed file is in place, durably: it takes `disk_bytes` bytes.
    Done {
        /// The compressed file's length.
        disk_bytes: u64,
    },
}

/// A failed step: what was done, to which file, and why.
#[derive(Debug)]
pub struct SwapError {
    /// The operation.
    pub op: &'static str,
    /// The file (or directory) it was done to.
    pub path: PathBuf,
    /// The error.
    pub error: io::Error,
}

/// One segment's swap, step by step.
pub struct Swap {
    job: CompressJob,
    next: Step,
    out: Vec<u8>,
    file: Option<Arc<dyn FsFile>>,
}

impl Swap {
    /// The swap `job` describes, not started.
    pub fn new(job: CompressJob) -> Swap {
        Swap {
            job,
            next: Step::Compress,
            out: Vec::new(),
            file: None,
        }
    }

    /// The segment being swapped.
    pub fn segment(&self) -> u64 {
        self.job.segment
    }

    /// The compressed file's name.
    pub fn target(&self) -> &std::path::Path {
        &self.job.target
    }

    /// Runs the next step. `stop` is asked while the raw file is still the only one in
    /// place (a closing log stops here and the next open compresses the segment).
    pub fn step(&mut self, fs: &dyn Fs, stop: &dyn Fn() -> bool) -> Result<Stepped, SwapError> {
        if self.next <= Step::Rename && stop() {
            return Ok(Stepped::Stopped);
        }
        let j = &self.job;
        let err = |op: &'static str, path: &PathBuf| {
            let path = path.clone();
            move |error| SwapError { op, path, error }
        };
        match self.next {
            Step::Compress => {
                let raw = fs
                    .open(&j.raw, OpenMode::Read)
                    .and_then(|f| f.map())
                    .map_err(err("map", &j.raw))?;
                let bad =
                    |e: crate::format::FormatError| io::Error::new(io::ErrorKind::InvalidData, e);
                let out = compress_segment_until(&raw, j.level, CHUNK_BYTES, stop)
                    .map_err(|e| err("compress", &j.raw)(bad(e)))?;
                let Some(out) = out else {
                    return Ok(Stepped::Stopped);
                };
                // The raw file goes once the copy is in place: check the copy first.
                matches_raw(&out, &raw)
                    .map_err(|e| err("check the compressed copy of", &j.raw)(bad(e)))?;
                self.out = out;
            }
            Step::ClearTemp => match fs.unlink(&j.temp) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(err("remove the stale", &j.temp)(e))
                }
                _ => {}
            },
            Step::Create => {
                let mode = OpenMode::CreateNew {
                    direct: false,
                    mode: j.mode,
                };
                self.file = Some(fs.open(&j.temp, mode).map_err(err("create", &j.temp))?);
            }
            Step::Write => {
                let f = self.file.as_ref().expect("created");
                write_all_at(&**f, 0, &[&self.out]).map_err(err("write", &j.temp))?;
            }
            Step::Sync => {
                let f = self.file.take().expect("created");
                f.fdatasync().map_err(err("fdatasync", &j.temp))?;
            }
            Step::Rename => fs
                .rename(&j.temp, &j.target)
                .map_err(err("rename", &j.temp))?,
            Step::SyncDir => {
                fs.fsync_dir(&j.dir)
                    .map_err(err("fsync the directory", &j.dir))?;
                self.next = Step::Done;
                return Ok(Stepped::Done {
                    disk_bytes: self.out.len() as u64,
                });
            }
            Step::Done => unreachable!("a finished swap is not stepped"),
        }
        self.next = match self.next {
            Step::Compress => Step::ClearTemp,
            Step::ClearTemp => Step::Create,
            Step::Create => Step::Write,
            Step::Write => Step::Sync,
            Step::Sync => Step::Rename,
            Step::Rename => Step::SyncDir,
            Step::SyncDir | Step::Done => Step::Done,
        };
        Ok(Stepped::More)
    }

    /// After a failure or a stop: removes what the swap made (best effort; a reopen
    /// removes what is left). A compressed file renamed into place but not known to be
    /// durable goes too: the raw file is intact and stays the segment's copy.
    pub fn clean_up(&mut self, fs: &dyn Fs) {
        self.file = None;
        let made = match self.next {
            Step::Compress | Step::ClearTemp => None,
            Step::Create | Step::Write | Step::Sync | Step::Rename => Some(&self.job.temp),
            Step::SyncDir => Some(&self.job.target),
            Step::Done => None,
        };
        if let Some(p) = made {
            if let Err(e) = fs.unlink(p) {
                if e.kind() != io::ErrorKind::NotFound {
                    log::warn!("aof2: removing {} failed: {e}", p.display());
                }
            }
        }
    }
}
