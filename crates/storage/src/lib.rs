//! Storage: the node's one fjall database and the conventions for using it.
//!
//! Every node has exactly one [`Storage`] (one fjall `Database`) under `<data-dir>/db`. All
//! keyspaces live in it, so one write batch can update several of them atomically (a table's
//! data together with its applied position), and one journal fsync makes everything before it
//! durable. Keyspace names are chosen here and nowhere else (see [`keyspace_name`]).
//!
//! This crate is synchronous and knows nothing of tokio, gRPC or Raft.

mod compaction_count;
pub mod ids;
pub mod mvcc;

pub use fjall;
pub use ids::*;

use std::path::Path;
use std::sync::Arc;

use compaction_count::CompactionCounts;

/// Errors of the storage layer. IO errors are not recoverable by the caller: a node that
/// cannot write its storage stops (fail-stop).
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage engine error: {0}")]
    Engine(#[from] fjall::Error),
    #[error("corrupt data in {what}: {detail}")]
    Corrupt { what: &'static str, detail: String },
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Size at which a keyspace's memtable is sealed and flushed (fjall's default is 64 MiB).
///
/// Every put inserts into two memtables (`latest` and `history`) on every replica, and a
/// skiplist insert into a 64 MiB memtable (~200,000 small entries) costs a cache miss per level:
/// ~15 % of a 3-node cluster's CPU at 64 clients. At 16 MiB that cost fell by a sixth overall
/// with put p99 lower too; at 4 MiB the extra flushes and level-0 compactions cost more than
/// they saved (ADR 0007).
pub const MEMTABLE_BYTES: u64 = 16 * 1024 * 1024;

/// The node's database. Cheap to clone (handles are reference counted).
#[derive(Clone)]
pub struct Storage {
    db: fjall::Database,
    compactions: Arc<CompactionCounts>,
}

impl Storage {
    /// Opens (or creates) the database in `dir`.
    ///
    /// The journal is persisted manually: the Raft log writer fsyncs it once per batch of
    /// appends (group commit), which also covers every state-machine write before it.
    pub fn open(dir: &Path) -> Result<Self> {
        let compactions = Arc::new(CompactionCounts::default());
        let counts = compactions.clone();
        let db = fjall::Database::builder(dir)
            .manual_journal_persist(true)
            .with_compaction_filter_factories(Arc::new(move |name| Some(counts.factory(name))))
            .open()?;
        Ok(Storage { db, compactions })
    }

    /// The underlying database, for modules that own a keyspace layout of their own.
    pub fn database(&self) -> &fjall::Database {
        &self.db
    }

    /// Opens or creates the keyspace `name` ([`MEMTABLE_BYTES`] memtables; fjall keeps the
    /// options a keyspace was created with).
    pub fn keyspace(&self, name: &str) -> Result<fjall::Keyspace> {
        Ok(self.db.keyspace(name, || {
            fjall::KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES)
        })?)
    }

    /// Makes every write so far durable (fdatasync of the journal).
    pub fn sync(&self) -> Result<()> {
        self.db.persist(fjall::PersistMode::SyncData)?;
        Ok(())
    }

    /// Total bytes on disk (journal and tables).
    pub fn disk_space(&self) -> u64 {
        self.db.disk_space().unwrap_or(0)
    }

    /// Bytes of the journal on disk: the active journal file and the sealed ones not yet
    /// released (their memtables are not all flushed). One journal serves every keyspace of the
    /// database, so this is a node-level figure; each keyspace's share of it is approximated
    /// by [`keyspace_bytes`].
    pub fn journal_bytes(&self) -> u64 {
        self.db.journal_disk_space().unwrap_or(0)
    }

    /// Compactions fjall has finished since the database was opened, over all keyspaces: fjall
    /// counts them per database, not per keyspace.
    pub fn compactions_completed(&self) -> u64 {
        self.db.compactions_completed() as u64
    }

    /// Merge compactions started since the database was opened in the keyspaces whose names
    /// start with `prefix` (e.g. every keyspace of one table, of every generation).
    pub fn compactions_with_prefix(&self, prefix: &str) -> u64 {
        self.compactions.with_prefix(prefix)
    }
}

/// Bytes a keyspace holds: its tables (SSTs and blob files) on disk plus its active memtable.
///
/// Writes live in the memtable, and durably in the shared journal, until the memtable reaches
/// [`MEMTABLE_BYTES`] and is flushed: a table of a few tens of MB may have no SST at all, and
/// `disk_space()` alone reported 0 for it. The memtable's size (keys, values and per-entry
/// overhead) stands in for this keyspace's share of the journal, which stores the same
/// entries. A sealed memtable that is being flushed is counted by neither (for the moment of
/// the flush).
pub fn keyspace_bytes(keyspace: &fjall::Keyspace) -> u64 {
    use fjall::AbstractTree as _;
    keyspace.disk_space() + keyspace.tree.active_memtable().size()
}

/// The name of a keyspace that belongs to `owner` (e.g. a table id) and has role `role`.
/// Names are short ASCII: `t10001.latest`, `raft.log`.
pub fn keyspace_name(owner: &str, role: &str) -> String {
    format!("{owner}.{role}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes below the memtable size were counted as 0 bytes (only SSTs were): a table
    /// holding 25 MB reported a size of 0. Now they count before the flush and after it.
    #[test]
    fn compactions_are_counted_per_keyspace() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(dir.path()).expect("open");
        let compacted = storage.keyspace("t7.g0.latest").expect("keyspace");
        let untouched = storage.keyspace("t70.g0.latest").expect("keyspace");
        for round in 0..3u32 {
            for index in 0..100u32 {
                compacted
                    .insert(index.to_be_bytes(), round.to_be_bytes())
                    .expect("insert");
            }
            compacted.rotate_memtable_and_wait().expect("flush");
        }
        untouched.insert(b"k", b"v").expect("insert");
        assert_eq!(storage.compactions_with_prefix("t7."), 0);
        compacted.major_compact().expect("compact");
        assert!(storage.compactions_with_prefix("t7.") >= 1);
        assert_eq!(storage.compactions_with_prefix("t70."), 0);
        // The filter keeps everything: the newest round is what remains.
        let value = compacted
            .get(5u32.to_be_bytes())
            .expect("get")
            .expect("kept");
        assert_eq!(value.as_ref(), 2u32.to_be_bytes());
    }

    #[test]
    fn keyspace_bytes_count_writes_before_and_after_the_flush() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(dir.path()).expect("open");
        let keyspace = storage.keyspace("t1.latest").expect("keyspace");
        assert!(keyspace_bytes(&keyspace) < 1024, "an empty keyspace");
        let value = vec![7u8; 10_000];
        for index in 0..200u32 {
            keyspace
                .insert(index.to_be_bytes(), &value)
                .expect("insert");
        }
        let written = 200 * 10_000;
        let unflushed = keyspace_bytes(&keyspace);
        assert!(unflushed >= written, "{unflushed} < {written}");
        assert!(unflushed < 2 * written, "{unflushed}");
        assert!(storage.journal_bytes() >= written);

        keyspace.rotate_memtable_and_wait().expect("flush");
        let flushed = keyspace_bytes(&keyspace);
        // Flushed: the SST (values of one repeated byte compress), and no memtable.
        assert_eq!(flushed, keyspace.disk_space());
        assert!(flushed > 0);
    }
}
