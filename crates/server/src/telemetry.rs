//! Logs (tracing) and metrics (Prometheus) set-up, and the gauges sampled on scrape.
//!
//! A server process records into the process-wide Prometheus recorder. `armada dev` runs
//! several servers in one process; each gets a registry of its own ([`separate_registry`]),
//! entered on every thread of its runtime, so that the leader's and the follower's `/metrics`
//! never merge (same table names, same gRPC methods, one series each otherwise).

use std::sync::Mutex;

use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

/// The recorder of the server whose threads these are, when it has its own (see
/// [`separate_registry`]); otherwise the process-wide one is used.
struct LocalRegistry {
    recorder: &'static PrometheusRecorder,
    handle: PrometheusHandle,
}

thread_local! {
    static LOCAL_REGISTRY: std::cell::RefCell<Option<LocalRegistry>> =
        const { std::cell::RefCell::new(None) };
}

fn builder() -> anyhow::Result<PrometheusBuilder> {
    Ok(PrometheusBuilder::new().set_buckets_for_metric(
        Matcher::Full("grpc_server_handling_seconds".into()),
        &[
            0.0001, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 30.0,
        ],
    )?)
}

/// The metrics of the server running on this thread: its own registry if this thread belongs
/// to one (see [`separate_registry`]), else the process-wide recorder, installed once.
pub fn metrics_handle() -> anyhow::Result<PrometheusHandle> {
    if let Some(handle) =
        LOCAL_REGISTRY.with(|local| local.borrow().as_ref().map(|local| local.handle.clone()))
    {
        return Ok(handle);
    }
    // A mutex, not a bare OnceLock: several servers of one process may start concurrently
    // and only one may install the process-wide recorder.
    static HANDLE: Mutex<Option<PrometheusHandle>> = Mutex::new(None);
    let mut handle = HANDLE
        .lock()
        .map_err(|_| anyhow::anyhow!("metrics set-up panicked"))?;
    if let Some(handle) = handle.as_ref() {
        return Ok(handle.clone());
    }
    let installed = builder()?.install_recorder()?;
    *handle = Some(installed.clone());
    Ok(installed)
}

/// A registry of its own for one server of a process that runs several (`armada dev`'s
/// clusters): call the returned function first on every thread of that server — as its
/// runtime's `on_thread_start`, and on any thread the server starts itself (see
/// [`thread_registry`]) — and everything that server records, and its `/metrics`, stays apart
/// from the others'. The recorder lives as long as the process (a handful per process).
pub fn separate_registry() -> anyhow::Result<impl Fn() + Clone + Send + Sync + 'static> {
    let recorder: &'static PrometheusRecorder = Box::leak(Box::new(builder()?.build_recorder()));
    let handle = recorder.handle();
    Ok(move || enter_registry(recorder, handle.clone()))
}

fn enter_registry(recorder: &'static PrometheusRecorder, handle: PrometheusHandle) {
    // The guard would restore the previous recorder when dropped; this thread keeps the
    // server's recorder for its whole life.
    std::mem::forget(metrics::set_default_local_recorder(recorder));
    LOCAL_REGISTRY.with(|local| *local.borrow_mut() = Some(LocalRegistry { recorder, handle }));
}

/// What a thread started by a server calls first so that its metrics go where its parent's
/// go (a no-op where the server uses the process-wide recorder).
pub fn thread_registry() -> impl FnOnce() + Send + 'static {
    let local = LOCAL_REGISTRY.with(|local| {
        local
            .borrow()
            .as_ref()
            .map(|local| (local.recorder, local.handle.clone()))
    });
    move || {
        if let Some((recorder, handle)) = local {
            enter_registry(recorder, handle);
        }
    }
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
