//! Exit codes of `armada`: one per class of failure, so that scripts can tell "retry later"
//! from "fix the command" from "the key's table does not exist" without parsing messages.
//!
//! The class of an error is found by walking its chain (`anyhow` keeps the original error
//! under every `.context(...)`): a [`ClientError`] carries the server's gRPC code or says the
//! failure happened before any call; [`UsageError`] and [`InvalidInput`] are the CLI's own.
//! The table is documented in `docs/operations.md` ("Exit codes") and in `armada --help`;
//! `tests/cli.rs` checks each class against a real server.

use armada_client::ClientError;
use serde_json::{Value, json};
use tonic::Code;

/// A class of failure and its exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitClass {
    /// Anything not below: a server-side error (`Internal`, `DataLoss`, …), local I/O.
    Other,
    /// The command line or the configuration is wrong: flags, addresses, files to read.
    Usage,
    /// No server could be reached, or it answered `Unavailable` (retry later).
    Unavailable,
    /// The table (or another named thing) does not exist.
    NotFound,
    /// The server refused the request as given (`InvalidArgument`, `OutOfRange`,
    /// `FailedPrecondition`, `Unimplemented`), or the CLI refused it before sending.
    InvalidArgument,
    /// A missing or wrong token, or a client certificate the server does not accept.
    Unauthorized,
    /// The deadline (`--timeout`) passed.
    DeadlineExceeded,
    /// The thing to create exists already.
    AlreadyExists,
}

/// Every class, in exit-code order (for the test of the help text).
#[cfg(test)]
pub const EXIT_CLASSES: &[ExitClass] = &[
    ExitClass::Other,
    ExitClass::Usage,
    ExitClass::Unavailable,
    ExitClass::NotFound,
    ExitClass::InvalidArgument,
    ExitClass::Unauthorized,
    ExitClass::DeadlineExceeded,
    ExitClass::AlreadyExists,
];

/// `armada --help`'s after-help: the exit code table.
pub const EXIT_CODES_HELP: &str = "Exit codes: 0 success, 1 other error, 2 usage (flags, \
configuration, addresses), 3 unavailable (no server reachable, or Unavailable), 4 not found, \
5 invalid argument (InvalidArgument, OutOfRange, FailedPrecondition, Unimplemented), \
6 unauthenticated or permission denied, 7 deadline exceeded, 8 already exists.";

impl ExitClass {
    pub fn code(self) -> u8 {
        match self {
            ExitClass::Other => 1,
            ExitClass::Usage => 2,
            ExitClass::Unavailable => 3,
            ExitClass::NotFound => 4,
            ExitClass::InvalidArgument => 5,
            ExitClass::Unauthorized => 6,
            ExitClass::DeadlineExceeded => 7,
            ExitClass::AlreadyExists => 8,
        }
    }

    /// The stable name of the class in `--json` errors.
    pub fn name(self) -> &'static str {
        match self {
            ExitClass::Other => "other",
            ExitClass::Usage => "usage",
            ExitClass::Unavailable => "unavailable",
            ExitClass::NotFound => "not_found",
            ExitClass::InvalidArgument => "invalid_argument",
            ExitClass::Unauthorized => "unauthorized",
            ExitClass::DeadlineExceeded => "deadline_exceeded",
            ExitClass::AlreadyExists => "already_exists",
        }
    }

    fn of_code(code: Code) -> ExitClass {
        match code {
            Code::Unavailable => ExitClass::Unavailable,
            Code::NotFound => ExitClass::NotFound,
            Code::InvalidArgument
            | Code::OutOfRange
            | Code::FailedPrecondition
            | Code::Unimplemented => ExitClass::InvalidArgument,
            Code::Unauthenticated | Code::PermissionDenied => ExitClass::Unauthorized,
            Code::DeadlineExceeded => ExitClass::DeadlineExceeded,
            Code::AlreadyExists => ExitClass::AlreadyExists,
            _ => ExitClass::Other,
        }
    }

    fn of_client_error(error: &ClientError) -> ExitClass {
        match error {
            ClientError::InvalidAddress { .. }
            | ClientError::CaFile { .. }
            | ClientError::CertificateFile { .. }
            | ClientError::InvalidToken { .. } => ExitClass::Usage,
            ClientError::Connect { .. } => ExitClass::Unavailable,
            ClientError::Input(_) => ExitClass::Other,
            ClientError::Status { code, .. } => ExitClass::of_code(*code),
        }
    }
}

