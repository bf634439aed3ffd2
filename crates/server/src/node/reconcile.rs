//! Keeping the running table groups equal to the catalog, and changing the catalog.
//!
//! Reconciliation is event-driven: every applied catalog change wakes the reconciler, which
//! starts the groups of new tables and stops (and deletes the data of) removed ones at once.
//! The new table map is published before removed groups are stopped, so the request path never
//! finds a group that the catalog no longer lists. Reconciliations run one at a time; one that
//! fails stops the node (a node must not serve a catalog its groups do not reflect).
//!
//! Creating or deleting a table is a catalog proposal followed by a wait until *this* replica
//! has applied it (and, for a creation, until the new group has a Raft leader), so a client that
//! created a table through this node can use it at once.

use openraft::async_runtime::WatchReceiver;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use armada_storage::TableId;
use armada_table::{Table, TableRole};

use crate::catalog::{CatalogCommand, CatalogOutcome, CatalogState};
use crate::cluster::network::ClusterNetwork;
use crate::error::ApiError;
use crate::groups::handle::GroupHandle;
use crate::groups::table_group::TableGroup;
use crate::groups::table_sm::TableStateMachine;
use crate::groups::types::{Request, Response};
use crate::replication::log_cache::LogCache;

use super::{CATALOG_WRITE_TIMEOUT, Node, initialize_if_new};

