//! What the Election and Lock services share: etcd's error texts, the translation of the
//! protocol's and the KV client's errors into the gRPC statuses etcd answers, and the lease a
//! request runs under.

use tonic::{Code, Status};

use crate::client::{KvClient, KvError};
use crate::coord::election::ElectionError;

/// TTL of the lease etcd's server grants when a Campaign or Lock names no lease (lease 0): the
/// `concurrency` package's default session TTL.
pub const DEFAULT_SESSION_TTL: i64 = 60;

/// etcd's `concurrency.ErrElectionNotLeader`.
pub const ERR_NOT_LEADER: &str = "election: not leader";
/// etcd's `concurrency.ErrElectionNoLeader`.
pub const ERR_NO_LEADER: &str = "election: no leader";
/// etcd's `v3election.ErrMissingLeaderKey`.
pub const ERR_MISSING_LEADER_KEY: &str = "\"leader\" field must be provided";
/// The candidate's key vanished (its lease expired or was revoked) while it waited for its turn.
pub const ERR_ELECTION_SESSION_EXPIRED: &str = "election: session is expired";
/// etcd's `concurrency.ErrSessionExpired`: the waiter's key vanished (its lease ended).
pub const ERR_SESSION_EXPIRED: &str = "mutex: session is expired";

/// The status of a failed protocol step; `expired` is the service's session-expired text.
pub(crate) fn of_election(e: ElectionError, expired: &str) -> Status {
    match e {
        ElectionError::Kv(e) => of_kv(e),
        ElectionError::SessionExpired => Status::unknown(expired),
        ElectionError::NotLeader => Status::unknown(ERR_NOT_LEADER),
    }
}

/// The status the in-process client's error came from: its code and etcd's text again.
pub(crate) fn of_kv(e: KvError) -> Status {
    match e {
        KvError::Unavailable(m) => Status::unavailable(m),
        KvError::Timeout(m) => Status::deadline_exceeded(m),
        e @ (KvError::Compacted { .. } | KvError::FutureRevision) => {
            Status::out_of_range(e.to_string())
        }
        KvError::NotFound(m) => Status::not_found(m),
        KvError::InvalidArgument(m) => Status::invalid_argument(m),
        KvError::FailedPrecondition(m) => Status::failed_precondition(m),
        KvError::WatchCanceled(m) => Status::unknown(m),
        KvError::Other { code, message } => Status::new(code_named(&code), message),
    }
}

/// The gRPC code whose name (`Debug` form, as the client records it) is `name`.
fn code_named(name: &str) -> Code {
    (0..=16)
        .map(Code::from_i32)
        .find(|c| format!("{c:?}") == name)
        .unwrap_or(Code::Unknown)
}

/// The lease a Campaign or Lock runs under: the given one, or (lease 0) a fresh lease with the
/// default session TTL, like etcd's server-side session.
pub(crate) async fn ensure_lease(client: &dyn KvClient, lease: i64) -> Result<i64, Status> {
    if lease != 0 {
        return Ok(lease);
    }
    let grant = client
        .lease_grant(DEFAULT_SESSION_TTL, 0)
        .await
        .map_err(of_kv)?;
    Ok(grant.body.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for code in [
            Code::Unknown,
            Code::Internal,
            Code::ResourceExhausted,
            Code::Aborted,
        ] {
            let e = KvError::Other {
                code: format!("{code:?}"),
                message: "m".into(),
            };
            let s = of_kv(e);
            assert_eq!((s.code(), s.message()), (code, "m"));
        }
    }
}
