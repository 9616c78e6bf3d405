//! etcd's Lock service (`v3lockpb.Lock`): a mutex with the key layout of etcd's Go `concurrency`
//! package (`<name>/<lease hex>`; the holder is the key with the smallest create revision), so
//! that `etcdctl lock` and server-side locks exclude each other.

use crawler_proto::v3lockpb as lpb;
use crawler_proto::v3lockpb::lock_server::Lock;
use crawler_storage::Command;
use crawler_storage::{
    CommandResult, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, ResponseOp, SortOrder,
    SortTarget, TxnRequest,
};
use tonic::{Request, Response, Status};

use super::election::{
    candidate_key, create_equals, ensure_lease, first_range_kv, prefix_end, txn, wait_turn,
    Withdraw,
};
use crate::server::grpc::context::{unexpected_result, ApiContext};
use crate::server::grpc::error;

/// etcd's `concurrency.ErrSessionExpired`: the waiter's key vanished (its lease ended).
pub const ERR_SESSION_EXPIRED: &str = "mutex: session is expired";

/// The Lock service of one member.
#[derive(Clone)]
pub struct LockService {
    ctx: ApiContext,
}

impl LockService {
    /// A Lock service over `ctx`.
    pub fn new(ctx: ApiContext) -> Self {
        Self { ctx }
    }
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(
        &self,
        request: Request<lpb::LockRequest>,
    ) -> Result<Response<lpb::LockResponse>, Status> {
        let r = request.into_inner();
        let ctx = &self.ctx;
        let lease = ensure_lease(ctx, r.lease).await?;
        let mut prefix = r.name.clone();
        prefix.push(b'/');
        let key = candidate_key(&r.name, lease);
        let owner = RequestOp::Range(RangeRequest {
            key: prefix.clone(),
            range_end: prefix_end(&prefix),
            limit: 1,
            sort_order: SortOrder::Ascend,
            sort_target: SortTarget::Create,
            ..Default::default()
        });
        // Queue up (or find our own queued key) and read the holder in one round trip.
        let (rev, resp) = txn(
            ctx,
            TxnRequest {
                compare: vec![create_equals(&key, 0)],
                success: vec![
                    RequestOp::Put(PutRequest {
                        key: key.clone(),
                        lease,
                        ..Default::default()
                    }),
                    owner.clone(),
                ],
                failure: vec![
                    RequestOp::Range(RangeRequest {
                        key: key.clone(),
                        ..Default::default()
                    }),
                    owner,
                ],
            },
        )
        .await?;
        let my_rev = if resp.succeeded {
            rev
        } else {
            first_range_kv(&resp)
                .map(|kv| kv.create_revision)
                .ok_or_else(|| Status::unknown(ERR_SESSION_EXPIRED))?
        };
        let holder = match resp.responses.get(1) {
            Some(ResponseOp::Range(r)) => r.kvs.first().map(|kv| kv.create_revision),
            _ => None,
        };
        if holder.is_none() || holder == Some(my_rev) {
            return Ok(Response::new(lpb::LockResponse {
                header: Some(ctx.header_with_revision(rev)),
                key,
            }));
        }

        // Wait for every earlier waiter to go; give our place up if that fails or the client
        // leaves (etcd unlocks then).
        let mut guard = Withdraw::new(ctx, key.clone(), my_rev);
        wait_turn(ctx, &prefix, &key, my_rev, ERR_SESSION_EXPIRED).await?;
        guard.disarm();
        Ok(Response::new(lpb::LockResponse {
            header: Some(ctx.header()),
            key,
        }))
    }

    async fn unlock(
        &self,
        request: Request<lpb::UnlockRequest>,
    ) -> Result<Response<lpb::UnlockResponse>, Status> {
        let r = request.into_inner();
        // etcd's server unlocks through its own KV client, which rejects an empty key.
        if r.key.is_empty() {
            return Err(error::empty_key());
        }
        let (rev, result) = self
            .ctx
            .write(Command::DeleteRange(DeleteRangeRequest {
                key: r.key,
                ..Default::default()
            }))
            .await?;
        match result {
            CommandResult::DeleteRange(_) => Ok(Response::new(lpb::UnlockResponse {
                header: Some(self.ctx.header_with_revision(rev)),
            })),
            other => Err(unexpected_result("unlock", &other)),
        }
    }
}
