//! The one error type of the client. A server answer keeps its `tonic::Code` and message so
//! that the CLI can show both and scripts (and tests) can match on the code.

use std::path::PathBuf;

/// Everything that can go wrong between a caller and an Armada server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The address is not one of `http://`, `https://`, `unix://`, `unixs://` or `host:port`,
    /// or TLS options were given for a plaintext address.
    #[error("invalid address {address:?}: {reason}")]
    InvalidAddress { address: String, reason: String },
    /// The CA file given for TLS cannot be read.
    #[error("cannot read the CA file {path}")]
    CaFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The client certificate or key file given for mutual TLS cannot be read.
    #[error("cannot read the client certificate or key file {path}")]
    CertificateFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The bearer token cannot be sent as an HTTP header value.
    #[error("invalid token: {reason}")]
    InvalidToken { reason: String },
    /// The transport could not be set up (TLS configuration, connection refused, ...).
    #[error("cannot connect to {address}: {detail}")]
    Connect { address: String, detail: String },
    /// Reading what a streaming call was to send failed; the call was cancelled.
    #[error("reading the data to send failed: {0}")]
    Input(#[source] std::io::Error),
    /// The server (or the transport during a call) answered with a gRPC status.
    #[error("{code:?}: {message}")]
    Status { code: tonic::Code, message: String },
}

impl ClientError {
    /// The gRPC code of a failed call; `None` for failures before any call was made.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            ClientError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether the call may succeed if retried (no leader yet, shutting down, deadline).
    pub fn is_transient(&self) -> bool {
        matches!(
            self.code(),
            Some(tonic::Code::Unavailable | tonic::Code::DeadlineExceeded)
        )
    }
}

/// What tonic's `TimeoutExpired` says: the client's own deadline passed before an answer came.
const CLIENT_TIMEOUT_MESSAGE: &str = "Timeout expired";

impl From<tonic::Status> for ClientError {
    fn from(status: tonic::Status) -> Self {
        // tonic reports its client-side deadline as `Cancelled`; to the caller (and to the
        // server, which got the same deadline) it is a deadline that passed.
        if status.code() == tonic::Code::Cancelled && status.message() == CLIENT_TIMEOUT_MESSAGE {
            return ClientError::Status {
                code: tonic::Code::DeadlineExceeded,
                message: "the deadline passed before the server answered".to_owned(),
            };
        }
        let mut message = status.message().to_owned();
        // Transport failures come as `Unavailable` with a terse message; the cause is in the
        // source chain.
        let cause = std::error::Error::source(&status).map(error_chain);
        if let Some(cause) = cause.filter(|cause| !message.contains(cause.as_str())) {
            if message.is_empty() {
                message = cause;
            } else {
                message = format!("{message}: {cause}");
            }
        }
        ClientError::Status {
            code: status.code(),
            message,
        }
    }
}

/// `error: cause: cause of cause`, skipping repeated texts (hyper and tonic nest the same
/// message several times).
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(current) = next {
        let text = current.to_string();
        if !parts.iter().any(|part| part.contains(text.as_str())) {
            parts.push(text);
        }
        next = current.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_keeps_code_and_message() {
        let error = ClientError::from(tonic::Status::not_found("table t not found"));
        assert_eq!(error.code(), Some(tonic::Code::NotFound));
        assert_eq!(error.to_string(), "NotFound: table t not found");
        assert!(!error.is_transient());
        assert!(ClientError::from(tonic::Status::unavailable("no leader")).is_transient());
        let timeout = ClientError::from(tonic::Status::cancelled("Timeout expired"));
        assert_eq!(timeout.code(), Some(tonic::Code::DeadlineExceeded));
        let cancelled = ClientError::from(tonic::Status::cancelled("by the peer"));
        assert_eq!(cancelled.code(), Some(tonic::Code::Cancelled));
    }
}
