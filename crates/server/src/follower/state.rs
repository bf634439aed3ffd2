//! The follower machinery of one node ([`Follower`]): the connection to the leader cluster,
//! the progress and contact records of every table, the leader cluster's table set as last
//! learned, and the workers running on this node; with the questions asked of it — is the
//! node bootstrapped (readiness), what is stale (Status, `/readyz`, metrics).
//!
//! Invariants: once every table has been bootstrapped the node stays ready for good (a lost
//! leader cluster or a new table never takes a serving edge out of service; staleness is
//! reported, not turned into unreadiness); the follower holds the node weakly, so it never
//! keeps a stopped node alive.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::host::FollowerHost;
use super::lag::{
    CONTACT_GRACE, Contact, LagReport, TableLag, applied_leader_index, describe_lag,
    silence_seconds,
};
use super::leader_cluster::LeaderCluster;
use crate::config::ReplicationConfig;

/// The follower machinery of one node.
pub struct Follower {
    host: Weak<dyn FollowerHost>,
    pub(super) leader_cluster: LeaderCluster,
    /// Snapshot bootstraps allowed at once on this node.
    pub(super) recoveries: Arc<tokio::sync::Semaphore>,
    lags: Mutex<BTreeMap<String, Arc<TableLag>>>,
    /// The leader's table set as of the last successful `Metadata.Get`: name → leader id.
    pub(super) leader_cluster_tables: Mutex<Option<BTreeMap<String, String>>>,
    /// The last answer of any kind from the leader cluster, and the last failure.
    pub contact: Contact,
    /// The last table list received over `MetadataFeed.Watch` (None: the feed is not in use).
    pub(super) feed_heard_at: Mutex<Option<Instant>>,
    /// Set once every table has been bootstrapped: from then on the node stays ready, so
    /// that a new table or a lost leader cluster never takes a serving edge out of service.
    bootstrapped_once: AtomicBool,
    /// Serializes applying table lists (from the feed and from polls) to the catalog.
    pub(super) applying: tokio::sync::Mutex<()>,
    pub(super) reconcile_interval: Duration,
    /// Tables with a worker running on this node, by local table id.
    pub(super) workers: Mutex<BTreeMap<u64, tokio::task::AbortHandle>>,
}

impl Follower {
    /// The machinery of `host`, connected (lazily) to the leader cluster; nothing runs yet.
    pub fn new(host: Weak<dyn FollowerHost>, config: &ReplicationConfig) -> anyhow::Result<Self> {
        Ok(Follower {
            host,
            leader_cluster: LeaderCluster::connect(config)?,
            recoveries: Arc::new(tokio::sync::Semaphore::new(
                config.max_recovery_in_flight.max(1) as usize,
            )),
            lags: Mutex::new(BTreeMap::new()),
            leader_cluster_tables: Mutex::new(None),
            contact: Contact::default(),
            feed_heard_at: Mutex::new(None),
            bootstrapped_once: AtomicBool::new(false),
            applying: tokio::sync::Mutex::new(()),
            reconcile_interval: config.reconcile_every(),
            workers: Mutex::new(BTreeMap::new()),
        })
    }

    /// The node, unless it is gone (then the follower's tasks end).
    pub(super) fn host(&self) -> Option<Arc<dyn FollowerHost>> {
        self.host.upgrade()
    }

    /// The leader cluster's address in use (for messages).
    pub fn leader_cluster_address(&self) -> String {
        self.leader_cluster.address()
    }

    /// Every configured address of the leader cluster.
    pub fn leader_cluster_addresses(&self) -> &[String] {
        self.leader_cluster.addresses()
    }

    /// The progress record of table `name` (created on first use).
    pub fn lag(&self, name: &str) -> Arc<TableLag> {
        let mut lags = crate::fail_stop::lock(&self.lags, "the lag map");
        lags.entry(name.to_string()).or_default().clone()
    }

    pub(super) fn forget_lag(&self, name: &str) {
        crate::fail_stop::lock(&self.lags, "the lag map").remove(name);
    }

    /// The leader cluster answered about `lag`'s table (or about the table set).
    pub(super) fn heard(&self, lag: Option<&TableLag>) {
        self.contact.heard();
        if let Some(lag) = lag {
            lag.contact.heard();
        }
    }

    /// Whether the metadata feed delivered recently (then polls are not needed).
    pub(super) fn feed_active(&self) -> bool {
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
        let Some(host) = self.host() else {
            return BTreeMap::new();
        };
        let grace = self.staleness_grace();
        host.table_groups()
            .iter()
            .map(|(name, group)| {
                let applied = applied_leader_index(group.table());
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
        let host = self.host().ok_or("shutting down")?;
        let expected = self.expected_tables(host.as_ref())?;
        let groups = host.table_groups();
        let missing: Vec<&str> = expected
            .iter()
            .filter(|name| {
                groups
                    .get(*name)
                    .is_none_or(|group| applied_leader_index(group.table()).get() == 0)
            })
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return Err(format!("not bootstrapped yet: {}", missing.join(", ")));
        }
        self.bootstrapped_once.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// The tables this node must have bootstrapped to be ready (see [`Follower::bootstrapped`]).
    fn expected_tables(&self, host: &dyn FollowerHost) -> Result<Vec<String>, String> {
        let leader_cluster_tables = self
            .leader_cluster_tables
            .lock()
            .ok()
            .and_then(|t| t.clone());
        match leader_cluster_tables {
            Some(tables) => Ok(tables.into_keys().collect()),
            None if !host.catalog_state().tables.is_empty() => {
                Ok(host.catalog_state().tables.keys().cloned().collect())
            }
            None => {
                let contact = self.contact.report();
                let cause = contact.error.unwrap_or_else(|| "no answer yet".into());
                Err(format!(
                    "the table set of the leader cluster {} is not known yet: {cause}",
                    self.leader_cluster_address()
                ))
            }
        }
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
                self.leader_cluster_address(),
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

/// Publishes the replication gauges of every table.
pub fn record_metrics(follower: &Follower) {
    for (name, report) in follower.lag_reports() {
        metrics::gauge!("armada_replication_leader_index", "table" => name.clone())
            .set(report.leader_index.get() as f64);
        metrics::gauge!("armada_replication_follower_index", "table" => name.clone())
            .set(report.applied_leader_index.get() as f64);
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
