//! etcd's gRPC error catalogue (`api/v3rpc/rpctypes/error.go`): exact texts and codes, because
//! etcd clients map errors back by their message text.

use crawler_raft::RaftError;
use crawler_storage::ApplyError;
use tonic::{Code, Status};

use crate::server::lessor::LeaseError;

/// `etcdserver: key is not provided` (InvalidArgument).
pub(crate) fn empty_key() -> Status {
    Status::invalid_argument("etcdserver: key is not provided")
}

/// `etcdserver: key not found` (InvalidArgument); etcd also answers it for an empty txn op.
pub(crate) fn key_not_found() -> Status {
    Status::invalid_argument("etcdserver: key not found")
}

/// `etcdserver: value is provided` (InvalidArgument): `ignore_value` with a value.
pub(crate) fn value_provided() -> Status {
    Status::invalid_argument("etcdserver: value is provided")
}

/// `etcdserver: lease is provided` (InvalidArgument): `ignore_lease` with a lease.
pub(crate) fn lease_provided() -> Status {
    Status::invalid_argument("etcdserver: lease is provided")
}

/// `etcdserver: too many operations in txn request` (InvalidArgument).
pub(crate) fn too_many_ops() -> Status {
    Status::invalid_argument("etcdserver: too many operations in txn request")
}

/// `etcdserver: duplicate key given in txn request` (InvalidArgument).
pub(crate) fn duplicate_key() -> Status {
    Status::invalid_argument("etcdserver: duplicate key given in txn request")
}

/// `etcdserver: mvcc: required revision has been compacted` (OutOfRange).
pub(crate) fn compacted() -> Status {
    Status::out_of_range("etcdserver: mvcc: required revision has been compacted")
}

/// `etcdserver: mvcc: required revision is a future revision` (OutOfRange).
pub(crate) fn future_rev() -> Status {
    Status::out_of_range("etcdserver: mvcc: required revision is a future revision")
}

/// `etcdserver: requested lease not found` (NotFound).
pub(crate) fn lease_not_found() -> Status {
    Status::not_found("etcdserver: requested lease not found")
}

/// `etcdserver: lease already exists` (FailedPrecondition).
pub(crate) fn lease_exist() -> Status {
    Status::failed_precondition("etcdserver: lease already exists")
}

/// `etcdserver: too large lease TTL` (OutOfRange).
pub(crate) fn lease_ttl_too_large() -> Status {
    Status::out_of_range("etcdserver: too large lease TTL")
}

/// `etcdserver: Peer URLs already exists` (FailedPrecondition).
pub(crate) fn peer_url_exist() -> Status {
    Status::failed_precondition("etcdserver: Peer URLs already exists")
}

/// `etcdserver: re-configuration failed due to not enough started members` (FailedPrecondition).
pub(crate) fn member_not_enough_started() -> Status {
    Status::failed_precondition(
        "etcdserver: re-configuration failed due to not enough started members",
    )
}

/// `etcdserver: given member URLs are invalid` (InvalidArgument).
pub(crate) fn member_bad_urls() -> Status {
    Status::invalid_argument("etcdserver: given member URLs are invalid")
}

/// `etcdserver: member not found` (NotFound).
pub(crate) fn member_not_found() -> Status {
    Status::not_found("etcdserver: member not found")
}

/// `etcdserver: can only promote a learner member` (FailedPrecondition).
pub(crate) fn member_not_learner() -> Status {
    Status::failed_precondition("etcdserver: can only promote a learner member")
}

/// `etcdserver: can only promote a learner member which is in sync with leader` (FailedPrecondition).
pub(crate) fn learner_not_ready() -> Status {
    Status::failed_precondition(
        "etcdserver: can only promote a learner member which is in sync with leader",
    )
}

/// `etcdserver: request is too large` (InvalidArgument).
/// etcd's `ErrGRPCNoSpace`: a write that adds data while the db is over its quota.
pub(crate) fn no_space() -> Status {
    Status::resource_exhausted(ApplyError::NoSpace.to_string())
}

pub(crate) fn request_too_large() -> Status {
    Status::invalid_argument("etcdserver: request is too large")
}

/// `etcdserver: no leader` (Unavailable).
pub(crate) fn no_leader() -> Status {
    Status::unavailable("etcdserver: no leader")
}

/// `etcdserver: server stopped` (Unavailable).
pub(crate) fn stopped() -> Status {
    Status::unavailable("etcdserver: server stopped")
}

/// `etcdserver: request timed out` (Unavailable).
pub(crate) fn timeout() -> Status {
    Status::unavailable("etcdserver: request timed out")
}

/// A request field carries a value this server does not know (e.g. an unknown enum number).
pub(crate) fn invalid_field(what: &str) -> Status {
    Status::invalid_argument(format!("etcdserver: invalid {what}"))
}

/// A store error as etcd reports it.
pub(crate) fn status_from_apply(err: &ApplyError) -> Status {
    match err {
        ApplyError::Compacted => compacted(),
        ApplyError::FutureRevision => future_rev(),
        ApplyError::LeaseNotFound => lease_not_found(),
        ApplyError::LeaseExists => lease_exist(),
        ApplyError::KeyNotFound => key_not_found(),
        ApplyError::StaleExpiry => Status::unavailable(err.to_string()),
        ApplyError::Internal(msg) => Status::internal(format!("etcdserver: storage error: {msg}")),
        ApplyError::NoSpace => no_space(),
    }
}

/// A raft-layer error as etcd reports it; unknown failures become `Unknown` like etcd's
/// `togRPCError` fallback.
pub(crate) fn status_from_raft(err: &RaftError) -> Status {
    match err {
        RaftError::NoLeader => no_leader(),
        RaftError::Timeout => timeout(),
        RaftError::Stopped => stopped(),
        RaftError::MemberNotFound => member_not_found(),
        RaftError::PeerUrlExists => peer_url_exist(),
        RaftError::NotEnoughStartedMembers => member_not_enough_started(),
        RaftError::NotLearner => member_not_learner(),
        RaftError::LearnerNotReady => learner_not_ready(),
        RaftError::Config(msg) => Status::invalid_argument(msg.clone()),
        RaftError::Storage(crawler_storage::StoreError::Apply(e)) => status_from_apply(e),
        other => Status::new(Code::Unknown, other.to_string()),
    }
}

/// A lessor error as etcd reports it.
pub(crate) fn status_from_lease(err: &LeaseError) -> Status {
    match err {
        LeaseError::NotFound => lease_not_found(),
        LeaseError::Exists => lease_exist(),
        LeaseError::TtlTooLarge => lease_ttl_too_large(),
        LeaseError::Raft(e) => status_from_raft(e),
        LeaseError::Other(msg) if *msg == ApplyError::NoSpace.to_string() => no_space(),
        LeaseError::Other(msg) => Status::new(Code::Unknown, msg.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_and_codes_match_etcd() {
        let s = status_from_apply(&ApplyError::Compacted);
        assert_eq!(s.code(), Code::OutOfRange);
        assert_eq!(
            s.message(),
            "etcdserver: mvcc: required revision has been compacted"
        );
        let s = status_from_raft(&RaftError::NoLeader);
        assert_eq!(s.code(), Code::Unavailable);
        assert_eq!(s.message(), "etcdserver: no leader");
        let s = status_from_raft(&RaftError::PeerUrlExists);
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert_eq!(s.message(), "etcdserver: Peer URLs already exists");
        let s = status_from_lease(&LeaseError::NotFound);
        assert_eq!(s.code(), Code::NotFound);
        assert_eq!(s.message(), "etcdserver: requested lease not found");
    }
}
