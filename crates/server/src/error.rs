//! Errors of the request path and their one mapping to gRPC status codes.

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidArgument(String),
    /// The table's name as the request gave it.
    #[error("table {0:?} not found")]
    TableNotFound(String),
    #[error("table already exists")]
    TableExists,
    #[error("{0}")]
    Unavailable(String),
    #[error("deadline exceeded")]
    DeadlineExceeded,
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    OutOfRange(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Unimplemented(String),
    #[error("{0}")]
    NotFound(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// The leader cluster's answer to a forwarded write, with its own code.
    #[error("leader error: {message}")]
    LeaderCluster { code: tonic::Code, message: String },
}

impl ApiError {
    pub fn invalid(message: impl Into<String>) -> Self {
        ApiError::InvalidArgument(message.into())
    }

    pub fn from_table(error: armada_table::TableError) -> Self {
        match error {
            armada_table::TableError::Compacted { compact_revision } => {
                ApiError::OutOfRange(format!(
                    "revision has been compacted; the oldest readable revision is {compact_revision}"
                ))
            }
            error @ armada_table::TableError::FutureRevision { .. } => {
                ApiError::OutOfRange(error.to_string())
            }
            error @ armada_table::TableError::InvalidArgument(_) => {
                ApiError::InvalidArgument(error.to_string())
            }
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<ApiError> for tonic::Status {
    fn from(error: ApiError) -> Self {
        let message = error.to_string();
        match error {
            ApiError::InvalidArgument(_) => tonic::Status::invalid_argument(message),
            ApiError::TableNotFound(_) | ApiError::NotFound(_) => tonic::Status::not_found(message),
            ApiError::TableExists => tonic::Status::already_exists(message),
            ApiError::Unavailable(_) => tonic::Status::unavailable(message),
            ApiError::DeadlineExceeded => tonic::Status::deadline_exceeded(message),
            ApiError::FailedPrecondition(_) => tonic::Status::failed_precondition(message),
            ApiError::OutOfRange(_) => tonic::Status::out_of_range(message),
            ApiError::Unauthenticated(_) => tonic::Status::unauthenticated(message),
            ApiError::Unimplemented(_) => tonic::Status::unimplemented(message),
            ApiError::Internal(_) => tonic::Status::internal(message),
            ApiError::LeaderCluster { code, .. } => tonic::Status::new(code, message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_maps_to_its_status_code() {
        let cases = [
            (
                ApiError::invalid("key must be set"),
                tonic::Code::InvalidArgument,
            ),
            (ApiError::TableNotFound("t".into()), tonic::Code::NotFound),
            (ApiError::TableExists, tonic::Code::AlreadyExists),
            (ApiError::Unavailable("x".into()), tonic::Code::Unavailable),
            (ApiError::DeadlineExceeded, tonic::Code::DeadlineExceeded),
            (ApiError::OutOfRange("x".into()), tonic::Code::OutOfRange),
            (
                ApiError::Unauthenticated("x".into()),
                tonic::Code::Unauthenticated,
            ),
            (
                ApiError::Unimplemented("x".into()),
                tonic::Code::Unimplemented,
            ),
            (ApiError::Internal("x".into()), tonic::Code::Internal),
        ];
        for (error, code) in cases {
            assert_eq!(tonic::Status::from(error).code(), code);
        }
    }
}
