//! The running member: startup, leader-side operations, forwarding and background tasks.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crawler_storage::{
    ApplyObserver, ApplyResponse, Command, LogStore, MemberAttrs, StateMachine, StoreReader,
};
use openraft::error::InitializeError;
use openraft::{Raft, SnapshotPolicy};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::batcher::Batcher;
use crate::ids::normalize_url;
use crate::network::{CallError, PeerClients, PeerNetwork, Rpc};
use crate::read_index::{Coalescer, ReadIndex};
use crate::server::PeerHandler;
use crate::wire::{
    decode, encode, AdminOk, AdminOp, AdminRequest, ForwardWriteRequest, MembersReply, OrRaftError,
    ReadIndexRequest, WireError, WireMember,
};
use crate::{ids, meta, ClusterState, MemberInfo, NodeConfig, NodeId, PeerNode, RaftError};
use crate::{RaftStatus, TypeConfig};

/// The retry loop shared by every leader-side operation: wait for a leader, try `$attempt`, and
/// retry what is safe to retry until `$deadline`. A macro rather than an async fn taking a
/// closure: async closures borrowing `self` lose `Send` under `tokio::spawn`.
macro_rules! drive_loop {
    ($this:ident, $deadline:expr, |$leader:ident, $remaining:ident| $attempt:block) => {{
        let deadline: Instant = $deadline;
        let short = $this.short_pause();
        let mut last = RaftError::NoLeader;
        loop {
            if $this.is_stopped() {
                break Err(RaftError::Stopped);
            }
            let $remaining = deadline.saturating_duration_since(Instant::now());
            if $remaining.is_zero() {
                break Err(last);
            }
            let Some($leader) = $this.current_leader() else {
                last = RaftError::NoLeader;
                $this.pause($remaining).await;
                continue;
            };
            let res: Result<LeaderOk, WireError> = $attempt;
            match res {
                Ok(v) => break Ok(v),
                Err(WireError::NotLeader(_)) | Err(WireError::NoLeader) => {
                    last = RaftError::NoLeader;
                    $this.pause($remaining.min(short)).await;
                }
                Err(WireError::QuorumLost) => {
                    last = RaftError::Timeout;
                    tokio::time::sleep($remaining.min(short)).await;
                }
                Err(WireError::InProgress) => {
                    last = RaftError::from(WireError::InProgress);
                    tokio::time::sleep($remaining.min(short)).await;
                }
                Err(e) => break Err(e.into()),
            }
        }
    }};
}

/// Shared state of one running member.
pub(crate) struct Inner {
    pub(crate) id: NodeId,
    pub(crate) cluster_id: u64,
    pub(crate) cfg: NodeConfig,
    pub(crate) raft: Raft<TypeConfig>,
    pub(crate) reader: StoreReader,
    /// The raft log's database and the state machine's, flushed at shutdown.
    dbs: [sled::Db; 2],
    pub(crate) peer_addr: SocketAddr,
    pub(crate) clients: PeerClients,
    pub(crate) leader_tx: Arc<watch::Sender<Option<NodeId>>>,
    shutdown_tx: watch::Sender<bool>,
    /// Group proposal: every write made on this member as leader goes through it.
    batcher: Batcher,
    /// Shared read-index rounds: every read index served by this member as leader.
    read_index: ReadIndex,
    /// Shared read-index steps of this member's read barriers (local or forwarded).
    barrier_rounds: Coalescer<Result<u64, RaftError>>,
    tasks: parking_lot::Mutex<Vec<JoinHandle<()>>>,
    server: parking_lot::Mutex<Option<JoinHandle<()>>>,
    stopped: AtomicBool,
}

/// A leader-side operation, run locally on the leader or forwarded to it.
#[derive(Clone, Debug)]
pub(crate) enum LeaderOp {
    Write(Command),
    ReadIndex,
    Admin(AdminOp),
}

/// Result of a `LeaderOp`.
#[derive(Debug)]
pub(crate) enum LeaderOk {
    Write(ApplyResponse),
    ReadIndex(u64),
    Admin(AdminOk),
}

