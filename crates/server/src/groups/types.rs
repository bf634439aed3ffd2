//! The Raft type configuration shared by every group of a node (tables and the catalog).
//!
//! A log entry's application payload is an already-encoded command ([`Request`]): for a table
//! group an `mvcc.v1.Command` (the replication wire format, so the leader ships log entries
//! without re-encoding), for the catalog a [`crate::catalog::CatalogCommand`] as JSON. The
//! bytes are encoded once at the API edge, stored verbatim in the log, decoded once on apply.

use std::fmt;

use armada_storage::Revision;
use armada_table::CommandOutcome;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

openraft::declare_raft_types!(
    pub TypeConfig:
        D = Request,
        R = Response,
);

/// An encoded command proposed to a group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request(pub Bytes);

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Request({} bytes)", self.0.len())
    }
}

/// What applying one entry produced, handed back to the proposer.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Response {
    /// A Raft-internal entry (blank, membership) or a command with no answer.
    #[default]
    Empty,
    /// A table command's answer: the revision to report and the typed outcome (converted
    /// to a gRPC response by `api/convert.rs`).
    Table {
        revision: Revision,
        outcome: CommandOutcome,
    },
    /// A command the state machine refused, deterministically, without changing anything.
    Rejected(String),
    /// A catalog command's answer.
    Catalog(crate::catalog::state::CatalogOutcome),
}

// Responses cross nodes: a write forwarded to the Raft leader comes back as
// `PeerResponse::Write` or `WriteBatch` (cluster/rpc.rs), postcard-encoded: table outcomes as
// their serde form (kvs as protobuf bytes), the rest as they are.
// Variants are appended, never reordered: postcard encodes a variant's position.
#[derive(Serialize, Deserialize)]
enum ResponseWire {
    Empty,
    Table {
        revision: u64,
        outcome: CommandOutcome,
    },
    Rejected(String),
    Catalog(crate::catalog::state::CatalogOutcome),
}

impl Serialize for Response {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let wire = match self {
            Response::Empty => ResponseWire::Empty,
            Response::Table { revision, outcome } => ResponseWire::Table {
                revision: revision.get(),
                outcome: outcome.clone(),
            },
            Response::Rejected(message) => ResponseWire::Rejected(message.clone()),
            Response::Catalog(outcome) => ResponseWire::Catalog(outcome.clone()),
        };
        wire.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Response {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match ResponseWire::deserialize(deserializer)? {
            ResponseWire::Empty => Response::Empty,
            ResponseWire::Table { revision, outcome } => Response::Table {
                revision: Revision(revision),
                outcome,
            },
            ResponseWire::Rejected(message) => Response::Rejected(message),
            ResponseWire::Catalog(outcome) => Response::Catalog(outcome),
        })
    }
}

pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
pub type RaftNodeId = u64;
pub type Node = openraft::BasicNode;

/// The part of the applied state that openraft needs back on restart; stored by the state
/// machine in the same batch as the data it covers.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RaftAppliedState {
    pub last_applied: Option<LogId>,
    pub last_membership: StoredMembership,
}

impl RaftAppliedState {
    pub fn encode(&self) -> Bytes {
        // A JSON encoding of two small structs cannot fail.
        Bytes::from(serde_json::to_vec(self).expect("applied state encodes"))
    }

    pub fn decode(bytes: &[u8]) -> std::io::Result<Self> {
        if bytes.is_empty() {
            return Ok(Self::default());
        }
        serde_json::from_slice(bytes).map_err(std::io::Error::other)
    }
}
