//! Server configuration: layered (defaults < config file < environment < flags) with figment.
//!
//! Every option has one dotted key (`api.address`, `raft.node-id`, …). The same key is a flag
//! (`--api.address`), a nested key in `config.{yaml,yml,toml,json}`, and an environment
//! variable (upper-cased, `.` and `-` as `_`: `API_ADDRESS`).
//!
//! Every refusal names the key and where its value came from, whether figment found it while
//! parsing (unknown keys, wrong types) or [`ServerConfig::check`] found it afterwards (ranges,
//! combinations, addresses, names): `check` returns a [`Problem`] against one key and [`load`]
//! asks figment which provider gave that key (`flag --raft.rtt`, `environment variable
//! RAFT_RTT`, `YAML file /etc/armada/config.yaml`, or the default). All of this happens before
//! the node touches its data directory, so a refused configuration leaves nothing behind.
//!
//! A config file is either given (`--config`) or the only `config.*` of the first search
//! directory that has one; two there are an error, as is a key given twice in a YAML or JSON
//! file (figment's readers would keep one silently; [`UniqueKeys`] checks the text first).
//!
//! Some defaults depend on other keys and are filled in after layering
//! ([`ServerConfig::fill_derived_defaults`]): the advertised client URL follows `api.address`,
//! the cluster name follows the role.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use figment::providers::{Format, Json, Serialized, Toml, Yaml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::{Deserialize, Serialize};

use crate::listener::{AllowedPeer, ClientAuth, ClientRoots, ListenerTls};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Leader or follower cluster: chosen by the subcommand, not a configuration key.
    #[serde(skip)]
    pub role: NodeRole,
    /// Root of everything the node persists.
    pub data_dir: PathBuf,
    pub log_level: String,
    /// `text` or `json`.
    pub log_format: String,
    pub api: ApiConfig,
    pub rest: RestConfig,
    pub raft: RaftSettings,
    pub replication: ReplicationConfig,
    pub tables: TablesConfig,
    pub maintenance: MaintenanceConfig,
    pub cluster: ClusterConfig,
    /// The config file the values were read from, if any (for the start-up log).
    #[serde(skip)]
    pub config_file: Option<PathBuf>,
    /// Settings that are valid but probably not what the operator wants, logged at start-up
    /// (configuration is resolved before logging is set up).
    #[serde(skip)]
    pub warnings: Vec<String>,
}

/// The cluster this node belongs to, as `MemberList` and `Status` name it.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Empty: `leader` on a leader-cluster node, `follower` on a follower-cluster node.
    pub name: String,
}

/// Longest `cluster.name`: it is shown in tables and sent in every `MemberList` answer.
pub const MAX_CLUSTER_NAME_BYTES: usize = 255;

/// The values of `log-level` (any case, as Regatta's `INFO`); anything else would be read by
/// the log filter as the name of a module and silence every log line.
pub const LOG_LEVELS: &[&str] = &["error", "warn", "info", "debug", "trace"];

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct ApiConfig {
    pub address: String,
    pub advertise_address: String,
    /// TLS (`https://`, `unixs://` addresses): this server's certificate chain and key (PEM),
    /// re-read when the files change.
    pub cert_filename: String,
    pub key_filename: String,
    /// PEM CA verifying client certificates; when set, clients must present one.
    pub ca_filename: String,
    /// Clients must present a certificate (verified against `ca-filename`, else the system's
    /// trust store).
    pub client_cert_auth: bool,
    /// A verified client certificate must have this subject CN.
    pub allowed_cn: String,
    /// A verified client certificate must be valid for this host name or IP.
    pub allowed_hostname: String,
}

impl ApiConfig {
    /// The advertised client URL once the API listens on `bound_url`: an advertised port 0
    /// (the listener's port chosen by the OS) becomes the port actually bound.
    pub fn advertise_address_bound(&self, bound_url: &str) -> String {
        let base = self.advertise_address.strip_suffix(":0");
        let port = bound_url
            .rsplit_once(':')
            .map(|(_, port)| port)
            .filter(|port| port.parse::<u16>().is_ok());
        match (base, port) {
            (Some(base), Some(port)) => format!("{base}:{port}"),
            _ => self.advertise_address.clone(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct RestConfig {
    pub address: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct RaftSettings {
    pub node_id: u64,
    /// This node's intra-cluster address, `host:port`.
    pub address: String,
    /// `1=host:port,2=host:port,…`; the same on every node.
    pub initial_members: String,
    /// One logical tick in milliseconds.
    pub rtt: u64,
    pub heartbeat_rtt: u64,
    pub election_rtt: u64,
    pub snapshot_entries: u64,
    pub compaction_overhead: u64,
    /// Mutual TLS of the cluster transport: the cluster CA, this node's certificate and key
    /// (PEM). All three or none; with none the transport is encrypted with a generated
    /// self-signed identity and peers are not authenticated (development).
    pub ca_filename: String,
    pub cert_filename: String,
    pub key_filename: String,
}

/// Which kind of cluster a node belongs to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NodeRole {
    #[default]
    Leader,
    Follower,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct ReplicationConfig {
    /// Leader: where the replication API listens.
    pub address: String,
    /// Leader: the bearer token followers must present; follower: the token it presents.
    pub token: String,
    /// Follower: the leader cluster's replication address(es), URLs, comma separated.
    pub leader_address: String,
    /// Leader: PEM CA verifying the certificates follower clusters present (they must present
    /// one). Follower: PEM CA that signed the leader's certificate (`https://`); default the
    /// system's trust store.
    pub ca_filename: String,
    /// Leader: the replication server's certificate chain and key (PEM, re-read when they
    /// change). Follower: the client certificate and key presented to the leader cluster.
    pub cert_filename: String,
    pub key_filename: String,
    /// Leader: followers must present a certificate (verified against `ca-filename`, else the
    /// system's trust store).
    pub client_cert_auth: bool,
    /// Leader: a follower's verified certificate must have this subject CN.
    pub allowed_cn: String,
    /// Leader: a follower's verified certificate must be valid for this host name or IP.
    pub allowed_hostname: String,
    /// Follower: the name the leader's certificate must be valid for, instead of the host of
    /// `leader-address` (also sent as SNI).
    pub server_name: String,
    /// Follower: how often the table set is compared with the leader's (e.g. `5s`, `500ms`).
    pub reconcile_interval: String,
    /// Follower: snapshot bootstraps running at once on one node.
    pub max_recovery_in_flight: u64,
    /// Recent applied entries kept in memory per table for follower streams (0 = none);
    /// also bounded by `replication::log_cache::LOG_CACHE_BYTES_PER_TABLE`.
    pub log_cache_size: usize,
}

#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct TablesConfig {
    /// Comma-separated tables created at start-up if missing (a list in a config file).
    #[serde(deserialize_with = "names_or_list")]
    pub names: String,
    pub token: String,
}

#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct MaintenanceConfig {
    pub token: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            role: NodeRole::Leader,
            data_dir: PathBuf::from("armada-data"),
            log_level: "info".into(),
            log_format: "text".into(),
            api: ApiConfig::default(),
            rest: RestConfig::default(),
            raft: RaftSettings::default(),
            replication: ReplicationConfig::default(),
            tables: TablesConfig::default(),
            maintenance: MaintenanceConfig::default(),
            cluster: ClusterConfig::default(),
            config_file: None,
            warnings: Vec::new(),
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            address: "http://0.0.0.0:8443".into(),
            // Empty: derived from `address` (see `ServerConfig::fill_derived_defaults`).
            advertise_address: String::new(),
            cert_filename: String::new(),
            key_filename: String::new(),
            ca_filename: String::new(),
            client_cert_auth: false,
            allowed_cn: String::new(),
            allowed_hostname: String::new(),
        }
    }
}

impl Default for RestConfig {
    fn default() -> Self {
        RestConfig {
            address: "http://127.0.0.1:8079".into(),
        }
    }
}

impl Default for RaftSettings {
    fn default() -> Self {
        RaftSettings {
            node_id: 1,
            address: String::new(),
            initial_members: String::new(),
            rtt: 50,
            heartbeat_rtt: 2,
            election_rtt: 20,
            snapshot_entries: 10_000,
            compaction_overhead: 5_000,
            ca_filename: String::new(),
            cert_filename: String::new(),
            key_filename: String::new(),
        }
    }
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            address: "http://0.0.0.0:8444".into(),
            token: String::new(),
            leader_address: String::new(),
            ca_filename: String::new(),
            cert_filename: String::new(),
            key_filename: String::new(),
            client_cert_auth: false,
            allowed_cn: String::new(),
            allowed_hostname: String::new(),
            server_name: String::new(),
            reconcile_interval: "5s".into(),
            max_recovery_in_flight: 1,
            log_cache_size: 4096,
        }
    }
}