/// The openraft config derived from the member's flags.
pub(crate) fn raft_config(
    cfg: &NodeConfig,
    cluster_id: u64,
) -> Result<openraft::Config, RaftError> {
    let hb = cfg.heartbeat_interval_ms.max(1);
    let et = cfg.election_timeout_ms;
    let snap = cfg.snapshot_count.max(1);
    let c = openraft::Config {
        cluster_name: format!("{cluster_id:x}"),
        heartbeat_interval: hb,
        // etcd's follower campaigns after a random [et, 2et) without a leader. openraft 0.9's
        // follower waits its leader lease (= election_timeout_max) *plus* a random
        // [min, max), and voters refuse votes during their own lease: min = et, max = 2et gave
        // 3-4 s elections for a 1 s election timeout. 0.4et..0.6et gives [et, 1.2et).
        // (The CLI keeps et >= 5 heartbeats, so min stays above the heartbeat.)
        election_timeout_min: et.saturating_mul(2) / 5,
        election_timeout_max: et.saturating_mul(3) / 5,
        // Covers sending the last chunk *and* installing it on the follower.
        install_snapshot_timeout: (10 * et).max(10_000),
        // Bounded batches: an AppendEntries must finish within one heartbeat interval.
        max_payload_entries: 64,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(snap),
        // Keep applied logs around so a briefly lagging follower needs no snapshot (etcd keeps
        // 5000 entries after a snapshot); never more than one snapshot interval's worth though,
        // so small test configs still exercise snapshot transfer.
        max_in_snapshot_log_to_keep: snap.min(5000),
        purge_batch_size: (snap / 2).clamp(1, 256),
        ..Default::default()
    };
    c.validate().map_err(|e| {
        RaftError::Config(format!(
            "invalid raft timing (--heartbeat-interval {hb} ms, --election-timeout {et} ms): {e}"
        ))
    })
}

/// What startup decided about this member's identity.
struct Identity {
    id: NodeId,
    cluster_id: u64,
    /// Initial membership to bootstrap with, when this is an initial member of a new cluster.
    bootstrap: Option<BTreeMap<NodeId, PeerNode>>,
}

/// Ids of the initial members from `--initial-cluster`.
fn initial_members(cfg: &NodeConfig) -> BTreeMap<NodeId, PeerNode> {
    ids::group_initial_cluster(&cfg.initial_cluster)
        .into_iter()
        .map(|(name, urls)| {
            let id = ids::initial_member_id(&urls, &cfg.cluster_token);
            (
                id,
                PeerNode {
                    name,
                    peer_urls: urls,
                },
            )
        })
        .collect()
}

fn own_initial_id(
    cfg: &NodeConfig,
    members: &BTreeMap<NodeId, PeerNode>,
) -> Result<NodeId, RaftError> {
    let found = members
        .iter()
        .find(|(_, n)| n.name == cfg.name)
        .map(|(id, _)| *id);
    let Some(id) = found else {
        return Err(RaftError::Config(format!(
            "couldn't find local name '{}' in the initial cluster configuration",
            cfg.name
        )));
    };
    let listed: BTreeSet<String> = members
        .get(&id)
        .map(|n| n.peer_urls.iter().map(|u| normalize_url(u)).collect())
        .unwrap_or_default();
    let advertised: BTreeSet<String> = cfg
        .advertise_peer_urls
        .iter()
        .map(|u| normalize_url(u))
        .collect();
    if !advertised.is_empty() && listed != advertised {
        tracing::warn!(
            ?listed,
            ?advertised,
            "--initial-cluster peer urls of this member differ from --initial-advertise-peer-urls"
        );
    }
    Ok(id)
}

