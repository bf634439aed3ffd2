//! A handle on any group of this node (the catalog or a table), so that code serving peers
//! and forwarding requests need not care which state machine a group runs.

use std::sync::Arc;

use armada_storage::{LogIndex, NodeId, TableId};
use openraft::async_runtime::WatchReceiver;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};

use super::CatalogRaft;
use super::snapshot::SnapshotData;
use super::types::{Request, Response, SnapshotMeta, TypeConfig, Vote};
use crate::cluster::rpc::PeerError;
use crate::groups::table_group::TableGroup;

#[derive(Clone)]
pub enum GroupHandle {
    Catalog(CatalogRaft),
    Table(Arc<TableGroup>),
}

/// Runs `$body` with `$raft` bound to the group's `Raft`, whatever its state machine type.
macro_rules! with_raft {
    ($handle:expr, $raft:ident => $body:expr) => {
        match $handle {
            GroupHandle::Catalog($raft) => $body,
            GroupHandle::Table(group) => {
                let $raft = &group.raft();
                $body
            }
        }
    };
}

fn failed(error: impl ToString) -> PeerError {
    PeerError::Failed(error.to_string())
}

impl GroupHandle {
    /// The group's id: the catalog's or the table's.
    pub fn id(&self) -> TableId {
        match self {
            GroupHandle::Catalog(_) => armada_storage::CATALOG_GROUP,
            GroupHandle::Table(group) => group.id(),
        }
    }

    /// The Raft leader this replica knows of.
    pub fn raft_leader(&self) -> Option<NodeId> {
        with_raft!(self, raft => raft.server_metrics().borrow_watched().current_leader).map(NodeId)
    }

    /// Waits until this replica knows a Raft leader (or the deadline passes).
    pub async fn wait_for_raft_leader(&self, deadline: tokio::time::Instant) -> Option<NodeId> {
        let wait = async {
            with_raft!(self, raft => {
                let mut metrics = raft.server_metrics();
                metrics.wait_until(|m| m.current_leader.is_some()).await.ok().and_then(|m| m.current_leader)
            })
        };
        tokio::time::timeout_at(deadline, wait)
            .await
            .ok()
            .flatten()
            .map(NodeId)
    }

    /// Resolves once this replica no longer takes `raft_leader` for the Raft leader (an
    /// election started, or another node leads). Never resolves while it does, nor once the
    /// Raft core has stopped.
    pub async fn raft_leader_moved_from(&self, raft_leader: NodeId) {
        let moved = with_raft!(self, raft => {
            let mut metrics = raft.server_metrics();
            metrics.wait_until(|m| m.current_leader != Some(raft_leader.get())).await.is_ok()
        });
        if !moved {
            std::future::pending::<()>().await;
        }
    }

    pub async fn append_entries(
        &self,
        rpc: AppendEntriesRequest<TypeConfig>,
    ) -> Result<AppendEntriesResponse<TypeConfig>, PeerError> {
        with_raft!(self, raft => raft.append_entries(rpc).await.map_err(failed))
    }

    pub async fn vote(
        &self,
        rpc: VoteRequest<TypeConfig>,
    ) -> Result<VoteResponse<TypeConfig>, PeerError> {
        with_raft!(self, raft => raft.vote(rpc).await.map_err(failed))
    }

    pub async fn pre_vote(
        &self,
        rpc: VoteRequest<TypeConfig>,
    ) -> Result<VoteResponse<TypeConfig>, PeerError> {
        with_raft!(self, raft => raft.pre_vote(rpc).await.map_err(failed))
    }

    pub async fn transfer_leader(
        &self,
        rpc: openraft::raft::TransferLeaderRequest<TypeConfig>,
    ) -> Result<openraft::raft::TransferLeaderResponse<TypeConfig>, PeerError> {
        with_raft!(self, raft => raft.handle_transfer_leader(rpc).await.map_err(failed))
    }

