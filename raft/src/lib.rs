//! openraft wiring for the embedded store: type config, peer network over tonic, node startup,
//! leader forwarding, linearizable reads and membership.
//!
//! Modules: `node` (startup, forwarding, reads), `batcher` (group proposal of concurrent writes
//! on the leader), `membership` (leader-side member changes),
//! `network` (peer client, openraft network), `server` (peer gRPC service), `wire` (payloads),
//! `ids` (member/cluster ids), `meta` (data dir identity file).

mod batcher;
mod ids;
mod membership;
mod meta;
mod network;
mod node;
mod read_index;
mod server;
mod wire;

// The default `SnapshotData` of `declare_raft_types!` names `Cursor` unqualified.
use std::io::Cursor;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crawler_storage::{ApplyObserver, ApplyResponse, Command, StoreReader};
use serde::{Deserialize, Serialize};

/// Raft node id (= etcd member id).
pub type NodeId = u64;

/// What the membership config records about a member.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerNode {
    pub name: String,
    pub peer_urls: Vec<String>,
}

impl std::fmt::Display for PeerNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.name, self.peer_urls.join(","))
    }
}

openraft::declare_raft_types!(
    /// The store's raft types.
    pub TypeConfig:
        D = Command,
        R = ApplyResponse,
        NodeId = NodeId,
        Node = PeerNode,
);

/// `--initial-cluster-state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterState {
    New,
    Existing,
}

/// Everything needed to start one member's raft side.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Human-readable member name (`--name`).
    pub name: String,
    /// Data directory; sled lives under it.
    pub data_dir: PathBuf,
    /// Address the peer gRPC server binds (port 0 allowed; see `RaftNode::peer_addr`).
    pub listen_peer: SocketAddr,
    /// Peer URLs other members use to reach this one.
    pub advertise_peer_urls: Vec<String>,
    /// Client URLs this member serves etcd's API on (published into the store).
    pub advertise_client_urls: Vec<String>,
    /// `--initial-cluster`: (name, peer url) for every initial member, this one included.
    pub initial_cluster: Vec<(String, String)>,
    pub initial_cluster_state: ClusterState,
    /// `--initial-cluster-token`, mixed into member and cluster ids.
    pub cluster_token: String,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_ms: u64,
    /// Applied entries between snapshots.
    pub snapshot_count: u64,
    /// Advertised peer URL -> URL actually dialed, for every outbound peer connection (fault
    /// tests route peer traffic through proxies); a URL not listed is dialed as advertised.
    pub peer_dial_overrides: std::collections::HashMap<String, String>,
}

/// A member as `MemberList` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    pub id: NodeId,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

/// A snapshot of raft state for response headers and `Status`.
#[derive(Clone, Debug, Default)]
pub struct RaftStatus {
    pub term: u64,
    pub leader: Option<NodeId>,
    pub commit_index: u64,
    pub applied_index: u64,
    pub is_learner: bool,
}

/// Where this member's raft log stands (diagnostics and tests).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogState {
    /// Index of the last entry in the local log (0 if none).
    pub last_log_index: u64,
    /// Index of the last purged entry, if the log was ever purged.
    pub purged_index: Option<u64>,
    /// Last index covered by the current snapshot, if any.
    pub snapshot_index: Option<u64>,
}

/// Errors of the raft layer, as the API layer maps them.
#[derive(Clone, Debug, thiserror::Error)]
pub enum RaftError {
    #[error("etcdserver: no leader")]
    NoLeader,
    #[error("etcdserver: request timed out")]
    Timeout,
    #[error("etcdserver: server stopped")]
    Stopped,
    #[error("etcdserver: member not found")]
    MemberNotFound,
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExists,
    #[error("etcdserver: re-configuration failed due to not enough started members")]
    NotEnoughStartedMembers,
    #[error("etcdserver: can only promote a learner member")]
    NotLearner,
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    #[error("{0}")]
    Config(String),
    #[error("storage: {0}")]
    Storage(#[from] crawler_storage::StoreError),
    #[error("raft: {0}")]
    Internal(String),
}

/// Who a restored member of a new cluster is (see [`prepare_restored_member`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoredMember {
    pub member_id: NodeId,
    pub cluster_id: u64,
    /// Where its state machine goes (`<data_dir>/member/db`).
    pub state_machine_dir: PathBuf,
}

/// The identity member `name` of a new cluster gets from `initial_cluster` and `token` (what its
/// first start would compute), recorded in `data_dir` as its first start records it; the
/// caller then writes the state machine into `state_machine_dir`. The first start with the
/// same `--initial-cluster` flags bootstraps raft on top of that state machine.
pub fn prepare_restored_member(
    data_dir: &std::path::Path,
    name: &str,
    initial_cluster: &[(String, String)],
    token: &str,
) -> Result<RestoredMember, RaftError> {
    let (member_id, cluster_id) = node::new_cluster_ids(name, initial_cluster, token)?;
    meta::store(
        data_dir,
        &meta::Meta {
            name: name.to_string(),
            member_id,
            cluster_id,
            cluster_token: token.to_string(),
        },
    )?;
    Ok(RestoredMember {
        member_id,
        cluster_id,
        state_machine_dir: meta::db_dir(data_dir),
    })
}

