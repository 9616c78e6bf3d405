//! A cluster of real `crawler store` processes (or `crawler master` processes, each embedding a
//! member) whose peer links all go through [`Proxy`]s.
//!
//! The cluster has more *slots* than members: a slot is a fixed (client port, peer port) pair
//! with a proxy for every directed link to every other slot, so a member added later (in a free
//! slot, with a fresh name and data dir) is reachable through proxies too, and every node can be
//! started with `--peer-dial-override` entries for all slots up front.
//!
//! Clients and watchers address members by *position* (0..nodes): a [`Topology`] maps each
//! position to the slot currently holding it, so a member replaced by a membership change is
//! followed by the clients that were bound to it.

use std::collections::{HashMap, HashSet};
use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex as StdMutex, OnceLock};
use std::time::{Duration, Instant};

use crawler_proto::etcdserverpb as pb;
use crawler_proto::etcdserverpb::cluster_client::ClusterClient;
use crawler_proto::etcdserverpb::kv_client::KvClient;
use crawler_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use parking_lot::RwLock;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use tonic::transport::{Channel, Endpoint};

use super::proxy::{LinkMode, Proxy};

/// Token passed to every node (`--initial-cluster-token`).
pub const CLUSTER_TOKEN: &str = "crawler-fault";
/// Key read to decide that a member serves linearizable reads.
const READY_KEY: &[u8] = b"/fault-ready";

/// Errors of cluster management.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A local I/O operation failed (spawn, files, ports).
    #[error("{what}: {source}")]
    Io {
        /// What was attempted.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// A condition was not reached in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClusterError {
    let what = what.into();
    move |source| ClusterError::Io { what, source }
}

/// How to build the cluster.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// Number of members.
    pub nodes: usize,
    /// Extra slots for members added by membership changes.
    pub spare_slots: usize,
    /// `--heartbeat-interval` (ms).
    pub heartbeat_ms: u64,
    /// `--election-timeout` (ms).
    pub election_ms: u64,
    /// `--snapshot-count` (small values exercise snapshot transfer).
    pub snapshot_count: u64,
    /// Directory for data dirs and logs.
    pub dir: PathBuf,
    /// The `crawler` binary.
    pub bin: PathBuf,
}

/// One (client port, peer port) pair and the process currently using it.
pub struct Slot {
    /// Slot index.
    pub index: usize,
    /// Client API port.
    pub client_port: u16,
    /// Raft peer port (advertised; other nodes reach it through proxies).
    pub peer_port: u16,
    /// Name of the member incarnation in this slot (empty if never used).
    pub name: String,
    /// Data dir of the current incarnation.
    pub data_dir: PathBuf,
    /// Log file of the current incarnation.
    pub log_path: PathBuf,
    /// `--initial-cluster` the incarnation was started with.
    pub initial_cluster: String,
    /// `--initial-cluster-state` (`new` / `existing`).
    pub state: &'static str,
    /// Member id, once known.
    pub member_id: Option<u64>,
    /// Whether the slot's incarnation is a cluster member.
    pub is_member: bool,
    /// Whether the process is SIGSTOPped.
    pub paused: bool,
    /// Master HTTP API port (used when the cluster runs `crawler master`).
    pub http_port: u16,
    /// Master gRPC API port (used when the cluster runs `crawler master`).
    pub grpc_port: u16,
    child: Option<Child>,
}

impl Slot {
    /// `http://127.0.0.1:<client port>`.
    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// `http://127.0.0.1:<peer port>` (the advertised peer URL).
    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }
}

/// Which slot holds each member position, shared with clients and watchers.
#[derive(Clone)]
pub struct Topology {
    positions: Arc<RwLock<Vec<usize>>>,
    client_urls: Arc<Vec<String>>,
}

impl Topology {
    /// Number of member positions.
    pub fn len(&self) -> usize {
        self.positions.read().len()
    }

    /// Whether there are no positions.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Client URL of the member at `position` right now.
    pub fn url(&self, position: usize) -> String {
        let positions = self.positions.read();
        let slot = positions
            .get(position % positions.len().max(1))
            .copied()
            .unwrap_or(0);
        self.client_urls.get(slot).cloned().unwrap_or_default()
    }

    /// Client URLs of all current members, in position order.
    pub fn urls(&self) -> Vec<String> {
        (0..self.len()).map(|p| self.url(p)).collect()
    }

