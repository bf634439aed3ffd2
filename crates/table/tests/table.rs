//! Behaviour the golden scripts cannot express: view isolation across apply and snapshot
//! install, destroy, leftover generations, the dump's byte framing decoded independently, and
//! Regatta's response size cap with large values.

use armada_storage::{LeaderIndex, LogIndex, Revision, Storage, TableId};
use armada_table::pb::command::CommandType;
use armada_table::{
    AppliedPosition, ApplyEntry, ApplyOutcome, Change, Command, CommandOutcome, MAX_RESPONSE_BYTES,
    Previous, RangeEnd, RangeQuery, Table, Txn, pb,
};

mod common;
use bytes::Bytes;
use prost::Message;
use std::io::Read;

fn put(key: &str, value: Vec<u8>) -> pb::Command {
    pb::Command {
        r#type: CommandType::Put as i32,
        kv: Some(pb::KeyValue {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::from(value),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn apply(table: &Table, index: u64, commands: &[pb::Command]) -> Vec<ApplyOutcome> {
    common::apply_at(table, index, commands)
}

fn all() -> RangeQuery {
    RangeQuery::new(Bytes::from_static(b"\0"), RangeEnd::Unbounded)
}

#[test]
fn views_are_isolated_from_later_applies_and_installs() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(dir.path()).unwrap();
    let table = Table::open(&storage, TableId(10001)).unwrap();
    apply(&table, 2, &[put("a", b"1".to_vec())]);
    let mut empty_snapshot = Vec::new();
    Table::open(&storage, TableId(10009))
        .unwrap()
        .read_view()
        .write_snapshot(&mut empty_snapshot)
        .unwrap();

    let before = table.read_view();
    apply(&table, 3, &[put("b", b"2".to_vec())]);
    assert_eq!(before.range(&all()).unwrap().kvs.len(), 1);
    assert_eq!(before.position().log_index, LogIndex(2));

    let installed = table
        .install_snapshot(&mut empty_snapshot.as_slice())
        .unwrap();
    assert_eq!(installed, AppliedPosition::default());
    assert_eq!(table.read_view().range(&all()).unwrap().kvs.len(), 0);
    // The old view still reads its generation.
    assert_eq!(before.range(&all()).unwrap().kvs.len(), 1);
    drop(before);
    assert_eq!(
        table.applied_position().unwrap(),
        AppliedPosition::default()
    );
}

#[test]
fn destroy_removes_everything_and_leftover_generations_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(dir.path()).unwrap();
    let table = Table::open(&storage, TableId(7)).unwrap();
    apply(&table, 2, &[put("a", b"1".to_vec())]);
    // A generation left behind by an interrupted install.
    storage.keyspace("t7.g5.latest").unwrap();
    let other = Table::open(&storage, TableId(70)).unwrap();
    drop(table);
    let table = Table::open(&storage, TableId(7)).unwrap();
    let names = |storage: &Storage| {
        let mut names: Vec<String> = storage
            .database()
            .list_keyspace_names()
            .iter()
            .map(|n| n.to_string())
            .collect();
        names.sort();
        names
    };
    assert!(!names(&storage).contains(&"t7.g5.latest".to_string()));
    assert_eq!(table.read_view().range(&all()).unwrap().kvs.len(), 1);
    drop(table);
    Table::destroy(&storage, TableId(7)).unwrap();
    assert!(names(&storage).iter().all(|n| !n.starts_with("t7.")));
    assert!(names(&storage).iter().any(|n| n.starts_with("t70.")));
    let table = Table::open(&storage, TableId(7)).unwrap();
    assert_eq!(table.read_view().range(&all()).unwrap().kvs.len(), 0);
    assert_eq!(
        table.applied_position().unwrap(),
        AppliedPosition::default()
    );
    drop(other);
}

#[test]
fn dump_is_snappy_framed_length_prefixed_commands() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(dir.path()).unwrap();
    let table = Table::open(&storage, TableId(10001)).unwrap();
    apply(&table, 3, &[put("k2", b"v2".to_vec()), put("k1", vec![])]);
    let mut dump = Vec::new();
    table
        .read_view()
        .write_dump(b"regatta-test", Some(42), &mut dump)
        .unwrap();
    assert_eq!(dump[..10], armada_table::DUMP_STREAM_IDENTIFIER);
    let mut plain = Vec::new();
    snap::read::FrameDecoder::new(dump.as_slice())
        .read_to_end(&mut plain)
        .unwrap();
    let mut commands = Vec::new();
    let mut rest = plain.as_slice();
    while !rest.is_empty() {
        let (length, tail) = rest.split_at(8);
        let length = u64::from_le_bytes(length.try_into().unwrap()) as usize;
        commands.push(pb::Command::decode(&tail[..length]).unwrap());
        rest = &tail[length..];
    }
    let summary: Vec<_> = commands
        .iter()
        .map(|c| {
            (
                c.r#type,
                c.table.clone(),
                c.kv.as_ref().map(|kv| (kv.key.clone(), kv.value.clone())),
                c.leader_index,
            )
        })
        .collect();
    let name = Bytes::from_static(b"regatta-test");
    assert_eq!(
        summary,
        vec![
            (
                0,
                name.clone(),
                Some((Bytes::from_static(b"k1"), Bytes::new())),
                None
            ),
            (
                0,
                name.clone(),
                Some((Bytes::from_static(b"k2"), Bytes::from_static(b"v2"))),
                None
            ),
            (2, name, None, Some(42)),
        ]
    );
}

#[test]
fn large_values_are_chunked_like_regatta() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(dir.path()).unwrap();
    let table = Table::open(&storage, TableId(10001)).unwrap();
    let commands: Vec<_> = (0..10)
        .map(|i| put(&format!("key{i}"), vec![b'x'; 512 * 1024]))
        .collect();
    apply(&table, 11, &commands);
    let view = table.read_view();
    let first = view.range(&all()).unwrap();
    assert_eq!((first.kvs.len(), first.more), (7, true));
    let last = first.kvs.last().unwrap().key.clone();
    let second = view.range_after(&all(), Some(&last)).unwrap();
    assert_eq!((second.kvs.len(), second.more), (3, false));

    // Deletes report every key but cap prev_kvs.
    let delete = pb::Command {
        r#type: CommandType::Delete as i32,
        kv: Some(pb::KeyValue {
            key: Bytes::from_static(b"\0"),
            ..Default::default()
        }),
        range_end: Some(Bytes::from_static(b"\0")),
        prev_kvs: true,
        ..Default::default()
    };
    let outcome = apply(&table, 12, &[delete]);
    let ApplyOutcome::Applied { outcome, .. } = &outcome[0] else {
        panic!("rejected")
    };
    let responses = common::wire_responses(outcome);
    let Some(pb::response_op::Response::ResponseDeleteRange(deleted)) = &responses[0].response
    else {
        panic!("not a delete response")
    };
    assert_eq!(deleted.deleted, 10);
    assert_eq!(deleted.prev_kvs.len(), 7);
    let bytes: usize = deleted.prev_kvs.iter().map(|kv| kv.value.len()).sum();
    assert!(bytes < MAX_RESPONSE_BYTES);
}

