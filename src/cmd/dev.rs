//! `armada dev`: the embedded default. With no flags on a fresh machine it runs, in one process,
//! a single-node leader cluster and a single-node follower cluster replicating from it, with
//! their data in `./armada-data/{leader,follower}`, on loopback, and prints where they listen and
//! a first command to try (write on the leader, read on the follower).
//!
//! Each node runs on a tokio runtime of its own whose threads record into a metrics registry
//! of the node's own, so every node's `/metrics` shows that node only, as in production where
//! each node is a process. A table created on the leader reaches the follower through the
//! leader's metadata feed within milliseconds, so the printed commands work straight away.

use std::path::PathBuf;

use armada_server::config::{NodeRole, ServerConfig};

use super::leader::{ServerFlags, resolve, termination};

// The shared server flags' help states `armada leader`'s defaults; `dev` binds elsewhere
// (loopback, its own Raft port, terse logs) and sets some flags per node itself, so its help
// says what it really does, from the very defaults it uses.

/// How dev moves a node's ports.
const PER_NODE: &str = "node i of the leader cluster adds 10 × (i − 1) to the port, the \
                        follower cluster's nodes add 100 more";
/// For the flags that dev sets itself.
const SET_PER_NODE: &str = "set by dev for each node; a value given is ignored";

fn api_address_help(arg: clap::Arg) -> clap::Arg {
    let default = dev_defaults().api.address;
    arg.help(format!(
        "Client gRPC address (URL) of leader node 1; {PER_NODE} [default: {default}]"
    ))
}

fn replication_address_help(arg: clap::Arg) -> clap::Arg {
    let default = dev_defaults().replication.address;
    arg.help(format!(
        "Replication gRPC address (URL) of leader node 1; {PER_NODE} [default: {default}]"
    ))
}

fn rest_address_help(arg: clap::Arg) -> clap::Arg {
    let default = dev_defaults().rest.address;
    arg.help(format!(
        "Metrics and health address of leader node 1; {PER_NODE} [default: {default}]"
    ))
}

fn raft_address_help(arg: clap::Arg) -> clap::Arg {
    let default = dev_defaults().raft.address;
    arg.help(format!(
        "Intra-cluster address of leader node 1; {PER_NODE} [default: {default}]"
    ))
}

fn log_level_help(arg: clap::Arg) -> clap::Arg {
    let default = dev_defaults().log_level;
    arg.help(format!(
        "Log level: error, warn, info, debug, trace [default: {default}]"
    ))
}

fn set_per_node_help(arg: clap::Arg) -> clap::Arg {
    let what = arg.get_help().map(ToString::to_string).unwrap_or_default();
    let what = what
        .split([';', ',', '[', '`'])
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    arg.help(format!("{what}: {SET_PER_NODE}"))
}

// Clippy takes the repeated help function for a duplicated attribute; each names another flag.
#[allow(clippy::duplicated_attributes)]
#[derive(clap::Args, Debug)]
#[command(
    mut_arg("api_address", api_address_help),
    mut_arg("replication_address", replication_address_help),
    mut_arg("rest_address", rest_address_help),
    mut_arg("raft_address", raft_address_help),
    mut_arg("log_level", log_level_help),
    mut_arg("api_advertise_address", set_per_node_help),
    mut_arg("raft_node_id", set_per_node_help),
    mut_arg("raft_initial_members", set_per_node_help),
    mut_arg("replication_leader_address", set_per_node_help)
)]
pub struct DevArgs {
    /// Nodes in the local leader cluster (1, 3 or 5). Node i uses the configured ports plus
    /// 10 × (i − 1) and keeps its data in `<data-dir>/leader/node<i>`.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=5))]
    pub nodes: u64,
    /// Nodes in the local follower cluster (0 = none, 1, 3 or 5); it uses the leader's ports
    /// plus 100 and keeps its data in `<data-dir>/follower`.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(0..=5))]
    pub follower_nodes: u64,
    /// Configuration file, as for `armada leader`.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub server: ServerFlags,
}

