//! `regatta.v1.KV`: Range, IterateRange, Put, DeleteRange, Txn.
//!
//! Writes become one `mvcc.v1.Command` proposed to the table's Raft group; the answer is the
//! typed outcome of applying it, converted to the response by `api/convert.rs`. Reads open a point-in-time view of the local replica; with
//! `linearizable=true` a ReadIndex round confirms leadership first and waits until the
//! replica has applied up to it. Read-only transactions are linearizable reads, never logged.

use std::sync::Arc;

use armada_proto::regatta::v1::kv_server::Kv;
use armada_proto::regatta::v1::{
    DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse,
    TxnRequest, TxnResponse,
};
use armada_storage::Revision;
use armada_table::{CommandOutcome, RangeEnd, RangeQuery, ReadView, TableError, Txn, pb};
use bytes::Bytes;
use prost::Message;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{convert, deadline, header, metered, validate};
use crate::error::ApiError;
use crate::follower::Follower;
use crate::groups::types::{self, Response as RaftResponse};
use crate::node::{GroupHandle, Node, TableGroup};

const SERVICE: &str = "regatta.v1.KV";

pub struct KvService {
    node: Arc<Node>,
    /// On a follower cluster: the replication machinery (forwarding, lag, Reset).
    follower: Option<Arc<Follower>>,
}

impl KvService {
    pub fn new(node: Arc<Node>, follower: Option<Arc<Follower>>) -> Self {
        KvService { node, follower }
    }

    /// A view of the table that reflects every write acknowledged before the call when
    /// `linearizable` is set.
    async fn read_view(
        &self,
        group: &Arc<TableGroup>,
        linearizable: bool,
        deadline: tokio::time::Instant,
    ) -> Result<ReadView, ApiError> {
        if linearizable {
            self.node.linearize(group, deadline).await?;
        }
        Ok(group.table().read_view())
    }

    async fn propose(
        &self,
        group: &Arc<TableGroup>,
        command: pb::Command,
        deadline: tokio::time::Instant,
    ) -> Result<(Revision, CommandOutcome), ApiError> {
        let request = types::Request(Bytes::from(command.encode_to_vec()));
        let (_, response) = self
            .node
            .write(&GroupHandle::Table(group.clone()), request, deadline)
            .await?;
        match response {
            RaftResponse::Table { revision, outcome } => Ok((revision, outcome)),
            RaftResponse::Rejected(message) => Err(ApiError::InvalidArgument(message)),
            other => Err(ApiError::Internal(format!(
                "unexpected apply response {other:?}"
            ))),
        }
    }

    async fn range_inner(&self, request: Request<RangeRequest>) -> Result<RangeResponse, ApiError> {
        let deadline = deadline(&request);
        let request = request.into_inner();
        let query = validate::range_request(&request)?;
        let group = self.node.table(&validate::table(&request.table)?).await?;
        let view = self
            .read_view(&group, request.linearizable, deadline)
            .await?;
        let revision = view.position().revision;
        let outcome = if query.range_end == RangeEnd::Single {
            view.range(&query)
        } else {
            tokio::task::spawn_blocking(move || view.range(&query))
                .await
                .map_err(|error| ApiError::Internal(error.to_string()))?
        }
        .map_err(ApiError::from_table)?;
        Ok(convert::range_response(
            header(&self.node, &group, revision),
            outcome,
        ))
    }

    async fn put_inner(&self, request: Request<PutRequest>) -> Result<PutResponse, ApiError> {
        let deadline = deadline(&request);
        let request = request.into_inner();
        if let Some(follower) = self.follower.as_ref() {
            return follower.forward(request, deadline).await;
        }
        let table = validate::table(&request.table)?;
        validate::key("key", &request.key)?;
        validate::value("value", &request.value)?;
        let group = self.node.table(&table).await?;
        let command = pb::Command {
            table: request.table,
            r#type: pb::command::CommandType::Put as i32,
            kv: Some(pb::KeyValue {
                key: request.key,
                value: request.value,
                ..Default::default()
            }),
            prev_kvs: request.prev_kv,
            ..Default::default()
        };
        let (revision, outcome) = self.propose(&group, command, deadline).await?;
        convert::put_response(header(&self.node, &group, revision), outcome)
    }

