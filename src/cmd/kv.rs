//! `armada kv get|put|del|txn`: etcdctl-style reads and writes.
//!
//! Also home of what every client subcommand shares (`table`, `status`, `members`, `reset`):
//! [`ClientArgs`] (addresses, token, CA, deadlines, `--json`) and the JSON rendering of keys
//! and values ([`json`]). Output goes to stdout: raw bytes in the human form (like etcdctl:
//! `key` line, `value` line), one JSON document with `--json`. Errors go to stderr through
//! `main` with their gRPC code, and the exit code says their class (`super::exit`).
//!
//! Every call goes through [`ClientArgs::with_failover`]: `--address` may list several
//! servers, and one that cannot be reached or answers `Unavailable` gives way to the next.
//! A call is a closure over a fresh [`Client`] so that it can be repeated on the next address.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use armada_client::key_range::{RangeSelector, key_and_range_end};
use armada_client::txn_script::parse_txn_script;
use armada_client::{Bytes, Client, ClientError, ClientIdentity, ConnectOptions};
use armada_proto::mvcc::v1::{KeyValue, ResponseOp, response_op::Response};
use armada_proto::regatta::v1::{
    DeleteRangeRequest, DeleteRangeResponse, PutResponse, RangeRequest, RangeResponse, TxnRequest,
    TxnResponse,
};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::exit::{InvalidInput, UsageError};

/// Connection and output flags of every client subcommand.
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// Server address: http://host:port, host:port, https://host:port, unix:///path or
    /// unixs:///path. Several, comma separated: each is tried in turn while the previous one
    /// cannot be reached or answers Unavailable.
    #[arg(
        long,
        global = true,
        env = "ARMADA_ADDRESS",
        default_value = "http://127.0.0.1:8443"
    )]
    pub address: String,
    /// Bearer token sent with every call.
    #[arg(long, global = true, env = "ARMADA_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM file of the CA that signed the server's certificate (https://, unixs:// only).
    #[arg(long, global = true, env = "ARMADA_CA")]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) for servers that require one (mutual TLS); needs --key.
    #[arg(
        long = "cert",
        global = true,
        env = "ARMADA_CERT",
        requires = "key_file"
    )]
    pub cert_file: Option<PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(
        long = "key",
        global = true,
        env = "ARMADA_KEY",
        requires = "cert_file"
    )]
    pub key_file: Option<PathBuf>,
    /// Name the server's certificate must be valid for, instead of the address's host
    /// (`localhost` for unixs://).
    #[arg(long, global = true, env = "ARMADA_SERVER_NAME")]
    pub server_name: Option<String>,
    /// Deadline of each call, e.g. 500ms, 10s, 1m.
    #[arg(long, global = true, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// How long dialing one address may take before the next is tried.
    #[arg(long, global = true, default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Print one JSON document instead of human output.
    #[arg(long, global = true)]
    pub json: bool,
}

impl ClientArgs {
    /// The options to dial with.
    pub fn connect_options(&self) -> ConnectOptions {
        ConnectOptions {
            ca_file: self.ca.clone(),
            identity: client_identity(&self.cert_file, &self.key_file),
            server_name: self.server_name.clone(),
            token: self.token.clone(),
            timeout: Some(self.timeout),
            connect_timeout: Some(self.connect_timeout),
        }
    }

    /// The addresses of `--address`, in the order they are tried.
    pub fn addresses(&self) -> Vec<&str> {
        self.address
            .split(',')
            .map(str::trim)
            .filter(|address| !address.is_empty())
            .collect()
    }

    /// Runs `call` on the first server that serves it: an address that cannot be reached, or
    /// whose server answers `Unavailable` (no leader, shutting down), gives way to the next.
    /// Any other answer, success or error, is final.
    pub async fn with_failover<T, Call, Calling>(&self, mut call: Call) -> anyhow::Result<T>
    where
        Call: FnMut(Client) -> Calling,
        Calling: std::future::Future<Output = Result<T, ClientError>>,
    {
        let addresses = self.addresses();
        let options = self.connect_options();
        let mut failures = Vec::new();
        for address in &addresses {
            let result = match Client::connect_with(address, &options).await {
                Ok(client) => call(client).await,
                Err(error) => Err(error),
            };
            match result {
                Ok(value) => return Ok(value),
                Err(error) if fails_over(&error) => failures.push(error),
                Err(error) => return Err(error.into()),
            }
        }
        match failures.pop() {
            None => Err(UsageError("--address names no server".into()).into()),
            Some(last) if addresses.len() == 1 => Err(last.into()),
            Some(last) => Err(anyhow::Error::new(last).context(format!(
                "no server answered (tried {})",
                addresses.join(", ")
            ))),
        }
    }
}

