//! `armada leader` / `armada follower`: run a node of the leader cluster or of a follower cluster.
//!
//! Every flag is optional here; values are layered with the config file and the environment
//! (see `armada_server::config`), so a flag left unset falls through to them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use armada_server::config::{self, ServerConfig, Sources};

#[derive(clap::Args, Debug, Default)]
pub struct LeaderArgs {
    /// Configuration file (yaml, yml, toml or json); default: the first config.* found in
    /// /etc/armada, /config, $HOME/.armada, the working directory.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub server: ServerFlags,
}

/// The server's dotted flags (SPEC §4); all optional so that layering works.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct ServerFlags {
    /// Root of everything the node persists [default: armada-data]
    #[arg(long = "data-dir")]
    pub data_dir: Option<String>,
    /// Log level: error, warn, info, debug, trace (any case) [default: info]
    #[arg(long = "log-level")]
    pub log_level: Option<String>,
    /// Log format: text or json [default: text]
    #[arg(long = "log-format")]
    pub log_format: Option<String>,
    /// Client gRPC address (URL) [default: http://0.0.0.0:8443]
    #[arg(long = "api.address")]
    pub api_address: Option<String>,
    /// Client URL advertised in MemberList [default: the api.address, 127.0.0.1 for a wildcard
    /// host]
    #[arg(long = "api.advertise-address")]
    pub api_advertise_address: Option<String>,
    /// API TLS (https://, unixs://): server certificate chain (PEM), re-read when it changes
    #[arg(long = "api.cert-filename")]
    pub api_cert_filename: Option<String>,
    /// API TLS: private key (PEM) of the server certificate, re-read when it changes
    #[arg(long = "api.key-filename")]
    pub api_key_filename: Option<String>,
    /// API mutual TLS: CA (PEM) verifying client certificates; clients must present one
    #[arg(long = "api.ca-filename")]
    pub api_ca_filename: Option<String>,
    /// API mutual TLS: clients must present a certificate (verified against --api.ca-filename,
    /// else the system's trust store) [default: false]
    #[arg(long = "api.client-cert-auth", num_args = 0..=1, default_missing_value = "true")]
    pub api_client_cert_auth: Option<String>,
    /// API mutual TLS: a client certificate's subject CN must be this (excludes
    /// --api.allowed-hostname)
    #[arg(long = "api.allowed-cn")]
    pub api_allowed_cn: Option<String>,
    /// API mutual TLS: a client certificate must be valid for this host name or IP (excludes
    /// --api.allowed-cn)
    #[arg(long = "api.allowed-hostname")]
    pub api_allowed_hostname: Option<String>,
    /// Metrics and health address [default: http://127.0.0.1:8079]
    #[arg(long = "rest.address")]
    pub rest_address: Option<String>,
    /// Node id, 1.., unique in the cluster [default: 1]
    #[arg(long = "raft.node-id")]
    pub raft_node_id: Option<String>,
    /// This node's intra-cluster address, host:port (required)
    #[arg(long = "raft.address")]
    pub raft_address: Option<String>,
    /// Static initial membership `1=host:port,2=…`, the same on every node
    #[arg(long = "raft.initial-members")]
    pub raft_initial_members: Option<String>,
    /// Raft tick in milliseconds [default: 50]
    #[arg(long = "raft.rtt")]
    pub raft_rtt: Option<String>,
    /// Heartbeat interval in ticks [default: 2]
    #[arg(long = "raft.heartbeat-rtt")]
    pub raft_heartbeat_rtt: Option<String>,
    /// Minimum election timeout in ticks [default: 20]
    #[arg(long = "raft.election-rtt")]
    pub raft_election_rtt: Option<String>,
    /// Snapshot every N applied entries, 0 = never [default: 10000]
    #[arg(long = "raft.snapshot-entries")]
    pub raft_snapshot_entries: Option<String>,
    /// Log entries kept after a snapshot, for follower clusters [default: 5000]
    #[arg(long = "raft.compaction-overhead")]
    pub raft_compaction_overhead: Option<String>,
    /// Cluster CA certificate (PEM) for mutual TLS between nodes
    #[arg(long = "raft.ca-filename")]
    pub raft_ca_filename: Option<String>,
    /// This node's certificate chain (PEM) for the cluster transport
    #[arg(long = "raft.cert-filename")]
    pub raft_cert_filename: Option<String>,
    /// This node's private key (PEM) for the cluster transport
    #[arg(long = "raft.key-filename")]
    pub raft_key_filename: Option<String>,
    /// Replication gRPC address (URL) [default: http://0.0.0.0:8444]
    #[arg(long = "replication.address")]
    pub replication_address: Option<String>,
    /// Bearer token follower clusters present (empty = no check)
    #[arg(long = "replication.token")]
    pub replication_token: Option<String>,
    /// Follower: the leader cluster's replication address(es), comma separated URLs
    #[arg(long = "replication.leader-address")]
    pub replication_leader_address: Option<String>,
    /// Leader: CA (PEM) verifying follower clusters' client certificates (they must present
    /// one). Follower: CA (PEM) that signed the leader's replication certificate
    #[arg(long = "replication.ca-filename")]
    pub replication_ca_filename: Option<String>,
    /// Leader: replication server certificate (PEM, re-read when it changes). Follower: client
    /// certificate presented to the leader cluster
    #[arg(long = "replication.cert-filename")]
    pub replication_cert_filename: Option<String>,
    /// Private key (PEM) of --replication.cert-filename
    #[arg(long = "replication.key-filename")]
    pub replication_key_filename: Option<String>,
    /// Leader: follower clusters must present a client certificate (verified against
    /// --replication.ca-filename, else the system's trust store) [default: false]
    #[arg(
        long = "replication.client-cert-auth",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub replication_client_cert_auth: Option<String>,
    /// Leader: a follower's client certificate subject CN must be this
    #[arg(long = "replication.allowed-cn")]
    pub replication_allowed_cn: Option<String>,
    /// Leader: a follower's client certificate must be valid for this host name or IP
    #[arg(long = "replication.allowed-hostname")]
    pub replication_allowed_hostname: Option<String>,
    /// Follower: name the leader's certificate must be valid for (and SNI), instead of the
    /// host of --replication.leader-address
    #[arg(long = "replication.server-name")]
    pub replication_server_name: Option<String>,
    /// Follower: how often the table set is reconciled with the leader's [default: 5s]
    #[arg(long = "replication.reconcile-interval")]
    pub replication_reconcile_interval: Option<String>,
    /// Follower: snapshot bootstraps at once per node [default: 1]
    #[arg(long = "replication.max-recovery-in-flight")]
    pub replication_max_recovery_in_flight: Option<String>,
    /// Recent log entries kept in memory per table for follower clusters, 0 = none
    /// [default: 4096]
    #[arg(long = "replication.log-cache-size")]
    pub replication_log_cache_size: Option<String>,
    /// Tables created at start-up if missing, comma separated
    #[arg(long = "tables.names")]
    pub tables_names: Option<String>,
    /// Bearer token for the Tables API (empty = no check)
    #[arg(long = "tables.token")]
    pub tables_token: Option<String>,
    /// Bearer token for the Maintenance API (empty = no check)
    #[arg(long = "maintenance.token")]
    pub maintenance_token: Option<String>,
    /// Name of this node's cluster in MemberList and Status [default: leader, or follower]
    #[arg(long = "cluster.name")]
    pub cluster_name: Option<String>,
}

