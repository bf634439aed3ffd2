//! Writes at a follower cluster: forwarded to the leader cluster's KV service (on its
//! replication address), answered with the leader's response once this node has applied the
//! write's revision (read-your-writes on the node the client talks to), bounded by the
//! client's deadline. The applied position is checked when the wait starts, so a write that
//! was already applied returns at once; a write with revision 0 (a Txn whose branch wrote
//! nothing) returns at once too.

use std::time::Duration;

use armada_proto::regatta::v1::{
    DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, ResponseHeader, TxnRequest,
    TxnResponse,
};

use armada_storage::Revision;

use super::lag::applied_leader_index;
use super::leader_cluster::LeaderClusterChannel;
use super::state::Follower;
use crate::error::ApiError;
use armada_proto::regatta::v1::kv_client::KvClient;

/// Pause between looks for a table that the leader has but this node does not serve yet.
const TABLE_APPEAR_PAUSE: Duration = Duration::from_millis(50);

fn leader_cluster_error(status: tonic::Status) -> ApiError {
    ApiError::LeaderCluster {
        code: status.code(),
        message: format!(
            "rpc error: code = {:?} desc = {}",
            status.code(),
            status.message()
        ),
    }
}

fn with_deadline<T>(message: T, deadline: tokio::time::Instant) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    request.set_timeout(left.max(Duration::from_millis(1)));
    request
}

/// A write that a follower forwards to the leader cluster's KV service: Put, DeleteRange, or
/// a Txn that writes.
pub trait ForwardedWrite: Sized + Send + 'static {
    type Response: Send;

    /// The table written (its replica here is waited for).
    fn table(&self) -> &[u8];

    /// The leader cluster's call.
    fn send(
        self,
        kv: KvClient<LeaderClusterChannel>,
        deadline: tokio::time::Instant,
    ) -> impl Future<Output = Result<tonic::Response<Self::Response>, tonic::Status>> + Send;

    /// The revision of the write (0: it wrote nothing, as a Txn whose branch had no writes).
    fn revision(response: &Self::Response) -> Revision;
}

/// The revision a response header carries.
fn header_revision(header: Option<&ResponseHeader>) -> Revision {
    Revision(header.map_or(0, |header| header.revision))
}

impl ForwardedWrite for PutRequest {
    type Response = PutResponse;

    fn table(&self) -> &[u8] {
        &self.table
    }

    async fn send(
        self,
        mut kv: KvClient<LeaderClusterChannel>,
        deadline: tokio::time::Instant,
    ) -> Result<tonic::Response<PutResponse>, tonic::Status> {
        kv.put(with_deadline(self, deadline)).await
    }

    fn revision(response: &PutResponse) -> Revision {
        header_revision(response.header.as_ref())
    }
}

impl ForwardedWrite for DeleteRangeRequest {
    type Response = DeleteRangeResponse;

    fn table(&self) -> &[u8] {
        &self.table
    }

    async fn send(
        self,
        mut kv: KvClient<LeaderClusterChannel>,
        deadline: tokio::time::Instant,
    ) -> Result<tonic::Response<DeleteRangeResponse>, tonic::Status> {
        kv.delete_range(with_deadline(self, deadline)).await
    }

    fn revision(response: &DeleteRangeResponse) -> Revision {
        header_revision(response.header.as_ref())
    }
}

impl ForwardedWrite for TxnRequest {
    type Response = TxnResponse;

    fn table(&self) -> &[u8] {
        &self.table
    }

    async fn send(
        self,
        mut kv: KvClient<LeaderClusterChannel>,
        deadline: tokio::time::Instant,
    ) -> Result<tonic::Response<TxnResponse>, tonic::Status> {
        kv.txn(with_deadline(self, deadline)).await
    }

    fn revision(response: &TxnResponse) -> Revision {
        header_revision(response.header.as_ref())
    }
}

