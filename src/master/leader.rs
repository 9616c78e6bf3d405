//! Campaigning, the become-leader sequence, and the leader's reconcile loop.
//!
//! A master campaigns with a fresh session; when it wins, it opens a term and runs, in order:
//! refresh the worker set (`GetService`), load every resource, add the missing seeds, assign
//! everything unassigned or assigned to a dead worker; then it reports ready and reconciles again
//! on every worker-set change (and every `resync_interval`). The term ends, and its work is
//! cancelled at once, when the election key is gone, the session is lost, or a fenced write fails.
//! After a term the session is revoked (deleting the key if it is still there) and the master
//! campaigns again with a new one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::assign::Load;
use super::counters::MasterCounters;
use super::resources::{Fence, StoredResource, WriteError};
use super::state::{Inner, Term};
use crate::client::{
    Compare, CompareResult, CompareTarget, KvClientExt, KvError, PutRequest, RequestOp,
};
use crate::coord::election::{ElectionError, Leadership, Session};
use crate::coord::registry::RegistryError;
use crate::model::resource::{format_assigned, Resource};
use crate::model::spec::{spec_key, PAUSED_PREFIX, SPEC_PREFIX};

/// Pause before retrying after a store failure.
const RETRY_PAUSE: Duration = Duration::from_millis(500);
/// Deadline for resigning and revoking a session.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a leader step did not complete.
#[derive(Debug, thiserror::Error)]
pub enum LeadError {
    /// A fenced write failed: the term is over.
    #[error("fenced write failed: leadership lost")]
    Fenced,
    /// The store failed; retry later.
    #[error(transparent)]
    Kv(#[from] KvError),
    /// The registry read failed; retry later.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// No ID could be minted.
    #[error("{0}")]
    Id(String),
}

/// Resolves when `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Sleep, unless stopped first; true when stopped.
async fn pause(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => *stop.borrow(),
        _ = stopped(stop) => true,
    }
}

async fn close_session(session: Session) {
    match tokio::time::timeout(CLEANUP_TIMEOUT, session.close()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "revoking the election session failed"),
        Err(_) => tracing::warn!("revoking the election session timed out"),
    }
}

/// The campaign loop; returns when `stop` turns true (after resigning if leading).
pub async fn run(inner: Arc<Inner>, mut stop: watch::Receiver<bool>) {
    if !inner.campaign {
        tracing::info!(master = %inner.value, "not campaigning (API-only master)");
        stopped(&mut stop).await;
        return;
    }
    loop {
        if *stop.borrow() {
            return;
        }
        let session = tokio::select! {
            r = Session::new(inner.client.clone(), inner.session_ttl) => r,
            _ = stopped(&mut stop) => return,
        };
        let session = match session {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot open an election session; retrying");
                if pause(&mut stop, RETRY_PAUSE).await {
                    return;
                }
                continue;
            }
        };
        tracing::debug!(lease = format!("{:x}", session.lease_id()), "campaigning");
        let won = tokio::select! {
            r = inner.election.campaign(&session, inner.value.clone()) => r,
            _ = stopped(&mut stop) => {
                close_session(session).await;
                return;
            }
        };
        match won {
            Ok(leadership) => {
                let was_stopped = lead(&inner, leadership, &mut stop).await;
                close_session(session).await;
                if was_stopped {
                    return;
                }
            }
            Err(e) => {
                if !matches!(e, ElectionError::SessionExpired) {
                    tracing::warn!(error = %e, "campaign failed; retrying");
                }
                close_session(session).await;
                if pause(&mut stop, RETRY_PAUSE).await {
                    return;
                }
            }
        }
    }
}

