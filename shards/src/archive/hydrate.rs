//! Reading archived segments back (hydration): a reader that needs a segment only the
//! archive holds downloads its object into the log's `hydrated/` directory, checks it
//! (size and SHA-256 against the stub, then the segment's frames as `verify` does)
//! before any reader sees a byte, and opens it as a local copy. Downloaded copies stay
//! within `hydrated_cache_bytes`, least recently used removed first (a reader that
//! mapped one keeps its mapping); the directory is emptied at open.
//!
//! The download runs on the reader's thread (the store's own runtime does the network
//! I/O for S3), never on a shard: a shard's thread gets `WouldDeadlock`. An async reader
//! ([`hydrate_off_thread`]) has it run on a thread of its own and awaits it, so its
//! runtime's thread never waits for the store.

pub use super::hydrated_cache::Hydrated;
use super::stub::{read_file, Stub};
use crate::error::{AofError, AofResult};
use crate::fs::{Fs, OpenMode};
use crate::layout::LogPaths;
use crate::log::SealedSegment;
use crate::log_shared::LogShared;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::Instant;

/// The local path of archived segment `s`, downloading and checking it first unless a
/// checked copy is there.
pub fn hydrate(
    shared: &LogShared,
    fs: &dyn Fs,
    paths: &LogPaths,
    s: &SealedSegment,
) -> AofResult<PathBuf> {
    let id = s.header.segment_id;
    let path = paths.hydrated(id, s.compressed);
    if shared
        .hydrated
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .touch(id)
        && fs.kind(&path).ok().flatten().is_some()
    {
        return Ok(path);
    }
    if let Some(shard) = crate::shard::current_shard() {
        return Err(AofError::WouldDeadlock {
            call: "a read of a segment only the archive holds (its download)",
            shard,
        });
    }
    let (store_name, log_id) = shared.lock_core().archive_names().ok_or_else(|| {
        AofError::InvalidConfig(format!(
            "{}: segment {id} is held only by an archive (archive/{id:020}.stub), and the \
             manager has none: set AofManagerConfig::archive",
            paths.root.display()
        ))
    })?;
    let store = shared.archive_store().expect("the archive is on");
    let key = crate::log::object_key(&log_id, id, s.compressed);
    let started = Instant::now();
    let r = download(fs, paths, s, &*store, &key, &path);
    let ms = started.elapsed().as_millis() as u64;
    shared.lock_core().note_hydration(ms, r.is_ok());
    let bytes = r.map_err(|reason| AofError::Archive {
        path: paths.root.clone(),
        store: store_name,
        segment: id,
        key,
        reason,
    })?;
    let limit = shared.lock_core().config().hydrated_cache_bytes;
    let mut h = shared.hydrated.lock().unwrap_or_else(|p| p.into_inner());
    for old in h.insert(id, bytes, limit) {
        for c in [false, true] {
            let _ = fs.unlink(&paths.hydrated(old, c));
        }
    }
    Ok(path)
}

/// True when segment `id` has a downloaded copy (a read of it waits for no store).
pub fn is_hydrated(shared: &LogShared, fs: &dyn Fs, paths: &LogPaths, s: &SealedSegment) -> bool {
    let id = s.header.segment_id;
    shared
        .hydrated
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .holds(id)
        && fs
            .kind(&paths.hydrated(id, s.compressed))
            .ok()
            .flatten()
            .is_some()
}

/// [`hydrate`] on a thread of its own (`aof2-hydrate`), awaited.
pub async fn hydrate_off_thread(
    shared: Arc<LogShared>,
    fs: Arc<dyn Fs>,
    paths: LogPaths,
    s: SealedSegment,
) -> AofResult<PathBuf> {
    let slot: Arc<Mutex<Slot>> = Arc::default();
    let done = slot.clone();
    std::thread::Builder::new()
        .name("aof2-hydrate".into())
        .spawn(move || {
            let r = hydrate(&shared, &*fs, &paths, &s);
            let mut d = done.lock().unwrap_or_else(|p| p.into_inner());
            d.0 = Some(r);
            if let Some(w) = d.1.take() {
                w.wake();
            }
        })
        .map_err(|e| AofError::Startup(format!("cannot start a download thread: {e}")))?;
    std::future::poll_fn(|cx| {
        let mut d = slot.lock().unwrap_or_else(|p| p.into_inner());
        match d.0.take() {
            Some(r) => Poll::Ready(r),
            None => {
                d.1 = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    })
    .await
}

/// A download's result, and the waker of the task awaiting it.
type Slot = (Option<AofResult<PathBuf>>, Option<Waker>);

/// Downloads and checks `key` into `path`; its size in bytes.
fn download(
    fs: &dyn Fs,
    paths: &LogPaths,
    s: &SealedSegment,
    store: &dyn super::store::ArchiveBackend,
    key: &str,
    path: &std::path::Path,
) -> Result<u64, String> {
    let id = s.header.segment_id;
    let stub_path = paths.stub(id);
    let stub = read_file(fs, &stub_path)
        .map_err(|e| format!("read {}: {e}", stub_path.display()))
        .and_then(|b| Stub::decode(&b).map_err(|e| format!("{}: {e}", stub_path.display())))?;
    let o = store.get(key).map_err(|e| e.to_string())?;
    let sum: [u8; 32] = Sha256::digest(&o.data).into();
    if sum != stub.sha256 || o.data.len() as u64 != stub.object_bytes {
        return Err(format!(
            "the object read back is not the one uploaded ({} bytes, SHA-256 {}; the stub \
             records {} bytes, SHA-256 {}): a tampered or foreign object, not used",
            o.data.len(),
            super::stub::hex(&sum),
            stub.object_bytes,
            super::stub::hex(&stub.sha256)
        ));
    }
    if let Some(meta) = &o.sha256 {
        if !meta.eq_ignore_ascii_case(&super::stub::hex(&sum)) {
            return Err(format!(
                "the object's stored SHA-256 ({meta}) does not match its bytes: not used"
            ));
        }
    }
    crate::inspect::check_sealed_bytes(path, s, &o.data).map_err(|e| e.to_string())?;
    let dir = &paths.hydrated;
    if fs.kind(dir).ok().flatten().is_none() {
        match fs.mkdir(dir, 0o700) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("create {}: {e}", dir.display())),
        }
    }
    // A cache: written and renamed, not synced (emptied at every open).
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let _ = fs.unlink(&tmp);
    let f = fs
        .open(&tmp, OpenMode::create_new(false))
        .map_err(|e| format!("create {}: {e}", tmp.display()))?;
    crate::fs::write_all_at(&*f, 0, &[&o.data])
        .map_err(|e| format!("write {}: {e}", tmp.display()))?;
    drop(f);
    fs.rename(&tmp, path)
        .map_err(|e| format!("rename {}: {e}", tmp.display()))?;
    Ok(o.data.len() as u64)
}

/// Empties `hydrated/` (at open: downloaded copies are a cache).
pub fn clear(fs: &dyn Fs, paths: &LogPaths) {
    let dir = &paths.hydrated;
    if let Ok(names) = fs.list_dir(dir) {
        for n in names {
            let _ = fs.unlink(&dir.join(n));
        }
    }
}