impl Follower {
    /// Forwards a write to the leader cluster and answers once this node's replica has
    /// applied it (read-your-writes), all within `deadline`; the leader cluster's errors keep
    /// their code.
    pub async fn forward<W: ForwardedWrite>(
        &self,
        request: W,
        deadline: tokio::time::Instant,
    ) -> Result<W::Response, ApiError> {
        let table = String::from_utf8_lossy(request.table()).into_owned();
        let kv = self.leader_cluster.kv_client();
        let response = tokio::time::timeout_at(deadline, request.send(kv, deadline))
            .await
            .map_err(|_| ApiError::DeadlineExceeded)?
            .map_err(leader_cluster_error)?
            .into_inner();
        self.wait_applied(&table, W::revision(&response), deadline)
            .await?;
        Ok(response)
    }

    /// Waits until this node's replica of `table` has applied the leader's `revision`.
    async fn wait_applied(
        &self,
        name: &str,
        revision: Revision,
        deadline: tokio::time::Instant,
    ) -> Result<(), ApiError> {
        if revision.get() == 0 {
            return Ok(());
        }
        let host = self
            .host()
            .ok_or_else(|| ApiError::Unavailable("the node is shutting down".into()))?;
        // The table may not be served here yet (created on the leader a moment ago).
        let group = loop {
            match host.table(name).await {
                Ok(group) => break group,
                Err(ApiError::TableNotFound(_) | ApiError::Unavailable(_))
                    if tokio::time::Instant::now() + TABLE_APPEAR_PAUSE < deadline =>
                {
                    tokio::time::sleep(TABLE_APPEAR_PAUSE).await;
                }
                Err(_) => return Err(ApiError::DeadlineExceeded),
            }
        };
        let mut applied = group.state_machine().subscribe();
        // On a follower cluster a write's revision is the leader cluster's index of it.
        let reached = |position: &armada_table::AppliedPosition| {
            position
                .leader_index
                .is_some_and(|index| Revision::from_leader_index(index) >= revision)
        };
        tokio::time::timeout_at(deadline, applied.wait_for(reached))
            .await
            .map_err(|_| ApiError::DeadlineExceeded)?
            .map_err(|_| ApiError::Unavailable("the table's replica stopped".into()))?;
        debug_assert!(Revision::from_leader_index(applied_leader_index(group.table())) >= revision);
        Ok(())
    }
}

impl Follower {
    /// Maintenance.Reset of one table: its replica restarts from a fresh snapshot of the
    /// leader's. The reset is a DUMMY with leader index 0 through the table's Raft group (as
    /// in Regatta); the replication worker sees a replica without data and bootstraps it,
    /// replacing the contents atomically. Waits until the table holds data again.
    pub async fn reset_table(
        &self,
        name: &str,
        deadline: tokio::time::Instant,
    ) -> Result<(), ApiError> {
        use armada_table::pb;
        use prost::Message;
        let host = self
            .host()
            .ok_or_else(|| ApiError::Unavailable("the node is shutting down".into()))?;
        let group = host.table(name).await?;
        let command = pb::Command {
            table: bytes::Bytes::from(name.as_bytes().to_vec()),
            r#type: pb::command::CommandType::Dummy as i32,
            leader_index: Some(0),
            ..Default::default()
        };
        let request = crate::groups::types::Request(bytes::Bytes::from(command.encode_to_vec()));
        let (log_index, _) = host.propose(&group, request, deadline).await?;
        self.lag(name).reset();
        tracing::info!(
            table = name,
            "reset: the table re-bootstraps from the leader cluster"
        );
        let mut applied = group.state_machine().subscribe();
        let rebuilt = |position: &armada_table::AppliedPosition| {
            position.log_index > log_index
                && position.leader_index.is_some_and(|index| index.get() > 0)
        };
        tokio::time::timeout_at(deadline, applied.wait_for(rebuilt))
            .await
            .map_err(|_| {
                ApiError::Unavailable(format!(
                    "table `{name}` was reset; its re-bootstrap had not finished before the deadline"
                ))
            })?
            .map_err(|_| ApiError::Unavailable("the table's replica stopped".into()))?;
        Ok(())
    }
}
