//! Network namespaces for fault tests: each armada node runs in a namespace of its own, so the
//! test can cut the network between nodes while still talking to every node itself.
//!
//! Topology of one [`Network`] (names carry a per-run tag `armada-t<pid>x<random>`, so parallel
//! runs never collide, and a later run can recognise what a killed run left behind):
//!
//! ```text
//!  root namespace                 <tag>-sw (switch)              <tag>-n<i> (host i)
//!  armada-r<k> 10.231.<k>.254 ── uplink ─ br0 ─ port<i> ──────── eth0 10.231.<k>.<i>
//! ```
//!
//! The bridge lives in a namespace of its own, away from the root namespace's firewall. The
//! subnet 10.231.<k>.0/24 is reserved for these test hosts; `k` is claimed by creating the root
//! side link `armada-r<k>` (creation fails if another run holds it). A partition
//! ([`Network::isolate`]) is an nftables table in the hosts' namespaces dropping, on input,
//! packets between the isolated host and its peers: packets leave the sender normally and vanish
//! in the network, while the test (from 10.231.<k>.254) still reaches every host.
//!
//! Needs root, `ip` (iproute2) and `nft` (nftables); [`available`] explains what is missing.
//! Everything is removed on drop, also when the test panics; processes a killed run left in its
//! namespaces are removed by the next run.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Setting this variable to 1 skips the namespace tests (e.g. on a developer machine without
/// root); CI runs them as root.
pub const SKIP_VARIABLE: &str = "ARMADA_SKIP_NETNS";

const NAME_PREFIX: &str = "armada-t";
const NFT_TABLE: &str = "armada_partition";
/// Port of every node's Raft (QUIC) address: each host has an address of its own.
pub const RAFT_PORT: u16 = 7001;
const STARTUP_DEADLINE: Duration = Duration::from_secs(60);

/// Whether the namespace tests can run here. Returns false (after saying so) only when skipping
/// was asked for with `ARMADA_SKIP_NETNS=1`; otherwise a missing requirement fails the test.
pub fn available() -> bool {
    if std::env::var(SKIP_VARIABLE).as_deref() == Ok("1") {
        eprintln!("SKIPPED: {SKIP_VARIABLE}=1 (this test needs root and network namespaces)");
        return false;
    }
    assert_eq!(
        effective_uid(),
        0,
        "this test creates network namespaces (ip netns) and must run as root; \
         set {SKIP_VARIABLE}=1 to skip it"
    );
    for (tool, package) in [("ip", "iproute2"), ("nft", "nftables")] {
        let found = Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        assert!(
            found,
            "this test needs `{tool}`: apt-get install -y {package} (or set {SKIP_VARIABLE}=1)"
        );
    }
    true
}

fn effective_uid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|id| id.parse().ok())
        .expect("effective uid")
}

/// Runs a command; Err carries its stderr.
fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|error| format!("{program}: {error}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

fn must(program: &str, args: &[&str]) -> String {
    run(program, args).unwrap_or_else(|error| panic!("{error}"))
}

/// A random number from the standard library's hasher seeds (no extra dependency).
fn random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    hasher.finish()
}

/// A set of hosts, each in its own namespace, on one switched /24.
pub struct Network {
    tag: String,
    /// First three octets of the subnet, e.g. "10.231.17".
    prefix: String,
    switch: String,
    hosts: Vec<String>,
    /// Hosts whose namespace holds partition rules.
    partitioned: std::cell::RefCell<Vec<usize>>,
}

