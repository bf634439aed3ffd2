//! Mirroring the leader's table set. Two sources feed the same step (`apply_tables`):
//!
//! * **The feed** ([`follow_feed`]): Armada leaders stream the table list over
//!   `armada.v1.MetadataFeed.Watch` at once, on every table change and as a keep-alive every
//!   second, so a table created or deleted on the leader cluster reaches every follower node
//!   within milliseconds, and the keep-alives prove the leader cluster is alive.
//! * **The poll** ([`run`]): `replication.v1.Metadata.Get` every
//!   `replication.reconcile-interval`, but only while the feed is silent: the fallback for a
//!   leader without the feed (Regatta, an older Armada) or a broken stream. A leader that
//!   answers the feed with `Unimplemented` is asked again only every [`FEED_RETRY_UNSUPPORTED`].
//!
//! Every answer refreshes the leader's index of each table (lag) and the node's and each
//! table's last contact; every failure is kept with its cause for Status and `/readyz`. The
//! node that leads the follower's catalog group turns the differences into catalog changes:
//! it creates missing tables, deletes vanished ones, and replaces a table whose leader id
//! changed (deleted and re-created on the leader) so no stale key survives. Table lists are
//! applied one at a time, so an older poll answer never undoes a newer feed message.

use std::collections::BTreeMap;
use std::sync::Arc;

use std::time::{Duration, Instant};

use armada_proto::armada::v1::MetadataWatchRequest;
use armada_proto::replication::v1::{MetadataRequest, MetadataResponse};
use armada_storage::LeaderIndex;

use super::error::ReplicationError;
use super::host::FollowerHost;
use super::lag::{CONTACT_GRACE, applied_leader_index};
use super::state::{Follower, record_metrics};

/// The feed's call, as errors name it.
const FEED: &str = "MetadataFeed.Watch";
/// Deadline of one `Metadata.Get`.
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of the catalog changes of one reconcile round.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// A feed that delivers nothing (the leader sends a keep-alive every second) for this long is
/// a dead link: it is reopened, and polls take over meanwhile.
const FEED_IDLE_TIMEOUT: Duration = CONTACT_GRACE;
/// Pause before asking again a leader that does not know `MetadataFeed` (it may be upgraded).
pub const FEED_RETRY_UNSUPPORTED: Duration = Duration::from_secs(60);
/// Retry pauses after a failed or ended feed.
const FEED_MIN_BACKOFF: Duration = Duration::from_millis(100);
const FEED_MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Polls the leader's table set every reconcile interval while the feed is silent.
pub async fn run(follower: Arc<Follower>) {
    let interval = follower.reconcile_interval;
    let mut failures = 0u32;
    loop {
        let Some(host) = follower.host() else { return };
        if !follower.feed_active() {
            match poll_once(&follower, host.as_ref()).await {
                Ok(()) => failures = 0,
                Err(error) => {
                    failures += 1;
                    // Say it once, then only now and then while the leader stays unreachable.
                    if failures == 1 || failures.is_multiple_of(60) {
                        tracing::warn!(%error, leader_cluster = follower.leader_cluster_address(), "reconciling tables with the leader cluster failed");
                    }
                }
            }
        }
        record_metrics(&follower);
        drop(host);
        tokio::time::sleep(interval).await;
    }
}

async fn poll_once(follower: &Follower, host: &dyn FollowerHost) -> Result<(), ReplicationError> {
    let mut request = tonic::Request::new(MetadataRequest {});
    request.set_timeout(METADATA_TIMEOUT);
    let mut client = follower.leader_cluster.metadata_client();
    let answer = tokio::time::timeout(METADATA_TIMEOUT, client.get(request))
        .await
        .unwrap_or_else(|_| Err(tonic::Status::unavailable("no answer in time")));
    match answer {
        Ok(response) => apply_tables(follower, host, response.into_inner()).await,
        Err(status) => {
            let error = ReplicationError::call("Metadata.Get", &status);
            follower.contact.failed(error.to_string());
            follower.leader_cluster.rotate();
            Err(error)
        }
    }
}

/// How one feed session ended.
enum FeedEnd {
    /// The leader does not serve `MetadataFeed`.
    Unsupported,
    /// It ended or failed after delivering at least once.
    AfterNews,
    Failed(ReplicationError),
}

/// Holds `MetadataFeed.Watch` open against the leader address in use, reopening it after an
/// end or failure.
pub async fn follow_feed(follower: Arc<Follower>) {
    let mut backoff = FEED_MIN_BACKOFF;
    loop {
        let Some(host) = follower.host() else { return };
        let ended = feed_session(&follower, host.as_ref()).await;
        drop(host);
        let pause = match ended {
            FeedEnd::Unsupported => {
                tracing::info!(
                    leader_cluster = follower.leader_cluster_address(),
                    "the leader cluster has no MetadataFeed: polling Metadata.Get instead"
                );
                FEED_RETRY_UNSUPPORTED
            }
            FeedEnd::AfterNews => {
                backoff = FEED_MIN_BACKOFF;
                backoff
            }
            FeedEnd::Failed(error) => {
                tracing::debug!(%error, "the metadata feed failed");
                follower.contact.failed(error.to_string());
                backoff = (backoff * 2).min(FEED_MAX_BACKOFF);
                backoff
            }
        };
        tokio::time::sleep(pause).await;
    }
}

