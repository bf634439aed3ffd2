//! The engine's state behind its one mutex: segment files, the per-group index and cache, and
//! the write path (one record at a time at the end of the active segment).
//!
//! Every change is a record written first and then applied to the in-memory index by the same
//! `apply_*` function that recovery uses, so a reopened engine rebuilds exactly what the running
//! one held. The index maps each live entry to `(segment, offset, len)`; the most recent entries
//! of each group are also kept decoded in a node-wide, byte-bounded cache (a suffix of each
//! group's log), so the apply path and replication normally never touch the disk.
//!
//! Segments: records go to the active segment until it passes `segment_bytes`; then a new one is
//! created under a temporary name and starts with a *checkpoint*: for every group its vote,
//! committed, purge point and last log id (as a truncate-after record), and a destroyed record
//! for each destroyed group that still has records in an older segment. After a checkpoint no
//! older segment holds the only copy of any state record, so an older segment is garbage as soon
//! as none of its entries is live (`live_entries == 0`). The syncer renames new segments only
//! after every older one is fsynced, so a torn record can only be in the newest segment file.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::BufMut;

use super::entry::{ENTRY_FORMAT_V1, corrupt};
use super::record::{self, DecodeError, Kind};
use crate::groups::types::{Entry, LogId, Vote};

#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// A segment is closed once it holds this many bytes.
    pub segment_bytes: u64,
    /// Node-wide budget of decoded recent entries.
    pub cache_bytes: usize,
    /// Zeros written ahead of the end of the active segment's records, so that an append
    /// overwrites blocks the file already has and its fdatasync need not also persist a new
    /// file size (an inode write, or a journal commit on a journaling filesystem): about half
    /// the CPU and latency of each fsync on the test machine's ext4 (ADR 0008). 0 disables it.
    pub preallocate_bytes: u64,
    /// This node's id: appends of entries this node created as leader may wait up to
    /// `SYNC_LINGER` for company before their fsync (see `run_syncer`). `None`: never wait.
    pub local_node: Option<u64>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            segment_bytes: 64 << 20,
            cache_bytes: 64 << 20,
            preallocate_bytes: 1 << 20,
            local_node: None,
        }
    }
}

/// Where one entry lives on disk.
#[derive(Clone, Copy, Debug)]
struct Slot {
    segment: u32,
    offset: u32,
    len: u32,
}

/// During recovery: an entry whose record was in a deleted segment (see `apply_entries`).
const HOLE: Slot = Slot {
    segment: u32::MAX,
    offset: 0,
    len: 0,
};

pub(super) struct Segment {
    file: Arc<File>,
    path: PathBuf,
    /// Created under `<path>.tmp`; the syncer renames it once every older segment is durable.
    unnamed: bool,
    /// Written since the last fsync.
    dirty: bool,
    /// Live entries (of any group) stored in this segment.
    live_entries: u64,
    /// Groups with any record in this segment.
    groups: BTreeSet<u64>,
}

#[derive(Default)]
struct GroupState {
    /// Index of `slots[0]`.
    first: u64,
    slots: VecDeque<Slot>,
    /// Log id of the last slot (None when there is none).
    last_log_id: Option<LogId>,
    /// Decoded entries for the last `cache.len()` slots, with their encoded sizes.
    cache: VecDeque<(Entry, usize)>,
    vote: Option<Vote>,
    /// Times a vote of a higher term was saved since the node started (not rebuilt from the
    /// log on start-up): the elections this replica took part in.
    term_changes: u64,
    committed: Option<LogId>,
    purged: Option<LogId>,
    log_bytes: u64,
}

impl GroupState {
    fn end(&self) -> u64 {
        self.first + self.slots.len() as u64
    }
    fn cache_first(&self) -> u64 {
        self.end() - self.cache.len() as u64
    }
}

/// An entry to add to the index: where it is, and the decoded entry when it is at hand.
pub(super) struct Placed {
    pub log_id: LogId,
    pub slot_segment: u32,
    pub slot_offset: u32,
    pub len: u32,
    pub entry: Option<Entry>,
}

/// How an entry of a read is obtained once the lock is released.
pub(super) enum Fetch {
    Cached(Entry),
    Disk {
        file: Arc<File>,
        offset: u64,
        len: usize,
    },
}

/// A segment to fsync, renamed from its temporary name first when `rename` is set.
pub(super) struct SyncFile {
    pub file: Arc<File>,
    pub rename: Option<(PathBuf, PathBuf)>,
}