impl Node {
    /// The group serving `name`. A table in the catalog whose group is still starting is
    /// waited for briefly. A table missing from this replica's catalog is looked up once more
    /// after a ReadIndex on the catalog group (it may have been created through another node a
    /// moment ago); still missing, it is `NotFound`.
    pub async fn table(&self, name: &str) -> Result<Arc<TableGroup>, ApiError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        let mut confirmed = false;
        loop {
            let notified = self.reconciled.notified();
            let catalog = self.catalog_state();
            let Some(record) = catalog.tables.get(name) else {
                if confirmed || !self.catalog_caught_up(deadline).await {
                    return Err(ApiError::TableNotFound(name.to_string()));
                }
                confirmed = true;
                continue;
            };
            if let Some(group) = self.table_groups().get(name)
                && group.id() == record.table_id()
            {
                return Ok(group.clone());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(ApiError::Unavailable(format!(
                    "table `{name}` is starting on this node"
                )));
            }
        }
    }

    /// Brings this replica's catalog up to a ReadIndex of the catalog group; `false` when that
    /// cannot be done before the deadline (no quorum), leaving the local view as the answer.
    async fn catalog_caught_up(&self, deadline: tokio::time::Instant) -> bool {
        let handle = GroupHandle::Catalog(self.catalog.clone());
        let Ok(index) = self.read_index(&handle, deadline).await else {
            return false;
        };
        let timeout = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.catalog
            .wait(Some(timeout))
            .applied_index_at_least(Some(index.get()), "catalog read index")
            .await
            .is_ok()
    }

    pub(super) async fn run_reconciler(self: Arc<Self>) {
        let mut changes = self.catalog_state.clone();
        while changes.changed().await.is_ok() {
            if let Err(error) = self.reconcile().await {
                // A node that cannot open or delete a table's storage must not keep serving a
                // catalog it does not reflect.
                crate::fail_stop::stop("reconciling table groups", &error);
            }
        }
    }

    /// Makes the running groups equal to the catalog.
    pub(super) async fn reconcile(&self) -> anyhow::Result<()> {
        let _serial = self.reconcile_lock.lock().await;
        let catalog = self.catalog_state();
        let running = self.table_groups();
        let mut next: BTreeMap<String, Arc<TableGroup>> = BTreeMap::new();
        let mut stopped = Vec::new();
        for (name, group) in running.iter() {
            match catalog.tables.get(name) {
                Some(record) if record.table_id() == group.id() => {
                    next.insert(name.clone(), group.clone());
                }
                _ => stopped.push(group.clone()),
            }
        }
        for (name, record) in &catalog.tables {
            if !next.contains_key(name) {
                let group = self.start_table(name, record.table_id()).await?;
                next.insert(name.clone(), group);
            }
        }
        *crate::fail_stop::write(&self.tables, "updating the table map") = Arc::new(next);
        self.reconciled.notify_waiters();
        for group in stopped {
            self.stop_and_destroy(&group).await?;
        }
        Ok(())
    }

    async fn start_table(&self, name: &str, id: TableId) -> anyhow::Result<Arc<TableGroup>> {
        let role = if self.config.is_follower() {
            TableRole::Follower
        } else {
            TableRole::Leader
        };
        let table = tokio::task::block_in_place(|| Table::open_as(&self.storage, id, role))?;
        // Follower clusters serve no replication streams: no cache of recent entries.
        let log_cache = LogCache::new(match role {
            TableRole::Follower => 0,
            TableRole::Leader => self.config.replication.log_cache_size,
        });
        let state_machine =
            TableStateMachine::open(table.clone(), self.storage.clone())?.with_log_cache(log_cache);
        let raft = openraft::Raft::new(
            self.node_id.get(),
            self.raft_config.clone(),
            ClusterNetwork::new(self.transport.clone(), id),
            self.log.group(id),
            state_machine.clone(),
        )
        .await?;
        initialize_if_new(&raft, &self.members).await?;
        tracing::info!(table = name, id = id.get(), "table group started");
        Ok(Arc::new(TableGroup::new(
            id,
            name.to_string(),
            raft,
            table,
            state_machine,
        )))
    }

    async fn stop_and_destroy(&self, group: &TableGroup) -> anyhow::Result<()> {
        if let Err(error) = group.raft().shutdown().await {
            tracing::warn!(%error, table = group.name(), "table group did not shut down cleanly");
        }
        let storage = self.storage.clone();
        let id = group.id();
        tokio::task::block_in_place(|| Table::destroy(&storage, id))?;
        self.log.destroy_group(id)?;
        tracing::info!(
            table = group.name(),
            id = id.get(),
            "table group stopped and its data deleted"
        );
        Ok(())
    }

    /// Proposes a catalog change and returns its outcome.
    pub async fn propose_catalog(
        &self,
        command: CatalogCommand,
    ) -> Result<CatalogOutcome, ApiError> {
        let bytes =
            serde_json::to_vec(&command).map_err(|error| ApiError::Internal(error.to_string()))?;
        let deadline = tokio::time::Instant::now() + CATALOG_WRITE_TIMEOUT;
        let (_, response) = self
            .write(
                &GroupHandle::Catalog(self.catalog.clone()),
                Request(bytes.into()),
                deadline,
            )
            .await?;
        match response {
            Response::Catalog(outcome) => Ok(outcome),
            Response::Rejected(message) => Err(ApiError::Internal(message)),
            other => Err(ApiError::Internal(format!(
                "unexpected catalog response {other:?}"
            ))),
        }
    }

    /// Creates a table and waits until this node serves it with a Raft leader.
    pub async fn create_table(
        &self,
        name: &str,
        deadline: tokio::time::Instant,
    ) -> Result<TableId, ApiError> {
        self.create_table_with(name, None, deadline).await
    }

    /// Creates a table (on a follower cluster: the replica of the leader's table
    /// `upstream_id`) and waits until this node serves it with a Raft leader.
    pub async fn create_table_with(
        &self,
        name: &str,
        upstream_id: Option<u64>,
        deadline: tokio::time::Instant,
    ) -> Result<TableId, ApiError> {
        let id = match self
            .propose_catalog(CatalogCommand::CreateTable {
                name: name.into(),
                upstream_id,
            })
            .await?
        {
            CatalogOutcome::Created { id } => TableId(id),
            CatalogOutcome::AlreadyExists { .. } => return Err(ApiError::TableExists),
            other => return Err(ApiError::Internal(format!("unexpected outcome {other:?}"))),
        };
        // The catalog leader applied it; this replica may learn it a heartbeat later.
        self.wait_catalog(deadline, |state| {
            state.tables.get(name).map(|record| record.id) == Some(id.get())
        })
        .await?;
        let group = tokio::time::timeout_at(deadline, async {
            loop {
                match self.table(name).await {
                    Ok(group) => return Ok(group),
                    Err(ApiError::Unavailable(_)) => continue,
                    Err(error) => return Err(error),
                }
            }
        })
        .await
        .map_err(|_| ApiError::DeadlineExceeded)??;
        let mut metrics = group.raft().server_metrics();
        tokio::time::timeout_at(deadline, metrics.wait_until(|m| m.current_leader.is_some()))
            .await
            .map_err(|_| ApiError::DeadlineExceeded)?
            .map_err(|_| ApiError::Unavailable("table group stopped".into()))?;
        Ok(id)
    }

    pub async fn delete_table(
        &self,
        name: &str,
        deadline: tokio::time::Instant,
    ) -> Result<(), ApiError> {
        match self
            .propose_catalog(CatalogCommand::DeleteTable { name: name.into() })
            .await?
        {
            CatalogOutcome::Deleted { id } => {
                self.wait_catalog(deadline, |state| {
                    state.tables.get(name).map(|record| record.id) != Some(id)
                })
                .await
            }
            CatalogOutcome::NotFound => Err(ApiError::TableNotFound(name.to_string())),
            other => Err(ApiError::Internal(format!("unexpected outcome {other:?}"))),
        }
    }

    /// Waits until this replica's catalog satisfies `condition`.
    async fn wait_catalog(
        &self,
        deadline: tokio::time::Instant,
        condition: impl Fn(&CatalogState) -> bool,
    ) -> Result<(), ApiError> {
        let mut changes = self.catalog_state.clone();
        tokio::time::timeout_at(deadline, changes.wait_for(|state| condition(state)))
            .await
            .map_err(|_| ApiError::DeadlineExceeded)?
            .map(|_| ())
            .map_err(|_| ApiError::Unavailable("the catalog group stopped".into()))
    }
}
