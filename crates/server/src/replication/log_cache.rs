//! The recent-entries cache of a table on the leader cluster.
//!
//! Follower clusters tail each table's log with a long-lived `Log.Replicate` stream, so most
//! reads ask for the few entries applied a moment ago, and every follower asks for the same
//! ones. Reading them from the node-wide Raft log would take the log engine's lock (and
//! possibly the disk) once per follower and batch. Instead the state machine appends every
//! applied batch here, and streams copy ranges out of it: a `Bytes` clone per entry, no
//! decoding, no disk.
//!
//! Invariants:
//! * Entries are applied entries only (appended after the batch is applied, before the applied
//!   position is published), so a reader bounded by the published applied index never sees
//!   an entry that is not applied.
//! * Indices are contiguous and strictly increasing; an append that does not follow the last
//!   entry (a snapshot was installed, the log was reset) empties the cache first.
//! * At most `max_entries` entries and `max_bytes` bytes (payload plus a fixed per-entry
//!   overhead); the oldest are evicted first.
//!
//! A read is served only when its first index is in the cache; otherwise the caller reads the
//! Raft log (`groups::log::GroupLog`) and comes back here for the following batches.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use armada_storage::LogIndex;
use bytes::Bytes;
use openraft::EntryPayload;

use crate::groups::types::Entry;

/// Byte cap of one table's cache, whatever `replication.log-cache-size` allows: 4096 entries of
/// large values could otherwise hold gigabytes.
pub const LOG_CACHE_BYTES_PER_TABLE: usize = 64 * 1024 * 1024;

/// What an entry costs besides its payload (index, enum, deque slot, `Bytes` header).
const ENTRY_OVERHEAD_BYTES: usize = 64;

/// The replicated form of a log entry's payload.
#[derive(Clone, Debug, PartialEq)]
pub enum CachedCommand {
    /// An encoded `mvcc.v1.Command`, exactly as proposed and applied.
    Command(Bytes),
    /// A Raft-internal entry (leader blank, membership): shipped as `DUMMY` so that indices
    /// stay contiguous on the follower.
    Dummy,
}

#[derive(Clone, Debug, PartialEq)]
pub struct CachedEntry {
    pub index: LogIndex,
    pub command: CachedCommand,
}

impl CachedEntry {
    /// The replicated form of a Raft log entry (a cheap `Bytes` clone of its payload).
    pub fn of(entry: &Entry) -> CachedEntry {
        let command = match &entry.payload {
            EntryPayload::Normal(request) => CachedCommand::Command(request.0.clone()),
            EntryPayload::Blank | EntryPayload::Membership(_) => CachedCommand::Dummy,
        };
        CachedEntry {
            index: LogIndex(entry.log_id.index),
            command,
        }
    }

    /// Payload bytes, what a message of entries is sized by.
    pub fn payload_bytes(&self) -> usize {
        match &self.command {
            CachedCommand::Command(bytes) => bytes.len(),
            CachedCommand::Dummy => 0,
        }
    }

    fn cost_bytes(&self) -> usize {
        ENTRY_OVERHEAD_BYTES + self.payload_bytes()
    }
}

/// The bounded ring itself; single-threaded, see [`LogCache`] for the shared handle.
#[derive(Debug)]
pub struct RecentEntries {
    entries: VecDeque<CachedEntry>,
    bytes: usize,
    max_entries: usize,
    max_bytes: usize,
}

