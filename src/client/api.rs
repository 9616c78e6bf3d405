//! The client's contract: the [`KvClient`] trait every backend implements and the types it
//! speaks.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

pub use crawler_storage::types::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, DeleteRangeResponse, Event,
    EventType, KeyValue, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp,
    ResponseOp, SortOrder, SortTarget, TxnRequest, TxnResponse,
};

/// A boxed, sendable future borrowing the client: what every [`KvClient`] method returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Result of a KV client call.
pub type KvResult<T> = Result<T, KvError>;

/// Why a KV client call failed.
///
/// Texts carry the server's message (etcd's exact strings where the server sent one).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// No endpoint could serve the call (connection refused, no leader, leader changed...). Retryable.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The call did not finish within its deadline; a write may or may not have been applied. Retryable.
    #[error("deadline exceeded: {0}")]
    Timeout(String),
    /// The requested revision was compacted away. `compact_revision` is 0 when the server did not say.
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted {
        /// The store's compaction revision, when known (watch responses carry it).
        compact_revision: i64,
    },
    /// The requested revision is beyond the store's current revision.
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    /// A lease (or key) does not exist, e.g. `etcdserver: requested lease not found`.
    #[error("{0}")]
    NotFound(String),
    /// The server rejected the request as malformed (empty key, duplicate key in txn, too large...).
    #[error("{0}")]
    InvalidArgument(String),
    /// The request conflicts with existing state (e.g. `etcdserver: lease already exists`).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The server canceled a watch for a reason other than compaction.
    #[error("watch canceled: {0}")]
    WatchCanceled(String),
    /// Any other failure, with its gRPC code name (or `Client`) and message.
    #[error("{code}: {message}")]
    Other {
        /// gRPC code name, or `Client` for a local failure.
        code: String,
        /// The server's (or client's) message.
        message: String,
    },
}

impl KvError {
    /// True when trying again later may succeed without changing the request.
    pub fn is_retryable(&self) -> bool {
        matches!(self, KvError::Unavailable(_) | KvError::Timeout(_))
    }

    /// True for a missing lease or key.
    pub fn is_not_found(&self) -> bool {
        matches!(self, KvError::NotFound(_))
    }
}

impl From<crawler_storage::ApplyError> for KvError {
    fn from(e: crawler_storage::ApplyError) -> Self {
        use crawler_storage::ApplyError as A;
        match e {
            A::Compacted => KvError::Compacted {
                compact_revision: 0,
            },
            A::FutureRevision => KvError::FutureRevision,
            A::LeaseNotFound => KvError::NotFound(e.to_string()),
            A::LeaseExists => KvError::FailedPrecondition(e.to_string()),
            // etcd answers "key not found" with InvalidArgument.
            A::KeyNotFound => KvError::InvalidArgument(e.to_string()),
            // Only the lessor's own expiry commands fail this way; retryable like a lost leader.
            A::StaleExpiry => KvError::Unavailable(e.to_string()),
            A::Internal(_) => KvError::Other {
                code: "Internal".to_string(),
                message: e.to_string(),
            },
            A::NoSpace => KvError::Other {
                code: "ResourceExhausted".to_string(),
                message: e.to_string(),
            },
        }
    }
}

/// A response body together with the store revision from its header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply<T> {
    /// The store's current revision when the call was served (etcd's `header.revision`).
    pub revision: i64,
    /// The response without its header.
    pub body: T,
}

/// A granted lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseGrant {
    /// Lease id (chosen by the server when 0 was requested).
    pub id: i64,
    /// TTL in seconds as granted (the server may raise it to its minimum).
    pub ttl: i64,
}

/// Answer to one lease keepalive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseKeepAlive {
    /// Lease id.
    pub id: i64,
    /// Remaining TTL in seconds after the renewal (always > 0; a dead lease is `KvError::NotFound`).
    pub ttl: i64,
}

/// A lease's remaining time, as etcd's `LeaseTimeToLiveResponse`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseTimeToLive {
    /// Lease id.
    pub id: i64,
    /// Remaining TTL in seconds; -1 when the lease does not exist (expired or revoked).
    pub ttl: i64,
    /// TTL in seconds the lease was granted with.
    pub granted_ttl: i64,
    /// Keys attached to the lease (only when asked for).
    pub keys: Vec<Vec<u8>>,
}

