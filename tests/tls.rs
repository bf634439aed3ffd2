//! TLS and mutual TLS on the gRPC listeners, black-box: real `armada` processes, certificates
//! generated with rcgen into each test's temporary directory.
//!
//! * The client API over `https://` (library client and CLI), refused without the CA, from a
//!   plaintext client, and with TLS 1.2 only (TLS 1.2 is the floor, not 1.3).
//! * Mutual TLS: no client certificate, one from another CA, one with a CN other than
//!   `allowed-cn` are refused; the right one works (library client and CLI).
//! * Hot reload: a broken certificate file keeps the previous certificate; a new certificate is
//!   served to the next new connection, without a restart.
//! * A follower cluster replicating over `https://` with mutual TLS converges; one without a
//!   client certificate is refused.
//! * `unix://` and `unixs://` listeners, for the API and for replication.
//! * Start-up refuses inconsistent TLS settings, naming the key.
#![allow(clippy::too_many_lines)] // scenarios read top to bottom; the 70-line rule is for production code

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use armada_client::{Client, ClientError, ClientIdentity, ConnectOptions};
use armada_proto::replication::v1::MetadataRequest;
use armada_proto::replication::v1::metadata_client::MetadataClient;
use common::{Armada, Cluster};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

const TABLE: &str = "secured";
const DEADLINE: Duration = Duration::from_secs(30);

/// A certificate authority writing PEM files into a directory.
struct Authority {
    issuer: Issuer<'static, KeyPair>,
    directory: PathBuf,
    ca_file: PathBuf,
}

/// A certificate and key written to files.
struct Issued {
    cert_file: PathBuf,
    key_file: PathBuf,
    der: Vec<u8>,
}

