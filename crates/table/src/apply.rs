//! Applying commands: validation, then execution against an overlay of pending writes.
//!
//! One [`Applier`] serves one `Table::apply` call. Reads of an entry see the stored state (a
//! snapshot taken under the apply lock) merged with the writes of earlier entries and earlier
//! txn ops (the overlay), which gives later-entries-see-earlier-ones and read-your-own-writes
//! inside a txn. At the end the overlay becomes one write batch: each touched key is written
//! once to latest, each `(key, revision)` once to history.
//!
//! A command is validated completely ([`validate`]) before it executes, so the only failures
//! during execution are storage errors, and a rejected command changes nothing.

use crate::error::Result;
use crate::generation::Generation;
use crate::read::{Latest, Overlay, Reader, scan_bounds};
use crate::response_budget::{ResponseBudget, kv_bytes};
use crate::{
    ApplyEntry, ApplyOutcome, MAX_KEY_BYTES, MAX_RESPONSE_BYTES, MAX_SEQUENCE_DEPTH,
    MAX_VALUE_BYTES, RangeEnd, pb,
};
use armada_storage::fjall::{Database, OwnedWriteBatch, Snapshot};
use armada_storage::mvcc::{self, HistoryVersion};
use armada_storage::{LeaderIndex, Revision};
use bytes::Bytes;
use pb::command::CommandType;
use pb::compare::{CompareResult, CompareTarget, TargetUnion};
use pb::request_op::Request;
use pb::response_op::Response;
use std::collections::BTreeMap;
use std::ops::ControlFlow;

/// A key written to latest by an apply and its new create revision (`None`: deleted).
pub(crate) type WrittenKey = (Bytes, Option<Revision>);

/// Pending history versions: `(key, revision) → Some((create_revision, value))` or tombstone.
type PendingHistory = BTreeMap<(Bytes, Revision), Option<(Revision, Bytes)>>;

/// A validated command's execution: its txn compare result (`true` for other commands), or a
/// refusal found while executing (a txn response over the limit) that changed nothing.
type Executed = std::result::Result<bool, String>;

pub(crate) struct Applier<'a> {
    snapshot: &'a Snapshot,
    generation: &'a Generation,
    overlay: Overlay,
    history: PendingHistory,
    /// The last leader index applied (stored before this batch, then carried by its commands).
    leader_index: Option<LeaderIndex>,
    /// A follower replica accepts only replicated commands.
    follower: bool,
}

impl<'a> Applier<'a> {
    pub fn new(
        snapshot: &'a Snapshot,
        generation: &'a Generation,
        leader_index: Option<LeaderIndex>,
        follower: bool,
    ) -> Self {
        Applier {
            snapshot,
            generation,
            overlay: Overlay::new(),
            history: PendingHistory::new(),
            leader_index,
            follower,
        }
    }

    /// The last leader index applied so far.
    pub fn leader_index(&self) -> Option<LeaderIndex> {
        self.leader_index
    }

