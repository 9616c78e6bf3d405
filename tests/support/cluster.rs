//! A cluster of real `crawler store` processes on 127.0.0.1 (driven with the real `etcdctl`, see
//! [`super::etcdctl`]), one temp dir per cluster, every process killed on drop.
//!
//! Set `CRAWLER_TEST_SERVER=/usr/bin/etcd` to run the same tests against a real etcd: the
//! harness passes etcd's own flags, so this checks the tests themselves.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use super::etcdctl::etcdctl_t;
use super::ports::free_port;
use super::process::signal;
use super::wait::wait_until;

/// Raft heartbeat interval passed to every node (ms).
pub const HEARTBEAT_MS: u64 = 100;
/// Raft election timeout passed to every node (ms).
pub const ELECTION_MS: u64 = 1000;
/// How long a freshly started cluster may take to become healthy.
pub const START_DEADLINE: Duration = Duration::from_secs(40);
// ---------------------------------------------------------------------------------------------
// One cluster at a time

/// Only one cluster per test binary at a time: the machine has 2 cores and raft timing
/// suffers when many clusters compete for them.
struct Slot {
    busy: Mutex<bool>,
    cv: Condvar,
}

fn slot() -> &'static Slot {
    static SLOT: OnceLock<Slot> = OnceLock::new();
    SLOT.get_or_init(|| Slot {
        busy: Mutex::new(false),
        cv: Condvar::new(),
    })
}

/// Held by a running [`Cluster`]; releases the slot on drop.
pub struct SlotGuard;

impl SlotGuard {
    fn acquire() -> SlotGuard {
        let s = slot();
        let mut busy: MutexGuard<bool> = s.busy.lock().unwrap_or_else(|e| e.into_inner());
        while *busy {
            busy = s.cv.wait(busy).unwrap_or_else(|e| e.into_inner());
        }
        *busy = true;
        SlotGuard
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let s = slot();
        *s.busy.lock().unwrap_or_else(|e| e.into_inner()) = false;
        s.cv.notify_one();
    }
}

// ---------------------------------------------------------------------------------------------
// Nodes

/// One server process (a `crawler store`, or an etcd when `CRAWLER_TEST_SERVER` is set).
pub struct Node {
    /// Member name (`--name`).
    pub name: String,
    /// Client API port.
    pub client_port: u16,
    /// Raft peer port.
    pub peer_port: u16,
    /// `--data-dir`, kept across restarts.
    pub data_dir: PathBuf,
    /// stdout+stderr of every run of this node, appended.
    pub log_path: PathBuf,
    /// `--initial-cluster` value.
    pub initial_cluster: String,
    /// `--initial-cluster-state` value (`new` or `existing`).
    pub cluster_state: String,
    /// Further server flags, passed after the harness's own.
    pub extra_args: Vec<String>,
    /// `--initial-cluster-token` value.
    pub token: String,
    child: Option<Child>,
}

impl Node {
    /// A node description with fresh ports; not started.
    pub fn new(dir: &Path, name: &str) -> Node {
        let client_port = free_port();
        let peer_port = free_port();
        Node {
            name: name.to_string(),
            client_port,
            peer_port,
            data_dir: dir.join(format!("{name}.etcd")),
            log_path: dir.join(format!("{name}.log")),
            initial_cluster: String::new(),
            cluster_state: "new".to_string(),
            extra_args: Vec::new(),
            token: "crawler-test-cluster".to_string(),
            child: None,
        }
    }

    /// `http://127.0.0.1:<client port>`.
    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// `http://127.0.0.1:<peer port>`.
    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    /// The etcdctl endpoint of this node (same as the client URL).
    pub fn ep(&self) -> String {
        self.client_url()
    }

    /// `name=peer_url`, one element of `--initial-cluster`.
    pub fn cluster_entry(&self) -> String {
        format!("{}={}", self.name, self.peer_url())
    }

