//! Replication workers: one per local table on every node, active only on the node that leads
//! the table's Raft group in this follower cluster.
//!
//! A session tails the leader's log from the applied leader index + 1 over one long-lived
//! `Log.Replicate` stream and proposes each received batch as SEQUENCEs of the leader's
//! commands (each carrying its leader index). The table applies every leader index exactly
//! once, so a session that ends half-way, a duplicate after a takeover, or a retried proposal
//! never applies anything twice; a proposal that would leave a gap is refused and the next
//! session restarts from the applied position. A table with no data yet, a Reset (leader
//! index 0) or `USE_SNAPSHOT` bootstraps from `Snapshot.Stream` (spooled to a temporary file,
//! then a staged load), limited to `replication.max-recovery-in-flight` at once per node.

use std::io::Write;
use std::sync::Arc;

use openraft::async_runtime::WatchReceiver;
use std::time::Duration;

use armada_proto::replication::v1::{
    ReplicateCommand, ReplicateError, ReplicateRequest, ReplicateResponse, SnapshotRequest,
    replicate_response,
};
use armada_table::pb;
use bytes::Bytes;
use prost::Message;

use super::host::FollowerHost;
use super::lag::{TableLag, applied_leader_index};
use super::leader_cluster::describe_failure;
use super::state::Follower;
use crate::groups::table_group::TableGroup;
use crate::groups::types::{Request, Response};

/// How often the supervisor matches workers to the running tables.
const SUPERVISE_EVERY: Duration = Duration::from_millis(200);
/// Deadline of one `Log.Replicate` stream (a long poll; the next session reopens it).
const REPLICATE_TIMEOUT: Duration = Duration::from_secs(60);
/// Deadline of one snapshot bootstrap.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(3600);
/// Deadline of one proposal of a replicated batch.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Target size of one replicated SEQUENCE entry.
const SEQUENCE_BYTES: usize = 1024 * 1024;
/// A stream that delivers nothing (not even the leader's ~1 s heartbeat) for this long is
/// treated as a dead link and reopened.
const STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(15);
/// Messages received ahead of the proposer.
const RECEIVE_QUEUE: usize = 256;
/// Up to this many bytes of already-received commands go into one round of proposals.
const MERGE_BYTES: usize = 4 * 1024 * 1024;
/// Pause after a stream that ended without news (a leader that does not long-poll).
const IDLE_PAUSE: Duration = Duration::from_millis(50);
/// Retry pauses after a failed session.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Extra wait after `LEADER_BEHIND` (this replica is ahead of the leader's log).
const LEADER_BEHIND_PAUSE: Duration = Duration::from_secs(1);

/// Aborts a task when dropped (the session's stream reader ends with its session).
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts a worker for every running table and stops those of removed tables.
pub async fn supervise(follower: Arc<Follower>) {
    loop {
        let Some(host) = follower.host() else { return };
        let groups = host.table_groups();
        if let Ok(mut workers) = follower.workers.lock() {
            workers.retain(|id, task| {
                let running = groups.values().any(|group| group.id.get() == *id);
                if !running {
                    task.abort();
                }
                running && !task.is_finished()
            });
            for group in groups.values() {
                workers.entry(group.id.get()).or_insert_with(|| {
                    tokio::spawn(run(follower.clone(), group.clone())).abort_handle()
                });
            }
        }
        drop(host);
        tokio::time::sleep(SUPERVISE_EVERY).await;
    }
}

fn leads(host: &dyn FollowerHost, group: &TableGroup) -> bool {
    group.raft.server_metrics().borrow_watched().current_leader == Some(host.node_id().get())
}

