//! `maintenance.v1.Maintenance`: backups and restores on the leader cluster, Reset on follower
//! clusters (as in Regatta, each side answers `Unimplemented` to the other's methods). With
//! `--maintenance.token` set every call needs `authorization: Bearer <token>`.
//!
//! # Backup
//! A linearizable read point (ReadIndex, then wait until this replica applied it) and one
//! read view of the table: a fjall snapshot, so writes continue during the backup and are not
//! in it. The view is written as the Regatta dump (`docs/format.md`) by a blocking thread into
//! a [`ChunkWriter`] and a bounded channel, so at most a few chunks of ≤ 1 MiB are in memory
//! whatever the table's size, and a slow client slows the writer instead of filling memory.
//! The revision the dump observed travels in the response header [`REVISION_HEADER`] (an
//! Armada addition: Regatta clients ignore it).
//!
//! # Restore
//! First message `info{table}`, then `chunk`s. Everything is spooled to a file under the
//! node's temporary directory (bounded by [`MAX_RESTORE_DUMP_BYTES`]) and checked completely
//! ([`armada_table::check_dump`]: framing, CRCs, every record) before the table is touched;
//! any problem is `InvalidArgument` naming the record. Only then does the node replace the
//! table's contents through Raft (`Node::restore_table`, `node/load.rs`): created when
//! missing, switched atomically on every replica, with fresh revisions. The revision after the
//! switch travels in the response header [`REVISION_HEADER`].
//!
//! # Reset (follower clusters)
//! `Reset{table}` or `Reset{reset_all}`: each table's replica re-bootstraps from a fresh
//! snapshot of the leader's (`Follower::reset_table`); the call returns once it holds data
//! again. `reset_all` stops at the first table that fails.
//!
//! All three default to a one-hour deadline when the client sets none (Regatta: 1 h for Backup
//! and Restore), and the deadline is enforced for the whole stream, not only until the first
//! message.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use armada_proto::maintenance::v1::maintenance_server::Maintenance;
use armada_proto::maintenance::v1::{
    BackupRequest, ResetRequest, ResetResponse, RestoreMessage, RestoreResponse, restore_message,
};
use armada_proto::replication::v1::SnapshotChunk;
use futures::Stream;
use tokio::io::AsyncWriteExt;
use tokio::sync::{Semaphore, mpsc};
use tonic::{Request, Response, Status, Streaming};

use super::replication::ChunkWriter;
use super::{check_token, metered, validate};
use crate::error::ApiError;
use crate::follower::Follower;
use crate::node::Node;

const SERVICE: &str = "maintenance.v1.Maintenance";

/// Deadline of a Backup or Restore whose client set none (Regatta: 1 h).
pub const MAINTENANCE_DEADLINE: Duration = Duration::from_secs(3600);

/// Response header of `Backup` carrying the table revision the dump observed.
pub const REVISION_HEADER: &str = "armada-revision";

/// Largest restore stream accepted (spooled to disk, so this bounds disk use, not memory).
pub const MAX_RESTORE_DUMP_BYTES: u64 = 16 * 1024 * 1024 * 1024;

/// Restores running at once on one node (each spools a whole dump to disk).
pub const MAX_CONCURRENT_RESTORES: usize = 2;

/// Chunks buffered between the dump writer and the network (each ≤ 1 MiB).
const BACKUP_BUFFERED_CHUNKS: usize = 4;

pub type BackupStream = Pin<Box<dyn Stream<Item = Result<SnapshotChunk, Status>> + Send>>;

pub struct MaintenanceService {
    node: Arc<Node>,
    /// On a follower cluster: the replication machinery (forwarding, lag, Reset).
    follower: Option<Arc<Follower>>,
    restores: Arc<Semaphore>,
}

impl MaintenanceService {
    pub fn new(node: Arc<Node>, follower: Option<Arc<Follower>>) -> Self {
        MaintenanceService {
            node,
            follower,
            restores: Arc::new(Semaphore::new(MAX_CONCURRENT_RESTORES)),
        }
    }

    fn token(&self) -> &str {
        &self.node.config().maintenance.token
    }

    /// Backup and Restore change or read the leader cluster's tables only: a follower's
    /// contents are the leader's, and a restore there would fork them.
    fn require_leader_cluster(&self) -> Result<(), ApiError> {
        if self.node.config().is_follower() {
            return Err(ApiError::Unimplemented(
                "Backup and Restore are served by the leader cluster; this node belongs to a follower cluster".into(),
            ));
        }
        Ok(())
    }

