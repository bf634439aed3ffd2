//! The node: owns the storage, the log engine, the catalog group and every table group of one
//! member of a cluster, from start to shutdown.
//!
//! The node is split by concern; each child adds an `impl Node` block and imports from this
//! file, never the other way round (no import circle):
//!
//! - this file: the struct, [`Node::start`] and [`Node::shutdown`] (with the Raft leadership
//!   hand-over), readiness, and read-only accessors for the rest of the server;
//! - `propose`: the propose/read seam, [`Node::write`] and [`Node::linearize`];
//! - `reconcile`: the running table groups kept equal to the catalog, table creation and
//!   deletion, and [`Node::table`], the lookup of a table's group by name;
//! - `load`: a table's contents replaced from a dump through its Raft group (Restore on the
//!   leader cluster, a snapshot bootstrap on a follower cluster).
//!
//! Table groups are looked up through an immutable snapshot map swapped on change, so the
//! request path takes no lock held across an await. The node's fields are private: what other
//! modules need is given by accessors, so the node's invariants (one reconciler, the map swapped
//! only by it) stay in this directory.

use openraft::async_runtime::WatchReceiver;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use armada_storage::{CATALOG_GROUP, LeaderIndex, LogIndex, NodeId, Storage, TableId};
use openraft::BasicNode;
use tokio::sync::{Notify, watch};

use crate::catalog::{CatalogState, CatalogStateMachine};
use crate::cluster::forward::Forwarder;
use crate::cluster::handler::{GroupDirectory, PeerHandler};
use crate::cluster::network::ClusterNetwork;
use crate::cluster::rpc::{self, PeerRequest, PeerResponse, PeerResult};
use crate::config::ServerConfig;
use crate::error::ApiError;
use crate::follower::host::{FollowerHost, InstalledSnapshot};
use crate::groups::CatalogRaft;
pub use crate::groups::handle::GroupHandle;
use crate::groups::log::LogEngine;
pub use crate::groups::table_group::TableGroup;
use crate::groups::types::{Request, Response};
use crate::transport::{Handler, QuicConfig, QuicTransport, Transport, TransportError};

mod load;
mod propose;
mod reconcile;

/// Opens the node's database and its Raft log engine under `data_dir`, clearing what a crashed
/// incarnation left in the temporary directory.
fn open_storage(
    config: &ServerConfig,
    node_id: NodeId,
    member_count: usize,
) -> anyhow::Result<(Storage, Arc<LogEngine>)> {
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
            local_node: (member_count > 1).then_some(node_id.0),
            ..Default::default()
        },
    )?;
    Ok((storage, log))
}

/// The timing of every Raft group of the node, from the `raft.*` settings.
fn group_timing(config: &ServerConfig) -> anyhow::Result<Arc<openraft::Config>> {
    Ok(crate::groups::raft_config(
        config.raft.rtt,
        config.raft.heartbeat_rtt,
        config.raft.election_rtt,
        config.raft.snapshot_entries,
        config.raft.compaction_overhead,
    )?)
}

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
    config: ServerConfig,
    node_id: NodeId,
    storage: Storage,
    log: Arc<LogEngine>,
    raft_config: Arc<openraft::Config>,
    members: BTreeMap<u64, BasicNode>,
    transport: Arc<dyn Transport>,
    /// Batches writes forwarded to other nodes' Raft leaders.
    forwarder: Forwarder,
    catalog: CatalogRaft,
    catalog_state: watch::Receiver<Arc<CatalogState>>,
    tables: RwLock<Arc<BTreeMap<String, Arc<TableGroup>>>>,
    reconciled: Notify,
    reconcile_lock: tokio::sync::Mutex<()>,
    /// This node's client URL in MemberList once the API listener is bound (see
    /// [`Node::api_advertise_address`]).
    api_advertise_address: std::sync::OnceLock<String>,
}

