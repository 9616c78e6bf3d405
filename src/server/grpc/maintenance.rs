//! etcd's Maintenance service: what `etcdctl endpoint status` and `endpoint health` need (Status,
//! Alarm), Snapshot (a backup stream), Hash and HashKV, harmless answers for Defragment, and
//! `Unimplemented` for the rest.

use std::pin::Pin;

use crawler_proto::etcdserverpb as pb;
use crawler_proto::etcdserverpb::maintenance_server::Maintenance;
use crawler_storage::backup::Chunk;
use futures::Stream;
use tonic::{Request, Response, Status};

use super::context::ApiContext;
use super::error::status_from_apply;

/// Bytes per `SnapshotResponse` blob (etcd's 32 KiB).
const SNAPSHOT_CHUNK: usize = 32 * 1024;

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

/// Stream type of `Snapshot`.
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
        let store = self.ctx.raft.store().clone();
        let (hash, revision) = tokio::task::spawn_blocking(move || store.hash_all())
            .await
            .map_err(|e| Status::internal(format!("hash task: {e}")))?
            .map_err(|e| status_from_apply(&e))?;
        Ok(Response::new(pb::HashResponse {
            header: Some(self.ctx.header_with_revision(revision)),
            hash,
        }))
    }

    async fn hash_kv(
        &self,
        request: Request<pb::HashKvRequest>,
    ) -> Result<Response<pb::HashKvResponse>, Status> {
        let revision = request.into_inner().revision;
        let store = self.ctx.raft.store().clone();
        let current = store.current_revision();
        let (hash, compact_revision, hash_revision) =
            tokio::task::spawn_blocking(move || store.hash_kv(revision))
                .await
                .map_err(|e| Status::internal(format!("hash task: {e}")))?
                .map_err(|e| status_from_apply(&e))?;
        Ok(Response::new(pb::HashKvResponse {
            header: Some(self.ctx.header_with_revision(current.max(hash_revision))),
            hash,
            compact_revision,
            hash_revision,
        }))
    }

    type SnapshotStream = SnapshotStream;

    /// A backup of this member's state machine at its current revision (see
    /// `crawler_storage::backup` for the file): blobs of 32 KiB with the bytes left after each,
    /// then, as etcd does, the sha256 of everything sent as the last 32-byte blob.
    async fn snapshot(
        &self,
        _request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let image = self
            .ctx
            .raft
            .store()
            .backup_image(self.ctx.raft.cluster_id(), self.ctx.raft.id())
            .map_err(|e| Status::internal(format!("etcdserver: snapshot: {e}")))?;
        let header = self.ctx.header_with_revision(image.header.revision);
        tracing::info!(
            revision = image.header.revision,
            keys = image.header.key_count,
            bytes = image.data_len() + 32,
            "sending snapshot"
        );
        let chunks = image.into_chunks(SNAPSHOT_CHUNK).map(move |c| {
            let (remaining_bytes, blob) = match c {
                Chunk::Data { bytes, remaining } => (remaining, bytes),
                Chunk::Checksum(sum) => (0, sum.to_vec()),
            };
            Ok(pb::SnapshotResponse {
                header: Some(header),
                remaining_bytes,
                blob,
            })
        });
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
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
