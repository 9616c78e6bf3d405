//! The MVCC state machine over sled: etcd's revisions, key history, compaction, leases and
//! member attributes, plus raft snapshots. Implements openraft's `RaftStateMachine<C>`.
//!
//! Layout: one sled tree (`sm`) holds every row (see `codec`). Applied changes are written to it
//! in groups (by default at the first apply 10 ms after the oldest unwritten change or once
//! 10000 row writes wait: [`PersistPolicy`]), each one atomic
//! `sled::Batch` that also carries the applied log id, so the applied id never gets ahead of the
//! data. The key index, the lease table and the rows not yet written live in memory; the index
//! and leases are rebuilt at `open`. The last snapshot is kept in its own tree (`sm_snapshot`).
//!
//! Durability: applies are neither written at once nor flushed (like etcd's batched backend
//! commits). The raft log holds every committed entry durably, and openraft re-applies the
//! entries after the applied id it reads back at start, so a crash only costs replay. A snapshot
//! writes and flushes everything (with `open_synced` also fdatasyncs) before it is handed to
//! openraft, which may purge the log up to it. Dropping the state machine writes what is left.
//!
//! This file wires the store to openraft; the MVCC store itself is `state` (memory and its
//! persistence), `read`, `write` and `apply` (log entries to commands).

mod apply;
mod backup;
mod codec;
mod fault;
mod hash;
mod index;
mod lease;
mod read;
mod snapshot;
mod state;
mod write;

use std::fmt::Debug;
use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, RaftTypeConfig, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};
use parking_lot::{Mutex, RwLock};

use crate::error::{ApplyError, StoreError};
use crate::types::*;

use apply::Item;
pub use backup::{restore_backup, RestoreSummary};
use fault::Fault;
use read::View;
pub use state::PersistPolicy;
use state::State;

/// Name of the sled tree holding the state machine rows.
pub const SM_TREE: &str = codec::TREE;
/// Name of the sled tree holding the last snapshot.
pub const SNAPSHOT_TREE: &str = "sm_snapshot";

const SNAP_META: &[u8] = b"meta";
const SNAP_DATA: &[u8] = b"data";

/// Told of every applied revision, synchronously inside apply; must not block.
pub trait ApplyObserver: Send + Sync + 'static {
    /// `events` are all events of `revision`, in order (one revision may have many events).
    fn on_apply(&self, revision: i64, events: &[Event]);
    /// A snapshot replaced the whole state; the current revision is now `revision`.
    fn on_restore(&self, revision: i64);
}

/// State shared by the state machine, its readers and snapshot builders.
struct Shared {
    db: sled::Db,
    /// sled's data file, fdatasynced after each snapshot flush (see `StateMachine::open_synced`).
    sync_file: Option<std::fs::File>,
    persist_policy: Mutex<PersistPolicy>,
    tree: sled::Tree,
    snap_tree: sled::Tree,
    state: RwLock<State>,
    observer: Mutex<Option<Arc<dyn ApplyObserver>>>,
    snapshot_seq: AtomicU64,
}

impl Shared {
    fn observer(&self) -> Option<Arc<dyn ApplyObserver>> {
        self.observer.lock().clone()
    }

    /// Apply entries under the write lock, write the applied changes to sled when a group is
    /// due, then (lock released) tell the observer.
    fn apply(&self, items: Vec<(LogId<u64>, Item)>) -> Result<Vec<ApplyResponse>, StoreError> {
        let (responses, notify) = {
            let mut st = self.state.write();
            let staged = match apply::apply_entries(&mut st, &self.tree, items) {
                Ok(done) if st.persist_due(&self.persist_policy.lock()) => {
                    st.persist(&self.tree).map(|()| done)
                }
                other => other,
            };
            match staged {
                Ok(v) => v,
                Err(e) => {
                    // Memory is ahead of disk now: go back to what disk holds. (openraft stops
                    // on a state machine error; the log re-applies the rest at the next start.)
                    match State::load(&self.tree) {
                        Ok(fresh) => *st = fresh,
                        Err(e2) => tracing::error!("state machine: reload failed: {e2}"),
                    }
                    return Err(e);
                }
            }
        };
        if !notify.is_empty() {
            if let Some(obs) = self.observer() {
                for (rev, events) in &notify {
                    obs.on_apply(*rev, events);
                }
            }
        }
        Ok(responses)
    }

