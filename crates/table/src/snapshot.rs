//! The internal snapshot format: a table's complete state (latest, history, position) as one
//! stream, used for Raft snapshot transfer inside a cluster. Not a wire contract between
//! versions of different layouts: it is versioned by its magic.
//!
//! Stream: a Snappy framing-format stream (CRC-32C per chunk) whose content is
//! `"ARMTSNP" 01`, then records `[tag u8][key len u32 LE][value len u32 LE][key][value]`:
//! one POSITION (1), one COMPACT_REVISION (2, u64 BE), LATEST (3) records in ascending key order,
//! HISTORY (4) records in ascending key order, and END (255, value = latest count u64 LE ‖
//! history count u64 LE). Keys and values of LATEST/HISTORY are the raw keyspace records.
//! Loading checks order, record shapes, counts and the end of stream, so a truncated or
//! corrupted stream is rejected before the table switches to it.

use crate::error::{Result, TableError};
use crate::position::AppliedPosition;
use crate::table::Generation;
use armada_storage::fjall::{Readable, Snapshot};
use armada_storage::{Revision, mvcc};
use bytes::Bytes;
use std::io::{Read, Write};

const MAGIC: &[u8; 8] = b"ARMTSNP\x01";
const TAG_POSITION: u8 = 1;
const TAG_COMPACT_REVISION: u8 = 2;
const TAG_LATEST: u8 = 3;
const TAG_HISTORY: u8 = 4;
const TAG_END: u8 = 255;

/// Bounds on record sizes read from a stream (fjall's key limit; a generous value limit).
const MAX_RECORD_KEY_BYTES: usize = 65_536;
const MAX_RECORD_VALUE_BYTES: usize = 64 * 1024 * 1024;

fn write_record(out: &mut impl Write, tag: u8, key: &[u8], value: &[u8]) -> Result<()> {
    let length = |part: &[u8]| {
        u32::try_from(part.len()).map_err(|_| TableError::Corrupt("record over 4 GiB".into()))
    };
    let mut header = [0u8; 9];
    header[0] = tag;
    header[1..5].copy_from_slice(&length(key)?.to_le_bytes());
    header[5..9].copy_from_slice(&length(value)?.to_le_bytes());
    out.write_all(&header)?;
    out.write_all(key)?;
    out.write_all(value)?;
    Ok(())
}

pub(crate) fn write(
    snapshot: &Snapshot,
    generation: &Generation,
    position: &AppliedPosition,
    compact_revision: Revision,
    out: &mut dyn Write,
) -> Result<()> {
    let mut encoder = snap::write::FrameEncoder::new(out);
    encoder.write_all(MAGIC)?;
    write_record(&mut encoder, TAG_POSITION, b"", &position.encode())?;
    write_record(
        &mut encoder,
        TAG_COMPACT_REVISION,
        b"",
        &compact_revision.get().to_be_bytes(),
    )?;
    let mut counts = [0u64; 2];
    for (index, (tag, keyspace)) in [
        (TAG_LATEST, &generation.latest),
        (TAG_HISTORY, &generation.history),
    ]
    .into_iter()
    .enumerate()
    {
        for guard in snapshot.iter(keyspace) {
            let (key, value) = guard.into_inner()?;
            write_record(&mut encoder, tag, &key, &value)?;
            counts[index] += 1;
        }
    }
    let mut end = [0u8; 16];
    end[..8].copy_from_slice(&counts[0].to_le_bytes());
    end[8..].copy_from_slice(&counts[1].to_le_bytes());
    write_record(&mut encoder, TAG_END, b"", &end)?;
    encoder.flush()?;
    Ok(())
}

struct Record {
    tag: u8,
    key: Vec<u8>,
    value: Vec<u8>,
}

fn invalid(detail: impl std::fmt::Display) -> TableError {
    TableError::InvalidSnapshot(detail.to_string())
}

