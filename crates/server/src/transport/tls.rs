//! TLS for the QUIC transport: always encrypted, mutually authenticated when a CA is configured.
//!
//! Two modes ([`TlsMode`]):
//!
//! - **Self-signed** (development): each node generates a fresh identity with rcgen at start-up.
//!   Connections are encrypted (TLS 1.3, as QUIC requires) but not authenticated: the dialer
//!   accepts any server certificate (it still checks the handshake signature, so the session key
//!   belongs to whoever holds that certificate's key), and the acceptor asks for none. Anyone who
//!   can reach the port can join the conversation; never use it across an untrusted network.
//! - **Mutual** (production, `--raft.ca-filename/--raft.cert-filename/--raft.key-filename`): both
//!   sides present a certificate chain signed by the cluster's CA and verify the other's. A
//!   peer without a valid certificate fails the handshake; it never reaches a handler.
//!
//!   **A certificate is bound to a node id**: node `N`'s certificate must carry the DNS name
//!   [`node_certificate_name`]`(N)` = `node-N` as a subject alternative name. The dialer uses
//!   `node-N` as the TLS server name when it dials node `N` (so rustls refuses an acceptor
//!   whose certificate is another node's), and the acceptor checks, before it answers the
//!   hello, that the dialer's certificate names the node id the hello claims
//!   ([`check_peer_certificate`]). So a node holding a CA-signed certificate can only ever act
//!   as the node its certificate names. The certificate need not name the node's host or IP:
//!   addresses may change, identities do not. Use one CA per cluster (node ids repeat across
//!   clusters).
//! - Certificate and key files are re-read when they change
//!   ([`crate::certificates::ReloadingIdentity`]): new connections, dialled or accepted, use the
//!   new identity; established ones keep theirs. The CA file is read once, at start-up. Dials
//!   never resume a TLS session, so every new connection is authenticated afresh.
//!
//! The crypto provider is rustls' `ring` provider, passed explicitly (no process-wide default),
//! and only TLS 1.3 is offered. The ALPN protocol is [`ALPN_PROTOCOL`].
//!
//! The module also derives the endpoint's stateless-reset key ([`TlsSetup::reset_secret`]): a
//! key stable across restarts lets a restarted node reset its peers' connections to its previous
//! incarnation at once (RFC 9000 §10.3), instead of letting them wait for the idle timeout.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;

use super::{PeerId, TransportError};
use crate::certificates::{self, CertificateError, ReloadingIdentity};

/// The DNS name (subject alternative name) a node's certificate must carry in mutual TLS mode,
/// and the TLS server name a dialer expects of that node.
pub fn node_certificate_name(node_id: PeerId) -> String {
    format!("node-{node_id}")
}

/// The ALPN protocol of the cluster transport; the `/1` is the wire format's version.
pub const ALPN_PROTOCOL: &[u8] = b"armada-raft/1";

/// How the transport authenticates its peers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// Development: a generated self-signed identity; encrypted, not authenticated.
    SelfSigned,
    /// Mutual TLS: PEM files of the cluster's CA, this node's certificate chain and its key.
    Mutual {
        ca_file: PathBuf,
        cert_file: PathBuf,
        key_file: PathBuf,
    },
}

/// The TLS configurations of one endpoint.
pub(super) struct TlsSetup {
    pub(super) server: quinn::crypto::rustls::QuicServerConfig,
    pub(super) client: quinn::crypto::rustls::QuicClientConfig,
    /// Secret material for the endpoint's stateless-reset key, stable across restarts.
    pub(super) reset_secret: [u8; 32],
    /// Whether peers present certificates that bind them to their node id (mutual TLS).
    pub(super) authenticates_peers: bool,
}

impl TlsMode {
    /// Builds the server and client configurations for node `node_id`.
    pub(super) fn setup(&self, node_id: PeerId) -> Result<TlsSetup, TransportError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let authenticates_peers = matches!(self, TlsMode::Mutual { .. });
        let (server, client, reset_secret) = match self {
            TlsMode::SelfSigned => {
                let (chain, key) = generate_identity(node_id)?;
                let reset_secret = derive_secret(b"self-signed", &node_id.get().to_be_bytes());
                let server = server_builder(&provider)?
                    .with_no_client_auth()
                    .with_single_cert(chain, key)
                    .map_err(|error| setup_error("the generated certificate", error))?;
                let client = client_builder(&provider)?
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(EncryptionOnlyVerifier {
                        provider: provider.clone(),
                    }))
                    .with_no_client_auth();
                (server, client, reset_secret)
            }
            TlsMode::Mutual {
                ca_file,
                cert_file,
                key_file,
            } => {
                let roots = Arc::new(certificates::load_roots(ca_file).map_err(file_error)?);
                let identity = Arc::new(
                    ReloadingIdentity::load(cert_file, key_file, provider.clone())
                        .map_err(file_error)?,
                );
                check_names_node(&identity.leaf(), node_id, cert_file)?;
                // From the key read at start-up: stable across restarts unless the key changes.
                let key = certificates::load_key(key_file).map_err(file_error)?;
                let reset_secret = derive_secret(b"mutual", key.secret_der());
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                        .build()
                        .map_err(|error| setup_error("the CA file", error))?;
                let server = server_builder(&provider)?
                    .with_client_cert_verifier(verifier)
                    .with_cert_resolver(identity.clone());
                let client = client_builder(&provider)?
                    .with_root_certificates(roots)
                    .with_client_cert_resolver(identity);
                (server, client, reset_secret)
            }
        };
        Ok(TlsSetup {
            server: quic_server_config(server)?,
            client: quic_client_config(client)?,
            reset_secret,
            authenticates_peers,
        })
    }
}

