//! Calls over several endpoints: the endpoint list, which failures may be sent to the next
//! endpoint (see the module docs of [`super`]), and the mapping of gRPC statuses to [`KvError`].

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crawler_proto::etcdserverpb as pb;
use crawler_proto::etcdserverpb::kv_client::KvClient as PbKvClient;
use crawler_proto::etcdserverpb::lease_client::LeaseClient as PbLeaseClient;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::client::api::{KvError, KvResult};

/// Largest message we accept from a server (etcd's Go client uses the same: `math.MaxInt32`).
pub(super) const MAX_DECODE_BYTES: usize = i32::MAX as usize;
/// etcd's metadata key asking a member to fail watch streams while it has no leader, so that we
/// move to a member that has one instead of waiting silently behind a partition.
pub(super) const REQUIRE_LEADER_KEY: &str = "hasleader";

pub(super) struct Ep {
    pub(super) url: String,
    pub(super) channel: Channel,
}

pub(super) struct Inner {
    pub(super) endpoints: Vec<Ep>,
    /// Index of the endpoint tried first (the last one that answered).
    pub(super) current: AtomicUsize,
    pub(super) request_timeout: Duration,
}

/// Whether a call may be sent again after it possibly reached a server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Safety {
    Idempotent,
    Mutating,
}

/// How a failed call failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Failure {
    /// Never reached a server: safe to send elsewhere.
    NotSent,
    /// Failed in flight or the server is temporarily unable: retry idempotent calls elsewhere.
    Transient,
    /// The server answered with a definite error.
    Final,
}

pub(super) fn normalize_url(raw: &str) -> KvResult<String> {
    crate::util::url::endpoint_url(raw).map_err(KvError::InvalidArgument)
}

/// Is a `tonic::ConnectError` somewhere in the status's source chain (the call never left)?
pub(super) fn never_sent(status: &Status) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = src {
        if e.is::<tonic::ConnectError>() {
            return true;
        }
        src = e.source();
    }
    false
}

pub(super) fn classify(status: &Status) -> Failure {
    if never_sent(status) {
        Failure::NotSent
    } else if status.code() == Code::Unavailable || std::error::Error::source(status).is_some() {
        // A status with a source was made on our side from a transport failure, not sent by a server.
        Failure::Transient
    } else {
        Failure::Final
    }
}

/// Header revision of a response (0 when the header is missing, which etcd never does).
pub(super) fn header_revision(h: &Option<pb::ResponseHeader>) -> i64 {
    h.as_ref().map_or(0, |h| h.revision)
}

/// A reply the server should never send (an unknown event type, an empty txn op): a server
/// fault, not the caller's.
pub(super) fn malformed(e: Status) -> KvError {
    KvError::Other {
        code: "Internal".into(),
        message: format!("malformed reply: {}", e.message()),
    }
}

/// Map a gRPC status to a [`KvError`], keeping the server's message.
pub fn map_status(status: &Status, url: &str) -> KvError {
    let msg = status.message().to_string();
    let local = std::error::Error::source(status).is_some();
    match status.code() {
        Code::OutOfRange if msg.contains("compacted") => KvError::Compacted {
            compact_revision: 0,
        },
        Code::OutOfRange if msg.contains("future revision") => KvError::FutureRevision,
        Code::NotFound => KvError::NotFound(msg),
        Code::InvalidArgument => KvError::InvalidArgument(msg),
        Code::FailedPrecondition => KvError::FailedPrecondition(msg),
        Code::Unavailable if local => KvError::Unavailable(format!("{url}: {msg}")),
        Code::Unavailable => KvError::Unavailable(msg),
        Code::DeadlineExceeded => KvError::Timeout(msg),
        _ if local => KvError::Unavailable(format!("{url}: {msg}")),
        code => KvError::Other {
            code: format!("{code:?}"),
            message: msg,
        },
    }
}

impl Inner {
    pub(super) fn start_index(&self) -> usize {
        self.current.load(Ordering::Relaxed) % self.endpoints.len()
    }

    /// Run one unary call with failover (see the module docs for the rules).
    pub(super) async fn unary<T, F, Fut>(
        &self,
        safety: Safety,
        what: &'static str,
        f: F,
    ) -> KvResult<T>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let n = self.endpoints.len();
        let start = self.start_index();
        let mut last = KvError::Unavailable("no endpoint tried".into());
        for attempt in 0..n {
            let idx = (start + attempt) % n;
            let ep = &self.endpoints[idx];
            match tokio::time::timeout(self.request_timeout, f(ep.channel.clone())).await {
                Ok(Ok(v)) => {
                    if idx != start {
                        self.current.store(idx, Ordering::Relaxed);
                    }
                    return Ok(v);
                }
                Ok(Err(status)) => {
                    let failure = classify(&status);
                    let err = map_status(&status, &ep.url);
                    let retry = match failure {
                        Failure::NotSent => true,
                        Failure::Transient => safety == Safety::Idempotent,
                        Failure::Final => false,
                    };
                    if !retry {
                        return Err(err);
                    }
                    tracing::debug!(endpoint = %ep.url, what, error = %err, "kv call failed, trying next endpoint");
                    last = err;
                }
                Err(_elapsed) => {
                    let err = KvError::Timeout(format!(
                        "{what} on {} did not finish within {:?}",
                        ep.url, self.request_timeout
                    ));
                    if safety == Safety::Mutating {
                        return Err(err);
                    }
                    tracing::debug!(endpoint = %ep.url, what, "kv call timed out, trying next endpoint");
                    last = err;
                }
            }
        }
        Err(match last {
            KvError::Unavailable(m) => KvError::Unavailable(format!("all endpoints failed: {m}")),
            other => other,
        })
    }
}

pub(super) fn kv(ch: Channel) -> PbKvClient<Channel> {
    PbKvClient::new(ch).max_decoding_message_size(MAX_DECODE_BYTES)
}

pub(super) fn lease(ch: Channel) -> PbLeaseClient<Channel> {
    PbLeaseClient::new(ch).max_decoding_message_size(MAX_DECODE_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map() {
        let s = Status::out_of_range("etcdserver: mvcc: required revision has been compacted");
        assert_eq!(
            map_status(&s, "u"),
            KvError::Compacted {
                compact_revision: 0
            }
        );
        let s = Status::not_found("etcdserver: requested lease not found");
        assert!(map_status(&s, "u").is_not_found());
        let s = Status::unavailable("etcdserver: no leader");
        assert_eq!(
            map_status(&s, "u"),
            KvError::Unavailable("etcdserver: no leader".into())
        );
        assert_eq!(classify(&s), Failure::Transient);
        assert_eq!(classify(&Status::invalid_argument("x")), Failure::Final);
    }
}
