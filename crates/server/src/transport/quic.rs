//! The QUIC transport: one connection per peer pair, one bidirectional stream per exchange.
//!
//! ## Connections
//!
//! A node dials a peer lazily, on the first call to it, and keeps the connection. Concurrent
//! callers share one dial attempt (a spawned task whose result they all await). A failed dial
//! makes calls fail fast with [`TransportError::Unreachable`] until the next attempt is due, the
//! wait doubling from [`RECONNECT_BACKOFF_INITIAL`] up to [`RECONNECT_BACKOFF_MAX`]; a connection
//! that has closed is replaced by a fresh dial on the next call. The peer's `host:port` is
//! resolved at each dial, so a peer that moved is found again.
//!
//! Both nodes of a pair may dial each other, and usually do: each uses its own outgoing
//! connection for its calls and serves the incoming one. An acceptor keeps one incoming
//! connection per dialer: a new hello from the same `PeerId` (a restarted peer) closes the old
//! connection, so a restarting peer leaks nothing. Keep-alives every [`KEEP_ALIVE_INTERVAL`] and
//! the [`IDLE_TIMEOUT`] detect a dead peer; a restarted peer resets the old connection at once,
//! since its stateless-reset key is stable across restarts (see [`super::tls`]).
//!
//! ## Wire format (ALPN `armada-raft/1`)
//!
//! Every message is a frame, `length: u32 BE ‖ kind: u8 ‖ content` (see [`super::frame`]):
//!
//! 1. **Hello.** The dialer opens the connection's first bidirectional stream and sends
//!    `Hello(dialer PeerId: u64 BE)`; the acceptor answers `HelloAck(acceptor PeerId)` and both
//!    finish the stream. The dialer checks the acceptor is the peer it meant to reach. The
//!    acceptor serves no other stream before the hello (bounded by [`HELLO_TIMEOUT`]). In mutual
//!    TLS mode a peer without a CA-signed certificate never gets this far; the dialer dials
//!    node `N` under the TLS server name `node-N`, and the acceptor closes the connection
//!    instead of answering a hello whose `PeerId` the dialer's certificate does not name (see
//!    [`super::tls`]).
//! 2. **Call.** The caller opens a stream, sends `Call(request)` and finishes its side; the
//!    acceptor answers with one of `Response(bytes)`, `RemoteError(message)`,
//!    `TooLarge(what, size, limit)` or `ProtocolError(message)`, and finishes.
//! 3. **Streamed call.** Like a call, but `StreamHeader(header)`, then `StreamChunk(bytes)` for
//!    each chunk of at most `stream_chunk_bytes`, then `StreamEnd`. The acceptor may answer
//!    before the end (a handler that stops early); it then stops reading the stream. A body
//!    without `StreamEnd` (a caller that gave up) is reported to the handler as interrupted.
//!
//! ## Limits and memory
//!
//! A frame's content is at most `max_frame_bytes` ([`super::MAX_FRAME_BYTES`]), a chunk at most
//! `stream_chunk_bytes` ([`super::STREAM_CHUNK_BYTES`]); a caller refuses to send more, an
//! acceptor refuses to read more (and answers `TooLarge`). An acceptor serves at most
//! [`MAX_INBOUND_STREAMS_PER_CONNECTION`] streams of a connection at once (QUIC stream credit:
//! a caller beyond it waits) and [`MAX_INBOUND_CONNECTIONS`] connections. Each stream is served
//! by its own task, and QUIC flow control is per stream ([`STREAM_RECEIVE_WINDOW_BYTES`]), so a
//! stalled snapshot never holds back another stream; body streams are also sent at a lower
//! priority than calls. A body is read chunk by chunk into a bounded channel
//! ([`super::STREAM_BODY_CHANNEL_CHUNKS`]), so a receiver holds at most that many chunks plus
//! one window of a stream at a time.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::future::{BoxFuture, FutureExt, Shared};
use quinn::VarInt;
use tokio::time::Instant;

use super::frame::{self, Frame, FrameKind, ReadFrameError};
use super::tls::TlsMode;
use super::{
    BodyStream, Handler, MAX_FRAME_BYTES, PeerId, STREAM_BODY_CHANNEL_CHUNKS, STREAM_CHUNK_BYTES,
    Transport, TransportError, check_size, split_into_chunks,
};

/// How many streams a peer may have open towards this node on one connection at once.
pub const MAX_INBOUND_STREAMS_PER_CONNECTION: u32 = 1024;
/// How many incoming connections (handshaking or established) this node accepts at once.
pub const MAX_INBOUND_CONNECTIONS: usize = 64;
/// How often an idle connection is pinged, so a dead peer is noticed within the idle timeout.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// How long a connection may go without hearing from the peer before it is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a dial (resolution, handshake and hello) may take; also the acceptor's wait for
/// the hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// The wait after a first failed dial before the next; it doubles after each failure.
pub const RECONNECT_BACKOFF_INITIAL: Duration = Duration::from_millis(50);
/// The longest wait between dials.
pub const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Flow-control window of one stream: how much a peer may send ahead of the reader.
pub const STREAM_RECEIVE_WINDOW_BYTES: u32 = 2 * 1024 * 1024;
/// How much this node may have in flight unacknowledged on a connection.
pub const SEND_WINDOW_BYTES: u64 = 8 * 1024 * 1024;

