//! Behaviour the golden scripts cannot express: view isolation across apply and snapshot
//! install, destroy, leftover generations, the dump's byte framing decoded independently, and
//! Regatta's response size cap with large values.

use armada_storage::{LeaderIndex, LogIndex, Revision, Storage, TableId};
use armada_table::pb::command::CommandType;
use armada_table::{
    AppliedPosition, ApplyEntry, ApplyOutcome, MAX_RESPONSE_BYTES, RangeEnd, RangeQuery, Table, pb,
};
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
    let first = index + 1 - commands.len() as u64;
    let entries: Vec<_> = commands
        .iter()
        .enumerate()
        .map(|(i, command)| ApplyEntry {
            revision: Revision(first + i as u64),
            command: Some(command),
        })
        .collect();
    let position = AppliedPosition {
        log_index: LogIndex(index),
        revision: Revision(index),
        ..Default::default()
    };
    table.apply(&entries, &position).unwrap()
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
    let ApplyOutcome::Applied { result, .. } = &outcome[0] else {
        panic!("rejected")
    };
    let Some(pb::response_op::Response::ResponseDeleteRange(deleted)) =
        &result.responses[0].response
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
    let entries = [ApplyEntry {
        revision: Revision(4),
        command: None,
    }];
    let position = AppliedPosition {
        log_index: LogIndex(4),
        revision: Revision(4),
        leader_index: Some(LeaderIndex(11)),
        raft_state: Bytes::from_static(b"state"),
    };
    table.apply(&entries, &position).unwrap();
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
    let entries = [
        ApplyEntry {
            revision: Revision(2),
            command: Some(&begin),
        },
        ApplyEntry {
            revision: Revision(3),
            command: None,
        },
    ];
    let position = AppliedPosition {
        log_index: LogIndex(3),
        revision: Revision(3),
        ..Default::default()
    };
    assert!(table.apply(&entries, &position).is_err());
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

fn entries(commands: &[pb::Command]) -> Vec<ApplyEntry<'_>> {
    commands
        .iter()
        .enumerate()
        .map(|(i, command)| ApplyEntry {
            revision: Revision(2 + i as u64),
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
    assert!(!table.apply_may_block(&entries(&small)));
    let large: Vec<pb::Command> = (0..300).map(|n| put(&format!("k{n}"), vec![1])).collect();
    assert!(table.apply_may_block(&entries(&large)));
    // One entry carrying many writes (a follower cluster's replicated SEQUENCE) counts them all.
    let sequence = pb::Command {
        r#type: CommandType::Sequence as i32,
        sequence: large.clone(),
        ..Default::default()
    };
    assert!(table.apply_may_block(&entries(std::slice::from_ref(&sequence))));
    let begin = pb::Command {
        r#type: CommandType::LoadBegin as i32,
        load_id: 1,
        ..Default::default()
    };
    assert!(table.apply_may_block(&entries(std::slice::from_ref(&begin))));
    // The small batch still applies (inline or not, the outcome is the same).
    assert_eq!(apply(&table, 21, &small).len(), 20);
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
