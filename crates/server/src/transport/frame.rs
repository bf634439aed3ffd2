//! Frames: the unit of the QUIC transport's wire format (see [`super::quic`] for the protocol).
//!
//! A frame is `length: u32 BE ‖ kind: u8 ‖ content`, where `length` counts the kind byte and
//! the content (so it is never 0). The limit a reader enforces applies to the content; it is
//! checked from the first five bytes, before anything is buffered, and the content is then read
//! as it arrives (never allocated up front from an untrusted length).

use bytes::{Bytes, BytesMut};

use super::PeerId;

/// The kind byte of a frame. Values are part of the wire format: never reuse one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum FrameKind {
    /// Dialer → acceptor, first frame of a connection: the dialer's `PeerId` (u64 BE).
    Hello = 0x01,
    /// Acceptor → dialer, answer to `Hello`: the acceptor's `PeerId` (u64 BE).
    HelloAck = 0x02,
    /// A request for `Handler::handle`: the request bytes.
    Call = 0x10,
    /// The header of a request for `Handler::handle_stream`: the header bytes.
    StreamHeader = 0x11,
    /// One chunk of a streamed body.
    StreamChunk = 0x12,
    /// The end of a streamed body (no content). A body without it is truncated.
    StreamEnd = 0x13,
    /// A successful response: the response bytes.
    Response = 0x20,
    /// The handler failed: its message, UTF-8.
    RemoteError = 0x21,
    /// A frame exceeded a limit: `what: u8 ‖ size: u64 BE ‖ limit: u64 BE`.
    TooLarge = 0x22,
    /// The peer broke the protocol: a message, UTF-8.
    ProtocolError = 0x23,
}

impl FrameKind {
    fn from_byte(byte: u8) -> Option<FrameKind> {
        Some(match byte {
            0x01 => FrameKind::Hello,
            0x02 => FrameKind::HelloAck,
            0x10 => FrameKind::Call,
            0x11 => FrameKind::StreamHeader,
            0x12 => FrameKind::StreamChunk,
            0x13 => FrameKind::StreamEnd,
            0x20 => FrameKind::Response,
            0x21 => FrameKind::RemoteError,
            0x22 => FrameKind::TooLarge,
            0x23 => FrameKind::ProtocolError,
            _ => return None,
        })
    }

    /// What a frame of this kind is, for `TransportError::TooLarge`.
    pub(super) fn description(self) -> &'static str {
        match self {
            FrameKind::Hello | FrameKind::HelloAck => "hello",
            FrameKind::Call => "request",
            FrameKind::StreamHeader => "stream header",
            FrameKind::StreamChunk => "stream chunk",
            FrameKind::StreamEnd => "stream end",
            FrameKind::Response => "response",
            FrameKind::RemoteError => "error message",
            FrameKind::TooLarge | FrameKind::ProtocolError => "error report",
        }
    }
}

/// A received frame.
#[derive(Debug)]
pub(super) struct Frame {
    pub(super) kind: FrameKind,
    pub(super) content: Bytes,
}

/// Why no frame could be read.
#[derive(Debug)]
pub(super) enum ReadFrameError {
    /// The stream ended cleanly before the first byte of a frame.
    Finished,
    /// The stream ended inside a frame.
    Truncated,
    /// The frame's content exceeds the reader's limit; nothing of it was read.
    TooLarge {
        kind: FrameKind,
        size: u64,
        limit: u64,
    },
    /// A length of 0 or an unknown kind byte.
    Malformed(String),
    /// The stream or the connection failed.
    Read(quinn::ReadError),
}

/// The bytes before a frame's content: length and kind.
const FRAME_PREFIX_BYTES: usize = 5;

/// Writes one frame. The content is handed to quinn without copying.
pub(super) async fn write_frame(
    send: &mut quinn::SendStream,
    kind: FrameKind,
    content: Bytes,
) -> Result<(), quinn::WriteError> {
    // Callers check sizes against limits far below u32::MAX; reaching this is a bug.
    let length = u32::try_from(content.len() + 1).expect("frame content checked against limits");
    let mut prefix = [0u8; FRAME_PREFIX_BYTES];
    prefix[..4].copy_from_slice(&length.to_be_bytes());
    prefix[4] = kind as u8;
    send.write_all(&prefix).await?;
    if !content.is_empty() {
        send.write_chunk(content).await?;
    }
    Ok(())
}

