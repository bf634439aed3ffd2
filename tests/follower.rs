//! Follower clusters, black-box: real `armada leader` and `armada follower` processes on
//! loopback. A follower cluster mirrors every table of the leader cluster with the leader's
//! revisions, bootstraps from snapshots, forwards writes with read-your-writes, survives the
//! loss of its replicating node and of the link to the leader, and follows table changes.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use armada_proto::regatta::v1::{DeleteTableRequest, RangeRequest, TableStatus};
use common::{Armada, Cluster, get, put, status};
use tonic::Code;

const CONVERGE_DEADLINE: Duration = Duration::from_secs(60);

async fn table_status(node: &Armada, table: &str) -> Option<TableStatus> {
    status(node).await?.tables.get(table).cloned()
}

/// Waits until every follower node holds exactly the leader's contents of `table` (same
/// content hash, same revision); returns that hash.
async fn wait_converged(leader: &Armada, followers: &[&Armada], table: &str) -> String {
    let deadline = Instant::now() + CONVERGE_DEADLINE;
    loop {
        // A status call may fail on a loaded machine (a deadline): just look again.
        let expected = table_status(leader, table).await.unwrap_or_default();
        let mut converged = !expected.content_hash.is_empty();
        for follower in followers {
            match table_status(follower, table).await {
                Some(status)
                    if status.content_hash == expected.content_hash
                        && status.revision == expected.revision => {}
                _ => converged = false,
            }
        }
        if converged {
            return expected.content_hash;
        }
        if Instant::now() > deadline {
            let mut report = format!("leader: {expected:?}\n");
            for follower in followers {
                report += &format!(
                    "follower: {:?}\n{}\n",
                    table_status(follower, table).await,
                    follower.log()
                );
            }
            panic!("followers did not converge on table {table}:\n{report}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `node` lists exactly `tables` (by name).
async fn wait_tables(node: &Armada, tables: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let names: Vec<String> = status(node)
            .await
            .map(|status| status.tables.keys().cloned().collect())
            .unwrap_or_default();
        let mut names = names;
        names.sort();
        if names == tables {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node lists {names:?}, expected {tables:?}:\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every key of `table` with its value and revisions, read from `node`.
async fn contents(node: &Armada, table: &str) -> BTreeMap<Vec<u8>, (Vec<u8>, i64, i64)> {
    let mut kv = node.kv().await;
    let mut out = BTreeMap::new();
    let mut from = vec![0u8];
    let deadline = Instant::now() + CONVERGE_DEADLINE;
    loop {
        let request = RangeRequest {
            table: table.as_bytes().to_vec().into(),
            key: from.clone().into(),
            range_end: vec![0u8].into(),
            ..Default::default()
        };
        let response = match kv.range(request).await {
            Ok(response) => response.into_inner(),
            // Transient on a loaded machine (a deadline, a replica starting): read again.
            Err(status) if Instant::now() < deadline && status.code() != Code::NotFound => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(status) => panic!("range on {}: {status:?}", node.api),
        };
        for kv in &response.kvs {
            out.insert(
                kv.key.to_vec(),
                (kv.value.to_vec(), kv.create_revision, kv.mod_revision),
            );
        }
        if !response.more {
            return out;
        }
        let mut next = response.kvs.last().expect("more implies kvs").key.to_vec();
        next.push(0);
        from = next;
    }
}

/// Puts `count` keys `prefix<i>` with `workers` writers in parallel.
async fn write_keys(node: &Armada, table: &str, prefix: &str, count: usize, workers: usize) {
    let mut tasks = Vec::new();
    for worker in 0..workers {
        let mut kv = node.kv().await;
        let table = table.to_string();
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            for i in (worker..count).step_by(workers) {
                kv.put(put(&table, format!("{prefix}{i:05}"), format!("value-{i}")))
                    .await
                    .expect("put on the leader");
            }
        }));
    }
    for task in tasks {
        task.await.expect("writer");
    }
}

fn start_leader(extra: &[&str]) -> Cluster {
    Cluster::start(1, extra)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_three_node_follower_cluster_mirrors_ten_thousand_writes_with_the_leaders_revisions() {
    let leader = start_leader(&[]);
    let leader = leader.node(1);
    leader.create_table("config").await;
    let followers = Cluster::start_follower(3, &leader.replication, &[]);
    let nodes: Vec<&Armada> = followers.nodes.iter().collect();

    write_keys(leader, "config", "key", 10_000, 16).await;
    let hash = wait_converged(leader, &nodes, "config").await;

    let expected = contents(leader, "config").await;
    assert_eq!(expected.len(), 10_000);
    for node in &nodes {
        assert_eq!(
            contents(node, "config").await,
            expected,
            "values, create and mod revisions are the leader's"
        );
        let status = table_status(node, "config").await.expect("status");
        assert_eq!(status.content_hash, hash);
        assert_eq!(status.replication_lag_entries, 0);
    }

    // A write sent to a follower node is visible in an immediate read on that node.
    for (i, node) in nodes.iter().enumerate() {
        let mut kv = node.kv().await;
        let written = kv
            .put(put("config", format!("via-follower-{i}"), "yes"))
            .await
            .expect("put through a follower")
            .into_inner();
        let revision = written.header.expect("header").revision;
        let read = kv
            .range(get("config", format!("via-follower-{i}")))
            .await
            .expect("read on the same node")
            .into_inner();
        assert_eq!(read.kvs.len(), 1, "read-your-writes on node {}", i + 1);
        assert_eq!(read.kvs[0].mod_revision as u64, revision);
        assert_eq!(&read.kvs[0].value[..], b"yes");
    }
    wait_converged(leader, &nodes, "config").await;

    // Tables are created and deleted on the leader cluster only.
    let mut tables = nodes[0].tables().await;
    let refused = tables
        .delete(DeleteTableRequest {
            name: "config".into(),
        })
        .await
        .expect_err("delete on a follower");
    assert_eq!(refused.code(), Code::Unimplemented);
    assert!(
        refused.message().contains(&leader.replication),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tables_appear_and_disappear_and_a_re_created_table_keeps_no_stale_keys() {
    let leader = start_leader(&[]);
    let leader = leader.node(1);
    leader.create_table("keep").await;
    let follower = Cluster::start_follower(1, &leader.replication, &[]);
    let follower = follower.node(1);
    wait_tables(follower, &["keep"]).await;

    // Appears (through the metadata feed, well within the 5 s reconcile interval) with its data.
    leader.create_table("fresh").await;
    write_keys(leader, "fresh", "old", 50, 4).await;
    wait_tables(follower, &["fresh", "keep"]).await;
    wait_converged(leader, &[follower], "fresh").await;

    // Deleted and re-created under the same name: the follower drops the old keys.
    let mut tables = leader.tables().await;
    tables
        .delete(DeleteTableRequest {
            name: "fresh".into(),
        })
        .await
        .expect("delete");
    leader.create_table("fresh").await;
    write_keys(leader, "fresh", "new", 5, 1).await;
    wait_converged(leader, &[follower], "fresh").await;
    let keys: Vec<Vec<u8>> = contents(follower, "fresh").await.into_keys().collect();
    assert_eq!(keys.len(), 5);
    assert!(keys.iter().all(|key| key.starts_with(b"new")), "{keys:?}");

    // Deleted on the leader: gone from the follower.
    tables
        .delete(DeleteTableRequest {
            name: "fresh".into(),
        })
        .await
        .expect("delete");
    wait_tables(follower, &["keep"]).await;
    let missing = follower
        .kv()
        .await
        .range(get("fresh", "new00000"))
        .await
        .expect_err("the table is gone");
    assert_eq!(missing.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_follower_started_after_compaction_bootstraps_from_a_snapshot() {
    let leader = start_leader(&[
        "--raft.snapshot-entries",
        "200",
        "--raft.compaction-overhead",
        "10",
    ]);
    let leader = leader.node(1);
    leader.create_table("big").await;
    write_keys(leader, "big", "k", 2_000, 8).await;
    // The leader's log no longer starts at 1.
    let deadline = Instant::now() + Duration::from_secs(30);
    while table_status(leader, "big")
        .await
        .expect("status")
        .first_log_index
        <= 1
    {
        assert!(
            Instant::now() < deadline,
            "the leader never compacted its log"
        );
        write_keys(leader, "big", "more", 200, 4).await;
    }
    let follower = Cluster::start_follower(1, &leader.replication, &[]);
    let follower = follower.node(1);
    wait_converged(leader, &[follower], "big").await;
    assert_eq!(
        contents(follower, "big").await,
        contents(leader, "big").await
    );
    let status = table_status(follower, "big").await.expect("status");
    assert!(status.replication_snapshot_recoveries >= 1, "{status:?}");

    // And it keeps tailing the log afterwards.
    write_keys(leader, "big", "after", 100, 4).await;
    wait_converged(leader, &[follower], "big").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_replicating_follower_node_loses_and_repeats_nothing() {
    let leader = start_leader(&[]);
    let leader = leader.node(1);
    leader.create_table("orders").await;
    let mut followers = Cluster::start_follower(3, &leader.replication, &[]);
    write_keys(leader, "orders", "first", 200, 4).await;
    {
        let nodes: Vec<&Armada> = followers.nodes.iter().collect();
        wait_converged(leader, &nodes, "orders").await;
    }
    // The replicating node is the Raft leader of the table's group in the follower cluster.
    let deadline = Instant::now() + CONVERGE_DEADLINE;
    let worker: u64 = loop {
        let leader = table_status(followers.node(1), "orders")
            .await
            .and_then(|status| status.leader.parse().ok());
        if let Some(leader) = leader {
            break leader;
        }
        assert!(
            Instant::now() < deadline,
            "the follower group has no leader"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let writer = {
        let leader_api = leader.kv().await;
        tokio::spawn(async move {
            let mut kv = leader_api;
            for i in 0..1_000 {
                kv.put(put("orders", format!("during{i:05}"), format!("v{i}")))
                    .await
                    .expect("put on the leader");
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    followers.node_mut(worker).kill9();
    writer.await.expect("writer");
    let survivors: Vec<&Armada> = followers
        .nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i as u64 + 1 != worker)
        .map(|(_, node)| node)
        .collect();
    wait_converged(leader, &survivors, "orders").await;
    let expected = contents(leader, "orders").await;
    assert_eq!(expected.len(), 1_200);
    for node in &survivors {
        assert_eq!(contents(node, "orders").await, expected);
    }
    followers.node_mut(worker).restart();
    let nodes: Vec<&Armada> = followers.nodes.iter().collect();
    wait_converged(leader, &nodes, "orders").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partitioned_follower_cluster_serves_stale_reads_then_converges() {
    let leader = start_leader(&[]);
    let leader = leader.node(1);
    leader.create_table("flags").await;
    let link = common::proxy::LinkProxy::start(&leader.replication).await;
    let followers = Cluster::start_follower(3, &link.address, &[]);
    let nodes: Vec<&Armada> = followers.nodes.iter().collect();
    write_keys(leader, "flags", "before", 100, 4).await;
    let before = wait_converged(leader, &nodes, "flags").await;

    link.cut();
    write_keys(leader, "flags", "during", 300, 4).await;
    // Every follower node keeps serving its (stale) copy.
    for node in &nodes {
        let read = node
            .kv()
            .await
            .range(get("flags", "before00007"))
            .await
            .expect("a stale read during the partition")
            .into_inner();
        assert_eq!(read.kvs.len(), 1);
        let status = table_status(node, "flags").await.expect("status");
        assert_eq!(status.content_hash, before, "nothing arrives while cut");
    }

    link.heal();
    write_keys(leader, "flags", "after", 100, 4).await;
    wait_converged(leader, &nodes, "flags").await;
    let expected = contents(leader, "flags").await;
    assert_eq!(expected.len(), 500);
    for node in &nodes {
        assert_eq!(contents(node, "flags").await, expected);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn follower_lag_and_readiness_are_visible() {
    let leader = start_leader(&[]);
    let leader = leader.node(1);
    leader.create_table("a").await;
    let link = common::proxy::LinkProxy::start(&leader.replication).await;
    let follower = Cluster::start_follower(1, &link.address, &[]);
    let follower = follower.node(1);
    write_keys(leader, "a", "k", 10, 2).await;
    wait_converged(leader, &[follower], "a").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while common::http_get(&follower.rest, "/readyz").0 != 200 {
        assert!(Instant::now() < deadline, "follower never ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, metrics) = common::http_get(&follower.rest, "/metrics");
    for name in [
        "armada_replication_leader_index",
        "armada_replication_follower_index",
        "armada_replication_lag_entries",
        "armada_replication_lag_seconds",
        "armada_replication_snapshot_recoveries_total",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }

    // Cut the link and write: the leader's index is known from before, so nothing newer is
    // known; the node stays ready (it serves its copy) and says why it is stale.
    link.cut();
    leader.create_table("b").await;
    write_keys(leader, "a", "late", 10, 2).await;
    let status = table_status(follower, "a").await.expect("status");
    assert_eq!(
        status.replication_lag_entries, 0,
        "nothing newer is known yet"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, body) = common::http_get(&follower.rest, "/readyz");
        assert_eq!(code, 200, "a cut-off follower stays ready: {body}");
        if body.contains("stale: no answer from the leader cluster") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never said the follower is stale: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    link.heal();
    let deadline = Instant::now() + Duration::from_secs(30);
    while common::http_get(&follower.rest, "/readyz") != (200, "ready\n".to_string()) {
        assert!(
            Instant::now() < deadline,
            "follower still stale after the heal: {:?}",
            common::http_get(&follower.rest, "/readyz")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_converged(leader, &[follower], "b").await;
    wait_converged(leader, &[follower], "a").await;
    let status = table_status(follower, "a").await.expect("status");
    assert!(status.replication_leader_index >= status.replication_applied_index);
    assert_eq!(status.replication_applied_index, status.revision);
}

#[tokio::test(flavor = "multi_thread")]
async fn reset_re_bootstraps_a_table_to_the_leaders_exact_state() {
    use armada_proto::maintenance::v1::ResetRequest;
    use armada_proto::maintenance::v1::maintenance_client::MaintenanceClient;
    let leader = start_leader(&[]);
    let leader = leader.node(1);
    leader.create_table("policy").await;
    write_keys(leader, "policy", "k", 300, 4).await;
    let follower = Cluster::start_follower(1, &leader.replication, &[]);
    let follower = follower.node(1);
    let hash = wait_converged(leader, &[follower], "policy").await;
    let before = table_status(follower, "policy")
        .await
        .expect("status")
        .replication_snapshot_recoveries;

    MaintenanceClient::new(follower.channel().await)
        .reset(ResetRequest {
            table: "policy".into(),
            reset_all: false,
        })
        .await
        .expect("reset");
    // Reset returns once the table holds the leader's data again, from a fresh snapshot.
    let status = table_status(follower, "policy").await.expect("status");
    assert!(
        status.replication_snapshot_recoveries > before,
        "{status:?}"
    );
    assert_eq!(status.content_hash, hash);
    assert_eq!(
        contents(follower, "policy").await,
        contents(leader, "policy").await
    );
    // And it keeps replicating afterwards.
    write_keys(leader, "policy", "after", 20, 2).await;
    wait_converged(leader, &[follower], "policy").await;
}