impl RecentEntries {
    pub fn new(max_entries: usize, max_bytes: usize) -> RecentEntries {
        RecentEntries {
            entries: VecDeque::new(),
            bytes: 0,
            max_entries,
            max_bytes,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn first_index(&self) -> Option<LogIndex> {
        self.entries.front().map(|entry| entry.index)
    }

    pub fn last_index(&self) -> Option<LogIndex> {
        self.entries.back().map(|entry| entry.index)
    }

    /// Appends the next applied entry, evicting the oldest beyond the bounds. An entry that
    /// does not directly follow the last one starts the cache afresh.
    pub fn append(&mut self, entry: CachedEntry) {
        if let Some(last) = self.last_index()
            && entry.index.get() != last.get() + 1
        {
            self.entries.clear();
            self.bytes = 0;
        }
        self.bytes += entry.cost_bytes();
        self.entries.push_back(entry);
        while self.entries.len() > self.max_entries || self.bytes > self.max_bytes {
            let Some(evicted) = self.entries.pop_front() else {
                break;
            };
            self.bytes -= evicted.cost_bytes();
        }
        assert!(self.entries.len() <= self.max_entries && self.bytes <= self.max_bytes);
    }

    /// Entries `[start, end)` from `start` on, as many as are cached and fit in `max_bytes`
    /// of payload (always at least one), or `None` when `start` is not cached.
    pub fn read(
        &self,
        start: LogIndex,
        end: LogIndex,
        max_bytes: usize,
    ) -> Option<Vec<CachedEntry>> {
        let first = self.first_index()?;
        let last = self.last_index()?;
        if start < first || start > last || start >= end {
            return None;
        }
        let offset = usize::try_from(start.get() - first.get()).ok()?;
        let wanted = usize::try_from(end.get() - start.get()).unwrap_or(usize::MAX);
        let mut out = Vec::new();
        let mut bytes = 0;
        for entry in self.entries.range(offset..).take(wanted) {
            bytes += entry.payload_bytes();
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(entry.clone());
        }
        assert_eq!(out.first().map(|entry| entry.index), Some(start));
        Some(out)
    }
}

/// A table's cache, shared by its state machine (writer) and the replication streams
/// (readers). Each call holds the lock only to copy a few `Bytes` handles, never across an
/// await. Disabled (every read misses, appends are dropped) when built with 0 entries.
#[derive(Clone, Debug, Default)]
pub struct LogCache {
    ring: Option<Arc<Mutex<RecentEntries>>>,
}

impl LogCache {
    /// A cache of at most `max_entries` entries and [`LOG_CACHE_BYTES_PER_TABLE`] bytes.
    pub fn new(max_entries: usize) -> LogCache {
        LogCache::with_limits(max_entries, LOG_CACHE_BYTES_PER_TABLE)
    }

    pub fn with_limits(max_entries: usize, max_bytes: usize) -> LogCache {
        if max_entries == 0 || max_bytes == 0 {
            return LogCache::default();
        }
        LogCache {
            ring: Some(Arc::new(Mutex::new(RecentEntries::new(
                max_entries,
                max_bytes,
            )))),
        }
    }

    /// Appends an applied batch. Call only after the batch is applied and before its position
    /// is published.
    pub fn append(&self, entries: impl IntoIterator<Item = CachedEntry>) {
        let Some(ring) = &self.ring else { return };
        let mut ring = crate::fail_stop::lock(ring, "the replication log cache");
        for entry in entries {
            ring.append(entry);
        }
    }

    /// See [`RecentEntries::read`].
    pub fn read(
        &self,
        start: LogIndex,
        end: LogIndex,
        max_bytes: usize,
    ) -> Option<Vec<CachedEntry>> {
        let ring = self.ring.as_ref()?;
        crate::fail_stop::lock(ring, "the replication log cache").read(start, end, max_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(index: u64, payload_bytes: usize) -> CachedEntry {
        CachedEntry {
            index: LogIndex(index),
            command: CachedCommand::Command(Bytes::from(vec![index as u8; payload_bytes])),
        }
    }

    fn indices(entries: &[CachedEntry]) -> Vec<u64> {
        entries.iter().map(|entry| entry.index.get()).collect()
    }

    #[test]
    fn the_entry_bound_evicts_the_oldest() {
        let mut ring = RecentEntries::new(3, usize::MAX);
        for index in 1..=5 {
            ring.append(command(index, 10));
        }
        assert_eq!(ring.len(), 3);
        assert_eq!(ring.first_index(), Some(LogIndex(3)));
        assert_eq!(ring.last_index(), Some(LogIndex(5)));
        assert_eq!(ring.bytes(), 3 * (ENTRY_OVERHEAD_BYTES + 10));
    }

    #[test]
    fn the_byte_bound_evicts_the_oldest() {
        let entry_cost = ENTRY_OVERHEAD_BYTES + 100;
        let mut ring = RecentEntries::new(1000, 2 * entry_cost + 1);
        for index in 1..=4 {
            ring.append(command(index, 100));
            assert!(ring.bytes() <= 2 * entry_cost + 1);
        }
        assert_eq!(ring.first_index(), Some(LogIndex(3)));
        // An entry bigger than the whole cache leaves it empty rather than over its bound.
        ring.append(command(5, 10_000));
        assert!(ring.is_empty());
        assert_eq!(ring.bytes(), 0);
        ring.append(command(6, 1));
        assert_eq!(ring.first_index(), Some(LogIndex(6)), "starts afresh");
    }

    #[test]
    fn a_gap_or_a_step_back_starts_afresh() {
        let mut ring = RecentEntries::new(10, usize::MAX);
        for index in 1..=3 {
            ring.append(command(index, 1));
        }
        ring.append(command(10, 1));
        assert_eq!(ring.first_index(), Some(LogIndex(10)));
        assert_eq!(ring.len(), 1);
        ring.append(command(4, 1));
        assert_eq!(ring.first_index(), Some(LogIndex(4)));
        assert_eq!(ring.len(), 1);
        assert_eq!(ring.bytes(), ENTRY_OVERHEAD_BYTES + 1);
    }

    #[test]
    fn reads_are_contiguous_from_the_start_asked_for() {
        let mut ring = RecentEntries::new(10, usize::MAX);
        ring.append(CachedEntry {
            index: LogIndex(5),
            command: CachedCommand::Dummy,
        });
        for index in 6..=9 {
            ring.append(command(index, 1));
        }
        let all = ring
            .read(LogIndex(5), LogIndex(100), usize::MAX)
            .expect("hit");
        assert_eq!(indices(&all), [5, 6, 7, 8, 9]);
        assert_eq!(all[0].command, CachedCommand::Dummy);
        let middle = ring
            .read(LogIndex(6), LogIndex(8), usize::MAX)
            .expect("hit");
        assert_eq!(indices(&middle), [6, 7], "end is exclusive");
        assert!(
            ring.read(LogIndex(4), LogIndex(8), usize::MAX).is_none(),
            "before"
        );
        assert!(
            ring.read(LogIndex(10), LogIndex(12), usize::MAX).is_none(),
            "after"
        );
        assert!(
            ring.read(LogIndex(7), LogIndex(7), usize::MAX).is_none(),
            "empty"
        );
    }

    #[test]
    fn reads_stop_at_the_byte_limit_but_return_at_least_one_entry() {
        let mut ring = RecentEntries::new(10, usize::MAX);
        for index in 1..=5 {
            ring.append(command(index, 100));
        }
        let read = ring.read(LogIndex(1), LogIndex(6), 250).expect("hit");
        assert_eq!(indices(&read), [1, 2]);
        let read = ring.read(LogIndex(3), LogIndex(6), 10).expect("hit");
        assert_eq!(indices(&read), [3], "one entry even above the limit");
    }

    proptest::proptest! {
        /// Against a model (every entry appended since the last restart): the bounds hold,
        /// the cache is the model's newest suffix, and reads are the model's slices.
        #[test]
        fn the_ring_is_the_newest_contiguous_suffix(
            steps in proptest::collection::vec((0u64..4, 0usize..300, 0u64..12, 1u64..8), 1..200),
            max_entries in 1usize..12,
            max_bytes in 64usize..1200,
        ) {
            let mut ring = RecentEntries::new(max_entries, max_bytes);
            let mut model: Vec<CachedEntry> = Vec::new();
            let mut next = 1;
            for (jump, payload_bytes, read_offset, read_len) in steps {
                // Mostly the next index; sometimes a gap (snapshot) or a step back.
                next = match jump {
                    0 => next + 5,
                    1 if next > 3 => next - 3,
                    _ => next,
                };
                if model.last().is_some_and(|last| last.index.get() + 1 != next) {
                    model.clear();
                }
                let entry = command(next, payload_bytes);
                model.push(entry.clone());
                ring.append(entry);
                next += 1;

                proptest::prop_assert!(ring.len() <= max_entries);
                proptest::prop_assert!(ring.bytes() <= max_bytes);
                let kept = &model[model.len() - ring.len()..];
                let cached = ring.read(
                    ring.first_index().unwrap_or_default(), LogIndex(u64::MAX), usize::MAX,
                );
                proptest::prop_assert_eq!(cached.as_deref().unwrap_or_default(), kept);
                if let Some(first) = ring.first_index() {
                    let start = LogIndex(first.get() + read_offset);
                    let end = LogIndex(start.get() + read_len);
                    match ring.read(start, end, usize::MAX) {
                        Some(read) => {
                            let offset = (start.get() - first.get()) as usize;
                            let wanted = kept.iter().skip(offset).take(read_len as usize);
                            proptest::prop_assert!(read.iter().eq(wanted));
                        }
                        None => proptest::prop_assert!(start > ring.last_index().unwrap_or_default()),
                    }
                }
            }
        }
    }

    #[test]
    fn a_disabled_cache_misses_and_drops_appends() {
        let cache = LogCache::new(0);
        cache.append([command(1, 1)]);
        assert!(cache.read(LogIndex(1), LogIndex(2), usize::MAX).is_none());
        let cache = LogCache::with_limits(2, usize::MAX);
        cache.append((1..=3).map(|index| command(index, 1)));
        let read = cache
            .read(LogIndex(2), LogIndex(10), usize::MAX)
            .expect("hit");
        assert_eq!(indices(&read), [2, 3]);
    }
}
