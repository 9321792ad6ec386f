//! Following a live log: [`TailFollower`] wakes when the durable tail advances and
//! reports segments being activated and sealed. It waits on the log's durable signal
//! (a condition variable for threads, a registered waker for tasks), never polls, and
//! only reads the log's state under its lock for a moment, so a slow follower never
//! holds up the writer.

use crate::config::{RecordId, SegmentId};
use crate::error::AofError;
use crate::log_handle::LogView;

/// What happened to the log's segments, as a follower reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TailEvent {
    /// Only the durable tail moved.
    None,
    /// Appends now go to this segment (its header is durable).
    Activated(SegmentId),
    /// This segment's seal footer is durable: it is immutable from now on.
    Sealed(SegmentId),
}

/// The tail of a log at one moment, with the event that a follower reports with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TailState {
    /// Every record whose id is below this is durable (`RecordId` order).
    pub durable: RecordId,
    /// The segment appends go to, if its header is durable yet.
    pub active: Option<SegmentId>,
    /// The newest sealed segment.
    pub last_sealed: Option<SegmentId>,
    /// The log was closed or failed: nothing more will become durable.
    pub ended: bool,
    /// What this state reports (see [`TailFollower::next`]).
    pub event: TailEvent,
}

/// Reads the tail state of `view` now (event `None`).
pub fn tail_state(view: &LogView) -> TailState {
    let ended = view.signal().ended();
    let core = view.lock_core();
    TailState {
        durable: RecordId::from_u64(core.durable_pos()),
        active: core.active_segment().map(SegmentId::new),
        last_sealed: core
            .sealed_segments()
            .last()
            .map(|s| SegmentId::new(s.header.segment_id)),
        ended,
        event: TailEvent::None,
    }
}

/// Follows a log from the moment it is created: every later seal, activation and
/// advance of the durable tail is reported, in order, none twice. Many followers may
/// follow one log; each keeps its own place.
pub struct TailFollower {
    view: LogView,
    /// The lowest segment id `next` may report sealed next (every seal from creation
    /// on is of a segment at or above the first one not sealed then).
    sealed_next: u64,
    /// The same for `next_sealed_segment`.
    taken_next: u64,
    active_seen: Option<u64>,
    durable_seen: u64,
    ended_seen: bool,
}

impl TailFollower {
    /// A follower of `view`, starting at its current state: it reports every seal
    /// after that, so a segment sealed later and released before the follower got to
    /// it is still reported (opening it is `Released`), never skipped.
    pub fn new(view: LogView) -> TailFollower {
        let now = tail_state(&view);
        let first_unsealed = view.lock_core().first_unsealed();
        TailFollower {
            view,
            sealed_next: first_unsealed,
            taken_next: first_unsealed,
            active_seen: now.active.map(|s| s.as_u64()),
            durable_seen: now.durable.as_u64(),
            ended_seen: false,
        }
    }

    /// The tail now (event `None`), without waiting.
    pub fn current(&self) -> TailState {
        tail_state(&self.view)
    }

    /// Why the log ended, if it failed rather than closed: the error every call on it
    /// returns (a failed write or sync, or its shard thread failing). `None` while the
    /// log runs and after a clean close.
    pub fn error(&self) -> Option<AofError> {
        self.view.lock_core().poison()
    }

    /// What to report now, if anything changed since the last report.
    fn poll_state(&mut self) -> Option<Option<TailState>> {
        // Sealed first: the state read after it then includes that seal.
        let next_sealed = self.view.lock_core().sealed_from(self.sealed_next);
        let mut st = tail_state(&self.view);
        if let Some(id) = next_sealed {
            self.sealed_next = id + 1;
            st.event = TailEvent::Sealed(SegmentId::new(id));
            return Some(Some(st));
        }
        if let Some(a) = st.active.map(|a| a.as_u64()) {
            if self.active_seen.is_none_or(|seen| a > seen) {
                self.active_seen = Some(a);
                st.event = TailEvent::Activated(SegmentId::new(a));
                return Some(Some(st));
            }
        }
        if st.durable.as_u64() > self.durable_seen {
            self.durable_seen = st.durable.as_u64();
            return Some(Some(st));
        }
        if st.ended {
            if self.ended_seen {
                return Some(None);
            }
            self.ended_seen = true;
            return Some(Some(st));
        }
        None
    }

    /// Waits for the next change and reports it: a seal first (one per call, oldest
    /// first), then an activation, then an advance of the durable tail (event `None`).
    /// Once the log has ended, one last state with `ended` set, then `None`.
    pub async fn next(&mut self) -> Option<TailState> {
        loop {
            let seen = self.view.signal().version();
            if let Some(r) = self.poll_state() {
                return r;
            }
            self.view.signal().changed(seen).await;
        }
    }

    /// Blocking [`TailFollower::next`], for threads.
    pub fn next_blocking(&mut self) -> Option<TailState> {
        loop {
            let seen = self.view.signal().version();
            if let Some(r) = self.poll_state() {
                return r;
            }
            self.view.signal().wait_change(seen, None);
        }
    }

    fn poll_sealed(&mut self) -> Option<Option<SegmentId>> {
        let next = self.view.lock_core().sealed_from(self.taken_next);
        if let Some(id) = next {
            self.taken_next = id + 1;
            return Some(Some(SegmentId::new(id)));
        }
        if self.view.signal().ended() {
            return Some(None);
        }
        None
    }

    /// Waits until a segment is sealed and returns its id (each one once, oldest
    /// first, independent of [`TailFollower::next`]); `None` once the log has ended.
    pub async fn next_sealed_segment(&mut self) -> Option<SegmentId> {
        loop {
            let seen = self.view.signal().version();
            if let Some(r) = self.poll_sealed() {
                return r;
            }
            self.view.signal().changed(seen).await;
        }
    }

    /// Blocking [`TailFollower::next_sealed_segment`].
    pub fn next_sealed_segment_blocking(&mut self) -> Option<SegmentId> {
        loop {
            let seen = self.view.signal().version();
            if let Some(r) = self.poll_sealed() {
                return r;
            }
            self.view.signal().wait_change(seen, None);
        }
    }
}

impl std::fmt::Debug for TailFollower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TailFollower")
            .field(
                "durable_seen",
                &crate::config::RecordId::from_u64(self.durable_seen),
            )
            .field("active_seen", &self.active_seen)
            .finish_non_exhaustive()
    }
}