/// Defaults of the dev topology: everything on loopback, logs terse.
fn dev_defaults() -> ServerConfig {
    let defaults = ServerConfig::default();
    ServerConfig {
        log_level: "warn".into(),
        api: armada_server::config::ApiConfig {
            address: "http://127.0.0.1:8443".into(),
            ..defaults.api.clone()
        },
        replication: armada_server::config::ReplicationConfig {
            address: "http://127.0.0.1:8444".into(),
            ..defaults.replication.clone()
        },
        raft: armada_server::config::RaftSettings {
            address: "127.0.0.1:8445".into(),
            ..defaults.raft.clone()
        },
        ..defaults
    }
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let config = resolve(args.config, &args.server, dev_defaults())?;
    armada_server::telemetry::init_logging(&config.log_level, &config.log_format);
    run_topology(config, args.nodes, args.follower_nodes).await
}

fn print_first_commands(leader_cluster_api: &str, follower_api: Option<&str>) {
    println!();
    println!("Try:");
    println!("  armada table create demo --address {leader_cluster_api}");
    println!("  armada kv put demo hello world --address {leader_cluster_api}");
    println!(
        "  armada kv get demo hello --address {}",
        follower_api.unwrap_or(leader_cluster_api)
    );
    println!();
    println!("Stop with Ctrl-C.");
}

/// `address` with its port moved by `offset` (port 0 stays 0: the OS picks).
fn shift_port(address: &str, offset: u16) -> anyhow::Result<String> {
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| anyhow::anyhow!("{address} has no port"))?;
    let port: u16 = port.trim_end_matches('/').parse()?;
    if port == 0 {
        return Ok(address.to_string());
    }
    let shifted = port
        .checked_add(offset)
        .ok_or_else(|| anyhow::anyhow!("{address}: port {port} + {offset} is too large"))?;
    Ok(format!("{host}:{shifted}"))
}

/// Raft addresses of every node: the configured port plus 10 × (i − 1), or free UDP ports when
/// the configured port is 0 (peers must know each other's addresses before they start).
fn raft_addresses(base: &str, nodes: u64) -> anyhow::Result<Vec<String>> {
    let (host, port) = base
        .rsplit_once(':')
        .ok_or_else(|| anyhow::anyhow!("raft.address {base} has no port"))?;
    if port == "0" {
        let sockets = (0..nodes)
            .map(|_| std::net::UdpSocket::bind(format!("{host}:0")))
            .collect::<Result<Vec<_>, _>>()?;
        return sockets
            .iter()
            .map(|socket| Ok(socket.local_addr()?.to_string()))
            .collect();
    }
    (0..nodes)
        .map(|i| shift_port(base, 10 * i as u16))
        .collect()
}

/// Port offset of the follower cluster's nodes from the leader cluster's.
const FOLLOWER_PORT_OFFSET: u16 = 100;

/// Runs the leader cluster, then the follower cluster pointed at it, until a signal.
async fn run_topology(base: ServerConfig, nodes: u64, follower_nodes: u64) -> anyhow::Result<()> {
    std::fs::create_dir_all(&base.data_dir)?;
    let data_dir = std::fs::canonicalize(&base.data_dir)?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let (events, mut event) = tokio::sync::mpsc::channel::<NodeEvent>(64);
    let mut servers = Vec::new();
    // One signal listener for the whole run: a signal must not fall between two listeners.
    let terminated = termination();
    tokio::pin!(terminated);

    let leader_cluster_configs = cluster_configs(&base, nodes, &data_dir.join("leader"), 0)?;
    for config in leader_cluster_configs {
        servers.push(spawn_node(
            "leader",
            config,
            stopped.clone(),
            events.clone(),
        ));
    }
    let mut failure = None;
    let leader_cluster = wait_cluster(&mut event, &mut terminated, nodes, &mut failure).await;

    let mut follower_cluster = std::collections::BTreeMap::new();
    if failure.is_none() && leader_cluster.len() == nodes as usize && follower_nodes > 0 {
        for config in cluster_configs(
            &follower_base_config(&base, &leader_cluster),
            follower_nodes,
            &data_dir.join("follower"),
            FOLLOWER_PORT_OFFSET,
        )? {
            servers.push(spawn_node(
                "follower",
                config,
                stopped.clone(),
                events.clone(),
            ));
        }
        follower_cluster =
            wait_cluster(&mut event, &mut terminated, follower_nodes, &mut failure).await;
    }
    drop(events);

    let complete =
        leader_cluster.len() == nodes as usize && follower_cluster.len() == follower_nodes as usize;
    if complete && failure.is_none() {
        print_running(&data_dir, &leader_cluster, &follower_cluster);
        tokio::select! {
            _ = &mut terminated => {}
            Some(NodeEvent::Exited(label, id, error)) = event.recv() => {
                failure = Some(format!("{label} node {id} stopped: {}", error.unwrap_or_else(|| "no error".into())));
            }
        }
    }
    let _ = stop.send(true);
    for server in servers {
        // Start-up cannot be interrupted: a node still starting finishes (or fails) first.
        let _ = server.await;
    }
    match failure {
        Some(message) => Err(anyhow::anyhow!(message)),
        None => Ok(()),
    }
}

