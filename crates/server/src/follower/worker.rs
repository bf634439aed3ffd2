//! Replication workers: one per local table on every node, active only on the node that leads
//! the table's Raft group in this follower cluster.
//!
//! A session tails the leader's log from the applied leader index + 1 over one long-lived
//! `Log.Replicate` stream and proposes each received batch as SEQUENCEs of the leader's
//! commands (each carrying its leader index). The table applies every leader index exactly
//! once, so a session that ends half-way, a duplicate after a takeover, or a retried proposal
//! never applies anything twice; a proposal that would leave a gap is refused and the next
//! session restarts from the applied position. A table with no data yet, a Reset (leader
//! index 0) or `USE_SNAPSHOT` bootstraps (see [`super::bootstrap`]).
//!
//! The session is a shell: it opens the stream, reads, proposes and sleeps, and asks the
//! [`Puller`] (sans-IO, see [`super::puller`]) what to do with each message. A reader task
//! keeps receiving while a batch is being proposed, so that the puller can merge everything
//! that arrived meanwhile into the next proposal.

use std::sync::Arc;
use std::time::Duration;

use armada_proto::replication::v1::{ReplicateCommand, ReplicateRequest, ReplicateResponse};
use armada_table::pb;
use bytes::Bytes;
use openraft::async_runtime::WatchReceiver;
use prost::Message;
use tokio::sync::mpsc;

use super::bootstrap::bootstrap;
use super::error::ReplicationError;
use super::host::FollowerHost;
use super::lag::{TableLag, applied_leader_index};
use super::leader_cluster::STREAM_IDLE_TIMEOUT;
use super::puller::{Input, Opening, Pause, Puller, Replica, SEQUENCE_BYTES, Step, sequences};
use super::state::Follower;
use crate::groups::table_group::TableGroup;
use crate::groups::types::{Request, Response};

/// How often the supervisor matches workers to the running tables.
const SUPERVISE_EVERY: Duration = Duration::from_millis(200);
/// Deadline of one `Log.Replicate` stream (a long poll; the next session reopens it).
const REPLICATE_TIMEOUT: Duration = Duration::from_secs(60);
/// Deadline of one proposal of a replicated batch.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages received ahead of the proposer.
const RECEIVE_QUEUE: usize = 256;
/// Retry pauses after a failed session.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

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
        {
            let mut workers = crate::fail_stop::lock(&follower.workers, "the worker map");
            workers.retain(|id, task| {
                let running = groups.values().any(|group| group.id().get() == *id);
                if !running {
                    task.abort();
                }
                running && !task.is_finished()
            });
            for group in groups.values() {
                workers.entry(group.id().get()).or_insert_with(|| {
                    tokio::spawn(run(follower.clone(), group.clone())).abort_handle()
                });
            }
        }
        drop(host);
        tokio::time::sleep(SUPERVISE_EVERY).await;
    }
}