#[test]
fn leader_index_is_kept_until_changed() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(dir.path()).unwrap();
    let table = Table::open(&storage, TableId(10001)).unwrap();
    let dummy = pb::Command {
        r#type: CommandType::Dummy as i32,
        leader_index: Some(9),
        ..Default::default()
    };
    apply(&table, 2, &[dummy]);
    apply(&table, 3, &[put("a", vec![])]);
    assert_eq!(
        table.applied_position().unwrap().leader_index,
        Some(LeaderIndex(9))
    );
    let dummy = Command::Dummy {
        leader_index: Some(LeaderIndex(11)),
    };
    let entries = [ApplyEntry {
        log_index: LogIndex(4),
        command: Some(&dummy),
    }];
    let position = table
        .apply(&entries, Bytes::from_static(b"state"))
        .unwrap()
        .position;
    assert_eq!(
        position,
        AppliedPosition {
            log_index: LogIndex(4),
            revision: Revision(4),
            leader_index: Some(LeaderIndex(11)),
            raft_state: Bytes::from_static(b"state"),
        }
    );
    drop(table);
    drop(storage);
    let storage = Storage::open(dir.path()).unwrap();
    let table = Table::open(&storage, TableId(10001)).unwrap();
    assert_eq!(table.applied_position().unwrap(), position);
    assert!(table.disk_bytes() > 0 || table.read_view().range(&all()).unwrap().count == 1);
}

