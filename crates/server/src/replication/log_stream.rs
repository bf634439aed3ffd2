//! One `Log.Replicate` stream on the leader cluster: a table's applied log from an index, kept
//! open (long poll) so that a caught-up follower cluster receives each new entry as soon as
//! it is applied here, without polling.
//!
//! The stream first catches up — batches of contiguous entries from `next` to the applied
//! index, each from the table's [`LogCache`] when it holds `next`, else from the Raft log —
//! then announces the applied index once (`Applied`), then waits on the state machine's
//! applied-position watch and ships what was applied. While nothing is new it repeats
//! `Applied` every [`HEARTBEAT_INTERVAL`], so the follower sees both liveness and the leader
//! cluster's index.
//!
//! It ends OK at its deadline (set by the caller before the client's own), when the client
//! goes away, or when the server stops; with `TableDeleted` when the table leaves the catalog;
//! with `LeaderBehind` / `UseSnapshot` as the first and only answer when the follower is
//! ahead / the range was compacted. Indices are contiguous and strictly increasing over the
//! whole stream, and never beyond the applied index, which is read from the watch that the
//! state machine publishes after the entries (and the cache) are written.
//!
//! The stream produces domain [`LogEvent`]s; `api::replication` turns them into protobuf.

use std::sync::Arc;
use std::time::Duration;

use armada_storage::LogIndex;
use armada_table::AppliedPosition;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::log_cache::{CachedCommand, CachedEntry, LogCache};
use crate::catalog::CatalogState;
use crate::groups::log::GroupLog;
use crate::node::TableGroup;

/// Silence after which a caught-up stream repeats the applied index.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// Entries read from the Raft log per step when the cache does not hold them.
const LOG_READ_BATCH: u64 = 1024;

/// Only the type of an `mvcc.v1.Command` (other fields are skipped, not copied).
#[derive(Clone, PartialEq, prost::Message)]
struct CommandKind {
    #[prost(int32, tag = "2")]
    kind: i32,
}

/// Whether the entry is a LOAD command (internal to the leader cluster, never replicated).
fn is_staged_load(entry: &CachedEntry) -> bool {
    use armada_table::pb::command::CommandType;
    let CachedCommand::Command(bytes) = &entry.command else {
        return false;
    };
    <CommandKind as prost::Message>::decode(bytes.as_ref()).is_ok_and(|command| {
        matches!(
            CommandType::try_from(command.kind),
            Ok(CommandType::LoadBegin | CommandType::LoadChunk | CommandType::LoadCommit)
        )
    })
}

/// What the leader cluster tells a follower next.
#[derive(Debug, PartialEq)]
pub enum LogEvent {
    /// Contiguous applied entries, the first being the one due next; `applied` is the
    /// table's applied index when they were read.
    Entries {
        entries: Vec<CachedEntry>,
        applied: LogIndex,
    },
    /// Nothing (more) to send for now: the table's applied index. Sent once on catching up,
    /// then as the idle heartbeat.
    Applied(LogIndex),
    /// The follower asked for an index beyond the applied one. Ends the stream.
    LeaderBehind,
    /// The entry asked for was compacted away: recover from a snapshot. Ends the stream.
    UseSnapshot,
    /// The table was deleted (or re-created) while streaming. Ends the stream.
    TableDeleted,
    /// Reading the log failed. Ends the stream.
    Failed(String),
}

impl LogEvent {
    fn ends_stream(&self) -> bool {
        !matches!(self, LogEvent::Entries { .. } | LogEvent::Applied(_))
    }
}

/// Why the stream stopped waiting.
enum Wake {
    Applied,
    Heartbeat,
    TableDeleted,
    End,
}

/// Whether to go on after delivering a message.
#[derive(PartialEq)]
enum Flow {
    Continue,
    End,
}

pub struct LogStream {
    group: Arc<TableGroup>,
    log: GroupLog,
    cache: LogCache,
    applied: watch::Receiver<AppliedPosition>,
    catalog: watch::Receiver<Arc<CatalogState>>,
    stop: watch::Receiver<bool>,
    deadline: Instant,
    message_bytes: usize,
    /// The next index to send.
    next: LogIndex,
    last_sent: Instant,
    cache_hits: metrics::Counter,
    cache_misses: metrics::Counter,
}

impl LogStream {
    /// A stream of `group`'s log from `start`, ending at `deadline` or when `stop` turns true.
    /// `message_bytes` bounds the payload of one `Entries` (one entry may exceed it).
    pub fn new(
        group: Arc<TableGroup>,
        log: GroupLog,
        mut catalog: watch::Receiver<Arc<CatalogState>>,
        stop: watch::Receiver<bool>,
        start: LogIndex,
        deadline: Instant,
        message_bytes: usize,
    ) -> LogStream {
        catalog.mark_unchanged();
        let labels = [
            ("table", group.name().to_string()),
            ("shard_id", group.id().to_string()),
        ];
        LogStream {
            cache: group.state_machine().log_cache().clone(),
            applied: group.state_machine().subscribe(),
            cache_hits: metrics::counter!("armada_replication_cache_hits_total", &labels),
            cache_misses: metrics::counter!("armada_replication_cache_misses_total", &labels),
            group,
            log,
            catalog,
            stop,
            deadline,
            message_bytes,
            next: start,
            last_sent: Instant::now(),
        }
    }

