//! Fault-injecting TCP proxy for one directed peer link (node i dials node j through it).
//!
//! Modes, switchable at any time:
//! - [`LinkMode::Pass`]: bytes flow both ways.
//! - [`LinkMode::Drop`]: a black hole. Connections are accepted and kept open, but everything
//!   read in either direction is discarded, so the dialer sees timeouts, not errors. A TCP
//!   stream cannot lose bytes in the middle, so connections that lost data are closed when the
//!   link heals (the real-world analogue: they time out and are re-dialed).
//! - [`LinkMode::Refuse`]: new connections are reset at once and existing ones are closed.
//! - [`LinkMode::Delay`]: every chunk is delivered the given time after it was read
//!   (latency, not a throughput cap: chunks are pipelined).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How long the proxy waits to connect to the real peer port.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Read buffer per direction.
const CHUNK: usize = 64 * 1024;
/// Chunks in flight per direction in delay mode before the reader waits.
const DELAY_QUEUE: usize = 1024;

/// What a link does with traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkMode {
    /// Forward everything.
    Pass,
    /// Accept but discard everything (keep sockets open).
    Drop,
    /// Reset new connections and close existing ones.
    Refuse,
    /// Forward each chunk after this delay.
    Delay(Duration),
}

impl std::fmt::Display for LinkMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkMode::Pass => f.write_str("pass"),
            LinkMode::Drop => f.write_str("drop"),
            LinkMode::Refuse => f.write_str("refuse"),
            LinkMode::Delay(d) => write!(f, "delay {}ms", d.as_millis()),
        }
    }
}

/// Bind a 127.0.0.1 port never handed out before in this process (retrying a few taken ones).
async fn bind_fresh_port() -> std::io::Result<TcpListener> {
    let mut last = None;
    for _ in 0..8 {
        let port = super::cluster::free_port().map_err(|e| std::io::Error::other(e.to_string()))?;
        match TcpListener::bind(("127.0.0.1", port)).await {
            Ok(l) => return Ok(l),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free port")))
}

/// A running proxy; stops (closing its listener and connections) when dropped.
pub struct Proxy {
    addr: SocketAddr,
    target: SocketAddr,
    mode: watch::Sender<LinkMode>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// Listen on a fresh 127.0.0.1 port and forward to `target` (which need not be up yet).
    ///
    /// The port comes from `free_port`, not from binding port 0: the kernel could hand a proxy a
    /// port that `free_port` already promised to a node that has not bound it yet.
    pub async fn start(target: SocketAddr) -> std::io::Result<Proxy> {
        let listener = bind_fresh_port().await?;
        let addr = listener.local_addr()?;
        let (mode, rx) = watch::channel(LinkMode::Pass);
        let task = tokio::spawn(accept_loop(listener, target, rx));
        Ok(Proxy {
            addr,
            target,
            mode,
            task,
        })
    }

    /// Address the proxy listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<listen address>`, the URL a node dials instead of the peer's.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The real peer address traffic goes to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Switch the link's behaviour (applies to existing connections too).
    pub fn set(&self, mode: LinkMode) {
        self.mode.send_replace(mode);
    }

    /// Current behaviour.
    pub fn mode(&self) -> LinkMode {
        *self.mode.borrow()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Connection tasks end when the mode channel closes (sender dropped).
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, rx: watch::Receiver<LinkMode>) {
    loop {
        let inbound = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::debug!(error = %e, "proxy accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if *rx.borrow() == LinkMode::Refuse {
            reset(inbound);
            continue;
        }
        tokio::spawn(connection(inbound, target, rx.clone()));
    }
}

/// Close with RST rather than FIN, as close to "connection refused" as an accepted socket gets.
fn reset(s: TcpStream) {
    // A zero linger never blocks on drop (the deprecation is about non-zero lingers).
    #[allow(deprecated)]
    let _ = s.set_linger(Some(Duration::ZERO));
    drop(s);
}

async fn connection(inbound: TcpStream, target: SocketAddr, rx: watch::Receiver<LinkMode>) {
    let outbound =
        match tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, TcpStream::connect(target)).await {
            Ok(Ok(s)) => s,
            // The peer is down: behave like it (the dialer sees the connection die).
            _ => {
                reset(inbound);
                return;
            }
        };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (ri, wi) = inbound.into_split();
    let (ro, wo) = outbound.into_split();
    // Set when this connection lost bytes in drop mode: it must not carry traffic again.
    let tainted = Arc::new(AtomicBool::new(false));
    // Either direction ending (EOF, error, refuse, heal after drop) ends the connection: the
    // other direction's future is dropped with its socket halves.
    tokio::select! {
        _ = direction(ri, wo, rx.clone(), tainted.clone()) => {}
        _ = direction(ro, wi, rx, tainted) => {}
    }
}

/// One direction: a reader that applies the link mode and a writer that delivers chunks at their
/// due time.
async fn direction(
    mut r: OwnedReadHalf,
    mut w: OwnedWriteHalf,
    mut rx: watch::Receiver<LinkMode>,
    tainted: Arc<AtomicBool>,
) {
    let (tx, mut queue) = mpsc::channel::<(Instant, Vec<u8>)>(DELAY_QUEUE);
    let writer = async move {
        while let Some((due, chunk)) = queue.recv().await {
            tokio::time::sleep_until(due).await;
            if w.write_all(&chunk).await.is_err() {
                return;
            }
        }
    };
    let reader = async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = tokio::select! {
                res = r.read(&mut buf) => match res {
                    Ok(0) | Err(_) => return true,
                    Ok(n) => n,
                },
                changed = rx.changed() => {
                    if changed.is_err() {
                        return false; // proxy dropped
                    }
                    let mode = *rx.borrow_and_update();
                    if mode == LinkMode::Refuse
                        || (mode != LinkMode::Drop && tainted.load(Ordering::SeqCst))
                    {
                        return false;
                    }
                    continue;
                }
            };
            let mode = *rx.borrow_and_update();
            let due = match mode {
                LinkMode::Refuse => return false,
                LinkMode::Drop => {
                    tainted.store(true, Ordering::SeqCst);
                    continue;
                }
                LinkMode::Pass | LinkMode::Delay(_) if tainted.load(Ordering::SeqCst) => {
                    return false
                }
                LinkMode::Pass => Instant::now(),
                LinkMode::Delay(d) => Instant::now() + d,
            };
            if tx.send((due, buf[..n].to_vec())).await.is_err() {
                return false;
            }
        }
    };
    // On EOF the writer drains what the reader queued; on refuse or heal-after-drop the
    // connection dies at once.
    let mut writer = std::pin::pin!(writer);
    let flush = tokio::select! {
        flush = reader => flush,
        _ = &mut writer => return,
    };
    if flush {
        writer.await;
    }
}
