//! Request validation at the edge: every limit of SPEC §2–3 is checked here, before anything
//! is proposed or read, and a violation is an `InvalidArgument` naming the field and the limit.

use armada_table::{RangeEnd, RangeQuery, pb};
use bytes::Bytes;

use crate::error::ApiError;

/// The key and value limits are the table's (SPEC §2), checked here first to name the field.
pub use armada_table::{MAX_KEY_BYTES, MAX_VALUE_BYTES};
pub const MAX_TXN_COMPARES: usize = 128;
pub const MAX_TXN_OPS: usize = 128;
pub const MAX_TABLE_NAME_BYTES: usize = 255;

/// The table name of a request (`table` field): a name no table can have is an argument error,
/// not an unknown table, so a client learns that its request is wrong rather than waiting for
/// a table to appear.
pub fn table(table: &[u8]) -> Result<String, ApiError> {
    let name = std::str::from_utf8(table).map_err(|_| {
        ApiError::invalid(format!(
            "table must be 1..={MAX_TABLE_NAME_BYTES} bytes of [A-Za-z0-9._-], got {} bytes \
             that are not UTF-8",
            table.len()
        ))
    })?;
    table_name("table", name)?;
    Ok(name.to_string())
}

/// A table name for `Tables.Create`: 1..=255 bytes of `[A-Za-z0-9._-]`.
pub fn new_table_name(name: &str) -> Result<(), ApiError> {
    table_name("name", name)
}

/// A table name in `field`: 1..=255 bytes of `[A-Za-z0-9._-]`.
fn table_name(field: &str, name: &str) -> Result<(), ApiError> {
    if name.is_empty() {
        return Err(ApiError::invalid(format!("{field} must be set")));
    }
    if name.len() > MAX_TABLE_NAME_BYTES {
        return Err(ApiError::invalid(format!(
            "{field} must be at most {MAX_TABLE_NAME_BYTES} bytes, got {}",
            name.len()
        )));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(ApiError::invalid(format!(
            "{field} may contain only letters, digits, '.', '_' and '-' (found {bad:?})"
        )));
    }
    Ok(())
}

pub fn key(field: &str, key: &[u8]) -> Result<(), ApiError> {
    if key.is_empty() {
        return Err(ApiError::invalid(format!("{field} must be set")));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(ApiError::invalid(format!(
            "{field} must be at most {MAX_KEY_BYTES} bytes, got {}",
            key.len()
        )));
    }
    Ok(())
}

pub fn value(field: &str, value: &[u8]) -> Result<(), ApiError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(ApiError::invalid(format!(
            "{field} must be at most {MAX_VALUE_BYTES} bytes, got {}",
            value.len()
        )));
    }
    Ok(())
}

/// `range_end` (read by [`RangeEnd::from_wire`]: empty = the single key, `"\0"` = to the end
/// of the table, else `[key, end)`), at most a key long.
pub fn range_end(field: &str, end: &Bytes) -> Result<RangeEnd, ApiError> {
    if end.len() > MAX_KEY_BYTES {
        return Err(ApiError::invalid(format!(
            "{field} must be at most {MAX_KEY_BYTES} bytes, got {}",
            end.len()
        )));
    }
    Ok(RangeEnd::from_wire(end))
}

fn non_negative(field: &str, value: i64) -> Result<u64, ApiError> {
    u64::try_from(value)
        .map_err(|_| ApiError::invalid(format!("{field} must not be negative, got {value}")))
}