#[test]
fn a_load_command_must_be_applied_alone() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(dir.path()).unwrap();
    let table = Table::open(&storage, TableId(10001)).unwrap();
    let begin = pb::Command {
        r#type: CommandType::LoadBegin as i32,
        load_id: 1,
        ..Default::default()
    };
    let decoded = Command::from_wire(begin.clone()).unwrap();
    let entries = [
        ApplyEntry {
            log_index: LogIndex(2),
            command: Some(&decoded),
        },
        ApplyEntry {
            log_index: LogIndex(3),
            command: None,
        },
    ];
    assert!(table.apply(&entries, Bytes::new()).is_err());
    assert_eq!(table.staged_load(), None);
    assert_eq!(
        table.applied_position().unwrap(),
        AppliedPosition::default()
    );
    assert!(matches!(
        apply(&table, 2, &[begin])[0],
        ApplyOutcome::Applied { .. }
    ));
    assert_eq!(table.staged_load(), Some((1, 0)));
}

fn decoded(commands: &[pb::Command]) -> Vec<Command> {
    commands
        .iter()
        .map(|command| Command::from_wire(command.clone()).unwrap())
        .collect()
}

fn entries(commands: &[Command]) -> Vec<ApplyEntry<'_>> {
    commands
        .iter()
        .enumerate()
        .map(|(i, command)| ApplyEntry {
            log_index: LogIndex(2 + i as u64),
            command: Some(command),
        })
        .collect()
}

#[test]
fn large_batches_loads_and_long_sequences_may_block_small_batches_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(dir.path()).unwrap();
    let table = Table::open(&storage, TableId(10001)).unwrap();
    let small: Vec<pb::Command> = (0..20).map(|n| put(&format!("k{n}"), vec![1])).collect();
    assert!(!table.apply_may_block(&entries(&decoded(&small))));
    let large: Vec<pb::Command> = (0..300).map(|n| put(&format!("k{n}"), vec![1])).collect();
    assert!(table.apply_may_block(&entries(&decoded(&large))));
    // One entry carrying many writes (a follower cluster's replicated SEQUENCE) counts them all.
    let sequence = pb::Command {
        r#type: CommandType::Sequence as i32,
        sequence: large.clone(),
        ..Default::default()
    };
    assert!(table.apply_may_block(&entries(&decoded(std::slice::from_ref(&sequence)))));
    let begin = pb::Command {
        r#type: CommandType::LoadBegin as i32,
        load_id: 1,
        ..Default::default()
    };
    assert!(table.apply_may_block(&entries(&decoded(std::slice::from_ref(&begin)))));
    // The small batch still applies (inline or not, the outcome is the same).
    assert_eq!(apply(&table, 21, &small).len(), 20);
}

fn txn(compare: Vec<pb::Compare>, success: Vec<pb::RequestOp>) -> pb::Command {
    pb::Command {
        r#type: CommandType::Txn as i32,
        txn: Some(pb::Txn {
            compare,
            success,
            failure: Vec::new(),
        }),
        ..Default::default()
    }
}

fn op_range_all() -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestRange(
            pb::request_op::Range {
                key: Bytes::from_static(b"\0"),
                range_end: Bytes::from_static(b"\0"),
                ..Default::default()
            },
        )),
    }
}

fn op_put(key: &str, value: Vec<u8>, prev_kv: bool) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestPut(pb::request_op::Put {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::from(value),
            prev_kv,
        })),
    }
}

fn op_delete_all(prev_kv: bool) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestDeleteRange(
            pb::request_op::DeleteRange {
                key: Bytes::from_static(b"\0"),
                range_end: Bytes::from_static(b"\0"),
                prev_kv,
                count: false,
            },
        )),
    }
}

/// The encoded size of a txn's whole response as the API sends it.
fn txn_response_bytes(outcome: &CommandOutcome) -> usize {
    common::wire_responses(outcome)
        .iter()
        .map(|op| {
            let len = op.encoded_len();
            1 + prost::length_delimiter_len(len) + len
        })
        .sum()
}

fn range_response(op: &pb::ResponseOp) -> &pb::response_op::Range {
    match &op.response {
        Some(pb::response_op::Response::ResponseRange(range)) => range,
        other => panic!("not a range response: {other:?}"),
    }
}

const LARGE_VALUE_BYTES: usize = 1900 * 1024;

fn keys_of(view: &armada_table::ReadView) -> Vec<String> {
    let mut query = all();
    query.keys_only = true;
    let outcome = view.range(&query).unwrap();
    assert!(!outcome.more);
    outcome
        .kvs
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect()
}

