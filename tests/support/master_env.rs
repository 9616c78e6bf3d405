//! Fixtures for master tests: a store backend (our in-process member, or a real etcd process),
//! masters and lightweight workers on it, a minimal HTTP client, and captured logs.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crawler::client::local::LocalClient;
use crawler::client::{KvClient, KvClientExt, RemoteConfig, RemoteKvClient};
use crawler::coord::registry::{Node, RegisterOptions, Registration, Registry, Service};
use crawler::master::{Master, MasterConfig};
use crawler::model::resource::{Resource, RESOURCE_PREFIX, WORKER_SERVICE};
use crawler::server::member::{Limits, Member, MemberConfig};
use crawler_proto::crawler::crawler_master_client::CrawlerMasterClient;
use crawler_raft::{ClusterState, NodeConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

use super::etcd::EtcdServer;
use super::ports::free_port;
use super::wait::eventually_some;

/// Deadline for anything a test waits for.
pub const WAIT: Duration = Duration::from_secs(20);
/// Session TTL of test masters (short, so crash failover is quick).
pub const SESSION_TTL: Duration = Duration::from_secs(2);
/// Registration TTL of test workers.
pub const WORKER_TTL: Duration = Duration::from_secs(2);
/// Upper bound for one test.
pub const TEST_DEADLINE: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------------
// Logs

#[derive(Clone)]
struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if echo_logs() {
            let _ = std::io::stderr().write_all(buf);
        }
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `MASTER_TEST_LOG=1` also prints the captured logs to stderr (run with `--nocapture`).
fn echo_logs() -> bool {
    static ECHO: OnceLock<bool> = OnceLock::new();
    *ECHO.get_or_init(|| std::env::var_os("MASTER_TEST_LOG").is_some())
}

fn log_buf() -> &'static Arc<Mutex<Vec<u8>>> {
    static BUF: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    BUF.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let w = LogBuf(buf.clone());
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info,crawler=info"))
            .with_ansi(false)
            .with_writer(move || w.clone())
            .try_init();
        buf
    })
}

/// Start capturing logs of this test binary (idempotent).
pub fn capture_logs() {
    log_buf();
}

/// Every log line captured so far that contains `needle`.
pub fn log_lines(needle: &str) -> Vec<String> {
    let buf = log_buf().lock().unwrap_or_else(|e| e.into_inner());
    String::from_utf8_lossy(&buf)
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Backends

/// Which store the scenario runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Our store, an in-process member; masters use the in-process client, workers and the test
    /// itself the remote gRPC client.
    Store,
    /// A real etcd process; everything uses the remote client.
    Etcd,
}

/// A running store.
pub enum Backend {
    /// In-process member.
    Store {
        member: Option<Member>,
        _dir: tempfile::TempDir,
    },
    /// etcd process.
    Etcd(EtcdServer),
}

impl Backend {
    /// Start a backend; `None` (skip) when etcd is asked for and not installed.
    pub async fn start(kind: Kind, test: &str) -> Option<Backend> {
        match kind {
            Kind::Etcd => EtcdServer::start_or_skip(test).await.map(Backend::Etcd),
            Kind::Store => {
                let dir = tempfile::tempdir().expect("temp dir");
                let peer = free_port();
                let client = free_port();
                let cluster = vec![("m".to_string(), format!("http://127.0.0.1:{peer}"))];
                let cfg = MemberConfig {
                    node: NodeConfig {
                        name: "m".into(),
                        data_dir: dir.path().join("m"),
                        listen_peer: SocketAddr::from(([127, 0, 0, 1], peer)),
                        advertise_peer_urls: vec![format!("http://127.0.0.1:{peer}")],
                        advertise_client_urls: vec![format!("http://127.0.0.1:{client}")],
                        initial_cluster: cluster,
                        initial_cluster_state: ClusterState::New,
                        cluster_token: "master-test".into(),
                        heartbeat_interval_ms: 50,
                        election_timeout_ms: 500,
                        snapshot_count: 10_000,
                        peer_dial_overrides: Default::default(),
                    },
                    listen_client: SocketAddr::from(([127, 0, 0, 1], client)),
                    limits: Limits::default(),
                    auto_compaction: crawler::server::compactor::AutoCompaction::Off,
                };
                let member = crawler::services::start_member(cfg)
                    .await
                    .expect("member starts");
                let b = Backend::Store {
                    member: Some(member),
                    _dir: dir,
                };
                // Wait until the single member leads and serves writes.
                let c = b.remote();
                eventually_some("the store serves writes", WAIT, || {
                    let c = c.clone();
                    async move { c.put_kv("/probe", "1", 0).await.ok() }
                })
                .await;
                let _ = c.delete_key("/probe").await;
                Some(b)
            }
        }
    }

