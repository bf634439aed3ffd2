//! Raft snapshots without snapshot files.
//!
//! A group's state machine is already durable in fjall, so a Raft snapshot need not be written
//! out: "building" one only makes the journal durable (so that the log below it may be purged)
//! and records the applied position. When a peer needs the snapshot, its data is streamed from a
//! point-in-time [`ReadView`] whose position *is* the snapshot's metadata, so data and metadata
//! always agree. Received snapshots arrive spooled in a file and are installed from it.
//!
//! Both state machines (tables and the catalog) build their snapshots through
//! [`durable_snapshot`] and [`built`], so "durable first, then described" is written once.

use std::future::Future;
use std::io::{self, Read};

use armada_storage::Storage;
use armada_table::ReadView;
use bytes::Bytes;

use super::types::TypeConfig;

/// What a snapshot's data is, on the side that has it.
pub enum SnapshotData {
    /// A table replica's point-in-time view; streamed as the table's internal snapshot format.
    View(ReadView),
    /// A small state encoded in memory (the catalog).
    Bytes(Bytes),
    /// A snapshot received from a peer, spooled to a temporary file.
    File(std::fs::File),
}

/// A snapshot as openraft hands it around: its metadata and its data.
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;

/// The state machine's current state as a snapshot, durable first: once openraft holds a
/// snapshot it may purge the log below it, so the state the snapshot describes must survive a
/// crash before. `describe` (run after the sync) says what the state is, or `None` before
/// anything was applied. Shared by the table and catalog state machines.
pub async fn durable_snapshot(
    storage: &Storage,
    describe: impl Future<Output = io::Result<Option<Snapshot>>>,
) -> io::Result<Option<Snapshot>> {
    let storage = storage.clone();
    tokio::task::spawn_blocking(move || storage.sync())
        .await
        .map_err(io::Error::other)?
        .map_err(io::Error::other)?;
    describe.await
}

/// `build_snapshot`'s answer: the current snapshot, which exists once anything was applied.
pub fn built(current: Option<Snapshot>) -> io::Result<Snapshot> {
    current.ok_or_else(|| io::Error::other("nothing applied yet: no snapshot to build"))
}

impl SnapshotData {
    /// A reader over the snapshot's bytes. For a view, the bytes are produced on a separate
    /// thread through a bounded pipe, so the whole table is never held in memory.
    pub fn into_reader(self) -> io::Result<Box<dyn Read + Send>> {
        match self {
            SnapshotData::Bytes(bytes) => Ok(Box::new(io::Cursor::new(bytes))),
            SnapshotData::File(mut file) => {
                use std::io::Seek;
                file.rewind()?;
                Ok(Box::new(io::BufReader::new(file)))
            }
            SnapshotData::View(view) => {
                let (reader, mut writer) = pipe();
                std::thread::Builder::new()
                    .name("snapshot-writer".into())
                    .spawn(move || {
                        if let Err(error) = view.write_snapshot(&mut writer) {
                            writer.fail(io::Error::other(error.to_string()));
                        }
                    })?;
                Ok(Box::new(reader))
            }
        }
    }
}

impl std::fmt::Debug for SnapshotData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnapshotData::View(view) => {
                write!(f, "SnapshotData::View({:?})", view.position().log_index)
            }
            SnapshotData::Bytes(bytes) => write!(f, "SnapshotData::Bytes({} bytes)", bytes.len()),
            SnapshotData::File(_) => write!(f, "SnapshotData::File"),
        }
    }
}

/// Chunks in flight between the snapshot writer thread and its reader.
const PIPE_CHUNKS: usize = 4;
const PIPE_CHUNK_BYTES: usize = 256 * 1024;

/// A bounded in-process pipe: the writer blocks when `PIPE_CHUNKS` chunks wait unread.
fn pipe() -> (PipeReader, PipeWriter) {
    let (sender, receiver) = std::sync::mpsc::sync_channel(PIPE_CHUNKS);
    (
        PipeReader {
            receiver,
            current: io::Cursor::new(Vec::new()),
        },
        PipeWriter {
            sender,
            buffer: Vec::with_capacity(PIPE_CHUNK_BYTES),
        },
    )
}

pub struct PipeReader {
    receiver: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    current: io::Cursor<Vec<u8>>,
}

impl Read for PipeReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            let read = self.current.read(out)?;
            if read > 0 || out.is_empty() {
                return Ok(read);
            }
            match self.receiver.recv() {
                Ok(Ok(chunk)) => self.current = io::Cursor::new(chunk),
                Ok(Err(error)) => return Err(error),
                Err(_) => return Ok(0), // writer finished
            }
        }
    }
}

pub struct PipeWriter {
    sender: std::sync::mpsc::SyncSender<io::Result<Vec<u8>>>,
    buffer: Vec<u8>,
}

impl PipeWriter {
    fn send_buffer(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buffer, Vec::with_capacity(PIPE_CHUNK_BYTES));
        self.sender
            .send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "snapshot reader went away"))
    }

    fn fail(self, error: io::Error) {
        let _ = self.sender.send(Err(error));
    }
}

impl io::Write for PipeWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(data);
        if self.buffer.len() >= PIPE_CHUNK_BYTES {
            self.send_buffer()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_buffer()
    }
}

impl Drop for PipeWriter {
    fn drop(&mut self) {
        let _ = self.send_buffer();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn pipe_carries_everything_in_order_and_reports_failure() {
        let (mut reader, mut writer) = pipe();
        let expected: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let sent = expected.clone();
        let producer = std::thread::spawn(move || {
            for piece in sent.chunks(10_007) {
                writer.write_all(piece).expect("write");
            }
        });
        let mut received = Vec::new();
        reader.read_to_end(&mut received).expect("read");
        producer.join().expect("producer");
        assert_eq!(received, expected);

        let (mut reader, writer) = pipe();
        writer.fail(io::Error::other("boom"));
        assert!(reader.read_to_end(&mut Vec::new()).is_err());
    }
}
