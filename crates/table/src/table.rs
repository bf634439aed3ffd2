//! [`Table`]: the handle owning a table's keyspaces, its serialised apply path and the
//! generation switch used by snapshot installation.
//!
//! Concurrency: `apply_lock` serialises writers (apply, install). A view reads its position from
//! its own fjall snapshot (the position is in the same batch as the data), so a view's data and
//! position always belong together and an apply never blocks readers, not even during a fjall
//! write stall. `state` (generation handles, cached position) is write-locked by apply only to
//! update the cache after its commit, and by install around switching generations, so a view
//! never pairs a snapshot with the wrong generation's keyspaces.
//!
//! Apply: [`Table::apply`] runs the entries' typed commands through an `Applier` (`apply.rs`)
//! and commits its batch with the position of `revision::position_after`. A staged-load step
//! is applied alone: `check_load` (pure) decides the step against the staged load or rejects
//! it, then `load_begin`, `load_chunk` or `load_commit` writes it with its position.

use crate::apply::Applier;
use crate::command::{Command, Rejection, check_put};
use crate::error::{Result, TableError};
use crate::generation::{
    Generation, delete_keyspaces, drop_generation, generation_numbers, open_generation, owner,
};
use crate::load::{Staging, StagingMeta};
use crate::position::AppliedPosition;
use crate::revision::{TableRole, entry_revision, position_after};
use crate::view::ReadView;
use crate::{AppliedBatch, ApplyEntry, ApplyOutcome, CommandOutcome, pb, snapshot};
use armada_storage::fjall::{Keyspace, Readable};
use armada_storage::mvcc::{self, HistoryVersion};
use armada_storage::{
    LeaderIndex, LogIndex, Revision, Storage, TableId, keyspace_bytes, keyspace_name,
};
use bytes::Bytes;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// Version of the table layout, stored under `format` in the meta keyspace.
const LAYOUT_FORMAT: u32 = 1;

pub(crate) const META_FORMAT: &[u8] = b"format";
pub(crate) const META_GENERATION: &[u8] = b"generation";
pub(crate) const META_POSITION: &[u8] = b"position";
pub(crate) const META_COMPACT_REVISION: &[u8] = b"compact_revision";
pub(crate) const META_STAGING: &[u8] = b"staging";

pub(crate) struct State {
    pub generation: Arc<Generation>,
    pub position: AppliedPosition,
    pub compact_revision: Revision,
    /// The staged load in progress, if any (see `load.rs`).
    pub staging: Option<Staging>,
}

struct Inner {
    storage: Storage,
    id: TableId,
    meta: Keyspace,
    state: RwLock<State>,
    apply_lock: Mutex<()>,
    role: TableRole,
    /// Next unused generation number (node-local; generations are not replicated by number).
    next_generation: AtomicU64,
}

/// A table's state machine. Cheap to clone.
#[derive(Clone)]
pub struct Table {
    inner: Arc<Inner>,
}

fn read_u64(record: Option<Bytes>, what: &str) -> Result<u64> {
    match record {
        None => Ok(0),
        Some(bytes) => {
            let array: [u8; 8] = bytes.as_ref().try_into().map_err(|_| {
                TableError::Corrupt(format!("{what} record of {} bytes", bytes.len()))
            })?;
            Ok(u64::from_be_bytes(array))
        }
    }
}

impl Table {
    /// Opens or creates the table's keyspaces in `storage`, removing generations left behind by
    /// an interrupted snapshot installation.
    pub fn open(storage: &Storage, id: TableId) -> Result<Table> {
        Table::open_as(storage, id, TableRole::Leader)
    }

