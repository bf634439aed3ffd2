//! Replacing a table's whole contents through its Raft group (Restore on the leader cluster,
//! snapshot bootstrap on a follower cluster) with a staged load (see `armada_table`'s
//! `load.rs`): LOAD_BEGIN, LOAD_CHUNKs of about [`LOAD_CHUNK_BYTES`], LOAD_COMMIT.
//!
//! The records come from a dump file that is read by a blocking thread and handed over one
//! chunk at a time through a small bounded channel, so memory stays flat whatever the table's
//! size. Every replica applies the same entries, so the switch happens at the same log index
//! everywhere, and readers see the old contents until the commit, then the new ones.
//!
//! A load that fails half-way leaves an invisible staging generation behind; the next load's
//! LOAD_BEGIN drops it.

use std::path::Path;
use std::sync::Arc;

use armada_table::{DumpReader, pb};
use bytes::Bytes;
use pb::command::CommandType;
use prost::Message;
use tokio::sync::mpsc;

use crate::error::ApiError;
use crate::groups::types::{Request, Response};
use crate::node::{GroupHandle, Node, TableGroup};

/// Target size of the records of one LOAD_CHUNK entry (a single record may exceed it).
pub const LOAD_CHUNK_BYTES: usize = 1024 * 1024;

/// What a finished load did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loaded {
    /// Records loaded.
    pub records: u64,
    /// The table's revision right after the switch.
    pub revision: u64,
    /// The leader index carried by the dump's final DUMMY record, if any.
    pub leader_index: Option<u64>,
}

/// One unit handed from the dump reader to the proposer.
enum Piece {
    Chunk(Vec<pb::KeyValue>),
    LeaderIndex(u64),
}

impl Node {
    /// Replaces the contents of `group`'s table with the PUT records of the dump at `dump`.
    ///
    /// `keep_revisions`: keep each record's create/mod revisions and commit at the dump's final
    /// DUMMY leader index (follower bootstrap); otherwise every record gets the revision of the
    /// load's first entry (restore). The dump must have been validated by the caller when it
    /// comes from a client; a record the table refuses fails the load (nothing switches).
    pub async fn load_table_from_dump(
        &self,
        group: &Arc<TableGroup>,
        dump: &Path,
        keep_revisions: bool,
        deadline: tokio::time::Instant,
    ) -> Result<Loaded, ApiError> {
        let handle = GroupHandle::Table(group.clone());
        // Unique enough: a later load (any node) replaces an unfinished one anyway.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |elapsed| elapsed.as_nanos() as u64);
        let load_id = (nanos ^ (self.node_id().get() << 56)).max(1);
        let table = Bytes::from(group.name().as_bytes().to_vec());
        let command = |r#type: CommandType| pb::Command {
            table: table.clone(),
            r#type: r#type as i32,
            load_id,
            ..Default::default()
        };
        self.propose_load(
            &handle,
            pb::Command {
                load_keep_revisions: keep_revisions,
                ..command(CommandType::LoadBegin)
            },
            deadline,
        )
        .await?;