    /// Asks this replica, if it leads, to hand leadership to `to`.
    pub async fn trigger_transfer_leader(&self, to: NodeId) {
        let _ = with_raft!(self, raft => raft.trigger().transfer_leader(to.get()).await);
    }

    pub async fn install_snapshot(
        &self,
        vote: Vote,
        meta: SnapshotMeta,
        data: SnapshotData,
    ) -> Result<SnapshotResponse<TypeConfig>, PeerError> {
        let snapshot = openraft::alias::SnapshotOf::<TypeConfig, SnapshotData> {
            meta,
            snapshot: data,
        };
        with_raft!(self, raft => raft.install_full_snapshot(vote, snapshot).await.map_err(failed))
    }

    /// Counts `count` writes proposed to a table group's Raft on this node
    /// (`armada_raft_proposals_total`). Counted when handed to openraft, whatever the outcome:
    /// a replica that turns out not to lead answers `NotLeader` for them.
    fn count_proposals(&self, count: usize) {
        if let GroupHandle::Table(group) = self {
            metrics::counter!(
                "armada_raft_proposals_total",
                "table" => group.name().to_string(),
                "shard_id" => group.id().to_string()
            )
            .increment(count as u64);
        }
    }

    /// Proposes on this replica, which must be the Raft leader; `NotLeader` says who is.
    pub async fn write_here(&self, request: Request) -> Result<(LogIndex, Response), PeerError> {
        use openraft::error::{ClientWriteError, RaftError};
        self.count_proposals(1);
        let result = with_raft!(self, raft => raft.client_write(request).await);
        match result {
            Ok(response) => Ok((LogIndex(response.log_id.index), response.data)),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                Err(PeerError::NotLeader {
                    raft_leader: forward.leader_id.map(NodeId),
                })
            }
            Err(error) => Err(failed(error)),
        }
    }

    /// Proposes several writes on this replica in one message to the Raft core; one outcome
    /// per write, in order (`NotLeader` for those not appended because this replica does not
    /// lead). Fails as a whole only when the Raft core has stopped.
    pub async fn write_many_here(
        &self,
        requests: Vec<Request>,
    ) -> Result<Vec<Result<(LogIndex, Response), PeerError>>, PeerError> {
        use futures::StreamExt;
        use openraft::error::ClientWriteError;
        let count = requests.len();
        self.count_proposals(count);
        let stream = with_raft!(self, raft => raft.client_write_many(requests).await);
        let mut stream = stream.map_err(failed)?;
        let mut outcomes = Vec::with_capacity(count);
        while let Some(result) = stream.next().await {
            outcomes.push(match result.map_err(failed)? {
                Ok(written) => Ok((LogIndex(written.log_id.index), written.response)),
                Err(ClientWriteError::ForwardToLeader(forward)) => Err(PeerError::NotLeader {
                    raft_leader: forward.leader_id.map(NodeId),
                }),
                Err(error) => Err(failed(error)),
            });
        }
        if outcomes.len() != count {
            return Err(PeerError::Failed(format!(
                "the Raft core answered {} of {count} writes",
                outcomes.len()
            )));
        }
        Ok(outcomes)
    }

    /// Confirms leadership with a quorum (ReadIndex) and returns the index a replica must have
    /// applied to serve a linearizable read. This replica must be the Raft leader.
    pub async fn read_index_here(&self) -> Result<LogIndex, PeerError> {
        use openraft::error::{LinearizableReadError, RaftError};
        let result = with_raft!(self, raft => raft.ensure_linearizable(openraft::ReadPolicy::ReadIndex).await);
        match result {
            Ok(read_log_id) => Ok(LogIndex(read_log_id.index())),
            Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(forward))) => {
                Err(PeerError::NotLeader {
                    raft_leader: forward.leader_id.map(NodeId),
                })
            }
            Err(error) => Err(failed(error)),
        }
    }
}