/// Whether another address may serve what this one could not.
fn fails_over(error: &ClientError) -> bool {
    matches!(error, ClientError::Connect { .. }) || error.code() == Some(tonic::Code::Unavailable)
}

/// The client certificate of `--cert`/`--key` (clap makes them come together).
pub fn client_identity(
    cert_file: &Option<PathBuf>,
    key_file: &Option<PathBuf>,
) -> Option<ClientIdentity> {
    match (cert_file, key_file) {
        (Some(cert_file), Some(key_file)) => Some(ClientIdentity {
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
        }),
        _ => None,
    }
}

/// `250ms`, `10s`, `2m`, or a bare number of seconds (`1.5`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 500ms, 10s, 1m)"))?;
    let seconds = match unit {
        "ms" => number / 1000.0,
        "" | "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {text:?} (use ms, s, m or h)"
            ));
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|error| format!("{text:?}: {error}"))
}

/// `armada kv`.
#[derive(Args)]
pub struct KvArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: KvCommand,
}

#[derive(Subcommand)]
pub enum KvCommand {
    /// Read a key, a prefix or a range (prints key and value lines).
    Get(GetArgs),
    /// Write a key (prints OK and the write's revision).
    Put(PutArgs),
    /// Delete a key, a prefix or a range (prints the number deleted).
    #[command(alias = "delete")]
    Del(DelArgs),
    /// Run a transaction read from stdin: compares, blank line, success ops, blank line,
    /// failure ops. E.g. `value("k") = "v"`, `mod("k") > 5`; `put k v`, `get k`, `del k`.
    Txn(TxnArgs),
}

/// Which keys a `get` or `del` selects beyond its KEY.
#[derive(Args, Debug, Clone, Default)]
pub struct RangeFlags {
    /// Every key starting with KEY.
    #[arg(long, conflicts_with_all = ["range_end", "from_key"])]
    pub prefix: bool,
    /// Every key in [KEY, END).
    #[arg(long, value_name = "END", conflicts_with = "from_key")]
    pub range_end: Option<String>,
    /// Every key from KEY to the end of the table.
    #[arg(long)]
    pub from_key: bool,
}

impl RangeFlags {
    /// The wire `(key, range_end)` for `key`.
    pub fn key_and_range_end(&self, key: &str) -> anyhow::Result<(Bytes, Bytes)> {
        let selector = if self.prefix {
            RangeSelector::Prefix
        } else if self.from_key {
            RangeSelector::FromKey
        } else if let Some(end) = &self.range_end {
            RangeSelector::Until(Bytes::copy_from_slice(end.as_bytes()))
        } else {
            RangeSelector::Single
        };
        if key.is_empty() && selector == RangeSelector::Single {
            return Err(UsageError(
                "the key is empty (use --prefix or --from-key with \"\" for every key)".into(),
            )
            .into());
        }
        Ok(key_and_range_end(
            Bytes::copy_from_slice(key.as_bytes()),
            &selector,
        ))
    }
}

#[derive(Args)]
pub struct GetArgs {
    pub table: String,
    pub key: String,
    #[command(flatten)]
    pub range: RangeFlags,
    /// At most N keys (0: no limit; the server still caps a response below 4 MiB).
    #[arg(long, default_value_t = 0)]
    pub limit: i64,
    /// Print keys only.
    #[arg(long, conflicts_with = "count_only")]
    pub keys_only: bool,
    /// Print each value only (one per line), no keys.
    #[arg(long, conflicts_with_all = ["keys_only", "count_only", "json"])]
    pub print_value_only: bool,
    /// Print the number of keys only.
    #[arg(long)]
    pub count_only: bool,
    /// Linearizable read (ReadIndex) instead of the local replica's view.
    #[arg(long)]
    pub linearizable: bool,
    /// Read at a past revision (0: latest).
    #[arg(long, default_value_t = 0)]
    pub rev: i64,
}

