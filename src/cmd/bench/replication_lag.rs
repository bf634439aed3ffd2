//! `armada bench --workload replication-lag`: how long a write acknowledged by the leader
//! cluster takes to become visible on a follower cluster.
//!
//! Two parts run at once for `--warmup` + `--duration`:
//!
//! - **Writer (open loop).** Write `i` is due at `i / --rate` seconds after the start, whatever
//!   happened to the earlier ones: each is its own task, round-robin over `--connections`
//!   channels to `--endpoints`, at most `--max-in-flight` at once. It records the write's
//!   revision (response header) and the instant its answer arrived, which is just after the
//!   leader cluster committed and applied it. A dispatcher that cannot keep up (tokio timers
//!   have 1 ms granularity, so writes leave in small bursts) or hits the in-flight cap makes the
//!   achieved rate fall short of `--rate`; the report says so.
//! - **Observer.** One probe in flight to `--follower`: a serializable Range of a key that does
//!   not exist, every `--poll-interval`, recording `(instant the answer arrived,
//!   header.revision)`. On a follower cluster the header revision is the leader index it has
//!   applied, i.e. the revision the leader returned for that write.
//!
//! A write counts as applied on the follower at the first observation with a revision at or
//! above its own ([`apply_lags`]); its lag is that instant minus the leader's answer. Both
//! instants are when an answer *arrived*, so the lag is an upper bound by up to one probe
//! interval plus one probe's round trip. A follower may show a write before the leader's answer
//! reaches the client: such negative lags are clamped to 0 and counted. Writes due during the
//! warm-up are not reported; after the last write the observer keeps probing until the follower
//! reaches its revision or `--drain-timeout` passes (writes never seen are counted apart).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use armada_client::{ApiChannel, Bytes, Client, ClientError};
use armada_proto::regatta::v1::{RangeRequest, kv_client::KvClient};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::{
    BenchArgs, BenchTarget, Driver, ErrorCount, KeyChooser, Values, build_keys, connect_drivers,
    new_histogram,
};

/// A key the workload never writes: the follower probe reads it to learn the revision.
const PROBE_KEY: &[u8] = b"armada-bench-replication-lag-probe";
/// How long the follower may take to serve the table and catch up before the run starts.
const FOLLOWER_READY_TIMEOUT: Duration = Duration::from_secs(120);
/// An achieved rate below this fraction of `--rate` is reported as a shortfall.
const RATE_SHORTFALL_RATIO: f64 = 0.97;

/// A write the leader cluster acknowledged: its revision and when the answer arrived (since
/// the start of the run).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct AcknowledgedWrite {
    revision: u64,
    acknowledged_at: Duration,
}

/// One probe of the follower: the revision it served and when the answer arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Observation {
    revision: u64,
    observed_at: Duration,
}

/// When a write became visible on the follower, relative to the leader's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ApplyLag {
    /// `clamped`: the follower showed the write before the leader's answer arrived; `lag` is 0.
    Applied { lag: Duration, clamped: bool },
    /// No observation reached the write's revision.
    NotObserved,
}

/// The lag of each write (same order): the first observation whose revision is at or above
/// the write's, minus the write's acknowledgement, clamped at zero. `observations` are in the
/// order they were made; a revision lower than an earlier one (another replica answering)
/// does not hide what was already seen.
fn apply_lags(writes: &[AcknowledgedWrite], observations: &[Observation]) -> Vec<ApplyLag> {
    debug_assert!(
        observations
            .windows(2)
            .all(|pair| pair[0].observed_at <= pair[1].observed_at)
    );
    let highest_seen: Vec<u64> = observations
        .iter()
        .scan(0, |highest, observation| {
            *highest = observation.revision.max(*highest);
            Some(*highest)
        })
        .collect();
    writes
        .iter()
        .map(|write| {
            let first = highest_seen.partition_point(|&revision| revision < write.revision);
            match observations.get(first) {
                None => ApplyLag::NotObserved,
                Some(observation) => {
                    match observation.observed_at.checked_sub(write.acknowledged_at) {
                        Some(lag) => ApplyLag::Applied {
                            lag,
                            clamped: false,
                        },
                        None => ApplyLag::Applied {
                            lag: Duration::ZERO,
                            clamped: true,
                        },
                    }
                }
            }
        })
        .collect()
}

