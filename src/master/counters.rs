//! What a master counts as it works, for `GET /metrics`: relaxed atomics, bumped where the
//! leader assigns and reassigns and where this master wins or loses the election.

use std::sync::atomic::{AtomicU64, Ordering};

/// The master's counters.
#[derive(Debug, Default)]
pub struct MasterCounters {
    /// Times this master became the leader.
    pub(crate) became_leader: AtomicU64,
    /// Times this master stopped leading (lost, deposed or stopped).
    pub(crate) lost_leadership: AtomicU64,
    /// Resources assigned to a worker where none was (added, seeded, or left unassigned before).
    pub(crate) assignments: AtomicU64,
    /// Resources moved from one worker to another (worker left, or rebalancing).
    pub(crate) reassignments: AtomicU64,
}

impl MasterCounters {
    pub(crate) fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}
