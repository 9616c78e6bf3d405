//! etcd's Election and Lock gRPC services.

pub mod election;
pub mod lock;
mod status;

use crawler_proto::v3electionpb::election_server::ElectionServer;
use crawler_proto::v3lockpb::lock_server::LockServer;

use crate::server::grpc::{ApiContext, GRPC_OVERHEAD_BYTES};
use crate::server::member::{Member, MemberConfig};

/// Start a store member serving all of etcd's services: the core ones and Election and Lock
/// (which sit above the member, as etcd's embed registers v3election and v3lock).
pub async fn start_member(cfg: MemberConfig) -> anyhow::Result<Member> {
    Member::start_with(cfg, add_services).await
}

/// Add the Election and Lock services on `ctx` to `routes`.
fn add_services(ctx: ApiContext, routes: tonic::service::Routes) -> tonic::service::Routes {
    let max = ctx
        .limits
        .max_request_bytes
        .saturating_add(GRPC_OVERHEAD_BYTES);
    routes
        .add_service(
            ElectionServer::new(election::ElectionService::new(ctx.clone()))
                .max_decoding_message_size(max),
        )
        .add_service(LockServer::new(lock::LockService::new(ctx)).max_decoding_message_size(max))
}
