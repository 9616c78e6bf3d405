//! Per-member fan-out of applied events to watchers. Synced watchers get events live from
//! `ApplyObserver::on_apply`; a watcher whose buffer is full, or that starts in the past, is
//! "unsynced" and caught up from MVCC history, so a slow watcher never stalls apply.
//!
//! Invariants (all under the hub lock):
//! - a synced watcher has been sent every wanted event up to `notified_rev`, and `on_apply`
//!   sends it each later revision as a whole;
//! - an unsynced watcher has been sent every wanted event below `next_rev`; the catch-up thread
//!   reads `next_rev..=notified_rev` from the store and moves it back to synced once
//!   `next_rev > notified_rev`.
//!
//! The hub never calls into the store while holding its own lock: the state machine calls
//! `on_apply` from inside apply, possibly holding its own locks, so the reverse order would risk
//! a deadlock.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crawler_storage::{ApplyError, ApplyObserver, Event, EventType, StoreReader};
use parking_lot::{Condvar, Mutex};
use tokio::sync::mpsc;

/// Deliveries a watcher may have queued before it is moved to the unsynced group.
pub const WATCHER_BUFFER: usize = 128;

/// Events read from history per catch-up step (a revision is never split, so it may be more).
const CATCH_UP_BATCH: usize = 1000;

/// Approximate size at which a catch-up delivery is cut (at a revision boundary), so that one
/// response stays well below gRPC's usual 4 MiB message limit of clients.
const CATCH_UP_DELIVERY_BYTES: usize = 1024 * 1024;

/// Revisions scanned per catch-up step: the store scans every row of a revision range (under
/// its read lock), so a watcher on a rare key must not scan all of history in one go.
const CATCH_UP_SPAN: i64 = 1024;

/// Catch-up steps one watcher may take per round, so one far-behind watcher does not starve others.
const CATCH_UP_STEPS_PER_ROUND: usize = 8;

/// How often the catch-up thread looks at unsynced watchers without being woken (a watcher whose
/// channel was full only frees space when its reader takes from it, which nobody signals).
const CATCH_UP_INTERVAL: Duration = Duration::from_millis(50);

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

impl WatchSpec {
    /// True when `key` lies in this watcher's key range.
    pub(crate) fn contains(&self, key: &[u8]) -> bool {
        if self.range_end.is_empty() {
            key == self.key.as_slice()
        } else if self.range_end == [0] {
            key >= self.key.as_slice()
        } else {
            key >= self.key.as_slice() && key < self.range_end.as_slice()
        }
    }

    /// True when this watcher wants `ev` (key range and NOPUT/NODELETE filters).
    pub(crate) fn wants(&self, ev: &Event) -> bool {
        let filtered = match ev.kind {
            EventType::Put => self.no_put,
            EventType::Delete => self.no_delete,
        };
        !filtered && self.contains(&ev.kv.key)
    }

    /// The events of `events` this watcher wants, with `prev_kv` dropped unless asked for.
    fn select(&self, events: &[Event]) -> Vec<Event> {
        events
            .iter()
            .filter(|ev| self.wants(ev))
            .map(|ev| {
                let mut ev = ev.clone();
                if !self.prev_kv {
                    ev.prev_kv = None;
                }
                ev
            })
            .collect()
    }
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
    id: u64,
}

impl Watcher {
    /// The hub's id of this watcher (for `WatchHub::progress_revision`).
    pub fn id(&self) -> u64 {
        self.id
    }
}

/// One watcher as the hub keeps it.
struct Slot {
    spec: WatchSpec,
    tx: mpsc::Sender<Delivery>,
    /// Lowest revision this watcher accepts (a start revision in the future).
    min_rev: i64,
}

/// A watcher being caught up from history.
struct Unsynced {
    slot: Slot,
    /// First revision not yet sent.
    next_rev: i64,
}

struct State {
    next_id: u64,
    synced: BTreeMap<u64, Slot>,
    unsynced: BTreeMap<u64, Unsynced>,
    /// Highest revision fanned out to synced watchers.
    notified_rev: i64,
    store: Option<StoreReader>,
}

/// Wake-up signal of the catch-up thread.
#[derive(Default)]
struct Wake {
    pending: Mutex<bool>,
    cond: Condvar,
}