/// What one round of the syncer does (built and finished under the lock, run outside it).
pub(super) struct SyncPlan {
    pub files: Vec<SyncFile>,
    pub directory: PathBuf,
    pub garbage: Vec<u32>,
}

pub(super) struct State {
    directory: PathBuf,
    options: Options,
    active: u32,
    write_offset: u64,
    /// The active segment is zero-filled up to here (see `Options::preallocate_bytes`).
    zeroed_to: u64,
    /// `preallocate_bytes` of zeros, allocated at the first use.
    zeros: Vec<u8>,
    segments: BTreeMap<u32, Segment>,
    groups: BTreeMap<u64, GroupState>,
    /// Destroyed groups whose records may still be in a kept segment.
    destroyed: BTreeSet<u64>,
    cache_order: VecDeque<(u64, u64)>,
    cache_bytes: usize,
    cache_entries: usize,
    buffer: Vec<u8>,
}

pub(super) fn segment_path(directory: &Path, id: u32) -> PathBuf {
    directory.join(format!("{id:010}.wal"))
}

fn temporary_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

/// A write to the log failed: what is on disk after the failure is unknown, so nothing written
/// later may be acknowledged. Fail-stop, as for a failed fsync.
pub(super) fn fatal(error: &io::Error, what: &str) -> ! {
    crate::fail_stop::stop(&format!("{what} of the Raft log"), error)
}

impl State {
    pub fn new(directory: PathBuf, options: Options) -> State {
        State {
            directory,
            options,
            active: 0,
            write_offset: 0,
            zeroed_to: 0,
            zeros: Vec::new(),
            segments: BTreeMap::new(),
            groups: BTreeMap::new(),
            destroyed: BTreeSet::new(),
            cache_order: VecDeque::new(),
            cache_bytes: 0,
            cache_entries: 0,
            buffer: Vec::new(),
        }
    }

    // ----- recovery -----

    /// Replays one segment's records; `last` allows a torn tail, which is cut off.
    pub fn recover_segment(&mut self, id: u32, path: PathBuf, last: bool) -> io::Result<()> {
        let bytes = std::fs::read(&path)?;
        let file = Arc::new(OpenOptions::new().read(true).write(true).open(&path)?);
        self.segments.insert(
            id,
            Segment {
                file: file.clone(),
                path: path.clone(),
                unnamed: false,
                dirty: false,
                live_entries: 0,
                groups: BTreeSet::new(),
            },
        );
        let describe = |offset: usize, detail: &str| {
            format!(
                "Raft log segment {} at byte {offset}: {detail}",
                path.display()
            )
        };
        let mut offset = record::SEGMENT_HEADER_BYTES;
        let torn_at = match record::check_segment_header(&bytes) {
            Err(DecodeError::Torn(detail)) => Some((0, detail)),
            Err(DecodeError::Corrupt(detail)) => return Err(corrupt(describe(0, &detail))),
            Ok(()) => loop {
                match record::decode(&bytes[offset..]) {
                    Ok(None) => break None,
                    Ok(Some((record, len))) => {
                        self.replay(id, offset, &record)
                            .map_err(|detail| corrupt(describe(offset, &detail)))?;
                        offset += len;
                    }
                    Err(DecodeError::Torn(detail)) => break Some((offset, detail)),
                    Err(DecodeError::Corrupt(detail)) => {
                        return Err(corrupt(describe(offset, &detail)));
                    }
                }
            },
        };
        if let Some((at, detail)) = torn_at {
            if !last {
                return Err(corrupt(describe(at, &detail)));
            }
            tracing::warn!(
                segment = %path.display(),
                at,
                detail,
                "torn record at the end of the Raft log; cutting it off"
            );
            if at == 0 {
                drop(file);
                self.segments.remove(&id);
                std::fs::remove_file(&path)?;
                return Ok(());
            }
            file.set_len(at as u64)?;
            file.sync_all()?;
        }
        Ok(())
    }