    /// Opens or creates the table for a replica of the given role.
    pub fn open_as(storage: &Storage, id: TableId, role: TableRole) -> Result<Table> {
        let meta = storage.keyspace(&keyspace_name(&owner(id), "meta"))?;
        match meta.get(META_FORMAT)? {
            None => {
                let mut batch = storage.database().batch();
                batch.insert(&meta, META_FORMAT, LAYOUT_FORMAT.to_be_bytes());
                batch.insert(&meta, META_GENERATION, 0u64.to_be_bytes());
                batch.commit()?;
            }
            Some(format) if format.as_ref() == LAYOUT_FORMAT.to_be_bytes() => {}
            Some(format) => {
                return Err(TableError::Corrupt(format!(
                    "table {id}: unknown layout format {:?}",
                    format.as_ref()
                )));
            }
        }
        let number = read_u64(meta.get(META_GENERATION)?.map(Bytes::from), "generation")?;
        let generation = Arc::new(open_generation(storage, id, number)?);
        let position = match meta.get(META_POSITION)? {
            Some(record) => AppliedPosition::decode(Bytes::from(record))?,
            None => AppliedPosition::default(),
        };
        let compact_revision = Revision(read_u64(
            meta.get(META_COMPACT_REVISION)?.map(Bytes::from),
            "compact revision",
        )?);
        let staging = match meta.get(META_STAGING)? {
            Some(record) => {
                let meta = StagingMeta::decode(&record)?;
                let generation = Arc::new(open_generation(storage, id, meta.generation)?);
                Some(Staging { meta, generation })
            }
            None => None,
        };
        let staged_number = staging.as_ref().map(|staging| staging.meta.generation);
        let highest = generation_numbers(storage, id).max().unwrap_or(0);
        delete_keyspaces(storage, id, |generation| {
            generation.is_some() && generation != Some(number) && generation != staged_number
        })?;
        Ok(Table {
            inner: Arc::new(Inner {
                storage: storage.clone(),
                id,
                meta,
                state: RwLock::new(State {
                    generation,
                    position,
                    compact_revision,
                    staging,
                }),
                apply_lock: Mutex::new(()),
                role,
                next_generation: AtomicU64::new(
                    highest.max(number).max(staged_number.unwrap_or(0)) + 1,
                ),
            }),
        })
    }

    pub fn role(&self) -> TableRole {
        self.inner.role
    }

    /// Removes every keyspace and record of the table. Open handles of it must not be used
    /// afterwards (their reads see the removed keyspaces until dropped).
    pub fn destroy(storage: &Storage, id: TableId) -> Result<()> {
        delete_keyspaces(storage, id, |_| true)
    }

    pub fn id(&self) -> TableId {
        self.inner.id
    }

