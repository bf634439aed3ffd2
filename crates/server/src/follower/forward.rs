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

use super::lag::applied_leader_index;
use super::leader_cluster::LeaderClusterChannel;
use super::state::Follower;
use crate::error::ApiError;
use armada_proto::regatta::v1::kv_client::KvClient;

/// Pause between looks for a table that the leader has but this node does not serve yet.
const TABLE_APPEAR_PAUSE: Duration = Duration::from_millis(50);

fn leader_error(status: tonic::Status) -> ApiError {
    ApiError::Leader {
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

impl Follower {
    pub async fn forward_put(
        &self,
        request: PutRequest,
        deadline: tokio::time::Instant,
    ) -> Result<PutResponse, ApiError> {
        let table = request.table.clone();
        let response = self
            .call_leader(deadline, |mut kv| async move {
                kv.put(with_deadline(request, deadline)).await
            })
            .await?;
        self.wait_applied(&table, response.header.as_ref(), deadline)
            .await?;
        Ok(response)
    }

    pub async fn forward_delete_range(
        &self,
        request: DeleteRangeRequest,
        deadline: tokio::time::Instant,
    ) -> Result<DeleteRangeResponse, ApiError> {
        let table = request.table.clone();
        let response = self
            .call_leader(deadline, |mut kv| async move {
                kv.delete_range(with_deadline(request, deadline)).await
            })
            .await?;
        self.wait_applied(&table, response.header.as_ref(), deadline)
            .await?;
        Ok(response)
    }

    pub async fn forward_txn(
        &self,
        request: TxnRequest,
        deadline: tokio::time::Instant,
    ) -> Result<TxnResponse, ApiError> {
        let table = request.table.clone();
        let response = self
            .call_leader(deadline, |mut kv| async move {
                kv.txn(with_deadline(request, deadline)).await
            })
            .await?;
        self.wait_applied(&table, response.header.as_ref(), deadline)
            .await?;
        Ok(response)
    }

    /// One call to the leader's KV service, bounded by `deadline`; the leader's errors keep
    /// their code.
    async fn call_leader<T, F, Fut>(
        &self,
        deadline: tokio::time::Instant,
        call: F,
    ) -> Result<T, ApiError>
    where
        F: FnOnce(KvClient<LeaderClusterChannel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let answer = tokio::time::timeout_at(deadline, call(self.leader_cluster.kv_client()))
            .await
            .map_err(|_| ApiError::DeadlineExceeded)?
            .map_err(leader_error)?;
        Ok(answer.into_inner())
    }

    /// Waits until this node's replica of `table` has applied the leader's `header.revision`.
    async fn wait_applied(
        &self,
        table: &[u8],
        header: Option<&ResponseHeader>,
        deadline: tokio::time::Instant,
    ) -> Result<(), ApiError> {
        let revision = header.map_or(0, |header| header.revision);
        if revision == 0 {
            return Ok(());
        }
        let name = String::from_utf8_lossy(table).into_owned();
        let host = self
            .host()
            .ok_or_else(|| ApiError::Unavailable("the node is shutting down".into()))?;
        // The table may not be served here yet (created on the leader a moment ago).
        let group = loop {
            match host.table(&name).await {
                Ok(group) => break group,
                Err(ApiError::TableNotFound(_) | ApiError::Unavailable(_))
                    if tokio::time::Instant::now() + TABLE_APPEAR_PAUSE < deadline =>
                {
                    tokio::time::sleep(TABLE_APPEAR_PAUSE).await;
                }
                Err(_) => return Err(ApiError::DeadlineExceeded),
            }
        };
        let mut applied = group.state_machine.subscribe();
        let reached = |position: &armada_table::AppliedPosition| {
            position
                .leader_index
                .is_some_and(|index| index.get() >= revision)
        };
        tokio::time::timeout_at(deadline, applied.wait_for(reached))
            .await
            .map_err(|_| ApiError::DeadlineExceeded)?
            .map_err(|_| ApiError::Unavailable("the table's replica stopped".into()))?;
        debug_assert!(applied_leader_index(&group.table) >= revision);
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
        let mut applied = group.state_machine.subscribe();
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
