//! Identities and positions as newtypes (house rule 6).
//!
//! A `LogIndex` is a position in *this* cluster's Raft log of a group. A `LeaderIndex` is a
//! position in the *leader cluster's* log of the same table. A `Revision` is what clients see:
//! on the leader cluster it equals the entry's own `LogIndex`; on a follower cluster it equals
//! the `LeaderIndex` carried by the replicated command. Convert only through the named
//! functions below so that the mapping stays in one place (ADR 0001).

use std::fmt;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
        #[cfg_attr(feature = "serde", serde(transparent))]
        pub struct $name(pub u64);

        impl $name {
            /// The raw number, for the wire and for disk (fixed-width there).
            pub const fn get(self) -> u64 {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

id_type!(
    /// A node of a cluster (`--raft.node-id`), 1-based.
    NodeId
);
id_type!(
    /// A table's id inside one cluster; also its Raft group id. The catalog group is
    /// [`CATALOG_GROUP`]; tables start at [`FIRST_TABLE_ID`].
    TableId
);
id_type!(
    /// A Raft term.
    Term
);
id_type!(
    /// A position in this cluster's Raft log of one group.
    LogIndex
);
id_type!(
    /// A position in the leader cluster's Raft log of one table.
    LeaderIndex
);
id_type!(
    /// The MVCC revision of a write, identical in every cluster.
    Revision
);

/// Raft group id of the catalog (table registry), as in Regatta's metadata shard.
pub const CATALOG_GROUP: TableId = TableId(1000);

/// The first id handed to a table (Regatta: 10001).
pub const FIRST_TABLE_ID: TableId = TableId(10001);

impl Revision {
    /// On the leader cluster a write's revision is its own log index.
    pub const fn from_leader_cluster_log_index(index: LogIndex) -> Self {
        Revision(index.0)
    }

    /// On a follower cluster a replicated write's revision is the leader's index of it.
    pub const fn from_leader_index(index: LeaderIndex) -> Self {
        Revision(index.0)
    }
}
