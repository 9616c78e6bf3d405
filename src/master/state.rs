//! State shared by the leader loop, the operations and the API servers of one master.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::forward::Forwarder;
use super::resources::{Fence, ResourceStore};
use super::workers::WorkerSet;
use crate::client::KvClient;
use crate::coord::election::Election;
use crate::coord::registry::Registry;
use crate::coord::snowflake::Snowflake;

/// One leadership term of this master.
pub struct Term {
    /// The guard of every write of this term.
    pub fence: Fence,
    ready: watch::Sender<bool>,
    ended: watch::Sender<bool>,
}

impl Term {
    pub fn new(fence: Fence) -> Arc<Self> {
        Arc::new(Self {
            fence,
            ready: watch::channel(false).0,
            ended: watch::channel(false).0,
        })
    }

    /// True once the become-leader sequence finished (and the term has not ended).
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow() && !self.is_ended()
    }

    pub fn set_ready(&self) {
        self.ready.send_replace(true);
    }

    /// True once the term is over.
    pub fn is_ended(&self) -> bool {
        *self.ended.borrow()
    }

    /// End the term: every in-flight operation of it stops.
    pub fn end(&self) {
        self.ended.send_replace(true);
    }

    /// Resolves when the term has ended.
    pub async fn ended(&self) {
        let mut rx = self.ended.subscribe();
        let _ = rx.wait_for(|e| *e).await;
    }

    /// Resolves when the term is ready (true) or has ended (false).
    pub async fn wait_ready(&self) -> bool {
        let mut ready = self.ready.subscribe();
        tokio::select! {
            r = ready.wait_for(|r| *r) => r.is_ok() && !self.is_ended(),
            _ = self.ended() => false,
        }
    }
}

/// State shared by the leader loop and the API servers.
pub struct Inner {
    /// Master id.
    pub id: u64,
    /// The election value, `master<id>-<advertised grpc address>`.
    pub value: String,
    /// Seed resource names.
    pub seeds: Vec<String>,
    /// Seed task specs, stored when the store has none of that name.
    pub seed_specs: Vec<crate::model::task::TaskConfig>,
    /// Election session TTL.
    pub session_ttl: Duration,
    /// Leader's periodic reconcile interval.
    pub resync_interval: Duration,
    /// Whether this master campaigns.
    pub campaign: bool,
    /// Whether the leader rebalances assignments.
    pub rebalance: bool,
    /// The store.
    pub client: Arc<dyn KvClient>,
    /// The master election.
    pub election: Election,
    /// The worker registry.
    pub registry: Registry,
    /// Worker service name.
    pub worker_service: String,
    /// Resource reads and fenced writes.
    pub store: ResourceStore,
    /// Live workers.
    pub workers: Arc<WorkerSet>,
    /// Resource ID generator.
    pub ids: Arc<Snowflake>,
    /// The current term while this master leads.
    pub term: watch::Sender<Option<Arc<Term>>>,
    /// Serializes the leader's read-assign-write operations, so each one counts load from a store
    /// state no other operation of this master is changing.
    pub op_lock: tokio::sync::Mutex<()>,
    /// Clients to the leader for forwarded writes.
    pub forward: Forwarder,
    /// The bearer token the APIs require, if any.
    pub api_token: Option<String>,
    /// Counters shown on `GET /metrics`.
    pub counters: super::counters::MasterCounters,
}

impl Inner {
    /// The current term, if this master leads and the term has not ended.
    pub fn current_term(&self) -> Option<Arc<Term>> {
        self.term
            .borrow()
            .as_ref()
            .filter(|t| !t.is_ended())
            .cloned()
    }
}
