//! Tier 0 for compressed segments: inflated chunks kept in memory within a byte budget
//! shared by every log of a manager, least recently used first out. A `read_record` of
//! a compressed segment then inflates its chunk once for every reader and every later
//! read of a nearby record, instead of once per read. Chunks enter only after their
//! CRC checked and zstd inflated them (frames are still checked on every read); sealed
//! segments never change and ids are never reused, so an entry is never stale.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Identifies a chunk: (log, segment, raw offset of the chunk).
pub type ChunkKey = (u64, u64, u64);

#[derive(Default)]
struct Lru {
    map: HashMap<ChunkKey, Arc<Vec<u8>>>,
    /// Keys, least recently used first (a key may appear more than once: only its last
    /// place counts, earlier ones are skipped when evicting).
    order: VecDeque<(ChunkKey, u64)>,
    /// Each key's latest stamp in `order`.
    stamps: HashMap<ChunkKey, u64>,
    next_stamp: u64,
    /// Bytes held: the capacity of every chunk's buffer and of every spare buffer.
    bytes: usize,
    /// Buffers of evicted chunks nobody holds, for the next inflations (their pages
    /// are resident: a new buffer would fault each in). They count against the budget
    /// like chunks, and go first when it is exceeded.
    spares: Vec<Vec<u8>>,
}

/// Evicted buffers kept for reuse.
const SPARES: usize = 4;

/// The inflated-chunk cache of a manager.
pub struct ChunkCache {
    budget: usize,
    lru: Mutex<Lru>,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// What the cache did so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChunkCacheStats {
    /// Reads served from memory.
    pub hits: u64,
    /// Reads that inflated their chunk.
    pub misses: u64,
    /// Bytes held now: inflated chunks and spare buffers (at most the budget).
    pub bytes: u64,
}

impl ChunkCache {
    /// A cache holding at most `budget` bytes of inflated chunks (0: none kept).
    pub fn new(budget: usize) -> ChunkCache {
        ChunkCache {
            budget,
            lru: Mutex::default(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lru> {
        self.lru.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The chunk `key`, inflated by `inflate` into the buffer it is given if it is not
    /// held (outside the lock, so readers of other chunks never wait for an
    /// inflation).
    pub fn get_or_inflate<E>(
        &self,
        key: ChunkKey,
        inflate: impl FnOnce(Vec<u8>) -> Result<Vec<u8>, E>,
    ) -> Result<Arc<Vec<u8>>, E> {
        if let Some(c) = self.touch(key) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(c);
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let buf = {
            let mut l = self.lock();
            let b = l.spares.pop().unwrap_or_default();
            l.bytes -= b.capacity();
            b
        };
        let c = Arc::new(inflate(buf)?);
        if c.capacity() <= self.budget {
            self.insert(key, c.clone());
        }
        Ok(c)
    }

    fn touch(&self, key: ChunkKey) -> Option<Arc<Vec<u8>>> {
        let mut l = self.lock();
        let c = l.map.get(&key)?.clone();
        let stamp = l.next_stamp;
        l.next_stamp += 1;
        l.stamps.insert(key, stamp);
        l.order.push_back((key, stamp));
        // Repeated hits leave old places behind: compact once they dominate.
        if l.order.len() > 2 * l.map.len() + 64 {
            let Lru { order, stamps, .. } = &mut *l;
            order.retain(|(k, s)| stamps.get(k) == Some(s));
        }
        Some(c)
    }

    fn insert(&self, key: ChunkKey, c: Arc<Vec<u8>>) {
        let mut l = self.lock();
        if l.map.contains_key(&key) {
            return; // another reader inflated it meanwhile
        }
        l.bytes += c.capacity();
        l.map.insert(key, c);
        let stamp = l.next_stamp;
        l.next_stamp += 1;
        l.stamps.insert(key, stamp);
        l.order.push_back((key, stamp));
        while l.bytes > self.budget {
            // Spare buffers go first: they hold no chunk.
            if let Some(b) = l.spares.pop() {
                l.bytes -= b.capacity();
                continue;
            }
            let Some((k, s)) = l.order.pop_front() else {
                break;
            };
            if l.stamps.get(&k) != Some(&s) {
                continue; // an older place of a key used since
            }
            l.stamps.remove(&k);
            if let Some(old) = l.map.remove(&k) {
                l.bytes -= old.capacity();
                // Kept for the next inflation only while the budget has room for it.
                if let Ok(buf) = Arc::try_unwrap(old) {
                    if l.spares.len() < SPARES && l.bytes + buf.capacity() <= self.budget {
                        l.bytes += buf.capacity();
                        l.spares.push(buf);
                    }
                }
            }
        }
    }

    /// Hits, misses and bytes held.
    pub fn stats(&self) -> ChunkCacheStats {
        ChunkCacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            bytes: self.lock().bytes as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(c: &ChunkCache, k: u64, len: usize) -> (Arc<Vec<u8>>, bool) {
        let mut inflated = false;
        let v = c
            .get_or_inflate::<()>((1, 1, k), |mut buf| {
                inflated = true;
                buf.clear();
                buf.resize(len, k as u8);
                Ok(buf)
            })
            .unwrap();
        (v, inflated)
    }

    #[test]
    fn keeps_what_fits_and_drops_the_least_recently_used() {
        let c = ChunkCache::new(300);
        assert!(get(&c, 1, 100).1);
        assert!(get(&c, 2, 100).1);
        assert!(get(&c, 3, 100).1);
        assert!(!get(&c, 1, 100).1, "held");
        // 4 does not fit beside the three: 2, the least recently used, goes.
        assert!(get(&c, 4, 100).1);
        assert!(!get(&c, 1, 100).1);
        assert!(!get(&c, 3, 100).1);
        assert!(get(&c, 2, 100).1, "evicted");
        let s = c.stats();
        assert!(s.bytes <= 300);
        assert_eq!((s.hits, s.misses), (3, 5));
        for _ in 0..1000 {
            get(&c, 1, 100);
        }
        assert!(c.lock().order.len() < 200, "places compacted");
        assert_eq!(get(&c, 1, 100).0[0], 1);
    }

    /// Every buffer the cache holds counts against its budget, spares included.
    #[test]
    fn spare_buffers_count_against_the_budget() {
        let c = ChunkCache::new(350);
        for k in 0..50 {
            get(&c, k, 100);
            let l = c.lock();
            let held: usize = l.map.values().map(|v| v.capacity()).sum::<usize>()
                + l.spares.iter().map(Vec::capacity).sum::<usize>();
            assert_eq!(held, l.bytes, "the account matches what is held");
            assert!(l.bytes <= 350, "{} bytes held", l.bytes);
        }
        assert_eq!(c.stats().bytes as usize, c.lock().bytes);
    }

    #[test]
    fn a_zero_budget_keeps_nothing_and_errors_are_not_cached() {
        let c = ChunkCache::new(0);
        assert!(get(&c, 1, 10).1);
        assert!(get(&c, 1, 10).1);
        assert_eq!(c.stats().bytes, 0);
        let c = ChunkCache::new(100);
        assert!(c.get_or_inflate((1, 1, 9), |_| Err("bad")).is_err());
        assert!(get(&c, 9, 10).1, "a failed inflation left nothing behind");
    }
}
