//! The node-wide Raft log: an append-only, segmented write-ahead log shared by every group
//! (ADR 0004), made durable by one syncer thread that group-commits across groups.
//!
//! Concept. Every change to any group's log — a batch of entries, a truncation, a purge, a vote,
//! the committed position, the destruction of a group — is one CRC-protected record appended to
//! the active segment file (`<data-dir>/raft-log/NNNNNNNNNN.wal`, format in docs/format.md and
//! [`record`]). Nothing is ever rewritten in place: truncation and purging are records too, and
//! space comes back by deleting whole segments none of whose entries is still live.
//!
//! Write path. `append()` writes the record (one `pwrite`, into the page cache; the segment is
//! zero-filled ahead of it in 1 MiB steps so most fsyncs need not commit a new file size) under the engine
//! mutex, updates the in-memory index and cache, and hands the `IOFlushed` callback to the
//! `raft-log-sync` thread. The syncer takes every completion waiting (up to 4096), fdatasyncs the
//! segments written since its last round once, and runs them all: many appends of many groups
//! share one fdatasync and no tokio worker ever blocks on the disk. `save_vote` and
//! `truncate_after` wait (asynchronously) for the syncer in the same way; `save_committed` and
//! `purge` do not need to (a later fsync covers them, records being ordered).
//!
//! Invariants.
//! * Records are applied to the index by the same code at write time and at recovery, so a
//!   reopened log holds what the running one held up to the last durable record.
//! * A torn record can only be at the end of the newest segment (segments are renamed into place
//!   only after every older one is durable); anywhere else it is corruption and `open` fails.
//! * The log is purged only when the state machines' storage (fjall, never fsynced by this log)
//!   is durable: a Raft snapshot fsyncs it when built, and `purge` fsyncs it again before
//!   recording the purge point, so a durable purge record always implies durable applied state.
//! * A failed write or fsync is fatal (fail-stop, exit code 70): acknowledging anything after it
//!   could lose acknowledged writes.
//!
//! Related: `state` (index, cache, segments, checkpoints and garbage collection), `record`
//! (framing), ADR 0004 (why), `groups::table_sm` (snapshots make fjall durable).

mod entry;
mod record;
mod state;
#[cfg(test)]
mod tests;

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant};

use armada_storage::{Storage, TableId};
use bytes::{BufMut, Bytes};
use openraft::OptionalSend;
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};

pub use self::entry::{decode_entry, encode_entry};
use self::record::Kind;
pub use self::state::Options;
use self::state::{Fetch, Placed, State, SyncPlan, fatal};
use super::types::{Entry, LogId, TypeConfig, Vote};

/// Most completions waiting for the syncer. An appender that finds the queue full blocks until
/// the syncer takes a round (backpressure on a disk that cannot keep up; no lock is held while
/// queueing, so the syncer is never blocked by it). Four full rounds of the syncer.
const SYNC_QUEUE_COMPLETIONS: usize = 4 * MAX_COMPLETIONS_PER_SYNC;

/// The queue from appenders to the syncer, bounded at [`SYNC_QUEUE_COMPLETIONS`].
fn sync_queue() -> (mpsc::SyncSender<Pending>, mpsc::Receiver<Pending>) {
    mpsc::sync_channel(SYNC_QUEUE_COMPLETIONS)
}

/// Upper bound of completions run after one fsync, so a flood of appends still gets
/// acknowledged in bounded batches.
const MAX_COMPLETIONS_PER_SYNC: usize = 4096;

/// How long the syncer may hold back an fsync that only this node's own leader appends wait
/// for, gathering more (see [`run_syncer`]).
const SYNC_LINGER: Duration = Duration::from_millis(1);

/// Work to run once everything written before it is durable.
type Completion = Box<dyn FnOnce() + Send>;

/// A completion as queued for the syncer.
struct Pending {
    run: Completion,
    /// Its fsync may wait up to [`SYNC_LINGER`]: it completes an append of entries this node
    /// created as the group's leader, which the followers' acknowledgements can commit first.
    may_linger: bool,
}

/// The node's log: shared by every group through [`GroupLog`] handles.
pub struct LogEngine {
    state: Arc<Mutex<State>>,
    storage: Storage,
    syncer: Option<mpsc::SyncSender<Pending>>,
    syncer_thread: Option<std::thread::JoinHandle<()>>,
    local_node: Option<u64>,
}

impl LogEngine {
    /// Opens (recovering) or creates the log in `directory`. `storage` is the state machines'
    /// store, fsynced before a purge is recorded.
    pub fn open(directory: &Path, storage: &Storage) -> io::Result<Arc<Self>> {
        Self::open_with(directory, storage, Options::default())
    }

