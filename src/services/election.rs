//! etcd's Election service (`v3electionpb.Election`): a translation between its messages and the
//! concurrency protocol of [`crate::coord::election::protocol`], run through the in-process KV
//! client, as etcd's `v3election` sits on `clientv3/concurrency` through `v3client`. Server-side
//! and client-side (`etcdctl elect`) elections therefore share one key layout and one queue.
//!
//! A name is raw bytes; its candidates live under `<name>/`.

use std::pin::Pin;
use std::sync::Arc;

use crawler_proto::v3electionpb as epb;
use crawler_proto::v3electionpb::election_server::Election;
use futures::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

use super::status;
use crate::client::local::LocalClient;
use crate::client::KvClient;
use crate::coord::election::observe::{follow, LeaderState};
use crate::coord::election::protocol;
use crate::coord::election::ElectionError;
use crate::server::grpc::{convert, ApiContext};

pub use super::status::{
    DEFAULT_SESSION_TTL, ERR_ELECTION_SESSION_EXPIRED, ERR_MISSING_LEADER_KEY, ERR_NOT_LEADER,
    ERR_NO_LEADER,
};

type ObserveStream =
    Pin<Box<dyn Stream<Item = Result<epb::LeaderResponse, Status>> + Send + 'static>>;

/// The Election service of one member.
#[derive(Clone)]
pub struct ElectionService {
    /// For response headers.
    ctx: ApiContext,
    client: Arc<dyn KvClient>,
}

impl ElectionService {
    /// An Election service over `ctx`.
    pub fn new(ctx: ApiContext) -> Self {
        let client = Arc::new(LocalClient::new(ctx.clone()));
        Self { ctx, client }
    }
}

/// `<name>/`, the prefix of an election's candidates.
fn prefix_of(mut name: Vec<u8>) -> Vec<u8> {
    name.push(b'/');
    name
}

fn failed(e: ElectionError) -> Status {
    status::of_election(e, ERR_ELECTION_SESSION_EXPIRED)
}

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(
        &self,
        request: Request<epb::CampaignRequest>,
    ) -> Result<Response<epb::CampaignResponse>, Status> {
        let r = request.into_inner();
        let lease = status::ensure_lease(&*self.client, r.lease).await?;
        let prefix = prefix_of(r.name.clone());
        let won = protocol::campaign(&self.client, &prefix, lease, Some(&r.value), None)
            .await
            .map_err(failed)?;
        Ok(Response::new(epb::CampaignResponse {
            header: Some(self.ctx.header_with_revision(won.enqueued_at)),
            leader: Some(epb::LeaderKey {
                name: r.name,
                key: won.key,
                rev: won.create_revision,
                lease,
            }),
        }))
    }

    async fn proclaim(
        &self,
        request: Request<epb::ProclaimRequest>,
    ) -> Result<Response<epb::ProclaimResponse>, Status> {
        let r = request.into_inner();
        let leader = r
            .leader
            .ok_or_else(|| Status::unknown(ERR_MISSING_LEADER_KEY))?;
        let rev = protocol::proclaim(
            &*self.client,
            &leader.key,
            leader.rev,
            leader.lease,
            &r.value,
        )
        .await
        .map_err(failed)?;
        Ok(Response::new(epb::ProclaimResponse {
            header: Some(self.ctx.header_with_revision(rev)),
        }))
    }

    async fn leader(
        &self,
        request: Request<epb::LeaderRequest>,
    ) -> Result<Response<epb::LeaderResponse>, Status> {
        let prefix = prefix_of(request.into_inner().name);
        let (leader, rev) = protocol::leader(&*self.client, &prefix)
            .await
            .map_err(failed)?;
        let kv = leader.ok_or_else(|| Status::unknown(ERR_NO_LEADER))?;
        Ok(Response::new(epb::LeaderResponse {
            header: Some(self.ctx.header_with_revision(rev)),
            kv: Some(convert::kv_to_proto(kv)),
        }))
    }

    type ObserveStream = ObserveStream;

    async fn observe(
        &self,
        request: Request<epb::LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let prefix = prefix_of(request.into_inner().name);
        // The loop ends by itself once the client drops the stream.
        let (rx, _task) = follow(self.client.clone(), prefix).await.map_err(failed)?;
        let ctx = self.ctx.clone();
        // etcd streams leaders only: a moment without one is skipped.
        let stream = ReceiverStream::new(rx).filter_map(move |item| match item {
            Ok(LeaderState {
                leader: Some(kv),
                revision,
            }) => Some(Ok(epb::LeaderResponse {
                header: Some(ctx.header_with_revision(revision)),
                kv: Some(convert::kv_to_proto(kv)),
            })),
            Ok(LeaderState { leader: None, .. }) => None,
            Err(e) => Some(Err(failed(e))),
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn resign(
        &self,
        request: Request<epb::ResignRequest>,
    ) -> Result<Response<epb::ResignResponse>, Status> {
        let r = request.into_inner();
        let leader = r
            .leader
            .ok_or_else(|| Status::unknown(ERR_MISSING_LEADER_KEY))?;
        // etcd answers success whether or not the compare held.
        let rev = protocol::resign(&*self.client, &leader.key, leader.rev)
            .await
            .map_err(failed)?;
        Ok(Response::new(epb::ResignResponse {
            header: Some(self.ctx.header_with_revision(rev)),
        }))
    }
}