impl Network {
    pub fn create(host_count: usize) -> Network {
        remove_stale();
        let tag = format!(
            "{NAME_PREFIX}{}x{:04x}",
            std::process::id(),
            random() & 0xffff
        );
        let mut network = Network {
            switch: format!("{tag}-sw"),
            tag,
            prefix: String::new(),
            hosts: Vec::new(),
            partitioned: Default::default(),
        };
        must("ip", &["netns", "add", &network.switch]);
        must(
            "ip",
            &[
                "-n",
                &network.switch,
                "link",
                "add",
                "br0",
                "type",
                "bridge",
            ],
        );
        network.prefix = network.claim_subnet();
        let up = |namespace: &str, link: &str| {
            must("ip", &["-n", namespace, "link", "set", link, "up"]);
        };
        up(&network.switch, "br0");
        up(&network.switch, "lo");
        for host in 1..=host_count {
            let namespace = format!("{}-n{host}", network.tag);
            must("ip", &["netns", "add", &namespace]);
            network.hosts.push(namespace.clone());
            let port = format!("port{host}");
            must(
                "ip",
                &[
                    "link",
                    "add",
                    "name",
                    &port,
                    "netns",
                    &network.switch,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "eth0",
                    "netns",
                    &namespace,
                ],
            );
            must(
                "ip",
                &["-n", &network.switch, "link", "set", &port, "master", "br0"],
            );
            up(&network.switch, &port);
            let address = format!("{}/24", network.address(host));
            must(
                "ip",
                &["-n", &namespace, "addr", "add", &address, "dev", "eth0"],
            );
            up(&namespace, "eth0");
            up(&namespace, "lo");
        }
        network
    }

    /// Picks a free 10.231.k.0/24 and links the root namespace to the switch with .254 in it.
    fn claim_subnet(&self) -> String {
        let in_use = must("ip", &["-4", "-o", "addr", "show"]) + &must("ip", &["-4", "route"]);
        for attempt in 0..200u64 {
            let octet = (random().wrapping_add(attempt) % 250) + 1;
            let prefix = format!("10.231.{octet}");
            if in_use.contains(&format!("{prefix}.")) {
                continue;
            }
            let root_link = format!("armada-r{octet}");
            // Creating the link is the claim: it fails if another run holds this subnet.
            let created = run(
                "ip",
                &[
                    "link",
                    "add",
                    "name",
                    &root_link,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "uplink",
                    "netns",
                    &self.switch,
                ],
            );
            if created.is_err() {
                continue;
            }
            must(
                "ip",
                &["-n", &self.switch, "link", "set", "uplink", "master", "br0"],
            );
            must("ip", &["-n", &self.switch, "link", "set", "uplink", "up"]);
            must(
                "ip",
                &[
                    "addr",
                    "add",
                    &format!("{prefix}.254/24"),
                    "dev",
                    &root_link,
                ],
            );
            must("ip", &["link", "set", &root_link, "up"]);
            return prefix;
        }
        panic!("no free 10.231.k.0/24 subnet for the test network");
    }

    /// The namespace of host `host` (1-based).
    pub fn namespace(&self, host: usize) -> &str {
        &self.hosts[host - 1]
    }

    /// The IPv4 address of host `host` (1-based).
    pub fn address(&self, host: usize) -> String {
        format!("{}.{host}", self.prefix)
    }

    pub fn host_count(&self) -> usize {
        self.hosts.len()
    }

    /// Cuts host `host` off from every other host (both directions); the test still reaches it.
    pub fn isolate(&self, host: usize) {
        let peers: Vec<String> = (1..=self.hosts.len())
            .filter(|other| *other != host)
            .map(|other| self.address(other))
            .collect();
        self.drop_input_from(host, &peers);
        for other in (1..=self.hosts.len()).filter(|other| *other != host) {
            self.drop_input_from(other, &[self.address(host)]);
        }
    }

    /// Removes every partition rule.
    pub fn heal(&self) {
        for host in self.partitioned.borrow_mut().drain(..) {
            must(
                "ip",
                &[
                    "netns",
                    "exec",
                    &self.hosts[host - 1],
                    "nft",
                    "delete",
                    "table",
                    "inet",
                    NFT_TABLE,
                ],
            );
        }
    }

    fn drop_input_from(&self, host: usize, sources: &[String]) {
        let namespace = &self.hosts[host - 1];
        let nft = |args: &[&str]| {
            let mut full = vec!["netns", "exec", namespace.as_str(), "nft"];
            full.extend_from_slice(args);
            must("ip", &full);
        };
        if !self.partitioned.borrow().contains(&host) {
            nft(&["add", "table", "inet", NFT_TABLE]);
            nft(&[
                "add",
                "chain",
                "inet",
                NFT_TABLE,
                "input",
                "{ type filter hook input priority 0; policy accept; }",
            ]);
            self.partitioned.borrow_mut().push(host);
        }
        let set = format!("{{ {} }}", sources.join(", "));
        nft(&[
            "add", "rule", "inet", NFT_TABLE, "input", "ip", "saddr", &set, "drop",
        ]);
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for namespace in self.hosts.iter().chain([&self.switch]) {
            remove_namespace(namespace);
        }
    }
}

