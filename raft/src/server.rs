//! Server side of the peer network: the `raftpb.RaftPeer` gRPC service.

use std::sync::Arc;
use std::time::Duration;

use crawler_proto::raftpb::raft_peer_server::{RaftPeer, RaftPeerServer};
use crawler_proto::raftpb::RaftPayload;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

use crawler_storage::{ApplyResponse, Command};
use openraft::Raft;

use crate::network::MAX_PEER_MESSAGE;
use crate::wire::{
    decode, encode, Addressed, AdminOk, AdminOp, AdminRequest, ForwardWriteRequest, MembersReply,
    ReadIndexRequest, WireError,
};
use crate::{NodeId, TypeConfig};

/// What the peer service needs from the member it serves; declared here so the server does not
/// import the member that starts it.
#[tonic::async_trait]
pub(crate) trait PeerHandler: Send + Sync + 'static {
    /// This member's id.
    fn id(&self) -> NodeId;
    /// The raft instance that takes append-entries, votes and snapshots.
    fn raft(&self) -> &Raft<TypeConfig>;
    /// The cap on a forwarded request's time budget.
    fn request_timeout(&self) -> Duration;
    /// A write forwarded by a follower; this member must be the leader.
    async fn write_on_leader(
        &self,
        cmd: Command,
        timeout: Duration,
    ) -> Result<ApplyResponse, WireError>;
    /// A read index asked for by a follower.
    async fn read_index_on_leader(&self, timeout: Duration) -> Result<u64, WireError>;
    /// A membership change forwarded by a follower.
    async fn admin_on_leader(&self, op: AdminOp, timeout: Duration) -> Result<AdminOk, WireError>;
    /// This member's view of the cluster.
    fn members_reply(&self) -> MembersReply;
}

/// The peer service of one member.
struct PeerService<H> {
    node: Arc<H>,
}

fn bad_request(e: String) -> Status {
    Status::invalid_argument(format!("malformed peer payload: {e}"))
}

fn reply<T: Serialize>(v: &T) -> Result<Response<RaftPayload>, Status> {
    let data = encode(v).map_err(|e| Status::internal(format!("encode reply: {e}")))?;
    Ok(Response::new(RaftPayload { data }))
}

impl<H: PeerHandler> PeerService<H> {
    fn open<T: DeserializeOwned>(&self, req: Request<RaftPayload>) -> Result<T, Status> {
        let msg: Addressed<T> = decode(&req.into_inner().data).map_err(bad_request)?;
        if msg.target != self.node.id() {
            // Another member now answers at the address the sender has for `target`.
            return Err(Status::failed_precondition(format!(
                "this is member {:x}, not {:x}",
                self.node.id(),
                msg.target
            )));
        }
        Ok(msg.body)
    }

    /// Time budget of a forwarded request, capped by our own request timeout.
    fn budget(&self, timeout_ms: u64) -> Duration {
        Duration::from_millis(timeout_ms).min(self.node.request_timeout())
    }
}

#[tonic::async_trait]
impl<H: PeerHandler> RaftPeer for PeerService<H> {
    async fn append_entries(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let req: AppendEntriesRequest<TypeConfig> = self.open(request)?;
        let res = self.node.raft().append_entries(req).await;
        reply(&res)
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let req: VoteRequest<NodeId> = self.open(request)?;
        let res = self.node.raft().vote(req).await;
        reply(&res)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let req: InstallSnapshotRequest<TypeConfig> = self.open(request)?;
        let res = self.node.raft().install_snapshot(req).await;
        reply(&res)
    }

    async fn forward_write(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let req: ForwardWriteRequest = decode(&request.into_inner().data).map_err(bad_request)?;
        let budget = self.budget(req.timeout_ms);
        let res = self.node.write_on_leader(req.cmd, budget).await;
        reply(&res)
    }

    async fn read_index(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let req: ReadIndexRequest = decode(&request.into_inner().data).map_err(bad_request)?;
        let budget = self.budget(req.timeout_ms);
        let res: Result<u64, WireError> = self.node.read_index_on_leader(budget).await;
        reply(&res)
    }

    async fn admin(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let req: AdminRequest = decode(&request.into_inner().data).map_err(bad_request)?;
        let budget = self.budget(req.timeout_ms);
        let res = self.node.admin_on_leader(req.op, budget).await;
        reply(&res)
    }

    async fn members(
        &self,
        _request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        reply(&self.node.members_reply())
    }
}

/// Serve the peer service on `listener` until `shutdown` turns true.
pub(crate) fn spawn<H: PeerHandler>(
    node: Arc<H>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let svc = RaftPeerServer::new(PeerService { node })
        .max_decoding_message_size(MAX_PEER_MESSAGE)
        .max_encoding_message_size(MAX_PEER_MESSAGE);
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|conn| {
        conn.inspect(|s| {
            // Heartbeats are tiny; Nagle would delay them.
            let _ = s.set_nodelay(true);
        })
    });
    tokio::spawn(async move {
        let res = tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = shutdown.wait_for(|stop| *stop).await;
            })
            .await;
        if let Err(e) = res {
            tracing::error!(error = %e, "peer server failed");
        }
    })
}
