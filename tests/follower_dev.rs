//! `armada dev`, black-box: the quick start it prints works at once — a table created on the
//! leader cluster is served by the follower cluster within a second or two (through the
//! metadata feed, not the 5 s reconcile interval) — and the two clusters' `/metrics` stay
//! apart although they run in one process.
#![allow(clippy::too_many_lines)] // scenarios read top to bottom; the 70-line rule is for production code

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use armada_proto::regatta::v1::CreateTableRequest;
use armada_proto::regatta::v1::kv_client::KvClient;
use armada_proto::regatta::v1::tables_client::TablesClient;
use common::{get, put};

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The addresses a dev node wrote to its `listen.json`: (api, rest).
fn wait_listening(data_dir: &Path, child: &mut KillOnDrop) -> (String, String) {
    let deadline = Instant::now() + common::STARTUP_DEADLINE;
    loop {
        if let Ok(bytes) = std::fs::read(data_dir.join("listen.json")) {
            let json: serde_json::Value = serde_json::from_slice(&bytes).expect("listen.json");
            let field = |name: &str| json[name].as_str().expect(name).to_string();
            return (field("api"), field("rest"));
        }
        assert!(
            child.0.try_wait().expect("wait").is_none(),
            "dev exited during start-up"
        );
        assert!(Instant::now() < deadline, "dev did not start in time");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The value of the series `name{labels…}` that contains every one of `labels`, if any.
fn series<'a>(metrics: &'a str, name: &str, labels: &[&str]) -> Option<&'a str> {
    metrics
        .lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .find(|line| labels.iter().all(|label| line.contains(label)))
        .and_then(|line| line.rsplit(' ').next())
}

#[tokio::test(flavor = "multi_thread")]
async fn dev_serves_a_new_table_on_the_follower_at_once_and_keeps_metrics_apart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let child = Command::new(env!("CARGO_BIN_EXE_armada"))
        .args(["dev", "--api.address", "http://127.0.0.1:0"])
        .args(["--replication.address", "http://127.0.0.1:0"])
        .args(["--rest.address", "http://127.0.0.1:0"])
        .args(["--raft.address", "127.0.0.1:0"])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn dev");
    let mut child = KillOnDrop(child);
    let data = dir.path().join("armada-data");
    let (leader_api, leader_rest) = wait_listening(&data.join("leader/node1"), &mut child);
    let (follower_api, follower_rest) = wait_listening(&data.join("follower/node1"), &mut child);

    // The quick start: create, put on the leader, get on the follower.
    TablesClient::connect(leader_api.clone())
        .await
        .expect("connect")
        .create(CreateTableRequest {
            name: "demo".into(),
            config: None,
        })
        .await
        .expect("create");
    let created = Instant::now();
    KvClient::connect(leader_api)
        .await
        .expect("connect")
        .put(put("demo", "hello", "world"))
        .await
        .expect("put");
    let mut follower = KvClient::connect(follower_api).await.expect("connect");
    loop {
        let read = follower.range(get("demo", "hello")).await;
        if read
            .as_ref()
            .is_ok_and(|read| read.get_ref().kvs.first().map(|kv| &kv.value[..]) == Some(b"world"))
        {
            break;
        }
        // Well before the 5 s reconcile interval: the quick start must not fail at first.
        assert!(
            created.elapsed() < Duration::from_secs(3),
            "the follower did not serve the new table in time: {read:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Each /metrics shows its own node only: the table's Raft and replication series, and the
    // gRPC calls each node served.
    let (_, leader_metrics) = common::http_get(&leader_rest, "/metrics");
    let (_, follower_metrics) = common::http_get(&follower_rest, "/metrics");
    let create = [
        "grpc_service=\"regatta.v1.Tables\"",
        "grpc_method=\"Create\"",
    ];
    assert!(series(&leader_metrics, "grpc_server_handled_total", &create).is_some());
    assert_eq!(
        series(&follower_metrics, "grpc_server_handled_total", &create),
        None,
        "the follower's /metrics shows the leader's calls:\n{follower_metrics}"
    );
    assert!(
        series(
            &follower_metrics,
            "armada_replication_lag_entries",
            &["demo"]
        )
        .is_some()
    );
    assert_eq!(
        series(&leader_metrics, "armada_replication_lag_entries", &["demo"]),
        None,
        "the leader's /metrics shows the follower's replication:\n{leader_metrics}"
    );
    for metrics in [&leader_metrics, &follower_metrics] {
        // Recorded on the node's own log-writer thread, not a runtime thread.
        assert!(
            metrics.contains("armada_raft_log_syncs_total"),
            "the log writer's metrics are missing:\n{metrics}"
        );
        assert_eq!(
            metrics
                .lines()
                .filter(|line| line.starts_with("armada_raft_is_leader{") && line.contains("demo"))
                .count(),
            1,
            "one series per node for the table:\n{metrics}"
        );
    }
}