fn value_of(view: &armada_table::ReadView, key: &str) -> Bytes {
    let query = RangeQuery::new(Bytes::copy_from_slice(key.as_bytes()), RangeEnd::Single);
    view.range(&query).unwrap().kvs.remove(0).value
}

/// Three 1.9 MiB values: the case where a txn used to commit and then fail at the client.
fn table_with_three_large_values(storage: &Storage, role: armada_table::TableRole) -> Table {
    let table = Table::open_as(storage, TableId(10001), role).unwrap();
    if role == armada_table::TableRole::Leader {
        let puts: Vec<_> = ["a", "b", "c"]
            .iter()
            .map(|key| put(key, vec![b'v'; LARGE_VALUE_BYTES]))
            .collect();
        apply(&table, 4, &puts);
    }
    table
}

#[test]
fn txn_ranges_share_one_response_budget_and_say_more() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(dir.path()).unwrap();
    let table = table_with_three_large_values(&storage, armada_table::TableRole::Leader);
    let command = txn(
        Vec::new(),
        vec![
            op_put("d", b"small".to_vec(), false),
            op_range_all(),
            op_range_all(),
        ],
    );
    let outcome = apply(&table, 5, &[command]);
    let ApplyOutcome::Applied { outcome, .. } = &outcome[0] else {
        panic!("refused: {outcome:?}")
    };
    assert!(outcome.succeeded());
    assert!(txn_response_bytes(outcome) < MAX_RESPONSE_BYTES);
    let responses = common::wire_responses(outcome);
    let first = range_response(&responses[1]);
    assert_eq!((first.kvs.len(), first.more, first.count), (2, true, 2));
    let second = range_response(&responses[2]);
    assert_eq!((second.kvs.len(), second.more, second.count), (0, true, 0));
    // The write took effect, and the same ranges read alone are complete again.
    let view = table.read_view();
    assert_eq!(keys_of(&view), ["a", "b", "c", "d"]);
    let read_only = pb::Txn {
        compare: Vec::new(),
        success: vec![op_range_all(), op_range_all()],
        failure: Vec::new(),
    };
    let outcome = view
        .txn_read_only(&Txn::from_wire(read_only).unwrap())
        .unwrap();
    let responses = common::wire_responses(&CommandOutcome::Txn(outcome));
    let bytes: usize = responses.iter().map(Message::encoded_len).sum();
    assert!(bytes < MAX_RESPONSE_BYTES);
    assert!(range_response(&responses[0]).more);
    assert!(range_response(&responses[1]).more);
}

#[test]
fn a_txn_whose_prev_kvs_cannot_fit_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(dir.path()).unwrap();
    let table = table_with_three_large_values(&storage, armada_table::TableRole::Leader);
    let before = table.read_view();
    let command = txn(
        Vec::new(),
        vec![
            op_put("new", b"x".to_vec(), false),
            op_put("a", b"1".to_vec(), true),
            op_put("b", b"2".to_vec(), true),
            op_put("c", b"3".to_vec(), true),
        ],
    );
    // In one batch with a write before and after it: those apply, the txn does not.
    let outcome = apply(
        &table,
        7,
        &[
            put("before", b"1".to_vec()),
            command,
            put("after", b"1".to_vec()),
        ],
    );
    let ApplyOutcome::Rejected(message) = &outcome[1] else {
        panic!("applied: {:?}", outcome[1])
    };
    assert!(
        message.message().contains(&MAX_RESPONSE_BYTES.to_string()),
        "{message}"
    );
    assert!(matches!(outcome[0], ApplyOutcome::Applied { .. }));
    assert!(matches!(outcome[2], ApplyOutcome::Applied { .. }));
    let after = table.read_view();
    assert_eq!(keys_of(&after), ["a", "after", "b", "before", "c"]);
    for key in ["a", "b", "c"] {
        assert_eq!(
            value_of(&before, key),
            value_of(&after, key),
            "{key} unchanged"
        );
    }

    // Two of them fit: applied. A delete's prev_kvs are cut, `deleted` stays exact.
    let command = txn(
        Vec::new(),
        vec![
            op_put("a", b"1".to_vec(), true),
            op_put("b", b"2".to_vec(), true),
            op_delete_all(true),
        ],
    );
    let outcome = apply(&table, 8, &[command]);
    let ApplyOutcome::Applied { outcome, .. } = &outcome[0] else {
        panic!("refused: {outcome:?}")
    };
    assert!(txn_response_bytes(outcome) < MAX_RESPONSE_BYTES);
    let responses = common::wire_responses(outcome);
    let Some(pb::response_op::Response::ResponseDeleteRange(deleted)) = &responses[2].response
    else {
        panic!("not a delete response")
    };
    assert_eq!(deleted.deleted, 5);
    assert!(deleted.prev_kvs.len() < 5, "c's 1.9 MiB cannot fit");
    assert!(keys_of(&table.read_view()).is_empty());
}

