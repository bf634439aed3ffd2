//! The gRPC listeners (client API, replication API): TCP or a Unix socket, plaintext or TLS,
//! as the listen URL says (`http://`, `https://`, `unix://`, `unixs://`; see
//! [`crate::address`]).
//!
//! ## TLS
//!
//! tonic's own TLS server cannot change its certificate while running, so TLS listeners do the
//! handshakes themselves (tokio-rustls) and hand tonic the established TLS streams:
//!
//! * rustls with the `ring` provider; TLS 1.2 and 1.3; ALPN `h2` (gRPC needs HTTP/2).
//! * The server certificate and key come from a
//!   [`ReloadingIdentity`](crate::certificates::ReloadingIdentity): rotated files are served to
//!   new connections without a restart; unusable new files keep the previous certificate and
//!   log an error.
//! * Client certificates ([`ClientAuth`]): none, or required and verified against a CA file
//!   (`*.ca-filename`) — or, with `*.client-cert-auth` and no CA file, against the system's
//!   trust roots (as Regatta does). Optionally the verified leaf must also carry a given
//!   subject CN (`*.allowed-cn`) or be valid for a given host name or IP (`*.allowed-hostname`).
//! * Each handshake runs in its own task, bounded by [`TLS_HANDSHAKE_TIMEOUT`], so a slow or
//!   silent client never holds up the others; at most [`MAX_PENDING_TLS_HANDSHAKES`] run at
//!   once (further connections are closed at once). A failed handshake (no client
//!   certificate, unknown CA, CN not allowed, plaintext sent to a TLS port, …) is logged with
//!   its reason and the connection closed; it never reaches a gRPC handler.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use rustls::DistinguishedName;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::address::ListenAddress;
use crate::certificates::{self, ReloadingIdentity};

/// How long a client may take to complete its TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// TLS handshakes in progress at once on one listener; connections beyond are closed.
pub const MAX_PENDING_TLS_HANDSHAKES: usize = 256;
/// Established TLS connections waiting for the gRPC server to take them.
const HANDSHAKEN_QUEUE: usize = 64;
/// Pause after a failed `accept` (e.g. out of file descriptors), so it is not retried in a
/// busy loop.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// How a TLS listener is secured (from `api.*` or `replication.*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerTls {
    /// The configuration prefix, `api` or `replication`, for messages.
    pub prefix: &'static str,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_auth: ClientAuth,
}

/// Whether, and how, clients must present a certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    None,
    Required {
        roots: ClientRoots,
        allowed: Option<AllowedPeer>,
    },
}

/// What client certificates are verified against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientRoots {
    /// A PEM file of CA certificates (`*.ca-filename`).
    File(PathBuf),
    /// The operating system's trust store (`*.client-cert-auth` without a CA file).
    System,
}

/// A further condition on a verified client certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllowedPeer {
    /// The leaf's subject must have this common name (`*.allowed-cn`).
    CommonName(String),
    /// The leaf must be valid for this DNS name or IP address (`*.allowed-hostname`).
    Hostname(String),
}

impl ListenerTls {
    /// The rustls configuration: reads the certificate, key and CA files (start-up fails if
    /// they cannot be used).
    pub fn server_config(&self) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let prefix = self.prefix;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let identity =
            ReloadingIdentity::load(&self.cert_file, &self.key_file, provider.clone())
                .with_context(|| format!("`{prefix}.cert-filename`/`{prefix}.key-filename`"))?;
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .context("TLS protocol versions")?;
        let builder = match &self.client_auth {
            ClientAuth::None => builder.with_no_client_auth(),
            ClientAuth::Required { roots, allowed } => builder
                .with_client_cert_verifier(client_verifier(prefix, roots, allowed, &provider)?),
        };
        let mut config = builder.with_cert_resolver(Arc::new(identity));
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}

fn client_verifier(
    prefix: &str,
    roots: &ClientRoots,
    allowed: &Option<AllowedPeer>,
    provider: &Arc<CryptoProvider>,
) -> anyhow::Result<Arc<dyn ClientCertVerifier>> {
    let roots = match roots {
        ClientRoots::File(path) => certificates::load_roots(path)
            .with_context(|| format!("`{prefix}.ca-filename`"))?,
        ClientRoots::System => certificates::system_roots().with_context(|| {
            format!("`{prefix}.client-cert-auth` without `{prefix}.ca-filename` verifies client certificates against the system's trust store")
        })?,
    };
    let verified = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .with_context(|| format!("`{prefix}` client certificate verification"))?;
    Ok(match allowed {
        None => verified,
        Some(allowed) => Arc::new(AllowedPeerVerifier {
            verified,
            allowed: allowed.clone(),
        }),
    })
}

/// Verifies the chain with `verified`, then checks [`AllowedPeer`] on the leaf.
#[derive(Debug)]
struct AllowedPeerVerifier {
    verified: Arc<dyn ClientCertVerifier>,
    allowed: AllowedPeer,
}