    pub fn open_with(
        directory: &Path,
        storage: &Storage,
        options: Options,
    ) -> io::Result<Arc<Self>> {
        std::fs::create_dir_all(directory)?;
        let local_node = options.local_node;
        let mut state = State::new(directory.to_path_buf(), options);
        let segments = list_segments(directory)?;
        for (position, (id, path)) in segments.iter().enumerate() {
            state.recover_segment(*id, path.clone(), position + 1 == segments.len())?;
        }
        state.check_recovered()?;
        // Start every run in a fresh segment whose checkpoint makes older segments collectable.
        state.rotate(true)?;
        let plan = state.begin_sync();
        execute_sync(&plan, true)?;
        for path in state.finish_sync(&plan) {
            std::fs::remove_file(&path)?;
        }
        let state = Arc::new(Mutex::new(state));
        let (syncer, pending) = sync_queue();
        let sync_state = state.clone();
        let registry = crate::telemetry::thread_registry();
        let syncer_thread = std::thread::Builder::new()
            .name("raft-log-sync".into())
            .spawn(move || {
                registry();
                run_syncer(&sync_state, &pending)
            })?;
        Ok(Arc::new(LogEngine {
            state,
            storage: storage.clone(),
            syncer: Some(syncer),
            syncer_thread: Some(syncer_thread),
            local_node,
        }))
    }

    /// A handle for one group's log.
    pub fn group(self: &Arc<Self>, group: TableId) -> GroupLog {
        GroupLog {
            engine: self.clone(),
            group,
        }
    }

    /// Removes every entry and state record of a group (the table was deleted); durable on
    /// return.
    pub fn destroy_group(&self, group: TableId) -> io::Result<()> {
        {
            let mut state = self.lock();
            state.write_record(Kind::GroupDestroyed, group.get(), |_| {});
            state.apply_destroy(group.get());
        }
        let (done, wait) = mpsc::channel();
        self.complete_when_durable(Box::new(move || {
            let _ = done.send(());
        }))?;
        wait.recv().map_err(|_| syncer_stopped())
    }

    /// Bytes of log held for a group (the encoded entries).
    pub fn group_log_bytes(&self, group: TableId) -> u64 {
        self.lock().log_bytes(group.get())
    }

    /// How many times a group's replica on this node moved to a higher term since the node
    /// started (`armada_raft_elections_total`): each term begins with one election, won or
    /// not, so this counts the elections the replica took part in (started by it or by a
    /// peer). With pre-vote, a node that could not win does not start one.
    pub fn group_term_changes(&self, group: TableId) -> u64 {
        self.lock().term_changes(group.get())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("Raft log state lock poisoned")
    }

    fn complete_when_durable(&self, completion: Completion) -> io::Result<()> {
        self.queue_completion(completion, false)
    }

    fn queue_completion(&self, run: Completion, may_linger: bool) -> io::Result<()> {
        self.syncer
            .as_ref()
            .expect("the syncer runs while the engine lives")
            .send(Pending { run, may_linger })
            .map_err(|_| syncer_stopped())
    }

    async fn wait_durable(&self) -> io::Result<()> {
        let (done, wait) = tokio::sync::oneshot::channel();
        self.complete_when_durable(Box::new(move || {
            let _ = done.send(());
        }))?;
        wait.await.map_err(|_| syncer_stopped())
    }

    #[cfg(test)]
    fn segment_count(&self) -> usize {
        self.lock().segment_count()
    }

    #[cfg(test)]
    fn cached_bytes(&self) -> usize {
        self.lock().cached_bytes()
    }
}

impl Drop for LogEngine {
    fn drop(&mut self) {
        // A last round makes everything written durable (and renames a new segment into
        // place); closing the channel then stops the syncer.
        if let Some(syncer) = self.syncer.take() {
            let _ = syncer.send(Pending {
                run: Box::new(|| {}),
                may_linger: false,
            });
        }
        if let Some(thread) = self.syncer_thread.take() {
            let _ = thread.join();
        }
    }
}

fn syncer_stopped() -> io::Error {
    io::Error::other("the Raft log syncer has stopped")
}

/// Segment files in `directory` in id order; leftovers of never-renamed segments are deleted
/// (they held nothing acknowledged).
fn list_segments(directory: &Path) -> io::Result<Vec<(u32, PathBuf)>> {
    let mut segments = Vec::new();
    for item in std::fs::read_dir(directory)? {
        let path = item?.path();
        let Some(name) = path.file_name().and_then(|name| name.to_str()) else {
            continue;
        };
        if name.ends_with(".wal.tmp") {
            std::fs::remove_file(&path)?;
        } else if let Some(id) = name.strip_suffix(".wal").and_then(|id| id.parse().ok()) {
            segments.push((id, path));
        }
    }
    segments.sort();
    Ok(segments)
}

