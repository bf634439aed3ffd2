//! The leader side of `replication.v1` on the replication address: table metadata, the
//! committed log from an index (a long-lived stream), point-in-time dumps, the replication
//! token, and the KV service on that address.
#![allow(clippy::too_many_lines)] // scenarios read top to bottom; the 70-line rule is for production code

mod common;

use std::io::Read;
use std::time::Duration;

use armada_proto::armada::v1::MetadataWatchRequest;
use armada_proto::armada::v1::metadata_feed_client::MetadataFeedClient;
use armada_proto::mvcc::v1 as mvcc;
use armada_proto::regatta::v1::DeleteTableRequest;
use armada_proto::regatta::v1::kv_client::KvClient;
use armada_proto::replication::v1::log_client::LogClient;
use armada_proto::replication::v1::metadata_client::MetadataClient;
use armada_proto::replication::v1::snapshot_client::SnapshotClient;
use armada_proto::replication::v1::{
    MetadataRequest, MetadataResponse, ReplicateError, ReplicateRequest, ReplicateResponse,
    SnapshotRequest, replicate_response,
};
use common::{Armada, get, http_get, put};
use prost::Message;
use tonic::transport::Channel;
use tonic::{Code, Streaming};

/// How long a test waits for something that should happen at once; never a pass/fail timing.
const PATIENCE: Duration = Duration::from_secs(20);

async fn replication_channel(armada: &Armada) -> Channel {
    Channel::from_shared(armada.replication.clone())
        .expect("uri")
        .connect()
        .await
        .expect("connect")
}

fn replicate_request(table: &str, leader_index: u64) -> ReplicateRequest {
    ReplicateRequest {
        table: table.as_bytes().to_vec().into(),
        leader_index,
    }
}

/// The next message of a stream, waiting at most [`PATIENCE`].
async fn next_message(
    stream: &mut Streaming<ReplicateResponse>,
) -> Result<Option<ReplicateResponse>, tonic::Status> {
    tokio::time::timeout(PATIENCE, stream.message())
        .await
        .expect("the stream answered in time")
}

/// A received log entry: (leader index, command type, key of a PUT).
type Received = (u64, i32, Option<Vec<u8>>);

