//! The leader side of `replication.v1` on the replication address: table metadata, the
//! committed log from an index, and point-in-time dumps.

mod common;

use std::io::Read;

use armada_proto::mvcc::v1 as mvcc;
use armada_proto::replication::v1::log_client::LogClient;
use armada_proto::replication::v1::metadata_client::MetadataClient;
use armada_proto::replication::v1::snapshot_client::SnapshotClient;
use armada_proto::replication::v1::{
    MetadataRequest, ReplicateError, ReplicateRequest, SnapshotRequest, replicate_response,
};
use common::{Armada, put};
use prost::Message;
use tonic::Code;
use tonic::transport::Channel;

async fn replication_channel(armada: &Armada) -> Channel {
    Channel::from_shared(armada.replication.clone())
        .expect("uri")
        .connect()
        .await
        .expect("connect")
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
    let mut final_leader_index = 0;
    while let Some(message) = stream.message().await.expect("message") {
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
            None => final_leader_index = message.leader_index,
        }
    }
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

    // Caught up: only the final message. Ahead: LEADER_BEHIND. Zero: InvalidArgument.
    let mut stream = log
        .replicate(ReplicateRequest {
            table: "alpha".into(),
            leader_index: final_leader_index + 1,
        })
        .await
        .expect("replicate")
        .into_inner();
    let only = stream
        .message()
        .await
        .expect("message")
        .expect("one message");
    assert!(only.response.is_none());
    assert!(stream.message().await.expect("end").is_none());
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
