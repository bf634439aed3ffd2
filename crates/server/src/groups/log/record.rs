//! The record framing of the segmented Raft log (docs/format.md, "Raft log").
//!
//! A segment file is a 16-byte header (`ARMADAWL ‖ format u32 BE ‖ reserved u32`) followed by
//! records `len u32 BE ‖ crc32 u32 BE ‖ kind u8 ‖ group u64 BE ‖ payload`, where `len` counts
//! `kind ‖ group ‖ payload` and the CRC (CRC-32/ISO-HDLC, `crc32fast`) covers the same bytes.
//! Records are written whole by one writer, so a crash can only leave an incomplete or
//! unchecksummed record at the very end of the newest segment: [`decode`] tells such a *torn*
//! record apart from a record that is intact but not understood (*corrupt*), which no crash can
//! produce.
//!
//! Pure functions over byte slices; the engine owns files and state.

use bytes::{Buf, BufMut};
use openraft::vote::RaftLeaderId;

use super::super::types::LogId;

pub const SEGMENT_MAGIC: &[u8; 8] = b"ARMADAWL";
/// Format written: 2 = format 1 plus a zero-filled tail (preallocated space) that ends the
/// segment cleanly. Segments of format 1 are still read.
pub const SEGMENT_FORMAT: u32 = 2;
/// Oldest segment format read.
pub const SEGMENT_FORMAT_OLDEST: u32 = 1;
pub const SEGMENT_HEADER_BYTES: usize = 16;
/// `len u32 ‖ crc u32`.
pub const RECORD_PREFIX_BYTES: usize = 8;
/// `kind u8 ‖ group u64`: the part of the body before the payload.
pub const RECORD_BODY_HEADER_BYTES: usize = 9;
/// Upper bound of one record's body; larger lengths can only come from a torn or corrupt file.
pub const MAX_RECORD_BODY_BYTES: usize = 1 << 30;
/// Encoded size of a log id: `term u64 ‖ leader node u64 ‖ index u64`.
pub const LOG_ID_BYTES: usize = 24;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `count u32 ‖ (len u32 ‖ entry (format 1))*`.
    Entries = 1,
    /// `flag u8 ‖ log id` (flag 0: everything removed, no log id follows).
    TruncateAfter = 2,
    /// `log id`: entries up to and including its index are gone.
    PurgeUpto = 3,
    /// openraft's `Vote` as JSON.
    Vote = 4,
    /// `flag u8 ‖ log id` (flag 0: none).
    Committed = 5,
    /// Empty: every record of the group before this one is void.
    GroupDestroyed = 6,
}

impl Kind {
    fn from_byte(byte: u8) -> Option<Kind> {
        Some(match byte {
            1 => Kind::Entries,
            2 => Kind::TruncateAfter,
            3 => Kind::PurgeUpto,
            4 => Kind::Vote,
            5 => Kind::Committed,
            6 => Kind::GroupDestroyed,
            _ => return None,
        })
    }
}

/// One decoded record; `payload` borrows the segment bytes.
#[derive(Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub kind: Kind,
    pub group: u64,
    pub payload: &'a [u8],
}

#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Incomplete or failing its CRC: what a crash during a write leaves behind.
    Torn(String),
    /// Intact (CRC matches) but not understood: never produced by a crash.
    Corrupt(String),
}

/// Starts a record in `out`; the payload is appended by the caller, then [`finish`] seals it.
pub fn begin(out: &mut Vec<u8>, kind: Kind, group: u64) -> usize {
    let start = out.len();
    out.put_u32(0);
    out.put_u32(0);
    out.put_u8(kind as u8);
    out.put_u64(group);
    start
}

/// Fills in the length and CRC of the record begun at `start`.
pub fn finish(out: &mut [u8], start: usize) {
    let body = &out[start + RECORD_PREFIX_BYTES..];
    assert!(
        body.len() <= MAX_RECORD_BODY_BYTES,
        "a Raft log record of {} bytes exceeds the limit",
        body.len()
    );
    let len = body.len() as u32;
    let crc = crc32fast::hash(body);
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_be_bytes());
}

