//! The per-task frontier (pending requests) and dedup set (normalised URLs), and their
//! checkpoints in the store, so that a worker taking a task over resumes where the last one
//! stopped instead of starting again.
//!
//! Store layout, under `/crawler/tasks/<task>/`:
//! - `checkpoint/<generation>/<chunk>`: the bincode-encoded [`Snapshot`] cut into chunks of at
//!   most [`CHUNK_BYTES`] (far below etcd's 1.5 MiB request limit). A generation is unique per
//!   writer and save, so a stale writer can never overwrite chunks that a manifest points to.
//! - `manifest`: JSON [`Manifest`] naming the current generation, its size and checksum.
//! - `done`: JSON [`DoneMarker`] once the task has finished; a finished task is not run again.
//!
//! Every manifest or done write is a txn guarded by the resource key still holding the value
//! this run was started for ([`OwnerGuard`]): a worker the task was moved away from (paused,
//! partitioned) cannot overwrite the new owner's progress. The same txn deletes every other
//! generation's chunks, so orphans of a crashed save do not accumulate.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use url::Url;

use crate::kv_client::{
    prefix_range_end, Compare, CompareResult, CompareTarget, DeleteRangeRequest, KvClient,
    KvClientExt, KvError, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use crate::master::Resource;

/// Root of the per-task key spaces.
pub const TASKS_PREFIX: &str = "/crawler/tasks/";
/// Largest checkpoint chunk.
pub const CHUNK_BYTES: usize = 256 * 1024;

/// One pending fetch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Absolute URL.
    pub url: String,
    /// Link depth (seeds are 0).
    pub depth: u32,
    /// The rule named by the link that found it.
    pub rule: Option<String>,
}

/// The normalised form of a URL used for dedup: no fragment, default port dropped, host
/// lower-cased (both by `url`), query pairs sorted, an empty query dropped.
pub fn normalise(u: &Url) -> String {
    let mut u = u.clone();
    u.set_fragment(None);
    if let Some(q) = u.query() {
        if q.is_empty() {
            u.set_query(None);
        } else {
            let mut pairs: Vec<&str> = q.split('&').filter(|p| !p.is_empty()).collect();
            pairs.sort_unstable();
            let q = pairs.join("&");
            u.set_query(if q.is_empty() { None } else { Some(&q) });
        }
    }
    u.to_string()
}

/// Counters carried across workers in checkpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Pages fetched and processed.
    pub pages: u64,
    /// Items written.
    pub items: u64,
    /// Requests that failed for good.
    pub errors: u64,
}

/// Dedup set and pending queue of one task.
#[derive(Clone, Debug, Default)]
pub struct Frontier {
    seen: HashSet<String>,
    pending: VecDeque<Request>,
    reload: bool,
}

impl Frontier {
    /// An empty frontier; with `reload`, URLs are queued again even when seen before.
    pub fn new(reload: bool) -> Self {
        Self {
            reload,
            ..Self::default()
        }
    }

    /// Queue `url` unless already seen (or with `reload`). True when queued.
    pub fn push(&mut self, url: &Url, depth: u32, rule: Option<String>) -> bool {
        let key = normalise(url);
        let new = self.seen.insert(key.clone());
        if !new && !self.reload {
            return false;
        }
        self.pending.push_back(Request {
            url: key,
            depth,
            rule,
        });
        true
    }

    /// The next request (stays queued until [`Frontier::pop`], so a checkpoint taken while it is
    /// in flight still holds it).
    pub fn front(&self) -> Option<&Request> {
        self.pending.front()
    }

    /// Drop the front request (it has been processed).
    pub fn pop(&mut self) -> Option<Request> {
        self.pending.pop_front()
    }

    /// Pending requests.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Distinct URLs seen.
    pub fn seen_len(&self) -> usize {
        self.seen.len()
    }

    /// Record `url` as seen without queueing it (the target of a followed redirect).
    pub fn mark_seen(&mut self, url: &Url) {
        self.seen.insert(normalise(url));
    }

    /// Whether `url` was seen.
    pub fn has_seen(&self, url: &Url) -> bool {
        self.seen.contains(&normalise(url))
    }

    /// The state to checkpoint.
    pub fn snapshot(&self, resource_id: &str, counters: Counters) -> Snapshot {
        let mut seen: Vec<String> = self.seen.iter().cloned().collect();
        seen.sort_unstable();
        Snapshot {
            resource_id: resource_id.to_string(),
            seen,
            pending: self.pending.iter().cloned().collect(),
            counters,
        }
    }

