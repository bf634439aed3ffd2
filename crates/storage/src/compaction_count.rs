//! Compactions counted per keyspace, so that each table can report its own.
//!
//! fjall counts finished compactions per database only. It does call a keyspace's compaction
//! filter factory once at the start of every merge compaction of that keyspace (moves of whole
//! tables between levels rewrite nothing and are not counted), so every keyspace gets a factory
//! that counts those calls and a filter that keeps every item unchanged. The counts live for the
//! process (they restart at 0 with it, as Prometheus counters may) and outlive dropped keyspaces,
//! so the sum over a table's keyspaces never goes down when a snapshot install replaces a
//! generation.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use fjall::compaction::filter::{
    CompactionFilter, CompactionFilterResult, Context, Factory, ItemAccessor, Verdict,
};

/// Compactions started per keyspace name since the database was opened.
#[derive(Debug, Default)]
pub(crate) struct CompactionCounts {
    by_keyspace: Mutex<BTreeMap<String, Arc<AtomicU64>>>,
}

impl CompactionCounts {
    /// The counting factory of keyspace `name` (fjall asks once per keyspace it opens).
    pub fn factory(&self, name: &str) -> Arc<dyn Factory> {
        Arc::new(CountingFactory {
            started: self.counter(name),
        })
    }

    /// Compactions of every keyspace whose name starts with `prefix`.
    pub fn with_prefix(&self, prefix: &str) -> u64 {
        let counts = self.lock();
        counts
            .range(prefix.to_string()..)
            .take_while(|(name, _)| name.starts_with(prefix))
            .map(|(_, count)| count.load(Ordering::Relaxed))
            .sum()
    }

    fn counter(&self, name: &str) -> Arc<AtomicU64> {
        self.lock().entry(name.to_string()).or_default().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<AtomicU64>>> {
        // Only counters are behind it: a panic elsewhere cannot leave them inconsistent.
        self.by_keyspace
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

struct CountingFactory {
    started: Arc<AtomicU64>,
}

impl Factory for CountingFactory {
    fn name(&self) -> &str {
        "armada-compaction-count"
    }

    fn make_filter(&self, _: &Context) -> Box<dyn CompactionFilter> {
        self.started.fetch_add(1, Ordering::Relaxed);
        Box::new(KeepEverything)
    }
}

/// Changes nothing: the filter exists only to be counted.
struct KeepEverything;

impl CompactionFilter for KeepEverything {
    fn filter_item(&mut self, _: ItemAccessor<'_>, _: &Context) -> CompactionFilterResult {
        Ok(Verdict::Keep)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_summed_by_name_prefix_only() {
        // fjall's filter context cannot be built here: count as the factory does.
        let counts = CompactionCounts::default();
        for name in [
            "t1.meta",
            "t1.g0.latest",
            "t10.meta",
            "t2.g1.history",
            "t1.g0.latest",
        ] {
            counts.counter(name).fetch_add(1, Ordering::Relaxed);
        }
        assert_eq!(counts.with_prefix("t1."), 3);
        assert_eq!(counts.with_prefix("t10."), 1);
        assert_eq!(counts.with_prefix("t3."), 0);
    }
}
