//! Replication progress and contact, per table and per node: what makes a lagging or cut-off
//! follower visible (Status, metrics, `/readyz`).
//!
//! * [`TableLag`]: the leader cluster's index of a table as last reported, when this replica
//!   was first seen behind it, and the snapshot recoveries run here.
//! * [`Contact`]: when the leader cluster last answered (about one table, or at all), and the
//!   cause of the last failure, cleared by the next answer.
//!
//! Invariant: silence counts as lag. A replica that hears nothing for longer than a grace is
//! at best as old as the last answer, so its lag in seconds is at least that silence, even
//! when it had caught up with everything it heard of.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use armada_storage::LeaderIndex;

/// A follower whose last answer from the leader cluster is at most this old is taken as
/// current (the leader repeats itself every second: `Log.Replicate` heartbeats and
/// `MetadataFeed` keep-alives); past it, the silence counts as lag.
pub const CONTACT_GRACE: Duration = Duration::from_secs(3);

/// When the leader cluster last answered (for one table, or for this node), and why the last
/// attempt failed if it did: what makes a cut-off follower visible.
#[derive(Debug)]
pub struct Contact {
    state: Mutex<ContactState>,
}

#[derive(Debug)]
struct ContactState {
    /// The last answer; before the first one, when this record was made (so a follower that
    /// never reached the leader shows its silence growing from start-up).
    heard_at: Instant,
    ever_heard: bool,
    /// The last failure, cleared by the next answer.
    error: Option<String>,
}

/// A point-in-time reading of a [`Contact`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ContactReport {
    pub seconds_since_contact: f64,
    pub ever_heard: bool,
    pub error: Option<String>,
}

impl Default for Contact {
    fn default() -> Self {
        Contact {
            state: Mutex::new(ContactState {
                heard_at: Instant::now(),
                ever_heard: false,
                error: None,
            }),
        }
    }
}

impl Contact {
    /// The leader cluster answered (data, a heartbeat, a keep-alive or the table list).
    pub fn heard(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.heard_at = Instant::now();
            state.ever_heard = true;
            state.error = None;
        }
    }

    /// The leader cluster answered something that names this table (its table list) but says
    /// nothing of the table's own replication: proof of contact, yet the table's own failure
    /// (if any) stands until its own stream answers again.
    pub fn listed(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.heard_at = Instant::now();
            state.ever_heard = true;
        }
    }

    /// A call to the leader cluster failed with `error`.
    pub fn failed(&self, error: String) {
        if let Ok(mut state) = self.state.lock() {
            state.error = Some(error);
        }
    }

    pub fn report(&self) -> ContactReport {
        self.state
            .lock()
            .map(|state| ContactReport {
                seconds_since_contact: state.heard_at.elapsed().as_secs_f64(),
                ever_heard: state.ever_heard,
                error: state.error.clone(),
            })
            .unwrap_or_default()
    }
}

/// Seconds of staleness that silence alone proves: none within `grace`, all of it after.
pub fn silence_seconds(seconds_since_contact: f64, grace: Duration) -> f64 {
    if seconds_since_contact > grace.as_secs_f64() {
        seconds_since_contact
    } else {
        0.0
    }
}

/// Replication progress of one table on this node.
#[derive(Debug, Default)]
pub struct TableLag {
    /// The leader's applied index of the table (a [`LeaderIndex`]), as last reported by the
    /// leader; atomic so that readers never wait for the worker.
    leader_index: AtomicU64,
    /// When this replica was first seen behind the leader's index (cleared when caught up).
    behind_since: Mutex<Option<Instant>>,
    /// Snapshot bootstraps of this table run by this node.
    recoveries: AtomicU64,
    /// The last answer about this table from the leader cluster.
    pub contact: Contact,
}

/// A point-in-time reading of [`TableLag`] against the applied leader index.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LagReport {
    pub leader_index: LeaderIndex,
    pub applied_leader_index: LeaderIndex,
    pub lag_entries: u64,
    /// How stale this replica may be: the time since it was first seen behind, or, when the
    /// leader cluster has been silent for longer than the grace, the time since it last
    /// answered (nothing newer can be known, so the replica is at best that old).
    pub lag_seconds: f64,
    pub recoveries: u64,
    pub seconds_since_contact: f64,
    /// Why the last call about this table failed, if it did and nothing answered since.
    pub error: Option<String>,
}

impl TableLag {
    /// The leader reported its index.
    pub fn observe_leader(&self, leader_index: LeaderIndex, applied: LeaderIndex) {
        self.leader_index
            .fetch_max(leader_index.get(), Ordering::Relaxed);
        self.observe_applied(applied);
    }

    /// This replica applied up to `applied`.
    pub fn observe_applied(&self, applied: LeaderIndex) {
        let behind = applied < self.reported();
        if let Ok(mut since) = self.behind_since.lock() {
            match (behind, since.is_some()) {
                (true, false) => *since = Some(Instant::now()),
                (false, true) => *since = None,
                _ => {}
            }
        }
    }

    /// The leader's index as last reported (0: none yet).
    fn reported(&self) -> LeaderIndex {
        LeaderIndex(self.leader_index.load(Ordering::Relaxed))
    }

    pub fn count_recovery(&self) {
        self.recoveries.fetch_add(1, Ordering::Relaxed);
    }

    /// Forgets the leader's index (the table was replaced on the leader).
    pub fn reset(&self) {
        self.leader_index.store(0, Ordering::Relaxed);
        if let Ok(mut since) = self.behind_since.lock() {
            *since = None;
        }
    }

