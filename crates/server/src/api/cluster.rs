//! `regatta.v1.Cluster`: MemberList and Status. Problems with one table are listed in
//! `errors`, never thrown; the configuration is returned flat with secrets redacted. On a
//! follower cluster Status also says how stale the node is: per table the lag (entries,
//! seconds) and the seconds since the leader cluster last answered about it, per node the
//! seconds since any answer, and in `errors` the cause of a failing link (`Unavailable`,
//! `Unauthenticated`, …).

use std::collections::BTreeMap;
use std::sync::Arc;

use armada_proto::regatta::v1::cluster_server::Cluster;
use armada_proto::regatta::v1::{
    Member, MemberListRequest, MemberListResponse, StatusRequest, StatusResponse, TableStatus,
};
use tonic::{Request, Response, Status};

use super::metered;
use armada_storage::LeaderIndex;

use crate::error::ApiError;
use crate::follower::{Follower, LagReport};
use crate::node::{Node, TableGroup};

const SERVICE: &str = "regatta.v1.Cluster";

pub struct ClusterService {
    node: Arc<Node>,
    /// On a follower cluster: the replication machinery (forwarding, lag, Reset).
    follower: Option<Arc<Follower>>,
}

impl ClusterService {
    pub fn new(node: Arc<Node>, follower: Option<Arc<Follower>>) -> Self {
        ClusterService { node, follower }
    }

    /// On a follower: the seconds since the leader cluster last answered this node, and the
    /// cause of the current failure (in `errors`); 0 on the leader cluster.
    fn leader_contact(&self, errors: &mut Vec<String>) -> f64 {
        let Some(follower) = &self.follower else {
            return 0.0;
        };
        let contact = follower.contact.report();
        if let Some(error) = contact.error {
            errors.push(format!(
                "replication: the leader cluster {} last answered {:.1} s ago: {error}",
                follower.leader_cluster_address(),
                contact.seconds_since_contact
            ));
        }
        contact.seconds_since_contact
    }

    /// On a follower: the table's replication progress, and its failure (in `errors`).
    fn table_lag(&self, name: &str, applied: LeaderIndex, errors: &mut Vec<String>) -> LagReport {
        let Some(follower) = &self.follower else {
            return LagReport::default();
        };
        let lag = follower
            .lag(name)
            .report(applied, follower.staleness_grace());
        if let Some(error) = &lag.error {
            errors.push(format!("{name}: replication: {error}"));
        }
        lag
    }

    /// One table's status on this replica; what cannot be read is added to `errors`.
    fn table_status(
        &self,
        name: &str,
        group: &TableGroup,
        errors: &mut Vec<String>,
    ) -> TableStatus {
        let metrics = group.raft_metrics();
        let view = group.table().read_view();
        let content_hash = match view.content_hash() {
            Ok(hash) => hash,
            Err(error) => {
                errors.push(format!("{name}: {error}"));
                String::new()
            }
        };
        let position = view.position();
        let applied_leader_index = position.leader_index.unwrap_or_default();
        let lag = self.table_lag(name, applied_leader_index, errors);
        TableStatus {
            log_size: i64::try_from(self.node.log_engine().group_log_bytes(group.id()))
                .unwrap_or(i64::MAX),
            db_size: i64::try_from(group.table().disk_bytes()).unwrap_or(i64::MAX),
            leader: metrics
                .current_leader
                .map(|id| id.to_string())
                .unwrap_or_default(),
            raft_index: metrics.last_log_index.unwrap_or(0),
            raft_term: metrics.current_term,
            raft_applied_index: position.log_index.get(),
            revision: position.revision.get(),
            shard_id: group.id().get(),
            content_hash,
            commit_index: metrics.local_committed.map_or(0, |log_id| log_id.index),
            first_log_index: self
                .node
                .log_engine()
                .group(group.id())
                .first_index()
                .unwrap_or_default()
                .unwrap_or(0),
            replication_leader_index: lag.leader_index.get(),
            replication_applied_index: lag.applied_leader_index.get(),
            replication_lag_entries: lag.lag_entries,
            replication_lag_seconds: lag.lag_seconds,
            replication_snapshot_recoveries: lag.recoveries,
            replication_seconds_since_contact: lag.seconds_since_contact,
        }
    }

    fn status_inner(&self, request: StatusRequest) -> Result<StatusResponse, ApiError> {
        let mut tables = std::collections::HashMap::new();
        let mut errors = Vec::new();
        for (name, group) in self.node.table_groups().iter() {
            let status = self.table_status(name, group, &mut errors);
            tables.insert(name.clone(), status);
        }
        for name in self.node.catalog_state().tables.keys() {
            if !tables.contains_key(name) {
                errors.push(format!("{name}: table group is not running on this node"));
            }
        }
        let seconds_since_contact = self.leader_contact(&mut errors);
        let config = request
            .config
            .then(|| to_struct(self.node.config().flat_redacted()));
        Ok(StatusResponse {
            id: self.node.node_id().to_string(),
            version: crate::build_info::VERSION.to_string(),
            info: format!(
                "{}, cluster {}",
                crate::build_info::description(),
                self.node.config().cluster.name
            ),
            tables,
            config,
            errors,
            replication_seconds_since_contact: seconds_since_contact,
        })
    }
}

fn to_struct(flat: BTreeMap<String, serde_json::Value>) -> prost_types::Struct {
    use prost_types::value::Kind;
    let fields = flat
        .into_iter()
        .map(|(key, value)| {
            let kind = match value {
                serde_json::Value::Null => Kind::NullValue(0),
                serde_json::Value::Bool(b) => Kind::BoolValue(b),
                serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
                serde_json::Value::String(s) => Kind::StringValue(s),
                other => Kind::StringValue(other.to_string()),
            };
            (key, prost_types::Value { kind: Some(kind) })
        })
        .collect();
    prost_types::Struct { fields }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_list(
        &self,
        _request: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        metered(SERVICE, "MemberList", async {
            let members = self
                .node
                .member_addresses()
                .await
                .into_iter()
                .map(|(id, raft_address, api_address)| Member {
                    id: id.to_string(),
                    name: format!("node-{id}"),
                    peer_ur_ls: vec![raft_address],
                    client_ur_ls: api_address.into_iter().collect(),
                })
                .collect();
            Ok(MemberListResponse {
                cluster: self.node.config().cluster.name.clone(),
                members,
            })
        })
        .await
        .map(Response::new)
    }

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        metered(SERVICE, "Status", async {
            self.status_inner(request.into_inner())
        })
        .await
        .map(Response::new)
    }
}
