//! Shared by the table's integration tests: applying wire commands as the Raft glue does
//! (decode each entry once, apply the batch at consecutive log indices), and the wire form of
//! outcomes that the tests inspect or measure (the server's `api/convert.rs` does this in
//! production).

#![allow(dead_code)]

use armada_storage::LogIndex;
use armada_table::{
    AppliedPosition, ApplyEntry, ApplyOutcome, Command, CommandOutcome, DeleteOutcome, OpOutcome,
    PutOutcome, Table, TableError, pb,
};
use bytes::Bytes;
use pb::response_op::Response;

/// Applies `commands` (`None`: a blank entry) as entries at log indices `first..`; an entry
/// whose command does not validate is applied as a blank one and answers its rejection.
pub fn apply_wire(
    table: &Table,
    first: u64,
    commands: &[Option<pb::Command>],
    raft_state: Bytes,
) -> Result<(Vec<ApplyOutcome>, AppliedPosition), TableError> {
    let decoded: Vec<_> = commands
        .iter()
        .map(|command| command.clone().map(Command::from_wire).transpose())
        .collect();
    let entries: Vec<ApplyEntry<'_>> = decoded
        .iter()
        .enumerate()
        .map(|(at, command)| ApplyEntry {
            log_index: LogIndex(first + at as u64),
            command: command.as_ref().ok().and_then(Option::as_ref),
        })
        .collect();
    let applied = table.apply(&entries, raft_state)?;
    let outcomes = decoded
        .into_iter()
        .zip(applied.outcomes)
        .map(|(decoded, outcome)| match decoded {
            Err(rejection) => ApplyOutcome::Rejected(rejection),
            Ok(_) => outcome,
        })
        .collect();
    Ok((outcomes, applied.position))
}

/// Applies `commands` so that the last one is at log index `last`.
pub fn apply_at(table: &Table, last: u64, commands: &[pb::Command]) -> Vec<ApplyOutcome> {
    let first = last + 1 - commands.len() as u64;
    let commands: Vec<_> = commands.iter().cloned().map(Some).collect();
    apply_wire(table, first, &commands, Bytes::new()).unwrap().0
}

/// The per-op answers of an outcome, SEQUENCEs flattened, in the order of the old
/// `CommandResult.responses`.
pub fn op_outcomes(outcome: &CommandOutcome) -> Vec<OpOutcome> {
    match outcome {
        CommandOutcome::Empty => Vec::new(),
        CommandOutcome::Put(put) => vec![OpOutcome::Put(put.clone())],
        CommandOutcome::Delete(delete) => vec![OpOutcome::Delete(delete.clone())],
        CommandOutcome::PutBatch(puts) => puts.iter().cloned().map(OpOutcome::Put).collect(),
        CommandOutcome::DeleteBatch(deletes) => {
            deletes.iter().cloned().map(OpOutcome::Delete).collect()
        }
        CommandOutcome::Txn(txn) => txn.responses.clone(),
        CommandOutcome::Sequence(nested) => nested.iter().flat_map(op_outcomes).collect(),
    }
}

/// The wire form of one op's answer.
pub fn wire(op: OpOutcome) -> pb::ResponseOp {
    let response = match op {
        OpOutcome::Range(range) => Response::ResponseRange(pb::response_op::Range {
            kvs: range.kvs,
            more: range.more,
            count: range.count,
        }),
        OpOutcome::Put(PutOutcome { prev_kv }) => {
            Response::ResponsePut(pb::response_op::Put { prev_kv })
        }
        OpOutcome::Delete(DeleteOutcome { deleted, prev_kvs }) => {
            Response::ResponseDeleteRange(pb::response_op::DeleteRange { deleted, prev_kvs })
        }
    };
    pb::ResponseOp {
        response: Some(response),
    }
}

/// The wire responses of an outcome.
pub fn wire_responses(outcome: &CommandOutcome) -> Vec<pb::ResponseOp> {
    op_outcomes(outcome).into_iter().map(wire).collect()
}
