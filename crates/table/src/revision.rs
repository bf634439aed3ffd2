//! What a revision is, in one place (ADR 0001).
//!
//! A table's log entries are numbered by this cluster's Raft log ([`LogIndex`]); clients see
//! revisions, identical in every cluster:
//!
//! * on the leader cluster, a write's revision is its entry's own log index, and so is the
//!   table's revision after the entry;
//! * on a follower cluster, a replicated write's revision is the [`LeaderIndex`] it carries
//!   (the leader cluster's log index of it), and the table's revision is the last leader
//!   index applied — never this cluster's log index.
//!
//! The state machine hands the table log indices only; apply stamps writes with
//! [`entry_revision`] (or, inside a replicated SEQUENCE, [`Revision::from_leader_index`]) and
//! stores [`position_after`]. Nothing else derives a revision.

use crate::position::AppliedPosition;
use armada_storage::{LeaderIndex, LogIndex, Revision};
use bytes::Bytes;

/// Which cluster a table replica belongs to; decides how revisions are assigned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableRole {
    /// Leader cluster: a write's revision is its entry's log index.
    Leader,
    /// Follower cluster: the table applies only replicated commands (SEQUENCEs of the leader's
    /// commands, each stamped with its leader index) and staged loads; its revision is the last
    /// applied leader index.
    Follower,
}

/// The revision an entry's own writes are stamped with, and the one its outcome reports
/// (a replicated SEQUENCE's writes carry their leader indices instead).
pub(crate) fn entry_revision(log_index: LogIndex) -> Revision {
    Revision::from_leader_cluster_log_index(log_index)
}

/// The position stored once a table of `role` has applied up to `log_index`, `leader_index`
/// being the last leader index applied (carried by a replicated command, kept otherwise).
pub(crate) fn position_after(
    role: TableRole,
    log_index: LogIndex,
    leader_index: Option<LeaderIndex>,
    raft_state: Bytes,
) -> AppliedPosition {
    let revision = match role {
        TableRole::Leader => Revision::from_leader_cluster_log_index(log_index),
        TableRole::Follower => Revision::from_leader_index(leader_index.unwrap_or_default()),
    };
    AppliedPosition {
        log_index,
        revision,
        leader_index,
        raft_state,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_role_decides_the_revision_of_a_position() {
        let raft_state = Bytes::from_static(b"raft");
        let leader = position_after(TableRole::Leader, LogIndex(9), None, raft_state.clone());
        assert_eq!((leader.revision, leader.leader_index), (Revision(9), None));
        let follower = position_after(
            TableRole::Follower,
            LogIndex(9),
            Some(LeaderIndex(4)),
            raft_state.clone(),
        );
        assert_eq!(follower.revision, Revision(4));
        assert_eq!(follower.log_index, LogIndex(9));
        let fresh = position_after(TableRole::Follower, LogIndex(1), None, raft_state);
        assert_eq!(fresh.revision, Revision(0));
        assert_eq!(entry_revision(LogIndex(7)), Revision(7));
    }
}
