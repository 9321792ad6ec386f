//! Consuming a whole log in order: [`SealedSegmentStream`] hands out a cursor per
//! sealed segment, then cursors over the durable part of the active segment as it
//! grows, and carries on across later rolls. The stream remembers how far its cursors
//! got, so a consumer sees every durable record exactly once, in order, with no gap
//! where the active segment is sealed, and may stop and resume at any point.

use crate::config::RecordId;
use crate::error::{AofError, AofResult};
use crate::format::HEADER_LEN;
use crate::log::{pos, Located};
use crate::log_handle::LogView;
use crate::reader::SegmentCursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A cursor over the durable part of the active segment when it was handed out. It is
/// a [`SegmentCursor`]; the name says where it came from.
pub type ActiveSegmentCursor = SegmentCursor;

/// One step of a [`SealedSegmentStream`].
#[derive(Debug)]
pub enum StreamSegment {
    /// The rest of a sealed segment.
    Sealed(SegmentCursor),
    /// The rest of the active segment's durable records; when it is exhausted, call
    /// `next_segment` again to wait for more.
    Active(ActiveSegmentCursor),
}

impl StreamSegment {
    /// The cursor, whichever kind of segment it reads.
    pub fn into_cursor(self) -> SegmentCursor {
        match self {
            StreamSegment::Sealed(c) | StreamSegment::Active(c) => c,
        }
    }
}

/// Streams every durable record of a log: sealed segments in order, then the active
/// segment's durable records as they appear, across later rolls and seals.
///
/// A record counts as delivered once a cursor's `next()` has returned it; the next
/// [`SealedSegmentStream::next_segment`] resumes right after the last record delivered,
/// so breaking out of a cursor early and calling `next_segment` again neither skips nor
/// repeats a record. A cursor handed out earlier stops counting once `next_segment` is
/// called again.
///
/// Its starting point is fixed when it is created: a stream made by
/// [`SealedSegmentStream::new`] starts at the log's first record *then*; if that
/// record is released before the stream reaches it, the stream says so
/// (`AofError::Released`) rather than start silently at the first kept segment.
pub struct SealedSegmentStream {
    view: LogView,
    /// Where the next frame to deliver is (`RecordId` layout; an offset below the
    /// header means the start of that segment, or of the first one after it).
    progress: Arc<AtomicU64>,
}

impl SealedSegmentStream {
    /// A stream from the first record the log keeps now.
    pub fn new(view: LogView) -> SealedSegmentStream {
        let first = view.lock_core().first_record().segment_index();
        SealedSegmentStream {
            view,
            progress: Arc::new(AtomicU64::new(pos(u64::from(first), 0))),
        }
    }

    /// A stream whose first record is `start` (from the beginning for `None`). `start`
    /// must be the id of a durable record of this log.
    pub fn with_start_from(view: LogView, start: Option<RecordId>) -> AofResult<Self> {
        let s = Self::new(view);
        if let Some(rid) = start {
            let mut c = s.cursor_at(rid)?;
            c.seek(rid)?;
            s.progress.store(rid.as_u64(), Ordering::Release);
        }
        Ok(s)
    }

    /// A stream whose first record is the one after `last` (a consumer resuming after
    /// the last record it processed). `last` must be the id of a durable record.
    pub fn with_start_after(view: LogView, last: RecordId) -> AofResult<Self> {
        let s = Self::new(view);
        let mut c = s.cursor_at(last)?;
        c.seek_after(last)?;
        s.progress.store(c.position().as_u64(), Ordering::Release);
        Ok(s)
    }

    fn cursor_at(&self, rid: RecordId) -> AofResult<SegmentCursor> {
        let seg = rid.segment_index() as u64;
        match self.view.locate_pinned(seg)? {
            Some((l, pin)) if l.segment_id() == seg => {
                Ok(SegmentCursor::new(self.view.reader(l, pin)?))
            }
            _ => Err(AofError::RecordNotFound {
                rid: rid.to_string(),
                reason: format!(
                    "segment {seg} of {} is not readable",
                    self.view.root_dir().display()
                ),
            }),
        }
    }

