//! Client side of the peer network: cached tonic channels per peer URL, and openraft's
//! `RaftNetworkFactory` / `RaftNetwork` on top of them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crawler_proto::raftpb::raft_peer_client::RaftPeerClient;
use crawler_proto::raftpb::RaftPayload;
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError as OrRaftError,
    RemoteError, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

use crate::wire::{decode, encode, Addressed};
use crate::{NodeId, PeerNode, TypeConfig};

/// An AppendEntries batch above this size is split (unless it is a single entry).
const MAX_APPEND_BYTES: usize = 2 * 1024 * 1024;

/// Largest peer message accepted or sent (log batches and snapshot chunks).
pub(crate) const MAX_PEER_MESSAGE: usize = 256 * 1024 * 1024;

/// Peer RPCs.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Rpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
    ForwardWrite,
    ReadIndex,
    Admin,
    Members,
}

/// Why a peer call failed, as far as retry safety is concerned.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum CallError {
    /// The request never reached the peer (bad URL, connection refused): safe to retry.
    #[error("peer unreachable: {0}")]
    NotDelivered(String),
    /// The deadline passed; the peer may or may not have acted on the request.
    #[error("peer request timed out")]
    Timeout,
    /// Any other failure once the request may have been sent.
    #[error("peer request failed: {0}")]
    Failed(String),
}

/// Shared cache of lazily connected channels, keyed by peer URL.
#[derive(Clone)]
pub(crate) struct PeerClients {
    channels: Arc<parking_lot::Mutex<HashMap<String, Channel>>>,
    connect_timeout: Duration,
    /// Normalized advertised URL -> URL to dial instead (`NodeConfig::peer_dial_overrides`).
    dial_overrides: Arc<HashMap<String, String>>,
    /// Peers found unreachable: since when, and when that was last reported.
    down: Arc<parking_lot::Mutex<HashMap<String, (Instant, Instant)>>>,
}

/// How often a peer that stays unreachable is reported again.
const STILL_DOWN_EVERY: Duration = Duration::from_secs(30);

impl PeerClients {
    /// A cache whose channels give up connecting after `connect_timeout`.
    #[cfg(test)]
    pub(crate) fn new(connect_timeout: Duration) -> Self {
        Self::with_overrides(connect_timeout, &HashMap::new())
    }

    /// Like `new`, but dials `overrides[url]` instead of an advertised `url` listed there.
    pub(crate) fn with_overrides(
        connect_timeout: Duration,
        overrides: &HashMap<String, String>,
    ) -> Self {
        let dial_overrides = overrides
            .iter()
            .map(|(from, to)| (normalize(from), normalize(to)))
            .collect();
        Self {
            channels: Default::default(),
            connect_timeout,
            dial_overrides: Arc::new(dial_overrides),
            down: Default::default(),
        }
    }

    /// One line when `url` becomes unreachable, then one every [`STILL_DOWN_EVERY`] while it
    /// stays so (openraft itself logs each failed retry).
    fn mark_down(&self, url: &str, error: &str) {
        let now = Instant::now();
        let mut down = self.down.lock();
        match down.get_mut(url) {
            None => {
                tracing::warn!(peer = url, error, "peer unreachable");
                down.insert(url.to_string(), (now, now));
            }
            Some((since, reported)) if now.duration_since(*reported) >= STILL_DOWN_EVERY => {
                tracing::warn!(peer = url, for_ = ?now.duration_since(*since), error, "peer still unreachable");
                *reported = now;
            }
            Some(_) => {}
        }
    }

    /// Whether `url` is marked unreachable (its last call could not be delivered).
    pub(crate) fn is_down(&self, url: &str) -> bool {
        self.down.lock().contains_key(url)
    }

    /// One line when `url` answers again.
    fn mark_up(&self, url: &str) {
        if let Some((since, _)) = self.down.lock().remove(url) {
            tracing::info!(peer = url, after = ?since.elapsed(), "peer reachable again");
        }
    }

    fn channel(&self, url: &str) -> Result<Channel, CallError> {
        if let Some(ch) = self.channels.lock().get(url) {
            return Ok(ch.clone());
        }
        let dial = self
            .dial_overrides
            .get(&normalize(url))
            .map(String::as_str)
            .unwrap_or(url);
        let ep = Endpoint::from_shared(dial.to_string())
            .map_err(|e| CallError::NotDelivered(format!("bad peer url {dial:?}: {e}")))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        // connect_lazy: a peer that is down must not fail construction; calls fail instead.
        let ch = ep.connect_lazy();
        self.channels.lock().insert(url.to_string(), ch.clone());
        Ok(ch)
    }

