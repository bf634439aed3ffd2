//! The Regatta-compatible dump (Backup `.bak` files, `Snapshot.Stream` payload).
//!
//! A Snappy framing-format stream whose content is records `[u64 LE length][mvcc.v1.Command]`:
//! one `PUT{table, kv}` per live key in key order (Armada also fills the kv's create and mod
//! revisions, which Regatta ignores), then optionally one `DUMMY{table, leader_index}`. An empty
//! dump with no final record is zero bytes (no stream identifier), as in Regatta.

use crate::error::{Result, TableError};
use crate::generation::Generation;
use crate::pb;
use crate::read::Latest;
use armada_storage::fjall::{Readable, Snapshot};
use bytes::Bytes;
use pb::command::CommandType;
use prost::Message;
use std::io::{Read, Write};

/// The first bytes of every non-empty dump: the Snappy framing stream identifier chunk.
pub const DUMP_STREAM_IDENTIFIER: [u8; 10] =
    [0xff, 0x06, 0x00, 0x00, 0x73, 0x4e, 0x61, 0x50, 0x70, 0x59];

/// Largest record accepted by [`DumpReader`] (a maximal PUT is about 2 MiB + 1 KiB).
pub const MAX_DUMP_RECORD_BYTES: usize = 8 * 1024 * 1024;

fn write_command(
    encoder: &mut impl Write,
    command: &pb::Command,
    buffer: &mut Vec<u8>,
) -> Result<()> {
    buffer.clear();
    command
        .encode(buffer)
        .map_err(|error| TableError::Corrupt(error.to_string()))?;
    encoder.write_all(&(buffer.len() as u64).to_le_bytes())?;
    encoder.write_all(buffer)?;
    Ok(())
}

pub(crate) fn write(
    snapshot: &Snapshot,
    generation: &Generation,
    table_name: &[u8],
    final_leader_index: Option<u64>,
    out: &mut dyn Write,
) -> Result<()> {
    let table = Bytes::copy_from_slice(table_name);
    let mut keys = snapshot.iter(&generation.latest).peekable();
    if keys.peek().is_none() && final_leader_index.is_none() {
        return Ok(());
    }
    let mut encoder = snap::write::FrameEncoder::new(out);
    let mut buffer = Vec::new();
    for guard in keys {
        let (key, record) = guard.into_inner()?;
        let latest = Latest::decode(Bytes::from(record))?;
        let command = pb::Command {
            table: table.clone(),
            r#type: CommandType::Put as i32,
            kv: Some(latest.to_key_value(Bytes::from(key))),
            ..Default::default()
        };
        write_command(&mut encoder, &command, &mut buffer)?;
    }
    if let Some(leader_index) = final_leader_index {
        let command = pb::Command {
            table,
            r#type: CommandType::Dummy as i32,
            leader_index: Some(leader_index),
            ..Default::default()
        };
        write_command(&mut encoder, &command, &mut buffer)?;
    }
    encoder.flush()?;
    Ok(())
}

/// Reads the commands of a dump (zero bytes = no commands). Errors end the iteration.
pub struct DumpReader<R: Read> {
    input: snap::read::FrameDecoder<R>,
    failed: bool,
}

impl<R: Read> DumpReader<R> {
    pub fn new(reader: R) -> Self {
        DumpReader {
            input: snap::read::FrameDecoder::new(reader),
            failed: false,
        }
    }

    fn next_command(&mut self) -> Result<Option<pb::Command>> {
        let mut length = [0u8; 8];
        let mut filled = 0;
        while filled < length.len() {
            let read = self.input.read(&mut length[filled..])?;
            if read == 0 {
                if filled == 0 {
                    return Ok(None);
                }
                return Err(TableError::InvalidSnapshot("truncated dump record".into()));
            }
            filled += read;
        }
        let length = usize::try_from(u64::from_le_bytes(length)).unwrap_or(usize::MAX);
        if length > MAX_DUMP_RECORD_BYTES {
            return Err(TableError::InvalidSnapshot(format!(
                "dump record of {length} bytes"
            )));
        }
        let mut record = vec![0; length];
        self.input
            .read_exact(&mut record)
            .map_err(|error| TableError::InvalidSnapshot(error.to_string()))?;
        pb::Command::decode(Bytes::from(record))
            .map(Some)
            .map_err(|error| TableError::InvalidSnapshot(error.to_string()))
    }
}

impl<R: Read> Iterator for DumpReader<R> {
    type Item = Result<pb::Command>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let next = self.next_command();
        self.failed = next.is_err();
        next.transpose()
    }
}