/// The bound addresses of a cluster's nodes, by node id.
type ClusterAddresses = std::collections::BTreeMap<u64, armada_server::server::BoundAddresses>;

/// The follower cluster's base configuration: `base` in the follower role, pointed at the
/// leader cluster's replication addresses.
fn follower_base_config(base: &ServerConfig, leader_cluster: &ClusterAddresses) -> ServerConfig {
    let mut follower_base = base.clone();
    follower_base.role = NodeRole::Follower;
    // The default cluster name was derived for the leader role the config was resolved in.
    if follower_base.cluster.name == "leader" {
        follower_base.cluster.name = "follower".into();
    }
    follower_base.replication.leader_address = leader_cluster
        .values()
        .map(|bound| bound.replication.clone())
        .collect::<Vec<_>>()
        .join(",");
    follower_base
}

/// Tells the user what runs where, and the first commands to try.
fn print_running(
    data_dir: &std::path::Path,
    leader_cluster: &ClusterAddresses,
    follower_cluster: &ClusterAddresses,
) {
    let follower_part = match follower_cluster.len() {
        0 => String::new(),
        n => format!(" and a {n}-node follower cluster"),
    };
    println!(
        "Armada dev is running: a {}-node leader cluster{follower_part}.",
        leader_cluster.len()
    );
    println!("  data: {}", data_dir.display());
    for (id, bound) in leader_cluster {
        println!(
            "  leader node {id}: API {}  replication {}  metrics {}/metrics",
            bound.api, bound.replication, bound.rest
        );
    }
    for (id, bound) in follower_cluster {
        println!(
            "  follower node {id}: API {}  metrics {}/metrics",
            bound.api, bound.rest
        );
    }
    println!(
        "Any node takes writes (a follower forwards them to the leader cluster) and serves reads."
    );
    if let Some(first) = leader_cluster.values().next() {
        print_first_commands(
            &first.api,
            follower_cluster
                .values()
                .next()
                .map(|bound| bound.api.as_str()),
        );
    }
}