    fn set(&self, position: usize, slot: usize) {
        if let Some(p) = self.positions.write().get_mut(position) {
            *p = slot;
        }
    }

    fn position_of(&self, slot: usize) -> Option<usize> {
        self.positions.read().iter().position(|s| *s == slot)
    }
}

/// The processes, their proxies, and the membership bookkeeping.
pub struct FaultCluster {
    cfg: ClusterConfig,
    slots: Vec<Slot>,
    proxies: HashMap<(usize, usize), Proxy>,
    topology: Topology,
    next_name: usize,
    /// `Some(config file)`: run `crawler master` (embedding the member) instead of `crawler store`.
    master_config: Option<PathBuf>,
}

/// A port that was free a moment ago and was never handed out before in this process.
pub fn free_port() -> Result<u16, ClusterError> {
    static USED: OnceLock<StdMutex<HashSet<u16>>> = OnceLock::new();
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(io_err("bind 127.0.0.1:0"))?
            .port();
        let mut used = USED
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if used.insert(port) {
            return Ok(port);
        }
    }
}

/// A lazily connecting channel to a client URL (no per-call timeout: callers set their own).
pub fn channel(url: &str) -> Result<Channel, ClusterError> {
    Ok(Endpoint::from_shared(url.to_string())
        .map_err(|e| ClusterError::Other(format!("bad url {url}: {e}")))?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .connect_lazy())
}

/// A request with a gRPC deadline.
pub fn req<T>(msg: T, timeout: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(timeout);
    r
}

/// Send a signal with the `kill` command (no libc dependency needed).
fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

impl FaultCluster {
    /// Start `cfg.nodes` members (slots 0..nodes) as a new cluster and wait until each serves
    /// linearizable reads.
    pub async fn start(cfg: ClusterConfig) -> Result<FaultCluster, ClusterError> {
        Self::start_as(cfg, None).await
    }

    /// Like [`FaultCluster::start`], but every node is a `crawler master --config <config>`
    /// (master id = slot + 1) embedding the member, with its HTTP/gRPC API on the slot's ports.
    pub async fn start_masters(
        cfg: ClusterConfig,
        config: PathBuf,
    ) -> Result<FaultCluster, ClusterError> {
        Self::start_as(cfg, Some(config)).await
    }

    async fn start_as(
        cfg: ClusterConfig,
        master_config: Option<PathBuf>,
    ) -> Result<FaultCluster, ClusterError> {
        fs::create_dir_all(&cfg.dir).map_err(io_err(format!("create {:?}", cfg.dir)))?;
        let total = cfg.nodes + cfg.spare_slots;
        let mut slots = Vec::with_capacity(total);
        for index in 0..total {
            slots.push(Slot {
                index,
                client_port: free_port()?,
                peer_port: free_port()?,
                name: String::new(),
                data_dir: PathBuf::new(),
                log_path: PathBuf::new(),
                initial_cluster: String::new(),
                state: "new",
                member_id: None,
                is_member: false,
                paused: false,
                http_port: free_port()?,
                grpc_port: free_port()?,
                child: None,
            });
        }
        let mut proxies = HashMap::new();
        for i in 0..total {
            for (j, to) in slots.iter().enumerate() {
                if i != j {
                    let target = SocketAddr::from(([127, 0, 0, 1], to.peer_port));
                    let p = Proxy::start(target).await.map_err(io_err("start proxy"))?;
                    proxies.insert((i, j), p);
                }
            }
        }
        let topology = Topology {
            positions: Arc::new(RwLock::new((0..cfg.nodes).collect())),
            client_urls: Arc::new(slots.iter().map(Slot::client_url).collect()),
        };
        let mut c = FaultCluster {
            cfg,
            slots,
            proxies,
            topology,
            next_name: 1,
            master_config,
        };
        let n = c.cfg.nodes;
        for i in 0..n {
            c.assign_incarnation(i);
        }
        let initial = c.initial_cluster(&(0..n).collect::<Vec<_>>());
        for i in 0..n {
            c.slots[i].initial_cluster = initial.clone();
            c.slots[i].state = "new";
            c.slots[i].is_member = true;
            c.spawn(i)?;
        }
        for i in 0..n {
            c.wait_ready(i, Duration::from_secs(40)).await?;
        }
        c.learn_member_ids().await;
        Ok(c)
    }

