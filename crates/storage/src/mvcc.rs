//! MVCC record encodings of a table's keyspaces (the byte layout; ADR 0002, `docs/format.md`).
//!
//! A table keeps two keyspaces per generation:
//!
//! * **latest** — `user_key → [create_revision u64 BE][mod_revision u64 BE][value]`. The user key
//!   is stored verbatim, so the keyspace iterates in user-key order and a point read is one
//!   lookup. Only live keys are present (a delete removes the entry).
//! * **history** — `escape(user_key) ‖ 00 00 ‖ revision u64 BE → version`, where a version is
//!   `[01][create_revision u64 BE][value]` (a put) or `[00]` (a tombstone). The escaping
//!   (`00 → 00 ff`, terminated by `00 00`) preserves user-key order and makes encodings
//!   prefix-free, so all versions of one key are contiguous and ordered by revision, and a
//!   user-key range `[a, b)` maps onto the encoded range `[encode_key(a), encode_key(b))`.
//!
//! Invariants: revisions are fixed-width big-endian, so byte order equals numeric order. Decoders
//! never panic on malformed input: they return [`StorageError::Corrupt`].

use crate::{Result, Revision, StorageError};

/// Bytes of the fixed header of a latest record (create and mod revision).
pub const LATEST_HEADER_BYTES: usize = 16;

/// Bytes of the revision suffix of a history key.
pub const REVISION_BYTES: usize = 8;

const ESCAPE: u8 = 0x00;
const ESCAPED_ZERO: u8 = 0xff;
const TERMINATOR: u8 = 0x00;

const VERSION_TOMBSTONE: u8 = 0;
const VERSION_PUT: u8 = 1;

fn corrupt(what: &'static str, detail: impl Into<String>) -> StorageError {
    StorageError::Corrupt {
        what,
        detail: detail.into(),
    }
}

fn read_u64(bytes: &[u8], at: usize, what: &'static str) -> Result<u64> {
    bytes
        .get(at..at + 8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| corrupt(what, format!("short record of {} bytes", bytes.len())))
}

/// Encodes the value of a latest record.
pub fn encode_latest(create_revision: Revision, mod_revision: Revision, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(LATEST_HEADER_BYTES + value.len());
    out.extend_from_slice(&create_revision.get().to_be_bytes());
    out.extend_from_slice(&mod_revision.get().to_be_bytes());
    out.extend_from_slice(value);
    out
}

/// Decodes the header of a latest record: `(create_revision, mod_revision)`; the value is
/// `record[LATEST_HEADER_BYTES..]`.
pub fn decode_latest_header(record: &[u8]) -> Result<(Revision, Revision)> {
    let create = read_u64(record, 0, "latest record")?;
    let modified = read_u64(record, 8, "latest record")?;
    Ok((Revision(create), Revision(modified)))
}

/// Appends the order-preserving encoding of `user_key` (escaped and terminated) to `out`.
pub fn encode_key_into(user_key: &[u8], out: &mut Vec<u8>) {
    out.reserve(user_key.len() + 2 + REVISION_BYTES);
    for &byte in user_key {
        out.push(byte);
        if byte == ESCAPE {
            out.push(ESCAPED_ZERO);
        }
    }
    out.push(ESCAPE);
    out.push(TERMINATOR);
}

/// The encoded user key alone: the lower bound of all its versions in history.
pub fn encode_key(user_key: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_key_into(user_key, &mut out);
    out
}

/// A history key: encoded user key followed by the revision.
pub fn encode_history_key(user_key: &[u8], revision: Revision) -> Vec<u8> {
    let mut out = Vec::with_capacity(user_key.len() + 2 + REVISION_BYTES);
    encode_key_into(user_key, &mut out);
    out.extend_from_slice(&revision.get().to_be_bytes());
    out
}

/// Splits a history key into its encoded user-key part (comparable bytewise between keys) and
/// its revision, without decoding the user key.
pub fn split_history_key(key: &[u8]) -> Result<(&[u8], Revision)> {
    let Some(split) = key.len().checked_sub(REVISION_BYTES) else {
        return Err(corrupt("history key", format!("{} bytes", key.len())));
    };
    let (encoded, revision) = key.split_at(split);
    if encoded.len() < 2 || !encoded.ends_with(&[ESCAPE, TERMINATOR]) {
        return Err(corrupt("history key", "missing terminator"));
    }
    Ok((encoded, Revision(read_u64(revision, 0, "history key")?)))
}

