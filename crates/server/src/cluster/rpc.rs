//! Messages between the nodes of one cluster, carried by the [`crate::transport`].
//!
//! Every request names the Raft group it is for, so one connection per peer pair serves every
//! group (openraft-multi's idea, with our own transport). Requests and responses are encoded
//! with postcard (compact serde); an entry's command bytes travel as they are stored. The
//! format is versioned by the transport's ALPN (`armada-raft/1`); see docs/format.md.
//!
//! Ids and positions are the storage crate's newtypes (`TableId` for a group, `NodeId`,
//! `LogIndex`); they serialize as their bare numbers (`serde(transparent)`), so the bytes are
//! those of the plain `u64`s they replaced. Postcard encodes neither field names nor struct
//! names, only variant positions: fields may be renamed, variants only appended.

use bytes::Bytes;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};

use armada_storage::{LogIndex, NodeId, TableId};

use crate::groups::types::{Request, Response, SnapshotMeta, TypeConfig, Vote};

/// A request from one node to another.
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerRequest {
    AppendEntries {
        group: TableId,
        rpc: AppendEntriesRequest<TypeConfig>,
    },
    Vote {
        group: TableId,
        rpc: VoteRequest<TypeConfig>,
    },
    PreVote {
        group: TableId,
        rpc: VoteRequest<TypeConfig>,
    },
    /// The group's leader hands leadership to the receiver (graceful shutdown).
    TransferLeader {
        group: TableId,
        rpc: openraft::raft::TransferLeaderRequest<TypeConfig>,
    },
    /// A write that reached a node which is not the group's Raft leader.
    Write { group: TableId, request: Request },
    /// A linearizable read arriving at a follower replica: the leader confirms leadership and
    /// answers the index the follower must have applied before reading.
    ReadIndex { group: TableId },
    /// Who the peer is (for MemberList).
    NodeInfo,
    /// Writes that reached a node which is not the group's Raft leader, batched by the
    /// forwarding node (`cluster::forward`); answered in order by `PeerResponse::WriteBatch`.
    /// (Variants are appended, never reordered: postcard encodes the variant's position.)
    WriteBatch {
        group: TableId,
        requests: Vec<Request>,
    },
}

/// Header of a streamed snapshot (`Transport::call_stream`); the body is the snapshot data.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotHeader {
    pub group: TableId,
    pub vote: Vote,
    pub meta: SnapshotMeta,
}

/// Why a peer could not serve a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum PeerError {
    /// The group does not run on the peer (yet, or any more).
    #[error("group {0} does not run on this node")]
    NoSuchGroup(TableId),
    /// The peer is not the group's Raft leader; it knows this one, if any.
    #[error("not the Raft leader (Raft leader: {raft_leader:?})")]
    NotLeader { raft_leader: Option<NodeId> },
    /// The request reached the peer but failed there.
    #[error("{0}")]
    Failed(String),
}

/// Answers, one variant per request kind.
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerResponse {
    AppendEntries(AppendEntriesResponse<TypeConfig>),
    Vote(VoteResponse<TypeConfig>),
    Write {
        log_index: LogIndex,
        response: Response,
    },
    ReadIndex {
        index: LogIndex,
    },
    NodeInfo {
        node_id: NodeId,
        api_address: String,
    },
    Snapshot(SnapshotResponse<TypeConfig>),
    TransferLeader(openraft::raft::TransferLeaderResponse<TypeConfig>),
    /// One outcome per write of a `WriteBatch`, in its order: (log index, answer) or why not.
    WriteBatch(Vec<Result<(LogIndex, Response), PeerError>>),
}

pub type PeerResult = Result<PeerResponse, PeerError>;

pub fn encode<T: Serialize>(value: &T) -> Bytes {
    // Serializing our own in-memory types cannot fail.
    Bytes::from(postcard::to_stdvec(value).expect("peer message encodes"))
}

pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, String> {
    postcard::from_bytes(bytes).map_err(|error| format!("undecodable peer message: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_results_round_trip() {
        let request = PeerRequest::Write {
            group: TableId(10001),
            request: Request(Bytes::from_static(b"\x08\x01command")),
        };
        match decode::<PeerRequest>(&encode(&request)).expect("decodes") {
            PeerRequest::Write { group, request } => {
                assert_eq!(group, TableId(10001));
                assert_eq!(request.0.as_ref(), b"\x08\x01command");
            }
            other => panic!("{other:?}"),
        }
        let result: PeerResult = Err(PeerError::NotLeader {
            raft_leader: Some(NodeId(2)),
        });
        let decoded: PeerResult = decode(&encode(&result)).expect("decodes");
        assert_eq!(
            decoded.expect_err("error"),
            PeerError::NotLeader {
                raft_leader: Some(NodeId(2)),
            }
        );
        assert!(decode::<PeerRequest>(b"\xff\xff\xff").is_err());
    }

    #[test]
    fn ids_travel_as_the_bare_numbers_they_replaced() {
        // The newtypes must not change the bytes between nodes of different versions.
        let typed = encode(&PeerRequest::ReadIndex {
            group: TableId(10001),
        });
        let bare = {
            #[derive(Serialize)]
            enum Old {
                _AppendEntries,
                _Vote,
                _PreVote,
                _TransferLeader,
                _Write,
                ReadIndex { group: u64 },
            }
            encode(&Old::ReadIndex { group: 10001 })
        };
        assert_eq!(typed, bare);
        let result: PeerResult = Err(PeerError::NotLeader {
            raft_leader: Some(NodeId(300)),
        });
        #[derive(Serialize)]
        enum OldError {
            _NoSuchGroup(u64),
            NotLeader { leader: Option<u64> },
        }
        let old: Result<(), OldError> = Err(OldError::NotLeader { leader: Some(300) });
        assert_eq!(encode(&result), encode(&old));
    }
}
