//! Mutual TLS on the cluster transport: a 3-node loopback cluster whose nodes hold certificates
//! signed by the cluster's CA works; node 3 restarted (same data dir, same id and address) with a
//! certificate from another CA cannot rejoin while the other two keep serving; restarted with
//! its proper certificate again, it rejoins and converges.
#![allow(clippy::too_many_lines)] // scenarios read top to bottom; the 70-line rule is for production code

mod common;
mod workload;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Armada, free_udp_ports};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use workload::{assert_all_present, converge, eventually, kv, put, read_all, read_key, replica};

const TABLE: &str = "secured";
const DEADLINE: Duration = Duration::from_secs(30);

/// A certificate authority that can issue node certificates.
struct Authority {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Authority {
    fn new(name: &str) -> Authority {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let pem = params.self_signed(&key).expect("CA certificate").pem();
        Authority {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// Writes node `node_id`'s certificate (DNS name `node-<id>`, which binds it to that node
    /// id) and its key into `dir` as `<node>.crt`/`<node>.key`; returns (certificate file, key
    /// file).
    fn issue(&self, dir: &Path, node: &str, node_id: u64) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().expect("node key");
        let mut params =
            CertificateParams::new(vec![format!("node-{node_id}")]).expect("node params");
        params.distinguished_name.push(DnType::CommonName, node);
        let certificate = params.signed_by(&key, &self.issuer).expect("node cert");
        let cert_file = dir.join(format!("{node}.crt"));
        let key_file = dir.join(format!("{node}.key"));
        std::fs::write(&cert_file, certificate.pem()).expect("write cert");
        std::fs::write(&key_file, key.serialize_pem()).expect("write key");
        (cert_file, key_file)
    }
}

fn tls_args(ca: &Path, cert: &Path, key: &Path) -> Vec<String> {
    vec![
        "--raft.ca-filename".into(),
        ca.display().to_string(),
        "--raft.cert-filename".into(),
        cert.display().to_string(),
        "--raft.key-filename".into(),
        key.display().to_string(),
    ]
}

fn spawn(data_dir: &Path, id: u64, address: &str, members: &str, args: &[String]) -> Armada {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Armada::spawn_member(data_dir, id, address, members, &args)
}

/// Lines of a node's log reporting an incoming connection from `remote` refused in its TLS
/// handshake because of the certificate it presented (rustls: "invalid peer certificate:
/// UnknownIssuer").
fn refused_handshakes(node: &Armada, remote: &str) -> usize {
    node.log()
        .lines()
        .filter(|line| {
            line.contains("failed its handshake")
                && line.contains("invalid peer certificate")
                && line.contains(remote)
        })
        .count()
}

/// Puts `key` through `api`, retrying while the cluster settles (same key and value each time,
/// so a retry of a write whose answer was lost changes nothing a check depends on but the
/// revision, which is taken from the successful answer). Returns the revision.
async fn put_retrying(api: &str, key: &str) -> i64 {
    eventually(DEADLINE, &format!("put {key} through {api}"), || async {
        let response = kv(api)
            .put(workload::with_timeout(
                put(TABLE, key, "v"),
                Duration::from_secs(2),
            ))
            .await
            .ok()?;
        Some(response.into_inner().header.expect("header").revision as i64)
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_with_a_certificate_from_another_ca_cannot_join() {
    let temp = tempfile::tempdir().expect("tempdir");
    let pki = temp.path().join("pki");
    std::fs::create_dir_all(&pki).expect("pki dir");
    let cluster_ca = Authority::new("armada test cluster CA");
    let rogue_ca = Authority::new("some other CA");
    let ca_file = pki.join("ca.crt");
    std::fs::write(&ca_file, &cluster_ca.pem).expect("write CA");

    let ports = free_udp_ports(3);
    let addresses: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let members = addresses
        .iter()
        .enumerate()
        .map(|(i, address)| format!("{}={address}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let data_dirs: Vec<PathBuf> = (1..=3)
        .map(|id| temp.path().join(format!("node{id}")))
        .collect();
    let good_args: Vec<Vec<String>> = (1..=3)
        .map(|id| {
            let (cert, key) = cluster_ca.issue(&pki, &format!("node{id}"), id);
            tls_args(&ca_file, &cert, &key)
        })
        .collect();
    let mut nodes: Vec<Armada> = (0..3)
        .map(|i| {
            spawn(
                &data_dirs[i],
                i as u64 + 1,
                &addresses[i],
                &members,
                &good_args[i],
            )
        })
        .collect();
    for node in &mut nodes {
        node.wait_serving();
    }

    // The mutually authenticated cluster works: a write on node 1 is read (linearizably) on 2.
    nodes[0].create_table(TABLE).await;
    let first_revision = put_retrying(&nodes[0].api, "before").await;
    let read = eventually(DEADLINE, "a linearizable read on node 2", || async {
        read_key(&nodes[1].api, TABLE, "before", true).await.ok()
    })
    .await;
    assert_eq!(read, Some(first_revision));
    let apis: Vec<String> = nodes.iter().map(|node| node.api.clone()).collect();
    converge(&apis, TABLE, DEADLINE).await;

    // Node 3 comes back with a certificate from another CA (it still trusts the cluster's CA,
    // so only its own certificate is wrong).
    nodes[2].terminate();
    let (rogue_cert, rogue_key) = rogue_ca.issue(&pki, "node3-rogue", 3);
    let refused_before: Vec<usize> = nodes[..2]
        .iter()
        .map(|node| refused_handshakes(node, &addresses[2]))
        .collect();
    let mut rogue = spawn(
        &data_dirs[2],
        3,
        &addresses[2],
        &members,
        &tls_args(&ca_file, &rogue_cert, &rogue_key),
    );

    // Both healthy nodes refuse its connections in the TLS handshake.
    eventually(
        DEADLINE,
        "nodes 1 and 2 to refuse node 3's handshakes",
        || async {
            nodes[..2]
                .iter()
                .zip(&refused_before)
                .all(|(node, before)| refused_handshakes(node, &addresses[2]) > *before)
                .then_some(())
        },
    )
    .await;
    assert!(
        rogue.is_running(),
        "the rogue node runs (it is refused, not crashed)"
    );
    let log = nodes[0].log();
    let refusal = log
        .lines()
        .rfind(|line| line.contains("failed its handshake") && line.contains(&addresses[2]))
        .expect("a refusal");
    eprintln!("node 1 refused node 3: {refusal}");

    // Meanwhile nodes 1 and 2 keep serving writes and linearizable reads.
    let mut acked = Vec::new();
    for i in 0..20 {
        let api = &nodes[i % 2].api;
        let key = format!("during-{i:02}");
        let revision = put_retrying(api, &key).await;
        let other = &nodes[(i + 1) % 2].api;
        let read = eventually(DEADLINE, "a linearizable read", || async {
            read_key(other, TABLE, &key, true).await.ok()
        })
        .await;
        assert_eq!(read, Some(revision), "{key} read on {other}");
        acked.push(workload::Ack {
            key,
            revision,
            raft_term: 0,
            sent_at: Instant::now(),
        });
    }
    let last_revision = acked.last().expect("acked").revision;

    // The refusals keep coming while node 3 retries, and it has none of the new writes: it
    // either never became ready (no catalog leader it can reach) or, if it serves, its replica
    // stays behind them.
    let refused_now: Vec<usize> = nodes[..2]
        .iter()
        .map(|node| refused_handshakes(node, &addresses[2]))
        .collect();
    eventually(DEADLINE, "node 3 to be refused again", || async {
        nodes[..2]
            .iter()
            .zip(&refused_now)
            .all(|(node, before)| refused_handshakes(node, &addresses[2]) > *before)
            .then_some(())
    })
    .await;
    let listen_file = data_dirs[2].join("listen.json");
    if listen_file.exists() {
        rogue.wait_serving();
        if let Some(state) = replica(&rogue.api, TABLE).await {
            assert!(
                (state.applied_index as i64) < last_revision,
                "node 3 with a wrong certificate applied writes made without it: {state:?}"
            );
        }
        let read = read_key(&rogue.api, TABLE, "during-00", false).await;
        assert!(
            !matches!(read, Ok(Some(_))),
            "node 3 with a wrong certificate has a write made without it"
        );
        eprintln!("node 3 with a wrong certificate serves, behind the cluster");
    } else {
        eprintln!("node 3 with a wrong certificate never became ready");
    }
    rogue.kill9();
    drop(rogue);

    // With its proper certificate it rejoins and converges.
    let mut node3 = spawn(&data_dirs[2], 3, &addresses[2], &members, &good_args[2]);
    node3.wait_serving();
    nodes[2] = node3;
    let after = put_retrying(&nodes[2].api, "after").await;
    acked.push(workload::Ack {
        key: "after".into(),
        revision: after,
        raft_term: 0,
        sent_at: Instant::now(),
    });
    let apis: Vec<String> = nodes.iter().map(|node| node.api.clone()).collect();
    let (applied, _) = converge(&apis, TABLE, Duration::from_secs(60)).await;
    assert!(applied as i64 >= after);
    for api in &apis {
        let present = read_all(api, TABLE, false)
            .await
            .unwrap_or_else(|status| panic!("range on {api}: {status}"));
        assert_all_present(&acked, &present);
    }
    let read = eventually(DEADLINE, "a linearizable read on node 3", || async {
        read_key(&nodes[2].api, TABLE, &format!("during-{:02}", 19), true)
            .await
            .ok()
    })
    .await;
    assert_eq!(read, Some(last_revision));
}
