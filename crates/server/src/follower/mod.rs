//! The follower side of replication: a follower cluster mirrors every table of the leader
//! cluster, with the leader's revisions.
//!
//! * **Reconcile** ([`reconcile`]): every node follows the leader's table set — streamed by
//!   `armada.v1.MetadataFeed.Watch` (at once on a change, and a keep-alive every second), or,
//!   from a leader without the feed, polled with `Metadata.Get` every
//!   `replication.reconcile-interval`; the node leading the follower's catalog group creates
//!   missing tables, deletes vanished ones, and replaces a table whose leader id changed
//!   (deleted and re-created on the leader) so no stale key survives.
//! * **Workers** ([`worker`]): every node runs one worker per local table, active only while
//!   this node leads that table's Raft group, so exactly one replicates per follower cluster.
//!   It tails the leader's log over a long-lived `Log.Replicate` stream and proposes each batch
//!   as a SEQUENCE of the leader's commands, each carrying its leader index: the table applies
//!   them exactly once (see `armada_table`), so a takeover or a retry never applies twice.
//!   A table without data, a Reset, or `USE_SNAPSHOT` bootstraps from `Snapshot.Stream`.
//! * **Forwarding** ([`forward`]): writes at a follower go to the leader cluster; the answer is
//!   returned once this node has applied the write's revision (read-your-writes).
//! * **Lag and contact** ([`TableLag`], [`Contact`]): per table, the leader's index, the
//!   applied leader index, lag in entries and seconds, snapshot recoveries, and when the leader
//!   cluster last answered about it; per node, when it last answered at all, and the cause of
//!   the last failure. Silence longer than a grace counts as lag: a replica that hears nothing
//!   is at best as old as its last answer. For Status, metrics and `/readyz`.
//! * **Readiness** ([`Follower::bootstrapped`]): a node is ready once every table has been
//!   bootstrapped, and stays so when the leader cluster goes away (it serves stale reads, which
//!   is its job); staleness is reported ([`Follower::staleness`]), not turned into unreadiness.

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

/// A follower whose last answer from the leader cluster is at most this old is taken as
/// current (the leader repeats itself every second: `Log.Replicate` heartbeats and
/// `MetadataFeed` keep-alives); past it, the silence counts as lag.
pub const CONTACT_GRACE: Duration = Duration::from_secs(3);

/// When the leader cluster last answered (for one table, or for this node), and why the last
/// attempt failed if it did: what makes a cut-off follower visible.
#[derive(Debug)]
pub struct Contact {
    state: Mutex<ContactState>,
}

#[derive(Debug)]
struct ContactState {
    /// The last answer; before the first one, when this record was made (so a follower that
    /// never reached the leader shows its silence growing from start-up).
    heard_at: Instant,
    ever_heard: bool,
    /// The last failure, cleared by the next answer.
    error: Option<String>,
}

/// A point-in-time reading of a [`Contact`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ContactReport {
    pub seconds_since_contact: f64,
    pub ever_heard: bool,
    pub error: Option<String>,
}

impl Default for Contact {
    fn default() -> Self {
        Contact {
            state: Mutex::new(ContactState {
                heard_at: Instant::now(),
                ever_heard: false,
                error: None,
            }),
        }
    }
}

impl Contact {
    /// The leader cluster answered (data, a heartbeat, a keep-alive or the table list).
    pub fn heard(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.heard_at = Instant::now();
            state.ever_heard = true;
            state.error = None;
        }
    }

    /// The leader cluster answered something that names this table (its table list) but says
    /// nothing of the table's own replication: proof of contact, yet the table's own failure
    /// (if any) stands until its own stream answers again.
    pub fn listed(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.heard_at = Instant::now();
            state.ever_heard = true;
        }
    }

    /// A call to the leader cluster failed with `error`.
    pub fn failed(&self, error: String) {
        if let Ok(mut state) = self.state.lock() {
            state.error = Some(error);
        }
    }

    pub fn report(&self) -> ContactReport {
        self.state
            .lock()
            .map(|state| ContactReport {
                seconds_since_contact: state.heard_at.elapsed().as_secs_f64(),
                ever_heard: state.ever_heard,
                error: state.error.clone(),
            })
            .unwrap_or_default()
    }
}

