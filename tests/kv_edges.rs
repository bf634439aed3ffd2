//! KV behaviour at the edges, seen from a default gRPC client: responses that must fit the
//! client's 4 MiB limit (a txn is never committed and then reported as failed), etcd's
//! missing-key compare rule, and the status codes of malformed requests.

mod common;

use armada_proto::mvcc::v1 as mvcc;
use armada_proto::regatta::v1::kv_client::KvClient;
use armada_proto::regatta::v1::{PutRequest, PutResponse, TxnRequest};
use common::{Armada, get, put};
use tonic::Code;

const LARGE_VALUE_BYTES: usize = 1900 * 1024;

fn op_range_all() -> mvcc::RequestOp {
    mvcc::RequestOp {
        request: Some(mvcc::request_op::Request::RequestRange(
            mvcc::request_op::Range {
                key: "\0".into(),
                range_end: "\0".into(),
                ..Default::default()
            },
        )),
    }
}

fn op_put(key: &str, value: &str, prev_kv: bool) -> mvcc::RequestOp {
    mvcc::RequestOp {
        request: Some(mvcc::request_op::Request::RequestPut(
            mvcc::request_op::Put {
                key: key.as_bytes().to_vec().into(),
                value: value.as_bytes().to_vec().into(),
                prev_kv,
            },
        )),
    }
}

fn range_of(op: &mvcc::ResponseOp) -> &mvcc::response_op::Range {
    match &op.response {
        Some(mvcc::response_op::Response::ResponseRange(range)) => range,
        other => panic!("not a range response: {other:?}"),
    }
}

fn compare_create(key: &str, result: mvcc::compare::CompareResult, revision: i64) -> mvcc::Compare {
    mvcc::Compare {
        result: result as i32,
        target: mvcc::compare::CompareTarget::Create as i32,
        key: key.as_bytes().to_vec().into(),
        target_union: Some(mvcc::compare::TargetUnion::CreateRevision(revision)),
        range_end: Default::default(),
    }
}

/// A client with gRPC's default limits (4 MiB responses), as users have.
async fn default_client(armada: &Armada) -> KvClient<tonic::transport::Channel> {
    KvClient::new(armada.channel().await)
}

