//! A real etcd process on free ports (for client tests against etcd itself), and a killable TCP
//! proxy.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crawler::client::{KvClientExt, RemoteConfig, RemoteKvClient};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::ports::free_port;

/// The etcd binary: `$CRAWLER_TEST_ETCD`, else `/usr/bin/etcd`, if it exists.
pub fn etcd_binary() -> Option<PathBuf> {
    let p = std::env::var_os("CRAWLER_TEST_ETCD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"));
    p.exists().then_some(p)
}

/// A single-member etcd in a temp dir, killed on drop.
pub struct EtcdServer {
    child: Child,
    dir: tempfile::TempDir,
    /// `http://127.0.0.1:<client port>`.
    pub endpoint: String,
    /// Client address.
    pub client_addr: SocketAddr,
}

impl EtcdServer {
    /// Start etcd, or print why not and return `None` when the binary is missing.
    pub async fn start_or_skip(test: &str) -> Option<Self> {
        let Some(bin) = etcd_binary() else {
            eprintln!("SKIPPED {test}: no etcd binary (/usr/bin/etcd or $CRAWLER_TEST_ETCD)");
            return None;
        };
        Some(Self::start(bin).await)
    }

    /// Start etcd and wait (20 s deadline) until it serves reads.
    pub async fn start(bin: PathBuf) -> Self {
        // A port may be taken between our probe and etcd's bind: retry a few times.
        let mut last_log = String::new();
        for _ in 0..3 {
            let dir = tempfile::tempdir().expect("tempdir");
            let cport = free_port();
            let pport = free_port();
            let curl = format!("http://127.0.0.1:{cport}");
            let purl = format!("http://127.0.0.1:{pport}");
            let log_path = dir.path().join("etcd.log");
            let log = std::fs::File::create(&log_path).expect("log file");
            let log2 = log.try_clone().expect("log file");
            let child = Command::new(&bin)
                .arg("--name")
                .arg("t")
                .arg("--data-dir")
                .arg(dir.path().join("data"))
                .arg("--listen-client-urls")
                .arg(&curl)
                .arg("--advertise-client-urls")
                .arg(&curl)
                .arg("--listen-peer-urls")
                .arg(&purl)
                .arg("--initial-advertise-peer-urls")
                .arg(&purl)
                .arg("--initial-cluster")
                .arg(format!("t={purl}"))
                .stdin(Stdio::null())
                .stdout(Stdio::from(log))
                .stderr(Stdio::from(log2))
                .spawn()
                .expect("spawn etcd");
            let mut server = EtcdServer {
                child,
                dir,
                endpoint: curl,
                client_addr: SocketAddr::from(([127, 0, 0, 1], cport)),
            };
            if server.wait_healthy(Duration::from_secs(20)).await {
                return server;
            }
            last_log = std::fs::read_to_string(&log_path).unwrap_or_default();
            // Drop kills it; try again on other ports.
        }
        let tail: String = last_log
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        panic!("etcd did not become healthy; last log lines:\n{tail}");
    }

    async fn wait_healthy(&mut self, within: Duration) -> bool {
        let mut cfg = RemoteConfig::new([self.endpoint.clone()]);
        cfg.connect_timeout = Duration::from_millis(500);
        cfg.request_timeout = Duration::from_secs(1);
        let Ok(client) = RemoteKvClient::new(cfg) else {
            return false;
        };
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            if let Ok(Some(_status)) = self.child.try_wait() {
                return false;
            }
            if client.get("health").await.is_ok() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// The client endpoints, as the scenarios take them.
    pub fn endpoints(&self) -> Vec<String> {
        vec![self.endpoint.clone()]
    }

    /// Data and log directory.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP proxy to one address whose listener and connections can be cut at once.
pub struct TcpProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    accept: JoinHandle<()>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl TcpProxy {
    /// Listen on a free local port and forward every connection to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let conns2 = conns.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let h = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                conns2.lock().expect("proxy lock").push(h);
            }
        });
        Self {
            addr,
            accept,
            conns,
        }
    }

    /// `http://` URL of the proxy.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Close the listener and every proxied connection.
    pub fn kill(&self) {
        self.accept.abort();
        for h in self.conns.lock().expect("proxy lock").drain(..) {
            h.abort();
        }
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.kill();
    }
}
