//! Raft groups: the type configuration, the node-wide log, state machines, snapshots and the
//! network. One openraft `Raft` per table plus one for the catalog, all sharing one log engine
//! and one network.

pub mod handle;
pub mod log;
pub mod snapshot;
pub mod table_group;
pub mod table_sm;
pub mod types;

use std::sync::Arc;

use crate::catalog::CatalogStateMachine;
use table_sm::TableStateMachine;

pub type TableRaft = openraft::Raft<types::TypeConfig, TableStateMachine>;
pub type CatalogRaft = openraft::Raft<types::TypeConfig, CatalogStateMachine>;

/// Timing of every group, from `--raft.rtt`, `--raft.heartbeat-rtt`, `--raft.election-rtt`
/// and the snapshot settings.
pub fn raft_config(
    rtt_ms: u64,
    heartbeat_rtt: u64,
    election_rtt: u64,
    snapshot_entries: u64,
    compaction_overhead: u64,
) -> Result<Arc<openraft::Config>, openraft::ConfigError> {
    let heartbeat = rtt_ms * heartbeat_rtt;
    let election = rtt_ms * election_rtt;
    let config = openraft::Config {
        cluster_name: "armada".into(),
        heartbeat_interval: heartbeat,
        election_timeout_min: election,
        election_timeout_max: election * 2,
        enable_pre_vote: Some(true),
        // A node whose data directory was lost rejoins under its old id and is rebuilt by
        // snapshot (an operator's recovery path); its log then goes backwards, which the
        // leader must accept instead of asserting.
        allow_log_reversion: Some(true),
        snapshot_policy: if snapshot_entries == 0 {
            openraft::SnapshotPolicy::Never
        } else {
            openraft::SnapshotPolicy::LogsSinceLast(snapshot_entries)
        },
        max_in_snapshot_log_to_keep: compaction_overhead,
        purge_batch_size: 64,
        ..Default::default()
    };
    Ok(Arc::new(config.validate()?))
}
