//! Complete validation of a dump (see [`crate::DumpReader`]) before it may replace a table.
//!
//! A restore must never leave a table half replaced, so the whole stream is checked first:
//! the Snappy framing (stream identifier, chunk types and lengths, the masked CRC-32C of every
//! chunk), every record's length and protobuf decoding, and what the records say:
//!
//! * every record is a `PUT` with a key of 1..=[`MAX_KEY_BYTES`] bytes and a value of at most
//!   [`MAX_VALUE_BYTES`] bytes (the API's limits, so a restored table holds nothing a client
//!   could not have written);
//! * keys strictly increase (a dump is in key order; a repeated key would make the result
//!   depend on the applier's order);
//! * `DUMMY` records (the final record of a `Snapshot.Stream` dump, which carries the leader
//!   index) are accepted and carry no data: they never write anything, not even an empty key;
//! * the record's `table` field is not compared with the target table, so a backup of `a` can
//!   be restored into `b` (Regatta does the same).
//!
//! Problems name the 1-based number of the record being read when they were found, so an
//! operator can find the spot (`record 1234: keys out of order`). The checker holds one record
//! and the previous key in memory, whatever the dump's size.

use crate::dump::DumpReader;
use crate::pb;
use crate::{MAX_KEY_BYTES, MAX_VALUE_BYTES};
use bytes::Bytes;
use pb::command::CommandType;
use std::io::Read;

/// What a valid dump holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DumpSummary {
    /// `PUT` records, i.e. keys.
    pub keys: u64,
    /// `DUMMY` records (ignored).
    pub dummies: u64,
    /// Bytes of keys and values.
    pub data_bytes: u64,
}

/// Why a dump is not acceptable, and where.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("record {record}: {problem}")]
pub struct DumpProblem {
    /// 1-based number of the record being read.
    pub record: u64,
    pub problem: String,
}