impl Wake {
    fn notify(&self) {
        *self.pending.lock() = true;
        self.cond.notify_one();
    }

    fn wait(&self, timeout: Duration) {
        let mut pending = self.pending.lock();
        if !*pending {
            self.cond.wait_for(&mut pending, timeout);
        }
        *pending = false;
    }
}

/// The member's watch hub.
pub struct WatchHub {
    state: Mutex<State>,
    wake: Arc<Wake>,
}

impl WatchHub {
    /// A hub with no store yet (the raft node takes the hub as its observer before it exists).
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                next_id: 1,
                synced: BTreeMap::new(),
                unsynced: BTreeMap::new(),
                notified_rev: 0,
                store: None,
            }),
            wake: Arc::new(Wake::default()),
        })
    }

    /// Give the hub the store it catches unsynced watchers up from; starts its catch-up task.
    pub fn attach(self: &Arc<Self>, store: StoreReader) {
        let current = store.current_revision();
        {
            let mut st = self.state.lock();
            if st.store.is_some() {
                tracing::warn!("watch hub attached twice; keeping the first store");
                return;
            }
            // Revisions applied before the hub was attached (replayed at open) are history.
            st.notified_rev = st.notified_rev.max(current);
            st.store = Some(store.clone());
        }
        let hub = Arc::downgrade(self);
        let wake = self.wake.clone();
        let spawned = std::thread::Builder::new()
            .name("watch-catch-up".into())
            .spawn(move || catch_up_loop(hub, wake, store));
        if let Err(e) = spawned {
            tracing::error!("cannot start the watch catch-up thread: {e}");
        }
    }

    /// Register a watcher. `Err(Compacted)` if `start_revision` is at or below the compaction point.
    pub fn watch(self: &Arc<Self>, spec: WatchSpec) -> Result<Watcher, ApplyError> {
        // Read the store before taking the hub lock (see the module docs). A compaction racing
        // with this registration is caught by the catch-up thread instead.
        let store = self.state.lock().store.clone();
        let compact = store.as_ref().map_or(0, |s| s.compact_revision());
        let start = spec.start_revision.max(0);
        if start != 0 && start <= compact {
            return Err(ApplyError::Compacted);
        }
        let (tx, rx) = mpsc::channel(WATCHER_BUFFER);
        let mut st = self.state.lock();
        let id = st.next_id;
        st.next_id += 1;
        let notified = st.notified_rev;
        if start == 0 || start > notified {
            let min_rev = start.max(notified + 1);
            st.synced.insert(id, Slot { spec, tx, min_rev });
        } else {
            let slot = Slot {
                spec,
                tx,
                min_rev: start,
            };
            st.unsynced.insert(
                id,
                Unsynced {
                    slot,
                    next_rev: start,
                },
            );
            drop(st);
            self.wake.notify();
        }
        Ok(Watcher { rx, id })
    }

    /// Highest revision already fanned out to synced watchers (for progress notifications).
    pub fn notified_revision(&self) -> i64 {
        self.state.lock().notified_rev
    }

    /// The revision a progress notification may announce for `ids`, if every one of them that
    /// still exists is synced and has reached its start revision (etcd answers progress requests
    /// only then). Every event up to the returned revision is already in those watchers' channels.
    pub fn progress_revision(&self, ids: &[u64]) -> Option<i64> {
        let st = self.state.lock();
        let rev = st.notified_rev;
        for id in ids {
            if st.unsynced.contains_key(id) {
                return None;
            }
            if let Some(slot) = st.synced.get(id) {
                if slot.spec.start_revision > rev {
                    return None;
                }
            }
        }
        Some(rev)
    }

    /// Number of registered watchers (synced, unsynced) — for tests and metrics.
    pub fn watcher_counts(&self) -> (usize, usize) {
        let st = self.state.lock();
        (st.synced.len(), st.unsynced.len())
    }

    /// One catch-up round over every unsynced watcher; true if some watcher could go on at once.
    fn catch_up_round(&self, store: &StoreReader) -> bool {
        let ids: Vec<u64> = self.state.lock().unsynced.keys().copied().collect();
        let mut more = false;
        for id in ids {
            let mut steps = 0;
            while self.catch_up_step(id, store) {
                steps += 1;
                if steps == CATCH_UP_STEPS_PER_ROUND {
                    more = true;
                    break;
                }
            }
        }
        more
    }

    /// Send watcher `id` one batch of history; true if it should be called again right away.
    fn catch_up_step(&self, id: u64, store: &StoreReader) -> bool {
        let (spec, start, end) = {
            let mut st = self.state.lock();
            let notified = st.notified_rev;
            let Some(w) = st.unsynced.get(&id) else {
                return false;
            };
            if w.slot.tx.is_closed() {
                st.unsynced.remove(&id);
                return false;
            }
            if w.next_rev > notified {
                if let Some(w) = st.unsynced.remove(&id) {
                    st.synced.insert(id, w.slot);
                }
                return false;
            }
            // Only this thread sends to unsynced watchers, so free capacity seen here stays free.
            if w.slot.tx.capacity() == 0 {
                return false;
            }
            let end = notified.min(w.next_rev.saturating_add(CATCH_UP_SPAN - 1));
            (w.slot.spec.clone(), w.next_rev, end)
        };

        let read = store.events(&spec.key, &spec.range_end, start, end, CATCH_UP_BATCH);
        let compact = match read {
            Err(ApplyError::Compacted) => store.compact_revision(),
            _ => 0,
        };
        // Last revision this read fully covers (a full batch may stop early, after a whole revision).
        let mut covered = end;
        let read = read.map(|events| {
            if events.len() >= CATCH_UP_BATCH {
                covered = events.last().map_or(end, |ev| ev.kv.mod_revision);
            }
            split_by_size(spec.select(&events), CATCH_UP_DELIVERY_BYTES)
        });

        let mut st = self.state.lock();
        let notified = st.notified_rev;
        let Some(w) = st.unsynced.get_mut(&id) else {
            return false;
        };
        if w.next_rev != start {
            return true;
        }
        match read {
            Err(ApplyError::Compacted) => {
                match w.slot.tx.try_send(Delivery::Compacted {
                    compact_revision: compact,
                }) {
                    // Full: keep it and retry when its reader made room.
                    Err(mpsc::error::TrySendError::Full(_)) => {}
                    _ => {
                        st.unsynced.remove(&id);
                    }
                }
                false
            }
            Err(e) => {
                tracing::warn!(watcher = id, "watch catch-up read failed: {e}");
                false
            }
            Ok(parts) => {
                for part in parts {
                    let first = part.first().map_or(start, |ev| ev.kv.mod_revision);
                    match w.slot.tx.try_send(Delivery::Events(part)) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            // Revisions before `first` held nothing more for this watcher.
                            w.next_rev = first;
                            return false;
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => {
                            st.unsynced.remove(&id);
                            return false;
                        }
                    }
                }
                w.next_rev = covered + 1;
                if w.next_rev > notified {
                    if let Some(w) = st.unsynced.remove(&id) {
                        st.synced.insert(id, w.slot);
                    }
                    return false;
                }
                true
            }
        }
    }

    /// Move every synced watcher to unsynced, to be caught up from `notified_rev + 1`.
    fn unsync_all(st: &mut State) {
        let next = st.notified_rev + 1;
        for (id, slot) in std::mem::take(&mut st.synced) {
            let next_rev = next.max(slot.min_rev);
            st.unsynced.insert(id, Unsynced { slot, next_rev });
        }
    }
}