    /// Rebuild from a checkpoint.
    pub fn restore(s: Snapshot, reload: bool) -> Self {
        Self {
            seen: s.seen.into_iter().collect(),
            pending: s.pending.into(),
            reload,
        }
    }
}

/// A checkpoint's content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The resource (run) it belongs to: a resource recreated under the same name starts over.
    pub resource_id: String,
    /// Normalised URLs seen.
    pub seen: Vec<String>,
    /// Pending requests, in order.
    pub pending: Vec<Request>,
    /// Counters so far.
    pub counters: Counters,
}

/// The pointer to the current checkpoint (JSON, readable with `etcdctl`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Resource id of the run.
    pub resource_id: String,
    /// Generation whose chunks hold the snapshot.
    pub generation: String,
    /// Number of chunks.
    pub chunks: u32,
    /// Encoded size.
    pub bytes: u64,
    /// FNV-1a 64 of the encoded snapshot.
    pub checksum: u64,
    /// Counters at the checkpoint.
    pub pages: u64,
    /// Items at the checkpoint.
    pub items: u64,
    /// Errors at the checkpoint.
    pub errors: u64,
    /// Pending requests at the checkpoint.
    pub pending: u64,
    /// URLs seen at the checkpoint.
    pub seen: u64,
    /// When it was written, unix milliseconds.
    pub time_unix_ms: u64,
    /// Who wrote it (worker node id).
    pub writer: String,
}

/// The mark of a finished task (JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoneMarker {
    /// Resource id of the run that finished.
    pub resource_id: String,
    /// Final counters.
    pub pages: u64,
    /// Items written in all.
    pub items: u64,
    /// Requests failed in all.
    pub errors: u64,
    /// When, unix milliseconds.
    pub time_unix_ms: u64,
    /// Who finished it.
    pub writer: String,
}

/// Why a checkpoint operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The store call failed.
    #[error("store: {0}")]
    Kv(#[from] KvError),
    /// The resource is no longer assigned to this run (moved, deleted, recreated).
    #[error("the resource is no longer assigned to this run")]
    NotOwner,
    /// A stored checkpoint is unreadable (ignored: the run starts from its seeds).
    #[error("checkpoint unreadable: {0}")]
    Corrupt(String),
}

/// What a run's store writes are guarded by: the resource key holding exactly the value the run
/// was started for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnerGuard {
    key: Vec<u8>,
    value: Vec<u8>,
}

impl OwnerGuard {
    fn compares(&self) -> Vec<Compare> {
        vec![
            // A missing key has version 0; and a value compare on a missing key fails in etcd.
            Compare {
                result: CompareResult::Greater,
                target: CompareTarget::Version(0),
                key: self.key.clone(),
                range_end: Vec::new(),
            },
            Compare {
                result: CompareResult::Equal,
                target: CompareTarget::Value(self.value.clone()),
                key: self.key.clone(),
                range_end: Vec::new(),
            },
        ]
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Checkpoint, resume and done-marking of one task in the store.
#[derive(Clone)]
pub struct CheckpointStore {
    client: Arc<dyn KvClient>,
    task: String,
    resource_key: String,
    writer: String,
    /// Unique per store object (shared by its clones): generations are `<nonce>-<seq>`.
    nonce: u64,
    seq: Arc<AtomicU64>,
}

impl std::fmt::Debug for CheckpointStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointStore")
            .field("task", &self.task)
            .finish_non_exhaustive()
    }
}

impl CheckpointStore {
    /// The store of `task`, whose resource lives at `resource_key`; `writer` names this worker.
    pub fn new(
        client: Arc<dyn KvClient>,
        task: &str,
        resource_key: String,
        writer: String,
    ) -> Self {
        Self {
            client,
            task: task.to_string(),
            resource_key,
            writer,
            nonce: rand::random(),
            seq: Arc::new(AtomicU64::new(0)),
        }
    }

    /// `/crawler/tasks/<task>/`.
    pub fn prefix(task: &str) -> String {
        format!("{TASKS_PREFIX}{task}/")
    }

    /// The manifest key.
    pub fn manifest_key(task: &str) -> String {
        format!("{}manifest", Self::prefix(task))
    }

