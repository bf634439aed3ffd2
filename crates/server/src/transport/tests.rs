//! Tests of the QUIC transport over 127.0.0.1, and the handler the transport tests share.
//!
//! No test asserts a wall-clock duration except the upper bound of a call's own timeout: order
//! is asserted with explicit gates (a handler that waits to be released).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use armada_storage::NodeId;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::Notify;

use super::quic::{QuicConfig, QuicLimits, QuicTransport};
use super::tls::TlsMode;
use super::{BodyStream, Handler, PeerId, STREAM_CHUNK_BYTES, Transport, TransportError};

const TIMEOUT: Duration = Duration::from_secs(10);

/// Answers `node N from M: <request>`; `fail` fails; `big:<n>` answers n bytes. A stream is
/// answered with [`describe_body`] of the chunks received.
pub(crate) struct EchoHandler {
    node: PeerId,
    /// Bytes the test's body has produced so far (for the bounded-memory check).
    produced_bytes: Option<Arc<AtomicU64>>,
    /// The most bytes produced but not yet consumed by this handler.
    largest_gap_bytes: Arc<AtomicU64>,
    /// Holds a stream after its first chunk until released.
    gate: Option<Arc<Gate>>,
}

pub(crate) struct Gate {
    first_chunk_received: Notify,
    release: Notify,
}

impl EchoHandler {
    pub(crate) fn new(node: PeerId) -> EchoHandler {
        EchoHandler {
            node,
            produced_bytes: None,
            largest_gap_bytes: Arc::new(AtomicU64::new(0)),
            gate: None,
        }
    }
}

/// What the echo handler answers for a body sent as `items`: its length, CRC-32, and how many
/// chunks exceeded [`STREAM_CHUNK_BYTES`] (none, since transports split bigger items).
pub(crate) fn describe_body(items: &[Bytes]) -> Bytes {
    let mut hasher = crc32fast::Hasher::new();
    let mut length = 0;
    let oversized = 0;
    for item in items {
        hasher.update(item);
        length += item.len();
    }
    Bytes::from(format!(
        "bytes={length} crc={:08x} oversized_chunks={oversized}",
        hasher.finalize()
    ))
}

#[async_trait::async_trait]
impl Handler for EchoHandler {
    async fn handle(&self, from: PeerId, request: Bytes) -> Result<Bytes, String> {
        if request.as_ref() == b"fail" {
            return Err(format!("node {} failed on purpose", self.node));
        }
        if let Some(size) = request.strip_prefix(b"big:") {
            let size: usize = std::str::from_utf8(size)
                .ok()
                .and_then(|size| size.parse().ok())
                .ok_or("bad size")?;
            return Ok(Bytes::from(vec![1u8; size]));
        }
        let text = String::from_utf8_lossy(&request);
        Ok(Bytes::from(format!(
            "node {} from {from}: {text}",
            self.node
        )))
    }

    async fn handle_stream(
        &self,
        _from: PeerId,
        header: Bytes,
        mut body: BodyStream,
    ) -> Result<Bytes, String> {
        if header.as_ref() == b"early" {
            return Ok(Bytes::from_static(b"answered before the body"));
        }
        let mut hasher = crc32fast::Hasher::new();
        let mut length = 0u64;
        let mut oversized = 0;
        let mut first = true;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|error| error.to_string())?;
            hasher.update(&chunk);
            length += chunk.len() as u64;
            oversized += usize::from(chunk.len() > STREAM_CHUNK_BYTES);
            if let Some(produced) = &self.produced_bytes {
                let gap = produced.load(Ordering::SeqCst).saturating_sub(length);
                self.largest_gap_bytes.fetch_max(gap, Ordering::SeqCst);
            }
            if first && let Some(gate) = &self.gate {
                gate.first_chunk_received.notify_one();
                gate.release.notified().await;
            }
            first = false;
        }
        Ok(Bytes::from(format!(
            "bytes={length} crc={:08x} oversized_chunks={oversized}",
            hasher.finalize()
        )))
    }
}

