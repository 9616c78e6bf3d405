//! Checkpoints of a task's frontier in the store, written incrementally: a worker taking a task
//! over resumes where the last one stopped, and a checkpoint costs what changed since the
//! previous one, not everything seen so far.
//!
//! Store layout, under `/crawler/tasks/<task>/`:
//! - `base/<generation>/<chunk>`: a full [`Snapshot`] (bincode, deflated) cut into chunks of at most
//!   [`CHUNK_BYTES`] (far below etcd's 1.5 MiB request limit). A generation is unique per
//!   writer and save, so chunks that a manifest points to are never overwritten.
//! - `delta/<seq>`: a [`Delta`] (bincode, deflated): what changed in one checkpoint interval.
//! - `manifest`: JSON [`Manifest`]: the current base, the live delta range, the counters.
//! - `done`: JSON [`DoneMarker`] once the task has finished; a finished task is not run again.
//!
//! A delta is written in the same guarded txn as the manifest that counts it, so a delta is
//! either part of the checkpoint or absent. Deltas are folded into a new base once they add up
//! to as much as the base (at least [`FOLD_MIN_BYTES`]): the bytes written per page stay about
//! constant however long the crawl, and the live checkpoint stays at most about twice the base.
//! The folding txn deletes every other base and the folded deltas, so nothing superseded stays
//! live (compaction then drops it from the store's history).
//!
//! Every write is a txn guarded by the resource key still holding the value
//! this run was started for ([`OwnerGuard`]): a worker the task was moved away from (paused,
//! partitioned) cannot overwrite the new owner's progress.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::frontier::{Counters, Delta, Frontier, Snapshot};
use crate::client::{
    prefix_range_end, Compare, CompareResult, CompareTarget, DeleteRangeRequest, KvClient,
    KvClientExt, KvError, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use crate::model::resource::{task_prefix, Resource};

/// Largest base chunk.
pub const CHUNK_BYTES: usize = 256 * 1024;
/// Largest delta written as such; a larger change is written as a new base.
pub const DELTA_MAX_BYTES: usize = 512 * 1024;
/// Deltas are folded once they add up to the base's size, and at least this.
pub const FOLD_MIN_BYTES: u64 = 1024 * 1024;
/// Most deltas ever kept before a fold (bounds the reads of a resume).
pub const MAX_DELTAS: u64 = 16384;
/// Deltas kept before a fold while the base is small (bounds the live keys of a small crawl).
pub const MIN_DELTA_CAP: u64 = 1024;

/// How many deltas may pile up on a base of `base_bytes` before it is folded: a forced fold
/// rewrites the base, so the cap grows with it (one fold per 256 bytes of base amortises to a
/// constant cost per checkpoint; a fixed 1024 made checkpoint bytes per page grow with the
/// crawl), between [`MIN_DELTA_CAP`] and [`MAX_DELTAS`].
pub fn delta_cap(base_bytes: u64) -> u64 {
    (base_bytes / 256).clamp(MIN_DELTA_CAP, MAX_DELTAS)
}

/// The pointer to the current checkpoint (JSON, readable with `etcdctl`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Resource id of the run.
    pub resource_id: String,
    /// Generation whose chunks hold the base.
    pub generation: String,
    /// Number of base chunks.
    pub chunks: u32,
    /// Encoded size of the base.
    pub bytes: u64,
    /// FNV-1a 64 of the encoded base.
    pub checksum: u64,
    /// First live delta.
    #[serde(default)]
    pub delta_first: u64,
    /// One past the last live delta (`delta_first..delta_next` apply to the base, in order).
    #[serde(default)]
    pub delta_next: u64,
    /// Encoded size of the live deltas.
    #[serde(default)]
    pub delta_bytes: u64,
    /// Pages at the checkpoint.
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
    /// The frontier's spilled requests could not be read back to write a base.
    #[error("{0}")]
    Spill(#[from] super::queue::SpillError),
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

/// A checkpoint as read back: the base and the deltas after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loaded {
    /// The manifest read.
    pub manifest: Manifest,
    /// The base.
    pub base: Snapshot,
    /// The live deltas, in order.
    pub deltas: Vec<Delta>,
}

impl Loaded {
    /// The frontier and counters it describes (its queue spilling under `spill`, if given).
    pub fn into_frontier(self, reload: bool, spill: Option<PathBuf>) -> (Frontier, Counters) {
        Frontier::restore(self.base, self.deltas, reload, spill)
    }
}

/// One checkpoint ready to be written (kept for a retry after a guard refresh).
#[derive(Clone, Debug)]
pub struct Prepared {
    /// A whole base (the first checkpoint, a fold, or after a failed write), else a delta.
    pub base: bool,
    /// Encoded [`Snapshot`] or [`Delta`].
    pub bytes: Vec<u8>,
    /// Counters at this checkpoint.
    pub counters: Counters,
    /// Pending requests and fingerprints seen, after it.
    pub sizes: (u64, u64),
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

/// Largest decoded checkpoint record (a corrupt length must not allocate without bound).
const DECODE_LIMIT: usize = 1 << 30;

/// bincode, deflated: URLs share long prefixes, so a base shrinks several times. Streamed, so
/// a base is never held uncompressed.
fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, CheckpointError> {
    let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
    bincode::serde::encode_into_std_write(v, &mut z, bincode::config::standard())
        .map_err(|e| CheckpointError::Corrupt(e.to_string()))?;
    z.finish()
        .map_err(|e| CheckpointError::Corrupt(e.to_string()))
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, CheckpointError> {
    let mut z = flate2::read::DeflateDecoder::new(bytes);
    let cfg = bincode::config::standard().with_limit::<DECODE_LIMIT>();
    bincode::serde::decode_from_std_read(&mut z, cfg)
        .map_err(|e| CheckpointError::Corrupt(format!("{what}: {e}")))
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
        task_prefix(task)
    }

    /// The manifest key.
    pub fn manifest_key(task: &str) -> String {
        format!("{}manifest", Self::prefix(task))
    }

    /// The done key.
    pub fn done_key(task: &str) -> String {
        format!("{}done", Self::prefix(task))
    }

    /// Prefix of every base chunk.
    pub fn bases_prefix(task: &str) -> String {
        format!("{}base/", Self::prefix(task))
    }

    /// Prefix of every delta.
    pub fn deltas_prefix(task: &str) -> String {
        format!("{}delta/", Self::prefix(task))
    }

    fn delta_key(&self, seq: u64) -> String {
        format!("{}{seq:016x}", Self::deltas_prefix(&self.task))
    }

    /// Chunks of the layout before incremental checkpoints; removed by the next base.
    fn legacy_prefix(&self) -> String {
        format!("{}checkpoint/", Self::prefix(&self.task))
    }

    /// Read the resource key and check it is still `expected` (same ID and node); the guard of
    /// every later write. `Err(NotOwner)` when it is not.
    pub async fn guard(&self, expected: &Resource) -> Result<OwnerGuard, CheckpointError> {
        self.guard_if(expected, false).await
    }

    /// [`Self::guard`] for the last checkpoint of a stopping run: a resource with the same ID
    /// that is now unassigned (paused, or its worker deemed gone) is still this run's to
    /// checkpoint; nobody else runs it, and an assignment rewrites the value, refusing the write.
    pub async fn guard_at_stop(&self, expected: &Resource) -> Result<OwnerGuard, CheckpointError> {
        self.guard_if(expected, true).await
    }

    async fn guard_if(
        &self,
        expected: &Resource,
        unassigned_ok: bool,
    ) -> Result<OwnerGuard, CheckpointError> {
        let kv = self
            .client
            .get(self.resource_key.clone())
            .await?
            .body
            .ok_or(CheckpointError::NotOwner)?;
        let r: Resource =
            serde_json::from_slice(&kv.value).map_err(|_| CheckpointError::NotOwner)?;
        let same_node = r.assigned_node == expected.assigned_node
            || (unassigned_ok && r.assigned_node.is_empty());
        if r.id != expected.id || !same_node {
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

    /// The manifest, if any and readable, with the revision it was read at.
    pub async fn manifest(&self) -> Result<Option<(Manifest, i64)>, CheckpointError> {
        let reply = self.client.get(Self::manifest_key(&self.task)).await?;
        let Some(kv) = reply.body else {
            return Ok(None);
        };
        let m: Manifest = serde_json::from_slice(&kv.value)
            .map_err(|e| CheckpointError::Corrupt(format!("manifest: {e}")))?;
        Ok(Some((m, reply.revision)))
    }

    async fn get_at(&self, key: String, revision: i64) -> Result<Option<Vec<u8>>, KvError> {
        let r = self
            .client
            .range(RangeRequest {
                key: key.into_bytes(),
                revision,
                ..RangeRequest::default()
            })
            .await?;
        Ok(r.body.kvs.into_iter().next().map(|kv| kv.value))
    }

    /// The latest checkpoint of resource `resource_id`, if there is one.
    pub async fn load(&self, resource_id: &str) -> Result<Option<Loaded>, CheckpointError> {
        let Some((m, revision)) = self.manifest().await? else {
            return Ok(None);
        };
        if m.resource_id != resource_id {
            return Ok(None);
        }
        if m.delta_next < m.delta_first || m.delta_next - m.delta_first > MAX_DELTAS {
            return Err(CheckpointError::Corrupt("delta range".into()));
        }
        // Key by key (bounded replies), all at the manifest's revision: consistent even if a
        // writer moves on meanwhile.
        let mut bytes = Vec::with_capacity(m.bytes.min(1 << 30) as usize);
        for i in 0..m.chunks {
            let key = format!("{}{}/{i:06}", Self::bases_prefix(&self.task), m.generation);
            let chunk = self
                .get_at(key, revision)
                .await?
                .ok_or_else(|| CheckpointError::Corrupt(format!("base chunk {i} missing")))?;
            bytes.extend_from_slice(&chunk);
        }
        if bytes.len() as u64 != m.bytes || fnv1a(&bytes) != m.checksum {
            return Err(CheckpointError::Corrupt(
                "size or checksum does not match the manifest".into(),
            ));
        }
        let base: Snapshot = decode(&bytes, "base")?;
        drop(bytes);
        if base.resource_id != resource_id {
            return Err(CheckpointError::Corrupt("resource id mismatch".into()));
        }
        let mut deltas = Vec::new();
        for seq in m.delta_first..m.delta_next {
            let d = self
                .get_at(self.delta_key(seq), revision)
                .await?
                .ok_or_else(|| CheckpointError::Corrupt(format!("delta {seq} missing")))?;
            deltas.push(decode(&d, "delta")?);
        }
        Ok(Some(Loaded {
            manifest: m,
            base,
            deltas,
        }))
    }

    /// Write a new base: chunks first, then (guarded) the manifest, deleting every other base,
    /// every delta and the older layout's chunks in the same txn.
    pub async fn save_base(
        &self,
        resource_id: &str,
        bytes: &[u8],
        counters: Counters,
        (pending, seen): (u64, u64),
        prev: Option<&Manifest>,
        guard: &OwnerGuard,
    ) -> Result<Manifest, CheckpointError> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let generation = format!("{:016x}-{seq:08}", self.nonce);
        let chunks: Vec<&[u8]> = if bytes.is_empty() {
            vec![&[][..]]
        } else {
            bytes.chunks(CHUNK_BYTES).collect()
        };
        let bases = Self::bases_prefix(&self.task);
        let gen_prefix = format!("{bases}{generation}/");
        // Guarded too: once the resource is deleted (with its key space), no chunk can land.
        for (i, c) in chunks.iter().enumerate() {
            let put = RequestOp::Put(PutRequest {
                key: format!("{gen_prefix}{i:06}").into_bytes(),
                value: c.to_vec(),
                ..PutRequest::default()
            });
            self.guarded(guard, vec![put]).await?;
        }
        // Deltas go on numbering after the previous ones: a delta key is never reused.
        let next = prev.map_or(0, |p| p.delta_next);
        let manifest = Manifest {
            resource_id: resource_id.to_string(),
            generation,
            chunks: chunks.len() as u32,
            bytes: bytes.len() as u64,
            checksum: fnv1a(bytes),
            delta_first: next,
            delta_next: next,
            delta_bytes: 0,
            pages: counters.pages,
            items: counters.items,
            errors: counters.errors,
            pending,
            seen,
            time_unix_ms: now_ms(),
            writer: self.writer.clone(),
        };
        let bases = bases.into_bytes();
        let mine = gen_prefix.into_bytes();
        let deltas = Self::deltas_prefix(&self.task).into_bytes();
        let legacy = self.legacy_prefix().into_bytes();
        let ops = vec![
            self.manifest_put(&manifest)?,
            // Every other base: [bases, mine) and [end(mine), end(bases)).
            delete_range(bases.clone(), mine.clone()),
            delete_range(prefix_range_end(&mine), prefix_range_end(&bases)),
            delete_range(deltas.clone(), prefix_range_end(&deltas)),
            delete_range(legacy.clone(), prefix_range_end(&legacy)),
        ];
        self.guarded(guard, ops).await?;
        Ok(manifest)
    }

    /// Append a delta to the checkpoint described by `prev` (guarded, one txn).
    pub async fn save_delta(
        &self,
        bytes: &[u8],
        counters: Counters,
        (pending, seen): (u64, u64),
        prev: &Manifest,
        guard: &OwnerGuard,
    ) -> Result<Manifest, CheckpointError> {
        let mut m = prev.clone();
        let seq = m.delta_next;
        m.delta_next += 1;
        m.delta_bytes += bytes.len() as u64;
        m.pages = counters.pages;
        m.items = counters.items;
        m.errors = counters.errors;
        m.pending = pending;
        m.seen = seen;
        m.time_unix_ms = now_ms();
        m.writer = self.writer.clone();
        let ops = vec![
            RequestOp::Put(PutRequest {
                key: self.delta_key(seq).into_bytes(),
                value: bytes.to_vec(),
                ..PutRequest::default()
            }),
            self.manifest_put(&m)?,
        ];
        self.guarded(guard, ops).await?;
        Ok(m)
    }

    fn manifest_put(&self, m: &Manifest) -> Result<RequestOp, CheckpointError> {
        let value = serde_json::to_vec(m).map_err(|e| CheckpointError::Corrupt(e.to_string()))?;
        Ok(RequestOp::Put(PutRequest {
            key: Self::manifest_key(&self.task).into_bytes(),
            value,
            ..PutRequest::default()
        }))
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
        let mut ops = vec![
            RequestOp::Put(PutRequest {
                key: Self::done_key(&self.task).into_bytes(),
                value,
                ..PutRequest::default()
            }),
            delete_range(Self::manifest_key(&self.task).into_bytes(), Vec::new()),
        ];
        for p in [
            Self::bases_prefix(&self.task),
            Self::deltas_prefix(&self.task),
            self.legacy_prefix(),
        ] {
            let p = p.into_bytes();
            ops.push(delete_range(p.clone(), prefix_range_end(&p)));
        }
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

fn delete_range(key: Vec<u8>, range_end: Vec<u8>) -> RequestOp {
    RequestOp::DeleteRange(DeleteRangeRequest {
        key,
        range_end,
        prev_kv: false,
    })
}

/// Decides between a delta and a new base, and remembers the checkpoint last written.
#[derive(Debug)]
pub struct Checkpointer {
    store: CheckpointStore,
    resource_id: String,
    /// The manifest last written or read.
    last: Option<Manifest>,
    /// The next checkpoint must be a base: none yet, or a write failed (its delta may or may
    /// not have landed, so only a full image is safe to write next).
    need_base: bool,
}

impl Checkpointer {
    /// Checkpoints of resource `resource_id` through `store`, continuing `last` (resumed from).
    pub fn new(store: CheckpointStore, resource_id: &str, last: Option<Manifest>) -> Self {
        Self {
            store,
            resource_id: resource_id.to_string(),
            need_base: last.is_none(),
            last,
        }
    }

    /// Take what `frontier` changed and encode it as a delta or, when due, a whole base.
    pub fn prepare(
        &mut self,
        frontier: &mut Frontier,
        counters: Counters,
    ) -> Result<Prepared, CheckpointError> {
        let delta = frontier.take_delta(counters);
        let sizes = (frontier.pending_len() as u64, frontier.seen_len() as u64);
        if let (false, Some(last)) = (self.need_base, &self.last) {
            let bytes = encode(&delta)?;
            let total = last.delta_bytes + bytes.len() as u64;
            let due = total >= last.bytes.max(FOLD_MIN_BYTES)
                || last.delta_next - last.delta_first + 1 >= delta_cap(last.bytes)
                || bytes.len() > DELTA_MAX_BYTES;
            if !due {
                return Ok(Prepared {
                    base: false,
                    bytes,
                    counters,
                    sizes,
                });
            }
        }
        drop(delta);
        let bytes = encode(&frontier.snapshot_ref(&self.resource_id, counters))?;
        Ok(Prepared {
            base: true,
            bytes,
            counters,
            sizes,
        })
    }

    /// Write `p` (guarded). After an error the next checkpoint is a base.
    pub async fn commit(
        &mut self,
        p: &Prepared,
        guard: &OwnerGuard,
    ) -> Result<Manifest, CheckpointError> {
        let r = match (&self.last, p.base) {
            (Some(last), false) => {
                self.store
                    .save_delta(&p.bytes, p.counters, p.sizes, last, guard)
                    .await
            }
            (None, false) => Err(CheckpointError::Corrupt("a delta without a base".into())),
            (last, true) => {
                self.store
                    .save_base(
                        &self.resource_id,
                        &p.bytes,
                        p.counters,
                        p.sizes,
                        last.as_ref(),
                        guard,
                    )
                    .await
            }
        };
        match &r {
            Ok(m) => {
                self.last = Some(m.clone());
                self.need_base = false;
            }
            // Refused by the guard: nothing landed, the same checkpoint may be retried.
            Err(CheckpointError::NotOwner) => {}
            Err(_) => self.need_base = true,
        }
        r
    }

    /// The next checkpoint must be a whole base (what changed since the last one may or may
    /// not have been written).
    pub fn need_base(&mut self) {
        self.need_base = true;
    }

    /// The manifest last written or read.
    pub fn last(&self) -> Option<&Manifest> {
        self.last.as_ref()
    }
}