async fn resolve_identity(cfg: &NodeConfig, clients: &PeerClients) -> Result<Identity, RaftError> {
    let stored = meta::load(&cfg.data_dir)?;
    if let Some(m) = stored {
        meta::check(&cfg.data_dir, &m, &cfg.name, &cfg.cluster_token)?;
        // A crash between writing meta.json and bootstrapping leaves an uninitialized log:
        // keep the bootstrap config around so startup can finish the job.
        let bootstrap = if cfg.initial_cluster_state == ClusterState::New {
            let members = initial_members(cfg);
            members.contains_key(&m.member_id).then_some(members)
        } else {
            None
        };
        return Ok(Identity {
            id: m.member_id,
            cluster_id: m.cluster_id,
            bootstrap,
        });
    }
    let ident = match cfg.initial_cluster_state {
        ClusterState::New => {
            let members = initial_members(cfg);
            let id = own_initial_id(cfg, &members)?;
            let all: Vec<NodeId> = members.keys().copied().collect();
            Identity {
                id,
                cluster_id: ids::cluster_id(&all, &cfg.cluster_token),
                bootstrap: Some(members),
            }
        }
        ClusterState::Existing => {
            let (id, cluster_id) = learn_identity(cfg, clients).await?;
            Identity {
                id,
                cluster_id,
                bootstrap: None,
            }
        }
    };
    meta::store(
        &cfg.data_dir,
        &meta::Meta {
            name: cfg.name.clone(),
            member_id: ident.id,
            cluster_id: ident.cluster_id,
            cluster_token: cfg.cluster_token.clone(),
        },
    )?;
    Ok(ident)
}