    /// Runs the stream, handing each event to `encode` and the result to `sender`, until one
    /// of the ends described in the module documentation.
    pub async fn run<M>(mut self, sender: mpsc::Sender<M>, encode: impl Fn(LogEvent) -> M) {
        let mut applied = self.applied_index();
        if self.next.get() > applied.get() + 1 {
            self.deliver(&sender, encode(LogEvent::LeaderBehind)).await;
            return;
        }
        if !self.table_present() {
            self.deliver(&sender, encode(LogEvent::TableDeleted)).await;
            return;
        }
        let mut announced = false;
        loop {
            while self.next <= applied {
                if Instant::now() >= self.deadline {
                    return;
                }
                let event = self.read_next(applied);
                let ends = event.ends_stream();
                if self.deliver(&sender, encode(event)).await == Flow::End || ends {
                    return;
                }
            }
            if !announced {
                announced = true;
                if self
                    .deliver(&sender, encode(LogEvent::Applied(applied)))
                    .await
                    == Flow::End
                {
                    return;
                }
            }
            match self.wait(&sender).await {
                Wake::Applied => applied = self.applied_index(),
                Wake::Heartbeat => {
                    // The index this stream has seen: a newer one wakes `wait` at once and its
                    // entries follow.
                    let event = LogEvent::Applied(applied);
                    if self.deliver(&sender, encode(event)).await == Flow::End {
                        return;
                    }
                }
                Wake::TableDeleted => {
                    self.deliver(&sender, encode(LogEvent::TableDeleted)).await;
                    return;
                }
                Wake::End => return,
            }
        }
    }

    fn applied_index(&mut self) -> LogIndex {
        self.applied.borrow_and_update().log_index
    }

    fn table_present(&self) -> bool {
        self.catalog
            .borrow()
            .tables
            .get(self.group.name())
            .is_some_and(|record| record.table_id() == self.group.id())
    }

    /// The next batch, `next ..= applied`: from the cache when it holds `next`, else from the
    /// Raft log.
    fn read_next(&mut self, applied: LogIndex) -> LogEvent {
        let end = LogIndex(applied.get() + 1);
        let mut entries = match self.cache.read(self.next, end, self.message_bytes) {
            Some(entries) => {
                self.cache_hits.increment(1);
                entries
            }
            None => {
                self.cache_misses.increment(1);
                match self.read_log(end) {
                    Ok(entries) => entries,
                    Err(event) => return event,
                }
            }
        };
        // A staged load (Restore) replaced the table: a follower must take a new snapshot
        // rather than replay it. Ship what precedes it; the next read answers USE_SNAPSHOT.
        if let Some(at) = entries.iter().position(is_staged_load) {
            if at == 0 {
                return LogEvent::UseSnapshot;
            }
            entries.truncate(at);
        }
        let contiguous = entries
            .iter()
            .zip(self.next.get()..)
            .all(|(entry, index)| entry.index.get() == index);
        let Some(last) = entries.last().filter(|_| contiguous) else {
            return LogEvent::Failed(format!(
                "the log of table `{}` is not contiguous at index {}",
                self.group.name(),
                self.next
            ));
        };
        assert!(
            last.index <= applied,
            "never ship an entry that is not applied"
        );
        self.next = LogIndex(last.index.get() + 1);
        LogEvent::Entries { entries, applied }
    }

    fn read_log(&self, end: LogIndex) -> Result<Vec<CachedEntry>, LogEvent> {
        let next = self.next.get();
        let first = self
            .log
            .first_index()
            .map_err(|error| LogEvent::Failed(error.to_string()))?;
        if first.is_none_or(|first| next < first) {
            return Err(LogEvent::UseSnapshot);
        }
        let end = end.get().min(next + LOG_READ_BATCH);
        // Older entries live in segment files: a disk read.
        let entries = tokio::task::block_in_place(|| self.log.read_range(next, end))
            .map_err(|error| LogEvent::Failed(error.to_string()))?;
        if entries.first().map(|entry| entry.log_id.index) != Some(next) {
            // Purged between the two calls above.
            return Err(LogEvent::UseSnapshot);
        }
        let mut out = Vec::new();
        let mut bytes = 0;
        for entry in &entries {
            let entry = CachedEntry::of(entry);
            bytes += entry.payload_bytes();
            if !out.is_empty() && bytes > self.message_bytes {
                break;
            }
            out.push(entry);
        }
        Ok(out)
    }

    /// Sends one message unless the stream must end first (deadline, server stopping); a
    /// slow client holds this up, not the state machine.
    async fn deliver<M>(&mut self, sender: &mpsc::Sender<M>, message: M) -> Flow {
        let sent = tokio::select! {
            biased;
            _ = stopped(&mut self.stop) => return Flow::End,
            _ = tokio::time::sleep_until(self.deadline) => return Flow::End,
            sent = sender.send(message) => sent,
        };
        self.last_sent = Instant::now();
        if sent.is_ok() {
            Flow::Continue
        } else {
            Flow::End
        }
    }

    /// Waits for the next reason to act: a newly applied entry, heartbeat time, the table's
    /// deletion, or the end of the stream (deadline, server stopping, client gone).
    async fn wait<M>(&mut self, sender: &mpsc::Sender<M>) -> Wake {
        let heartbeat_at = self.last_sent + HEARTBEAT_INTERVAL;
        loop {
            tokio::select! {
                biased;
                _ = stopped(&mut self.stop) => return Wake::End,
                _ = sender.closed() => return Wake::End,
                _ = tokio::time::sleep_until(self.deadline) => return Wake::End,
                changed = self.catalog.changed() => {
                    if changed.is_err() {
                        return Wake::End;
                    }
                    if !self.table_present() {
                        return Wake::TableDeleted;
                    }
                }
                changed = self.applied.changed() => {
                    return if changed.is_ok() { Wake::Applied } else { Wake::End };
                }
                _ = tokio::time::sleep_until(heartbeat_at) => return Wake::Heartbeat,
            }
        }
    }
}

/// Resolves once the server is stopping (or gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopping| *stopping).await;
}
