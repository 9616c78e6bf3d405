//! etcd's Maintenance service: what `etcdctl endpoint status` and `endpoint health` need (Status,
//! Alarm: the replicated alarm list, raised by the space quota), Snapshot (a backup stream), Hash
//! and HashKV, Defragment (nothing to do on sled, see the README's "Quotas"), and
//! `Unimplemented` for the rest.

use std::pin::Pin;

use crawler_proto::etcdserverpb as pb;
use crawler_proto::etcdserverpb::maintenance_server::Maintenance;
use crawler_storage::backup::Chunk;
use crawler_storage::{AlarmMember, AlarmType, Command};
use futures::Stream;
use tonic::{Request, Response, Status};

use super::context::ApiContext;
use super::error::status_from_apply;

/// Bytes per `SnapshotResponse` blob (etcd's 32 KiB).
const SNAPSHOT_CHUNK: usize = 32 * 1024;

fn alarm_from_proto(v: i32) -> Option<AlarmType> {
    match pb::AlarmType::try_from(v) {
        Ok(pb::AlarmType::Nospace) => Some(AlarmType::NoSpace),
        Ok(pb::AlarmType::Corrupt) => Some(AlarmType::Corrupt),
        _ => None,
    }
}

fn alarm_to_proto(a: &AlarmMember) -> pb::AlarmMember {
    pb::AlarmMember {
        member_id: a.member,
        alarm: match a.alarm {
            AlarmType::NoSpace => pb::AlarmType::Nospace,
            AlarmType::Corrupt => pb::AlarmType::Corrupt,
        } as i32,
    }
}

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
        request: Request<pb::AlarmRequest>,
    ) -> Result<Response<pb::AlarmResponse>, Status> {
        let r = request.into_inner();
        let kind = alarm_from_proto(r.alarm);
        let store = self.ctx.raft.store();
        let matching = |a: &AlarmMember| {
            kind.is_none_or(|k| a.alarm == k) && (r.member_id == 0 || a.member == r.member_id)
        };
        let alarms = match pb::alarm_request::AlarmAction::try_from(r.action) {
            Ok(pb::alarm_request::AlarmAction::Get) => {
                store.alarms().into_iter().filter(|a| matching(a)).collect()
            }
            Ok(action) => {
                let activate = action == pb::alarm_request::AlarmAction::Activate;
                let Some(alarm) = kind else {
                    // etcd: activating NONE does nothing; deactivating it matches nothing.
                    return Ok(Response::new(pb::AlarmResponse {
                        header: Some(self.ctx.header()),
                        alarms: Vec::new(),
                    }));
                };
                let before: Vec<AlarmMember> = store.alarms();
                self.ctx
                    .write(Command::Alarm {
                        activate,
                        member: r.member_id,
                        alarm,
                    })
                    .await?;
                if activate {
                    vec![AlarmMember {
                        member: r.member_id,
                        alarm,
                    }]
                } else {
                    before.into_iter().filter(|a| matching(a)).collect()
                }
            }
            Err(_) => return Err(Status::invalid_argument("etcdserver: unknown alarm action")),
        };
        Ok(Response::new(pb::AlarmResponse {
            header: Some(self.ctx.header()),
            alarms: alarms.iter().map(alarm_to_proto).collect(),
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
            // etcd lists the active alarms here (`endpoint status` ERRORS column).
            errors: store
                .alarms()
                .iter()
                .map(|a| {
                    let name = if a.alarm == AlarmType::NoSpace {
                        "NOSPACE"
                    } else {
                        "CORRUPT"
                    };
                    format!("memberID:{} alarm:{} ", a.member, name)
                })
                .collect(),
            db_size_in_use: db_size,
            is_learner: st.is_learner,
        }))
    }

    async fn defragment(
        &self,
        _request: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        // sled reuses the space compaction frees and has no defragmentation (README, Quotas).
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
