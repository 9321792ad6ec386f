//! The data chain: what a log writes and syncs next. One data chain is in flight per
//! log, so two writes to the same block never are: the segment's header (written and
//! synced before any frame), full buffers written behind the appenders, a write of
//! everything appended plus the sync that makes it durable, and the seal (footer
//! written and synced) once a rolled segment's frames are durable.
//!
//! Whoever holds the log's data-chain slot runs the chain: the shard, or a thread
//! waiting for durability that commits what was appended itself
//! ([`LogCore::take_commit_chain`]); headers, seals and write-behind stay the shard's.

use super::ops::{Chain, IoData, OpKind};
use super::segment::block_floor;
use super::{pos, Effect, LogCore};
use crate::buffer::AlignedBuf;
use crate::format::{SegmentFooter, FOOTER_REGION};

/// What a log's next data chain would do (see [`LogCore::poll_data`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DataPlan {
    /// Write and sync the segment's header (before any of its frames).
    Header,
    /// Write everything appended to the front segment, then sync it.
    Sync,
    /// Write and sync the footer of a rolled segment whose frames are durable.
    Seal,
    /// Write full buffers behind the appenders, up to this offset, without a sync.
    Behind(u64),
}

/// What a thread waiting for durability can do about the log's data chain.
#[derive(Debug)]
pub enum CommitTurn {
    /// The chain is the caller's to run (it now holds the log's data-chain slot): a write
    /// of everything appended to the front segment and its sync.
    Run(Chain),
    /// A data chain is in flight (the shard's or another caller's): wait for it.
    Busy,
    /// The next data chain is the shard's (a header, a seal, buffers written behind):
    /// wake the shard and wait.
    Shard,
    /// Nothing to write (everything asked for is durable, or the log is poisoned).
    Idle,
}

impl LogCore {
    /// The next data chain's job, if there is one to start now.
    fn data_plan(&self) -> Option<DataPlan> {
        let s = self.segs.front()?;
        let wants_sync = s.durable_end < s.appended_end
            && (s.rolled || self.flush_target > pos(s.id, s.durable_end));
        let wants_seal = s.rolled && s.durable_end == s.appended_end;
        // Whole buffers behind the one being filled can be written without waiting;
        // never past what was appended (an append taken back, by a panicking
        // `append_with`, may leave buffers reserved past the append end).
        let behind = if s.bufs.len() > 1 {
            let last = s.bufs.back().map(|b| b.0).unwrap_or(0);
            last.min(block_floor(s.appended_end))
        } else {
            0
        };
        let wants_behind = behind > s.written_end;
        if !(wants_sync || wants_seal || wants_behind) {
            return None;
        }
        Some(if !s.header_durable {
            DataPlan::Header
        } else if wants_sync {
            DataPlan::Sync
        } else if wants_seal {
            DataPlan::Seal
        } else {
            DataPlan::Behind(behind)
        })
    }

    /// For a thread that waits for durability: the commit chain to run itself, if the
    /// log's data-chain slot is free and the next data chain is a write + sync of what
    /// was appended (headers, seals and write-behind stay the shard's).
    pub fn take_commit_chain(&mut self) -> CommitTurn {
        if self.poisoned.is_some() {
            return CommitTurn::Idle;
        }
        if self.data_io.is_some() {
            return CommitTurn::Busy;
        }
        match self.data_plan() {
            None => CommitTurn::Idle,
            Some(DataPlan::Sync) => CommitTurn::Run(self.poll_data().expect("a sync to run")),
            Some(_) => CommitTurn::Shard,
        }
    }

    /// True when, with nothing in flight, the shard has work a committer that just
    /// finished must wake it for: a data chain only the shard runs (a header, a seal,
    /// write-behind), a close waiting for the commit to drain the log, or a zero piece
    /// of the next file that this commit earned.
    pub fn shard_has_data_work(&self) -> bool {
        self.zeroing_can_go()
            || self.data_io.is_none()
                && (self.closing
                    || (self.poisoned.is_none()
                        && matches!(
                            self.data_plan(),
                            Some(DataPlan::Header | DataPlan::Seal | DataPlan::Behind(_))
                        )))
    }

    pub(super) fn poll_data(&mut self) -> Option<Chain> {
        if self.data_io.is_some() {
            return None;
        }
        let plan = self.data_plan()?;
        let s = self.segs.front().expect("a plan has a segment");
        let seg = s.id;
        match plan {
            DataPlan::Header => {
                let block = AlignedBuf::zeroed_block(self.arena.as_ref());
                // SAFETY: a fresh block, ours alone.
                unsafe { block.write(0, &s.header_bytes) };
                let kinds = vec![
                    OpKind::Write {
                        seg,
                        offset: 0,
                        data: vec![IoData::Owned(block)],
                    },
                    OpKind::Sync { seg },
                ];
                Some(self.chain(kinds, Effect::HeaderDurable { seg }, false))
            }
            DataPlan::Sync => {
                let end = s.appended_end;
                let mut kinds = Vec::new();
                if s.written_end < end {
                    let from = block_floor(s.written_end);
                    let data = s.write_data(from, end, self.arena.as_ref());
                    kinds.push(OpKind::Write {
                        seg,
                        offset: from,
                        data,
                    });
                }
                kinds.push(OpKind::Sync { seg });
                let effect = Effect::Durable {
                    seg,
                    end,
                    // Records of later segments (appended past a roll) are not
                    // covered by this commit.
                    records: self.records_total
                        - self
                            .segs
                            .iter()
                            .skip(1)
                            .map(|s| s.record_count)
                            .sum::<u64>(),
                    started: self.clock.monotonic_ns(),
                };
                Some(self.chain(kinds, effect, false))
            }
            DataPlan::Seal => {
                let footer = SegmentFooter {
                    segment_id: seg,
                    record_count: s.record_count,
                    data_end: s.appended_end,
                    last_frame_crc: s.last_crc,
                    last_record_offset: s.last_record_offset,
                    sealed_at_ns: self.clock.realtime_ns(),
                    index_offset: 0,
                    index_len: 0,
                    index_crc: 0,
                    // The close sealed its last segment: no id past it was handed out.
                    closed_cleanly: self.closing && self.segs.len() == 1 && s.rolled_by_close,
                };
                let block = AlignedBuf::zeroed_block(self.arena.as_ref());
                // SAFETY: a fresh block, ours alone.
                unsafe { block.write(0, &footer.encode(s.seed)) };
                let offset = s.header.file_size - FOOTER_REGION;
                let kinds = vec![
                    OpKind::Write {
                        seg,
                        offset,
                        data: vec![IoData::Owned(block)],
                    },
                    OpKind::Sync { seg },
                    OpKind::Close { seg },
                ];
                Some(self.chain(kinds, Effect::Sealed { seg, footer }, false))
            }
            DataPlan::Behind(behind) => {
                let from = block_floor(s.written_end);
                let data = s.write_data(from, behind, self.arena.as_ref());
                let kinds = vec![OpKind::Write {
                    seg,
                    offset: from,
                    data,
                }];
                Some(self.chain(kinds, Effect::Written { seg, end: behind }, false))
            }
        }
    }
}
