//! Writes forwarded to a group's Raft leader inside the cluster, batched.
//!
//! A write arriving at a node that is not the group's Raft leader is forwarded to the Raft leader.
//! Sent one by one, every forwarded write costs a QUIC stream, a frame each way, a postcard
//! decode and a separate proposal on the Raft leader; under load, forwarding was the largest cost
//! of a 3-node cluster. The [`Forwarder`] keeps one queue per (raft_leader, group): a sender task
//! takes whatever writes are waiting (up to [`MAX_BATCH`] writes or [`MAX_BATCH_BYTES`]) and
//! sends them as one `WriteBatch`, which the Raft leader proposes with one `client_write_many`. At
//! most [`MAX_IN_FLIGHT`] batches per queue are outstanding, so under load writes queue up and
//! batches grow; an idle queue sends a lone write at once (as a plain `Write`).
//!
//! Only writes whose answer is small are batched (PUT and DELETE without previous values,
//! DUMMY): a batch's answers travel in one frame, and a txn or a `prev_kv` answer can
//! be megabytes. Others are forwarded alone, as before.
//!
//! Each caller keeps its own deadline. A batch is sent with the latest deadline of its
//! writes; a caller whose deadline passes first gets `Timeout` (the outcome of its write is
//! unknown, exactly as for a lone forwarded write that timed out).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use armada_storage::{LogIndex, NodeId, TableId};
use armada_table::pb;
use prost::Message;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use super::rpc::{self, PeerError, PeerRequest, PeerResponse, PeerResult};
use crate::groups::types::{Request, Response};
use crate::transport::{Transport, TransportError};

/// Most writes in one batch.
pub const MAX_BATCH: usize = 128;
/// Most request bytes in one batch (a larger lone write is still sent, alone).
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// Most batches outstanding per (raft_leader, group).
pub const MAX_IN_FLIGHT: usize = 4;
/// Most writes waiting in one (raft_leader, group) queue: eight full batches behind the ones in
/// flight. A write that finds the queue full waits for room until its own deadline, then
/// fails with `Timeout` like any forwarded write that took too long (nothing was sent).
pub const QUEUE_WRITES: usize = 8 * MAX_BATCH;
/// A queue with no write for this long stops its sender task.
const IDLE: Duration = Duration::from_secs(30);

/// The outcome of one forwarded write: the transport's verdict, then the Raft leader's.
pub type ForwardResult = Result<Result<(LogIndex, Response), PeerError>, TransportError>;

struct Pending {
    request: Request,
    deadline: Instant,
    reply: oneshot::Sender<ForwardResult>,
}

type Queues = Arc<Mutex<HashMap<(NodeId, TableId), mpsc::Sender<Pending>>>>;

/// Per-node batching of forwarded writes.
pub struct Forwarder {
    transport: Arc<dyn Transport>,
    queues: Queues,
}

