//! etcd's KV service: Range, Put, DeleteRange, Txn, Compact.
//!
//! Requests are translated into store types, then validated the way etcd's `v3rpc/key.go` does
//! ([`super::validate`]); writes go through raft, reads read the local store after a read
//! barrier unless serializable.

use crawler_proto::etcdserverpb as pb;
use crawler_proto::etcdserverpb::kv_server::Kv;
use crawler_storage::{Command, CommandResult};
use tonic::{Request as GrpcRequest, Response, Status};

use super::context::{unexpected_result, ApiContext};
use super::validate::{
    check_delete, check_intervals, check_put, check_range, check_txn, txn_is_serializable,
};
use super::{convert, error};

/// The KV service of one member.
#[derive(Clone)]
pub(crate) struct KvService {
    ctx: ApiContext,
}

impl KvService {
    /// A KV service over `ctx`.
    pub fn new(ctx: ApiContext) -> Self {
        Self { ctx }
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(
        &self,
        request: GrpcRequest<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        let req = convert::range_from_proto(request.into_inner())?;
        check_range(&req)?;
        self.ctx.read_guard(req.serializable).await?;
        let (revision, resp) = self
            .ctx
            .raft
            .store()
            .range_with_revision(&req)
            .map_err(|e| error::status_from_apply(&e))?;
        Ok(Response::new(convert::range_resp_to_proto(
            resp,
            self.ctx.header_with_revision(revision),
        )))
    }

    async fn put(
        &self,
        request: GrpcRequest<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        let r = request.into_inner();
        let size = self.ctx.check_request_size(&r);
        let req = convert::put_from_proto(r);
        check_put(&req)?;
        size?;
        let cmd = Command::Put(req);
        self.ctx.check_quota(&cmd)?;
        let (rev, result) = self.ctx.write(cmd).await?;
        match result {
            CommandResult::Put(p) => Ok(Response::new(convert::put_resp_to_proto(
                p,
                self.ctx.header_with_revision(rev),
            ))),
            other => Err(unexpected_result("put", &other)),
        }
    }

    async fn delete_range(
        &self,
        request: GrpcRequest<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let r = request.into_inner();
        let size = self.ctx.check_request_size(&r);
        let req = convert::delete_from_proto(r);
        check_delete(&req)?;
        size?;
        let (rev, result) = self.ctx.write(Command::DeleteRange(req)).await?;
        match result {
            CommandResult::DeleteRange(d) => Ok(Response::new(convert::delete_resp_to_proto(
                d,
                self.ctx.header_with_revision(rev),
            ))),
            other => Err(unexpected_result("delete range", &other)),
        }
    }

    async fn txn(
        &self,
        request: GrpcRequest<pb::TxnRequest>,
    ) -> Result<Response<pb::TxnResponse>, Status> {
        let r = request.into_inner();
        let size = self.ctx.check_request_size(&r);
        let txn = convert::txn_from_proto(r)?;
        check_txn(&txn, self.ctx.limits.max_txn_ops)?;
        check_intervals(&txn.success)?;
        check_intervals(&txn.failure)?;
        size?;
        let serializable = txn_is_serializable(&txn);
        if txn.is_read_only() {
            // A read-only txn never enters the log (etcd does the same).
            self.ctx.read_guard(serializable).await?;
            let (rev, resp) = self
                .ctx
                .raft
                .store()
                .txn_read_only(&txn)
                .map_err(|e| error::status_from_apply(&e))?;
            return Ok(Response::new(convert::txn_resp_to_proto(
                resp,
                self.ctx.header_with_revision(rev),
            )));
        }
        let cmd = Command::Txn(txn);
        self.ctx.check_quota(&cmd)?;
        let (rev, result) = self.ctx.write(cmd).await?;
        match result {
            CommandResult::Txn(t) => Ok(Response::new(convert::txn_resp_to_proto(
                t,
                self.ctx.header_with_revision(rev),
            ))),
            other => Err(unexpected_result("txn", &other)),
        }
    }

    async fn compact(
        &self,
        request: GrpcRequest<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        let r = request.into_inner();
        // `physical`: our compaction is done when the command has applied, so there is
        // nothing more to wait for.
        let (rev, result) = self
            .ctx
            .write(Command::Compact {
                revision: r.revision,
            })
            .await?;
        match result {
            CommandResult::Compact => Ok(Response::new(pb::CompactionResponse {
                header: Some(self.ctx.header_with_revision(rev)),
            })),
            other => Err(unexpected_result("compact", &other)),
        }
    }
}