fn received(message: &ReplicateResponse) -> Vec<Received> {
    match &message.response {
        Some(replicate_response::Response::CommandsResponse(commands)) => commands
            .commands
            .iter()
            .map(|command| {
                let inner = command.command.as_ref().expect("command");
                let key = inner.kv.as_ref().map(|kv| kv.key.to_vec());
                (command.leader_index, inner.r#type, key)
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Reads a stream until it has delivered the entry at `last` (panics on anything but
/// entries and `{leader_index}` messages).
async fn read_through(stream: &mut Streaming<ReplicateResponse>, last: u64) -> Vec<Received> {
    let mut entries: Vec<Received> = Vec::new();
    while entries.last().is_none_or(|entry| entry.0 < last) {
        let message = next_message(stream)
            .await
            .expect("message")
            .expect("stream open");
        if let Some(replicate_response::Response::ErrorResponse(error)) = &message.response {
            panic!("unexpected {error:?}");
        }
        entries.extend(received(&message));
    }
    entries
}

fn assert_contiguous(entries: &[Received]) {
    assert!(
        entries.windows(2).all(|pair| pair[1].0 == pair[0].0 + 1),
        "contiguous: {:?}",
        entries.iter().map(|entry| entry.0).collect::<Vec<_>>()
    );
}

fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii"),
    );
    request
}

/// The value of a counter in Prometheus text for the given table, summed over its series.
fn counter_value(metrics: &str, name: &str, table: &str) -> f64 {
    metrics
        .lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .filter(|line| line.contains(&format!("table=\"{table}\"")))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_leader_serves_metadata_its_log_and_dumps() {
    let armada = Armada::start();
    armada.create_table("beta").await;
    armada.create_table("alpha").await;
    let mut kv = armada.kv().await;
    let mut revisions = Vec::new();
    for i in 0..5 {
        let response = kv
            .put(put("alpha", format!("k{i}"), format!("v{i}")))
            .await
            .expect("put");
        revisions.push(response.into_inner().header.expect("header").revision);
    }
    let channel = replication_channel(&armada).await;

    let tables = MetadataClient::new(channel.clone())
        .get(MetadataRequest {})
        .await
        .expect("metadata")
        .into_inner()
        .tables;
    let names: Vec<_> = tables.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["alpha", "beta"], "sorted by name");
    assert!(tables.iter().all(|t| !t.id.is_empty()));

    // The whole log from index 1: contiguous indices; every write is there as applied.
    let mut log = LogClient::new(channel.clone());
    let mut stream = log
        .replicate(ReplicateRequest {
            table: "alpha".into(),
            leader_index: 1,
        })
        .await
        .expect("replicate")
        .into_inner();
    let mut indices = Vec::new();
    let mut puts = Vec::new();
    // The stream stays open: caught up, it says so with a message carrying only the index.
    let final_leader_index = loop {
        let message = next_message(&mut stream)
            .await
            .expect("message")
            .expect("open");
        match message.response {
            Some(replicate_response::Response::CommandsResponse(commands)) => {
                for command in commands.commands {
                    indices.push(command.leader_index);
                    let inner = command.command.expect("command");
                    if inner.r#type == mvcc::command::CommandType::Put as i32 {
                        puts.push((command.leader_index, inner.kv.expect("kv").key.to_vec()));
                    }
                }
            }
            Some(replicate_response::Response::ErrorResponse(error)) => {
                panic!("unexpected {error:?}")
            }
            None => break message.leader_index,
        }
    };
    assert_eq!(indices.first(), Some(&1));
    assert!(
        indices.windows(2).all(|pair| pair[1] == pair[0] + 1),
        "contiguous: {indices:?}"
    );
    assert_eq!(puts.len(), 5);
    for (i, (index, key)) in puts.iter().enumerate() {
        assert_eq!(*index, revisions[i], "a write's log index is its revision");
        assert_eq!(key, format!("k{i}").as_bytes());
    }
    assert_eq!(final_leader_index, *revisions.last().expect("revision"));
    let alpha = tables.iter().find(|t| t.name == "alpha").expect("alpha");
    assert_eq!(
        alpha.leader_index, final_leader_index,
        "Metadata carries the applied index"
    );

    // Caught up: only the final message. Ahead: LEADER_BEHIND. Zero: InvalidArgument.
    let mut stream = log
        .replicate(ReplicateRequest {
            table: "alpha".into(),
            leader_index: final_leader_index + 1,
        })
        .await
        .expect("replicate")
        .into_inner();
    let first = next_message(&mut stream)
        .await
        .expect("message")
        .expect("one message");
    assert!(first.response.is_none());
    assert_eq!(first.leader_index, final_leader_index);
    drop(stream);
    let mut stream = log
        .replicate(ReplicateRequest {
            table: "alpha".into(),
            leader_index: final_leader_index + 100,
        })
        .await
        .expect("replicate")
        .into_inner();
    match stream
        .message()
        .await
        .expect("message")
        .and_then(|m| m.response)
    {
        Some(replicate_response::Response::ErrorResponse(error)) => {
            assert_eq!(error.error, ReplicateError::LeaderBehind as i32);
        }
        other => panic!("expected LEADER_BEHIND, got {other:?}"),
    }
    let status = log
        .replicate(ReplicateRequest {
            table: "alpha".into(),
            leader_index: 0,
        })
        .await
        .expect_err("zero");
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = log
        .replicate(ReplicateRequest {
            table: "nope".into(),
            leader_index: 1,
        })
        .await
        .expect_err("unknown");
    assert_eq!(status.code(), Code::NotFound);

    // Snapshot.Stream: a Snappy-framed dump of PUT records in key order, then a DUMMY with the
    // leader index.
    let mut stream = SnapshotClient::new(channel)
        .stream(SnapshotRequest {
            table: "alpha".into(),
        })
        .await
        .expect("stream")
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.message().await.expect("chunk") {
        assert!(chunk.data.len() <= 1024 * 1024);
        bytes.extend_from_slice(&chunk.data);
    }
    let mut decoded = Vec::new();
    snap::read::FrameDecoder::new(bytes.as_slice())
        .read_to_end(&mut decoded)
        .expect("snappy framing");
    let mut records = Vec::new();
    let mut rest = decoded.as_slice();
    while !rest.is_empty() {
        let length = u64::from_le_bytes(rest[..8].try_into().expect("length")) as usize;
        records.push(mvcc::Command::decode(&rest[8..8 + length]).expect("command"));
        rest = &rest[8 + length..];
    }
    let (last, puts) = records.split_last().expect("records");
    assert_eq!(last.r#type, mvcc::command::CommandType::Dummy as i32);
    assert_eq!(last.leader_index, Some(final_leader_index));
    let keys: Vec<_> = puts
        .iter()
        .map(|c| c.kv.as_ref().expect("kv").key.to_vec())
        .collect();
    assert_eq!(
        keys,
        (0..5)
            .map(|i| format!("k{i}").into_bytes())
            .collect::<Vec<_>>()
    );
    assert!(puts.iter().all(
        |c| c.r#type == mvcc::command::CommandType::Put as i32 && c.table.as_ref() == b"alpha"
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_open_stream_receives_new_writes_and_heartbeats_with_the_leader_index() {
    let armada = Armada::start();
    armada.create_table("live").await;
    let mut kv = armada.kv().await;
    let first = kv
        .put(put("live", "k0", "v0"))
        .await
        .expect("put")
        .into_inner();
    let first_revision = first.header.expect("header").revision;
    let channel = replication_channel(&armada).await;
    let mut stream = LogClient::new(channel.clone())
        .replicate(replicate_request("live", first_revision + 1))
        .await
        .expect("replicate")
        .into_inner();
    let caught_up = next_message(&mut stream).await.expect("ok").expect("open");
    assert!(caught_up.response.is_none());
    assert_eq!(caught_up.leader_index, first_revision);

    // A write after the stream opened arrives on the same stream. It goes through the
    // replication port's KV, as a follower cluster's forwarded write would.
    let written = KvClient::new(channel)
        .put(put("live", "k1", "v1"))
        .await
        .expect("put on the replication port")
        .into_inner();
    let revision = written.header.expect("header").revision;
    let entries = read_through(&mut stream, revision).await;
    assert_eq!(
        entries.first().map(|entry| entry.0),
        Some(first_revision + 1)
    );
    assert_contiguous(&entries);
    let put_type = mvcc::command::CommandType::Put as i32;
    assert_eq!(
        entries.last(),
        Some(&(revision, put_type, Some(b"k1".to_vec())))
    );
    let value = kv.range(get("live", "k1")).await.expect("get").into_inner();
    assert_eq!(value.kvs[0].value.as_ref(), b"v1");

    // Nothing new: heartbeats carry the leader index, and the stream stays open.
    for _ in 0..2 {
        let heartbeat = next_message(&mut stream).await.expect("ok").expect("open");
        assert!(heartbeat.response.is_none(), "{heartbeat:?}");
        assert_eq!(heartbeat.leader_index, revision);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_the_table_ends_an_open_stream_with_not_found() {
    let armada = Armada::start();
    armada.create_table("doomed").await;
    let mut stream = LogClient::new(replication_channel(&armada).await)
        .replicate(replicate_request("doomed", 1))
        .await
        .expect("replicate")
        .into_inner();
    // Caught up (the `{leader_index}` message) before the table goes.
    loop {
        let message = next_message(&mut stream).await.expect("ok").expect("open");
        if message.response.is_none() {
            break;
        }
    }
    armada
        .tables()
        .await
        .delete(DeleteTableRequest {
            name: "doomed".into(),
        })
        .await
        .expect("delete");
    let status = loop {
        match next_message(&mut stream).await {
            Ok(Some(message)) => assert!(message.response.is_none(), "{message:?}"),
            Ok(None) => panic!("the stream ended OK"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_ends_ok_before_the_clients_deadline() {
    // What a Regatta follower does: read until the stream ends, within its deadline.
    let armada = Armada::start();
    armada.create_table("short").await;
    let mut kv = armada.kv().await;
    kv.put(put("short", "k0", "v0")).await.expect("put");
    let mut request = tonic::Request::new(replicate_request("short", 1));
    request.set_timeout(Duration::from_secs(2));
    let mut stream = LogClient::new(replication_channel(&armada).await)
        .replicate(request)
        .await
        .expect("replicate")
        .into_inner();
    let later = kv.put(put("short", "k1", "v1")).await.expect("put");
    let later_revision = later.into_inner().header.expect("header").revision;
    let mut entries = Vec::new();
    while let Some(message) = next_message(&mut stream).await.expect("ends OK") {
        entries.extend(received(&message));
    }
    assert_eq!(entries.first().map(|entry| entry.0), Some(1));
    assert_contiguous(&entries);
    assert_eq!(entries.last().map(|entry| entry.0), Some(later_revision));
}

#[tokio::test(flavor = "multi_thread")]
async fn many_streams_get_the_same_contiguous_entries_from_log_and_cache() {
    // A cache smaller than the backlog: streams read the older part from the log, the rest
    // (and everything written while they are open) from the cache.
    let data_dir = tempfile::tempdir().expect("tempdir");
    let armada = Armada::start_in(data_dir.path(), &["--replication.log-cache-size", "8"]);
    armada.create_table("many").await;
    let mut kv = armada.kv().await;
    let mut revisions = Vec::new();
    let mut write = async |i: usize| {
        let response = kv
            .put(put("many", format!("k{i:02}"), "v"))
            .await
            .expect("put");
        response.into_inner().header.expect("header").revision
    };
    for i in 0..30 {
        revisions.push(write(i).await);
    }
    let channel = replication_channel(&armada).await;
    let mut streams = Vec::new();
    for _ in 0..20 {
        streams.push(
            LogClient::new(channel.clone())
                .replicate(replicate_request("many", 1))
                .await
                .expect("replicate")
                .into_inner(),
        );
    }
    for i in 30..40 {
        revisions.push(write(i).await);
    }
    let last = *revisions.last().expect("revision");
    let readers: Vec<_> = streams
        .into_iter()
        .map(|mut stream| tokio::spawn(async move { read_through(&mut stream, last).await }))
        .collect();
    let mut all = Vec::new();
    for reader in readers {
        all.push(reader.await.expect("reader"));
    }
    let expected = &all[0];
    assert_eq!(expected.first().map(|entry| entry.0), Some(1));
    assert_contiguous(expected);
    let put_type = mvcc::command::CommandType::Put as i32;
    let puts: Vec<_> = expected
        .iter()
        .filter(|entry| entry.1 == put_type)
        .map(|entry| (entry.0, entry.2.clone().expect("key")))
        .collect();
    let written: Vec<_> = revisions
        .iter()
        .enumerate()
        .map(|(i, revision)| (*revision, format!("k{i:02}").into_bytes()))
        .collect();
    assert_eq!(puts, written);
    for entries in &all {
        assert_eq!(entries, expected, "every stream gets the same entries");
    }
    let (_, metrics) = http_get(&armada.rest, "/metrics");
    assert!(counter_value(&metrics, "armada_replication_cache_hits_total", "many") > 0.0);
    assert!(counter_value(&metrics, "armada_replication_cache_misses_total", "many") > 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_replication_token_guards_every_call_on_the_replication_port() {
    let data_dir = tempfile::tempdir().expect("tempdir");
    let armada = Armada::start_in(data_dir.path(), &["--replication.token", "s3cret"]);
    armada.create_table("guarded").await;
    let channel = replication_channel(&armada).await;
    let mut metadata = MetadataClient::new(channel.clone());
    for request in [
        tonic::Request::new(MetadataRequest {}),
        with_token(MetadataRequest {}, "wrong"),
    ] {
        let status = metadata.get(request).await.expect_err("refused");
        assert_eq!(status.code(), Code::Unauthenticated);
    }
    let tables = metadata
        .get(with_token(MetadataRequest {}, "s3cret"))
        .await
        .expect("metadata with the token")
        .into_inner()
        .tables;
    assert_eq!(tables.len(), 1);

    let mut log = LogClient::new(channel.clone());
    let status = log
        .replicate(replicate_request("guarded", 1))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::Unauthenticated);
    let mut stream = log
        .replicate(with_token(replicate_request("guarded", 1), "s3cret"))
        .await
        .expect("replicate with the token")
        .into_inner();
    assert!(next_message(&mut stream).await.expect("ok").is_some());

    let mut snapshot = SnapshotClient::new(channel.clone());
    let request = SnapshotRequest {
        table: "guarded".into(),
    };
    let status = snapshot.stream(request.clone()).await.expect_err("refused");
    assert_eq!(status.code(), Code::Unauthenticated);
    snapshot
        .stream(with_token(request, "s3cret"))
        .await
        .expect("snapshot with the token");

    let mut feed = MetadataFeedClient::new(channel.clone());
    let status = feed
        .watch(MetadataWatchRequest {})
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::Unauthenticated);
    let mut tables = feed
        .watch(with_token(MetadataWatchRequest {}, "s3cret"))
        .await
        .expect("feed with the token")
        .into_inner();
    let first = tokio::time::timeout(PATIENCE, tables.message())
        .await
        .expect("a table list in time")
        .expect("ok")
        .expect("a message");
    assert_eq!(first.tables.len(), 1);

    let mut replication_kv = KvClient::new(channel);
    let status = replication_kv
        .put(put("guarded", "k", "v"))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::Unauthenticated);
    replication_kv
        .put(with_token(put("guarded", "k", "v"), "s3cret"))
        .await
        .expect("put with the token");
    // The API port's KV takes no token.
    let value = armada
        .kv()
        .await
        .range(get("guarded", "k"))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(value.kvs[0].value.as_ref(), b"v");
}

/// The next table list of a feed, as (name, leader index) pairs.
async fn next_tables(stream: &mut Streaming<MetadataResponse>) -> Vec<(String, u64)> {
    tokio::time::timeout(PATIENCE, stream.message())
        .await
        .expect("a table list in time")
        .expect("the feed stays open")
        .expect("a message")
        .tables
        .into_iter()
        .map(|table| (table.name, table.leader_index))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_metadata_feed_sends_the_table_list_on_every_change_and_as_a_keep_alive() {
    let armada = Armada::start();
    armada.create_table("first").await;
    let mut feed = MetadataFeedClient::new(replication_channel(&armada).await)
        .watch(MetadataWatchRequest {})
        .await
        .expect("watch")
        .into_inner();
    let names = |tables: &[(String, u64)]| -> Vec<String> {
        tables.iter().map(|(name, _)| name.clone()).collect()
    };
    assert_eq!(names(&next_tables(&mut feed).await), ["first"]);
    // A keep-alive repeats the list while nothing changes, with the leader index once the
    // table's group runs.
    loop {
        let tables = next_tables(&mut feed).await;
        assert_eq!(names(&tables), ["first"]);
        if tables[0].1 > 0 {
            break;
        }
    }
    armada.create_table("second").await;
    while names(&next_tables(&mut feed).await) != ["first", "second"] {}
    armada
        .tables()
        .await
        .delete(DeleteTableRequest {
            name: "first".into(),
        })
        .await
        .expect("delete");
    while names(&next_tables(&mut feed).await) != ["second"] {}
}

#[tokio::test(flavor = "multi_thread")]
async fn stopping_the_node_ends_an_open_stream_ok() {
    let mut armada = Armada::start();
    armada.create_table("stopping").await;
    let mut stream = LogClient::new(replication_channel(&armada).await)
        .replicate(replicate_request("stopping", 1))
        .await
        .expect("replicate")
        .into_inner();
    loop {
        let message = next_message(&mut stream).await.expect("ok").expect("open");
        if message.response.is_none() {
            break;
        }
    }
    let status = tokio::task::spawn_blocking(move || armada.terminate())
        .await
        .expect("terminate");
    assert!(status.success(), "{status}");
    loop {
        match next_message(&mut stream).await {
            Ok(Some(message)) => assert!(message.response.is_none(), "{message:?}"),
            Ok(None) => break,
            Err(status) => panic!("the stream failed instead of ending: {status:?}"),
        }
    }
}