        let (sender, mut receiver) = mpsc::channel::<Result<Piece, ApiError>>(2);
        let file = std::fs::File::open(dump)
            .map_err(|error| ApiError::Internal(format!("cannot open the dump: {error}")))?;
        let reader = tokio::task::spawn_blocking(move || read_pieces(file, sender));
        let mut records = 0u64;
        let mut leader_index = None;
        while let Some(piece) = receiver.recv().await {
            match piece? {
                Piece::Chunk(batch) => {
                    records += batch.len() as u64;
                    self.propose_load(
                        &handle,
                        pb::Command {
                            batch,
                            ..command(CommandType::LoadChunk)
                        },
                        deadline,
                    )
                    .await?;
                }
                Piece::LeaderIndex(index) => leader_index = Some(index),
            }
        }
        reader
            .await
            .map_err(|error| ApiError::Internal(format!("dump reader failed: {error}")))?;
        if keep_revisions && leader_index.is_none() {
            return Err(ApiError::FailedPrecondition(
                "the snapshot has no final record with the leader index".into(),
            ));
        }
        let revision = self
            .propose_load(
                &handle,
                pb::Command {
                    load_count: records,
                    leader_index: if keep_revisions { leader_index } else { None },
                    ..command(CommandType::LoadCommit)
                },
                deadline,
            )
            .await?;
        Ok(Loaded {
            records,
            revision,
            leader_index,
        })
    }

    /// Restores table `name` (created when missing) from a validated dump file; returns the
    /// table's revision after the switch.
    pub async fn restore_table(
        self: &Arc<Self>,
        name: &str,
        dump: &Path,
        deadline: tokio::time::Instant,
    ) -> Result<u64, ApiError> {
        let group = match self.table(name).await {
            Ok(group) => group,
            Err(ApiError::TableNotFound(_)) => {
                match self.create_table(name, deadline).await {
                    Ok(_) | Err(ApiError::TableExists) => {}
                    Err(error) => return Err(error),
                }
                self.table(name).await?
            }
            Err(error) => return Err(error),
        };
        let loaded = self
            .load_table_from_dump(&group, dump, false, deadline)
            .await?;
        tracing::info!(
            table = name,
            records = loaded.records,
            revision = loaded.revision,
            "table restored"
        );
        Ok(loaded.revision)
    }

    /// Proposes one LOAD command; returns the revision its result reports.
    async fn propose_load(
        &self,
        handle: &GroupHandle,
        command: pb::Command,
        deadline: tokio::time::Instant,
    ) -> Result<u64, ApiError> {
        let request = Request(Bytes::from(command.encode_to_vec()));
        match self.write(handle, request, deadline).await? {
            (_, Response::Table { revision, .. }) => Ok(revision.get()),
            (_, Response::Rejected(message)) => Err(ApiError::FailedPrecondition(format!(
                "the table refused the load: {message}"
            ))),
            (_, other) => Err(ApiError::Internal(format!(
                "unexpected response to a load command: {other:?}"
            ))),
        }
    }
}

/// Reads the dump and sends its PUT records in chunks, then the final leader index if any.
fn read_pieces(file: std::fs::File, sender: mpsc::Sender<Result<Piece, ApiError>>) {
    let mut batch = Vec::new();
    let mut bytes = 0;
    for command in DumpReader::new(std::io::BufReader::new(file)) {
        let piece = match command {
            Err(error) => Err(ApiError::FailedPrecondition(format!(
                "unreadable dump: {error}"
            ))),
            Ok(command) => match CommandType::try_from(command.r#type) {
                Ok(CommandType::Put) => {
                    let kv = command.kv.unwrap_or_default();
                    bytes += kv.key.len() + kv.value.len() + 32;
                    batch.push(kv);
                    if bytes < LOAD_CHUNK_BYTES {
                        continue;
                    }
                    bytes = 0;
                    Ok(Piece::Chunk(std::mem::take(&mut batch)))
                }
                Ok(CommandType::Dummy) => match command.leader_index {
                    Some(index) => Ok(Piece::LeaderIndex(index)),
                    None => continue,
                },
                _ => Err(ApiError::FailedPrecondition(format!(
                    "unexpected command type {} in a dump",
                    command.r#type
                ))),
            },
        };
        let failed = piece.is_err();
        // Flush pending records before a leader index (it ends the dump).
        if matches!(piece, Ok(Piece::LeaderIndex(_)))
            && !batch.is_empty()
            && sender
                .blocking_send(Ok(Piece::Chunk(std::mem::take(&mut batch))))
                .is_err()
        {
            return;
        }
        if sender.blocking_send(piece).is_err() || failed {
            return;
        }
    }
    if !batch.is_empty() {
        let _ = sender.blocking_send(Ok(Piece::Chunk(batch)));
    }
}