    async fn reset_inner(&self, request: Request<ResetRequest>) -> Result<ResetResponse, ApiError> {
        check_token(&request, self.token())?;
        let deadline = maintenance_deadline(&request);
        let Some(follower) = &self.follower else {
            return Err(ApiError::Unimplemented(
                "Reset is served by follower clusters; this node belongs to the leader cluster"
                    .into(),
            ));
        };
        let request = request.into_inner();
        let tables: Vec<String> = if request.reset_all {
            self.node.table_groups().keys().cloned().collect()
        } else {
            vec![validate::table(&request.table)?]
        };
        for name in tables {
            follower.reset_table(&name, deadline).await?;
        }
        Ok(ResetResponse {})
    }

    async fn backup_inner(
        &self,
        request: Request<BackupRequest>,
    ) -> Result<Response<BackupStream>, ApiError> {
        check_token(&request, self.token())?;
        self.require_leader_cluster()?;
        let deadline = maintenance_deadline(&request);
        let table = request.into_inner().table;
        let name = validate::table(&table)?;
        let group = self.node.table(&name).await?;
        self.node.linearize(&group, deadline).await?;
        let view = group.table().read_view();
        let revision = view.position().revision.get();
        let (sender, receiver) = mpsc::channel(BACKUP_BUFFERED_CHUNKS);
        tokio::task::spawn_blocking(move || {
            let mut writer = ChunkWriter::new(sender.clone());
            let result = view
                .write_dump(&table, None, &mut writer)
                .map_err(|error| error.to_string())
                .and_then(|()| writer.finish().map_err(|error| error.to_string()));
            if let Err(message) = result {
                // Also the way a client that went away ends the writer: nobody to tell then.
                let _ = sender.blocking_send(Err(Status::internal(format!(
                    "backup of table `{name}` failed: {message}"
                ))));
            }
        });
        let mut response = Response::new(until_deadline(receiver, deadline));
        response
            .metadata_mut()
            .insert(REVISION_HEADER, revision.into());
        Ok(response)
    }

    async fn restore_inner(
        &self,
        request: Request<Streaming<RestoreMessage>>,
    ) -> Result<Response<RestoreResponse>, ApiError> {
        check_token(&request, self.token())?;
        self.require_leader_cluster()?;
        let deadline = maintenance_deadline(&request);
        let _permit = self.restores.clone().try_acquire_owned().map_err(|_| {
            ApiError::Unavailable(format!(
                "{MAX_CONCURRENT_RESTORES} restores are already running on this node; retry later"
            ))
        })?;
        let mut messages = request.into_inner();
        let name = receive_info(&mut messages, deadline).await?;
        let spool = tempfile::Builder::new()
            .prefix("restore-")
            .suffix(".dump")
            .tempfile_in(self.node.temporary_dir())
            .map_err(|error| ApiError::Internal(format!("cannot create a spool file: {error}")))?;
        let bytes = receive_chunks(&mut messages, &spool, deadline).await?;
        let summary = check_spooled(spool.path(), &name).await?;
        tracing::info!(
            table = name,
            bytes,
            keys = summary.keys,
            "restore stream received and checked"
        );
        let revision = self
            .node
            .restore_table(&name, spool.path(), deadline)
            .await?;
        let mut response = Response::new(RestoreResponse {});
        response
            .metadata_mut()
            .insert(REVISION_HEADER, revision.into());
        Ok(response)
    }
}

/// Checks the whole spooled dump (on a blocking thread: it reads the file).
async fn check_spooled(
    path: &std::path::Path,
    name: &str,
) -> Result<armada_table::DumpSummary, ApiError> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&path)?;
        Ok::<_, std::io::Error>(armada_table::check_dump(std::io::BufReader::new(file)))
    })
    .await
    .map_err(|error| ApiError::Internal(error.to_string()))?
    .map_err(|error| ApiError::Internal(format!("cannot read the spool file: {error}")))?
    .map_err(|problem| {
        ApiError::invalid(format!(
            "invalid dump for table `{name}`, nothing was changed: {problem}"
        ))
    })
}

/// The client's deadline, else [`MAINTENANCE_DEADLINE`].
fn maintenance_deadline<T>(request: &Request<T>) -> tokio::time::Instant {
    if request.metadata().get("grpc-timeout").is_some() {
        super::deadline(request)
    } else {
        tokio::time::Instant::now() + MAINTENANCE_DEADLINE
    }
}

