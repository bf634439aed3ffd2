//! `armada bench`: a closed-loop load generator for Armada and, for comparison, etcd.
//!
//! `--clients` workers share `--connections` gRPC channels (round-robin over `--endpoints`).
//! Each worker sends one request, waits for the answer, records its latency in its own
//! HdrHistogram and sends the next: the offered load is what the server sustains. The run is
//! bounded by `--total` measured requests and/or `--duration` (10 s when neither is given).
//!
//! Phases: (1) for reading workloads, a prefill writes every key of the key space once;
//! (2) a warm-up of `--warmup` runs the workload without recording; (3) the measured phase.
//!
//! `--workload replication-lag` is different (open loop, a leader and a follower cluster): see
//! [`replication_lag`].
//!
//! The hot loop allocates as little as we can: keys and the value are built once as `Bytes`
//! (a request clones reference-counted handles), key choice is a SplitMix64 generator per
//! worker, and histograms are per worker, merged at the end.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use armada_client::{ApiChannel, Bytes, CallDecorator, Client, ConnectOptions, connect_channel};
use armada_proto::etcd;
use armada_proto::regatta::v1::{PutRequest, RangeRequest, kv_client::KvClient};
use clap::{Args, ValueEnum};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tonic::transport::Channel;

use super::kv::parse_duration;

mod replication_lag;

/// Highest latency a histogram holds (longer ones are recorded as this), in microseconds.
const MAX_LATENCY_MICROS: u64 = 60_000_000;
/// Run length when neither `--total` nor `--duration` is given.
const DEFAULT_DURATION: Duration = Duration::from_secs(10);
/// How long to wait for a freshly created table to serve.
const TABLE_READY_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BenchTarget {
    Armada,
    Etcd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// Writes of random keys.
    Put,
    /// Serializable single-key reads.
    Range,
    /// Linearizable single-key reads.
    RangeLinearizable,
    /// Serializable reads (`--read-ratio`) and writes.
    Mixed,
    /// Open-loop writes at `--rate` on the leader cluster; a probe of `--follower` measures
    /// the time from each write's acknowledgement to its apply on the follower cluster.
    ReplicationLag,
}

/// `armada bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// System under test.
    #[arg(long, value_enum, default_value = "armada")]
    pub target: BenchTarget,
    /// Comma-separated addresses; connections go round-robin over them.
    /// Default: http://127.0.0.1:8443 (armada), http://127.0.0.1:2379 (etcd).
    #[arg(long, value_delimiter = ',')]
    pub endpoints: Vec<String>,
    /// Concurrent workers (each has one request in flight).
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// gRPC channels shared by the workers (at most --clients).
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Key length in bytes.
    #[arg(long, default_value_t = 16)]
    pub key_size: usize,
    /// Value length in bytes.
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// Fresh pseudo-random bytes for every value (incompressible) instead of one repeated byte
    /// (which gzip, zstd and the storage compress to almost nothing).
    #[arg(long)]
    pub random_values: bool,
    /// Size of the key space.
    #[arg(long, default_value_t = 10_000)]
    pub keys: usize,
    /// Stop after this many measured requests.
    #[arg(long)]
    pub total: Option<u64>,
    /// Stop after this long (default 10s unless --total is given), e.g. 30s.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Run the workload unrecorded this long first.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub warmup: Duration,
    #[arg(long, value_enum, default_value = "put")]
    pub workload: Workload,
    /// Fraction of reads in the mixed workload.
    #[arg(long, default_value_t = 0.9)]
    pub read_ratio: f64,
    /// Armada table to use (created if missing).
    #[arg(long, default_value = "bench")]
    pub table: String,
    /// Skip writing the key space before reading workloads.
    #[arg(long)]
    pub no_prefill: bool,
    /// Bearer token (armada).
    #[arg(long, env = "ARMADA_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// CA file for https:// endpoints.
    #[arg(long)]
    pub ca: Option<std::path::PathBuf>,
    /// Deadline of each request.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub timeout: Duration,
    /// Seed of the key choice.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
    /// replication-lag: writes per second offered to the leader cluster (open loop).
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// replication-lag: API address of the follower-cluster node to observe.
    #[arg(long)]
    pub follower: Option<String>,
    /// replication-lag: most writes in flight at once; a write due when all are busy waits
    /// (and the achieved rate falls short of --rate).
    #[arg(long, default_value_t = 4096)]
    pub max_in_flight: usize,
    /// replication-lag: pause between two probes of the follower (one probe in flight).
    #[arg(long, value_parser = parse_duration, default_value = "1ms")]
    pub poll_interval: Duration,
    /// replication-lag: how long the follower may take, after the last write, to apply it.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub drain_timeout: Duration,
}