    /// Write what is applied in memory to sled, then copy every row of the state machine tree
    /// (under the read lock, so they are consistent) with the applied log id and encoded
    /// membership.
    #[allow(clippy::type_complexity)]
    fn copy_rows(
        &self,
    ) -> Result<
        (
            Vec<(sled::IVec, sled::IVec)>,
            Option<LogId<u64>>,
            Option<Vec<u8>>,
        ),
        StoreError,
    > {
        let mut st = self.state.write();
        st.persist(&self.tree)?;
        let st = parking_lot::RwLockWriteGuard::downgrade(st);
        let rows = self.tree.iter().collect::<Result<Vec<_>, _>>()?;
        Ok((rows, st.applied, st.membership.clone()))
    }

    /// Replace the whole state with snapshot `data`; `applied`/`membership` come from its meta.
    fn install(
        &self,
        data: &[u8],
        applied: Option<LogId<u64>>,
        membership: Vec<u8>,
    ) -> Result<i64, StoreError> {
        let rows = snapshot::decode_rows(data)?;
        let applied_bytes = codec::encode(&applied)?;
        let applied_key = codec::meta_key(codec::META_APPLIED);
        let membership_key = codec::meta_key(codec::META_MEMBERSHIP);
        // Build the new state before touching disk: a bad snapshot changes nothing.
        let mut fresh = State::from_rows(rows.iter().map(|&(k, v)| Ok((k, v))))?;
        fresh.applied = applied;
        fresh.membership = Some(membership.clone());

        let mut st = self.state.write();
        let mut batch = sled::Batch::default();
        // Old rows first, then the snapshot's: a later write to the same key wins in a batch.
        for key in self.tree.iter().keys() {
            batch.remove(key?);
        }
        for (k, v) in &rows {
            batch.insert(*k, *v);
        }
        batch.insert(applied_key, applied_bytes);
        batch.insert(membership_key, membership);
        self.tree.apply_batch(batch)?;
        *st = fresh;
        Ok(st.current)
    }

    /// Persist `meta` + `data` as the current snapshot, durably (the log may be purged after).
    fn save_snapshot(&self, meta: &[u8], data: &[u8]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        batch.insert(SNAP_META, meta);
        batch.insert(SNAP_DATA, data);
        self.snap_tree.apply_batch(batch)?;
        // The flush also makes every applied row durable, so after it the log may be purged.
        self.db.flush()?;
        if let Some(f) = &self.sync_file {
            f.sync_data()
                .map_err(|e| StoreError::Other(format!("fdatasync state machine: {e}")))?;
        }
        Ok(())
    }
}

/// Read-only, cheaply cloneable view of the state machine, for the API layer and watchers.
#[derive(Clone)]
pub struct StoreReader {
    shared: Arc<Shared>,
}

/// A storage failure while reading: logged, and answered as an internal error.
fn read_fault(f: Fault) -> ApplyError {
    match f {
        Fault::Apply(e) => e,
        Fault::Store(e) => {
            tracing::error!("state machine read failed: {e}");
            ApplyError::Internal(e.to_string())
        }
    }
}

