//! The CLI against the real server, and `armada dev` from an empty directory.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Armada, get};

/// Kills the child process if the test ends early (a failed assertion), so none is left running.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn armada_cli(address: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_armada"))
        .args(args)
        .args(["--address", address])
        .output()
        .expect("run armada")
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_round_trip_put_get_delete_and_errors() {
    let armada = Armada::start();
    let created = armada_cli(&armada.api, &["table", "create", "cli"]);
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );

    let put = armada_cli(
        &armada.api,
        &["kv", "put", "cli", "greeting", "hello world"],
    );
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    assert!(String::from_utf8_lossy(&put.stdout).contains("OK"));

    let got = armada_cli(&armada.api, &["kv", "get", "cli", "greeting"]);
    assert!(got.status.success());
    assert_eq!(
        String::from_utf8_lossy(&got.stdout),
        "greeting\nhello world\n"
    );

    let json = armada_cli(&armada.api, &["kv", "get", "cli", "greeting", "--json"]);
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json output");
    let text = value.to_string();
    assert!(
        text.contains("hello world") && text.contains("mod_revision"),
        "{text}"
    );

    // The same data through gRPC: the CLI really wrote it.
    let read = armada
        .kv()
        .await
        .range(get("cli", "greeting"))
        .await
        .expect("grpc get")
        .into_inner();
    assert_eq!(read.kvs[0].value.as_ref(), b"hello world");

    let deleted = armada_cli(&armada.api, &["kv", "del", "cli", "greeting"]);
    assert!(deleted.status.success());
    assert_eq!(String::from_utf8_lossy(&deleted.stdout).trim(), "1");

    let listed = armada_cli(&armada.api, &["table", "list", "--json"]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains("\"cli\""));

    // Errors: clear message with the code, non-zero exit.
    let missing = armada_cli(&armada.api, &["kv", "get", "nope", "k"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("NotFound"));
    let invalid = armada_cli(&armada.api, &["kv", "put", "cli", "", "v"]);
    assert!(!invalid.status.success());
    assert!(String::from_utf8_lossy(&invalid.stderr).contains("InvalidArgument"));
    let status = armada_cli(&armada.api, &["status"]);
    assert!(status.status.success());
    assert!(String::from_utf8_lossy(&status.stdout).contains("cli"));
    let status = armada_cli(&armada.api, &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status json");
    let table = &status["tables"]["cli"];
    assert!(
        table["commit_index"]
            .as_u64()
            .is_some_and(|index| index >= 2),
        "{status}"
    );
    assert!(table["first_log_index"].as_u64().is_some(), "{status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn dev_starts_from_an_empty_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let child = Command::new(env!("CARGO_BIN_EXE_armada"))
        .args([
            "dev",
            "--api.address",
            "http://127.0.0.1:0",
            "--replication.address",
            "http://127.0.0.1:0",
        ])
        .args([
            "--rest.address",
            "http://127.0.0.1:0",
            "--raft.address",
            "127.0.0.1:0",
        ])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn dev");
    let mut child = KillOnDrop(child);
    let stdout = child.0.stdout.take().expect("stdout");
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut api, mut follower_api) = (None, None);
    let mut printed = Vec::new();
    while api.is_none() || follower_api.is_none() {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let line = receiver
            .recv_timeout(remaining)
            .unwrap_or_else(|_| panic!("dev printed no API addresses: {printed:?}"));
        if let Some(address) = node_api(&line, "leader node 1:") {
            api = Some(address);
        }
        if let Some(address) = node_api(&line, "follower node 1:") {
            follower_api = Some(address);
        }
        printed.push(line);
    }
    let (api, follower_api) = (api.expect("api"), follower_api.expect("follower api"));
    assert!(
        dir.path().join("armada-data/leader").is_dir()
            && dir.path().join("armada-data/follower").is_dir(),
        "data in ./armada-data"
    );
    let mut more = Vec::new();
    while let Ok(line) = receiver.recv_timeout(Duration::from_secs(2)) {
        more.push(line);
        if more.iter().any(|l| l.contains("kv get")) {
            break;
        }
    }
    assert!(
        more.iter().any(|l| l.contains("armada kv put")),
        "a first command is printed: {more:?}"
    );

    assert!(
        armada_cli(&api, &["table", "create", "demo"])
            .status
            .success()
    );
    assert!(
        armada_cli(&api, &["kv", "put", "demo", "hello", "world"])
            .status
            .success()
    );
    let got = armada_cli(&api, &["kv", "get", "demo", "hello"]);
    assert_eq!(String::from_utf8_lossy(&got.stdout), "hello\nworld\n");
    // The follower cluster mirrors it (within its 5 s reconcile interval).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = armada_cli(&follower_api, &["kv", "get", "demo", "hello"]);
        if String::from_utf8_lossy(&got.stdout) == "hello\nworld\n" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the follower never served the write: {}",
            String::from_utf8_lossy(&got.stderr)
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.0.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.0.try_wait().expect("wait") {
            assert!(status.success(), "dev exits cleanly on SIGTERM: {status}");
            break;
        }
        assert!(Instant::now() < deadline, "dev did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn dev_with_three_nodes_starts_a_local_cluster() {
    let dir = tempfile::tempdir().expect("tempdir");
    let child = Command::new(env!("CARGO_BIN_EXE_armada"))
        .args(["dev", "--nodes", "3", "--follower-nodes", "0"])
        .args(["--api.address", "http://127.0.0.1:0"])
        .args([
            "--replication.address",
            "http://127.0.0.1:0",
            "--rest.address",
            "http://127.0.0.1:0",
        ])
        .args(["--raft.address", "127.0.0.1:0"])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn dev");
    let mut child = KillOnDrop(child);
    let stdout = child.0.stdout.take().expect("stdout");
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut apis = Vec::new();
    while apis.len() < 3 {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let line = receiver
            .recv_timeout(remaining)
            .expect("dev --nodes 3 printed its nodes");
        if let Some(api) = node_api(&line, "leader node ") {
            apis.push(api);
        }
    }
    assert!(dir.path().join("armada-data/leader/node3").is_dir());
    assert!(
        armada_cli(&apis[0], &["table", "create", "demo"])
            .status
            .success()
    );
    let put = armada_cli(&apis[1], &["kv", "put", "demo", "hello", "cluster"]);
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    let got = armada_cli(&apis[2], &["kv", "get", "demo", "hello", "--linearizable"]);
    assert_eq!(String::from_utf8_lossy(&got.stdout), "hello\ncluster\n");
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.0.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.0.try_wait().expect("wait") {
            assert!(status.success(), "dev exits cleanly on SIGTERM: {status}");
            break;
        }
        assert!(Instant::now() < deadline, "dev did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The API address on a `dev` line `<prefix>…: API <address> …`.
fn node_api(line: &str, prefix: &str) -> Option<String> {
    let rest = line.trim().strip_prefix(prefix)?;
    let mut words = rest.split_whitespace();
    words.find(|word| *word == "API")?;
    words.next().map(str::to_string)
}