    fn replay(
        &mut self,
        segment: u32,
        offset: usize,
        record: &record::Record<'_>,
    ) -> Result<(), String> {
        let text = |error: DecodeError| match error {
            DecodeError::Torn(detail) | DecodeError::Corrupt(detail) => detail,
        };
        if let Some(entry) = self.segments.get_mut(&segment) {
            entry.groups.insert(record.group);
        }
        match record.kind {
            Kind::Entries => {
                let spans = record::split_entries(record.payload).map_err(text)?;
                let payload_offset =
                    offset + record::RECORD_PREFIX_BYTES + record::RECORD_BODY_HEADER_BYTES;
                let mut placed = Vec::with_capacity(spans.len());
                for (start, len) in spans {
                    let bytes = &record.payload[start..start + len];
                    if bytes.len() < 1 + record::LOG_ID_BYTES || bytes[0] != ENTRY_FORMAT_V1 {
                        return Err("malformed log entry".into());
                    }
                    let log_id =
                        record::get_log_id(&bytes[1..1 + record::LOG_ID_BYTES]).map_err(text)?;
                    placed.push(Placed {
                        log_id,
                        slot_segment: segment,
                        slot_offset: u32::try_from(payload_offset + start)
                            .map_err(|_| "entry offset beyond 4 GiB".to_string())?,
                        len: len as u32,
                        entry: None,
                    });
                }
                self.apply_entries(record.group, placed);
            }
            Kind::TruncateAfter => {
                let log_id = record::get_optional_log_id(record.payload).map_err(text)?;
                self.apply_truncate_after(record.group, log_id);
            }
            Kind::PurgeUpto => {
                let log_id = record::get_log_id(record.payload).map_err(text)?;
                self.apply_purge(record.group, log_id);
            }
            Kind::Vote => {
                let vote: Vote = serde_json::from_slice(record.payload)
                    .map_err(|error| format!("vote record: {error}"))?;
                self.destroyed.remove(&record.group);
                self.groups.entry(record.group).or_default().vote = Some(vote);
            }
            Kind::Committed => {
                let committed = record::get_optional_log_id(record.payload).map_err(text)?;
                self.destroyed.remove(&record.group);
                self.groups.entry(record.group).or_default().committed = committed;
            }
            Kind::GroupDestroyed => self.apply_destroy(record.group),
        }
        Ok(())
    }

    /// After replaying every segment: a group's entries must start right after its purge point
    /// (a hole means a segment holding live entries is missing).
    pub fn check_recovered(&self) -> io::Result<()> {
        for (group, state) in &self.groups {
            if let Some(position) = state
                .slots
                .iter()
                .position(|slot| slot.segment == HOLE.segment)
            {
                return Err(corrupt(format!(
                    "Raft log of group {group}: entry {} is missing (a segment was lost)",
                    state.first + position as u64
                )));
            }
            if let (Some(purged), false) = (state.purged, state.slots.is_empty())
                && state.first != purged.index + 1
            {
                return Err(corrupt(format!(
                    "Raft log of group {group}: entries start at {} but the log was purged up to {}",
                    state.first, purged.index
                )));
            }
        }
        Ok(())
    }

    // ----- applying changes (shared by recovery and the write path) -----

    pub fn apply_entries(&mut self, group: u64, placed: Vec<Placed>) {
        self.destroyed.remove(&group);
        for item in placed {
            let index = item.log_id.index;
            let state = self.groups.entry(group).or_default();
            let end = state.end();
            if !state.slots.is_empty() && index > end {
                // Recovery only (appends are checked): the entries in between were in a segment
                // deleted since, so a later record truncates or purges them; until then they
                // are holes, and a hole left at the end of recovery is corruption.
                let holes = (index - end) as usize;
                state.slots.extend(std::iter::repeat_n(HOLE, holes));
                let evicted: usize = state.cache.iter().map(|(_, len)| *len).sum();
                self.cache_bytes -= evicted;
                self.cache_entries -= state.cache.len();
                state.cache.clear();
            } else if !state.slots.is_empty() && index < end {
                self.remove_slots_from(group, index);
            }
            let state = self.groups.get_mut(&group).expect("group exists");
            if state.slots.is_empty() {
                debug_assert!(state.cache.is_empty());
                state.first = index;
            }
            state.slots.push_back(Slot {
                segment: item.slot_segment,
                offset: item.slot_offset,
                len: item.len,
            });
            state.last_log_id = Some(item.log_id);
            state.log_bytes += u64::from(item.len);
            let cached = match item.entry {
                // The cache is a suffix of the log: a new last entry extends it...
                Some(entry) => {
                    state.cache.push_back((entry, item.len as usize));
                    true
                }
                // ...and an uncached one (recovery) empties it.
                None => {
                    let evicted: usize = state.cache.iter().map(|(_, len)| *len).sum();
                    self.cache_bytes -= evicted;
                    self.cache_entries -= state.cache.len();
                    state.cache.clear();
                    false
                }
            };
            if cached {
                self.cache_bytes += item.len as usize;
                self.cache_entries += 1;
                self.cache_order.push_back((group, index));
            }
            if let Some(segment) = self.segments.get_mut(&item.slot_segment) {
                segment.live_entries += 1;
            }
        }
        self.evict();
    }