impl Node {
    /// Opens storage, starts the catalog group and every table group it lists, and talks to the
    /// peers over QUIC (`raft.address`, `raft.initial-members`).
    pub async fn start(config: ServerConfig) -> anyhow::Result<Arc<Node>> {
        let node_id = NodeId(config.raft.node_id);
        let peers = config
            .members()
            .map_err(anyhow::Error::msg)?
            .into_iter()
            .map(|(id, address)| (NodeId(id), address))
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
        let (storage, log) = open_storage(&config, node_id, members.len())?;
        let raft_config = group_timing(&config)?;
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
            ClusterNetwork::new(transport.clone(), CATALOG_GROUP),
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
    pub fn group_by_id(&self, id: TableId) -> Option<GroupHandle> {
        if id == CATALOG_GROUP {
            return Some(GroupHandle::Catalog(self.catalog.clone()));
        }
        self.table_groups()
            .values()
            .find(|group| group.id() == id)
            .map(|group| GroupHandle::Table(group.clone()))
    }

    async fn call_peer(
        &self,
        peer: NodeId,
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
    pub async fn member_addresses(&self) -> Vec<(NodeId, String, Option<String>)> {
        let deadline = tokio::time::Instant::now() + MEMBER_INFO_TIMEOUT;
        let mut out = Vec::new();
        for (&id, node) in &self.members {
            let id = NodeId(id);
            let api = if id == self.node_id {
                Some(self.api_advertise_address())
            } else {
                match self.call_peer(id, &PeerRequest::NodeInfo, deadline).await {
                    Ok(Ok(PeerResponse::NodeInfo { api_address, .. })) => Some(api_address),
                    _ => None,
                }
            };
            out.push((id, node.addr.clone(), api));
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

    /// Every running table group, by name.
    pub fn table_groups(&self) -> Arc<BTreeMap<String, Arc<TableGroup>>> {
        crate::fail_stop::read(&self.tables, "reading the table map").clone()
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
            && self.table_groups().values().all(|group| {
                group
                    .raft()
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
            self.table_groups()
                .values()
                .map(|group| GroupHandle::Table(group.clone())),
        );
        let me = self.node_id;
        // A member that has not acknowledged anything for an election timeout cannot take
        // over (a leader cut off from its peers would otherwise wait the whole `timeout`).
        let recent = Duration::from_millis(self.raft_config.election_timeout_min);
        let mut moving = Vec::new();
        for handle in handles {
            if handle.raft_leader() != Some(me) {
                continue;
            }
            let target = match &handle {
                GroupHandle::Catalog(raft) => {
                    best_successor(&raft.metrics().borrow_watched(), me, recent)
                }
                GroupHandle::Table(group) => {
                    best_successor(&group.raft().metrics().borrow_watched(), me, recent)
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
            while handle.raft_leader() == Some(me) && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if handle.raft_leader() != Some(me) {
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
        for group in self.table_groups().values() {
            let _ = group.raft().shutdown().await;
        }
        let _ = self.catalog.shutdown().await;
        self.transport.shutdown().await;
        if let Err(error) = self.storage.sync() {
            tracing::error!(%error, "final storage sync failed");
        }
    }

    pub fn log_engine(&self) -> &Arc<LogEngine> {
        &self.log
    }

    /// This node's configuration, as it started.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// This node's Raft id (`raft.node-id`).
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The node's storage (the database every group's state lives in).
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// The catalog group's Raft.
    pub fn catalog(&self) -> &CatalogRaft {
        &self.catalog
    }
}

/// How long a stopping node waits for its leaderships to move.
const LEADERSHIP_TRANSFER_TIMEOUT: Duration = Duration::from_secs(2);

/// The other member whose log matches the leader's furthest (from the leader's metrics), among
/// those that acknowledged the leader within `recent`.
fn best_successor(
    metrics: &openraft::RaftMetrics<crate::groups::types::TypeConfig>,
    me: NodeId,
    recent: Duration,
) -> Option<NodeId> {
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
        .filter(|(id, _)| **id != me.get() && heard_lately(id))
        .max_by_key(|(id, matched)| {
            (
                matched.as_ref().map(|log_id| log_id.index),
                std::cmp::Reverse(**id),
            )
        })
        .map(|(id, _)| NodeId(*id))
}

/// Pause between attempts to reach a group's Raft leader.
pub(super) const FORWARD_RETRY_PAUSE: Duration = Duration::from_millis(20);
/// How long a catalog change (table create/delete) may take.
pub(super) const CATALOG_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long MemberList waits for each peer's answer.
const MEMBER_INFO_TIMEOUT: Duration = Duration::from_millis(500);

async fn resolve_raft_address(address: &str) -> anyhow::Result<std::net::SocketAddr> {
    tokio::net::lookup_host(address)
        .await
        .map_err(|error| anyhow::anyhow!("raft.address {address}: {error}"))?
        .next()
        .ok_or_else(|| anyhow::anyhow!("raft.address {address} resolves to nothing"))
}

pub(super) async fn initialize_if_new<SM>(
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
    fn group_by_id(&self, id: TableId) -> Option<GroupHandle> {
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
        self.write(&GroupHandle::Table(group.clone()), request, deadline)
            .await
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
