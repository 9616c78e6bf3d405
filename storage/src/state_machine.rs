//! INTERFACE STUB — to be implemented (see the storage helper's task). Signatures are the contract.

use std::sync::Arc;

use crate::error::{ApplyError, StoreError};
use crate::types::*;

/// Told of every applied revision, synchronously inside apply; must not block.
pub trait ApplyObserver: Send + Sync + 'static {
    /// `events` are all events of `revision`, in order (one revision may have many events).
    fn on_apply(&self, revision: i64, events: &[Event]);
    /// A snapshot replaced the whole state; the current revision is now `revision`.
    fn on_restore(&self, revision: i64);
}

/// Read-only, cheaply cloneable view of the state machine, for the API layer and watchers.
#[derive(Clone)]
pub struct StoreReader {
    _inner: Arc<()>,
}

impl StoreReader {
    /// Current revision (1 on an empty store).
    pub fn current_revision(&self) -> i64 {
        todo!()
    }
    /// Revision at or below which history was compacted (0 if never).
    pub fn compact_revision(&self) -> i64 {
        todo!()
    }
    /// Index of the last applied raft log entry (0 if none).
    pub fn applied_index(&self) -> u64 {
        todo!()
    }
    /// Evaluate a range at `req.revision` (0 = current).
    pub fn range(&self, _req: &RangeRequest) -> Result<RangeResponse, ApplyError> {
        todo!()
    }
    /// Evaluate a txn that has no write (`req.is_read_only()`); returns the revision it read at.
    pub fn txn_read_only(&self, _req: &TxnRequest) -> Result<(i64, TxnResponse), ApplyError> {
        todo!()
    }
    /// Events for keys in `[key, range_end)` (etcd range semantics) with revision in
    /// `start..=end`, ordered by revision, then by position inside the revision. Stops after the
    /// revision in which the count reaches `max_events` (a revision is never split).
    /// `Err(Compacted)` when `start <= compact_revision()`.
    pub fn events(
        &self,
        _key: &[u8],
        _range_end: &[u8],
        _start: i64,
        _end: i64,
        _max_events: usize,
    ) -> Result<Vec<Event>, ApplyError> {
        todo!()
    }
    /// One lease with its attached keys.
    pub fn lease(&self, _id: i64) -> Option<LeaseInfo> {
        todo!()
    }
    /// Every lease (keys left empty).
    pub fn leases(&self) -> Vec<LeaseInfo> {
        todo!()
    }
    /// Attributes published by members, by member id.
    pub fn member_attrs(&self) -> std::collections::BTreeMap<u64, MemberAttrs> {
        todo!()
    }
    /// Approximate size of the database on disk, bytes.
    pub fn db_size(&self) -> u64 {
        todo!()
    }
}

/// The MVCC state machine over sled. Implements `openraft::storage::RaftStateMachine<C>`.
pub struct StateMachine {}

impl StateMachine {
    /// Open the state machine stored in `db` (restores the key index, leases and applied state).
    pub fn open(_db: &sled::Db) -> Result<Self, StoreError> {
        todo!()
    }
    /// A reader sharing this state machine's state.
    pub fn reader(&self) -> StoreReader {
        todo!()
    }
    /// Install the observer told of every applied revision (the watch hub).
    pub fn set_observer(&self, _observer: Arc<dyn ApplyObserver>) {
        todo!()
    }
}
