//! REST endpoints on `--rest.address`: `/metrics` (Prometheus text), `/healthz` (process up),
//! `/readyz` (this node can serve reads). Anything else is 404.
//!
//! Ready means: the catalog and every table group have a Raft leader (the node has joined its
//! cluster) and, on a follower cluster, every table has been bootstrapped once. A follower cut
//! off from the leader cluster stays ready: serving (stale) reads during a hub outage is what
//! an edge is for, and a readiness probe that failed then would take every edge pod out of
//! service at once. Staleness is reported in the body of a 200 (one line per stale item, with
//! its cause), by the lag metrics, and — for a probe that wants it — by `/readyz?max_lag=30s`,
//! which answers 503 when the leader cluster's silence or a table's lag exceeds the bound.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::follower::Follower;
use crate::node::Node;

#[derive(Clone)]
struct RestState {
    node: Arc<Node>,
    /// On a follower cluster: the replication machinery (staleness, lag gauges).
    follower: Option<Arc<Follower>>,
    metrics: PrometheusHandle,
}

pub fn router(
    node: Arc<Node>,
    follower: Option<Arc<Follower>>,
    metrics: PrometheusHandle,
) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { StatusCode::OK }))
        .route("/readyz", get(ready))
        .fallback(|| async { StatusCode::NOT_FOUND })
        .with_state(RestState {
            node,
            follower,
            metrics,
        })
}

async fn render_metrics(State(state): State<RestState>) -> String {
    record_node_gauges(&state.node);
    if let Some(follower) = &state.follower {
        crate::follower::record_metrics(follower);
    }
    state.metrics.render()
}

/// The `max_lag` bound of a `/readyz` query (`max_lag=30s`), if any.
fn max_lag(query: Option<&str>) -> Result<Option<Duration>, String> {
    let Some(query) = query else { return Ok(None) };
    let mut bound = None;
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        match pair.split_once('=') {
            Some(("max_lag", value)) => {
                bound = Some(crate::config::parse_duration(value).map_err(|error| {
                    format!("max_lag: {error} (a duration such as 30s or 500ms)")
                })?);
            }
            _ => {
                return Err(format!(
                    "unknown query parameter {pair:?} (only max_lag=DURATION)"
                ));
            }
        }
    }
    Ok(bound)
}

async fn ready(State(state): State<RestState>, RawQuery(query): RawQuery) -> (StatusCode, String) {
    let bound = match max_lag(query.as_deref()) {
        Ok(bound) => bound,
        Err(message) => return (StatusCode::BAD_REQUEST, format!("{message}\n")),
    };
    if let Some(reason) = crate::health::why_not_ready(&state.node, state.follower.as_deref()) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        );
    }
    let Some(follower) = &state.follower else {
        return (StatusCode::OK, "ready\n".into());
    };
    let stale = follower.staleness(bound);
    let mut body = String::from("ready\n");
    for line in &stale {
        body.push_str("stale: ");
        body.push_str(line);
        body.push('\n');
    }
    match (bound, stale.is_empty()) {
        (Some(bound), false) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "stale beyond max_lag={bound:?}\n{}",
                &body["ready\n".len()..]
            ),
        ),
        _ => (StatusCode::OK, body),
    }
}

/// Per-table and per-group gauges, sampled when `/metrics` is scraped.
pub fn record_node_gauges(node: &Node) {
    crate::build_info::record_metric();
    for (name, group) in node.table_groups().iter() {
        let labels = [
            ("table", name.clone()),
            ("shard_id", group.id().to_string()),
        ];
        let metrics = group.raft_metrics();
        metrics::gauge!("armada_raft_term", &labels).set(metrics.current_term as f64);
        metrics::gauge!("armada_raft_has_leader", &labels)
            .set(f64::from(u8::from(metrics.current_leader.is_some())));
        metrics::gauge!("armada_raft_is_leader", &labels).set(f64::from(u8::from(
            metrics.current_leader == Some(node.node_id().get()),
        )));
        metrics::gauge!("armada_raft_last_log_index", &labels)
            .set(metrics.last_log_index.unwrap_or(0) as f64);
        metrics::gauge!("armada_raft_committed_index", &labels)
            .set(metrics.cluster_committed.as_ref().map_or(0, |id| id.index) as f64);
        metrics::gauge!("armada_raft_applied_index", &labels)
            .set(metrics.last_applied.as_ref().map_or(0, |id| id.index) as f64);
        metrics::counter!("armada_raft_elections_total", &labels)
            .absolute(node.log_engine().group_term_changes(group.id()));
        metrics::gauge!("armada_table_disk_bytes", &labels).set(group.table().disk_bytes() as f64);
        metrics::counter!("armada_table_compactions_total", &labels)
            .absolute(group.table().compactions());
        metrics::gauge!("armada_table_revision", &labels)
            .set(group.table().read_view().position().revision.get() as f64);
    }
    metrics::gauge!("armada_storage_disk_bytes").set(node.storage().disk_space() as f64);
    metrics::gauge!("armada_storage_journal_bytes").set(node.storage().journal_bytes() as f64);
    // fjall's own count, over every keyspace (tables: armada_table_compactions_total).
    metrics::counter!("armada_storage_compactions_total")
        .absolute(node.storage().compactions_completed());
}

#[cfg(test)]
mod tests {
    use super::max_lag;
    use std::time::Duration;

    #[test]
    fn max_lag_is_parsed_and_bad_input_names_the_parameter() {
        assert_eq!(max_lag(None), Ok(None));
        assert_eq!(max_lag(Some("")), Ok(None));
        assert_eq!(
            max_lag(Some("max_lag=30s")),
            Ok(Some(Duration::from_secs(30)))
        );
        assert_eq!(
            max_lag(Some("max_lag=500ms")),
            Ok(Some(Duration::from_millis(500)))
        );
        let bad = max_lag(Some("max_lag=soon")).expect_err("not a duration");
        assert!(bad.starts_with("max_lag: "), "{bad}");
        let unknown = max_lag(Some("lag=1s")).expect_err("unknown parameter");
        assert!(unknown.contains("max_lag"), "{unknown}");
    }
}
