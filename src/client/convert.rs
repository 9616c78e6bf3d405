//! Translation between the store's own types and etcd's protobuf messages, client direction:
//! requests go out as protobuf, responses come back as store types.

use crawler_proto::{etcdserverpb as pb, mvccpb};
use crawler_storage::types as st;

/// Store `RangeRequest` -> protobuf.
pub fn range_request(r: st::RangeRequest) -> pb::RangeRequest {
    let sort_order = match r.sort_order {
        st::SortOrder::None => pb::range_request::SortOrder::None,
        st::SortOrder::Ascend => pb::range_request::SortOrder::Ascend,
        st::SortOrder::Descend => pb::range_request::SortOrder::Descend,
    };
    let sort_target = match r.sort_target {
        st::SortTarget::Key => pb::range_request::SortTarget::Key,
        st::SortTarget::Version => pb::range_request::SortTarget::Version,
        st::SortTarget::Create => pb::range_request::SortTarget::Create,
        st::SortTarget::Mod => pb::range_request::SortTarget::Mod,
        st::SortTarget::Value => pb::range_request::SortTarget::Value,
    };
    pb::RangeRequest {
        key: r.key,
        range_end: r.range_end,
        limit: r.limit,
        revision: r.revision,
        sort_order: sort_order as i32,
        sort_target: sort_target as i32,
        serializable: r.serializable,
        keys_only: r.keys_only,
        count_only: r.count_only,
        min_mod_revision: r.min_mod_revision,
        max_mod_revision: r.max_mod_revision,
        min_create_revision: r.min_create_revision,
        max_create_revision: r.max_create_revision,
    }
}

/// Store `PutRequest` -> protobuf.
pub fn put_request(r: st::PutRequest) -> pb::PutRequest {
    pb::PutRequest {
        key: r.key,
        value: r.value,
        lease: r.lease,
        prev_kv: r.prev_kv,
        ignore_value: r.ignore_value,
        ignore_lease: r.ignore_lease,
    }
}

/// Store `DeleteRangeRequest` -> protobuf.
pub fn delete_range_request(r: st::DeleteRangeRequest) -> pb::DeleteRangeRequest {
    pb::DeleteRangeRequest {
        key: r.key,
        range_end: r.range_end,
        prev_kv: r.prev_kv,
    }
}

/// Store `Compare` -> protobuf.
pub fn compare(c: st::Compare) -> pb::Compare {
    use pb::compare::{CompareResult as R, CompareTarget as T, TargetUnion as U};
    let result = match c.result {
        st::CompareResult::Equal => R::Equal,
        st::CompareResult::Greater => R::Greater,
        st::CompareResult::Less => R::Less,
        st::CompareResult::NotEqual => R::NotEqual,
    };
    let (target, union) = match c.target {
        st::CompareTarget::Version(v) => (T::Version, U::Version(v)),
        st::CompareTarget::Create(v) => (T::Create, U::CreateRevision(v)),
        st::CompareTarget::Mod(v) => (T::Mod, U::ModRevision(v)),
        st::CompareTarget::Value(v) => (T::Value, U::Value(v)),
        st::CompareTarget::Lease(v) => (T::Lease, U::Lease(v)),
    };
    pb::Compare {
        result: result as i32,
        target: target as i32,
        key: c.key,
        range_end: c.range_end,
        target_union: Some(union),
    }
}

/// Store `RequestOp` -> protobuf.
pub fn request_op(op: st::RequestOp) -> pb::RequestOp {
    use pb::request_op::Request;
    let request = match op {
        st::RequestOp::Range(r) => Request::RequestRange(range_request(r)),
        st::RequestOp::Put(r) => Request::RequestPut(put_request(r)),
        st::RequestOp::DeleteRange(r) => Request::RequestDeleteRange(delete_range_request(r)),
        st::RequestOp::Txn(t) => Request::RequestTxn(txn_request(t)),
    };
    pb::RequestOp {
        request: Some(request),
    }
}

