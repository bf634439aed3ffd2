//! In-process Raft clusters over the in-memory transport: several [`Node`]s in one test, each
//! with its own data directory, talking through a [`MemoryNetwork`] instead of QUIC. A test can
//! cut links, drop nodes and restart them from their data directory without processes, ports or
//! network namespaces, and look inside every node (Raft metrics, logs, table views).
//!
//! Faults injected:
//!
//! - a table group's Raft leader cut off from every peer under a continuous writer: the majority
//!   elects a leader and keeps acknowledging writes, while the isolated node acknowledges no
//!   write and serves no linearizable read; after healing, every acknowledged write is on every
//!   replica and the replicas' contents are equal;
//! - two of five nodes crashing, the table group's Raft leader among them;
//! - a node restarting from its data directory, and one restarting after the leader compacted
//!   its log past it (it must be rebuilt by a streamed snapshot).
//!
//! Every wait polls a condition until a deadline; no assertion depends on how fast anything is.
//! The tests run one at a time (nextest group `simulation`): each runs several nodes' Raft timers
//! in one process.

use std::collections::BTreeMap;

use armada_storage::NodeId;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use armada_storage::TableId;
use armada_table::{RangeEnd, RangeQuery, pb};
use bytes::Bytes;
use futures::StreamExt;
use openraft::async_runtime::WatchReceiver;
use prost::Message;
use tokio::time::Instant;

use super::rpc::{self, PeerResponse, PeerResult, SnapshotHeader};
use crate::config::ServerConfig;
use crate::error::ApiError;
use crate::groups::types::{Request, Response};
use crate::node::{GroupHandle, Node};
use crate::transport::{BodyStream, Handler, MemoryNetwork, PeerId, Transport};

/// Raft timing of the simulated nodes: 50 ms heartbeats and 500-1000 ms election timeouts, short
/// enough for quick fail-overs, long enough that a loaded machine rarely sees spurious elections.
const RTT_MS: u64 = 10;
const HEARTBEAT_RTT: u64 = 5;
const ELECTION_RTT: u64 = 50;

/// How long any awaited condition may take.
const CONDITION_TIMEOUT: Duration = Duration::from_secs(20);
/// Deadline of one write or read that should succeed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Deadline of a write or read the isolated node must refuse.
const ISOLATED_REQUEST_TIMEOUT: Duration = Duration::from_millis(1500);
/// Writes in flight at once when a test writes many keys.
const CONCURRENT_WRITES: usize = 8;

/// Snapshot settings of a simulated cluster.
#[derive(Clone, Copy)]
struct Snapshots {
    entries: u64,
    compaction_overhead: u64,
}

/// The defaults of `raft.snapshot-entries` and `raft.compaction-overhead`.
const DEFAULT_SNAPSHOTS: Snapshots = Snapshots {
    entries: 10_000,
    compaction_overhead: 5_000,
};

/// Compaction after 100 entries keeping 10: a node down for a few hundred writes needs a snapshot.
const SMALL_SNAPSHOTS: Snapshots = Snapshots {
    entries: 100,
    compaction_overhead: 10,
};

struct SimCluster {
    network: MemoryNetwork,
    /// `raft.initial-members` of every node; the addresses are only names.
    members: String,
    snapshots: Snapshots,
    nodes: BTreeMap<u64, SimNode>,
}

struct SimNode {
    /// Kept across restarts: the node's data directory.
    data_dir: tempfile::TempDir,
    running: Option<Arc<Node>>,
    /// Snapshot streams the running incarnation installed, by last log index.
    snapshots_installed: Arc<Mutex<Vec<u64>>>,
    /// The number of writes in each `WriteBatch` the running incarnation received.
    write_batches: Arc<Mutex<Vec<usize>>>,
    /// While set, forwarded writes and ReadIndex requests reaching the running incarnation are
    /// swallowed: it never answers them, like a leader that dies after receiving them.
    swallow: Arc<Swallow>,
}

