//! `replication.v1` on the replication address: what follower clusters pull from the leader
//! cluster — the table list (`Metadata.Get`), each table's committed log from an index
//! (`Log.Replicate`), and a point-in-time dump (`Snapshot.Stream`) — plus Armada's
//! `armada.v1.MetadataFeed.Watch`, the table list as a stream (sent on every catalog change
//! and as a keep-alive), so that followers learn of new and deleted tables at once instead of
//! at their next `Metadata.Get` poll.
//!
//! Log entries are shipped as the exact `mvcc.v1.Command`s that were applied; Raft-internal
//! entries (leader blanks, membership) become `DUMMY` so indices stay contiguous. A
//! `Replicate` stream stays open after catching up (long poll, `replication::log_stream`).
//! With `--replication.token` set, every call needs `authorization: Bearer <token>`; the same
//! holds for `regatta.v1.KV` on this address (see `server.rs`), which follower clusters use to
//! forward writes.

use std::io::{self, Write};
use std::sync::Arc;
use std::time::Duration;

use armada_proto::armada::v1::MetadataWatchRequest;
use armada_proto::armada::v1::metadata_feed_server::MetadataFeed;
use armada_proto::replication::v1::log_server::Log;
use armada_proto::replication::v1::metadata_server::Metadata;
use armada_proto::replication::v1::snapshot_server::Snapshot;
use armada_proto::replication::v1::{
    MetadataRequest, MetadataResponse, ReplicateCommand, ReplicateCommandsResponse,
    ReplicateErrResponse, ReplicateError, ReplicateRequest, ReplicateResponse, SnapshotChunk,
    SnapshotRequest, Table, replicate_response,
};
use armada_storage::LogIndex;
use armada_table::pb;
use bytes::Bytes;
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{check_token, client_timeout, metered, validate};
use crate::error::ApiError;
use crate::node::{Node, TableGroup};
use crate::replication::log_cache::{CachedCommand, CachedEntry};
use crate::replication::log_stream::{LogEvent, LogStream};

/// Upper bound of the commands' encoded bytes in one `Replicate` message (one command may
/// exceed it).
pub const REPLICATE_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// Upper bound of one snapshot or backup chunk.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;
/// How long a `Replicate` stream stays open when the client set no deadline.
pub const REPLICATE_STREAM_DURATION: Duration = Duration::from_secs(60);
/// How much before the client's deadline a `Replicate` stream ends (a tenth of the client's
/// timeout, at most this), so that its OK status crosses a WAN before the client gives up.
const REPLICATE_STREAM_END_MARGIN: Duration = Duration::from_secs(1);
/// Messages a `Replicate` stream may have queued for a slow client.
const REPLICATE_STREAM_BUFFER: usize = 2;
/// Silence after which `MetadataFeed.Watch` repeats the table list (with fresh leader
/// indices): the follower's proof that the leader cluster is alive.
pub const METADATA_FEED_KEEPALIVE: Duration = Duration::from_secs(1);
/// Longest life of a `MetadataFeed.Watch` stream whose client set no deadline (the follower
/// reopens it); bounds what a forgotten client holds.
const METADATA_FEED_DURATION: Duration = Duration::from_secs(3600);
/// Table lists a `MetadataFeed.Watch` stream may have queued for a slow client.
const METADATA_FEED_BUFFER: usize = 2;

/// `replication.v1` (Metadata, Log, Snapshot). With `--replication.token` set every call needs
/// `authorization: Bearer <token>`.
#[derive(Clone)]
pub struct ReplicationService {
    node: Arc<Node>,
    /// Turns true when the server stops: open streams end then.
    stop: watch::Receiver<bool>,
}

impl ReplicationService {
    pub fn new(node: Arc<Node>, stop: watch::Receiver<bool>) -> Self {
        ReplicationService { node, stop }
    }

    fn token(&self) -> &str {
        &self.node.config().replication.token
    }
}

/// The applied index of a table's replica on this node: on the leader cluster, the leader
/// index a follower cluster can reach.
fn applied_index(group: &TableGroup) -> u64 {
    group.state_machine().subscribe().borrow().log_index.get()
}