/// Store `TxnRequest` -> protobuf.
pub fn txn_request(t: st::TxnRequest) -> pb::TxnRequest {
    pb::TxnRequest {
        compare: t.compare.into_iter().map(compare).collect(),
        success: t.success.into_iter().map(request_op).collect(),
        failure: t.failure.into_iter().map(request_op).collect(),
    }
}

/// Protobuf `KeyValue` -> store.
pub fn key_value(kv: mvccpb::KeyValue) -> st::KeyValue {
    st::KeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

/// Protobuf `Event` -> store. A missing `kv` becomes an empty one (never sent by etcd).
pub fn event(e: mvccpb::Event) -> st::Event {
    let kind = match e.r#type() {
        mvccpb::event::EventType::Put => st::EventType::Put,
        mvccpb::event::EventType::Delete => st::EventType::Delete,
    };
    st::Event {
        kind,
        kv: e.kv.map(key_value).unwrap_or_default(),
        prev_kv: e.prev_kv.map(key_value),
    }
}

/// Header revision of a response (0 when the header is missing, which etcd never does).
pub fn revision(h: &Option<pb::ResponseHeader>) -> i64 {
    h.as_ref().map_or(0, |h| h.revision)
}

/// Protobuf `RangeResponse` -> store (header dropped).
pub fn range_response(r: pb::RangeResponse) -> st::RangeResponse {
    st::RangeResponse {
        kvs: r.kvs.into_iter().map(key_value).collect(),
        more: r.more,
        count: r.count,
    }
}

/// Protobuf `PutResponse` -> store (header dropped).
pub fn put_response(r: pb::PutResponse) -> st::PutResponse {
    st::PutResponse {
        prev_kv: r.prev_kv.map(key_value),
    }
}

/// Protobuf `DeleteRangeResponse` -> store (header dropped).
pub fn delete_range_response(r: pb::DeleteRangeResponse) -> st::DeleteRangeResponse {
    st::DeleteRangeResponse {
        deleted: r.deleted,
        prev_kvs: r.prev_kvs.into_iter().map(key_value).collect(),
    }
}

/// Protobuf `ResponseOp` -> store; `None` for an empty oneof (never sent by etcd).
pub fn response_op(op: pb::ResponseOp) -> Option<st::ResponseOp> {
    use pb::response_op::Response;
    Some(match op.response? {
        Response::ResponseRange(r) => st::ResponseOp::Range(range_response(r)),
        Response::ResponsePut(r) => st::ResponseOp::Put(put_response(r)),
        Response::ResponseDeleteRange(r) => st::ResponseOp::DeleteRange(delete_range_response(r)),
        Response::ResponseTxn(r) => st::ResponseOp::Txn(txn_response(r)),
    })
}

/// Protobuf `TxnResponse` -> store (header dropped).
pub fn txn_response(r: pb::TxnResponse) -> st::TxnResponse {
    st::TxnResponse {
        succeeded: r.succeeded,
        responses: r.responses.into_iter().filter_map(response_op).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_maps_target_and_operand() {
        let c = compare(st::Compare {
            result: st::CompareResult::Equal,
            target: st::CompareTarget::Create(7),
            key: b"k".to_vec(),
            range_end: vec![],
        });
        assert_eq!(c.target(), pb::compare::CompareTarget::Create);
        assert_eq!(c.result(), pb::compare::CompareResult::Equal);
        assert_eq!(
            c.target_union,
            Some(pb::compare::TargetUnion::CreateRevision(7))
        );
    }

    #[test]
    fn delete_event_maps() {
        let mut e = mvccpb::Event {
            kv: Some(mvccpb::KeyValue {
                key: b"k".to_vec(),
                mod_revision: 5,
                ..Default::default()
            }),
            ..Default::default()
        };
        e.set_type(mvccpb::event::EventType::Delete);
        let s = event(e);
        assert_eq!(s.kind, st::EventType::Delete);
        assert_eq!(s.kv.mod_revision, 5);
        assert!(s.prev_kv.is_none());
    }
}
