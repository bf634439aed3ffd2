//! The connection to the leader cluster: one lazily connected channel per configured
//! replication address (`replication.leader-address`), the replication token and client
//! certificate on every call, and the address in use, which moves on after a failure.
//!
//! Invariant: every call of the follower side takes the channel in use, so a rotation after
//! `Unavailable` applies to the next call of any kind (log, snapshot, table list, forwarded
//! write). Streams open through [`LeaderCluster::open_stream`], the one place that turns a
//! refusal into a [`ReplicationError`] (with the causes tonic hides behind "transport error")
//! and rotates.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use armada_client::{CallDecorator, ClientIdentity, ConnectOptions};
use armada_proto::armada::v1::metadata_feed_client::MetadataFeedClient;
use armada_proto::regatta::v1::kv_client::KvClient;
use armada_proto::replication::v1::log_client::LogClient;
use armada_proto::replication::v1::metadata_client::MetadataClient;
use armada_proto::replication::v1::snapshot_client::SnapshotClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use super::error::ReplicationError;
use crate::config::ReplicationConfig;

/// A channel to one address of the leader cluster, with the replication token on every call.
pub type LeaderClusterChannel = InterceptedService<Channel, CallDecorator>;

/// How long the opening of a stream (and then each of its messages) may take before the link
/// counts as dead: the leader cluster sends a heartbeat about every second.
pub const STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(15);

/// Largest message accepted from the leader cluster (a Replicate batch may exceed 4 MiB
/// somewhat).
const MAX_RECEIVE_BYTES: usize = 64 * 1024 * 1024;

/// The leader cluster's replication addresses and the one in use.
pub struct LeaderCluster {
    addresses: Vec<String>,
    channels: Vec<LeaderClusterChannel>,
    /// Index into `channels` of the address in use; moves on after a failure.
    current: AtomicUsize,
}

impl LeaderCluster {
    /// Channels (connected lazily) to every configured address. On a follower the
    /// `replication.*` TLS keys configure this client (see `config`).
    pub fn connect(config: &ReplicationConfig) -> anyhow::Result<LeaderCluster> {
        let options = ConnectOptions {
            ca_file: (!config.ca_filename.is_empty())
                .then(|| std::path::PathBuf::from(&config.ca_filename)),
            identity: (!config.cert_filename.is_empty()).then(|| ClientIdentity {
                cert_file: std::path::PathBuf::from(&config.cert_filename),
                key_file: std::path::PathBuf::from(&config.key_filename),
            }),
            server_name: (!config.server_name.is_empty()).then(|| config.server_name.clone()),
            token: (!config.token.is_empty()).then(|| config.token.clone()),
            timeout: None,
            connect_timeout: Some(Duration::from_secs(2)),
        };
        let decorator = CallDecorator::new(&options)?;
        let addresses = config.leader_addresses();
        let channels = addresses
            .iter()
            .map(|address| {
                armada_client::lazy_channel(address, &options)
                    .map(|channel| InterceptedService::new(channel, decorator.clone()))
                    .map_err(|error| {
                        anyhow::anyhow!("replication.leader-address {address}: {error}")
                    })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(LeaderCluster {
            addresses,
            channels,
            current: AtomicUsize::new(0),
        })
    }

    /// The address in use (for messages).
    pub fn address(&self) -> String {
        self.addresses
            .get(self.current.load(Ordering::Relaxed) % self.addresses.len().max(1))
            .cloned()
            .unwrap_or_default()
    }

    /// Every configured address.
    pub fn addresses(&self) -> &[String] {
        &self.addresses
    }

    fn channel(&self) -> LeaderClusterChannel {
        let at = self.current.load(Ordering::Relaxed) % self.channels.len();
        self.channels[at].clone()
    }

    /// Moves to the next address after a failure.
    pub fn rotate(&self) {
        if self.channels.len() > 1 {
            self.current.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn metadata_client(&self) -> MetadataClient<LeaderClusterChannel> {
        MetadataClient::new(self.channel()).max_decoding_message_size(MAX_RECEIVE_BYTES)
    }

    pub fn metadata_feed_client(&self) -> MetadataFeedClient<LeaderClusterChannel> {
        MetadataFeedClient::new(self.channel()).max_decoding_message_size(MAX_RECEIVE_BYTES)
    }

    pub fn log_client(&self) -> LogClient<LeaderClusterChannel> {
        LogClient::new(self.channel()).max_decoding_message_size(MAX_RECEIVE_BYTES)
    }

    pub fn snapshot_client(&self) -> SnapshotClient<LeaderClusterChannel> {
        SnapshotClient::new(self.channel()).max_decoding_message_size(MAX_RECEIVE_BYTES)
    }

    pub fn kv_client(&self) -> KvClient<LeaderClusterChannel> {
        KvClient::new(self.channel()).max_decoding_message_size(MAX_RECEIVE_BYTES)
    }

    /// Opens a server stream (`call` names it in errors) within [`STREAM_IDLE_TIMEOUT`];
    /// after `Unavailable`, the next call goes to the next address.
    pub async fn open_stream<T>(
        &self,
        call: &'static str,
        opening: impl Future<Output = Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>>,
    ) -> Result<tonic::Streaming<T>, ReplicationError> {
        let answer = tokio::time::timeout(STREAM_IDLE_TIMEOUT, opening)
            .await
            .map_err(|_| ReplicationError::NoAnswer(call))?;
        answer.map(tonic::Response::into_inner).map_err(|status| {
            let error = ReplicationError::call(call, &status);
            if error.rotates() {
                self.rotate();
            }
            error
        })
    }
}