    /// One unary call with a hard deadline.
    pub(crate) async fn call(
        &self,
        url: &str,
        rpc: Rpc,
        data: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, CallError> {
        let ch = self.channel(url)?;
        let mut client = RaftPeerClient::new(ch)
            .max_decoding_message_size(MAX_PEER_MESSAGE)
            .max_encoding_message_size(MAX_PEER_MESSAGE);
        let mut req = tonic::Request::new(RaftPayload { data });
        req.set_timeout(timeout);
        let fut = async move {
            match rpc {
                Rpc::AppendEntries => client.append_entries(req).await,
                Rpc::Vote => client.vote(req).await,
                Rpc::InstallSnapshot => client.install_snapshot(req).await,
                Rpc::ForwardWrite => client.forward_write(req).await,
                Rpc::ReadIndex => client.read_index(req).await,
                Rpc::Admin => client.admin(req).await,
                Rpc::Members => client.members(req).await,
            }
        };
        match tokio::time::timeout(timeout, fut).await {
            Err(_) => Err(CallError::Timeout),
            Ok(Ok(resp)) => Ok(resp.into_inner().data),
            Ok(Err(status)) => Err(classify(&status)),
        }
    }
}

/// Peer URLs compare without surrounding blanks and trailing slashes.
fn normalize(url: &str) -> String {
    url.trim().trim_end_matches('/').to_string()
}

/// Sort a gRPC failure into "never delivered" (connect errors) and the rest.
fn classify(status: &tonic::Status) -> CallError {
    use std::error::Error as _;
    let mut text = status.message().to_string();
    let mut refused = false;
    let mut src: Option<&(dyn std::error::Error + 'static)> = status.source();
    while let Some(e) = src {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::AddrNotAvailable
                    | std::io::ErrorKind::NotFound
            ) {
                refused = true;
            }
        }
        text.push_str(": ");
        text.push_str(&e.to_string());
        src = e.source();
    }
    let lower = text.to_ascii_lowercase();
    // tonic reports a failed connect (refused, connect timeout, dns) as Unavailable with a
    // connect error in its chain; such a request was never sent.
    let connect_failure = lower.contains("tcp connect error")
        || lower.contains("error trying to connect")
        || lower.contains("dns error")
        || lower.contains("connection refused");
    match status.code() {
        tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => CallError::Timeout,
        tonic::Code::Unavailable if refused || connect_failure => CallError::NotDelivered(text),
        _ => CallError::Failed(format!("{:?}: {text}", status.code())),
    }
}

/// openraft's network factory: one `PeerConn` per target, sharing the channel cache.
#[derive(Clone)]
pub(crate) struct PeerNetwork {
    pub(crate) clients: PeerClients,
    /// First pause after a peer was found unreachable...
    pub(crate) backoff: Duration,
    /// ...doubling up to this while it stays so (each retry is an error line of openraft's).
    pub(crate) max_backoff: Duration,
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerConn;

    async fn new_client(&mut self, target: NodeId, node: &PeerNode) -> PeerConn {
        PeerConn {
            target,
            node: node.clone(),
            clients: self.clients.clone(),
            backoff: self.backoff,
            max_backoff: self.max_backoff,
        }
    }
}

/// A client for one target member.
pub(crate) struct PeerConn {
    target: NodeId,
    node: PeerNode,
    clients: PeerClients,
    backoff: Duration,
    max_backoff: Duration,
}

/// Error type carried inside openraft's `NetworkError` / `Unreachable`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct PeerNetError(String);

impl PeerConn {
    async fn send<Req, Resp, E>(
        &self,
        rpc: Rpc,
        body: Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, PeerNode, OrRaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let Some(url) = self.node.peer_urls.first() else {
            return Err(RPCError::Unreachable(Unreachable::new(&PeerNetError(
                format!("member {:x} has no peer url", self.target),
            ))));
        };
        let payload = encode(&Addressed {
            target: self.target,
            body,
        })
        .map_err(|e| RPCError::Network(NetworkError::new(&PeerNetError(e))))?;
        self.send_encoded(url, rpc, payload, option).await
    }

