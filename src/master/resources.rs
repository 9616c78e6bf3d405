//! Resources (crawl tasks) in the store: their JSON, their keys, and the fenced writes.
//!
//! A resource lives at `/resources/<name>` as the Go original's JSON, exactly:
//! `{"ID":"1602250527540776960","Name":"douban_book_list","AssignedNode":"go.micro.server.worker-2|192.168.0.107:9089","CreationTime":1670841268798763000}`.
//!
//! Every write is one Txn whose first compare is the writer's [`Fence`] (its election key still
//! exists with the create revision it won with, etcd's `concurrency` leader-key guard), so a
//! deposed or paused leader can never overwrite its successor's decisions. The failure branch reads
//! the election key back, which tells in the same round trip whether the guard or the resource's
//! own condition failed.
//!
//! The success branch also re-puts the writer's own election key with `ignore_value` and
//! `ignore_lease` (value, lease and create revision unchanged): a writer tag. The key's mod
//! revision is then the revision of the leader's latest write, and the event history shows, at the
//! revision of every resource write, a PUT of the writer's election key, so a checker can verify
//! that the writer was the leader (not merely that some leader existed). Nothing else watches
//! for such a PUT as a change: observers compare the leader's key, create revision and value.

use std::sync::Arc;

use crate::client::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, KeyValue, KvClient, KvClientExt,
    KvError, PutRequest, RangeRequest, RequestOp, ResponseOp, TxnRequest,
};
use crate::coord::election::Leadership;
use crate::model::resource::{task_prefix, Resource, RESOURCE_PREFIX};

/// The key of a resource: `/resources/<name>`.
pub fn resource_key(name: &str) -> String {
    format!("{RESOURCE_PREFIX}{name}")
}

/// Why a resource name is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Empty or only whitespace.
    #[error("resource name is empty")]
    Empty,
    /// Contains `/`, which would nest it under another resource's key.
    #[error("resource name must not contain '/': {0:?}")]
    Slash(String),
    /// Contains a control character, or has leading/trailing whitespace.
    #[error("resource name has control characters or surrounding spaces: {0:?}")]
    Unprintable(String),
    /// Longer than [`MAX_NAME_BYTES`] (it names keys and a results file).
    #[error("resource name is longer than {MAX_NAME_BYTES} bytes ({0} bytes)")]
    TooLong(usize),
}

/// Longest resource (task) name: it is part of store keys and of a results file name.
pub const MAX_NAME_BYTES: usize = 128;

/// Check a resource name from the API or the config.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    if name.trim().is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(NameError::TooLong(name.len()));
    }
    if name.contains('/') {
        return Err(NameError::Slash(name.to_string()));
    }
    if name.trim() != name || name.chars().any(char::is_control) {
        return Err(NameError::Unprintable(name.to_string()));
    }
    Ok(())
}

/// The guard of a leader's writes: `CREATE(election key) == create revision`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    /// The leader's election key, `<prefix>/<lease hex>`.
    pub key: Vec<u8>,
    /// The create revision it won with.
    pub create_revision: i64,
}

impl Fence {
    /// A fence for an election key and its create revision.
    pub fn new(key: impl Into<Vec<u8>>, create_revision: i64) -> Self {
        Self {
            key: key.into(),
            create_revision,
        }
    }

    /// The fence of a won election.
    pub fn of(leadership: &Leadership) -> Self {
        Self::new(leadership.key().to_vec(), leadership.create_revision())
    }

    /// The Txn compare.
    pub fn compare(&self) -> Compare {
        Compare {
            result: CompareResult::Equal,
            target: CompareTarget::Create(self.create_revision),
            key: self.key.clone(),
            range_end: Vec::new(),
        }
    }

    /// The writer tag: a Put of the election key keeping its value and lease, so the key's mod
    /// revision (and the event history) names the writer of the txn's revision. Only valid in a
    /// txn branch taken after [`Fence::compare`] held (the key must exist).
    pub fn tag(&self) -> RequestOp {
        RequestOp::Put(PutRequest {
            key: self.key.clone(),
            ignore_value: true,
            ignore_lease: true,
            ..PutRequest::default()
        })
    }

    /// Does the election key read back in a failed txn still carry this fence?
    fn holds(&self, kv: Option<&KeyValue>) -> bool {
        kv.is_some_and(|kv| kv.create_revision == self.create_revision)
    }
}