    fn reader(&self) -> Reader<'_> {
        Reader::new(self.snapshot, self.generation, Some(&self.overlay))
    }

    /// Applies one entry.
    pub fn apply_entry(&mut self, entry: &ApplyEntry<'_>) -> Result<ApplyOutcome> {
        let mut result = pb::CommandResult {
            responses: Vec::new(),
            revision: entry.revision.get(),
        };
        let Some(command) = entry.command else {
            return Ok(ApplyOutcome::Applied {
                result,
                succeeded: true,
            });
        };
        if is_replicated_sequence(command) {
            return self.replicated_sequence(command, result);
        }
        let leader_index = carried_leader_index(command);
        let checked = if self.follower && !is_follower_command(command) {
            Err("a follower table applies only replicated commands".to_string())
        } else {
            validate(command, entry.revision, 0)
        };
        if let Some(index) = leader_index {
            self.leader_index = Some(index);
        }
        if let Err(message) = checked {
            return Ok(ApplyOutcome::Rejected(message));
        }
        match self.command(command, entry.revision, &mut result.responses)? {
            Ok(succeeded) => Ok(ApplyOutcome::Applied { result, succeeded }),
            Err(message) => Ok(ApplyOutcome::Rejected(message)),
        }
    }

    /// Applies a SEQUENCE of the leader cluster's commands, each carrying its leader index.
    ///
    /// Replication is exactly-once by construction: commands at or below the applied leader
    /// index are skipped (a retried or duplicated proposal), the next one must follow it
    /// directly (the leader's indices are contiguous), and a command the leader rejected is
    /// rejected here the same way (its index still counts). A gap rejects the whole entry.
    fn replicated_sequence(
        &mut self,
        command: &pb::Command,
        mut result: pb::CommandResult,
    ) -> Result<ApplyOutcome> {
        let mut next = self.leader_index.map_or(0, LeaderIndex::get);
        let mut accepted = Vec::with_capacity(command.sequence.len());
        for nested in &command.sequence {
            let Some(index) = nested.leader_index else {
                return Ok(ApplyOutcome::Rejected(
                    "a replicated SEQUENCE mixes commands with and without a leader index".into(),
                ));
            };
            if index <= next {
                continue;
            }
            if index != next + 1 {
                return Ok(ApplyOutcome::Rejected(format!(
                    "replicated command at leader index {index} does not follow the applied leader index {next}"
                )));
            }
            if !is_follower_replayable(nested) {
                return Ok(ApplyOutcome::Rejected(format!(
                    "command type {} at leader index {index} cannot be replicated",
                    nested.r#type
                )));
            }
            accepted.push(nested);
            next = index;
        }
        for nested in accepted {
            let index = nested.leader_index.expect("checked above");
            let revision = Revision::from_leader_index(LeaderIndex(index));
            // The leader rejected an invalid command the same way: no change, index consumed.
            // A command refused while executing changed nothing here either.
            if validate(nested, revision, 1).is_ok() {
                let _refused_alike = self.command(nested, revision, &mut result.responses)?;
            }
            self.leader_index = Some(LeaderIndex(index));
        }
        if let Some(index) = self.leader_index {
            result.revision = index.get();
        }
        Ok(ApplyOutcome::Applied {
            result,
            succeeded: true,
        })
    }

    /// Executes a validated command.
    fn command(
        &mut self,
        command: &pb::Command,
        revision: Revision,
        responses: &mut Vec<pb::ResponseOp>,
    ) -> Result<Executed> {
        let kind = CommandType::try_from(command.r#type).expect("validated command type");
        match kind {
            CommandType::Put => {
                let kv = command.kv.as_ref().expect("validated PUT has kv");
                let prev_kv = self.put(&kv.key, &kv.value, revision, command.prev_kvs)?;
                responses.push(put_response(prev_kv));
            }
            CommandType::Delete => {
                let kv = command.kv.as_ref().expect("validated DELETE has kv");
                let range_end = RangeEnd::from_wire(&command.range_end.clone().unwrap_or_default());
                let prev_budget = command.prev_kvs.then_some(MAX_RESPONSE_BYTES);
                let (deleted, _) = self.delete(&kv.key, &range_end, revision, prev_budget)?;
                responses.push(deleted);
            }
            CommandType::Dummy => {}
            CommandType::PutBatch => {
                for kv in &command.batch {
                    let prev_kv = self.put(&kv.key, &kv.value, revision, command.prev_kvs)?;
                    responses.push(put_response(prev_kv));
                }
            }
            CommandType::DeleteBatch => {
                let prev_budget = command.prev_kvs.then_some(MAX_RESPONSE_BYTES);
                for kv in &command.batch {
                    let (deleted, _) =
                        self.delete(&kv.key, &RangeEnd::Single, revision, prev_budget)?;
                    responses.push(deleted);
                }
            }
            CommandType::Txn => {
                let txn = command.txn.as_ref().expect("validated TXN has txn");
                return self.txn(txn, revision, responses);
            }
            CommandType::Sequence => {
                // Like a replicated SEQUENCE: a refused nested command changed nothing, the
                // others apply.
                for nested in &command.sequence {
                    let _refused =
                        self.command(nested, nested_revision(nested, revision), responses)?;
                }
            }
            CommandType::LoadBegin | CommandType::LoadChunk | CommandType::LoadCommit => {
                unreachable!("validation rejects LOAD commands outside Table::apply_load")
            }
        }
        Ok(Ok(true))
    }

    fn put(
        &mut self,
        key: &Bytes,
        value: &Bytes,
        revision: Revision,
        want_prev: bool,
    ) -> Result<Option<pb::KeyValue>> {
        let previous = if want_prev {
            self.reader().get(key)?
        } else {
            None
        };
        let create_revision = match &previous {
            Some(previous) => previous.create_revision,
            None if want_prev => revision,
            None => self.create_revision_of(key)?.unwrap_or(revision),
        };
        self.history.insert(
            (key.clone(), revision),
            Some((create_revision, value.clone())),
        );
        let latest = Latest {
            create_revision,
            mod_revision: revision,
            value: value.clone(),
        };
        self.overlay.insert(key.clone(), Some(latest));
        Ok(previous.map(|previous| previous.to_key_value(key.clone())))
    }

    /// The create revision of `key`'s live version as this batch sees it: the overlay, then
    /// the generation's create-revision cache, then the stored record.
    fn create_revision_of(&self, key: &[u8]) -> Result<Option<Revision>> {
        if let Some(pending) = self.overlay.get(key) {
            return Ok(pending.as_ref().map(|latest| latest.create_revision));
        }
        if let Some(cached) = self.generation.create_revisions.get(key) {
            return Ok(Some(cached));
        }
        Ok(self.reader().get(key)?.map(|latest| latest.create_revision))
    }

    /// Deletes `key` (or the range); `deleted` is always the exact number of keys deleted.
    /// With `prev_budget`, `prev_kvs` holds the deleted pairs in key order as far as they fit in
    /// that many bytes (as elements of a repeated field), which are also returned.
    fn delete(
        &mut self,
        key: &Bytes,
        range_end: &RangeEnd,
        revision: Revision,
        prev_budget: Option<usize>,
    ) -> Result<(pb::ResponseOp, usize)> {
        let mut doomed: Vec<(Bytes, Latest)> = Vec::new();
        if *range_end == RangeEnd::Single {
            if let Some(latest) = self.reader().get(key)? {
                doomed.push((key.clone(), latest));
            }
        } else if let Some(bounds) = scan_bounds(key, range_end, None) {
            self.reader().scan(&bounds, |key, latest| {
                doomed.push((key, latest));
                ControlFlow::Continue(())
            })?;
        }
        let deleted = i64::try_from(doomed.len()).unwrap_or(i64::MAX);
        let mut prev_kvs = Vec::new();
        let mut prev_bytes = 0;
        let mut prev_full = prev_budget.is_none();
        for (key, latest) in doomed {
            if !prev_full && let Some(budget) = prev_budget {
                let kv = latest.to_key_value(key.clone());
                let bytes = kv_bytes(&kv);
                if prev_bytes + bytes <= budget {
                    prev_bytes += bytes;
                    prev_kvs.push(kv);
                } else {
                    prev_full = true;
                }
            }
            self.history.insert((key.clone(), revision), None);
            self.overlay.insert(key, None);
        }
        let response = pb::ResponseOp {
            response: Some(Response::ResponseDeleteRange(
                pb::response_op::DeleteRange { deleted, prev_kvs },
            )),
        };
        Ok((response, prev_bytes))
    }

    /// Executes a txn within the response budget ([`crate::response_budget`]); refused (with
    /// its earlier ops rolled back) when a put's `prev_kv` does not fit.
    fn txn(
        &mut self,
        txn: &pb::Txn,
        revision: Revision,
        responses: &mut Vec<pb::ResponseOp>,
    ) -> Result<Executed> {
        let succeeded = compares_hold(&self.reader(), &txn.compare)?;
        let ops = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        // Only a put's prev_kv can refuse the txn; keep what to roll back to only then.
        let may_refuse = ops
            .iter()
            .any(|op| matches!(&op.request, Some(Request::RequestPut(put)) if put.prev_kv));
        let saved = may_refuse.then(|| (self.overlay.clone(), self.history.clone()));
        match self.txn_ops(ops, revision)? {
            Ok(mut done) => {
                responses.append(&mut done);
                Ok(Ok(succeeded))
            }
            Err(message) => {
                let (overlay, history) = saved.expect("only a put's prev_kv refuses a txn");
                self.overlay = overlay;
                self.history = history;
                Ok(Err(message))
            }
        }
    }

    fn txn_ops(
        &mut self,
        ops: &[pb::RequestOp],
        revision: Revision,
    ) -> Result<std::result::Result<Vec<pb::ResponseOp>, String>> {
        let mut budget = ResponseBudget::for_ops(ops.len());
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let response = match op.request.as_ref().expect("validated txn op") {
                Request::RequestRange(range) => budget.range(&self.reader(), range)?,
                Request::RequestPut(put) => {
                    let prev_kv = self.put(&put.key, &put.value, revision, put.prev_kv)?;
                    if let Some(prev_kv) = &prev_kv
                        && let Err(message) = budget.charge_prev_kv(prev_kv)
                    {
                        return Ok(Err(message));
                    }
                    put_response(prev_kv)
                }
                Request::RequestDeleteRange(delete) => {
                    let range_end = RangeEnd::from_wire(&delete.range_end);
                    let prev_budget = delete.prev_kv.then_some(budget.remaining());
                    let (response, prev_bytes) =
                        self.delete(&delete.key, &range_end, revision, prev_budget)?;
                    budget.charge_bytes(prev_bytes);
                    response
                }
            };
            responses.push(response);
        }
        Ok(Ok(responses))
    }

    /// The write batch of everything applied (the caller adds the position and commits), and
    /// each key written to latest with its new create revision (`None`: deleted), for the
    /// create-revision cache once the batch has committed.
    pub fn into_batch(self, database: &Database) -> Result<(OwnedWriteBatch, Vec<WrittenKey>)> {
        let mut batch = database.batch();
        let mut written = Vec::with_capacity(self.overlay.len());
        for (key, latest) in self.overlay {
            match latest {
                Some(latest) => {
                    written.push((key.clone(), Some(latest.create_revision)));
                    batch.insert(
                        &self.generation.latest,
                        key,
                        mvcc::encode_latest(
                            latest.create_revision,
                            latest.mod_revision,
                            &latest.value,
                        ),
                    );
                }
                None => {
                    written.push((key.clone(), None));
                    batch.remove(&self.generation.latest, key);
                }
            }
        }
        for ((key, revision), version) in self.history {
            let version = match &version {
                Some((create_revision, value)) => HistoryVersion::Put {
                    create_revision: *create_revision,
                    value: value.as_ref(),
                },
                None => HistoryVersion::Tombstone,
            };
            batch.insert(
                &self.generation.history,
                mvcc::encode_history_key(&key, revision),
                mvcc::encode_history_version(&version),
            );
        }
        Ok((batch, written))
    }
}

