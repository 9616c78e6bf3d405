//! Starting a member: the openraft config from the flags, storage, the raft instance, the peer
//! server, bootstrapping a new cluster and the background tasks.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use crawler_storage::{ApplyObserver, LogStore, StateMachine};
use openraft::error::InitializeError;
use openraft::{Raft, SnapshotPolicy};
use tokio::sync::watch;

use crate::batcher::Batcher;
use crate::network::{PeerClients, PeerNetwork};
use crate::read_index::{Coalescer, ReadIndex};
use crate::wire::OrRaftError;
use crate::{meta, NodeConfig, RaftError, TypeConfig};

use super::identity::resolve_identity;
use super::inner::Inner;
use super::tasks::{leader_watch_loop, publish_loop};

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

/// Make a member that led before it stopped start as a follower, as etcd's members do.
///
/// openraft 0.9 restores a member whose persisted vote is its own committed vote as leader at
/// once, in the same term, with the read index `max(committed, its term's first entry)`. The
/// committed index is saved without a flush, so after a crash it can be behind writes this
/// member acknowledged, and a linearizable read could be served from a state older than them
/// until the followers' next answers. Keeping the vote (same term, same candidate) but not its
/// committed flag makes the member a follower: it still never votes twice in that term, and
/// whoever leads next does so in a new term whose first entry follows every acknowledged one.
async fn start_as_follower(
    log_store: &mut LogStore<TypeConfig>,
    id: crate::NodeId,
) -> Result<(), RaftError> {
    use openraft::storage::RaftLogStorage as _;
    let vote = log_store
        .read_vote()
        .await
        .map_err(|e| RaftError::Internal(format!("read vote: {e}")))?;
    if let Some(v) = vote {
        if v.is_committed() && v.leader_id().voted_for() == Some(id) {
            let demoted = openraft::Vote::new(v.leader_id().get_term(), id);
            log_store
                .save_vote(&demoted)
                .await
                .map_err(|e| RaftError::Internal(format!("save vote: {e}")))?;
            tracing::debug!(
                term = v.leader_id().get_term(),
                "led before the restart; starting as a follower"
            );
        }
    }
    Ok(())
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
    let mut log_store = LogStore::<TypeConfig>::open_synced(&wal, &wal_dir)?;
    start_as_follower(&mut log_store, ident.id).await?;
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
                    let _ = inner.shutdown(false).await;
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