/// Application error codes of QUIC `CONNECTION_CLOSE`, `RESET_STREAM` and `STOP_SENDING`.
const CODE_SHUTDOWN: u32 = 0;
const CODE_SUPERSEDED: u32 = 1;
const CODE_PROTOCOL: u32 = 2;
const CODE_REFUSED: u32 = 3;
const CODE_ABANDONED: u32 = 4;

/// How long a call may wait for a connection and a stream before it counts as undelivered.
/// Short, so that a request for a dead peer fails fast and can be retried elsewhere.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// How a node's QUIC transport is set up.
#[derive(Clone, Debug)]
pub struct QuicConfig {
    /// This node.
    pub node_id: PeerId,
    /// The UDP address to listen on (port 0 picks one; see [`QuicTransport::local_addr`]).
    pub listen: SocketAddr,
    /// The peers' `host:port`, resolved at each dial.
    pub peers: BTreeMap<PeerId, String>,
    /// Encryption and authentication.
    pub tls: TlsMode,
}

/// The limits and timings of a transport. [`Default`] gives the named constants; tests shrink
/// them.
#[derive(Clone, Debug)]
pub struct QuicLimits {
    pub max_frame_bytes: usize,
    pub stream_chunk_bytes: usize,
    pub max_inbound_streams_per_connection: u32,
    pub max_inbound_connections: usize,
    pub keep_alive_interval: Duration,
    pub idle_timeout: Duration,
    pub hello_timeout: Duration,
    pub reconnect_backoff_initial: Duration,
    pub reconnect_backoff_max: Duration,
    pub stream_receive_window_bytes: u32,
    pub send_window_bytes: u64,
}

impl Default for QuicLimits {
    fn default() -> Self {
        QuicLimits {
            max_frame_bytes: MAX_FRAME_BYTES,
            stream_chunk_bytes: STREAM_CHUNK_BYTES,
            max_inbound_streams_per_connection: MAX_INBOUND_STREAMS_PER_CONNECTION,
            max_inbound_connections: MAX_INBOUND_CONNECTIONS,
            keep_alive_interval: KEEP_ALIVE_INTERVAL,
            idle_timeout: IDLE_TIMEOUT,
            hello_timeout: HELLO_TIMEOUT,
            reconnect_backoff_initial: RECONNECT_BACKOFF_INITIAL,
            reconnect_backoff_max: RECONNECT_BACKOFF_MAX,
            stream_receive_window_bytes: STREAM_RECEIVE_WINDOW_BYTES,
            send_window_bytes: SEND_WINDOW_BYTES,
        }
    }
}

impl QuicLimits {
    fn transport_config(&self) -> Result<quinn::TransportConfig, TransportError> {
        let idle_timeout = quinn::IdleTimeout::try_from(self.idle_timeout)
            .map_err(|error| TransportError::Setup(format!("idle timeout: {error}")))?;
        let mut config = quinn::TransportConfig::default();
        config
            .max_concurrent_bidi_streams(VarInt::from_u32(self.max_inbound_streams_per_connection))
            .max_concurrent_uni_streams(VarInt::from_u32(0))
            .keep_alive_interval(Some(self.keep_alive_interval))
            .max_idle_timeout(Some(idle_timeout))
            .stream_receive_window(VarInt::from_u32(self.stream_receive_window_bytes))
            .send_window(self.send_window_bytes);
        Ok(config)
    }

    fn reconnect_backoff(&self, consecutive_failures: u32) -> Duration {
        let doublings = consecutive_failures.saturating_sub(1).min(16);
        self.reconnect_backoff_initial
            .saturating_mul(1 << doublings)
            .min(self.reconnect_backoff_max)
    }
}

/// A node's QUIC endpoint: dials its peers for [`Transport`] calls and serves their calls with
/// its [`Handler`].
pub struct QuicTransport {
    node_id: PeerId,
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    limits: QuicLimits,
    links: Mutex<BTreeMap<PeerId, Arc<PeerLink>>>,
    inbound: Arc<Inbound>,
    closed: AtomicBool,
}

/// This node's side of its connection to one peer.
struct PeerLink {
    peer: PeerId,
    address: String,
    state: Mutex<LinkState>,
}

type DialFuture = Shared<BoxFuture<'static, Result<quinn::Connection, TransportError>>>;

enum LinkState {
    /// No connection. After failures, no dial before `retry_at`.
    Idle {
        consecutive_failures: u32,
        retry_at: Option<Instant>,
        last_error: String,
    },
    Dialing(DialFuture),
    Connected(quinn::Connection),
}

/// What the accept side shares with its tasks.
struct Inbound {
    node_id: PeerId,
    handler: Arc<dyn Handler>,
    limits: QuicLimits,
    /// The established incoming connection of each dialer.
    connections: Mutex<BTreeMap<PeerId, quinn::Connection>>,
    /// Incoming connections being served, handshaking ones included.
    connections_open: AtomicUsize,
    /// Mutual TLS: a dialer's certificate must name the node id of its hello.
    authenticates_peers: bool,
}