/// A running member's raft side. Cheap to clone.
#[derive(Clone)]
pub struct RaftNode {
    inner: Arc<node::Inner>,
}

impl std::fmt::Debug for RaftNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftNode")
            .field("id", &format_args!("{:x}", self.inner.id))
            .field("name", &self.inner.cfg.name)
            .finish()
    }
}

impl RaftNode {
    /// Open the data dir, start raft and the peer server, bootstrap or join as configured.
    /// `observer` (the watch hub) is installed before any entry is applied.
    pub async fn start(
        cfg: NodeConfig,
        observer: Arc<dyn ApplyObserver>,
    ) -> Result<Self, RaftError> {
        let inner = node::start(cfg, observer).await?;
        Ok(Self { inner })
    }
    /// This member's id.
    pub fn id(&self) -> NodeId {
        self.inner.id
    }
    /// The cluster id (same on every member).
    pub fn cluster_id(&self) -> u64 {
        self.inner.cluster_id
    }
    /// Address the peer server actually bound.
    pub fn peer_addr(&self) -> SocketAddr {
        self.inner.peer_addr
    }
    /// Read access to the local state machine.
    pub fn store(&self) -> &StoreReader {
        &self.inner.reader
    }
    /// Replicate `cmd` (forwarded to the leader when this member is not it) and return its result.
    ///
    /// Waits for a leader up to the request timeout (`NoLeader`); a write whose outcome is
    /// unknown when the deadline passes is `Timeout`.
    pub async fn write(&self, cmd: Command) -> Result<ApplyResponse, RaftError> {
        match self.inner.run_on_leader(node::LeaderOp::Write(cmd)).await? {
            node::LeaderOk::Write(r) => Ok(r),
            other => Err(RaftError::Internal(format!("unexpected reply {other:?}"))),
        }
    }
    /// Replicate `cmd` only if this member leads now: never forwarded, never retried on another
    /// leader (`NoLeader` otherwise). For decisions only the leader that made them may commit,
    /// such as revoking a lease its own clock expired: forwarded after a leader change, such a
    /// revoke would kill a lease the new leader has just renewed.
    pub async fn write_as_leader(&self, cmd: Command) -> Result<ApplyResponse, RaftError> {
        if self.inner.is_stopped() {
            return Err(RaftError::Stopped);
        }
        if self.inner.current_leader() != Some(self.inner.id) {
            return Err(RaftError::NoLeader);
        }
        self.inner
            .write_on_leader(cmd, self.inner.request_timeout())
            .await
            .map_err(RaftError::from)
    }
    /// Wait until a read of the local state machine is linearizable (read index from the leader).
    pub async fn read_barrier(&self) -> Result<(), RaftError> {
        self.inner.read_barrier().await
    }
    /// Current term, leader, indexes.
    pub fn status(&self) -> RaftStatus {
        self.inner.status()
    }
    /// Log and snapshot positions of this member.
    pub fn log_state(&self) -> LogState {
        self.inner.log_state()
    }
    /// Leader changes, as a watch channel.
    pub fn leader_watch(&self) -> tokio::sync::watch::Receiver<Option<NodeId>> {
        self.inner.leader_tx.subscribe()
    }
    /// Voters and learners with their published client URLs.
    pub fn members(&self) -> Vec<MemberInfo> {
        self.inner.members()
    }
    /// Add a member (voter, or learner) by peer URLs; it starts later with state `existing`.
    pub async fn add_member(
        &self,
        peer_urls: Vec<String>,
        learner: bool,
    ) -> Result<MemberInfo, RaftError> {
        match self
            .admin(wire::AdminOp::Add { peer_urls, learner })
            .await?
        {
            wire::AdminOk::Added(m) => Ok(m.into()),
            wire::AdminOk::Done => Err(RaftError::Internal(
                "leader did not report the new member".into(),
            )),
        }
    }
    /// Remove a member; its id is never reused.
    pub async fn remove_member(&self, id: NodeId) -> Result<(), RaftError> {
        self.admin(wire::AdminOp::Remove { id }).await.map(|_| ())
    }
    /// Promote a learner to voter.
    pub async fn promote_member(&self, id: NodeId) -> Result<(), RaftError> {
        self.admin(wire::AdminOp::Promote { id }).await.map(|_| ())
    }
    /// Stop raft and the peer server; flush storage. A leader first hands leadership to an
    /// up-to-date voter (bounded by one election timeout).
    pub async fn shutdown(&self) -> Result<(), RaftError> {
        self.inner.shutdown(true).await
    }
    /// Stop like [`RaftNode::shutdown`] but without handing leadership over: for the cluster,
    /// what a crash of this member looks like (tests).
    pub async fn shutdown_keeping_leadership(&self) -> Result<(), RaftError> {
        self.inner.shutdown(false).await
    }

    async fn admin(&self, op: wire::AdminOp) -> Result<wire::AdminOk, RaftError> {
        match self.inner.run_on_leader(node::LeaderOp::Admin(op)).await? {
            node::LeaderOk::Admin(r) => Ok(r),
            other => Err(RaftError::Internal(format!("unexpected reply {other:?}"))),
        }
    }
}