#[test]
fn a_follower_refuses_a_replicated_txn_exactly_as_its_leader_did() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(dir.path()).unwrap();
    let table = table_with_three_large_values(&storage, armada_table::TableRole::Follower);
    let replicated = |index: u64, mut command: pb::Command| {
        command.leader_index = Some(index);
        command
    };
    let mut nested: Vec<pb::Command> = ["a", "b", "c"]
        .iter()
        .zip(1..)
        .map(|(key, index)| replicated(index, put(key, vec![b'v'; LARGE_VALUE_BYTES])))
        .collect();
    let refused = txn(
        Vec::new(),
        vec![
            op_put("a", b"1".to_vec(), true),
            op_put("b", b"2".to_vec(), true),
            op_put("c", b"3".to_vec(), true),
        ],
    );
    nested.push(replicated(4, refused));
    nested.push(replicated(5, put("after", b"1".to_vec())));
    let sequence = pb::Command {
        r#type: CommandType::Sequence as i32,
        sequence: nested,
        ..Default::default()
    };
    let outcome = apply(&table, 2, &[sequence]);
    assert!(
        matches!(outcome[0], ApplyOutcome::Applied { .. }),
        "{outcome:?}"
    );
    let view = table.read_view();
    assert_eq!(keys_of(&view), ["a", "after", "b", "c"]);
    for key in ["a", "b", "c"] {
        assert_eq!(
            value_of(&view, key).len(),
            LARGE_VALUE_BYTES,
            "{key} unchanged"
        );
    }
    assert_eq!(
        table.applied_position().unwrap().leader_index,
        Some(LeaderIndex(5))
    );
}

/// A table's size counts what it holds before any memtable is flushed (it was 0 for tables
/// of tens of MB) and after a restart, when the memtables are rebuilt from the journal.
#[test]
fn disk_bytes_count_unflushed_writes() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(dir.path()).unwrap();
    let table = Table::open(&storage, TableId(10001)).unwrap();
    let before = table.disk_bytes();
    // Different values, so that a flush could not compress them away.
    let commands: Vec<_> = (0..100u64)
        .map(|index| {
            let value: Vec<u8> = (0..20_000u64)
                .map(|byte| (byte.wrapping_mul(index + 31) >> 3) as u8)
                .collect();
            put(&format!("key{index:03}"), value)
        })
        .collect();
    apply(&table, 101, &commands);
    let written = 100 * 20_000;
    let after = table.disk_bytes() - before;
    // Latest and history both hold every value.
    assert!(after >= 2 * written, "{after} < {}", 2 * written);
    assert!(after < 3 * written, "{after}");
    storage.sync().unwrap();
    drop(table);
    drop(storage);

    let storage = Storage::open(dir.path()).unwrap();
    let table = Table::open(&storage, TableId(10001)).unwrap();
    assert!(table.disk_bytes() >= 2 * written, "{}", table.disk_bytes());
}

fn changes_of(outcome: &ApplyOutcome) -> Vec<Change> {
    match outcome {
        ApplyOutcome::Applied { changes, .. } => changes.clone(),
        ApplyOutcome::Rejected(rejection) => panic!("rejected: {rejection}"),
    }
}

fn stored(key: &str, value: &str, create: i64, modified: i64) -> pb::KeyValue {
    pb::KeyValue {
        key: Bytes::copy_from_slice(key.as_bytes()),
        create_revision: create,
        mod_revision: modified,
        value: Bytes::copy_from_slice(value.as_bytes()),
    }
}

fn change(key: &str, prev_kv: Previous, kv: Option<pb::KeyValue>, revision: u64) -> Change {
    Change {
        key: Bytes::copy_from_slice(key.as_bytes()),
        prev_kv,
        kv,
        revision: Revision(revision),
    }
}

