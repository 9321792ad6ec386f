//! What the simulated disk (`sim`) draws on: its seeded generator, and the faults a
//! test asks it to inject (counted ones fire once, random ones per operation), so a
//! seed reproduces every choice.

use std::path::PathBuf;

/// A small deterministic generator (SplitMix64).
#[derive(Debug, Clone)]
pub struct SimRng(u64);

impl SimRng {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> SimRng {
        SimRng(seed)
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, n) (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }
}

/// Faults to inject. Counted ones fire once; random ones fire with a probability per
/// operation, drawn from the disk's seeded generator (so a seed reproduces them).
#[derive(Debug, Default, Clone)]
pub struct Faults {
    /// Fail the write after this many more writes succeed (with `write_errno`).
    pub fail_write_after: Option<u64>,
    /// The error of the counted write failure (0: EIO).
    pub write_errno: i32,
    /// Fail the fdatasync after this many more succeed (EIO).
    pub fail_sync_after: Option<u64>,
    /// Parts per million of writes failing with EIO or ENOSPC (nothing written).
    pub write_error_ppm: u32,
    /// Parts per million of writes that write only a prefix and return a short count.
    pub short_write_ppm: u32,
    /// Parts per million of `fdatasync`s failing with EIO or ENOSPC (the writes stay
    /// unsynced).
    pub sync_error_ppm: u32,
    /// Parts per million of directory operations (create, rename, unlink, mkdir, fsync
    /// of a directory) failing with EIO or ENOSPC before taking effect.
    pub dir_error_ppm: u32,
    /// Parts per million of `fdatasync`s that are slow: the clock given to
    /// [`SimFs::set_clock`] jumps 1–20 ms while they run (timers fire meanwhile).
    pub slow_sync_ppm: u32,
    /// Parts per million of unlinks failing (EIO or EPERM) before taking effect.
    pub unlink_error_ppm: u32,
    /// Parts per million of directory fsyncs failing (EIO) after the changes they
    /// would make durable were made (they stay pending).
    pub dir_sync_error_ppm: u32,
    /// Fail the unlink after this many more succeed (EIO).
    pub fail_unlink_after: Option<u64>,
    /// Fail the directory fsync after this many more succeed (EIO).
    pub fail_dir_sync_after: Option<u64>,
    /// Every unlink of this path fails (EPERM) until cleared.
    pub fail_unlink_of: Option<PathBuf>,
}

/// True (once) when the countdown of a counted fault reaches zero.
pub(super) fn fault(countdown: &mut Option<u64>) -> bool {
    match countdown {
        Some(0) => {
            *countdown = None;
            true
        }
        Some(n) => {
            *n -= 1;
            false
        }
        None => false,
    }
}