/// A deterministic pseudo-random body of `total` bytes in items of `item_bytes`, generated as
/// it is pulled (never held whole); `produced` counts the bytes handed out.
fn generated_body(total: usize, item_bytes: usize, produced: Arc<AtomicU64>) -> BodyStream {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut remaining = total;
    Box::pin(futures::stream::poll_fn(move |_| {
        if remaining == 0 {
            return std::task::Poll::Ready(None);
        }
        let length = remaining.min(item_bytes);
        let mut item = Vec::with_capacity(length);
        while item.len() < length {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let take = (length - item.len()).min(8);
            item.extend_from_slice(&state.to_le_bytes()[..take]);
        }
        remaining -= length;
        produced.fetch_add(length as u64, Ordering::SeqCst);
        std::task::Poll::Ready(Some(Ok(Bytes::from(item))))
    }))
}

/// The CRC-32 and length of [`generated_body`], computed the same way.
fn describe_generated_body(total: usize, item_bytes: usize) -> Bytes {
    let produced = Arc::new(AtomicU64::new(0));
    let chunks: Vec<Bytes> =
        futures::executor::block_on_stream(generated_body(total, item_bytes, produced))
            .map(|item| item.expect("generated"))
            .collect();
    describe_body(&chunks)
}

fn localhost() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().expect("address")
}

async fn start_node(
    node: PeerId,
    tls: TlsMode,
    limits: QuicLimits,
    handler: Arc<dyn Handler>,
) -> Arc<QuicTransport> {
    let config = QuicConfig {
        node_id: node,
        listen: localhost(),
        peers: BTreeMap::new(),
        tls,
    };
    QuicTransport::start_with_limits(config, limits, handler)
        .await
        .expect("start")
}

/// Makes every node a peer of every other.
fn introduce(nodes: &[Arc<QuicTransport>]) {
    for node in nodes {
        for other in nodes {
            if other.node_id() != node.node_id() {
                let address = other.local_addr().expect("address").to_string();
                node.set_peer_address(other.node_id(), address);
            }
        }
    }
}

async fn cluster(size: u64) -> Vec<Arc<QuicTransport>> {
    let mut nodes = Vec::new();
    for node in 1..=size {
        let handler = Arc::new(EchoHandler::new(NodeId(node)));
        nodes.push(
            start_node(
                NodeId(node),
                TlsMode::SelfSigned,
                QuicLimits::default(),
                handler,
            )
            .await,
        );
    }
    introduce(&nodes);
    nodes
}

async fn shutdown(nodes: &[Arc<QuicTransport>]) {
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test]
async fn two_nodes_call_each_other_over_one_connection_each_way() {
    let nodes = cluster(2).await;
    let response = nodes[0]
        .call(NodeId(2), Bytes::from_static(b"ping"), TIMEOUT)
        .await
        .expect("1 → 2");
    assert_eq!(response, Bytes::from_static(b"node 2 from 1: ping"));
    let response = nodes[1]
        .call(NodeId(1), Bytes::from_static(b"pong"), TIMEOUT)
        .await
        .expect("2 → 1");
    assert_eq!(response, Bytes::from_static(b"node 1 from 2: pong"));
    for node in &nodes {
        assert_eq!(node.outbound_connection_count(), 1);
        assert_eq!(node.inbound_connection_count(), 1);
    }
    shutdown(&nodes).await;
}

#[tokio::test]
async fn three_nodes_call_each_other() {
    let nodes = cluster(3).await;
    for node in &nodes {
        for target in 1..=3 {
            if NodeId(target) == node.node_id() {
                continue;
            }
            let response = node
                .call(NodeId(target), Bytes::from_static(b"hi"), TIMEOUT)
                .await
                .expect("call");
            let expected = format!("node {target} from {}: hi", node.node_id());
            assert_eq!(response, Bytes::from(expected));
        }
    }
    let unknown = nodes[0].call(NodeId(9), Bytes::new(), TIMEOUT).await;
    assert_eq!(
        unknown,
        Err(TransportError::UnknownPeer { peer: NodeId(9) })
    );
    shutdown(&nodes).await;
}