/// A value that parsed but cannot be used: the key an operator has to change and why.
/// [`load`] adds where the key's value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub reason: String,
}

fn problem(key: impl Into<String>, reason: impl std::fmt::Display) -> Problem {
    Problem {
        key: key.into(),
        reason: reason.to_string(),
    }
}

impl Problem {
    /// The message, naming the key and `source`, in the form figment's own errors have.
    pub fn describe(&self, source: &str) -> String {
        format!(
            "invalid configuration key `{}` in {source}: {}",
            self.key, self.reason
        )
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            formatter,
            "invalid configuration key `{}`: {}",
            self.key, self.reason
        )
    }
}

impl std::error::Error for Problem {}

/// `host:port` with a numeric port (an IPv6 host in brackets), as the cluster transport dials.
fn check_host_port(key: &str, address: &str) -> Result<(), Problem> {
    if address.is_empty() {
        return Err(problem(key, "must be set (host:port)"));
    }
    let valid = address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !valid {
        return Err(problem(
            key,
            format!("`{address}` is not host:port (e.g. 10.0.0.1:5012)"),
        ));
    }
    Ok(())
}

/// `tables.names` as a comma-separated string (flag, environment) or a list (config file).
fn names_or_list<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Names {
        Text(String),
        List(Vec<String>),
    }
    Ok(match Names::deserialize(deserializer)? {
        Names::Text(text) => text,
        Names::List(names) => names.join(","),
    })
}

impl TablesConfig {
    /// The tables to create at start-up, in the order given.
    pub fn names(&self) -> Vec<String> {
        self.names
            .split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .map(str::to_string)
            .collect()
    }
}

/// The client URL of a node listening on `api_address`, and a warning when that is a
/// wildcard address, which no client can dial.
fn advertise_address_of(api_address: &str) -> (String, Option<String>) {
    use crate::address::ListenAddress;
    let Ok(ListenAddress::Tcp { address, tls }) = ListenAddress::parse(api_address) else {
        // A Unix socket is dialled by its path; a bad address is reported by `check`.
        return (api_address.to_string(), None);
    };
    let scheme = if tls { "https" } else { "http" };
    let (host, port) = address.rsplit_once(':').unwrap_or((address.as_str(), ""));
    if matches!(host, "" | "0.0.0.0" | "[::]" | "::") {
        let advertised = format!("{scheme}://127.0.0.1:{port}");
        let warning = format!(
            "`api.address` {api_address} is a wildcard address: MemberList advertises {advertised}, which only this host can dial; set `api.advertise-address`"
        );
        return (advertised, Some(warning));
    }
    (format!("{scheme}://{address}"), None)
}

/// Parses a duration such as `5s`, `500ms`, `1m`, `2h` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration such as 5s or 500ms"))?;
    let seconds = match unit {
        "" | "s" => number,
        "ms" => number / 1000.0,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return Err(format!("`{text}` has an unknown unit (use ms, s, m or h)")),
    };
    if !seconds.is_finite() || seconds <= 0.0 {
        return Err(format!("`{text}` must be a positive duration"));
    }
    Ok(std::time::Duration::from_secs_f64(seconds))
}

/// The schemes a follower may dial the leader cluster with.
const LEADER_SCHEMES: &[&str] = &["http://", "https://", "unix://", "unixs://"];

/// The TLS keys of one gRPC listener (`api.*`, or `replication.*` on a leader node).
struct ListenerTlsKeys<'a> {
    prefix: &'static str,
    address: &'a str,
    cert_filename: &'a str,
    key_filename: &'a str,
    ca_filename: &'a str,
    client_cert_auth: bool,
    allowed_cn: &'a str,
    allowed_hostname: &'a str,
}

