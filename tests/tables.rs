//! Black-box tests of `regatta.v1.Tables` and `regatta.v1.Cluster`, REST and start-up config.
#![allow(clippy::too_many_lines)] // scenarios read top to bottom; the 70-line rule is for production code

mod common;

use armada_proto::regatta::v1::{
    CreateTableRequest, DeleteTableRequest, ListTablesRequest, StatusRequest,
};
use common::{Armada, get, http_get, put};
use tonic::Code;

#[tokio::test(flavor = "multi_thread")]
async fn tables_are_created_listed_and_deleted() {
    let armada = Armada::start();
    let mut tables = armada.tables().await;
    let mut kv = armada.kv().await;
    let id = armada.create_table("beta").await;
    assert_eq!(id, "10001");
    // The table accepts writes as soon as Create has returned.
    kv.put(put("beta", "k", "v"))
        .await
        .expect("first write after create");
    armada.create_table("alpha").await;

    let listed = tables
        .list(ListTablesRequest {})
        .await
        .expect("list")
        .into_inner();
    let names: Vec<_> = listed
        .tables
        .iter()
        .map(|t| (t.name.as_str(), t.id.as_str()))
        .collect();
    assert_eq!(
        names,
        vec![("alpha", "10002"), ("beta", "10001")],
        "sorted by name"
    );

    let duplicate = tables
        .create(CreateTableRequest {
            name: "beta".into(),
            config: None,
        })
        .await
        .expect_err("dup");
    assert_eq!(duplicate.code(), Code::AlreadyExists);
    for bad in ["", "a/b", "ü", &"x".repeat(256)] {
        let status = tables
            .create(CreateTableRequest {
                name: bad.into(),
                config: None,
            })
            .await
            .expect_err("bad name");
        assert_eq!(status.code(), Code::InvalidArgument, "{bad:?}");
    }
    tables
        .create(CreateTableRequest {
            name: "x".repeat(255),
            config: None,
        })
        .await
        .expect("255-byte name");

    tables
        .delete(DeleteTableRequest {
            name: "beta".into(),
        })
        .await
        .expect("delete");
    assert_eq!(
        kv.range(get("beta", "k"))
            .await
            .expect_err("deleted")
            .code(),
        Code::NotFound
    );
    assert_eq!(
        tables
            .delete(DeleteTableRequest {
                name: "beta".into()
            })
            .await
            .expect_err("again")
            .code(),
        Code::NotFound
    );

    // Re-created under the same name: a new, empty table.
    let new_id = armada.create_table("beta").await;
    assert_ne!(new_id, id);
    let read = kv.range(get("beta", "k")).await.expect("read").into_inner();
    assert!(read.kvs.is_empty(), "no stale data from the deleted table");
}

#[tokio::test(flavor = "multi_thread")]
async fn tables_token_is_required_when_configured() {
    let dir = tempfile::tempdir().expect("tempdir");
    let armada = Armada::start_in(
        dir.path(),
        &[
            "--tables.token",
            "s3cret",
            "--maintenance.token",
            "m-secret",
        ],
    );
    let mut tables = armada.tables().await;
    let status = tables
        .list(ListTablesRequest {})
        .await
        .expect_err("no token");
    assert_eq!(status.code(), Code::Unauthenticated);
    let mut request = tonic::Request::new(CreateTableRequest {
        name: "t".into(),
        config: None,
    });
    request
        .metadata_mut()
        .insert("authorization", "Bearer wrong".parse().expect("ascii"));
    assert_eq!(
        tables.create(request).await.expect_err("wrong").code(),
        Code::Unauthenticated
    );
    let mut request = tonic::Request::new(CreateTableRequest {
        name: "t".into(),
        config: None,
    });
    request
        .metadata_mut()
        .insert("authorization", "Bearer s3cret".parse().expect("ascii"));
    tables.create(request).await.expect("right token");

    // Status redacts secrets in the effective configuration.
    let status = armada
        .cluster()
        .await
        .status(StatusRequest { config: true })
        .await
        .expect("status")
        .into_inner();
    let config = status.config.expect("config");
    let text = format!("{config:?}");
    assert!(
        !text.contains("s3cret") && !text.contains("m-secret"),
        "secrets leaked: {text}"
    );
    let value = |key: &str| match config.fields.get(key).and_then(|v| v.kind.clone()) {
        Some(prost_types::value::Kind::StringValue(s)) => s,
        other => panic!("{key}: {other:?}"),
    };
    assert_eq!(value("tables.token"), "**********");
    assert_eq!(value("maintenance.token"), "**********");
    assert_eq!(value("api.address"), "http://127.0.0.1:0");
}

#[tokio::test(flavor = "multi_thread")]
async fn status_members_and_rest_endpoints() {
    let armada = Armada::start();
    armada.create_table("s").await;
    let mut kv = armada.kv().await;
    let revision = kv
        .put(put("s", "k", "v"))
        .await
        .expect("put")
        .into_inner()
        .header
        .expect("h")
        .revision;
    let status = armada
        .cluster()
        .await
        .status(StatusRequest { config: false })
        .await
        .expect("status")
        .into_inner();
    assert_eq!(status.id, "1");
    assert!(status.config.is_none());
    assert!(status.errors.is_empty(), "{:?}", status.errors);
    let table = &status.tables["s"];
    assert_eq!(table.leader, "1");
    assert!(table.raft_term >= 1);
    assert_eq!(table.raft_applied_index, revision);
    assert!(table.commit_index >= revision);
    assert!(table.first_log_index <= revision, "nothing compacted yet");
    assert_eq!(table.revision, revision);
    assert!(table.raft_index >= revision);
    assert!(table.log_size > 0 && table.db_size >= 0);
    assert_eq!(table.content_hash.len(), 64, "sha-256 hex");

    let members = common::members(&armada).await;
    assert_eq!(members.members.len(), 1);
    assert_eq!(members.members[0].id, "1");

    let (code, _) = http_get(&armada.rest, "/healthz");
    assert_eq!(code, 200);
    let (code, _) = http_get(&armada.rest, "/readyz");
    assert_eq!(code, 200);
    let (code, body) = http_get(&armada.rest, "/metrics");
    assert_eq!(code, 200);
    assert!(body.contains("grpc_server_handled_total"), "{body}");
    assert!(body.contains("grpc_method=\"Put\""), "{body}");
    assert!(body.contains("armada_raft_term{table=\"s\""), "{body}");
    let (code, _) = http_get(&armada.rest, "/nope");
    assert_eq!(code, 404);
}

#[test]
fn bad_configuration_fails_start_up_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_armada"))
        .args([
            "leader",
            "--raft.address",
            "127.0.0.1:0",
            "--api.address",
            "http://127.0.0.1:0",
        ])
        .args([
            "--rest.address",
            "http://127.0.0.1:0",
            "--replication.address",
            "http://127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .env("RAFT_NODE_ID", "not-a-number")
        .current_dir(dir.path())
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("raft.node-id") && stderr.contains("RAFT_NODE_ID"),
        "{stderr}"
    );

    let config = dir.path().join("config.yaml");
    std::fs::write(&config, "raft:\n  address: 127.0.0.1:1\n  bogus-key: 1\n").expect("write");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_armada"))
        .args(["leader", "--config"])
        .arg(&config)
        .current_dir(dir.path())
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("bogus-key"), "{stderr}");
}
