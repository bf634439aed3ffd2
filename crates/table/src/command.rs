//! The table's commands as its own types: decoded and validated in one place.
//!
//! # Concept
//!
//! The Raft log and the replication stream carry `mvcc.v1.Command` bytes, unchanged (so
//! replication and backups are byte-for-byte what they were). The state machine decodes each
//! entry once, here, into a [`Command`]: [`Command::decode`] for log bytes, [`Command::from_wire`]
//! for a decoded message. Everything that can be checked from the command alone is checked
//! here — known types and compare operators, required fields, key and value limits, compare
//! targets matching their operands, non-negative txn limits, SEQUENCE nesting — so apply
//! computes on values that are valid by construction and never digs into optional protobuf
//! fields. What depends on the table's state (the revision an entry is stamped with, the role
//! of the replica, the leader index applied so far, the staged load) is checked by apply.
//!
//! # Invariants
//!
//! * A [`Rejection`] is deterministic (it depends on the bytes alone), so every replica
//!   rejects the same entries; its message names the field and the limit.
//! * A replicated SEQUENCE ([`Command::Replicated`]) keeps each nested command's own decoding
//!   result: a command the leader cluster rejected is rejected again when applied, and its
//!   leader index is still consumed.

use crate::{MAX_KEY_BYTES, MAX_SEQUENCE_DEPTH, MAX_VALUE_BYTES, RangeEnd, RangeQuery, pb};
use armada_storage::LeaderIndex;
use bytes::Bytes;
use pb::command::CommandType;
use pb::compare::{CompareTarget, TargetUnion};
use pb::request_op::Request;
use std::fmt;

/// Why a command was refused without changing anything (the message names field and limit).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection(pub String);

impl Rejection {
    pub fn new(message: impl Into<String>) -> Rejection {
        Rejection(message.into())
    }

    pub fn message(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One validated table command.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// No data change; a follower's DUMMY may carry the leader index it advances to.
    Dummy {
        leader_index: Option<LeaderIndex>,
    },
    Put(Put),
    Delete(DeleteRange),
    /// PUT_BATCH: one put per record, all with the command's `prev_kvs`.
    PutBatch(Vec<Put>),
    /// DELETE_BATCH: one single-key delete per record.
    DeleteBatch(Vec<DeleteRange>),
    Txn(Txn),
    /// A SEQUENCE of this cluster's commands (every nested command is valid).
    Sequence(Vec<Command>),
    /// A SEQUENCE of the leader cluster's commands, each with its leader index.
    Replicated(Vec<Replicated>),
    /// Starts a staged load (`load.rs`).
    LoadBegin {
        load_id: u64,
        keep_revisions: bool,
    },
    /// Records of a staged load; checked against the load so far when applied.
    LoadChunk {
        load_id: u64,
        records: Vec<pb::KeyValue>,
    },
    /// Switches the table to the staged load of `count` records.
    LoadCommit {
        load_id: u64,
        count: u64,
        leader_index: Option<LeaderIndex>,
    },
}

/// A put of one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Put {
    pub key: Bytes,
    pub value: Bytes,
    /// Answer with the previous key-value.
    pub prev_kv: bool,
}

/// A delete of one key or a range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeleteRange {
    pub key: Bytes,
    pub range_end: RangeEnd,
    /// Answer with the deleted key-values (as far as they fit in the response).
    pub prev_kvs: bool,
}

/// A transaction: the ops of `success` when every compare holds, else those of `failure`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
}

/// One operation of a txn.
#[derive(Clone, Debug, PartialEq)]
pub enum TxnOp {
    Range(RangeQuery),
    Put(Put),
    Delete(DeleteRange),
}

/// A txn compare of the key (or every live key of the range) with an operand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compare {
    pub key: Bytes,
    pub range_end: RangeEnd,
    pub result: CompareResult,
    pub operand: CompareOperand,
}

