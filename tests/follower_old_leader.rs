//! A follower talking to a leader without Armada's metadata feed (Regatta, an older Armada):
//! it falls back to polling `Metadata.Get`, mirrors table changes at the reconcile interval,
//! and reports neither an error nor staleness for the missing feed.
//!
//! The old leader is a real `armada leader` behind a relay that serves only Regatta's
//! `replication.v1` services (each call passed through to the leader), so
//! `armada.v1.MetadataFeed.Watch` answers `Unimplemented` as on an old leader.

mod common;

use std::time::{Duration, Instant};

use armada_proto::regatta::v1::{DeleteTableRequest, StatusRequest};
use armada_proto::replication::v1::log_client::LogClient;
use armada_proto::replication::v1::log_server::{Log, LogServer};
use armada_proto::replication::v1::metadata_client::MetadataClient;
use armada_proto::replication::v1::metadata_server::{Metadata, MetadataServer};
use armada_proto::replication::v1::snapshot_client::SnapshotClient;
use armada_proto::replication::v1::snapshot_server::{Snapshot, SnapshotServer};
use armada_proto::replication::v1::{
    MetadataRequest, MetadataResponse, ReplicateRequest, ReplicateResponse, SnapshotChunk,
    SnapshotRequest,
};
use common::{Cluster, get, put};
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

const DEADLINE: Duration = Duration::from_secs(60);

/// Passes Regatta's replication calls through to a real leader, and nothing else.
#[derive(Clone)]
struct RegattaSurface {
    leader: Channel,
}

/// The caller's deadline, carried over to the leader.
fn forwarded<T>(request: Request<T>) -> Request<T> {
    let timeout = request
        .metadata()
        .get("grpc-timeout")
        .and_then(|value| value.to_str().ok())
        .map(str::to_string);
    let mut forwarded = Request::new(request.into_inner());
    if let Some(timeout) = timeout.and_then(|value| value.parse().ok()) {
        forwarded.metadata_mut().insert("grpc-timeout", timeout);
    }
    forwarded
}

#[tonic::async_trait]
impl Metadata for RegattaSurface {
    async fn get(
        &self,
        request: Request<MetadataRequest>,
    ) -> Result<Response<MetadataResponse>, Status> {
        MetadataClient::new(self.leader.clone())
            .get(forwarded(request))
            .await
    }
}

#[tonic::async_trait]
impl Log for RegattaSurface {
    type ReplicateStream = Streaming<ReplicateResponse>;

    async fn replicate(
        &self,
        request: Request<ReplicateRequest>,
    ) -> Result<Response<Self::ReplicateStream>, Status> {
        LogClient::new(self.leader.clone())
            .replicate(forwarded(request))
            .await
    }
}

#[tonic::async_trait]
impl Snapshot for RegattaSurface {
    type StreamStream = Streaming<SnapshotChunk>;

    async fn stream(
        &self,
        request: Request<SnapshotRequest>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        SnapshotClient::new(self.leader.clone())
            .stream(forwarded(request))
            .await
    }
}

/// Serves the relay on a loopback port; returns its address.
async fn start_relay(leader_replication: &str) -> String {
    let leader = Channel::from_shared(leader_replication.to_string())
        .expect("uri")
        .connect_lazy();
    let surface = RegattaSurface { leader };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind relay");
    let address = format!("http://{}", listener.local_addr().expect("addr"));
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(MetadataServer::new(surface.clone()))
            .add_service(LogServer::new(surface.clone()))
            .add_service(SnapshotServer::new(surface))
            .serve_with_incoming(incoming),
    );
    address
}

#[tokio::test(flavor = "multi_thread")]
async fn a_follower_of_a_leader_without_the_feed_polls_and_reports_no_error() {
    let leader = Cluster::start(1, &[]);
    let leader = leader.node(1);
    leader.create_table("before").await;
    let relay = start_relay(&leader.replication).await;
    let followers = Cluster::start_follower(1, &relay, &["--replication.reconcile-interval", "1s"]);
    let follower = followers.node(1);

    // A table created later still arrives (by the poll) with its data, and a deleted one goes.
    leader.create_table("later").await;
    leader
        .kv()
        .await
        .put(put("later", "k", "v"))
        .await
        .expect("put");
    let deadline = Instant::now() + DEADLINE;
    let mut kv = follower.kv().await;
    loop {
        let read = kv.range(get("later", "k")).await;
        if read
            .as_ref()
            .is_ok_and(|read| read.get_ref().kvs.first().map(|kv| &kv.value[..]) == Some(b"v"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the table never arrived: {read:?}\n{}",
            follower.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    leader
        .tables()
        .await
        .delete(DeleteTableRequest {
            name: "before".into(),
        })
        .await
        .expect("delete");
    let mut cluster = follower.cluster().await;
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        let status = cluster
            .status(StatusRequest { config: false })
            .await
            .expect("status")
            .into_inner();
        // Several polls and feed attempts later (the feed is tried once per minute).
        if !status.tables.contains_key("before") && status.replication_seconds_since_contact < 3.0 {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the deleted table stayed: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        status.errors.is_empty(),
        "a missing feed is no error: {:?}",
        status.errors
    );
    let (code, body) = common::http_get(&follower.rest, "/readyz");
    assert_eq!((code, body.as_str()), (200, "ready\n"));
    assert!(
        follower
            .log()
            .contains("the leader cluster has no MetadataFeed: polling Metadata.Get instead"),
        "{}",
        follower.log()
    );
}
