//! Executors: what runs the log core's operation chains, behind one seam that every
//! host can drive.
//!
//! A *host* is the thread (or task) that owns an executor and calls it: today a shard
//! thread; later a caller committing its own appends on its own ring, or a glommio
//! reactor. The seam has three parts:
//! - [`Executor::start`]: submit a chain (its writes and syncs go out as whole linked
//!   groups on a ring; the blocking executor runs it to the end at once);
//! - [`Executor::progress`]: report what completed, never blocking unless asked;
//! - a readiness hook the host supplies ([`Host`]): how it announces that it is about
//!   to sleep (so a request arriving meanwhile is never lost) and how it sleeps when the
//!   executor has nothing to wait in. A ring executor sleeps in `io_uring_enter`; the
//!   blocking one parks the host.
//!
//! Implementations: [`blocking::BlockingExecutor`] (portable `pwritev`/`fdatasync`) and
//! [`RingExecutor`], which cuts chains into linked groups ([`chains::ChainRunner`]) for
//! a [`chains::Ring`]: the real one ([`uring::UringRing`]) or the simulated one
//! ([`sim_ring::SimRing`]). A new executor is a new file implementing [`Executor`],
//! plus a run of the test suite on it.
//!
//! A log's files and the set of them holding unsynced writes ([`files::LogFiles`]) are
//! not the executor's: they live in the log's shared state, so whoever holds the log's
//! data-chain slot reaches them.

pub mod blocking;
pub mod caller;
pub mod chains;
pub mod create_apart;
pub mod files;
pub mod sim_ring;
pub mod uring;

use crate::log::ops::Chain;
use chains::{ChainRunner, Ring};
use files::LogFiles;
use std::io;
use std::sync::Arc;
use std::time::Duration;

/// An operation of a log's chain that finished, for the log's core.
#[derive(Debug)]
pub struct Completed {
    /// The log (its key on the host).
    pub log: u64,
    /// The core's operation id.
    pub op: u64,
    /// The outcome.
    pub res: io::Result<()>,
}

/// The readiness hook a host supplies to the executor it drives.
pub trait Host {
    /// The host is about to sleep: raises its "sleeping" flag, then re-checks its queue
    /// (in that order, so a request that arrives meanwhile either is seen here or sees
    /// the flag and wakes the host). False, with the flag lowered, if work is queued.
    fn may_sleep(&self) -> bool;
    /// Lowers the "sleeping" flag after a sleep.
    fn awake(&self);
    /// Sleeps until woken or `timeout` passes (for executors that cannot sleep in the
    /// kernel themselves).
    fn park(&self, timeout: Option<Duration>);
}

/// A host that never sleeps (the crash checker's turns, which run on virtual time).
pub struct NeverSleep;

impl Host for NeverSleep {
    fn may_sleep(&self) -> bool {
        false
    }
    fn awake(&self) {}
    fn park(&self, _: Option<Duration>) {}
}

/// Runs log cores' operation chains.
pub trait Executor {
    /// Starts `chain` of log `log`, whose files are `files`. Operations that finish at
    /// once (all of them on the blocking executor; inline metadata operations on a
    /// ring) are appended to `done`.
    fn start(&mut self, log: u64, chain: Chain, files: &Arc<LogFiles>, done: &mut Vec<Completed>);

    /// Appends operations that completed to `done`. With `block`, first waits until a
    /// completion may be ready, `deadline` (monotonic ns; `now` is the time) passes, or
    /// `host` has work. An error means the executor failed beyond repair (completions
    /// lost): operations in flight may never complete.
    fn progress(
        &mut self,
        now: u64,
        deadline: Option<u64>,
        block: bool,
        host: &dyn Host,
        done: &mut Vec<Completed>,
    ) -> Result<(), String>;

    /// True when `log` has a chain that has not finished.
    fn has_chains(&self, log: u64) -> bool;

    /// See [`chains::Ring::adopt_arena`]; executors without a ring have nothing to
    /// register.
    fn adopt_arena(&mut self, _arena: &Arc<crate::buffer::BufferArena>) -> bool {
        true
    }

    /// Test hook: the next `progress` reports a completion the kernel dropped; an
    /// executor with nothing in flight reports its failure at once (`Err`).
    fn inject_lost_completion(&mut self) -> Result<(), String>;

    /// For tests that reach into a particular executor (the simulated ring's checks).
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any;
}

/// An executor over a completion ring: chains are cut into linked groups and submitted;
/// their completions advance them.
pub struct RingExecutor<R: Ring> {
    runner: ChainRunner,
    ring: R,
    cqes: Vec<(u64, io::Result<()>)>,
}

impl<R: Ring> RingExecutor<R> {
    /// An executor over `ring`.
    pub fn new(ring: R) -> RingExecutor<R> {
        RingExecutor {
            runner: ChainRunner::new(),
            ring,
            cqes: Vec::new(),
        }
    }

    /// The ring.
    pub fn ring(&self) -> &R {
        &self.ring
    }

    /// The ring, mutably (tests: a simulated crash).
    pub fn ring_mut(&mut self) -> &mut R {
        &mut self.ring
    }

    /// The chain runner (tests: the negative control of the fusion rule).
    pub fn runner_mut(&mut self) -> &mut ChainRunner {
        &mut self.runner
    }
}

impl<R: Ring + 'static> Executor for RingExecutor<R> {
    fn start(&mut self, log: u64, chain: Chain, files: &Arc<LogFiles>, done: &mut Vec<Completed>) {
        self.runner.start(log, chain, files, &mut self.ring, done);
    }

    fn progress(
        &mut self,
        now: u64,
        deadline: Option<u64>,
        block: bool,
        host: &dyn Host,
        done: &mut Vec<Completed>,
    ) -> Result<(), String> {
        self.ring
            .wait(now, deadline, block, host, &mut self.cqes)
            .map_err(|e| format!("its io_uring ring failed: {e}"))?;
        for (token, res) in self.cqes.drain(..) {
            self.runner.complete(token, res, &mut self.ring, done);
        }
        Ok(())
    }

    fn has_chains(&self, log: u64) -> bool {
        self.runner.has_chains(log)
    }

    fn adopt_arena(&mut self, arena: &Arc<crate::buffer::BufferArena>) -> bool {
        self.ring.adopt_arena(arena)
    }

    fn inject_lost_completion(&mut self) -> Result<(), String> {
        self.ring.inject_lost_completion();
        Ok(())
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}
