//! The shared state of one running member ([`Inner`]), with the accessors every room of the
//! member uses. Fields private to the member are `pub(super)`: only `node/` reaches into them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crawler_storage::StoreReader;
use openraft::Raft;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::batcher::Batcher;
use crate::network::PeerClients;
use crate::read_index::{Coalescer, ReadIndex};
use crate::{NodeConfig, NodeId, RaftError, TypeConfig};

/// Shared state of one running member.
pub(crate) struct Inner {
    pub(crate) id: NodeId,
    pub(crate) cluster_id: u64,
    pub(crate) cfg: NodeConfig,
    pub(crate) raft: Raft<TypeConfig>,
    pub(crate) reader: StoreReader,
    /// The raft log's database and the state machine's, flushed at shutdown.
    pub(super) dbs: [sled::Db; 2],
    pub(crate) peer_addr: SocketAddr,
    pub(crate) clients: PeerClients,
    pub(crate) leader_tx: Arc<watch::Sender<Option<NodeId>>>,
    pub(super) shutdown_tx: watch::Sender<bool>,
    /// Group proposal: every write made on this member as leader goes through it.
    pub(super) batcher: Batcher,
    /// Shared read-index rounds: every read index served by this member as leader.
    pub(super) read_index: ReadIndex,
    /// Shared read-index steps of this member's read barriers (local or forwarded).
    pub(super) barrier_rounds: Coalescer<Result<u64, RaftError>>,
    pub(super) tasks: parking_lot::Mutex<Vec<JoinHandle<()>>>,
    pub(super) server: parking_lot::Mutex<Option<JoinHandle<()>>>,
    pub(super) stopped: AtomicBool,
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
}