impl ListenerTlsKeys<'_> {
    fn is_tls_address(&self) -> bool {
        self.address.starts_with("https://") || self.address.starts_with("unixs://")
    }

    fn key(&self, name: &str) -> String {
        format!("{}.{name}", self.prefix)
    }

    /// Every rule on the keys of one listener: the client-certificate settings must be
    /// consistent among themselves, then with the address's scheme.
    fn check(&self) -> Result<(), Problem> {
        self.check_client_authentication()?;
        self.check_against_address()
    }

    /// Certificate and key come together, and at most one client-identity rule is set, only
    /// where client certificates are asked for.
    fn check_client_authentication(&self) -> Result<(), Problem> {
        let prefix = self.prefix;
        let key = |name: &str| self.key(name);
        if self.cert_filename.is_empty() != self.key_filename.is_empty() {
            return Err(problem(
                key(if self.cert_filename.is_empty() {
                    "cert-filename"
                } else {
                    "key-filename"
                }),
                format!(
                    "`{prefix}.cert-filename` and `{prefix}.key-filename` must be set together"
                ),
            ));
        }
        if !self.allowed_cn.is_empty() && !self.allowed_hostname.is_empty() {
            return Err(problem(
                key("allowed-hostname"),
                format!(
                    "`{prefix}.allowed-cn` and `{prefix}.allowed-hostname` are mutually exclusive; set one"
                ),
            ));
        }
        let allowed_key = match (self.allowed_cn.is_empty(), self.allowed_hostname.is_empty()) {
            (false, _) => Some("allowed-cn"),
            (_, false) => Some("allowed-hostname"),
            _ => None,
        };
        if let Some(name) = allowed_key
            && self.ca_filename.is_empty()
            && !self.client_cert_auth
        {
            return Err(problem(
                key(name),
                format!(
                    "it checks client certificates, which are only asked for with `{prefix}.ca-filename` or `{prefix}.client-cert-auth`"
                ),
            ));
        }
        if !self.allowed_hostname.is_empty()
            && rustls::pki_types::ServerName::try_from(self.allowed_hostname).is_err()
        {
            return Err(problem(
                key("allowed-hostname"),
                format!(
                    "`{}` is not a DNS name or IP address",
                    self.allowed_hostname
                ),
            ));
        }
        Ok(())
    }

    /// A TLS address needs a certificate; a plaintext one takes no TLS key at all.
    fn check_against_address(&self) -> Result<(), Problem> {
        let prefix = self.prefix;
        let key = |name: &str| self.key(name);
        if self.is_tls_address() {
            if self.cert_filename.is_empty() {
                return Err(problem(
                    key("cert-filename"),
                    format!(
                        "`{prefix}.address` {} serves TLS and needs `{prefix}.cert-filename` and `{prefix}.key-filename`",
                        self.address
                    ),
                ));
            }
            return Ok(());
        }
        let set = [
            ("cert-filename", !self.cert_filename.is_empty()),
            ("ca-filename", !self.ca_filename.is_empty()),
            ("client-cert-auth", self.client_cert_auth),
            ("allowed-cn", !self.allowed_cn.is_empty()),
            ("allowed-hostname", !self.allowed_hostname.is_empty()),
        ];
        if let Some((name, _)) = set.iter().find(|(_, set)| *set) {
            return Err(problem(
                key(name),
                format!(
                    "it applies to TLS, but `{prefix}.address` {} is plaintext (use https:// or unixs://)",
                    self.address
                ),
            ));
        }
        Ok(())
    }

    /// The listener's TLS settings (after [`ListenerTlsKeys::check`]); `None` for plaintext.
    fn listener_tls(&self) -> Option<ListenerTls> {
        if !self.is_tls_address() || self.cert_filename.is_empty() {
            return None;
        }
        let allowed = match (self.allowed_cn.is_empty(), self.allowed_hostname.is_empty()) {
            (false, _) => Some(AllowedPeer::CommonName(self.allowed_cn.to_string())),
            (_, false) => Some(AllowedPeer::Hostname(self.allowed_hostname.to_string())),
            _ => None,
        };
        let client_auth = match (self.ca_filename.is_empty(), self.client_cert_auth) {
            (false, _) => ClientAuth::Required {
                roots: ClientRoots::File(PathBuf::from(self.ca_filename)),
                allowed,
            },
            (true, true) => ClientAuth::Required {
                roots: ClientRoots::System,
                allowed,
            },
            (true, false) => ClientAuth::None,
        };
        Some(ListenerTls {
            prefix: self.prefix,
            cert_file: PathBuf::from(self.cert_filename),
            key_file: PathBuf::from(self.key_filename),
            client_auth,
        })
    }
}

/// Every dotted key, for the environment mapping and for `Status` (flat config map).
pub const KEYS: &[&str] = &[
    "data-dir",
    "log-level",
    "log-format",
    "api.address",
    "api.advertise-address",
    "api.cert-filename",
    "api.key-filename",
    "api.ca-filename",
    "api.client-cert-auth",
    "api.allowed-cn",
    "api.allowed-hostname",
    "rest.address",
    "raft.node-id",
    "raft.address",
    "raft.initial-members",
    "raft.rtt",
    "raft.heartbeat-rtt",
    "raft.election-rtt",
    "raft.snapshot-entries",
    "raft.compaction-overhead",
    "raft.ca-filename",
    "raft.cert-filename",
    "raft.key-filename",
    "replication.address",
    "replication.token",
    "replication.leader-address",
    "replication.ca-filename",
    "replication.cert-filename",
    "replication.key-filename",
    "replication.client-cert-auth",
    "replication.allowed-cn",
    "replication.allowed-hostname",
    "replication.server-name",
    "replication.reconcile-interval",
    "replication.max-recovery-in-flight",
    "replication.log-cache-size",
    "tables.names",
    "tables.token",
    "maintenance.token",
    "cluster.name",
];

/// Keys whose values are secrets: never logged, redacted in `Status`.
pub const SECRET_KEYS: &[&str] = &["replication.token", "tables.token", "maintenance.token"];

pub const REDACTED: &str = "**********";

/// The environment variable of a dotted key: `raft.node-id` → `RAFT_NODE_ID`.
pub fn env_var_name(key: &str) -> String {
    key.to_ascii_uppercase().replace(['.', '-'], "_")
}

/// One named source of a few values (a flag, an environment variable), so that errors say
/// exactly where a bad value came from.
struct NamedValue {
    source: String,
    key: String,
    value: Value,
}

impl Provider for NamedValue {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.source.clone())
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Serialized::global(&self.key, &self.value).data()
    }
}

/// Where the configuration comes from, lowest priority first after the defaults.
pub struct Sources {
    /// `--config PATH`, else the first `config.*` found in the search path.
    pub file: Option<PathBuf>,
    /// The process environment (injected for tests).
    pub environment: BTreeMap<String, String>,
    /// Flags given on the command line: dotted key → raw value.
    pub flags: BTreeMap<String, String>,
}

const SEARCH_DIRS: &[&str] = &["/etc/armada", "/config"];

const CONFIG_EXTENSIONS: &[&str] = &["yaml", "yml", "toml", "json"];