    /// Progress at `applied`; silence longer than `grace` counts as lag.
    pub fn report(&self, applied: LeaderIndex, grace: Duration) -> LagReport {
        self.observe_applied(applied);
        let leader_index = self.reported().max(applied);
        let behind_seconds = self
            .behind_since
            .lock()
            .ok()
            .and_then(|since| *since)
            .map_or(0.0, |since| since.elapsed().as_secs_f64());
        let contact = self.contact.report();
        LagReport {
            leader_index,
            applied_leader_index: applied,
            lag_entries: leader_index.get() - applied.get(),
            lag_seconds: behind_seconds.max(silence_seconds(contact.seconds_since_contact, grace)),
            recoveries: self.recoveries.load(Ordering::Relaxed),
            seconds_since_contact: contact.seconds_since_contact,
            error: contact.error,
        }
    }
}

/// One table's staleness for people: entries and seconds behind, silence, cause.
pub fn describe_lag(name: &str, report: &LagReport) -> String {
    let mut line = format!(
        "table {name}: {} entries / {:.1} s behind, last answer from the leader cluster {:.1} s ago",
        report.lag_entries, report.lag_seconds, report.seconds_since_contact
    );
    if let Some(error) = &report.error {
        line.push_str(": ");
        line.push_str(error);
    }
    line
}

/// The leader index a follower replica has applied (0 before its first bootstrap).
pub fn applied_leader_index(table: &armada_table::Table) -> LeaderIndex {
    table
        .applied_position()
        .ok()
        .and_then(|position| position.leader_index)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Long enough that a test's own pauses never count as silence.
    const NO_GRACE_USED: Duration = Duration::from_secs(3600);

    #[test]
    fn lag_counts_entries_and_time_behind() {
        let lag = TableLag::default();
        let fresh = lag.report(LeaderIndex(0), NO_GRACE_USED);
        assert_eq!((fresh.leader_index, fresh.lag_entries), (LeaderIndex(0), 0));
        assert_eq!(fresh.lag_seconds, 0.0);
        lag.observe_leader(LeaderIndex(10), LeaderIndex(4));
        let report = lag.report(LeaderIndex(4), NO_GRACE_USED);
        assert_eq!(report.leader_index, LeaderIndex(10));
        assert_eq!(report.lag_entries, 6);
        std::thread::sleep(Duration::from_millis(5));
        assert!(lag.report(LeaderIndex(4), NO_GRACE_USED).lag_seconds > 0.0);
        let caught_up = lag.report(LeaderIndex(10), NO_GRACE_USED);
        assert_eq!(caught_up.lag_entries, 0);
        assert_eq!(caught_up.lag_seconds, 0.0);
        // A replica ahead of a stale leader report is not behind.
        assert_eq!(lag.report(LeaderIndex(12), NO_GRACE_USED).lag_entries, 0);
        lag.count_recovery();
        assert_eq!(lag.report(LeaderIndex(12), NO_GRACE_USED).recoveries, 1);
        lag.reset();
        assert_eq!(
            lag.report(LeaderIndex(0), NO_GRACE_USED).leader_index,
            LeaderIndex(0)
        );
    }

    #[test]
    fn silence_from_the_leader_cluster_counts_as_lag_past_the_grace() {
        let lag = TableLag::default();
        lag.observe_leader(LeaderIndex(10), LeaderIndex(10));
        lag.contact.heard();
        std::thread::sleep(Duration::from_millis(20));
        // Caught up as of the last answer and within the grace: current.
        let current = lag.report(LeaderIndex(10), NO_GRACE_USED);
        assert_eq!(current.lag_seconds, 0.0);
        assert!(current.seconds_since_contact >= 0.02, "{current:?}");
        // Past the grace, the replica is as old as the last answer, though nothing newer is known.
        let silent = lag.report(LeaderIndex(10), Duration::from_millis(10));
        assert_eq!(silent.lag_entries, 0);
        assert!(silent.lag_seconds >= 0.02, "{silent:?}");
        assert_eq!(silent.lag_seconds, silent.seconds_since_contact);
    }

    #[test]
    fn a_failure_is_kept_until_the_next_answer() {
        let contact = Contact::default();
        assert!(!contact.report().ever_heard);
        contact.failed("Metadata.Get: Unauthenticated: invalid token".into());
        let failed = contact.report();
        assert_eq!(
            failed.error.as_deref(),
            Some("Metadata.Get: Unauthenticated: invalid token")
        );
        assert!(!failed.ever_heard);
        // A table list names the table but says nothing of its stream: the failure stands.
        contact.listed();
        let listed = contact.report();
        assert!(listed.ever_heard);
        assert!(listed.error.is_some(), "{listed:?}");
        contact.heard();
        let heard = contact.report();
        assert_eq!(heard.error, None);
        assert!(heard.ever_heard);
    }

    #[test]
    fn a_stale_table_is_described_with_its_cause() {
        let report = LagReport {
            lag_entries: 3,
            lag_seconds: 12.0,
            seconds_since_contact: 12.0,
            error: Some("Log.Replicate: Unavailable: connection refused".into()),
            ..Default::default()
        };
        assert_eq!(
            describe_lag("flags", &report),
            "table flags: 3 entries / 12.0 s behind, last answer from the leader cluster 12.0 s ago: \
             Log.Replicate: Unavailable: connection refused"
        );
    }
}