    /// The done key.
    pub fn done_key(task: &str) -> String {
        format!("{}done", Self::prefix(task))
    }

    fn chunks_prefix(&self) -> String {
        format!("{}checkpoint/", Self::prefix(&self.task))
    }

    /// Read the resource key and check it is still `expected` (same ID and node); the guard of
    /// every later write. `Err(NotOwner)` when it is not.
    pub async fn guard(&self, expected: &Resource) -> Result<OwnerGuard, CheckpointError> {
        let kv = self
            .client
            .get(self.resource_key.clone())
            .await?
            .body
            .ok_or(CheckpointError::NotOwner)?;
        let r: Resource =
            serde_json::from_slice(&kv.value).map_err(|_| CheckpointError::NotOwner)?;
        if r.id != expected.id || r.assigned_node != expected.assigned_node {
            return Err(CheckpointError::NotOwner);
        }
        Ok(OwnerGuard {
            key: kv.key,
            value: kv.value,
        })
    }

    /// The done marker, if any.
    pub async fn done(&self) -> Result<Option<DoneMarker>, CheckpointError> {
        let kv = self.client.get(Self::done_key(&self.task)).await?.body;
        Ok(kv.and_then(|kv| serde_json::from_slice(&kv.value).ok()))
    }

    /// The manifest, if any and readable.
    pub async fn manifest(&self) -> Result<Option<(Manifest, i64)>, CheckpointError> {
        let reply = self.client.get(Self::manifest_key(&self.task)).await?;
        let Some(kv) = reply.body else {
            return Ok(None);
        };
        let m: Manifest = serde_json::from_slice(&kv.value)
            .map_err(|e| CheckpointError::Corrupt(format!("manifest: {e}")))?;
        Ok(Some((m, reply.revision)))
    }

    /// The latest checkpoint of resource `resource_id`, if there is one.
    pub async fn load(&self, resource_id: &str) -> Result<Option<Snapshot>, CheckpointError> {
        let Some((m, revision)) = self.manifest().await? else {
            return Ok(None);
        };
        if m.resource_id != resource_id {
            return Ok(None);
        }
        // Chunks one by one (bounded replies), all at the manifest's revision: consistent even
        // if a writer moves on meanwhile.
        let mut bytes = Vec::with_capacity(m.bytes.min(1 << 30) as usize);
        for i in 0..m.chunks {
            let key = format!("{}{}/{i:06}", self.chunks_prefix(), m.generation);
            let r = self
                .client
                .range(RangeRequest {
                    key: key.into_bytes(),
                    revision,
                    ..RangeRequest::default()
                })
                .await?;
            let kv = r
                .body
                .kvs
                .into_iter()
                .next()
                .ok_or_else(|| CheckpointError::Corrupt(format!("chunk {i} missing")))?;
            bytes.extend_from_slice(&kv.value);
        }
        if bytes.len() as u64 != m.bytes || fnv1a(&bytes) != m.checksum {
            return Err(CheckpointError::Corrupt(
                "size or checksum does not match the manifest".into(),
            ));
        }
        let (snap, _): (Snapshot, usize) =
            bincode::serde::decode_from_slice(&bytes, bincode::config::standard())
                .map_err(|e| CheckpointError::Corrupt(e.to_string()))?;
        if snap.resource_id != resource_id {
            return Err(CheckpointError::Corrupt("resource id mismatch".into()));
        }
        Ok(Some(snap))
    }