/// Decodes the record at the start of `bytes`: `Ok(None)` at a clean end (no bytes left, or
/// only zeros: space preallocated ahead of the writes), otherwise the record and how many
/// bytes it spans. A zero length followed by anything but zeros is torn.
pub fn decode(bytes: &[u8]) -> Result<Option<(Record<'_>, usize)>, DecodeError> {
    if bytes.iter().take(4).all(|byte| *byte == 0) {
        return match bytes.iter().position(|byte| *byte != 0) {
            None => Ok(None),
            Some(at) => Err(DecodeError::Torn(format!(
                "zero record length followed by data {at} bytes on"
            ))),
        };
    }
    if bytes.len() < RECORD_PREFIX_BYTES {
        return Err(DecodeError::Torn(format!(
            "{} bytes left, less than a record prefix",
            bytes.len()
        )));
    }
    let mut prefix = &bytes[..RECORD_PREFIX_BYTES];
    let len = prefix.get_u32() as usize;
    let crc = prefix.get_u32();
    if !(RECORD_BODY_HEADER_BYTES..=MAX_RECORD_BODY_BYTES).contains(&len) {
        return Err(DecodeError::Torn(format!(
            "record length {len} out of range"
        )));
    }
    let Some(body) = bytes.get(RECORD_PREFIX_BYTES..RECORD_PREFIX_BYTES + len) else {
        return Err(DecodeError::Torn(format!(
            "record of {len} bytes runs past the end ({} bytes left)",
            bytes.len() - RECORD_PREFIX_BYTES
        )));
    };
    if crc32fast::hash(body) != crc {
        return Err(DecodeError::Torn("record CRC mismatch".into()));
    }
    let mut header = &body[..RECORD_BODY_HEADER_BYTES];
    let kind_byte = header.get_u8();
    let group = header.get_u64();
    let Some(kind) = Kind::from_byte(kind_byte) else {
        return Err(DecodeError::Corrupt(format!(
            "unknown record kind {kind_byte}"
        )));
    };
    let record = Record {
        kind,
        group,
        payload: &body[RECORD_BODY_HEADER_BYTES..],
    };
    Ok(Some((record, RECORD_PREFIX_BYTES + len)))
}

pub fn segment_header() -> [u8; SEGMENT_HEADER_BYTES] {
    let mut header = [0u8; SEGMENT_HEADER_BYTES];
    header[..8].copy_from_slice(SEGMENT_MAGIC);
    header[8..12].copy_from_slice(&SEGMENT_FORMAT.to_be_bytes());
    header
}

pub fn check_segment_header(bytes: &[u8]) -> Result<(), DecodeError> {
    if bytes.len() < SEGMENT_HEADER_BYTES {
        return Err(DecodeError::Torn("segment header incomplete".into()));
    }
    if &bytes[..8] != SEGMENT_MAGIC {
        return Err(DecodeError::Corrupt(
            "not a Raft log segment (magic)".into(),
        ));
    }
    let format = u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if !(SEGMENT_FORMAT_OLDEST..=SEGMENT_FORMAT).contains(&format) {
        return Err(DecodeError::Corrupt(format!(
            "unknown Raft log segment format {format}"
        )));
    }
    Ok(())
}

pub fn put_log_id(out: &mut Vec<u8>, log_id: &LogId) {
    out.put_u64(log_id.leader_id.term);
    out.put_u64(log_id.leader_id.node_id);
    out.put_u64(log_id.index);
}

pub fn put_optional_log_id(out: &mut Vec<u8>, log_id: Option<&LogId>) {
    match log_id {
        Some(log_id) => {
            out.put_u8(1);
            put_log_id(out, log_id);
        }
        None => out.put_u8(0),
    }
}

pub fn get_log_id(bytes: &[u8]) -> Result<LogId, DecodeError> {
    if bytes.len() != LOG_ID_BYTES {
        return Err(DecodeError::Corrupt(format!(
            "log id of {} bytes",
            bytes.len()
        )));
    }
    let mut buf = bytes;
    let term = buf.get_u64();
    let node_id = buf.get_u64();
    let index = buf.get_u64();
    Ok(LogId::new(
        openraft::impls::leader_id_adv::LeaderId::new(term, node_id),
        index,
    ))
}

pub fn get_optional_log_id(bytes: &[u8]) -> Result<Option<LogId>, DecodeError> {
    match bytes.split_first() {
        Some((0, [])) => Ok(None),
        Some((1, rest)) => get_log_id(rest).map(Some),
        _ => Err(DecodeError::Corrupt("malformed optional log id".into())),
    }
}

/// The entries of an `Entries` payload as `(offset in payload, len)` pairs.
pub fn split_entries(payload: &[u8]) -> Result<Vec<(usize, usize)>, DecodeError> {
    let malformed = || DecodeError::Corrupt("malformed entries record".into());
    let mut buf = payload;
    if buf.len() < 4 {
        return Err(malformed());
    }
    let count = buf.get_u32() as usize;
    let mut spans = Vec::with_capacity(count.min(payload.len() / 4));
    let mut offset = 4;
    for _ in 0..count {
        if buf.len() < 4 {
            return Err(malformed());
        }
        let len = buf.get_u32() as usize;
        offset += 4;
        if buf.len() < len {
            return Err(malformed());
        }
        spans.push((offset, len));
        buf.advance(len);
        offset += len;
    }
    if !buf.is_empty() {
        return Err(malformed());
    }
    Ok(spans)
}
