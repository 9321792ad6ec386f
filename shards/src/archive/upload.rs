//! One sealed segment's upload, in the archive's order: read the local copy, check it
//! (frames and chain, as `aof2 verify` does) and hash it (SHA-256); create the object
//! without overwriting; write the stub to `<id>.stub.tmp` and `fdatasync` it; rename
//! it into place; sync the directory. Only then does the log hear of it (and may its
//! local copy go). One store call or file-system operation per [`Upload::step`], so
//! the crash checker can cut an upload between any two; the worker thread runs the
//! same steps back to back.
//!
//! An object found under the key already (an earlier attempt whose answer or stub was
//! lost) counts if its bytes hash the same, and is an error naming the key otherwise:
//! an object is never overwritten.

use super::store::{ArchiveBackend, Created};
use super::stub::{hex, Stub};
use crate::fs::{write_all_at, EntryKind, Fs, FsFile, OpenMode};
use crate::log::UploadJob;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Read,
    Put,
    MakeDir,
    Create,
    Write,
    Sync,
    Rename,
    SyncDir,
    Done,
}

/// What a step achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uploaded {
    /// Another step follows.
    More,
    /// Stopped before the stub went into place (the log is closing): call
    /// [`Upload::clean_up`]; the next session uploads the segment again.
    Stopped,
    /// The store holds the object and the stub is durable: it has this many bytes.
    Done {
        /// The object's size.
        bytes: u64,
    },
}

/// Bytes per read of a local copy: one read in the disk's queue at a time, each short,
/// so a segment's upload (its file was written with O_DIRECT: it is read from the
/// disk) never holds a writer's commit up for long (A1: W2's p50 while uploading was
/// 1.14x with 128 KiB reads, 1.07x with 32 KiB ones).
const READ_PIECE: usize = 32 * 1024;

/// A whole file, read `READ_PIECE` bytes at a time.
fn read_in_pieces(fs: &dyn Fs, path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    let f = fs.open(path, OpenMode::Read)?;
    let n = f.size()? as usize;
    let mut b = vec![0u8; n];
    for (i, piece) in b.chunks_mut(READ_PIECE).enumerate() {
        crate::fs::read_exact_at(&*f, (i * READ_PIECE) as u64, piece)?;
    }
    Ok(b)
}

/// One segment's upload, step by step.
pub struct Upload {
    job: UploadJob,
    next: Step,
    data: Vec<u8>,
    sum: [u8; 32],
    file: Option<Arc<dyn FsFile>>,
}

impl Upload {
    /// The upload `job` describes, not started.
    pub fn new(job: UploadJob) -> Upload {
        Upload {
            job,
            next: Step::Read,
            data: Vec::new(),
            sum: [0; 32],
            file: None,
        }
    }

    /// The segment being uploaded.
    pub fn segment(&self) -> u64 {
        self.job.segment.header.segment_id
    }

    /// True once the store holds the object (the stub may not be written yet).
    pub fn object_stored(&self) -> bool {
        self.next > Step::Put
    }

    /// The object's key.
    pub fn key(&self) -> &str {
        &self.job.key
    }

    fn temp(&self) -> PathBuf {
        let mut t = self.job.stub.as_os_str().to_owned();
        t.push(".tmp");
        PathBuf::from(t)
    }

    /// Runs the next step. `stop` is asked until the stub is renamed into place.
    pub fn step(
        &mut self,
        fs: &dyn Fs,
        store: &dyn ArchiveBackend,
        stop: &dyn Fn() -> bool,
    ) -> Result<Uploaded, String> {
        if self.next <= Step::Rename && stop() {
            return Ok(Uploaded::Stopped);
        }
        let j = &self.job;
        let dir = j
            .stub
            .parent()
            .expect("stubs live in a directory")
            .to_path_buf();
        match self.next {
            Step::Read => {
                let path = &j.path;
                let data = read_in_pieces(fs, path)
                    .map_err(|e| format!("read {}: {e}", path.display()))?;
                crate::inspect::check_sealed_bytes(path, &j.segment, &data)
                    .map_err(|e| format!("the local copy fails its check, not uploaded: {e}"))?;
                self.sum = Sha256::digest(&data).into();
                self.data = data;
                self.next = Step::Put;
            }
            Step::Put => {
                let sha = hex(&self.sum);
                let err = |e: super::store::StoreError| format!("{}: {e}", store.describe());
                if store.put_new(&j.key, &self.data, &sha).map_err(err)? == Created::Exists {
                    let o = store.get(&j.key).map_err(err)?;
                    let theirs: [u8; 32] = Sha256::digest(&o.data).into();
                    if theirs != self.sum {
                        return Err(format!(
                            "object {} exists in the {} with other contents (SHA-256 {}, ours \
                             {sha}); it is never overwritten",
                            j.key,
                            store.describe(),
                            hex(&theirs)
                        ));
                    }
                }
                self.next = Step::MakeDir;
            }
            Step::MakeDir => {
                let kind = fs
                    .kind(&dir)
                    .map_err(|e| format!("stat {}: {e}", dir.display()))?;
                if kind != Some(EntryKind::Dir) {
                    match fs.mkdir(&dir, crate::config::dir_mode(j.mode)) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                        Err(e) => return Err(format!("create {}: {e}", dir.display())),
                    }
                }
                // Even when the directory exists: an earlier attempt may have made it and
                // then failed to sync its entry, and a stub in a directory a power loss
                // takes away proves nothing (the local copy would go on its word).
                let root = dir.parent().expect("the log's directory");
                fs.fsync_dir(root)
                    .map_err(|e| format!("fsync directory {}: {e}", root.display()))?;
                self.next = Step::Create;
            }
            Step::Create => {
                let t = self.temp();
                match fs.unlink(&t) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(format!("remove {}: {e}", t.display())),
                }
                let f = fs
                    .open(
                        &t,
                        OpenMode::CreateNew {
                            direct: false,
                            mode: j.mode,
                        },
                    )
                    .map_err(|e| format!("create {}: {e}", t.display()))?;
                self.file = Some(f);
                self.next = Step::Write;
            }
            Step::Write => {
                let stub = Stub {
                    segment: j.segment,
                    key: j.key.clone(),
                    object_bytes: self.data.len() as u64,
                    sha256: self.sum,
                };
                let f = self.file.as_ref().expect("created");
                write_all_at(&**f, 0, &[&stub.encode()])
                    .map_err(|e| format!("write {}: {e}", self.temp().display()))?;
                self.next = Step::Sync;
            }
            Step::Sync => {
                let f = self.file.take().expect("created");
                f.fdatasync()
                    .map_err(|e| format!("fdatasync {}: {e}", self.temp().display()))?;
                self.next = Step::Rename;
            }
            Step::Rename => {
                fs.rename(&self.temp(), &j.stub)
                    .map_err(|e| format!("rename {}: {e}", self.temp().display()))?;
                self.next = Step::SyncDir;
            }
            Step::SyncDir => {
                fs.fsync_dir(&dir)
                    .map_err(|e| format!("fsync directory {}: {e}", dir.display()))?;
                self.next = Step::Done;
                return Ok(Uploaded::Done {
                    bytes: self.data.len() as u64,
                });
            }
            Step::Done => unreachable!("an upload stepped after it was done"),
        }
        Ok(Uploaded::More)
    }

    /// After a failure or a stop: removes the stub's temporary file, if any (the
    /// object, if created, is found again by the next attempt).
    pub fn clean_up(&mut self, fs: &dyn Fs) {
        self.file = None;
        if self.next > Step::Create && self.next <= Step::Rename {
            let _ = fs.unlink(&self.temp());
        }
    }
}
