//! The node: owns the storage, the log engine, the catalog group and every table group, and
//! keeps the running table groups equal to the catalog.
//!
//! Reconciliation is event-driven: every applied catalog change wakes the reconciler, which
//! starts the groups of new tables and stops (and deletes the data of) removed ones at once.
//! Table groups are looked up by name through an immutable snapshot map swapped on change,
//! so the request path takes no lock held across an await.

use openraft::async_runtime::WatchReceiver;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use armada_storage::{CATALOG_GROUP, LeaderIndex, LogIndex, NodeId, Storage, TableId};
use armada_table::{Table, TableRole};
use openraft::BasicNode;
use tokio::sync::{Notify, watch};

use crate::catalog::{CatalogCommand, CatalogOutcome, CatalogState, CatalogStateMachine};
use crate::cluster::forward::Forwarder;
use crate::cluster::handler::{GroupDirectory, PeerHandler};
use crate::cluster::network::ClusterNetwork;
use crate::cluster::rpc::{self, PeerError, PeerRequest, PeerResponse, PeerResult};
use crate::config::ServerConfig;
use crate::error::ApiError;
use crate::follower::host::{FollowerHost, InstalledSnapshot};
use crate::groups::CatalogRaft;
pub use crate::groups::handle::GroupHandle;
use crate::groups::log::LogEngine;
pub use crate::groups::table_group::TableGroup;
use crate::groups::table_sm::TableStateMachine;
use crate::groups::types::{Request, Response};
use crate::replication::log_cache::LogCache;
use crate::transport::{Handler, QuicConfig, QuicTransport, Transport, TransportError};