impl Forwarder {
    pub fn new(transport: Arc<dyn Transport>) -> Self {
        Forwarder {
            transport,
            queues: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Forwards `request` for `group` to `raft_leader`, answering by `deadline`.
    pub async fn forward(
        &self,
        raft_leader: NodeId,
        group: TableId,
        request: Request,
        deadline: Instant,
    ) -> ForwardResult {
        if !batchable(&request) {
            return send_alone(&*self.transport, raft_leader, group, request, deadline).await;
        }
        let (reply, answer) = oneshot::channel();
        let mut pending = Pending {
            request,
            deadline,
            reply,
        };
        loop {
            let queue = self.queue(raft_leader, group);
            match enqueue(&queue, pending, deadline).await {
                Enqueued::Queued => break,
                // The sender task stopped (idle) after we took its queue: replace it.
                Enqueued::Closed(returned) => {
                    pending = returned;
                    self.remove_if_closed(raft_leader, group);
                }
                Enqueued::Full => {
                    return Err(TransportError::Timeout { peer: raft_leader });
                }
            }
        }
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(TransportError::Interrupted {
                peer: raft_leader,
                reason: "the forwarding task stopped".into(),
            }),
            Err(_) => Err(TransportError::Timeout { peer: raft_leader }),
        }
    }

    fn queue(&self, raft_leader: NodeId, group: TableId) -> mpsc::Sender<Pending> {
        let mut queues = self.queues.lock().expect("forwarder lock poisoned");
        if let Some(queue) = queues.get(&(raft_leader, group))
            && !queue.is_closed()
        {
            return queue.clone();
        }
        let (sender, receiver) = mpsc::channel(QUEUE_WRITES);
        queues.insert((raft_leader, group), sender.clone());
        tokio::spawn(run_queue(
            self.transport.clone(),
            raft_leader,
            group,
            receiver,
        ));
        sender
    }

    fn remove_if_closed(&self, raft_leader: NodeId, group: TableId) {
        let mut queues = self.queues.lock().expect("forwarder lock poisoned");
        if queues
            .get(&(raft_leader, group))
            .is_some_and(|queue| queue.is_closed())
        {
            queues.remove(&(raft_leader, group));
        }
    }
}

enum Enqueued {
    Queued,
    /// The queue's sender task has stopped; the write comes back.
    Closed(Pending),
    /// The queue stayed full until the write's deadline.
    Full,
}

/// Puts `pending` on `queue`, waiting for room until `deadline`.
async fn enqueue(queue: &mpsc::Sender<Pending>, pending: Pending, deadline: Instant) -> Enqueued {
    let permit = match tokio::time::timeout_at(deadline, queue.reserve()).await {
        Ok(Ok(permit)) => permit,
        Ok(Err(_)) => return Enqueued::Closed(pending),
        Err(_) => return Enqueued::Full,
    };
    permit.send(pending);
    Enqueued::Queued
}

/// Whether a write's answer is small enough to share a frame with others.
fn batchable(request: &Request) -> bool {
    use pb::command::CommandType;
    let Ok(command) = pb::Command::decode(request.0.clone()) else {
        return false;
    };
    match CommandType::try_from(command.r#type) {
        // A delete's answer without previous values is a count, even for a range.
        Ok(CommandType::Put | CommandType::Delete) => !command.prev_kvs,
        Ok(CommandType::Dummy) => true,
        _ => false,
    }
}

/// One queue's sender: batches what is waiting, at most [`MAX_IN_FLIGHT`] batches at a time.
async fn run_queue(
    transport: Arc<dyn Transport>,
    raft_leader: NodeId,
    group: TableId,
    mut receiver: mpsc::Receiver<Pending>,
) {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        let first = match tokio::time::timeout(IDLE, receiver.recv()).await {
            Ok(Some(first)) => first,
            // Idle or every sender gone: stop; writes racing with this find the queue closed
            // and start a new one.
            Ok(None) | Err(_) => {
                receiver.close();
                while let Ok(pending) = receiver.try_recv() {
                    let _ = pending.reply.send(Err(TransportError::Interrupted {
                        peer: raft_leader,
                        reason: "the forwarding queue stopped".into(),
                    }));
                }
                return;
            }
        };
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let mut bytes = first.request.0.len();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            match receiver.try_recv() {
                Ok(pending) => {
                    bytes += pending.request.0.len();
                    batch.push(pending);
                }
                Err(_) => break,
            }
        }
        let transport = transport.clone();
        tokio::spawn(async move {
            send_batch(&*transport, raft_leader, group, batch).await;
            drop(permit);
        });
    }
}