    /// Applies consecutive log entries in one write batch together with the position after
    /// the last of them ([`crate::revision::position_after`]: its log index, the revision the
    /// table's role derives, the last leader index applied, and the glue's `raft_state`).
    ///
    /// A LOAD command (staged load, see `load.rs`) must be the only entry of its call.
    pub fn apply(&self, entries: &[ApplyEntry<'_>], raft_state: Bytes) -> Result<AppliedBatch> {
        let _applying = self
            .inner
            .apply_lock
            .lock()
            .expect("table apply lock poisoned");
        let Some(last) = entries.last() else {
            return Err(TableError::InvalidArgument("no entries to apply".into()));
        };
        if let Some(command) = load_command(entries)? {
            return self.apply_load(last.log_index, command, raft_state);
        }
        let (generation, previous_leader_index) = {
            let state = self.read_state();
            (state.generation.clone(), state.position.leader_index)
        };
        let snapshot = self.inner.storage.database().snapshot();
        let mut applier = Applier::new(
            &snapshot,
            &generation,
            previous_leader_index,
            self.inner.role == TableRole::Follower,
        );
        let mut outcomes = Vec::with_capacity(entries.len());
        for entry in entries {
            outcomes.push(applier.apply_entry(entry)?);
        }
        let position = position_after(
            self.inner.role,
            last.log_index,
            applier.leader_index(),
            raft_state,
        );
        let (mut batch, written) = applier.into_batch(self.inner.storage.database())?;
        batch.insert(&self.inner.meta, META_POSITION, position.encode());
        if let Err(error) = batch.commit() {
            generation.create_revisions.clear();
            return Err(error.into());
        }
        generation
            .create_revisions
            .record(written.iter().map(|(key, create)| (key, *create)));
        self.write_state().position = position.clone();
        Ok(AppliedBatch { outcomes, position })
    }

    /// Whether applying `entries` now could block the calling thread for long: a large batch,
    /// a staged-load step, or storage close to its write back-pressure (fjall sleeps in the
    /// writer once a keyspace has 4 sealed memtables or 20 level-0 runs). Callers on an async
    /// runtime move such an apply off the worker thread; the common small batch runs inline.
    pub fn apply_may_block(&self, entries: &[ApplyEntry<'_>]) -> bool {
        // Writes in the batch, counting the commands nested in SEQUENCE (a follower cluster's
        // replicated batch: one entry of up to 4 MiB), PUT_BATCH/DELETE_BATCH and TXN.
        const INLINE_WRITES: usize = 256;
        if entries
            .iter()
            .any(|entry| entry.command.is_some_and(Command::is_load))
        {
            return true;
        }
        let mut total = 0;
        for entry in entries {
            total += entry.command.map_or(1, Command::write_count);
            if total > INLINE_WRITES {
                return true;
            }
        }
        let generation = self.read_state().generation.clone();
        [&generation.latest, &generation.history]
            .into_iter()
            .chain(std::iter::once(&self.inner.meta))
            .any(|keyspace| {
                keyspace.sealed_memtable_count() >= 2 || keyspace.l0_table_count() >= 12
            })
    }

    /// Applies one LOAD command (see `load.rs`) in its own batch: a rejected step stores the
    /// position only.
    fn apply_load(
        &self,
        log_index: LogIndex,
        command: &Command,
        raft_state: Bytes,
    ) -> Result<AppliedBatch> {
        let (previous_leader_index, staging) = {
            let state = self.read_state();
            (state.position.leader_index, state.staging.clone())
        };
        let revision = entry_revision(log_index);
        let position = |leader_index| {
            position_after(self.inner.role, log_index, leader_index, raft_state.clone())
        };
        let outcome = match check_load(command, revision, staging.as_ref()) {
            Err(rejection) => {
                let position = position(previous_leader_index);
                let mut batch = self.inner.storage.database().batch();
                batch.insert(&self.inner.meta, META_POSITION, position.encode());
                batch.commit()?;
                self.write_state().position = position;
                ApplyOutcome::Rejected(rejection)
            }
            Ok(step) => {
                match step {
                    LoadStep::Begin { load_id, keep } => {
                        self.load_begin(load_id, keep, revision, position(previous_leader_index))?;
                    }
                    LoadStep::Chunk { staging, records } => {
                        self.load_chunk(staging, records, position(previous_leader_index))?;
                    }
                    LoadStep::Commit {
                        staging,
                        leader_index,
                    } => {
                        let position = position(leader_index.or(previous_leader_index));
                        self.load_commit(staging, leader_index, position)?;
                    }
                }
                ApplyOutcome::Applied {
                    revision,
                    outcome: CommandOutcome::Empty,
                    changes: Vec::new(),
                }
            }
        };
        Ok(AppliedBatch {
            outcomes: vec![outcome],
            position: self.read_state().position.clone(),
        })
    }

    /// LOAD_BEGIN: a new staging generation replaces any staged load.
    fn load_begin(
        &self,
        load_id: u64,
        keep_revisions: bool,
        revision: Revision,
        position: AppliedPosition,
    ) -> Result<()> {
        let number = self.inner.next_generation.fetch_add(1, Ordering::Relaxed);
        let generation = Arc::new(open_generation(&self.inner.storage, self.inner.id, number)?);
        let meta = StagingMeta {
            load_id,
            generation: number,
            count: 0,
            begin_revision: revision,
            keep_revisions,
            last_key: None,
        };
        let mut batch = self.inner.storage.database().batch();
        batch.insert(&self.inner.meta, META_STAGING, meta.encode());
        batch.insert(&self.inner.meta, META_POSITION, position.encode());
        let replaced = {
            let mut state = self.write_state();
            batch.commit()?;
            state.position = position;
            state.staging.replace(Staging { meta, generation })
        };
        if let Some(replaced) = replaced {
            drop_generation(&self.inner.storage, &replaced.generation)?;
        }
        Ok(())
    }

    /// LOAD_CHUNK: writes checked records into the staging generation.
    fn load_chunk(
        &self,
        staging: &Staging,
        records: &[pb::KeyValue],
        position: AppliedPosition,
    ) -> Result<()> {
        let mut meta = staging.meta.clone();
        let mut batch = self.inner.storage.database().batch();
        for kv in records {
            let (create_revision, mod_revision) = staged_revisions(&meta, kv);
            batch.insert(
                &staging.generation.latest,
                kv.key.as_ref(),
                mvcc::encode_latest(create_revision, mod_revision, &kv.value),
            );
            batch.insert(
                &staging.generation.history,
                mvcc::encode_history_key(&kv.key, mod_revision),
                mvcc::encode_history_version(&HistoryVersion::Put {
                    create_revision,
                    value: kv.value.as_ref(),
                }),
            );
            meta.count += 1;
        }
        if let Some(last) = records.last() {
            meta.last_key = Some(last.key.clone());
        }
        batch.insert(&self.inner.meta, META_STAGING, meta.encode());
        batch.insert(&self.inner.meta, META_POSITION, position.encode());
        let mut state = self.write_state();
        batch.commit()?;
        state.position = position;
        state.staging = Some(Staging {
            meta,
            generation: staging.generation.clone(),
        });
        Ok(())
    }

    /// LOAD_COMMIT: the staging generation becomes the table's, durably, then the old one goes.
    fn load_commit(
        &self,
        staging: &Staging,
        leader_index: Option<LeaderIndex>,
        position: AppliedPosition,
    ) -> Result<()> {
        let compact_revision = match leader_index {
            Some(index) if staging.meta.keep_revisions => Revision::from_leader_index(index),
            _ => position.revision,
        };
        let mut batch = self.inner.storage.database().batch();
        batch.insert(
            &self.inner.meta,
            META_GENERATION,
            staging.meta.generation.to_be_bytes(),
        );
        batch.insert(&self.inner.meta, META_POSITION, position.encode());
        batch.insert(
            &self.inner.meta,
            META_COMPACT_REVISION,
            compact_revision.get().to_be_bytes(),
        );
        batch.remove(&self.inner.meta, META_STAGING);
        let old = {
            let mut state = self.write_state();
            batch.commit()?;
            let old = std::mem::replace(&mut state.generation, staging.generation.clone());
            state.position = position;
            state.compact_revision = compact_revision;
            state.staging = None;
            old
        };
        self.inner.storage.sync()?;
        drop_generation(&self.inner.storage, &old)
    }

    /// Records staged by the load in progress (`None` when no load is staged).
    pub fn staged_load(&self) -> Option<(u64, u64)> {
        self.read_state()
            .staging
            .as_ref()
            .map(|staging| (staging.meta.load_id, staging.meta.count))
    }

    /// Last persisted applied position (zero for a new table).
    pub fn applied_position(&self) -> Result<AppliedPosition> {
        Ok(self.read_state().position.clone())
    }

    /// A consistent point-in-time view at the applied position.
    pub fn read_view(&self) -> ReadView {
        let (snapshot, generation, cached_position, compact_revision, staging) = {
            let state = self.read_state();
            let snapshot = self.inner.storage.database().snapshot();
            let cached = state.position.clone();
            (
                snapshot,
                state.generation.clone(),
                cached,
                state.compact_revision,
                state.staging.clone(),
            )
        };
        // The record was decoded successfully when the table opened or wrote it; should it
        // not decode now, the cached position is the best available (equal unless an apply
        // committed in between).
        let position = snapshot
            .get(&self.inner.meta, META_POSITION)
            .ok()
            .flatten()
            .and_then(|record| AppliedPosition::decode(Bytes::from(record)).ok())
            .unwrap_or(cached_position);
        // The staging record is read from the same snapshot, so it matches the staged data.
        let staging = staging.and_then(|staging| {
            let record = snapshot
                .get(&self.inner.meta, META_STAGING)
                .ok()
                .flatten()?;
            let meta = StagingMeta::decode(&record).ok()?;
            (meta.generation == staging.meta.generation).then_some(Staging {
                meta,
                generation: staging.generation,
            })
        });
        ReadView::new(snapshot, generation, position, compact_revision, staging)
    }

    /// Replaces the whole table atomically with an internal snapshot stream (see
    /// [`ReadView::write_snapshot`]). The data is loaded into a new generation of keyspaces,
    /// then the generation pointer and the position switch in one batch, made durable before
    /// the old generation is deleted. Readers see the old or the new contents, never a mix.
    pub fn install_snapshot(&self, reader: &mut dyn std::io::Read) -> Result<AppliedPosition> {
        let _applying = self
            .inner
            .apply_lock
            .lock()
            .expect("table apply lock poisoned");
        let storage = &self.inner.storage;
        let id = self.inner.id;
        let allocate = || -> Result<Arc<Generation>> {
            let number = self.inner.next_generation.fetch_add(1, Ordering::Relaxed);
            Ok(Arc::new(open_generation(storage, id, number)?))
        };
        let generation = allocate()?;
        let mut staged_generation = None;
        let loaded = snapshot::load(reader, &generation, &mut || {
            let staged = allocate()?;
            staged_generation = Some(staged.clone());
            Ok(staged)
        });
        let loaded = match loaded {
            Ok(loaded) => loaded,
            Err(error) => {
                drop_generation(storage, &generation)?;
                if let Some(staged) = staged_generation {
                    drop_generation(storage, &staged)?;
                }
                return Err(error);
            }
        };
        let staging = match (loaded.staging, staged_generation) {
            (Some(mut meta), Some(generation)) => {
                meta.generation = generation.number;
                Some(Staging { meta, generation })
            }
            _ => None,
        };
        let mut batch = storage.database().batch();
        batch.insert(
            &self.inner.meta,
            META_GENERATION,
            generation.number.to_be_bytes(),
        );
        batch.insert(&self.inner.meta, META_POSITION, loaded.position.encode());
        batch.insert(
            &self.inner.meta,
            META_COMPACT_REVISION,
            loaded.compact_revision.get().to_be_bytes(),
        );
        match &staging {
            Some(staging) => batch.insert(&self.inner.meta, META_STAGING, staging.meta.encode()),
            None => batch.remove(&self.inner.meta, META_STAGING),
        }
        let old = {
            let mut state = self.inner.state.write().expect("table state lock poisoned");
            batch.commit()?;
            std::mem::replace(
                &mut *state,
                State {
                    generation,
                    position: loaded.position.clone(),
                    compact_revision: loaded.compact_revision,
                    staging,
                },
            )
        };
        storage.sync()?;
        drop_generation(storage, &old.generation)?;
        if let Some(staging) = old.staging {
            drop_generation(storage, &staging.generation)?;
        }
        Ok(loaded.position)
    }

    /// Approximate bytes on disk of this table: its meta keyspace and the latest and history
    /// keyspaces of its generation (and of a staged load in progress), each with the writes
    /// still in its memtable counted ([`armada_storage::keyspace_bytes`]).
    pub fn disk_bytes(&self) -> u64 {
        let state = self.read_state();
        let generation_bytes = |generation: &Generation| {
            keyspace_bytes(&generation.latest) + keyspace_bytes(&generation.history)
        };
        keyspace_bytes(&self.inner.meta)
            + generation_bytes(&state.generation)
            + state
                .staging
                .as_ref()
                .map_or(0, |staging| generation_bytes(&staging.generation))
    }

    /// Merge compactions of this table's keyspaces (every generation's) since the node started.
    pub fn compactions(&self) -> u64 {
        let prefix = keyspace_name(&owner(self.inner.id), "");
        self.inner.storage.compactions_with_prefix(&prefix)
    }

    fn read_state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.inner.state.read().expect("table state lock poisoned")
    }

    fn write_state(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.inner.state.write().expect("table state lock poisoned")
    }
}

/// The LOAD command of `entries`, which must then be their only entry.
fn load_command<'a>(entries: &[ApplyEntry<'a>]) -> Result<Option<&'a Command>> {
    let mut loads = entries
        .iter()
        .filter_map(|entry| entry.command.filter(|command| command.is_load()));
    let Some(load) = loads.next() else {
        return Ok(None);
    };
    if entries.len() > 1 {
        return Err(TableError::InvalidArgument(
            "a LOAD command must be applied alone".into(),
        ));
    }
    Ok(Some(load))
}

