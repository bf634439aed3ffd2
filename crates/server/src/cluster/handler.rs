//! The serving side of the cluster transport: decodes a peer's request, finds the Raft group it
//! names and calls it. Groups not running here (yet) answer `NoSuchGroup`, which the sender
//! treats like an unreachable peer and retries.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock, Weak};

use armada_storage::{NodeId, TableId};

use bytes::Bytes;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use super::rpc::{self, PeerError, PeerRequest, PeerResponse, PeerResult, SnapshotHeader};
use crate::groups::handle::GroupHandle;
use crate::groups::snapshot::SnapshotData;
use crate::transport::{BodyStream, Handler, PeerId};

/// What serving peers needs of the node: its groups by id, where to spool a snapshot, and who
/// it is. The node implements it; the handler knows nothing else of the node.
pub trait GroupDirectory: Send + Sync {
    /// The running group with this id (the catalog's or a table's), if it runs here.
    fn group_by_id(&self, id: TableId) -> Option<GroupHandle>;
    /// A directory on the data volume for incoming snapshots.
    fn temporary_dir(&self) -> PathBuf;
    /// This node's Raft id.
    fn node_id(&self) -> NodeId;
    /// The client API address this node advertises.
    fn api_advertise_address(&self) -> String;
}

/// Serves peers on behalf of a node (set once the node exists).
#[derive(Default)]
pub struct PeerHandler {
    node: OnceLock<Weak<dyn GroupDirectory>>,
}

impl PeerHandler {
    pub fn new() -> Arc<Self> {
        Arc::new(PeerHandler::default())
    }

    pub fn attach<D: GroupDirectory + 'static>(&self, node: &Arc<D>) {
        let node: Arc<dyn GroupDirectory> = node.clone();
        let _ = self.node.set(Arc::downgrade(&node));
    }

    fn node(&self) -> Result<Arc<dyn GroupDirectory>, PeerError> {
        self.node
            .get()
            .and_then(Weak::upgrade)
            .ok_or_else(|| PeerError::Failed("this node is starting or stopping".into()))
    }

    fn group(&self, group: TableId) -> Result<(Arc<dyn GroupDirectory>, GroupHandle), PeerError> {
        // While the node starts or stops none of its groups runs here: callers retry on
        // `NoSuchGroup` (nothing was written), whereas `Failed` would end a forwarded write.
        let node = self.node().map_err(|_| PeerError::NoSuchGroup(group))?;
        let handle = node
            .group_by_id(group)
            .ok_or(PeerError::NoSuchGroup(group))?;
        Ok((node, handle))
    }

    async fn serve(&self, request: PeerRequest) -> PeerResult {
        match request {
            PeerRequest::AppendEntries { group, rpc } => {
                let (_, handle) = self.group(group)?;
                handle
                    .append_entries(rpc)
                    .await
                    .map(PeerResponse::AppendEntries)
            }
            PeerRequest::Vote { group, rpc } => {
                let (_, handle) = self.group(group)?;
                handle.vote(rpc).await.map(PeerResponse::Vote)
            }
            PeerRequest::PreVote { group, rpc } => {
                let (_, handle) = self.group(group)?;
                handle.pre_vote(rpc).await.map(PeerResponse::Vote)
            }
            PeerRequest::TransferLeader { group, rpc } => {
                let (_, handle) = self.group(group)?;
                handle
                    .transfer_leader(rpc)
                    .await
                    .map(PeerResponse::TransferLeader)
            }
            PeerRequest::Write { group, request } => {
                let (_, handle) = self.group(group)?;
                let (log_index, response) = handle.write_here(request).await?;
                Ok(PeerResponse::Write {
                    log_index,
                    response,
                })
            }
            PeerRequest::WriteBatch { group, requests } => {
                let (_, handle) = self.group(group)?;
                Ok(PeerResponse::WriteBatch(
                    handle.write_many_here(requests).await?,
                ))
            }
            PeerRequest::ReadIndex { group } => {
                let (_, handle) = self.group(group)?;
                Ok(PeerResponse::ReadIndex {
                    index: handle.read_index_here().await?,
                })
            }
            PeerRequest::NodeInfo => {
                let node = self.node()?;
                Ok(PeerResponse::NodeInfo {
                    node_id: node.node_id(),
                    api_address: node.api_advertise_address(),
                })
            }
        }
    }

    async fn install_snapshot(&self, header: SnapshotHeader, mut body: BodyStream) -> PeerResult {
        let (node, handle) = self.group(header.group)?;
        let spool = tempfile::tempfile_in(node.temporary_dir())
            .map_err(|error| PeerError::Failed(error.to_string()))?;
        let mut file = tokio::fs::File::from_std(spool);
        while let Some(chunk) = body.next().await {
            let chunk = chunk
                .map_err(|error| PeerError::Failed(format!("snapshot stream broke: {error}")))?;
            file.write_all(&chunk)
                .await
                .map_err(|error| PeerError::Failed(error.to_string()))?;
        }
        file.flush()
            .await
            .map_err(|error| PeerError::Failed(error.to_string()))?;
        let file = file.into_std().await;
        let response = handle
            .install_snapshot(header.vote, header.meta, SnapshotData::File(file))
            .await?;
        Ok(PeerResponse::Snapshot(response))
    }
}

#[async_trait::async_trait]
impl Handler for PeerHandler {
    async fn handle(&self, _from: PeerId, request: Bytes) -> Result<Bytes, String> {
        let request: PeerRequest = rpc::decode(&request)?;
        Ok(rpc::encode(&self.serve(request).await))
    }

    async fn handle_stream(
        &self,
        _from: PeerId,
        header: Bytes,
        body: BodyStream,
    ) -> Result<Bytes, String> {
        let header: SnapshotHeader = rpc::decode(&header)?;
        Ok(rpc::encode(&self.install_snapshot(header, body).await))
    }
}
