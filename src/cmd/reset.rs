//! `armada reset TABLE | --all`: `maintenance.v1.Maintenance/Reset` on a follower-cluster node.
//! The node wipes its replica of the table (or of every table) and bootstraps it again from a
//! snapshot of the leader cluster's; the command returns once that replica holds data again
//! (raise `--timeout` for large tables). A leader-cluster node answers `Unimplemented`.
//! The server's `--maintenance.token` is sent with `--token` / `ARMADA_TOKEN`.

use anyhow::Context;
use clap::Args;
use serde_json::json;

use super::kv::{ClientArgs, Output};

/// `armada reset`.
#[derive(Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["table", "all"])))]
pub struct ResetArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The table whose replica is rebuilt.
    pub table: Option<String>,
    /// Rebuild every table's replica.
    #[arg(long)]
    pub all: bool,
}

pub async fn run(args: ResetArgs) -> anyhow::Result<()> {
    let output = Output::new(args.client.json);
    let table = args.table.as_deref();
    let what = table.map_or("every table".to_string(), |table| format!("table {table}"));
    args.client
        .with_failover(|client| async move { client.reset(table).await })
        .await
        .with_context(|| format!("reset {what}"))?;
    if output.json {
        return output.print_json(&json!({"reset": table.map_or(json!("all"), |t| json!(t))}));
    }
    println!("reset {what}: bootstrapped again from the leader cluster");
    Ok(())
}