/// Checks a Range request and turns it into a table query.
pub fn range_request(
    request: &armada_proto::regatta::v1::RangeRequest,
) -> Result<RangeQuery, ApiError> {
    table(&request.table)?;
    key("key", &request.key)?;
    let range_end = range_end("range_end", &request.range_end)?;
    let limit = non_negative("limit", request.limit)?;
    if request.keys_only && request.count_only {
        return Err(ApiError::invalid(
            "keys_only and count_only must not be set at the same time",
        ));
    }
    let at_revision = match non_negative("revision", request.revision)? {
        0 => None,
        revision => Some(armada_storage::Revision(revision)),
    };
    Ok(RangeQuery {
        key: request.key.clone(),
        range_end,
        limit,
        keys_only: request.keys_only,
        count_only: request.count_only,
        min_mod_revision: non_negative("min_mod_revision", request.min_mod_revision)?,
        max_mod_revision: non_negative("max_mod_revision", request.max_mod_revision)?,
        min_create_revision: non_negative("min_create_revision", request.min_create_revision)?,
        max_create_revision: non_negative("max_create_revision", request.max_create_revision)?,
        at_revision,
        max_response_bytes: armada_table::MAX_RESPONSE_BYTES,
    })
}

fn range_op(field: &str, op: &pb::request_op::Range) -> Result<(), ApiError> {
    key(&format!("{field}.key"), &op.key)?;
    range_end(&format!("{field}.range_end"), &op.range_end)?;
    non_negative(&format!("{field}.limit"), op.limit)?;
    if op.keys_only && op.count_only {
        return Err(ApiError::invalid(format!(
            "{field}: keys_only and count_only must not be set at the same time"
        )));
    }
    Ok(())
}

fn ops(branch: &str, ops: &[pb::RequestOp]) -> Result<(), ApiError> {
    if ops.len() > MAX_TXN_OPS {
        return Err(ApiError::invalid(format!(
            "{branch} must have at most {MAX_TXN_OPS} operations, got {}",
            ops.len()
        )));
    }
    for (index, op) in ops.iter().enumerate() {
        let field = format!("{branch}[{index}]");
        match &op.request {
            None => return Err(ApiError::invalid(format!("{field}.request must be set"))),
            Some(pb::request_op::Request::RequestRange(range)) => {
                range_op(&format!("{field}.request_range"), range)?
            }
            Some(pb::request_op::Request::RequestPut(put)) => {
                key(&format!("{field}.request_put.key"), &put.key)?;
                value(&format!("{field}.request_put.value"), &put.value)?;
            }
            Some(pb::request_op::Request::RequestDeleteRange(delete)) => {
                key(&format!("{field}.request_delete_range.key"), &delete.key)?;
                range_end(
                    &format!("{field}.request_delete_range.range_end"),
                    &delete.range_end,
                )?;
            }
        }
    }
    Ok(())
}

/// Checks a Txn's compares and operations (the same limits as the standalone calls).
pub fn txn(request: &armada_proto::regatta::v1::TxnRequest) -> Result<(), ApiError> {
    table(&request.table)?;
    if request.compare.len() > MAX_TXN_COMPARES {
        return Err(ApiError::invalid(format!(
            "compare must have at most {MAX_TXN_COMPARES} entries, got {}",
            request.compare.len()
        )));
    }
    for (index, compare) in request.compare.iter().enumerate() {
        let field = format!("compare[{index}]");
        key(&format!("{field}.key"), &compare.key)?;
        range_end(&format!("{field}.range_end"), &compare.range_end)?;
        let target = pb::compare::CompareTarget::try_from(compare.target).map_err(|_| {
            ApiError::invalid(format!(
                "{field}.target {} is not a known target",
                compare.target
            ))
        })?;
        pb::compare::CompareResult::try_from(compare.result).map_err(|_| {
            ApiError::invalid(format!(
                "{field}.result {} is not a known operator",
                compare.result
            ))
        })?;
        use pb::compare::{CompareTarget, TargetUnion};
        match (target, &compare.target_union) {
            (CompareTarget::Value, None | Some(TargetUnion::Value(_))) => {}
            (CompareTarget::Mod, Some(TargetUnion::ModRevision(_))) => {}
            (CompareTarget::Create, Some(TargetUnion::CreateRevision(_))) => {}
            _ => {
                return Err(ApiError::invalid(format!(
                    "{field}: the compared value does not match target {}",
                    target.as_str_name()
                )));
            }
        }
    }
    ops("success", &request.success)?;
    ops("failure", &request.failure)?;
    Ok(())
}

