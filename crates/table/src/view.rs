//! [`ReadView`]: a consistent point-in-time view of a table (a fjall snapshot across the
//! table's keyspaces plus the applied position it observed).
//!
//! A view never changes: every read through it (a whole chunked IterateRange, a snapshot
//! transfer, a dump) sees the same state. Views hold the generation they were opened on, so a
//! concurrent snapshot installation does not disturb them. Keep views short-lived: an open
//! snapshot keeps old versions from being dropped by LSM compaction.

use crate::apply::compares_hold;
use crate::error::{Result, TableError};
use crate::generation::Generation;
use crate::load::Staging;
use crate::position::AppliedPosition;
use crate::read::{HistoryReader, Reader};
use crate::response_budget::ResponseBudget;
use crate::{OpOutcome, RangeOutcome, RangeQuery, Txn, TxnOp, TxnOutcome, dump, snapshot};
use armada_storage::Revision;
use armada_storage::fjall::{Readable, Snapshot};
use sha2::{Digest, Sha256};
use std::sync::Arc;

struct ViewInner {
    snapshot: Snapshot,
    generation: Arc<Generation>,
    position: AppliedPosition,
    compact_revision: Revision,
    staging: Option<Staging>,
}

/// A point-in-time read view. Cheap to clone; `Send + Sync + 'static`.
#[derive(Clone)]
pub struct ReadView {
    inner: Arc<ViewInner>,
}

impl ReadView {
    pub(crate) fn new(
        snapshot: Snapshot,
        generation: Arc<Generation>,
        position: AppliedPosition,
        compact_revision: Revision,
        staging: Option<Staging>,
    ) -> ReadView {
        ReadView {
            inner: Arc::new(ViewInner {
                snapshot,
                generation,
                position,
                compact_revision,
                staging,
            }),
        }
    }

    /// What this view observed.
    pub fn position(&self) -> &AppliedPosition {
        &self.inner.position
    }

    /// Oldest revision that can still be read with `at_revision`.
    pub fn compact_revision(&self) -> Revision {
        self.inner.compact_revision
    }

    fn reader(&self) -> Reader<'_> {
        Reader::new(&self.inner.snapshot, &self.inner.generation, None)
    }

    pub fn range(&self, query: &RangeQuery) -> Result<RangeOutcome> {
        self.range_after(query, None)
    }

    /// As [`ReadView::range`], but only keys strictly after `after` (resume a chunked read:
    /// pass the last key of the previous chunk, loop until `more == false`).
    pub fn range_after(&self, query: &RangeQuery, after: Option<&[u8]>) -> Result<RangeOutcome> {
        match query.at_revision {
            None | Some(Revision(0)) => self.reader().range(query, after),
            Some(revision) => {
                if revision < self.inner.compact_revision {
                    return Err(TableError::Compacted {
                        compact_revision: self.inner.compact_revision,
                    });
                }
                if revision > self.inner.position.revision {
                    return Err(TableError::FutureRevision {
                        requested: revision,
                        current: self.inner.position.revision,
                    });
                }
                let history = HistoryReader {
                    snapshot: &self.inner.snapshot,
                    generation: &self.inner.generation,
                    revision,
                };
                history.range(query, after)
            }
        }
    }

    /// Evaluates a txn whose ops are all ranges on this view (not logged).
    pub fn txn_read_only(&self, txn: &Txn) -> Result<TxnOutcome> {
        let reader = self.reader();
        let succeeded = compares_hold(&reader, &txn.compares)?;
        let ops = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        let mut responses = Vec::with_capacity(ops.len());
        let mut budget = ResponseBudget::for_ops(ops.len());
        for op in ops {
            let TxnOp::Range(query) = op else {
                return Err(TableError::InvalidArgument(
                    "read-only txn with a write op".into(),
                ));
            };
            responses.push(OpOutcome::Range(budget.range(&reader, query)?));
        }
        Ok(TxnOutcome {
            succeeded,
            responses,
        })
    }

    /// Streams the internal snapshot format (see `docs/format.md`) to `out`.
    pub fn write_snapshot(&self, out: &mut dyn std::io::Write) -> Result<()> {
        snapshot::write(
            &self.inner.snapshot,
            &self.inner.generation,
            &self.inner.position,
            self.inner.compact_revision,
            self.inner.staging.as_ref(),
            out,
        )
    }

    /// Writes the Regatta-compatible dump (see `docs/format.md`) to `out`.
    pub fn write_dump(
        &self,
        table_name: &[u8],
        final_leader_index: Option<u64>,
        out: &mut dyn std::io::Write,
    ) -> Result<()> {
        dump::write(
            &self.inner.snapshot,
            &self.inner.generation,
            table_name,
            final_leader_index,
            out,
        )
    }

    /// SHA-256 (hex) over every live key in key order: `[u32 LE key len][key][u32 LE record
    /// len][create_revision u64 BE][mod_revision u64 BE][value]`.
    pub fn content_hash(&self) -> Result<String> {
        let mut hasher = Sha256::new();
        for guard in self.inner.snapshot.iter(&self.inner.generation.latest) {
            let (key, record) = guard.into_inner()?;
            for part in [&key, &record] {
                let length = u32::try_from(part.len())
                    .map_err(|_| TableError::Corrupt("record over 4 GiB".into()))?;
                hasher.update(length.to_le_bytes());
                hasher.update(part.as_ref());
            }
        }
        let digest = hasher.finalize();
        Ok(digest.iter().map(|byte| format!("{byte:02x}")).collect())
    }
}
