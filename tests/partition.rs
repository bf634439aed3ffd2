//! A minority partition (issue 3): three nodes, each in a network namespace of its own. The Raft
//! leader of a table is cut off from the other two while a writer keeps writing through them.
//! The majority elects a leader and keeps acknowledging writes; the isolated old leader
//! acknowledges no write and serves no linearizable read, but still serves (stale) serializable
//! reads; after healing, every replica converges to the same applied index and content hash and
//! every acknowledged write is present. Needs root (see `netns::available`).
#![allow(clippy::too_many_lines)] // scenarios read top to bottom; the 70-line rule is for production code

mod common;
mod netns;
mod workload;

use std::time::{Duration, Instant};

use armada_proto::regatta::v1::CreateTableRequest;
use armada_proto::regatta::v1::tables_client::TablesClient;
use tonic::Code;
use workload::{
    Ack, Writer, agreed_leader, assert_all_present, channel, converge, eventually, kv, put,
    read_all, read_key, with_timeout,
};

const TABLE: &str = "partitioned";
const DEADLINE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread")]
async fn an_isolated_raft_leader_acknowledges_nothing_and_converges_after_healing() {
    if !netns::available() {
        return;
    }
    let temp = tempfile::tempdir().expect("tempdir");
    let network = netns::Network::create(3);
    let mut nodes: Vec<netns::Node> = (1..=3)
        .map(|id| netns::Node::spawn(&network, id, &temp.path().join(format!("node{id}"))))
        .collect();
    for node in &mut nodes {
        node.wait_serving();
    }
    let apis: Vec<String> = nodes.iter().map(|node| node.api.clone()).collect();

    eventually(DEADLINE, "the table to be created", || async {
        TablesClient::new(channel(&apis[0]))
            .create(with_timeout(
                CreateTableRequest {
                    name: TABLE.into(),
                    config: None,
                },
                Duration::from_secs(5),
            ))
            .await
            .ok()
    })
    .await;
    let (old_leader, old_term) = agreed_leader(&apis, TABLE, DEADLINE, |id| id != 0).await;
    let isolated_api = apis[old_leader as usize - 1].clone();
    let majority: Vec<u64> = (1..=3).filter(|id| *id != old_leader).collect();
    let majority_apis: Vec<String> = majority
        .iter()
        .map(|id| apis[*id as usize - 1].clone())
        .collect();

    let started = Instant::now();
    let writer = Writer::start(TABLE, "w", majority_apis.clone());
    writer.wait_acks_after(started, 20, DEADLINE).await;

    network.isolate(old_leader as usize);
    let isolated_at = Instant::now();

    // The majority elects a leader of its own and keeps acknowledging writes.
    let (new_leader, new_term) =
        agreed_leader(&majority_apis, TABLE, DEADLINE, |id| majority.contains(&id)).await;
    assert!(new_term > old_term);
    writer.wait_acks_after(isolated_at, 50, DEADLINE).await;
    eprintln!(
        "node {old_leader} (Raft leader in term {old_term}) isolated; node {new_leader} leads \
         in term {new_term}"
    );

    // The isolated old leader acknowledges no write...
    let refused = kv(&isolated_api)
        .put(with_timeout(
            put(TABLE, "isolated-put", "lost"),
            Duration::from_secs(3),
        ))
        .await
        .expect_err("the isolated old leader acknowledged a write");
    // Cancelled("Timeout expired") is what tonic's server answers when the request's
    // grpc-timeout runs out before the handler answers (its own deadline is the same instant).
    assert!(
        matches!(
            refused.code(),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled
        ),
        "put on the isolated node: {refused:?}"
    );
    // ...serves no linearizable read...
    let first = writer.acks().first().cloned().expect("an ack");
    let read = read_key(&isolated_api, TABLE, &first.key, true).await;
    assert!(
        read.is_err(),
        "the isolated old leader served a linearizable read: {read:?}"
    );
    // ...but serves serializable reads of its (stale) replica: it has what it committed before
    // the partition and none of the writes sent to the majority after it.
    let stale = eventually(
        DEADLINE,
        "a serializable read on the isolated node",
        || async { read_key(&isolated_api, TABLE, &first.key, false).await.ok() },
    )
    .await;
    assert_eq!(stale, Some(first.revision));
    let later: Ack = writer
        .acks()
        .into_iter()
        .find(|ack| ack.sent_at >= isolated_at)
        .expect("a write acknowledged after the partition");
    let stale = read_key(&isolated_api, TABLE, &later.key, false)
        .await
        .expect("a serializable read on the isolated node");
    assert_eq!(stale, None, "the isolated node has a write made without it");

    // Healing: the old leader rejoins, the writer keeps going.
    network.heal();
    let healed_at = Instant::now();
    writer.wait_acks_after(healed_at, 20, DEADLINE).await;
    let mut acks = writer.stop().await;
    // Through the old leader too, once it follows the new one.
    let through_old = eventually(DEADLINE, "a write through the healed node", || async {
        let response = kv(&isolated_api)
            .put(with_timeout(
                put(TABLE, "after-heal", "x"),
                Duration::from_secs(2),
            ))
            .await
            .ok()?;
        Some(response.into_inner().header.expect("header").revision as i64)
    })
    .await;
    acks.push(Ack {
        key: "after-heal".into(),
        revision: through_old,
        raft_term: 0,
        sent_at: Instant::now(),
    });

    let (applied, _) = converge(&apis, TABLE, Duration::from_secs(60)).await;
    assert!(applied as i64 >= through_old);
    for api in &apis {
        let present = read_all(api, TABLE, false)
            .await
            .unwrap_or_else(|status| panic!("range on {api}: {status}"));
        assert_all_present(&acks, &present);
        assert!(
            !present.contains_key("isolated-put"),
            "a write the isolated leader never acknowledged is present on {api}"
        );
    }
    let present = eventually(
        DEADLINE,
        "a linearizable range on the healed node",
        || async { read_all(&isolated_api, TABLE, true).await.ok() },
    )
    .await;
    assert_all_present(&acks, &present);
    eprintln!(
        "{} acknowledged writes present on all 3 nodes at applied index {applied}",
        acks.len()
    );
}