/// How the stored side compares with the operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareResult {
    Equal,
    NotEqual,
    Greater,
    Less,
}

/// What a compare looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompareOperand {
    /// No operand: the key exists.
    Exists,
    Value(Bytes),
    ModRevision(i64),
    CreateRevision(i64),
}

/// A command of the leader cluster's log, replicated with its leader index.
#[derive(Clone, Debug, PartialEq)]
pub struct Replicated {
    pub leader_index: LeaderIndex,
    /// The nested command, or why the leader cluster rejected it as well.
    pub command: Result<Command, Rejection>,
}

impl Command {
    /// Decodes and validates the bytes of a log entry.
    pub fn decode(bytes: &[u8]) -> Result<Command, Rejection> {
        let wire = <pb::Command as prost::Message>::decode(bytes)
            .map_err(|error| Rejection(format!("undecodable command: {error}")))?;
        Command::from_wire(wire)
    }

    /// Validates a decoded `mvcc.v1.Command`.
    pub fn from_wire(wire: pb::Command) -> Result<Command, Rejection> {
        if wire.r#type == CommandType::Sequence as i32
            && wire
                .sequence
                .iter()
                .any(|nested| nested.leader_index.is_some())
        {
            return replicated_sequence(wire.sequence);
        }
        command(wire, 0)
    }

    /// The wire name of the command's type, as rejections name it.
    pub fn type_name(&self) -> &'static str {
        self.wire_type().as_str_name()
    }

    fn wire_type(&self) -> CommandType {
        match self {
            Command::Dummy { .. } => CommandType::Dummy,
            Command::Put(_) => CommandType::Put,
            Command::Delete(_) => CommandType::Delete,
            Command::PutBatch(_) => CommandType::PutBatch,
            Command::DeleteBatch(_) => CommandType::DeleteBatch,
            Command::Txn(_) => CommandType::Txn,
            Command::Sequence(_) | Command::Replicated(_) => CommandType::Sequence,
            Command::LoadBegin { .. } => CommandType::LoadBegin,
            Command::LoadChunk { .. } => CommandType::LoadChunk,
            Command::LoadCommit { .. } => CommandType::LoadCommit,
        }
    }

    /// A staged-load step: applied alone, in its own batch (`Table::apply`).
    pub fn is_load(&self) -> bool {
        matches!(
            self,
            Command::LoadBegin { .. } | Command::LoadChunk { .. } | Command::LoadCommit { .. }
        )
    }

    /// Whether the command writes data (and so needs a revision other than 0).
    pub fn writes(&self) -> bool {
        !matches!(
            self,
            Command::Dummy { .. } | Command::Sequence(_) | Command::Replicated(_)
        )
    }

    /// The command's type number on the wire.
    pub fn type_number(&self) -> i32 {
        self.wire_type() as i32
    }

    /// Writes in the command, counting nested ones: a measure of how long applying it takes.
    pub fn write_count(&self) -> usize {
        match self {
            Command::PutBatch(puts) => 1 + puts.len(),
            Command::DeleteBatch(deletes) => 1 + deletes.len(),
            Command::LoadChunk { records, .. } => 1 + records.len(),
            Command::Txn(txn) => 1 + txn.success.len() + txn.failure.len(),
            Command::Sequence(nested) => 1 + nested.iter().map(Command::write_count).sum::<usize>(),
            Command::Replicated(nested) => {
                1 + nested
                    .iter()
                    .map(|replicated| replicated.command.as_ref().map_or(1, Command::write_count))
                    .sum::<usize>()
            }
            _ => 1,
        }
    }
}

