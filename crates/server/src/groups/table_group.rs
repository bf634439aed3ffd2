//! One running table replica: the table's Raft group, its state machine and its storage, as the
//! node's table map holds them. The API, the follower side and the replication service reach a
//! table through this.

use armada_storage::{NodeId, TableId, Term};
use armada_table::Table;
use openraft::async_runtime::WatchReceiver;

use super::TableRaft;
use super::table_sm::TableStateMachine;

/// One running table replica.
pub struct TableGroup {
    pub id: TableId,
    pub name: String,
    pub raft: TableRaft,
    pub table: Table,
    pub state_machine: TableStateMachine,
}

impl TableGroup {
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
