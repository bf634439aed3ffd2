//! The gRPC health service (`grpc.health.v1.Health`) on the API port: what Kubernetes gRPC
//! probes and load balancers ask. Its serving status follows the node's readiness — the same
//! condition as `/readyz` ([`serves_reads`]) — for the whole server (service `""`) and for each
//! API service by name (`regatta.v1.KV`, …).
//!
//! The status starts NOT_SERVING, becomes SERVING once the node can serve reads and is
//! re-checked every [`READINESS_CHECK_INTERVAL`]. On shutdown it turns NOT_SERVING before the
//! server stops accepting, so balancers drain the node; then the statuses are cleared, which
//! ends open `Watch` streams (they would otherwise hold the graceful shutdown until its
//! deadline).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::follower::Follower;
use crate::node::Node;

/// How often readiness is re-checked: a change shows in the health status within this.
pub const READINESS_CHECK_INTERVAL: Duration = Duration::from_millis(200);

/// Services whose status is reported besides the server as a whole (`""`).
pub const API_SERVICES: [&str; 4] = [
    "regatta.v1.KV",
    "regatta.v1.Tables",
    "regatta.v1.Cluster",
    "maintenance.v1.Maintenance",
];

/// This node can serve reads: it has joined its cluster (the catalog and every table group
/// have a Raft leader) and, on a follower cluster, every table of the leader cluster has been
/// bootstrapped here once (SPEC §7, `/readyz`): a follower cut off from the leader cluster
/// stays serving, its staleness is for metrics and alerts.
pub fn serves_reads(node: &Node, follower: Option<&Follower>) -> bool {
    why_not_ready(node, follower).is_none()
}

/// Why this node cannot serve reads yet (`None`: it can); the one readiness rule of `/readyz`
/// and of the gRPC health service.
pub fn why_not_ready(node: &Node, follower: Option<&Follower>) -> Option<String> {
    if !node.is_ready() {
        return Some("the node has not joined its cluster (no Raft leader yet)".into());
    }
    follower?.bootstrapped().err()
}

/// The health service to mount and its reporter, every name NOT_SERVING (tonic-health starts
/// `""` as SERVING: the node is not ready yet).
pub async fn not_serving() -> (
    HealthReporter,
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
) {
    let (reporter, service) = tonic_health::server::health_reporter();
    set_all(&reporter, ServingStatus::NotServing).await;
    (reporter, service)
}

async fn set_all(reporter: &HealthReporter, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    for service in API_SERVICES {
        reporter.set_service_status(service, status).await;
    }
}

/// Keeps the health status equal to [`serves_reads`] until `stop` turns true, then reports
/// NOT_SERVING. Returns once it has.
pub async fn follow_readiness(
    node: Arc<Node>,
    follower: Option<Arc<Follower>>,
    reporter: HealthReporter,
    mut stop: watch::Receiver<bool>,
) {
    let mut serving = false;
    loop {
        if *stop.borrow() {
            break;
        }
        let ready = serves_reads(&node, follower.as_deref());
        if ready != serving {
            let status = match ready {
                true => ServingStatus::Serving,
                false => ServingStatus::NotServing,
            };
            set_all(&reporter, status).await;
            serving = ready;
        }
        tokio::select! {
            _ = stop.changed() => {}
            () = tokio::time::sleep(READINESS_CHECK_INTERVAL) => {}
        }
    }
    set_all(&reporter, ServingStatus::NotServing).await;
}

/// Ends every open `Watch` stream (after NOT_SERVING was sent on it): called once the server
/// stopped accepting, so that graceful shutdown does not wait for them.
pub async fn end_watches(mut reporter: HealthReporter) {
    reporter.clear_service_status("").await;
    for service in API_SERVICES {
        reporter.clear_service_status(service).await;
    }
}
