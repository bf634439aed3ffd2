//! The node-wide Raft log: every group's entries in one fjall keyspace, made durable by one
//! syncer thread that group-commits across groups.
//!
//! `append()` inserts the entries into fjall at once (so they are readable when it returns, as
//! openraft requires) and hands the `IOFlushed` callback to the syncer. The syncer takes every
//! callback that is waiting, fsyncs the journal once (`Storage::sync`) and completes them all:
//! many appends of many groups share one fdatasync, and no tokio worker ever blocks on a disk
//! flush. Because fjall's journal is sequential, the fsync also covers every state-machine
//! write committed before it. ADR 0003 records why this beats a per-group fsync.
//!
//! Layout (keyspace `raft.log`): `group u64 BE ‖ index u64 BE` → encoded entry (see
//! [`encode_entry`]). Keyspace `raft.state`: `group u64 BE ‖ tag` → vote / committed /
//! last purged log id (JSON; rare writes). Formats are documented in docs/format.md.
//!
//! A failed fsync is fatal for the node (fail-stop): the process exits rather than serve data
//! whose durability it cannot promise.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::mpsc;

use armada_storage::{Storage, TableId};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::vote::RaftLeaderId;
use openraft::{EntryPayload, OptionalSend};

use super::types::{Entry, LogId, Request, TypeConfig, Vote};

const ENTRY_FORMAT_V1: u8 = 1;
const PAYLOAD_BLANK: u8 = 0;
const PAYLOAD_NORMAL: u8 = 1;
const PAYLOAD_MEMBERSHIP: u8 = 2;

const TAG_VOTE: &[u8] = b"vote";
const TAG_COMMITTED: &[u8] = b"committed";
const TAG_PURGED: &[u8] = b"purged";

/// Upper bound of callbacks completed by one fsync, so a flood of appends still gets
/// acknowledged in bounded batches.
const MAX_CALLBACKS_PER_SYNC: usize = 4096;

/// The node's log: shared by every group through [`GroupLog`] handles.
pub struct LogEngine {
    storage: Storage,
    entries: armada_storage::fjall::Keyspace,
    state: armada_storage::fjall::Keyspace,
    syncer: mpsc::Sender<IOFlushed<TypeConfig>>,
}

impl LogEngine {
    pub fn open(storage: &Storage) -> io::Result<std::sync::Arc<Self>> {
        let entries = storage.keyspace("raft.log").map_err(io::Error::other)?;
        let state = storage.keyspace("raft.state").map_err(io::Error::other)?;
        let (syncer, pending) = mpsc::channel::<IOFlushed<TypeConfig>>();
        let sync_storage = storage.clone();
        std::thread::Builder::new()
            .name("raft-log-sync".into())
            .spawn(move || run_syncer(sync_storage, pending))?;
        Ok(std::sync::Arc::new(LogEngine {
            storage: storage.clone(),
            entries,
            state,
            syncer,
        }))
    }

    /// A handle for one group's log.
    pub fn group(self: &std::sync::Arc<Self>, group: TableId) -> GroupLog {
        GroupLog {
            engine: self.clone(),
            group,
        }
    }

    /// Removes every entry and state record of a group (the table was deleted).
    pub fn destroy_group(&self, group: TableId) -> io::Result<()> {
        let mut batch = self.storage.database().batch();
        for item in self.entries.prefix(group.get().to_be_bytes()) {
            let key = item.key().map_err(io::Error::other)?;
            batch.remove(&self.entries, key);
        }
        for item in self.state.prefix(group.get().to_be_bytes()) {
            let key = item.key().map_err(io::Error::other)?;
            batch.remove(&self.state, key);
        }
        batch.commit().map_err(io::Error::other)?;
        self.storage.sync().map_err(io::Error::other)
    }

