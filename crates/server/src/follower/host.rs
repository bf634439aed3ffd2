//! The node as the follower side sees it: the few things replication needs from the follower
//! cluster's own node — its running tables, its catalog, table creation and deletion, a
//! proposal to a table's Raft group, and installing a snapshot.
//!
//! The node implements [`FollowerHost`]; the follower holds it weakly, so the follower's tasks
//! end once the node is gone, and the follower never reaches into the node's other parts.
//! This is what keeps the import graph one-way: the node knows this trait, the follower knows
//! nothing of the node.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use armada_storage::{LeaderIndex, LogIndex, NodeId, TableId};

use crate::catalog::CatalogState;
use crate::error::ApiError;
use crate::groups::table_group::TableGroup;
use crate::groups::types::{Request, Response};

/// What installing a snapshot of the leader cluster's table did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InstalledSnapshot {
    /// Records loaded.
    pub records: u64,
    /// The leader index the snapshot was taken at (from its final DUMMY record).
    pub leader_index: Option<LeaderIndex>,
}

/// The follower cluster's node, narrowed to what replication uses.
#[async_trait::async_trait]
pub trait FollowerHost: Send + Sync {
    /// This node's id in its cluster (to tell whether it is a group's Raft leader).
    fn node_id(&self) -> NodeId;

    /// Whether this node is the Raft leader of `group` (only that node replicates the table).
    fn leads_table(&self, group: &TableGroup) -> bool {
        group.is_raft_leader(self.node_id())
    }

    /// Whether this node is the Raft leader of the follower cluster's catalog group.
    fn leads_catalog(&self) -> bool;

    /// Every running table group, by name.
    fn table_groups(&self) -> Arc<BTreeMap<String, Arc<TableGroup>>>;

    /// The local catalog as this replica has applied it.
    fn catalog_state(&self) -> Arc<CatalogState>;

    /// Where received snapshots are spooled.
    fn temporary_dir(&self) -> PathBuf;

    /// The group serving table `name` (waits briefly for one that is starting).
    async fn table(&self, name: &str) -> Result<Arc<TableGroup>, ApiError>;

    /// Creates the replica of the leader cluster's table `upstream_id` and waits until this
    /// node serves it.
    async fn create_table(
        &self,
        name: &str,
        upstream_id: Option<u64>,
        deadline: tokio::time::Instant,
    ) -> Result<TableId, ApiError>;

    async fn delete_table(
        &self,
        name: &str,
        deadline: tokio::time::Instant,
    ) -> Result<(), ApiError>;

    /// Proposes `request` to the table's Raft group (through its Raft leader, wherever it is);
    /// returns the entry's log index and the state machine's answer.
    async fn propose(
        &self,
        group: &Arc<TableGroup>,
        request: Request,
        deadline: tokio::time::Instant,
    ) -> Result<(LogIndex, Response), ApiError>;

    /// Replaces the table's contents with the snapshot (a dump) at `dump`, keeping the leader
    /// cluster's revisions.
    async fn install_snapshot(
        &self,
        group: &Arc<TableGroup>,
        dump: &Path,
        deadline: tokio::time::Instant,
    ) -> Result<InstalledSnapshot, ApiError>;
}