/// The table list that `Metadata.Get` answers and `MetadataFeed.Watch` streams.
fn table_list(node: &Node) -> MetadataResponse {
    let catalog = node.catalog_state();
    let running = node.table_groups();
    MetadataResponse {
        tables: catalog
            .tables
            .values()
            .map(|record| Table {
                name: record.name.clone(),
                r#type: armada_proto::replication::v1::table::Type::Replicated as i32,
                id: record.id.to_string(),
                // 0 while this node is still starting the table's group.
                leader_index: running
                    .get(&record.name)
                    .filter(|group| group.id() == record.table_id())
                    .map_or(0, |group| applied_index(group)),
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl Metadata for ReplicationService {
    async fn get(
        &self,
        request: Request<MetadataRequest>,
    ) -> Result<Response<MetadataResponse>, Status> {
        metered("replication.v1.Metadata", "Get", async {
            check_token(&request, self.token())?;
            Ok(table_list(&self.node))
        })
        .await
        .map(Response::new)
    }
}

/// Sends the table list now, on every catalog change and at least every
/// [`METADATA_FEED_KEEPALIVE`], until the deadline, the server stops or the client goes away.
async fn feed_tables(
    node: Arc<Node>,
    mut stop: watch::Receiver<bool>,
    deadline: Instant,
    sender: mpsc::Sender<Result<MetadataResponse, Status>>,
) {
    let mut catalog = node.catalog_changes();
    catalog.mark_unchanged();
    loop {
        if *stop.borrow() || sender.send(Ok(table_list(&node))).await.is_err() {
            return;
        }
        tokio::select! {
            changed = catalog.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(METADATA_FEED_KEEPALIVE) => {}
            _ = stop.changed() => return,
            _ = tokio::time::sleep_until(deadline) => return,
            _ = sender.closed() => return,
        }
    }
}

#[tonic::async_trait]
impl MetadataFeed for ReplicationService {
    type WatchStream = ReceiverStream<Result<MetadataResponse, Status>>;

    async fn watch(
        &self,
        request: Request<MetadataWatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        metered("armada.v1.MetadataFeed", "Watch", async {
            check_token(&request, self.token())?;
            let deadline = match client_timeout(&request) {
                Some(timeout) => {
                    Instant::now()
                        + timeout.saturating_sub(REPLICATE_STREAM_END_MARGIN.min(timeout / 10))
                }
                // No deadline: the stream lasts until the server stops or the client goes.
                None => Instant::now() + METADATA_FEED_DURATION,
            };
            let (sender, receiver) = mpsc::channel(METADATA_FEED_BUFFER);
            tokio::spawn(feed_tables(
                self.node.clone(),
                self.stop.clone(),
                deadline,
                sender,
            ));
            Ok(ReceiverStream::new(receiver))
        })
        .await
        .map(Response::new)
    }
}

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

/// The wire form of a replicated entry. A command that does not decode was rejected by the
/// state machine without effect, so it travels as `DUMMY` like Raft-internal entries.
fn replicate_command(table: &Bytes, entry: CachedEntry) -> ReplicateCommand {
    let dummy = || pb::Command {
        table: table.clone(),
        r#type: pb::command::CommandType::Dummy as i32,
        ..Default::default()
    };
    let command = match entry.command {
        CachedCommand::Command(bytes) => pb::Command::decode(bytes).unwrap_or_else(|_| dummy()),
        CachedCommand::Dummy => dummy(),
    };
    ReplicateCommand {
        leader_index: entry.index.get(),
        command: Some(command),
    }
}

/// The wire form of a stream event.
fn replicate_response(table: &Bytes, event: LogEvent) -> Result<ReplicateResponse, Status> {
    match event {
        LogEvent::Entries { entries, applied } => Ok(ReplicateResponse {
            response: Some(replicate_response::Response::CommandsResponse(
                ReplicateCommandsResponse {
                    commands: entries
                        .into_iter()
                        .map(|entry| replicate_command(table, entry))
                        .collect(),
                },
            )),
            leader_index: applied.get(),
        }),
        LogEvent::Applied(applied) => Ok(ReplicateResponse {
            response: None,
            leader_index: applied.get(),
        }),
        LogEvent::LeaderBehind => Ok(error_message(ReplicateError::LeaderBehind)),
        LogEvent::UseSnapshot => Ok(error_message(ReplicateError::UseSnapshot)),
        LogEvent::TableDeleted => Err(ApiError::NotFound("the table was deleted".into()).into()),
        LogEvent::Failed(message) => Err(ApiError::Internal(message).into()),
    }
}

/// When a `Replicate` stream ends: a little before the client's deadline, else after
/// [`REPLICATE_STREAM_DURATION`].
fn stream_deadline<T>(request: &Request<T>) -> Instant {
    let duration = match client_timeout(request) {
        Some(timeout) => timeout.saturating_sub(REPLICATE_STREAM_END_MARGIN.min(timeout / 10)),
        None => REPLICATE_STREAM_DURATION,
    };
    Instant::now() + duration
}

impl ReplicationService {
    async fn replicate_inner(
        &self,
        request: Request<ReplicateRequest>,
    ) -> Result<ReceiverStream<Result<ReplicateResponse, Status>>, ApiError> {
        check_token(&request, self.token())?;
        let deadline = stream_deadline(&request);
        let request = request.into_inner();
        if request.leader_index == 0 {
            return Err(ApiError::invalid("leader_index must be greater than 0"));
        }
        let group = self.node.table(&validate::table(&request.table)?).await?;
        // Apply everything committed before the call, so that a lagging replica does not
        // answer LEADER_BEHIND to a follower that is not ahead.
        let linearize_deadline = deadline.min(Instant::now() + super::DEFAULT_DEADLINE);
        self.node.linearize(&group, linearize_deadline).await?;
        let (sender, receiver) = mpsc::channel(REPLICATE_STREAM_BUFFER);
        let stream = LogStream::new(
            group.clone(),
            self.node.log_engine().group(group.id()),
            self.node.catalog_changes(),
            self.stop.clone(),
            // On the leader cluster a leader index is the entry's own log index.
            LogIndex(request.leader_index),
            deadline,
            REPLICATE_MESSAGE_BYTES,
        );
        let table = request.table;
        tokio::spawn(stream.run(sender, move |event| replicate_response(&table, event)));
        Ok(ReceiverStream::new(receiver))
    }
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
            self.replicate_inner(request),
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
            check_token(&request, self.token())?;
            let request = request.into_inner();
            let group = self.node.table(&validate::table(&request.table)?).await?;
            let deadline = Instant::now() + super::DEFAULT_DEADLINE;
            self.node.linearize(&group, deadline).await?;
            let view = group.table().read_view();
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
