//! Staged loads: replacing a table's whole contents through its Raft log without ever holding
//! the contents in memory, and without readers seeing a mix of old and new.
//!
//! A load is three kinds of commands, each applied alone (the Raft glue never batches a LOAD
//! command with other entries, so each gets its own write batch and position):
//!
//! * `LOAD_BEGIN{load_id, load_keep_revisions}` allocates a fresh, invisible *staging*
//!   generation (dropping any earlier unfinished load) and records it in the meta keyspace.
//! * `LOAD_CHUNK{load_id, batch}` writes records into the staging generation. Keys must be
//!   strictly increasing across the whole load. With `load_keep_revisions` (follower bootstrap)
//!   a record keeps its `create_revision`/`mod_revision`; otherwise (restore) every record is
//!   stamped with the revision of the LOAD_BEGIN entry, so restored contents get fresh revisions.
//! * `LOAD_COMMIT{load_id, load_count, leader_index?}` checks the record count and switches the
//!   table's generation pointer, position and compact revision in one batch; the old generation
//!   is dropped after that batch is durable. Reads at revisions before the switch get
//!   `OutOfRange` (the compact revision becomes the commit's revision, or the leader index the
//!   loaded data was taken at).
//!
//! A command naming another load than the one staged is rejected (deterministically, so every
//! replica agrees). The staging generation is part of the internal snapshot format, so a replica
//! that catches up by snapshot in the middle of a load still commits the same contents.

use crate::error::{Result, TableError};
use crate::generation::Generation;
use armada_storage::Revision;
use bytes::Bytes;
use std::sync::Arc;

const STAGING_FORMAT: u8 = 1;
const STAGING_FIXED_BYTES: usize = 1 + 8 + 8 + 8 + 8 + 1;

/// What is known about the load in progress (meta key `staging`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StagingMeta {
    pub load_id: u64,
    /// Number of the staging generation's keyspaces.
    pub generation: u64,
    /// Records loaded so far.
    pub count: u64,
    /// Revision stamped on records when revisions are not kept.
    pub begin_revision: Revision,
    pub keep_revisions: bool,
    /// Largest key loaded so far (keys must increase).
    pub last_key: Option<Bytes>,
}

impl StagingMeta {
    pub fn encode(&self) -> Vec<u8> {
        let last_key = self.last_key.as_deref().unwrap_or_default();
        let mut out = Vec::with_capacity(STAGING_FIXED_BYTES + 1 + last_key.len());
        out.push(STAGING_FORMAT);
        out.extend_from_slice(&self.load_id.to_be_bytes());
        out.extend_from_slice(&self.generation.to_be_bytes());
        out.extend_from_slice(&self.count.to_be_bytes());
        out.extend_from_slice(&self.begin_revision.get().to_be_bytes());
        out.push(u8::from(self.keep_revisions));
        out.push(u8::from(self.last_key.is_some()));
        out.extend_from_slice(last_key);
        out
    }

    pub fn decode(record: &[u8]) -> Result<StagingMeta> {
        let corrupt = || TableError::Corrupt(format!("staging record of {} bytes", record.len()));
        if record.len() < STAGING_FIXED_BYTES + 1 || record[0] != STAGING_FORMAT {
            return Err(corrupt());
        }
        let number = |at: usize| -> Result<u64> {
            let bytes: [u8; 8] = record[at..at + 8].try_into().map_err(|_| corrupt())?;
            Ok(u64::from_be_bytes(bytes))
        };
        let keep_revisions = match record[33] {
            0 => false,
            1 => true,
            _ => return Err(corrupt()),
        };
        let last_key = match record[34] {
            0 if record.len() == STAGING_FIXED_BYTES + 1 => None,
            1 => Some(Bytes::copy_from_slice(&record[STAGING_FIXED_BYTES + 1..])),
            _ => return Err(corrupt()),
        };
        Ok(StagingMeta {
            load_id: number(1)?,
            generation: number(9)?,
            count: number(17)?,
            begin_revision: Revision(number(25)?),
            keep_revisions,
            last_key,
        })
    }
}

/// A load in progress: its record and its open keyspaces.
#[derive(Clone)]
pub(crate) struct Staging {
    pub meta: StagingMeta,
    pub generation: Arc<Generation>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_meta_round_trips() {
        for meta in [
            StagingMeta {
                load_id: 1,
                generation: 2,
                count: 0,
                begin_revision: Revision(9),
                keep_revisions: false,
                last_key: None,
            },
            StagingMeta {
                load_id: u64::MAX,
                generation: 7,
                count: 12,
                begin_revision: Revision(0),
                keep_revisions: true,
                last_key: Some(Bytes::from_static(b"")),
            },
            StagingMeta {
                load_id: 3,
                generation: 4,
                count: 5,
                begin_revision: Revision(6),
                keep_revisions: true,
                last_key: Some(Bytes::from_static(b"key")),
            },
        ] {
            assert_eq!(StagingMeta::decode(&meta.encode()).unwrap(), meta);
        }
        assert!(StagingMeta::decode(b"\x01short").is_err());
        let mut bad = StagingMeta::decode(
            &StagingMeta {
                load_id: 1,
                generation: 1,
                count: 1,
                begin_revision: Revision(1),
                keep_revisions: false,
                last_key: None,
            }
            .encode(),
        )
        .unwrap()
        .encode();
        bad[33] = 5;
        assert!(StagingMeta::decode(&bad).is_err());
    }
}