async fn send_batch(
    transport: &dyn Transport,
    raft_leader: NodeId,
    group: TableId,
    batch: Vec<Pending>,
) {
    let now = Instant::now();
    // Writes whose caller already gave up are not sent.
    let batch: Vec<Pending> = batch
        .into_iter()
        .filter(|pending| pending.deadline > now && !pending.reply.is_closed())
        .collect();
    match batch.len() {
        0 => {}
        1 => {
            let pending = batch.into_iter().next().expect("one write");
            let result = send_alone(
                transport,
                raft_leader,
                group,
                pending.request,
                pending.deadline,
            )
            .await;
            let _ = pending.reply.send(result);
        }
        count => {
            let deadline = batch
                .iter()
                .map(|pending| pending.deadline)
                .max()
                .expect("a non-empty batch");
            let (requests, replies): (Vec<Request>, Vec<oneshot::Sender<ForwardResult>>) = batch
                .into_iter()
                .map(|pending| (pending.request, pending.reply))
                .unzip();
            metrics::histogram!("armada_forward_batch_writes").record(count as f64);
            let message = PeerRequest::WriteBatch { group, requests };
            match call(transport, raft_leader, &message, deadline).await {
                Ok(Ok(PeerResponse::WriteBatch(results))) if results.len() == count => {
                    for (reply, result) in replies.into_iter().zip(results) {
                        let _ = reply.send(Ok(result));
                    }
                }
                Ok(Ok(other)) => {
                    let error = PeerError::Failed(format!(
                        "unexpected answer to a batch of {count} forwarded writes: {other:?}"
                    ));
                    for reply in replies {
                        let _ = reply.send(Ok(Err(error.clone())));
                    }
                }
                Ok(Err(error)) => {
                    for reply in replies {
                        let _ = reply.send(Ok(Err(error.clone())));
                    }
                }
                Err(error) => {
                    for reply in replies {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
            }
        }
    }
}

async fn send_alone(
    transport: &dyn Transport,
    raft_leader: NodeId,
    group: TableId,
    request: Request,
    deadline: Instant,
) -> ForwardResult {
    let message = PeerRequest::Write { group, request };
    match call(transport, raft_leader, &message, deadline).await? {
        Ok(PeerResponse::Write {
            log_index,
            response,
        }) => Ok(Ok((log_index, response))),
        Ok(other) => Ok(Err(PeerError::Failed(format!(
            "unexpected answer to a forwarded write: {other:?}"
        )))),
        Err(error) => Ok(Err(error)),
    }
}

async fn call(
    transport: &dyn Transport,
    peer: NodeId,
    request: &PeerRequest,
    deadline: Instant,
) -> Result<PeerResult, TransportError> {
    let timeout = deadline.saturating_duration_since(Instant::now());
    let answer = transport.call(peer, rpc::encode(request), timeout).await?;
    rpc::decode::<PeerResult>(&answer).map_err(TransportError::Remote)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(command: pb::Command) -> Request {
        Request(bytes::Bytes::from(command.encode_to_vec()))
    }

    fn pending(deadline: Instant) -> Pending {
        Pending {
            request: request(pb::Command::default()),
            deadline,
            reply: oneshot::channel().0,
        }
    }

    #[tokio::test]
    async fn a_full_queue_holds_a_write_until_its_deadline_then_refuses_it() {
        let (queue, mut receiver) = mpsc::channel(QUEUE_WRITES);
        let deadline = Instant::now() + Duration::from_millis(50);
        for _ in 0..QUEUE_WRITES {
            assert!(matches!(
                enqueue(&queue, pending(deadline), deadline).await,
                Enqueued::Queued
            ));
        }
        assert!(matches!(
            enqueue(&queue, pending(deadline), deadline).await,
            Enqueued::Full
        ));
        assert!(
            Instant::now() >= deadline,
            "waited for room until the deadline"
        );
        // Room again once the sender task takes a write.
        assert!(receiver.recv().await.is_some());
        let later = Instant::now() + Duration::from_secs(5);
        assert!(matches!(
            enqueue(&queue, pending(later), later).await,
            Enqueued::Queued
        ));
        drop(receiver);
        assert!(matches!(
            enqueue(&queue, pending(later), later).await,
            Enqueued::Closed(_)
        ));
    }

    #[test]
    fn only_writes_with_small_answers_are_batched() {
        use pb::command::CommandType;
        let put = |prev_kvs| pb::Command {
            r#type: CommandType::Put as i32,
            kv: Some(pb::KeyValue {
                key: bytes::Bytes::from_static(b"k"),
                value: bytes::Bytes::from_static(b"v"),
                ..Default::default()
            }),
            prev_kvs,
            ..Default::default()
        };
        assert!(batchable(&request(put(false))));
        assert!(!batchable(&request(put(true))));
        let delete_range = pb::Command {
            r#type: CommandType::Delete as i32,
            range_end: Some(bytes::Bytes::from_static(b"z")),
            ..put(false)
        };
        assert!(batchable(&request(delete_range.clone())));
        assert!(!batchable(&request(pb::Command {
            prev_kvs: true,
            ..delete_range
        })));
        let txn = pb::Command {
            r#type: CommandType::Txn as i32,
            ..Default::default()
        };
        assert!(!batchable(&request(txn)));
        assert!(!batchable(&Request(bytes::Bytes::from_static(b"\xff\xff"))));
    }
}