/// A LOAD command checked against the staged load: what to do.
enum LoadStep<'a> {
    Begin {
        load_id: u64,
        keep: bool,
    },
    Chunk {
        staging: &'a Staging,
        records: &'a [pb::KeyValue],
    },
    Commit {
        staging: &'a Staging,
        leader_index: Option<LeaderIndex>,
    },
}

/// Checks a LOAD command stamped with `revision` against the staged load (pure); `Err` is
/// the rejection.
fn check_load<'a>(
    command: &'a Command,
    revision: Revision,
    staging: Option<&'a Staging>,
) -> std::result::Result<LoadStep<'a>, Rejection> {
    let current = |load_id: u64| {
        staging
            .filter(|staging| staging.meta.load_id == load_id && load_id != 0)
            .ok_or_else(|| Rejection(format!("load {load_id} is not in progress")))
    };
    match command {
        Command::LoadBegin { load_id: 0, .. } => Err(Rejection::new("load_id must be set")),
        Command::LoadBegin {
            keep_revisions: false,
            ..
        } if revision.get() == 0 => Err(Rejection::new("LOAD_BEGIN stamped with revision 0")),
        Command::LoadBegin {
            load_id,
            keep_revisions,
        } => Ok(LoadStep::Begin {
            load_id: *load_id,
            keep: *keep_revisions,
        }),
        Command::LoadChunk { load_id, records } => {
            let staging = current(*load_id)?;
            check_load_chunk(&staging.meta, records)?;
            Ok(LoadStep::Chunk { staging, records })
        }
        Command::LoadCommit {
            load_id,
            count,
            leader_index,
        } => {
            let staging = current(*load_id)?;
            let meta = &staging.meta;
            if meta.count != *count {
                return Err(Rejection(format!(
                    "load {} has {} records, the commit expects {count}",
                    meta.load_id, meta.count
                )));
            }
            if meta.keep_revisions && leader_index.is_none() {
                return Err(Rejection::new(
                    "a load that keeps revisions must commit with a leader index",
                ));
            }
            Ok(LoadStep::Commit {
                staging,
                leader_index: *leader_index,
            })
        }
        _ => Err(Rejection::new("not a LOAD command")),
    }
}

