//! Property test: the table against a `BTreeMap` model with full history, over random batches
//! of puts, deletes and range deletes; every latest read, limited read and read at a past
//! revision must agree with the model. Keys use a tiny alphabet with `00` and `ff` bytes so
//! that ranges, escaping and prefixes collide often.

use armada_storage::{Revision, Storage, TableId};
use armada_table::pb::command::CommandType;
use armada_table::{ApplyOutcome, CommandOutcome, RangeEnd, RangeQuery, Table, pb};

mod common;
use bytes::Bytes;
use proptest::prelude::*;
use std::collections::BTreeMap;

type State = BTreeMap<Vec<u8>, (u64, u64, Vec<u8>)>;

#[derive(Clone, Debug)]
enum Op {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
    DeleteRange(Vec<u8>, Option<Vec<u8>>),
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop::sample::select(vec![0u8, 1, b'a', b'b', 0xff]), 1..4)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (key(), prop::collection::vec(any::<u8>(), 0..4)).prop_map(|(k, v)| Op::Put(k, v)),
        2 => key().prop_map(Op::Delete),
        1 => (key(), prop::option::of(key())).prop_map(|(k, e)| Op::DeleteRange(k, e)),
    ]
}

fn command(op: &Op) -> pb::Command {
    let kv = |key: &[u8], value: &[u8]| {
        Some(pb::KeyValue {
            key: Bytes::copy_from_slice(key),
            value: Bytes::copy_from_slice(value),
            ..Default::default()
        })
    };
    match op {
        Op::Put(k, v) => pb::Command {
            r#type: CommandType::Put as i32,
            kv: kv(k, v),
            ..Default::default()
        },
        Op::Delete(k) => pb::Command {
            r#type: CommandType::Delete as i32,
            kv: kv(k, b""),
            ..Default::default()
        },
        Op::DeleteRange(k, end) => pb::Command {
            r#type: CommandType::Delete as i32,
            kv: kv(k, b""),
            range_end: Some(Bytes::from(end.clone().unwrap_or_else(|| vec![0]))),
            ..Default::default()
        },
    }
}

/// Applies `op` to the model; returns the number of keys deleted.
fn apply_model(state: &mut State, op: &Op, revision: u64) -> i64 {
    match op {
        Op::Put(k, v) => {
            let create = state.get(k).map_or(revision, |e| e.0);
            state.insert(k.clone(), (create, revision, v.clone()));
            0
        }
        Op::Delete(k) => i64::from(state.remove(k).is_some()),
        Op::DeleteRange(k, end) => {
            // On the wire a range end of "\0" means "to the end of the table".
            let end = end.as_ref().filter(|end| end.as_slice() != [0]);
            let doomed: Vec<Vec<u8>> = state
                .keys()
                .filter(|key| *key >= k && end.is_none_or(|e| *key < e))
                .cloned()
                .collect();
            for key in &doomed {
                state.remove(key);
            }
            doomed.len() as i64
        }
    }
}

fn model_kvs(state: &State) -> Vec<(Vec<u8>, u64, u64, Vec<u8>)> {
    state
        .iter()
        .map(|(k, (c, m, v))| (k.clone(), *c, *m, v.clone()))
        .collect()
}

fn table_kvs(kvs: &[pb::KeyValue]) -> Vec<(Vec<u8>, u64, u64, Vec<u8>)> {
    kvs.iter()
        .map(|kv| {
            (
                kv.key.to_vec(),
                kv.create_revision as u64,
                kv.mod_revision as u64,
                kv.value.to_vec(),
            )
        })
        .collect()
}