    /// Client endpoints.
    pub fn endpoints(&self) -> Vec<String> {
        match self {
            Backend::Store { member, .. } => member
                .iter()
                .map(|m| format!("http://{}", m.client_addr()))
                .collect(),
            Backend::Etcd(e) => e.endpoints(),
        }
    }

    /// A new remote gRPC client with short timeouts.
    pub fn remote(&self) -> Arc<dyn KvClient> {
        remote_client(self.endpoints())
    }

    /// The client a master uses: in-process on our store (as `crawler master` embeds it), remote
    /// on etcd.
    pub fn master_client(&self) -> Arc<dyn KvClient> {
        match self {
            Backend::Store {
                member: Some(m), ..
            } => Arc::new(LocalClient::from_member(m)),
            _ => self.remote(),
        }
    }

    /// Stop the backend.
    pub async fn stop(self) {
        if let Backend::Store {
            member: Some(m), ..
        } = self
        {
            let _ = m.shutdown().await;
        }
    }
}

/// Run `scenario` on a fresh backend of `kind` under the test deadline.
pub async fn run<F, Fut>(kind: Kind, test: &str, scenario: F)
where
    F: FnOnce(Arc<Env>) -> Fut,
    Fut: Future<Output = ()>,
{
    capture_logs();
    let Some(backend) = Backend::start(kind, test).await else {
        return;
    };
    let env = Arc::new(Env {
        kind,
        backend,
        test: test.to_string(),
    });
    tokio::time::timeout(TEST_DEADLINE, scenario(env.clone()))
        .await
        .expect("test exceeded its deadline");
    if let Ok(env) = Arc::try_unwrap(env) {
        env.backend.stop().await;
    }
}

/// What a scenario gets.
pub struct Env {
    /// Backend kind.
    pub kind: Kind,
    /// The store.
    pub backend: Backend,
    /// Test name.
    pub test: String,
}

/// A unique number for worker ids across the whole test binary.
pub fn unique() -> u64 {
    static N: AtomicU64 = AtomicU64::new(100);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A test worker: a registry registration like `crawler worker`'s.
pub struct TestWorker {
    /// `go.micro.server.worker-<n>`.
    pub id: String,
    /// Its (fake) address.
    pub address: String,
    /// The live registration (None once deregistered or killed).
    pub reg: Option<Registration>,
}

impl TestWorker {
    /// `AssignedNode` value of this worker.
    pub fn assigned(&self) -> String {
        format!("{}|{}", self.id, self.address)
    }
}

impl Env {
    /// A test-side remote client.
    pub fn client(&self) -> Arc<dyn KvClient> {
        self.backend.remote()
    }

    /// A master config on free local ports with test timings.
    pub fn master_config(&self, id: u64, seeds: &[&str]) -> MasterConfig {
        let mut cfg = MasterConfig::new(id, SocketAddr::from(([127, 0, 0, 1], 0)));
        cfg.http_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        cfg.seeds = seeds.iter().map(|s| s.to_string()).collect();
        cfg.session_ttl = SESSION_TTL;
        cfg
    }

    /// Start a master.
    pub async fn start_master(&self, cfg: MasterConfig) -> Master {
        Master::start(cfg, self.backend.master_client())
            .await
            .expect("master starts")
    }

    /// Start a master and wait until it is the ready leader.
    pub async fn start_leader(&self, id: u64, seeds: &[&str]) -> Master {
        let m = self.start_master(self.master_config(id, seeds)).await;
        assert!(m.wait_ready(WAIT).await, "master {id} did not become ready");
        m
    }

    /// Register a worker with a unique id.
    pub async fn register_worker(&self) -> TestWorker {
        register_worker_on(self.client()).await
    }

    /// Every resource in the store, by name.
    pub async fn resources(&self) -> BTreeMap<String, Resource> {
        resources_of(&self.client()).await
    }

    /// Raw stored values under `/resources/`, by key.
    pub async fn raw_resources(&self) -> BTreeMap<String, String> {
        self.client()
            .get_prefix(RESOURCE_PREFIX)
            .await
            .expect("read resources")
            .body
            .into_iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(&kv.key).into_owned(),
                    String::from_utf8_lossy(&kv.value).into_owned(),
                )
            })
            .collect()
    }

    /// Wait until every stored resource satisfies `pred` and return them.
    pub async fn wait_resources<P>(&self, what: &str, pred: P) -> BTreeMap<String, Resource>
    where
        P: Fn(&BTreeMap<String, Resource>) -> bool,
    {
        eventually_some(what, WAIT, || async {
            let rs = self.resources().await;
            pred(&rs).then_some(rs)
        })
        .await
    }
}

