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
//!   What to do with each message (merge, propose, bootstrap, wait, end) is decided by the
//!   sans-IO [`puller`], tested by golden scripts (`crates/server/testscripts/puller.txt`);
//!   the worker only does the IO. A table without data, a Reset, or `USE_SNAPSHOT`
//!   bootstraps from `Snapshot.Stream` ([`bootstrap`]). Failures are typed
//!   ([`ReplicationError`]) and kept, as text, as the table's last failure.
//! * **Forwarding** ([`forward`]): writes at a follower go to the leader cluster; the answer is
//!   returned once this node has applied the write's revision (read-your-writes).
//! * **Lag and contact** ([`lag`]): per table, the leader cluster's index, the applied leader
//!   index, lag in entries and seconds, snapshot recoveries, and when the leader cluster last
//!   answered about it; per node, when it last answered at all, and the cause of the last
//!   failure. Silence longer than a grace counts as lag: a replica that hears nothing is at
//!   best as old as its last answer. For Status, metrics and `/readyz`.
//! * **Readiness** ([`Follower::bootstrapped`], in [`state`]): a node is ready once every table
//!   has been bootstrapped, and stays so when the leader cluster goes away (it serves stale
//!   reads, which is its job); staleness is reported ([`Follower::staleness`]), not turned
//!   into unreadiness.
//!
//! Ownership and shape: the server starts the follower ([`start`]) and hands it to the
//! services that need it (KV forwarding, Status, Reset, `/readyz`, metrics); the node does not
//! know it. The follower reaches the node only through [`host::FollowerHost`] (which the node
//! implements) and holds it weakly, and the leader cluster only through [`leader_cluster`].
//! This file starts the machinery and names the parts; the shared state lives in [`state`]
//! and [`lag`], which import none of the loops, so no two files here import from each other.

pub mod bootstrap;
pub mod error;
pub mod forward;
pub mod host;
pub mod lag;
pub mod leader_cluster;
pub mod puller;
#[cfg(test)]
mod puller_golden;
pub mod reconcile;
pub mod state;
pub mod worker;

use std::sync::Arc;

pub use error::ReplicationError;
pub use host::{FollowerHost, InstalledSnapshot};
pub use lag::{CONTACT_GRACE, Contact, ContactReport, LagReport, TableLag, describe_lag};
pub use state::{Follower, record_metrics};

/// Starts the follower machinery of `host`: the table-set feed and poll, and the replication
/// workers. They run until the node is gone.
pub fn start(
    host: &Arc<dyn FollowerHost>,
    config: &crate::config::ReplicationConfig,
) -> anyhow::Result<Arc<Follower>> {
    let follower = Arc::new(Follower::new(Arc::downgrade(host), config)?);
    tokio::spawn(reconcile::run(follower.clone()));
    tokio::spawn(reconcile::follow_feed(follower.clone()));
    tokio::spawn(worker::supervise(follower.clone()));
    Ok(follower)
}
