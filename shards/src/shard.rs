//! Shard threads. Each owns the logs placed on it and runs their I/O; callers only
//! copy into log buffers and, on a state change (a full buffer, a flush request, a
//! roll, a timer to arm), queue the log on its shard and unpark the thread.
//!
//! An idle shard parks with no timeout; a log with unflushed data and an interval set
//! gives it one deadline. Unpark tokens make the queue-then-unpark / check-then-park
//! pair free of lost wake-ups.

use crate::backend::FsLock;
use crate::clock::Clock;
use crate::driver::Driver;
use crate::log_handle::LogShared;
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::Duration;

thread_local! {
    static CURRENT_SHARD: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The shard whose thread this is, if any: blocking here would deadlock.
pub fn current_shard() -> Option<usize> {
    CURRENT_SHARD.with(|c| c.get())
}

/// A log handed to a shard.
pub struct Registration {
    /// The log.
    pub shared: Arc<LogShared>,
    /// Its files and backend.
    pub driver: Driver,
}

/// A request to flush and forget a log. The directory lock travels with it and is
/// released only once the log is drained, just before `ack`.
pub struct CloseRequest {
    /// The log.
    pub key: u64,
    /// Signalled once it is closed.
    pub ack: Sender<()>,
    /// Its writer lock, released just before `ack`.
    pub lock: Option<Box<dyn FsLock>>,
}

#[derive(Default)]
struct Inbox {
    add: Vec<Registration>,
    ready: Vec<u64>,
    close: Vec<CloseRequest>,
    shutdown: bool,
    /// The thread has exited: requests are answered on the spot.
    stopped: bool,
}

/// The part of a shard other threads talk to.
pub struct ShardCtl {
    /// The shard's index.
    pub id: usize,
    inbox: Mutex<Inbox>,
    thread: OnceLock<Thread>,
    /// Logs placed here (for placement decisions).
    pub logs: AtomicUsize,
}

impl ShardCtl {
    fn with_inbox(&self, f: impl FnOnce(&mut Inbox)) {
        f(&mut self.inbox.lock().unwrap_or_else(|p| p.into_inner()));
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }

    /// Queues log `key` for a step.
    pub fn ready(&self, key: u64) {
        self.with_inbox(|i| i.ready.push(key));
    }

    /// Hands a log to this shard.
    pub fn add(&self, r: Registration) {
        self.logs.fetch_add(1, Ordering::Relaxed);
        self.with_inbox(|i| i.add.push(r));
    }

    /// Asks the shard to flush a log, close its files, release its lock and forget it;
    /// `req.ack` is signalled when that is done.
    pub fn close(&self, req: CloseRequest) {
        self.with_inbox(|i| {
            if i.stopped {
                drop(req.lock);
                let _ = req.ack.send(());
            } else {
                i.close.push(req);
            }
        });
    }
}

/// A running shard thread.
pub struct Shard {
    /// How other threads reach it.
    pub ctl: Arc<ShardCtl>,
    thread: Option<JoinHandle<()>>,
}

impl Shard {
    /// Starts shard `id`, pinned to `cpu` if given.
    pub fn start(id: usize, cpu: Option<usize>, clock: Clock) -> std::io::Result<Shard> {
        let ctl = Arc::new(ShardCtl {
            id,
            inbox: Mutex::new(Inbox::default()),
            thread: OnceLock::new(),
            logs: AtomicUsize::new(0),
        });
        let c = ctl.clone();
        let thread = std::thread::Builder::new()
            .name(format!("aof2-shard-{id}"))
            .spawn(move || run(c, cpu, clock))?;
        let _ = ctl.thread.set(thread.thread().clone());
        thread.thread().unpark();
        Ok(Shard {
            ctl,
            thread: Some(thread),
        })
    }

    /// Flushes and closes every log on the shard, then stops its thread.
    pub fn shutdown(&mut self) {
        self.ctl.with_inbox(|i| i.shutdown = true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Shard {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct Entry {
    shared: Arc<LogShared>,
    driver: Driver,
    active: bool,
    deadline: Option<u64>,
}

/// Forgets a drained log: closes its files and tells its waiters it ended.
fn retire(ctl: &ShardCtl, mut e: Entry) {
    e.driver.close_all();
    let durable = e.shared.lock_core().durable_pos();
    e.shared.signal.publish(durable, true);
    ctl.logs.fetch_sub(1, Ordering::Relaxed);
}

fn run(ctl: Arc<ShardCtl>, cpu: Option<usize>, clock: Clock) {
    CURRENT_SHARD.with(|c| c.set(Some(ctl.id)));
    if let Some(cpu) = cpu {
        if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
            log::warn!(
                "aof2: could not pin shard {} to CPU {cpu}; it runs unpinned",
                ctl.id
            );
        }
    }
    let mut logs: HashMap<u64, Entry> = HashMap::new();
    let mut closing: Vec<CloseRequest> = Vec::new();
    let mut shutting_down = false;
    loop {
        let inbox = std::mem::take(&mut *ctl.inbox.lock().unwrap_or_else(|p| p.into_inner()));
        for r in inbox.add {
            let key = r.shared.key;
            logs.insert(
                key,
                Entry {
                    shared: r.shared,
                    driver: r.driver,
                    active: true,
                    deadline: None,
                },
            );
        }
        for k in inbox.ready {
            if let Some(e) = logs.get_mut(&k) {
                e.active = true;
            }
        }
        for req in inbox.close {
            match logs.get_mut(&req.key) {
                Some(e) => {
                    e.shared.lock_core().begin_close();
                    e.active = true;
                    closing.push(req);
                }
                None => {
                    drop(req.lock);
                    let _ = req.ack.send(());
                }
            }
        }
        if inbox.shutdown && !shutting_down {
            shutting_down = true;
            for e in logs.values_mut() {
                e.shared.lock_core().begin_close();
                e.active = true;
            }
        }

        let now = clock.monotonic_ns();
        let mut busy = false;
        let mut next: Option<u64> = None;
        for e in logs.values_mut() {
            if e.active || e.deadline.is_some_and(|d| d <= now) {
                // Requests arriving from here on queue the log again.
                e.shared.clear_queued();
                let out = e.driver.step(&e.shared.core, now);
                let core = e.shared.lock_core();
                e.deadline = core.deadline();
                let (durable, poisoned) = (core.durable_pos(), core.poison().is_some());
                drop(core);
                if out.wake_waiters {
                    e.shared.signal.publish(durable, poisoned);
                }
                e.active = out.did_work;
                busy |= out.did_work;
            }
            if let Some(d) = e.deadline {
                next = Some(next.map_or(d, |n: u64| n.min(d)));
            }
        }

        let mut i = 0;
        while i < closing.len() {
            let k = closing[i].key;
            if logs
                .get(&k)
                .is_none_or(|e| e.shared.lock_core().is_drained())
            {
                let req = closing.swap_remove(i);
                if let Some(e) = logs.remove(&k) {
                    retire(&ctl, e);
                }
                drop(req.lock);
                let _ = req.ack.send(());
            } else {
                i += 1;
            }
        }
        if shutting_down {
            let keys: Vec<u64> = logs
                .iter()
                .filter(|(_, e)| e.shared.lock_core().is_drained())
                .map(|(k, _)| *k)
                .collect();
            for k in keys {
                retire(&ctl, logs.remove(&k).expect("listed"));
            }
            if logs.is_empty() {
                let mut inbox = ctl.inbox.lock().unwrap_or_else(|p| p.into_inner());
                inbox.stopped = true;
                closing.append(&mut inbox.close);
                for req in closing.drain(..) {
                    drop(req.lock);
                    let _ = req.ack.send(());
                }
                return;
            }
        }
        if !busy && (!closing.is_empty() || shutting_down) {
            // Draining logs always have work; this only guards against a stall.
            next = Some(next.map_or(now + 10_000_000, |n| n.min(now + 10_000_000)));
        }
        if !busy {
            match next {
                Some(d) => {
                    let now = clock.monotonic_ns();
                    if d > now {
                        std::thread::park_timeout(Duration::from_nanos(d - now));
                    }
                }
                None => std::thread::park(),
            }
        }
    }
}