/// What to watch and from where.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchSpec {
    /// First key (or the single key).
    pub key: Vec<u8>,
    /// End of the range, etcd style: empty = the single key, `[0]` = every key >= `key`.
    pub range_end: Vec<u8>,
    /// First revision to deliver (inclusive); 0 = changes after the watch is created.
    pub start_revision: i64,
    /// Deliver each event's previous key-value.
    pub prev_kv: bool,
    /// Ask the server for periodic progress notifications (batches without events).
    pub progress_notify: bool,
    /// Drop PUT events on the server.
    pub no_put: bool,
    /// Drop DELETE events on the server.
    pub no_delete: bool,
}

impl WatchSpec {
    /// Watch one key.
    pub fn key(key: impl Into<Vec<u8>>) -> Self {
        Self {
            key: key.into(),
            ..Self::default()
        }
    }

    /// Watch every key starting with `prefix`.
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> Self {
        let key = prefix.into();
        let range_end = prefix_range_end(&key);
        Self {
            key,
            range_end,
            ..Self::default()
        }
    }

    /// Start at `revision` (inclusive) instead of now.
    pub fn from_revision(mut self, revision: i64) -> Self {
        self.start_revision = revision;
        self
    }

    /// Ask for each event's previous key-value.
    pub fn with_prev_kv(mut self) -> Self {
        self.prev_kv = true;
        self
    }

    /// Ask for periodic progress notifications.
    pub fn with_progress_notify(mut self) -> Self {
        self.progress_notify = true;
        self
    }
}

/// The events of one or more whole revisions, as one watch response carries them.
///
/// A batch without events is a progress notification: every change up to `revision` has been
/// delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchBatch {
    /// The store revision from the response header.
    pub revision: i64,
    /// Events in revision order; all events of one revision are in the same batch.
    pub events: Vec<Event>,
}

/// One item of a watch: a batch, or the error that ended the watch.
pub type WatchItem = KvResult<WatchBatch>;

/// A running watch: a stream of [`WatchBatch`]es.
///
/// The stream ends after an `Err` item (`KvError::Compacted` when the resume point was compacted,
/// `KvError::WatchCanceled` when the server canceled the watch). Transport failures are not items:
/// implementations reconnect and resume from the last delivered revision + 1 on their own.
/// Dropping the stream cancels the watch: producers notice through `Sender::closed()`.
pub struct WatchStream {
    rx: tokio::sync::mpsc::Receiver<WatchItem>,
    created_revision: i64,
}

impl WatchStream {
    /// Wrap the receiving end of a producer; `created_revision` = the header revision when the watch
    /// was created on the server.
    pub fn new(rx: tokio::sync::mpsc::Receiver<WatchItem>, created_revision: i64) -> Self {
        Self {
            rx,
            created_revision,
        }
    }

    /// The store revision when the watch was created (events after it are delivered when the spec
    /// started "now").
    pub fn created_revision(&self) -> i64 {
        self.created_revision
    }

    /// The next batch; `None` once the watch has ended.
    pub async fn next(&mut self) -> Option<WatchItem> {
        self.rx.recv().await
    }
}

impl futures::Stream for WatchStream {
    type Item = WatchItem;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

impl std::fmt::Debug for WatchStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchStream")
            .field("created_revision", &self.created_revision)
            .finish_non_exhaustive()
    }
}