impl ServerFlags {
    /// The flags that were given, by dotted key.
    pub fn given(&self) -> BTreeMap<String, String> {
        let pairs = [
            ("data-dir", &self.data_dir),
            ("log-level", &self.log_level),
            ("log-format", &self.log_format),
            ("api.address", &self.api_address),
            ("api.advertise-address", &self.api_advertise_address),
            ("api.cert-filename", &self.api_cert_filename),
            ("api.key-filename", &self.api_key_filename),
            ("api.ca-filename", &self.api_ca_filename),
            ("api.client-cert-auth", &self.api_client_cert_auth),
            ("api.allowed-cn", &self.api_allowed_cn),
            ("api.allowed-hostname", &self.api_allowed_hostname),
            ("rest.address", &self.rest_address),
            ("raft.node-id", &self.raft_node_id),
            ("raft.address", &self.raft_address),
            ("raft.initial-members", &self.raft_initial_members),
            ("raft.rtt", &self.raft_rtt),
            ("raft.heartbeat-rtt", &self.raft_heartbeat_rtt),
            ("raft.election-rtt", &self.raft_election_rtt),
            ("raft.snapshot-entries", &self.raft_snapshot_entries),
            ("raft.compaction-overhead", &self.raft_compaction_overhead),
            ("raft.ca-filename", &self.raft_ca_filename),
            ("raft.cert-filename", &self.raft_cert_filename),
            ("raft.key-filename", &self.raft_key_filename),
            ("replication.address", &self.replication_address),
            ("replication.token", &self.replication_token),
            (
                "replication.leader-address",
                &self.replication_leader_address,
            ),
            ("replication.ca-filename", &self.replication_ca_filename),
            ("replication.cert-filename", &self.replication_cert_filename),
            ("replication.key-filename", &self.replication_key_filename),
            (
                "replication.client-cert-auth",
                &self.replication_client_cert_auth,
            ),
            ("replication.allowed-cn", &self.replication_allowed_cn),
            (
                "replication.allowed-hostname",
                &self.replication_allowed_hostname,
            ),
            ("replication.server-name", &self.replication_server_name),
            (
                "replication.reconcile-interval",
                &self.replication_reconcile_interval,
            ),
            (
                "replication.max-recovery-in-flight",
                &self.replication_max_recovery_in_flight,
            ),
            (
                "replication.log-cache-size",
                &self.replication_log_cache_size,
            ),
            ("tables.names", &self.tables_names),
            ("tables.token", &self.tables_token),
            ("maintenance.token", &self.maintenance_token),
            ("cluster.name", &self.cluster_name),
        ];
        debug_assert_eq!(pairs.len(), config::KEYS.len());
        pairs
            .into_iter()
            .filter_map(|(key, value)| value.as_ref().map(|value| (key.to_string(), value.clone())))
            .collect()
    }
}

