//! Black-box tests of `regatta.v1.KV` against the real binary (single-node leader).
#![allow(clippy::too_many_lines)] // scenarios read top to bottom; the 70-line rule is for production code

mod common;

use armada_proto::mvcc::v1 as mvcc;
use armada_proto::regatta::v1::{DeleteRangeRequest, TxnRequest};
use common::{Armada, get, put, range};
use tonic::Code;

const MIB: usize = 1024 * 1024;

async fn all_keys(armada: &Armada, table: &str) -> Vec<(Vec<u8>, Vec<u8>, i64, i64)> {
    let response = armada
        .kv()
        .await
        .range(range(table, vec![0], vec![0]))
        .await
        .expect("range all")
        .into_inner();
    response
        .kvs
        .into_iter()
        .map(|kv| {
            (
                kv.key.to_vec(),
                kv.value.to_vec(),
                kv.create_revision,
                kv.mod_revision,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn put_and_get_carry_increasing_revisions() {
    let armada = Armada::start();
    armada.create_table("t").await;
    let mut kv = armada.kv().await;
    let first = kv.put(put("t", "k", "v1")).await.expect("put").into_inner();
    let first_revision = first.header.as_ref().expect("header").revision;
    assert!(
        first_revision >= 2,
        "revisions start at 2, got {first_revision}"
    );
    assert!(first.prev_kv.is_none());
    let mut with_prev = put("t", "k", "v2");
    with_prev.prev_kv = true;
    let second = kv.put(with_prev).await.expect("put").into_inner();
    let second_revision = second.header.as_ref().expect("header").revision;
    assert!(second_revision > first_revision);
    let prev = second.prev_kv.expect("prev kv");
    assert_eq!(prev.value.as_ref(), b"v1");
    assert_eq!(prev.mod_revision as u64, first_revision);

    let read = kv.range(get("t", "k")).await.expect("get").into_inner();
    assert_eq!(read.count, 1);
    let header = read.header.expect("header");
    assert_eq!(
        header.revision, second_revision,
        "a read reports the revision it observed"
    );
    assert_eq!(header.replica_id, 1);
    assert_eq!(header.raft_leader_id, 1);
    assert!(header.raft_term >= 1);
    assert!(header.shard_id >= 10001);
    let kv0 = &read.kvs[0];
    assert_eq!(kv0.value.as_ref(), b"v2");
    assert_eq!(
        kv0.create_revision as u64, first_revision,
        "create_revision kept across updates"
    );
    assert_eq!(kv0.mod_revision as u64, second_revision);

    // Missing key: success with nothing.
    let missing = kv
        .range(get("t", "nope"))
        .await
        .expect("get missing")
        .into_inner();
    assert_eq!(
        (missing.count, missing.kvs.len(), missing.more),
        (0, 0, false)
    );

    // Linearizable read sees the write.
    let mut linear = get("t", "k");
    linear.linearizable = true;
    let read = kv.range(linear).await.expect("linearizable").into_inner();
    assert_eq!(read.kvs[0].value.as_ref(), b"v2");

    // Revisions strictly increase over many writes.
    let mut last = second_revision;
    for i in 0..50 {
        let revision = kv
            .put(put("t", format!("n{i}"), "x"))
            .await
            .expect("put")
            .into_inner()
            .header
            .expect("h")
            .revision;
        assert!(revision > last);
        last = revision;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_table_is_not_found_on_every_call() {
    let armada = Armada::start();
    let mut kv = armada.kv().await;
    assert_eq!(
        kv.put(put("nope", "k", "v")).await.expect_err("put").code(),
        Code::NotFound
    );
    assert_eq!(
        kv.range(get("nope", "k")).await.expect_err("range").code(),
        Code::NotFound
    );
    let delete = DeleteRangeRequest {
        table: "nope".into(),
        key: "k".into(),
        ..Default::default()
    };
    assert_eq!(
        kv.delete_range(delete).await.expect_err("delete").code(),
        Code::NotFound
    );
    let txn = TxnRequest {
        table: "nope".into(),
        ..Default::default()
    };
    assert_eq!(kv.txn(txn).await.expect_err("txn").code(), Code::NotFound);
    let status = kv
        .iterate_range(get("nope", "k"))
        .await
        .expect_err("iterate");
    assert_eq!(status.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_requests_are_rejected_and_change_nothing() {
    let armada = Armada::start();
    armada.create_table("t").await;
    let mut kv = armada.kv().await;
    kv.put(put("t", "keep", "me")).await.expect("seed");
    let before = all_keys(&armada, "t").await;

    let expect_invalid = |result: Result<tonic::Response<_>, tonic::Status>, needle: &str| {
        let status = result
            .map(|_: tonic::Response<()>| ())
            .expect_err("must fail");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().contains(needle),
            "message {:?} should name {needle}",
            status.message()
        );
    };
    let unit = |r: Result<
        tonic::Response<armada_proto::regatta::v1::PutResponse>,
        tonic::Status,
    >| r.map(|_| tonic::Response::new(()));
    expect_invalid(unit(kv.put(put("", "k", "v")).await), "table");
    expect_invalid(unit(kv.put(put("t", "", "v")).await), "key");
    expect_invalid(unit(kv.put(put("t", vec![b'k'; 1025], "v")).await), "1024");
    expect_invalid(
        unit(kv.put(put("t", "big", vec![0u8; 2 * MIB + 1])).await),
        "2097152",
    );

    let range_unit = |r: Result<
        tonic::Response<armada_proto::regatta::v1::RangeResponse>,
        tonic::Status,
    >| r.map(|_| tonic::Response::new(()));
    let mut negative = get("t", "k");
    negative.limit = -1;
    expect_invalid(range_unit(kv.range(negative).await), "limit");
    let mut both = range("t", "a", "z");
    both.keys_only = true;
    both.count_only = true;
    expect_invalid(range_unit(kv.range(both).await), "keys_only");
    let mut filter = get("t", "k");
    filter.min_mod_revision = -5;
    expect_invalid(range_unit(kv.range(filter).await), "min_mod_revision");
    expect_invalid(
        range_unit(kv.range(get("t", vec![b'k'; 1025])).await),
        "key",
    );
    expect_invalid(
        range_unit(kv.range(range("t", "a", vec![b'z'; 1025])).await),
        "range_end",
    );
    expect_invalid(range_unit(kv.range(get("t", "")).await), "key");

    let delete = DeleteRangeRequest {
        table: "t".into(),
        key: "".into(),
        ..Default::default()
    };
    let status = kv.delete_range(delete).await.expect_err("empty key");
    assert_eq!(status.code(), Code::InvalidArgument);

    let op_put = |key: &[u8], value: Vec<u8>| mvcc::RequestOp {
        request: Some(mvcc::request_op::Request::RequestPut(
            mvcc::request_op::Put {
                key: key.to_vec().into(),
                value: value.into(),
                prev_kv: false,
            },
        )),
    };
    let txn_unit = |r: Result<
        tonic::Response<armada_proto::regatta::v1::TxnResponse>,
        tonic::Status,
    >| r.map(|_| tonic::Response::new(()));
    let too_many = TxnRequest {
        table: "t".into(),
        success: vec![op_put(b"x", vec![1]); 129],
        ..Default::default()
    };
    expect_invalid(txn_unit(kv.txn(too_many).await), "128");
    let empty_key = TxnRequest {
        table: "t".into(),
        success: vec![op_put(b"x", vec![1]), op_put(b"", vec![1])],
        ..Default::default()
    };
    expect_invalid(
        txn_unit(kv.txn(empty_key).await),
        "success[1].request_put.key",
    );
    let big_value = TxnRequest {
        table: "t".into(),
        failure: vec![op_put(b"x", vec![0; 2 * MIB + 1])],
        ..Default::default()
    };
    expect_invalid(
        txn_unit(kv.txn(big_value).await),
        "failure[0].request_put.value",
    );

    // Over the 4 MiB transport limit: refused before it reaches the handler.
    let status = kv
        .put(put("t", "huge", vec![0u8; 5 * MIB]))
        .await
        .expect_err("too large");
    assert!(
        matches!(status.code(), Code::ResourceExhausted | Code::OutOfRange),
        "{status:?}"
    );

    assert_eq!(
        all_keys(&armada, "t").await,
        before,
        "rejected requests changed nothing"
    );

    // The limits themselves are accepted.
    kv.put(put("t", vec![b'k'; 1024], "v"))
        .await
        .expect("1024-byte key");
    kv.put(put("t", "two-mib", vec![7u8; 2 * MIB]))
        .await
        .expect("2 MiB value");
    let read = kv
        .range(get("t", "two-mib"))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(read.kvs[0].value.len(), 2 * MIB);
    assert!(read.kvs[0].value.iter().all(|b| *b == 7));
}

#[tokio::test(flavor = "multi_thread")]
async fn binary_keys_and_range_bounds() {
    let armada = Armada::start();
    armada.create_table("bin").await;
    let mut kv = armada.kv().await;
    let keys: Vec<Vec<u8>> = vec![
        vec![0],
        vec![0, 0],
        vec![0, 1],
        vec![1],
        b"a".to_vec(),
        b"a\xff".to_vec(),
        b"b".to_vec(),
        vec![0xff, 0xff],
    ];
    for (i, key) in keys.iter().enumerate() {
        kv.put(put("bin", key.clone(), vec![i as u8; 3]))
            .await
            .expect("put binary");
    }
    let all = all_keys(&armada, "bin").await;
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(
        all.iter().map(|k| k.0.clone()).collect::<Vec<_>>(),
        sorted,
        "all keys, bytewise order"
    );
    let prefix = kv
        .range(range("bin", "a", "b"))
        .await
        .expect("prefix")
        .into_inner();
    assert_eq!(
        prefix
            .kvs
            .iter()
            .map(|kv| kv.key.to_vec())
            .collect::<Vec<_>>(),
        vec![b"a".to_vec(), b"a\xff".to_vec()]
    );
    let from = kv
        .range(range("bin", "b", vec![0]))
        .await
        .expect("from key")
        .into_inner();
    assert_eq!(from.kvs.len(), 2);
    let inverted = kv
        .range(range("bin", "b", "a"))
        .await
        .expect("inverted")
        .into_inner();
    assert_eq!((inverted.count, inverted.kvs.len()), (0, 0));
    let exact = kv
        .range(get("bin", vec![0, 0]))
        .await
        .expect("exact")
        .into_inner();
    assert_eq!(exact.kvs[0].value.as_ref(), &[1, 1, 1]);

    let mut limited = range("bin", vec![0], vec![0]);
    limited.limit = 3;
    let page = kv.range(limited).await.expect("limit").into_inner();
    assert_eq!((page.kvs.len(), page.count, page.more), (3, 3, true));
    let mut keys_only = range("bin", vec![0], vec![0]);
    keys_only.keys_only = true;
    let page = kv.range(keys_only).await.expect("keys only").into_inner();
    assert!(page.kvs.iter().all(|kv| kv.value.is_empty()));
    let mut count_only = range("bin", vec![0], vec![0]);
    count_only.count_only = true;
    let page = kv.range(count_only).await.expect("count only").into_inner();
    assert_eq!((page.kvs.len(), page.count), (0, keys.len() as i64));
}

#[tokio::test(flavor = "multi_thread")]
async fn large_values_page_through_range_and_iterate_range() {
    let armada = Armada::start();
    armada.create_table("big").await;
    let mut kv = armada.kv().await;
    for i in 0..10u8 {
        kv.put(put("big", format!("k{i}"), vec![i; 512 * 1024]))
            .await
            .expect("put 512 KiB");
    }
    // Unary Range stops below 4 MiB and says there is more.
    let first = kv
        .range(range("big", "k", "l"))
        .await
        .expect("range")
        .into_inner();
    assert_eq!((first.kvs.len(), first.count, first.more), (7, 7, true));
    let last_key = first.kvs.last().expect("kv").key.to_vec();
    let mut next_key = last_key.clone();
    next_key.push(0);
    let second = kv
        .range(range("big", next_key, "l"))
        .await
        .expect("page 2")
        .into_inner();
    assert_eq!((second.kvs.len(), second.more), (3, false));
    for (i, item) in first.kvs.iter().chain(&second.kvs).enumerate() {
        assert_eq!(item.key.as_ref(), format!("k{i}").as_bytes());
        assert!(item.value.iter().all(|b| *b == i as u8));
    }

    // IterateRange: one point-in-time view in chunks.
    let mut stream = kv
        .iterate_range(range("big", "k", "l"))
        .await
        .expect("iterate")
        .into_inner();
    let mut messages = Vec::new();
    while let Some(message) = stream.message().await.expect("message") {
        messages.push(message);
    }
    let shape: Vec<(usize, bool, i64)> = messages
        .iter()
        .map(|m| (m.kvs.len(), m.more, m.count))
        .collect();
    assert_eq!(shape, vec![(7, true, 7), (3, false, 3)]);
    assert!(messages.iter().all(|m| m.header.is_some()));

    let mut limited = range("big", "k", "l");
    limited.limit = 8;
    let mut stream = kv
        .iterate_range(limited)
        .await
        .expect("iterate")
        .into_inner();
    let mut total = 0;
    let mut last_more = false;
    while let Some(message) = stream.message().await.expect("message") {
        total += message.kvs.len();
        last_more = message.more;
    }
    assert_eq!(
        (total, last_more),
        (8, true),
        "limit reached with keys left: last message says more"
    );

    // Empty result and single key.
    let mut stream = kv
        .iterate_range(range("big", "x", "y"))
        .await
        .expect("iterate")
        .into_inner();
    let only = stream
        .message()
        .await
        .expect("message")
        .expect("one message");
    assert_eq!((only.kvs.len(), only.count, only.more), (0, 0, false));
    assert!(stream.message().await.expect("end").is_none());
    let mut stream = kv
        .iterate_range(get("big", "k3"))
        .await
        .expect("iterate")
        .into_inner();
    let only = stream
        .message()
        .await
        .expect("message")
        .expect("one message");
    assert_eq!(only.kvs.len(), 1);
    assert!(stream.message().await.expect("end").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn revision_filters_and_reads_at_a_revision() {
    let armada = Armada::start();
    armada.create_table("f").await;
    let mut kv = armada.kv().await;
    let mut revisions = Vec::new();
    for key in ["a", "b", "c", "d"] {
        revisions.push(
            kv.put(put("f", key, "1"))
                .await
                .expect("put")
                .into_inner()
                .header
                .expect("h")
                .revision as i64,
        );
    }
    let updated = kv
        .put(put("f", "a", "2"))
        .await
        .expect("update")
        .into_inner()
        .header
        .expect("h")
        .revision as i64;
    let keys = |response: armada_proto::regatta::v1::RangeResponse| {
        response
            .kvs
            .into_iter()
            .map(|kv| String::from_utf8(kv.key.to_vec()).expect("utf8"))
            .collect::<Vec<_>>()
    };
    let mut query = range("f", vec![0], vec![0]);
    query.min_mod_revision = revisions[2];
    assert_eq!(
        keys(kv.range(query.clone()).await.expect("min mod").into_inner()),
        ["a", "c", "d"]
    );
    query.min_mod_revision = 0;
    query.max_mod_revision = revisions[1];
    assert_eq!(
        keys(kv.range(query.clone()).await.expect("max mod").into_inner()),
        ["b"]
    );
    query.max_mod_revision = 0;
    query.min_create_revision = revisions[1];
    query.max_create_revision = revisions[2];
    assert_eq!(
        keys(
            kv.range(query.clone())
                .await
                .expect("create window")
                .into_inner()
        ),
        ["b", "c"]
    );

    // Armada extension: read as of a past revision.
    let mut past = get("f", "a");
    past.revision = revisions[3];
    let old = kv.range(past).await.expect("past read").into_inner();
    assert_eq!(old.kvs[0].value.as_ref(), b"1");
    assert_eq!(old.kvs[0].mod_revision, revisions[0]);
    let mut now = get("f", "a");
    now.revision = updated;
    assert_eq!(
        kv.range(now).await.expect("now").into_inner().kvs[0]
            .value
            .as_ref(),
        b"2"
    );
    let mut future = get("f", "a");
    future.revision = updated + 1000;
    assert_eq!(
        kv.range(future).await.expect_err("future").code(),
        Code::OutOfRange
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_range_counts_what_it_deleted() {
    let armada = Armada::start();
    armada.create_table("d").await;
    let mut kv = armada.kv().await;
    for key in ["a1", "a2", "a3", "b1"] {
        kv.put(put("d", key, key)).await.expect("put");
    }
    let single = DeleteRangeRequest {
        table: "d".into(),
        key: "b1".into(),
        ..Default::default()
    };
    let response = kv.delete_range(single).await.expect("delete").into_inner();
    assert_eq!(
        response.deleted, 1,
        "deleted is filled without count or prev_kv"
    );
    let absent = DeleteRangeRequest {
        table: "d".into(),
        key: "zz".into(),
        prev_kv: true,
        ..Default::default()
    };
    let response = kv
        .delete_range(absent)
        .await
        .expect("delete absent")
        .into_inner();
    assert_eq!((response.deleted, response.prev_kvs.len()), (0, 0));
    let prefix = DeleteRangeRequest {
        table: "d".into(),
        key: "a".into(),
        range_end: "b".into(),
        prev_kv: true,
        ..Default::default()
    };
    let response = kv
        .delete_range(prefix)
        .await
        .expect("delete range")
        .into_inner();
    assert_eq!(response.deleted, 3);
    assert_eq!(
        response
            .prev_kvs
            .iter()
            .map(|kv| kv.value.to_vec())
            .collect::<Vec<_>>(),
        vec![b"a1".to_vec(), b"a2".to_vec(), b"a3".to_vec()]
    );
    assert!(response.header.expect("h").revision > 0);
    assert!(all_keys(&armada, "d").await.is_empty());
    // A deleted key re-created gets a fresh create_revision.
    let revision = kv
        .put(put("d", "a1", "again"))
        .await
        .expect("put")
        .into_inner()
        .header
        .expect("h")
        .revision;
    let read = kv.range(get("d", "a1")).await.expect("get").into_inner();
    assert_eq!(read.kvs[0].create_revision as u64, revision);
}

fn compare_value(key: &str, result: mvcc::compare::CompareResult, value: &str) -> mvcc::Compare {
    mvcc::Compare {
        result: result as i32,
        target: mvcc::compare::CompareTarget::Value as i32,
        key: key.as_bytes().to_vec().into(),
        target_union: Some(mvcc::compare::TargetUnion::Value(
            value.as_bytes().to_vec().into(),
        )),
        range_end: Default::default(),
    }
}

fn op_put(key: &str, value: &str) -> mvcc::RequestOp {
    mvcc::RequestOp {
        request: Some(mvcc::request_op::Request::RequestPut(
            mvcc::request_op::Put {
                key: key.as_bytes().to_vec().into(),
                value: value.as_bytes().to_vec().into(),
                prev_kv: true,
            },
        )),
    }
}

fn op_get(key: &str) -> mvcc::RequestOp {
    mvcc::RequestOp {
        request: Some(mvcc::request_op::Request::RequestRange(
            mvcc::request_op::Range {
                key: key.as_bytes().to_vec().into(),
                ..Default::default()
            },
        )),
    }
}

fn op_delete(key: &str) -> mvcc::RequestOp {
    mvcc::RequestOp {
        request: Some(mvcc::request_op::Request::RequestDeleteRange(
            mvcc::request_op::DeleteRange {
                key: key.as_bytes().to_vec().into(),
                ..Default::default()
            },
        )),
    }
}

fn range_value(response: &mvcc::ResponseOp) -> Option<Vec<u8>> {
    match &response.response {
        Some(mvcc::response_op::Response::ResponseRange(range)) => {
            range.kvs.first().map(|kv| kv.value.to_vec())
        }
        other => panic!("not a range response: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn txn_compares_branches_and_sees_its_own_writes() {
    use mvcc::compare::CompareResult::{Equal, Greater, NotEqual};
    let armada = Armada::start();
    armada.create_table("x").await;
    let mut kv = armada.kv().await;
    kv.put(put("x", "lock", "free")).await.expect("seed");

    let txn = TxnRequest {
        table: "x".into(),
        compare: vec![compare_value("lock", Equal, "free")],
        success: vec![
            op_put("lock", "held"),
            op_get("lock"),
            op_put("owner", "me"),
            op_delete("lock"),
            op_get("lock"),
        ],
        failure: vec![op_get("lock")],
    };
    let response = kv.txn(txn.clone()).await.expect("txn").into_inner();
    assert!(response.succeeded);
    assert_eq!(response.responses.len(), 5);
    assert_eq!(
        range_value(&response.responses[1]),
        Some(b"held".to_vec()),
        "ops see earlier ops"
    );
    assert_eq!(
        range_value(&response.responses[4]),
        None,
        "and their deletes"
    );
    let revision = response.header.expect("h").revision;
    assert!(revision > 0);
    let owner = kv.range(get("x", "owner")).await.expect("get").into_inner();
    assert_eq!(
        owner.kvs[0].mod_revision as u64, revision,
        "all writes of a txn share its revision"
    );

    // Compare false: failure branch (lock no longer exists → false for every operator).
    let response = kv.txn(txn).await.expect("txn").into_inner();
    assert!(!response.succeeded);
    assert_eq!(response.responses.len(), 1);
    let not_equal = TxnRequest {
        table: "x".into(),
        compare: vec![compare_value("lock", NotEqual, "x")],
        ..Default::default()
    };
    assert!(!kv.txn(not_equal).await.expect("txn").into_inner().succeeded);
    let greater = TxnRequest {
        table: "x".into(),
        compare: vec![compare_value("owner", Greater, "ma")],
        ..Default::default()
    };
    assert!(kv.txn(greater).await.expect("txn").into_inner().succeeded);

    // Armada extension: compare on mod revision.
    let by_revision = TxnRequest {
        table: "x".into(),
        compare: vec![mvcc::Compare {
            result: Equal as i32,
            target: mvcc::compare::CompareTarget::Mod as i32,
            key: "owner".into(),
            target_union: Some(mvcc::compare::TargetUnion::ModRevision(revision as i64)),
            range_end: Default::default(),
        }],
        success: vec![op_put("owner", "you")],
        failure: vec![],
    };
    assert!(
        kv.txn(by_revision.clone())
            .await
            .expect("txn")
            .into_inner()
            .succeeded
    );
    assert!(
        !kv.txn(by_revision)
            .await
            .expect("txn")
            .into_inner()
            .succeeded,
        "revision moved on"
    );

    // Read-only txn: served as a linearizable read, reports the observed revision.
    let current = kv
        .put(put("x", "r", "1"))
        .await
        .expect("put")
        .into_inner()
        .header
        .expect("h")
        .revision;
    let read_only = TxnRequest {
        table: "x".into(),
        success: vec![op_get("r")],
        ..Default::default()
    };
    let response = kv.txn(read_only).await.expect("read-only txn").into_inner();
    assert!(response.succeeded);
    assert_eq!(response.header.expect("h").revision, current);
    assert_eq!(range_value(&response.responses[0]), Some(b"1".to_vec()));
}

#[tokio::test(flavor = "multi_thread")]
async fn data_survives_restart_and_kill9() {
    let mut armada = Armada::start();
    armada.create_table("durable").await;
    let mut kv = armada.kv().await;
    let mut acked = Vec::new();
    for i in 0..300 {
        let key = format!("key-{i:04}");
        let response = kv
            .put(put("durable", key.clone(), format!("value-{i}")))
            .await
            .expect("put");
        acked.push((key, response.into_inner().header.expect("h").revision));
    }
    armada.kill9();
    armada.restart();
    let after_kill = all_keys(&armada, "durable").await;
    assert_eq!(
        after_kill.len(),
        acked.len(),
        "every acknowledged write survives kill -9"
    );
    for ((key, value, _, mod_revision), (acked_key, acked_revision)) in
        after_kill.iter().zip(&acked)
    {
        assert_eq!(key, acked_key.as_bytes());
        assert_eq!(*mod_revision as u64, *acked_revision);
        assert!(value.starts_with(b"value-"));
    }
    // Writes continue with higher revisions after recovery.
    let mut kv = armada.kv().await;
    let next = kv
        .put(put("durable", "after", "x"))
        .await
        .expect("put")
        .into_inner()
        .header
        .expect("h")
        .revision;
    assert!(next > acked.last().expect("acked").1);

    let status = armada.terminate();
    assert!(
        status.success(),
        "SIGTERM is a clean shutdown: {status}\n{}",
        armada.log()
    );
    armada.restart();
    assert_eq!(all_keys(&armada, "durable").await.len(), acked.len() + 1);
}
