//! The handle's appends: one attempt under the log's lock, and waiting (parked or
//! async) while back-pressure or the next segment's preparation holds it back;
//! records, atomic batches and in-place appends.

use super::LogHandle;
use crate::config::RecordId;
use crate::error::{AofError, AofResult, WouldBlockKind};
use crate::log::{Appended, FillPanic, LogCore};
use std::sync::atomic::Ordering;

impl LogHandle {
    /// One append attempt; on `WouldBlock` it has asked for a flush so waiting helps.
    fn try_once(
        &self,
        op: &mut dyn FnMut(&mut LogCore) -> AofResult<Appended>,
    ) -> AofResult<RecordId> {
        let mut core = self.shared.lock_core();
        match op(&mut core) {
            Ok(a) => {
                drop(core);
                if a.wake_shard {
                    self.shared.wake_shard();
                }
                Ok(a.rid)
            }
            Err(e) => {
                let blocked = e.is_would_block();
                if matches!(e, AofError::WouldBlock(WouldBlockKind::Admission)) {
                    core.request_flush_all();
                }
                drop(core);
                if blocked {
                    // Waiting helps only if the shard syncs (admission) or prepares (rollover).
                    self.shared.wake_shard();
                }
                Err(e)
            }
        }
    }

    /// Runs `op` until it is not held back, parking the thread while it is.
    fn blocking(
        &self,
        call: &'static str,
        op: &mut dyn FnMut(&mut LogCore) -> AofResult<Appended>,
    ) -> AofResult<RecordId> {
        loop {
            let seen = self.shared.signal.version();
            match self.try_once(op) {
                Err(AofError::WouldBlock(
                    kind @ (WouldBlockKind::Admission | WouldBlockKind::Rollover),
                )) => {
                    Self::no_blocking_here(call)?;
                    self.backpressure_waits.fetch_add(1, Ordering::Relaxed);
                    log::debug!("aof2: {call} waits ({kind:?})");
                    self.shared.signal.wait_change(seen, None);
                }
                r => return r,
            }
        }
    }

    /// Runs `op` until it is not held back, waiting asynchronously while it is.
    async fn waiting(
        &self,
        op: &mut (dyn FnMut(&mut LogCore) -> AofResult<Appended> + Send),
    ) -> AofResult<RecordId> {
        loop {
            let seen = self.shared.signal.version();
            match self.try_once(op) {
                Err(AofError::WouldBlock(WouldBlockKind::Admission | WouldBlockKind::Rollover)) => {
                    self.backpressure_waits.fetch_add(1, Ordering::Relaxed);
                    self.shared.signal.changed(seen).await;
                }
                r => return r,
            }
        }
    }

    /// Appends a record, waiting while `max_unflushed_bytes` is reached.
    pub fn append(&self, payload: &[u8]) -> AofResult<RecordId> {
        self.blocking("append_record", &mut |core| core.append(payload))
    }

    /// Appends a record, or fails with `WouldBlock` instead of waiting (`Admission`:
    /// back-pressure; `Rollover`: the next segment's file is still being prepared).
    pub fn try_append(&self, payload: &[u8]) -> AofResult<RecordId> {
        self.try_once(&mut |core| core.append(payload))
    }

    /// Appends a record, waiting asynchronously while `max_unflushed_bytes` is reached.
    pub async fn append_async(&self, payload: &[u8]) -> AofResult<RecordId> {
        self.waiting(&mut |core| core.append(payload)).await
    }

    /// Appends `records` as one atomic batch (see [`LogCore::append_batch`]), waiting
    /// while held back; returns the last record's id.
    pub fn append_batch(&self, records: &[&[u8]]) -> AofResult<RecordId> {
        self.blocking("append_batch", &mut |core| core.append_batch(records))
    }

    /// [`LogHandle::append_batch`], waiting asynchronously while held back.
    pub async fn append_batch_async(&self, records: &[&[u8]]) -> AofResult<RecordId> {
        self.waiting(&mut |core| core.append_batch(records)).await
    }

    /// Appends a record of `len` bytes that `fill` writes in place in the log's buffer
    /// (its initial contents are unspecified), waiting while held back. A panic in
    /// `fill` appends nothing and resumes in the caller, with the log usable.
    pub fn append_with(&self, len: usize, fill: impl FnOnce(&mut [u8])) -> AofResult<RecordId> {
        let mut fill = Some(fill);
        let mut panicked = None;
        let r = self.blocking("append_with", &mut |core| {
            Self::fill_once(core, len, &mut fill, &mut panicked)
        });
        Self::resume_fill_panic(panicked);
        r
    }

    /// [`LogHandle::append_with`], waiting asynchronously while held back.
    pub async fn append_with_async(
        &self,
        len: usize,
        fill: impl FnOnce(&mut [u8]) + Send,
    ) -> AofResult<RecordId> {
        let mut fill = Some(fill);
        let mut panicked = None;
        let r = self
            .waiting(&mut |core| Self::fill_once(core, len, &mut fill, &mut panicked))
            .await;
        Self::resume_fill_panic(panicked);
        r
    }

    /// One `append_with` attempt: `fill` is consumed only by an append that goes ahead.
    fn fill_once<F: FnOnce(&mut [u8])>(
        core: &mut LogCore,
        len: usize,
        fill: &mut Option<F>,
        panicked: &mut Option<FillPanic>,
    ) -> AofResult<Appended> {
        let mut once = |b: &mut [u8]| (fill.take().expect("fill runs once"))(b);
        match core.append_with(len, &mut once)? {
            Ok(a) => Ok(a),
            Err(p) => {
                *panicked = Some(p);
                // Never seen: the panic resumes first.
                Err(AofError::Internal {
                    path: std::path::PathBuf::new(),
                    cause: "append_with: fill panicked".into(),
                })
            }
        }
    }

    fn resume_fill_panic(panicked: Option<FillPanic>) {
        if let Some(p) = panicked {
            std::panic::resume_unwind(p);
        }
    }
}