/// Why a verified client certificate was still refused (shown in the handshake failure).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct NotAllowed(String);

impl AllowedPeer {
    fn check(&self, leaf: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let refusal = |reason: String| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
                Arc::new(NotAllowed(reason)),
            )))
        };
        match self {
            AllowedPeer::CommonName(allowed) => {
                let names = certificates::common_names_of(leaf);
                if names.iter().any(|name| name == allowed) {
                    Ok(())
                } else {
                    Err(refusal(format!(
                        "client certificate CN {names:?} is not the allowed CN {allowed:?}"
                    )))
                }
            }
            AllowedPeer::Hostname(allowed) => {
                let name = ServerName::try_from(allowed.as_str())
                    .map_err(|error| refusal(format!("allowed hostname {allowed:?}: {error}")))?;
                let parsed = rustls::server::ParsedCertificate::try_from(leaf)?;
                rustls::client::verify_server_name(&parsed, &name).map_err(|_| {
                    refusal(format!(
                        "client certificate is not valid for the allowed hostname {allowed:?}"
                    ))
                })
            }
        }
    }
}

impl ClientCertVerifier for AllowedPeerVerifier {
    fn offer_client_auth(&self) -> bool {
        self.verified.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.verified.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.verified.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .verified
            .verify_client_cert(end_entity, intermediates, now)?;
        self.allowed.check(end_entity)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.verified
            .verify_tls12_signature(message, certificate, signature)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.verified
            .verify_tls13_signature(message, certificate, signature)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.verified.supported_verify_schemes()
    }
}

/// A bound gRPC listener.
pub struct Listener {
    socket: Socket,
    tls: Option<TlsAcceptor>,
}

enum Socket {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener, PathBuf),
}

impl Listener {
    /// Binds the listen URL given as configuration key `key`; a TLS URL needs `tls` (from
    /// [`ListenerTls::server_config`]).
    pub async fn bind(
        key: &str,
        url: &str,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> anyhow::Result<Listener> {
        let address = ListenAddress::parse(url).map_err(anyhow::Error::msg)?;
        let is_tls = match &address {
            ListenAddress::Tcp { tls, .. } | ListenAddress::Unix { tls, .. } => *tls,
        };
        let tls = match (is_tls, tls) {
            (false, _) => None,
            (true, Some(tls)) => Some(TlsAcceptor::from(tls)),
            (true, None) => anyhow::bail!(
                "`{key}` {url} serves TLS: it needs a certificate and key (`*.cert-filename`, `*.key-filename`)"
            ),
        };
        let socket = match address {
            address @ ListenAddress::Tcp { .. } => {
                let socket = address.socket_address().await?;
                Socket::Tcp(
                    tokio::net::TcpListener::bind(socket)
                        .await
                        .map_err(|error| anyhow::anyhow!("cannot listen on {url}: {error}"))?,
                )
            }
            ListenAddress::Unix { path, .. } => {
                // A socket file left by a previous run would make bind fail.
                let _ = std::fs::remove_file(&path);
                let listener = tokio::net::UnixListener::bind(&path)
                    .map_err(|error| anyhow::anyhow!("cannot listen on {url}: {error}"))?;
                Socket::Unix(listener, path)
            }
        };
        Ok(Listener { socket, tls })
    }

    /// The bound URL (port 0 resolved), with the scheme saying whether it is TLS.
    pub fn url(&self) -> String {
        let tls = self.tls.is_some();
        match &self.socket {
            Socket::Tcp(listener) => listener
                .local_addr()
                .map(|address| match tls {
                    true => format!("https://{address}"),
                    false => format!("http://{address}"),
                })
                .unwrap_or_default(),
            Socket::Unix(_, path) => match tls {
                true => format!("unixs://{}", path.display()),
                false => format!("unix://{}", path.display()),
            },
        }
    }

    /// Serves `router` until `stop` resolves and in-flight requests finished.
    pub async fn serve<R>(
        self,
        router: tonic::transport::server::Router<R>,
        stop: impl Future<Output = ()>,
    ) -> anyhow::Result<()>
    where
        R: tower_layer::Layer<tonic::service::Routes> + Clone,
        R::Service: tower_service::Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
            > + Clone
            + Send
            + 'static,
        <R::Service as tower_service::Service<http::Request<tonic::body::Body>>>::Future:
            Send + 'static,
        <R::Service as tower_service::Service<http::Request<tonic::body::Body>>>::Error:
            Into<Box<dyn std::error::Error + Send + Sync>> + Send,
    {
        match (self.socket, self.tls) {
            (Socket::Tcp(listener), None) => {
                router
                    .serve_with_incoming_shutdown(tcp_incoming(listener), stop)
                    .await?;
            }
            (Socket::Tcp(listener), Some(acceptor)) => {
                let incoming = tls_handshakes(tcp_incoming(listener), acceptor);
                router.serve_with_incoming_shutdown(incoming, stop).await?;
            }
            (Socket::Unix(listener, path), tls) => {
                let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
                let served = match tls {
                    None => router.serve_with_incoming_shutdown(incoming, stop).await,
                    Some(acceptor) => {
                        let incoming = tls_handshakes(incoming, acceptor);
                        router.serve_with_incoming_shutdown(incoming, stop).await
                    }
                };
                let _ = std::fs::remove_file(&path);
                served?;
            }
        }
        Ok(())
    }
}

/// Accepted TCP connections, with Nagle's algorithm off (small request/response messages
/// must never wait for it).
fn tcp_incoming(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> + Send + Unpin + 'static {
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|stream| {
        stream.inspect(|stream| {
            let _ = stream.set_nodelay(true);
        })
    })
}