#[derive(Args)]
pub struct PutArgs {
    pub table: String,
    pub key: String,
    /// The value; omitted, it is read from stdin as is (binary values too), up to the 2 MiB
    /// value limit.
    pub value: Option<String>,
    /// Also print the previous key-value.
    #[arg(long)]
    pub prev_kv: bool,
}

#[derive(Args)]
pub struct DelArgs {
    pub table: String,
    pub key: String,
    #[command(flatten)]
    pub range: RangeFlags,
    /// Also print the deleted key-values.
    #[arg(long)]
    pub prev_kv: bool,
}

#[derive(Args)]
pub struct TxnArgs {
    pub table: String,
}

pub async fn run(args: KvArgs) -> anyhow::Result<()> {
    let output = Output::new(args.client.json);
    let client = &args.client;
    match args.command {
        KvCommand::Get(get) => run_get(client, get, output).await,
        KvCommand::Put(put) => run_put(client, put, output).await,
        KvCommand::Del(del) => run_del(client, del, output).await,
        KvCommand::Txn(txn) => {
            // Read and check a transaction before dialing: a typo is reported as such.
            let request = read_txn(&txn)?;
            run_txn(client, request, output).await
        }
    }
}

async fn run_get(client: &ClientArgs, args: GetArgs, output: Output) -> anyhow::Result<()> {
    let (key, range_end) = args.range.key_and_range_end(&args.key)?;
    let request = RangeRequest {
        table: Bytes::from(args.table),
        key,
        range_end,
        limit: args.limit,
        linearizable: args.linearizable,
        keys_only: args.keys_only,
        count_only: args.count_only,
        revision: args.rev,
        ..RangeRequest::default()
    };
    let response = client
        .with_failover(|client| {
            let request = request.clone();
            async move { client.range(request).await }
        })
        .await
        .context("get")?;
    if output.json {
        return output.print_json(&json::range(&response));
    }
    let mut text = Vec::new();
    if args.print_value_only {
        write_values(&mut text, &response);
    } else {
        write_range(&mut text, &response, args.count_only, args.keys_only);
    }
    output.print_bytes(&text)?;
    if response.more && args.limit == 0 {
        eprintln!("(more keys follow: the response reached its size cap; narrow the range)");
    }
    Ok(())
}

/// The value of `put`: the argument, else stdin read up to the value limit.
fn put_value(value: Option<String>) -> anyhow::Result<Bytes> {
    const LIMIT: usize = armada_server::api::validate::MAX_VALUE_BYTES;
    if let Some(value) = value {
        return Ok(Bytes::from(value));
    }
    if std::io::stdin().is_terminal() {
        eprintln!("Type the value; end with Ctrl-D.");
    }
    let mut value = Vec::new();
    std::io::stdin()
        .take(LIMIT as u64 + 1)
        .read_to_end(&mut value)
        .context("cannot read the value from stdin")?;
    if value.len() > LIMIT {
        return Err(InvalidInput(format!(
            "value: stdin holds more than the value limit of {LIMIT} bytes (2 MiB)"
        ))
        .into());
    }
    Ok(Bytes::from(value))
}

async fn run_put(client: &ClientArgs, args: PutArgs, output: Output) -> anyhow::Result<()> {
    let value = put_value(args.value)?;
    let (table, key) = (Bytes::from(args.table), Bytes::from(args.key));
    let response = client
        .with_failover(|client| {
            let (table, key, value) = (table.clone(), key.clone(), value.clone());
            async move { client.put(table, key, value, args.prev_kv).await }
        })
        .await
        .context("put")?;
    if output.json {
        return output.print_json(&json::put(&response));
    }
    let mut text = format!("OK\nrevision: {}\n", revision(&response.header)).into_bytes();
    if let Some(previous) = &response.prev_kv {
        text.extend_from_slice(b"previous:\n");
        write_key_value(&mut text, previous, false);
    }
    output.print_bytes(&text)
}

