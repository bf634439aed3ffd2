//! The propose/read seam of the node (DESIGN's `Groups::propose/read`): every write of any group
//! (a client's, the follower side's, a load's, a catalog change) goes through [`Node::write`],
//! and every linearizable read through [`Node::linearize`].
//!
//! Either runs on this replica when it is the group's Raft leader, else asks the leader over the
//! cluster transport (writes through the batching `Forwarder`). Invariants: a write is retried
//! only while it certainly was not appended anywhere (no Raft leader yet, `NotLeader`,
//! `NoSuchGroup`, the peer unreachable before sending); once its outcome is unknown (a timeout
//! mid-call, the Raft leader changing while the write is in flight) the caller is told so and
//! nothing is retried. A read may always be retried.

use std::sync::Arc;

use armada_storage::LogIndex;

use crate::cluster::rpc::{PeerError, PeerRequest, PeerResponse};
use crate::error::ApiError;
use crate::groups::handle::GroupHandle;
use crate::groups::table_group::TableGroup;
use crate::groups::types::{Request, Response};
use crate::transport::TransportError;

use super::{FORWARD_RETRY_PAUSE, Node};

impl Node {
    /// Proposes `request` to a group from any node: locally when this replica is the Raft
    /// leader, else forwarded to the leader over the cluster transport. Retries only while the
    /// write certainly was not appended (no leader yet, leader moved, leader unreachable before
    /// sending); an outcome that is unknown (timeout mid-call) is reported, never retried.
    pub async fn write(
        &self,
        group: &GroupHandle,
        request: Request,
        deadline: tokio::time::Instant,
    ) -> Result<(LogIndex, Response), ApiError> {
        loop {
            let raft_leader = match group.raft_leader() {
                Some(raft_leader) => raft_leader,
                None => group.wait_for_raft_leader(deadline).await.ok_or_else(|| {
                    ApiError::Unavailable("the table's Raft group has no leader".into())
                })?,
            };
            let attempt = if raft_leader == self.node_id {
                match tokio::time::timeout_at(deadline, group.write_here(request.clone())).await {
                    Ok(result) => result.map_err(Some),
                    Err(_) => return Err(ApiError::DeadlineExceeded),
                }
            } else {
                // A Raft leader that dies with the write in flight never answers; once this replica
                // sees another term, the write's outcome is unknown (it may have been appended
                // and replicated) and waiting for the deadline would not tell more.
                let forwarded = tokio::select! {
                    biased;
                    outcome = self.forwarder.forward(raft_leader, group.id(), request.clone(), deadline) => outcome,
                    () = group.raft_leader_moved_from(raft_leader) => {
                        return Err(ApiError::Unavailable(format!(
                            "the Raft leader changed while the write was forwarded to node {raft_leader}; its outcome is unknown"
                        )));
                    }
                };
                match forwarded {
                    Ok(Ok(done)) => Ok(done),
                    Ok(Err(error)) => Err(Some(error)),
                    Err(
                        TransportError::Unreachable { .. } | TransportError::UnknownPeer { .. },
                    ) => Err(None),
                    Err(TransportError::Timeout { .. }) => return Err(ApiError::DeadlineExceeded),
                    Err(error) => {
                        return Err(ApiError::Unavailable(format!(
                            "forwarding to the Raft leader (node {raft_leader}) failed, the write's outcome is unknown: {error}"
                        )));
                    }
                }
            };
            match attempt {
                Ok(done) => return Ok(done),
                Err(Some(PeerError::Failed(message))) => {
                    return Err(ApiError::Unavailable(message));
                }
                // Not appended anywhere: try again with whoever leads now.
                Err(Some(PeerError::NotLeader { .. } | PeerError::NoSuchGroup(_)) | None) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::Unavailable(
                    "no reachable Raft leader before the deadline".into(),
                ));
            }
            tokio::time::sleep(FORWARD_RETRY_PAUSE).await;
        }
    }

    /// Makes a table replica ready for a linearizable read: the group's Raft leader confirms
    /// its leadership (ReadIndex) and this replica waits until it has applied that index.
    pub async fn linearize(
        &self,
        group: &Arc<TableGroup>,
        deadline: tokio::time::Instant,
    ) -> Result<(), ApiError> {
        let index = self
            .read_index(&GroupHandle::Table(group.clone()), deadline)
            .await?;
        self.wait_applied(group, index, deadline).await
    }

    /// Asks the group's Raft leader (this node or a peer) for a ReadIndex: the index a replica
    /// must have applied to serve a linearizable read.
    pub(super) async fn read_index(
        &self,
        handle: &GroupHandle,
        deadline: tokio::time::Instant,
    ) -> Result<LogIndex, ApiError> {
        loop {
            let raft_leader = match handle.raft_leader() {
                Some(raft_leader) => raft_leader,
                None => handle.wait_for_raft_leader(deadline).await.ok_or_else(|| {
                    ApiError::Unavailable("the table's Raft group has no leader".into())
                })?,
            };
            let index = if raft_leader == self.node_id {
                tokio::time::timeout_at(deadline, handle.read_index_here())
                    .await
                    .map_err(|_| ApiError::DeadlineExceeded)?
            } else {
                // Reads are safe to retry: a Raft leader that dies with the request in flight is
                // asked no more once this replica sees another term.
                let request = PeerRequest::ReadIndex { group: handle.id() };
                let asked = tokio::select! {
                    biased;
                    answer = self.call_peer(raft_leader, &request, deadline) => Some(answer),
                    () = handle.raft_leader_moved_from(raft_leader) => None,
                };
                let Some(answer) = asked else { continue };
                match answer {
                    Ok(Ok(PeerResponse::ReadIndex { index })) => Ok(index),
                    Ok(Ok(other)) => {
                        return Err(ApiError::Internal(format!(
                            "unexpected peer response {other:?}"
                        )));
                    }
                    Ok(Err(error)) => Err(error),
                    Err(TransportError::Timeout { .. }) => return Err(ApiError::DeadlineExceeded),
                    Err(error) => Err(PeerError::Failed(error.to_string())),
                }
            };
            match index {
                Ok(index) => return Ok(index),
                Err(PeerError::NotLeader { .. } | PeerError::NoSuchGroup(_)) => {}
                Err(PeerError::Failed(message)) => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(ApiError::Unavailable(format!(
                            "linearizable read failed: {message}"
                        )));
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::Unavailable(
                    "no reachable Raft leader before the deadline".into(),
                ));
            }
            tokio::time::sleep(FORWARD_RETRY_PAUSE).await;
        }
    }

    async fn wait_applied(
        &self,
        group: &TableGroup,
        index: LogIndex,
        deadline: tokio::time::Instant,
    ) -> Result<(), ApiError> {
        let mut applied = group.state_machine().subscribe();
        tokio::time::timeout_at(
            deadline,
            applied.wait_for(|position| position.log_index >= index),
        )
        .await
        .map_err(|_| ApiError::DeadlineExceeded)?
        .map(|_| ())
        .map_err(|_| ApiError::Unavailable("the table group stopped".into()))
    }
}