/// Seconds of staleness that silence alone proves: none within `grace`, all of it after.
fn silence_seconds(seconds_since_contact: f64, grace: Duration) -> f64 {
    if seconds_since_contact > grace.as_secs_f64() {
        seconds_since_contact
    } else {
        0.0
    }
}

/// Replication progress of one table on this node.
#[derive(Debug, Default)]
pub struct TableLag {
    /// The leader's applied index of the table, as last reported by the leader.
    leader_index: AtomicU64,
    /// When this replica was first seen behind the leader's index (cleared when caught up).
    behind_since: Mutex<Option<Instant>>,
    /// Snapshot bootstraps of this table run by this node.
    recoveries: AtomicU64,
    /// The last answer about this table from the leader cluster.
    pub contact: Contact,
}

/// A point-in-time reading of [`TableLag`] against the applied leader index.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LagReport {
    pub leader_index: u64,
    pub applied_leader_index: u64,
    pub lag_entries: u64,
    /// How stale this replica may be: the time since it was first seen behind, or, when the
    /// leader cluster has been silent for longer than the grace, the time since it last
    /// answered (nothing newer can be known, so the replica is at best that old).
    pub lag_seconds: f64,
    pub recoveries: u64,
    pub seconds_since_contact: f64,
    /// Why the last call about this table failed, if it did and nothing answered since.
    pub error: Option<String>,
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

    /// Progress at `applied`; silence longer than `grace` counts as lag.
    pub fn report(&self, applied: u64, grace: Duration) -> LagReport {
        self.observe_applied(applied);
        let leader_index = self.leader_index.load(Ordering::Relaxed).max(applied);
        let behind_seconds = self
            .behind_since
            .lock()
            .ok()
            .and_then(|since| *since)
            .map_or(0.0, |since| since.elapsed().as_secs_f64());
        let contact = self.contact.report();
        LagReport {
            leader_index,
            applied_leader_index: applied,
            lag_entries: leader_index - applied,
            lag_seconds: behind_seconds.max(silence_seconds(contact.seconds_since_contact, grace)),
            recoveries: self.recoveries.load(Ordering::Relaxed),
            seconds_since_contact: contact.seconds_since_contact,
            error: contact.error,
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
    /// The last answer of any kind from the leader cluster, and the last failure.
    pub contact: Contact,
    /// The last table list received over `MetadataFeed.Watch` (None: the feed is not in use).
    feed_heard_at: Mutex<Option<Instant>>,
    /// Set once every table has been bootstrapped: from then on the node stays ready, so
    /// that a new table or a lost leader cluster never takes a serving edge out of service.
    bootstrapped_once: AtomicBool,
    /// Serializes applying table lists (from the feed and from polls) to the catalog.
    applying: tokio::sync::Mutex<()>,
    reconcile_interval: Duration,
    /// Tables with a worker running on this node, by local table id.
    workers: Mutex<BTreeMap<u64, tokio::task::AbortHandle>>,
}

impl Follower {
    /// Connects (lazily) to the leader addresses and starts reconciling and replicating.
    pub fn start(node: &Arc<Node>) -> anyhow::Result<Arc<Follower>> {
        let config = &node.config().replication;
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
            contact: Contact::default(),
            feed_heard_at: Mutex::new(None),
            bootstrapped_once: AtomicBool::new(false),
            applying: tokio::sync::Mutex::new(()),
            reconcile_interval: config.reconcile_every(),
            workers: Mutex::new(BTreeMap::new()),
        });
        tokio::spawn(reconcile::run(follower.clone()));
        tokio::spawn(reconcile::follow_feed(follower.clone()));
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

    /// The leader cluster answered about `lag`'s table (or about the table set).
    fn heard(&self, lag: Option<&TableLag>) {
        self.contact.heard();
        if let Some(lag) = lag {
            lag.contact.heard();
        }
    }

    /// Whether the metadata feed delivered recently (then polls are not needed).
    fn feed_active(&self) -> bool {
        self.feed_heard_at
            .lock()
            .ok()
            .and_then(|heard| *heard)
            .is_some_and(|heard| heard.elapsed() <= CONTACT_GRACE)
    }

    /// How long the leader cluster may be silent before the silence counts as lag: a few
    /// keep-alives with the feed, a reconcile interval more without it (a node that does not
    /// replicate a table hears of it only from the table list).
    pub fn staleness_grace(&self) -> Duration {
        if self.feed_active() {
            CONTACT_GRACE
        } else {
            CONTACT_GRACE + self.reconcile_interval
        }
    }

    /// Replication progress of every local table, by name.
    pub fn lag_reports(&self) -> BTreeMap<String, LagReport> {
        let Some(node) = self.node() else {
            return BTreeMap::new();
        };
        let grace = self.staleness_grace();
        node.table_groups()
            .iter()
            .map(|(name, group)| {
                let applied = applied_leader_index(&group.table);
                (name.clone(), self.lag(name).report(applied, grace))
            })
            .collect()
    }

    /// Why this node cannot serve reads yet, or `Ok` once every table has been bootstrapped
    /// (then for good: staleness is for metrics and alerts, see [`Follower::staleness`]).
    /// The tables are the leader's as last learned, or, before any answer since start-up,
    /// the local catalog's (a restarted edge serves what it has while the hub is away).
    pub fn bootstrapped(&self) -> Result<(), String> {
        if self.bootstrapped_once.load(Ordering::Relaxed) {
            return Ok(());
        }
        let node = self.node().ok_or("shutting down")?;
        let leader_tables = self.leader_tables.lock().ok().and_then(|t| t.clone());
        let expected: Vec<String> = match leader_tables {
            Some(tables) => tables.into_keys().collect(),
            None if !node.catalog_state().tables.is_empty() => {
                node.catalog_state().tables.keys().cloned().collect()
            }
            None => {
                let contact = self.contact.report();
                let cause = contact.error.unwrap_or_else(|| "no answer yet".into());
                return Err(format!(
                    "the table set of the leader cluster {} is not known yet: {cause}",
                    self.leader_address()
                ));
            }
        };
        let groups = node.table_groups();
        let missing: Vec<&str> = expected
            .iter()
            .filter(|name| {
                groups
                    .get(*name)
                    .is_none_or(|group| applied_leader_index(&group.table) == 0)
            })
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return Err(format!("not bootstrapped yet: {}", missing.join(", ")));
        }
        self.bootstrapped_once.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// What is stale on this node, one line each (empty when current): the leader cluster's
    /// silence with its cause, and every table whose lag exceeds `max_lag` (or, without a
    /// bound, every table that is behind or has an error).
    pub fn staleness(&self, max_lag: Option<Duration>) -> Vec<String> {
        let mut lines = Vec::new();
        let grace = self.staleness_grace();
        let contact = self.contact.report();
        let silence = silence_seconds(contact.seconds_since_contact, grace);
        if silence > max_lag.map_or(0.0, |bound| bound.as_secs_f64()) {
            lines.push(format!(
                "no answer from the leader cluster {} for {:.1} s{}",
                self.leader_address(),
                contact.seconds_since_contact,
                contact
                    .error
                    .map(|error| format!(": {error}"))
                    .unwrap_or_default()
            ));
        }
        for (name, report) in self.lag_reports() {
            let over = match max_lag {
                Some(bound) => report.lag_seconds > bound.as_secs_f64(),
                None => report.lag_seconds > 0.0 || report.error.is_some(),
            };
            if over {
                lines.push(describe_lag(&name, &report));
            }
        }
        lines
    }
}

