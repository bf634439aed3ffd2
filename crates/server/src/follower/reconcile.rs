//! Mirroring the leader's table set: `Metadata.Get` every reconcile interval on every node
//! (which also refreshes the leader's index of each table for lag reporting); the node that
//! leads the follower's catalog group turns the differences into catalog changes.

use std::collections::BTreeMap;
use std::sync::Arc;

use openraft::async_runtime::WatchReceiver;
use std::sync::atomic::Ordering;
use std::time::Duration;

use armada_proto::replication::v1::MetadataRequest;

use super::{Follower, applied_leader_index};
use crate::node::Node;

/// Deadline of one `Metadata.Get`.
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of the catalog changes of one reconcile round.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn run(follower: Arc<Follower>) {
    let interval = match follower.node() {
        Some(node) => node.config.replication.reconcile_every(),
        None => return,
    };
    let mut failures = 0u32;
    loop {
        let Some(node) = follower.node() else { return };
        match reconcile_once(&follower, &node).await {
            Ok(()) => failures = 0,
            Err(error) => {
                failures += 1;
                // Say it once, then only now and then while the leader stays unreachable.
                if failures == 1 || failures.is_multiple_of(60) {
                    tracing::warn!(%error, leader = follower.leader_address(), "reconciling tables with the leader cluster failed");
                }
            }
        }
        super::record_metrics(&follower);
        drop(node);
        tokio::time::sleep(interval).await;
    }
}

/// Whether this node leads the follower cluster's catalog group.
fn leads_catalog(node: &Node) -> bool {
    node.catalog
        .server_metrics()
        .borrow_watched()
        .current_leader
        == Some(node.node_id.get())
}

async fn reconcile_once(follower: &Follower, node: &Arc<Node>) -> Result<(), String> {
    let mut request = tonic::Request::new(MetadataRequest {});
    request.set_timeout(METADATA_TIMEOUT);
    let mut client = follower.metadata_client();
    let answer = tokio::time::timeout(METADATA_TIMEOUT, client.get(request))
        .await
        .unwrap_or_else(|_| Err(tonic::Status::unavailable("no answer in time")));
    let response = match answer {
        Ok(response) => response.into_inner(),
        Err(status) => {
            follower.leader_reachable.store(false, Ordering::Relaxed);
            follower.rotate();
            return Err(format!("Metadata.Get: {}", super::describe_status(&status)));
        }
    };
    let desired: BTreeMap<String, Option<u64>> = response
        .tables
        .iter()
        .map(|table| (table.name.clone(), table.id.parse::<u64>().ok()))
        .collect();
    let groups = node.table_groups();
    for table in &response.tables {
        if table.leader_index > 0 {
            let applied = groups
                .get(&table.name)
                .map_or(0, |group| applied_leader_index(&group.table));
            follower
                .lag(&table.name)
                .observe_leader(table.leader_index, applied);
        }
    }
    if let Ok(mut tables) = follower.leader_tables.lock() {
        *tables = Some(
            response
                .tables
                .iter()
                .map(|table| (table.name.clone(), table.id.clone()))
                .collect(),
        );
    }
    follower.leader_reachable.store(true, Ordering::Relaxed);
    if !leads_catalog(node) {
        return Ok(());
    }
    let deadline = tokio::time::Instant::now() + CHANGE_TIMEOUT;
    let catalog = node.catalog_state();
    for (name, record) in &catalog.tables {
        let replace = match desired.get(name) {
            None => true,
            Some(upstream) => *upstream != record.upstream_id,
        };
        if replace {
            tracing::info!(
                table = name,
                "the leader cluster deleted or re-created the table: removing the local copy"
            );
            follower.lag(name).reset();
            follower.forget_lag(name);
            node.delete_table(name, deadline)
                .await
                .or_else(|error| match error {
                    crate::error::ApiError::TableNotFound(_) => Ok(()),
                    error => Err(error),
                })
                .map_err(|error| format!("deleting table {name}: {error}"))?;
        }
    }
    let catalog = node.catalog_state();
    for (name, upstream) in &desired {
        if !catalog.tables.contains_key(name) {
            tracing::info!(
                table = name,
                "replicating a new table of the leader cluster"
            );
            match node.create_table_with(name, *upstream, deadline).await {
                Ok(_) | Err(crate::error::ApiError::TableExists) => {}
                Err(error) => return Err(format!("creating table {name}: {error}")),
            }
        }
    }
    Ok(())
}