/// Why a fenced write was not made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// The fence failed: the writer is no longer the leader. Nothing was written.
    #[error("fenced: this master is no longer the leader")]
    Fenced,
    /// Create: the resource already exists.
    #[error("resource {0} already exists")]
    Exists(String),
    /// Update or delete: the resource is gone or was changed by someone else meanwhile.
    #[error("resource {0} not found or changed")]
    Missing(String),
    /// The store call failed (for a timeout, the write may or may not have been applied).
    #[error(transparent)]
    Kv(#[from] KvError),
}

/// A resource together with the store metadata of its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredResource {
    /// The decoded value.
    pub resource: Resource,
    /// The key's mod revision (the compare of a later update).
    pub mod_revision: i64,
}

/// Resource reads and fenced writes on a KV client.
#[derive(Clone)]
pub struct ResourceStore {
    client: Arc<dyn KvClient>,
}

impl std::fmt::Debug for ResourceStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResourceStore").finish_non_exhaustive()
    }
}

/// Decode one key-value under the prefix; `None` (logged) for what is not a resource.
fn decode_kv(kv: &KeyValue) -> Option<StoredResource> {
    let key = String::from_utf8_lossy(&kv.key);
    let name = key.strip_prefix(RESOURCE_PREFIX)?;
    if name.contains('/') {
        // E.g. the Go lesson's election keys under /resources/election/: not a resource.
        tracing::debug!(%key, "skipping nested key under the resource prefix");
        return None;
    }
    match Resource::decode(&kv.value) {
        Ok(mut r) => {
            if r.name != name {
                tracing::warn!(%key, stored_name = %r.name, "resource name differs from its key; using the key");
                r.name = name.to_string();
            }
            Some(StoredResource {
                resource: r,
                mod_revision: kv.mod_revision,
            })
        }
        Err(e) => {
            tracing::warn!(%key, error = %e, "skipping undecodable resource value");
            None
        }
    }
}

impl ResourceStore {
    /// Resources on this client.
    pub fn new(client: Arc<dyn KvClient>) -> Self {
        Self { client }
    }

    /// Every resource, in name order, and the revision it was read at. Values that are not
    /// resources are skipped (and logged), never fatal.
    pub async fn load(&self) -> Result<(Vec<StoredResource>, i64), KvError> {
        let reply = self.client.get_prefix(RESOURCE_PREFIX).await?;
        Ok((
            reply.body.iter().filter_map(decode_kv).collect(),
            reply.revision,
        ))
    }

    /// One resource, `None` when absent (or not decodable).
    pub async fn get(&self, name: &str) -> Result<Option<StoredResource>, KvError> {
        let reply = self.client.get(resource_key(name)).await?;
        Ok(reply.body.as_ref().and_then(decode_kv))
    }

    /// Store a new resource; fails with `Exists` if its key is taken.
    pub async fn create(&self, fence: &Fence, r: &Resource) -> Result<i64, WriteError> {
        let key = resource_key(&r.name).into_bytes();
        let cond = Compare {
            result: CompareResult::Equal,
            target: CompareTarget::Create(0),
            key: key.clone(),
            range_end: Vec::new(),
        };
        let op = RequestOp::Put(PutRequest {
            key: key.clone(),
            value: r.encode(),
            ..PutRequest::default()
        });
        self.guarded(fence, cond, op)
            .await
            .map_err(|e| e.or_condition(WriteError::Exists(r.name.clone())))
    }

    /// Rewrite a resource, provided it still has `mod_revision` (nobody changed or deleted it since
    /// it was read).
    pub async fn update(
        &self,
        fence: &Fence,
        r: &Resource,
        mod_revision: i64,
    ) -> Result<i64, WriteError> {
        let key = resource_key(&r.name).into_bytes();
        let cond = Compare {
            result: CompareResult::Equal,
            target: CompareTarget::Mod(mod_revision),
            key: key.clone(),
            range_end: Vec::new(),
        };
        let op = RequestOp::Put(PutRequest {
            key: key.clone(),
            value: r.encode(),
            ..PutRequest::default()
        });
        self.guarded(fence, cond, op)
            .await
            .map_err(|e| e.or_condition(WriteError::Missing(r.name.clone())))
    }

