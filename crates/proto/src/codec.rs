//! The gRPC codec of every generated service: prost's, except that a message that does not
//! decode is the caller's error.
//!
//! tonic's prost codec answers an undecodable request with `INTERNAL`, which tells a client
//! the server is broken and invites retries. A malformed request is bad input like any other
//! and gets `INVALID_ARGUMENT` (SPEC: bad input gets a clear error). The generated clients use
//! the same codec, so a malformed *response* also surfaces as `INVALID_ARGUMENT`, with a message
//! saying it could not be decoded.

use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::{Code, Status};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// prost encoding and decoding; decode failures are `INVALID_ARGUMENT`.
#[derive(Debug, Clone)]
pub struct WireCodec<T, U> {
    inner: ProstCodec<T, U>,
}

impl<T, U> Default for WireCodec<T, U> {
    fn default() -> Self {
        WireCodec {
            inner: ProstCodec::default(),
        }
    }
}

impl<T, U> Codec for WireCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = WireDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.inner.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        WireDecoder {
            inner: self.inner.decoder(),
        }
    }
}

/// prost's decoder with decode errors mapped to `INVALID_ARGUMENT`.
#[derive(Debug)]
pub struct WireDecoder<U> {
    inner: ProstDecoder<U>,
}

impl<U: Message + Default> Decoder for WireDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.inner.decode(src).map_err(malformed)
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.inner.buffer_settings()
    }
}

/// The only errors prost's decoder returns are decode errors, as `INTERNAL`.
fn malformed(status: Status) -> Status {
    if status.code() == Code::Internal {
        Status::invalid_argument(format!("malformed protobuf message: {}", status.message()))
    } else {
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_errors_become_invalid_argument_and_keep_their_cause() {
        let status = malformed(Status::internal(
            "failed to decode Protobuf message: buffer underflow",
        ));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().contains("buffer underflow"),
            "{}",
            status.message()
        );
        assert_eq!(malformed(Status::cancelled("x")).code(), Code::Cancelled);
    }
}