impl BenchArgs {
    fn endpoints(&self) -> Vec<String> {
        if !self.endpoints.is_empty() {
            return self.endpoints.clone();
        }
        let default = match self.target {
            BenchTarget::Armada => std::env::var("ARMADA_ADDRESS")
                .unwrap_or_else(|_| "http://127.0.0.1:8443".to_owned()),
            BenchTarget::Etcd => "http://127.0.0.1:2379".to_owned(),
        };
        vec![default]
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.clients == 0 || self.connections == 0 {
            bail!("--clients and --connections must be at least 1");
        }
        if self.keys == 0 || self.key_size == 0 {
            bail!("--keys and --key-size must be at least 1");
        }
        if self.key_size < 8 && (self.keys as u128) > 1u128 << (8 * self.key_size) {
            bail!(
                "--key-size {} cannot hold {} distinct keys",
                self.key_size,
                self.keys
            );
        }
        if !(0.0..=1.0).contains(&self.read_ratio) {
            bail!("--read-ratio must be within 0..=1");
        }
        if self.workload == Workload::ReplicationLag {
            replication_lag::validate(self)?;
        }
        Ok(())
    }

    fn run_duration(&self) -> Option<Duration> {
        match (self.duration, self.total) {
            (Some(duration), _) => Some(duration),
            (None, Some(_)) => None,
            (None, None) => Some(DEFAULT_DURATION),
        }
    }

    fn connect_options(&self) -> ConnectOptions {
        ConnectOptions {
            ca_file: self.ca.clone(),
            token: self.token.clone(),
            timeout: Some(self.timeout),
            connect_timeout: None,
            ..ConnectOptions::default()
        }
    }
}

/// One connection's handle for a worker: the request methods of the target.
#[derive(Clone)]
enum Driver {
    Armada {
        kv: KvClient<ApiChannel>,
        table: Bytes,
    },
    Etcd {
        kv: etcd::kv_client::KvClient<Channel>,
    },
}

impl Driver {
    /// Writes `key` and returns the revision of the write (the response header's).
    async fn put(&mut self, key: &Bytes, value: &Bytes) -> Result<u64, tonic::Status> {
        match self {
            Driver::Armada { kv, table } => {
                let request = PutRequest {
                    table: table.clone(),
                    key: key.clone(),
                    value: value.clone(),
                    prev_kv: false,
                };
                let response = kv.put(request).await?.into_inner();
                Ok(response.header.map_or(0, |header| header.revision))
            }
            Driver::Etcd { kv } => {
                let request = etcd::PutRequest {
                    key: key.clone(),
                    value: value.clone(),
                    ..etcd::PutRequest::default()
                };
                let response = kv.put(request).await?.into_inner();
                Ok(response
                    .header
                    .map_or(0, |header| u64::try_from(header.revision).unwrap_or(0)))
            }
        }
    }

    async fn range(&mut self, key: &Bytes, linearizable: bool) -> Result<(), tonic::Status> {
        match self {
            Driver::Armada { kv, table } => {
                let request = RangeRequest {
                    table: table.clone(),
                    key: key.clone(),
                    linearizable,
                    ..RangeRequest::default()
                };
                kv.range(request).await.map(drop)
            }
            Driver::Etcd { kv } => {
                let request = etcd::RangeRequest {
                    key: key.clone(),
                    serializable: !linearizable,
                    ..etcd::RangeRequest::default()
                };
                kv.range(request).await.map(drop)
            }
        }
    }
}

/// The kind of one request, for histograms.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Operation {
    Put,
    Range,
}

impl Operation {
    fn name(self) -> &'static str {
        match self {
            Operation::Put => "put",
            Operation::Range => "range",
        }
    }
}

