//! The catalog's contents as plain data: the commands of the catalog group, their answers, and
//! the registry they change. No Raft and no storage here, so the rules of creating and deleting
//! tables are tested as a pure function, and the Raft type configuration can name
//! [`CatalogOutcome`] without a circle back into the state machine.

use std::collections::BTreeMap;

use armada_storage::{FIRST_TABLE_ID, TableId};
use serde::{Deserialize, Serialize};

/// A command of the catalog group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CatalogCommand {
    CreateTable {
        name: String,
        /// Follower clusters: the leader cluster's id of the table this one replicates.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        upstream_id: Option<u64>,
    },
    DeleteTable {
        name: String,
    },
}

/// The answer to a catalog command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CatalogOutcome {
    Created { id: TableIdWire },
    AlreadyExists { id: TableIdWire },
    Deleted { id: TableIdWire },
    NotFound,
}

/// `TableId` as it appears in catalog JSON.
pub type TableIdWire = u64;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableRecord {
    pub name: String,
    pub id: TableIdWire,
    /// Follower clusters: the leader cluster's id of the replicated table (a different id
    /// there means the leader's table was deleted and re-created).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_id: Option<u64>,
}

impl TableRecord {
    pub fn table_id(&self) -> TableId {
        TableId(self.id)
    }
}

/// The registry as of one applied catalog entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogState {
    pub tables: BTreeMap<String, TableRecord>,
    /// The last id handed out (0 = none yet).
    pub last_table_id: u64,
}

impl CatalogState {
    pub(super) fn apply(&mut self, command: &CatalogCommand) -> CatalogOutcome {
        match command {
            CatalogCommand::CreateTable { name, upstream_id } => {
                if let Some(existing) = self.tables.get(name) {
                    return CatalogOutcome::AlreadyExists { id: existing.id };
                }
                let id = self.last_table_id.max(FIRST_TABLE_ID.get() - 1) + 1;
                self.last_table_id = id;
                self.tables.insert(
                    name.clone(),
                    TableRecord {
                        name: name.clone(),
                        id,
                        upstream_id: *upstream_id,
                    },
                );
                CatalogOutcome::Created { id }
            }
            CatalogCommand::DeleteTable { name } => match self.tables.remove(name) {
                Some(record) => CatalogOutcome::Deleted { id: record.id },
                None => CatalogOutcome::NotFound,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_assigns_increasing_ids_and_rejects_duplicates() {
        let mut state = CatalogState::default();
        let create = |name: &str| CatalogCommand::CreateTable {
            name: name.into(),
            upstream_id: None,
        };
        assert_eq!(
            state.apply(&create("a")),
            CatalogOutcome::Created { id: 10001 }
        );
        assert_eq!(
            state.apply(&create("b")),
            CatalogOutcome::Created { id: 10002 }
        );
        assert_eq!(
            state.apply(&create("a")),
            CatalogOutcome::AlreadyExists { id: 10001 }
        );
        assert_eq!(
            state.apply(&CatalogCommand::DeleteTable { name: "a".into() }),
            CatalogOutcome::Deleted { id: 10001 }
        );
        assert_eq!(
            state.apply(&CatalogCommand::DeleteTable { name: "a".into() }),
            CatalogOutcome::NotFound
        );
        // A re-created table never reuses an id: replicas can tell it from the old one.
        assert_eq!(
            state.apply(&create("a")),
            CatalogOutcome::Created { id: 10003 }
        );
    }
}
