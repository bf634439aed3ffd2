//! The Grafana dashboard (deploy/grafana/armada.json) and the Prometheus alerts
//! (deploy/prometheus/alerts.yaml) name only metrics that armada really exports.
//!
//! A dashboard panel or an alert on a misspelt or renamed metric shows nothing and fires never,
//! silently. So a real leader node and a real follower node are started, written to until
//! every metric the files name has appeared on their `/metrics` (several are registered only
//! when first used), and each name is checked against what they export:
//! * a dashboard expression that selects `job="$leader_job"` against the leader node, one on
//!   `$follower_job` against the follower node, any other (and every alert) against both;
//! * a histogram is named by its series: `_bucket` (histograms), `_sum` and `_count`
//!   (histograms and summaries), never by its bare family name, which has no series;
//! * the few names that come from elsewhere (a backup job's push, the kubelet) are listed in
//!   [`EXTERNAL`] with their source; any other unknown name fails, naming the file and the
//!   expression.
//!
//! PromQL is parsed loosely but on purpose: label matchers (`{…}`), range selectors (`[…]`),
//! grouping clauses (`by (…)`, `on (…)`, …), strings, numbers, function names and keywords are
//! removed; what remains are metric names.
#![allow(clippy::too_many_lines)] // scenarios read top to bottom; the 70-line rule is for production code

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::{Cluster, get, http_get, put};

const DASHBOARD: &str = include_str!("../deploy/grafana/armada.json");
const ALERTS: &str = include_str!("../deploy/prometheus/alerts.yaml");

/// Metrics the monitoring files use that armada does not export, and who provides them.
const EXTERNAL: &[(&str, &str)] = &[
    (
        "armada_backup_last_success_timestamp_seconds",
        "pushed by the backup job after a verified backup (to a Pushgateway)",
    ),
    (
        "kubelet_volume_stats_available_bytes",
        "the kubelet: free bytes of a PersistentVolumeClaim",
    ),
    (
        "kubelet_volume_stats_capacity_bytes",
        "the kubelet: size of a PersistentVolumeClaim",
    ),
];

/// How long the nodes get to show every metric the files name.
const METRICS_DEADLINE: Duration = Duration::from_secs(60);

/// Which node's `/metrics` an expression is checked against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Scope {
    Leader,
    Follower,
    Either,
}

/// One expression of a monitoring file: where it is, which node it is about, its text.
#[derive(Debug)]
struct Expression {
    place: String,
    scope: Scope,
    text: String,
}

const KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "atan2",
    "inf",
    "nan",
];

/// Aggregation operators: a function, though `sum by (…) (…)` puts no `(` right after it.
const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

