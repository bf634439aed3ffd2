//! One running table replica: the table's Raft group, its state machine and its storage, as the
//! node's table map holds them. The API, the follower side and the replication service reach a
//! table through this.

use armada_storage::TableId;
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
    pub fn term_and_leader(&self) -> (u64, u64) {
        let metrics = self.raft.server_metrics();
        let metrics = metrics.borrow_watched();
        (
            metrics.vote.leader_id.term,
            metrics.current_leader.unwrap_or(0),
        )
    }
}
