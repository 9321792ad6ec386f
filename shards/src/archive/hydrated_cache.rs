//! The downloaded copies of a log (`hydrated/`), least recently used first, within a
//! byte budget: bookkeeping only (the files are `hydrate.rs`'s).

use std::collections::VecDeque;

/// The downloaded copies of a log, least recently used first: (segment, bytes).
#[derive(Debug, Default)]
pub struct Hydrated {
    lru: VecDeque<(u64, u64)>,
}

impl Hydrated {
    /// Marks segment `id` used now; false if it is not held.
    pub fn touch(&mut self, id: u64) -> bool {
        match self.lru.iter().position(|e| e.0 == id) {
            Some(i) => {
                let e = self.lru.remove(i).expect("indexed");
                self.lru.push_back(e);
                true
            }
            None => false,
        }
    }

    /// True when segment `id` is held.
    pub fn holds(&self, id: u64) -> bool {
        self.lru.iter().any(|e| e.0 == id)
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.lru.iter().map(|e| e.1).sum()
    }

    /// Holds segment `id` (`bytes` long) as the most recently used, then lets the least
    /// recently used go while more than `limit` bytes are held, never `id` itself;
    /// returns the segments let go (their files are to be removed).
    pub fn insert(&mut self, id: u64, bytes: u64, limit: u64) -> Vec<u64> {
        if !self.touch(id) {
            self.lru.push_back((id, bytes));
        }
        let mut gone = Vec::new();
        while self.bytes() > limit && self.lru.len() > 1 {
            gone.push(self.lru.pop_front().expect("non-empty").0);
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::Hydrated;

    #[test]
    fn least_recently_used_go_first_never_the_newest() {
        let mut h = Hydrated::default();
        assert!(h.insert(1, 10, 25).is_empty());
        assert!(h.insert(2, 10, 25).is_empty());
        assert!(h.touch(1));
        assert_eq!(h.insert(3, 10, 25), vec![2]);
        assert!(h.holds(1) && h.holds(3) && !h.holds(2));
        // A copy larger than the budget is kept alone.
        assert_eq!(h.insert(4, 100, 25), vec![1, 3]);
        assert!(h.holds(4));
    }
}
