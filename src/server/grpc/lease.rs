//! etcd's Lease service: Grant, Revoke, KeepAlive (bidirectional stream), TimeToLive, Leases.
//!
//! Clocks and forwarding to the leader live in the lessor; this file only translates.

use std::pin::Pin;

use crawler_proto::etcdserverpb as pb;
use crawler_proto::etcdserverpb::lease_server::Lease;
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::context::ApiContext;
use super::error;
use crate::server::lessor::LeaseError;

/// Keep-alive replies buffered per stream before the stream's task waits for the client.
const KEEPALIVE_BUFFER: usize = 16;

type KeepAliveStream =
    Pin<Box<dyn Stream<Item = Result<pb::LeaseKeepAliveResponse, Status>> + Send + 'static>>;

/// The Lease service of one member.
#[derive(Clone)]
pub(crate) struct LeaseService {
    ctx: ApiContext,
}

impl LeaseService {
    /// A Lease service over `ctx`.
    pub fn new(ctx: ApiContext) -> Self {
        Self { ctx }
    }
}

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        let r = request.into_inner();
        self.ctx
            .check_quota(&crawler_storage::Command::LeaseGrant {
                id: r.id,
                ttl: r.ttl,
            })?;
        let (id, ttl) = self
            .ctx
            .lessor
            .grant(r.id, r.ttl)
            .await
            .map_err(|e| error::status_from_lease(&e))?;
        Ok(Response::new(pb::LeaseGrantResponse {
            header: Some(self.ctx.header()),
            id,
            ttl,
            error: String::new(),
        }))
    }

    async fn lease_revoke(
        &self,
        request: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        let r = request.into_inner();
        self.ctx
            .lessor
            .revoke(r.id)
            .await
            .map_err(|e| error::status_from_lease(&e))?;
        Ok(Response::new(pb::LeaseRevokeResponse {
            header: Some(self.ctx.header()),
        }))
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let mut incoming = request.into_inner();
        let (tx, rx) = mpsc::channel(KEEPALIVE_BUFFER);
        let ctx = self.ctx.clone();
        tokio::spawn(async move {
            loop {
                let req = match incoming.message().await {
                    Ok(Some(req)) => req,
                    // The client closed its side: end the stream cleanly.
                    Ok(None) => return,
                    Err(status) => {
                        tracing::debug!(error = %status, "lease keep-alive stream receive failed");
                        return;
                    }
                };
                // Header before the renew, as etcd: its revision is at most the revision at
                // which the keep-alive happened, so a revoke seen later is never "older".
                let header = ctx.header();
                let reply = match ctx.lessor.keep_alive(req.id).await {
                    Ok(ttl) => Ok(pb::LeaseKeepAliveResponse {
                        header: Some(header),
                        id: req.id,
                        ttl,
                    }),
                    // An unknown lease is answered with TTL 0, not an error.
                    Err(LeaseError::NotFound) => Ok(pb::LeaseKeepAliveResponse {
                        header: Some(header),
                        id: req.id,
                        ttl: 0,
                    }),
                    Err(e) => Err(error::status_from_lease(&e)),
                };
                let failed = reply.is_err();
                if tx.send(reply).await.is_err() || failed {
                    // Client gone, or an error that ends the stream (sent as its status).
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        let r = request.into_inner();
        let header = self.ctx.header();
        let t = match self.ctx.lessor.time_to_live(r.id, r.keys).await {
            Ok(t) => t,
            // etcd answers a missing lease with TTL -1 rather than an error.
            Err(LeaseError::NotFound) => {
                return Ok(Response::new(pb::LeaseTimeToLiveResponse {
                    header: Some(header),
                    id: r.id,
                    ttl: -1,
                    granted_ttl: 0,
                    keys: Vec::new(),
                }))
            }
            Err(e) => return Err(error::status_from_lease(&e)),
        };
        Ok(Response::new(pb::LeaseTimeToLiveResponse {
            header: Some(header),
            id: t.id,
            ttl: t.ttl,
            granted_ttl: t.granted_ttl,
            keys: t.keys,
        }))
    }

    async fn lease_leases(
        &self,
        _request: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        // Like etcd, the member answers from its own lease table (no read barrier).
        let leases = self
            .ctx
            .raft
            .store()
            .leases()
            .into_iter()
            .map(|l| pb::LeaseStatus { id: l.id })
            .collect();
        Ok(Response::new(pb::LeaseLeasesResponse {
            header: Some(self.ctx.header()),
            leases,
        }))
    }
}