#[derive(Default)]
struct Swallow {
    enabled: AtomicBool,
    /// Requests swallowed so far.
    count: AtomicU64,
}

impl SimCluster {
    /// Starts `count` nodes (ids 1..=count) and waits until each has a catalog leader.
    async fn start(count: u64, snapshots: Snapshots) -> SimCluster {
        init_tracing();
        let members = (1..=count)
            .map(|id| format!("{id}=node-{id}:1"))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = SimCluster {
            network: MemoryNetwork::new(),
            members,
            snapshots,
            nodes: BTreeMap::new(),
        };
        for id in 1..=count {
            let data_dir = tempfile::tempdir().expect("data dir");
            cluster.nodes.insert(
                id,
                SimNode {
                    data_dir,
                    running: None,
                    snapshots_installed: Arc::default(),
                    write_batches: Arc::default(),
                    swallow: Arc::default(),
                },
            );
            cluster.boot(id).await;
        }
        for (id, node) in cluster.running() {
            assert!(
                node.wait_ready(CONDITION_TIMEOUT).await,
                "node {id} saw no catalog leader"
            );
        }
        cluster
    }

    fn config(&self, id: u64) -> ServerConfig {
        let mut config = ServerConfig {
            data_dir: self.nodes[&id].data_dir.path().to_path_buf(),
            ..ServerConfig::default()
        };
        config.raft.node_id = id;
        config.raft.address = format!("node-{id}:1");
        config.raft.initial_members = self.members.clone();
        config.raft.rtt = RTT_MS;
        config.raft.heartbeat_rtt = HEARTBEAT_RTT;
        config.raft.election_rtt = ELECTION_RTT;
        config.raft.snapshot_entries = self.snapshots.entries;
        config.raft.compaction_overhead = self.snapshots.compaction_overhead;
        config
    }

    /// Starts node `id` on its data directory and adds it to the network.
    async fn boot(&mut self, id: u64) {
        let config = self.config(id);
        let network = self.network.clone();
        let installed: Arc<Mutex<Vec<u64>>> = Arc::default();
        let recorded = installed.clone();
        let batches: Arc<Mutex<Vec<usize>>> = Arc::default();
        let recorded_batches = batches.clone();
        let swallow: Arc<Swallow> = Arc::default();
        let swallowing = swallow.clone();
        let node = Node::start_with_transport(config, move |handler| async move {
            let handler = Arc::new(RecordingHandler {
                inner: handler,
                snapshots_installed: recorded,
                write_batches: recorded_batches,
                swallow: swallowing,
            });
            Ok(network.add_node(NodeId(id), handler) as Arc<dyn Transport>)
        })
        .await
        .unwrap_or_else(|error| panic!("node {id} did not start: {error:#}"));
        let slot = self.nodes.get_mut(&id).expect("a known node");
        slot.running = Some(node);
        slot.snapshots_installed = installed;
        slot.write_batches = batches;
        slot.swallow = swallow;
    }

    /// Crashes node `id`: it drops off the network at once, then its groups are stopped and the
    /// node is released (so its data directory can be opened again).
    async fn crash(&mut self, id: u64) {
        self.network.remove_node(NodeId(id));
        let node = self
            .nodes
            .get_mut(&id)
            .and_then(|slot| slot.running.take())
            .expect("a running node");
        node.shutdown().await;
        let released = Arc::downgrade(&node);
        drop(node);
        eventually(&format!("node {id} released"), async || {
            (released.strong_count() == 0).then_some(())
        })
        .await;
    }

    /// Stops every running node at once, so no group runs on while the data directories are
    /// deleted.
    async fn stop(mut self) {
        let nodes: Vec<(u64, Arc<Node>)> = self
            .nodes
            .iter_mut()
            .filter_map(|(id, slot)| Some((*id, slot.running.take()?)))
            .collect();
        for (id, _) in &nodes {
            self.network.remove_node(NodeId(*id));
        }
        futures::future::join_all(nodes.iter().map(|(_, node)| node.shutdown())).await;
        for (id, node) in nodes {
            let released = Arc::downgrade(&node);
            drop(node);
            eventually(&format!("node {id} released"), async || {
                (released.strong_count() == 0).then_some(())
            })
            .await;
        }
    }