impl QuicTransport {
    /// Binds `config.listen`, starts serving peers with `handler` and returns the transport.
    pub async fn start(
        config: QuicConfig,
        handler: Arc<dyn Handler>,
    ) -> Result<Arc<QuicTransport>, TransportError> {
        Self::start_with_limits(config, QuicLimits::default(), handler).await
    }

    /// [`QuicTransport::start`] with other limits than the defaults.
    pub async fn start_with_limits(
        config: QuicConfig,
        limits: QuicLimits,
        handler: Arc<dyn Handler>,
    ) -> Result<Arc<QuicTransport>, TransportError> {
        assert!(
            limits.stream_chunk_bytes > 0 && limits.stream_chunk_bytes <= limits.max_frame_bytes
        );
        assert!(limits.max_frame_bytes < u32::MAX as usize);
        let tls = config.tls.setup(config.node_id)?;
        let authenticates_peers = tls.authenticates_peers;
        let transport_config = Arc::new(limits.transport_config()?);

        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(tls.server));
        server_config.transport_config(transport_config.clone());
        let mut client_config = quinn::ClientConfig::new(Arc::new(tls.client));
        client_config.transport_config(transport_config);

        let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &tls.reset_secret);
        let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(reset_key.clone()));
        endpoint_config.cid_generator(move || Box::new(KeyedConnectionIds::new(reset_key.clone())));
        let socket = std::net::UdpSocket::bind(config.listen).map_err(|error| {
            TransportError::Setup(format!("binding {}: {error}", config.listen))
        })?;
        let endpoint = quinn::Endpoint::new(
            endpoint_config,
            Some(server_config),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|error| TransportError::Setup(format!("QUIC endpoint: {error}")))?;

        let inbound = Arc::new(Inbound {
            node_id: config.node_id,
            handler,
            limits: limits.clone(),
            connections: Mutex::new(BTreeMap::new()),
            connections_open: AtomicUsize::new(0),
            authenticates_peers,
        });
        tokio::spawn(accept_connections(endpoint.clone(), inbound.clone()));

        let links = config
            .peers
            .into_iter()
            .map(|(peer, address)| (peer, Arc::new(PeerLink::new(peer, address))))
            .collect();
        Ok(Arc::new(QuicTransport {
            node_id: config.node_id,
            endpoint,
            client_config,
            limits,
            links: Mutex::new(links),
            inbound,
            closed: AtomicBool::new(false),
        }))
    }

    /// The address the endpoint is bound to.
    pub fn local_addr(&self) -> Result<SocketAddr, TransportError> {
        self.endpoint
            .local_addr()
            .map_err(|error| TransportError::Setup(format!("local address: {error}")))
    }

    /// This node's id.
    pub fn node_id(&self) -> PeerId {
        self.node_id
    }

    /// Adds a peer or changes its address; an existing connection to it is closed.
    pub fn set_peer_address(&self, peer: PeerId, address: String) {
        let previous = lock(&self.links).insert(peer, Arc::new(PeerLink::new(peer, address)));
        if let Some(previous) = previous {
            previous.close();
        }
    }

    /// How many peers have an established incoming connection to this node.
    pub fn inbound_connection_count(&self) -> usize {
        lock(&self.inbound.connections).len()
    }

    /// How many peers this node has an established outgoing connection to.
    pub fn outbound_connection_count(&self) -> usize {
        lock(&self.links)
            .values()
            .filter(|link| link.is_connected())
            .count()
    }

    /// Closes every connection and the endpoint, and waits until the peers were told (bounded
    /// by QUIC's close timers). Calls fail with [`TransportError::Closed`] from now on.
    pub async fn shutdown(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.endpoint
            .close(VarInt::from_u32(CODE_SHUTDOWN), b"node shutting down");
        self.endpoint.wait_idle().await;
    }

    /// Test support, a `kill -9`: frees this node's port without telling any peer. The endpoint
    /// moves to a fresh port, from which its packets are ignored by the peers it dialled (a
    /// QUIC client drops packets from an address other than its server's).
    #[cfg(test)]
    pub(crate) fn simulate_crash(&self) {
        // Twice: quinn keeps the previous socket open for packets still in flight.
        for _ in 0..2 {
            let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind a spare socket");
            self.endpoint.rebind(socket).expect("rebind");
        }
        self.closed.store(true, Ordering::SeqCst);
    }

    fn link(&self, peer: PeerId) -> Result<Arc<PeerLink>, TransportError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(TransportError::Closed);
        }
        lock(&self.links)
            .get(&peer)
            .cloned()
            .ok_or(TransportError::UnknownPeer { peer })
    }

    /// The connection to `link`'s peer: the kept one, the dial in progress, or a new dial.
    async fn connection(&self, link: &Arc<PeerLink>) -> Result<quinn::Connection, TransportError> {
        let dial = {
            let mut state = lock(&link.state);
            match &*state {
                LinkState::Connected(connection) if connection.close_reason().is_none() => {
                    return Ok(connection.clone());
                }
                LinkState::Dialing(dial) => dial.clone(),
                LinkState::Idle {
                    retry_at: Some(retry_at),
                    last_error,
                    ..
                } if Instant::now() < *retry_at => {
                    return Err(TransportError::Unreachable {
                        peer: link.peer,
                        reason: format!("{last_error} (next attempt after the backoff)"),
                    });
                }
                LinkState::Idle { .. } | LinkState::Connected(_) => {
                    let dial = self.spawn_dial(link.clone());
                    *state = LinkState::Dialing(dial.clone());
                    dial
                }
            }
        };
        dial.await
    }

    /// Starts a dial in its own task, so it completes even if every waiting caller gives up.
    fn spawn_dial(&self, link: Arc<PeerLink>) -> DialFuture {
        let endpoint = self.endpoint.clone();
        let client_config = self.client_config.clone();
        let node_id = self.node_id;
        let limits = self.limits.clone();
        let peer = link.peer;
        let task = tokio::spawn(async move {
            let attempt = dial(&endpoint, client_config, node_id, &link);
            let result = match tokio::time::timeout(limits.hello_timeout, attempt).await {
                Ok(result) => result,
                Err(_) => Err(format!("no handshake within {:?}", limits.hello_timeout)),
            };
            link.record_dial(result, &limits)
        });
        task.map(move |joined| {
            joined.unwrap_or_else(|error| {
                Err(TransportError::Unreachable {
                    peer,
                    reason: format!("the dial task failed: {error}"),
                })
            })
        })
        .boxed()
        .shared()
    }

    /// Connects (or reuses the connection) and opens a stream, within `limit`. Nothing has
    /// been sent when this fails, so a timeout here means "not delivered" (`Unreachable`),
    /// which lets callers retry elsewhere safely.
    async fn open(
        &self,
        target: PeerId,
        limit: Duration,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), TransportError> {
        let attempt = async {
            let link = self.link(target)?;
            let connection = self.connection(&link).await?;
            open_stream(&connection, target).await
        };
        match tokio::time::timeout(limit, attempt).await {
            Ok(result) => result,
            Err(_) => Err(TransportError::Unreachable {
                peer: target,
                reason: format!("no connection within {limit:?}"),
            }),
        }
    }

    async fn exchange(
        &self,
        target: PeerId,
        request: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, TransportError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let (mut send, mut receive) = self.open(target, timeout.min(CONNECT_TIMEOUT)).await?;
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(
            remaining,
            Self::send_and_receive(
                &mut send,
                &mut receive,
                request,
                target,
                self.limits.max_frame_bytes,
            ),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => Err(TransportError::Timeout { peer: target }),
        }
    }

    async fn send_and_receive(
        send: &mut quinn::SendStream,
        receive: &mut quinn::RecvStream,
        request: Bytes,
        target: PeerId,
        max_frame_bytes: usize,
    ) -> Result<Bytes, TransportError> {
        frame::write_frame(send, FrameKind::Call, request)
            .await
            .map_err(|error| interrupted(target, error))?;
        // Finishing fails only if the stream was reset meanwhile; the response read says why.
        let _ = send.finish();
        read_response(receive, target, max_frame_bytes).await
    }

    async fn exchange_stream(
        &self,
        target: PeerId,
        header: Bytes,
        body: BodyStream,
    ) -> Result<Bytes, TransportError> {
        let (send, mut receive) = self.open(target, CONNECT_TIMEOUT).await?;
        // Bulk bodies yield to calls (heartbeats, votes) when both wait to be sent.
        let _ = send.set_priority(-1);
        let sending = send_body(send, header, body, target, self.limits.stream_chunk_bytes);
        let receiving = read_response(&mut receive, target, self.limits.max_frame_bytes);
        futures::pin_mut!(sending, receiving);
        match futures::future::select(sending, receiving).await {
            // The acceptor answered before the whole body was sent: its answer stands.
            futures::future::Either::Right((response, _sending)) => response,
            futures::future::Either::Left((Ok(()), receiving)) => receiving.await,
            // The caller's own body failed: that is the error, whatever the acceptor makes of
            // the abandoned stream.
            futures::future::Either::Left((Err(SendBodyError::Body(error)), _receiving)) => {
                Err(error)
            }
            // A refused body (the acceptor stopped the stream): its answer says why.
            futures::future::Either::Left((Err(SendBodyError::Write(write_error)), receiving)) => {
                match receiving.await {
                    Ok(response) => Ok(response),
                    Err(TransportError::Interrupted { .. }) => Err(write_error),
                    Err(error) => Err(error),
                }
            }
        }
    }
}

