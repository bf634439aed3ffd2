//! Applying commands: execution of validated [`Command`]s against an overlay of pending writes.
//!
//! One [`Applier`] serves one `Table::apply` call. Reads of an entry see the stored state (a
//! snapshot taken under the apply lock) merged with the writes of earlier entries and earlier
//! txn ops (the overlay), which gives later-entries-see-earlier-ones and read-your-own-writes
//! inside a txn. At the end the overlay becomes one write batch: each touched key is written
//! once to latest, each `(key, revision)` once to history.
//!
//! Commands arrive validated ([`crate::command`]); what is left to check here depends on the
//! table: the role (a follower applies only replicated commands), the revision the entry is
//! stamped with, the leader indices already applied. So the only failures during execution
//! are storage errors and a txn refused for its response size, and a rejected command changes
//! nothing. Every write is also recorded as a [`Change`] of its entry.

use crate::command::{
    Command, Compare, CompareOperand, CompareResult, DeleteRange, Put, Rejection, Replicated, Txn,
    TxnOp,
};
use crate::error::Result;
use crate::generation::Generation;
use crate::outcome::{
    ApplyOutcome, Change, CommandOutcome, DeleteOutcome, OpOutcome, Previous, PutOutcome,
    TxnOutcome,
};
use crate::read::{Latest, Overlay, Reader, scan_bounds};
use crate::response_budget::{ResponseBudget, kv_bytes};
use crate::revision::entry_revision;
use crate::{ApplyEntry, MAX_RESPONSE_BYTES, RangeEnd};
use armada_storage::fjall::{Database, OwnedWriteBatch, Snapshot};
use armada_storage::mvcc::{self, HistoryVersion};
use armada_storage::{LeaderIndex, Revision};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::ops::ControlFlow;

/// A key written to latest by an apply and its new create revision (`None`: deleted).
pub(crate) type WrittenKey = (Bytes, Option<Revision>);

/// Pending history versions: `(key, revision) → Some((create_revision, value))` or tombstone.
type PendingHistory = BTreeMap<(Bytes, Revision), Option<(Revision, Bytes)>>;

/// A command's execution: its answer, or a refusal found while executing (a txn response over
/// the limit) that changed nothing.
type Executed<T> = std::result::Result<T, Rejection>;