fn read_record(input: &mut impl Read) -> Result<Record> {
    let mut header = [0u8; 9];
    input.read_exact(&mut header).map_err(invalid)?;
    let length = |bytes: &[u8]| -> Result<usize> {
        let array: [u8; 4] = bytes.try_into().map_err(invalid)?;
        usize::try_from(u32::from_le_bytes(array)).map_err(invalid)
    };
    let (key_len, value_len) = (length(&header[1..5])?, length(&header[5..9])?);
    if key_len > MAX_RECORD_KEY_BYTES || value_len > MAX_RECORD_VALUE_BYTES {
        return Err(invalid(format!("record of {key_len}+{value_len} bytes")));
    }
    let mut key = vec![0; key_len];
    input.read_exact(&mut key).map_err(invalid)?;
    let mut value = vec![0; value_len];
    input.read_exact(&mut value).map_err(invalid)?;
    Ok(Record {
        tag: header[0],
        key,
        value,
    })
}

fn expect_tag(record: &Record, tag: u8) -> Result<()> {
    if record.tag == tag {
        Ok(())
    } else {
        Err(invalid(format!(
            "expected record {tag}, found {}",
            record.tag
        )))
    }
}

/// What a loaded snapshot says about the table.
pub(crate) struct Loaded {
    pub position: AppliedPosition,
    pub compact_revision: Revision,
}

/// Loads a stream into the (empty) keyspaces of `generation` by ingestion.
pub(crate) fn load(reader: &mut dyn Read, generation: &Generation) -> Result<Loaded> {
    let mut input = snap::read::FrameDecoder::new(reader);
    let mut magic = [0u8; 8];
    input.read_exact(&mut magic).map_err(invalid)?;
    if &magic != MAGIC {
        return Err(invalid("unknown magic"));
    }
    let record = read_record(&mut input)?;
    expect_tag(&record, TAG_POSITION)?;
    let position = AppliedPosition::decode(Bytes::from(record.value))?;
    let record = read_record(&mut input)?;
    expect_tag(&record, TAG_COMPACT_REVISION)?;
    let compact: [u8; 8] = record.value.as_slice().try_into().map_err(invalid)?;
    let compact_revision = Revision(u64::from_be_bytes(compact));

    let mut record = read_record(&mut input)?;
    let mut counts = [0u64; 2];
    for (index, tag) in [TAG_LATEST, TAG_HISTORY].into_iter().enumerate() {
        let keyspace = if tag == TAG_LATEST {
            &generation.latest
        } else {
            &generation.history
        };
        let mut ingestion = None;
        let mut previous: Option<Vec<u8>> = None;
        while record.tag == tag {
            check_record(&record, previous.as_deref())?;
            let ingest = match &mut ingestion {
                Some(ingest) => ingest,
                None => ingestion.insert(keyspace.start_ingestion()?),
            };
            previous = Some(record.key.clone());
            ingest.write(record.key, record.value)?;
            counts[index] += 1;
            record = read_record(&mut input)?;
        }
        if let Some(ingestion) = ingestion {
            ingestion.finish()?;
        }
    }
    expect_tag(&record, TAG_END)?;
    let mut expected = Vec::with_capacity(16);
    expected.extend_from_slice(&counts[0].to_le_bytes());
    expected.extend_from_slice(&counts[1].to_le_bytes());
    if record.value != expected {
        return Err(invalid("record counts do not match the end record"));
    }
    let mut trailing = [0u8; 1];
    if input.read(&mut trailing).map_err(invalid)? != 0 {
        return Err(invalid("data after the end record"));
    }
    Ok(Loaded {
        position,
        compact_revision,
    })
}

fn check_record(record: &Record, previous: Option<&[u8]>) -> Result<()> {
    if previous.is_some_and(|previous| previous >= record.key.as_slice()) {
        return Err(invalid("keys out of order"));
    }
    match record.tag {
        TAG_LATEST => {
            if record.key.is_empty() {
                return Err(invalid("empty key"));
            }
            mvcc::decode_latest_header(&record.value)?;
        }
        _ => {
            mvcc::split_history_key(&record.key)?;
            mvcc::decode_history_version(&record.value)?;
        }
    }
    Ok(())
}
