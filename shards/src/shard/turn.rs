//! One shard's logs and executor, and the body of its loop as one function, a *turn*:
//! take the requests other threads queued (new logs, logs with work, closes, shutdown),
//! poll every log with something to do and start the chains it asks for, retire the
//! logs that finished closing, then wait for completions (sleeping through the
//! executor and the host's readiness hook when there is nothing else to do) and apply
//! them. The shard thread runs turns until shutdown; the crash checker runs the same
//! turns on the simulated disk and virtual time, with a host that never sleeps, so
//! close, drain and deadline logic is checked there too.
//!
//! The state lives outside the thread's unwind boundary: after a panic inside a turn,
//! [`ShardLoop::fail`] can still poison every log and release every waiter.

use super::{CloseRequest, Registration, ShardCtl, FAULT_LOST, FAULT_PANIC};
use crate::clock::Clock;
use crate::error::AofError;
use crate::exec::{Completed, Executor, Host};
use crate::log_shared::LogShared;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

struct Entry {
    shared: Arc<LogShared>,
    /// Poll the core on the next turn.
    active: bool,
    /// Publish the durable position after this turn's completions.
    publish: bool,
    deadline: Option<u64>,
}

/// What a turn found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Turned {
    /// Shutdown is complete: every log was drained and retired.
    pub shut_down: bool,
    /// Chains were started or completions applied: another turn may have work.
    pub busy: bool,
}

/// The state of a shard's loop: its logs, closes in progress, and its executor.
pub struct ShardLoop {
    ctl: Arc<ShardCtl>,
    exec: Box<dyn Executor>,
    clock: Clock,
    logs: HashMap<u64, Entry>,
    closing: Vec<CloseRequest>,
    shutting_down: bool,
    done: Vec<Completed>,
}

/// Forgets a drained log: closes its files and tells its waiters it ended.
fn retire(ctl: &ShardCtl, e: Entry) {
    e.shared.files.close_all();
    e.shared.publish_with(|_| true);
    ctl.logs.fetch_sub(1, Ordering::Relaxed);
}

/// Poisons a log with the shard's failure and releases every waiter on it.
fn poison(shared: &LogShared, cause: AofError) {
    shared.lock_core().poison_with(cause);
    shared.publish();
}

impl ShardLoop {
    /// The loop of shard `ctl`, running I/O on `exec`, with deadlines on `clock`.
    pub fn new(ctl: Arc<ShardCtl>, exec: Box<dyn Executor>, clock: Clock) -> ShardLoop {
        ShardLoop {
            ctl,
            exec,
            clock,
            logs: HashMap::new(),
            closing: Vec::new(),
            shutting_down: false,
            done: Vec::new(),
        }
    }

    /// The executor (tests reach into the simulated ring through it).
    pub fn executor_mut(&mut self) -> &mut dyn Executor {
        &mut *self.exec
    }

    /// Logs on the shard.
    pub fn log_count(&self) -> usize {
        self.logs.len()
    }

    /// One turn (see the module docs); `host` says how to sleep when there is nothing
    /// to do. An error is an executor failure beyond repair.
    pub fn turn(&mut self, host: &dyn Host) -> Result<Turned, String> {
        self.injected()?;
        self.take_inbox();
        let started = self.poll_logs();
        if self.retire_drained() {
            return Ok(Turned {
                shut_down: true,
                busy: started,
            });
        }
        let applied = self.wait(host)?;
        Ok(Turned {
            shut_down: false,
            busy: started || applied,
        })
    }

    /// Waits until there is more to do (a request, a completion, a deadline), through
    /// the executor and `host`'s readiness hook, then applies what completed; true if
    /// anything did.
    fn wait(&mut self, host: &dyn Host) -> Result<bool, String> {
        let busy = self.logs.values().any(|e| e.active);
        let mut next: Option<u64> = self.logs.values().filter_map(|e| e.deadline).min();
        if !busy && (!self.closing.is_empty() || self.shutting_down) {
            // Draining logs always have work; this only guards against a stall.
            let guard = self.clock.monotonic_ns() + 10_000_000;
            next = Some(next.map_or(guard, |n| n.min(guard)));
        }
        let now = self.clock.monotonic_ns();
        self.exec.progress(now, next, !busy, host, &mut self.done)?;
        Ok(self.apply())
    }

    /// The shard cannot go on: poison every log on it (and every log on its way to it),
    /// answer every close, and answer later requests on the spot.
    pub fn fail(&mut self, cause: String) {
        let id = self.ctl.id;
        log::error!("aof2: shard thread {id} failed: {cause}; every log on it is poisoned");
        let _ = self.ctl.failed.set(cause.clone());
        let err = || AofError::ShardFailed {
            shard: id,
            cause: cause.clone(),
        };
        let inbox = self.ctl.stop();
        for r in inbox.add {
            poison(&r.shared, err());
        }
        for e in self.logs.values() {
            poison(&e.shared, err());
        }
        for req in self.closing.drain(..).chain(inbox.close) {
            req.answer();
        }
    }

