//! The table's typed outcomes as `regatta.v1` responses: the one place where an applied
//! command's answer becomes protobuf.
//!
//! A write's proposer knows which command it proposed, so it asks for the matching outcome;
//! an outcome of another shape cannot come from applying that command and is an internal
//! error, never a silently empty answer.

use armada_proto::regatta::v1::{
    DeleteRangeResponse, PutResponse, RangeResponse, ResponseHeader, TxnResponse,
};
use armada_table::{
    CommandOutcome, DeleteOutcome, OpOutcome, PutOutcome, RangeOutcome, TxnOutcome, pb,
};

use crate::error::ApiError;

/// The answer to a Put.
pub fn put_response(
    header: ResponseHeader,
    outcome: CommandOutcome,
) -> Result<PutResponse, ApiError> {
    let CommandOutcome::Put(PutOutcome { prev_kv }) = outcome else {
        return Err(unexpected("PUT", &outcome));
    };
    Ok(PutResponse {
        header: Some(header),
        prev_kv,
    })
}

/// The answer to a DeleteRange.
pub fn delete_range_response(
    header: ResponseHeader,
    outcome: CommandOutcome,
) -> Result<DeleteRangeResponse, ApiError> {
    let CommandOutcome::Delete(DeleteOutcome { deleted, prev_kvs }) = outcome else {
        return Err(unexpected("DELETE", &outcome));
    };
    Ok(DeleteRangeResponse {
        header: Some(header),
        deleted,
        prev_kvs,
    })
}

/// The txn outcome of an applied TXN.
pub fn txn_outcome(outcome: CommandOutcome) -> Result<TxnOutcome, ApiError> {
    match outcome {
        CommandOutcome::Txn(txn) => Ok(txn),
        other => Err(unexpected("TXN", &other)),
    }
}

/// The answer to a Txn (logged or read-only).
pub fn txn_response(header: ResponseHeader, outcome: TxnOutcome) -> TxnResponse {
    TxnResponse {
        header: Some(header),
        succeeded: outcome.succeeded,
        responses: outcome.responses.into_iter().map(response_op).collect(),
    }
}

/// The answer to a Range, or one message of an IterateRange stream.
pub fn range_response(header: ResponseHeader, outcome: RangeOutcome) -> RangeResponse {
    RangeResponse {
        header: Some(header),
        kvs: outcome.kvs,
        more: outcome.more,
        count: outcome.count,
    }
}

/// One txn op's answer.
fn response_op(outcome: OpOutcome) -> pb::ResponseOp {
    use pb::response_op::Response;
    let response = match outcome {
        OpOutcome::Range(range) => Response::ResponseRange(pb::response_op::Range {
            kvs: range.kvs,
            more: range.more,
            count: range.count,
        }),
        OpOutcome::Put(PutOutcome { prev_kv }) => {
            Response::ResponsePut(pb::response_op::Put { prev_kv })
        }
        OpOutcome::Delete(DeleteOutcome { deleted, prev_kvs }) => {
            Response::ResponseDeleteRange(pb::response_op::DeleteRange { deleted, prev_kvs })
        }
    };
    pb::ResponseOp {
        response: Some(response),
    }
}

fn unexpected(command: &str, outcome: &CommandOutcome) -> ApiError {
    let shape = match outcome {
        CommandOutcome::Empty => "no answer",
        CommandOutcome::Put(_) => "a put's",
        CommandOutcome::Delete(_) => "a delete's",
        CommandOutcome::PutBatch(_) => "a put batch's",
        CommandOutcome::DeleteBatch(_) => "a delete batch's",
        CommandOutcome::Txn(_) => "a txn's",
        CommandOutcome::Sequence(_) => "a sequence's",
    };
    ApiError::Internal(format!("a {command} command answered with {shape} outcome"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn kv(key: &'static [u8]) -> pb::KeyValue {
        pb::KeyValue {
            key: Bytes::from_static(key),
            create_revision: 2,
            mod_revision: 3,
            value: Bytes::from_static(b"v"),
        }
    }

    #[test]
    fn outcomes_become_their_responses() {
        let header = ResponseHeader::default();
        let put = CommandOutcome::Put(PutOutcome {
            prev_kv: Some(kv(b"a")),
        });
        assert_eq!(put_response(header, put).unwrap().prev_kv, Some(kv(b"a")));
        let delete = CommandOutcome::Delete(DeleteOutcome {
            deleted: 2,
            prev_kvs: vec![kv(b"b")],
        });
        let response = delete_range_response(header, delete).unwrap();
        assert_eq!((response.deleted, response.prev_kvs), (2, vec![kv(b"b")]));
        let txn = TxnOutcome {
            succeeded: false,
            responses: vec![
                OpOutcome::Range(RangeOutcome {
                    kvs: vec![kv(b"c")],
                    more: true,
                    count: 1,
                }),
                OpOutcome::Put(PutOutcome::default()),
            ],
        };
        let response = txn_response(header, txn);
        assert!(!response.succeeded);
        assert_eq!(response.responses.len(), 2);
        let Some(pb::response_op::Response::ResponseRange(range)) = &response.responses[0].response
        else {
            panic!("not a range answer")
        };
        assert_eq!((range.kvs.len(), range.more, range.count), (1, true, 1));
    }

    #[test]
    fn an_outcome_of_another_command_is_an_internal_error() {
        let error = put_response(ResponseHeader::default(), CommandOutcome::Empty).unwrap_err();
        assert!(
            matches!(&error, ApiError::Internal(message) if message.contains("PUT")),
            "{error:?}"
        );
        assert!(txn_outcome(CommandOutcome::Sequence(Vec::new())).is_err());
    }

    /// A forwarded write's answer crosses nodes (postcard, `cluster::rpc`) and comes back
    /// whole: kvs, counts and the txn's branch.
    #[test]
    fn a_table_answer_survives_the_peer_wire() {
        use crate::groups::types::Response;
        let outcome = CommandOutcome::Sequence(vec![
            CommandOutcome::Txn(TxnOutcome {
                succeeded: false,
                responses: vec![
                    OpOutcome::Range(RangeOutcome {
                        kvs: vec![kv(b"r")],
                        more: true,
                        count: 3,
                    }),
                    OpOutcome::Delete(DeleteOutcome {
                        deleted: 2,
                        prev_kvs: vec![kv(b"d")],
                    }),
                ],
            }),
            CommandOutcome::PutBatch(vec![PutOutcome {
                prev_kv: Some(kv(b"p")),
            }]),
        ]);
        let response = Response::Table {
            revision: armada_storage::Revision(42),
            outcome,
        };
        let bytes = postcard::to_stdvec(&response).unwrap();
        let back: Response = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, response);
    }
}
