//! Tasks that run on a shard's own thread (`AofManager::spawn_on_shard`).
//!
//! A task is a future polled only on its shard's thread, so it may hold `!Send` state
//! across awaits. The shard's turn polls the tasks that are ready (within a budget),
//! then polls its logs and submits, so a task that appends and waits for a flush on a
//! log of its own shard is carried by that shard's next commit with no thread hop: its
//! waker, called by the publication of that commit on the same thread, only queues it
//! in the inbox (the shard is awake, so no eventfd is written).
//!
//! A panic while creating or polling a task ends that task with
//! [`AofError::TaskPanicked`]; the shard goes on. Tasks still pending when the shard
//! stops (after its logs drained at shutdown, or when it fails) are dropped on the
//! shard's thread, and their [`ShardTask`]s return [`AofError::TaskCancelled`].
//!
//! A task that polls for long stalls every log and task of its shard: polls longer
//! than [`SLOW_POLL`] are counted, and the longest is kept ([`TaskStats`]).

use super::{current_shard, panic_message, ShardCtl};
use crate::error::{AofError, AofResult};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

/// A task as the shard holds it: created on the shard's thread, never sent.
type LocalTask = Pin<Box<dyn Future<Output = ()>>>;

/// What crosses to the shard: the closure that creates the task there.
pub(crate) type Spawn = Box<dyn FnOnce() -> LocalTask + Send>;

/// Task polls per turn before the shard looks at its logs and completions again.
const POLL_BUDGET: usize = 64;

/// A poll longer than this is counted as slow (it held up the whole shard).
pub const SLOW_POLL: Duration = Duration::from_millis(1);

/// Counters of a shard's tasks and wake-ups.
#[derive(Default)]
pub struct TaskStats {
    /// Tasks spawned onto the shard.
    pub spawned: AtomicU64,
    /// Tasks that ended (finished, panicked or dropped).
    pub ended: AtomicU64,
    /// Polls of tasks.
    pub polls: AtomicU64,
    /// Polls longer than [`SLOW_POLL`].
    pub slow_polls: AtomicU64,
    /// The longest poll, in ns.
    pub longest_poll_ns: AtomicU64,
    /// Task wake-ups that came from another thread.
    pub foreign_wakes: AtomicU64,
    /// Writes to the shard's eventfd (wake-ups of a sleeping ring).
    pub eventfd_writes: AtomicU64,
    /// Sleeps of a glommio shard that its safety-net timer ended (`SAFETY_NET`).
    pub net_wakes: AtomicU64,
}

/// The tasks of one shard, owned by its loop.
#[derive(Default)]
pub struct Tasks {
    live: HashMap<u64, (LocalTask, Waker, Arc<TaskWaker>)>,
    ready: VecDeque<u64>,
    next: u64,
    /// The shard (for its counters when tasks are dropped with the loop).
    shard: Weak<ShardCtl>,
}

