//! The CLI against the real server, and `armada dev` from an empty directory.
#![allow(clippy::too_many_lines)] // scenarios read top to bottom; the 70-line rule is for production code

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

/// Runs the CLI with `args` (and `--address` only if the test gives it), feeding `stdin`.
fn armada_with_input(args: &[&str], stdin: &[u8]) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_armada"))
        .args(args)
        .env_remove("ARMADA_ADDRESS")
        .env_remove("ARMADA_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run armada");
    let mut input = child.stdin.take().expect("stdin");
    let stdin = stdin.to_vec();
    // A separate writer: a large input must not block on a full pipe while we wait.
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let output = child.wait_with_output().expect("wait");
    writer.join().expect("writer");
    output
}

/// A process stopped with SIGSTOP for as long as this value lives (continued even when the
/// test fails, so the server can be shut down).
struct Stopped(u32);

impl Stopped {
    fn new(pid: u32) -> Stopped {
        signal(pid, "-STOP");
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        signal(self.0, "-CONT");
    }
}

fn signal(pid: u32, which: &str) {
    let status = Command::new("kill")
        .args([which, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {which} {pid}");
}

fn json_stdout(output: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "stdout is not JSON ({error}): {}\nstderr: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn every_error_class_has_its_exit_code_and_a_json_form() {
    let dir = tempfile::tempdir().expect("tempdir");
    let armada = Armada::start_in(dir.path(), &["--tables.token", "s3cret"]);
    let api = armada.api.as_str();
    let run = |args: &[&str]| armada_with_input(args, b"");
    let code = |output: &std::process::Output| output.status.code();
    let created = run(&[
        "table",
        "create",
        "cli",
        "--token",
        "s3cret",
        "--address",
        api,
    ]);
    assert_eq!(code(&created), Some(0), "{created:?}");

    // 2: usage — a missing argument (clap) and an address that is not one.
    assert_eq!(code(&run(&["kv", "get", "cli", "--address", api])), Some(2));
    let bad_address = run(&["kv", "get", "cli", "k", "--address", "ftp://x", "--json"]);
    assert_eq!(code(&bad_address), Some(2));
    assert_eq!(json_stdout(&bad_address)["error"]["class"], "usage");
    // 3: nothing listens on port 1.
    let refused = run(&["kv", "get", "cli", "k", "--address", "http://127.0.0.1:1"]);
    assert_eq!(code(&refused), Some(3), "{refused:?}");
    // 4: an unknown table, also as JSON on stdout.
    let missing = run(&["kv", "get", "nope", "k", "--address", api, "--json"]);
    assert_eq!(code(&missing), Some(4));
    let error = &json_stdout(&missing)["error"];
    assert_eq!(error["class"], "not_found");
    assert_eq!(error["exit_code"], 4);
    assert_eq!(error["grpc_code"], "NotFound");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("not found")),
        "{error}"
    );
    // 5: an empty key refused by the server.
    let invalid = run(&["kv", "put", "cli", "", "v", "--address", api]);
    assert_eq!(code(&invalid), Some(5), "{invalid:?}");
    // 6: the Tables API without its token.
    let unauthenticated = run(&["table", "create", "other", "--address", api]);
    assert_eq!(code(&unauthenticated), Some(6), "{unauthenticated:?}");
    // 7: a deadline no call can meet: the server is stopped (SIGSTOP), so the connection is
    // accepted by the kernel but nothing answers. (A tiny --timeout instead raced the timer's
    // millisecond tick against a fast loopback answer and sometimes lost.)
    let late = {
        let _stopped = Stopped::new(armada.pid());
        run(&[
            "kv",
            "get",
            "cli",
            "k",
            "--timeout",
            "0.3",
            "--address",
            api,
        ])
    };
    assert_eq!(code(&late), Some(7), "{late:?}");
    // 8: a table that exists.
    let exists = run(&[
        "table",
        "create",
        "cli",
        "--token",
        "s3cret",
        "--address",
        api,
    ]);
    assert_eq!(code(&exists), Some(8), "{exists:?}");
    // The table is documented in --help.
    let help = run(&["--help"]);
    assert!(
        String::from_utf8_lossy(&help.stdout).contains("Exit codes: 0 success"),
        "{help:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn several_addresses_fail_over_and_values_come_from_stdin() {
    let armada = Armada::start();
    let api = armada.api.as_str();
    armada.create_table("cli").await;
    // The first address is unreachable: the second serves.
    let addresses = format!("http://127.0.0.1:1,{api}");
    let binary = b"\xff\x00line\n";
    let put = armada_with_input(
        &["kv", "put", "cli", "bin", "--address", &addresses],
        binary,
    );
    assert!(put.status.success(), "{put:?}");
    // The same list from the environment.
    let got = Command::new(env!("CARGO_BIN_EXE_armada"))
        .args(["kv", "get", "cli", "bin", "--json"])
        .env("ARMADA_ADDRESS", &addresses)
        .output()
        .expect("run");
    let json = json_stdout(&got);
    let kv = &json["kvs"][0];
    assert_eq!(kv["key"], "bin");
    assert_eq!(kv["key_base64"], "Ymlu");
    assert_eq!(kv["value"], serde_json::Value::Null, "not UTF-8: {kv}");
    assert_eq!(kv["value_base64"], "/wBsaW5lCg==");
    // Every address unreachable: unavailable, naming them.
    let none = armada_with_input(
        &[
            "kv",
            "get",
            "cli",
            "bin",
            "--address",
            "http://127.0.0.1:1,http://127.0.0.1:2",
        ],
        b"",
    );
    assert_eq!(none.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&none.stderr);
    assert!(
        stderr.contains("tried http://127.0.0.1:1, http://127.0.0.1:2"),
        "{stderr}"
    );

    // A node on port 0 advertises the port it bound.
    let members = armada_with_input(&["members", "--json", "--address", api], b"");
    assert_eq!(
        json_stdout(&members)["members"][0]["client_urls"],
        serde_json::json!([api])
    );

    // --print-value-only: values only, one per line.
    for (key, value) in [("p/1", "one"), ("p/2", "two")] {
        let put = armada_with_input(&["kv", "put", "cli", key, value, "--address", api], b"");
        assert!(put.status.success(), "{put:?}");
    }
    let values = armada_with_input(
        &[
            "kv",
            "get",
            "cli",
            "p/",
            "--prefix",
            "--print-value-only",
            "--address",
            api,
        ],
        b"",
    );
    assert_eq!(String::from_utf8_lossy(&values.stdout), "one\ntwo\n");
    // A value over the 2 MiB limit on stdin is refused before it is sent.
    let huge = vec![b'x'; 2 * 1024 * 1024 + 1];
    let refused = armada_with_input(&["kv", "put", "cli", "huge", "--address", api], &huge);
    assert_eq!(refused.status.code(), Some(5), "{refused:?}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("value") && stderr.contains("2097152"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn reset_rebuilds_a_follower_table_with_the_maintenance_token() {
    let leader = common::Cluster::start(1, &[]);
    let leader = leader.node(1);
    leader.create_table("policy").await;
    let put = armada_with_input(
        &["kv", "put", "policy", "k", "v", "--address", &leader.api],
        b"",
    );
    assert!(put.status.success(), "{put:?}");
    let mut followers = common::Cluster::start_follower(
        1,
        &leader.replication,
        &[
            "--maintenance.token",
            "m4int",
            "--replication.reconcile-interval",
            "500ms",
        ],
    );
    let api = followers.node(1).api.clone();
    let recoveries = |api: &str| {
        let status = armada_with_input(&["status", "--json", "--address", api], b"");
        json_stdout(&status)["tables"]["policy"]["replication"]["snapshot_recoveries"].as_u64()
    };
    // Wait until the follower serves the leader's data: its first bootstrap is over.
    let deadline = Instant::now() + Duration::from_secs(60);
    let before = loop {
        let got = armada_with_input(&["kv", "get", "policy", "k", "--address", &api], b"");
        if got.stdout == b"k\nv\n"
            && let Some(count) = recoveries(&api)
        {
            break count;
        }
        assert!(
            Instant::now() < deadline,
            "the follower never bootstrapped the table"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let unauthenticated = armada_with_input(&["reset", "policy", "--address", &api], b"");
    assert_eq!(
        unauthenticated.status.code(),
        Some(6),
        "{unauthenticated:?}"
    );
    let reset = armada_with_input(
        &[
            "reset",
            "policy",
            "--token",
            "m4int",
            "--timeout",
            "60s",
            "--address",
            &api,
        ],
        b"",
    );
    assert!(reset.status.success(), "{reset:?}");
    let after = recoveries(&api);
    assert!(
        after.is_some_and(|after| after > before),
        "{before} {after:?} {reset:?}"
    );
    let got = armada_with_input(&["kv", "get", "policy", "k", "--address", &api], b"");
    assert_eq!(String::from_utf8_lossy(&got.stdout), "k\nv\n");
    let all = armada_with_input(
        &[
            "reset",
            "--all",
            "--json",
            "--token",
            "m4int",
            "--timeout",
            "60s",
            "--address",
            &api,
        ],
        b"",
    );
    assert_eq!(json_stdout(&all)["reset"], "all");
    // A leader-cluster node has nothing to reset; neither is a table and --all.
    let on_leader = armada_with_input(&["reset", "policy", "--address", &leader.api], b"");
    assert_eq!(on_leader.status.code(), Some(5), "{on_leader:?}");
    let both = armada_with_input(&["reset", "policy", "--all", "--address", &api], b"");
    assert_eq!(both.status.code(), Some(2));
    // The follower's members carry its cluster's default name.
    let members = armada_with_input(&["members", "--json", "--address", &api], b"");
    assert_eq!(json_stdout(&members)["cluster"], "follower");

    let follower = followers.node_mut(1);
    let exit = follower.terminate();
    assert!(exit.success(), "{exit}");
    let log = follower.log();
    assert!(
        !log.lines().any(|line| line.contains(" ERROR ")),
        "a clean SIGTERM logs no error:\n{log}"
    );
}
