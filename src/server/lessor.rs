//! Lease clocks. Only the leader decides expiry: it keeps a deadline per lease, extends every lease
//! when it takes over, and expires a lease by proposing `Command::LeaseRevoke` through raft.
//! Followers forward keep-alives and TTL queries to the leader over etcd's own Lease gRPC API.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crawler_proto::etcdserverpb::lease_client::LeaseClient;
use crawler_proto::etcdserverpb::{LeaseKeepAliveRequest, LeaseTimeToLiveRequest};
use crawler_raft::{NodeId, RaftError, RaftNode};
use crawler_storage::{ApplyError, Command, CommandResult};
use parking_lot::Mutex;
use tokio::sync::watch;
use tonic::transport::Channel;

/// etcd's `lease.MaxLeaseTTL`: the largest TTL a lease may be granted with, seconds.
pub(crate) const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// How often the leader looks for expired leases.
const EXPIRY_TICK: Duration = Duration::from_millis(100);

/// Time allowed for a keep-alive or TTL query forwarded to the leader (etcd: 5 s request timeout).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors of lease operations (texts are etcd's).
#[derive(Debug, thiserror::Error)]
pub(crate) enum LeaseError {
    /// The lease does not exist (gRPC NotFound).
    #[error("etcdserver: requested lease not found")]
    NotFound,
    /// A lease with the requested id exists already (gRPC FailedPrecondition).
    #[error("etcdserver: lease already exists")]
    Exists,
    /// Raft could not replicate or route the request (no leader, timeout, stopped...).
    #[error(transparent)]
    Raft(#[from] crawler_raft::RaftError),
    /// Anything else, with the text to report.
    #[error("{0}")]
    Other(String),
    /// The requested TTL is above `MAX_LEASE_TTL` (gRPC OutOfRange in etcd).
    #[error("etcdserver: too large lease TTL")]
    TtlTooLarge,
}

impl LeaseError {
    fn from_apply(e: ApplyError) -> Self {
        match e {
            ApplyError::LeaseNotFound => LeaseError::NotFound,
            ApplyError::LeaseExists => LeaseError::Exists,
            other => LeaseError::Other(other.to_string()),
        }
    }

    /// Maps a status answered by the leader we forwarded to back to a lease error.
    fn from_status(s: tonic::Status) -> Self {
        let msg = s.message().to_string();
        if msg == LeaseError::NotFound.to_string() {
            return LeaseError::NotFound;
        }
        if msg == RaftError::NoLeader.to_string() {
            return LeaseError::Raft(RaftError::NoLeader);
        }
        if msg == RaftError::Timeout.to_string() || s.code() == tonic::Code::DeadlineExceeded {
            return LeaseError::Raft(RaftError::Timeout);
        }
        if s.code() == tonic::Code::Unavailable {
            // The leader we knew is unreachable (crashed or partitioned): a leader change is
            // under way, which clients treat like "no leader" and retry.
            return LeaseError::Raft(RaftError::NoLeader);
        }
        LeaseError::Other(msg)
    }
}

/// Remaining time of a lease.
#[derive(Clone, Debug)]
pub(crate) struct LeaseTtl {
    /// The lease asked about.
    pub id: i64,
    /// Remaining seconds; -1 when the lease does not exist.
    pub ttl: i64,
    /// TTL the lease was granted with, seconds (0 when it does not exist).
    pub granted_ttl: i64,
    /// Attached keys, when asked for.
    pub keys: Vec<Vec<u8>>,
}

/// Tunables of the lessor, derived from the raft timing flags.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LessorConfig {
    /// Smallest TTL a lease is granted with, seconds.
    pub min_ttl: i64,
    /// Extra time every lease gets when this member becomes leader (etcd: the election timeout),
    /// so that clients have time to find the new leader before their leases expire.
    pub promote_extend: Duration,
}

impl LessorConfig {
    /// etcd's rule: minimum TTL = ceil(1.5 × election timeout); extension on promotion = election
    /// timeout. Both timings in milliseconds.
    pub(crate) fn from_timing(heartbeat_ms: u64, election_timeout_ms: u64) -> Self {
        // etcd counts in heartbeat ticks: (3 * electionTicks / 2) * heartbeat.
        let hb = heartbeat_ms.max(1);
        let election_ticks = (election_timeout_ms / hb).max(1);
        let min_ms = (3 * election_ticks / 2) * hb;
        Self {
            min_ttl: (min_ms.div_ceil(1000) as i64).max(1),
            promote_extend: Duration::from_millis(election_timeout_ms),
        }
    }
}