/// Reads one frame whose content is at most `limit` bytes.
pub(super) async fn read_frame(
    receive: &mut quinn::RecvStream,
    limit: usize,
) -> Result<Frame, ReadFrameError> {
    let mut prefix = [0u8; FRAME_PREFIX_BYTES];
    match receive.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Err(ReadFrameError::Finished),
        Err(quinn::ReadExactError::FinishedEarly(_)) => return Err(ReadFrameError::Truncated),
        Err(quinn::ReadExactError::ReadError(error)) => return Err(ReadFrameError::Read(error)),
    }
    let length = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    if length == 0 {
        return Err(ReadFrameError::Malformed("a frame of length 0".to_string()));
    }
    let kind = FrameKind::from_byte(prefix[4]).ok_or_else(|| {
        ReadFrameError::Malformed(format!("unknown frame kind {:#04x}", prefix[4]))
    })?;
    let content_bytes = length - 1;
    if content_bytes > limit {
        return Err(ReadFrameError::TooLarge {
            kind,
            size: content_bytes as u64,
            limit: limit as u64,
        });
    }
    let content = read_content(receive, content_bytes).await?;
    Ok(Frame { kind, content })
}

/// Reads exactly `content_bytes`, growing the buffer only as data arrives.
async fn read_content(
    receive: &mut quinn::RecvStream,
    content_bytes: usize,
) -> Result<Bytes, ReadFrameError> {
    let mut content = BytesMut::new();
    while content.len() < content_bytes {
        let wanted = content_bytes - content.len();
        let chunk = match receive.read_chunk(wanted, true).await {
            Ok(Some(chunk)) => chunk.bytes,
            Ok(None) => return Err(ReadFrameError::Truncated),
            Err(error) => return Err(ReadFrameError::Read(error)),
        };
        // The common case, a frame in one chunk, needs no copy.
        if content.is_empty() && chunk.len() == content_bytes {
            return Ok(chunk);
        }
        content.extend_from_slice(&chunk);
    }
    Ok(content.freeze())
}

/// Encodes a `PeerId` (hello frames).
pub(super) fn encode_peer_id(peer: PeerId) -> Bytes {
    Bytes::copy_from_slice(&peer.get().to_be_bytes())
}

/// Decodes a `PeerId` (hello frames).
pub(super) fn decode_peer_id(content: &[u8]) -> Option<PeerId> {
    Some(armada_storage::NodeId(u64::from_be_bytes(
        content.try_into().ok()?,
    )))
}

/// The `what` byte of a `TooLarge` frame.
fn too_large_code(what: &str) -> u8 {
    match what {
        "request" => 1,
        "response" => 2,
        "stream header" => 3,
        "stream chunk" => 4,
        _ => 0,
    }
}

fn too_large_description(code: u8) -> &'static str {
    match code {
        1 => "request",
        2 => "response",
        3 => "stream header",
        4 => "stream chunk",
        _ => "frame",
    }
}

/// Encodes the content of a `TooLarge` frame.
pub(super) fn encode_too_large(what: &str, size: u64, limit: u64) -> Bytes {
    let mut content = Vec::with_capacity(17);
    content.push(too_large_code(what));
    content.extend_from_slice(&size.to_be_bytes());
    content.extend_from_slice(&limit.to_be_bytes());
    Bytes::from(content)
}

/// Decodes the content of a `TooLarge` frame.
pub(super) fn decode_too_large(content: &[u8]) -> Option<(&'static str, u64, u64)> {
    if content.len() != 17 {
        return None;
    }
    let size = u64::from_be_bytes(content[1..9].try_into().ok()?);
    let limit = u64::from_be_bytes(content[9..17].try_into().ok()?);
    Some((too_large_description(content[0]), size, limit))
}

/// The longest error message sent back; a longer one is cut (at a character boundary).
pub(super) const MAX_ERROR_MESSAGE_BYTES: usize = 64 * 1024;

/// Encodes an error message, cut to [`MAX_ERROR_MESSAGE_BYTES`].
pub(super) fn encode_message(message: &str) -> Bytes {
    let mut end = message.len().min(MAX_ERROR_MESSAGE_BYTES);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    Bytes::copy_from_slice(&message.as_bytes()[..end])
}

/// Decodes an error message; invalid UTF-8 is replaced, not refused.
pub(super) fn decode_message(content: &[u8]) -> String {
    String::from_utf8_lossy(content).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use armada_storage::NodeId;

    #[test]
    fn too_large_round_trips() {
        let encoded = encode_too_large("stream chunk", 5, 4);
        assert_eq!(decode_too_large(&encoded), Some(("stream chunk", 5, 4)));
        assert_eq!(decode_too_large(&encoded[1..]), None);
    }

    #[test]
    fn messages_are_cut_at_a_character_boundary() {
        let long = "é".repeat(MAX_ERROR_MESSAGE_BYTES);
        let encoded = encode_message(&long);
        assert!(encoded.len() <= MAX_ERROR_MESSAGE_BYTES);
        assert!(std::str::from_utf8(&encoded).is_ok());
    }

    #[test]
    fn every_kind_byte_decodes_to_itself() {
        for byte in 0..=u8::MAX {
            if let Some(kind) = FrameKind::from_byte(byte) {
                assert_eq!(kind as u8, byte);
            }
        }
        assert_eq!(decode_peer_id(&encode_peer_id(NodeId(7))), Some(NodeId(7)));
        assert_eq!(decode_peer_id(&[1, 2, 3]), None);
    }
}