    /// OS pid of the running process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Spawn the process (no waiting for health).
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.name);
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open node log");
        let _ = writeln!(log, "\n===== harness: starting {} =====", self.name);
        let log_err = log.try_clone().expect("clone log handle");
        let mut cmd = server_command();
        cmd.args([
            "--name",
            &self.name,
            "--data-dir",
            &self.data_dir.display().to_string(),
            "--listen-client-urls",
            &self.client_url(),
            "--advertise-client-urls",
            &self.client_url(),
            "--listen-peer-urls",
            &self.peer_url(),
            "--initial-advertise-peer-urls",
            &self.peer_url(),
            "--initial-cluster",
            &self.initial_cluster,
            "--initial-cluster-state",
            &self.cluster_state,
            "--initial-cluster-token",
            &self.token,
            "--heartbeat-interval",
            &HEARTBEAT_MS.to_string(),
            "--election-timeout",
            &ELECTION_MS.to_string(),
        ])
        .args(&self.extra_args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err));
        if self.extra_args.iter().any(|a| a == "--log-level") {
            // The test checks the server's own log filter.
            cmd.env_remove("RUST_LOG");
        } else if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        let child = cmd.spawn().expect("spawn server process");
        self.child = Some(child);
    }

    /// Whether the process is still alive (reaps it if it exited).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            None => false,
            Some(c) => matches!(c.try_wait(), Ok(None)),
        }
    }

    /// Exit status if the process has exited (and reaps it).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGKILL the process and reap it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM the process and wait up to `timeout` for it to exit; SIGKILL after that.
    pub fn terminate(&mut self, timeout: Duration) {
        if let Some(mut c) = self.child.take() {
            signal(c.id(), "TERM");
            let exited = wait_until(timeout, || c.try_wait().ok().flatten());
            if exited.is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    /// Kill (if running) and start again with the same data dir and flags.
    pub fn restart(&mut self) {
        self.kill();
        self.start();
    }

    /// SIGSTOP the process.
    pub fn pause(&self) {
        if let Some(pid) = self.pid() {
            signal(pid, "STOP");
        }
    }

    /// SIGCONT the process.
    pub fn resume(&self) {
        if let Some(pid) = self.pid() {
            signal(pid, "CONT");
        }
    }

    /// The last `n` lines of this node's log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Healthy = etcdctl `endpoint health` against this node alone succeeds.
    pub fn is_healthy(&self) -> bool {
        etcdctl_t(&self.ep(), "2s", &["endpoint", "health"])
            .status
            .success()
    }

    /// Wait until this node is healthy; panics with its log on timeout or exit.
    pub fn wait_healthy(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.exited() {
                panic!(
                    "{} exited with {st} while waiting for health; log:\n{}",
                    self.name,
                    self.log_tail(60)
                );
            }
            if self.is_healthy() {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} not healthy after {timeout:?}; log:\n{}",
                    self.name,
                    self.log_tail(60)
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The server command: `crawler store`, or `$CRAWLER_TEST_SERVER` (an etcd binary) if set.
fn server_command() -> Command {
    match std::env::var("CRAWLER_TEST_SERVER") {
        Ok(bin) if !bin.is_empty() => Command::new(bin),
        _ => {
            let mut c = Command::new(env!("CARGO_BIN_EXE_crawler"));
            c.arg("store");
            c
        }
    }
}

/// Whether the tests run against a real etcd (`CRAWLER_TEST_SERVER` set).
pub fn against_real_etcd() -> bool {
    std::env::var("CRAWLER_TEST_SERVER").is_ok_and(|s| !s.is_empty())
}

fn log_says_addr_in_use(node: &Node) -> bool {
    let text = fs::read_to_string(&node.log_path)
        .unwrap_or_default()
        .to_lowercase();
    text.contains("address already in use") || text.contains("addrinuse")
}

// ---------------------------------------------------------------------------------------------
// Clusters

/// A set of server processes sharing one temp dir; all are killed on drop.
pub struct Cluster {
    /// The members, index 0.. (names n1, n2, ...).
    pub nodes: Vec<Node>,
    /// Temp dir holding data dirs and logs.
    pub dir: TempDir,
    _slot: SlotGuard,
}

impl Cluster {
    /// Start `n` members (`n1..nN`) as a new cluster and wait until each is healthy.
    /// Retries with fresh ports when a process fails with "address in use".
    pub fn start(n: usize) -> Cluster {
        Cluster::start_with(n, &[])
    }

    /// Like [`Cluster::start`], passing `extra_args` to every member.
    pub fn start_with(n: usize, extra_args: &[&str]) -> Cluster {
        let slot = SlotGuard::acquire();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let dir = tempfile::Builder::new()
                .prefix("crawler-test-")
                .tempdir()
                .expect("temp dir");
            let mut nodes: Vec<Node> = (1..=n)
                .map(|i| Node::new(dir.path(), &format!("n{i}")))
                .collect();
            let initial: Vec<String> = nodes.iter().map(|x| x.cluster_entry()).collect();
            let initial = initial.join(",");
            for node in nodes.iter_mut() {
                node.initial_cluster = initial.clone();
                node.extra_args = extra_args.iter().map(|a| a.to_string()).collect();
                node.start();
            }
            match wait_all_healthy(&mut nodes, START_DEADLINE) {
                Ok(()) => {
                    return Cluster {
                        nodes,
                        dir,
                        _slot: slot,
                    }
                }
                Err(msg) => {
                    let in_use = nodes.iter().any(log_says_addr_in_use);
                    for node in nodes.iter_mut() {
                        node.kill();
                    }
                    if in_use && attempt < 4 {
                        continue;
                    }
                    // Keep the logs visible: the temp dir is deleted when `dir` drops.
                    panic!("cluster of {n} did not start: {msg}");
                }
            }
        }
    }

    /// Start `nodes` (already described, their data dirs in `dir` possibly prepared, e.g. by a
    /// restore) as one cluster, waiting for the slot and then until each is healthy.
    pub fn start_prepared(dir: TempDir, mut nodes: Vec<Node>) -> Cluster {
        let slot = SlotGuard::acquire();
        for node in nodes.iter_mut() {
            node.start();
        }
        if let Err(msg) = wait_all_healthy(&mut nodes, START_DEADLINE) {
            let logs: Vec<String> = nodes.iter().map(|n| n.log_tail(40)).collect();
            panic!("prepared cluster did not start: {msg}\n{}", logs.join("\n"));
        }
        Cluster {
            nodes,
            dir,
            _slot: slot,
        }
    }

    /// Member `i` (0-based).
    pub fn node(&mut self, i: usize) -> &mut Node {
        &mut self.nodes[i]
    }

    /// Endpoint of member `i`.
    pub fn ep(&self, i: usize) -> String {
        self.nodes[i].ep()
    }

    /// Comma-separated endpoints of all running members.
    pub fn endpoints(&mut self) -> String {
        let mut eps = Vec::new();
        for n in self.nodes.iter_mut() {
            if n.is_running() {
                eps.push(n.ep());
            }
        }
        eps.join(",")
    }

    /// `--initial-cluster` of the original members.
    pub fn initial_cluster(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.cluster_entry())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Wait until every running member answers `endpoint health`.
    pub fn wait_healthy(&mut self, timeout: Duration) {
        if let Err(msg) = wait_all_healthy(&mut self.nodes, timeout) {
            panic!("{msg}");
        }
    }

    /// Index of the member that currently claims leadership (per `endpoint status`), if any
    /// running member reports one whose id matches a running member.
    pub fn leader(&mut self) -> Option<usize> {
        let mut ids = Vec::new();
        let mut leader = None;
        for (i, n) in self.nodes.iter_mut().enumerate() {
            if !n.is_running() {
                continue;
            }
            // Schemeless endpoint: etcdctl 3.4 sends `:authority` = the endpoint verbatim for
            // Status, and `http://...` is not a valid authority (strict HTTP/2 servers reject
            // it). The etcdctl tests check the `http://` form; leader detection must not
            // depend on it.
            let ep = format!("127.0.0.1:{}", n.client_port);
            let out = etcdctl_t(&ep, "2s", &["endpoint", "status", "-w", "json"]);
            if !out.status.success() {
                continue;
            }
            let Ok(v) = serde_json::from_slice::<Value>(&out.stdout) else {
                continue;
            };
            let st = &v[0]["Status"];
            ids.push((i, st["header"]["member_id"].as_u64()));
            if let Some(l) = st["leader"].as_u64() {
                if l != 0 {
                    leader = Some(l);
                }
            }
        }
        let l = leader?;
        ids.into_iter()
            .find(|(_, id)| *id == Some(l))
            .map(|(i, _)| i)
    }

    /// Wait until some running member is leader and return its index.
    pub fn wait_leader(&mut self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.leader() {
                return i;
            }
            assert!(Instant::now() < deadline, "no leader after {timeout:?}");
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// A new, not yet started node with fresh ports in this cluster's temp dir.
    pub fn new_node(&self, name: &str) -> Node {
        Node::new(self.dir.path(), name)
    }

    /// All logs, last `n` lines each.
    pub fn logs(&self, n: usize) -> String {
        let mut s = String::new();
        for node in &self.nodes {
            s.push_str(&format!(
                "----- log of {} ({}) -----\n{}\n",
                node.name,
                node.log_path.display(),
                node.log_tail(n)
            ));
        }
        s
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in self.nodes.iter_mut() {
            n.resume();
            n.kill();
        }
        if thread::panicking() {
            eprintln!("{}", self.logs(80));
            // Keep data dirs and full logs of a failed test for inspection.
            self.dir.disable_cleanup(true);
            eprintln!("kept test dir {}", self.dir.path().display());
        }
    }
}

fn wait_all_healthy(nodes: &mut [Node], timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut healthy = vec![false; nodes.len()];
    loop {
        for (i, n) in nodes.iter_mut().enumerate() {
            if healthy[i] || n.child.is_none() {
                healthy[i] = true;
                continue;
            }
            if let Some(st) = n.exited() {
                return Err(format!(
                    "{} exited with {st}; log:\n{}",
                    n.name,
                    n.log_tail(60)
                ));
            }
            healthy[i] = n.is_healthy();
        }
        if healthy.iter().all(|h| *h) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let mut msg = format!("not all healthy after {timeout:?}: {healthy:?}\n");
            for n in nodes.iter() {
                msg.push_str(&format!("--- {} ---\n{}\n", n.name, n.log_tail(40)));
            }
            return Err(msg);
        }
        thread::sleep(Duration::from_millis(150));
    }
}