    fn node(&self, id: u64) -> Arc<Node> {
        self.nodes[&id].running.clone().expect("a running node")
    }

    fn running(&self) -> Vec<(u64, Arc<Node>)> {
        self.nodes
            .iter()
            .filter_map(|(id, slot)| Some((*id, slot.running.clone()?)))
            .collect()
    }

    /// Creates a table through node `via` and waits until every running node serves it.
    async fn create_table(&self, via: u64, name: &str) -> TableId {
        let deadline = Instant::now() + CONDITION_TIMEOUT;
        let id = self
            .node(via)
            .create_table(name, deadline)
            .await
            .expect("create table");
        for (node_id, node) in self.running() {
            eventually(&format!("table {name} on node {node_id}"), async || {
                node.table(name).await.ok().map(|_| ())
            })
            .await;
        }
        id
    }

    /// The Raft leader of the table's group once every node in `among` names the same one, and
    /// it is one of them.
    async fn table_leader(&self, name: &str, among: &[u64]) -> u64 {
        eventually(
            &format!("one Raft leader of {name} among {among:?}"),
            async || {
                let mut leaders = among
                    .iter()
                    .map(|id| table_raft_leader(&self.node(*id), name))
                    .collect::<Option<Vec<u64>>>()?;
                leaders.dedup();
                match leaders[..] {
                    [leader] if among.contains(&leader) => Some(leader),
                    _ => None,
                }
            },
        )
        .await
    }

    /// Waits until every running replica of the table has applied its whole log, and returns
    /// the common applied index and content hash (it asserts they are equal).
    async fn converged(&self, name: &str) -> (u64, String) {
        eventually(&format!("replicas of {name} converged"), async || {
            let mut states = Vec::new();
            let mut last_log_index = 0;
            for (_, node) in self.running() {
                let group = node.table_groups().get(name)?.clone();
                last_log_index =
                    last_log_index.max(group.raft().metrics().borrow_watched().last_log_index?);
                let view = group.table().read_view();
                let hash = view.content_hash().expect("content hash");
                states.push((view.position().log_index.get(), hash));
            }
            let (index, hash) = states.first()?.clone();
            if index != last_log_index || states.iter().any(|state| state.0 != index) {
                return None;
            }
            for (node_id, state) in self.running().iter().map(|(id, _)| id).zip(&states) {
                assert_eq!(
                    state.1, hash,
                    "node {node_id}'s content differs at applied index {index}"
                );
            }
            Some((index, hash))
        })
        .await
    }
}

/// Serves a node's peers as its [`crate::cluster::handler::PeerHandler`] does, and records the
/// snapshots it installed (a snapshot stream answered with a snapshot response) and the sizes of
/// the forwarded write batches it received.
struct RecordingHandler {
    inner: Arc<dyn Handler>,
    snapshots_installed: Arc<Mutex<Vec<u64>>>,
    write_batches: Arc<Mutex<Vec<usize>>>,
    swallow: Arc<Swallow>,
}

#[async_trait::async_trait]
impl Handler for RecordingHandler {
    async fn handle(&self, from: PeerId, request: Bytes) -> Result<Bytes, String> {
        let decoded = rpc::decode::<rpc::PeerRequest>(&request);
        if let Ok(rpc::PeerRequest::WriteBatch { requests, .. }) = &decoded {
            self.write_batches
                .lock()
                .expect("write batch record")
                .push(requests.len());
        }
        if self.swallow.enabled.load(Ordering::SeqCst)
            && matches!(
                decoded,
                Ok(rpc::PeerRequest::Write { .. }
                    | rpc::PeerRequest::WriteBatch { .. }
                    | rpc::PeerRequest::ReadIndex { .. })
            )
        {
            self.swallow.count.fetch_add(1, Ordering::SeqCst);
            return std::future::pending().await;
        }
        self.inner.handle(from, request).await
    }

