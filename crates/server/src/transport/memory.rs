//! An in-memory cluster network for tests: the [`Transport`] trait without sockets.
//!
//! A [`MemoryNetwork`] holds every node's [`Handler`]; [`MemoryNetwork::add_node`] returns the
//! node's [`MemoryTransport`]. A call runs the target's handler in a tokio task (as a real peer
//! would, it runs to completion even if the caller gives up), bounded by the caller's timeout.
//!
//! Faults a test can inject:
//!
//! - [`MemoryNetwork::set_link`] cuts or heals the link between two nodes, in both directions. A
//!   call over a cut link fails with [`TransportError::Unreachable`]; a call whose link is cut
//!   while the handler runs loses its response and fails with [`TransportError::Interrupted`]
//!   (the request may have been applied, as over a real network).
//! - [`MemoryNetwork::remove_node`] drops a node: calls to it are unreachable and its own
//!   transport is [`TransportError::Closed`]. Adding the same id again is a restart: the old
//!   transport stays closed, the new one works. [`Transport::shutdown`] of a node's transport
//!   drops it the same way (and leaves a newer incarnation of the node alone).
//!
//! Sizes are limited as on the wire ([`MAX_FRAME_BYTES`], bodies re-chunked to
//! [`STREAM_CHUNK_BYTES`] through a channel of [`STREAM_BODY_CHANNEL_CHUNKS`]), so a test that
//! passes here does not rely on something QUIC would refuse.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;

use super::{
    BodyStream, Handler, MAX_FRAME_BYTES, PeerId, STREAM_BODY_CHANNEL_CHUNKS, STREAM_CHUNK_BYTES,
    Transport, TransportError, check_size, split_into_chunks,
};

/// The nodes of an in-memory cluster and the links between them.
#[derive(Clone, Default)]
pub struct MemoryNetwork {
    state: Arc<Mutex<NetworkState>>,
}

#[derive(Default)]
struct NetworkState {
    nodes: BTreeMap<PeerId, Node>,
    /// Cut links, each stored as (smaller id, larger id).
    links_down: BTreeSet<(PeerId, PeerId)>,
    /// Counts node additions, so a restarted node's old transport is told apart.
    incarnations: u64,
}

struct Node {
    handler: Arc<dyn Handler>,
    incarnation: u64,
}

/// One node's endpoint on a [`MemoryNetwork`].
pub struct MemoryTransport {
    node_id: PeerId,
    incarnation: u64,
    network: MemoryNetwork,
}

impl MemoryNetwork {
    pub fn new() -> MemoryNetwork {
        MemoryNetwork::default()
    }

    /// Adds (or restarts) node `node`, served by `handler`, and returns its transport.
    pub fn add_node(&self, node: PeerId, handler: Arc<dyn Handler>) -> Arc<MemoryTransport> {
        let mut state = lock(&self.state);
        state.incarnations += 1;
        let incarnation = state.incarnations;
        state.nodes.insert(
            node,
            Node {
                handler,
                incarnation,
            },
        );
        Arc::new(MemoryTransport {
            node_id: node,
            incarnation,
            network: self.clone(),
        })
    }

    /// Drops node `node`: it is unreachable and its transport is closed.
    pub fn remove_node(&self, node: PeerId) {
        lock(&self.state).nodes.remove(&node);
    }

    /// Drops node `node` if it is still incarnation `incarnation` (a restarted node stays).
    fn remove_incarnation(&self, node: PeerId, incarnation: u64) {
        let mut state = lock(&self.state);
        if state
            .nodes
            .get(&node)
            .is_some_and(|current| current.incarnation == incarnation)
        {
            state.nodes.remove(&node);
        }
    }

    /// Cuts (`up == false`) or heals the link between `a` and `b`, both directions.
    pub fn set_link(&self, a: PeerId, b: PeerId, up: bool) {
        let key = (a.min(b), a.max(b));
        let mut state = lock(&self.state);
        if up {
            state.links_down.remove(&key);
        } else {
            state.links_down.insert(key);
        }
    }

