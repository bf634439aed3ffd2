//! The follower side of replication: a follower cluster mirrors every table of the leader
//! cluster, with the leader's revisions.
//!
//! * **Reconcile** ([`reconcile`]): every node asks the leader for its table set
//!   (`Metadata.Get`) every `replication.reconcile-interval`; the node leading the follower's
//!   catalog group creates missing tables, deletes vanished ones, and replaces a table whose
//!   leader id changed (deleted and re-created on the leader) so no stale key survives.
//! * **Workers** ([`worker`]): every node runs one worker per local table, active only while
//!   this node leads that table's Raft group, so exactly one replicates per follower cluster.
//!   It tails the leader's log over a long-lived `Log.Replicate` stream and proposes each batch
//!   as a SEQUENCE of the leader's commands, each carrying its leader index: the table applies
//!   them exactly once (see `armada_table`), so a takeover or a retry never applies twice.
//!   A table without data, a Reset, or `USE_SNAPSHOT` bootstraps from `Snapshot.Stream`.
//! * **Forwarding** ([`forward`]): writes at a follower go to the leader cluster; the answer is
//!   returned once this node has applied the write's revision (read-your-writes).
//! * **Lag** ([`TableLag`]): per table, the leader's index, the applied leader index, lag in
//!   entries and seconds, snapshot recoveries — for Status, metrics and `/readyz`.

pub mod forward;
pub mod reconcile;
pub mod worker;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use armada_client::{CallDecorator, ClientIdentity, ConnectOptions};
use armada_proto::regatta::v1::kv_client::KvClient;
use armada_proto::replication::v1::log_client::LogClient;
use armada_proto::replication::v1::metadata_client::MetadataClient;
use armada_proto::replication::v1::snapshot_client::SnapshotClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::node::Node;

/// A channel to one leader address, with the replication token on every call.
pub type LeaderChannel = InterceptedService<Channel, CallDecorator>;

/// Largest message accepted from the leader (a Replicate batch may exceed 4 MiB somewhat).
const MAX_RECEIVE_BYTES: usize = 64 * 1024 * 1024;

/// Replication progress of one table on this node.
#[derive(Debug, Default)]
pub struct TableLag {
    /// The leader's applied index of the table, as last reported by the leader.
    leader_index: AtomicU64,
    /// When this replica was first seen behind the leader's index (cleared when caught up).
    behind_since: Mutex<Option<Instant>>,
    /// Snapshot bootstraps of this table run by this node.
    recoveries: AtomicU64,
}

/// A point-in-time reading of [`TableLag`] against the applied leader index.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LagReport {
    pub leader_index: u64,
    pub applied_leader_index: u64,
    pub lag_entries: u64,
    pub lag_seconds: f64,
    pub recoveries: u64,
}

impl TableLag {
    /// The leader reported its index.
    pub fn observe_leader(&self, leader_index: u64, applied: u64) {
        self.leader_index.fetch_max(leader_index, Ordering::Relaxed);
        self.observe_applied(applied);
    }

    /// This replica applied up to `applied`.
    pub fn observe_applied(&self, applied: u64) {
        let behind = applied < self.leader_index.load(Ordering::Relaxed);
        if let Ok(mut since) = self.behind_since.lock() {
            match (behind, since.is_some()) {
                (true, false) => *since = Some(Instant::now()),
                (false, true) => *since = None,
                _ => {}
            }
        }
    }

    pub fn count_recovery(&self) {
        self.recoveries.fetch_add(1, Ordering::Relaxed);
    }

    /// Forgets the leader's index (the table was replaced on the leader).
    pub fn reset(&self) {
        self.leader_index.store(0, Ordering::Relaxed);
        if let Ok(mut since) = self.behind_since.lock() {
            *since = None;
        }
    }

    pub fn report(&self, applied: u64) -> LagReport {
        self.observe_applied(applied);
        let leader_index = self.leader_index.load(Ordering::Relaxed).max(applied);
        let lag_seconds = self
            .behind_since
            .lock()
            .ok()
            .and_then(|since| *since)
            .map_or(0.0, |since| since.elapsed().as_secs_f64());
        LagReport {
            leader_index,
            applied_leader_index: applied,
            lag_entries: leader_index - applied,
            lag_seconds,
            recoveries: self.recoveries.load(Ordering::Relaxed),
        }
    }
}