/// The configurations of a cluster's nodes: node i uses the base ports plus `offset` plus
/// 10 × (i − 1) and keeps its data in `<root>/node<i>`.
fn cluster_configs(
    base: &ServerConfig,
    nodes: u64,
    root: &std::path::Path,
    offset: u16,
) -> anyhow::Result<Vec<ServerConfig>> {
    let raft = raft_addresses(&shift_port(&base.raft.address, offset)?, nodes)?;
    let members = raft
        .iter()
        .enumerate()
        .map(|(i, address)| format!("{}={address}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    (0..nodes)
        .map(|i| {
            let offset = offset + 10 * i as u16;
            let mut config = base.clone();
            config.data_dir = root.join(format!("node{}", i + 1));
            config.raft.node_id = i + 1;
            config.raft.address = raft[i as usize].clone();
            config.raft.initial_members = members.clone();
            config.api.address = shift_port(&base.api.address, offset)?;
            config.api.advertise_address = config.api.address.clone();
            config.replication.address = shift_port(&base.replication.address, offset)?;
            config.rest.address = shift_port(&base.rest.address, offset)?;
            Ok(config)
        })
        .collect()
}

/// Worker threads of each node's runtime (the machine is shared by every node of the topology).
const NODE_WORKER_THREADS: usize = 2;

/// Runs one node on a runtime of its own, whose threads record into the node's own metrics
/// registry: with one registry for the process, the leader's and the follower's `/metrics`
/// would merge (a table of the same name, the same gRPC methods: one series for both).
fn spawn_node(
    label: &'static str,
    config: ServerConfig,
    mut stopped: tokio::sync::watch::Receiver<bool>,
    events: tokio::sync::mpsc::Sender<NodeEvent>,
) -> tokio::sync::oneshot::Receiver<anyhow::Result<()>> {
    let id = config.raft.node_id;
    let (done, finished) = tokio::sync::oneshot::channel();
    let events_for_failure = events.clone();
    let node = async move {
        let shutdown = async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        let ready = events.clone();
        let result = armada_server::server::run(config, shutdown, move |bound| {
            let _ = ready.try_send(NodeEvent::Ready(id, bound.clone()));
        })
        .await;
        let _ = events
            .send(NodeEvent::Exited(
                label,
                id,
                result.as_ref().err().map(|e| format!("{e:#}")),
            ))
            .await;
        result
    };
    let failed = events_for_failure.clone();
    let started = std::thread::Builder::new()
        .name(format!("dev-{label}-{id}"))
        .spawn(move || {
            let result = match node_runtime(label, id) {
                Ok(runtime) => runtime.block_on(node),
                Err(error) => {
                    let message = Some(format!("{error:#}"));
                    let _ = failed.blocking_send(NodeEvent::Exited(label, id, message));
                    Err(error)
                }
            };
            let _ = done.send(result);
        });
    if let Err(error) = started {
        let message = Some(error.to_string());
        let _ = events_for_failure.try_send(NodeEvent::Exited(label, id, message));
    }
    finished
}

/// A runtime for one node whose threads, this one included, record into a registry of the
/// node's own.
fn node_runtime(label: &str, id: u64) -> anyhow::Result<tokio::runtime::Runtime> {
    let enter = armada_server::telemetry::separate_registry()?;
    enter();
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(NODE_WORKER_THREADS)
        .thread_name(format!("{label}-{id}"))
        .on_thread_start(enter)
        .enable_all()
        .build()?)
}

/// Waits until `nodes` nodes reported ready (or one failed, or a signal came).
async fn wait_cluster(
    event: &mut tokio::sync::mpsc::Receiver<NodeEvent>,
    terminated: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    nodes: u64,
    failure: &mut Option<String>,
) -> ClusterAddresses {
    let mut bound = std::collections::BTreeMap::new();
    while bound.len() < nodes as usize && failure.is_none() {
        tokio::select! {
            next = event.recv() => match next {
                Some(NodeEvent::Ready(id, addresses)) => { bound.insert(id, addresses); }
                Some(NodeEvent::Exited(label, id, error)) => {
                    *failure = Some(format!("{label} node {id} stopped during start-up: {}", error.unwrap_or_default()));
                }
                None => *failure = Some("every node stopped".into()),
            },
            _ = terminated.as_mut() => break,
        }
    }
    bound
}

enum NodeEvent {
    Ready(u64, armada_server::server::BoundAddresses),
    Exited(&'static str, u64, Option<String>),
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Args;

    #[test]
    fn help_shows_the_addresses_dev_binds() {
        let help = DevArgs::augment_args(clap::Command::new("dev"))
            .render_help()
            .to_string();
        let defaults = dev_defaults();
        for bound in [
            &defaults.api.address,
            &defaults.replication.address,
            &defaults.rest.address,
            &defaults.raft.address,
        ] {
            assert!(help.contains(&format!("[default: {bound}]")), "{help}");
        }
        assert!(
            !help.contains("0.0.0.0"),
            "dev binds only loopback:\n{help}"
        );
        assert!(help.contains("[default: warn]"), "{help}");
        assert!(help.contains("Node id: set by dev for each node"), "{help}");
    }
}