/// Makes a plan's segments durable: each fsynced in id order, a new segment renamed into place
/// only after every older one is durable, then the directory.
fn execute_sync(plan: &SyncPlan, sync_directory: bool) -> io::Result<()> {
    let mut renamed = false;
    for sync in &plan.files {
        if let Some((from, to)) = &sync.rename {
            std::fs::rename(from, to)?;
            renamed = true;
        }
        sync.file.sync_data()?;
    }
    if renamed || sync_directory {
        std::fs::File::open(&plan.directory)?.sync_all()?;
    }
    Ok(())
}

/// The syncer: fsyncs once for every completion waiting, then runs them.
///
/// Lingering: when appends keep arriving while the syncer is busy (one was already waiting when
/// the previous round ended, or the previous round lingered and gathered company) and
/// everything waiting completes this node's own leader appends,
/// the round waits up to [`SYNC_LINGER`] from its first completion for more, and stops waiting
/// as soon as anything else arrives (a follower's append, a vote, a truncation). An idle or
/// lightly loaded syncer (one client writing at a time) never lingers. A leader's own fsync is
/// rarely on a write's path in a cluster: openraft replicates an entry as soon as it is
/// written, commits it once a quorum has it durable — two followers of three suffice — and
/// applies committed entries without waiting for the local fsync. Under load this halves the
/// leader's fsyncs (each ~90 µs of CPU on the test machine). It costs latency only when the
/// leader's fsync is needed for a quorum (a 3-node cluster with a follower down: up to 1 ms
/// more per write). A single-node cluster never lingers (no `local_node`): there the leader's
/// fsync is the quorum.
fn run_syncer(state: &Mutex<State>, pending: &mpsc::Receiver<Pending>) {
    let lock = || state.lock().expect("Raft log state lock poisoned");
    let mut batch = Vec::new();
    // A completion that arrived while the previous round was syncing: the syncer is busy.
    let mut waiting: Option<Pending> = None;
    // The previous round lingered and gathered more than its first completion.
    let mut gathered = false;
    loop {
        let busy = waiting.is_some() || gathered;
        let first = match waiting.take() {
            Some(first) => first,
            None => match pending.recv() {
                Ok(first) => first,
                Err(_) => break,
            },
        };
        let mut linger = busy && first.may_linger;
        let deadline = Instant::now() + SYNC_LINGER;
        batch.push(first.run);
        while batch.len() < MAX_COMPLETIONS_PER_SYNC {
            let next = if linger {
                pending
                    .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                    .ok()
            } else {
                pending.try_recv().ok()
            };
            let Some(next) = next else { break };
            linger &= next.may_linger;
            batch.push(next.run);
        }
        gathered = linger && batch.len() > 1;
        // Every completion received was queued after its record was written, so the plan
        // (taken now) covers all of them.
        let plan = lock().begin_sync();
        if let Err(error) = execute_sync(&plan, false) {
            fatal(&error, "an fsync");
        }
        let garbage = lock().finish_sync(&plan);
        metrics::counter!("armada_raft_log_syncs_total").increment(1);
        metrics::histogram!("armada_raft_log_sync_batch").record(batch.len() as f64);
        for completion in batch.drain(..) {
            completion();
        }
        for path in garbage {
            match std::fs::remove_file(&path) {
                Ok(()) => metrics::counter!("armada_raft_log_segments_deleted_total").increment(1),
                Err(error) => {
                    tracing::warn!(%error, segment = %path.display(), "cannot delete a Raft log segment")
                }
            }
        }
        waiting = pending.try_recv().ok();
    }
}

/// One group's view of the node log; what openraft holds as its log store and reader.
#[derive(Clone)]
pub struct GroupLog {
    engine: Arc<LogEngine>,
    group: TableId,
}

impl GroupLog {
    /// Reads entries `[start, end)` (those still present); used by openraft and by the
    /// replication server. Recent entries come from the cache, older ones from their segment.
    pub fn read_range(&self, start: u64, end: u64) -> io::Result<Vec<Entry>> {
        if start >= end {
            return Ok(Vec::new());
        }
        let plan = self.engine.lock().plan_read(self.group.get(), start, end);
        let mut buffer = Vec::new();
        plan.into_iter()
            .map(|fetch| match fetch {
                Fetch::Cached(entry) => Ok(entry),
                Fetch::Disk { file, offset, len } => {
                    buffer.resize(len, 0);
                    file.read_exact_at(&mut buffer, offset)?;
                    decode_entry(&buffer)
                }
            })
            .collect()
    }

