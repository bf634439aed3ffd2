//! Cross-cluster replication, leader-cluster side: what a follower cluster pulls.
//!
//! A follower cluster holds one `Log.Replicate` stream per table open against the leader
//! cluster's replication address ([`log_stream`]). Each stream reads the table's applied log
//! entries — exactly the `mvcc.v1.Command`s that were applied, Raft-internal entries as
//! `DUMMY` — first from the table's recent-entries cache ([`log_cache`], filled by the state
//! machine at apply time) and otherwise from the Raft log; a range that was compacted away
//! answers `USE_SNAPSHOT` and the follower falls back to `Snapshot.Stream`.
//!
//! Related: `api::replication` (the gRPC services, protobuf conversion, tokens),
//! `groups::table_sm` (fills the cache and publishes the applied position).

pub mod log_cache;
pub mod log_stream;
