//! Helpers for in-process clusters of real `RaftNode`s on 127.0.0.1.

#![allow(dead_code)]

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crawler_raft::{ClusterState, NodeConfig, NodeId, RaftError, RaftNode};
use crawler_storage::{ApplyObserver, Command, Event, PutRequest, RangeRequest};

/// An observer that ignores everything.
pub struct NullObserver;

impl ApplyObserver for NullObserver {
    fn on_apply(&self, _revision: i64, _events: &[Event]) {}
    fn on_restore(&self, _revision: i64) {}
}

pub fn observer() -> Arc<dyn ApplyObserver> {
    Arc::new(NullObserver)
}

/// A free port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

pub fn url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

/// Test timing: fast enough for tests, slow enough for a loaded 2-core debug build.
pub const HEARTBEAT_MS: u64 = 100;
pub const ELECTION_MS: u64 = 1000;

pub fn node_config(
    name: &str,
    dir: &std::path::Path,
    port: u16,
    initial: &[(String, String)],
    state: ClusterState,
    snapshot_count: u64,
) -> NodeConfig {
    NodeConfig {
        name: name.to_string(),
        data_dir: dir.to_path_buf(),
        listen_peer: SocketAddr::from(([127, 0, 0, 1], port)),
        advertise_peer_urls: vec![url(port)],
        advertise_client_urls: vec![format!("http://127.0.0.1:{}", 20000 + port % 10000)],
        initial_cluster: initial.to_vec(),
        initial_cluster_state: state,
        cluster_token: "test-cluster".to_string(),
        heartbeat_interval_ms: HEARTBEAT_MS,
        election_timeout_ms: ELECTION_MS,
        snapshot_count,
        peer_dial_overrides: Default::default(),
    }
}

/// Poll `cond` until it is true or `timeout` passes.
pub async fn wait_until<F: FnMut() -> bool>(what: &str, timeout: Duration, mut cond: F) {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Poll an async condition until it is true or `timeout` passes.
pub async fn wait_until_async<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn put(key: &str, value: &str) -> Command {
    Command::Put(PutRequest {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        ..Default::default()
    })
}

/// Value of `key` in `node`'s local state machine.
pub fn get(node: &RaftNode, key: &str) -> Option<Vec<u8>> {
    let resp = node
        .store()
        .range(&RangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        })
        .ok()?;
    resp.kvs.into_iter().next().map(|kv| kv.value)
}

/// Every key with `prefix` in `node`'s local state machine, with values.
pub fn dump(node: &RaftNode, prefix: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    node.store()
        .range(&RangeRequest {
            key: prefix.as_bytes().to_vec(),
            range_end: end,
            ..Default::default()
        })
        .map(|r| r.kvs.into_iter().map(|kv| (kv.key, kv.value)).collect())
        .unwrap_or_default()
}

/// Wait until every node agrees on one leader, and return it.
pub async fn wait_leader(nodes: &[&RaftNode], timeout: Duration) -> NodeId {
    let mut leader = 0;
    wait_until("a leader agreed by all nodes", timeout, || {
        let ls: Vec<Option<NodeId>> = nodes.iter().map(|n| n.status().leader).collect();
        match ls.first().copied().flatten() {
            Some(l) if ls.iter().all(|x| *x == Some(l)) => {
                leader = l;
                true
            }
            _ => false,
        }
    })
    .await;
    leader
}

/// Start a node, retrying while a previous incarnation in this process still holds the sled
/// lock (its background threads release it shortly after shutdown).
pub async fn start_retrying(cfg: NodeConfig) -> Result<RaftNode, RaftError> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match RaftNode::start(cfg.clone(), observer()).await {
            Err(RaftError::Storage(e)) if Instant::now() < deadline => {
                tracing::info!(error = %e, "storage busy, retrying start");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(RaftError::Config(e))
                if e.contains("cannot listen") && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

/// A cluster of `n` initial members in temp dirs.
pub struct Cluster {
    pub dirs: Vec<tempfile::TempDir>,
    pub cfgs: Vec<NodeConfig>,
    pub nodes: Vec<Option<RaftNode>>,
}

impl Cluster {
    pub async fn start(n: usize, snapshot_count: u64) -> Cluster {
        init_tracing();
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let initial: Vec<(String, String)> = ports
            .iter()
            .enumerate()
            .map(|(i, p)| (format!("n{}", i + 1), url(*p)))
            .collect();
        let dirs: Vec<tempfile::TempDir> = (0..n)
            .map(|_| tempfile::tempdir().expect("tempdir"))
            .collect();
        let cfgs: Vec<NodeConfig> = (0..n)
            .map(|i| {
                node_config(
                    &format!("n{}", i + 1),
                    dirs[i].path(),
                    ports[i],
                    &initial,
                    ClusterState::New,
                    snapshot_count,
                )
            })
            .collect();
        let started = futures::future::join_all(cfgs.iter().cloned().map(start_retrying)).await;
        let nodes = started
            .into_iter()
            .map(|r| Some(r.expect("start node")))
            .collect();
        Cluster { dirs, cfgs, nodes }
    }

    pub fn node(&self, i: usize) -> &RaftNode {
        self.nodes[i].as_ref().expect("node is running")
    }

    pub fn running(&self) -> Vec<&RaftNode> {
        self.nodes.iter().flatten().collect()
    }

    pub fn index_of(&self, id: NodeId) -> usize {
        self.nodes
            .iter()
            .position(|n| n.as_ref().is_some_and(|n| n.id() == id))
            .expect("id of a running node")
    }

    /// Index of the leader all running nodes agree on (a stopped leader does not count).
    pub async fn leader(&self) -> usize {
        let running = self.running();
        let mut found = None;
        wait_until(
            "a running leader agreed by all running nodes",
            Duration::from_secs(30),
            || {
                let ls: Vec<_> = running.iter().map(|n| n.status().leader).collect();
                match ls.first().copied().flatten() {
                    Some(l)
                        if ls.iter().all(|x| *x == Some(l))
                            && running.iter().any(|n| n.id() == l) =>
                    {
                        found = Some(l);
                        true
                    }
                    _ => false,
                }
            },
        )
        .await;
        self.index_of(found.unwrap_or_default())
    }

    pub async fn stop(&mut self, i: usize) {
        if let Some(n) = self.nodes[i].take() {
            n.shutdown().await.expect("shutdown");
        }
    }

    /// Stop member `i` as a crash would: a leader hands nothing over.
    pub async fn crash(&mut self, i: usize) {
        if let Some(n) = self.nodes[i].take() {
            n.shutdown_keeping_leadership().await.expect("shutdown");
        }
    }

    pub async fn restart(&mut self, i: usize) {
        let n = start_retrying(self.cfgs[i].clone())
            .await
            .expect("restart node");
        self.nodes[i] = Some(n);
    }

    pub async fn shutdown_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.stop(i).await;
        }
    }
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}
