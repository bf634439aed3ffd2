//! Reading a table state: point lookups and ordered scans of the latest keyspace (merged with
//! the pending writes of an apply, the *overlay*), reads at a past revision from history, and
//! the range collector shared by Range, IterateRange, txn range ops and DeleteRange pre-reads.
//!
//! Invariant: scans yield keys in strictly ascending order; an overlay entry shadows the stored
//! key (`None` = deleted by a pending write).

use crate::error::{Result, TableError};
use crate::generation::Generation;
use crate::{RangeEnd, RangeOutcome, RangeQuery, pb};
use armada_storage::Revision;
use armada_storage::fjall::{Readable, Snapshot};
use armada_storage::mvcc::{self, HistoryVersion, LATEST_HEADER_BYTES};
use bytes::Bytes;
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::ops::{Bound, ControlFlow};

/// A live key as stored in the latest keyspace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Latest {
    pub create_revision: Revision,
    pub mod_revision: Revision,
    pub value: Bytes,
}

impl Latest {
    pub fn decode(record: Bytes) -> Result<Latest> {
        let (create_revision, mod_revision) = mvcc::decode_latest_header(&record)?;
        Ok(Latest {
            create_revision,
            mod_revision,
            value: record.slice(LATEST_HEADER_BYTES..),
        })
    }

    pub fn to_key_value(&self, key: Bytes) -> pb::KeyValue {
        pb::KeyValue {
            key,
            create_revision: revision_to_wire(self.create_revision),
            mod_revision: revision_to_wire(self.mod_revision),
            value: self.value.clone(),
        }
    }
}

/// Revisions are `int64` on the wire; ours stay far below `i64::MAX` (log indices).
pub(crate) fn revision_to_wire(revision: Revision) -> i64 {
    i64::try_from(revision.get()).unwrap_or(i64::MAX)
}

/// Pending writes of an apply call, by user key.
pub(crate) type Overlay = BTreeMap<Bytes, Option<Latest>>;

static NO_OVERLAY: Overlay = BTreeMap::new();

/// Key bounds of a scan in user-key space.
pub(crate) type KeyBounds = (Bound<Bytes>, Bound<Bytes>);

/// The bounds of a non-single range starting at `key` (or strictly after `after`), `None` when
/// the range is empty.
pub(crate) fn scan_bounds(
    key: &Bytes,
    range_end: &RangeEnd,
    after: Option<&[u8]>,
) -> Option<KeyBounds> {
    let start = match after {
        Some(after) if after >= key.as_ref() => Bound::Excluded(Bytes::copy_from_slice(after)),
        _ => Bound::Included(key.clone()),
    };
    let end = match range_end {
        RangeEnd::Single => Bound::Included(key.clone()),
        RangeEnd::To(end) => Bound::Excluded(end.clone()),
        RangeEnd::Unbounded => Bound::Unbounded,
    };
    let empty = match (&start, &end) {
        (_, Bound::Unbounded) => false,
        (Bound::Included(s), Bound::Included(e)) => s > e,
        (Bound::Included(s), Bound::Excluded(e)) | (Bound::Excluded(s), Bound::Included(e)) => {
            s >= e
        }
        (Bound::Excluded(s), Bound::Excluded(e)) => s >= e,
        (Bound::Unbounded, _) => false,
    };
    (!empty).then_some((start, end))
}

fn as_slices(bounds: &KeyBounds) -> (Bound<&[u8]>, Bound<&[u8]>) {
    (bound_slice(&bounds.0), bound_slice(&bounds.1))
}

