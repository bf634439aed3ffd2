//! gRPC services: one file per service. Handlers validate, convert protobuf to domain calls,
//! and turn every error into a `Status` through `ApiError` (crate::error) only.

pub mod cluster;
pub mod convert;
pub mod kv;
pub mod maintenance;
pub mod replication;
pub mod tables;
pub mod validate;

use std::future::Future;
use std::time::{Duration, Instant};

use armada_proto::regatta::v1::ResponseHeader;
use armada_storage::{NodeId, Revision};

use crate::error::ApiError;
use crate::node::{Node, TableGroup};

/// Server-side deadline of a request without one of its own (Regatta: 5 s).
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(5);

/// How much earlier than the client's deadline the server gives up.
const DEADLINE_MARGIN: Duration = Duration::from_millis(50);

/// The timeout the client sent (`grpc-timeout`), if any.
pub fn client_timeout<T>(request: &tonic::Request<T>) -> Option<Duration> {
    request
        .metadata()
        .get("grpc-timeout")
        .and_then(|value| value.to_str().ok())
        .and_then(parse_grpc_timeout)
}

/// The request's deadline: the client's `grpc-timeout`, else [`DEFAULT_DEADLINE`].
pub fn deadline<T>(request: &tonic::Request<T>) -> tokio::time::Instant {
    let timeout = client_timeout(request)
        // Answer a little before the client's own timeout fires (tonic's timeout layer would
        // answer `Cancelled` at that very instant), so the client sees our real reason
        // (`Unavailable`, `DeadlineExceeded`).
        .map(|timeout| timeout.saturating_sub(DEADLINE_MARGIN.min(timeout / 10)))
        .unwrap_or(DEFAULT_DEADLINE);
    tokio::time::Instant::now() + timeout
}

/// Parses gRPC's `grpc-timeout` header: up to 8 digits and a unit (H, M, S, m, u, n).
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Response header of a table request served by this node.
pub fn header(node: &Node, group: &TableGroup, revision: Revision) -> ResponseHeader {
    let (raft_term, raft_leader) = group.term_and_raft_leader();
    ResponseHeader {
        shard_id: group.id().get(),
        replica_id: node.node_id().get(),
        revision: revision.get(),
        raft_term: raft_term.get(),
        // Regatta's header says 0 while no Raft leader is known.
        raft_leader_id: raft_leader.map_or(0, NodeId::get),
    }
}

/// Runs a handler, recording `grpc_server_handled_total` and `grpc_server_handling_seconds`
/// with the method and the resulting code.
pub async fn metered<T, F>(
    service: &'static str,
    method: &'static str,
    handler: F,
) -> Result<T, tonic::Status>
where
    F: Future<Output = Result<T, ApiError>>,
{
    let started = Instant::now();
    let result = handler.await.map_err(tonic::Status::from);
    let code = match &result {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    };
    let (handled, seconds) = call_metrics(service, method, code);
    handled.increment(1);
    seconds.record(started.elapsed().as_secs_f64());
    result
}

/// The handles of one (service, method, code)'s call metrics, looked up in the recorder once
/// per thread rather than on every call (a lookup hashes the name and every label). The labels
/// are static strings, so their addresses and lengths identify them. Only called while serving, after the
/// node installed its recorder (a handle taken before would stay a no-op).
fn call_metrics(
    service: &'static str,
    method: &'static str,
    code: tonic::Code,
) -> (metrics::Counter, metrics::Histogram) {
    use std::cell::RefCell;
    use std::collections::HashMap;
    type Key = (usize, usize, usize, usize, i32);
    type Handles = HashMap<Key, (metrics::Counter, metrics::Histogram)>;
    thread_local! {
        static HANDLES: RefCell<Handles> = RefCell::new(HashMap::new());
    }
    let key = (
        service.as_ptr() as usize,
        service.len(),
        method.as_ptr() as usize,
        method.len(),
        code as i32,
    );
    HANDLES.with(|handles| {
        handles
            .borrow_mut()
            .entry(key)
            .or_insert_with(|| {
                let handled = metrics::counter!(
                    "grpc_server_handled_total",
                    "grpc_service" => service,
                    "grpc_method" => method,
                    "grpc_code" => code_name(code)
                );
                let seconds = metrics::histogram!(
                    "grpc_server_handling_seconds",
                    "grpc_service" => service,
                    "grpc_method" => method
                );
                (handled, seconds)
            })
            .clone()
    })
}

/// The name of a status code as it appears in metrics (the variant's name, as `{:?}` prints it).
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "Ok",
        Code::Cancelled => "Cancelled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// Checks `authorization: Bearer <token>` when `expected` is non-empty.
pub fn check_token<T>(request: &tonic::Request<T>, expected: &str) -> Result<(), ApiError> {
    if expected.is_empty() {
        return Ok(());
    }
    let header = request.metadata().get("authorization").ok_or_else(|| {
        ApiError::Unauthenticated("request unauthenticated: missing bearer token".into())
    })?;
    let value = header
        .to_str()
        .map_err(|_| ApiError::Unauthenticated("bad authorization header".into()))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or_else(|| ApiError::Unauthenticated("bad authorization header".into()))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ApiError::Unauthenticated(
            "request unauthenticated: bearer token expected".into(),
        ));
    }
    if !constant_time_eq(token.trim().as_bytes(), expected.as_bytes()) {
        return Err(ApiError::Unauthenticated("invalid token".into()));
    }
    Ok(())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("5x"), None);
        assert_eq!(parse_grpc_timeout("123456789S"), None);
    }

    #[test]
    fn code_names_are_the_debug_names() {
        for number in 0..=16 {
            let code = tonic::Code::from_i32(number);
            assert_eq!(code_name(code), format!("{code:?}"));
        }
    }

    #[test]
    fn bearer_tokens_are_checked() {
        let request = |value: Option<&str>| {
            let mut request = tonic::Request::new(());
            if let Some(value) = value {
                request
                    .metadata_mut()
                    .insert("authorization", value.parse().expect("ascii"));
            }
            request
        };
        assert!(check_token(&request(None), "").is_ok());
        assert!(check_token(&request(Some("Bearer s3cret")), "s3cret").is_ok());
        assert!(check_token(&request(Some("bearer s3cret")), "s3cret").is_ok());
        assert!(check_token(&request(None), "s3cret").is_err());
        assert!(check_token(&request(Some("Bearer wrong")), "s3cret").is_err());
        assert!(check_token(&request(Some("Basic s3cret")), "s3cret").is_err());
    }
}
