//! `armada status` and `armada members`: what a node reports about itself and its cluster
//! (`regatta.v1.Cluster`). Tables are shown sorted by name (the wire map has no order).

use anyhow::Context;
use armada_proto::regatta::v1::{MemberListResponse, StatusResponse, TableStatus};
use clap::Args;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde_json::{Map, Value, json};

use super::kv::{ClientArgs, Output};

/// `armada status`.
#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Also show the node's effective configuration (secrets are redacted by the server).
    #[arg(long)]
    pub config: bool,
}

/// `armada members`.
#[derive(Args)]
pub struct MembersArgs {
    #[command(flatten)]
    pub client: ClientArgs,
}

pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let output = Output::new(args.client.json);
    let config = args.config;
    let status = args
        .client
        .with_failover(|client| async move { client.status(config).await })
        .await
        .context("status")?;
    if output.json {
        return output.print_json(&status_json(&status));
    }
    print!("{}", status_text(&status));
    Ok(())
}

pub async fn run_members(args: MembersArgs) -> anyhow::Result<()> {
    let output = Output::new(args.client.json);
    let members = args
        .client
        .with_failover(|client| async move { client.member_list().await })
        .await
        .context("members")?;
    if output.json {
        return output.print_json(&members_json(&members));
    }
    print!("{}", members_text(&members));
    Ok(())
}

fn sorted_tables(status: &StatusResponse) -> Vec<(&String, &TableStatus)> {
    let mut tables: Vec<_> = status.tables.iter().collect();
    tables.sort_by(|left, right| left.0.cmp(right.0));
    tables
}

/// Table names up to this many characters are shown in the grid; a longer one switches the
/// output to one block per table, which stays readable at any name length.
const MAX_GRID_NAME_CHARS: usize = 32;

/// Hex digits of the content hash shown in the grid (enough to compare replicas by eye; the
/// block layout and `--json` show all of it).
const GRID_HASH_CHARS: usize = 12;

fn status_text(status: &StatusResponse) -> String {
    let mut text = format!("node {}  version {}\n", status.id, status.version);
    if !status.info.is_empty() {
        text.push_str(&format!("{}\n", status.info));
    }
    if status.replication_seconds_since_contact > 0.0 {
        text.push_str(&format!(
            "last contact with the leader cluster: {:.1} s ago\n",
            status.replication_seconds_since_contact
        ));
    }
    let tables = sorted_tables(status);
    if tables
        .iter()
        .any(|(name, _)| name.chars().count() > MAX_GRID_NAME_CHARS)
    {
        text.push_str(&table_blocks(&tables));
    } else {
        text.push_str(&table_grid(&tables));
    }
    for error in &status.errors {
        text.push_str(&format!("error: {error}\n"));
    }
    if let Some(config) = &status.config {
        text.push_str("configuration:\n");
        for (key, value) in &config.fields {
            text.push_str(&format!("  {key} = {}\n", struct_value(value)));
        }
    }
    text
}

/// One row per table, and a second grid of replication progress on follower nodes.
fn table_grid(tables: &[(&String, &TableStatus)]) -> String {
    let mut grid = Table::new();
    grid.load_preset(UTF8_FULL_CONDENSED).set_header([
        "table", "shard", "leader", "term", "index", "applied", "revision", "log size", "db size",
        "hash",
    ]);
    for (name, table_status) in tables {
        let hash: String = table_status
            .content_hash
            .chars()
            .take(GRID_HASH_CHARS)
            .collect();
        grid.add_row([
            (*name).clone(),
            table_status.shard_id.to_string(),
            table_status.leader.clone(),
            table_status.raft_term.to_string(),
            table_status.raft_index.to_string(),
            table_status.raft_applied_index.to_string(),
            table_status.revision.to_string(),
            byte_size(table_status.log_size),
            byte_size(table_status.db_size),
            hash,
        ]);
    }
    let mut text = format!("{grid}\n");
    let replicated: Vec<_> = tables
        .iter()
        .filter(|(_, table)| is_replica(table))
        .collect();
    if !replicated.is_empty() {
        let mut lag = Table::new();
        lag.load_preset(UTF8_FULL_CONDENSED).set_header([
            "table",
            "leader index",
            "applied leader index",
            "lag (entries)",
            "lag (seconds)",
            "last contact (s ago)",
            "snapshot recoveries",
        ]);
        for (name, table_status) in replicated {
            lag.add_row([
                (*name).clone(),
                table_status.replication_leader_index.to_string(),
                table_status.replication_applied_index.to_string(),
                table_status.replication_lag_entries.to_string(),
                format!("{:.3}", table_status.replication_lag_seconds),
                format!("{:.1}", table_status.replication_seconds_since_contact),
                table_status.replication_snapshot_recoveries.to_string(),
            ]);
        }
        text.push_str(&format!("replication from the leader cluster:\n{lag}\n"));
    }
    text
}

