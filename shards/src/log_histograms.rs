//! Latency and batching histograms of one log (`hdrhistogram`), kept in its core under
//! the log's lock: no atomics on the append path. Allocated at the log's first commit,
//! so a log that never commits costs none of their memory.

use hdrhistogram::Histogram;
use std::collections::VecDeque;

/// Appends within this long of a group's first share its time (the resolution of the
/// append-to-durable histogram), so a burst costs one entry, not one per record.
const GROUP_NS: u64 = 20_000;

/// The histograms, as a snapshot for export.
#[derive(Clone, Debug)]
pub struct LogHistograms {
    /// From an append to the completed sync covering it (ns), one count per record.
    pub append_to_durable_ns: Histogram<u64>,
    /// Exact sum of `append_to_durable_ns` (ns).
    pub append_to_durable_sum_ns: u64,
    /// Data commits (write + `fdatasync`), start to completion (ns).
    pub sync_ns: Histogram<u64>,
    /// Exact sum of `sync_ns` (ns).
    pub sync_sum_ns: u64,
    /// Records each data commit made durable.
    pub records_per_sync: Histogram<u64>,
    /// Exact sum of `records_per_sync`.
    pub records_per_sync_sum: u64,
}

impl LogHistograms {
    fn new() -> LogHistograms {
        // One significant digit (values within 10%), up to 100 s: about 4 KiB each, so
        // a log's three cost about 12 KiB.
        let h = || Histogram::new_with_bounds(1, 100_000_000_000, 1).expect("histogram bounds");
        LogHistograms {
            append_to_durable_ns: h(),
            append_to_durable_sum_ns: 0,
            sync_ns: h(),
            sync_sum_ns: 0,
            records_per_sync: Histogram::new_with_bounds(1, 1 << 32, 1).expect("histogram bounds"),
            records_per_sync_sum: 0,
        }
    }
}

/// What a log's core keeps to fill the histograms.
#[derive(Default)]
pub(crate) struct HistogramState {
    hist: Option<Box<LogHistograms>>,
    /// Groups of appends not yet durable: (records appended through the group, the
    /// group's first append time in ns since the epoch).
    groups: VecDeque<(u64, u64)>,
    /// Records already counted as durable.
    counted: u64,
}

impl HistogramState {
    /// For a log that holds `records` records already (all durable).
    pub(crate) fn starting_at(records: u64) -> HistogramState {
        HistogramState {
            counted: records,
            ..HistogramState::default()
        }
    }

    /// Records appended so far are `records_total`, the newest at `ts` (ns since the
    /// epoch).
    pub(crate) fn appended(&mut self, records_total: u64, ts: u64) {
        match self.groups.back_mut() {
            Some((through, first)) if ts.saturating_sub(*first) < GROUP_NS => {
                *through = records_total
            }
            _ => self.groups.push_back((records_total, ts)),
        }
    }

    /// A data commit that started at monotonic `started` finished at monotonic
    /// `done` (wall clock `now`): records through `records` are durable.
    pub(crate) fn synced(&mut self, records: u64, started: u64, done: u64, now: u64) {
        let h = self
            .hist
            .get_or_insert_with(|| Box::new(LogHistograms::new()));
        let took = done.saturating_sub(started).max(1);
        h.sync_ns.saturating_record(took);
        h.sync_sum_ns += took;
        let n = records.saturating_sub(self.counted);
        if n > 0 {
            h.records_per_sync.saturating_record(n);
            h.records_per_sync_sum += n;
        }
        while let Some(&(through, first)) = self.groups.front() {
            let covered = through.min(records);
            let count = covered.saturating_sub(self.counted);
            if count > 0 {
                let lat = now.saturating_sub(first).max(1);
                h.append_to_durable_ns.saturating_record_n(lat, count);
                h.append_to_durable_sum_ns += lat * count;
                self.counted = covered;
            }
            if through > records {
                break;
            }
            self.groups.pop_front();
        }
        self.counted = self.counted.max(records);
    }

    /// A copy for export (`None` before the first commit).
    pub(crate) fn snapshot(&self) -> Option<LogHistograms> {
        self.hist.as_deref().cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_durable_record_is_counted_once_with_its_group_time() {
        let mut s = HistogramState::default();
        // Three records in one group at t=1000, two more 1 ms later.
        for (n, ts) in [
            (1, 1_000),
            (2, 1_500),
            (3, 2_000),
            (4, 1_001_000),
            (5, 1_002_000),
        ] {
            s.appended(n, ts);
        }
        // The first sync covers four records.
        s.synced(4, 0, 100_000, 2_001_000);
        let h = s.snapshot().unwrap();
        assert_eq!(h.records_per_sync.len(), 1);
        assert_eq!(h.records_per_sync_sum, 4);
        assert_eq!(h.append_to_durable_ns.len(), 4);
        assert_eq!(h.append_to_durable_sum_ns, 3 * 2_000_000 + 1_000_000);
        assert_eq!(h.sync_ns.len(), 1);
        // The second covers the last one.
        s.synced(5, 0, 50_000, 3_001_000);
        let h = s.snapshot().unwrap();
        assert_eq!(h.append_to_durable_ns.len(), 5);
        assert_eq!(h.records_per_sync_sum, 5);
        assert!(s.groups.is_empty());
        // A sync with nothing new adds a sync, no records.
        s.synced(5, 0, 10, 4_000_000);
        let h = s.snapshot().unwrap();
        assert_eq!((h.sync_ns.len(), h.records_per_sync.len()), (3, 2));
    }
}