pub(super) fn validate(args: &BenchArgs) -> anyhow::Result<()> {
    if args.target != BenchTarget::Armada {
        bail!("--workload replication-lag needs --target armada");
    }
    if args.follower.is_none() {
        bail!("--workload replication-lag needs --follower <API address of a follower node>");
    }
    if !(args.rate.is_finite() && args.rate > 0.0) {
        bail!("--rate must be a positive number of writes per second");
    }
    if args.max_in_flight == 0 {
        bail!("--max-in-flight must be at least 1");
    }
    if args.total.is_some() {
        bail!("--workload replication-lag runs for --duration; --total does not apply");
    }
    Ok(())
}

pub(super) async fn run(args: &BenchArgs, endpoints: &[String]) -> anyhow::Result<()> {
    let follower_address = args.follower.clone().context("--follower is required")?;
    let table = Bytes::from(args.table.clone());
    let options = args.connect_options();
    let mut leader_cluster_probe = Client::connect_with(&endpoints[0], &options).await?.kv();
    let mut follower_probe = Client::connect_with(&follower_address, &options)
        .await?
        .kv();
    wait_for_follower(&mut leader_cluster_probe, &mut follower_probe, &table).await?;
    let drivers = connect_drivers(endpoints, args).await?;
    let duration = args.run_duration().unwrap_or(super::DEFAULT_DURATION);
    let started = Instant::now();
    let schedule = Schedule {
        started,
        rate: args.rate,
        measured_from: args.warmup,
        measured_until: args.warmup + duration,
    };
    let (stop_sender, stop) = watch::channel(None);
    let observer = tokio::spawn(observe(
        follower_probe,
        table.clone(),
        started,
        args.poll_interval,
        stop,
    ));
    let written = write(&drivers, args, &schedule).await?;
    let highest_revision = written
        .acknowledged
        .iter()
        .map(|write| write.revision)
        .max()
        .unwrap_or(0);
    let _ = stop_sender.send(Some(StopWhen {
        revision: highest_revision,
        deadline: Instant::now() + args.drain_timeout,
    }));
    let observed = observer.await.context("the follower observer panicked")?;
    let report = Report::new(
        args,
        endpoints,
        &follower_address,
        duration,
        written,
        observed,
    );
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.json())?);
    } else {
        print!("{}", report.text());
    }
    Ok(())
}

/// A serializable read of [`PROBE_KEY`]: the revision the node serves.
async fn probe_revision(
    kv: &mut KvClient<ApiChannel>,
    table: &Bytes,
) -> Result<u64, tonic::Status> {
    let request = RangeRequest {
        table: table.clone(),
        key: Bytes::from_static(PROBE_KEY),
        ..RangeRequest::default()
    };
    let response = kv.range(request).await?.into_inner();
    Ok(response.header.map_or(0, |header| header.revision))
}