    /// Shared position → slot map for clients.
    pub fn topology(&self) -> Topology {
        self.topology.clone()
    }

    /// Config the cluster was built with.
    pub fn config(&self) -> &ClusterConfig {
        &self.cfg
    }

    /// A slot.
    pub fn slot(&self, i: usize) -> &Slot {
        &self.slots[i]
    }

    /// Number of slots.
    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// Slots whose incarnation is a member, in position order.
    pub fn member_slots(&self) -> Vec<usize> {
        self.topology
            .positions
            .read()
            .iter()
            .copied()
            .filter(|s| self.slots[*s].is_member)
            .collect()
    }

    /// Give slot `i` a fresh member name, data dir and log file.
    fn assign_incarnation(&mut self, i: usize) {
        let name = format!("n{}", self.next_name);
        self.next_name += 1;
        let s = &mut self.slots[i];
        s.data_dir = self.cfg.dir.join(format!("{name}.etcd"));
        s.log_path = self.cfg.dir.join(format!("{name}.log"));
        s.name = name;
        s.member_id = None;
        s.paused = false;
    }

    fn initial_cluster(&self, slots: &[usize]) -> String {
        slots
            .iter()
            .map(|&i| format!("{}={}", self.slots[i].name, self.slots[i].peer_url()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Spawn slot `i`'s process with its stored flags.
    fn spawn(&mut self, i: usize) -> Result<(), ClusterError> {
        if self.slots[i].child.is_some() {
            return Err(ClusterError::Other(format!("slot {i} already running")));
        }
        let s = &self.slots[i];
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&s.log_path)
            .map_err(io_err(format!("open {:?}", s.log_path)))?;
        let _ = writeln!(log, "\n===== fault harness: starting {} =====", s.name);
        let log_err = log.try_clone().map_err(io_err("clone log handle"))?;
        let mut cmd = Command::new(&self.cfg.bin);
        match &self.master_config {
            None => {
                cmd.arg("store");
            }
            Some(config) => {
                cmd.arg("master")
                    .arg(format!("--id={}", i + 1))
                    .arg(format!("--http=127.0.0.1:{}", s.http_port))
                    .arg(format!("--grpc=127.0.0.1:{}", s.grpc_port))
                    .arg("--config")
                    .arg(config);
            }
        }
        cmd.args(["--name", &s.name])
            .arg("--data-dir")
            .arg(&s.data_dir)
            .args(["--listen-client-urls", &s.client_url()])
            .args(["--advertise-client-urls", &s.client_url()])
            .args(["--listen-peer-urls", &s.peer_url()])
            .args(["--initial-advertise-peer-urls", &s.peer_url()])
            .args(["--initial-cluster", &s.initial_cluster])
            .args(["--initial-cluster-state", s.state])
            .args(["--initial-cluster-token", CLUSTER_TOKEN])
            .args(["--heartbeat-interval", &self.cfg.heartbeat_ms.to_string()])
            .args(["--election-timeout", &self.cfg.election_ms.to_string()])
            .args(["--snapshot-count", &self.cfg.snapshot_count.to_string()]);
        for (j, other) in self.slots.iter().enumerate() {
            if j == i {
                continue;
            }
            if let Some(p) = self.proxies.get(&(i, j)) {
                cmd.arg("--peer-dial-override")
                    .arg(format!("{}={}", other.peer_url(), p.url()));
            }
        }
        if std::env::var_os("RUST_LOG").is_none() {
            // Lease decisions at debug level: the lease checks' failures need them.
            cmd.env("RUST_LOG", "info,crawler::server::lessor=debug");
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        let child = cmd
            .spawn()
            .map_err(io_err(format!("spawn {:?}", self.cfg.bin)))?;
        let s = &mut self.slots[i];
        s.child = Some(child);
        s.paused = false;
        Ok(())
    }

    /// Whether slot `i`'s process is alive (reaps it if it exited).
    pub fn is_running(&mut self, i: usize) -> bool {
        match self.slots[i].child.as_mut() {
            None => false,
            Some(c) => matches!(c.try_wait(), Ok(None)),
        }
    }

    /// Processes that exited on their own since the last call (reaped and forgotten), with
    /// their exit status and log tail.
    pub fn crashed(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        for i in 0..self.slots.len() {
            let status = match self.slots[i].child.as_mut().map(|c| c.try_wait()) {
                Some(Ok(Some(st))) => st,
                _ => continue,
            };
            self.slots[i].child = None;
            out.push(format!(
                "{} (slot {i}) exited on its own with {status}; log tail:\n{}",
                self.slots[i].name,
                self.log_tail(i, 20)
            ));
        }
        out
    }

    /// `kill -9` slot `i` and reap it.
    pub fn kill(&mut self, i: usize) {
        let s = &mut self.slots[i];
        if let Some(mut c) = s.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        s.paused = false;
    }

    /// Start slot `i` again with the same data dir and flags (after [`FaultCluster::kill`]).
    pub fn restart(&mut self, i: usize) -> Result<(), ClusterError> {
        self.kill(i);
        self.spawn(i)
    }

    /// SIGSTOP slot `i`.
    pub fn pause(&mut self, i: usize) {
        if let Some(c) = self.slots[i].child.as_ref() {
            signal(c.id(), "STOP");
            self.slots[i].paused = true;
        }
    }

    /// SIGCONT slot `i`.
    pub fn resume(&mut self, i: usize) {
        if let Some(c) = self.slots[i].child.as_ref() {
            signal(c.id(), "CONT");
        }
        self.slots[i].paused = false;
    }

    /// Set the directed link `from → to`.
    pub fn set_link(&self, from: usize, to: usize, mode: LinkMode) {
        if let Some(p) = self.proxies.get(&(from, to)) {
            p.set(mode);
        }
    }

    /// Set both directions between `a` and `b`.
    pub fn set_both(&self, a: usize, b: usize, mode: LinkMode) {
        self.set_link(a, b, mode);
        self.set_link(b, a, mode);
    }

    /// Every link back to pass.
    pub fn heal_links(&self) {
        for p in self.proxies.values() {
            p.set(LinkMode::Pass);
        }
    }

    /// Links that are not passing traffic, as `from→to mode`.
    pub fn faulty_links(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .proxies
            .iter()
            .filter(|(_, p)| p.mode() != LinkMode::Pass)
            .map(|((f, t), p)| format!("{f}→{t} {}", p.mode()))
            .collect();
        v.sort();
        v
    }

    /// Wait until slot `i` answers a linearizable read.
    pub async fn wait_ready(&mut self, i: usize, timeout: Duration) -> Result<(), ClusterError> {
        let url = self.slots[i].client_url();
        let ch = channel(&url)?;
        let mut kv = KvClient::new(ch);
        let deadline = Instant::now() + timeout;
        let mut last: String;
        loop {
            if self.slots[i].child.is_some() && !self.is_running(i) {
                return Err(ClusterError::Other(format!(
                    "{} exited while waiting for it to be ready; log tail:\n{}",
                    self.slots[i].name,
                    self.log_tail(i, 30)
                )));
            }
            let r = pb::RangeRequest {
                key: READY_KEY.to_vec(),
                ..Default::default()
            };
            match tokio::time::timeout(
                Duration::from_secs(2),
                kv.range(req(r, Duration::from_secs(2))),
            )
            .await
            {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(s)) => last = format!("{:?}: {}", s.code(), s.message()),
                Err(_) => last = "timeout".into(),
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::Timeout(format!(
                    "{} ({url}) not ready after {timeout:?}: {last}",
                    self.slots[i].name
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `Status` of slot `i`: (member id, leader id, term, applied index).
    pub async fn status(&self, i: usize) -> Option<(u64, u64, u64, u64)> {
        let ch = channel(&self.slots[i].client_url()).ok()?;
        let mut m = MaintenanceClient::new(ch);
        let t = Duration::from_millis(800);
        let r = tokio::time::timeout(t, m.status(req(pb::StatusRequest {}, t)))
            .await
            .ok()?
            .ok()?
            .into_inner();
        let id = r.header.map(|h| h.member_id).unwrap_or(0);
        Some((id, r.leader, r.raft_term, r.raft_applied_index))
    }

    /// Learn member ids of running member slots from their `Status` headers.
    pub async fn learn_member_ids(&mut self) {
        for i in self.member_slots() {
            if self.slots[i].member_id.is_none() && !self.slots[i].paused {
                if let Some((id, ..)) = self.status(i).await {
                    if id != 0 {
                        self.slots[i].member_id = Some(id);
                    }
                }
            }
        }
    }

    /// The slot of the current leader, as the running, unpaused members report it (the highest
    /// term wins).
    pub async fn leader(&mut self) -> Option<usize> {
        self.learn_member_ids().await;
        let mut best: Option<(u64, u64)> = None;
        for i in self.member_slots() {
            if self.slots[i].paused || self.slots[i].child.is_none() {
                continue;
            }
            if let Some((_, leader, term, _)) = self.status(i).await {
                if leader != 0 && best.is_none_or(|(t, _)| term > t) {
                    best = Some((term, leader));
                }
            }
        }
        let (_, leader) = best?;
        self.slots
            .iter()
            .find(|s| s.is_member && s.member_id == Some(leader))
            .map(|s| s.index)
    }

    /// Replace the member in slot `victim` by a new member in a free slot: `MemberRemove`, kill,
    /// `MemberAdd` with the new slot's peer URL, start it (`--initial-cluster-state existing`,
    /// fresh data dir and name) and wait until it serves reads. Returns the new slot.
    pub async fn replace_member(
        &mut self,
        victim: usize,
        rng: &mut StdRng,
        log: &mut dyn FnMut(String),
    ) -> Result<usize, ClusterError> {
        self.learn_member_ids().await;
        let victim_id = self.slots[victim]
            .member_id
            .ok_or_else(|| ClusterError::Other(format!("member id of slot {victim} unknown")))?;
        let mut others: Vec<usize> = self
            .member_slots()
            .into_iter()
            .filter(|s| *s != victim)
            .collect();
        others.shuffle(rng);
        let deadline = Instant::now() + Duration::from_secs(20);

        // 1. Remove. Retried until it is known to be done ("member not found" after an
        // unknown outcome means an earlier attempt went through).
        let mut attempt = 0usize;
        loop {
            let via = others[attempt % others.len()];
            attempt += 1;
            let ch = channel(&self.slots[via].client_url())?;
            let mut cl = ClusterClient::new(ch);
            let t = Duration::from_secs(5);
            let r = tokio::time::timeout(
                t,
                cl.member_remove(req(pb::MemberRemoveRequest { id: victim_id }, t)),
            )
            .await;
            match r {
                Ok(Ok(_)) => break,
                Ok(Err(s)) if s.message().contains("member not found") => break,
                Ok(Err(s)) => log(format!(
                    "member remove {victim_id:x} via slot {via}: {:?} {}",
                    s.code(),
                    s.message()
                )),
                Err(_) => log(format!(
                    "member remove {victim_id:x} via slot {via}: timeout"
                )),
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::Timeout(format!(
                    "removing member {victim_id:x} (slot {victim})"
                )));
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        log(format!(
            "removed member {victim_id:x} ({}, slot {victim})",
            self.slots[victim].name
        ));
        self.kill(victim);
        self.slots[victim].is_member = false;

        // 2. Add a new member in a free slot (not the one just vacated, when possible).
        let mut free: Vec<usize> = (0..self.slots.len())
            .filter(|&i| !self.slots[i].is_member && self.slots[i].child.is_none())
            .collect();
        free.sort_by_key(|&i| (i == victim, i));
        let Some(&new) = free.first() else {
            return Err(ClusterError::Other("no free slot for a new member".into()));
        };
        self.assign_incarnation(new);
        let peer_url = self.slots[new].peer_url();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut attempt = 0usize;
        let new_id = loop {
            let via = others[attempt % others.len()];
            attempt += 1;
            let ch = channel(&self.slots[via].client_url())?;
            let mut cl = ClusterClient::new(ch);
            let t = Duration::from_secs(5);
            let r = tokio::time::timeout(
                t,
                cl.member_add(req(
                    pb::MemberAddRequest {
                        peer_ur_ls: vec![peer_url.clone()],
                        is_learner: false,
                    },
                    t,
                )),
            )
            .await;
            match r {
                Ok(Ok(resp)) => {
                    if let Some(m) = resp.into_inner().member {
                        break m.id;
                    }
                    log("member add answered without the new member".into());
                }
                Ok(Err(s)) if s.message().contains("Peer URLs already exists") => {
                    // An earlier attempt went through: find the id it got.
                    let list = tokio::time::timeout(
                        t,
                        cl.member_list(req(pb::MemberListRequest { linearizable: true }, t)),
                    )
                    .await;
                    if let Ok(Ok(l)) = list {
                        if let Some(m) = l
                            .into_inner()
                            .members
                            .into_iter()
                            .find(|m| m.peer_ur_ls.contains(&peer_url))
                        {
                            break m.id;
                        }
                    }
                }
                Ok(Err(s)) => log(format!(
                    "member add {peer_url} via slot {via}: {:?} {}",
                    s.code(),
                    s.message()
                )),
                Err(_) => log(format!("member add {peer_url} via slot {via}: timeout")),
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::Timeout(format!("adding member {peer_url}")));
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        };
        let mut members: Vec<usize> = others.clone();
        members.sort();
        members.push(new);
        let initial = self.initial_cluster(&members);
        {
            let s = &mut self.slots[new];
            s.member_id = Some(new_id);
            s.is_member = true;
            s.initial_cluster = initial;
            s.state = "existing";
        }
        if let Some(pos) = self.topology.position_of(victim) {
            self.topology.set(pos, new);
        }
        log(format!(
            "added member {new_id:x} ({}, slot {new}); starting it",
            self.slots[new].name
        ));
        self.spawn(new)?;
        self.wait_ready(new, Duration::from_secs(30)).await?;
        self.ensure_voter(new, new_id, &others, log).await?;
        Ok(new)
    }

    /// `MemberAdd` is two raft changes in this store (add learner, then promote): an add whose
    /// answer was lost may have stopped at the learner. Promote it then, as an operator would.
    async fn ensure_voter(
        &mut self,
        slot: usize,
        id: u64,
        others: &[usize],
        log: &mut dyn FnMut(String),
    ) -> Result<(), ClusterError> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let t = Duration::from_secs(5);
        let mut attempt = 0usize;
        loop {
            let via = if attempt.is_multiple_of(2) {
                slot
            } else {
                others[attempt / 2 % others.len()]
            };
            attempt += 1;
            let mut cl = ClusterClient::new(channel(&self.slots[via].client_url())?);
            let list = tokio::time::timeout(
                t,
                cl.member_list(req(pb::MemberListRequest { linearizable: true }, t)),
            )
            .await;
            if let Ok(Ok(l)) = list {
                match l.into_inner().members.iter().find(|m| m.id == id) {
                    Some(m) if !m.is_learner => return Ok(()),
                    Some(_) => {
                        log(format!("member {id:x} is still a learner: promoting it"));
                        let r = tokio::time::timeout(
                            t,
                            cl.member_promote(req(pb::MemberPromoteRequest { id }, t)),
                        )
                        .await;
                        match r {
                            Ok(Ok(_)) => return Ok(()),
                            Ok(Err(s)) => {
                                log(format!("promote {id:x}: {:?} {}", s.code(), s.message()))
                            }
                            Err(_) => log(format!("promote {id:x}: timeout")),
                        }
                    }
                    None => {
                        return Err(ClusterError::Other(format!(
                            "member {id:x} vanished from the member list"
                        )))
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::Timeout(format!("promoting member {id:x}")));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The last `n` lines of slot `i`'s log.
    pub fn log_tail(&self, i: usize, n: usize) -> String {
        tail(&self.slots[i].log_path, n)
    }

    /// Paths of every log file written so far.
    pub fn log_paths(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(&self.cfg.dir)
            .map(|d| {
                d.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "log"))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Resume and kill every process.
    pub fn shutdown(&mut self) {
        for i in 0..self.slots.len() {
            self.resume(i);
            self.kill(i);
        }
    }
}

impl Drop for FaultCluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Put `key` (retrying on any member for up to 20 s) and return the revision of the put: the
/// end of a run's history, written after the heal.
pub async fn write_sentinel(topology: &Topology, key: &str) -> Result<i64, String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = String::new();
    let mut attempt = 0;
    while Instant::now() < deadline {
        let url = topology.url(attempt);
        attempt += 1;
        let Ok(ch) = channel(&url) else { continue };
        let mut kv = KvClient::new(ch);
        let t = Duration::from_secs(2);
        let put = pb::PutRequest {
            key: key.as_bytes().to_vec(),
            value: b"end".to_vec(),
            ..Default::default()
        };
        match tokio::time::timeout(t, kv.put(req(put, t))).await {
            Ok(Ok(r)) => {
                if let Some(h) = r.into_inner().header {
                    return Ok(h.revision);
                }
                last = "no header".into();
            }
            Ok(Err(s)) => last = format!("{:?} {}", s.code(), s.message()),
            Err(_) => last = "timeout".into(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(last)
}
