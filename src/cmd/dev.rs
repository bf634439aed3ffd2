//! `armada dev`: the embedded default. With no flags on a fresh machine it runs a single-node
//! leader cluster with its data in `./armada-data`, on loopback, and prints where it listens
//! and a first command to try. (It grows a follower cluster when follower clusters exist.)

use std::path::PathBuf;

use armada_server::config::ServerConfig;

use super::leader::{ServerFlags, resolve, termination};

#[derive(clap::Args, Debug)]
pub struct DevArgs {
    /// Nodes in the local leader cluster (1, 3 or 5). Node i uses the configured ports plus
    /// 10 × (i − 1) and keeps its data in `<data-dir>/node<i>`.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=5))]
    pub nodes: u64,
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
    if args.nodes == 1 {
        return run_single(config).await;
    }
    run_cluster(config, args.nodes).await
}

async fn run_single(config: ServerConfig) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)?;
    let data_dir = std::fs::canonicalize(&config.data_dir)?;
    armada_server::server::run(config, termination(), move |bound| {
        println!("Armada dev is running (single-node leader cluster).");
        println!("  data:        {}", data_dir.display());
        println!("  API:         {}", bound.api);
        println!("  replication: {}", bound.replication);
        println!("  metrics:     {}/metrics", bound.rest);
        print_first_commands(&bound.api);
    })
    .await
}

fn print_first_commands(api: &str) {
    println!();
    println!("Try:");
    println!("  armada table create demo --address {api}");
    println!("  armada kv put demo hello world --address {api}");
    println!("  armada kv get demo hello --address {api}");
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

async fn run_cluster(base: ServerConfig, nodes: u64) -> anyhow::Result<()> {
    std::fs::create_dir_all(&base.data_dir)?;
    let data_dir = std::fs::canonicalize(&base.data_dir)?;
    let raft = raft_addresses(&base.raft.address, nodes)?;
    let members = raft
        .iter()
        .enumerate()
        .map(|(i, address)| format!("{}={address}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let (events, mut event) = tokio::sync::mpsc::channel::<NodeEvent>(2 * nodes as usize);
    let mut servers = Vec::new();
    for i in 0..nodes {
        let offset = 10 * i as u16;
        let mut config = base.clone();
        config.data_dir = data_dir.join(format!("node{}", i + 1));
        config.raft.node_id = i + 1;
        config.raft.address = raft[i as usize].clone();
        config.raft.initial_members = members.clone();
        config.api.address = shift_port(&base.api.address, offset)?;
        config.api.advertise_address = config.api.address.clone();
        config.replication.address = shift_port(&base.replication.address, offset)?;
        config.rest.address = shift_port(&base.rest.address, offset)?;
        let mut stopped = stopped.clone();
        let events = events.clone();
        servers.push(tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            };
            let ready = events.clone();
            let result = armada_server::server::run(config, shutdown, move |bound| {
                let _ = ready.try_send(NodeEvent::Ready(i + 1, bound.clone()));
            })
            .await;
            let _ = events
                .send(NodeEvent::Exited(
                    i + 1,
                    result.as_ref().err().map(|e| format!("{e:#}")),
                ))
                .await;
            result
        }));
    }
    drop(events);
    // One signal listener for the whole run: a signal must not fall between two listeners.
    let terminated = termination();
    tokio::pin!(terminated);
    let mut bound = std::collections::BTreeMap::new();
    let mut failure = None;
    while bound.len() < nodes as usize && failure.is_none() {
        tokio::select! {
            next = event.recv() => match next {
                Some(NodeEvent::Ready(id, addresses)) => { bound.insert(id, addresses); }
                Some(NodeEvent::Exited(id, error)) => {
                    failure = Some(format!("node {id} stopped during start-up: {}", error.unwrap_or_default()));
                }
                None => failure = Some("every node stopped".into()),
            },
            _ = &mut terminated => break,
        }
    }
    if bound.len() == nodes as usize {
        println!("Armada dev is running ({nodes}-node leader cluster).");
        println!("  data: {}", data_dir.display());
        for (id, addresses) in &bound {
            println!(
                "  node {id}: API {}  replication {}  metrics {}/metrics",
                addresses.api, addresses.replication, addresses.rest
            );
        }
        println!("Any node takes writes and linearizable reads.");
        if let Some(first) = bound.values().next() {
            print_first_commands(&first.api);
        }
        tokio::select! {
            _ = &mut terminated => {}
            Some(NodeEvent::Exited(id, error)) = event.recv() => {
                failure = Some(format!("node {id} stopped: {}", error.unwrap_or_else(|| "no error".into())));
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

enum NodeEvent {
    Ready(u64, armada_server::server::BoundAddresses),
    Exited(u64, Option<String>),
}