/// The first search directory holding a `config.*`; two of them in one directory are an
/// error rather than a silent choice of one.
fn find_config_file() -> Result<Option<PathBuf>, String> {
    let mut dirs: Vec<PathBuf> = SEARCH_DIRS.iter().map(PathBuf::from).collect();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".armada"));
    }
    dirs.push(PathBuf::from("."));
    for dir in dirs {
        let found: Vec<PathBuf> = CONFIG_EXTENSIONS
            .iter()
            .map(|extension| dir.join(format!("config.{extension}")))
            .filter(|candidate| candidate.is_file())
            .collect();
        match found.as_slice() {
            [] => continue,
            [file] => return Ok(Some(file.clone())),
            [first, second, ..] => {
                return Err(format!(
                    "two config files in {}: {} and {}; keep one, or choose with --config",
                    dir.display(),
                    first.display(),
                    second.display()
                ));
            }
        }
    }
    Ok(None)
}

/// Resolves the configuration from all layers and checks it.
pub fn load(sources: Sources, base: ServerConfig) -> Result<ServerConfig, String> {
    let role = base.role;
    let mut figment = Figment::from(Serialized::defaults(base));
    let file = match sources.file {
        Some(file) => Some(file),
        None => find_config_file()?,
    };
    if let Some(path) = &file {
        figment = merge_file(figment, path)?;
    }
    for key in KEYS {
        let name = env_var_name(key);
        if let Some(raw) = sources.environment.get(&name) {
            figment = figment.merge(NamedValue {
                source: format!("environment variable {name}"),
                key: (*key).to_string(),
                value: parse_value(key, raw),
            });
        }
    }
    for (key, raw) in &sources.flags {
        figment = figment.merge(NamedValue {
            source: format!("flag --{key}"),
            key: key.clone(),
            value: parse_value(key, raw),
        });
    }
    let mut config: ServerConfig = figment.extract().map_err(describe_error)?;
    config.role = role;
    config.config_file = file;
    config.fill_derived_defaults();
    config
        .check()
        .map_err(|problem| problem.describe(&source_of(&figment, &problem.key)))?;
    Ok(config)
}

/// Merges the config file into `figment`, refusing a missing file, an unknown extension and
/// (YAML, JSON) a key given twice.
fn merge_file(figment: Figment, path: &Path) -> Result<Figment, String> {
    if !path.is_file() {
        return Err(format!("config file {} does not exist", path.display()));
    }
    let extension = path.extension().and_then(|extension| extension.to_str());
    if matches!(extension, Some("yaml" | "yml" | "json")) {
        let text = std::fs::read_to_string(path)
            .map_err(|error| format!("cannot read config file {}: {error}", path.display()))?;
        let checked = match extension {
            Some("json") => Json::from_str::<UniqueKeys>(&text).map_err(|error| error.to_string()),
            _ => Yaml::from_str::<UniqueKeys>(&text).map_err(|error| error.to_string()),
        };
        checked.map_err(|error| {
            format!(
                "invalid configuration in config file {}: {error}",
                path.display()
            )
        })?;
    }
    Ok(match extension {
        Some("yaml" | "yml") => figment.merge(Yaml::file_exact(path)),
        Some("toml") => figment.merge(Toml::file_exact(path)),
        Some("json") => figment.merge(Json::file_exact(path)),
        _ => {
            return Err(format!(
                "config file {} must end in .yaml, .yml, .toml or .json",
                path.display()
            ));
        }
    })
}

/// Where the value of `key` came from, as an operator would look for it: `flag --raft.rtt`,
/// `environment variable RAFT_RTT`, `YAML file /etc/armada/config.yaml`, or the default.
fn source_of(figment: &Figment, key: &str) -> String {
    let Some(metadata) = figment.find_metadata(key) else {
        return "the default".to_string();
    };
    match &metadata.source {
        Some(figment::Source::File(path)) => format!("{} {}", metadata.name, path.display()),
        _ if metadata.name.starts_with("flag ")
            || metadata.name.starts_with("environment variable ") =>
        {
            metadata.name.to_string()
        }
        // The defaults (`Serialized::defaults`, whose source is this file's code location).
        _ => "the default".to_string(),
    }
}

/// A config file's structure, read only to find keys given twice in one mapping.
struct UniqueKeys;

impl<'de> Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(UniqueKeysVisitor {
            path: String::new(),
        })?;
        Ok(UniqueKeys)
    }
}

/// Visits one value at `path` (dotted), failing on the first mapping key seen twice.
struct UniqueKeysVisitor {
    path: String,
}