impl StoreReader {
    /// Current revision (1 on an empty store).
    pub fn current_revision(&self) -> i64 {
        self.shared.state.read().current
    }
    /// Revision at or below which history was compacted (0 if never).
    pub fn compact_revision(&self) -> i64 {
        self.shared.state.read().compact
    }
    /// Index of the last applied raft log entry (0 if none).
    pub fn applied_index(&self) -> u64 {
        self.shared.state.read().applied.map_or(0, |l| l.index)
    }
    /// Evaluate a range at `req.revision` (0 = current).
    ///
    /// Like etcd, a revision equal to the compaction point is still readable; below it fails with
    /// `Compacted`, above the current revision with `FutureRevision`.
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, ApplyError> {
        self.range_with_revision(req).map(|(_, resp)| resp)
    }
    /// Like `range`, also returning the store's current revision at the moment of the read (the
    /// header revision etcd answers with, consistent with the data returned).
    pub fn range_with_revision(
        &self,
        req: &RangeRequest,
    ) -> Result<(i64, RangeResponse), ApplyError> {
        let st = self.shared.state.read();
        let view = View {
            st: &st,
            tree: &self.shared.tree,
            cur: st.current,
        };
        let resp = view.range(req).map_err(read_fault)?;
        Ok((st.current, resp))
    }
    /// Evaluate a txn that has no write (`req.is_read_only()`); returns the revision it read at.
    ///
    /// Writes in `req` (a caller bug) are skipped and answered with empty responses.
    pub fn txn_read_only(&self, req: &TxnRequest) -> Result<(i64, TxnResponse), ApplyError> {
        let st = self.shared.state.read();
        let view = View {
            st: &st,
            tree: &self.shared.tree,
            cur: st.current,
        };
        let resp = view.txn_read_only(req).map_err(read_fault)?;
        Ok((st.current, resp))
    }
    /// Events for keys in `[key, range_end)` (etcd range semantics) with revision in
    /// `start..=end`, ordered by revision, then by position inside the revision. Stops after the
    /// revision in which the count reaches `max_events` (a revision is never split; 0 = no
    /// limit). `Err(Compacted)` when `start <= compact_revision()` (a `start` below 1 counts as
    /// 1). History is read from the rows of the revision window, so a narrow key over a wide
    /// window costs the whole window.
    pub fn events(
        &self,
        key: &[u8],
        range_end: &[u8],
        start: i64,
        end: i64,
        max_events: usize,
    ) -> Result<Vec<Event>, ApplyError> {
        let st = self.shared.state.read();
        let view = View {
            st: &st,
            tree: &self.shared.tree,
            cur: st.current,
        };
        view.events(key, range_end, start, end, max_events)
            .map_err(read_fault)
    }
    /// One lease with its attached keys.
    pub fn lease(&self, id: i64) -> Option<LeaseInfo> {
        self.shared.state.read().leases.info(id)
    }
    /// Every lease (keys left empty).
    pub fn leases(&self) -> Vec<LeaseInfo> {
        self.shared.state.read().leases.list()
    }
    /// Attributes published by members, by member id.
    pub fn member_attrs(&self) -> std::collections::BTreeMap<u64, MemberAttrs> {
        self.shared.state.read().members.clone()
    }
    /// A consistent image of the store at its current revision, for a backup stream (see
    /// `crate::backup`); `cluster_id` and `member_id` go into the file's header.
    pub fn backup_image(
        &self,
        cluster_id: u64,
        member_id: u64,
    ) -> Result<crate::backup::Image, StoreError> {
        let st = self.shared.state.read();
        backup::image(&st, &self.shared.tree, cluster_id, member_id)
    }
    /// etcd's `HashKV`: the hash of every stored key version up to `revision` (0 = current),
    /// with the compaction revision and the revision hashed (see `hash` for the algorithm).
    /// Holds the read lock for the whole scan.
    pub fn hash_kv(&self, revision: i64) -> Result<(u32, i64, i64), ApplyError> {
        let st = self.shared.state.read();
        let view = View {
            st: &st,
            tree: &self.shared.tree,
            cur: st.current,
        };
        hash::hash_kv(&view, revision).map_err(read_fault)
    }
    /// etcd's `Hash`: the hash of the whole state (every key version and lease) with the
    /// revision it was taken at.
    pub fn hash_all(&self) -> Result<(u32, i64), ApplyError> {
        let st = self.shared.state.read();
        let view = View {
            st: &st,
            tree: &self.shared.tree,
            cur: st.current,
        };
        hash::hash_all(&view)
            .map(|h| (h, st.current))
            .map_err(read_fault)
    }
    /// Active alarms, sorted.
    pub fn alarms(&self) -> Vec<AlarmMember> {
        self.shared.state.read().alarms.iter().copied().collect()
    }
    /// Number of keys with a live version (etcd's `keys_total`).
    pub fn key_count(&self) -> usize {
        self.shared
            .state
            .read()
            .index
            .iter()
            .filter(|(_, ki)| ki.is_live())
            .count()
    }
    /// Approximate size of the database on disk, bytes.
    pub fn db_size(&self) -> u64 {
        self.shared.db.size_on_disk().unwrap_or(0)
    }
}