/// Creates `dir`, or empties it of what a previous run of the node left there.
fn clear_temporary_dir(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let removed = if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match removed {
            Ok(()) => tracing::info!(path = %path.display(), "removed a leftover temporary file"),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

pub struct Node {
    pub config: ServerConfig,
    pub node_id: NodeId,
    pub storage: Storage,
    log: Arc<LogEngine>,
    raft_config: Arc<openraft::Config>,
    members: BTreeMap<u64, BasicNode>,
    transport: Arc<dyn Transport>,
    /// Batches writes forwarded to other nodes' Raft leaders.
    forwarder: Forwarder,
    pub catalog: CatalogRaft,
    catalog_state: watch::Receiver<Arc<CatalogState>>,
    tables: RwLock<Arc<BTreeMap<String, Arc<TableGroup>>>>,
    reconciled: Notify,
    reconcile_lock: tokio::sync::Mutex<()>,
    pub started_at: std::time::Instant,
    /// This node's client URL in MemberList once the API listener is bound (see
    /// [`Node::api_advertise_address`]).
    api_advertise_address: std::sync::OnceLock<String>,
}

impl Node {
    /// Opens storage, starts the catalog group and every table group it lists, and talks to the
    /// peers over QUIC (`raft.address`, `raft.initial-members`).
    pub async fn start(config: ServerConfig) -> anyhow::Result<Arc<Node>> {
        let node_id = config.raft.node_id;
        let peers = config
            .members()
            .map_err(anyhow::Error::msg)?
            .into_iter()
            .filter(|(id, _)| *id != node_id)
            .collect();
        let address = config.raft.address.clone();
        let tls = config.raft_tls();
        Node::start_with_transport(config, move |handler| async move {
            let quic = QuicConfig {
                node_id,
                listen: resolve_raft_address(&address).await?,
                peers,
                tls,
            };
            let transport = QuicTransport::start(quic, handler).await.map_err(|error| {
                anyhow::anyhow!("cannot start the cluster transport on {address}: {error}")
            })?;
            Ok(transport as Arc<dyn Transport>)
        })
        .await
    }

    /// [`Node::start`] over another transport (tests: a [`crate::transport::MemoryNetwork`]).
    /// Once storage is open, `connect` gets the handler serving this node's peers and returns
    /// the node's transport; the members' addresses in `raft.initial-members` are then only
    /// names.
    pub async fn start_with_transport<Connecting>(
        config: ServerConfig,
        connect: impl FnOnce(Arc<dyn Handler>) -> Connecting,
    ) -> anyhow::Result<Arc<Node>>
    where
        Connecting: Future<Output = anyhow::Result<Arc<dyn Transport>>>,
    {
        let members = config.members().map_err(anyhow::Error::msg)?;
        let node_id = NodeId(config.raft.node_id);
        std::fs::create_dir_all(&config.data_dir)?;
        let storage = Storage::open(&config.data_dir.join("db"))?;
        // Only now that the database is ours (its lock taken): spool files a crashed
        // incarnation left behind (a restore's or a follower bootstrap's) are garbage.
        clear_temporary_dir(&config.data_dir.join("tmp"))?;
        let log = LogEngine::open_with(
            &config.data_dir.join("raft-log"),
            &storage,
            crate::groups::log::Options {
                // A single-node cluster's own fsync is its quorum: never linger there.
                local_node: (members.len() > 1).then_some(node_id.0),
                ..Default::default()
            },
        )?;
        let raft_config = crate::groups::raft_config(
            config.raft.rtt,
            config.raft.heartbeat_rtt,
            config.raft.election_rtt,
            config.raft.snapshot_entries,
            config.raft.compaction_overhead,
        )?;
        let handler = PeerHandler::new();
        let transport = connect(handler.clone()).await?;
        let members: BTreeMap<u64, BasicNode> = members
            .into_iter()
            .map(|(id, address)| (id, BasicNode::new(address)))
            .collect();
        let catalog_sm = CatalogStateMachine::open(&storage)?;
        let catalog_state = catalog_sm.subscribe();
        let catalog = openraft::Raft::new(
            node_id.get(),
            raft_config.clone(),
            ClusterNetwork::new(transport.clone(), CATALOG_GROUP.get()),
            log.group(CATALOG_GROUP),
            catalog_sm,
        )
        .await?;
        initialize_if_new(&catalog, &members).await?;
        let node = Arc::new(Node {
            config,
            node_id,
            storage,
            log,
            raft_config,
            members,
            forwarder: Forwarder::new(transport.clone()),
            transport,
            catalog,
            catalog_state,
            tables: RwLock::new(Arc::new(BTreeMap::new())),
            reconciled: Notify::new(),
            reconcile_lock: tokio::sync::Mutex::new(()),
            started_at: std::time::Instant::now(),
            api_advertise_address: std::sync::OnceLock::new(),
        });
        handler.attach(&node);
        node.reconcile().await?;
        let reconciler = node.clone();
        tokio::spawn(async move { reconciler.run_reconciler().await });
        Ok(node)
    }

    /// Where received snapshots are spooled.
    pub fn temporary_dir(&self) -> std::path::PathBuf {
        self.config.data_dir.join("tmp")
    }

    /// The group with this id, if it runs here.
    pub fn group_by_id(&self, id: u64) -> Option<GroupHandle> {
        if id == CATALOG_GROUP.get() {
            return Some(GroupHandle::Catalog(self.catalog.clone()));
        }
        self.running()
            .values()
            .find(|group| group.id.get() == id)
            .map(|group| GroupHandle::Table(group.clone()))
    }

    async fn call_peer(
        &self,
        peer: u64,
        request: &PeerRequest,
        deadline: tokio::time::Instant,
    ) -> Result<PeerResult, TransportError> {
        let timeout = deadline.saturating_duration_since(tokio::time::Instant::now());
        let answer = self
            .transport
            .call(peer, rpc::encode(request), timeout)
            .await?;
        rpc::decode::<PeerResult>(&answer).map_err(TransportError::Remote)
    }

    /// Proposes `request` to a group from any node: locally when this replica is the Raft
    /// leader, else forwarded to the leader over the cluster transport. Retries only while the
    /// write certainly was not appended (no leader yet, leader moved, leader unreachable before
    /// sending); an outcome that is unknown (timeout mid-call) is reported, never retried.
    pub async fn write(
        &self,
        group: &GroupHandle,
        request: Request,
        deadline: tokio::time::Instant,
    ) -> Result<(u64, Response), ApiError> {
        loop {
            let leader = match group.current_leader() {
                Some(leader) => leader,
                None => group.wait_for_leader(deadline).await.ok_or_else(|| {
                    ApiError::Unavailable("the table's Raft group has no leader".into())
                })?,
            };
            let attempt = if leader == self.node_id.get() {
                match tokio::time::timeout_at(deadline, group.write_here(request.clone())).await {
                    Ok(result) => result.map_err(Some),
                    Err(_) => return Err(ApiError::DeadlineExceeded),
                }
            } else {
                // A leader that dies with the write in flight never answers; once this replica
                // sees another term, the write's outcome is unknown (it may have been appended
                // and replicated) and waiting for the deadline would not tell more.
                let forwarded = tokio::select! {
                    biased;
                    outcome = self.forwarder.forward(leader, group.id(), request.clone(), deadline) => outcome,
                    () = group.leader_moved_from(leader) => {
                        return Err(ApiError::Unavailable(format!(
                            "the Raft leader changed while the write was forwarded to node {leader}; its outcome is unknown"
                        )));
                    }
                };
                match forwarded {
                    Ok(Ok(done)) => Ok(done),
                    Ok(Err(error)) => Err(Some(error)),
                    Err(
                        TransportError::Unreachable { .. } | TransportError::UnknownPeer { .. },
                    ) => Err(None),
                    Err(TransportError::Timeout { .. }) => return Err(ApiError::DeadlineExceeded),
                    Err(error) => {
                        return Err(ApiError::Unavailable(format!(
                            "forwarding to the Raft leader (node {leader}) failed, the write's outcome is unknown: {error}"
                        )));
                    }
                }
            };
            match attempt {
                Ok(done) => return Ok(done),
                Err(Some(PeerError::Failed(message))) => {
                    return Err(ApiError::Unavailable(message));
                }
                // Not appended anywhere: try again with whoever leads now.
                Err(Some(PeerError::NotLeader { .. } | PeerError::NoSuchGroup(_)) | None) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::Unavailable(
                    "no reachable Raft leader before the deadline".into(),
                ));
            }
            tokio::time::sleep(FORWARD_RETRY_PAUSE).await;
        }
    }

    /// Makes a table replica ready for a linearizable read: the group's Raft leader confirms
    /// its leadership (ReadIndex) and this replica waits until it has applied that index.
    pub async fn linearize(
        &self,
        group: &Arc<TableGroup>,
        deadline: tokio::time::Instant,
    ) -> Result<(), ApiError> {
        let index = self
            .read_index(&GroupHandle::Table(group.clone()), deadline)
            .await?;
        self.wait_applied(group, index, deadline).await
    }

    /// Asks the group's Raft leader (this node or a peer) for a ReadIndex: the index a replica
    /// must have applied to serve a linearizable read.
    async fn read_index(
        &self,
        handle: &GroupHandle,
        deadline: tokio::time::Instant,
    ) -> Result<u64, ApiError> {
        loop {
            let leader = match handle.current_leader() {
                Some(leader) => leader,
                None => handle.wait_for_leader(deadline).await.ok_or_else(|| {
                    ApiError::Unavailable("the table's Raft group has no leader".into())
                })?,
            };
            let index = if leader == self.node_id.get() {
                tokio::time::timeout_at(deadline, handle.read_index_here())
                    .await
                    .map_err(|_| ApiError::DeadlineExceeded)?
            } else {
                // Reads are safe to retry: a leader that dies with the request in flight is
                // asked no more once this replica sees another term.
                let request = PeerRequest::ReadIndex { group: handle.id() };
                let asked = tokio::select! {
                    biased;
                    answer = self.call_peer(leader, &request, deadline) => Some(answer),
                    () = handle.leader_moved_from(leader) => None,
                };
                let Some(answer) = asked else { continue };
                match answer {
                    Ok(Ok(PeerResponse::ReadIndex { index })) => Ok(index),
                    Ok(Ok(other)) => {
                        return Err(ApiError::Internal(format!(
                            "unexpected peer response {other:?}"
                        )));
                    }
                    Ok(Err(error)) => Err(error),
                    Err(TransportError::Timeout { .. }) => return Err(ApiError::DeadlineExceeded),
                    Err(error) => Err(PeerError::Failed(error.to_string())),
                }
            };
            match index {
                Ok(index) => return Ok(index),
                Err(PeerError::NotLeader { .. } | PeerError::NoSuchGroup(_)) => {}
                Err(PeerError::Failed(message)) => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(ApiError::Unavailable(format!(
                            "linearizable read failed: {message}"
                        )));
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::Unavailable(
                    "no reachable Raft leader before the deadline".into(),
                ));
            }
            tokio::time::sleep(FORWARD_RETRY_PAUSE).await;
        }
    }

    async fn wait_applied(
        &self,
        group: &TableGroup,
        index: u64,
        deadline: tokio::time::Instant,
    ) -> Result<(), ApiError> {
        let mut applied = group.state_machine.subscribe();
        tokio::time::timeout_at(
            deadline,
            applied.wait_for(|position| position.log_index.get() >= index),
        )
        .await
        .map_err(|_| ApiError::DeadlineExceeded)?
        .map(|_| ())
        .map_err(|_| ApiError::Unavailable("the table group stopped".into()))
    }

    /// Called once the API listener is bound at `bound_url`: an `api.advertise-address` with
    /// port 0 (derived from `api.address` …:0) then advertises the port the OS chose.
    pub fn set_api_bound(&self, bound_url: &str) {
        let _ = self
            .api_advertise_address
            .set(self.config.api.advertise_address_bound(bound_url));
    }

    /// This node's client URL, as MemberList shows it.
    pub fn api_advertise_address(&self) -> String {
        match self.api_advertise_address.get() {
            Some(address) => address.clone(),
            None => self.config.api.advertise_address.clone(),
        }
    }

    /// Every member's id, Raft address and (when it answers) client address.
    pub async fn member_addresses(&self) -> Vec<(u64, String, Option<String>)> {
        let deadline = tokio::time::Instant::now() + MEMBER_INFO_TIMEOUT;
        let mut out = Vec::new();
        for (id, node) in &self.members {
            let api = if *id == self.node_id.get() {
                Some(self.api_advertise_address())
            } else {
                match self.call_peer(*id, &PeerRequest::NodeInfo, deadline).await {
                    Ok(Ok(PeerResponse::NodeInfo { api_address, .. })) => Some(api_address),
                    _ => None,
                }
            };
            out.push((*id, node.addr.clone(), api));
        }
        out
    }

    pub fn catalog_state(&self) -> Arc<CatalogState> {
        self.catalog_state.borrow().clone()
    }

    /// Follows the catalog (the table registry) as this replica applies it.
    pub fn catalog_changes(&self) -> watch::Receiver<Arc<CatalogState>> {
        self.catalog_state.clone()
    }

    fn running(&self) -> Arc<BTreeMap<String, Arc<TableGroup>>> {
        crate::fail_stop::read(&self.tables, "reading the table map").clone()
    }

    /// Every running table group, by name.
    pub fn table_groups(&self) -> Arc<BTreeMap<String, Arc<TableGroup>>> {
        self.running()
    }

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
            if let Some(group) = self.running().get(name)
                && group.id == record.table_id()
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
            .applied_index_at_least(Some(index), "catalog read index")
            .await
            .is_ok()
    }

    async fn run_reconciler(self: Arc<Self>) {
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
    async fn reconcile(&self) -> anyhow::Result<()> {
        let _serial = self.reconcile_lock.lock().await;
        let catalog = self.catalog_state();
        let running = self.running();
        let mut next: BTreeMap<String, Arc<TableGroup>> = BTreeMap::new();
        let mut stopped = Vec::new();
        for (name, group) in running.iter() {
            match catalog.tables.get(name) {
                Some(record) if record.table_id() == group.id => {
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
            ClusterNetwork::new(self.transport.clone(), id.get()),
            self.log.group(id),
            state_machine.clone(),
        )
        .await?;
        initialize_if_new(&raft, &self.members).await?;
        tracing::info!(table = name, id = id.get(), "table group started");
        Ok(Arc::new(TableGroup {
            id,
            name: name.to_string(),
            raft,
            table,
            state_machine,
        }))
    }

    async fn stop_and_destroy(&self, group: &TableGroup) -> anyhow::Result<()> {
        if let Err(error) = group.raft.shutdown().await {
            tracing::warn!(%error, table = group.name, "table group did not shut down cleanly");
        }
        let storage = self.storage.clone();
        let id = group.id;
        tokio::task::block_in_place(|| Table::destroy(&storage, id))?;
        self.log.destroy_group(id)?;
        tracing::info!(
            table = group.name,
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
        let mut metrics = group.raft.server_metrics();
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

    /// Waits until the catalog group has a leader (start-up readiness).
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let mut metrics = self.catalog.server_metrics();
        tokio::time::timeout(timeout, metrics.wait_until(|m| m.current_leader.is_some()))
            .await
            .is_ok()
    }

    /// Ready: the catalog and every table group have a leader.
    pub fn is_ready(&self) -> bool {
        let catalog_ready = self
            .catalog
            .server_metrics()
            .borrow_watched()
            .current_leader
            .is_some();
        catalog_ready
            && self.running().values().all(|group| {
                group
                    .raft
                    .server_metrics()
                    .borrow_watched()
                    .current_leader
                    .is_some()
            })
    }

    /// Hands the leadership of every group this node leads to the most up-to-date other member
    /// and waits (briefly) until each has moved, so clients see no election timeout when a node
    /// is stopped on purpose. Returns how many hand-overs it started.
    pub async fn transfer_leaderships(&self, timeout: Duration) -> usize {
        let mut handles = vec![GroupHandle::Catalog(self.catalog.clone())];
        handles.extend(
            self.running()
                .values()
                .map(|group| GroupHandle::Table(group.clone())),
        );
        let me = self.node_id.get();
        // A member that has not acknowledged anything for an election timeout cannot take
        // over (a leader cut off from its peers would otherwise wait the whole `timeout`).
        let recent = Duration::from_millis(self.raft_config.election_timeout_min);
        let mut moving = Vec::new();
        for handle in handles {
            if handle.current_leader() != Some(me) {
                continue;
            }
            let target = match &handle {
                GroupHandle::Catalog(raft) => {
                    best_successor(&raft.metrics().borrow_watched(), me, recent)
                }
                GroupHandle::Table(group) => {
                    best_successor(&group.raft.metrics().borrow_watched(), me, recent)
                }
            };
            if let Some(target) = target {
                handle.trigger_transfer_leader(target).await;
                moving.push(handle);
            }
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut moved = 0;
        for handle in &moving {
            while handle.current_leader() == Some(me) && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if handle.current_leader() != Some(me) {
                moved += 1;
            }
        }
        if !moving.is_empty() {
            tracing::info!(
                moved,
                led = moving.len(),
                "handed Raft leadership over before stopping"
            );
        }
        moving.len()
    }

    /// Stops every group (graceful shutdown) and makes storage durable.
    pub async fn shutdown(&self) {
        if self.members.len() > 1 {
            self.transfer_leaderships(LEADERSHIP_TRANSFER_TIMEOUT).await;
        }
        for group in self.running().values() {
            let _ = group.raft.shutdown().await;
        }
        let _ = self.catalog.shutdown().await;
        self.transport.shutdown().await;
        if let Err(error) = self.storage.sync() {
            tracing::error!(%error, "final storage sync failed");
        }
    }

    pub fn log_bytes(&self, id: TableId) -> u64 {
        self.log.group_log_bytes(id)
    }

    pub fn log_engine(&self) -> &Arc<LogEngine> {
        &self.log
    }
}

/// How long a stopping node waits for its leaderships to move.
const LEADERSHIP_TRANSFER_TIMEOUT: Duration = Duration::from_secs(2);

/// The other member whose log matches the leader's furthest (from the leader's metrics), among
/// those that acknowledged the leader within `recent`.
fn best_successor(
    metrics: &openraft::RaftMetrics<crate::groups::types::TypeConfig>,
    me: u64,
    recent: Duration,
) -> Option<u64> {
    use openraft::Instant as _;
    let heard_lately = |id: &u64| {
        metrics
            .heartbeat
            .as_ref()
            .and_then(|acks| acks.get(id))
            .and_then(|ack| ack.as_ref())
            .is_some_and(|ack| ack.elapsed() < recent)
    };
    metrics
        .replication
        .as_ref()?
        .iter()
        .filter(|(id, _)| **id != me && heard_lately(id))
        .max_by_key(|(id, matched)| {
            (
                matched.as_ref().map(|log_id| log_id.index),
                std::cmp::Reverse(**id),
            )
        })
        .map(|(id, _)| *id)
}

/// Pause between attempts to reach a group's Raft leader.
const FORWARD_RETRY_PAUSE: Duration = Duration::from_millis(20);
/// How long a catalog change (table create/delete) may take.
const CATALOG_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long MemberList waits for each peer's answer.
const MEMBER_INFO_TIMEOUT: Duration = Duration::from_millis(500);

async fn resolve_raft_address(address: &str) -> anyhow::Result<std::net::SocketAddr> {
    tokio::net::lookup_host(address)
        .await
        .map_err(|error| anyhow::anyhow!("raft.address {address}: {error}"))?
        .next()
        .ok_or_else(|| anyhow::anyhow!("raft.address {address} resolves to nothing"))
}

async fn initialize_if_new<SM>(
    raft: &openraft::Raft<crate::groups::types::TypeConfig, SM>,
    members: &BTreeMap<u64, BasicNode>,
) -> anyhow::Result<()>
where
    SM: openraft::storage::RaftStateMachine<crate::groups::types::TypeConfig>,
{
    if !raft.is_initialized().await? {
        match raft.initialize(members.clone()).await {
            Ok(()) => {}
            // Another member initialized it first: fine, the membership is the same.
            Err(openraft::error::RaftError::APIError(
                openraft::error::InitializeError::NotAllowed(_),
            )) => {}
            Err(error) => return Err(error.into()),
        }
    }
    Ok(())
}
impl GroupDirectory for Node {
    fn group_by_id(&self, id: u64) -> Option<GroupHandle> {
        Node::group_by_id(self, id)
    }

    fn temporary_dir(&self) -> std::path::PathBuf {
        Node::temporary_dir(self)
    }

    fn node_id(&self) -> NodeId {
        self.node_id
    }

    fn api_advertise_address(&self) -> String {
        Node::api_advertise_address(self)
    }
}

/// What the follower side of replication uses of the node (see `crate::follower::host`).
#[async_trait::async_trait]
impl FollowerHost for Node {
    fn node_id(&self) -> NodeId {
        self.node_id
    }

    fn leads_catalog(&self) -> bool {
        self.catalog
            .server_metrics()
            .borrow_watched()
            .current_leader
            == Some(self.node_id.get())
    }

    fn table_groups(&self) -> Arc<BTreeMap<String, Arc<TableGroup>>> {
        Node::table_groups(self)
    }

    fn catalog_state(&self) -> Arc<CatalogState> {
        Node::catalog_state(self)
    }

    fn temporary_dir(&self) -> std::path::PathBuf {
        Node::temporary_dir(self)
    }

    async fn table(&self, name: &str) -> Result<Arc<TableGroup>, ApiError> {
        Node::table(self, name).await
    }

    async fn create_table(
        &self,
        name: &str,
        upstream_id: Option<u64>,
        deadline: tokio::time::Instant,
    ) -> Result<TableId, ApiError> {
        self.create_table_with(name, upstream_id, deadline).await
    }

    async fn delete_table(
        &self,
        name: &str,
        deadline: tokio::time::Instant,
    ) -> Result<(), ApiError> {
        Node::delete_table(self, name, deadline).await
    }

    async fn propose(
        &self,
        group: &Arc<TableGroup>,
        request: Request,
        deadline: tokio::time::Instant,
    ) -> Result<(LogIndex, Response), ApiError> {
        let (index, response) = self
            .write(&GroupHandle::Table(group.clone()), request, deadline)
            .await?;
        Ok((LogIndex(index), response))
    }

    async fn install_snapshot(
        &self,
        group: &Arc<TableGroup>,
        dump: &std::path::Path,
        deadline: tokio::time::Instant,
    ) -> Result<InstalledSnapshot, ApiError> {
        let loaded = self
            .load_table_from_dump(group, dump, true, deadline)
            .await?;
        Ok(InstalledSnapshot {
            records: loaded.records,
            leader_index: loaded.leader_index.map(LeaderIndex),
        })
    }
}
