//! One running table replica: the table's Raft group, its state machine and its storage, as the
//! node's table map holds them. The API, the follower side and the replication service reach a
//! table through this: its fields are private, and what it exposes of openraft is what
//! those callers need (metrics, leader changes), not the Raft handle, which only the node
//! (start, stop, leadership hand-over) and the group handle (propose, read index) use.

use armada_storage::{NodeId, TableId, Term};
use armada_table::Table;
use openraft::async_runtime::WatchReceiver;

use super::TableRaft;
use super::table_sm::TableStateMachine;

/// One running table replica.
pub struct TableGroup {
    id: TableId,
    name: String,
    raft: TableRaft,
    table: Table,
    state_machine: TableStateMachine,
}

impl TableGroup {
    pub fn new(
        id: TableId,
        name: String,
        raft: TableRaft,
        table: Table,
        state_machine: TableStateMachine,
    ) -> TableGroup {
        TableGroup {
            id,
            name,
            raft,
            table,
            state_machine,
        }
    }

    /// The table's id, which is also its Raft group's (shard) id.
    pub fn id(&self) -> TableId {
        self.id
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The replica's state machine: reads (`read_view`), sizes, positions.
    pub fn table(&self) -> &Table {
        &self.table
    }

    pub fn state_machine(&self) -> &TableStateMachine {
        &self.state_machine
    }

    /// The Raft handle: for the node and the group handle only (see the module essay).
    pub(crate) fn raft(&self) -> &TableRaft {
        &self.raft
    }

    /// This replica's current Raft metrics (term, indices, leader), a copy.
    pub fn raft_metrics(&self) -> openraft::RaftMetrics<super::types::TypeConfig> {
        self.raft.metrics().borrow_watched().clone()
    }

    /// Changes of term, vote or Raft leader, to wait on.
    pub fn raft_changes(
        &self,
    ) -> openraft::type_config::alias::WatchReceiverOf<
        super::types::TypeConfig,
        openraft::metrics::RaftServerMetrics<super::types::TypeConfig>,
    > {
        self.raft.server_metrics()
    }

    /// Whether `node` is this group's Raft leader, as this replica knows it.
    pub fn is_raft_leader(&self, node: NodeId) -> bool {
        self.raft.server_metrics().borrow_watched().current_leader == Some(node.get())
    }

    /// Term and Raft leader as this replica knows them, for response headers.
    pub fn term_and_raft_leader(&self) -> (Term, Option<NodeId>) {
        let metrics = self.raft.server_metrics();
        let metrics = metrics.borrow_watched();
        (
            Term(metrics.vote.leader_id.term),
            metrics.current_leader.map(NodeId),
        )
    }
}
