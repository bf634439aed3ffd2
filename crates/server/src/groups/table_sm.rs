//! A table group's state machine: openraft's `RaftStateMachine` over [`armada_table::Table`].
//!
//! openraft hands entries in batches. Each entry's `mvcc.v1.Command` bytes are decoded and
//! validated once, into the table's typed [`Command`] ([`Command::decode`]); an entry that does
//! not validate is applied as a blank one (the position advances) and answers its rejection.
//! The entries are then applied by [`Table::apply`] in one storage write batch together with
//! the applied position (the Raft log id and membership, stored as an opaque blob by the
//! table), so a crash can never leave data and position apart. The glue hands the table log
//! indices only: the table derives revisions from its role (`armada_table`'s `revision.rs`).
//! A staged-load command is applied alone, in its own batch. After each batch the position
//! the table stored is published for waiters (linearizable reads, read-your-writes).

use std::io;

use armada_storage::LogIndex;
use armada_table::{AppliedPosition, ApplyEntry, ApplyOutcome, Command, Rejection, Table};
use futures::{Stream, TryStreamExt};
use openraft::storage::{ApplyResponder, EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use tokio::sync::watch;

use super::snapshot::{Snapshot, SnapshotData, built, durable_snapshot};
use super::types::{LogId, RaftAppliedState, Response, SnapshotMeta, StoredMembership, TypeConfig};
use crate::replication::log_cache::{CachedEntry, LogCache};

#[derive(Clone)]
pub struct TableStateMachine {
    table: Table,
    applied: std::sync::Arc<watch::Sender<AppliedPosition>>,
    storage: armada_storage::Storage,
    /// Last applied membership, kept to stamp positions of batches that carry none.
    membership: std::sync::Arc<std::sync::Mutex<StoredMembership>>,
    /// Recent applied entries for follower-cluster streams (`replication::log_cache`).
    log_cache: LogCache,
    /// `armada_table_applied_index` of this table, registered once (set after every batch).
    applied_gauge: metrics::Gauge,
}

impl TableStateMachine {
    pub fn open(table: Table, storage: armada_storage::Storage) -> io::Result<Self> {
        let position = table.applied_position().map_err(io::Error::other)?;
        let raft_state = RaftAppliedState::decode(&position.raft_state)?;
        let (applied, _) = watch::channel(position);
        Ok(TableStateMachine {
            applied: std::sync::Arc::new(applied),
            storage,
            membership: std::sync::Arc::new(std::sync::Mutex::new(raft_state.last_membership)),
            log_cache: LogCache::default(),
            applied_gauge: metrics::gauge!("armada_table_applied_index", "table_id" => table.id().to_string()),
            table,
        })
    }

    /// Keeps recent applied entries in `cache` (disabled unless given).
    pub fn with_log_cache(mut self, cache: LogCache) -> Self {
        self.log_cache = cache;
        self
    }

    pub fn log_cache(&self) -> &LogCache {
        &self.log_cache
    }

    /// Follows the applied position of the table.
    pub fn subscribe(&self) -> watch::Receiver<AppliedPosition> {
        self.applied.subscribe()
    }

    fn current_membership(&self) -> StoredMembership {
        crate::fail_stop::lock(&self.membership, "the table's membership").clone()
    }
}

/// An entry's command: `None` for blank and membership entries, `Err` when its bytes do not
/// decode into a valid command.
type Decoded = Result<Option<Command>, Rejection>;

/// The entries of one `apply` call from openraft, decoded.
#[derive(Default)]
struct Batch {
    log_ids: Vec<LogId>,
    decoded: Vec<Decoded>,
    responders: Vec<Option<ApplyResponder<TypeConfig>>>,
    /// Membership changes as (position of the entry, the new membership); the membership in
    /// effect after entry `at` is the last change at or before `at`.
    membership_changes: Vec<(usize, StoredMembership)>,
    recent: Vec<CachedEntry>,
}

impl Batch {
    fn push(&mut self, entry: &openraft::alias::EntryOf<TypeConfig>) -> Decoded {
        self.recent.push(CachedEntry::of(entry));
        match &entry.payload {
            EntryPayload::Normal(request) => Command::decode(&request.0).map(Some),
            EntryPayload::Blank => Ok(None),
            EntryPayload::Membership(config) => {
                self.membership_changes.push((
                    self.log_ids.len(),
                    StoredMembership::new(Some(entry.log_id), config.clone()),
                ));
                Ok(None)
            }
        }
    }

    fn entries(&self) -> Vec<ApplyEntry<'_>> {
        self.log_ids
            .iter()
            .zip(&self.decoded)
            .map(|(log_id, decoded)| ApplyEntry {
                log_index: LogIndex(log_id.index),
                command: decoded.as_ref().ok().and_then(Option::as_ref),
            })
            .collect()
    }

    /// The membership in effect after entry `at`, `current` when the batch changed none.
    fn membership_after(&self, at: usize, current: StoredMembership) -> StoredMembership {
        match self
            .membership_changes
            .iter()
            .rev()
            .find(|(change, _)| *change <= at)
        {
            Some((_, membership)) => membership.clone(),
            None => current,
        }
    }
}