fn all_keys(at_revision: Option<u64>) -> RangeQuery {
    let mut query = RangeQuery::new(Bytes::from_static(b"\0"), RangeEnd::Unbounded);
    query.at_revision = at_revision.map(Revision);
    query
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn table_matches_model(
        batches in prop::collection::vec(prop::collection::vec(op(), 1..5), 1..12),
        limit in 1u64..4,
        probe in key(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path()).unwrap();
        let table = Table::open(&storage, TableId(10001)).unwrap();
        let mut state = State::new();
        let mut history: Vec<(u64, State)> = Vec::new();
        let mut index = 1u64;
        for batch in &batches {
            let first = index + 1;
            let outcomes = apply_ops(&table, batch, first);
            index += batch.len() as u64;
            for (i, (op, outcome)) in batch.iter().zip(outcomes).enumerate() {
                let revision = first + i as u64;
                let deleted = apply_model(&mut state, op, revision);
                history.push((revision, state.clone()));
                let ApplyOutcome::Applied { revision: applied, outcome, .. } = outcome else {
                    panic!("rejected {op:?}");
                };
                prop_assert_eq!(applied, Revision(revision));
                if let CommandOutcome::Delete(d) = outcome {
                    prop_assert_eq!(d.deleted, deleted);
                }
            }
            let view = table.read_view();
            prop_assert_eq!(view.position().revision, Revision(index));
            let latest = view.range(&all_keys(None)).unwrap();
            prop_assert_eq!(table_kvs(&latest.kvs), model_kvs(&state));

            // Limited range from a probe key, resumed with range_after until done.
            let mut query = RangeQuery::new(Bytes::from(probe.clone()), RangeEnd::Unbounded);
            query.limit = limit;
            let mut collected = Vec::new();
            let mut after: Option<Bytes> = None;
            loop {
                let chunk = view.range_after(&query, after.as_deref()).unwrap();
                prop_assert!(chunk.kvs.len() as u64 <= limit);
                collected.extend(table_kvs(&chunk.kvs));
                after = chunk.kvs.last().map(|kv| kv.key.clone());
                if !chunk.more { break; }
            }
            let expected: Vec<_> = model_kvs(&state).into_iter().filter(|kv| kv.0 >= probe).collect();
            prop_assert_eq!(collected, expected);

            // Single-key read.
            let single = view.range(&RangeQuery::new(Bytes::from(probe.clone()), RangeEnd::Single)).unwrap();
            prop_assert_eq!(table_kvs(&single.kvs), model_kvs(&state).into_iter().filter(|kv| kv.0 == probe).collect::<Vec<_>>());
        }
        // Every past revision reads as the model did then.
        let view = table.read_view();
        for (revision, then) in &history {
            let past = view.range(&all_keys(Some(*revision))).unwrap();
            prop_assert_eq!(table_kvs(&past.kvs), model_kvs(then), "at revision {}", revision);
            let mut single = RangeQuery::new(Bytes::from(probe.clone()), RangeEnd::Single);
            single.at_revision = Some(Revision(*revision));
            let expected: Vec<_> = model_kvs(then).into_iter().filter(|kv| kv.0 == probe).collect();
            prop_assert_eq!(table_kvs(&view.range(&single).unwrap().kvs), expected);
        }
        // A snapshot round trip into another table preserves contents and history.
        let mut stream = Vec::new();
        view.write_snapshot(&mut stream).unwrap();
        let copy = Table::open(&storage, TableId(10002)).unwrap();
        copy.install_snapshot(&mut stream.as_slice()).unwrap();
        let copied = copy.read_view();
        prop_assert_eq!(copied.content_hash().unwrap(), view.content_hash().unwrap());
        prop_assert_eq!(copied.position(), view.position());
        if let Some((revision, then)) = history.first() {
            let past = copied.range(&all_keys(Some(*revision))).unwrap();
            prop_assert_eq!(table_kvs(&past.kvs), model_kvs(then));
        }
    }
}

/// Applies `ops` to `table` as one batch of entries at log indices `first..`.
fn apply_ops(table: &Table, ops: &[Op], first: u64) -> Vec<ApplyOutcome> {
    let commands: Vec<pb::Command> = ops.iter().map(command).collect();
    common::apply_at(table, first + ops.len() as u64 - 1, &commands)
}

/// Applies `batches` to `table` and `state` from log index `index`; returns the last index.
fn apply_batches(table: &Table, state: &mut State, mut index: u64, batches: &[Vec<Op>]) -> u64 {
    for batch in batches {
        let first = index + 1;
        apply_ops(table, batch, first);
        index += batch.len() as u64;
        for (i, op) in batch.iter().enumerate() {
            apply_model(state, op, first + i as u64);
        }
    }
    index
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Writes after a snapshot install build on the installed contents only: nothing learnt
    /// from the replaced contents (such as a cached create revision) leaks into them.
    #[test]
    fn writes_after_installing_an_older_snapshot_match_model(
        before in prop::collection::vec(prop::collection::vec(op(), 1..5), 1..6),
        discarded in prop::collection::vec(prop::collection::vec(op(), 1..5), 1..6),
        after in prop::collection::vec(prop::collection::vec(op(), 1..5), 1..6),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path()).unwrap();
        let table = Table::open(&storage, TableId(10001)).unwrap();
        let mut state = State::new();
        let index = apply_batches(&table, &mut state, 1, &before);
        let mut older = Vec::new();
        table.read_view().write_snapshot(&mut older).unwrap();
        let mut thrown_away = state.clone();
        apply_batches(&table, &mut thrown_away, index, &discarded);
        table.install_snapshot(&mut older.as_slice()).unwrap();
        let index = apply_batches(&table, &mut state, index, &after);
        let view = table.read_view();
        prop_assert_eq!(view.position().revision, Revision(index));
        prop_assert_eq!(table_kvs(&view.range(&all_keys(None)).unwrap().kvs), model_kvs(&state));
    }
}