impl Drop for QuicTransport {
    fn drop(&mut self) {
        // Without this the accept task would keep the endpoint (and its port) alive.
        self.endpoint
            .close(VarInt::from_u32(CODE_SHUTDOWN), b"node shutting down");
    }
}

#[async_trait::async_trait]
impl Transport for QuicTransport {
    async fn call(
        &self,
        target: PeerId,
        request: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, TransportError> {
        check_size("request", request.len(), self.limits.max_frame_bytes)?;
        self.exchange(target, request, timeout).await
    }

    async fn call_stream(
        &self,
        target: PeerId,
        header: Bytes,
        body: BodyStream,
        timeout: Duration,
    ) -> Result<Bytes, TransportError> {
        check_size("stream header", header.len(), self.limits.max_frame_bytes)?;
        match tokio::time::timeout(timeout, self.exchange_stream(target, header, body)).await {
            Ok(result) => result,
            Err(_) => Err(TransportError::Timeout { peer: target }),
        }
    }

    async fn shutdown(&self) {
        QuicTransport::shutdown(self).await;
    }
}

impl PeerLink {
    fn new(peer: PeerId, address: String) -> PeerLink {
        PeerLink {
            peer,
            address,
            state: Mutex::new(LinkState::Idle {
                consecutive_failures: 0,
                retry_at: None,
                last_error: String::new(),
            }),
        }
    }

