//! Runs a node of a leader or a follower cluster: the node itself, the client API (KV, Tables,
//! Cluster, Maintenance, plus gRPC health and server reflection), the replication API (leader
//! clusters only) and REST, until `shutdown` resolves.
//!
//! [`run`] holds the order of things; the steps are small functions: certificates are read and
//! every socket is bound before anything is served (a bad file or a taken port fails start-up
//! at once); the node is ready (its catalog group has a Raft leader) before its address is
//! published in the listen file. Stopping goes the other way: NOT_SERVING first, while the API
//! still answers, so that balancers drain the node; then no new requests, in-flight ones finish;
//! then the node hands over its Raft leaderships and closes storage cleanly.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use armada_proto::armada::v1::metadata_feed_server::MetadataFeedServer;
use armada_proto::maintenance::v1::maintenance_server::MaintenanceServer;
use armada_proto::regatta::v1::cluster_server::ClusterServer;
use armada_proto::regatta::v1::kv_server::KvServer;
use armada_proto::regatta::v1::tables_server::TablesServer;
use armada_proto::replication::v1::log_server::LogServer;
use armada_proto::replication::v1::metadata_server::MetadataServer;
use armada_proto::replication::v1::snapshot_server::SnapshotServer;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::watch;
use tonic::codec::CompressionEncoding;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::Router;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::server::HealthReporter;
use tonic_reflection::server as reflection;

use crate::address::ListenAddress;
use crate::api;
use crate::config::ServerConfig;
use crate::follower::{Follower, FollowerHost};
use crate::listener::Listener;
use crate::node::Node;

/// Largest request the API accepts (SPEC §2: requests over 4 MiB are refused by the transport).
pub const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// The addresses a running server actually bound (port 0 resolved).
#[derive(Clone, Debug)]
pub struct BoundAddresses {
    pub api: String,
    pub replication: String,
    pub rest: String,
}

/// Runs the node and its servers until `shutdown` resolves, then stops them in order (see the
/// module's essay). `on_ready` is called once every listener is bound and the node serves.
pub async fn run(
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(&BoundAddresses) + Send,
) -> anyhow::Result<()> {
    let metrics = crate::telemetry::metrics_handle()?;
    // Certificates are read before anything starts: a bad file fails start-up at once.
    let api_tls = config
        .api_tls()
        .map(|tls| tls.server_config())
        .transpose()?;
    let replication_tls = config
        .replication_server_tls()
        .map(|tls| tls.server_config())
        .transpose()?;
    let _ = std::fs::remove_file(config.data_dir.join(LISTEN_FILE));
    let (node, follower) = start_node(&config).await?;
    let listeners = Listeners::bind(&config, api_tls, replication_tls).await?;
    node.set_api_bound(&listeners.api.url());
    let bound = listeners.bound()?;
    log_serving(&config, &bound);
    let servers = Servers::start(&node, follower, listeners, metrics).await?;
    write_listen_file(&config, &bound)?;
    on_ready(&bound);
    shutdown.await;
    servers.stop().await;
    node.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// Starts the node (and, on a follower cluster, its replication machinery, which the services
/// are handed), waits for its catalog group to elect a Raft leader and, on a leader cluster,
/// creates the tables `tables.names` lists.
async fn start_node(config: &ServerConfig) -> anyhow::Result<(Arc<Node>, Option<Arc<Follower>>)> {
    let node = Node::start(config.clone()).await?;
    let follower = match config.is_follower() {
        true => {
            let host: Arc<dyn FollowerHost> = node.clone();
            Some(crate::follower::start(&host, &config.replication)?)
        }
        false => None,
    };
    if !node.wait_ready(Duration::from_secs(30)).await {
        anyhow::bail!("the catalog group elected no leader within 30 s");
    }
    if !config.is_follower() {
        create_initial_tables(&node).await?;
    }
    Ok((node, follower))
}

/// The sockets a node serves on, bound before anything is served on them.
struct Listeners {
    api: Listener,
    /// The replication API is the leader cluster's; follower nodes do not serve it.
    replication: Option<Listener>,
    rest: tokio::net::TcpListener,
}

impl Listeners {
    async fn bind(
        config: &ServerConfig,
        api_tls: Option<Arc<rustls::ServerConfig>>,
        replication_tls: Option<Arc<rustls::ServerConfig>>,
    ) -> anyhow::Result<Listeners> {
        let api = Listener::bind("api.address", &config.api.address, api_tls).await?;
        let replication = match config.is_follower() {
            true => None,
            false => Some(
                Listener::bind(
                    "replication.address",
                    &config.replication.address,
                    replication_tls,
                )
                .await?,
            ),
        };
        let rest_address =
            ListenAddress::parse(&config.rest.address).map_err(anyhow::Error::msg)?;
        let rest = tokio::net::TcpListener::bind(rest_address.socket_address().await?).await?;
        Ok(Listeners {
            api,
            replication,
            rest,
        })
    }

    fn bound(&self) -> anyhow::Result<BoundAddresses> {
        Ok(BoundAddresses {
            api: self.api.url(),
            replication: self
                .replication
                .as_ref()
                .map(Listener::url)
                .unwrap_or_default(),
            rest: format!("http://{}", self.rest.local_addr()?),
        })
    }
}

fn log_serving(config: &ServerConfig, bound: &BoundAddresses) {
    tracing::info!(
        api = bound.api,
        replication = bound.replication,
        rest = bound.rest,
        node_id = config.raft.node_id,
        role = if config.is_follower() {
            "follower"
        } else {
            "leader"
        },
        "armada node serving"
    );
}

/// The client API on the API port: KV, Tables, Cluster, Maintenance, health and reflection.
fn api_server(
    node: &Arc<Node>,
    follower: &Option<Arc<Follower>>,
    health_service: HealthServer<impl Health>,
) -> anyhow::Result<Router> {
    let reflection = reflection_services()?;
    Ok(tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection.0)
        .add_service(reflection.1)
        .add_service(compressed(KvServer::new(api::kv::KvService::new(
            node.clone(),
            follower.clone(),
        ))))
        .add_service(compressed(TablesServer::new(
            api::tables::TablesService::new(node.clone(), follower.clone()),
        )))
        .add_service(compressed(ClusterServer::new(
            api::cluster::ClusterService::new(node.clone(), follower.clone()),
        )))
        .add_service(compressed(MaintenanceServer::new(
            api::maintenance::MaintenanceService::new(node.clone(), follower.clone()),
        ))))
}

