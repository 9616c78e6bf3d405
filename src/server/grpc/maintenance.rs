//! etcd's Maintenance service: what `etcdctl endpoint status` and `endpoint health` need (Status,
//! Alarm), harmless answers for Defragment, and `Unimplemented` for the rest.

use std::pin::Pin;

use crawler_proto::etcdserverpb as pb;
use crawler_proto::etcdserverpb::maintenance_server::Maintenance;
use futures::Stream;
use tonic::{Request, Response, Status};

use super::context::ApiContext;

/// The server version reported by `Status` (the etcd API level we serve).
pub(crate) const SERVER_VERSION: &str = "3.5.0";

/// The Maintenance service of one member.
#[derive(Clone)]
pub(crate) struct MaintenanceService {
    ctx: ApiContext,
}

impl MaintenanceService {
    /// A Maintenance service over `ctx`.
    pub fn new(ctx: ApiContext) -> Self {
        Self { ctx }
    }
}

/// Stream type of `Snapshot` (never produced: the RPC is unimplemented).
pub(crate) type SnapshotStream =
    Pin<Box<dyn Stream<Item = Result<pb::SnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(
        &self,
        _request: Request<pb::AlarmRequest>,
    ) -> Result<Response<pb::AlarmResponse>, Status> {
        // We raise no alarms (no space quota, no corruption check), so GET lists none and
        // ACTIVATE/DEACTIVATE change nothing.
        Ok(Response::new(pb::AlarmResponse {
            header: Some(self.ctx.header()),
            alarms: Vec::new(),
        }))
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let st = self.ctx.raft.status();
        let store = self.ctx.raft.store();
        let db_size = i64::try_from(store.db_size()).unwrap_or(i64::MAX);
        Ok(Response::new(pb::StatusResponse {
            header: Some(self.ctx.header()),
            version: SERVER_VERSION.to_string(),
            db_size,
            leader: st.leader.unwrap_or(0),
            raft_index: st.commit_index,
            raft_term: st.term,
            raft_applied_index: st.applied_index,
            errors: Vec::new(),
            db_size_in_use: db_size,
            is_learner: st.is_learner,
        }))
    }

    async fn defragment(
        &self,
        _request: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        // sled manages its own space; there is nothing to defragment on demand.
        Ok(Response::new(pb::DefragmentResponse {
            header: Some(self.ctx.header()),
        }))
    }

    async fn hash(
        &self,
        _request: Request<pb::HashRequest>,
    ) -> Result<Response<pb::HashResponse>, Status> {
        Err(Status::unimplemented("etcdserver: Hash is not supported"))
    }

    async fn hash_kv(
        &self,
        _request: Request<pb::HashKvRequest>,
    ) -> Result<Response<pb::HashKvResponse>, Status> {
        Err(Status::unimplemented("etcdserver: HashKV is not supported"))
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(
        &self,
        _request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        Err(Status::unimplemented(
            "etcdserver: Snapshot is not supported",
        ))
    }

    async fn move_leader(
        &self,
        _request: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        Err(Status::unimplemented(
            "etcdserver: MoveLeader is not supported",
        ))
    }

    async fn downgrade(
        &self,
        _request: Request<pb::DowngradeRequest>,
    ) -> Result<Response<pb::DowngradeResponse>, Status> {
        Err(Status::unimplemented(
            "etcdserver: Downgrade is not supported",
        ))
    }
}