/// Waits until the follower serves the table at the leader's current revision, so that the
/// run measures tailing, not the follower's discovery of the table or its bootstrap.
async fn wait_for_follower(
    leader_cluster: &mut KvClient<ApiChannel>,
    follower: &mut KvClient<ApiChannel>,
    table: &Bytes,
) -> anyhow::Result<()> {
    let leader_cluster_revision = probe_revision(leader_cluster, table)
        .await
        .map_err(ClientError::from)
        .context("reading the table's revision on the leader cluster")?;
    let deadline = Instant::now() + FOLLOWER_READY_TIMEOUT;
    let mut last = String::from("no answer yet");
    while Instant::now() < deadline {
        match probe_revision(follower, table).await {
            Ok(revision) if revision >= leader_cluster_revision => return Ok(()),
            Ok(revision) => last = format!("at revision {revision} of {leader_cluster_revision}"),
            Err(status) => last = status.message().to_owned(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!(
        "the follower did not serve table {:?} at revision {leader_cluster_revision} within {:?} ({last})",
        String::from_utf8_lossy(table),
        FOLLOWER_READY_TIMEOUT
    )
}

/// When write `i` is due and which writes are reported.
struct Schedule {
    started: Instant,
    rate: f64,
    measured_from: Duration,
    measured_until: Duration,
}

impl Schedule {
    /// Offset of write `index` from the start.
    fn due(&self, index: u64) -> Duration {
        Duration::from_secs_f64(index as f64 / self.rate)
    }

    /// Writes due before the end of the run.
    fn total(&self) -> u64 {
        (self.measured_until.as_secs_f64() * self.rate).ceil() as u64
    }

    /// Writes due by `now` (write 0 is due at the start).
    fn due_by(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.started).as_secs_f64();
        ((elapsed * self.rate).floor() as u64 + 1).min(self.total())
    }

    fn measured(&self, due: Duration) -> bool {
        due >= self.measured_from && due < self.measured_until
    }
}

/// What one write task reports.
struct WriteOutcome {
    due: Duration,
    acknowledged_at: Duration,
    result: Result<u64, tonic::Status>,
}

/// The measured writes.
struct Written {
    acknowledged: Vec<AcknowledgedWrite>,
    /// From the instant each write was due to its answer (open-loop latency: includes any
    /// wait for the dispatcher or the in-flight cap).
    put_latency: Histogram<u64>,
    errors: BTreeMap<String, ErrorCount>,
    /// Measured writes due in the window and issued before its end.
    issued: u64,
    /// Measured writes due in the window.
    due: u64,
    /// Times a due write waited for a free in-flight slot.
    in_flight_waits: u64,
}

impl Written {
    fn record(&mut self, outcome: WriteOutcome) {
        let micros = outcome
            .acknowledged_at
            .saturating_sub(outcome.due)
            .as_micros();
        match outcome.result {
            Ok(revision) => {
                self.put_latency
                    .saturating_record(u64::try_from(micros).unwrap_or(u64::MAX).max(1));
                self.acknowledged.push(AcknowledgedWrite {
                    revision,
                    acknowledged_at: outcome.acknowledged_at,
                });
            }
            Err(status) => {
                let entry = self
                    .errors
                    .entry(format!("{:?}", status.code()))
                    .or_default();
                entry.count += 1;
                if entry.sample.is_empty() {
                    entry.sample = status.message().to_owned();
                }
            }
        }
    }
}

/// The open-loop writer: issues every write when due, collects the answers.
async fn write(
    drivers: &[Driver],
    args: &BenchArgs,
    schedule: &Schedule,
) -> anyhow::Result<Written> {
    let keys: Vec<Bytes> = build_keys(args.keys, args.key_size);
    let values = Values::new(args);
    let mut chooser = KeyChooser(args.seed);
    let mut value_chooser = KeyChooser(args.seed.rotate_left(32));
    let mut in_flight: JoinSet<Option<WriteOutcome>> = JoinSet::new();
    let mut written = Written {
        acknowledged: Vec::new(),
        put_latency: new_histogram(),
        errors: BTreeMap::new(),
        issued: 0,
        due: 0,
        in_flight_waits: 0,
    };
    let mut next = 0u64;
    let end = schedule.started + schedule.measured_until;
    while next < schedule.total() && Instant::now() < end {
        while let Some(done) = in_flight.try_join_next() {
            if let Some(outcome) = done.context("a write task panicked")? {
                written.record(outcome);
            }
        }
        let due_now = schedule.due_by(Instant::now());
        while next < due_now && in_flight.len() < args.max_in_flight {
            let due = schedule.due(next);
            let measured = schedule.measured(due);
            written.issued += u64::from(measured);
            let mut driver = drivers[next as usize % drivers.len()].clone();
            let key = keys[chooser.index(keys.len())].clone();
            let value = values.next(&mut value_chooser);
            let started = schedule.started;
            in_flight.spawn(async move {
                let result = driver.put(&key, &value).await;
                let acknowledged_at = started.elapsed();
                measured.then_some(WriteOutcome {
                    due,
                    acknowledged_at,
                    result,
                })
            });
            next += 1;
        }
        if next < due_now {
            written.in_flight_waits += 1;
            if let Some(done) = in_flight.join_next().await
                && let Some(outcome) = done.context("a write task panicked")?
            {
                written.record(outcome);
            }
        } else {
            tokio::time::sleep_until((schedule.started + schedule.due(next)).into()).await;
        }
    }
    while let Some(done) = in_flight.join_next().await {
        if let Some(outcome) = done.context("a write task panicked")? {
            written.record(outcome);
        }
    }
    let not_issued = (next..schedule.total())
        .filter(|&index| schedule.measured(schedule.due(index)))
        .count();
    written.due = written.issued + not_issued as u64;
    Ok(written)
}

/// When the observer may stop: the follower reached `revision`, or `deadline` passed.
#[derive(Clone, Copy, Debug)]
struct StopWhen {
    revision: u64,
    deadline: Instant,
}

/// What the observer saw.
struct Observed {
    observations: Vec<Observation>,
    errors: BTreeMap<String, ErrorCount>,
    /// From the first probe to the last.
    span: Duration,
}

/// Probes the follower every `interval` (one probe in flight) until told when to stop.
async fn observe(
    mut follower: KvClient<ApiChannel>,
    table: Bytes,
    started: Instant,
    interval: Duration,
    stop: watch::Receiver<Option<StopWhen>>,
) -> Observed {
    let mut observed = Observed {
        observations: Vec::new(),
        errors: BTreeMap::new(),
        span: Duration::ZERO,
    };
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let first = Instant::now();
    loop {
        ticks.tick().await;
        let probe = probe_revision(&mut follower, &table).await;
        let observed_at = started.elapsed();
        let revision = match probe {
            Ok(revision) => {
                observed.observations.push(Observation {
                    revision,
                    observed_at,
                });
                Some(revision)
            }
            Err(status) => {
                let entry = observed
                    .errors
                    .entry(format!("{:?}", status.code()))
                    .or_default();
                entry.count += 1;
                if entry.sample.is_empty() {
                    entry.sample = status.message().to_owned();
                }
                None
            }
        };
        let stop_when = *stop.borrow();
        if let Some(stop_when) = stop_when
            && (revision.is_some_and(|revision| revision >= stop_when.revision)
                || Instant::now() >= stop_when.deadline)
        {
            break;
        }
    }
    observed.span = first.elapsed();
    observed
}

/// The results of a run.
struct Report {
    description: Value,
    duration: Duration,
    rate: f64,
    written: Written,
    observed: Observed,
    lag: Histogram<u64>,
    clamped: u64,
    not_observed: u64,
}

impl Report {
    fn new(
        args: &BenchArgs,
        endpoints: &[String],
        follower: &str,
        duration: Duration,
        written: Written,
        observed: Observed,
    ) -> Report {
        let mut lag = new_histogram();
        let mut clamped = 0;
        let mut not_observed = 0;
        for outcome in apply_lags(&written.acknowledged, &observed.observations) {
            match outcome {
                ApplyLag::Applied {
                    lag: latency,
                    clamped: was_clamped,
                } => {
                    clamped += u64::from(was_clamped);
                    // A clamped lag is recorded as 0 (the histogram holds 0 exactly).
                    let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
                    lag.saturating_record(micros);
                }
                ApplyLag::NotObserved => not_observed += 1,
            }
        }
        let description = json!({
            "target": "armada",
            "workload": "replication-lag",
            "endpoints": endpoints,
            "follower": follower,
            "connections": args.connections.min(args.clients),
            "key_size": args.key_size,
            "value_size": args.value_size,
            "random_values": args.random_values,
            "keys": args.keys,
            "rate": args.rate,
            "max_in_flight": args.max_in_flight,
            "poll_interval_us": args.poll_interval.as_micros() as u64,
            "warmup_s": args.warmup.as_secs_f64(),
        });
        Report {
            description,
            duration,
            rate: args.rate,
            written,
            observed,
            lag,
            clamped,
            not_observed,
        }
    }

    fn achieved_rate(&self) -> f64 {
        self.written.acknowledged.len() as f64 / self.duration.as_secs_f64().max(f64::EPSILON)
    }

    fn short_of_rate(&self) -> bool {
        self.achieved_rate() < self.rate * RATE_SHORTFALL_RATIO
    }

    fn mean_probe_interval(&self) -> Duration {
        let probes = self.observed.observations.len() as u32
            + self
                .observed
                .errors
                .values()
                .map(|count| count.count as u32)
                .sum::<u32>();
        self.observed.span / probes.max(1)
    }

    fn histogram_json(histogram: &Histogram<u64>) -> Value {
        json!({
            "p50": histogram.value_at_quantile(0.5),
            "p90": histogram.value_at_quantile(0.9),
            "p99": histogram.value_at_quantile(0.99),
            "p999": histogram.value_at_quantile(0.999),
            "max": histogram.max(),
            "mean": histogram.mean(),
        })
    }

    fn errors_json(errors: &BTreeMap<String, ErrorCount>) -> Value {
        Value::Object(
            errors
                .iter()
                .map(|(code, count)| {
                    (
                        code.clone(),
                        json!({"count": count.count, "sample": count.sample}),
                    )
                })
                .collect(),
        )
    }

    fn json(&self) -> Value {
        let mut value = self.description.clone();
        let write_errors: u64 = self.written.errors.values().map(|count| count.count).sum();
        value["duration_s"] = json!(self.duration.as_secs_f64());
        value["achieved_rate"] = json!(self.achieved_rate());
        value["rate_shortfall"] = json!(self.short_of_rate());
        value["writes"] = json!({
            "due": self.written.due,
            "issued": self.written.issued,
            "acknowledged": self.written.acknowledged.len(),
            "in_flight_waits": self.written.in_flight_waits,
            "latency_us": Self::histogram_json(&self.written.put_latency),
        });
        value["lag"] = json!({
            "count": self.lag.len(),
            "clamped_to_zero": self.clamped,
            "not_observed": self.not_observed,
            "latency_us": Self::histogram_json(&self.lag),
        });
        value["probes"] = json!({
            "count": self.observed.observations.len(),
            "mean_interval_us": self.mean_probe_interval().as_micros() as u64,
            "errors": Self::errors_json(&self.observed.errors),
        });
        value["errors"] = json!(write_errors);
        value["error_codes"] = Self::errors_json(&self.written.errors);
        value
    }

    fn text(&self) -> String {
        let mut text = self.heading();
        text.push_str(&format!("{}\n", self.latency_table()));
        text.push_str(&self.counts_text());
        text
    }

    /// The first line: what was offered, where, and for how long.
    fn heading(&self) -> String {
        let description = &self.description;
        format!(
            "armada replication-lag ({}/s offered, value {} B, {} keys, {} connections) \
             leader {} follower {} for {:.1} s after {:.1} s warm-up\n",
            self.rate,
            description["value_size"],
            description["keys"],
            description["connections"],
            description["endpoints"]
                .as_array()
                .map(|endpoints| {
                    endpoints
                        .iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default(),
            description["follower"].as_str().unwrap_or_default(),
            self.duration.as_secs_f64(),
            description["warmup_s"],
        )
    }

    /// Put latency and replication lag, as quantiles.
    fn latency_table(&self) -> Table {
        let mut table = Table::new();
        table.load_preset(UTF8_FULL_CONDENSED).set_header([
            "measure", "count", "ops/s", "p50 ms", "p90 ms", "p99 ms", "p999 ms", "max ms",
        ]);
        let millis = |micros: u64| format!("{:.3}", micros as f64 / 1000.0);
        let rows = [
            ("put (due → leader ack)", &self.written.put_latency),
            ("lag (leader ack → follower)", &self.lag),
        ];
        for (name, histogram) in rows {
            table.add_row([
                name.to_owned(),
                histogram.len().to_string(),
                format!("{:.0}", self.achieved_rate()),
                millis(histogram.value_at_quantile(0.5)),
                millis(histogram.value_at_quantile(0.9)),
                millis(histogram.value_at_quantile(0.99)),
                millis(histogram.value_at_quantile(0.999)),
                millis(histogram.max()),
            ]);
        }
        table
    }

    /// Writes, lag outliers, probes and errors, a line each (errors by code below).
    fn counts_text(&self) -> String {
        let mut text = format!(
            "writes: {} acknowledged, {} issued, {} due; achieved {:.0}/s of {}/s\n",
            self.written.acknowledged.len(),
            self.written.issued,
            self.written.due,
            self.achieved_rate(),
            self.rate,
        );
        if self.short_of_rate() {
            text.push_str(&format!(
                "WARNING: the achieved rate is short of --rate (below {:.0} %); waited for an \
                 in-flight slot {} times\n",
                RATE_SHORTFALL_RATIO * 100.0,
                self.written.in_flight_waits,
            ));
        }
        text.push_str(&format!(
            "lag: {} clamped to 0 (the follower showed the write before the leader's answer \
             arrived), {} never observed\n",
            self.clamped, self.not_observed,
        ));
        let probe_errors: u64 = self.observed.errors.values().map(|count| count.count).sum();
        text.push_str(&format!(
            "follower probes: {}, one every {:.3} ms on average, {} errors\n",
            self.observed.observations.len(),
            self.mean_probe_interval().as_secs_f64() * 1000.0,
            probe_errors,
        ));
        for (code, count) in &self.observed.errors {
            text.push_str(&format!(
                "  probe {code} x{}: {}\n",
                count.count, count.sample
            ));
        }
        let write_errors: u64 = self.written.errors.values().map(|count| count.count).sum();
        text.push_str(&format!("errors: {write_errors}\n"));
        for (code, count) in &self.written.errors {
            text.push_str(&format!("  {code} x{}: {}\n", count.count, count.sample));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn millis(value: u64) -> Duration {
        Duration::from_millis(value)
    }

    fn write(revision: u64, acknowledged_ms: u64) -> AcknowledgedWrite {
        AcknowledgedWrite {
            revision,
            acknowledged_at: millis(acknowledged_ms),
        }
    }

    fn observation(revision: u64, observed_ms: u64) -> Observation {
        Observation {
            revision,
            observed_at: millis(observed_ms),
        }
    }

    fn applied(lag_ms: u64) -> ApplyLag {
        ApplyLag::Applied {
            lag: millis(lag_ms),
            clamped: false,
        }
    }

    #[test]
    fn lag_is_the_first_observation_at_or_above_the_revision() {
        let observations = [
            observation(1, 10),
            observation(3, 20),
            observation(3, 21),
            observation(7, 30),
        ];
        let writes = [write(2, 12), write(3, 15), write(4, 16), write(7, 29)];
        assert_eq!(
            apply_lags(&writes, &observations),
            [applied(8), applied(5), applied(14), applied(1)]
        );
    }

    #[test]
    fn a_follower_ahead_of_the_leaders_answer_is_clamped_to_zero() {
        let observations = [observation(5, 10), observation(6, 20)];
        let writes = [write(5, 11), write(6, 20)];
        assert_eq!(
            apply_lags(&writes, &observations),
            [
                ApplyLag::Applied {
                    lag: Duration::ZERO,
                    clamped: true
                },
                // Exactly at the same instant: zero, not clamped.
                applied(0),
            ]
        );
    }

    #[test]
    fn writes_never_reached_are_not_observed() {
        let observations = [observation(2, 10), observation(4, 20)];
        let writes = [write(4, 5), write(5, 6)];
        assert_eq!(
            apply_lags(&writes, &observations),
            [applied(15), ApplyLag::NotObserved]
        );
        assert_eq!(apply_lags(&writes, &[]), [ApplyLag::NotObserved; 2]);
        assert!(apply_lags(&[], &observations).is_empty());
    }

    #[test]
    fn a_lower_revision_after_a_higher_one_does_not_hide_it() {
        // E.g. probes answered by different replicas: once revision 9 was seen, write 8 was
        // applied, even if a later probe shows 7.
        let observations = [observation(9, 10), observation(7, 20), observation(10, 30)];
        let writes = [write(8, 1), write(10, 2)];
        assert_eq!(
            apply_lags(&writes, &observations),
            [applied(9), applied(28)]
        );
    }

    #[test]
    fn a_zero_lag_is_recorded_as_zero() {
        let mut histogram = new_histogram();
        histogram.saturating_record(0);
        histogram.saturating_record(0);
        histogram.saturating_record(5000);
        assert_eq!(histogram.len(), 3);
        assert_eq!(histogram.value_at_quantile(0.5), 0);
    }

    #[test]
    fn schedule_spreads_writes_at_the_rate() {
        let started = Instant::now();
        let schedule = Schedule {
            started,
            rate: 1000.0,
            measured_from: millis(1000),
            measured_until: millis(3000),
        };
        assert_eq!(schedule.total(), 3000);
        assert_eq!(schedule.due(1500), millis(1500));
        assert_eq!(schedule.due_by(started), 1);
        assert_eq!(schedule.due_by(started + millis(10)), 11);
        assert_eq!(schedule.due_by(started + millis(10_000)), 3000);
        assert!(!schedule.measured(millis(999)));
        assert!(schedule.measured(millis(1000)));
        assert!(!schedule.measured(millis(3000)));
    }
}