    pub fn apply_truncate_after(&mut self, group: u64, log_id: Option<LogId>) {
        self.destroyed.remove(&group);
        let from = log_id.map_or(0, |log_id| log_id.index + 1);
        let state = self.groups.entry(group).or_default();
        if state.slots.is_empty() || from >= state.end() {
            return;
        }
        self.remove_slots_from(group, from);
        let state = self.groups.get_mut(&group).expect("group exists");
        state.last_log_id = if state.slots.is_empty() { None } else { log_id };
    }

    pub fn apply_purge(&mut self, group: u64, log_id: LogId) {
        self.destroyed.remove(&group);
        let state = self.groups.entry(group).or_default();
        if state
            .purged
            .is_some_and(|purged| purged.index >= log_id.index)
        {
            return;
        }
        state.purged = Some(log_id);
        let count = (log_id.index + 1)
            .saturating_sub(state.first)
            .min(state.slots.len() as u64) as usize;
        if state.slots.is_empty() {
            return;
        }
        let uncached = state.slots.len() - state.cache.len();
        let cache_drop = count.saturating_sub(uncached);
        let removed: Vec<Slot> = state.slots.drain(..count).collect();
        let dropped: Vec<(Entry, usize)> = state.cache.drain(..cache_drop).collect();
        state.first += count as u64;
        if state.slots.is_empty() {
            state.last_log_id = None;
        }
        self.forget(group, &removed, &dropped);
    }

    pub fn apply_destroy(&mut self, group: u64) {
        if self.groups.contains_key(&group) {
            self.remove_slots_from(group, 0);
            self.groups.remove(&group);
        }
        self.destroyed.insert(group);
    }

    /// Removes the slots at `from` and above (all with 0).
    fn remove_slots_from(&mut self, group: u64, from: u64) {
        let state = self.groups.get_mut(&group).expect("group exists");
        let keep = from
            .saturating_sub(state.first)
            .min(state.slots.len() as u64) as usize;
        let removed: Vec<Slot> = state.slots.drain(keep..).collect();
        let cache_keep = state.cache.len().saturating_sub(removed.len());
        let dropped: Vec<(Entry, usize)> = state.cache.drain(cache_keep..).collect();
        if state.slots.is_empty() {
            state.last_log_id = None;
        }
        self.forget(group, &removed, &dropped);
    }

    fn forget(&mut self, group: u64, removed: &[Slot], dropped: &[(Entry, usize)]) {
        let state = self.groups.get_mut(&group).expect("group exists");
        for slot in removed {
            state.log_bytes -= u64::from(slot.len);
            if let Some(segment) = self.segments.get_mut(&slot.segment) {
                segment.live_entries -= 1;
            }
        }
        for (_, len) in dropped {
            self.cache_bytes -= len;
            self.cache_entries -= 1;
        }
    }

    /// Drops the oldest cached entries beyond the budget, and stale bookkeeping.
    fn evict(&mut self) {
        while self.cache_bytes > self.options.cache_bytes
            || self.cache_order.len() > 2 * self.cache_entries + 1024
        {
            let Some((group, index)) = self.cache_order.pop_front() else {
                break;
            };
            let Some(state) = self.groups.get_mut(&group) else {
                continue;
            };
            if !state.cache.is_empty() && state.cache_first() == index {
                let (_, len) = state.cache.pop_front().expect("cache not empty");
                self.cache_bytes -= len;
                self.cache_entries -= 1;
            }
        }
    }

    // ----- writing -----

    /// Creates the next segment and writes the checkpoint into it.
    pub fn rotate(&mut self, named: bool) -> io::Result<()> {
        let id = self.segments.keys().next_back().map_or(1, |last| last + 1);
        let path = segment_path(&self.directory, id);
        let create_at = if named {
            path.clone()
        } else {
            temporary_path(&path)
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&create_at)?;
        file.write_all_at(&record::segment_header(), 0)?;
        self.segments.insert(
            id,
            Segment {
                file: Arc::new(file),
                path,
                unnamed: !named,
                dirty: true,
                live_entries: 0,
                groups: BTreeSet::new(),
            },
        );
        self.active = id;
        self.write_offset = record::SEGMENT_HEADER_BYTES as u64;
        self.zeroed_to = self.write_offset;
        self.write_checkpoint();
        Ok(())
    }