#[tokio::test]
async fn many_concurrent_calls_share_one_dial_and_one_connection() {
    let nodes = cluster(2).await;
    // All start before any connection exists: they must share one dial.
    let calls = (0..300).map(|index| {
        let node = nodes[0].clone();
        async move {
            let request = Bytes::from(format!("request {index}"));
            (index, node.call(NodeId(2), request, TIMEOUT).await)
        }
    });
    for (index, response) in futures::future::join_all(calls).await {
        let expected = format!("node 2 from 1: request {index}");
        assert_eq!(response, Ok(Bytes::from(expected)));
    }
    assert_eq!(nodes[0].outbound_connection_count(), 1);
    assert_eq!(nodes[1].inbound_connection_count(), 1);
    shutdown(&nodes).await;
}

#[tokio::test]
async fn handler_errors_come_back_as_remote_errors() {
    let nodes = cluster(2).await;
    let failed = nodes[0]
        .call(NodeId(2), Bytes::from_static(b"fail"), TIMEOUT)
        .await;
    assert_eq!(
        failed,
        Err(TransportError::Remote(
            "node 2 failed on purpose".to_string()
        ))
    );
    // The connection is still good.
    nodes[0]
        .call(NodeId(2), Bytes::from_static(b"again"), TIMEOUT)
        .await
        .expect("after a remote error");
    shutdown(&nodes).await;
}

#[tokio::test]
async fn a_50_mib_body_arrives_intact_chunk_by_chunk_in_bounded_memory() {
    const BODY_BYTES: usize = 50 * 1024 * 1024;
    // Items bigger than a chunk, so the sender must split them.
    const ITEM_BYTES: usize = 3 * STREAM_CHUNK_BYTES / 2;
    let produced = Arc::new(AtomicU64::new(0));
    let receiver = Arc::new(EchoHandler {
        produced_bytes: Some(produced.clone()),
        ..EchoHandler::new(NodeId(2))
    });
    let largest_gap_bytes = receiver.largest_gap_bytes.clone();
    let sender = start_node(
        NodeId(1),
        TlsMode::SelfSigned,
        QuicLimits::default(),
        Arc::new(EchoHandler::new(NodeId(1))),
    )
    .await;
    let receiver = start_node(
        NodeId(2),
        TlsMode::SelfSigned,
        QuicLimits::default(),
        receiver,
    )
    .await;
    let nodes = vec![sender, receiver];
    introduce(&nodes);

    let body = generated_body(BODY_BYTES, ITEM_BYTES, produced);
    let response = nodes[0]
        .call_stream(
            NodeId(2),
            Bytes::from_static(b"snapshot"),
            body,
            TIMEOUT * 6,
        )
        .await
        .expect("streamed call");
    assert_eq!(response, describe_generated_body(BODY_BYTES, ITEM_BYTES));
    // Never more than the channel, a stream window and a few items between the body's producer
    // and the handler: the body was streamed, not collected on either side.
    let gap = largest_gap_bytes.load(Ordering::SeqCst);
    assert!(gap > 0, "the check ran");
    assert!(
        gap <= 16 * 1024 * 1024,
        "{gap} bytes were in flight at once out of {BODY_BYTES}"
    );
    shutdown(&nodes).await;
}

#[tokio::test]
async fn a_stalled_stream_does_not_delay_small_calls() {
    let gate = Arc::new(Gate {
        first_chunk_received: Notify::new(),
        release: Notify::new(),
    });
    let receiver = Arc::new(EchoHandler {
        gate: Some(gate.clone()),
        ..EchoHandler::new(NodeId(2))
    });
    let sender = start_node(
        NodeId(1),
        TlsMode::SelfSigned,
        QuicLimits::default(),
        Arc::new(EchoHandler::new(NodeId(1))),
    )
    .await;
    let receiver = start_node(
        NodeId(2),
        TlsMode::SelfSigned,
        QuicLimits::default(),
        receiver,
    )
    .await;
    let nodes = vec![sender, receiver];
    introduce(&nodes);

    // Far more than the flow-control windows: the sender is blocked while the handler stalls.
    const BODY_BYTES: usize = 32 * 1024 * 1024;
    let produced = Arc::new(AtomicU64::new(0));
    let body = generated_body(BODY_BYTES, STREAM_CHUNK_BYTES, produced.clone());
    let streaming = tokio::spawn({
        let sender = nodes[0].clone();
        async move {
            sender
                .call_stream(
                    NodeId(2),
                    Bytes::from_static(b"snapshot"),
                    body,
                    TIMEOUT * 6,
                )
                .await
        }
    });
    gate.first_chunk_received.notified().await;
    for index in 0..20 {
        let request = Bytes::from(format!("heartbeat {index}"));
        let response = nodes[0]
            .call(NodeId(2), request, TIMEOUT)
            .await
            .expect("small call");
        assert_eq!(
            response,
            Bytes::from(format!("node 2 from 1: heartbeat {index}"))
        );
    }
    assert!(!streaming.is_finished(), "the stream is still stalled");
    assert!(
        (produced.load(Ordering::SeqCst) as usize) < BODY_BYTES,
        "flow control holds the sender back"
    );
    gate.release.notify_one();
    let response = streaming.await.expect("join").expect("streamed call");
    assert_eq!(
        response,
        describe_generated_body(BODY_BYTES, STREAM_CHUNK_BYTES)
    );
    shutdown(&nodes).await;
}

