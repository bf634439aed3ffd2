//! The internal snapshot format: a table's complete state (latest, history, position) as one
//! stream, used for Raft snapshot transfer inside a cluster. Not a wire contract between
//! versions of different layouts: it is versioned by its magic.
//!
//! Stream: a Snappy framing-format stream (CRC-32C per chunk) whose content is
//! `"ARMTSNP" 02`, then records `[tag u8][key len u32 LE][value len u32 LE][key][value]`:
//! one POSITION (1), one COMPACT_REVISION (2, u64 BE), LATEST (3) records in ascending key order,
//! HISTORY (4) records in ascending key order; when a staged load is in progress, one STAGING (5,
//! the staging record) followed by its STAGED_LATEST (6) and STAGED_HISTORY (7) records; and END
//! (255, value = the four record counts, u64 LE each, in that order). Keys and values of the data
//! records are the raw keyspace records.
//! Loading checks order, record shapes, counts and the end of stream, so a truncated or
//! corrupted stream is rejected before the table switches to it.

use crate::error::{Result, TableError};
use crate::generation::Generation;
use crate::load::{Staging, StagingMeta};
use crate::position::AppliedPosition;
use armada_storage::fjall::{Readable, Snapshot};
use armada_storage::{Revision, mvcc};
use bytes::Bytes;
use std::io::{Read, Write};
use std::sync::Arc;

const MAGIC: &[u8; 8] = b"ARMTSNP\x02";
const TAG_POSITION: u8 = 1;
const TAG_COMPACT_REVISION: u8 = 2;
const TAG_LATEST: u8 = 3;
const TAG_HISTORY: u8 = 4;
const TAG_STAGING: u8 = 5;
const TAG_STAGED_LATEST: u8 = 6;
const TAG_STAGED_HISTORY: u8 = 7;
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
    staging: Option<&Staging>,
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
    let mut counts = [0u64; 4];
    let mut write_section = |encoder: &mut snap::write::FrameEncoder<&mut dyn Write>,
                             index: usize,
                             tag: u8,
                             keyspace: &armada_storage::fjall::Keyspace|
     -> Result<()> {
        for guard in snapshot.iter(keyspace) {
            let (key, value) = guard.into_inner()?;
            write_record(encoder, tag, &key, &value)?;
            counts[index] += 1;
        }
        Ok(())
    };
    write_section(&mut encoder, 0, TAG_LATEST, &generation.latest)?;
    write_section(&mut encoder, 1, TAG_HISTORY, &generation.history)?;
    if let Some(staging) = staging {
        write_record(&mut encoder, TAG_STAGING, b"", &staging.meta.encode())?;
        write_section(
            &mut encoder,
            2,
            TAG_STAGED_LATEST,
            &staging.generation.latest,
        )?;
        write_section(
            &mut encoder,
            3,
            TAG_STAGED_HISTORY,
            &staging.generation.history,
        )?;
    }
    let end: Vec<u8> = counts
        .iter()
        .flat_map(|count| count.to_le_bytes())
        .collect();
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
    /// The staged load in progress (its `generation` is the sender's number: the caller
    /// renumbers it).
    pub staging: Option<StagingMeta>,
}

/// Loads a stream into the (empty) keyspaces of `generation` by ingestion; a staged load in
/// the stream goes into the generation `open_staged` returns.
pub(crate) fn load(
    reader: &mut dyn Read,
    generation: &Generation,
    open_staged: &mut dyn FnMut() -> Result<Arc<Generation>>,
) -> Result<Loaded> {
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
    let mut counts = [0u64; 4];
    counts[0] = load_section(&mut input, &mut record, TAG_LATEST, &generation.latest)?;
    counts[1] = load_section(&mut input, &mut record, TAG_HISTORY, &generation.history)?;
    let mut staging = None;
    if record.tag == TAG_STAGING {
        let meta = StagingMeta::decode(&record.value)?;
        let staged = open_staged()?;
        record = read_record(&mut input)?;
        counts[2] = load_section(&mut input, &mut record, TAG_STAGED_LATEST, &staged.latest)?;
        counts[3] = load_section(&mut input, &mut record, TAG_STAGED_HISTORY, &staged.history)?;
        staging = Some(meta);
    }
    expect_tag(&record, TAG_END)?;
    let expected: Vec<u8> = counts
        .iter()
        .flat_map(|count| count.to_le_bytes())
        .collect();
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
        staging,
    })
}

/// Ingests the run of `tag` records starting at `record` into `keyspace`; leaves the first
/// record of another tag in `record`. Returns the number of records.
fn load_section(
    input: &mut impl Read,
    record: &mut Record,
    tag: u8,
    keyspace: &armada_storage::fjall::Keyspace,
) -> Result<u64> {
    let mut ingestion = None;
    let mut previous: Option<Vec<u8>> = None;
    let mut count = 0;
    while record.tag == tag {
        check_record(record, previous.as_deref())?;
        let ingest = match &mut ingestion {
            Some(ingest) => ingest,
            None => ingestion.insert(keyspace.start_ingestion()?),
        };
        let taken = std::mem::replace(record, read_record(input)?);
        previous = Some(taken.key.clone());
        ingest.write(taken.key, taken.value)?;
        count += 1;
    }
    if let Some(ingestion) = ingestion {
        ingestion.finish()?;
    }
    Ok(count)
}

fn check_record(record: &Record, previous: Option<&[u8]>) -> Result<()> {
    if previous.is_some_and(|previous| previous >= record.key.as_slice()) {
        return Err(invalid("keys out of order"));
    }
    match record.tag {
        TAG_LATEST | TAG_STAGED_LATEST => {
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
