//! `replication.v1` on the replication address: what follower clusters pull from the leader
//! cluster — the table list (`Metadata.Get`), each table's committed log from an index
//! (`Log.Replicate`), and a point-in-time dump (`Snapshot.Stream`).
//!
//! Log entries are shipped as the exact `mvcc.v1.Command`s that were applied; Raft-internal
//! entries (leader blanks, membership) become `DUMMY` so indices stay contiguous.

use std::io::{self, Write};
use std::sync::Arc;

use armada_proto::replication::v1::log_server::Log;
use armada_proto::replication::v1::metadata_server::Metadata;
use armada_proto::replication::v1::snapshot_server::Snapshot;
use armada_proto::replication::v1::{
    MetadataRequest, MetadataResponse, ReplicateCommand, ReplicateCommandsResponse,
    ReplicateErrResponse, ReplicateError, ReplicateRequest, ReplicateResponse, SnapshotChunk,
    SnapshotRequest, Table, replicate_response,
};
use armada_table::pb;
use bytes::Bytes;
use openraft::EntryPayload;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{metered, validate};
use crate::error::ApiError;
use crate::node::Node;

/// Upper bound of the commands' encoded bytes in one `Replicate` message.
pub const REPLICATE_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// Upper bound of one snapshot or backup chunk.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;
/// Entries read from the log per step.
const LOG_READ_BATCH: u64 = 1024;

pub struct ReplicationService {
    node: Arc<Node>,
}

impl ReplicationService {
    pub fn new(node: Arc<Node>) -> Self {
        ReplicationService { node }
    }
}

#[tonic::async_trait]
impl Metadata for ReplicationService {
    async fn get(
        &self,
        _request: Request<MetadataRequest>,
    ) -> Result<Response<MetadataResponse>, Status> {
        metered("replication.v1.Metadata", "Get", async {
            let catalog = self.node.catalog_state();
            let groups = self.node.table_groups();
            Ok(MetadataResponse {
                tables: catalog
                    .tables
                    .values()
                    .map(|record| Table {
                        name: record.name.clone(),
                        r#type: armada_proto::replication::v1::table::Type::Replicated as i32,
                        id: record.id.to_string(),
                        leader_index: groups
                            .get(&record.name)
                            .filter(|group| group.id.get() == record.id)
                            .and_then(|group| group.table.applied_position().ok())
                            .map_or(0, |position| position.log_index.get()),
                    })
                    .collect(),
            })
        })
        .await
        .map(Response::new)
    }
}

type ReplicateSender = mpsc::Sender<Result<ReplicateResponse, Status>>;

fn error_message(error: ReplicateError) -> ReplicateResponse {
    ReplicateResponse {
        response: Some(replicate_response::Response::ErrorResponse(
            ReplicateErrResponse {
                error: error as i32,
            },
        )),
        leader_index: 0,
    }
}

/// The replicated form of a log entry.
fn replicate_command(table: &Bytes, entry: &crate::groups::types::Entry) -> ReplicateCommand {
    let dummy = || pb::Command {
        table: table.clone(),
        r#type: pb::command::CommandType::Dummy as i32,
        ..Default::default()
    };
    let command = match &entry.payload {
        EntryPayload::Normal(request) => {
            pb::Command::decode(request.0.as_ref()).unwrap_or_else(|_| dummy())
        }
        EntryPayload::Blank | EntryPayload::Membership(_) => dummy(),
    };
    ReplicateCommand {
        leader_index: entry.log_id.index,
        command: Some(command),
    }
}

impl ReplicationService {
    async fn replicate_inner(
        &self,
        request: ReplicateRequest,
    ) -> Result<ReceiverStream<Result<ReplicateResponse, Status>>, ApiError> {
        if request.leader_index == 0 {
            return Err(ApiError::invalid("leader_index must be greater than 0"));
        }
        let group = self.node.table(&validate::table(&request.table)?).await?;
        let deadline = tokio::time::Instant::now() + super::DEFAULT_DEADLINE;
        self.node.linearize(&group, deadline).await?;
        let applied = group.table.read_view().position().log_index.get();
        let (sender, receiver) = mpsc::channel(2);
        let log = self.node.log_engine().group(group.id);
        let table_name = request.table.clone();
        let start = request.leader_index;
        tokio::spawn(async move {
            let _ = stream_log(log, table_name, start, applied, group, sender).await;
        });
        Ok(ReceiverStream::new(receiver))
    }
}