impl Authority {
    fn new(directory: &Path, name: &str) -> Authority {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} CA"));
        let pem = params.self_signed(&key).expect("CA certificate").pem();
        let ca_file = directory.join(format!("{name}-ca.pem"));
        std::fs::write(&ca_file, pem).expect("write CA");
        Authority {
            issuer: Issuer::new(params, key),
            directory: directory.to_path_buf(),
            ca_file,
        }
    }

    /// A server certificate valid for 127.0.0.1 and localhost, as `<stem>.crt`/`<stem>.key`.
    fn server(&self, stem: &str, common_name: &str) -> Issued {
        let names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        self.issue(
            stem,
            names,
            common_name,
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate with subject CN `common_name`.
    fn client(&self, stem: &str, common_name: &str) -> Issued {
        self.issue(
            stem,
            Vec::new(),
            common_name,
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }

    /// Writes the pair renamed into place (as rotation tools do), key first.
    fn issue(
        &self,
        stem: &str,
        names: Vec<String>,
        common_name: &str,
        usage: ExtendedKeyUsagePurpose,
    ) -> Issued {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(names).expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![usage];
        let certificate = params.signed_by(&key, &self.issuer).expect("sign");
        let cert_file = self.directory.join(format!("{stem}.crt"));
        let key_file = self.directory.join(format!("{stem}.key"));
        write_into_place(&key_file, &key.serialize_pem());
        write_into_place(&cert_file, &certificate.pem());
        Issued {
            cert_file,
            key_file,
            der: certificate.der().to_vec(),
        }
    }
}

fn write_into_place(path: &Path, contents: &str) {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, contents).expect("write");
    std::fs::rename(&temporary, path).expect("rename");
}

fn text(path: &Path) -> String {
    path.display().to_string()
}

fn options(ca: Option<&Path>, identity: Option<&Issued>) -> ConnectOptions {
    ConnectOptions {
        ca_file: ca.map(Path::to_path_buf),
        identity: identity.map(|issued| ClientIdentity {
            cert_file: issued.cert_file.clone(),
            key_file: issued.key_file.clone(),
        }),
        timeout: Some(Duration::from_secs(5)),
        connect_timeout: Some(Duration::from_secs(5)),
        ..ConnectOptions::default()
    }
}

/// Connects with `options` and writes a key: the whole path a client takes.
async fn try_put(address: &str, options: &ConnectOptions, key: &str) -> Result<(), ClientError> {
    let client = Client::connect_with(address, options).await?;
    client.put(TABLE, key.to_string(), "v", false).await?;
    Ok(())
}

async fn read(address: &str, options: &ConnectOptions, key: &str) -> Option<Vec<u8>> {
    let client = Client::connect_with(address, options).await.ok()?;
    let response = client.get(TABLE, key.to_string()).await.ok()?;
    response.kvs.first().map(|kv| kv.value.to_vec())
}

fn cli(address: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_armada"))
        .args(args)
        .args(["--address", address])
        .output()
        .expect("run armada")
}

fn assert_success(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Completes a TLS handshake with `address` (`https://host:port`) offering only `versions`,
/// trusting `ca_file`; returns the leaf certificate the server presented.
fn presented_certificate(
    address: &str,
    ca_file: &Path,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<Vec<u8>, String> {
    let authority = address.trim_start_matches("https://");
    let (host, _port) = authority.rsplit_once(':').expect("host:port");
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_file_iter(ca_file).expect("CA file") {
        roots.add(certificate.expect("CA")).expect("root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let name = ServerName::try_from(host.to_string()).expect("server name");
    let mut connection =
        rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let mut socket = std::net::TcpStream::connect(authority).map_err(|e| e.to_string())?;
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    while connection.is_handshaking() {
        connection
            .complete_io(&mut socket)
            .map_err(|e| e.to_string())?;
    }
    assert_eq!(connection.alpn_protocol(), Some(&b"h2"[..]), "ALPN h2");
    let leaf = connection
        .peer_certificates()
        .and_then(|chain| chain.first())
        .ok_or("no certificate")?;
    Ok(leaf.to_vec())
}

/// How many lines of `node`'s log contain `needle`.
fn log_lines(node: &Armada, needle: &str) -> usize {
    node.log()
        .lines()
        .filter(|line| line.contains(needle))
        .count()
}

async fn wait_for_log(node: &Armada, needle: &str, more_than: usize) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while log_lines(node, needle) <= more_than {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no log line with {needle:?}:\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts a single leader whose data lives in `<temp>/node`, with `args`.
fn start_leader(temp: &Path, args: &[String]) -> Armada {
    let data_dir = temp.join("node");
    std::fs::create_dir_all(&data_dir).expect("data dir");
    let mut all: Vec<&str> = vec!["--tables.names", TABLE];
    all.extend(args.iter().map(String::as_str));
    Armada::start_in(&data_dir, &all)
}

fn https_api(server: &Issued) -> Vec<String> {
    vec![
        "--api.address".into(),
        "https://127.0.0.1:0".into(),
        "--api.cert-filename".into(),
        text(&server.cert_file),
        "--api.key-filename".into(),
        text(&server.key_file),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_over_https_needs_the_ca() {
    let temp = tempfile::tempdir().expect("tempdir");
    let authority = Authority::new(temp.path(), "server");
    let server = authority.server("server", "armada-server");
    let leader = start_leader(temp.path(), &https_api(&server));
    assert!(
        leader.api.starts_with("https://127.0.0.1:"),
        "{}",
        leader.api
    );
    let ca = authority.ca_file.as_path();

    try_put(&leader.api, &options(Some(ca), None), "library")
        .await
        .expect("a client trusting the CA");
    // The CLI, with --ca.
    let put = cli(
        &leader.api,
        &["kv", "put", TABLE, "cli", "from the CLI", "--ca", &text(ca)],
    );
    assert!(assert_success(&put).contains("OK"));
    let got = cli(&leader.api, &["kv", "get", TABLE, "cli", "--ca", &text(ca)]);
    assert_eq!(assert_success(&got), "cli\nfrom the CLI\n");

    // Without the CA the certificate is not trusted (the system's roots do not know it).
    let refused = try_put(&leader.api, &options(None, None), "untrusted").await;
    assert!(refused.is_err(), "a client without the CA was served");
    let got = cli(&leader.api, &["kv", "get", TABLE, "cli"]);
    assert!(!got.status.success(), "the CLI without --ca was served");
    // Plaintext to the TLS port is refused too.
    let plaintext = leader.api.replace("https://", "http://");
    assert!(
        try_put(&plaintext, &options(None, None), "plain")
            .await
            .is_err()
    );
    // TLS 1.2 is accepted (the floor), and the server presents its certificate with ALPN h2.
    let presented = presented_certificate(&leader.api, ca, &[&rustls::version::TLS12])
        .expect("a TLS 1.2 handshake");
    assert_eq!(presented, server.der);
}

#[tokio::test(flavor = "multi_thread")]
async fn mutual_tls_on_the_api_requires_a_client_certificate_with_the_allowed_cn() {
    let temp = tempfile::tempdir().expect("tempdir");
    let servers = Authority::new(temp.path(), "server");
    let clients = Authority::new(temp.path(), "clients");
    let stranger = Authority::new(temp.path(), "stranger");
    let server = servers.server("server", "armada-server");
    let mut args = https_api(&server);
    args.extend([
        "--api.ca-filename".into(),
        text(&clients.ca_file),
        "--api.allowed-cn".into(),
        "operator".into(),
    ]);
    let leader = start_leader(temp.path(), &args);
    let ca = Some(servers.ca_file.as_path());
    let operator = clients.client("operator", "operator");
    let intruder = clients.client("intruder", "intruder");
    let foreign = stranger.client("foreign", "operator");

    try_put(&leader.api, &options(ca, Some(&operator)), "allowed")
        .await
        .expect("the allowed client certificate");
    let refused_before = log_lines(&leader, "TLS handshake failed");
    for (what, identity) in [
        ("no client certificate", None),
        ("a certificate from another CA", Some(&foreign)),
        ("a CN other than allowed-cn", Some(&intruder)),
    ] {
        let result = try_put(&leader.api, &options(ca, identity), "refused").await;
        assert!(result.is_err(), "served a client with {what}");
    }
    // Each refusal happened in the server's handshake, with its reason in the log.
    wait_for_log(&leader, "TLS handshake failed", refused_before + 2).await;
    wait_for_log(&leader, "is not the allowed CN", 0).await;
    assert_eq!(
        read(&leader.api, &options(ca, Some(&operator)), "refused").await,
        None
    );

    // The CLI with --cert/--key.
    let mut args = vec!["kv", "get", TABLE, "allowed", "--ca"];
    let ca_text = text(&servers.ca_file);
    let (cert, key) = (text(&operator.cert_file), text(&operator.key_file));
    args.extend([ca_text.as_str(), "--cert", &cert, "--key", &key]);
    assert_eq!(assert_success(&cli(&leader.api, &args)), "allowed\nv\n");
    let no_certificate = cli(
        &leader.api,
        &["kv", "get", TABLE, "allowed", "--ca", &ca_text],
    );
    assert!(!no_certificate.status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_certificate_is_served_to_new_connections_without_a_restart() {
    let temp = tempfile::tempdir().expect("tempdir");
    let authority = Authority::new(temp.path(), "server");
    let first = authority.server("server", "armada-first");
    let leader = start_leader(temp.path(), &https_api(&first));
    let ca = authority.ca_file.as_path();
    let tls13 = [&rustls::version::TLS13];
    assert_eq!(
        presented_certificate(&leader.api, ca, &tls13).expect("handshake"),
        first.der
    );

    // A broken certificate file: the previous certificate stays in service.
    write_into_place(&first.cert_file, "-----BEGIN CERTIFICATE-----\nbroken\n");
    let keeping = "keeping the previous certificate";
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while log_lines(&leader, keeping) == 0 {
        // Handshakes are what make the server look at its files.
        let presented = presented_certificate(&leader.api, ca, &tls13).expect("handshake");
        assert_eq!(
            presented, first.der,
            "served something else than the old certificate"
        );
        assert!(tokio::time::Instant::now() < deadline, "{}", leader.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    try_put(&leader.api, &options(Some(ca), None), "during")
        .await
        .expect("served with the previous certificate");

    // A new certificate and key (new serial, new CN): the next new connections see it.
    let second = authority.server("server", "armada-second");
    assert_ne!(first.der, second.der);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let presented = presented_certificate(&leader.api, ca, &tls13).expect("handshake");
        if presented == second.der {
            break;
        }
        assert_eq!(presented, first.der);
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new certificate was not served:\n{}",
            leader.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    try_put(&leader.api, &options(Some(ca), None), "after")
        .await
        .expect("served with the new certificate");
    assert!(log_lines(&leader, "reloaded the TLS certificate") >= 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_follower_replicates_over_https_with_mutual_tls() {
    let temp = tempfile::tempdir().expect("tempdir");
    let servers = Authority::new(temp.path(), "server");
    let followers = Authority::new(temp.path(), "followers");
    let server = servers.server("replication", "armada-leader");
    let follower_identity = followers.client("follower", "follower-cluster");
    let leader = start_leader(
        temp.path(),
        &[
            "--replication.address".into(),
            "https://127.0.0.1:0".into(),
            "--replication.cert-filename".into(),
            text(&server.cert_file),
            "--replication.key-filename".into(),
            text(&server.key_file),
            "--replication.ca-filename".into(),
            text(&followers.ca_file),
            "--replication.allowed-cn".into(),
            "follower-cluster".into(),
        ],
    );
    assert!(
        leader.replication.starts_with("https://"),
        "{}",
        leader.replication
    );
    let plain = options(None, None);
    try_put(&leader.api, &plain, "before")
        .await
        .expect("put on the leader");

    let ca = text(&servers.ca_file);
    let (cert, key) = (
        text(&follower_identity.cert_file),
        text(&follower_identity.key_file),
    );
    let follower = Cluster::start_follower(
        1,
        &leader.replication,
        &[
            "--replication.ca-filename",
            &ca,
            "--replication.cert-filename",
            &cert,
            "--replication.key-filename",
            &key,
            "--replication.reconcile-interval",
            "500ms",
        ],
    );
    try_put(&leader.api, &plain, "after")
        .await
        .expect("put on the leader");
    let follower_api = follower.node(1).api.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for key in ["before", "after"] {
        while read(&follower_api, &plain, key).await.is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{key} did not reach the follower:\n{}",
                follower.node(1).log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // A follower cluster without a client certificate is refused in the handshake.
    let refused_before = log_lines(&leader, "TLS handshake failed");
    let anonymous = Cluster::start_follower(
        1,
        &leader.replication,
        &[
            "--replication.ca-filename",
            &ca,
            "--replication.reconcile-interval",
            "500ms",
        ],
    );
    wait_for_log(&leader, "TLS handshake failed", refused_before).await;
    assert_eq!(
        read(&anonymous.node(1).api, &plain, "before").await,
        None,
        "a follower without a client certificate got data"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unix_socket_listeners_plaintext_and_tls() {
    let temp = tempfile::tempdir().expect("tempdir");
    let authority = Authority::new(temp.path(), "server");
    let server = authority.server("server", "armada-server");
    let ca = Some(authority.ca_file.as_path());
    let plain = options(None, None);
    let socket = |name: &str| temp.path().join(name).display().to_string();

    // API on unix://, replication on unixs://.
    let first_dir = temp.path().join("first");
    std::fs::create_dir_all(&first_dir).expect("dir");
    let first = Armada::start_in(
        &first_dir,
        &[
            "--tables.names",
            TABLE,
            "--api.address",
            &format!("unix://{}", socket("api.sock")),
            "--replication.address",
            &format!("unixs://{}", socket("replication-tls.sock")),
            "--replication.cert-filename",
            &text(&server.cert_file),
            "--replication.key-filename",
            &text(&server.key_file),
        ],
    );
    assert_eq!(first.api, format!("unix://{}", socket("api.sock")));
    assert_eq!(
        first.replication,
        format!("unixs://{}", socket("replication-tls.sock"))
    );
    try_put(&first.api, &plain, "over-unix")
        .await
        .expect("the API over unix://");
    assert_eq!(
        read(&first.api, &plain, "over-unix").await.as_deref(),
        Some(&b"v"[..])
    );
    let tables = metadata_tables(&first.replication, &options(ca, None))
        .await
        .expect("replication over unixs:// (server name localhost)");
    assert_eq!(tables, vec![TABLE.to_string()]);
    assert!(
        metadata_tables(&first.replication, &plain).await.is_err(),
        "unixs:// without the CA"
    );

    // API on unixs://, replication on unix://.
    let second_dir = temp.path().join("second");
    std::fs::create_dir_all(&second_dir).expect("dir");
    let second = Armada::start_in(
        &second_dir,
        &[
            "--tables.names",
            TABLE,
            "--api.address",
            &format!("unixs://{}", socket("api-tls.sock")),
            "--api.cert-filename",
            &text(&server.cert_file),
            "--api.key-filename",
            &text(&server.key_file),
            "--replication.address",
            &format!("unix://{}", socket("replication.sock")),
        ],
    );
    assert_eq!(second.api, format!("unixs://{}", socket("api-tls.sock")));
    try_put(&second.api, &options(ca, None), "over-unixs")
        .await
        .expect("the API over unixs://");
    assert!(try_put(&second.api, &plain, "no-ca").await.is_err());
    let got = cli(
        &second.api,
        &[
            "kv",
            "get",
            TABLE,
            "over-unixs",
            "--ca",
            &text(&authority.ca_file),
        ],
    );
    assert_eq!(assert_success(&got), "over-unixs\nv\n");
    let tables = metadata_tables(&second.replication, &plain)
        .await
        .expect("replication over unix://");
    assert_eq!(tables, vec![TABLE.to_string()]);
}

/// The table names `Metadata.Get` lists on a replication address.
async fn metadata_tables(
    address: &str,
    options: &ConnectOptions,
) -> Result<Vec<String>, ClientError> {
    let channel = armada_client::connect_channel(address, options).await?;
    let response = MetadataClient::new(channel)
        .get(MetadataRequest {})
        .await?
        .into_inner();
    Ok(response
        .tables
        .into_iter()
        .map(|table| table.name)
        .collect())
}

#[test]
fn start_up_refuses_inconsistent_tls_settings_naming_the_key() {
    let temp = tempfile::tempdir().expect("tempdir");
    let authority = Authority::new(temp.path(), "server");
    let server = authority.server("server", "armada-server");
    let refuse = |args: &[&str], key: &str| {
        let output = Command::new(env!("CARGO_BIN_EXE_armada"))
            .arg("leader")
            .args(["--data-dir", &text(&temp.path().join("data"))])
            .args(["--raft.address", "127.0.0.1:0"])
            .args(args)
            .output()
            .expect("run armada");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "started with {args:?}");
        assert!(stderr.contains(key), "{args:?}: {stderr}");
    };
    refuse(
        &["--api.address", "https://127.0.0.1:0"],
        "api.cert-filename",
    );
    refuse(
        &["--replication.address", "unixs:///tmp/armada-tls-test.sock"],
        "replication.cert-filename",
    );
    let (cert, key) = (text(&server.cert_file), text(&server.key_file));
    let ca = text(&authority.ca_file);
    let tls = [
        "--api.address",
        "https://127.0.0.1:0",
        "--api.cert-filename",
        &cert,
        "--api.key-filename",
        &key,
        "--api.ca-filename",
        &ca,
    ];
    let mut both = tls.to_vec();
    both.extend(["--api.allowed-cn", "a", "--api.allowed-hostname", "b"]);
    refuse(&both, "api.allowed-cn");
    // A key that does not exist fails start-up naming the file.
    let mut missing = tls.to_vec();
    missing[5] = "/nonexistent/server.key";
    refuse(&missing, "/nonexistent/server.key");
}