/// One block per table: the name on a line of its own, then short `field value` lines.
fn table_blocks(tables: &[(&String, &TableStatus)]) -> String {
    let mut text = String::new();
    for (name, table) in tables {
        text.push_str(&format!("table {name}\n"));
        text.push_str(&format!(
            "  shard {}  leader {}  term {}  index {}  applied {}  revision {}\n",
            table.shard_id,
            table.leader,
            table.raft_term,
            table.raft_index,
            table.raft_applied_index,
            table.revision
        ));
        text.push_str(&format!(
            "  log size {}  db size {}\n  hash {}\n",
            byte_size(table.log_size),
            byte_size(table.db_size),
            table.content_hash
        ));
        if is_replica(table) {
            text.push_str(&format!(
                "  replication: leader index {}  applied leader index {}  lag {} entries, {:.3} s  last contact {:.1} s ago  snapshot recoveries {}\n",
                table.replication_leader_index,
                table.replication_applied_index,
                table.replication_lag_entries,
                table.replication_lag_seconds,
                table.replication_seconds_since_contact,
                table.replication_snapshot_recoveries
            ));
        }
    }
    text
}

/// Whether the table is a follower cluster's replica (it reports replication progress).
fn is_replica(table: &armada_proto::regatta::v1::TableStatus) -> bool {
    table.replication_leader_index > 0 || table.replication_applied_index > 0
}

/// `1.5 MiB`-style sizes; negative sizes (unknown) are shown as given.
fn byte_size(bytes: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut size = bytes as f64;
    let mut unit = 0;
    while size >= 1024.0 && unit + 1 < UNITS.len() {
        size /= 1024.0;
        unit += 1;
    }
    format!("{size:.1} {}", UNITS[unit])
}

fn status_json(status: &StatusResponse) -> Value {
    let tables: Map<String, Value> = sorted_tables(status)
        .into_iter()
        .map(|(name, table)| {
            let value = json!({
                "shard_id": table.shard_id,
                "leader": table.leader,
                "raft_term": table.raft_term,
                "raft_index": table.raft_index,
                "raft_applied_index": table.raft_applied_index,
                "commit_index": table.commit_index,
                "first_log_index": table.first_log_index,
                "revision": table.revision,
                "log_size": table.log_size,
                "db_size": table.db_size,
                "content_hash": table.content_hash,
                "replication": is_replica(table).then(|| json!({
                    "leader_index": table.replication_leader_index,
                    "applied_leader_index": table.replication_applied_index,
                    "lag_entries": table.replication_lag_entries,
                    "lag_seconds": table.replication_lag_seconds,
                    "seconds_since_contact": table.replication_seconds_since_contact,
                    "snapshot_recoveries": table.replication_snapshot_recoveries,
                })),
            });
            (name.clone(), value)
        })
        .collect();
    let config = status.config.as_ref().map(|config| {
        Value::Object(
            config
                .fields
                .iter()
                .map(|(key, value)| (key.clone(), struct_value(value)))
                .collect(),
        )
    });
    json!({
        "id": status.id,
        "version": status.version,
        "info": status.info,
        "tables": tables,
        "config": config,
        "errors": status.errors,
        "replication_seconds_since_contact": status
            .replication_seconds_since_contact,
    })
}

