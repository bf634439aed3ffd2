//! Multi-node leader clusters of real processes on loopback: writes and linearizable reads on
//! any node, tables on every node, failover after kill -9 with no acknowledged write lost.
#![allow(clippy::too_many_lines)] // scenarios read top to bottom; the 70-line rule is for production code

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use armada_proto::regatta::v1::{RangeRequest, StatusRequest};
use common::{Armada, Cluster, get, put, range};
use tonic::Code;

/// Polls `check` until it returns Some, failing after `limit`.
async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// (applied index, content hash) of a table on a node.
async fn table_state(node: &Armada, table: &str) -> Option<(u64, String, String)> {
    let mut cluster = tokio::time::timeout(Duration::from_secs(2), node.cluster())
        .await
        .ok()?;
    let status = cluster
        .status(StatusRequest { config: false })
        .await
        .ok()?
        .into_inner();
    let table = status.tables.get(table)?;
    Some((
        table.raft_applied_index,
        table.content_hash.clone(),
        table.leader.clone(),
    ))
}

/// Waits until every running node reports the same applied index and content hash.
async fn replicas_converge(cluster: &Cluster, table: &str) -> (u64, String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut states = Vec::new();
        for node in cluster.nodes.iter().filter(|node| node.is_running()) {
            states.push(table_state(node, table).await);
        }
        if let Some(Some(first)) = states.first().cloned()
            && states.iter().all(|state| {
                state
                    .as_ref()
                    .is_some_and(|(index, hash, _)| *index == first.0 && *hash == first.1)
            })
        {
            return (first.0, first.1);
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = cluster
                .nodes
                .iter()
                .map(|node| {
                    let log = node.log();
                    let panics: Vec<&str> = log
                        .lines()
                        .filter(|l| l.contains("panicked") || l.contains("assert"))
                        .take(5)
                        .collect();
                    format!(
                        "{}\n{}",
                        panics.join("\n"),
                        log.lines()
                            .filter(|l| !l.contains("pre-vote") && !l.contains("heartbeat"))
                            .rev()
                            .take(20)
                            .collect::<Vec<_>>()
                            .join("\n")
                    )
                })
                .collect();
            panic!(
                "replicas did not converge: {states:?}\n{}",
                logs.join("\n-----\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn three_nodes_serve_writes_and_linearizable_reads_on_any_node() {
    let cluster = Cluster::start(3, &[]);
    // Create through node 2: goes through the catalog group's leader wherever it is.
    let id = cluster.node(2).create_table("shared").await;
    assert_eq!(id, "10001");
    // The creating node serves it when Create returns; the others may apply the catalog entry
    // a heartbeat later, but a request reaching them at once must not see NotFound: a table
    // missing locally is looked up again after a ReadIndex on the catalog group.
    for node in [1, 3] {
        cluster
            .node(node)
            .kv()
            .await
            .put(put("shared", format!("first-{node}"), "x"))
            .await
            .unwrap_or_else(|error| panic!("node {node} right after Create: {error:?}"));
    }

    // Writes on every node; each is immediately visible to a linearizable read on every node.
    let mut revisions = Vec::new();
    for i in 0..30u64 {
        let writer = &cluster.nodes[(i % 3) as usize];
        let response = writer
            .kv()
            .await
            .put(put("shared", format!("k{i:02}"), format!("v{i}")))
            .await
            .expect("put on any node");
        let header = response.into_inner().header.expect("header");
        assert!(header.raft_leader_id >= 1 && header.raft_term >= 1);
        revisions.push(header.revision);
        for reader in &cluster.nodes {
            let mut request = get("shared", format!("k{i:02}"));
            request.linearizable = true;
            let read = reader
                .kv()
                .await
                .range(request)
                .await
                .expect("linearizable read")
                .into_inner();
            assert_eq!(read.kvs.len(), 1, "node {} misses k{i:02}", reader.rest);
            assert_eq!(read.kvs[0].mod_revision as u64, header.revision);
        }
    }
    assert!(
        revisions.windows(2).all(|pair| pair[0] < pair[1]),
        "revisions increase: {revisions:?}"
    );

    // Every replica ends with the same data and revisions.
    let (applied, hash) = replicas_converge(&cluster, "shared").await;
    assert!(applied >= *revisions.last().expect("revision"));
    assert_eq!(hash.len(), 64);

    // Same answer from every node for a serializable range once converged.
    let mut answers = BTreeMap::new();
    for node in &cluster.nodes {
        let all = node
            .kv()
            .await
            .range(range("shared", vec![0], vec![0]))
            .await
            .expect("range")
            .into_inner();
        let kvs: Vec<_> = all
            .kvs
            .iter()
            .map(|kv| {
                (
                    kv.key.to_vec(),
                    kv.value.to_vec(),
                    kv.create_revision,
                    kv.mod_revision,
                )
            })
            .collect();
        answers.insert(node.rest.clone(), kvs);
    }
    let first = answers.values().next().expect("answers").clone();
    assert!(answers.values().all(|kvs| *kvs == first));
    assert_eq!(first.len(), 32, "30 keys and the two first writes");

    // Members are all listed with their client URLs.
    let members = cluster
        .node(3)
        .cluster()
        .await
        .member_list(armada_proto::regatta::v1::MemberListRequest {})
        .await
        .expect("members")
        .into_inner();
    assert_eq!(members.members.len(), 3);
    assert!(
        members
            .members
            .iter()
            .all(|m| m.client_ur_ls.len() == 1 && m.peer_ur_ls.len() == 1),
        "{members:?}"
    );
    // Each member advertises the API address that node actually serves (port 0 resolved).
    for member in &members.members {
        let id: u64 = member.id.parse().expect("numeric id");
        assert_eq!(
            member.client_ur_ls,
            std::slice::from_ref(&cluster.node(id).api),
            "{members:?}"
        );
    }

    // Deleting on one node removes the table everywhere.
    cluster
        .node(3)
        .tables()
        .await
        .delete(armada_proto::regatta::v1::DeleteTableRequest {
            name: "shared".into(),
        })
        .await
        .expect("delete");
    for node in &cluster.nodes {
        eventually(Duration::from_secs(10), "table to disappear", || async {
            let status = node.kv().await.range(get("shared", "k00")).await;
            (status.err().map(|s| s.code()) == Some(Code::NotFound)).then_some(())
        })
        .await;
    }
}

/// Waits until every running node lists `table` (the catalog entry reaches the nodes that did
/// not create it a heartbeat later).
async fn table_on_every_node(cluster: &Cluster, table: &str) {
    for node in cluster.nodes.iter().filter(|node| node.is_running()) {
        eventually(
            Duration::from_secs(10),
            "every node to list the table",
            || async {
                let listed = node
                    .tables()
                    .await
                    .list(armada_proto::regatta::v1::ListTablesRequest {})
                    .await
                    .ok()?;
                listed
                    .into_inner()
                    .tables
                    .iter()
                    .any(|t| t.name == table)
                    .then_some(())
            },
        )
        .await;
    }
}

/// The node leading a table's group, once every running node names the same running one.
async fn raft_leader_of(cluster: &Cluster, table: &str) -> u64 {
    // Every running node must name the same running leader: one node's view alone can be
    // stale (an election it has not heard of yet), and a test acting on it would act on a
    // node that no longer leads.
    eventually(Duration::from_secs(30), "an agreed Raft leader", || async {
        let mut agreed = None;
        for node in cluster.nodes.iter().filter(|node| node.is_running()) {
            let (_, _, leader) = table_state(node, table).await?;
            let leader = leader.parse::<u64>().ok()?;
            if agreed.is_some_and(|agreed| agreed != leader) {
                return None;
            }
            agreed = Some(leader);
        }
        agreed.filter(|leader| cluster.node(*leader).is_running())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn kill9_of_the_raft_leader_under_load_loses_no_acknowledged_write() {
    let mut cluster = Cluster::start(3, &[]);
    cluster.node(1).create_table("load").await;
    table_on_every_node(&cluster, "load").await;
    let leader = raft_leader_of(&cluster, "load").await;
    let addresses: Vec<String> = cluster.nodes.iter().map(|node| node.api.clone()).collect();

    // Writers on every node, each writing distinct keys; acknowledged keys are recorded.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for (writer_id, address) in addresses.iter().enumerate() {
        let address = address.clone();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut acked: Vec<(String, u64, Instant)> = Vec::new();
            let mut sequence = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok(channel) = tonic::transport::Channel::from_shared(address.clone())
                    .expect("uri")
                    .connect()
                    .await
                else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let mut kv = armada_proto::regatta::v1::kv_client::KvClient::new(channel);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let key = format!("w{writer_id}-{sequence:06}");
                    let mut request = tonic::Request::new(put("load", key.clone(), "x"));
                    request.set_timeout(Duration::from_secs(2));
                    match kv.put(request).await {
                        Ok(response) => {
                            acked.push((
                                key,
                                response.into_inner().header.expect("header").revision,
                                Instant::now(),
                            ));
                            sequence += 1;
                        }
                        Err(status)
                            if status.code() == Code::Unavailable
                                && status.message().contains("transport") =>
                        {
                            break;
                        }
                        Err(_) => {
                            // Unknown outcome or no leader: move on to a new key (never reuse one
                            // whose write may have happened).
                            sequence += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
            }
            acked
        }));
    }
    // Let some writes through, then kill the leader.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed_at = Instant::now();
    cluster.node_mut(leader).kill9();
    let new_leader = raft_leader_of(&cluster, "load").await;
    assert_ne!(new_leader, leader);
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Bring the old leader back; it catches up.
    cluster.node_mut(leader).restart();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acked = Vec::new();
    for writer in writers {
        acked.extend(writer.await.expect("writer"));
    }
    let resumed = acked
        .iter()
        .filter(|(_, _, at)| *at > killed_at)
        .map(|(_, _, at)| *at)
        .min();
    let resumed = resumed.expect("writes resumed after the kill");
    eprintln!(
        "writes resumed {:?} after kill -9 of the Raft leader (node {leader}); {} writes acknowledged",
        resumed - killed_at,
        acked.len()
    );

    // Every acknowledged write is present, with its revision, in a final linearizable range.
    let (_, _) = replicas_converge(&cluster, "load").await;
    let mut request: RangeRequest = range("load", vec![0], vec![0]);
    request.linearizable = true;
    let mut present = BTreeMap::new();
    let mut stream = cluster
        .node(new_leader)
        .kv()
        .await
        .iterate_range(request)
        .await
        .expect("iterate")
        .into_inner();
    while let Some(message) = stream.message().await.expect("message") {
        for kv in message.kvs {
            present.insert(
                String::from_utf8(kv.key.to_vec()).expect("utf8"),
                kv.mod_revision as u64,
            );
        }
    }
    for (key, revision, _) in &acked {
        assert_eq!(
            present.get(key),
            Some(revision),
            "acknowledged write {key} lost or changed"
        );
    }
}

/// Writes `count` keys with the given prefix through `node`; returns (key, revision) pairs.
async fn write_keys(node: &Armada, table: &str, prefix: &str, count: usize) -> Vec<(String, u64)> {
    let mut kv = node.kv().await;
    let mut acked = Vec::new();
    for i in 0..count {
        let key = format!("{prefix}{i:05}");
        let revision = kv
            .put(put(table, key.clone(), "v"))
            .await
            .expect("put")
            .into_inner()
            .header
            .expect("h")
            .revision;
        acked.push((key, revision));
    }
    acked
}

fn snapshot_installs(node: &Armada) -> u64 {
    let (_, body) = common::http_get(&node.rest, "/metrics");
    body.lines()
        .filter(|line| line.starts_with("armada_raft_snapshot_installs_total"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Waits until the node reports a completed snapshot install (the data switch is visible to
/// readers slightly before the install call returns and is counted).
async fn snapshot_installed(node: &Armada) {
    eventually(Duration::from_secs(30), "a snapshot install", || async {
        (snapshot_installs(node) >= 1).then_some(())
    })
    .await
}

async fn assert_all_present(node: &Armada, table: &str, acked: &[(String, u64)]) {
    let mut request = range(table, vec![0], vec![0]);
    request.linearizable = true;
    let mut present = BTreeMap::new();
    let mut stream = node
        .kv()
        .await
        .iterate_range(request)
        .await
        .expect("iterate")
        .into_inner();
    while let Some(message) = stream.message().await.expect("message") {
        for kv in message.kvs {
            present.insert(
                String::from_utf8(kv.key.to_vec()).expect("utf8"),
                kv.mod_revision as u64,
            );
        }
    }
    for (key, revision) in acked {
        assert_eq!(present.get(key), Some(revision), "{key}");
    }
}

/// Waits until every running node has compacted its log past `index`.
async fn logs_compacted_past(cluster: &Cluster, table: &str, index: u64) {
    eventually(Duration::from_secs(30), "log compaction", || async {
        for node in cluster.nodes.iter().filter(|node| node.is_running()) {
            let status = node
                .cluster()
                .await
                .status(StatusRequest { config: false })
                .await
                .ok()?
                .into_inner();
            if status.tables.get(table)?.first_log_index <= index {
                return None;
            }
        }
        Some(())
    })
    .await
}

const SMALL_SNAPSHOTS: &[&str] = &[
    "--raft.snapshot-entries",
    "100",
    "--raft.compaction-overhead",
    "10",
];

#[tokio::test(flavor = "multi_thread")]
async fn a_node_that_fell_behind_catches_up_by_snapshot() {
    let mut cluster = Cluster::start(3, SMALL_SNAPSHOTS);
    cluster.node(1).create_table("snap").await;
    table_on_every_node(&cluster, "snap").await;
    let mut acked = write_keys(cluster.node(1), "snap", "a", 20).await;
    replicas_converge(&cluster, "snap").await;
    cluster.node_mut(3).terminate();
    // Far more than snapshot-entries + compaction-overhead: node 3's next entry is purged.
    acked.extend(write_keys(cluster.node(1), "snap", "b", 250).await);
    assert_eq!(snapshot_installs(cluster.node(1)), 0);
    logs_compacted_past(&cluster, "snap", 30).await;
    cluster.node_mut(3).restart();
    replicas_converge(&cluster, "snap").await;
    snapshot_installed(cluster.node(3)).await;
    // Node 3 serves every acknowledged write, at the leader's revisions.
    assert_all_present(cluster.node(3), "snap", &acked).await;
    let read = cluster
        .node(3)
        .kv()
        .await
        .range(get("snap", "b00249"))
        .await
        .expect("serializable read")
        .into_inner();
    assert_eq!(read.kvs.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_with_a_wiped_data_dir_rejoins_as_the_same_id() {
    let mut cluster = Cluster::start(3, SMALL_SNAPSHOTS);
    cluster.node(1).create_table("wipe").await;
    table_on_every_node(&cluster, "wipe").await;
    let acked = write_keys(cluster.node(2), "wipe", "k", 200).await;
    replicas_converge(&cluster, "wipe").await;
    logs_compacted_past(&cluster, "wipe", 1).await;
    cluster.node_mut(3).kill9();
    let data_dir = cluster.node(3).data_dir.clone();
    for entry in std::fs::read_dir(&data_dir).expect("data dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            std::fs::remove_dir_all(&path).expect("wipe");
        } else if path.file_name().is_some_and(|name| name != "armada.log") {
            std::fs::remove_file(&path).expect("wipe");
        }
    }
    cluster.node_mut(3).restart();
    replicas_converge(&cluster, "wipe").await;
    snapshot_installed(cluster.node(3)).await;
    assert_all_present(cluster.node(3), "wipe", &acked).await;
    // It takes writes again as a full member.
    let more = write_keys(cluster.node(3), "wipe", "z", 10).await;
    replicas_converge(&cluster, "wipe").await;
    assert_all_present(cluster.node(1), "wipe", &more).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_hands_raft_leadership_over_before_stopping() {
    let mut cluster = Cluster::start(3, &[]);
    cluster.node(1).create_table("handover").await;
    table_on_every_node(&cluster, "handover").await;
    let leader = raft_leader_of(&cluster, "handover").await;
    let status = cluster.node_mut(leader).terminate();
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    let log = cluster.node(leader).log();
    let line = log
        .lines()
        .find(|line| line.contains("handed Raft leadership over"))
        .unwrap_or_else(|| panic!("no leadership hand-over logged:\n{log}"));
    assert!(!line.contains("moved=0"), "{line}");
    // The others carry on under a new leader, and take writes.
    let next = raft_leader_of(&cluster, "handover").await;
    assert_ne!(next, leader);
    cluster
        .node(next)
        .kv()
        .await
        .put(put("handover", "after", "yes"))
        .await
        .expect("a write after the hand-over");
}
