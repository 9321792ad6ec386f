//! How fast a new segment file is zero-written while the log commits.
//!
//! The disk has a volatile write cache and no FUA: every `fdatasync` sends a cache
//! flush that persists everything written before it, the zeros of a file being
//! prepared included. Measured here (4 KiB `pwrite` + `fdatasync`, another thread
//! zero-writing a new file after each commit, interleaved slices): 8-16 KiB after every
//! commit or 32 KiB after every fourth leave p99 where it is without zeros (173-187 vs
//! 185-242 us), while 256 KiB after every 32nd takes it to 210-593 us. So while the
//! log commits, its next file is zero-written in small pieces paced by the commits:
//! each data sync earns credit for the bytes it made durable times 1.5 times the ratio
//! of bytes left to zero to the room left in the active segment (at least 4 KiB), so
//! the zeros spread evenly over the segment filling up, with a margin, rather than
//! crowding its first commits; a piece goes once 32 KiB of credit is in hand, right
//! after a commit, landing on the next one's flush in a small bite. (Earning 16 KiB
//! plus twice the bytes made durable, as before, zeroed a 16 MiB file within the first
//! sixth of a 16 MiB segment, a 48 KiB piece on every other commit there: W2's p99 read
//! 1.27-1.31x of the raw loop, against 1.16-1.17x spread out, medians of 12 alternating
//! runs.) When the log has not synced for 20 ms, the zeros trickle in (64 KiB a
//! millisecond), so an idle log's preparation never floods the disk under other logs
//! and processes; when an append waits for the file, or zeroing falls behind (more
//! left to zero than the commits filling the room left in the active segment would
//! earn), they go in 1 MiB steps.

use super::LogCore;
use crate::buffer::PREP_CHUNK;
use crate::format::BLOCK;

/// Credit one data sync earns on its own (bytes) when no active segment gives the
/// zeroing a runway to spread over.
const ZERO_PIECE: u64 = 16 << 10;

/// Zeros are spread over the runway this much faster than it fills (3/2): the file is
/// ready with a third of the runway to spare.
const SPREAD_NUM: u128 = 3;
const SPREAD_DEN: u128 = 2;

/// The least credit a data sync earns while a file is zeroed.
const MIN_EARNED: u64 = 4 << 10;

/// A piece goes once this much credit is in hand (so the shard is not woken for
/// every commit of a busy log).
const MIN_PIECE: u64 = 32 << 10;

/// What trickles in per millisecond while the log is quiet (64 MB/s: a 16 MiB file in
/// a quarter of a second, without flooding the disk under other logs).
const TRICKLE_PIECE: u64 = 64 << 10;

/// A log that has not synced for this long is not committing: zeros trickle in.
const QUIET_NS: u64 = 20_000_000;

/// While the log is quiet, one piece per this long.
const TRICKLE_NS: u64 = 1_000_000;

/// The pacing state of a log's zero-writing.
#[derive(Default)]
pub(super) struct ZeroPace {
    /// Bytes of zeros that may be written now.
    credit: u64,
    /// When the last data sync completed (monotonic ns).
    last_sync: Option<u64>,
    /// A zero piece waits for credit (the next commit) or its turn to trickle.
    waiting: bool,
    /// When a waiting piece goes anyway (monotonic ns).
    wake_at: u64,
    /// When the next trickled piece may go (monotonic ns).
    trickle_at: u64,
    /// Bytes the last data sync made durable (0 before the first).
    last_gained: u64,
}

impl LogCore {
    /// A data sync made `gained` bytes durable at monotonic `now`: credit for the next
    /// zero piece.
    pub(super) fn paced_sync(&mut self, gained: u64, now: u64) {
        let earned = match self.zero_need() {
            Some((left, runway)) if runway > 0 => {
                let share = u128::from(gained) * u128::from(left) * SPREAD_NUM
                    / (u128::from(runway) * SPREAD_DEN);
                u64::try_from(share).unwrap_or(u64::MAX).max(MIN_EARNED)
            }
            _ => ZERO_PIECE + 2 * gained,
        }
        .min(PREP_CHUNK as u64);
        let z = &mut self.zero_pace;
        // Earned while a piece waits, not saved up: credit left over from a quiet
        // spell would come out as one big piece on the next commit.
        z.credit = (z.credit + earned).min((earned * 2).max(MIN_PIECE));
        z.last_sync = Some(now);
        z.last_gained = gained;
    }

    /// How many bytes of zeros to write now into a file with `left` bytes still to
    /// zero, or `None` to wait for the next commit's credit.
    pub(super) fn zero_step(&mut self, left: u64, now: u64) -> Option<u64> {
        let full = PREP_CHUNK as u64;
        let step = if self.want.is_some() || self.zeroing_behind(left) {
            full
        } else if self.zero_pace.last_sync.is_none_or(|t| now >= t + QUIET_NS) {
            let z = &mut self.zero_pace;
            if now < z.trickle_at {
                z.waiting = true;
                z.wake_at = z.trickle_at;
                return None;
            }
            z.trickle_at = now + TRICKLE_NS;
            TRICKLE_PIECE
        } else {
            let c = self.zero_pace.credit / BLOCK as u64 * BLOCK as u64;
            if c < MIN_PIECE.min(left) {
                let z = &mut self.zero_pace;
                z.waiting = true;
                z.wake_at = z.last_sync.map_or(now, |t| t + QUIET_NS);
                return None;
            }
            self.zero_pace.credit -= c.min(left);
            c
        };
        self.zero_pace.waiting = false;
        // One write of the shared zero chunk at most.
        Some(step.min(full).min(left))
    }

    /// (bytes left to zero, room left in the active segment) while a file is zeroed.
    fn zero_need(&self) -> Option<(u64, u64)> {
        let p = self.prep?;
        let super::prepare::PrepStep::Zero(off) = p.step else {
            return None;
        };
        Some((p.size - off, self.runway()))
    }

    /// Room left in the active segment (0 once it rolled): what the next file's zeros
    /// are paced over.
    fn runway(&self) -> u64 {
        self.segs
            .back()
            .filter(|s| !s.rolled)
            .map_or(0, |s| s.capacity.saturating_sub(s.appended_end))
    }

    /// More is left to zero than the commits filling the room left in the active
    /// segment would earn, at the size of the last one (twice the room before the
    /// first): the file may not be ready when the segment fills.
    fn zeroing_behind(&self, left: u64) -> bool {
        let runway = self.runway();
        let g = self.zero_pace.last_gained;
        let earns = runway.checked_div(g).map_or(2 * runway, |commits| {
            commits * (ZERO_PIECE + 2 * g).min(PREP_CHUNK as u64)
        });
        left > earns
    }

    /// A zero piece waits for credit, and a commit has just earned it: the host that
    /// prepares files should poll the log now.
    pub fn zeroing_can_go(&self) -> bool {
        self.zero_pace.waiting && self.zero_pace.credit >= MIN_PIECE
    }

    /// When a waiting zero piece goes anyway (the log stopped committing, or its turn
    /// to trickle came).
    pub(super) fn zero_deadline(&self) -> Option<u64> {
        self.zero_pace.waiting.then_some(self.zero_pace.wake_at)
    }
}
