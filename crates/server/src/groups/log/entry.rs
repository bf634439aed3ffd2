//! The byte form of one log entry, the payload of a log record (see `record.rs` for the
//! framing around it): what the segmented log stores and what the read cache decodes.

use std::io;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use openraft::EntryPayload;
use openraft::vote::RaftLeaderId;

use crate::groups::types::{Entry, LogId, Request};

/// The first byte of every encoded entry.
pub(super) const ENTRY_FORMAT_V1: u8 = 1;
const PAYLOAD_BLANK: u8 = 0;
const PAYLOAD_NORMAL: u8 = 1;
const PAYLOAD_MEMBERSHIP: u8 = 2;

pub(super) fn corrupt(detail: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, detail)
}

/// Encodes an entry: `format u8 ‖ term u64 ‖ leader node u64 ‖ index u64 ‖ kind u8 ‖ payload`
/// (big-endian). Payload: nothing (blank), the command bytes (normal), JSON (membership).
pub fn encode_entry(entry: &Entry) -> Bytes {
    let (payload_kind, payload): (u8, Bytes) = match &entry.payload {
        EntryPayload::Blank => (PAYLOAD_BLANK, Bytes::new()),
        EntryPayload::Normal(request) => (PAYLOAD_NORMAL, request.0.clone()),
        EntryPayload::Membership(membership) => (
            PAYLOAD_MEMBERSHIP,
            Bytes::from(serde_json::to_vec(membership).expect("membership encodes")),
        ),
    };
    let mut out = BytesMut::with_capacity(26 + payload.len());
    out.put_u8(ENTRY_FORMAT_V1);
    out.put_u64(entry.log_id.leader_id.term);
    out.put_u64(entry.log_id.leader_id.node_id);
    out.put_u64(entry.log_id.index);
    out.put_u8(payload_kind);
    out.put_slice(&payload);
    out.freeze()
}

pub fn decode_entry(bytes: &[u8]) -> io::Result<Entry> {
    if bytes.len() < 26 {
        return Err(corrupt(format!(
            "log entry of {} bytes is too short",
            bytes.len()
        )));
    }
    let mut buf = bytes;
    let format = buf.get_u8();
    if format != ENTRY_FORMAT_V1 {
        return Err(corrupt(format!("unknown log entry format {format}")));
    }
    let term = buf.get_u64();
    let node_id = buf.get_u64();
    let index = buf.get_u64();
    let kind = buf.get_u8();
    let log_id = LogId::new(
        openraft::impls::leader_id_adv::LeaderId::new(term, node_id),
        index,
    );
    let payload = match kind {
        PAYLOAD_BLANK => EntryPayload::Blank,
        PAYLOAD_NORMAL => EntryPayload::Normal(Request(Bytes::copy_from_slice(buf))),
        PAYLOAD_MEMBERSHIP => EntryPayload::Membership(
            serde_json::from_slice(buf).map_err(|error| corrupt(format!("membership: {error}")))?,
        ),
        other => return Err(corrupt(format!("unknown log payload kind {other}"))),
    };
    Ok(Entry { log_id, payload })
}