    /// First index still present, or None when the log is empty.
    pub fn first_index(&self) -> io::Result<Option<u64>> {
        Ok(self.engine.lock().first_index(self.group.get()))
    }
}

fn range_to_bounds<RB: RangeBounds<u64>>(range: &RB) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(start) => *start,
        Bound::Excluded(start) => start.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(end) => end.saturating_add(1),
        Bound::Excluded(end) => *end,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for GroupLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let (start, end) = range_to_bounds(&range);
        self.read_range(start, end)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.engine.lock().vote(self.group.get()))
    }
}

impl RaftLogStorage<TypeConfig> for GroupLog {
    type LogReader = GroupLog;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let state = self.engine.lock();
        let last_purged = state.purged(self.group.get());
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: state.last_log_id(self.group.get()).or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let json = serde_json::to_vec(vote).map_err(io::Error::other)?;
        {
            let mut state = self.engine.lock();
            state.write_record(Kind::Vote, self.group.get(), |out| out.put_slice(&json));
            state.save_vote(self.group.get(), *vote);
        }
        self.engine.wait_durable().await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Not waited for: losing it only means re-committing on restart, and the next fsync
        // makes it durable after the entries it covers (records are ordered).
        let mut state = self.engine.lock();
        state.write_record(Kind::Committed, self.group.get(), |out| {
            record::put_optional_log_id(out, committed.as_ref())
        });
        state.set_committed(self.group.get(), committed);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.engine.lock().committed(self.group.get()))
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let may_linger = may_linger(self.engine.local_node, &entries);
        if let Some(first) = entries.first() {
            check_contiguous(&entries)?;
            let encoded: Vec<Bytes> = entries.iter().map(encode_entry).collect();
            let group = self.group.get();
            let mut state = self.engine.lock();
            state.check_append(group, first.index())?;
            let (segment, payload_offset) = state.write_record(Kind::Entries, group, |out| {
                out.put_u32(encoded.len() as u32);
                for bytes in &encoded {
                    out.put_u32(bytes.len() as u32);
                    out.put_slice(bytes);
                }
            });
            let mut offset = payload_offset + 4;
            let placed = entries
                .into_iter()
                .zip(&encoded)
                .map(|(entry, bytes)| {
                    let at = offset + 4;
                    offset = at + bytes.len() as u64;
                    Placed {
                        log_id: entry.log_id,
                        slot_segment: segment,
                        slot_offset: at as u32,
                        len: bytes.len() as u32,
                        entry: Some(entry),
                    }
                })
                .collect();
            state.apply_entries(group, placed);
        }
        self.engine
            .queue_completion(Box::new(move || callback.io_completed(Ok(()))), may_linger)
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        {
            let mut state = self.engine.lock();
            state.write_record(Kind::TruncateAfter, self.group.get(), |out| {
                record::put_optional_log_id(out, last_log_id.as_ref())
            });
            state.apply_truncate_after(self.group.get(), last_log_id);
        }
        self.engine.wait_durable().await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        // The state machines' writes are not fsynced by this log: make them durable before a
        // purge record can be, or a crash could leave applied state older than the log start.
        let storage = self.engine.storage.clone();
        tokio::task::spawn_blocking(move || storage.sync())
            .await
            .map_err(io::Error::other)?
            .map_err(io::Error::other)?;
        {
            let mut state = self.engine.lock();
            state.write_record(Kind::PurgeUpto, self.group.get(), |out| {
                record::put_log_id(out, &log_id)
            });
            state.apply_purge(self.group.get(), log_id);
        }
        // No need to wait; the next round of the syncer also collects freed segments.
        self.engine.complete_when_durable(Box::new(|| {}))
    }
}

/// Whether the fsync of an append of `entries` may linger: they are entries this node created
/// as leader (their log id names the node that proposed them).
fn may_linger(local_node: Option<u64>, entries: &[Entry]) -> bool {
    entries
        .last()
        .is_some_and(|entry| Some(entry.log_id.leader_id.node_id) == local_node)
}

/// openraft appends consecutive indices; anything else would corrupt the index.
fn check_contiguous(entries: &[Entry]) -> io::Result<()> {
    for pair in entries.windows(2) {
        if pair[1].index() != pair[0].index() + 1 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "appended entries are not consecutive: {} then {}",
                    pair[0].index(),
                    pair[1].index()
                ),
            ));
        }
    }
    Ok(())
}