    /// Bytes of log held for a group (approximate: sum of encoded entries).
    pub fn group_log_bytes(&self, group: TableId) -> u64 {
        self.entries
            .prefix(group.get().to_be_bytes())
            .filter_map(|item| item.value().ok())
            .map(|value| value.len() as u64)
            .sum()
    }
}

fn run_syncer(storage: Storage, pending: mpsc::Receiver<IOFlushed<TypeConfig>>) {
    let mut batch = Vec::new();
    while let Ok(first) = pending.recv() {
        batch.push(first);
        while batch.len() < MAX_CALLBACKS_PER_SYNC {
            match pending.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        if let Err(error) = storage.sync() {
            // Fail-stop: acknowledging anything now could lose acknowledged writes.
            tracing::error!(%error, "fsync of the Raft log failed; stopping the node");
            std::process::exit(70);
        }
        metrics::counter!("armada_raft_log_syncs_total").increment(1);
        metrics::histogram!("armada_raft_log_sync_batch").record(batch.len() as f64);
        for callback in batch.drain(..) {
            callback.io_completed(Ok(()));
        }
    }
}

/// One group's view of the node log; what openraft holds as its log store and reader.
#[derive(Clone)]
pub struct GroupLog {
    engine: std::sync::Arc<LogEngine>,
    group: TableId,
}

impl GroupLog {
    fn entry_key(&self, index: u64) -> [u8; 16] {
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&self.group.get().to_be_bytes());
        key[8..].copy_from_slice(&index.to_be_bytes());
        key
    }

    fn state_key(&self, tag: &[u8]) -> Vec<u8> {
        let mut key = Vec::with_capacity(8 + tag.len());
        key.extend_from_slice(&self.group.get().to_be_bytes());
        key.extend_from_slice(tag);
        key
    }

    fn read_state<T: serde::de::DeserializeOwned>(&self, tag: &[u8]) -> io::Result<Option<T>> {
        match self
            .engine
            .state
            .get(self.state_key(tag))
            .map_err(io::Error::other)?
        {
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|error| corrupt(format!("raft state record: {error}"))),
            None => Ok(None),
        }
    }

    fn write_state<T: serde::Serialize>(
        &self,
        tag: &[u8],
        value: &T,
        sync: bool,
    ) -> io::Result<()> {
        let bytes = serde_json::to_vec(value).map_err(io::Error::other)?;
        self.engine
            .state
            .insert(self.state_key(tag), bytes)
            .map_err(io::Error::other)?;
        if sync {
            self.engine.storage.sync().map_err(io::Error::other)?;
        }
        Ok(())
    }

    fn last_entry_log_id(&self) -> io::Result<Option<LogId>> {
        let prefix = self.group.get().to_be_bytes();
        match self.engine.entries.prefix(prefix).next_back() {
            Some(item) => {
                let value = item.value().map_err(io::Error::other)?;
                Ok(Some(decode_entry(&value)?.log_id))
            }
            None => Ok(None),
        }
    }

    /// Reads entries `[start, end)`; used by openraft and by the replication server.
    pub fn read_range(&self, start: u64, end: u64) -> io::Result<Vec<Entry>> {
        if start >= end {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for item in self
            .engine
            .entries
            .range(self.entry_key(start)..self.entry_key(end))
        {
            let value = item.value().map_err(io::Error::other)?;
            out.push(decode_entry(&value)?);
        }
        Ok(out)
    }

    /// First index still present, or None when the log is empty.
    pub fn first_index(&self) -> io::Result<Option<u64>> {
        let prefix = self.group.get().to_be_bytes();
        match self.engine.entries.prefix(prefix).next() {
            Some(item) => {
                let value = item.value().map_err(io::Error::other)?;
                Ok(Some(decode_entry(&value)?.log_id.index))
            }
            None => Ok(None),
        }
    }

    fn remove_range(&self, start: u64, end_inclusive: Option<u64>) -> io::Result<()> {
        let end = match end_inclusive {
            Some(end) => Bound::Included(self.entry_key(end)),
            None => Bound::Included(self.entry_key(u64::MAX)),
        };
        let mut batch = self.engine.storage.database().batch();
        for item in self
            .engine
            .entries
            .range((Bound::Included(self.entry_key(start)), end))
        {
            let key = item.key().map_err(io::Error::other)?;
            batch.remove(&self.engine.entries, key);
        }
        batch.commit().map_err(io::Error::other)
    }
}

