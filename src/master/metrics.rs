//! The master's `GET /metrics`: live workers, resources (assigned or not), whether it leads,
//! and its counters (assignments, reassignments, leadership changes).

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;

use super::counters::MasterCounters;
use super::state::Inner;
use crate::util::prometheus::Snapshot;

fn n(v: usize) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// `GET /metrics`.
pub(crate) async fn metrics(State(inner): State<Arc<Inner>>) -> Response {
    let mut s = Snapshot::default();
    let c = &inner.counters;
    s.gauge(
        "crawler_master_is_leader",
        "1 while this master leads, else 0.",
        vec![],
        i64::from(inner.current_term().is_some()),
    );
    s.counter(
        "crawler_master_leader_changes",
        "Times this master became or stopped being the leader.",
        vec![],
        MasterCounters::get(&c.became_leader) + MasterCounters::get(&c.lost_leadership),
    );
    s.gauge(
        "crawler_master_workers",
        "Live workers this master sees.",
        vec![],
        n(inner.workers.snapshot().len()),
    );
    // The resources as stored (skipped when the store cannot be read now).
    if let Ok((stored, _)) = inner.store.load().await {
        let assigned = stored
            .iter()
            .filter(|s| !s.resource.assigned_node.is_empty())
            .count();
        s.gauge(
            "crawler_master_resources",
            "Resources stored, by whether a worker is assigned.",
            vec![("assigned", "true".to_string())],
            n(assigned),
        );
        s.gauge(
            "crawler_master_resources",
            "Resources stored, by whether a worker is assigned.",
            vec![("assigned", "false".to_string())],
            n(stored.len() - assigned),
        );
    }
    s.counter(
        "crawler_master_assignments",
        "Resources this master assigned to a worker.",
        vec![],
        MasterCounters::get(&c.assignments),
    );
    s.counter(
        "crawler_master_reassignments",
        "Resources this master moved from one worker to another.",
        vec![],
        MasterCounters::get(&c.reassignments),
    );
    s.into_response()
}