/// Split `events` into deliveries of about `budget` bytes each, never inside a revision.
fn split_by_size(events: Vec<Event>, budget: usize) -> Vec<Vec<Event>> {
    let mut parts: Vec<Vec<Event>> = Vec::new();
    let mut cur: Vec<Event> = Vec::new();
    let mut size = 0;
    for ev in events {
        let new_rev = cur
            .last()
            .is_some_and(|last| last.kv.mod_revision != ev.kv.mod_revision);
        if new_rev && size >= budget {
            parts.push(std::mem::take(&mut cur));
            size = 0;
        }
        size += event_size(&ev);
        cur.push(ev);
    }
    if !cur.is_empty() {
        parts.push(cur);
    }
    parts
}

/// Rough encoded size of an event.
fn event_size(ev: &Event) -> usize {
    let kv = |kv: &crawler_storage::KeyValue| kv.key.len() + kv.value.len() + 40;
    kv(&ev.kv) + ev.prev_kv.as_ref().map_or(0, kv)
}

/// Body of the catch-up thread; ends when the hub is dropped.
fn catch_up_loop(hub: Weak<WatchHub>, wake: Arc<Wake>, store: StoreReader) {
    loop {
        let more = {
            let Some(hub) = hub.upgrade() else {
                return;
            };
            hub.catch_up_round(&store)
        };
        if !more {
            wake.wait(CATCH_UP_INTERVAL);
        }
    }
}