/// A read-only txn (only range operations, in both branches) is served as a linearizable
/// read and never logged.
pub fn txn_is_read_only_ops(txn: &pb::Txn) -> bool {
    txn.success
        .iter()
        .chain(&txn.failure)
        .all(|op| matches!(op.request, Some(pb::request_op::Request::RequestRange(_))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_limits_are_enforced_at_their_edge() {
        assert!(key("key", &[b'k'; MAX_KEY_BYTES]).is_ok());
        let error = key("key", &[b'k'; MAX_KEY_BYTES + 1]).expect_err("too long");
        assert_eq!(
            error,
            ApiError::invalid("key must be at most 1024 bytes, got 1025")
        );
        assert_eq!(
            key("key", b"").expect_err("empty"),
            ApiError::invalid("key must be set")
        );
    }

    #[test]
    fn value_limit_is_enforced_at_its_edge() {
        assert!(value("value", &vec![0; MAX_VALUE_BYTES]).is_ok());
        assert!(value("value", &vec![0; MAX_VALUE_BYTES + 1]).is_err());
    }

    #[test]
    fn range_end_forms() {
        assert_eq!(range_end("e", &Bytes::new()), Ok(RangeEnd::Single));
        assert_eq!(
            range_end("e", &Bytes::from_static(b"\0")),
            Ok(RangeEnd::Unbounded)
        );
        assert_eq!(
            range_end("e", &Bytes::from_static(b"b")),
            Ok(RangeEnd::To(Bytes::from_static(b"b")))
        );
        assert!(range_end("e", &Bytes::from(vec![1; MAX_KEY_BYTES + 1])).is_err());
    }

    #[test]
    fn table_names() {
        assert!(new_table_name("a-b_c.1").is_ok());
        assert!(new_table_name(&"a".repeat(255)).is_ok());
        assert!(new_table_name(&"a".repeat(256)).is_err());
        assert!(new_table_name("").is_err());
        assert!(new_table_name("a/b").is_err());
        assert!(new_table_name("ä").is_err());
        // KV requests: a name no table can have is InvalidArgument, naming the field.
        assert!(table(b"a-b_c.1").is_ok());
        for bad in [&b""[..], b"\xff\xfe", &[b'a'; 256], b"a b"] {
            let error = table(bad).expect_err("invalid table name");
            assert!(
                matches!(&error, ApiError::InvalidArgument(m) if m.starts_with("table ")),
                "{error:?}"
            );
        }
        assert!(table(&[b'a'; 255]).is_ok());
    }

    #[test]
    fn txn_limits_and_op_validation_name_the_field() {
        let put = |key: &[u8], value: usize| pb::RequestOp {
            request: Some(pb::request_op::Request::RequestPut(pb::request_op::Put {
                key: Bytes::copy_from_slice(key),
                value: Bytes::from(vec![0; value]),
                prev_kv: false,
            })),
        };
        let mut request = armada_proto::regatta::v1::TxnRequest {
            table: Bytes::from_static(b"t"),
            success: vec![put(b"k", 1); MAX_TXN_OPS],
            ..Default::default()
        };
        assert!(txn(&request).is_ok());
        request.success.push(put(b"k", 1));
        assert!(txn(&request).is_err());
        request.success = vec![put(b"k", 1), put(b"", 1)];
        assert_eq!(
            txn(&request),
            Err(ApiError::invalid("success[1].request_put.key must be set"))
        );
        request.success = vec![put(b"k", MAX_VALUE_BYTES + 1)];
        assert!(
            txn(&request)
                .expect_err("big")
                .to_string()
                .contains("success[0].request_put.value")
        );
        request.success = vec![pb::RequestOp { request: None }];
        assert!(txn(&request).is_err());
    }
}