/// Removes every `open … close` span (nesting counted), and quoted strings everywhere.
fn strip_spans(text: &str, open: char, close: char) -> String {
    let mut out = String::new();
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if let Some(q) = quote {
            if c == '\\' {
                chars.next();
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' | '`' => quote = Some(c),
            c if c == open => depth += 1,
            c if c == close => depth = depth.saturating_sub(1),
            c if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

/// The metric names in a PromQL expression (see the module comment for how loosely).
fn metric_names(expression: &str) -> BTreeSet<String> {
    // Label matchers and range selectors hold label names, values and durations, no metric.
    let text = strip_spans(&strip_spans(expression, '{', '}'), '[', ']');
    // Tokens: identifiers, numbers, and single other characters.
    let mut tokens: Vec<String> = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' || c == '.' || c == '$' {
            let mut token = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_ascii_alphanumeric() || c == '_' || c == ':' || c == '.' || c == '$' {
                    token.push(c);
                    chars.next();
                } else {
                    break;
                }
            }
            tokens.push(token);
        } else {
            chars.next();
            if !c.is_whitespace() {
                tokens.push(c.to_string());
            }
        }
    }
    let mut names = BTreeSet::new();
    let mut index = 0;
    while index < tokens.len() {
        let token = &tokens[index];
        let next = tokens.get(index + 1).map(String::as_str);
        let lower = token.to_ascii_lowercase();
        if KEYWORDS.contains(&lower.as_str()) && lower != "bool" && next == Some("(") {
            // A grouping clause: `by (label, …)` names labels, not metrics.
            index += 2;
            while index < tokens.len() && tokens[index] != ")" {
                index += 1;
            }
        } else if next == Some("(")
            || KEYWORDS.contains(&lower.as_str())
            || AGGREGATIONS.contains(&lower.as_str())
            || !token.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_' || c == ':')
        {
            // A function, a keyword, a number or a lone character.
        } else {
            names.insert(token.clone());
        }
        index += 1;
    }
    names
}

/// The scope of a dashboard expression, from the job variable it selects on.
fn scope_of(text: &str) -> Scope {
    match (text.contains("$leader_job"), text.contains("$follower_job")) {
        (true, false) => Scope::Leader,
        (false, true) => Scope::Follower,
        _ => Scope::Either,
    }
}

/// Every query of the dashboard: the panels' targets (rows nest panels) and the variables'
/// `label_values(metric, label)` queries.
fn dashboard_expressions() -> Vec<Expression> {
    fn walk(panels: &serde_json::Value, out: &mut Vec<Expression>) {
        for panel in panels.as_array().into_iter().flatten() {
            walk(&panel["panels"], out);
            let title = panel["title"].as_str().unwrap_or("(untitled)");
            for target in panel["targets"].as_array().into_iter().flatten() {
                let text = target["expr"].as_str().expect("a target's expr").to_owned();
                out.push(Expression {
                    place: format!("armada.json panel {title:?}"),
                    scope: scope_of(&text),
                    text,
                });
            }
        }
    }
    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).expect("armada.json");
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
    {
        let Some(query) = variable["query"]["query"].as_str() else {
            continue;
        };
        let Some(arguments) = query.strip_prefix("label_values(") else {
            continue;
        };
        // label_values(metric, label): the label is not a metric.
        let metric = arguments.split(',').next().expect("label_values argument");
        out.push(Expression {
            place: format!("armada.json variable {:?}", variable["name"]),
            scope: Scope::Either,
            text: metric.trim().to_owned(),
        });
    }
    out
}

/// The `expr:` of every rule in alerts.yaml: on the line itself, or a folded block (`>-`)
/// of the lines indented below it.
fn alert_expressions() -> Vec<Expression> {
    let lines: Vec<&str> = ALERTS.lines().collect();
    let mut out = Vec::new();
    let mut alert = String::from("(before the first alert)");
    for (number, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        if let Some(name) = trimmed.strip_prefix("- alert:") {
            alert = name.trim().to_owned();
        }
        let Some(value) = trimmed.strip_prefix("expr:") else {
            continue;
        };
        let value = value.trim();
        let text = if value.starts_with('>') || value.starts_with('|') {
            let indent = line.len() - trimmed.len();
            lines[number + 1..]
                .iter()
                .take_while(|next| {
                    next.trim().is_empty() || next.len() - next.trim_start().len() > indent
                })
                .map(|next| next.trim())
                .collect::<Vec<_>>()
                .join(" ")
        } else {
            value.to_owned()
        };
        out.push(Expression {
            place: format!("alerts.yaml alert {alert}"),
            scope: Scope::Either,
            text,
        });
    }
    out
}

/// Metric families on a `/metrics` page, by name, with their type.
fn families(body: &str) -> BTreeMap<String, String> {
    body.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| {
            let (name, kind) = rest.split_once(' ')?;
            Some((name.to_owned(), kind.trim().to_owned()))
        })
        .collect()
}

/// Whether `name`, as a query names it, has series on a page with these families.
fn exported(name: &str, families: &BTreeMap<String, String>) -> bool {
    let kind = |family: &str| families.get(family).map(String::as_str);
    if let Some(kind) = kind(name) {
        // A histogram's bare name has no series: its buckets, sum and count do.
        return kind != "histogram";
    }
    if let Some(base) = name.strip_suffix("_bucket") {
        return kind(base) == Some("histogram");
    }
    ["_sum", "_count"].iter().any(|suffix| {
        name.strip_suffix(suffix)
            .is_some_and(|base| matches!(kind(base), Some("histogram" | "summary")))
    })
}

/// Each use of a name that neither the node in scope exports nor [`EXTERNAL`] lists.
fn unknown_uses(
    expressions: &[Expression],
    leader: &BTreeMap<String, String>,
    follower: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut unknown = Vec::new();
    for expression in expressions {
        for name in metric_names(&expression.text) {
            let known = EXTERNAL.iter().any(|(external, _)| *external == name)
                || match expression.scope {
                    Scope::Leader => exported(&name, leader),
                    Scope::Follower => exported(&name, follower),
                    Scope::Either => exported(&name, leader) || exported(&name, follower),
                };
            if !known {
                unknown.push(format!(
                    "{name} ({:?} node) in {}: {}",
                    expression.scope, expression.place, expression.text
                ));
            }
        }
    }
    unknown
}

fn scrape(rest: &str) -> BTreeMap<String, String> {
    let (status, body) = http_get(rest, "/metrics");
    assert_eq!(status, 200, "/metrics: {body}");
    families(&body)
}

#[test]
fn the_parser_finds_metric_names_and_nothing_else() {
    let names = |text: &str| metric_names(text).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            r#"histogram_quantile(0.99, sum by (job, grpc_method, le) (rate(grpc_server_handling_seconds_bucket{job="$leader_job", grpc_method=~"Put|Txn"}[$__rate_interval]))) > 0.5"#
        ),
        ["grpc_server_handling_seconds_bucket"]
    );
    assert_eq!(
        names(
            "armada_raft_committed_index{job=\"a\"} - on (instance) group_left (table) armada_raft_applied_index"
        ),
        ["armada_raft_applied_index", "armada_raft_committed_index"]
    );
    assert_eq!(
        names("time() - armada_backup_last_success_timestamp_seconds > 26 * 3600"),
        ["armada_backup_last_success_timestamp_seconds"]
    );
    assert_eq!(
        names("count(min by (table) (armada_raft_has_leader) == 0) or vector(0)"),
        ["armada_raft_has_leader"]
    );
    assert_eq!(names("sum(x) / sum(rate(y[5m]))"), ["x", "y"]);
}

#[test]
fn histograms_are_named_by_their_series_only() {
    let families: BTreeMap<String, String> = [
        ("grpc_server_handling_seconds", "histogram"),
        ("armada_raft_log_sync_batch", "summary"),
        ("armada_raft_term", "gauge"),
    ]
    .into_iter()
    .map(|(name, kind)| (name.to_owned(), kind.to_owned()))
    .collect();
    for name in [
        "grpc_server_handling_seconds_bucket",
        "grpc_server_handling_seconds_sum",
        "grpc_server_handling_seconds_count",
        "armada_raft_log_sync_batch",
        "armada_raft_log_sync_batch_count",
        "armada_raft_term",
    ] {
        assert!(exported(name, &families), "{name} should count as exported");
    }
    for name in [
        "grpc_server_handling_seconds",
        "armada_raft_log_sync_batch_bucket",
        "armada_raft_term_count",
        "armada_raft_terms",
    ] {
        assert!(!exported(name, &families), "{name} should not count");
    }
}

#[test]
fn the_files_have_expressions_on_both_kinds_of_node() {
    let dashboard = dashboard_expressions();
    let alerts = alert_expressions();
    assert!(dashboard.iter().any(|e| e.scope == Scope::Leader));
    assert!(dashboard.iter().any(|e| e.scope == Scope::Follower));
    // Every rule of alerts.yaml has its expression found (and a folded one is whole).
    assert_eq!(alerts.len(), ALERTS.matches("- alert:").count());
    assert!(
        alerts
            .iter()
            .any(|e| e.text.contains("histogram_quantile(0.99,") && e.text.ends_with("> 0.5"))
    );
    // Every external name is used: the list does not outlive the alerts that needed it.
    let used: BTreeSet<String> = dashboard
        .iter()
        .chain(&alerts)
        .flat_map(|e| metric_names(&e.text))
        .collect();
    for (name, source) in EXTERNAL {
        assert!(
            used.contains(*name),
            "{name} ({source}) is listed but unused"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_metric_in_the_dashboard_and_the_alerts_exists_on_real_nodes() {
    let expressions: Vec<Expression> = dashboard_expressions()
        .into_iter()
        .chain(alert_expressions())
        .collect();

    let leader_cluster = Cluster::start(1, &[]);
    let leader = leader_cluster.node(1);
    leader.create_table("orders").await;
    let mut kv = leader.kv().await;
    for index in 0..20 {
        kv.put(put("orders", format!("key{index}"), "value"))
            .await
            .expect("put on the leader cluster");
    }
    let follower_cluster = Cluster::start_follower(1, &leader.replication, &[]);
    let follower = follower_cluster.node(1);

    // Some metrics appear only once used (replication of the table, a read at the follower,
    // the leader's log cache serving it): keep writing and reading until every name is
    // there, or the deadline says which are not.
    let mut follower_kv = follower.kv().await;
    let deadline = Instant::now() + METRICS_DEADLINE;
    let mut round = 0u64;
    let unknown = loop {
        round += 1;
        kv.put(put("orders", format!("round{round}"), "value"))
            .await
            .expect("put on the leader cluster");
        // The follower may not have the table yet: a failed read is retried next round.
        let _ = follower_kv.range(get("orders", "key0")).await;
        let unknown = unknown_uses(&expressions, &scrape(&leader.rest), &scrape(&follower.rest));
        if unknown.is_empty() || Instant::now() >= deadline {
            break unknown;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(
        unknown.is_empty(),
        "metrics named in deploy/ that the nodes do not export (after {METRICS_DEADLINE:?} of \
         writes and reads):\n  {}\nleader log:\n{}\nfollower log:\n{}",
        unknown.join("\n  "),
        leader.log(),
        follower.log()
    );
}