async fn run_del(client: &ClientArgs, args: DelArgs, output: Output) -> anyhow::Result<()> {
    let (key, range_end) = args.range.key_and_range_end(&args.key)?;
    let request = DeleteRangeRequest {
        table: Bytes::from(args.table),
        key,
        range_end,
        prev_kv: args.prev_kv,
        count: true,
    };
    let response = client
        .with_failover(|client| {
            let request = request.clone();
            async move { client.delete_range(request).await }
        })
        .await
        .context("del")?;
    if output.json {
        return output.print_json(&json::delete_range(&response));
    }
    let mut text = Vec::new();
    write_delete_range(&mut text, response.deleted, &response.prev_kvs);
    output.print_bytes(&text)
}

/// Reads the transaction script from stdin and builds the request.
fn read_txn(args: &TxnArgs) -> anyhow::Result<TxnRequest> {
    let mut script = String::new();
    if std::io::stdin().is_terminal() {
        eprintln!(
            "Type the transaction: compares, a blank line, success ops, a blank line, failure \
             ops; end with Ctrl-D."
        );
    }
    std::io::stdin()
        .read_to_string(&mut script)
        .context("cannot read the transaction from stdin")?;
    let script = parse_txn_script(&script).map_err(|error| UsageError(error.to_string()))?;
    Ok(TxnRequest {
        table: Bytes::copy_from_slice(args.table.as_bytes()),
        compare: script.compare,
        success: script.success,
        failure: script.failure,
    })
}

async fn run_txn(client: &ClientArgs, request: TxnRequest, output: Output) -> anyhow::Result<()> {
    let response = client
        .with_failover(|client| {
            let request = request.clone();
            async move { client.txn(request).await }
        })
        .await
        .context("txn")?;
    if output.json {
        return output.print_json(&json::txn(&response));
    }
    let mut text = Vec::new();
    write_txn(&mut text, &response);
    output.print_bytes(&text)
}

/// Human output in etcdctl's layout.
fn write_range(out: &mut Vec<u8>, response: &RangeResponse, count_only: bool, keys_only: bool) {
    if count_only {
        out.extend_from_slice(format!("{}\n", response.count).as_bytes());
        return;
    }
    for kv in &response.kvs {
        write_key_value(out, kv, keys_only);
    }
}

/// `--print-value-only`: each value on its own line.
fn write_values(out: &mut Vec<u8>, response: &RangeResponse) {
    for kv in &response.kvs {
        out.extend_from_slice(&kv.value);
        out.push(b'\n');
    }
}

fn write_key_value(out: &mut Vec<u8>, kv: &KeyValue, keys_only: bool) {
    out.extend_from_slice(&kv.key);
    out.push(b'\n');
    if !keys_only {
        out.extend_from_slice(&kv.value);
        out.push(b'\n');
    }
}

fn write_delete_range(out: &mut Vec<u8>, deleted: i64, prev_kvs: &[KeyValue]) {
    out.extend_from_slice(format!("{deleted}\n").as_bytes());
    for kv in prev_kvs {
        write_key_value(out, kv, false);
    }
}

fn write_txn(out: &mut Vec<u8>, response: &TxnResponse) {
    let verdict = if response.succeeded {
        "SUCCESS"
    } else {
        "FAILURE"
    };
    out.extend_from_slice(format!("{verdict}\n").as_bytes());
    for op in &response.responses {
        out.push(b'\n');
        write_response_op(out, op);
    }
}

fn write_response_op(out: &mut Vec<u8>, op: &ResponseOp) {
    match &op.response {
        Some(Response::ResponsePut(put)) => {
            out.extend_from_slice(b"OK\n");
            if let Some(previous) = &put.prev_kv {
                write_key_value(out, previous, false);
            }
        }
        Some(Response::ResponseRange(range)) => {
            for kv in &range.kvs {
                write_key_value(out, kv, false);
            }
        }
        Some(Response::ResponseDeleteRange(delete)) => {
            write_delete_range(out, delete.deleted, &delete.prev_kvs);
        }
        None => out.extend_from_slice(b"(empty response)\n"),
    }
}

