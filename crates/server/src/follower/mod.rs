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
//! * **Lag and contact** ([`lag`]): per table, the leader's index, the
//!   applied leader index, lag in entries and seconds, snapshot recoveries, and when the leader
//!   cluster last answered about it; per node, when it last answered at all, and the cause of
//!   the last failure. Silence longer than a grace counts as lag: a replica that hears nothing
//!   is at best as old as its last answer. For Status, metrics and `/readyz`.
//! * **Readiness** ([`Follower::bootstrapped`], in [`state`]): a node is ready once every table has been
//!   bootstrapped, and stays so when the leader cluster goes away (it serves stale reads, which
//!   is its job); staleness is reported ([`Follower::staleness`]), not turned into unreadiness.
//! * **Shape** (no import circles): this file starts the machinery and names the parts; the
//!   node is reached only through [`host::FollowerHost`] (which the node implements), the
//!   leader cluster only through [`leader_cluster`], and the shared state lives in [`state`]
//!   and [`lag`], which import none of the loops.

pub mod forward;
pub mod host;
pub mod lag;
pub mod leader_cluster;
pub mod reconcile;
pub mod state;
pub mod worker;

use std::sync::Arc;

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
