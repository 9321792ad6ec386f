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
//!
//! **One log's broken invariant does not kill its neighbours.** Everything the turn
//! does with one log's core (polling it, reporting a completion to it, reading its
//! deadline) runs inside an unwind boundary of its own: a panic there poisons that log
//! only (its callers get the panic's message), and the shard and its other logs go on.
//! The broken log's operations still in flight stay with the executor, which keeps
//! their buffers and files until the kernel completes them; their completions are then
//! dropped instead of reaching a core whose state can no longer be trusted, and the
//! log is retired (its files closed) only once none is left.

use super::tasks::Tasks;
use super::{CloseRequest, Registration, ShardCtl, FAULT_LOST, FAULT_PANIC};
use crate::clock::Clock;
use crate::error::AofError;
use crate::exec::{Completed, Executor, Host};
use crate::log_shared::LogShared;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
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
    /// A panic while the shard worked on this log poisoned it: its core is not polled
    /// again, and completions of its chains still in flight are dropped.
    broken: bool,
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
    /// Tasks spawned onto the shard (dropped with the loop, on the shard's thread).
    tasks: Tasks,
    /// The host sleeps elsewhere (a glommio reactor): a turn never blocks in the
    /// executor, it returns and the host waits for the executor's eventfd.
    never_block: bool,
    /// The shard's arena is registered with the executor (or needs not be).
    arena_settled: bool,
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