impl ApplyObserver for WatchHub {
    fn on_apply(&self, revision: i64, events: &[Event]) {
        let mut st = self.state.lock();
        if revision <= st.notified_rev {
            // Already part of the history the hub knows of (applied before attach).
            return;
        }
        if st.store.is_some() && revision > st.notified_rev + 1 {
            // A revision was never announced: let history fill the gap rather than lose it.
            tracing::warn!(
                revision,
                notified = st.notified_rev,
                "watch hub saw a revision gap; catching up from history"
            );
            Self::unsync_all(&mut st);
            st.notified_rev = revision;
            drop(st);
            self.wake.notify();
            return;
        }
        let mut dead = Vec::new();
        let mut slow = Vec::new();
        for (&id, slot) in &st.synced {
            if slot.tx.is_closed() {
                dead.push(id);
                continue;
            }
            if revision < slot.min_rev {
                continue;
            }
            let wanted = slot.spec.select(events);
            if wanted.is_empty() {
                continue;
            }
            match slot.tx.try_send(Delivery::Events(wanted)) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => slow.push(id),
                Err(mpsc::error::TrySendError::Closed(_)) => dead.push(id),
            }
        }
        for id in dead {
            st.synced.remove(&id);
        }
        for id in &slow {
            if let Some(slot) = st.synced.remove(id) {
                st.unsynced.insert(
                    *id,
                    Unsynced {
                        slot,
                        next_rev: revision,
                    },
                );
            }
        }
        st.notified_rev = revision;
        drop(st);
        if !slow.is_empty() {
            self.wake.notify();
        }
    }

    fn on_restore(&self, revision: i64) {
        let mut st = self.state.lock();
        Self::unsync_all(&mut st);
        st.notified_rev = revision;
        drop(st);
        self.wake.notify();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crawler_storage::KeyValue;

    fn ev(rev: i64, size: usize) -> Event {
        Event {
            kind: EventType::Put,
            kv: KeyValue {
                key: b"k".to_vec(),
                mod_revision: rev,
                value: vec![0; size],
                ..Default::default()
            },
            prev_kv: None,
        }
    }

    #[test]
    fn split_by_size_keeps_revisions_whole() {
        let events = vec![ev(1, 600), ev(1, 600), ev(2, 100), ev(3, 2000), ev(4, 10)];
        let parts = split_by_size(events.clone(), 1000);
        let revs: Vec<Vec<i64>> = parts
            .iter()
            .map(|p| p.iter().map(|e| e.kv.mod_revision).collect())
            .collect();
        assert_eq!(revs, vec![vec![1, 1], vec![2, 3], vec![4]]);
        assert_eq!(parts.concat(), events);
        assert!(split_by_size(Vec::new(), 10).is_empty());
    }

    #[test]
    fn spec_ranges_and_filters() {
        let one = WatchSpec {
            key: b"a".to_vec(),
            ..Default::default()
        };
        assert!(one.contains(b"a") && !one.contains(b"ab"));
        let from = WatchSpec {
            key: b"b".to_vec(),
            range_end: vec![0],
            ..Default::default()
        };
        assert!(from.contains(b"b") && from.contains(b"zz") && !from.contains(b"a"));
        let range = WatchSpec {
            key: b"b".to_vec(),
            range_end: b"d".to_vec(),
            no_put: true,
            ..Default::default()
        };
        assert!(range.contains(b"c") && !range.contains(b"d"));
        let mut put = ev(1, 1);
        put.kv.key = b"c".to_vec();
        assert!(!range.wants(&put));
        put.kind = EventType::Delete;
        assert!(range.wants(&put));
    }
}