/// Kills whatever still runs in `namespace` and deletes it (its links go with it).
fn remove_namespace(namespace: &str) {
    if let Ok(pids) = run("ip", &["netns", "pids", namespace]) {
        for pid in pids.split_whitespace() {
            let _ = run("kill", &["-9", pid]);
        }
    }
    let _ = run("ip", &["netns", "delete", namespace]);
}

/// Removes namespaces left by runs whose process is gone (a test killed by a timeout never ran
/// its drop guards). The creating process id is part of each name.
fn remove_stale() {
    let Ok(list) = run("ip", &["netns", "list"]) else {
        return;
    };
    for namespace in list
        .lines()
        .filter_map(|line| line.split_whitespace().next())
    {
        let Some(pid) = namespace
            .strip_prefix(NAME_PREFIX)
            .and_then(|rest| rest.split('x').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            remove_namespace(namespace);
        }
    }
}

/// An armada leader node running in a host namespace of a [`Network`].
pub struct Node {
    pub id: u64,
    namespace: String,
    address: String,
    members: String,
    pub data_dir: PathBuf,
    child: Option<Child>,
    pub api: String,
}

impl Node {
    /// Starts node `id` on host `id` of `network`, a member of an `initial_members`-node
    /// cluster; not waited for (see [`Node::wait_serving`]).
    pub fn spawn(network: &Network, id: u64, data_dir: &Path) -> Node {
        std::fs::create_dir_all(data_dir).expect("data dir");
        let members = (1..=network.host_count())
            .map(|host| format!("{host}={}:{RAFT_PORT}", network.address(host)))
            .collect::<Vec<_>>()
            .join(",");
        let mut node = Node {
            id,
            namespace: network.namespace(id as usize).to_string(),
            address: network.address(id as usize),
            members,
            data_dir: data_dir.to_path_buf(),
            child: None,
            api: String::new(),
        };
        node.launch();
        node
    }

    fn launch(&mut self) {
        let _ = std::fs::remove_file(self.data_dir.join("listen.json"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir.join("armada.log"))
            .expect("log file");
        let http = |port: u16| format!("http://{}:{port}", self.address);
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.namespace]);
        // If the test process dies without running its guards, the node dies with it.
        if Command::new("setpriv")
            .arg("--help")
            .stdout(Stdio::null())
            .status()
            .is_ok()
        {
            command.args(["setpriv", "--pdeathsig", "KILL"]);
        }
        let child = command
            .arg(env!("CARGO_BIN_EXE_armada"))
            .arg("leader")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--raft.node-id", &self.id.to_string()])
            .args(["--raft.address", &format!("{}:{RAFT_PORT}", self.address)])
            .args(["--raft.initial-members", &self.members])
            .args(["--api.address", &http(0)])
            .args(["--replication.address", &http(0)])
            .args(["--rest.address", &http(0)])
            .args(["--log-level", "info"])
            .env_remove("RUST_LOG")
            .current_dir(&self.data_dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn armada in its namespace");
        self.child = Some(child);
    }

    /// Waits until the node serves (its `listen.json` appears) and learns its API address.
    pub fn wait_serving(&mut self) {
        let listen_file = self.data_dir.join("listen.json");
        let deadline = Instant::now() + STARTUP_DEADLINE;
        loop {
            if let Ok(bytes) = std::fs::read(&listen_file) {
                let json: serde_json::Value = serde_json::from_slice(&bytes).expect("listen.json");
                self.api = json["api"].as_str().expect("api").to_string();
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|child| child.try_wait().ok().flatten())
            {
                panic!(
                    "node {} exited during start-up ({status}):\n{}",
                    self.id,
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "node {} did not start within {STARTUP_DEADLINE:?}:\n{}",
                self.id,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("armada.log")).unwrap_or_default()
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}