/// Keys `0..keys`, each `key_size` bytes: a fixed prefix then the index in decimal (readable
/// with `armada kv get`), or the index in big-endian bytes when the key is too short for that.
fn build_keys(keys: usize, key_size: usize) -> Vec<Bytes> {
    let digits = keys.saturating_sub(1).max(1).ilog10() as usize + 1;
    (0..keys)
        .map(|index| {
            let key = if key_size > digits {
                let mut key = vec![b'k'; key_size - digits];
                key.extend_from_slice(format!("{index:0digits$}").as_bytes());
                key
            } else {
                let bytes = (index as u64).to_be_bytes();
                let mut key = vec![0; key_size];
                let take = key_size.min(8);
                key[key_size - take..].copy_from_slice(&bytes[8 - take..]);
                key
            };
            Bytes::from(key)
        })
        .collect()
}

/// SplitMix64: fast, allocation-free and good enough to pick keys uniformly.
struct KeyChooser(u64);

impl KeyChooser {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut mixed = self.0;
        mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        mixed ^ (mixed >> 31)
    }

    fn index(&mut self, len: usize) -> usize {
        (self.next() % len as u64) as usize
    }

    /// True with probability `ratio`.
    fn chance(&mut self, ratio: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < ratio
    }
}

/// The value of each write: one shared buffer of a repeated byte (free to send) or, with
/// `--random-values`, fresh pseudo-random bytes per write.
#[derive(Clone)]
struct Values {
    fixed: Bytes,
    random: bool,
}

impl Values {
    fn new(args: &BenchArgs) -> Values {
        Values {
            fixed: Bytes::from(vec![b'v'; args.value_size]),
            random: args.random_values,
        }
    }

    fn next(&self, chooser: &mut KeyChooser) -> Bytes {
        if !self.random {
            return self.fixed.clone();
        }
        let size = self.fixed.len();
        let mut value = Vec::with_capacity(size + 8);
        while value.len() < size {
            value.extend_from_slice(&chooser.next().to_le_bytes());
        }
        value.truncate(size);
        Bytes::from(value)
    }
}

/// What every worker reads.
struct Plan {
    keys: Arc<[Bytes]>,
    values: Values,
    workload: Workload,
    read_ratio: f64,
    measure_start: Instant,
    deadline: Option<Instant>,
    total: Option<u64>,
    issued: AtomicU64,
}

/// What one worker measured.
struct WorkerReport {
    latencies: BTreeMap<Operation, Histogram<u64>>,
    errors: BTreeMap<String, ErrorCount>,
}

#[derive(Clone, Default)]
struct ErrorCount {
    count: u64,
    sample: String,
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_MICROS, 3).expect("valid histogram bounds")
}

async fn run_worker(mut driver: Driver, plan: Arc<Plan>, seed: u64) -> WorkerReport {
    let mut chooser = KeyChooser(seed);
    let mut value_chooser = KeyChooser(seed.rotate_left(32));
    let mut latencies = BTreeMap::from([
        (Operation::Put, new_histogram()),
        (Operation::Range, new_histogram()),
    ]);
    let mut errors: BTreeMap<String, ErrorCount> = BTreeMap::new();
    loop {
        let started = Instant::now();
        if plan.deadline.is_some_and(|deadline| started >= deadline) {
            break;
        }
        let measuring = started >= plan.measure_start;
        if measuring
            && let Some(total) = plan.total
            && plan.issued.fetch_add(1, Ordering::Relaxed) >= total
        {
            break;
        }
        let key = &plan.keys[chooser.index(plan.keys.len())];
        let operation = match plan.workload {
            Workload::Put | Workload::ReplicationLag => Operation::Put,
            Workload::Range | Workload::RangeLinearizable => Operation::Range,
            Workload::Mixed if chooser.chance(plan.read_ratio) => Operation::Range,
            Workload::Mixed => Operation::Put,
        };
        let result = match operation {
            Operation::Put => {
                let value = plan.values.next(&mut value_chooser);
                driver.put(key, &value).await.map(drop)
            }
            Operation::Range => {
                let linearizable = plan.workload == Workload::RangeLinearizable;
                driver.range(key, linearizable).await
            }
        };
        if !measuring {
            continue;
        }
        match result {
            Ok(()) => {
                let micros = started.elapsed().as_micros().max(1);
                if let Some(histogram) = latencies.get_mut(&operation) {
                    histogram.saturating_record(u64::try_from(micros).unwrap_or(u64::MAX));
                }
            }
            Err(status) => {
                let entry = errors.entry(format!("{:?}", status.code())).or_default();
                entry.count += 1;
                if entry.sample.is_empty() {
                    entry.sample = status.message().to_owned();
                }
            }
        }
    }
    WorkerReport { latencies, errors }
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    args.validate()?;
    let endpoints = args.endpoints();
    if args.target == BenchTarget::Armada {
        ensure_table(&endpoints[0], &args).await?;
    }
    if args.workload == Workload::ReplicationLag {
        return replication_lag::run(&args, &endpoints).await;
    }
    let drivers = connect_drivers(&endpoints, &args).await?;
    let keys: Arc<[Bytes]> = build_keys(args.keys, args.key_size).into();
    let values = Values::new(&args);
    let reads = args.workload != Workload::Put;
    if reads && !args.no_prefill {
        prefill(&drivers, &keys, &values, args.clients, args.seed).await?;
    }
    let measure_start = Instant::now() + args.warmup;
    let plan = Arc::new(Plan {
        keys,
        values,
        workload: args.workload,
        read_ratio: args.read_ratio,
        measure_start,
        deadline: args.run_duration().map(|duration| measure_start + duration),
        total: args.total,
        issued: AtomicU64::new(0),
    });
    let workers: Vec<_> = (0..args.clients)
        .map(|worker| {
            let driver = drivers[worker % drivers.len()].clone();
            let seed = args.seed ^ (worker as u64).wrapping_mul(0x2545_F491_4F6C_DD1D);
            tokio::spawn(run_worker(driver, plan.clone(), seed))
        })
        .collect();
    let mut reports = Vec::with_capacity(workers.len());
    for worker in workers {
        reports.push(worker.await.context("a bench worker panicked")?);
    }
    let elapsed = Instant::now().saturating_duration_since(measure_start);
    let summary = Summary::new(&args, &endpoints, drivers.len(), elapsed, reports);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary.json())?);
    } else {
        print!("{}", summary.text());
    }
    Ok(())
}