    fn is_connected(&self) -> bool {
        matches!(&*lock(&self.state), LinkState::Connected(connection) if connection.close_reason().is_none())
    }

    fn close(&self) {
        if let LinkState::Connected(connection) = &*lock(&self.state) {
            connection.close(VarInt::from_u32(CODE_SHUTDOWN), b"peer removed");
        }
    }

    /// Records a dial's outcome in the link's state and returns it as the callers see it.
    fn record_dial(
        &self,
        result: Result<quinn::Connection, String>,
        limits: &QuicLimits,
    ) -> Result<quinn::Connection, TransportError> {
        let mut state = lock(&self.state);
        let previous_failures = match &*state {
            LinkState::Idle {
                consecutive_failures,
                ..
            } => *consecutive_failures,
            LinkState::Dialing(_) | LinkState::Connected(_) => 0,
        };
        match result {
            Ok(connection) => {
                *state = LinkState::Connected(connection.clone());
                Ok(connection)
            }
            Err(reason) => {
                let consecutive_failures = previous_failures.saturating_add(1);
                let retry_at = Instant::now() + limits.reconnect_backoff(consecutive_failures);
                tracing::debug!(peer = %self.peer, address = %self.address, %reason, "dial failed");
                *state = LinkState::Idle {
                    consecutive_failures,
                    retry_at: Some(retry_at),
                    last_error: reason.clone(),
                };
                Err(TransportError::Unreachable {
                    peer: self.peer,
                    reason,
                })
            }
        }
    }
}

/// Connection ids a later incarnation of this node recognises: a random nonce followed by a
/// keyed tag of it. quinn answers a packet for an unknown connection with a stateless reset only
/// if its id generator accepts the id; with quinn's default generator (a random key per
/// process) a restarted node would drop its peers' packets silently, and they would wait for
/// the idle timeout. The key is the stateless-reset key, stable across restarts.
struct KeyedConnectionIds {
    key: ring::hmac::Key,
    random: ring::rand::SystemRandom,
}

const CONNECTION_ID_NONCE_BYTES: usize = 8;
const CONNECTION_ID_TAG_BYTES: usize = 4;

impl KeyedConnectionIds {
    fn new(key: ring::hmac::Key) -> KeyedConnectionIds {
        KeyedConnectionIds {
            key,
            random: ring::rand::SystemRandom::new(),
        }
    }

    fn tag(&self, nonce: &[u8]) -> [u8; CONNECTION_ID_TAG_BYTES] {
        let signature = ring::hmac::sign(&self.key, nonce);
        let mut tag = [0u8; CONNECTION_ID_TAG_BYTES];
        tag.copy_from_slice(&signature.as_ref()[..CONNECTION_ID_TAG_BYTES]);
        tag
    }
}

impl quinn::ConnectionIdGenerator for KeyedConnectionIds {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        let mut id = [0u8; CONNECTION_ID_NONCE_BYTES + CONNECTION_ID_TAG_BYTES];
        // The operating system's random source does not fail on the platforms we run on.
        ring::rand::SecureRandom::fill(&self.random, &mut id[..CONNECTION_ID_NONCE_BYTES])
            .expect("the system random source failed");
        let tag = self.tag(&id[..CONNECTION_ID_NONCE_BYTES]);
        id[CONNECTION_ID_NONCE_BYTES..].copy_from_slice(&tag);
        quinn::ConnectionId::new(&id)
    }

    fn validate(&self, id: &quinn::ConnectionId) -> Result<(), quinn_proto::InvalidCid> {
        if id.len() != self.cid_len() {
            return Err(quinn_proto::InvalidCid);
        }
        let (nonce, tag) = id.split_at(CONNECTION_ID_NONCE_BYTES);
        if self.tag(nonce) == tag {
            Ok(())
        } else {
            Err(quinn_proto::InvalidCid)
        }
    }

