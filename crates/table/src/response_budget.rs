//! The size budget of one txn's response, so that a txn never commits and then fails to reach
//! its client.
//!
//! A gRPC client refuses responses over 4 MiB (`RESOURCE_EXHAUSTED`). A write txn whose response
//! is larger would be applied on every replica and still reported as failed, and a client
//! retrying it would write twice. So every part of a txn response is sized while the txn
//! executes, deterministically (from the table's state and the command alone, the same on every
//! replica and in every cluster):
//!
//! * each op's fixed part (its wrapper, `count`, `deleted`, `more`) is reserved up front,
//!   [`FIXED_OP_RESPONSE_BYTES`] per op;
//! * the kvs share what is left of [`MAX_RESPONSE_BYTES`], in op order: a range op returns the
//!   kvs that fit and sets `more`; a delete's `prev_kvs` are cut the same way (its `deleted` stays
//!   exact, so the client sees that pairs are missing), as a DeleteRange's are;
//! * a put's `prev_kv` cannot be cut: when it does not fit, the whole txn is refused and changes
//!   nothing (the applier rolls back its earlier ops).
//!
//! Related: `apply.rs` (write txns), `view.rs` (read-only txns), `read.rs` (`Collector`, the
//! range cap of unary Range).

use crate::command::Rejection;
use crate::read::Reader;
use crate::{MAX_RESPONSE_BYTES, RangeOutcome, RangeQuery, pb};

/// Upper bound of one op response without its kvs: the `responses` entry's tag and length,
/// the `ResponseOp` oneof's tag and length, a varint `count` or `deleted` and the `more` flag.
pub const FIXED_OP_RESPONSE_BYTES: usize = 32;

/// The most a range collector's size estimate can fall short of one kv's encoded size (field
/// tags, length prefixes and two varint revisions): a range is given this much less than is
/// left, so that what it returns always fits.
const KV_ESTIMATE_SLACK_BYTES: usize = 40;

/// What is left for the kvs of one txn's response.
#[derive(Debug)]
pub(crate) struct ResponseBudget {
    remaining: usize,
}

impl ResponseBudget {
    /// The budget of a txn response with `ops` ops (the header keeps the 1 KiB below 4 MiB
    /// that [`MAX_RESPONSE_BYTES`] leaves).
    pub fn for_ops(ops: usize) -> Self {
        ResponseBudget {
            remaining: MAX_RESPONSE_BYTES.saturating_sub(ops * FIXED_OP_RESPONSE_BYTES),
        }
    }

    /// Bytes left for kvs.
    pub fn remaining(&self) -> usize {
        self.remaining
    }

    /// A txn range op, cut to what is left (`more` set when kvs were left out).
    pub fn range(
        &mut self,
        reader: &Reader<'_>,
        query: &RangeQuery,
    ) -> crate::error::Result<RangeOutcome> {
        let query = RangeQuery {
            max_response_bytes: self.remaining.saturating_sub(KV_ESTIMATE_SLACK_BYTES),
            ..query.clone()
        };
        let mut outcome = reader.range(&query, None)?;
        let mut bytes = kvs_bytes(&outcome.kvs);
        if bytes > self.remaining {
            // Only a range's first kv is taken whatever its size: it does not fit either.
            outcome = RangeOutcome {
                kvs: Vec::new(),
                more: true,
                count: 0,
            };
            bytes = 0;
        }
        self.remaining -= bytes;
        Ok(outcome)
    }

    /// Charges kvs already cut to [`Self::remaining`] (a delete's `prev_kvs`, by their size).
    pub fn charge_bytes(&mut self, bytes: usize) {
        assert!(
            bytes <= self.remaining,
            "prev_kvs of {bytes} bytes were cut to {} bytes",
            self.remaining
        );
        self.remaining -= bytes;
    }

    /// Charges a put's `prev_kv`; `Err` is the refusal when it does not fit.
    pub fn charge_prev_kv(&mut self, kv: &pb::KeyValue) -> Result<(), Rejection> {
        let bytes = kv_bytes(kv);
        if bytes > self.remaining {
            return Err(Rejection(format!(
                "the txn response would exceed the response limit of {MAX_RESPONSE_BYTES} bytes \
                 (the previous value of key {:?} is {} bytes, {} bytes are left); nothing was \
                 changed: ask for fewer prev_kv or smaller ranges",
                String::from_utf8_lossy(&kv.key),
                kv.value.len(),
                self.remaining
            )));
        }
        self.remaining -= bytes;
        Ok(())
    }
}

/// Encoded size of one kv as an element of a repeated field (tag, length, message).
pub(crate) fn kv_bytes(kv: &pb::KeyValue) -> usize {
    let encoded = prost::Message::encoded_len(kv);
    1 + prost::length_delimiter_len(encoded) + encoded
}

fn kvs_bytes(kvs: &[pb::KeyValue]) -> usize {
    kvs.iter().map(kv_bytes).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use prost::Message;

    fn kv(key: &str, value_bytes: usize) -> pb::KeyValue {
        pb::KeyValue {
            key: Bytes::copy_from_slice(key.as_bytes()),
            create_revision: i64::MAX,
            mod_revision: i64::MAX,
            value: Bytes::from(vec![7; value_bytes]),
        }
    }

    #[test]
    fn the_fixed_part_of_every_op_response_fits_its_reserve() {
        let large = i64::MAX;
        let responses = [
            pb::response_op::Response::ResponseRange(pb::response_op::Range {
                kvs: Vec::new(),
                more: true,
                count: large,
            }),
            pb::response_op::Response::ResponseDeleteRange(pb::response_op::DeleteRange {
                deleted: large,
                prev_kvs: Vec::new(),
            }),
            pb::response_op::Response::ResponsePut(pb::response_op::Put { prev_kv: None }),
        ];
        for response in responses {
            let op = pb::ResponseOp {
                response: Some(response),
            };
            // As an element of `TxnResponse.responses` with a length prefix for a 4 MiB body.
            let bytes = 1 + 4 + op.encoded_len();
            assert!(bytes <= FIXED_OP_RESPONSE_BYTES, "{op:?}: {bytes} bytes");
        }
    }

    #[test]
    fn the_collector_estimate_falls_short_by_less_than_the_slack() {
        for key_bytes in [1, 127, 128, 1024] {
            let kv = kv(&"k".repeat(key_bytes), 2 * 1024 * 1024);
            let estimate = kv.key.len() + kv.value.len();
            assert!(kv_bytes(&kv) - estimate < KV_ESTIMATE_SLACK_BYTES);
        }
    }

    #[test]
    fn a_prev_kv_that_does_not_fit_is_refused_and_charges_nothing() {
        let mut budget = ResponseBudget::for_ops(1);
        let big = kv("a", 2 * 1024 * 1024);
        budget.charge_prev_kv(&big).expect("first fits");
        budget.charge_prev_kv(&big).expect_err("second does not");
        let left = budget.remaining();
        assert!(left < 2 * 1024 * 1024);
        let exact = kv("b", 0);
        let mut exact_budget = ResponseBudget {
            remaining: kv_bytes(&exact),
        };
        exact_budget.charge_prev_kv(&exact).expect("exactly fits");
        assert_eq!(exact_budget.remaining(), 0);
        let message = exact_budget
            .charge_prev_kv(&exact)
            .expect_err("nothing left");
        assert!(
            message.0.contains(&MAX_RESPONSE_BYTES.to_string()),
            "{message}"
        );
        assert_eq!(budget.remaining(), left);
    }
}
