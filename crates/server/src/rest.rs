//! REST endpoints on `--rest.address`: `/metrics` (Prometheus text), `/healthz` (process up),
//! `/readyz` (the catalog and every table group have a Raft leader; on a follower cluster also:
//! the leader cluster answers and every one of its tables is replicated here). Anything else
//! is 404.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::node::Node;

#[derive(Clone)]
struct RestState {
    node: Arc<Node>,
    metrics: PrometheusHandle,
}

pub fn router(node: Arc<Node>, metrics: PrometheusHandle) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { StatusCode::OK }))
        .route("/readyz", get(ready))
        .fallback(|| async { StatusCode::NOT_FOUND })
        .with_state(RestState { node, metrics })
}

async fn render_metrics(State(state): State<RestState>) -> String {
    crate::telemetry::record_node_gauges(&state.node);
    if let Some(follower) = state.node.follower() {
        crate::follower::record_metrics(follower);
    }
    state.metrics.render()
}

async fn ready(State(state): State<RestState>) -> (StatusCode, &'static str) {
    if !state.node.is_ready() {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready\n");
    }
    match state.node.follower() {
        Some(follower) if !follower.is_replicating() => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: not every table of the leader cluster is replicating\n",
        ),
        _ => (StatusCode::OK, "ready\n"),
    }
}