pub(crate) struct Applier<'a> {
    snapshot: &'a Snapshot,
    generation: &'a Generation,
    overlay: Overlay,
    history: PendingHistory,
    /// The changes of the entry being applied, in write order.
    changes: Vec<Change>,
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
            changes: Vec::new(),
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
        let revision = entry_revision(entry.log_index);
        let Some(command) = entry.command else {
            return Ok(applied(revision, CommandOutcome::Empty, Vec::new()));
        };
        if let Command::Replicated(nested) = command {
            return self.replicated_sequence(nested, revision);
        }
        if let Command::Dummy {
            leader_index: Some(index),
        } = command
        {
            self.leader_index = Some(*index);
        }
        let checked = if self.follower && !matches!(command, Command::Dummy { .. }) {
            Err(Rejection::new(
                "a follower table applies only replicated commands",
            ))
        } else {
            check_revision(command, revision)
        };
        if let Err(rejection) = checked {
            return Ok(ApplyOutcome::Rejected(rejection));
        }
        Ok(match self.execute(command, revision)? {
            Ok(outcome) => applied(revision, outcome, std::mem::take(&mut self.changes)),
            Err(rejection) => ApplyOutcome::Rejected(rejection),
        })
    }

    /// Applies a SEQUENCE of the leader cluster's commands, each carrying its leader index.
    ///
    /// Replication is exactly-once by construction: commands at or below the applied leader
    /// index are skipped (a retried or duplicated proposal), the next one must follow it
    /// directly (the leader's indices are contiguous), and a command the leader rejected is
    /// rejected here the same way (its index still counts). A gap rejects the whole entry.
    fn replicated_sequence(
        &mut self,
        nested: &[Replicated],
        revision: Revision,
    ) -> Result<ApplyOutcome> {
        let accepted = match replicated_to_apply(nested, self.leader_index) {
            Ok(accepted) => accepted,
            Err(rejection) => return Ok(ApplyOutcome::Rejected(rejection)),
        };
        let mut outcomes = Vec::with_capacity(accepted.len());
        for replicated in accepted {
            // The leader rejected an invalid command the same way: no change, index consumed.
            // A command refused while executing changed nothing here either.
            if let Ok(command) = &replicated.command {
                let revision = Revision::from_leader_index(replicated.leader_index);
                if let Ok(outcome) = self.execute(command, revision)? {
                    outcomes.push(outcome);
                }
            }
            self.leader_index = Some(replicated.leader_index);
        }
        let revision = self
            .leader_index
            .map_or(revision, Revision::from_leader_index);
        let changes = std::mem::take(&mut self.changes);
        Ok(applied(
            revision,
            CommandOutcome::Sequence(outcomes),
            changes,
        ))
    }

    /// Executes a validated command stamped with `revision`; a refusal changed nothing (its
    /// changes are dropped).
    fn execute(
        &mut self,
        command: &Command,
        revision: Revision,
    ) -> Result<Executed<CommandOutcome>> {
        let mark = self.changes.len();
        let executed = self.execute_changes(command, revision)?;
        if executed.is_err() {
            self.changes.truncate(mark);
        }
        Ok(executed)
    }

    fn execute_changes(
        &mut self,
        command: &Command,
        revision: Revision,
    ) -> Result<Executed<CommandOutcome>> {
        Ok(Ok(match command {
            Command::Dummy { .. } => CommandOutcome::Empty,
            Command::Put(put) => CommandOutcome::Put(self.put(put, revision)?),
            Command::Delete(delete) => {
                let prev_budget = delete.prev_kvs.then_some(MAX_RESPONSE_BYTES);
                CommandOutcome::Delete(self.delete(delete, revision, prev_budget)?.0)
            }
            Command::PutBatch(puts) => CommandOutcome::PutBatch(
                puts.iter()
                    .map(|put| self.put(put, revision))
                    .collect::<Result<_>>()?,
            ),
            Command::DeleteBatch(deletes) => {
                let mut outcomes = Vec::with_capacity(deletes.len());
                for delete in deletes {
                    let prev_budget = delete.prev_kvs.then_some(MAX_RESPONSE_BYTES);
                    outcomes.push(self.delete(delete, revision, prev_budget)?.0);
                }
                CommandOutcome::DeleteBatch(outcomes)
            }
            Command::Txn(txn) => return Ok(self.txn(txn, revision)?.map(CommandOutcome::Txn)),
            Command::Sequence(nested) => {
                // Like a replicated SEQUENCE: a refused nested command changed nothing, the
                // others apply.
                let mut outcomes = Vec::with_capacity(nested.len());
                for nested in nested {
                    if let Ok(outcome) = self.execute(nested, revision)? {
                        outcomes.push(outcome);
                    }
                }
                CommandOutcome::Sequence(outcomes)
            }
            Command::Replicated(_)
            | Command::LoadBegin { .. }
            | Command::LoadChunk { .. }
            | Command::LoadCommit { .. } => {
                return Ok(Err(Rejection(format!(
                    "{} must be applied alone, outside a SEQUENCE",
                    command.type_name()
                ))));
            }
        }))
    }

    fn put(&mut self, put: &Put, revision: Revision) -> Result<PutOutcome> {
        let key = &put.key;
        let (previous, live_create_revision) = self.previous(key, put.prev_kv)?;
        let create_revision = live_create_revision.unwrap_or(revision);
        self.history.insert(
            (key.clone(), revision),
            Some((create_revision, put.value.clone())),
        );
        let latest = Latest {
            create_revision,
            mod_revision: revision,
            value: put.value.clone(),
        };
        let kv = latest.to_key_value(key.clone());
        self.overlay.insert(key.clone(), Some(latest));
        let prev_kv = match &previous {
            Previous::Kv(kv) if put.prev_kv => Some(kv.clone()),
            _ => None,
        };
        self.changes.push(Change {
            key: key.clone(),
            prev_kv: previous,
            kv: Some(kv),
            revision,
        });
        Ok(PutOutcome { prev_kv })
    }

    /// The live version of `key` as this batch sees it, and its create revision. Unless `read`
    /// asks for the value, the generation's create-revision cache answers for a key this batch
    /// has not written, which saves the read (the most expensive step of a small put, see
    /// `create_cache.rs`).
    fn previous(&self, key: &Bytes, read: bool) -> Result<(Previous, Option<Revision>)> {
        if !read
            && !self.overlay.contains_key(key)
            && let Some(create_revision) = self.generation.create_revisions.get(key)
        {
            return Ok((Previous::NotRead { create_revision }, Some(create_revision)));
        }
        Ok(match self.reader().get(key)? {
            Some(latest) => (
                Previous::Kv(latest.to_key_value(key.clone())),
                Some(latest.create_revision),
            ),
            None => (Previous::Absent, None),
        })
    }

    /// Deletes the key (or the range); `deleted` is always the exact number of keys deleted.
    /// With `prev_budget`, `prev_kvs` holds the deleted pairs in key order as far as they fit in
    /// that many bytes (as elements of a repeated field), whose size is also returned.
    fn delete(
        &mut self,
        delete: &DeleteRange,
        revision: Revision,
        prev_budget: Option<usize>,
    ) -> Result<(DeleteOutcome, usize)> {
        let doomed = self.live_in(&delete.key, &delete.range_end)?;
        let deleted = i64::try_from(doomed.len()).unwrap_or(i64::MAX);
        let mut prev_kvs = Vec::new();
        let mut prev_bytes = 0;
        let mut prev_full = prev_budget.is_none();
        for (key, latest) in doomed {
            let kv = latest.to_key_value(key.clone());
            if !prev_full && let Some(budget) = prev_budget {
                let bytes = kv_bytes(&kv);
                if prev_bytes + bytes <= budget {
                    prev_bytes += bytes;
                    prev_kvs.push(kv.clone());
                } else {
                    prev_full = true;
                }
            }
            self.history.insert((key.clone(), revision), None);
            self.overlay.insert(key.clone(), None);
            self.changes.push(Change {
                key,
                prev_kv: Previous::Kv(kv),
                kv: None,
                revision,
            });
        }
        Ok((DeleteOutcome { deleted, prev_kvs }, prev_bytes))
    }

    /// The live keys of `key` up to `range_end`, in key order, as this batch sees them.
    fn live_in(&self, key: &Bytes, range_end: &RangeEnd) -> Result<Vec<(Bytes, Latest)>> {
        let mut live: Vec<(Bytes, Latest)> = Vec::new();
        if *range_end == RangeEnd::Single {
            if let Some(latest) = self.reader().get(key)? {
                live.push((key.clone(), latest));
            }
        } else if let Some(bounds) = scan_bounds(key, range_end, None) {
            self.reader().scan(&bounds, |key, latest| {
                live.push((key, latest));
                ControlFlow::Continue(())
            })?;
        }
        Ok(live)
    }

    /// Executes a txn within the response budget ([`crate::response_budget`]); refused (with
    /// its earlier ops rolled back) when a put's `prev_kv` does not fit.
    fn txn(&mut self, txn: &Txn, revision: Revision) -> Result<Executed<TxnOutcome>> {
        let succeeded = compares_hold(&self.reader(), &txn.compares)?;
        let ops = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        // Only a put's prev_kv can refuse the txn; keep what to roll back to only then.
        let saved = Txn::may_refuse(ops).then(|| (self.overlay.clone(), self.history.clone()));
        match self.txn_ops(ops, revision)? {
            Ok(responses) => Ok(Ok(TxnOutcome {
                succeeded,
                responses,
            })),
            Err(rejection) => {
                if let Some((overlay, history)) = saved {
                    self.overlay = overlay;
                    self.history = history;
                }
                Ok(Err(rejection))
            }
        }
    }

    fn txn_ops(&mut self, ops: &[TxnOp], revision: Revision) -> Result<Executed<Vec<OpOutcome>>> {
        let mut budget = ResponseBudget::for_ops(ops.len());
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let response = match op {
                TxnOp::Range(query) => OpOutcome::Range(budget.range(&self.reader(), query)?),
                TxnOp::Put(put) => {
                    let outcome = self.put(put, revision)?;
                    if let Some(prev_kv) = &outcome.prev_kv
                        && let Err(rejection) = budget.charge_prev_kv(prev_kv)
                    {
                        return Ok(Err(rejection));
                    }
                    OpOutcome::Put(outcome)
                }
                TxnOp::Delete(delete) => {
                    let prev_budget = delete.prev_kvs.then_some(budget.remaining());
                    let (outcome, prev_bytes) = self.delete(delete, revision, prev_budget)?;
                    budget.charge_bytes(prev_bytes);
                    OpOutcome::Delete(outcome)
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

fn applied(revision: Revision, outcome: CommandOutcome, changes: Vec<Change>) -> ApplyOutcome {
    ApplyOutcome::Applied {
        revision,
        outcome,
        changes,
    }
}

/// A command that writes needs a revision: an entry at log index 0 cannot be stamped (the
/// nested commands of this cluster's SEQUENCE share the entry's revision).
fn check_revision(command: &Command, revision: Revision) -> std::result::Result<(), Rejection> {
    if revision.get() != 0 {
        return Ok(());
    }
    match command {
        Command::Sequence(nested) => nested
            .iter()
            .try_for_each(|nested| check_revision(nested, revision)),
        command if command.writes() => Err(Rejection(format!(
            "{} stamped with revision 0",
            command.type_name()
        ))),
        _ => Ok(()),
    }
}

/// The commands of a replicated SEQUENCE not applied yet, given the last leader index
/// applied: skips those at or below it, rejects a gap and LOAD commands (which never leave
/// the leader cluster).
fn replicated_to_apply(
    nested: &[Replicated],
    applied: Option<LeaderIndex>,
) -> std::result::Result<Vec<&Replicated>, Rejection> {
    let mut next = applied.map_or(0, LeaderIndex::get);
    let mut accepted = Vec::with_capacity(nested.len());
    for replicated in nested {
        let index = replicated.leader_index.get();
        if index <= next {
            continue;
        }
        if index != next + 1 {
            return Err(Rejection(format!(
                "replicated command at leader index {index} does not follow the applied leader index {next}"
            )));
        }
        if let Ok(command) = &replicated.command
            && command.is_load()
        {
            return Err(Rejection(format!(
                "command type {} at leader index {index} cannot be replicated",
                command.type_number()
            )));
        }
        accepted.push(replicated);
        next = index;
    }
    Ok(accepted)
}

/// Whether every compare holds (no compares: true).
pub(crate) fn compares_hold(reader: &Reader<'_>, compares: &[Compare]) -> Result<bool> {
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
fn compare_holds(reader: &Reader<'_>, compare: &Compare) -> Result<bool> {
    if compare.range_end == RangeEnd::Single {
        return Ok(match reader.get(&compare.key)? {
            Some(latest) => predicate_holds(compare, &latest),
            None => absent_compare_holds(compare),
        });
    }
    let Some(bounds) = scan_bounds(&compare.key, &compare.range_end, None) else {
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
fn absent_compare_holds(compare: &Compare) -> bool {
    let ordering = match &compare.operand {
        CompareOperand::Exists | CompareOperand::Value(_) => return false,
        CompareOperand::ModRevision(revision) | CompareOperand::CreateRevision(revision) => {
            0_i128.cmp(&i128::from(*revision))
        }
    };
    ordering_holds(compare.result, ordering)
}

/// Compares the stored side (left) with the operand (right); no operand: existence.
fn predicate_holds(compare: &Compare, latest: &Latest) -> bool {
    let ordering = match &compare.operand {
        CompareOperand::Exists => return true,
        CompareOperand::Value(value) => latest.value.as_ref().cmp(value.as_ref()),
        CompareOperand::ModRevision(revision) => {
            i128::from(latest.mod_revision.get()).cmp(&i128::from(*revision))
        }
        CompareOperand::CreateRevision(revision) => {
            i128::from(latest.create_revision.get()).cmp(&i128::from(*revision))
        }
    };
    ordering_holds(compare.result, ordering)
}

fn ordering_holds(result: CompareResult, ordering: std::cmp::Ordering) -> bool {
    match result {
        CompareResult::Equal => ordering.is_eq(),
        CompareResult::NotEqual => ordering.is_ne(),
        CompareResult::Greater => ordering.is_gt(),
        CompareResult::Less => ordering.is_lt(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &'static [u8]) -> Command {
        Command::Put(Put {
            key: Bytes::from_static(key),
            value: Bytes::new(),
            prev_kv: false,
        })
    }

    #[test]
    fn a_write_needs_a_revision() {
        assert!(check_revision(&put(b"k"), Revision(1)).is_ok());
        assert_eq!(
            check_revision(&put(b"k"), Revision(0)),
            Err(Rejection::new("PUT stamped with revision 0"))
        );
        let dummy = Command::Dummy { leader_index: None };
        assert!(check_revision(&dummy, Revision(0)).is_ok());
        let sequence = Command::Sequence(vec![dummy, put(b"a")]);
        assert_eq!(
            check_revision(&sequence, Revision(0)),
            Err(Rejection::new("PUT stamped with revision 0"))
        );
    }

    #[test]
    fn replicated_commands_skip_the_applied_and_refuse_gaps() {
        let replicated = |index: u64| Replicated {
            leader_index: LeaderIndex(index),
            command: Ok(put(b"k")),
        };
        let nested = [replicated(2), replicated(3), replicated(4)];
        let accepted = replicated_to_apply(&nested, Some(LeaderIndex(2))).unwrap();
        let indices: Vec<u64> = accepted.iter().map(|r| r.leader_index.get()).collect();
        assert_eq!(indices, [3, 4]);
        assert_eq!(
            replicated_to_apply(&nested, None),
            Err(Rejection::new(
                "replicated command at leader index 2 does not follow the applied leader index 0"
            ))
        );
        let load = Replicated {
            leader_index: LeaderIndex(1),
            command: Ok(Command::LoadBegin {
                load_id: 1,
                keep_revisions: false,
            }),
        };
        assert_eq!(
            replicated_to_apply(&[load], None),
            Err(Rejection::new(
                "command type 100 at leader index 1 cannot be replicated"
            ))
        );
    }
}
