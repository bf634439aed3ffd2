//! `armada dev`: the embedded default. With no flags on a fresh machine it runs a single-node
//! leader cluster with its data in `./armada-data`, on loopback, and prints where it listens
//! and a first command to try. (It grows a follower cluster when follower clusters exist.)

use std::path::PathBuf;

use armada_server::config::ServerConfig;

use super::leader::{ServerFlags, resolve, termination};

#[derive(clap::Args, Debug)]
pub struct DevArgs {
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
    let data_dir =
        std::fs::canonicalize(&config.data_dir).unwrap_or_else(|_| config.data_dir.clone());
    armada_server::server::run(config, termination(), move |bound| {
        println!("Armada dev is running (single-node leader cluster).");
        println!("  data:        {}", data_dir.display());
        println!("  API:         {}", bound.api);
        println!("  replication: {}", bound.replication);
        println!("  metrics:     {}/metrics", bound.rest);
        println!();
        println!("Try:");
        println!("  armada table create demo --address {}", bound.api);
        println!("  armada kv put demo hello world --address {}", bound.api);
        println!("  armada kv get demo hello --address {}", bound.api);
        println!();
        println!("Stop with Ctrl-C.");
    })
    .await
}