fn setup_error(what: &str, error: impl std::fmt::Display) -> TransportError {
    TransportError::Setup(format!("TLS: {what}: {error}"))
}

fn file_error(error: CertificateError) -> TransportError {
    TransportError::Setup(format!("TLS: {error}"))
}

/// Start-up check: this node's own certificate names this node (else every peer would refuse
/// it, which is much harder to diagnose from their logs).
fn check_names_node(
    leaf: &CertificateDer<'_>,
    node_id: PeerId,
    cert_file: &Path,
) -> Result<(), TransportError> {
    certificate_names_node(leaf, node_id).map_err(|reason| {
        TransportError::Setup(format!(
            "TLS: certificate file {}: {reason} (a node's certificate must carry the DNS name `{}`)",
            cert_file.display(),
            node_certificate_name(node_id)
        ))
    })
}

/// Whether `leaf` carries the DNS name of node `node_id`.
fn certificate_names_node(leaf: &CertificateDer<'_>, node_id: PeerId) -> Result<(), String> {
    let name = ServerName::try_from(node_certificate_name(node_id))
        .map_err(|error| format!("node name: {error}"))?;
    let parsed = rustls::server::ParsedCertificate::try_from(leaf)
        .map_err(|error| format!("unreadable certificate: {error}"))?;
    rustls::client::verify_server_name(&parsed, &name)
        .map_err(|_| format!("the certificate is not node {node_id}'s"))
}

/// Acceptor side of the node-id binding: the certificate a dialer presented (already verified
/// against the CA by rustls) must name the node id its hello claims.
pub(super) fn check_peer_certificate(
    connection: &quinn::Connection,
    claimed: PeerId,
) -> Result<(), String> {
    let identity = connection
        .peer_identity()
        .ok_or("the peer presented no certificate")?;
    let chain = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| "the peer's identity is not a certificate chain".to_string())?;
    let leaf = chain.first().ok_or("the peer presented no certificate")?;
    certificate_names_node(leaf, claimed)
        .map_err(|reason| format!("it claims to be node {claimed}, but {reason}"))
}

fn server_builder(
    provider: &Arc<CryptoProvider>,
) -> Result<rustls::ConfigBuilder<rustls::ServerConfig, rustls::WantsVerifier>, TransportError> {
    rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|error| setup_error("the crypto provider", error))
}

fn client_builder(
    provider: &Arc<CryptoProvider>,
) -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier>, TransportError> {
    rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|error| setup_error("the crypto provider", error))
}

fn quic_server_config(
    mut config: rustls::ServerConfig,
) -> Result<quinn::crypto::rustls::QuicServerConfig, TransportError> {
    config.alpn_protocols = vec![ALPN_PROTOCOL.to_vec()];
    quinn::crypto::rustls::QuicServerConfig::try_from(config)
        .map_err(|error| setup_error("QUIC server", error))
}

fn quic_client_config(
    mut config: rustls::ClientConfig,
) -> Result<quinn::crypto::rustls::QuicClientConfig, TransportError> {
    config.alpn_protocols = vec![ALPN_PROTOCOL.to_vec()];
    // Every dial is a full handshake: a resumed session would carry the identity of the
    // connection that issued its ticket, so a rotated certificate (or a node that should no
    // longer be trusted) would not be re-checked. Nodes dial rarely; resumption buys nothing.
    config.resumption = rustls::client::Resumption::disabled();
    quinn::crypto::rustls::QuicClientConfig::try_from(config)
        .map_err(|error| setup_error("QUIC client", error))
}

/// A fresh self-signed identity for development.
fn generate_identity(
    node_id: PeerId,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TransportError> {
    let names = vec![node_certificate_name(node_id), "localhost".to_string()];
    let certified = rcgen::generate_simple_self_signed(names)
        .map_err(|error| setup_error("generating a self-signed certificate", error))?;
    let key = PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());
    Ok((vec![certified.cert.der().clone()], key.into()))
}

/// SHA-256 over a domain label and the node's secret material.
fn derive_secret(label: &[u8], material: &[u8]) -> [u8; 32] {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    context.update(b"armada cluster transport stateless reset\0");
    context.update(label);
    context.update(b"\0");
    context.update(material);
    let digest = context.finish();
    let mut secret = [0u8; 32];
    secret.copy_from_slice(digest.as_ref());
    secret
}

/// Development mode's verifier: any certificate is accepted, but the handshake signature is
/// still checked, so the connection is encrypted to whoever holds the presented key.
#[derive(Debug)]
struct EncryptionOnlyVerifier {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for EncryptionOnlyVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            certificate,
            signature,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            certificate,
            signature,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