/// Register a worker with a unique id through `client`.
pub async fn register_worker_on(client: Arc<dyn KvClient>) -> TestWorker {
    let n = unique();
    let id = format!("{WORKER_SERVICE}-{n}");
    let address = format!("127.0.0.1:{}", 20000 + n);
    register_node_on(client, id, address).await
}

/// Register worker node `id` at `address` through `client`.
pub async fn register_node_on(
    client: Arc<dyn KvClient>,
    id: String,
    address: String,
) -> TestWorker {
    register_node_with(client, id, address, BTreeMap::new()).await
}

/// Register worker node `id` at `address` with node `metadata` through `client`.
pub async fn register_node_with(
    client: Arc<dyn KvClient>,
    id: String,
    address: String,
    metadata: BTreeMap<String, String>,
) -> TestWorker {
    let reg = Registry::new(client)
        .register(
            &Service::with_node(
                WORKER_SERVICE,
                Node {
                    id: id.clone(),
                    address: address.clone(),
                    metadata,
                },
            ),
            RegisterOptions::ttl(WORKER_TTL),
        )
        .await
        .expect("register worker");
    TestWorker {
        id,
        address,
        reg: Some(reg),
    }
}

/// Every resource in the store, by name.
pub async fn resources_of(client: &Arc<dyn KvClient>) -> BTreeMap<String, Resource> {
    let kvs = client
        .get_prefix(RESOURCE_PREFIX)
        .await
        .expect("read resources")
        .body;
    kvs.iter()
        .map(|kv| {
            let r = Resource::decode(&kv.value).expect("resource JSON");
            (r.name.clone(), r)
        })
        .collect()
}

/// A remote client on `endpoints` with short timeouts.
pub fn remote_client(endpoints: Vec<String>) -> Arc<dyn KvClient> {
    let mut cfg = RemoteConfig::new(endpoints);
    cfg.connect_timeout = Duration::from_secs(1);
    cfg.request_timeout = Duration::from_secs(3);
    Arc::new(RemoteKvClient::new(cfg).expect("client"))
}

/// Resources per `AssignedNode`.
pub fn per_node(rs: &BTreeMap<String, Resource>) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for r in rs.values() {
        *m.entry(r.assigned_node.clone()).or_insert(0) += 1;
    }
    m
}

// ---------------------------------------------------------------------------------------------
// API clients

/// A gRPC client of a master.
pub async fn grpc(m: &Master) -> CrawlerMasterClient<Channel> {
    let ch = Channel::from_shared(format!("http://{}", m.grpc_addr()))
        .expect("url")
        .connect()
        .await
        .expect("connect to master gRPC");
    CrawlerMasterClient::new(ch)
}

/// One HTTP/1.1 request; returns the status and the body parsed as JSON (Null when empty).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    let s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to master HTTP");
    request(s, addr, method, path, body, "application/json").await
}

/// [`http`] with another Content-Type.
pub async fn http_typed(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    content_type: &str,
) -> (u16, serde_json::Value) {
    let s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to master HTTP");
    request(s, addr, method, path, Some(body), content_type).await
}

/// [`http`], or `None` when the server cannot be reached (e.g. a killed process).
pub async fn try_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Option<(u16, serde_json::Value)> {
    let s = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    tokio::time::timeout(
        Duration::from_secs(10),
        request(s, addr, method, path, body, "application/json"),
    )
    .await
    .ok()
}

async fn request(
    mut s: tokio::net::TcpStream,
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    content_type: &str,
) -> (u16, serde_json::Value) {
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    // A server may answer (413) before reading a large body: a failed write is fine then.
    let _ = s.write_all(req.as_bytes()).await;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("read response");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, payload) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad HTTP response: {text:?}"));
    // The response is not chunked for these small JSON bodies (axum sets Content-Length).
    let json = if payload.trim().is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(payload).unwrap_or_else(|e| panic!("bad JSON {payload:?}: {e}"))
    };
    (status, json)
}

/// The HTTP address of a master.
pub fn http_addr(m: &Master) -> SocketAddr {
    m.http_addr().expect("master has an HTTP API")
}

/// Generate `<scenario>::store` and `<scenario>::etcd` tests.
#[allow(unused_macros)]
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn store() {
                super::master_env::run(
                    super::Kind::Store,
                    concat!(stringify!($name), "::store"),
                    super::$name,
                )
                .await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn etcd() {
                super::master_env::run(
                    super::Kind::Etcd,
                    concat!(stringify!($name), "::etcd"),
                    super::$name,
                )
                .await;
            }
        }
    )*};
}
#[allow(unused_imports)]
pub(crate) use on_both;
