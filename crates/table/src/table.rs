//! [`Table`]: the handle owning a table's keyspaces, its serialised apply path and the
//! generation switch used by snapshot installation.
//!
//! Concurrency: `apply_lock` serialises writers (apply, install). A view reads its position from
//! its own fjall snapshot (the position is in the same batch as the data), so a view's data and
//! position always belong together and an apply never blocks readers, not even during a fjall
//! write stall. `state` (generation handles, cached position) is write-locked by apply only to
//! update the cache after its commit, and by install around switching generations, so a view
//! never pairs a snapshot with the wrong generation's keyspaces.

use crate::apply::Applier;
use crate::error::{Result, TableError};
use crate::position::AppliedPosition;
use crate::view::ReadView;
use crate::{ApplyEntry, ApplyOutcome, snapshot};
use armada_storage::fjall::{Keyspace, Readable};
use armada_storage::{Revision, Storage, TableId, keyspace_name};
use bytes::Bytes;
use std::sync::{Arc, Mutex, RwLock};

/// Version of the table layout, stored under `format` in the meta keyspace.
const LAYOUT_FORMAT: u32 = 1;

pub(crate) const META_FORMAT: &[u8] = b"format";
pub(crate) const META_GENERATION: &[u8] = b"generation";
pub(crate) const META_POSITION: &[u8] = b"position";
pub(crate) const META_COMPACT_REVISION: &[u8] = b"compact_revision";

/// The keyspaces of one generation of a table's data.
pub(crate) struct Generation {
    pub number: u64,
    pub latest: Keyspace,
    pub history: Keyspace,
}

pub(crate) struct State {
    pub generation: Arc<Generation>,
    pub position: AppliedPosition,
    pub compact_revision: Revision,
}

struct Inner {
    storage: Storage,
    id: TableId,
    meta: Keyspace,
    state: RwLock<State>,
    apply_lock: Mutex<()>,
}

/// A table's state machine. Cheap to clone.
#[derive(Clone)]
pub struct Table {
    inner: Arc<Inner>,
}

fn owner(id: TableId) -> String {
    format!("t{id}")
}

fn generation_role(number: u64, part: &str) -> String {
    format!("g{number}.{part}")
}