/// The MVCC state machine over sled. Implements `openraft::storage::RaftStateMachine<C>`.
pub struct StateMachine {
    shared: Arc<Shared>,
}

impl StateMachine {
    /// Open (or create) the state machine stored in `db` (restores the key index, leases and
    /// applied state).
    pub fn open(db: &sled::Db) -> Result<Self, StoreError> {
        Self::open_inner(db, None)
    }

    /// Like `open`, and every snapshot flush is followed by an `fdatasync` of sled's data file in
    /// `dir` (the directory the Db was opened in), so a saved snapshot survives a power loss.
    pub fn open_synced(db: &sled::Db, dir: &std::path::Path) -> Result<Self, StoreError> {
        Self::open_inner(db, Some(crate::sync_file(dir)?))
    }

    /// Change when applied changes are written to sled (tests hold them in memory with it).
    pub fn set_persist_policy(&self, policy: PersistPolicy) {
        *self.shared.persist_policy.lock() = policy;
    }

    fn open_inner(db: &sled::Db, sync_file: Option<std::fs::File>) -> Result<Self, StoreError> {
        let tree = db.open_tree(SM_TREE)?;
        let snap_tree = db.open_tree(SNAPSHOT_TREE)?;
        let state = State::load(&tree)?;
        Ok(StateMachine {
            shared: Arc::new(Shared {
                db: db.clone(),
                sync_file,
                persist_policy: Mutex::new(PersistPolicy::default()),
                tree,
                snap_tree,
                state: RwLock::new(state),
                observer: Mutex::new(None),
                snapshot_seq: AtomicU64::new(0),
            }),
        })
    }
    /// A reader sharing this state machine's state.
    pub fn reader(&self) -> StoreReader {
        StoreReader {
            shared: self.shared.clone(),
        }
    }
    /// Install the observer told of every applied revision (the watch hub).
    pub fn set_observer(&self, observer: Arc<dyn ApplyObserver>) {
        *self.shared.observer.lock() = Some(observer);
    }
}

/// Builds snapshots of a [`StateMachine`] (a handle on the same shared state).
pub struct SnapshotBuilder {
    shared: Arc<Shared>,
}

fn sm_write_err(e: impl std::error::Error + 'static) -> StorageError<u64> {
    StorageError::IO {
        source: StorageIOError::write_state_machine(&e),
    }
}

fn sm_read_err(e: impl std::error::Error + 'static) -> StorageError<u64> {
    StorageError::IO {
        source: StorageIOError::read_state_machine(&e),
    }
}

fn snap_read_err(e: impl std::error::Error + 'static) -> StorageError<u64> {
    StorageError::IO {
        source: StorageIOError::read_snapshot(None, &e),
    }
}

fn snap_write_err(e: impl std::error::Error + 'static) -> StorageError<u64> {
    StorageError::IO {
        source: StorageIOError::write_snapshot(None, &e),
    }
}

/// Decode the membership the generic layer stored (none yet → the default, empty one).
fn decode_membership<N>(bytes: Option<&[u8]>) -> Result<StoredMembership<u64, N>, StoreError>
where
    N: openraft::Node,
{
    match bytes {
        Some(b) => codec::decode(b),
        None => Ok(StoredMembership::default()),
    }
}