/// Replication services speak gzip both ways.
macro_rules! gzip {
    ($server:expr) => {
        $server
            .accept_compressed(CompressionEncoding::Gzip)
            .send_compressed(CompressionEncoding::Gzip)
    };
}

/// The replication API on the replication port, for follower clusters: metadata, log and
/// snapshot streams, the metadata feed, and a KV that follower clusters forward writes to.
fn replication_server(node: &Arc<Node>, stop: watch::Receiver<bool>) -> Router {
    let replication = api::replication::ReplicationService::new(node.clone(), stop);
    tonic::transport::Server::builder()
        .add_service(gzip!(MetadataServer::new(replication.clone())))
        .add_service(gzip!(LogServer::new(replication.clone())))
        .add_service(gzip!(SnapshotServer::new(replication.clone())))
        .add_service(gzip!(MetadataFeedServer::new(replication)))
        // As in Regatta, follower clusters forward writes to this KV; here it is guarded by
        // the replication token (the API port's KV is not).
        .add_service(InterceptedService::new(
            // No follower: only leader-cluster nodes serve the replication port.
            compressed(KvServer::new(api::kv::KvService::new(node.clone(), None))),
            replication_token_check(&node.config().replication.token),
        ))
}

type ServerTask = tokio::task::JoinHandle<anyhow::Result<()>>;

/// The servers of a running node and what stops them.
struct Servers {
    /// API, replication and REST, stopped together by `stop`.
    tasks: [ServerTask; 3],
    stop: watch::Sender<bool>,
    health_task: tokio::task::JoinHandle<()>,
    health_stop: watch::Sender<bool>,
    health_reporter: HealthReporter,
}

impl Servers {
    /// Serves every API of `node` on its listener, reporting NOT_SERVING until the node is ready.
    async fn start(
        node: &Arc<Node>,
        follower: Option<Arc<Follower>>,
        listeners: Listeners,
        metrics: PrometheusHandle,
    ) -> anyhow::Result<Servers> {
        let (stop, stopped) = watch::channel(false);
        let (health_reporter, health_service) = crate::health::not_serving().await;
        let api = api_server(node, &follower, health_service)?;
        let replication = replication_server(node, stopped.clone());
        let api_task = tokio::spawn(listeners.api.serve(api, wait_for(stopped.clone())));
        let replication_task = match listeners.replication {
            Some(listener) => tokio::spawn(listener.serve(replication, wait_for(stopped.clone()))),
            None => tokio::spawn(async { Ok(()) }),
        };
        let rest_router = crate::rest::router(node.clone(), follower.clone(), metrics);
        let rest_stop = wait_for(stopped);
        let rest_listener = listeners.rest;
        let rest_task = tokio::spawn(async move {
            axum::serve(rest_listener, rest_router)
                .with_graceful_shutdown(rest_stop)
                .await
                .map_err(anyhow::Error::from)
        });
        let (health_stop, health_stopped) = watch::channel(false);
        let health_task = tokio::spawn(crate::health::follow_readiness(
            node.clone(),
            follower,
            health_reporter.clone(),
            health_stopped,
        ));
        Ok(Servers {
            tasks: [api_task, replication_task, rest_task],
            stop,
            health_task,
            health_stop,
            health_reporter,
        })
    }