    fn write_checkpoint(&mut self) {
        let destroyed: Vec<u64> = self.destroyed.iter().copied().collect();
        for group in destroyed {
            let still_on_disk = self
                .segments
                .iter()
                .any(|(id, segment)| *id != self.active && segment.groups.contains(&group));
            if still_on_disk {
                self.write_record_here(Kind::GroupDestroyed, group, |_| {});
            } else {
                self.destroyed.remove(&group);
            }
        }
        let groups: Vec<u64> = self.groups.keys().copied().collect();
        for group in groups {
            let state = &self.groups[&group];
            let (vote, committed, purged) = (state.vote, state.committed, state.purged);
            let last = state.last_log_id.or(purged);
            if let Some(vote) = vote {
                let json = serde_json::to_vec(&vote).expect("a vote encodes");
                self.write_record_here(Kind::Vote, group, |out| out.put_slice(&json));
            }
            if committed.is_some() {
                self.write_record_here(Kind::Committed, group, |out| {
                    record::put_optional_log_id(out, committed.as_ref())
                });
            }
            if let Some(purged) = purged {
                self.write_record_here(Kind::PurgeUpto, group, |out| {
                    record::put_log_id(out, &purged)
                });
            }
            self.write_record_here(Kind::TruncateAfter, group, |out| {
                record::put_optional_log_id(out, last.as_ref())
            });
        }
    }

    /// Writes one record at the end of the active segment; returns the offset of its payload.
    /// Rotation happens before a record that would start beyond the segment size.
    pub fn write_record(
        &mut self,
        kind: Kind,
        group: u64,
        payload: impl FnOnce(&mut Vec<u8>),
    ) -> (u32, u64) {
        if self.write_offset >= self.options.segment_bytes
            && let Err(error) = self.rotate(false)
        {
            fatal(&error, "creating a segment");
        }
        self.write_record_here(kind, group, payload)
    }

    /// Writes one record at the end of the active segment, never rotating (checkpoints).
    fn write_record_here(
        &mut self,
        kind: Kind,
        group: u64,
        payload: impl FnOnce(&mut Vec<u8>),
    ) -> (u32, u64) {
        let mut buffer = std::mem::take(&mut self.buffer);
        buffer.clear();
        let start = record::begin(&mut buffer, kind, group);
        payload(&mut buffer);
        record::finish(&mut buffer, start);
        let offset = self.write_offset;
        assert!(
            offset + buffer.len() as u64 <= u64::from(u32::MAX),
            "a Raft log segment would exceed 4 GiB"
        );
        let segment = self
            .segments
            .get_mut(&self.active)
            .expect("the active segment exists");
        if let Err(error) = segment.file.write_all_at(&buffer, offset) {
            fatal(&error, "a write");
        }
        let end = offset + buffer.len() as u64;
        let ahead = self.options.preallocate_bytes;
        if end > self.zeroed_to && ahead > 0 {
            // Past the zero-filled space: fill the next stretch. Its first fdatasync commits
            // the new size once; the appends into it then only flush data.
            if self.zeros.len() as u64 != ahead {
                self.zeros = vec![0; ahead as usize];
            }
            if let Err(error) = segment.file.write_all_at(&self.zeros, end) {
                fatal(&error, "preallocating");
            }
            self.zeroed_to = end + ahead;
        }
        segment.dirty = true;
        segment.groups.insert(group);
        self.write_offset += buffer.len() as u64;
        if buffer.capacity() <= 1 << 20 {
            self.buffer = buffer;
        }
        let payload_offset =
            offset + (record::RECORD_PREFIX_BYTES + record::RECORD_BODY_HEADER_BYTES) as u64;
        (self.active, payload_offset)
    }

