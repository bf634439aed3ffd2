//! The applied position of a table and its on-disk record (`t<id>.meta` key `position`).
//!
//! Record (version 1): `[01][log_index u64 BE][revision u64 BE][has_leader_index u8]
//! [leader_index u64 BE][raft_state ...]`. The raft state is the glue's opaque blob.

use crate::error::{Result, TableError};
use armada_storage::{LeaderIndex, LogIndex, Revision};
use bytes::Bytes;

const POSITION_FORMAT: u8 = 1;
const FIXED_BYTES: usize = 1 + 8 + 8 + 1 + 8;

/// Where the table stands: written in the same batch as the data it covers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AppliedPosition {
    /// Last applied local log index.
    pub log_index: LogIndex,
    /// Revision of the table as of that entry (the header revision of reads).
    pub revision: Revision,
    /// Followers: last applied leader index.
    pub leader_index: Option<LeaderIndex>,
    /// Opaque blob owned by the Raft glue, stored verbatim.
    pub raft_state: Bytes,
}

impl AppliedPosition {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FIXED_BYTES + self.raft_state.len());
        out.push(POSITION_FORMAT);
        out.extend_from_slice(&self.log_index.get().to_be_bytes());
        out.extend_from_slice(&self.revision.get().to_be_bytes());
        out.push(u8::from(self.leader_index.is_some()));
        out.extend_from_slice(&self.leader_index.unwrap_or_default().get().to_be_bytes());
        out.extend_from_slice(&self.raft_state);
        out
    }

    pub(crate) fn decode(record: Bytes) -> Result<AppliedPosition> {
        let corrupt = || TableError::Corrupt(format!("position record of {} bytes", record.len()));
        if record.len() < FIXED_BYTES || record[0] != POSITION_FORMAT {
            return Err(corrupt());
        }
        let number = |at: usize| -> Result<u64> {
            let bytes = record.get(at..at + 8).ok_or_else(corrupt)?;
            Ok(u64::from_be_bytes(bytes.try_into().map_err(|_| corrupt())?))
        };
        let leader_index = match record[17] {
            0 => None,
            1 => Some(LeaderIndex(number(18)?)),
            _ => return Err(corrupt()),
        };
        Ok(AppliedPosition {
            log_index: LogIndex(number(1)?),
            revision: Revision(number(9)?),
            leader_index,
            raft_state: record.slice(FIXED_BYTES..),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_round_trips() {
        for position in [
            AppliedPosition::default(),
            AppliedPosition {
                log_index: LogIndex(7),
                revision: Revision(5),
                leader_index: Some(LeaderIndex(0)),
                raft_state: Bytes::from_static(b"raft"),
            },
        ] {
            let decoded = AppliedPosition::decode(Bytes::from(position.encode())).unwrap();
            assert_eq!(decoded, position);
        }
        assert!(AppliedPosition::decode(Bytes::from_static(b"\x01short")).is_err());
        let mut bad = AppliedPosition::default().encode();
        bad[17] = 9;
        assert!(AppliedPosition::decode(Bytes::from(bad)).is_err());
    }
}