#[tokio::test]
async fn a_handler_may_answer_early_and_a_failing_body_fails_the_call() {
    let nodes = cluster(2).await;
    // An endless body: only the early answer can end this call.
    let endless: BodyStream = Box::pin(futures::stream::repeat_with(|| {
        Ok(Bytes::from(vec![0u8; STREAM_CHUNK_BYTES]))
    }));
    let response = nodes[0]
        .call_stream(NodeId(2), Bytes::from_static(b"early"), endless, TIMEOUT)
        .await;
    assert_eq!(
        response,
        Ok(Bytes::from_static(b"answered before the body"))
    );

    let failing: BodyStream = Box::pin(futures::stream::iter(vec![
        Ok(Bytes::from_static(b"first")),
        Err(TransportError::Remote(
            "the snapshot reader failed".to_string(),
        )),
    ]));
    let response = nodes[0]
        .call_stream(NodeId(2), Bytes::from_static(b"snapshot"), failing, TIMEOUT)
        .await;
    assert_eq!(
        response,
        Err(TransportError::Remote(
            "the snapshot reader failed".to_string()
        ))
    );
    // Both left the connection usable.
    nodes[0]
        .call(NodeId(2), Bytes::from_static(b"still there"), TIMEOUT)
        .await
        .expect("after the streams");
    shutdown(&nodes).await;
}

/// Binds a node on `address`, retrying while the previous incarnation's socket is released.
async fn restart_node(node: PeerId, address: std::net::SocketAddr) -> Arc<QuicTransport> {
    for _ in 0..100 {
        let config = QuicConfig {
            node_id: node,
            listen: address,
            peers: BTreeMap::new(),
            tls: TlsMode::SelfSigned,
        };
        match QuicTransport::start(config, Arc::new(EchoHandler::new(node))).await {
            Ok(transport) => return transport,
            Err(TransportError::Setup(_)) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(error) => panic!("restart: {error}"),
        }
    }
    panic!("the port of the previous incarnation was never released");
}