    /// Faults a test injected.
    fn injected(&mut self) -> Result<(), String> {
        let pause = self.ctl.pause_ns.swap(0, Ordering::SeqCst);
        if pause > 0 {
            std::thread::sleep(Duration::from_nanos(pause));
        }
        let f = self.ctl.faults.swap(0, Ordering::SeqCst);
        if f & FAULT_PANIC != 0 {
            panic!(
                "a panic injected into shard thread {} (test hook)",
                self.ctl.id
            );
        }
        if f & FAULT_LOST != 0 {
            self.exec.inject_lost_completion()?;
        }
        Ok(())
    }

    /// Takes what other threads queued: new logs, logs to poll, closes, shutdown.
    fn take_inbox(&mut self) {
        let inbox = self.ctl.take_inbox();
        for Registration { shared } in inbox.add {
            self.logs.insert(
                shared.key,
                Entry {
                    shared,
                    active: true,
                    publish: false,
                    deadline: None,
                },
            );
        }
        for k in inbox.ready {
            if let Some(e) = self.logs.get_mut(&k) {
                e.active = true;
            }
        }
        for req in inbox.close {
            match self.logs.get_mut(&req.key) {
                Some(e) => {
                    e.shared.lock_core().begin_close();
                    e.active = true;
                    self.closing.push(req);
                }
                None => req.answer(),
            }
        }
        if inbox.shutdown && !self.shutting_down {
            self.shutting_down = true;
            for e in self.logs.values_mut() {
                e.shared.lock_core().begin_close();
                e.active = true;
            }
        }
    }

    /// Polls every log with something to do, and starts what it asks for; true if a
    /// chain was started.
    fn poll_logs(&mut self) -> bool {
        let now = self.clock.monotonic_ns();
        let mut started = false;
        for (&key, e) in self.logs.iter_mut() {
            if e.active || e.deadline.is_some_and(|d| d <= now) {
                // Requests arriving from here on queue the log again.
                e.shared.clear_queued();
                e.active = false;
                let (chains, compress) = {
                    let mut core = e.shared.lock_core();
                    // Before a removal is planned: released files keep no cached map.
                    e.shared.forget_released_maps(core.first_kept());
                    let chains = core.poll(now);
                    e.deadline = core.deadline();
                    (chains, core.compression_wanted())
                };
                if compress {
                    e.shared.wake_compressor();
                }
                for c in chains {
                    started = true;
                    self.exec.start(key, c, &e.shared.files, &mut self.done);
                }
            }
        }
        self.apply() || started
    }

    /// Reports completions to their cores and publishes what moved; true if there were any.
    fn apply(&mut self) -> bool {
        if self.done.is_empty() {
            return false;
        }
        for c in self.done.drain(..) {
            if let Some(e) = self.logs.get_mut(&c.log) {
                let p = e.shared.lock_core().complete(c.op, c.res);
                e.active = true;
                e.publish |= p.wake_waiters;
            }
        }
        for e in self.logs.values_mut() {
            if e.active {
                let deadline = &mut e.deadline;
                if std::mem::take(&mut e.publish) {
                    e.shared.publish_with(|core| {
                        *deadline = core.deadline();
                        false
                    });
                } else {
                    *deadline = e.shared.lock_core().deadline();
                }
            }
        }
        true
    }

    /// Retires the closing logs that are drained; true when shutdown is complete.
    fn retire_drained(&mut self) -> bool {
        let exec = &self.exec;
        let drained = |k: u64, e: &Entry| !exec.has_chains(k) && e.shared.lock_core().is_drained();
        let mut i = 0;
        while i < self.closing.len() {
            let k = self.closing[i].key;
            if self.logs.get(&k).is_none_or(|e| drained(k, e)) {
                let req = self.closing.swap_remove(i);
                if let Some(e) = self.logs.remove(&k) {
                    retire(&self.ctl, e);
                }
                req.answer();
            } else {
                i += 1;
            }
        }
        if !self.shutting_down {
            return false;
        }
        let keys: Vec<u64> = self
            .logs
            .iter()
            .filter(|(k, e)| drained(**k, e))
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            retire(&self.ctl, self.logs.remove(&k).expect("listed"));
        }
        if !self.logs.is_empty() {
            return false;
        }
        let late = self.ctl.stop().close;
        for req in self.closing.drain(..).chain(late) {
            req.answer();
        }
        true
    }
}
