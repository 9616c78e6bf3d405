//! The key protocol of etcd's Go `clientv3/concurrency` package, written once on any
//! [`KvClient`]: the master's [`Election`](super::Election) and the store's Election and Lock
//! services all run it, so their candidates queue together.
//!
//! A candidate is the key `<prefix><lease id in lowercase hex>`, put with
//! `Txn(if CREATE(key) == 0 then Put(key, value, lease) else Get(key))`; its create revision is
//! its place in the queue. The leader (lock holder) is the key under the prefix with the smallest
//! create revision; a candidate waits until no key under the prefix has a smaller one, watching
//! the deletion of the last-created predecessor. Proclaim is `Txn(if CREATE(key) == rev then
//! Put)`, resign is `Txn(if CREATE(key) == rev then Delete)`.
//!
//! Prefixes are raw bytes ending as the caller wants (etcd's services append `/` to any name);
//! the lease is explicit (a session's, or the one a gRPC request names).

use std::sync::Arc;

use tokio::sync::watch;

use super::error::ElectionError;
use crate::client::keepalive::wait_lost;
use crate::client::{
    prefix_range_end, Compare, CompareResult, CompareTarget, DeleteRangeRequest, EventType,
    KeyValue, KvClient, KvError, PutRequest, RangeRequest, RequestOp, ResponseOp, SortOrder,
    SortTarget, TxnRequest, WatchSpec,
};

/// `<prefix><lease in lowercase hex>`, the lease formatted like Go's `%x` of an int64 (a
/// negative id keeps its sign, as etcd's keys do).
pub(crate) fn candidate_key(prefix: &[u8], lease: i64) -> Vec<u8> {
    let hex = if lease < 0 {
        format!("-{:x}", lease.unsigned_abs())
    } else {
        format!("{lease:x}")
    };
    let mut key = prefix.to_vec();
    key.extend_from_slice(hex.as_bytes());
    key
}

/// `CREATE(key) == rev`: holds while the candidate keeps its place (the fencing compare).
pub(crate) fn create_equals(key: &[u8], rev: i64) -> Compare {
    Compare {
        result: CompareResult::Equal,
        target: CompareTarget::Create(rev),
        key: key.to_vec(),
        range_end: Vec::new(),
    }
}

/// The key under `prefix` created first: the leader (etcd's `WithFirstCreate`).
fn first_created(prefix: &[u8]) -> RangeRequest {
    RangeRequest {
        key: prefix.to_vec(),
        range_end: prefix_range_end(prefix),
        limit: 1,
        sort_order: SortOrder::Ascend,
        sort_target: SortTarget::Create,
        ..RangeRequest::default()
    }
}

/// The first kv of a range response, if the op is one.
fn first_kv(op: Option<ResponseOp>) -> Option<KeyValue> {
    match op {
        Some(ResponseOp::Range(r)) => r.kvs.into_iter().next(),
        _ => None,
    }
}

/// A candidate that reached the head of its queue.
#[derive(Debug)]
pub(crate) struct Won {
    /// `<prefix><lease hex>`.
    pub(crate) key: Vec<u8>,
    /// The key's create revision: its place in the queue and the fencing token.
    pub(crate) create_revision: i64,
    /// The revision after the txn that queued the candidate.
    pub(crate) enqueued_at: i64,
    /// The revision at which the candidate was seen at the head of the queue.
    pub(crate) revision: i64,
}