#[tokio::test]
async fn a_peer_restarted_on_the_same_port_is_reconnected() {
    let nodes = cluster(2).await;
    nodes[0]
        .call(NodeId(2), Bytes::from_static(b"before"), TIMEOUT)
        .await
        .expect("before the restart");
    let address = nodes[1].local_addr().expect("address");
    nodes[1].shutdown().await;
    let [first, second]: [Arc<QuicTransport>; 2] = nodes.try_into().ok().expect("two nodes");
    drop(second);

    let restarted = restart_node(NodeId(2), address).await;
    // The first call may still meet the old connection; calls succeed again once it is gone.
    let mut attempts = 0;
    let response = loop {
        attempts += 1;
        match first
            .call(
                NodeId(2),
                Bytes::from_static(b"after"),
                Duration::from_secs(2),
            )
            .await
        {
            Ok(response) => break response,
            Err(error) if attempts < 50 => {
                tracing::debug!(%error, "not reconnected yet");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("never reconnected: {error}"),
        }
    };
    assert_eq!(response, Bytes::from_static(b"node 2 from 1: after"));
    assert_eq!(restarted.inbound_connection_count(), 1);
    first.shutdown().await;
    restarted.shutdown().await;
}

#[tokio::test]
async fn a_crashed_peer_restarted_on_the_same_port_is_reconnected_before_the_idle_timeout() {
    // A long idle timeout: only the restarted peer's stateless reset (its reset key is stable
    // across restarts) can end the old connection within the attempts below.
    let limits = QuicLimits {
        idle_timeout: Duration::from_secs(60),
        ..QuicLimits::default()
    };
    let first = start_node(
        NodeId(1),
        TlsMode::SelfSigned,
        limits,
        Arc::new(EchoHandler::new(NodeId(1))),
    )
    .await;
    let second = start_node(
        NodeId(2),
        TlsMode::SelfSigned,
        QuicLimits::default(),
        Arc::new(EchoHandler::new(NodeId(2))),
    )
    .await;
    introduce(&[first.clone(), second.clone()]);
    first
        .call(NodeId(2), Bytes::from_static(b"before"), TIMEOUT)
        .await
        .expect("before the crash");
    let address = second.local_addr().expect("address");
    second.simulate_crash();

    let restarted = restart_node(NodeId(2), address).await;
    let mut outcomes = Vec::new();
    for _ in 0..5 {
        let outcome = first
            .call(
                NodeId(2),
                Bytes::from_static(b"after"),
                Duration::from_secs(1),
            )
            .await;
        let reconnected = outcome.is_ok();
        outcomes.push(outcome);
        if reconnected {
            break;
        }
    }
    assert_eq!(
        outcomes.last(),
        Some(&Ok(Bytes::from_static(b"node 2 from 1: after"))),
        "{outcomes:?}"
    );
    first.shutdown().await;
    second.shutdown().await;
    restarted.shutdown().await;
}

#[tokio::test]
async fn a_call_to_a_dead_peer_fails_within_its_timeout() {
    let nodes = cluster(1).await;
    // A bound socket that never answers: the handshake cannot complete.
    let silent = std::net::UdpSocket::bind(localhost()).expect("bind");
    nodes[0].set_peer_address(NodeId(2), silent.local_addr().expect("address").to_string());
    let timeout = Duration::from_millis(500);
    let started = tokio::time::Instant::now();
    let result = nodes[0]
        .call(NodeId(2), Bytes::from_static(b"x"), timeout)
        .await;
    let elapsed = started.elapsed();
    assert!(
        matches!(
            result,
            Err(TransportError::Timeout { peer: NodeId(2) }
                | TransportError::Unreachable {
                    peer: NodeId(2),
                    ..
                })
        ),
        "{result:?}"
    );
    assert!(
        elapsed < timeout + Duration::from_secs(1),
        "took {elapsed:?}"
    );

    // An address that does not resolve fails as unreachable, not as a panic or a hang.
    nodes[0].set_peer_address(NodeId(3), "no-such-host.invalid:7000".to_string());
    let result = nodes[0].call(NodeId(3), Bytes::new(), TIMEOUT).await;
    assert!(
        matches!(
            result,
            Err(TransportError::Unreachable {
                peer: NodeId(3),
                ..
            })
        ),
        "{result:?}"
    );
    shutdown(&nodes).await;
}

fn small_limits(max_frame_bytes: usize, stream_chunk_bytes: usize) -> QuicLimits {
    QuicLimits {
        max_frame_bytes,
        stream_chunk_bytes,
        ..QuicLimits::default()
    }
}

#[tokio::test]
async fn frames_over_the_limits_are_refused() {
    const LIMIT: usize = 64 * 1024;
    let strict = start_node(
        NodeId(2),
        TlsMode::SelfSigned,
        small_limits(LIMIT, 16 * 1024),
        Arc::new(EchoHandler::new(NodeId(2))),
    )
    .await;
    // The caller allows more than the acceptor, so the acceptor's checks are exercised too.
    let lenient = start_node(
        NodeId(1),
        TlsMode::SelfSigned,
        small_limits(4 * LIMIT, 4 * LIMIT),
        Arc::new(EchoHandler::new(NodeId(1))),
    )
    .await;
    let nodes = vec![lenient, strict];
    introduce(&nodes);

    let too_large = |what: &'static str, size: usize, limit: usize| {
        Err(TransportError::TooLarge {
            what,
            size: size as u64,
            limit: limit as u64,
        })
    };
    // Refused by the caller before sending.
    let request = Bytes::from(vec![0u8; 4 * LIMIT + 1]);
    assert_eq!(
        nodes[0].call(NodeId(2), request, TIMEOUT).await,
        too_large("request", 4 * LIMIT + 1, 4 * LIMIT)
    );
    // Refused by the acceptor.
    let request = Bytes::from(vec![0u8; LIMIT + 1]);
    assert_eq!(
        nodes[0].call(NodeId(2), request, TIMEOUT).await,
        too_large("request", LIMIT + 1, LIMIT)
    );
    // A response over the acceptor's own limit.
    let request = Bytes::from(format!("big:{}", LIMIT + 1));
    assert_eq!(
        nodes[0].call(NodeId(2), request, TIMEOUT).await,
        too_large("response", LIMIT + 1, LIMIT)
    );
    // A response within the acceptor's limit but over the caller's.
    let request = Bytes::from(format!("big:{}", LIMIT + 1));
    assert_eq!(
        nodes[1].call(NodeId(1), request, TIMEOUT).await,
        too_large("response", LIMIT + 1, LIMIT)
    );
    // Body chunks over the acceptor's chunk limit.
    let body: BodyStream = Box::pin(futures::stream::iter(vec![Ok(Bytes::from(vec![
        0u8;
        2 * LIMIT
    ]))]));
    let refused = nodes[0]
        .call_stream(NodeId(2), Bytes::new(), body, TIMEOUT)
        .await;
    assert_eq!(refused, too_large("stream chunk", 2 * LIMIT, 16 * 1024));
    // The connection is still usable.
    nodes[0]
        .call(NodeId(2), Bytes::from_static(b"small"), TIMEOUT)
        .await
        .expect("after refusals");
    shutdown(&nodes).await;
}

