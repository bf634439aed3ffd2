//! What operators observe from outside, against the real binary: table sizes in Status and
//! metrics, Raft and storage counters, the build's version and revision (CLI, Status, metric),
//! and the gRPC health and reflection services.
#![allow(clippy::too_many_lines)] // scenarios read top to bottom; the 70-line rule is for production code

mod common;

use armada_proto::regatta::v1::StatusRequest;
use common::{Armada, http_get, incompressible, put};

/// The value of the first sample of `name` whose labels contain every `labels` pair.
fn metric(body: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    body.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .find(|(series, _)| {
            let (series_name, series_labels) = series.split_once('{').unwrap_or((series, ""));
            series_name == name
                && labels
                    .iter()
                    .all(|(label, value)| series_labels.contains(&format!("{label}=\"{value}\"")))
        })
        .and_then(|(_, value)| value.parse().ok())
}

fn metrics(armada: &Armada) -> String {
    let (status, body) = http_get(&armada.rest, "/metrics");
    assert_eq!(status, 200, "{body}");
    body
}

/// A table holding a few MB (less than a memtable, so nothing is flushed yet) reported a
/// db size of 0 in Status and `armada_table_disk_bytes`; both now count what it holds.
#[tokio::test(flavor = "multi_thread")]
async fn status_and_metrics_report_the_tables_real_size() {
    let armada = Armada::start();
    armada.create_table("sized").await;
    armada.create_table("empty").await;
    let mut kv = armada.kv().await;
    let (values, value_bytes) = (40u64, 100_000usize);
    for index in 0..values {
        kv.put(put(
            "sized",
            format!("key{index:03}"),
            incompressible(index, value_bytes),
        ))
        .await
        .expect("put");
    }
    let written = values as f64 * value_bytes as f64;

    let status = armada
        .cluster()
        .await
        .status(StatusRequest::default())
        .await
        .expect("status")
        .into_inner();
    let db_size = |table: &str| status.tables[table].db_size as f64;
    assert!(db_size("sized") >= written, "db_size {}", db_size("sized"));
    assert!(
        db_size("sized") < 4.0 * written,
        "db_size {}",
        db_size("sized")
    );
    assert!(
        db_size("empty") < written / 100.0,
        "db_size {}",
        db_size("empty")
    );

    let body = metrics(&armada);
    let disk = metric(&body, "armada_table_disk_bytes", &[("table", "sized")]).expect("metric");
    assert!(disk >= written, "armada_table_disk_bytes {disk}");
    let journal = metric(&body, "armada_storage_journal_bytes", &[]).expect("journal metric");
    assert!(journal >= written, "armada_storage_journal_bytes {journal}");
    assert!(metric(&body, "armada_storage_compactions_total", &[]).is_some());
    // Counted per table too (nothing is compacted yet: no memtable has been flushed).
    for table in ["sized", "empty"] {
        let compactions = metric(&body, "armada_table_compactions_total", &[("table", table)]);
        assert_eq!(compactions, Some(0.0), "{table}");
    }
}