async fn run(follower: Arc<Follower>, group: Arc<TableGroup>) {
    let lag = follower.lag(&group.name);
    metrics::counter!("armada_replication_snapshot_recoveries_total", "table" => group.name.clone())
        .increment(0);
    let mut metrics = group.raft.server_metrics();
    let mut backoff = MIN_BACKOFF;
    loop {
        let Some(host) = follower.host() else { return };
        if !leads(host.as_ref(), &group) {
            drop(host);
            // Wake up on any Raft change (a new leader), at least every second.
            let _ = tokio::time::timeout(Duration::from_secs(1), metrics.changed()).await;
            continue;
        }
        match session(&follower, host.as_ref(), &group, &lag).await {
            Ok(()) => backoff = MIN_BACKOFF,
            Err(error) => {
                tracing::debug!(table = group.name, %error, "replication session ended");
                lag.contact.failed(error);
                drop(host);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// One replication session: bootstrap if needed, else tail the log until the stream ends.
async fn session(
    follower: &Follower,
    host: &dyn FollowerHost,
    group: &Arc<TableGroup>,
    lag: &TableLag,
) -> Result<(), String> {
    let applied = applied_leader_index(&group.table);
    if applied == 0 {
        return bootstrap(follower, host, group, lag).await;
    }
    let mut request = tonic::Request::new(ReplicateRequest {
        table: Bytes::from(group.name.clone().into_bytes()),
        leader_index: applied + 1,
    });
    request.set_timeout(REPLICATE_TIMEOUT);
    let mut client = follower.leader_cluster.log_client();
    let opened = tokio::time::timeout(STREAM_IDLE_TIMEOUT, client.replicate(request));
    let mut stream = match opened
        .await
        .map_err(|_| "Log.Replicate: no answer".to_string())?
    {
        Ok(response) => response.into_inner(),
        Err(status) => {
            if status.code() == tonic::Code::Unavailable {
                follower.leader_cluster.rotate();
            }
            return Err(describe_failure("Log.Replicate", &status));
        }
    };
    // A reader task keeps receiving while a batch is being proposed, so that everything that
    // arrived meanwhile is merged into the next proposal: with a long poll each message holds
    // only the few entries applied since the last one, and one Raft round per message would
    // fall behind a busy leader.
    let (sender, mut received) = tokio::sync::mpsc::channel(RECEIVE_QUEUE);
    let reader = tokio::spawn(async move {
        loop {
            let next = match tokio::time::timeout(STREAM_IDLE_TIMEOUT, stream.message()).await {
                Ok(Ok(Some(message))) => Ok(message),
                Ok(Ok(None)) => return,
                Ok(Err(status)) => Err(describe_failure("Log.Replicate stream", &status)),
                Err(_) => Err("Log.Replicate stream went silent".to_string()),
            };
            let failed = next.is_err();
            if sender.send(next).await.is_err() || failed {
                return;
            }
        }
    });
    let _stop_reader = AbortOnDrop(reader.abort_handle());
    let mut news = false;
    let mut pending: Option<Result<ReplicateResponse, String>> = None;
    loop {
        let next = match pending.take() {
            Some(next) => next,
            None => match received.recv().await {
                Some(next) => next,
                None => break,
            },
        };
        let message = next?;
        follower.heard(Some(lag));
        let now_applied = applied_leader_index(&group.table);
        if now_applied == 0 {
            // Reset while streaming: the next session bootstraps.
            return Ok(());
        }
        if message.leader_index > 0 {
            lag.observe_leader(message.leader_index, now_applied);
        }
        match message.response {
            Some(replicate_response::Response::CommandsResponse(batch)) => {
                if !leads(host, group) {
                    return Ok(());
                }
                let mut commands = batch.commands;
                let mut bytes: usize = commands.iter().map(|command| command.encoded_len()).sum();
                while bytes < MERGE_BYTES {
                    match received.try_recv() {
                        Ok(Ok(ReplicateResponse {
                            response: Some(replicate_response::Response::CommandsResponse(more)),
                            leader_index,
                        })) => {
                            if leader_index > 0 {
                                lag.observe_leader(leader_index, now_applied);
                            }
                            bytes += more
                                .commands
                                .iter()
                                .map(|command| command.encoded_len())
                                .sum::<usize>();
                            commands.extend(more.commands);
                        }
                        Ok(other) => {
                            pending = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                propose_batch(host, group, commands).await?;
                lag.observe_applied(applied_leader_index(&group.table));
                news = true;
            }
            Some(replicate_response::Response::ErrorResponse(error)) => {
                return match ReplicateError::try_from(error.error) {
                    Ok(ReplicateError::UseSnapshot) => bootstrap(follower, host, group, lag).await,
                    Ok(ReplicateError::LeaderBehind) => {
                        tracing::warn!(
                            table = group.name,
                            applied,
                            "the leader's log is behind this follower; waiting"
                        );
                        tokio::time::sleep(LEADER_BEHIND_PAUSE).await;
                        Ok(())
                    }
                    Err(_) => Err(format!("unknown replication error {}", error.error)),
                };
            }
            None => {}
        }
    }
    if !news {
        tokio::time::sleep(IDLE_PAUSE).await;
    }
    Ok(())
}

/// Proposes the leader's commands as SEQUENCEs of about [`SEQUENCE_BYTES`].
async fn propose_batch(
    host: &dyn FollowerHost,
    group: &Arc<TableGroup>,
    commands: Vec<ReplicateCommand>,
) -> Result<(), String> {
    let mut sequence = Vec::new();
    let mut bytes = 0;
    let count = commands.len();
    for (at, replicated) in commands.into_iter().enumerate() {
        let mut command = replicated.command.unwrap_or(pb::Command {
            r#type: pb::command::CommandType::Dummy as i32,
            ..Default::default()
        });
        command.leader_index = Some(replicated.leader_index);
        bytes += command.encoded_len();
        sequence.push(command);
        if bytes >= SEQUENCE_BYTES || at + 1 == count {
            propose_sequence(host, group, std::mem::take(&mut sequence)).await?;
            bytes = 0;
        }
    }
    Ok(())
}

async fn propose_sequence(
    host: &dyn FollowerHost,
    group: &Arc<TableGroup>,
    sequence: Vec<pb::Command>,
) -> Result<(), String> {
    let command = pb::Command {
        table: Bytes::from(group.name.clone().into_bytes()),
        r#type: pb::command::CommandType::Sequence as i32,
        sequence,
        ..Default::default()
    };
    let deadline = tokio::time::Instant::now() + PROPOSE_TIMEOUT;
    let request = Request(Bytes::from(command.encode_to_vec()));
    match host.propose(group, request, deadline).await {
        Ok((_, Response::Table { .. })) => Ok(()),
        Ok((_, Response::Rejected(message))) => Err(format!("replicated batch refused: {message}")),
        Ok((_, other)) => Err(format!("unexpected response {other:?}")),
        Err(error) => Err(format!("proposing a replicated batch: {error}")),
    }
}

/// Replaces the table with a snapshot of the leader's (dump + final leader index).
async fn bootstrap(
    follower: &Follower,
    host: &dyn FollowerHost,
    group: &Arc<TableGroup>,
    lag: &TableLag,
) -> Result<(), String> {
    let _slot = follower
        .recoveries
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| "shutting down".to_string())?;
    if !leads(host, group) {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let mut request = tonic::Request::new(SnapshotRequest {
        table: Bytes::from(group.name.clone().into_bytes()),
    });
    request.set_timeout(SNAPSHOT_TIMEOUT);
    let mut client = follower.leader_cluster.snapshot_client();
    let opened = tokio::time::timeout(STREAM_IDLE_TIMEOUT, client.stream(request));
    let mut stream = match opened
        .await
        .map_err(|_| "Snapshot.Stream: no answer".to_string())?
    {
        Ok(response) => response.into_inner(),
        Err(status) => {
            if status.code() == tonic::Code::Unavailable {
                follower.leader_cluster.rotate();
            }
            return Err(describe_failure("Snapshot.Stream", &status));
        }
    };
    let spool = tempfile::NamedTempFile::new_in(host.temporary_dir())
        .map_err(|error| format!("cannot create a spool file: {error}"))?;
    let mut writer = std::io::BufWriter::with_capacity(
        1024 * 1024,
        spool
            .reopen()
            .map_err(|error| format!("cannot open the spool file: {error}"))?,
    );
    let mut bytes = 0u64;
    loop {
        let next = tokio::time::timeout(STREAM_IDLE_TIMEOUT, stream.message())
            .await
            .map_err(|_| "Snapshot.Stream went silent".to_string())?;
        match next {
            Ok(Some(chunk)) => {
                follower.heard(Some(lag));
                bytes += chunk.data.len() as u64;
                tokio::task::block_in_place(|| writer.write_all(&chunk.data))
                    .map_err(|error| format!("writing the spool file: {error}"))?;
            }
            Ok(None) => break,
            Err(status) => return Err(describe_failure("Snapshot.Stream", &status)),
        }
    }
    tokio::task::block_in_place(|| writer.flush())
        .map_err(|error| format!("writing the spool file: {error}"))?;
    drop(writer);
    // Counted once the snapshot is here, before it is installed: a reader that sees the new
    // contents also sees the recovery counted.
    lag.count_recovery();
    metrics::counter!("armada_replication_snapshot_recoveries_total", "table" => group.name.clone())
        .increment(1);
    let loaded = host
        .install_snapshot(
            group,
            spool.path(),
            tokio::time::Instant::now() + SNAPSHOT_TIMEOUT,
        )
        .await
        .map_err(|error| format!("installing the leader's snapshot: {error}"))?;
    let leader_index = loaded.leader_index.unwrap_or_default().get();
    lag.observe_leader(leader_index, applied_leader_index(&group.table));
    tracing::info!(
        table = group.name,
        records = loaded.records,
        bytes,
        leader_index,
        seconds = started.elapsed().as_secs_f64(),
        "bootstrapped the table from a snapshot of the leader cluster"
    );
    Ok(())
}
