//! `armada dev`: the embedded default. With no flags on a fresh machine it runs, in one process,
//! a single-node leader cluster and a single-node follower cluster replicating from it, with
//! their data in `./armada-data/{leader,follower}`, on loopback, and prints where they listen and
//! a first command to try (write on the leader, read on the follower).

use std::path::PathBuf;

use armada_server::config::{NodeRole, ServerConfig};

use super::leader::{ServerFlags, resolve, termination};

#[derive(clap::Args, Debug)]
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

fn print_first_commands(leader_api: &str, follower_api: Option<&str>) {
    println!();
    println!("Try:");
    println!("  armada table create demo --address {leader_api}");
    println!("  armada kv put demo hello world --address {leader_api}");
    println!(
        "  armada kv get demo hello --address {}",
        follower_api.unwrap_or(leader_api)
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

    let leader_specs = cluster_configs(&base, nodes, &data_dir.join("leader"), 0)?;
    for config in leader_specs {
        servers.push(spawn_node(
            "leader",
            config,
            stopped.clone(),
            events.clone(),
        ));
    }
    let mut failure = None;
    let leaders = wait_cluster(&mut event, &mut terminated, nodes, &mut failure).await;

    let mut followers = std::collections::BTreeMap::new();
    if failure.is_none() && leaders.len() == nodes as usize && follower_nodes > 0 {
        let mut follower_base = base.clone();
        follower_base.role = NodeRole::Follower;
        // The default cluster name was derived for the leader role the config was resolved in.
        if follower_base.cluster.name == "leader" {
            follower_base.cluster.name = "follower".into();
        }
        follower_base.replication.leader_address = leaders
            .values()
            .map(|bound| bound.replication.clone())
            .collect::<Vec<_>>()
            .join(",");
        for config in cluster_configs(
            &follower_base,
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
        followers = wait_cluster(&mut event, &mut terminated, follower_nodes, &mut failure).await;
    }
    drop(events);

    let complete = leaders.len() == nodes as usize && followers.len() == follower_nodes as usize;
    if complete && failure.is_none() {
        let follower_part = match follower_nodes {
            0 => String::new(),
            n => format!(" and a {n}-node follower cluster"),
        };
        println!("Armada dev is running: a {nodes}-node leader cluster{follower_part}.");
        println!("  data: {}", data_dir.display());
        for (id, bound) in &leaders {
            println!(
                "  leader node {id}: API {}  replication {}  metrics {}/metrics",
                bound.api, bound.replication, bound.rest
            );
        }
        for (id, bound) in &followers {
            println!(
                "  follower node {id}: API {}  metrics {}/metrics",
                bound.api, bound.rest
            );
        }
        println!(
            "Any node takes writes (a follower forwards them to the leader cluster) and serves reads."
        );
        if let Some(leader) = leaders.values().next() {
            print_first_commands(
                &leader.api,
                followers.values().next().map(|bound| bound.api.as_str()),
            );
        }
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

fn spawn_node(
    label: &'static str,
    config: ServerConfig,
    mut stopped: tokio::sync::watch::Receiver<bool>,
    events: tokio::sync::mpsc::Sender<NodeEvent>,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    let id = config.raft.node_id;
    tokio::spawn(async move {
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
    })
}

/// Waits until `nodes` nodes reported ready (or one failed, or a signal came).
async fn wait_cluster(
    event: &mut tokio::sync::mpsc::Receiver<NodeEvent>,
    terminated: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    nodes: u64,
    failure: &mut Option<String>,
) -> std::collections::BTreeMap<u64, armada_server::server::BoundAddresses> {
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
