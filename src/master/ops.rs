//! The master API's operations, shared by the gRPC and HTTP front ends.
//!
//! Writes (add, delete) run on the leader under its fence; a follower forwards them to the
//! leader's gRPC address. Reads (get, list, workers, leader) are answered by any master from the
//! store, which every master shares.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::api::{parse_value, AddOutcome, ApiError, LeaderView, NO_LEADER};
use super::assign::Load;
use super::resources::{validate_name, WriteError};
use super::state::{Inner, Term};
use crate::coord::registry::Node;
use crate::model::resource::{format_assigned, Resource};

/// How long a write waits for a leader that has won but is not ready yet.
const READY_WAIT: Duration = Duration::from_secs(5);

/// Where a write goes.
pub(super) enum Route {
    /// This master leads: run it in this term.
    Local(Arc<Term>),
    /// Forward to the leader at this gRPC address.
    Forward(String),
}

pub fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

pub(super) fn lost() -> ApiError {
    ApiError::Unavailable("master leadership lost; retry".into())
}

fn invalid(name: &str) -> Result<(), ApiError> {
    validate_name(name).map_err(|e| ApiError::InvalidArgument(e.to_string()))
}

impl Inner {
    /// Decide where a write runs. `forwarded`: the call came from another master, so it must not
    /// be forwarded again (no loops while leadership moves).
    pub(super) async fn route(&self, forwarded: bool) -> Result<Route, ApiError> {
        let deadline = tokio::time::Instant::now() + READY_WAIT;
        loop {
            if let Some(term) = self.current_term() {
                if term.is_ready() {
                    return Ok(Route::Local(term));
                }
                match tokio::time::timeout_at(deadline, term.wait_ready()).await {
                    Ok(true) => return Ok(Route::Local(term)),
                    Ok(false) => continue,
                    Err(_) => {
                        return Err(ApiError::Unavailable("master leader not ready yet".into()))
                    }
                }
            }
            let leader = self.election.leader().await.map_err(|e| {
                ApiError::Unavailable(format!("cannot read the master election: {e}"))
            })?;
            match leader {
                None => return Err(ApiError::Unavailable(NO_LEADER.into())),
                Some(l) if l.value_str() == self.value => {
                    // Our key leads, but the term is not set up yet (just won) or already over.
                    if tokio::time::Instant::now() >= deadline {
                        return Err(ApiError::Unavailable("master leader not ready yet".into()));
                    }
                    let mut terms = self.term.subscribe();
                    let _ = tokio::time::timeout_at(
                        deadline.min(tokio::time::Instant::now() + Duration::from_millis(200)),
                        terms.changed(),
                    )
                    .await;
                }
                Some(_) if forwarded => {
                    return Err(ApiError::Unavailable(
                        "not the master leader (forwarded call)".into(),
                    ))
                }
                Some(l) => {
                    let value = l.value_str();
                    return match parse_value(&value) {
                        Some((_, addr)) => Ok(Route::Forward(addr.to_string())),
                        None => Err(ApiError::Unavailable(format!(
                            "master leader {value:?} has no address to forward to"
                        ))),
                    };
                }
            }
        }
    }

    /// Add a resource and assign it (see [`AddOutcome`]).
    pub async fn add_resource(&self, name: &str, forwarded: bool) -> Result<AddOutcome, ApiError> {
        invalid(name)?;
        match self.route(forwarded).await? {
            Route::Forward(addr) => self.forward.add_resource(&addr, name).await,
            Route::Local(term) => {
                tokio::select! {
                    r = self.add_local(&term, name) => r,
                    _ = term.ended() => Err(lost()),
                }
            }
        }
    }

    async fn add_local(&self, term: &Term, name: &str) -> Result<AddOutcome, ApiError> {
        let _op = self.op_lock.lock().await;
        let (stored, _) = self.store.load().await?;
        if stored.iter().any(|s| s.resource.name == name) {
            return Err(ApiError::AlreadyExists(format!(
                "resource {name} already exists"
            )));
        }
        let workers = self.workers.snapshot();
        let load = Load::count(stored.iter().map(|s| &s.resource), &workers);
        let node = load.least_loaded_for(&workers, name).cloned();
        if node.is_none() && !workers.is_empty() {
            tracing::warn!(resource = %name, "no live worker can run this task (none lists it in its [[Tasks]]); stored unassigned");
        }
        let resource = Resource {
            id: self.mint_id().await?,
            name: name.to_string(),
            assigned_node: node
                .as_ref()
                .map(|n| format_assigned(&n.id, &n.address))
                .unwrap_or_default(),
            creation_time: now_nanos(),
        };
        match self.store.create(&term.fence, &resource).await {
            Ok(_) => {
                if !resource.assigned_node.is_empty() {
                    super::counters::MasterCounters::inc(&self.counters.assignments);
                }
                tracing::info!(resource = %name, id = %resource.id, node = %resource.assigned_node, "resource added");
                Ok(AddOutcome { resource, node })
            }
            Err(WriteError::Fenced) => {
                tracing::warn!("fenced write failed: leadership lost");
                term.end();
                Err(lost())
            }
            Err(WriteError::Exists(_)) => Err(ApiError::AlreadyExists(format!(
                "resource {name} already exists"
            ))),
            Err(WriteError::Missing(m)) => Err(ApiError::Internal(m)),
            Err(WriteError::Kv(e)) => Err(e.into()),
        }
    }