/// Creates the table if missing and waits until it serves reads.
async fn ensure_table(endpoint: &str, args: &BenchArgs) -> anyhow::Result<()> {
    let client = Client::connect_with(endpoint, &args.connect_options()).await?;
    match client.create_table(args.table.clone()).await {
        Ok(_) => {}
        Err(error) if error.code() == Some(tonic::Code::AlreadyExists) => {}
        Err(error) => return Err(error).context(format!("create table {:?}", args.table)),
    }
    let deadline = Instant::now() + TABLE_READY_TIMEOUT;
    loop {
        match client.get(args.table.clone(), "bench-ready-probe").await {
            Ok(_) => return Ok(()),
            Err(error) if Instant::now() < deadline => {
                tracing::debug!(%error, "table not ready yet");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => {
                return Err(error).context(format!("table {:?} did not become ready", args.table));
            }
        }
    }
}

async fn connect_drivers(endpoints: &[String], args: &BenchArgs) -> anyhow::Result<Vec<Driver>> {
    let options = args.connect_options();
    let decorator = CallDecorator::new(&options)?;
    let table = Bytes::from(args.table.clone());
    let mut drivers = Vec::new();
    for connection in 0..args.connections.min(args.clients) {
        let endpoint = &endpoints[connection % endpoints.len()];
        let channel = connect_channel(endpoint, &options).await?;
        drivers.push(match args.target {
            BenchTarget::Armada => Driver::Armada {
                kv: Client::from_channel(channel, decorator.clone()).kv(),
                table: table.clone(),
            },
            BenchTarget::Etcd => Driver::Etcd {
                kv: etcd::kv_client::KvClient::new(channel)
                    .max_decoding_message_size(armada_client::MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(armada_client::MAX_MESSAGE_BYTES),
            },
        });
    }
    Ok(drivers)
}

/// Writes every key once (so reads find data), `clients` writes in flight.
async fn prefill(
    drivers: &[Driver],
    keys: &Arc<[Bytes]>,
    values: &Values,
    clients: usize,
    seed: u64,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let writers: Vec<_> = (0..clients)
        .map(|writer| {
            let mut driver = drivers[writer % drivers.len()].clone();
            let keys = keys.clone();
            let values = values.clone();
            let mut chooser = KeyChooser(seed ^ (writer as u64).rotate_left(17));
            tokio::spawn(async move {
                for key in keys.iter().skip(writer).step_by(clients) {
                    driver.put(key, &values.next(&mut chooser)).await?;
                }
                Ok::<(), tonic::Status>(())
            })
        })
        .collect();
    for writer in writers {
        writer
            .await
            .context("a prefill writer panicked")?
            .map_err(armada_client::ClientError::from)
            .context("prefill")?;
    }
    eprintln!(
        "prefilled {} keys in {:.1} s",
        keys.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Merged results of a run.
struct Summary {
    description: Value,
    elapsed: Duration,
    latencies: BTreeMap<Operation, Histogram<u64>>,
    errors: BTreeMap<String, ErrorCount>,
}

impl Summary {
    fn new(
        args: &BenchArgs,
        endpoints: &[String],
        connections: usize,
        elapsed: Duration,
        reports: Vec<WorkerReport>,
    ) -> Summary {
        let mut latencies: BTreeMap<Operation, Histogram<u64>> = BTreeMap::new();
        let mut errors: BTreeMap<String, ErrorCount> = BTreeMap::new();
        for report in reports {
            for (operation, histogram) in report.latencies {
                let merged = latencies.entry(operation).or_insert_with(new_histogram);
                merged.add(histogram).expect("histograms share bounds");
            }
            for (code, count) in report.errors {
                let merged = errors.entry(code).or_default();
                merged.count += count.count;
                if merged.sample.is_empty() {
                    merged.sample = count.sample;
                }
            }
        }
        latencies.retain(|_, histogram| !histogram.is_empty());
        let description = json!({
            "target": format!("{:?}", args.target).to_lowercase(),
            "workload": args.workload.to_possible_value().map(|value| value.get_name().to_owned()),
            "endpoints": endpoints,
            "clients": args.clients,
            "connections": connections,
            "key_size": args.key_size,
            "value_size": args.value_size,
            "random_values": args.random_values,
            "keys": args.keys,
            "read_ratio": (args.workload == Workload::Mixed).then_some(args.read_ratio),
        });
        Summary {
            description,
            elapsed,
            latencies,
            errors,
        }
    }

    fn ops_per_second(&self, count: u64) -> f64 {
        count as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }

    fn all_operations(&self) -> Histogram<u64> {
        let mut all = new_histogram();
        for histogram in self.latencies.values() {
            all.add(histogram).expect("histograms share bounds");
        }
        all
    }

    fn operation_json(&self, histogram: &Histogram<u64>) -> Value {
        json!({
            "count": histogram.len(),
            "ops_per_s": self.ops_per_second(histogram.len()),
            "latency_us": {
                "p50": histogram.value_at_quantile(0.5),
                "p99": histogram.value_at_quantile(0.99),
                "p999": histogram.value_at_quantile(0.999),
                "max": histogram.max(),
                "mean": histogram.mean(),
            },
        })
    }

    fn json(&self) -> Value {
        let mut value = self.description.clone();
        let operations: serde_json::Map<String, Value> = self
            .latencies
            .iter()
            .map(|(operation, histogram)| {
                (operation.name().to_owned(), self.operation_json(histogram))
            })
            .collect();
        let errors: serde_json::Map<String, Value> = self
            .errors
            .iter()
            .map(|(code, count)| {
                (
                    code.clone(),
                    json!({"count": count.count, "sample": count.sample}),
                )
            })
            .collect();
        value["duration_s"] = json!(self.elapsed.as_secs_f64());
        value["total"] = self.operation_json(&self.all_operations());
        value["operations"] = Value::Object(operations);
        value["errors"] = json!(self.errors.values().map(|count| count.count).sum::<u64>());
        value["error_codes"] = Value::Object(errors);
        value
    }

    fn text(&self) -> String {
        let description = &self.description;
        let mut text = format!(
            "{} {} ({} clients, {} connections, key {} B, value {} B, {} keys) for {:.1} s\n",
            description["target"].as_str().unwrap_or_default(),
            description["workload"].as_str().unwrap_or_default(),
            description["clients"],
            description["connections"],
            description["key_size"],
            description["value_size"],
            description["keys"],
            self.elapsed.as_secs_f64(),
        );
        let mut table = Table::new();
        table.load_preset(UTF8_FULL_CONDENSED).set_header([
            "op", "count", "ops/s", "p50 ms", "p99 ms", "p999 ms", "max ms",
        ]);
        let all = self.all_operations();
        let mut rows: Vec<(&str, &Histogram<u64>)> = self
            .latencies
            .iter()
            .map(|(operation, histogram)| (operation.name(), histogram))
            .collect();
        if rows.len() > 1 {
            rows.push(("all", &all));
        }
        let millis = |micros: u64| format!("{:.3}", micros as f64 / 1000.0);
        for (name, histogram) in rows {
            table.add_row([
                name.to_owned(),
                histogram.len().to_string(),
                format!("{:.0}", self.ops_per_second(histogram.len())),
                millis(histogram.value_at_quantile(0.5)),
                millis(histogram.value_at_quantile(0.99)),
                millis(histogram.value_at_quantile(0.999)),
                millis(histogram.max()),
            ]);
        }
        text.push_str(&format!("{table}\n"));
        let error_total: u64 = self.errors.values().map(|count| count.count).sum();
        text.push_str(&format!("errors: {error_total}\n"));
        for (code, count) in &self.errors {
            text.push_str(&format!("  {code} x{}: {}\n", count.count, count.sample));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct TestCli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn parse(args: &[&str]) -> BenchArgs {
        TestCli::try_parse_from(std::iter::once("bench").chain(args.iter().copied()))
            .expect("valid arguments")
            .bench
    }

    #[test]
    fn keys_are_distinct_and_sized() {
        for (count, size) in [(10_000, 16), (1000, 3), (300, 1), (1, 1), (5, 64)] {
            let keys = build_keys(count, size);
            assert!(keys.iter().all(|key| key.len() == size));
            let distinct: std::collections::BTreeSet<_> = keys.iter().collect();
            assert_eq!(distinct.len(), count.min(1 << (8 * size.min(7))));
        }
        assert_eq!(build_keys(100, 8)[7], &b"kkkkkk07"[..]);
    }

    #[test]
    fn key_choice_is_deterministic_and_in_range() {
        let mut first = KeyChooser(42);
        let mut second = KeyChooser(42);
        for _ in 0..1000 {
            let index = first.index(7);
            assert_eq!(index, second.index(7));
            assert!(index < 7);
        }
        let reads = (0..10_000).filter(|_| first.chance(0.9)).count();
        assert!((8_500..9_500).contains(&reads), "{reads}");
    }

    #[test]
    fn arguments_and_bounds() {
        let args = parse(&["--endpoints", "a:1,b:2", "--workload", "range-linearizable"]);
        assert_eq!(args.endpoints(), ["a:1", "b:2"]);
        assert_eq!(args.workload, Workload::RangeLinearizable);
        assert_eq!(args.run_duration(), Some(DEFAULT_DURATION));
        assert_eq!(parse(&["--total", "100"]).run_duration(), None);
        let etcd = parse(&["--target", "etcd"]);
        assert_eq!(etcd.endpoints(), ["http://127.0.0.1:2379"]);
        assert!(parse(&["--clients", "0"]).validate().is_err());
        assert!(
            parse(&["--key-size", "1", "--keys", "1000"])
                .validate()
                .is_err()
        );
        assert!(parse(&["--read-ratio", "1.5"]).validate().is_err());
        assert!(parse(&[]).validate().is_ok());
    }

    #[test]
    fn values_are_sized_and_random_only_when_asked() {
        let mut chooser = KeyChooser(7);
        let fixed = Values::new(&parse(&["--value-size", "13"]));
        assert_eq!(fixed.next(&mut chooser), Bytes::from(vec![b'v'; 13]));
        let random = Values::new(&parse(&["--value-size", "13", "--random-values"]));
        let first = random.next(&mut chooser);
        let second = random.next(&mut chooser);
        assert_eq!((first.len(), second.len()), (13, 13));
        assert_ne!(first, second);
        let empty = Values::new(&parse(&["--value-size", "0", "--random-values"]));
        assert!(empty.next(&mut chooser).is_empty());
    }

    #[test]
    fn replication_lag_arguments() {
        let lag = ["--workload", "replication-lag"];
        assert!(parse(&lag).validate().is_err(), "needs --follower");
        let with = |extra: &[&str]| {
            let mut args = vec!["--workload", "replication-lag", "--follower", "f:1"];
            args.extend_from_slice(extra);
            parse(&args)
        };
        let args = with(&["--rate", "10000", "--poll-interval", "2ms"]);
        assert!(args.validate().is_ok());
        assert_eq!(args.rate, 10_000.0);
        assert_eq!(args.poll_interval, Duration::from_millis(2));
        assert!(with(&["--rate", "0"]).validate().is_err());
        assert!(with(&["--target", "etcd"]).validate().is_err());
        assert!(with(&["--total", "10"]).validate().is_err());
        assert!(with(&["--max-in-flight", "0"]).validate().is_err());
    }
}