/// Every applied write lists the keys it changed — previous and new key-value, revision — in
/// write order: what the Watch will stream.
#[test]
fn every_write_lists_its_changes() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(dir.path()).unwrap();
    let table = Table::open(&storage, TableId(10001)).unwrap();
    // A new key, then two in one batch: the second entry sees the first one's write.
    let outcomes = apply(&table, 2, &[put("a", b"1".to_vec())]);
    assert_eq!(
        changes_of(&outcomes[0]),
        [change(
            "a",
            Previous::Absent,
            Some(stored("a", "1", 2, 2)),
            2
        )]
    );
    let outcomes = apply(
        &table,
        4,
        &[put("b", b"1".to_vec()), put("b", b"2".to_vec())],
    );
    assert_eq!(
        changes_of(&outcomes[1]),
        [change(
            "b",
            Previous::Kv(stored("b", "1", 3, 3)),
            Some(stored("b", "2", 3, 4)),
            4
        )]
    );
    // An overwrite of a key the create-revision cache knows does not read the old value
    // unless the put asks for it.
    let outcomes = apply(&table, 5, &[put("a", b"2".to_vec())]);
    assert_eq!(
        changes_of(&outcomes[0]),
        [change(
            "a",
            Previous::NotRead {
                create_revision: Revision(2)
            },
            Some(stored("a", "2", 2, 5)),
            5
        )]
    );
    let mut asking = put("a", b"3".to_vec());
    asking.prev_kvs = true;
    let outcomes = apply(&table, 6, &[asking]);
    assert_eq!(
        changes_of(&outcomes[0]),
        [change(
            "a",
            Previous::Kv(stored("a", "2", 2, 5)),
            Some(stored("a", "3", 2, 6)),
            6
        )]
    );
    // A txn's ops in order: a delete of the whole table, then a put of a deleted key.
    let command = txn(
        Vec::new(),
        vec![
            op_range_all(),
            op_delete_all(false),
            op_put("b", b"3".to_vec(), false),
        ],
    );
    let outcomes = apply(&table, 7, &[command]);
    assert_eq!(
        changes_of(&outcomes[0]),
        [
            change("a", Previous::Kv(stored("a", "3", 2, 6)), None, 7),
            change("b", Previous::Kv(stored("b", "2", 3, 4)), None, 7),
            change("b", Previous::Absent, Some(stored("b", "3", 7, 7)), 7),
        ]
    );
    // A refused command lists nothing.
    let outcomes = apply(&table, 8, &[put("", b"x".to_vec())]);
    assert!(matches!(outcomes[0], ApplyOutcome::Rejected(_)));
}

#[test]
fn a_replicated_sequence_lists_its_changes_at_their_leader_indices() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(dir.path()).unwrap();
    let table =
        Table::open_as(&storage, TableId(10001), armada_table::TableRole::Follower).unwrap();
    let replicated = |index: u64, mut command: pb::Command| {
        command.leader_index = Some(index);
        command
    };
    let delete = pb::Command {
        r#type: CommandType::Delete as i32,
        kv: Some(pb::KeyValue {
            key: Bytes::from_static(b"x"),
            ..Default::default()
        }),
        ..Default::default()
    };
    let sequence = pb::Command {
        r#type: CommandType::Sequence as i32,
        sequence: vec![
            replicated(1, put("x", b"1".to_vec())),
            replicated(2, put("", b"refused by the leader too".to_vec())),
            replicated(3, put("y", b"1".to_vec())),
            replicated(4, delete),
        ],
        ..Default::default()
    };
    let outcomes = apply(&table, 9, &[sequence]);
    let ApplyOutcome::Applied {
        revision, outcome, ..
    } = &outcomes[0]
    else {
        panic!("rejected: {outcomes:?}")
    };
    assert_eq!(*revision, Revision(4));
    let CommandOutcome::Sequence(nested) = outcome else {
        panic!("not a sequence: {outcome:?}")
    };
    assert_eq!(nested.len(), 3, "the rejected command has no answer");
    assert_eq!(
        changes_of(&outcomes[0]),
        [
            change("x", Previous::Absent, Some(stored("x", "1", 1, 1)), 1),
            change("y", Previous::Absent, Some(stored("y", "1", 3, 3)), 3),
            change("x", Previous::Kv(stored("x", "1", 1, 1)), None, 4),
        ]
    );
    assert_eq!(table.applied_position().unwrap().revision, Revision(4));
}
