//! Errors of the table state machine.
//!
//! Only [`TableError::Storage`] and [`TableError::Corrupt`] out of `apply` mean the node must stop
//! (fail-stop); invalid commands are not errors but `ApplyOutcome::Rejected`.

use armada_storage::{Revision, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("revision has been compacted (compact revision {compact_revision})")]
    Compacted { compact_revision: Revision },
    #[error("revision {requested} is newer than the table's revision {current}")]
    FutureRevision {
        requested: Revision,
        current: Revision,
    },
    #[error("corrupt table data: {0}")]
    Corrupt(String),
    #[error("invalid snapshot stream: {0}")]
    InvalidSnapshot(String),
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
}

impl From<armada_storage::fjall::Error> for TableError {
    fn from(error: armada_storage::fjall::Error) -> Self {
        TableError::Storage(StorageError::Engine(error))
    }
}

pub type Result<T, E = TableError> = std::result::Result<T, E>;