fn revision(header: &Option<armada_proto::regatta::v1::ResponseHeader>) -> u64 {
    header.as_ref().map_or(0, |header| header.revision)
}

/// Where and how a command prints.
#[derive(Clone, Copy)]
pub struct Output {
    pub json: bool,
}

impl Output {
    pub fn new(json: bool) -> Output {
        Output { json }
    }

    /// Pretty JSON on stdout.
    pub fn print_json(&self, value: &Value) -> anyhow::Result<()> {
        let mut text = serde_json::to_string_pretty(value)?;
        text.push('\n');
        self.print_bytes(text.as_bytes())
    }

    /// Raw bytes on stdout (keys and values need not be UTF-8).
    pub fn print_bytes(&self, bytes: &[u8]) -> anyhow::Result<()> {
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(bytes)?;
        stdout.flush()?;
        Ok(())
    }
}

/// JSON forms of the KV responses. Every byte string `NAME` (key, value) is two fields, always
/// both present: `NAME` is its text when it is UTF-8 and `null` otherwise, `NAME_base64` its
/// exact bytes in standard base64. Revisions are numbers.
pub mod json {
    use super::*;
    use armada_proto::regatta::v1::ResponseHeader;
    use base64::Engine as _;
    use serde_json::Map;

    /// Inserts `bytes` as `name` (UTF-8 text or null) and `name_base64`.
    pub fn insert_bytes(object: &mut Map<String, Value>, name: &str, bytes: &[u8]) {
        let text = std::str::from_utf8(bytes).map_or(Value::Null, Value::from);
        object.insert(name.to_owned(), text);
        object.insert(
            format!("{name}_base64"),
            Value::from(base64::engine::general_purpose::STANDARD.encode(bytes)),
        );
    }

    pub fn header(header: &Option<ResponseHeader>) -> Value {
        match header {
            None => Value::Null,
            Some(header) => json!({
                "shard_id": header.shard_id,
                "replica_id": header.replica_id,
                "revision": header.revision,
                "raft_term": header.raft_term,
                "raft_leader_id": header.raft_leader_id,
            }),
        }
    }

    pub fn key_value(kv: &KeyValue) -> Value {
        let mut object = Map::new();
        insert_bytes(&mut object, "key", &kv.key);
        object.insert("create_revision".into(), kv.create_revision.into());
        object.insert("mod_revision".into(), kv.mod_revision.into());
        insert_bytes(&mut object, "value", &kv.value);
        Value::Object(object)
    }

    fn key_values(kvs: &[KeyValue]) -> Value {
        Value::Array(kvs.iter().map(key_value).collect())
    }

    pub fn range(response: &RangeResponse) -> Value {
        json!({
            "header": header(&response.header),
            "kvs": key_values(&response.kvs),
            "more": response.more,
            "count": response.count,
        })
    }

    pub fn put(response: &PutResponse) -> Value {
        json!({
            "header": header(&response.header),
            "prev_kv": response.prev_kv.as_ref().map(key_value),
        })
    }

    pub fn delete_range(response: &DeleteRangeResponse) -> Value {
        json!({
            "header": header(&response.header),
            "deleted": response.deleted,
            "prev_kvs": key_values(&response.prev_kvs),
        })
    }

    pub fn txn(response: &TxnResponse) -> Value {
        let responses: Vec<Value> = response.responses.iter().map(response_op).collect();
        json!({
            "header": header(&response.header),
            "succeeded": response.succeeded,
            "responses": responses,
        })
    }