/// Reads the whole dump and checks it (module docs). Zero bytes is a valid, empty dump.
pub fn check_dump(input: impl Read) -> Result<DumpSummary, DumpProblem> {
    let mut summary = DumpSummary::default();
    let mut previous_key: Option<Bytes> = None;
    for (index, command) in DumpReader::new(input).enumerate() {
        let record = index as u64 + 1;
        let problem = |problem: String| DumpProblem { record, problem };
        let command = command.map_err(|error| problem(error.to_string()))?;
        match CommandType::try_from(command.r#type) {
            Ok(CommandType::Dummy) => summary.dummies += 1,
            Ok(CommandType::Put) => {
                let kv = command
                    .kv
                    .ok_or_else(|| problem("PUT record without a key-value".into()))?;
                check_key_value(&kv, previous_key.as_ref()).map_err(problem)?;
                summary.keys += 1;
                summary.data_bytes += (kv.key.len() + kv.value.len()) as u64;
                previous_key = Some(kv.key);
            }
            Ok(other) => {
                return Err(problem(format!(
                    "{} record; a dump holds only PUT (and DUMMY) records",
                    other.as_str_name()
                )));
            }
            Err(_) => {
                return Err(problem(format!("unknown command type {}", command.r#type)));
            }
        }
    }
    Ok(summary)
}

fn check_key_value(kv: &pb::KeyValue, previous_key: Option<&Bytes>) -> Result<(), String> {
    if kv.key.is_empty() {
        return Err("empty key".into());
    }
    if kv.key.len() > MAX_KEY_BYTES {
        return Err(format!(
            "key of {} bytes, the limit is {MAX_KEY_BYTES}",
            kv.key.len()
        ));
    }
    if kv.value.len() > MAX_VALUE_BYTES {
        return Err(format!(
            "value of {} bytes, the limit is {MAX_VALUE_BYTES}",
            kv.value.len()
        ));
    }
    if previous_key.is_some_and(|previous| previous.as_ref() >= kv.key.as_ref()) {
        return Err("keys out of order (each key must be greater than the previous one)".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use std::io::Write;

    fn put(key: &[u8], value: &[u8]) -> pb::Command {
        pb::Command {
            table: Bytes::from_static(b"t"),
            r#type: CommandType::Put as i32,
            kv: Some(pb::KeyValue {
                key: Bytes::copy_from_slice(key),
                value: Bytes::copy_from_slice(value),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn dummy() -> pb::Command {
        pb::Command {
            table: Bytes::from_static(b"t"),
            r#type: CommandType::Dummy as i32,
            leader_index: Some(9),
            ..Default::default()
        }
    }

    fn encode(commands: &[pb::Command]) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut encoder = snap::write::FrameEncoder::new(&mut out);
            for command in commands {
                let bytes = command.encode_to_vec();
                encoder
                    .write_all(&(bytes.len() as u64).to_le_bytes())
                    .unwrap();
                encoder.write_all(&bytes).unwrap();
            }
            encoder.flush().unwrap();
        }
        out
    }

    fn problem(commands: &[pb::Command]) -> DumpProblem {
        check_dump(encode(commands).as_slice()).unwrap_err()
    }

    #[test]
    fn valid_dumps_are_summarised() {
        assert_eq!(check_dump(&[][..]), Ok(DumpSummary::default()));
        let dump = encode(&[put(b"a", b"1"), put(b"b", b"22"), dummy()]);
        assert_eq!(
            check_dump(dump.as_slice()),
            Ok(DumpSummary {
                keys: 2,
                dummies: 1,
                data_bytes: 5
            })
        );
        let limits = encode(&[put(&[b'k'; MAX_KEY_BYTES], &vec![0; MAX_VALUE_BYTES])]);
        assert!(check_dump(limits.as_slice()).is_ok());
    }

    #[test]
    fn record_problems_name_the_record() {
        let order = problem(&[put(b"a", b""), put(b"c", b""), put(b"b", b"")]);
        assert_eq!(order.record, 3);
        assert!(order.problem.contains("out of order"), "{order}");
        let repeated = problem(&[put(b"a", b""), put(b"a", b"")]);
        assert_eq!(repeated.record, 2);
        assert_eq!(problem(&[put(b"", b"v")]).problem, "empty key");
        assert!(
            problem(&[put(&[b'k'; MAX_KEY_BYTES + 1], b"")])
                .problem
                .contains("limit is 1024"),
        );
        assert!(
            problem(&[put(b"k", &vec![0; MAX_VALUE_BYTES + 1])])
                .problem
                .contains("value of")
        );
        let mut delete = put(b"k", b"");
        delete.r#type = CommandType::Delete as i32;
        let wrong_type = problem(&[put(b"a", b""), delete]);
        assert_eq!(wrong_type.record, 2);
        assert!(wrong_type.problem.contains("DELETE"), "{wrong_type}");
        let mut no_kv = put(b"k", b"");
        no_kv.kv = None;
        assert!(problem(&[no_kv]).problem.contains("without a key-value"));
    }

    #[test]
    fn framing_and_truncation_are_caught() {
        let dump = encode(&[put(b"a", b"value-a"), put(b"b", b"value-b")]);
        // A flipped byte inside the data chunk: its CRC no longer matches.
        let mut flipped = dump.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x40;
        let error = check_dump(flipped.as_slice()).unwrap_err();
        assert_eq!(error.record, 1);
        assert!(error.problem.contains("checksum"), "{error}");
        // Cut inside a chunk.
        let error = check_dump(&dump[..dump.len() - 3]).unwrap_err();
        assert_eq!(error.record, 1, "{error}");
        // Not a Snappy stream at all.
        let error = check_dump(&b"definitely not snappy"[..]).unwrap_err();
        assert_eq!(error.record, 1);
        // A record cut short at a chunk boundary: the framing is fine, the record is not.
        let mut records = Vec::new();
        let command = put(b"a", b"v").encode_to_vec();
        records.extend_from_slice(&(command.len() as u64).to_le_bytes());
        records.extend_from_slice(&command[..command.len() - 1]);
        let mut short = Vec::new();
        {
            let mut encoder = snap::write::FrameEncoder::new(&mut short);
            encoder.write_all(&records).unwrap();
            encoder.flush().unwrap();
        }
        let error = check_dump(short.as_slice()).unwrap_err();
        assert_eq!(error.record, 1, "{error}");
        // A record length beyond the reader's limit.
        let mut huge = Vec::new();
        {
            let mut encoder = snap::write::FrameEncoder::new(&mut huge);
            encoder.write_all(&u64::MAX.to_le_bytes()).unwrap();
            encoder.flush().unwrap();
        }
        assert_eq!(check_dump(huge.as_slice()).unwrap_err().record, 1);
    }
}