async fn feed_session(follower: &Follower, host: &dyn FollowerHost) -> FeedEnd {
    let mut client = follower.leader_cluster.metadata_feed_client();
    let opened = tokio::time::timeout(
        FEED_IDLE_TIMEOUT,
        client.watch(tonic::Request::new(MetadataWatchRequest {})),
    );
    let mut stream = match opened.await {
        Err(_) => return FeedEnd::Failed(ReplicationError::NoAnswerInTime(FEED)),
        Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => {
            return FeedEnd::Unsupported;
        }
        Ok(Err(status)) => return FeedEnd::Failed(ReplicationError::call(FEED, &status)),
        Ok(Ok(response)) => response.into_inner(),
    };
    let mut delivered = false;
    loop {
        let next = match tokio::time::timeout(FEED_IDLE_TIMEOUT, stream.message()).await {
            Err(_) => Err(ReplicationError::Silent(FEED)),
            Ok(Ok(Some(tables))) => Ok(tables),
            Ok(Ok(None)) => return FeedEnd::AfterNews,
            Ok(Err(status)) => Err(ReplicationError::call(FEED, &status)),
        };
        match next {
            Ok(tables) => {
                delivered = true;
                if let Ok(mut heard) = follower.feed_heard_at.lock() {
                    *heard = Some(Instant::now());
                }
                if let Err(error) = apply_tables(follower, host, tables).await {
                    tracing::warn!(%error, "applying the leader cluster's table set failed");
                }
            }
            Err(error) if delivered => {
                follower.contact.failed(error.to_string());
                return FeedEnd::AfterNews;
            }
            Err(error) => return FeedEnd::Failed(error),
        }
    }
}

/// Takes in one answer of the leader: contact, leader indices, the known table set; on the
/// catalog's leader, the catalog changes that mirror it.
async fn apply_tables(
    follower: &Follower,
    host: &dyn FollowerHost,
    response: MetadataResponse,
) -> Result<(), ReplicationError> {
    let _one_at_a_time = follower.applying.lock().await;
    follower.heard(None);
    let groups = host.table_groups();
    for table in &response.tables {
        let lag = follower.lag(&table.name);
        lag.contact.listed();
        if table.leader_index > 0 {
            let applied = groups
                .get(&table.name)
                .map(|group| applied_leader_index(group.table()))
                .unwrap_or_default();
            lag.observe_leader(LeaderIndex(table.leader_index), applied);
        }
    }
    if let Ok(mut tables) = follower.leader_cluster_tables.lock() {
        *tables = Some(
            response
                .tables
                .iter()
                .map(|table| (table.name.clone(), table.id.clone()))
                .collect(),
        );
    }
    if !host.leads_catalog() {
        return Ok(());
    }
    let desired: BTreeMap<String, Option<u64>> = response
        .tables
        .iter()
        .map(|table| (table.name.clone(), table.id.parse::<u64>().ok()))
        .collect();
    let deadline = tokio::time::Instant::now() + CHANGE_TIMEOUT;
    remove_vanished(follower, host, &desired, deadline).await?;
    create_missing(host, &desired, deadline).await
}

/// Deletes local tables that the leader no longer has, or has re-created under a new id.
async fn remove_vanished(
    follower: &Follower,
    host: &dyn FollowerHost,
    desired: &BTreeMap<String, Option<u64>>,
    deadline: tokio::time::Instant,
) -> Result<(), ReplicationError> {
    let catalog = host.catalog_state();
    for (name, record) in &catalog.tables {
        let replace = match desired.get(name) {
            None => true,
            Some(upstream) => *upstream != record.upstream_id,
        };
        if replace {
            tracing::info!(
                table = name,
                "the leader cluster deleted or re-created the table: removing the local copy"
            );
            follower.lag(name).reset();
            follower.forget_lag(name);
            host.delete_table(name, deadline)
                .await
                .or_else(|error| match error {
                    crate::error::ApiError::TableNotFound(_) => Ok(()),
                    error => Err(error),
                })
                .map_err(|error| ReplicationError::Catalog {
                    action: "deleting",
                    table: name.clone(),
                    error,
                })?;
        }
    }
    Ok(())
}

async fn create_missing(
    host: &dyn FollowerHost,
    desired: &BTreeMap<String, Option<u64>>,
    deadline: tokio::time::Instant,
) -> Result<(), ReplicationError> {
    let catalog = host.catalog_state();
    for (name, upstream) in desired {
        if !catalog.tables.contains_key(name) {
            tracing::info!(
                table = name,
                "replicating a new table of the leader cluster"
            );
            match host.create_table(name, *upstream, deadline).await {
                Ok(_) | Err(crate::error::ApiError::TableExists) => {}
                Err(error) => {
                    return Err(ReplicationError::Catalog {
                        action: "creating",
                        table: name.clone(),
                        error,
                    });
                }
            }
        }
    }
    Ok(())
}
