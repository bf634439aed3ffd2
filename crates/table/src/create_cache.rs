//! The create-revision cache: which revision created the live version of a recently written key.
//!
//! A put must store the key's create revision, so without this cache every put reads the key's
//! latest record first (a memtable or table lookup, the most expensive step of a small put).
//! The cache answers that lookup for keys written recently.
//!
//! # Invariant
//!
//! An entry `key → r` is present only while the committed latest record of `key` in the same
//! generation exists and has create revision `r`. Absence says nothing (the caller reads the
//! record). It holds because:
//! * the cache belongs to one [`Generation`](crate::generation::Generation); a snapshot install or a
//!   load commit switches to a new generation, which starts with an empty cache;
//! * only `Table::apply` writes the current generation's latest keyspace (under the apply lock),
//!   and it records each key it wrote — its new create revision, or removal for a delete —
//!   after the write batch committed; a failed commit clears the cache.
//!
//! # Bound
//!
//! At most [`CREATE_CACHE_BYTES`] per generation, counting each entry as its key's length plus
//! [`ENTRY_OVERHEAD_BYTES`]. When a new key does not fit, the cache is emptied and refills with
//! the keys written next: no per-entry bookkeeping on the hot path, and a write set larger than
//! the budget costs only the lookups it would have cost without the cache.

use armada_storage::Revision;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Mutex;

/// Memory budget of one generation's cache.
pub const CREATE_CACHE_BYTES: usize = 4 * 1024 * 1024;

/// Bytes counted per entry beyond its key: the `Bytes` handle, the revision, the map's slot and
/// the key's allocation header.
pub const ENTRY_OVERHEAD_BYTES: usize = 64;

pub(crate) struct CreateRevisions {
    budget: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    map: HashMap<Bytes, Revision>,
    bytes: usize,
}

impl CreateRevisions {
    pub fn new(budget: usize) -> Self {
        CreateRevisions {
            budget,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The map holds no invariant a panicking holder could break halfway: recover it.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The create revision of `key`'s live version, if cached.
    pub fn get(&self, key: &[u8]) -> Option<Revision> {
        self.lock().map.get(key).copied()
    }

    /// Records the outcome of a committed batch: `Some(create revision)` for a key written,
    /// `None` for a key deleted.
    pub fn record<'a>(&self, writes: impl IntoIterator<Item = (&'a Bytes, Option<Revision>)>) {
        let mut inner = self.lock();
        for (key, create_revision) in writes {
            let cost = key.len() + ENTRY_OVERHEAD_BYTES;
            match create_revision {
                Some(revision) => {
                    if let Some(cached) = inner.map.get_mut(key.as_ref()) {
                        *cached = revision;
                        continue;
                    }
                    if cost > self.budget {
                        continue;
                    }
                    if inner.bytes + cost > self.budget {
                        inner.map.clear();
                        inner.bytes = 0;
                    }
                    // A key slice of a larger buffer (a decoded request) would pin that buffer.
                    inner.map.insert(Bytes::copy_from_slice(key), revision);
                    inner.bytes += cost;
                }
                None => {
                    if inner.map.remove(key.as_ref()).is_some() {
                        inner.bytes -= cost;
                    }
                }
            }
        }
    }

    /// Forgets everything (after a failed commit, whose effect on storage is unknown).
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.map.clear();
        inner.bytes = 0;
    }

    #[cfg(test)]
    fn len_and_bytes(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.map.len(), inner.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> Bytes {
        Bytes::copy_from_slice(name.as_bytes())
    }

    #[test]
    fn records_writes_and_deletes() {
        let cache = CreateRevisions::new(CREATE_CACHE_BYTES);
        let (a, b) = (key("a"), key("b"));
        cache.record([(&a, Some(Revision(2))), (&b, Some(Revision(3)))]);
        assert_eq!(cache.get(b"a"), Some(Revision(2)));
        assert_eq!(cache.get(b"b"), Some(Revision(3)));
        // A re-created key replaces its revision; a deleted one is gone.
        cache.record([(&a, Some(Revision(7))), (&b, None)]);
        assert_eq!(cache.get(b"a"), Some(Revision(7)));
        assert_eq!(cache.get(b"b"), None);
        assert_eq!(cache.len_and_bytes(), (1, 1 + ENTRY_OVERHEAD_BYTES));
        // Deleting an uncached key changes nothing.
        cache.record([(&b, None)]);
        assert_eq!(cache.len_and_bytes(), (1, 1 + ENTRY_OVERHEAD_BYTES));
        cache.clear();
        assert_eq!(cache.get(b"a"), None);
        assert_eq!(cache.len_and_bytes(), (0, 0));
    }

    #[test]
    fn stays_within_its_budget_at_the_edge() {
        let entry = 1 + ENTRY_OVERHEAD_BYTES;
        let cache = CreateRevisions::new(3 * entry);
        let keys: Vec<Bytes> = ["a", "b", "c", "d"].into_iter().map(key).collect();
        for (i, k) in keys.iter().take(3).enumerate() {
            cache.record([(k, Some(Revision(i as u64 + 1)))]);
        }
        // Exactly at the budget: all three kept.
        assert_eq!(cache.len_and_bytes(), (3, 3 * entry));
        // Updating a cached key costs nothing more.
        cache.record([(&keys[0], Some(Revision(9)))]);
        assert_eq!(cache.len_and_bytes(), (3, 3 * entry));
        // One more key does not fit: the cache empties and keeps the newcomer.
        cache.record([(&keys[3], Some(Revision(4)))]);
        assert_eq!(cache.len_and_bytes(), (1, entry));
        assert_eq!(cache.get(b"d"), Some(Revision(4)));
        assert_eq!(cache.get(b"a"), None);
        // A key larger than the whole budget is never cached.
        let huge = Bytes::from(vec![b'x'; 3 * entry]);
        cache.record([(&huge, Some(Revision(5)))]);
        assert_eq!(cache.get(&huge), None);
        assert_eq!(cache.len_and_bytes(), (1, entry));
    }
}
