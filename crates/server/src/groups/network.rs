//! The Raft network of a node's groups.
//!
//! This increment runs single-node clusters only (`--raft.initial-members` with one member is
//! enforced at start-up), so no group ever has a peer to talk to and every call reports the
//! peer unreachable. The QUIC transport behind a `Transport` trait replaces this in the
//! leader-cluster work (issue #3); nothing else in the node depends on which one is used.

use std::future::Future;

use openraft::OptionalSend;
use openraft::error::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};

use super::types::{Node, RaftNodeId, TypeConfig, Vote};

/// Creates clients for peers; with no transport every peer is unreachable.
#[derive(Clone, Default)]
pub struct NoTransport;

pub struct UnreachablePeer {
    target: RaftNodeId,
}

impl UnreachablePeer {
    fn error(&self) -> Unreachable<TypeConfig> {
        Unreachable::from_string(format!(
            "node {} is not reachable: this node has no cluster transport",
            self.target
        ))
    }
}

impl RaftNetworkFactory<TypeConfig> for NoTransport {
    type Network = UnreachablePeer;

    async fn new_client(&mut self, target: RaftNodeId, _node: &Node) -> Self::Network {
        UnreachablePeer { target }
    }
}

impl RaftNetworkV2<TypeConfig> for UnreachablePeer {
    type SnapshotData = super::snapshot::SnapshotData;

    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        Err(RPCError::Unreachable(self.error()))
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        Err(RPCError::Unreachable(self.error()))
    }

    async fn full_snapshot(
        &mut self,
        _vote: Vote,
        _snapshot: openraft::alias::SnapshotOf<TypeConfig, super::snapshot::SnapshotData>,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        Err(StreamingError::Unreachable(self.error()))
    }
}