/// The follower machinery of one node.
pub struct Follower {
    node: Weak<Node>,
    addresses: Vec<String>,
    channels: Vec<LeaderChannel>,
    /// Index into `channels` of the address in use; moves on after a failure.
    current: AtomicUsize,
    recoveries: Arc<tokio::sync::Semaphore>,
    lags: Mutex<BTreeMap<String, Arc<TableLag>>>,
    /// The leader's table set as of the last successful `Metadata.Get`: name → leader id.
    leader_tables: Mutex<Option<BTreeMap<String, String>>>,
    /// Whether the last `Metadata.Get` succeeded.
    leader_reachable: AtomicBool,
    /// Tables with a worker running on this node, by local table id.
    workers: Mutex<BTreeMap<u64, tokio::task::AbortHandle>>,
}

impl Follower {
    /// Connects (lazily) to the leader addresses and starts reconciling and replicating.
    pub fn start(node: &Arc<Node>) -> anyhow::Result<Arc<Follower>> {
        let config = &node.config.replication;
        // On a follower the `replication.*` TLS keys configure this client (see `config`).
        let options = ConnectOptions {
            ca_file: (!config.ca_filename.is_empty())
                .then(|| std::path::PathBuf::from(&config.ca_filename)),
            identity: (!config.cert_filename.is_empty()).then(|| ClientIdentity {
                cert_file: std::path::PathBuf::from(&config.cert_filename),
                key_file: std::path::PathBuf::from(&config.key_filename),
            }),
            server_name: (!config.server_name.is_empty()).then(|| config.server_name.clone()),
            token: (!config.token.is_empty()).then(|| config.token.clone()),
            timeout: None,
            connect_timeout: Some(Duration::from_secs(2)),
        };
        let decorator = CallDecorator::new(&options)?;
        let addresses = config.leader_addresses();
        let channels = addresses
            .iter()
            .map(|address| {
                armada_client::lazy_channel(address, &options)
                    .map(|channel| InterceptedService::new(channel, decorator.clone()))
                    .map_err(|error| {
                        anyhow::anyhow!("replication.leader-address {address}: {error}")
                    })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let follower = Arc::new(Follower {
            node: Arc::downgrade(node),
            addresses,
            channels,
            current: AtomicUsize::new(0),
            recoveries: Arc::new(tokio::sync::Semaphore::new(
                config.max_recovery_in_flight.max(1) as usize,
            )),
            lags: Mutex::new(BTreeMap::new()),
            leader_tables: Mutex::new(None),
            leader_reachable: AtomicBool::new(false),
            workers: Mutex::new(BTreeMap::new()),
        });
        tokio::spawn(reconcile::run(follower.clone()));
        tokio::spawn(worker::supervise(follower.clone()));
        Ok(follower)
    }

    fn node(&self) -> Option<Arc<Node>> {
        self.node.upgrade()
    }

    /// The leader address in use (for messages).
    pub fn leader_address(&self) -> String {
        self.addresses
            .get(self.current.load(Ordering::Relaxed) % self.addresses.len().max(1))
            .cloned()
            .unwrap_or_default()
    }

    /// Every configured leader address.
    pub fn leader_addresses(&self) -> &[String] {
        &self.addresses
    }

    fn channel(&self) -> LeaderChannel {
        let at = self.current.load(Ordering::Relaxed) % self.channels.len();
        self.channels[at].clone()
    }

    /// Moves to the next leader address after a failure.
    fn rotate(&self) {
        if self.channels.len() > 1 {
            self.current.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn metadata_client(&self) -> MetadataClient<LeaderChannel> {
        MetadataClient::new(self.channel()).max_decoding_message_size(MAX_RECEIVE_BYTES)
    }

    fn log_client(&self) -> LogClient<LeaderChannel> {
        LogClient::new(self.channel()).max_decoding_message_size(MAX_RECEIVE_BYTES)
    }

    fn snapshot_client(&self) -> SnapshotClient<LeaderChannel> {
        SnapshotClient::new(self.channel()).max_decoding_message_size(MAX_RECEIVE_BYTES)
    }

    pub(crate) fn kv_client(&self) -> KvClient<LeaderChannel> {
        KvClient::new(self.channel()).max_decoding_message_size(MAX_RECEIVE_BYTES)
    }

    /// The progress record of table `name` (created on first use).
    pub fn lag(&self, name: &str) -> Arc<TableLag> {
        let mut lags = self.lags.lock().expect("lag map poisoned");
        lags.entry(name.to_string()).or_default().clone()
    }

    fn forget_lag(&self, name: &str) {
        if let Ok(mut lags) = self.lags.lock() {
            lags.remove(name);
        }
    }

    /// Replication progress of every local table, by name.
    pub fn lag_reports(&self) -> BTreeMap<String, LagReport> {
        let Some(node) = self.node() else {
            return BTreeMap::new();
        };
        node.table_groups()
            .iter()
            .map(|(name, group)| {
                let applied = applied_leader_index(&group.table);
                (name.clone(), self.lag(name).report(applied))
            })
            .collect()
    }

    /// Ready when the leader answered the last reconcile, every leader table exists here
    /// and every local table has been bootstrapped (holds data as of some leader index).
    pub fn is_replicating(&self) -> bool {
        let Some(node) = self.node() else {
            return false;
        };
        if !self.leader_reachable.load(Ordering::Relaxed) {
            return false;
        }
        let Some(leader_tables) = self.leader_tables.lock().ok().and_then(|t| t.clone()) else {
            return false;
        };
        let groups = node.table_groups();
        leader_tables.keys().all(|name| {
            groups
                .get(name)
                .is_some_and(|group| applied_leader_index(&group.table) > 0)
        })
    }
}

/// The leader index a follower replica has applied (0 before its first bootstrap).
pub fn applied_leader_index(table: &armada_table::Table) -> u64 {
    table
        .applied_position()
        .ok()
        .and_then(|position| position.leader_index)
        .map_or(0, |index| index.get())
}

/// Publishes the replication gauges of every table.
pub fn record_metrics(follower: &Follower) {
    for (name, report) in follower.lag_reports() {
        metrics::gauge!("armada_replication_leader_index", "table" => name.clone())
            .set(report.leader_index as f64);
        metrics::gauge!("armada_replication_follower_index", "table" => name.clone())
            .set(report.applied_leader_index as f64);
        metrics::gauge!("armada_replication_lag_entries", "table" => name.clone())
            .set(report.lag_entries as f64);
        metrics::gauge!("armada_replication_lag_seconds", "table" => name.clone())
            .set(report.lag_seconds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_counts_entries_and_time_behind() {
        let lag = TableLag::default();
        assert_eq!(lag.report(0), LagReport::default());
        lag.observe_leader(10, 4);
        let report = lag.report(4);
        assert_eq!(report.leader_index, 10);
        assert_eq!(report.lag_entries, 6);
        std::thread::sleep(Duration::from_millis(5));
        assert!(lag.report(4).lag_seconds > 0.0);
        let caught_up = lag.report(10);
        assert_eq!(caught_up.lag_entries, 0);
        assert_eq!(caught_up.lag_seconds, 0.0);
        // A replica ahead of a stale leader report is not behind.
        assert_eq!(lag.report(12).lag_entries, 0);
        lag.count_recovery();
        assert_eq!(lag.report(12).recoveries, 1);
        lag.reset();
        assert_eq!(lag.report(0).leader_index, 0);
    }
}

/// A status from the leader cluster with its causes: for a refused TLS handshake or a refused
/// connection, tonic's message alone is only "operation was canceled" or "transport error".
pub(crate) fn describe_status(status: &tonic::Status) -> String {
    use std::error::Error;
    let mut text = status.message().to_string();
    let mut cause = status.source();
    while let Some(error) = cause {
        let next = error.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        cause = error.source();
    }
    text
}

#[cfg(test)]
mod status_tests {
    #[test]
    fn causes_are_appended_once() {
        let io = std::io::Error::other("invalid peer certificate: UnknownIssuer");
        let mut status = tonic::Status::unavailable("operation was canceled");
        status.set_source(std::sync::Arc::new(io));
        assert_eq!(
            super::describe_status(&status),
            "operation was canceled: invalid peer certificate: UnknownIssuer"
        );
        assert_eq!(
            super::describe_status(&tonic::Status::unavailable("plain")),
            "plain"
        );
    }
}