/// A `google.protobuf.Value` as JSON.
fn struct_value(value: &prost_types::Value) -> Value {
    use prost_types::value::Kind;
    match &value.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::NumberValue(number)) => json!(number),
        Some(Kind::StringValue(text)) => Value::from(text.as_str()),
        Some(Kind::BoolValue(flag)) => Value::from(*flag),
        Some(Kind::StructValue(inner)) => Value::Object(
            inner
                .fields
                .iter()
                .map(|(key, value)| (key.clone(), struct_value(value)))
                .collect(),
        ),
        Some(Kind::ListValue(list)) => Value::Array(list.values.iter().map(struct_value).collect()),
    }
}

fn members_text(members: &MemberListResponse) -> String {
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_header(["id", "name", "peer URLs", "client URLs"]);
    for member in &members.members {
        table.add_row([
            member.id.clone(),
            member.name.clone(),
            member.peer_ur_ls.join(", "),
            member.client_ur_ls.join(", "),
        ]);
    }
    format!("cluster {}\n{table}\n", members.cluster)
}

fn members_json(members: &MemberListResponse) -> Value {
    let list: Vec<Value> = members
        .members
        .iter()
        .map(|member| {
            json!({
                "id": member.id,
                "name": member.name,
                "peer_urls": member.peer_ur_ls,
                "client_urls": member.client_ur_ls,
            })
        })
        .collect();
    json!({"cluster": members.cluster, "members": list})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(byte_size(0), "0 B");
        assert_eq!(byte_size(1023), "1023 B");
        assert_eq!(byte_size(1536), "1.5 KiB");
        assert_eq!(byte_size(5 * 1024 * 1024), "5.0 MiB");
    }

    #[test]
    fn long_table_names_switch_to_one_block_per_table() {
        let long = "a".repeat(255);
        let mut status = StatusResponse::default();
        let table = TableStatus {
            content_hash: "f".repeat(64),
            ..TableStatus::default()
        };
        status.tables.insert(long.clone(), table.clone());
        status.tables.insert("short".into(), table);
        let text = status_text(&status);
        assert!(text.contains(&format!("table {long}\n")), "{text}");
        for line in text.lines().filter(|line| !line.contains(&long)) {
            assert!(line.chars().count() <= 100, "{line}");
        }
        assert!(text.contains(&"f".repeat(64)), "{text}");
        // Short names keep the grid, with the hash shortened.
        status.tables.remove(&long);
        let text = status_text(&status);
        assert!(text.contains("│ short"), "{text}");
        assert!(!text.contains(&"f".repeat(13)), "{text}");
    }

    #[test]
    fn status_lists_tables_in_name_order_and_errors() {
        let mut status = StatusResponse {
            id: "1".into(),
            version: "0.1.0".into(),
            errors: vec!["table b: no leader".into()],
            ..StatusResponse::default()
        };
        for name in ["b", "a", "c"] {
            status.tables.insert(name.into(), TableStatus::default());
        }
        let text = status_text(&status);
        let positions: Vec<usize> = [" a ", " b ", " c "]
            .iter()
            .map(|name| text.find(name).expect(name))
            .collect();
        assert!(positions.windows(2).all(|pair| pair[0] < pair[1]), "{text}");
        assert!(text.contains("error: table b: no leader"));
        assert!(
            !text.contains("last contact"),
            "a leader-cluster node: {text}"
        );

        // A follower's staleness: seconds since it last heard from the leader cluster.
        status.replication_seconds_since_contact = 42.25;
        let replica = status.tables.get_mut("a").unwrap();
        replica.replication_leader_index = 7;
        replica.replication_seconds_since_contact = 41.5;
        let text = status_text(&status);
        assert!(
            text.contains("last contact with the leader cluster: 42.2 s ago"),
            "{text}"
        );
        assert!(text.contains("41.5"), "{text}");
        let json = status_json(&status);
        assert_eq!(json["replication_seconds_since_contact"], 42.25);
        assert_eq!(
            json["tables"]["a"]["replication"]["seconds_since_contact"],
            41.5
        );
        let names: Vec<&String> = json["tables"].as_object().unwrap().keys().collect();
        assert_eq!(names, ["a", "b", "c"]);
    }
}
