//! Reading records back.
//!
//! - [`SegmentReader`] (from [`crate::aof2::Aof::open_reader`]): one segment, a record
//!   by id in O(1); [`SegmentCursor`]: its records in order.
//! - [`TailFollower`] (from [`crate::aof2::Aof::tail_follower`]): waits for the durable
//!   tail to move and reports seals and activations.
//! - [`SealedSegmentStream`]: every durable record exactly once, in order, sealed
//!   segments first and then the active tail, across later rolls.

pub use aof2_shards::reader::{SegmentCursor, SegmentReader, SegmentRecord};
pub use aof2_shards::stream::{ActiveSegmentCursor, StreamSegment};
pub use aof2_shards::tail::{TailEvent, TailFollower, TailState};

use crate::aof2::config::RecordId;
use crate::aof2::error::AofResult;
use crate::aof2::Aof;
use aof2_shards::stream::SealedSegmentStream as Engine;

/// Streams every durable record of an [`Aof`]: its sealed segments in order, then the
/// active segment's durable records as they appear, and on across later rolls and
/// seals, so a consumer started at any time sees every record exactly once, in order.
///
/// A record counts as delivered once a cursor's `next()` has returned it; the next
/// [`SealedSegmentStream::next_segment`] resumes right after the last record
/// delivered, so breaking out of a cursor early and calling `next_segment` again
/// neither skips nor repeats a record. A cursor handed out earlier stops counting once
/// `next_segment` is called again. The stream holds no lock: it never blocks the
/// writer, and it keeps reading what was durable after the `Aof` is closed.
#[derive(Debug)]
pub struct SealedSegmentStream {
    inner: Engine,
}

impl SealedSegmentStream {
    /// A stream from the first record of `aof`.
    pub fn new(aof: &Aof) -> AofResult<SealedSegmentStream> {
        Ok(SealedSegmentStream {
            inner: Engine::new(aof.log.view()),
        })
    }

    /// A stream whose first record is `start` (from the beginning for `None`); `start`
    /// must be the id of a durable record of `aof`.
    pub fn with_start_from(aof: &Aof, start: Option<RecordId>) -> AofResult<Self> {
        Ok(SealedSegmentStream {
            inner: Engine::with_start_from(aof.log.view(), start)?,
        })
    }

    /// A stream that resumes after `last`, the last record a consumer processed.
    pub fn with_start_after(aof: &Aof, last: RecordId) -> AofResult<Self> {
        Ok(SealedSegmentStream {
            inner: Engine::with_start_after(aof.log.view(), last)?,
        })
    }

    /// The next segment, or the next durable part of the active one, waiting for the
    /// durable tail to move when everything durable was delivered.
    ///
    /// Returns `Ok(None)` once the log is closed ([`Aof::close`] or drop) and every
    /// record durable by then was delivered; if the log failed instead (a write or
    /// sync error poisoned it), that error is returned at that point. Cancel-safe:
    /// dropping the future loses nothing.
    pub async fn next_segment(&mut self) -> AofResult<Option<StreamSegment>> {
        self.inner.next_segment().await
    }

    /// Blocking [`SealedSegmentStream::next_segment`], for threads.
    pub fn next_segment_blocking(&mut self) -> AofResult<Option<StreamSegment>> {
        self.inner.next_segment_blocking()
    }

    /// Where the stream stands (the id the next record would have if it is in the
    /// same segment).
    pub fn position(&self) -> RecordId {
        self.inner.position()
    }
}
