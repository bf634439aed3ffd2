//! Black-box harness: runs the real `armada` binary on loopback with ports chosen by the OS,
//! learns the bound addresses from `<data-dir>/listen.json`, and talks gRPC to it.
#![allow(dead_code)]

pub mod proxy;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use armada_proto::regatta::v1::cluster_client::ClusterClient;
use armada_proto::regatta::v1::kv_client::KvClient;
use armada_proto::regatta::v1::tables_client::TablesClient;
use armada_proto::regatta::v1::{
    CreateTableRequest, MemberListRequest, MemberListResponse, PutRequest, RangeRequest,
    StatusRequest, StatusResponse,
};
use tonic::transport::Channel;

pub const STARTUP_DEADLINE: Duration = Duration::from_secs(60);

pub struct Armada {
    child: Option<Child>,
    pub data_dir: PathBuf,
    pub api: String,
    pub replication: String,
    pub rest: String,
    extra_args: Vec<String>,
    node_args: Vec<String>,
    /// `leader` or `follower`.
    subcommand: &'static str,
    _temp: Option<tempfile::TempDir>,
}

impl Armada {
    /// Starts a single-node leader in a fresh temporary data directory.
    pub fn start() -> Armada {
        let temp = tempfile::tempdir().expect("tempdir");
        let data_dir = temp.path().to_path_buf();
        let mut armada = Armada::start_in(&data_dir, &[]);
        armada._temp = Some(temp);
        armada
    }