fn corrupt(detail: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, detail)
}

/// Encodes an entry: `format u8 ‖ term u64 ‖ leader node u64 ‖ index u64 ‖ kind u8 ‖ payload`
/// (big-endian). Payload: nothing (blank), the command bytes (normal), JSON (membership).
pub fn encode_entry(entry: &Entry) -> Bytes {
    let (payload_kind, payload): (u8, Bytes) = match &entry.payload {
        EntryPayload::Blank => (PAYLOAD_BLANK, Bytes::new()),
        EntryPayload::Normal(request) => (PAYLOAD_NORMAL, request.0.clone()),
        EntryPayload::Membership(membership) => (
            PAYLOAD_MEMBERSHIP,
            Bytes::from(serde_json::to_vec(membership).expect("membership encodes")),
        ),
    };
    let mut out = BytesMut::with_capacity(26 + payload.len());
    out.put_u8(ENTRY_FORMAT_V1);
    out.put_u64(entry.log_id.leader_id.term);
    out.put_u64(entry.log_id.leader_id.node_id);
    out.put_u64(entry.log_id.index);
    out.put_u8(payload_kind);
    out.put_slice(&payload);
    out.freeze()
}

pub fn decode_entry(bytes: &[u8]) -> io::Result<Entry> {
    if bytes.len() < 26 {
        return Err(corrupt(format!(
            "log entry of {} bytes is too short",
            bytes.len()
        )));
    }
    let mut buf = bytes;
    let format = buf.get_u8();
    if format != ENTRY_FORMAT_V1 {
        return Err(corrupt(format!("unknown log entry format {format}")));
    }
    let term = buf.get_u64();
    let node_id = buf.get_u64();
    let index = buf.get_u64();
    let kind = buf.get_u8();
    let log_id = LogId::new(
        openraft::impls::leader_id_adv::LeaderId::new(term, node_id),
        index,
    );
    let payload = match kind {
        PAYLOAD_BLANK => EntryPayload::Blank,
        PAYLOAD_NORMAL => EntryPayload::Normal(Request(Bytes::copy_from_slice(buf))),
        PAYLOAD_MEMBERSHIP => EntryPayload::Membership(
            serde_json::from_slice(buf).map_err(|error| corrupt(format!("membership: {error}")))?,
        ),
        other => return Err(corrupt(format!("unknown log payload kind {other}"))),
    };
    Ok(Entry { log_id, payload })
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
        self.read_state(TAG_VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for GroupLog {
    type LogReader = GroupLog;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged: Option<LogId> = self.read_state(TAG_PURGED)?;
        let last = self.last_entry_log_id()?.or(last_purged);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.write_state(TAG_VOTE, vote, true)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Not synced: losing it only means re-committing on restart.
        self.write_state(TAG_COMMITTED, &committed, false)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.read_state::<Option<LogId>>(TAG_COMMITTED)?.flatten())
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
        let mut batch = self.engine.storage.database().batch();
        for entry in entries {
            batch.insert(
                &self.engine.entries,
                self.entry_key(entry.index()),
                encode_entry(&entry).as_ref(),
            );
        }
        batch.commit().map_err(io::Error::other)?;
        self.engine
            .syncer
            .send(callback)
            .map_err(|_| io::Error::other("the log syncer has stopped"))
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let start = last_log_id.map_or(0, |log_id| log_id.index + 1);
        self.remove_range(start, None)?;
        self.engine.storage.sync().map_err(io::Error::other)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        // Record the purge point first: entries at or below it are then never read again.
        self.write_state(TAG_PURGED, &Some(log_id), false)?;
        self.remove_range(0, Some(log_id.index))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::Membership;
    use std::collections::{BTreeMap, BTreeSet};

    fn log_id(term: u64, node: u64, index: u64) -> LogId {
        LogId::new(
            openraft::impls::leader_id_adv::LeaderId::new(term, node),
            index,
        )
    }

    #[test]
    fn entry_codec_round_trips_every_payload_kind() {
        let blank = Entry {
            log_id: log_id(3, 1, 7),
            payload: EntryPayload::Blank,
        };
        let normal = Entry {
            log_id: log_id(3, 2, 8),
            payload: EntryPayload::Normal(Request(Bytes::from_static(b"\x01\x02command"))),
        };
        let nodes = BTreeMap::from([(1, super::super::types::Node::new("a:1"))]);
        let membership = Membership::new(vec![BTreeSet::from([1])], nodes).expect("valid");
        let member = Entry {
            log_id: log_id(4, 1, 9),
            payload: EntryPayload::Membership(membership),
        };
        for entry in [blank, normal, member] {
            let decoded = decode_entry(&encode_entry(&entry)).expect("decodes");
            assert_eq!(decoded, entry);
        }
    }

    #[test]
    fn decode_rejects_truncated_and_unknown_formats() {
        assert!(decode_entry(&[1, 2, 3]).is_err());
        let mut bytes = encode_entry(&Entry {
            log_id: log_id(1, 1, 1),
            payload: EntryPayload::Blank,
        })
        .to_vec();
        bytes[0] = 9;
        assert!(decode_entry(&bytes).is_err());
    }

    #[tokio::test]
    async fn append_read_truncate_purge_and_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let storage = Storage::open(dir.path()).expect("open");
            let engine = LogEngine::open(&storage).expect("engine");
            let mut log = engine.group(TableId(10001));
            let mut other = engine.group(TableId(10002));
            let entries: Vec<Entry> = (1..=10)
                .map(|index| Entry {
                    log_id: log_id(1, 1, index),
                    payload: EntryPayload::Normal(Request(Bytes::from(format!("c{index}")))),
                })
                .collect();
            let (tx, rx) = <TypeConfig as openraft::type_config::TypeConfigExt>::oneshot();
            log.append(entries.clone(), IOFlushed::signal(tx))
                .await
                .expect("append");
            rx.await.expect("callback").expect("durable");
            other
                .append(entries[..2].to_vec(), IOFlushed::noop())
                .await
                .expect("append other");
            assert_eq!(
                log.try_get_log_entries(3..6).await.expect("read"),
                entries[2..5].to_vec()
            );
            log.truncate_after(Some(log_id(1, 1, 8)))
                .await
                .expect("truncate");
            log.purge(log_id(1, 1, 2)).await.expect("purge");
            let state = log.get_log_state().await.expect("state");
            assert_eq!(state.last_log_id, Some(log_id(1, 1, 8)));
            assert_eq!(state.last_purged_log_id, Some(log_id(1, 1, 2)));
            let vote = Vote::new_committed(1, 1);
            log.save_vote(&vote).await.expect("vote");
            assert_eq!(
                other
                    .try_get_log_entries(0..100)
                    .await
                    .expect("other")
                    .len(),
                2
            );
        }
        let storage = Storage::open(dir.path()).expect("reopen");
        let engine = LogEngine::open(&storage).expect("engine");
        let mut log = engine.group(TableId(10001));
        assert_eq!(log.first_index().expect("first"), Some(3));
        let state = log.get_log_state().await.expect("state");
        assert_eq!(state.last_log_id, Some(log_id(1, 1, 8)));
        assert_eq!(
            log.read_vote().await.expect("vote"),
            Some(Vote::new_committed(1, 1))
        );
        engine.destroy_group(TableId(10001)).expect("destroy");
        assert_eq!(log.try_get_log_entries(0..100).await.expect("read"), vec![]);
    }
}