    /// Write `snap` as the new checkpoint: chunks first, then (guarded) the manifest, deleting
    /// every other generation in the same txn.
    pub async fn save(
        &self,
        snap: &Snapshot,
        guard: &OwnerGuard,
    ) -> Result<Manifest, CheckpointError> {
        let bytes = bincode::serde::encode_to_vec(snap, bincode::config::standard())
            .map_err(|e| CheckpointError::Corrupt(e.to_string()))?;
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let generation = format!("{:016x}-{seq:08}", self.nonce);
        let chunks: Vec<&[u8]> = if bytes.is_empty() {
            vec![&[][..]]
        } else {
            bytes.chunks(CHUNK_BYTES).collect()
        };
        let gen_prefix = format!("{}{generation}/", self.chunks_prefix());
        for (i, c) in chunks.iter().enumerate() {
            self.client
                .put(PutRequest {
                    key: format!("{gen_prefix}{i:06}").into_bytes(),
                    value: c.to_vec(),
                    ..PutRequest::default()
                })
                .await?;
        }
        let manifest = Manifest {
            resource_id: snap.resource_id.clone(),
            generation,
            chunks: chunks.len() as u32,
            bytes: bytes.len() as u64,
            checksum: fnv1a(&bytes),
            pages: snap.counters.pages,
            items: snap.counters.items,
            errors: snap.counters.errors,
            pending: snap.pending.len() as u64,
            seen: snap.seen.len() as u64,
            time_unix_ms: now_ms(),
            writer: self.writer.clone(),
        };
        let value =
            serde_json::to_vec(&manifest).map_err(|e| CheckpointError::Corrupt(e.to_string()))?;
        let all = self.chunks_prefix().into_bytes();
        let mine = gen_prefix.into_bytes();
        let mut success = vec![RequestOp::Put(PutRequest {
            key: Self::manifest_key(&self.task).into_bytes(),
            value,
            ..PutRequest::default()
        })];
        // Everything under checkpoint/ except this generation: [all, mine) and [end(mine), end(all)).
        success.push(RequestOp::DeleteRange(DeleteRangeRequest {
            key: all.clone(),
            range_end: mine.clone(),
            prev_kv: false,
        }));
        success.push(RequestOp::DeleteRange(DeleteRangeRequest {
            key: prefix_range_end(&mine),
            range_end: prefix_range_end(&all),
            prev_kv: false,
        }));
        self.guarded(guard, success).await?;
        Ok(manifest)
    }

    /// Mark the task done (guarded) and drop its checkpoint.
    pub async fn mark_done(
        &self,
        counters: Counters,
        resource_id: &str,
        guard: &OwnerGuard,
    ) -> Result<DoneMarker, CheckpointError> {
        let marker = DoneMarker {
            resource_id: resource_id.to_string(),
            pages: counters.pages,
            items: counters.items,
            errors: counters.errors,
            time_unix_ms: now_ms(),
            writer: self.writer.clone(),
        };
        let value =
            serde_json::to_vec(&marker).map_err(|e| CheckpointError::Corrupt(e.to_string()))?;
        let all = self.chunks_prefix().into_bytes();
        let ops = vec![
            RequestOp::Put(PutRequest {
                key: Self::done_key(&self.task).into_bytes(),
                value,
                ..PutRequest::default()
            }),
            RequestOp::DeleteRange(DeleteRangeRequest {
                key: Self::manifest_key(&self.task).into_bytes(),
                range_end: Vec::new(),
                prev_kv: false,
            }),
            RequestOp::DeleteRange(DeleteRangeRequest {
                range_end: prefix_range_end(&all),
                key: all,
                prev_kv: false,
            }),
        ];
        self.guarded(guard, ops).await?;
        Ok(marker)
    }

    async fn guarded(
        &self,
        guard: &OwnerGuard,
        success: Vec<RequestOp>,
    ) -> Result<(), CheckpointError> {
        let r = self
            .client
            .txn(TxnRequest {
                compare: guard.compares(),
                success,
                failure: Vec::new(),
            })
            .await?;
        if r.body.succeeded {
            Ok(())
        } else {
            Err(CheckpointError::NotOwner)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).expect("url")
    }

    #[test]
    fn normalised_dedup() {
        assert_eq!(
            normalise(&url("HTTP://Example.COM:80/a/./b/../c?z=1&a=2#frag")),
            "http://example.com/a/c?a=2&z=1"
        );
        assert_eq!(normalise(&url("http://h/x?")), "http://h/x");
        let mut f = Frontier::new(false);
        assert!(f.push(&url("http://h/a?b=1&a=2"), 0, None));
        assert!(!f.push(&url("http://H/a?a=2&b=1#x"), 1, None));
        assert!(f.push(&url("http://h/b"), 1, Some("r".into())));
        assert_eq!(f.pending_len(), 2);
        let snap = f.snapshot("7", Counters::default());
        let g = Frontier::restore(snap.clone(), false);
        assert_eq!(g.snapshot("7", Counters::default()), snap);
        assert_eq!(
            g.front().map(|r| r.url.as_str()),
            Some("http://h/a?a=2&b=1")
        );

        let mut r = Frontier::new(true);
        assert!(r.push(&url("http://h/a"), 0, None));
        assert!(r.push(&url("http://h/a"), 1, None), "reload queues again");
    }
}
