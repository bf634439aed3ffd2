//! `armada table create|list|delete`: the Tables API of the leader cluster (followers: list
//! only). Human output is one line per table; `--json` prints the objects.

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::json;

use super::kv::{ClientArgs, Output};

/// `armada table`.
#[derive(Args)]
pub struct TableArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: TableCommand,
}

#[derive(Subcommand)]
pub enum TableCommand {
    /// Create a table (names: 1..=255 bytes of [A-Za-z0-9._-]).
    Create { name: String },
    /// List tables, sorted by name.
    #[command(alias = "ls")]
    List,
    /// Delete a table and all its data.
    #[command(alias = "rm")]
    Delete { name: String },
}

pub async fn run(args: TableArgs) -> anyhow::Result<()> {
    let output = Output::new(args.client.json);
    let client = &args.client;
    match args.command {
        TableCommand::Create { name } => {
            let response = client
                .with_failover(|client| {
                    let name = name.clone();
                    async move { client.create_table(name).await }
                })
                .await
                .with_context(|| format!("create table {name:?}"))?;
            if output.json {
                return output.print_json(&json!({"name": name, "id": response.id}));
            }
            println!("created table {name} (id {})", response.id);
        }
        TableCommand::List => {
            let mut tables = client
                .with_failover(|client| async move { client.list_tables().await })
                .await
                .context("list tables")?
                .tables;
            tables.sort_by(|left, right| left.name.cmp(&right.name));
            if output.json {
                let tables: Vec<_> = tables
                    .iter()
                    .map(|table| json!({"name": table.name, "id": table.id}))
                    .collect();
                return output.print_json(&json!({ "tables": tables }));
            }
            for table in &tables {
                println!("{}\t{}", table.name, table.id);
            }
        }
        TableCommand::Delete { name } => {
            client
                .with_failover(|client| {
                    let name = name.clone();
                    async move { client.delete_table(name).await }
                })
                .await
                .with_context(|| format!("delete table {name:?}"))?;
            if output.json {
                return output.print_json(&json!({"name": name, "deleted": true}));
            }
            println!("deleted table {name}");
        }
    }
    Ok(())
}