#[tokio::test(flavor = "multi_thread")]
async fn txn_responses_fit_a_default_client_and_an_oversized_one_changes_nothing() {
    let armada = Armada::start();
    armada.create_table("big").await;
    let mut kv = default_client(&armada).await;
    for key in ["a", "b", "c"] {
        kv.put(put("big", key, vec![b'v'; LARGE_VALUE_BYTES]))
            .await
            .expect("put large value");
    }

    // A write and two ranges over 5.7 MB: committed, and the response reaches the client with
    // the ranges cut and `more` set.
    let txn = TxnRequest {
        table: "big".into(),
        success: vec![op_put("d", "small", false), op_range_all(), op_range_all()],
        ..Default::default()
    };
    let response = kv.txn(txn).await.expect("txn must reach a default client");
    let response = response.into_inner();
    assert!(response.succeeded);
    let (first, second) = (
        range_of(&response.responses[1]),
        range_of(&response.responses[2]),
    );
    assert!(first.more && second.more, "both ranges were cut");
    assert!(first.kvs.len() + second.kvs.len() < 6);
    let written = kv.range(get("big", "d")).await.expect("get").into_inner();
    assert_eq!(written.kvs[0].value.as_ref(), b"small");

    // Three previous values of 1.9 MiB cannot fit: refused before anything changes.
    let txn = TxnRequest {
        table: "big".into(),
        success: vec![
            op_put("e", "new", false),
            op_put("a", "1", true),
            op_put("b", "2", true),
            op_put("c", "3", true),
        ],
        ..Default::default()
    };
    let status = kv.txn(txn).await.expect_err("oversized txn response");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("4193280"), "{}", status.message());
    let missing = kv.range(get("big", "e")).await.expect("get").into_inner();
    assert!(missing.kvs.is_empty(), "the refused txn wrote nothing");
    for key in ["a", "b", "c"] {
        let kept = kv.range(get("big", key)).await.expect("get").into_inner();
        assert_eq!(
            kept.kvs[0].value.len(),
            LARGE_VALUE_BYTES,
            "{key} unchanged"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn create_revision_zero_is_put_if_absent() {
    use mvcc::compare::CompareResult::{Equal, Less};
    let armada = Armada::start();
    armada.create_table("locks").await;
    let mut kv = armada.kv().await;
    let acquire = |owner: &str| TxnRequest {
        table: "locks".into(),
        compare: vec![compare_create("lock", Equal, 0)],
        success: vec![op_put("lock", owner, false)],
        failure: vec![mvcc::RequestOp {
            request: Some(mvcc::request_op::Request::RequestRange(
                mvcc::request_op::Range {
                    key: "lock".into(),
                    ..Default::default()
                },
            )),
        }],
    };
    let first = kv.txn(acquire("one")).await.expect("txn").into_inner();
    assert!(first.succeeded, "a missing key has create revision 0");
    let second = kv.txn(acquire("two")).await.expect("txn").into_inner();
    assert!(!second.succeeded, "the lock is held");
    assert_eq!(range_of(&second.responses[0]).kvs[0].value.as_ref(), b"one");

    // MOD compares see 0 too; a VALUE compare on a missing key stays false.
    let mod_below_one = TxnRequest {
        table: "locks".into(),
        compare: vec![mvcc::Compare {
            result: Less as i32,
            target: mvcc::compare::CompareTarget::Mod as i32,
            key: "absent".into(),
            target_union: Some(mvcc::compare::TargetUnion::ModRevision(1)),
            range_end: Default::default(),
        }],
        ..Default::default()
    };
    assert!(
        kv.txn(mod_below_one)
            .await
            .expect("txn")
            .into_inner()
            .succeeded
    );
    let value_equal = TxnRequest {
        table: "locks".into(),
        compare: vec![mvcc::Compare {
            result: Equal as i32,
            target: mvcc::compare::CompareTarget::Value as i32,
            key: "absent".into(),
            target_union: Some(mvcc::compare::TargetUnion::Value(Default::default())),
            range_end: Default::default(),
        }],
        ..Default::default()
    };
    assert!(
        !kv.txn(value_equal)
            .await
            .expect("txn")
            .into_inner()
            .succeeded
    );
}

/// Sends `body` as the request message of `method`, undecoded by us.
async fn raw_unary(
    armada: &Armada,
    method: &'static str,
    body: Vec<u8>,
) -> Result<PutResponse, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(armada.channel().await);
    grpc.ready().await.expect("ready");
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(method);
    grpc.unary(tonic::Request::new(body), path, raw::RawCodec)
        .await
        .map(tonic::Response::into_inner)
}

mod raw {
    //! A codec that sends bytes as they are and decodes a `PutResponse`.
    use bytes::BufMut;
    use prost::Message;
    use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

    pub struct RawCodec;
    pub struct RawEncoder;
    pub struct ResponseDecoder;

    impl Codec for RawCodec {
        type Encode = Vec<u8>;
        type Decode = super::PutResponse;
        type Encoder = RawEncoder;
        type Decoder = ResponseDecoder;
        fn encoder(&mut self) -> RawEncoder {
            RawEncoder
        }
        fn decoder(&mut self) -> ResponseDecoder {
            ResponseDecoder
        }
    }

    impl Encoder for RawEncoder {
        type Item = Vec<u8>;
        type Error = tonic::Status;
        fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
            dst.put_slice(&item);
            Ok(())
        }
    }

    impl Decoder for ResponseDecoder {
        type Item = super::PutResponse;
        type Error = tonic::Status;
        fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, tonic::Status> {
            super::PutResponse::decode(src)
                .map(Some)
                .map_err(|error| tonic::Status::internal(error.to_string()))
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_requests_and_impossible_table_names_are_invalid_arguments() {
    let armada = Armada::start();
    armada.create_table("t").await;

    // Field 1 (table) announced as 100 bytes long, followed by 3.
    let truncated = vec![0x0a, 100, b'a', b'b', b'c'];
    let status = raw_unary(&armada, "/regatta.v1.KV/Put", truncated)
        .await
        .expect_err("malformed");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("malformed"),
        "{}",
        status.message()
    );
    // The same bytes, well formed, are served: the server is fine.
    let valid = prost::Message::encode_to_vec(&PutRequest {
        table: "t".into(),
        key: "k".into(),
        value: "v".into(),
        prev_kv: false,
    });
    raw_unary(&armada, "/regatta.v1.KV/Put", valid)
        .await
        .expect("valid put");

    let mut kv = armada.kv().await;
    for table in [vec![0xff, 0xfe], vec![b'a'; 300], b"a/b".to_vec()] {
        let request = PutRequest {
            table: table.clone().into(),
            key: "k".into(),
            value: "v".into(),
            prev_kv: false,
        };
        let status = kv.put(request).await.expect_err("impossible table name");
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{table:?}: {status:?}"
        );
        assert!(
            status.message().starts_with("table "),
            "{}",
            status.message()
        );
        let mut read = get("t", "k");
        read.table = table.into();
        assert_eq!(
            kv.range(read).await.expect_err("range").code(),
            Code::InvalidArgument
        );
    }
    let status = kv.put(put("nope", "k", "v")).await.expect_err("unknown");
    assert_eq!(status.code(), Code::NotFound);
    assert!(
        status.message().contains("\"nope\""),
        "names the table: {}",
        status.message()
    );
}