/// A member joining an existing cluster asks the others which id the leader gave its peer URLs.
async fn learn_identity(
    cfg: &NodeConfig,
    clients: &PeerClients,
) -> Result<(NodeId, u64), RaftError> {
    let own: BTreeSet<String> = cfg
        .advertise_peer_urls
        .iter()
        .map(|u| normalize_url(u))
        .collect();
    let peers: Vec<String> = cfg
        .initial_cluster
        .iter()
        .map(|(_, u)| normalize_url(u))
        .filter(|u| !own.contains(u))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if own.is_empty() {
        return Err(RaftError::Config(
            "--initial-advertise-peer-urls is required to join an existing cluster".into(),
        ));
    }
    if peers.is_empty() {
        return Err(RaftError::Config(
            "--initial-cluster-state existing needs at least one other member in --initial-cluster"
                .into(),
        ));
    }
    let deadline = Instant::now()
        + Duration::from_millis(cfg.election_timeout_ms.saturating_mul(10))
            .max(Duration::from_secs(30));
    let mut last_err = String::from("no answer yet");
    loop {
        for url in &peers {
            let payload = encode(&()).map_err(RaftError::Internal)?;
            match clients
                .call(url, Rpc::Members, payload, Duration::from_secs(2))
                .await
            {
                Ok(bytes) => match decode::<MembersReply>(&bytes) {
                    Ok(reply) => {
                        let me = reply
                            .members
                            .iter()
                            .find(|m| m.peer_urls.iter().any(|u| own.contains(&normalize_url(u))));
                        match me {
                            Some(m) => return Ok((m.id, reply.cluster_id)),
                            None => {
                                last_err =
                                    format!("{url} does not list peer urls {own:?} as a member")
                            }
                        }
                    }
                    Err(e) => last_err = format!("bad members reply from {url}: {e}"),
                },
                Err(e) => last_err = format!("{url}: {e}"),
            }
        }
        if Instant::now() >= deadline {
            return Err(RaftError::Config(format!(
                "cannot join the existing cluster at {peers:?}: {last_err} \
                 (add this member with `member add` first)"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Start a member (see `RaftNode::start`).
pub(crate) async fn start(
    cfg: NodeConfig,
    observer: Arc<dyn ApplyObserver>,
) -> Result<Arc<Inner>, RaftError> {
    if cfg.name.is_empty() {
        return Err(RaftError::Config("member name must not be empty".into()));
    }
    let connect_timeout = Duration::from_millis(cfg.election_timeout_ms)
        .clamp(Duration::from_millis(200), Duration::from_secs(3));
    let clients = PeerClients::with_overrides(connect_timeout, &cfg.peer_dial_overrides);
    // Validate timing before touching the disk.
    raft_config(&cfg, 1)?;

    let listener = tokio::net::TcpListener::bind(cfg.listen_peer)
        .await
        .map_err(|e| {
            RaftError::Config(format!(
                "cannot listen for peers on {}: {e}",
                cfg.listen_peer
            ))
        })?;
    let peer_addr = listener
        .local_addr()
        .map_err(|e| RaftError::Internal(format!("peer listener address: {e}")))?;

    let ident = resolve_identity(&cfg, &clients).await?;
    tracing::info!(
        name = %cfg.name,
        id = format_args!("{:x}", ident.id),
        cluster = format_args!("{:x}", ident.cluster_id),
        %peer_addr,
        "starting raft member"
    );

    let (wal_dir, db_dir) = (meta::wal_dir(&cfg.data_dir), meta::db_dir(&cfg.data_dir));
    let (wal_open, db_open) = (wal_dir.clone(), db_dir.clone());
    let (wal, db) = tokio::task::spawn_blocking(move || {
        Ok::<_, crawler_storage::StoreError>((
            crawler_storage::open_log_db(&wal_open)?,
            crawler_storage::open_db(&db_open)?,
        ))
    })
    .await
    .map_err(|e| RaftError::Internal(format!("open db task: {e}")))??;
    // Before the log had a database of its own (`member/wal`) it lived in `member/db`; such a
    // data dir would start with an empty log and vote, so refuse it.
    if db
        .tree_names()
        .iter()
        .any(|n| n.as_ref() == crawler_storage::log_store::LOG_TREE.as_bytes())
    {
        return Err(RaftError::Config(format!(
            "data dir {} has the raft log inside {} (an older layout); start this member on a fresh data dir",
            cfg.data_dir.display(),
            db_dir.display()
        )));
    }
    let log_store = LogStore::<TypeConfig>::open_synced(&wal, &wal_dir)?;
    let sm = StateMachine::open_synced(&db, &db_dir)?;
    let reader = sm.reader();
    sm.set_observer(observer);

    let config = Arc::new(raft_config(&cfg, ident.cluster_id)?);
    let network = PeerNetwork {
        clients: clients.clone(),
        backoff: Duration::from_millis(cfg.heartbeat_interval_ms.saturating_mul(2))
            .clamp(Duration::from_millis(50), Duration::from_millis(500)),
        // A peer back up is found within one election timeout at worst.
        max_backoff: Duration::from_millis(cfg.election_timeout_ms)
            .clamp(Duration::from_millis(50), Duration::from_secs(2)),
    };
    let raft = Raft::new(ident.id, config, network, log_store, sm)
        .await
        .map_err(|e| RaftError::Internal(format!("start raft: {e}")))?;

    let initial_leader = raft.metrics().borrow().current_leader;
    let (leader_tx, _) = watch::channel(initial_leader);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (batcher, proposer) = Batcher::spawn(raft.clone(), shutdown_tx.subscribe());
    let inner = Arc::new(Inner {
        id: ident.id,
        cluster_id: ident.cluster_id,
        cfg,
        raft,
        reader,
        dbs: [wal, db],
        peer_addr,
        clients,
        leader_tx: Arc::new(leader_tx),
        shutdown_tx,
        batcher,
        read_index: ReadIndex::default(),
        barrier_rounds: Coalescer::default(),
        tasks: parking_lot::Mutex::new(vec![proposer]),
        server: Default::default(),
        stopped: AtomicBool::new(false),
    });

    let server = crate::server::spawn(inner.clone(), listener, shutdown_rx);
    *inner.server.lock() = Some(server);

    if let Some(members) = ident.bootstrap {
        let initialized = inner
            .raft
            .is_initialized()
            .await
            .map_err(|e| RaftError::Internal(format!("raft state: {e}")))?;
        if !initialized {
            match inner.raft.initialize(members).await {
                Ok(()) => {}
                // Another initial member's identical config got here first.
                Err(OrRaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(e) => {
                    let _ = inner.shutdown().await;
                    return Err(RaftError::Internal(format!("bootstrap cluster: {e}")));
                }
            }
        }
    }

    let t1 = tokio::spawn(leader_watch_loop(
        inner.raft.clone(),
        inner.leader_tx.clone(),
        inner.shutdown_tx.subscribe(),
    ));
    let t2 = tokio::spawn(publish_loop(inner.clone()));
    inner.tasks.lock().extend([t1, t2]);
    Ok(inner)
}

/// Mirror `current_leader` from the metrics into a watch channel of its own.
async fn leader_watch_loop(
    raft: Raft<TypeConfig>,
    tx: Arc<watch::Sender<Option<NodeId>>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut metrics = raft.metrics();
    loop {
        // The borrow ends with this statement: never held across an await.
        let leader = metrics.borrow_and_update().current_leader;
        tx.send_if_modified(|cur| {
            if *cur != leader {
                *cur = leader;
                true
            } else {
                false
            }
        });
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { break },
            _ = shutdown.wait_for(|s| *s) => break,
        }
    }
    tx.send_if_modified(|cur| cur.take().is_some());
}

/// Publish this member's name and client URLs once it is part of a cluster with a leader.
async fn publish_loop(inner: Arc<Inner>) {
    let attrs = MemberAttrs {
        name: inner.cfg.name.clone(),
        client_urls: inner.cfg.advertise_client_urls.clone(),
    };
    let mut shutdown = inner.shutdown_tx.subscribe();
    let mut metrics = inner.raft.metrics();
    loop {
        if *shutdown.borrow() {
            return;
        }
        let ready = {
            let m = metrics.borrow_and_update();
            m.current_leader.is_some()
                && m.membership_config
                    .membership()
                    .get_node(&inner.id)
                    .is_some()
        };
        if ready {
            // Restart with unchanged flags: the store already has our attributes.
            if inner.reader.member_attrs().get(&inner.id) == Some(&attrs) {
                return;
            }
            let cmd = Command::PublishMember {
                id: inner.id,
                attrs: attrs.clone(),
            };
            match inner.run_on_leader(LeaderOp::Write(cmd)).await {
                Ok(_) => {
                    tracing::info!(
                        id = format_args!("{:x}", inner.id),
                        "published member attributes"
                    );
                    return;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "publishing member attributes failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {},
                        _ = shutdown.wait_for(|s| *s) => return,
                    }
                    continue;
                }
            }
        }
        tokio::select! {
            // Metrics closed: raft is gone, nothing left to publish to.
            changed = metrics.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(Duration::from_millis(500)) => {},
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

/// The peer service serves this member; the inherent methods do the work.
#[tonic::async_trait]
impl PeerHandler for Inner {
    fn id(&self) -> NodeId {
        self.id
    }

    fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }

    fn request_timeout(&self) -> Duration {
        Inner::request_timeout(self)
    }

    async fn write_on_leader(
        &self,
        cmd: Command,
        timeout: Duration,
    ) -> Result<ApplyResponse, WireError> {
        Inner::write_on_leader(self, cmd, timeout).await
    }

    async fn read_index_on_leader(&self, timeout: Duration) -> Result<u64, WireError> {
        Inner::read_index_on_leader(self, timeout).await
    }

    async fn admin_on_leader(&self, op: AdminOp, timeout: Duration) -> Result<AdminOk, WireError> {
        Inner::admin_on_leader(self, op, timeout).await
    }

    fn members_reply(&self) -> MembersReply {
        Inner::members_reply(self)
    }
}

impl Inner {
    /// How long a client request may wait for a leader and for its result.
    pub(crate) fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.cfg.election_timeout_ms.saturating_mul(5))
            .max(Duration::from_secs(5))
    }

    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    pub(crate) fn current_leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    fn peer_url_of(&self, id: NodeId) -> Option<String> {
        let m = self.raft.metrics();
        let b = m.borrow();
        b.membership_config
            .membership()
            .get_node(&id)
            .and_then(|n| n.peer_urls.first().cloned())
    }

    /// Wait up to `max` for the known leader to change.
    async fn pause(&self, max: Duration) {
        let mut rx = self.leader_tx.subscribe();
        let mut shutdown = self.shutdown_tx.subscribe();
        tokio::select! {
            _ = rx.changed() => {},
            _ = tokio::time::sleep(max) => {},
            _ = shutdown.wait_for(|s| *s) => {},
        }
    }

    /// Run `op` on the leader (here or forwarded), waiting for a leader and retrying what is
    /// safe to retry until the request deadline.
    pub(crate) async fn run_on_leader(&self, op: LeaderOp) -> Result<LeaderOk, RaftError> {
        self.run_on_leader_until(op, Instant::now() + self.request_timeout())
            .await
    }

    pub(crate) async fn run_on_leader_until(
        &self,
        op: LeaderOp,
        deadline: Instant,
    ) -> Result<LeaderOk, RaftError> {
        drive_loop!(self, deadline, |leader, remaining| {
            if leader == self.id {
                self.on_leader(&op, remaining).await
            } else {
                self.forward(leader, &op, remaining).await
            }
        })
    }

    /// Like `run_on_leader` for a plain write; used from inside leader-side admin operations,
    /// which `run_on_leader` itself runs (a shared async fn would make the future recursive).
    pub(crate) async fn write_anywhere(&self, cmd: Command) -> Result<ApplyResponse, RaftError> {
        let op = LeaderOp::Write(cmd.clone());
        let deadline = Instant::now() + self.request_timeout();
        let res = drive_loop!(self, deadline, |leader, remaining| {
            if leader == self.id {
                self.write_on_leader(cmd.clone(), remaining)
                    .await
                    .map(LeaderOk::Write)
            } else {
                self.forward(leader, &op, remaining).await
            }
        })?;
        match res {
            LeaderOk::Write(r) => Ok(r),
            other => Err(RaftError::Internal(format!("unexpected reply {other:?}"))),
        }
    }

    /// Retry pause after a retryable failure.
    fn short_pause(&self) -> Duration {
        Duration::from_millis(self.cfg.heartbeat_interval_ms.clamp(10, 100))
    }

    async fn on_leader(&self, op: &LeaderOp, timeout: Duration) -> Result<LeaderOk, WireError> {
        match op {
            LeaderOp::Write(cmd) => self
                .write_on_leader(cmd.clone(), timeout)
                .await
                .map(LeaderOk::Write),
            LeaderOp::ReadIndex => self
                .read_index_on_leader(timeout)
                .await
                .map(LeaderOk::ReadIndex),
            LeaderOp::Admin(a) => self
                .admin_on_leader(a.clone(), timeout)
                .await
                .map(LeaderOk::Admin),
        }
    }

    /// Send `op` to `leader`; connect failures and "not leader" answers come back retryable.
    async fn forward(
        &self,
        leader: NodeId,
        op: &LeaderOp,
        timeout: Duration,
    ) -> Result<LeaderOk, WireError> {
        let Some(url) = self.peer_url_of(leader) else {
            return Err(WireError::NotLeader(None));
        };
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let (rpc, payload) = match op {
            LeaderOp::Write(cmd) => (
                Rpc::ForwardWrite,
                encode(&ForwardWriteRequest {
                    timeout_ms,
                    cmd: cmd.clone(),
                }),
            ),
            LeaderOp::ReadIndex => (Rpc::ReadIndex, encode(&ReadIndexRequest { timeout_ms })),
            LeaderOp::Admin(a) => (
                Rpc::Admin,
                encode(&AdminRequest {
                    timeout_ms,
                    op: a.clone(),
                }),
            ),
        };
        let payload = payload.map_err(WireError::Other)?;
        // A little slack so the leader's own timeout answers first.
        let bytes = match self
            .clients
            .call(&url, rpc, payload, timeout + Duration::from_millis(200))
            .await
        {
            Ok(b) => b,
            Err(CallError::NotDelivered(e)) => {
                tracing::debug!(leader = format_args!("{leader:x}"), error = %e, "leader unreachable");
                return Err(WireError::NotLeader(None));
            }
            Err(CallError::Timeout) => return Err(WireError::Timeout),
            Err(CallError::Failed(e)) => {
                return Err(match op {
                    // Reads are idempotent: try again (the leader may have just died).
                    LeaderOp::ReadIndex => WireError::NotLeader(None),
                    _ => WireError::Other(format!("forwarding to leader failed: {e}")),
                });
            }
        };
        let bad = |e: String| WireError::Other(format!("bad reply from leader: {e}"));
        match op {
            LeaderOp::Write(_) => decode::<Result<ApplyResponse, WireError>>(&bytes)
                .map_err(bad)?
                .map(LeaderOk::Write),
            LeaderOp::ReadIndex => decode::<Result<u64, WireError>>(&bytes)
                .map_err(bad)?
                .map(LeaderOk::ReadIndex),
            LeaderOp::Admin(_) => decode::<Result<AdminOk, WireError>>(&bytes)
                .map_err(bad)?
                .map(LeaderOk::Admin),
        }
    }

    /// `client_write` on this member, which must be the leader; concurrent writes are grouped
    /// into one log entry by the batcher (results and errors stay per write).
    pub(crate) async fn write_on_leader(
        &self,
        cmd: Command,
        timeout: Duration,
    ) -> Result<ApplyResponse, WireError> {
        self.batcher.write(cmd, timeout).await
    }

    /// Confirm leadership with a quorum and return the index a linearizable read must wait for.
    pub(crate) async fn read_index_on_leader(&self, timeout: Duration) -> Result<u64, WireError> {
        self.read_index
            .read_index(&self.raft, timeout, self.request_timeout())
            .await
    }

    /// Linearizable read barrier (see `RaftNode::read_barrier`).
    ///
    /// The read-index step is shared by the barriers waiting at one moment (one local round or
    /// one forwarded RPC for all of them; see `read_index`).
    pub(crate) async fn read_barrier(self: &Arc<Self>) -> Result<(), RaftError> {
        let deadline = Instant::now() + self.request_timeout();
        let inner = Arc::clone(self);
        let shared = self.barrier_rounds.call(move || {
            let inner = Arc::clone(&inner);
            Box::pin(async move {
                let deadline = Instant::now() + inner.request_timeout();
                match inner
                    .run_on_leader_until(LeaderOp::ReadIndex, deadline)
                    .await
                {
                    Ok(LeaderOk::ReadIndex(i)) => Ok(i),
                    Ok(other) => Err(RaftError::Internal(format!("unexpected reply {other:?}"))),
                    Err(e) => Err(e),
                }
            })
        });
        let index = match tokio::time::timeout_at(deadline.into(), shared).await {
            Err(_) => return Err(RaftError::Timeout),
            Ok(None) => return Err(RaftError::Stopped),
            Ok(Some(Ok(i))) => i,
            Ok(Some(Err(e))) => return Err(e),
        };
        if index == 0 {
            return Ok(());
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        self.raft
            .wait(Some(remaining.max(Duration::from_millis(1))))
            .applied_index_at_least(Some(index), "read_barrier")
            .await
            .map(|_| ())
            .map_err(|e| match e {
                openraft::metrics::WaitError::Timeout(..) => RaftError::Timeout,
                openraft::metrics::WaitError::ShuttingDown => RaftError::Stopped,
            })
    }

    /// Current raft state for headers and `Status`.
    pub(crate) fn status(&self) -> RaftStatus {
        let m = self.raft.metrics();
        let b = m.borrow();
        let applied = b.last_applied.map(|l| l.index).unwrap_or(0);
        let is_learner = !b
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == self.id);
        RaftStatus {
            term: b.current_term,
            leader: b.current_leader,
            // openraft 0.9 metrics do not expose the commit index; applied <= committed and is
            // what reads observe.
            commit_index: applied,
            applied_index: applied,
            is_learner,
        }
    }

    /// Log and snapshot positions from the metrics.
    pub(crate) fn log_state(&self) -> crate::LogState {
        let m = self.raft.metrics();
        let b = m.borrow();
        crate::LogState {
            last_log_index: b.last_log_index.unwrap_or(0),
            purged_index: b.purged.map(|l| l.index),
            snapshot_index: b.snapshot.map(|l| l.index),
        }
    }

    /// Voters and learners with their published attributes.
    pub(crate) fn members(&self) -> Vec<MemberInfo> {
        let (nodes, voters): (Vec<(NodeId, PeerNode)>, BTreeSet<NodeId>) = {
            let m = self.raft.metrics();
            let b = m.borrow();
            let mem = b.membership_config.membership();
            (
                mem.nodes().map(|(id, n)| (*id, n.clone())).collect(),
                mem.voter_ids().collect(),
            )
        };
        let attrs = self.reader.member_attrs();
        let mut out: Vec<MemberInfo> = nodes
            .into_iter()
            .map(|(id, node)| {
                let a = attrs.get(&id);
                let mut name = a.map(|a| a.name.clone()).unwrap_or_default();
                let mut client_urls = a.map(|a| a.client_urls.clone()).unwrap_or_default();
                if id == self.id && a.is_none() {
                    name = self.cfg.name.clone();
                    client_urls = self.cfg.advertise_client_urls.clone();
                }
                if name.is_empty() && a.is_none() {
                    // Not started yet: etcd shows an empty name; we know the initial one, if any.
                    name = node.name.clone();
                }
                MemberInfo {
                    id,
                    name,
                    peer_urls: node.peer_urls,
                    client_urls,
                    is_learner: !voters.contains(&id),
                }
            })
            .collect();
        if out.is_empty() {
            // Not part of a cluster yet (joining): show at least ourselves.
            out.push(MemberInfo {
                id: self.id,
                name: self.cfg.name.clone(),
                peer_urls: self.cfg.advertise_peer_urls.clone(),
                client_urls: self.cfg.advertise_client_urls.clone(),
                is_learner: true,
            });
        }
        out
    }

    /// Answer of the `Members` rpc.
    pub(crate) fn members_reply(&self) -> MembersReply {
        MembersReply {
            cluster_id: self.cluster_id,
            leader: self.current_leader(),
            members: self.members().into_iter().map(WireMember::from).collect(),
        }
    }

    /// Stop raft, the peer server and background tasks; flush storage. Idempotent.
    pub(crate) async fn shutdown(&self) -> Result<(), RaftError> {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let _ = self.shutdown_tx.send(true);
        let raft_res = self.raft.shutdown().await;
        let server = self.server.lock().take();
        if let Some(mut h) = server {
            // Graceful stop waits for open peer connections; don't hang on a stuck one.
            if tokio::time::timeout(Duration::from_secs(2), &mut h)
                .await
                .is_err()
            {
                h.abort();
            }
        }
        let tasks: Vec<JoinHandle<()>> = std::mem::take(&mut *self.tasks.lock());
        for mut t in tasks {
            if tokio::time::timeout(Duration::from_secs(2), &mut t)
                .await
                .is_err()
            {
                t.abort();
            }
        }
        let dbs = self.dbs.clone();
        let flushed = tokio::task::spawn_blocking(move || {
            dbs.iter().try_for_each(|db| db.flush().map(|_| ()))
        })
        .await
        .map_err(|e| RaftError::Internal(format!("flush task: {e}")))?;
        flushed.map_err(|e| RaftError::Storage(crawler_storage::StoreError::Sled(e)))?;
        raft_res.map_err(|e| RaftError::Internal(format!("raft shutdown: {e}")))?;
        Ok(())
    }
}