    /// Cuts or heals every link of `node` to the nodes added so far.
    pub fn set_node_links(&self, node: PeerId, up: bool) {
        let others: Vec<PeerId> = lock(&self.state)
            .nodes
            .keys()
            .copied()
            .filter(|other| *other != node)
            .collect();
        for other in others {
            self.set_link(node, other, up);
        }
    }

    /// The handler serving a call from `from` (incarnation `incarnation`) to `target`.
    fn route(
        &self,
        from: PeerId,
        incarnation: u64,
        target: PeerId,
    ) -> Result<Arc<dyn Handler>, TransportError> {
        let state = lock(&self.state);
        match state.nodes.get(&from) {
            Some(node) if node.incarnation == incarnation => {}
            _ => return Err(TransportError::Closed),
        }
        let unreachable = |reason: &str| TransportError::Unreachable {
            peer: target,
            reason: reason.to_string(),
        };
        let node = state
            .nodes
            .get(&target)
            .ok_or_else(|| unreachable("the node is down"))?;
        if state
            .links_down
            .contains(&(from.min(target), from.max(target)))
        {
            return Err(unreachable("the link is cut"));
        }
        Ok(node.handler.clone())
    }
}

impl MemoryTransport {
    pub fn node_id(&self) -> PeerId {
        self.node_id
    }

    fn route(&self, target: PeerId) -> Result<Arc<dyn Handler>, TransportError> {
        self.network.route(self.node_id, self.incarnation, target)
    }

    /// Whether a response from `target` still gets back: the link must still be up.
    fn deliver<T>(&self, target: PeerId, response: T) -> Result<T, TransportError> {
        match self.route(target) {
            Ok(_) => Ok(response),
            Err(TransportError::Closed) => Err(TransportError::Closed),
            Err(_) => Err(TransportError::Interrupted {
                peer: target,
                reason: "the link went down during the call".to_string(),
            }),
        }
    }

    async fn exchange(&self, target: PeerId, request: Bytes) -> Result<Bytes, TransportError> {
        let handler = self.route(target)?;
        let from = self.node_id;
        let task = tokio::spawn(async move { handler.handle(from, request).await });
        let result = task.await.map_err(|error| TransportError::Interrupted {
            peer: target,
            reason: format!("the handler panicked: {error}"),
        })?;
        let response = self
            .deliver(target, result)?
            .map_err(TransportError::Remote)?;
        check_size("response", response.len(), MAX_FRAME_BYTES)?;
        Ok(response)
    }

    async fn exchange_stream(
        &self,
        target: PeerId,
        header: Bytes,
        mut body: BodyStream,
    ) -> Result<Bytes, TransportError> {
        let handler = self.route(target)?;
        let from = self.node_id;
        let (chunks, receiver) = tokio::sync::mpsc::channel(STREAM_BODY_CHANNEL_CHUNKS);
        let received: BodyStream = Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver));
        let mut task =
            tokio::spawn(async move { handler.handle_stream(from, header, received).await });
        // Ok once the body is sent (or the handler stopped reading it); an error of the body or
        // the link is handed to the handler as the body's abnormal end, and returned.
        let sending = async {
            while let Some(item) = body.next().await {
                let pieces = match item {
                    Ok(item) => split_into_chunks(item, STREAM_CHUNK_BYTES),
                    Err(error) => {
                        let _ = chunks.send(Err(error.clone())).await;
                        return Err(error);
                    }
                };
                for piece in pieces {
                    if let Err(error) = self.deliver(target, ()) {
                        let _ = chunks.send(Err(error.clone())).await;
                        return Err(error);
                    }
                    if chunks.send(Ok(piece)).await.is_err() {
                        return Ok(()); // the handler stopped reading
                    }
                }
            }
            Ok(())
        };
        let joined = tokio::select! {
            joined = &mut task => joined,
            sent = sending => {
                sent?;
                drop(chunks);
                (&mut task).await
            }
        };
        let result = joined.map_err(|error| TransportError::Interrupted {
            peer: target,
            reason: format!("the handler panicked: {error}"),
        })?;
        let response = self
            .deliver(target, result)?
            .map_err(TransportError::Remote)?;
        check_size("response", response.len(), MAX_FRAME_BYTES)?;
        Ok(response)
    }
}