/// Resolves the configuration from the file, the environment and the given flags.
pub fn resolve(
    config_file: Option<PathBuf>,
    flags: &ServerFlags,
    base: ServerConfig,
) -> anyhow::Result<ServerConfig> {
    config::load(
        Sources {
            file: config_file,
            environment: std::env::vars().collect(),
            flags: flags.given(),
        },
        base,
    )
    .map_err(|message| anyhow::Error::new(super::exit::UsageError(message)))
}

/// Resolves when the process is asked to stop (SIGTERM or Ctrl-C).
pub async fn termination() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}

/// `armada follower`: the same flags; `--replication.leader-address` is required.
pub async fn run_follower(args: LeaderArgs) -> anyhow::Result<()> {
    let base = ServerConfig {
        role: config::NodeRole::Follower,
        ..ServerConfig::default()
    };
    let config = resolve(args.config, &args.server, base)?;
    start_logging(&config);
    armada_server::server::run(config, termination(), |_| {}).await
}

pub async fn run(args: LeaderArgs) -> anyhow::Result<()> {
    let config = resolve(args.config, &args.server, ServerConfig::default())?;
    start_logging(&config);
    armada_server::server::run(config, termination(), |_| {}).await
}

/// Sets up logging, then logs what configuration resolution found before logs existed: the
/// config file read and settings that are valid but probably unintended.
pub fn start_logging(config: &ServerConfig) {
    armada_server::telemetry::init_logging(&config.log_level, &config.log_format);
    match &config.config_file {
        Some(file) => tracing::info!(config_file = %file.display(), "configuration file loaded"),
        None => tracing::info!("no configuration file: flags, environment and defaults only"),
    }
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
}