/// Runs `f` on one log's behalf; a panic inside it breaks that log only: the log is
/// poisoned with the panic's message (its waiters are released with it) and `e` is
/// marked broken. `None` if it panicked (or the log was broken already).
fn for_log<T>(shard: usize, e: &mut Entry, f: impl FnOnce(&mut Entry) -> T) -> Option<T> {
    if e.broken {
        return None;
    }
    match std::panic::catch_unwind(AssertUnwindSafe(|| f(&mut *e))) {
        Ok(v) => Some(v),
        Err(p) => {
            e.broken = true;
            e.active = false;
            e.deadline = None;
            let cause = super::panic_message(&*p);
            let path = e.shared.lock_core().config().root_dir.clone();
            log::error!(
                "aof2: a broken invariant in log {} on shard {shard}: {cause}; that log is \
                 poisoned, the shard and its other logs go on",
                path.display()
            );
            poison(&e.shared, AofError::Internal { path, cause });
            None
        }
    }
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
            tasks: Tasks::default(),
            never_block: false,
            arena_settled: false,
        }
    }

    /// The executor (tests reach into the simulated ring through it).
    pub fn executor_mut(&mut self) -> &mut dyn Executor {
        &mut *self.exec
    }

    /// Turns never block in the executor (the host waits elsewhere).
    pub fn set_never_block(&mut self, yes: bool) {
        self.never_block = yes;
    }

    /// True when a task is ready to run (the host should turn again before sleeping).
    pub fn has_ready_tasks(&self) -> bool {
        self.tasks.has_ready()
    }

    /// Tasks alive on the shard.
    pub fn task_count(&self) -> usize {
        self.tasks.len()
    }

    /// How long until the loop needs a look even if no request or completion wakes
    /// it: zero with operations in flight or logs closing, the time to the nearest
    /// deadline otherwise, `None` when idle.
    pub fn next_look(&self) -> Option<Duration> {
        if self.shutting_down
            || !self.closing.is_empty()
            || self.logs.keys().any(|k| self.exec.has_chains(*k))
        {
            return Some(Duration::ZERO);
        }
        let due = self.logs.values().filter_map(|e| e.deadline).min()?;
        Some(Duration::from_nanos(
            due.saturating_sub(self.clock.monotonic_ns()),
        ))
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
        if !self.arena_settled {
            // The first log placed here made the shard's arena: registered now, before
            // any of its operations (and again later if operations were in flight).
            if let Some(a) = self.ctl.arena.get() {
                self.arena_settled = self.exec.adopt_arena(a);
            }
        }
        // Tasks first: what they append and flush goes out with this turn's chains.
        if self.tasks.run(&self.ctl.tasks) {
            self.take_inbox();
        }
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
        let busy = self.logs.values().any(|e| e.active) || self.tasks.has_ready();
        let mut next: Option<u64> = self.logs.values().filter_map(|e| e.deadline).min();
        if !busy && (!self.closing.is_empty() || self.shutting_down) {
            // Draining logs always have work; this only guards against a stall.
            let guard = self.clock.monotonic_ns() + 10_000_000;
            next = Some(next.map_or(guard, |n| n.min(guard)));
        }
        let now = self.clock.monotonic_ns();
        let block = !busy && !self.never_block;
        self.exec.progress(now, next, block, host, &mut self.done)?;
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
        let mut inbox = self.ctl.take_inbox();
        let (spawn, woken) = (
            std::mem::take(&mut inbox.spawn),
            std::mem::take(&mut inbox.woken),
        );
        self.tasks.take(&self.ctl, spawn, woken);
        for Registration { shared } in inbox.add {
            self.logs.insert(
                shared.key,
                Entry {
                    shared,
                    active: true,
                    publish: false,
                    deadline: None,
                    broken: false,
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
        let shard = self.ctl.id;
        let mut started = false;
        for (&key, e) in self.logs.iter_mut() {
            if !(e.active || e.deadline.is_some_and(|d| d <= now)) || e.broken {
                continue;
            }
            // Requests arriving from here on queue the log again.
            e.shared.clear_queued();
            e.active = false;
            let polled = for_log(shard, e, |e| {
                let mut core = e.shared.lock_core();
                core.check_injected_panic();
                // Before a removal is planned: released files keep no cached map.
                e.shared.forget_released_maps(core.first_kept());
                let chains = core.poll(now);
                e.deadline = core.deadline();
                (chains, core.compression_wanted(), core.archive_wanted())
            });
            let Some((chains, compress, archive)) = polled else {
                continue;
            };
            if compress {
                e.shared.wake_compressor();
            }
            if archive {
                e.shared.wake_archiver();
            }
            for c in chains {
                started = true;
                self.exec.start(key, c, &e.shared.files, &mut self.done);
            }
        }
        self.apply() || started
    }

    /// Reports completions to their cores and publishes what moved; true if there were any.
    fn apply(&mut self) -> bool {
        if self.done.is_empty() {
            return false;
        }
        let shard = self.ctl.id;
        for c in self.done.drain(..) {
            if let Some(e) = self.logs.get_mut(&c.log) {
                // A broken log's late completions are dropped: the executor has let go
                // of the operation's buffers and file now, and its core is not trusted.
                let p = for_log(shard, e, |e| e.shared.lock_core().complete(c.op, c.res));
                if let Some(p) = p {
                    e.active = true;
                    e.publish |= p.wake_waiters;
                }
            }
        }
        for e in self.logs.values_mut() {
            if !e.active {
                continue;
            }
            let publish = std::mem::take(&mut e.publish);
            for_log(shard, e, |e| {
                let deadline = &mut e.deadline;
                if publish {
                    e.shared.publish_with(|core| {
                        *deadline = core.deadline();
                        false
                    });
                } else {
                    *deadline = e.shared.lock_core().deadline();
                }
            });
        }
        true
    }

    /// Retires the closing logs that are drained; true when shutdown is complete.
    fn retire_drained(&mut self) -> bool {
        let exec = &self.exec;
        // A broken log is done once the kernel has finished with its operations.
        let drained = |k: u64, e: &Entry| {
            !exec.has_chains(k) && (e.broken || e.shared.lock_core().is_drained())
        };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AofConfig;
    use crate::exec::chains::{Ring, Submission};
    use crate::exec::files::LogFiles;
    use crate::exec::{NeverSleep, RingExecutor};
    use crate::fs::sim::SimFs;
    use crate::fs::Fs;
    use crate::layout::LogPaths;
    use crate::log::{LogCore, Recovered};
    use crate::log_shared::ShardLink;
    use crate::shard::{CloseRequest, Registration};
    use std::cell::RefCell;
    use std::io;
    use std::path::Path;
    use std::rc::Rc;

    /// A ring that runs submissions on the simulated disk when told to, and holds them
    /// (in flight, buffers and files kept) while `hold` is set.
    #[derive(Default)]
    struct Held {
        hold: Rc<RefCell<bool>>,
        queued: Vec<Submission>,
    }

    impl Ring for Held {
        fn submit_linked(&mut self, ops: Vec<Submission>) {
            self.queued.extend(ops);
        }
        fn wait(
            &mut self,
            _: u64,
            _: Option<u64>,
            _: bool,
            _: &dyn crate::exec::Host,
            out: &mut Vec<(u64, io::Result<()>)>,
        ) -> io::Result<()> {
            if *self.hold.borrow() {
                return Ok(());
            }
            for s in self.queued.drain(..) {
                let r = match s.op {
                    crate::exec::chains::RingOp::Write {
                        file, offset, data, ..
                    } => {
                        let slices: Vec<&[u8]> = data.iter().map(|d| d.bytes()).collect();
                        crate::fs::write_all_at(&*file, offset, &slices)
                    }
                    crate::exec::chains::RingOp::Sync { file } => file.fdatasync(),
                    crate::exec::chains::RingOp::SyncDir { .. } => Ok(()),
                };
                out.push((s.token, r));
            }
            Ok(())
        }
    }

    struct Nowhere;
    impl ShardLink for Nowhere {
        fn ready(&self, _: u64) {}
    }

    fn a_log(fs: &SimFs, key: u64, dir: &str) -> Arc<LogShared> {
        fs.mkdir(Path::new(dir), 0o700).unwrap();
        fs.mkdir(&Path::new(dir).join("segments"), 0o700).unwrap();
        let mut cfg = AofConfig::default();
        cfg.root_dir = dir.into();
        cfg.segment_min_bytes = 64 << 10;
        cfg.segment_target_bytes = 64 << 10;
        let core = LogCore::new(
            cfg.normalized(),
            LogPaths::new(Path::new(dir)),
            Clock::default(),
            key,
            Recovered::default(),
        );
        let files = Arc::new(LogFiles::new(Arc::new(fs.clone()), false));
        let nowhere: Arc<dyn ShardLink> = Arc::new(Nowhere);
        Arc::new(LogShared::new(key, core, files, &nowhere))
    }

    /// Appends until the log has a segment, then appends `p` and asks for it durable.
    fn append_and_flush(lp: &mut ShardLoop, log: &LogShared, p: &[u8]) {
        for _ in 0..100 {
            let r = log.lock_core().append(p);
            match r {
                Ok(a) => {
                    let mut core = log.lock_core();
                    core.request_flush(a.rid.as_u64() + 1);
                    drop(core);
                    lp.logs.get_mut(&log.key).unwrap().active = true;
                    return;
                }
                Err(_) => {
                    lp.logs.get_mut(&log.key).unwrap().active = true;
                    lp.turn(&NeverSleep).unwrap();
                }
            }
        }
        panic!("no segment for the append");
    }

    #[test]
    fn a_broken_log_keeps_its_operations_in_flight_until_they_complete() {
        let fs = SimFs::new(5);
        let ctl = ShardCtl::detached(0);
        let hold = Rc::new(RefCell::new(false));
        let ring = Held {
            hold: hold.clone(),
            queued: Vec::new(),
        };
        let mut lp = ShardLoop::new(
            ctl.clone(),
            Box::new(RingExecutor::new(ring)),
            Clock::default(),
        );
        let (a, b) = (a_log(&fs, 1, "/a"), a_log(&fs, 2, "/b"));
        for l in [&a, &b] {
            ctl.add(Registration { shared: l.clone() }).unwrap();
        }
        lp.turn(&NeverSleep).unwrap();
        append_and_flush(&mut lp, &a, b"a one");
        append_and_flush(&mut lp, &b, b"b one");
        for _ in 0..10 {
            lp.turn(&NeverSleep).unwrap();
        }
        let durable_b = b.lock_core().durable_pos();
        assert!(a.lock_core().durable_pos() > 0 && durable_b > 0);

        // `a`'s next write and sync are in flight (held) when its core panics.
        *hold.borrow_mut() = true;
        append_and_flush(&mut lp, &a, b"a two");
        lp.turn(&NeverSleep).unwrap();
        assert!(lp.exec.has_chains(1), "a's commit is in flight");
        a.lock_core().inject_panic();
        lp.logs.get_mut(&1).unwrap().active = true;
        lp.turn(&NeverSleep).unwrap();
        let e = a.lock_core().poison().expect("a is poisoned");
        assert!(e.to_string().contains("a panic injected"), "{e}");
        assert!(a.signal.ended(), "a's waiters were released");
        assert!(lp.logs[&1].broken);

        // A close of `a` waits for the kernel to finish with a's buffers and files.
        let (ack, acked) = std::sync::mpsc::channel();
        ctl.close(CloseRequest {
            key: 1,
            ack,
            lock: None,
        });
        for _ in 0..5 {
            lp.turn(&NeverSleep).unwrap();
        }
        assert!(acked.try_recv().is_err(), "not retired while in flight");
        assert!(lp.exec.has_chains(1));
        // `b`, on the same shard, goes on (its write waits behind the held ring).
        *hold.borrow_mut() = false;
        append_and_flush(&mut lp, &b, b"b two");
        for _ in 0..10 {
            lp.turn(&NeverSleep).unwrap();
        }
        assert!(b.lock_core().durable_pos() > durable_b, "b went on");
        assert!(b.lock_core().poison().is_none());
        // a's late completions were dropped, and it was retired once they arrived.
        assert!(!lp.exec.has_chains(1));
        assert!(acked.try_recv().is_ok(), "the close was answered");
        assert_eq!(lp.log_count(), 1);
    }
}
