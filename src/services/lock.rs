//! etcd's Lock service (`v3lockpb.Lock`): a translation between its messages and the mutex of
//! the concurrency protocol ([`crate::coord::election::protocol`]), run through the in-process KV
//! client as etcd's `v3lock` runs `concurrency.Mutex` through `v3client`, so that `etcdctl lock`
//! and server-side locks exclude each other.

use std::sync::Arc;

use crawler_proto::v3lockpb as lpb;
use crawler_proto::v3lockpb::lock_server::Lock;
use tonic::{Request, Response, Status};

use super::status;
use crate::client::local::LocalClient;
use crate::client::{DeleteRangeRequest, KvClient};
use crate::coord::election::protocol;
use crate::server::grpc::ApiContext;

pub use super::status::ERR_SESSION_EXPIRED;

/// The Lock service of one member.
#[derive(Clone)]
pub struct LockService {
    /// For response headers.
    ctx: ApiContext,
    client: Arc<dyn KvClient>,
}

impl LockService {
    /// A Lock service over `ctx`.
    pub fn new(ctx: ApiContext) -> Self {
        let client = Arc::new(LocalClient::new(ctx.clone()));
        Self { ctx, client }
    }
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(
        &self,
        request: Request<lpb::LockRequest>,
    ) -> Result<Response<lpb::LockResponse>, Status> {
        let r = request.into_inner();
        let lease = status::ensure_lease(&*self.client, r.lease).await?;
        let mut prefix = r.name;
        prefix.push(b'/');
        let won = protocol::campaign(&self.client, &prefix, lease, None, None)
            .await
            .map_err(|e| status::of_election(e, ERR_SESSION_EXPIRED))?;
        Ok(Response::new(lpb::LockResponse {
            header: Some(self.ctx.header_with_revision(won.revision)),
            key: won.key,
        }))
    }

    async fn unlock(
        &self,
        request: Request<lpb::UnlockRequest>,
    ) -> Result<Response<lpb::UnlockResponse>, Status> {
        // etcd's server unlocks through its own KV client, which rejects an empty key.
        let reply = self
            .client
            .delete_range(DeleteRangeRequest {
                key: request.into_inner().key,
                ..DeleteRangeRequest::default()
            })
            .await
            .map_err(status::of_kv)?;
        Ok(Response::new(lpb::UnlockResponse {
            header: Some(self.ctx.header_with_revision(reply.revision)),
        }))
    }
}