/// The generation number of a keyspace of table `id`, `None` for its meta keyspace.
/// Names of other tables give `Err(())`.
fn parse_keyspace_name(id: TableId, name: &str) -> Result<Option<u64>, ()> {
    let prefix = keyspace_name(&owner(id), "");
    let role = name.strip_prefix(&prefix).ok_or(())?;
    if role == "meta" {
        return Ok(None);
    }
    let (number, part) = role
        .strip_prefix('g')
        .and_then(|rest| rest.split_once('.'))
        .ok_or(())?;
    match part {
        "latest" | "history" => number.parse().map(Some).map_err(|_| ()),
        _ => Err(()),
    }
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
        delete_keyspaces(storage, id, |generation| {
            generation != Some(number) && generation.is_some()
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
                }),
                apply_lock: Mutex::new(()),
            }),
        })
    }

    /// Removes every keyspace and record of the table. Open handles of it must not be used
    /// afterwards (their reads see the removed keyspaces until dropped).
    pub fn destroy(storage: &Storage, id: TableId) -> Result<()> {
        delete_keyspaces(storage, id, |_| true)
    }

    pub fn id(&self) -> TableId {
        self.inner.id
    }

    /// Applies consecutive log entries in one write batch together with `position`.
    ///
    /// The stored `position.leader_index` is the caller's when set; otherwise the last leader
    /// index carried by a command of this batch; otherwise the previously stored one.
    pub fn apply(
        &self,
        entries: &[ApplyEntry<'_>],
        position: &AppliedPosition,
    ) -> Result<Vec<ApplyOutcome>> {
        let _applying = self
            .inner
            .apply_lock
            .lock()
            .expect("table apply lock poisoned");
        let (generation, previous_leader_index) = {
            let state = self.read_state();
            (state.generation.clone(), state.position.leader_index)
        };
        let snapshot = self.inner.storage.database().snapshot();
        let mut applier = Applier::new(&snapshot, &generation);
        let mut outcomes = Vec::with_capacity(entries.len());
        let mut carried_leader_index = None;
        for entry in entries {
            let (outcome, leader_index) = applier.apply_entry(entry)?;
            outcomes.push(outcome);
            carried_leader_index = leader_index.or(carried_leader_index);
        }
        let mut stored = position.clone();
        stored.leader_index = position
            .leader_index
            .or(carried_leader_index)
            .or(previous_leader_index);
        let mut batch = applier.into_batch(self.inner.storage.database())?;
        batch.insert(&self.inner.meta, META_POSITION, stored.encode());
        batch.commit()?;
        self.inner
            .state
            .write()
            .expect("table state lock poisoned")
            .position = stored;
        Ok(outcomes)
    }

    /// Last persisted applied position (zero for a new table).
    pub fn applied_position(&self) -> Result<AppliedPosition> {
        Ok(self.read_state().position.clone())
    }

    /// A consistent point-in-time view at the applied position.
    pub fn read_view(&self) -> ReadView {
        let (snapshot, generation, cached_position, compact_revision) = {
            let state = self.read_state();
            let snapshot = self.inner.storage.database().snapshot();
            let cached = state.position.clone();
            (
                snapshot,
                state.generation.clone(),
                cached,
                state.compact_revision,
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
        ReadView::new(snapshot, generation, position, compact_revision)
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
        let old = self.read_state().generation.clone();
        let number = old.number + 1;
        // A leftover of an interrupted install may exist under this number: start clean.
        delete_keyspaces(storage, self.inner.id, |generation| {
            generation == Some(number)
        })?;
        let generation = Arc::new(open_generation(storage, self.inner.id, number)?);
        let loaded = match snapshot::load(reader, &generation) {
            Ok(loaded) => loaded,
            Err(error) => {
                drop(generation);
                delete_keyspaces(storage, self.inner.id, |g| g == Some(number))?;
                return Err(error);
            }
        };
        let mut batch = storage.database().batch();
        batch.insert(&self.inner.meta, META_GENERATION, number.to_be_bytes());
        batch.insert(&self.inner.meta, META_POSITION, loaded.position.encode());
        batch.insert(
            &self.inner.meta,
            META_COMPACT_REVISION,
            loaded.compact_revision.get().to_be_bytes(),
        );
        {
            let mut state = self.inner.state.write().expect("table state lock poisoned");
            batch.commit()?;
            *state = State {
                generation,
                position: loaded.position.clone(),
                compact_revision: loaded.compact_revision,
            };
        }
        storage.sync()?;
        let database = storage.database();
        database.delete_keyspace(old.latest.clone())?;
        database.delete_keyspace(old.history.clone())?;
        Ok(loaded.position)
    }

    /// Approximate bytes on disk of this table.
    pub fn disk_bytes(&self) -> u64 {
        let state = self.read_state();
        self.inner.meta.disk_space()
            + state.generation.latest.disk_space()
            + state.generation.history.disk_space()
    }

    fn read_state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.inner.state.read().expect("table state lock poisoned")
    }
}

fn open_generation(storage: &Storage, id: TableId, number: u64) -> Result<Generation> {
    let owner = owner(id);
    Ok(Generation {
        number,
        latest: storage.keyspace(&keyspace_name(&owner, &generation_role(number, "latest")))?,
        history: storage.keyspace(&keyspace_name(&owner, &generation_role(number, "history")))?,
    })
}

/// Deletes the keyspaces of table `id` whose generation (`None` = meta) matches `select`.
fn delete_keyspaces(
    storage: &Storage,
    id: TableId,
    select: impl Fn(Option<u64>) -> bool,
) -> Result<()> {
    let database = storage.database();
    let mut names: Vec<String> = database
        .list_keyspace_names()
        .iter()
        .map(|name| name.to_string())
        .filter(|name| parse_keyspace_name(id, name).is_ok_and(&select))
        .collect();
    names.sort();
    for name in names {
        let handle = storage.keyspace(&name)?;
        database.delete_keyspace(handle)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyspace_names_parse_only_for_their_table() {
        let id = TableId(1);
        assert_eq!(parse_keyspace_name(id, "t1.meta"), Ok(None));
        assert_eq!(parse_keyspace_name(id, "t1.g3.latest"), Ok(Some(3)));
        assert_eq!(parse_keyspace_name(id, "t1.g0.history"), Ok(Some(0)));
        assert!(parse_keyspace_name(id, "t10.meta").is_err());
        assert!(parse_keyspace_name(id, "t1.gx.latest").is_err());
        assert!(parse_keyspace_name(id, "t1.g1.other").is_err());
        assert!(parse_keyspace_name(id, "raft.log").is_err());
    }
}