/// A replicated SEQUENCE: every nested command carries its leader index.
fn replicated_sequence(sequence: Vec<pb::Command>) -> Result<Command, Rejection> {
    let mut replicated = Vec::with_capacity(sequence.len());
    for nested in sequence {
        let Some(index) = nested.leader_index else {
            return Err(Rejection::new(
                "a replicated SEQUENCE mixes commands with and without a leader index",
            ));
        };
        // A nested LOAD decodes as itself (not as a LOAD misplaced in a SEQUENCE), so that
        // apply refuses the whole entry: LOAD commands never leave the leader cluster.
        let depth = if is_load_type(nested.r#type) { 0 } else { 1 };
        replicated.push(Replicated {
            leader_index: LeaderIndex(index),
            command: command(nested, depth),
        });
    }
    Ok(Command::Replicated(replicated))
}

/// Validates one command at SEQUENCE nesting `depth` (0: the entry's own command).
fn command(wire: pb::Command, depth: usize) -> Result<Command, Rejection> {
    let kind = CommandType::try_from(wire.r#type)
        .map_err(|_| Rejection(format!("unknown command type {}", wire.r#type)))?;
    if depth > 0 && is_load_type(wire.r#type) {
        return Err(Rejection(format!(
            "{} must be applied alone, outside a SEQUENCE",
            kind.as_str_name()
        )));
    }
    let prev_kvs = wire.prev_kvs;
    Ok(match kind {
        CommandType::Put => {
            let kv = wire.kv.ok_or_else(|| Rejection::new("PUT without kv"))?;
            Command::Put(put(kv.key, kv.value, prev_kvs)?)
        }
        CommandType::Delete => {
            let kv = wire.kv.ok_or_else(|| Rejection::new("DELETE without kv"))?;
            Command::Delete(DeleteRange {
                key: kv.key,
                range_end: RangeEnd::from_wire(&wire.range_end.unwrap_or_default()),
                prev_kvs,
            })
        }
        CommandType::Dummy => Command::Dummy {
            leader_index: wire.leader_index.map(LeaderIndex),
        },
        CommandType::PutBatch => Command::PutBatch(
            wire.batch
                .into_iter()
                .map(|kv| put(kv.key, kv.value, prev_kvs))
                .collect::<Result<_, _>>()?,
        ),
        CommandType::DeleteBatch => Command::DeleteBatch(
            wire.batch
                .into_iter()
                .map(|kv| DeleteRange {
                    key: kv.key,
                    range_end: RangeEnd::Single,
                    prev_kvs,
                })
                .collect(),
        ),
        CommandType::Txn => Command::Txn(Txn::from_wire(
            wire.txn.ok_or_else(|| Rejection::new("TXN without txn"))?,
        )?),
        CommandType::Sequence => sequence(wire.sequence, depth)?,
        CommandType::LoadBegin => Command::LoadBegin {
            load_id: wire.load_id,
            keep_revisions: wire.load_keep_revisions,
        },
        CommandType::LoadChunk => Command::LoadChunk {
            load_id: wire.load_id,
            records: wire.batch,
        },
        CommandType::LoadCommit => Command::LoadCommit {
            load_id: wire.load_id,
            count: wire.load_count,
            leader_index: wire.leader_index.map(LeaderIndex),
        },
    })
}

fn is_load_type(number: i32) -> bool {
    matches!(
        CommandType::try_from(number),
        Ok(CommandType::LoadBegin | CommandType::LoadChunk | CommandType::LoadCommit)
    )
}

/// A SEQUENCE of this cluster's commands at nesting `depth`.
fn sequence(nested: Vec<pb::Command>, depth: usize) -> Result<Command, Rejection> {
    if depth >= MAX_SEQUENCE_DEPTH {
        return Err(Rejection(format!(
            "SEQUENCE nested deeper than {MAX_SEQUENCE_DEPTH}"
        )));
    }
    if nested.iter().any(|nested| nested.leader_index.is_some()) {
        return Err(Rejection::new(
            "a replicated SEQUENCE must be the entry's own command",
        ));
    }
    Ok(Command::Sequence(
        nested
            .into_iter()
            .map(|nested| command(nested, depth + 1))
            .collect::<Result<_, _>>()?,
    ))
}

fn put(key: Bytes, value: Bytes, prev_kv: bool) -> Result<Put, Rejection> {
    check_put(&key, &value)?;
    Ok(Put {
        key,
        value,
        prev_kv,
    })
}

/// The limits of a written key and value (SPEC §2).
pub(crate) fn check_put(key: &[u8], value: &[u8]) -> Result<(), Rejection> {
    if key.is_empty() {
        return Err(Rejection::new("key must be set"));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(Rejection(format!(
            "key length {} exceeds {MAX_KEY_BYTES} bytes",
            key.len()
        )));
    }
    if value.len() > MAX_VALUE_BYTES {
        return Err(Rejection(format!(
            "value length {} exceeds {MAX_VALUE_BYTES} bytes",
            value.len()
        )));
    }
    Ok(())
}

impl Txn {
    /// Validates a wire txn (a logged TXN's, or a read-only txn evaluated on a view).
    pub fn from_wire(txn: pb::Txn) -> Result<Txn, Rejection> {
        Ok(Txn {
            compares: txn
                .compare
                .into_iter()
                .map(Compare::from_wire)
                .collect::<Result<_, _>>()?,
            success: txn
                .success
                .into_iter()
                .map(TxnOp::from_wire)
                .collect::<Result<_, _>>()?,
            failure: txn
                .failure
                .into_iter()
                .map(TxnOp::from_wire)
                .collect::<Result<_, _>>()?,
        })
    }

    /// Whether every op (of both branches) only reads.
    pub fn is_read_only(&self) -> bool {
        self.success
            .iter()
            .chain(&self.failure)
            .all(|op| matches!(op, TxnOp::Range(_)))
    }

    /// Whether a put of the ops asks for its previous key-value (the one answer that can
    /// refuse a txn, `response_budget.rs`).
    pub(crate) fn may_refuse(ops: &[TxnOp]) -> bool {
        ops.iter()
            .any(|op| matches!(op, TxnOp::Put(put) if put.prev_kv))
    }
}

impl Compare {
    fn from_wire(compare: pb::Compare) -> Result<Compare, Rejection> {
        use pb::compare::CompareResult as Wire;
        let result = match Wire::try_from(compare.result) {
            Ok(Wire::Equal) => CompareResult::Equal,
            Ok(Wire::NotEqual) => CompareResult::NotEqual,
            Ok(Wire::Greater) => CompareResult::Greater,
            Ok(Wire::Less) => CompareResult::Less,
            Err(_) => {
                return Err(Rejection(format!(
                    "unknown compare result {}",
                    compare.result
                )));
            }
        };
        let target = CompareTarget::try_from(compare.target)
            .map_err(|_| Rejection(format!("unknown compare target {}", compare.target)))?;
        let operand = match (target, compare.target_union) {
            (_, None) => CompareOperand::Exists,
            (CompareTarget::Value, Some(TargetUnion::Value(value))) => CompareOperand::Value(value),
            (CompareTarget::Mod, Some(TargetUnion::ModRevision(revision))) => {
                CompareOperand::ModRevision(revision)
            }
            (CompareTarget::Create, Some(TargetUnion::CreateRevision(revision))) => {
                CompareOperand::CreateRevision(revision)
            }
            (target, Some(_)) => {
                return Err(Rejection(format!(
                    "compare target {} does not match its operand",
                    target.as_str_name()
                )));
            }
        };
        Ok(Compare {
            range_end: RangeEnd::from_wire(&compare.range_end),
            key: compare.key,
            result,
            operand,
        })
    }
}

impl TxnOp {
    fn from_wire(op: pb::RequestOp) -> Result<TxnOp, Rejection> {
        Ok(
            match op
                .request
                .ok_or_else(|| Rejection::new("txn op without request"))?
            {
                Request::RequestRange(range) => {
                    let limit = u64::try_from(range.limit)
                        .map_err(|_| Rejection::new("limit must not be negative"))?;
                    TxnOp::Range(RangeQuery {
                        limit,
                        keys_only: range.keys_only,
                        count_only: range.count_only,
                        ..RangeQuery::new(range.key, RangeEnd::from_wire(&range.range_end))
                    })
                }
                Request::RequestPut(request) => {
                    TxnOp::Put(put(request.key, request.value, request.prev_kv)?)
                }
                Request::RequestDeleteRange(delete) => TxnOp::Delete(DeleteRange {
                    range_end: RangeEnd::from_wire(&delete.range_end),
                    key: delete.key,
                    prev_kvs: delete.prev_kv,
                }),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn wire_put(key: &'static [u8], value: Vec<u8>) -> pb::Command {
        pb::Command {
            r#type: CommandType::Put as i32,
            kv: Some(pb::KeyValue {
                key: Bytes::from_static(key),
                value: Bytes::from(value),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn rejection(wire: pb::Command) -> String {
        match Command::from_wire(wire) {
            Ok(command) => panic!("accepted {command:?}"),
            Err(rejection) => rejection.0,
        }
    }

    fn txn_command(txn: pb::Txn) -> pb::Command {
        pb::Command {
            r#type: CommandType::Txn as i32,
            txn: Some(txn),
            ..Default::default()
        }
    }

    #[test]
    fn a_put_decodes_from_log_bytes() {
        let mut wire = wire_put(b"k", b"v".to_vec());
        wire.prev_kvs = true;
        let command = Command::decode(&wire.encode_to_vec()).unwrap();
        assert_eq!(
            command,
            Command::Put(Put {
                key: Bytes::from_static(b"k"),
                value: Bytes::from_static(b"v"),
                prev_kv: true,
            })
        );
        assert!(command.writes());
        assert_eq!(command.type_name(), "PUT");
    }

    #[test]
    fn undecodable_bytes_are_rejected() {
        let message = Command::decode(&[0xff, 0xff, 0xff]).unwrap_err().0;
        assert!(message.starts_with("undecodable command: "), "{message}");
    }

    #[test]
    fn key_and_value_limits_name_the_limit() {
        assert_eq!(rejection(wire_put(b"", Vec::new())), "key must be set");
        let long_key: &'static [u8] = Box::leak(vec![b'k'; MAX_KEY_BYTES + 1].into_boxed_slice());
        assert_eq!(
            rejection(wire_put(long_key, Vec::new())),
            format!("key length 1025 exceeds {MAX_KEY_BYTES} bytes")
        );
        assert_eq!(
            rejection(wire_put(b"k", vec![0; MAX_VALUE_BYTES + 1])),
            format!("value length 2097153 exceeds {MAX_VALUE_BYTES} bytes")
        );
        assert!(Command::from_wire(wire_put(b"k", vec![0; MAX_VALUE_BYTES])).is_ok());
    }

    #[test]
    fn missing_parts_and_unknown_types_are_rejected() {
        let unknown = pb::Command {
            r#type: 42,
            ..Default::default()
        };
        assert_eq!(rejection(unknown), "unknown command type 42");
        for (kind, message) in [
            (CommandType::Put, "PUT without kv"),
            (CommandType::Delete, "DELETE without kv"),
            (CommandType::Txn, "TXN without txn"),
        ] {
            let wire = pb::Command {
                r#type: kind as i32,
                ..Default::default()
            };
            assert_eq!(rejection(wire), message);
        }
    }

    #[test]
    fn txn_compares_and_ops_are_checked() {
        let mismatched = pb::Compare {
            target: CompareTarget::Mod as i32,
            target_union: Some(TargetUnion::Value(Bytes::new())),
            ..Default::default()
        };
        let txn = pb::Txn {
            compare: vec![mismatched],
            ..Default::default()
        };
        assert_eq!(
            rejection(txn_command(txn)),
            "compare target MOD does not match its operand"
        );
        let bad_result = pb::Compare {
            result: 9,
            ..Default::default()
        };
        let txn = pb::Txn {
            compare: vec![bad_result],
            ..Default::default()
        };
        assert_eq!(rejection(txn_command(txn)), "unknown compare result 9");
        let bad_target = pb::Compare {
            target: 7,
            ..Default::default()
        };
        let txn = pb::Txn {
            compare: vec![bad_target],
            ..Default::default()
        };
        assert_eq!(rejection(txn_command(txn)), "unknown compare target 7");
        let no_request = pb::Txn {
            failure: vec![pb::RequestOp { request: None }],
            ..Default::default()
        };
        assert_eq!(rejection(txn_command(no_request)), "txn op without request");
        let negative = pb::Txn {
            success: vec![pb::RequestOp {
                request: Some(Request::RequestRange(pb::request_op::Range {
                    key: Bytes::from_static(b"k"),
                    limit: -1,
                    ..Default::default()
                })),
            }],
            ..Default::default()
        };
        assert_eq!(
            rejection(txn_command(negative)),
            "limit must not be negative"
        );
        let empty_put = pb::Txn {
            success: vec![pb::RequestOp {
                request: Some(Request::RequestPut(pb::request_op::Put::default())),
            }],
            ..Default::default()
        };
        assert_eq!(rejection(txn_command(empty_put)), "key must be set");
    }

    #[test]
    fn an_existence_compare_has_no_operand() {
        let exists = pb::Compare {
            target: CompareTarget::Create as i32,
            key: Bytes::from_static(b"k"),
            ..Default::default()
        };
        let txn = pb::Txn {
            compare: vec![exists],
            ..Default::default()
        };
        let Command::Txn(txn) = Command::from_wire(txn_command(txn)).unwrap() else {
            panic!("not a txn")
        };
        assert_eq!(txn.compares[0].operand, CompareOperand::Exists);
        assert!(txn.is_read_only());
    }

    #[test]
    fn sequences_are_checked_to_their_depth() {
        let sequence = |nested: Vec<pb::Command>| pb::Command {
            r#type: CommandType::Sequence as i32,
            sequence: nested,
            ..Default::default()
        };
        assert_eq!(
            rejection(sequence(vec![
                wire_put(b"a", Vec::new()),
                wire_put(b"", Vec::new())
            ])),
            "key must be set"
        );
        let mut deep = sequence(Vec::new());
        for _ in 0..MAX_SEQUENCE_DEPTH {
            deep = sequence(vec![deep]);
        }
        assert_eq!(
            rejection(deep),
            format!("SEQUENCE nested deeper than {MAX_SEQUENCE_DEPTH}")
        );
        let load = pb::Command {
            r#type: CommandType::LoadBegin as i32,
            load_id: 1,
            ..Default::default()
        };
        assert_eq!(
            rejection(sequence(vec![load])),
            "LOAD_BEGIN must be applied alone, outside a SEQUENCE"
        );
    }

    #[test]
    fn a_replicated_sequence_keeps_each_nested_outcome() {
        let replicated = |index: u64, mut command: pb::Command| {
            command.leader_index = Some(index);
            command
        };
        let wire = pb::Command {
            r#type: CommandType::Sequence as i32,
            sequence: vec![
                replicated(3, wire_put(b"a", Vec::new())),
                replicated(4, wire_put(b"", Vec::new())),
            ],
            ..Default::default()
        };
        let Command::Replicated(nested) = Command::from_wire(wire.clone()).unwrap() else {
            panic!("not replicated")
        };
        assert_eq!(nested[0].leader_index, LeaderIndex(3));
        assert!(nested[0].command.is_ok());
        assert_eq!(nested[1].leader_index, LeaderIndex(4));
        assert_eq!(nested[1].command, Err(Rejection::new("key must be set")));
        let mut mixed = wire;
        mixed.sequence.push(wire_put(b"b", Vec::new()));
        assert_eq!(
            rejection(mixed),
            "a replicated SEQUENCE mixes commands with and without a leader index"
        );
    }
}