    async fn delete_range_inner(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<DeleteRangeResponse, ApiError> {
        let deadline = deadline(&request);
        let request = request.into_inner();
        if let Some(follower) = self.follower.as_ref() {
            return follower.forward(request, deadline).await;
        }
        let table = validate::table(&request.table)?;
        validate::key("key", &request.key)?;
        validate::range_end("range_end", &request.range_end)?;
        let group = self.node.table(&table).await?;
        let command = pb::Command {
            table: request.table,
            r#type: pb::command::CommandType::Delete as i32,
            kv: Some(pb::KeyValue {
                key: request.key,
                ..Default::default()
            }),
            // Empty: the single key (RangeEnd::from_wire reads the field the same way).
            range_end: (!request.range_end.is_empty()).then_some(request.range_end),
            prev_kvs: request.prev_kv,
            count: true,
            ..Default::default()
        };
        let (revision, outcome) = self.propose(&group, command, deadline).await?;
        convert::delete_range_response(header(&self.node, &group, revision), outcome)
    }

    async fn txn_inner(&self, request: Request<TxnRequest>) -> Result<TxnResponse, ApiError> {
        let deadline = deadline(&request);
        let request = request.into_inner();
        // A follower serves read-only transactions itself and forwards the others.
        if let Some(follower) = self.follower.as_ref()
            && !request
                .success
                .iter()
                .chain(&request.failure)
                .all(|op| matches!(op.request, Some(pb::request_op::Request::RequestRange(_))))
        {
            return follower.forward(request, deadline).await;
        }
        validate::txn(&request)?;
        let group = self.node.table(&validate::table(&request.table)?).await?;
        let txn = pb::Txn {
            compare: request.compare,
            success: request.success,
            failure: request.failure,
        };
        if validate::txn_is_read_only_ops(&txn) {
            let txn = Txn::from_wire(txn).map_err(|rejection| {
                ApiError::from_table(TableError::InvalidArgument(rejection.0))
            })?;
            let view = self.read_view(&group, true, deadline).await?;
            let revision = view.position().revision;
            let outcome = tokio::task::spawn_blocking(move || view.txn_read_only(&txn))
                .await
                .map_err(|error| ApiError::Internal(error.to_string()))?
                .map_err(ApiError::from_table)?;
            return Ok(convert::txn_response(
                header(&self.node, &group, revision),
                outcome,
            ));
        }
        let command = pb::Command {
            table: request.table,
            r#type: pb::command::CommandType::Txn as i32,
            txn: Some(txn),
            ..Default::default()
        };
        let (revision, outcome) = self.propose(&group, command, deadline).await?;
        Ok(convert::txn_response(
            header(&self.node, &group, revision),
            convert::txn_outcome(outcome)?,
        ))
    }

    async fn iterate_inner(
        &self,
        request: Request<RangeRequest>,
    ) -> Result<ReceiverStream<Result<RangeResponse, Status>>, ApiError> {
        let deadline = deadline(&request);
        let request = request.into_inner();
        let query = validate::range_request(&request)?;
        let group = self.node.table(&validate::table(&request.table)?).await?;
        let view = self
            .read_view(&group, request.linearizable, deadline)
            .await?;
        let header = header(&self.node, &group, view.position().revision);
        let (sender, receiver) = tokio::sync::mpsc::channel(2);
        tokio::task::spawn_blocking(move || stream_chunks(view, query, header, sender));
        Ok(ReceiverStream::new(receiver))
    }
}

/// Sends one point-in-time view of the range as messages below the response cap: `more` on
/// all but the last (and on the last when `limit` stopped the stream with keys left).
fn stream_chunks(
    view: ReadView,
    mut query: RangeQuery,
    header: armada_proto::regatta::v1::ResponseHeader,
    sender: tokio::sync::mpsc::Sender<Result<RangeResponse, Status>>,
) {
    let limit = query.limit;
    let mut sent: u64 = 0;
    let mut after: Option<Bytes> = None;
    loop {
        if limit > 0 {
            query.limit = limit - sent;
        }
        let outcome = match view.range_after(&query, after.as_deref()) {
            Ok(outcome) => outcome,
            Err(error) => {
                let _ = sender.blocking_send(Err(ApiError::from_table(error).into()));
                return;
            }
        };
        let returned = outcome.kvs.len() as u64;
        sent += returned;
        let limit_reached = limit > 0 && sent >= limit;
        let last_key = outcome.kvs.last().map(|kv| kv.key.clone());
        let continues = outcome.more && !limit_reached && last_key.is_some() && !query.count_only;
        let message = convert::range_response(header, outcome);
        if sender.blocking_send(Ok(message)).is_err() {
            return; // the client went away
        }
        if !continues {
            return;
        }
        after = last_key;
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(
        &self,
        request: Request<RangeRequest>,
    ) -> Result<Response<RangeResponse>, Status> {
        metered(SERVICE, "Range", self.range_inner(request))
            .await
            .map(Response::new)
    }

    type IterateRangeStream = ReceiverStream<Result<RangeResponse, Status>>;

    async fn iterate_range(
        &self,
        request: Request<RangeRequest>,
    ) -> Result<Response<Self::IterateRangeStream>, Status> {
        metered(SERVICE, "IterateRange", self.iterate_inner(request))
            .await
            .map(Response::new)
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        metered(SERVICE, "Put", self.put_inner(request))
            .await
            .map(Response::new)
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        metered(SERVICE, "DeleteRange", self.delete_range_inner(request))
            .await
            .map(Response::new)
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        metered(SERVICE, "Txn", self.txn_inner(request))
            .await
            .map(Response::new)
    }
}