    /// Starts a single-node leader on an existing data directory with extra flags.
    pub fn start_in(data_dir: &Path, extra_args: &[&str]) -> Armada {
        let mut armada = Armada {
            child: None,
            data_dir: data_dir.to_path_buf(),
            api: String::new(),
            replication: String::new(),
            rest: String::new(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            node_args: ["--raft.node-id", "1", "--raft.address", "127.0.0.1:0"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            subcommand: "leader",
            _temp: None,
        };
        armada.spawn();
        armada
    }

    /// A node of a multi-node cluster; not waited for (see [`Armada::wait_serving`]): a node
    /// only serves once its cluster has elected a catalog leader.
    pub fn spawn_member(
        data_dir: &Path,
        node_id: u64,
        raft_address: &str,
        members: &str,
        extra_args: &[&str],
    ) -> Armada {
        Armada::member(
            data_dir,
            node_id,
            raft_address,
            members,
            extra_args,
            "leader",
        )
    }

    fn member(
        data_dir: &Path,
        node_id: u64,
        raft_address: &str,
        members: &str,
        extra_args: &[&str],
        subcommand: &'static str,
    ) -> Armada {
        std::fs::create_dir_all(data_dir).expect("data dir");
        let mut armada = Armada {
            child: None,
            data_dir: data_dir.to_path_buf(),
            api: String::new(),
            replication: String::new(),
            rest: String::new(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            node_args: vec![
                "--raft.node-id".into(),
                node_id.to_string(),
                "--raft.address".into(),
                raft_address.into(),
                "--raft.initial-members".into(),
                members.into(),
            ],
            subcommand,
            _temp: None,
        };
        armada.launch();
        armada
    }

    /// A node of a follower cluster replicating from `leader_replication`; not waited for.
    pub fn spawn_follower_member(
        data_dir: &Path,
        node_id: u64,
        raft_address: &str,
        members: &str,
        leader_replication: &str,
        extra_args: &[&str],
    ) -> Armada {
        let mut args: Vec<&str> = vec!["--replication.leader-address", leader_replication];
        args.extend_from_slice(extra_args);
        Armada::member(data_dir, node_id, raft_address, members, &args, "follower")
    }

    fn spawn(&mut self) {
        self.launch();
        self.wait_serving();
    }

    fn launch(&mut self) {
        let _ = std::fs::remove_file(self.data_dir.join("listen.json"));
        let log = std::fs::File::create(self.data_dir.join("armada.log")).expect("log file");
        // Loopback addresses on ports chosen by the OS, unless the test gives its own.
        let default_addresses: Vec<&str> = [
            ["--api.address", "http://127.0.0.1:0"],
            ["--replication.address", "http://127.0.0.1:0"],
            ["--rest.address", "http://127.0.0.1:0"],
        ]
        .into_iter()
        .filter(|[flag, _]| !self.extra_args.iter().any(|arg| arg == flag))
        .flatten()
        .collect();
        let child = Command::new(env!("CARGO_BIN_EXE_armada"))
            .arg(self.subcommand)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.node_args)
            .args(default_addresses)
            .args(["--log-level", "info"])
            .args(&self.extra_args)
            .env_remove("RUST_LOG")
            .envs(
                std::env::var("ARMADA_TEST_LOG")
                    .ok()
                    .map(|filter| ("RUST_LOG", filter)),
            )
            .current_dir(&self.data_dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn armada");
        self.child = Some(child);
    }

    /// Waits until the node serves (its `listen.json` appears) and learns its addresses.
    pub fn wait_serving(&mut self) {
        let listen_file = self.data_dir.join("listen.json");
        let deadline = Instant::now() + STARTUP_DEADLINE;
        loop {
            if let Ok(bytes) = std::fs::read(&listen_file) {
                let json: serde_json::Value = serde_json::from_slice(&bytes).expect("listen.json");
                self.api = json["api"].as_str().expect("api").to_string();
                self.replication = json["replication"]
                    .as_str()
                    .expect("replication")
                    .to_string();
                self.rest = json["rest"].as_str().expect("rest").to_string();
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("armada exited during start-up ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "armada did not start within {STARTUP_DEADLINE:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("armada.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// kill -9: no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("armada did not stop on SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop it first");
        self.spawn();
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.api.clone())
            .expect("uri")
            .connect()
            .await
            .expect("connect")
    }

    pub async fn kv(&self) -> KvClient<Channel> {
        KvClient::new(self.channel().await)
            .max_decoding_message_size(64 * 1024 * 1024)
            .max_encoding_message_size(64 * 1024 * 1024)
    }

    pub async fn tables(&self) -> TablesClient<Channel> {
        TablesClient::new(self.channel().await)
    }

    pub async fn cluster(&self) -> ClusterClient<Channel> {
        ClusterClient::new(self.channel().await)
    }

    pub async fn create_table(&self, name: &str) -> String {
        self.tables()
            .await
            .create(CreateTableRequest {
                name: name.into(),
                config: None,
            })
            .await
            .expect("create table")
            .into_inner()
            .id
    }
}

impl Drop for Armada {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// With `ARMADA_KEEP_TEST_DIRS` set, a cluster's data directories (and node logs) are kept and
/// their location printed: for investigating a failure.
fn keep_dirs(temp: &mut Option<tempfile::TempDir>) {
    if std::env::var_os("ARMADA_KEEP_TEST_DIRS").is_some()
        && let Some(temp) = temp.take()
    {
        eprintln!("test data kept in {}", temp.keep().display());
    }
}

/// The node's `Cluster.Status` (without its configuration), `None` while it does not answer.
pub async fn status(node: &Armada) -> Option<StatusResponse> {
    let mut cluster = node.cluster().await;
    cluster
        .status(StatusRequest { config: false })
        .await
        .ok()
        .map(|response| response.into_inner())
}

/// The node's `Cluster.MemberList`.
pub async fn members(node: &Armada) -> MemberListResponse {
    node.cluster()
        .await
        .member_list(MemberListRequest {})
        .await
        .expect("members")
        .into_inner()
}

/// `bytes` bytes that do not compress (xorshift from `seed`), reproducible from the seed: so
/// that stored sizes are not smaller than what was written.
pub fn incompressible(seed: u64, bytes: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..bytes)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

pub fn put(table: &str, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> PutRequest {
    PutRequest {
        table: table.as_bytes().to_vec().into(),
        key: key.into().into(),
        value: value.into().into(),
        prev_kv: false,
    }
}

pub fn get(table: &str, key: impl Into<Vec<u8>>) -> RangeRequest {
    RangeRequest {
        table: table.as_bytes().to_vec().into(),
        key: key.into().into(),
        ..Default::default()
    }
}

pub fn range(table: &str, key: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) -> RangeRequest {
    RangeRequest {
        table: table.as_bytes().to_vec().into(),
        key: key.into().into(),
        range_end: end.into().into(),
        ..Default::default()
    }
}

/// A plain HTTP/1.1 GET on loopback (no client library needed): (status code, body).
pub fn http_get(base: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let authority = base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(authority).expect("connect rest");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("status line");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Free UDP ports on loopback for the cluster transport. Nodes must know each other's addresses
/// before they start, so ports are reserved by binding and released just before use.
pub fn free_udp_ports(count: usize) -> Vec<u16> {
    let sockets: Vec<std::net::UdpSocket> = (0..count)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").expect("bind udp"))
        .collect();
    sockets
        .iter()
        .map(|socket| socket.local_addr().expect("addr").port())
        .collect()
}

/// A cluster of real processes on loopback.
pub struct Cluster {
    pub nodes: Vec<Armada>,
    temp: Option<tempfile::TempDir>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill9();
        }
        keep_dirs(&mut self.temp);
    }
}

impl Cluster {
    pub fn start(size: usize, extra_args: &[&str]) -> Cluster {
        Cluster::start_as(size, None, extra_args)
    }

    /// A follower cluster of `size` nodes replicating from `leader_replication`.
    pub fn start_follower(size: usize, leader_replication: &str, extra_args: &[&str]) -> Cluster {
        Cluster::start_as(size, Some(leader_replication), extra_args)
    }

    fn start_as(size: usize, leader_replication: Option<&str>, extra_args: &[&str]) -> Cluster {
        let temp = tempfile::tempdir().expect("tempdir");
        let ports = free_udp_ports(size);
        let members = ports
            .iter()
            .enumerate()
            .map(|(i, port)| format!("{}=127.0.0.1:{port}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes: Vec<Armada> = ports
            .iter()
            .enumerate()
            .map(|(i, port)| {
                let data_dir = temp.path().join(format!("node{}", i + 1));
                let address = format!("127.0.0.1:{port}");
                match leader_replication {
                    None => Armada::spawn_member(
                        &data_dir,
                        i as u64 + 1,
                        &address,
                        &members,
                        extra_args,
                    ),
                    Some(leader) => Armada::spawn_follower_member(
                        &data_dir,
                        i as u64 + 1,
                        &address,
                        &members,
                        leader,
                        extra_args,
                    ),
                }
            })
            .collect();
        for node in &mut nodes {
            node.wait_serving();
        }
        Cluster {
            nodes,
            temp: Some(temp),
        }
    }

    /// Node by id (1-based).
    pub fn node(&self, id: u64) -> &Armada {
        &self.nodes[id as usize - 1]
    }

    pub fn node_mut(&mut self, id: u64) -> &mut Armada {
        &mut self.nodes[id as usize - 1]
    }
}
