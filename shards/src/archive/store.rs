//! The archive's seam: what a store must do (create an object without overwriting,
//! read it back, delete it), and the local-directory store. A store's calls block;
//! they run on the archive's own threads only, never on a shard or a caller's thread.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Why a store call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// The object does not exist.
    NotFound,
    /// The store could not be reached or answered with a transient failure: worth
    /// retrying.
    Unavailable,
    /// The store refused the request for good (permissions, a missing bucket).
    Refused,
}

/// A store call's failure, with a message naming what failed (never a credential).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError {
    /// What kind of failure.
    pub kind: StoreErrorKind,
    /// What happened.
    pub message: String,
}

impl StoreError {
    /// A failure of `kind`.
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> StoreError {
        StoreError {
            kind,
            message: message.into(),
        }
    }

    /// An I/O error of a local store, kind by its cause.
    pub fn io(op: &str, path: &Path, e: io::Error) -> StoreError {
        let kind = match e.kind() {
            io::ErrorKind::NotFound => StoreErrorKind::NotFound,
            io::ErrorKind::PermissionDenied => StoreErrorKind::Refused,
            _ => StoreErrorKind::Unavailable,
        };
        StoreError::new(kind, format!("{op} {}: {e}", path.display()))
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// What a conditional create found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// The object was created.
    New,
    /// An object of that key exists already (it was left untouched).
    Exists,
}

/// An object read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    /// Its bytes.
    pub data: Vec<u8>,
    /// The SHA-256 (hex) stored in its metadata at upload, if the store keeps one.
    pub sha256: Option<String>,
}

/// An object store the archive uploads to. Calls block; every call returns within the
/// store's own timeout. Implementations must create objects atomically (a reader
/// never sees part of one) and durably (a `New` survives a crash of the store).
pub trait ArchiveBackend: Send + Sync {
    /// Where objects go, for messages: no credential, ever.
    fn describe(&self) -> String;

    /// Creates `key` holding `data`, with `sha256` (hex) in its metadata, unless an
    /// object of that key exists: then it is left as it is and `Exists` returned.
    fn put_new(&self, key: &str, data: &[u8], sha256: &str) -> Result<Created, StoreError>;

    /// The object `key`.
    fn get(&self, key: &str) -> Result<Object, StoreError>;

    /// Removes `key`; removing a missing object succeeds.
    fn delete(&self, key: &str) -> Result<(), StoreError>;
}

/// Objects as files under a directory (`ArchiveStore::LocalDir`): `<dir>/<key>`, its
/// SHA-256 beside it in `<key>.sha256`. A file is written under a temporary name,
/// synced, and linked to its name (`link(2)` fails if the name exists: no overwrite),
/// then the directory is synced.
pub struct LocalDirStore {
    dir: PathBuf,
}

impl LocalDirStore {
    /// A store in `dir` (created when the first object is written).
    pub fn new(dir: PathBuf) -> LocalDirStore {
        LocalDirStore { dir }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(key)
    }

    fn write_new(&self, path: &Path, data: &[u8]) -> Result<Created, StoreError> {
        use std::io::Write;
        let parent = path.parent().expect("an object path has a parent");
        std::fs::create_dir_all(parent).map_err(|e| StoreError::io("create", parent, e))?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let mut f = std::fs::File::create(&tmp).map_err(|e| StoreError::io("create", &tmp, e))?;
        f.write_all(data)
            .and_then(|()| f.sync_all())
            .map_err(|e| StoreError::io("write", &tmp, e))?;
        drop(f);
        let linked = std::fs::hard_link(&tmp, path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(Created::Exists),
            Err(e) => return Err(StoreError::io("link", path, e)),
        }
        std::fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(|e| StoreError::io("fsync directory", parent, e))?;
        Ok(Created::New)
    }
}

impl ArchiveBackend for LocalDirStore {
    fn describe(&self) -> String {
        format!("archive directory {}", self.dir.display())
    }

    fn put_new(&self, key: &str, data: &[u8], sha256: &str) -> Result<Created, StoreError> {
        let path = self.path(key);
        // The checksum first: an object never exists without it.
        let sum = sidecar(&path);
        match self.write_new(&sum, sha256.as_bytes())? {
            Created::New => {}
            Created::Exists => {
                // Left by an attempt that stopped before the object: replace it
                // unless the object is there too.
                if path.exists() {
                    return Ok(Created::Exists);
                }
                let _ = std::fs::remove_file(&sum);
                self.write_new(&sum, sha256.as_bytes())?;
            }
        }
        self.write_new(&path, data)
    }

    fn get(&self, key: &str) -> Result<Object, StoreError> {
        let path = self.path(key);
        let data = std::fs::read(&path).map_err(|e| StoreError::io("read", &path, e))?;
        let sha256 = std::fs::read_to_string(sidecar(&path)).ok();
        Ok(Object { data, sha256 })
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path(key);
        for p in [path.clone(), sidecar(&path)] {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::io("remove", &p, e)),
            }
        }
        Ok(())
    }
}

fn sidecar(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".sha256");
    PathBuf::from(s)
}