/// Splits a batch into the ranges applied by one `Table::apply` call each: a staged-load
/// command alone, the entries between loads together.
fn segments(entries: &[ApplyEntry<'_>]) -> Vec<std::ops::Range<usize>> {
    let mut segments = Vec::new();
    let mut start = 0;
    for (at, entry) in entries.iter().enumerate() {
        if entry.command.is_some_and(Command::is_load) {
            if start < at {
                segments.push(start..at);
            }
            segments.push(at..at + 1);
            start = at + 1;
        }
    }
    if start < entries.len() {
        segments.push(start..entries.len());
    }
    segments
}

/// What the proposer of an entry hears.
fn response(decoded: Decoded, outcome: ApplyOutcome) -> Response {
    match (decoded, outcome) {
        (Err(rejection), _) | (Ok(Some(_)), ApplyOutcome::Rejected(rejection)) => {
            Response::Rejected(rejection.0)
        }
        (Ok(None), _) => Response::Empty,
        (
            Ok(Some(_)),
            ApplyOutcome::Applied {
                revision, outcome, ..
            },
        ) => Response::Table { revision, outcome },
    }
}

impl TableStateMachine {
    /// Applies a decoded batch, segment by segment (`segments`), publishing the position
    /// after each; one outcome per entry.
    fn apply_segments(
        &self,
        batch: &Batch,
        recent: Vec<CachedEntry>,
    ) -> io::Result<Vec<ApplyOutcome>> {
        let entries = batch.entries();
        let mut outcomes = Vec::with_capacity(entries.len());
        let mut recent = recent.into_iter();
        for segment in segments(&entries) {
            let last_at = segment.end - 1;
            let membership = batch.membership_after(last_at, self.current_membership());
            let raft_state = RaftAppliedState {
                last_applied: Some(batch.log_ids[last_at]),
                last_membership: membership.clone(),
            }
            .encode();
            let segment_entries = &entries[segment.clone()];
            let applied = if self.table.apply_may_block(segment_entries) {
                tokio::task::block_in_place(|| self.table.apply(segment_entries, raft_state))
            } else {
                // A small batch into memtables with no back-pressure: tens of microseconds,
                // cheaper inline than handing the worker thread over (block_in_place).
                self.table.apply(segment_entries, raft_state)
            }
            // Rejections are outcomes; an error here is storage failing under this replica
            // alone, so its state may now differ from its peers': stop (ADR 0009).
            .unwrap_or_else(|error| {
                crate::fail_stop::stop(&format!("applying to table {}", self.table.id()), &error)
            });
            outcomes.extend(applied.outcomes);
            *crate::fail_stop::lock(&self.membership, "the table's membership") = membership;
            // Before publishing: a stream woken by the new position finds the entries cached.
            self.log_cache.append(recent.by_ref().take(segment.len()));
            self.applied.send_replace(applied.position);
        }
        Ok(outcomes)
    }

    /// The current state as a snapshot: durable first (the log below it may then be purged),
    /// then described by the position of a point-in-time view of it.
    async fn current_snapshot(&self) -> io::Result<Option<Snapshot>> {
        durable_snapshot(&self.storage, async {
            let view = self.table.read_view();
            let raft_state = RaftAppliedState::decode(&view.position().raft_state)?;
            if raft_state.last_applied.is_none() {
                return Ok(None);
            }
            let meta = SnapshotMeta {
                last_log_id: raft_state.last_applied,
                last_membership: raft_state.last_membership,
            };
            Ok(Some(Snapshot {
                meta,
                snapshot: SnapshotData::View(view),
            }))
        })
        .await
    }
}

impl RaftSnapshotBuilder<TypeConfig> for TableStateMachine {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        built(self.current_snapshot().await?)
    }
}

impl RaftStateMachine<TypeConfig> for TableStateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let position = self.table.applied_position().map_err(io::Error::other)?;
        let state = RaftAppliedState::decode(&position.raft_state)?;
        Ok((state.last_applied, state.last_membership))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut batch = Batch::default();
        while let Some((entry, responder)) = entries.try_next().await? {
            let decoded = batch.push(&entry);
            batch.decoded.push(decoded);
            batch.log_ids.push(entry.log_id);
            batch.responders.push(responder);
        }
        let Some(last) = batch.log_ids.last().copied() else {
            return Ok(());
        };
        let recent = std::mem::take(&mut batch.recent);
        let outcomes = self.apply_segments(&batch, recent)?;
        self.applied_gauge.set(last.index as f64);
        for ((responder, decoded), outcome) in batch
            .responders
            .into_iter()
            .zip(batch.decoded)
            .zip(outcomes)
        {
            if let Some(responder) = responder {
                responder.send(response(decoded, outcome));
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        _meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> Result<(), io::Error> {
        let table = self.table.clone();
        let position = tokio::task::spawn_blocking(move || -> io::Result<AppliedPosition> {
            let mut reader = snapshot.into_reader()?;
            table
                .install_snapshot(&mut reader)
                .map_err(io::Error::other)
        })
        .await
        .map_err(io::Error::other)??;
        let state = RaftAppliedState::decode(&position.raft_state)?;
        *crate::fail_stop::lock(&self.membership, "the table's membership") = state.last_membership;
        metrics::counter!("armada_raft_snapshot_installs_total", "shard_id" => self.table.id().to_string())
            .increment(1);
        tracing::info!(
            shard_id = self.table.id().get(),
            log_index = position.log_index.get(),
            "installed a snapshot"
        );
        self.applied.send_replace(position);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        self.current_snapshot().await
    }
}