    async fn handle_stream(
        &self,
        from: PeerId,
        header: Bytes,
        body: BodyStream,
    ) -> Result<Bytes, String> {
        let last_index = rpc::decode::<SnapshotHeader>(&header)
            .ok()
            .and_then(|header| header.meta.last_log_id)
            .map(|log_id| log_id.index);
        let answer = self.inner.handle_stream(from, header, body).await?;
        if let (Some(index), Ok(Ok(PeerResponse::Snapshot(_)))) =
            (last_index, rpc::decode::<PeerResult>(&answer))
        {
            self.snapshots_installed
                .lock()
                .expect("snapshot record")
                .push(index);
        }
        Ok(answer)
    }
}

/// A 3-node cluster with table `name`: the table's Raft leader and the two other nodes.
async fn three_nodes_with_table(name: &str) -> (SimCluster, u64, Vec<u64>) {
    let cluster = SimCluster::start(3, DEFAULT_SNAPSHOTS).await;
    cluster.create_table(1, name).await;
    let leader = cluster.table_leader(name, &[1, 2, 3]).await;
    let others = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
    (cluster, leader, others)
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Polls `condition` until it yields a value; fails the test after [`CONDITION_TIMEOUT`].
async fn eventually<T>(what: &str, mut condition: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + CONDITION_TIMEOUT;
    loop {
        if let Some(value) = condition().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The table group's Raft leader as `node`'s replica knows it.
fn table_raft_leader(node: &Node, name: &str) -> Option<u64> {
    let group = node.table_groups().get(name)?.clone();
    group.raft().metrics().borrow_watched().current_leader
}

/// Writes `key = value` through `node` (forwarded to the Raft leader when needed), as KV.Put
/// does; returns the entry's log index.
async fn put(node: &Node, table: &str, key: &str, value: &str) -> Result<u64, ApiError> {
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    put_until(node, table, key, value, deadline).await
}

async fn put_until(
    node: &Node,
    table: &str,
    key: &str,
    value: &str,
    deadline: Instant,
) -> Result<u64, ApiError> {
    let group = node.table(table).await?;
    let command = pb::Command {
        table: Bytes::copy_from_slice(table.as_bytes()),
        r#type: pb::command::CommandType::Put as i32,
        kv: Some(pb::KeyValue {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::copy_from_slice(value.as_bytes()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let request = Request(Bytes::from(command.encode_to_vec()));
    let (log_index, response) = node
        .write(&GroupHandle::Table(group), request, deadline)
        .await?;
    match response {
        Response::Table { .. } => Ok(log_index.get()),
        other => panic!("unexpected response to a put: {other:?}"),
    }
}

/// Writes `key{n} = value{n}` for every `n` in `keys` through `node`, a few at a time, as a
/// client that retries does: each write must be acknowledged within [`CONDITION_TIMEOUT`] (a
/// retried put writes the same value again).
async fn put_many(node: &Node, table: &str, prefix: &str, keys: std::ops::Range<u64>) {
    futures::stream::iter(keys)
        .map(|n| async move {
            let key = format!("{prefix}{n:05}");
            let value = format!("value-{key}");
            let deadline = Instant::now() + CONDITION_TIMEOUT;
            while let Err(error) = put(node, table, &key, &value).await {
                assert!(Instant::now() < deadline, "put {key}: {error}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .buffer_unordered(CONCURRENT_WRITES)
        .collect::<()>()
        .await;
}

/// Reads `key` linearizably through `node` (ReadIndex from the Raft leader, then the local
/// replica), as KV.Range with `linearizable` does.
async fn get_linearizable(
    node: &Node,
    table: &str,
    key: &str,
    deadline: Instant,
) -> Result<Option<Bytes>, ApiError> {
    let group = node.table(table).await?;
    node.linearize(&group, deadline).await?;
    Ok(get_local(node, table, key))
}

/// Reads `key` linearizably through `node`, retrying while the cluster cannot answer (a
/// leader change under load) for up to [`CONDITION_TIMEOUT`]; the first answer is returned.
async fn get_linearizable_eventually(node: &Node, table: &str, key: &str) -> Option<Bytes> {
    let deadline = Instant::now() + CONDITION_TIMEOUT;
    loop {
        let attempt = Instant::now() + REQUEST_TIMEOUT;
        match get_linearizable(node, table, key, attempt).await {
            Ok(value) => return value,
            Err(error) => assert!(Instant::now() < deadline, "read {key}: {error}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads `key` from `node`'s replica as it is (serializable).
fn get_local(node: &Node, table: &str, key: &str) -> Option<Bytes> {
    let group = node.table_groups().get(table)?.clone();
    let query = RangeQuery::new(Bytes::copy_from_slice(key.as_bytes()), RangeEnd::Single);
    let outcome = group.table().read_view().range(&query).expect("range");
    outcome.kvs.into_iter().next().map(|kv| kv.value)
}

/// Asserts that every key `{prefix}{n}` of `keys` holds its value on every running node.
fn assert_present(cluster: &SimCluster, table: &str, prefix: &str, keys: std::ops::Range<u64>) {
    for (id, node) in cluster.running() {
        for n in keys.clone() {
            let key = format!("{prefix}{n:05}");
            assert_eq!(
                get_local(&node, table, &key).as_deref(),
                Some(format!("value-{key}").as_bytes()),
                "{key} on node {id}"
            );
        }
    }
}

/// Writes `w{n}` through the given nodes in turn until told to stop; returns the acknowledged
/// keys. Failed writes (their outcome may be unknown) are skipped.
struct Writer {
    stop: Arc<AtomicBool>,
    acknowledged: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Writer {
    fn start(nodes: Vec<Arc<Node>>, table: &'static str) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acknowledged = Arc::new(AtomicU64::new(0));
        let (stopping, counting) = (stop.clone(), acknowledged.clone());
        let task = tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut n = 0u64;
            while !stopping.load(Ordering::SeqCst) {
                let node = &nodes[n as usize % nodes.len()];
                let key = format!("w{n:05}");
                if put(node, table, &key, &format!("value-{key}"))
                    .await
                    .is_ok()
                {
                    acked.push(key);
                    counting.fetch_add(1, Ordering::SeqCst);
                }
                n += 1;
            }
            acked
        });
        Writer {
            stop,
            acknowledged,
            task,
        }
    }

    fn acknowledged(&self) -> u64 {
        self.acknowledged.load(Ordering::SeqCst)
    }

    /// Waits until `count` more writes were acknowledged than now.
    async fn wait_for_more(&self, count: u64, what: &str) {
        let target = self.acknowledged() + count;
        eventually(what, async || (self.acknowledged() >= target).then_some(())).await;
    }

    async fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("writer")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_every_node_are_read_linearizably_everywhere() {
    let cluster = SimCluster::start(3, DEFAULT_SNAPSHOTS).await;
    cluster.create_table(1, "t").await;
    for (id, node) in cluster.running() {
        put_many(&node, "t", &format!("from-{id}-"), 0..10).await;
    }
    for (id, node) in cluster.running() {
        for writer in 1..=3 {
            for n in 0..10 {
                let key = format!("from-{writer}-{n:05}");
                let value = get_linearizable_eventually(&node, "t", &key).await;
                assert_eq!(
                    value.as_deref(),
                    Some(format!("value-{key}").as_bytes()),
                    "{key} on node {id}"
                );
            }
        }
    }
    cluster.converged("t").await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_at_a_non_leader_are_forwarded_in_batches_each_applied_once() {
    const WRITES: usize = 300;
    let cluster = SimCluster::start(3, DEFAULT_SNAPSHOTS).await;
    cluster.create_table(1, "t").await;
    let leader = cluster.table_leader("t", &[1, 2, 3]).await;
    let via = (1..=3).find(|id| *id != leader).expect("a non-leader");
    let node = cluster.node(via);
    // All at once: while the first forwarded batches are in flight (at most 4 per queue), the
    // others wait in the queue and leave together.
    let results = futures::future::join_all((0..WRITES).map(|n| {
        let node = node.clone();
        async move {
            let key = format!("batched-{n:05}");
            put(&node, "t", &key, &format!("value-{key}")).await
        }
    }))
    .await;
    let mut indexes: Vec<u64> = results
        .into_iter()
        .enumerate()
        .map(|(n, result)| result.unwrap_or_else(|error| panic!("write {n}: {error}")))
        .collect();
    drop(node);
    indexes.sort_unstable();
    indexes.dedup();
    assert_eq!(indexes.len(), WRITES, "each write has its own log entry");
    let batches = cluster.nodes[&leader]
        .write_batches
        .lock()
        .expect("write batch record")
        .clone();
    assert!(
        batches.iter().any(|writes| *writes > 1),
        "no forwarded batch carried more than one write: {batches:?}"
    );
    assert!(
        batches
            .iter()
            .all(|writes| *writes <= super::forward::MAX_BATCH),
        "a batch exceeds the limit: {batches:?}"
    );
    cluster.converged("t").await;
    assert_present(&cluster, "t", "batched-", 0..WRITES as u64);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_raft_leader_acknowledges_nothing_and_the_majority_goes_on() {
    let (cluster, old_leader, majority) = three_nodes_with_table("t").await;
    let isolated = cluster.node(old_leader);
    let writer = Writer::start(majority.iter().map(|id| cluster.node(*id)).collect(), "t");
    writer
        .wait_for_more(20, "writes before the partition")
        .await;

    cluster.network.set_node_links(NodeId(old_leader), false);
    // At once: openraft leaders do not step down on their own, so it still believes it leads
    // (unless leadership moved just before the cut). No quorum, so no write and no read.
    let deadline = Instant::now() + ISOLATED_REQUEST_TIMEOUT;
    let write = put_until(&isolated, "t", "isolated-1", "x", deadline).await;
    assert!(write.is_err(), "the isolated leader acknowledged {write:?}");
    let deadline = Instant::now() + ISOLATED_REQUEST_TIMEOUT;
    let read = get_linearizable(&isolated, "t", "w00000", deadline).await;
    assert!(read.is_err(), "the isolated leader served {read:?}");

    let new_leader = cluster.table_leader("t", &majority).await;
    assert_ne!(new_leader, old_leader);
    writer
        .wait_for_more(20, "writes acknowledged by the majority")
        .await;
    // Still nothing on the isolated node, now that another leader exists beside it.
    let deadline = Instant::now() + ISOLATED_REQUEST_TIMEOUT;
    let write = put_until(&isolated, "t", "isolated-2", "x", deadline).await;
    assert!(write.is_err(), "the isolated node acknowledged {write:?}");
    let deadline = Instant::now() + ISOLATED_REQUEST_TIMEOUT;
    let read = get_linearizable(&isolated, "t", "w00000", deadline).await;
    assert!(read.is_err(), "the isolated node served {read:?}");
    let acked = writer.finish().await;

    cluster.network.set_node_links(NodeId(old_leader), true);
    cluster.table_leader("t", &[1, 2, 3]).await;
    cluster.converged("t").await;
    for (id, node) in cluster.running() {
        // Appended only by the isolated node, under its old term: overwritten by the new leader.
        for key in ["isolated-1", "isolated-2"] {
            assert_eq!(get_local(&node, "t", key), None, "{key} on node {id}");
        }
        for key in &acked {
            assert_eq!(
                get_local(&node, "t", key).as_deref(),
                Some(format!("value-{key}").as_bytes()),
                "acknowledged {key} on node {id}"
            );
        }
    }
    // The healed node serves linearizable reads again.
    let last = acked.last().expect("acknowledged writes");
    let read = get_linearizable_eventually(&isolated, "t", last).await;
    assert_eq!(read.as_deref(), Some(format!("value-{last}").as_bytes()));
    drop(isolated);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_to_a_leader_that_dies_end_when_another_leads() {
    let (cluster, old_leader, majority) = three_nodes_with_table("t").await;
    let via = majority[0];
    let node = cluster.node(via);
    put(&node, "t", "before", "1")
        .await
        .expect("a write before");
    let swallow = cluster.nodes[&old_leader].swallow.clone();
    swallow.enabled.store(true, Ordering::SeqCst);

    // Deadlines far beyond any election: the answers must come from the leader change.
    let deadline = Instant::now() + CONDITION_TIMEOUT * 3;
    let write = tokio::spawn({
        let node = node.clone();
        async move { put_until(&node, "t", "in-flight", "x", deadline).await }
    });
    let read = tokio::spawn({
        let node = node.clone();
        async move { get_linearizable(&node, "t", "before", deadline).await }
    });
    eventually("the write and the read reached the leader", async || {
        (swallow.count.load(Ordering::SeqCst) >= 2).then_some(())
    })
    .await;
    // The leader dies for the others (it keeps the requests and never answers).
    cluster.network.set_node_links(NodeId(old_leader), false);

    let write = write.await.expect("write task");
    match &write {
        Err(ApiError::Unavailable(message)) => assert!(
            message.contains("leader changed") && message.contains("outcome is unknown"),
            "{message}"
        ),
        other => panic!("a write in flight to a dead leader ended with {other:?}"),
    }
    // A read is retried with the new leader.
    let read = read.await.expect("read task").expect("the read is served");
    assert_eq!(read.as_deref(), Some(&b"1"[..]));
    assert_ne!(cluster.table_leader("t", &majority).await, old_leader);
    put(&node, "t", "after", "2").await.expect("a write after");
    drop(node);
    cluster.network.set_node_links(NodeId(old_leader), true);
    cluster.converged("t").await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_its_peers_hands_nothing_over_when_stopping() {
    let (cluster, old_leader, majority) = three_nodes_with_table("t").await;
    cluster.network.set_node_links(NodeId(old_leader), false);
    // The others elect a leader (so nobody has acknowledged the old one for an election
    // timeout) and go on writing.
    assert_ne!(cluster.table_leader("t", &majority).await, old_leader);
    put_many(&cluster.node(majority[0]), "t", "after-", 0..5).await;
    let isolated = cluster.node(old_leader);
    assert_eq!(
        table_raft_leader(&isolated, "t"),
        Some(old_leader),
        "openraft leaders do not step down on their own"
    );
    // No member could take over: it starts no hand-over (each would wait out its timeout).
    assert_eq!(isolated.transfer_leaderships(CONDITION_TIMEOUT).await, 0);
    drop(isolated);
    cluster.network.set_node_links(NodeId(old_leader), true);
    cluster.converged("t").await;
    // Healed, a leader hands over as before.
    let leader = cluster.table_leader("t", &[1, 2, 3]).await;
    let node = cluster.node(leader);
    assert!(node.transfer_leaderships(CONDITION_TIMEOUT).await >= 1);
    drop(node);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_survive_two_crashes() {
    let mut cluster = SimCluster::start(5, DEFAULT_SNAPSHOTS).await;
    cluster.create_table(1, "t").await;
    put_many(&cluster.node(2), "t", "before-", 0..20).await;
    let leader = cluster.table_leader("t", &[1, 2, 3, 4, 5]).await;
    let other = if leader == 5 { 4 } else { 5 };
    cluster.crash(leader).await;
    cluster.crash(other).await;
    let survivors: Vec<u64> = cluster.running().into_iter().map(|(id, _)| id).collect();
    assert_eq!(survivors.len(), 3);

    for id in &survivors {
        put_many(&cluster.node(*id), "t", &format!("after-{id}-"), 0..10).await;
    }
    for id in &survivors {
        let read = get_linearizable_eventually(&cluster.node(*id), "t", "before-00019").await;
        assert_eq!(read.as_deref(), Some(&b"value-before-00019"[..]));
    }
    // The catalog group lost two members too and still takes changes.
    cluster.create_table(survivors[0], "created-after").await;
    put_many(&cluster.node(survivors[1]), "created-after", "k", 0..5).await;

    cluster.converged("t").await;
    assert_present(&cluster, "t", "before-", 0..20);
    for id in &survivors {
        assert_present(&cluster, "t", &format!("after-{id}-"), 0..10);
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_catches_up_from_the_log() {
    let mut cluster = SimCluster::start(3, DEFAULT_SNAPSHOTS).await;
    cluster.create_table(1, "t").await;
    put_many(&cluster.node(1), "t", "a", 0..20).await;
    cluster.converged("t").await;
    cluster.crash(3).await;
    put_many(&cluster.node(1), "t", "b", 0..10).await;
    put_many(&cluster.node(2), "t", "c", 0..10).await;
    // A spool file the crashed node left (a restore's or a bootstrap's) is removed at start.
    let leftover = cluster.nodes[&3]
        .data_dir
        .path()
        .join("tmp")
        .join(".tmpSpool");
    std::fs::write(&leftover, b"half a snapshot").expect("leftover spool");

    cluster.boot(3).await;
    assert!(!leftover.exists(), "the leftover spool file is still there");
    cluster.converged("t").await;
    for prefix in ["a", "b", "c"] {
        let count = if prefix == "a" { 20 } else { 10 };
        assert_present(&cluster, "t", prefix, 0..count);
    }
    assert!(
        cluster.nodes[&3]
            .snapshots_installed
            .lock()
            .unwrap()
            .is_empty(),
        "the leader kept its whole log: no snapshot needed"
    );
    // A full member again: it takes writes and they reach the others.
    put_many(&cluster.node(3), "t", "d", 0..10).await;
    let read = get_linearizable_eventually(&cluster.node(1), "t", "d00009").await;
    assert_eq!(read.as_deref(), Some(&b"value-d00009"[..]));
    cluster.converged("t").await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_behind_the_compacted_log_installs_a_snapshot() {
    let mut cluster = SimCluster::start(3, SMALL_SNAPSHOTS).await;
    let table_id = cluster.create_table(1, "t").await;
    put_many(&cluster.node(1), "t", "a", 0..20).await;
    cluster.converged("t").await;
    let stopped_at = {
        let node = cluster.node(3);
        let group = node.table_groups().get("t").expect("table").clone();
        group
            .raft()
            .metrics()
            .borrow_watched()
            .last_log_index
            .expect("a log")
    };
    cluster.crash(3).await;
    // Far more than snapshot-entries + compaction-overhead.
    put_many(&cluster.node(1), "t", "b", 0..300).await;
    // Node 3's next entry is gone from every log it could be sent from.
    for (id, node) in cluster.running() {
        eventually(&format!("node {id} compacted its log"), async || {
            let first = node.log_engine().group(table_id).first_index().ok()?;
            first
                .is_none_or(|first| first > stopped_at + 1)
                .then_some(())
        })
        .await;
    }

    cluster.boot(3).await;
    // Recorded once node 3 answered the stream, which is after its replica shows the data.
    let installed = cluster.nodes[&3].snapshots_installed.clone();
    eventually("node 3 installed a snapshot past its log", async || {
        let installed = installed.lock().expect("snapshot record");
        installed
            .iter()
            .any(|at| *at > stopped_at + 1)
            .then_some(())
    })
    .await;
    let (index, _) = cluster.converged("t").await;
    let node = cluster.node(3);
    let group = node.table_groups().get("t").expect("table").clone();
    eventually("node 3's Raft metrics show the snapshot", async || {
        let metrics = group.raft().metrics().borrow_watched().clone();
        let snapshot = metrics.snapshot?.index;
        let applied = metrics.last_applied?.index;
        (snapshot > stopped_at + 1 && applied >= index).then_some(())
    })
    .await;
    assert_present(&cluster, "t", "a", 0..20);
    assert_present(&cluster, "t", "b", 0..300);
    drop((node, group));
    cluster.stop().await;
}