/// A CA and node certificates written as PEM files into a directory.
struct Authority {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    directory: std::path::PathBuf,
    name: String,
}

impl Authority {
    fn new(directory: &Path, name: &str) -> Authority {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} CA"));
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().expect("CA key");
        let issuer = rcgen::CertifiedIssuer::self_signed(params, key).expect("CA");
        std::fs::write(directory.join(format!("{name}-ca.pem")), issuer.pem()).expect("write");
        Authority {
            issuer,
            directory: directory.to_path_buf(),
            name: name.to_string(),
        }
    }

    /// Issues node `node`'s certificate (DNS name `node-<node>`) and returns its TLS mode.
    fn node_tls(&self, node: PeerId) -> TlsMode {
        self.issue(node, &super::tls::node_certificate_name(node))
    }

    /// Issues a certificate carrying the DNS name `name` into node `node`'s files (replacing
    /// them, renamed into place) and returns the TLS mode naming those files.
    fn issue(&self, node: PeerId, name: &str) -> TlsMode {
        let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("armada node {node}"));
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = rcgen::KeyPair::generate().expect("node key");
        let certificate = params.signed_by(&key, &self.issuer).expect("sign");
        let cert_file = self
            .directory
            .join(format!("{}-node-{node}.pem", self.name));
        let key_file = self
            .directory
            .join(format!("{}-node-{node}.key", self.name));
        let temporary = self.directory.join("rotation.tmp");
        std::fs::write(&temporary, certificate.pem()).expect("write");
        std::fs::rename(&temporary, &cert_file).expect("rename");
        std::fs::write(&temporary, key.serialize_pem()).expect("write");
        std::fs::rename(&temporary, &key_file).expect("rename");
        TlsMode::Mutual {
            ca_file: self.directory.join(format!("{}-ca.pem", self.name)),
            cert_file,
            key_file,
        }
    }
}

async fn start_with_tls(node: PeerId, tls: TlsMode) -> Arc<QuicTransport> {
    start_node(
        node,
        tls,
        QuicLimits::default(),
        Arc::new(EchoHandler::new(node)),
    )
    .await
}

