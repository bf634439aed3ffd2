//! The connection to the leader cluster: one lazily connected channel per configured
//! replication address (`replication.leader-address`), the replication token and client
//! certificate on every call, and the address in use, which moves on after a failure.
//!
//! Invariant: every call of the follower side goes to [`LeaderCluster::channel`], so a
//! rotation after `Unavailable` applies to the next call of any kind (log, snapshot, table
//! list, forwarded write). Failures are described for people by [`describe_failure`], with the
//! causes tonic hides behind "transport error".

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

use crate::config::ReplicationConfig;

/// A channel to one address of the leader cluster, with the replication token on every call.
pub type LeaderClusterChannel = InterceptedService<Channel, CallDecorator>;

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
}

/// A failed call to the leader cluster for people: the call, the status code (the cause an
/// operator acts on: `Unavailable`, `Unauthenticated`, …) and the message with its causes.
pub(crate) fn describe_failure(call: &str, status: &tonic::Status) -> String {
    format!("{call}: {:?}: {}", status.code(), describe_status(status))
}

/// A status from the leader cluster with its causes: for a refused TLS handshake or a refused
/// connection, tonic's message alone is only "operation was canceled" or "transport error".
pub(crate) fn describe_status(status: &tonic::Status) -> String {
    use std::error::Error;
    let mut text = status.message().to_string();
    let mut cause = status.source();
    while let Some(error) = cause {
        let next = error.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        cause = error.source();
    }
    text
}

#[cfg(test)]
mod status_tests {
    #[test]
    fn causes_are_appended_once() {
        let io = std::io::Error::other("invalid peer certificate: UnknownIssuer");
        let mut status = tonic::Status::unavailable("operation was canceled");
        status.set_source(std::sync::Arc::new(io));
        assert_eq!(
            super::describe_status(&status),
            "operation was canceled: invalid peer certificate: UnknownIssuer"
        );
        assert_eq!(
            super::describe_status(&tonic::Status::unavailable("plain")),
            "plain"
        );
    }
}
