//! openraft's network for every group of a node, over the shared [`Transport`].
//!
//! `ClusterNetwork` is one group's factory; each client it makes tags its RPCs with the group
//! id and sends them to the target node, where `cluster::handler` hands them to that group's
//! `Raft`. Snapshots are streamed (`call_stream`), never held whole in memory.

use std::future::Future;
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use armada_storage::{NodeId, TableId};
use bytes::Bytes;
use openraft::OptionalSend;
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};

use super::rpc::{self, PeerError, PeerRequest, PeerResponse, PeerResult, SnapshotHeader};
use crate::groups::snapshot::SnapshotData;
use crate::groups::types::{Node, RaftNodeId, TypeConfig, Vote};
use crate::transport::{BodyStream, Transport, TransportError};

/// Snapshot transfers get a long deadline: a large table takes a while.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(3600);
/// Bytes read from a snapshot per streamed chunk.
const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;

#[derive(Clone)]
pub struct ClusterNetwork {
    transport: Arc<dyn Transport>,
    group: TableId,
}

impl ClusterNetwork {
    pub fn new(transport: Arc<dyn Transport>, group: TableId) -> Self {
        ClusterNetwork { transport, group }
    }
}

pub struct PeerClient {
    transport: Arc<dyn Transport>,
    group: TableId,
    target: NodeId,
}

impl RaftNetworkFactory<TypeConfig> for ClusterNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: RaftNodeId, _node: &Node) -> Self::Network {
        PeerClient {
            transport: self.transport.clone(),
            group: self.group,
            target: NodeId(target),
        }
    }
}

fn unreachable(error: impl ToString) -> Unreachable<TypeConfig> {
    Unreachable::from_string(error.to_string())
}

impl PeerClient {
    async fn call(
        &self,
        request: PeerRequest,
        option: &RPCOption,
    ) -> Result<PeerResponse, RPCError<TypeConfig>> {
        let bytes = rpc::encode(&request);
        let answer = self
            .transport
            .call(self.target, bytes, option.hard_ttl())
            .await
            .map_err(|error| transport_error(self.target, error))?;
        let result: PeerResult = rpc::decode(&answer)
            .map_err(|error| RPCError::Network(NetworkError::from_string(error)))?;
        result.map_err(|error| peer_error(self.target, error))
    }
}

fn transport_error(target: NodeId, error: TransportError) -> RPCError<TypeConfig> {
    match error {
        TransportError::Timeout { .. } => {
            RPCError::Unreachable(unreachable(format!("node {target} timed out")))
        }
        other => RPCError::Unreachable(unreachable(other)),
    }
}

fn peer_error(target: NodeId, error: PeerError) -> RPCError<TypeConfig> {
    // A group not (yet) running on the peer behaves like an unreachable peer: back off, retry.
    let _ = target;
    RPCError::Unreachable(unreachable(error))
}

fn unexpected(response: PeerResponse) -> RPCError<TypeConfig> {
    RPCError::Network(NetworkError::from_string(format!(
        "unexpected peer response {response:?}"
    )))
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self
            .call(
                PeerRequest::AppendEntries {
                    group: self.group,
                    rpc,
                },
                &option,
            )
            .await?
        {
            PeerResponse::AppendEntries(response) => Ok(response),
            other => Err(unexpected(other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self
            .call(
                PeerRequest::Vote {
                    group: self.group,
                    rpc,
                },
                &option,
            )
            .await?
        {
            PeerResponse::Vote(response) => Ok(response),
            other => Err(unexpected(other)),
        }
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self
            .call(
                PeerRequest::PreVote {
                    group: self.group,
                    rpc,
                },
                &option,
            )
            .await?
        {
            PeerResponse::Vote(response) => Ok(response),
            other => Err(unexpected(other)),
        }
    }

    async fn transfer_leader(
        &mut self,
        rpc: openraft::raft::TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<openraft::raft::TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self
            .call(
                PeerRequest::TransferLeader {
                    group: self.group,
                    rpc,
                },
                &option,
            )
            .await?
        {
            PeerResponse::TransferLeader(response) => Ok(response),
            other => Err(unexpected(other)),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: openraft::alias::SnapshotOf<TypeConfig, SnapshotData>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let header = rpc::encode(&SnapshotHeader {
            group: self.group,
            vote,
            meta: snapshot.meta.clone(),
        });
        let body = snapshot_body(snapshot.snapshot)
            .map_err(|error| StreamingError::Unreachable(unreachable(error)))?;
        let send = self
            .transport
            .call_stream(self.target, header, body, SNAPSHOT_TIMEOUT);
        let answer = tokio::select! {
            answer = send => answer.map_err(|error| StreamingError::Unreachable(unreachable(error)))?,
            closed = cancel => return Err(StreamingError::Closed(closed)),
        };
        let result: PeerResult = rpc::decode(&answer)
            .map_err(|error| StreamingError::Network(NetworkError::from_string(error)))?;
        match result {
            Ok(PeerResponse::Snapshot(response)) => Ok(response),
            Ok(other) => Err(StreamingError::Network(NetworkError::from_string(format!(
                "unexpected {other:?}"
            )))),
            Err(error) => Err(StreamingError::Unreachable(unreachable(error))),
        }
    }
}

/// The snapshot's bytes as a stream of chunks, read on a blocking thread with a bounded queue.
fn snapshot_body(data: SnapshotData) -> std::io::Result<BodyStream> {
    let mut reader = data.into_reader()?;
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Bytes, TransportError>>(4);
    tokio::task::spawn_blocking(move || {
        loop {
            let mut chunk = vec![0u8; SNAPSHOT_CHUNK_BYTES];
            let mut filled = 0;
            while filled < chunk.len() {
                match reader.read(&mut chunk[filled..]) {
                    Ok(0) => break,
                    Ok(read) => filled += read,
                    Err(error) => {
                        let _ = sender.blocking_send(Err(TransportError::Remote(format!(
                            "reading the snapshot: {error}"
                        ))));
                        return;
                    }
                }
            }
            if filled == 0 {
                return;
            }
            chunk.truncate(filled);
            if sender.blocking_send(Ok(Bytes::from(chunk))).is_err() {
                return;
            }
        }
    });
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(
        receiver,
    )))
}