/// Forwards the writer's chunks until it is done or `deadline` passes; at the deadline the
/// stream ends with `DeadlineExceeded` and dropping the receiver stops the writer.
fn until_deadline(
    receiver: mpsc::Receiver<Result<SnapshotChunk, Status>>,
    deadline: tokio::time::Instant,
) -> BackupStream {
    Box::pin(futures::stream::unfold(
        Some(receiver),
        move |state| async move {
            let mut receiver = state?;
            match tokio::time::timeout_at(deadline, receiver.recv()).await {
                Ok(Some(item)) => Some((item, Some(receiver))),
                Ok(None) => None,
                Err(_) => Some((
                    Err(Status::deadline_exceeded(
                        "backup did not finish before its deadline",
                    )),
                    None,
                )),
            }
        },
    ))
}

async fn next_message(
    messages: &mut Streaming<RestoreMessage>,
    deadline: tokio::time::Instant,
) -> Result<Option<RestoreMessage>, ApiError> {
    tokio::time::timeout_at(deadline, messages.message())
        .await
        .map_err(|_| ApiError::DeadlineExceeded)?
        .map_err(|status| {
            let message = format!("the restore stream broke: {}", status.message());
            match status.code() {
                // Over-size messages and undecodable bytes: the client's fault.
                tonic::Code::OutOfRange
                | tonic::Code::ResourceExhausted
                | tonic::Code::InvalidArgument
                | tonic::Code::Internal => ApiError::InvalidArgument(message),
                _ => ApiError::Unavailable(message),
            }
        })
}

/// The table named by the first message, which must be `info`.
async fn receive_info(
    messages: &mut Streaming<RestoreMessage>,
    deadline: tokio::time::Instant,
) -> Result<String, ApiError> {
    let first = next_message(messages, deadline).await?;
    let Some(RestoreMessage {
        data: Some(restore_message::Data::Info(info)),
    }) = first
    else {
        return Err(ApiError::invalid(
            "the first message of a restore must be info{table}",
        ));
    };
    // The message names the field as `table …`; here it is `info.table`.
    validate::table(&info.table).map_err(|error| ApiError::invalid(format!("info.{error}")))
}

/// Appends every chunk to `spool` and makes it durable; returns the number of bytes.
async fn receive_chunks(
    messages: &mut Streaming<RestoreMessage>,
    spool: &tempfile::NamedTempFile,
    deadline: tokio::time::Instant,
) -> Result<u64, ApiError> {
    let io = |error: std::io::Error| ApiError::Internal(format!("writing the spool file: {error}"));
    let mut file = tokio::fs::File::from_std(spool.reopen().map_err(io)?);
    let mut total: u64 = 0;
    let mut number: u64 = 0;
    while let Some(message) = next_message(messages, deadline).await? {
        number += 1;
        let chunk = match message.data {
            Some(restore_message::Data::Chunk(chunk)) => chunk,
            _ => {
                return Err(ApiError::invalid(format!(
                    "message {}: a chunk was expected (info comes only first)",
                    number + 1
                )));
            }
        };
        if chunk.len != 0 && chunk.len != chunk.data.len() as u64 {
            return Err(ApiError::invalid(format!(
                "chunk {number}: len is {} but it carries {} bytes",
                chunk.len,
                chunk.data.len()
            )));
        }
        total += chunk.data.len() as u64;
        if total > MAX_RESTORE_DUMP_BYTES {
            return Err(ApiError::invalid(format!(
                "the restore stream exceeds the limit of {MAX_RESTORE_DUMP_BYTES} bytes"
            )));
        }
        file.write_all(&chunk.data).await.map_err(io)?;
    }
    file.sync_all().await.map_err(io)?;
    Ok(total)
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    type BackupStream = BackupStream;

    async fn backup(
        &self,
        request: Request<BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        metered(SERVICE, "Backup", self.backup_inner(request)).await
    }

    async fn restore(
        &self,
        request: Request<Streaming<RestoreMessage>>,
    ) -> Result<Response<RestoreResponse>, Status> {
        metered(SERVICE, "Restore", self.restore_inner(request)).await
    }

    async fn reset(
        &self,
        request: Request<ResetRequest>,
    ) -> Result<Response<ResetResponse>, Status> {
        metered(SERVICE, "Reset", self.reset_inner(request))
            .await
            .map(Response::new)
    }
}
