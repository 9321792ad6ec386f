//! The data chain: what a log writes and syncs next. One data chain is in flight per
//! log, so two writes to the same block never are: the segment's header (written and
//! synced before any frame), full buffers written behind the appenders, a write of
//! everything appended plus the sync that makes it durable, and the seal (footer
//! written and synced) once a rolled segment's frames are durable.

use super::ops::{Chain, IoData, OpKind};
use super::segment::block_floor;
use super::{pos, Effect, LogCore};
use crate::buffer::AlignedBuf;
use crate::format::{SegmentFooter, FOOTER_REGION};

impl LogCore {
    pub(super) fn poll_data(&mut self) -> Option<Chain> {
        if self.data_io.is_some() {
            return None;
        }
        let flush_target = self.flush_target;
        let s = self.segs.front()?;
        let wants_sync =
            s.durable_end < s.appended_end && (s.rolled || flush_target > pos(s.id, s.durable_end));
        let wants_seal = s.rolled && s.durable_end == s.appended_end;
        // Whole buffers behind the one being filled can be written without waiting.
        let behind = if s.bufs.len() > 1 {
            s.bufs.back().map(|b| b.0).unwrap_or(0)
        } else {
            0
        };
        let wants_behind = behind > s.written_end;
        if !(wants_sync || wants_seal || wants_behind) {
            return None;
        }
        let seg = s.id;
        if !s.header_durable {
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
            return Some(self.chain(kinds, Effect::HeaderDurable { seg }, false));
        }
        if wants_sync {
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
            return Some(self.chain(kinds, Effect::Durable { seg, end }, false));
        }
        if wants_seal {
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
            return Some(self.chain(kinds, Effect::Sealed { seg, footer }, false));
        }
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