impl<C> RaftSnapshotBuilder<C> for SnapshotBuilder
where
    C: RaftTypeConfig<
        D = Command,
        R = ApplyResponse,
        NodeId = u64,
        Entry = Entry<C>,
        SnapshotData = Cursor<Vec<u8>>,
    >,
{
    async fn build_snapshot(&mut self) -> Result<Snapshot<C>, StorageError<u64>> {
        let (rows, applied, membership) = self.shared.copy_rows().map_err(sm_read_err)?;
        let last_membership =
            decode_membership::<C::Node>(membership.as_deref()).map_err(sm_read_err)?;
        let data = snapshot::encode_rows(&rows);
        drop(rows);
        let seq = self.shared.snapshot_seq.fetch_add(1, Ordering::Relaxed);
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let snapshot_id = match &applied {
            Some(l) => format!(
                "{}-{}-{}-{millis}-{seq}",
                l.leader_id.term, l.leader_id.node_id, l.index
            ),
            None => format!("0-0-0-{millis}-{seq}"),
        };
        let meta = SnapshotMeta {
            last_log_id: applied,
            last_membership,
            snapshot_id,
        };
        let meta_bytes = codec::encode(&meta).map_err(snap_write_err)?;
        self.shared
            .save_snapshot(&meta_bytes, &data)
            .map_err(snap_write_err)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl<C> RaftStateMachine<C> for StateMachine
where
    C: RaftTypeConfig<
        D = Command,
        R = ApplyResponse,
        NodeId = u64,
        Entry = Entry<C>,
        SnapshotData = Cursor<Vec<u8>>,
    >,
{
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, C::Node>), StorageError<u64>> {
        let st = self.shared.state.read();
        let membership =
            decode_membership::<C::Node>(st.membership.as_deref()).map_err(sm_read_err)?;
        Ok((st.applied, membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ApplyResponse>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<C>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut items = Vec::new();
        for e in entries {
            let item = match e.payload {
                EntryPayload::Blank => Item::Blank,
                EntryPayload::Normal(cmd) => Item::Command(cmd),
                EntryPayload::Membership(m) => {
                    let stored = StoredMembership::new(Some(e.log_id), m);
                    Item::Membership(codec::encode(&stored).map_err(sm_write_err)?)
                }
            };
            items.push((e.log_id, item));
        }
        self.shared.apply(items).map_err(sm_write_err)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            shared: self.shared.clone(),
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, C::Node>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<u64>> {
        let data = snapshot.into_inner();
        let membership = codec::encode(&meta.last_membership).map_err(snap_read_err)?;
        let current = self
            .shared
            .install(&data, meta.last_log_id, membership)
            .map_err(snap_read_err)?;
        let meta_bytes = codec::encode(meta).map_err(snap_write_err)?;
        self.shared
            .save_snapshot(&meta_bytes, &data)
            .map_err(snap_write_err)?;
        tracing::info!(revision = current, "state machine: snapshot installed");
        if let Some(obs) = self.shared.observer() {
            obs.on_restore(current);
        }
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<C>>, StorageError<u64>> {
        let meta = self
            .shared
            .snap_tree
            .get(SNAP_META)
            .map_err(snap_read_err)?;
        let data = self
            .shared
            .snap_tree
            .get(SNAP_DATA)
            .map_err(snap_read_err)?;
        match (meta, data) {
            (Some(meta), Some(data)) => {
                let meta: SnapshotMeta<u64, C::Node> =
                    codec::decode(&meta).map_err(snap_read_err)?;
                Ok(Some(Snapshot {
                    meta,
                    snapshot: Box::new(Cursor::new(data.to_vec())),
                }))
            }
            _ => Ok(None),
        }
    }
}

impl Drop for StateMachine {
    /// Write what is applied in memory, so that a clean stop needs no replay at the next start.
    fn drop(&mut self) {
        let mut st = self.shared.state.write();
        if let Err(e) = st.persist(&self.shared.tree) {
            tracing::error!("state machine: writing applied changes at close failed: {e}");
        }
    }
}

impl Debug for StateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.shared.state.read();
        f.debug_struct("StateMachine")
            .field("current", &st.current)
            .field("compact", &st.compact)
            .field("applied", &st.applied)
            .finish()
    }
}