/// Queue up under `prefix` with `lease` and wait for the turn: etcd's `Election.Campaign` when
/// `value` is `Some` (a different value under an already queued key is proclaimed), its
/// `Mutex.Lock` when `None` (an empty value; a queued key is left as it is).
///
/// Fails with `SessionExpired` when the candidate's key goes (its lease ended) or `lost` (a
/// session's signal) fires before the turn comes. A failure, or dropping the future, withdraws
/// the candidacy, as etcd resigns or unlocks on a cancelled wait.
pub(crate) async fn campaign(
    client: &Arc<dyn KvClient>,
    prefix: &[u8],
    lease: i64,
    value: Option<&[u8]>,
    lost: Option<watch::Receiver<bool>>,
) -> Result<Won, ElectionError> {
    let key = candidate_key(prefix, lease);
    // The head of the queue is read in the same txn (as etcd's mutex does), saving a round trip
    // for an uncontended candidate.
    let head = RequestOp::Range(first_created(prefix));
    let txn = TxnRequest {
        compare: vec![create_equals(&key, 0)],
        success: vec![
            RequestOp::Put(PutRequest {
                key: key.clone(),
                value: value.unwrap_or_default().to_vec(),
                lease,
                ..PutRequest::default()
            }),
            head.clone(),
        ],
        failure: vec![
            RequestOp::Range(RangeRequest {
                key: key.clone(),
                ..RangeRequest::default()
            }),
            head,
        ],
    };
    let reply = client.txn(txn).await?;
    let enqueued_at = reply.revision;
    let succeeded = reply.body.succeeded;
    let mut responses = reply.body.responses.into_iter();
    let mine = first_kv(responses.next());
    let head = first_kv(responses.next());
    // From here on a failure or an abandoned call withdraws the candidacy.
    let mut guard = Withdraw {
        client: Some(client.clone()),
        key: key.clone(),
        rev: enqueued_at,
    };
    let create_revision = if succeeded {
        enqueued_at
    } else {
        // Already queued with this lease: keep the place in the queue.
        let kv = mine.ok_or(ElectionError::SessionExpired)?;
        guard.rev = kv.create_revision;
        if let Some(value) = value.filter(|v| *v != kv.value.as_slice()) {
            proclaim(&**client, &key, kv.create_revision, lease, value).await?;
        }
        kv.create_revision
    };
    let revision = if head.is_some_and(|kv| kv.create_revision == create_revision) {
        enqueued_at
    } else {
        wait_turn(&**client, prefix, &key, create_revision, lost).await?
    };
    guard.client = None;
    Ok(Won {
        key,
        create_revision,
        enqueued_at,
        revision,
    })
}

/// Wait until no key under `prefix` was created before `my_rev`; returns the revision that showed
/// it. `SessionExpired` when `my_key` (created at `my_rev`) goes first or `lost` fires.
async fn wait_turn(
    client: &dyn KvClient,
    prefix: &[u8],
    my_key: &[u8],
    my_rev: i64,
    lost: Option<watch::Receiver<bool>>,
) -> Result<i64, ElectionError> {
    loop {
        // One read for both questions, so they are answered at the same revision.
        let reply = client
            .txn(TxnRequest {
                compare: Vec::new(),
                success: vec![
                    RequestOp::Range(RangeRequest {
                        key: my_key.to_vec(),
                        keys_only: true,
                        ..RangeRequest::default()
                    }),
                    // The last-created key before ours (etcd: WithLastCreate + WithMaxCreateRev).
                    RequestOp::Range(RangeRequest {
                        key: prefix.to_vec(),
                        range_end: prefix_range_end(prefix),
                        limit: 1,
                        keys_only: true,
                        sort_order: SortOrder::Descend,
                        sort_target: SortTarget::Create,
                        max_create_revision: my_rev - 1,
                        ..RangeRequest::default()
                    }),
                ],
                failure: Vec::new(),
            })
            .await?;
        let mut responses = reply.body.responses.into_iter();
        let mine = first_kv(responses.next());
        if mine.is_none_or(|kv| kv.create_revision != my_rev) {
            return Err(ElectionError::SessionExpired);
        }
        // Checked by hand too: a max create revision of 0 means "no limit" to etcd.
        let pred = first_kv(responses.next()).filter(|kv| kv.create_revision < my_rev);
        let Some(pred) = pred else {
            return Ok(reply.revision);
        };
        // Either deletion changes the answer; the next read tells which.
        tokio::select! {
            r = wait_delete(client, &pred.key, reply.revision) => r?,
            r = wait_delete(client, my_key, reply.revision) => r?,
            () = until_lost(lost.clone()) => return Err(ElectionError::SessionExpired),
        }
    }
}

