//! Where a group keeps its latest Raft snapshot: one file per group under
//! `<data-dir>/snapshots/<group>/`, written to a temporary name and renamed into place, with
//! its metadata in a JSON side file. Only the newest snapshot is kept.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

use crate::groups::types::{SnapshotMeta, TypeConfig};

#[derive(Clone)]
pub struct SnapshotStore {
    dir: PathBuf,
}

impl SnapshotStore {
    pub fn new(dir: PathBuf) -> Self {
        SnapshotStore { dir }
    }

    fn data_path(&self) -> PathBuf {
        self.dir.join("snapshot.data")
    }

    fn meta_path(&self) -> PathBuf {
        self.dir.join("snapshot.meta.json")
    }

    /// Writes a snapshot with `write`, makes it durable, and returns it opened for reading.
    pub fn save(
        &self,
        meta: &SnapshotMeta,
        write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> io::Result<File> {
        fs::create_dir_all(&self.dir)?;
        let temporary = self.dir.join("snapshot.data.tmp");
        {
            let mut out = BufWriter::new(File::create(&temporary)?);
            write(&mut out)?;
            out.flush()?;
            out.get_ref().sync_data()?;
        }
        fs::rename(&temporary, self.data_path())?;
        let meta_temporary = self.dir.join("snapshot.meta.tmp");
        fs::write(
            &meta_temporary,
            serde_json::to_vec(meta).map_err(io::Error::other)?,
        )?;
        File::open(&meta_temporary)?.sync_data()?;
        fs::rename(&meta_temporary, self.meta_path())?;
        File::open(self.data_path())
    }

    /// The newest snapshot, if any.
    pub fn current(&self) -> io::Result<Option<openraft::alias::SnapshotOf<TypeConfig, File>>> {
        let meta_bytes = match fs::read(self.meta_path()) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error),
        };
        let meta: SnapshotMeta = serde_json::from_slice(&meta_bytes)
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?;
        Ok(Some(openraft::alias::SnapshotOf::<TypeConfig, File> {
            meta,
            snapshot: File::open(self.data_path())?,
        }))
    }

    /// Removes every snapshot of the group.
    pub fn destroy(&self) -> io::Result<()> {
        match fs::remove_dir_all(&self.dir) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
            _ => Ok(()),
        }
    }
}