impl Default for LessorConfig {
    /// etcd's defaults (heartbeat 100 ms, election timeout 1000 ms): minimum TTL 2 s.
    fn default() -> Self {
        Self::from_timing(100, 1000)
    }
}

/// The leader's clocks.
#[derive(Default)]
struct Clocks {
    /// Term in which this member last took over as leader; `None` while it does not lead.
    leading_term: Option<u64>,
    deadlines: HashMap<i64, Instant>,
}

/// A cached client of the current leader's Lease service.
struct LeaderClient {
    leader: NodeId,
    url: String,
    client: LeaseClient<Channel>,
}

/// The member's lease clock keeper.
pub struct Lessor {
    raft: RaftNode,
    cfg: LessorConfig,
    clocks: Mutex<Clocks>,
    leader_client: Mutex<Option<LeaderClient>>,
    stop_tx: watch::Sender<bool>,
}

impl Lessor {
    /// Start the lessor and its expiry loop (acts only while this member leads).
    pub fn start(raft: RaftNode) -> Arc<Self> {
        Self::start_with(raft, LessorConfig::default())
    }

    /// Start the lessor with explicit tunables (see `LessorConfig::from_timing`).
    pub(crate) fn start_with(raft: RaftNode, cfg: LessorConfig) -> Arc<Self> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let lessor = Arc::new(Self {
            raft: raft.clone(),
            cfg,
            clocks: Mutex::new(Clocks::default()),
            leader_client: Mutex::new(None),
            stop_tx,
        });
        tokio::spawn(expiry_loop(Arc::downgrade(&lessor), raft, stop_rx));
        lessor
    }

    /// The smallest TTL a lease is granted with, seconds.
    pub fn min_ttl(&self) -> i64 {
        self.cfg.min_ttl
    }

    /// Grant a lease (`id` 0 = pick one). Returns (id, ttl) with the TTL raised to the minimum.
    pub(crate) async fn grant(&self, id: i64, ttl: i64) -> Result<(i64, i64), LeaseError> {
        if ttl > MAX_LEASE_TTL {
            return Err(LeaseError::TtlTooLarge);
        }
        let ttl = ttl.max(self.cfg.min_ttl);
        loop {
            let chosen = if id == 0 { random_lease_id() } else { id };
            let resp = self
                .raft
                .write(Command::LeaseGrant { id: chosen, ttl })
                .await?;
            match resp.result {
                Ok(CommandResult::LeaseGrant { id, ttl }) => {
                    self.start_clock(id, ttl);
                    return Ok((id, ttl));
                }
                Ok(other) => {
                    return Err(LeaseError::Other(format!(
                        "unexpected result of lease grant: {other:?}"
                    )))
                }
                // A random id collided with an existing lease: pick another.
                Err(ApplyError::LeaseExists) if id == 0 => continue,
                Err(e) => return Err(LeaseError::from_apply(e)),
            }
        }
    }

    /// Revoke a lease and delete its keys.
    pub(crate) async fn revoke(&self, id: i64) -> Result<(), LeaseError> {
        let resp = self.raft.write(Command::LeaseRevoke { id }).await?;
        self.clocks.lock().deadlines.remove(&id);
        match resp.result {
            Ok(_) => Ok(()),
            Err(e) => Err(LeaseError::from_apply(e)),
        }
    }

    /// Renew a lease; returns the new TTL, or 0 if the lease is unknown.
    pub(crate) async fn keep_alive(&self, id: i64) -> Result<i64, LeaseError> {
        match self.leadership() {
            Leadership::Leader => self.keep_alive_local(id).await,
            Leadership::Follower(leader) => self.keep_alive_remote(leader, id).await,
            Leadership::None => Err(RaftError::NoLeader.into()),
        }
    }

    /// Remaining TTL (and keys if asked).
    pub(crate) async fn time_to_live(&self, id: i64, keys: bool) -> Result<LeaseTtl, LeaseError> {
        match self.leadership() {
            Leadership::Leader => self.time_to_live_local(id, keys).await,
            Leadership::Follower(leader) => self.time_to_live_remote(leader, id, keys).await,
            Leadership::None => Err(RaftError::NoLeader.into()),
        }
    }

    /// Stop the expiry loop.
    pub fn stop(&self) {
        let _ = self.stop_tx.send(true);
    }

    /// Who answers lease clock questions right now; also promotes/demotes the clocks when this
    /// member's leadership changed since they were last looked at.
    fn leadership(&self) -> Leadership {
        let status = self.raft.status();
        let me = self.raft.id();
        let mut clocks = self.clocks.lock();
        match status.leader {
            Some(l) if l == me => {
                if clocks.leading_term != Some(status.term) {
                    // Newly (re)elected: every lease gets a full TTL plus the extension, lazily
                    // (a lease without a clock is given one when first seen).
                    clocks.leading_term = Some(status.term);
                    clocks.deadlines.clear();
                    let base = Instant::now() + self.cfg.promote_extend;
                    for l in self.raft.store().leases() {
                        clocks.deadlines.insert(l.id, deadline_after(base, l.ttl));
                    }
                    tracing::info!(term = status.term, "lessor promoted: lease clocks started");
                }
                Leadership::Leader
            }
            other => {
                if clocks.leading_term.take().is_some() {
                    clocks.deadlines.clear();
                    tracing::info!("lessor demoted: lease clocks cleared");
                }
                match other {
                    Some(l) => Leadership::Follower(l),
                    None => Leadership::None,
                }
            }
        }
    }

    /// Starts (or restarts) a lease's clock if this member leads.
    fn start_clock(&self, id: i64, ttl: i64) {
        if let Leadership::Leader = self.leadership() {
            self.clocks
                .lock()
                .deadlines
                .insert(id, deadline_after(Instant::now(), ttl));
        }
    }

    /// The lease as the local store knows it; when absent, waits for the local state machine to
    /// catch up with the log first (a lease granted just before may not be applied here yet).
    async fn lookup(&self, id: i64) -> Result<Option<crawler_storage::LeaseInfo>, LeaseError> {
        if let Some(l) = self.raft.store().lease(id) {
            return Ok(Some(l));
        }
        self.raft.read_barrier().await?;
        Ok(self.raft.store().lease(id))
    }

    /// The deadline of a lease on the leader, assigning a fresh one to a lease without a clock.
    fn deadline(&self, id: i64, ttl: i64) -> Instant {
        *self
            .clocks
            .lock()
            .deadlines
            .entry(id)
            .or_insert_with(|| deadline_after(Instant::now(), ttl))
    }

    async fn keep_alive_local(&self, id: i64) -> Result<i64, LeaseError> {
        self.confirm_leadership().await?;
        let Some(info) = self.lookup(id).await? else {
            return Ok(0);
        };
        let now = Instant::now();
        // Check and renew under one lock, so the expiry loop either sees the renewed deadline
        // or this keep-alive sees the expired one.
        let expired_in = {
            let mut clocks = self.clocks.lock();
            let Some(term) = clocks.leading_term else {
                // Demoted since the leadership check: the next leader's clocks decide.
                return Err(RaftError::NoLeader.into());
            };
            let deadline = clocks
                .deadlines
                .entry(id)
                .or_insert_with(|| deadline_after(now, info.ttl));
            if *deadline <= now {
                Some(term)
            } else {
                *deadline = deadline_after(now, info.ttl);
                None
            }
        };
        if let Some(term) = expired_in {
            // Expired but not revoked yet: an expired lease cannot be renewed (etcd waits for the
            // revoke to finish and then answers "not found").
            self.revoke_expired(id, term).await?;
            return Ok(0);
        }
        Ok(info.ttl)
    }

    /// Confirms with a quorum that this member still leads, as etcd's `ensureLeadership` does
    /// before a renew: a leader cut off from the majority keeps believing it leads, and renewing
    /// there would promise a client TTL seconds while the new leader's clocks expire the lease
    /// (found by the fault tests: a key deleted while its keep-alives kept succeeding).
    async fn confirm_leadership(&self) -> Result<(), LeaseError> {
        let me = self.raft.id();
        let before = self.raft.status();
        if before.leader != Some(me) {
            return Err(RaftError::NoLeader.into());
        }
        self.raft.read_barrier().await?;
        // Same term and still leader: the read index was confirmed by this member as leader
        // (a barrier served by another leader implies a newer term).
        let after = self.raft.status();
        if after.term != before.term || after.leader != Some(me) {
            return Err(RaftError::NoLeader.into());
        }
        Ok(())
    }

    async fn time_to_live_local(&self, id: i64, keys: bool) -> Result<LeaseTtl, LeaseError> {
        let Some(info) = self.lookup(id).await? else {
            return Ok(LeaseTtl {
                id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            });
        };
        let deadline = self.deadline(id, info.ttl);
        // etcd truncates the remaining duration to whole seconds.
        let remaining = deadline
            .checked_duration_since(Instant::now())
            .unwrap_or_default()
            .as_secs() as i64;
        Ok(LeaseTtl {
            id,
            ttl: remaining,
            granted_ttl: info.ttl,
            keys: if keys { info.keys } else { Vec::new() },
        })
    }

    /// Proposes the revoke of a lease that this member's clocks, leading in `term`, expired; a
    /// lease already gone is fine. Only as leader and never forwarded, and bound to `term`
    /// (`Command::LeaseExpire` changes nothing in an entry of another term): the decision
    /// means nothing once this member lost leadership, because the next leader restarted every
    /// lease's clock. Forwarded, or queued in the proposer until this member led again, a revoke
    /// decided by a leader cut off from the majority killed a lease the new term had just
    /// renewed (both found by the fault tests).
    async fn revoke_expired(&self, id: i64, term: u64) -> Result<(), LeaseError> {
        let resp = self
            .raft
            .write_as_leader(Command::LeaseExpire { id, term })
            .await?;
        match resp.result {
            Ok(_) | Err(ApplyError::LeaseNotFound) => {
                self.clocks.lock().deadlines.remove(&id);
                Ok(())
            }
            // Committed in a later term: the lease lives on under that term's clock.
            Err(ApplyError::StaleExpiry) => Err(RaftError::NoLeader.into()),
            Err(e) => Err(LeaseError::from_apply(e)),
        }
    }

    /// A client of `leader`'s Lease service, cached while the leader and its URL stay the same.
    fn leader_client(&self, leader: NodeId) -> Result<LeaseClient<Channel>, LeaseError> {
        let url = self
            .raft
            .members()
            .into_iter()
            .find(|m| m.id == leader)
            .and_then(|m| m.client_urls.into_iter().next())
            // The leader has not published its client URLs yet: it is not ready to serve.
            .ok_or(LeaseError::Raft(RaftError::NoLeader))?;
        let mut cached = self.leader_client.lock();
        if let Some(c) = cached.as_ref() {
            if c.leader == leader && c.url == url {
                return Ok(c.client.clone());
            }
        }
        let endpoint = tonic::transport::Endpoint::from_shared(url.clone())
            .map_err(|e| LeaseError::Other(format!("bad leader client URL {url}: {e}")))?
            .connect_timeout(FORWARD_TIMEOUT);
        let client = LeaseClient::new(endpoint.connect_lazy());
        *cached = Some(LeaderClient {
            leader,
            url,
            client: client.clone(),
        });
        Ok(client)
    }

    /// Forgets the cached leader client after a transport failure, so the next call reconnects.
    fn drop_leader_client(&self) {
        *self.leader_client.lock() = None;
    }

    async fn keep_alive_remote(&self, leader: NodeId, id: i64) -> Result<i64, LeaseError> {
        let mut client = self.leader_client(leader)?;
        let call = async {
            let req = LeaseKeepAliveRequest { id };
            let mut replies = client
                .lease_keep_alive(tokio_stream::once(req))
                .await?
                .into_inner();
            match replies.message().await? {
                Some(r) => Ok(r.ttl),
                None => Err(tonic::Status::unavailable(RaftError::NoLeader.to_string())),
            }
        };
        match tokio::time::timeout(FORWARD_TIMEOUT, call).await {
            Ok(Ok(ttl)) => Ok(ttl),
            Ok(Err(status)) => {
                self.drop_leader_client();
                Err(LeaseError::from_status(status))
            }
            Err(_) => {
                self.drop_leader_client();
                Err(RaftError::Timeout.into())
            }
        }
    }

    async fn time_to_live_remote(
        &self,
        leader: NodeId,
        id: i64,
        keys: bool,
    ) -> Result<LeaseTtl, LeaseError> {
        let mut client = self.leader_client(leader)?;
        let call = client.lease_time_to_live(LeaseTimeToLiveRequest { id, keys });
        match tokio::time::timeout(FORWARD_TIMEOUT, call).await {
            Ok(Ok(resp)) => {
                let r = resp.into_inner();
                Ok(LeaseTtl {
                    id: r.id,
                    ttl: r.ttl,
                    granted_ttl: r.granted_ttl,
                    keys: r.keys,
                })
            }
            Ok(Err(status)) => {
                self.drop_leader_client();
                Err(LeaseError::from_status(status))
            }
            Err(_) => {
                self.drop_leader_client();
                Err(RaftError::Timeout.into())
            }
        }
    }

    /// Whether this member still leads in `term` and the lease's deadline has passed.
    fn still_expired(&self, term: u64, id: i64) -> bool {
        let clocks = self.clocks.lock();
        clocks.leading_term == Some(term)
            && clocks
                .deadlines
                .get(&id)
                .is_some_and(|d| *d <= Instant::now())
    }

    /// One pass of the expiry loop: revoke every lease whose deadline passed (leader only).
    async fn expire_once(&self) {
        if !matches!(self.leadership(), Leadership::Leader) {
            return;
        }
        let leases = self.raft.store().leases();
        let now = Instant::now();
        let (term, expired): (Option<u64>, Vec<i64>) = {
            let mut clocks = self.clocks.lock();
            // Forget clocks of leases that no longer exist (revoked through another member).
            let live: std::collections::HashSet<i64> = leases.iter().map(|l| l.id).collect();
            clocks.deadlines.retain(|id, _| live.contains(id));
            let expired = leases
                .iter()
                .filter(|l| {
                    let d = *clocks
                        .deadlines
                        .entry(l.id)
                        .or_insert_with(|| deadline_after(now, l.ttl));
                    d <= now
                })
                .map(|l| l.id)
                .collect();
            (clocks.leading_term, expired)
        };
        let Some(term) = term else {
            return; // demoted since the leadership check
        };
        for id in expired {
            // Decide again right before proposing: while an earlier revoke of this pass was in
            // flight, this member may have lost leadership and won it back, and the new term
            // restarted every clock. (Found by the fault tests: a leader cut off from the
            // majority blocked in a revoke; its entry committed once it led again, and the rest
            // of its stale list then revoked a lease its new term had just renewed.)
            if !matches!(self.leadership(), Leadership::Leader) {
                return;
            }
            if !self.still_expired(term, id) {
                continue;
            }
            tracing::debug!(lease = id, term, "lease expired, revoking");
            if let Err(e) = self.revoke_expired(id, term).await {
                tracing::warn!(lease = id, error = %e, "revoking expired lease failed; will retry");
                return;
            }
        }
    }
}

/// Who keeps the lease clocks.
enum Leadership {
    Leader,
    Follower(NodeId),
    None,
}

/// Runs expiry passes until the lessor is stopped or dropped.
async fn expiry_loop(lessor: Weak<Lessor>, raft: RaftNode, mut stop: watch::Receiver<bool>) {
    let mut leader_rx = raft.leader_watch();
    let mut tick = tokio::time::interval(EXPIRY_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = leader_rx.changed() => {
                if changed.is_err() {
                    // Raft is gone: nothing more to expire.
                    return;
                }
            }
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        let Some(lessor) = lessor.upgrade() else {
            return;
        };
        lessor.expire_once().await;
    }
}

/// A random positive int63 lease id.
fn random_lease_id() -> i64 {
    loop {
        let id = rand::random::<i64>() & i64::MAX;
        if id != 0 {
            return id;
        }
    }
}

/// `now` + `ttl` seconds, saturating far in the future (huge TTLs must not overflow `Instant`).
fn deadline_after(now: Instant, ttl: i64) -> Instant {
    let secs = ttl.max(0) as u64;
    now.checked_add(Duration::from_secs(secs))
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)))
        .unwrap_or(now)
}