    async fn send_encoded<Resp, E>(
        &self,
        url: &str,
        rpc: Rpc,
        payload: Vec<u8>,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, PeerNode, OrRaftError<NodeId, E>>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let bytes = self
            .clients
            .call(url, rpc, payload, option.hard_ttl())
            .await
            .map_err(|e| match e {
                CallError::NotDelivered(s) => {
                    self.clients.mark_down(url, &s);
                    RPCError::Unreachable(Unreachable::new(&PeerNetError(s)))
                }
                other => RPCError::Network(NetworkError::new(&PeerNetError(other.to_string()))),
            })?;
        self.clients.mark_up(url);
        let res: Result<Resp, OrRaftError<NodeId, E>> = decode(&bytes).map_err(|e| {
            RPCError::Network(NetworkError::new(&PeerNetError(format!(
                "bad reply from {url}: {e}"
            ))))
        })?;
        res.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                e,
            ))
        })
    }
}

impl RaftNetwork<TypeConfig> for PeerConn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, PeerNode, OrRaftError<NodeId>>>
    {
        let n = rpc.entries.len();
        let Some(url) = self.node.peer_urls.first().cloned() else {
            return self.send(Rpc::AppendEntries, rpc, &option).await;
        };
        let payload = encode(&Addressed {
            target: self.target,
            body: rpc,
        })
        .map_err(|e| RPCError::Network(NetworkError::new(&PeerNetError(e))))?;
        if n > 1 && payload.len() > MAX_APPEND_BYTES {
            // openraft times an AppendEntries out after one heartbeat interval; ask it for
            // smaller batches rather than sending one that can never make it in time.
            let hint = ((n as u64) * (MAX_APPEND_BYTES as u64) / (payload.len() as u64)).max(1);
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(hint),
            ));
        }
        self.send_encoded(&url, Rpc::AppendEntries, payload, &option)
            .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, PeerNode, OrRaftError<NodeId, InstallSnapshotError>>,
    > {
        self.send(Rpc::InstallSnapshot, rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, PeerNode, OrRaftError<NodeId>>> {
        self.send(Rpc::Vote, rpc, &option).await
    }

    fn backoff(&self) -> Backoff {
        let max = self.max_backoff.max(self.backoff);
        Backoff::new(std::iter::successors(Some(self.backoff), move |d| {
            Some((*d * 2).min(max))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refused_connection_is_not_delivered() {
        // Bind and drop to get a port nobody listens on.
        let port = match std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
            Ok(a) => a.port(),
            Err(e) => panic!("bind: {e}"),
        };
        let clients = PeerClients::new(Duration::from_millis(500));
        let url = format!("http://127.0.0.1:{port}");
        let res = clients
            .call(&url, Rpc::Members, Vec::new(), Duration::from_secs(2))
            .await;
        assert!(matches!(res, Err(CallError::NotDelivered(_))), "{res:?}");
        let res = clients
            .call(
                "not a url",
                Rpc::Members,
                Vec::new(),
                Duration::from_secs(2),
            )
            .await;
        assert!(matches!(res, Err(CallError::NotDelivered(_))), "{res:?}");
    }

    /// A listener that accepts connections but never speaks HTTP/2; abort the task to close it.
    async fn silent_listener() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
            Ok(l) => l,
            Err(e) => panic!("bind: {e}"),
        };
        let addr = match listener.local_addr() {
            Ok(a) => a,
            Err(e) => panic!("addr: {e}"),
        };
        let hold = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                conns.push(s);
            }
        });
        (addr, hold)
    }

    #[tokio::test]
    async fn silent_peer_times_out() {
        let (addr, hold) = silent_listener().await;
        let clients = PeerClients::new(Duration::from_millis(500));
        let res = clients
            .call(
                &format!("http://{addr}"),
                Rpc::Members,
                Vec::new(),
                Duration::from_millis(300),
            )
            .await;
        assert!(matches!(res, Err(CallError::Timeout)), "{res:?}");
        hold.abort();
    }

    #[tokio::test]
    async fn dial_override_redirects_connections() {
        // The advertised URL refuses connections; the override points at a silent listener,
        // so a call that times out (instead of being refused) went through the override.
        let refused = match std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr())
        {
            Ok(a) => a.port(),
            Err(e) => panic!("bind: {e}"),
        };
        let (addr, hold) = silent_listener().await;
        let advertised = format!("http://127.0.0.1:{refused}");
        let overrides = HashMap::from([(format!("{advertised}/"), format!("http://{addr}"))]);
        let clients = PeerClients::with_overrides(Duration::from_millis(500), &overrides);
        let res = clients
            .call(
                &advertised,
                Rpc::Members,
                Vec::new(),
                Duration::from_millis(300),
            )
            .await;
        assert!(matches!(res, Err(CallError::Timeout)), "{res:?}");
        hold.abort();
    }
}
