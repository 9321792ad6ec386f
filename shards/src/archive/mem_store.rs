//! An in-memory store with injected faults, for tests and the crash checker: an
//! outage (every call `Unavailable`), failed puts, puts whose answer is lost after the
//! object was stored, and tampered reads.

use super::store::{ArchiveBackend, Created, Object, StoreError, StoreErrorKind};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;

/// Objects in memory, shared by whoever holds the `Arc`.
#[derive(Default)]
pub struct MemStore {
    objects: Mutex<BTreeMap<String, (Vec<u8>, String)>>,
    /// Every call fails as if the store were unreachable.
    pub down: AtomicBool,
    /// The next this many puts fail before storing anything.
    pub fail_puts: AtomicU32,
    /// The next this many puts store the object, then fail (the answer was lost).
    pub lose_put_answers: AtomicU32,
    /// The next this many gets return the object with one byte flipped.
    pub tamper_gets: AtomicU32,
    /// Every get takes this long (ms): a slow store.
    pub get_delay_ms: AtomicU64,
    /// Calls made: puts, gets, deletes.
    pub puts: AtomicU64,
    /// Gets made.
    pub gets: AtomicU64,
    /// Deletes made.
    pub deletes: AtomicU64,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> MemStore {
        MemStore::default()
    }

    /// The keys stored, in order.
    pub fn keys(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// Bytes stored in all.
    pub fn bytes(&self) -> u64 {
        self.lock().values().map(|(d, _)| d.len() as u64).sum()
    }

    /// Replaces an object's bytes in place (a test's tampering or a foreign writer).
    pub fn overwrite(&self, key: &str, data: Vec<u8>) {
        if let Some(o) = self.lock().get_mut(key) {
            o.0 = data;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, (Vec<u8>, String)>> {
        self.objects.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn check_up(&self, op: &str, key: &str) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::new(
                StoreErrorKind::Unavailable,
                format!("{op} {key}: the in-memory store is down (injected)"),
            ));
        }
        Ok(())
    }
}

fn take_one(n: &AtomicU32) -> bool {
    n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
        .is_ok()
}

impl ArchiveBackend for MemStore {
    fn describe(&self) -> String {
        "in-memory archive store".into()
    }

    fn put_new(&self, key: &str, data: &[u8], sha256: &str) -> Result<Created, StoreError> {
        self.puts.fetch_add(1, Ordering::Relaxed);
        self.check_up("put", key)?;
        if take_one(&self.fail_puts) {
            return Err(StoreError::new(
                StoreErrorKind::Unavailable,
                format!("put {key}: failed (injected)"),
            ));
        }
        let created = {
            let mut o = self.lock();
            if o.contains_key(key) {
                Created::Exists
            } else {
                o.insert(key.to_string(), (data.to_vec(), sha256.to_string()));
                Created::New
            }
        };
        if take_one(&self.lose_put_answers) {
            return Err(StoreError::new(
                StoreErrorKind::Unavailable,
                format!("put {key}: the answer was lost (injected)"),
            ));
        }
        Ok(created)
    }

    fn get(&self, key: &str) -> Result<Object, StoreError> {
        self.gets.fetch_add(1, Ordering::Relaxed);
        self.check_up("get", key)?;
        let delay = self.get_delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            std::thread::sleep(std::time::Duration::from_millis(delay));
        }
        let (mut data, sha) = self.lock().get(key).cloned().ok_or_else(|| {
            StoreError::new(
                StoreErrorKind::NotFound,
                format!("get {key}: no such object"),
            )
        })?;
        if take_one(&self.tamper_gets) && !data.is_empty() {
            let i = data.len() / 2;
            data[i] ^= 0x5a;
        }
        Ok(Object {
            data,
            sha256: Some(sha),
        })
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.deletes.fetch_add(1, Ordering::Relaxed);
        self.check_up("delete", key)?;
        self.lock().remove(key);
        Ok(())
    }
}