    /// Delete a resource and its task's key space; fails with `Missing` when there is none.
    pub async fn delete(&self, fence: &Fence, name: &str) -> Result<i64, WriteError> {
        let key = resource_key(name).into_bytes();
        let cond = Compare {
            result: CompareResult::NotEqual,
            target: CompareTarget::Create(0),
            key: key.clone(),
            range_end: Vec::new(),
        };
        let op = RequestOp::DeleteRange(DeleteRangeRequest {
            key: key.clone(),
            ..DeleteRangeRequest::default()
        });
        // Every write under it is guarded by the resource key, so nothing lands there after.
        let space = task_prefix(name).into_bytes();
        let state = RequestOp::DeleteRange(DeleteRangeRequest {
            range_end: crate::client::prefix_range_end(&space),
            key: space,
            ..DeleteRangeRequest::default()
        });
        self.guarded_ops(fence, vec![cond], vec![op, state])
            .await
            .map_err(|e| e.or_condition(WriteError::Missing(name.to_string())))
    }

    /// `if fence && cond then (op, tag) else (read election key)`; the revision of the write on
    /// success.
    async fn guarded(&self, fence: &Fence, cond: Compare, op: RequestOp) -> Result<i64, Guarded> {
        self.guarded_ops(fence, vec![cond], vec![op]).await
    }

    /// A fenced txn of the caller's own: `if fence && conds then (ops, tag)`; `on_condition` when
    /// one of `conds` failed.
    pub async fn write(
        &self,
        fence: &Fence,
        conds: Vec<Compare>,
        ops: Vec<RequestOp>,
        on_condition: WriteError,
    ) -> Result<i64, WriteError> {
        self.guarded_ops(fence, conds, ops)
            .await
            .map_err(|e| e.or_condition(on_condition))
    }

    /// [`Self::guarded`] with several conditions and operations.
    async fn guarded_ops(
        &self,
        fence: &Fence,
        conds: Vec<Compare>,
        mut ops: Vec<RequestOp>,
    ) -> Result<i64, Guarded> {
        ops.push(fence.tag());
        let mut compare = vec![fence.compare()];
        compare.extend(conds);
        let txn = TxnRequest {
            compare,
            success: ops,
            failure: vec![RequestOp::Range(RangeRequest {
                key: fence.key.clone(),
                ..RangeRequest::default()
            })],
        };
        let reply = self.client.txn(txn).await.map_err(Guarded::Kv)?;
        if reply.body.succeeded {
            return Ok(reply.revision);
        }
        let election_kv = match reply.body.responses.first() {
            Some(ResponseOp::Range(r)) => r.kvs.first(),
            _ => None,
        };
        if fence.holds(election_kv) {
            Err(Guarded::Condition)
        } else {
            Err(Guarded::Fenced)
        }
    }
}

/// Outcome of a failed guarded txn, before the caller names the failed condition.
enum Guarded {
    Fenced,
    Condition,
    Kv(KvError),
}

impl Guarded {
    fn or_condition(self, cond: WriteError) -> WriteError {
        match self {
            Guarded::Fenced => WriteError::Fenced,
            Guarded::Condition => cond,
            Guarded::Kv(e) => WriteError::Kv(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(validate_name(""), Err(NameError::Empty));
        assert_eq!(validate_name("  "), Err(NameError::Empty));
        assert!(matches!(validate_name("a/b"), Err(NameError::Slash(_))));
        assert!(matches!(
            validate_name(" a"),
            Err(NameError::Unprintable(_))
        ));
        assert!(matches!(
            validate_name("a\nb"),
            Err(NameError::Unprintable(_))
        ));
        assert_eq!(validate_name("douban_book_list"), Ok(()));
        assert_eq!(validate_name("豆瓣 读书"), Ok(()));
    }

    #[test]
    fn undecodable_values_are_skipped() {
        let kv = |k: &str, v: &str| KeyValue {
            key: k.as_bytes().to_vec(),
            value: v.as_bytes().to_vec(),
            mod_revision: 7,
            ..KeyValue::default()
        };
        assert!(decode_kv(&kv("/resources/election/3f35", "master2-x")).is_none());
        assert!(decode_kv(&kv("/resources/x", "not json")).is_none());
        let ok = decode_kv(&kv("/resources/x", r#"{"ID":"1","Name":"y"}"#)).unwrap();
        assert_eq!(ok.resource.name, "x");
        assert_eq!(ok.mod_revision, 7);
    }
}