#[tokio::test]
async fn mutual_tls_nodes_with_certificates_from_the_ca_talk() {
    let directory = tempfile::tempdir().expect("tempdir");
    let authority = Authority::new(directory.path(), "cluster");
    let nodes = vec![
        start_with_tls(NodeId(1), authority.node_tls(NodeId(1))).await,
        start_with_tls(NodeId(2), authority.node_tls(NodeId(2))).await,
    ];
    introduce(&nodes);
    let response = nodes[0]
        .call(NodeId(2), Bytes::from_static(b"secure"), TIMEOUT)
        .await
        .expect("1 → 2");
    assert_eq!(response, Bytes::from_static(b"node 2 from 1: secure"));
    nodes[1]
        .call(NodeId(1), Bytes::from_static(b"secure"), TIMEOUT)
        .await
        .expect("2 → 1");
    shutdown(&nodes).await;
}

#[tokio::test]
async fn mutual_tls_refuses_a_certificate_from_another_ca_and_no_certificate() {
    let directory = tempfile::tempdir().expect("tempdir");
    let authority = Authority::new(directory.path(), "cluster");
    let stranger = Authority::new(directory.path(), "stranger");
    let nodes = vec![
        start_with_tls(NodeId(1), authority.node_tls(NodeId(1))).await,
        start_with_tls(NodeId(2), stranger.node_tls(NodeId(2))).await,
        start_with_tls(NodeId(3), TlsMode::SelfSigned).await,
    ];
    introduce(&nodes);
    let short = Duration::from_secs(3);
    let refused = assert_refused;
    // The stranger's certificate is refused by node 1, and node 1's by the stranger.
    refused(
        nodes[1]
            .call(NodeId(1), Bytes::from_static(b"let me in"), short)
            .await,
    );
    refused(
        nodes[0]
            .call(NodeId(2), Bytes::from_static(b"hello?"), short)
            .await,
    );
    // A node without a certificate (development mode) is refused too.
    refused(
        nodes[2]
            .call(NodeId(1), Bytes::from_static(b"let me in"), short)
            .await,
    );
    // Nothing reached node 1's handler: it has no incoming connection.
    assert_eq!(nodes[0].inbound_connection_count(), 0);
    shutdown(&nodes).await;
}

fn assert_refused(result: Result<Bytes, TransportError>) {
    assert!(
        matches!(
            result,
            Err(TransportError::Unreachable { .. } | TransportError::Timeout { .. })
        ),
        "{result:?}"
    );
}

#[tokio::test]
async fn a_node_refuses_to_start_with_a_certificate_that_is_not_its_own() {
    let directory = tempfile::tempdir().expect("tempdir");
    let authority = Authority::new(directory.path(), "cluster");
    let config = QuicConfig {
        node_id: NodeId(3),
        listen: localhost(),
        peers: BTreeMap::new(),
        tls: authority.issue(NodeId(3), &super::tls::node_certificate_name(NodeId(2))),
    };
    let started = QuicTransport::start(config, Arc::new(EchoHandler::new(NodeId(3)))).await;
    let Err(TransportError::Setup(reason)) = started else {
        panic!("node 3 started with node 2's certificate");
    };
    assert!(reason.contains("node-3"), "{reason}");
}

#[tokio::test]
async fn a_dialer_refuses_an_acceptor_whose_certificate_is_another_nodes() {
    let directory = tempfile::tempdir().expect("tempdir");
    let authority = Authority::new(directory.path(), "cluster");
    let nodes = vec![
        start_with_tls(NodeId(1), authority.node_tls(NodeId(1))).await,
        start_with_tls(NodeId(2), authority.node_tls(NodeId(2))).await,
    ];
    // Node 1 believes node 3 lives at node 2's address: the TLS handshake itself fails (node
    // 2's certificate does not name node 3), before any hello could be believed.
    nodes[0].set_peer_address(
        NodeId(3),
        nodes[1].local_addr().expect("address").to_string(),
    );
    let result = nodes[0]
        .call(
            NodeId(3),
            Bytes::from_static(b"are you 3?"),
            Duration::from_secs(3),
        )
        .await;
    let Err(TransportError::Unreachable { reason, .. }) = &result else {
        panic!("{result:?}");
    };
    assert!(reason.contains("certificate"), "{reason}");
    assert!(
        !reason.contains("hello"),
        "refused by the hello, not by TLS: {reason}"
    );
    shutdown(&nodes).await;
}