/// One table's staleness for people: entries and seconds behind, silence, cause.
pub fn describe_lag(name: &str, report: &LagReport) -> String {
    let mut line = format!(
        "table {name}: {} entries / {:.1} s behind, last answer from the leader cluster {:.1} s ago",
        report.lag_entries, report.lag_seconds, report.seconds_since_contact
    );
    if let Some(error) = &report.error {
        line.push_str(": ");
        line.push_str(error);
    }
    line
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
        metrics::gauge!("armada_replication_seconds_since_contact", "table" => name.clone())
            .set(report.seconds_since_contact);
    }
    let contact = follower.contact.report();
    metrics::gauge!("armada_follower_seconds_since_contact").set(contact.seconds_since_contact);
    metrics::gauge!("armada_follower_leader_errors")
        .set(f64::from(u8::from(contact.error.is_some())));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Long enough that a test's own pauses never count as silence.
    const NO_GRACE_USED: Duration = Duration::from_secs(3600);

    #[test]
    fn lag_counts_entries_and_time_behind() {
        let lag = TableLag::default();
        let fresh = lag.report(0, NO_GRACE_USED);
        assert_eq!((fresh.leader_index, fresh.lag_entries), (0, 0));
        assert_eq!(fresh.lag_seconds, 0.0);
        lag.observe_leader(10, 4);
        let report = lag.report(4, NO_GRACE_USED);
        assert_eq!(report.leader_index, 10);
        assert_eq!(report.lag_entries, 6);
        std::thread::sleep(Duration::from_millis(5));
        assert!(lag.report(4, NO_GRACE_USED).lag_seconds > 0.0);
        let caught_up = lag.report(10, NO_GRACE_USED);
        assert_eq!(caught_up.lag_entries, 0);
        assert_eq!(caught_up.lag_seconds, 0.0);
        // A replica ahead of a stale leader report is not behind.
        assert_eq!(lag.report(12, NO_GRACE_USED).lag_entries, 0);
        lag.count_recovery();
        assert_eq!(lag.report(12, NO_GRACE_USED).recoveries, 1);
        lag.reset();
        assert_eq!(lag.report(0, NO_GRACE_USED).leader_index, 0);
    }

    #[test]
    fn silence_from_the_leader_counts_as_lag_past_the_grace() {
        let lag = TableLag::default();
        lag.observe_leader(10, 10);
        lag.contact.heard();
        std::thread::sleep(Duration::from_millis(20));
        // Caught up as of the last answer and within the grace: current.
        let current = lag.report(10, NO_GRACE_USED);
        assert_eq!(current.lag_seconds, 0.0);
        assert!(current.seconds_since_contact >= 0.02, "{current:?}");
        // Past the grace, the replica is as old as the last answer, though nothing newer is known.
        let silent = lag.report(10, Duration::from_millis(10));
        assert_eq!(silent.lag_entries, 0);
        assert!(silent.lag_seconds >= 0.02, "{silent:?}");
        assert_eq!(silent.lag_seconds, silent.seconds_since_contact);
    }

    #[test]
    fn a_failure_is_kept_until_the_next_answer() {
        let contact = Contact::default();
        assert!(!contact.report().ever_heard);
        contact.failed("Metadata.Get: Unauthenticated: invalid token".into());
        let failed = contact.report();
        assert_eq!(
            failed.error.as_deref(),
            Some("Metadata.Get: Unauthenticated: invalid token")
        );
        assert!(!failed.ever_heard);
        // A table list names the table but says nothing of its stream: the failure stands.
        contact.listed();
        let listed = contact.report();
        assert!(listed.ever_heard);
        assert!(listed.error.is_some(), "{listed:?}");
        contact.heard();
        let heard = contact.report();
        assert_eq!(heard.error, None);
        assert!(heard.ever_heard);
    }

    #[test]
    fn a_stale_table_is_described_with_its_cause() {
        let report = LagReport {
            lag_entries: 3,
            lag_seconds: 12.0,
            seconds_since_contact: 12.0,
            error: Some("Log.Replicate: Unavailable: connection refused".into()),
            ..Default::default()
        };
        assert_eq!(
            describe_lag("flags", &report),
            "table flags: 3 entries / 12.0 s behind, last answer from the leader cluster 12.0 s ago: \
             Log.Replicate: Unavailable: connection refused"
        );
    }
}

/// A failed call to the leader cluster for people: the call, the status code (the cause an
/// operator acts on: `Unavailable`, `Unauthenticated`, …) and the message with its causes.
pub(crate) fn describe_failure(call: &str, status: &tonic::Status) -> String {
    format!("{call}: {:?}: {}", status.code(), describe_status(status))
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
