//! Configuration and logs of a real node: refused values name their source and stop start-up
//! before anything is written; a config file is reported, checked for keys given twice and
//! for a second file beside it; MemberList advertises what the node listens on; plain logs
//! carry no colour codes and a clean SIGTERM logs no error.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use armada_proto::regatta::v1::{ListTablesRequest, StatusRequest};
use common::Armada;

/// `armada leader` with loopback addresses and `args`, run to its end (start-up must fail).
fn leader_fails(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_armada"))
        .arg("leader")
        .args(["--api.address", "http://127.0.0.1:0"])
        .args(["--replication.address", "http://127.0.0.1:0"])
        .args(["--rest.address", "http://127.0.0.1:0"])
        .args(args)
        .envs(env.iter().copied())
        // No config file from the machine's search path leaks in.
        .env("HOME", cwd)
        .current_dir(cwd)
        .output()
        .expect("run armada");
    assert!(
        !output.status.success(),
        "start-up should fail: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn unknown_log_levels_are_refused_naming_the_flag_or_variable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let data = data.to_str().expect("utf-8");
    let raft = ["--raft.address", "127.0.0.1:0", "--data-dir", data];
    let mut args = raft.to_vec();
    args.extend(["--log-level", "chatty"]);
    let output = leader_fails(dir.path(), &args, &[]);
    let text = stderr(&output);
    assert!(
        text.contains("invalid configuration key `log-level` in flag --log-level")
            && text.contains("chatty"),
        "{text}"
    );
    assert_eq!(output.status.code(), Some(2), "a usage error: {text}");
    let output = leader_fails(dir.path(), &raft, &[("LOG_LEVEL", "verbose")]);
    let text = stderr(&output);
    assert!(
        text.contains("`log-level` in environment variable LOG_LEVEL"),
        "{text}"
    );
    assert!(!Path::new(data).exists(), "nothing is created");
}

#[test]
fn semantic_errors_name_their_source_and_nothing_is_created() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let data = data.to_str().expect("utf-8");
    let output = leader_fails(
        dir.path(),
        &["--raft.address", "notanaddress", "--data-dir", data],
        &[],
    );
    let text = stderr(&output);
    assert!(
        text.starts_with("error: invalid configuration key `raft.address` in flag --raft.address:"),
        "{text}"
    );
    let output = leader_fails(
        dir.path(),
        &["--raft.address", "127.0.0.1:0", "--data-dir", data],
        &[("TABLES_NAMES", "config,bad name")],
    );
    let text = stderr(&output);
    assert!(
        text.contains("`tables.names` in environment variable TABLES_NAMES")
            && text.contains("bad name"),
        "{text}"
    );
    let config = dir.path().join("node.yaml");
    std::fs::write(&config, "raft:\n  address: 127.0.0.1:0\n  rtt: 0\n").expect("write");
    let output = leader_fails(
        dir.path(),
        &[
            "--config",
            config.to_str().expect("utf-8"),
            "--data-dir",
            data,
        ],
        &[],
    );
    let text = stderr(&output);
    assert!(
        text.contains(&format!("`raft.rtt` in YAML file {}", config.display())),
        "{text}"
    );
    assert!(
        !Path::new(data).exists(),
        "no data directory or Raft log is created for a refused configuration"
    );
}

#[test]
fn keys_given_twice_and_two_config_files_are_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = dir.path().join("config.yaml");
    std::fs::write(
        &yaml,
        "raft:\n  address: 127.0.0.1:0\napi:\n  address: http://127.0.0.1:0\n  address: http://127.0.0.1:1\n",
    )
    .expect("write");
    let output = leader_fails(
        dir.path(),
        &["--config", yaml.to_str().expect("utf-8")],
        &[],
    );
    let text = stderr(&output);
    assert!(
        text.contains(&yaml.display().to_string()) && text.contains("`api.address` is given twice"),
        "{text}"
    );
    // Found by the search (the working directory), beside another config file.
    std::fs::write(
        dir.path().join("config.toml"),
        "[raft]\naddress = \"127.0.0.1:0\"\n",
    )
    .expect("write");
    let output = leader_fails(dir.path(), &[], &[]);
    let text = stderr(&output);
    assert!(
        text.contains("two config files") && text.contains("config.toml"),
        "{text}"
    );
}

/// A TCP port that was free a moment ago (the node must be told it before it starts).
fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("address")
        .port()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_reports_its_config_file_advertises_its_address_and_stops_without_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_tcp_port();
    let config = dir.path().join("node.yaml");
    std::fs::write(
        &config,
        format!(
            "api:\n  address: http://127.0.0.1:{port}\ncluster:\n  name: eu-west\ntables:\n  names:\n    - config\n    - flags\n"
        ),
    )
    .expect("write");
    let config_flag = config.to_str().expect("utf-8");
    let api_flag = format!("http://127.0.0.1:{port}");
    let mut node = Armada::start_in(
        dir.path(),
        &["--config", config_flag, "--api.address", &api_flag],
    );

    let members = common::members(&node).await;
    assert_eq!(members.cluster, "eu-west");
    assert_eq!(
        members.members[0].client_ur_ls,
        std::slice::from_ref(&api_flag)
    );
    let status = node
        .cluster()
        .await
        .status(StatusRequest { config: true })
        .await
        .expect("status")
        .into_inner();
    assert!(
        status.info.ends_with(", cluster eu-west"),
        "{}",
        status.info
    );
    let tables = node
        .tables()
        .await
        .list(ListTablesRequest {})
        .await
        .expect("tables")
        .into_inner();
    let names: Vec<&str> = tables.tables.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["config", "flags"], "tables.names as a YAML list");

    let log = node.log();
    assert!(
        log.contains("configuration file loaded") && log.contains(config_flag),
        "{log}"
    );
    assert!(
        !log.contains('\u{1b}'),
        "no ANSI codes in a log file: {log}"
    );
    let exit = node.terminate();
    assert!(exit.success(), "SIGTERM is a clean exit: {exit}");
    let log = node.log();
    assert!(log.contains("stopped"), "{log}");
    assert!(
        !log.lines().any(|line| line.contains(" ERROR ")),
        "a clean SIGTERM logs no error:\n{log}"
    );
}
