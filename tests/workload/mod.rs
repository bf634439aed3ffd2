//! Shared pieces of the fault tests (`partition`, `mtls`, `five_nodes`): a background writer that
//! records every acknowledged write, deadline-bounded waits, and the checks that a cluster lost
//! nothing and converged. Nodes are named by their gRPC API address (`http://host:port`) so the
//! helpers serve loopback clusters and clusters in network namespaces alike.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use armada_proto::regatta::v1::cluster_client::ClusterClient;
use armada_proto::regatta::v1::kv_client::KvClient;
use armada_proto::regatta::v1::{PutRequest, RangeRequest, StatusRequest};
use tonic::transport::Channel;

/// Bound on one gRPC call of a helper: a node that does not answer is "not yet", never a hang.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// Polls `check` until it returns Some, failing after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A channel to `api` that connects on first use (and reconnects after failures).
pub fn channel(api: &str) -> Channel {
    Channel::from_shared(api.to_string())
        .expect("uri")
        .connect_timeout(CALL_TIMEOUT)
        .connect_lazy()
}

pub fn kv(api: &str) -> KvClient<Channel> {
    KvClient::new(channel(api)).max_decoding_message_size(64 * 1024 * 1024)
}

/// A request with a gRPC deadline, so the server gives up too.
pub fn with_timeout<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

/// One table's replica as a node reports it in `Cluster.Status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replica {
    pub applied_index: u64,
    pub content_hash: String,
    /// The Raft leader this node believes in (0 when it knows none).
    pub raft_leader: u64,
    pub raft_term: u64,
}

/// The node's view of `table`, or None when the node does not answer or has no replica.
pub async fn replica(api: &str, table: &str) -> Option<Replica> {
    let mut cluster = ClusterClient::new(channel(api));
    let status = cluster
        .status(with_timeout(StatusRequest { config: false }, CALL_TIMEOUT))
        .await
        .ok()?
        .into_inner();
    let table = status.tables.get(table)?;
    Some(Replica {
        applied_index: table.raft_applied_index,
        content_hash: table.content_hash.clone(),
        raft_leader: table.leader.parse().unwrap_or(0),
        raft_term: table.raft_term,
    })
}