/// Decodes an encoded user key (as returned by [`split_history_key`]) back to the user key.
pub fn decode_key(encoded: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(encoded.len());
    let mut bytes = encoded.iter();
    while let Some(&byte) = bytes.next() {
        if byte != ESCAPE {
            out.push(byte);
            continue;
        }
        match bytes.next() {
            Some(&ESCAPED_ZERO) => out.push(0),
            Some(&TERMINATOR) if bytes.as_slice().is_empty() => return Ok(out),
            _ => return Err(corrupt("history key", "bad escape")),
        }
    }
    Err(corrupt("history key", "missing terminator"))
}

/// One version of a key in history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HistoryVersion<V> {
    Put { create_revision: Revision, value: V },
    Tombstone,
}

/// Encodes a history version.
pub fn encode_history_version(version: &HistoryVersion<&[u8]>) -> Vec<u8> {
    match version {
        HistoryVersion::Tombstone => vec![VERSION_TOMBSTONE],
        HistoryVersion::Put {
            create_revision,
            value,
        } => {
            let mut out = Vec::with_capacity(9 + value.len());
            out.push(VERSION_PUT);
            out.extend_from_slice(&create_revision.get().to_be_bytes());
            out.extend_from_slice(value);
            out
        }
    }
}

/// Decodes a history version; for a put, the value starts at the returned offset.
pub fn decode_history_version(record: &[u8]) -> Result<HistoryVersion<usize>> {
    match record.first() {
        Some(&VERSION_TOMBSTONE) if record.len() == 1 => Ok(HistoryVersion::Tombstone),
        Some(&VERSION_PUT) => Ok(HistoryVersion::Put {
            create_revision: Revision(read_u64(record, 1, "history version")?),
            value: 9,
        }),
        _ => Err(corrupt("history version", "unknown tag")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_round_trips() {
        for key in [
            &b""[..],
            b"a",
            b"\0",
            b"\0\0",
            b"a\0b",
            b"\xff",
            b"\xff\0\xff",
        ] {
            let encoded = encode_history_key(key, Revision(42));
            let (user, revision) = split_history_key(&encoded).unwrap();
            assert_eq!(revision, Revision(42));
            assert_eq!(decode_key(user).unwrap(), key);
        }
    }

    #[test]
    fn encoding_preserves_key_then_revision_order() {
        let keys: [&[u8]; 9] = [
            b"", b"\0", b"\0\0", b"\0\x01", b"a", b"a\0", b"a\0\0", b"ab", b"\xff",
        ];
        let mut encoded = Vec::new();
        for key in keys {
            for revision in [1, 2, 256, u64::MAX] {
                encoded.push(encode_history_key(key, Revision(revision)));
            }
        }
        let mut sorted = encoded.clone();
        sorted.sort();
        assert_eq!(encoded, sorted);
    }

    #[test]
    fn user_range_maps_to_encoded_range() {
        // Every version of a key in [a, b) lies in [encode_key(a), encode_key(b)).
        let lower = encode_key(b"a");
        let upper = encode_key(b"b");
        for key in [&b"a"[..], b"a\0", b"a\xff\xff", b"az"] {
            let version = encode_history_key(key, Revision(u64::MAX));
            assert!(version >= lower && version < upper, "{key:?}");
        }
        assert!(encode_history_key(b"b", Revision(0)) >= upper);
    }

    #[test]
    fn malformed_keys_are_errors() {
        assert!(split_history_key(b"short").is_err());
        assert!(split_history_key(b"a\0\x01\0\0\0\0\0\0\0\x01").is_err());
        assert!(decode_key(b"a\0\x05\0\0").is_err());
        assert!(decode_key(b"a").is_err());
        assert!(decode_key(b"a\0\0b").is_err());
    }

    #[test]
    fn records_round_trip() {
        let latest = encode_latest(Revision(3), Revision(9), b"v");
        assert_eq!(
            decode_latest_header(&latest).unwrap(),
            (Revision(3), Revision(9))
        );
        assert_eq!(&latest[LATEST_HEADER_BYTES..], b"v");
        assert!(decode_latest_header(b"short").is_err());

        let put = encode_history_version(&HistoryVersion::Put {
            create_revision: Revision(5),
            value: b"xyz",
        });
        let HistoryVersion::Put {
            create_revision,
            value,
        } = decode_history_version(&put).unwrap()
        else {
            panic!("not a put")
        };
        assert_eq!(create_revision, Revision(5));
        assert_eq!(&put[value..], b"xyz");
        let tombstone = encode_history_version(&HistoryVersion::Tombstone);
        assert_eq!(
            decode_history_version(&tombstone).unwrap(),
            HistoryVersion::Tombstone
        );
        assert!(decode_history_version(b"").is_err());
        assert!(decode_history_version(b"\x01short").is_err());
    }
}