#[tokio::test]
async fn the_acceptor_refuses_a_hello_its_certificate_does_not_name() {
    // A dialer holding node 2's certificate whose hello claims node 3 (a transport would not
    // start so; this one is built by hand from node 2's TLS configuration).
    let directory = tempfile::tempdir().expect("tempdir");
    let authority = Authority::new(directory.path(), "cluster");
    let acceptor = start_with_tls(NodeId(1), authority.node_tls(NodeId(1))).await;
    let tls = authority
        .node_tls(NodeId(2))
        .setup(NodeId(2))
        .expect("setup");
    let mut endpoint =
        quinn::Endpoint::client("127.0.0.1:0".parse().expect("address")).expect("endpoint");
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(tls.client)));
    let connection = endpoint
        .connect(acceptor.local_addr().expect("address"), "node-1")
        .expect("connect")
        .await
        .expect("the TLS handshake itself succeeds: the certificate is CA-signed");
    let (mut send, mut receive) = connection.open_bi().await.expect("stream");
    super::frame::write_frame(
        &mut send,
        super::frame::FrameKind::Hello,
        super::frame::encode_peer_id(NodeId(3)),
    )
    .await
    .expect("hello");
    let _ = send.finish();
    let answer = super::frame::read_frame(&mut receive, 8).await;
    assert!(answer.is_err(), "node 1 answered a lying hello: {answer:?}");
    let reason = connection.closed().await;
    assert!(
        reason.to_string().contains("claims to be node 3"),
        "{reason}"
    );
    assert_eq!(acceptor.inbound_connection_count(), 0);
    acceptor.shutdown().await;
}

#[tokio::test]
async fn a_rotated_certificate_is_used_for_new_connections() {
    let directory = tempfile::tempdir().expect("tempdir");
    let authority = Authority::new(directory.path(), "cluster");
    let stranger = Authority::new(directory.path(), "stranger");
    let nodes = vec![
        start_with_tls(NodeId(1), authority.node_tls(NodeId(1))).await,
        start_with_tls(NodeId(2), authority.node_tls(NodeId(2))).await,
    ];
    introduce(&nodes);
    nodes[1]
        .call(NodeId(1), Bytes::from_static(b"before"), TIMEOUT)
        .await
        .expect("2 → 1");
    // Node 2's files now hold a certificate of another CA (in its own file names): once node 2
    // has re-read them, its new connections (both directions) are refused by node 1. The
    // established one keeps working meanwhile.
    let TlsMode::Mutual {
        cert_file,
        key_file,
        ..
    } = stranger.node_tls(NodeId(2))
    else {
        unreachable!("mutual");
    };
    std::fs::rename(&cert_file, directory.path().join("cluster-node-2.pem")).expect("rename");
    std::fs::rename(&key_file, directory.path().join("cluster-node-2.key")).expect("rename");
    nodes[1]
        .call(NodeId(1), Bytes::from_static(b"established"), TIMEOUT)
        .await
        .expect("the established connection keeps its identity");
    let short = Duration::from_millis(500);
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let node_1 = nodes[0].local_addr().expect("address").to_string();
    loop {
        // A fresh connection each time.
        nodes[1].set_peer_address(NodeId(1), node_1.clone());
        if nodes[1]
            .call(NodeId(1), Bytes::from_static(b"new"), short)
            .await
            .is_err()
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node 2 still connects with its old certificate"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Rotated again, to a proper certificate from the cluster's CA: new connections work.
    authority.node_tls(NodeId(2));
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        nodes[1].set_peer_address(NodeId(1), node_1.clone());
        if nodes[1]
            .call(NodeId(1), Bytes::from_static(b"new"), short)
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node 2 does not use its renewed certificate"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    nodes[0]
        .call(NodeId(2), Bytes::from_static(b"back"), TIMEOUT)
        .await
        .expect("1 → 2 with node 2's renewed certificate");
    shutdown(&nodes).await;
}

#[tokio::test]
async fn a_shut_down_transport_refuses_calls() {
    let nodes = cluster(2).await;
    nodes[0].shutdown().await;
    let result = nodes[0].call(NodeId(2), Bytes::new(), TIMEOUT).await;
    assert_eq!(result, Err(TransportError::Closed));
    let result = nodes[1]
        .call(NodeId(1), Bytes::new(), Duration::from_secs(2))
        .await;
    assert!(result.is_err(), "{result:?}");
    nodes[1].shutdown().await;
}