    fn response_op(op: &ResponseOp) -> Value {
        match &op.response {
            Some(Response::ResponseRange(range)) => json!({"range": {
                "kvs": key_values(&range.kvs),
                "more": range.more,
                "count": range.count,
            }}),
            Some(Response::ResponsePut(put)) => json!({"put": {
                "prev_kv": put.prev_kv.as_ref().map(key_value),
            }}),
            Some(Response::ResponseDeleteRange(delete)) => json!({"delete_range": {
                "deleted": delete.deleted,
                "prev_kvs": key_values(&delete.prev_kvs),
            }}),
            None => Value::Null,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use armada_proto::mvcc::v1::response_op;
    use clap::Parser;

    #[derive(Parser)]
    struct TestCli {
        #[command(flatten)]
        kv: KvArgs,
    }

    fn parse(args: &[&str]) -> Result<KvArgs, clap::Error> {
        TestCli::try_parse_from(std::iter::once("kv").chain(args.iter().copied())).map(|cli| cli.kv)
    }

    fn kv(key: &[u8], value: &[u8]) -> KeyValue {
        KeyValue {
            key: Bytes::copy_from_slice(key),
            value: Bytes::copy_from_slice(value),
            create_revision: 2,
            mod_revision: 3,
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5d").is_err());
    }

    #[test]
    fn get_flags_and_global_options_after_the_subcommand() {
        let args = parse(&[
            "get",
            "t",
            "a",
            "--prefix",
            "--limit",
            "5",
            "--address",
            "h:1",
            "--json",
        ])
        .unwrap();
        assert_eq!(args.client.address, "h:1");
        assert!(args.client.json);
        let KvCommand::Get(get) = args.command else {
            panic!("not get");
        };
        assert_eq!(get.limit, 5);
        let (key, end) = get.range.key_and_range_end(&get.key).unwrap();
        assert_eq!((&key[..], &end[..]), (&b"a"[..], &b"b"[..]));
    }

    #[test]
    fn addresses_are_a_comma_separated_list() {
        let args = parse(&["get", "t", "k", "--address", "a:1, b:2,,c:3"]).unwrap();
        assert_eq!(args.client.addresses(), ["a:1", "b:2", "c:3"]);
        assert!(fails_over(&ClientError::Connect {
            address: "a:1".into(),
            detail: "refused".into()
        }));
        assert!(fails_over(&ClientError::from(tonic::Status::unavailable(
            "no leader"
        ))));
        assert!(!fails_over(&ClientError::from(tonic::Status::not_found(
            "t"
        ))));
        assert!(parse(&["get", "t", "k", "--print-value-only", "--keys-only"]).is_err());
    }

    #[test]
    fn range_flags_conflict() {
        assert!(parse(&["get", "t", "a", "--prefix", "--from-key"]).is_err());
        assert!(parse(&["get", "t", "a", "--prefix", "--range-end", "z"]).is_err());
        assert!(parse(&["get", "t", "a", "--keys-only", "--count-only"]).is_err());
        assert!(parse(&["del", "t", "a", "--from-key", "--range-end", "z"]).is_err());
    }

    #[test]
    fn empty_key_needs_a_range() {
        let flags = RangeFlags::default();
        assert!(flags.key_and_range_end("").is_err());
        let from_key = RangeFlags {
            from_key: true,
            ..RangeFlags::default()
        };
        let (key, end) = from_key.key_and_range_end("").unwrap();
        assert_eq!((&key[..], &end[..]), (&b"\0"[..], &b"\0"[..]));
    }

    #[test]
    fn human_txn_output_is_etcdctl_like() {
        let response = TxnResponse {
            header: None,
            succeeded: true,
            responses: vec![
                ResponseOp {
                    response: Some(Response::ResponsePut(response_op::Put { prev_kv: None })),
                },
                ResponseOp {
                    response: Some(Response::ResponseRange(response_op::Range {
                        kvs: vec![kv(b"k", b"v")],
                        more: false,
                        count: 1,
                    })),
                },
                ResponseOp {
                    response: Some(Response::ResponseDeleteRange(response_op::DeleteRange {
                        deleted: 2,
                        prev_kvs: vec![],
                    })),
                },
            ],
        };
        let mut out = Vec::new();
        write_txn(&mut out, &response);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "SUCCESS\n\nOK\n\nk\nv\n\n2\n"
        );
    }

    #[test]
    fn json_bytes_are_readable_or_base64() {
        let value = json::key_value(&kv(b"k", b"\xff\x00"));
        assert_eq!(value["key"], "k");
        assert_eq!(value["key_base64"], "aw==");
        assert_eq!(value["value_base64"], "/wA=");
        assert_eq!(value["value"], Value::Null);
        assert_eq!(value["mod_revision"], 3);
    }
}