/// Waits until every node in `apis` reports the same applied index and content hash for `table`.
pub async fn converge(apis: &[String], table: &str, limit: Duration) -> (u64, String) {
    let deadline = Instant::now() + limit;
    loop {
        let mut states = Vec::new();
        for api in apis {
            states.push(replica(api, table).await);
        }
        if let Some(Some(first)) = states.first()
            && states.iter().all(|state| {
                state.as_ref().is_some_and(|state| {
                    state.applied_index == first.applied_index
                        && state.content_hash == first.content_hash
                })
            })
        {
            return (first.applied_index, first.content_hash.clone());
        }
        assert!(
            Instant::now() < deadline,
            "replicas did not converge within {limit:?}: {:#?}",
            apis.iter().zip(&states).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the nodes in `apis` all name the same Raft leader for `table`, one accepted by
/// `acceptable`; returns (leader, term).
pub async fn agreed_leader(
    apis: &[String],
    table: &str,
    limit: Duration,
    acceptable: impl Fn(u64) -> bool,
) -> (u64, u64) {
    eventually(limit, "the nodes to agree on a Raft leader", || async {
        let mut views = Vec::new();
        for api in apis {
            let replica = replica(api, table).await?;
            views.push((replica.raft_leader, replica.raft_term));
        }
        let first = *views.first()?;
        (acceptable(first.0) && views.iter().all(|view| *view == first)).then_some(first)
    })
    .await
}

/// Every key of `table` with its mod revision, read on `api` (linearizable when asked).
pub async fn read_all(
    api: &str,
    table: &str,
    linearizable: bool,
) -> Result<BTreeMap<String, i64>, tonic::Status> {
    let request = RangeRequest {
        table: table.as_bytes().to_vec().into(),
        key: vec![0].into(),
        range_end: vec![0].into(),
        linearizable,
        ..Default::default()
    };
    let mut stream = kv(api)
        .iterate_range(with_timeout(request, Duration::from_secs(10)))
        .await?
        .into_inner();
    let mut present = BTreeMap::new();
    while let Some(message) = stream.message().await? {
        for kv in message.kvs {
            present.insert(
                String::from_utf8(kv.key.to_vec()).expect("utf8 key"),
                kv.mod_revision,
            );
        }
    }
    Ok(present)
}

/// A single key's mod revision, if present.
pub async fn read_key(
    api: &str,
    table: &str,
    key: &str,
    linearizable: bool,
) -> Result<Option<i64>, tonic::Status> {
    let request = RangeRequest {
        table: table.as_bytes().to_vec().into(),
        key: key.as_bytes().to_vec().into(),
        linearizable,
        ..Default::default()
    };
    let response = kv(api)
        .range(with_timeout(request, CALL_TIMEOUT))
        .await?
        .into_inner();
    Ok(response.kvs.first().map(|kv| kv.mod_revision))
}

pub fn put(table: &str, key: &str, value: &str) -> PutRequest {
    PutRequest {
        table: table.as_bytes().to_vec().into(),
        key: key.as_bytes().to_vec().into(),
        value: value.as_bytes().to_vec().into(),
        prev_kv: false,
    }
}

/// A write the cluster acknowledged.
#[derive(Clone, Debug)]
pub struct Ack {
    pub key: String,
    pub revision: i64,
    pub raft_term: u64,
    /// When the client sent the write (before the call).
    pub sent_at: Instant,
}

/// A background writer: puts distinct keys round-robin through `apis` until stopped and
/// records each acknowledged one. A write that fails or times out has an unknown outcome; its
/// key is never reused.
pub struct Writer {
    acks: Arc<Mutex<Vec<Ack>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    pub fn start(table: &str, prefix: &str, apis: Vec<String>) -> Writer {
        let acks = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(write_loop(
            table.to_string(),
            prefix.to_string(),
            apis,
            acks.clone(),
            stop.clone(),
        ));
        Writer { acks, stop, task }
    }

    pub fn acks(&self) -> Vec<Ack> {
        self.acks.lock().expect("acks").clone()
    }

    /// Waits until at least `count` writes sent after `since` are acknowledged.
    pub async fn wait_acks_after(&self, since: Instant, count: usize, limit: Duration) {
        eventually(limit, &format!("{count} writes acknowledged"), || async {
            let acked = self
                .acks()
                .iter()
                .filter(|ack| ack.sent_at >= since)
                .count();
            (acked >= count).then_some(())
        })
        .await
    }

    /// Stops the writer and returns every acknowledged write.
    pub async fn stop(self) -> Vec<Ack> {
        self.stop.store(true, Ordering::SeqCst);
        let acks = self.acks.clone();
        self.task.await.expect("writer task");
        acks.lock().expect("acks").clone()
    }
}

async fn write_loop(
    table: String,
    prefix: String,
    apis: Vec<String>,
    acks: Arc<Mutex<Vec<Ack>>>,
    stop: Arc<AtomicBool>,
) {
    let mut clients: Vec<_> = apis.iter().map(|api| kv(api)).collect();
    let mut sequence = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let key = format!("{prefix}-{sequence:06}");
        let client = &mut clients[sequence as usize % apis.len()];
        sequence += 1;
        let sent_at = Instant::now();
        match client
            .put(with_timeout(put(&table, &key, "x"), Duration::from_secs(2)))
            .await
        {
            Ok(response) => {
                let header = response.into_inner().header.expect("put header");
                acks.lock().expect("acks").push(Ack {
                    key,
                    revision: header.revision as i64,
                    raft_term: header.raft_term,
                    sent_at,
                });
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Asserts that every acknowledged write is in `present` with the revision it was acked with.
pub fn assert_all_present(acks: &[Ack], present: &BTreeMap<String, i64>) {
    assert!(!acks.is_empty(), "no write was acknowledged at all");
    for ack in acks {
        assert_eq!(
            present.get(&ack.key),
            Some(&ack.revision),
            "acknowledged write {} (revision {}) lost or changed",
            ack.key,
            ack.revision
        );
    }
}
