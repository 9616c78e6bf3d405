//! Protobuf ⇄ store type conversions, written once: the gRPC services decode requests and encode
//! replies with them, the remote client the other way round. Decoding is strict: an unknown enum
//! number or an empty oneof becomes an `InvalidArgument` status, never a panic or a silent default.

use crawler_proto::etcdserverpb as pb;
use crawler_proto::etcdserverpb::{compare, range_request, request_op, response_op};
use crawler_proto::mvccpb;
use crawler_storage as st;
use tonic::Status;

use super::error;

// ---- KeyValue / Event -------------------------------------------------------------------------

/// Store key-value → `mvccpb.KeyValue`.
pub(crate) fn kv_to_proto(kv: st::KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

/// `mvccpb.KeyValue` → store key-value.
pub(crate) fn kv_from_proto(kv: mvccpb::KeyValue) -> st::KeyValue {
    st::KeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

/// Store event → `mvccpb.Event`; `prev_kv` is kept only when the watcher asked for it.
pub(crate) fn event_to_proto(ev: st::Event, with_prev_kv: bool) -> mvccpb::Event {
    let kind = match ev.kind {
        st::EventType::Put => mvccpb::event::EventType::Put,
        st::EventType::Delete => mvccpb::event::EventType::Delete,
    };
    mvccpb::Event {
        r#type: kind as i32,
        kv: Some(kv_to_proto(ev.kv)),
        prev_kv: if with_prev_kv {
            ev.prev_kv.map(kv_to_proto)
        } else {
            None
        },
    }
}

/// `mvccpb.Event` → store event (unknown event type → InvalidArgument).
pub(crate) fn event_from_proto(ev: mvccpb::Event) -> Result<st::Event, Status> {
    let kind = match mvccpb::event::EventType::try_from(ev.r#type) {
        Ok(mvccpb::event::EventType::Put) => st::EventType::Put,
        Ok(mvccpb::event::EventType::Delete) => st::EventType::Delete,
        Err(_) => return Err(error::invalid_field("event type")),
    };
    Ok(st::Event {
        kind,
        kv: ev.kv.map(kv_from_proto).unwrap_or_default(),
        prev_kv: ev.prev_kv.map(kv_from_proto),
    })
}

// ---- sort enums -------------------------------------------------------------------------------

/// Proto sort order number → store sort order.
pub(crate) fn sort_order_from_proto(v: i32) -> Result<st::SortOrder, Status> {
    match range_request::SortOrder::try_from(v) {
        Ok(range_request::SortOrder::None) => Ok(st::SortOrder::None),
        Ok(range_request::SortOrder::Ascend) => Ok(st::SortOrder::Ascend),
        Ok(range_request::SortOrder::Descend) => Ok(st::SortOrder::Descend),
        Err(_) => Err(error::invalid_field("sort option")),
    }
}

/// Store sort order → proto number.
pub(crate) fn sort_order_to_proto(v: st::SortOrder) -> i32 {
    (match v {
        st::SortOrder::None => range_request::SortOrder::None,
        st::SortOrder::Ascend => range_request::SortOrder::Ascend,
        st::SortOrder::Descend => range_request::SortOrder::Descend,
    }) as i32
}

/// Proto sort target number → store sort target.
pub(crate) fn sort_target_from_proto(v: i32) -> Result<st::SortTarget, Status> {
    match range_request::SortTarget::try_from(v) {
        Ok(range_request::SortTarget::Key) => Ok(st::SortTarget::Key),
        Ok(range_request::SortTarget::Version) => Ok(st::SortTarget::Version),
        Ok(range_request::SortTarget::Create) => Ok(st::SortTarget::Create),
        Ok(range_request::SortTarget::Mod) => Ok(st::SortTarget::Mod),
        Ok(range_request::SortTarget::Value) => Ok(st::SortTarget::Value),
        Err(_) => Err(error::invalid_field("sort option")),
    }
}

/// Store sort target → proto number.
pub(crate) fn sort_target_to_proto(v: st::SortTarget) -> i32 {
    (match v {
        st::SortTarget::Key => range_request::SortTarget::Key,
        st::SortTarget::Version => range_request::SortTarget::Version,
        st::SortTarget::Create => range_request::SortTarget::Create,
        st::SortTarget::Mod => range_request::SortTarget::Mod,
        st::SortTarget::Value => range_request::SortTarget::Value,
    }) as i32
}

// ---- requests: proto → store ------------------------------------------------------------------

/// `RangeRequest` → store range request.
pub(crate) fn range_from_proto(r: pb::RangeRequest) -> Result<st::RangeRequest, Status> {
    Ok(st::RangeRequest {
        sort_order: sort_order_from_proto(r.sort_order)?,
        sort_target: sort_target_from_proto(r.sort_target)?,
        key: r.key,
        range_end: r.range_end,
        limit: r.limit,
        revision: r.revision,
        serializable: r.serializable,
        keys_only: r.keys_only,
        count_only: r.count_only,
        min_mod_revision: r.min_mod_revision,
        max_mod_revision: r.max_mod_revision,
        min_create_revision: r.min_create_revision,
        max_create_revision: r.max_create_revision,
    })
}

/// `PutRequest` → store put request.
pub(crate) fn put_from_proto(r: pb::PutRequest) -> st::PutRequest {
    st::PutRequest {
        key: r.key,
        value: r.value,
        lease: r.lease,
        prev_kv: r.prev_kv,
        ignore_value: r.ignore_value,
        ignore_lease: r.ignore_lease,
    }
}

/// `DeleteRangeRequest` → store delete request.
pub(crate) fn delete_from_proto(r: pb::DeleteRangeRequest) -> st::DeleteRangeRequest {
    st::DeleteRangeRequest {
        key: r.key,
        range_end: r.range_end,
        prev_kv: r.prev_kv,
    }
}

/// `Compare` → store compare. Like etcd, the operand is read from the union field that matches
/// `target`; a union set to another field counts as that field's zero value.
pub(crate) fn compare_from_proto(c: pb::Compare) -> Result<st::Compare, Status> {
    let result = match compare::CompareResult::try_from(c.result) {
        Ok(compare::CompareResult::Equal) => st::CompareResult::Equal,
        Ok(compare::CompareResult::Greater) => st::CompareResult::Greater,
        Ok(compare::CompareResult::Less) => st::CompareResult::Less,
        Ok(compare::CompareResult::NotEqual) => st::CompareResult::NotEqual,
        Err(_) => return Err(error::invalid_field("compare result")),
    };
    let u = c.target_union;
    let target = match compare::CompareTarget::try_from(c.target) {
        Ok(compare::CompareTarget::Version) => st::CompareTarget::Version(match u {
            Some(compare::TargetUnion::Version(v)) => v,
            _ => 0,
        }),
        Ok(compare::CompareTarget::Create) => st::CompareTarget::Create(match u {
            Some(compare::TargetUnion::CreateRevision(v)) => v,
            _ => 0,
        }),
        Ok(compare::CompareTarget::Mod) => st::CompareTarget::Mod(match u {
            Some(compare::TargetUnion::ModRevision(v)) => v,
            _ => 0,
        }),
        Ok(compare::CompareTarget::Value) => st::CompareTarget::Value(match u {
            Some(compare::TargetUnion::Value(v)) => v,
            _ => Vec::new(),
        }),
        Ok(compare::CompareTarget::Lease) => st::CompareTarget::Lease(match u {
            Some(compare::TargetUnion::Lease(v)) => v,
            _ => 0,
        }),
        Err(_) => return Err(error::invalid_field("compare target")),
    };
    Ok(st::Compare {
        result,
        target,
        key: c.key,
        range_end: c.range_end,
    })
}

/// `RequestOp` → store op (an empty op is etcd's `key not found`).
pub(crate) fn request_op_from_proto(op: pb::RequestOp) -> Result<st::RequestOp, Status> {
    Ok(match op.request {
        Some(request_op::Request::RequestRange(r)) => st::RequestOp::Range(range_from_proto(r)?),
        Some(request_op::Request::RequestPut(r)) => st::RequestOp::Put(put_from_proto(r)),
        Some(request_op::Request::RequestDeleteRange(r)) => {
            st::RequestOp::DeleteRange(delete_from_proto(r))
        }
        Some(request_op::Request::RequestTxn(r)) => st::RequestOp::Txn(txn_from_proto(r)?),
        None => return Err(error::key_not_found()),
    })
}

/// `TxnRequest` → store txn.
pub(crate) fn txn_from_proto(t: pb::TxnRequest) -> Result<st::TxnRequest, Status> {
    Ok(st::TxnRequest {
        compare: t
            .compare
            .into_iter()
            .map(compare_from_proto)
            .collect::<Result<_, _>>()?,
        success: t
            .success
            .into_iter()
            .map(request_op_from_proto)
            .collect::<Result<_, _>>()?,
        failure: t
            .failure
            .into_iter()
            .map(request_op_from_proto)
            .collect::<Result<_, _>>()?,
    })
}

// ---- requests: store → proto (for in-process clients and tests) --------------------------------

/// Store range request → `RangeRequest`.
pub(crate) fn range_to_proto(r: st::RangeRequest) -> pb::RangeRequest {
    pb::RangeRequest {
        key: r.key,
        range_end: r.range_end,
        limit: r.limit,
        revision: r.revision,
        sort_order: sort_order_to_proto(r.sort_order),
        sort_target: sort_target_to_proto(r.sort_target),
        serializable: r.serializable,
        keys_only: r.keys_only,
        count_only: r.count_only,
        min_mod_revision: r.min_mod_revision,
        max_mod_revision: r.max_mod_revision,
        min_create_revision: r.min_create_revision,
        max_create_revision: r.max_create_revision,
    }
}

/// Store put request → `PutRequest`.
pub(crate) fn put_to_proto(r: st::PutRequest) -> pb::PutRequest {
    pb::PutRequest {
        key: r.key,
        value: r.value,
        lease: r.lease,
        prev_kv: r.prev_kv,
        ignore_value: r.ignore_value,
        ignore_lease: r.ignore_lease,
    }
}

/// Store delete request → `DeleteRangeRequest`.
pub(crate) fn delete_to_proto(r: st::DeleteRangeRequest) -> pb::DeleteRangeRequest {
    pb::DeleteRangeRequest {
        key: r.key,
        range_end: r.range_end,
        prev_kv: r.prev_kv,
    }
}

/// Store compare → `Compare`.
pub(crate) fn compare_to_proto(c: st::Compare) -> pb::Compare {
    let result = match c.result {
        st::CompareResult::Equal => compare::CompareResult::Equal,
        st::CompareResult::Greater => compare::CompareResult::Greater,
        st::CompareResult::Less => compare::CompareResult::Less,
        st::CompareResult::NotEqual => compare::CompareResult::NotEqual,
    };
    let (target, union) = match c.target {
        st::CompareTarget::Version(v) => (
            compare::CompareTarget::Version,
            compare::TargetUnion::Version(v),
        ),
        st::CompareTarget::Create(v) => (
            compare::CompareTarget::Create,
            compare::TargetUnion::CreateRevision(v),
        ),
        st::CompareTarget::Mod(v) => (
            compare::CompareTarget::Mod,
            compare::TargetUnion::ModRevision(v),
        ),
        st::CompareTarget::Value(v) => (
            compare::CompareTarget::Value,
            compare::TargetUnion::Value(v),
        ),
        st::CompareTarget::Lease(v) => (
            compare::CompareTarget::Lease,
            compare::TargetUnion::Lease(v),
        ),
    };
    pb::Compare {
        result: result as i32,
        target: target as i32,
        key: c.key,
        target_union: Some(union),
        range_end: c.range_end,
    }
}

/// Store op → `RequestOp`.
pub(crate) fn request_op_to_proto(op: st::RequestOp) -> pb::RequestOp {
    let request = match op {
        st::RequestOp::Range(r) => request_op::Request::RequestRange(range_to_proto(r)),
        st::RequestOp::Put(r) => request_op::Request::RequestPut(put_to_proto(r)),
        st::RequestOp::DeleteRange(r) => {
            request_op::Request::RequestDeleteRange(delete_to_proto(r))
        }
        st::RequestOp::Txn(t) => request_op::Request::RequestTxn(txn_to_proto(t)),
    };
    pb::RequestOp {
        request: Some(request),
    }
}

/// Store txn → `TxnRequest`.
pub(crate) fn txn_to_proto(t: st::TxnRequest) -> pb::TxnRequest {
    pb::TxnRequest {
        compare: t.compare.into_iter().map(compare_to_proto).collect(),
        success: t.success.into_iter().map(request_op_to_proto).collect(),
        failure: t.failure.into_iter().map(request_op_to_proto).collect(),
    }
}

// ---- responses: store → proto -----------------------------------------------------------------

/// Store range response → `RangeResponse` with `header`.
pub(crate) fn range_resp_to_proto(
    r: st::RangeResponse,
    header: pb::ResponseHeader,
) -> pb::RangeResponse {
    pb::RangeResponse {
        header: Some(header),
        kvs: r.kvs.into_iter().map(kv_to_proto).collect(),
        more: r.more,
        count: r.count,
    }
}

/// Store put response → `PutResponse` with `header`.
pub(crate) fn put_resp_to_proto(r: st::PutResponse, header: pb::ResponseHeader) -> pb::PutResponse {
    pb::PutResponse {
        header: Some(header),
        prev_kv: r.prev_kv.map(kv_to_proto),
    }
}

/// Store delete response → `DeleteRangeResponse` with `header`.
pub(crate) fn delete_resp_to_proto(
    r: st::DeleteRangeResponse,
    header: pb::ResponseHeader,
) -> pb::DeleteRangeResponse {
    pb::DeleteRangeResponse {
        header: Some(header),
        deleted: r.deleted,
        prev_kvs: r.prev_kvs.into_iter().map(kv_to_proto).collect(),
    }
}

/// Store txn response → `TxnResponse`; nested responses get the same header so that clients
/// which dereference any header find one.
pub(crate) fn txn_resp_to_proto(r: st::TxnResponse, header: pb::ResponseHeader) -> pb::TxnResponse {
    pb::TxnResponse {
        succeeded: r.succeeded,
        responses: r
            .responses
            .into_iter()
            .map(|op| response_op_to_proto(op, header))
            .collect(),
        header: Some(header),
    }
}

/// Store op result → `ResponseOp` with `header` on the inner response.
pub(crate) fn response_op_to_proto(
    op: st::ResponseOp,
    header: pb::ResponseHeader,
) -> pb::ResponseOp {
    let response = match op {
        st::ResponseOp::Range(r) => {
            response_op::Response::ResponseRange(range_resp_to_proto(r, header))
        }
        st::ResponseOp::Put(r) => response_op::Response::ResponsePut(put_resp_to_proto(r, header)),
        st::ResponseOp::DeleteRange(r) => {
            response_op::Response::ResponseDeleteRange(delete_resp_to_proto(r, header))
        }
        st::ResponseOp::Txn(t) => response_op::Response::ResponseTxn(txn_resp_to_proto(t, header)),
    };
    pb::ResponseOp {
        response: Some(response),
    }
}

// ---- responses: proto → store (for clients) ---------------------------------------------------

/// `RangeResponse` → store range response.
pub(crate) fn range_resp_from_proto(r: pb::RangeResponse) -> st::RangeResponse {
    st::RangeResponse {
        kvs: r.kvs.into_iter().map(kv_from_proto).collect(),
        more: r.more,
        count: r.count,
    }
}

/// `PutResponse` → store put response.
pub(crate) fn put_resp_from_proto(r: pb::PutResponse) -> st::PutResponse {
    st::PutResponse {
        prev_kv: r.prev_kv.map(kv_from_proto),
    }
}

/// `DeleteRangeResponse` → store delete response.
pub(crate) fn delete_resp_from_proto(r: pb::DeleteRangeResponse) -> st::DeleteRangeResponse {
    st::DeleteRangeResponse {
        deleted: r.deleted,
        prev_kvs: r.prev_kvs.into_iter().map(kv_from_proto).collect(),
    }
}

/// `TxnResponse` → store txn response (an empty `ResponseOp` is a protocol error).
pub(crate) fn txn_resp_from_proto(r: pb::TxnResponse) -> Result<st::TxnResponse, Status> {
    Ok(st::TxnResponse {
        succeeded: r.succeeded,
        responses: r
            .responses
            .into_iter()
            .map(response_op_from_proto)
            .collect::<Result<_, _>>()?,
    })
}

/// `ResponseOp` → store op result.
pub(crate) fn response_op_from_proto(op: pb::ResponseOp) -> Result<st::ResponseOp, Status> {
    Ok(match op.response {
        Some(response_op::Response::ResponseRange(r)) => {
            st::ResponseOp::Range(range_resp_from_proto(r))
        }
        Some(response_op::Response::ResponsePut(r)) => st::ResponseOp::Put(put_resp_from_proto(r)),
        Some(response_op::Response::ResponseDeleteRange(r)) => {
            st::ResponseOp::DeleteRange(delete_resp_from_proto(r))
        }
        Some(response_op::Response::ResponseTxn(t)) => st::ResponseOp::Txn(txn_resp_from_proto(t)?),
        None => return Err(error::invalid_field("empty response op")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txn_roundtrip() {
        let txn = st::TxnRequest {
            compare: vec![st::Compare {
                result: st::CompareResult::NotEqual,
                target: st::CompareTarget::Value(b"v".to_vec()),
                key: b"k".to_vec(),
                range_end: vec![],
            }],
            success: vec![
                st::RequestOp::Put(st::PutRequest {
                    key: b"a".to_vec(),
                    value: b"1".to_vec(),
                    ..Default::default()
                }),
                st::RequestOp::Range(st::RangeRequest {
                    key: b"a".to_vec(),
                    sort_order: st::SortOrder::Descend,
                    sort_target: st::SortTarget::Mod,
                    ..Default::default()
                }),
            ],
            failure: vec![st::RequestOp::Txn(st::TxnRequest::default())],
        };
        let back = txn_from_proto(txn_to_proto(txn.clone())).expect("valid txn");
        assert_eq!(back, txn);
    }

    #[test]
    fn unknown_enums_are_invalid_argument() {
        let r = pb::RangeRequest {
            key: b"a".to_vec(),
            sort_order: 7,
            ..Default::default()
        };
        let err = range_from_proto(r).expect_err("unknown sort order");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        let c = pb::Compare {
            key: b"a".to_vec(),
            target: 99,
            ..Default::default()
        };
        assert!(compare_from_proto(c).is_err());
    }

    #[test]
    fn compare_reads_operand_matching_target() {
        let c = pb::Compare {
            key: b"a".to_vec(),
            target: compare::CompareTarget::Mod as i32,
            target_union: Some(compare::TargetUnion::Version(5)),
            ..Default::default()
        };
        let got = compare_from_proto(c).expect("valid compare");
        assert_eq!(got.target, st::CompareTarget::Mod(0));
    }

    #[test]
    fn events_round_trip_and_bad_replies_are_errors() {
        let ev = st::Event {
            kind: st::EventType::Delete,
            kv: st::KeyValue {
                key: b"k".to_vec(),
                mod_revision: 5,
                ..Default::default()
            },
            prev_kv: None,
        };
        assert_eq!(
            event_from_proto(event_to_proto(ev.clone(), true)).ok(),
            Some(ev)
        );
        let bad = mvccpb::Event {
            r#type: 7,
            ..Default::default()
        };
        assert!(event_from_proto(bad).is_err());
        // An empty op in a txn reply is an error, never silently dropped.
        let reply = pb::TxnResponse {
            responses: vec![pb::ResponseOp { response: None }],
            ..Default::default()
        };
        assert!(txn_resp_from_proto(reply).is_err());
    }
}