    /// Reports NOT_SERVING, stops accepting and lets in-flight requests finish (10 s at most).
    async fn stop(self) {
        // NOT_SERVING first, while the API still answers, so that balancers drain this node.
        let _ = self.health_stop.send(true);
        let _ = self.health_task.await;
        tracing::info!("shutting down: no new requests, finishing in-flight ones");
        let _ = self.stop.send(true);
        crate::health::end_watches(self.health_reporter).await;
        for task in self.tasks {
            match tokio::time::timeout(Duration::from_secs(10), task).await {
                Ok(Ok(Err(error))) => tracing::warn!(%error, "a server ended with an error"),
                Ok(Err(error)) => tracing::warn!(%error, "a server task failed"),
                _ => {}
            }
        }
    }
}

/// gRPC server reflection (`grpc.reflection.v1` and the older `v1alpha` that many grpcurl
/// builds still ask first) over the API port's services and the health service, so that
/// grpcurl and similar tools work without the `.proto` files.
fn reflection_services() -> anyhow::Result<(
    reflection::v1::ServerReflectionServer<impl reflection::v1::ServerReflection>,
    reflection::v1alpha::ServerReflectionServer<impl reflection::v1alpha::ServerReflection>,
)> {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(armada_proto::API_FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    Ok((builder().build_v1()?, builder().build_v1alpha()?))
}

/// Checks the replication token on services that do not check it themselves.
fn replication_token_check(
    token: &str,
) -> impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Clone + use<> {
    let token = token.to_string();
    move |request: tonic::Request<()>| {
        api::check_token(&request, &token)?;
        Ok(request)
    }
}

fn compressed<S>(service: S) -> S
where
    S: CompressionConfigurable,
{
    service.configure_compression()
}

/// The generated servers share no trait for compression settings; this adds one.
pub trait CompressionConfigurable {
    fn configure_compression(self) -> Self;
}

macro_rules! compression_for {
    ($($server:ident<$service:ty>),*) => {$(
        impl CompressionConfigurable for $server<$service> {
            fn configure_compression(self) -> Self {
                self.accept_compressed(CompressionEncoding::Gzip)
                    .accept_compressed(CompressionEncoding::Zstd)
                    .send_compressed(CompressionEncoding::Gzip)
                    .send_compressed(CompressionEncoding::Zstd)
                    .max_decoding_message_size(MAX_REQUEST_BYTES)
            }
        }
    )*};
}

compression_for!(
    KvServer<api::kv::KvService>,
    TablesServer<api::tables::TablesService>,
    ClusterServer<api::cluster::ClusterService>,
    MaintenanceServer<api::maintenance::MaintenanceService>
);

/// Name of the file, in the data directory, where a serving node writes the addresses it bound
/// (ports chosen by the OS when configured as 0): for scripts, tests and operators.
pub const LISTEN_FILE: &str = "listen.json";

fn write_listen_file(config: &ServerConfig, bound: &BoundAddresses) -> anyhow::Result<()> {
    let json = serde_json::json!({
        "api": bound.api,
        "replication": bound.replication,
        "rest": bound.rest,
        "pid": std::process::id(),
    });
    let temporary = config.data_dir.join(format!("{LISTEN_FILE}.tmp"));
    std::fs::write(&temporary, serde_json::to_vec_pretty(&json)?)?;
    std::fs::rename(&temporary, config.data_dir.join(LISTEN_FILE))?;
    Ok(())
}

async fn wait_for(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

async fn create_initial_tables(node: &Arc<Node>) -> anyhow::Result<()> {
    for name in node
        .config()
        .tables
        .names
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
    {
        api::validate::new_table_name(name)
            .map_err(|error| anyhow::anyhow!("tables.names: {name}: {error}"))?;
        if node.catalog_state().tables.contains_key(name) {
            continue;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        match node.create_table(name, deadline).await {
            Ok(id) => tracing::info!(
                table = name,
                id = id.get(),
                "created table from tables.names"
            ),
            Err(crate::error::ApiError::TableExists) => {}
            Err(error) => anyhow::bail!("creating table {name} from tables.names: {error}"),
        }
    }
    Ok(())
}