/// Who is at the other end of a connection, for logs.
trait PeerLabel {
    fn peer_label(&self) -> String;
}

impl PeerLabel for tokio::net::TcpStream {
    fn peer_label(&self) -> String {
        self.peer_addr()
            .map(|address| address.to_string())
            .unwrap_or_else(|_| "an unknown TCP peer".to_string())
    }
}

impl PeerLabel for tokio::net::UnixStream {
    fn peer_label(&self) -> String {
        "a Unix socket peer".to_string()
    }
}

/// Runs a TLS handshake for each accepted connection, each in its own task, and yields the
/// established TLS streams (see the module documentation for the bounds).
fn tls_handshakes<S, IO>(
    plain: S,
    acceptor: TlsAcceptor,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<TlsStream<IO>>>
where
    S: futures::Stream<Item = std::io::Result<IO>> + Send + Unpin + 'static,
    IO: AsyncRead + AsyncWrite + PeerLabel + Unpin + Send + 'static,
{
    let (handshaken, receiver) = tokio::sync::mpsc::channel(HANDSHAKEN_QUEUE);
    tokio::spawn(accept_and_handshake(plain, acceptor, handshaken));
    tokio_stream::wrappers::ReceiverStream::new(receiver)
}

async fn accept_and_handshake<S, IO>(
    mut plain: S,
    acceptor: TlsAcceptor,
    handshaken: tokio::sync::mpsc::Sender<std::io::Result<TlsStream<IO>>>,
) where
    S: futures::Stream<Item = std::io::Result<IO>> + Send + Unpin + 'static,
    IO: AsyncRead + AsyncWrite + PeerLabel + Unpin + Send + 'static,
{
    let pending = Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_TLS_HANDSHAKES));
    loop {
        // The gRPC server dropping its end (shutdown) ends the listener too.
        let accepted = tokio::select! {
            _ = handshaken.closed() => return,
            accepted = plain.next() => accepted,
        };
        let stream = match accepted {
            None => return,
            Some(Ok(stream)) => stream,
            Some(Err(error)) => {
                tracing::warn!(%error, "accepting a connection failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let peer = stream.peer_label();
        let Ok(permit) = pending.clone().try_acquire_owned() else {
            tracing::warn!(
                %peer,
                limit = MAX_PENDING_TLS_HANDSHAKES,
                "closing a connection: too many TLS handshakes in progress"
            );
            continue;
        };
        let acceptor = acceptor.clone();
        let handshaken = handshaken.clone();
        tokio::spawn(async move {
            let outcome =
                tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
            drop(permit);
            match outcome {
                Ok(Ok(stream)) => {
                    let _ = handshaken.send(Ok(stream)).await;
                }
                Ok(Err(error)) => {
                    tracing::info!(%peer, %error, "a TLS handshake failed: connection closed");
                }
                Err(_) => {
                    tracing::info!(
                        %peer,
                        timeout = ?TLS_HANDSHAKE_TIMEOUT,
                        "no TLS handshake in time: connection closed"
                    );
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate(names: &[&str], common_name: &str) -> CertificateDer<'static> {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        let key = rcgen::KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").der().clone()
    }

    #[test]
    fn allowed_common_name_and_hostname() {
        let leaf = certificate(&["follower.example", "10.1.2.3"], "follower-a");
        let cn = |name: &str| AllowedPeer::CommonName(name.to_string()).check(&leaf);
        let host = |name: &str| AllowedPeer::Hostname(name.to_string()).check(&leaf);
        assert!(cn("follower-a").is_ok());
        let refused = cn("follower-b").expect_err("other CN");
        assert!(refused.to_string().contains("follower-a"), "{refused}");
        assert!(host("follower.example").is_ok());
        assert!(host("10.1.2.3").is_ok());
        assert!(host("other.example").is_err());
        assert!(host("10.1.2.4").is_err());
        // The CN is not a host name for `allowed-hostname`.
        assert!(host("follower-a").is_err());
    }
}