/// Lead one term; true when it ended because the master is stopping.
async fn lead(
    inner: &Arc<Inner>,
    leadership: Leadership,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let term = Term::new(Fence::of(&leadership));
    inner.term.send_replace(Some(term.clone()));
    tracing::info!(
        master = %inner.value,
        key = %String::from_utf8_lossy(leadership.key()),
        create_revision = leadership.create_revision(),
        "became master leader"
    );
    MasterCounters::inc(&inner.counters.became_leader);
    let mut work = tokio::spawn(work(inner.clone(), term.clone()));
    let was_stopped = tokio::select! {
        _ = leadership.lost() => {
            tracing::warn!(master = %inner.value, "master leadership lost");
            false
        }
        _ = term.ended() => {
            tracing::warn!(master = %inner.value, "master deposed: a fenced write failed");
            false
        }
        _ = stopped(stop) => true,
        _ = &mut work => false,
    };
    // Stop acting at once: in-flight API calls see the term end, the leader work is cancelled.
    term.end();
    work.abort();
    inner.term.send_replace(None);
    MasterCounters::inc(&inner.counters.lost_leadership);
    if was_stopped {
        match tokio::time::timeout(CLEANUP_TIMEOUT, leadership.resign()).await {
            Ok(Ok(())) => tracing::info!(master = %inner.value, "resigned master leadership"),
            Ok(Err(e)) => tracing::warn!(error = %e, "resigning failed"),
            Err(_) => tracing::warn!("resigning timed out"),
        }
    }
    was_stopped
}