fn bound_slice(bound: &Bound<Bytes>) -> Bound<&[u8]> {
    match bound {
        Bound::Included(key) => Bound::Included(key.as_ref()),
        Bound::Excluded(key) => Bound::Excluded(key.as_ref()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// The latest state of a table: stored data seen through a snapshot, plus pending writes.
pub(crate) struct Reader<'a> {
    pub snapshot: &'a Snapshot,
    pub generation: &'a Generation,
    pub overlay: &'a Overlay,
}

impl<'a> Reader<'a> {
    pub fn new(
        snapshot: &'a Snapshot,
        generation: &'a Generation,
        overlay: Option<&'a Overlay>,
    ) -> Self {
        Reader {
            snapshot,
            generation,
            overlay: overlay.unwrap_or(&NO_OVERLAY),
        }
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Latest>> {
        if let Some(pending) = self.overlay.get(key) {
            return Ok(pending.clone());
        }
        match self.snapshot.get(&self.generation.latest, key)? {
            Some(record) => Ok(Some(Latest::decode(Bytes::from(record))?)),
            None => Ok(None),
        }
    }

    /// Visits live keys within `bounds` in ascending order until `visit` breaks.
    pub fn scan(
        &self,
        bounds: &KeyBounds,
        mut visit: impl FnMut(Bytes, Latest) -> ControlFlow<()>,
    ) -> Result<()> {
        let mut stored = self
            .snapshot
            .range::<&[u8], _>(&self.generation.latest, as_slices(bounds));
        let mut next_stored = || -> Result<Option<(Bytes, Bytes)>> {
            match stored.next() {
                None => Ok(None),
                Some(guard) => {
                    let (key, value) = guard.into_inner()?;
                    Ok(Some((Bytes::from(key), Bytes::from(value))))
                }
            }
        };
        let mut pending = self.overlay.range::<[u8], _>(as_slices(bounds));
        let mut stored_item = next_stored()?;
        let mut pending_item = pending.next();
        loop {
            let order = match (&stored_item, &pending_item) {
                (None, None) => return Ok(()),
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some((stored_key, _)), Some((pending_key, _))) => stored_key.cmp(pending_key),
            };
            let item = match order {
                Ordering::Less => {
                    let (key, record) = stored_item.take().expect("compared above");
                    stored_item = next_stored()?;
                    Some((key, Latest::decode(record)?))
                }
                Ordering::Greater | Ordering::Equal => {
                    if order == Ordering::Equal {
                        stored_item = next_stored()?;
                    }
                    let (key, latest) = pending_item.take().expect("compared above");
                    pending_item = pending.next();
                    latest.clone().map(|latest| (key.clone(), latest))
                }
            };
            if let Some((key, latest)) = item
                && visit(key, latest).is_break()
            {
                return Ok(());
            }
        }
    }

    /// The range read of `query` over the latest state (ignores `at_revision`).
    pub fn range(&self, query: &RangeQuery, after: Option<&[u8]>) -> Result<RangeOutcome> {
        let mut collector = Collector::new(query);
        if query.range_end == RangeEnd::Single {
            if after.is_none_or(|after| after < query.key.as_ref())
                && let Some(latest) = self.get(&query.key)?
            {
                let _ = collector.offer(query.key.clone(), &latest);
            }
        } else if let Some(bounds) = scan_bounds(&query.key, &query.range_end, after) {
            self.scan(&bounds, |key, latest| collector.offer(key, &latest))?;
        }
        Ok(collector.finish())
    }
}

/// Reads of a past revision from the history keyspace.
pub(crate) struct HistoryReader<'a> {
    pub snapshot: &'a Snapshot,
    pub generation: &'a Generation,
    pub revision: Revision,
}

impl HistoryReader<'_> {
    fn version_at(&self, key: &[u8]) -> Result<Option<Latest>> {
        let lower = mvcc::encode_history_key(key, Revision(0));
        let upper = mvcc::encode_history_key(key, self.revision);
        let newest = self
            .snapshot
            .range(
                &self.generation.history,
                lower.as_slice()..=upper.as_slice(),
            )
            .next_back();
        match newest {
            None => Ok(None),
            Some(guard) => {
                let (history_key, record) = guard.into_inner()?;
                let (_, mod_revision) = mvcc::split_history_key(&history_key)?;
                Ok(decode_version(Bytes::from(record), mod_revision)?)
            }
        }
    }

    /// Visits keys live at the revision within `bounds`, in ascending order, until `visit` breaks.
    fn scan(
        &self,
        bounds: &KeyBounds,
        mut visit: impl FnMut(Bytes, Latest) -> ControlFlow<()>,
    ) -> Result<()> {
        let encode = |bound: &Bound<Bytes>, excluded_next: bool| match bound {
            Bound::Included(key) => Bound::Included(mvcc::encode_key(key)),
            // Strictly after `key`: the smallest key above it is `key ‖ 00`.
            Bound::Excluded(key) if excluded_next => {
                let mut next = key.to_vec();
                next.push(0);
                Bound::Included(mvcc::encode_key(&next))
            }
            Bound::Excluded(key) => Bound::Excluded(mvcc::encode_key(key)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let lower = encode(&bounds.0, true);
        let upper = encode(&bounds.1, false);
        let versions = self.snapshot.range::<&[u8], _>(
            &self.generation.history,
            (vec_bound(&lower), vec_bound(&upper)),
        );
        // The newest version <= revision of the key being grouped.
        let mut current: Option<(Bytes, Option<Latest>)> = None;
        for guard in versions {
            let (history_key, record) = guard.into_inner()?;
            let history_key = Bytes::from(history_key);
            let (encoded, mod_revision) = mvcc::split_history_key(&history_key)?;
            let same_key = current
                .as_ref()
                .is_some_and(|(key, _)| key.as_ref() == encoded);
            if !same_key {
                if let Some((key, Some(latest))) = current.take()
                    && visit(Bytes::from(mvcc::decode_key(&key)?), latest).is_break()
                {
                    return Ok(());
                }
                current = Some((history_key.slice(..encoded.len()), None));
            }
            if mod_revision <= self.revision
                && let Some((_, version)) = current.as_mut()
            {
                *version = decode_version(Bytes::from(record), mod_revision)?;
            }
        }
        if let Some((key, Some(latest))) = current {
            let _ = visit(Bytes::from(mvcc::decode_key(&key)?), latest);
        }
        Ok(())
    }

    pub fn range(&self, query: &RangeQuery, after: Option<&[u8]>) -> Result<RangeOutcome> {
        let mut collector = Collector::new(query);
        if query.range_end == RangeEnd::Single {
            if after.is_none_or(|after| after < query.key.as_ref())
                && let Some(latest) = self.version_at(&query.key)?
            {
                let _ = collector.offer(query.key.clone(), &latest);
            }
        } else if let Some(bounds) = scan_bounds(&query.key, &query.range_end, after) {
            self.scan(&bounds, |key, latest| collector.offer(key, &latest))?;
        }
        Ok(collector.finish())
    }
}

fn vec_bound(bound: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match bound {
        Bound::Included(key) => Bound::Included(key.as_slice()),
        Bound::Excluded(key) => Bound::Excluded(key.as_slice()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

fn decode_version(record: Bytes, mod_revision: Revision) -> Result<Option<Latest>, TableError> {
    Ok(match mvcc::decode_history_version(&record)? {
        HistoryVersion::Tombstone => None,
        HistoryVersion::Put {
            create_revision,
            value,
        } => Some(Latest {
            create_revision,
            mod_revision,
            value: record.slice(value..),
        }),
    })
}

/// Applies filters, limit and size cap to the kvs of a range in key order.
pub(crate) struct Collector<'q> {
    query: &'q RangeQuery,
    outcome: RangeOutcome,
    matched: u64,
    response_bytes: usize,
}

impl<'q> Collector<'q> {
    pub fn new(query: &'q RangeQuery) -> Self {
        Collector {
            query,
            outcome: RangeOutcome::default(),
            matched: 0,
            response_bytes: 0,
        }
    }

    fn passes_filters(&self, latest: &Latest) -> bool {
        let q = self.query;
        let (modified, created) = (latest.mod_revision.get(), latest.create_revision.get());
        (q.min_mod_revision == 0 || modified >= q.min_mod_revision)
            && (q.max_mod_revision == 0 || modified <= q.max_mod_revision)
            && (q.min_create_revision == 0 || created >= q.min_create_revision)
            && (q.max_create_revision == 0 || created <= q.max_create_revision)
    }

    /// Offers the next key in order; breaks when the response is complete.
    pub fn offer(&mut self, key: Bytes, latest: &Latest) -> ControlFlow<()> {
        if !self.passes_filters(latest) {
            return ControlFlow::Continue(());
        }
        let single = self.query.range_end == RangeEnd::Single;
        if !single && self.query.limit > 0 && self.matched == self.query.limit {
            self.outcome.more = true;
            return ControlFlow::Break(());
        }
        if self.query.count_only {
            self.matched += 1;
            self.outcome.count += 1;
            return ControlFlow::Continue(());
        }
        let value_bytes = if self.query.keys_only {
            0
        } else {
            latest.value.len()
        };
        let estimate = self.response_bytes + key.len() + value_bytes;
        if !self.outcome.kvs.is_empty() && estimate >= self.query.max_response_bytes {
            self.outcome.more = true;
            return ControlFlow::Break(());
        }
        let mut kv = latest.to_key_value(key);
        if self.query.keys_only {
            kv.value = Bytes::new();
        }
        let encoded = prost::Message::encoded_len(&kv);
        self.response_bytes += 1 + prost::length_delimiter_len(encoded) + encoded;
        self.outcome.kvs.push(kv);
        self.outcome.count += 1;
        self.matched += 1;
        ControlFlow::Continue(())
    }

    pub fn finish(self) -> RangeOutcome {
        self.outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn inverted_and_empty_ranges_have_no_bounds() {
        assert!(scan_bounds(&b("b"), &RangeEnd::To(b("a")), None).is_none());
        assert!(scan_bounds(&b("b"), &RangeEnd::To(b("b")), None).is_none());
        assert!(scan_bounds(&b("a"), &RangeEnd::To(b("c")), Some(b"c")).is_none());
        assert!(scan_bounds(&b("a"), &RangeEnd::To(b("c")), Some(b"b")).is_some());
        assert!(scan_bounds(&b("a"), &RangeEnd::Unbounded, Some(b"zzz")).is_some());
    }

    #[test]
    fn collector_caps_size_but_returns_one_kv() {
        let mut query = RangeQuery::new(b("a"), RangeEnd::Unbounded);
        query.max_response_bytes = 10;
        let mut collector = Collector::new(&query);
        let latest = Latest {
            create_revision: Revision(1),
            mod_revision: Revision(1),
            value: Bytes::from(vec![0; 20]),
        };
        assert!(collector.offer(b("a"), &latest).is_continue());
        assert!(collector.offer(b("b"), &latest).is_break());
        let outcome = collector.finish();
        assert_eq!(
            (outcome.kvs.len(), outcome.count, outcome.more),
            (1, 1, true)
        );
    }
}