/// A mistake in the command line or the configuration, found after clap parsed it.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Input the CLI refuses before sending it, for the reason the server would (e.g. a value
/// read from stdin over the value limit).
#[derive(Debug)]
pub struct InvalidInput(pub String);

impl std::fmt::Display for InvalidInput {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl std::error::Error for InvalidInput {}

/// The class of `error`: that of the first error in its chain that has one.
pub fn classify(error: &anyhow::Error) -> ExitClass {
    for cause in error.chain() {
        if let Some(client) = cause.downcast_ref::<ClientError>() {
            return ExitClass::of_client_error(client);
        }
        if let Some(status) = cause.downcast_ref::<tonic::Status>() {
            return ExitClass::of_code(status.code());
        }
        if cause.is::<UsageError>() {
            return ExitClass::Usage;
        }
        if cause.is::<InvalidInput>() {
            return ExitClass::InvalidArgument;
        }
    }
    ExitClass::Other
}

/// The gRPC code of the server's answer in `error`, if the failure was one.
fn grpc_code(error: &anyhow::Error) -> Option<Code> {
    error.chain().find_map(|cause| {
        cause
            .downcast_ref::<ClientError>()
            .and_then(ClientError::code)
            .or_else(|| {
                cause
                    .downcast_ref::<tonic::Status>()
                    .map(tonic::Status::code)
            })
    })
}

/// The `--json` form of a failure (on stdout, so that a script reads one document either way).
pub fn error_json(error: &anyhow::Error) -> Value {
    let class = classify(error);
    json!({
        "error": {
            "class": class.name(),
            "exit_code": class.code(),
            "grpc_code": grpc_code(error).map(|code| format!("{code:?}")),
            "message": format!("{error:#}"),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn every_class_has_its_own_code_and_is_in_the_help() {
        let mut codes: Vec<u8> = EXIT_CLASSES.iter().map(|class| class.code()).collect();
        codes.dedup();
        assert_eq!(codes, (1..=8).collect::<Vec<u8>>());
        for class in EXIT_CLASSES {
            assert!(
                EXIT_CODES_HELP.contains(&format!("{} ", class.code())),
                "{class:?}"
            );
        }
    }

    #[test]
    fn the_class_survives_context() {
        let status = |code| {
            anyhow::Error::new(ClientError::Status {
                code,
                message: "m".into(),
            })
            .context("get")
        };
        assert_eq!(classify(&status(Code::NotFound)), ExitClass::NotFound);
        assert_eq!(
            classify(&status(Code::Unauthenticated)),
            ExitClass::Unauthorized
        );
        assert_eq!(classify(&status(Code::Internal)), ExitClass::Other);
        let refused: anyhow::Result<()> = Err(ClientError::Connect {
            address: "a".into(),
            detail: "refused".into(),
        }
        .into());
        let refused = refused.context("status").expect_err("error");
        assert_eq!(classify(&refused), ExitClass::Unavailable);
        let usage = anyhow::Error::new(UsageError("bad".into()));
        assert_eq!(classify(&usage), ExitClass::Usage);
        assert_eq!(classify(&anyhow::anyhow!("disk full")), ExitClass::Other);
        let json = error_json(&status(Code::NotFound));
        assert_eq!(json["error"]["class"], "not_found");
        assert_eq!(json["error"]["exit_code"], 4);
        assert_eq!(json["error"]["grpc_code"], "NotFound");
        assert_eq!(json["error"]["message"], "get: NotFound: m");
    }
}
