//! The intra-cluster transport: how the nodes of one cluster send each other requests.
//!
//! Everything a node says to a peer — Raft AppendEntries and Vote for any of its groups, a
//! forwarded write or read, a snapshot install — is one *exchange*: a request (opaque bytes)
//! travels to the peer's [`Handler`], which answers with one response (opaque bytes) or an error
//! message. A snapshot install is the same exchange with a large body streamed after a small
//! header ([`Transport::call_stream`]), so neither side ever holds the whole snapshot in memory.
//!
//! The bytes are opaque here: encoding Raft messages is the Raft glue's business, and this
//! module knows nothing of groups, terms or tables. Two implementations share the
//! [`Transport`] trait:
//!
//! - [`quic::QuicTransport`], the real one: QUIC (quinn) with one connection per peer pair and one
//!   bidirectional stream per exchange, so a snapshot streaming on one stream never delays a
//!   heartbeat of another group on another stream. TLS always; mutual TLS with a CA when
//!   configured ([`tls::TlsMode`]). Its wire format is described in [`quic`] and in
//!   `docs/format.md` (*Cluster transport (QUIC)*).
//! - [`memory::MemoryNetwork`], for tests: calls go straight to the target's handler through
//!   tokio tasks, and a test can cut and heal links or drop a node.
//!
//! Invariants both keep:
//!
//! - Every exchange is bounded: in size ([`MAX_FRAME_BYTES`] for a request, a response or a
//!   stream header; [`STREAM_CHUNK_BYTES`] per body chunk) and in time (the caller's timeout).
//! - A streamed body is handed to [`Handler::handle_stream`] chunk by chunk as it arrives,
//!   through a bounded channel ([`STREAM_BODY_CHANNEL_CHUNKS`]); a slow handler slows the sender
//!   down (flow control) rather than buffering the body.
//! - [`TransportError`] tells the caller whether the request can have reached the peer:
//!   [`TransportError::Unreachable`] and [`TransportError::TooLarge`] mean it did not;
//!   [`TransportError::Timeout`] and [`TransportError::Interrupted`] mean it may have, so a
//!   forwarded write in that state has an unknown outcome.

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;

pub mod memory;
pub mod quic;
pub mod tls;

mod frame;

#[cfg(test)]
mod tests;

pub use memory::{MemoryNetwork, MemoryTransport};
pub use quic::{QuicConfig, QuicLimits, QuicTransport};
pub use tls::TlsMode;

/// A node of the cluster, as the transport names it (the Raft node id).
pub type PeerId = armada_storage::NodeId;

/// The largest request, response or stream header, in bytes. A Raft AppendEntries batch can be
/// several MiB; anything near this limit is a bug upstream, not traffic.
pub const MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;

/// The largest chunk of a streamed body on the wire; bigger items of a body are split.
pub const STREAM_CHUNK_BYTES: usize = 1024 * 1024;

/// How many received body chunks may wait for a slow `handle_stream` before the receiver stops
/// reading (and flow control stops the sender).
pub const STREAM_BODY_CHANNEL_CHUNKS: usize = 8;

/// A streamed body: its chunks in order. An `Err` item ends the body abnormally.
pub type BodyStream =
    Pin<Box<dyn futures::Stream<Item = Result<Bytes, TransportError>> + Send + 'static>>;

/// What a node serves to its peers. Implemented by the Raft glue; used as `Arc<dyn Handler>`.
#[async_trait::async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Answers one request (Raft AppendEntries or Vote, a forwarded write or read). The bytes are
    /// opaque to the transport; an `Err` reaches the caller as [`TransportError::Remote`].
    async fn handle(&self, from: PeerId, request: Bytes) -> Result<Bytes, String>;

    /// Answers a request with a large streamed body (a snapshot install): `header`, then the
    /// body's chunks in order as they arrive. A handler that returns before the body's end
    /// abandons the rest of it.
    async fn handle_stream(
        &self,
        from: PeerId,
        header: Bytes,
        body: BodyStream,
    ) -> Result<Bytes, String>;
}

/// How a node reaches its peers.
#[async_trait::async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Sends `request` to `target` and waits for its response, bounded by `timeout`.
    async fn call(
        &self,
        target: PeerId,
        request: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, TransportError>;

    /// Sends `header` and then every chunk of `body` to `target`'s `handle_stream`, and waits for
    /// the response, all bounded by `timeout`. The body is streamed, never collected.
    async fn call_stream(
        &self,
        target: PeerId,
        header: Bytes,
        body: BodyStream,
        timeout: Duration,
    ) -> Result<Bytes, TransportError>;

    /// Stops this node's endpoint: its calls fail with [`TransportError::Closed`] from now on
    /// and its peers find it unreachable.
    async fn shutdown(&self);
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum TransportError {
    /// No connection to the peer could be used; the request was not delivered.
    #[error("node {peer} is unreachable: {reason}")]
    Unreachable { peer: PeerId, reason: String },
    /// The caller's timeout ran out; the request may or may not have been delivered.
    #[error("node {peer} did not answer in time")]
    Timeout { peer: PeerId },
    /// The connection broke during the exchange; the request may or may not have been delivered.
    #[error("the exchange with node {peer} was interrupted: {reason}")]
    Interrupted { peer: PeerId, reason: String },
    /// The peer's handler answered with an error.
    #[error("the peer's handler failed: {0}")]
    Remote(String),
    /// A request, response, header or chunk exceeds a limit (named by `what`).
    #[error("{what} of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        what: &'static str,
        size: u64,
        limit: u64,
    },
    /// The peer is not in this node's peer list.
    #[error("node {peer} is not a known peer")]
    UnknownPeer { peer: PeerId },
    /// A peer broke the wire protocol.
    #[error("protocol error with node {peer}: {reason}")]
    Protocol { peer: PeerId, reason: String },
    /// The transport could not be set up (addresses, certificates, socket).
    #[error("transport setup failed: {0}")]
    Setup(String),
    /// This node's transport has been shut down.
    #[error("the transport is shut down")]
    Closed,
}

/// Splits a body item into wire chunks of at most `chunk_bytes` (no copy: `Bytes` slices).
fn split_into_chunks(mut item: Bytes, chunk_bytes: usize) -> impl Iterator<Item = Bytes> {
    assert!(chunk_bytes > 0, "the stream chunk size must be positive");
    std::iter::from_fn(move || {
        if item.is_empty() {
            return None;
        }
        let length = item.len().min(chunk_bytes);
        Some(item.split_to(length))
    })
}

/// Checks a frame size against its limit.
fn check_size(what: &'static str, size: usize, limit: usize) -> Result<(), TransportError> {
    if size > limit {
        return Err(TransportError::TooLarge {
            what,
            size: size as u64,
            limit: limit as u64,
        });
    }
    Ok(())
}