/// `armada version` (text and JSON), Status and `armada_build_info` name the same version and
/// git revision: the one the build was made from.
#[tokio::test(flavor = "multi_thread")]
async fn version_and_revision_are_the_same_everywhere() {
    let version = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_armada"))
            .arg("version")
            .args(args)
            .output()
            .expect("run armada version");
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).expect("utf-8")
    };
    let json: serde_json::Value = serde_json::from_str(&version(&["--json"])).expect("json");
    let (package, revision) = (
        json["version"].as_str().expect("version").to_string(),
        json["revision"].as_str().expect("revision").to_string(),
    );
    assert_eq!(package, env!("CARGO_PKG_VERSION"));
    assert!(!revision.is_empty());
    // Built from this checkout (unless the build was told its revision): git's revision.
    if std::env::var_os("ARMADA_GIT_REVISION").is_none()
        && let Ok(git) = std::process::Command::new("git")
            .args(["rev-parse", "--short", "HEAD"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
        && git.status.success()
    {
        assert_eq!(revision, String::from_utf8_lossy(&git.stdout).trim());
    }
    let description = format!("armada {package} (revision {revision})");
    assert_eq!(version(&[]).trim_end(), description);
    let flag = std::process::Command::new(env!("CARGO_BIN_EXE_armada"))
        .arg("--version")
        .output()
        .expect("run armada --version");
    assert_eq!(
        String::from_utf8_lossy(&flag.stdout).trim_end(),
        description
    );

    let armada = Armada::start();
    let status = armada
        .cluster()
        .await
        .status(StatusRequest::default())
        .await
        .expect("status")
        .into_inner();
    assert_eq!(status.version, package);
    assert_eq!(status.info, format!("{description}, cluster leader"));
    let body = metrics(&armada);
    assert_eq!(
        metric(
            &body,
            "armada_build_info",
            &[("version", &package), ("revision", &revision)]
        ),
        Some(1.0),
        "{body}"
    );
}

/// Every write proposed to a table's Raft group counts in `armada_raft_proposals_total`, and
/// the group's first election (this process started it) in `armada_raft_elections_total`.
#[tokio::test(flavor = "multi_thread")]
async fn raft_proposals_and_elections_are_counted_per_table() {
    let armada = Armada::start();
    armada.create_table("counted").await;
    armada.create_table("idle").await;
    let mut kv = armada.kv().await;
    let writes = 25;
    for index in 0..writes {
        kv.put(put("counted", format!("k{index}"), "v"))
            .await
            .expect("put");
    }
    let body = metrics(&armada);
    let proposals = |table| metric(&body, "armada_raft_proposals_total", &[("table", table)]);
    assert_eq!(proposals("counted"), Some(f64::from(writes)), "{body}");
    assert_eq!(proposals("idle"), None, "no write was proposed to idle");
    for table in ["counted", "idle"] {
        let elections = metric(&body, "armada_raft_elections_total", &[("table", table)]);
        assert_eq!(elections, Some(1.0), "{table}: {body}");
    }
}

mod grpc_services {
    use super::*;
    use futures::StreamExt;
    use std::time::{Duration, Instant};
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    fn request(service: &str) -> HealthCheckRequest {
        HealthCheckRequest {
            service: service.to_string(),
        }
    }

    async fn check(health: &mut HealthClient<tonic::transport::Channel>, service: &str) -> i32 {
        health
            .check(request(service))
            .await
            .expect("check")
            .into_inner()
            .status
    }

    /// Waits (bounded) until `service` reports `wanted`.
    async fn wait_for_status(
        health: &mut HealthClient<tonic::transport::Channel>,
        service: &str,
        wanted: ServingStatus,
    ) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = check(health, service).await;
            if status == wanted as i32 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{service}: {status}, not {wanted:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `grpc.health.v1.Health` on the API port: SERVING once the node serves reads, for the
    /// server (`""`) and each API service; unknown services are NotFound; on SIGTERM an open
    /// Watch sees NOT_SERVING and ends, and the node still exits cleanly.
    #[tokio::test(flavor = "multi_thread")]
    async fn grpc_health_follows_readiness_and_reports_shutdown() {
        let mut armada = Armada::start();
        let mut health = HealthClient::new(armada.channel().await);
        wait_for_status(&mut health, "", ServingStatus::Serving).await;
        for service in ["regatta.v1.KV", "regatta.v1.Tables", "regatta.v1.Cluster"] {
            assert_eq!(
                check(&mut health, service).await,
                ServingStatus::Serving as i32
            );
        }
        assert_eq!(
            check(&mut health, "maintenance.v1.Maintenance").await,
            ServingStatus::Serving as i32
        );
        let unknown = health.check(request("no.such.Service")).await;
        assert_eq!(unknown.expect_err("unknown").code(), tonic::Code::NotFound);

        let mut watch = health.watch(request("")).await.expect("watch").into_inner();
        let first: HealthCheckResponse = watch.next().await.expect("first").expect("status");
        assert_eq!(first.status, ServingStatus::Serving as i32);
        let stopping = tokio::task::spawn_blocking(move || {
            let status = armada.terminate();
            (armada, status)
        });
        let mut seen = Vec::new();
        while let Some(Ok(message)) = watch.next().await {
            seen.push(message.status);
        }
        assert_eq!(
            seen,
            [ServingStatus::NotServing as i32],
            "statuses after SIGTERM"
        );
        let (armada, status) = stopping.await.expect("terminate");
        assert!(status.success(), "{status}:\n{}", armada.log());
    }

    /// A follower node that has not bootstrapped its tables (its leader cluster is not
    /// reachable) does not serve reads: NOT_SERVING, as `/readyz` says 503.
    #[tokio::test(flavor = "multi_thread")]
    async fn grpc_health_is_not_serving_while_the_node_is_not_ready() {
        let unreachable = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let leader = format!("http://{}", unreachable.local_addr().expect("address"));
        drop(unreachable);
        let cluster = common::Cluster::start_follower(1, &leader, &[]);
        let node = cluster.node(1);
        let (ready, body) = http_get(&node.rest, "/readyz");
        assert_eq!(ready, 503, "{body}");
        let mut health = HealthClient::new(node.channel().await);
        assert_eq!(
            check(&mut health, "").await,
            ServingStatus::NotServing as i32
        );
        assert_eq!(
            check(&mut health, "regatta.v1.KV").await,
            ServingStatus::NotServing as i32
        );
    }

    /// Server reflection lists the API's services (grpcurl needs no .proto files) and
    /// describes them with every type resolvable.
    #[tokio::test(flavor = "multi_thread")]
    async fn server_reflection_lists_and_describes_the_api() {
        let armada = Armada::start();
        let mut reflection = ServerReflectionClient::new(armada.channel().await);
        let ask = |message: MessageRequest| ServerReflectionRequest {
            host: String::new(),
            message_request: Some(message),
        };
        let requests = futures::stream::iter([
            ask(MessageRequest::ListServices(String::new())),
            ask(MessageRequest::FileContainingSymbol("regatta.v1.KV".into())),
        ]);
        let mut answers = reflection
            .server_reflection_info(requests)
            .await
            .expect("reflection")
            .into_inner();
        let listed = match answers
            .next()
            .await
            .expect("answer")
            .expect("ok")
            .message_response
        {
            Some(MessageResponse::ListServicesResponse(list)) => list.service,
            other => panic!("not a service list: {other:?}"),
        };
        let mut names: Vec<String> = listed.into_iter().map(|service| service.name).collect();
        names.sort();
        for expected in [
            "grpc.health.v1.Health",
            "maintenance.v1.Maintenance",
            "regatta.v1.Cluster",
            "regatta.v1.KV",
            "regatta.v1.Tables",
        ] {
            assert!(
                names.iter().any(|name| name == expected),
                "{expected} not in {names:?}"
            );
        }
        // Not served on this port: the replication API and etcd's (a bench client only).
        assert!(
            names
                .iter()
                .all(|name| !name.starts_with("replication.") && !name.starts_with("etcd")),
            "{names:?}"
        );
        let regatta = match answers
            .next()
            .await
            .expect("answer")
            .expect("ok")
            .message_response
        {
            Some(MessageResponse::FileDescriptorResponse(files)) => files.file_descriptor_proto,
            other => panic!("not a file descriptor: {other:?}"),
        };
        use prost::Message as _;
        let regatta =
            prost_types::FileDescriptorProto::decode(regatta[0].as_slice()).expect("descriptor");
        assert_eq!(regatta.name(), "regatta.proto");
        // Every import resolves by name, as a reflection client then asks.
        assert!(regatta.dependency.iter().any(|name| name == "mvcc.proto"));
        let imports = futures::stream::iter(
            regatta
                .dependency
                .iter()
                .map(|name| ask(MessageRequest::FileByFilename(name.clone())))
                .collect::<Vec<_>>(),
        );
        let mut answers = reflection
            .server_reflection_info(imports)
            .await
            .expect("reflection")
            .into_inner();
        for name in &regatta.dependency {
            match answers
                .next()
                .await
                .expect("answer")
                .expect("ok")
                .message_response
            {
                Some(MessageResponse::FileDescriptorResponse(files)) => {
                    let file = prost_types::FileDescriptorProto::decode(
                        files.file_descriptor_proto[0].as_slice(),
                    )
                    .expect("descriptor");
                    assert_eq!(file.name(), name);
                }
                other => panic!("{name}: {other:?}"),
            }
        }
    }
}