/// The leader's work for one term: become ready, then keep every resource assigned.
async fn work(inner: Arc<Inner>, term: Arc<Term>) {
    let mut changes = inner.workers.subscribe();
    loop {
        changes.borrow_and_update();
        match become_leader(&inner, &term).await {
            Ok(()) => break,
            Err(LeadError::Fenced) => {
                term.end();
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "become-leader sequence failed; retrying");
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
    term.set_ready();
    tracing::info!(master = %inner.value, "master leader ready");
    let mut resync = tokio::time::interval(inner.resync_interval);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    resync.reset();
    let mut retry_at: Option<tokio::time::Instant> = None;
    loop {
        let retry = async {
            match retry_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = changes.changed() => {
                if r.is_err() {
                    return;
                }
                // Workers started together register within moments of each other: let them
                // all arrive, so the least-loaded choice sees every one of them.
                tokio::time::sleep(JOIN_SETTLE).await;
            }
            _ = resync.tick() => {
                // A full re-read as well: a registry event that could not be decoded (a delete
                // without its previous value) must not leave a dead worker in the set for good.
                if let Err(e) = inner.workers.refresh().await {
                    tracing::warn!(error = %e, "refreshing the worker set failed");
                }
            }
            _ = retry => {}
        }
        changes.borrow_and_update();
        match reconcile(&inner, &term, None).await {
            Ok(()) => retry_at = None,
            Err(LeadError::Fenced) => {
                term.end();
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "reassigning resources failed; retrying");
                retry_at = Some(tokio::time::Instant::now() + RETRY_PAUSE);
            }
        }
    }
}

/// How long a worker-set change settles before the leader assigns.
const JOIN_SETTLE: Duration = Duration::from_millis(300);

/// Refresh the worker set, load every resource, add missing seeds, assign what needs it.
async fn become_leader(inner: &Inner, term: &Term) -> Result<(), LeadError> {
    inner.workers.refresh().await?;
    reconcile(inner, term, Some(&inner.seeds)).await
}

fn fenced(e: WriteError) -> Result<bool, LeadError> {
    match e {
        WriteError::Fenced => Err(LeadError::Fenced),
        WriteError::Kv(e) => Err(LeadError::Kv(e)),
        // Someone else changed or created it meanwhile: the next pass sees the new state.
        WriteError::Exists(m) | WriteError::Missing(m) => {
            tracing::debug!(reason = %m, "resource changed concurrently; skipped");
            Ok(false)
        }
    }
}

/// One pass: on becoming leader (`seeds` given) add the seeds that are not stored; then give
/// every resource that is unassigned or assigned to a dead worker to the least-loaded live worker
/// (keeping its ID and creation time).
pub async fn reconcile(
    inner: &Inner,
    term: &Term,
    seeds: Option<&[String]>,
) -> Result<(), LeadError> {
    let _op = inner.op_lock.lock().await;
    if term.is_ended() {
        return Err(LeadError::Fenced);
    }
    let workers = inner.workers.snapshot();
    let (mut stored, _) = inner.store.load().await?;
    if seeds.is_some() {
        tracing::info!(
            resources = stored.len(),
            workers = workers.len(),
            "leader init load resource"
        );
    }
    let mut load = Load::count(stored.iter().map(|s| &s.resource), &workers);
    if seeds.is_some() {
        seed_specs(inner, term).await?;
    }
    // Paused tasks stay unassigned until resumed.
    let paused: std::collections::HashSet<String> = inner
        .client
        .get_prefix(PAUSED_PREFIX)
        .await?
        .body
        .iter()
        .filter_map(|kv| kv.key.strip_prefix(PAUSED_PREFIX.as_bytes()))
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();

    for name in seeds.unwrap_or_default() {
        if stored.iter().any(|s| &s.resource.name == name) {
            continue;
        }
        let node = load.least_loaded_for(&workers, name).cloned();
        if node.is_none() && !workers.is_empty() {
            tracing::warn!(resource = %name, "no live worker can run this task (none lists it in its [[Tasks]]); stored unassigned");
        }
        let r = Resource {
            id: inner
                .mint_id()
                .await
                .map_err(|e| LeadError::Id(e.to_string()))?,
            name: name.clone(),
            assigned_node: node
                .as_ref()
                .map(|n| format_assigned(&n.id, &n.address))
                .unwrap_or_default(),
            creation_time: super::ops::now_nanos(),
        };
        match inner.store.create(&term.fence, &r).await {
            Ok(_) => {
                if let Some(n) = &node {
                    load.add(&n.id);
                }
                if !r.assigned_node.is_empty() {
                    MasterCounters::inc(&inner.counters.assignments);
                }
                tracing::info!(resource = %r.name, id = %r.id, node = %r.assigned_node, "seed added");
            }
            Err(e) => {
                fenced(e)?;
            }
        }
    }

    // Oldest first, so the longest-standing tasks are placed first.
    stored.sort_by(|a, b| {
        (a.resource.creation_time, &a.resource.name)
            .cmp(&(b.resource.creation_time, &b.resource.name))
    });
    for s in stored {
        if paused.contains(&s.resource.name) {
            continue;
        }
        let current = s.resource.assigned_id().map(str::to_string);
        let live = current.as_deref().and_then(|id| workers.get(id));
        let new_assigned = match live {
            Some(node) => {
                let want = format_assigned(&node.id, &node.address);
                if want == s.resource.assigned_node {
                    continue;
                }
                // Same worker, new address (it re-registered elsewhere): keep it there.
                want
            }
            None => match load.least_loaded_for(&workers, &s.resource.name) {
                Some(node) => format_assigned(&node.id, &node.address),
                None if s.resource.assigned_node.is_empty() => {
                    if !workers.is_empty() {
                        tracing::debug!(resource = %s.resource.name, "no live worker can run this task; left unassigned");
                    }
                    continue;
                }
                // Its worker is gone and none is left: mark it unassigned until one joins.
                None => String::new(),
            },
        };
        let r = Resource {
            assigned_node: new_assigned,
            ..s.resource.clone()
        };
        match inner.store.update(&term.fence, &r, s.mod_revision).await {
            Ok(_) => {
                if live.is_none() {
                    if let Some(id) = r.assigned_id() {
                        load.add(id);
                    }
                }
                let what = if r.assigned_node.is_empty() {
                    "resource unassigned: no live worker"
                } else if s.resource.assigned_node.is_empty() {
                    MasterCounters::inc(&inner.counters.assignments);
                    "resource assigned"
                } else {
                    MasterCounters::inc(&inner.counters.reassignments);
                    "resource reassigned"
                };
                tracing::info!(
                    resource = %r.name,
                    id = %r.id,
                    from = %s.resource.assigned_node,
                    to = %r.assigned_node,
                    "{what}"
                );
            }
            Err(e) => {
                fenced(e)?;
            }
        }
    }
    if inner.rebalance {
        rebalance(inner, term).await?;
    }
    Ok(())
}

/// Store the config's task specs that the store lacks (the seeds of tasks as data); a spec
/// already stored, e.g. replaced through the task API, is kept.
async fn seed_specs(inner: &Inner, term: &Term) -> Result<(), LeadError> {
    if inner.seed_specs.is_empty() {
        return Ok(());
    }
    let stored: std::collections::HashSet<Vec<u8>> = inner
        .client
        .get_prefix(SPEC_PREFIX)
        .await?
        .body
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    for t in &inner.seed_specs {
        let key = spec_key(&t.name);
        if stored.contains(key.as_bytes()) {
            continue;
        }
        let cond = Compare {
            result: CompareResult::Equal,
            target: CompareTarget::Create(0),
            key: key.clone().into_bytes(),
            range_end: Vec::new(),
        };
        let op = RequestOp::Put(PutRequest {
            key: key.into_bytes(),
            value: serde_json::to_vec(t).unwrap_or_default(),
            ..PutRequest::default()
        });
        let exists = WriteError::Exists(t.name.clone());
        match inner
            .store
            .write(&term.fence, vec![cond], vec![op], exists)
            .await
        {
            Ok(_) => tracing::info!(task = %t.name, "seed spec stored"),
            Err(e) => {
                fenced(e)?;
            }
        }
    }
    Ok(())
}

/// Move resources from the busiest live workers to the idlest until their loads differ by at
/// most one: the newest resource of the busiest worker moves first (the oldest keep running
/// where they are). Each move is a fenced update like any reassignment; the worker losing the
/// task stops it and the gaining one resumes it from its checkpoint.
async fn rebalance(inner: &Inner, term: &Term) -> Result<(), LeadError> {
    let workers = inner.workers.snapshot();
    if workers.len() < 2 {
        return Ok(());
    }
    let (stored, _) = inner.store.load().await?;
    let mut by_node: BTreeMap<String, Vec<StoredResource>> =
        workers.keys().map(|id| (id.clone(), Vec::new())).collect();
    for s in stored {
        if let Some(list) = s.resource.assigned_id().and_then(|id| by_node.get_mut(id)) {
            list.push(s);
        }
    }
    for list in by_node.values_mut() {
        list.sort_by_key(|s| s.resource.creation_time);
    }
    loop {
        // Ties: the smallest id gains, the largest id gives (deterministic).
        let Some((idle, idle_n)) = by_node
            .iter()
            .min_by_key(|(_, l)| l.len())
            .map(|(id, l)| (id.clone(), l.len()))
        else {
            return Ok(());
        };
        // max_by_key keeps the last maximum: the largest id among equals.
        let Some((busy, busy_n)) = by_node
            .iter()
            .max_by_key(|(_, l)| l.len())
            .map(|(id, l)| (id.clone(), l.len()))
        else {
            return Ok(());
        };
        if busy_n <= idle_n + 1 {
            return Ok(());
        }
        let Some(node) = workers.get(&idle) else {
            return Ok(());
        };
        // The busy worker's newest resource that the idle one can run.
        let Some(list) = by_node.get_mut(&busy) else {
            return Ok(());
        };
        let Some(pos) = list.iter().rposition(|s| node.can_run(&s.resource.name)) else {
            return Ok(());
        };
        let s = list.remove(pos);
        let r = Resource {
            assigned_node: format_assigned(&node.id, &node.address),
            ..s.resource.clone()
        };
        match inner.store.update(&term.fence, &r, s.mod_revision).await {
            Ok(rev) => {
                MasterCounters::inc(&inner.counters.reassignments);
                tracing::info!(resource = %r.name, id = %r.id, from = %s.resource.assigned_node, to = %r.assigned_node, "resource rebalanced");
                if let Some(list) = by_node.get_mut(&idle) {
                    list.push(StoredResource {
                        resource: r,
                        mod_revision: rev,
                    });
                }
            }
            // Changed meanwhile: the next pass starts from the new state.
            Err(e) => {
                fenced(e)?;
                return Ok(());
            }
        }
    }
}