    /// Where the stream stands: the id the next record delivered would have if it is
    /// in the same segment.
    pub fn position(&self) -> RecordId {
        RecordId::from_u64(self.progress.load(Ordering::Acquire))
    }

    /// What to hand out now; `None` to wait for the durable tail to move.
    fn poll(&mut self) -> Option<AofResult<Option<StreamSegment>>> {
        loop {
            // Read before the state: if the log had ended by then, the state is final.
            let ended = self.view.signal().ended();
            let at = self.progress.load(Ordering::Acquire);
            let (seg, off) = (at >> 32, at & u32::MAX as u64);
            // A stream that fell behind a release learns so, rather than skipping.
            let (located, poison) = match self.view.locate_pinned(seg) {
                Ok(l) => (l, self.view.lock_core().poison()),
                Err(e) => return Some(Err(e)),
            };
            let finish = move || match poison {
                Some(e) => Some(Err(e)),
                None => Some(Ok(None)),
            };
            let Some((l, pin)) = located else {
                return if ended { finish() } else { None };
            };
            let id = l.segment_id();
            let start = if id == seg {
                off.max(HEADER_LEN as u64)
            } else {
                HEADER_LEN as u64
            };
            let (end, sealed) = match l {
                Located::Sealed(s) => (s.footer.data_end, true),
                Located::Unsealed { durable_end, .. } => (durable_end, false),
            };
            if start >= end {
                if sealed {
                    // A sealed segment this session may still continue (after a clean
                    // close) is waited at, as the active one would be; one continued
                    // since the look is looked at again.
                    let core = self.view.lock_core();
                    let waits = core.continuable() == Some(id);
                    let same = matches!(core.locate(id), Some(Located::Sealed(s))
                        if s.header.segment_id == id && s.footer.data_end == end);
                    drop(core);
                    if !waits && same {
                        self.progress.store(pos(id + 1, 0), Ordering::Release);
                        continue;
                    }
                    if !same {
                        continue;
                    }
                }
                return if ended { finish() } else { None };
            }
            // Cursors handed out before stop counting: they publish to the old cell.
            let progress = Arc::new(AtomicU64::new(pos(id, start)));
            self.progress = progress.clone();
            let made = self
                .view
                .reader(l, pin)
                .and_then(|r| SegmentCursor::with_progress(r, start, progress));
            return Some(made.map(|c| {
                Some(if sealed {
                    StreamSegment::Sealed(c)
                } else {
                    StreamSegment::Active(c)
                })
            }));
        }
    }

    /// The next segment (or the next durable part of the active one), waiting for the
    /// durable tail to move when everything durable was delivered.
    ///
    /// Returns `Ok(None)` once the log is closed (`Aof::close` or drop) and every
    /// record durable by then was delivered; if the log failed instead, the failure is
    /// returned at that point. Cancel-safe: dropping the future loses nothing.
    pub async fn next_segment(&mut self) -> AofResult<Option<StreamSegment>> {
        loop {
            let seen = self.view.signal().version();
            // A segment only the archive holds is downloaded off this thread first.
            let at = self.progress.load(Ordering::Acquire);
            self.view.hydrate_for_async(at).await?;
            if let Some(r) = self.poll() {
                return r;
            }
            self.view.signal().changed(seen).await;
        }
    }

    /// Blocking [`SealedSegmentStream::next_segment`], for threads.
    pub fn next_segment_blocking(&mut self) -> AofResult<Option<StreamSegment>> {
        loop {
            let seen = self.view.signal().version();
            if let Some(r) = self.poll() {
                return r;
            }
            self.view.signal().wait_change(seen, None);
        }
    }
}

impl std::fmt::Debug for SealedSegmentStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let next = crate::config::RecordId::from_u64(self.progress.load(Ordering::Acquire));
        f.debug_struct("SealedSegmentStream")
            .field("next", &next)
            .finish_non_exhaustive()
    }
}