impl Drop for Tasks {
    fn drop(&mut self) {
        if let Some(ctl) = self.shard.upgrade() {
            let n = self.live.len() as u64;
            ctl.tasks.ended.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// Wakes one task: queues it in its shard's inbox, once until it is polled again.
struct TaskWaker {
    id: u64,
    shard: Weak<ShardCtl>,
    queued: AtomicBool,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.queued.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(ctl) = self.shard.upgrade() {
            if current_shard() != Some(ctl.id) {
                ctl.tasks.foreign_wakes.fetch_add(1, Ordering::Relaxed);
            }
            ctl.with_inbox(|i| i.woken.push(self.id));
        }
    }
}

impl Tasks {
    /// Starts tasks spawned onto shard `ctl` (on its thread) and queues woken ones.
    pub(crate) fn take(&mut self, ctl: &Arc<ShardCtl>, spawns: Vec<Spawn>, woken: Vec<u64>) {
        if !spawns.is_empty() && self.shard.strong_count() == 0 {
            self.shard = Arc::downgrade(ctl);
        }
        for s in spawns {
            let id = self.next;
            self.next += 1;
            // The closure catches its own panics (see `spawn`): this never unwinds.
            let task = s();
            let w = Arc::new(TaskWaker {
                id,
                shard: Arc::downgrade(ctl),
                queued: AtomicBool::new(true),
            });
            self.live.insert(id, (task, Waker::from(w.clone()), w));
            self.ready.push_back(id);
        }
        self.ready.extend(woken);
    }

    /// True when a task is ready to be polled.
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// Tasks alive on the shard.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// True when no task is alive.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// Polls ready tasks, at most [`POLL_BUDGET`] of them; true if any was polled.
    pub fn run(&mut self, stats: &TaskStats) -> bool {
        let mut polled = 0;
        while polled < POLL_BUDGET {
            let Some(id) = self.ready.pop_front() else {
                break;
            };
            let Some((task, waker, w)) = self.live.get_mut(&id) else {
                continue; // ended already: a late wake-up
            };
            polled += 1;
            w.queued.store(false, Ordering::Release);
            let mut cx = Context::from_waker(waker);
            let t0 = Instant::now();
            // Tasks are wrapped by `spawn` so a panic ends the task, not the turn.
            let done = task.as_mut().poll(&mut cx).is_ready();
            let ns = t0.elapsed().as_nanos() as u64;
            if ns > SLOW_POLL.as_nanos() as u64 {
                stats.slow_polls.fetch_add(1, Ordering::Relaxed);
            }
            stats.longest_poll_ns.fetch_max(ns, Ordering::Relaxed);
            if done {
                self.live.remove(&id);
                stats.ended.fetch_add(1, Ordering::Relaxed);
            }
        }
        stats.polls.fetch_add(polled as u64, Ordering::Relaxed);
        polled > 0
    }
}

/// Where a task's result waits for its [`ShardTask`].
struct Slot<T> {
    state: Mutex<SlotState<T>>,
    cv: Condvar,
}

struct SlotState<T> {
    result: Option<AofResult<T>>,
    /// The result was taken (or the handle dropped): nothing waits any more.
    taken: bool,
    waker: Option<Waker>,
}

/// The shard's side of a task's result; dropped unsent, it reports the task cancelled.
struct Sender<T> {
    slot: Arc<Slot<T>>,
    shard: usize,
    sent: bool,
}

impl<T> Sender<T> {
    fn send(mut self, r: AofResult<T>) {
        self.put(r);
    }

    fn put(&mut self, r: AofResult<T>) {
        self.sent = true;
        let waker = {
            let mut s = self.slot.state.lock().unwrap_or_else(|p| p.into_inner());
            if !s.taken {
                s.result = Some(r);
            }
            s.waker.take()
        };
        self.slot.cv.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if !self.sent {
            let shard = self.shard;
            self.put(Err(AofError::TaskCancelled {
                shard,
                reason: "the shard stopped (the manager shut down or the shard failed) \
                         before the task finished"
                    .into(),
            }));
        }
    }
}

/// A task running on a shard: a future of its result, or [`ShardTask::join`] from a
/// plain thread. Dropping it detaches the task, which runs on.
#[must_use = "dropping a ShardTask detaches the task; await it or join it for its result"]
pub struct ShardTask<T> {
    slot: Arc<Slot<T>>,
    shard: usize,
}

impl<T> std::fmt::Debug for ShardTask<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardTask")
            .field("shard", &self.shard)
            .finish_non_exhaustive()
    }
}

impl<T> ShardTask<T> {
    /// The shard the task runs on.
    pub fn shard(&self) -> usize {
        self.shard
    }

    /// True once the task has ended (its result is ready).
    pub fn is_finished(&self) -> bool {
        let s = self.slot.state.lock().unwrap_or_else(|p| p.into_inner());
        s.result.is_some()
    }

    /// Blocks the calling thread until the task ends, and returns its result. On a
    /// shard's thread it would deadlock, so it is refused there (`WouldDeadlock`):
    /// await the task instead.
    pub fn join(self) -> AofResult<T> {
        if let Some(shard) = current_shard() {
            return Err(AofError::WouldDeadlock {
                call: "ShardTask::join",
                shard,
            });
        }
        let mut s = self.slot.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(r) = s.result.take() {
                s.taken = true;
                return r;
            }
            s = self.slot.cv.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl<T> Future for ShardTask<T> {
    type Output = AofResult<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<AofResult<T>> {
        let mut s = self.slot.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = s.result.take() {
            s.taken = true;
            return Poll::Ready(r);
        }
        if s.taken {
            panic!("ShardTask polled after it returned its result");
        }
        s.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl<T> Drop for ShardTask<T> {
    fn drop(&mut self) {
        // Detached: a result arriving later is dropped on the shard's thread.
        let mut s = self.slot.state.lock().unwrap_or_else(|p| p.into_inner());
        s.taken = true;
        s.waker = None;
    }
}

/// Polls a future, turning a panic into an error.
struct CatchUnwind<F> {
    inner: Pin<Box<F>>,
}

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, String>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.inner.as_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(p) => Poll::Ready(Err(panic_message(&*p))),
        }
    }
}

/// Builds what crosses to shard `shard`: the closure that creates `f`'s task there,
/// and the handle of its result.
pub(crate) fn spawn<F, Fut, T>(shard: usize, f: F) -> (Spawn, ShardTask<T>)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
    T: Send + 'static,
{
    let slot = Arc::new(Slot {
        state: Mutex::new(SlotState {
            result: None,
            taken: false,
            waker: None,
        }),
        cv: Condvar::new(),
    });
    let tx = Sender {
        slot: slot.clone(),
        shard,
        sent: false,
    };
    let panicked = move |cause: String| AofError::TaskPanicked { shard, cause };
    let create: Spawn = Box::new(move || -> LocalTask {
        match std::panic::catch_unwind(AssertUnwindSafe(f)) {
            Ok(fut) => Box::pin(async move {
                let r = CatchUnwind {
                    inner: Box::pin(fut),
                }
                .await;
                tx.send(r.map_err(panicked));
            }),
            Err(p) => {
                tx.send(Err(panicked(panic_message(&*p))));
                Box::pin(async {})
            }
        }
    });
    (create, ShardTask { slot, shard })
}
