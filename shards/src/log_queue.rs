//! The queue of a background worker (compression, the archive's uploads): logs with
//! work, each queued at most once (a flag on the log), logs waiting out a failure until
//! a given time, and a stop flag; its threads wait on it for the next log. And the
//! priority such threads run at.

use crate::log_shared::LogShared;
use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard, Weak};
use std::time::Instant;

#[derive(Default)]
struct State {
    logs: VecDeque<Weak<LogShared>>,
    /// Logs whose last step failed, and when to try them again.
    retry: Vec<(Instant, Weak<LogShared>)>,
    stop: bool,
}

/// A worker's queue of logs.
#[derive(Default)]
pub struct LogQueue {
    state: Mutex<State>,
    cv: Condvar,
}

impl LogQueue {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `log` now.
    pub fn push(&self, log: Weak<LogShared>) {
        self.lock().logs.push_back(log);
        self.cv.notify_one();
    }

    /// Queues `log` again at `at` (after a failure).
    pub fn retry(&self, at: Instant, log: Weak<LogShared>) {
        self.lock().retry.push((at, log));
        self.cv.notify_one();
    }

    /// Stops the queue: `next` returns `None` from now on, to every thread.
    pub fn stop(&self) {
        self.lock().stop = true;
        self.cv.notify_all();
    }

    /// True once stopped.
    pub fn stopping(&self) -> bool {
        self.lock().stop
    }

    /// The next log with work, waiting for one; `None` once stopped.
    pub fn next(&self) -> Option<Weak<LogShared>> {
        let mut st = self.lock();
        loop {
            if st.stop {
                return None;
            }
            let now = Instant::now();
            let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut st.retry)
                .into_iter()
                .partition(|r| r.0 <= now);
            st.retry = later;
            st.logs.extend(due.into_iter().map(|r| r.1));
            if let Some(l) = st.logs.pop_front() {
                return Some(l);
            }
            st = match st.retry.iter().map(|r| r.0).min() {
                Some(t) => {
                    self.cv
                        .wait_timeout(st, t - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
                None => self.cv.wait(st).unwrap_or_else(|p| p.into_inner()),
            };
        }
    }
}

/// Lowers the calling thread's CPU priority to the minimum (nice 19): background work
/// uses what the shards and the application leave. With `idle_io`, its I/O also goes
/// into the idle class: its reads reach the disk only when nothing else waits (where
/// the disk's scheduler honours I/O priorities, as mq-deadline and bfq do).
pub fn background_priority(idle_io: bool) {
    // SAFETY: setpriority takes no pointers; on Linux PRIO_PROCESS with who = 0 sets
    // the nice value of the calling thread only.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS as _, 0, 19) } != 0 {
        log::debug!(
            "aof2: lowering a background thread's priority failed: {}",
            std::io::Error::last_os_error()
        );
    }
    if idle_io {
        const IOPRIO_WHO_PROCESS: libc::c_long = 1;
        const IOPRIO_CLASS_IDLE: libc::c_long = 3;
        const IOPRIO_CLASS_SHIFT: libc::c_long = 13;
        // SAFETY: ioprio_set takes no pointers; who = 0 is the calling thread.
        unsafe {
            libc::syscall(
                libc::SYS_ioprio_set,
                IOPRIO_WHO_PROCESS,
                0 as libc::c_long,
                IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT,
            )
        };
    }
}
