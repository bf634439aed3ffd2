//! A table group's state machine: openraft's `RaftStateMachine` over [`armada_table::Table`].
//!
//! openraft hands entries in batches; each batch is applied in one storage write batch
//! together with the applied position (the Raft log id and membership, stored as an opaque
//! blob by the table), so a crash can never leave data and position apart. Revisions on the
//! leader cluster are the entries' own log indices (`Revision::from_leader_cluster_log_index`).
//! After each batch the applied revision is published for waiters (linearizable reads,
//! read-your-writes).

use std::io;

use armada_storage::{LogIndex, Revision};
use armada_table::{AppliedPosition, ApplyEntry, ApplyOutcome, Table, pb};
use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use prost::Message;
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
        self.membership
            .lock()
            .map(|guard| guard.clone())
            .unwrap_or_default()
    }
}

fn is_load_command(command: &pb::Command) -> bool {
    use pb::command::CommandType;
    matches!(
        CommandType::try_from(command.r#type),
        Ok(CommandType::LoadBegin | CommandType::LoadChunk | CommandType::LoadCommit)
    )
}

fn decode_command(bytes: &[u8]) -> Result<pb::Command, String> {
    pb::Command::decode(bytes).map_err(|error| format!("undecodable command: {error}"))
}

impl TableStateMachine {
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
        let mut log_ids = Vec::new();
        let mut commands: Vec<Result<Option<pb::Command>, String>> = Vec::new();
        let mut responders = Vec::new();
        // Membership changes in this batch, as (position of the entry, the new membership);
        // the membership in effect after entry `at` is the last change at or before `at`.
        let mut membership_changes: Vec<(usize, StoredMembership)> = Vec::new();
        let mut recent = Vec::new();
        while let Some((entry, responder)) = entries.try_next().await? {
            recent.push(CachedEntry::of(&entry));
            commands.push(match &entry.payload {
                EntryPayload::Normal(request) => decode_command(&request.0).map(Some),
                EntryPayload::Blank => Ok(None),
                EntryPayload::Membership(config) => {
                    membership_changes.push((
                        log_ids.len(),
                        StoredMembership::new(Some(entry.log_id), config.clone()),
                    ));
                    Ok(None)
                }
            });
            log_ids.push(entry.log_id);
            responders.push(responder);
        }
        if log_ids.is_empty() {
            return Ok(());
        }
        let apply_entries: Vec<ApplyEntry<'_>> = log_ids
            .iter()
            .zip(&commands)
            .map(|(log_id, command)| ApplyEntry {
                revision: Revision::from_leader_cluster_log_index(LogIndex(log_id.index)),
                command: command.as_ref().ok().and_then(|command| command.as_ref()),
            })
            .collect();
        // A staged-load command is applied alone (its own batch and position).
        let mut segments = Vec::new();
        let mut start = 0;
        for (at, entry) in apply_entries.iter().enumerate() {
            if entry.command.is_some_and(is_load_command) {
                if start < at {
                    segments.push(start..at);
                }
                segments.push(at..at + 1);
                start = at + 1;
            }
        }
        if start < apply_entries.len() {
            segments.push(start..apply_entries.len());
        }
        let mut outcomes = Vec::with_capacity(apply_entries.len());
        let mut recent = recent.into_iter();
        for segment in segments {
            let last_at = segment.end - 1;
            let segment_len = segment.len();
            let last = log_ids[last_at];
            let membership = match membership_changes
                .iter()
                .rev()
                .find(|(at, _)| *at <= last_at)
            {
                Some((_, membership)) => membership.clone(),
                None => self.current_membership(),
            };
            let position = AppliedPosition {
                log_index: LogIndex(last.index),
                revision: Revision::from_leader_cluster_log_index(LogIndex(last.index)),
                leader_index: None,
                raft_state: RaftAppliedState {
                    last_applied: Some(last),
                    last_membership: membership.clone(),
                }
                .encode(),
            };
            outcomes.extend(
                if self.table.apply_may_block(&apply_entries[segment.clone()]) {
                    tokio::task::block_in_place(|| {
                        self.table.apply(&apply_entries[segment], &position)
                    })
                } else {
                    // A small batch into memtables with no back-pressure: tens of microseconds,
                    // cheaper inline than handing the worker thread over (block_in_place).
                    self.table.apply(&apply_entries[segment], &position)
                }
                .map_err(io::Error::other)?,
            );
            if let Ok(mut guard) = self.membership.lock() {
                *guard = membership;
            }
            // Before publishing: a stream woken by the new position finds the entries cached.
            self.log_cache.append(recent.by_ref().take(segment_len));
            // The table completes the position (a follower's revision is its leader index).
            let stored = self.table.applied_position().map_err(io::Error::other)?;
            self.applied.send_replace(stored);
        }
        let last = log_ids[log_ids.len() - 1];
        self.applied_gauge.set(last.index as f64);
        for ((responder, command), outcome) in responders.into_iter().zip(commands).zip(outcomes) {
            let Some(responder) = responder else { continue };
            let response = match (command, outcome) {
                (Err(message), _) => Response::Rejected(message),
                (Ok(None), _) => Response::Empty,
                (Ok(Some(_)), ApplyOutcome::Applied { result, succeeded }) => {
                    Response::Table { result, succeeded }
                }
                (Ok(Some(_)), ApplyOutcome::Rejected(message)) => Response::Rejected(message),
            };
            responder.send(response);
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
        if let Ok(mut guard) = self.membership.lock() {
            *guard = state.last_membership;
        }
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