fn put_response(prev_kv: Option<pb::KeyValue>) -> pb::ResponseOp {
    pb::ResponseOp {
        response: Some(Response::ResponsePut(pb::response_op::Put { prev_kv })),
    }
}

/// A command nested in a SEQUENCE that carries a leader index is stamped with it, so a
/// replicated write has the same revision in every cluster.
fn nested_revision(nested: &pb::Command, revision: Revision) -> Revision {
    nested.leader_index.map_or(revision, |index| {
        Revision::from_leader_index(LeaderIndex(index))
    })
}

/// A SEQUENCE whose commands carry leader indices: a batch replicated from the leader cluster.
fn is_replicated_sequence(command: &pb::Command) -> bool {
    command.r#type == CommandType::Sequence as i32
        && command
            .sequence
            .iter()
            .any(|nested| nested.leader_index.is_some())
}

/// Top-level commands a follower replica accepts besides replicated SEQUENCEs.
fn is_follower_command(command: &pb::Command) -> bool {
    command.r#type == CommandType::Dummy as i32
}

/// Commands of the leader's log a follower replays (LOAD commands never leave the leader).
fn is_follower_replayable(command: &pb::Command) -> bool {
    !matches!(
        CommandType::try_from(command.r#type),
        Ok(CommandType::LoadBegin | CommandType::LoadChunk | CommandType::LoadCommit)
    )
}

/// The leader index a command carries: its own, else the last one nested in a SEQUENCE.
fn carried_leader_index(command: &pb::Command) -> Option<LeaderIndex> {
    command
        .leader_index
        .map(LeaderIndex)
        .or_else(|| command.sequence.iter().rev().find_map(carried_leader_index))
}

/// Whether every compare holds (no compares: true).
pub(crate) fn compares_hold(reader: &Reader<'_>, compares: &[pb::Compare]) -> Result<bool> {
    for compare in compares {
        if !compare_holds(reader, compare)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// etcd's rule for keys that do not exist: a VALUE compare (and an existence compare, no
/// operand) on an absent key or an empty range is false, while a MOD or CREATE compare sees
/// revision 0 there, so `create(k) = 0` is put-if-absent and `mod(k) < 5` holds for a missing
/// key. A range compare over live keys holds iff every key in it satisfies the predicate.
fn compare_holds(reader: &Reader<'_>, compare: &pb::Compare) -> Result<bool> {
    let range_end = RangeEnd::from_wire(&compare.range_end);
    if range_end == RangeEnd::Single {
        return Ok(match reader.get(&compare.key)? {
            Some(latest) => predicate_holds(compare, &latest),
            None => absent_compare_holds(compare),
        });
    }
    let Some(bounds) = scan_bounds(&compare.key, &range_end, None) else {
        return Ok(absent_compare_holds(compare));
    };
    let (mut any, mut all) = (false, true);
    reader.scan(&bounds, |_, latest| {
        any = true;
        if predicate_holds(compare, &latest) {
            ControlFlow::Continue(())
        } else {
            all = false;
            ControlFlow::Break(())
        }
    })?;
    Ok(if any {
        all
    } else {
        absent_compare_holds(compare)
    })
}

/// A compare on a key that does not exist: revisions compare as 0, values and existence fail.
fn absent_compare_holds(compare: &pb::Compare) -> bool {
    let ordering = match &compare.target_union {
        None | Some(TargetUnion::Value(_)) => return false,
        Some(TargetUnion::ModRevision(revision) | TargetUnion::CreateRevision(revision)) => {
            0_i128.cmp(&i128::from(*revision))
        }
    };
    ordering_holds(compare.result(), ordering)
}

/// Compares the stored side (left) with the operand (right); no operand: existence.
fn predicate_holds(compare: &pb::Compare, latest: &Latest) -> bool {
    let ordering = match &compare.target_union {
        None => return true,
        Some(TargetUnion::Value(value)) => latest.value.as_ref().cmp(value.as_ref()),
        Some(TargetUnion::ModRevision(revision)) => {
            i128::from(latest.mod_revision.get()).cmp(&i128::from(*revision))
        }
        Some(TargetUnion::CreateRevision(revision)) => {
            i128::from(latest.create_revision.get()).cmp(&i128::from(*revision))
        }
    };
    ordering_holds(compare.result(), ordering)
}

fn ordering_holds(result: CompareResult, ordering: std::cmp::Ordering) -> bool {
    match result {
        CompareResult::Equal => ordering.is_eq(),
        CompareResult::NotEqual => ordering.is_ne(),
        CompareResult::Greater => ordering.is_gt(),
        CompareResult::Less => ordering.is_lt(),
    }
}

/// Checks a command completely; `Err` is the rejection message.
pub(crate) fn validate(
    command: &pb::Command,
    revision: Revision,
    depth: usize,
) -> Result<(), String> {
    let kind = CommandType::try_from(command.r#type)
        .map_err(|_| format!("unknown command type {}", command.r#type))?;
    let writes = !matches!(kind, CommandType::Dummy | CommandType::Sequence);
    if writes && revision.get() == 0 {
        return Err(format!("{} stamped with revision 0", kind.as_str_name()));
    }
    match kind {
        CommandType::Put => {
            let kv = command.kv.as_ref().ok_or("PUT without kv")?;
            check_put(&kv.key, &kv.value)
        }
        CommandType::Delete => command
            .kv
            .as_ref()
            .map(|_| ())
            .ok_or_else(|| "DELETE without kv".into()),
        CommandType::Dummy | CommandType::DeleteBatch => Ok(()),
        CommandType::PutBatch => command
            .batch
            .iter()
            .try_for_each(|kv| check_put(&kv.key, &kv.value)),
        CommandType::Txn => validate_txn(command.txn.as_ref().ok_or("TXN without txn")?),
        CommandType::LoadBegin | CommandType::LoadChunk | CommandType::LoadCommit => Err(format!(
            "{} must be applied alone, outside a SEQUENCE",
            kind.as_str_name()
        )),
        CommandType::Sequence => {
            if depth >= MAX_SEQUENCE_DEPTH {
                return Err(format!("SEQUENCE nested deeper than {MAX_SEQUENCE_DEPTH}"));
            }
            command.sequence.iter().try_for_each(|nested| {
                validate(nested, nested_revision(nested, revision), depth + 1)
            })
        }
    }
}

pub(crate) fn check_put(key: &[u8], value: &[u8]) -> Result<(), String> {
    if key.is_empty() {
        return Err("key must be set".into());
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(format!(
            "key length {} exceeds {MAX_KEY_BYTES} bytes",
            key.len()
        ));
    }
    if value.len() > MAX_VALUE_BYTES {
        return Err(format!(
            "value length {} exceeds {MAX_VALUE_BYTES} bytes",
            value.len()
        ));
    }
    Ok(())
}

/// Checks compares and ops of a txn (shared with read-only txns on a view).
pub(crate) fn validate_txn(txn: &pb::Txn) -> Result<(), String> {
    for compare in &txn.compare {
        CompareResult::try_from(compare.result)
            .map_err(|_| format!("unknown compare result {}", compare.result))?;
        let target = CompareTarget::try_from(compare.target)
            .map_err(|_| format!("unknown compare target {}", compare.target))?;
        let matches = matches!(
            (target, &compare.target_union),
            (_, None)
                | (CompareTarget::Value, Some(TargetUnion::Value(_)))
                | (CompareTarget::Mod, Some(TargetUnion::ModRevision(_)))
                | (CompareTarget::Create, Some(TargetUnion::CreateRevision(_)))
        );
        if !matches {
            return Err(format!(
                "compare target {} does not match its operand",
                target.as_str_name()
            ));
        }
    }
    for op in txn.success.iter().chain(&txn.failure) {
        match op.request.as_ref().ok_or("txn op without request")? {
            Request::RequestRange(range) if range.limit < 0 => {
                return Err("limit must not be negative".into());
            }
            Request::RequestRange(_) | Request::RequestDeleteRange(_) => {}
            Request::RequestPut(put) => check_put(&put.key, &put.value)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &'static [u8]) -> pb::Command {
        pb::Command {
            r#type: CommandType::Put as i32,
            kv: Some(pb::KeyValue {
                key: Bytes::from_static(key),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn validation_rejects_bad_commands() {
        assert!(validate(&put(b"k"), Revision(1), 0).is_ok());
        assert!(validate(&put(b""), Revision(1), 0).is_err());
        assert!(validate(&put(b"k"), Revision(0), 0).is_err());
        let unknown = pb::Command {
            r#type: 99,
            ..Default::default()
        };
        assert!(validate(&unknown, Revision(1), 0).is_err());
        let sequence = pb::Command {
            r#type: CommandType::Sequence as i32,
            sequence: vec![put(b"a"), put(b"")],
            ..Default::default()
        };
        assert!(validate(&sequence, Revision(1), 0).is_err());
        let mismatched = pb::Txn {
            compare: vec![pb::Compare {
                target: CompareTarget::Mod as i32,
                target_union: Some(TargetUnion::Value(Bytes::new())),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(validate_txn(&mismatched).is_err());
    }

    #[test]
    fn nested_leader_index_is_carried_and_stamped() {
        let mut nested = put(b"a");
        nested.leader_index = Some(7);
        let sequence = pb::Command {
            r#type: CommandType::Sequence as i32,
            sequence: vec![put(b"b"), nested.clone()],
            ..Default::default()
        };
        assert_eq!(carried_leader_index(&sequence), Some(LeaderIndex(7)));
        assert_eq!(nested_revision(&nested, Revision(100)), Revision(7));
        assert_eq!(nested_revision(&put(b"c"), Revision(100)), Revision(100));
    }
}
