//! Time sources. The log core never reads a clock itself: it is handed one, so the
//! simulated disk's checker can run on virtual time and reproduce a seed exactly.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Wall-clock time for record timestamps and monotonic time for flush timers.
#[derive(Clone, Debug, Default)]
pub enum Clock {
    /// The system clocks (CLOCK_REALTIME, CLOCK_MONOTONIC).
    #[default]
    System,
    /// Virtual nanoseconds set by a test; both clocks read the same value.
    Manual(Arc<AtomicU64>),
    /// Virtual clocks set apart by a test: `wall` can step back and forth while `mono`
    /// only moves forward (a wall-clock step under time-based retention).
    Split {
        /// Read by `realtime_ns`.
        wall: Arc<AtomicU64>,
        /// Read by `monotonic_ns`.
        mono: Arc<AtomicU64>,
    },
}

fn clock_ns(id: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; the clock ids used here always exist on Linux.
    unsafe { libc::clock_gettime(id, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Clock {
    /// Nanoseconds since the Unix epoch.
    pub fn realtime_ns(&self) -> u64 {
        match self {
            Clock::System => clock_ns(libc::CLOCK_REALTIME),
            Clock::Manual(t) => t.load(Ordering::Relaxed),
            Clock::Split { wall, .. } => wall.load(Ordering::Relaxed),
        }
    }
    /// Nanoseconds on a clock that never goes backwards.
    pub fn monotonic_ns(&self) -> u64 {
        match self {
            Clock::System => clock_ns(libc::CLOCK_MONOTONIC),
            Clock::Manual(t) => t.load(Ordering::Relaxed),
            Clock::Split { mono, .. } => mono.load(Ordering::Relaxed),
        }
    }
}
