//! Logs (tracing) and metrics (Prometheus) set-up, and the gauges sampled on scrape.

use openraft::async_runtime::WatchReceiver;
use std::sync::Mutex;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::node::Node;

/// Installs the process-wide Prometheus recorder once and returns its handle.
pub fn metrics_handle() -> anyhow::Result<PrometheusHandle> {
    // A mutex, not a bare OnceLock: several servers of one process (`armada dev --nodes 3`)
    // start concurrently and only one may install the process-wide recorder.
    static HANDLE: Mutex<Option<PrometheusHandle>> = Mutex::new(None);
    let mut handle = HANDLE
        .lock()
        .map_err(|_| anyhow::anyhow!("metrics set-up panicked"))?;
    if let Some(handle) = handle.as_ref() {
        return Ok(handle.clone());
    }
    let installed = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("grpc_server_handling_seconds".into()),
            &[
                0.0001, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 30.0,
            ],
        )?
        .install_recorder()?;
    *handle = Some(installed.clone());
    Ok(installed)
}

/// Sets up logging: human-readable text or JSON lines, filtered by `level` (or `RUST_LOG`).
/// `level` is one of `config::LOG_LEVELS` in any case (checked when the configuration is
/// loaded). Text has ANSI colours only when stderr is a terminal: a log file or a journal
/// would otherwise be full of escape codes.
pub fn init_logging(level: &str, format: &str) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let level = level.to_ascii_lowercase();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "{level},openraft=error,fjall=warn,lsm_tree=warn,h2=warn,tower=warn,hyper=warn"
        ))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = if format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Per-table and per-group gauges, sampled when `/metrics` is scraped.
pub fn record_node_gauges(node: &Node) {
    crate::build_info::record_metric();
    for (name, group) in node.table_groups().iter() {
        let labels = [("table", name.clone()), ("shard_id", group.id.to_string())];
        let metrics = group.raft.metrics();
        let metrics = metrics.borrow_watched();
        metrics::gauge!("armada_raft_term", &labels).set(metrics.current_term as f64);
        metrics::gauge!("armada_raft_has_leader", &labels)
            .set(f64::from(u8::from(metrics.current_leader.is_some())));
        metrics::gauge!("armada_raft_is_leader", &labels).set(f64::from(u8::from(
            metrics.current_leader == Some(node.node_id.get()),
        )));
        metrics::gauge!("armada_raft_last_log_index", &labels)
            .set(metrics.last_log_index.unwrap_or(0) as f64);
        metrics::gauge!("armada_raft_committed_index", &labels)
            .set(metrics.cluster_committed.as_ref().map_or(0, |id| id.index) as f64);
        metrics::gauge!("armada_raft_applied_index", &labels)
            .set(metrics.last_applied.as_ref().map_or(0, |id| id.index) as f64);
        metrics::counter!("armada_raft_elections_total", &labels)
            .absolute(node.log_engine().group_term_changes(group.id));
        metrics::gauge!("armada_table_disk_bytes", &labels).set(group.table.disk_bytes() as f64);
        metrics::gauge!("armada_table_revision", &labels)
            .set(group.table.read_view().position().revision.get() as f64);
    }
    metrics::gauge!("armada_storage_disk_bytes").set(node.storage.disk_space() as f64);
    metrics::gauge!("armada_storage_journal_bytes").set(node.storage.journal_bytes() as f64);
    // fjall counts compactions per database, not per keyspace: a node-level counter.
    metrics::counter!("armada_storage_compactions_total")
        .absolute(node.storage.compactions_completed());
}