#[async_trait::async_trait]
impl Transport for MemoryTransport {
    async fn call(
        &self,
        target: PeerId,
        request: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, TransportError> {
        check_size("request", request.len(), MAX_FRAME_BYTES)?;
        tokio::time::timeout(timeout, self.exchange(target, request))
            .await
            .unwrap_or(Err(TransportError::Timeout { peer: target }))
    }

    async fn call_stream(
        &self,
        target: PeerId,
        header: Bytes,
        body: BodyStream,
        timeout: Duration,
    ) -> Result<Bytes, TransportError> {
        check_size("stream header", header.len(), MAX_FRAME_BYTES)?;
        tokio::time::timeout(timeout, self.exchange_stream(target, header, body))
            .await
            .unwrap_or(Err(TransportError::Timeout { peer: target }))
    }

    /// Leaves the network as [`MemoryNetwork::remove_node`] does, unless the node was restarted
    /// (added again) since this transport was made.
    async fn shutdown(&self) {
        self.network
            .remove_incarnation(self.node_id, self.incarnation);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::tests::EchoHandler;
    use armada_storage::NodeId;

    const TIMEOUT: Duration = Duration::from_secs(5);

    fn three_nodes() -> (MemoryNetwork, Vec<Arc<MemoryTransport>>) {
        let network = MemoryNetwork::new();
        let transports = (1..=3)
            .map(|node| network.add_node(NodeId(node), Arc::new(EchoHandler::new(NodeId(node)))))
            .collect();
        (network, transports)
    }

    #[tokio::test]
    async fn calls_reach_the_target_handler() {
        let (_network, transports) = three_nodes();
        let response = transports[0]
            .call(NodeId(2), Bytes::from_static(b"ping"), TIMEOUT)
            .await
            .expect("call");
        assert_eq!(response, Bytes::from_static(b"node 2 from 1: ping"));
    }

    #[tokio::test]
    async fn a_partition_cuts_calls_until_healed() {
        let (network, transports) = three_nodes();
        network.set_link(NodeId(1), NodeId(2), false);
        let cut = transports[0]
            .call(NodeId(2), Bytes::from_static(b"x"), TIMEOUT)
            .await;
        assert!(
            matches!(
                cut,
                Err(TransportError::Unreachable {
                    peer: NodeId(2),
                    ..
                })
            ),
            "{cut:?}"
        );
        let reverse = transports[1]
            .call(NodeId(1), Bytes::from_static(b"x"), TIMEOUT)
            .await;
        assert!(matches!(
            reverse,
            Err(TransportError::Unreachable {
                peer: NodeId(1),
                ..
            })
        ));
        // Other links are unaffected.
        transports[0]
            .call(NodeId(3), Bytes::from_static(b"x"), TIMEOUT)
            .await
            .expect("1 → 3");
        network.set_link(NodeId(2), NodeId(1), true);
        transports[0]
            .call(NodeId(2), Bytes::from_static(b"x"), TIMEOUT)
            .await
            .expect("healed");

        network.set_node_links(NodeId(3), false);
        assert!(
            transports[0]
                .call(NodeId(3), Bytes::new(), TIMEOUT)
                .await
                .is_err()
        );
        assert!(
            transports[1]
                .call(NodeId(3), Bytes::new(), TIMEOUT)
                .await
                .is_err()
        );
        network.set_node_links(NodeId(3), true);
        transports[1]
            .call(NodeId(3), Bytes::new(), TIMEOUT)
            .await
            .expect("healed");
    }

    #[tokio::test]
    async fn a_removed_node_is_unreachable_and_closed_until_restarted() {
        let (network, transports) = three_nodes();
        network.remove_node(NodeId(2));
        let to_removed = transports[0].call(NodeId(2), Bytes::new(), TIMEOUT).await;
        assert!(matches!(
            to_removed,
            Err(TransportError::Unreachable { .. })
        ));
        let from_removed = transports[1].call(NodeId(1), Bytes::new(), TIMEOUT).await;
        assert_eq!(from_removed, Err(TransportError::Closed));

        let restarted = network.add_node(NodeId(2), Arc::new(EchoHandler::new(NodeId(2))));
        restarted
            .call(NodeId(1), Bytes::new(), TIMEOUT)
            .await
            .expect("restarted node calls");
        transports[0]
            .call(NodeId(2), Bytes::new(), TIMEOUT)
            .await
            .expect("restarted node answers");
        let old = transports[1].call(NodeId(1), Bytes::new(), TIMEOUT).await;
        assert_eq!(old, Err(TransportError::Closed));
    }

    #[tokio::test]
    async fn shutdown_closes_this_incarnation_only() {
        let (network, transports) = three_nodes();
        transports[1].shutdown().await;
        assert_eq!(
            transports[1].call(NodeId(1), Bytes::new(), TIMEOUT).await,
            Err(TransportError::Closed)
        );
        assert!(matches!(
            transports[0].call(NodeId(2), Bytes::new(), TIMEOUT).await,
            Err(TransportError::Unreachable { .. })
        ));

        let restarted = network.add_node(NodeId(3), Arc::new(EchoHandler::new(NodeId(3))));
        transports[2].shutdown().await; // the old incarnation stopping late
        restarted
            .call(NodeId(1), Bytes::new(), TIMEOUT)
            .await
            .expect("the restarted node still calls");
        transports[0]
            .call(NodeId(3), Bytes::new(), TIMEOUT)
            .await
            .expect("the restarted node still answers");
    }

    #[tokio::test]
    async fn handler_errors_and_sizes_are_reported() {
        let (_network, transports) = three_nodes();
        let failed = transports[0]
            .call(NodeId(2), Bytes::from_static(b"fail"), TIMEOUT)
            .await;
        assert!(
            matches!(failed, Err(TransportError::Remote(_))),
            "{failed:?}"
        );
        let huge = Bytes::from(vec![0u8; MAX_FRAME_BYTES + 1]);
        let refused = transports[0].call(NodeId(2), huge, TIMEOUT).await;
        assert!(matches!(
            refused,
            Err(TransportError::TooLarge {
                what: "request",
                ..
            })
        ));
    }

    #[tokio::test]
    async fn a_streamed_body_arrives_in_chunks() {
        let (_network, transports) = three_nodes();
        let item = Bytes::from(vec![7u8; 3 * STREAM_CHUNK_BYTES + 5]);
        let body: BodyStream = Box::pin(futures::stream::iter(vec![Ok(item.clone())]));
        let response = transports[0]
            .call_stream(NodeId(2), Bytes::from_static(b"h"), body, TIMEOUT)
            .await
            .expect("stream");
        let expected = crate::transport::tests::describe_body(&[item]);
        assert_eq!(response, expected);

        let failing: BodyStream = Box::pin(futures::stream::iter(vec![
            Ok(Bytes::from_static(b"first")),
            Err(TransportError::Remote(
                "the snapshot reader failed".to_string(),
            )),
        ]));
        let response = transports[0]
            .call_stream(NodeId(2), Bytes::from_static(b"h"), failing, TIMEOUT)
            .await;
        assert_eq!(
            response,
            Err(TransportError::Remote(
                "the snapshot reader failed".to_string()
            ))
        );
    }
}