/// The create and mod revisions of a staged record: its own when the load keeps revisions,
/// else the load's begin revision.
fn staged_revisions(meta: &StagingMeta, kv: &pb::KeyValue) -> (Revision, Revision) {
    if meta.keep_revisions {
        (
            Revision(kv.create_revision as u64),
            Revision(kv.mod_revision as u64),
        )
    } else {
        (meta.begin_revision, meta.begin_revision)
    }
}

/// Checks the records of a LOAD_CHUNK against the load so far; `Err` is the rejection.
fn check_load_chunk(
    meta: &StagingMeta,
    batch: &[pb::KeyValue],
) -> std::result::Result<(), Rejection> {
    let mut previous = meta.last_key.as_ref();
    for (number, kv) in batch.iter().enumerate() {
        check_put(&kv.key, &kv.value)
            .map_err(|rejection| Rejection(format!("record {number}: {rejection}")))?;
        if previous.is_some_and(|previous| previous >= &kv.key) {
            return Err(Rejection(format!(
                "record {number}: keys must be strictly increasing"
            )));
        }
        if meta.keep_revisions && (kv.create_revision <= 0 || kv.mod_revision < kv.create_revision)
        {
            return Err(Rejection(format!(
                "record {number}: revisions create {} / mod {} are not valid",
                kv.create_revision, kv.mod_revision
            )));
        }
        previous = Some(&kv.key);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_and_their_views_can_cross_threads() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<Table>();
        assert_send_sync::<ReadView>();
    }
}