/// Replicates one table while this node leads its Raft group, session after session.
async fn run(follower: Arc<Follower>, group: Arc<TableGroup>) {
    let lag = follower.lag(group.name());
    metrics::counter!("armada_replication_snapshot_recoveries_total", "table" => group.name().to_string())
        .increment(0);
    let mut metrics = group.raft_changes();
    let mut backoff = MIN_BACKOFF;
    loop {
        let Some(host) = follower.host() else { return };
        if !host.leads_table(&group) {
            drop(host);
            // Wake up on any Raft change (a new leader), at least every second.
            let _ = tokio::time::timeout(Duration::from_secs(1), metrics.changed()).await;
            continue;
        }
        match session(&follower, host.as_ref(), &group, &lag).await {
            Ok(()) => backoff = MIN_BACKOFF,
            Err(error) => {
                tracing::debug!(table = group.name(), %error, "replication session ended");
                lag.contact.failed(error.to_string());
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
) -> Result<(), ReplicationError> {
    let (from, mut puller) = match Puller::open(applied_leader_index(group.table())) {
        Opening::Bootstrap => return bootstrap(follower, host, group, lag).await,
        Opening::Stream { from, puller } => (from, puller),
    };
    let mut request = tonic::Request::new(ReplicateRequest {
        table: Bytes::from(group.name().as_bytes().to_vec()),
        leader_index: from.get(),
    });
    request.set_timeout(REPLICATE_TIMEOUT);
    let mut client = follower.leader_cluster.log_client();
    let stream = follower
        .leader_cluster
        .open_stream("Log.Replicate", client.replicate(request))
        .await?;
    let (mut received, _stop_reader) = read_ahead(stream);
    let replica = || Replica {
        applied: applied_leader_index(group.table()),
        leads: host.leads_table(group),
    };
    loop {
        let input = match puller.next_step() {
            Step::Receive => received.recv().await.unwrap_or(Input::End),
            Step::ReceiveQueued => received.try_recv().unwrap_or(Input::Drained),
            Step::ObserveLeader(index) => {
                lag.observe_leader(index, applied_leader_index(group.table()));
                continue;
            }
            Step::Propose(commands) => {
                propose_batch(host, group, commands).await?;
                lag.observe_applied(applied_leader_index(group.table()));
                puller.on_proposed(replica());
                continue;
            }
            Step::Bootstrap => return bootstrap(follower, host, group, lag).await,
            Step::Wait(pause) => {
                wait(group, from, pause).await;
                return Ok(());
            }
            Step::Done => return Ok(()),
            Step::Fail(error) => return Err(error),
        };
        if matches!(input, Input::Message(_)) {
            follower.heard(Some(lag));
        }
        puller.on_input(input, replica());
    }
}

/// Pauses before the next session.
async fn wait(group: &TableGroup, from: armada_storage::LeaderIndex, pause: Pause) {
    if pause == Pause::LeaderBehind {
        tracing::warn!(
            table = group.name(),
            applied = from.get() - 1,
            "the leader's log is behind this follower; waiting"
        );
    }
    tokio::time::sleep(pause.duration()).await;
}

/// Receives the stream's messages in a task of their own, up to [`RECEIVE_QUEUE`] ahead of
/// the session; the task ends with the stream, after a failure, or when the guard is dropped.
fn read_ahead(
    mut stream: tonic::Streaming<ReplicateResponse>,
) -> (mpsc::Receiver<Input>, AbortOnDrop) {
    let (sender, received) = mpsc::channel(RECEIVE_QUEUE);
    let reader = tokio::spawn(async move {
        loop {
            let next = match tokio::time::timeout(STREAM_IDLE_TIMEOUT, stream.message()).await {
                Ok(Ok(Some(message))) => Input::Message(message),
                Ok(Ok(None)) => return,
                Ok(Err(status)) => {
                    Input::Failed(ReplicationError::call("Log.Replicate stream", &status))
                }
                Err(_) => Input::Failed(ReplicationError::Silent("Log.Replicate stream")),
            };
            let failed = matches!(next, Input::Failed(_));
            if sender.send(next).await.is_err() || failed {
                return;
            }
        }
    });
    (received, AbortOnDrop(reader.abort_handle()))
}

/// Proposes the leader's commands as SEQUENCEs of about [`SEQUENCE_BYTES`].
async fn propose_batch(
    host: &dyn FollowerHost,
    group: &Arc<TableGroup>,
    commands: Vec<ReplicateCommand>,
) -> Result<(), ReplicationError> {
    for sequence in sequences(commands, SEQUENCE_BYTES) {
        propose_sequence(host, group, sequence).await?;
    }
    Ok(())
}

async fn propose_sequence(
    host: &dyn FollowerHost,
    group: &Arc<TableGroup>,
    sequence: Vec<pb::Command>,
) -> Result<(), ReplicationError> {
    let command = pb::Command {
        table: Bytes::from(group.name().as_bytes().to_vec()),
        r#type: pb::command::CommandType::Sequence as i32,
        sequence,
        ..Default::default()
    };
    let deadline = tokio::time::Instant::now() + PROPOSE_TIMEOUT;
    let request = Request(Bytes::from(command.encode_to_vec()));
    match host.propose(group, request, deadline).await {
        Ok((_, Response::Table { .. })) => Ok(()),
        Ok((_, Response::Rejected(message))) => Err(ReplicationError::Refused(message)),
        Ok((_, other)) => Err(ReplicationError::UnexpectedResponse(format!("{other:?}"))),
        Err(error) => Err(ReplicationError::Propose(error)),
    }
}
