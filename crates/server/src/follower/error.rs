//! Why a replication session or a snapshot bootstrap ended early. A session that fails is
//! retried with a backoff, and its error (as text) is the table's last failure in Status and
//! `/readyz` until the leader cluster answers again, so every variant says what an operator
//! acts on: which call, the status code, the cause.

use armada_storage::LeaderIndex;

use crate::error::ApiError;

#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    /// A call to the leader cluster failed; `Unavailable` moves to its next address.
    #[error("{call}: {code:?}: {message}")]
    Call {
        call: &'static str,
        code: tonic::Code,
        message: String,
    },
    /// The leader cluster did not answer the opening of a stream in time.
    #[error("{0}: no answer")]
    NoAnswer(&'static str),
    /// The leader cluster did not answer a call in time.
    #[error("{0}: no answer in time")]
    NoAnswerInTime(&'static str),
    /// An open stream delivered nothing, not even a heartbeat, for too long.
    #[error("{0} went silent")]
    Silent(&'static str),
    /// The leader cluster answered a replication error this follower does not know.
    #[error("unknown replication error {0}")]
    UnknownError(i32),
    /// The leader cluster skipped indices (its log is contiguous: a bug, or a stream mix-up);
    /// the table would refuse the batch anyway.
    #[error("the leader cluster sent leader index {received} where {expected} was due")]
    Gap {
        expected: LeaderIndex,
        received: LeaderIndex,
    },
    /// The table refused a replicated batch.
    #[error("replicated batch refused: {0}")]
    Refused(String),
    #[error("unexpected response {0}")]
    UnexpectedResponse(String),
    #[error("proposing a replicated batch: {0}")]
    Propose(ApiError),
    /// Spooling a snapshot to a temporary file failed.
    #[error("{what}: {source}")]
    Spool {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("installing the leader's snapshot: {0}")]
    Install(ApiError),
    /// Mirroring the leader cluster's table set in the local catalog failed.
    #[error("{action} table {table}: {error}")]
    Catalog {
        action: &'static str,
        table: String,
        error: ApiError,
    },
    #[error("shutting down")]
    ShuttingDown,
}

impl ReplicationError {
    /// A failed `call` to the leader cluster for people: the call, the status code (the cause
    /// an operator acts on: `Unavailable`, `Unauthenticated`, …) and the message with the
    /// causes tonic's message hides.
    pub fn call(call: &'static str, status: &tonic::Status) -> Self {
        ReplicationError::Call {
            call,
            code: status.code(),
            message: describe_status(status),
        }
    }

    /// Whether the next attempt should try the leader cluster's next address: the one in use
    /// is unreachable (any other failure would repeat there as well).
    pub fn rotates(&self) -> bool {
        matches!(
            self,
            ReplicationError::Call {
                code: tonic::Code::Unavailable,
                ..
            }
        )
    }
}

/// A status from the leader cluster with its causes: for a refused TLS handshake or a refused
/// connection, tonic's message alone is only "operation was canceled" or "transport error".
fn describe_status(status: &tonic::Status) -> String {
    use std::error::Error;
    let mut text = status.message().to_string();
    let mut cause = status.source();
    while let Some(error) = cause {
        let next = error.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        cause = error.source();
    }
    text
}

#[cfg(test)]
mod status_tests {
    #[test]
    fn causes_are_appended_once() {
        let io = std::io::Error::other("invalid peer certificate: UnknownIssuer");
        let mut status = tonic::Status::unavailable("operation was canceled");
        status.set_source(std::sync::Arc::new(io));
        assert_eq!(
            super::describe_status(&status),
            "operation was canceled: invalid peer certificate: UnknownIssuer"
        );
        assert_eq!(
            super::describe_status(&tonic::Status::unavailable("plain")),
            "plain"
        );
    }
}
