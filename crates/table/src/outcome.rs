//! What applying a command produced, as the table's own types.
//!
//! # Concept
//!
//! Every applied entry answers with an [`ApplyOutcome`]: either `Applied` — the revision the
//! proposer reports, a [`CommandOutcome`] shaped like the command (a put's previous key-value,
//! a delete's count and deleted pairs, a txn's branch and per-op answers, a SEQUENCE's nested
//! answers) and the [`Change`]s the entry made — or `Rejected`, deterministic and without
//! effect. The API layer converts outcomes to protobuf responses (`api/convert.rs` in the
//! server); the table never builds a response message.
//!
//! # Invariants
//!
//! * `changes` lists each key an entry changed, in the order the writes happened; a key
//!   written twice by one entry (two ops of a txn) appears twice, each with the value it
//!   replaced. A write of a SEQUENCE carries the revision it was stamped with (the nested
//!   command's leader index on a follower cluster).
//! * Outcomes cross nodes for forwarded writes (serde): their kvs travel as protobuf bytes.

use crate::command::Rejection;
use crate::{RangeOutcome, pb};
use armada_storage::Revision;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The result of one applied entry.
#[derive(Clone, Debug, PartialEq)]
pub enum ApplyOutcome {
    /// The command was applied (Raft blank and membership entries too, answering
    /// [`CommandOutcome::Empty`]). `revision` is the one reported to the proposer.
    Applied {
        revision: Revision,
        outcome: CommandOutcome,
        changes: Vec<Change>,
    },
    /// The command is invalid (deterministically, so on every replica); nothing changed.
    Rejected(Rejection),
}

/// The answer of an applied command, shaped like the command.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub enum CommandOutcome {
    /// No answer: a blank or membership entry, a DUMMY, a LOAD step.
    #[default]
    Empty,
    Put(PutOutcome),
    Delete(DeleteOutcome),
    PutBatch(Vec<PutOutcome>),
    DeleteBatch(Vec<DeleteOutcome>),
    Txn(TxnOutcome),
    /// The answers of a SEQUENCE's nested commands that were applied, in order (a replicated
    /// SEQUENCE leaves out the ones skipped or rejected).
    Sequence(Vec<CommandOutcome>),
}

impl CommandOutcome {
    /// The compare result of a TXN; `true` for every other command.
    pub fn succeeded(&self) -> bool {
        match self {
            CommandOutcome::Txn(txn) => txn.succeeded,
            _ => true,
        }
    }
}

/// A put's answer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PutOutcome {
    /// The key-value it replaced, when asked for and the key existed.
    #[serde(with = "wire_kv")]
    pub prev_kv: Option<pb::KeyValue>,
}

/// A delete's answer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DeleteOutcome {
    /// The exact number of keys deleted.
    pub deleted: i64,
    /// The deleted pairs in key order, when asked for, as far as they fit in the response.
    #[serde(with = "wire_kvs")]
    pub prev_kvs: Vec<pb::KeyValue>,
}

/// A txn's answer (a logged txn's, or a read-only txn's evaluated on a view).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TxnOutcome {
    /// Whether every compare held (the success branch ran).
    pub succeeded: bool,
    /// One answer per op of the branch that ran.
    pub responses: Vec<OpOutcome>,
}

/// The answer of one txn op.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum OpOutcome {
    Range(RangeOutcome),
    Put(PutOutcome),
    Delete(DeleteOutcome),
}

/// One key changed by an applied write: what the future Watch streams.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub key: Bytes,
    /// The live key-value before the write, [`Previous::Absent`] when there was none.
    pub prev_kv: Previous,
    /// The key-value written; `None` for a delete.
    pub kv: Option<pb::KeyValue>,
    /// The revision the write was stamped with.
    pub revision: Revision,
}

/// The key-value a change replaced.
#[derive(Clone, Debug, PartialEq)]
pub enum Previous {
    /// The key had no live version.
    Absent,
    /// The key's live version before the write.
    Kv(pb::KeyValue),
    /// The key existed with this create revision; its value was not read (a put that did
    /// not ask for its previous value and found the key in the create-revision cache, which
    /// saves the read — see `create_cache.rs`).
    NotRead { create_revision: Revision },
}

/// A kv as its protobuf bytes, for the serde of outcomes.
mod wire_kv {
    use crate::pb;
    use prost::Message;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(
        kv: &Option<pb::KeyValue>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        kv.as_ref()
            .map(Message::encode_to_vec)
            .serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<pb::KeyValue>, D::Error> {
        Option::<Vec<u8>>::deserialize(deserializer)?
            .map(|bytes| pb::KeyValue::decode(bytes.as_slice()))
            .transpose()
            .map_err(serde::de::Error::custom)
    }
}

/// Kvs as their protobuf bytes, for the serde of outcomes.
pub(crate) mod wire_kvs {
    use crate::pb;
    use prost::Message;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(
        kvs: &[pb::KeyValue],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        kvs.iter()
            .map(Message::encode_to_vec)
            .collect::<Vec<_>>()
            .serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<pb::KeyValue>, D::Error> {
        Vec::<Vec<u8>>::deserialize(deserializer)?
            .iter()
            .map(|bytes| pb::KeyValue::decode(bytes.as_slice()))
            .collect::<Result<_, _>>()
            .map_err(serde::de::Error::custom)
    }
}
