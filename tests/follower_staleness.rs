//! Follower staleness and readiness, black-box: a follower cut off from the leader cluster
//! (leader killed, wrong replication token) keeps serving and stays ready once bootstrapped,
//! while Status, `/metrics` and `/readyz` show its staleness growing and name the cause; and
//! table changes on the leader reach followers through the metadata feed, not the poll.
#![allow(clippy::too_many_lines)] // scenarios read top to bottom; the 70-line rule is for production code

mod common;

use std::time::{Duration, Instant};

use armada_proto::regatta::v1::{DeleteTableRequest, ListTablesRequest, StatusResponse};
use common::{Armada, Cluster, get, put, status};

const DEADLINE: Duration = Duration::from_secs(60);

/// Waits until `check` holds for the node's Status; returns that Status.
async fn wait_status(
    node: &Armada,
    what: &str,
    check: impl Fn(&StatusResponse) -> bool,
) -> StatusResponse {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let current = status(node).await;
        if let Some(current) = current.filter(|current| check(current)) {
            return current;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: last status {:?}\n{}",
            status(node).await,
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `/readyz` answers `code`; returns the body.
async fn wait_readyz(node: &Armada, path: &str, code: u16) -> String {
    wait_readyz_saying(node, path, code, &[]).await
}

/// Waits until `path` answers `code` with a body that contains every one of `words`.
async fn wait_readyz_saying(node: &Armada, path: &str, code: u16, words: &[&str]) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (answered, body) = common::http_get(&node.rest, path);
        if answered == code && words.iter().all(|word| body.contains(word)) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{path} answers {answered} {body:?}, expected {code} saying {words:?}\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `node` serves `key` of `table` with `value`.
async fn wait_value(node: &Armada, table: &str, key: &str, value: &str, deadline: Instant) {
    let mut kv = node.kv().await;
    loop {
        let read = kv.range(get(table, key)).await;
        if let Ok(read) = &read
            && read.get_ref().kvs.first().map(|kv| &kv.value[..]) == Some(value.as_bytes())
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{table}/{key} did not reach the follower in time (last answer {read:?})\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn metric(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find(|line| line.starts_with(name))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{metrics}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_follower_whose_leader_is_killed_stays_ready_and_its_staleness_grows() {
    let mut leader = Cluster::start(1, &[]);
    leader.node(1).create_table("flags").await;
    let mut kv = leader.node(1).kv().await;
    kv.put(put("flags", "dark-mode", "on")).await.expect("put");
    let followers = Cluster::start_follower(
        1,
        &leader.node(1).replication,
        &["--replication.reconcile-interval", "1s"],
    );
    let follower = followers.node(1);
    wait_value(
        follower,
        "flags",
        "dark-mode",
        "on",
        Instant::now() + DEADLINE,
    )
    .await;
    assert_eq!(wait_readyz(follower, "/readyz", 200).await, "ready\n");

    leader.node_mut(1).kill9();
    // Silence beyond the grace (a few keep-alives plus the 1 s reconcile interval) is lag.
    let first = wait_status(follower, "staleness never became visible", |status| {
        status.replication_seconds_since_contact > 5.0
            && status.tables["flags"].replication_lag_seconds > 5.0
    })
    .await;
    let table = &first.tables["flags"];
    assert_eq!(table.replication_lag_entries, 0, "nothing newer is known");
    assert!(table.replication_seconds_since_contact > 5.0, "{table:?}");
    assert!(
        first
            .errors
            .iter()
            .any(|error| error.contains("leader cluster") && error.contains("Unavailable")),
        "the cause is listed: {:?}",
        first.errors
    );
    // And it keeps growing.
    let later = wait_status(follower, "staleness stopped growing", |status| {
        status.tables["flags"].replication_lag_seconds > table.replication_lag_seconds + 1.0
    })
    .await;
    assert!(later.replication_seconds_since_contact > first.replication_seconds_since_contact);

    // Still ready (it serves reads), saying why it is stale; a bounded probe fails.
    let (code, body) = common::http_get(&follower.rest, "/readyz");
    assert_eq!(code, 200, "{body}");
    assert!(body.starts_with("ready\n"), "{body}");
    assert!(
        body.contains("stale: no answer from the leader cluster") && body.contains("Unavailable"),
        "{body}"
    );
    let (code, body) = common::http_get(&follower.rest, "/readyz?max_lag=2s");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("table flags"), "{body}");
    let (code, body) = common::http_get(&follower.rest, "/readyz?max_lag=1h");
    assert_eq!(code, 200, "{body}");
    let (code, body) = common::http_get(&follower.rest, "/readyz?max_lag=soon");
    assert_eq!(code, 400, "{body}");
    assert!(body.starts_with("max_lag: "), "{body}");
    let read = follower
        .kv()
        .await
        .range(get("flags", "dark-mode"))
        .await
        .expect("a stale read while the leader is gone")
        .into_inner();
    assert_eq!(&read.kvs[0].value[..], b"on");

    let (_, metrics) = common::http_get(&follower.rest, "/metrics");
    assert!(metric(&metrics, "armada_follower_seconds_since_contact") > 5.0);
    assert!(
        metric(
            &metrics,
            "armada_replication_seconds_since_contact{table=\"flags\"}"
        ) > 5.0
    );
    assert!(metric(&metrics, "armada_replication_lag_seconds{table=\"flags\"}") > 5.0);

    // An edge pod restarted during the outage serves what it has: ready again, and stale.
    let mut followers = followers;
    let follower = followers.node_mut(1);
    assert!(follower.terminate().success());
    follower.restart();
    let body = wait_readyz(follower, "/readyz", 200).await;
    assert!(body.starts_with("ready\n"), "{body}");
    let read = follower
        .kv()
        .await
        .range(get("flags", "dark-mode"))
        .await
        .expect("a read after the restart")
        .into_inner();
    assert_eq!(&read.kvs[0].value[..], b"on");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_replication_token_is_named_in_status_and_readyz() {
    let leader = Cluster::start(1, &["--replication.token", "right"]);
    let followers = Cluster::start_follower(
        1,
        &leader.node(1).replication,
        &["--replication.token", "wrong"],
    );
    let follower = followers.node(1);
    // Before the first answer the reason is "no answer yet"; then it names the refusal.
    wait_readyz_saying(
        follower,
        "/readyz",
        503,
        &["not known yet", "Unauthenticated"],
    )
    .await;
    let first = wait_status(follower, "the cause was never listed", |status| {
        status
            .errors
            .iter()
            .any(|error| error.contains("Unauthenticated"))
    })
    .await;
    wait_status(follower, "the silence does not grow", |status| {
        status.replication_seconds_since_contact > first.replication_seconds_since_contact + 1.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn table_changes_reach_the_follower_through_the_feed_not_the_poll() {
    let leader = Cluster::start(1, &[]);
    let leader = leader.node(1);
    // A poll every minute: anything arriving within seconds came through the feed.
    let followers = Cluster::start_follower(
        1,
        &leader.replication,
        &["--replication.reconcile-interval", "60s"],
    );
    let follower = followers.node(1);
    wait_readyz(follower, "/readyz", 200).await;
    // The first poll at start-up is over; let the feed be the one source from here.
    for round in 0..2 {
        let table = format!("fresh{round}");
        leader.create_table(&table).await;
        let created = Instant::now();
        leader
            .kv()
            .await
            .put(put(&table, "k", "v"))
            .await
            .expect("put on the leader");
        // Well within the default 5 s interval, let alone the 60 s one set here.
        wait_value(follower, &table, "k", "v", created + Duration::from_secs(3)).await;

        let mut tables = leader.tables().await;
        tables
            .delete(DeleteTableRequest {
                name: table.clone(),
            })
            .await
            .expect("delete");
        let deleted = Instant::now();
        let mut listed = follower.tables().await;
        loop {
            let names: Vec<String> = listed
                .list(ListTablesRequest {})
                .await
                .expect("list on the follower")
                .into_inner()
                .tables
                .into_iter()
                .map(|table| table.name)
                .collect();
            if !names.contains(&table) {
                break;
            }
            assert!(
                deleted.elapsed() < Duration::from_secs(3),
                "{table} still listed on the follower: {names:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