    fn cid_len(&self) -> usize {
        CONNECTION_ID_NONCE_BYTES + CONNECTION_ID_TAG_BYTES
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// Resolves the peer, connects and exchanges the hello. Errors are reasons for `Unreachable`.
async fn dial(
    endpoint: &quinn::Endpoint,
    client_config: quinn::ClientConfig,
    node_id: PeerId,
    link: &PeerLink,
) -> Result<quinn::Connection, String> {
    let local_address = endpoint
        .local_addr()
        .map_err(|error| format!("local address: {error}"))?;
    let remote_address = resolve(&link.address, local_address).await?;
    // The peer's certificate must name its node id (mutual TLS; see `super::tls`).
    let server_name = super::tls::node_certificate_name(link.peer);
    let connecting = endpoint
        .connect_with(client_config, remote_address, &server_name)
        .map_err(|error| format!("connecting to {}: {error}", link.address))?;
    let connection = connecting
        .await
        .map_err(|error| format!("connecting to {}: {error}", link.address))?;
    match exchange_hello(&connection, node_id, link.peer).await {
        Ok(()) => Ok(connection),
        Err(reason) => {
            connection.close(VarInt::from_u32(CODE_PROTOCOL), reason.as_bytes());
            Err(format!("hello with {}: {reason}", link.address))
        }
    }
}

/// Resolves `host:port`, preferring an address of the local socket's family.
async fn resolve(address: &str, local_address: SocketAddr) -> Result<SocketAddr, String> {
    let candidates: Vec<SocketAddr> = tokio::net::lookup_host(address)
        .await
        .map_err(|error| format!("resolving {address}: {error}"))?
        .collect();
    candidates
        .iter()
        .find(|candidate| candidate.is_ipv4() == local_address.is_ipv4())
        .or(candidates.first())
        .copied()
        .ok_or_else(|| format!("resolving {address}: no address"))
}

async fn exchange_hello(
    connection: &quinn::Connection,
    node_id: PeerId,
    expected_peer: PeerId,
) -> Result<(), String> {
    let (mut send, mut receive) = connection
        .open_bi()
        .await
        .map_err(|error| error.to_string())?;
    frame::write_frame(&mut send, FrameKind::Hello, frame::encode_peer_id(node_id))
        .await
        .map_err(|error| error.to_string())?;
    let _ = send.finish();
    let answer = frame::read_frame(&mut receive, 8)
        .await
        .map_err(|error| format!("no hello answer: {error:?}"))?;
    if answer.kind != FrameKind::HelloAck {
        return Err(format!("expected a hello answer, got {:?}", answer.kind));
    }
    match frame::decode_peer_id(&answer.content) {
        Some(peer) if peer == expected_peer => Ok(()),
        Some(peer) => Err(format!("it is node {peer}, not node {expected_peer}")),
        None => Err("a malformed hello answer".to_string()),
    }
}

async fn open_stream(
    connection: &quinn::Connection,
    target: PeerId,
) -> Result<(quinn::SendStream, quinn::RecvStream), TransportError> {
    // Nothing was sent yet: a failure here means the request was not delivered.
    connection
        .open_bi()
        .await
        .map_err(|error| TransportError::Unreachable {
            peer: target,
            reason: error.to_string(),
        })
}

fn interrupted(peer: PeerId, error: impl std::fmt::Display) -> TransportError {
    TransportError::Interrupted {
        peer,
        reason: error.to_string(),
    }
}

/// Reads the acceptor's answer to a call.
async fn read_response(
    receive: &mut quinn::RecvStream,
    peer: PeerId,
    max_frame_bytes: usize,
) -> Result<Bytes, TransportError> {
    let answer = match frame::read_frame(receive, max_frame_bytes).await {
        Ok(answer) => answer,
        Err(ReadFrameError::TooLarge { kind, size, limit }) => {
            let _ = receive.stop(VarInt::from_u32(CODE_REFUSED));
            return Err(TransportError::TooLarge {
                what: kind.description(),
                size,
                limit,
            });
        }
        Err(ReadFrameError::Malformed(reason)) => {
            return Err(TransportError::Protocol { peer, reason });
        }
        Err(ReadFrameError::Finished | ReadFrameError::Truncated) => {
            return Err(interrupted(peer, "the stream ended without a response"));
        }
        Err(ReadFrameError::Read(error)) => return Err(interrupted(peer, error)),
    };
    decode_answer(answer, peer)
}

fn decode_answer(answer: Frame, peer: PeerId) -> Result<Bytes, TransportError> {
    match answer.kind {
        FrameKind::Response => Ok(answer.content),
        FrameKind::RemoteError => Err(TransportError::Remote(frame::decode_message(
            &answer.content,
        ))),
        FrameKind::TooLarge => match frame::decode_too_large(&answer.content) {
            Some((what, size, limit)) => Err(TransportError::TooLarge { what, size, limit }),
            None => Err(TransportError::Protocol {
                peer,
                reason: "a malformed TooLarge answer".to_string(),
            }),
        },
        FrameKind::ProtocolError => Err(TransportError::Protocol {
            peer,
            reason: format!(
                "refused by the peer: {}",
                frame::decode_message(&answer.content)
            ),
        }),
        other => Err(TransportError::Protocol {
            peer,
            reason: format!("expected a response, got {other:?}"),
        }),
    }
}

/// Why a body could not be sent.
enum SendBodyError {
    /// The caller's body stream yielded an error.
    Body(TransportError),
    /// The QUIC stream failed (or the acceptor stopped reading).
    Write(TransportError),
}

/// Sends a stream header, the body in chunks of at most `chunk_bytes`, and the end marker.
async fn send_body(
    mut send: quinn::SendStream,
    header: Bytes,
    mut body: BodyStream,
    peer: PeerId,
    chunk_bytes: usize,
) -> Result<(), SendBodyError> {
    let write_error = |error: quinn::WriteError| SendBodyError::Write(interrupted(peer, error));
    frame::write_frame(&mut send, FrameKind::StreamHeader, header)
        .await
        .map_err(write_error)?;
    while let Some(item) = body.next().await {
        let item = match item {
            Ok(item) => item,
            Err(error) => {
                // Without StreamEnd the acceptor reports the body as interrupted.
                let _ = send.reset(VarInt::from_u32(CODE_ABANDONED));
                return Err(SendBodyError::Body(error));
            }
        };
        for chunk in split_into_chunks(item, chunk_bytes) {
            frame::write_frame(&mut send, FrameKind::StreamChunk, chunk)
                .await
                .map_err(write_error)?;
        }
    }
    frame::write_frame(&mut send, FrameKind::StreamEnd, Bytes::new())
        .await
        .map_err(write_error)?;
    let _ = send.finish();
    Ok(())
}

/// Accepts incoming connections until the endpoint closes; one task per connection.
async fn accept_connections(endpoint: quinn::Endpoint, inbound: Arc<Inbound>) {
    while let Some(incoming) = endpoint.accept().await {
        let open = inbound.connections_open.fetch_add(1, Ordering::SeqCst);
        if open >= inbound.limits.max_inbound_connections {
            inbound.connections_open.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!(
                remote = %incoming.remote_address(),
                limit = inbound.limits.max_inbound_connections,
                "refusing a connection: too many incoming connections"
            );
            incoming.refuse();
            continue;
        }
        let inbound = inbound.clone();
        tokio::spawn(async move {
            serve_connection(incoming, &inbound).await;
            inbound.connections_open.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// Completes the handshake and the hello, then serves the connection's streams.
async fn serve_connection(incoming: quinn::Incoming, inbound: &Arc<Inbound>) {
    let remote = incoming.remote_address();
    let connection = match incoming.await {
        Ok(connection) => connection,
        Err(error) => {
            // A peer refused by mutual TLS ends here.
            tracing::info!(%remote, %error, "incoming connection failed its handshake");
            return;
        }
    };
    let hello = tokio::time::timeout(
        inbound.limits.hello_timeout,
        receive_hello(&connection, inbound),
    )
    .await;
    let from = match hello {
        Ok(Ok(from)) => from,
        Ok(Err(reason)) => {
            tracing::info!(%remote, %reason, "incoming connection failed its hello");
            connection.close(VarInt::from_u32(CODE_PROTOCOL), reason.as_bytes());
            return;
        }
        Err(_) => {
            connection.close(VarInt::from_u32(CODE_PROTOCOL), b"no hello in time");
            return;
        }
    };
    inbound.register(from, &connection);
    loop {
        match connection.accept_bi().await {
            Ok((send, receive)) => {
                tokio::spawn(serve_stream(from, send, receive, inbound.clone()));
            }
            Err(error) => {
                tracing::debug!(peer = %from, %error, "incoming connection closed");
                break;
            }
        }
    }
    inbound.unregister(from, &connection);
}

async fn receive_hello(
    connection: &quinn::Connection,
    inbound: &Inbound,
) -> Result<PeerId, String> {
    let (mut send, mut receive) = connection
        .accept_bi()
        .await
        .map_err(|error| error.to_string())?;
    let hello = frame::read_frame(&mut receive, 8)
        .await
        .map_err(|error| format!("unreadable hello: {error:?}"))?;
    if hello.kind != FrameKind::Hello {
        return Err(format!("expected a hello, got {:?}", hello.kind));
    }
    let from = frame::decode_peer_id(&hello.content).ok_or("a malformed hello")?;
    if inbound.authenticates_peers {
        super::tls::check_peer_certificate(connection, from)?;
    }
    frame::write_frame(
        &mut send,
        FrameKind::HelloAck,
        frame::encode_peer_id(inbound.node_id),
    )
    .await
    .map_err(|error| error.to_string())?;
    let _ = send.finish();
    Ok(from)
}

impl Inbound {
    /// Records `connection` as `from`'s; an older one from the same peer is closed.
    fn register(&self, from: PeerId, connection: &quinn::Connection) {
        let previous = lock(&self.connections).insert(from, connection.clone());
        if let Some(previous) = previous
            && previous.stable_id() != connection.stable_id()
        {
            previous.close(
                VarInt::from_u32(CODE_SUPERSEDED),
                b"superseded by a newer connection from the same node",
            );
        }
    }

    fn unregister(&self, from: PeerId, connection: &quinn::Connection) {
        let mut connections = lock(&self.connections);
        if connections
            .get(&from)
            .is_some_and(|current| current.stable_id() == connection.stable_id())
        {
            connections.remove(&from);
        }
    }
}

/// Serves one exchange: reads the request, runs the handler, writes its answer.
async fn serve_stream(
    from: PeerId,
    mut send: quinn::SendStream,
    mut receive: quinn::RecvStream,
    inbound: Arc<Inbound>,
) {
    let limits = &inbound.limits;
    let answer = match frame::read_frame(&mut receive, limits.max_frame_bytes).await {
        Ok(Frame {
            kind: FrameKind::Call,
            content,
        }) => answer_of(inbound.handler.handle(from, content).await, limits),
        Ok(Frame {
            kind: FrameKind::StreamHeader,
            content,
        }) => serve_body(from, content, receive, &inbound).await,
        Ok(Frame { kind, .. }) => (
            FrameKind::ProtocolError,
            frame::encode_message(&format!("a stream cannot start with {kind:?}")),
        ),
        Err(ReadFrameError::TooLarge { kind, size, limit }) => {
            let _ = receive.stop(VarInt::from_u32(CODE_REFUSED));
            (
                FrameKind::TooLarge,
                frame::encode_too_large(kind.description(), size, limit),
            )
        }
        Err(ReadFrameError::Malformed(reason)) => {
            (FrameKind::ProtocolError, frame::encode_message(&reason))
        }
        // The caller went away (timeout, shutdown): nobody to answer.
        Err(ReadFrameError::Finished | ReadFrameError::Truncated | ReadFrameError::Read(_)) => {
            return;
        }
    };
    let (kind, content) = answer;
    if frame::write_frame(&mut send, kind, content).await.is_ok() {
        let _ = send.finish();
    }
}

/// The answer frame for a handler's result.
fn answer_of(result: Result<Bytes, String>, limits: &QuicLimits) -> (FrameKind, Bytes) {
    match result {
        Ok(response) if response.len() > limits.max_frame_bytes => (
            FrameKind::TooLarge,
            frame::encode_too_large(
                "response",
                response.len() as u64,
                limits.max_frame_bytes as u64,
            ),
        ),
        Ok(response) => (FrameKind::Response, response),
        Err(message) => (FrameKind::RemoteError, frame::encode_message(&message)),
    }
}

/// Runs `handle_stream` while the body's chunks are read into a bounded channel.
async fn serve_body(
    from: PeerId,
    header: Bytes,
    receive: quinn::RecvStream,
    inbound: &Arc<Inbound>,
) -> (FrameKind, Bytes) {
    let (chunks, receiver) = tokio::sync::mpsc::channel(STREAM_BODY_CHANNEL_CHUNKS);
    let body: BodyStream = Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver));
    let reading = forward_body(from, receive, chunks, inbound.limits.stream_chunk_bytes);
    let handling = inbound.handler.handle_stream(from, header, body);
    futures::pin_mut!(reading, handling);
    let mut refusal = None;
    let result = loop {
        tokio::select! {
            result = &mut handling => break result,
            outcome = &mut reading, if refusal.is_none() => refusal = Some(outcome),
        }
    };
    // Dropping `reading` (if the handler stopped early) stops the stream: the caller stops.
    match refusal {
        Some(Err(TransportError::TooLarge { what, size, limit })) => (
            FrameKind::TooLarge,
            frame::encode_too_large(what, size, limit),
        ),
        _ => answer_of(result, &inbound.limits),
    }
}

/// Reads body chunks until `StreamEnd`, handing each to the handler's channel. An abnormal end
/// is handed over as an `Err` item too, and returned.
async fn forward_body(
    from: PeerId,
    mut receive: quinn::RecvStream,
    chunks: tokio::sync::mpsc::Sender<Result<Bytes, TransportError>>,
    chunk_limit: usize,
) -> Result<(), TransportError> {
    loop {
        let error = match frame::read_frame(&mut receive, chunk_limit).await {
            Ok(Frame {
                kind: FrameKind::StreamChunk,
                content,
            }) => {
                if chunks.send(Ok(content)).await.is_err() {
                    // The handler dropped the body: it wants no more.
                    return Ok(());
                }
                continue;
            }
            Ok(Frame {
                kind: FrameKind::StreamEnd,
                ..
            }) => return Ok(()),
            Ok(Frame { kind, .. }) => TransportError::Protocol {
                peer: from,
                reason: format!("expected a body chunk, got {kind:?}"),
            },
            Err(ReadFrameError::TooLarge { kind, size, limit }) => {
                let _ = receive.stop(VarInt::from_u32(CODE_REFUSED));
                TransportError::TooLarge {
                    what: kind.description(),
                    size,
                    limit,
                }
            }
            Err(ReadFrameError::Malformed(reason)) => {
                TransportError::Protocol { peer: from, reason }
            }
            Err(ReadFrameError::Finished | ReadFrameError::Truncated) => {
                interrupted(from, "the body ended without its end marker")
            }
            Err(ReadFrameError::Read(error)) => interrupted(from, error),
        };
        let _ = chunks.send(Err(error.clone())).await;
        return Err(error);
    }
}

/// Locks a mutex; a poisoned one (a panic while holding it) is still consistent here, since
/// every critical section only swaps whole values.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let limits = QuicLimits::default();
        assert_eq!(limits.reconnect_backoff(1), RECONNECT_BACKOFF_INITIAL);
        assert_eq!(limits.reconnect_backoff(2), RECONNECT_BACKOFF_INITIAL * 2);
        assert_eq!(limits.reconnect_backoff(3), RECONNECT_BACKOFF_INITIAL * 4);
        assert_eq!(limits.reconnect_backoff(40), RECONNECT_BACKOFF_MAX);
    }
}