async fn stream_log(
    log: crate::groups::log::GroupLog,
    table: Bytes,
    mut next: u64,
    applied: u64,
    group: Arc<crate::node::TableGroup>,
    sender: ReplicateSender,
) -> Result<(), ()> {
    let send = |message| async { sender.send(Ok(message)).await.map_err(|_| ()) };
    if next > applied + 1 {
        return send(error_message(ReplicateError::LeaderBehind)).await;
    }
    while next <= applied {
        let first = match log.first_index() {
            Ok(first) => first,
            Err(error) => {
                return sender
                    .send(Err(Status::internal(error.to_string())))
                    .await
                    .map_err(|_| ());
            }
        };
        if first.is_none_or(|first| next < first) {
            return send(error_message(ReplicateError::UseSnapshot)).await;
        }
        let end = (next + LOG_READ_BATCH).min(applied + 1);
        let entries = match log.read_range(next, end) {
            Ok(entries) => entries,
            Err(error) => {
                return sender
                    .send(Err(Status::internal(error.to_string())))
                    .await
                    .map_err(|_| ());
            }
        };
        if entries.first().map(|entry| entry.log_id.index) != Some(next) {
            return send(error_message(ReplicateError::UseSnapshot)).await;
        }
        let mut commands = Vec::new();
        let mut bytes = 0;
        for entry in &entries {
            let command = replicate_command(&table, entry);
            bytes += command.encoded_len();
            commands.push(command);
            next = entry.log_id.index + 1;
            if bytes >= REPLICATE_MESSAGE_BYTES {
                break;
            }
        }
        send(ReplicateResponse {
            response: Some(replicate_response::Response::CommandsResponse(
                ReplicateCommandsResponse { commands },
            )),
            leader_index: applied,
        })
        .await?;
    }
    let now_applied = group.table.read_view().position().log_index.get();
    send(ReplicateResponse {
        response: None,
        leader_index: now_applied,
    })
    .await
}

#[tonic::async_trait]
impl Log for ReplicationService {
    type ReplicateStream = ReceiverStream<Result<ReplicateResponse, Status>>;

    async fn replicate(
        &self,
        request: Request<ReplicateRequest>,
    ) -> Result<Response<Self::ReplicateStream>, Status> {
        metered(
            "replication.v1.Log",
            "Replicate",
            self.replicate_inner(request.into_inner()),
        )
        .await
        .map(Response::new)
    }
}

/// An `io::Write` that cuts what is written into `SnapshotChunk`s of at most
/// [`SNAPSHOT_CHUNK_BYTES`] and sends them (blocking: run it on a blocking thread).
pub struct ChunkWriter {
    buffer: Vec<u8>,
    sender: mpsc::Sender<Result<SnapshotChunk, Status>>,
}

impl ChunkWriter {
    pub fn new(sender: mpsc::Sender<Result<SnapshotChunk, Status>>) -> Self {
        ChunkWriter {
            buffer: Vec::with_capacity(SNAPSHOT_CHUNK_BYTES),
            sender,
        }
    }

    fn send_buffer(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let data = Bytes::from(std::mem::replace(
            &mut self.buffer,
            Vec::with_capacity(SNAPSHOT_CHUNK_BYTES),
        ));
        let chunk = SnapshotChunk {
            len: data.len() as u64,
            data,
            index: 0,
        };
        self.sender
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the receiver went away"))
    }

    /// Sends what is buffered; call once at the end.
    pub fn finish(mut self) -> io::Result<()> {
        self.send_buffer()
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = SNAPSHOT_CHUNK_BYTES - self.buffer.len();
        let taken = room.min(data.len());
        self.buffer.extend_from_slice(&data[..taken]);
        if self.buffer.len() == SNAPSHOT_CHUNK_BYTES {
            self.send_buffer()?;
        }
        Ok(taken)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[tonic::async_trait]
impl Snapshot for ReplicationService {
    type StreamStream = ReceiverStream<Result<SnapshotChunk, Status>>;

    async fn stream(
        &self,
        request: Request<SnapshotRequest>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        metered("replication.v1.Snapshot", "Stream", async {
            let request = request.into_inner();
            let group = self.node.table(&validate::table(&request.table)?).await?;
            let deadline = tokio::time::Instant::now() + super::DEFAULT_DEADLINE;
            self.node.linearize(&group, deadline).await?;
            let view = group.table.read_view();
            let (sender, receiver) = mpsc::channel(2);
            tokio::task::spawn_blocking(move || {
                let leader_index = view.position().log_index.get();
                let mut writer = ChunkWriter::new(sender.clone());
                let result = view
                    .write_dump(&request.table, Some(leader_index), &mut writer)
                    .map_err(|error| error.to_string())
                    .and_then(|()| writer.finish().map_err(|error| error.to_string()));
                if let Err(message) = result {
                    let _ = sender.blocking_send(Err(Status::internal(message)));
                }
            });
            Ok(ReceiverStream::new(receiver))
        })
        .await
        .map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_writer_cuts_at_the_chunk_limit() {
        let (sender, mut receiver) = mpsc::channel(16);
        let mut writer = ChunkWriter::new(sender);
        writer
            .write_all(&vec![7u8; SNAPSHOT_CHUNK_BYTES * 2 + 10])
            .expect("write");
        writer.finish().expect("finish");
        let mut sizes = Vec::new();
        while let Ok(chunk) = receiver.try_recv() {
            let chunk = chunk.expect("ok");
            assert_eq!(chunk.len as usize, chunk.data.len());
            sizes.push(chunk.data.len());
        }
        assert_eq!(sizes, vec![SNAPSHOT_CHUNK_BYTES, SNAPSHOT_CHUNK_BYTES, 10]);
    }
}