    /// Checks that entries starting at `index` extend the group's log without a hole.
    pub fn check_append(&self, group: u64, first_index: u64) -> io::Result<()> {
        match self.groups.get(&group) {
            Some(state) if !state.slots.is_empty() && first_index > state.end() => {
                Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "append at index {first_index} would leave a hole after {} in group {group}",
                        state.end() - 1
                    ),
                ))
            }
            _ => Ok(()),
        }
    }

    // ----- reading -----

    pub fn plan_read(&self, group: u64, start: u64, end: u64) -> Vec<Fetch> {
        let Some(state) = self.groups.get(&group) else {
            return Vec::new();
        };
        let start = start.max(state.first);
        let end = end.min(state.end());
        let cache_first = state.cache_first();
        let mut out = Vec::with_capacity(end.saturating_sub(start) as usize);
        for index in start..end {
            if index >= cache_first {
                out.push(Fetch::Cached(
                    state.cache[(index - cache_first) as usize].0.clone(),
                ));
            } else {
                let slot = state.slots[(index - state.first) as usize];
                let segment = &self.segments[&slot.segment];
                out.push(Fetch::Disk {
                    file: segment.file.clone(),
                    offset: u64::from(slot.offset),
                    len: slot.len as usize,
                });
            }
        }
        out
    }

    pub fn first_index(&self, group: u64) -> Option<u64> {
        self.groups
            .get(&group)
            .filter(|state| !state.slots.is_empty())
            .map(|state| state.first)
    }

    pub fn last_log_id(&self, group: u64) -> Option<LogId> {
        self.groups.get(&group).and_then(|state| state.last_log_id)
    }

    pub fn purged(&self, group: u64) -> Option<LogId> {
        self.groups.get(&group).and_then(|state| state.purged)
    }

    pub fn vote(&self, group: u64) -> Option<Vote> {
        self.groups.get(&group).and_then(|state| state.vote)
    }

    pub fn set_vote(&mut self, group: u64, vote: Vote) {
        self.destroyed.remove(&group);
        self.groups.entry(group).or_default().vote = Some(vote);
    }

    /// Saves a vote openraft made (not one replayed from the log): as [`Self::set_vote`], and
    /// counts a change of term.
    pub fn save_vote(&mut self, group: u64, vote: Vote) {
        let previous_term = self.vote(group).map(|vote| vote.leader_id.term);
        if previous_term.is_none_or(|term| vote.leader_id.term > term) {
            self.groups.entry(group).or_default().term_changes += 1;
        }
        self.set_vote(group, vote);
    }

    /// Term changes saved for `group` since the node started (see [`Self::save_vote`]).
    pub fn term_changes(&self, group: u64) -> u64 {
        self.groups
            .get(&group)
            .map_or(0, |state| state.term_changes)
    }

    pub fn committed(&self, group: u64) -> Option<LogId> {
        self.groups.get(&group).and_then(|state| state.committed)
    }

    pub fn set_committed(&mut self, group: u64, committed: Option<LogId>) {
        self.destroyed.remove(&group);
        self.groups.entry(group).or_default().committed = committed;
    }

    pub fn log_bytes(&self, group: u64) -> u64 {
        self.groups.get(&group).map_or(0, |state| state.log_bytes)
    }

    #[cfg(test)]
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    #[cfg(test)]
    pub fn cached_bytes(&self) -> usize {
        self.cache_bytes
    }

    // ----- syncing and garbage collection -----

    pub fn begin_sync(&mut self) -> SyncPlan {
        let mut files = Vec::new();
        for segment in self.segments.values_mut() {
            if segment.dirty || segment.unnamed {
                let rename = segment
                    .unnamed
                    .then(|| (temporary_path(&segment.path), segment.path.clone()));
                files.push(SyncFile {
                    file: segment.file.clone(),
                    rename,
                });
                segment.dirty = false;
            }
        }
        let garbage = self
            .segments
            .iter()
            .filter(|(id, segment)| {
                **id != self.active && !segment.unnamed && segment.live_entries == 0
            })
            .map(|(id, _)| *id)
            .collect();
        SyncPlan {
            files,
            directory: self.directory.clone(),
            garbage,
        }
    }

    /// Marks the plan done; returns the files to delete.
    pub fn finish_sync(&mut self, plan: &SyncPlan) -> Vec<PathBuf> {
        for segment in self.segments.values_mut() {
            if plan
                .files
                .iter()
                .any(|sync| sync.rename.is_some() && Arc::ptr_eq(&sync.file, &segment.file))
            {
                segment.unnamed = false;
            }
        }
        plan.garbage
            .iter()
            .filter_map(|id| self.segments.remove(id))
            .map(|segment| segment.path)
            .collect()
    }
}
