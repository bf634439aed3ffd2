//! Snapshot bootstrap: replaces a table's replica with a snapshot of the leader cluster's
//! (`Snapshot.Stream`: a dump whose final DUMMY record carries the leader index it was taken
//! at). Used for a table without data, after a Reset, and when the leader answers
//! `USE_SNAPSHOT` (the entries this replica needs are gone from its log).
//!
//! The dump is spooled to a temporary file first, then installed as one staged load through
//! the table's Raft group: readers see the old contents until the switch, then the new ones,
//! on every replica at the same log index. At most `replication.max-recovery-in-flight`
//! bootstraps run at once per node, and only on the node that leads the table's Raft group.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use armada_proto::replication::v1::{SnapshotChunk, SnapshotRequest};
use bytes::Bytes;

use super::error::ReplicationError;
use super::host::FollowerHost;
use super::lag::{TableLag, applied_leader_index};
use super::leader_cluster::STREAM_IDLE_TIMEOUT;
use super::state::Follower;
use crate::groups::table_group::TableGroup;

/// Deadline of one snapshot bootstrap.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(3600);
/// Write buffer of the spool file.
const SPOOL_BUFFER_BYTES: usize = 1024 * 1024;

/// Replaces the table with a snapshot of the leader's (dump + final leader index).
pub async fn bootstrap(
    follower: &Follower,
    host: &dyn FollowerHost,
    group: &Arc<TableGroup>,
    lag: &TableLag,
) -> Result<(), ReplicationError> {
    let _slot = follower
        .recoveries
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| ReplicationError::ShuttingDown)?;
    if !host.leads_table(group) {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let mut request = tonic::Request::new(SnapshotRequest {
        table: Bytes::from(group.name().as_bytes().to_vec()),
    });
    request.set_timeout(SNAPSHOT_TIMEOUT);
    let mut client = follower.leader_cluster.snapshot_client();
    let stream = follower
        .leader_cluster
        .open_stream("Snapshot.Stream", client.stream(request))
        .await?;
    let spool = tempfile::NamedTempFile::new_in(host.temporary_dir())
        .map_err(|source| spool_error("cannot create a spool file", source))?;
    let bytes = receive(follower, lag, stream, &spool).await?;
    // Counted once the snapshot is here, before it is installed: a reader that sees the new
    // contents also sees the recovery counted.
    lag.count_recovery();
    metrics::counter!("armada_replication_snapshot_recoveries_total", "table" => group.name().to_string())
        .increment(1);
    let installed = host
        .install_snapshot(
            group,
            spool.path(),
            tokio::time::Instant::now() + SNAPSHOT_TIMEOUT,
        )
        .await
        .map_err(ReplicationError::Install)?;
    let leader_index = installed.leader_index.unwrap_or_default();
    lag.observe_leader(leader_index, applied_leader_index(group.table()));
    tracing::info!(
        table = group.name(),
        records = installed.records,
        bytes,
        leader_index = leader_index.get(),
        seconds = started.elapsed().as_secs_f64(),
        "bootstrapped the table from a snapshot of the leader cluster"
    );
    Ok(())
}

/// Writes the snapshot stream into `spool`; returns its size.
async fn receive(
    follower: &Follower,
    lag: &TableLag,
    mut stream: tonic::Streaming<SnapshotChunk>,
    spool: &tempfile::NamedTempFile,
) -> Result<u64, ReplicationError> {
    let file = spool
        .reopen()
        .map_err(|source| spool_error("cannot open the spool file", source))?;
    let mut writer = std::io::BufWriter::with_capacity(SPOOL_BUFFER_BYTES, file);
    let mut bytes = 0u64;
    loop {
        let next = tokio::time::timeout(STREAM_IDLE_TIMEOUT, stream.message())
            .await
            .map_err(|_| ReplicationError::Silent("Snapshot.Stream"))?;
        match next {
            Ok(Some(chunk)) => {
                follower.heard(Some(lag));
                bytes += chunk.data.len() as u64;
                tokio::task::block_in_place(|| writer.write_all(&chunk.data))
                    .map_err(|source| spool_error("writing the spool file", source))?;
            }
            Ok(None) => break,
            Err(status) => return Err(ReplicationError::call("Snapshot.Stream", &status)),
        }
    }
    tokio::task::block_in_place(|| writer.flush())
        .map_err(|source| spool_error("writing the spool file", source))?;
    Ok(bytes)
}

fn spool_error(what: &'static str, source: std::io::Error) -> ReplicationError {
    ReplicationError::Spool { what, source }
}
