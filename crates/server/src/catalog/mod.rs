//! The catalog: the cluster's table registry, replicated by its own Raft group
//! ([`armada_storage::CATALOG_GROUP`]).
//!
//! State is a small sorted map `name → TableRecord` plus the id sequence. It is persisted as a
//! single JSON record together with the applied Raft state, so data and position can never
//! disagree. Every change is published on a `watch` channel; the node reconciles its running
//! table groups from it at once (no polling interval).

use std::io::{self, Read};
use std::sync::Arc;

use armada_storage::Storage;
use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub mod state;

pub use state::{CatalogCommand, CatalogOutcome, CatalogState, TableIdWire, TableRecord};

use crate::groups::snapshot::{Snapshot, SnapshotData, built, durable_snapshot};
use crate::groups::types::{
    LogId, RaftAppliedState, Response, SnapshotMeta, StoredMembership, TypeConfig,
};

#[derive(Default, Serialize, Deserialize)]
struct PersistedCatalog {
    state: CatalogState,
    raft: RaftAppliedState,
}

const RECORD_KEY: &[u8] = b"catalog";

/// The catalog group's state machine.
#[derive(Clone)]
pub struct CatalogStateMachine {
    keyspace: armada_storage::fjall::Keyspace,
    current: Arc<tokio::sync::Mutex<PersistedCatalog>>,
    published: Arc<watch::Sender<Arc<CatalogState>>>,
    storage: Storage,
}

impl CatalogStateMachine {
    pub fn open(storage: &Storage) -> io::Result<Self> {
        let keyspace = storage.keyspace("catalog").map_err(io::Error::other)?;
        let persisted: PersistedCatalog =
            match keyspace.get(RECORD_KEY).map_err(io::Error::other)? {
                Some(bytes) => serde_json::from_slice(&bytes)
                    .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?,
                None => PersistedCatalog::default(),
            };
        let (published, _) = watch::channel(Arc::new(persisted.state.clone()));
        Ok(CatalogStateMachine {
            keyspace,
            current: Arc::new(tokio::sync::Mutex::new(persisted)),
            published: Arc::new(published),
            storage: storage.clone(),
        })
    }

    /// Follows every change of the registry.
    pub fn subscribe(&self) -> watch::Receiver<Arc<CatalogState>> {
        self.published.subscribe()
    }

    fn persist(&self, persisted: &PersistedCatalog) -> io::Result<()> {
        let bytes = serde_json::to_vec(persisted).map_err(io::Error::other)?;
        self.keyspace
            .insert(RECORD_KEY, bytes)
            .map_err(io::Error::other)
    }
}

impl CatalogStateMachine {
    /// The current registry as a snapshot (made durable first, see `groups::snapshot`).
    async fn current_snapshot(&self) -> io::Result<Option<Snapshot>> {
        durable_snapshot(&self.storage, async {
            let current = self.current.lock().await;
            if current.raft.last_applied.is_none() {
                return Ok(None);
            }
            let meta = SnapshotMeta {
                last_log_id: current.raft.last_applied,
                last_membership: current.raft.last_membership.clone(),
            };
            let bytes = serde_json::to_vec(&current.state).map_err(io::Error::other)?;
            Ok(Some(Snapshot {
                meta,
                snapshot: SnapshotData::Bytes(bytes.into()),
            }))
        })
        .await
    }
}

impl RaftSnapshotBuilder<TypeConfig> for CatalogStateMachine {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        built(self.current_snapshot().await?)
    }
}

impl RaftStateMachine<TypeConfig> for CatalogStateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let current = self.current.lock().await;
        Ok((
            current.raft.last_applied,
            current.raft.last_membership.clone(),
        ))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut current = self.current.lock().await;
        let mut responders = Vec::new();
        while let Some((entry, responder)) = entries.try_next().await? {
            current.raft.last_applied = Some(entry.log_id);
            let response = match &entry.payload {
                EntryPayload::Blank => Response::Empty,
                EntryPayload::Normal(request) => {
                    match serde_json::from_slice::<CatalogCommand>(&request.0) {
                        Ok(command) => Response::Catalog(current.state.apply(&command)),
                        Err(error) => {
                            Response::Rejected(format!("undecodable catalog command: {error}"))
                        }
                    }
                }
                EntryPayload::Membership(membership) => {
                    current.raft.last_membership =
                        StoredMembership::new(Some(entry.log_id), membership.clone());
                    Response::Empty
                }
            };
            responders.push((responder, response));
        }
        self.persist(&current)?;
        self.published.send_replace(Arc::new(current.state.clone()));
        drop(current);
        for (responder, response) in responders {
            if let Some(responder) = responder {
                responder.send(response);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> Result<(), io::Error> {
        let bytes = tokio::task::spawn_blocking(move || -> io::Result<Vec<u8>> {
            let mut bytes = Vec::new();
            snapshot.into_reader()?.read_to_end(&mut bytes)?;
            Ok(bytes)
        })
        .await
        .map_err(io::Error::other)??;
        let state: CatalogState = serde_json::from_slice(&bytes)
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?;
        let mut current = self.current.lock().await;
        current.state = state;
        current.raft = RaftAppliedState {
            last_applied: meta.last_log_id,
            last_membership: meta.last_membership.clone(),
        };
        self.persist(&current)?;
        self.published.send_replace(Arc::new(current.state.clone()));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        self.current_snapshot().await
    }
}