    /// A new snowflake ID (off the async threads: the generator may sleep when the clock steps back).
    pub async fn mint_id(&self) -> Result<String, ApiError> {
        let ids = self.ids.clone();
        match tokio::task::spawn_blocking(move || ids.next_id()).await {
            Ok(Ok(id)) => Ok(id.to_string()),
            Ok(Err(e)) => Err(ApiError::Internal(e.to_string())),
            Err(e) => Err(ApiError::Internal(format!("id generator failed: {e}"))),
        }
    }

    /// Delete a resource.
    pub async fn delete_resource(&self, name: &str, forwarded: bool) -> Result<(), ApiError> {
        invalid(name)?;
        match self.route(forwarded).await? {
            Route::Forward(addr) => self.forward.delete_resource(&addr, name).await,
            Route::Local(term) => {
                tokio::select! {
                    r = self.delete_local(&term, name) => r,
                    _ = term.ended() => Err(lost()),
                }
            }
        }
    }

    async fn delete_local(&self, term: &Term, name: &str) -> Result<(), ApiError> {
        let _op = self.op_lock.lock().await;
        match self.store.delete(&term.fence, name).await {
            Ok(_) => {
                tracing::info!(resource = %name, "resource deleted");
                Ok(())
            }
            Err(WriteError::Fenced) => {
                tracing::warn!("fenced write failed: leadership lost");
                term.end();
                Err(lost())
            }
            Err(WriteError::Missing(_)) => {
                Err(ApiError::NotFound(format!("resource {name} not found")))
            }
            Err(WriteError::Exists(m)) => Err(ApiError::Internal(m)),
            Err(WriteError::Kv(e)) => Err(e.into()),
        }
    }

    /// One resource from the store.
    pub async fn get_resource(&self, name: &str) -> Result<Resource, ApiError> {
        invalid(name)?;
        match self.store.get(name).await? {
            Some(s) => Ok(s.resource),
            None => Err(ApiError::NotFound(format!("resource {name} not found"))),
        }
    }

    /// Every resource in the store, by name.
    pub async fn list_resources(&self) -> Result<Vec<Resource>, ApiError> {
        Ok(self
            .store
            .load()
            .await?
            .0
            .into_iter()
            .map(|s| s.resource)
            .collect())
    }

    /// The workers registered now, by node id (read from the registry, not from memory).
    pub async fn list_workers(&self) -> Result<Vec<Node>, ApiError> {
        let services = self
            .registry
            .get_service(&self.worker_service)
            .await
            .map_err(|e| ApiError::Unavailable(format!("registry: {e}")))?;
        let mut nodes: Vec<Node> = services.into_iter().flat_map(|s| s.nodes).collect();
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        nodes.dedup_by(|a, b| a.id == b.id);
        Ok(nodes)
    }

    /// The current leader.
    /// Whether this master can serve now: the ready leader confirmed by a linearizable read, or a
    /// follower that reaches one. `Ok` says which, `Err` why not. Bounded by [`READY_PROBE`], so
    /// a lost quorum shows within about one election timeout.
    pub async fn readiness(&self) -> Result<String, String> {
        let view = match tokio::time::timeout(READY_PROBE, self.leader_view()).await {
            Err(_) => {
                return Err(format!(
                    "the store did not answer within {READY_PROBE:?} (no quorum?)"
                ))
            }
            Ok(Err(e)) => return Err(e.to_string()),
            Ok(Ok(v)) => v,
        };
        match self.current_term() {
            Some(t) if view.is_self && t.is_ready() => Ok("leader".into()),
            Some(_) if view.is_self => Err("leader, not ready yet".into()),
            _ => Ok(format!("follower of {}", view.value)),
        }
    }

    pub async fn leader_view(&self) -> Result<LeaderView, ApiError> {
        let leader = self
            .election
            .leader()
            .await
            .map_err(|e| ApiError::Unavailable(format!("cannot read the master election: {e}")))?
            .ok_or_else(|| ApiError::Unavailable(NO_LEADER.into()))?;
        let value = leader.value_str();
        let (master_id, address) = parse_value(&value)
            .map(|(id, a)| (id, a.to_string()))
            .unwrap_or_default();
        let is_self = self.current_term().is_some_and(|t| {
            t.fence.key == leader.key && t.fence.create_revision == leader.create_revision
        });
        Ok(LeaderView {
            value,
            master_id,
            address,
            create_revision: leader.create_revision,
            is_self,
        })
    }
}

/// Longest a readiness check waits for the store.
pub const READY_PROBE: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn election_values() {
        assert_eq!(
            parse_value("master2-192.168.0.107:9091"),
            Some((2, "192.168.0.107:9091"))
        );
        assert_eq!(parse_value("master2-[::1]:9091"), Some((2, "[::1]:9091")));
        assert_eq!(parse_value("master2-"), None);
        assert_eq!(parse_value("masterx-a:1"), None);
        assert_eq!(parse_value("worker2-a:1"), None);
    }

    #[test]
    fn status_round_trip() {
        for e in [
            ApiError::InvalidArgument("resource name is empty".into()),
            ApiError::AlreadyExists("a".into()),
            ApiError::NotFound("b".into()),
            ApiError::Unavailable(NO_LEADER.into()),
            ApiError::Internal("c".into()),
        ] {
            let s: tonic::Status = e.clone().into();
            assert_eq!(ApiError::from(s), e);
        }
    }
}