/// An etcd-compatible KV, watch and lease client.
///
/// Every method returns the store revision from the response header where etcd has one.
pub trait KvClient: Send + Sync + 'static {
    /// Read a key or range.
    fn range(&self, req: RangeRequest) -> BoxFuture<'_, KvResult<Reply<RangeResponse>>>;
    /// Write one key.
    fn put(&self, req: PutRequest) -> BoxFuture<'_, KvResult<Reply<PutResponse>>>;
    /// Delete a key or range.
    fn delete_range(
        &self,
        req: DeleteRangeRequest,
    ) -> BoxFuture<'_, KvResult<Reply<DeleteRangeResponse>>>;
    /// Run a transaction: compares, then the success or failure branch, atomically.
    fn txn(&self, req: TxnRequest) -> BoxFuture<'_, KvResult<Reply<TxnResponse>>>;
    /// Compact history at or below `revision`.
    fn compact(&self, revision: i64) -> BoxFuture<'_, KvResult<Reply<()>>>;
    /// Start a watch; resolves once the server has created it (so later writes are seen).
    fn watch(&self, spec: WatchSpec) -> BoxFuture<'_, KvResult<WatchStream>>;
    /// Grant a lease of `ttl` seconds; `id` 0 lets the server choose.
    fn lease_grant(&self, ttl: i64, id: i64) -> BoxFuture<'_, KvResult<Reply<LeaseGrant>>>;
    /// Revoke a lease, deleting every key attached to it.
    fn lease_revoke(&self, id: i64) -> BoxFuture<'_, KvResult<Reply<()>>>;
    /// Renew a lease once; a lease that no longer exists is `KvError::NotFound`.
    fn lease_keep_alive_once(&self, id: i64) -> BoxFuture<'_, KvResult<Reply<LeaseKeepAlive>>>;
    /// Remaining time of a lease (TTL -1 when it does not exist), optionally with its keys.
    fn lease_time_to_live(
        &self,
        id: i64,
        keys: bool,
    ) -> BoxFuture<'_, KvResult<Reply<LeaseTimeToLive>>>;
}

/// Convenience calls built on [`KvClient`], for any implementation (including `dyn KvClient`).
pub trait KvClientExt: KvClient {
    /// Linearizable read of one key.
    fn get(
        &self,
        key: impl Into<Vec<u8>>,
    ) -> impl Future<Output = KvResult<Reply<Option<KeyValue>>>> + Send {
        let req = RangeRequest {
            key: key.into(),
            ..RangeRequest::default()
        };
        async move {
            let r = self.range(req).await?;
            Ok(Reply {
                revision: r.revision,
                body: r.body.kvs.into_iter().next(),
            })
        }
    }

    /// Linearizable read of every key under `prefix`, in key order.
    fn get_prefix(
        &self,
        prefix: impl Into<Vec<u8>>,
    ) -> impl Future<Output = KvResult<Reply<Vec<KeyValue>>>> + Send {
        let key = prefix.into();
        let range_end = prefix_range_end(&key);
        let req = RangeRequest {
            key,
            range_end,
            ..RangeRequest::default()
        };
        async move {
            let r = self.range(req).await?;
            Ok(Reply {
                revision: r.revision,
                body: r.body.kvs,
            })
        }
    }

    /// Put `value` at `key`, attached to `lease` (0 = none).
    fn put_kv(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        lease: i64,
    ) -> impl Future<Output = KvResult<Reply<PutResponse>>> + Send {
        self.put(PutRequest {
            key: key.into(),
            value: value.into(),
            lease,
            ..PutRequest::default()
        })
    }

    /// Delete one key; the reply says how many keys were deleted (0 or 1).
    fn delete_key(
        &self,
        key: impl Into<Vec<u8>>,
    ) -> impl Future<Output = KvResult<Reply<DeleteRangeResponse>>> + Send {
        self.delete_range(DeleteRangeRequest {
            key: key.into(),
            ..DeleteRangeRequest::default()
        })
    }
}

impl<T: KvClient + ?Sized> KvClientExt for T {}

/// The `range_end` that selects every key starting with `prefix` (etcd's `GetPrefixRangeEnd`).
///
/// An empty prefix, or one made only of 0xff bytes, selects every key from `prefix` on (`[0]`).
pub fn prefix_range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(&last) = end.last() {
        if last < 0xff {
            if let Some(b) = end.last_mut() {
                *b = last + 1;
            }
            return end;
        }
        end.pop();
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end() {
        assert_eq!(prefix_range_end(b"abc"), b"abd".to_vec());
        assert_eq!(prefix_range_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_range_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_range_end(b""), vec![0]);
    }

    #[test]
    fn dyn_client_is_object_safe() {
        fn takes(_c: Option<std::sync::Arc<dyn KvClient>>) {}
        takes(None);
    }
}