/// Resolves when `lost` fires; never without one.
async fn until_lost(lost: Option<watch::Receiver<bool>>) {
    match lost {
        Some(rx) => wait_lost(rx).await,
        None => std::future::pending().await,
    }
}

/// Wait for the deletion of `key`, which existed at `revision`.
pub(crate) async fn wait_delete(
    client: &dyn KvClient,
    key: &[u8],
    revision: i64,
) -> Result<(), ElectionError> {
    let mut from = revision + 1;
    loop {
        let mut stream = client
            .watch(WatchSpec::key(key.to_vec()).from_revision(from))
            .await?;
        while let Some(item) = stream.next().await {
            match item {
                Ok(batch) => {
                    if batch.events.iter().any(|e| e.kind == EventType::Delete) {
                        return Ok(());
                    }
                }
                Err(KvError::Compacted { .. }) => break,
                Err(e) => return Err(e.into()),
            }
        }
        // The watch ended (compacted): look again whether the key still exists.
        let r = client
            .range(RangeRequest {
                key: key.to_vec(),
                ..RangeRequest::default()
            })
            .await?;
        if r.body.kvs.is_empty() {
            return Ok(());
        }
        from = r.revision + 1;
    }
}

/// Publish `value` under a candidate's key without losing its place; `NotLeader` once the key
/// is gone or replaced. Returns the revision after the write.
pub(crate) async fn proclaim(
    client: &dyn KvClient,
    key: &[u8],
    rev: i64,
    lease: i64,
    value: &[u8],
) -> Result<i64, ElectionError> {
    let txn = TxnRequest {
        compare: vec![create_equals(key, rev)],
        success: vec![RequestOp::Put(PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            lease,
            ..PutRequest::default()
        })],
        failure: Vec::new(),
    };
    let reply = client.txn(txn).await?;
    if reply.body.succeeded {
        Ok(reply.revision)
    } else {
        Err(ElectionError::NotLeader)
    }
}

/// Delete a candidate's key if it is still the one created at `rev` (a stale resign is a no-op,
/// as in etcd). Returns the revision after the txn.
pub(crate) async fn resign(
    client: &dyn KvClient,
    key: &[u8],
    rev: i64,
) -> Result<i64, ElectionError> {
    let txn = TxnRequest {
        compare: vec![create_equals(key, rev)],
        success: vec![RequestOp::DeleteRange(DeleteRangeRequest {
            key: key.to_vec(),
            ..DeleteRangeRequest::default()
        })],
        failure: Vec::new(),
    };
    Ok(client.txn(txn).await?.revision)
}

/// The leader under `prefix` (`None` when nobody campaigns) and the revision it was read at.
pub(crate) async fn leader(
    client: &dyn KvClient,
    prefix: &[u8],
) -> Result<(Option<KeyValue>, i64), ElectionError> {
    let r = client.range(first_created(prefix)).await?;
    Ok((r.body.kvs.into_iter().next(), r.revision))
}

/// Deletes a candidate's key (guarded by its create revision) if dropped armed: `campaign`
/// failed or was abandoned before it won.
struct Withdraw {
    /// `None` once disarmed.
    client: Option<Arc<dyn KvClient>>,
    key: Vec<u8>,
    rev: i64,
}

impl Drop for Withdraw {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let key = std::mem::take(&mut self.key);
        let rev = self.rev;
        handle.spawn(async move {
            if let Err(e) = resign(&*client, &key, rev).await {
                tracing::warn!(error = %e, "election: withdrawing an abandoned candidacy failed");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_etcd_layout() {
        assert_eq!(candidate_key(b"e/", 0x694d7a1b2c), b"e/694d7a1b2c".to_vec());
        assert_eq!(candidate_key(b"e/", -1), b"e/-1".to_vec());
        assert_eq!(candidate_key(b"\xff/", 16), b"\xff/10".to_vec());
    }
}