impl<'de> serde::de::DeserializeSeed<'de> for UniqueKeysVisitor {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for UniqueKeysVisitor {
    type Value = ();

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("any configuration value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut sequence: A) -> Result<(), A::Error> {
        while sequence
            .next_element_seed(UniqueKeysVisitor {
                path: self.path.clone(),
            })?
            .is_some()
        {}
        Ok(())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = std::collections::BTreeSet::new();
        while let Some(key) = map.next_key::<figment::value::Value>()? {
            let name = match key.as_str() {
                Some(name) => name.to_string(),
                None => format!("{key:?}"),
            };
            let path = if self.path.is_empty() {
                name
            } else {
                format!("{}.{name}", self.path)
            };
            if !seen.insert(path.clone()) {
                return Err(serde::de::Error::custom(format!(
                    "key `{path}` is given twice"
                )));
            }
            map.next_value_seed(UniqueKeysVisitor { path })?;
        }
        Ok(())
    }
}

/// String-typed keys stay strings ("007" is a token, not a number); numbers and booleans
/// parse leniently.
fn parse_value(key: &str, raw: &str) -> Value {
    const TYPED: &[&str] = &[
        "api.client-cert-auth",
        "replication.client-cert-auth",
        "raft.node-id",
        "raft.rtt",
        "raft.heartbeat-rtt",
        "raft.election-rtt",
        "raft.snapshot-entries",
        "raft.compaction-overhead",
        "replication.max-recovery-in-flight",
        "replication.log-cache-size",
    ];
    if TYPED.contains(&key) {
        raw.parse::<Value>()
            .unwrap_or_else(|_| Value::from(raw.to_string()))
    } else {
        Value::from(raw.to_string())
    }
}

fn describe_error(error: figment::Error) -> String {
    error
        .into_iter()
        .map(|error| {
            let key = error.path.join(".");
            let source = error
                .metadata
                .as_ref()
                .map(|metadata| match &metadata.source {
                    Some(source) => format!("{} ({source})", metadata.name),
                    None => metadata.name.to_string(),
                })
                .unwrap_or_else(|| "configuration".into());
            if key.is_empty() {
                format!("invalid configuration in {source}: {}", error.kind)
            } else {
                format!(
                    "invalid configuration key `{key}` in {source}: {}",
                    error.kind
                )
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

impl ReplicationConfig {
    /// The leader addresses given in `leader-address`.
    pub fn leader_addresses(&self) -> Vec<String> {
        self.leader_address
            .split(',')
            .map(|address| address.trim().to_string())
            .filter(|address| !address.is_empty())
            .collect()
    }

    pub fn reconcile_every(&self) -> std::time::Duration {
        parse_duration(&self.reconcile_interval).unwrap_or(std::time::Duration::from_secs(5))
    }
}

impl ServerConfig {
    /// Defaults that depend on other keys: the advertised client URL (from `api.address`) and
    /// the cluster name (from the role).
    fn fill_derived_defaults(&mut self) {
        if self.api.advertise_address.is_empty() {
            let (advertised, warning) = advertise_address_of(&self.api.address);
            self.api.advertise_address = advertised;
            self.warnings.extend(warning);
        }
        if self.cluster.name.is_empty() {
            self.cluster.name = match self.role {
                NodeRole::Leader => "leader".into(),
                NodeRole::Follower => "follower".into(),
            };
        }
    }

    /// Checks what the types cannot: ranges, combinations, addresses, names. The first problem
    /// found is returned against the key an operator has to change.
    fn check(&self) -> Result<(), Problem> {
        if self.raft.node_id == 0 {
            return Err(problem("raft.node-id", "must be 1 or more"));
        }
        self.check_logging()?;
        self.check_raft_timing()?;
        check_host_port("raft.address", &self.raft.address)?;
        for (_, address) in self.members()? {
            check_host_port("raft.initial-members", &address)?;
        }
        let tls_files = [
            ("raft.ca-filename", &self.raft.ca_filename),
            ("raft.cert-filename", &self.raft.cert_filename),
            ("raft.key-filename", &self.raft.key_filename),
        ];
        let given = tls_files
            .iter()
            .filter(|(_, file)| !file.is_empty())
            .count();
        if let Some((key, _)) = tls_files.iter().find(|(_, file)| file.is_empty())
            && given != 0
        {
            return Err(problem(
                *key,
                "`raft.ca-filename`, `raft.cert-filename` and `raft.key-filename` must be set together",
            ));
        }
        if self.role == NodeRole::Follower {
            self.check_leader_addresses()?;
        }
        parse_duration(&self.replication.reconcile_interval)
            .map_err(|error| problem("replication.reconcile-interval", error))?;
        if self.replication.max_recovery_in_flight == 0 {
            return Err(problem(
                "replication.max-recovery-in-flight",
                "must be 1 or more",
            ));
        }
        for (key, value) in [
            ("api.address", &self.api.address),
            ("api.advertise-address", &self.api.advertise_address),
            ("rest.address", &self.rest.address),
            ("replication.address", &self.replication.address),
        ] {
            crate::address::ListenAddress::parse(value).map_err(|error| problem(key, error))?;
        }
        for name in self.tables.names() {
            crate::api::validate::new_table_name(&name)
                .map_err(|error| problem("tables.names", format!("`{name}`: {error}")))?;
        }
        if self.cluster.name.is_empty() || self.cluster.name.len() > MAX_CLUSTER_NAME_BYTES {
            return Err(problem(
                "cluster.name",
                format!("must be 1..={MAX_CLUSTER_NAME_BYTES} bytes"),
            ));
        }
        self.api_tls_keys().check()?;
        match self.role {
            NodeRole::Leader => self.replication_tls_keys().check()?,
            NodeRole::Follower => self.check_follower_replication_tls()?,
        }
        Ok(())
    }

    fn check_logging(&self) -> Result<(), Problem> {
        if !LOG_LEVELS.contains(&self.log_level.to_ascii_lowercase().as_str()) {
            return Err(problem(
                "log-level",
                format!(
                    "`{}` is not one of {}",
                    self.log_level,
                    LOG_LEVELS.join(", ")
                ),
            ));
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return Err(problem(
                "log-format",
                format!("`{}` is not `text` or `json`", self.log_format),
            ));
        }
        Ok(())
    }

    fn check_raft_timing(&self) -> Result<(), Problem> {
        if self.raft.rtt == 0 {
            return Err(problem("raft.rtt", "must be 1 ms or more"));
        }
        if self.raft.heartbeat_rtt == 0 {
            return Err(problem("raft.heartbeat-rtt", "must be 1 or more"));
        }
        if self.raft.election_rtt <= self.raft.heartbeat_rtt {
            return Err(problem(
                "raft.election-rtt",
                format!(
                    "must be greater than `raft.heartbeat-rtt` ({})",
                    self.raft.heartbeat_rtt
                ),
            ));
        }
        Ok(())
    }

    fn check_leader_addresses(&self) -> Result<(), Problem> {
        let key = "replication.leader-address";
        if self.replication.leader_address.trim().is_empty() {
            return Err(problem(
                key,
                "a follower must name the leader cluster's replication address",
            ));
        }
        for address in self.replication.leader_addresses() {
            if !LEADER_SCHEMES
                .iter()
                .any(|scheme| address.starts_with(scheme))
            {
                return Err(problem(
                    key,
                    format!("`{address}` is not an http://, https://, unix:// or unixs:// URL"),
                ));
            }
        }
        Ok(())
    }

    /// On a follower the `replication.*` TLS keys configure the client that dials the leader
    /// cluster; the server-side ones have nothing to apply to.
    fn check_follower_replication_tls(&self) -> Result<(), Problem> {
        let replication = &self.replication;
        if replication.cert_filename.is_empty() != replication.key_filename.is_empty() {
            let key = if replication.cert_filename.is_empty() {
                "replication.cert-filename"
            } else {
                "replication.key-filename"
            };
            return Err(problem(
                key,
                "`replication.cert-filename` and `replication.key-filename` (the client certificate a follower presents) must be set together",
            ));
        }
        for (key, set) in [
            ("replication.client-cert-auth", replication.client_cert_auth),
            ("replication.allowed-cn", !replication.allowed_cn.is_empty()),
            (
                "replication.allowed-hostname",
                !replication.allowed_hostname.is_empty(),
            ),
        ] {
            if set {
                return Err(problem(
                    key,
                    "it secures the leader cluster's replication server; a follower node serves none",
                ));
            }
        }
        let client_tls = [
            ("replication.ca-filename", &replication.ca_filename),
            ("replication.cert-filename", &replication.cert_filename),
            ("replication.server-name", &replication.server_name),
        ];
        if let Some((key, _)) = client_tls.iter().find(|(_, value)| !value.is_empty()) {
            for address in replication.leader_addresses() {
                if !(address.starts_with("https://") || address.starts_with("unixs://")) {
                    return Err(problem(
                        *key,
                        format!(
                            "it applies to TLS, but `replication.leader-address` `{address}` is plaintext (use https:// or unixs://)"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    fn api_tls_keys(&self) -> ListenerTlsKeys<'_> {
        let api = &self.api;
        ListenerTlsKeys {
            prefix: "api",
            address: &api.address,
            cert_filename: &api.cert_filename,
            key_filename: &api.key_filename,
            ca_filename: &api.ca_filename,
            client_cert_auth: api.client_cert_auth,
            allowed_cn: &api.allowed_cn,
            allowed_hostname: &api.allowed_hostname,
        }
    }

    fn replication_tls_keys(&self) -> ListenerTlsKeys<'_> {
        let replication = &self.replication;
        ListenerTlsKeys {
            prefix: "replication",
            address: &replication.address,
            cert_filename: &replication.cert_filename,
            key_filename: &replication.key_filename,
            ca_filename: &replication.ca_filename,
            client_cert_auth: replication.client_cert_auth,
            allowed_cn: &replication.allowed_cn,
            allowed_hostname: &replication.allowed_hostname,
        }
    }

    /// How the client API listener is secured; `None` for plaintext.
    pub fn api_tls(&self) -> Option<ListenerTls> {
        self.api_tls_keys().listener_tls()
    }

    /// How a leader node's replication listener is secured; `None` for plaintext (and on a
    /// follower node, which serves no replication API).
    pub fn replication_server_tls(&self) -> Option<ListenerTls> {
        match self.role {
            NodeRole::Leader => self.replication_tls_keys().listener_tls(),
            NodeRole::Follower => None,
        }
    }

    pub fn is_follower(&self) -> bool {
        self.role == NodeRole::Follower
    }

    /// How the cluster transport encrypts and authenticates.
    pub fn raft_tls(&self) -> crate::transport::TlsMode {
        if self.raft.ca_filename.is_empty() {
            crate::transport::TlsMode::SelfSigned
        } else {
            crate::transport::TlsMode::Mutual {
                ca_file: PathBuf::from(&self.raft.ca_filename),
                cert_file: PathBuf::from(&self.raft.cert_filename),
                key_file: PathBuf::from(&self.raft.key_filename),
            }
        }
    }

    /// The static initial membership: node id → raft address. Empty means "just this node".
    pub fn members(&self) -> Result<BTreeMap<u64, String>, Problem> {
        let key = "raft.initial-members";
        let mut members = BTreeMap::new();
        if self.raft.initial_members.trim().is_empty() {
            members.insert(self.raft.node_id, self.raft.address.clone());
            return Ok(members);
        }
        for part in self.raft.initial_members.split(',') {
            let (id, address) = part
                .trim()
                .split_once('=')
                .ok_or_else(|| problem(key, format!("`{part}` is not `id=host:port`")))?;
            let id: u64 = id
                .trim()
                .parse()
                .map_err(|_| problem(key, format!("`{id}` is not a node id")))?;
            if id == 0 || members.insert(id, address.trim().to_string()).is_some() {
                return Err(problem(key, format!("node id {id} is zero or repeated")));
            }
        }
        if !members.contains_key(&self.raft.node_id) {
            return Err(problem(
                key,
                format!("it does not list this node ({})", self.raft.node_id),
            ));
        }
        Ok(members)
    }

    /// The effective configuration as a flat map of dotted keys, secrets redacted.
    pub fn flat_redacted(&self) -> BTreeMap<String, serde_json::Value> {
        let mut out = BTreeMap::new();
        let value = serde_json::to_value(self).unwrap_or_default();
        flatten("", &value, &mut out);
        for key in SECRET_KEYS {
            if let Some(entry) = out.get_mut(*key) {
                *entry = serde_json::Value::String(REDACTED.into());
            }
        }
        out
    }
}

fn flatten(prefix: &str, value: &serde_json::Value, out: &mut BTreeMap<String, serde_json::Value>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, inner) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(&path, inner, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.clone());
        }
    }
}

#[cfg(test)]
#[allow(clippy::too_many_lines)] // test scenarios read top to bottom
mod tests {
    use super::*;

    fn sources(env: &[(&str, &str)], flags: &[(&str, &str)], file: Option<PathBuf>) -> Sources {
        Sources {
            file,
            environment: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            flags: flags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn flags_beat_environment_beat_file_beat_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("config.yaml");
        std::fs::write(
            &file,
            "raft:\n  address: 127.0.0.1:1\n  node-id: 3\napi:\n  address: http://127.0.0.1:9\n",
        )
        .expect("write");
        let config = load(
            sources(
                &[
                    ("RAFT_NODE_ID", "4"),
                    ("API_ADDRESS", "http://127.0.0.1:10"),
                    ("REPLICATION_LOG_CACHE_SIZE", "16"),
                ],
                &[("api.address", "http://127.0.0.1:11")],
                Some(file),
            ),
            ServerConfig::default(),
        )
        .expect("valid");
        assert_eq!(config.raft.address, "127.0.0.1:1");
        assert_eq!(config.raft.node_id, 4);
        assert_eq!(config.api.address, "http://127.0.0.1:11");
        assert_eq!(config.rest.address, "http://127.0.0.1:8079");
        assert_eq!(config.replication.log_cache_size, 16);
        assert_eq!(ServerConfig::default().replication.log_cache_size, 4096);
    }

    #[test]
    fn bad_values_and_unknown_keys_name_the_key_and_source() {
        let error = load(
            sources(&[("RAFT_NODE_ID", "abc")], &[("raft.address", "a:1")], None),
            ServerConfig::default(),
        )
        .expect_err("invalid");
        assert!(
            error.contains("raft.node-id") && error.contains("RAFT_NODE_ID"),
            "{error}"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("config.toml");
        std::fs::write(&file, "[raft]\naddress = \"a:1\"\nbogus = 1\n").expect("write");
        let error =
            load(sources(&[], &[], Some(file)), ServerConfig::default()).expect_err("unknown key");
        assert!(error.contains("bogus"), "{error}");
        let error = load(
            sources(
                &[],
                &[("raft.address", "a:1"), ("api.address", "ftp://x")],
                None,
            ),
            ServerConfig::default(),
        )
        .expect_err("bad scheme");
        assert!(error.contains("api.address"), "{error}");
    }

    #[test]
    fn members_parse_and_must_include_this_node() {
        let mut config = ServerConfig::default();
        config.raft.address = "127.0.0.1:5000".into();
        assert_eq!(
            config.members().expect("default"),
            BTreeMap::from([(1, "127.0.0.1:5000".to_string())])
        );
        config.raft.initial_members = "1=a:1, 2=b:2".into();
        assert_eq!(config.members().expect("two").len(), 2);
        config.raft.initial_members = "2=b:2".into();
        assert!(config.members().is_err());
        config.raft.initial_members = "1=a:1,1=b:2".into();
        assert!(config.members().is_err());
    }

    fn try_load(role: NodeRole, flags: &[(&str, &str)]) -> Result<ServerConfig, String> {
        let mut all = vec![("raft.address", "127.0.0.1:1")];
        all.extend_from_slice(flags);
        let base = ServerConfig {
            role,
            ..ServerConfig::default()
        };
        load(sources(&[], &all, None), base)
    }

    #[test]
    fn tls_listeners_need_a_certificate_and_consistent_settings() {
        let leader = |flags: &[(&str, &str)]| try_load(NodeRole::Leader, flags);
        let error = leader(&[("api.address", "https://127.0.0.1:0")]).expect_err("no cert");
        assert!(error.contains("`api.cert-filename`"), "{error}");
        let error = leader(&[("replication.address", "unixs:///tmp/r.sock")]).expect_err("no cert");
        assert!(error.contains("`replication.cert-filename`"), "{error}");
        let error = leader(&[
            ("api.address", "https://127.0.0.1:0"),
            ("api.cert-filename", "c.pem"),
        ])
        .expect_err("no key");
        assert!(error.contains("`api.key-filename`"), "{error}");
        let tls = [
            ("api.address", "https://127.0.0.1:0"),
            ("api.cert-filename", "c.pem"),
            ("api.key-filename", "k.pem"),
        ];
        let with = |extra: &[(&str, &str)]| {
            let mut flags = tls.to_vec();
            flags.extend_from_slice(extra);
            leader(&flags)
        };
        let error = with(&[
            ("api.ca-filename", "ca.pem"),
            ("api.allowed-cn", "a"),
            ("api.allowed-hostname", "b.example"),
        ])
        .expect_err("both");
        assert!(error.contains("mutually exclusive"), "{error}");
        let error = with(&[("api.allowed-cn", "a")]).expect_err("no client certificates");
        assert!(error.contains("`api.allowed-cn`"), "{error}");
        let error = with(&[
            ("api.client-cert-auth", "true"),
            ("api.allowed-hostname", "a b"),
        ])
        .expect_err("bad hostname");
        assert!(error.contains("`api.allowed-hostname`"), "{error}");
        // TLS settings on a plaintext address are a mistake, not something to ignore.
        let error = leader(&[("api.ca-filename", "ca.pem")]).expect_err("plaintext");
        assert!(
            error.contains("`api.ca-filename`") && error.contains("plaintext"),
            "{error}"
        );

        let config = with(&[("api.ca-filename", "ca.pem"), ("api.allowed-cn", "a")]).expect("ok");
        assert_eq!(
            config.api_tls().expect("tls").client_auth,
            ClientAuth::Required {
                roots: ClientRoots::File("ca.pem".into()),
                allowed: Some(AllowedPeer::CommonName("a".into())),
            }
        );
        let config = with(&[("api.client-cert-auth", "true")]).expect("ok");
        assert_eq!(
            config.api_tls().expect("tls").client_auth,
            ClientAuth::Required {
                roots: ClientRoots::System,
                allowed: None,
            }
        );
        assert_eq!(
            with(&[]).expect("ok").api_tls().expect("tls").client_auth,
            ClientAuth::None
        );
        assert_eq!(leader(&[]).expect("plaintext").api_tls(), None);
        // Booleans come from the environment too.
        let config = load(
            sources(
                &[("API_CLIENT_CERT_AUTH", "true")],
                &[
                    ("raft.address", "127.0.0.1:1"),
                    ("api.address", "unixs:///tmp/a.sock"),
                    ("api.cert-filename", "c.pem"),
                    ("api.key-filename", "k.pem"),
                ],
                None,
            ),
            ServerConfig::default(),
        )
        .expect("env bool");
        assert!(config.api.client_cert_auth);
    }

    #[test]
    fn replication_tls_keys_mean_the_client_side_on_a_follower() {
        let follower = |flags: &[(&str, &str)]| {
            let mut all = vec![("replication.leader-address", "https://leader:8444")];
            all.extend_from_slice(flags);
            try_load(NodeRole::Follower, &all)
        };
        let config = follower(&[
            ("replication.ca-filename", "leader-ca.pem"),
            ("replication.cert-filename", "client.pem"),
            ("replication.key-filename", "client.key"),
            ("replication.server-name", "leader.example"),
        ])
        .expect("client TLS");
        assert_eq!(config.replication_server_tls(), None);
        let error = follower(&[("replication.cert-filename", "client.pem")]).expect_err("no key");
        assert!(error.contains("`replication.key-filename`"), "{error}");
        let error = follower(&[("replication.allowed-cn", "x")]).expect_err("server side");
        assert!(error.contains("`replication.allowed-cn`"), "{error}");
        let error = try_load(
            NodeRole::Follower,
            &[
                ("replication.leader-address", "http://leader:8444"),
                ("replication.ca-filename", "leader-ca.pem"),
            ],
        )
        .expect_err("plaintext leader");
        assert!(error.contains("`replication.ca-filename`"), "{error}");
        // On a leader the same keys secure its replication server.
        let config = try_load(
            NodeRole::Leader,
            &[
                ("replication.address", "https://0.0.0.0:8444"),
                ("replication.cert-filename", "server.pem"),
                ("replication.key-filename", "server.key"),
                ("replication.ca-filename", "followers-ca.pem"),
            ],
        )
        .expect("leader");
        let tls = config.replication_server_tls().expect("tls");
        assert_eq!(tls.cert_file, PathBuf::from("server.pem"));
        assert!(matches!(tls.client_auth, ClientAuth::Required { .. }));
    }

    fn write_file(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
        let file = dir.path().join(name);
        std::fs::write(&file, text).expect("write");
        file
    }

    #[test]
    fn unknown_log_levels_are_refused_naming_the_source() {
        let error = try_load(NodeRole::Leader, &[("log-level", "chatty")]).expect_err("chatty");
        assert!(
            error.contains("`log-level` in flag --log-level") && error.contains("chatty"),
            "{error}"
        );
        let error = load(
            sources(
                &[("LOG_LEVEL", "verbose")],
                &[("raft.address", "a:1")],
                None,
            ),
            ServerConfig::default(),
        )
        .expect_err("verbose");
        assert!(
            error.contains("`log-level` in environment variable LOG_LEVEL"),
            "{error}"
        );
        // Regatta's upper-case names are levels too.
        try_load(NodeRole::Leader, &[("log-level", "DEBUG")]).expect("DEBUG");
    }

    #[test]
    fn semantic_errors_name_the_flag_variable_or_file() {
        let error = try_load(NodeRole::Leader, &[("log-format", "xml")]).expect_err("format");
        assert!(
            error.contains("`log-format` in flag --log-format"),
            "{error}"
        );
        let error = load(
            sources(&[("RAFT_RTT", "0")], &[("raft.address", "a:1")], None),
            ServerConfig::default(),
        )
        .expect_err("rtt");
        assert!(
            error.contains("`raft.rtt` in environment variable RAFT_RTT"),
            "{error}"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let file = write_file(
            &dir,
            "config.yaml",
            "raft:\n  address: a:1\n  initial-members: 2=b:2\n",
        );
        let error = load(
            sources(&[], &[], Some(file.clone())),
            ServerConfig::default(),
        )
        .expect_err("members");
        assert!(
            error.contains("`raft.initial-members`") && error.contains(&file.display().to_string()),
            "{error}"
        );
        let error = try_load(NodeRole::Leader, &[("api.address", "ftp://x")]).expect_err("url");
        assert!(
            error.contains("`api.address` in flag --api.address"),
            "{error}"
        );
        let error = load(
            sources(&[], &[("raft.address", "notanaddress")], None),
            ServerConfig::default(),
        )
        .expect_err("raft address");
        assert!(
            error.starts_with("invalid configuration key `raft.address` in flag --raft.address:"),
            "{error}"
        );
        let error = load(sources(&[], &[], None), ServerConfig::default()).expect_err("unset");
        assert!(error.contains("`raft.address` in the default"), "{error}");
    }

    #[test]
    fn table_names_are_checked_and_may_be_a_list() {
        let error =
            try_load(NodeRole::Leader, &[("tables.names", "ok,not ok")]).expect_err("bad name");
        assert!(
            error.contains("`tables.names` in flag --tables.names") && error.contains("not ok"),
            "{error}"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let file = write_file(
            &dir,
            "config.yaml",
            "raft:\n  address: a:1\ntables:\n  names:\n    - config\n    - flags\n",
        );
        let config = load(sources(&[], &[], Some(file)), ServerConfig::default()).expect("list");
        assert_eq!(config.tables.names(), ["config", "flags"]);
    }

    #[test]
    fn keys_given_twice_in_a_file_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = write_file(
            &dir,
            "config.yaml",
            "raft:\n  address: a:1\n  node-id: 1\n  node-id: 2\n",
        );
        let error = load(
            sources(&[], &[], Some(file.clone())),
            ServerConfig::default(),
        )
        .expect_err("duplicate");
        assert!(
            error.contains("`raft.node-id` is given twice")
                && error.contains(&file.display().to_string()),
            "{error}"
        );
        let file = write_file(
            &dir,
            "config.json",
            r#"{"raft": {"address": "a:1"}, "raft": {"node-id": 2}}"#,
        );
        let error =
            load(sources(&[], &[], Some(file)), ServerConfig::default()).expect_err("duplicate");
        assert!(error.contains("`raft` is given twice"), "{error}");
        let file = write_file(
            &dir,
            "config.toml",
            "[raft]\naddress = \"a:1\"\naddress = \"b:2\"\n",
        );
        load(sources(&[], &[], Some(file)), ServerConfig::default()).expect_err("toml duplicate");
    }

    #[test]
    fn the_advertised_address_follows_the_api_address() {
        let config = try_load(
            NodeRole::Leader,
            &[("api.address", "https://10.1.2.3:9443")],
        )
        .expect_err("no cert");
        assert!(config.contains("api.cert-filename"), "{config}");
        let config =
            try_load(NodeRole::Leader, &[("api.address", "http://10.1.2.3:9443")]).expect("ok");
        assert_eq!(config.api.advertise_address, "http://10.1.2.3:9443");
        assert!(config.warnings.is_empty());
        let config = try_load(NodeRole::Leader, &[]).expect("default");
        assert_eq!(config.api.advertise_address, "http://127.0.0.1:8443");
        assert!(
            config.warnings[0].contains("wildcard"),
            "{:?}",
            config.warnings
        );
        let config = try_load(
            NodeRole::Leader,
            &[
                ("api.address", "http://[::]:8443"),
                ("api.advertise-address", "http://node-1.example:8443"),
            ],
        )
        .expect("explicit");
        assert_eq!(config.api.advertise_address, "http://node-1.example:8443");
        assert!(config.warnings.is_empty());
        assert_eq!(
            advertise_address_of("unix:///run/armada.sock").0,
            "unix:///run/armada.sock"
        );
        // Port 0: the port the OS chose is advertised once the listener is bound.
        let config =
            try_load(NodeRole::Leader, &[("api.address", "http://127.0.0.2:0")]).expect("ok");
        assert_eq!(
            config.api.advertise_address_bound("http://127.0.0.2:40123"),
            "http://127.0.0.2:40123"
        );
        assert_eq!(
            try_load(NodeRole::Leader, &[])
                .expect("ok")
                .api
                .advertise_address_bound("http://0.0.0.0:40123"),
            "http://127.0.0.1:8443"
        );
    }

    #[test]
    fn the_cluster_name_defaults_to_the_role() {
        assert_eq!(
            try_load(NodeRole::Leader, &[])
                .expect("leader")
                .cluster
                .name,
            "leader"
        );
        let follower = try_load(
            NodeRole::Follower,
            &[("replication.leader-address", "http://l:1")],
        )
        .expect("follower");
        assert_eq!(follower.cluster.name, "follower");
        let named = try_load(NodeRole::Leader, &[("cluster.name", "eu-west")]).expect("named");
        assert_eq!(named.cluster.name, "eu-west");
        assert_eq!(named.flat_redacted()["cluster.name"], "eu-west");
    }

    #[test]
    fn secrets_are_redacted_in_the_flat_map() {
        let mut config = ServerConfig::default();
        config.tables.token = "secret".into();
        config.maintenance.token = "secret".into();
        let flat = config.flat_redacted();
        assert_eq!(flat["tables.token"], REDACTED);
        assert_eq!(flat["maintenance.token"], REDACTED);
        assert_eq!(flat["replication.token"], REDACTED);
        assert_eq!(flat["api.address"], "http://0.0.0.0:8443");
        assert!(
            !serde_json::to_string(&flat)
                .expect("json")
                .contains("secret")
        );
    }
}
