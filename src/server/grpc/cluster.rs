//! etcd's Cluster service: member list and membership changes, delegated to the raft node.

use crawler_proto::etcdserverpb as pb;
use crawler_proto::etcdserverpb::cluster_server::Cluster;
use crawler_raft::MemberInfo;
use tonic::{Request, Response, Status};

use super::context::ApiContext;
use super::error;
use crate::util::url::parse_url;

/// The Cluster service of one member.
#[derive(Clone)]
pub(crate) struct ClusterService {
    ctx: ApiContext,
}

impl ClusterService {
    /// A Cluster service over `ctx`.
    pub fn new(ctx: ApiContext) -> Self {
        Self { ctx }
    }

    fn members(&self) -> Vec<pb::Member> {
        self.ctx
            .raft
            .members()
            .into_iter()
            .map(member_to_proto)
            .collect()
    }
}

/// Raft's member record → `etcdserverpb.Member`.
pub(crate) fn member_to_proto(m: MemberInfo) -> pb::Member {
    pb::Member {
        id: m.id,
        name: m.name,
        peer_ur_ls: m.peer_urls,
        client_ur_ls: m.client_urls,
        is_learner: m.is_learner,
    }
}

/// etcd's `types.NewURLs` check for peer URLs: at least one, each `http://host:port`.
fn check_peer_urls(urls: &[String]) -> Result<(), Status> {
    if urls.is_empty() {
        return Err(error::member_bad_urls());
    }
    for u in urls {
        parse_url(u).map_err(|_| error::member_bad_urls())?;
    }
    Ok(())
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        request: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        let r = request.into_inner();
        check_peer_urls(&r.peer_ur_ls)?;
        let added = self
            .ctx
            .raft
            .add_member(r.peer_ur_ls, r.is_learner)
            .await
            .map_err(|e| error::status_from_raft(&e))?;
        Ok(Response::new(pb::MemberAddResponse {
            header: Some(self.ctx.header()),
            member: Some(member_to_proto(added)),
            members: self.members(),
        }))
    }

    async fn member_remove(
        &self,
        request: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        let r = request.into_inner();
        self.ctx
            .raft
            .remove_member(r.id)
            .await
            .map_err(|e| error::status_from_raft(&e))?;
        Ok(Response::new(pb::MemberRemoveResponse {
            header: Some(self.ctx.header()),
            members: self.members(),
        }))
    }

    async fn member_update(
        &self,
        _request: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        Err(Status::unimplemented(
            "etcdserver: MemberUpdate is not supported",
        ))
    }

    async fn member_list(
        &self,
        request: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        let r = request.into_inner();
        self.ctx.read_guard(!r.linearizable).await?;
        Ok(Response::new(pb::MemberListResponse {
            header: Some(self.ctx.header()),
            members: self.members(),
        }))
    }

    async fn member_promote(
        &self,
        request: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        let r = request.into_inner();
        self.ctx
            .raft
            .promote_member(r.id)
            .await
            .map_err(|e| error::status_from_raft(&e))?;
        Ok(Response::new(pb::MemberPromoteResponse {
            header: Some(self.ctx.header()),
            members: self.members(),
        }))
    }
}
