//! openraft wiring for the embedded store: type config, peer network over tonic, node startup,
//! leader forwarding, linearizable reads and membership.
//!
//! INTERFACE STUB — the raft helper replaces the bodies. Signatures are the contract used by `src/`.

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

/// Errors of the raft layer, as the API layer maps them.
#[derive(Debug, thiserror::Error)]
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

/// A running member's raft side. Cheap to clone.
#[derive(Clone)]
pub struct RaftNode {
    _inner: Arc<()>,
}

impl RaftNode {
    /// Open the data dir, start raft and the peer server, bootstrap or join as configured.
    /// `observer` (the watch hub) is installed before any entry is applied.
    pub async fn start(
        _cfg: NodeConfig,
        _observer: Arc<dyn ApplyObserver>,
    ) -> Result<Self, RaftError> {
        todo!()
    }
    /// This member's id.
    pub fn id(&self) -> NodeId {
        todo!()
    }
    /// The cluster id (same on every member).
    pub fn cluster_id(&self) -> u64 {
        todo!()
    }
    /// Address the peer server actually bound.
    pub fn peer_addr(&self) -> SocketAddr {
        todo!()
    }
    /// Read access to the local state machine.
    pub fn store(&self) -> &StoreReader {
        todo!()
    }
    /// Replicate `cmd` (forwarded to the leader when this member is not it) and return its result.
    pub async fn write(&self, _cmd: Command) -> Result<ApplyResponse, RaftError> {
        todo!()
    }
    /// Wait until a read of the local state machine is linearizable (read index from the leader).
    pub async fn read_barrier(&self) -> Result<(), RaftError> {
        todo!()
    }
    /// Current term, leader, indexes.
    pub fn status(&self) -> RaftStatus {
        todo!()
    }
    /// Leader changes, as a watch channel.
    pub fn leader_watch(&self) -> tokio::sync::watch::Receiver<Option<NodeId>> {
        todo!()
    }
    /// Voters and learners with their published client URLs.
    pub fn members(&self) -> Vec<MemberInfo> {
        todo!()
    }
    /// Add a member (voter, or learner) by peer URLs; it starts later with state `existing`.
    pub async fn add_member(
        &self,
        _peer_urls: Vec<String>,
        _learner: bool,
    ) -> Result<MemberInfo, RaftError> {
        todo!()
    }
    /// Remove a member; its id is never reused.
    pub async fn remove_member(&self, _id: NodeId) -> Result<(), RaftError> {
        todo!()
    }
    /// Promote a learner to voter.
    pub async fn promote_member(&self, _id: NodeId) -> Result<(), RaftError> {
        todo!()
    }
    /// Stop raft and the peer server; flush storage.
    pub async fn shutdown(&self) -> Result<(), RaftError> {
        todo!()
    }
}
