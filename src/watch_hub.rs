//! INTERFACE STUB — the watch helper implements it. Signatures are the contract.
//!
//! Per-member fan-out of applied events to watchers. Synced watchers get events live from
//! `ApplyObserver::on_apply`; a watcher whose buffer is full, or that starts in the past, is
//! "unsynced" and caught up from MVCC history, so a slow watcher never stalls apply.

use std::sync::Arc;

use crawler_storage::{ApplyError, ApplyObserver, Event, StoreReader};

/// What a watcher wants.
#[derive(Clone, Debug, Default)]
pub struct WatchSpec {
    pub key: Vec<u8>,
    /// etcd range semantics: empty = one key, `[0]` = all keys >= key.
    pub range_end: Vec<u8>,
    /// First revision wanted (inclusive); 0 = from the next revision.
    pub start_revision: i64,
    pub prev_kv: bool,
    pub no_put: bool,
    pub no_delete: bool,
}

/// What a watcher receives.
#[derive(Clone, Debug)]
pub enum Delivery {
    /// All (filtered) events of one or more whole revisions, in order.
    Events(Vec<Event>),
    /// The watcher fell behind a compaction and was cancelled.
    Compacted { compact_revision: i64 },
}

/// A registered watcher; dropping it cancels it.
pub struct Watcher {
    /// Deliveries in order.
    pub rx: tokio::sync::mpsc::Receiver<Delivery>,
}

/// The member's watch hub.
pub struct WatchHub {}

impl WatchHub {
    /// A hub with no store yet (the raft node takes the hub as its observer before it exists).
    pub fn new() -> Arc<Self> {
        todo!()
    }
    /// Give the hub the store it catches unsynced watchers up from; starts its catch-up task.
    pub fn attach(self: &Arc<Self>, _store: StoreReader) {
        todo!()
    }
    /// Register a watcher. `Err(Compacted)` if `start_revision` is at or below the compaction point.
    pub fn watch(self: &Arc<Self>, _spec: WatchSpec) -> Result<Watcher, ApplyError> {
        todo!()
    }
    /// Highest revision already fanned out to synced watchers (for progress notifications).
    pub fn notified_revision(&self) -> i64 {
        todo!()
    }
}

impl ApplyObserver for WatchHub {
    fn on_apply(&self, _revision: i64, _events: &[Event]) {
        todo!()
    }
    fn on_restore(&self, _revision: i64) {
        todo!()
    }
}
